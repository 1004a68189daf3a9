//! tarn's column types as Kafka Connect schemas, the way Debezium's PostgreSQL connector maps
//! PostgreSQL types with its default settings, and Connect schemas back to tarn's types.
//!
//! Encoding follows the PostgreSQL connector documentation's "Data type mappings" section
//! ("Basic types", "Temporal types" under `time.precision.mode=adaptive`, "Decimal types"
//! under `decimal.handling.mode=precise`, `binary.handling.mode=bytes`,
//! `interval.handling.mode=numeric`), keyed on the column's [`ColumnType`] and, for the types
//! tarn carries as text, its PostgreSQL type OID:
//!
//! | tarn column (PostgreSQL type) | Connect type | logical name |
//! |---|---|---|
//! | `Bool` | `boolean` | |
//! | `Int16` / `Int32` / `Int64` (`oid` too) | `int16` / `int32` / `int64` | |
//! | `Float32` / `Float64` | `float` / `double` | |
//! | `Decimal(p, s)` | `bytes` | `org.apache.kafka.connect.data.Decimal`, `scale`, `connect.decimal.precision` |
//! | `Text` of unconstrained `numeric` | `struct` {`scale`, `value`} | `io.debezium.data.VariableScaleDecimal` |
//! | `Text` of `money` | `bytes` | `org.apache.kafka.connect.data.Decimal`, scale 2 (`money.fraction.digits`) |
//! | `Text` of `json`, `jsonb` | `string` | `io.debezium.data.Json` |
//! | `Text` of `uuid` / `xml` / `tsvector` | `string` | `io.debezium.data.Uuid` / `.Xml` / `.TsVector` |
//! | `Text` of `interval` | `int64` | `io.debezium.time.MicroDuration` (a month is 365.25/12 days) |
//! | `Text` of `timetz` | `string` | `io.debezium.time.ZonedTime` (UTC) |
//! | other `Text` (`text`, `varchar`, `bpchar`, `inet`, enums, `bit`, ...) | `string` | |
//! | `Bytea` | `bytes` | |
//! | `Date` | `int32` | `io.debezium.time.Date` (days since the epoch) |
//! | `Time` | `int64` | `io.debezium.time.MicroTime` |
//! | `Timestamp` | `int64` | `io.debezium.time.MicroTimestamp` |
//! | `TimestampTz` | `string` | `io.debezium.time.ZonedTimestamp` (ISO-8601, UTC) |
//! | `List(t)` | `array` of `t`'s schema, optional elements | |
//!
//! Where tarn knows less than Debezium, the result differs, and is documented here: tarn's
//! table specs carry no precision for `time`/`timestamp`, so they always take the
//! microsecond forms (Debezium's for `time`, `time(4..6)`, `timestamp`, `timestamp(4..6)`;
//! `time(0..3)` and `timestamp(0..3)` would be milliseconds in Debezium); enums go out as plain
//! strings (no `allowed` list) and `bit`/`varbit` as their text (`'0101'`, where Debezium writes
//! `io.debezium.data.Bits`); arrays of `money`, `interval` and `xml`, which Debezium leaves
//! out, go out as arrays of strings.
//!
//! Decoding ([`column_type_of`]) reads every Connect type and the logical names Debezium's
//! PostgreSQL, MySQL and SQL Server connectors use, with any `time.precision.mode`.

use super::connect::{ConnectSchema, SchemaType};
use crate::source::ColumnSpec;
use crate::value::ColumnType;

/// `org.apache.kafka.connect.data.Decimal`.
pub const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
/// `org.apache.kafka.connect.data.Date` (days, int32).
pub const CONNECT_DATE: &str = "org.apache.kafka.connect.data.Date";
/// `org.apache.kafka.connect.data.Time` (milliseconds past midnight, int32).
pub const CONNECT_TIME: &str = "org.apache.kafka.connect.data.Time";
/// `org.apache.kafka.connect.data.Timestamp` (milliseconds since the epoch, int64).
pub const CONNECT_TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";
/// Debezium's arbitrary-precision decimal, a struct of `scale` and `value`.
pub const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";
/// Days since the epoch (int32).
pub const DATE: &str = "io.debezium.time.Date";
/// Milliseconds past midnight (int32).
pub const TIME: &str = "io.debezium.time.Time";
/// Microseconds past midnight (int64).
pub const MICRO_TIME: &str = "io.debezium.time.MicroTime";
/// Nanoseconds past midnight (int64).
pub const NANO_TIME: &str = "io.debezium.time.NanoTime";
/// Milliseconds since the epoch, no zone (int64).
pub const TIMESTAMP: &str = "io.debezium.time.Timestamp";
/// Microseconds since the epoch, no zone (int64).
pub const MICRO_TIMESTAMP: &str = "io.debezium.time.MicroTimestamp";
/// Nanoseconds since the epoch, no zone (int64).
pub const NANO_TIMESTAMP: &str = "io.debezium.time.NanoTimestamp";
/// ISO-8601 timestamp with offset (string).
pub const ZONED_TIMESTAMP: &str = "io.debezium.time.ZonedTimestamp";
/// ISO-8601 time with offset (string).
pub const ZONED_TIME: &str = "io.debezium.time.ZonedTime";
/// ISO-8601 date in UTC (string, `time.precision.mode=isostring`).
pub const ISO_DATE: &str = "io.debezium.time.IsoDate";
/// ISO-8601 time in UTC (string, `time.precision.mode=isostring`).
pub const ISO_TIME: &str = "io.debezium.time.IsoTime";
/// ISO-8601 timestamp in UTC (string, `time.precision.mode=isostring`).
pub const ISO_TIMESTAMP: &str = "io.debezium.time.IsoTimestamp";
/// An interval in microseconds (int64).
pub const MICRO_DURATION: &str = "io.debezium.time.MicroDuration";
/// An interval as ISO-8601 text (`interval.handling.mode=string`).
pub const INTERVAL: &str = "io.debezium.time.Interval";
/// A MySQL `YEAR` (int32).
pub const YEAR: &str = "io.debezium.time.Year";
/// A JSON document as a string.
pub const JSON: &str = "io.debezium.data.Json";
/// A UUID as a string.
pub const UUID: &str = "io.debezium.data.Uuid";
/// An XML document as a string.
pub const XML: &str = "io.debezium.data.Xml";
/// A text-search vector as a string.
pub const TS_VECTOR: &str = "io.debezium.data.TsVector";
/// A bit string as little-endian bytes, `length` bits.
pub const BITS: &str = "io.debezium.data.Bits";
/// An enum value as a string, `allowed` values.
pub const ENUM: &str = "io.debezium.data.Enum";

/// PostgreSQL type OIDs whose Debezium mapping differs from their tarn column type's.
mod oid {
    pub const NUMERIC: u32 = 1700;
    pub const NUMERIC_ARRAY: u32 = 1231;
    pub const MONEY: u32 = 790;
    pub const MONEY_ARRAY: u32 = 791;
    pub const JSON: u32 = 114;
    pub const JSON_ARRAY: u32 = 199;
    pub const JSONB: u32 = 3802;
    pub const JSONB_ARRAY: u32 = 3807;
    pub const UUID: u32 = 2950;
    pub const UUID_ARRAY: u32 = 2951;
    pub const XML: u32 = 142;
    pub const XML_ARRAY: u32 = 143;
    pub const TSVECTOR: u32 = 3614;
    pub const TSVECTOR_ARRAY: u32 = 3643;
    pub const INTERVAL: u32 = 1186;
    pub const INTERVAL_ARRAY: u32 = 1187;
    pub const TIMETZ: u32 = 1266;
    pub const TIMETZ_ARRAY: u32 = 1270;
}

/// The type OID tarn's encoder reads for a decoded column: the PostgreSQL type whose Debezium
/// mapping produces the logical name (json, uuid, ...), so that re-encoding a decoded table
/// writes the same schema. Plain types get their usual built-in OID.
fn oid_of(t: &ColumnType, logical: &str) -> u32 {
    match logical {
        JSON => return oid::JSON,
        UUID => return oid::UUID,
        XML => return oid::XML,
        TS_VECTOR => return oid::TSVECTOR,
        MICRO_DURATION => return oid::INTERVAL,
        ZONED_TIME => return oid::TIMETZ,
        VARIABLE_SCALE_DECIMAL => return oid::NUMERIC,
        _ => {}
    }
    match t {
        ColumnType::Bool => 16,
        ColumnType::Int16 => 21,
        ColumnType::Int32 => 23,
        ColumnType::Int64 => 20,
        ColumnType::Float32 => 700,
        ColumnType::Float64 => 701,
        ColumnType::Decimal { .. } => oid::NUMERIC,
        ColumnType::Text => 25,
        ColumnType::Bytea => 17,
        ColumnType::Date => 1082,
        ColumnType::Time => 1083,
        ColumnType::Timestamp => 1114,
        ColumnType::TimestampTz => 1184,
        ColumnType::List(element) => match (&**element, oid_of(element, logical)) {
            (_, oid::JSON) => oid::JSON_ARRAY,
            (_, oid::UUID) => oid::UUID_ARRAY,
            (_, oid::XML) => oid::XML_ARRAY,
            (_, oid::TSVECTOR) => oid::TSVECTOR_ARRAY,
            (_, oid::INTERVAL) => oid::INTERVAL_ARRAY,
            (_, oid::TIMETZ) => oid::TIMETZ_ARRAY,
            (ColumnType::Bool, _) => 1000,
            (ColumnType::Int16, _) => 1005,
            (ColumnType::Int32, _) => 1007,
            (ColumnType::Int64, _) => 1016,
            (ColumnType::Float32, _) => 1021,
            (ColumnType::Float64, _) => 1022,
            (ColumnType::Decimal { .. }, _) => oid::NUMERIC_ARRAY,
            (ColumnType::Bytea, _) => 1001,
            (ColumnType::Date, _) => 1182,
            (ColumnType::Time, _) => 1183,
            (ColumnType::Timestamp, _) => 1115,
            (ColumnType::TimestampTz, _) => 1185,
            _ => 1009,
        },
    }
}

/// The element type OID of an array type OID, for the arrays whose elements map specially.
fn element_oid(array_oid: u32) -> u32 {
    match array_oid {
        oid::NUMERIC_ARRAY => oid::NUMERIC,
        oid::MONEY_ARRAY => oid::MONEY,
        oid::JSON_ARRAY => oid::JSON,
        oid::JSONB_ARRAY => oid::JSONB,
        oid::UUID_ARRAY => oid::UUID,
        oid::XML_ARRAY => oid::XML,
        oid::TSVECTOR_ARRAY => oid::TSVECTOR,
        oid::INTERVAL_ARRAY => oid::INTERVAL,
        oid::TIMETZ_ARRAY => oid::TIMETZ,
        _ => 0,
    }
}

/// The Connect schema of a column's values (the field schema in `.Value` and `.Key`).
pub fn column_schema(column: &ColumnSpec) -> ConnectSchema {
    type_schema(&column.column_type, column.type_oid).optional(!column.not_null)
}

/// The (required) Connect schema of values of `t`; `type_oid` picks the logical type of the
/// types tarn carries as text.
pub fn type_schema(t: &ColumnType, type_oid: u32) -> ConnectSchema {
    let plain = ConnectSchema::new;
    let logical = |schema_type, name: &str| ConnectSchema::new(schema_type).named(name).versioned(1);
    match t {
        ColumnType::Bool => plain(SchemaType::Boolean),
        ColumnType::Int16 => plain(SchemaType::Int16),
        ColumnType::Int32 => plain(SchemaType::Int32),
        ColumnType::Int64 => plain(SchemaType::Int64),
        ColumnType::Float32 => plain(SchemaType::Float32),
        ColumnType::Float64 => plain(SchemaType::Float64),
        // "Decimal types": precise mode, `SpecialValueDecimal.builder` (scale, then precision).
        ColumnType::Decimal { precision, scale } => logical(SchemaType::Bytes, DECIMAL)
            .param("scale", scale.to_string())
            .param("connect.decimal.precision", precision.to_string()),
        ColumnType::Text => match type_oid {
            oid::NUMERIC => variable_scale_decimal(),
            oid::MONEY => logical(SchemaType::Bytes, DECIMAL).param("scale", "2"),
            oid::JSON | oid::JSONB => logical(SchemaType::String, JSON),
            oid::UUID => logical(SchemaType::String, UUID),
            oid::XML => logical(SchemaType::String, XML),
            oid::TSVECTOR => logical(SchemaType::String, TS_VECTOR),
            oid::INTERVAL => logical(SchemaType::Int64, MICRO_DURATION),
            oid::TIMETZ => logical(SchemaType::String, ZONED_TIME),
            _ => plain(SchemaType::String),
        },
        ColumnType::Bytea => plain(SchemaType::Bytes),
        ColumnType::Date => logical(SchemaType::Int32, DATE),
        ColumnType::Time => logical(SchemaType::Int64, MICRO_TIME),
        ColumnType::Timestamp => logical(SchemaType::Int64, MICRO_TIMESTAMP),
        ColumnType::TimestampTz => logical(SchemaType::String, ZONED_TIMESTAMP),
        ColumnType::List(element) => {
            let element_oid = element_oid(type_oid);
            let items = match (&**element, element_oid) {
                // Debezium has no schema for these arrays and leaves the column out; tarn
                // sends their elements' text.
                (ColumnType::Text, oid::MONEY | oid::INTERVAL | oid::XML) => plain(SchemaType::String),
                (element, element_oid) => type_schema(element, element_oid),
            };
            ConnectSchema::array_of(items.optional(true))
        }
    }
}

/// `io.debezium.data.VariableScaleDecimal`: the struct of an unconstrained `numeric`.
pub fn variable_scale_decimal() -> ConnectSchema {
    ConnectSchema::struct_of(vec![
        ConnectSchema::new(SchemaType::Int32).field("scale"),
        ConnectSchema::new(SchemaType::Bytes).field("value"),
    ])
    .named(VARIABLE_SCALE_DECIMAL)
    .versioned(1)
    .doc_string("Variable scaled decimal")
}

impl ConnectSchema {
    fn doc_string(mut self, doc: &str) -> Self {
        self.doc = Some(doc.to_string());
        self
    }
}

/// What a Connect schema becomes as a tarn column: its type, the PostgreSQL type OID whose
/// Debezium mapping gives this schema, and a type name for messages (the logical name, else
/// the Connect type).
///
/// Connect types without a tarn counterpart (maps, structs other than
/// `VariableScaleDecimal`, arrays of arrays, decimals wider than 38 digits) become `Text`
/// columns holding the value's JSON (or decimal) text.
pub fn column_type_of(schema: &ConnectSchema) -> (ColumnType, u32, String) {
    let t = column_type(schema);
    let logical = schema.logical_name();
    let oid = oid_of(&t, logical);
    let name = if logical.is_empty() {
        schema.schema_type.json_name().to_string()
    } else {
        logical.to_string()
    };
    (t, oid, name)
}

fn column_type(schema: &ConnectSchema) -> ColumnType {
    let logical = schema.logical_name();
    match schema.schema_type {
        SchemaType::Boolean => ColumnType::Bool,
        SchemaType::Int8 | SchemaType::Int16 => ColumnType::Int16,
        SchemaType::Int32 => match logical {
            DATE | CONNECT_DATE => ColumnType::Date,
            TIME | CONNECT_TIME => ColumnType::Time,
            _ => ColumnType::Int32,
        },
        SchemaType::Int64 => match logical {
            MICRO_TIME | NANO_TIME | CONNECT_TIME | TIME => ColumnType::Time,
            TIMESTAMP | MICRO_TIMESTAMP | NANO_TIMESTAMP | CONNECT_TIMESTAMP => ColumnType::Timestamp,
            MICRO_DURATION => ColumnType::Text,
            _ => ColumnType::Int64,
        },
        SchemaType::Float32 => ColumnType::Float32,
        SchemaType::Float64 => ColumnType::Float64,
        SchemaType::Bytes => match logical {
            DECIMAL => decimal_type(schema),
            BITS => ColumnType::Text,
            _ => ColumnType::Bytea,
        },
        SchemaType::String => match logical {
            ZONED_TIMESTAMP => ColumnType::TimestampTz,
            ISO_DATE => ColumnType::Date,
            ISO_TIME => ColumnType::Time,
            ISO_TIMESTAMP => ColumnType::Timestamp,
            _ => ColumnType::Text,
        },
        SchemaType::Array => match schema.items.as_deref().map(column_type) {
            Some(ColumnType::List(_)) | None => ColumnType::Text,
            Some(element) => ColumnType::List(Box::new(element)),
        },
        SchemaType::Struct if logical == VARIABLE_SCALE_DECIMAL => {
            // tarn's default for an unconstrained numeric (cdc.unconstrained_numeric).
            ColumnType::Decimal {
                precision: 38,
                scale: 18,
            }
        }
        SchemaType::Map | SchemaType::Struct => ColumnType::Text,
    }
}

fn decimal_type(schema: &ConnectSchema) -> ColumnType {
    let scale = schema
        .parameter("scale")
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let precision = schema
        .parameter("connect.decimal.precision")
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(38);
    // numeric(p, s) with s < 0 holds integers of up to p - s digits (as tarn's PostgreSQL
    // mapping does); s > p holds values below 10^(p - s) with s fraction digits.
    let (precision, scale) = if scale < 0 {
        (precision - scale, 0)
    } else {
        (precision.max(scale), scale)
    };
    if (1..=38).contains(&precision) {
        ColumnType::Decimal {
            precision: precision as u8,
            scale: scale as i8,
        }
    } else {
        ColumnType::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(t: ColumnType, oid: u32, not_null: bool) -> ColumnSpec {
        ColumnSpec {
            name: "c".into(),
            column_type: t,
            key: false,
            not_null,
            type_oid: oid,
            type_name: String::new(),
            attnum: 1,
        }
    }

    #[test]
    fn postgres_defaults() {
        let s = column_schema(&col(
            ColumnType::Decimal {
                precision: 10,
                scale: 2,
            },
            1700,
            true,
        ));
        assert_eq!(
            s.to_json_string(),
            r#"{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"}}"#
        );
        let s = column_schema(&col(ColumnType::TimestampTz, 1184, false));
        assert_eq!(s.logical_name(), ZONED_TIMESTAMP);
        assert!(s.optional);
        assert_eq!(
            column_schema(&col(ColumnType::Text, 3802, false)).logical_name(),
            JSON
        );
        assert_eq!(
            column_schema(&col(ColumnType::Text, 1186, false)).schema_type,
            SchemaType::Int64
        );
        let s = column_schema(&col(ColumnType::List(Box::new(ColumnType::Text)), 2951, false));
        assert_eq!(s.items.as_ref().unwrap().logical_name(), UUID);
        assert!(s.items.as_ref().unwrap().optional);
        assert_eq!(
            column_schema(&col(ColumnType::Float32, 700, true)).to_json_string(),
            r#"{"type":"float","optional":false}"#
        );
    }

    #[test]
    fn every_type_maps_back_to_itself() {
        let types = [
            ColumnType::Bool,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: 38,
                scale: 10,
            },
            ColumnType::Decimal {
                precision: 1,
                scale: 0,
            },
            ColumnType::Text,
            ColumnType::Bytea,
            ColumnType::Date,
            ColumnType::Time,
            ColumnType::Timestamp,
            ColumnType::TimestampTz,
            ColumnType::List(Box::new(ColumnType::Decimal {
                precision: 5,
                scale: 2,
            })),
            ColumnType::List(Box::new(ColumnType::TimestampTz)),
        ];
        for t in types {
            let (back, oid, _) = column_type_of(&type_schema(&t, 0));
            assert_eq!(back, t);
            assert_eq!(type_schema(&back, oid), type_schema(&t, 0), "{t}");
        }
        for oid in [114, 2950, 142, 1186, 1266, 3614] {
            let (back, back_oid, name) = column_type_of(&type_schema(&ColumnType::Text, oid));
            assert_eq!(back, ColumnType::Text, "{name}");
            assert_eq!(
                type_schema(&back, back_oid),
                type_schema(&ColumnType::Text, oid),
                "{name}"
            );
        }
    }

    #[test]
    fn other_connectors_types() {
        let t = |s: ConnectSchema| column_type_of(&s).0;
        assert_eq!(
            t(ConnectSchema::new(SchemaType::Int64).named(TIMESTAMP)),
            ColumnType::Timestamp
        );
        assert_eq!(
            t(ConnectSchema::new(SchemaType::Int32).named(CONNECT_TIME)),
            ColumnType::Time
        );
        assert_eq!(t(ConnectSchema::new(SchemaType::Int8)), ColumnType::Int16);
        // numeric(5, -2) holds integers of up to 7 digits; without a precision, 38 + 2 is too wide.
        let negative_scale = ConnectSchema::new(SchemaType::Bytes)
            .named(DECIMAL)
            .param("scale", "-2");
        assert_eq!(t(negative_scale.clone()), ColumnType::Text);
        assert_eq!(
            t(negative_scale.param("connect.decimal.precision", "5")),
            ColumnType::Decimal {
                precision: 7,
                scale: 0
            }
        );
        assert_eq!(
            t(ConnectSchema::new(SchemaType::Bytes)
                .named(DECIMAL)
                .param("scale", "4")
                .param("connect.decimal.precision", "65")),
            ColumnType::Text
        );
        assert_eq!(
            t(variable_scale_decimal()),
            ColumnType::Decimal {
                precision: 38,
                scale: 18
            }
        );
        assert_eq!(
            t(ConnectSchema::array_of(ConnectSchema::array_of(
                ConnectSchema::new(SchemaType::Int32)
            ))),
            ColumnType::Text
        );
    }
}
