//! Readers of PostgreSQL's binary send format (`COPY ... TO STDOUT (FORMAT binary)`) for the
//! built-in types whose binary form is cheap for PostgreSQL to produce and for tarn to read:
//! integers, floats, `numeric`, `bool`, text types, `bytea`, dates, times and timestamps.
//!
//! Contract: [`BinaryFormat::of`] names the reader of a column from its PostgreSQL type OID
//! and its [`ColumnType`], and returns `None` for every other combination (arrays, `uuid`,
//! `jsonb`, intervals, enums, domains and extension types: their copy stays in text). A value
//! read in binary lands in Arrow exactly as its text output would through
//! [`super::builder::ColumnBuilder::append`], with the same clamps (`infinity`, `-infinity`,
//! `24:00:00`) and the same errors: a `numeric` is turned into the text `numeric_out` prints
//! and read by [`super::text::parse_decimal`], so a value that does not fit its decimal is
//! refused with the text path's message. A value of the wrong size for its type is a
//! [`ParseError`].
//!
//! Why: the initial snapshot copies whole tables; PostgreSQL formats timestamps and numerics
//! as text at a noticeable cost per row, and tarn then parses that text back. The binary
//! form skips both (docs/cdc.md, "Initial snapshot").

use super::ColumnType;
use super::text::{DATE_INFINITY, DATE_NEG_INFINITY};
use super::text::{ParseError, TIME_END_OF_DAY, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY, err};

/// How one column's binary values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryFormat {
    /// `bool`: one byte.
    Bool,
    /// `int2`: 2 bytes big-endian.
    Int2,
    /// `int4`: 4 bytes big-endian.
    Int4,
    /// `int8`: 8 bytes big-endian.
    Int8,
    /// `oid`: 4 bytes big-endian, unsigned.
    Oid,
    /// `float4`: IEEE 754 bits, big-endian.
    Float4,
    /// `float8`: IEEE 754 bits, big-endian.
    Float8,
    /// `numeric`: base-10000 digits, read through its text form.
    Numeric,
    /// Text types (`text`, `varchar`, `bpchar`, `name`, `json`): the bytes of the text.
    Text,
    /// `bytea`: the bytes.
    Bytea,
    /// `date`: days since 2000-01-01 (4 bytes).
    Date,
    /// `time`: µs since midnight (8 bytes).
    Time,
    /// `timestamp` and `timestamptz`: µs since 2000-01-01 00:00:00 (UTC for `timestamptz`).
    Timestamp,
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// µs from 1970-01-01 00:00:00 to 2000-01-01 00:00:00.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * 86_400 * 1_000_000;

impl BinaryFormat {
    /// The reader for a column of PostgreSQL type `type_oid` mapped to `t`, if it has one.
    pub fn of(type_oid: u32, t: &ColumnType) -> Option<BinaryFormat> {
        Some(match (type_oid, t) {
            (16, ColumnType::Bool) => BinaryFormat::Bool,
            (21, ColumnType::Int16) => BinaryFormat::Int2,
            (23, ColumnType::Int32) => BinaryFormat::Int4,
            (20, ColumnType::Int64) => BinaryFormat::Int8,
            (26, ColumnType::Int64) => BinaryFormat::Oid,
            (700, ColumnType::Float32) => BinaryFormat::Float4,
            (701, ColumnType::Float64) => BinaryFormat::Float8,
            (1700, ColumnType::Decimal { .. } | ColumnType::Text) => BinaryFormat::Numeric,
            // text, name, json, bpchar, varchar: the send format is the text itself.
            (25 | 19 | 114 | 1042 | 1043, ColumnType::Text) => BinaryFormat::Text,
            (17, ColumnType::Bytea) => BinaryFormat::Bytea,
            (1082, ColumnType::Date) => BinaryFormat::Date,
            (1083, ColumnType::Time) => BinaryFormat::Time,
            (1114, ColumnType::Timestamp) | (1184, ColumnType::TimestampTz) => BinaryFormat::Timestamp,
            _ => return None,
        })
    }
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], ParseError> {
    v.try_into()
        .map_err(|_| err("binary value of the wrong size for its type"))
}

/// A `bool`.
pub fn read_bool(v: &[u8]) -> Result<bool, ParseError> {
    Ok(fixed::<1>(v)?[0] != 0)
}

/// An `int2`.
pub fn read_i16(v: &[u8]) -> Result<i16, ParseError> {
    Ok(i16::from_be_bytes(fixed(v)?))
}

/// An `int4`.
pub fn read_i32(v: &[u8]) -> Result<i32, ParseError> {
    Ok(i32::from_be_bytes(fixed(v)?))
}

/// An `int8`.
pub fn read_i64(v: &[u8]) -> Result<i64, ParseError> {
    Ok(i64::from_be_bytes(fixed(v)?))
}

/// An `oid`.
pub fn read_oid(v: &[u8]) -> Result<i64, ParseError> {
    Ok(i64::from(u32::from_be_bytes(fixed(v)?)))
}

/// A `float4`; every NaN is read as the one NaN the text path reads.
pub fn read_f32(v: &[u8]) -> Result<f32, ParseError> {
    let f = f32::from_be_bytes(fixed(v)?);
    Ok(if f.is_nan() { f32::NAN } else { f })
}

/// A `float8`; every NaN is read as the one NaN the text path reads.
pub fn read_f64(v: &[u8]) -> Result<f64, ParseError> {
    let f = f64::from_be_bytes(fixed(v)?);
    Ok(if f.is_nan() { f64::NAN } else { f })
}

/// A `date` as days since 1970-01-01, infinities clamped as [`super::text::parse_date`] does.
pub fn read_date(v: &[u8]) -> Result<i32, ParseError> {
    match i32::from_be_bytes(fixed(v)?) {
        i32::MAX => Ok(DATE_INFINITY),
        i32::MIN => Ok(DATE_NEG_INFINITY),
        days => days.checked_add(PG_EPOCH_DAYS).ok_or(err("date out of range")),
    }
}

/// A `time` as µs since midnight, `24:00:00` clamped as [`super::text::parse_time`] does.
pub fn read_time(v: &[u8]) -> Result<i64, ParseError> {
    let micros = i64::from_be_bytes(fixed(v)?);
    if !(0..=TIME_END_OF_DAY + 1).contains(&micros) {
        return Err(err("time out of range"));
    }
    Ok(micros.min(TIME_END_OF_DAY))
}

/// A `timestamp` or `timestamptz` as µs since 1970-01-01 00:00:00 (UTC), infinities clamped
/// as [`super::text::parse_timestamp`] does.
pub fn read_timestamp(v: &[u8]) -> Result<i64, ParseError> {
    match i64::from_be_bytes(fixed(v)?) {
        i64::MAX => Ok(TIMESTAMP_INFINITY),
        i64::MIN => Ok(TIMESTAMP_NEG_INFINITY),
        micros => micros
            .checked_add(PG_EPOCH_MICROS)
            .ok_or(err("timestamp out of the range of Iceberg timestamps")),
    }
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Writes the text `numeric_out` prints for a binary `numeric` into `out` (cleared first).
pub fn numeric_text(v: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    const BAD: ParseError = err("not a binary numeric");
    out.clear();
    if v.len() < 8 {
        return Err(BAD);
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]);
    let weight = i32::from(i16::from_be_bytes([v[2], v[3]]));
    let sign = u16::from_be_bytes([v[4], v[5]]);
    let dscale = i32::from(u16::from_be_bytes([v[6], v[7]]));
    match sign {
        NUMERIC_NAN => {
            out.extend_from_slice(b"NaN");
            return Ok(());
        }
        NUMERIC_PINF => {
            out.extend_from_slice(b"Infinity");
            return Ok(());
        }
        NUMERIC_NINF => {
            out.extend_from_slice(b"-Infinity");
            return Ok(());
        }
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return Err(BAD),
    }
    let Ok(ndigits) = usize::try_from(ndigits) else {
        return Err(BAD);
    };
    if v.len() != 8 + 2 * ndigits || dscale > 0x3FFF {
        return Err(BAD);
    }
    let digit = |d: i32| -> Result<u16, ParseError> {
        if d < 0 || d as usize >= ndigits {
            return Ok(0);
        }
        let i = 8 + 2 * d as usize;
        let n = u16::from_be_bytes([v[i], v[i + 1]]);
        if n >= 10_000 { Err(BAD) } else { Ok(n) }
    };
    // As get_str_from_var (PostgreSQL's numeric.c) prints it.
    if sign == NUMERIC_NEG {
        out.push(b'-');
    }
    let mut d;
    if weight < 0 {
        d = weight + 1;
        out.push(b'0');
    } else {
        d = 0;
        while d <= weight {
            let mut dig = digit(d)?;
            let mut putit = d > 0;
            for div in [1000u16, 100, 10] {
                let d1 = dig / div;
                dig -= d1 * div;
                putit |= d1 > 0;
                if putit {
                    out.push(b'0' + d1 as u8);
                }
            }
            out.push(b'0' + dig as u8);
            d += 1;
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let end = out.len() + dscale as usize;
        let mut i = 0;
        while i < dscale {
            let mut dig = digit(d)?;
            for div in [1000u16, 100, 10] {
                let d1 = dig / div;
                dig -= d1 * div;
                out.push(b'0' + d1 as u8);
            }
            out.push(b'0' + dig as u8);
            d += 1;
            i += 4;
        }
        out.truncate(end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary numeric of `digits` (base 10000).
    fn numeric(sign: u16, weight: i16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    fn text(v: &[u8]) -> String {
        let mut out = Vec::new();
        numeric_text(v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numerics_print_as_numeric_out() {
        assert_eq!(
            text(&numeric(NUMERIC_POS, 1, 2, &[1234, 5678, 9000])),
            "12345678.90"
        );
        assert_eq!(
            text(&numeric(NUMERIC_NEG, 1, 2, &[9999, 9999, 9900])),
            "-99999999.99"
        );
        assert_eq!(text(&numeric(NUMERIC_POS, 0, 1, &[1, 5000])), "1.5");
        assert_eq!(
            text(&numeric(NUMERIC_POS, -5, 18, &[100])),
            "0.000000000000000001"
        );
        assert_eq!(text(&numeric(NUMERIC_POS, 0, 0, &[])), "0");
        assert_eq!(text(&numeric(NUMERIC_POS, 0, 3, &[])), "0.000");
        assert_eq!(text(&numeric(NUMERIC_POS, 2, 0, &[7])), "700000000");
        assert_eq!(text(&numeric(NUMERIC_POS, 0, 0, &[42])), "42");
        assert_eq!(text(&numeric(NUMERIC_NEG, -1, 4, &[5])), "-0.0005");
        assert_eq!(text(&numeric(NUMERIC_NAN, 0, 0, &[])), "NaN");
        assert_eq!(text(&numeric(NUMERIC_PINF, 0, 0, &[])), "Infinity");
        assert_eq!(text(&numeric(NUMERIC_NINF, 0, 0, &[])), "-Infinity");
        let mut out = Vec::new();
        assert!(numeric_text(&numeric(0x1234, 0, 0, &[]), &mut out).is_err());
        assert!(numeric_text(&numeric(NUMERIC_POS, 0, 0, &[10_000]), &mut out).is_err());
        assert!(numeric_text(&[0, 1, 0, 0, 0, 0, 0, 0], &mut out).is_err());
    }

    #[test]
    fn dates_times_and_timestamps() {
        assert_eq!(read_date(&0i32.to_be_bytes()), Ok(10_957));
        assert_eq!(read_date(&i32::MAX.to_be_bytes()), Ok(DATE_INFINITY));
        assert_eq!(read_date(&i32::MIN.to_be_bytes()), Ok(DATE_NEG_INFINITY));
        assert_eq!(read_time(&86_400_000_000i64.to_be_bytes()), Ok(TIME_END_OF_DAY));
        assert_eq!(read_time(&1i64.to_be_bytes()), Ok(1));
        assert!(read_time(&(-1i64).to_be_bytes()).is_err());
        assert_eq!(read_timestamp(&0i64.to_be_bytes()), Ok(946_684_800_000_000));
        assert_eq!(read_timestamp(&i64::MAX.to_be_bytes()), Ok(TIMESTAMP_INFINITY));
        assert_eq!(
            read_timestamp(&i64::MIN.to_be_bytes()),
            Ok(TIMESTAMP_NEG_INFINITY)
        );
        assert!(read_timestamp(&[0, 1]).is_err());
    }

    #[test]
    fn scalars_and_sizes() {
        assert_eq!(read_bool(&[1]), Ok(true));
        assert_eq!(read_bool(&[0]), Ok(false));
        assert_eq!(read_i16(&(-2i16).to_be_bytes()), Ok(-2));
        assert_eq!(read_i32(&i32::MIN.to_be_bytes()), Ok(i32::MIN));
        assert_eq!(read_i64(&i64::MAX.to_be_bytes()), Ok(i64::MAX));
        assert_eq!(read_oid(&u32::MAX.to_be_bytes()), Ok(4_294_967_295));
        assert!(
            read_f64(&f64::from_bits(0x7ff8_0000_0000_0001).to_be_bytes())
                .unwrap()
                .is_nan()
        );
        assert_eq!(
            read_f32(&(-0.0f32).to_be_bytes()).unwrap().to_bits(),
            (-0.0f32).to_bits()
        );
        assert!(read_i32(&[0, 0, 1]).is_err());
        assert!(read_bool(&[]).is_err());
    }

    #[test]
    fn formats_of_types() {
        assert_eq!(BinaryFormat::of(20, &ColumnType::Int64), Some(BinaryFormat::Int8));
        assert_eq!(BinaryFormat::of(26, &ColumnType::Int64), Some(BinaryFormat::Oid));
        assert_eq!(
            BinaryFormat::of(1184, &ColumnType::TimestampTz),
            Some(BinaryFormat::Timestamp)
        );
        assert_eq!(
            BinaryFormat::of(1700, &ColumnType::Text),
            Some(BinaryFormat::Numeric)
        );
        // uuid, jsonb, interval, arrays and user types stay in text.
        assert_eq!(BinaryFormat::of(2950, &ColumnType::Text), None);
        assert_eq!(BinaryFormat::of(3802, &ColumnType::Text), None);
        assert_eq!(BinaryFormat::of(1186, &ColumnType::Text), None);
        assert_eq!(
            BinaryFormat::of(1007, &ColumnType::List(Box::new(ColumnType::Int32))),
            None
        );
        assert_eq!(BinaryFormat::of(16_385, &ColumnType::Int64), None);
    }
}
