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

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion_postgres::pgwire;
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo, Response};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use tarn_query::uuid_column::is_uuid_field;

/// The indices of `schema`'s UUID columns.
pub(crate) fn uuid_columns(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| is_uuid_field(f))
        .map(|(i, _)| i)
        .collect()
}

/// `fields` with the columns at `uuids` typed `uuid`.
pub(crate) fn uuid_fields(fields: Vec<FieldInfo>, uuids: &[usize]) -> Vec<FieldInfo> {
    if uuids.is_empty() {
        return fields;
    }
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            if !uuids.contains(&i) {
                return f;
            }
            FieldInfo::new(
                f.name().to_string(),
                f.table_id(),
                f.column_id(),
                Type::UUID,
                f.format(),
            )
            .with_format_options(f.format_options().clone())
            .with_type_size(16)
            .with_type_modifier(f.type_modifier())
        })
        .collect()
}

/// `response` with the columns at `uuids` described as `uuid`, and their binary-format
/// values as 16 bytes.
pub(crate) fn with_uuid_types(response: Response, uuids: &[usize]) -> Response {
    let Response::Query(mut query) = response else {
        return response;
    };
    if uuids.is_empty() {
        return Response::Query(query);
    }
    let fields = uuid_fields(query.row_schema.as_ref().clone(), uuids);
    let binary: Vec<usize> = uuids
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
