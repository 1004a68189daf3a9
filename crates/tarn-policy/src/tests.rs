//! The examples of Trino's OPA documentation (tests/trino-docs), on the requests Trino sends,
//! give the answers the documentation states; deny by default; load errors name the line.

use std::sync::Arc;

use serde_json::json;
use tarn_auth::{Method, Principal};

use crate::{Decide, Policy, PolicyError, RegoPolicy, Rule, TableName};

fn doc(name: &str) -> (String, String) {
    let path = format!("{}/tests/trino-docs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example policy");
    (name.to_string(), text)
}

fn policy(files: &[&str], package: &str) -> Policy {
    let sources = files.iter().map(|f| doc(f)).collect();
    Policy::new(Arc::new(
        RegoPolicy::from_sources(sources, package).expect("loads"),
    ))
}

fn user(name: &str, groups: &[&str]) -> Principal {
    Principal {
        user: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        method: Method::Token,
    }
}

fn restricted() -> TableName {
    TableName {
        catalog: "sample_catalog".into(),
        schema: "sample_schema".into(),
        table: "restricted_table".into(),
    }
}

#[test]
fn trino_docs_row_filters_example_filters_non_admins_of_the_restricted_table() {
    let p = policy(&["row_filters.rego"], "trino");
    assert_eq!(
        p.row_filters(&user("alice", &[]), &restricted()).unwrap(),
        vec!["user_type <> 'customer'".to_string()]
    );
    assert!(
        p.row_filters(&user("admin", &[]), &restricted())
            .unwrap()
            .is_empty()
    );
    let other = TableName {
        table: "other_table".into(),
        ..restricted()
    };
    assert!(p.row_filters(&user("alice", &[]), &other).unwrap().is_empty());
    // `default allow := true`
    assert!(
        p.allows(
            &user("alice", &[]),
            "SelectFromColumns",
            Some(restricted().resource(Some(&["user_type".into()])))
        )
        .unwrap()
    );
}

#[test]
fn trino_docs_column_mask_example_masks_phone_and_name_of_non_admins() {
    let p = policy(&["column_mask.rego"], "trino");
    let columns = vec![
        ("id".to_string(), "bigint".to_string()),
        ("user_phone".to_string(), "varchar".to_string()),
        ("user_name".to_string(), "varchar".to_string()),
    ];
    assert_eq!(
        p.column_masks(&user("alice", &[]), &restricted(), &columns)
            .unwrap(),
        vec![
            (1, "NULL".to_string()),
            (2, "'****' || substring(user_name, -3)".to_string())
        ]
    );
    assert!(
        p.column_masks(&user("admin", &[]), &restricted(), &columns)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn trino_docs_batch_column_masks_example_answers_as_opa_does() {
    // The documented policy reads `filterResources[i].catalogName`, but Trino sends each
    // column wrapped as `{"column": {...}}` (the documented request): on that request OPA's
    // answer is empty, and so is tarn's.
    let p = RegoPolicy::from_sources(vec![doc("batch_column_masks.rego")], "trino").unwrap();
    assert!(p.declares(Rule::BatchColumnMasks));
    let request = json!({
        "context": {"identity": {"user": "foo", "groups": ["some-group"]}},
        "action": {"operation": "GetColumnMask", "filterResources": [
            {"column": {"catalogName": "sample_catalog", "schemaName": "sample_schema",
                        "tableName": "restricted_table", "columnName": "user_phone", "columnType": "VARCHAR"}},
            {"column": {"catalogName": "sample_catalog", "schemaName": "sample_schema",
                        "tableName": "restricted_table", "columnName": "user_name", "columnType": "VARCHAR"}}
        ]}
    });
    assert_eq!(
        p.query(Rule::BatchColumnMasks, &request).unwrap(),
        Some(json!([]))
    );
    // On unwrapped resources (what the policy expects) it gives the documented response.
    let unwrapped = json!({
        "context": {"identity": {"user": "foo", "groups": ["some-group"]}},
        "action": {"operation": "GetColumnMask", "filterResources": [
            {"catalogName": "sample_catalog", "schemaName": "sample_schema",
             "tableName": "restricted_table", "columnName": "user_phone", "columnType": "VARCHAR"},
            {"catalogName": "sample_catalog", "schemaName": "sample_schema",
             "tableName": "restricted_table", "columnName": "user_name", "columnType": "VARCHAR"}
        ]}
    });
    let mut answer = p.query(Rule::BatchColumnMasks, &unwrapped).unwrap().unwrap();
    answer
        .as_array_mut()
        .unwrap()
        .sort_by_key(|item| item["index"].as_u64());
    assert_eq!(
        answer,
        json!([
            {"index": 0, "viewExpression": {"expression": "NULL"}},
            {"index": 1, "viewExpression": {"expression": "'****' || substring(user_name, -3)", "identity": "admin"}}
        ])
    );
}

#[test]
fn batch_column_masks_on_the_request_shape_trino_sends() {
    let rego = r#"
package trino
import rego.v1
default allow := true
batchColumnMasks contains {"index": i, "viewExpression": {"expression": "NULL"}} if {
    some i
    column := input.action.filterResources[i].column
    column.tableName == "restricted_table"
    column.columnName == "user_phone"
    not "admin" in input.context.identity.groups
}
"#;
    let p = Policy::new(Arc::new(
        RegoPolicy::from_sources(vec![("masks.rego".into(), rego.into())], "trino").unwrap(),
    ));
    let columns = vec![
        ("user_name".to_string(), "varchar".to_string()),
        ("user_phone".to_string(), "varchar".to_string()),
    ];
    assert_eq!(
        p.column_masks(&user("bob", &["analyst"]), &restricted(), &columns)
            .unwrap(),
        vec![(1, "NULL".to_string())]
    );
    assert!(
        p.column_masks(&user("eve", &["admin"]), &restricted(), &columns)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn trino_docs_batch_example_filters_tables_and_columns() {
    let p = policy(&["batch.rego", "batch_allow.rego"], "foo");
    let table = |schema: &str, table: &str| {
        TableName {
            catalog: "lake".into(),
            schema: schema.into(),
            table: table.into(),
        }
        .resource(None)
    };
    let tables = vec![
        table("sales", "orders"),
        table("hr", "salaries"),
        table("sales", "customers"),
        table("sales", "items"),
    ];
    assert_eq!(
        p.filter(&user("a", &[]), "FilterTables", &tables).unwrap(),
        vec![0, 3]
    );
    // The FilterColumns corner case: one table, its columns in order.
    let columns = vec![
        json!({"table": {"catalogName": "lake", "schemaName": "sales", "tableName": "customers",
        "columns": ["id", "email", "region", "phone"]}}),
    ];
    assert_eq!(
        p.filter(&user("a", &[]), "FilterColumns", &columns).unwrap(),
        vec![0, 2]
    );
}

#[test]
fn without_batch_each_resource_is_asked_of_allow() {
    let p = policy(&["batch_allow.rego"], "foo");
    let resources: Vec<_> = ["orders", "customers"]
        .iter()
        .map(|t| {
            TableName {
                catalog: "lake".into(),
                schema: "sales".into(),
                table: t.to_string(),
            }
            .resource(None)
        })
        .collect();
    assert_eq!(
        p.filter(&user("a", &[]), "FilterTables", &resources).unwrap(),
        vec![0]
    );
}

#[test]
fn deny_by_default_when_allow_is_undefined() {
    let rego = "package trino\nimport rego.v1\nallow if input.context.identity.user == \"root\"\n";
    let p = Policy::new(Arc::new(
        RegoPolicy::from_sources(vec![("p.rego".into(), rego.into())], "trino").unwrap(),
    ));
    assert!(!p.allows(&user("alice", &[]), "ExecuteQuery", None).unwrap());
    assert!(p.allows(&user("root", &[]), "ExecuteQuery", None).unwrap());
    let err = p.check(
        &user("alice", &[]),
        "DropTable",
        Some(restricted().resource(None)),
        "sample_catalog.sample_schema.restricted_table",
    );
    assert!(matches!(err, Err(PolicyError::Denied(m)) if m.contains("DropTable") && m.contains("alice")));
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let rego = "package trino\nimport rego.v1\n\nallow if {\n    input.user ==\n}\n";
    let err = RegoPolicy::from_sources(vec![("broken.rego".into(), rego.into())], "trino").unwrap_err();
    let PolicyError::Load { path, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, "broken.rego");
    assert!(
        message.contains("broken.rego:6") || message.contains("broken.rego:5"),
        "{message}"
    );
}

#[test]
fn a_policy_without_the_package_is_refused() {
    let err = RegoPolicy::from_sources(
        vec![("p.rego".into(), "package other\nallow := true\n".into())],
        "trino",
    )
    .unwrap_err();
    assert!(err.to_string().contains("package trino"), "{err}");
}

#[test]
fn an_unreachable_opa_server_denies_with_a_clear_error() {
    // Nothing listens on port 9 of loopback (discard, never served on test machines).
    let opa =
        crate::OpaServer::new("http://127.0.0.1:9", "trino", std::time::Duration::from_secs(2)).unwrap();
    let p = Policy::new(Arc::new(opa));
    let err = p.allows(&user("alice", &[]), "ExecuteQuery", None).unwrap_err();
    let PolicyError::Evaluation(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("OPA at http://127.0.0.1:9/v1/data/trino/allow"),
        "{message}"
    );
    assert!(
        message.contains("cannot be reached") || message.contains("no answer"),
        "{message}"
    );
    assert!(err.to_string().starts_with("access denied"), "{err}");
}
