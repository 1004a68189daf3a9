//! tarn's command line as a library: every `tarn` command is a function here, so that the
//! binary stays a thin wrapper (`src/main.rs`) and tests call the commands' code directly
//! instead of starting a process to reach it.
//!
//! - [`cli`]: argument parsing and the dispatch of each command ([`cli::main`] is the binary);
//! - [`serve`]: `tarn serve` — the Postgres wire endpoint, HTTP, the CDC pipeline;
//! - [`cdc`]: `tarn cdc` — run, inspect and remove a change-data-capture pipeline;
//! - [`ingest`]: `tarn ingest kafka` (feature `kafka`) — Debezium change-event topics into the
//!   lake; `tarn ingest airbyte` — Airbyte source connectors into the lake ([`airbyte`]);
//! - `tail` (feature `kafka`): `tarn cdc tail` — the change events on a Kafka topic;
//! - [`demo`]: `tarn demo` — the whole data flow on one machine, from nothing;
//! - [`jobs`]: `tarn jobs` and the scheduler of `tarn serve` — DAGs of tasks on cron schedules;
//! - [`maintain`]: `tarn maintain` — compaction, snapshot expiry, orphan-file removal;
//! - [`bench`], [`bench_cdc`] and [`bench_catalog`]: `tarn bench tpch`, `tarn bench cdc` and
//!   `tarn bench catalog`; `bench_kafka` (feature `kafka`): `tarn bench kafka`;
//! - [`bench_airbyte`]: `tarn bench airbyte`; [`bench_merge`]: `tarn bench merge`;
//! - [`load`]: loading files with a progress line (`tarn load`, `tarn bench tpch`);
//! - [`output`]: query results as a table, CSV or JSON;
//! - [`measure`]: what the benchmarks report about the process itself;
//! - [`telemetry`]: spans exported over OTLP (`telemetry.otlp_endpoint`).

pub mod airbyte;
pub mod bench;
pub mod bench_airbyte;
pub mod bench_catalog;
pub mod bench_cdc;
pub mod bench_console;
pub mod bench_federation;
#[cfg(feature = "kafka")]
pub mod bench_kafka;
pub mod bench_merge;
pub mod bench_observability;
pub mod bench_policy;
#[cfg(feature = "kafka")]
pub mod bench_publish;
pub mod bench_workload;
pub mod cdc;
pub mod cli;
mod console;
pub mod datahub;
pub mod demo;
mod http;
pub mod ingest;
pub mod ingest_sql;
pub mod jobs;
pub mod load;
pub mod maintain;
pub mod measure;
pub mod metric_help;
pub mod output;
mod panic_log;
pub mod policy;
pub mod serve;
#[cfg(feature = "kafka")]
pub mod tail;
pub mod telemetry;
pub mod upsert;
