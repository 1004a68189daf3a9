//! `tarn jobs`: list the jobs, run one (now, for a date, or a range of intervals), show the
//! run history and task logs, and run the scheduler in the foreground.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{SecondsFormat, Utc};
use clap::Subcommand;
use tarn_core::Config;
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::runner::{next_due, parse_when};
use super::store::Run;

/// `tarn jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs of `jobs.dir`: schedule, tasks, next due time, last run; and the files
    /// that cannot be read, with why (exits 1 when there are such files).
    List,
    /// Run a job now, in this process, and wait for its end (exit 1 when it fails).
    ///
    /// With `--date`, the run's logical date (its data interval starts there); with `--from`
    /// and `--to`, a run for every interval of the job's schedule starting in that range
    /// (a backfill), one after the other. With `--queue`, the runs are queued for the active
    /// scheduler (`tarn serve` or `tarn jobs scheduler`) instead, and their ids printed.
    Run {
        /// The job's name.
        job: String,
        /// The logical date: `2026-12-01` or `2026-12-01T06:00:00Z`.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        date: Option<String>,
        /// The first interval start of a backfill.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// The last interval start of a backfill.
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// A parameter `NAME=VALUE` over the job's `[params]`; repeatable.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Queue the runs for the active scheduler instead of running them here.
        #[arg(long)]
        queue: bool,
    },
    /// Show the latest runs (of one job), or one run's tasks and tries (`--run`).
    History {
        /// Only this job's runs.
        job: Option<String>,
        /// Show this run in detail: every task and try.
        #[arg(long)]
        run: Option<String>,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the logs of a run's tasks (one task's, one try's).
    Logs {
        /// The run id (`tarn jobs history` shows them).
        run: String,
        /// Only this task.
        task: Option<String>,
        /// Only this try.
        #[arg(long = "try")]
        try_number: Option<i64>,
    },
    /// Run the scheduler in the foreground until SIGINT/SIGTERM, without the endpoints of
    /// `tarn serve` (which runs it too, unless `jobs.scheduler = false`). Among processes
    /// sharing the catalog database one is active; the others stand by and take over when it
    /// stops renewing its lease (`jobs.lease_ttl`).
    Scheduler,
}

fn show(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn run_line(r: &Run) -> String {
    let took = match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => format!("{:.1}s", (f - s).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    };
    format!(
        "{:<60} {:<8} {:<9} logical {}  took {took}{}{}",
        r.run_id,
        r.trigger,
        r.state,
        show(r.logical_date),
        if r.sla_missed { "  SLA missed" } else { "" },
        r.error.as_deref().map(|e| format!("  ({e})")).unwrap_or_default()
    )
}

/// Runs `tarn jobs ...`.
pub async fn run(cmd: JobsCommand, config: &Config) -> Result<ExitCode> {
    let session = crate::cli::open_governed(config).await?;
    let jobs = Jobs::open(config, session.clone()).await?;
    let code = command(cmd, config, &jobs).await;
    crate::cli::close_session(&session).await;
    code
}

async fn command(cmd: JobsCommand, config: &Config, jobs: &Arc<Jobs>) -> Result<ExitCode> {
    match cmd {
        JobsCommand::List => {
            let (list, errors) = jobs.load();
            let now = Utc::now();
            if list.is_empty() && errors.is_empty() {
                eprintln!(
                    "no jobs in {} (jobs.dir)",
                    config.jobs.dir(&config.data_dir).display()
                );
            }
            for job in &list {
                let last = jobs.store().runs(Some(&job.name), 1).await?;
                println!(
                    "{:<24} schedule {:<18} next {:<21} last {}",
                    job.name,
                    job.schedule_text.as_deref().unwrap_or("-"),
                    next_due(job, now).map_or("-".into(), show),
                    last.first()
                        .map_or("-".into(), |r| format!("{} ({})", r.state, show(r.logical_date)))
                );
                let tasks: Vec<String> = job
                    .tasks
                    .iter()
                    .map(|t| {
                        if t.depends_on.is_empty() {
                            format!("{}:{}", t.id, t.kind.name())
                        } else {
                            format!("{}:{} <- {}", t.id, t.kind.name(), t.depends_on.join(","))
                        }
                    })
                    .collect();
                println!("    tasks: {}", tasks.join("; "));
            }
            for e in &errors {
                eprintln!("error: {e}");
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JobsCommand::Run {
            job,
            date,
            from,
            to,
            params,
            queue,
        } => {
            let job = jobs.job(&job)?;
            let mut extra = serde_json::Map::new();
            for p in &params {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("--param {p:?}: expected NAME=VALUE"))?;
                extra.insert(k.trim().to_string(), serde_json::Value::String(v.to_string()));
            }
            let extra = (!extra.is_empty()).then_some(serde_json::Value::Object(extra));
            let runs = match (from, to) {
                (Some(from), Some(to)) => {
                    if extra.is_some() {
                        bail!("--param does not combine with --from/--to");
                    }
                    let runs = jobs.backfill(&job, parse_when(&from)?, parse_when(&to)?).await?;
                    if runs.is_empty() {
                        bail!(
                            "no interval of {}'s schedule starts between {from} and {to}",
                            job.name
                        );
                    }
                    runs
                }
                _ => {
                    let date = date.as_deref().map(parse_when).transpose()?;
                    vec![jobs.trigger(&job, date, extra, "manual").await?]
                }
            };
            if queue {
                for r in &runs {
                    println!("{}", r.run_id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let stop = CancellationToken::new();
            let signal = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    crate::serve::shutdown_signal().await;
                    stop.cancel();
                })
            };
            let mut failed = false;
            for r in runs {
                let done = jobs.run_here(&r.run_id, stop.clone()).await?;
                println!("{}", run_line(&done));
                for t in jobs.store().tasks(&done.run_id).await? {
                    println!("    {:<24} {:<16} tries {}", t.task_id, t.state, t.try_number);
                }
                failed |= done.state != super::store::RunState::Success;
                if stop.is_cancelled() {
                    bail!("interrupted; the run is left for the scheduler to resume");
                }
            }
            signal.abort();
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        JobsCommand::History {
            job,
            run,
            limit,
            json,
        } => {
            if let Some(run_id) = run {
                let r = jobs
                    .store()
                    .run(&run_id)
                    .await?
                    .with_context(|| format!("no run {run_id}"))?;
                let tasks = jobs.store().tasks(&run_id).await?;
                let tries = jobs.store().tries(&run_id).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"run": r, "tasks": tasks, "tries": tries})
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                println!("{}", run_line(&r));
                for t in tasks {
                    println!("  task {:<24} {:<16} tries {}", t.task_id, t.state, t.try_number);
                    for x in tries.iter().filter(|x| x.task_id == t.task_id) {
                        println!(
                            "    try {} {:<8} {} -> {}  {}{}",
                            x.try_number,
                            x.state,
                            show(x.started_at),
                            x.finished_at.map_or("-".into(), show),
                            x.owner,
                            x.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default()
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let runs = jobs.store().runs(job.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string(&runs)?);
            } else {
                for r in &runs {
                    println!("{}", run_line(r));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Logs {
            run,
            task,
            try_number,
        } => {
            let lines = jobs.store().logs(&run, task.as_deref(), try_number).await?;
            if lines.is_empty() && jobs.store().run(&run).await?.is_none() {
                bail!("no run {run}");
            }
            for l in lines {
                println!("{} {} #{} {}", show(l.at), l.task_id, l.try_number, l.line);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Scheduler => {
            let stop = CancellationToken::new();
            let scheduler = tokio::spawn(jobs.clone().scheduler(stop.clone()));
            crate::serve::shutdown_signal().await;
            stop.cancel();
            scheduler.await.context("the scheduler panicked")??;
            Ok(ExitCode::SUCCESS)
        }
    }
}
