//! The snapshot-summary codec: what the sink records in the lake under `tarn.cdc.*` keys —
//! in Iceberg snapshot summaries and table properties — and how it is read back.
//!
//! This is the one place where a table's position turns into text and back, so the lake's
//! record of "this table holds everything up to here" has exactly one format.
//!
//! A CDC commit of pipeline `P` at position `X` carries in its snapshot summary:
//!
//! - [`SUMMARY_PIPELINE`] = `P`;
//! - [`SUMMARY_LSN`] = `X` for a PostgreSQL position (`16/B374D848`), [`SUMMARY_RESOLVED`]
//!   = `X` for a CockroachDB resolved timestamp (`wall.logical`), or [`SUMMARY_KAFKA_OFFSETS`]
//!   = `X` for Kafka offsets (`topic:partition=next-offset,...`) — each in the text form of
//!   its type in [`crate::position`];
//! - [`SUMMARY_COMMIT_TIME`]: the source commit time of `X` (µs since the Unix epoch), for
//!   streamed commits;
//! - [`SUMMARY_SNAPSHOT`]: what an initial copy was (`initial`, `table-added`, `resnapshot`).
//!
//! Table properties: [`PROPERTY_SOURCE_TABLE`] and [`SUMMARY_PIPELINE`] (set when the sink
//! creates the table), `tarn.cdc.idle-position.P` ([`PROPERTY_IDLE`]: a position the table
//! holds although no snapshot records it), [`PROPERTY_STOPPED`] (why CDC stopped writing it)
//! and [`PROPERTY_ATTNUMS`] (Iceberg field id → source attribute number, so a renamed column
//! keeps its field).
//!
//! Reading: [`table_position`] walks back from the current snapshot through its parents, past
//! commits of others (compaction, another pipeline), to the newest one of the pipeline, and
//! takes the idle position instead when that is later. Text that is not a position is treated
//! as absent (with a warning): the table then holds nothing for the pipeline.

use std::collections::HashMap;

use iceberg::spec::TableMetadata;
use iceberg::table::Table;

use crate::position::{Hlc, KafkaOffsets, Lsn};
use crate::source::{Position, TableSpec};

/// Snapshot summary key: the pipeline that committed.
pub const SUMMARY_PIPELINE: &str = "tarn.cdc.pipeline";
/// Snapshot summary key: the source position the table holds everything up to.
pub const SUMMARY_LSN: &str = "tarn.cdc.lsn";
/// Snapshot summary key: for a CockroachDB source, the resolved timestamp (`wall.logical`) the
/// table holds everything up to (in place of [`SUMMARY_LSN`]).
pub const SUMMARY_RESOLVED: &str = "tarn.cdc.resolved";
/// Snapshot summary key: for a Kafka source, the next offset to read of every topic-partition
/// the table took messages from (in place of [`SUMMARY_LSN`]).
pub const SUMMARY_KAFKA_OFFSETS: &str = "tarn.cdc.kafka-offsets";
/// Snapshot summary key: the source commit time (µs since the Unix epoch) of that position.
pub const SUMMARY_COMMIT_TIME: &str = "tarn.cdc.commit-time-us";
/// Snapshot summary key: what a snapshot commit was (`initial`, `table-added`, `resnapshot`).
pub const SUMMARY_SNAPSHOT: &str = "tarn.cdc.snapshot";
/// Table property: why CDC stopped writing the table.
pub const PROPERTY_STOPPED: &str = "tarn.cdc.stopped";
/// Table property: the source table.
pub const PROPERTY_SOURCE_TABLE: &str = "tarn.cdc.source-table";
/// Table property prefix (`.<pipeline>` follows): a position the table holds everything up to
/// although no snapshot records it — set when a commit had nothing to write, and for tables
/// without changes while others moved on ([`super::LakeSink::mark_idle`]).
pub const PROPERTY_IDLE: &str = "tarn.cdc.idle-position";
/// Table property marking a table as a Kafka archive (`crate::kafka::archive`; tarn refuses
/// to archive into any other table).
pub const PROPERTY_KAFKA_ARCHIVE: &str = "tarn.kafka.archive";
/// Table property: Iceberg field id → source attribute number, for renames.
pub const PROPERTY_ATTNUMS: &str = "tarn.cdc.attnums";

/// The position a table holds for `pipeline`, and the source commit time recorded with it:
/// from the newest snapshot (walking back through parents past commits of others, e.g.
/// compaction) whose summary has one, or the table's idle position ([`PROPERTY_IDLE`]) when
/// that is later.
pub fn table_position(table: &Table, pipeline: &str) -> (Option<Position>, Option<i64>) {
    let (position, time) = summary_position(table, pipeline);
    let idle = idle_position(table.metadata().properties(), pipeline);
    match (position, idle) {
        (Some(p), Some(i)) if i > p => (Some(i), time),
        (None, Some(i)) => (Some(i), None),
        (position, _) => (position, time),
    }
}

/// Why CDC stopped writing `table` ([`PROPERTY_STOPPED`]), if it did.
pub fn stopped_reason(table: &Table) -> Option<String> {
    table.metadata().properties().get(PROPERTY_STOPPED).cloned()
}

/// The source table a lake table was created for ([`PROPERTY_SOURCE_TABLE`]), if CDC made it.
pub fn source_table(table: &Table) -> Option<&str> {
    table
        .metadata()
        .properties()
        .get(PROPERTY_SOURCE_TABLE)
        .map(String::as_str)
}

/// The pipeline that committed a snapshot, from its summary's additional properties.
pub fn snapshot_pipeline(summary: &HashMap<String, String>) -> Option<&str> {
    summary.get(SUMMARY_PIPELINE).map(String::as_str)
}

fn summary_position(table: &Table, pipeline: &str) -> (Option<Position>, Option<i64>) {
    let metadata = table.metadata();
    let mut current = metadata.current_snapshot();
    while let Some(snapshot) = current {
        if let Some((position, time)) = read_summary(&snapshot.summary().additional_properties, pipeline) {
            return (Some(position), time);
        }
        current = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    (None, None)
}

/// The position (and commit time) one snapshot summary records for `pipeline`.
fn read_summary(summary: &HashMap<String, String>, pipeline: &str) -> Option<(Position, Option<i64>)> {
    if snapshot_pipeline(summary) != Some(pipeline) {
        return None;
    }
    let position = if let Some(text) = summary.get(SUMMARY_LSN) {
        parsed::<Lsn>(SUMMARY_LSN, text)?.into()
    } else if let Some(text) = summary.get(SUMMARY_RESOLVED) {
        parsed::<Hlc>(SUMMARY_RESOLVED, text)?.into()
    } else {
        parsed::<KafkaOffsets>(SUMMARY_KAFKA_OFFSETS, summary.get(SUMMARY_KAFKA_OFFSETS)?)?.into()
    };
    let time = summary.get(SUMMARY_COMMIT_TIME).and_then(|t| t.parse().ok());
    Some((position, time))
}

/// `text` read as a `T`; a warning naming `key` when it is not one.
fn parsed<T: std::str::FromStr>(key: &str, text: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| tracing::warn!(key, error = %e, "ignoring a tarn position that does not parse"))
        .ok()
}

/// The summary key a position of this kind is recorded under.
fn position_key(position: &Position) -> &'static str {
    match position {
        Position::Lsn(_) => SUMMARY_LSN,
        Position::Hlc(_) => SUMMARY_RESOLVED,
        Position::Kafka(_) => SUMMARY_KAFKA_OFFSETS,
    }
}

/// The summary of a streamed commit of `pipeline` holding everything up to `position` (also
/// what the Kafka archive, `crate::kafka::archive`, commits with).
pub(crate) fn commit_summary(
    pipeline: &str,
    position: &Position,
    commit_time: Option<i64>,
) -> HashMap<String, String> {
    let mut summary = HashMap::from([
        (SUMMARY_PIPELINE.to_string(), pipeline.to_string()),
        (position_key(position).to_string(), position.to_string()),
    ]);
    if let Some(t) = commit_time {
        summary.insert(SUMMARY_COMMIT_TIME.into(), t.to_string());
    }
    summary
}

/// The summary of an initial copy (`kind`: `initial`, `table-added`, `resnapshot`) holding
/// everything up to `position`.
pub(super) fn snapshot_summary(pipeline: &str, position: &Position, kind: &str) -> HashMap<String, String> {
    let mut summary = commit_summary(pipeline, position, None);
    summary.insert(SUMMARY_SNAPSHOT.into(), kind.to_string());
    summary
}

fn idle_key(pipeline: &str) -> String {
    format!("{PROPERTY_IDLE}.{pipeline}")
}

/// The table property recording that the table holds everything up to `position` for
/// `pipeline` without a snapshot saying so.
pub(super) fn idle_property(pipeline: &str, position: &Position) -> HashMap<String, String> {
    HashMap::from([(idle_key(pipeline), position.to_string())])
}

fn idle_position(properties: &HashMap<String, String>, pipeline: &str) -> Option<Position> {
    properties
        .get(&idle_key(pipeline))
        .and_then(|p| parsed(PROPERTY_IDLE, p))
}

/// The table properties a table created for `spec` by `pipeline` starts with.
pub(super) fn creation_properties(spec: &TableSpec, pipeline: &str) -> HashMap<String, String> {
    HashMap::from([
        (PROPERTY_SOURCE_TABLE.to_string(), spec.qualified()),
        (SUMMARY_PIPELINE.to_string(), pipeline.to_string()),
    ])
}

/// The table property that stops CDC writing the table, for `reason`.
pub(super) fn stopped_property(reason: String) -> HashMap<String, String> {
    HashMap::from([(PROPERTY_STOPPED.to_string(), reason)])
}

/// The [`PROPERTY_ATTNUMS`] property of `(field id, source attribute number)` pairs, written
/// `field_id:attnum,...`.
pub(super) fn attnums_property(pairs: impl IntoIterator<Item = (i32, i16)>) -> HashMap<String, String> {
    let text = pairs
        .into_iter()
        .map(|(field, attnum)| format!("{field}:{attnum}"))
        .collect::<Vec<_>>()
        .join(",");
    HashMap::from([(PROPERTY_ATTNUMS.to_string(), text)])
}

/// The [`PROPERTY_ATTNUMS`] pairs of the columns of `spec` that `table`'s current schema has
/// (by name), as written when the sink creates the table.
pub(super) fn attnums_of(table: &Table, spec: &TableSpec) -> HashMap<String, String> {
    let schema = table.metadata().current_schema();
    attnums_property(
        spec.columns
            .iter()
            .filter_map(|c| schema.field_by_name(&c.name).map(|f| (f.id, c.attnum))),
    )
}

/// Source attribute number → Iceberg field id, from a table's [`PROPERTY_ATTNUMS`] (empty when
/// it has none; unreadable pairs and attribute number 0 are left out).
pub(super) fn parse_attnums(metadata: &TableMetadata) -> HashMap<i16, i32> {
    metadata
        .properties()
        .get(PROPERTY_ATTNUMS)
        .map(|s| attnums_from_text(s))
        .unwrap_or_default()
}

fn attnums_from_text(text: &str) -> HashMap<i16, i32> {
    text.split(',')
        .filter_map(|pair| {
            let (id, attnum) = pair.split_once(':')?;
            Some((attnum.parse().ok()?, id.parse().ok()?))
        })
        .filter(|(attnum, _)| *attnum != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::TopicPartition;

    fn lsn(n: u64) -> Position {
        Lsn(n).into()
    }

    fn hlc(wall_nanos: u64, logical: u32) -> Position {
        Hlc::new(wall_nanos, logical).into()
    }

    #[test]
    fn lsn_commit_summary_round_trip() {
        let position: Position = "16/B374D848".parse().unwrap();
        let summary = commit_summary("p1", &position, Some(1_700_000_000_000_000));
        assert_eq!(summary[SUMMARY_PIPELINE], "p1");
        assert_eq!(summary[SUMMARY_LSN], "16/B374D848");
        assert!(!summary.contains_key(SUMMARY_RESOLVED));
        assert_eq!(summary[SUMMARY_COMMIT_TIME], "1700000000000000");
        assert_eq!(
            read_summary(&summary, "p1"),
            Some((position, Some(1_700_000_000_000_000)))
        );
    }

    #[test]
    fn hlc_summary_uses_the_resolved_key() {
        let position = hlc(1_700_000_000_123_456_789, 2);
        let summary = commit_summary("p1", &position, None);
        assert_eq!(summary[SUMMARY_RESOLVED], "1700000000123456789.0000000002");
        assert!(!summary.contains_key(SUMMARY_LSN));
        assert!(!summary.contains_key(SUMMARY_COMMIT_TIME));
        assert_eq!(read_summary(&summary, "p1"), Some((position, None)));
    }

    #[test]
    fn kafka_offsets_have_their_own_key() {
        let position: Position = KafkaOffsets::new()
            .with(TopicPartition::new("shop.public.orders", 0), 42)
            .into();
        let summary = commit_summary("p1", &position, Some(5));
        assert_eq!(summary[SUMMARY_KAFKA_OFFSETS], "shop.public.orders:0=42");
        assert!(!summary.contains_key(SUMMARY_LSN) && !summary.contains_key(SUMMARY_RESOLVED));
        assert_eq!(read_summary(&summary, "p1"), Some((position, Some(5))));
    }

    #[test]
    fn snapshot_summary_names_its_kind() {
        let position = lsn(0x100);
        let summary = snapshot_summary("p1", &position, "table-added");
        assert_eq!(summary[SUMMARY_SNAPSHOT], "table-added");
        assert_eq!(summary[SUMMARY_LSN], "0/100");
        assert_eq!(read_summary(&summary, "p1"), Some((position, None)));
    }

    #[test]
    fn other_pipelines_and_unreadable_positions_are_absent() {
        let summary = commit_summary("p1", &lsn(1), None);
        assert_eq!(read_summary(&summary, "p2"), None);
        assert_eq!(snapshot_pipeline(&summary), Some("p1"));
        let garbled = HashMap::from([
            (SUMMARY_PIPELINE.to_string(), "p1".to_string()),
            (SUMMARY_LSN.to_string(), "not a position".to_string()),
        ]);
        assert_eq!(read_summary(&garbled, "p1"), None);
        // A compaction commit carries no pipeline at all.
        assert_eq!(read_summary(&HashMap::new(), "p1"), None);
    }

    #[test]
    fn idle_property_round_trip_per_pipeline() {
        let offsets = KafkaOffsets::new()
            .with(TopicPartition::new("shop.public.orders", 0), 42)
            .with(TopicPartition::new("shop.public.orders", 1), 7);
        for position in [
            lsn(0x1_0000_0010),
            hlc(1_700_000_000_000_000_000, 7),
            offsets.into(),
        ] {
            let properties = idle_property("p1", &position);
            assert_eq!(
                properties.keys().collect::<Vec<_>>(),
                [&format!("{PROPERTY_IDLE}.p1")]
            );
            assert_eq!(idle_position(&properties, "p1"), Some(position));
            assert_eq!(idle_position(&properties, "p2"), None);
        }
    }

    #[test]
    fn attnums_text_form() {
        let properties = attnums_property([(1, 1), (2, 3), (7, 4)]);
        assert_eq!(properties[PROPERTY_ATTNUMS], "1:1,2:3,7:4");
        assert_eq!(attnums_property([])[PROPERTY_ATTNUMS], "");
        assert_eq!(
            attnums_from_text(&properties[PROPERTY_ATTNUMS]),
            HashMap::from([(1, 1), (3, 2), (4, 7)])
        );
        // Unreadable pairs and attribute number 0 are left out.
        assert_eq!(attnums_from_text("1:0,x:2,3:y,5:6,"), HashMap::from([(6, 5)]));
        assert!(attnums_from_text("").is_empty());
    }
}
