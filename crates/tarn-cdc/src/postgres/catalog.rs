//! What the source database has: its tables (filtered by the pipeline's patterns), their
//! columns, keys and replica identity, and the types of those columns.
//!
//! Tables are refused at start-up, by name and with the fix, when PostgreSQL would not send
//! enough of an updated or deleted row to find it again: no primary key and a replica
//! identity other than `FULL` (or a unique index chosen with `REPLICA IDENTITY USING INDEX`).

use std::collections::HashMap;
use std::sync::Arc;

use tarn_core::{Error, ErrorKind, Result};
use tokio_postgres::Client;

use super::connect::query_error;
use super::types::{self, PgTypeInfo, TypeOptions};
use crate::source::{ColumnSpec, KeyKind, TableSpec};
use crate::value::ColumnType;

/// Whether `name` (`schema.table`) matches a pattern where `*` matches any characters.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Include/exclude patterns of a pipeline.
#[derive(Debug, Clone)]
pub struct TableFilter {
    /// `schema.table` patterns to include.
    pub include: Vec<String>,
    /// Patterns to leave out.
    pub exclude: Vec<String>,
}

impl TableFilter {
    /// Whether `schema.table` is captured.
    pub fn accepts(&self, qualified: &str) -> bool {
        self.include.iter().any(|p| matches_pattern(p, qualified))
            && !self.exclude.iter().any(|p| matches_pattern(p, qualified))
    }
}

/// The types of the source database, loaded from `pg_type` (a few hundred rows).
#[derive(Debug, Default, Clone)]
pub struct TypeCache {
    types: HashMap<u32, PgTypeInfo>,
}

impl TypeCache {
    /// Loads every type of the database.
    pub async fn load(client: &Client) -> Result<Self> {
        let rows = client
            .query(
                "SELECT t.oid, t.typname::text, n.nspname::text, t.typtype::text, t.typelem, t.typbasetype, \
                        t.typtypmod, t.typcategory::text \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace",
                &[],
            )
            .await
            .map_err(|e| query_error("cannot read the source's types (pg_type)", e))?;
        let mut types = HashMap::with_capacity(rows.len());
        for row in rows {
            let first_char = |s: String| s.chars().next().unwrap_or(' ');
            let oid: u32 = row.get(0);
            types.insert(
                oid,
                PgTypeInfo {
                    oid,
                    name: row.get(1),
                    namespace: row.get(2),
                    typtype: first_char(row.get(3)),
                    elem: row.get(4),
                    base_type: row.get(5),
                    base_typmod: row.get(6),
                    category: first_char(row.get(7)),
                },
            );
        }
        Ok(Self { types })
    }

    /// Whether `oid` is known.
    pub fn contains(&self, oid: u32) -> bool {
        self.types.contains_key(&oid)
    }

    /// The type's name, for messages.
    pub fn name(&self, oid: u32) -> String {
        self.types
            .get(&oid)
            .map(|t| t.name.clone())
            .unwrap_or_else(|| format!("oid {oid}"))
    }

    /// Maps a column's type.
    pub fn resolve(&self, column: &str, oid: u32, typmod: i32, options: &TypeOptions) -> Result<ColumnType> {
        types::resolve(column, oid, typmod, &self.types, options)
    }
}

/// A table found in the source, before its columns are mapped.
#[derive(Debug, Clone)]
struct FoundTable {
    oid: u32,
    schema: String,
    name: String,
    replica_identity: char,
}

/// Reads the captured tables. Tables that cannot be captured are collected into one error
/// naming each and its fix.
pub async fn discover_tables(
    client: &Client,
    filter: &TableFilter,
    types: &TypeCache,
    options: &TypeOptions,
) -> Result<Vec<Arc<TableSpec>>> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, coalesce(c.relreplident::text, 'd') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relispartition IS NOT TRUE \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'crdb_internal', 'pg_extension') \
               AND n.nspname NOT LIKE 'pg_toast%' \
             ORDER BY n.nspname, c.relname",
            &[],
        )
        .await
        .map_err(|e| query_error("cannot list the source's tables", e))?;
    let found: Vec<FoundTable> = rows
        .iter()
        .map(|r| FoundTable {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            replica_identity: r.get::<_, String>(3).chars().next().unwrap_or('d'),
        })
        .filter(|t| filter.accepts(&format!("{}.{}", t.schema, t.name)))
        .collect();
    let oids: Vec<u32> = found.iter().map(|t| t.oid).collect();
    let specs = describe_tables(client, &found, &oids, types, options).await?;
    Ok(specs)
}

/// Reads the spec of one table by OID (a table seen first in the stream).
pub async fn describe_table(
    client: &Client,
    oid: u32,
    types: &TypeCache,
    options: &TypeOptions,
) -> Result<Option<Arc<TableSpec>>> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, coalesce(c.relreplident::text, 'd') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(|e| query_error(format!("cannot look up source table {oid}"), e))?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let found = vec![FoundTable {
        oid: r.get(0),
        schema: r.get(1),
        name: r.get(2),
        replica_identity: r.get::<_, String>(3).chars().next().unwrap_or('d'),
    }];
    Ok(describe_tables(client, &found, &[oid], types, options)
        .await?
        .pop())
}

async fn describe_tables(
    client: &Client,
    found: &[FoundTable],
    oids: &[u32],
    types: &TypeCache,
    options: &TypeOptions,
) -> Result<Vec<Arc<TableSpec>>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    // Columns with whether they are in the primary key and in the replica-identity index.
    let rows = client
        .query(
            "SELECT a.attrelid, a.attnum, a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, \
                    coalesce(a.attnum = ANY(pk.indkey::int2[]), false), \
                    coalesce(a.attnum = ANY(ri.indkey::int2[]), false), \
                    pk.indrelid IS NOT NULL, ri.indrelid IS NOT NULL, a.attgenerated::text = 'v' \
             FROM pg_attribute a \
             LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary \
             LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident \
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await
        .map_err(|e| query_error("cannot read the columns of the source's tables", e))?;
    struct Col {
        attnum: i16,
        name: String,
        type_oid: u32,
        typmod: i32,
        not_null: bool,
        in_pk: bool,
        in_ri: bool,
    }
    // Virtual computed columns are never sent (PostgreSQL 18's pgoutput, CockroachDB's
    // changefeeds), so they are left out — unless they are part of the key (CockroachDB's
    // hash-sharded primary keys), whose values the changefeed's key array carries.
    let mut columns: HashMap<u32, (Vec<Col>, bool, bool)> = HashMap::new();
    for r in rows {
        let entry = columns
            .entry(r.get(0))
            .or_insert_with(|| (Vec::new(), false, false));
        entry.1 |= r.get::<_, bool>(8);
        entry.2 |= r.get::<_, bool>(9);
        let is_virtual = r.get::<_, Option<bool>>(10).unwrap_or(false);
        if is_virtual && !r.get::<_, bool>(6) {
            continue;
        }
        entry.0.push(Col {
            attnum: r.get(1),
            name: r.get(2),
            type_oid: r.get(3),
            typmod: r.get(4),
            not_null: r.get(5),
            in_pk: r.get(6),
            in_ri: r.get(7),
        });
    }
    let mut specs = Vec::new();
    let mut refused = Vec::new();
    for table in found {
        let qualified = format!("{}.{}", table.schema, table.name);
        let Some((cols, has_pk, has_ri_index)) = columns.remove(&table.oid) else {
            refused.push(format!("{qualified} has no columns"));
            continue;
        };
        let (key_kind, key_of): (KeyKind, fn(&Col) -> bool) = match table.replica_identity {
            'f' if has_pk => (KeyKind::PrimaryKey, |c| c.in_pk),
            'f' => (KeyKind::FullRow, |_| false),
            'i' if has_ri_index => (KeyKind::PrimaryKey, |c| c.in_ri),
            'd' if has_pk => (KeyKind::PrimaryKey, |c| c.in_pk),
            'n' => {
                refused.push(format!(
                    "{qualified} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be captured; \
                     fix: ALTER TABLE {qualified} REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
                ));
                continue;
            }
            _ => {
                refused.push(format!(
                    "{qualified} has no primary key and its replica identity is not FULL, so its updates and \
                     deletes cannot be matched; fix: add a primary key, or ALTER TABLE {qualified} REPLICA IDENTITY FULL, \
                     or leave it out with cdc.exclude"
                ));
                continue;
            }
        };
        let mut specs_cols = Vec::with_capacity(cols.len());
        let mut failed = false;
        for c in &cols {
            match types.resolve(&format!("{qualified}.{}", c.name), c.type_oid, c.typmod, options) {
                Ok(column_type) => specs_cols.push(ColumnSpec {
                    name: c.name.clone(),
                    column_type,
                    key: key_of(c),
                    not_null: c.not_null,
                    type_oid: c.type_oid,
                    type_name: types.name(c.type_oid),
                    attnum: c.attnum,
                }),
                Err(e) => {
                    refused.push(e.message().to_string());
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        specs.push(Arc::new(TableSpec {
            id: table.oid,
            schema: table.schema.clone(),
            name: table.name.clone(),
            columns: specs_cols,
            key_kind,
        }));
    }
    if !refused.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "cannot capture {} table(s):\n  - {}",
                refused.len(),
                refused.join("\n  - ")
            ),
        ));
    }
    Ok(specs)
}

/// What the catalog says of a column now: attribute number, NOT NULL, part of the primary key.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColumnInfo {
    /// `pg_attribute.attnum`.
    pub attnum: i16,
    /// NOT NULL.
    pub not_null: bool,
    /// Part of the primary key.
    pub in_primary_key: bool,
}

/// Maps the columns of a Relation message to a spec, keeping what the stream says (names,
/// types) and the catalog's NOT NULL flags, attribute numbers and primary key where the names
/// still match. A Relation message flags the replica identity's columns: the primary key (or
/// the chosen index) — or every column under `REPLICA IDENTITY FULL`, where the key is the
/// primary key if there is one and the whole row otherwise.
pub fn spec_from_relation(
    relation: &super::pgoutput::Relation,
    previous: Option<&TableSpec>,
    types: &TypeCache,
    options: &TypeOptions,
    catalog: &HashMap<String, ColumnInfo>,
) -> Result<TableSpec> {
    let full = matches!(relation.replica_identity, super::pgoutput::ReplicaIdentity::Full);
    let qualified = format!("{}.{}", relation.namespace, relation.name);
    let mut columns = Vec::with_capacity(relation.columns.len());
    for c in &relation.columns {
        let column_type = types.resolve(
            &format!("{qualified}.{}", c.name),
            c.type_oid,
            c.type_modifier,
            options,
        )?;
        let info = catalog.get(&c.name).copied().unwrap_or_default();
        columns.push(ColumnSpec {
            name: c.name.clone(),
            column_type,
            key: if full { info.in_primary_key } else { c.is_key() },
            not_null: info.not_null,
            type_oid: c.type_oid,
            type_name: types.name(c.type_oid),
            attnum: info.attnum,
        });
    }
    let key_kind = if columns.iter().any(|c| c.key) {
        KeyKind::PrimaryKey
    } else if full {
        KeyKind::FullRow
    } else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{qualified} has no primary key and its replica identity is not FULL; fix: add a primary key \
                 or ALTER TABLE {qualified} REPLICA IDENTITY FULL"
            ),
        ));
    };
    let _ = previous;
    Ok(TableSpec {
        id: relation.id,
        schema: relation.namespace.clone(),
        name: relation.name.clone(),
        columns,
        key_kind,
    })
}

/// What the catalog says of a table's live columns now, by name.
pub async fn column_info(client: &Client, oid: u32) -> Result<HashMap<String, ColumnInfo>> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attnum, a.attnotnull, coalesce(a.attnum = ANY(pk.indkey::int2[]), false) \
             FROM pg_attribute a LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .map_err(|e| query_error(format!("cannot read the columns of source table {oid}"), e))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                ColumnInfo {
                    attnum: r.get(1),
                    not_null: r.get(2),
                    in_primary_key: r.get(3),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches_pattern("public.*", "public.orders"));
        assert!(matches_pattern("*.orders", "shop.orders"));
        assert!(matches_pattern("public.order*s", "public.orders"));
        assert!(!matches_pattern("public.*", "shop.orders"));
        assert!(matches_pattern("public.orders", "public.orders"));
        assert!(!matches_pattern("public.orders", "public.orders2"));
        let f = TableFilter {
            include: vec!["public.*".into()],
            exclude: vec!["public.audit_*".into()],
        };
        assert!(f.accepts("public.orders"));
        assert!(!f.accepts("public.audit_log"));
    }
}
