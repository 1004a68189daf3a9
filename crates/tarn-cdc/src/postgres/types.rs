//! Maps PostgreSQL column types to tarn's [`ColumnType`]s: built-in types from a fixed table
//! of OIDs, user types (enums, domains, arrays of them, extension types) through a
//! [`TypeCatalog`]. CockroachDB describes its columns in the same `pg_catalog` terms, so its
//! source uses this mapping too.
//!
//! [`resolve`] turns a column's type OID and type modifier (from a `pgoutput` Relation message
//! or from `pg_attribute`) into a [`ColumnType`]; `docs/cdc-types.md` is the user-facing table
//! of the mapping. How values of those types are read is `crate::value`'s business.
//!
//! Contract: built-in types (OID below [`FIRST_NORMAL_OID`]) are resolved from a fixed table.
//! User types are looked up in a [`TypeCatalog`], which the caller fills with
//! [`TYPE_INFO_QUERY`] for every column type OID ≥ 16384; the query follows array elements
//! and domain bases itself. A type tarn cannot map is an [`ErrorKind::InvalidInput`] error
//! naming the column and the type, unless [`TypeOptions::unsupported_as_text`] carries it as
//! text.

use std::collections::HashMap;

use tarn_core::{Error, ErrorKind, Result};

use crate::value::ColumnType;

/// The first OID PostgreSQL assigns to user-defined objects; types below it are built in.
pub const FIRST_NORMAL_OID: u32 = 16_384;

/// The catalog facts about one PostgreSQL type that [`resolve`] needs (a row of `pg_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTypeInfo {
    /// The type's OID.
    pub oid: u32,
    /// `typname`.
    pub name: String,
    /// The name of the type's schema.
    pub namespace: String,
    /// `typtype`: `b` base, `e` enum, `d` domain, `c` composite, `r` range, `m` multirange,
    /// `p` pseudo.
    pub typtype: char,
    /// The element type of an array type (`typelem` of types in category `A`), 0 otherwise.
    pub elem: u32,
    /// The base type of a domain (`typbasetype`), 0 otherwise.
    pub base_type: u32,
    /// The type modifier a domain applies to its base type (`typtypmod`), -1 if none.
    pub base_typmod: i32,
    /// `typcategory`: `A` array, `S` string, `N` numeric, `U` user-defined, ...
    pub category: char,
}

/// Looks up [`PgTypeInfo`] of user-defined types by OID.
pub trait TypeCatalog {
    /// The type with this OID, `None` if the catalog does not hold it.
    fn lookup(&self, oid: u32) -> Option<PgTypeInfo>;
}

impl<S: std::hash::BuildHasher> TypeCatalog for HashMap<u32, PgTypeInfo, S> {
    fn lookup(&self, oid: u32) -> Option<PgTypeInfo> {
        self.get(&oid).cloned()
    }
}

/// SQL returning the [`PgTypeInfo`] rows for the type OIDs in `$1` (an `oid[]`), and, through
/// array elements and domain bases, for every type those depend on. The columns are, in
/// order: `oid` (oid), `name` (text), `namespace` (text), `typtype` (text, one character),
/// `elem` (oid), `base_type` (oid), `base_typmod` (int4), `category` (text, one character).
///
/// Pass at least every column type OID ≥ [`FIRST_NORMAL_OID`]; passing all column type OIDs
/// is fine (built-in rows are simply not needed).
pub const TYPE_INFO_QUERY: &str = "\
WITH RECURSIVE wanted(oid) AS (
    SELECT unnest($1::oid[])
  UNION
    SELECT dep.oid
    FROM wanted w
    JOIN pg_catalog.pg_type t ON t.oid = w.oid
    CROSS JOIN LATERAL (VALUES (t.typelem), (t.typbasetype)) AS dep(oid)
    WHERE dep.oid <> 0
)
SELECT t.oid,
       t.typname::text AS name,
       n.nspname::text AS namespace,
       t.typtype::text AS typtype,
       CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0::oid END AS elem,
       t.typbasetype AS base_type,
       t.typtypmod AS base_typmod,
       t.typcategory::text AS category
FROM wanted w
JOIN pg_catalog.pg_type t ON t.oid = w.oid
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace";

/// How unconstrained `numeric` columns (no precision and scale) are mapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NumericMode {
    /// `decimal(38, 18)`; a value that does not fit is an error.
    #[default]
    Decimal,
    /// `string`, the value's text (any size, `NaN` and infinities included).
    Text,
}

/// Choices of the type mapping (`cdc.unconstrained_numeric`, `cdc.unsupported_types`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeOptions {
    /// How unconstrained `numeric` is mapped.
    pub unconstrained_numeric: NumericMode,
    /// Carry types tarn cannot map as their text form (`string`) instead of refusing them.
    pub unsupported_as_text: bool,
}

/// [`ColumnType`]; see `docs/cdc-types.md` for the mapping.
///
/// Errors: a type tarn cannot map is [`ErrorKind::InvalidInput`] naming the column and the
/// type (unless [`TypeOptions::unsupported_as_text`]); a user type missing from `catalog` is
/// [`ErrorKind::Internal`] (the caller did not load it).
pub fn resolve(
    column: &str,
    type_oid: u32,
    typmod: i32,
    catalog: &dyn TypeCatalog,
    options: &TypeOptions,
) -> Result<ColumnType> {
    match resolve_oid(type_oid, typmod, catalog, options, 0) {
        Ok(t) => Ok(t),
        Err(Unresolved::Unsupported) if options.unsupported_as_text => Ok(ColumnType::Text),
        Err(Unresolved::Unsupported) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "column {column} has type {} (oid {type_oid}), which tarn cannot map to an Iceberg \
                 type; set cdc.unsupported_types = \"text\" to carry it as its text form",
                type_name(type_oid, typmod, catalog)
            ),
        )),
        Err(Unresolved::Missing(oid)) => Err(Error::new(
            ErrorKind::Internal,
            format!(
                "column {column} has type oid {type_oid}, and type oid {oid} is not in the type catalog: \
                 load every column type with TYPE_INFO_QUERY before resolving"
            ),
        )),
    }
}

enum Unresolved {
    Unsupported,
    Missing(u32),
}

/// Domains over domains deeper than this are refused (and a cyclic catalog cannot loop).
const MAX_TYPE_DEPTH: u32 = 16;

fn resolve_oid(
    oid: u32,
    typmod: i32,
    catalog: &dyn TypeCatalog,
    options: &TypeOptions,
    depth: u32,
) -> Result<ColumnType, Unresolved> {
    if depth > MAX_TYPE_DEPTH {
        return Err(Unresolved::Unsupported);
    }
    if oid < FIRST_NORMAL_OID {
        if let Some(t) = builtin_scalar(oid) {
            return Ok(t);
        }
        if oid == NUMERIC_OID {
            return numeric_type(typmod, options);
        }
        if let Some(elem) = builtin_array_element(oid) {
            return list_of(elem, typmod, catalog, options, depth);
        }
        return Err(Unresolved::Unsupported);
    }
    let info = catalog.lookup(oid).ok_or(Unresolved::Missing(oid))?;
    match info.typtype {
        'e' => Ok(ColumnType::Text),
        'd' => resolve_oid(info.base_type, info.base_typmod, catalog, options, depth + 1),
        'b' if info.category == 'A' && info.elem != 0 => list_of(info.elem, typmod, catalog, options, depth),
        // Extension types of the string category (citext and the like) print as plain text.
        'b' if info.category == 'S' || info.name == "citext" => Ok(ColumnType::Text),
        _ => Err(Unresolved::Unsupported),
    }
}

fn list_of(
    elem: u32,
    typmod: i32,
    catalog: &dyn TypeCatalog,
    options: &TypeOptions,
    depth: u32,
) -> Result<ColumnType, Unresolved> {
    // An array column's type modifier applies to its elements (numeric(10,2)[]).
    match resolve_oid(elem, typmod, catalog, options, depth + 1)? {
        ColumnType::List(_) => Err(Unresolved::Unsupported),
        element => Ok(ColumnType::List(Box::new(element))),
    }
}

const NUMERIC_OID: u32 = 1700;
const NUMERIC_ARRAY_OID: u32 = 1231;

fn builtin_scalar(oid: u32) -> Option<ColumnType> {
    Some(match oid {
        16 => ColumnType::Bool,
        17 => ColumnType::Bytea,
        21 => ColumnType::Int16,
        23 => ColumnType::Int32,
        20 | 26 => ColumnType::Int64,
        700 => ColumnType::Float32,
        701 => ColumnType::Float64,
        1082 => ColumnType::Date,
        1083 => ColumnType::Time,
        1114 => ColumnType::Timestamp,
        1184 => ColumnType::TimestampTz,
        // char, name, text, json, xml, cidr, macaddr8, money, macaddr, inet, bpchar, varchar,
        // interval, timetz, bit, varbit, uuid, tsvector, jsonb
        18 | 19 | 25 | 114 | 142 | 650 | 774 | 790 | 829 | 869 | 1042 | 1043 | 1186 | 1266 | 1560 | 1562
        | 2950 | 3614 | 3802 => ColumnType::Text,
        _ => return None,
    })
}

/// The element type of the built-in array types of the supported built-in types.
pub(crate) fn builtin_array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,   // _bool
        1001 => 17,   // _bytea
        1002 => 18,   // _char
        1003 => 19,   // _name
        1005 => 21,   // _int2
        1007 => 23,   // _int4
        1009 => 25,   // _text
        1014 => 1042, // _bpchar
        1015 => 1043, // _varchar
        1016 => 20,   // _int8
        1021 => 700,  // _float4
        1022 => 701,  // _float8
        1028 => 26,   // _oid
        199 => 114,   // _json
        143 => 142,   // _xml
        791 => 790,   // _money
        1182 => 1082, // _date
        1183 => 1083, // _time
        1115 => 1114, // _timestamp
        1185 => 1184, // _timestamptz
        1187 => 1186, // _interval
        1270 => 1266, // _timetz
        1561 => 1560, // _bit
        1563 => 1562, // _varbit
        NUMERIC_ARRAY_OID => NUMERIC_OID,
        2951 => 2950, // _uuid
        3807 => 3802, // _jsonb
        1041 => 869,  // _inet
        651 => 650,   // _cidr
        1040 => 829,  // _macaddr
        775 => 774,   // _macaddr8
        3643 => 3614, // _tsvector
        _ => return None,
    })
}

/// Names of built-in types tarn does not map, for error messages when the catalog lacks them.
fn builtin_unsupported_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        22 => "int2vector",
        24 => "regproc",
        27 => "tid",
        28 => "xid",
        29 => "cid",
        30 => "oidvector",
        600 => "point",
        601 => "lseg",
        602 => "path",
        603 => "box",
        604 => "polygon",
        628 => "line",
        718 => "circle",
        1017 => "_point",
        1020 => "_box",
        1027 => "_polygon",
        2205 => "regclass",
        2206 => "regtype",
        3220 => "pg_lsn",
        3615 => "tsquery",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        4072 => "jsonpath",
        4451 => "int4multirange",
        4532 => "nummultirange",
        4533 => "tsmultirange",
        4534 => "tstzmultirange",
        4535 => "datemultirange",
        4536 => "int8multirange",
        5038 => "pg_snapshot",
        5069 => "xid8",
        _ => return None,
    })
}

fn type_name(oid: u32, typmod: i32, catalog: &dyn TypeCatalog) -> String {
    if let (NUMERIC_OID | NUMERIC_ARRAY_OID, Some((precision, scale))) = (oid, numeric_typmod(typmod)) {
        let brackets = if oid == NUMERIC_ARRAY_OID { "[]" } else { "" };
        return format!("numeric({precision},{scale}){brackets}");
    }
    if let Some(info) = catalog.lookup(oid) {
        return match info.namespace.as_str() {
            "" | "pg_catalog" | "public" => info.name,
            namespace => format!("{namespace}.{}", info.name),
        };
    }
    builtin_unsupported_name(oid).unwrap_or("unknown").to_string()
}

/// Decodes a `numeric` type modifier: `(precision, scale)`, `None` when unconstrained.
/// The scale is an 11-bit signed field (negative scales exist since PostgreSQL 15).
pub fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((precision, scale))
}

fn numeric_type(typmod: i32, options: &TypeOptions) -> Result<ColumnType, Unresolved> {
    let Some((precision, scale)) = numeric_typmod(typmod) else {
        return Ok(match options.unconstrained_numeric {
            NumericMode::Decimal => ColumnType::Decimal {
                precision: 38,
                scale: 18,
            },
            NumericMode::Text => ColumnType::Text,
        });
    };
    // numeric(p, s) with s < 0 holds integers of up to p - s digits; s > p holds values below
    // 10^(p - s) with s fraction digits. Both become a decimal with scale ≤ precision.
    let (precision, scale) = if scale < 0 {
        (precision - scale, 0)
    } else {
        (precision.max(scale), scale)
    };
    if !(1..=38).contains(&precision) {
        return Err(Unresolved::Unsupported);
    }
    Ok(ColumnType::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_catalog() -> HashMap<u32, PgTypeInfo> {
        HashMap::new()
    }

    fn r(oid: u32, typmod: i32) -> Result<ColumnType> {
        resolve("c", oid, typmod, &no_catalog(), &TypeOptions::default())
    }

    fn numeric_mod(precision: i32, scale: i32) -> i32 {
        ((precision << 16) | (scale & 0x7ff)) + 4
    }

    fn dec(precision: u8, scale: i8) -> ColumnType {
        ColumnType::Decimal { precision, scale }
    }

    fn list(t: ColumnType) -> ColumnType {
        ColumnType::List(Box::new(t))
    }

    fn info(
        oid: u32,
        name: &str,
        typtype: char,
        elem: u32,
        base: u32,
        base_typmod: i32,
        category: char,
    ) -> PgTypeInfo {
        PgTypeInfo {
            oid,
            name: name.into(),
            namespace: "public".into(),
            typtype,
            elem,
            base_type: base,
            base_typmod,
            category,
        }
    }

    #[test]
    fn builtin_types() {
        use ColumnType::*;
        let expected = [
            (16, Bool),
            (17, Bytea),
            (18, Text),
            (19, Text),
            (20, Int64),
            (21, Int16),
            (23, Int32),
            (25, Text),
            (26, Int64),
            (114, Text),
            (142, Text),
            (650, Text),
            (700, Float32),
            (701, Float64),
            (774, Text),
            (790, Text),
            (829, Text),
            (869, Text),
            (1042, Text),
            (1043, Text),
            (1082, Date),
            (1083, Time),
            (1114, Timestamp),
            (1184, TimestampTz),
            (1186, Text),
            (1266, Text),
            (1560, Text),
            (1562, Text),
            (2950, Text),
            (3614, Text),
            (3802, Text),
        ];
        for (oid, t) in expected {
            assert_eq!(r(oid, -1).unwrap(), t, "oid {oid}");
        }
        let arrays = [
            (1000, Bool),
            (1001, Bytea),
            (1005, Int16),
            (1007, Int32),
            (1009, Text),
            (1016, Int64),
            (1021, Float32),
            (1022, Float64),
            (1182, Date),
            (1183, Time),
            (1115, Timestamp),
            (1185, TimestampTz),
            (2951, Text),
            (3807, Text),
        ];
        for (oid, t) in arrays {
            assert_eq!(r(oid, -1).unwrap(), list(t), "oid {oid}");
        }
    }

    #[test]
    fn numeric_types() {
        assert_eq!(r(1700, numeric_mod(10, 2)).unwrap(), dec(10, 2));
        assert_eq!(r(1700, numeric_mod(38, 0)).unwrap(), dec(38, 0));
        assert_eq!(r(1700, numeric_mod(38, 38)).unwrap(), dec(38, 38));
        assert_eq!(r(1700, -1).unwrap(), dec(38, 18));
        // Captured from PostgreSQL 15: numeric(5,-2) and numeric(2,5).
        assert_eq!(numeric_typmod(329_730), Some((5, -2)));
        assert_eq!(numeric_typmod(131_081), Some((2, 5)));
        assert_eq!(r(1700, 329_730).unwrap(), dec(7, 0));
        assert_eq!(r(1700, 131_081).unwrap(), dec(5, 5));
        assert_eq!(r(1231, numeric_mod(12, 4)).unwrap(), list(dec(12, 4)));
        let text = TypeOptions {
            unconstrained_numeric: NumericMode::Text,
            ..TypeOptions::default()
        };
        assert_eq!(
            resolve("c", 1700, -1, &no_catalog(), &text).unwrap(),
            ColumnType::Text
        );
        assert_eq!(
            resolve("c", 1700, numeric_mod(9, 3), &no_catalog(), &text).unwrap(),
            dec(9, 3)
        );
        let err = r(1700, numeric_mod(39, 2)).unwrap_err();
        assert!(
            err.message()
                .starts_with("column c has type numeric(39,2) (oid 1700)"),
            "{err}"
        );
        let err = r(1231, numeric_mod(40, 0)).unwrap_err();
        assert!(
            err.message()
                .starts_with("column c has type numeric(40,0)[] (oid 1231)"),
            "{err}"
        );
        assert!(r(1700, numeric_mod(37, -2)).is_err());
        let as_text = TypeOptions {
            unsupported_as_text: true,
            ..TypeOptions::default()
        };
        assert_eq!(
            resolve("c", 1700, numeric_mod(50, 2), &no_catalog(), &as_text).unwrap(),
            ColumnType::Text
        );
    }

    #[test]
    fn unsupported_types() {
        let err = resolve("shape", 600, -1, &no_catalog(), &TypeOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            err.message(),
            "column shape has type point (oid 600), which tarn cannot map to an Iceberg type; set \
             cdc.unsupported_types = \"text\" to carry it as its text form"
        );
        let as_text = TypeOptions {
            unsupported_as_text: true,
            ..TypeOptions::default()
        };
        for oid in [600, 603, 1017, 3904, 3615, 4451, 27, 2249] {
            assert!(r(oid, -1).is_err(), "oid {oid}");
            assert_eq!(
                resolve("c", oid, -1, &no_catalog(), &as_text).unwrap(),
                ColumnType::Text
            );
        }
        let mut catalog = no_catalog();
        catalog.insert(17_000, info(17_000, "geometry", 'b', 0, 0, -1, 'U'));
        catalog.insert(17_001, info(17_001, "pair", 'c', 0, 0, -1, 'C'));
        catalog.insert(17_002, info(17_002, "floatrange", 'r', 0, 0, -1, 'R'));
        catalog.insert(17_003, info(17_003, "_geometry", 'b', 17_000, 0, -1, 'A'));
        for oid in 17_000..=17_003 {
            let err = resolve("g", oid, -1, &catalog, &TypeOptions::default()).unwrap_err();
            assert!(err.message().contains(&format!("(oid {oid})")), "{err}");
            assert_eq!(
                resolve("g", oid, -1, &catalog, &as_text).unwrap(),
                ColumnType::Text
            );
        }
        let err = resolve("g", 17_000, -1, &catalog, &TypeOptions::default()).unwrap_err();
        assert!(
            err.message()
                .starts_with("column g has type geometry (oid 17000)"),
            "{err}"
        );
    }

    #[test]
    fn user_types() {
        // The catalog as TYPE_INFO_QUERY returned it from PostgreSQL 15.
        let mut catalog = no_catalog();
        for t in [
            info(16_385, "mood", 'e', 0, 0, -1, 'E'),
            info(16_384, "_mood", 'b', 16_385, 0, -1, 'A'),
            info(16_392, "money3", 'd', 0, 16_390, -1, 'N'),
            info(16_390, "money2", 'd', 0, 1700, 655_366, 'N'),
            info(16_394, "ints", 'd', 0, 1007, -1, 'A'),
            info(16_389, "_money2", 'b', 16_390, 0, -1, 'A'),
            info(16_399, "citext", 'b', 0, 0, -1, 'S'),
            info(16_500, "_ints", 'b', 16_394, 0, -1, 'A'),
            info(16_501, "loop", 'd', 0, 16_501, -1, 'N'),
        ] {
            catalog.insert(t.oid, t);
        }
        let options = TypeOptions::default();
        let r = |oid| resolve("c", oid, -1, &catalog, &options);
        assert_eq!(r(16_385).unwrap(), ColumnType::Text);
        assert_eq!(r(16_384).unwrap(), list(ColumnType::Text));
        assert_eq!(r(16_392).unwrap(), dec(10, 2));
        assert_eq!(r(16_394).unwrap(), list(ColumnType::Int32));
        assert_eq!(r(16_389).unwrap(), list(dec(10, 2)));
        assert_eq!(r(16_399).unwrap(), ColumnType::Text);
        // An array of a domain over an array would be a list of lists.
        assert!(r(16_500).unwrap_err().message().contains("type _ints"));
        assert!(r(16_501).is_err());
        let err = r(16_999).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(
            err.message()
                .contains("type oid 16999 is not in the type catalog"),
            "{err}"
        );
    }
}
