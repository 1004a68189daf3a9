//! Alerts on a task's final failure and on an SLA miss: a Slack-compatible incoming webhook
//! (`POST {"text": ...}`) and email over SMTP (`lettre`), as `jobs.alerts` configures. A
//! destination that cannot be reached is logged; it never fails the run.

use anyhow::{Context, Result, anyhow};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tarn_core::config::AlertsConfig;

/// What happened.
#[derive(Debug, Clone)]
pub struct Alert {
    /// `failure` or `sla_miss`.
    pub kind: &'static str,
    /// The job.
    pub job: String,
    /// The run.
    pub run_id: String,
    /// The task, for a failure.
    pub task: Option<String>,
    /// What to say.
    pub message: String,
}

impl Alert {
    /// The one-line subject.
    pub fn subject(&self) -> String {
        match (self.kind, &self.task) {
            ("sla_miss", _) => format!("[tarn] SLA missed: job {} run {}", self.job, self.run_id),
            (_, Some(task)) => format!(
                "[tarn] task {task} of job {} failed (run {})",
                self.job, self.run_id
            ),
            _ => format!("[tarn] job {} failed (run {})", self.job, self.run_id),
        }
    }

    /// The full text.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.subject(), self.message)
    }
}

/// Where alerts go.
#[derive(Clone)]
pub struct Alerter {
    http: reqwest::Client,
    webhook: Option<String>,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    to: Vec<Mailbox>,
}

impl Alerter {
    /// The destinations of `config`.
    pub fn new(config: &AlertsConfig) -> Result<Self> {
        let timeout = tarn_core::config::parse_duration("jobs.alerts.timeout", &config.timeout)?;
        let smtp = match &config.smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| anyhow!("key `jobs.alerts.smtp_url`: {e}"))?
                    .timeout(Some(timeout))
                    .build(),
            ),
            None => None,
        };
        let parse = |key: &str, a: &str| -> Result<Mailbox> {
            a.parse::<Mailbox>()
                .map_err(|e| anyhow!("key `{key}`: {a:?} is not an email address ({e})"))
        };
        let to = config
            .email_to
            .iter()
            .map(|a| parse("jobs.alerts.email_to", a))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .context("cannot build the webhook client")?,
            webhook: config.webhook_url.clone(),
            smtp,
            from: Some(parse("jobs.alerts.email_from", &config.email_from)?),
            to,
        })
    }

    /// Whether any destination is configured.
    pub fn is_configured(&self) -> bool {
        self.webhook.is_some() || (self.smtp.is_some() && !self.to.is_empty())
    }

    /// Sends `alert` to every destination; returns what was delivered, for the task log.
    pub async fn send(&self, alert: &Alert) -> Vec<String> {
        let mut done = Vec::new();
        if let Some(url) = &self.webhook {
            let body = serde_json::json!({ "text": alert.text() });
            match self.http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => done.push("webhook".to_string()),
                Ok(r) => {
                    tracing::warn!(status = %r.status(), job = %alert.job, "the alert webhook refused the alert")
                }
                Err(e) => {
                    tracing::warn!(error = %e, job = %alert.job, "cannot send the alert to the webhook")
                }
            }
        }
        if let (Some(smtp), Some(from)) = (&self.smtp, &self.from)
            && !self.to.is_empty()
        {
            match self.email(smtp, from, alert).await {
                Ok(()) => done.push(format!("email to {}", self.to.len())),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), job = %alert.job, "cannot send the alert email")
                }
            }
        }
        tracing::info!(kind = alert.kind, job = %alert.job, run = %alert.run_id, delivered = ?done, "alert");
        done
    }

    async fn email(
        &self,
        smtp: &AsyncSmtpTransport<Tokio1Executor>,
        from: &Mailbox,
        alert: &Alert,
    ) -> Result<()> {
        let mut builder = Message::builder().from(from.clone()).subject(alert.subject());
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .body(alert.text())
            .context("cannot build the alert email")?;
        smtp.send(message)
            .await
            .context("the SMTP server refused the alert")?;
        Ok(())
    }
}
