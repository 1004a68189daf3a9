//! The one place statements are authorized: every plan the session runs — from the Postgres
//! wire endpoint (simple and extended protocol), `tarn sql`, or anything else planning on the
//! session's context — passes DataFusion's analyzer, and [`PolicyRule`], the last analyzer
//! rule, decides on the resolved logical plan with the session's [`Policy`]:
//!
//! - `ExecuteQuery` for every statement; `SelectFromColumns` for each table read, with the
//!   columns the statement reads of it (worked out by DataFusion's projection pruning on a
//!   copy of the plan), wherever the table appears — subqueries, CTEs, joins, unions, the
//!   input of `INSERT`, `CREATE TABLE AS` and `COPY`, inside `EXPLAIN`; `InsertIntoTable`,
//!   `DeleteFromTable`, `UpdateTableColumns` for writes; tarn's `CopyTo` (resource
//!   `{"file": {"path"}}`) for `COPY ... TO`;
//! - row filters (`GetRowFilters`) are applied by the table's scan itself (see the private
//!   `RowFilter`: none of the statement's predicates that can fail runs on a row they hide),
//!   and column masks (`GetColumnMask`) become a `Projection` above it, which replaces each masked
//!   column by its mask (cast to the column's type) under the column's own name. Everything
//!   the statement does with the table happens above, so no query shape sees an unmasked value
//!   or a filtered row. The scan's table is wrapped ([`PolicedTable`]) so a plan analyzed twice
//!   (the extended protocol optimizes before it executes) is rewritten once;
//! - `information_schema` (`tables`, `columns`, `views`, `schemata`) and `pg_catalog`
//!   (`pg_tables`, `pg_class`, `pg_namespace`) get a `Filter` keeping only the lake's tables
//!   and schemas the policy lets the principal see (`FilterTables`, `FilterSchemas`);
//! - Iceberg metadata tables (`t$snapshots`, `t$manifests`) are asked as the table
//!   `t$manifests` (as Trino's Iceberg connector names them) and refused when `t` has a row
//!   filter or mask for the principal, since their statistics show values.
//!
//! Catalog statements tarn runs itself (`CREATE TABLE`, `CREATE SCHEMA`, `DROP ...`) are
//! checked by the session through [`Governance::check`] before they run.
//!
//! Who asks travels with the task: an endpoint runs a statement inside [`with_principal`].
//! With a policy configured, a plan analyzed outside of one is refused.
//!
//! The audit table (`tarn_audit.events`, [`crate::audit`]) is decided here before the policy
//! is asked: members of the auditor role read it whatever the policy says, nobody else reads
//! it or sees it listed whatever the policy says, and nobody writes, creates, alters or drops
//! anything in `tarn_audit` through SQL. Each analysis records one audit record (operations,
//! tables, decision) and each catalog statement's check one more.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Column, Constraints, DFSchema, Statistics, TableReference};
use datafusion::datasource::{TableType, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::expr_rewriter::{normalize_col, unnormalize_col};
use datafusion::logical_expr::{
    Expr, Filter, LogicalPlan, Projection, TableProviderFilterPushDown, TableScan, WriteOp, cast, lit,
};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::optimizer::optimize_projections::OptimizeProjections;
use datafusion::optimizer::{OptimizerContext, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use iceberg::TableIdent;
use serde_json::json;
use tarn_auth::Principal;
use tarn_core::{Error, ErrorKind, Result};
use tarn_policy::{Policy, PolicyError, TableName};

use crate::audit::{AUDIT_SCHEMA, AuditLog, AuditRecord, RecordKind};

tokio::task_local! {
    static PRINCIPAL: Arc<Principal>;
}

/// Runs `f` on behalf of `principal` (when given; otherwise on behalf of whoever the caller
/// runs for).
pub async fn with_principal<F: Future>(principal: Option<Arc<Principal>>, f: F) -> F::Output {
    match principal {
        Some(p) => PRINCIPAL.scope(p, f).await,
        None => f.await,
    }
}

/// The principal the current task runs for.
pub fn current_principal() -> Option<Arc<Principal>> {
    PRINCIPAL.try_with(Arc::clone).ok()
}

/// A policy denial or failure as tarn's error.
pub fn policy_error(e: PolicyError) -> Error {
    match e {
        PolicyError::Denied(_) | PolicyError::Evaluation(_) => {
            Error::new(ErrorKind::PermissionDenied, e.to_string())
        }
        PolicyError::Load { .. } => Error::new(ErrorKind::Config, e.to_string()),
    }
}

fn df_error(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// What a principal may see of the lake: tables by schema, and schemas.
pub type Visible = (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>);

/// What a principal may see of every catalog of the session (the lake's and the external
/// catalogs attached to it, `[[federation]]`), by catalog name.
pub type VisibleCatalogs = BTreeMap<String, Visible>;

/// Schemas that hold no lake tables.
const SYSTEM_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// The session's policy and what deciding needs.
pub struct Governance {
    policy: Policy,
    catalog_name: String,
    default_schema: String,
    catalog: Arc<dyn CatalogProvider>,
    /// Every catalog of the session, for listings of external catalogs' tables (set once the
    /// session's context exists: [`Governance::attach_catalogs`]).
    catalogs: std::sync::OnceLock<Arc<dyn CatalogProviderList>>,
    /// Parses mask and row filter expressions (DataFusion's functions, PostgreSQL dialect).
    expressions: SessionState,
    /// Where decisions are recorded, when auditing is on.
    audit: Option<Arc<AuditLog>>,
    /// Whose members read the audit table.
    auditor_role: String,
}

/// What the audit table's own rule says of an operation, before any policy.
enum AuditGuard {
    /// Not about the audit table: the policy decides.
    Ask,
    /// An auditor reading it: allowed whatever the policy says.
    Allow,
    /// Refused whatever the policy says, and why.
    Deny(String),
}

/// Operations that only read or list.
fn is_read(operation: &str) -> bool {
    matches!(
        operation,
        "SelectFromColumns"
            | "FilterTables"
            | "FilterColumns"
            | "FilterSchemas"
            | "ShowTables"
            | "ShowSchemas"
            | "ShowColumns"
            | "GetRowFilters"
            | "GetColumnMask"
    )
}

/// The schema a policy resource names (`table.schemaName` or `schema.schemaName`).
fn resource_schema(resource: Option<&serde_json::Value>) -> Option<&str> {
    let resource = resource?;
    resource
        .get("table")
        .or_else(|| resource.get("schema"))
        .and_then(|r| r.get("schemaName"))
        .and_then(serde_json::Value::as_str)
}

/// The table a policy resource names, as `catalog.schema.table`.
fn resource_table(resource: Option<&serde_json::Value>) -> Option<String> {
    let table = resource?.get("table")?;
    let part = |k: &str| {
        table
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    };
    Some(format!(
        "{}.{}.{}",
        part("catalogName"),
        part("schemaName"),
        part("tableName")
    ))
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Governance({:?})", self.policy)
    }
}

impl Governance {
    /// Decisions of `policy` over the tables of `catalog` (named `catalog_name`).
    pub fn new(
        policy: Policy,
        catalog_name: &str,
        default_schema: &str,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Self {
        let mut config = datafusion::execution::context::SessionConfig::new();
        config.options_mut().sql_parser.dialect = datafusion::common::config::Dialect::PostgreSQL;
        config.options_mut().sql_parser.parse_float_as_decimal = true;
        Self {
            policy,
            catalog_name: catalog_name.to_string(),
            default_schema: default_schema.to_string(),
            catalog,
            catalogs: std::sync::OnceLock::new(),
            expressions: SessionStateBuilder::new()
                .with_config(config)
                .with_default_features()
                .build(),
            audit: None,
            auditor_role: crate::audit::AuditSettings::default().auditor_role,
        }
    }

    /// These decisions recorded in `audit` (none: not recorded), with `auditor_role`'s members
    /// the only readers of the audit table.
    pub fn with_audit(mut self, audit: Option<Arc<AuditLog>>, auditor_role: &str) -> Self {
        self.audit = audit;
        self.auditor_role = auditor_role.to_string();
        self
    }

    /// Listings show the tables of `catalogs`' external catalogs too, each filtered like the
    /// lake's (`FilterTables` with its catalog name). Set once; later calls are ignored.
    pub fn attach_catalogs(&self, catalogs: Arc<dyn CatalogProviderList>) {
        let _ = self.catalogs.set(catalogs);
    }

    /// Whether `name` is an external catalog of the session.
    fn is_external_catalog(&self, name: &str) -> bool {
        self.catalogs
            .get()
            .is_some_and(|list| list.catalog(name).is_some())
    }

    /// The audit trail, when auditing is on.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// Whether `principal` is a member of the auditor role.
    pub fn is_auditor(&self, principal: &Principal) -> bool {
        principal.groups.contains(&self.auditor_role)
    }

    /// The audit table's own rule for `operation` on something in `schema`.
    fn audit_guard(&self, principal: &Principal, operation: &str, schema: Option<&str>) -> AuditGuard {
        if schema != Some(AUDIT_SCHEMA) {
            return AuditGuard::Ask;
        }
        if !is_read(operation) {
            return AuditGuard::Deny(format!(
                "access denied: {operation} on {AUDIT_SCHEMA}: the audit trail is append-only; nobody writes, alters or drops it through SQL"
            ));
        }
        if self.is_auditor(principal) {
            AuditGuard::Allow
        } else {
            AuditGuard::Deny(format!(
                "access denied: {operation} on {AUDIT_SCHEMA} is not allowed for user {principal}: only members of the role {} read the audit trail",
                self.auditor_role
            ))
        }
    }

    /// The decision on `operation` for `principal`: the audit table's rule, then the policy.
    fn decide(
        &self,
        principal: &Principal,
        operation: &str,
        resource: Option<serde_json::Value>,
        what: &str,
    ) -> Result<()> {
        match self.audit_guard(principal, operation, resource_schema(resource.as_ref())) {
            AuditGuard::Allow => Ok(()),
            AuditGuard::Deny(why) => Err(Error::new(ErrorKind::PermissionDenied, why)),
            AuditGuard::Ask => self
                .policy
                .check(principal, operation, resource, what)
                .map_err(policy_error),
        }
    }

    /// Records `record` in the audit trail, when auditing is on.
    fn record(&self, record: AuditRecord) {
        if matches!(record.kind, RecordKind::Decision) {
            let result = if record.allowed { "allow" } else { "deny" };
            metrics::counter!("tarn_governance_decisions_total", "result" => result).increment(1);
        }
        if let Some(audit) = &self.audit {
            audit.record(record);
        }
    }

    /// A record of the current statement for `principal`.
    fn new_record(&self, kind: RecordKind, principal: &Principal) -> AuditRecord {
        AuditRecord::new(kind, principal, self.policy.describe())
    }

    /// Records a decision made outside the session (the REST catalog's requests): what was
    /// asked, of which tables, and why it was denied (`None`: allowed).
    pub fn record_decision(
        &self,
        principal: &Principal,
        operations: Vec<String>,
        tables: Vec<String>,
        denied: Option<String>,
    ) {
        let mut record = self.new_record(RecordKind::Decision, principal);
        record.operations = operations;
        record.tables = tables;
        record.allowed = denied.is_none();
        record.reason = denied;
        self.record(record);
    }

    /// Records that the current principal's statement wrote `rows` rows to `table` with
    /// `operation` (after its commit).
    pub fn record_write(&self, operation: &str, table: &str, rows: u64) {
        let Some(principal) = current_principal() else {
            return;
        };
        self.record_write_for(
            &principal,
            crate::audit::current_statement(),
            operation,
            table,
            rows,
        );
    }

    /// Records that `principal`'s `statement` wrote `rows` rows to `table` (after its commit).
    pub fn record_write_for(
        &self,
        principal: &Principal,
        statement: Option<Arc<crate::audit::Fingerprint>>,
        operation: &str,
        table: &str,
        rows: u64,
    ) {
        let mut record = self.new_record(RecordKind::Write, principal);
        record.statement = statement;
        record.operations.push(operation.to_string());
        record.tables.push(table.to_string());
        record.rows = Some(rows);
        self.record(record);
    }

    /// The catalog's name, as policies and audit records name tables.
    pub fn catalog_name(&self) -> &str {
        &self.catalog_name
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The principal of the current task, or an error: with a policy, nothing runs for nobody.
    pub fn principal(&self) -> Result<Arc<Principal>> {
        current_principal().ok_or_else(|| {
            Error::new(
                ErrorKind::PermissionDenied,
                "access denied: the statement runs for no principal, and a policy is configured",
            )
        })
    }

    /// Checks `operation` on `resource` for the current principal; `what` names the object in
    /// the error.
    pub fn check(&self, operation: &str, resource: Option<serde_json::Value>, what: &str) -> Result<()> {
        let principal = self.principal()?;
        let mut record = self.new_record(RecordKind::Decision, &principal);
        record.operations.push(operation.to_string());
        record.tables.extend(resource_table(resource.as_ref()));
        if record.tables.is_empty() {
            record.tables.push(what.to_string());
        }
        let decided = self.decide(&principal, operation, resource, what);
        if let Err(e) = &decided {
            record.allowed = false;
            record.reason = Some(e.to_string());
        }
        self.record(record);
        decided
    }

    /// Checks a write made outside SQL (a load, an Airbyte sync, a maintenance step) to lake
    /// table `ident` for the current principal: `operation` on the table, or with
    /// `procedure`, `ExecuteTableProcedure` of that procedure (Trino's names: `optimize`,
    /// `expire_snapshots`, `remove_orphan_files`). Recorded like a statement's decisions.
    pub fn check_table_write(
        &self,
        operation: &str,
        ident: &TableIdent,
        procedure: Option<&str>,
    ) -> Result<()> {
        let table = self.lake_table(ident);
        let resource = match procedure {
            Some(p) => table.procedure_resource(p),
            None => table.resource(None),
        };
        let what = match procedure {
            Some(p) => format!("{table} (procedure {p})"),
            None => table.to_string(),
        };
        self.check(operation, Some(resource), &what)
    }

    /// Records that the current principal wrote `rows` rows to lake table `ident` with
    /// `operation`, outside SQL (see [`Governance::check_table_write`]).
    pub fn record_table_write(&self, operation: &str, ident: &TableIdent, rows: u64) {
        self.record_write(operation, &self.lake_table(ident).to_string(), rows);
    }

    /// The policy's name of lake table `ident`.
    pub fn lake_table(&self, ident: &TableIdent) -> TableName {
        self.table_name(&ident.namespace().join("."), ident.name())
    }

    /// The policy's name of table `table` in schema `schema`.
    pub fn table_name(&self, schema: &str, table: &str) -> TableName {
        TableName {
            catalog: self.catalog_name.clone(),
            schema: schema.to_string(),
            table: table.to_string(),
        }
    }

    /// Whether `table` has a row filter or column mask for the current principal (a reader of
    /// its files would bypass them).
    pub fn is_restricted(&self, table: &TableName, columns: &[(String, String)]) -> Result<Option<String>> {
        let principal = self.principal()?;
        let filters = self.policy.row_filters(&principal, table).map_err(policy_error)?;
        if !filters.is_empty() {
            return Ok(Some(format!("it has a row filter for {principal}")));
        }
        let masks = self
            .policy
            .column_masks(&principal, table, columns)
            .map_err(policy_error)?;
        if let Some((i, _)) = masks.first() {
            return Ok(Some(format!(
                "its column {} is masked for {principal}",
                columns[*i].0
            )));
        }
        Ok(None)
    }

    /// The first of `columns` of `table` with a column mask for the current principal,
    /// described for an error message; `None` when none is masked.
    pub fn masked_column(&self, table: &TableName, columns: &[Field]) -> Result<Option<String>> {
        let principal = self.principal()?;
        let typed: Vec<(String, String)> = columns
            .iter()
            .map(|f| (f.name().clone(), trino_type(f.data_type())))
            .collect();
        let masks = self
            .policy
            .column_masks(&principal, table, &typed)
            .map_err(policy_error)?;
        Ok(masks
            .first()
            .map(|(i, _)| format!("column {} is masked for {principal}", typed[*i].0)))
    }

    /// What the principal the current task runs for may see of the lake (tables by schema,
    /// and schemas), as listings show it: for catalog tables and functions that describe lake
    /// tables (the Postgres wire endpoint's `pg_constraint`, `pg_index`, `pg_description`, ...).
    pub fn visible_to_current(&self) -> Result<VisibleCatalogs> {
        let principal = self.principal()?;
        self.visible_catalogs(&principal)
    }

    /// What `principal` may see of the lake (tables by schema, and schemas), as listings show
    /// it: for listings made outside a statement (the REST catalog's).
    pub fn visible_to(&self, principal: &Principal) -> Result<Visible> {
        self.visible(principal)
    }

    /// The lake's (schema, table) names `principal` may see, and its schemas.
    fn visible(&self, principal: &Principal) -> Result<Visible> {
        self.visible_in(&self.catalog_name, self.catalog.as_ref(), principal)
    }

    /// What `principal` may see of the lake and of every external catalog of the session.
    fn visible_catalogs(&self, principal: &Principal) -> Result<VisibleCatalogs> {
        let mut all = BTreeMap::from([(self.catalog_name.clone(), self.visible(principal)?)]);
        if let Some(list) = self.catalogs.get() {
            for name in list.catalog_names() {
                if name == self.catalog_name {
                    continue;
                }
                if let Some(catalog) = list.catalog(&name) {
                    let visible = self.visible_in(&name, catalog.as_ref(), principal)?;
                    all.insert(name, visible);
                }
            }
        }
        Ok(all)
    }

    /// The (schema, table) names of `catalog` (named `catalog_name`) `principal` may see, and
    /// its schemas.
    fn visible_in(
        &self,
        catalog_name: &str,
        catalog: &dyn CatalogProvider,
        principal: &Principal,
    ) -> Result<Visible> {
        let auditor = self.is_auditor(principal);
        let lake = catalog_name == self.catalog_name;
        let schemas: Vec<String> = catalog
            .schema_names()
            .into_iter()
            .filter(|s| !SYSTEM_SCHEMAS.contains(&s.as_str()))
            .filter(|s| !lake || s != AUDIT_SCHEMA || auditor)
            .collect();
        let mut tables = Vec::new();
        for schema in &schemas {
            if let Some(provider) = catalog.schema(schema) {
                for table in provider.table_names() {
                    tables.push((schema.clone(), table));
                }
            }
        }
        let name = |schema: &str, table: &str| TableName {
            catalog: catalog_name.to_string(),
            schema: schema.to_string(),
            table: table.to_string(),
        };
        let resources: Vec<_> = tables.iter().map(|(s, t)| name(s, t).resource(None)).collect();
        let mut visible: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for i in self
            .policy
            .filter(principal, "FilterTables", &resources)
            .map_err(policy_error)?
        {
            if let Some((s, t)) = tables.get(i) {
                visible.entry(s.clone()).or_default().insert(t.clone());
            }
        }
        let schema_resources: Vec<_> = schemas
            .iter()
            .map(|s| tarn_policy::schema_resource(catalog_name, s))
            .collect();
        let visible_schemas = self
            .policy
            .filter(principal, "FilterSchemas", &schema_resources)
            .map_err(policy_error)?
            .into_iter()
            .filter_map(|i| schemas.get(i).cloned())
            .collect();
        Ok((visible, visible_schemas))
    }
}

/// The analyzer rule that authorizes plans and applies masks and row filters (module doc).
#[derive(Debug)]
pub struct PolicyRule {
    governance: Arc<Governance>,
}

impl PolicyRule {
    /// The rule deciding with `governance`.
    pub fn new(governance: Arc<Governance>) -> Self {
        Self { governance }
    }
}

impl AnalyzerRule for PolicyRule {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> DFResult<LogicalPlan> {
        let g = &self.governance;
        let principal = g.principal().map_err(df_error)?;
        // A plan analyzed again (the extended protocol) was decided and recorded already.
        let again = is_policed(&plan);
        let mut pass = Pass {
            g,
            principal: &principal,
            config,
            read: columns_read(&plan),
            visible: None,
            analyze: matches!(plan, LogicalPlan::Analyze(_)),
            record: g.new_record(RecordKind::Decision, &principal),
        };
        let decided = pass.authorize(plan);
        if !again || !pass.record.allowed {
            g.record(pass.record);
        }
        decided
    }

    fn name(&self) -> &str {
        "tarn_policy"
    }
}

/// Whether `plan` reads a table the rule has handled already.
fn is_policed(plan: &LogicalPlan) -> bool {
    let mut policed = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && source_as_provider(&scan.source).is_ok_and(|p| p.as_any().is::<PolicedTable>())
        {
            policed = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    policed
}

/// The columns each table reference is read for, as DataFusion's projection pruning works
/// them out on a copy of the plan; references it cannot tell for are absent (all columns).
fn columns_read(plan: &LogicalPlan) -> BTreeMap<TableReference, BTreeSet<String>> {
    let mut read: BTreeMap<TableReference, BTreeSet<String>> = BTreeMap::new();
    let Ok(pruned) = OptimizeProjections::new().rewrite(plan.clone(), &OptimizerContext::new()) else {
        return read;
    };
    let _ = pruned.data.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let entry = read.entry(scan.table_name.clone()).or_default();
            entry.extend(scan.projected_schema.fields().iter().map(|f| f.name().clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    read
}

struct Pass<'a> {
    g: &'a Governance,
    principal: &'a Principal,
    config: &'a ConfigOptions,
    read: BTreeMap<TableReference, BTreeSet<String>>,
    visible: Option<VisibleCatalogs>,
    /// The statement is `EXPLAIN ANALYZE`: its plan shows the rows each node produced.
    analyze: bool,
    /// What this analysis asked and decided, for the audit trail.
    record: AuditRecord,
}

impl Pass<'_> {
    fn authorize(&mut self, plan: LogicalPlan) -> DFResult<LogicalPlan> {
        self.check("ExecuteQuery", None, "a statement")?;
        plan.apply_with_subqueries(|node| {
            self.check_writes(node)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        let rewritten = plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            other => Ok(Transformed::no(other)),
        })?;
        Ok(rewritten.data)
    }

    fn check(&mut self, operation: &str, resource: Option<serde_json::Value>, what: &str) -> DFResult<()> {
        if !self.record.operations.iter().any(|o| o == operation) {
            self.record.operations.push(operation.to_string());
        }
        if let Some(table) = resource_table(resource.as_ref())
            && !self.record.tables.contains(&table)
        {
            self.record.tables.push(table);
        }
        let decided = self.g.decide(self.principal, operation, resource, what);
        if let Err(e) = &decided {
            self.record.allowed = false;
            self.record.reason = Some(e.to_string());
        }
        decided.map_err(df_error)
    }

    /// (schema, table) of a reference, resolved against the session's defaults; `None` for
    /// another catalog.
    fn resolve(&self, reference: &TableReference) -> (String, String, String) {
        let resolved = reference
            .clone()
            .resolve(&self.g.catalog_name, &self.g.default_schema);
        (
            resolved.catalog.to_string(),
            resolved.schema.to_string(),
            resolved.table.to_string(),
        )
    }

    fn policy_table(&self, reference: &TableReference) -> TableName {
        let (catalog, schema, table) = self.resolve(reference);
        TableName {
            catalog,
            schema,
            table,
        }
    }

    fn check_writes(&mut self, node: &LogicalPlan) -> DFResult<()> {
        match node {
            LogicalPlan::Dml(dml) => {
                let table = self.policy_table(&dml.table_name);
                let operation = match &dml.op {
                    WriteOp::Insert(InsertOp::Append) => "InsertIntoTable",
                    WriteOp::Insert(_) => "InsertIntoTable",
                    WriteOp::Delete => "DeleteFromTable",
                    WriteOp::Update => "UpdateTableColumns",
                    WriteOp::Ctas => "CreateTable",
                    WriteOp::Truncate => "TruncateTable",
                };
                if matches!(dml.op, WriteOp::Insert(InsertOp::Overwrite | InsertOp::Replace)) {
                    // An overwrite removes the rows it replaces.
                    self.check("DeleteFromTable", Some(table.resource(None)), &table.to_string())?;
                }
                let resource = if operation == "UpdateTableColumns" {
                    let columns: Vec<String> = dml
                        .target
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    table.resource(Some(&columns))
                } else {
                    table.resource(None)
                };
                self.check(operation, Some(resource), &table.to_string())
            }
            LogicalPlan::Copy(copy) => self.check(
                "CopyTo",
                Some(json!({ "file": { "path": copy.output_url } })),
                &format!("to {}", copy.output_url),
            ),
            _ => Ok(()),
        }
    }

    fn scan(&mut self, scan: TableScan) -> DFResult<Transformed<LogicalPlan>> {
        let provider = source_as_provider(&scan.source)?;
        if provider.as_any().is::<PolicedTable>() {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        let (catalog, schema, table) = self.resolve(&scan.table_name);
        // Every catalog's `information_schema` lists every catalog (DataFusion's), so each is
        // a listing to filter.
        let listed = catalog == self.g.catalog_name || self.g.is_external_catalog(&catalog);
        if listed && SYSTEM_SCHEMAS.contains(&schema.as_str()) {
            return self.listing(scan, provider, &schema, &table);
        }
        let (base, is_metadata) = match table.split_once('$') {
            Some((base, _)) => (base.to_string(), true),
            None => (table.split('@').next().unwrap_or(&table).to_string(), false),
        };
        let asked = TableName {
            catalog: catalog.clone(),
            schema: schema.clone(),
            table: if is_metadata { table.clone() } else { base.clone() },
        };
        let source_schema = provider.schema();
        let read: Vec<String> = match self.read.get(&scan.table_name) {
            Some(columns) => source_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|c| columns.contains(c) && !crate::row_level::is_row_id_column(c))
                .collect(),
            None => source_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|c| !crate::row_level::is_row_id_column(c))
                .collect(),
        };
        self.check(
            "SelectFromColumns",
            Some(asked.resource(Some(&read))),
            &format!("{asked} (columns {})", read.join(", ")),
        )?;
        if schema == AUDIT_SCHEMA {
            // An auditor (the check refused everyone else): the trail as it is.
            return Ok(Transformed::yes(LogicalPlan::TableScan(policed(scan, provider)?)));
        }
        let base_table = TableName {
            catalog,
            schema,
            table: base,
        };
        let filters = self
            .g
            .policy
            .row_filters(self.principal, &base_table)
            .map_err(|e| df_error(policy_error(e)))?;
        if self.analyze && !filters.is_empty() {
            // The scan below the row filter counts the rows it hides (`output_rows`).
            return Err(df_error(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "access denied: EXPLAIN ANALYZE of {base_table} is not allowed for {}: it has a row filter for them, and the plan's row counts would count the rows it hides; EXPLAIN without ANALYZE shows the plan",
                    self.principal
                ),
            )));
        }
        if is_metadata {
            // Unknown columns count as masked: refused rather than guessed.
            let masked = match self.base_columns(&base_table) {
                Some(columns) => !self
                    .g
                    .policy
                    .column_masks(self.principal, &base_table, &columns)
                    .map_err(|e| df_error(policy_error(e)))?
                    .is_empty(),
                None => true,
            };
            if !filters.is_empty() || masked {
                return Err(df_error(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "access denied: metadata table {asked} is not readable by {}: {base_table} has a row filter or column mask for them, which its metadata would bypass",
                        self.principal
                    ),
                )));
            }
            return Ok(Transformed::yes(LogicalPlan::TableScan(policed(scan, provider)?)));
        }
        let columns: Vec<(String, String)> = source_schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), trino_type(f.data_type())))
            .collect();
        let masks = self
            .g
            .policy
            .column_masks(self.principal, &base_table, &columns)
            .map_err(|e| df_error(policy_error(e)))?;
        self.restrict(scan, provider, source_schema, &filters, &masks, &base_table)
    }

    /// The columns of `table` (its current schema), for the masks of a metadata table's base;
    /// `None` when they cannot be looked up here (the lookup is async: it blocks this worker
    /// thread, which only a multi-threaded runtime allows).
    fn base_columns(&self, table: &TableName) -> Option<Vec<(String, String)>> {
        let schema = self.g.catalog.schema(&table.schema)?;
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return None;
        }
        let provider = tokio::task::block_in_place(|| handle.block_on(schema.table(&table.table)));
        match provider {
            Ok(Some(p)) => Some(
                p.schema()
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), trino_type(f.data_type())))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// `scan` with its row filters and column masks applied above it.
    fn restrict(
        &self,
        scan: TableScan,
        provider: Arc<dyn TableProvider>,
        source_schema: SchemaRef,
        filters: &[String],
        masks: &[(usize, String)],
        table: &TableName,
    ) -> DFResult<Transformed<LogicalPlan>> {
        if filters.is_empty() && masks.is_empty() {
            return Ok(Transformed::yes(LogicalPlan::TableScan(policed(scan, provider)?)));
        }
        let reference = scan.table_name.clone();
        let projection = scan.projection.clone();
        let fetch = scan.fetch;
        // The whole table, so filters and masks may use every column.
        let full = TableScan::try_new(
            reference.clone(),
            provider_as_source(Arc::new(PolicedTable {
                inner: provider.clone(),
                row_filter: None,
            })),
            None,
            scan.filters.clone(),
            None,
        )?;
        let full_schema = DFSchema::try_from_qualified_schema(reference.clone(), &source_schema)?;
        let mut plan = LogicalPlan::TableScan(full);
        // The row filters, one conjunction applied by the scan itself (see `RowFilter`).
        let mut predicates = Vec::new();
        for filter in filters {
            let predicate = self
                .g
                .expressions
                .create_logical_expr(filter, &full_schema)
                .map_err(|e| {
                    df_error(Error::new(
                        ErrorKind::PermissionDenied,
                        format!("access denied: the row filter {filter:?} of {table} does not plan: {e}"),
                    ))
                })?;
            // Qualified with the table, so nothing above can mistake its columns.
            predicates.push(normalize_col(trino_substr(predicate)?, &plan)?);
        }
        if let Some(predicate) = predicates.into_iter().reduce(Expr::and) {
            // Coerced as the analyzer coerces the rest of the plan.
            let coerced = TypeCoercion::new().analyze(
                LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?),
                self.config,
            )?;
            let LogicalPlan::Filter(Filter { predicate, .. }) = coerced else {
                return Err(DataFusionError::Internal(
                    "a coerced row filter is not a filter".into(),
                ));
            };
            plan = LogicalPlan::TableScan(TableScan::try_new(
                reference.clone(),
                provider_as_source(Arc::new(PolicedTable {
                    inner: provider,
                    row_filter: Some(RowFilter {
                        predicate: unnormalize_col(predicate),
                    }),
                })),
                None,
                scan.filters.clone(),
                None,
            )?);
        }
        if !masks.is_empty() {
            let exprs = source_schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    let column = Expr::Column(Column::new(Some(reference.clone()), field.name()));
                    match masks.iter().find(|(m, _)| *m == i) {
                        Some((_, mask)) => {
                            let masked = self.g.expressions.create_logical_expr(mask, &full_schema).map_err(|e| {
                                df_error(Error::new(
                                    ErrorKind::PermissionDenied,
                                    format!(
                                        "access denied: the mask {mask:?} of column {} of {table} does not plan: {e}",
                                        field.name()
                                    ),
                                ))
                            })?;
                            let masked = normalize_col(trino_substr(masked)?, &plan)?;
                            Ok(cast(masked, field.data_type().clone())
                                .alias_qualified(Some(reference.clone()), field.name()))
                        }
                        None => Ok(column),
                    }
                })
                .collect::<DFResult<Vec<_>>>()?;
            plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?);
        }
        if let Some(indices) = projection {
            let exprs = indices
                .iter()
                .map(|i| {
                    Expr::Column(Column::new(
                        Some(reference.clone()),
                        source_schema.field(*i).name(),
                    ))
                })
                .collect::<Vec<_>>();
            plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?);
        }
        if let Some(n) = fetch {
            plan = datafusion::logical_expr::LogicalPlanBuilder::from(plan)
                .limit(0, Some(n))?
                .build()?;
        }
        // The new expressions get the coercions the analyzer gave the rest of the plan.
        let plan = TypeCoercion::new().analyze(plan, self.config)?;
        Ok(Transformed::yes(plan))
    }

    /// A scan of a listing (`information_schema`, `pg_catalog`): only what the principal may
    /// see of the lake and of the external catalogs. Listings naming the catalog
    /// (`information_schema`) are filtered per catalog; `pg_catalog`'s name no catalog, so a
    /// (schema, table) any catalog shows is kept.
    fn listing(
        &mut self,
        scan: TableScan,
        provider: Arc<dyn TableProvider>,
        schema: &str,
        table: &str,
    ) -> DFResult<Transformed<LogicalPlan>> {
        let (catalog_column, schema_column, table_column) = match (schema, table) {
            ("information_schema", "tables" | "columns" | "views") => {
                (Some("table_catalog"), "table_schema", Some("table_name"))
            }
            ("information_schema", "schemata") => (Some("catalog_name"), "schema_name", None),
            ("pg_catalog", "pg_tables") => (None, "schemaname", Some("tablename")),
            ("pg_catalog", "pg_views") => (None, "schemaname", Some("viewname")),
            ("pg_catalog", "pg_namespace") => (None, "nspname", None),
            ("pg_catalog", "pg_class") => (None, "", Some("relname")),
            _ => return Ok(Transformed::yes(LogicalPlan::TableScan(policed(scan, provider)?))),
        };
        if self.visible.is_none() {
            self.visible = Some(self.g.visible_catalogs(self.principal).map_err(df_error)?);
        }
        let catalogs = self.visible.as_ref().expect("computed");
        // Without a catalog column, one catalog's worth: every catalog's names merged.
        let merged;
        let per_catalog: Vec<(Option<&str>, &Visible)> = match catalog_column {
            Some(_) => catalogs.iter().map(|(c, v)| (Some(c.as_str()), v)).collect(),
            None => {
                let mut all: Visible = Default::default();
                for (tables, schemas) in catalogs.values() {
                    for (s, names) in tables {
                        all.0.entry(s.clone()).or_default().extend(names.iter().cloned());
                    }
                    all.1.extend(schemas.iter().cloned());
                }
                merged = all;
                vec![(None, &merged)]
            }
        };
        let reference = scan.table_name.clone();
        let column = |name: &str| Expr::Column(Column::new(Some(reference.clone()), name));
        let system =
            |name: &str| column(name).in_list(SYSTEM_SCHEMAS.iter().map(|s| lit(*s)).collect(), false);
        // `condition` restricted to catalog `c` where the listing names catalogs.
        let in_catalog = |c: Option<&str>, condition: Expr| match (catalog_column, c) {
            (Some(col), Some(c)) => column(col).eq(lit(c.to_string())).and(condition),
            _ => condition,
        };
        let predicate = match table_column {
            None => per_catalog
                .iter()
                .fold(system(schema_column), |acc, (c, (_, schemas))| {
                    if schemas.is_empty() {
                        return acc;
                    }
                    let names: Vec<Expr> = schemas.iter().map(|s| lit(s.clone())).collect();
                    acc.or(in_catalog(*c, column(schema_column).in_list(names, false)))
                }),
            Some(table_column) if schema_column.is_empty() => {
                // pg_class names no schema: keep system relations (not ordinary tables) and
                // tables whose name some visible table has.
                let names: Vec<Expr> = per_catalog
                    .iter()
                    .flat_map(|(_, (tables, _))| tables.values().flatten())
                    .map(|t| lit(t.clone()))
                    .collect();
                let kinds = column("relkind").not_eq(lit("r"));
                if names.is_empty() {
                    kinds
                } else {
                    kinds.or(column(table_column).in_list(names, false))
                }
            }
            Some(table_column) => per_catalog
                .iter()
                .fold(system(schema_column), |acc, (c, (tables, _))| {
                    tables.iter().fold(acc, |acc, (s, names)| {
                        let names = names.iter().map(|t| lit(t.clone())).collect();
                        acc.or(in_catalog(
                            *c,
                            column(schema_column)
                                .eq(lit(s.clone()))
                                .and(column(table_column).in_list(names, false)),
                        ))
                    })
                }),
        };
        let scan = policed(scan, provider)?;
        let plan = LogicalPlan::Filter(Filter::try_new(
            predicate,
            Arc::new(LogicalPlan::TableScan(scan)),
        )?);
        let plan = TypeCoercion::new().analyze(plan, self.config)?;
        Ok(Transformed::yes(plan))
    }
}

/// `expr` with `substr`/`substring` as Trino evaluates them, so a mask or row filter written for
/// Trino gives Trino's answer: a negative start counts from the end (`substring(name, -3)`, the
/// last three characters, as in Trino's documented mask), and a start of 0 or before the first
/// character gives `''`. PostgreSQL's `substr` reads a start before the string as a position
/// before its first character: Trino's documented mask `'****' || substring(user_name, -3)`
/// showed the whole name. Starts from 1 mean the same in both.
fn trino_substr(expr: Expr) -> DFResult<Expr> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::functions::unicode::expr_fn::character_length;
    use datafusion::logical_expr::when;
    expr.transform_up(|e| {
        let Expr::ScalarFunction(f) = &e else {
            return Ok(Transformed::no(e));
        };
        if f.func.name() != "substr" || !(2..=3).contains(&f.args.len()) {
            return Ok(Transformed::no(e));
        }
        let (text, start) = (f.args[0].clone(), f.args[1].clone());
        let call = |start: Expr| {
            let mut args = vec![text.clone(), start];
            args.extend(f.args.get(2).cloned());
            Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                f.func.clone(),
                args,
            ))
        };
        let length = character_length(text.clone());
        let rewritten = when(
            text.clone().is_null().or(start.clone().is_null()),
            call(start.clone()),
        )
        .when(start.clone().gt(lit(0i64)), call(start.clone()))
        .when(
            start
                .clone()
                .lt(lit(0i64))
                .and((-start.clone()).lt_eq(length.clone())),
            call(length + start + lit(1i64)),
        )
        .otherwise(lit(""))?;
        Ok(Transformed::yes(rewritten))
    })
    .map(|t| t.data)
}

/// `plan` without columns when `projection` asks for none (`count(*)`). An external catalog's
/// table, scanned directly rather than sent whole to its database (a policed scan is not
/// federated as one query), answers an empty projection with a column, which the logical plan
/// above does not expect; its rows are what counts.
fn no_columns_if_none_asked(
    plan: Arc<dyn ExecutionPlan>,
    projection: Option<&[usize]>,
) -> DFResult<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
    if projection.is_some_and(<[usize]>::is_empty) && !plan.schema().fields().is_empty() {
        return Ok(Arc::new(ProjectionExec::try_new(
            Vec::<ProjectionExpr>::new(),
            plan,
        )?));
    }
    Ok(plan)
}

/// `scan` reading through [`PolicedTable`].
fn policed(scan: TableScan, provider: Arc<dyn TableProvider>) -> DFResult<TableScan> {
    Ok(TableScan {
        source: provider_as_source(Arc::new(PolicedTable {
            inner: provider,
            row_filter: None,
        })),
        ..scan
    })
}

/// Trino's name of a column type, for `columnType` in `GetColumnMask` requests.
fn trino_type(data_type: &DataType) -> String {
    use DataType as T;
    match data_type {
        T::Boolean => "boolean".into(),
        T::Int8 => "tinyint".into(),
        T::Int16 => "smallint".into(),
        T::Int32 => "integer".into(),
        T::Int64 => "bigint".into(),
        T::Float32 => "real".into(),
        T::Float64 => "double".into(),
        T::Decimal128(p, s) => format!("decimal({p},{s})"),
        T::Utf8 | T::LargeUtf8 | T::Utf8View => "varchar".into(),
        T::Binary | T::LargeBinary | T::BinaryView | T::FixedSizeBinary(_) => "varbinary".into(),
        T::Date32 | T::Date64 => "date".into(),
        T::Time32(_) | T::Time64(_) => "time(6)".into(),
        T::Timestamp(_, None) => "timestamp(6)".into(),
        T::Timestamp(_, Some(_)) => "timestamp(6) with time zone".into(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// A table the policy rule has handled: reads go to the table it wraps; the wrapper marks the
/// scan, so a second analysis of the same plan leaves it alone, and applies the principal's row
/// filters ([`RowFilter`]).
#[derive(Debug)]
pub struct PolicedTable {
    inner: Arc<dyn TableProvider>,
    row_filter: Option<RowFilter>,
}

/// The row filters of a table for a principal, applied by the scan itself before anything of
/// the statement sees a row.
///
/// As a `Filter` node above the scan, DataFusion's optimizer merged the statement's own
/// predicates into it (`WHERE 1/(amount - 777777) > 0 AND region = 'eu'`), and its `AND`
/// evaluates the left side on every row of a batch: a division by zero on a hidden row
/// answered "is there a row with amount 777777?" by an error. So the scan filters below a node
/// that takes no predicate from above (the physical plan's filter pushdown would merge them
/// as well), and the statement's predicates reach the table only when they cannot fail
/// ([`cannot_fail`]: comparisons, `IN`, `LIKE`, null tests of columns and literals), for
/// pruning; the others run above, on the rows the filter let through. The scan's statistics
/// are not the table's (they would count hidden rows).
#[derive(Debug)]
struct RowFilter {
    /// Coerced, its columns unqualified (as a table provider's scan is given filters).
    predicate: Expr,
}

/// Whether evaluating `expr` on any row can fail or has an effect: only columns, literals,
/// comparisons, boolean logic, null tests, `IN` lists, `BETWEEN` and `LIKE` over them, and
/// casts of literals, are known not to.
fn cannot_fail(expr: &Expr) -> bool {
    use datafusion::logical_expr::Operator as Op;
    match expr {
        Expr::Column(_) | Expr::Literal(..) => true,
        Expr::Alias(a) => cannot_fail(&a.expr),
        Expr::BinaryExpr(b) => {
            matches!(
                b.op,
                Op::Eq
                    | Op::NotEq
                    | Op::Lt
                    | Op::LtEq
                    | Op::Gt
                    | Op::GtEq
                    | Op::And
                    | Op::Or
                    | Op::IsDistinctFrom
                    | Op::IsNotDistinctFrom
            ) && cannot_fail(&b.left)
                && cannot_fail(&b.right)
        }
        Expr::Not(e)
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotTrue(e)
        | Expr::IsNotFalse(e)
        | Expr::IsUnknown(e)
        | Expr::IsNotUnknown(e) => cannot_fail(e),
        Expr::Between(b) => cannot_fail(&b.expr) && cannot_fail(&b.low) && cannot_fail(&b.high),
        Expr::InList(l) => cannot_fail(&l.expr) && l.list.iter().all(cannot_fail),
        Expr::Like(l) => {
            l.escape_char.is_none() && cannot_fail(&l.expr) && matches!(*l.pattern, Expr::Literal(..))
        }
        Expr::Cast(c) => matches!(*c.expr, Expr::Literal(..)),
        _ => false,
    }
}

impl PolicedTable {
    /// The rows of the wrapped table that `filter` lets through, columns `projection`; see
    /// [`RowFilter`]. `filters`: the statement's, all [`cannot_fail`], for pruning only.
    async fn filtered_scan(
        &self,
        filter: &RowFilter,
        state: &dyn Session,
        projection: Option<&[usize]>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let schema = self.inner.schema();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..schema.fields().len()).collect(),
        };
        let mut read = wanted.clone();
        for column in filter.predicate.column_refs() {
            let i = schema.index_of(&column.name)?;
            if !read.contains(&i) {
                read.push(i);
            }
        }
        let mut pruning = vec![filter.predicate.clone()];
        pruning.extend(filters.iter().filter(|f| cannot_fail(f)).cloned());
        let input = self.inner.scan(state, Some(&read), &pruning, None).await?;
        let input_schema = DFSchema::try_from(input.schema().as_ref().clone())?;
        let predicate = state.create_physical_expr(filter.predicate.clone(), &input_schema)?;
        let projection = (read.len() > wanted.len()).then(|| (0..wanted.len()).collect());
        let filtered = datafusion::physical_plan::filter::FilterExecBuilder::new(predicate, input)
            .apply_projection(projection)?
            .with_fetch(limit)
            .build()?;
        Ok(Arc::new(RowFilterExec {
            input: Arc::new(filtered),
        }))
    }
}

/// The top of a [`RowFilter`]'s scan: passes its input's rows on and takes no predicate from
/// the plan above (the default of [`ExecutionPlan::gather_filters_for_pushdown`]), so none is
/// evaluated on the rows the row filter drops.
#[derive(Debug)]
struct RowFilterExec {
    input: Arc<dyn ExecutionPlan>,
}

impl datafusion::physical_plan::DisplayAs for RowFilterExec {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        write!(f, "RowFilterExec")
    }
}

impl ExecutionPlan for RowFilterExec {
    fn name(&self) -> &str {
        "RowFilterExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = crate::provider::only_child("RowFilterExec", children)?;
        Ok(Arc::new(Self { input }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> DFResult<datafusion::execution::SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn partition_statistics(&self, _partition: Option<usize>) -> DFResult<Statistics> {
        Ok(Statistics::new_unknown(&self.schema()))
    }
}

#[async_trait]
impl TableProvider for PolicedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        match &self.row_filter {
            Some(filter) => {
                self.filtered_scan(filter, state, projection.map(Vec::as_slice), filters, limit)
                    .await
            }
            None => {
                let plan = self.inner.scan(state, projection, filters, limit).await?;
                no_columns_if_none_asked(plan, projection.map(Vec::as_slice))
            }
        }
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: datafusion::catalog::ScanArgs<'a>,
    ) -> DFResult<datafusion::catalog::ScanResult> {
        match &self.row_filter {
            Some(filter) => {
                let plan = self
                    .filtered_scan(
                        filter,
                        state,
                        args.projection(),
                        args.filters().unwrap_or(&[]),
                        args.limit(),
                    )
                    .await?;
                Ok(datafusion::catalog::ScanResult::new(plan))
            }
            None => {
                let projection = args.projection().map(<[usize]>::to_vec);
                let result = self.inner.scan_with_args(state, args).await?;
                let plan = no_columns_if_none_asked(result.into_inner(), projection.as_deref())?;
                Ok(datafusion::catalog::ScanResult::new(plan))
            }
        }
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DFResult<Vec<TableProviderFilterPushDown>> {
        use TableProviderFilterPushDown as P;
        let inner = self.inner.supports_filters_pushdown(filters)?;
        if self.row_filter.is_none() {
            return Ok(inner);
        }
        // Below the row filter only what cannot fail, and never instead of the filter above.
        Ok(filters
            .iter()
            .zip(inner)
            .map(|(f, pushed)| match pushed {
                P::Exact | P::Inexact if cannot_fail(f) => P::Inexact,
                _ => P::Unsupported,
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        // The table's statistics count the rows the filter hides.
        match self.row_filter {
            Some(_) => None,
            None => self.inner.statistics(),
        }
    }
}
