//! The value and type model every source shares: what a cell of a change is, and which
//! Iceberg type a column is stored as.
//!
//! A [`Value`] is one cell as the source sent it — PostgreSQL's text output format (what
//! `pgoutput` and `COPY ... TO STDOUT` print; CockroachDB's changefeed JSON and Kafka change
//! events are turned into the same text by their sources), NULL, or "unchanged" (a TOASTed
//! value PostgreSQL did not resend). A [`ColumnType`] says how a column's text is read and
//! which Iceberg type it lands as; [`arrow_type`] is the Arrow type of its arrays, exactly the
//! type `iceberg` reads and writes for that Iceberg type (`docs/cdc-types.md` is the
//! user-facing table of the mapping).
//!
//! - [`text`]: parsers of PostgreSQL's text output of numbers, dates, times and arrays.
//! - [`builder`]: text values into Arrow arrays ([`builder::ColumnBuilder`]) and rows into
//!   record batches of a table's schema ([`builder::BatchBuilder`]);
//! - [`arrow_text`]: Arrow arrays back into text values (a copy's rows published to Kafka).
//! - [`binary`]: readers of PostgreSQL's binary send format of the common built-in types (the
//!   snapshot copy's `COPY ... (FORMAT binary)`).
//!
//! Which [`ColumnType`] a source column has is the source's business (PostgreSQL and
//! CockroachDB: `crate::postgres::types` maps type OIDs); everything after that is shared.

pub mod arrow_text;
pub mod binary;
pub mod builder;
pub mod text;

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use bytes::Bytes;

/// The time zone of `timestamptz` arrays: UTC, spelled the way `iceberg` spells it.
pub const TIMESTAMPTZ_ZONE: &str = "+00:00";

/// The name of the element field of list arrays (Iceberg's and `iceberg`'s name).
pub const LIST_ELEMENT_NAME: &str = "element";

/// One cell of a row as a source delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change; PostgreSQL does not send it, the consumer keeps
    /// the value it already has.
    Unchanged,
    /// The value in its type's PostgreSQL text output format.
    Text(Bytes),
    /// The value in its type's binary send format (`pgoutput` with `binary 'true'` only).
    Binary(Bytes),
}

impl Value {
    /// The text of a [`Value::Text`], `None` for anything else.
    pub fn as_text(&self) -> Option<&[u8]> {
        match self {
            Value::Text(b) => Some(b),
            _ => None,
        }
    }
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

pub(crate) fn list_field(element: &ColumnType) -> FieldRef {
    Arc::new(Field::new(LIST_ELEMENT_NAME, arrow_type(element), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(precision: u8, scale: i8) -> ColumnType {
        ColumnType::Decimal { precision, scale }
    }

    fn list(t: ColumnType) -> ColumnType {
        ColumnType::List(Box::new(t))
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
}
