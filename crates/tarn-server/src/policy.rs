//! Loading the configured policy (`[policy]`) and `tarn policy test`.

use anyhow::Result;
use tarn_core::config::Config;
use tarn_policy::Policy;

/// The policy `[policy]` configures, or `None` (everything allowed, which the log says). A
/// policy that does not load is an error naming the file and line: tarn does not start
/// without the policy it was told to enforce.
pub fn load(config: &Config) -> Result<Option<Policy>> {
    match Policy::from_config(&config.policy) {
        Ok(Some(policy)) => {
            tracing::info!(policy = %policy.describe(), "authorization: policy loaded; what it does not allow is denied");
            Ok(Some(policy))
        }
        Ok(None) => {
            tracing::info!(
                "authorization: no policy configured ([policy] file or opa_url): every authenticated user may read and change every table"
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("cannot load the policy: {e}")),
    }
}

/// The REST catalog's authorizer under a policy: each request is the Trino operation it is
/// (`loadTable` is `SelectFromColumns` on every column, `createTable` `CreateTable`, a commit
/// what its updates do: [`commit_operations`]), asked for the principal `tarn serve`'s
/// bearer-token check found.
///
/// `loadTable` hands out the table's metadata and with it its files: an engine reading those
/// cannot be masked or filtered, so a table with a row filter or column mask for the caller
/// is refused (403), saying why. Without a principal (no `auth.oidc`), every request is
/// refused: under a policy nobody is anonymous.
///
/// The audit trail (`tarn_audit`) follows its own rule first, as on the SQL endpoint: the
/// auditor role may list and load it, nobody may create, commit to or drop anything in it.
pub struct PolicyAuthorizer {
    policy: Policy,
    governance: std::sync::Arc<tarn_query::governance::Governance>,
    lake: tarn_lake::Lake,
}

impl PolicyAuthorizer {
    /// Decides REST catalog requests on `lake` with `governance`'s policy.
    pub fn new(
        governance: std::sync::Arc<tarn_query::governance::Governance>,
        lake: tarn_lake::Lake,
    ) -> Self {
        Self {
            policy: governance.policy().clone(),
            governance,
            lake,
        }
    }

    /// The audit trail's rule for a request on schema `schema`: `None` when the policy
    /// decides.
    fn audit_rule(
        &self,
        principal: &tarn_auth::Principal,
        method: &axum::http::Method,
        schema: Option<&str>,
    ) -> Option<Result<(), tarn_rest_catalog::RestError>> {
        if schema != Some(tarn_query::audit::AUDIT_SCHEMA) {
            return None;
        }
        let reads = matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
        Some(if !reads {
            Err(forbidden(format!(
                "access denied: {method} on {}: the audit trail is append-only; nobody changes it through the catalog",
                tarn_query::audit::AUDIT_SCHEMA
            )))
        } else if self.governance.is_auditor(principal) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "access denied: {} is readable only by members of the auditor role, not by {principal}",
                tarn_query::audit::AUDIT_SCHEMA
            )))
        })
    }

    fn table(&self, schema: &str, table: &str) -> tarn_policy::TableName {
        tarn_policy::TableName {
            catalog: self.lake.name().to_string(),
            schema: schema.to_string(),
            table: table.to_string(),
        }
    }
}

fn forbidden(message: String) -> tarn_rest_catalog::RestError {
    tarn_rest_catalog::RestError::new(axum::http::StatusCode::FORBIDDEN, "ForbiddenException", message)
}

fn denied(e: tarn_policy::PolicyError) -> tarn_rest_catalog::RestError {
    forbidden(e.to_string())
}

#[async_trait::async_trait]
impl tarn_rest_catalog::Authorizer for PolicyAuthorizer {
    async fn authorize_commit(
        &self,
        extensions: &axum::http::Extensions,
        ident: &iceberg::TableIdent,
        updates: &[iceberg::TableUpdate],
    ) -> Result<(), tarn_rest_catalog::RestError> {
        let Some(principal) = extensions.get::<std::sync::Arc<tarn_auth::Principal>>().cloned() else {
            return Err(forbidden(
                "a policy is configured: commits need a caller with an OIDC bearer token".into(),
            ));
        };
        let name = self.table(&ident.namespace().join("."), ident.name());
        if let Some(decided) = self.audit_rule(&principal, &axum::http::Method::POST, Some(&name.schema)) {
            return decided;
        }
        let current = self.lake.load_table(ident).await.ok();
        let operations = commit_operations(current.as_ref().map(|t| t.metadata()), updates);
        let resource = |operation: &str| match operation {
            "CreateTable" => tarn_policy::schema_resource(&name.catalog, &name.schema),
            _ => name.resource(None),
        };
        let decided = operations.iter().try_for_each(|operation| {
            self.policy
                .check(
                    &principal,
                    operation,
                    Some(resource(operation)),
                    &name.to_string(),
                )
                .map_err(denied)
        });
        self.governance.record_decision(
            &principal,
            vec![format!("REST commit to {name}: {}", operations.join(", "))],
            vec![name.to_string()],
            decided.as_ref().err().map(ToString::to_string),
        );
        decided
    }

    async fn visible_tables(
        &self,
        extensions: &axum::http::Extensions,
        tables: Vec<iceberg::TableIdent>,
    ) -> Result<Vec<iceberg::TableIdent>, tarn_rest_catalog::RestError> {
        let (visible, _) = self.visible(extensions)?;
        Ok(tables
            .into_iter()
            .filter(|t| {
                visible
                    .get(&t.namespace().join("."))
                    .is_some_and(|names| names.contains(t.name()))
            })
            .collect())
    }

    async fn visible_namespaces(
        &self,
        extensions: &axum::http::Extensions,
        namespaces: Vec<iceberg::NamespaceIdent>,
    ) -> Result<Vec<iceberg::NamespaceIdent>, tarn_rest_catalog::RestError> {
        let (tables, schemas) = self.visible(extensions)?;
        Ok(namespaces
            .into_iter()
            .filter(|ns| {
                // A parent of a visible namespace stays, so a client can walk down to it.
                let name = ns.join(".");
                let prefix = format!("{name}.");
                schemas.contains(&name)
                    || tables.contains_key(&name)
                    || schemas
                        .iter()
                        .chain(tables.keys())
                        .any(|s| s.starts_with(&prefix))
            })
            .collect())
    }

    async fn authorize(
        &self,
        request: &tarn_rest_catalog::CatalogRequest<'_>,
    ) -> Result<(), tarn_rest_catalog::RestError> {
        let Some(principal) = request
            .extensions
            .get::<std::sync::Arc<tarn_auth::Principal>>()
            .cloned()
        else {
            return Err(tarn_rest_catalog::RestError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "NotAuthorizedException",
                "a policy is configured: the REST catalog serves only callers with an OIDC bearer token (auth.oidc)",
            ));
        };
        let decided = self.decide(request, &principal).await;
        // The audit trail: one record per request, named by its route.
        let catalog = self.lake.name();
        let schema = request.params.get("namespace").map(|n| n.replace('\u{1f}', "."));
        let tables: Vec<String> = match (schema, request.params.get("table")) {
            (Some(s), Some(t)) => vec![format!("{catalog}.{s}.{t}")],
            (Some(s), None) => vec![format!("{catalog}.{s}")],
            _ => Vec::new(),
        };
        let reason = decided.as_ref().err().map(ToString::to_string);
        self.governance.record_decision(
            &principal,
            vec![format!("REST {} {}", request.method, request.route)],
            tables,
            reason,
        );
        decided
    }
}

impl PolicyAuthorizer {
    /// What the caller of a request may see of the lake, as the SQL endpoint's listings show
    /// it (`FilterTables`, `FilterSchemas`; the audit trail to its auditors only).
    fn visible(
        &self,
        extensions: &axum::http::Extensions,
    ) -> Result<tarn_query::governance::Visible, tarn_rest_catalog::RestError> {
        let principal = extensions
            .get::<std::sync::Arc<tarn_auth::Principal>>()
            .ok_or_else(|| {
                tarn_rest_catalog::RestError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "NotAuthorizedException",
                    "a policy is configured: the REST catalog serves only callers with an OIDC bearer token (auth.oidc)",
                )
            })?;
        self.governance
            .visible_to(principal)
            .map_err(|e| forbidden(e.to_string()))
    }

    async fn decide(
        &self,
        request: &tarn_rest_catalog::CatalogRequest<'_>,
        principal: &std::sync::Arc<tarn_auth::Principal>,
    ) -> Result<(), tarn_rest_catalog::RestError> {
        use axum::http::Method;
        let p = principal;
        let schema = request.params.get("namespace").map(|n| n.replace('\u{1f}', "."));
        let table = request.params.get("table");
        // The route as declared, after `/v1` (the router may be nested, e.g. under `/iceberg`).
        let route = request.route.split_once("/v1").map_or(request.route, |(_, r)| r);
        let route = route.strip_prefix("/{prefix}").unwrap_or(route);
        let method = request.method;
        let catalog = self.lake.name().to_string();
        if let Some(decided) = self.audit_rule(p, method, schema.as_deref()) {
            return decided;
        }
        let check = |operation: &str, resource: Option<serde_json::Value>, what: &str| {
            self.policy.check(p, operation, resource, what).map_err(denied)
        };
        match (method, route, schema.as_deref(), table) {
            (_, "/config", _, _) => Ok(()),
            (&Method::GET, "/namespaces", _, _) => check(
                "ShowSchemas",
                Some(tarn_policy::catalog_resource(&catalog)),
                &catalog,
            ),
            (&Method::POST, "/namespaces", _, _) => check("CreateSchema", None, "a schema"),
            (_, "/namespaces/{namespace}" | "/namespaces/{namespace}/properties", Some(s), _) => {
                let operation = match *method {
                    Method::DELETE => "DropSchema",
                    Method::POST => "SetSchemaProperties",
                    _ => "ShowTables",
                };
                check(
                    operation,
                    Some(tarn_policy::schema_resource(&catalog, s)),
                    &format!("{catalog}.{s}"),
                )
            }
            (&Method::GET, "/namespaces/{namespace}/tables", Some(s), _) => check(
                "ShowTables",
                Some(tarn_policy::schema_resource(&catalog, s)),
                &format!("{catalog}.{s}"),
            ),
            (
                &Method::POST,
                "/namespaces/{namespace}/tables" | "/namespaces/{namespace}/register",
                Some(s),
                _,
            ) => check(
                "CreateTable",
                Some(tarn_policy::schema_resource(&catalog, s)),
                &format!("a table in {catalog}.{s}"),
            ),
            (_, "/namespaces/{namespace}/tables/{table}", Some(s), Some(t)) => {
                let name = self.table(s, t);
                match *method {
                    Method::DELETE => check("DropTable", Some(name.resource(None)), &name.to_string()),
                    // What the commit does is decided on its updates (`authorize_commit`).
                    Method::POST => check("FilterTables", Some(name.resource(None)), &name.to_string()),
                    Method::HEAD => check("FilterTables", Some(name.resource(None)), &name.to_string()),
                    _ => self.load_table(p, &name).await,
                }
            }
            (_, "/namespaces/{namespace}/tables/{table}/metrics", _, _) => Ok(()),
            (_, "/tables/rename", _, _) => check("RenameTable", None, "a table"),
            // Each table's change is decided on what it does (`authorize_commit`).
            (&Method::POST, "/transactions/commit", _, _) => Ok(()),
            _ => Err(forbidden(format!(
                "{method} {} is not allowed while a policy is configured",
                request.route
            ))),
        }
    }
}

impl PolicyAuthorizer {
    /// `loadTable`: `SelectFromColumns` on all columns, and no mask or row filter for the
    /// caller (the files would bypass them).
    async fn load_table(
        &self,
        principal: &tarn_auth::Principal,
        name: &tarn_policy::TableName,
    ) -> Result<(), tarn_rest_catalog::RestError> {
        let ident = iceberg::TableIdent::new(
            iceberg::NamespaceIdent::new(name.schema.clone()),
            name.table.clone(),
        );
        let table = match self.lake.load_table(&ident).await {
            Ok(t) => t,
            // Let the handler answer 404 in the catalog's words; a missing table shows nothing.
            Err(_) => return Ok(()),
        };
        let columns: Vec<(String, String)> = table
            .metadata()
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.field_type.to_string()))
            .collect();
        let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
        self.policy
            .check(
                principal,
                "SelectFromColumns",
                Some(name.resource(Some(&names))),
                &name.to_string(),
            )
            .map_err(denied)?;
        let filters = self.policy.row_filters(principal, name).map_err(denied)?;
        let masks = self
            .policy
            .column_masks(principal, name, &columns)
            .map_err(denied)?;
        if !filters.is_empty() || !masks.is_empty() {
            let why = if filters.is_empty() {
                format!("its column {} is masked", columns[masks[0].0].0)
            } else {
                "it has a row filter".to_string()
            };
            tracing::info!(target: "tarn::audit", user = %principal.user, operation = "loadTable", object = %name, decision = "deny", reason = %why, "denied");
            return Err(forbidden(format!(
                "access denied: {name} cannot be handed out to {principal}: {why} for them, and an engine reading its files directly cannot be masked or filtered; query it through tarn's SQL endpoint instead"
            )));
        }
        Ok(())
    }
}

/// The Trino operations a REST commit of `updates` performs on a table whose metadata is
/// `current` (`None`: the commit creates it), each once, in a stable order:
///
/// - a snapshot appended is `InsertIntoTable`; a delete `DeleteFromTable`; an overwrite or a
///   replace (a rewrite such as compaction) both; a branch or tag pointed at a snapshot the
///   commit does not add (a rollback) both too; snapshots or references removed (expiry)
///   `DeleteFromTable` — history is data time travel reads;
/// - a new current schema is diffed with the current one by field id: `AddColumn`,
///   `DropColumn`, `RenameColumn`, `AlterColumn` (type or nullability), `SetColumnComment`;
/// - every other change (properties, partition spec, sort order, location, statistics, format
///   version) is `SetTableProperties`, as Trino changes partitioning with `ALTER TABLE ... SET
///   PROPERTIES`;
/// - a create is `CreateTable` (in the schema), and `InsertIntoTable` when it adds data.
pub fn commit_operations(
    current: Option<&iceberg::spec::TableMetadata>,
    updates: &[iceberg::TableUpdate],
) -> Vec<&'static str> {
    use iceberg::TableUpdate as U;
    use iceberg::spec::Operation;
    let mut ops: std::collections::BTreeSet<&'static str> = std::collections::BTreeSet::new();
    let Some(current) = current else {
        ops.insert("CreateTable");
        if updates.iter().any(|u| matches!(u, U::AddSnapshot { .. })) {
            ops.insert("InsertIntoTable");
        }
        return ops.into_iter().collect();
    };
    let added: std::collections::HashSet<i64> = updates
        .iter()
        .filter_map(|u| match u {
            U::AddSnapshot { snapshot } => Some(snapshot.snapshot_id()),
            _ => None,
        })
        .collect();
    let mut new_schemas: Vec<&iceberg::spec::Schema> = Vec::new();
    for update in updates {
        match update {
            U::AddSnapshot { snapshot } => match snapshot.summary().operation {
                Operation::Append => {
                    ops.insert("InsertIntoTable");
                }
                Operation::Delete => {
                    ops.insert("DeleteFromTable");
                }
                Operation::Overwrite | Operation::Replace => {
                    ops.extend(["InsertIntoTable", "DeleteFromTable"]);
                }
            },
            U::SetSnapshotRef { reference, .. } => {
                if !added.contains(&reference.snapshot_id) {
                    ops.extend(["InsertIntoTable", "DeleteFromTable"]);
                }
            }
            U::RemoveSnapshots { .. } | U::RemoveSnapshotRef { .. } => {
                ops.insert("DeleteFromTable");
            }
            U::AddSchema { schema } => new_schemas.push(schema),
            U::SetCurrentSchema { schema_id } => {
                let target = if *schema_id == -1 {
                    new_schemas.last().copied()
                } else {
                    new_schemas
                        .iter()
                        .copied()
                        .find(|s| s.schema_id() == *schema_id)
                        .or_else(|| current.schema_by_id(*schema_id).map(|s| s.as_ref()))
                };
                match target {
                    Some(schema) => column_operations(current.current_schema(), schema, &mut ops),
                    // Unknown: the commit fails when it is applied; decide it as a change.
                    None => {
                        ops.insert("AlterColumn");
                    }
                }
            }
            U::RemoveSchemas { .. } => {}
            _ => {
                ops.insert("SetTableProperties");
            }
        }
    }
    ops.into_iter().collect()
}

/// The column changes from `old` to `new`, by field id (nested fields included).
fn column_operations(
    old: &iceberg::spec::Schema,
    new: &iceberg::spec::Schema,
    ops: &mut std::collections::BTreeSet<&'static str>,
) {
    let (before, after) = (old.field_id_to_fields(), new.field_id_to_fields());
    for (id, field) in after {
        let Some(was) = before.get(id) else {
            ops.insert("AddColumn");
            continue;
        };
        if old.name_by_field_id(*id) != new.name_by_field_id(*id) {
            ops.insert("RenameColumn");
        }
        if was.required != field.required
            || (field.field_type.is_primitive() && was.field_type != field.field_type)
        {
            ops.insert("AlterColumn");
        }
        if was.doc != field.doc {
            ops.insert("SetColumnComment");
        }
    }
    if before.keys().any(|id| !after.contains_key(id)) {
        ops.insert("DropColumn");
    }
}

/// `tarn policy test`: evaluates `policy` on each case of `cases` (module docs of the
/// command); prints one line per case and a summary.
pub fn test(
    policy: &std::path::Path,
    cases: &std::path::Path,
    package: &str,
) -> Result<std::process::ExitCode> {
    use tarn_policy::{Decide, Rule};
    let rego = tarn_policy::RegoPolicy::from_path(policy, package).map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = std::fs::read_to_string(cases)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cases.display()))?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", cases.display(), n + 1);
        let case: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: not JSON: {e}"))?;
        let name = case
            .get("name")
            .and_then(|v| v.as_str())
            .map_or_else(|| at.clone(), str::to_string);
        let rule = match case.get("rule").and_then(|v| v.as_str()).unwrap_or("allow") {
            "allow" => Rule::Allow,
            "batch" => Rule::Batch,
            "rowFilters" => Rule::RowFilters,
            "columnMask" => Rule::ColumnMask,
            "batchColumnMasks" => Rule::BatchColumnMasks,
            other => anyhow::bail!(
                "{at}: unknown rule {other:?} (allow, batch, rowFilters, columnMask, batchColumnMasks)"
            ),
        };
        let input = case
            .get("input")
            .ok_or_else(|| anyhow::anyhow!("{at}: no \"input\""))?;
        let expect = normalized(case.get("expect").cloned().unwrap_or(serde_json::Value::Null));
        match rego.query(rule, input) {
            Ok(got) => {
                let got = normalized(got.unwrap_or(serde_json::Value::Null));
                if got == expect {
                    passed += 1;
                    println!("ok    {name}");
                } else {
                    failed += 1;
                    println!("FAIL  {name}: {} expected {expect}, got {got}", rule.name());
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {name}: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Sets come back as sorted arrays; expectations may list them in any order.
fn normalized(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Array(mut items) => {
            items.sort_by_key(|v| v.to_string());
            serde_json::Value::Array(items)
        }
        other => other,
    }
}

/// `tarn policy kafka-acls`: the broker ACLs equivalent to what the configured policy grants
/// `principals` (`USER` or `USER:ROLE,ROLE`; default the pipeline's) on `topics` (default the
/// configured pipelines' topics).
pub fn kafka_acls(
    config: &Config,
    principals: &[String],
    topics: &[String],
    bootstrap: Option<String>,
) -> Result<Vec<String>> {
    use tarn_cdc::topic_acl;
    let policy = Policy::from_config(&config.policy)
        .map_err(|e| anyhow::anyhow!("cannot load the policy: {e}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no policy is configured ([policy] file or opa_url): every principal may use every topic"
            )
        })?;
    let principals: Vec<tarn_auth::Principal> = if principals.is_empty() {
        vec![topic_acl::pipeline_principal(config)]
    } else {
        principals
            .iter()
            .map(|p| {
                let (user, roles) = p.split_once(':').unwrap_or((p, ""));
                tarn_auth::Principal {
                    user: user.to_string(),
                    groups: roles
                        .split(',')
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .collect(),
                    method: tarn_auth::Method::Trusted,
                }
            })
            .collect()
    };
    let topics = if topics.is_empty() {
        topic_acl::configured_topics(config)
    } else {
        topics.to_vec()
    };
    if topics.is_empty() {
        anyhow::bail!("no topics: pass --topic, or configure cdc.kafka.topics or cdc.sink = \"kafka\"");
    }
    let bootstrap = bootstrap.unwrap_or_else(|| {
        if config.cdc.kafka.brokers.is_empty() {
            config.cdc.publish.brokers.clone()
        } else {
            config.cdc.kafka.brokers.clone()
        }
    });
    Ok(topic_acl::broker_acls(
        &policy,
        &principals,
        &topics,
        &bootstrap,
        &config.cdc.kafka.group,
        &format!("tarn-cdc-{}", config.cdc.pipeline),
    )?)
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{
        FormatVersion, NestedField, PartitionSpec, PrimitiveType, Schema, SortOrder, TableMetadataBuilder,
        Type,
    };
    use serde_json::json;

    use super::commit_operations;

    fn metadata() -> iceberg::spec::TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "name", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "n", Type::Primitive(PrimitiveType::Int)).into(),
            ])
            .build()
            .unwrap();
        TableMetadataBuilder::new(
            schema,
            PartitionSpec::unpartition_spec(),
            SortOrder::unsorted_order(),
            "file:///t".into(),
            FormatVersion::V2,
            Default::default(),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata
    }

    fn ops(updates: serde_json::Value) -> Vec<&'static str> {
        let updates: Vec<iceberg::TableUpdate> = serde_json::from_value(updates).unwrap();
        commit_operations(Some(&metadata()), &updates)
    }

    fn schema(fields: serde_json::Value) -> serde_json::Value {
        json!([
            {"action": "add-schema", "schema": {"type": "struct", "schema-id": 1, "fields": fields}},
            {"action": "set-current-schema", "schema-id": -1},
        ])
    }

    #[test]
    fn schema_changes_are_the_column_operations_they_make() {
        let id = json!({"id": 1, "name": "id", "required": true, "type": "long"});
        let name = json!({"id": 2, "name": "name", "required": false, "type": "string"});
        let n = json!({"id": 3, "name": "n", "required": false, "type": "int"});
        let renamed = json!({"id": 2, "name": "full_name", "required": false, "type": "string"});
        let widened = json!({"id": 3, "name": "n", "required": false, "type": "long"});
        let added = json!({"id": 4, "name": "x", "required": false, "type": "string"});
        assert_eq!(ops(schema(json!([id, renamed, n]))), ["RenameColumn"]);
        assert_eq!(ops(schema(json!([id, name]))), ["DropColumn"]);
        assert_eq!(ops(schema(json!([id, name, widened]))), ["AlterColumn"]);
        assert_eq!(ops(schema(json!([id, name, n, added]))), ["AddColumn"]);
        // A schema added but not made current changes no column.
        assert!(ops(json!([{"action": "add-schema", "schema": {"type": "struct", "schema-id": 1, "fields": [id]}}])).is_empty());
    }

    #[test]
    fn history_and_layout_changes_are_deletes_and_property_changes() {
        // Pointing main at a snapshot the commit does not add: a rollback.
        assert_eq!(
            ops(
                json!([{"action": "set-snapshot-ref", "ref-name": "main", "type": "branch", "snapshot-id": 7}])
            ),
            ["DeleteFromTable", "InsertIntoTable"]
        );
        assert_eq!(
            ops(json!([{"action": "remove-snapshots", "snapshot-ids": [7]}])),
            ["DeleteFromTable"]
        );
        assert_eq!(
            ops(json!([{"action": "remove-snapshot-ref", "ref-name": "audit"}])),
            ["DeleteFromTable"]
        );
        assert_eq!(
            ops(json!([{"action": "set-location", "location": "file:///elsewhere"}])),
            ["SetTableProperties"]
        );
        assert_eq!(
            ops(json!([{"action": "remove-properties", "removals": ["write.delete.mode"]}])),
            ["SetTableProperties"]
        );
        // A create: the table in the schema.
        assert_eq!(commit_operations(None, &[]), ["CreateTable"]);
    }
}
