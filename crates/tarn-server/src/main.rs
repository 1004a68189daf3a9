//! The `tarn` binary: a thin CLI over the tarn libraries.

mod bench;
mod bench_cdc;
mod cdc;
mod cli;
mod demo;
mod maintain;
mod output;
mod serve;

/// mimalloc instead of the system allocator: queries allocate and free many short-lived
/// buffers (batches, hash tables, decoded pages) from several threads, where glibc's malloc
/// spent about a tenth of TPC-H query time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
