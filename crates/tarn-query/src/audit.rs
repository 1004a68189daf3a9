//! The audit trail: every authorization decision and every write a statement makes, as a JSON
//! log line (target `tarn::audit`, written at once) and as a row of the Iceberg table
//! `tarn_audit.events` (appended in batches).
//!
//! Each record names the principal (user and groups), the statement's fingerprint (its text
//! with literals replaced by `?`, whitespace and comments collapsed, unquoted words lower-cased,
//! hashed with SHA-256: equal for statements that differ only in their constants, and never
//! holding a literal value), the operations asked, the tables, the decision and why, the policy
//! that decided, and for writes the rows written.
//!
//! Records wait in a bounded buffer and are appended by one task, in one commit per flush: at
//! `audit.flush_interval`, when a batch is full, and at shutdown ([`AuditLog::close`]). So
//! auditing adds no commit per statement. What a crash loses: the records of the last flush
//! interval that are not yet in the table; their log lines are written before the statement
//! runs on, so a log shipper has them. A full buffer (the table cannot be written for long)
//! drops records from the table, never from the log, and counts them in
//! `tarn_audit_dropped_total`.
//!
//! The table is the lake's own: [`crate::governance`] lets only the auditor role read it
//! (`audit.auditor_role`), whatever the policy says, and refuses every write, `ALTER` and
//! `DROP` of it through SQL; only this module appends to it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use iceberg::{NamespaceIdent, TableIdent};
use sha2::{Digest, Sha256};
use tarn_auth::Principal;
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::{Lake, TableLayout};
use tokio::sync::Notify;

use crate::write::{WriteProgress, write_and_commit};

/// The schema (Iceberg namespace) of the audit table.
pub const AUDIT_SCHEMA: &str = "tarn_audit";
/// The audit table's name in [`AUDIT_SCHEMA`].
pub const AUDIT_TABLE: &str = "events";

/// Records appended in one commit at most.
const BATCH: usize = 10_000;

tokio::task_local! {
    static STATEMENT: Arc<Fingerprint>;
}

/// A statement as the audit trail names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The statement with literals replaced by `?` (no values of the statement's constants).
    pub normalized: String,
    /// The first 16 hex digits of the SHA-256 of `normalized`.
    pub hash: String,
}

impl Fingerprint {
    /// The fingerprint of `sql`: literals replaced, comments dropped, whitespace collapsed,
    /// unquoted keywords and names lower-cased, then hashed. Text that does
    /// not tokenize is hashed as it is, and not shown.
    pub fn of(sql: &str) -> Self {
        let normalized = match Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() {
            Ok(tokens) => normalize(&tokens),
            Err(_) => String::new(),
        };
        let hashed = if normalized.is_empty() { sql } else { &normalized };
        let digest = Sha256::digest(hashed.as_bytes());
        let hash = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { normalized, hash }
    }
}

fn normalize(tokens: &[Token]) -> String {
    let mut out = String::new();
    let mut space = false;
    for token in tokens {
        let text = match token {
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => {
                space = true;
                continue;
            }
            Token::Whitespace(_) => {
                // A comment: dropped, as the space it stands for.
                space = true;
                continue;
            }
            Token::EOF => continue,
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => "?".to_string(),
            // Keywords and names alike (`id` is a keyword to the tokenizer): SQL's case folding.
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
            other => other.to_string(),
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(&text);
    }
    out
}

/// Runs `f` as the statement `sql` (its fingerprint goes on the audit records `f` makes).
pub async fn with_statement<F: Future>(sql: &str, f: F) -> F::Output {
    STATEMENT.scope(Arc::new(Fingerprint::of(sql)), f).await
}

/// The statement the current task runs, if an endpoint said.
pub fn current_statement() -> Option<Arc<Fingerprint>> {
    STATEMENT.try_with(Arc::clone).ok()
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An authorization decision.
    Decision,
    /// Rows a statement wrote (after its commit).
    Write,
}

impl RecordKind {
    fn name(self) -> &'static str {
        match self {
            RecordKind::Decision => "decision",
            RecordKind::Write => "write",
        }
    }
}

/// One record of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Decision or write.
    pub kind: RecordKind,
    /// Who.
    pub user: String,
    /// Their groups (roles).
    pub groups: Vec<String>,
    /// The operations asked (`ExecuteQuery`, `SelectFromColumns`, ...) or the write
    /// (`InsertIntoTable`, `CreateTableAsSelect`).
    pub operations: Vec<String>,
    /// The tables, as `catalog.schema.table`.
    pub tables: Vec<String>,
    /// Allowed.
    pub allowed: bool,
    /// Why it was denied.
    pub reason: Option<String>,
    /// The policy that decided.
    pub policy: String,
    /// The statement.
    pub statement: Option<Arc<Fingerprint>>,
    /// Rows written.
    pub rows: Option<u64>,
}

impl AuditRecord {
    /// A record for `principal` of the current statement.
    pub fn new(kind: RecordKind, principal: &Principal, policy: String) -> Self {
        Self {
            kind,
            user: principal.user.clone(),
            groups: principal.groups.clone(),
            operations: Vec::new(),
            tables: Vec::new(),
            allowed: true,
            reason: None,
            policy,
            statement: current_statement(),
            rows: None,
        }
    }
}

struct Stamped {
    micros: i64,
    id: String,
    record: AuditRecord,
}

/// How the trail is kept (`[audit]`).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Whose members read `tarn_audit.events`.
    pub auditor_role: String,
    /// How long records wait before they are appended.
    pub flush_interval: Duration,
    /// Records held at most.
    pub max_buffered: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            auditor_role: "auditor".into(),
            flush_interval: Duration::from_secs(5),
            max_buffered: 100_000,
        }
    }
}

impl AuditSettings {
    /// The settings `[audit]` configures.
    pub fn from_config(config: &tarn_core::config::AuditConfig) -> Result<Self> {
        Ok(Self {
            auditor_role: config.auditor_role.clone(),
            flush_interval: tarn_core::config::parse_duration(
                "audit.flush_interval",
                &config.flush_interval,
            )?,
            max_buffered: config.max_buffered,
        })
    }
}

/// The audit trail of one process (module doc).
pub struct AuditLog {
    lake: Lake,
    settings: AuditSettings,
    buffer: Mutex<Vec<Stamped>>,
    wake: Arc<Notify>,
    closed: AtomicBool,
    dropped: AtomicU64,
    /// One flush at a time, in order.
    flushing: tokio::sync::Mutex<()>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({}.{})", AUDIT_SCHEMA, AUDIT_TABLE)
    }
}

/// The table's identifier.
pub fn audit_table() -> TableIdent {
    TableIdent::new(NamespaceIdent::new(AUDIT_SCHEMA.into()), AUDIT_TABLE.into())
}

/// The columns of `tarn_audit.events`.
pub fn audit_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            false,
        ),
        text("event_id", false),
        text("kind", false),
        text("user_name", false),
        text("groups", false),
        text("operations", false),
        text("tables", false),
        text("decision", false),
        text("reason", true),
        text("policy", false),
        text("fingerprint", true),
        text("statement", true),
        Field::new("rows_written", DataType::Int64, true),
    ]))
}

impl AuditLog {
    /// The trail of `lake`, with its flushing task started (on the current runtime).
    pub fn start(lake: Lake, settings: AuditSettings) -> Arc<Self> {
        let log = Arc::new(Self {
            lake,
            settings,
            buffer: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
        });
        // The task holds the log only while it flushes: a log dropped without `close` ends it.
        let weak = Arc::downgrade(&log);
        let wake = log.wake.clone();
        let interval = log.settings.flush_interval;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(interval) => {}
                }
                let Some(log) = weak.upgrade() else { return };
                if log.closed.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = log.flush().await {
                    tracing::warn!(error = %e, "cannot append audit records to {AUDIT_SCHEMA}.{AUDIT_TABLE}; they are kept and tried again");
                }
            }
        });
        *log.task.lock().expect("audit task poisoned") = Some(task);
        log
    }

    /// The role whose members read the trail.
    pub fn auditor_role(&self) -> &str {
        &self.settings.auditor_role
    }

    /// Records `record`: its log line now, its row at the next flush.
    pub fn record(&self, record: AuditRecord) {
        let now = chrono::Utc::now();
        let id = uuid::Uuid::new_v4().to_string();
        let decision = if record.allowed { "allow" } else { "deny" };
        let (fingerprint, statement) = match &record.statement {
            Some(s) => (Some(s.hash.as_str()), Some(s.normalized.as_str())),
            None => (None, None),
        };
        tracing::info!(
            target: "tarn::audit",
            event_id = %id,
            kind = record.kind.name(),
            user = %record.user,
            groups = %record.groups.join(","),
            operations = %record.operations.join(","),
            tables = %record.tables.join(","),
            decision,
            reason = record.reason.as_deref(),
            policy = %record.policy,
            fingerprint,
            statement,
            rows = record.rows,
            "audit"
        );
        let full = {
            let mut buffer = self.buffer.lock().expect("audit buffer poisoned");
            if buffer.len() >= self.settings.max_buffered {
                drop(buffer);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tarn_audit_dropped_total").increment(1);
                return;
            }
            buffer.push(Stamped {
                micros: now.timestamp_micros(),
                id,
                record,
            });
            buffer.len() >= BATCH
        };
        metrics::counter!("tarn_audit_records_total").increment(1);
        if full {
            self.wake.notify_one();
        }
    }

    /// Records dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends every buffered record to the table now, in one commit per [`BATCH`]; returns
    /// how many. Records that cannot be appended go back to the buffer.
    pub async fn flush(&self) -> Result<usize> {
        let _one = self.flushing.lock().await;
        let mut written = 0;
        loop {
            let records: Vec<Stamped> = {
                let mut buffer = self.buffer.lock().expect("audit buffer poisoned");
                let n = buffer.len().min(BATCH);
                buffer.drain(..n).collect()
            };
            if records.is_empty() {
                return Ok(written);
            }
            let n = records.len();
            let batch = to_batch(&records)?;
            if let Err(e) = self.append(batch).await {
                let mut buffer = self.buffer.lock().expect("audit buffer poisoned");
                let room = self.settings.max_buffered.saturating_sub(buffer.len());
                let kept: Vec<Stamped> = records.into_iter().take(room).collect();
                let lost = n - kept.len();
                buffer.splice(0..0, kept);
                if lost > 0 {
                    self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
                    metrics::counter!("tarn_audit_dropped_total").increment(lost as u64);
                }
                return Err(e);
            }
            written += n;
        }
    }

    async fn append(&self, batch: RecordBatch) -> Result<()> {
        let ident = audit_table();
        if !self.lake.table_exists(&ident).await? {
            self.lake.create_namespace(ident.namespace(), true).await?;
            match self
                .lake
                .create_table(&ident, &audit_schema(), &TableLayout::default())
                .await
            {
                Ok(_) => {}
                // Another process made it first.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let schema = batch.schema();
        let stream = Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(vec![Ok(batch)]),
        ));
        write_and_commit(
            &self.lake,
            &ident,
            vec![stream],
            HashMap::from([("tarn.writer".to_string(), "audit".to_string())]),
            Arc::new(WriteProgress::default()),
        )
        .await?;
        Ok(())
    }

    /// Stops the flushing task and appends what is buffered: call at shutdown.
    pub async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        let task = self.task.lock().expect("audit task poisoned").take();
        if let Some(task) = task {
            // The task may be mid-flush; its records are appended when it finishes.
            let _ = task.await;
        }
        self.flush().await.map(|_| ())
    }
}

fn to_batch(records: &[Stamped]) -> Result<RecordBatch> {
    let mut time = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
    let mut columns: Vec<StringBuilder> = (0..11).map(|_| StringBuilder::new()).collect();
    let mut rows = Int64Builder::new();
    for s in records {
        let r = &s.record;
        time.append_value(s.micros);
        let groups = r.groups.join(",");
        let operations = r.operations.join(",");
        let tables = r.tables.join(",");
        let values: [Option<&str>; 11] = [
            Some(&s.id),
            Some(r.kind.name()),
            Some(&r.user),
            Some(&groups),
            Some(&operations),
            Some(&tables),
            Some(if r.allowed { "allow" } else { "deny" }),
            r.reason.as_deref(),
            Some(&r.policy),
            r.statement.as_ref().map(|s| s.hash.as_str()),
            r.statement
                .as_ref()
                .map(|s| s.normalized.as_str())
                .filter(|s| !s.is_empty()),
        ];
        for (builder, value) in columns.iter_mut().zip(values) {
            builder.append_option(value);
        }
        rows.append_option(r.rows.and_then(|n| i64::try_from(n).ok()));
    }
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    arrays.extend(columns.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    arrays.push(Arc::new(rows.finish()));
    RecordBatch::try_new(audit_schema(), arrays)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot build audit records: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_hide_literals_and_ignore_spacing_and_case() {
        let a = Fingerprint::of("select  email FROM sales.customers WHERE id = 42 AND name = 'ana' -- hi");
        let b = Fingerprint::of("SELECT email\nfrom Sales.Customers where ID = 7 and NAME = 'bob'");
        assert_eq!(a, b);
        assert_eq!(
            a.normalized,
            "select email from sales.customers where id = ? and name = ?"
        );
        assert_eq!(a.hash.len(), 16);
        let c = Fingerprint::of("SELECT email FROM sales.customers WHERE id > 42");
        assert_ne!(a.hash, c.hash);
        assert!(
            !Fingerprint::of("INSERT INTO t VALUES ('secret', 3.5)")
                .normalized
                .contains("secret")
        );
        // Quoted identifiers keep their case; they are names, not values.
        assert_eq!(
            Fingerprint::of("SELECT \"Mixed\" FROM t").normalized,
            "select \"Mixed\" from t"
        );
    }
}
