//! Kafka records of Debezium change events into [`SourceEvent`]s: the table of each event,
//! its spec, deduplication, transactions, and the records that are not change events.
//!
//! [`RecordMapper`] is the broker-free half of the Kafka source, so it is tested without one.
//! It takes the records of one poll ([`RecordMapper::map`]) and hands out whole transactions
//! ([`RecordMapper::take_events`]):
//!
//! - **Tables.** A table is named by its event's `source` block (`schema` or, for MySQL,
//!   `db`, then `table`), whatever topic carried it. Its [`TableSpec`] comes from the schema
//!   embedded in the message (`schemas.enable=true`): typed columns, the key from the
//!   record key's schema. A message without a schema gives a spec of `text` columns named
//!   after its fields, the key from the record key's fields. A [`SourceEvent::Relation`]
//!   comes before a table's first change and again whenever the spec changes (a column
//!   added upstream); the sink evolves the lake table.
//! - **Changes.** `c` and `r` upsert (an insert of a key the table holds replaces the row),
//!   `u` updates (with the old key when `before` shows the key changed), `d` deletes by the
//!   `before` row or the record key, `t` truncates; tombstones and `m` (logical decoding
//!   messages) carry no change and are skipped.
//! - **Transactions and positions.** Consecutive changes of one partition within a poll form
//!   one transaction (a lake-writer transaction per record cost more than decoding it). Its
//!   [`SourceEvent::Begin`] names only its own partition, at the offset after its last record:
//!   what the sink's [`Position::holds`] check compares, for the transaction as a whole. So a
//!   transaction is cut at every offset a lake table recorded for its partition (the offsets
//!   given to [`RecordMapper::starting_at`]): one that began before a table's offset and
//!   ended after it would be applied to that table whole, the records the table already
//!   holds included. Its [`SourceEvent::Commit`] carries every assigned partition's next
//!   offset: where the partition started (what every table held already) or past the last
//!   record delivered in this run. After the pipeline commits, every table it wrote holds all
//!   of that (records were applied, or held already), so the offsets a table records are
//!   true of it and name every partition — a partition left out would make a restart fall
//!   back behind it and apply its records again — and a restart seeks each partition to
//!   what the tables hold. Commits happen only between transactions, so the offsets tables
//!   record are always transaction boundaries.
//! - **Deduplication.** Kafka is at-least-once, and tansu (the tests' broker) even delivers
//!   the records of aborted transactions to `read_committed` consumers. Per table and record
//!   key, the mapper remembers the Debezium source position (LSN, binlog coordinates, SQL
//!   Server LSNs, HLC) of the last change it passed on, and skips a change whose position is
//!   older, or equal with the same value bytes (a replay). Connectors whose events carry no
//!   comparable position are not deduplicated. The memory is per run and bounded
//!   ([`MAX_DEDUP_KEYS`]); across restarts the lake's offsets do the work.
//! - **Records that are not change events** (not JSON, not an envelope, an unknown `op`, a
//!   value that does not match its schema, a column the table does not have) are
//!   [`Rejected`], naming the stage and the field path; nothing of them reaches the tables
//!   (a spec they carry included) and their offset counts as delivered. The source sends
//!   them to the dead-letter topic before it hands out the events that follow them.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::debezium::{CodecError, Decoded, DecodedChange, Decoder, Op, SourcePosition};
use crate::position::{KafkaOffsets, TopicPartition};
use crate::source::{ColumnSpec, KeyKind, Position, SourceEvent, TableId, TableSpec};
use crate::value::ColumnType;

/// How many (table, key) pairs deduplication remembers before it starts over.
pub const MAX_DEDUP_KEYS: usize = 1_000_000;

/// One Kafka record as the consumer received it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// The key bytes.
    pub key: Option<&'a [u8]>,
    /// The value bytes (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// The record's timestamp, milliseconds since the Unix epoch, if it has one.
    pub timestamp_ms: Option<i64>,
}

/// Where reading a record failed, in Kafka Connect's terms (its dead-letter header
/// `__connect.errors.stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the record key (`KEY_CONVERTER`).
    Key,
    /// Reading the record value (`VALUE_CONVERTER`).
    Value,
    /// Reading a header (`HEADER_CONVERTER`).
    Header,
    /// Turning the change into a row of its table (`TASK_PUT`).
    Table,
}

impl Stage {
    /// Kafka Connect's name of the stage.
    pub fn connect_name(self) -> &'static str {
        match self {
            Stage::Key => "KEY_CONVERTER",
            Stage::Value => "VALUE_CONVERTER",
            Stage::Header => "HEADER_CONVERTER",
            Stage::Table => "TASK_PUT",
        }
    }

    /// The stage of a decoding error, from its field path.
    fn of(e: &CodecError) -> Self {
        if e.path.starts_with("key") {
            Stage::Key
        } else if e.path.starts_with("headers") {
            Stage::Header
        } else {
            Stage::Value
        }
    }
}

/// A record that is not a valid change event; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where reading it failed.
    pub stage: Stage,
    /// Why, with the field path (`value.payload.after.amount: ...`).
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Rejected {
    fn table(reason: impl Into<String>) -> Self {
        Self {
            stage: Stage::Table,
            reason: reason.into(),
        }
    }
}

struct Table {
    spec: Arc<TableSpec>,
    /// The decoder's spec (from an embedded schema) this one was made from; `None` for
    /// inferred text columns. The same `Arc` again means the same spec.
    from: Option<Arc<TableSpec>>,
}

/// A partition's progress in this run.
struct PartitionCursor {
    tp: TopicPartition,
    /// The next offset to deliver.
    next: Option<i64>,
    /// Offsets lake tables recorded for the partition, ascending: transactions are cut there.
    cuts: Vec<i64>,
}

impl PartitionCursor {
    /// Whether a table's offset falls between a transaction ending at `end` and a record at
    /// `offset`: the record must start a new transaction.
    fn cut_between(&self, end: i64, offset: i64) -> bool {
        let i = self.cuts.partition_point(|&c| c < end);
        self.cuts.get(i).is_some_and(|&c| c <= offset)
    }
}

/// The transaction being built.
struct OpenTransaction {
    /// Where its Begin is in the output (its position is known when it closes).
    begin: usize,
    /// Its partition (an index into the cursors).
    partition: usize,
    /// The offset after its last record.
    end: i64,
    /// The commit time of its last change, microseconds since the Unix epoch.
    commit_time_micros: i64,
}

/// The source position and value hash of a key's last change.
type LastChange = (SourcePosition, u64);

/// A fast hasher for record keys and values (deduplication is not exposed to hash flooding
/// beyond what a topic's writers could do to their own consumers anyway).
type FastHash = foldhash::fast::RandomState;

/// Turns records into transactions of [`SourceEvent`]s; see the module doc.
#[derive(Default)]
pub struct RecordMapper {
    decoder: Decoder,
    /// Schema (or MySQL database) → table name → table id.
    names: HashMap<String, HashMap<String, TableId, FastHash>, FastHash>,
    /// The tables, table id `n` at index `n - 1`.
    tables: Vec<Table>,
    partitions: Vec<PartitionCursor>,
    /// Per table, record key → the source position and value hash of its last change.
    last_change: HashMap<TableId, HashMap<Box<[u8]>, LastChange, FastHash>>,
    /// Keys in `last_change`.
    remembered: usize,
    hasher: FastHash,
    /// The events of this poll so far.
    events: Vec<SourceEvent>,
    open: Option<OpenTransaction>,
    /// Records skipped as replays.
    pub duplicates: u64,
    /// Plain JSON topics (`cdc.kafka.format = "json"`): records are rows, not change events.
    plain: Option<super::plain::PlainMapper>,
}

impl RecordMapper {
    /// A mapper that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A mapper for a consumer whose partitions start at `start`: what every table already
    /// holds, so it counts as delivered (commits record it for partitions without records in
    /// this run, and a later restart does not fall back behind it). `tables` are the offsets
    /// each lake table recorded: transactions are cut there.
    pub fn starting_at(start: KafkaOffsets, tables: &[KafkaOffsets]) -> Self {
        let mut mapper = Self::default();
        for (tp, offset) in start.iter() {
            let slot = mapper.cursor(&tp.topic, tp.partition);
            mapper.partitions[slot].next = Some(offset);
        }
        for table in tables {
            for (tp, offset) in table.iter() {
                let slot = mapper.cursor(&tp.topic, tp.partition);
                let cuts = &mut mapper.partitions[slot].cuts;
                if let Err(i) = cuts.binary_search(&offset) {
                    cuts.insert(i, offset);
                }
            }
        }
        mapper
    }

    /// This mapper reading plain JSON records as rows (see [`super::plain`]) instead of change
    /// events.
    pub fn plain(mut self, mapper: super::plain::PlainMapper) -> Self {
        self.plain = Some(mapper);
        self
    }

    /// Every partition's next offset delivered so far (from the start offsets on).
    pub fn delivered(&self) -> KafkaOffsets {
        let mut out = KafkaOffsets::new();
        for p in &self.partitions {
            if let Some(next) = p.next {
                out.insert(p.tp.clone(), next);
            }
        }
        out
    }

    /// The index of the cursor of `topic`/`partition`, made when new.
    fn cursor(&mut self, topic: &str, partition: i32) -> usize {
        if let Some(i) = self
            .partitions
            .iter()
            .position(|p| p.tp.partition == partition && p.tp.topic == topic)
        {
            return i;
        }
        self.partitions.push(PartitionCursor {
            tp: TopicPartition::new(topic, partition),
            next: None,
            cuts: Vec::new(),
        });
        self.partitions.len() - 1
    }

    /// Reads `record` into the events of this poll: a change (in a transaction), a table's
    /// spec, or nothing (a tombstone, a replay, a logical decoding message). Its offset
    /// counts as delivered either way, a rejected record's too.
    pub fn map(&mut self, record: &Record<'_>, headers: &[(&str, Option<&[u8]>)]) -> Result<(), Rejected> {
        let slot = self.cursor(record.topic, record.partition);
        let result = self.map_at(slot, record, headers);
        // Delivered only now: a transaction closed while the record was read ends before it.
        self.partitions[slot].next = Some(record.offset + 1);
        result
    }

    fn map_at(
        &mut self,
        slot: usize,
        record: &Record<'_>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<(), Rejected> {
        if self.plain.is_some() {
            return self.map_plain(slot, record);
        }
        let change = match self.decoder.decode(record.key, record.value, headers, None) {
            Ok(Decoded::Tombstone { .. }) => return Ok(()),
            Ok(Decoded::Change(change)) => change,
            Err(e) => {
                return Err(Rejected {
                    stage: Stage::of(&e),
                    reason: e.to_string(),
                });
            }
        };
        if change.op == Op::Message || (change.op == Op::Truncate && self.known(&change).is_none()) {
            // A truncate of a table not seen yet: it has no record key, so it cannot say
            // what the table's key is (and a schemaless one has no columns at all).
            return Ok(());
        }
        let (id, relation) = self.table_of(&change)?;
        let spec = relation
            .clone()
            .unwrap_or_else(|| self.tables[id as usize - 1].spec.clone());
        let millis = change
            .source_ts_ms
            .or(change.ts_ms)
            .or(record.timestamp_ms)
            .unwrap_or_default();
        let from = change.spec.clone();
        let mut change = *change;
        let position = std::mem::replace(&mut change.position, SourcePosition::Other { sequence: None });
        let event = change_event(change, &spec).map_err(|e| Rejected::table(e.to_string()))?;
        let replay = self.is_replay(id, record, position);
        // The sink learns a new or changed spec even when this record is skipped: the mapper
        // describes the table's next records with it.
        if let Some(spec) = relation {
            self.finish();
            self.install(id, spec, from);
            self.events
                .push(SourceEvent::Relation(self.tables[id as usize - 1].spec.clone()));
        }
        if replay {
            tracing::debug!(
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                "skipped a change its key already had (a replay)"
            );
            self.duplicates += 1;
            return Ok(());
        }
        if let Some(event) = event {
            self.push_change(slot, record.offset, millis.saturating_mul(1000), event);
        }
        Ok(())
    }

    /// A plain JSON record: one row appended to its topic's table.
    fn map_plain(&mut self, slot: usize, record: &Record<'_>) -> Result<(), Rejected> {
        let next_id = TableId::try_from(self.tables.len() + 1).expect("fewer than 2^32 tables");
        let plain = self.plain.as_mut().expect("a plain mapper");
        let Some(mapped) = plain.map(record, next_id)? else {
            return Ok(());
        };
        if let Some(spec) = mapped.relation {
            self.finish();
            self.install(mapped.table, spec.clone(), None);
            self.events.push(SourceEvent::Relation(spec));
        }
        let micros = record.timestamp_ms.unwrap_or_default().saturating_mul(1000);
        let insert = SourceEvent::Insert {
            table: mapped.table,
            new: mapped.row,
        };
        self.push_change(slot, record.offset, micros, insert);
        Ok(())
    }

    /// The events of the records mapped since the last call, every transaction closed.
    pub fn take_events(&mut self) -> Vec<SourceEvent> {
        self.finish();
        std::mem::take(&mut self.events)
    }

    /// Adds a change of the record at `offset` of partition `slot` to the open transaction,
    /// or to a new one.
    fn push_change(&mut self, slot: usize, offset: i64, commit_time_micros: i64, event: SourceEvent) {
        let cut = self
            .open
            .as_ref()
            .is_some_and(|t| t.partition != slot || self.partitions[slot].cut_between(t.end, offset));
        if cut {
            self.finish();
        }
        match &mut self.open {
            Some(t) => {
                t.end = offset + 1;
                t.commit_time_micros = commit_time_micros;
            }
            None => {
                self.open = Some(OpenTransaction {
                    begin: self.events.len(),
                    partition: slot,
                    end: offset + 1,
                    commit_time_micros,
                });
                // Its position is set when the transaction closes.
                self.events.push(SourceEvent::Begin {
                    commit_position: Position::Kafka(KafkaOffsets::new()),
                    transaction_id: None,
                });
            }
        }
        self.events.push(event);
    }

    /// Closes the open transaction, if any.
    fn finish(&mut self) {
        let Some(t) = self.open.take() else {
            return;
        };
        let tp = self.partitions[t.partition].tp.clone();
        self.events[t.begin] = SourceEvent::Begin {
            commit_position: Position::Kafka(KafkaOffsets::new().with(tp, t.end)),
            transaction_id: None,
        };
        self.events.push(SourceEvent::Commit {
            position: Position::Kafka(self.delivered()),
            commit_time_micros: t.commit_time_micros,
        });
    }

    /// The id of the table of `change`, if it has been seen.
    fn known(&self, change: &DecodedChange) -> Option<TableId> {
        let (schema, name) = table_name(change);
        self.names.get(schema)?.get(name?).copied()
    }

    /// The table of `change`, and its new spec when it is new or its spec changed (installed
    /// by [`Self::install`] once the change is known to be good).
    fn table_of(&mut self, change: &DecodedChange) -> Result<(TableId, Option<Arc<TableSpec>>), Rejected> {
        let (schema, name) = table_name(change);
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(Rejected::table(
                "the change event's source block names no table (source.table)",
            ));
        };
        let Some(id) = self.known(change) else {
            let id = TableId::try_from(self.tables.len() + 1).expect("fewer than 2^32 tables");
            let spec = match &change.spec {
                Some(spec) => TableSpec {
                    id,
                    ..(**spec).clone()
                },
                None => TableSpec {
                    id,
                    ..inferred_spec(change, schema, name)
                },
            };
            return Ok((id, Some(Arc::new(spec))));
        };
        if change.op == Op::Truncate {
            // A truncate has no record key, so its spec would make every column the key: it
            // never changes a known table's spec.
            return Ok((id, None));
        }
        let table = &mut self.tables[id as usize - 1];
        let spec = match &change.spec {
            Some(from) => {
                if table.from.as_ref().is_some_and(|f| Arc::ptr_eq(f, from)) {
                    return Ok((id, None));
                }
                let spec = TableSpec {
                    id,
                    ..(**from).clone()
                };
                if spec.columns == table.spec.columns && spec.key_kind == table.spec.key_kind {
                    // The same spec from another schema text.
                    table.from = Some(from.clone());
                    return Ok((id, None));
                }
                spec
            }
            // A schemaless event of a table known typed: keep the typed spec.
            None if table.from.is_some() => return Ok((id, None)),
            None => {
                // Schemaless: the columns seen so far, plus any new ones.
                let row = change
                    .after
                    .as_ref()
                    .or(change.before.as_ref())
                    .or(change.key.as_ref());
                let known = |n: &str| table.spec.columns.iter().any(|c| c.name == n);
                if row.is_none_or(|r| r.columns.iter().all(|(n, _)| known(n))) {
                    return Ok((id, None));
                }
                let mut merged = (*table.spec).clone();
                for c in inferred_spec(change, schema, name).columns {
                    if !merged.columns.iter().any(|m| m.name == c.name) {
                        merged.columns.push(ColumnSpec {
                            key: false,
                            not_null: false,
                            attnum: i16::try_from(merged.columns.len() + 1).unwrap_or(0),
                            ..c
                        });
                    }
                }
                merged
            }
        };
        Ok((id, Some(Arc::new(spec))))
    }

    /// Makes `spec` the spec of table `id` (a new table when `id` is the next id).
    fn install(&mut self, id: TableId, spec: Arc<TableSpec>, from: Option<Arc<TableSpec>>) {
        let index = id as usize - 1;
        if index == self.tables.len() {
            self.names
                .entry(spec.schema.clone())
                .or_default()
                .insert(spec.name.clone(), id);
            self.tables.push(Table { spec, from });
        } else {
            self.tables[index] = Table { spec, from };
        }
    }

    /// Whether `change` repeats (or predates) the last change passed on for its key.
    fn is_replay(&mut self, id: TableId, record: &Record<'_>, position: SourcePosition) -> bool {
        let Some(key) = record.key.filter(|k| !k.is_empty()) else {
            return false;
        };
        let hash = self.hasher.hash_one(record.value);
        if let Some((last, last_hash)) = self.last_change.get_mut(&id).and_then(|keys| keys.get_mut(key)) {
            match position.compare(last) {
                Some(Ordering::Less) => return true,
                Some(Ordering::Equal) if *last_hash == hash => return true,
                Some(_) => {
                    *last = position;
                    *last_hash = hash;
                    return false;
                }
                // Not comparable (no position): never a replay.
                None => return false,
            }
        }
        if self.remembered >= MAX_DEDUP_KEYS {
            self.last_change.clear();
            self.remembered = 0;
        }
        self.last_change
            .entry(id)
            .or_default()
            .insert(key.into(), (position, hash));
        self.remembered += 1;
        false
    }
}

/// The schema (or MySQL database) and the table name of `change`'s `source` block.
fn table_name(change: &DecodedChange) -> (&str, Option<&str>) {
    let schema = change
        .table
        .schema
        .as_deref()
        .or(change.table.db.as_deref())
        .unwrap_or_default();
    (schema, change.table.table.as_deref())
}

/// The spec of a schemaless event: `text` columns named after its row's fields (`after`, else
/// `before`, else the key), keyed by the record key's fields.
fn inferred_spec(change: &DecodedChange, schema: &str, name: &str) -> TableSpec {
    let key_names: Vec<&str> = change
        .key
        .as_ref()
        .map(|k| k.columns.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let row = change
        .after
        .as_ref()
        .or(change.before.as_ref())
        .or(change.key.as_ref());
    let columns: Vec<ColumnSpec> = row
        .map(|r| r.columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            ColumnSpec::new(
                n,
                ColumnType::Text,
                key_names.contains(&n),
                i16::try_from(i + 1).unwrap_or(0),
            )
        })
        .collect();
    let key_kind = KeyKind::of(&columns);
    TableSpec {
        id: 0,
        schema: schema.to_string(),
        name: name.to_string(),
        columns,
        key_kind,
    }
}

/// The change event of `change` for the table `spec`, `None` for changes without one.
fn change_event(change: DecodedChange, spec: &TableSpec) -> Result<Option<SourceEvent>, CodecError> {
    let table = spec.id;
    let DecodedChange {
        op,
        before,
        after,
        key,
        ..
    } = change;
    let after = || after.expect("the decoder checks after").into_row(spec);
    Ok(Some(match op {
        Op::Create | Op::Read => SourceEvent::Insert { table, new: after()? },
        Op::Update => {
            let new = after()?;
            let old = match (before, spec.key_kind) {
                (Some(before), KeyKind::FullRow) => Some(before.into_row(spec)?),
                (Some(before), KeyKind::PrimaryKey) => {
                    let before = before.into_row(spec)?;
                    let moved = spec.key_columns().iter().any(|&i| before[i] != new[i]);
                    moved.then_some(before)
                }
                (None, _) => None,
            };
            SourceEvent::Update { table, old, new }
        }
        Op::Delete => {
            let old = match (before, key) {
                (Some(before), key) => {
                    let mut old = before.into_row(spec)?;
                    // The record key is the key; `before` may hold placeholders elsewhere.
                    if let Some(key) = key {
                        for (i, cell) in key.into_row(spec)?.into_iter().enumerate() {
                            if spec.columns[i].key && !matches!(cell, crate::value::Value::Null) {
                                old[i] = cell;
                            }
                        }
                    }
                    old
                }
                (None, Some(key)) => key.into_row(spec)?,
                (None, None) => return Ok(None),
            };
            SourceEvent::Delete { table, old }
        }
        Op::Truncate => SourceEvent::Truncate { tables: vec![table] },
        Op::Message => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debezium::{Change, EncoderConfig, SourceConnector, SourceInfo, TableEncoder};
    use crate::scripted::testing::{row, table};

    fn encoder(schemas: bool) -> TableEncoder {
        let config = EncoderConfig {
            schemas,
            ..EncoderConfig::new("shop", SourceConnector::Postgres)
        };
        TableEncoder::new(&config, table(7, "items"))
    }

    fn info(lsn: u64) -> SourceInfo {
        SourceInfo {
            db: "shop".into(),
            position: crate::position::Lsn(lsn).into(),
            tx_id: Some(1),
            commit_time_micros: 1_700_000_000_000_000,
            snapshot: Default::default(),
            transaction: None,
        }
    }

    /// Maps each message at consecutive offsets of `partition`, as one poll; returns the
    /// events.
    fn map_on(
        mapper: &mut RecordMapper,
        messages: &[crate::debezium::Message],
        partition: i32,
        first_offset: i64,
    ) -> Vec<SourceEvent> {
        for (i, m) in messages.iter().enumerate() {
            let headers: Vec<(&str, Option<&[u8]>)> = m
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
                .collect();
            let record = Record {
                topic: &m.topic,
                partition,
                offset: first_offset + i as i64,
                key: m.key.as_deref(),
                value: m.value.as_deref(),
                timestamp_ms: None,
            };
            mapper.map(&record, &headers).unwrap();
        }
        mapper.take_events()
    }

    fn map_all(
        mapper: &mut RecordMapper,
        messages: &[crate::debezium::Message],
        first_offset: i64,
    ) -> Vec<SourceEvent> {
        map_on(mapper, messages, 0, first_offset)
    }

    fn kinds(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Relation(_) => "relation".into(),
                SourceEvent::Begin { commit_position, .. } => format!("begin {commit_position}"),
                SourceEvent::Insert { .. } => "insert".into(),
                SourceEvent::Update { .. } => "update".into(),
                SourceEvent::Delete { .. } => "delete".into(),
                SourceEvent::Truncate { .. } => "truncate".into(),
                SourceEvent::Commit { position, .. } => format!("commit {position}"),
                SourceEvent::Keepalive { .. } => "keepalive".into(),
            })
            .collect()
    }

    fn inserts(enc: &TableEncoder, ids: std::ops::Range<i64>) -> Vec<crate::debezium::Message> {
        ids.flat_map(|id| {
            let new = row(id, Some("a"));
            enc.encode(Change::Create { after: &new }, &info(100 + id as u64 * 16), 0)
                .unwrap()
        })
        .collect()
    }

    #[test]
    fn consecutive_changes_of_a_partition_are_one_transaction_and_replays_are_skipped() {
        for schemas in [true, false] {
            let enc = encoder(schemas);
            let (new, old) = (row(1, Some("a")), row(1, None));
            let mut messages = enc.encode(Change::Create { after: &new }, &info(100), 0).unwrap();
            messages.extend(
                enc.encode(Change::Delete { before: &old }, &info(200), 0)
                    .unwrap(),
            );
            let mut mapper = RecordMapper::new();
            let events = map_all(&mut mapper, &messages, 10);
            // Relation, then one transaction ending after the delete; the tombstone after it
            // adds nothing but counts as delivered.
            assert_eq!(
                kinds(&events),
                [
                    "relation",
                    "begin shop.public.items:0=12",
                    "insert",
                    "delete",
                    "commit shop.public.items:0=13"
                ],
                "schemas {schemas}"
            );
            assert_eq!(mapper.delivered().to_string(), "shop.public.items:0=13");
            let SourceEvent::Relation(spec) = &events[0] else {
                panic!()
            };
            assert_eq!(spec.key_columns(), [0], "schemas {schemas}");
            let expected_type = if schemas {
                ColumnType::Int64
            } else {
                ColumnType::Text
            };
            assert_eq!(spec.columns[0].column_type, expected_type);
            // The same records again (an aborted transaction's copy, a replay): skipped.
            let again = map_all(&mut mapper, &messages, 13);
            assert!(again.is_empty(), "{again:?}");
            assert_eq!(mapper.duplicates, 2);
            assert_eq!(mapper.delivered().to_string(), "shop.public.items:0=16");
        }
    }

    #[test]
    fn transactions_are_cut_where_a_table_holds_an_offset_and_between_partitions() {
        let enc = encoder(true);
        let start = KafkaOffsets::new().with(TopicPartition::new("shop.public.items", 0), 10);
        // One table holds partition 0 up to offset 13: records 10..13 and 13.. must not share
        // a transaction.
        let held = KafkaOffsets::new().with(TopicPartition::new("shop.public.items", 0), 13);
        let mut mapper = RecordMapper::starting_at(start.clone(), &[start, held]);
        let events = map_all(&mut mapper, &inserts(&enc, 0..6), 10);
        assert_eq!(
            kinds(&events),
            [
                "relation",
                "begin shop.public.items:0=13",
                "insert",
                "insert",
                "insert",
                "commit shop.public.items:0=13",
                "begin shop.public.items:0=16",
                "insert",
                "insert",
                "insert",
                "commit shop.public.items:0=16"
            ]
        );
        // Records of another partition start another transaction; each commit names every
        // partition delivered so far.
        let mut events = map_on(&mut mapper, &inserts(&enc, 10..11), 1, 0);
        events.extend(map_on(&mut mapper, &inserts(&enc, 11..12), 0, 16));
        assert_eq!(
            kinds(&events),
            [
                "begin shop.public.items:1=1",
                "insert",
                "commit shop.public.items:0=16,shop.public.items:1=1",
                "begin shop.public.items:0=17",
                "insert",
                "commit shop.public.items:0=17,shop.public.items:1=1"
            ]
        );
    }

    #[test]
    fn a_schemaless_truncate_needs_the_table_seen_first() {
        let enc = encoder(false);
        let truncate = enc.encode(Change::Truncate, &info(100), 0).unwrap();
        let mut mapper = RecordMapper::new();
        assert!(map_all(&mut mapper, &truncate, 0).is_empty());
        let new = row(1, Some("a"));
        let mut messages = enc.encode(Change::Create { after: &new }, &info(200), 0).unwrap();
        messages.extend(enc.encode(Change::Truncate, &info(300), 0).unwrap());
        let events = map_all(&mut mapper, &messages, 1);
        assert!(
            matches!(events.as_slice(), [SourceEvent::Relation(_), .., SourceEvent::Truncate { tables }, SourceEvent::Commit { .. }] if tables == &[1]),
            "{events:?}"
        );
    }

    #[test]
    fn a_bad_record_is_rejected_naming_stage_and_path_and_counts_as_delivered() {
        let mut mapper = RecordMapper::new();
        let bad = |offset: i64, key: Option<&'static [u8]>, value: &'static [u8]| Record {
            topic: "t",
            partition: 3,
            offset,
            key,
            value: Some(value),
            timestamp_ms: None,
        };
        let err = mapper
            .map(&bad(41, None, br#"{"op": "x", "source": {}}"#), &[])
            .unwrap_err();
        assert_eq!(err.stage, Stage::Value);
        assert!(err.reason.contains("value.op"), "{err}");
        let err = mapper.map(&bad(42, Some(b"{"), b"{}"), &[]).unwrap_err();
        assert_eq!(
            (err.stage, err.stage.connect_name()),
            (Stage::Key, "KEY_CONVERTER")
        );
        let err = mapper.map(&bad(43, None, b"not json"), &[]).unwrap_err();
        assert!(err.reason.contains("not JSON"), "{err}");
        // A row with a column its own schema does not have: nothing of it reaches the
        // tables, not even its table.
        let enc = encoder(true);
        let good = inserts(&enc, 0..1);
        let value = String::from_utf8(good[0].value.clone().unwrap()).unwrap();
        let value = value.replacen(r#""v":"a""#, r#""v":"a","w":"x""#, 1);
        let value: &'static [u8] = Box::leak(value.into_bytes().into_boxed_slice());
        let err = mapper.map(
            &bad(
                44,
                good[0].key.clone().map(|k| &*Box::leak(k.into_boxed_slice())),
                value,
            ),
            &[],
        );
        let err = err.unwrap_err();
        assert_eq!(err.stage, Stage::Table);
        assert!(err.reason.contains("\"w\""), "{err}");
        assert!(mapper.take_events().is_empty());
        assert_eq!(mapper.delivered().to_string(), "t:3=45");
        // The good record after it lands, in a table that starts at id 1.
        let events = map_on(&mut mapper, &good, 3, 45);
        let SourceEvent::Relation(spec) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(spec.id, 1);
        assert_eq!(mapper.delivered().to_string(), "shop.public.items:3=46,t:3=45");
    }
}
