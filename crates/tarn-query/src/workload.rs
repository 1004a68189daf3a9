//! Workload management: a process-wide memory budget with spilling, admission control, statement
//! timeouts and the list of running statements (docs/workload.md).
//!
//! - **Memory.** Every statement draws from one DataFusion [`FairSpillPool`] of
//!   `query.memory_limit` bytes (wrapped in a [`TrackConsumersPool`], so an error names the
//!   operators that hold the most). Operators that can spill (sorts, aggregations, sort-merge
//!   joins) write to a [`DiskManager`] under `query.spill_dir`, bounded by `query.spill_limit`;
//!   one that cannot fit fails with [`ErrorKind::OutOfMemory`] (SQLSTATE 53200) naming the
//!   operator and the limit. Each statement executes with a [`StatementMemory`] of its own over
//!   the shared pool, which counts what that statement holds (`tarn_stat_activity`).
//! - **Admission.** At most `query.max_concurrent` statements run; up to `query.queue_size`
//!   more wait (first come, first served) for at most `query.queue_timeout`; per-role limits
//!   (`[query.roles.NAME] max_concurrent`) hold the statements of a user or group on top.
//!   Statements that read only the catalog (`pg_catalog`, `information_schema`, `SHOW`, `SET`,
//!   transaction control, `tarn_stat_activity`) or no table at all skip the queue: the endpoint
//!   decides with [`StatementClass`].
//! - **Timeouts and cancellation.** A [`Statement`] carries a cancellation token and a deadline
//!   (`statement_timeout`); [`Statement::stopped`] resolves when either fires, and the endpoint
//!   stops the plan there, which drops it and frees its memory.
//!
//! The pool, the disk manager and the queue are DataFusion's and tokio's; what is tarn's is the
//! bookkeeping around them.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManager, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit as PoolLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool, UnboundedMemoryPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use tarn_core::config::{MemoryLimit, QueryConfig, parse_size, parse_timeout};
use tarn_core::{Error, ErrorKind, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The name `tarn_stat_activity` is served under.
pub const ACTIVITY_TABLE: &str = "tarn_stat_activity";

/// The workload settings resolved from `[query]`.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    /// The memory budget in bytes; `None`: unlimited.
    pub memory_limit: Option<usize>,
    /// Where statements spill.
    pub spill_dir: PathBuf,
    /// Most bytes of spill files.
    pub spill_limit: u64,
    /// Most statements running at once.
    pub max_concurrent: usize,
    /// Most statements waiting.
    pub queue_size: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// The default `statement_timeout`.
    pub statement_timeout: Option<Duration>,
    /// The default `idle_in_transaction_session_timeout`.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Per role (`[query.roles.NAME]`).
    pub roles: BTreeMap<String, RoleSettings>,
}

/// The limits of one role (`[query.roles.NAME]`), resolved: a timeout the role does not set
/// is the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSettings {
    /// Most running statements of the role (0: only the global limit).
    pub max_concurrent: usize,
    /// The role's default `statement_timeout`.
    pub statement_timeout: Option<Duration>,
    /// The role's default `idle_in_transaction_session_timeout`.
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl WorkloadSettings {
    /// The settings of `config` for a process whose data directory is `data_dir`.
    pub fn from_config(config: &QueryConfig, data_dir: &std::path::Path) -> Result<Self> {
        let memory_limit = match config.memory_limit(machine_memory())? {
            MemoryLimit::Unlimited => None,
            MemoryLimit::Bytes(b) => Some(usize::try_from(b).unwrap_or(usize::MAX)),
        };
        let cpus = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let idle_in_transaction_timeout = parse_timeout(
            "query.idle_in_transaction_session_timeout",
            &config.idle_in_transaction_session_timeout,
        )?;
        let mut roles = BTreeMap::new();
        for (role, limits) in &config.roles {
            let statement_timeout = match &limits.statement_timeout {
                Some(t) => parse_timeout(&format!("query.roles.{role}.statement_timeout"), t)?,
                None => config.statement_timeout()?,
            };
            let idle = match &limits.idle_in_transaction_session_timeout {
                Some(t) => parse_timeout(
                    &format!("query.roles.{role}.idle_in_transaction_session_timeout"),
                    t,
                )?,
                None => idle_in_transaction_timeout,
            };
            roles.insert(
                role.clone(),
                RoleSettings {
                    max_concurrent: limits.max_concurrent,
                    statement_timeout,
                    idle_in_transaction_timeout: idle,
                },
            );
        }
        Ok(Self {
            memory_limit,
            spill_dir: config.spill_dir.clone().unwrap_or_else(|| data_dir.join("spill")),
            spill_limit: parse_size("query.spill_limit", &config.spill_limit)?,
            max_concurrent: if config.max_concurrent == 0 {
                2 * cpus
            } else {
                config.max_concurrent
            },
            queue_size: config.queue_size,
            queue_timeout: tarn_core::config::parse_duration("query.queue_timeout", &config.queue_timeout)?,
            statement_timeout: config.statement_timeout()?,
            idle_in_transaction_timeout,
            roles,
        })
    }
}

/// The machine's memory in bytes: the cgroup's limit when one is set (a container), else the
/// physical memory; 4 GiB when neither can be read.
pub fn machine_memory() -> u64 {
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (physical, cgroup) {
        (Some(p), Some(c)) => p.min(c),
        (Some(p), None) => p,
        (None, Some(c)) => c,
        (None, None) => 4 << 30,
    }
}

/// Whether a statement waits for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    /// Reads only the catalog or no table: runs at once.
    Light,
    /// Reads or writes tables: admitted through the queue.
    Heavy,
}

/// Where a statement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StatementState {
    /// Waiting for a slot.
    Queued = 0,
    /// Running.
    Running = 1,
}

/// Why a statement stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A cancel request or `pg_cancel_backend`.
    Cancelled,
    /// `statement_timeout` passed.
    Timeout,
}

impl StopReason {
    /// PostgreSQL's message for it (SQLSTATE 57014 both).
    pub fn message(self) -> &'static str {
        match self {
            StopReason::Cancelled => "canceling statement due to user request",
            StopReason::Timeout => "canceling statement due to statement timeout",
        }
    }
}

/// Process-wide workload state: the memory pool, the queue, and the statements.
#[derive(Debug)]
pub struct Workload {
    settings: WorkloadSettings,
    runtime: Arc<RuntimeEnv>,
    slots: Arc<Semaphore>,
    role_slots: HashMap<String, Arc<Semaphore>>,
    queued: AtomicUsize,
    next_id: AtomicU64,
    statements: Mutex<BTreeMap<u64, Arc<Statement>>>,
}

impl Workload {
    /// The workload of `settings`: creates (and empties) the spill directory.
    pub fn new(settings: WorkloadSettings) -> Result<Arc<Self>> {
        // Spill files of an earlier process that did not stop cleanly are garbage: each
        // process spills in a `datafusion-*` directory of its own below this one (DataFusion's
        // disk manager), removed when it stops. Nothing else in the directory is touched.
        for entry in std::fs::read_dir(&settings.spill_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("datafusion-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        std::fs::create_dir_all(&settings.spill_dir).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "cannot create the spill directory (query.spill_dir)",
            )
            .with_context("dir", settings.spill_dir.display())
            .with_source(e)
        })?;
        let top = NonZeroUsize::new(3).expect("3 > 0");
        let pool: Arc<dyn MemoryPool> = match settings.memory_limit {
            Some(limit) => Arc::new(TrackConsumersPool::new(FairSpillPool::new(limit), top)),
            None => Arc::new(TrackConsumersPool::new(UnboundedMemoryPool::default(), top)),
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManager::builder()
                    .with_mode(DiskManagerMode::Directories(vec![settings.spill_dir.clone()]))
                    .with_max_temp_directory_size(settings.spill_limit),
            )
            .build_arc()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot set up query memory and spilling: {e}"),
                )
            })?;
        let role_slots = settings
            .roles
            .iter()
            .filter(|(_, r)| r.max_concurrent > 0)
            .map(|(role, r)| (role.clone(), Arc::new(Semaphore::new(r.max_concurrent))))
            .collect();
        CONFIGURED_LIMIT.store(settings.memory_limit.unwrap_or(0), Ordering::Relaxed);
        metrics::gauge!("tarn_query_memory_limit_bytes").set(settings.memory_limit.unwrap_or(0) as f64);
        metrics::gauge!("tarn_query_max_concurrent").set(settings.max_concurrent as f64);
        Ok(Arc::new(Self {
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            role_slots,
            queued: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            statements: Mutex::new(BTreeMap::new()),
            runtime,
            settings,
        }))
    }

    /// A workload without limits (tests, `tarn sql`): unlimited memory, spilling to the system's
    /// temporary directory, no queue.
    pub fn unlimited() -> Arc<Self> {
        let spill_dir = std::env::temp_dir().join(format!("tarn-spill-{}", std::process::id()));
        Self::new(WorkloadSettings {
            memory_limit: None,
            spill_dir,
            spill_limit: 100 << 30,
            max_concurrent: usize::MAX >> 4,
            queue_size: 0,
            queue_timeout: Duration::from_secs(60),
            statement_timeout: None,
            idle_in_transaction_timeout: None,
            roles: BTreeMap::new(),
        })
        .expect("an unlimited workload")
    }

    /// The settings.
    pub fn settings(&self) -> &WorkloadSettings {
        &self.settings
    }

    /// The runtime every statement shares: the memory pool and the disk manager.
    pub fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    /// Bytes held by all statements together.
    pub fn memory_in_use(&self) -> usize {
        self.runtime.memory_pool.reserved()
    }

    /// The default `statement_timeout` for a principal in `roles`: the shortest of its roles'
    /// (`[query.roles.NAME] statement_timeout`), else `query.statement_timeout`.
    pub fn default_timeout(&self, roles: &[String]) -> Option<Duration> {
        self.of_roles(roles, |r| r.statement_timeout)
            .unwrap_or(self.settings.statement_timeout)
    }

    /// The default `idle_in_transaction_session_timeout` for a principal in `roles`: the
    /// shortest of its roles' (`[query.roles.NAME] idle_in_transaction_session_timeout`), else
    /// `query.idle_in_transaction_session_timeout`.
    pub fn default_idle_in_transaction_timeout(&self, roles: &[String]) -> Option<Duration> {
        self.of_roles(roles, |r| r.idle_in_transaction_timeout)
            .unwrap_or(self.settings.idle_in_transaction_timeout)
    }

    /// The shortest of `timeout` of the configured roles among `roles` (`Some(None)`: none of
    /// them has one); `None` when no role of `roles` is configured.
    fn of_roles(
        &self,
        roles: &[String],
        timeout: impl Fn(&RoleSettings) -> Option<Duration>,
    ) -> Option<Option<Duration>> {
        let of_roles: Vec<Option<Duration>> = roles
            .iter()
            .filter_map(|r| self.settings.roles.get(r).map(&timeout))
            .collect();
        (!of_roles.is_empty()).then(|| of_roles.into_iter().flatten().min())
    }

    /// Registers a statement of connection `pid` (queued until [`Self::admit`]).
    pub fn begin(
        self: &Arc<Self>,
        pid: i32,
        user: &str,
        query: &str,
        timeout: Option<Duration>,
        token: CancellationToken,
    ) -> Arc<Statement> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let statement = Arc::new(Statement {
            id,
            pid,
            user: user.to_string(),
            query: query.to_string(),
            started: SystemTime::now(),
            state: AtomicU8::new(StatementState::Queued as u8),
            state_change: Mutex::new(SystemTime::now()),
            deadline: timeout.map(|t| now + t),
            timeout,
            token,
            reason: Mutex::new(None),
            memory: Arc::new(StatementMemory {
                inner: self.runtime.memory_pool.clone(),
                used: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }),
            plan: Mutex::new(None),
            workload: Arc::downgrade(self),
        });
        self.statements
            .lock()
            .expect("statement list poisoned")
            .insert(id, statement.clone());
        statement
    }

    fn end(&self, statement: &Statement) {
        self.statements
            .lock()
            .expect("statement list poisoned")
            .remove(&statement.id);
        let (spilled, spills) = statement.spilled();
        if spills > 0 {
            metrics::counter!("tarn_query_spills_total").increment(spills as u64);
            metrics::counter!("tarn_query_spilled_bytes_total").increment(spilled as u64);
        }
    }

    /// Waits for a slot for `statement` of a principal in `roles`: at once when one is free,
    /// otherwise in the queue; refuses with [`ErrorKind::TooManyStatements`] when the queue is
    /// full or the wait passes `query.queue_timeout`, and stops when the statement is cancelled
    /// or times out meanwhile.
    pub async fn admit(&self, statement: &Statement, roles: &[String]) -> Result<Admission> {
        let mut role_sems: Vec<(&String, &Arc<Semaphore>)> = roles
            .iter()
            .filter_map(|r| self.role_slots.get_key_value(r))
            .collect();
        role_sems.sort_by(|a, b| a.0.cmp(b.0));
        role_sems.dedup_by(|a, b| a.0 == b.0);
        // Free slots: no queue.
        let mut permits = Vec::new();
        let mut immediate = true;
        for (_, sem) in &role_sems {
            match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    immediate = false;
                    break;
                }
            }
        }
        if immediate && let Ok(p) = self.slots.clone().try_acquire_owned() {
            permits.push(p);
            statement.set_state(StatementState::Running);
            return Ok(self.admitted(permits));
        }
        drop(permits);
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.settings.queue_size {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("tarn_query_rejected_total", "reason" => "queue_full").increment(1);
            return Err(Error::new(
                ErrorKind::TooManyStatements,
                format!(
                    "too many statements: all {} slots (query.max_concurrent) are busy and the queue is full ({} waiting, query.queue_size); try again later",
                    self.settings.max_concurrent, self.settings.queue_size
                ),
            ));
        }
        metrics::gauge!("tarn_query_queued").increment(1.0);
        let waited = Instant::now();
        let wait = async {
            let mut permits = Vec::new();
            for (_, sem) in &role_sems {
                permits.push(
                    Arc::clone(sem)
                        .acquire_owned()
                        .await
                        .expect("semaphore never closed"),
                );
            }
            permits.push(
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed"),
            );
            permits
        };
        let outcome = tokio::select! {
            permits = tokio::time::timeout(self.settings.queue_timeout, wait) => Ok(permits),
            reason = statement.stopped() => Err(reason),
        };
        self.queued.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("tarn_query_queued").decrement(1.0);
        metrics::histogram!("tarn_query_queue_wait_seconds").record(waited.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(permits)) => {
                statement.set_state(StatementState::Running);
                Ok(self.admitted(permits))
            }
            Ok(Err(_)) => {
                metrics::counter!("tarn_query_rejected_total", "reason" => "queue_timeout").increment(1);
                let limited: Vec<String> = role_sems
                    .iter()
                    .filter(|(_, s)| s.available_permits() == 0)
                    .map(|(r, _)| format!("query.roles.{r}.max_concurrent"))
                    .collect();
                Err(Error::new(
                    ErrorKind::TooManyStatements,
                    format!(
                        "too many statements: waited {} (query.queue_timeout) for a slot ({}); try again later",
                        humantime_secs(self.settings.queue_timeout),
                        if limited.is_empty() {
                            format!("query.max_concurrent = {}", self.settings.max_concurrent)
                        } else {
                            limited.join(", ")
                        }
                    ),
                ))
            }
            Err(reason) => Err(stop_error(reason)),
        }
    }

    fn admitted(&self, permits: Vec<OwnedSemaphorePermit>) -> Admission {
        metrics::gauge!("tarn_query_running").increment(1.0);
        Admission { _permits: permits }
    }

    /// The statements, oldest first.
    pub fn statements(&self) -> Vec<Arc<Statement>> {
        self.statements
            .lock()
            .expect("statement list poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Cancels the statements of connection `pid`; `may` decides per statement (by its user)
    /// whether the caller may. Returns whether one was cancelled.
    pub fn cancel_pid(&self, pid: i32, may: impl Fn(&Statement) -> bool) -> Result<bool> {
        let targets: Vec<Arc<Statement>> = self.statements().into_iter().filter(|s| s.pid == pid).collect();
        let mut cancelled = false;
        for s in targets {
            if !may(&s) {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "permission denied to cancel the statement of process {pid}: it runs for another user"
                    ),
                ));
            }
            s.cancel(StopReason::Cancelled);
            cancelled = true;
        }
        Ok(cancelled)
    }

    /// `tarn_stat_activity` over this workload.
    pub fn activity_table(self: &Arc<Self>) -> Arc<dyn TableProvider> {
        Arc::new(ActivityTable {
            workload: Arc::downgrade(self),
        })
    }
}

fn humantime_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The 57014 error of a stopped statement.
pub fn stop_error(reason: StopReason) -> Error {
    Error::new(ErrorKind::Cancelled, reason.message())
}

/// A statement's slots; released when dropped.
#[derive(Debug)]
pub struct Admission {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        metrics::gauge!("tarn_query_running").decrement(1.0);
    }
}

/// One statement: who runs it, where it is, what it holds, and how to stop it. Removed from
/// the list when the last reference is dropped ([`StatementGuard`]).
#[derive(Debug)]
pub struct Statement {
    id: u64,
    /// The connection's process id (what `pg_cancel_backend` takes).
    pub pid: i32,
    /// The user it runs for.
    pub user: String,
    /// Its text.
    pub query: String,
    started: SystemTime,
    state: AtomicU8,
    state_change: Mutex<SystemTime>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    token: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    memory: Arc<StatementMemory>,
    plan: Mutex<Option<Arc<dyn ExecutionPlan>>>,
    workload: std::sync::Weak<Workload>,
}

impl Statement {
    /// Its id, unique in this process (the `query_id` of its span and log lines).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Marks a statement that skips the queue as running.
    pub fn mark_running(&self) {
        self.set_state(StatementState::Running);
    }

    fn set_state(&self, state: StatementState) {
        self.state.store(state as u8, Ordering::Relaxed);
        *self.state_change.lock().expect("statement poisoned") = SystemTime::now();
    }

    /// Where it is.
    pub fn state(&self) -> StatementState {
        if self.state.load(Ordering::Relaxed) == StatementState::Queued as u8 {
            StatementState::Queued
        } else {
            StatementState::Running
        }
    }

    /// Stops it (the endpoint ends its rows with 57014).
    pub fn cancel(&self, reason: StopReason) {
        self.reason
            .lock()
            .expect("statement poisoned")
            .get_or_insert(reason);
        self.token.cancel();
    }

    /// Why it stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("statement poisoned")
    }

    /// Resolves when it is cancelled or its `statement_timeout` passes, with the reason.
    pub async fn stopped(&self) -> StopReason {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            () = self.token.cancelled() => self.reason.lock().expect("statement poisoned").unwrap_or(StopReason::Cancelled),
            () = deadline => {
                self.cancel(StopReason::Timeout);
                StopReason::Timeout
            }
        };
        match reason {
            StopReason::Timeout => metrics::counter!("tarn_query_timeouts_total").increment(1),
            StopReason::Cancelled => metrics::counter!("tarn_query_cancelled_total").increment(1),
        }
        reason
    }

    /// Its `statement_timeout`.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Records the physical plan, whose metrics say what it spilled.
    pub fn set_plan(&self, plan: Arc<dyn ExecutionPlan>) {
        *self.plan.lock().expect("statement poisoned") = Some(plan);
    }

    /// Bytes spilled and spill files written so far.
    pub fn spilled(&self) -> (usize, usize) {
        fn walk(plan: &Arc<dyn ExecutionPlan>, acc: &mut (usize, usize)) {
            if let Some(m) = plan.metrics() {
                acc.0 += m.spilled_bytes().unwrap_or(0);
                acc.1 += m.spill_count().unwrap_or(0);
            }
            for child in plan.children() {
                walk(child, acc);
            }
        }
        let mut acc = (0, 0);
        if let Some(plan) = self.plan.lock().expect("statement poisoned").as_ref() {
            walk(plan, &mut acc);
        }
        acc
    }

    /// The runtime this statement executes with: the shared pool seen through its own
    /// [`StatementMemory`], the shared disk manager.
    pub fn runtime(&self) -> Arc<RuntimeEnv> {
        let shared = match self.workload.upgrade() {
            Some(w) => w.runtime.clone(),
            None => return Arc::new(RuntimeEnv::default()),
        };
        RuntimeEnvBuilder::from_runtime_env(&shared)
            .with_memory_pool(self.memory.clone())
            .build_arc()
            .unwrap_or(shared)
    }

    /// `ctx` executing with [`Self::runtime`].
    pub fn task_context(&self, ctx: TaskContext) -> Arc<TaskContext> {
        Arc::new(ctx.with_runtime(self.runtime()))
    }

    /// Bytes it holds now, and at most so far.
    pub fn memory(&self) -> (usize, usize) {
        (
            self.memory.used.load(Ordering::Relaxed),
            self.memory.peak.load(Ordering::Relaxed),
        )
    }
}

/// Keeps a statement listed while alive; ends it (and counts what it spilled) when dropped.
#[derive(Debug)]
pub struct StatementGuard(pub Arc<Statement>);

impl Drop for StatementGuard {
    fn drop(&mut self) {
        if let Some(w) = self.0.workload.upgrade() {
            w.end(&self.0);
        }
    }
}

/// One statement's view of the shared pool: every reservation goes to the shared pool, and
/// is counted here too, so `tarn_stat_activity` shows what each statement holds. An error
/// names the limit.
#[derive(Debug)]
pub struct StatementMemory {
    inner: Arc<dyn MemoryPool>,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl StatementMemory {
    fn add(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("tarn_query_memory_bytes").increment(n as f64);
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        metrics::gauge!("tarn_query_memory_bytes").decrement(n as f64);
    }
}

impl MemoryPool for StatementMemory {
    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.add(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.sub(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        match self.inner.try_grow(reservation, additional) {
            Ok(()) => {
                self.add(additional);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("tarn_query_memory_exhausted_total").increment(1);
                Err(e)
            }
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> PoolLimit {
        self.inner.memory_limit()
    }
}

/// Plans `plan` and starts executing it (with `task`'s runtime, default the state's), waiting
/// for its first batch. When that runs out of memory — a hash join's build side, which cannot
/// spill, is built before the first row — and hash joins were preferred, the statement is
/// planned again with sort-merge joins, which spill, and started once more
/// (`tarn_query_replanned_total`); its first attempt's memory is freed first. `on_plan` sees
/// each physical plan (for its spill metrics).
pub async fn execute_with_fallback(
    state: datafusion::execution::SessionState,
    plan: &datafusion::logical_expr::LogicalPlan,
    task: impl Fn(&datafusion::execution::SessionState) -> Arc<TaskContext>,
    on_plan: impl Fn(&Arc<dyn ExecutionPlan>),
) -> DfResult<datafusion::execution::SendableRecordBatchStream> {
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use futures::StreamExt;
    let mut state = state;
    let mut retried = false;
    loop {
        let physical = state.create_physical_plan(plan).await?;
        on_plan(&physical);
        let mut stream = datafusion::physical_plan::execute_stream(physical, task(&state))?;
        let first = stream.next().await;
        let exhausted = matches!(&first, Some(Err(e)) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(m) if !m.contains("disk space")));
        if exhausted && !retried && state.config_options().optimizer.prefer_hash_join {
            drop(stream);
            retried = true;
            metrics::counter!("tarn_query_replanned_total").increment(1);
            tracing::info!(
                "statement out of memory with hash joins: planning it again with sort-merge joins, which spill"
            );
            let mut config = state.config().clone();
            config.options_mut().optimizer.prefer_hash_join = false;
            state = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
                .with_config(config)
                .build();
            continue;
        }
        let schema = stream.schema();
        return Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(first).chain(stream),
        )));
    }
}

/// The memory budget of the last [`Workload`] made (the process's), 0 for none: what
/// [`out_of_memory`] names.
static CONFIGURED_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// A DataFusion error that ran out of memory (or of spill space), as tarn's error naming the
/// limit: 53200, or 53100 for spill space.
pub fn out_of_memory(message: &str) -> Error {
    if message.contains("disk space") || message.contains("temp directory") {
        let message = message.trim_start_matches("Resources exhausted: ");
        return Error::new(
            ErrorKind::OutOfMemory,
            format!(
                "out of spill space: the statements' spill files would exceed query.spill_limit: {message}"
            ),
        );
    }
    let limit = match CONFIGURED_LIMIT.load(Ordering::Relaxed) {
        0 => "unlimited".to_string(),
        n => human_bytes(n),
    };
    let message = message.trim_start_matches("Resources exhausted: ");
    Error::new(
        ErrorKind::OutOfMemory,
        format!(
            "out of memory: the statement needs more than its share of query.memory_limit ({limit}) and cannot spill: {message}"
        ),
    )
}

/// `n` bytes for people: `256.0 MiB`.
pub fn human_bytes(n: usize) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", units[unit])
}

/// `pg_cancel_backend(pid)`: cancels the statements of connection `pid` (true when there was
/// one). With a policy configured (`restricted`) only one's own statements, as PostgreSQL
/// allows only to the same role. A constant pid is cancelled while the statement is planned,
/// on behalf of its principal.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CancelBackend {
    workload: WorkloadRef,
    restricted: bool,
    signature: datafusion::logical_expr::Signature,
}

/// The workload, compared by address (UDFs must be `Eq + Hash`).
#[derive(Debug, Clone)]
struct WorkloadRef(std::sync::Weak<Workload>);

impl PartialEq for WorkloadRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.ptr_eq(&other.0)
    }
}

impl Eq for WorkloadRef {}

impl std::hash::Hash for WorkloadRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_ptr().hash(state);
    }
}

impl CancelBackend {
    fn cancel(&self, pid: i32) -> DfResult<bool> {
        let Some(workload) = self.workload.0.upgrade() else {
            return Ok(false);
        };
        let caller = crate::governance::current_principal();
        let restricted = self.restricted;
        workload
            .cancel_pid(pid, |s| {
                !restricted || caller.as_ref().is_some_and(|c| c.user == s.user)
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for CancelBackend {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "pg_cancel_backend"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn simplify(
        &self,
        args: Vec<Expr>,
        _info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        use datafusion::common::ScalarValue;
        use datafusion::logical_expr::simplify::ExprSimplifyResult;
        if let [Expr::Literal(value, _)] = args.as_slice()
            && let Ok(ScalarValue::Int32(Some(pid))) = value.cast_to(&DataType::Int32)
        {
            let done = self.cancel(pid)?;
            return Ok(ExprSimplifyResult::Simplified(Expr::Literal(
                ScalarValue::Boolean(Some(done)),
                None,
            )));
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> DfResult<datafusion::logical_expr::ColumnarValue> {
        use arrow::array::{AsArray, BooleanArray};
        use arrow::datatypes::Int32Type;
        let pids = args.args[0].to_array(args.number_rows)?;
        let pids = arrow::compute::cast(&pids, &DataType::Int32)?;
        let mut out = Vec::with_capacity(pids.len());
        for pid in pids.as_primitive::<Int32Type>() {
            out.push(match pid {
                Some(pid) => Some(self.cancel(pid)?),
                None => None,
            });
        }
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            BooleanArray::from(out),
        )))
    }
}

impl Workload {
    /// `pg_cancel_backend(pid)` over this workload; `restricted`: only one's own statements.
    pub fn cancel_backend_udf(self: &Arc<Self>, restricted: bool) -> datafusion::logical_expr::ScalarUDF {
        datafusion::logical_expr::ScalarUDF::new_from_impl(CancelBackend {
            workload: WorkloadRef(Arc::downgrade(self)),
            restricted,
            signature: datafusion::logical_expr::Signature::uniform(
                1,
                vec![DataType::Int32, DataType::Int64],
                datafusion::logical_expr::Volatility::Volatile,
            ),
        })
    }
}

/// `tarn_stat_activity`: one row per running or queued statement.
#[derive(Debug)]
struct ActivityTable {
    workload: std::sync::Weak<Workload>,
}

fn activity_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Int32, false),
        Field::new("usename", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("query_start", ts.clone(), false),
        Field::new("state_change", ts, false),
        Field::new("statement_timeout_ms", DataType::Int64, true),
        Field::new("memory_bytes", DataType::Int64, false),
        Field::new("peak_memory_bytes", DataType::Int64, false),
        Field::new("spilled_bytes", DataType::Int64, false),
        Field::new("spill_files", DataType::Int64, false),
    ]))
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn activity_batch(statements: &[Arc<Statement>]) -> DfResult<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(statements.iter().map(|s| s.pid))),
        Arc::new(StringArray::from_iter_values(
            statements.iter().map(|s| s.user.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(statements.iter().map(
            |s| match s.state() {
                StatementState::Queued => "queued",
                StatementState::Running => "active",
            },
        ))),
        Arc::new(StringArray::from_iter_values(
            statements.iter().map(|s| s.query.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(statements.iter().map(|s| micros(s.started)))
                .with_timezone("+00:00"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                statements
                    .iter()
                    .map(|s| micros(*s.state_change.lock().expect("statement poisoned"))),
            )
            .with_timezone("+00:00"),
        ),
        Arc::new(Int64Array::from_iter(statements.iter().map(|s| {
            s.timeout
                .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
        }))),
        Arc::new(Int64Array::from_iter_values(
            statements.iter().map(|s| s.memory().0 as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            statements.iter().map(|s| s.memory().1 as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            statements.iter().map(|s| s.spilled().0 as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            statements.iter().map(|s| s.spilled().1 as i64),
        )),
    ];
    RecordBatch::try_new(activity_schema(), cols).map_err(DataFusionError::from)
}

#[async_trait]
impl TableProvider for ActivityTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        activity_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let statements = self
            .workload
            .upgrade()
            .map(|w| w.statements())
            .unwrap_or_default();
        let batch = activity_batch(&statements)?;
        MemTable::try_new(activity_schema(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: usize, queue: usize, timeout: Duration) -> WorkloadSettings {
        WorkloadSettings {
            memory_limit: Some(64 << 20),
            spill_dir: std::env::temp_dir().join(format!("tarn-wlm-unit-{}", uuid::Uuid::new_v4())),
            spill_limit: 1 << 30,
            max_concurrent: max,
            queue_size: queue,
            queue_timeout: timeout,
            statement_timeout: None,
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
            roles: BTreeMap::from([(
                "analyst".to_string(),
                RoleSettings {
                    max_concurrent: 1,
                    statement_timeout: Some(Duration::from_secs(5)),
                    idle_in_transaction_timeout: Some(Duration::from_secs(2)),
                },
            )]),
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_freed_slot_admits_the_next() {
        let w = Workload::new(settings(1, 1, Duration::from_secs(30))).unwrap();
        let a = w.begin(1, "u", "a", None, CancellationToken::new());
        let first = w.admit(&a, &[]).await.unwrap();
        assert_eq!(a.state(), StatementState::Running);
        let b = w.begin(2, "u", "b", None, CancellationToken::new());
        let waiting = {
            let (w, b) = (w.clone(), b.clone());
            tokio::spawn(async move { w.admit(&b, &[]).await.map(|_| ()) })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.queued.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "b never queued");
            tokio::task::yield_now().await;
        }
        let c = w.begin(3, "u", "c", None, CancellationToken::new());
        let refused = w.admit(&c, &[]).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::TooManyStatements);
        assert!(refused.to_string().contains("query.queue_size"), "{refused}");
        assert_eq!(b.state(), StatementState::Queued);
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(b.state(), StatementState::Running);
        std::fs::remove_dir_all(&w.settings.spill_dir).ok();
    }

    #[tokio::test]
    async fn a_role_limit_queues_its_second_statement_and_the_wait_times_out() {
        let w = Workload::new(settings(4, 4, Duration::from_millis(100))).unwrap();
        let roles = vec!["analyst".to_string()];
        let a = w.begin(1, "u", "a", None, CancellationToken::new());
        let _first = w.admit(&a, &roles).await.unwrap();
        let b = w.begin(2, "u", "b", None, CancellationToken::new());
        let err = w.admit(&b, &roles).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooManyStatements);
        assert!(
            err.to_string().contains("query.roles.analyst.max_concurrent"),
            "{err}"
        );
        // Another role is not held back.
        let c = w.begin(3, "v", "c", None, CancellationToken::new());
        w.admit(&c, &[]).await.unwrap();
        assert_eq!(w.default_timeout(&roles), Some(Duration::from_secs(5)));
        assert_eq!(w.default_timeout(&[]), None);
        assert_eq!(
            w.default_idle_in_transaction_timeout(&roles),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            w.default_idle_in_transaction_timeout(&["v".to_string()]),
            Some(Duration::from_secs(60))
        );
        std::fs::remove_dir_all(&w.settings.spill_dir).ok();
    }

    #[tokio::test]
    async fn a_queued_statement_stops_at_its_timeout() {
        let w = Workload::new(settings(1, 4, Duration::from_secs(30))).unwrap();
        let a = w.begin(1, "u", "a", None, CancellationToken::new());
        let _first = w.admit(&a, &[]).await.unwrap();
        let b = w.begin(
            2,
            "u",
            "b",
            Some(Duration::from_millis(50)),
            CancellationToken::new(),
        );
        let err = w.admit(&b, &[]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert!(err.to_string().contains("statement timeout"), "{err}");
        std::fs::remove_dir_all(&w.settings.spill_dir).ok();
    }
}
