//! The changes between two resolved timestamps, deduplicated and put in order.
//!
//! Changefeeds deliver at least once and order messages only per key. Each row message is
//! kept per `(table, key)` by its `updated` timestamp, so a duplicate replaces itself and a
//! late older version sorts before the newer one. When a resolved timestamp `T` arrives,
//! [`Window::take`] hands out, per key, the newest version at or before `T` (the key's state
//! at `T`) and keeps the versions after `T` for the next window. A message at or before the
//! last resolved timestamp taken is stale (its version, or a newer one, was taken already)
//! and is dropped. So is a version older than one handed out early by [`Window::take_all`]
//! (the key's *floor*, kept as a hash and a wall time until the next resolved timestamp).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use super::message::RowMessage;
use crate::position::Hlc;

/// See the module doc.
#[derive(Debug, Default)]
pub struct Window {
    rows: HashMap<(String, String), BTreeMap<Hlc, RowMessage>>,
    bytes: usize,
    versions: usize,
    resolved: Option<Hlc>,
    floors: HashMap<u64, u64>,
    hasher: RandomState,
    duplicates: u64,
    stale: u64,
}

impl Window {
    /// An empty window after resolved timestamp `resolved` (the cursor the feed started at).
    pub fn new(resolved: Option<Hlc>) -> Self {
        Self {
            resolved,
            ..Self::default()
        }
    }

    /// Adds a row message; returns `false` when it was a duplicate or stale.
    pub fn push(&mut self, message: RowMessage) -> bool {
        if self.resolved.is_some_and(|r| message.updated <= r) {
            self.stale += 1;
            return false;
        }
        let key = (message.topic.clone(), message.key_text());
        if !self.floors.is_empty()
            && self
                .floors
                .get(&self.hasher.hash_one(&key))
                .is_some_and(|&floor| message.updated.wall_nanos < floor)
        {
            self.stale += 1;
            return false;
        }
        let bytes = message.bytes();
        let versions = self.rows.entry(key).or_default();
        match versions.insert(message.updated, message) {
            Some(old) => {
                self.bytes = self.bytes - old.bytes() + bytes;
                self.duplicates += 1;
                false
            }
            None => {
                self.bytes += bytes;
                self.versions += 1;
                true
            }
        }
    }

    /// The state at `resolved` of every key changed since the last take, in `updated`
    /// order; later versions stay.
    pub fn take(&mut self, resolved: Hlc) -> Vec<RowMessage> {
        if self.resolved.is_some_and(|r| resolved <= r) {
            return Vec::new();
        }
        self.resolved = Some(resolved);
        self.floors.retain(|_, &mut floor| floor > resolved.wall_nanos);
        self.drain(|versions| {
            let later = versions.split_off(&resolved.next());
            let due = std::mem::replace(versions, later);
            due.into_values().collect()
        })
    }

    /// Every key's newest version, whatever its timestamp: used to bound memory when a
    /// window outgrows its budget. See `super::pipeline` for why committing them early is
    /// safe.
    pub fn take_all(&mut self) -> Vec<RowMessage> {
        let out = self.drain(|versions| std::mem::take(versions).into_values().collect());
        for m in &out {
            let key = (m.topic.clone(), m.key_text());
            let floor = self.floors.entry(self.hasher.hash_one(&key)).or_default();
            *floor = (*floor).max(m.updated.wall_nanos);
        }
        out
    }

    fn drain(
        &mut self,
        mut due: impl FnMut(&mut BTreeMap<Hlc, RowMessage>) -> Vec<RowMessage>,
    ) -> Vec<RowMessage> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut versions = 0;
        self.rows.retain(|_, v| {
            let taken = due(v);
            versions += taken.len();
            bytes += taken.iter().map(RowMessage::bytes).sum::<usize>();
            if let Some(last) = taken.into_iter().last() {
                out.push(last);
            }
            !v.is_empty()
        });
        self.bytes -= bytes;
        self.versions -= versions;
        out.sort_by_key(|m| m.updated);
        out
    }

    /// The oldest buffered timestamp.
    pub fn oldest(&self) -> Option<Hlc> {
        self.rows.values().filter_map(|v| v.keys().next().copied()).min()
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Versions held.
    pub fn len(&self) -> usize {
        self.versions
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.versions == 0
    }

    /// The last resolved timestamp taken.
    pub fn resolved(&self) -> Option<Hlc> {
        self.resolved
    }

    /// Duplicates and stale messages dropped so far.
    pub fn dropped(&self) -> (u64, u64) {
        (self.duplicates, self.stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn row(key: i64, at: u64, value: Option<i64>) -> RowMessage {
        RowMessage {
            topic: "db.public.t".into(),
            key: vec![RawValue::from_string(key.to_string()).unwrap()],
            after: value.map(|v| vec![("v".to_string(), RawValue::from_string(v.to_string()).unwrap())]),
            updated: Hlc::new(1_700_000_000_000_000_000 + at, 0),
        }
    }

    fn ts(at: u64) -> Hlc {
        Hlc::new(1_700_000_000_000_000_000 + at, 0)
    }

    fn value(m: &RowMessage) -> Option<String> {
        m.after.as_ref().map(|a| a[0].1.get().to_string())
    }

    #[test]
    fn duplicates_out_of_order_and_resolved() {
        let mut w = Window::new(None);
        assert!(w.push(row(1, 20, Some(2))));
        assert!(w.push(row(1, 10, Some(1)))); // older version delivered late
        assert!(!w.push(row(1, 20, Some(2)))); // duplicate
        assert!(w.push(row(2, 15, None)));
        assert!(w.push(row(3, 30, Some(3))));
        assert_eq!(w.len(), 4);
        let due = w.take(ts(20));
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].key_text(), "2"); // in updated order
        assert_eq!(value(&due[1]), Some("2".into())); // key 1's state at 20
        assert_eq!(w.len(), 1);
        assert!(!w.push(row(1, 10, Some(1)))); // stale after the resolved timestamp
        assert_eq!(w.dropped(), (1, 1));
        assert!(w.take(ts(20)).is_empty());
        let due = w.take(ts(40));
        assert_eq!(due.len(), 1);
        assert!(w.is_empty());
        assert_eq!(w.bytes(), 0);
    }

    #[test]
    fn take_all_keeps_the_newest() {
        let mut w = Window::new(Some(ts(0)));
        w.push(row(1, 5, Some(1)));
        w.push(row(1, 9, Some(9)));
        assert_eq!(w.oldest(), Some(ts(5)));
        let all = w.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(value(&all[0]), Some("9".into()));
        assert!(w.is_empty());
        assert!(!w.push(row(1, 5, Some(1)))); // a late duplicate of a version older than the one handed out
        assert!(w.push(row(1, 12, Some(12))));
        assert!(w.push(row(2, 6, Some(6))));
        assert_eq!(w.take(ts(20)).len(), 2);
        assert!(w.floors.is_empty());
    }
}
