//! The stand-in's hybrid logical clock and CockroachDB's ways of writing its timestamps.
//!
//! CockroachDB stamps every committed transaction with an HLC timestamp: wall-clock
//! nanoseconds plus a logical counter that orders events within one wall reading
//! (`pkg/util/hlc`). Changefeeds print it as a decimal `wall.logical` with ten fractional
//! digits (`updated`, `resolved`: `"1700000000123456789.0000000000"`, research §7,
//! `eval.TimestampToDecimalDatum`), and errors print it as `secs.nanos9,logical`
//! (research follow-up D, row 1).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An HLC timestamp: wall-clock nanoseconds since the Unix epoch and a logical counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    /// Wall time, nanoseconds since the Unix epoch.
    pub wall: u64,
    /// Logical counter within one wall time.
    pub logical: u32,
}

impl Hlc {
    /// A timestamp at `wall` nanoseconds with logical 0.
    pub fn from_wall(wall: u64) -> Self {
        Self { wall, logical: 0 }
    }

    /// The decimal form changefeeds use in `updated` and `resolved`:
    /// `1700000000123456789.0000000000`.
    pub fn decimal(&self) -> String {
        format!("{}.{:010}", self.wall, self.logical)
    }

    /// The form CockroachDB's errors print (`hlc.Timestamp.String()`): `1700000000.123456789,0`.
    pub fn crdb_display(&self) -> String {
        format!(
            "{}.{:09},{}",
            self.wall / 1_000_000_000,
            self.wall % 1_000_000_000,
            self.logical
        )
    }

    /// Parses the decimal form (`wall[.logical]`, the fraction read as ten digits, as
    /// CockroachDB's `DecimalToHLC` does).
    pub fn parse_decimal(s: &str) -> Option<Self> {
        let s = s.trim();
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if frac.len() > 10 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let wall: u64 = whole.parse().ok()?;
        let logical = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<10}").parse().ok()?
        };
        Some(Self { wall, logical })
    }

    /// `self` moved back by `d` of wall time (logical 0), saturating at zero.
    pub fn minus(&self, d: Duration) -> Self {
        Self::from_wall(self.wall.saturating_sub(d.as_nanos() as u64))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decimal())
    }
}

/// Nanoseconds since the Unix epoch by the system clock.
pub fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A monotonic HLC: every reading is later than every earlier one; the logical counter
/// moves when the wall clock has not.
#[derive(Debug, Default)]
pub struct Clock {
    last: Mutex<Hlc>,
}

impl Clock {
    /// A new clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next timestamp: later than any returned before.
    pub fn now(&self) -> Hlc {
        let wall = wall_now();
        let mut last = self.last.lock().unwrap();
        *last = if wall > last.wall {
            Hlc::from_wall(wall)
        } else {
            Hlc {
                wall: last.wall,
                logical: last.logical + 1,
            }
        };
        *last
    }

    /// The last timestamp handed out (no new reading).
    pub fn last(&self) -> Hlc {
        *self.last.lock().unwrap()
    }
}

/// A job id shaped like CockroachDB's (`unique_rowid()`: 10 µs units of wall time shifted
/// left 15 bits, a node-specific low part).
pub fn unique_id(counter: u64) -> i64 {
    let units = wall_now() / 10_000;
    ((units << 15) | (counter & 0x7fff)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let t = Hlc {
            wall: 1_700_000_000_123_456_789,
            logical: 3,
        };
        assert_eq!(t.decimal(), "1700000000123456789.0000000003");
        assert_eq!(t.crdb_display(), "1700000000.123456789,3");
        assert_eq!(Hlc::parse_decimal("1700000000123456789.0000000003"), Some(t));
        assert_eq!(
            Hlc::parse_decimal("1700000000123456789"),
            Some(Hlc::from_wall(1_700_000_000_123_456_789))
        );
        assert_eq!(Hlc::parse_decimal("12.0000000005").unwrap().logical, 5);
        assert_eq!(Hlc::parse_decimal("12.5"), None);
        assert_eq!(Hlc::parse_decimal("x"), None);
        assert_eq!(Hlc::parse_decimal("-1"), None);
    }

    #[test]
    fn monotonic() {
        let c = Clock::new();
        let mut prev = c.now();
        for _ in 0..10_000 {
            let t = c.now();
            assert!(t > prev);
            prev = t;
        }
    }
}
