//! Changes from real writes, with MVCC history.
//!
//! The capture triggers append every changed row to `crdb_standin.changes`. A poller drains
//! the log every few tens of milliseconds: in one REPEATABLE READ transaction it reads every
//! log row its snapshot sees — rows of committed transactions only — and deletes them. It
//! groups them per transaction, orders the transactions by their last log row (a later
//! writer of a row waits for the earlier one to commit, so its last log row comes after all
//! of the earlier one's; conflicting transactions are ordered as they committed), and stamps
//! each with the next reading of the stand-in's HLC, as CockroachDB's MVCC stamps a
//! transaction with its commit timestamp. A transaction's changes are collapsed per key (one
//! MVCC version per key per transaction) and kept in an in-memory history until the modelled
//! GC TTL, like MVCC versions until garbage collection. Everything committed and not yet
//! drained will get a timestamp later than any clock reading taken now, so after each drain
//! the *frontier* — a timestamp no later change can be at or before — is the clock's reading.
//!
//! (Draining by `xid < pg_snapshot_xmin(...)` instead would be wrong: a transaction with a
//! larger xid may commit before one with a smaller xid and still be held back by an older
//! open transaction, and would then be stamped after a later writer of the same row.)
//!
//! A scan "as of C" reads the tables and drains the log in one snapshot (under the poller's
//! lock), stamps what it drained, and then undoes every history entry after C, key by key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::watch;
use tokio_postgres::{Client, GenericClient};

use super::clock::{Clock, Hlc};
use super::encode::{Column, RowImage, ValueKind, ValueOptions, key_array};
use super::json;
use super::lexer::quote_ident;

/// A captured table as the encoder needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMeta {
    /// OID in the backing database (the stand-in's table id).
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Columns in attnum order (hidden ones included).
    pub columns: Vec<Column>,
    /// Primary-key column names in primary-index order.
    pub key: Vec<String>,
    /// JSON/JSONB columns.
    pub json_columns: Vec<String>,
}

impl TableMeta {
    /// The key array of a row.
    pub fn key_of(&self, row: &RowImage) -> String {
        key_array(&self.columns, &self.key, row, ValueOptions::default())
    }
}

/// One key's change in one transaction: its state before and after.
#[derive(Debug, Clone)]
pub struct Change {
    /// The table.
    pub table: Arc<TableMeta>,
    /// The key array (CockroachDB's JSON, default value options).
    pub key: String,
    /// The row before the transaction (`None`: it did not exist).
    pub before: Option<RowImage>,
    /// The row after (`None`: deleted).
    pub after: Option<RowImage>,
}

/// A committed transaction, or a schema-change backfill, at its timestamp.
#[derive(Debug, Clone)]
pub struct Txn {
    /// Its HLC timestamp.
    pub ts: Hlc,
    /// Its changes.
    pub changes: Vec<Change>,
    /// A backfill of this table (`schema_change_policy = 'backfill'`): every row again, no
    /// change of state.
    pub backfill: Option<u32>,
}

/// A row of a scan.
#[derive(Debug, Clone)]
pub struct ScanRow {
    /// The table.
    pub table: Arc<TableMeta>,
    /// The key array.
    pub key: String,
    /// The row.
    pub row: RowImage,
    /// When it was last written (the stand-in's start for rows older than that).
    pub mvcc: Hlc,
}

#[derive(Debug, Default)]
struct HistoryState {
    txns: VecDeque<Arc<Txn>>,
    frontier: Hlc,
}

/// A log row.
struct LogRow {
    id: i64,
    xid: String,
    relid: u32,
    old: Option<RowImage>,
    new: Option<RowImage>,
}

/// The capture: poller connection, table metadata, history.
pub struct Capture {
    clock: Arc<Clock>,
    poller: tokio::sync::Mutex<Client>,
    state: Mutex<HistoryState>,
    frontier_tx: watch::Sender<Hlc>,
    meta: Mutex<(i64, HashMap<u32, Arc<TableMeta>>)>,
    start: Hlc,
    gc_ttl: Duration,
    /// Positions of running feeds and jobs, protected from GC (protected timestamps).
    protected: Mutex<HashMap<u64, Hlc>>,
}

fn row_image(text: Option<String>, nulls: Vec<String>) -> Result<Option<RowImage>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let values = json::parse(&text).map_err(|e| anyhow::anyhow!("capture log JSON: {e}: {text}"))?;
    Ok(Some(RowImage {
        values,
        sql_nulls: nulls,
    }))
}

impl Capture {
    /// A capture draining with `poller` (a connection of its own).
    pub fn new(clock: Arc<Clock>, poller: Client, gc_ttl: Duration) -> Self {
        let start = clock.now();
        let (frontier_tx, _) = watch::channel(start);
        Self {
            clock,
            poller: tokio::sync::Mutex::new(poller),
            state: Mutex::new(HistoryState {
                txns: VecDeque::new(),
                frontier: start,
            }),
            frontier_tx,
            meta: Mutex::new((-1, HashMap::new())),
            start,
            gc_ttl,
            protected: Mutex::new(HashMap::new()),
        }
    }

    /// The GC threshold: nothing at or before it can be read any more.
    pub fn gc_threshold(&self) -> Hlc {
        let by_ttl = self.clock.last().minus(self.gc_ttl);
        by_ttl.max(self.start)
    }

    /// Watches the frontier.
    pub fn subscribe(&self) -> watch::Receiver<Hlc> {
        self.frontier_tx.subscribe()
    }

    /// Protects `ts` from GC for `owner` (a running feed's position).
    pub fn protect(&self, owner: u64, ts: Option<Hlc>) {
        let mut p = self.protected.lock().unwrap();
        match ts {
            Some(ts) => p.insert(owner, ts),
            None => p.remove(&owner),
        };
    }

    /// History entries after `after` up to the frontier, and that frontier.
    pub fn since(&self, after: Hlc) -> (Vec<Arc<Txn>>, Hlc) {
        let s = self.state.lock().unwrap();
        // The history is in timestamp order (stamped as appended).
        let first = s.txns.partition_point(|t| t.ts <= after);
        let txns = s.txns.range(first..).cloned().collect();
        (txns, s.frontier)
    }

    /// Drains the log once (the poller's step).
    pub async fn poll(&self) -> Result<()> {
        let mut client = self.poller.lock().await;
        let tx = client.transaction().await?;
        tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let rows = self.read_log(&tx).await?;
        // Grouped before the commit: if it fails, the log rows stay.
        let txns = self.group(rows, &tx).await?;
        tx.commit().await?;
        // Stamped while the poller's lock is held: a later drain stamps later.
        self.append(txns);
        drop(client);
        Ok(())
    }

    /// Drains the log and reads the clock: a timestamp after everything committed before
    /// the call (what `cluster_logical_timestamp()` and a changefeed's statement time see).
    pub async fn sync_now(&self) -> Result<Hlc> {
        self.poll().await?;
        Ok(self.clock.now())
    }

    async fn read_log(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<LogRow>> {
        let rows = tx
            .query(
                "SELECT id, xid::text, relid, old::text, new::text, old_nulls, new_nulls \
                 FROM crdb_standin.changes ORDER BY id",
                &[],
            )
            .await
            .context("reading the capture log")?;
        let mut out = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for r in rows {
            ids.push(r.get::<_, i64>(0));
            out.push(LogRow {
                id: r.get(0),
                xid: r.get(1),
                relid: r.get(2),
                old: row_image(r.get(3), r.get(5))?,
                new: row_image(r.get(4), r.get(6))?,
            });
        }
        if !ids.is_empty() {
            tx.execute("DELETE FROM crdb_standin.changes WHERE id = ANY($1)", &[&ids])
                .await
                .context("deleting drained capture log rows")?;
        }
        Ok(out)
    }

    /// Groups log rows per transaction in commit order and collapses each per key.
    async fn group(&self, rows: Vec<LogRow>, client: &impl GenericClient) -> Result<Vec<Vec<Change>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let relids: Vec<u32> = rows
            .iter()
            .map(|r| r.relid)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let metas = self.tables(client, &relids).await?;
        let mut by_xid: HashMap<String, (i64, Vec<LogRow>)> = HashMap::new();
        for r in rows {
            let e = by_xid.entry(r.xid.clone()).or_insert((0, Vec::new()));
            e.0 = e.0.max(r.id);
            e.1.push(r);
        }
        let mut groups: Vec<(i64, Vec<LogRow>)> = by_xid.into_values().collect();
        groups.sort_by_key(|g| g.0);
        let mut out = Vec::with_capacity(groups.len());
        for (_, rows) in groups {
            let mut order: Vec<(u32, String)> = Vec::new();
            let mut changes: HashMap<(u32, String), Change> = HashMap::new();
            for r in rows {
                let Some(table) = metas.get(&r.relid) else {
                    continue;
                };
                let old_key = r.old.as_ref().map(|o| table.key_of(o));
                let new_key = r.new.as_ref().map(|n| table.key_of(n));
                let mut touch = |key: String, before: Option<RowImage>, after: Option<RowImage>| {
                    let id = (r.relid, key.clone());
                    match changes.get_mut(&id) {
                        Some(c) => c.after = after,
                        None => {
                            order.push(id.clone());
                            changes.insert(
                                id,
                                Change {
                                    table: table.clone(),
                                    key,
                                    before,
                                    after,
                                },
                            );
                        }
                    }
                };
                match (old_key, new_key) {
                    (Some(o), Some(n)) if o == n => touch(n, r.old.clone(), r.new.clone()),
                    (o, n) => {
                        if let Some(o) = o {
                            touch(o, r.old.clone(), None);
                        }
                        if let Some(n) = n {
                            touch(n, None, r.new.clone());
                        }
                    }
                }
            }
            out.push(order.into_iter().filter_map(|id| changes.remove(&id)).collect());
        }
        Ok(out)
    }

    /// Stamps drained transactions, appends them, moves the frontier and collects garbage.
    fn append(&self, txns: Vec<Vec<Change>>) {
        let mut s = self.state.lock().unwrap();
        for changes in txns {
            if changes.is_empty() {
                continue;
            }
            s.txns.push_back(Arc::new(Txn {
                ts: self.clock.now(),
                changes,
                backfill: None,
            }));
        }
        s.frontier = self.clock.now();
        let mut horizon = self.gc_threshold();
        for p in self.protected.lock().unwrap().values() {
            horizon = horizon.min(*p);
        }
        while s.txns.front().is_some_and(|t| t.ts < horizon) {
            s.txns.pop_front();
        }
        let frontier = s.frontier;
        drop(s);
        self.frontier_tx.send_replace(frontier);
    }

    /// Appends a backfill of `table` (every row of `rows`) at a new timestamp.
    fn append_backfill(&self, table: u32, rows: Vec<ScanRow>) -> Hlc {
        let mut s = self.state.lock().unwrap();
        let ts = self.clock.now();
        s.txns.push_back(Arc::new(Txn {
            ts,
            changes: rows
                .into_iter()
                .map(|r| Change {
                    table: r.table,
                    key: r.key,
                    before: Some(r.row.clone()),
                    after: Some(r.row),
                })
                .collect(),
            backfill: Some(table),
        }));
        s.frontier = self.clock.now();
        let frontier = s.frontier;
        drop(s);
        self.frontier_tx.send_replace(frontier);
        ts
    }

    /// Metadata of `oids`, from the cache or the catalog (the cache is dropped after DDL).
    pub async fn tables(
        &self,
        client: &impl GenericClient,
        oids: &[u32],
    ) -> Result<HashMap<u32, Arc<TableMeta>>> {
        let generation: i64 = client
            .query_one("SELECT ddl_gen FROM crdb_standin.meta", &[])
            .await?
            .get(0);
        let missing: Vec<u32> = {
            let mut m = self.meta.lock().unwrap();
            if m.0 != generation {
                m.0 = generation;
                m.1.clear();
            }
            oids.iter().filter(|o| !m.1.contains_key(o)).copied().collect()
        };
        if !missing.is_empty() {
            let loaded = load_tables(client, &missing).await?;
            let mut m = self.meta.lock().unwrap();
            for t in loaded {
                m.1.insert(t.oid, Arc::new(t));
            }
        }
        let m = self.meta.lock().unwrap();
        Ok(oids
            .iter()
            .filter_map(|o| m.1.get(o).map(|t| (*o, t.clone())))
            .collect())
    }

    /// Every row of `tables` as of `at` (or, with `None`, as of a new clock reading taken
    /// after the read), and that time.
    pub async fn scan(&self, tables: &[u32], at: Option<Hlc>) -> Result<(Hlc, Vec<ScanRow>)> {
        let mut client = self.poller.lock().await;
        let tx = client.transaction().await?;
        tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let log = self.read_log(&tx).await?;
        let metas = self.tables(&tx, tables).await?;
        let mut current: Vec<(Arc<TableMeta>, Vec<RowImage>)> = Vec::new();
        for oid in tables {
            let Some(meta) = metas.get(oid) else {
                continue;
            };
            current.push((meta.clone(), read_table(&tx, meta).await?));
        }
        let txns = self.group(log, &tx).await?;
        tx.commit().await?;
        self.append(txns);
        let at = at.unwrap_or_else(|| self.clock.now());
        // Nothing drained after the snapshot is stamped before `at`.
        drop(client);
        let s = self.state.lock().unwrap();
        let wanted: HashSet<u32> = tables.iter().copied().collect();
        let mut out = Vec::new();
        for (meta, rows) in current {
            // key → index in `state` (rows in primary-key order, undone rows appended).
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut state: Vec<Option<(String, RowImage)>> = Vec::new();
            for row in rows {
                let key = meta.key_of(&row);
                index.insert(key.clone(), state.len());
                state.push(Some((key, row)));
            }
            let mut written: HashMap<String, Hlc> = HashMap::new();
            for txn in s.txns.iter() {
                if txn.backfill.is_some() || txn.ts > at {
                    continue;
                }
                for c in &txn.changes {
                    if c.table.oid == meta.oid {
                        written.insert(c.key.clone(), txn.ts);
                    }
                }
            }
            for txn in s.txns.iter().rev() {
                if txn.ts <= at {
                    break;
                }
                if txn.backfill.is_some() {
                    continue;
                }
                for c in txn.changes.iter().rev() {
                    if c.table.oid != meta.oid || !wanted.contains(&c.table.oid) {
                        continue;
                    }
                    let slot = match index.get(&c.key) {
                        Some(&i) => i,
                        None => {
                            index.insert(c.key.clone(), state.len());
                            state.push(None);
                            state.len() - 1
                        }
                    };
                    state[slot] = c.before.clone().map(|b| (c.key.clone(), b));
                }
            }
            // Scans go in primary-key order (rows undone were appended).
            let mut state: Vec<(String, RowImage)> = state.into_iter().flatten().collect();
            state.sort_by(|a, b| key_order(&a.0, &b.0));
            for (key, row) in state {
                out.push(ScanRow {
                    table: meta.clone(),
                    mvcc: written.get(&key).copied().unwrap_or(self.start),
                    key,
                    row,
                });
            }
        }
        Ok((at, out))
    }

    /// Re-emits every row of `table` at a new timestamp (a column backfill); returns it.
    pub async fn backfill(&self, table: u32) -> Result<Hlc> {
        let (_, rows) = self.scan(&[table], None).await?;
        Ok(self.append_backfill(table, rows))
    }
}

/// Orders two key arrays as CockroachDB's key encoding does for the common types: numbers by
/// value, strings byte-wise, NULL first.
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    use json::Json;
    use std::cmp::Ordering;
    fn cmp(a: &Json, b: &Json) -> Ordering {
        match (a, b) {
            (Json::Null, Json::Null) => Ordering::Equal,
            (Json::Null, _) => Ordering::Less,
            (_, Json::Null) => Ordering::Greater,
            (Json::Number(x), Json::Number(y)) => match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
                _ => x.cmp(y),
            },
            (Json::String(x), Json::String(y)) => x.cmp(y),
            (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
            (Json::Array(x), Json::Array(y)) => {
                for (p, q) in x.iter().zip(y) {
                    let o = cmp(p, q);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                x.len().cmp(&y.len())
            }
            _ => super::encode::jsonb_text(a).cmp(&super::encode::jsonb_text(b)),
        }
    }
    match (json::parse(a), json::parse(b)) {
        (Ok(x), Ok(y)) => cmp(&x, &y),
        _ => a.cmp(b),
    }
}

async fn read_table(tx: &tokio_postgres::Transaction<'_>, meta: &TableMeta) -> Result<Vec<RowImage>> {
    let nulls = if meta.json_columns.is_empty() {
        "'{}'::text[]".to_string()
    } else {
        let cases: Vec<String> = meta
            .json_columns
            .iter()
            .map(|c| {
                format!(
                    "CASE WHEN t.{} IS NULL THEN {} END",
                    quote_ident(c),
                    super::lexer::quote_literal(c)
                )
            })
            .collect();
        format!("array_remove(ARRAY[{}], NULL)", cases.join(", "))
    };
    let order: Vec<String> = meta.key.iter().map(|k| format!("t.{}", quote_ident(k))).collect();
    let sql = format!(
        "SELECT to_jsonb(t)::text, {nulls} FROM ONLY {}.{} t{}",
        quote_ident(&meta.schema),
        quote_ident(&meta.name),
        if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", order.join(", "))
        }
    );
    let rows = tx
        .query(&sql, &[])
        .await
        .with_context(|| format!("scanning {}.{}", meta.schema, meta.name))?;
    rows.into_iter()
        .map(|r| {
            let text: String = r.get(0);
            Ok(RowImage {
                values: json::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?,
                sql_nulls: r.get(1),
            })
        })
        .collect()
}

/// Reads tables' columns, key and JSON columns from PostgreSQL's catalog.
async fn load_tables(client: &impl GenericClient, oids: &[u32]) -> Result<Vec<TableMeta>> {
    let cols = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, a.attname::text, a.atttypid, \
                    coalesce(e.oid, 0::oid), e.oid IS NOT NULL, \
                    EXISTS (SELECT 1 FROM crdb_standin.columns v \
                             WHERE v.relid = c.oid AND v.attname = a.attname AND v.kind = 'virtual') \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
             WHERE c.oid = ANY($1) ORDER BY c.oid, a.attnum",
            &[&oids],
        )
        .await
        .context("reading captured tables' columns")?;
    let keys = client
        .query(
            "SELECT i.indrelid, a.attname::text \
             FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indisprimary AND i.indrelid = ANY($1) ORDER BY i.indrelid, k.ord",
            &[&oids],
        )
        .await
        .context("reading captured tables' primary keys")?;
    let mut out: Vec<TableMeta> = Vec::new();
    for r in cols {
        let oid: u32 = r.get(0);
        if out.last().is_none_or(|t| t.oid != oid) {
            out.push(TableMeta {
                oid,
                schema: r.get(1),
                name: r.get(2),
                columns: Vec::new(),
                key: Vec::new(),
                json_columns: Vec::new(),
            });
        }
        let t = out.last_mut().expect("pushed");
        let name: String = r.get(3);
        let type_oid: u32 = r.get(4);
        let elem: u32 = r.get(5);
        let is_array: bool = r.get(6);
        let kind = if is_array {
            ValueKind::of(type_oid, Some(ValueKind::of(elem, None)))
        } else {
            ValueKind::of(type_oid, None)
        };
        if kind == ValueKind::Json {
            t.json_columns.push(name.clone());
        }
        t.columns.push(Column {
            name,
            kind,
            virtual_: r.get(7),
        });
    }
    for r in keys {
        let oid: u32 = r.get(0);
        if let Some(t) = out.iter_mut().find(|t| t.oid == oid) {
            t.key.push(r.get(1));
        }
    }
    Ok(out)
}

/// Looks up a table by schema and name among user tables.
pub async fn resolve_table(client: &Client, schema: &str, name: &str) -> Result<Option<u32>> {
    Ok(client
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r' AND crdb_standin.user_schema(n.nspname)",
            &[&schema, &name],
        )
        .await?
        .map(|r| r.get(0)))
}
