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

/// The process metrics (`crate::metric_help::PROCESS`) in Prometheus' text format, read from
/// `/proc/self`; empty where there is no `/proc` (not Linux). CPU times are in clock ticks of
/// 1/100 s (`USER_HZ`, the same on every Linux architecture).
pub fn process_metrics() -> String {
    use std::fmt::Write as _;
    const TICKS: f64 = 100.0;
    let mut values: Vec<(&str, f64)> = Vec::new();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        // Fields after the command name, from field 3 (`state`) on.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            values.push(("process_cpu_seconds_total", (utime + stime) / TICKS));
        }
        if let Some(threads) = field(20) {
            values.push(("process_threads", threads));
        }
        if let Some(vsize) = field(23) {
            values.push(("process_virtual_memory_bytes", vsize));
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            values.push(("process_start_time_seconds", boot + start / TICKS));
        }
    }
    if let Some(kib) = rss_kib() {
        values.push(("process_resident_memory_bytes", kib as f64 * 1024.0));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        values.push(("process_open_fds", fds.count() as f64));
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits")
        && let Some(soft) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
    {
        values.push(("process_max_fds", soft));
    }
    let mut text = String::new();
    for &(name, kind, help) in crate::metric_help::PROCESS {
        if let Some((_, value)) = values.iter().find(|(n, _)| *n == name) {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
    text
}
