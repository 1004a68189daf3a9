//! A SQL session over the lake: DataFusion with the Iceberg catalog registered, and tarn's
//! handling of the statements that change the catalog.
//!
//! Queries, `EXPLAIN`, `DESCRIBE`, `SHOW TABLES` and `information_schema` are DataFusion's.
//! `INSERT` goes through DataFusion's planner (type coercion, column mapping) into
//! [`crate::provider::LakeTable::insert_into`]. `CREATE SCHEMA`, `CREATE TABLE` (with tarn's
//! `PARTITIONED BY` / `SORTED BY`), `CREATE TABLE AS SELECT`, `DROP TABLE` and `DROP SCHEMA`
//! are handled here as catalog operations; `CREATE OR REPLACE TABLE` of an existing table
//! replaces its rows in one overwrite commit. `DELETE`, `UPDATE` and `MERGE` are planned and
//! committed by [`crate::row_level`]. Every statement that writes is one Iceberg commit;
//! a failing `CREATE TABLE AS SELECT` drops the table it created.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit, UInt64Type};
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{ObjectName, ObjectType, SchemaName, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::StreamExt;
use iceberg::{NamespaceIdent, TableIdent};
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::{Lake, TableLayout};

use crate::audit::{AuditLog, AuditSettings};
use crate::governance::{Governance, PolicyRule};
use crate::provider::LakeCatalogProvider;
use crate::result_names::{ResultNames, alias_repeats};
use crate::sql_ext::{self, RewrittenStatement};
use crate::write::{WriteProgress, write_and_commit};
use tarn_auth::Principal;
use tarn_policy::{Policy, TableName};

/// The schema unqualified table names resolve to.
pub const DEFAULT_SCHEMA: &str = "public";

/// What a statement produced.
pub enum Output {
    /// Rows, streamed.
    Rows(SendableRecordBatchStream),
    /// A command's completion: a Postgres-style tag (`CREATE TABLE`, `INSERT 0 5`) and the
    /// number of rows it affected, where that applies.
    Command {
        /// The command tag.
        tag: String,
        /// Rows affected.
        rows: Option<u64>,
    },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(s) => write!(f, "Rows({:?})", s.schema()),
            Output::Command { tag, .. } => write!(f, "Command({tag})"),
        }
    }
}

/// A SQL session over one lake.
#[derive(Clone)]
pub struct TarnSession {
    pub(crate) ctx: SessionContext,
    pub(crate) lake: Lake,
    pub(crate) catalog: Arc<LakeCatalogProvider>,
    /// The policy every plan passes ([`crate::governance`]); none: everything is allowed.
    pub(crate) governance: Option<Arc<Governance>>,
    /// Who statements run for, when this session says (`tarn sql --as`); otherwise whoever
    /// the calling task runs for ([`crate::governance::with_principal`]).
    principal: Option<Arc<Principal>>,
    /// The external catalogs attached ([`crate::federation`]).
    pub(crate) federation: Arc<crate::federation::Federation>,
    /// Runs between a row-level statement's read and its commit ([`Self::pause_row_level_commits`]).
    pub(crate) before_row_level_commit: Option<Arc<crate::row_level::BeforeCommit>>,
}

/// Maps a DataFusion error to tarn's, unwrapping tarn errors DataFusion carried.
pub fn from_df_error(e: DataFusionError) -> Error {
    let root = e.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(tarn) = inner.downcast_ref::<Error>()
    {
        return Error::new(tarn.kind(), tarn.to_string());
    }
    if let DataFusionError::ResourcesExhausted(message) = root {
        return crate::workload::out_of_memory(message);
    }
    let kind = match root {
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            ErrorKind::InvalidInput
        }
        DataFusionError::NotImplemented(_) => ErrorKind::InvalidInput,
        DataFusionError::ArrowError(..) => ErrorKind::InvalidInput,
        _ => ErrorKind::Query,
    };
    Error::new(kind, strip_df_prefixes(&root.to_string()))
}

fn strip_df_prefixes(message: &str) -> String {
    let mut m = message;
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Schema error: ",
        "Execution error: ",
        "External error: ",
        "Arrow error: ",
    ] {
        if let Some(rest) = m.strip_prefix(prefix) {
            m = rest;
        }
    }
    m.to_string()
}

impl TarnSession {
    /// A session over `lake`; creates the `public` namespace on first use.
    pub async fn new(lake: Lake) -> Result<Self> {
        Self::with_policy(lake, None).await
    }

    /// A session over `lake` whose statements `policy` authorizes (module
    /// [`crate::governance`]); with `None`, everything is allowed.
    pub async fn with_policy(lake: Lake, policy: Option<Policy>) -> Result<Self> {
        Self::with_governance(lake, policy, None).await
    }

    /// A session over `lake` whose statements `policy` authorizes, with every decision and
    /// write recorded in the audit trail ([`crate::audit`]) when `audit` is given and a policy
    /// is. Call [`Self::close`] at the end, so the last records are appended.
    pub async fn with_governance(
        lake: Lake,
        policy: Option<Policy>,
        audit: Option<AuditSettings>,
    ) -> Result<Self> {
        // DataFusion's own settings may be tuned with `DATAFUSION_*` environment variables
        // (e.g. `DATAFUSION_EXECUTION_TARGET_PARTITIONS=4`); see docs/serving.md.
        let mut config = SessionConfig::from_env()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("a DATAFUSION_* environment variable: {e}"),
                )
            })?
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(lake.name(), DEFAULT_SCHEMA);
        // `1.5` is an exact numeric as in PostgreSQL, so DECIMAL columns get exact values.
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        // Times with a zone are in UTC, as in PostgreSQL with `TimeZone = UTC`: `now()` and
        // `current_timestamp` are `timestamptz`, `TIMESTAMPTZ` columns keep the zone.
        config.options_mut().execution.time_zone = Some("+00:00".into());
        let catalog = Arc::new(LakeCatalogProvider::new(lake.clone()));
        let governance = policy.map(|policy| {
            let auditor_role = audit.as_ref().map_or_else(
                || AuditSettings::default().auditor_role,
                |a| a.auditor_role.clone(),
            );
            let log = audit
                .clone()
                .map(|settings| AuditLog::start(lake.clone(), settings));
            Arc::new(
                Governance::new(
                    policy,
                    lake.name(),
                    DEFAULT_SCHEMA,
                    catalog.clone() as Arc<dyn datafusion::catalog::CatalogProvider>,
                )
                .with_audit(log, &auditor_role),
            )
        });
        if let Some(g) = &governance {
            // Writes executed by DataFusion (`INSERT`) record their rows through it.
            config = config.with_extension(g.clone());
        }
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            // Federation: the parts of a plan that read one external database only are sent
            // there as one query (crate::federation).
            .with_optimizer_rules(crate::federation::optimizer_rules())
            .with_query_planner(Arc::new(datafusion_federation::FederatedQueryPlanner::new()))
            .with_physical_optimizer_rules(crate::federation::physical_optimizer_rules())
            .with_physical_optimizer_rule(Arc::new(crate::filter_order::OrderFilterConjuncts))
            .with_physical_optimizer_rule(Arc::new(crate::runtime_filter::ApplyDynamicFilters))
            .with_analyzer_rule(crate::decimal_literals::ExactDecimalLiterals::rule());
        if let Some(g) = &governance {
            // Last, so it sees the plan as the other analyzer rules leave it (views inlined,
            // types coerced).
            state = state.with_analyzer_rule(Arc::new(PolicyRule::new(g.clone())));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_catalog(lake.name(), catalog.clone());
        if let Some(g) = &governance {
            // Listings filter the external catalogs attached later too.
            g.attach_catalogs(ctx.state().catalog_list().clone());
        }
        let public = NamespaceIdent::new(DEFAULT_SCHEMA.to_string());
        lake.create_namespace(&public, true).await?;
        catalog.refresh().await?;
        let session = Self {
            ctx,
            lake,
            catalog,
            governance,
            principal: None,
            federation: Arc::new(crate::federation::Federation::default()),
            before_row_level_commit: None,
        };
        session.sync_external_catalogs().await?;
        Ok(session)
    }

    /// This session executing with `workload`'s memory pool and spill directory (every
    /// statement of every connection draws from it; see [`crate::workload`]).
    pub fn with_workload(mut self, workload: &crate::workload::Workload) -> Self {
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_runtime_env(workload.runtime().clone())
            .build();
        self.ctx = SessionContext::new_with_state(state);
        self
    }

    /// This session running its statements for `principal` (`tarn sql --as USER`).
    pub fn for_principal(&self, principal: Principal) -> Self {
        Self {
            principal: Some(Arc::new(principal)),
            ..self.clone()
        }
    }

    /// This session running `hook` in each attempt of a row-level statement (`DELETE`, `UPDATE`,
    /// `MERGE`) after it read the table and wrote its files, before it commits; the hook gets
    /// the attempt's number (0 first). For tests that make another writer commit in between,
    /// deterministically.
    #[doc(hidden)]
    pub fn pause_row_level_commits(
        &self,
        hook: impl Fn(u32) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        Self {
            before_row_level_commit: Some(Arc::new(hook)),
            ..self.clone()
        }
    }

    /// The policy's decisions, when a policy is configured.
    pub fn governance(&self) -> Option<&Arc<Governance>> {
        self.governance.as_ref()
    }

    /// The principal this session runs its statements for, when it says (`tarn sql --as`).
    pub fn principal(&self) -> Option<Arc<Principal>> {
        self.principal.clone()
    }

    /// Appends the audit records still buffered and stops the audit trail's task: call once,
    /// when the session's process shuts down.
    pub async fn close(&self) -> Result<()> {
        match self.governance.as_ref().and_then(|g| g.audit()) {
            Some(audit) => audit.close().await,
            None => Ok(()),
        }
    }

    /// Refuses, when a policy is configured, statements that neither the policy rule nor
    /// tarn's catalog statements cover (endpoints that hand statements to DataFusion
    /// themselves call this first): views, functions, `ALTER`, ... which DataFusion would run
    /// on its own.
    pub fn authorize_statement(&self, statement: &Statement) -> Result<()> {
        if self.governance.is_none() {
            return Ok(());
        }
        let covered = matches!(
            statement,
            Statement::Query(_)
                | Statement::Insert(_)
                | Statement::Delete(_)
                | Statement::Update { .. }
                | Statement::Merge(_)
                | Statement::Explain { .. }
                | Statement::ExplainTable { .. }
                | Statement::Set(_)
                | Statement::ShowVariable { .. }
                | Statement::ShowVariables { .. }
                | Statement::ShowTables { .. }
                | Statement::ShowColumns { .. }
                | Statement::StartTransaction { .. }
                | Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Declare { .. }
                | Statement::Fetch { .. }
                | Statement::Close { .. }
                | Statement::Deallocate { .. }
                | Statement::Discard { .. }
                | Statement::CreateTable(_)
                | Statement::CreateSchema { .. }
        ) || matches!(statement, Statement::Drop { object_type, .. } if matches!(object_type, ObjectType::Table | ObjectType::Schema));
        if covered {
            return Ok(());
        }
        let text = statement.to_string();
        let words: Vec<&str> = text.split_whitespace().take(2).collect();
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "access denied: {} statements are not allowed while a policy is configured",
                words.join(" ").to_ascii_uppercase()
            ),
        ))
    }

    /// With a policy configured, refuses `EXPLAIN` of a statement the policy would refuse:
    /// DataFusion's verbose `EXPLAIN` shows an analyzer rule's error as a line of the plan
    /// rather than failing, so the explained statement is authorized first.
    pub async fn authorize_explain(&self, statement: &Statement) -> Result<()> {
        let (Some(_), Statement::Explain { statement, .. }) = (&self.governance, statement) else {
            return Ok(());
        };
        self.authorize_plan(DFStatement::Statement(statement.clone()))
            .await
    }

    async fn authorize_plan(&self, statement: DFStatement) -> Result<()> {
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await.map_err(from_df_error)?;
        state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map(|_| ())
            .map_err(from_df_error)
    }

    fn check(&self, operation: &str, resource: serde_json::Value, what: &str) -> Result<()> {
        match &self.governance {
            Some(g) => g.check(operation, Some(resource), what),
            None => Ok(()),
        }
    }

    fn table_resource(&self, ident: &TableIdent) -> (serde_json::Value, String) {
        let name = TableName {
            catalog: self.lake.name().to_string(),
            schema: ident.namespace().join("."),
            table: ident.name().to_string(),
        };
        (name.resource(None), name.to_string())
    }

    fn schema_resource(&self, ns: &NamespaceIdent) -> (serde_json::Value, String) {
        let schema = ns.join(".");
        (
            tarn_policy::schema_resource(self.lake.name(), &schema),
            format!("{}.{schema}", self.lake.name()),
        )
    }

    /// The DataFusion context, for endpoints that plan statements themselves.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The pipelines of this process whose pending changes reads may include, and the default
    /// read mode ([`crate::bridge`]).
    pub fn bridge(&self) -> &Arc<crate::bridge::Bridge> {
        self.catalog.bridge()
    }

    /// Reloads namespace and table names for listings (`SHOW TABLES`, `information_schema`,
    /// `pg_catalog`): the lake's, and the external catalogs' (attached or detached as the
    /// catalog database says, their listings read again when stale).
    pub async fn refresh(&self) -> Result<()> {
        self.catalog.refresh().await?;
        self.sync_external_catalogs().await
    }

    /// Splits `sql` into statements with tarn's extensions applied; run each with [`Self::run`].
    pub fn prepare(sql: &str) -> Result<Vec<RewrittenStatement>> {
        sql_ext::rewrite(sql)
    }

    /// Runs every statement of `sql` and collects the results: for tests and small scripts.
    pub async fn sql_collect(
        &self,
        sql: &str,
    ) -> Result<Vec<(Option<SchemaRef>, Vec<RecordBatch>, Option<String>)>> {
        let mut out = Vec::new();
        for statement in Self::prepare(sql)? {
            match self.run(&statement).await? {
                Output::Rows(stream) => {
                    let schema = stream.schema();
                    let batches = datafusion::physical_plan::common::collect(stream)
                        .await
                        .map_err(from_df_error)?;
                    out.push((Some(schema), batches, None));
                }
                Output::Command { tag, .. } => out.push((None, Vec::new(), Some(tag))),
            }
        }
        Ok(out)
    }

    /// Runs one prepared statement (for this session's principal, when it has one).
    pub async fn run(&self, statement: &RewrittenStatement) -> Result<Output> {
        crate::governance::with_principal(
            self.principal.clone(),
            // Boxed: the statement's future is large, and a caller's stack holds only a pointer.
            crate::audit::with_statement(&statement.sql, Box::pin(self.run_statement(statement))),
        )
        .await
    }

    async fn run_statement(&self, statement: &RewrittenStatement) -> Result<Output> {
        let started = std::time::Instant::now();
        self.refresh().await?;
        if let Some(output) = self.run_external_catalog_statement(&statement.sql).await? {
            return Ok(output);
        }
        let refreshed = started.elapsed();
        let mut parsed = DFParser::parse_sql_with_dialect(&statement.sql, &PostgreSqlDialect {})
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("SQL syntax error: {e}")))?;
        if parsed.len() != 1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("expected one statement, got {}", parsed.len()),
            ));
        }
        let mut parsed = parsed.pop_front().expect("one statement");
        // PostgreSQL's names for the result's columns, worked out before repeated select items
        // get the internal aliases DataFusion needs to plan them.
        let names = match &mut parsed {
            DFStatement::Statement(s) => {
                let names = match s.as_ref() {
                    Statement::CreateTable(create) => create.query.as_deref().and_then(ResultNames::of_query),
                    other => ResultNames::of(other),
                };
                alias_repeats(s);
                names
            }
            DFStatement::Explain(explain) => {
                if let DFStatement::Statement(s) = explain.statement.as_mut() {
                    alias_repeats(s);
                }
                None
            }
            _ => None,
        };
        if let DFStatement::Statement(s) = &parsed {
            self.authorize_statement(s)?;
        }
        if let (Some(_), DFStatement::Explain(explain)) = (&self.governance, &parsed) {
            self.authorize_plan(explain.statement.as_ref().clone()).await?;
        }
        if let DFStatement::Statement(s) = &parsed
            && let Some(output) = self.run_row_level(s).await?
        {
            return Ok(output);
        }
        if let DFStatement::Statement(s) = &parsed
            && let Some(output) = self.run_catalog_statement(s).await?
        {
            self.catalog.refresh().await?;
            return Ok(output);
        }
        let state = self.ctx.state();
        let plan = state.statement_to_plan(parsed).await.map_err(from_df_error)?;
        let planned = started.elapsed();
        let output = self.run_plan(plan, statement, names.as_ref()).await;
        tracing::debug!(
            catalog_ms = refreshed.as_secs_f64() * 1e3,
            logical_ms = (planned - refreshed).as_secs_f64() * 1e3,
            physical_ms = (started.elapsed() - planned).as_secs_f64() * 1e3,
            "statement planned"
        );
        output
    }

    /// Runs `sql` as one statement through [`Self::run`] (for endpoints that already split).
    pub async fn run_sql(&self, sql: &str) -> Result<Output> {
        let mut statements = Self::prepare(sql)?;
        if statements.len() != 1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("expected one statement, got {}", statements.len()),
            ));
        }
        self.run(&statements.remove(0)).await
    }

    async fn run_catalog_statement(&self, statement: &Statement) -> Result<Option<Output>> {
        match statement {
            Statement::CreateSchema {
                schema_name,
                if_not_exists,
                ..
            } => {
                let name = match schema_name {
                    SchemaName::Simple(name) => name,
                    _ => {
                        return Err(Error::new(
                            ErrorKind::InvalidInput,
                            "CREATE SCHEMA ... AUTHORIZATION is not supported",
                        ));
                    }
                };
                let ns = self.namespace_of(name)?;
                let (resource, what) = self.schema_resource(&ns);
                self.check("CreateSchema", resource, &what)?;
                self.lake.create_namespace(&ns, *if_not_exists).await?;
                Ok(Some(command("CREATE SCHEMA", None)))
            }
            Statement::Drop {
                object_type,
                if_exists,
                names,
                purge,
                ..
            } => match object_type {
                ObjectType::Table => {
                    for name in names {
                        let ident = self.table_ident(name)?;
                        let (resource, what) = self.table_resource(&ident);
                        self.check("DropTable", resource, &what)?;
                        if *if_exists && !self.lake.table_exists(&ident).await? {
                            continue;
                        }
                        self.lake.drop_table(&ident, *purge).await?;
                    }
                    Ok(Some(command("DROP TABLE", None)))
                }
                ObjectType::Schema => {
                    for name in names {
                        let ns = self.namespace_of(name)?;
                        let (resource, what) = self.schema_resource(&ns);
                        self.check("DropSchema", resource, &what)?;
                        self.lake.drop_namespace(&ns, *if_exists).await?;
                    }
                    Ok(Some(command("DROP SCHEMA", None)))
                }
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    async fn run_plan(
        &self,
        plan: LogicalPlan,
        statement: &RewrittenStatement,
        names: Option<&ResultNames>,
    ) -> Result<Output> {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                let ident = self.reference_ident(&create.name)?;
                let (resource, what) = self.table_resource(&ident);
                self.check("CreateTable", resource, &what)?;
                if create.or_replace && self.lake.table_exists(&ident).await? {
                    return self.replace_table(&ident, &create, statement, names).await;
                }
                if self.lake.table_exists(&ident).await? {
                    if create.if_not_exists {
                        return Ok(command("CREATE TABLE", None));
                    }
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("table {ident} already exists"),
                    ));
                }
                let mut columns = create.input.schema().inner().clone();
                if let Some(names) = names {
                    columns = names.apply_to_schema(&columns);
                }
                check_distinct_columns(&columns, &ident)?;
                let schema = lake_schema(&columns)?;
                let layout = TableLayout {
                    partition: statement.partition.clone(),
                    sort: statement.sort.clone(),
                    properties: statement.properties.clone().into_iter().collect(),
                };
                self.lake.create_table(&ident, &schema, &layout).await?;
                self.catalog.refresh().await?;
                let is_ctas =
                    !matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row);
                if !is_ctas {
                    return Ok(command("CREATE TABLE", None));
                }
                let df = DataFrame::new(self.ctx.state(), create.input.as_ref().clone());
                let written = async {
                    let streams = df.execute_stream_partitioned().await.map_err(from_df_error)?;
                    write_and_commit(
                        &self.lake,
                        &ident,
                        streams,
                        HashMap::new(),
                        Arc::new(WriteProgress::default()),
                    )
                    .await
                }
                .await;
                match written {
                    Ok(outcome) => {
                        if let Some(g) = &self.governance {
                            g.record_write("CreateTableAsSelect", &what, outcome.rows);
                        }
                        self.record_lineage(&ident, create.input.as_ref()).await;
                        Ok(command("SELECT", Some(outcome.rows)))
                    }
                    Err(e) => {
                        if let Err(drop_err) = self.lake.drop_table(&ident, true).await {
                            tracing::warn!(table = %ident, error = %drop_err, "cannot drop table after failed CREATE TABLE AS");
                        }
                        self.catalog.refresh().await?;
                        Err(e)
                    }
                }
            }
            LogicalPlan::Dml(DmlStatement {
                op: WriteOp::Insert(_),
                ref table_name,
                ref input,
                ..
            }) => {
                let target = self.reference_ident(table_name).ok();
                let input = input.clone();
                let df = self.ctx.execute_logical_plan(plan).await.map_err(from_df_error)?;
                let batches = df.collect().await.map_err(from_df_error)?;
                let rows = count_of(&batches);
                if let Some(target) = target {
                    self.record_lineage(&target, &input).await;
                }
                Ok(command("INSERT 0", Some(rows)))
            }
            LogicalPlan::Dml(dml) => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} on {} is not supported yet; tables take INSERT",
                    dml.op, dml.table_name
                ),
            )),
            LogicalPlan::Ddl(ddl) => {
                let name = ddl.name().to_string();
                Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{name} is not supported by tarn"),
                ))
            }
            plan => {
                let is_statement = matches!(plan, LogicalPlan::Statement(_));
                let df = self.ctx.execute_logical_plan(plan).await.map_err(from_df_error)?;
                if is_statement {
                    df.collect().await.map_err(from_df_error)?;
                    return Ok(command("SET", None));
                }
                let (state, plan) = df.into_parts();
                let started = std::time::Instant::now();
                let stream = crate::workload::execute_with_fallback(state, &plan, |s| s.task_ctx(), |_| {})
                    .await
                    .map_err(from_df_error)?;
                tracing::debug!(
                    first_batch_ms = started.elapsed().as_secs_f64() * 1e3,
                    "query planned and started"
                );
                Ok(Output::Rows(match names {
                    Some(names) => with_names(stream, names),
                    None => stream,
                }))
            }
        }
    }

    /// `CREATE OR REPLACE TABLE t [(columns)] [PARTITIONED BY ...] [SORTED BY ...]
    /// [TBLPROPERTIES (...)] [AS query]` of an existing table: the table is redefined with the
    /// statement's columns, partitioning, sort order and properties (set over its own), and its
    /// rows replaced by the query's (none without one), in one commit, so readers see the old
    /// table or the new one, and the table keeps its history (see
    /// [`tarn_lake::Lake::plan_replacement`]).
    async fn replace_table(
        &self,
        ident: &TableIdent,
        create: &datafusion::logical_expr::CreateMemoryTable,
        statement: &RewrittenStatement,
        names: Option<&ResultNames>,
    ) -> Result<Output> {
        let (resource, what) = self.table_resource(ident);
        self.check("DropTable", resource, &what)?;
        let mut columns = create.input.schema().inner().clone();
        if let Some(names) = names {
            columns = names.apply_to_schema(&columns);
        }
        check_distinct_columns(&columns, ident)?;
        let wanted = lake_schema(&columns)?;
        let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&wanted).map_err(|e| {
            tarn_lake::iceberg_error(format!("cannot map the columns of {ident} to Iceberg types"), e)
        })?;
        let layout = TableLayout {
            partition: statement.partition.clone(),
            sort: statement.sort.clone(),
            properties: statement.properties.clone().into_iter().collect(),
        };
        let table = self.lake.load_table(ident).await?;
        let replacement = self.lake.plan_replacement(&table, &schema, &layout)?;
        let df = DataFrame::new(self.ctx.state(), create.input.as_ref().clone());
        let streams = df.execute_stream_partitioned().await.map_err(from_df_error)?;
        let outcome = crate::write::write_and_replace(
            &self.lake,
            &table,
            replacement,
            streams,
            Arc::new(WriteProgress::default()),
        )
        .await?;
        self.catalog.refresh().await?;
        if let Some(g) = &self.governance {
            g.record_write("CreateTableAsSelect", &what, outcome.rows);
        }
        self.record_lineage(ident, create.input.as_ref()).await;
        let is_ctas = !matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row);
        Ok(match is_ctas {
            true => command("SELECT", Some(outcome.rows)),
            false => command("CREATE TABLE", None),
        })
    }

    /// Records the lake tables `input` reads as upstream of `target` (see [`crate::lineage`]).
    /// The statement has committed: a failure here is logged, not returned.
    pub(crate) async fn record_lineage(&self, target: &TableIdent, input: &LogicalPlan) {
        let read: std::collections::BTreeSet<String> = crate::lineage::scanned_tables(input)
            .iter()
            .filter_map(|r| self.reference_ident(r).ok())
            .filter(|ident| ident != target && ident.namespace().to_url_string() != "information_schema")
            .map(|ident| format!("{}.{}", ident.namespace().join("."), ident.name()))
            .collect();
        if read.is_empty() {
            return;
        }
        let result = async {
            let table = self.lake.load_table(target).await?;
            let mut upstream = crate::lineage::upstream_of(&table);
            let before = upstream.len();
            upstream.extend(read);
            if upstream.len() == before {
                return Ok(());
            }
            let value = crate::lineage::upstream_property(&upstream);
            self.lake
                .set_properties(
                    target,
                    HashMap::from([(crate::lineage::PROPERTY_UPSTREAM.to_string(), value)]),
                )
                .await
                .map(|_| ())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(table = %target, error = %e, "cannot record the table's lineage");
        }
    }

    fn namespace_of(&self, name: &ObjectName) -> Result<NamespaceIdent> {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(normalize_ident).unwrap_or_else(|| p.to_string()))
            .collect();
        // `catalog.schema` names the schema of this catalog.
        let parts = match parts.as_slice() {
            [catalog, rest @ ..] if catalog == self.lake.name() && !rest.is_empty() => rest.to_vec(),
            _ => parts,
        };
        NamespaceIdent::from_vec(parts).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid schema name {name}: {e}"),
            )
        })
    }

    pub(crate) fn table_ident(&self, name: &ObjectName) -> Result<TableIdent> {
        let reference = TableReference::from(name.to_string().as_str());
        self.reference_ident(&reference)
    }

    fn reference_ident(&self, reference: &TableReference) -> Result<TableIdent> {
        let (schema, table) = match reference {
            TableReference::Bare { table } => (DEFAULT_SCHEMA.to_string(), table.to_string()),
            TableReference::Partial { schema, table } => (schema.to_string(), table.to_string()),
            TableReference::Full {
                catalog,
                schema,
                table,
            } => {
                if catalog.as_ref() != self.lake.name() {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "catalog {catalog} does not exist (this is catalog {})",
                            self.lake.name()
                        ),
                    ));
                }
                (schema.to_string(), table.to_string())
            }
        };
        Ok(TableIdent::new(NamespaceIdent::new(schema), table))
    }
}

fn normalize_ident(ident: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// `stream` with PostgreSQL's names on its columns (see [`ResultNames`]).
fn with_names(stream: SendableRecordBatchStream, names: &ResultNames) -> SendableRecordBatchStream {
    let schema = names.apply_to_schema(&stream.schema());
    if Arc::ptr_eq(&schema, &stream.schema()) {
        return stream;
    }
    let batches_schema = schema.clone();
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        stream.map(move |batch| {
            let batch = batch?;
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                batches_schema.clone(),
                batch.columns().to_vec(),
                &options,
            )?)
        }),
    ))
}

pub(crate) fn command(tag: &str, rows: Option<u64>) -> Output {
    Output::Command {
        tag: match rows {
            Some(n) => format!("{tag} {n}"),
            None => tag.to_string(),
        },
        rows,
    }
}

fn count_of(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| b.num_columns() > 0 && b.column(0).data_type() == &DataType::UInt64)
        .map(|b| {
            b.column(0)
                .as_primitive::<UInt64Type>()
                .iter()
                .flatten()
                .sum::<u64>()
        })
        .sum()
}

/// Fails when two of a new table's `columns` share a name.
fn check_distinct_columns(columns: &Schema, ident: &TableIdent) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match columns.fields().iter().find(|f| !seen.insert(f.name())) {
        Some(repeated) => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "column \"{}\" specified more than once in {ident}: give the query's columns distinct names with AS",
                repeated.name()
            ),
        )),
        None => Ok(()),
    }
}

/// The schema a table gets for rows of `schema`: every type mapped to one Iceberg has.
pub fn lake_schema(schema: &Schema) -> Result<Schema> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| lake_field(f))
        .collect::<Result<Vec<_>>>()?;
    Ok(Schema::new(fields))
}

fn lake_field(field: &Field) -> Result<Field> {
    Ok(Field::new(
        field.name(),
        lake_type(field.name(), field.data_type())?,
        field.is_nullable(),
    ))
}

fn lake_type(column: &str, dt: &DataType) -> Result<DataType> {
    use DataType as T;
    Ok(match dt {
        T::Null => T::Utf8,
        T::Int8 | T::Int16 | T::UInt8 | T::UInt16 => T::Int32,
        T::UInt32 | T::UInt64 => T::Int64,
        T::Float16 => T::Float32,
        T::Utf8View | T::LargeUtf8 => T::Utf8,
        T::BinaryView | T::LargeBinary | T::FixedSizeBinary(_) => T::LargeBinary,
        T::Date64 => T::Date32,
        T::Time32(_) | T::Time64(_) => T::Time64(TimeUnit::Microsecond),
        T::Timestamp(TimeUnit::Nanosecond, tz)
        | T::Timestamp(TimeUnit::Microsecond, tz)
        | T::Timestamp(TimeUnit::Millisecond, tz)
        | T::Timestamp(TimeUnit::Second, tz) => {
            T::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "+00:00".into()))
        }
        T::Dictionary(_, value) => lake_type(column, value)?,
        T::List(f) | T::LargeList(f) | T::ListView(f) | T::LargeListView(f) | T::FixedSizeList(f, _) => {
            T::List(Arc::new(lake_field(f)?))
        }
        T::Struct(fields) => T::Struct(Fields::from(
            fields.iter().map(|f| lake_field(f)).collect::<Result<Vec<_>>>()?,
        )),
        T::Map(entries, sorted) => T::Map(Arc::new(lake_field(entries)?), *sorted),
        T::Boolean
        | T::Int32
        | T::Int64
        | T::Float32
        | T::Float64
        | T::Utf8
        | T::Binary
        | T::Date32
        | T::Decimal128(..) => dt.clone(),
        other => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("column {column} has type {other}, which Iceberg tables cannot store"),
            ));
        }
    })
}
