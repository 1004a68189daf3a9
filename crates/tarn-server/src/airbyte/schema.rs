//! A stream's JSON schema as Arrow (and so Iceberg) types, and records shaped to fit them.
//!
//! | JSON schema | column |
//! |---|---|
//! | `integer` (or `number` with `airbyte_type: integer`) | `long` |
//! | `number` | `double` |
//! | `boolean` | `boolean` |
//! | `string` | `string` |
//! | `string`, `format: date` | `date` |
//! | `string`, `format: date-time` | `timestamptz` (`timestamp` with `airbyte_type: timestamp_without_timezone`) |
//! | `string`, `format: time` | `time` |
//! | `object` with `properties` | `struct` of them |
//! | `array` with `items` | `list` of the items' type |
//! | anything else: several types, `oneOf`/`anyOf`, an object or array without a shape | `string` holding the value as JSON text |
//!
//! `"null"` beside one other type just makes the column optional (every column is). Struct
//! fields are in the order the schema's properties sort in. Records are decoded by arrow-json
//! against the table's Arrow schema; [`Shape::normalize`] first turns the values of JSON-text
//! columns into their JSON text, so the decoder sees a string there. A value that does not fit
//! its column (text in an integer column, a string where a struct is) is a decoding error.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use serde_json::Value;

/// The column every table gets: when the connector emitted the record.
pub const EMITTED_AT: &str = "_airbyte_emitted_at";

/// How a value of a column is prepared for decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Decoded as it is.
    Plain,
    /// Stored as its JSON text.
    Json,
    /// An object whose known fields are shaped.
    Struct(Vec<(String, Shape)>),
    /// An array whose items are shaped.
    List(Box<Shape>),
}

impl Shape {
    /// Prepares `value` for the decoder in place.
    pub fn normalize(&self, value: &mut Value) {
        match self {
            Shape::Plain => {}
            Shape::Json => {
                if !value.is_null() {
                    *value = Value::String(value.to_string());
                }
            }
            Shape::Struct(fields) => {
                if let Value::Object(map) = value {
                    for (name, shape) in fields {
                        if let Some(v) = map.get_mut(name) {
                            shape.normalize(v);
                        }
                    }
                }
            }
            Shape::List(item) => {
                if let Value::Array(items) = value {
                    for v in items {
                        item.normalize(v);
                    }
                }
            }
        }
    }

    /// Whether nothing needs preparing.
    fn is_plain(&self) -> bool {
        match self {
            Shape::Plain => true,
            Shape::Json => false,
            Shape::Struct(fields) => fields.iter().all(|(_, s)| s.is_plain()),
            Shape::List(item) => item.is_plain(),
        }
    }
}

/// The columns for a stream's `json_schema` (its top-level `properties`), and how records are
/// shaped for them. A schema without properties gives no columns: the stream is then stored as
/// one JSON column `_airbyte_data`.
pub fn columns(json_schema: &Value) -> (Vec<Field>, Shape) {
    let Some(properties) = json_schema.get("properties").and_then(Value::as_object) else {
        return (
            vec![Field::new(DATA_COLUMN, DataType::Utf8, true)],
            Shape::Struct(vec![(DATA_COLUMN.to_string(), Shape::Json)]),
        );
    };
    let mut fields = Vec::new();
    let mut shapes = Vec::new();
    for (name, schema) in properties {
        let (dt, shape) = column_type(schema);
        fields.push(Field::new(name, dt, true));
        if !shape.is_plain() {
            shapes.push((name.clone(), shape));
        }
    }
    (fields, Shape::Struct(shapes))
}

/// The one column of a stream whose schema has no properties.
pub const DATA_COLUMN: &str = "_airbyte_data";

/// The Arrow type and shape of one JSON schema.
pub fn column_type(schema: &Value) -> (DataType, Shape) {
    let json = (DataType::Utf8, Shape::Json);
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => return json,
    };
    let [kind] = types.as_slice() else {
        return json;
    };
    let airbyte_type = schema.get("airbyte_type").and_then(Value::as_str);
    match *kind {
        "integer" => (DataType::Int64, Shape::Plain),
        "number" if airbyte_type == Some("integer") => (DataType::Int64, Shape::Plain),
        "number" => (DataType::Float64, Shape::Plain),
        "boolean" => (DataType::Boolean, Shape::Plain),
        "string" => {
            let dt = match schema.get("format").and_then(Value::as_str) {
                Some("date") => DataType::Date32,
                Some("date-time") if airbyte_type == Some("timestamp_without_timezone") => {
                    DataType::Timestamp(TimeUnit::Microsecond, None)
                }
                Some("date-time") => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                Some("time") => DataType::Time64(TimeUnit::Microsecond),
                _ => DataType::Utf8,
            };
            (dt, Shape::Plain)
        }
        "object" => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return json;
            };
            if properties.is_empty() {
                return json;
            }
            let mut fields = Vec::new();
            let mut shapes = Vec::new();
            for (name, sub) in properties {
                let (dt, shape) = column_type(sub);
                fields.push(Field::new(name, dt, true));
                shapes.push((name.clone(), shape));
            }
            (DataType::Struct(Fields::from(fields)), Shape::Struct(shapes))
        }
        "array" => {
            let Some(items) = schema.get("items").filter(|i| i.is_object()) else {
                return json;
            };
            let (dt, shape) = column_type(items);
            (
                DataType::List(Arc::new(Field::new("element", dt, true))),
                Shape::List(Box::new(shape)),
            )
        }
        _ => json,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn maps_types() {
        let schema = json!({"type": "object", "properties": {
            "id": {"type": "integer"},
            "price": {"type": ["null", "number"]},
            "ok": {"type": "boolean"},
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time", "airbyte_type": "timestamp_with_timezone"},
            "local": {"type": "string", "format": "date-time", "airbyte_type": "timestamp_without_timezone"},
            "t": {"type": "string", "format": "time"},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "extra": {}}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "mixed": {"type": ["string", "integer"]},
            "free": {"type": "object"},
            "any": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        }});
        let (fields, shape) = columns(&schema);
        let ty = |name: &str| {
            fields
                .iter()
                .find(|f| f.name() == name)
                .unwrap()
                .data_type()
                .clone()
        };
        assert_eq!(ty("id"), DataType::Int64);
        assert_eq!(ty("price"), DataType::Float64);
        assert_eq!(ty("ok"), DataType::Boolean);
        assert_eq!(ty("day"), DataType::Date32);
        assert_eq!(
            ty("at"),
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        );
        assert_eq!(ty("local"), DataType::Timestamp(TimeUnit::Microsecond, None));
        assert_eq!(ty("t"), DataType::Time64(TimeUnit::Microsecond));
        assert!(
            matches!(ty("address"), DataType::Struct(f) if f.len() == 2 && f[1].data_type() == &DataType::Utf8)
        );
        assert!(matches!(ty("tags"), DataType::List(f) if f.data_type() == &DataType::Utf8));
        for json_column in ["mixed", "free", "any"] {
            assert_eq!(ty(json_column), DataType::Utf8, "{json_column}");
        }
        let mut record = json!({"id": 1, "mixed": 5, "free": {"a": [1]}, "any": "x", "address": {"city": "Oslo", "extra": [1, 2]}});
        shape.normalize(&mut record);
        assert_eq!(
            record,
            json!({"id": 1, "mixed": "5", "free": "{\"a\":[1]}", "any": "\"x\"", "address": {"city": "Oslo", "extra": "[1,2]"}})
        );
    }

    #[test]
    fn schema_without_properties_is_one_json_column() {
        let (fields, shape) = columns(&json!({"type": "object"}));
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].name(), DATA_COLUMN);
        assert_eq!(shape, Shape::Struct(vec![(DATA_COLUMN.to_string(), Shape::Json)]));
    }
}
