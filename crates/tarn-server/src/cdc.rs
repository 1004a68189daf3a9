//! `tarn cdc`: run, inspect and remove a change-data-capture pipeline.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use tarn_cdc::pipeline::{PipelineHandle, PipelineStatus, RunOptions, StatusReport, status_path};
use tarn_cdc::postgres::PostgresSource;
use tarn_cdc::postgres::slot;
use tarn_cdc::sink::{stopped_reason, table_position};
use tarn_core::Config;
use tarn_lake::Lake;
use tokio_util::sync::CancellationToken;

/// Change data capture from PostgreSQL (logical replication) or CockroachDB (changefeeds,
/// `cdc.source_kind = "cockroachdb"`) into Iceberg tables (config section `[cdc]`).
#[derive(Debug, Subcommand)]
pub enum CdcCommand {
    /// Stream every committed change of `cdc.source` into the lake until Ctrl-C.
    ///
    /// PostgreSQL: creates (or reuses) the publication and the replication slot
    /// `tarn_<pipeline>`, copies every table once inside the slot's exported snapshot, then
    /// commits changes every `cdc.flush.interval`. CockroachDB: copies tables without a lake
    /// position with a scan-only changefeed, then streams one changefeed (core, or webhook to
    /// tarn's HTTPS endpoint, `cdc.changefeed.sink`) and commits per resolved timestamp.
    /// Restarting resumes exactly where the lake is.
    ///
    /// With `cdc.sink = "kafka"` (section `[cdc.publish]`, a build with `--features kafka`)
    /// the changes are published to Kafka instead, as Debezium change events on one topic per
    /// table, each source transaction in one Kafka transaction (docs/kafka-publish.md);
    /// `cdc.sink = "lake+kafka"` does both from one slot.
    Run {
        /// Drop the replication slot (CockroachDB: scan every table again) and copy every
        /// table again, replacing the lake tables' contents: the recovery when the slot was
        /// lost or the changefeed's cursor fell behind the cluster's GC window.
        #[arg(long)]
        resnapshot: bool,
        /// Stop after this long, e.g. `60s` (default: run until Ctrl-C or SIGTERM).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Show the pipeline: its slot (lag, retained WAL), its tables and their positions, and
    /// the live counters of a running `tarn cdc run` or `tarn serve`.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove the pipeline's replication slot and publication from the source (CockroachDB:
    /// cancel its webhook changefeed job); the lake tables stay.
    Drop,
    /// Print the change events on a Kafka topic, decoded (tarn's own or a Debezium
    /// connector's, with or without schemas): one line per record with partition/offset,
    /// operation, table, key and row, or JSON. `--validate` checks every record against
    /// Debezium's documented envelope. Reads without joining a consumer group.
    #[cfg(feature = "kafka")]
    Tail(crate::tail::TailArgs),
    /// Print the SQL an admin runs once on a CockroachDB cluster so that the webhook
    /// changefeed can go through the external connection `cdc.changefeed.external_connection`
    /// (clusters with `changefeed.permissions.require_external_connection_sink.enabled` allow
    /// no other sink). The URI names `cdc.changefeed.webhook_url` with a fixed path and the
    /// endpoint's certificate, which tarn makes once and keeps in the data directory unless
    /// `cdc.changefeed.webhook_cert` is set.
    ExternalConnection {
        /// The SQL user tarn's changefeed runs as, granted USAGE on the connection.
        #[arg(long, default_value = "tarn_cdc")]
        user: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tarn_core::config::parse_duration("--duration", s).map_err(|e| e.to_string())
}

/// Runs a `tarn cdc` command.
pub async fn run(cmd: CdcCommand, config: Config) -> Result<ExitCode> {
    match cmd {
        CdcCommand::Run { resnapshot, duration } => {
            let lake = Lake::open(&config).await?;
            let audit = tarn_cdc::pipeline::commit_audit_log(&config, &lake)?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                crate::serve::shutdown_signal().await;
                tracing::info!("stopping: committing what is buffered");
                signal.cancel();
            });
            let mut pipeline = PipelineHandle::spawn_with(
                &config,
                lake,
                RunOptions {
                    resnapshot,
                    duration,
                    audit: audit.clone(),
                    ..RunOptions::default()
                },
                shutdown.clone(),
            );
            let archive = config.cdc.source_kind == "kafka" && config.cdc.kafka.archive;
            let noun = if archive { "records archived" } else { "changes" };
            let progress = tokio::spawn(show_progress(pipeline.status().clone(), noun, shutdown.clone()));
            let result = pipeline.finished().await;
            shutdown.cancel();
            let _ = progress.await;
            if let Some(audit) = &audit
                && let Err(e) = audit.close().await
            {
                tracing::warn!(error = %e, "cannot append the pipeline's last commits to the audit table (their log lines are written)");
            }
            result?;
            let report = pipeline.report();
            let done = if archive {
                "record(s) archived"
            } else {
                "change(s) applied"
            };
            eprintln!(
                "stopped: {} {done}; acknowledged up to {}",
                report.events_total,
                tarn_cdc::position::text_or_dash(report.acknowledged.as_ref())
            );
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "kafka")]
        CdcCommand::Tail(args) => {
            crate::tail::check(&args)?;
            crate::tail::run(args).await
        }
        CdcCommand::Status { json } => {
            status(&config, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        CdcCommand::ExternalConnection { user } => {
            print!(
                "{}",
                tarn_cdc::cockroach::external_connection_statements(&config, &user)?
            );
            Ok(ExitCode::SUCCESS)
        }
        CdcCommand::Drop if config.cdc.source_kind == "cockroachdb" => {
            match tarn_cdc::cockroach::cancel_recorded_job(&config).await? {
                Some(id) => println!("cancelled changefeed job {id}. Lake tables are kept."),
                None => println!(
                    "no changefeed job recorded (a core changefeed ends with its connection). Lake tables are kept."
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        CdcCommand::Drop if config.cdc.source_kind == "kafka" => {
            println!(
                "a Kafka pipeline keeps nothing on the source side (the lake holds its offsets; \
                 the group {} only mirrors them). Lake tables are kept.",
                config.cdc.kafka.group
            );
            Ok(ExitCode::SUCCESS)
        }
        CdcCommand::Drop => {
            let source = PostgresSource::connect(&config.cdc).await?;
            let dropped = slot::drop_slot(source.client(), source.slot_name()).await?;
            slot::drop_publication(source.client(), source.publication_name()).await?;
            println!(
                "{} replication slot {}; dropped publication {} (if it existed). Lake tables are kept.",
                if dropped { "dropped" } else { "no" },
                source.slot_name(),
                source.publication_name()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The live line of a running pipeline; `noun` names what it counts (`changes`).
async fn show_progress(status: Arc<PipelineStatus>, noun: &str, stop: CancellationToken) {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    while !stop.is_cancelled() {
        let r = status.report();
        let msg = match (status.copy_progress(), r.state.as_str()) {
            (Some((table, p)), _) => format!(
                "snapshot: copying {table}: {} rows, chunk {}/{}",
                p.rows.load(Ordering::Relaxed),
                p.chunks_done.load(Ordering::Relaxed),
                p.chunks.load(Ordering::Relaxed)
            ),
            (None, "streaming") => format!(
                "streaming: {} {noun} ({:.0}/s), acknowledged {}, lag {}",
                r.events_total,
                r.events_per_second,
                tarn_cdc::position::text_or_dash(r.acknowledged.as_ref()),
                r.lag_seconds.map_or("-".into(), |l| format!("{l:.2}s"))
            ),
            (None, "retrying") => format!("retrying: {}", r.last_error.as_deref().unwrap_or("")),
            (None, state) => state.to_string(),
        };
        bar.set_message(msg);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = stop.cancelled() => {}
        }
    }
    bar.finish_and_clear();
}

async fn status(config: &Config, json: bool) -> Result<()> {
    let live: Option<StatusReport> = std::fs::read(status_path(config))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let updated = v.get("updated_at")?.as_u64()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            (now.saturating_sub(updated) <= 5 && v.get("state")?.as_str()? != "stopped").then_some(v)
        })
        .and_then(|v| serde_json::from_value(v).ok());
    let tables = lake_positions(config).await?;
    if config.cdc.source_kind == "cockroachdb" {
        return changefeed_status(config, live, tables, json);
    }
    if config.cdc.source_kind == "kafka" {
        return kafka_status(config, live, tables, json);
    }
    let source = PostgresSource::connect(&config.cdc)
        .await
        .context("cannot reach the CDC source")?;
    let slot = source.slot_info().await?;
    let published = slot::published_tables(source.client(), source.publication_name()).await?;
    let slot_json = slot.as_ref().map(|s| {
        serde_json::json!({
            "name": s.name,
            "active_pid": s.active_pid,
            "confirmed_flush_lsn": s.confirmed_flush.map(|p| p.to_string()),
            "wal_status": s.wal_status,
            "retained_wal_bytes": s.retained_bytes,
            "lag_bytes": s.lag_bytes(),
            "invalidated": s.is_lost(),
        })
    });
    let out = serde_json::json!({
        "pipeline": config.cdc.pipeline,
        "source": source.display(),
        "publication": { "name": source.publication_name(), "tables": published },
        "slot": slot_json,
        "tables": tables,
        "running": live,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("pipeline:    {}", config.cdc.pipeline);
    println!("source:      {}", source.display());
    println!(
        "publication: {} ({} table(s))",
        source.publication_name(),
        published.len()
    );
    match &slot {
        None => println!(
            "slot:        {} does not exist (created by `tarn cdc run`)",
            source.slot_name()
        ),
        Some(s) => {
            println!(
                "slot:        {}  confirmed {}  lag {}  WAL retained {}  {}{}",
                s.name,
                s.confirmed_flush.map_or("-".into(), |p| p.to_string()),
                s.lag_bytes().map_or("-".into(), |b| format!("{b} B")),
                s.retained_bytes.map_or("-".into(), |b| format!("{b} B")),
                match s.active_pid {
                    Some(pid) => format!("active (pid {pid})"),
                    None => "inactive".into(),
                },
                if s.is_lost() {
                    "  INVALIDATED: run `tarn cdc run --resnapshot`"
                } else {
                    ""
                }
            );
        }
    }
    print_live_and_tables(&live, &tables);
    Ok(())
}

/// `tarn cdc status` of a CockroachDB pipeline: the changefeed, the live counters, the tables.
/// `tarn cdc status` of a Kafka pipeline: the topics, the group, the dead-letter topic, each
/// table's offsets (from the lake, which holds the offsets that count) and, while it runs,
/// each partition's position, end and lag (from the running pipeline's status file: the ends
/// come from its fetch responses), the consumed-records rate and the records dead-lettered.
/// The broker is not asked: the group's committed offsets follow the lake's, for monitoring
/// tools.
fn kafka_status(
    config: &Config,
    live: Option<StatusReport>,
    tables: Vec<serde_json::Value>,
    json: bool,
) -> Result<()> {
    let kafka = &config.cdc.kafka;
    if json {
        let out = serde_json::json!({
            "pipeline": config.cdc.pipeline,
            "kafka": {
                "brokers": kafka.brokers,
                "topics": kafka.topics,
                "group": kafka.group,
                "dead_letter_topic": kafka.dead_letter_topic(),
            },
            "tables": tables,
            "running": live,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("pipeline:    {}", config.cdc.pipeline);
    println!(
        "source:      Kafka {} topics {} (group {}, dead letters to {})",
        kafka.brokers,
        kafka.topics.join(", "),
        kafka.group,
        kafka.dead_letter_topic()
    );
    if let Some(r) = &live {
        println!(
            "offsets:     delivered {}  committed {}",
            tarn_cdc::position::text_or_dash(r.received.as_ref()),
            tarn_cdc::position::text_or_dash(r.acknowledged.as_ref())
        );
        println!(
            "consuming:   {} records/s, {} dead-lettered since start",
            r.records_per_second.map_or("-".into(), |n| format!("{n:.0}")),
            r.dead_letters
        );
        for p in &r.partitions {
            let known = |n: Option<i64>| n.map_or("-".to_string(), |n| n.to_string());
            println!(
                "  {}:{}  position {}  end {}  lag {}",
                p.topic,
                p.partition,
                p.position,
                known(p.end),
                known(p.lag)
            );
        }
    }
    print_live_and_tables(&live, &tables);
    Ok(())
}

fn changefeed_status(
    config: &Config,
    live: Option<StatusReport>,
    tables: Vec<serde_json::Value>,
    json: bool,
) -> Result<()> {
    let feed = &config.cdc.changefeed;
    let job = tarn_cdc::cockroach::recorded_job(config);
    let source = config.cdc.source.as_deref().map(tarn_core::config::redact_url);
    if json {
        let out = serde_json::json!({
            "pipeline": config.cdc.pipeline,
            "source": source,
            "changefeed": {
                "sink": feed.sink,
                "resolved": feed.resolved,
                "external_connection": feed.external_connection,
                "job": job,
            },
            "tables": tables,
            "running": live,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("pipeline:    {}", config.cdc.pipeline);
    println!("source:      {} (CockroachDB)", source.as_deref().unwrap_or("-"));
    println!(
        "changefeed:  {} sink{}, resolved every {}{}",
        feed.sink,
        feed.external_connection
            .as_deref()
            .map(|c| format!(" via external connection {c}"))
            .unwrap_or_default(),
        feed.resolved,
        job.map(|j| format!(", job {j}")).unwrap_or_default()
    );
    if let Some(r) = &live {
        println!(
            "resolved:    received {}  committed {}",
            tarn_cdc::position::text_or_dash(r.received.as_ref()),
            tarn_cdc::position::text_or_dash(r.acknowledged.as_ref())
        );
    }
    print_live_and_tables(&live, &tables);
    Ok(())
}

/// The captured lake tables and the position each holds.
async fn lake_positions(config: &Config) -> Result<Vec<serde_json::Value>> {
    let lake = Lake::open(config).await?;
    let ns = iceberg::NamespaceIdent::new(config.cdc.namespace.clone());
    let mut tables = Vec::new();
    if lake.namespace_exists(&ns).await? {
        for ident in lake.list_tables(&ns).await? {
            let table = lake.load_table(&ident).await?;
            let (position, commit_time) = table_position(&table, &config.cdc.pipeline);
            let Some(position) = position else { continue };
            let rows = table
                .metadata()
                .current_snapshot()
                .and_then(|s| s.summary().additional_properties.get("total-records").cloned())
                .unwrap_or_else(|| "0".into());
            tables.push(serde_json::json!({
                "table": ident.to_string(),
                "position": position,
                "source_commit_time_us": commit_time,
                "rows": rows,
                "stopped": stopped_reason(&table),
            }));
        }
    }
    Ok(tables)
}

fn print_live_and_tables(live: &Option<StatusReport>, tables: &[serde_json::Value]) {
    match live {
        Some(r) => println!(
            "running:     {}  {} changes ({:.0}/s)  lag {}  pending {}",
            r.state,
            r.events_total,
            r.events_per_second,
            r.lag_seconds.map_or("-".into(), |l| format!("{l:.2}s")),
            r.pending_events
        ),
        None => println!("running:     no (no live status in the last 5 s)"),
    }
    println!("tables:");
    if tables.is_empty() {
        println!("  (none captured yet)");
    }
    for t in tables {
        println!(
            "  {:<32} at {:<14} {:>10} rows{}",
            t["table"].as_str().unwrap_or(""),
            serde_json::from_value::<tarn_cdc::position::Position>(t["position"].clone())
                .map(|p| p.to_string())
                .unwrap_or_default(),
            t["rows"].as_str().unwrap_or(""),
            t["stopped"]
                .as_str()
                .map(|s| format!("  STOPPED: {s}"))
                .unwrap_or_default()
        );
    }
}
