//! Driving runs and scheduling them.
//!
//! - A run is driven by one process at a time, its *owner*, which renews the run's heartbeat
//!   every third of `jobs.lease_ttl`. An owner that cannot renew within two thirds of it stops
//!   its tries (self-fencing) before anyone may take the run over; a run whose heartbeat is
//!   older than the TTL is taken over by the active scheduler. Taking over first makes sure
//!   the tries the old owner left `running` are over — a child process group still alive on
//!   this machine is killed and waited for — and records them failed ("interrupted"), to be
//!   retried as their task's retries allow. So a crashed run resumes, or fails, and no task
//!   ever has two tries running at once.
//! - The scheduler is active in one process among those sharing the catalog database: the
//!   holder of the lease row `scheduler` (renewed every tick, taken over when it expires). The
//!   active scheduler creates the runs of cron schedules (catching up on missed intervals when
//!   a job says `catchup`), starts queued runs within each job's `max_active_runs`, and takes
//!   over runs whose owner stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use tarn_core::Config;
use tarn_query::TarnSession;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::alert::{Alert, Alerter};
use super::exec::{TryContext, TryLog, group_alive, kill_group, run_try};
use super::spec::{Job, load_dir};
use super::store::{Run, RunState, Store, TaskState, TaskStatus, TryEnd, now_ms};
use super::template::Context as Template;

/// The lease row of the active scheduler.
pub const LEASE: &str = "scheduler";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The scheduler and run driver of one process.
pub struct Jobs {
    config: Config,
    session: TarnSession,
    store: Store,
    alerter: Alerter,
    /// This process, as owners and lease holders are named: `HOST:PID:RANDOM`.
    owner: String,
    host: String,
    ttl: Duration,
    tick: Duration,
    /// Tries running at once in this process (`jobs.max_concurrent_tasks`).
    slots: Arc<Semaphore>,
}

/// This machine's name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Jobs {
    /// The jobs of `config` on `session` (the governed one), with their tables opened.
    pub async fn open(config: &Config, session: TarnSession) -> Result<Arc<Self>> {
        let store = Store::open(config).await?;
        let host = hostname();
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Ok(Arc::new(Self {
            config: config.clone(),
            session,
            store,
            alerter: Alerter::new(&config.jobs.alerts)?,
            owner: format!("{host}:{}:{}", std::process::id(), &uuid[..8]),
            host,
            ttl: tarn_core::config::parse_duration("jobs.lease_ttl", &config.jobs.lease_ttl)?,
            tick: tarn_core::config::parse_duration("jobs.tick", &config.jobs.tick)?,
            slots: Arc::new(Semaphore::new(config.jobs.max_concurrent_tasks)),
        }))
    }

    /// The job tables.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This process's name as a run owner and lease holder.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The jobs of `jobs.dir`, and the files that failed to parse.
    pub fn load(&self) -> (Vec<Job>, Vec<String>) {
        load_dir(&self.config.jobs.dir(&self.config.data_dir))
    }

    /// Job `name`, or an error naming the directory and the jobs there.
    pub fn job(&self, name: &str) -> Result<Arc<Job>> {
        let (jobs, errors) = self.load();
        if let Some(job) = jobs.into_iter().find(|j| j.name == name) {
            return Ok(Arc::new(job));
        }
        let dir = self.config.jobs.dir(&self.config.data_dir);
        if let Some(e) = errors.iter().find(|e| e.contains(&format!("{name}.toml"))) {
            bail!("job {name:?} cannot be read: {e}");
        }
        bail!("no job {name:?} in {} (jobs.dir)", dir.display())
    }

    /// Queues a run of `job` for the interval starting at `logical_date` (now when absent);
    /// the active scheduler (or [`Self::run_here`]) runs it.
    pub async fn trigger(
        &self,
        job: &Job,
        logical_date: Option<DateTime<Utc>>,
        params: Option<serde_json::Value>,
        trigger: &str,
    ) -> Result<Run> {
        let now = Utc::now();
        let date = logical_date.unwrap_or(now);
        let end = job
            .next_fire(date)
            .filter(|_| logical_date.is_some())
            .unwrap_or(date);
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let run = Run {
            run_id: format!("{}__{trigger}__{}__{suffix}", job.name, stamp(now)),
            job: job.name.clone(),
            trigger: trigger.into(),
            logical_date: date,
            interval_start: date,
            interval_end: end,
            state: RunState::Queued,
            params,
            created_at: now,
            started_at: None,
            finished_at: None,
            owner: None,
            sla_missed: false,
            error: None,
            heartbeat_at: None,
        };
        self.create(job, &run).await?;
        Ok(run)
    }

    async fn create(&self, job: &Job, run: &Run) -> Result<bool> {
        let tasks: Vec<String> = job.tasks.iter().map(|t| t.id.clone()).collect();
        self.store.create_run(run, &tasks).await
    }

    /// Queues a run for each interval of `job`'s schedule starting in `[from, to]`.
    pub async fn backfill(&self, job: &Job, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Run>> {
        if job.schedule.is_none() {
            bail!(
                "job {} has no schedule: backfill needs its intervals (or run it with --date)",
                job.name
            );
        }
        let mut runs = Vec::new();
        let mut start = job
            .schedule
            .as_ref()
            .and_then(|c| c.find_next_occurrence(&from, true).ok())
            .ok_or_else(|| anyhow!("the schedule of {} never fires after {}", job.name, stamp(from)))?;
        while start <= to {
            let end = job
                .next_fire(start)
                .ok_or_else(|| anyhow!("the schedule of {} ends", job.name))?;
            runs.push(self.trigger(job, Some(start), None, "backfill").await?);
            start = end;
            if runs.len() > 10_000 {
                bail!("more than 10000 intervals from {} to {}", stamp(from), stamp(to));
            }
        }
        Ok(runs)
    }

    /// Runs queued run `run_id` in this process (whether or not a scheduler runs elsewhere)
    /// and waits for its end.
    pub async fn run_here(self: &Arc<Self>, run_id: &str, shutdown: CancellationToken) -> Result<Run> {
        let stale = now_ms() - millis(self.ttl);
        if !self.store.claim_run(run_id, &self.owner, stale).await? {
            bail!("run {run_id} is driven by another process (or has ended)");
        }
        let run = self.store.run(run_id).await?.context("the run vanished")?;
        let job = self.job(&run.job)?;
        self.drive(run, job, shutdown.clone()).await?;
        if shutdown.is_cancelled() {
            // Stopped before its end: the active scheduler may take it over at once.
            let _ = self.store.heartbeat(run_id, &self.owner, 0).await;
        }
        self.store.run(run_id).await?.context("the run vanished")
    }

    /// Recovers the tries a previous owner of `run` left running: kills what still runs of
    /// them on this machine, then records each failed, to be retried as its task allows.
    async fn recover(&self, run: &Run, job: &Job) -> Result<()> {
        for t in self.store.tries(&run.run_id).await? {
            if t.state != TaskStatus::Running {
                continue;
            }
            let log = TryLog::new(self.store.clone(), &run.run_id, &t.task_id, t.try_number);
            let same_host = t.owner.split(':').next() == Some(self.host.as_str());
            if let Some(pid) = t.pid {
                if same_host {
                    if group_alive(pid) {
                        log.line(format!("{} took the run over: killing process group {pid}, which the stopped owner {} left running", self.owner, t.owner)).await;
                        kill_group(pid).await;
                        if group_alive(pid) {
                            bail!(
                                "process group {pid} of task {} (run {}) does not die; not starting another try",
                                t.task_id,
                                run.run_id
                            );
                        }
                    }
                } else {
                    log.line(format!("the stopped owner {} ran process group {pid} on another machine: it stops by itself once that owner cannot renew the run", t.owner)).await;
                }
            }
            let reason = format!("interrupted: the process running it ({}) stopped", t.owner);
            log.line(reason.clone()).await;
            let task = job.task(&t.task_id);
            let (state, next) = match task {
                Some(task) if t.try_number <= i64::from(task.retries) => {
                    (TaskStatus::UpForRetry, Some(now_ms()))
                }
                _ => (TaskStatus::Failed, None),
            };
            let end = TryEnd {
                try_state: TaskStatus::Failed,
                error: Some(&reason),
                task_state: state,
                next_try_at: next,
            };
            self.store
                .end_try(&run.run_id, &t.task_id, t.try_number, end)
                .await?;
            if state == TaskStatus::Failed {
                self.alert(job, run, Some(&t.task_id), reason).await;
            }
        }
        Ok(())
    }

    async fn alert(&self, job: &Job, run: &Run, task: Option<&str>, message: String) {
        if !self.alerter.is_configured() {
            return;
        }
        let alert = Alert {
            kind: "failure",
            job: job.name.clone(),
            run_id: run.run_id.clone(),
            task: task.map(str::to_string),
            message,
        };
        self.alerter.send(&alert).await;
    }

    /// When `run`'s SLA deadline passes (scheduled: the interval's end + `sla`; manual: its
    /// creation + `sla`); backfills have none.
    fn sla_deadline(job: &Job, run: &Run) -> Option<DateTime<Utc>> {
        let sla = chrono::Duration::from_std(job.sla?).ok()?;
        match run.trigger.as_str() {
            "scheduled" => Some(run.interval_end + sla),
            "manual" => Some(run.created_at + sla),
            _ => None,
        }
    }

    /// Alerts an SLA miss of `run` once, when its deadline has passed unfinished (or it
    /// finished late).
    async fn check_sla(&self, job: &Job, run: &Run, finished: Option<DateTime<Utc>>) {
        let Some(deadline) = Self::sla_deadline(job, run) else {
            return;
        };
        let late = finished.unwrap_or_else(Utc::now) > deadline;
        if !late || run.sla_missed {
            return;
        }
        match self.store.mark_sla_missed(&run.run_id).await {
            Ok(true) => {
                metrics::counter!("tarn_job_sla_misses_total", "job" => job.name.clone()).increment(1);
                let alert = Alert {
                    kind: "sla_miss",
                    job: job.name.clone(),
                    run_id: run.run_id.clone(),
                    task: None,
                    message: format!(
                        "run {} of job {} (logical date {}) was not done by {} (sla {})",
                        run.run_id,
                        job.name,
                        stamp(run.logical_date),
                        stamp(deadline),
                        humantime::format_duration(job.sla.unwrap_or_default())
                    ),
                };
                tracing::warn!(job = %job.name, run = %run.run_id, "SLA missed");
                if self.alerter.is_configured() {
                    self.alerter.send(&alert).await;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot record an SLA miss"),
        }
    }

    /// Drives `run` (which this process owns) to its end, or until `cancel` fires or the
    /// ownership is lost; then the tries of this process are stopped and left for the next
    /// owner's recovery.
    async fn drive(self: &Arc<Self>, run: Run, job: Arc<Job>, cancel: CancellationToken) -> Result<()> {
        let run_id = run.run_id.clone();
        let cancel = cancel.child_token();
        self.recover(&run, &job).await?;
        tracing::info!(job = %job.name, run = %run_id, owner = %self.owner, "driving run");
        // The heartbeat, and self-fencing when it cannot be renewed in time.
        let beat = {
            let (store, owner, cancel, run_id) = (
                self.store.clone(),
                self.owner.clone(),
                cancel.clone(),
                run_id.clone(),
            );
            let (every, fence) = (self.ttl / 3, self.ttl * 2 / 3);
            tokio::spawn(async move {
                let mut last_ok = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    match store.heartbeat(&run_id, &owner, now_ms()).await {
                        Ok(true) => last_ok = tokio::time::Instant::now(),
                        Ok(false) => {
                            tracing::warn!(run = %run_id, "run ownership lost: stopping its tries");
                            cancel.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(run = %run_id, error = %format!("{e:#}"), "cannot renew the run's heartbeat");
                            if last_ok.elapsed() > fence {
                                tracing::error!(run = %run_id, "the run's heartbeat could not be renewed in time: stopping its tries before another process takes it over");
                                cancel.cancel();
                                return;
                            }
                        }
                    }
                }
            })
        };
        let outcome = self.drive_tasks(&run, &job, &cancel).await;
        cancel.cancel();
        let _ = beat.await;
        outcome
    }

    async fn drive_tasks(
        self: &Arc<Self>,
        run: &Run,
        job: &Arc<Job>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let run_id = &run.run_id;
        let mut params = job.params.clone();
        if let Some(serde_json::Value::Object(extra)) = &run.params {
            for (k, v) in extra {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                params.insert(k.clone(), text);
            }
        }
        let mut running: JoinSet<(String, i64, Result<()>)> = JoinSet::new();
        let mut tokens: HashMap<String, CancellationToken> = HashMap::new();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let states: HashMap<String, TaskState> = self
                .store
                .tasks(run_id)
                .await?
                .into_iter()
                .map(|t| (t.task_id.clone(), t))
                .collect();
            let state_of = |id: &str| states.get(id).map_or(TaskStatus::Pending, |s| s.state);
            for task in &job.tasks {
                if state_of(&task.id) == TaskStatus::Pending
                    && task
                        .depends_on
                        .iter()
                        .any(|d| matches!(state_of(d), TaskStatus::Failed | TaskStatus::UpstreamFailed))
                {
                    self.store.mark_upstream_failed(run_id, &task.id).await?;
                }
            }
            let current = self.store.run(run_id).await?.context("the run vanished")?;
            self.check_sla(job, &current, None).await;
            if running.is_empty() {
                let states = self.store.tasks(run_id).await?;
                if states.iter().all(|t| t.state.is_terminal()) {
                    let failed: Vec<&str> = states
                        .iter()
                        .filter(|t| t.state != TaskStatus::Success)
                        .map(|t| t.task_id.as_str())
                        .collect();
                    let (state, error) = if failed.is_empty() {
                        (RunState::Success, None)
                    } else {
                        (
                            RunState::Failed,
                            Some(format!("tasks not done: {}", failed.join(", "))),
                        )
                    };
                    self.store
                        .finish_run(run_id, &self.owner, state, error.as_deref())
                        .await?;
                    metrics::counter!("tarn_job_runs_total", "job" => job.name.clone(), "state" => state.as_str())
                        .increment(1);
                    let finished = self.store.run(run_id).await?.context("the run vanished")?;
                    self.check_sla(job, &finished, finished.finished_at).await;
                    tracing::info!(job = %job.name, run = %run_id, state = state.as_str(), "run finished");
                    return Ok(());
                }
            }
            // Start what is ready, within the limits.
            let now = Utc::now();
            let mut next_wake = now + chrono::Duration::from_std(self.tick).unwrap_or_default();
            for task in &job.tasks {
                if tokens.contains_key(&task.id) || tokens.len() >= job.max_active_tasks {
                    continue;
                }
                let Some(state) = states.get(&task.id) else {
                    continue;
                };
                let ready = match state.state {
                    TaskStatus::Pending => task.depends_on.iter().all(|d| state_of(d) == TaskStatus::Success),
                    TaskStatus::UpForRetry => match state.next_try_at {
                        Some(at) if at > now => {
                            next_wake = next_wake.min(at);
                            false
                        }
                        _ => true,
                    },
                    _ => false,
                };
                if !ready {
                    continue;
                }
                let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let Some(try_number) = self
                    .store
                    .start_try(run_id, &task.id, state.try_number, &self.owner)
                    .await?
                else {
                    continue;
                };
                let token = cancel.child_token();
                tokens.insert(task.id.clone(), token.clone());
                let template = Template::new(
                    &job.name,
                    run_id,
                    &task.id,
                    try_number,
                    run.logical_date,
                    (run.interval_start, run.interval_end),
                    &params,
                );
                let log = TryLog::new(self.store.clone(), run_id, &task.id, try_number);
                let cx = TryContext {
                    config: self.config.clone(),
                    session: self.session.clone(),
                    job: job.clone(),
                    task: task.clone(),
                    run_id: run_id.clone(),
                    try_number,
                    template,
                    log: log.clone(),
                    store: self.store.clone(),
                    cancel: token,
                };
                let id = task.id.clone();
                let kind = task.kind.name();
                running.spawn(async move {
                    let _permit = permit;
                    log.line(format!("try {try_number} of {kind} task {id} started"))
                        .await;
                    let outcome = run_try(cx).await;
                    (id, try_number, outcome)
                });
            }
            let wait = (next_wake - Utc::now())
                .to_std()
                .unwrap_or(Duration::from_millis(10));
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    let (id, try_number, outcome) = done.context("a task's try panicked")?;
                    tokens.remove(&id);
                    if cancel.is_cancelled() {
                        break;
                    }
                    self.record(run, job, &id, try_number, outcome).await?;
                }
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => break,
            }
        }
        // Stopped: the tries end now; the next owner records them (see `recover`).
        for token in tokens.values() {
            token.cancel();
        }
        let drained = async { while running.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(15), drained).await;
        Ok(())
    }

    /// Records the end of try `try_number` of `task_id`: success, a retry after backoff, or
    /// the task's failure (alerted).
    async fn record(
        &self,
        run: &Run,
        job: &Job,
        task_id: &str,
        try_number: i64,
        outcome: Result<()>,
    ) -> Result<()> {
        let task = job.task(task_id).context("a task left the job")?;
        let log = TryLog::new(self.store.clone(), &run.run_id, task_id, try_number);
        match outcome {
            Ok(()) => {
                log.line(format!("try {try_number} succeeded")).await;
                metrics::counter!("tarn_job_tries_total", "job" => job.name.clone(), "state" => "success")
                    .increment(1);
                let end = TryEnd {
                    try_state: TaskStatus::Success,
                    error: None,
                    task_state: TaskStatus::Success,
                    next_try_at: None,
                };
                self.store.end_try(&run.run_id, task_id, try_number, end).await?;
            }
            Err(e) => {
                let reason = format!("{e:#}");
                metrics::counter!("tarn_job_tries_total", "job" => job.name.clone(), "state" => "failed")
                    .increment(1);
                if try_number <= i64::from(task.retries) {
                    let delay = task.backoff(u32::try_from(try_number + 1).unwrap_or(u32::MAX));
                    log.line(format!(
                        "try {try_number} failed: {reason}; retrying in {} (retry {} of {})",
                        humantime::format_duration(delay),
                        try_number,
                        task.retries
                    ))
                    .await;
                    let end = TryEnd {
                        try_state: TaskStatus::Failed,
                        error: Some(&reason),
                        task_state: TaskStatus::UpForRetry,
                        next_try_at: Some(now_ms() + millis(delay)),
                    };
                    self.store.end_try(&run.run_id, task_id, try_number, end).await?;
                } else {
                    log.line(format!("try {try_number} failed: {reason}; no retries left"))
                        .await;
                    let end = TryEnd {
                        try_state: TaskStatus::Failed,
                        error: Some(&reason),
                        task_state: TaskStatus::Failed,
                        next_try_at: None,
                    };
                    self.store.end_try(&run.run_id, task_id, try_number, end).await?;
                    tracing::warn!(job = %job.name, run = %run.run_id, task = task_id, error = %reason, "task failed");
                    self.alert(
                        job,
                        run,
                        Some(task_id),
                        format!(
                            "task {task_id} failed after {try_number} tr{}: {reason}",
                            if try_number == 1 { "y" } else { "ies" }
                        ),
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    /// Creates the runs of `job`'s schedule that are due at `now`.
    async fn schedule_due(&self, job: &Job, now: DateTime<Utc>) -> Result<()> {
        let Some(cron) = &job.schedule else {
            return Ok(());
        };
        let last_end = self.store.last_scheduled_end(&job.name).await?;
        let mut intervals = Vec::new();
        let first = match last_end {
            Some(end) => Some(end),
            None if job.catchup => job.start.and_then(|s| cron.find_next_occurrence(&s, true).ok()),
            None => None,
        };
        if let Some(mut start) = first {
            while let Some(end) = job.next_fire(start).filter(|e| *e <= now) {
                intervals.push((start, end));
                start = end;
                if intervals.len() > 100_000 {
                    break;
                }
            }
            if !job.catchup {
                intervals = intervals.split_off(intervals.len().saturating_sub(1));
            }
        } else if let Some(end) = job.previous_fire(now) {
            // No run yet and no catch-up: the latest complete interval.
            if let Some(start) = job
                .schedule
                .as_ref()
                .and_then(|c| c.find_previous_occurrence(&end, false).ok())
                && job.start.is_none_or(|s| s <= start)
            {
                intervals.push((start, end));
            }
        }
        intervals.truncate(self.config.jobs.max_catchup_runs);
        for (start, end) in intervals {
            let run = Run {
                run_id: format!("{}__scheduled__{}", job.name, stamp(start)),
                job: job.name.clone(),
                trigger: "scheduled".into(),
                logical_date: start,
                interval_start: start,
                interval_end: end,
                state: RunState::Queued,
                params: None,
                created_at: Utc::now(),
                started_at: None,
                finished_at: None,
                owner: None,
                sla_missed: false,
                error: None,
                heartbeat_at: None,
            };
            if self.create(job, &run).await? {
                tracing::info!(job = %job.name, run = %run.run_id, interval_end = %stamp(end), "scheduled a run");
            }
        }
        Ok(())
    }

    /// Runs the scheduler until `shutdown`: active while this process holds the lease,
    /// standing by otherwise.
    pub async fn scheduler(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        let mut active = false;
        let mut last_renewed = tokio::time::Instant::now();
        let mut drivers: JoinSet<(String, Result<()>)> = JoinSet::new();
        let mut driving: HashMap<String, CancellationToken> = HashMap::new();
        let mut reported: HashSet<String> = HashSet::new();
        tracing::info!(owner = %self.owner, dir = %self.config.jobs.dir(&self.config.data_dir).display(), "scheduler started");
        loop {
            while let Some(done) = drivers.try_join_next() {
                match done {
                    Ok((run_id, result)) => {
                        driving.remove(&run_id);
                        if let Err(e) = result {
                            tracing::error!(run = %run_id, error = %format!("{e:#}"), "driving a run failed; another try takes it over once its heartbeat is stale");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "a run driver panicked"),
                }
            }
            let holds = match self.store.acquire_lease(LEASE, &self.owner, self.ttl).await {
                Ok(h) => {
                    if h {
                        last_renewed = tokio::time::Instant::now();
                    }
                    h
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot renew the scheduler lease");
                    active && last_renewed.elapsed() < self.ttl * 2 / 3
                }
            };
            if holds && !active {
                tracing::info!(owner = %self.owner, "this process is the active scheduler");
            } else if !holds && active {
                tracing::warn!(owner = %self.owner, "lost the scheduler lease: stopping the runs this process drives");
                for token in driving.values() {
                    token.cancel();
                }
            } else if !holds && !active && reported.insert("standby".into()) {
                let holder = self.store.lease_holder(LEASE).await.ok().flatten();
                tracing::info!(owner = %self.owner, active = ?holder.map(|h| h.0), "standing by: another scheduler is active");
            }
            active = holds;
            metrics::gauge!("tarn_scheduler_active").set(if active { 1.0 } else { 0.0 });
            if !active {
                // Only the active scheduler reports its queue: a sum over replicas counts it once.
                metrics::gauge!("tarn_job_runs_queued").set(0.0);
            }
            if active
                && let Err(e) = self
                    .tick_active(&mut drivers, &mut driving, &mut reported, &shutdown)
                    .await
            {
                tracing::warn!(error = %format!("{e:#}"), "scheduler tick failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.tick) => {}
            }
        }
        // Stop the tries, hand the runs to whoever comes next, give the lease up.
        for token in driving.values() {
            token.cancel();
        }
        while drivers.join_next().await.is_some() {}
        for run_id in driving.keys() {
            let _ = self.store.heartbeat(run_id, &self.owner, 0).await;
        }
        if active {
            let _ = self.store.release_lease(LEASE, &self.owner).await;
        }
        tracing::info!("scheduler stopped");
        Ok(())
    }

    async fn tick_active(
        self: &Arc<Self>,
        drivers: &mut JoinSet<(String, Result<()>)>,
        driving: &mut HashMap<String, CancellationToken>,
        reported: &mut HashSet<String>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let (jobs, errors) = self.load();
        for e in errors {
            if reported.insert(e.clone()) {
                tracing::error!(error = %e, "a job file cannot be read; its job does not run");
            }
        }
        let jobs: HashMap<String, Arc<Job>> =
            jobs.into_iter().map(|j| (j.name.clone(), Arc::new(j))).collect();
        let now = Utc::now();
        for job in jobs.values() {
            if let Err(e) = self.schedule_due(job, now).await {
                tracing::warn!(job = %job.name, error = %format!("{e:#}"), "cannot schedule the job's runs");
            }
        }
        let running = self.store.runs_in_state(RunState::Running).await?;
        let mut active_runs: HashMap<String, usize> = HashMap::new();
        for r in &running {
            *active_runs.entry(r.job.clone()).or_default() += 1;
        }
        let stale = now_ms() - millis(self.ttl);
        let orphans = running
            .into_iter()
            .filter(|r| r.heartbeat_at.is_none_or(|h| h < stale) && !driving.contains_key(&r.run_id))
            .collect::<Vec<_>>();
        let queued = self.store.runs_in_state(RunState::Queued).await?;
        // Runs left waiting after this tick (their job at `max_active_runs`, or claimed
        // elsewhere): the scheduler's queue.
        let mut waiting = queued.len();
        for run in orphans.into_iter().chain(queued) {
            let was_queued = run.state == RunState::Queued;
            if driving.contains_key(&run.run_id) {
                waiting -= usize::from(was_queued);
                continue;
            }
            let Some(job) = jobs.get(&run.job) else {
                if run.state == RunState::Queued {
                    waiting -= 1;
                    self.store
                        .fail_queued_run(&run.run_id, &format!("job {} is not in jobs.dir", run.job))
                        .await?;
                }
                continue;
            };
            if run.state == RunState::Queued {
                self.check_sla(job, &run, None).await;
                let n = active_runs.entry(run.job.clone()).or_default();
                if *n >= job.max_active_runs {
                    continue;
                }
                *n += 1;
            }
            if !self.store.claim_run(&run.run_id, &self.owner, stale).await? {
                continue;
            }
            waiting -= usize::from(was_queued);
            if run.state == RunState::Running {
                tracing::warn!(run = %run.run_id, previous = ?run.owner, "taking over a run whose owner stopped renewing it");
            }
            let token = shutdown.child_token();
            driving.insert(run.run_id.clone(), token.clone());
            let me = self.clone();
            let job = job.clone();
            let run_id = run.run_id.clone();
            drivers.spawn(async move {
                let result = async {
                    let run = me.store.run(&run_id).await?.context("the run vanished")?;
                    me.drive(run, job, token).await
                }
                .await;
                (run_id, result)
            });
        }
        metrics::gauge!("tarn_job_runs_queued").set(waiting as f64);
        Ok(())
    }
}

/// When the next run of `job` is due after `now`, for listings.
pub fn next_due(job: &Job, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    job.next_fire(now)
}

/// A time given on the command line or to the API.
pub fn parse_when(value: &str) -> Result<DateTime<Utc>> {
    super::spec::parse_time(value)
}
