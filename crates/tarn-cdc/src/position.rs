//! Positions in a source's change stream: one type per kind of source, and their text codec.
//!
//! - [`Lsn`]: a PostgreSQL log sequence number (`16/B374D848`).
//! - [`Hlc`]: a CockroachDB hybrid-logical-clock timestamp (`1700000000123456789.0000000002`,
//!   wall nanoseconds and a logical counter).
//! - [`KafkaOffsets`]: Kafka consumer offsets per topic-partition, each the next offset to read
//!   (Kafka's own convention for committed offsets): `orders:0=42,orders:1=17`.
//!
//! [`Position`] is one of them, tagged by kind. Positions of one kind are ordered: [`Lsn`] and
//! [`Hlc`] totally, [`KafkaOffsets`] per partition (one set of offsets is at or past another
//! when it is at or past it on every partition the other names), so [`Position`] is only
//! [`PartialOrd`]: positions of different kinds, or offsets ahead on one partition and behind
//! on another, are not comparable, and every comparison between them is `false`.
//!
//! **Exactly once per position.** The lake sink skips a transaction for a table that already
//! holds it, asked through [`Position::holds`]: a table at `held` holds the transaction that
//! commits at `txn` when
//!
//! - LSN and HLC: `txn < held` (a table records the end of the last transaction it holds, and a
//!   transaction's commit position is before its end; a CockroachDB window re-applied at the
//!   same timestamp only replaces key states with the same states);
//! - Kafka: for every partition the transaction names, its offset (the next offset after the
//!   transaction's messages) is at or before the table's offset for that partition. A table
//!   holds offsets of every partition it took messages from, merged commit by commit
//!   ([`Position::merged`]: per-partition maximum, partitions of other consumers kept), so
//!   several consumers of one group can write the same table. A Kafka source therefore emits
//!   transactions of one partition each and cuts them at every offset a table holds, so that no
//!   transaction straddles a table's position; a replay after a crash or a rebalance then skips
//!   exactly the messages each table holds.
//!
//! **Text.** Each type's [`std::fmt::Display`] and [`std::str::FromStr`] are the only text form
//! of positions: the lake's snapshot summaries and table properties (`crate::sink`'s summary
//! codec), `tarn cdc status` and logs use them. In JSON (the status report) a [`Position`] is
//! tagged by kind: `{"lsn": "16/B374D848"}`, `{"hlc": "1700000000123456789.0000000002"}`,
//! `{"kafka": [{"topic": "orders", "partition": 0, "offset": 42}]}`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a position's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionParseError {
    /// The text.
    pub text: String,
    /// What was expected.
    pub expected: &'static str,
}

impl fmt::Display for PositionParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not {}", self.text, self.expected)
    }
}

impl std::error::Error for PositionParseError {}

fn bad(text: &str, expected: &'static str) -> PositionParseError {
    PositionParseError {
        text: text.to_string(),
        expected,
    }
}

/// A PostgreSQL log sequence number: a byte position in the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// PostgreSQL's notation, `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = PositionParseError;

    /// Reads PostgreSQL's `X/Y` notation (what `pg_lsn` prints).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "an LSN (X/Y in hexadecimal)";
        let (hi, lo) = text.trim().split_once('/').ok_or_else(|| bad(text, EXPECTED))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad(text, EXPECTED))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad(text, EXPECTED))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(bad(text, EXPECTED));
        }
        Ok(Self((hi << 32) | lo))
    }
}

/// A CockroachDB hybrid-logical-clock timestamp: nanoseconds since the Unix epoch, then a
/// logical counter for events within one nanosecond. Ordered by wall time, then counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Wall time, nanoseconds since the Unix epoch.
    pub wall_nanos: u64,
    /// The logical counter.
    pub logical: u32,
}

impl Hlc {
    /// The timestamp `wall_nanos.logical`.
    pub fn new(wall_nanos: u64, logical: u32) -> Self {
        Self { wall_nanos, logical }
    }

    /// The smallest timestamp after this one.
    pub fn next(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self::new(self.wall_nanos, logical),
            None => Self::new(self.wall_nanos + 1, 0),
        }
    }

    /// The largest timestamp before this one (the zero timestamp stays itself).
    pub fn prev(self) -> Self {
        match (self.logical.checked_sub(1), self.wall_nanos.checked_sub(1)) {
            (Some(logical), _) => Self::new(self.wall_nanos, logical),
            (None, Some(wall)) => Self::new(wall, u32::MAX),
            (None, None) => self,
        }
    }

    /// The wall time in microseconds since the Unix epoch (the commit time of changes at it).
    pub fn unix_micros(self) -> i64 {
        (self.wall_nanos / 1000) as i64
    }
}

impl fmt::Display for Hlc {
    /// CockroachDB's decimal notation (`updated`, `resolved`, `cursor`):
    /// `1700000000123456789.0000000002`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:010}", self.wall_nanos, self.logical)
    }
}

impl FromStr for Hlc {
    type Err = PositionParseError;

    /// Reads CockroachDB's decimal notation: decimal nanoseconds, then optionally `.` and up to
    /// ten digits of logical counter.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "a CockroachDB timestamp (WALL.LOGICAL in decimal)";
        let trimmed = text.trim();
        let (wall, logical) = trimmed.split_once('.').unwrap_or((trimmed, "0"));
        if wall.is_empty()
            || logical.is_empty()
            || logical.len() > 10
            || !wall.bytes().all(|b| b.is_ascii_digit())
            || !logical.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad(text, EXPECTED));
        }
        Ok(Self::new(
            wall.parse().map_err(|_| bad(text, EXPECTED))?,
            logical.parse().map_err(|_| bad(text, EXPECTED))?,
        ))
    }
}

/// A Kafka topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// The topic (Kafka allows `[a-zA-Z0-9._-]`).
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// Kafka consumer offsets per topic-partition: for each, the next offset to read. Ordered per
/// partition only; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KafkaOffsets(BTreeMap<TopicPartition, i64>);

impl KafkaOffsets {
    /// No offsets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the next offset to read of `partition`.
    pub fn insert(&mut self, partition: TopicPartition, next_offset: i64) {
        self.0.insert(partition, next_offset);
    }

    /// With `partition` at `next_offset`.
    pub fn with(mut self, partition: TopicPartition, next_offset: i64) -> Self {
        self.insert(partition, next_offset);
        self
    }

    /// The next offset to read of `partition`.
    pub fn get(&self, partition: &TopicPartition) -> Option<i64> {
        self.0.get(partition).copied()
    }

    /// Every partition and its next offset, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&TopicPartition, i64)> {
        self.0.iter().map(|(p, o)| (p, *o))
    }

    /// Whether no partition is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether these offsets are at or past `other` on every partition `other` names.
    pub fn covers(&self, other: &KafkaOffsets) -> bool {
        other
            .0
            .iter()
            .all(|(p, o)| self.0.get(p).is_some_and(|mine| mine >= o))
    }

    /// The per-partition maximum of both; partitions named by one only are kept.
    pub fn merged(&self, other: &KafkaOffsets) -> KafkaOffsets {
        let mut out = self.clone();
        for (p, o) in &other.0 {
            let mine = out.0.entry(p.clone()).or_insert(*o);
            *mine = (*mine).max(*o);
        }
        out
    }
}

impl PartialOrd for KafkaOffsets {
    /// Equal when equal; less when `other` covers these on every partition and differs;
    /// greater the other way round; otherwise not comparable.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if self == other {
            return Some(Ordering::Equal);
        }
        let same_partitions = self.0.len() == other.0.len() && self.0.keys().all(|p| other.0.contains_key(p));
        if !same_partitions {
            return None;
        }
        match (other.covers(self), self.covers(other)) {
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            _ => None,
        }
    }
}

impl fmt::Display for KafkaOffsets {
    /// `topic:partition=offset` pairs separated by commas, in partition order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, o)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}={o}", p.topic, p.partition)?;
        }
        Ok(())
    }
}

impl FromStr for KafkaOffsets {
    type Err = PositionParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "Kafka offsets (topic:partition=offset,...)";
        let mut out = KafkaOffsets::new();
        for item in text.trim().split(',').filter(|s| !s.is_empty()) {
            let (tp, offset) = item.rsplit_once('=').ok_or_else(|| bad(text, EXPECTED))?;
            let (topic, partition) = tp.rsplit_once(':').ok_or_else(|| bad(text, EXPECTED))?;
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if topic.is_empty() || !topic.chars().all(legal) {
                return Err(bad(text, EXPECTED));
            }
            out.insert(
                TopicPartition::new(topic, partition.parse().map_err(|_| bad(text, EXPECTED))?),
                offset.parse().map_err(|_| bad(text, EXPECTED))?,
            );
        }
        if out.is_empty() {
            return Err(bad(text, EXPECTED));
        }
        Ok(out)
    }
}

/// One partition's offset in JSON.
#[derive(Serialize, Deserialize)]
struct PartitionOffset {
    topic: String,
    partition: i32,
    offset: i64,
}

impl Serialize for KafkaOffsets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<PartitionOffset> = self
            .iter()
            .map(|(p, offset)| PartitionOffset {
                topic: p.topic.clone(),
                partition: p.partition,
                offset,
            })
            .collect();
        list.serialize(s)
    }
}

impl<'de> Deserialize<'de> for KafkaOffsets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<PartitionOffset>::deserialize(d)?;
        Ok(KafkaOffsets(
            list.into_iter()
                .map(|p| (TopicPartition::new(p.topic, p.partition), p.offset))
                .collect(),
        ))
    }
}

/// The text of `position`, `-` when there is none (for status lines).
pub fn text_or_dash(position: Option<&Position>) -> String {
    position.map_or_else(|| "-".to_string(), ToString::to_string)
}

/// Serializes a position type as its text.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Lsn);
serde_as_text!(Hlc);

/// Where a source's change stream stands; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// A PostgreSQL source.
    Lsn(Lsn),
    /// A CockroachDB source.
    Hlc(Hlc),
    /// A Kafka consumer source.
    Kafka(KafkaOffsets),
}

impl Position {
    /// Whether a table at this position already holds the transaction that commits at `txn`
    /// (so the sink skips it for the table); see the module doc. Positions of different kinds
    /// hold nothing of each other.
    pub fn holds(&self, txn: &Position) -> bool {
        match (self, txn) {
            (Position::Lsn(held), Position::Lsn(txn)) => txn < held,
            (Position::Hlc(held), Position::Hlc(txn)) => txn < held,
            (Position::Kafka(held), Position::Kafka(txn)) => held.covers(txn),
            _ => false,
        }
    }

    /// The position a table holds after it held this one and committed everything up to
    /// `newer`: `newer` for LSN and HLC (or this one, if it is later), the per-partition
    /// maximum for Kafka offsets; `newer` when the kinds differ.
    pub fn merged(&self, newer: &Position) -> Position {
        match (self, newer) {
            (Position::Lsn(a), Position::Lsn(b)) => Position::Lsn(*a.max(b)),
            (Position::Hlc(a), Position::Hlc(b)) => Position::Hlc(*a.max(b)),
            (Position::Kafka(a), Position::Kafka(b)) => Position::Kafka(a.merged(b)),
            _ => newer.clone(),
        }
    }

    /// The LSN of a PostgreSQL position.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            Position::Lsn(l) => Some(*l),
            _ => None,
        }
    }

    /// The timestamp of a CockroachDB position.
    pub fn hlc(&self) -> Option<Hlc> {
        match self {
            Position::Hlc(h) => Some(*h),
            _ => None,
        }
    }

    /// The offsets of a Kafka position.
    pub fn kafka(&self) -> Option<&KafkaOffsets> {
        match self {
            Position::Kafka(k) => Some(k),
            _ => None,
        }
    }

    /// The kind's name: `lsn`, `hlc` or `kafka`.
    pub fn kind(&self) -> &'static str {
        match self {
            Position::Lsn(_) => "lsn",
            Position::Hlc(_) => "hlc",
            Position::Kafka(_) => "kafka",
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Position::Lsn(a), Position::Lsn(b)) => a.partial_cmp(b),
            (Position::Hlc(a), Position::Hlc(b)) => a.partial_cmp(b),
            (Position::Kafka(a), Position::Kafka(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

impl From<Lsn> for Position {
    fn from(l: Lsn) -> Self {
        Position::Lsn(l)
    }
}

impl From<Hlc> for Position {
    fn from(h: Hlc) -> Self {
        Position::Hlc(h)
    }
}

impl From<KafkaOffsets> for Position {
    fn from(k: KafkaOffsets) -> Self {
        Position::Kafka(k)
    }
}

impl fmt::Display for Position {
    /// The kind's own text form: `16/B374D848`, `1700000000123456789.0000000002`,
    /// `orders:0=42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Lsn(l) => l.fmt(f),
            Position::Hlc(h) => h.fmt(f),
            Position::Kafka(k) => k.fmt(f),
        }
    }
}

impl FromStr for Position {
    type Err = PositionParseError;

    /// Reads any kind's text form; the three never look alike (an LSN has a `/`, a timestamp
    /// only digits and one `.`, offsets a `:` and an `=`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(l) = text.parse() {
            return Ok(Position::Lsn(l));
        }
        if let Ok(h) = text.parse() {
            return Ok(Position::Hlc(h));
        }
        text.parse().map(Position::Kafka).map_err(|_| {
            bad(
                text,
                "a position (an LSN, a CockroachDB timestamp or Kafka offsets)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Position {
        Position::Lsn(text.parse().unwrap())
    }

    fn hlc(wall: u64, logical: u32) -> Position {
        Position::Hlc(Hlc::new(wall, logical))
    }

    fn kafka(offsets: &[(&str, i32, i64)]) -> Position {
        Position::Kafka(offsets.iter().fold(KafkaOffsets::new(), |k, (t, p, o)| {
            k.with(TopicPartition::new(*t, *p), *o)
        }))
    }

    #[test]
    fn lsn_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn(0)));
        for bad in ["nope", "1/", "/1", "100000000/0", "G/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert!(Lsn(1) < Lsn(2));
    }

    #[test]
    fn hlc_round_trip() {
        let h: Hlc = "1700000000123456789.0000000002".parse().unwrap();
        assert_eq!(h, Hlc::new(1_700_000_000_123_456_789, 2));
        assert_eq!(h.to_string(), "1700000000123456789.0000000002");
        assert!("1700000000123456789.0000000003".parse::<Hlc>().unwrap() > h);
        assert!("1700000000123456790".parse::<Hlc>().unwrap() > h);
        assert!("1.1".parse::<Hlc>().unwrap() < "1.2".parse::<Hlc>().unwrap());
        for bad in ["", "12a.1", "1.", ".1", "1700000000123456789.12345678901", "1/2"] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad}");
        }
        assert_eq!(h.next(), Hlc::new(h.wall_nanos, 3));
        assert_eq!(h.prev(), Hlc::new(h.wall_nanos, 1));
        assert_eq!(Hlc::new(5, u32::MAX).next(), Hlc::new(6, 0));
        assert_eq!(Hlc::new(6, 0).prev(), Hlc::new(5, u32::MAX));
        assert_eq!(Hlc::default().prev(), Hlc::default());
        assert!(h.prev() < h && h < h.next());
    }

    #[test]
    fn kafka_offsets_round_trip() {
        let k: KafkaOffsets = "shop.public.orders:0=42,shop.public.orders:1=17".parse().unwrap();
        assert_eq!(k.get(&TopicPartition::new("shop.public.orders", 1)), Some(17));
        assert_eq!(k.to_string(), "shop.public.orders:0=42,shop.public.orders:1=17");
        for bad in ["", "t:0", "t=1", "t:x=1", "a/b:0=1", ":0=1"] {
            assert!(bad.parse::<KafkaOffsets>().is_err(), "{bad}");
        }
    }

    #[test]
    fn any_kind_reads_back_as_itself() {
        for p in [
            lsn("16/B374D848"),
            hlc(1_700_000_000_123_456_789, 2),
            hlc(3, 0),
            kafka(&[("orders", 0, 42), ("orders-2", 3, 7)]),
        ] {
            assert_eq!(p.to_string().parse::<Position>(), Ok(p.clone()), "{p}");
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p, "{json}");
        }
        assert_eq!(
            serde_json::to_value(lsn("16/B374D848")).unwrap(),
            serde_json::json!({"lsn": "16/B374D848"})
        );
        assert_eq!(
            serde_json::to_value(kafka(&[("t", 0, 5)])).unwrap(),
            serde_json::json!({"kafka": [{"topic": "t", "partition": 0, "offset": 5}]})
        );
        assert!("what".parse::<Position>().is_err());
    }

    #[test]
    fn orders_within_a_kind_only() {
        assert!(lsn("0/10") < lsn("0/20"));
        assert!(hlc(1, 0) < hlc(1, 1));
        assert_eq!(lsn("0/10").partial_cmp(&hlc(1, 0)), None);
        assert!(!lsn("0/10").lt(&hlc(1, 0)) && !lsn("0/10").ge(&hlc(1, 0)));
        let a = kafka(&[("t", 0, 5), ("t", 1, 5)]);
        let b = kafka(&[("t", 0, 6), ("t", 1, 5)]);
        let c = kafka(&[("t", 0, 4), ("t", 1, 9)]);
        assert!(a < b);
        assert!(b > a);
        assert_eq!(a.partial_cmp(&c), None);
        assert_eq!(a.partial_cmp(&kafka(&[("t", 0, 5)])), None);
    }

    #[test]
    fn what_a_table_holds() {
        // LSN/HLC: a transaction committing before the table's position is held.
        assert!(lsn("0/20").holds(&lsn("0/10")));
        assert!(!lsn("0/20").holds(&lsn("0/20")));
        assert!(!lsn("0/20").holds(&lsn("0/30")));
        assert!(hlc(20, 0).holds(&hlc(19, 5)));
        assert!(!hlc(20, 0).holds(&hlc(20, 0)));
        assert!(!lsn("0/20").holds(&hlc(1, 0)));
        // Kafka: per partition, a transaction ending at or before the table's offset is held.
        let held = kafka(&[("t", 0, 100), ("t", 1, 50)]);
        assert!(held.holds(&kafka(&[("t", 0, 100)])));
        assert!(held.holds(&kafka(&[("t", 1, 3)])));
        assert!(!held.holds(&kafka(&[("t", 0, 101)])));
        assert!(!held.holds(&kafka(&[("t", 2, 1)])));
        // Merging keeps every partition at its furthest.
        let merged = held.merged(&kafka(&[("t", 0, 120), ("t", 2, 7)]));
        assert_eq!(merged, kafka(&[("t", 0, 120), ("t", 1, 50), ("t", 2, 7)]));
        assert_eq!(lsn("0/20").merged(&lsn("0/30")), lsn("0/30"));
        assert_eq!(lsn("0/30").merged(&lsn("0/20")), lsn("0/30"));
    }
}
