//! Command-line interface.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use tarn_core::Config;
use tarn_lake::{Lake, TableLayout, parse_table_name};
use tarn_query::load::{FileFormat, LoadOptions};
use tarn_query::{Output, TarnSession};

use crate::load::load_with_progress;
use crate::output::{Format, print_stream};

/// tarn: a datalake in one binary — Iceberg tables on object storage, a SQL catalog other
/// engines share (or any Iceberg REST catalog or Hive Metastore: `catalog.kind`, see
/// docs/catalogs.md), and SQL over it all (CLI and Postgres wire protocol).
#[derive(Debug, Parser)]
#[command(name = "tarn", version, propagate_version = true)]
pub struct Cli {
    /// The local installation: holds `catalog.db`, `warehouse/` and an optional `tarn.toml`.
    #[arg(long, global = true, env = "TARN_DATA_DIR", default_value = "./tarn-data")]
    data_dir: PathBuf,

    /// Config file; default `DATA_DIR/tarn.toml` when it exists.
    #[arg(long, global = true, env = "TARN_CONFIG")]
    config: Option<PathBuf>,

    /// Override a config key, e.g. `--set server.pg_listen=127.0.0.1:6432`; repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Log line format: `text` for people, `json` (one object a line) for log shippers; the
    /// same as `--set log.format=...`.
    #[arg(long, global = true, env = "TARN_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole data flow on this machine, from nothing: a shop on PostgreSQL, its changes
    /// streamed into the lake, SQL over it.
    ///
    /// Starts a private PostgreSQL from the system's binaries (in a temporary directory, on a
    /// free loopback port), creates the shop's database (migrations, reference data), runs the
    /// shop's HTTP service and its workload generator, streams every change into the lake's
    /// namespace `shop` (initial snapshot, then CDC), and serves SQL on the Postgres wire
    /// endpoint (`psql postgres://demo@127.0.0.1:5433/tarn`; another port when 5433 is taken).
    /// A live line shows orders in PostgreSQL and in the lake, freshness and changes per second.
    ///
    /// Ctrl-C (or `--duration`) stops it in order: the workload stops, CDC catches up and stops,
    /// every row of every shop table in the lake is compared with PostgreSQL through the Postgres
    /// wire endpoint, then everything stops. Exits 0 only when the lake equals the database.
    /// The lake stays in the data directory: `tarn sql "SELECT count(*) FROM shop.orders"`.
    Demo(crate::demo::DemoArgs),
    /// Run SQL statements and print the results; with no SQL, open an interactive prompt.
    ///
    /// Statements are separated by `;`. Beyond DataFusion's SQL, tarn understands
    /// `CREATE TABLE ... PARTITIONED BY (day(ts), bucket(16, id)) SORTED BY (ts)`,
    /// `SELECT ... FROM t FOR VERSION AS OF <snapshot-id>`, and `DROP TABLE t PURGE`.
    Sql {
        /// The SQL to run; `-` reads it from standard input.
        sql: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Run as this user under the configured policy (`[policy]`, docs/governance.md):
        /// its grants, column masks and row filters apply. Without it, `tarn sql` runs as the
        /// operator of the data directory, whom no policy restricts (they can read the files).
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
        /// A group (role) of the `--as` user, as policies see it in
        /// `input.context.identity.groups`; repeatable.
        #[arg(long = "group", value_name = "GROUP", requires = "as_user")]
        groups: Vec<String>,
    },
    /// Serve the Postgres wire endpoint and HTTP until SIGINT/SIGTERM.
    ///
    /// SQL over the Postgres wire protocol on server.pg_listen. On server.http_listen:
    /// /healthz, /readyz, /metrics (Prometheus), /cdc/status, the jobs API under /jobs
    /// (docs/jobs.md), and the Iceberg REST catalog under
    /// /iceberg — point Spark, Trino, Flink, DuckDB or pyiceberg at
    /// http://HTTP_LISTEN/iceberg (e.g. pyiceberg `uri`, DuckDB `ENDPOINT`, Spark
    /// `spark.sql.catalog.NAME.uri`). With [auth.oidc] every HTTP API takes bearer tokens;
    /// without it the REST catalog is open to whoever reaches server.http_listen: keep it
    /// private (loopback by default) or turn it off with `--set rest_catalog.enabled=false`.
    /// See docs/rest-catalog.md.
    ///
    /// Runs the scheduler of `jobs.dir`'s jobs (one active among replicas sharing the catalog
    /// database) unless `jobs.scheduler = false`.
    ///
    /// The web console at http://HTTP_LISTEN/console (catalog browser, SQL editor, charts and
    /// dashboard, pipeline and jobs pages): users log in with an [[auth.users]] password or
    /// through the OIDC issuer; `--set console.enabled=false` turns it off (docs/console.md).
    ///
    /// With `datahub.gms_url` set, pushes the lake's metadata (tables, schemas, lineage, CDC
    /// pipelines) to DataHub, and then what changes, every `datahub.interval`
    /// (docs/datahub.md).
    ///
    /// TLS on both listeners: `--set server.tls.cert=server.crt --set server.tls.key=server.key`
    /// (PEM). The HTTP endpoint then speaks only HTTPS, and Postgres wire connections without
    /// TLS are refused unless `server.tls.require=false`; `server.tls.client_ca` lets clients
    /// log in with a certificate. The files are read again on SIGHUP and when they change
    /// (every `server.tls.reload_interval`, 1m), without a restart. A password or token is
    /// never accepted over plain TCP from a non-loopback address unless
    /// `auth.allow_plaintext_passwords=true`. See docs/serving.md, "TLS".
    Serve,
    /// Load Parquet, CSV or JSON-lines files into a table, creating it if needed.
    Load {
        /// Files: local paths or s3:// URLs; glob patterns allowed (quote them).
        #[arg(required = true)]
        paths: Vec<String>,
        /// The target table, NAMESPACE.TABLE.
        #[arg(long)]
        table: String,
        /// File format; from the extension when omitted.
        #[arg(long, value_parser = ["parquet", "csv", "json"])]
        format: Option<String>,
        /// CSV field delimiter.
        #[arg(long, default_value = ",")]
        delimiter: char,
        /// CSV files have no header line.
        #[arg(long)]
        no_header: bool,
        /// Partition fields for a new table, e.g. `day(ts)`; repeatable.
        #[arg(long = "partition-by", value_name = "FIELD")]
        partition_by: Vec<String>,
    },
    /// Inspect tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// The catalog's metadata for other tools: DataHub.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Authorization policies (`[policy]`, docs/governance.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Table maintenance: compact small files and apply deletes, expire old snapshots, remove
    /// orphan files (all three unless some are chosen). Safe beside live writers.
    Maintain(crate::maintain::MaintainArgs),
    /// Change data capture: stream a PostgreSQL database (logical replication) or a CockroachDB
    /// cluster (changefeeds, `cdc.source_kind = "cockroachdb"`) into Iceberg tables, or publish
    /// it to Kafka as Debezium change events (`cdc.sink = "kafka"`).
    #[command(subcommand)]
    Cdc(crate::cdc::CdcCommand),
    /// Ingest streams: an Airbyte source connector's streams (`tarn ingest airbyte
    /// --connector source-faker --config CONFIG.json --namespace NS`), Kafka topics of
    /// Debezium change events (`tarn ingest kafka --brokers HOST:PORT --topic TOPIC`, feature
    /// `kafka`) into Iceberg tables.
    #[command(subcommand)]
    Ingest(crate::ingest::IngestCommand),
    /// Jobs: DAGs of tasks (sql, load, maintain, export, http, shell, airbyte, ingest-kafka checks) in TOML files
    /// under `jobs.dir`, run on cron schedules by the scheduler of `tarn serve` (or
    /// `tarn jobs scheduler`) or on demand, with retries, timeouts, SLAs and alerts; run history
    /// and logs in the catalog database. See docs/jobs.md.
    #[command(subcommand)]
    Jobs(crate::jobs::cli::JobsCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

#[derive(Debug, Subcommand)]
enum TableCommand {
    /// List tables, optionally of one namespace.
    List {
        /// Namespace to list.
        namespace: Option<String>,
    },
    /// Show a table's schema, partitioning, sort order, properties and location.
    Describe {
        /// NAMESPACE.TABLE
        table: String,
    },
    /// Show a table's snapshots with their summaries.
    History {
        /// NAMESPACE.TABLE
        table: String,
    },
    /// Show where a table's rows come from and which tables are computed from it: the lake
    /// tables `CREATE TABLE ... AS SELECT` and `INSERT INTO ... SELECT` read (recorded in
    /// the table property `tarn.lineage.upstream`), and the source table CDC copies.
    Lineage {
        /// NAMESPACE.TABLE
        table: String,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Export the catalog's metadata to another system.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Push the catalog's metadata to another system now.
    #[command(subcommand)]
    Push(PushCommand),
}

#[derive(Debug, Subcommand)]
enum ExportCommand {
    /// Write every table (properties, schema, lineage) and CDC pipeline as DataHub metadata
    /// change proposals to FILE (DataHub's MCP file format: `datahub ingest` with a file
    /// source reads it; `datahub check metadata-file FILE` checks it). See docs/datahub.md.
    Datahub {
        /// The JSON file to write.
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PushCommand {
    /// Send every table and CDC pipeline as DataHub metadata change proposals to the GMS
    /// `datahub.gms_url` names, with `datahub.token`. `tarn serve` does this by itself, every
    /// `datahub.interval`, when `datahub.gms_url` is set. See docs/datahub.md.
    Datahub,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, secrets redacted.
    Show,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Evaluate a policy against recorded inputs, like `opa test`.
    ///
    /// POLICY is a `.rego` file, a role file (`.toml`) or a directory of them (as
    /// `policy.file`). CASES is a JSON
    /// lines file, one case per line: `{"name": "...", "rule": "allow", "input": {...},
    /// "expect": true}` — `rule` is one of Trino's (`allow`, `batch`, `rowFilters`,
    /// `columnMask`, `batchColumnMasks`; `allow` when absent), `input` the request document
    /// (`{"context": {"identity": ...}, "action": ...}`), `expect` the rule's value (`null`
    /// for undefined; sets compare in any order). Prints each case; exits 1 when one fails.
    Test {
        /// The policy: a `.rego` file, a role file (`.toml`) or a directory.
        policy: PathBuf,
        /// The recorded inputs and expected answers (JSON lines).
        #[arg(long)]
        cases: PathBuf,
        /// The Rego package of the rules (default `policy.package`, `trino`).
        #[arg(long)]
        package: Option<String>,
    },
    /// Print the broker ACLs equivalent to the topic grants of the policy.
    ///
    /// Asks the configured policy (`[policy]`) whether each principal may `PublishToTopic` and
    /// `ConsumeFromTopic` each topic, and prints a `kafka-acls.sh` command line per grant
    /// (`Read`/`Describe` to consume, with `Read` on the consumer group `cdc.kafka.group`;
    /// `Write`/`Describe` to publish, with the pipeline's transactional id), for a broker that
    /// should enforce the same as tarn does. A topic ending in `*` becomes a prefixed ACL.
    KafkaAcls {
        /// A principal: `USER` or `USER:ROLE,ROLE`; repeatable. Default: the pipeline's
        /// (`cdc.principal` with `cdc.principal_roles`).
        #[arg(long = "principal")]
        principals: Vec<String>,
        /// A topic (`NAME` or `PREFIX*`); repeatable. Default: the topics the configured
        /// pipelines use (`cdc.kafka.topics` and its dead-letter topic; `<topic_prefix>.*` and
        /// the positions topic when publishing).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// The brokers, for the command lines (default `cdc.kafka.brokers`, else
        /// `cdc.publish.brokers`).
        #[arg(long)]
        bootstrap_server: Option<String>,
    },
    /// Print the Rego a role file compiles to.
    ///
    /// A role file (TOML: `[users]`, and per role under `[roles.NAME]`: `all`, `unrestricted`,
    /// `grants`, `row_filters`, `masks`, `topics`; docs/governance.md, "Role files") is
    /// accepted by `policy.file` as a `.rego` file is; tarn evaluates the Rego printed here.
    /// Errors name the file and line.
    Compile {
        /// The role file (`.toml`).
        file: PathBuf,
        /// The Rego package to compile into (default `policy.package`, `trino`).
        #[arg(long)]
        package: Option<String>,
    },
}

/// The global options this process was started with (`--data-dir`, `--config`, `--set`), for
/// the `tarn` processes it starts itself (a job's `airbyte` task).
static GLOBAL_ARGS: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// The global options to give a child `tarn` so that it sees the same configuration.
pub fn global_args() -> Vec<std::ffi::OsString> {
    GLOBAL_ARGS.get().cloned().unwrap_or_default()
}

/// Entry point: parse, run, map errors to exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut globals: Vec<std::ffi::OsString> = vec![
        "--data-dir".into(),
        std::path::absolute(&cli.data_dir)
            .unwrap_or_else(|_| cli.data_dir.clone())
            .into(),
    ];
    if let Some(config) = &cli.config {
        globals.push("--config".into());
        globals.push(
            std::path::absolute(config)
                .unwrap_or_else(|_| config.clone())
                .into(),
        );
    }
    for kv in &cli.overrides {
        globals.push("--set".into());
        globals.push(kv.into());
    }
    if let Some(format) = &cli.log_format {
        globals.push("--log-format".into());
        globals.push(format.into());
    }
    let _ = GLOBAL_ARGS.set(globals);
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "tarn", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Long-running ingestion logs on stdout; `tarn ingest airbyte` keeps stdout for `--print`.
    #[cfg(feature = "kafka")]
    let ingesting = matches!(
        cli.command,
        Command::Ingest(crate::ingest::IngestCommand::Kafka(_))
    );
    #[cfg(not(feature = "kafka"))]
    let ingesting = false;
    let long_running = ingesting
        || matches!(
            cli.command,
            Command::Serve
                | Command::Cdc(crate::cdc::CdcCommand::Run { .. })
                | Command::Jobs(crate::jobs::cli::JobsCommand::Scheduler)
        );
    // The demo prints its own progress on stdout; only warnings and errors are logged.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn".to_string()
    } else if matches!(cli.command, Command::Maintain(_)) {
        // `tarn maintain` prints a line per action; the same actions' log lines (compacted,
        // committed, orphan files) would repeat them.
        format!(
            "{},tarn_lake::maintain=warn,tarn_lake::commit=warn",
            config.log.level
        )
    } else {
        config.log.level.clone()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The span exporter's batch task runs on the runtime.
    let tracer = {
        let _entered = runtime.enter();
        match init_logging(&config, &default_level, long_running) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    crate::panic_log::install();
    let code = match runtime.block_on(run(cli, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Sends the spans still buffered (the batch task runs on the runtime's workers).
    if let Some(provider) = tracer
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: cannot send the last spans to telemetry.otlp_endpoint: {e}");
    }
    code
}

fn load_config(cli: &Cli) -> Result<Config> {
    let overrides = cli
        .overrides
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))
        })
        .chain(
            cli.log_format
                .iter()
                .map(|f| Ok(("log.format".to_string(), f.clone()))),
        )
        .collect::<Result<Vec<_>>>()?;
    Ok(Config::load(
        &cli.data_dir,
        cli.config.as_deref(),
        std::env::vars(),
        &overrides,
    )?)
}

/// Installs the log subscriber: text or JSON lines (`log.format`), and, when
/// `telemetry.otlp_endpoint` is set, an OpenTelemetry layer that exports spans over OTLP/HTTP.
/// Returns the tracer provider to shut down (flush) at exit. Must run inside the runtime.
fn init_logging(
    config: &Config,
    level: &str,
    to_stdout: bool,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // sqlx (the catalog, the demo's shop) logs PostgreSQL's NOTICEs, e.g. "there is no
    // transaction in progress" after a retried serialization failure: noise.
    let filter = EnvFilter::try_from_env("TARN_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},sqlx::postgres::notice=error")));
    use std::io::IsTerminal;
    // Colour only for a terminal: piped into a file or `tail`, escape sequences are noise.
    let ansi = if to_stdout {
        std::io::stdout().is_terminal()
    } else {
        std::io::stderr().is_terminal()
    };
    let writer = if to_stdout {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    };
    // JSON: timestamp, level, target, fields (message and the event's own), `span` (the
    // innermost span's fields: statement, pipeline, table, trace_id) and `spans` (all of them).
    let fmt = if config.log.format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed()
    };
    let (otel, provider) = match config.telemetry.traces_url() {
        Some(url) => {
            let provider = crate::telemetry::tracer_provider(&url)?;
            use opentelemetry::trace::TracerProvider as _;
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tarn"));
            tarn_core::telemetry::set_trace_id_source(crate::telemetry::trace_id);
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Ok(provider)
}

async fn open(config: &Config) -> Result<TarnSession> {
    let lake = Lake::open(config).await?;
    Ok(TarnSession::new(lake)
        .await?
        .with_external_catalogs(external_catalogs(config)?)?)
}

/// The external catalogs of the configuration (`[[federation]]`).
pub(crate) fn external_catalogs(
    config: &Config,
) -> Result<Vec<tarn_query::federation::ExternalCatalogSettings>> {
    config
        .federation
        .iter()
        .map(|f| {
            let mut settings = tarn_query::federation::ExternalCatalogSettings::new(&f.name, &f.url);
            settings.pool_size = f.pool_size;
            settings.connect_timeout = f.connect_timeout()?;
            settings.statement_timeout = f.statement_timeout()?;
            Ok(settings)
        })
        .collect()
}

/// A session whose statements the configured policy authorizes (`[policy]`); without one,
/// everything is allowed, and the log says so.
pub(crate) async fn open_governed(config: &Config) -> Result<TarnSession> {
    let policy = crate::policy::load(config)?;
    let lake = Lake::open(config).await?;
    let audit = if config.audit.enabled {
        Some(tarn_query::audit::AuditSettings::from_config(&config.audit)?)
    } else {
        None
    };
    Ok(TarnSession::with_governance(lake, policy, audit)
        .await?
        .with_external_catalogs(external_catalogs(config)?)?)
}

/// A governed session running its statements as `user` with `groups` (`--as USER --group G`);
/// without a policy nothing is restricted, and the log says so.
pub(crate) async fn open_as(config: &Config, user: String, groups: Vec<String>) -> Result<TarnSession> {
    let session = open_governed(config).await?;
    if session.governance().is_none() {
        tracing::warn!("--as {user}: no policy is configured ([policy]), so nothing is restricted");
    }
    Ok(session.for_principal(tarn_auth::Principal::trusted(user, groups)))
}

/// Appends the session's last audit records; a failure is logged (the log lines hold them).
pub(crate) async fn close_session(session: &TarnSession) {
    if let Err(e) = session.close().await {
        tracing::warn!(error = %e, "cannot append the last audit records to tarn_audit.events (their log lines are written)");
    }
}

async fn run(cli: Cli, config: Config) -> Result<ExitCode> {
    match cli.command {
        Command::Policy(PolicyCommand::Test {
            policy,
            cases,
            package,
        }) => {
            let package = package.unwrap_or_else(|| config.policy.package.clone());
            crate::policy::test(&policy, &cases, &package)
        }
        Command::Policy(PolicyCommand::KafkaAcls {
            principals,
            topics,
            bootstrap_server,
        }) => {
            for line in crate::policy::kafka_acls(&config, &principals, &topics, bootstrap_server)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Compile { file, package }) => {
            let package = package.unwrap_or_else(|| config.policy.package.clone());
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the role file {}", file.display()))?;
            let rego = tarn_policy::role_file::compile(&file.display().to_string(), &text, &package)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{rego}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Show) => {
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql {
            sql,
            format,
            as_user,
            groups,
        } => {
            let session = match as_user {
                Some(user) => open_as(&config, user, groups).await?,
                None => open(&config).await?,
            };
            match sql {
                Some(sql) => {
                    let sql = if sql == "-" {
                        std::io::read_to_string(std::io::stdin()).context("cannot read SQL from stdin")?
                    } else {
                        sql
                    };
                    let ran = run_sql(&session, &sql, format).await;
                    // The audit trail's last records (a denial too) are appended before exit.
                    close_session(&session).await;
                    ran?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    let ran = repl(&session, format, &config).await;
                    close_session(&session).await;
                    ran
                }
            }
        }
        Command::Serve => {
            crate::serve::check_config(&config)?;
            let metrics = crate::serve::install_metrics_if(config.telemetry.metrics)?;
            let session = open_governed(&config).await?;
            crate::serve::serve(&config, session, metrics).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load {
            paths,
            table,
            format,
            delimiter,
            no_header,
            partition_by,
        } => {
            let session = open(&config).await?;
            let ident = parse_table_name(&table)?;
            let options = LoadOptions {
                format: format.as_deref().map(FileFormat::parse).transpose()?,
                delimiter: Some(u8::try_from(delimiter).context("--delimiter must be one ASCII character")?),
                has_header: Some(!no_header),
                layout: TableLayout {
                    partition: partition_by
                        .iter()
                        .map(|f| tarn_lake::layout::parse_partition_field(f))
                        .collect::<tarn_core::Result<_>>()?,
                    ..TableLayout::default()
                },
            };
            load_with_progress(&session, &paths, &ident, &options, true).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Table(cmd) => {
            let lake = Lake::open(&config).await?;
            table_command(&lake, &config, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog(CatalogCommand::Export(ExportCommand::Datahub { file })) => {
            let lake = Lake::open(&config).await?;
            let mcps = crate::datahub::collect(&lake, &config).await?;
            crate::datahub::write_file(&file, &mcps)?;
            eprintln!("wrote {} aspects to {}", mcps.len(), file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog(CatalogCommand::Push(PushCommand::Datahub)) => {
            let Some(gms) = crate::datahub::Gms::from_config(&config)? else {
                anyhow::bail!(
                    "key `datahub.gms_url` is not set: nowhere to push (e.g. --set datahub.gms_url=http://datahub-gms:8080)"
                );
            };
            let lake = Lake::open(&config).await?;
            let mcps = crate::datahub::collect(&lake, &config).await?;
            let n = gms.emit_all(&mcps).await?;
            eprintln!("pushed {n} aspects to DataHub");
            Ok(ExitCode::SUCCESS)
        }
        Command::Cdc(cmd) => crate::cdc::run(cmd, config).await,
        Command::Ingest(cmd) => crate::ingest::run(cmd, config).await,
        Command::Demo(args) => {
            let metrics = crate::serve::install_metrics()?;
            crate::demo::run(args, &config, metrics).await
        }
        Command::Maintain(args) => crate::maintain::run(args, &config).await,
        Command::Jobs(cmd) => crate::jobs::cli::run(cmd, &config).await,
        Command::Bench(cmd) => crate::bench::run(cmd, config).await,
        Command::Completions { .. } => unreachable!("handled before the runtime starts"),
    }
}

async fn run_sql(session: &TarnSession, sql: &str, format: Format) -> Result<()> {
    let statements = TarnSession::prepare(sql)?;
    let stdout = std::io::stdout();
    for statement in statements {
        match session.run(&statement).await? {
            Output::Rows(stream) => {
                let mut out = stdout.lock();
                print_stream(stream, format, &mut out).await?;
                out.flush()?;
            }
            Output::Command { tag, .. } => {
                if format == Format::Table {
                    println!("{tag}");
                }
            }
        }
    }
    Ok(())
}

async fn repl(session: &TarnSession, format: Format, config: &Config) -> Result<ExitCode> {
    let mut editor = rustyline::DefaultEditor::new().context("cannot open the prompt")?;
    let history = config.data_dir.join(".tarn_history");
    let _ = editor.load_history(&history);
    println!(
        "tarn SQL ({}); end statements with ';', \\q to quit.",
        config.catalog_description()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "tarn> " } else { "  ... " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => bail!("prompt failed: {e}"),
        };
        let trimmed = line.trim();
        if buffer.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let _ = editor.add_history_entry(buffer.trim());
        let start = Instant::now();
        match run_sql(session, &buffer, format).await {
            Ok(()) => eprintln!("time: {:.3}s", start.elapsed().as_secs_f64()),
            Err(e) => eprintln!("error: {e:#}"),
        }
        buffer.clear();
    }
    let _ = editor.save_history(&history);
    Ok(ExitCode::SUCCESS)
}

async fn table_command(lake: &Lake, config: &Config, cmd: TableCommand) -> Result<()> {
    match cmd {
        TableCommand::Lineage { table } => {
            for line in crate::datahub::lineage_lines(lake, config, &table).await? {
                println!("{line}");
            }
        }
        TableCommand::List { namespace } => {
            let tables = match namespace {
                Some(ns) => {
                    let ns = iceberg::NamespaceIdent::from_strs(ns.split('.'))?;
                    lake.list_tables(&ns).await?
                }
                None => lake.list_all_tables().await?,
            };
            for t in tables {
                println!("{t}");
            }
        }
        TableCommand::Describe { table } => {
            let ident = parse_table_name(&table)?;
            let table = lake.load_table(&ident).await?;
            let m = table.metadata();
            let schema = m.current_schema();
            println!("table:     {ident}");
            println!("location:  {}", m.location());
            println!("metadata:  {}", table.metadata_location().unwrap_or("-"));
            println!("format:    v{}", m.format_version() as u8);
            println!(
                "snapshot:  {}",
                m.current_snapshot_id().map_or("none".into(), |s| s.to_string())
            );
            println!("columns:");
            for field in schema.as_struct().fields() {
                println!(
                    "  {:>3}  {:<24} {:<20} {}",
                    field.id,
                    field.name,
                    field.field_type.to_string(),
                    if field.required { "NOT NULL" } else { "" }
                );
            }
            let spec = m.default_partition_spec();
            if spec.is_unpartitioned() {
                println!("partitioned by: (none)");
            } else {
                let fields: Vec<String> = spec
                    .fields()
                    .iter()
                    .map(|f| {
                        let column = schema.name_by_field_id(f.source_id).unwrap_or("?");
                        tarn_lake::layout::describe_transform(&f.transform, column)
                    })
                    .collect();
                println!("partitioned by: ({})", fields.join(", "));
            }
            let order = m.default_sort_order();
            if !order.is_unsorted() {
                let keys: Vec<String> = order
                    .fields
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {}",
                            schema.name_by_field_id(f.source_id).unwrap_or("?"),
                            f.direction
                        )
                    })
                    .collect();
                println!("sorted by: ({})", keys.join(", "));
            }
            println!("properties:");
            let mut props: Vec<_> = m.properties().iter().collect();
            props.sort();
            for (k, v) in props {
                println!("  {k} = {v}");
            }
        }
        TableCommand::History { table } => {
            let ident = parse_table_name(&table)?;
            let table = lake.load_table(&ident).await?;
            let m = table.metadata();
            let current = m.current_snapshot_id();
            let mut snapshots: Vec<_> = m.snapshots().collect();
            snapshots.sort_by_key(|s| s.sequence_number());
            if snapshots.is_empty() {
                println!("{ident} has no snapshots");
            }
            for s in snapshots {
                let when = chrono::DateTime::from_timestamp_millis(s.timestamp_ms())
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                let marker = if Some(s.snapshot_id()) == current {
                    " (current)"
                } else {
                    ""
                };
                println!(
                    "snapshot {}{marker}  seq {}  {}  {}",
                    s.snapshot_id(),
                    s.sequence_number(),
                    when,
                    s.summary().operation.as_str()
                );
                let mut props: Vec<_> = s.summary().additional_properties.iter().collect();
                props.sort();
                for (k, v) in props {
                    println!("    {k} = {v}");
                }
            }
        }
    }
    Ok(())
}
