//! Column statistics for DataFusion's planner, from the Iceberg manifests.
//!
//! Every data file's manifest entry carries per-column lower and upper bounds, null counts
//! and value counts. Handing them to DataFusion lets it estimate filter selectivity and join
//! sizes (and so pick hash-join build sides) without opening a single Parquet footer.
//! Numeric and date bounds are exact; string bounds may be truncated prefixes, so they are
//! given as inexact.

use arrow::datatypes::Schema;
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue};
use iceberg::spec::{DataFile, Datum, PrimitiveLiteral, PrimitiveType};

/// Column statistics of one data file, in the order of `schema`, whose fields carry Iceberg
/// field ids in `field_ids`.
pub fn column_statistics(file: &DataFile, schema: &Schema, field_ids: &[i32]) -> Vec<ColumnStatistics> {
    schema
        .fields()
        .iter()
        .zip(field_ids)
        .map(|(field, id)| ColumnStatistics {
            null_count: file
                .null_value_counts()
                .get(id)
                .map_or(Precision::Absent, |n| Precision::Exact(*n as usize)),
            min_value: typed(bound(file.lower_bounds().get(id)), field.data_type()),
            max_value: typed(bound(file.upper_bounds().get(id)), field.data_type()),
            ..ColumnStatistics::new_unknown()
        })
        .collect()
}

/// `value` as the column's type (e.g. `Utf8` bounds for a `Utf8View` column); absent when it
/// does not convert.
fn typed(value: Precision<ScalarValue>, data_type: &arrow::datatypes::DataType) -> Precision<ScalarValue> {
    let convert = |v: ScalarValue| {
        if &v.data_type() == data_type {
            Some(v)
        } else {
            v.cast_to(data_type).ok()
        }
    };
    match value {
        Precision::Exact(v) => convert(v).map_or(Precision::Absent, Precision::Exact),
        Precision::Inexact(v) => convert(v).map_or(Precision::Absent, Precision::Inexact),
        Precision::Absent => Precision::Absent,
    }
}

fn bound(datum: Option<&Datum>) -> Precision<ScalarValue> {
    let Some(datum) = datum else {
        return Precision::Absent;
    };
    use PrimitiveLiteral as L;
    use PrimitiveType as T;
    match (datum.data_type(), datum.literal()) {
        (T::Boolean, L::Boolean(b)) => Precision::Exact(ScalarValue::Boolean(Some(*b))),
        (T::Int, L::Int(v)) => Precision::Exact(ScalarValue::Int32(Some(*v))),
        (T::Date, L::Int(v)) => Precision::Exact(ScalarValue::Date32(Some(*v))),
        (T::Long, L::Long(v)) => Precision::Exact(ScalarValue::Int64(Some(*v))),
        (T::Timestamp, L::Long(v)) => Precision::Exact(ScalarValue::TimestampMicrosecond(Some(*v), None)),
        (T::Timestamptz, L::Long(v)) => {
            Precision::Exact(ScalarValue::TimestampMicrosecond(Some(*v), Some("+00:00".into())))
        }
        (T::Float, L::Float(v)) => Precision::Exact(ScalarValue::Float32(Some(v.0))),
        (T::Double, L::Double(v)) => Precision::Exact(ScalarValue::Float64(Some(v.0))),
        (T::Decimal { precision, scale }, L::Int128(v)) => {
            match (u8::try_from(*precision), i8::try_from(*scale)) {
                (Ok(p), Ok(s)) => Precision::Exact(ScalarValue::Decimal128(Some(*v), p, s)),
                _ => Precision::Absent,
            }
        }
        (T::String, L::String(v)) => Precision::Inexact(ScalarValue::Utf8(Some(v.clone()))),
        _ => Precision::Absent,
    }
}

/// Merges per-file statistics into table statistics.
pub fn merge(files: &[Vec<ColumnStatistics>], columns: usize) -> Vec<ColumnStatistics> {
    (0..columns)
        .map(|i| {
            let mut merged: Option<ColumnStatistics> = None;
            for file in files {
                let stats = &file[i];
                merged = Some(match merged {
                    None => stats.clone(),
                    Some(m) => ColumnStatistics {
                        null_count: m.null_count.add(&stats.null_count),
                        min_value: m.min_value.min(&stats.min_value),
                        max_value: m.max_value.max(&stats.max_value),
                        ..ColumnStatistics::new_unknown()
                    },
                });
            }
            merged.unwrap_or_else(ColumnStatistics::new_unknown)
        })
        .collect()
}
