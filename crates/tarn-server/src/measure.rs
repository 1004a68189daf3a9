//! What the benchmarks report about the process itself.

/// The process's peak resident memory (`VmHWM`), human-readable.
pub fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.0} MiB", kb / 1024.0))
}

/// Starts the peak resident memory over from the current resident memory (Linux: writing `5`
/// to `/proc/self/clear_refs`), so that a benchmark's later [`peak_rss`] is the peak of what
/// came after, not of its own setup. Returns the peak before, human-readable; `None` where
/// this is not supported.
pub fn reset_peak_rss() -> Option<String> {
    let before = peak_rss()?;
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    Some(before)
}
