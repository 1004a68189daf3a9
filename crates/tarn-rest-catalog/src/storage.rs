//! What an engine needs to read and write a table's files itself: the object-store settings
//! (`s3.endpoint`, `s3.region`, `client.region`, `s3.path-style-access`) and, when the operator
//! allows it, credentials.
//!
//! Clients of the REST catalog open the files the metadata names with their own file IO
//! (pyiceberg's pyarrow/fsspec, Iceberg Java's `S3FileIO`), configured from the catalog's
//! properties (`GET /v1/config` `defaults`) merged with the table's `config` in `loadTable`,
//! with `storage-credentials` taking precedence for the locations they cover. The keys are
//! Iceberg's standard file-IO properties, which both read.
//!
//! Credentials are tarn's own static keys (`storage.s3.*`), handed out only when
//! `rest_catalog.vend_credentials` is on *and* the request asks for vended credentials
//! (`X-Iceberg-Access-Delegation: vended-credentials`, which pyiceberg and Iceberg Java send by
//! default). They are not scoped to the table: whoever gets them can read and write the whole
//! bucket, for as long as the keys are valid. Short-lived, table-scoped credentials (an STS
//! `AssumeRole` with a session policy) are the real form of vending; this is the switch an
//! operator turns on for a trusted network.

use std::collections::HashMap;

use axum::http::HeaderMap;
use tarn_core::Config;
use tarn_lake::storage::{
    S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_PATH_STYLE_ACCESS, S3_REGION, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN,
};

/// The header a client names its accepted access mechanisms in.
pub const ACCESS_DELEGATION_HEADER: &str = "X-Iceberg-Access-Delegation";
/// The mechanism of [`ACCESS_DELEGATION_HEADER`] tarn serves.
const VENDED_CREDENTIALS: &str = "vended-credentials";
/// Iceberg Java's S3 client region property (pyiceberg reads `s3.region` too).
const CLIENT_REGION: &str = "client.region";

/// The storage settings and, when vending is on, credentials the catalog gives clients.
#[derive(Debug, Clone, Default)]
pub struct StorageAccess {
    /// Settings for every client: `GET /v1/config` `defaults` and each table's `config`.
    settings: HashMap<String, String>,
    /// Keys for clients asking for vended credentials; `None`: never vended.
    credentials: Option<HashMap<String, String>>,
}

impl StorageAccess {
    /// From tarn's configuration: S3 settings when the warehouse is on S3 or `storage.s3` names
    /// an endpoint or region; credentials when `rest_catalog.vend_credentials` is on and
    /// `storage.s3` has static keys.
    pub fn from_config(config: &Config) -> Self {
        let s3 = &config.storage.s3;
        let warehouse = config.warehouse_url();
        let on_s3 = warehouse.starts_with("s3://") || warehouse.starts_with("s3a://");
        if !on_s3 && s3.endpoint.is_none() && s3.region.is_none() {
            return Self::default();
        }
        let mut settings = HashMap::new();
        if let Some(endpoint) = &s3.endpoint {
            settings.insert(S3_ENDPOINT.to_string(), endpoint.clone());
        }
        let region = s3.region.clone().unwrap_or_else(|| "us-east-1".into());
        settings.insert(S3_REGION.to_string(), region.clone());
        settings.insert(CLIENT_REGION.to_string(), region);
        settings.insert(S3_PATH_STYLE_ACCESS.to_string(), s3.path_style.to_string());
        let credentials = match (&s3.access_key_id, &s3.secret_access_key) {
            (Some(id), Some(secret)) if config.rest_catalog.vend_credentials => {
                let mut keys = HashMap::from([
                    (S3_ACCESS_KEY_ID.to_string(), id.clone()),
                    (S3_SECRET_ACCESS_KEY.to_string(), secret.clone()),
                ]);
                if let Some(token) = &s3.session_token {
                    keys.insert(S3_SESSION_TOKEN.to_string(), token.clone());
                }
                Some(keys)
            }
            _ => None,
        };
        Self {
            settings,
            credentials,
        }
    }

    /// The settings every client gets (`GET /v1/config` `defaults`).
    pub fn settings(&self) -> &HashMap<String, String> {
        &self.settings
    }

    /// Whether credentials are handed out at all.
    pub fn vends_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Credentials for a request: `Some` when vending is on and the request asks for it.
    fn credentials_for(&self, headers: &HeaderMap) -> Option<&HashMap<String, String>> {
        let asked = headers
            .get_all(ACCESS_DELEGATION_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| m.trim().eq_ignore_ascii_case(VENDED_CREDENTIALS));
        self.credentials.as_ref().filter(|_| asked)
    }

    /// A table's `config` in `loadTable` (and create/register): the settings, plus the
    /// credentials when vended. Only for tables on S3: a local table's files need none.
    pub(crate) fn table_config(&self, table_location: &str, headers: &HeaderMap) -> HashMap<String, String> {
        if !is_s3(table_location) {
            return HashMap::new();
        }
        let mut config = self.settings.clone();
        if let Some(keys) = self.credentials_for(headers) {
            config.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        config
    }

    /// The table's `storage-credentials`: one entry whose prefix is the table's location.
    pub(crate) fn storage_credentials(
        &self,
        table_location: &str,
        headers: &HeaderMap,
    ) -> Option<Vec<iceberg_catalog_rest::StorageCredential>> {
        if !is_s3(table_location) {
            return None;
        }
        let keys = self.credentials_for(headers)?;
        Some(vec![iceberg_catalog_rest::StorageCredential {
            prefix: table_location.trim_end_matches('/').to_string(),
            config: keys.clone(),
        }])
    }
}

fn is_s3(location: &str) -> bool {
    location.starts_with("s3://") || location.starts_with("s3a://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let overrides: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(
            std::path::Path::new("/nonexistent-tarn-dir"),
            None,
            HashMap::<String, String>::new(),
            &overrides,
        )
        .unwrap()
    }

    fn asking() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCESS_DELEGATION_HEADER, "vended-credentials".parse().unwrap());
        h
    }

    const S3: &[(&str, &str)] = &[
        ("storage.warehouse", "s3://lake/wh"),
        ("storage.s3.endpoint", "http://127.0.0.1:9000"),
        ("storage.s3.region", "eu-west-1"),
        ("storage.s3.path_style", "true"),
        ("storage.s3.access_key_id", "AK"),
        ("storage.s3.secret_access_key", "SK"),
    ];

    #[test]
    fn a_local_warehouse_has_nothing_to_tell() {
        let access = StorageAccess::from_config(&config(&[]));
        assert!(access.settings().is_empty());
        assert!(access.table_config("file:///w/t", &asking()).is_empty());
    }

    #[test]
    fn s3_settings_always_keys_only_when_switched_on_and_asked() {
        let access = StorageAccess::from_config(&config(S3));
        assert_eq!(access.settings()["s3.endpoint"], "http://127.0.0.1:9000");
        assert_eq!(access.settings()["s3.region"], "eu-west-1");
        assert_eq!(access.settings()["client.region"], "eu-west-1");
        assert_eq!(access.settings()["s3.path-style-access"], "true");
        assert!(!access.vends_credentials());
        let table = access.table_config("s3://lake/wh/ns/t", &asking());
        assert!(!table.contains_key("s3.secret-access-key"), "{table:?}");
        assert!(
            access
                .storage_credentials("s3://lake/wh/ns/t", &asking())
                .is_none()
        );

        let mut on = S3.to_vec();
        on.push(("rest_catalog.vend_credentials", "true"));
        let access = StorageAccess::from_config(&config(&on));
        assert!(access.vends_credentials());
        assert!(!access.settings().contains_key("s3.secret-access-key"));
        let table = access.table_config("s3://lake/wh/ns/t", &asking());
        assert_eq!(table["s3.access-key-id"], "AK");
        assert_eq!(table["s3.secret-access-key"], "SK");
        let creds = access
            .storage_credentials("s3://lake/wh/ns/t/", &asking())
            .unwrap();
        assert_eq!(creds[0].prefix, "s3://lake/wh/ns/t");
        // Not asked: not vended.
        let table = access.table_config("s3://lake/wh/ns/t", &HeaderMap::new());
        assert!(!table.contains_key("s3.secret-access-key"));
        assert!(
            access
                .storage_credentials("s3://lake/wh/ns/t", &HeaderMap::new())
                .is_none()
        );
        // A local table of the same catalog: none.
        assert!(access.table_config("file:///w/t", &asking()).is_empty());
    }
}
