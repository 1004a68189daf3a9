//! What the benchmarks report about the process itself.

/// The process's peak resident memory (`VmHWM`), human-readable.
pub fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.0} MiB", kb / 1024.0))
}

/// The process's resident memory now (`VmRSS`), in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the resident memory every 50 ms on a thread of its own, for the peak of one phase
/// of a benchmark (the process's `VmHWM` holds the peak of everything before it too, and
/// memory freed earlier is returned to the system only gradually).
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss_kib().unwrap_or(0));
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                peak.max(rss_kib().unwrap_or(0))
            }
        });
        Self { stop, thread }
    }

    /// Stops sampling; the largest sample, human-readable (`None` where unknown).
    pub fn stop(self) -> Option<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let kib = self.thread.join().ok()?;
        (kib > 0).then(|| format!("{:.0} MiB", kib as f64 / 1024.0))
    }
}
