//! The pipelines pages: every pipeline that writes the lake — change data capture from
//! PostgreSQL or CockroachDB, Kafka topics (change events, plain JSON records, the archive) and
//! Airbyte syncs — found from the lake itself, whichever process runs them.
//!
//! Each of their commits leaves its pipeline in the snapshot summary (`tarn.cdc.pipeline` with
//! the position it holds everything up to, or `tarn.airbyte.stream` with the connector's
//! STATE), the rows it added and deleted, when it committed and, for change events, the source
//! commit time of that position. So a pipeline's history — rows per second and lag at each
//! commit — is drawn from its tables' snapshots: it outlasts the open page and the process,
//! covers pipelines running elsewhere (`tarn ingest kafka` on another machine), and reaches
//! back as far as the snapshots do (`tarn maintain`'s snapshot expiry shortens it). The live
//! state of this process's own CDC pipeline is the pipeline page's (`ops::pipeline`).
//!
//! A Kafka pipeline's page also shows each partition's lag against the broker — the offset
//! its lake tables hold (the smallest of its tables, where it would resume) beside the
//! partition's end — when the console's config names the brokers (`cdc.kafka.brokers`).
//!
//! Only the tables the caller may see (`FilterTables`, as the catalog browser lists them) are
//! read; a pipeline with none of them visible is not shown.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use iceberg::NamespaceIdent;
use iceberg::table::Table;
use plotly::common::{Mode, Title};
use plotly::layout::{Axis, AxisType, RangeMode};
use plotly::{Bar, Layout, Plot, Scatter};
use serde::Deserialize;
use tarn_cdc::position::KafkaOffsets;
use tarn_cdc::sink::{
    PROPERTY_KAFKA_ARCHIVE, SUMMARY_COMMIT_TIME, SUMMARY_KAFKA_OFFSETS, SUMMARY_LSN, SUMMARY_PIPELINE,
    SUMMARY_RESOLVED,
};

use super::catalog::{age, visible_tables};
use super::login::Caller;
use super::{Console, Frame, refused, render};
use crate::airbyte::{STATE_KEY, STREAM_KEY};

/// What writes a pipeline's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Change data capture from PostgreSQL (logical replication).
    Postgres,
    /// Change data capture from CockroachDB (a changefeed).
    Cockroach,
    /// A CDC pipeline whose tables hold no commit yet (its source is not known from the lake).
    Cdc,
    /// Kafka topics consumed into tables (Debezium change events or plain JSON records).
    Kafka,
    /// Kafka topics archived unchanged (`tarn ingest kafka --archive`).
    KafkaArchive,
    /// An Airbyte source connector's syncs (`tarn ingest airbyte`), named by the namespace.
    Airbyte,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Postgres,
        Kind::Cockroach,
        Kind::Cdc,
        Kind::Kafka,
        Kind::KafkaArchive,
        Kind::Airbyte,
    ];

    /// The kind's part of a page's address.
    pub(crate) fn slug(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Cockroach => "cockroachdb",
            Kind::Cdc => "cdc",
            Kind::Kafka => "kafka",
            Kind::KafkaArchive => "kafka-archive",
            Kind::Airbyte => "airbyte",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Postgres => "CDC from PostgreSQL",
            Kind::Cockroach => "CDC from CockroachDB",
            Kind::Cdc => "CDC (no commit yet)",
            Kind::Kafka => "Kafka ingest",
            Kind::KafkaArchive => "Kafka archive",
            Kind::Airbyte => "Airbyte sync",
        }
    }

    fn parse(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }

    /// Whether commits carry a source commit time (a lag at commit).
    fn has_lag(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Cockroach | Kind::Kafka)
    }

    /// Change data capture from a database: the kinds a CDC pipeline of `tarn serve` writes.
    fn is_cdc(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Cockroach | Kind::Cdc)
    }

    fn is_kafka(self) -> bool {
        matches!(self, Kind::Kafka | Kind::KafkaArchive)
    }
}

/// One commit of a pipeline to one table.
#[derive(Debug, Clone)]
struct Commit {
    at_ms: i64,
    added: u64,
    deleted: u64,
    /// Commit time minus the source commit time of the position committed.
    lag_ms: Option<i64>,
}

/// One table of a pipeline, as its newest snapshots describe it.
#[derive(Debug, Clone)]
struct PipelineTable {
    /// `namespace.table`.
    name: String,
    namespace: String,
    table: String,
    /// The position the table holds everything up to (CDC, Kafka), or the Airbyte stream.
    position: String,
    /// The Airbyte STATE of its last commit.
    state: String,
    last_commit_ms: Option<i64>,
    total_records: u64,
    /// Why CDC stopped writing it.
    stopped: String,
    /// Kafka pipelines: the next offset of each partition the table holds.
    offsets: Option<KafkaOffsets>,
    commits: Vec<Commit>,
}

/// A pipeline and its (visible) tables.
#[derive(Debug, Clone)]
struct Pipeline {
    kind: Kind,
    name: String,
    tables: Vec<PipelineTable>,
}

impl Pipeline {
    fn last_commit_ms(&self) -> Option<i64> {
        self.tables.iter().filter_map(|t| t.last_commit_ms).max()
    }

    /// Rows added and deleted by commits since `since_ms`.
    fn rows_since(&self, since_ms: i64) -> u64 {
        self.tables
            .iter()
            .flat_map(|t| &t.commits)
            .filter(|c| c.at_ms >= since_ms)
            .map(|c| c.added + c.deleted)
            .sum()
    }
}

fn summary_count(summary: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    summary.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The kind of a commit of a CDC / Kafka pipeline, by the position its summary records.
fn commit_kind(summary: &std::collections::HashMap<String, String>, archive: bool) -> Option<Kind> {
    if archive {
        Some(Kind::KafkaArchive)
    } else if summary.contains_key(SUMMARY_LSN) {
        Some(Kind::Postgres)
    } else if summary.contains_key(SUMMARY_RESOLVED) {
        Some(Kind::Cockroach)
    } else if summary.contains_key(SUMMARY_KAFKA_OFFSETS) {
        Some(Kind::Kafka)
    } else {
        None
    }
}

/// The pipelines writing `table` (`namespace`.`name`), with their part of it: one per pipeline
/// named in its snapshots (an archive may take several), or the Airbyte sync into `namespace`.
fn pipelines_of(namespace: &str, name: &str, table: &Table) -> Vec<Pipeline> {
    let metadata = table.metadata();
    let properties = metadata.properties();
    let archive = properties.contains_key(PROPERTY_KAFKA_ARCHIVE);
    let mut snapshots: Vec<_> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| (s.timestamp_ms(), s.sequence_number()));
    // (kind, pipeline) → its part of the table; the newest snapshot wins the position fields.
    let mut found: BTreeMap<(Kind, String), PipelineTable> = BTreeMap::new();
    let blank = || PipelineTable {
        name: format!("{namespace}.{name}"),
        namespace: namespace.to_string(),
        table: name.to_string(),
        position: String::new(),
        state: String::new(),
        last_commit_ms: None,
        total_records: 0,
        stopped: tarn_cdc::sink::stopped_reason(table).unwrap_or_default(),
        offsets: None,
        commits: Vec::new(),
    };
    for s in snapshots {
        let summary = &s.summary().additional_properties;
        let (key, position, state) = if let Some(pipeline) = summary.get(SUMMARY_PIPELINE) {
            let Some(kind) = commit_kind(summary, archive) else {
                continue;
            };
            let position = [SUMMARY_LSN, SUMMARY_RESOLVED, SUMMARY_KAFKA_OFFSETS]
                .iter()
                .find_map(|k| summary.get(*k))
                .cloned()
                .unwrap_or_default();
            ((kind, pipeline.clone()), position, String::new())
        } else if let Some(stream) = summary.get(STREAM_KEY) {
            let state = summary.get(STATE_KEY).cloned().unwrap_or_default();
            (
                (Kind::Airbyte, namespace.to_string()),
                format!("stream {stream}"),
                state,
            )
        } else {
            continue;
        };
        let part = found.entry(key.clone()).or_insert_with(blank);
        let lag_ms = summary
            .get(SUMMARY_COMMIT_TIME)
            .and_then(|t| t.parse::<i64>().ok())
            .map(|us| (s.timestamp_ms() - us / 1000).max(0));
        part.commits.push(Commit {
            at_ms: s.timestamp_ms(),
            added: summary_count(summary, "added-records"),
            deleted: summary_count(summary, "deleted-records")
                + summary_count(summary, "added-position-deletes")
                + summary_count(summary, "added-equality-deletes"),
            lag_ms,
        });
        part.last_commit_ms = Some(s.timestamp_ms());
        if !position.is_empty() {
            if key.0.is_kafka() {
                part.offsets = position.parse().ok();
            }
            part.position = position;
        }
        if !state.is_empty() {
            part.state = state;
        }
    }
    let total = metadata.current_snapshot().map_or(0, |s| {
        summary_count(&s.summary().additional_properties, "total-records")
    });
    // A table CDC created that holds no commit of it yet.
    if found.is_empty()
        && let Some(pipeline) = properties.get(SUMMARY_PIPELINE)
    {
        let mut part = blank();
        if let (Some(position), _) = tarn_cdc::sink::table_position(table, pipeline) {
            part.position = position.to_string();
        }
        found.insert((Kind::Cdc, pipeline.clone()), part);
    }
    found
        .into_iter()
        .map(|((kind, name), mut part)| {
            part.total_records = total;
            Pipeline {
                kind,
                name,
                tables: vec![part],
            }
        })
        .collect()
}

/// Tables read at once while looking for pipelines.
const LOADS_AT_ONCE: usize = 16;

/// Every pipeline writing a table the caller may see, by (kind, name).
async fn discover(console: &Console, principal: &tarn_auth::Principal) -> tarn_core::Result<Vec<Pipeline>> {
    let lake = console.session.lake();
    let names: Vec<(String, String)> = visible_tables(console, principal)
        .await?
        .into_iter()
        .flat_map(|ns| ns.tables.into_iter().map(move |t| (ns.name.clone(), t)))
        .collect();
    let loaded: Vec<Vec<Pipeline>> = futures::stream::iter(names)
        .map(|(namespace, name)| async move {
            let ident = iceberg::TableIdent::new(
                NamespaceIdent::from_strs(namespace.split('.'))
                    .unwrap_or_else(|_| NamespaceIdent::new(namespace.clone())),
                name.clone(),
            );
            // A table dropped meanwhile is no longer any pipeline's.
            match lake.load_table(&ident).await {
                Ok(table) => pipelines_of(&namespace, &name, &table),
                Err(e) => {
                    tracing::debug!(table = %ident, error = %e, "console: skipped a table it could not load");
                    Vec::new()
                }
            }
        })
        .buffer_unordered(LOADS_AT_ONCE)
        .collect()
        .await;
    let mut by_key: BTreeMap<(Kind, String), Pipeline> = BTreeMap::new();
    for p in loaded.into_iter().flatten() {
        match by_key.get_mut(&(p.kind, p.name.clone())) {
            Some(existing) => existing.tables.extend(p.tables),
            None => {
                by_key.insert((p.kind, p.name.clone()), p);
            }
        }
    }
    let mut out: Vec<Pipeline> = by_key.into_values().collect();
    for p in &mut out {
        p.tables.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(out)
}

/// [`discover`], or the page saying why the pipelines cannot be listed.
async fn discovered(console: &Console, principal: &tarn_auth::Principal) -> Result<Vec<Pipeline>, Response> {
    discover(console, principal).await.map_err(|e| {
        refused(
            principal,
            super::status_of(&e),
            "Cannot list the pipelines",
            &e.to_string(),
        )
    })
}

pub(crate) struct PipelineRow {
    kind: &'static str,
    kind_label: &'static str,
    name: String,
    tables: usize,
    last_commit: String,
    rows_last_hour: u64,
    /// This process's own CDC pipeline (the live page has its state).
    live: bool,
}

#[derive(Template)]
#[template(path = "console/pipelines.html")]
struct PipelinesPage {
    frame: Frame,
    pipelines: Vec<PipelineRow>,
    /// This process's CDC pipeline, if it runs one.
    live: String,
}

/// The name of this process's CDC pipeline, if it runs one.
fn live_pipeline(console: &Console) -> Option<String> {
    console.cdc.as_ref().map(|s| s.report().pipeline)
}

/// `GET /console/pipelines`.
pub(crate) async fn list(State(console): State<Arc<Console>>, Caller(principal): Caller) -> Response {
    let pipelines = match discovered(&console, &principal).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let live = live_pipeline(&console);
    let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let rows = pipelines
        .iter()
        .map(|p| PipelineRow {
            kind: p.kind.slug(),
            kind_label: p.kind.label(),
            name: p.name.clone(),
            tables: p.tables.len(),
            last_commit: p
                .last_commit_ms()
                .map(age)
                .unwrap_or_else(|| "no commit yet".into()),
            rows_last_hour: p.rows_since(hour_ago),
            live: p.kind.is_cdc() && live.as_deref() == Some(p.name.as_str()),
        })
        .collect();
    render(&PipelinesPage {
        frame: Frame::of(&principal, "pipeline"),
        pipelines: rows,
        live: live.unwrap_or_default(),
    })
}

/// `?hours=`: how far back the history goes.
#[derive(Deserialize)]
pub(crate) struct Window {
    hours: Option<f64>,
}

/// The history's default window and its limits.
const DEFAULT_HOURS: f64 = 24.0;
const MAX_HOURS: f64 = 24.0 * 90.0;
/// Points on the history's time axis at most.
const MAX_BUCKETS: i64 = 240;
/// The shortest bucket of the history.
const MIN_BUCKET_MS: i64 = 10_000;

/// The history chart of `commits`: rows added and deleted per second (each bar's hover text
/// says how many rows), and (when the kind has one) the largest lag at commit of each bucket.
/// The buckets divide the span from the window's first commit (or `since_ms`, when none) to
/// `now_ms`, so a pipeline that started an hour ago is not drawn against 23 empty hours.
fn history_figure(kind: Kind, commits: &[Commit], since_ms: i64, now_ms: i64) -> serde_json::Value {
    let in_window: Vec<&Commit> = commits
        .iter()
        .filter(|c| c.at_ms >= since_ms && c.at_ms <= now_ms)
        .collect();
    let start = in_window.iter().map(|c| c.at_ms).min().unwrap_or(since_ms);
    let bucket_ms = ((now_ms - start) / MAX_BUCKETS).max(MIN_BUCKET_MS);
    let buckets = ((now_ms - start) / bucket_ms + 1) as usize;
    let mut added = vec![0u64; buckets];
    let mut deleted = vec![0u64; buckets];
    let mut lag: Vec<Option<i64>> = vec![None; buckets];
    for c in in_window {
        let i = ((c.at_ms - start) / bucket_ms) as usize;
        added[i] += c.added;
        deleted[i] += c.deleted;
        if let Some(l) = c.lag_ms {
            lag[i] = Some(lag[i].map_or(l, |m: i64| m.max(l)));
        }
    }
    let times: Vec<String> = (0..buckets)
        .map(|i| {
            chrono::DateTime::from_timestamp_millis(start + i as i64 * bucket_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        })
        .collect();
    let bars = |rows: &[u64], name: &str| {
        let per_second: Vec<f64> = rows
            .iter()
            .map(|n| *n as f64 * 1000.0 / bucket_ms as f64)
            .collect();
        let hover: Vec<String> = rows.iter().map(|n| format!("{n} rows")).collect();
        Bar::new(times.clone(), per_second)
            .name(name)
            .offset_group(name)
            .hover_text_array(hover)
    };
    let mut plot = Plot::new();
    plot.add_trace(bars(&added, "rows added/s"));
    plot.add_trace(bars(&deleted, "rows deleted/s"));
    let mut layout = Layout::new()
        .title(Title::with_text(format!(
            "Commits per {} (from the tables' snapshots)",
            humantime::format_duration(std::time::Duration::from_millis(bucket_ms as u64))
        )))
        .x_axis(Axis::new().type_(AxisType::Date))
        .y_axis(
            Axis::new()
                .title(Title::with_text("rows/s"))
                .range_mode(RangeMode::ToZero),
        );
    if kind.has_lag() {
        let lag_s: Vec<Option<f64>> = lag.iter().map(|l| l.map(|ms| ms as f64 / 1000.0)).collect();
        plot.add_trace(
            Scatter::new(times, lag_s)
                .name("lag at commit (s)")
                .mode(Mode::LinesMarkers)
                .y_axis("y2"),
        );
        layout = layout.y_axis2(
            Axis::new()
                .title(Title::with_text("lag (s)"))
                .overlaying("y")
                .side(plotly::common::AxisSide::Right)
                .range_mode(RangeMode::ToZero),
        );
    }
    plot.set_layout(layout);
    serde_json::from_str(&plot.to_json()).unwrap_or(serde_json::Value::Null)
}

pub(crate) struct TableRow {
    name: String,
    namespace: String,
    table: String,
    position: String,
    state: String,
    last_commit: String,
    commits: usize,
    total_records: u64,
    stopped: String,
}

pub(crate) struct PartitionRow {
    topic: String,
    partition: i32,
    lake: i64,
    end: String,
    lag: String,
}

#[derive(Template)]
#[template(path = "console/pipeline_history.html")]
struct HistoryPage {
    frame: Frame,
    kind_label: &'static str,
    name: String,
    live: bool,
    hours: f64,
    tables: Vec<TableRow>,
    airbyte: bool,
    kafka: bool,
    partitions: Vec<PartitionRow>,
    /// Why the partitions' ends are not shown, if they are not.
    partitions_note: String,
    commits_in_window: usize,
    figure: String,
}

/// The next offset of every partition where the pipeline would resume: the smallest any of its
/// tables holds.
fn resume_offsets(tables: &[PipelineTable]) -> BTreeMap<(String, i32), i64> {
    let mut out: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for offsets in tables.iter().filter_map(|t| t.offsets.as_ref()) {
        for (tp, next) in offsets.iter() {
            let e = out.entry((tp.topic.clone(), tp.partition)).or_insert(next);
            *e = (*e).min(next);
        }
    }
    out
}

/// `GET /console/pipelines/{kind}/{name}`.
pub(crate) async fn history(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path((kind, name)): Path<(String, String)>,
    Query(window): Query<Window>,
) -> Response {
    let Some(kind) = Kind::parse(&kind) else {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.slug()).collect();
        return refused(
            &principal,
            StatusCode::NOT_FOUND,
            "No such pipeline kind",
            &format!("pipeline kind {kind:?}: expected one of {}", kinds.join(", ")),
        );
    };
    let hours = window.hours.unwrap_or(DEFAULT_HOURS);
    if !(hours > 0.0 && hours <= MAX_HOURS) {
        return refused(
            &principal,
            StatusCode::BAD_REQUEST,
            "Bad window",
            &format!("hours={hours}: expected more than 0 and at most {MAX_HOURS}"),
        );
    }
    let pipelines = match discovered(&console, &principal).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let Some(pipeline) = pipelines.into_iter().find(|p| p.kind == kind && p.name == name) else {
        return refused(
            &principal,
            StatusCode::NOT_FOUND,
            "No such pipeline",
            &format!(
                "no {} pipeline {name:?} writes a table you may see (see /console/pipelines)",
                kind.label()
            ),
        );
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let since_ms = now_ms - (hours * 3_600_000.0) as i64;
    let commits: Vec<Commit> = pipeline
        .tables
        .iter()
        .flat_map(|t| t.commits.iter().cloned())
        .collect();
    let commits_in_window = commits.iter().filter(|c| c.at_ms >= since_ms).count();
    // In a <script> element: no "</" may end it early.
    let figure = history_figure(kind, &commits, since_ms, now_ms)
        .to_string()
        .replace("</", "<\\/");
    let (partitions, partitions_note) = if kind.is_kafka() {
        kafka_partitions(&console, &pipeline.tables).await
    } else {
        (Vec::new(), String::new())
    };
    let live = kind.is_cdc() && live_pipeline(&console).as_deref() == Some(name.as_str());
    let tables = pipeline
        .tables
        .iter()
        .map(|t| TableRow {
            name: t.name.clone(),
            namespace: t.namespace.clone(),
            table: t.table.clone(),
            position: t.position.clone(),
            state: truncated(&t.state, 400),
            last_commit: t
                .last_commit_ms
                .map(age)
                .unwrap_or_else(|| "no commit yet".into()),
            commits: t.commits.len(),
            total_records: t.total_records,
            stopped: t.stopped.clone(),
        })
        .collect();
    render(&HistoryPage {
        frame: Frame::of(&principal, "pipeline"),
        kind_label: kind.label(),
        name: pipeline.name,
        live,
        hours,
        tables,
        airbyte: kind == Kind::Airbyte,
        kafka: kind.is_kafka(),
        partitions,
        partitions_note,
        commits_in_window,
        figure,
    })
}

fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Each partition the pipeline's tables name: the offset the lake holds and, when the config
/// names the brokers, the partition's end and the lag; with a note when the ends are missing.
async fn kafka_partitions(console: &Console, tables: &[PipelineTable]) -> (Vec<PartitionRow>, String) {
    let resume = resume_offsets(tables);
    let ends = partition_ends(&console.kafka_brokers, resume.keys().cloned().collect()).await;
    let note = match &ends {
        Ok(_) => String::new(),
        Err(why) => why.clone(),
    };
    let rows = resume
        .into_iter()
        .map(|((topic, partition), lake)| {
            let end = ends
                .as_ref()
                .ok()
                .and_then(|e| e.get(&(topic.clone(), partition)).copied());
            PartitionRow {
                end: end.map(|e| e.to_string()).unwrap_or_default(),
                lag: end.map(|e| (e - lake).max(0).to_string()).unwrap_or_default(),
                topic,
                partition,
                lake,
            }
        })
        .collect();
    (rows, note)
}

/// How long the console waits for a broker's answer.
#[cfg(feature = "kafka")]
const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The end (high watermark) of each of `partitions` on `brokers`.
#[cfg(feature = "kafka")]
async fn partition_ends(
    brokers: &str,
    partitions: Vec<(String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    if brokers.trim().is_empty() {
        return Err(
            "the lag against the broker needs `cdc.kafka.brokers` in the config of this tarn serve".into(),
        );
    }
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("client.id", "tarn-console")
            .create()
            .map_err(|e| format!("cannot create a Kafka client for brokers {brokers}: {e}"))?;
        let mut out = BTreeMap::new();
        for (topic, partition) in partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, partition, BROKER_WAIT)
                .map_err(|e| {
                    format!("cannot read the end of {topic}:{partition} from brokers {brokers}: {e}")
                })?;
            out.insert((topic, partition), high);
        }
        Ok(out)
    })
    .await
    .map_err(|e| format!("the broker query failed: {e}"))?
}

#[cfg(not(feature = "kafka"))]
async fn partition_ends(
    _brokers: &str,
    _partitions: Vec<(String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    Err("the lag against the broker needs a build with the `kafka` feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(at_ms: i64, added: u64, lag_ms: Option<i64>) -> Commit {
        Commit {
            at_ms,
            added,
            deleted: 0,
            lag_ms,
        }
    }

    /// The rows each bar of trace `i` stands for, from its hover text.
    fn rows(figure: &serde_json::Value, i: usize) -> Vec<u64> {
        figure["data"][i]["hovertext"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().trim_end_matches(" rows").parse().unwrap())
            .collect()
    }

    #[test]
    fn history_buckets_rows_per_second_and_the_largest_lag() {
        let now = 1_800_000_000_000;
        let since = now - 3_600_000;
        // Drawn from the first commit on: 3,540 s in 240 buckets of 14.75 s. The first two
        // commits share the first bucket.
        let commits = [
            commit(since + 60_000, 600, Some(400)),
            commit(since + 65_000, 1_200, Some(900)),
            commit(since + 30 * 60_000, 60, None),
            // Outside the window.
            commit(since - 1, 7, Some(5)),
        ];
        let figure = history_figure(Kind::Postgres, &commits, since, now);
        let data = figure["data"].as_array().unwrap();
        assert_eq!(data.len(), 3, "{figure}");
        let added = rows(&figure, 0);
        assert_eq!(added.len(), 241);
        assert_eq!(added[0], 1_800);
        assert_eq!(added.iter().sum::<u64>(), 1_860);
        assert!(
            (data[0]["y"][0].as_f64().unwrap() - 1_800.0 / 14.75).abs() < 1e-9,
            "{figure}"
        );
        assert_eq!(data[0]["x"][0], "2027-01-15 07:01:00", "{figure}");
        assert_eq!(data[2]["y"][0], 0.9, "the largest lag of the bucket: {figure}");
        assert!(data[2]["y"][1].is_null(), "{figure}");
        // Airbyte commits have no lag; a short span has buckets of 10 s at least.
        let recent = [commit(now - 25_000, 600, None)];
        let figure = history_figure(Kind::Airbyte, &recent, now - 60_000, now);
        assert_eq!(figure["data"].as_array().unwrap().len(), 2);
        assert_eq!(rows(&figure, 0), [600, 0, 0]);
    }

    #[test]
    fn resume_offsets_are_the_smallest_a_table_holds() {
        let table = |offsets: &str| PipelineTable {
            name: String::new(),
            namespace: String::new(),
            table: String::new(),
            position: offsets.into(),
            state: String::new(),
            last_commit_ms: None,
            total_records: 0,
            stopped: String::new(),
            offsets: Some(offsets.parse().unwrap()),
            commits: Vec::new(),
        };
        let resume = resume_offsets(&[table("a:0=5,a:1=9"), table("a:0=7,b:0=1")]);
        assert_eq!(
            resume.into_iter().collect::<Vec<_>>(),
            [(("a".into(), 0), 5), (("a".into(), 1), 9), (("b".into(), 0), 1)]
        );
    }

    #[test]
    fn kinds_round_trip_their_slugs() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.slug()), Some(k));
        }
        assert_eq!(Kind::parse("mysql"), None);
    }
}
