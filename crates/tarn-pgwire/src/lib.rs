//! The Postgres wire protocol endpoint over a [`TarnSession`].
//!
//! The protocol, `pg_catalog` and type encoding come from `datafusion-postgres` (on `pgwire`),
//! so psql, JDBC, psycopg and BI tools connect as to PostgreSQL. tarn adds:
//!
//! - its statements: `CREATE TABLE` (with `PARTITIONED BY` in the simple query protocol),
//!   `CREATE TABLE AS`, `CREATE SCHEMA`, `DROP TABLE`, `DROP SCHEMA` as Iceberg catalog
//!   operations, and `FOR VERSION AS OF` time travel;
//! - authentication: SCRAM-SHA-256 against the users in the config; with `auth.oidc`, an OIDC
//!   token (JWT) as the password for everyone else; with `server.tls.client_ca`, a client
//!   certificate (module `login`); connections from loopback addresses are trusted without a
//!   password only when `auth.trust_loopback` is set;
//! - SQLSTATE codes for errors (`42601` syntax, `42P01` unknown table, `40001` commit
//!   conflict, ...), so clients can tell errors apart;
//! - PostgreSQL's names for result columns (`count`, not `count(*)`; see
//!   [`tarn_query::result_names`]) in the simple and the extended protocol, repeated names
//!   included;
//! - `uuid` columns described as PostgreSQL's `uuid` (OID 2950), in text or binary form
//!   (module `uuid_wire`);
//! - corrections to the emulated `pg_catalog` (module `pg_catalog`): `numeric(p,s)`,
//!   `timestamp with time zone` and `uuid` in psql's `\d`;
//! - what BI tools read (docs/bi-tools.md): `version()` and `server_version` name PostgreSQL
//!   15 (module `pg_functions`); primary keys (Iceberg identifier fields), comments, sizes and
//!   PostgreSQL's `information_schema` in the catalog, governed like listings (module
//!   `pg_relations`); catalog queries rewritten where DataFusion cannot plan them as clients
//!   write them (module `pg_rewrite`); `SHOW` of connection settings; a connection's
//!   `search_path`; `fixed(n)` columns sent as `bytea` (module `wire_types`);
//! - TLS (`server.tls`, crate `tarn_tls`): an SSLRequest (or PostgreSQL 17's direct TLS) is
//!   answered with the certificate current at that moment, so a reload needs no restart;
//!   with `server.tls.require` a connection without TLS is refused (SQLSTATE 28000), and a
//!   password or token is never asked for over plain TCP from a non-loopback address unless
//!   `auth.allow_plaintext_passwords` is set;
//! - `COPY ... TO STDOUT` (psql's `\copy`, pgjdbc's `CopyManager`, psycopg's `copy`) and
//!   DataFusion's `COPY (query) TO 'file' STORED AS ...` (module `copy`), governed as queries;
//! - `run(listener, session, auth, shutdown)` and `serve(listener, session, options,
//!   shutdown)`: serve on a bound listener until `shutdown` fires, so tests bind
//!   `127.0.0.1:0`.

mod copy;
mod idle;
mod pg_catalog;
pub mod pg_functions;
mod pg_namespaces;
mod pg_relations;
mod pg_rewrite;
mod proxy_protocol;
mod read_mode;
mod statement_timeout;
mod text_values;
mod uuid_wire;
mod wire_types;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{ObjectType, Statement};
use datafusion_postgres::DfSessionService;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables,
};
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use futures::{Sink, StreamExt};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tarn_core::config::AuthConfig;

mod login;
pub mod observe;
use tarn_auth::Principal;
use tarn_core::{Error, ErrorKind};
use tarn_query::governance::with_principal;
use tarn_query::result_names::{self, ResultNames};
use tarn_query::workload::{self, StatementClass, StatementGuard, StopReason, Workload};
use tarn_query::{Output, TarnSession, from_df_error};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The SQLSTATE for a tarn error kind.
pub fn sqlstate(kind: ErrorKind, message: &str) -> &'static str {
    match kind {
        ErrorKind::NotFound if message.contains("schema") => "3F000",
        ErrorKind::NotFound => "42P01",
        ErrorKind::AlreadyExists if message.contains("schema") => "42P06",
        ErrorKind::AlreadyExists => "42P07",
        ErrorKind::CommitConflict => "40001",
        ErrorKind::Cancelled => "57014",
        ErrorKind::OutOfMemory if message.contains("query.spill_limit") => "53100",
        ErrorKind::OutOfMemory => "53200",
        ErrorKind::TooManyStatements => "53300",
        ErrorKind::Storage => "58030",
        ErrorKind::Catalog | ErrorKind::Source => "08006",
        ErrorKind::Config => "F0000",
        ErrorKind::PermissionDenied => "42501",
        ErrorKind::InvalidInput => {
            let m = message.to_ascii_lowercase();
            if m.contains("syntax error") || m.contains("expected") && m.contains("found") {
                "42601"
            } else if m.contains("not found") && m.contains("table") {
                "42P01"
            } else if m.contains("no field named") || m.contains("column") && m.contains("not found") {
                "42703"
            } else if m.contains("cannot cast") || m.contains("cast error") || m.contains("type") {
                "42804"
            } else if m.contains("not null") {
                "23502"
            } else if m.contains("cannot affect row a second time") {
                "21000"
            } else if m.contains("specified more than once") {
                "42701"
            } else if m.contains("not supported") || m.contains("not implemented") {
                "0A000"
            } else {
                "42000"
            }
        }
        ErrorKind::Query | ErrorKind::Internal => "XX000",
    }
}

fn user_error(e: &Error) -> PgWireError {
    let message = e.to_string();
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        sqlstate(e.kind(), &message).into(),
        message,
    )))
}

/// Whether tarn (not DataFusion) runs this statement: catalog statements, and the row-level
/// `DELETE`, `UPDATE` and `MERGE` (`tarn_query::row_level`).
fn is_catalog_statement(statement: &Statement) -> bool {
    match statement {
        Statement::CreateTable(_)
        | Statement::CreateSchema { .. }
        | Statement::Delete(_)
        | Statement::Update(_)
        | Statement::Merge(_) => true,
        Statement::Drop { object_type, .. } => {
            matches!(object_type, ObjectType::Table | ObjectType::Schema)
        }
        _ => false,
    }
}

fn tag_of(output: Output) -> Response {
    match output {
        Output::Command { tag, rows } => Response::Execution(match rows {
            // The tag carries the count; pgwire appends it itself.
            Some(n) => Tag::new(tag.strip_suffix(&format!(" {n}")).unwrap_or(&tag)).with_rows(n as usize),
            None => Tag::new(&tag),
        }),
        // Catalog statements do not return rows.
        Output::Rows(_) => Response::Execution(Tag::new("SELECT")),
    }
}

/// Runs tarn's catalog statements, keeps DataFusion's table listing fresh, and plans queries
/// with repeated select items for the extended protocol ([`result_names::alias_repeats`]).
struct CatalogHook {
    session: TarnSession,
}

#[async_trait]
impl QueryHook for CatalogHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Err(e) = self.session.authorize_statement(statement) {
            return Some(Err(user_error(&e)));
        }
        if let Err(e) = self.session.authorize_explain(statement).await {
            return Some(Err(user_error(&e)));
        }
        if is_catalog_statement(statement) {
            return Some(run_catalog(&self.session, statement).await);
        }
        if let Err(e) = self.session.refresh().await {
            return Some(Err(user_error(&e)));
        }
        None
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if let Err(e) = self.session.authorize_statement(statement) {
            return Some(Err(user_error(&e)));
        }
        if let Err(e) = self.session.authorize_explain(statement).await {
            return Some(Err(user_error(&e)));
        }
        if is_catalog_statement(statement) {
            // A row-level statement with parameters: a plan of no rows that carries them, with
            // the types they take in the statement, for `Describe` and `Bind`.
            if tarn_query::row_level::has_parameters(statement) {
                let types = with_principal(
                    principal_of(client),
                    self.session.row_level_parameter_types(statement),
                );
                return Some(match types.await {
                    Ok(Some(types)) => parameters_plan(types).map_err(|e| PgWireError::ApiError(Box::new(e))),
                    Ok(None) => Ok(no_rows_plan()),
                    Err(e) => Err(user_error(&e)),
                });
            }
            return Some(Ok(no_rows_plan()));
        }
        if let Err(e) = self.session.refresh().await {
            return Some(Err(user_error(&e)));
        }
        if !matches!(statement, Statement::Query(_)) {
            return None;
        }
        let mut planned = statement.clone();
        result_names::alias_repeats(&mut planned);
        // The statement itself stays as the client wrote it: its result names are worked out
        // from it (`TarnParser::get_result_schema`). Columns the wire cannot carry as they are
        // get cast (module `wire_types`).
        let plan = ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(planned)))
            .await
            .and_then(wire_types::sendable_plan)
            .map_err(|e| PgWireError::ApiError(Box::new(e)));
        Some(plan)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if is_catalog_statement(statement) {
            if tarn_query::row_level::has_parameters(statement) {
                return Some(match tarn_query::row_level::bind_parameters(statement, params) {
                    Ok(bound) => run_catalog(&self.session, &bound).await,
                    Err(e) => Err(user_error(&e)),
                });
            }
            return Some(run_catalog(&self.session, statement).await);
        }
        None
    }
}

/// Queries in the simple protocol, run as `datafusion-postgres` runs them, with `uuid` columns
/// described as such (module `uuid_wire`): the hook sees the planned schema, the default path does
/// not.
struct QueryResultHook;

tokio::task_local! {
    /// The statement being run ([`TarnSimpleQuery::run_query`], [`TarnExtendedQuery`]): its
    /// plan executes with the statement's view of the memory pool ([`execute`]).
    static CURRENT_STATEMENT: Arc<workload::Statement>;
    /// The result column formats the extended protocol's portal asks for.
    static RESULT_FORMAT: Format;
}

/// Plans and executes `df` with `statement`'s own view of the memory pool (so
/// `tarn_stat_activity` shows what it holds and spills), its rows encoded in `format`.
async fn execute(
    df: datafusion::dataframe::DataFrame,
    statement: Option<Arc<workload::Statement>>,
    format: &Format,
    options: Arc<pgwire::types::format::FormatOptions>,
) -> PgWireResult<pgwire::api::results::QueryResponse> {
    use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
    let api = |e: datafusion::error::DataFusionError| PgWireError::ApiError(Box::new(e));
    let fields = Arc::new(arrow_schema_to_pg_fields(
        df.schema().as_arrow(),
        format,
        Some(options),
    )?);
    let (state, plan) = df.into_parts();
    let batches = workload::execute_with_fallback(
        state,
        &plan,
        |state| match &statement {
            Some(s) => s.task_context(datafusion::execution::TaskContext::from(state)),
            None => state.task_ctx(),
        },
        |physical| {
            if let Some(s) = &statement {
                s.set_plan(physical.clone());
            }
        },
    )
    .await
    .map_err(api)?;
    let encoding = fields.clone();
    let rows = batches
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + Sync> =
                match batch {
                    Ok(batch) => encode_recordbatch(encoding.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(PgWireError::ApiError(Box::new(e))))),
                };
            futures::stream::iter(rows)
        })
        .flatten();
    Ok(pgwire::api::results::QueryResponse::new(fields, rows))
}

#[async_trait]
impl QueryHook for QueryResultHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if !matches!(statement, Statement::Query(_)) {
            return None;
        }
        let sql = statement.to_string();
        // The statement's deadline and cancellation are watched around this hook
        // (`TarnSimpleQuery::run_query`) and on its rows ([`cancellable`]).
        let df = match ctx.sql(&sql).await.and_then(wire_types::sendable_frame) {
            Ok(df) => df,
            Err(e) => return Some(Err(PgWireError::ApiError(Box::new(e)))),
        };
        let marked = uuid_wire::marked_columns(df.schema().as_arrow());
        let options = Arc::new(pgwire::types::format::FormatOptions::from_client_metadata(
            client.metadata(),
        ));
        let encoded = execute(
            df,
            CURRENT_STATEMENT.try_with(Arc::clone).ok(),
            &Format::UnifiedText,
            options,
        )
        .await;
        Some(encoded.map(|r| {
            text_values::with_postgres_text(uuid_wire::with_marked_types(Response::Query(r), &marked))
        }))
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    /// A query of the extended protocol, run as `datafusion-postgres` runs it (parameters
    /// bound, the portal's result formats) but with the statement's own view of the memory
    /// pool, so `tarn_stat_activity` shows its memory and spills as for the simple protocol.
    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if !matches!(statement, Statement::Query(_)) {
            return None;
        }
        let running = CURRENT_STATEMENT.try_with(Arc::clone).ok()?;
        let format = RESULT_FORMAT.try_with(Clone::clone).ok()?;
        let api = |e: datafusion::error::DataFusionError| PgWireError::ApiError(Box::new(e));
        let df = match plan.clone().replace_params_with_values(params) {
            Ok(plan) => ctx.execute_logical_plan(plan).await.map_err(api),
            Err(e) => Err(api(e)),
        };
        let options = Arc::new(pgwire::types::format::FormatOptions::from_client_metadata(
            client.metadata(),
        ));
        Some(match df {
            Ok(df) => execute(df, Some(running), &format, options)
                .await
                .map(Response::Query),
            Err(e) => Err(e),
        })
    }
}

/// `SHOW` of the settings clients read when they connect (SQLAlchemy's
/// `standard_conforming_strings`, Metabase's `timezone`, JDBC's `transaction isolation level`),
/// answered as PostgreSQL answers them; other `SHOW`s go on to `datafusion-postgres`.
struct ShowSettingsHook {
    /// For the `statement_timeout` in force (a role's or the server's default).
    workload: Arc<Workload>,
    /// For the `tarn.read_mode` in force (the server's default).
    bridge: Arc<tarn_query::bridge::Bridge>,
}

/// `SET search_path TO a, b` (identifiers or strings): kept for the connection, which its
/// statements then resolve unqualified table names with ([`CatalogQueries`]).
struct SearchPathHook;

/// The `search_path` a `SET` statement sets, if it is one.
fn set_search_path(statement: &Statement) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{Expr, Set};
    let Statement::Set(Set::SingleAssignment { variable, values, .. }) = statement else {
        return None;
    };
    if !variable.to_string().eq_ignore_ascii_case("search_path") {
        return None;
    }
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Expr::Identifier(i) if i.quote_style.is_some() => format!("\"{}\"", i.value),
            Expr::Identifier(i) => i.value.clone(),
            Expr::Value(v) => v.clone().into_string().unwrap_or_else(|| v.to_string()),
            other => other.to_string(),
        })
        .collect();
    Some(parts.join(", "))
}

#[async_trait]
impl QueryHook for SearchPathHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let path = set_search_path(statement)?;
        client.metadata_mut().insert("search_path".into(), path);
        Some(Ok(Response::Execution(Tag::new("SET"))))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        set_search_path(statement)?;
        Some(Ok(no_rows_plan()))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let path = set_search_path(statement)?;
        client.metadata_mut().insert("search_path".into(), path);
        Some(Ok(Response::Execution(Tag::new("SET"))))
    }
}

/// The column and value `SHOW <statement>` answers with, for the settings [`ShowSettingsHook`]
/// answers.
fn shown_setting(
    statement: &Statement,
    client: &(dyn ClientInfo + Send + Sync),
    workload: &Workload,
    bridge: &tarn_query::bridge::Bridge,
) -> Option<(String, String)> {
    let Statement::ShowVariable { variable } = statement else {
        return None;
    };
    let name = variable
        .iter()
        .map(|v| v.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    let (column, value) = match name.as_str() {
        "timezone" | "time zone" => (
            "TimeZone",
            client
                .metadata()
                .get("timezone")
                .cloned()
                .unwrap_or_else(|| "UTC".into()),
        ),
        "standard_conforming_strings" | "integer_datetimes" => (name.as_str(), "on".into()),
        "server_version" => ("server_version", pg_functions::POSTGRES_VERSION.into()),
        "server_version_num" => ("server_version_num", "150000".into()),
        "server_encoding" | "client_encoding" => (name.as_str(), "UTF8".into()),
        "transaction isolation level" | "transaction_isolation" => {
            ("transaction_isolation", "read committed".into())
        }
        "transaction_read_only" | "default_transaction_read_only" => (name.as_str(), "off".into()),
        "max_identifier_length" => ("max_identifier_length", "63".into()),
        "statement_timeout" => {
            let roles = roles_of(principal_of(client).as_deref());
            (
                "statement_timeout",
                statement_timeout::show(statement_timeout(client, workload, &roles)),
            )
        }
        "tarn.read_position" | "tarn read_position" => {
            (read_mode::POSITION, read_mode::shown_position(client))
        }
        "tarn.read_mode" | "tarn read_mode" => (
            read_mode::NAME,
            read_mode::session_mode(client)
                .unwrap_or_else(|| bridge.default_mode())
                .as_str()
                .to_string(),
        ),
        "search_path" => {
            let path = pg_rewrite::search_path(client.metadata());
            let shown = if path.is_empty() {
                format!("\"$user\", {}", tarn_query::DEFAULT_SCHEMA)
            } else {
                path.join(", ")
            };
            ("search_path", shown)
        }
        _ => return None,
    };
    Some((column.to_string(), value))
}

/// The query answering `SHOW` with `value` in a column named `column`.
fn setting_query(column: &str, value: &str) -> String {
    format!(
        "SELECT '{}' AS \"{}\"",
        value.replace('\'', "''"),
        column.replace('"', "\"\"")
    )
}

#[async_trait]
impl QueryHook for ShowSettingsHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let (column, value) = shown_setting(statement, &*client, &self.workload, &self.bridge)?;
        let df = match ctx.sql(&setting_query(&column, &value)).await {
            Ok(df) => df,
            Err(e) => return Some(Err(PgWireError::ApiError(Box::new(e)))),
        };
        Some(
            datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe(df, &Format::UnifiedText, None)
                .await
                .map(Response::Query),
        )
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let (column, value) = shown_setting(statement, client, &self.workload, &self.bridge)?;
        Some(
            ctx.state()
                .create_logical_plan(&setting_query(&column, &value))
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e))),
        )
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        shown_setting(statement, &*client, &self.workload, &self.bridge)?;
        let df = match ctx.execute_logical_plan(plan.clone()).await {
            Ok(df) => df,
            Err(e) => return Some(Err(PgWireError::ApiError(Box::new(e)))),
        };
        Some(
            datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe(df, &Format::UnifiedText, None)
                .await
                .map(Response::Query),
        )
    }
}

async fn run_catalog(session: &TarnSession, statement: &Statement) -> PgWireResult<Response> {
    metrics::counter!("tarn_pgwire_statements_total", "kind" => "catalog").increment(1);
    match session.run_sql(&statement.to_string()).await {
        Ok(output) => Ok(tag_of(output)),
        Err(e) => Err(user_error(&e)),
    }
}

/// The simple query protocol with tarn's SQL extensions applied before DataFusion parses.
struct TarnSimpleQuery {
    session: TarnSession,
    workload: Arc<Workload>,
    connections: Arc<idle::Connections>,
    inner: Arc<DfSessionService>,
    catalog: Arc<CatalogQueries>,
    running: Arc<RunningQueries>,
    /// The parser `inner` uses, to see statements as it will plan them.
    compatibility: PostgresCompatibilityParser,
}

impl TarnSimpleQuery {
    /// `sql` with repeated select items aliased ([`result_names::alias_repeats`]) as
    /// `datafusion-postgres` will plan it (after its rewrites of what psql and other clients
    /// send, which match the text as they wrote it); `sql` itself when nothing repeats.
    fn with_repeats_aliased<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        let Ok(mut statements) = self.compatibility.parse(sql) else {
            return sql.into();
        };
        if let [statement] = statements.as_mut_slice() {
            let aliased = result_names::alias_repeats(statement);
            if qualify_activity(statement) || aliased {
                return statement.to_string().into();
            }
        }
        sql.into()
    }
}

/// Qualifies an unqualified `tarn_stat_activity` as `pg_catalog.tarn_stat_activity`, where it
/// is served; says whether it did.
fn qualify_activity(statement: &mut Statement) -> bool {
    use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, VisitMut, VisitorMut};
    struct Qualify(bool);
    impl VisitorMut for Qualify {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &mut ObjectName) -> std::ops::ControlFlow<()> {
            if let [part] = name.0.as_slice()
                && part.to_string().eq_ignore_ascii_case(workload::ACTIVITY_TABLE)
            {
                *name = ObjectName(vec![
                    ObjectNamePart::Identifier(Ident::new("pg_catalog")),
                    part.clone(),
                ]);
                self.0 = true;
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut visitor = Qualify(false);
    let _ = statement.visit(&mut visitor);
    visitor.0
}

/// The cancellation token of each connection's running query, by (pid, secret key).
///
/// pgwire cancels the future that *plans* a query, but rows are produced while they are sent,
/// after that future has finished; so tarn also stops the row stream itself when a cancel
/// request names the connection.
#[derive(Default)]
struct RunningQueries {
    tokens: std::sync::Mutex<HashMap<(i32, Vec<u8>), CancellationToken>>,
}

impl RunningQueries {
    fn start(&self, key: (i32, Vec<u8>)) -> CancellationToken {
        let token = CancellationToken::new();
        self.tokens
            .lock()
            .expect("query map poisoned")
            .insert(key, token.clone());
        token
    }

    fn finish(&self, key: &(i32, Vec<u8>)) {
        self.tokens.lock().expect("query map poisoned").remove(key);
    }

    fn cancel(&self, key: &(i32, Vec<u8>)) {
        if let Some(token) = self.tokens.lock().expect("query map poisoned").get(key) {
            token.cancel();
        }
    }
}

/// What a statement holds while its rows are sent: its line in `tarn_stat_activity` and its
/// admission slot. Dropped when the rows end, which frees the plan's memory too.
struct Held {
    statement: StatementGuard,
    /// Records the statement's latency and rows when the rows are sent.
    _timer: Option<observe::StatementTimer>,
    _admission: Option<workload::Admission>,
    /// The connection is busy until the rows are sent ([`idle`]).
    _busy: Option<idle::Busy>,
}

/// The 57014 error of a statement stopped for `reason`.
fn stop_error(reason: StopReason) -> PgWireError {
    match reason {
        StopReason::Cancelled => PgWireError::QueryCanceled,
        StopReason::Timeout => PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "57014".into(),
            reason.message().into(),
        ))),
    }
}

/// Who runs a connection's statements and under which limits: taken once per request.
struct Caller {
    pid: i32,
    /// (pid, secret key): the connection in [`RunningQueries`].
    key: (i32, Vec<u8>),
    /// Cancels this request's statements (a cancel request, `pg_cancel_backend`).
    token: CancellationToken,
    user: String,
    roles: Vec<String>,
}

/// What every statement of both protocols — queries, writes and `COPY` alike — passes
/// before it runs: listed in `tarn_stat_activity`, the connection marked busy ([`idle`]),
/// and, unless it is light ([`classify`]), admitted through the queue.
struct Gate<'a> {
    workload: &'a Arc<Workload>,
    running: &'a RunningQueries,
    connections: &'a idle::Connections,
    parser: &'a PostgresCompatibilityParser,
}

impl Gate<'_> {
    /// The caller behind `client`, with a fresh cancellation token for its statements.
    fn caller<C: ClientInfo + ?Sized>(&self, client: &C) -> Caller {
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes().to_vec());
        let token = self.running.start(key.clone());
        let principal = principal_of(client);
        let roles = roles_of(principal.as_deref());
        Caller {
            pid,
            key,
            token,
            user: principal.as_ref().map_or_else(String::new, |p| p.user.clone()),
            roles,
        }
    }

    /// Lists `sql` and waits for its admission; on a refusal (53300) or a stop while queued
    /// (57014) the caller's token is forgotten and the client's error returned.
    async fn enter<C: ClientInfo + ?Sized>(
        &self,
        client: &C,
        caller: &Caller,
        sql: &str,
    ) -> PgWireResult<(Arc<workload::Statement>, Held)> {
        let busy = self.connections.get(client.socket_addr()).map(|c| {
            c.begin(
                transaction_effect(self.parser, sql),
                self.workload.default_idle_in_transaction_timeout(&caller.roles),
            )
        });
        let running = self.workload.begin(
            caller.pid,
            &caller.user,
            sql,
            // Read per statement: a `SET statement_timeout` earlier in the same query string
            // counts.
            statement_timeout(client, self.workload, &caller.roles),
            caller.token.clone(),
        );
        tracing::Span::current().record("query_id", running.id());
        let guard = StatementGuard(running.clone());
        let admission = match classify(self.parser, sql) {
            StatementClass::Light => {
                running.mark_running();
                None
            }
            StatementClass::Heavy => match self.workload.admit(&running, &caller.roles).await {
                Ok(a) => Some(a),
                Err(e) => {
                    self.running.finish(&caller.key);
                    return Err(user_error(&e));
                }
            },
        };
        Ok((
            running,
            Held {
                statement: guard,
                _timer: None,
                _admission: admission,
                _busy: busy,
            },
        ))
    }
}

/// `work`, stopped with 57014 when `statement` is cancelled or passes its `statement_timeout`
/// first; a panic while planning or running it ends the statement with XX000
/// ([`panic_error`]), not the connection.
async fn until_stopped<T>(
    statement: &workload::Statement,
    work: impl std::future::Future<Output = PgWireResult<T>>,
) -> PgWireResult<T> {
    use futures::FutureExt;
    tokio::select! {
        done = std::panic::AssertUnwindSafe(work).catch_unwind() => done.unwrap_or_else(|p| Err(panic_error(p))),
        reason = statement.stopped() => Err(stop_error(reason)),
    }
}

/// The error a statement ends with when planning or running it panicked: a bug in tarn or
/// one of its libraries, which must cost the client its statement, not its connection
/// (pgwire would drop the connection with the task that panicked). Logged and counted
/// (`tarn_pgwire_statement_panics_total`).
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> PgWireError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    metrics::counter!("tarn_pgwire_statement_panics_total").increment(1);
    tracing::error!(panic = %what, "a statement panicked; it ends with XX000 and the connection stays");
    user_error(&Error::new(
        ErrorKind::Internal,
        format!("internal error (a bug in tarn; please report it): {what}"),
    ))
}

/// Makes `response`'s rows stop with `57014` when the statement is cancelled (`token`, or
/// `pg_cancel_backend`) or its `statement_timeout` passes, and forgets the token and the
/// statement once the rows are sent.
fn cancellable(
    response: Response,
    held: Option<Held>,
    token: &CancellationToken,
    running: &Arc<RunningQueries>,
    key: &(i32, Vec<u8>),
) -> Response {
    match response {
        Response::Query(mut query) => {
            let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
            let counted = held.as_ref().and_then(|h| h._timer.as_ref()).map(|t| t.rows());
            let rows = Box::pin(rows.inspect(move |row| {
                if let (Some(counted), Ok(_)) = (&counted, row) {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
            query.data_rows = Box::pin(stopping(rows, held, token, running, key));
            Response::Query(query)
        }
        // `COPY ... TO STDOUT`: its data is produced while it is sent, like a query's rows.
        Response::CopyOut(mut copy) => {
            let data = std::mem::replace(&mut copy.data_stream, Box::pin(futures::stream::empty()));
            copy.data_stream = Box::pin(stopping(data, held, token, running, key));
            Response::CopyOut(copy)
        }
        other => other,
    }
}

/// `items` ending early with 57014 when the statement stops ([`cancellable`]); `held` and the
/// connection's token are let go when they end.
fn stopping<T: Send + 'static>(
    items: std::pin::Pin<Box<dyn futures::Stream<Item = PgWireResult<T>> + Send>>,
    held: Option<Held>,
    token: &CancellationToken,
    running: &Arc<RunningQueries>,
    key: &(i32, Vec<u8>),
) -> impl futures::Stream<Item = PgWireResult<T>> + Send + 'static {
    let statement = held.as_ref().map(|h| h.statement.0.clone());
    let stop = {
        let (token, statement) = (token.clone(), statement.clone());
        async move {
            match statement {
                Some(s) => {
                    s.stopped().await;
                }
                None => token.cancelled().await,
            }
        }
    };
    let tail = token.clone();
    let (running, key) = (running.clone(), key.clone());
    // A panic while producing the rows ends them (`catch_unwind` ends the stream after it)
    // with XX000 (see `panic_error`).
    let items = std::panic::AssertUnwindSafe(items)
        .catch_unwind()
        .map(|item| item.unwrap_or_else(|p| Err(panic_error(p))));
    items.take_until(stop).chain(
        futures::stream::once(async move {
            running.finish(&key);
            drop(held);
            match statement.and_then(|s| s.stop_reason()) {
                Some(reason) => Some(Err(stop_error(reason))),
                None => tail.is_cancelled().then_some(Err(PgWireError::QueryCanceled)),
            }
        })
        .filter_map(futures::future::ready),
    )
}

/// Cancels the planning future (pgwire) and the row stream (tarn) of the named connection.
struct TarnCancel {
    inner: DefaultCancelHandler,
    running: Arc<RunningQueries>,
}

#[async_trait]
impl pgwire::api::cancel::CancelHandler for TarnCancel {
    async fn on_cancel_request(&self, request: pgwire::messages::cancel::CancelRequest) {
        metrics::counter!("tarn_pgwire_cancel_requests_total").increment(1);
        self.running
            .cancel(&(request.pid, request.secret_key.to_bytes().to_vec()));
        self.inner.on_cancel_request(request).await;
    }
}

#[async_trait]
impl SimpleQueryHandler for TarnSimpleQuery {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        metrics::counter!("tarn_pgwire_queries_total").increment(1);
        let kind = observe::statement_kind(&self.compatibility, query);
        let span = observe::statement_span(kind);
        let timer = observe::StatementTimer::start(kind, span.clone());
        let mode = read_mode::session_mode(client);
        let positions = tarn_query::bridge::ReadPositions::default();
        let out = with_principal(
            principal_of(client),
            tarn_query::bridge::with_read_positions(
                positions.clone(),
                tarn_query::bridge::with_read_mode(mode, self.run_query(client, query, timer)),
            ),
        )
        .instrument(span)
        .await;
        read_mode::keep_position(client, &positions);
        out
    }
}

impl TarnSimpleQuery {
    async fn run_query<C>(
        &self,
        client: &mut C,
        query: &str,
        timer: observe::StatementTimer,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match TarnSession::prepare(query) {
            Ok(s) => s,
            // Let DataFusion's parser report what it makes of it.
            Err(_) => return SimpleQueryHandler::do_query(self.inner.as_ref(), client, query).await,
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let gate = Gate {
            workload: &self.workload,
            running: &self.running,
            connections: &self.connections,
            parser: &self.compatibility,
        };
        let caller = gate.caller(client);
        let (key, token) = (caller.key.clone(), caller.token.clone());
        let mut responses = Vec::new();
        let mut timer = Some(timer);
        for statement in statements {
            let (running, held) = gate.enter(client, &caller, &statement.sql).await?;
            if let Some(copy) = copy::classify(&statement.sql) {
                let copied = until_stopped(&running, copy::run(&self.session, &statement.sql, copy)).await;
                match copied {
                    Ok(response) => {
                        responses.push(cancellable(response, Some(held), &token, &self.running, &key))
                    }
                    Err(e) => {
                        self.running.finish(&key);
                        return Err(e);
                    }
                }
                continue;
            }
            if !statement.partition.is_empty()
                || !statement.sort.is_empty()
                || tarn_query::federation::is_catalog_statement(&statement.sql)
            {
                let ran = until_stopped(&running, async {
                    self.session.run(&statement).await.map_err(|e| user_error(&e))
                })
                .await;
                let output = match ran {
                    Ok(o) => o,
                    Err(e) => {
                        self.running.finish(&key);
                        return Err(e);
                    }
                };
                responses.push(tag_of(output));
            } else {
                let names = ResultNames::of_sql(&statement.sql);
                let rewritten = self
                    .catalog
                    .prepare(&statement.sql, client.metadata())
                    .await
                    .map_err(|e| {
                        self.running.finish(&key);
                        PgWireError::ApiError(Box::new(e))
                    })?;
                let sql = self.with_repeats_aliased(rewritten.as_deref().unwrap_or(&statement.sql));
                let result = until_stopped(
                    &running,
                    CURRENT_STATEMENT.scope(
                        running.clone(),
                        tarn_query::audit::with_statement(
                            &statement.sql,
                            SimpleQueryHandler::do_query(self.inner.as_ref(), client, &sql),
                        ),
                    ),
                )
                .await;
                let result = match result {
                    Ok(r) => r,
                    Err(e) => {
                        self.running.finish(&key);
                        return Err(e);
                    }
                };
                let mut held = Some(held);
                for r in result {
                    let r = with_names(r, names.as_ref());
                    // The statement stays listed (and holds its slot) while its rows are sent.
                    let hold = if matches!(r, Response::Query(_)) {
                        held.take().map(|mut h| {
                            h._timer = timer.take();
                            h
                        })
                    } else {
                        None
                    };
                    responses.push(cancellable(r, hold, &token, &self.running, &key));
                }
            }
        }
        if !responses
            .iter()
            .any(|r| matches!(r, Response::Query(_) | Response::CopyOut(_)))
        {
            self.running.finish(&key);
        }
        Ok(responses)
    }
}

/// The roles limits apply to for `principal`: its user and its groups.
fn roles_of(principal: Option<&Principal>) -> Vec<String> {
    principal
        .map(|p| {
            std::iter::once(p.user.clone())
                .chain(p.groups.iter().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// The connection's `statement_timeout`: what it `SET` (`0`: none), else its roles' or the
/// configured default.
fn statement_timeout<C: ClientInfo + ?Sized>(
    client: &C,
    workload: &Workload,
    roles: &[String],
) -> Option<std::time::Duration> {
    statement_timeout::session_setting(client).unwrap_or_else(|| workload.default_timeout(roles))
}

/// Whether `sql` opens (`Some(true)`) or ends (`Some(false)`) a transaction ([`idle`]).
fn transaction_effect(parser: &PostgresCompatibilityParser, sql: &str) -> Option<bool> {
    parser
        .parse(sql)
        .ok()?
        .iter()
        .filter_map(idle::transaction_effect)
        .next_back()
}

/// Whether `sql` waits for an admission slot: statements that read only the catalog
/// (`pg_catalog`, `information_schema`, `tarn_stat_activity`) or no table, previews of a
/// table's first rows ([`is_peek`]), `SET`, `SHOW`, transaction control and `EXPLAIN` without
/// `ANALYZE` run at once; the rest queue.
fn classify(parser: &PostgresCompatibilityParser, sql: &str) -> StatementClass {
    use datafusion::sql::sqlparser::ast::Visit;
    let Ok(statements) = parser.parse(sql) else {
        return StatementClass::Heavy;
    };
    let mut class = StatementClass::Light;
    for statement in &statements {
        let reads = match statement {
            Statement::Query(_) => true,
            Statement::Explain { analyze, .. } => {
                if *analyze {
                    return StatementClass::Heavy;
                }
                false
            }
            Statement::Set(_)
            | Statement::Reset(_)
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowSchemas { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
            | Statement::Close { .. }
            | Statement::CreateSchema { .. }
            | Statement::ExplainTable { .. } => false,
            _ => return StatementClass::Heavy,
        };
        if !reads || matches!(statement, Statement::Query(q) if is_peek(q)) {
            continue;
        }
        let mut heavy = false;
        let _ = statement.visit(&mut RelationVisitor(&mut heavy));
        if heavy {
            class = StatementClass::Heavy;
        }
    }
    class
}

/// The most rows a preview ([`is_peek`]) asks for.
const PEEK_ROWS: u64 = 10_000;

/// Whether `query` is a preview of a table's first rows, `SELECT columns FROM t LIMIT n` with
/// `n` at most [`PEEK_ROWS`] and nothing else — no `WHERE`, joins, grouping, ordering,
/// `DISTINCT`, `OFFSET` or expressions — as BI tools run to show a table (Superset's and
/// DBeaver's data preview, Metabase's table view). It reads the table's first rows and stops,
/// so it does not wait behind heavy statements for a slot.
fn is_peek(query: &datafusion::sql::sqlparser::ast::Query) -> bool {
    use datafusion::sql::sqlparser::ast::{
        Expr, GroupByExpr, LimitClause, SelectItem, SetExpr, TableFactor, Value,
    };
    if query.with.is_some() || query.order_by.is_some() || query.fetch.is_some() || !query.locks.is_empty() {
        return false;
    }
    let rows = match &query.limit_clause {
        Some(LimitClause::LimitOffset {
            limit: Some(Expr::Value(v)),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => match &v.value {
            Value::Number(n, _) => n.to_string().parse::<u64>().ok(),
            _ => None,
        },
        _ => None,
    };
    if rows.is_none_or(|n| n > PEEK_ROWS) {
        return false;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let column = |e: &Expr| matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
    select.distinct.is_none()
        && select.top.is_none()
        && select.into.is_none()
        && select.from.len() == 1
        && select.from[0].joins.is_empty()
        && matches!(&select.from[0].relation, TableFactor::Table { args: None, .. })
        && select.selection.is_none()
        && select.prewhere.is_none()
        && matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        && select.having.is_none()
        && select.qualify.is_none()
        && select.named_window.is_empty()
        && select.sort_by.is_empty()
        && select.cluster_by.is_empty()
        && select.distribute_by.is_empty()
        && select.lateral_views.is_empty()
        && select.connect_by.is_empty()
        && select.projection.iter().all(|item| match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => true,
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => column(e),
        })
}

/// Marks a statement heavy when it reads a relation outside the catalog, or a table function.
struct RelationVisitor<'a>(&'a mut bool);

impl datafusion::sql::sqlparser::ast::Visitor for RelationVisitor<'_> {
    type Break = ();

    fn pre_visit_table_factor(
        &mut self,
        factor: &datafusion::sql::sqlparser::ast::TableFactor,
    ) -> std::ops::ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::TableFactor;
        let light = match factor {
            TableFactor::Table { name, args, .. } => {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .map(|p| p.to_string().to_ascii_lowercase())
                    .collect();
                args.is_none()
                    && match parts.as_slice() {
                        [table] => table.starts_with("pg_") || table == workload::ACTIVITY_TABLE,
                        [.., schema, _] => {
                            matches!(schema.trim_matches('"'), "pg_catalog" | "information_schema")
                        }
                        [] => true,
                    }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => true,
            _ => false,
        };
        if light {
            std::ops::ControlFlow::Continue(())
        } else {
            *self.0 = true;
            std::ops::ControlFlow::Break(())
        }
    }
}

/// `fields` with PostgreSQL's names (see [`ResultNames`]); types and formats stay.
fn named_fields(fields: Vec<FieldInfo>, names: Option<&ResultNames>) -> Vec<FieldInfo> {
    let planned: Vec<&str> = fields.iter().map(FieldInfo::name).collect();
    let Some(names) = names.and_then(|n| n.apply(&planned)) else {
        return fields;
    };
    fields
        .into_iter()
        .zip(names)
        .map(|(f, name)| {
            FieldInfo::new(
                name,
                f.table_id(),
                f.column_id(),
                f.datatype().clone(),
                f.format(),
            )
            .with_format_options(f.format_options().clone())
            .with_type_size(f.type_size())
            .with_type_modifier(f.type_modifier())
        })
        .collect()
}

/// `response`'s row description with PostgreSQL's names.
fn with_names(response: Response, names: Option<&ResultNames>) -> Response {
    match response {
        Response::Query(mut query) if names.is_some() => {
            query.row_schema = Arc::new(named_fields(query.row_schema.as_ref().clone(), names));
            Response::Query(query)
        }
        other => other,
    }
}

/// A statement as `datafusion-postgres` parses and plans it for the extended protocol.
type PlannedStatement = <DfSessionService as ExtendedQueryHandler>::Statement;

/// The result names of a statement parsed for the extended protocol.
fn names_of(statement: &PlannedStatement) -> Option<ResultNames> {
    statement
        .1
        .as_ref()
        .and_then(|(statement, _)| ResultNames::of(statement))
}

/// The UUID and JSON columns of a statement parsed for the extended protocol.
fn marked_of(statement: &PlannedStatement) -> uuid_wire::Marked {
    match &statement.1 {
        Some((_, plan)) if !matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_)) => {
            uuid_wire::marked_columns(plan.schema().as_arrow())
        }
        _ => uuid_wire::Marked::default(),
    }
}

/// `datafusion-postgres`'s parser for the extended protocol, with PostgreSQL's names in the
/// row descriptions (repeated select items are planned by [`CatalogHook`]) and catalog queries
/// rewritten ([`CatalogQueries`]).
struct TarnParser {
    inner: Arc<datafusion_postgres::Parser>,
    catalog: Arc<CatalogQueries>,
    /// To qualify `tarn_stat_activity` ([`qualify_activity`]).
    compatibility: PostgresCompatibilityParser,
}

/// Catalog queries (`pg_catalog`, `information_schema`): the described relations refreshed
/// and the statement rewritten ([`pg_rewrite`]) before it is planned.
struct CatalogQueries {
    ctx: SessionContext,
    /// The schemas as clients see them, where `search_path` schemas are looked up.
    view: pg_namespaces::PgView,
    relations: Arc<pg_relations::Relations>,
    /// `datafusion-postgres`'s parser: the statements it replaces whole (its answers to some
    /// of psql's and pgcli's catalog queries) are left for it to recognize.
    compatibility: PostgresCompatibilityParser,
}

impl CatalogQueries {
    /// `sql` rewritten for planning when something changes: for the connection's
    /// `search_path` (in `metadata`), and when it reads the catalog (the relations are refreshed
    /// first, for the principal of the current task).
    async fn prepare(
        &self,
        sql: &str,
        metadata: &HashMap<String, String>,
    ) -> datafusion::error::Result<Option<String>> {
        let mut with_path = self.with_search_path(sql, metadata);
        if let Some(qualified) =
            pg_namespaces::qualify_foreign_names(with_path.as_deref().unwrap_or(sql), &self.view)
        {
            with_path = Some(qualified);
        }
        let sql = with_path.as_deref().unwrap_or(sql);
        if !pg_rewrite::reads_catalog(sql) {
            return Ok(with_path);
        }
        let token = self.relations.refresh(&self.ctx.state()).await?;
        if self.replaced_whole(sql) {
            return Ok(with_path);
        }
        Ok(pg_rewrite::rewrite(sql, &token).or(with_path))
    }

    /// `sql` with the connection's `search_path` applied ([`pg_rewrite::with_search_path`]);
    /// `None` when the path is unset or the default schema alone.
    fn with_search_path(&self, sql: &str, metadata: &HashMap<String, String>) -> Option<String> {
        let path = pg_rewrite::search_path(metadata);
        if path.is_empty() || path == [tarn_query::DEFAULT_SCHEMA] {
            return None;
        }
        let exists = |schema: &str, table: &str| self.view.table_exists(schema, table);
        pg_rewrite::with_search_path(sql, &path, &exists)
    }

    /// Whether `datafusion-postgres` replaces `sql` (or a part of it) by a statement of its own:
    /// its parse differs from the same rules applied to the statements as written.
    fn replaced_whole(&self, sql: &str) -> bool {
        use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
        let (Ok(replaced), Ok(written)) = (
            self.compatibility.parse(sql),
            datafusion::sql::sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, sql),
        ) else {
            return false;
        };
        let written: Vec<Statement> = written
            .into_iter()
            .map(|s| self.compatibility.rewrite(s))
            .collect();
        replaced != written
    }
}

#[async_trait]
impl QueryParser for TarnParser {
    type Statement = PlannedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Self::Statement>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        // `COPY` is run by tarn when the portal executes (module `copy`); DataFusion cannot
        // plan it.
        if copy::classify(sql).is_some() {
            return Ok((sql.to_string(), None));
        }
        // Nor `CREATE`/`DROP EXTERNAL CATALOG`: tarn runs it ([`TarnExtendedQuery`]).
        if tarn_query::federation::is_catalog_statement(sql) {
            return Ok((sql.to_string(), None));
        }
        if sql.to_ascii_lowercase().contains(workload::ACTIVITY_TABLE)
            && let Ok(mut statements) = self.compatibility.parse(sql)
            && let [statement] = statements.as_mut_slice()
            && qualify_activity(statement)
        {
            return self.inner.parse_sql(client, &statement.to_string(), types).await;
        }
        let rewritten = with_principal(principal_of(client), self.catalog.prepare(sql, client.metadata()))
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let (sql, planned) = self
            .inner
            .parse_sql(client, rewritten.as_deref().unwrap_or(sql), types)
            .await?;
        let planned = match planned {
            Some((statement, plan)) => Some((
                statement,
                numbered_in_order(plan).map_err(|e| PgWireError::ApiError(Box::new(e)))?,
            )),
            None => None,
        };
        Ok((sql, planned))
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let fields = self.inner.get_result_schema(statement, column_format)?;
        let fields = uuid_wire::marked_fields(fields, &marked_of(statement));
        Ok(named_fields(fields, names_of(statement).as_ref()))
    }
}

/// The extended protocol (psycopg, JDBC, tokio-postgres): `datafusion-postgres`'s, through
/// [`TarnParser`].
struct TarnExtendedQuery {
    inner: Arc<DfSessionService>,
    session: TarnSession,
    parser: Arc<TarnParser>,
    workload: Arc<Workload>,
    running: Arc<RunningQueries>,
    connections: Arc<idle::Connections>,
}

#[async_trait]
impl ExtendedQueryHandler for TarnExtendedQuery {
    type Statement = PlannedStatement;
    type QueryParser = TarnParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = portal.statement.statement.0.clone();
        let kind = observe::statement_kind(&self.parser.compatibility, &sql);
        let span = observe::statement_span(kind);
        let timer = observe::StatementTimer::start(kind, span.clone());
        let mode = read_mode::session_mode(client);
        let positions = tarn_query::bridge::ReadPositions::default();
        let out = tarn_query::bridge::with_read_positions(
            positions.clone(),
            tarn_query::bridge::with_read_mode(mode, self.run_portal(client, portal, max_rows, timer)),
        )
        .instrument(span)
        .await;
        read_mode::keep_position(client, &positions);
        out
    }
}

impl TarnExtendedQuery {
    async fn run_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<PlannedStatement>,
        max_rows: usize,
        timer: observe::StatementTimer,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PlannedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let principal = principal_of(client);
        let sql = portal.statement.statement.0.clone();
        let gate = Gate {
            workload: &self.workload,
            running: &self.running,
            connections: &self.connections,
            parser: &self.parser.compatibility,
        };
        let caller = gate.caller(client);
        let (key, token) = (caller.key.clone(), caller.token.clone());
        let (running, mut held) = gate.enter(client, &caller, &sql).await?;
        held._timer = Some(timer);
        let copy = portal
            .statement
            .statement
            .1
            .is_none()
            .then(|| copy::classify(&sql))
            .flatten();
        let unplanned = portal.statement.statement.1.is_none();
        let response = match copy {
            None if unplanned && tarn_query::federation::is_catalog_statement(&sql) => {
                until_stopped(
                    &running,
                    with_principal(principal, async {
                        let statement = TarnSession::prepare(&sql)
                            .map_err(|e| user_error(&e))?
                            .pop()
                            .ok_or_else(|| {
                                user_error(&Error::new(ErrorKind::InvalidInput, "empty statement"))
                            })?;
                        self.session
                            .run(&statement)
                            .await
                            .map(tag_of)
                            .map_err(|e| user_error(&e))
                    }),
                )
                .await
            }
            Some(copy) => {
                until_stopped(
                    &running,
                    with_principal(principal, copy::run(&self.session, &sql, copy)),
                )
                .await
            }
            None => {
                until_stopped(
                    &running,
                    with_principal(
                        principal,
                        CURRENT_STATEMENT.scope(
                            running.clone(),
                            RESULT_FORMAT.scope(
                                portal.result_column_format.clone(),
                                tarn_query::audit::with_statement(
                                    &sql,
                                    ExtendedQueryHandler::do_query(
                                        self.inner.as_ref(),
                                        client,
                                        portal,
                                        max_rows,
                                    ),
                                ),
                            ),
                        ),
                    ),
                )
                .await
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(PgWireError::FailedToParseParameter(why)) => {
                self.running.finish(&key);
                return Err(parameter_error(portal, &why.to_string()));
            }
            Err(e) => {
                self.running.finish(&key);
                return Err(e);
            }
        };
        let response = if matches!(response, Response::Query(_) | Response::CopyOut(_)) {
            cancellable(response, Some(held), &token, &self.running, &key)
        } else {
            self.running.finish(&key);
            response
        };
        let response = text_values::with_postgres_text(uuid_wire::with_marked_types(
            response,
            &marked_of(&portal.statement.statement),
        ));
        Ok(with_names(
            response,
            names_of(&portal.statement.statement).as_ref(),
        ))
    }
}

/// `plan` with its placeholders `$1` .. `$N` written `$01` .. `$N` (zero-padded to the width of
/// `N`) when `N` ≥ 10. datafusion-postgres orders the parameters' types by the placeholders'
/// text, `$10` before `$2`: from the tenth parameter on, `Describe` announced (and `Bind` read)
/// each value with another parameter's type — tokio-postgres and JDBC then encoded an integer
/// where a text was due, and psycopg's untyped values were coerced to the wrong type ("Cannot
/// coerce integer value to Utf8View"). Padded, the text order is the numeric one; `$07` still
/// takes the seventh value (DataFusion reads its number).
fn numbered_in_order(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Expr;
    let number = |id: &str| id.strip_prefix('$').and_then(|n| n.parse::<usize>().ok());
    let Some(last) = plan
        .get_parameter_types()?
        .keys()
        .filter_map(|id| number(id))
        .max()
    else {
        return Ok(plan);
    };
    if last < 10 {
        return Ok(plan);
    }
    let width = last.to_string().len();
    plan.transform_up_with_subqueries(|node| {
        node.map_expressions(|e| {
            e.transform_up(|e| match e {
                Expr::Placeholder(mut p) => match number(&p.id) {
                    Some(n) => {
                        p.id = format!("${n:0width$}");
                        Ok(Transformed::yes(Expr::Placeholder(p)))
                    }
                    None => Ok(Transformed::no(Expr::Placeholder(p))),
                },
                other => Ok(Transformed::no(other)),
            })
        })
    })
    .map(|t| t.data)
}

/// A bound parameter value that does not parse as its type, named as PostgreSQL names it —
/// `invalid input syntax for type bigint: "x" (parameter $2)`, SQLSTATE 22P02 — where pgwire
/// says neither which parameter nor what value ("Failed to parse parameter: invalid digit found
/// in string"). The type is the client's (Parse) or the one planning inferred; a value whose
/// type is not one of the checked ones keeps pgwire's reason.
fn parameter_error(portal: &Portal<PlannedStatement>, why: &str) -> PgWireError {
    use datafusion::arrow::datatypes::DataType;
    use pgwire::api::results::FieldFormat;
    // By number: the placeholders may be zero-padded ([`numbered_in_order`]).
    let inferred: HashMap<usize, Option<DataType>> = match &portal.statement.statement.1 {
        Some((_, plan)) => plan
            .get_parameter_types()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, t)| Some((id.strip_prefix('$')?.parse().ok()?, t)))
            .collect(),
        None => HashMap::new(),
    };
    let error = |message: String| {
        PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22P02".into(), message)))
    };
    for i in 0..portal.parameter_len() {
        let declared = portal.statement.parameter_types.get(i).cloned().flatten();
        let ty = declared.or_else(|| match inferred.get(&(i + 1)).cloned().flatten()? {
            DataType::Boolean => Some(Type::BOOL),
            DataType::Int8 | DataType::Int16 => Some(Type::INT2),
            DataType::Int32 => Some(Type::INT4),
            DataType::Int64 => Some(Type::INT8),
            DataType::Float32 => Some(Type::FLOAT4),
            DataType::Float64 => Some(Type::FLOAT8),
            _ => None,
        });
        let Some(ty) = ty else { continue };
        // Whether the value parses, and PostgreSQL's name of the type, as its message has it.
        let (failed, name) = match ty {
            Type::BOOL => (portal.parameter::<bool>(i, &ty).is_err(), "boolean"),
            Type::INT2 => (portal.parameter::<i16>(i, &ty).is_err(), "smallint"),
            Type::INT4 => (portal.parameter::<i32>(i, &ty).is_err(), "integer"),
            Type::INT8 => (portal.parameter::<i64>(i, &ty).is_err(), "bigint"),
            Type::FLOAT4 => (portal.parameter::<f32>(i, &ty).is_err(), "real"),
            Type::FLOAT8 => (portal.parameter::<f64>(i, &ty).is_err(), "double precision"),
            _ => continue,
        };
        if failed {
            let shown = match (portal.parameter_format.format_for(i), portal.parameters.get(i)) {
                (FieldFormat::Text, Some(Some(raw))) => format!("\"{}\"", String::from_utf8_lossy(raw)),
                _ => "a binary value of the wrong length".to_string(),
            };
            return error(format!(
                "invalid input syntax for type {name}: {shown} (parameter ${})",
                i + 1
            ));
        }
    }
    error(format!("a parameter value cannot be read: {why}"))
}

/// The plan of a statement a hook answers itself (a `SET` it keeps per session): no rows,
/// no columns.
pub(crate) fn no_rows_plan() -> LogicalPlan {
    LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(datafusion::common::DFSchema::empty()),
    })
}

/// A plan of no rows and no columns whose only content is the parameters `types` names, so the
/// extended protocol describes them ([`CatalogHook::handle_extended_parse_query`]).
fn parameters_plan(
    types: HashMap<String, Option<datafusion::arrow::datatypes::DataType>>,
) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::logical_expr::expr::Placeholder;
    use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
    let predicate = types
        .into_iter()
        .map(|(id, t)| {
            let field = t.map(|t| Arc::new(datafusion::arrow::datatypes::Field::new(&id, t, true)));
            Expr::Placeholder(Placeholder { id, field }).is_null()
        })
        .reduce(Expr::or);
    match predicate {
        Some(p) => LogicalPlanBuilder::from(no_rows_plan()).filter(p)?.build(),
        None => Ok(no_rows_plan()),
    }
}

/// Maps DataFusion errors to SQLSTATE-bearing error responses and logs them.
struct SqlStateErrors;

impl ErrorHandler for SqlStateErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        if let PgWireError::ApiError(inner) = error {
            let tarn = if let Some(df) = inner.downcast_ref::<datafusion::error::DataFusionError>() {
                from_df_error(df.clone_for_message())
            } else if let Some(parse) =
                inner.downcast_ref::<datafusion::sql::sqlparser::parser::ParserError>()
            {
                Error::new(ErrorKind::InvalidInput, format!("SQL syntax error: {parse}"))
            } else {
                Error::new(ErrorKind::Query, inner.to_string())
            };
            *error = user_error(&tarn);
        }
        tracing::info!(error = %error, "statement failed");
        metrics::counter!("tarn_pgwire_errors_total").increment(1);
        match error {
            PgWireError::UserError(info) => observe::count_error(&info.code),
            PgWireError::QueryCanceled => observe::count_error("57014"),
            _ => observe::count_error("XX000"),
        }
    }
}

/// Small helper: DataFusion errors are not `Clone`; we only need the message and kind.
trait CloneForMessage {
    fn clone_for_message(&self) -> datafusion::error::DataFusionError;
}

impl CloneForMessage for datafusion::error::DataFusionError {
    fn clone_for_message(&self) -> datafusion::error::DataFusionError {
        use datafusion::error::DataFusionError as E;
        let root = self.find_root();
        match root {
            E::SQL(e, _) => E::Plan(format!("SQL syntax error: {e}")),
            E::Plan(m) => E::Plan(m.clone()),
            E::SchemaError(..) => E::Plan(root.to_string()),
            E::NotImplemented(m) => E::NotImplemented(m.clone()),
            E::ResourcesExhausted(m) => E::ResourcesExhausted(m.clone()),
            E::ArrowError(..) => E::Plan(format!("type error: {root}")),
            E::External(inner) => match inner.downcast_ref::<Error>() {
                Some(t) => E::External(Box::new(Error::new(t.kind(), t.to_string()))),
                None => E::Execution(root.to_string()),
            },
            other => E::Execution(other.to_string()),
        }
    }
}

/// Users and their SCRAM-SHA-256 salted passwords.
#[derive(Debug)]
struct ConfigAuthSource {
    users: Vec<(String, Vec<u8>, Vec<u8>)>,
}

const SCRAM_ITERATIONS: usize = 4096;

impl ConfigAuthSource {
    fn new(auth: &AuthConfig) -> Self {
        let users = auth
            .users
            .iter()
            .map(|u| {
                let salt: Vec<u8> = uuid::Uuid::new_v4().as_bytes().to_vec();
                let salted = gen_salted_password(&u.password, &salt, SCRAM_ITERATIONS);
                (u.name.clone(), salt, salted)
            })
            .collect();
        Self { users }
    }
}

#[async_trait]
impl AuthSource for ConfigAuthSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.users.iter().find(|(name, _, _)| name == user) {
            Some((_, salt, salted)) => Ok(Password::new(Some(salt.clone()), salted.clone())),
            None => {
                metrics::counter!("tarn_pgwire_auth_failures_total").increment(1);
                Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "28P01".into(),
                    format!("password authentication failed for user \"{user}\""),
                ))))
            }
        }
    }
}

/// The principal a connection logged in as ([`login`] for tokens, [`TarnStartup`] for SCRAM
/// and trusted logins).
fn principal_of<C: ClientInfo + ?Sized>(client: &C) -> Option<Arc<Principal>> {
    client
        .session_extensions()
        .get::<Arc<Principal>>()
        .map(|p| p.as_ref().clone())
}

/// Accepts a connection without a password (loopback clients, when configured), with the
/// server parameters every other login sends (`server_version` 15.0).
struct TrustStartup {
    connections: Arc<ConnectionManager>,
    params: Arc<DefaultServerParameterProvider>,
    pids: Arc<pgwire::api::RandomPidSecretKeyGenerator>,
}

#[async_trait]
impl StartupHandler for TrustStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let PgWireFrontendMessage::Startup(ref startup) = message else {
            return Ok(());
        };
        pgwire::api::auth::protocol_negotiation(client, startup).await?;
        pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
        let (pid, secret) = pgwire::api::PidSecretKeyGenerator::generate(self.pids.as_ref(), client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.connections.register(pid, secret);
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        pgwire::api::auth::finish_authentication(client, self.params.as_ref()).await
    }
}

/// How a connection logs in, decided at its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginKind {
    /// A client certificate verified against `server.tls.client_ca` ([`login`]).
    Certificate,
    /// A trusted loopback client: no credentials.
    Trusted,
    /// A configured user: SCRAM.
    Scram,
    /// Anyone else while OIDC is on: a token in the password field ([`login`]).
    Token,
}

/// Refuses plain connections when TLS is required; logs in a verified client certificate's
/// user; trusts loopback clients when configured; asks configured users for a SCRAM password
/// and, with OIDC on, everyone else for a token ([`login`]) — a password or token only where
/// it may cross the connection ([`tarn_auth::secret_may_cross`]).
struct TarnStartup {
    /// The clients behind load balancers' connections (PROXY protocol).
    clients: Arc<proxy_protocol::Clients>,
    trust_loopback: bool,
    require_tls: bool,
    allow_plaintext: bool,
    kind: std::sync::Mutex<Option<LoginKind>>,
    trust: TrustStartup,
    scram: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    token: login::TokenLogin,
    certificate: login::CertificateLogin,
}

impl TarnStartup {
    /// Refuses a connection at its startup message when it may not log in over this transport:
    /// without TLS where TLS is required, or (for a password or token) without TLS from a
    /// non-loopback address; `peer` is the client's address (behind a load balancer, the one
    /// its PROXY header named).
    fn check_transport<C: ClientInfo>(
        &self,
        client: &C,
        peer: std::net::SocketAddr,
        kind: LoginKind,
    ) -> PgWireResult<()> {
        let refused = |message: String| {
            metrics::counter!("tarn_pgwire_auth_failures_total").increment(1);
            tracing::info!(%peer, reason = %message, "connection refused");
            Err(login::fatal("28000", message))
        };
        if self.require_tls && !client.is_secure() {
            return refused(
                "this server accepts only TLS connections (server.tls.require): connect with \
                 sslmode=verify-full (or require, verify-ca)"
                    .into(),
            );
        }
        if matches!(kind, LoginKind::Scram | LoginKind::Token)
            && let Err(e) = tarn_auth::secret_may_cross(peer.ip(), client.is_secure(), self.allow_plaintext)
        {
            return refused(e.to_string());
        }
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for TarnStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let peer = self.clients.client_of(client.socket_addr());
        let kind = {
            let mut decided = self.kind.lock().expect("startup state poisoned");
            *decided.get_or_insert_with(|| {
                let user = match &message {
                    PgWireFrontendMessage::Startup(s) => {
                        s.parameters.get("user").cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                };
                let certified = client.is_secure()
                    && client
                        .client_certificates()
                        .is_some_and(|chain| !chain.is_empty());
                if certified {
                    LoginKind::Certificate
                } else if self.trust_loopback && tarn_auth::is_loopback_peer(peer.ip()) {
                    LoginKind::Trusted
                } else if self.token.auth.accepts_tokens() && !self.token.auth.is_user(&user) {
                    LoginKind::Token
                } else {
                    LoginKind::Scram
                }
            })
        };
        if matches!(message, PgWireFrontendMessage::Startup(_)) {
            self.check_transport(client, peer, kind)?;
        }
        match kind {
            LoginKind::Certificate => self.certificate.on_startup(client, message).await?,
            LoginKind::Trusted => self.trust.on_startup(client, message).await?,
            LoginKind::Scram => self.scram.on_startup(client, message).await?,
            LoginKind::Token => self.token.on_startup(client, message).await?,
        }
        // A token login has put its principal (user and groups) in the session; a SCRAM or
        // trusted login is the user the connection named, without groups.
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery) && principal_of(client).is_none() {
            let user = LoginInfo::from_client_info(client)
                .user()
                .unwrap_or_default()
                .to_string();
            let method = match kind {
                LoginKind::Trusted => tarn_auth::Method::Trusted,
                LoginKind::Certificate => tarn_auth::Method::Certificate,
                LoginKind::Scram | LoginKind::Token => tarn_auth::Method::Password,
            };
            client.session_extensions().insert(Arc::new(Principal {
                user,
                groups: Vec::new(),
                method,
            }));
        }
        Ok(())
    }
}

struct TarnHandlers {
    simple: Arc<TarnSimpleQuery>,
    extended: Arc<TarnExtendedQuery>,
    auth_source: Arc<ConfigAuthSource>,
    authenticator: Arc<tarn_auth::Authenticator>,
    allow_plaintext: bool,
    trust_loopback: bool,
    require_tls: bool,
    connections: Arc<ConnectionManager>,
    cancel: Arc<TarnCancel>,
    /// One sequence of process ids for every login kind, so each connection's pid is its own
    /// (`tarn_stat_activity`, `pg_cancel_backend`).
    pids: Arc<pgwire::api::RandomPidSecretKeyGenerator>,
    /// The clients behind load balancers' connections (PROXY protocol).
    clients: Arc<proxy_protocol::Clients>,
}

impl PgWireServerHandlers for TarnHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.simple.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // The PostgreSQL version `version()` names and the catalog emulates.
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = pg_functions::POSTGRES_VERSION.to_string();
        let params = Arc::new(params);
        Arc::new(TarnStartup {
            clients: self.clients.clone(),
            trust_loopback: self.trust_loopback,
            require_tls: self.require_tls,
            allow_plaintext: self.allow_plaintext,
            kind: std::sync::Mutex::new(None),
            token: login::TokenLogin {
                auth: self.authenticator.clone(),
                params: params.clone(),
                connections: self.connections.clone(),
                pids: self.pids.clone(),
            },
            certificate: login::CertificateLogin {
                auth: self.authenticator.clone(),
                params: params.clone(),
                connections: self.connections.clone(),
                pids: self.pids.clone(),
            },
            trust: TrustStartup {
                connections: self.connections.clone(),
                params: params.clone(),
                pids: self.pids.clone(),
            },
            scram: SASLAuthStartupHandler::new(params)
                .with_scram(ScramAuth::new(self.auth_source.clone()))
                .with_pid_secret_key_generator(self.pids.clone())
                .with_connection_manager(self.connections.clone()),
        })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStateErrors)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves the Postgres wire protocol on `listener` over plain TCP until `shutdown` is
/// cancelled ([`serve`] without TLS). Open connections are dropped at shutdown.
pub async fn run(
    listener: TcpListener,
    session: TarnSession,
    auth: AuthConfig,
    max_connections: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let options = ServeOptions {
        auth,
        authenticator: None,
        max_connections,
        tls: None,
        require_tls: false,
        workload: Workload::unlimited(),
        proxy_protocol_from: Vec::new(),
    };
    serve(listener, session, options, shutdown).await
}

/// How [`serve`] serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Who may log in (`[auth]`).
    pub auth: AuthConfig,
    /// Checks `auth`'s passwords and tokens: the one the process's other endpoints share (one
    /// key set per issuer, so a rotated key is accepted everywhere at once); made from `auth`
    /// when `None`.
    pub authenticator: Option<Arc<tarn_auth::Authenticator>>,
    /// Most concurrent connections; 0 for no limit (`server.max_connections`).
    pub max_connections: usize,
    /// TLS (`server.tls`): clients that send an SSLRequest negotiate it with the certificate
    /// current at that moment; client certificates when it verifies them.
    pub tls: Option<Arc<tarn_tls::ServerTls>>,
    /// Refuse connections that do not negotiate TLS (`server.tls.require`).
    pub require_tls: bool,
    /// Memory budget, admission, timeouts and `tarn_stat_activity` (`[query]`); the session
    /// should execute with its pool ([`TarnSession::with_workload`]).
    pub workload: Arc<Workload>,
    /// Load balancers whose connections begin with a PROXY protocol header naming the client
    /// (`server.proxy_protocol_from`; see the `proxy_protocol` module).
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// `socket`, and a second handle of it that can shut it down.
fn split_for_watchdog(
    socket: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let socket = socket.into_std()?;
    let second = socket.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(socket)?, second))
}

/// Serves the Postgres wire protocol on `listener` until `shutdown` is cancelled. Open
/// connections are dropped at shutdown.
pub async fn serve(
    listener: TcpListener,
    session: TarnSession,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let ServeOptions {
        auth,
        authenticator,
        max_connections,
        tls,
        require_tls,
        workload,
        proxy_protocol_from,
    } = options;
    let clients = Arc::new(proxy_protocol::Clients::default());
    let ctx = session.context().clone();
    setup_pg_catalog(&ctx, session.lake().name(), EmptyContextProvider)
        .map_err(|e| std::io::Error::other(format!("cannot set up pg_catalog: {e}")))?;
    // The emulated relations list the catalogs as clients see them (crate::pg_namespaces).
    let view = pg_namespaces::PgView::new(ctx.state().catalog_list().clone(), session.lake().name());
    let emulated = PgCatalogSchemaProvider::try_new(
        view.clone(),
        Arc::new(
            PgCatalogStaticTables::try_new()
                .map_err(|e| std::io::Error::other(format!("cannot set up pg_catalog: {e}")))?,
        ),
        EmptyContextProvider,
    )
    .map_err(|e| std::io::Error::other(format!("cannot set up pg_catalog: {e}")))?;
    ctx.catalog(session.lake().name())
        .ok_or_else(|| std::io::Error::other("the lake's catalog is not registered"))?
        .register_schema("pg_catalog", Arc::new(emulated))
        .map_err(|e| std::io::Error::other(format!("cannot set up pg_catalog: {e}")))?;
    let relations = pg_catalog::install(
        &ctx,
        session.lake().name(),
        session.governance().cloned(),
        workload.activity_table(),
    )
    .map_err(|e| std::io::Error::other(format!("cannot correct pg_catalog: {e}")))?;
    let catalog = Arc::new(CatalogQueries {
        ctx: ctx.clone(),
        view,
        relations,
        compatibility: PostgresCompatibilityParser::new(),
    });
    // With a policy, users may cancel only their own statements.
    ctx.register_udf(workload.cancel_backend_udf(session.governance().is_some()));
    let idle_connections = Arc::new(idle::Connections::new(
        workload.settings().idle_in_transaction_timeout,
    ));
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(idle::IdleTimeoutHook {
            connections: idle_connections.clone(),
        }),
        Arc::new(CatalogHook {
            session: session.clone(),
        }),
        Arc::new(ShowSettingsHook {
            workload: workload.clone(),
            bridge: session.bridge().clone(),
        }),
        Arc::new(SearchPathHook),
        // Before `statement_timeout`'s, which answers `RESET ALL` itself.
        Arc::new(read_mode::ReadModeHook),
        Arc::new(statement_timeout::StatementTimeoutHook),
        Arc::new(datafusion_postgres::hooks::set_show::SetShowHook),
        Arc::new(datafusion_postgres::hooks::transactions::TransactionStatementHook),
        Arc::new(datafusion_postgres::hooks::cursor::CursorStatementHook),
        Arc::new(QueryResultHook),
    ];
    let service = Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks));
    let connections = Arc::new(ConnectionManager::new());
    let running = Arc::new(RunningQueries::default());
    let handlers = Arc::new(TarnHandlers {
        simple: Arc::new(TarnSimpleQuery {
            session: session.clone(),
            workload: workload.clone(),
            connections: idle_connections.clone(),
            inner: service.clone(),
            catalog: catalog.clone(),
            running: running.clone(),
            compatibility: PostgresCompatibilityParser::new(),
        }),
        extended: Arc::new(TarnExtendedQuery {
            parser: Arc::new(TarnParser {
                inner: ExtendedQueryHandler::query_parser(service.as_ref()),
                catalog,
                compatibility: PostgresCompatibilityParser::new(),
            }),
            inner: service,
            session,
            workload,
            running: running.clone(),
            connections: idle_connections.clone(),
        }),
        auth_source: Arc::new(ConfigAuthSource::new(&auth)),
        authenticator: match authenticator {
            Some(shared) => shared,
            None => Arc::new(
                tarn_auth::Authenticator::new(&auth).map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
        },
        allow_plaintext: auth.allow_plaintext_passwords,
        trust_loopback: auth.trust_loopback,
        require_tls,
        connections: connections.clone(),
        cancel: Arc::new(TarnCancel {
            inner: DefaultCancelHandler::new(connections),
            running,
        }),
        pids: Arc::new(pgwire::api::RandomPidSecretKeyGenerator::default()),
        clients: clients.clone(),
    });
    let limiter = (max_connections > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max_connections)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let permit = match &limiter {
            Some(l) => match l.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracing::warn!(%addr, max_connections, "connection refused: too many connections");
                    metrics::counter!("tarn_pgwire_connections_refused_total").increment(1);
                    continue;
                }
            },
            None => None,
        };
        let handlers = handlers.clone();
        // Taken per connection: a reload serves the next connection with the new certificate.
        let acceptor = tls.as_ref().map(|t| t.pgwire_acceptor());
        metrics::counter!("tarn_pgwire_connections_total").increment(1);
        // Exported at 0 from the first connection on, so that a rate of errors has a series.
        metrics::counter!("tarn_pgwire_errors_total").increment(0);
        // A second handle of the socket, for `idle_in_transaction_session_timeout`'s watchdog.
        let (socket, watchdog) = match split_for_watchdog(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot set up the connection");
                continue;
            }
        };
        let done = CancellationToken::new();
        idle_connections.open(addr, watchdog, done.clone());
        let proxied = proxy_protocol_from.iter().any(|n| n.contains(&addr.ip()));
        let clients = clients.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _done = done.drop_guard();
            let mut socket = socket;
            if proxied {
                match proxy_protocol::read_header(&mut socket, addr).await {
                    Ok(client) => clients.opened(addr, client),
                    Err(e) => {
                        metrics::counter!("tarn_pgwire_connections_refused_total").increment(1);
                        tracing::warn!(%addr, error = %e, "connection refused: bad PROXY protocol header");
                        return;
                    }
                }
            }
            metrics::gauge!("tarn_pgwire_connections_open").increment(1.0);
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
            metrics::gauge!("tarn_pgwire_connections_open").decrement(1.0);
            clients.closed(addr);
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_of_a_table_do_not_queue_and_other_reads_do() {
        let parser = PostgresCompatibilityParser::new();
        let light = |sql: &str| matches!(classify(&parser, sql), StatementClass::Light);
        for sql in [
            "SELECT * FROM sales.orders LIMIT 100",
            "select id, o.region AS r FROM tarn.sales.orders o limit 10000",
            "SELECT count(*) FROM information_schema.tables",
            "SELECT 1",
            "SET statement_timeout = '1s'",
        ] {
            assert!(light(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM sales.orders",
            "SELECT * FROM sales.orders LIMIT 10001",
            "SELECT * FROM sales.orders WHERE amount > 5 LIMIT 10",
            "SELECT * FROM sales.orders ORDER BY id LIMIT 10",
            "SELECT DISTINCT region FROM sales.orders LIMIT 10",
            "SELECT count(*) FROM sales.orders LIMIT 10",
            "SELECT upper(region) FROM sales.orders LIMIT 10",
            "SELECT * FROM sales.orders LIMIT 10 OFFSET 1000000",
            "SELECT * FROM sales.orders o JOIN sales.customers c ON o.id = c.id LIMIT 10",
            "SELECT region FROM sales.orders GROUP BY region LIMIT 10",
            "WITH t AS (SELECT * FROM sales.orders) SELECT * FROM t LIMIT 10",
            "SELECT * FROM (SELECT * FROM sales.orders ORDER BY amount) s LIMIT 10",
            "SELECT * FROM generate_series(1, 100000000) LIMIT 10",
        ] {
            assert!(!light(sql), "{sql}");
        }
    }
}
