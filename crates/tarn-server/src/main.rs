//! The `tarn` binary: a thin CLI over the tarn libraries.

mod bench;
mod bench_cdc;
mod cdc;
mod cli;
mod demo;
mod maintain;
mod output;
mod serve;

fn main() -> std::process::ExitCode {
    cli::main()
}
