//! Federation: live PostgreSQL and CockroachDB databases attached as catalogs beside the
//! lake, so one statement joins lake tables with live ones (`tarn.cdc.orders o JOIN
//! shop.public.customers c`).
//!
//! An external catalog comes from the configuration (`[[federation]]`) or from
//! `CREATE EXTERNAL CATALOG shop FROM 'postgres://...'`, which is kept in the catalog database
//! (properties `tarn.external-catalog.<name>` of the lake's `public` namespace) so every tarn
//! process on the catalog sees it, and survives restarts; `DROP EXTERNAL CATALOG shop` removes
//! it.
//!
//! The tables are `datafusion-table-providers`' PostgreSQL tables: the remote schema is read
//! when a statement names a table, and scans send the remote database a `SELECT` with the
//! statement's projection, filters and limit. Through `datafusion-federation`'s optimizer
//! rule (installed by the session), a part of a plan that reads only tables of one remote
//! database — joins, aggregates, sorts among them — is sent there as one query.
//!
//! What tarn adds around them ([`RemotePool`]):
//! - errors name the catalog (`external catalog shop: ...`), and a catalog that cannot be
//!   reached fails only the statements that read it: its pool is created on first use, and a
//!   failed attempt is retried by the next statement;
//! - a connect timeout (the pool's) and a remote `statement_timeout` set on every connection
//!   taken from the pool;
//! - cancellation: a remote query whose stream is dropped before its end (the tarn statement
//!   was cancelled, timed out, or its client went away) is cancelled on the remote server
//!   through PostgreSQL's cancel request, as `pg_cancel_backend` would, so it does not run on.
//!
//! - [`KeepFiltersAboveRemotePlans`]: a physical optimizer rule that works around the crates
//!   dropping filters DataFusion pushes into a federated remote plan (see its doc).
//!
//! Governance needs nothing here: the policy rule ([`crate::governance`]) authorizes every
//! table scan of every catalog, so foreign tables take the same `SelectFromColumns` decisions,
//! row filters and column masks as lake tables, named `<catalog>.<schema>.<table>`.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use datafusion_table_providers::sql::db_connection_pool::dbconnection::postgresconn::{
    PostgresConnection, PostgresPooledConnection,
};
use datafusion_table_providers::sql::db_connection_pool::dbconnection::{
    AsyncDbConnection, DbConnection, GenericError,
};
use datafusion_table_providers::sql::db_connection_pool::postgrespool::PostgresConnectionPool;
use datafusion_table_providers::sql::db_connection_pool::{DbConnectionPool, JoinPushDown};
use datafusion_table_providers::sql::sql_provider_datafusion::SqlTable;
use futures::StreamExt;
use tarn_core::{Error, ErrorKind, Result};
use tokio_postgres::types::ToSql;

/// The namespace property prefix external catalogs are kept under (in the lake's `public`
/// namespace), followed by the catalog's name.
pub const PROPERTY_PREFIX: &str = "tarn.external-catalog.";

/// How to reach one external database.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalCatalogSettings {
    /// The catalog's name in SQL.
    pub name: String,
    /// `postgres://user:password@host:port/database`, query parameters `sslmode`
    /// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`; default `prefer`) and
    /// `sslrootcert` understood.
    pub url: String,
    /// Connections kept open to it at most.
    pub pool_size: u32,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long one remote query may run (its `statement_timeout`); `None`: the server's.
    pub statement_timeout: Option<Duration>,
}

impl ExternalCatalogSettings {
    /// Settings for `url` with the defaults (pool of 8, 10 s connect timeout, the server's
    /// statement timeout).
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.to_string(),
            url: url.to_string(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: None,
        }
    }

    /// Checks the name and URL, naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "external catalog name {:?}: use lower-case letters, digits and _",
                    self.name
                ),
            ));
        }
        self.connection_params().map(|_| ())
    }

    /// The URL with its password replaced by `***`, for messages and listings.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.url.clone(),
        }
    }

    fn invalid(&self, what: String) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            format!("external catalog {}: {what}", self.name),
        )
    }

    /// The URL as `datafusion-table-providers`' connection parameters.
    fn connection_params(&self) -> Result<HashMap<String, String>> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| self.invalid(format!("URL {:?} is not valid: {e}", self.redacted_url())))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(self.invalid(format!(
                "expected a postgres:// URL, got {:?}",
                self.redacted_url()
            )));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let mut params = HashMap::new();
        let host = url
            .host_str()
            .ok_or_else(|| self.invalid(format!("URL {:?} names no host", self.redacted_url())))?;
        params.insert("host".into(), host.trim_matches(['[', ']']).to_string());
        params.insert("port".into(), url.port().unwrap_or(5432).to_string());
        if !url.username().is_empty() {
            params.insert("user".into(), decode(url.username()));
        }
        if let Some(password) = url.password() {
            params.insert("pass".into(), decode(password));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() {
            params.insert("db".into(), decode(db));
        }
        params.insert("sslmode".into(), "prefer".into());
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" | "sslrootcert" => {
                    params.insert(k.into_owned(), v.into_owned());
                }
                "application_name" => {}
                other => {
                    return Err(self.invalid(format!(
                        "URL parameter {other} is not understood (sslmode, sslrootcert are)"
                    )));
                }
            }
        }
        params.insert(
            "application_name".into(),
            format!("tarn federation {}", self.name),
        );
        params.insert("connection_pool_size".into(), self.pool_size.max(1).to_string());
        Ok(params)
    }
}

/// An error of external catalog `catalog`, as DataFusion carries it.
fn remote_error(catalog: &str, what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::External(Box::new(Error::new(
        ErrorKind::Source,
        format!("external catalog {catalog}: {what}"),
    )))
}

/// The remote database's error, with its first line only when the crate adds advice lines.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // The crate's messages wrap tokio-postgres' ("PostgreSQL connection failed.\n<cause>\n
    // <advice>"); the database's own words are the ones to keep.
    while let Some(s) = source {
        let inner = s.to_string();
        if !inner.is_empty() && !text.contains(&inner) {
            text = format!("{text}: {inner}");
        }
        source = s.source();
    }
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For details, refer") && !l.starts_with("Adjust the"))
        .collect::<Vec<_>>()
        .join(" ")
}

type Param = &'static (dyn ToSql + Sync);
type DynPool = dyn DbConnectionPool<PostgresPooledConnection, Param> + Send + Sync;

/// The pool of one external catalog: `datafusion-table-providers`' bb8 pool with tarn's
/// timeouts and cancellation (module doc).
pub struct RemotePool {
    inner: Arc<PostgresConnectionPool>,
    catalog: String,
    /// TLS for cancel requests, as the pool's connections negotiate it.
    cancel_tls: postgres_native_tls::MakeTlsConnector,
    connect_timeout: Duration,
    statement_timeout: Option<Duration>,
}

impl std::fmt::Debug for RemotePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePool")
            .field("catalog", &self.catalog)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DbConnectionPool<PostgresPooledConnection, Param> for RemotePool {
    async fn connect(
        &self,
    ) -> std::result::Result<Box<dyn DbConnection<PostgresPooledConnection, Param>>, GenericError> {
        let pg = tokio::time::timeout(self.connect_timeout, self.inner.connect_direct())
            .await
            .map_err(|_| {
                format!(
                    "external catalog {}: no connection within {:?}",
                    self.catalog, self.connect_timeout
                )
            })??;
        let token = pg.conn.cancel_token();
        let timeout_ms = self.statement_timeout.map_or(0, |t| t.as_millis().max(1));
        pg.conn
            .batch_execute(&format!("SET statement_timeout = {timeout_ms}"))
            .await?;
        Ok(Box::new(RemoteConnection {
            inner: pg,
            token,
            catalog: self.catalog.clone(),
            cancel_tls: self.cancel_tls.clone(),
        }))
    }

    fn join_push_down(&self) -> JoinPushDown {
        self.inner.join_push_down()
    }
}

/// A connection whose running query is cancelled on the server when its result stream is
/// dropped before the end.
struct RemoteConnection {
    inner: PostgresConnection,
    token: tokio_postgres::CancelToken,
    catalog: String,
    cancel_tls: postgres_native_tls::MakeTlsConnector,
}

impl RemoteConnection {
    fn inner(&self) -> &dyn AsyncDbConnection<PostgresPooledConnection, Param> {
        &self.inner
    }
}

/// The TLS connector for cancel requests of connections made with `sslmode` and `sslrootcert`:
/// the same checks as the pool's connections (datafusion-table-providers verifies the chain
/// for `verify-ca` and `verify-full`, the host name for `verify-full` only).
fn cancel_connector(
    sslmode: &str,
    sslrootcert: Option<&str>,
) -> std::result::Result<postgres_native_tls::MakeTlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = sslrootcert {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
        let cert = native_tls::Certificate::from_pem(&pem)
            .or_else(|_| native_tls::Certificate::from_der(&pem))
            .map_err(|e| format!("sslrootcert {path} holds no certificate: {e}"))?;
        builder.add_root_certificate(cert);
    }
    builder
        .danger_accept_invalid_hostnames(sslmode != "verify-full")
        .danger_accept_invalid_certs(sslmode != "verify-full" && sslmode != "verify-ca");
    let connector = builder
        .build()
        .map_err(|e| format!("cannot set up TLS for cancel requests: {e}"))?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

/// Cancels the remote query when dropped while armed.
struct CancelOnDrop {
    token: Option<tokio_postgres::CancelToken>,
    catalog: String,
    /// The cancel request goes over TLS when the connection's `sslmode` asks for it (a
    /// `require` connection's token refuses to send it in the clear).
    tls: postgres_native_tls::MakeTlsConnector,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.token = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let catalog = self.catalog.clone();
        let tls = self.tls.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                metrics::counter!("tarn_federation_cancelled_total", "catalog" => catalog.clone())
                    .increment(1);
                if let Err(e) = token.cancel_query(tls).await {
                    tracing::warn!(catalog, error = %e, "cannot cancel the remote query");
                }
            });
        }
    }
}

impl DbConnection<PostgresPooledConnection, Param> for RemoteConnection {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_async(&self) -> Option<&dyn AsyncDbConnection<PostgresPooledConnection, Param>> {
        Some(self)
    }
}

#[async_trait]
impl AsyncDbConnection<PostgresPooledConnection, Param> for RemoteConnection {
    fn new(conn: PostgresPooledConnection) -> Self {
        let token = conn.cancel_token();
        Self {
            inner: PostgresConnection::new(conn),
            token,
            catalog: String::new(),
            cancel_tls: cancel_connector("prefer", None).expect("a default TLS connector"),
        }
    }

    async fn tables(
        &self,
        schema: &str,
    ) -> std::result::Result<
        Vec<String>,
        datafusion_table_providers::sql::db_connection_pool::dbconnection::Error,
    > {
        self.inner().tables(schema).await
    }

    async fn schemas(
        &self,
    ) -> std::result::Result<
        Vec<String>,
        datafusion_table_providers::sql::db_connection_pool::dbconnection::Error,
    > {
        self.inner().schemas().await
    }

    async fn get_schema(
        &self,
        table_reference: &TableReference,
    ) -> std::result::Result<
        arrow::datatypes::SchemaRef,
        datafusion_table_providers::sql::db_connection_pool::dbconnection::Error,
    > {
        let remote = match table_reference {
            TableReference::Full {
                catalog,
                schema,
                table,
            } if **catalog == *self.catalog => TableReference::partial(schema.as_ref(), table.as_ref()),
            other => other.clone(),
        };
        self.inner().get_schema(&remote).await
    }

    async fn query_arrow(
        &self,
        sql: &str,
        params: &[Param],
        projected_schema: Option<arrow::datatypes::SchemaRef>,
    ) -> std::result::Result<SendableRecordBatchStream, GenericError> {
        let sql = &remote_sql(&self.catalog, sql);
        tracing::debug!(catalog = %self.catalog, sql, "remote query");
        metrics::counter!("tarn_federation_queries_total", "catalog" => self.catalog.clone()).increment(1);
        // Armed while the query runs: dropping this future or the stream cancels it.
        let mut guard = CancelOnDrop {
            token: Some(self.token.clone()),
            catalog: self.catalog.clone(),
            tls: self.cancel_tls.clone(),
        };
        let stream = match self.inner().query_arrow(sql, params, projected_schema).await {
            Ok(stream) => stream,
            Err(e) => {
                guard.disarm();
                return Err(Box::new(remote_error(&self.catalog, error_text(e.as_ref()))));
            }
        };
        let schema = stream.schema();
        let catalog = self.catalog.clone();
        let guarded = futures::stream::unfold((stream, Some(guard)), move |(mut stream, mut guard)| {
            let catalog = catalog.clone();
            async move {
                let mut g = guard.take()?;
                match stream.next().await {
                    Some(Ok(batch)) => Some((Ok(batch), (stream, Some(g)))),
                    Some(Err(e)) => {
                        g.disarm();
                        Some((Err(remote_error(&catalog, e)), (stream, None)))
                    }
                    None => {
                        g.disarm();
                        None
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, guarded)))
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> std::result::Result<u64, GenericError> {
        self.inner().execute(sql, params).await
    }
}

/// `sql`, generated for tables named `<catalog>.<schema>.<table>`, with the catalog's part
/// removed from table names and column references, as the remote database names them.
///
/// Remote tables keep the catalog in their name ([`Remote::table`]) for
/// `datafusion-federation` 0.5.3: it renames the tables of a federated plan to their remote
/// name, and the columns that name them by rewriting their text, but not the aliases
/// DataFusion's optimizer gives rewritten expressions (`CAST(id AS VARCHAR) || region AS
/// "shop.public.customers.id || ..."`), so a plan whose names change stops resolving ("No field
/// named public.customers.id || ..."). With the remote name equal to the local one nothing is
/// renamed, and the catalog is taken out of the SQL here, as it is sent.
fn remote_sql(catalog: &str, sql: &str) -> String {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, visit_expressions_mut, visit_relations_mut};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect as Pg;
    let Ok(mut statements) = datafusion::sql::sqlparser::parser::Parser::parse_sql(&Pg {}, sql) else {
        return sql.to_string();
    };
    let ours =
        |ident: Option<&datafusion::sql::sqlparser::ast::Ident>| ident.is_some_and(|i| i.value == catalog);
    for statement in &mut statements {
        let _ = visit_relations_mut(statement, |name| {
            if name.0.len() == 3 && ours(name.0[0].as_ident()) {
                name.0.remove(0);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        let _ = visit_expressions_mut(statement, |e| {
            if let SqlExpr::CompoundIdentifier(parts) = e
                && parts.len() == 4
                && ours(parts.first())
            {
                parts.remove(0);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The tables of an external catalog as last listed.
#[derive(Default)]
struct Listing {
    schemas: BTreeMap<String, Vec<String>>,
    listed_at: Option<Instant>,
    failed_at: Option<Instant>,
}

/// How long a listing of a catalog's tables serves `information_schema` before it is read
/// again, and how long after a failed attempt the next one waits.
const LISTING_TTL: Duration = Duration::from_secs(5);
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// One external database: its settings, pool and listing.
struct Remote {
    settings: ExternalCatalogSettings,
    pool: tokio::sync::Mutex<Option<Arc<DynPool>>>,
    listing: RwLock<Listing>,
    dropped: AtomicBool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Remote({}, {})",
            self.settings.name,
            self.settings.redacted_url()
        )
    }
}

impl Remote {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }

    /// The pool, created on first use; a failure is returned (naming the catalog) and retried
    /// by the next call.
    async fn pool(&self) -> DFResult<Arc<DynPool>> {
        let mut pool = self.pool.lock().await;
        if let Some(p) = pool.as_ref() {
            return Ok(p.clone());
        }
        let params = self
            .settings
            .connection_params()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let cancel_tls = cancel_connector(
            params.get("sslmode").map_or("prefer", String::as_str),
            params.get("sslrootcert").map(String::as_str),
        )
        .map_err(|e| remote_error(self.name(), e))?;
        let secrets = datafusion_table_providers::util::secrets::to_secret_map(params);
        let created = tokio::time::timeout(
            self.settings.connect_timeout,
            PostgresConnectionPool::new(secrets),
        )
        .await
        .map_err(|_| {
            remote_error(
                self.name(),
                format!(
                    "cannot connect to {} within {:?}",
                    self.settings.redacted_url(),
                    self.settings.connect_timeout
                ),
            )
        })?
        .map_err(|e| {
            remote_error(
                self.name(),
                format!(
                    "cannot connect to {}: {}",
                    self.settings.redacted_url(),
                    error_text(&e)
                ),
            )
        })?;
        let created: Arc<DynPool> = Arc::new(RemotePool {
            inner: Arc::new(created),
            catalog: self.name().to_string(),
            cancel_tls,
            connect_timeout: self.settings.connect_timeout,
            statement_timeout: self.settings.statement_timeout,
        });
        *pool = Some(created.clone());
        Ok(created)
    }

    /// A plain client query on a pooled connection (listings, existence checks).
    async fn query_strings(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> DFResult<Vec<(String, String)>> {
        let pool = self.pool().await?;
        let conn = pool
            .connect()
            .await
            .map_err(|e| remote_error(self.name(), error_text(e.as_ref())))?;
        let remote = conn
            .as_any()
            .downcast_ref::<RemoteConnection>()
            .ok_or_else(|| remote_error(self.name(), "unexpected connection type"))?;
        let rows = remote
            .inner
            .conn
            .query(sql, params)
            .await
            .map_err(|e| remote_error(self.name(), error_text(&e)))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// Lists the remote tables again when the last listing is older than a few seconds (for
    /// `information_schema`, `SHOW TABLES`); a failure is logged and leaves the catalog
    /// listing nothing, so statements on other catalogs are unaffected.
    async fn refresh(&self) {
        if self.is_dropped() {
            return;
        }
        {
            let listing = self.listing.read().expect("listing poisoned");
            if listing.listed_at.is_some_and(|t| t.elapsed() < LISTING_TTL)
                || listing.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER)
            {
                return;
            }
        }
        let listed = self
            .query_strings(
                "SELECT table_schema::text, table_name::text FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'crdb_internal', 'pg_extension') \
                 AND table_type IN ('BASE TABLE', 'VIEW') ORDER BY 1, 2",
                &[],
            )
            .await;
        let mut listing = self.listing.write().expect("listing poisoned");
        match listed {
            Ok(rows) => {
                let mut schemas: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (schema, table) in rows {
                    schemas.entry(schema).or_default().push(table);
                }
                listing.schemas = schemas;
                listing.listed_at = Some(Instant::now());
                listing.failed_at = None;
            }
            Err(e) => {
                tracing::warn!(catalog = self.name(), error = %e, "cannot list the external catalog's tables");
                listing.schemas.clear();
                listing.listed_at = None;
                listing.failed_at = Some(Instant::now());
            }
        }
    }

    /// The provider of remote table `schema.table`, or `None` when the remote database has no
    /// such table.
    async fn table(&self, schema: &str, table: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if self.is_dropped() {
            return Ok(None);
        }
        let found = self
            .query_strings(
                "SELECT table_schema::text, table_name::text FROM information_schema.tables \
                 WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )
            .await?;
        if found.is_empty() {
            return Ok(None);
        }
        let pool = self.pool().await?;
        // Named with the catalog, as the statement names it (see `remote_sql`).
        let reference = TableReference::full(self.name(), schema, table);
        let sql_table = SqlTable::new("postgres", &pool, reference)
            .await
            .map_err(|e| remote_error(self.name(), format!("table {schema}.{table}: {}", error_text(&e))))?
            .with_dialect(Arc::new(PostgreSqlDialect {}));
        let federated = Arc::new(sql_table).create_federated_table_provider()?;
        Ok(Some(Arc::new(federated)))
    }
}

/// One external database as a DataFusion catalog (module doc).
#[derive(Debug, Clone)]
pub struct ExternalCatalog {
    remote: Arc<Remote>,
}

impl ExternalCatalog {
    /// The catalog for `settings`; nothing is connected until a statement reads it.
    pub fn new(settings: ExternalCatalogSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Self {
            remote: Arc::new(Remote {
                settings,
                pool: tokio::sync::Mutex::new(None),
                listing: RwLock::new(Listing::default()),
                dropped: AtomicBool::new(false),
            }),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &ExternalCatalogSettings {
        &self.remote.settings
    }

    /// Marks it dropped: it lists nothing and names no table any more.
    pub fn mark_dropped(&self) {
        self.remote.dropped.store(true, Ordering::SeqCst);
    }

    /// Whether it was dropped.
    pub fn is_dropped(&self) -> bool {
        self.remote.is_dropped()
    }

    /// Lists the remote tables again when the listing is stale (see [`Remote::refresh`]).
    pub async fn refresh(&self) {
        self.remote.refresh().await;
    }
}

impl CatalogProvider for ExternalCatalog {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema_names(&self) -> Vec<String> {
        if self.remote.is_dropped() {
            return Vec::new();
        }
        self.remote
            .listing
            .read()
            .expect("listing poisoned")
            .schemas
            .keys()
            .cloned()
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if self.remote.is_dropped() {
            return None;
        }
        // Any schema: the remote database says whether a table exists when it is named, so a
        // catalog whose listing failed still gives the real error.
        Some(Arc::new(ExternalSchema {
            remote: self.remote.clone(),
            schema: name.to_string(),
        }))
    }
}

/// A schema of an external catalog.
#[derive(Debug)]
struct ExternalSchema {
    remote: Arc<Remote>,
    schema: String,
}

#[async_trait]
impl SchemaProvider for ExternalSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.remote
            .listing
            .read()
            .expect("listing poisoned")
            .schemas
            .get(&self.schema)
            .cloned()
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        self.remote.table(&self.schema, name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_sql_names_tables_as_the_remote_database_does() {
        let sql = r#"SELECT "shop"."public"."customers"."id", c."name" FROM "shop"."public"."customers" JOIN "shop"."s"."t" AS c ON "shop"."public"."customers"."id" = c."id" WHERE "shop"."public"."customers"."id" > 2"#;
        assert_eq!(
            remote_sql("shop", sql),
            r#"SELECT "public"."customers"."id", c."name" FROM "public"."customers" JOIN "s"."t" AS c ON "public"."customers"."id" = c."id" WHERE "public"."customers"."id" > 2"#
        );
        // Other three-part names, and what does not parse, are left alone.
        assert_eq!(
            remote_sql("shop", r#"SELECT 1 FROM "other"."public"."t""#),
            r#"SELECT 1 FROM "other"."public"."t""#
        );
        assert_eq!(remote_sql("shop", "SELEC nonsense"), "SELEC nonsense");
    }

    #[test]
    fn urls_become_connection_parameters() {
        let s = ExternalCatalogSettings::new(
            "shop",
            "postgres://app:p%40ss@db.example:6543/shop?sslmode=require",
        );
        let p = s.connection_params().unwrap();
        assert_eq!(p["host"], "db.example");
        assert_eq!(p["port"], "6543");
        assert_eq!(p["user"], "app");
        assert_eq!(p["pass"], "p@ss");
        assert_eq!(p["db"], "shop");
        assert_eq!(p["sslmode"], "require");
        assert_eq!(
            s.redacted_url(),
            "postgres://app:***@db.example:6543/shop?sslmode=require"
        );
    }

    #[test]
    fn bad_settings_name_the_catalog() {
        let e = ExternalCatalogSettings::new("shop", "mysql://x/y")
            .validate()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("external catalog shop: expected a postgres:// URL"),
            "{e}"
        );
        let e = ExternalCatalogSettings::new("shop", "postgres://h/d?foo=1")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("URL parameter foo"), "{e}");
        let e = ExternalCatalogSettings::new("Shop-1", "postgres://h/d")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("external catalog name \"Shop-1\""), "{e}");
    }
}

/// The external catalogs a session has attached: those of the configuration and those kept in
/// the catalog database.
#[derive(Debug, Default)]
pub struct Federation {
    attached: std::sync::Mutex<BTreeMap<String, Attached>>,
}

#[derive(Debug, Clone)]
struct Attached {
    catalog: ExternalCatalog,
    /// From the configuration (`[[federation]]`): not dropped by SQL.
    configured: bool,
}

impl Federation {
    fn catalogs(&self) -> Vec<ExternalCatalog> {
        self.attached
            .lock()
            .expect("federation poisoned")
            .values()
            .filter(|a| !a.catalog.is_dropped())
            .map(|a| a.catalog.clone())
            .collect()
    }

    /// The external catalogs attached: name and URL without its password.
    pub fn list(&self) -> Vec<(String, String)> {
        self.catalogs()
            .iter()
            .map(|c| (c.settings().name.clone(), c.settings().redacted_url()))
            .collect()
    }
}

/// `CREATE EXTERNAL CATALOG [IF NOT EXISTS] name FROM 'url'` and `DROP EXTERNAL CATALOG
/// [IF EXISTS] name`, parsed from a statement's text; `None` for any other statement.
#[derive(Debug, PartialEq)]
enum CatalogStatement {
    Create {
        name: String,
        url: String,
        if_not_exists: bool,
    },
    Drop {
        name: String,
        if_exists: bool,
    },
}

/// Whether `sql` is a `CREATE`/`DROP EXTERNAL CATALOG` statement (well formed or not), which
/// tarn runs itself ([`TarnSession::run`](crate::TarnSession::run)) because DataFusion's parser
/// does not know it.
pub fn is_catalog_statement(sql: &str) -> bool {
    parse_catalog_statement(sql).is_some()
}

fn parse_catalog_statement(sql: &str) -> Option<Result<CatalogStatement>> {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let is = |i: usize, w: &str| upper.get(i).is_some_and(|u| u == w);
    if !(is(1, "EXTERNAL") && is(2, "CATALOG") && (is(0, "CREATE") || is(0, "DROP"))) {
        return None;
    }
    let syntax = |what: &str| {
        Some(Err(Error::new(
            ErrorKind::InvalidInput,
            format!("SQL syntax error: {what} in {text:?}"),
        )))
    };
    let name_at = |i: usize| words.get(i).map(|n| n.trim_matches('"').to_string());
    if is(0, "DROP") {
        let if_exists = is(3, "IF") && is(4, "EXISTS");
        let at = if if_exists { 5 } else { 3 };
        let Some(name) = name_at(at) else {
            return syntax("DROP EXTERNAL CATALOG needs a name");
        };
        if words.len() != at + 1 {
            return syntax("DROP EXTERNAL CATALOG takes one name");
        }
        return Some(Ok(CatalogStatement::Drop { name, if_exists }));
    }
    let if_not_exists = is(3, "IF") && is(4, "NOT") && is(5, "EXISTS");
    let at = if if_not_exists { 6 } else { 3 };
    let Some(name) = name_at(at) else {
        return syntax("CREATE EXTERNAL CATALOG needs a name");
    };
    if !is(at + 1, "FROM") {
        return syntax("expected CREATE EXTERNAL CATALOG <name> FROM '<postgres URL>'");
    }
    let rest: String = words[at + 2..].join(" ");
    let Some(url) = rest
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .filter(|u| !u.contains('\''))
    else {
        return syntax("the URL after FROM must be one quoted string");
    };
    Some(Ok(CatalogStatement::Create {
        name,
        url: url.to_string(),
        if_not_exists,
    }))
}

fn public_namespace() -> iceberg::NamespaceIdent {
    iceberg::NamespaceIdent::new(crate::DEFAULT_SCHEMA.to_string())
}

impl crate::TarnSession {
    /// This session with the external catalogs of the configuration (`[[federation]]`)
    /// attached. A catalog that cannot be reached is attached all the same: statements that
    /// read it fail, naming it; others do not notice.
    pub fn with_external_catalogs(self, catalogs: Vec<ExternalCatalogSettings>) -> Result<Self> {
        for settings in catalogs {
            if settings.name == self.lake.name() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "external catalog {}: the lake's catalog has that name",
                        settings.name
                    ),
                ));
            }
            self.attach(settings, true)?;
        }
        Ok(self)
    }

    /// The external catalogs attached to this session: name and URL without its password.
    pub fn external_catalogs(&self) -> Vec<(String, String)> {
        self.federation.list()
    }

    fn attach(&self, settings: ExternalCatalogSettings, configured: bool) -> Result<()> {
        let name = settings.name.clone();
        let catalog = ExternalCatalog::new(settings)?;
        self.ctx.register_catalog(&name, Arc::new(catalog.clone()));
        self.federation
            .attached
            .lock()
            .expect("federation poisoned")
            .insert(name, Attached { catalog, configured });
        Ok(())
    }

    /// The external catalogs kept in the catalog database, by name.
    async fn persisted_catalogs(&self) -> Result<BTreeMap<String, String>> {
        let namespace = self
            .lake
            .catalog()
            .get_namespace(&public_namespace())
            .await
            .map_err(|e| tarn_lake::iceberg_error("cannot read the external catalogs", e))?;
        Ok(namespace
            .properties()
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(PROPERTY_PREFIX)?.to_string(), v.clone())))
            .collect())
    }

    /// Attaches the catalogs created (by any tarn process on this catalog database) since the
    /// last call, detaches the dropped ones, and refreshes the listings that are stale.
    pub(crate) async fn sync_external_catalogs(&self) -> Result<()> {
        let persisted = self.persisted_catalogs().await?;
        let current: Vec<(String, Attached)> = self
            .federation
            .attached
            .lock()
            .expect("federation poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, attached) in &current {
            if attached.configured || attached.catalog.is_dropped() {
                continue;
            }
            if persisted.get(name) != Some(&attached.catalog.settings().url) {
                attached.catalog.mark_dropped();
            }
        }
        for (name, url) in &persisted {
            let live = current.iter().any(|(n, a)| {
                n == name && !a.catalog.is_dropped() && (a.configured || &a.catalog.settings().url == url)
            });
            if !live && let Err(e) = self.attach(ExternalCatalogSettings::new(name, url), false) {
                tracing::warn!(catalog = %name, error = %e, "cannot attach the external catalog");
            }
        }
        futures::future::join_all(self.federation.catalogs().iter().map(|c| async move {
            c.refresh().await;
        }))
        .await;
        Ok(())
    }

    /// Runs `CREATE EXTERNAL CATALOG` / `DROP EXTERNAL CATALOG`; `None` for other statements.
    pub(crate) async fn run_external_catalog_statement(&self, sql: &str) -> Result<Option<crate::Output>> {
        let Some(statement) = parse_catalog_statement(sql) else {
            return Ok(None);
        };
        let resource = |name: &str| serde_json::json!({ "catalog": { "name": name } });
        match statement? {
            CatalogStatement::Create {
                name,
                url,
                if_not_exists,
            } => {
                if let Some(g) = &self.governance {
                    g.check("CreateCatalog", Some(resource(&name)), &format!("catalog {name}"))?;
                }
                let settings = ExternalCatalogSettings::new(&name, &url);
                settings.validate()?;
                let exists = name == self.lake.name()
                    || self
                        .federation
                        .catalogs()
                        .iter()
                        .any(|c| c.settings().name == name);
                if exists {
                    if if_not_exists {
                        return Ok(Some(crate::session::command("CREATE EXTERNAL CATALOG", None)));
                    }
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("catalog {name} already exists"),
                    ));
                }
                let update = iceberg::NamespaceIdent::new(crate::DEFAULT_SCHEMA.to_string());
                let mut properties = HashMap::new();
                properties.insert(format!("{PROPERTY_PREFIX}{name}"), url.clone());
                self.lake
                    .catalog()
                    .update_namespace(&update, properties)
                    .await
                    .map_err(|e| {
                        tarn_lake::iceberg_error(format!("cannot keep external catalog {name}"), e)
                    })?;
                self.attach(settings, false)?;
                Ok(Some(crate::session::command("CREATE EXTERNAL CATALOG", None)))
            }
            CatalogStatement::Drop { name, if_exists } => {
                if let Some(g) = &self.governance {
                    g.check("DropCatalog", Some(resource(&name)), &format!("catalog {name}"))?;
                }
                let attached = self
                    .federation
                    .attached
                    .lock()
                    .expect("federation poisoned")
                    .get(&name)
                    .filter(|a| !a.catalog.is_dropped())
                    .cloned();
                match attached {
                    Some(a) if a.configured => Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "external catalog {name} comes from the configuration ([[federation]]); remove it there"
                        ),
                    )),
                    Some(a) => {
                        self.lake
                            .remove_namespace_properties(
                                &public_namespace(),
                                &[format!("{PROPERTY_PREFIX}{name}")],
                            )
                            .await?;
                        a.catalog.mark_dropped();
                        Ok(Some(crate::session::command("DROP EXTERNAL CATALOG", None)))
                    }
                    None if if_exists => Ok(Some(crate::session::command("DROP EXTERNAL CATALOG", None))),
                    None => Err(Error::new(
                        ErrorKind::NotFound,
                        format!("external catalog {name} does not exist"),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod statement_tests {
    use super::*;

    #[test]
    fn catalog_statements_parse() {
        assert_eq!(
            parse_catalog_statement("create external catalog shop from 'postgres://a@h/d';")
                .unwrap()
                .unwrap(),
            CatalogStatement::Create {
                name: "shop".into(),
                url: "postgres://a@h/d".into(),
                if_not_exists: false
            }
        );
        assert_eq!(
            parse_catalog_statement("DROP EXTERNAL CATALOG IF EXISTS shop")
                .unwrap()
                .unwrap(),
            CatalogStatement::Drop {
                name: "shop".into(),
                if_exists: true
            }
        );
        assert!(parse_catalog_statement("SELECT 1").is_none());
        let e = parse_catalog_statement("CREATE EXTERNAL CATALOG shop 'x'")
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("FROM"), "{e}");
    }
}

/// Wraps `datafusion-federation`'s remote plans (`VirtualExecutionPlan`, named
/// `sql_federation_exec`) so that DataFusion's
/// physical filter pushdown leaves filters above them.
///
/// `datafusion-federation` 0.5.3 answers every filter pushed into a remote plan with "pushed
/// down", and passes them to its executor, but `datafusion-table-providers` 0.11.2's executor
/// ignores them: without this rule, a filter the logical optimizer left above a federated
/// part of a plan (`WHERE c.region = 'eu'` over a join of a lake and a live table) is removed
/// and its rows are not filtered at all. Filters the logical optimizer moves into the
/// federated part are unaffected: they are in the SQL sent.
#[derive(Debug)]
pub(crate) struct KeepFiltersAboveRemotePlans;

impl datafusion::physical_optimizer::PhysicalOptimizerRule for KeepFiltersAboveRemotePlans {
    fn optimize(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> DFResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
        plan.transform_down(|node| {
            if node.as_any().is::<RemoteQueryExec>() {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            if node.name() == "sql_federation_exec" {
                let wrapped: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
                    Arc::new(RemoteQueryExec { inner: node });
                return Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "keep_filters_above_remote_plans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A remote plan that takes no filters from above (see [`KeepFiltersAboveRemotePlans`]), and
/// whose rows have the types it declares.
#[derive(Debug)]
struct RemoteQueryExec {
    inner: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
}

impl datafusion::physical_plan::DisplayAs for RemoteQueryExec {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter,
    ) -> std::fmt::Result {
        write!(f, "RemoteQueryExec")
    }
}

impl datafusion::physical_plan::ExecutionPlan for RemoteQueryExec {
    fn name(&self) -> &str {
        "RemoteQueryExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        vec![&self.inner]
    }

    /// Nothing between it and the remote plan: its casts must see the remote rows first.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
    ) -> DFResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("RemoteQueryExec has one child".into()));
        }
        Ok(Arc::new(RemoteQueryExec {
            inner: children.remove(0),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        // The remote rows as the plan declared them: `datafusion-federation` casts them only
        // at the top of the federated part (`SchemaCastScanExec`), but what DataFusion puts
        // in between trusts the declared types — a `RepartitionExec` over a remote
        // `SELECT CAST(count(*) AS VARCHAR)` (declared `Utf8View`, sent as `Utf8`) panicked.
        let schema = self.inner.schema();
        let rows = self.inner.execute(partition, context)?;
        let declared = schema.clone();
        let cast = rows.map(move |batch| {
            let batch = batch?;
            if batch.schema().fields() == declared.fields() {
                return Ok(batch);
            }
            datafusion_federation::schema_cast::record_convert::try_cast_to(batch, declared.clone())
                .map_err(|e| DataFusionError::External(Box::new(e)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, cast)))
    }
}

/// DataFusion's physical optimizer rules with [`KeepFiltersAboveRemotePlans`] first.
pub(crate) fn physical_optimizer_rules()
-> Vec<Arc<dyn datafusion::physical_optimizer::PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    rules.insert(0, Arc::new(KeepFiltersAboveRemotePlans));
    rules
}

/// DataFusion's logical optimizer rules with `datafusion-federation`'s rule last.
///
/// `datafusion_federation::default_optimizer_rules` puts it right after
/// `scalar_subquery_to_join`, before filter and projection pushdown: a remote table joined
/// with a lake table is then federated as a bare scan, and every row and column of it is
/// fetched. Last, it federates scans that already carry the statement's projection and
/// filters, which the SQL sent then holds.
pub(crate) fn optimizer_rules() -> Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Optimizer::new().rules;
    rules.push(Arc::new(ProjectRemoteAggregates));
    rules.push(Arc::new(datafusion_federation::FederationOptimizerRule::new()));
    rules
}

/// Puts a projection of its columns, in order, over an aggregate of remote tables that has
/// none (`SELECT region, max(name) FROM shop.public.customers GROUP BY region`, whose identity
/// projection DataFusion removes).
///
/// DataFusion's unparser writes such an aggregate's select list as its aggregates first and
/// its groups after (`SELECT max(name), region ... GROUP BY region`), while the plan declares
/// groups first: the remote rows came back with their columns swapped, silently when the types
/// agree. Under a projection the select list is the projection's. A projection of columns
/// right under such an aggregate is removed (see `project_remote_aggregates`). Runs right
/// before `datafusion-federation`'s rule; lake plans are left alone.
#[derive(Debug)]
struct ProjectRemoteAggregates;

impl datafusion::optimizer::OptimizerRule for ProjectRemoteAggregates {
    fn name(&self) -> &str {
        "tarn_project_remote_aggregates"
    }

    fn rewrite(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &dyn datafusion::optimizer::OptimizerConfig,
    ) -> DFResult<datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>> {
        project_remote_aggregates(plan, false)
    }
}

fn project_remote_aggregates(
    plan: datafusion::logical_expr::LogicalPlan,
    under_projection: bool,
) -> DFResult<datafusion::common::tree_node::Transformed<datafusion::logical_expr::LogicalPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, LogicalPlan, Projection};
    let is_projection = matches!(plan, LogicalPlan::Projection(_));
    let plan = plan.map_children(|child| project_remote_aggregates(child, is_projection))?;
    let LogicalPlan::Aggregate(_) = &plan.data else {
        return Ok(plan);
    };
    // Only an aggregate of remote tables alone: it goes to the remote database whole, where
    // the unparser writes it; one over lake tables too runs in tarn and stays as planned.
    let (mut remote, mut local) = (false, false);
    plan.data.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match datafusion_federation::get_table_source(&scan.source)? {
                Some(_) => remote = true,
                None => local = true,
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if !remote || local {
        return Ok(plan);
    }
    // A projection of columns under the aggregate (DataFusion narrows a join's columns so) is
    // left out: the unparser would make it a derived table and still name the join's tables
    // above it (`SELECT "c"."region" ... FROM (SELECT "c"."region" ...) AS derived_projection`,
    // which PostgreSQL refuses); the aggregate reads the same columns from the join itself.
    let (aggregate, narrowed) = match plan.data {
        LogicalPlan::Aggregate(a)
            if matches!(a.input.as_ref(), LogicalPlan::Projection(p)
                if p.expr.iter().all(|e| matches!(e, Expr::Column(_)))) =>
        {
            let LogicalPlan::Projection(p) = a.input.as_ref() else {
                unreachable!("matched above")
            };
            let aggregate =
                datafusion::logical_expr::Aggregate::try_new(p.input.clone(), a.group_expr, a.aggr_expr)?;
            (LogicalPlan::Aggregate(aggregate), true)
        }
        other => (other, false),
    };
    if under_projection {
        return Ok(Transformed::new_transformed(
            aggregate,
            narrowed || plan.transformed,
        ));
    }
    let aggregate = Arc::new(aggregate);
    let columns = aggregate
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    Ok(Transformed::yes(LogicalPlan::Projection(Projection::try_new(
        columns, aggregate,
    )?)))
}
