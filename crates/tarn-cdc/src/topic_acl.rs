//! Topic ACLs: whether a pipeline may publish to or consume from a Kafka topic, decided by the
//! configured policy (`[policy]`) for the pipeline's principal (`cdc.principal`, with
//! `cdc.principal_roles`), with tarn's operations `PublishToTopic` and `ConsumeFromTopic` on
//! the resource `{"topic": {"name"}}` in Trino's contract otherwise.
//!
//! Checked where tarn's Kafka pipelines start — the topics `tarn ingest kafka` consumes (and
//! the dead-letter topic it publishes to), the positions topic and each table's topic of a
//! publishing pipeline before its first record — so a pipeline the policy does not allow
//! refuses to start (or to open the topic), saying which topic and principal. Without a
//! policy, everything is allowed, as for statements.
//!
//! With a policy and `[audit]` on, each decision is also a record of the audit trail
//! (`tarn_audit.events`, kind `decision`, the topic as `topic:<name>` among its tables),
//! appended before the check returns, so a pipeline refused at start leaves its record.

use std::sync::Arc;

use tarn_auth::Principal;
use tarn_core::config::Config;
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::Lake;
use tarn_policy::{Policy, PolicyError, topic_resource};
use tarn_query::audit::{AuditLog, AuditRecord, AuditSettings, RecordKind};

/// What a pipeline does with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOperation {
    /// Produces records to it.
    Publish,
    /// Reads records from it.
    Consume,
}

impl TopicOperation {
    /// The operation's name in policies.
    pub fn name(self) -> &'static str {
        match self {
            TopicOperation::Publish => "PublishToTopic",
            TopicOperation::Consume => "ConsumeFromTopic",
        }
    }
}

/// The topic decisions of one pipeline.
#[derive(Debug, Clone)]
pub struct TopicAccess {
    policy: Option<Policy>,
    principal: Principal,
    /// Where decisions are recorded, when auditing is on.
    audit: Option<Arc<AuditLog>>,
}

/// The principal a pipeline runs as: `cdc.principal` (default `pipeline:<name>`) with
/// `cdc.principal_roles`.
pub fn pipeline_principal(config: &Config) -> Principal {
    Principal::trusted(
        config
            .cdc
            .principal
            .clone()
            .unwrap_or_else(|| format!("pipeline:{}", config.cdc.pipeline)),
        config.cdc.principal_roles.clone(),
    )
}

impl TopicAccess {
    /// Decisions of `policy` (none: everything allowed) for `principal`.
    pub fn new(policy: Option<Policy>, principal: Principal) -> Self {
        Self {
            policy,
            principal,
            audit: None,
        }
    }

    /// The decisions `config` configures: its policy, for the pipeline's principal.
    pub fn from_config(config: &Config) -> Result<Self> {
        let policy = Policy::from_config(&config.policy)
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot load the policy: {e}")))?;
        Ok(Self::new(policy, pipeline_principal(config)))
    }

    /// These decisions recorded in `lake`'s audit trail too, when a policy decides them and
    /// `[audit]` is on.
    pub fn audited(mut self, config: &Config, lake: &Lake) -> Result<Self> {
        if self.policy.is_some() && config.audit.enabled {
            let settings = AuditSettings::from_config(&config.audit)?;
            self.audit = Some(AuditLog::start(lake.clone(), settings));
        }
        Ok(self)
    }

    /// The principal deciding.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// `Ok` when the principal may `operation` `topic`; a `PermissionDenied` error naming
    /// both otherwise (also when the policy cannot decide).
    pub async fn check(&self, operation: TopicOperation, topic: &str) -> Result<()> {
        let Some(policy) = &self.policy else { return Ok(()) };
        let decided = policy.check(
            &self.principal,
            operation.name(),
            Some(topic_resource(topic)),
            &format!("on Kafka topic {topic:?}"),
        );
        if let Some(audit) = &self.audit {
            let mut record = AuditRecord::new(RecordKind::Decision, &self.principal, policy.describe());
            record.statement = None;
            record.operations.push(operation.name().to_string());
            record.tables.push(format!("topic:{topic}"));
            if let Err(e) = &decided {
                record.allowed = false;
                record.reason = Some(e.to_string());
            }
            audit.record(record);
            if let Err(e) = audit.flush().await {
                tracing::warn!(error = %e, topic, "cannot append a topic decision to the audit table (its log line is written)");
            }
        }
        match decided {
            Ok(()) => {
                tracing::debug!(target: "tarn::audit", user = %self.principal.user, operation = operation.name(), topic, decision = "allow", "topic authorized");
                Ok(())
            }
            Err(e) => {
                tracing::info!(target: "tarn::audit", user = %self.principal.user, operation = operation.name(), topic, decision = "deny", reason = %e, "topic denied");
                let hint = match e {
                    PolicyError::Denied(_) => format!(
                        " (the pipeline runs as {}: set cdc.principal and cdc.principal_roles, or grant {} on the topic in the policy)",
                        self.principal,
                        operation.name()
                    ),
                    _ => String::new(),
                };
                Err(Error::new(ErrorKind::PermissionDenied, format!("{e}{hint}")))
            }
        }
    }

    /// [`Self::check`] for the topics `cdc.kafka.topics` names literally (a `^regex` is
    /// checked per matching topic when the consumer resolves it), and the dead-letter topic.
    pub async fn check_ingest(&self, config: &Config) -> Result<()> {
        let kafka = &config.cdc.kafka;
        for topic in kafka.topics.iter().filter(|t| !t.starts_with('^')) {
            self.check(TopicOperation::Consume, topic).await?;
        }
        if !kafka.archive && kafka.format != "json" {
            self.check(TopicOperation::Publish, &kafka.dead_letter_topic())
                .await?;
        }
        Ok(())
    }
}

/// The topics the pipelines of `config` use: what `tarn ingest kafka` consumes (literal names)
/// and its dead-letter topic; what a publishing pipeline writes (`<topic_prefix>.*`, a prefix)
/// and its positions topic. A name ending in `*` stands for a prefix.
pub fn configured_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    let kafka = &config.cdc.kafka;
    topics.extend(kafka.topics.iter().filter(|t| !t.starts_with('^')).cloned());
    if !topics.is_empty() {
        topics.push(kafka.dead_letter_topic());
    }
    if config.cdc.sink.contains("kafka") {
        let prefix = config
            .cdc
            .publish
            .topic_prefix
            .clone()
            .unwrap_or_else(|| config.cdc.pipeline.clone());
        topics.push(format!("{prefix}.*"));
        topics.push(config.cdc.publish.positions_topic.clone());
    }
    topics.dedup();
    topics
}

/// The broker ACLs equivalent to what `policy` grants `principals` on `topics`: one
/// `kafka-acls.sh` command line per principal, topic and operation granted (`Read` and
/// `Describe` for `ConsumeFromTopic`, plus `Read` on the consumer group `group`; `Write` and
/// `Describe` for `PublishToTopic`, plus the pipeline's transactional id). A topic ending in
/// `*` is asked of the policy as written and becomes a `prefixed` ACL.
pub fn broker_acls(
    policy: &Policy,
    principals: &[Principal],
    topics: &[String],
    bootstrap: &str,
    group: &str,
    transactional_id: &str,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for principal in principals {
        let base = format!(
            "kafka-acls.sh --bootstrap-server {bootstrap} --add --allow-principal User:{}",
            principal.user
        );
        let (mut consumes, mut publishes) = (false, false);
        for topic in topics {
            let pattern = match topic.strip_suffix('*') {
                Some(prefix) => format!("--resource-pattern-type prefixed --topic {prefix}"),
                None => format!("--topic {topic}"),
            };
            for operation in [TopicOperation::Consume, TopicOperation::Publish] {
                let allowed = policy
                    .allows(principal, operation.name(), Some(topic_resource(topic)))
                    .map_err(|e| Error::new(ErrorKind::PermissionDenied, e.to_string()))?;
                if !allowed {
                    continue;
                }
                let kafka_operation = match operation {
                    TopicOperation::Consume => {
                        consumes = true;
                        "Read"
                    }
                    TopicOperation::Publish => {
                        publishes = true;
                        "Write"
                    }
                };
                lines.push(format!(
                    "{base} --operation {kafka_operation} --operation Describe {pattern}"
                ));
            }
        }
        if consumes {
            lines.push(format!("{base} --operation Read --group {group}"));
        }
        if publishes {
            lines.push(format!(
                "{base} --operation Write --operation Describe --transactional-id {transactional_id}"
            ));
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn access(user: &str, roles: &[&str]) -> TopicAccess {
        let rego = tarn_policy::role_file::compile(
            "topics.toml",
            r#"
[roles.ingest]
topics = [{ name = "orders", allow = ["consume"] }, { name = "orders.dlq", allow = ["publish"] }]
[roles.publisher]
topics = [{ name = "shop.*", allow = ["publish"] }]
"#,
            "trino",
        )
        .unwrap();
        let policy =
            tarn_policy::RegoPolicy::from_sources(vec![("topics.rego".into(), rego)], "trino").unwrap();
        let mut config = Config::defaults(".");
        config.cdc.principal = Some(user.into());
        config.cdc.principal_roles = roles.iter().map(|r| r.to_string()).collect();
        TopicAccess::new(Some(Policy::new(Arc::new(policy))), pipeline_principal(&config))
    }

    #[tokio::test]
    async fn topic_operations_are_decided_by_the_policy_for_the_pipeline_principal() {
        let ingest = access("etl", &["ingest"]);
        ingest.check(TopicOperation::Consume, "orders").await.unwrap();
        let e = ingest.check(TopicOperation::Publish, "orders").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let message = e.to_string();
        assert!(
            message.contains("PublishToTopic") && message.contains("\"orders\"") && message.contains("etl"),
            "{message}"
        );
        let publisher = access("cdc", &["publisher"]);
        publisher
            .check(TopicOperation::Publish, "shop.public.orders")
            .await
            .unwrap();
        assert!(
            publisher
                .check(TopicOperation::Consume, "shop.public.orders")
                .await
                .is_err()
        );
        assert!(
            publisher
                .check(TopicOperation::Publish, "other.public.orders")
                .await
                .is_err()
        );
        // No role, nothing; no policy, everything.
        assert!(
            access("nobody", &[])
                .check(TopicOperation::Consume, "orders")
                .await
                .is_err()
        );
        let open = TopicAccess::new(None, pipeline_principal(&Config::defaults(".")));
        open.check(TopicOperation::Publish, "anything").await.unwrap();
        assert_eq!(open.principal().user, "pipeline:main");
    }

    #[test]
    fn broker_acls_list_what_the_policy_grants_each_principal() {
        let etl = access("etl", &["ingest"]).principal().clone();
        let cdc = access("cdc", &["publisher"]).principal().clone();
        let nobody = access("nobody", &[]).principal().clone();
        let policy = access("x", &[]).policy.unwrap();
        let topics = ["orders".to_string(), "orders.dlq".into(), "shop.*".into()];
        let lines = broker_acls(
            &policy,
            &[etl, cdc, nobody],
            &topics,
            "kafka:9092",
            "orders",
            "tarn-cdc-main",
        )
        .unwrap();
        let base = "kafka-acls.sh --bootstrap-server kafka:9092 --add --allow-principal";
        assert_eq!(
            lines,
            [
                format!("{base} User:etl --operation Read --operation Describe --topic orders"),
                format!("{base} User:etl --operation Write --operation Describe --topic orders.dlq"),
                format!("{base} User:etl --operation Read --group orders"),
                format!(
                    "{base} User:etl --operation Write --operation Describe --transactional-id tarn-cdc-main"
                ),
                format!(
                    "{base} User:cdc --operation Write --operation Describe --resource-pattern-type prefixed --topic shop."
                ),
                format!(
                    "{base} User:cdc --operation Write --operation Describe --transactional-id tarn-cdc-main"
                ),
            ]
        );
    }

    #[tokio::test]
    async fn ingest_checks_the_configured_topics_and_the_dead_letter_topic() {
        let mut config = Config::defaults(".");
        config.cdc.kafka.topics = vec!["orders".into()];
        config.cdc.kafka.group = "orders".into();
        access("etl", &["ingest"]).check_ingest(&config).await.unwrap();
        config.cdc.kafka.topics = vec!["orders".into(), "payments".into()];
        let e = access("etl", &["ingest"])
            .check_ingest(&config)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("\"payments\""), "{e}");
    }
}
