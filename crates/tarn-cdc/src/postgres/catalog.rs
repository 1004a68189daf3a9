//! What the source database has: its tables (filtered by the pipeline's patterns), their
//! columns, keys and replica identity, and the types of those columns.
//!
//! Tables are refused at start-up, by name and with the fix, when PostgreSQL would not send
//! enough of an updated or deleted row to find it again: no primary key and a replica
//! identity other than `FULL` (or a unique index chosen with `REPLICA IDENTITY USING INDEX`).

use std::collections::{HashMap, HashSet};
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
    /// A dropped column (PostgreSQL keeps its attribute number, under a placeholder name).
    pub dropped: bool,
    /// A generated column, which the stream leaves out.
    pub generated: bool,
}

/// Maps the columns of a Relation message to a spec, keeping what the stream says (names,
/// types) and the catalog's NOT NULL flags, attribute numbers and primary key (see
/// [`relation_attnums`] for how each column finds its attribute number). A Relation message
/// flags the replica identity's columns: the primary key (or the chosen index) — or every
/// column under `REPLICA IDENTITY FULL`, where the key is the primary key if there is one and
/// the whole row otherwise.
pub fn spec_from_relation(
    relation: &super::pgoutput::Relation,
    previous: Option<&TableSpec>,
    types: &TypeCache,
    options: &TypeOptions,
    catalog: &HashMap<String, ColumnInfo>,
) -> Result<TableSpec> {
    let full = matches!(relation.replica_identity, super::pgoutput::ReplicaIdentity::Full);
    let qualified = format!("{}.{}", relation.namespace, relation.name);
    let names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
    let attnums = relation_attnums(&names, catalog, previous);
    let mut columns = Vec::with_capacity(relation.columns.len());
    for (c, attnum) in relation.columns.iter().zip(attnums) {
        let column_type = types.resolve(
            &format!("{qualified}.{}", c.name),
            c.type_oid,
            c.type_modifier,
            options,
        )?;
        let info = catalog
            .values()
            .find(|i| attnum != 0 && i.attnum == attnum && !i.dropped)
            .copied()
            .unwrap_or(ColumnInfo {
                attnum,
                ..ColumnInfo::default()
            });
        columns.push(ColumnSpec {
            name: c.name.clone(),
            column_type,
            key: if full { info.in_primary_key } else { c.is_key() },
            not_null: info.not_null,
            type_oid: c.type_oid,
            type_name: types.name(c.type_oid),
            attnum,
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
    Ok(TableSpec {
        id: relation.id,
        schema: relation.namespace.clone(),
        name: relation.name.clone(),
        columns,
        key_kind,
    })
}

/// The attribute number of each column of a Relation message (`names`, in the order the
/// message lists them); 0 where it cannot be told.
///
/// The message carries no attribute numbers, and the catalog only answers for now, which may
/// be ahead of the stream (a later `ALTER TABLE` renamed or dropped the column) — so a name is
/// first looked up in `catalog`, then checked and completed against what is certain:
/// - pgoutput lists a table's live columns in attribute-number order, so only the heaviest
///   increasing run of the catalog's numbers is kept (numbers the previous spec agrees with
///   count double): the others belong to a later column that reuses the name;
/// - a name `previous` (the table's last spec) has is that column, where its number fits;
/// - numbers are given out in increasing order and never reused, so the columns between two
///   known ones have numbers between theirs: when the catalog has exactly as many numbers
///   there (live or dropped) as there are unknown columns, those are theirs; else when the
///   previous spec has exactly as many columns there that the message no longer names, the
///   columns were renamed. After the last known column they may also be new columns, so there
///   the previous columns must also still be live.
///
/// Without this a column renamed twice before the stream reached the first rename would look
/// new, and the lake would lose its values (a new Iceberg field, NULL for every older row).
pub(crate) fn relation_attnums(
    names: &[&str],
    catalog: &HashMap<String, ColumnInfo>,
    previous: Option<&TableSpec>,
) -> Vec<i16> {
    let mut attnums: Vec<i16> = names
        .iter()
        .map(|n| catalog.get(*n).filter(|i| !i.dropped).map_or(0, |i| i.attnum))
        .collect();
    // A number the previous spec agrees with weighs more.
    let weights: Vec<usize> = names
        .iter()
        .zip(&attnums)
        .map(|(n, a)| {
            let agrees = previous.is_some_and(|p| p.columns.iter().any(|c| c.name == *n && c.attnum == *a));
            if agrees { 2 } else { 1 }
        })
        .collect();
    keep_increasing(&mut attnums, &weights);
    // A name the previous spec has is that column, where its number fits the order.
    for i in 0..attnums.len() {
        if attnums[i] != 0 {
            continue;
        }
        let Some(a) = previous
            .and_then(|p| p.columns.iter().find(|c| c.name == names[i]))
            .map(|c| c.attnum)
        else {
            continue;
        };
        let lo = attnums[..i].iter().rev().find(|a| **a != 0).copied().unwrap_or(0);
        let hi = attnums[i + 1..]
            .iter()
            .find(|a| **a != 0)
            .copied()
            .unwrap_or(i16::MAX);
        if lo < a && a < hi {
            attnums[i] = a;
        }
    }
    let live: HashSet<i16> = catalog
        .values()
        .filter(|i| !i.dropped)
        .map(|i| i.attnum)
        .collect();
    let mut start = 0;
    while start < attnums.len() {
        if attnums[start] != 0 {
            start += 1;
            continue;
        }
        let end = (start..attnums.len())
            .find(|&i| attnums[i] != 0)
            .unwrap_or(attnums.len());
        let lo = if start == 0 { 0 } else { attnums[start - 1] };
        let hi = attnums.get(end).copied();
        let within = |a: i16| a > lo && hi.is_none_or(|hi| a < hi) && !attnums.contains(&a);
        // Every number the table ever gave out there (live or dropped), when they are exactly
        // as many as the unknown columns.
        let mut every: Vec<i16> = catalog
            .values()
            .filter(|i| !i.generated)
            .map(|i| i.attnum)
            .filter(|a| within(*a))
            .collect();
        every.sort_unstable();
        // Else the previous spec's columns there that the message no longer names.
        let renamed: Vec<i16> = previous
            .into_iter()
            .flat_map(|p| &p.columns)
            .filter(|c| within(c.attnum) && !names.contains(&c.name.as_str()))
            .filter(|c| hi.is_some() || live.contains(&c.attnum))
            .map(|c| c.attnum)
            .collect();
        if every.len() == end - start {
            attnums[start..end].copy_from_slice(&every);
        } else if renamed.len() == end - start {
            attnums[start..end].copy_from_slice(&renamed);
        }
        start = end;
    }
    attnums
}

/// Keeps the heaviest strictly increasing run of the known (non-zero) numbers of `attnums`
/// (each weighing its `weights` entry), setting the others to 0.
fn keep_increasing(attnums: &mut [i16], weights: &[usize]) {
    let n = attnums.len();
    // best[i]: weight of the heaviest increasing run of known numbers ending at i; from[i]:
    // its previous element.
    let mut best = vec![0usize; n];
    let mut from = vec![None; n];
    for i in (0..n).filter(|&i| attnums[i] != 0) {
        best[i] = weights[i];
        for j in (0..i).filter(|&j| attnums[j] != 0 && attnums[j] < attnums[i]) {
            if best[j] + weights[i] > best[i] {
                best[i] = best[j] + weights[i];
                from[i] = Some(j);
            }
        }
    }
    let mut keep = vec![false; n];
    let mut at = (0..n)
        .filter(|&i| best[i] > 0)
        .max_by_key(|&i| (best[i], std::cmp::Reverse(i)));
    while let Some(i) = at {
        keep[i] = true;
        at = from[i];
    }
    for (a, keep) in attnums.iter_mut().zip(keep) {
        if !keep {
            *a = 0;
        }
    }
}

/// Waits until transaction `xid` — committed, as the stream is decoding it — is visible to
/// new snapshots of `client`'s session.
///
/// PostgreSQL writes a commit record (which logical decoding may send at once) before it
/// makes the transaction visible and then releases the transaction's lock, so the lock's
/// release is the moment its catalog changes (an `ALTER TABLE` renaming a column) can be read.
/// Gives up with a warning after a few seconds (a synchronous standby configuration that
/// waits for tarn itself), reading the catalog as it is.
pub async fn wait_until_visible(client: &Client, xid: u32) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let xid = i64::from(xid);
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND transactionid::text::bigint = $1",
                &[&xid],
            )
            .await
            .map_err(|e| query_error("cannot read pg_locks", e))?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                xid,
                "the transaction being decoded is not visible yet; reading the catalog as it is"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// What the catalog says of a table's columns now, by name: the live ones, and the dropped
/// ones under PostgreSQL's placeholder names.
pub async fn column_info(client: &Client, oid: u32) -> Result<HashMap<String, ColumnInfo>> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attnum, a.attnotnull, coalesce(a.attnum = ANY(pk.indkey::int2[]), false), \
                    a.attisdropped, a.attgenerated::text <> '' \
             FROM pg_attribute a LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary \
             WHERE a.attrelid = $1 AND a.attnum > 0",
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
                    dropped: r.get(4),
                    generated: r.get(5),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Live columns, and `dropped` attribute numbers.
    fn info(pairs: &[(&str, i16)], dropped: &[i16]) -> HashMap<String, ColumnInfo> {
        let live = pairs.iter().map(|(n, a)| {
            (
                n.to_string(),
                ColumnInfo {
                    attnum: *a,
                    ..ColumnInfo::default()
                },
            )
        });
        let gone = dropped.iter().map(|a| {
            (
                format!("........pg.dropped.{a}........"),
                ColumnInfo {
                    attnum: *a,
                    dropped: true,
                    ..ColumnInfo::default()
                },
            )
        });
        live.chain(gone).collect()
    }

    fn previous(pairs: &[(&str, i16)]) -> TableSpec {
        TableSpec {
            id: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: pairs
                .iter()
                .map(|(n, a)| ColumnSpec::new(n, ColumnType::Text, *a == 1, *a))
                .collect(),
            key_kind: KeyKind::PrimaryKey,
        }
    }

    #[test]
    fn relation_attnums_from_the_catalog_and_the_previous_spec() {
        let items = previous(&[("id", 1), ("name", 2), ("qty", 3)]);
        let names = ["id", "title", "qty", "color"];
        // The catalog agrees with the stream.
        let now = info(&[("id", 1), ("title", 2), ("qty", 3), ("color", 4)], &[]);
        assert_eq!(relation_attnums(&names, &now, Some(&items)), vec![1, 2, 3, 4]);
        // The catalog is behind (the renaming transaction not yet visible): `title` is the
        // column between `id` and `qty`, `color` is new.
        let behind = info(&[("id", 1), ("name", 2), ("qty", 3)], &[]);
        assert_eq!(relation_attnums(&names, &behind, Some(&items)), vec![1, 2, 3, 0]);
        // The catalog is ahead: `title` renamed again, `qty` dropped, `name` reused.
        let ahead = info(&[("id", 1), ("label", 2), ("name", 5)], &[3, 4]);
        assert_eq!(
            relation_attnums(&["id", "title", "qty"], &ahead, Some(&items)),
            vec![1, 2, 3]
        );
        // Without a previous spec, the numbers after `id` are as many as the unknown columns
        // only when no column was added since.
        assert_eq!(relation_attnums(&names, &ahead, None), vec![1, 0, 0, 0]);
        let since = info(&[("id", 1), ("label", 2)], &[3, 4]);
        assert_eq!(relation_attnums(&names, &since, None), vec![1, 2, 3, 4]);
        // A name the catalog gives to a later column does not go back in the order.
        let reused = info(&[("id", 1), ("qty", 3), ("name", 7)], &[2, 4, 5, 6]);
        assert_eq!(
            relation_attnums(&["id", "name", "qty"], &reused, Some(&items)),
            vec![1, 2, 3]
        );
        // The last column renamed twice, and a column added since: the previous spec's last
        // column is still live, so it was renamed.
        let last = info(&[("id", 1), ("name", 2), ("amount", 3), ("extra", 4)], &[]);
        assert_eq!(
            relation_attnums(&["id", "name", "total"], &last, Some(&items)),
            vec![1, 2, 3]
        );
        // ... but dropped in the catalog, with a column added since: it cannot be told from a
        // new column.
        let dropped = info(&[("id", 1), ("name", 2), ("extra", 4)], &[3]);
        assert_eq!(
            relation_attnums(&["id", "name", "total"], &dropped, Some(&items)),
            vec![1, 2, 0]
        );
        // Two numbers between known columns, one column, and the previous spec has both
        // columns (one was dropped, one renamed): left unknown.
        let wide = previous(&[("id", 1), ("a", 2), ("b", 3), ("z", 4)]);
        let now = info(&[("id", 1), ("z", 4)], &[2, 3]);
        assert_eq!(
            relation_attnums(&["id", "c", "z"], &now, Some(&wide)),
            vec![1, 0, 4]
        );
        // Without a previous spec, the catalog's numbers alone place `title`.
        assert_eq!(relation_attnums(&names, &behind, None), vec![1, 2, 3, 0]);
    }

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
