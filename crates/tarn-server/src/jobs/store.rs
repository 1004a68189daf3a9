//! Run history, task tries, task logs and the scheduler's lease, in tables of the catalog
//! database (SQLite or PostgreSQL, the one `catalog.url` names), next to the Iceberg catalog's
//! own tables. The tables are created by numbered migrations, each made of `IF NOT EXISTS`
//! statements and recorded in `tarn_job_migrations`, so replicas starting together and
//! restarts apply them safely.
//!
//! Every change of state is a conditional `UPDATE` (compare and set on the state, the owner
//! and the try number), so two processes never both start a try, and one that lost a run's
//! ownership cannot record over its new owner. Times are milliseconds since the epoch (UTC).

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tarn_core::Config;

/// The migrations, in order; each statement idempotent.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS tarn_job_runs (
            run_id VARCHAR(255) NOT NULL PRIMARY KEY,
            job VARCHAR(255) NOT NULL,
            run_trigger VARCHAR(32) NOT NULL,
            logical_date BIGINT NOT NULL,
            interval_start BIGINT NOT NULL,
            interval_end BIGINT NOT NULL,
            state VARCHAR(32) NOT NULL,
            params TEXT,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT,
            owner VARCHAR(255),
            heartbeat_at BIGINT,
            sla_missed BIGINT NOT NULL DEFAULT 0,
            error TEXT)",
        "CREATE INDEX IF NOT EXISTS tarn_job_runs_by_job ON tarn_job_runs (job, logical_date)",
        "CREATE INDEX IF NOT EXISTS tarn_job_runs_by_state ON tarn_job_runs (state)",
        "CREATE TABLE IF NOT EXISTS tarn_job_tasks (
            run_id VARCHAR(255) NOT NULL,
            task_id VARCHAR(255) NOT NULL,
            state VARCHAR(32) NOT NULL,
            try_number BIGINT NOT NULL,
            next_try_at BIGINT,
            PRIMARY KEY (run_id, task_id))",
        "CREATE TABLE IF NOT EXISTS tarn_job_tries (
            run_id VARCHAR(255) NOT NULL,
            task_id VARCHAR(255) NOT NULL,
            try_number BIGINT NOT NULL,
            state VARCHAR(32) NOT NULL,
            owner VARCHAR(255) NOT NULL,
            pid BIGINT,
            started_at BIGINT NOT NULL,
            finished_at BIGINT,
            error TEXT,
            PRIMARY KEY (run_id, task_id, try_number))",
        "CREATE TABLE IF NOT EXISTS tarn_job_logs (
            run_id VARCHAR(255) NOT NULL,
            task_id VARCHAR(255) NOT NULL,
            try_number BIGINT NOT NULL,
            line_no BIGINT NOT NULL,
            at BIGINT NOT NULL,
            line TEXT NOT NULL,
            PRIMARY KEY (run_id, task_id, try_number, line_no))",
        "CREATE TABLE IF NOT EXISTS tarn_scheduler_lease (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            holder VARCHAR(255) NOT NULL,
            acquired_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL)",
    ],
)];

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for the active scheduler (or `tarn jobs run`) to drive it.
    Queued,
    /// Driven by its owner.
    Running,
    /// Every task succeeded.
    Success,
    /// A task failed for good (or its job is gone).
    Failed,
}

/// Where a task of a run, or one try of it, is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for its dependencies.
    Pending,
    /// A try runs.
    Running,
    /// A try failed; the next is due at `next_try_at`.
    UpForRetry,
    /// Done.
    Success,
    /// Its last try failed.
    Failed,
    /// A task it depends on failed.
    UpstreamFailed,
}

macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $name {
            /// The state as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }

            fn parse(text: &str) -> Result<Self> {
                match text {
                    $($text => Ok($name::$variant),)*
                    other => anyhow::bail!("unknown {} {other:?} in the job tables", stringify!($name)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

text_enum!(RunState { Queued => "queued", Running => "running", Success => "success", Failed => "failed" });
text_enum!(TaskStatus {
    Pending => "pending",
    Running => "running",
    UpForRetry => "up_for_retry",
    Success => "success",
    Failed => "failed",
    UpstreamFailed => "upstream_failed",
});

impl TaskStatus {
    /// Whether nothing more happens to the task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failed | TaskStatus::UpstreamFailed
        )
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A time in milliseconds as UTC.
pub fn to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A run of a job.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `scheduled__JOB__TIME`, `manual__TIME__ID` or `backfill__TIME__ID`.
    pub run_id: String,
    /// The job's name.
    pub job: String,
    /// `scheduled`, `manual` or `backfill`.
    pub trigger: String,
    /// The logical date (the data interval's start).
    pub logical_date: DateTime<Utc>,
    /// The data interval's start.
    pub interval_start: DateTime<Utc>,
    /// The data interval's end (a scheduled run's due time).
    pub interval_end: DateTime<Utc>,
    /// Where it is.
    pub state: RunState,
    /// Parameters given when it was triggered (JSON object), over the job's.
    pub params: Option<serde_json::Value>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The process driving it.
    pub owner: Option<String>,
    /// Whether its SLA was missed.
    pub sla_missed: bool,
    /// Why it failed.
    pub error: Option<String>,
    #[serde(skip)]
    pub(crate) heartbeat_at: Option<i64>,
}

/// A task of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TaskState {
    /// The task's id.
    pub task_id: String,
    /// Where it is.
    pub state: TaskStatus,
    /// Tries started.
    pub try_number: i64,
    /// When the next try is due (`up_for_retry`).
    pub next_try_at: Option<DateTime<Utc>>,
}

/// One try of a task.
#[derive(Debug, Clone, Serialize)]
pub struct Try {
    /// The task's id.
    pub task_id: String,
    /// 1, 2, ...
    pub try_number: i64,
    /// `running`, `success` or `failed`.
    pub state: TaskStatus,
    /// The process that ran it.
    pub owner: String,
    /// The process group of a command it ran.
    pub pid: Option<i64>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// How a try ended, and what its task is now.
#[derive(Debug, Clone, Copy)]
pub struct TryEnd<'a> {
    /// The try: `Success` or `Failed`.
    pub try_state: TaskStatus,
    /// Why it failed.
    pub error: Option<&'a str>,
    /// The task: `Success`, `Failed`, or `UpForRetry` (with `next_try_at`).
    pub task_state: TaskStatus,
    /// When the next try is due.
    pub next_try_at: Option<i64>,
}

/// A line of a try's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// The task.
    pub task_id: String,
    /// The try.
    pub try_number: i64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The text.
    pub line: String,
}

/// The job tables of the catalog database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dollar_binds: bool,
}

const RUN_COLUMNS: &str = "run_id, job, run_trigger, logical_date, interval_start, interval_end, state, params, \
     created_at, started_at, finished_at, owner, heartbeat_at, sla_missed, error";

fn run_from(row: &AnyRow) -> Result<Run> {
    let params: Option<String> = row.try_get("params")?;
    Ok(Run {
        run_id: row.try_get("run_id")?,
        job: row.try_get("job")?,
        trigger: row.try_get("run_trigger")?,
        logical_date: to_time(row.try_get("logical_date")?),
        interval_start: to_time(row.try_get("interval_start")?),
        interval_end: to_time(row.try_get("interval_end")?),
        state: RunState::parse(&row.try_get::<String, _>("state")?)?,
        params: params.and_then(|p| serde_json::from_str(&p).ok()),
        created_at: to_time(row.try_get("created_at")?),
        started_at: row.try_get::<Option<i64>, _>("started_at")?.map(to_time),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(to_time),
        owner: row.try_get("owner")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        sla_missed: row.try_get::<i64, _>("sla_missed")? != 0,
        error: row.try_get("error")?,
    })
}

impl Store {
    /// Opens the catalog database of `config` and applies the migrations.
    pub async fn open(config: &Config) -> Result<Self> {
        let url = config.catalog_url();
        let shown = tarn_core::config::redact_url(&url);
        let (uri, dollar_binds) = match url.strip_prefix("sqlite://") {
            Some(path) => {
                if let Some(parent) = std::path::Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                let sep = if path.contains('?') { '&' } else { '?' };
                (format!("sqlite://{path}{sep}mode=rwc"), false)
            }
            None => (url.clone(), true),
        };
        sqlx::any::install_default_drivers();
        let pool = tokio::time::timeout(
            Duration::from_secs(10),
            AnyPoolOptions::new()
                .max_connections(4)
                .idle_timeout(Duration::from_secs(30))
                .connect(&uri),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to the catalog database {shown} (catalog.url)"))?
        .with_context(|| format!("cannot open the catalog database {shown} (catalog.url)"))?;
        if !dollar_binds {
            // Several processes write: write-ahead logging, as the catalog itself uses.
            let _ = sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await;
        }
        let store = Self { pool, dollar_binds };
        store
            .migrate()
            .await
            .with_context(|| format!("cannot create the job tables in the catalog database {shown}"))?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tarn_job_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM tarn_job_migrations")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        for (version, statements) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in *statements {
                sqlx::query(statement).execute(&self.pool).await?;
            }
            sqlx::query(&self.sql(
                "INSERT INTO tarn_job_migrations (version, applied_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            ))
            .bind(*version)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// The catalog database's pool: the console keeps its saved charts beside the job tables.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// `query` with `?` placeholders in the database's bind style.
    pub(crate) fn sql(&self, query: &str) -> String {
        if !self.dollar_binds {
            return query.to_string();
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    // ---- the lease

    /// Takes or renews lease `name` for `holder` until `now + ttl`; whether `holder` holds it.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let renewed = sqlx::query(&self.sql(
            "UPDATE tarn_scheduler_lease SET holder = ?, expires_at = ?, \
             acquired_at = CASE WHEN holder = ? THEN acquired_at ELSE ? END \
             WHERE name = ? AND (holder = ? OR expires_at < ?)",
        ))
        .bind(holder)
        .bind(until)
        .bind(holder)
        .bind(now)
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if renewed == 1 {
            return Ok(true);
        }
        let inserted = sqlx::query(&self.sql(
            "INSERT INTO tarn_scheduler_lease (name, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        ))
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Gives lease `name` up, when `holder` holds it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query(
            &self.sql("UPDATE tarn_scheduler_lease SET expires_at = 0 WHERE name = ? AND holder = ?"),
        )
        .bind(name)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who holds lease `name` and until when.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, DateTime<Utc>)>> {
        let row =
            sqlx::query(&self.sql("SELECT holder, expires_at FROM tarn_scheduler_lease WHERE name = ?"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("holder")?, to_time(r.try_get("expires_at")?))),
            None => None,
        })
    }

    // ---- runs

    /// Creates a run in state `queued` with its tasks `pending`; false when `run_id` exists.
    pub async fn create_run(&self, run: &Run, tasks: &[String]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(&self.sql(&format!(
            "INSERT INTO tarn_job_runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING"
        )))
        .bind(&run.run_id)
        .bind(&run.job)
        .bind(&run.trigger)
        .bind(run.logical_date.timestamp_millis())
        .bind(run.interval_start.timestamp_millis())
        .bind(run.interval_end.timestamp_millis())
        .bind(run.state.as_str())
        .bind(run.params.as_ref().map(ToString::to_string))
        .bind(run.created_at.timestamp_millis())
        .bind(run.started_at.map(|t| t.timestamp_millis()))
        .bind(None::<i64>)
        .bind(run.owner.clone())
        .bind(run.heartbeat_at)
        .bind(0_i64)
        .bind(None::<String>)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for task in tasks {
            sqlx::query(&self.sql(
                "INSERT INTO tarn_job_tasks (run_id, task_id, state, try_number) VALUES (?, ?, 'pending', 0)",
            ))
            .bind(&run.run_id)
            .bind(task)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Run `run_id`.
    pub async fn run(&self, run_id: &str) -> Result<Option<Run>> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {RUN_COLUMNS} FROM tarn_job_runs WHERE run_id = ?"
        )))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from).transpose()
    }

    /// The latest runs (of `job`, when given), newest first.
    pub async fn runs(&self, job: Option<&str>, limit: i64) -> Result<Vec<Run>> {
        let rows = match job {
            Some(job) => {
                sqlx::query(&self.sql(&format!(
                    "SELECT {RUN_COLUMNS} FROM tarn_job_runs WHERE job = ? \
                     ORDER BY logical_date DESC, created_at DESC LIMIT ?"
                )))
                .bind(job)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => sqlx::query(&self.sql(&format!(
                "SELECT {RUN_COLUMNS} FROM tarn_job_runs ORDER BY created_at DESC, logical_date DESC LIMIT ?"
            )))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter().map(run_from).collect()
    }

    /// Runs in `state`, oldest logical date first.
    pub async fn runs_in_state(&self, state: RunState) -> Result<Vec<Run>> {
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT {RUN_COLUMNS} FROM tarn_job_runs WHERE state = ? ORDER BY logical_date, created_at"
        )))
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from).collect()
    }

    /// The end of the latest scheduled interval of `job`.
    pub async fn last_scheduled_end(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let row =
            sqlx::query(&self.sql(
                "SELECT MAX(interval_end) FROM tarn_job_runs WHERE job = ? AND run_trigger = 'scheduled'",
            ))
            .bind(job)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.map(to_time))
    }

    /// Makes `owner` the driver of run `run_id` when it is queued, or running with an owner
    /// whose heartbeat is older than `stale_before`; whether it did.
    pub async fn claim_run(&self, run_id: &str, owner: &str, stale_before: i64) -> Result<bool> {
        let now = now_ms();
        let n = sqlx::query(&self.sql(
            "UPDATE tarn_job_runs SET owner = ?, heartbeat_at = ?, state = 'running', \
             started_at = COALESCE(started_at, ?) \
             WHERE run_id = ? AND (state = 'queued' OR (state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < ?)))",
        ))
        .bind(owner)
        .bind(now)
        .bind(now)
        .bind(run_id)
        .bind(stale_before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Renews `owner`'s heartbeat on run `run_id`; false when it no longer owns the run.
    pub async fn heartbeat(&self, run_id: &str, owner: &str, at: i64) -> Result<bool> {
        let n = sqlx::query(&self.sql(
            "UPDATE tarn_job_runs SET heartbeat_at = ? WHERE run_id = ? AND owner = ? AND state = 'running'",
        ))
        .bind(at)
        .bind(run_id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Ends run `run_id` in `state` (`Success`, `Failed`), when `owner` owns it.
    pub async fn finish_run(
        &self,
        run_id: &str,
        owner: &str,
        state: RunState,
        error: Option<&str>,
    ) -> Result<bool> {
        let n = sqlx::query(&self.sql(
            "UPDATE tarn_job_runs SET state = ?, finished_at = ?, error = ? \
             WHERE run_id = ? AND owner = ? AND state = 'running'",
        ))
        .bind(state.as_str())
        .bind(now_ms())
        .bind(error)
        .bind(run_id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Fails a queued run nobody will drive (its job is gone).
    pub async fn fail_queued_run(&self, run_id: &str, error: &str) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE tarn_job_runs SET state = 'failed', finished_at = ?, error = ? WHERE run_id = ? AND state = 'queued'",
        ))
        .bind(now_ms())
        .bind(error)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks run `run_id`'s SLA missed; true only for the first caller.
    pub async fn mark_sla_missed(&self, run_id: &str) -> Result<bool> {
        let n = sqlx::query(
            &self.sql("UPDATE tarn_job_runs SET sla_missed = 1 WHERE run_id = ? AND sla_missed = 0"),
        )
        .bind(run_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    // ---- tasks and tries

    /// The tasks of run `run_id`.
    pub async fn tasks(&self, run_id: &str) -> Result<Vec<TaskState>> {
        let rows = sqlx::query(&self.sql(
            "SELECT task_id, state, try_number, next_try_at FROM tarn_job_tasks WHERE run_id = ? ORDER BY task_id",
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskState {
                    task_id: r.try_get("task_id")?,
                    state: TaskStatus::parse(&r.try_get::<String, _>("state")?)?,
                    try_number: r.try_get("try_number")?,
                    next_try_at: r.try_get::<Option<i64>, _>("next_try_at")?.map(to_time),
                })
            })
            .collect()
    }

    /// The tries of run `run_id`, by task and try.
    pub async fn tries(&self, run_id: &str) -> Result<Vec<Try>> {
        let rows = sqlx::query(&self.sql(
            "SELECT task_id, try_number, state, owner, pid, started_at, finished_at, error FROM tarn_job_tries \
             WHERE run_id = ? ORDER BY started_at, task_id, try_number",
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Try {
                    task_id: r.try_get("task_id")?,
                    try_number: r.try_get("try_number")?,
                    state: TaskStatus::parse(&r.try_get::<String, _>("state")?)?,
                    owner: r.try_get("owner")?,
                    pid: r.try_get("pid")?,
                    started_at: to_time(r.try_get("started_at")?),
                    finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(to_time),
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// Starts the next try of task `task_id` when it is `pending` or `up_for_retry` with try
    /// number `expected_try`; the new try's number, or `None` when someone else changed it.
    pub async fn start_try(
        &self,
        run_id: &str,
        task_id: &str,
        expected_try: i64,
        owner: &str,
    ) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(&self.sql(
            "UPDATE tarn_job_tasks SET state = 'running', try_number = try_number + 1, next_try_at = NULL \
             WHERE run_id = ? AND task_id = ? AND try_number = ? AND state IN ('pending', 'up_for_retry')",
        ))
        .bind(run_id)
        .bind(task_id)
        .bind(expected_try)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let try_number = expected_try + 1;
        sqlx::query(&self.sql(
            "INSERT INTO tarn_job_tries (run_id, task_id, try_number, state, owner, started_at) \
             VALUES (?, ?, ?, 'running', ?, ?)",
        ))
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .bind(owner)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(try_number))
    }

    /// Records the process group a try's command runs in.
    pub async fn set_try_pid(&self, run_id: &str, task_id: &str, try_number: i64, pid: i64) -> Result<()> {
        sqlx::query(
            &self
                .sql("UPDATE tarn_job_tries SET pid = ? WHERE run_id = ? AND task_id = ? AND try_number = ?"),
        )
        .bind(pid)
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends try `try_number` of a task as `end` says.
    pub async fn end_try(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: i64,
        end: TryEnd<'_>,
    ) -> Result<bool> {
        let TryEnd {
            try_state,
            error,
            task_state,
            next_try_at,
        } = end;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&self.sql(
            "UPDATE tarn_job_tries SET state = ?, finished_at = ?, error = ? \
             WHERE run_id = ? AND task_id = ? AND try_number = ? AND state = 'running'",
        ))
        .bind(try_state.as_str())
        .bind(now_ms())
        .bind(error)
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(&self.sql(
            "UPDATE tarn_job_tasks SET state = ?, next_try_at = ? \
             WHERE run_id = ? AND task_id = ? AND try_number = ? AND state = 'running'",
        ))
        .bind(task_state.as_str())
        .bind(next_try_at)
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Marks pending task `task_id` `upstream_failed`.
    pub async fn mark_upstream_failed(&self, run_id: &str, task_id: &str) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE tarn_job_tasks SET state = 'upstream_failed' WHERE run_id = ? AND task_id = ? AND state = 'pending'",
        ))
        .bind(run_id)
        .bind(task_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- logs

    /// Appends line `line_no` (unique within the try, increasing) to a try's log.
    pub async fn log(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: i64,
        line_no: i64,
        line: &str,
    ) -> Result<()> {
        sqlx::query(&self.sql(
            "INSERT INTO tarn_job_logs (run_id, task_id, try_number, line_no, at, line) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        ))
        .bind(run_id)
        .bind(task_id)
        .bind(try_number)
        .bind(line_no)
        .bind(now_ms())
        .bind(line)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The log of run `run_id` (of one task and try, when given), in order.
    pub async fn logs(
        &self,
        run_id: &str,
        task_id: Option<&str>,
        try_number: Option<i64>,
    ) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(&self.sql(
            "SELECT task_id, try_number, at, line FROM tarn_job_logs WHERE run_id = ? \
             AND (? IS NULL OR task_id = ?) AND (? IS NULL OR try_number = ?) \
             ORDER BY line_no",
        ))
        .bind(run_id)
        .bind(task_id)
        .bind(task_id)
        .bind(try_number)
        .bind(try_number)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    task_id: r.try_get("task_id")?,
                    try_number: r.try_get("try_number")?,
                    at: to_time(r.try_get("at")?),
                    line: r.try_get("line")?,
                })
            })
            .collect()
    }
}
