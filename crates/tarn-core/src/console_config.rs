//! The `[console]` section: the web console `tarn serve` serves under `/console`
//! (docs/console.md, docs/configuration.md).

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::config::parse_duration;

/// The web console: catalog browser, SQL editor, charts and dashboards, pipeline and jobs
/// pages, on `server.http_listen` under `/console`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve it. On by default.
    pub enabled: bool,
    /// How long a login lasts without being renewed, e.g. `8h`; after it the browser is sent
    /// back to the login page.
    pub session_ttl: String,
    /// Rows of a result shown in the SQL editor (downloads hold every row).
    pub max_rows: usize,
    /// The OIDC client id the console logs in with (authorization code + PKCE, a public
    /// client); default: `auth.oidc.audience`.
    pub oidc_client_id: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl: "8h".into(),
            max_rows: 1000,
            oidc_client_id: None,
        }
    }
}

impl ConsoleConfig {
    /// Checks the session lifetime, naming the key.
    pub fn validate(&self) -> Result<()> {
        parse_duration("console.session_ttl", &self.session_ttl)?;
        Ok(())
    }
}
