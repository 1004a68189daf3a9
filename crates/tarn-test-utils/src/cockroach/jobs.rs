//! Changefeed flows and jobs: what a changefeed emits and when, and the life of a webhook
//! changefeed's job.
//!
//! A flow emits (research §9): with an initial scan, every row of its tables as of the scan
//! time (the cursor, or the statement time) with `updated` = that time; then every change
//! after it, as the capture stamps them; and, at checkpoints, a resolved timestamp R: no change
//! at or before R will come later. Checkpoints come no more often than
//! `min_checkpoint_frequency` (default 30 s); a resolved message is emitted at a checkpoint
//! when the high-water mark has advanced by at least `resolved` since the last one. R trails
//! the stand-in clock by the closed-timestamp lag (CockroachDB's default
//! `kv.closed_timestamp.target_duration` is 3 s, and resolved timestamps typically reach a
//! changefeed 3–7 s behind real time; research follow-up A). Row messages go out as soon as
//! the capture has them.
//!
//! At least once: with [`super::StandInOptions::duplicates`], messages of a resolved window are
//! reordered across keys (each key's messages keep their order) and some are sent twice.
//!
//! Jobs (webhook changefeeds) go `running` → `succeeded` (`initial_scan = 'only'`),
//! `canceled` (`CANCEL JOB`) or `failed` (a terminal error). When a sink's retries run out
//! the error is retryable, as CockroachDB treats all but a few errors: the job stays
//! `running` with `running_status` `retryable error: …` and its flow restarts from the
//! job's high-water mark, sending again what came after it (research follow-up G; docs
//! `changefeed-sinks.md`: "setting this field will not prevent the changefeed from retrying
//! indefinitely").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::clock::{Hlc, wall_now};
use super::encode::{self, EnvelopeOptions};
use super::history::Capture;
use super::options::{FeedOptions, InitialScan, SchemaChangePolicy};
use super::webhook::WebhookSink;

/// A table a changefeed watches.
#[derive(Debug, Clone)]
pub struct Target {
    /// OID in the backing database.
    pub oid: u32,
    /// Topic (`db.schema.table` with `full_table_name`, else the table name).
    pub topic: String,
    /// `db.schema.table`.
    pub full_name: String,
}

/// What a flow runs.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    /// Feed id (the job id for jobs).
    pub id: u64,
    /// The feed's number in this stand-in (seeds its duplicate injection).
    pub seq: u64,
    /// Targets.
    pub targets: Vec<Target>,
    /// Options.
    pub opts: FeedOptions,
    /// Envelope switches.
    pub env: EnvelopeOptions,
    /// Statement time.
    pub statement_time: Hlc,
    /// The cursor, evaluated.
    pub cursor: Option<Hlc>,
}

/// A message to a sinkless client.
#[derive(Debug, Clone)]
pub enum Out {
    /// A row: table (topic), key, value.
    Row {
        /// The `table` column.
        topic: String,
        /// The `key` column.
        key: String,
        /// The `value` column.
        value: String,
    },
    /// A resolved message (`table` and `key` NULL).
    Resolved(String),
}

/// Where a flow's messages go.
pub enum Sink {
    /// A sinkless changefeed's connection.
    Sinkless(mpsc::Sender<Out>),
    /// A webhook.
    Webhook(Box<WebhookSink>),
}

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnd {
    /// `initial_scan = 'only'`: the scan is done.
    ScanDone,
    /// Stopped from outside, or the sinkless client went away.
    Stopped,
}

/// Why a flow failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// Retried by restarting the flow from the high-water mark.
    Retryable(String),
    /// Fails the changefeed.
    Terminal(String),
}

/// What a resolved message said, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEmitted {
    /// The changefeed: `job <id>` or `sinkless <n>`.
    pub feed: String,
    /// The resolved timestamp.
    pub ts: Hlc,
    /// When it was emitted (system clock).
    pub at: SystemTime,
}

/// What flows share.
#[derive(Clone)]
pub struct FlowCx {
    /// The capture.
    pub capture: Arc<Capture>,
    /// Closed-timestamp lag in nanoseconds (`kv.closed_timestamp.target_duration`).
    pub lag: Arc<std::sync::atomic::AtomicU64>,
    /// Inject duplicates and reordering.
    pub duplicates: bool,
    /// Seed of that.
    pub seed: u64,
    /// Resolved messages emitted.
    pub resolved_log: Arc<Mutex<Vec<ResolvedEmitted>>>,
}

/// xorshift64*: a seeded RNG for duplicate injection.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reorders a window across keys, keeping each key's order, and repeats some messages later.
fn shuffle(msgs: Vec<(String, String, String)>, rng: &mut Rng) -> Vec<(String, String, String)> {
    let mut queues: Vec<std::collections::VecDeque<(String, String, String)>> = Vec::new();
    let mut by_key: HashMap<(String, String), usize> = HashMap::new();
    let mut slots = Vec::with_capacity(msgs.len());
    for m in msgs {
        let k = (m.0.clone(), m.1.clone());
        let q = *by_key.entry(k).or_insert_with(|| {
            queues.push(Default::default());
            queues.len() - 1
        });
        queues[q].push_back(m);
        slots.push(q);
    }
    for i in (1..slots.len()).rev() {
        let j = rng.below(i + 1);
        slots.swap(i, j);
    }
    let mut out: Vec<(String, String, String)> = slots
        .into_iter()
        .map(|q| queues[q].pop_front().expect("one per slot"))
        .collect();
    let n = out.len();
    for i in 0..n {
        if rng.below(4) == 0 {
            let copy = out[i].clone();
            let at = i + 1 + rng.below(out.len() - i);
            out.insert(at.min(out.len()), copy);
        }
    }
    out
}

impl Sink {
    async fn row(&mut self, topic: String, key: String, value: String) -> Result<bool, FlowError> {
        match self {
            Sink::Sinkless(tx) => Ok(tx.send(Out::Row { topic, key, value }).await.is_ok()),
            Sink::Webhook(w) => w.row(value).await.map(|()| true).map_err(FlowError::Retryable),
        }
    }

    async fn resolved(&mut self, body: String) -> Result<bool, FlowError> {
        match self {
            Sink::Sinkless(tx) => Ok(tx.send(Out::Resolved(body)).await.is_ok()),
            Sink::Webhook(w) => w
                .resolved(body)
                .await
                .map(|()| true)
                .map_err(FlowError::Retryable),
        }
    }

    async fn flush(&mut self) -> Result<(), FlowError> {
        match self {
            Sink::Sinkless(_) => Ok(()),
            Sink::Webhook(w) => w.flush().await.map_err(FlowError::Retryable),
        }
    }

    async fn tick(&mut self) -> Result<(), FlowError> {
        match self {
            Sink::Sinkless(_) => Ok(()),
            Sink::Webhook(w) => w.tick().await.map_err(FlowError::Retryable),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Sink::Sinkless(_) => None,
            Sink::Webhook(w) => w.deadline(),
        }
    }

    fn is_webhook(&self) -> bool {
        matches!(self, Sink::Webhook(_))
    }
}

/// Messages waiting for the next checkpoint (with duplicates on) or going straight out.
struct Window {
    hold: bool,
    msgs: Vec<(String, String, String)>,
}

impl Window {
    async fn push(
        &mut self,
        sink: &mut Sink,
        topic: &str,
        key: &str,
        value: String,
    ) -> Result<bool, FlowError> {
        if self.hold {
            self.msgs.push((topic.to_string(), key.to_string(), value));
            Ok(true)
        } else {
            sink.row(topic.to_string(), key.to_string(), value).await
        }
    }

    async fn release(&mut self, sink: &mut Sink, rng: &mut Rng) -> Result<bool, FlowError> {
        let msgs = shuffle(std::mem::take(&mut self.msgs), rng);
        for (t, k, v) in msgs {
            if !sink.row(t, k, v).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Runs a changefeed flow until it ends; `resume` is the high-water mark to restart from.
/// Checkpoints (high-water marks) are sent to `checkpoints`.
pub async fn run_flow(
    cx: &FlowCx,
    spec: &FeedSpec,
    name: &str,
    sink: &mut Sink,
    resume: Option<Hlc>,
    stop: &CancellationToken,
    checkpoints: Option<&mpsc::UnboundedSender<Hlc>>,
) -> Result<FlowEnd, FlowError> {
    let mut rng = Rng::new(cx.seed ^ spec.seq);
    let targets: HashMap<u32, &Target> = spec.targets.iter().map(|t| (t.oid, t)).collect();
    let oids: Vec<u32> = spec.targets.iter().map(|t| t.oid).collect();
    let mut frontier_rx = cx.capture.subscribe();
    let mut window = Window {
        hold: cx.duplicates,
        msgs: Vec::new(),
    };
    let mut env = spec.env;
    if sink.is_webhook() {
        // Webhook sinks force key_in_value and topic_in_value (changefeed_stmt.go).
        env.key_in_value = true;
        env.topic_in_value = true;
    }
    let start = resume.unwrap_or(spec.cursor.unwrap_or(spec.statement_time));
    cx.capture.protect(spec.id, Some(start));
    let mut pos = start;
    if resume.is_none() && spec.opts.initial_scan != InitialScan::No {
        let (at, rows) = cx
            .capture
            .scan(&oids, Some(start))
            .await
            .map_err(|e| FlowError::Retryable(format!("{e:#}")))?;
        for r in rows {
            let Some(t) = targets.get(&r.table.oid) else {
                continue;
            };
            let value = encode::wrapped(
                &r.table.columns,
                Some(&r.row),
                None,
                &r.key,
                &t.topic,
                at,
                r.mvcc,
                &env,
            );
            if !window.push(sink, &t.topic, &r.key, value).await? {
                return Ok(FlowEnd::Stopped);
            }
        }
        pos = at;
        if spec.opts.initial_scan == InitialScan::Only {
            if !window.release(sink, &mut rng).await? {
                return Ok(FlowEnd::Stopped);
            }
            sink.flush().await?;
            return Ok(FlowEnd::ScanDone);
        }
    }
    let floor = pos;
    let freq = spec.opts.min_checkpoint_frequency;
    let mut next_checkpoint = Instant::now() + freq;
    let mut high_water = resume;
    let mut last_resolved = resume;
    loop {
        let (txns, frontier) = cx.capture.since(pos);
        for txn in &txns {
            if let Some(table) = txn.backfill {
                if !targets.contains_key(&table) {
                    continue;
                }
                match spec.opts.schema_change_policy {
                    SchemaChangePolicy::Backfill => {}
                    SchemaChangePolicy::Stop => {
                        return Err(FlowError::Terminal(format!(
                            "schema change occurred at {}",
                            txn.ts.crdb_display()
                        )));
                    }
                    SchemaChangePolicy::NoBackfill | SchemaChangePolicy::Ignore => continue,
                }
            }
            for c in &txn.changes {
                let Some(t) = targets.get(&c.table.oid) else {
                    continue;
                };
                let before = if txn.backfill.is_some() {
                    None
                } else {
                    c.before.as_ref()
                };
                let value = encode::wrapped(
                    &c.table.columns,
                    c.after.as_ref(),
                    before,
                    &c.key,
                    &t.topic,
                    txn.ts,
                    txn.ts,
                    &env,
                );
                if !window.push(sink, &t.topic, &c.key, value).await? {
                    return Ok(FlowEnd::Stopped);
                }
            }
        }
        pos = pos.max(frontier);
        sink.tick().await?;
        if Instant::now() >= next_checkpoint {
            let lag = cx.lag.load(std::sync::atomic::Ordering::Relaxed);
            let closed = Hlc::from_wall(wall_now().saturating_sub(lag));
            // The high-water mark starts at the scan time (or the start) and only advances.
            let r = frontier.min(closed).max(high_water.unwrap_or(floor));
            if high_water.is_none_or(|h| r > h) {
                if !window.release(sink, &mut rng).await? {
                    return Ok(FlowEnd::Stopped);
                }
                sink.flush().await?;
                if let Some(interval) = spec.opts.resolved
                    && last_resolved
                        .is_none_or(|l| r.wall.saturating_sub(l.wall) >= interval.as_nanos() as u64)
                {
                    if !sink.resolved(encode::resolved(r)).await? {
                        return Ok(FlowEnd::Stopped);
                    }
                    cx.resolved_log.lock().unwrap().push(ResolvedEmitted {
                        feed: name.to_string(),
                        ts: r,
                        at: SystemTime::now(),
                    });
                    last_resolved = Some(r);
                }
                high_water = Some(r);
                cx.capture.protect(spec.id, Some(r));
                if let Some(c) = checkpoints {
                    let _ = c.send(r);
                }
            }
            next_checkpoint = Instant::now() + freq;
        }
        let mut wake = next_checkpoint;
        if let Some(d) = sink.deadline() {
            wake = wake.min(d);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(FlowEnd::Stopped),
            r = frontier_rx.changed() => if r.is_err() { return Ok(FlowEnd::Stopped) },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// A changefeed job as the test sees it.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// Job id.
    pub id: i64,
    /// The job's description (the statement, options sorted, secrets redacted).
    pub description: String,
    /// The user who created it.
    pub user: String,
    /// The sink URI as given (`external://name` for an external connection).
    pub sink_uri: String,
    /// The webhook URI posted to (an external connection resolved).
    pub resolved_sink: String,
    /// The `WITH` options as given.
    pub options: Vec<(String, Option<String>)>,
    /// `running`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// `running: resolved=…` or `retryable error: …`.
    pub running_status: Option<String>,
    /// The terminal error of a failed job.
    pub error: Option<String>,
    /// The high-water mark.
    pub high_water: Option<Hlc>,
    /// Tables, `db.schema.table`.
    pub full_table_names: Vec<String>,
    /// When it was created.
    pub created: SystemTime,
    /// When it finished.
    pub finished: Option<SystemTime>,
    /// How often its flow restarted after a retryable error.
    pub restarts: u32,
    /// HTTP requests its webhook sink made (attempts included).
    pub requests: u64,
}

/// A running job.
pub struct Job {
    /// What it is.
    pub info: Mutex<JobInfo>,
    /// Cancelled by `CANCEL JOB` (or the stand-in's drop).
    pub cancel: CancellationToken,
    /// A terminal failure to inject.
    pub fail: Mutex<Option<String>>,
    /// A retryable failure to inject.
    pub restart: Mutex<Option<String>>,
    /// Wakes the job for `fail` / `restart`.
    pub poke: Notify,
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Writes a job's row of `crdb_standin.jobs`.
pub async fn save(client: &tokio_postgres::Client, j: &JobInfo) -> anyhow::Result<()> {
    let now = micros(SystemTime::now());
    let hw = j.high_water.map(|h| h.decimal());
    client
        .execute(
            "INSERT INTO crdb_standin.jobs (job_id, job_type, description, statement, user_name, status, \
               running_status, created, started, finished, modified, high_water_timestamp, error, sink_uri, \
               full_table_names, topics, format, fraction_completed, coordinator_id) \
             VALUES ($1, 'CHANGEFEED', $2, '', $3, $4, $5, \
               'epoch'::timestamp + $6::int8 * interval '1 microsecond', \
               'epoch'::timestamp + $6::int8 * interval '1 microsecond', \
               'epoch'::timestamp + $7::int8 * interval '1 microsecond', \
               'epoch'::timestamp + $8::int8 * interval '1 microsecond', \
               ($9::text)::numeric, $10, $11, $12, NULL, 'json', 0, 1) \
             ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, running_status = excluded.running_status, \
               finished = excluded.finished, modified = excluded.modified, \
               high_water_timestamp = excluded.high_water_timestamp, error = excluded.error",
            &[
                &j.id,
                &j.description,
                &j.user,
                &j.status,
                &j.running_status,
                &micros(j.created),
                &j.finished.map(micros),
                &now,
                &hw,
                &j.error.clone().unwrap_or_default(),
                &j.sink_uri,
                &j.full_table_names,
            ],
        )
        .await?;
    Ok(())
}

/// Runs a webhook changefeed job until it ends.
pub async fn run_job(
    cx: FlowCx,
    job: Arc<Job>,
    spec: FeedSpec,
    control: Arc<tokio_postgres::Client>,
    make_sink: impl Fn() -> WebhookSink,
    retry_backoff: Duration,
) {
    let name = format!("job {}", spec.id);
    loop {
        let mut sink = Sink::Webhook(Box::new(make_sink()));
        let requests = match &sink {
            Sink::Webhook(w) => w.requests.clone(),
            Sink::Sinkless(_) => unreachable!(),
        };
        let resume = job.info.lock().unwrap().high_water;
        let (cp_tx, mut cp_rx) = mpsc::unbounded_channel();
        let flow_stop = job.cancel.child_token();
        let outcome = {
            let flow = run_flow(&cx, &spec, &name, &mut sink, resume, &flow_stop, Some(&cp_tx));
            tokio::pin!(flow);
            loop {
                tokio::select! {
                    r = &mut flow => break r,
                    Some(hw) = cp_rx.recv() => {
                        let info = {
                            let mut i = job.info.lock().unwrap();
                            i.high_water = Some(hw);
                            i.running_status = Some(format!("running: resolved={}", hw.crdb_display()));
                            i.clone()
                        };
                        let _ = save(&control, &info).await;
                    }
                    () = job.poke.notified() => {
                        if let Some(e) = job.fail.lock().unwrap().take() {
                            break Err(FlowError::Terminal(e));
                        }
                        if let Some(e) = job.restart.lock().unwrap().take() {
                            break Err(FlowError::Retryable(e));
                        }
                    }
                }
            }
        };
        // High-water marks that arrived with the end of the flow.
        while let Ok(hw) = cp_rx.try_recv() {
            let mut i = job.info.lock().unwrap();
            i.high_water = Some(hw);
            i.running_status = Some(format!("running: resolved={}", hw.crdb_display()));
        }
        job.info.lock().unwrap().requests += requests.load(std::sync::atomic::Ordering::Relaxed);
        let info = {
            let mut i = job.info.lock().unwrap();
            match &outcome {
                Ok(FlowEnd::ScanDone) => {
                    i.status = "succeeded".into();
                    i.finished = Some(SystemTime::now());
                }
                Ok(FlowEnd::Stopped) => {
                    if i.status == "running" {
                        i.status = "canceled".into();
                        i.finished = Some(SystemTime::now());
                    }
                }
                Err(FlowError::Terminal(e)) => {
                    i.status = "failed".into();
                    i.error = Some(e.clone());
                    i.finished = Some(SystemTime::now());
                }
                Err(FlowError::Retryable(e)) => {
                    i.running_status = Some(format!("retryable error: {e}"));
                    i.restarts += 1;
                }
            }
            i.clone()
        };
        let _ = save(&control, &info).await;
        if !matches!(outcome, Err(FlowError::Retryable(_))) || job.cancel.is_cancelled() {
            cx.capture.protect(spec.id, None);
            return;
        }
        tokio::select! {
            () = job.cancel.cancelled() => {
                cx.capture.protect(spec.id, None);
                return;
            }
            () = tokio::time::sleep(retry_backoff) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_keeps_each_keys_order() {
        let msgs: Vec<(String, String, String)> = (0..40)
            .map(|i| ("t".to_string(), format!("[{}]", i % 4), format!("{i}")))
            .collect();
        let mut rng = Rng::new(7);
        let out = shuffle(msgs.clone(), &mut rng);
        assert!(out.len() > msgs.len(), "some duplicates");
        assert_ne!(
            out.iter().map(|m| m.2.clone()).collect::<Vec<_>>()[..msgs.len()],
            msgs.iter().map(|m| m.2.clone()).collect::<Vec<_>>()[..],
            "reordered"
        );
        // Without the repeats, each key's messages are in their order.
        for k in 0..4 {
            let key = format!("[{k}]");
            let mut seen: Vec<i32> = Vec::new();
            for m in out.iter().filter(|m| m.1 == key) {
                let v: i32 = m.2.parse().unwrap();
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(seen, sorted);
        }
    }
}
