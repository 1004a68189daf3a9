//! What the stand-in cluster does for each statement it answers itself: plans and starts
//! changefeeds (checks in CockroachDB's order, errors in its words), keeps external
//! connections and cluster settings, cancels jobs.
//!
//! Error texts and SQLSTATEs are from the research notes (follow-up D and G, §9) unless a
//! comment says otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Inner;
use super::clock::{Hlc, unique_id};
use super::encode::{EnvelopeOptions, ValueOptions};
use super::history::resolve_table;
use super::jobs::{FeedSpec, Job, JobInfo, Target, run_job, save};
use super::lexer::quote_literal;
use super::options::{InitialScan, SinkClass, parse_go_duration, validate};
use super::statements::{ChangefeedStmt, SqlError, Statement};
use super::version::CockroachVersion;
use super::webhook::{WebhookSink, parse_sink_config, parse_target};

/// The client's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// User.
    pub user: String,
    /// Current database.
    pub database: String,
}

/// How a statement is answered.
pub enum Answer {
    /// CommandComplete with this tag.
    Tag(&'static str),
    /// One row `job_id`, then CommandComplete.
    JobId(i64),
    /// A sinkless changefeed to stream on this connection.
    Sinkless(Box<FeedSpec>),
}

/// A duration as Go prints it (`3s`, `500ms`, `1m30s`).
fn go_duration(d: std::time::Duration) -> String {
    let n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    if !n.is_multiple_of(1_000_000_000) {
        return if n.is_multiple_of(1_000_000) {
            format!("{}ms", n / 1_000_000)
        } else {
            format!("{n}ns")
        };
    }
    let s = n / 1_000_000_000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Cluster settings the stand-in knows, with CockroachDB's defaults for a self-hosted
/// cluster: `kv.rangefeed.enabled` false ("Any created changefeeds will error until this
/// setting is enabled", docs `create-and-configure-changefeeds.md`),
/// `changefeed.permissions.require_external_connection_sink.enabled` false (v23.1.0 release
/// notes), `feature.changefeed.enabled` true; `kv.closed_timestamp.target_duration` (3s in
/// CockroachDB) and `kv.rangefeed.enabled` start as the stand-in's options say.
pub fn default_settings(options: &super::StandInOptions) -> BTreeMap<String, String> {
    [
        (
            "kv.rangefeed.enabled",
            if options.rangefeed_enabled {
                "true"
            } else {
                "false"
            }
            .to_string(),
        ),
        (
            "changefeed.permissions.require_external_connection_sink.enabled",
            "false".to_string(),
        ),
        ("feature.changefeed.enabled", "true".to_string()),
        (
            "kv.closed_timestamp.target_duration",
            go_duration(options.closed_timestamp_lag),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `SET CLUSTER SETTING name = value` (`None`: `DEFAULT`).
pub fn set_setting(inner: &Inner, name: &str, value: Option<String>) -> Result<(), SqlError> {
    let defaults = default_settings(&inner.options);
    let Some(default) = defaults.get(name) else {
        // Wording not in the research notes.
        return Err(SqlError::new(
            "42704",
            format!("unknown cluster setting '{name}'"),
        ));
    };
    let value = value.unwrap_or_else(|| default.clone());
    if (default == "true" || default == "false") && value != "true" && value != "false" {
        return Err(SqlError::new(
            "22023",
            format!("could not parse \"{value}\" as type bool"),
        ));
    }
    if name == "kv.closed_timestamp.target_duration" {
        let nanos = parse_go_duration(&value)
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| SqlError::new("22023", format!("could not parse \"{value}\" as type interval")))?;
        inner.lag.store(nanos as u64, Ordering::Relaxed);
    }
    inner.settings.lock().unwrap().insert(name.to_string(), value);
    Ok(())
}

fn setting_on(settings: &Mutex<BTreeMap<String, String>>, name: &str) -> bool {
    settings.lock().unwrap().get(name).is_some_and(|v| v == "true")
}

/// Answers one statement.
pub async fn execute(inner: &Arc<Inner>, session: &Session, stmt: Statement) -> Result<Answer, SqlError> {
    match stmt {
        Statement::Changefeed(c) => changefeed(inner, session, c).await,
        Statement::CreateExternalConnection {
            name,
            uri,
            if_not_exists,
        } => {
            if uri.starts_with("webhook-") {
                parse_target(&uri)?;
            } else {
                return Err(SqlError::not_modelled(&format!("external connections to {uri}")));
            }
            let mut ext = inner.external.lock().unwrap();
            if ext.contains_key(&name) {
                if if_not_exists {
                    return Ok(Answer::Tag("CREATE EXTERNAL CONNECTION"));
                }
                // Wording not in the research notes.
                return Err(SqlError::uncategorized(format!(
                    "external connection with connection name {name} already exists"
                )));
            }
            ext.insert(name.clone(), uri);
            // Its creator owns it, and an owner holds every privilege on it.
            inner
                .external_usage
                .lock()
                .unwrap()
                .insert((name, session.user.clone()));
            Ok(Answer::Tag("CREATE EXTERNAL CONNECTION"))
        }
        Statement::DropExternalConnection { name } => {
            if inner.external.lock().unwrap().remove(&name).is_none() {
                return Err(SqlError::uncategorized(format!(
                    "external connection with name {name} does not exist"
                )));
            }
            Ok(Answer::Tag("DROP EXTERNAL CONNECTION"))
        }
        Statement::SetClusterSetting { name, value } => {
            set_setting(inner, &name, value)?;
            Ok(Answer::Tag("SET CLUSTER SETTING"))
        }
        Statement::CancelJob(id) => cancel_job(inner, id).await,
        Statement::GrantUsage { name, user } => {
            if !inner.external.lock().unwrap().contains_key(&name) {
                return Err(SqlError::uncategorized(format!(
                    "external connection with name {name} does not exist"
                )));
            }
            inner.external_usage.lock().unwrap().insert((name, user));
            Ok(Answer::Tag("GRANT"))
        }
    }
}

async fn cancel_job(inner: &Arc<Inner>, id: i64) -> Result<Answer, SqlError> {
    let Some(job) = inner.jobs.lock().unwrap().get(&id).cloned() else {
        return Err(SqlError::uncategorized(format!(
            "job with ID {id} does not exist"
        )));
    };
    let info = {
        let mut i = job.info.lock().unwrap();
        match i.status.as_str() {
            "canceled" | "cancel-requested" => return Ok(Answer::Tag("CANCEL JOBS")),
            "running" => {}
            other => {
                let word = if inner.options.version >= CockroachVersion::V25_2 {
                    "state"
                } else {
                    "status"
                };
                return Err(SqlError::uncategorized(format!(
                    "job with {word} {other} cannot be requested to be canceled"
                )));
            }
        }
        i.status = "canceled".into();
        i.finished = Some(SystemTime::now());
        i.clone()
    };
    job.cancel.cancel();
    save(&inner.control, &info)
        .await
        .map_err(|e| SqlError::uncategorized(format!("{e:#}")))?;
    Ok(Answer::Tag("CANCEL JOBS"))
}

/// `AS OF SYSTEM TIME` evaluation of a cursor: a decimal HLC, a negative interval, or a
/// timestamp (`pkg/sql/sem/asof`).
fn eval_cursor(raw: &str, statement_time: Hlc) -> Result<Hlc, SqlError> {
    let s = raw.trim();
    let ts = if let Some(h) = Hlc::parse_decimal(s) {
        h
    } else if let Ok(nanos) = parse_go_duration(s) {
        if nanos >= 0 {
            return Err(SqlError::uncategorized(
                "AS OF SYSTEM TIME: interval value must be negative",
            ));
        }
        Hlc::from_wall(statement_time.wall.saturating_sub((-nanos) as u64))
    } else if let Some(wall) = parse_timestamp(s) {
        Hlc::from_wall(wall)
    } else {
        return Err(SqlError::uncategorized(
            "AS OF SYSTEM TIME: value is neither timestamp, decimal, nor interval",
        ));
    };
    if ts > statement_time {
        return Err(SqlError::uncategorized(
            "AS OF SYSTEM TIME: cannot specify timestamp in the future",
        ));
    }
    Ok(ts)
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.f][Z|+00:00]` in UTC → nanoseconds since the epoch.
fn parse_timestamp(s: &str) -> Option<u64> {
    let s = s
        .trim_end_matches('Z')
        .trim_end_matches("+00:00")
        .trim_end_matches("+00");
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000_000 + nanos).ok()
}

fn gc_error(v: CockroachVersion, raw: &str, cursor: Hlc, threshold: Hlc, oid: u32) -> SqlError {
    let kv = format!(
        "batch timestamp {} must be after replica GC threshold {} (r1: /Table/{{{oid}-{}}})",
        cursor.crdb_display(),
        threshold.crdb_display(),
        oid + 1
    );
    if v >= CockroachVersion::V25_2 {
        // STMT-new rowFnLogErrors (PR #142408).
        SqlError::uncategorized(format!(
            "could not create changefeed: cursor {raw} is older than the GC threshold {}: {kv}",
            threshold.wall
        ))
        .with_hint("use a more recent cursor")
    } else {
        SqlError::uncategorized(format!("failed to resolve targets in the CHANGEFEED stmt: {kv}")).with_hint(
            format!(
                "do the targets exist at the specified cursor time {}?",
                cursor.crdb_display()
            ),
        )
    }
}

fn description(c: &ChangefeedStmt, sink: &str) -> String {
    let targets: Vec<String> = c.targets.iter().map(|t| t.join(".")).collect();
    let mut opts = c.options.clone();
    opts.sort_by(|a, b| a.0.cmp(&b.0));
    let opts: Vec<String> = opts
        .iter()
        .map(|(k, v)| match (k.as_str(), v) {
            ("webhook_auth_header", Some(_)) => format!("{k} = 'redacted'"),
            (_, Some(v)) => format!("{k} = {}", quote_literal(v)),
            (_, None) => k.clone(),
        })
        .collect();
    let mut d = format!(
        "CREATE CHANGEFEED FOR TABLE {} INTO {}",
        targets.join(", "),
        quote_literal(sink)
    );
    if !opts.is_empty() {
        d.push_str(" WITH OPTIONS (");
        d.push_str(&opts.join(", "));
        d.push(')');
    }
    d
}

async fn changefeed(inner: &Arc<Inner>, session: &Session, c: ChangefeedStmt) -> Result<Answer, SqlError> {
    let version = inner.options.version;
    let internal = |e: anyhow::Error| SqlError::uncategorized(format!("{e:#}"));
    if !setting_on(&inner.settings, "feature.changefeed.enabled") {
        return Err(SqlError::new(
            "OP000",
            "feature CHANGEFEED was disabled by the database administrator",
        ));
    }
    if c.into.as_deref() == Some("") {
        return Err(SqlError::uncategorized("omit the SINK clause for inline results"));
    }
    let scheme = c
        .into
        .as_deref()
        .map(|u| u.split("://").next().unwrap_or_default().to_string());
    let class = match scheme.as_deref() {
        None => SinkClass::Sinkless,
        Some("webhook-https" | "webhook-http") => SinkClass::Webhook,
        Some("external") => SinkClass::Sinkless,
        Some(other) => return Err(SqlError::not_modelled(&format!("{other}:// sinks"))),
    };
    let opts = validate(version, &c.options, class)?;
    if opts.initial_scan != InitialScan::Only && !setting_on(&inner.settings, "kv.rangefeed.enabled") {
        let url = if version >= CockroachVersion::V23_2 {
            format!(
                "https://www.cockroachlabs.com/docs/{}/create-and-configure-changefeeds.html#enable-rangefeeds",
                &version.release()[..5]
            )
        } else {
            format!(
                "https://www.cockroachlabs.com/docs/{}/change-data-capture.html#enable-rangefeeds-to-reduce-latency",
                &version.release()[..5]
            )
        };
        return Err(SqlError::uncategorized(format!(
            "rangefeeds require the kv.rangefeed.enabled setting. See {url}"
        )));
    }
    let statement_time = inner.capture.sync_now().await.map_err(internal)?;
    let cursor = match &opts.cursor {
        Some(raw) => Some((raw.clone(), eval_cursor(raw, statement_time)?)),
        None => None,
    };
    // Targets, resolved at the statement time (or the cursor).
    let mut targets = Vec::new();
    for parts in &c.targets {
        let written = parts.join(".");
        let (schema, table) = match parts.as_slice() {
            [t] => ("public".to_string(), t.clone()),
            [s, t] => (s.clone(), t.clone()),
            [db, s, t] if *db == session.database => (s.clone(), t.clone()),
            _ => (String::new(), String::new()),
        };
        let oid = if schema.is_empty() {
            None
        } else {
            resolve_table(&inner.control, &schema, &table)
                .await
                .map_err(internal)?
        };
        let Some(oid) = oid else {
            let mut e = SqlError::uncategorized(format!(
                "failed to resolve targets in the CHANGEFEED stmt: table \"{written}\" does not exist"
            ));
            if let Some((_, ts)) = &cursor {
                e = e.with_hint(format!(
                    "do the targets exist at the specified cursor time {}?",
                    ts.crdb_display()
                ));
            }
            return Err(e);
        };
        let full_name = format!("{}.{schema}.{table}", session.database);
        targets.push(Target {
            oid,
            topic: if opts.full_table_name {
                full_name.clone()
            } else {
                table
            },
            full_name,
        });
    }
    if let Some((raw, ts)) = &cursor {
        let threshold = inner.capture.gc_threshold();
        if *ts <= threshold {
            return Err(gc_error(version, raw, *ts, threshold, targets[0].oid));
        }
    }
    // CF authorization.go authorizeUserToCreateChangefeed (admins are never refused).
    let admin = inner.options.admin_users.contains(&session.user);
    if scheme.is_none() && !admin {
        // A core changefeed needs SELECT on every target (AUTH-mid/AUTH-new, follow-up D row
        // 4); the backing database's grants stand for CockroachDB's.
        for t in &targets {
            let ok: bool = inner
                .control
                .query_one(
                    "SELECT has_table_privilege($1, $2::oid, 'SELECT')",
                    &[&session.user, &t.oid],
                )
                .await
                .map_err(|e| internal(e.into()))?
                .get(0);
            if !ok {
                return Err(SqlError::new(
                    "42501",
                    format!(
                        "user {} requires the SELECT privilege on all target tables to be able to run a core changefeed",
                        session.user
                    ),
                ));
            }
        }
    }
    if let Some(s) = &scheme
        && s != "external"
        && !admin
        && setting_on(
            &inner.settings,
            "changefeed.permissions.require_external_connection_sink.enabled",
        )
    {
        return Err(SqlError::new(
            "42501",
            "the CHANGEFEED privilege on all tables can only be used with external connection sinks. \
             see cluster setting changefeed.permissions.require_external_connection_sink.enabled",
        ));
    }
    let env = EnvelopeOptions {
        updated: opts.updated,
        diff: opts.diff,
        mvcc_timestamp: opts.mvcc_timestamp,
        key_in_value: opts.key_in_value,
        topic_in_value: opts.topic_in_value,
        virtual_columns_null: opts.virtual_columns_null,
        values: ValueOptions {
            json_null_as_object: opts.json_null_as_object,
        },
    };
    let seq = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let id = unique_id(seq);
    let spec = FeedSpec {
        id: id as u64,
        seq,
        targets,
        opts: opts.clone(),
        env,
        statement_time,
        cursor: cursor.map(|c| c.1),
    };
    let Some(sink_uri) = c.into.clone() else {
        return Ok(Answer::Sinkless(Box::new(spec)));
    };
    // The sink: an external connection's URI, or the one given.
    let target_uri = if let Some(name) = sink_uri.strip_prefix("external://") {
        let name = name.trim_end_matches('/');
        let uri = match inner.external.lock().unwrap().get(name) {
            Some(uri) => uri.clone(),
            None => {
                return Err(SqlError::uncategorized(format!(
                    "failed to load external connection object: external connection with name {name} does not exist"
                )));
            }
        };
        // Using a connection takes USAGE on it (docs `create-external-connection.md`);
        // admins hold every privilege. Wording not in the research notes.
        let granted = inner
            .external_usage
            .lock()
            .unwrap()
            .contains(&(name.to_string(), session.user.clone()));
        if !admin && !granted {
            return Err(SqlError::new(
                "42501",
                format!(
                    "user {} does not have USAGE privilege on external_connection {name}",
                    session.user
                ),
            ));
        }
        uri
    } else {
        sink_uri.clone()
    };
    // The resolved sink's own checks (`getSink` again for an external connection).
    validate(version, &c.options, SinkClass::Webhook)?;
    let target = parse_target(&target_uri)?;
    let sink_config = parse_sink_config(opts.webhook_sink_config.as_deref())?;
    let info = JobInfo {
        id,
        description: description(&c, &sink_uri),
        user: session.user.clone(),
        sink_uri: sink_uri.clone(),
        resolved_sink: target.url.clone(),
        options: c.options.clone(),
        status: "running".into(),
        running_status: None,
        error: None,
        high_water: None,
        full_table_names: spec.targets.iter().map(|t| t.full_name.clone()).collect(),
        created: SystemTime::now(),
        finished: None,
        restarts: 0,
        requests: 0,
    };
    save(&inner.control, &info).await.map_err(internal)?;
    let job = Arc::new(Job {
        info: Mutex::new(info),
        cancel: inner.shutdown.child_token(),
        fail: Mutex::new(None),
        restart: Mutex::new(None),
        poke: tokio::sync::Notify::new(),
    });
    inner.jobs.lock().unwrap().insert(id, job.clone());
    let auth = opts.webhook_auth_header.clone();
    let timeout = opts.webhook_client_timeout;
    let make_sink = move || WebhookSink::new(target.clone(), sink_config, auth.clone(), timeout);
    tokio::spawn(run_job(
        inner.flow_cx(),
        job,
        spec,
        inner.control.clone(),
        make_sink,
        inner.options.job_retry_backoff,
    ));
    Ok(Answer::JobId(id))
}

/// A kill switch for a sinkless feed, registered while it streams.
pub fn register_sinkless(inner: &Inner, id: u64) -> CancellationToken {
    let t = CancellationToken::new();
    inner.sinkless.lock().unwrap().insert(id, t.clone());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        let now = Hlc::from_wall(1_700_000_000_000_000_000);
        assert_eq!(
            eval_cursor("1600000000000000000.0000000002", now).unwrap(),
            Hlc {
                wall: 1_600_000_000_000_000_000,
                logical: 2
            }
        );
        assert_eq!(
            eval_cursor("-10s", now).unwrap(),
            Hlc::from_wall(1_700_000_000_000_000_000 - 10_000_000_000)
        );
        assert_eq!(
            eval_cursor("2023-11-14 22:13:20", now).unwrap(),
            Hlc::from_wall(1_700_000_000_000_000_000)
        );
        assert_eq!(
            eval_cursor("1800000000000000000", now).unwrap_err().message,
            "AS OF SYSTEM TIME: cannot specify timestamp in the future"
        );
        assert!(eval_cursor("soon", now).is_err());
    }
}
