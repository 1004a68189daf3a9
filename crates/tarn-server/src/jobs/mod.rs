//! The scheduler (docs/jobs.md): jobs — DAGs of tasks in TOML files under `jobs.dir` — run on
//! cron schedules or on demand, with parameters, catch-up of missed intervals, retries with
//! exponential backoff, timeouts, concurrency limits, SLA misses, and alerts to a webhook and
//! email; run history and task logs in the catalog database; one active scheduler among
//! replicas through a lease row there.
//!
//! - [`spec`]: job files, parsed and checked;
//! - [`template`]: `{{ ds }}` and the other values of a try;
//! - [`store`]: the tables (runs, tasks, tries, logs, the lease) and their migrations;
//! - [`exec`]: one try of one task, each kind's executor;
//! - [`runner`]: driving runs, crash recovery, the scheduler loop;
//! - [`alert`]: webhook and SMTP alerts;
//! - [`api`]: the HTTP API of `tarn serve` (`/jobs`);
//! - [`cli`]: `tarn jobs list|run|history|logs|scheduler`.

pub mod alert;
pub mod api;
pub mod cli;
pub mod exec;
pub mod runner;
pub mod spec;
pub mod store;
pub mod template;

pub use runner::Jobs;
