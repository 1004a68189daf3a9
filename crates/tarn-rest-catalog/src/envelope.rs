//! The bodies `iceberg-catalog-rest` 0.10 does not export: its `CatalogConfig` is private to
//! the client and it has no `CommitTransactionRequest`. Field names are the specification's.

use std::collections::HashMap;

use iceberg_catalog_rest::CommitTableRequest;
use serde::{Deserialize, Serialize};

/// `GET /v1/config`.
#[derive(Debug, Serialize)]
pub(crate) struct CatalogConfig {
    /// Applied before the client's own configuration.
    pub(crate) defaults: HashMap<String, String>,
    /// Applied after it: `prefix`.
    pub(crate) overrides: HashMap<String, String>,
    /// The routes this server implements, `"<METHOD> <path>"`.
    pub(crate) endpoints: Vec<String>,
}

/// `GET .../tables/{table}/credentials`.
#[derive(Debug, Serialize)]
pub(crate) struct LoadCredentialsResponse {
    /// Credentials by location prefix; empty when none are vended.
    #[serde(rename = "storage-credentials")]
    pub(crate) storage_credentials: Vec<iceberg_catalog_rest::StorageCredential>,
}

/// `POST /v1/transactions/commit`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct CommitTransactionRequest {
    /// One commit per table; each must carry its `identifier`.
    pub(crate) table_changes: Vec<CommitTableRequest>,
}

/// The routes `GET /v1/config` announces. Iceberg's Java client only calls what is announced
/// once a server announces anything, so this list is exact: views and scan planning are absent
/// because they are not served.
pub(crate) const ENDPOINTS: &[&str] = &[
    "GET /v1/{prefix}/namespaces",
    "POST /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "DELETE /v1/{prefix}/namespaces/{namespace}",
    "POST /v1/{prefix}/namespaces/{namespace}/properties",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "POST /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "POST /v1/{prefix}/namespaces/{namespace}/register",
    "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}/metrics",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}/credentials",
    "POST /v1/{prefix}/tables/rename",
    "POST /v1/{prefix}/transactions/commit",
];
