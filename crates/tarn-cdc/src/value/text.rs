//! Parsers of PostgreSQL's text output format: booleans, integers, floats, exact decimals,
//! `bytea` hex, dates, times, timestamps and one-dimensional array literals.
//!
//! Contract: values were produced with the session settings tarn always sets on PostgreSQL
//! (`DateStyle=ISO, MDY`, `IntervalStyle=iso_8601`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `bytea_output=hex`, `client_encoding=UTF8`), or turned into that text by a source that
//! does not speak it (CockroachDB's changefeed JSON, Kafka change events). Each parser reads
//! one value exactly; a value that does not parse, or does not fit, is a [`ParseError`]
//! saying why — nothing is rounded or truncated silently. The documented exceptions are the
//! clamps of `infinity`, `-infinity` and `24:00:00`. Parsers work on bytes and never panic.
//!
//! Why our own: no maintained crate reads PostgreSQL's text output into Arrow values without
//! going through per-value Rust allocations; see [`super::builder`].

use std::fmt;

/// Why a text value could not be read; the builders turn it into an error naming the column
/// and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong with the value.
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for ParseError {}

pub(crate) const fn err(reason: &'static str) -> ParseError {
    ParseError { reason }
}

pub(crate) const DECIMAL_NOT_FINITE: ParseError = err("Iceberg decimals hold no NaN or infinity");
pub(crate) const DECIMAL_TOO_LARGE: ParseError =
    err("the value has more integer digits than the decimal holds");
pub(crate) const DECIMAL_TOO_PRECISE: ParseError =
    err("the value has more fraction digits than the decimal's scale, and tarn never rounds");
pub(crate) const DECIMAL_HINT: &str = "; for an unconstrained numeric column, set cdc.unconstrained_numeric = \"text\" \
                            to carry its values as strings";

/// Reads a `bool` (`t` or `f`; `true` and `false` are accepted too).
pub fn parse_bool(b: &[u8]) -> Result<bool, ParseError> {
    match b {
        b"t" | b"true" => Ok(true),
        b"f" | b"false" => Ok(false),
        _ => Err(err("expected t or f")),
    }
}

/// Reads an integer (`int2`, `int4`, `int8`, `oid`) as i64, without overflow.
pub fn parse_i64(b: &[u8]) -> Result<i64, ParseError> {
    const BAD: ParseError = err("not an integer");
    let (negative, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return Err(BAD);
    }
    // Accumulate negatively so that i64::MIN fits.
    let mut acc: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(BAD);
        }
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_sub(i64::from(d - b'0')))
            .ok_or(err("integer out of range"))?;
    }
    if negative {
        Ok(acc)
    } else {
        acc.checked_neg().ok_or(err("integer out of range"))
    }
}

fn float_text(b: &[u8]) -> Result<&str, ParseError> {
    const BAD: ParseError = err("not a floating-point number");
    // Only the characters of PostgreSQL's float output reach the standard parser.
    if b.is_empty()
        || !b
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return Err(BAD);
    }
    std::str::from_utf8(b).map_err(|_| BAD)
}

/// Reads a `float8` (`NaN`, `Infinity` and `-Infinity` included).
pub fn parse_f64(b: &[u8]) -> Result<f64, ParseError> {
    match b {
        b"NaN" => Ok(f64::NAN),
        b"Infinity" => Ok(f64::INFINITY),
        b"-Infinity" => Ok(f64::NEG_INFINITY),
        _ => float_text(b)?
            .parse()
            .map_err(|_| err("not a floating-point number")),
    }
}

/// Reads a `float4` (`NaN`, `Infinity` and `-Infinity` included).
pub fn parse_f32(b: &[u8]) -> Result<f32, ParseError> {
    match b {
        b"NaN" => Ok(f32::NAN),
        b"Infinity" => Ok(f32::INFINITY),
        b"-Infinity" => Ok(f32::NEG_INFINITY),
        _ => float_text(b)?
            .parse()
            .map_err(|_| err("not a floating-point number")),
    }
}

pub(crate) const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// Reads a `numeric` into the unscaled value of a `decimal(precision, scale)`. The value must
/// fit exactly: trailing fraction zeros beyond the scale are fine, other extra digits, too
/// many integer digits, `NaN` and infinities are errors. A negative scale requires the value
/// to be a multiple of 10^-scale.
pub fn parse_decimal(b: &[u8], precision: u8, scale: i8) -> Result<i128, ParseError> {
    const BAD: ParseError = err("not a number");
    if matches!(b, b"NaN" | b"Infinity" | b"-Infinity") {
        return Err(DECIMAL_NOT_FINITE);
    }
    let (negative, rest) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.iter().all(u8::is_ascii_digit)
        || !frac.iter().all(u8::is_ascii_digit)
    {
        return Err(BAD);
    }
    let first = int.iter().position(|&c| c != b'0').unwrap_or(int.len());
    let int = &int[first..];
    let last = frac.iter().rposition(|&c| c != b'0').map_or(0, |p| p + 1);
    let frac = &frac[..last];
    let precision = usize::from(precision.min(38));
    let digits_of =
        |digits: &[u8], acc: i128| digits.iter().fold(acc, |acc, &d| acc * 10 + i128::from(d - b'0'));
    let unscaled = if scale >= 0 {
        let scale = scale as usize;
        if frac.len() > scale {
            return Err(DECIMAL_TOO_PRECISE);
        }
        if int.len() + scale > precision {
            return Err(DECIMAL_TOO_LARGE);
        }
        digits_of(frac, digits_of(int, 0)) * POW10[scale - frac.len()]
    } else {
        let drop = usize::from(scale.unsigned_abs());
        if !frac.is_empty()
            || (!int.is_empty() && (int.len() < drop || int[int.len() - drop..].iter().any(|&c| c != b'0')))
        {
            return Err(DECIMAL_TOO_PRECISE);
        }
        let kept = &int[..int.len().saturating_sub(drop)];
        if kept.len() > precision {
            return Err(DECIMAL_TOO_LARGE);
        }
        digits_of(kept, 0)
    };
    Ok(if negative { -unscaled } else { unscaled })
}

/// Decodes a `bytea` in hex format (`\x0a1b`, `\x` is empty) into `out` (cleared first). The
/// older escape format (`a\\b\001`) is read too.
pub fn parse_bytea(b: &[u8], out: &mut Vec<u8>) -> Result<(), ParseError> {
    out.clear();
    if let Some(hex) = b.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err(err("hex bytea has an odd number of digits"));
        }
        out.reserve(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            let hi = hex_digit(pair[0]).ok_or(err("not a hex digit in bytea"))?;
            let lo = hex_digit(pair[1]).ok_or(err("not a hex digit in bytea"))?;
            out.push(hi << 4 | lo);
        }
        return Ok(());
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = b.get(i + 1..i + 4).ok_or(err("invalid escape in bytea"))?;
            if !octal.iter().all(|c| (b'0'..=b'7').contains(c)) || octal[0] > b'3' {
                return Err(err("invalid escape in bytea"));
            }
            out.push((octal[0] - b'0') << 6 | (octal[1] - b'0') << 3 | (octal[2] - b'0'));
            i += 4;
        }
    }
    Ok(())
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const MICROS_PER_SECOND: i64 = 1_000_000;
pub(crate) const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// `infinity` as a date: 9999-12-31.
pub const DATE_INFINITY: i32 = 2_932_896;
/// `-infinity` as a date: 0001-01-01.
pub const DATE_NEG_INFINITY: i32 = -719_162;
/// `infinity` as a timestamp: 9999-12-31 23:59:59.999999.
pub const TIMESTAMP_INFINITY: i64 = DATE_INFINITY as i64 * MICROS_PER_DAY + MICROS_PER_DAY - 1;
/// `-infinity` as a timestamp: 0001-01-01 00:00:00.
pub const TIMESTAMP_NEG_INFINITY: i64 = DATE_NEG_INFINITY as i64 * MICROS_PER_DAY;
/// `24:00:00` as a time: 23:59:59.999999.
pub const TIME_END_OF_DAY: i64 = MICROS_PER_DAY - 1;

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar, with astronomical year
/// numbering (1 BC is year 0).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count from 0000-03-01 so that the leap day ends each counted year.
    let (y, m) = if month <= 2 {
        (year - 1, i64::from(month) + 9)
    } else {
        (year, i64::from(month) - 3)
    };
    let cycle = y.div_euclid(400); // 400-year cycles of 146097 days
    let year_of_cycle = y - cycle * 400;
    let day_of_year = (153 * m + 2) / 5 + i64::from(day) - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    cycle * 146_097 + day_of_cycle - 719_468
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A position in a value being parsed.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8, e: ParseError) -> Result<(), ParseError> {
        if self.eat(c) { Ok(()) } else { Err(e) }
    }

    /// Between `min` and `max` ASCII digits as a number.
    fn number(&mut self, min: usize, max: usize, e: ParseError) -> Result<i64, ParseError> {
        let start = self.i;
        let mut n: i64 = 0;
        while self.i < self.b.len() && self.i - start < max && self.b[self.i].is_ascii_digit() {
            n = n * 10 + i64::from(self.b[self.i] - b'0');
            self.i += 1;
        }
        if self.i - start < min { Err(e) } else { Ok(n) }
    }

    fn at_end(&self) -> bool {
        self.i == self.b.len()
    }
}

const BAD_DATE: ParseError = err("not a date (expected YYYY-MM-DD)");
const BAD_TIME: ParseError = err("not a time (expected HH:MM:SS[.ffffff])");
const BAD_TIMESTAMP: ParseError = err("not a timestamp (expected YYYY-MM-DD HH:MM:SS[.ffffff])");
const BAD_OFFSET: ParseError = err("not a time zone offset (expected +HH, +HH:MM or +HH:MM:SS)");

/// Strips PostgreSQL's ` BC` suffix.
fn strip_bc(b: &[u8]) -> (&[u8], bool) {
    match b.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (b, false),
    }
}

/// `YYYY-MM-DD` (year of at least 4 digits) as days since 1970-01-01.
fn date_part(c: &mut Cursor<'_>, bc: bool) -> Result<i64, ParseError> {
    let year = c.number(4, 7, BAD_DATE)?;
    c.expect(b'-', BAD_DATE)?;
    let month = c.number(2, 2, BAD_DATE)? as u32;
    c.expect(b'-', BAD_DATE)?;
    let day = c.number(2, 2, BAD_DATE)? as u32;
    if year == 0 {
        return Err(err("year 0 does not exist (1 BC precedes 1 AD)"));
    }
    let year = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(err("no such day in the calendar"));
    }
    Ok(days_from_civil(year, month, day))
}

/// `HH:MM:SS[.f{1,6}]` as µs since midnight; `allow_24` admits `24:00:00` (clamped).
fn time_part(c: &mut Cursor<'_>, bad: ParseError, allow_24: bool) -> Result<i64, ParseError> {
    let hour = c.number(2, 2, bad)?;
    c.expect(b':', bad)?;
    let minute = c.number(2, 2, bad)?;
    c.expect(b':', bad)?;
    let second = c.number(2, 2, bad)?;
    let mut micros = 0;
    if c.eat(b'.') {
        let start = c.i;
        micros = c.number(1, 6, bad)?;
        micros *= [100_000, 10_000, 1_000, 100, 10, 1][c.i - start - 1];
        if c.b.get(c.i).is_some_and(u8::is_ascii_digit) {
            return Err(err("more than 6 fraction digits; Iceberg keeps microseconds"));
        }
    }
    if minute > 59 || second > 59 {
        return Err(bad);
    }
    if hour == 24 && allow_24 && minute == 0 && second == 0 && micros == 0 {
        return Ok(TIME_END_OF_DAY);
    }
    if hour > 23 {
        return Err(bad);
    }
    Ok(((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND + micros)
}

/// Reads a `date` as days since 1970-01-01; `infinity` and `-infinity` become
/// [`DATE_INFINITY`] and [`DATE_NEG_INFINITY`].
pub fn parse_date(b: &[u8]) -> Result<i32, ParseError> {
    match b {
        b"infinity" => return Ok(DATE_INFINITY),
        b"-infinity" => return Ok(DATE_NEG_INFINITY),
        _ => {}
    }
    let (b, bc) = strip_bc(b);
    let mut c = Cursor { b, i: 0 };
    let days = date_part(&mut c, bc)?;
    if !c.at_end() {
        return Err(BAD_DATE);
    }
    i32::try_from(days).map_err(|_| err("date out of range"))
}

/// Reads a `time` as µs since midnight; `24:00:00` becomes [`TIME_END_OF_DAY`].
pub fn parse_time(b: &[u8]) -> Result<i64, ParseError> {
    let mut c = Cursor { b, i: 0 };
    let micros = time_part(&mut c, BAD_TIME, true)?;
    if !c.at_end() {
        return Err(BAD_TIME);
    }
    Ok(micros)
}

pub(crate) fn timestamp_micros(b: &[u8], with_zone: bool) -> Result<i64, ParseError> {
    match b {
        b"infinity" => return Ok(TIMESTAMP_INFINITY),
        b"-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        _ => {}
    }
    let (b, bc) = strip_bc(b);
    let mut c = Cursor { b, i: 0 };
    let days = date_part(&mut c, bc).map_err(|e| if e == BAD_DATE { BAD_TIMESTAMP } else { e })?;
    c.expect(b' ', BAD_TIMESTAMP)?;
    let time = time_part(&mut c, BAD_TIMESTAMP, false)?;
    let mut offset = 0;
    if with_zone {
        let sign = if c.eat(b'+') {
            1
        } else if c.eat(b'-') {
            -1
        } else {
            return Err(BAD_OFFSET);
        };
        let hours = c.number(2, 2, BAD_OFFSET)?;
        let mut minutes = 0;
        let mut seconds = 0;
        if c.eat(b':') {
            minutes = c.number(2, 2, BAD_OFFSET)?;
            if c.eat(b':') {
                seconds = c.number(2, 2, BAD_OFFSET)?;
            }
        }
        if minutes > 59 || seconds > 59 {
            return Err(BAD_OFFSET);
        }
        offset = sign * ((hours * 60 + minutes) * 60 + seconds) * MICROS_PER_SECOND;
    }
    if !c.at_end() {
        return Err(if with_zone || (c.b[c.i] != b'+' && c.b[c.i] != b'-') {
            BAD_TIMESTAMP
        } else {
            err("a timestamp without time zone has no offset")
        });
    }
    days.checked_mul(MICROS_PER_DAY)
        .and_then(|d| d.checked_add(time))
        .and_then(|t| t.checked_sub(offset))
        .ok_or(err("timestamp out of the range of Iceberg timestamps"))
}

/// Reads a `timestamp` as µs since 1970-01-01 00:00:00; `infinity` and `-infinity` become
/// [`TIMESTAMP_INFINITY`] and [`TIMESTAMP_NEG_INFINITY`].
pub fn parse_timestamp(b: &[u8]) -> Result<i64, ParseError> {
    timestamp_micros(b, false)
}

/// Reads a `timestamptz` (with any `+HH`, `+HH:MM` or `+HH:MM:SS` offset) as µs since
/// 1970-01-01 00:00:00 UTC; `infinity` and `-infinity` as for [`parse_timestamp`].
pub fn parse_timestamptz(b: &[u8]) -> Result<i64, ParseError> {
    timestamp_micros(b, true)
}

pub(crate) const MULTI_DIMENSIONAL: ParseError =
    err("multi-dimensional arrays are not supported; tarn maps one-dimensional arrays to Iceberg lists");
const BAD_ARRAY: ParseError = err("not an array literal");

/// Calls `element` with each element of a one-dimensional array literal (`{1,2,NULL}`,
/// `{"a,b","c\"d"}`, `[0:2]={1,2,3}`), unquoted and unescaped; `None` is an unquoted NULL.
/// `scratch` holds unescaped elements. A multi-dimensional array is an error.
pub fn parse_array<E: From<ParseError>>(
    text: &[u8],
    scratch: &mut Vec<u8>,
    mut element: impl FnMut(Option<&[u8]>) -> Result<(), E>,
) -> Result<(), E> {
    let b = text;
    let skip_ws = |mut i: usize| {
        while i < b.len() && is_array_space(b[i]) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if b.get(i) == Some(&b'[') {
        let mut dimensions = 0;
        while b.get(i) == Some(&b'[') {
            let close = b[i..].iter().position(|&c| c == b']').ok_or(BAD_ARRAY)?;
            i += close + 1;
            dimensions += 1;
        }
        if dimensions > 1 {
            return Err(MULTI_DIMENSIONAL.into());
        }
        i = skip_ws(i);
        if b.get(i) != Some(&b'=') {
            return Err(BAD_ARRAY.into());
        }
        i = skip_ws(i + 1);
    }
    if b.get(i) != Some(&b'{') {
        return Err(BAD_ARRAY.into());
    }
    i = skip_ws(i + 1);
    if b.get(i) == Some(&b'}') {
        return if skip_ws(i + 1) == b.len() {
            Ok(())
        } else {
            Err(BAD_ARRAY.into())
        };
    }
    loop {
        i = skip_ws(i);
        match b.get(i) {
            None => return Err(err("unterminated array literal").into()),
            Some(b'{') => return Err(MULTI_DIMENSIONAL.into()),
            Some(b'"') => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    match b.get(j) {
                        None => return Err(err("unterminated quoted array element").into()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            escaped = true;
                            j += 2;
                        }
                        Some(_) => j += 1,
                    }
                }
                let raw = &b[start..j];
                if escaped {
                    unescape_into(raw, scratch);
                    element(Some(&scratch[..]))?;
                } else {
                    element(Some(raw))?;
                }
                i = skip_ws(j + 1);
            }
            Some(_) => {
                let start = i;
                let mut end = i; // just past the last byte that is not trailing white space
                let mut escaped = false;
                while let Some(&c) = b.get(i) {
                    match c {
                        b',' | b'}' => break,
                        b'{' | b'"' => {
                            return Err(err("unexpected '{' or '\"' in an unquoted array element").into());
                        }
                        b'\\' => {
                            if i + 1 >= b.len() {
                                return Err(err("unterminated escape in an array element").into());
                            }
                            escaped = true;
                            i += 2;
                            end = i;
                        }
                        c if is_array_space(c) => i += 1,
                        _ => {
                            i += 1;
                            end = i;
                        }
                    }
                }
                let raw = &b[start..end];
                if escaped {
                    unescape_into(raw, scratch);
                    element(Some(&scratch[..]))?;
                } else if raw.eq_ignore_ascii_case(b"NULL") {
                    element(None)?;
                } else {
                    element(Some(raw))?;
                }
            }
        }
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                return if skip_ws(i + 1) == b.len() {
                    Ok(())
                } else {
                    Err(err("unexpected characters after the array literal").into())
                };
            }
            _ => return Err(err("expected ',' or '}' in an array literal").into()),
        }
    }
}

/// Every element of an array literal, unescaped and copied (`None` is NULL); see
/// [`parse_array`], which does not copy.
pub fn array_elements(text: &[u8]) -> Result<Vec<Option<Vec<u8>>>, ParseError> {
    let mut scratch = Vec::new();
    let mut elements = Vec::new();
    parse_array::<ParseError>(text, &mut scratch, |e| {
        elements.push(e.map(<[u8]>::to_vec));
        Ok(())
    })?;
    Ok(elements)
}

pub(crate) fn is_array_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn unescape_into(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            i += 1;
        }
        out.push(raw[i]);
        i += 1;
    }
}
