//! Authorization decisions: Rego policies with the input and output contract of Trino's OPA
//! access control, so a policy written for Trino decides the same on tarn.
//!
//! The contract (Trino's `opa-access-control` plugin):
//!
//! - every request is `{"input": {"context": {"identity": {"user", "groups"}, ...},
//!   "action": {"operation", "resource" | "filterResources", "targetResource"}}}`, with
//!   Trino's operation names (`ExecuteQuery`, `AccessCatalog`, `SelectFromColumns`,
//!   `InsertIntoTable`, `CreateTable`, `DropTable`, `CreateSchema`, `DropSchema`,
//!   `FilterTables`, `FilterSchemas`, `GetRowFilters`, `GetColumnMask`, ...) and resources
//!   (`{"table": {"catalogName", "schemaName", "tableName", "columns"}}`, `{"schema":
//!   {"catalogName", "schemaName"}}`, `{"catalog": {"name"}}`, `{"column": {"catalogName",
//!   "schemaName", "tableName", "columnName", "columnType"}}`);
//! - the rule `allow` (a boolean; undefined is `false`) decides one operation;
//! - `batch` (a set of indices into `input.action.filterResources`), when the policy declares
//!   it, filters many resources in one evaluation; otherwise each is asked of `allow`;
//! - `rowFilters` (`GetRowFilters`): a set of `{"expression": "<SQL>"}`, each a `WHERE`
//!   clause over the table's columns;
//! - `batchColumnMasks` (`GetColumnMask` with `filterResources` of columns): a set of
//!   `{"index", "viewExpression": {"expression"}}`, or, when the policy has no
//!   `batchColumnMasks`, `columnMask` (`GetColumnMask` for one `column`): `{"expression"}`.
//!
//! Two implementations of [`Decide`] answer these rules: [`RegoPolicy`] evaluates `.rego`
//! files in process with `regorus` (Rego v1, and v0 for files that only parse as v0, as the
//! examples of Trino's documentation do); [`OpaServer`] asks an OPA server over its data API.
//! A role file ([`role_file`], TOML: grants, masks and row filters per role) compiles to Rego
//! and is evaluated as such. [`Policy`] turns the answers into decisions; nothing falls back to "allow": an error
//! deciding is a denial that says why.

mod opa;
mod rego;
pub mod role_file;

use std::sync::Arc;

use serde_json::{Value, json};

pub use opa::OpaServer;
pub use rego::RegoPolicy;
pub use tarn_auth::Principal;

/// The rules of Trino's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `allow`: one operation on one resource.
    Allow,
    /// `batch`: the indices of the allowed `filterResources`.
    Batch,
    /// `rowFilters`: the `WHERE` expressions of a table.
    RowFilters,
    /// `columnMask`: the mask of one column.
    ColumnMask,
    /// `batchColumnMasks`: the masks of many columns.
    BatchColumnMasks,
}

impl Rule {
    /// The rule's name in the policy.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Allow => "allow",
            Rule::Batch => "batch",
            Rule::RowFilters => "rowFilters",
            Rule::ColumnMask => "columnMask",
            Rule::BatchColumnMasks => "batchColumnMasks",
        }
    }
}

/// Why a decision could not be made, or was "no".
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// The policy denied the operation.
    #[error("access denied: {0}")]
    Denied(String),
    /// The policy could not be loaded (file, line and reason).
    #[error("policy {path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// Evaluating the policy failed; the operation is denied.
    #[error("access denied: the policy could not be evaluated: {0}")]
    Evaluation(String),
}

/// Something that evaluates the rules of Trino's contract on an input.
///
/// Contract: `query` returns the rule's value for `input`, `Ok(None)` when the rule is
/// undefined for it, and an error when it cannot tell (the caller then denies).
/// `declares` says whether the policy has the rule at all (it picks batch or per-item
/// requests, as Trino's `opa.policy.batched-uri` and `batch-column-masking-uri` do).
pub trait Decide: Send + Sync {
    /// The value of `rule` for `input`.
    fn query(&self, rule: Rule, input: &Value) -> Result<Option<Value>, PolicyError>;
    /// Whether the policy declares `rule`.
    fn declares(&self, rule: Rule) -> bool;
    /// What the policy is, for logs and errors (`policy.rego`, `OPA at http://...`).
    fn describe(&self) -> String;
}

/// A table, as policies name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The catalog (tarn's catalog name).
    pub catalog: String,
    /// The schema (Iceberg namespace).
    pub schema: String,
    /// The table.
    pub table: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.schema, self.table)
    }
}

impl TableName {
    /// `{"table": {...}}` with `columns` when given.
    pub fn resource(&self, columns: Option<&[String]>) -> Value {
        let mut table = json!({
            "catalogName": self.catalog,
            "schemaName": self.schema,
            "tableName": self.table,
        });
        if let Some(columns) = columns {
            table["columns"] = json!(columns);
        }
        json!({ "table": table })
    }

    /// `{"table": {...}, "function": {"functionName": procedure}}`: a table procedure
    /// (`ExecuteTableProcedure`, as Trino asks for `ALTER TABLE ... EXECUTE optimize`).
    pub fn procedure_resource(&self, procedure: &str) -> Value {
        let mut resource = self.resource(None);
        resource["function"] = json!({ "functionName": procedure });
        resource
    }

    fn column(&self, name: &str, column_type: &str) -> Value {
        json!({
            "column": {
                "catalogName": self.catalog,
                "schemaName": self.schema,
                "tableName": self.table,
                "columnName": name,
                "columnType": column_type,
            }
        })
    }
}

/// `{"schema": {...}}`.
pub fn schema_resource(catalog: &str, schema: &str) -> Value {
    json!({ "schema": { "catalogName": catalog, "schemaName": schema } })
}

/// `{"topic": {"name": ...}}`: a Kafka topic, for tarn's `PublishToTopic` and
/// `ConsumeFromTopic` (Trino has no topics).
pub fn topic_resource(name: &str) -> Value {
    json!({ "topic": { "name": name } })
}

/// `{"catalog": {"name": ...}}`.
pub fn catalog_resource(catalog: &str) -> Value {
    json!({ "catalog": { "name": catalog } })
}

/// Decisions for principals, from a [`Decide`].
#[derive(Clone)]
pub struct Policy {
    decide: Arc<dyn Decide>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Policy({})", self.decide.describe())
    }
}

/// The input document of one request.
pub fn input(principal: &Principal, action: Value) -> Value {
    json!({
        "context": {
            "identity": { "user": principal.user, "groups": principal.groups },
            "softwareStack": { "tarnVersion": env!("CARGO_PKG_VERSION") },
        },
        "action": action,
    })
}

impl Policy {
    /// Decisions from `decide`.
    pub fn new(decide: Arc<dyn Decide>) -> Self {
        Self { decide }
    }

    /// The policy `config` names: its `.rego` file(s) or its OPA server; `None` when none is
    /// configured. A file that does not parse is an error naming the file and line.
    pub fn from_config(config: &tarn_core::config::PolicyConfig) -> Result<Option<Self>, PolicyError> {
        if let Some(url) = &config.opa_url {
            let timeout =
                tarn_core::config::parse_duration("policy.timeout", &config.timeout).map_err(|e| {
                    PolicyError::Load {
                        path: "policy.timeout".into(),
                        message: e.to_string(),
                    }
                })?;
            return Ok(Some(Self::new(Arc::new(OpaServer::new(
                url,
                &config.package,
                timeout,
            )?))));
        }
        match &config.file {
            Some(path) => Ok(Some(Self::new(Arc::new(RegoPolicy::from_path(
                path,
                &config.package,
            )?)))),
            None => Ok(None),
        }
    }

    /// What decides, for logs.
    pub fn describe(&self) -> String {
        self.decide.describe()
    }

    /// Whether `allow` holds for `operation` on `resource` (none for operations without one,
    /// such as `ExecuteQuery`).
    pub fn allows(
        &self,
        principal: &Principal,
        operation: &str,
        resource: Option<Value>,
    ) -> Result<bool, PolicyError> {
        let mut action = json!({ "operation": operation });
        if let Some(resource) = resource {
            action["resource"] = resource;
        }
        let value = self.decide.query(Rule::Allow, &input(principal, action))?;
        Ok(value.as_ref().and_then(Value::as_bool).unwrap_or(false))
    }

    /// `Ok` when `allow` holds, [`PolicyError::Denied`] naming `what` otherwise.
    pub fn check(
        &self,
        principal: &Principal,
        operation: &str,
        resource: Option<Value>,
        what: &str,
    ) -> Result<(), PolicyError> {
        if self.allows(principal, operation, resource)? {
            Ok(())
        } else {
            Err(PolicyError::Denied(format!(
                "{operation} {what} is not allowed for user {principal}"
            )))
        }
    }

    /// The indices of `resources` that `operation` may see (`FilterTables`, `FilterSchemas`,
    /// ...): one `batch` evaluation when the policy declares `batch`, else `allow` per item.
    /// For `FilterColumns` of one table with its `columns`, `batch` answers indices of the
    /// columns (Trino's batch contract); callers look indices up, never index blindly.
    pub fn filter(
        &self,
        principal: &Principal,
        operation: &str,
        resources: &[Value],
    ) -> Result<Vec<usize>, PolicyError> {
        if resources.is_empty() {
            return Ok(Vec::new());
        }
        if self.decide.declares(Rule::Batch) {
            let action = json!({ "operation": operation, "filterResources": resources });
            let value = self.decide.query(Rule::Batch, &input(principal, action))?;
            let mut indices: Vec<usize> = match value {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|i| usize::try_from(i).ok())
                    .collect(),
                Some(Value::Null) | None => Vec::new(),
                Some(other) => {
                    return Err(PolicyError::Evaluation(format!(
                        "rule batch returned {other}, expected a list of indices"
                    )));
                }
            };
            indices.sort_unstable();
            indices.dedup();
            return Ok(indices);
        }
        let mut allowed = Vec::new();
        for (i, resource) in resources.iter().enumerate() {
            if self.allows(principal, operation, Some(resource.clone()))? {
                allowed.push(i);
            }
        }
        Ok(allowed)
    }

    /// The row filters of `table` for `principal` (`GetRowFilters`): SQL expressions, all of
    /// which a row must satisfy.
    pub fn row_filters(&self, principal: &Principal, table: &TableName) -> Result<Vec<String>, PolicyError> {
        if !self.decide.declares(Rule::RowFilters) {
            return Ok(Vec::new());
        }
        let action = json!({ "operation": "GetRowFilters", "resource": table.resource(None) });
        let value = self.decide.query(Rule::RowFilters, &input(principal, action))?;
        let items = match value {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(PolicyError::Evaluation(format!(
                    "rule rowFilters returned {other}, expected a set of {{\"expression\": ...}}"
                )));
            }
        };
        let mut filters: Vec<String> = items
            .iter()
            .map(|item| {
                item.get("expression")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        PolicyError::Evaluation(format!(
                            "rule rowFilters returned {item}, expected {{\"expression\": \"<SQL>\"}}"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        filters.sort();
        filters.dedup();
        Ok(filters)
    }

    /// The masks of `columns` (name, type) of `table` for `principal` (`GetColumnMask`): the
    /// index of each masked column and its SQL expression. `batchColumnMasks` when the
    /// policy declares it, else `columnMask` per column.
    pub fn column_masks(
        &self,
        principal: &Principal,
        table: &TableName,
        columns: &[(String, String)],
    ) -> Result<Vec<(usize, String)>, PolicyError> {
        if columns.is_empty() {
            return Ok(Vec::new());
        }
        let mut masks = Vec::new();
        if self.decide.declares(Rule::BatchColumnMasks) {
            let resources: Vec<Value> = columns.iter().map(|(n, t)| table.column(n, t)).collect();
            let action = json!({ "operation": "GetColumnMask", "filterResources": resources });
            let value = self
                .decide
                .query(Rule::BatchColumnMasks, &input(principal, action))?;
            let items = match value {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(PolicyError::Evaluation(format!(
                        "rule batchColumnMasks returned {other}, expected a set of {{\"index\", \"viewExpression\"}}"
                    )));
                }
            };
            for item in items {
                let index = item
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok());
                let expression = item
                    .get("viewExpression")
                    .and_then(|v| v.get("expression"))
                    .and_then(Value::as_str);
                match (index, expression) {
                    (Some(i), Some(e)) if i < columns.len() => masks.push((i, e.to_string())),
                    _ => {
                        return Err(PolicyError::Evaluation(format!(
                            "rule batchColumnMasks returned {item}, expected {{\"index\": <column>, \"viewExpression\": {{\"expression\": \"<SQL>\"}}}}"
                        )));
                    }
                }
            }
        } else if self.decide.declares(Rule::ColumnMask) {
            for (i, (name, column_type)) in columns.iter().enumerate() {
                let action =
                    json!({ "operation": "GetColumnMask", "resource": table.column(name, column_type) });
                match self.decide.query(Rule::ColumnMask, &input(principal, action))? {
                    None | Some(Value::Null) => {}
                    Some(value) => match value.get("expression").and_then(Value::as_str) {
                        Some(e) => masks.push((i, e.to_string())),
                        None => {
                            return Err(PolicyError::Evaluation(format!(
                                "rule columnMask returned {value} for column {name} of {table}, expected {{\"expression\": \"<SQL>\"}}"
                            )));
                        }
                    },
                }
            }
        }
        masks.sort();
        // One mask per column, as in Trino: two different ones are an error.
        for pair in masks.windows(2) {
            if pair[0].0 == pair[1].0 && pair[0].1 != pair[1].1 {
                return Err(PolicyError::Evaluation(format!(
                    "column {} of {table} has more than one mask ({:?}, {:?})",
                    columns[pair[0].0].0, pair[0].1, pair[1].1
                )));
            }
        }
        masks.dedup();
        Ok(masks)
    }
}

#[cfg(test)]
mod tests;
