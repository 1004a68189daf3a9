//! Text values into Arrow: a [`ColumnBuilder`] appends one column's values in PostgreSQL's
//! text output format (see [`super::text`]) and finishes an Arrow array of
//! [`arrow_type`]`(column type)`; a [`BatchBuilder`] does it for every column of a table and
//! finishes [`RecordBatch`]es of [`arrow_schema`]. The lake sink builds its data files with
//! them, and a PostgreSQL snapshot copy builds its batches from `COPY` text with them — or
//! from `COPY ... (FORMAT binary)` values with [`ColumnBuilder::append_binary`], which lands
//! a value exactly as its text would (see [`super::binary`]).
//!
//! Contract: a value that does not parse, or does not fit the column's type, is an
//! [`ErrorKind::InvalidInput`] error naming the column, the value (at most 64 bytes of it) and
//! the reason; a failed [`ColumnBuilder::append`] appends nothing — the builder stays usable
//! and its length is unchanged.
//!
//! Why our own: the PostgreSQL client crates decode values from the binary format into Rust
//! scalars one at a time, and no maintained crate reads PostgreSQL's text output into Arrow
//! arrays. Parsing the text directly from bytes into Arrow builders is also what keeps the hot
//! path (tens of thousands of changes and hundreds of thousands of snapshot rows per second)
//! free of per-value allocations.

use std::fmt;
use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListArray, RecordBatch, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use tarn_core::{Error, ErrorKind, Result};

use super::binary::{
    BinaryFormat, numeric_text, read_bool, read_date, read_f32, read_f64, read_i16, read_i32, read_i64,
    read_oid, read_time, read_timestamp,
};
use super::text::{
    DECIMAL_HINT, DECIMAL_NOT_FINITE, DECIMAL_TOO_LARGE, DECIMAL_TOO_PRECISE, ParseError, err, parse_array,
    parse_bool, parse_bytea, parse_date, parse_decimal, parse_f32, parse_f64, parse_i64, parse_time,
    parse_timestamp, parse_timestamptz,
};
use super::{ColumnType, TIMESTAMPTZ_ZONE, arrow_type, list_field};
use crate::source::TableSpec;

/// Appends PostgreSQL text values of one column to an Arrow array of
/// [`arrow_type`]`(column type)`.
pub struct ColumnBuilder {
    column: String,
    column_type: ColumnType,
    values: Values,
    /// The text of a binary value read through its text form (`numeric`).
    scratch: Vec<u8>,
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
            scratch: Vec::new(),
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

    /// Appends one value in PostgreSQL's binary send format read as `format` (which
    /// [`BinaryFormat::of`] chose for this column); `None` is NULL. The value lands exactly
    /// as its text output would through [`ColumnBuilder::append`]; on error (naming the
    /// column) nothing is appended.
    pub fn append_binary(&mut self, value: Option<&[u8]>, format: BinaryFormat) -> Result<()> {
        let Some(v) = value else {
            self.values.append_null();
            return Ok(());
        };
        if format == BinaryFormat::Numeric {
            // Through the text numeric_out prints: the text path's checks and messages.
            let mut text = std::mem::take(&mut self.scratch);
            let result = match numeric_text(v, &mut text) {
                Ok(()) => self.append(Some(&text)),
                Err(reason) => Err(self.binary_error(v, reason)),
            };
            self.scratch = text;
            return result;
        }
        let appended = match (&mut self.values, format) {
            (Values::Bool(b), BinaryFormat::Bool) => read_bool(v).map(|x| b.append_value(x)),
            (Values::Int16(b), BinaryFormat::Int2) => read_i16(v).map(|x| b.append_value(x.into())),
            (Values::Int32(b), BinaryFormat::Int4) => read_i32(v).map(|x| b.append_value(x)),
            (Values::Int64(b), BinaryFormat::Int8) => read_i64(v).map(|x| b.append_value(x)),
            (Values::Int64(b), BinaryFormat::Oid) => read_oid(v).map(|x| b.append_value(x)),
            (Values::Float32(b), BinaryFormat::Float4) => read_f32(v).map(|x| b.append_value(x)),
            (Values::Float64(b), BinaryFormat::Float8) => read_f64(v).map(|x| b.append_value(x)),
            (Values::Text(b), BinaryFormat::Text) => std::str::from_utf8(v)
                .map(|x| b.append_value(x))
                .map_err(|_| err("not valid UTF-8")),
            (Values::Bytea(b, _), BinaryFormat::Bytea) => {
                b.append_value(v);
                Ok(())
            }
            (Values::Date(b), BinaryFormat::Date) => read_date(v).map(|x| b.append_value(x)),
            (Values::Time(b), BinaryFormat::Time) => read_time(v).map(|x| b.append_value(x)),
            (Values::Timestamp(b) | Values::TimestampTz(b), BinaryFormat::Timestamp) => {
                read_timestamp(v).map(|x| b.append_value(x))
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "column {}: binary format {format:?} does not fit its type {}",
                        self.column, self.column_type
                    ),
                ));
            }
        };
        appended.map_err(|reason| self.binary_error(v, reason))
    }

    fn binary_error(&self, v: &[u8], reason: ParseError) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "column {}: cannot read a binary value of {} bytes as {}: {reason}",
                self.column,
                v.len(),
                self.column_type
            ),
        )
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

/// The Arrow schema of a table's rows as the source sends them.
pub fn arrow_schema(spec: &TableSpec) -> SchemaRef {
    Arc::new(Schema::new(
        spec.columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(&c.column_type), !c.not_null))
            .collect::<Vec<_>>(),
    ))
}

/// Turns text rows into record batches of a table's schema.
pub struct BatchBuilder {
    schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
    rows: usize,
}

impl BatchBuilder {
    /// A builder for `spec`'s columns.
    pub fn new(spec: &TableSpec, capacity: usize) -> Self {
        let builders = spec
            .columns
            .iter()
            .map(|c| {
                ColumnBuilder::new(
                    format!("{}.{}", spec.qualified(), c.name),
                    &c.column_type,
                    capacity,
                )
            })
            .collect();
        Self {
            schema: arrow_schema(spec),
            builders,
            rows: 0,
        }
    }

    /// Appends one row of text cells (`None` = NULL).
    pub fn append(&mut self, row: &[Option<&[u8]>]) -> Result<()> {
        for (builder, cell) in self.builders.iter_mut().zip(row) {
            builder.append(*cell)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Appends one row of binary cells (`None` = NULL), cell `i` read as `formats[i]`
    /// ([`BinaryFormat::of`] of its column).
    pub fn append_binary(&mut self, row: &[Option<&[u8]>], formats: &[BinaryFormat]) -> Result<()> {
        for ((builder, cell), format) in self.builders.iter_mut().zip(row).zip(formats) {
            builder.append_binary(*cell, *format)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows appended since the last batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The pending rows as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns = self.builders.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot assemble a batch: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::text::*;
    use arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int32Array,
        Int64Array, StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::DataType;
    use chrono::{DateTime, Datelike, NaiveDate, Timelike};
    use proptest::prelude::*;

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
