//! Panics as log events.
//!
//! A panic in a spawned task does not stop the process: tokio catches it and the task's
//! owner sees an error, or nothing at all when nobody awaits the task. The default hook
//! prints it to stderr with the absolute path of the dependency's source, which is long,
//! names the build machine's directories, and goes around the log format (`log.format =
//! "json"` collectors never see it). This hook logs the panic as one `ERROR` event of target
//! `tarn::panic` with the thread, the location (`crate-version/src/file.rs:line:col` for a
//! dependency, the workspace path for tarn's own code) and the message, plus the backtrace
//! when `RUST_BACKTRACE` asks for one.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::panic::PanicHookInfo;

/// Installs the hook; logging must be set up first.
pub(crate) fn install() {
    std::panic::set_hook(Box::new(log));
}

fn log(info: &PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("<unnamed>");
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let location = info.location().map_or_else(String::new, |l| {
        format!("{}:{}:{}", short_path(l.file()), l.line(), l.column())
    });
    let backtrace = Backtrace::capture();
    if backtrace.status() == BacktraceStatus::Captured {
        tracing::error!(target: "tarn::panic", thread, location, %backtrace, "panic: {message}");
    } else {
        tracing::error!(target: "tarn::panic", thread, location, "panic: {message}");
    }
}

/// `…/registry/src/<index>/tokio-1.48.0/src/runtime/park.rs` → `tokio-1.48.0/src/runtime/park.rs`;
/// `/rustc/<hash>/library/core/src/option.rs` → `library/core/src/option.rs`; relative paths
/// (tarn's own crates) unchanged.
fn short_path(file: &str) -> &str {
    if !file.starts_with('/') {
        return file;
    }
    if let Some(registry) = file.find("/registry/src/") {
        // Past the index's directory: `<crate>-<version>/src/...`.
        let index = &file[registry + "/registry/src/".len()..];
        return index.split_once('/').map_or(file, |(_, rest)| rest);
    }
    let Some(src) = file.find("/src/") else {
        return file;
    };
    // The path component before `/src/` names the crate (or `core`, `std` under library/).
    let crate_start = file[..src].rfind('/').map_or(0, |i| i + 1);
    let start = if file[..crate_start].ends_with("/library/") {
        file[..crate_start - 1].rfind('/').map_or(0, |i| i + 1)
    } else {
        crate_start
    };
    &file[start..]
}

#[cfg(test)]
mod tests {
    use super::short_path;

    #[test]
    fn paths_are_shortened_to_the_crate() {
        assert_eq!(
            short_path("/home/u/.cargo/registry/src/index.example-1234/tokio-1.48.0/src/runtime/park.rs"),
            "tokio-1.48.0/src/runtime/park.rs"
        );
        assert_eq!(
            short_path("/rustc/0123abcd/library/core/src/option.rs"),
            "library/core/src/option.rs"
        );
        assert_eq!(
            short_path("crates/tarn-server/src/demo.rs"),
            "crates/tarn-server/src/demo.rs"
        );
        assert_eq!(short_path("/no/source/dir.rs"), "/no/source/dir.rs");
    }
}
