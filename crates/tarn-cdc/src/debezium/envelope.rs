//! The direct path of [`Decoder`](super::Decoder): a change event read straight from the
//! message's JSON text into a [`DecodedChange`], without a `serde_json::Value` tree in between.
//!
//! Why our own reading instead of `serde_json::from_slice::<Value>`: profiling `tarn bench
//! kafka` (Debezium events with embedded schemas) showed about 40 % of the consumer's CPU in
//! building and dropping `Value` trees of each payload — a `BTreeMap` and an owned `String`
//! for every key of the envelope, the `source` block and the rows, then the cells copied out
//! of them again. Here the envelope is walked once with serde's streaming visitors: keys are
//! compared in place (a row's keys against its schema's fields, in order), `source` keeps
//! borrowed strings, and each cell goes from its JSON token to tarn's [`Value`] in one step
//! ([`read_str`] for strings, [`read_value`] for the rest, so cells are read by the same code
//! either way).
//!
//! Contract: this path either returns exactly what the general path
//! (`Decoder::decode_general`) returns for the same message, or `None`, and then the caller
//! takes the general path, which also words every error (with its field path). It declines
//! whatever it does not read the general path's way: a message whose schema the decoder has
//! not seen yet (the general path parses it and caches it), key-change headers, JSON objects
//! with a key given twice, row fields out of their schema's order or not in it, a wrapper
//! that is not `JsonConverter`'s byte layout, and any value the general path would refuse.
//! Unit tests hold both paths to the same results over the recorded fixtures
//! (`debezium::tests`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use super::Op;
use super::connect::{ConnectSchema, Field};
use super::decode::{
    DecodedChange, DecodedRow, FieldRef, SourceFields, check_rows, lenient_i64, read_source, source_path,
    transaction_block,
};
use super::values::{read_str, read_value};
use crate::value::Value;

/// The key row in `payload`, the key's JSON without its wrapper: `Some(None)` for a JSON
/// null, `None` when the general path must read it. `unwrapped`: the key had no wrapper, so a
/// `schema` or `payload` field may mean one that was not recognised.
pub(super) fn read_key(
    payload: &[u8],
    schema: Option<&ConnectSchema>,
    unwrapped: bool,
) -> Option<Option<DecodedRow>> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let row = RowSeed { schema, unwrapped }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(row)
}

/// The change in `payload`, the envelope's JSON (the value without its wrapper). `envelope`:
/// the embedded schema, if the value had one; `rows`: the schema its rows are read with.
/// `None` when the general path must read it.
pub(super) fn read_change(
    payload: &[u8],
    envelope: Option<&ConnectSchema>,
    rows: Option<&ConnectSchema>,
    key: Option<DecodedRow>,
) -> Option<DecodedChange> {
    let wrapped = envelope.is_some();
    let mut de = serde_json::Deserializer::from_slice(payload);
    let read = EnvelopeSeed {
        rows,
        unwrapped: !wrapped,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    let op = match read.op? {
        Cell::Str(code) => Op::from_code(&code)?,
        Cell::Json(_) => return None,
    };
    let source = read.source?;
    let source_path = source_path(wrapped);
    let value_path = if wrapped { "value.payload" } else { "value" };
    let source_schema = envelope.and_then(|s| s.field_schema("source"));
    let (table, position, snapshot) = read_source(&source, source_schema, source_path).ok()?;
    check_rows(op, &read.before, &read.after, &key, value_path).ok()?;
    let transaction = match &read.transaction {
        None => None,
        Some(Cell::Json(json)) => transaction_block(Some(json), value_path).ok()?,
        Some(Cell::Str(_)) => return None,
    };
    Some(DecodedChange {
        op,
        table,
        key,
        before: read.before,
        after: read.after,
        position,
        snapshot,
        source_ts_ms: lenient_i64(source.field("ts_ms"), source_path, "ts_ms").ok()?,
        ts_ms: lenient_i64(read.ts_ms.as_ref().map(Cell::field), value_path, "ts_ms").ok()?,
        transaction,
        key_change: None,
        spec: None,
    })
}

/// The error that makes the caller take the general path; its text is never shown.
fn decline<E: de::Error>() -> E {
    E::custom("read by the general path")
}

/// One JSON value as read: a string (borrowed from the message when it has no escapes), or
/// any other value as `Json` (numbers, booleans and null allocate nothing).
enum Cell<'de> {
    Str(Cow<'de, str>),
    Json(Json),
}

impl Cell<'_> {
    fn field(&self) -> FieldRef<'_> {
        match self {
            Cell::Str(s) => FieldRef::Str(s),
            Cell::Json(json) => FieldRef::Json(json),
        }
    }

    /// The cell under `schema` (or by its JSON kind), as [`read_value`] reads it.
    fn value(&self, schema: Option<&ConnectSchema>) -> Option<Value> {
        match self {
            Cell::Str(s) => read_str(schema, s, ""),
            Cell::Json(json) => read_value(schema, json, ""),
        }
        .ok()
    }
}

impl<'de> Deserialize<'de> for Cell<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cell::Json(Json::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cell::Json(Json::Null))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cell::Json(Json::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cell::Json(Json::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cell::Json(Json::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // As serde_json's own `Value` reads a float.
        Ok(Cell::Json(
            serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
        ))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cell::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cell::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cell::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Json::deserialize(SeqAccessDeserializer::new(seq)).map(Cell::Json)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Json::deserialize(MapAccessDeserializer::new(map)).map(Cell::Json)
    }
}

/// A key, borrowed from the message when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Whether `key` is one of the wrapper's, which an unwrapped message must not have (the
/// general path would take an object of exactly `schema` and `payload` for a wrapper).
fn wrapper_key(key: &str) -> bool {
    key == "schema" || key == "payload"
}

/// A row (or key): `None` for null, else its cells in schema order (by name without a
/// schema), as `read_row` gives them.
struct RowSeed<'s> {
    schema: Option<&'s ConnectSchema>,
    unwrapped: bool,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Option<DecodedRow>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Option<DecodedRow>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(schema) = self.schema else {
            // By name, as a parsed object orders its keys; a key given twice is declined.
            let mut columns: Vec<(String, Value)> = Vec::new();
            while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
                if self.unwrapped && wrapper_key(&name) {
                    return Err(decline());
                }
                let cell: Cell<'de> = map.next_value()?;
                let value = cell.value(None).ok_or_else(decline)?;
                columns.push((name.into_owned(), value));
            }
            columns.sort_by(|a, b| a.0.cmp(&b.0));
            if columns.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(decline());
            }
            return Ok(Some(DecodedRow { columns }));
        };
        let fields = &schema.fields;
        let mut columns: Vec<(String, Value)> = Vec::with_capacity(fields.len());
        // Fields come in schema order: each key is looked for after the previous one, so a
        // key given twice, or out of order, is declined.
        let mut next = 0;
        while let Some(i) = map.next_key_seed(FieldIndex {
            fields,
            from: next,
            unwrapped: self.unwrapped,
        })? {
            let field = &fields[i];
            let cell: Cell<'de> = map.next_value()?;
            let value = cell.value(Some(&field.schema)).ok_or_else(decline)?;
            columns.push((field.name.clone(), value));
            next = i + 1;
        }
        Ok(Some(DecodedRow { columns }))
    }
}

/// The index of a row's key among `fields[from..]`; a key elsewhere or not there is declined.
/// The fields' names are distinct (the decoder declines schemas that repeat one: the general
/// path gives such a row the cell once per listing).
struct FieldIndex<'s> {
    fields: &'s [Field],
    from: usize,
    unwrapped: bool,
}

impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field of the row's schema")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if self.unwrapped && wrapper_key(key) {
            return Err(decline());
        }
        let rest = self.fields.get(self.from..).unwrap_or_default();
        match rest.iter().position(|f| f.name == key) {
            Some(at) => Ok(self.from + at),
            None => Err(decline()),
        }
    }
}

/// What [`read_change`] takes from the envelope.
#[derive(Default)]
struct EnvelopeFields<'de> {
    op: Option<Cell<'de>>,
    source: Option<SourceBlock<'de>>,
    before: Option<DecodedRow>,
    after: Option<DecodedRow>,
    ts_ms: Option<Cell<'de>>,
    transaction: Option<Cell<'de>>,
}

struct EnvelopeSeed<'s> {
    rows: Option<&'s ConnectSchema>,
    unwrapped: bool,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = EnvelopeFields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = EnvelopeFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a change event envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = EnvelopeFields::default();
        // Which fields were read (a field given twice is declined), one bit each.
        let mut seen = 0u8;
        let mut once = |bit: u8| -> Result<(), A::Error> {
            let first = seen & bit == 0;
            seen |= bit;
            if first { Ok(()) } else { Err(decline()) }
        };
        let row = || RowSeed {
            schema: self.rows,
            unwrapped: false,
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "op" => {
                    once(1)?;
                    out.op = Some(map.next_value()?);
                }
                "source" => {
                    once(2)?;
                    out.source = Some(map.next_value()?);
                }
                "before" => {
                    once(4)?;
                    out.before = map.next_value_seed(row())?;
                }
                "after" => {
                    once(8)?;
                    out.after = map.next_value_seed(row())?;
                }
                "ts_ms" => {
                    once(16)?;
                    out.ts_ms = Some(map.next_value()?);
                }
                "transaction" => {
                    once(32)?;
                    out.transaction = Some(map.next_value()?);
                }
                key if self.unwrapped && wrapper_key(key) => return Err(decline()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A `source` block's fields in the order written, strings borrowed from the message.
struct SourceBlock<'de>(Vec<(Cow<'de, str>, Cell<'de>)>);

impl SourceFields for SourceBlock<'_> {
    fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.field())
    }
}

impl<'de> Deserialize<'de> for SourceBlock<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SourceBlock<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a source block")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(16);
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    fields.push((key, map.next_value::<Cell<'de>>()?));
                }
                Ok(SourceBlock(fields))
            }
        }
        deserializer.deserialize_map(SourceVisitor)
    }
}
