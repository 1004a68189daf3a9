//! The catalog browser: namespaces and their tables (what the caller may see, as
//! `information_schema` shows it under a policy), and one table's schema, partitioning,
//! snapshots, files, properties and freshness (the age of its last commit).
//!
//! A table's page reads its metadata, which a policy allows like the REST catalog's
//! `loadTable`: `SelectFromColumns` on all its columns; a refusal is a 403 page with the
//! policy's words.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use iceberg::NamespaceIdent;
use iceberg::spec::DataFileFormat;
use tarn_auth::Principal;

use super::login::Caller;
use super::{Console, Frame, refused, render};

/// One namespace of the listing.
pub(crate) struct Namespace {
    pub(crate) name: String,
    pub(crate) tables: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/catalog.html")]
struct Listing {
    frame: Frame,
    namespaces: Vec<Namespace>,
    tables: usize,
}

/// The (namespace, table) names of the lake `principal` may see, by namespace.
pub(crate) async fn visible_tables(
    console: &Console,
    principal: &Principal,
) -> tarn_core::Result<Vec<Namespace>> {
    let lake = console.session.lake();
    let mut all: Vec<(String, String)> = Vec::new();
    let mut namespaces: Vec<String> = Vec::new();
    for ns in lake.list_namespaces().await? {
        let name = ns.join(".");
        if name == tarn_query::audit::AUDIT_SCHEMA
            && !console
                .session
                .governance()
                .is_some_and(|g| g.is_auditor(principal))
        {
            continue;
        }
        for table in lake.list_tables(&ns).await? {
            all.push((name.clone(), table.name().to_string()));
        }
        namespaces.push(name);
    }
    let allowed: Vec<usize> = match console.session.governance() {
        Some(g) => {
            let resources: Vec<_> = all
                .iter()
                .map(|(s, t)| g.table_name(s, t).resource(None))
                .collect();
            g.policy()
                .filter(principal, "FilterTables", &resources)
                .map_err(tarn_query::governance::policy_error)?
        }
        None => (0..all.len()).collect(),
    };
    let mut out: Vec<Namespace> = namespaces
        .into_iter()
        .map(|name| Namespace {
            name,
            tables: Vec::new(),
        })
        .collect();
    for i in allowed {
        let (schema, table) = &all[i];
        if let Some(ns) = out.iter_mut().find(|n| &n.name == schema) {
            ns.tables.push(table.clone());
        }
    }
    for ns in &mut out {
        ns.tables.sort();
    }
    // Under a policy, a namespace with nothing visible in it is not shown.
    if console.session.governance().is_some() {
        out.retain(|n| !n.tables.is_empty());
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `GET /console/catalog`.
pub(crate) async fn listing(State(console): State<Arc<Console>>, Caller(principal): Caller) -> Response {
    match visible_tables(&console, &principal).await {
        Ok(namespaces) => {
            let tables = namespaces.iter().map(|n| n.tables.len()).sum();
            render(&Listing {
                frame: Frame::of(&principal, "catalog"),
                namespaces,
                tables,
            })
        }
        Err(e) => refused(
            &principal,
            super::status_of(&e),
            "Cannot list the catalog",
            &e.to_string(),
        ),
    }
}

pub(crate) struct Column {
    pub(crate) id: i32,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) required: bool,
    pub(crate) doc: String,
}

pub(crate) struct SnapshotRow {
    pub(crate) id: i64,
    pub(crate) parent: String,
    pub(crate) at: String,
    pub(crate) operation: String,
    pub(crate) summary: String,
}

pub(crate) struct FileRow {
    pub(crate) path: String,
    pub(crate) content: String,
    pub(crate) format: String,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) partition: String,
}

#[derive(Template)]
#[template(path = "console/table.html")]
struct TablePage {
    frame: Frame,
    namespace: String,
    table: String,
    location: String,
    format_version: String,
    freshness: String,
    last_commit: String,
    columns: Vec<Column>,
    partitioning: Vec<String>,
    sort_order: Vec<String>,
    snapshots: Vec<SnapshotRow>,
    files: Vec<FileRow>,
    files_total: usize,
    properties: Vec<(String, String)>,
    /// The lake tables its rows were computed from (`namespace`, `table`).
    upstream: Vec<(String, String)>,
    /// The source table of change data capture, and its pipeline.
    cdc_source: String,
    sample_sql: String,
}

/// Files listed on a table's page at most.
const FILES_SHOWN: usize = 200;

/// How long ago `ms` (milliseconds since the epoch) was, in words.
pub(crate) fn age(ms: i64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let secs = u64::try_from((now - ms).max(0) / 1000).unwrap_or(0);
    let d = std::time::Duration::from_secs(secs);
    format!("{} ago", humantime::format_duration(d))
}

fn time_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A data file's partition values, `a=1, b=x`-like (empty for an unpartitioned table).
fn partition_text(partition: &iceberg::spec::Struct) -> String {
    partition
        .iter()
        .map(|v| v.map_or_else(|| "null".to_string(), |l| format!("{l:?}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /console/catalog/{namespace}/{table}`.
pub(crate) async fn table(
    State(console): State<Arc<Console>>,
    Caller(principal): Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let lake = console.session.lake();
    let ident = iceberg::TableIdent::new(
        NamespaceIdent::from_strs(namespace.split('.'))
            .unwrap_or_else(|_| NamespaceIdent::new(namespace.clone())),
        name.clone(),
    );
    let table = match lake.load_table(&ident).await {
        Ok(t) => t,
        Err(e) => {
            return refused(
                &principal,
                StatusCode::NOT_FOUND,
                "No such table",
                &format!("table {namespace}.{name}: {e}"),
            );
        }
    };
    let metadata = table.metadata();
    let schema = metadata.current_schema();
    if let Some(g) = console.session.governance() {
        let names: Vec<String> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let table_name = g.table_name(&namespace, &name);
        let decided = g.policy().check(
            &principal,
            "SelectFromColumns",
            Some(table_name.resource(Some(&names))),
            &table_name.to_string(),
        );
        g.record_decision(
            &principal,
            vec![format!("SelectFromColumns {table_name} (console)")],
            Vec::new(),
            decided.as_ref().err().map(ToString::to_string),
        );
        if let Err(e) = decided {
            return refused(&principal, StatusCode::FORBIDDEN, "Access denied", &e.to_string());
        }
    }
    let columns = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| Column {
            id: f.id,
            name: f.name.clone(),
            kind: f.field_type.to_string(),
            required: f.required,
            doc: f.doc.clone().unwrap_or_default(),
        })
        .collect();
    let spec = metadata.default_partition_spec();
    let partitioning = spec
        .fields()
        .iter()
        .map(|f| {
            let source = schema
                .field_by_id(f.source_id)
                .map_or_else(|| f.source_id.to_string(), |s| s.name.clone());
            format!("{}({source}) as {}", f.transform, f.name)
        })
        .collect();
    let sort_order = metadata
        .default_sort_order()
        .fields
        .iter()
        .map(|f| {
            let source = schema
                .field_by_id(f.source_id)
                .map_or_else(|| f.source_id.to_string(), |s| s.name.clone());
            format!("{}({source}) {} {}", f.transform, f.direction, f.null_order)
        })
        .collect();
    let mut snapshots: Vec<SnapshotRow> = metadata
        .snapshots()
        .map(|s| SnapshotRow {
            id: s.snapshot_id(),
            parent: s.parent_snapshot_id().map(|p| p.to_string()).unwrap_or_default(),
            at: time_of(s.timestamp_ms()),
            operation: s.summary().operation.as_str().to_string(),
            summary: {
                let mut keys: Vec<_> = s
                    .summary()
                    .additional_properties
                    .iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "added-records"
                                | "deleted-records"
                                | "total-records"
                                | "added-data-files"
                                | "total-data-files"
                        )
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                keys.sort();
                keys.join(", ")
            },
        })
        .collect();
    snapshots.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
    let (freshness, last_commit) = match metadata.current_snapshot() {
        Some(s) => (age(s.timestamp_ms()), time_of(s.timestamp_ms())),
        None => ("no commit yet".to_string(), String::new()),
    };
    let (data, deletes) = match tarn_lake::Lake::live_files(&table).await {
        Ok(f) => f,
        Err(e) => {
            return refused(
                &principal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read the table's files",
                &e.to_string(),
            );
        }
    };
    let files_total = data.len() + deletes.len();
    let files = data
        .iter()
        .map(|f| (f, "data"))
        .chain(deletes.iter().map(|f| (f, "deletes")))
        .take(FILES_SHOWN)
        .map(|(f, content)| FileRow {
            path: f.file_path().to_string(),
            content: content.to_string(),
            format: match f.file_format() {
                DataFileFormat::Parquet => "parquet".into(),
                other => other.to_string(),
            },
            records: f.record_count(),
            bytes: f.file_size_in_bytes(),
            partition: partition_text(f.partition()),
        })
        .collect();
    let mut properties: Vec<(String, String)> = metadata
        .properties()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    properties.sort();
    let upstream = tarn_query::lineage::upstream_of(&table)
        .into_iter()
        .map(|t| match t.rsplit_once('.') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (String::new(), t),
        })
        .collect();
    let property = |key: &str| metadata.properties().get(key).cloned();
    let cdc_source = match (property("tarn.cdc.source-table"), property("tarn.cdc.pipeline")) {
        (Some(source), Some(pipeline)) => format!("{source} (pipeline {pipeline})"),
        (Some(source), None) => source,
        _ => String::new(),
    };
    render(&TablePage {
        upstream,
        cdc_source,
        frame: Frame::of(&principal, "catalog"),
        sample_sql: format!("SELECT * FROM {namespace}.{name} LIMIT 100"),
        namespace,
        table: name,
        location: metadata.location().to_string(),
        format_version: metadata.format_version().to_string(),
        freshness,
        last_commit,
        columns,
        partitioning,
        sort_order,
        snapshots,
        files,
        files_total,
        properties,
    })
}
