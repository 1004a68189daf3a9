//! One cell between PostgreSQL's text output format (tarn's [`Value`]) and its JSON form under
//! a Kafka Connect schema, as Debezium's converters write it.
//!
//! Encoding ([`write_value`]) parses the text with tarn's own parsers ([`crate::value::text`])
//! and writes the JSON value the schema asks for: decimals as base64 of the big-endian
//! two's-complement unscaled value, dates as days since the epoch, times and timestamps as
//! microseconds, `timestamptz` as ISO-8601 in UTC, `bytea` as base64, arrays as JSON arrays,
//! NaN and infinities of floats as the strings Jackson writes. A value that does not parse is
//! an error naming the field; nothing is rounded.
//!
//! Decoding ([`read_value`]) turns the JSON back into PostgreSQL text that
//! [`crate::value::builder`] reads for the matching [`ColumnType`](crate::value::ColumnType):
//! `t`/`f`, decimal text at the schema's scale, `YYYY-MM-DD`, `HH:MM:SS.ffffff`,
//! `YYYY-MM-DD HH:MM:SS.ffffff[+HH:MM]` (with ` BC` for years before 1), `\x` hex, array
//! literals `{"a",NULL}`. It reads every unit Debezium's connectors use (milli-, micro- and
//! nanoseconds, ISO strings) and never panics: out-of-range numbers and malformed strings are
//! errors naming the field.
//!
//! Debezium's placeholder for an unchanged TOASTed value ([`super::UNAVAILABLE_VALUE`]) is
//! written for [`Value::Unchanged`] in string, bytes and array-of-string fields, and read back
//! as [`Value::Unchanged`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::Value as Json;

use super::connect::{ConnectSchema, JsonWriter, SchemaType, kind};
use super::types::*;
use super::{CodecError, UNAVAILABLE_VALUE};
use crate::value::Value;
use crate::value::text::{
    array_elements, parse_bool, parse_bytea, parse_date, parse_decimal, parse_f32, parse_f64, parse_i64,
    parse_time, parse_timestamp, parse_timestamptz,
};

/// `timestamp 'infinity'` as Debezium writes it (the PostgreSQL JDBC driver's
/// `DATE_POSITIVE_INFINITY`; PostgreSQL connector docs, "TIMESTAMP type").
pub const TIMESTAMP_POSITIVE_INFINITY: i64 = 9_223_372_036_825_200_000;
/// `timestamp '-infinity'` as Debezium writes it.
pub const TIMESTAMP_NEGATIVE_INFINITY: i64 = -9_223_372_036_832_400_000;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// Debezium's average month, 365.25 / 12 days, in seconds (`MicroDuration.DAYS_PER_MONTH_AVG`).
const SECONDS_PER_MONTH: i64 = 2_629_800;
/// The longest decimal (in bytes of its unscaled value) tarn reads or writes, about 9,800
/// digits: far beyond any decimal tarn stores (38 digits), and short enough that converting
/// it (quadratic in its length) stays cheap on hostile input.
const MAX_DECIMAL_BYTES: usize = 4_096;
/// The longest decimal text tarn encodes.
const MAX_DECIMAL_DIGITS: usize = 9_800;
/// Scales outside ±this are refused (PostgreSQL allows -1000..=1000).
const MAX_SCALE: i64 = 16_383;

fn bad(path: impl Into<String>, message: impl Into<String>) -> CodecError {
    CodecError::new(path, message)
}

fn text_of<'v>(value: &'v [u8], path: &str) -> Result<&'v str, CodecError> {
    std::str::from_utf8(value).map_err(|_| bad(path, "the value is not valid UTF-8"))
}

/// Writes `value`, a cell in PostgreSQL text format, as `schema`'s JSON value.
pub fn write_value(
    w: &mut JsonWriter,
    schema: &ConnectSchema,
    value: &Value,
    path: &str,
) -> Result<(), CodecError> {
    match value {
        Value::Null => {
            w.null();
            Ok(())
        }
        Value::Unchanged => write_unavailable(w, schema, path),
        Value::Binary(_) => Err(bad(
            path,
            "a binary-format cell cannot be encoded; tarn's sources deliver text-format cells",
        )),
        Value::Text(text) => write_text(w, schema, text, path),
    }
}

fn write_unavailable(w: &mut JsonWriter, schema: &ConnectSchema, path: &str) -> Result<(), CodecError> {
    match (schema.schema_type, schema.logical_name()) {
        (SchemaType::String, _) => w.string(UNAVAILABLE_VALUE),
        (SchemaType::Bytes, "") => w.string(&BASE64.encode(UNAVAILABLE_VALUE)),
        (SchemaType::Array, _)
            if schema
                .items
                .as_ref()
                .is_some_and(|i| i.schema_type == SchemaType::String) =>
        {
            w.begin_array();
            w.string(UNAVAILABLE_VALUE);
            w.end_array();
        }
        _ => {
            return Err(bad(
                path,
                format!(
                    "an unchanged TOASTed value has no Debezium placeholder for a {} field; \
                     give the table REPLICA IDENTITY FULL so that PostgreSQL sends it",
                    describe(schema)
                ),
            ));
        }
    }
    Ok(())
}

/// `int64 io.debezium.time.MicroTime`-style description of a schema, for messages.
pub(crate) fn describe(schema: &ConnectSchema) -> String {
    match &schema.name {
        Some(name) => format!("{} {name}", schema.schema_type.json_name()),
        None => schema.schema_type.json_name().to_string(),
    }
}

fn write_text(w: &mut JsonWriter, schema: &ConnectSchema, text: &[u8], path: &str) -> Result<(), CodecError> {
    let parse_err = |e: crate::value::text::ParseError| {
        bad(
            path,
            format!(
                "cannot read {:?} as {}: {e}",
                String::from_utf8_lossy(text),
                describe(schema)
            ),
        )
    };
    let logical = schema.logical_name();
    match schema.schema_type {
        SchemaType::Boolean => w.raw(if parse_bool(text).map_err(parse_err)? {
            "true"
        } else {
            "false"
        }),
        SchemaType::Int8 | SchemaType::Int16 | SchemaType::Int32 | SchemaType::Int64 => {
            let n = match logical {
                DATE | CONNECT_DATE => i64::from(parse_date(text).map_err(parse_err)?),
                MICRO_TIME => {
                    if text == b"24:00:00" {
                        MICROS_PER_DAY
                    } else {
                        parse_time(text).map_err(parse_err)?
                    }
                }
                MICRO_TIMESTAMP => match text {
                    b"infinity" => TIMESTAMP_POSITIVE_INFINITY,
                    b"-infinity" => TIMESTAMP_NEGATIVE_INFINITY,
                    _ => parse_timestamp(text).map_err(parse_err)?,
                },
                MICRO_DURATION => parse_interval_micros(text).map_err(|reason| {
                    bad(
                        path,
                        format!(
                            "cannot read {:?} as an interval: {reason}",
                            String::from_utf8_lossy(text)
                        ),
                    )
                })?,
                _ => parse_i64(text).map_err(parse_err)?,
            };
            let (min, max) = match schema.schema_type {
                SchemaType::Int8 => (i64::from(i8::MIN), i64::from(i8::MAX)),
                SchemaType::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
                SchemaType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            if n < min || n > max {
                return Err(bad(
                    path,
                    format!("{n} is out of the range of {}", describe(schema)),
                ));
            }
            w.raw(&n.to_string());
        }
        SchemaType::Float32 => {
            let f = parse_f32(text).map_err(parse_err)?;
            if f.is_finite() {
                w.raw(&serde_json::to_string(&f).map_err(|e| bad(path, e.to_string()))?);
            } else {
                w.string(non_finite(f64::from(f)));
            }
        }
        SchemaType::Float64 => {
            let f = parse_f64(text).map_err(parse_err)?;
            if f.is_finite() {
                w.raw(&serde_json::to_string(&f).map_err(|e| bad(path, e.to_string()))?);
            } else {
                w.string(non_finite(f));
            }
        }
        SchemaType::Bytes if logical == DECIMAL => {
            let scale = scale_of(schema, path)?;
            let unscaled = if schema.parameter("connect.decimal.precision").is_none() && scale == 2 {
                // money: `$1,234.56` in the C locale; scale from money.fraction.digits.
                money_unscaled(text).ok_or_else(|| {
                    bad(
                        path,
                        format!("cannot read {:?} as money", String::from_utf8_lossy(text)),
                    )
                })?
            } else {
                parse_decimal(
                    text,
                    38,
                    i8::try_from(scale).map_err(|_| bad(path, "scale out of range"))?,
                )
                .map_err(parse_err)?
            };
            w.string(&BASE64.encode(i128_to_twos_complement(unscaled)));
        }
        SchemaType::Bytes => {
            let mut bytes = Vec::new();
            parse_bytea(text, &mut bytes).map_err(parse_err)?;
            w.string(&BASE64.encode(&bytes));
        }
        SchemaType::String => {
            let s = text_of(text, path)?;
            match logical {
                ZONED_TIMESTAMP => {
                    if s == "infinity" || s == "-infinity" {
                        w.string(s);
                    } else {
                        let micros = parse_timestamptz(text).map_err(parse_err)?;
                        w.string(&iso_timestamp_utc(micros));
                    }
                }
                ZONED_TIME => w.string(&zoned_time_utc(text).map_err(|reason| {
                    bad(
                        path,
                        format!("cannot read {s:?} as a time with time zone: {reason}"),
                    )
                })?),
                _ => w.string(s),
            }
        }
        SchemaType::Struct if logical == VARIABLE_SCALE_DECIMAL => {
            let (scale, unscaled) = decimal_text_to_unscaled(text).ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "cannot read {:?} as a numeric (NaN and infinities have no Debezium decimal)",
                        String::from_utf8_lossy(text)
                    ),
                )
            })?;
            w.begin_object();
            w.key("scale");
            w.raw(&scale.to_string());
            w.key("value");
            w.string(&BASE64.encode(unscaled));
            w.end_object();
        }
        SchemaType::Array => {
            let items = schema
                .items
                .as_deref()
                .ok_or_else(|| bad(path, "an array schema without items"))?;
            let elements = array_elements(text).map_err(parse_err)?;
            w.begin_array();
            for (i, element) in elements.into_iter().enumerate() {
                match element {
                    None => w.null(),
                    Some(e) => write_text(w, items, &e, "").map_err(|e| e.within(&format!("{path}[{i}]")))?,
                }
            }
            w.end_array();
        }
        SchemaType::Struct | SchemaType::Map => {
            return Err(bad(
                path,
                format!("tarn does not encode text into a {} field", describe(schema)),
            ));
        }
    }
    Ok(())
}

fn non_finite(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

fn scale_of(schema: &ConnectSchema, path: &str) -> Result<i64, CodecError> {
    let scale = schema
        .parameter("scale")
        .ok_or_else(|| bad(path, "a Decimal schema without a \"scale\" parameter"))?;
    let scale: i64 = scale
        .trim()
        .parse()
        .map_err(|_| bad(path, format!("the Decimal scale {scale:?} is not an integer")))?;
    if scale.unsigned_abs() > MAX_SCALE.unsigned_abs() {
        return Err(bad(path, format!("the Decimal scale {scale} is out of range")));
    }
    Ok(scale)
}

/// The unscaled value (at scale 2) of PostgreSQL's `money` output in the C locale:
/// `$1,234.56`, `-$1,234.56`, or the same without a currency sign.
fn money_unscaled(text: &[u8]) -> Option<i128> {
    let s = std::str::from_utf8(text).ok()?.trim();
    let (negative, s) = if let Some(inner) = s.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        (true, inner)
    } else if let Some(rest) = s.strip_prefix('-') {
        (true, rest)
    } else {
        (false, s)
    };
    let digits: String = s
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .filter(|&c| c != ',')
        .collect();
    let unscaled = parse_decimal(digits.as_bytes(), 38, 2).ok()?;
    Some(if negative { -unscaled } else { unscaled })
}

/// The minimal big-endian two's-complement bytes of `n` (Java's `BigInteger.toByteArray`).
pub fn i128_to_twos_complement(n: i128) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// Splits numeric text (`-123.4500`, `1e5` is not PostgreSQL output) into its scale (the
/// number of fraction digits) and the big-endian two's-complement bytes of its unscaled
/// value, of any length. `None` for anything that is not a finite decimal.
fn decimal_text_to_unscaled(text: &[u8]) -> Option<(i64, Vec<u8>)> {
    let (negative, rest) = match text.first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if (int.is_empty() && frac.is_empty())
        || int.len() + frac.len() > MAX_DECIMAL_DIGITS
        || !int.iter().all(u8::is_ascii_digit)
        || !frac.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // Little-endian base-256 magnitude, built digit by digit.
    let mut magnitude: Vec<u8> = Vec::new();
    for &d in int.iter().chain(frac) {
        let mut carry = u32::from(d - b'0');
        for byte in magnitude.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    if magnitude.is_empty() {
        magnitude.push(0);
    }
    // Room for the sign bit.
    if magnitude.last().is_some_and(|&b| b & 0x80 != 0) {
        magnitude.push(0);
    }
    if negative && magnitude.iter().any(|&b| b != 0) {
        let mut carry = 1u16;
        for byte in magnitude.iter_mut() {
            let v = u16::from(!*byte) + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    magnitude.reverse();
    Some((frac.len() as i64, magnitude))
}

/// The decimal text of the big-endian two's-complement `bytes` at `scale`.
fn twos_complement_to_decimal(bytes: &[u8], scale: i64) -> Option<String> {
    if bytes.is_empty() || bytes.len() > MAX_DECIMAL_BYTES {
        return None;
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        // Two's complement negation, from the least significant byte.
        let mut carry = 1u16;
        for byte in magnitude.iter_mut().rev() {
            let v = u16::from(!*byte) + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    // Repeated division by 10^9 of the big-endian magnitude.
    let mut words: Vec<u32> = Vec::new();
    let mut digits = magnitude;
    let first = digits.iter().position(|&b| b != 0).unwrap_or(digits.len());
    digits.drain(..first);
    while !digits.is_empty() {
        let mut remainder: u64 = 0;
        let mut quotient = Vec::with_capacity(digits.len());
        for &b in &digits {
            let v = (remainder << 8) | u64::from(b);
            let q = v / 1_000_000_000;
            remainder = v % 1_000_000_000;
            if !quotient.is_empty() || q != 0 {
                quotient.push(q as u8);
            }
        }
        words.push(remainder as u32);
        digits = quotient;
    }
    let mut text = String::new();
    match words.split_last() {
        None => text.push('0'),
        Some((most, rest)) => {
            text.push_str(&most.to_string());
            for w in rest.iter().rev() {
                text.push_str(&format!("{w:09}"));
            }
        }
    }
    let mut out = String::with_capacity(text.len() + 3);
    if negative {
        out.push('-');
    }
    if scale > 0 {
        let scale = scale as usize;
        if text.len() <= scale {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', scale - text.len()));
            out.push_str(&text);
        } else {
            let (int, frac) = text.split_at(text.len() - scale);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        }
    } else {
        out.push_str(&text);
        if text != "0" {
            out.extend(std::iter::repeat_n('0', scale.unsigned_abs() as usize));
        }
    }
    Some(out)
}

/// Reads PostgreSQL's `iso_8601` interval output (`P1Y2M3DT4H5M6.5S`, `PT0S`, components
/// may be negative) as Debezium's microsecond count, a month being 365.25/12 days.
fn parse_interval_micros(text: &[u8]) -> Result<i64, &'static str> {
    let s = std::str::from_utf8(text).map_err(|_| "not UTF-8")?;
    let rest = s
        .strip_prefix('P')
        .ok_or("expected ISO-8601 interval text (IntervalStyle iso_8601), such as P1DT2H")?;
    let mut micros: i128 = 0;
    let mut in_time = false;
    let mut number = String::new();
    let mut any = false;
    for c in rest.chars() {
        match c {
            'T' if !in_time && number.is_empty() => in_time = true,
            '0'..='9' | '-' | '+' | '.' => number.push(c),
            unit => {
                if number.is_empty() {
                    return Err("a unit without a number");
                }
                let seconds_per_unit: i128 = match (in_time, unit) {
                    (false, 'Y') => 12 * i128::from(SECONDS_PER_MONTH),
                    (false, 'M') => i128::from(SECONDS_PER_MONTH),
                    (false, 'W') => 7 * 86_400,
                    (false, 'D') => 86_400,
                    (true, 'H') => 3_600,
                    (true, 'M') => 60,
                    (true, 'S') => 1,
                    _ => return Err("an unknown unit"),
                };
                let value_micros = if unit == 'S' {
                    seconds_text_micros(&number).ok_or("malformed seconds")?
                } else {
                    let n: i128 = number.parse().map_err(|_| "malformed number")?;
                    n.checked_mul(seconds_per_unit * i128::from(MICROS_PER_SECOND))
                        .ok_or("out of range")?
                };
                micros = micros.checked_add(value_micros).ok_or("out of range")?;
                number.clear();
                any = true;
            }
        }
    }
    if !number.is_empty() || !any {
        return Err("expected ISO-8601 interval text, such as P1DT2H");
    }
    i64::try_from(micros).map_err(|_| "out of the range of int64 microseconds")
}

/// `-6.5` seconds as microseconds (at most 6 fraction digits).
fn seconds_text_micros(s: &str) -> Option<i128> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || frac.len() > 6 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i128 = int.parse().ok()?;
    let frac: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>().ok()? * 10i128.pow(6 - frac.len() as u32)
    };
    let v = int.checked_mul(1_000_000)?.checked_add(frac)?;
    Some(if negative { -v } else { v })
}

/// `timetz` text (`10:15:30.5+02`, `10:15:30-03:30`) as ISO-8601 time in UTC, the way
/// Debezium's `ZonedTime` writes it (`08:15:30.5Z`).
fn zoned_time_utc(text: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(text).map_err(|_| "not UTF-8")?;
    let split = s.rfind(['+', '-']).ok_or("no time zone offset")?;
    let (time, offset) = s.split_at(split);
    let micros = if time == "24:00:00" {
        MICROS_PER_DAY
    } else {
        parse_time(time.as_bytes()).map_err(|e| e.reason)?
    };
    let offset_seconds = parse_offset_seconds(offset).ok_or("malformed time zone offset")?;
    let utc = (micros - offset_seconds * MICROS_PER_SECOND).rem_euclid(MICROS_PER_DAY);
    let mut out = time_text(utc, 0);
    out.push('Z');
    Ok(out)
}

/// `+HH`, `+HH:MM`, `+HH:MM:SS`, `+HHMM` as seconds east of UTC.
fn parse_offset_seconds(offset: &str) -> Option<i64> {
    let (sign, rest) = match offset.as_bytes().first()? {
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return None,
    };
    let parts: Vec<&str> = if rest.contains(':') {
        rest.split(':').collect()
    } else if rest.len() == 4 {
        vec![&rest[..2], &rest[2..]]
    } else {
        vec![rest]
    };
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut seconds = 0;
    for (i, p) in parts.iter().enumerate() {
        let n: i64 = p.parse().ok()?;
        if i > 0 && n > 59 {
            return None;
        }
        seconds += n * [3600, 60, 1][i];
    }
    Some(sign * seconds)
}

/// Microseconds since the epoch as Java's `ISO_OFFSET_DATE_TIME` prints them in UTC:
/// `2026-05-24T02:49:32.359424Z` (fraction without trailing zeros, none when whole; years
/// beyond 9999 with `+`, before year 0 with `-`).
pub fn iso_timestamp_utc(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let time = micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let year_text = if year > 9999 {
        format!("+{year}")
    } else if year < 0 {
        format!("-{:04}", -year)
    } else {
        format!("{year:04}")
    };
    format!("{year_text}-{month:02}-{day:02}T{}Z", time_text(time, 0))
}

/// `HH:MM:SS` and the fraction of `micros` past midnight without trailing zeros, at least
/// `min_digits` of them.
fn time_text(micros: i64, min_digits: usize) -> String {
    let seconds = micros / MICROS_PER_SECOND;
    let fraction = micros % MICROS_PER_SECOND;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    push_fraction(&mut out, fraction as u64, 6, min_digits.min(6));
    out
}

/// Appends `.digits` of a `width`-digit fraction, trailing zeros dropped (down to
/// `min_digits`); nothing when zero and `min_digits` is 0.
fn push_fraction(out: &mut String, fraction: u64, width: usize, min_digits: usize) {
    if fraction == 0 && min_digits == 0 {
        return;
    }
    let digits = format!("{fraction:0width$}");
    let trimmed = digits.trim_end_matches('0');
    let keep = trimmed.len().max(min_digits).min(width);
    out.push('.');
    out.push_str(&digits[..keep]);
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01, with
/// astronomical years (0 is 1 BC); the inverse of
/// [`days_from_civil`](crate::value::text::days_from_civil).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// PostgreSQL's text of a date: `YYYY-MM-DD`, ` BC` for years before 1.
pub(crate) fn date_text(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    if year <= 0 {
        format!("{:04}-{month:02}-{day:02} BC", 1 - year)
    } else {
        format!("{year:04}-{month:02}-{day:02}")
    }
}

/// The most days tarn reads from a date (far beyond PostgreSQL's range, far within i64).
const MAX_DAYS: i64 = 1 << 40;

pub(crate) fn timestamp_text(count: i64, units_per_second: i64, path: &str) -> Result<String, CodecError> {
    let units_per_day = i128::from(units_per_second) * 86_400;
    let count = i128::from(count);
    let days = count.div_euclid(units_per_day);
    let within = count.rem_euclid(units_per_day);
    if days.abs() > i128::from(MAX_DAYS) {
        return Err(bad(path, "the timestamp is out of range"));
    }
    let seconds = (within / i128::from(units_per_second)) as i64;
    let fraction = (within % i128::from(units_per_second)) as u64;
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = format!(
        "{:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        if year <= 0 { 1 - year } else { year },
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    push_fraction(&mut out, fraction, digits_of(units_per_second), 0);
    if year <= 0 {
        out.push_str(" BC");
    }
    Ok(out)
}

fn digits_of(units_per_second: i64) -> usize {
    match units_per_second {
        1_000 => 3,
        1_000_000 => 6,
        _ => 9,
    }
}

pub(crate) fn time_of_day_text(count: i64, units_per_second: i64, path: &str) -> Result<String, CodecError> {
    let units_per_day = i128::from(units_per_second) * 86_400;
    let count = i128::from(count);
    if count == units_per_day {
        return Ok("24:00:00".into());
    }
    if !(0..units_per_day).contains(&count) {
        return Err(bad(path, format!("{count} is not a time of day")));
    }
    let seconds = (count / i128::from(units_per_second)) as i64;
    let fraction = (count % i128::from(units_per_second)) as u64;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    push_fraction(&mut out, fraction, digits_of(units_per_second), 0);
    Ok(out)
}

/// Parts of an ISO-8601 date-time (`[+-]YYYY-MM-DD[THH:MM[:SS[.f]]][offset]`).
struct IsoDateTime<'a> {
    year: i64,
    month: u32,
    day: u32,
    /// `HH:MM:SS` and the fraction digits (trailing zeros dropped), when present.
    time: Option<(String, &'a str)>,
    /// The offset as written (`Z`, `+02:00`), when present.
    offset: Option<&'a str>,
}

fn parse_iso(s: &str) -> Option<IsoDateTime<'_>> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let year_len = rest.find('-')?;
    if !(4..=9).contains(&year_len) || !rest[..year_len].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = sign * rest[..year_len].parse::<i64>().ok()?;
    let rest = &rest[year_len..];
    let b = rest.as_bytes();
    if b.len() < 6 || b[0] != b'-' || b[3] != b'-' {
        return None;
    }
    let month: u32 = two_digits(&rest[1..3])?;
    let day: u32 = two_digits(&rest[4..6])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut rest = &rest[6..];
    let mut time = None;
    if let Some(t) = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' ')) {
        let (t_text, after) = split_time(t)?;
        time = Some(t_text);
        rest = after;
    }
    let offset = if rest.is_empty() {
        None
    } else if rest == "Z" || parse_offset_seconds(rest).is_some() {
        Some(rest)
    } else {
        return None;
    };
    Some(IsoDateTime {
        year,
        month,
        day,
        time,
        offset,
    })
}

fn two_digits(s: &str) -> Option<u32> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// `HH:MM[:SS[.f{1,9}]]` at the start of `s`: (`HH:MM:SS`, fraction without trailing zeros)
/// and the rest.
fn split_time(s: &str) -> Option<((String, &str), &str)> {
    let b = s.as_bytes();
    if b.len() < 5 || b[2] != b':' {
        return None;
    }
    let hour = two_digits(&s[..2])?;
    let minute = two_digits(&s[3..5])?;
    let mut second = 0;
    let mut rest = &s[5..];
    let mut fraction = "";
    if let Some(r) = rest.strip_prefix(':') {
        second = two_digits(r.get(..2)?)?;
        rest = &r[2..];
        if let Some(r) = rest.strip_prefix('.') {
            let len = r.bytes().take_while(u8::is_ascii_digit).count();
            if len == 0 || len > 9 {
                return None;
            }
            fraction = r[..len].trim_end_matches('0');
            rest = &r[len..];
        }
    }
    if hour > 24 || minute > 59 || second > 59 {
        return None;
    }
    Some(((format!("{hour:02}:{minute:02}:{second:02}"), fraction), rest))
}

/// PostgreSQL offset text: `+00` for `Z`, else as written.
fn pg_offset(offset: &str) -> String {
    if offset == "Z" {
        "+00".into()
    } else {
        offset.into()
    }
}

fn iso_to_pg(iso: &IsoDateTime<'_>, with_offset: bool) -> String {
    let (year, bc) = if iso.year <= 0 {
        (1 - iso.year, true)
    } else {
        (iso.year, false)
    };
    let mut out = format!("{year:04}-{:02}-{:02}", iso.month, iso.day);
    if let Some((hms, fraction)) = &iso.time {
        out.push(' ');
        out.push_str(hms);
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(fraction);
        }
    }
    if with_offset {
        out.push_str(&pg_offset(iso.offset.unwrap_or("Z")));
    }
    if bc {
        out.push_str(" BC");
    }
    out
}

/// Reads `json`, a value under `schema` (or, without a schema, by its JSON kind), as a
/// PostgreSQL text cell.
pub fn read_value(schema: Option<&ConnectSchema>, json: &Json, path: &str) -> Result<Value, CodecError> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    if is_unavailable(schema, json) {
        return Ok(Value::Unchanged);
    }
    let text = match schema {
        Some(schema) => read_text(schema, json, path)?,
        None => generic_text(json),
    };
    Ok(Value::Text(Bytes::from(text)))
}

/// [`read_value`] of the JSON string `s`, without the `Json` value it would take: the cells of
/// rows read straight from a message's text ([`super::envelope`]) come here. Strings of the
/// common schemas (`string` with its logical names, `Decimal`) are read in place; others
/// go through [`read_value`], so the two agree by construction.
pub(crate) fn read_str(schema: Option<&ConnectSchema>, s: &str, path: &str) -> Result<Value, CodecError> {
    if s == UNAVAILABLE_VALUE {
        return Ok(Value::Unchanged);
    }
    let text = match schema {
        // generic_text
        None => s.to_owned(),
        Some(schema) => match schema.schema_type {
            SchemaType::String => string_text(schema, s, path)?,
            SchemaType::Bytes if schema.logical_name() == DECIMAL => decimal_text(schema, s, path)?,
            _ => return read_value(Some(schema), &Json::String(s.to_owned()), path),
        },
    };
    Ok(Value::Text(Bytes::from(text)))
}

fn is_unavailable(schema: Option<&ConnectSchema>, json: &Json) -> bool {
    match json {
        Json::String(s) if s == UNAVAILABLE_VALUE => true,
        Json::String(s) => {
            schema.is_some_and(|s| s.schema_type == SchemaType::Bytes && s.name.is_none())
                && BASE64.decode(s).is_ok_and(|b| b == UNAVAILABLE_VALUE.as_bytes())
        }
        Json::Array(a) => a.len() == 1 && a[0].as_str() == Some(UNAVAILABLE_VALUE),
        _ => false,
    }
}

/// Text of a JSON value read without a schema: strings as they are, numbers as written,
/// booleans as `t`/`f`, arrays as array literals, objects as their JSON.
fn generic_text(json: &Json) -> String {
    match json {
        Json::Null => "NULL".into(),
        Json::Bool(b) => if *b { "t" } else { "f" }.into(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => s.clone(),
        Json::Array(elements) => {
            let mut out = String::from("{");
            for (i, e) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if e.is_null() {
                    out.push_str("NULL");
                } else {
                    push_array_element(&mut out, &generic_text(e));
                }
            }
            out.push('}');
            out
        }
        Json::Object(_) => json.to_string(),
    }
}

fn push_array_element(out: &mut String, element: &str) {
    out.push('"');
    for c in element.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn expect_i64(json: &Json, schema: &ConnectSchema, path: &str) -> Result<i64, CodecError> {
    match json {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        bad(
            path,
            format!(
                "expected an integer for {}, found {}",
                describe(schema),
                shown(json)
            ),
        )
    })
}

fn expect_str<'j>(json: &'j Json, schema: &ConnectSchema, path: &str) -> Result<&'j str, CodecError> {
    json.as_str().ok_or_else(|| {
        bad(
            path,
            format!(
                "expected a string for {}, found {}",
                describe(schema),
                shown(json)
            ),
        )
    })
}

fn expect_base64(json: &Json, schema: &ConnectSchema, path: &str) -> Result<Vec<u8>, CodecError> {
    base64_of(expect_str(json, schema, path)?, schema, path)
}

fn base64_of(s: &str, schema: &ConnectSchema, path: &str) -> Result<Vec<u8>, CodecError> {
    BASE64
        .decode(s)
        .map_err(|e| bad(path, format!("expected base64 for {}: {e}", describe(schema))))
}

/// A JSON value for messages: its kind and at most 64 characters of it.
pub(crate) fn shown(json: &Json) -> String {
    let text = json.to_string();
    if text.chars().count() > 64 {
        format!("{} {}…", kind(json), text.chars().take(64).collect::<String>())
    } else {
        format!("{} {text}", kind(json))
    }
}

fn read_text(schema: &ConnectSchema, json: &Json, path: &str) -> Result<String, CodecError> {
    let logical = schema.logical_name();
    Ok(match schema.schema_type {
        SchemaType::Boolean => match json {
            Json::Bool(b) => if *b { "t" } else { "f" }.into(),
            Json::String(s) if s == "true" || s == "false" => s[..1].into(),
            _ => {
                return Err(bad(path, format!("expected a boolean, found {}", shown(json))));
            }
        },
        SchemaType::Int8 | SchemaType::Int16 | SchemaType::Int32 | SchemaType::Int64 => {
            let n = expect_i64(json, schema, path)?;
            match logical {
                DATE | CONNECT_DATE => {
                    if n.unsigned_abs() > MAX_DAYS.unsigned_abs() {
                        return Err(bad(path, format!("{n} days is out of range for a date")));
                    }
                    date_text(n)
                }
                TIME | CONNECT_TIME => time_of_day_text(n, 1_000, path)?,
                MICRO_TIME => time_of_day_text(n, 1_000_000, path)?,
                NANO_TIME => time_of_day_text(n, 1_000_000_000, path)?,
                TIMESTAMP | CONNECT_TIMESTAMP | MICRO_TIMESTAMP | NANO_TIMESTAMP => {
                    if n == TIMESTAMP_POSITIVE_INFINITY || (logical == NANO_TIMESTAMP && n == i64::MAX) {
                        "infinity".into()
                    } else if n == TIMESTAMP_NEGATIVE_INFINITY || (logical == NANO_TIMESTAMP && n == i64::MIN)
                    {
                        "-infinity".into()
                    } else {
                        let units = match logical {
                            MICRO_TIMESTAMP => 1_000_000,
                            NANO_TIMESTAMP => 1_000_000_000,
                            _ => 1_000,
                        };
                        timestamp_text(n, units, path)?
                    }
                }
                MICRO_DURATION => {
                    let mut out = String::from("PT");
                    if n < 0 {
                        out.push('-');
                    }
                    let abs = n.unsigned_abs();
                    out.push_str(&(abs / 1_000_000).to_string());
                    push_fraction(&mut out, abs % 1_000_000, 6, 0);
                    out.push('S');
                    out
                }
                _ => n.to_string(),
            }
        }
        SchemaType::Float32 | SchemaType::Float64 => match json {
            Json::Number(n) => n.to_string(),
            Json::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => s.clone(),
            _ => {
                return Err(bad(path, format!("expected a number, found {}", shown(json))));
            }
        },
        SchemaType::Bytes if logical == DECIMAL => match json {
            // decimal.format=NUMERIC writes a JSON number.
            Json::Number(n) => n.to_string(),
            _ => {
                // The scale is checked before the value's kind.
                scale_of(schema, path)?;
                decimal_text(schema, expect_str(json, schema, path)?, path)?
            }
        },
        SchemaType::Bytes if logical == BITS => {
            let bytes = expect_base64(json, schema, path)?;
            let length = schema.parameter("length").and_then(|l| l.parse::<usize>().ok());
            bits_text(&bytes, length)
        }
        SchemaType::Bytes => {
            let bytes = expect_base64(json, schema, path)?;
            let mut out = String::with_capacity(2 + bytes.len() * 2);
            out.push_str("\\x");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
        SchemaType::String => string_text(schema, expect_str(json, schema, path)?, path)?,
        SchemaType::Struct if logical == VARIABLE_SCALE_DECIMAL => {
            let scale_schema = ConnectSchema::new(SchemaType::Int32);
            let scale = json
                .get("scale")
                .map(|s| expect_i64(s, &scale_schema, &format!("{path}.scale")))
                .transpose()?
                .ok_or_else(|| bad(format!("{path}.scale"), "a VariableScaleDecimal needs a scale"))?;
            if scale.unsigned_abs() > MAX_SCALE.unsigned_abs() {
                return Err(bad(
                    format!("{path}.scale"),
                    format!("the scale {scale} is out of range"),
                ));
            }
            let value = json
                .get("value")
                .ok_or_else(|| bad(format!("{path}.value"), "a VariableScaleDecimal needs a value"))?;
            let bytes = expect_base64(
                value,
                &ConnectSchema::new(SchemaType::Bytes),
                &format!("{path}.value"),
            )?;
            twos_complement_to_decimal(&bytes, scale).ok_or_else(|| {
                bad(
                    format!("{path}.value"),
                    "a decimal needs between 1 and 4096 bytes",
                )
            })?
        }
        SchemaType::Array => {
            let elements = json
                .as_array()
                .ok_or_else(|| bad(path, format!("expected an array, found {}", shown(json))))?;
            let items = schema.items.as_deref();
            let mut out = String::from("{");
            for (i, e) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if e.is_null() {
                    out.push_str("NULL");
                    continue;
                }
                let text = match items {
                    Some(items) if items.schema_type != SchemaType::Array => {
                        read_text(items, e, "").map_err(|e| e.within(&format!("{path}[{i}]")))?
                    }
                    _ => generic_text(e),
                };
                push_array_element(&mut out, &text);
            }
            out.push('}');
            out
        }
        SchemaType::Struct | SchemaType::Map => {
            if !json.is_object() && !json.is_array() {
                return Err(bad(
                    path,
                    format!("expected {}, found {}", describe(schema), shown(json)),
                ));
            }
            json.to_string()
        }
    })
}

/// The text of the string `s` under `schema`, a `string` schema (its logical names: ISO-8601
/// timestamps, dates and times become PostgreSQL's text forms; others are as they are).
fn string_text(schema: &ConnectSchema, s: &str, path: &str) -> Result<String, CodecError> {
    let logical = schema.logical_name();
    Ok(match logical {
        ZONED_TIMESTAMP if s == "infinity" || s == "-infinity" => s.into(),
        ZONED_TIMESTAMP | ISO_TIMESTAMP => {
            let iso = parse_iso(s)
                .filter(|iso| iso.time.is_some())
                .ok_or_else(|| bad(path, format!("expected an ISO-8601 timestamp, found {s:?}")))?;
            iso_to_pg(&iso, logical == ZONED_TIMESTAMP)
        }
        ISO_DATE => {
            let iso = parse_iso(s)
                .filter(|iso| iso.time.is_none())
                .ok_or_else(|| bad(path, format!("expected an ISO-8601 date, found {s:?}")))?;
            iso_to_pg(&iso, false)
        }
        ZONED_TIME | ISO_TIME => {
            let ((hms, fraction), rest) = split_time(s)
                .filter(|(_, rest)| rest.is_empty() || *rest == "Z" || parse_offset_seconds(rest).is_some())
                .ok_or_else(|| bad(path, format!("expected an ISO-8601 time, found {s:?}")))?;
            let mut out = hms;
            if !fraction.is_empty() {
                out.push('.');
                out.push_str(fraction);
            }
            if logical == ZONED_TIME {
                out.push_str(&pg_offset(if rest.is_empty() { "Z" } else { rest }));
            }
            out
        }
        _ => s.into(),
    })
}

/// The decimal text of `s`, the base64 of a `Decimal`'s unscaled value, at `schema`'s scale.
fn decimal_text(schema: &ConnectSchema, s: &str, path: &str) -> Result<String, CodecError> {
    let scale = scale_of(schema, path)?;
    let bytes = base64_of(s, schema, path)?;
    twos_complement_to_decimal(&bytes, scale)
        .ok_or_else(|| bad(path, "a Decimal needs between 1 and 4096 bytes"))
}

/// A bit string (`0101`) from Debezium's little-endian `Bits` bytes, padded to `length`
/// bits when the bytes hold that many.
fn bits_text(bytes: &[u8], length: Option<usize>) -> String {
    let mut bits = String::with_capacity(bytes.len() * 8);
    for b in bytes.iter().rev() {
        bits.push_str(&format!("{b:08b}"));
    }
    let significant = bits.trim_start_matches('0');
    match length {
        Some(length) if length <= bits.len() && length >= significant.len() => {
            bits[bits.len() - length..].to_string()
        }
        _ if significant.is_empty() => "0".into(),
        _ => significant.to_string(),
    }
}

/// A fallback value Debezium writes for a required column PostgreSQL did not send (the
/// non-key columns of a `REPLICA IDENTITY DEFAULT` delete): the schema's default, else the
/// type's zero (`JdbcValueConverters.convertValue`).
pub fn write_fallback(w: &mut JsonWriter, schema: &ConnectSchema) {
    if let Some(default) = &schema.default {
        w.raw(&default.to_string());
        return;
    }
    match (schema.schema_type, schema.logical_name()) {
        (SchemaType::Boolean, _) => w.raw("false"),
        (SchemaType::Float32 | SchemaType::Float64, _) => w.raw("0.0"),
        (SchemaType::Int8 | SchemaType::Int16 | SchemaType::Int32 | SchemaType::Int64, _) => w.raw("0"),
        (SchemaType::Bytes, DECIMAL) => w.string("AA=="),
        (SchemaType::Bytes, _) => w.string(""),
        (SchemaType::String, ZONED_TIMESTAMP) => w.string("1970-01-01T00:00:00Z"),
        (SchemaType::String, ZONED_TIME) => w.string("00:00:00Z"),
        (SchemaType::String, UUID) => w.string("00000000-0000-0000-0000-000000000000"),
        (SchemaType::String, JSON) => w.string("{}"),
        (SchemaType::String, _) => w.string(""),
        (SchemaType::Struct, VARIABLE_SCALE_DECIMAL) => w.raw(r#"{"scale":0,"value":"AA=="}"#),
        (SchemaType::Array, _) => w.raw("[]"),
        (SchemaType::Map | SchemaType::Struct, _) => w.raw("{}"),
    }
}

/// Writes `value` as Kafka Connect's `Values.append` prints a key field in a header (the
/// `SimpleHeaderConverter` text of a struct): JSON, except that decimals are plain numbers.
pub fn write_header_value(
    w: &mut JsonWriter,
    schema: &ConnectSchema,
    value: &Value,
    path: &str,
) -> Result<(), CodecError> {
    if let (Value::Text(text), SchemaType::Bytes, DECIMAL) =
        (value, schema.schema_type, schema.logical_name())
    {
        let scale = scale_of(schema, path)?;
        let unscaled = parse_decimal(
            text,
            38,
            i8::try_from(scale).map_err(|_| bad(path, "scale out of range"))?,
        )
        .map_err(|e| bad(path, e.reason))?;
        w.raw(&twos_complement_to_decimal(&i128_to_twos_complement(unscaled), scale).unwrap_or_default());
        return Ok(());
    }
    write_value(w, schema, value, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::text::{DATE_INFINITY, days_from_civil};

    fn text(v: &Value) -> &str {
        std::str::from_utf8(v.as_text().unwrap()).unwrap()
    }

    fn encode(schema: &ConnectSchema, t: &str) -> String {
        let mut w = JsonWriter::default();
        write_value(&mut w, schema, &Value::Text(Bytes::from(t.to_string())), "c").unwrap();
        w.finish()
    }

    fn decode(schema: &ConnectSchema, json: &str) -> String {
        let v = read_value(Some(schema), &serde_json::from_str(json).unwrap(), "c").unwrap();
        text(&v).to_string()
    }

    fn named(t: SchemaType, name: &str) -> ConnectSchema {
        ConnectSchema::new(t).named(name)
    }

    fn decimal(scale: i64) -> ConnectSchema {
        named(SchemaType::Bytes, DECIMAL).param("scale", scale.to_string())
    }

    #[test]
    fn decimals_as_debezium_writes_them() {
        // PostgreSQL connector docs, "Decimal types": 9.99 at scale 2 is 999, "A+c=".
        assert_eq!(encode(&decimal(2), "9.99"), r#""A+c=""#);
        assert_eq!(decode(&decimal(2), r#""A+c=""#), "9.99");
        assert_eq!(encode(&decimal(0), "0"), r#""AA==""#);
        assert_eq!(encode(&decimal(0), "-1"), r#""/w==""#);
        assert_eq!(encode(&decimal(0), "128"), r#""AIA=""#);
        assert_eq!(encode(&decimal(0), "-128"), r#""gA==""#);
        for (scale, t) in [
            (2, "-0.05"),
            (4, "12345678901234567890.1234"),
            (0, "-99999999999999999999999999999999999999"),
        ] {
            let json = encode(&decimal(scale), t);
            assert_eq!(decode(&decimal(scale), &json), t);
        }
        assert_eq!(decode(&decimal(-2), r#""Bw==""#), "700");
        assert_eq!(decode(&decimal(3), r#""AA==""#), "0.000");
        let e = read_value(
            Some(&decimal(2)),
            &serde_json::json!("***"),
            "payload.after.amount",
        )
        .unwrap_err();
        assert_eq!(e.path, "payload.after.amount");
        assert!(e.message.contains("expected base64"), "{e}");
    }

    #[test]
    fn variable_scale_decimals_of_any_length() {
        let s = variable_scale_decimal();
        let long = format!("-{}.{}", "9".repeat(60), "1".repeat(30));
        let json = encode(&s, &long);
        assert_eq!(decode(&s, &json), long);
        assert_eq!(encode(&s, "9.99"), r#"{"scale":2,"value":"A+c="}"#);
        let mut w = JsonWriter::default();
        let e = write_value(&mut w, &s, &Value::Text(Bytes::from_static(b"NaN")), "c").unwrap_err();
        assert!(e.message.contains("NaN"), "{e}");
    }

    #[test]
    fn temporal_values() {
        let date = named(SchemaType::Int32, DATE);
        assert_eq!(encode(&date, "2026-11-27"), "20784");
        assert_eq!(decode(&date, "20784"), "2026-11-27");
        assert_eq!(decode(&date, "-719528"), "0001-01-01 BC");
        assert_eq!(encode(&date, "infinity"), DATE_INFINITY.to_string());
        let micro_time = named(SchemaType::Int64, MICRO_TIME);
        assert_eq!(encode(&micro_time, "10:15:30.5"), "36930500000");
        assert_eq!(decode(&micro_time, "36930500000"), "10:15:30.5");
        assert_eq!(encode(&micro_time, "24:00:00"), "86400000000");
        assert_eq!(decode(&micro_time, "86400000000"), "24:00:00");
        assert_eq!(decode(&named(SchemaType::Int32, TIME), "36930500"), "10:15:30.5");
        assert_eq!(
            decode(&named(SchemaType::Int64, NANO_TIME), "36930000000001"),
            "10:15:30.000000001"
        );
        let ts = named(SchemaType::Int64, MICRO_TIMESTAMP);
        // PostgreSQL connector docs, "TIMESTAMP type".
        assert_eq!(encode(&ts, "2018-06-20 15:13:16.945104"), "1529507596945104");
        assert_eq!(decode(&ts, "1529507596945104"), "2018-06-20 15:13:16.945104");
        assert_eq!(encode(&ts, "infinity"), "9223372036825200000");
        assert_eq!(decode(&ts, "-9223372036832400000"), "-infinity");
        assert_eq!(
            decode(&named(SchemaType::Int64, TIMESTAMP), "1529507596945"),
            "2018-06-20 15:13:16.945"
        );
        assert_eq!(decode(&ts, "-62167219200000000"), "0001-01-01 00:00:00 BC");
        let tz = named(SchemaType::String, ZONED_TIMESTAMP);
        assert_eq!(
            encode(&tz, "2026-05-24 04:49:32.359424+02"),
            r#""2026-05-24T02:49:32.359424Z""#
        );
        assert_eq!(encode(&tz, "2026-05-24 02:49:32+00"), r#""2026-05-24T02:49:32Z""#);
        assert_eq!(
            decode(&tz, r#""2026-05-24T02:49:32.359424Z""#),
            "2026-05-24 02:49:32.359424+00"
        );
        assert_eq!(
            decode(&tz, r#""2026-05-24T02:49:32.3594240+02:00""#),
            "2026-05-24 02:49:32.359424+02:00"
        );
        assert_eq!(encode(&tz, "infinity"), r#""infinity""#);
        assert_eq!(
            encode(&tz, "0044-03-15 12:00:00+00 BC"),
            r#""-0043-03-15T12:00:00Z""#
        );
        assert_eq!(
            decode(&tz, r#""-0043-03-15T12:00:00Z""#),
            "0044-03-15 12:00:00+00 BC"
        );
        assert_eq!(
            decode(&tz, r#""+10000-01-01T00:00:00Z""#),
            "10000-01-01 00:00:00+00"
        );
        let tt = named(SchemaType::String, ZONED_TIME);
        assert_eq!(encode(&tt, "01:00:00.25+02"), r#""23:00:00.25Z""#);
        assert_eq!(decode(&tt, r#""23:00:00.25Z""#), "23:00:00.25+00");
        let iso = named(SchemaType::String, ISO_TIMESTAMP);
        assert_eq!(
            decode(&iso, r#""2019-07-09T02:28:57.123456Z""#),
            "2019-07-09 02:28:57.123456"
        );
        assert_eq!(
            decode(&named(SchemaType::String, ISO_DATE), r#""2017-09-15Z""#),
            "2017-09-15"
        );
        assert_eq!(
            decode(&named(SchemaType::String, ISO_TIME), r#""04:05:11.789Z""#),
            "04:05:11.789"
        );
        for bad_json in ["-1", "86400000001"] {
            assert!(read_value(Some(&micro_time), &serde_json::from_str(bad_json).unwrap(), "c").is_err());
        }
        assert!(read_value(Some(&date), &serde_json::json!(i64::MAX), "c").is_err());
        assert!(read_value(Some(&tz), &serde_json::json!("2026-13-01T00:00:00Z"), "c").is_err());
    }

    #[test]
    fn civil_dates_invert_days_from_civil() {
        for days in [
            -800_000, -719_528, -1, 0, 1, 59, 60, 11_016, 20_784, 2_932_896, 3_000_000,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn intervals_in_microseconds() {
        let s = named(SchemaType::Int64, MICRO_DURATION);
        // A month is 365.25/12 days.
        assert_eq!(encode(&s, "P1M"), (2_629_800i64 * 1_000_000).to_string());
        assert_eq!(
            encode(&s, "P1Y2M3DT4H5M6.5S"),
            (14 * 2_629_800_000_000i64 + 3 * 86_400_000_000 + 14_706_500_000).to_string()
        );
        assert_eq!(encode(&s, "PT-1H-30M"), "-5400000000");
        assert_eq!(encode(&s, "PT0S"), "0");
        assert_eq!(decode(&s, "-5400000000"), "PT-5400S");
        assert_eq!(decode(&s, "1500000"), "PT1.5S");
        assert_eq!(encode(&s, &decode(&s, "-1500001")), "-1500001");
        let mut w = JsonWriter::default();
        let e = write_value(&mut w, &s, &Value::Text(Bytes::from_static(b"1 day")), "after.i").unwrap_err();
        assert!(e.message.contains("iso_8601"), "{e}");
    }

    #[test]
    fn floats_bytes_bits_and_arrays() {
        let f = ConnectSchema::new(SchemaType::Float32);
        assert_eq!(encode(&f, "1.1"), "1.1");
        assert_eq!(encode(&f, "NaN"), r#""NaN""#);
        assert_eq!(decode(&f, r#""-Infinity""#), "-Infinity");
        let d = ConnectSchema::new(SchemaType::Float64);
        assert_eq!(encode(&d, "1e+300").parse::<f64>(), Ok(1e300));
        assert_eq!(decode(&d, "1e300").parse::<f64>(), Ok(1e300));
        let b = ConnectSchema::new(SchemaType::Bytes);
        assert_eq!(encode(&b, "\\x00ff"), r#""AP8=""#);
        assert_eq!(decode(&b, r#""AP8=""#), "\\x00ff");
        let bits = named(SchemaType::Bytes, BITS).param("length", "3");
        assert_eq!(decode(&bits, r#""BQ==""#), "101");
        assert_eq!(
            decode(&named(SchemaType::Bytes, BITS).param("length", "5"), r#""BQ==""#),
            "00101"
        );
        let ints = ConnectSchema::array_of(ConnectSchema::new(SchemaType::Int32).optional(true));
        assert_eq!(encode(&ints, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(decode(&ints, "[1,null,3]"), r#"{"1",NULL,"3"}"#);
        let strings = ConnectSchema::array_of(ConnectSchema::new(SchemaType::String).optional(true));
        assert_eq!(
            encode(&strings, r#"{"a,b","c\"d",NULL}"#),
            r#"["a,b","c\"d",null]"#
        );
        assert_eq!(
            decode(&strings, r#"["a,b","c\"d",null]"#),
            r#"{"a,b","c\"d",NULL}"#
        );
        let e = read_value(Some(&ints), &serde_json::json!([1, "x"]), "after.xs").unwrap_err();
        assert_eq!(e.path, "after.xs[1]");
    }

    #[test]
    fn placeholders_and_money() {
        let s = ConnectSchema::new(SchemaType::String);
        let mut w = JsonWriter::default();
        write_value(&mut w, &s, &Value::Unchanged, "c").unwrap();
        assert_eq!(w.finish(), format!("\"{UNAVAILABLE_VALUE}\""));
        assert_eq!(
            read_value(Some(&s), &serde_json::json!(UNAVAILABLE_VALUE), "c").unwrap(),
            Value::Unchanged
        );
        let b = ConnectSchema::new(SchemaType::Bytes);
        let placeholder = serde_json::json!(BASE64.encode(UNAVAILABLE_VALUE));
        assert_eq!(read_value(Some(&b), &placeholder, "c").unwrap(), Value::Unchanged);
        let mut w = JsonWriter::default();
        let e = write_value(
            &mut w,
            &ConnectSchema::new(SchemaType::Int32),
            &Value::Unchanged,
            "after.n",
        )
        .unwrap_err();
        assert!(e.message.contains("REPLICA IDENTITY FULL"), "{e}");
        let money = decimal(2);
        assert_eq!(encode(&money, "$1,234.56"), encode(&money, "1234.56"));
        assert_eq!(encode(&money, "-$0.05"), encode(&money, "-0.05"));
    }

    #[test]
    fn without_a_schema() {
        let v = |j: serde_json::Value| text(&read_value(None, &j, "c").unwrap()).to_string();
        assert_eq!(v(serde_json::json!(true)), "t");
        assert_eq!(v(serde_json::json!(12)), "12");
        assert_eq!(v(serde_json::json!("x")), "x");
        assert_eq!(v(serde_json::json!([1, null, "a\"b"])), r#"{"1",NULL,"a\"b"}"#);
        assert_eq!(v(serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }
}
