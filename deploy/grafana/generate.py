"""Writes tarn's Grafana dashboards (dashboards/*.json) from the panel lists below.

    python3 deploy/grafana/generate.py

The JSON files are checked in (Grafana's provisioning and "Import dashboard" read them); edit
the lists here and run this again rather than editing the JSON. Each dashboard takes its
Prometheus data source from the variable `datasource` and filters by the `job` and
`instance` labels of deploy/prometheus/prometheus.yml. The integration test
crates/tarn-server/tests/it/observability.rs checks every query: it parses as PromQL (a real
Prometheus answers it) and every tarn metric it names is on a live /metrics of tarn.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).parent
SEL = 'job=~"$job", instance=~"$instance"'


def panel(title, exprs, unit="short", kind="timeseries", description="", legend=None):
    """A panel; `exprs` is a list of (PromQL, legend) pairs."""
    return {
        "title": title,
        "type": kind,
        "description": description,
        "unit": unit,
        "targets": [{"expr": e, "legend": l} for e, l in exprs],
    }


def row(title):
    return {"row": title}


DASHBOARDS = {
    "tarn-overview": (
        "tarn: overview",
        "Is tarn up, how fresh is the lake, how busy is SQL, do commits go through.",
        [
            row("Health"),
            panel("Targets up", [(f'sum(up{{{SEL}}})', "up")], kind="stat",
                  description="tarn processes answering Prometheus' scrapes."),
            panel("Lake freshness (CDC lag)", [(f'max(tarn_cdc_lag_seconds{{{SEL}}})', "lag")], unit="s", kind="stat",
                  description="How far the lake is behind its CDC source; the freshness SLO is 5 minutes."),
            panel("Open SQL connections", [(f'sum(tarn_pgwire_connections_open{{{SEL}}})', "open")], kind="stat"),
            panel("Commits per second", [(f'sum(rate(tarn_commits_total{{{SEL}}}[$__rate_interval]))', "commits/s")],
                  unit="ops", kind="stat"),
            row("Load"),
            panel("SQL queries and errors", [
                (f'sum(rate(tarn_pgwire_queries_total{{{SEL}}}[$__rate_interval]))', "queries/s"),
                (f'sum(rate(tarn_pgwire_errors_total{{{SEL}}}[$__rate_interval]))', "errors/s"),
            ], unit="ops"),
            panel("CDC events per second", [(f'sum(rate(tarn_cdc_events_total{{{SEL}}}[$__rate_interval]))', "events/s")],
                  unit="ops"),
            panel("Rows written by SQL", [(f'sum(rate(tarn_rows_written_total{{{SEL}}}[$__rate_interval]))', "rows/s")],
                  unit="rowsps"),
            panel("Commit conflicts", [(f'sum by (table) (rate(tarn_commit_conflicts_total{{{SEL}}}[$__rate_interval]))', "{{table}}")],
                  unit="ops", description="Commit attempts that lost to another writer and were retried."),
        ],
    ),
    "tarn-cdc-kafka": (
        "tarn: CDC and Kafka",
        "Change data capture from PostgreSQL/CockroachDB into the lake, and Kafka consumers.",
        [
            row("CDC"),
            panel("Lag behind the source", [(f'max by (instance) (tarn_cdc_lag_seconds{{{SEL}}})', "{{instance}}")], unit="s",
                  description="Age of the newest change the lake holds. Alerts: TarnCdcLagHigh, freshness SLO burn."),
            panel("WAL received, not yet committed", [(f'max by (instance) (tarn_cdc_lag_bytes{{{SEL}}})', "{{instance}}")],
                  unit="bytes"),
            panel("Change events", [(f'sum by (instance) (rate(tarn_cdc_events_total{{{SEL}}}[$__rate_interval]))', "{{instance}}")],
                  unit="ops"),
            panel("Flush time (quantiles)", [(f'max by (quantile) (tarn_cdc_commit_seconds{{{SEL}}})', "p{{quantile}}")], unit="s",
                  description="Time to write and commit one flush of buffered changes."),
            panel("Lake commits by table", [(f'sum by (table) (rate(tarn_cdc_commits_total{{{SEL}}}[$__rate_interval]))', "{{table}}")],
                  unit="ops"),
            panel("Pipeline restarts", [(f'sum by (instance) (increase(tarn_cdc_restarts_total{{{SEL}}}[$__range]))', "{{instance}}")],
                  kind="stat"),
            row("Source database"),
            panel("WAL retained by tarn's slots", [(
                'pg_replication_slot_slot_current_wal_lsn{slot_name=~"tarn_.*"} '
                '- on (instance, slot_name, slot_type) pg_replication_slot_slot_confirmed_flush_lsn{slot_name=~"tarn_.*"}',
                "{{slot_name}}")], unit="bytes",
                description="From postgres_exporter. Alerts: TarnReplicationSlotWalRetained, TarnReplicationSlotInactive."),
            panel("Slot active", [('pg_replication_slot_slot_is_active{slot_name=~"tarn_.*"}', "{{slot_name}}")], kind="stat"),
            row("Kafka"),
            panel("Consumer lag (brokers' view)", [('sum by (consumergroup, topic) (kafka_consumergroup_lag{consumergroup=~"tarn.*"})',
                                                   "{{consumergroup}} {{topic}}")],
                  description="From kafka_exporter; KEDA scales the consumer workers on the same lag."),
            panel("Consumer lag (workers' view)", [(f'sum by (topic) (tarn_kafka_consumer_lag{{{SEL}}})', "{{topic}}")]),
            panel("Records consumed", [(f'sum by (topic) (rate(tarn_kafka_records_total{{{SEL}}}[$__rate_interval]))', "{{topic}}")],
                  unit="ops"),
            panel("Dead letters", [(f'sum by (topic) (increase(tarn_kafka_dead_letters_total{{{SEL}}}[$__range]))', "{{topic}}")],
                  kind="stat"),
        ],
    ),
    "tarn-sql": (
        "tarn: SQL",
        "The Postgres wire endpoint and the Iceberg REST catalog.",
        [
            row("Postgres wire"),
            panel("Connections", [
                (f'sum(tarn_pgwire_connections_open{{{SEL}}})', "open"),
                (f'sum(rate(tarn_pgwire_connections_total{{{SEL}}}[$__rate_interval]))', "accepted/s"),
            ]),
            panel("Queries", [(f'sum by (instance) (rate(tarn_pgwire_queries_total{{{SEL}}}[$__rate_interval]))', "{{instance}}")],
                  unit="ops"),
            panel("Error ratio", [(
                f'sum(rate(tarn_pgwire_errors_total{{{SEL}}}[$__rate_interval])) '
                f'/ clamp_min(sum(rate(tarn_pgwire_queries_total{{{SEL}}}[$__rate_interval])), 1e-9)', "errors/queries")],
                unit="percentunit"),
            panel("Login failures", [(f'sum(increase(tarn_pgwire_auth_failures_total{{{SEL}}}[$__range]))', "failures")], kind="stat"),
            panel("Statement latency p99 by kind", [(
                f'histogram_quantile(0.99, sum by (le, kind) (rate(tarn_sql_statement_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))',
                "{{kind}}")], unit="s", description="From receipt until the last row is sent."),
            panel("Rows returned", [(f'sum by (kind) (rate(tarn_sql_rows_returned_total{{{SEL}}}[$__rate_interval]))', "{{kind}}")],
                  unit="rowsps"),
            panel("Errors by SQLSTATE class", [(f'sum by (class) (rate(tarn_sql_errors_total{{{SEL}}}[$__rate_interval]))', "{{class}}")],
                  unit="ops", description="42: syntax or access, 40: serialization, 53: resources, 57: cancelled, XX: internal."),
            row("Process"),
            panel("CPU", [(f'sum by (instance) (rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval]))', "{{instance}}")],
                  unit="percentunit", description="Cores busy (1 = one core)."),
            panel("Resident memory", [(f'process_resident_memory_bytes{{{SEL}}}', "{{instance}}")], unit="bytes"),
            panel("Open files", [
                (f'process_open_fds{{{SEL}}}', "{{instance}} open"),
                (f'process_max_fds{{{SEL}}}', "{{instance}} limit"),
            ]),
            row("Iceberg REST catalog"),
            panel("Requests by status", [(f'sum by (status) (rate(tarn_catalog_requests_total{{{SEL}}}[$__rate_interval]))', "{{status}}")],
                  unit="reqps"),
            panel("Latency p50 / p99", [
                (f'histogram_quantile(0.5, sum by (le) (rate(tarn_catalog_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50"),
                (f'histogram_quantile(0.99, sum by (le) (rate(tarn_catalog_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99"),
            ], unit="s"),
            panel("Slowest routes (p99)", [(
                f'topk(5, histogram_quantile(0.99, sum by (le, route) (rate(tarn_catalog_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval]))))',
                "{{route}}")], unit="s"),
        ],
    ),
    "tarn-lake": (
        "tarn: lake health",
        "Commits, conflicts, files written and maintenance of the Iceberg tables.",
        [
            row("Writes"),
            panel("Commits by table", [(f'sum by (table) (rate(tarn_commits_total{{{SEL}}}[$__rate_interval]))', "{{table}}")],
                  unit="ops"),
            panel("Conflicts per commit", [(
                f'sum by (table) (rate(tarn_commit_conflicts_total{{{SEL}}}[$__rate_interval])) '
                f'/ clamp_min(sum by (table) (rate(tarn_commits_total{{{SEL}}}[$__rate_interval])), 1e-9)', "{{table}}")],
                description="Alert TarnCommitConflictsHigh fires over 0.5 for 15 minutes."),
            panel("Data files written", [(f'sum(rate(tarn_data_files_written_total{{{SEL}}}[$__rate_interval]))', "files/s")],
                  unit="ops"),
            panel("Rows written", [(f'sum(rate(tarn_rows_written_total{{{SEL}}}[$__rate_interval]))', "rows/s")], unit="rowsps"),
            panel("Rows per data file", [(
                f'sum(increase(tarn_rows_written_total{{{SEL}}}[$__range])) '
                f'/ clamp_min(sum(increase(tarn_data_files_written_total{{{SEL}}}[$__range])), 1)', "rows/file")], kind="stat",
                description="Small files make reads slow: compaction (tarn maintain) merges them."),
            row("Maintenance"),
            panel("Files rewritten by compaction", [(
                f'sum by (table) (increase(tarn_maintenance_files_rewritten_total{{{SEL}}}[$__rate_interval]))', "{{table}}")]),
            panel("Snapshots expired", [(
                f'sum by (table) (increase(tarn_maintenance_snapshots_expired_total{{{SEL}}}[$__rate_interval]))', "{{table}}")]),
            panel("Bytes deleted (expiry, orphans)", [(
                f'sum by (op) (increase(tarn_maintenance_bytes_deleted_total{{{SEL}}}[$__rate_interval]))', "{{op}}")], unit="bytes"),
        ],
    ),
    "tarn-jobs": (
        "tarn: jobs",
        "The scheduler: runs by state, tries, SLA misses and which replica holds the lease.",
        [
            row("Scheduler"),
            panel("Active scheduler", [(f'tarn_scheduler_active{{{SEL}}}', "{{instance}}")], kind="stat",
                  description="1 on the replica holding the lease; exactly one should."),
            panel("Runs finished by state", [(f'sum by (state) (increase(tarn_job_runs_total{{{SEL}}}[$__rate_interval]))', "{{state}}")]),
            panel("Failed runs by job", [(
                f'sum by (job) (increase(tarn_job_runs_total{{{SEL}, state="failed"}}[$__range]))', "{{job}}")], kind="stat",
                description="Alert TarnJobRunFailed fires on each."),
            panel("Tries by state", [(f'sum by (state) (increase(tarn_job_tries_total{{{SEL}}}[$__rate_interval]))', "{{state}}")]),
            panel("SLA misses", [(f'sum by (job) (increase(tarn_job_sla_misses_total{{{SEL}}}[$__range]))', "{{job}}")], kind="stat"),
            panel("Queued runs", [(f'sum(tarn_job_runs_queued{{{SEL}}})', "queued")],
                  description="Runs waiting to start; the scheduler's KEDA trigger reads the same sum."),
        ],
    ),
}


def grafana(uid, title, description, items):
    panels, x, y, pid = [], 0, 0, 1
    for item in items:
        if "row" in item:
            if x:
                x, y = 0, y + 8
            panels.append({"id": pid, "type": "row", "title": item["row"], "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            pid, y = pid + 1, y + 1
            continue
        w, h = (6, 4) if item["type"] == "stat" else (12, 8)
        if x + w > 24:
            x, y = 0, y + 8
        targets = [{"refId": chr(ord("A") + i), "expr": t["expr"], "legendFormat": t["legend"],
                    "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                   for i, t in enumerate(item["targets"])]
        panels.append({
            "id": pid, "type": item["type"], "title": item["title"], "description": item["description"],
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": h, "w": w, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": item["unit"]}, "overrides": []},
            "options": {}, "targets": targets,
        })
        pid, x = pid + 1, x + w
    var = lambda name, query: {  # noqa: E731
        "name": name, "label": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name}, "definition": query, "includeAll": True, "multi": True,
        "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1,
    }
    return {
        "uid": uid, "title": title, "description": description, "tags": ["tarn"],
        "editable": True, "schemaVersion": 39, "version": 1, "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s", "timezone": "browser", "graphTooltip": 1,
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            var("job", "label_values(up, job)"),
            var("instance", 'label_values(up{job=~"$job"}, instance)'),
        ]},
        "annotations": {"list": []},
        "links": [{"title": "tarn dashboards", "type": "dashboards", "tags": ["tarn"], "asDropdown": True}],
        "panels": panels,
    }


if __name__ == "__main__":
    for uid, (title, description, items) in DASHBOARDS.items():
        path = HERE / "dashboards" / f"{uid}.json"
        path.write_text(json.dumps(grafana(uid, title, description, items), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(HERE)}")
