//! `tarn ingest kafka` (feature `kafka`): Kafka topics of Debezium change events into Iceberg
//! tables, or (`--archive`) their records unchanged into the raw archive table.
//! `tarn ingest airbyte`: an Airbyte source connector's streams into Iceberg tables
//! ([`crate::airbyte`]). `tarn ingest sql`: a query against a PostgreSQL or CockroachDB
//! database into an Iceberg table ([`crate::ingest_sql`]).
//!
//! The flags fill `[cdc.kafka]` and set `cdc.source_kind = "kafka"` over whatever the config
//! file, `TARN_*` variables and `--set` said; the pipeline then runs exactly as `tarn cdc run`
//! runs it (same progress line, same stop on Ctrl-C or SIGTERM with a last commit).

use std::process::ExitCode;
#[cfg(feature = "kafka")]
use std::time::Duration;

use anyhow::Result;
#[cfg(feature = "kafka")]
use clap::Args;
use clap::Subcommand;
use tarn_core::Config;

/// Ingest streams into the lake.
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Consume Kafka topics of Debezium change events (or plain JSON) into Iceberg tables,
    /// exactly once.
    ///
    /// Reads the topics tarn publishes or a real Debezium connector writes (PostgreSQL, MySQL,
    /// SQL Server envelopes; JSON with or without the embedded schema). Each source table
    /// (named by the events' `source` block) lands in `cdc.namespace` as
    /// `cdc.table_name` says: inserts and snapshot reads upsert by the record key, updates
    /// and deletes follow the key, tombstones are skipped, truncates empty the table. Column
    /// types come from the embedded schema; a topic without schemas gives text columns.
    ///
    /// Exactly once: every lake commit records the partitions' offsets in the tables'
    /// snapshot summaries; a restart seeks each partition to what the tables hold (then the
    /// group's committed offsets; `--start` only without lake tables). The group's offsets are committed after
    /// each lake commit, for monitoring (and KEDA's Kafka scaler).
    ///
    /// Plain JSON topics (`--format json`): each record's value, a JSON object, is appended
    /// as a row of its topic's table, keyed by partition and offset (a replay replaces
    /// itself); columns from `--column`, or inferred (a new field adds a column). A value
    /// that does not fit its column goes to the dead-letter topic.
    ///
    /// Scale-out: with `--assignment group`, workers running the same pipeline with the same
    /// `--group` split the partitions. At a rebalance each worker discards what it has not
    /// committed and goes on from the offsets the lake holds for its new partitions; every
    /// commit is fenced (a worker that committed a partition another worker took over meanwhile
    /// is refused and restarts), so no change is applied twice or lost. A record that is not a
    /// change event goes to the dead-letter topic (`--dead-letter-topic`, default
    /// GROUP.dlq, created when missing) with Kafka Connect's `__connect.errors.*` headers
    /// naming its topic, partition, offset and the reason; its partition goes on.
    ///
    /// `--metrics-listen` serves Prometheus metrics: per-partition consumer lag
    /// (`tarn_kafka_consumer_lag`), records consumed (`tarn_kafka_records_total`),
    /// dead-lettered records (`tarn_kafka_dead_letters_total`) and the pipeline's own.
    ///
    /// With `--archive`, the records are not decoded at all: every record of the topics is
    /// archived unchanged (key, value, headers, topic, partition, offset, timestamp) as
    /// Parquet files under `topic=<topic>/date=<YYYY-MM-DD>/hour=<HH>/` of one append-only
    /// Iceberg table (`cdc.kafka.archive_table`), exactly once in the same way: each append
    /// records the offsets, a restart seeks to them and deletes the files of a flush that
    /// never committed. Give the archive its own `cdc.pipeline` and `--group`.
    ///
    /// Flags override `[cdc.kafka]` of the config; see docs/kafka.md and
    /// docs/kafka-archive.md.
    #[cfg(feature = "kafka")]
    Kafka(KafkaArgs),
    /// Run an Airbyte source connector and write its streams into Iceberg tables, exactly
    /// once.
    ///
    /// The connector is any program speaking the Airbyte protocol (a Python connector from
    /// PyPI such as `source-faker`, or `docker run --rm -i IMAGE` where Docker exists); tarn
    /// runs `check`, `discover` (without `--catalog`) and `read`, and writes each stream into
    /// `NS.PREFIX<stream>`, created from the stream's JSON schema (nested objects as structs,
    /// arrays as lists, unknown or mixed shapes as JSON text; new columns are added).
    ///
    /// Sync modes of the configured catalog: full refresh overwrite (one overwrite commit at
    /// the end) or append; incremental append, or append_dedup (rows replaced by primary key
    /// through position deletes). Incremental streams commit at the connector's STATE
    /// messages with the state in the snapshot summary, and the next run passes the states
    /// back, so a killed sync resumes where the lake is: no record twice, none lost. A
    /// connector error, a malformed message or a record that does not fit its schema fails
    /// the sync naming the stream and record, with nothing pending committed.
    ///
    /// `--config CONFIG.json` after `ingest airbyte` is the connector's configuration (JSON,
    /// as its `spec` describes; `--print spec` shows it); tarn's own config file goes before
    /// `ingest` (`tarn --config tarn.toml ingest airbyte ...`) or in `TARN_CONFIG`.
    ///
    /// See docs/airbyte.md.
    Airbyte(crate::airbyte::AirbyteArgs),
    /// Copy the rows of a query against a PostgreSQL or CockroachDB database into an Iceberg
    /// table, in full or incrementally by a cursor column, exactly once.
    ///
    /// The source connects as the CDC source does (`--source postgres://...`, default
    /// `cdc.source`; TLS by `sslmode`, `sslrootcert`, `sslcert`, `sslkey`) and column types map
    /// as CDC maps them. Rows stream in batches (`COPY (query) TO STDOUT`) into data files.
    ///
    /// Without `--cursor`, each run replaces the table's rows with the query's, in one commit
    /// at the end. With `--cursor COLUMN`, each run reads the rows whose cursor is greater
    /// than the high-water mark the table holds, in cursor order, and appends them — or, with
    /// `--primary-key`, upserts them (the row of the greatest cursor of a key replaces the
    /// table's row). Commits every `--commit-rows` rows, between two cursor values, with the
    /// mark in the snapshot summary: a killed run resumes after the last commit, no row twice,
    /// none skipped. A row that appears later with a cursor at or below the mark is not read
    /// (appends; upserts re-read the mark's own value).
    ///
    /// See docs/ingest-sql.md.
    Sql(crate::ingest_sql::SqlArgs),
}

/// `tarn ingest kafka`'s flags.
#[cfg(feature = "kafka")]
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT...]` (default `cdc.kafka.brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// A topic to consume, or one `^regex` matched against the broker's topics; repeatable
    /// (default `cdc.kafka.topics`).
    #[arg(long = "topic", value_name = "TOPIC")]
    topics: Vec<String>,
    /// The consumer group whose offsets tarn commits for monitoring (default
    /// `cdc.kafka.group`).
    #[arg(long)]
    group: Option<String>,
    /// Where partitions start for a pipeline without lake tables and group offsets (default
    /// `cdc.kafka.start`).
    #[arg(long, value_parser = ["earliest", "latest"])]
    start: Option<String>,
    /// Which partitions this worker reads (default `cdc.kafka.assignment`): `all` of them, or
    /// those the consumer group gives it — run several workers with the same config and
    /// `--group` and they split the partitions, and take over a stopped worker's.
    #[arg(long, value_parser = ["all", "group"])]
    assignment: Option<String>,
    /// What the records are (default `cdc.kafka.format`): `debezium` change events, or
    /// `json` objects, each appended as a row of its topic's table (`cdc.table_name` with
    /// `{schema}` = `kafka` and `{table}` = the topic, `.` and `-` as `_`: `web.clicks` lands
    /// in `cdc.web_clicks` by default), with `_kafka_partition`, `_kafka_offset` and
    /// `_kafka_timestamp` columns beside the fields.
    #[arg(long, value_parser = ["debezium", "json"])]
    format: Option<String>,
    /// With `--format json`: a column, `"NAME TYPE"` in PostgreSQL type names (e.g. `"amount
    /// numeric(10,2)"`); repeatable. Other fields are ignored. Default `cdc.kafka.columns`;
    /// none: the columns are inferred from the records and grow with new fields.
    #[arg(long = "column", value_name = "NAME TYPE")]
    columns: Vec<String>,
    /// Archive every record unchanged (Parquet files of an append-only Iceberg table)
    /// instead of applying change events (default `cdc.kafka.archive`); `--start` then
    /// decides only where a new archive starts.
    #[arg(long)]
    archive: bool,
    /// The archive's table, `NAME` (in `cdc.namespace`) or `NAMESPACE.NAME` (default
    /// `cdc.kafka.archive_table`).
    #[arg(long, value_name = "TABLE", requires = "archive")]
    archive_table: Option<String>,
    /// Where records that are not valid change events go (default
    /// `cdc.kafka.dead_letter_topic`, or the group's name followed by `.dlq`).
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and a liveness check (`/healthz`) on this
    /// address, e.g. `0.0.0.0:9464` in a container (default: none).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Stop after this long, e.g. `60s` (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

#[cfg(feature = "kafka")]
fn parse_duration(s: &str) -> Result<Duration, String> {
    tarn_core::config::parse_duration("--duration", s).map_err(|e| e.to_string())
}

/// `config` with the flags of `args` applied, validated.
#[cfg(feature = "kafka")]
pub fn kafka_config(args: &KafkaArgs, mut config: Config) -> Result<Config> {
    config.cdc.source_kind = "kafka".into();
    let kafka = &mut config.cdc.kafka;
    if let Some(brokers) = &args.brokers {
        kafka.brokers.clone_from(brokers);
    }
    if !args.topics.is_empty() {
        kafka.topics.clone_from(&args.topics);
    }
    if let Some(group) = &args.group {
        kafka.group.clone_from(group);
    }
    if let Some(format) = &args.format {
        kafka.format.clone_from(format);
    }
    if !args.columns.is_empty() {
        kafka.columns.clone_from(&args.columns);
    }
    if let Some(assignment) = &args.assignment {
        kafka.assignment.clone_from(assignment);
    }
    if let Some(start) = &args.start {
        kafka.start.clone_from(start);
    }
    kafka.archive |= args.archive;
    if let Some(table) = &args.archive_table {
        kafka.archive_table.clone_from(table);
    }
    if let Some(topic) = &args.dead_letter_topic {
        kafka.dead_letter_topic = Some(topic.clone());
    }
    config.validate()?;
    Ok(config)
}

/// Runs a `tarn ingest` command.
pub async fn run(cmd: IngestCommand, config: Config) -> Result<ExitCode> {
    match cmd {
        IngestCommand::Airbyte(args) => crate::airbyte::run(args, config).await,
        IngestCommand::Sql(args) => crate::ingest_sql::run(args, config).await,
        #[cfg(feature = "kafka")]
        IngestCommand::Kafka(args) => {
            let config = kafka_config(&args, config)?;
            let metrics = match args.metrics_listen {
                Some(addr) => Some(serve_metrics(addr).await?),
                None => None,
            };
            let result = crate::cdc::run(
                crate::cdc::CdcCommand::Run {
                    resnapshot: false,
                    duration: args.duration,
                },
                config,
            )
            .await;
            if let Some(task) = metrics {
                task.abort();
                let _ = task.await;
            }
            result
        }
    }
}

/// Serves `/metrics` (Prometheus text format) and `/healthz` on `addr` until aborted.
#[cfg(feature = "kafka")]
async fn serve_metrics(addr: std::net::SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let handle = crate::serve::install_metrics()?;
    let listener = crate::serve::bind(&addr.to_string(), "--metrics-listen").await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let mut text = handle.render();
                text.push_str(&crate::measure::process_metrics());
                std::future::ready(text)
            }),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")));
    tracing::info!(%addr, "serving /metrics and /healthz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint failed");
        }
    }))
}
