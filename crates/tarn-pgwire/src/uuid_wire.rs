//! `uuid` columns over the wire: described as PostgreSQL's `uuid` (OID 2950), sent in its text
//! form (`f81d4fae-7dec-11d0-a765-00a0c91e6bf6`) or, when a client asks for binary results,
//! as its 16 bytes.
//!
//! tarn's SQL holds UUIDs as text marked in the Arrow field's metadata
//! ([`tarn_query::uuid_column`]); `datafusion-postgres` (0.17) maps Arrow types to PostgreSQL
//! types without looking at that metadata, so it would describe them as `text`. The endpoint
//! therefore finds the marked columns in the statement's planned schema and corrects the row
//! description; the text encoding of the value is already the `uuid` text form, and for
//! binary-format columns each value is re-encoded from text to its 16 bytes.
//!
//! Columns of JSON text marked the same way (value `json`, by [`crate::wire_types`]) are
//! described as `json` (OID 114), whose binary format is its text.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion_postgres::pgwire;
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo, Response};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use tarn_query::uuid_column::is_uuid_field;

/// The result columns whose PostgreSQL type the metadata of their Arrow field says.
#[derive(Debug, Default, Clone)]
pub(crate) struct Marked {
    /// UUID columns.
    pub(crate) uuids: Vec<usize>,
    /// JSON columns.
    pub(crate) jsons: Vec<usize>,
}

impl Marked {
    fn is_empty(&self) -> bool {
        self.uuids.is_empty() && self.jsons.is_empty()
    }
}

/// The marked columns of `schema`.
pub(crate) fn marked_columns(schema: &Schema) -> Marked {
    let mut marked = Marked::default();
    for (i, f) in schema.fields().iter().enumerate() {
        if is_uuid_field(f) {
            marked.uuids.push(i);
        } else if f
            .metadata()
            .get(tarn_query::uuid_column::UUID_METADATA_KEY)
            .map(String::as_str)
            == Some(crate::wire_types::JSON_METADATA_VALUE)
        {
            marked.jsons.push(i);
        }
    }
    marked
}

/// `fields` with the marked columns typed `uuid` or `json`.
pub(crate) fn marked_fields(fields: Vec<FieldInfo>, marked: &Marked) -> Vec<FieldInfo> {
    if marked.is_empty() {
        return fields;
    }
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let (pg_type, size) = if marked.uuids.contains(&i) {
                (Type::UUID, 16)
            } else if marked.jsons.contains(&i) {
                (Type::JSON, -1)
            } else {
                return f;
            };
            FieldInfo::new(
                f.name().to_string(),
                f.table_id(),
                f.column_id(),
                pg_type,
                f.format(),
            )
            .with_format_options(f.format_options().clone())
            .with_type_size(size)
            .with_type_modifier(f.type_modifier())
        })
        .collect()
}

/// `response` with the marked columns described as `uuid` or `json`, and the binary-format
/// values of UUID columns as 16 bytes.
pub(crate) fn with_marked_types(response: Response, marked: &Marked) -> Response {
    let Response::Query(mut query) = response else {
        return response;
    };
    if marked.is_empty() {
        return Response::Query(query);
    }
    let fields = marked_fields(query.row_schema.as_ref().clone(), marked);
    let binary: Vec<usize> = marked
        .uuids
        .iter()
        .copied()
        .filter(|&i| fields.get(i).is_some_and(|f| f.format() == FieldFormat::Binary))
        .collect();
    query.row_schema = Arc::new(fields);
    if !binary.is_empty() {
        let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
        query.data_rows = Box::pin(rows.map(move |row| row.and_then(|row| binary_uuids(row, &binary))));
    }
    Response::Query(query)
}

/// `row` with the text-encoded values at `columns` replaced by their 16 bytes.
fn binary_uuids(row: DataRow, columns: &[usize]) -> PgWireResult<DataRow> {
    crate::text_values::map_values(row, |i, value| {
        if !columns.contains(&i) {
            return Ok(None);
        }
        let text = std::str::from_utf8(value).ok();
        let id = text.and_then(|t| uuid::Uuid::parse_str(t).ok()).ok_or_else(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22P02".into(),
                format!(
                    "invalid input syntax for type uuid: {:?}",
                    String::from_utf8_lossy(value)
                ),
            )))
        })?;
        Ok(Some(id.as_bytes().to_vec()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn row(values: &[Option<&[u8]>]) -> DataRow {
        let mut data = BytesMut::new();
        for v in values {
            match v {
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v);
                }
                None => data.put_i32(-1),
            }
        }
        DataRow::new(data, values.len() as i16)
    }

    #[test]
    fn binary_values_become_sixteen_bytes() {
        let text = b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        let id = uuid::Uuid::parse_str("f81d4fae-7dec-11d0-a765-00a0c91e6bf6").unwrap();
        let out = binary_uuids(row(&[Some(b"7"), Some(text), None]), &[1, 2]).unwrap();
        assert_eq!(out.data, row(&[Some(b"7"), Some(id.as_bytes()), None]).data);
        let err = binary_uuids(row(&[Some(b"nope")]), &[0]).unwrap_err();
        assert!(err.to_string().contains("uuid"), "{err}");
    }
}
