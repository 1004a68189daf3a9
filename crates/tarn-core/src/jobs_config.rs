//! The `[jobs]` section: where job files are, how the scheduler runs them, where alerts go
//! (docs/jobs.md, docs/configuration.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::parse_duration;
use crate::{Error, ErrorKind, Result};

/// The scheduler: jobs (DAGs of tasks) in TOML files, run on their cron schedules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The directory of job files (`*.toml`, one job each). Default: `DATA_DIR/jobs`.
    pub dir: Option<PathBuf>,
    /// Whether `tarn serve` runs the scheduler (one replica among those sharing the catalog
    /// database is active at a time).
    pub scheduler: bool,
    /// How often the scheduler looks for due runs and ready tasks, e.g. `1s`.
    pub tick: String,
    /// How long the active scheduler's lease (and a run's ownership) lasts without renewal; a
    /// replica takes over after it runs out, e.g. `30s`.
    pub lease_ttl: String,
    /// Tasks running at once in one process, over all runs.
    pub max_concurrent_tasks: usize,
    /// Runs created in one go when a job catches up on missed intervals.
    pub max_catchup_runs: usize,
    /// Where failures and SLA misses are sent.
    pub alerts: AlertsConfig,
}

/// Alert destinations: a Slack-compatible webhook and email over SMTP. Either, both or none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A Slack-compatible incoming webhook (`POST {"text": ...}`); redacted in `config show`.
    pub webhook_url: Option<String>,
    /// The SMTP server: `smtp://[user:password@]host[:port]` (STARTTLS with
    /// `?tls=required`), or `smtps://...` (TLS); the password is redacted in `config show`.
    pub smtp_url: Option<String>,
    /// The sender address of alert emails.
    pub email_from: String,
    /// Recipients of alert emails; none: no email.
    pub email_to: Vec<String>,
    /// How long sending one alert may take, e.g. `10s`.
    pub timeout: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            scheduler: true,
            tick: "1s".into(),
            lease_ttl: "30s".into(),
            max_concurrent_tasks: 8,
            max_catchup_runs: 100,
            alerts: AlertsConfig::default(),
        }
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            smtp_url: None,
            email_from: "tarn@localhost".into(),
            email_to: Vec::new(),
            timeout: "10s".into(),
        }
    }
}

impl JobsConfig {
    /// Checks durations, counts and URLs, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::new(ErrorKind::Config, format!("key `{key}`: {msg}")));
        let tick = parse_duration("jobs.tick", &self.tick)?;
        let ttl = parse_duration("jobs.lease_ttl", &self.lease_ttl)?;
        parse_duration("jobs.alerts.timeout", &self.alerts.timeout)?;
        if tick.is_zero() {
            return bad("jobs.tick", "must be more than 0".into());
        }
        if ttl < tick * 2 {
            return bad(
                "jobs.lease_ttl",
                format!(
                    "must be at least twice jobs.tick ({}), got {}",
                    self.tick, self.lease_ttl
                ),
            );
        }
        if self.max_concurrent_tasks == 0 {
            return bad("jobs.max_concurrent_tasks", "must be at least 1".into());
        }
        if self.max_catchup_runs == 0 {
            return bad("jobs.max_catchup_runs", "must be at least 1".into());
        }
        if let Some(url) = &self.alerts.webhook_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return bad(
                        "jobs.alerts.webhook_url",
                        "expected an http:// or https:// URL".into(),
                    );
                }
            }
        }
        if let Some(url) = &self.alerts.smtp_url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some() => {}
                _ => {
                    return bad(
                        "jobs.alerts.smtp_url",
                        format!(
                            "expected smtp://host[:port] or smtps://host[:port], got {:?}",
                            crate::config::redact_url(url)
                        ),
                    );
                }
            }
            if self.alerts.email_to.is_empty() {
                return bad(
                    "jobs.alerts.email_to",
                    "jobs.alerts.smtp_url is set but nobody is to receive alerts: list addresses".into(),
                );
            }
        }
        for (key, address) in std::iter::once(("jobs.alerts.email_from", &self.alerts.email_from))
            .chain(self.alerts.email_to.iter().map(|a| ("jobs.alerts.email_to", a)))
        {
            if !address.contains('@') {
                return bad(key, format!("expected an email address, got {address:?}"));
            }
        }
        Ok(())
    }

    /// The job files' directory.
    pub fn dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("jobs"))
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn load(overrides: &[(&str, &str)]) -> crate::Result<Config> {
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(std::path::Path::new("/nonexistent"), None, Vec::new(), &overrides)
    }

    #[test]
    fn jobs_keys_are_validated_naming_the_key_and_secrets_redacted() {
        let e = load(&[("jobs.tick", "soon")]).unwrap_err().to_string();
        assert!(e.contains("jobs.tick"), "{e}");
        let e = load(&[("jobs.tick", "10s"), ("jobs.lease_ttl", "15s")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs.lease_ttl") && e.contains("twice"), "{e}");
        let e = load(&[("jobs.alerts.smtp_url", "mail.example.com")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs.alerts.smtp_url"), "{e}");
        let e = load(&[("jobs.alerts.smtp_url", "smtp://mail:25")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs.alerts.email_to"), "{e}");
        let e = load(&[("jobs.alerts.webhok_url", "x")]).unwrap_err().to_string();
        assert!(e.contains("webhok_url"), "{e}");
        let config = load(&[
            ("jobs.alerts.smtp_url", "smtp://alerts:hunter2@mail:587"),
            ("jobs.alerts.email_to", "[\"oncall@example.com\"]"),
            (
                "jobs.alerts.webhook_url",
                "https://hooks.example.com/T000/B000/secret",
            ),
        ])
        .unwrap();
        assert_eq!(config.jobs.alerts.email_to, ["oncall@example.com"]);
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("B000/secret"),
            "{shown}"
        );
        assert_eq!(
            config.jobs.dir(std::path::Path::new("/data")),
            std::path::Path::new("/data/jobs")
        );
    }
}
