//! The help text of every metric tarn exports, registered with the recorder when it is
//! installed, so that `/metrics` carries a `# HELP` line for each (Prometheus' linter,
//! `promtool check metrics`, rejects metrics without one) and the dashboards and alerts in
//! `deploy/` can say what they show.
//!
//! The metrics themselves are recorded where the work happens (`metrics::counter!` and
//! friends in each crate); this table only describes them. A metric recorded without an entry
//! here is exported without help text: add its line when adding a metric.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// A metric's kind, as the recorder registers it.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric: name, kind, unit (or `None` for a count), help text.
const METRICS: &[(&str, Kind, Option<Unit>, &str)] = &[
    // Federation: queries sent to external catalogs (docs/federation.md).
    (
        "tarn_federation_queries_total",
        Counter,
        None,
        "Queries sent to an external catalog's database, by catalog.",
    ),
    (
        "tarn_federation_cancelled_total",
        Counter,
        None,
        "Remote queries cancelled on an external catalog's database because their statement ended early (cancelled, timed out, client gone), by catalog.",
    ),
    // SQL over the Postgres wire protocol.
    (
        "tarn_pgwire_connections_total",
        Counter,
        None,
        "Postgres wire connections accepted.",
    ),
    (
        "tarn_pgwire_connections_open",
        Gauge,
        None,
        "Postgres wire connections open now.",
    ),
    (
        "tarn_pgwire_connections_refused_total",
        Counter,
        None,
        "Postgres wire connections refused because server.max_connections were open.",
    ),
    (
        "tarn_pgwire_queries_total",
        Counter,
        None,
        "Simple-protocol query messages received (one may hold several statements).",
    ),
    (
        "tarn_pgwire_statements_total",
        Counter,
        None,
        "Statements answered by tarn's own catalog emulation, by kind.",
    ),
    (
        "tarn_pgwire_errors_total",
        Counter,
        None,
        "Statements that ended in an error sent to the client.",
    ),
    (
        "tarn_sql_statement_duration_seconds",
        Histogram,
        Some(Unit::Seconds),
        "SQL statements on the Postgres wire endpoint by kind (select, insert, update, delete, merge, copy, ddl, set, transaction, explain, other): seconds from receipt until the last row is sent.",
    ),
    (
        "tarn_sql_rows_returned_total",
        Counter,
        None,
        "Rows sent to Postgres wire clients, by statement kind.",
    ),
    (
        "tarn_sql_errors_total",
        Counter,
        None,
        "Statements that failed on the Postgres wire endpoint, by SQLSTATE code and its two-character class.",
    ),
    (
        "tarn_governance_decisions_total",
        Counter,
        None,
        "Authorization decisions of the governance policy (SQL statements and REST catalog requests), by result: allow or deny.",
    ),
    (
        "tarn_pgwire_auth_failures_total",
        Counter,
        None,
        "Postgres wire logins refused (wrong password, unknown user, bad token).",
    ),
    (
        "tarn_pgwire_cancel_requests_total",
        Counter,
        None,
        "Cancel requests received for running queries.",
    ),
    (
        "tarn_pgwire_statement_panics_total",
        Counter,
        None,
        "Statements that ended with XX000 because planning or running them panicked (a bug; the connection stays).",
    ),
    // The web console (docs/console.md).
    (
        "tarn_console_logins_total",
        Counter,
        None,
        "Logins to the web console, by method (password, oidc) and outcome (ok, refused).",
    ),
    (
        "tarn_console_statements_total",
        Counter,
        None,
        "SQL statements run from the web console's editor, charts and downloads, by outcome (ok, error).",
    ),
    // HTTP and TLS.
    (
        "tarn_http_auth_failures_total",
        Counter,
        None,
        "HTTP requests refused for a missing or invalid bearer token.",
    ),
    (
        "tarn_http_tls_handshake_failures_total",
        Counter,
        None,
        "HTTPS connections whose TLS handshake failed.",
    ),
    (
        "tarn_tls_reloads_total",
        Counter,
        None,
        "Reloads of the server certificate, by outcome (reloaded, failed).",
    ),
    (
        "tarn_tls_certificate_expiry_seconds",
        Gauge,
        Some(Unit::Seconds),
        "When the served certificate expires, as a Unix time in seconds.",
    ),
    (
        "tarn_auth_tokens_total",
        Counter,
        None,
        "Bearer tokens checked against the OIDC issuer, by outcome.",
    ),
    (
        "tarn_auth_issuer_errors_total",
        Counter,
        None,
        "Failures to reach the OIDC issuer or read its keys.",
    ),
    // The lake.
    (
        "tarn_commits_total",
        Counter,
        None,
        "Iceberg commits that succeeded, by table.",
    ),
    (
        "tarn_commit_conflicts_total",
        Counter,
        None,
        "Iceberg commit attempts that lost to another writer and were retried or failed, by table.",
    ),
    (
        "tarn_data_files_written_total",
        Counter,
        None,
        "Parquet data files written by SQL writes.",
    ),
    (
        "tarn_rows_written_total",
        Counter,
        None,
        "Rows written to lake tables by SQL writes.",
    ),
    (
        "tarn_position_deletes_written_total",
        Counter,
        None,
        "Position-delete rows written by UPDATE, DELETE and MERGE, by table.",
    ),
    (
        "tarn_maintenance_compactions_total",
        Counter,
        None,
        "Compactions committed by maintenance, by table.",
    ),
    (
        "tarn_maintenance_files_rewritten_total",
        Counter,
        None,
        "Data files replaced by compaction, by table.",
    ),
    (
        "tarn_maintenance_delete_files_removed_total",
        Counter,
        None,
        "Delete files folded into rewritten data files by compaction, by table.",
    ),
    (
        "tarn_maintenance_bytes_rewritten_total",
        Counter,
        Some(Unit::Bytes),
        "Bytes of data files replaced by compaction, by table.",
    ),
    (
        "tarn_maintenance_conflicts_total",
        Counter,
        None,
        "Maintenance commits that lost to another writer, by table and operation.",
    ),
    (
        "tarn_maintenance_snapshots_expired_total",
        Counter,
        None,
        "Snapshots expired by maintenance, by table.",
    ),
    (
        "tarn_maintenance_files_deleted_total",
        Counter,
        None,
        "Files deleted by maintenance, by table and operation (expire, orphans).",
    ),
    (
        "tarn_maintenance_bytes_deleted_total",
        Counter,
        Some(Unit::Bytes),
        "Bytes of files deleted by maintenance, by table and operation (expire, orphans).",
    ),
    // The Iceberg REST catalog.
    (
        "tarn_catalog_requests_total",
        Counter,
        None,
        "Iceberg REST catalog requests answered, by route and HTTP status.",
    ),
    (
        "tarn_catalog_request_duration_seconds",
        Histogram,
        Some(Unit::Seconds),
        "Time to answer an Iceberg REST catalog request, by route.",
    ),
    // Change data capture.
    (
        "tarn_cdc_events_total",
        Counter,
        None,
        "Change events read from the source (inserts, updates, deletes).",
    ),
    (
        "tarn_cdc_events_per_second",
        Gauge,
        None,
        "Change events per second over the last report interval.",
    ),
    (
        "tarn_cdc_commits_total",
        Counter,
        None,
        "Lake commits made by the CDC pipeline, by table.",
    ),
    (
        "tarn_cdc_commit_seconds",
        Histogram,
        Some(Unit::Seconds),
        "Time of one CDC flush: writing the buffered changes and committing them.",
    ),
    (
        "tarn_cdc_maintenance_rounds_total",
        Counter,
        None,
        "Rounds of a CDC writer's automatic maintenance run in the background, by pipeline and outcome (ok, error).",
    ),
    (
        "tarn_cdc_maintenance_round_seconds",
        Histogram,
        Some(Unit::Seconds),
        "Time of one round of a CDC writer's background maintenance (compaction, expiry, orphans of its tables), by pipeline.",
    ),
    (
        "tarn_cdc_lag_seconds",
        Gauge,
        Some(Unit::Seconds),
        "Seconds the lake is behind the source: at each commit, from the source commit of the last change committed until that lake commit; every second between commits, the age of the oldest change received and not yet committed (0 when the lake holds everything received).",
    ),
    (
        "tarn_cdc_lag_bytes",
        Gauge,
        Some(Unit::Bytes),
        "WAL bytes received from PostgreSQL but not yet committed to the lake and acknowledged; set at each acknowledgement and every second.",
    ),
    (
        "tarn_cdc_acknowledged_lsn",
        Gauge,
        None,
        "The WAL position (LSN) acknowledged to PostgreSQL: it may free WAL before it.",
    ),
    (
        "tarn_cdc_table_lsn",
        Gauge,
        None,
        "The WAL position (LSN) each lake table holds changes up to, by table.",
    ),
    (
        "tarn_cdc_table_resolved_seconds",
        Gauge,
        Some(Unit::Seconds),
        "The CockroachDB resolved time each lake table holds changes up to, as a Unix time in seconds, by table.",
    ),
    (
        "tarn_cdc_restarts_total",
        Counter,
        None,
        "Restarts of the CDC pipeline after an error.",
    ),
    (
        "tarn_cdc_snapshot_rows_total",
        Counter,
        None,
        "Rows copied by initial snapshots, by table.",
    ),
    (
        "tarn_cdc_tables_stopped_total",
        Counter,
        None,
        "Tables whose streaming stopped on a schema change tarn cannot apply.",
    ),
    (
        "tarn_cdc_unresolved_toast_total",
        Counter,
        None,
        "Updates whose unchanged TOASTed values could not be filled in from the lake.",
    ),
    (
        "tarn_cdc_webhook_requests_total",
        Counter,
        None,
        "CockroachDB changefeed webhook requests, by outcome (accepted, malformed).",
    ),
    (
        "tarn_cdc_changefeed_resolved_age_seconds",
        Gauge,
        Some(Unit::Seconds),
        "Time since the CockroachDB changefeed last sent a resolved timestamp.",
    ),
    (
        "tarn_cdc_changefeed_duplicates_total",
        Gauge,
        None,
        "Duplicate changefeed rows skipped since the pipeline started.",
    ),
    (
        "tarn_cdc_changefeed_stale_total",
        Gauge,
        None,
        "Changefeed rows older than a table's resolved time skipped since the pipeline started.",
    ),
    // Kafka.
    (
        "tarn_kafka_records_total",
        Counter,
        None,
        "Kafka records consumed, by topic and partition.",
    ),
    (
        "tarn_kafka_records_per_second",
        Gauge,
        None,
        "Kafka records consumed per second over the last report interval.",
    ),
    (
        "tarn_kafka_consumer_lag",
        Gauge,
        None,
        "Records between tarn's position and the partition's end, by topic and partition.",
    ),
    (
        "tarn_kafka_position",
        Gauge,
        None,
        "The next offset tarn reads, by topic and partition.",
    ),
    (
        "tarn_kafka_high_watermark",
        Gauge,
        None,
        "The partition's end offset as the broker last reported it, by topic and partition.",
    ),
    (
        "tarn_kafka_dead_letters_total",
        Counter,
        None,
        "Records sent to the dead-letter topic, by source topic.",
    ),
    (
        "tarn_kafka_rebalances_total",
        Counter,
        None,
        "Consumer-group rebalances this worker went through.",
    ),
    (
        "tarn_cdc_kafka_events_total",
        Counter,
        None,
        "Change events published to Kafka and committed.",
    ),
    (
        "tarn_cdc_kafka_transactions_total",
        Counter,
        None,
        "Kafka transactions committed by the publisher.",
    ),
    (
        "tarn_kafka_archive_records_total",
        Counter,
        None,
        "Kafka records written to the raw archive.",
    ),
    (
        "tarn_kafka_archive_bytes_total",
        Counter,
        Some(Unit::Bytes),
        "Bytes of Kafka records written to the raw archive.",
    ),
    (
        "tarn_kafka_archive_files_total",
        Counter,
        None,
        "Files written to the raw archive.",
    ),
    (
        "tarn_kafka_archive_lag_seconds",
        Gauge,
        Some(Unit::Seconds),
        "Age of the newest record the raw archive holds.",
    ),
    // Governance and metadata.
    (
        "tarn_audit_records_total",
        Counter,
        None,
        "Audit records written.",
    ),
    (
        "tarn_audit_dropped_total",
        Counter,
        None,
        "Audit records lost because the audit writer fell behind.",
    ),
    (
        "tarn_datahub_aspects_sent_total",
        Counter,
        None,
        "Metadata aspects pushed to DataHub.",
    ),
    (
        "tarn_datahub_errors_total",
        Counter,
        None,
        "Failed pushes to DataHub.",
    ),
    // The scheduler (`tarn serve` with [jobs]).
    (
        "tarn_job_runs_total",
        Counter,
        None,
        "Job runs that ended, by job and state (success, failed).",
    ),
    (
        "tarn_job_tries_total",
        Counter,
        None,
        "Task tries that ended, by job and state (success, failed).",
    ),
    (
        "tarn_job_sla_misses_total",
        Counter,
        None,
        "Job runs that missed their SLA, by job.",
    ),
    (
        "tarn_scheduler_active",
        Gauge,
        None,
        "1 in the replica that holds the scheduler lease, 0 in the others.",
    ),
    (
        "tarn_job_runs_queued",
        Gauge,
        None,
        "Runs queued and not started after the scheduler's last tick (their job at max_active_runs, or not yet claimed); 0 on standby replicas, so a sum over replicas counts the queue once.",
    ),
    // Bridge reads: queries over a pipeline's tables with its uncommitted changes (docs/cdc.md).
    (
        "tarn_query_bridge_reads_total",
        Counter,
        None,
        "Scans of tables a pipeline in this process writes, by result: merged (the last commit plus the pending changes, tarn.read_mode = latest), committed (the session reads the lake only), fallback (latest asked, but the pending state could not be merged; the last commit was read).",
    ),
    // Workload management of SQL statements (docs/workload.md).
    (
        "tarn_query_running",
        Gauge,
        None,
        "SQL statements running now (admitted by workload management).",
    ),
    (
        "tarn_query_queued",
        Gauge,
        None,
        "SQL statements waiting for a slot in the admission queue.",
    ),
    (
        "tarn_query_max_concurrent",
        Gauge,
        None,
        "The limit on SQL statements running at once (query.max_concurrent).",
    ),
    (
        "tarn_query_queue_wait_seconds",
        Histogram,
        Some(Unit::Seconds),
        "How long SQL statements waited in the admission queue.",
    ),
    (
        "tarn_query_rejected_total",
        Counter,
        None,
        "SQL statements refused by admission control (queue full or queue timeout, SQLSTATE 53300).",
    ),
    (
        "tarn_query_memory_bytes",
        Gauge,
        Some(Unit::Bytes),
        "Memory the running SQL statements hold from the shared budget.",
    ),
    (
        "tarn_query_memory_limit_bytes",
        Gauge,
        Some(Unit::Bytes),
        "The memory budget of all SQL statements together (query.memory_limit).",
    ),
    (
        "tarn_query_memory_exhausted_total",
        Counter,
        None,
        "SQL statements that failed because they could not fit in the memory budget (SQLSTATE 53200).",
    ),
    (
        "tarn_query_spills_total",
        Counter,
        None,
        "Spill files SQL operators wrote to query.spill_dir.",
    ),
    (
        "tarn_query_spilled_bytes_total",
        Counter,
        Some(Unit::Bytes),
        "Bytes SQL operators spilled to query.spill_dir.",
    ),
    (
        "tarn_query_replanned_total",
        Counter,
        None,
        "SQL statements planned again with sort-merge joins after a hash join ran out of memory.",
    ),
    (
        "tarn_query_timeouts_total",
        Counter,
        None,
        "SQL statements cancelled by statement_timeout (SQLSTATE 57014).",
    ),
    (
        "tarn_query_cancelled_total",
        Counter,
        None,
        "SQL statements cancelled by a cancel request or pg_cancel_backend.",
    ),
    (
        "tarn_query_idle_in_transaction_closed_total",
        Counter,
        None,
        "Connections closed by idle_in_transaction_session_timeout.",
    ),
];

/// The process metrics `/metrics` appends after tarn's own, under the names Prometheus'
/// client libraries use (`process_*`, read from `/proc/self`): name, type, help.
pub const PROCESS: &[(&str, &str, &str)] = &[
    (
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time the process used, seconds.",
    ),
    (
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process, bytes.",
    ),
    (
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory of the process, bytes.",
    ),
    (
        "process_open_fds",
        "gauge",
        "File descriptors the process has open.",
    ),
    (
        "process_max_fds",
        "gauge",
        "The process's limit on open file descriptors (soft limit).",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "When the process started, seconds since the Unix epoch.",
    ),
    ("process_threads", "gauge", "Threads of the process."),
];

/// The names of every metric described here.
pub fn names() -> impl Iterator<Item = &'static str> {
    METRICS.iter().map(|m| m.0)
}

/// Registers the help text of every metric with the installed recorder.
pub fn describe_all() {
    for &(name, kind, unit, help) in METRICS {
        match (kind, unit) {
            (Counter, Some(unit)) => describe_counter!(name, unit, help),
            (Counter, None) => describe_counter!(name, help),
            (Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (Gauge, None) => describe_gauge!(name, help),
            (Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Histogram, None) => describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow Prometheus' conventions: tarn_ prefix, snake case, `_total` on counters
    /// only, base units in the name of a unit-bearing metric.
    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, unit, help) in METRICS {
            assert!(seen.insert(name), "{name} is listed twice");
            assert!(name.starts_with("tarn_"), "{name}: no tarn_ prefix");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}: not snake case"
            );
            assert!(
                help.ends_with('.') && help.len() > 20,
                "{name}: help text {help:?}"
            );
            // Two CockroachDB gauges keep their historical _total names (they are totals
            // since the pipeline started, reset on restart).
            let legacy = name.starts_with("tarn_cdc_changefeed_") && name.ends_with("_total");
            if matches!(kind, Counter) {
                assert!(name.ends_with("_total"), "{name}: a counter without _total");
            } else if !legacy {
                assert!(!name.ends_with("_total"), "{name}: _total on a non-counter");
            }
            match unit {
                Some(Unit::Seconds) => {
                    assert!(name.contains("_seconds"), "{name}: unit seconds not in the name")
                }
                Some(Unit::Bytes) => assert!(name.contains("_bytes"), "{name}: unit bytes not in the name"),
                _ => {}
            }
        }
    }
}
