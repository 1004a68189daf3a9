//! The role file: grants, column masks, row filters and topic grants per role, in TOML, for
//! users who do not write Rego. It compiles to Rego in Trino's contract (the rules `allow`,
//! `rowFilters`, `columnMask`), so the same engine evaluates it and `tarn policy compile`
//! shows exactly what it decides.
//!
//! ```toml
//! # Who has which role: a principal's groups (OIDC roles), plus these.
//! [users]
//! svc-reports = ["analyst"]
//!
//! [roles.admin]
//! all = true                      # every operation on everything, nothing masked or filtered
//!
//! [roles.analyst]
//! grants = [
//!   { on = "tarn.sales.*", allow = ["select"] },
//!   { on = "tarn.scratch.*", allow = ["select", "insert", "create", "drop"] },
//! ]
//! row_filters = [{ on = "tarn.sales.orders", filter = "region = 'eu'" }]
//! masks = [{ on = "tarn.sales.customers", column = "email", mask = "'****' || right(email, 4)" }]
//! topics = [{ name = "cdc.sales.*", allow = ["consume"] }]
//! ```
//!
//! - `on` names tables as `catalog.schema.table`; fewer parts leave the leading ones open
//!   (`sales.*` is every table of schema `sales` in any catalog). Each part is a name, `*`
//!   (anything) or `prefix*`.
//! - `allow` takes `select` (read and list), `insert`, `delete` (also `TRUNCATE`), `update`,
//!   `create` (tables, and schemas matching the pattern's schema part), `drop` (same) and
//!   `all`. Every principal may `ExecuteQuery`, `AccessCatalog`, `FilterCatalogs` and
//!   `FilterSchemas` (run statements and see schema names), as in Trino's documented example.
//! - `row_filters` and `masks` apply to every principal holding the role, unless one of its
//!   roles has `all = true` or `unrestricted = true`. A column with two different masks for a
//!   principal is an error at evaluation (denied), as in Trino.
//! - `topics` grant `publish` (`PublishToTopic`) and `consume` (`ConsumeFromTopic`) on topic
//!   names (`name`: a name, `*` or `prefix*`).
//!
//! Errors name the file and line (`policy.toml:7: unknown field ...`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use serde::Deserialize;

use crate::PolicyError;

/// A role file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[serde(default)]
    users: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Role {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    unrestricted: bool,
    #[serde(default)]
    grants: Vec<Grant>,
    #[serde(default)]
    row_filters: Vec<RowFilter>,
    #[serde(default)]
    masks: Vec<Mask>,
    #[serde(default)]
    topics: Vec<TopicGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    on: toml::Spanned<String>,
    allow: Vec<Privilege>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Privilege {
    Select,
    Insert,
    Delete,
    Update,
    Create,
    Drop,
    Alter,
    Maintain,
    All,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowFilter {
    on: toml::Spanned<String>,
    filter: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mask {
    on: toml::Spanned<String>,
    column: String,
    mask: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicGrant {
    name: toml::Spanned<String>,
    allow: Vec<TopicPrivilege>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum TopicPrivilege {
    Publish,
    Consume,
}

impl Privilege {
    /// The operations on a `table` resource and on a `schema` resource it grants.
    fn operations(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Privilege::Select => (
                &[
                    "SelectFromColumns",
                    "FilterTables",
                    "FilterColumns",
                    "ShowColumns",
                ],
                &["ShowTables"],
            ),
            Privilege::Insert => (&["InsertIntoTable"], &[]),
            Privilege::Delete => (&["DeleteFromTable", "TruncateTable"], &[]),
            Privilege::Update => (&["UpdateTableColumns"], &[]),
            Privilege::Create => (&["CreateTable"], &["CreateSchema", "CreateTable"]),
            Privilege::Drop => (&["DropTable"], &["DropSchema"]),
            Privilege::Alter => (
                &[
                    "AddColumn",
                    "DropColumn",
                    "RenameColumn",
                    "AlterColumn",
                    "SetColumnComment",
                    "SetTableProperties",
                ],
                &[],
            ),
            // Compaction, snapshot expiry, orphan removal: Trino's table procedures.
            Privilege::Maintain => (&["ExecuteTableProcedure"], &[]),
            Privilege::All => (&[], &[]),
        }
    }
}

/// Operations every principal may do.
pub const EVERYONE: [&str; 4] = ["ExecuteQuery", "AccessCatalog", "FilterCatalogs", "FilterSchemas"];

/// A `catalog.schema.table` pattern, each part `None` for "anything".
struct TablePattern {
    catalog: Part,
    schema: Part,
    table: Part,
}

enum Part {
    Any,
    Exact(String),
    Prefix(String),
}

impl Part {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty name".into());
        }
        match text.strip_suffix('*') {
            Some("") => Ok(Part::Any),
            Some(prefix) if !prefix.contains('*') => Ok(Part::Prefix(prefix.to_string())),
            Some(_) => Err(format!("{text:?}: `*` may only end a name")),
            None if text.contains('*') => Err(format!("{text:?}: `*` may only end a name")),
            None => Ok(Part::Exact(text.to_string())),
        }
    }

    /// The Rego condition that `value` (a reference into the input) matches, if any.
    fn condition(&self, value: &str) -> Option<String> {
        match self {
            Part::Any => None,
            Part::Exact(name) => Some(format!("{value} == {}", quote(name))),
            Part::Prefix(prefix) => Some(format!("startswith({value}, {})", quote(prefix))),
        }
    }
}

impl TablePattern {
    fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let any = || Ok(Part::Any);
        let (catalog, schema, table) = match parts.as_slice() {
            [t] => (any(), any(), Part::parse(t)),
            [s, t] => (any(), Part::parse(s), Part::parse(t)),
            [c, s, t] => (Part::parse(c), Part::parse(s), Part::parse(t)),
            _ => {
                return Err(format!(
                    "{text:?}: expected catalog.schema.table, schema.table or table"
                ));
            }
        };
        Ok(Self {
            catalog: catalog?,
            schema: schema?,
            table: table?,
        })
    }

    /// Conditions on a table resource at `at` (`input.action.resource.table`).
    fn table_conditions(&self, at: &str) -> Vec<String> {
        [
            self.catalog.condition(&format!("{at}.catalogName")),
            self.schema.condition(&format!("{at}.schemaName")),
            self.table.condition(&format!("{at}.tableName")),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Conditions on a schema resource (`input.action.resource.schema`).
    fn schema_conditions(&self) -> Vec<String> {
        let at = "input.action.resource.schema";
        [
            self.catalog.condition(&format!("{at}.catalogName")),
            self.schema.condition(&format!("{at}.schemaName")),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A Rego string literal (JSON's syntax is Rego's).
fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Compiles the role file `text` (named `name` in errors) to Rego in package `package`.
pub fn compile(name: &str, text: &str, package: &str) -> Result<String, PolicyError> {
    let error = |span: Option<Range<usize>>, message: String| PolicyError::Load {
        path: name.to_string(),
        message: match span {
            Some(span) => format!("{name}:{}: {message}", line_of(text, span.start)),
            None => message,
        },
    };
    let file: RoleFile = toml::from_str(text).map_err(|e| error(e.span(), e.message().to_string()))?;
    let table = |spanned: &toml::Spanned<String>| {
        TablePattern::parse(spanned.get_ref()).map_err(|m| error(Some(spanned.span()), m))
    };
    let topic = |spanned: &toml::Spanned<String>| {
        Part::parse(spanned.get_ref()).map_err(|m| error(Some(spanned.span()), m))
    };

    let mut rego = String::new();
    let w = &mut rego;
    let _ = writeln!(
        w,
        "# Compiled by tarn from the role file {name}: edit that file, not this."
    );
    let _ = writeln!(
        w,
        "package {package}\n\nimport rego.v1\n\ndefault allow := false\n"
    );
    let _ = writeln!(
        w,
        "# The principal's roles: its groups, and the roles [users] gives it."
    );
    let _ = writeln!(
        w,
        "roles contains role if some role in input.context.identity.groups\n"
    );
    if !file.users.is_empty() {
        let users: BTreeMap<&String, &Vec<String>> = file.users.iter().collect();
        let _ = writeln!(
            w,
            "user_roles := {}\n",
            serde_json::to_string(&users).expect("a map serializes")
        );
        let _ = writeln!(
            w,
            "roles contains role if some role in user_roles[input.context.identity.user]\n"
        );
    }
    let everyone: Vec<String> = EVERYONE.iter().map(|o| quote(o)).collect();
    let _ = writeln!(
        w,
        "allow if input.action.operation in {{{}}}\n",
        everyone.join(", ")
    );
    let _ = writeln!(
        w,
        "# Roles whose members see every table unmasked and unfiltered."
    );
    let _ = writeln!(w, "default unrestricted := false\n");

    for (role_name, role) in &file.roles {
        let role_q = quote(role_name);
        let _ = writeln!(w, "# role {role_name}");
        if role.all {
            let _ = writeln!(w, "allow if {role_q} in roles\n");
        }
        if role.all || role.unrestricted {
            let _ = writeln!(w, "unrestricted if {role_q} in roles\n");
        }
        for grant in &role.grants {
            let pattern = table(&grant.on)?;
            if grant.allow.is_empty() {
                return Err(error(Some(grant.on.span()), "`allow` lists no privilege".into()));
            }
            let all = grant.allow.contains(&Privilege::All);
            let (mut table_ops, mut schema_ops) = (Vec::new(), Vec::new());
            for privilege in &grant.allow {
                let (t, s) = privilege.operations();
                table_ops.extend(t.iter().map(|o| quote(o)));
                schema_ops.extend(s.iter().map(|o| quote(o)));
            }
            let mut rule = |operations: &[String], conditions: Vec<String>| {
                let _ = writeln!(w, "allow if {{\n\t{role_q} in roles");
                if !all {
                    let _ = writeln!(w, "\tinput.action.operation in {{{}}}", operations.join(", "));
                }
                for c in conditions {
                    let _ = writeln!(w, "\t{c}");
                }
                let _ = writeln!(w, "}}\n");
            };
            let on = "input.action.resource.table";
            if all || !table_ops.is_empty() {
                let mut conditions = vec![on.to_string()];
                conditions.extend(pattern.table_conditions(on));
                rule(&table_ops, conditions);
            }
            if all || !schema_ops.is_empty() {
                let mut conditions = vec!["input.action.resource.schema".to_string()];
                conditions.extend(pattern.schema_conditions());
                rule(&schema_ops, conditions);
            }
        }
        for filter in &role.row_filters {
            let pattern = table(&filter.on)?;
            let _ = writeln!(
                w,
                "rowFilters contains {{\"expression\": {}}} if {{\n\t{role_q} in roles\n\tnot unrestricted",
                quote(&filter.filter)
            );
            for c in pattern.table_conditions("input.action.resource.table") {
                let _ = writeln!(w, "\t{c}");
            }
            let _ = writeln!(w, "}}\n");
        }
        for mask in &role.masks {
            let pattern = table(&mask.on)?;
            let at = "input.action.resource.column";
            let _ = writeln!(
                w,
                "columnMask := {{\"expression\": {}}} if {{\n\t{role_q} in roles\n\tnot unrestricted",
                quote(&mask.mask)
            );
            for c in pattern.table_conditions(at) {
                let _ = writeln!(w, "\t{c}");
            }
            let _ = writeln!(w, "\t{at}.columnName == {}\n}}\n", quote(&mask.column));
        }
        for grant in &role.topics {
            let name = topic(&grant.name)?;
            if grant.allow.is_empty() {
                return Err(error(
                    Some(grant.name.span()),
                    "`allow` lists no privilege".into(),
                ));
            }
            let operations: Vec<String> = grant
                .allow
                .iter()
                .map(|p| match p {
                    TopicPrivilege::Publish => quote("PublishToTopic"),
                    TopicPrivilege::Consume => quote("ConsumeFromTopic"),
                })
                .collect();
            let _ = writeln!(
                w,
                "allow if {{\n\t{role_q} in roles\n\tinput.action.operation in {{{}}}\n\tinput.action.resource.topic",
                operations.join(", ")
            );
            if let Some(c) = name.condition("input.action.resource.topic.name") {
                let _ = writeln!(w, "\t{c}");
            }
            let _ = writeln!(w, "}}\n");
        }
    }
    Ok(rego)
}

/// Whether `path` is a role file (by its `.toml` extension).
pub fn is_role_file(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use serde_json::json;
    use tarn_auth::{Method, Principal};

    use crate::{Policy, PolicyError, RegoPolicy, TableName, schema_resource};

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/role-file")
            .join(name)
    }

    fn load(name: &str) -> Policy {
        Policy::new(Arc::new(
            RegoPolicy::from_path(&fixture(name), "trino").expect("loads"),
        ))
    }

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal {
            user: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: Method::Token,
        }
    }

    fn table(schema: &str, table: &str) -> TableName {
        TableName {
            catalog: "tarn".into(),
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// Every decision, row filter and mask of the role file equals the hand-written Rego's, for
    /// principals of every kind on every table of the governance tests.
    #[test]
    fn the_role_file_decides_as_the_hand_written_rego() {
        let (rego, toml) = (load("governance.rego"), load("governance.toml"));
        let principals = [
            user("ana", &["analyst"]),
            user("root", &["admin"]),
            user("both", &["admin", "analyst"]),
            user("svc", &[]),
            user("zed", &[]),
            user("eve", &["auditor"]),
        ];
        let tables = [
            table("sales", "orders"),
            table("sales", "customers"),
            table("hr", "salaries"),
            table("sales2", "orders"),
        ];
        let columns = [
            ("id".to_string(), "bigint".to_string()),
            ("email".to_string(), "varchar".to_string()),
            ("region".to_string(), "varchar".to_string()),
        ];
        let mut compared = 0;
        for p in &principals {
            for operation in ["ExecuteQuery", "AccessCatalog", "FilterSchemas", "DropCatalog"] {
                assert_eq!(
                    rego.allows(p, operation, None).unwrap(),
                    toml.allows(p, operation, None).unwrap(),
                    "{operation} for {p}"
                );
            }
            for s in ["sales", "hr"] {
                for operation in ["CreateSchema", "DropSchema"] {
                    let r = Some(schema_resource("tarn", s));
                    assert_eq!(
                        rego.allows(p, operation, r.clone()).unwrap(),
                        toml.allows(p, operation, r).unwrap(),
                        "{operation} {s} for {p}"
                    );
                }
            }
            for t in &tables {
                let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
                for operation in [
                    "SelectFromColumns",
                    "FilterTables",
                    "FilterColumns",
                    "InsertIntoTable",
                    "DeleteFromTable",
                    "CreateTable",
                    "DropTable",
                    "AddColumn",
                    "ExecuteTableProcedure",
                ] {
                    let r = Some(t.resource(Some(&names)));
                    assert_eq!(
                        rego.allows(p, operation, r.clone()).unwrap(),
                        toml.allows(p, operation, r).unwrap(),
                        "{operation} on {t} for {p}"
                    );
                    compared += 1;
                }
                let resources = [t.resource(None)];
                assert_eq!(
                    rego.filter(p, "FilterTables", &resources).unwrap(),
                    toml.filter(p, "FilterTables", &resources).unwrap()
                );
                // Filters and masks matter where the principal may read.
                if rego
                    .allows(p, "SelectFromColumns", Some(t.resource(None)))
                    .unwrap()
                {
                    assert_eq!(
                        rego.row_filters(p, t).unwrap(),
                        toml.row_filters(p, t).unwrap(),
                        "row filters of {t} for {p}"
                    );
                    assert_eq!(
                        rego.column_masks(p, t, &columns).unwrap(),
                        toml.column_masks(p, t, &columns).unwrap(),
                        "masks of {t} for {p}"
                    );
                }
            }
        }
        assert!(compared > 100);
        // And they are not vacuous: the analyst is filtered and masked, the admin is not.
        let ana = user("ana", &["analyst"]);
        assert_eq!(toml.row_filters(&ana, &tables[0]).unwrap(), ["region = 'eu'"]);
        assert_eq!(toml.column_masks(&ana, &tables[1], &columns).unwrap().len(), 1);
        assert!(
            toml.row_filters(&user("root", &["admin"]), &tables[0])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn topics_are_granted_by_name_and_prefix() {
        let text = r#"
[roles.ingest]
topics = [{ name = "cdc.sales.*", allow = ["consume"] }, { name = "events", allow = ["publish", "consume"] }]
"#;
        let rego = super::compile("acl.toml", text, "trino").unwrap();
        let policy = Policy::new(Arc::new(
            RegoPolicy::from_sources(vec![("acl.toml.rego".into(), rego)], "trino").unwrap(),
        ));
        let p = user("etl", &["ingest"]);
        let topic = |name: &str| Some(json!({"topic": {"name": name}}));
        assert!(
            policy
                .allows(&p, "ConsumeFromTopic", topic("cdc.sales.orders"))
                .unwrap()
        );
        assert!(
            !policy
                .allows(&p, "PublishToTopic", topic("cdc.sales.orders"))
                .unwrap()
        );
        assert!(
            !policy
                .allows(&p, "ConsumeFromTopic", topic("cdc.hr.salaries"))
                .unwrap()
        );
        assert!(policy.allows(&p, "PublishToTopic", topic("events")).unwrap());
        assert!(
            !policy
                .allows(&user("x", &[]), "PublishToTopic", topic("events"))
                .unwrap()
        );
    }

    #[test]
    fn maintain_grants_table_procedures_and_alter_schema_changes() {
        let text = r#"
[roles.ops]
grants = [{ on = "tarn.raw.*", allow = ["maintain"] }]

[roles.loader]
grants = [{ on = "tarn.raw.*", allow = ["insert", "alter"] }]
"#;
        let rego = super::compile("ops.toml", text, "trino").unwrap();
        let policy = Policy::new(Arc::new(
            RegoPolicy::from_sources(vec![("ops.toml.rego".into(), rego)], "trino").unwrap(),
        ));
        let (ops, loader) = (user("olga", &["ops"]), user("etl", &["loader"]));
        let raw = table("raw", "orders");
        let optimize = Some(raw.procedure_resource("optimize"));
        assert!(
            policy
                .allows(&ops, "ExecuteTableProcedure", optimize.clone())
                .unwrap()
        );
        assert!(!policy.allows(&loader, "ExecuteTableProcedure", optimize).unwrap());
        let elsewhere = Some(table("sales", "orders").procedure_resource("optimize"));
        assert!(!policy.allows(&ops, "ExecuteTableProcedure", elsewhere).unwrap());
        assert!(
            !policy
                .allows(&ops, "InsertIntoTable", Some(raw.resource(None)))
                .unwrap()
        );
        for operation in ["InsertIntoTable", "AddColumn", "SetTableProperties"] {
            assert!(
                policy
                    .allows(&loader, operation, Some(raw.resource(None)))
                    .unwrap(),
                "{operation}"
            );
        }
        assert!(
            !policy
                .allows(&loader, "DropTable", Some(raw.resource(None)))
                .unwrap()
        );
    }

    fn load_error(text: &str) -> String {
        match super::compile("policy.toml", text, "trino") {
            Err(PolicyError::Load { message, .. }) => message,
            other => panic!("expected a load error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = load_error("[roles.a]\ngrants = []\nalow = true\n");
        assert!(
            e.starts_with("policy.toml:3:") && e.contains("unknown field `alow`"),
            "{e}"
        );
        let e = load_error("[roles.a]\n\ngrants = [{ on = \"sales.*\", allow = [\"read\"] }]\n");
        assert!(
            e.starts_with("policy.toml:3:") && e.contains("unknown variant `read`"),
            "{e}"
        );
        let e = load_error("[roles.a]\ngrants = [\n  { on = \"a.b.c.d\", allow = [\"select\"] },\n]\n");
        assert!(
            e.starts_with("policy.toml:3:") && e.contains("catalog.schema.table"),
            "{e}"
        );
        let e = load_error("[roles.a]\nmasks = [{ on = \"s.t\", column = \"c\" }]\n");
        assert!(
            e.starts_with("policy.toml:2:") && e.contains("missing field `mask`"),
            "{e}"
        );
        let e = load_error("[roles.a\n");
        assert!(e.starts_with("policy.toml:1:"), "{e}");
        // Quotes in expressions cannot break out of the Rego string.
        let rego = super::compile(
            "q.toml",
            "[roles.a]\nrow_filters = [{ on = \"s.t\", filter = 'x = \"a\\\" } allow if true #' }]\n",
            "trino",
        )
        .unwrap();
        let policy = Policy::new(Arc::new(
            RegoPolicy::from_sources(vec![("q.toml.rego".into(), rego)], "trino").unwrap(),
        ));
        assert!(!policy.allows(&user("a", &["a"]), "DropTable", None).unwrap());
    }
}
