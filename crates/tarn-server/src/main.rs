//! The `tarn` binary: a thin wrapper over the `tarn_server` library.

/// mimalloc instead of the system allocator: queries allocate and free many short-lived
/// buffers (batches, hash tables, decoded pages) from several threads, where glibc's malloc
/// spent about a tenth of TPC-H query time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tarn_server::cli::main()
}
