//! The raw archive: every record of the configured Kafka topics, unchanged, as Parquet files
//! of one append-only Iceberg table (`cdc.kafka.archive = true`, `tarn ingest kafka
//! --archive`; docs/kafka-archive.md).
//!
//! **What is kept.** One row per record: `topic`, `kafka_partition`, `kafka_offset`,
//! `kafka_timestamp` (UTC, milliseconds as Kafka has them; NULL when the record carries none),
//! `timestamp_type` (`CreateTime` or `LogAppendTime`), `key` and `value` as the bytes on the
//! wire (NULL for an absent key and for a tombstone), and `headers` as a list of `(key,
//! value)` in record order (a header value may be NULL). Nothing is decoded: a record that is
//! not a change event, or not even UTF-8, is archived like any other.
//!
//! **Layout.** The table ([`ARCHIVE_SCHEMA_DOC`]) is partitioned by `identity(topic)` and
//! `hour(kafka_timestamp)`. Its files are written under the table's data location as
//! `topic=<topic>/date=<YYYY-MM-DD>/hour=<HH>/part-<partition>-<start offset>.parquet`, by the
//! record timestamp in UTC (`date=unknown/hour=unknown` for records without one), the start
//! offset zero-padded to 20 digits as Kafka names its log segments. One file holds records of
//! one topic-partition and one hour, in offset order; one flush writes one file per
//! topic-partition and hour it saw. The paths are chosen here and not by `iceberg`'s location
//! generator (which names files by UUID): a name made of partition and start offset is what
//! lets a replay recognise its own files. The table is created with compaction off
//! (`tarn.compaction = off`): `tarn maintain` would otherwise rewrite the files under new names.
//!
//! **Exactly once.** Each flush is one Iceberg append whose snapshot summary records, under
//! `tarn.cdc.pipeline` and `tarn.cdc.kafka-offsets` (the CDC sink's codec,
//! [`crate::sink::commit_summary`]), the next offset of every partition archived so far. On
//! start the archive seeks each partition to that offset; a partition the table names no offset
//! for starts at its beginning, or, for a table that names none at all (a new archive), where
//! `cdc.kafka.start` says. The consumer group's offsets are committed after each append, for
//! monitoring only: they never decide where the archive starts.
//!
//! A replay starts where the last append ended, and a file is named by the first record of its
//! topic-partition and hour at or past that point: whichever way the replay cuts its flushes,
//! the first one that reaches a record a killed flush had written first into a file writes a
//! file of the same name over it. So a replay never writes over a registered file, never
//! registers one twice, and leaves no second copy of a record in the bucket. Only a replay that
//! never reaches such a record (its topic no longer archived, the record gone by retention, a
//! new archive with `cdc.kafka.start = "latest"`) would leave the killed flush's file behind,
//! holding records the table does not: each flush therefore lists the files it is about to
//! write in `<table location>/archive-pending/<pipeline>.json` first, and on start every listed
//! file whose start offset the table's offsets do not cover is deleted. A reader of the bucket
//! (not of the table) then sees what the table holds, once a crashed archive has restarted.
//!
//! One pipeline writes each topic of an archive table; before each append the archive checks
//! that the table still holds the offsets it last committed, and restarts (from the table)
//! when another writer moved them.
//!
//! **Memory.** Records are buffered until `cdc.flush` says (interval since the oldest
//! buffered record, rows, bytes); while a flush writes, nothing is consumed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, LargeBinaryArray, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;
use arrow_schema::{DataType, Schema as ArrowSchema};
use iceberg::TableIdent;
use iceberg::spec::{
    DataFile, ListType, Literal, NestedField, PrimitiveType, Schema, Struct, StructType, Transform, Type,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use parquet::file::properties::WriterProperties;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::{Offset, Timestamp, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tarn_core::{Config, Error, ErrorKind, Result, failpoint};
use tarn_lake::layout::PartitionField;
use tarn_lake::maintain::PROPERTY_COMPACTION;
use tarn_lake::{Lake, TableLayout, iceberg_error};

use super::{KafkaSource, kafka_error};
use crate::pipeline::{PipelineStatus, SourceContext, TableReport};
use crate::position::{KafkaOffsets, TopicPartition};
use crate::sink::{commit_summary, table_position};
use crate::source::Position;

/// The archive table's columns, for docs and errors.
pub const ARCHIVE_SCHEMA_DOC: &str = "topic string, kafka_partition int, kafka_offset long, \
     kafka_timestamp timestamptz, timestamp_type string, key binary, value binary, \
     headers list<struct<key string, value binary>>";

/// Table property marking a table as a Kafka archive (tarn refuses to archive into any other).
pub const PROPERTY_ARCHIVE: &str = crate::sink::PROPERTY_KAFKA_ARCHIVE;

/// Where, under the table location, each pipeline lists the files its current flush writes.
const PENDING_DIR: &str = "archive-pending";

/// Most records taken from the consumer between two looks at the flush rules.
const MAX_BATCH: usize = 4096;

/// Bytes a buffered record costs beyond its key, value and headers (offsets, timestamps,
/// vectors), for the flush size rule.
const RECORD_OVERHEAD: usize = 64;

/// The Iceberg schema of an archive table; see the module doc.
pub fn archive_schema() -> Result<Schema> {
    let header = StructType::new(vec![
        NestedField::required(10, "key", Type::Primitive(PrimitiveType::String)).into(),
        NestedField::optional(11, "value", Type::Primitive(PrimitiveType::Binary)).into(),
    ]);
    let headers = ListType::new(NestedField::list_element(9, Type::Struct(header), true).into());
    Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "topic", Type::Primitive(PrimitiveType::String)).into(),
            NestedField::required(2, "kafka_partition", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::required(3, "kafka_offset", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::optional(4, "kafka_timestamp", Type::Primitive(PrimitiveType::Timestamptz)).into(),
            NestedField::optional(5, "timestamp_type", Type::Primitive(PrimitiveType::String)).into(),
            NestedField::optional(6, "key", Type::Primitive(PrimitiveType::Binary)).into(),
            NestedField::optional(7, "value", Type::Primitive(PrimitiveType::Binary)).into(),
            NestedField::required(8, "headers", Type::List(headers)).into(),
        ])
        .build()
        .map_err(|e| iceberg_error("cannot build the Kafka archive schema", e))
}

/// The archive table `cdc.kafka.archive_table` names: `NAME` in `cdc.namespace`, or
/// `NAMESPACE.NAME`.
pub fn archive_ident(config: &Config) -> Result<TableIdent> {
    let name = &config.cdc.kafka.archive_table;
    if name.contains('.') {
        tarn_lake::parse_table_name(name)
    } else {
        tarn_lake::parse_table_name(&format!("{}.{name}", config.cdc.namespace))
    }
}

/// Loads the archive table `ident`, creating it (and its namespace) when missing; a table
/// that is not a Kafka archive is an error naming it.
async fn open_archive_table(lake: &Lake, ident: &TableIdent) -> Result<Table> {
    let table = if lake.table_exists(ident).await? {
        lake.load_table(ident).await?
    } else {
        lake.create_namespace(ident.namespace(), true).await?;
        let layout = TableLayout {
            partition: vec![
                PartitionField {
                    column: "topic".into(),
                    transform: Transform::Identity,
                },
                PartitionField {
                    column: "kafka_timestamp".into(),
                    transform: Transform::Hour,
                },
            ],
            sort: Vec::new(),
            properties: [
                (
                    PROPERTY_ARCHIVE.to_string(),
                    "records of Kafka topics, unchanged (docs/kafka-archive.md)".to_string(),
                ),
                // Compaction would rename the files and lose the layout.
                (PROPERTY_COMPACTION.to_string(), "off".to_string()),
            ]
            .into(),
        };
        match lake
            .create_table_with_schema(ident, archive_schema()?, &layout)
            .await
        {
            Ok(table) => {
                tracing::info!(table = %ident, "created the Kafka archive table");
                table
            }
            // Another archive created it meanwhile.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => lake.load_table(ident).await?,
            Err(e) => return Err(e),
        }
    };
    if !table.metadata().properties().contains_key(PROPERTY_ARCHIVE) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "table {ident} exists but is not a Kafka archive (it lacks the table property \
                 {PROPERTY_ARCHIVE}); name another table in cdc.kafka.archive_table"
            ),
        ));
    }
    Ok(table)
}

/// The offsets `table` holds for `pipeline` (none: a new archive).
fn held_offsets(table: &Table, pipeline: &str) -> KafkaOffsets {
    match table_position(table, pipeline).0 {
        Some(Position::Kafka(offsets)) => offsets,
        _ => KafkaOffsets::new(),
    }
}

/// Where partition `tp` starts: what the table holds; else its beginning, or its end for a
/// new archive (`held` empty) whose `start` policy is `latest`.
fn start_of(tp: &TopicPartition, held: &KafkaOffsets, start: &str) -> Offset {
    match held.get(tp) {
        Some(o) => Offset::Offset(o),
        None if held.is_empty() && start == "latest" => Offset::End,
        None => Offset::Beginning,
    }
}

/// One record as archived.
#[derive(Debug, Clone, PartialEq)]
struct ArchivedRecord {
    offset: i64,
    /// Microseconds since the Unix epoch.
    timestamp_us: Option<i64>,
    timestamp_type: Option<&'static str>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ArchivedRecord {
    fn of(message: &BorrowedMessage<'_>) -> Self {
        let (timestamp_us, timestamp_type) = match message.timestamp() {
            Timestamp::NotAvailable => (None, None),
            Timestamp::CreateTime(ms) => (Some(ms.saturating_mul(1000)), Some("CreateTime")),
            Timestamp::LogAppendTime(ms) => (Some(ms.saturating_mul(1000)), Some("LogAppendTime")),
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            offset: message.offset(),
            timestamp_us,
            timestamp_type,
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// Bytes of key, value and headers.
    fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

/// The hour (since the Unix epoch) a timestamp falls in: the `hour` partition transform.
fn epoch_hour(timestamp_us: i64) -> i32 {
    i32::try_from(timestamp_us.div_euclid(3_600_000_000)).unwrap_or(i32::MAX)
}

/// Which file a record goes to: its topic-partition and hour (`None`: no timestamp).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FileKey {
    tp: TopicPartition,
    hour: Option<i32>,
}

impl FileKey {
    /// The file's path under `data_location` for records starting at `start_offset`; see the
    /// module doc.
    fn path(&self, data_location: &str, start_offset: i64) -> String {
        let (date, hour) = match self.hour {
            Some(h) => {
                let time = chrono::DateTime::from_timestamp(i64::from(h) * 3600, 0).unwrap_or_default();
                (time.format("%Y-%m-%d").to_string(), time.format("%H").to_string())
            }
            None => ("unknown".to_string(), "unknown".to_string()),
        };
        format!(
            "{}/topic={}/date={date}/hour={hour}/part-{}-{start_offset:020}.parquet",
            data_location.trim_end_matches('/'),
            self.tp.topic,
            self.tp.partition
        )
    }

    /// The partition value of the file (`identity(topic)`, `hour(kafka_timestamp)`).
    fn partition_value(&self) -> Struct {
        Struct::from_iter([Some(Literal::string(&self.tp.topic)), self.hour.map(Literal::int)])
    }
}

/// Records consumed and not yet committed, grouped by file.
#[derive(Debug, Default)]
struct ArchiveBuffer {
    files: BTreeMap<FileKey, Vec<ArchivedRecord>>,
    records: u64,
    bytes: usize,
    since: Option<Instant>,
    /// The newest record timestamp (µs since the epoch).
    newest_us: Option<i64>,
}

impl ArchiveBuffer {
    fn push(&mut self, tp: &TopicPartition, record: ArchivedRecord) {
        self.since.get_or_insert_with(Instant::now);
        self.records += 1;
        self.newest_us = self.newest_us.max(record.timestamp_us);
        self.bytes += record.payload_bytes() + RECORD_OVERHEAD;
        let key = FileKey {
            tp: tp.clone(),
            hour: record.timestamp_us.map(epoch_hour),
        };
        self.files.entry(key).or_default().push(record);
    }

    fn is_empty(&self) -> bool {
        self.records == 0
    }

    fn take(&mut self) -> BTreeMap<FileKey, Vec<ArchivedRecord>> {
        let files = std::mem::take(&mut self.files);
        *self = Self::default();
        files
    }
}

/// One file a flush writes, as listed in the pending file before it is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingFile {
    path: String,
    topic: String,
    partition: i32,
    start_offset: i64,
}

/// The pending file of a pipeline: the files its last flush wrote or was writing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PendingFiles {
    files: Vec<PendingFile>,
}

fn pending_path(table: &Table, pipeline: &str) -> String {
    format!(
        "{}/{PENDING_DIR}/{pipeline}.json",
        table.metadata().location().trim_end_matches('/')
    )
}

/// The pending files of `pending` that `held` does not cover: written by a flush that never
/// committed.
fn uncommitted<'a>(pending: &'a PendingFiles, held: &KafkaOffsets) -> Vec<&'a PendingFile> {
    pending
        .files
        .iter()
        .filter(|f| {
            held.get(&TopicPartition::new(&f.topic, f.partition))
                .is_none_or(|next| f.start_offset >= next)
        })
        .collect()
}

fn storage_error(what: String, e: iceberg::Error) -> Error {
    Error::new(ErrorKind::Storage, format!("{what}: {}", e.message())).with_source(e)
}

/// Records the files a flush of `pipeline` is about to write (see the module doc).
async fn write_pending(table: &Table, pipeline: &str, pending: &PendingFiles) -> Result<()> {
    let path = pending_path(table, pipeline);
    let json = serde_json::to_vec(pending).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot encode the pending archive files: {e}"),
        )
    })?;
    table
        .file_io()
        .new_output(&path)
        .map_err(|e| storage_error(format!("cannot create {path}"), e))?
        .write(json.into())
        .await
        .map_err(|e| storage_error(format!("cannot write {path}"), e))
}

/// Deletes the files a flush of `pipeline` wrote and never committed (see the module doc).
async fn remove_uncommitted(table: &Table, pipeline: &str, held: &KafkaOffsets) -> Result<usize> {
    let io = table.file_io();
    let path = pending_path(table, pipeline);
    let exists = io
        .exists(&path)
        .await
        .map_err(|e| storage_error(format!("cannot look for {path}"), e))?;
    if !exists {
        return Ok(0);
    }
    let bytes = io
        .new_input(&path)
        .map_err(|e| storage_error(format!("cannot open {path}"), e))?
        .read()
        .await
        .map_err(|e| storage_error(format!("cannot read {path}"), e))?;
    let pending: PendingFiles = serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Storage,
            format!("{path} is not a list of pending archive files: {e}"),
        )
    })?;
    let mut removed = 0;
    for file in uncommitted(&pending, held) {
        let exists = io
            .exists(&file.path)
            .await
            .map_err(|e| storage_error(format!("cannot look for {}", file.path), e))?;
        if exists {
            io.delete(&file.path)
                .await
                .map_err(|e| storage_error(format!("cannot delete {}", file.path), e))?;
            tracing::info!(file = %file.path, "deleted an archive file a crashed flush wrote and never committed");
            removed += 1;
        }
    }
    Ok(removed)
}

/// `records` (of one file) as a batch of `schema` (the table's, with field ids).
fn to_batch(schema: &Arc<ArrowSchema>, key: &FileKey, records: &[ArchivedRecord]) -> Result<RecordBatch> {
    let n = records.len();
    let field_type = |i: usize| schema.fields().get(i).map(|f| f.data_type().clone());
    let Some(DataType::List(element)) = field_type(7) else {
        return Err(archive_shape_error(schema));
    };
    let DataType::Struct(header_fields) = element.data_type().clone() else {
        return Err(archive_shape_error(schema));
    };
    let Some(DataType::Timestamp(_, tz)) = field_type(3) else {
        return Err(archive_shape_error(schema));
    };
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0i32);
    let mut header_keys = Vec::new();
    let mut header_values = Vec::new();
    for r in records {
        for (k, v) in &r.headers {
            header_keys.push(k.as_str());
            header_values.push(v.as_deref());
        }
        let count = i32::try_from(header_keys.len()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("too many headers in one archive file of {}", key.tp.topic),
            )
        })?;
        offsets.push(count);
    }
    let headers = StructArray::try_new(
        header_fields,
        vec![
            Arc::new(StringArray::from(header_keys)) as ArrayRef,
            Arc::new(LargeBinaryArray::from(header_values)),
        ],
        None,
    )
    .map_err(|e| batch_error(key, e))?;
    let headers = ListArray::try_new(
        element,
        OffsetBuffer::new(offsets.into()),
        Arc::new(headers),
        None,
    )
    .map_err(|e| batch_error(key, e))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![key.tp.topic.as_str(); n])),
        Arc::new(Int32Array::from(vec![key.tp.partition; n])),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset))),
        Arc::new(
            TimestampMicrosecondArray::from_iter(records.iter().map(|r| r.timestamp_us))
                .with_timezone_opt(tz),
        ),
        Arc::new(StringArray::from_iter(records.iter().map(|r| r.timestamp_type))),
        Arc::new(LargeBinaryArray::from_iter(
            records.iter().map(|r| r.key.as_deref()),
        )),
        Arc::new(LargeBinaryArray::from_iter(
            records.iter().map(|r| r.value.as_deref()),
        )),
        Arc::new(headers),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| batch_error(key, e))
}

fn archive_shape_error(schema: &ArrowSchema) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("the archive table's columns are not {ARCHIVE_SCHEMA_DOC}: {schema}"),
    )
}

fn batch_error(key: &FileKey, e: arrow::error::ArrowError) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "cannot assemble the archive rows of {}:{}: {e}",
            key.tp.topic, key.tp.partition
        ),
    )
}

/// Writes one Parquet file at `path` with `batch`; returns it as a data file of `table` in
/// partition `key`.
async fn write_file(
    table: &Table,
    props: &WriterProperties,
    path: &str,
    key: &FileKey,
    batch: &RecordBatch,
) -> Result<DataFile> {
    let schema = table.metadata().current_schema().clone();
    let output = table
        .file_io()
        .new_output(path)
        .map_err(|e| storage_error(format!("cannot create {path}"), e))?;
    let mut writer = ParquetWriterBuilder::new(props.clone(), schema)
        .build(output)
        .await
        .map_err(|e| storage_error(format!("cannot create {path}"), e))?;
    writer
        .write(batch)
        .await
        .map_err(|e| storage_error(format!("cannot write {path}"), e))?;
    let mut builder = writer
        .close()
        .await
        .map_err(|e| storage_error(format!("cannot finish {path}"), e))?
        .pop()
        .ok_or_else(|| Error::new(ErrorKind::Internal, format!("no data file written at {path}")))?;
    builder
        .partition(key.partition_value())
        .partition_spec_id(table.metadata().default_partition_spec_id());
    builder.build().map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot describe data file {path}: {e}"),
        )
    })
}

/// The archive of one pipeline while it runs.
struct Archive<'a> {
    source: KafkaSource,
    ctx: &'a SourceContext<'a>,
    ident: TableIdent,
    pipeline: String,
    buffer: ArchiveBuffer,
    /// The next offset of every partition consumed (or started at a known offset).
    delivered: KafkaOffsets,
    /// What the table holds: the offsets of the last append.
    committed: KafkaOffsets,
    records_total: u64,
    commits: u64,
    /// Seconds from the newest record's timestamp to the commit that archived it, at the last
    /// commit.
    lag_seconds: Option<f64>,
}

impl<'a> Archive<'a> {
    /// Opens (or creates) the table, removes what a crashed flush left, seeks every partition
    /// to what the table holds.
    async fn start(source: KafkaSource, lake: &Lake, ctx: &'a SourceContext<'a>) -> Result<Self> {
        let config = ctx.config;
        let pipeline = config.cdc.pipeline.clone();
        let ident = archive_ident(config)?;
        let partitions = source.partitions().await?;
        let table = open_archive_table(lake, &ident).await?;
        let held = held_offsets(&table, &pipeline);
        let removed = remove_uncommitted(&table, &pipeline, &held).await?;
        let mut assignment = TopicPartitionList::new();
        for tp in &partitions {
            assignment
                .add_partition_offset(&tp.topic, tp.partition, start_of(tp, &held, &source.start))
                .map_err(|e| kafka_error(format!("cannot seek {}:{}", tp.topic, tp.partition), e))?;
        }
        source
            .consumer
            .assign(&assignment)
            .map_err(|e| kafka_error("cannot assign the Kafka partitions".into(), e))?;
        tracing::info!(
            table = %ident,
            partitions = partitions.len(),
            from = %held,
            removed_uncommitted_files = removed,
            "archiving Kafka topics"
        );
        let archive = Self {
            source,
            ctx,
            ident,
            pipeline,
            buffer: ArchiveBuffer::default(),
            delivered: held.clone(),
            committed: held,
            records_total: 0,
            commits: 0,
            lag_seconds: None,
        };
        archive.report("streaming");
        Ok(archive)
    }

    fn status(&self) -> &PipelineStatus {
        self.ctx.status
    }

    /// Consumes and flushes until stopped.
    async fn run(&mut self) -> Result<()> {
        let flush = &self.ctx.config.cdc.flush;
        let interval = self.ctx.config.cdc.flush_interval();
        let (max_rows, max_bytes) = (flush.max_rows, flush.max_bytes);
        // Messages borrow the consumer; this handle keeps `self` free for buffering them.
        let consumer = self.source.consumer.clone();
        loop {
            let wait = self.buffer.since.map_or(Duration::from_secs(3600), |t| {
                (t + interval).saturating_duration_since(Instant::now())
            });
            let first = tokio::select! {
                () = self.ctx.stop.cancelled() => {
                    self.flush().await?;
                    self.commit_group(CommitMode::Sync).await;
                    tracing::info!(records = self.records_total, offsets = %self.committed, "Kafka archive stopped");
                    return Ok(());
                }
                received = tokio::time::timeout(wait, consumer.recv()) => received.ok(),
            };
            if let Some(message) = first {
                let mut message = Some(message);
                let mut taken = 0;
                while let Some(m) = message {
                    let m = m.map_err(|e| {
                        kafka_error(format!("cannot consume from {}", self.source.brokers), e)
                    })?;
                    self.take(&m);
                    taken += 1;
                    if taken >= MAX_BATCH {
                        break;
                    }
                    // Whatever is ready now, without waiting.
                    message = futures::FutureExt::now_or_never(consumer.recv());
                }
                self.status().update(|r| {
                    r.received = Some(Position::Kafka(self.delivered.clone()));
                    r.pending_events = self.buffer.records;
                });
            }
            let due = self.buffer.since.is_some_and(|t| t.elapsed() >= interval);
            let full = self.buffer.records >= max_rows || self.buffer.bytes as u64 >= max_bytes;
            if due || full {
                self.flush().await?;
            }
        }
    }

    /// Buffers one record.
    fn take(&mut self, message: &BorrowedMessage<'_>) {
        let tp = TopicPartition::new(message.topic(), message.partition());
        let record = ArchivedRecord::of(message);
        let bytes = record.payload_bytes();
        self.delivered.insert(tp.clone(), record.offset + 1);
        self.buffer.push(&tp, record);
        self.status().events.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tarn_kafka_archive_records_total").increment(1);
        metrics::counter!("tarn_kafka_archive_bytes_total").increment(bytes as u64);
    }

    /// Writes the buffered records as files and commits them with the offsets delivered.
    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let lake = &self.source.lake;
        let table = lake.load_table(&self.ident).await?;
        let held = held_offsets(&table, &self.pipeline);
        if held != self.committed {
            return Err(Error::new(
                ErrorKind::CommitConflict,
                format!(
                    "another writer moved pipeline {}'s offsets in {} from {} to {held}: one pipeline archives \
                     each topic; restarting from what the table holds",
                    self.pipeline, self.ident, self.committed
                ),
            ));
        }
        let records = self.buffer.records;
        let newest_us = self.buffer.newest_us;
        let data_location = format!("{}/data", table.metadata().location().trim_end_matches('/'));
        let planned: Vec<(FileKey, Vec<ArchivedRecord>, PendingFile)> = self
            .buffer
            .take()
            .into_iter()
            .map(|(key, rows)| {
                let start_offset = rows[0].offset;
                let file = PendingFile {
                    path: key.path(&data_location, start_offset),
                    topic: key.tp.topic.clone(),
                    partition: key.tp.partition,
                    start_offset,
                };
                (key, rows, file)
            })
            .collect();
        let pending = PendingFiles {
            files: planned.iter().map(|(_, _, file)| file.clone()).collect(),
        };
        write_pending(&table, &self.pipeline, &pending).await?;
        let codec = table
            .metadata()
            .properties()
            .get("write.parquet.compression-codec")
            .map_or("zstd", String::as_str);
        let props = WriterProperties::builder()
            .set_compression(tarn_lake::parquet_compression(codec)?)
            .build();
        let schema = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
                .map_err(|e| iceberg_error(format!("cannot map the schema of {}", self.ident), e))?,
        );
        let mut data_files = Vec::with_capacity(planned.len());
        for (key, rows, file) in &planned {
            let batch = to_batch(&schema, key, rows)?;
            data_files.push(write_file(&table, &props, &file.path, key, &batch).await?);
        }
        failpoint::hit("kafka.archive.before_commit").await?;
        let offsets = self.delivered.clone();
        let summary = commit_summary(&self.pipeline, &Position::Kafka(offsets.clone()), None);
        let file_count = data_files.len();
        lake.append(&self.ident, data_files, summary).await?;
        failpoint::hit("kafka.archive.after_commit").await?;
        self.committed = offsets;
        self.records_total += records;
        self.commits += 1;
        if let Some(newest) = newest_us {
            // From the newest record's timestamp to its commit, as the lag of a CDC pipeline is
            // from a source commit to the lake.
            let now_us = chrono::Utc::now().timestamp_micros();
            self.lag_seconds = Some((now_us - newest).max(0) as f64 / 1e6);
            metrics::gauge!("tarn_kafka_archive_lag_seconds").set(self.lag_seconds.unwrap_or(0.0));
        }
        metrics::counter!("tarn_kafka_archive_files_total").increment(file_count as u64);
        tracing::debug!(table = %self.ident, records, files = file_count, offsets = %self.committed, "archived");
        self.commit_group(CommitMode::Async).await;
        self.report("streaming");
        Ok(())
    }

    /// Commits the group's offsets to what the table holds, for monitoring; a failure is
    /// logged, not fatal.
    async fn commit_group(&self, mode: CommitMode) {
        if self.committed.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (tp, offset) in self.committed.iter() {
            if let Err(e) = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "cannot commit the group's offsets");
                return;
            }
        }
        let group = self.source.group.clone();
        let committed = self
            .source
            .blocking(move |c| c.commit(&list, mode))
            .await
            .and_then(|r| {
                r.map_err(|e| kafka_error(format!("cannot commit the offsets of group {group}"), e))
            });
        if let Err(e) = committed {
            tracing::warn!(error = %e, "cannot commit the group's offsets (monitoring only; the archive table holds the offsets)");
        }
    }

    /// Puts the archive's state into the pipeline status.
    fn report(&self, state: &str) {
        let table = TableReport {
            table: self.ident.to_string(),
            position: (!self.committed.is_empty()).then(|| Position::Kafka(self.committed.clone())),
            stopped: None,
            changes: self.records_total,
            commits: self.commits,
        };
        self.status().update(|r| {
            r.state = state.into();
            r.snapshot = None;
            r.last_error = None;
            r.acknowledged = table.position.clone();
            r.received = (!self.delivered.is_empty()).then(|| Position::Kafka(self.delivered.clone()));
            r.pending_events = self.buffer.records;
            r.lag_seconds = self.lag_seconds;
            r.tables = vec![table];
        });
    }
}

/// Runs the archive `config.cdc.kafka` describes until `ctx.stop`; see the module doc.
pub(crate) async fn run(config: &Config, lake: Lake, ctx: &SourceContext<'_>) -> Result<()> {
    let source = KafkaSource::connect(config, lake.clone(), ctx.status)?;
    let mut archive = Archive::start(source, &lake, ctx).await?;
    archive.run().await
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
    use proptest::prelude::*;

    use super::*;

    /// The records in `batch`, read back column by column.
    fn records_of(batch: &RecordBatch) -> Vec<ArchivedRecord> {
        let bytes = |i: usize, row: usize| {
            let column = batch.column(i).as_binary::<i64>();
            column.is_valid(row).then(|| column.value(row).to_vec())
        };
        let offsets = batch.column(2).as_primitive::<Int64Type>();
        let timestamps = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let types = batch.column(4).as_string::<i32>();
        let headers = batch.column(7).as_list::<i32>();
        (0..batch.num_rows())
            .map(|row| {
                let list = headers.value(row);
                let list = list.as_struct();
                let (keys, values) = (
                    list.column(0).as_string::<i32>(),
                    list.column(1).as_binary::<i64>(),
                );
                ArchivedRecord {
                    offset: offsets.value(row),
                    timestamp_us: timestamps.is_valid(row).then(|| timestamps.value(row)),
                    timestamp_type: types.is_valid(row).then(|| match types.value(row) {
                        "CreateTime" => "CreateTime",
                        _ => "LogAppendTime",
                    }),
                    key: bytes(5, row),
                    value: bytes(6, row),
                    headers: (0..list.len())
                        .map(|h| {
                            (
                                keys.value(h).to_string(),
                                values.is_valid(h).then(|| values.value(h).to_vec()),
                            )
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn maybe_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
    }

    fn archived_record() -> impl Strategy<Value = ArchivedRecord> {
        (
            proptest::option::of((any::<i64>(), any::<bool>())),
            maybe_bytes(),
            maybe_bytes(),
            proptest::collection::vec((".{0,8}", maybe_bytes()), 0..4),
        )
            .prop_map(|(timestamp, key, value, headers)| ArchivedRecord {
                offset: 0,
                timestamp_us: timestamp.map(|(t, _)| t),
                timestamp_type: timestamp
                    .map(|(_, create)| if create { "CreateTime" } else { "LogAppendTime" }),
                key,
                value,
                headers,
            })
    }

    proptest! {
        /// Whatever the bytes, a record written to Parquet reads back unchanged.
        #[test]
        fn records_read_back_from_parquet_unchanged(
            mut records in proptest::collection::vec(archived_record(), 1..20),
            first_offset in 0i64..i64::MAX / 2,
        ) {
            for (i, r) in records.iter_mut().enumerate() {
                r.offset = first_offset + i as i64;
            }
            let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&archive_schema().unwrap()).unwrap());
            let key = FileKey { tp: TopicPartition::new("t", 0), hour: None };
            let batch = to_batch(&schema, &key, &records).unwrap();
            let mut file = Vec::new();
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut file, schema, None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            let read: Vec<RecordBatch> =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes::Bytes::from(file), 1024)
                    .unwrap()
                    .collect::<std::result::Result<_, _>>()
                    .unwrap();
            let back: Vec<ArchivedRecord> = read.iter().flat_map(records_of).collect();
            prop_assert_eq!(back, records);
        }
    }

    fn record(offset: i64, timestamp_us: Option<i64>) -> ArchivedRecord {
        ArchivedRecord {
            offset,
            timestamp_us,
            timestamp_type: timestamp_us.map(|_| "CreateTime"),
            key: Some(vec![0xff, 0x00, offset as u8]),
            value: (offset % 2 == 0).then(|| b"v".to_vec()),
            headers: vec![("h".into(), Some(vec![0xc3, 0x28])), ("null".into(), None)],
        }
    }

    #[test]
    fn files_are_named_by_topic_hour_partition_and_start_offset() {
        // 2026-12-06T23:59:59.999Z and a minute later, the next day.
        let late = 1_796_601_599_999_000;
        let key = |ts: Option<i64>| FileKey {
            tp: TopicPartition::new("shop.orders", 3),
            hour: ts.map(epoch_hour),
        };
        assert_eq!(
            key(Some(late)).path("s3://lake/raw/kafka_archive/data/", 42),
            "s3://lake/raw/kafka_archive/data/topic=shop.orders/date=2026-12-06/hour=23/part-3-00000000000000000042.parquet"
        );
        assert_eq!(
            key(Some(late + 60_000_000)).path("file:///w/data", 7),
            "file:///w/data/topic=shop.orders/date=2026-12-07/hour=00/part-3-00000000000000000007.parquet"
        );
        assert_eq!(
            key(None).path("file:///w/data", 0),
            "file:///w/data/topic=shop.orders/date=unknown/hour=unknown/part-3-00000000000000000000.parquet"
        );
        // Before the epoch the hour rounds down, as Iceberg's hour transform does.
        assert_eq!(epoch_hour(-1), -1);
        assert_eq!(epoch_hour(0), 0);
        assert_eq!(epoch_hour(3_599_999_999), 0);
        assert_eq!(
            key(Some(late)).partition_value(),
            Struct::from_iter([Some(Literal::string("shop.orders")), Some(Literal::int(499_055))])
        );
    }

    #[test]
    fn the_buffer_groups_records_by_partition_and_hour() {
        let mut buffer = ArchiveBuffer::default();
        let tp0 = TopicPartition::new("t", 0);
        let tp1 = TopicPartition::new("t", 1);
        let hour = 3_600_000_000;
        for (tp, offset, ts) in [
            (&tp0, 10, Some(5 * hour)),
            (&tp1, 3, Some(5 * hour + 1)),
            (&tp0, 11, Some(4 * hour)),
            (&tp0, 12, Some(5 * hour + 2)),
            (&tp0, 13, None),
        ] {
            buffer.push(tp, record(offset, ts));
        }
        assert_eq!(buffer.records, 5);
        assert!(buffer.since.is_some());
        assert_eq!(buffer.newest_us, Some(5 * hour + 2));
        let files = buffer.take();
        assert!(
            buffer.is_empty() && buffer.since.is_none() && buffer.bytes == 0 && buffer.newest_us.is_none()
        );
        let grouped: Vec<(i32, Option<i32>, Vec<i64>)> = files
            .iter()
            .map(|(k, rows)| (k.tp.partition, k.hour, rows.iter().map(|r| r.offset).collect()))
            .collect();
        assert_eq!(
            grouped,
            vec![
                (0, None, vec![13]),
                (0, Some(4), vec![11]),
                (0, Some(5), vec![10, 12]),
                (1, Some(5), vec![3]),
            ]
        );
    }

    #[test]
    fn only_files_past_the_held_offsets_are_uncommitted() {
        let file = |topic: &str, partition, start_offset| PendingFile {
            path: format!("{topic}-{partition}-{start_offset}"),
            topic: topic.into(),
            partition,
            start_offset,
        };
        let pending = PendingFiles {
            files: vec![file("a", 0, 5), file("a", 0, 9), file("a", 1, 0), file("b", 0, 3)],
        };
        let held = KafkaOffsets::new()
            .with(TopicPartition::new("a", 0), 9)
            .with(TopicPartition::new("b", 0), 4);
        let paths: Vec<&str> = uncommitted(&pending, &held)
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        // a:0 from 9 is past what the table holds; a:1 is not held at all.
        assert_eq!(paths, ["a-0-9", "a-1-0"]);
        assert_eq!(uncommitted(&pending, &KafkaOffsets::new()).len(), 4);
    }

    #[test]
    fn partitions_start_at_the_held_offsets() {
        let tp = TopicPartition::new("t", 0);
        let other = TopicPartition::new("t", 1);
        let held = KafkaOffsets::new().with(tp.clone(), 17);
        assert_eq!(start_of(&tp, &held, "latest"), Offset::Offset(17));
        // An archive that holds offsets archives a new partition from its beginning.
        assert_eq!(start_of(&other, &held, "latest"), Offset::Beginning);
        assert_eq!(start_of(&tp, &KafkaOffsets::new(), "latest"), Offset::End);
        assert_eq!(start_of(&tp, &KafkaOffsets::new(), "earliest"), Offset::Beginning);
    }

    #[test]
    fn records_become_rows_of_the_archive_schema() {
        let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&archive_schema().unwrap()).unwrap());
        let key = FileKey {
            tp: TopicPartition::new("t", 2),
            hour: Some(0),
        };
        let mut tombstone = record(7, Some(1_000));
        tombstone.value = None;
        tombstone.key = None;
        tombstone.headers.clear();
        let rows = vec![record(6, Some(0)), tombstone];
        let batch = to_batch(&schema, &key, &rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(1).as_primitive::<Int32Type>().values(), &[2, 2]);
        let values = batch.column(6).as_binary::<i64>();
        assert_eq!(values.value(0), b"v");
        assert!(values.is_null(1));
        assert!(batch.column(5).is_null(1));
        assert_eq!(batch.column(5).as_binary::<i64>().value(0), [0xff, 0x00, 6]);
        let headers = batch.column(7).as_list::<i32>();
        assert_eq!(headers.value_length(0), 2);
        assert_eq!(headers.value_length(1), 0);
        let first = headers.value(0);
        let first = first.as_struct();
        assert_eq!(first.column(0).as_string::<i32>().value(1), "null");
        assert_eq!(first.column(1).as_binary::<i64>().value(0), [0xc3, 0x28]);
        assert!(first.column(1).is_null(1));
    }
}
