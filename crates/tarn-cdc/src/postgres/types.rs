//! Maps PostgreSQL column types to Iceberg/Arrow types, and reads PostgreSQL's text output of
//! values into Arrow arrays.
//!
//! [`resolve`] turns a column's type OID and type modifier (from a `pgoutput` Relation message
//! or from `pg_attribute`) into a [`ColumnType`]; [`arrow_type`] gives its Arrow type, which is
//! exactly the type `iceberg` reads and writes for the Iceberg type in `docs/cdc-types.md`
//! (that file is the user-facing table of the mapping). A [`ColumnBuilder`] appends values in
//! PostgreSQL's **text** output format — what both `pgoutput` and `COPY ... TO STDOUT` send —
//! and finishes an Arrow array of that type.
//!
//! Contract:
//!
//! - Values were produced with the session settings tarn always sets: `DateStyle=ISO, MDY`,
//!   `IntervalStyle=iso_8601`, `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`,
//!   `client_encoding=UTF8`. Numbers, dates and times are parsed from these formats exactly;
//!   a value that does not parse, or does not fit the Iceberg type, is an
//!   [`ErrorKind::InvalidInput`] error naming the column, the value and the reason. Nothing is
//!   rounded or truncated silently; the documented exceptions are the clamps of `infinity`,
//!   `-infinity` and `24:00:00`.
//! - Built-in types (OID below 16384) are resolved from a fixed table. User types (enums,
//!   domains, arrays of them, extension types) are looked up in a [`TypeCatalog`], which the
//!   caller fills with [`TYPE_INFO_QUERY`] for every column type OID ≥ 16384; the query follows
//!   array elements and domain bases itself.
//! - A failed [`ColumnBuilder::append`] appends nothing: the builder stays usable and its
//!   length is unchanged.
//!
//! Why our own: the PostgreSQL client crates decode values from the binary format into Rust
//! scalars one at a time, and no maintained crate reads PostgreSQL's text output into Arrow
//! arrays. Parsing the text directly from bytes into Arrow builders is also what keeps the hot
//! path (tens of thousands of changes and hundreds of thousands of snapshot rows per second)
//! free of per-value allocations.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListArray, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use tarn_core::{Error, ErrorKind, Result};

/// The first OID PostgreSQL assigns to user-defined objects; types below it are built in.
pub const FIRST_NORMAL_OID: u32 = 16_384;

/// The time zone of `timestamptz` arrays: UTC, spelled the way `iceberg` spells it.
pub const TIMESTAMPTZ_ZONE: &str = "+00:00";

/// The name of the element field of list arrays (Iceberg's and `iceberg`'s name).
pub const LIST_ELEMENT_NAME: &str = "element";

/// The catalog facts about one PostgreSQL type that [`resolve`] needs (a row of `pg_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTypeInfo {
    /// The type's OID.
    pub oid: u32,
    /// `typname`.
    pub name: String,
    /// The name of the type's schema.
    pub namespace: String,
    /// `typtype`: `b` base, `e` enum, `d` domain, `c` composite, `r` range, `m` multirange,
    /// `p` pseudo.
    pub typtype: char,
    /// The element type of an array type (`typelem` of types in category `A`), 0 otherwise.
    pub elem: u32,
    /// The base type of a domain (`typbasetype`), 0 otherwise.
    pub base_type: u32,
    /// The type modifier a domain applies to its base type (`typtypmod`), -1 if none.
    pub base_typmod: i32,
    /// `typcategory`: `A` array, `S` string, `N` numeric, `U` user-defined, ...
    pub category: char,
}

/// Looks up [`PgTypeInfo`] of user-defined types by OID.
pub trait TypeCatalog {
    /// The type with this OID, `None` if the catalog does not hold it.
    fn lookup(&self, oid: u32) -> Option<PgTypeInfo>;
}

impl<S: std::hash::BuildHasher> TypeCatalog for HashMap<u32, PgTypeInfo, S> {
    fn lookup(&self, oid: u32) -> Option<PgTypeInfo> {
        self.get(&oid).cloned()
    }
}

/// SQL returning the [`PgTypeInfo`] rows for the type OIDs in `$1` (an `oid[]`), and, through
/// array elements and domain bases, for every type those depend on. The columns are, in
/// order: `oid` (oid), `name` (text), `namespace` (text), `typtype` (text, one character),
/// `elem` (oid), `base_type` (oid), `base_typmod` (int4), `category` (text, one character).
///
/// Pass at least every column type OID ≥ [`FIRST_NORMAL_OID`]; passing all column type OIDs
/// is fine (built-in rows are simply not needed).
pub const TYPE_INFO_QUERY: &str = "\
WITH RECURSIVE wanted(oid) AS (
    SELECT unnest($1::oid[])
  UNION
    SELECT dep.oid
    FROM wanted w
    JOIN pg_catalog.pg_type t ON t.oid = w.oid
    CROSS JOIN LATERAL (VALUES (t.typelem), (t.typbasetype)) AS dep(oid)
    WHERE dep.oid <> 0
)
SELECT t.oid,
       t.typname::text AS name,
       n.nspname::text AS namespace,
       t.typtype::text AS typtype,
       CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0::oid END AS elem,
       t.typbasetype AS base_type,
       t.typtypmod AS base_typmod,
       t.typcategory::text AS category
FROM wanted w
JOIN pg_catalog.pg_type t ON t.oid = w.oid
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace";

/// How unconstrained `numeric` columns (no precision and scale) are mapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NumericMode {
    /// `decimal(38, 18)`; a value that does not fit is an error.
    #[default]
    Decimal,
    /// `string`, the value's text (any size, `NaN` and infinities included).
    Text,
}

/// Choices of the type mapping (`cdc.unconstrained_numeric`, `cdc.unsupported_types`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeOptions {
    /// How unconstrained `numeric` is mapped.
    pub unconstrained_numeric: NumericMode,
    /// Carry types tarn cannot map as their text form (`string`) instead of refusing them.
    pub unsupported_as_text: bool,
}

/// The tarn type of a column: which Iceberg type it is stored as and how its text is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// `boolean`.
    Bool,
    /// `smallint`, stored as Iceberg `int` (Iceberg has no 16-bit integer).
    Int16,
    /// `int`.
    Int32,
    /// `long`.
    Int64,
    /// `float`.
    Float32,
    /// `double`.
    Float64,
    /// `decimal(precision, scale)`, 1 ≤ precision ≤ 38, 0 ≤ scale ≤ precision.
    Decimal {
        /// Total number of digits.
        precision: u8,
        /// Digits after the decimal point.
        scale: i8,
    },
    /// `string`: the value's text as PostgreSQL prints it.
    Text,
    /// `binary`, from `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `time` (µs).
    Time,
    /// `timestamp` (µs, no zone).
    Timestamp,
    /// `timestamptz` (µs, UTC).
    TimestampTz,
    /// `list<element>`, elements nullable, from a one-dimensional array.
    List(Box<ColumnType>),
}

impl fmt::Display for ColumnType {
    /// The Iceberg type name (`int`, `decimal(10,2)`, `list<string>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Bool => f.write_str("boolean"),
            ColumnType::Int16 | ColumnType::Int32 => f.write_str("int"),
            ColumnType::Int64 => f.write_str("long"),
            ColumnType::Float32 => f.write_str("float"),
            ColumnType::Float64 => f.write_str("double"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Text => f.write_str("string"),
            ColumnType::Bytea => f.write_str("binary"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Time => f.write_str("time"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::TimestampTz => f.write_str("timestamptz"),
            ColumnType::List(element) => write!(f, "list<{element}>"),
        }
    }
}

/// The Arrow type of a column type's arrays (what `iceberg` maps the Iceberg type to, except
/// that `binary` is `Binary` here and list fields carry no field-id metadata).
pub fn arrow_type(t: &ColumnType) -> DataType {
    match t {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int16 | ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
        ColumnType::Text => DataType::Utf8,
        ColumnType::Bytea => DataType::Binary,
        ColumnType::Date => DataType::Date32,
        ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(TIMESTAMPTZ_ZONE.into())),
        ColumnType::List(element) => DataType::List(list_field(element)),
    }
}

fn list_field(element: &ColumnType) -> FieldRef {
    Arc::new(Field::new(LIST_ELEMENT_NAME, arrow_type(element), true))
}

/// Resolves the type of `column` (type OID and type modifier as in `pg_attribute`) to a
/// [`ColumnType`]; see `docs/cdc-types.md` for the mapping.
///
/// Errors: a type tarn cannot map is [`ErrorKind::InvalidInput`] naming the column and the
/// type (unless [`TypeOptions::unsupported_as_text`]); a user type missing from `catalog` is
/// [`ErrorKind::Internal`] (the caller did not load it).
pub fn resolve(
    column: &str,
    type_oid: u32,
    typmod: i32,
    catalog: &dyn TypeCatalog,
    options: &TypeOptions,
) -> Result<ColumnType> {
    match resolve_oid(type_oid, typmod, catalog, options, 0) {
        Ok(t) => Ok(t),
        Err(Unresolved::Unsupported) if options.unsupported_as_text => Ok(ColumnType::Text),
        Err(Unresolved::Unsupported) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "column {column} has type {} (oid {type_oid}), which tarn cannot map to an Iceberg \
                 type; set cdc.unsupported_types = \"text\" to carry it as its text form",
                type_name(type_oid, typmod, catalog)
            ),
        )),
        Err(Unresolved::Missing(oid)) => Err(Error::new(
            ErrorKind::Internal,
            format!(
                "column {column} has type oid {type_oid}, and type oid {oid} is not in the type catalog: \
                 load every column type with TYPE_INFO_QUERY before resolving"
            ),
        )),
    }
}

enum Unresolved {
    Unsupported,
    Missing(u32),
}

/// Domains over domains deeper than this are refused (and a cyclic catalog cannot loop).
const MAX_TYPE_DEPTH: u32 = 16;

fn resolve_oid(
    oid: u32,
    typmod: i32,
    catalog: &dyn TypeCatalog,
    options: &TypeOptions,
    depth: u32,
) -> Result<ColumnType, Unresolved> {
    if depth > MAX_TYPE_DEPTH {
        return Err(Unresolved::Unsupported);
    }
    if oid < FIRST_NORMAL_OID {
        if let Some(t) = builtin_scalar(oid) {
            return Ok(t);
        }
        if oid == NUMERIC_OID {
            return numeric_type(typmod, options);
        }
        if let Some(elem) = builtin_array_element(oid) {
            return list_of(elem, typmod, catalog, options, depth);
        }
        return Err(Unresolved::Unsupported);
    }
    let info = catalog.lookup(oid).ok_or(Unresolved::Missing(oid))?;
    match info.typtype {
        'e' => Ok(ColumnType::Text),
        'd' => resolve_oid(info.base_type, info.base_typmod, catalog, options, depth + 1),
        'b' if info.category == 'A' && info.elem != 0 => list_of(info.elem, typmod, catalog, options, depth),
        // Extension types of the string category (citext and the like) print as plain text.
        'b' if info.category == 'S' || info.name == "citext" => Ok(ColumnType::Text),
        _ => Err(Unresolved::Unsupported),
    }
}

fn list_of(
    elem: u32,
    typmod: i32,
    catalog: &dyn TypeCatalog,
    options: &TypeOptions,
    depth: u32,
) -> Result<ColumnType, Unresolved> {
    // An array column's type modifier applies to its elements (numeric(10,2)[]).
    match resolve_oid(elem, typmod, catalog, options, depth + 1)? {
        ColumnType::List(_) => Err(Unresolved::Unsupported),
        element => Ok(ColumnType::List(Box::new(element))),
    }
}

const NUMERIC_OID: u32 = 1700;
const NUMERIC_ARRAY_OID: u32 = 1231;

fn builtin_scalar(oid: u32) -> Option<ColumnType> {
    Some(match oid {
        16 => ColumnType::Bool,
        17 => ColumnType::Bytea,
        21 => ColumnType::Int16,
        23 => ColumnType::Int32,
        20 | 26 => ColumnType::Int64,
        700 => ColumnType::Float32,
        701 => ColumnType::Float64,
        1082 => ColumnType::Date,
        1083 => ColumnType::Time,
        1114 => ColumnType::Timestamp,
        1184 => ColumnType::TimestampTz,
        // char, name, text, json, xml, cidr, macaddr8, money, macaddr, inet, bpchar, varchar,
        // interval, timetz, bit, varbit, uuid, tsvector, jsonb
        18 | 19 | 25 | 114 | 142 | 650 | 774 | 790 | 829 | 869 | 1042 | 1043 | 1186 | 1266 | 1560 | 1562
        | 2950 | 3614 | 3802 => ColumnType::Text,
        _ => return None,
    })
}

/// The element type of the built-in array types of the supported built-in types.
pub(crate) fn builtin_array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,   // _bool
        1001 => 17,   // _bytea
        1002 => 18,   // _char
        1003 => 19,   // _name
        1005 => 21,   // _int2
        1007 => 23,   // _int4
        1009 => 25,   // _text
        1014 => 1042, // _bpchar
        1015 => 1043, // _varchar
        1016 => 20,   // _int8
        1021 => 700,  // _float4
        1022 => 701,  // _float8
        1028 => 26,   // _oid
        199 => 114,   // _json
        143 => 142,   // _xml
        791 => 790,   // _money
        1182 => 1082, // _date
        1183 => 1083, // _time
        1115 => 1114, // _timestamp
        1185 => 1184, // _timestamptz
        1187 => 1186, // _interval
        1270 => 1266, // _timetz
        1561 => 1560, // _bit
        1563 => 1562, // _varbit
        NUMERIC_ARRAY_OID => NUMERIC_OID,
        2951 => 2950, // _uuid
        3807 => 3802, // _jsonb
        1041 => 869,  // _inet
        651 => 650,   // _cidr
        1040 => 829,  // _macaddr
        775 => 774,   // _macaddr8
        3643 => 3614, // _tsvector
        _ => return None,
    })
}

/// Names of built-in types tarn does not map, for error messages when the catalog lacks them.
fn builtin_unsupported_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        22 => "int2vector",
        24 => "regproc",
        27 => "tid",
        28 => "xid",
        29 => "cid",
        30 => "oidvector",
        600 => "point",
        601 => "lseg",
        602 => "path",
        603 => "box",
        604 => "polygon",
        628 => "line",
        718 => "circle",
        1017 => "_point",
        1020 => "_box",
        1027 => "_polygon",
        2205 => "regclass",
        2206 => "regtype",
        3220 => "pg_lsn",
        3615 => "tsquery",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        4072 => "jsonpath",
        4451 => "int4multirange",
        4532 => "nummultirange",
        4533 => "tsmultirange",
        4534 => "tstzmultirange",
        4535 => "datemultirange",
        4536 => "int8multirange",
        5038 => "pg_snapshot",
        5069 => "xid8",
        _ => return None,
    })
}

fn type_name(oid: u32, typmod: i32, catalog: &dyn TypeCatalog) -> String {
    if let (NUMERIC_OID | NUMERIC_ARRAY_OID, Some((precision, scale))) = (oid, numeric_typmod(typmod)) {
        let brackets = if oid == NUMERIC_ARRAY_OID { "[]" } else { "" };
        return format!("numeric({precision},{scale}){brackets}");
    }
    if let Some(info) = catalog.lookup(oid) {
        return match info.namespace.as_str() {
            "" | "pg_catalog" | "public" => info.name,
            namespace => format!("{namespace}.{}", info.name),
        };
    }
    builtin_unsupported_name(oid).unwrap_or("unknown").to_string()
}

/// Decodes a `numeric` type modifier: `(precision, scale)`, `None` when unconstrained.
/// The scale is an 11-bit signed field (negative scales exist since PostgreSQL 15).
pub fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((precision, scale))
}

fn numeric_type(typmod: i32, options: &TypeOptions) -> Result<ColumnType, Unresolved> {
    let Some((precision, scale)) = numeric_typmod(typmod) else {
        return Ok(match options.unconstrained_numeric {
            NumericMode::Decimal => ColumnType::Decimal {
                precision: 38,
                scale: 18,
            },
            NumericMode::Text => ColumnType::Text,
        });
    };
    // numeric(p, s) with s < 0 holds integers of up to p - s digits; s > p holds values below
    // 10^(p - s) with s fraction digits. Both become a decimal with scale ≤ precision.
    let (precision, scale) = if scale < 0 {
        (precision - scale, 0)
    } else {
        (precision.max(scale), scale)
    };
    if !(1..=38).contains(&precision) {
        return Err(Unresolved::Unsupported);
    }
    Ok(ColumnType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

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

const fn err(reason: &'static str) -> ParseError {
    ParseError { reason }
}

const DECIMAL_NOT_FINITE: ParseError = err("Iceberg decimals hold no NaN or infinity");
const DECIMAL_TOO_LARGE: ParseError = err("the value has more integer digits than the decimal holds");
const DECIMAL_TOO_PRECISE: ParseError =
    err("the value has more fraction digits than the decimal's scale, and tarn never rounds");
const DECIMAL_HINT: &str = "; for an unconstrained numeric column, set cdc.unconstrained_numeric = \"text\" \
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

const POW10: [i128; 39] = {
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
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

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

fn timestamp_micros(b: &[u8], with_zone: bool) -> Result<i64, ParseError> {
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

const MULTI_DIMENSIONAL: ParseError =
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

fn is_array_space(c: u8) -> bool {
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

/// Appends PostgreSQL text values of one column to an Arrow array of
/// [`arrow_type`]`(column type)`.
pub struct ColumnBuilder {
    column: String,
    column_type: ColumnType,
    values: Values,
}

enum Values {
    Bool(BooleanBuilder),
    Int16(Int32Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Bytea(BinaryBuilder, Vec<u8>),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    TimestampTz(TimestampMicrosecondBuilder),
    List(Box<ListValues>),
}

struct ListValues {
    field: FieldRef,
    element_type: ColumnType,
    elements: Values,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    scratch: Vec<u8>,
    /// Ranges of `elements` appended by values that then failed; `finish` leaves them out.
    garbage: Vec<std::ops::Range<usize>>,
}

/// Why [`Values::append`] failed.
enum AppendError {
    Value(ParseError),
    Element {
        index: usize,
        value: String,
        element_type: ColumnType,
        reason: ParseError,
    },
}

impl From<ParseError> for AppendError {
    fn from(e: ParseError) -> Self {
        AppendError::Value(e)
    }
}

impl Values {
    fn new(t: &ColumnType, capacity: usize) -> Self {
        match t {
            ColumnType::Bool => Values::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Int16 => Values::Int16(Int32Builder::with_capacity(capacity)),
            ColumnType::Int32 => Values::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => Values::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float32 => Values::Float32(Float32Builder::with_capacity(capacity)),
            ColumnType::Float64 => Values::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Decimal { precision, scale } => Values::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)
                    .expect("ColumnType::Decimal has 1 <= precision <= 38 and scale <= precision"),
                *precision,
                *scale,
            ),
            ColumnType::Text => Values::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
            ColumnType::Bytea => {
                Values::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 16), Vec::new())
            }
            ColumnType::Date => Values::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Time => Values::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            ColumnType::Timestamp => Values::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity)),
            ColumnType::TimestampTz => Values::TimestampTz(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(TIMESTAMPTZ_ZONE),
            ),
            ColumnType::List(element) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Values::List(Box::new(ListValues {
                    field: list_field(element),
                    element_type: (**element).clone(),
                    elements: Values::new(element, capacity * 4),
                    offsets,
                    nulls: NullBufferBuilder::new(capacity),
                    scratch: Vec::new(),
                    garbage: Vec::new(),
                }))
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            Values::Bool(b) => b.append_null(),
            Values::Int16(b) | Values::Int32(b) => b.append_null(),
            Values::Int64(b) => b.append_null(),
            Values::Float32(b) => b.append_null(),
            Values::Float64(b) => b.append_null(),
            Values::Decimal(b, ..) => b.append_null(),
            Values::Text(b) => b.append_null(),
            Values::Bytea(b, _) => b.append_null(),
            Values::Date(b) => b.append_null(),
            Values::Time(b) => b.append_null(),
            Values::Timestamp(b) | Values::TimestampTz(b) => b.append_null(),
            Values::List(l) => {
                let last = *l.offsets.last().expect("offsets start with 0");
                l.offsets.push(last);
                l.nulls.append_null();
            }
        }
    }

    /// Appends one non-NULL value; on error nothing is appended (elements a list value
    /// appended before failing are recorded as garbage, which `finish` leaves out).
    fn append(&mut self, v: &[u8]) -> Result<(), AppendError> {
        match self {
            Values::Bool(b) => b.append_value(parse_bool(v)?),
            Values::Int16(b) => {
                let n = parse_i64(v)?;
                b.append_value(
                    i16::try_from(n)
                        .map_err(|_| err("integer out of range for smallint"))?
                        .into(),
                );
            }
            Values::Int32(b) => {
                let n = parse_i64(v)?;
                b.append_value(i32::try_from(n).map_err(|_| err("integer out of range for int"))?);
            }
            Values::Int64(b) => b.append_value(parse_i64(v)?),
            Values::Float32(b) => b.append_value(parse_f32(v)?),
            Values::Float64(b) => b.append_value(parse_f64(v)?),
            Values::Decimal(b, precision, scale) => b.append_value(parse_decimal(v, *precision, *scale)?),
            Values::Text(b) => b.append_value(std::str::from_utf8(v).map_err(|_| err("not valid UTF-8"))?),
            Values::Bytea(b, scratch) => {
                parse_bytea(v, scratch)?;
                b.append_value(&scratch[..]);
            }
            Values::Date(b) => b.append_value(parse_date(v)?),
            Values::Time(b) => b.append_value(parse_time(v)?),
            Values::Timestamp(b) => b.append_value(parse_timestamp(v)?),
            Values::TimestampTz(b) => b.append_value(parse_timestamptz(v)?),
            Values::List(l) => {
                let ListValues {
                    element_type,
                    elements,
                    offsets,
                    nulls,
                    scratch,
                    garbage,
                    ..
                } = &mut **l;
                let start = *offsets.last().expect("offsets start with 0");
                let before = elements.len();
                let mut index = 0;
                let parsed = parse_array(v, scratch, |element| {
                    index += 1;
                    match element {
                        None => elements.append_null(),
                        Some(e) => elements.append(e).map_err(|reason| AppendError::Element {
                            index,
                            value: shown(e),
                            element_type: element_type.clone(),
                            reason: match reason {
                                AppendError::Value(r) | AppendError::Element { reason: r, .. } => r,
                            },
                        })?,
                    }
                    Ok::<(), AppendError>(())
                });
                let added = elements.len() - before;
                if let Err(e) = parsed {
                    if added > 0 {
                        garbage.push(before..before + added);
                    }
                    return Err(e);
                }
                let end = i32::try_from(added)
                    .ok()
                    .and_then(|n| start.checked_add(n))
                    .ok_or(err("more than 2^31 list elements in one batch"))?;
                offsets.push(end);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Values::Bool(b) => b.len(),
            Values::Int16(b) | Values::Int32(b) => b.len(),
            Values::Int64(b) => b.len(),
            Values::Float32(b) => b.len(),
            Values::Float64(b) => b.len(),
            Values::Decimal(b, ..) => b.len(),
            Values::Text(b) => b.len(),
            Values::Bytea(b, _) => b.len(),
            Values::Date(b) => b.len(),
            Values::Time(b) => b.len(),
            Values::Timestamp(b) | Values::TimestampTz(b) => b.len(),
            Values::List(l) => l.offsets.len() - 1,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Values::Bool(b) => Arc::new(b.finish()),
            Values::Int16(b) | Values::Int32(b) => Arc::new(b.finish()),
            Values::Int64(b) => Arc::new(b.finish()),
            Values::Float32(b) => Arc::new(b.finish()),
            Values::Float64(b) => Arc::new(b.finish()),
            Values::Decimal(b, ..) => Arc::new(b.finish()),
            Values::Text(b) => Arc::new(b.finish()),
            Values::Bytea(b, _) => Arc::new(b.finish()),
            Values::Date(b) => Arc::new(b.finish()),
            Values::Time(b) => Arc::new(b.finish()),
            Values::Timestamp(b) | Values::TimestampTz(b) => Arc::new(b.finish()),
            Values::List(l) => {
                let mut values = l.elements.finish();
                if !l.garbage.is_empty() {
                    values = without_garbage(&values, &l.garbage);
                    l.garbage.clear();
                }
                let capacity = l.offsets.capacity();
                let offsets = std::mem::replace(&mut l.offsets, Vec::with_capacity(capacity));
                l.offsets.push(0);
                debug_assert_eq!(
                    values.len(),
                    *offsets.last().expect("offsets start with 0") as usize
                );
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                Arc::new(ListArray::new(l.field.clone(), offsets, values, l.nulls.finish()))
            }
        }
    }
}

/// `values` without the `garbage` ranges (sorted, disjoint).
fn without_garbage(values: &ArrayRef, garbage: &[std::ops::Range<usize>]) -> ArrayRef {
    let mut kept = Vec::with_capacity(garbage.len() + 1);
    let mut from = 0;
    for range in garbage {
        kept.push(values.slice(from, range.start - from));
        from = range.end;
    }
    kept.push(values.slice(from, values.len() - from));
    let kept: Vec<&dyn Array> = kept.iter().map(AsRef::as_ref).collect();
    arrow::compute::concat(&kept).expect("slices of one array have one type")
}

/// A value for an error message: at most 64 bytes, lossy UTF-8, quoted.
fn shown(v: &[u8]) -> String {
    const MAX: usize = 64;
    if v.len() <= MAX {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        let mut cut = MAX;
        // Do not split a UTF-8 sequence.
        while cut > 0 && (v[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
        format!("{:?}… ({} bytes)", String::from_utf8_lossy(&v[..cut]), v.len())
    }
}

fn hint_for(t: &ColumnType, reason: ParseError) -> &'static str {
    let decimal = matches!(t, ColumnType::Decimal { .. });
    if decimal
        && (reason == DECIMAL_NOT_FINITE || reason == DECIMAL_TOO_LARGE || reason == DECIMAL_TOO_PRECISE)
    {
        DECIMAL_HINT
    } else {
        ""
    }
}

impl ColumnBuilder {
    /// A builder for `column` of type `t` with room for `capacity` values.
    ///
    /// Panics if `t` is a [`ColumnType::Decimal`] Arrow cannot represent (precision outside
    /// 1..=38 or scale above precision); [`resolve`] never returns one.
    pub fn new(column: impl Into<String>, t: &ColumnType, capacity: usize) -> Self {
        Self {
            column: column.into(),
            column_type: t.clone(),
            values: Values::new(t, capacity),
        }
    }

    /// The column's name.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The column's type.
    pub fn column_type(&self) -> &ColumnType {
        &self.column_type
    }

    /// Appends one value in PostgreSQL's text format; `None` is NULL. On error (naming the
    /// column and the value) nothing is appended.
    pub fn append(&mut self, value: Option<&[u8]>) -> Result<()> {
        let Some(v) = value else {
            self.values.append_null();
            return Ok(());
        };
        self.values.append(v).map_err(|e| {
            let message = match e {
                AppendError::Value(reason) => format!(
                    "column {}: cannot read {} as {}: {reason}{}",
                    self.column,
                    shown(v),
                    self.column_type,
                    hint_for(&self.column_type, reason)
                ),
                AppendError::Element {
                    index,
                    value,
                    element_type,
                    reason,
                } => format!(
                    "column {}: cannot read element {index} {value} of array {} as {element_type}: \
                     {reason}{}",
                    self.column,
                    shown(v),
                    hint_for(&element_type, reason)
                ),
            };
            Error::new(ErrorKind::InvalidInput, message)
        })
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        self.values.append_null();
    }

    /// The number of values appended since the last [`ColumnBuilder::finish`].
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no values were appended since the last [`ColumnBuilder::finish`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The array of the values appended so far, of type [`arrow_type`]; the builder starts
    /// over empty.
    pub fn finish(&mut self) -> ArrayRef {
        self.values.finish()
    }
}

impl fmt::Debug for ColumnBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnBuilder")
            .field("column", &self.column)
            .field("column_type", &self.column_type)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int32Array,
        Int64Array, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    };
    use chrono::{DateTime, Datelike, NaiveDate, Timelike};
    use proptest::prelude::*;

    fn no_catalog() -> HashMap<u32, PgTypeInfo> {
        HashMap::new()
    }

    fn r(oid: u32, typmod: i32) -> Result<ColumnType> {
        resolve("c", oid, typmod, &no_catalog(), &TypeOptions::default())
    }

    fn numeric_mod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + 4
    }

    fn dec(precision: u8, scale: i8) -> ColumnType {
        ColumnType::Decimal { precision, scale }
    }

    fn list(t: ColumnType) -> ColumnType {
        ColumnType::List(Box::new(t))
    }

    /// Builds one column from text values, checking the array's type.
    fn build(t: &ColumnType, values: &[Option<&str>]) -> ArrayRef {
        let mut b = ColumnBuilder::new("c", t, 2);
        for v in values {
            b.append(v.map(str::as_bytes)).unwrap();
        }
        assert_eq!(b.len(), values.len());
        let array = b.finish();
        assert_eq!(array.data_type(), &arrow_type(t));
        assert_eq!(array.len(), values.len());
        assert!(b.is_empty());
        array
    }

    fn one_error(t: &ColumnType, value: &str) -> String {
        let mut b = ColumnBuilder::new("c", t, 1);
        let e = b.append(Some(value.as_bytes())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(b.len(), 0, "a failed append appends nothing");
        e.message().to_string()
    }

    fn downcast<T: 'static>(a: &ArrayRef) -> &T {
        a.as_any().downcast_ref::<T>().unwrap()
    }

    fn info(
        oid: u32,
        name: &str,
        typtype: char,
        elem: u32,
        base: u32,
        base_typmod: i32,
        category: char,
    ) -> PgTypeInfo {
        PgTypeInfo {
            oid,
            name: name.into(),
            namespace: "public".into(),
            typtype,
            elem,
            base_type: base,
            base_typmod,
            category,
        }
    }

    #[test]
    fn builtin_types() {
        use ColumnType::*;
        let expected = [
            (16, Bool),
            (17, Bytea),
            (18, Text),
            (19, Text),
            (20, Int64),
            (21, Int16),
            (23, Int32),
            (25, Text),
            (26, Int64),
            (114, Text),
            (142, Text),
            (650, Text),
            (700, Float32),
            (701, Float64),
            (774, Text),
            (790, Text),
            (829, Text),
            (869, Text),
            (1042, Text),
            (1043, Text),
            (1082, Date),
            (1083, Time),
            (1114, Timestamp),
            (1184, TimestampTz),
            (1186, Text),
            (1266, Text),
            (1560, Text),
            (1562, Text),
            (2950, Text),
            (3614, Text),
            (3802, Text),
        ];
        for (oid, t) in expected {
            assert_eq!(r(oid, -1).unwrap(), t, "oid {oid}");
        }
        let arrays = [
            (1000, Bool),
            (1001, Bytea),
            (1005, Int16),
            (1007, Int32),
            (1009, Text),
            (1016, Int64),
            (1021, Float32),
            (1022, Float64),
            (1182, Date),
            (1183, Time),
            (1115, Timestamp),
            (1185, TimestampTz),
            (2951, Text),
            (3807, Text),
        ];
        for (oid, t) in arrays {
            assert_eq!(r(oid, -1).unwrap(), list(t), "oid {oid}");
        }
    }

    #[test]
    fn numeric_types() {
        assert_eq!(r(1700, numeric_mod(10, 2)).unwrap(), dec(10, 2));
        assert_eq!(r(1700, numeric_mod(38, 0)).unwrap(), dec(38, 0));
        assert_eq!(r(1700, numeric_mod(38, 38)).unwrap(), dec(38, 38));
        assert_eq!(r(1700, -1).unwrap(), dec(38, 18));
        // Captured from PostgreSQL 15: numeric(5,-2) and numeric(2,5).
        assert_eq!(numeric_typmod(329_730), Some((5, -2)));
        assert_eq!(numeric_typmod(131_081), Some((2, 5)));
        assert_eq!(r(1700, 329_730).unwrap(), dec(7, 0));
        assert_eq!(r(1700, 131_081).unwrap(), dec(5, 5));
        assert_eq!(r(1231, numeric_mod(12, 4)).unwrap(), list(dec(12, 4)));
        let text = TypeOptions {
            unconstrained_numeric: NumericMode::Text,
            ..TypeOptions::default()
        };
        assert_eq!(
            resolve("c", 1700, -1, &no_catalog(), &text).unwrap(),
            ColumnType::Text
        );
        assert_eq!(
            resolve("c", 1700, numeric_mod(9, 3), &no_catalog(), &text).unwrap(),
            dec(9, 3)
        );
        let err = r(1700, numeric_mod(39, 2)).unwrap_err();
        assert!(
            err.message()
                .starts_with("column c has type numeric(39,2) (oid 1700)"),
            "{err}"
        );
        let err = r(1231, numeric_mod(40, 0)).unwrap_err();
        assert!(
            err.message()
                .starts_with("column c has type numeric(40,0)[] (oid 1231)"),
            "{err}"
        );
        assert!(r(1700, numeric_mod(37, -2)).is_err());
        let as_text = TypeOptions {
            unsupported_as_text: true,
            ..TypeOptions::default()
        };
        assert_eq!(
            resolve("c", 1700, numeric_mod(50, 2), &no_catalog(), &as_text).unwrap(),
            ColumnType::Text
        );
    }

    #[test]
    fn unsupported_types() {
        let err = resolve("shape", 600, -1, &no_catalog(), &TypeOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            err.message(),
            "column shape has type point (oid 600), which tarn cannot map to an Iceberg type; set \
             cdc.unsupported_types = \"text\" to carry it as its text form"
        );
        let as_text = TypeOptions {
            unsupported_as_text: true,
            ..TypeOptions::default()
        };
        for oid in [600, 603, 1017, 3904, 3615, 4451, 27, 2249] {
            assert!(r(oid, -1).is_err(), "oid {oid}");
            assert_eq!(
                resolve("c", oid, -1, &no_catalog(), &as_text).unwrap(),
                ColumnType::Text
            );
        }
        let mut catalog = no_catalog();
        catalog.insert(17_000, info(17_000, "geometry", 'b', 0, 0, -1, 'U'));
        catalog.insert(17_001, info(17_001, "pair", 'c', 0, 0, -1, 'C'));
        catalog.insert(17_002, info(17_002, "floatrange", 'r', 0, 0, -1, 'R'));
        catalog.insert(17_003, info(17_003, "_geometry", 'b', 17_000, 0, -1, 'A'));
        for oid in 17_000..=17_003 {
            let err = resolve("g", oid, -1, &catalog, &TypeOptions::default()).unwrap_err();
            assert!(err.message().contains(&format!("(oid {oid})")), "{err}");
            assert_eq!(
                resolve("g", oid, -1, &catalog, &as_text).unwrap(),
                ColumnType::Text
            );
        }
        let err = resolve("g", 17_000, -1, &catalog, &TypeOptions::default()).unwrap_err();
        assert!(
            err.message()
                .starts_with("column g has type geometry (oid 17000)"),
            "{err}"
        );
    }

    #[test]
    fn user_types() {
        // The catalog as TYPE_INFO_QUERY returned it from PostgreSQL 15.
        let mut catalog = no_catalog();
        for t in [
            info(16_385, "mood", 'e', 0, 0, -1, 'E'),
            info(16_384, "_mood", 'b', 16_385, 0, -1, 'A'),
            info(16_392, "money3", 'd', 0, 16_390, -1, 'N'),
            info(16_390, "money2", 'd', 0, 1700, 655_366, 'N'),
            info(16_394, "ints", 'd', 0, 1007, -1, 'A'),
            info(16_389, "_money2", 'b', 16_390, 0, -1, 'A'),
            info(16_399, "citext", 'b', 0, 0, -1, 'S'),
            info(16_500, "_ints", 'b', 16_394, 0, -1, 'A'),
            info(16_501, "loop", 'd', 0, 16_501, -1, 'N'),
        ] {
            catalog.insert(t.oid, t);
        }
        let options = TypeOptions::default();
        let r = |oid| resolve("c", oid, -1, &catalog, &options);
        assert_eq!(r(16_385).unwrap(), ColumnType::Text);
        assert_eq!(r(16_384).unwrap(), list(ColumnType::Text));
        assert_eq!(r(16_392).unwrap(), dec(10, 2));
        assert_eq!(r(16_394).unwrap(), list(ColumnType::Int32));
        assert_eq!(r(16_389).unwrap(), list(dec(10, 2)));
        assert_eq!(r(16_399).unwrap(), ColumnType::Text);
        // An array of a domain over an array would be a list of lists.
        assert!(r(16_500).unwrap_err().message().contains("type _ints"));
        assert!(r(16_501).is_err());
        let err = r(16_999).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(
            err.message()
                .contains("type oid 16999 is not in the type catalog"),
            "{err}"
        );
    }

    #[test]
    fn arrow_types_and_iceberg_names() {
        assert_eq!(arrow_type(&ColumnType::Int16), DataType::Int32);
        assert_eq!(arrow_type(&ColumnType::Bytea), DataType::Binary);
        assert_eq!(
            arrow_type(&ColumnType::TimestampTz),
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        let DataType::List(field) = arrow_type(&list(dec(10, 2))) else {
            panic!()
        };
        assert_eq!(field.name(), "element");
        assert!(field.is_nullable());
        assert_eq!(field.data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(list(dec(10, 2)).to_string(), "list<decimal(10,2)>");
        assert_eq!(ColumnType::Int16.to_string(), "int");
        assert_eq!(ColumnType::TimestampTz.to_string(), "timestamptz");
    }

    #[test]
    fn booleans() {
        let a = build(&ColumnType::Bool, &[Some("t"), Some("f"), None, Some("true")]);
        let a = downcast::<BooleanArray>(&a);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false), None, Some(true)]
        );
        assert!(one_error(&ColumnType::Bool, "yes").contains("expected t or f"));
    }

    #[test]
    fn integers_and_their_extremes() {
        let a = build(
            &ColumnType::Int16,
            &[Some("-32768"), Some("32767"), None, Some("0")],
        );
        assert_eq!(
            downcast::<Int32Array>(&a).iter().collect::<Vec<_>>(),
            vec![Some(-32_768), Some(32_767), None, Some(0)]
        );
        let a = build(
            &ColumnType::Int32,
            &[Some("-2147483648"), Some("2147483647"), Some("+7")],
        );
        assert_eq!(
            downcast::<Int32Array>(&a).values().to_vec(),
            vec![i32::MIN, i32::MAX, 7]
        );
        let a = build(
            &ColumnType::Int64,
            &[Some("-9223372036854775808"), Some("9223372036854775807"), None],
        );
        assert_eq!(
            downcast::<Int64Array>(&a).iter().collect::<Vec<_>>(),
            vec![Some(i64::MIN), Some(i64::MAX), None]
        );
        assert!(one_error(&ColumnType::Int16, "32768").contains("out of range for smallint"));
        assert!(one_error(&ColumnType::Int32, "2147483648").contains("out of range for int"));
        assert!(one_error(&ColumnType::Int64, "9223372036854775808").contains("integer out of range"));
        assert!(one_error(&ColumnType::Int64, "-9223372036854775809").contains("integer out of range"));
        for bad in ["", "-", "1.5", " 1", "1e3", "0x10"] {
            assert!(
                one_error(&ColumnType::Int64, bad).contains("not an integer"),
                "{bad:?}"
            );
        }
        assert_eq!(
            one_error(&ColumnType::Int32, "12a"),
            "column c: cannot read \"12a\" as int: not an integer"
        );
    }

    #[test]
    fn floats_with_nan_and_infinities() {
        let a = build(
            &ColumnType::Float64,
            &[
                Some("NaN"),
                Some("Infinity"),
                Some("-Infinity"),
                Some("1e-05"),
                Some("1.7976931348623157e+308"),
                None,
                Some("-0"),
            ],
        );
        let a = downcast::<Float64Array>(&a);
        assert!(a.value(0).is_nan());
        assert_eq!(a.value(1), f64::INFINITY);
        assert_eq!(a.value(2), f64::NEG_INFINITY);
        assert_eq!(a.value(3), 1e-5);
        assert_eq!(a.value(4), f64::MAX);
        assert!(a.is_null(5));
        assert!(a.value(6).is_sign_negative());
        let a = build(
            &ColumnType::Float32,
            &[Some("3.4028235e+38"), Some("1e-45"), Some("0.1"), Some("NaN")],
        );
        let a = downcast::<Float32Array>(&a);
        assert_eq!(a.value(0), f32::MAX);
        assert_eq!(a.value(1), 1e-45_f32);
        assert_eq!(a.value(2), 0.1_f32);
        assert!(a.value(3).is_nan());
        for bad in ["inf", "nan", "", "1,5", "1.5 "] {
            assert!(
                one_error(&ColumnType::Float64, bad).contains("not a floating-point number"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decimals() {
        let t = dec(38, 18);
        let a = build(
            &t,
            &[
                Some("0.000000000000000001"),
                Some("-99999999999999999999.999999999999999999"),
                Some("1.500"),
                Some("1.500000000000000000000000"),
                Some("0"),
                Some("-0.5"),
                Some(".5"),
                Some("7."),
                None,
            ],
        );
        let a = downcast::<Decimal128Array>(&a);
        assert_eq!(a.value(0), 1);
        assert_eq!(a.value(1), -(POW10[38] - 1));
        assert_eq!(a.value(2), 15 * POW10[17]);
        assert_eq!(a.value(3), 15 * POW10[17]);
        assert_eq!(a.value(4), 0);
        assert_eq!(a.value(5), -5 * POW10[17]);
        assert_eq!(a.value(6), 5 * POW10[17]);
        assert_eq!(a.value(7), 7 * POW10[18]);
        assert!(a.is_null(8));
        let a = build(
            &dec(38, 0),
            &[Some("99999999999999999999999999999999999999"), Some("-12")],
        );
        assert_eq!(downcast::<Decimal128Array>(&a).value(0), POW10[38] - 1);
        let a = build(&dec(10, 2), &[Some("5.00"), Some("-12345678.90")]);
        assert_eq!(
            downcast::<Decimal128Array>(&a).values().to_vec(),
            vec![500, -1_234_567_890]
        );
        let a = build(&dec(5, 5), &[Some("0.00012")]);
        assert_eq!(downcast::<Decimal128Array>(&a).value(0), 12);

        let e = one_error(&t, "0.0000000000000000001");
        assert!(e.contains("more fraction digits than the decimal's scale"), "{e}");
        assert!(e.contains("cdc.unconstrained_numeric = \"text\""), "{e}");
        let e = one_error(&t, "100000000000000000000");
        assert!(
            e.starts_with("column c: cannot read \"100000000000000000000\" as decimal(38,18): "),
            "{e}"
        );
        assert!(e.contains("more integer digits"), "{e}");
        for v in ["NaN", "Infinity", "-Infinity"] {
            let e = one_error(&t, v);
            assert!(e.contains("no NaN or infinity"), "{e}");
            assert!(e.contains("cdc.unconstrained_numeric"), "{e}");
        }
        for v in ["", "-", ".", "1e5", "1.2.3", "abc"] {
            let e = one_error(&t, v);
            assert!(e.ends_with("not a number"), "{e}");
        }
        // Negative scales (as ColumnType; resolve maps them to scale 0).
        assert_eq!(parse_decimal(b"1234600", 5, -2), Ok(12_346));
        assert_eq!(parse_decimal(b"0", 5, -2), Ok(0));
        assert_eq!(parse_decimal(b"1234650", 5, -2), Err(DECIMAL_TOO_PRECISE));
        assert_eq!(parse_decimal(b"123460000", 5, -2), Err(DECIMAL_TOO_LARGE));
    }

    #[test]
    fn text_values() {
        let values = [
            Some("plain"),
            Some(""),
            Some("ab  "),
            Some("{\"a\": [1, 2]}"),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some("P1Y2M3DT4H5M6S"),
            Some("grüße 🎉"),
            None,
        ];
        let a = build(&ColumnType::Text, &values);
        assert_eq!(
            downcast::<StringArray>(&a).iter().collect::<Vec<_>>(),
            values.to_vec()
        );
        let mut b = ColumnBuilder::new("c", &ColumnType::Text, 1);
        let e = b.append(Some(b"\xff\xfe")).unwrap_err();
        assert!(e.message().ends_with("not valid UTF-8"), "{e}");
    }

    #[test]
    fn bytea_values() {
        let a = build(
            &ColumnType::Bytea,
            &[
                Some("\\x"),
                Some("\\x00ff7F"),
                None,
                Some("a\\\\b\\001"),
                Some(""),
            ],
        );
        let a = downcast::<BinaryArray>(&a);
        assert_eq!(a.value(0), b"");
        assert_eq!(a.value(1), b"\x00\xff\x7f");
        assert!(a.is_null(2));
        assert_eq!(a.value(3), b"a\\b\x01");
        assert_eq!(a.value(4), b"");
        assert!(one_error(&ColumnType::Bytea, "\\x0").contains("odd number"));
        assert!(one_error(&ColumnType::Bytea, "\\x0g").contains("not a hex digit"));
        assert!(one_error(&ColumnType::Bytea, "a\\9").contains("invalid escape"));
    }

    #[test]
    fn dates() {
        let a = build(
            &ColumnType::Date,
            &[
                Some("1970-01-01"),
                Some("2026-11-27"),
                Some("0044-03-15 BC"),
                Some("0001-01-01 BC"),
                Some("10000-01-01"),
                Some("5874897-12-31"),
                Some("4713-11-24 BC"),
                Some("infinity"),
                Some("-infinity"),
                Some("2000-02-29"),
                None,
            ],
        );
        let a = downcast::<Date32Array>(&a);
        let days = |y, m, d| {
            (NaiveDate::from_ymd_opt(y, m, d).unwrap() - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
                .num_days() as i32
        };
        assert_eq!(a.value(0), 0);
        assert_eq!(a.value(1), days(2026, 11, 27));
        assert_eq!(a.value(2), days(-43, 3, 15));
        assert_eq!(a.value(3), days(0, 1, 1));
        assert_eq!(a.value(4), days(10_000, 1, 1));
        assert_eq!(a.value(5), days_from_civil(5_874_897, 12, 31) as i32);
        assert_eq!(a.value(6), days(-4712, 11, 24));
        assert_eq!(a.value(7), days(9999, 12, 31));
        assert_eq!(a.value(8), days(1, 1, 1));
        assert_eq!(a.value(9), days(2000, 2, 29));
        assert!(a.is_null(10));
        for bad in [
            "2001-02-29",
            "2026-13-01",
            "2026-00-10",
            "0000-01-01",
            "26-01-01",
            "2026-1-01",
            "2026-01-01 AD",
            "today",
        ] {
            let e = one_error(&ColumnType::Date, bad);
            assert!(
                e.starts_with(&format!("column c: cannot read {bad:?} as date: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn times() {
        let a = build(
            &ColumnType::Time,
            &[
                Some("00:00:00"),
                Some("12:34:56.5"),
                Some("23:59:59.999999"),
                Some("24:00:00"),
                Some("12:00:00.000001"),
                None,
            ],
        );
        let a = downcast::<Time64MicrosecondArray>(&a);
        assert_eq!(a.value(0), 0);
        assert_eq!(a.value(1), 45_296_500_000);
        assert_eq!(a.value(2), MICROS_PER_DAY - 1);
        assert_eq!(a.value(3), MICROS_PER_DAY - 1);
        assert_eq!(a.value(4), 43_200_000_001);
        for bad in [
            "24:00:01",
            "12:60:00",
            "12:00",
            "12:00:00.1234567",
            "12:00:00+00",
            "1:00:00",
        ] {
            one_error(&ColumnType::Time, bad);
        }
        assert!(one_error(&ColumnType::Time, "12:00:00.1234567").contains("more than 6 fraction digits"));
    }

    #[test]
    fn timestamps() {
        let a = build(
            &ColumnType::Timestamp,
            &[
                Some("1970-01-01 00:00:00"),
                Some("2026-11-27 10:00:00.123456"),
                Some("2026-11-27 10:00:00.12"),
                Some("0044-03-15 10:00:00.5 BC"),
                Some("10000-01-01 00:00:00"),
                Some("infinity"),
                Some("-infinity"),
                None,
            ],
        );
        let a = downcast::<TimestampMicrosecondArray>(&a);
        let micros = |s: &str| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .unwrap()
                .and_utc()
                .timestamp_micros()
        };
        assert_eq!(a.value(0), 0);
        assert_eq!(a.value(1), micros("2026-11-27 10:00:00.123456"));
        assert_eq!(a.value(2), micros("2026-11-27 10:00:00.120"));
        assert_eq!(a.value(3), micros("-0043-03-15 10:00:00.5"));
        assert_eq!(a.value(4), micros("+10000-01-01 00:00:00"));
        assert_eq!(a.value(5), micros("9999-12-31 23:59:59.999999"));
        assert_eq!(a.value(6), micros("0001-01-01 00:00:00"));
        assert!(a.is_null(7));
        assert_eq!(a.timezone(), None);
        assert!(one_error(&ColumnType::Timestamp, "2026-11-27 10:00:00+00").contains("has no offset"));
        assert!(one_error(&ColumnType::Timestamp, "2026-11-27").contains("not a timestamp"));
        assert!(one_error(&ColumnType::Timestamp, "2026-11-27T10:00:00").contains("not a timestamp"));
        assert!(one_error(&ColumnType::Timestamp, "2026-11-27 24:00:00").contains("not a timestamp"));
        // PostgreSQL's last timestamps lie beyond the µs range from 1970 of an i64.
        assert!(
            one_error(&ColumnType::Timestamp, "294276-12-31 23:59:59.999999").contains("out of the range")
        );
    }

    #[test]
    fn timestamps_with_time_zone() {
        let a = build(
            &ColumnType::TimestampTz,
            &[
                Some("2026-11-27 10:00:00.123456+00"),
                Some("2026-11-27 15:30:00.123456+05:30"),
                Some("2026-11-27 02:00:00.123456-08"),
                Some("2026-11-27 10:53:28.123456+00:53:28"),
                Some("0044-03-15 10:00:00.5+00 BC"),
                Some("infinity"),
                None,
            ],
        );
        let a = downcast::<TimestampMicrosecondArray>(&a);
        let expected = DateTime::parse_from_rfc3339("2026-11-27T10:00:00.123456Z")
            .unwrap()
            .timestamp_micros();
        for i in 0..4 {
            assert_eq!(a.value(i), expected, "value {i}");
        }
        assert_eq!(
            a.value(4),
            chrono::NaiveDateTime::parse_from_str("-0043-03-15 10:00:00.5", "%Y-%m-%d %H:%M:%S%.f")
                .unwrap()
                .and_utc()
                .timestamp_micros()
        );
        assert_eq!(a.value(5), TIMESTAMP_INFINITY);
        assert!(a.is_null(6));
        assert_eq!(a.timezone(), Some("+00:00"));
        // Local mean time offsets, as PostgreSQL prints them in zones other than UTC.
        let utc_1800 = DateTime::parse_from_rfc3339("1800-01-01T00:00:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(parse_timestamptz(b"1799-12-31 19:03:58-04:56:02"), Ok(utc_1800));
        assert_eq!(parse_timestamptz(b"1800-01-01 05:53:28+05:53:28"), Ok(utc_1800));
        for bad in [
            "2026-11-27 10:00:00",
            "2026-11-27 10:00:00+5",
            "2026-11-27 10:00:00+05:60",
            "2026-11-27 10:00:00Z",
        ] {
            assert!(
                one_error(&ColumnType::TimestampTz, bad).contains("offset"),
                "{bad}"
            );
        }
    }

    #[test]
    fn arrays() {
        let t = list(ColumnType::Text);
        let a = build(
            &t,
            &[
                Some(r#"{"a,b","c\"d",NULL,"NULL","",plain," x ","e\\f","{}"}"#),
                Some("{}"),
                None,
                Some("[0:2]={x,y,z}"),
                Some(" { a b , null } "),
                Some(r"{a\,b,c\\}"),
                Some("{NULL}"),
            ],
        );
        let a = downcast::<ListArray>(&a);
        let strings = |i: usize| {
            let v = a.value(i);
            downcast::<StringArray>(&v)
                .iter()
                .map(|s| s.map(str::to_string))
                .collect::<Vec<_>>()
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            strings(0),
            vec![
                s("a,b"),
                s("c\"d"),
                None,
                s("NULL"),
                s(""),
                s("plain"),
                s(" x "),
                s("e\\f"),
                s("{}")
            ]
        );
        assert_eq!(strings(1), Vec::<Option<String>>::new());
        assert!(a.is_null(2));
        assert_eq!(strings(3), vec![s("x"), s("y"), s("z")]);
        assert_eq!(strings(4), vec![s("a b"), None]);
        assert_eq!(strings(5), vec![s("a,b"), s("c\\")]);
        assert_eq!(strings(6), vec![None]);

        let a = build(
            &list(ColumnType::Int32),
            &[Some("{1,2,NULL}"), Some("[0:2]={1,2,3}"), Some("{}")],
        );
        let a = downcast::<ListArray>(&a);
        assert_eq!(a.value_offsets(), &[0, 3, 6, 6]);
        assert_eq!(
            downcast::<Int32Array>(a.values()).iter().collect::<Vec<_>>(),
            vec![Some(1), Some(2), None, Some(1), Some(2), Some(3)]
        );

        let a = build(&list(ColumnType::Bytea), &[Some(r#"{"\\x0102","\\x"}"#)]);
        let a = downcast::<ListArray>(&a);
        let values = downcast::<BinaryArray>(a.values());
        assert_eq!(values.value(0), b"\x01\x02");
        assert_eq!(values.value(1), b"");

        let a = build(&list(dec(10, 2)), &[Some("{1.50,NULL,-2.00}")]);
        let a = downcast::<ListArray>(&a);
        assert_eq!(
            downcast::<Decimal128Array>(a.values()).iter().collect::<Vec<_>>(),
            vec![Some(150), None, Some(-200)]
        );
        let a = build(
            &list(ColumnType::TimestampTz),
            &[Some(r#"{"2026-11-27 10:00:00+00",infinity}"#)],
        );
        let DataType::List(field) = a.data_type() else {
            panic!()
        };
        assert_eq!(field.data_type(), &arrow_type(&ColumnType::TimestampTz));
    }

    #[test]
    fn array_elements_copies() {
        assert_eq!(
            array_elements(br#"{a,"b c",NULL}"#),
            Ok(vec![Some(b"a".to_vec()), Some(b"b c".to_vec()), None])
        );
        assert_eq!(array_elements(b"{{1}}"), Err(MULTI_DIMENSIONAL));
    }

    #[test]
    fn array_errors() {
        let t = list(ColumnType::Int32);
        let e = one_error(&t, "{{1,2},{3,4}}");
        assert_eq!(
            e,
            "column c: cannot read \"{{1,2},{3,4}}\" as list<int>: multi-dimensional arrays are not \
             supported; tarn maps one-dimensional arrays to Iceberg lists"
        );
        assert!(one_error(&t, "[1:2][1:2]={{1,2},{3,4}}").contains("multi-dimensional"));
        let e = one_error(&t, "{1,x,3}");
        assert_eq!(
            e,
            "column c: cannot read element 2 \"x\" of array \"{1,x,3}\" as int: not an integer"
        );
        for bad in [
            "", "1,2", "{1,2", "{1,2}x", "{1,,2}", r#"{"1}"#, "{1 2\"}", "[0:1]{1}", "{1\\",
        ] {
            one_error(&t, bad);
        }
        let e = one_error(&list(dec(38, 18)), "{1,NaN}");
        assert!(e.contains("cdc.unconstrained_numeric"), "{e}");
    }

    #[test]
    fn a_failed_list_append_leaves_the_builder_usable() {
        let t = list(ColumnType::Int64);
        let mut b = ColumnBuilder::new("c", &t, 4);
        b.append(Some(b"{1,2}")).unwrap();
        assert!(b.append(Some(b"{3,4,x}")).is_err());
        b.append(None).unwrap();
        b.append(Some(b"{5}")).unwrap();
        assert_eq!(b.len(), 3);
        let a = b.finish();
        let a = downcast::<ListArray>(&a);
        assert_eq!(a.value_offsets(), &[0, 2, 2, 3]);
        let values = downcast::<Int64Array>(a.values());
        assert_eq!(values.values().to_vec(), vec![1, 2, 5]);
        // The builder starts over clean.
        b.append(Some(b"{7}")).unwrap();
        let a = b.finish();
        assert_eq!(
            downcast::<Int64Array>(downcast::<ListArray>(&a).values())
                .values()
                .to_vec(),
            vec![7]
        );
    }

    #[test]
    fn errors_show_at_most_64_bytes_of_the_value() {
        let long = "9".repeat(200);
        let e = one_error(&ColumnType::Int32, &long);
        assert!(e.contains(&format!("\"{}\"… (200 bytes)", "9".repeat(64))), "{e}");
        assert_eq!(
            shown("é".repeat(40).as_bytes()),
            format!("{:?}… (80 bytes)", "é".repeat(32))
        );
    }

    #[test]
    fn finish_starts_over() {
        let mut b = ColumnBuilder::new("c", &list(ColumnType::Int32), 0);
        b.append(Some(b"{1}")).unwrap();
        assert_eq!(b.finish().len(), 1);
        b.append(Some(b"{2,3}")).unwrap();
        let a = b.finish();
        let a = downcast::<ListArray>(&a);
        assert_eq!(a.value_offsets(), &[0, 2]);
        assert_eq!(
            format!("{b:?}"),
            "ColumnBuilder { column: \"c\", column_type: List(Int32), len: 0 }"
        );
    }

    /// Formats a float the way PostgreSQL does with extra_float_digits > 0: shortest exact
    /// digits, exponent form below 1e-4 and from 1e15 up.
    fn pg_float8(x: f64) -> String {
        if x.is_nan() {
            return "NaN".into();
        }
        if x.is_infinite() {
            return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
        }
        let exponent = if x == 0.0 {
            0
        } else {
            x.abs().log10().floor() as i32
        };
        if (-4..15).contains(&exponent) {
            format!("{x}")
        } else {
            let s = format!("{x:e}");
            let (mantissa, exp) = s.split_once('e').unwrap();
            let exp: i32 = exp.parse().unwrap();
            format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
        }
    }

    fn pg_decimal(unscaled: i128, scale: usize) -> String {
        let digits = format!("{:0>width$}", unscaled.unsigned_abs(), width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        let sign = if unscaled < 0 { "-" } else { "" };
        if scale == 0 {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    }

    fn pg_date(d: NaiveDate) -> String {
        let y = d.year();
        if y > 0 {
            format!("{y:04}-{:02}-{:02}", d.month(), d.day())
        } else {
            format!("{:04}-{:02}-{:02} BC", 1 - y, d.month(), d.day())
        }
    }

    /// A timestamp as PostgreSQL prints it; `offset` (seconds east) is printed when given.
    fn pg_timestamp(t: chrono::NaiveDateTime, offset: Option<i32>) -> String {
        let date = pg_date(t.date());
        let (date, bc) = match date.strip_suffix(" BC") {
            Some(d) => (d.to_string(), " BC"),
            None => (date, ""),
        };
        let mut s = format!("{date} {:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
        let micros = t.nanosecond() / 1000;
        if micros > 0 {
            s.push_str(format!(".{micros:06}").trim_end_matches('0'));
        }
        if let Some(offset) = offset {
            let sign = if offset < 0 { '-' } else { '+' };
            let o = offset.unsigned_abs();
            s.push_str(&format!("{sign}{:02}", o / 3600));
            if o % 3600 != 0 {
                s.push_str(&format!(":{:02}", o / 60 % 60));
                if o % 60 != 0 {
                    s.push_str(&format!(":{:02}", o % 60));
                }
            }
        }
        s.push_str(bc);
        s
    }

    /// Quotes an array element the way PostgreSQL's array output does.
    fn pg_array(elements: &[Option<String>]) -> String {
        let quoted: Vec<String> = elements
            .iter()
            .map(|e| match e {
                None => "NULL".into(),
                Some(s)
                    if s.is_empty()
                        || s.eq_ignore_ascii_case("NULL")
                        || s.bytes().any(|c| b"{}\",\\".contains(&c) || is_array_space(c)) =>
                {
                    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                }
                Some(s) => s.clone(),
            })
            .collect();
        format!("{{{}}}", quoted.join(","))
    }

    proptest! {
        #[test]
        fn integers_read_back(v in any::<i64>()) {
            prop_assert_eq!(parse_i64(v.to_string().as_bytes()), Ok(v));
        }

        #[test]
        fn float8_reads_back(bits in any::<u64>()) {
            let x = f64::from_bits(bits);
            let parsed = parse_f64(pg_float8(x).as_bytes()).unwrap();
            prop_assert!(parsed.to_bits() == x.to_bits() || (x.is_nan() && parsed.is_nan()), "{x} vs {parsed}");
        }

        #[test]
        fn float4_reads_back(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let text = if x.is_finite() { format!("{x}") } else { pg_float8(f64::from(x)) };
            let parsed = parse_f32(text.as_bytes()).unwrap();
            prop_assert!(parsed.to_bits() == x.to_bits() || (x.is_nan() && parsed.is_nan()));
        }

        #[test]
        fn decimals_read_back(precision in 1u8..=38, scale_fraction in 0.0f64..=1.0, raw in any::<i128>()) {
            let scale = (f64::from(precision) * scale_fraction).floor() as u8;
            let unscaled = raw % POW10[usize::from(precision)];
            let text = pg_decimal(unscaled, usize::from(scale));
            prop_assert_eq!(parse_decimal(text.as_bytes(), precision, scale as i8), Ok(unscaled), "{}", text);
        }

        #[test]
        fn dates_read_back(days in -2_440_000i32..=95_000_000) {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(i64::from(days));
            prop_assert_eq!(parse_date(pg_date(date).as_bytes()), Ok(days));
        }

        #[test]
        fn timestamps_read_back(micros in -210_000_000_000_000_000i64..=8_000_000_000_000_000_000) {
            let t = DateTime::from_timestamp_micros(micros).unwrap().naive_utc();
            prop_assert_eq!(parse_timestamp(pg_timestamp(t, None).as_bytes()), Ok(micros));
        }

        #[test]
        fn timestamptz_read_back(
            micros in -210_000_000_000_000_000i64..=8_000_000_000_000_000_000,
            offset in -15 * 3600i32..=15 * 3600,
            offset_kind in 0..3,
        ) {
            // Whole hours, whole minutes, or seconds too.
            let offset = match offset_kind { 0 => offset / 3600 * 3600, 1 => offset / 60 * 60, _ => offset };
            let local = DateTime::from_timestamp_micros(micros).unwrap().naive_utc()
                + chrono::Duration::seconds(i64::from(offset));
            let text = pg_timestamp(local, Some(offset));
            prop_assert_eq!(parse_timestamptz(text.as_bytes()), Ok(micros), "{}", text);
        }

        #[test]
        fn text_arrays_read_back(elements in proptest::collection::vec(
            proptest::option::of("[ a-zA-Z0-9,{}\"\\\\\\té]{0,8}|NULL|null"), 0..10)) {
            let literal = pg_array(&elements);
            let mut b = ColumnBuilder::new("c", &list(ColumnType::Text), 1);
            b.append(Some(literal.as_bytes())).unwrap();
            let a = b.finish();
            let a = downcast::<ListArray>(&a);
            let v = a.value(0);
            let read: Vec<Option<String>> =
                downcast::<StringArray>(&v).iter().map(|s| s.map(str::to_string)).collect();
            prop_assert_eq!(read, elements, "{}", literal);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            for t in [
                ColumnType::Bool, ColumnType::Int16, ColumnType::Float32, dec(38, 18), dec(5, 5),
                ColumnType::Bytea, ColumnType::Date, ColumnType::Time, ColumnType::Timestamp,
                ColumnType::TimestampTz, list(ColumnType::Int32), list(ColumnType::Text),
            ] {
                let mut b = ColumnBuilder::new("c", &t, 1);
                let ok = b.append(Some(&data)).is_ok();
                prop_assert_eq!(b.len(), usize::from(ok));
                prop_assert_eq!(b.finish().len(), usize::from(ok));
            }
        }
    }
}
