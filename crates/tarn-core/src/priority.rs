//! Operating system priority of threads: the query runtime and maintenance run their threads
//! at a higher nice value than the pipelines', so with the CPU saturated the kernel gives the
//! cores to change data capture, Kafka ingest and the scheduler first (docs/workload.md).

/// Lowers the calling thread's priority by `by` nice steps (0-19, as `nice -n`), from the
/// process's current nice value; 0 does nothing. Linux only (where each thread has a nice
/// value of its own); elsewhere it does nothing. An error (e.g. from a seccomp filter) is
/// logged at debug level and otherwise ignored: priority is a preference.
pub fn lower_current_thread(by: i32) {
    if by <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let result = rustix::process::getpriority_process(Some(tid))
            .and_then(|current| rustix::process::setpriority_process(Some(tid), (current + by).min(19)));
        if let Err(e) = result {
            tracing::debug!(error = %e, by, "cannot lower the thread's priority");
        }
    }
}

/// The calling thread's nice value (Linux; `None` elsewhere or when it cannot be read).
pub fn current_thread_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// A multi-thread tokio runtime builder whose threads (workers and blocking threads alike)
/// are named `name` and run `nice` steps below the process's priority.
pub fn runtime_builder(name: &str, threads: usize, nice: i32) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(threads.max(1))
        .thread_name(name)
        .on_thread_start(move || lower_current_thread(nice))
        .enable_all();
    builder
}

/// The process's maintenance runtime: `threads` workers (bounded concurrency) at `nice` steps
/// below the process's operating system priority (`maintenance.threads`,
/// `maintenance.thread_nice`), so compaction yields the CPU to the pipelines and to queries.
/// `tarn maintain`, scheduled `maintain` tasks and the CDC writers' automatic maintenance all
/// run on it. One per process, made at first use (later calls get that one, whatever their
/// arguments).
pub fn maintenance_runtime(threads: usize, nice: i32) -> std::io::Result<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.handle());
    }
    let runtime = runtime_builder("tarn-maintain", threads, nice).build()?;
    if let Err(lost) = RUNTIME.set(runtime) {
        // Another thread made it first; dropping a runtime from async code would block.
        lost.shutdown_background();
    }
    Ok(RUNTIME.get().expect("set above").handle())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_runtimes_threads_run_at_the_lowered_priority() {
        let base = current_thread_nice().expect("nice value");
        let runtime = runtime_builder("prio-test", 1, 3).build().unwrap();
        let worker = runtime.block_on(async { tokio::spawn(async { current_thread_nice() }).await.unwrap() });
        let blocking =
            runtime.block_on(async { tokio::task::spawn_blocking(current_thread_nice).await.unwrap() });
        assert_eq!(worker, Some((base + 3).min(19)));
        assert_eq!(blocking, Some((base + 3).min(19)));
        // This thread is untouched.
        assert_eq!(current_thread_nice(), Some(base));
    }
}
