//! Partition specs and sort orders written as text: `day(ts)`, `bucket(16, id)`, `name DESC`.
//!
//! These are the partition transforms of the Iceberg spec in the syntax Spark and Trino use in
//! `PARTITIONED BY (...)`: `col` or `identity(col)`, `year(col)`, `month(col)`, `day(col)`,
//! `hour(col)`, `bucket(N, col)`, `truncate(W, col)`. Partition field names follow Iceberg's
//! convention (`ts_day`, `id_bucket`, `name_trunc`).

use iceberg::spec::{
    NullOrder, Schema, SortDirection, SortField, SortOrder, Transform, UnboundPartitionSpec,
};
use tarn_core::{Error, ErrorKind, Result};

/// One partition field as written: a transform applied to a source column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// The source column.
    pub column: String,
    /// The transform.
    pub transform: Transform,
}

/// One sort key as written: a column, direction and null order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The column.
    pub column: String,
    /// Ascending or descending.
    pub descending: bool,
    /// Nulls first (default for ascending) or last.
    pub nulls_first: bool,
}

/// Parses one partition field, e.g. `bucket(16, id)`.
pub fn parse_partition_field(text: &str) -> Result<PartitionField> {
    let text = text.trim();
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid partition field {text:?}: {why}; expected col, identity(col), year(col), \
                 month(col), day(col), hour(col), bucket(N, col) or truncate(W, col)"
            ),
        )
    };
    let Some(open) = text.find('(') else {
        return Ok(PartitionField {
            column: unquote(text).map_err(|e| bad(&e))?,
            transform: Transform::Identity,
        });
    };
    if !text.ends_with(')') {
        return Err(bad("missing closing parenthesis"));
    }
    let name = text[..open].trim().to_ascii_lowercase();
    let args: Vec<&str> = text[open + 1..text.len() - 1].split(',').map(str::trim).collect();
    let column_arg = |args: &[&str], n: usize| -> Result<String> {
        if args.len() != n {
            return Err(bad(&format!("{name} takes {n} argument(s)")));
        }
        unquote(args[n - 1]).map_err(|e| bad(&e))
    };
    let number = |s: &str| -> Result<u32> {
        s.parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(&format!("{s:?} is not a positive whole number")))
    };
    let (transform, column) = match name.as_str() {
        "identity" => (Transform::Identity, column_arg(&args, 1)?),
        "year" | "years" => (Transform::Year, column_arg(&args, 1)?),
        "month" | "months" => (Transform::Month, column_arg(&args, 1)?),
        "day" | "days" => (Transform::Day, column_arg(&args, 1)?),
        "hour" | "hours" => (Transform::Hour, column_arg(&args, 1)?),
        "bucket" => (Transform::Bucket(number(args[0])?), column_arg(&args, 2)?),
        "truncate" => (Transform::Truncate(number(args[0])?), column_arg(&args, 2)?),
        other => return Err(bad(&format!("unknown transform {other:?}"))),
    };
    Ok(PartitionField { column, transform })
}

/// Parses one sort key, e.g. `ts DESC NULLS LAST`.
pub fn parse_sort_key(text: &str) -> Result<SortKey> {
    let words: Vec<String> = text.split_whitespace().map(str::to_ascii_uppercase).collect();
    let raw: Vec<&str> = text.split_whitespace().collect();
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid sort key {text:?}: expected col [ASC|DESC] [NULLS FIRST|LAST]"),
        )
    };
    let column = unquote(raw.first().ok_or_else(bad)?).map_err(|_| bad())?;
    let mut descending = false;
    let mut nulls_first = None;
    let mut i = 1;
    while i < words.len() {
        match (words[i].as_str(), words.get(i + 1).map(String::as_str)) {
            ("ASC", _) => descending = false,
            ("DESC", _) => descending = true,
            ("NULLS", Some("FIRST")) => {
                nulls_first = Some(true);
                i += 1;
            }
            ("NULLS", Some("LAST")) => {
                nulls_first = Some(false);
                i += 1;
            }
            _ => return Err(bad()),
        }
        i += 1;
    }
    Ok(SortKey {
        column,
        descending,
        nulls_first: nulls_first.unwrap_or(!descending),
    })
}

fn unquote(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .map(str::to_string)
        .unwrap_or_else(|| s.to_ascii_lowercase());
    if inner.is_empty() || inner.contains(['(', ')', ',']) {
        return Err(format!("{s:?} is not a column name"));
    }
    Ok(inner)
}

fn field_id(schema: &Schema, column: &str, what: &str) -> Result<i32> {
    schema.field_by_name(column).map(|f| f.id).ok_or_else(|| {
        let columns: Vec<_> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{what} column {column:?} is not in the table (columns: {})",
                columns.join(", ")
            ),
        )
    })
}

/// Binds partition fields to `schema`, naming fields the Iceberg way.
pub fn partition_spec(schema: &Schema, fields: &[PartitionField]) -> Result<UnboundPartitionSpec> {
    let mut builder = UnboundPartitionSpec::builder();
    for field in fields {
        let source_id = field_id(schema, &field.column, "partition")?;
        let name = match field.transform {
            Transform::Identity => field.column.clone(),
            Transform::Year => format!("{}_year", field.column),
            Transform::Month => format!("{}_month", field.column),
            Transform::Day => format!("{}_day", field.column),
            Transform::Hour => format!("{}_hour", field.column),
            Transform::Bucket(_) => format!("{}_bucket", field.column),
            Transform::Truncate(_) => format!("{}_trunc", field.column),
            _ => field.column.clone(),
        };
        builder = builder
            .add_partition_field(source_id, name, field.transform)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid partitioning: {e}")))?;
    }
    Ok(builder.build())
}

/// Binds sort keys to `schema`.
pub fn sort_order(schema: &Schema, keys: &[SortKey]) -> Result<SortOrder> {
    let mut builder = SortOrder::builder();
    for key in keys {
        builder.with_sort_field(SortField {
            source_id: field_id(schema, &key.column, "sort")?,
            transform: Transform::Identity,
            direction: if key.descending {
                SortDirection::Descending
            } else {
                SortDirection::Ascending
            },
            null_order: if key.nulls_first {
                NullOrder::First
            } else {
                NullOrder::Last
            },
        });
    }
    builder
        .build_unbound()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid sort order: {e}")))
}

/// The text form of a transform applied to a column, as in `PARTITIONED BY`.
pub fn describe_transform(transform: &Transform, column: &str) -> String {
    match transform {
        Transform::Identity => column.to_string(),
        Transform::Year => format!("year({column})"),
        Transform::Month => format!("month({column})"),
        Transform::Day => format!("day({column})"),
        Transform::Hour => format!("hour({column})"),
        Transform::Bucket(n) => format!("bucket({n}, {column})"),
        Transform::Truncate(w) => format!("truncate({w}, {column})"),
        other => format!("{other}({column})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transforms() {
        let f = parse_partition_field("bucket(16, id)").unwrap();
        assert_eq!(f.transform, Transform::Bucket(16));
        assert_eq!(f.column, "id");
        assert_eq!(
            parse_partition_field("DAY(Ts)").unwrap().transform,
            Transform::Day
        );
        assert_eq!(
            parse_partition_field("region").unwrap().transform,
            Transform::Identity
        );
        assert_eq!(parse_partition_field("\"Region\"").unwrap().column, "Region");
        let err = parse_partition_field("weekly(ts)").unwrap_err();
        assert!(err.to_string().contains("unknown transform"), "{err}");
        assert!(parse_partition_field("bucket(0, id)").is_err());
        assert!(parse_partition_field("bucket(id)").is_err());
    }

    #[test]
    fn parses_sort_keys() {
        let k = parse_sort_key("ts DESC NULLS LAST").unwrap();
        assert!(k.descending && !k.nulls_first);
        let k = parse_sort_key("id").unwrap();
        assert!(!k.descending && k.nulls_first);
        assert!(parse_sort_key("id sideways").is_err());
    }
}
