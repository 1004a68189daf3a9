//! Kafka records of Debezium change events into [`SourceEvent`]s: the table of each event,
//! its spec, deduplication, and one transaction per record.
//!
//! [`RecordMapper`] is the broker-free half of the Kafka source, so it is tested without one.
//! For every record it returns whole transactions:
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
//! - **Transactions and positions.** Each record is one transaction. Its
//!   [`SourceEvent::Begin`] names only its own partition at the record's next offset (what the
//!   sink's [`Position::holds`] check compares), so no transaction straddles a table's
//!   position. Its [`SourceEvent::Commit`] carries every assigned partition's next offset:
//!   where the partition started (what every table held already) or past the last record
//!   delivered in this run. After the pipeline commits, every table it wrote holds all of
//!   that (records were applied, or held already), so the offsets a table records are true
//!   of it and name every partition — a partition left out would make a restart fall back
//!   behind it and apply its records again — and a restart seeks each partition to what the
//!   tables hold.
//! - **Deduplication.** Kafka is at-least-once, and tansu (the tests' broker) even delivers
//!   the records of aborted transactions to `read_committed` consumers. Per table and record
//!   key, the mapper remembers the Debezium source position (LSN, binlog coordinates, SQL
//!   Server LSNs, HLC) of the last change it passed on, and skips a change whose position is
//!   older, or equal with the same value bytes (a replay). Connectors whose events carry no
//!   comparable position are not deduplicated. The memory is per run and bounded
//!   ([`MAX_DEDUP_KEYS`]); across restarts the lake's offsets do the work.
//!
//! A record that is not a valid change event is an error naming topic, partition, offset and
//! the field path of the problem; the pipeline stops there. (A dead-letter topic is a later
//! piece.)

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use tarn_core::{Error, ErrorKind, Result};

use crate::debezium::{Decoded, DecodedChange, DecodedRow, Decoder, Op, SourcePosition};
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

struct Table {
    spec: Arc<TableSpec>,
    /// Whether the spec came from an embedded schema (else: inferred text columns).
    typed: bool,
}

/// The source position and value hash of a key's last change.
type LastChange = (SourcePosition, u64);

/// Turns records into transactions of [`SourceEvent`]s; see the module doc.
#[derive(Default)]
pub struct RecordMapper {
    decoder: Decoder,
    /// `schema.table` → its table.
    tables: HashMap<(String, String), Table>,
    next_id: TableId,
    /// Every partition's next offset delivered in this run.
    delivered: KafkaOffsets,
    /// (table, record key) → the source position and value hash of its last change.
    last_change: HashMap<(TableId, Box<[u8]>), LastChange>,
    /// Records skipped as replays.
    pub duplicates: u64,
}

impl RecordMapper {
    /// A mapper that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A mapper for a consumer whose partitions start at `start`: what every table already
    /// holds, so it counts as delivered (commits record it for partitions without records in
    /// this run, and a later restart does not fall back behind it).
    pub fn starting_at(start: KafkaOffsets) -> Self {
        Self {
            delivered: start,
            ..Self::default()
        }
    }

    /// Every partition's next offset delivered so far (from the start offsets on).
    pub fn delivered(&self) -> &KafkaOffsets {
        &self.delivered
    }

    /// The events of `record`, appended to `out`: a transaction, or nothing (a tombstone, a
    /// replay, a logical decoding message). The record's offset counts as delivered either
    /// way.
    pub fn map(
        &mut self,
        record: &Record<'_>,
        headers: &[(&str, Option<&[u8]>)],
        out: &mut Vec<SourceEvent>,
    ) -> Result<()> {
        let tp = TopicPartition::new(record.topic, record.partition);
        let next = record.offset + 1;
        let change = match self.decoder.decode(record.key, record.value, headers, None) {
            Ok(Decoded::Tombstone { .. }) => None,
            Ok(Decoded::Change(change)) => Some(change),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "Kafka record at topic {} partition {} offset {} is not a valid Debezium change event: {e} \
                         (the pipeline stops here; a dead-letter topic is not implemented yet)",
                        record.topic, record.partition, record.offset
                    ),
                ));
            }
        };
        self.delivered.insert(tp.clone(), next);
        let Some(change) = change else {
            return Ok(());
        };
        if change.op == Op::Message || (change.op == Op::Truncate && !self.knows(&change)) {
            // A truncate of a table not seen yet: it has no record key, so it cannot say
            // what the table's key is (and a schemaless one has no columns at all).
            return Ok(());
        }
        let at = || {
            format!(
                "topic {} partition {} offset {}",
                record.topic, record.partition, record.offset
            )
        };
        let (id, relation) = self
            .table_of(&change)
            .map_err(|e| e.with_context("record", at()))?;
        // The sink learns a new or changed spec even when this record is skipped: the mapper
        // already describes the table's next records with it.
        if let Some(spec) = relation {
            out.push(SourceEvent::Relation(spec));
        }
        if self.is_replay(id, record, &change) {
            tracing::debug!(
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                "skipped a change its key already had (a replay)"
            );
            self.duplicates += 1;
            return Ok(());
        }
        let spec = self.spec(id);
        let event = change_event(&change, &spec).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "Kafka record at {}: {e} (the pipeline stops here; a dead-letter topic is not implemented yet)",
                    at()
                ),
            )
        })?;
        let Some(event) = event else {
            return Ok(());
        };
        out.push(SourceEvent::Begin {
            commit_position: Position::Kafka(KafkaOffsets::new().with(tp, next)),
        });
        out.push(event);
        let millis = change
            .source_ts_ms
            .or(change.ts_ms)
            .or(record.timestamp_ms)
            .unwrap_or_default();
        out.push(SourceEvent::Commit {
            position: Position::Kafka(self.delivered.clone()),
            commit_time_micros: millis.saturating_mul(1000),
        });
        Ok(())
    }

    /// Whether the table of `change` has been seen.
    fn knows(&self, change: &DecodedChange) -> bool {
        let schema = change
            .table
            .schema
            .clone()
            .or_else(|| change.table.db.clone())
            .unwrap_or_default();
        let name = change.table.table.clone().unwrap_or_default();
        self.tables.contains_key(&(schema, name))
    }

    fn spec(&self, id: TableId) -> Arc<TableSpec> {
        self.tables
            .values()
            .find(|t| t.spec.id == id)
            .map(|t| t.spec.clone())
            .expect("a table id the mapper gave out")
    }

    /// The table of `change`, and its spec when a Relation must precede the change.
    fn table_of(&mut self, change: &DecodedChange) -> Result<(TableId, Option<Arc<TableSpec>>)> {
        let schema = change
            .table
            .schema
            .clone()
            .or_else(|| change.table.db.clone())
            .unwrap_or_default();
        let Some(name) = change.table.table.clone().filter(|t| !t.is_empty()) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the change event's source block names no table (source.table)",
            ));
        };
        let key = (schema.clone(), name.clone());
        let (spec, typed) = match &change.spec {
            Some(spec) => ((**spec).clone(), true),
            None => (inferred_spec(change, &schema, &name), false),
        };
        match self.tables.get_mut(&key) {
            // A truncate has no record key, so its spec would make every column the key:
            // it never changes a known table's spec.
            Some(table) if change.op == Op::Truncate => Ok((table.spec.id, None)),
            Some(table) => {
                let id = table.spec.id;
                let spec = if typed {
                    spec
                } else if table.typed {
                    // A schemaless event of a table known typed: keep the typed spec.
                    return Ok((id, None));
                } else {
                    // Schemaless: the columns seen so far, plus any new ones.
                    let mut merged = (*table.spec).clone();
                    let mut added = false;
                    for c in spec.columns {
                        if !merged.columns.iter().any(|m| m.name == c.name) {
                            merged.columns.push(ColumnSpec {
                                key: false,
                                not_null: false,
                                attnum: i16::try_from(merged.columns.len() + 1).unwrap_or(0),
                                ..c
                            });
                            added = true;
                        }
                    }
                    if !added {
                        return Ok((id, None));
                    }
                    merged
                };
                let spec = TableSpec { id, ..spec };
                if spec.columns == table.spec.columns && spec.key_kind == table.spec.key_kind {
                    return Ok((id, None));
                }
                table.spec = Arc::new(spec);
                table.typed = typed;
                Ok((id, Some(table.spec.clone())))
            }
            None => {
                self.next_id += 1;
                let id = self.next_id;
                let spec = Arc::new(TableSpec { id, ..spec });
                self.tables.insert(
                    key,
                    Table {
                        spec: spec.clone(),
                        typed,
                    },
                );
                Ok((id, Some(spec)))
            }
        }
    }

    /// Whether `change` repeats (or predates) the last change passed on for its key.
    fn is_replay(&mut self, id: TableId, record: &Record<'_>, change: &DecodedChange) -> bool {
        let Some(key) = record.key.filter(|k| !k.is_empty()) else {
            return false;
        };
        let mut hasher = DefaultHasher::new();
        record.value.hash(&mut hasher);
        let hash = hasher.finish();
        let entry = (id, Box::<[u8]>::from(key));
        if let Some((position, last_hash)) = self.last_change.get(&entry) {
            match change.position.compare(position) {
                Some(Ordering::Less) => return true,
                Some(Ordering::Equal) if *last_hash == hash => return true,
                Some(_) => {}
                // Not comparable (no position): never a replay.
                None => return false,
            }
        }
        if self.last_change.len() >= MAX_DEDUP_KEYS {
            self.last_change.clear();
        }
        self.last_change.insert(entry, (change.position.clone(), hash));
        false
    }
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
fn change_event(
    change: &DecodedChange,
    spec: &TableSpec,
) -> std::result::Result<Option<SourceEvent>, crate::debezium::CodecError> {
    let table = spec.id;
    let row = |r: &DecodedRow| r.to_row(spec);
    Ok(Some(match change.op {
        Op::Create | Op::Read => SourceEvent::Insert {
            table,
            new: row(change.after.as_ref().expect("the decoder checks after"))?,
        },
        Op::Update => {
            let new = row(change.after.as_ref().expect("the decoder checks after"))?;
            let old = match (&change.before, spec.key_kind) {
                (Some(before), KeyKind::FullRow) => Some(row(before)?),
                (Some(before), KeyKind::PrimaryKey) => {
                    let before = row(before)?;
                    let moved = spec.key_columns().iter().any(|&i| before[i] != new[i]);
                    moved.then_some(before)
                }
                (None, _) => None,
            };
            SourceEvent::Update { table, old, new }
        }
        Op::Delete => {
            let old = match (&change.before, &change.key) {
                (Some(before), _) => {
                    let mut old = row(before)?;
                    // The record key is the key; `before` may hold placeholders elsewhere.
                    if let Some(key) = &change.key {
                        for (i, cell) in row(key)?.into_iter().enumerate() {
                            if spec.columns[i].key && !matches!(cell, crate::value::Value::Null) {
                                old[i] = cell;
                            }
                        }
                    }
                    old
                }
                (None, Some(key)) => row(key)?,
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

    /// Maps each message at consecutive offsets of partition 0; returns the events.
    fn map_all(
        mapper: &mut RecordMapper,
        messages: &[crate::debezium::Message],
        first_offset: i64,
    ) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let headers: Vec<(&str, Option<&[u8]>)> = m
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
                .collect();
            let record = Record {
                topic: &m.topic,
                partition: 0,
                offset: first_offset + i as i64,
                key: m.key.as_deref(),
                value: m.value.as_deref(),
                timestamp_ms: None,
            };
            mapper.map(&record, &headers, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn one_transaction_per_record_and_replays_skipped() {
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
            // Relation, then insert and delete transactions; the tombstone adds nothing.
            let kinds: Vec<&str> = events
                .iter()
                .map(|e| match e {
                    SourceEvent::Relation(_) => "relation",
                    SourceEvent::Begin { .. } => "begin",
                    SourceEvent::Insert { .. } => "insert",
                    SourceEvent::Delete { .. } => "delete",
                    SourceEvent::Commit { .. } => "commit",
                    _ => "other",
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    "relation", "begin", "insert", "commit", "begin", "delete", "commit"
                ],
                "schemas {schemas}"
            );
            let SourceEvent::Begin { commit_position } = &events[4] else {
                panic!()
            };
            assert_eq!(commit_position.to_string(), "shop.public.items:0=12");
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
    fn a_bad_record_names_topic_partition_offset_and_path() {
        let mut mapper = RecordMapper::new();
        let record = Record {
            topic: "t",
            partition: 3,
            offset: 41,
            key: None,
            value: Some(br#"{"op": "x", "source": {}}"#),
            timestamp_ms: None,
        };
        let err = mapper.map(&record, &[], &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("topic t partition 3 offset 41"), "{err}");
        assert!(err.contains("value.op"), "{err}");
    }
}
