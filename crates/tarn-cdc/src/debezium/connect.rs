//! Kafka Connect schemas in the JSON form of Kafka's `JsonConverter`, and the JSON writer the
//! encoder builds messages with.
//!
//! With `schemas.enable=true` `JsonConverter` writes each message as
//! `{"schema": <schema>, "payload": <value>}`. A schema is an object with `type` (`boolean`,
//! `int8`, `int16`, `int32`, `int64`, `float`, `double`, `bytes`, `string`, `array`, `map`,
//! `struct` — a Connect FLOAT32 is written `float` and a FLOAT64 `double`), then `items`
//! (array), `keys` and `values` (map) or `fields` (struct, each field schema with `"field":
//! <name>` last), then `optional` (always written), `name`, `version`, `doc`, `parameters`
//! and `default` where set. [`ConnectSchema::write_json`] writes exactly that order, so tarn's
//! messages read like Debezium's byte for byte apart from values.
//!
//! serde_json's own maps sort their keys (the workspace does not enable `preserve_order`),
//! which would scramble `before, after, source, ...`; the encoder therefore writes JSON text
//! directly with [`JsonWriter`].

use serde_json::Value as Json;

use super::{CodecError, join};

/// A Connect schema type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaType {
    /// `boolean`.
    Boolean,
    /// `int8`.
    Int8,
    /// `int16`.
    Int16,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `float` (Connect FLOAT32).
    Float32,
    /// `double` (Connect FLOAT64).
    Float64,
    /// `bytes` (base64 in JSON).
    Bytes,
    /// `string`.
    String,
    /// `array`.
    Array,
    /// `map`.
    Map,
    /// `struct`.
    Struct,
}

impl SchemaType {
    /// The name `JsonConverter` writes.
    pub fn json_name(self) -> &'static str {
        match self {
            SchemaType::Boolean => "boolean",
            SchemaType::Int8 => "int8",
            SchemaType::Int16 => "int16",
            SchemaType::Int32 => "int32",
            SchemaType::Int64 => "int64",
            SchemaType::Float32 => "float",
            SchemaType::Float64 => "double",
            SchemaType::Bytes => "bytes",
            SchemaType::String => "string",
            SchemaType::Array => "array",
            SchemaType::Map => "map",
            SchemaType::Struct => "struct",
        }
    }

    /// Reads a type name; `float32`/`float64` and upper case are accepted too.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "boolean" => SchemaType::Boolean,
            "int8" => SchemaType::Int8,
            "int16" => SchemaType::Int16,
            "int32" => SchemaType::Int32,
            "int64" => SchemaType::Int64,
            "float" | "float32" => SchemaType::Float32,
            "double" | "float64" => SchemaType::Float64,
            "bytes" => SchemaType::Bytes,
            "string" => SchemaType::String,
            "array" => SchemaType::Array,
            "map" => SchemaType::Map,
            "struct" => SchemaType::Struct,
            _ => return None,
        })
    }
}

/// A field of a struct schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field name.
    pub name: String,
    /// Its schema.
    pub schema: ConnectSchema,
}

/// A Kafka Connect schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectSchema {
    /// The type.
    pub schema_type: SchemaType,
    /// Whether the value may be null.
    pub optional: bool,
    /// The logical (or record) name, e.g. `io.debezium.time.Date`.
    pub name: Option<String>,
    /// The schema version.
    pub version: Option<i64>,
    /// Documentation.
    pub doc: Option<String>,
    /// Parameters in insertion order (`scale`, `connect.decimal.precision`, `allowed`, ...).
    pub parameters: Vec<(String, String)>,
    /// The default value, in its JSON form.
    pub default: Option<Json>,
    /// The fields of a struct.
    pub fields: Vec<Field>,
    /// The element schema of an array; the key schema of a map.
    pub items: Option<Box<ConnectSchema>>,
    /// The value schema of a map.
    pub values: Option<Box<ConnectSchema>>,
}

impl ConnectSchema {
    /// A required schema of type `t` with nothing else set.
    pub fn new(schema_type: SchemaType) -> Self {
        Self {
            schema_type,
            optional: false,
            name: None,
            version: None,
            doc: None,
            parameters: Vec::new(),
            default: None,
            fields: Vec::new(),
            items: None,
            values: None,
        }
    }

    /// A required struct of `fields`.
    pub fn struct_of(fields: Vec<Field>) -> Self {
        Self {
            fields,
            ..Self::new(SchemaType::Struct)
        }
    }

    /// A required array of `items`.
    pub fn array_of(items: ConnectSchema) -> Self {
        Self {
            items: Some(Box::new(items)),
            ..Self::new(SchemaType::Array)
        }
    }

    /// With `optional` set.
    pub fn optional(mut self, optional: bool) -> Self {
        self.optional = optional;
        self
    }

    /// With a name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With a version.
    pub fn versioned(mut self, version: i64) -> Self {
        self.version = Some(version);
        self
    }

    /// With one more parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameters.push((key.into(), value.into()));
        self
    }

    /// With a default value.
    pub fn with_default(mut self, default: Json) -> Self {
        self.default = Some(default);
        self
    }

    /// `self` as the schema of a struct field.
    pub fn field(self, name: impl Into<String>) -> Field {
        Field {
            name: name.into(),
            schema: self,
        }
    }

    /// The logical name, `""` if none.
    pub fn logical_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// A parameter's value.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A struct field's schema.
    pub fn field_schema(&self, name: &str) -> Option<&ConnectSchema> {
        self.fields.iter().find(|f| f.name == name).map(|f| &f.schema)
    }

    /// The schema as `JsonConverter` writes it.
    pub fn to_json_string(&self) -> String {
        let mut w = JsonWriter::default();
        self.write_json(&mut w, None);
        w.finish()
    }

    /// Writes the schema (as a struct field named `field`, if given) in `JsonConverter`'s
    /// field order.
    pub fn write_json(&self, w: &mut JsonWriter, field: Option<&str>) {
        w.begin_object();
        w.key("type");
        w.string(self.schema_type.json_name());
        match self.schema_type {
            SchemaType::Array => {
                if let Some(items) = &self.items {
                    w.key("items");
                    items.write_json(w, None);
                }
            }
            SchemaType::Map => {
                if let Some(keys) = &self.items {
                    w.key("keys");
                    keys.write_json(w, None);
                }
                if let Some(values) = &self.values {
                    w.key("values");
                    values.write_json(w, None);
                }
            }
            SchemaType::Struct => {
                w.key("fields");
                w.begin_array();
                for f in &self.fields {
                    f.schema.write_json(w, Some(&f.name));
                }
                w.end_array();
            }
            _ => {}
        }
        w.key("optional");
        w.raw(if self.optional { "true" } else { "false" });
        if let Some(name) = &self.name {
            w.key("name");
            w.string(name);
        }
        if let Some(version) = self.version {
            w.key("version");
            w.raw(&version.to_string());
        }
        if let Some(doc) = &self.doc {
            w.key("doc");
            w.string(doc);
        }
        if !self.parameters.is_empty() {
            w.key("parameters");
            w.begin_object();
            for (k, v) in &self.parameters {
                w.key(k);
                w.string(v);
            }
            w.end_object();
        }
        if let Some(default) = &self.default {
            w.key("default");
            w.raw(&default.to_string());
        }
        if let Some(field) = field {
            w.key("field");
            w.string(field);
        }
        w.end_object();
    }

    /// Reads a schema in `JsonConverter`'s form; `path` names it in errors. Lenient where
    /// `JsonConverter` is: a missing `optional` is `false`, parameter values that are not
    /// strings are taken as their JSON text.
    pub fn from_json(json: &Json, path: &str) -> Result<Self, CodecError> {
        let object = json.as_object().ok_or_else(|| {
            CodecError::new(path, format!("expected a schema object, found {}", kind(json)))
        })?;
        let type_name = object
            .get("type")
            .and_then(Json::as_str)
            .ok_or_else(|| CodecError::new(join(path, "type"), "a schema needs a string \"type\""))?;
        let schema_type = SchemaType::parse(type_name).ok_or_else(|| {
            CodecError::new(
                join(path, "type"),
                format!("unknown Connect schema type {type_name:?}"),
            )
        })?;
        let mut schema = ConnectSchema::new(schema_type);
        schema.optional = object.get("optional").and_then(Json::as_bool).unwrap_or(false);
        schema.name = object.get("name").and_then(Json::as_str).map(str::to_string);
        schema.version = object.get("version").and_then(Json::as_i64);
        schema.doc = object.get("doc").and_then(Json::as_str).map(str::to_string);
        if let Some(parameters) = object.get("parameters") {
            let parameters = parameters.as_object().ok_or_else(|| {
                CodecError::new(
                    join(path, "parameters"),
                    "expected an object of string parameters",
                )
            })?;
            for (k, v) in parameters {
                let v = match v {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                schema.parameters.push((k.clone(), v));
            }
        }
        schema.default = object.get("default").filter(|d| !d.is_null()).cloned();
        match schema_type {
            SchemaType::Struct => {
                let fields_path = join(path, "fields");
                let fields = object.get("fields").and_then(Json::as_array).ok_or_else(|| {
                    CodecError::new(&fields_path, "a struct schema needs a \"fields\" array")
                })?;
                for (i, f) in fields.iter().enumerate() {
                    let name = f.get("field").and_then(Json::as_str).ok_or_else(|| {
                        CodecError::new(format!("{fields_path}[{i}].field"), "a struct field needs a name")
                    })?;
                    let field_path = join(&fields_path, name);
                    schema.fields.push(Field {
                        name: name.to_string(),
                        schema: ConnectSchema::from_json(f, &field_path)?,
                    });
                }
            }
            SchemaType::Array => {
                let items = object
                    .get("items")
                    .ok_or_else(|| CodecError::new(path, "an array schema needs \"items\""))?;
                schema.items = Some(Box::new(ConnectSchema::from_json(items, &join(path, "items"))?));
            }
            SchemaType::Map => {
                let keys = object
                    .get("keys")
                    .ok_or_else(|| CodecError::new(path, "a map schema needs \"keys\""))?;
                let values = object
                    .get("values")
                    .ok_or_else(|| CodecError::new(path, "a map schema needs \"values\""))?;
                schema.items = Some(Box::new(ConnectSchema::from_json(keys, &join(path, "keys"))?));
                schema.values = Some(Box::new(ConnectSchema::from_json(values, &join(path, "values"))?));
            }
            _ => {}
        }
        Ok(schema)
    }
}

/// What kind of JSON value `v` is, for messages.
pub(crate) fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Writes JSON text with fields in the order they are written; commas are placed
/// automatically.
#[derive(Debug, Default)]
pub struct JsonWriter {
    out: String,
    /// For each open object or array: whether it has a member yet.
    open: Vec<bool>,
    /// A key was just written; its value comes next without a comma.
    after_key: bool,
}

impl JsonWriter {
    /// A writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            out: String::with_capacity(capacity),
            ..Self::default()
        }
    }

    fn separate(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(has_member) = self.open.last_mut() {
            if *has_member {
                self.out.push(',');
            }
            *has_member = true;
        }
    }

    /// Opens an object.
    pub fn begin_object(&mut self) {
        self.separate();
        self.out.push('{');
        self.open.push(false);
    }

    /// Closes the innermost object.
    pub fn end_object(&mut self) {
        self.open.pop();
        self.out.push('}');
    }

    /// Opens an array.
    pub fn begin_array(&mut self) {
        self.separate();
        self.out.push('[');
        self.open.push(false);
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) {
        self.open.pop();
        self.out.push(']');
    }

    /// Writes an object key.
    pub fn key(&mut self, key: &str) {
        self.separate();
        escape_into(&mut self.out, key);
        self.out.push(':');
        self.after_key = true;
    }

    /// Writes a string value.
    pub fn string(&mut self, s: &str) {
        self.separate();
        escape_into(&mut self.out, s);
    }

    /// Writes a value given as JSON text (a number, `true`, `null`, or a whole document).
    pub fn raw(&mut self, json: &str) {
        self.separate();
        self.out.push_str(json);
    }

    /// Writes `null`.
    pub fn null(&mut self) {
        self.raw("null");
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Appends `s` as a JSON string literal, escaped as Jackson (Kafka Connect's JSON library)
/// escapes: `"` and `\`, the short forms of control characters, `\u00XX` for the others.
pub fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            out.push_str(&format!("\\u{:04X}", c as u32));
        } else {
            out.push_str(escaped);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_json_follows_json_converter_order() {
        let s = ConnectSchema::new(SchemaType::String)
            .optional(true)
            .named("io.debezium.data.Enum")
            .versioned(1)
            .param("allowed", "a,b")
            .with_default(Json::String("false".into()));
        let mut w = JsonWriter::default();
        s.write_json(&mut w, Some("snapshot"));
        assert_eq!(
            w.finish(),
            r#"{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"a,b"},"default":"false","field":"snapshot"}"#
        );
        let st = ConnectSchema::struct_of(vec![
            ConnectSchema::new(SchemaType::Int32).field("id"),
            ConnectSchema::array_of(ConnectSchema::new(SchemaType::Float32).optional(true)).field("xs"),
        ])
        .named("p.s.t.Key");
        let text = st.to_json_string();
        assert_eq!(
            text,
            r#"{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"},{"type":"array","items":{"type":"float","optional":true},"optional":false,"field":"xs"}],"optional":false,"name":"p.s.t.Key"}"#
        );
        let back = ConnectSchema::from_json(&serde_json::from_str(&text).unwrap(), "schema").unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn escapes_like_jackson() {
        let mut out = String::new();
        escape_into(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn bad_schemas_name_the_path() {
        let e = ConnectSchema::from_json(&serde_json::json!({"type": "struct"}), "schema").unwrap_err();
        assert_eq!(e.path, "schema.fields");
        let e = ConnectSchema::from_json(
            &serde_json::json!({"type": "struct", "fields": [{"type": "nope", "field": "a"}]}),
            "schema",
        )
        .unwrap_err();
        assert_eq!(e.path, "schema.fields.a.type");
        assert!(e.message.contains("unknown Connect schema type \"nope\""), "{e}");
        let e = ConnectSchema::from_json(&serde_json::json!(3), "schema").unwrap_err();
        assert!(e.message.contains("found a number"), "{e}");
    }
}
