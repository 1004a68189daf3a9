//! `tarn bench tpch`: TPC-H load and query benchmark, with DuckDB as the reference engine on the
//! very same Parquet files in the same run.
//!
//! 1. Generates the eight TPC-H tables as CSV with the `tpchgen` crate (one file per core).
//! 2. Creates them in a fresh lake (`benches/tpch/schema.sql`) and loads the CSV through the
//!    same path as `tarn load`, timing rows/s and MB/s.
//!    (`--reuse` skips 1 and 2 and queries the lake an earlier run left.)
//! 3. Starts `benches/tpch_duckdb.py --serve` over the tables' data files.
//! 4. Runs the 22 queries (`benches/tpch/qNN.sql`): one warm-up, then the best of `--runs`,
//!    each tarn run followed by a DuckDB run of the same query so both meet the same load on a
//!    shared machine; prints, per query, tarn's time, DuckDB's and the ratio, then the
//!    geometric mean of the ratios and peak memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use futures::TryStreamExt;
use tarn_core::Config;
use tarn_lake::{Lake, parse_table_name};
use tarn_query::load::LoadOptions;
use tarn_query::{Output, TarnSession};

const SCHEMA_SQL: &str = include_str!("../../../benches/tpch/schema.sql");
pub(crate) const QUERIES: [&str; 22] = [
    include_str!("../../../benches/tpch/q01.sql"),
    include_str!("../../../benches/tpch/q02.sql"),
    include_str!("../../../benches/tpch/q03.sql"),
    include_str!("../../../benches/tpch/q04.sql"),
    include_str!("../../../benches/tpch/q05.sql"),
    include_str!("../../../benches/tpch/q06.sql"),
    include_str!("../../../benches/tpch/q07.sql"),
    include_str!("../../../benches/tpch/q08.sql"),
    include_str!("../../../benches/tpch/q09.sql"),
    include_str!("../../../benches/tpch/q10.sql"),
    include_str!("../../../benches/tpch/q11.sql"),
    include_str!("../../../benches/tpch/q12.sql"),
    include_str!("../../../benches/tpch/q13.sql"),
    include_str!("../../../benches/tpch/q14.sql"),
    include_str!("../../../benches/tpch/q15.sql"),
    include_str!("../../../benches/tpch/q16.sql"),
    include_str!("../../../benches/tpch/q17.sql"),
    include_str!("../../../benches/tpch/q18.sql"),
    include_str!("../../../benches/tpch/q19.sql"),
    include_str!("../../../benches/tpch/q20.sql"),
    include_str!("../../../benches/tpch/q21.sql"),
    include_str!("../../../benches/tpch/q22.sql"),
];
const TABLES: [&str; 8] = [
    "nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

/// Benchmarks that print numbers (never pass/fail).
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// TPC-H: load throughput and the 22 queries over Iceberg tables, against DuckDB.
    Tpch {
        /// Scale factor (1 = 6M lineitem rows, about 1 GB of CSV).
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// Timed runs per query (after one warm-up); the best is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only these queries, e.g. `--query 1 --query 6`.
        #[arg(long = "query")]
        queries: Vec<usize>,
        /// Where the generated data and the benchmark lake go; default `DATA_DIR/bench/tpch-sf<SF>`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Python with duckdb installed, for the reference run; default `.venv/bin/python`.
        #[arg(long, env = "TARN_BENCH_PYTHON")]
        python: Option<PathBuf>,
        /// Skip the DuckDB reference run.
        #[arg(long)]
        no_duckdb: bool,
        /// Query the lake an earlier run left in the directory instead of generating and
        /// loading the data again (it must have been made with the same --sf).
        #[arg(long)]
        reuse: bool,
    },
    /// CDC: snapshot rows/s, sustained changes/s and freshness from PostgreSQL into Iceberg,
    /// against `psql \copy` and `pg_recvlogical` on the same data.
    Cdc {
        /// Rows of the table copied by the initial snapshot.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Changes (inserts, updates, deletes) of the sustained phase.
        #[arg(long, default_value_t = 1_000_000)]
        changes: u64,
        /// Concurrent writer connections.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Seconds of the freshness phase.
        #[arg(long, default_value_t = 30)]
        freshness_seconds: u64,
        /// Changes per second written during the freshness phase.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Source database (`postgres://...`); default a private PostgreSQL started from the
        /// system's binaries.
        #[arg(long)]
        source: Option<String>,
        /// Where the lake and the private PostgreSQL go; default `DATA_DIR/bench/cdc`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Flush interval of the latest-read freshness phase: the pipeline publishes its
        /// pending changes to the SQL session (as under `tarn serve`) and the probes are read
        /// in `tarn.read_mode = latest`, beside the commit freshness of the default interval.
        #[arg(long, default_value = "60s")]
        latest_flush: String,
        /// Also measure the CockroachDB changefeed path (scan rows/s, backlog changes/s,
        /// freshness at the resolved cadence) beside the PostgreSQL path, on the same data:
        /// tarn's CockroachDB source reads a stand-in cluster (the one its contract tests use)
        /// in front of the private PostgreSQL. Figures include the stand-in's own work.
        #[arg(long, conflicts_with = "source")]
        cockroach_contract: bool,
        /// Record metrics as `tarn serve` does (the Prometheus recorder); off by default.
        /// `tarn bench observability` compares runs with and without.
        #[arg(long)]
        metrics: bool,
    },
    /// Kafka → Iceberg: Debezium change events consumed into the lake (events/s) against a
    /// plain rdkafka consumer draining the same topic, and freshness from produce to lake
    /// commit. Starts its own broker (tansu, from the project's venv: bash scripts/setup.sh).
    #[cfg(feature = "kafka")]
    Kafka {
        /// Change events of the backlog (60 % inserts, 30 % updates, 10 % deletes with
        /// tombstones).
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Leave the Connect schema out of keys and values (`schemas.enable=false`).
        #[arg(long)]
        no_schemas: bool,
        /// Seconds of the freshness phase.
        #[arg(long, default_value_t = 20)]
        freshness_seconds: u64,
        /// Events per second produced during the freshness phase.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Where the lake goes; default `DATA_DIR/bench/kafka`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Airbyte: `tarn ingest airbyte` records/s beside the connector's own `read` with its
    /// output to /dev/null (the ceiling), same run, same configured catalog.
    Airbyte {
        /// The connector's command, e.g. `source-faker`.
        #[arg(long, value_name = "COMMAND")]
        connector: String,
        /// The connector's configuration (JSON), e.g. `{"count": 100000, "seed": 1}` for
        /// source-faker.
        #[arg(long = "config", id = "connector_config", value_name = "CONFIG.json")]
        config: std::path::PathBuf,
        /// A configured catalog; default: every stream the connector discovers, in the mode
        /// `tarn ingest airbyte` would pick.
        #[arg(long, value_name = "CATALOG.json")]
        catalog: Option<std::path::PathBuf>,
        /// Where the lake goes; default `DATA_DIR/bench/airbyte`.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Federation: a join of a lake fact table with a dimension table living in PostgreSQL
    /// (an external catalog), beside the same query in PostgreSQL over copies of both and in
    /// tarn over lake-only copies, same run. Starts a private PostgreSQL from the system's
    /// binaries.
    Federation {
        /// Rows of the lake's fact table.
        #[arg(long, default_value_t = 2_000_000)]
        facts: u64,
        /// Rows of the live dimension table.
        #[arg(long, default_value_t = 100_000)]
        dimensions: u64,
        /// Timed runs per engine (after one warm-up); the best is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the lake and the private PostgreSQL go; default `DATA_DIR/bench/federation`.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// MERGE: a `MERGE` of changed rows (updates spread over the table, and inserts) into a
    /// large Iceberg table: its time, the data and delete files it writes, and a full-scan
    /// aggregate before against after; beside DuckDB doing the same `MERGE` on the same data
    /// in the same run (`benches/merge_duckdb.py`, Python from the project's venv).
    Merge {
        /// Rows of the target table.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Rows of the change set merged into it.
        #[arg(long, default_value_t = 1_000_000)]
        changed: u64,
        /// How many of the changed rows update existing ones (the rest insert new ids);
        /// default half.
        #[arg(long)]
        updates: Option<u64>,
        /// Timed runs of the scan aggregate (after a warm-up); the best is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Set `write.merge.mode = copy-on-write` on the target (rewrite the touched data
        /// files) instead of the default merge-on-read (position delete files).
        #[arg(long)]
        copy_on_write: bool,
        /// Python with duckdb installed, for the reference run; default `.venv/bin/python`.
        #[arg(long, env = "TARN_BENCH_PYTHON")]
        python: Option<PathBuf>,
        /// Skip the DuckDB reference run.
        #[arg(long)]
        no_duckdb: bool,
        /// Where the lake and DuckDB's database go; default `DATA_DIR/bench/merge`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The Iceberg REST catalog: `loadTable` and commit latency (p50, p99) and throughput with
    /// concurrent clients, against the same operations on the SQL catalog directly.
    Catalog {
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Timed operations per client in each phase.
        #[arg(long, default_value_t = 500)]
        operations: usize,
        /// Keep the catalog in a private PostgreSQL (started from the system's binaries)
        /// instead of SQLite.
        #[arg(long)]
        postgres: bool,
        /// Where the lake goes; default `DATA_DIR/bench/catalog`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The web console: load time (p50, p95) of the catalog page for a catalog of `--tables`
    /// tables, beside the same listing through the Postgres wire endpoint
    /// (`information_schema.tables`) in the same run.
    Console {
        /// Tables in the catalog.
        #[arg(long, default_value_t = 1000)]
        tables: usize,
        /// Timed requests of each kind.
        #[arg(long, default_value_t = 50)]
        requests: usize,
        /// Where the lake goes; default `DATA_DIR/bench/console`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Policies: the latency a policy adds per statement (p50, p99) in process (Rego), with
    /// the audit trail, and over OPA's HTTP API, beside the same statements with no policy in
    /// the same run.
    Policy {
        /// Timed rounds; each runs every statement once per mode.
        #[arg(long, default_value_t = 300)]
        iterations: usize,
        /// A real OPA server with the benchmark's policy (`tarn bench policy --print-policy`)
        /// loaded under package `trino`; default an HTTP stand-in in this process.
        #[arg(long)]
        opa_url: Option<String>,
        /// Print the policy measured (Rego) and exit.
        #[arg(long)]
        print_policy: bool,
        /// Where the lake goes; default `DATA_DIR/bench/policy`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Observability overhead: TPC-H through the Postgres wire endpoint of `tarn serve`, and a
    /// CDC backlog drained by `tarn bench cdc`, each with metrics, JSON logs and OTLP traces
    /// (to a sink in this process) on against all off, in the same run, alternating.
    Observability {
        /// TPC-H scale factor; 0 skips the TPC-H part.
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// Timed runs per query and round (after one warm-up); the best is kept.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Rounds; each runs both modes, their order alternating round to round.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Changes of the CDC backlog in each CDC run; 0 skips the CDC part.
        #[arg(long, default_value_t = 500_000)]
        changes: u64,
        /// Where the TPC-H lake (kept for the next run) and the runs' logs go; default
        /// `DATA_DIR/bench/observability`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Workload management: CDC freshness (p50, p99) in one `tarn serve` idle, while
    /// connections run heavy queries in a loop and while `tarn maintain --compact` runs in a
    /// loop, and TPC-H with `query.memory_limit` against unlimited, in the same run. Starts a
    /// private PostgreSQL.
    Workload {
        /// Seconds of each freshness phase.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Connections running heavy queries in the loaded phase.
        #[arg(long, default_value_t = 8)]
        load: usize,
        /// The CDC flush interval (`cdc.flush.interval`).
        #[arg(long, default_value = "200ms")]
        flush_interval: String,
        /// TPC-H scale factor of the memory-budget part; 0 skips it.
        #[arg(long, default_value_t = 1.0)]
        sf: f64,
        /// `query.memory_limit` of the limited TPC-H runs.
        #[arg(long, default_value = "512MB")]
        memory_limit: String,
        /// Timed runs per TPC-H query and mode (after one warm-up).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Skip the CDC freshness part.
        #[arg(long)]
        no_cdc: bool,
        /// Skip the freshness phases under compaction (`tarn maintain --compact` in a loop,
        /// at the pipelines' priority and with the `maintenance` defaults).
        #[arg(long)]
        no_compaction: bool,
        /// Where the lakes and the private PostgreSQL go; default `DATA_DIR/bench/workload`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// PostgreSQL → Kafka (`cdc.sink = "kafka"`): the initial copy against `psql \copy`, a
    /// change backlog published in Kafka transactions against `pg_recvlogical` draining the
    /// same backlog, and freshness from a PostgreSQL commit through Kafka to visibility in
    /// tarn's SQL. Starts a private PostgreSQL and its own broker (tansu, from the project's
    /// venv: bash scripts/setup.sh).
    #[cfg(feature = "kafka")]
    Publish {
        /// Rows of the table copied first.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Changes (inserts, updates, deletes) of the backlog.
        #[arg(long, default_value_t = 200_000)]
        changes: u64,
        /// Concurrent writer connections.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Partitions of each table topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Seconds of the freshness phase.
        #[arg(long, default_value_t = 20)]
        freshness_seconds: u64,
        /// Changes per second written during the freshness phase.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Source database (`postgres://...`); default a private PostgreSQL.
        #[arg(long)]
        source: Option<String>,
        /// Where the lake and the private PostgreSQL go; default `DATA_DIR/bench/publish`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand, config: Config) -> Result<ExitCode> {
    let (profile, opt_level) = (env!("TARN_BUILD_PROFILE"), env!("TARN_BUILD_OPT_LEVEL"));
    println!(
        "tarn {} built with profile {profile} (opt-level {opt_level})",
        env!("CARGO_PKG_VERSION")
    );
    if opt_level != "3" {
        println!(
            "note: benchmark figures come from the fully optimised release profile \
             (cargo build --release --bin tarn); these are not comparable"
        );
    }
    match cmd {
        BenchCommand::Tpch {
            sf,
            runs,
            queries,
            dir,
            python,
            no_duckdb,
            reuse,
        } => {
            if sf <= 0.0 {
                bail!("--sf must be positive, got {sf}");
            }
            if let Some(q) = queries.iter().find(|q| !(1..=22).contains(*q)) {
                bail!("--query {q}: TPC-H has queries 1 to 22");
            }
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join(format!("tpch-sf{sf}")));
            let options = TpchOptions {
                sf,
                runs: runs.max(1),
                only: queries,
                python,
                no_duckdb,
                reuse,
            };
            tpch(&config, &options, &dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "kafka")]
        BenchCommand::Kafka {
            events,
            partitions,
            no_schemas,
            freshness_seconds,
            rate,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("kafka"));
            let options = crate::bench_kafka::KafkaBenchOptions {
                events,
                partitions,
                schemas: !no_schemas,
                freshness_seconds,
                rate,
            };
            crate::bench_kafka::run(&config, &options, &dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "kafka")]
        BenchCommand::Publish {
            rows,
            changes,
            writers,
            partitions,
            freshness_seconds,
            rate,
            source,
            dir,
        } => {
            if rows == 0 || writers == 0 || rate == 0 || partitions < 1 {
                bail!("--rows, --writers, --rate and --partitions must be positive");
            }
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("publish"));
            let options = crate::bench_cdc::CdcBenchOptions {
                rows,
                changes,
                writers,
                freshness_seconds,
                rate,
                source,
                dir,
                cockroach_contract: false,
                latest_flush: None,
            };
            crate::bench_publish::run(&config, options, partitions).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Observability {
            sf,
            runs,
            rounds,
            changes,
            dir,
        } => {
            if sf.is_nan() || sf < 0.0 || runs == 0 || rounds == 0 {
                bail!("--sf must not be negative, --runs and --rounds must be positive");
            }
            if sf == 0.0 && changes == 0 {
                bail!("--sf 0 skips the TPC-H part and --changes 0 the CDC part: nothing to measure");
            }
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("observability"));
            crate::bench_observability::run(
                &config,
                crate::bench_observability::ObservabilityBenchOptions {
                    sf,
                    runs,
                    rounds,
                    changes,
                    dir,
                },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Workload {
            seconds,
            load,
            flush_interval,
            sf,
            memory_limit,
            runs,
            no_cdc,
            no_compaction,
            dir,
        } => {
            if sf < 0.0 || load == 0 || seconds == 0 {
                bail!("--sf must not be negative, --load and --seconds must be positive");
            }
            let options = crate::bench_workload::WorkloadBenchOptions {
                seconds,
                load,
                flush_interval,
                sf,
                memory_limit,
                runs: runs.max(1),
                no_cdc,
                compaction: !no_compaction,
                dir: dir.unwrap_or_else(|| crate::bench_workload::default_dir(&config)),
            };
            crate::bench_workload::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Console {
            tables,
            requests,
            dir,
        } => {
            let options = crate::bench_console::ConsoleBenchOptions {
                tables,
                requests,
                dir: dir.unwrap_or_else(|| config.data_dir.join("bench").join("console")),
            };
            crate::bench_console::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Policy {
            iterations,
            opa_url,
            print_policy,
            dir,
        } => {
            if print_policy {
                print!("{}", crate::bench_policy::POLICY);
                return Ok(ExitCode::SUCCESS);
            }
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("policy"));
            let options = crate::bench_policy::PolicyBenchOptions {
                iterations,
                dir,
                opa_url,
            };
            crate::bench_policy::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Airbyte {
            connector,
            config: connector_config,
            catalog,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("airbyte"));
            let options = crate::bench_airbyte::AirbyteBenchOptions {
                connector,
                config: connector_config,
                catalog,
                dir,
            };
            crate::bench_airbyte::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Federation {
            facts,
            dimensions,
            runs,
            dir,
        } => {
            if facts == 0 || dimensions == 0 {
                bail!("--facts and --dimensions must be positive");
            }
            let options = crate::bench_federation::FederationBenchOptions {
                facts,
                dimensions,
                runs,
                dir: dir.unwrap_or_else(|| config.data_dir.join("bench").join("federation")),
            };
            crate::bench_federation::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Merge {
            rows,
            changed,
            updates,
            runs,
            copy_on_write,
            python,
            no_duckdb,
            dir,
        } => {
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("merge"));
            let options = crate::bench_merge::MergeBenchOptions {
                rows,
                changed,
                updates: updates.unwrap_or(changed / 2),
                runs,
                copy_on_write,
                python,
                no_duckdb,
                dir,
            };
            crate::bench_merge::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Catalog {
            clients,
            operations,
            postgres,
            dir,
        } => {
            if clients == 0 || operations == 0 {
                bail!("--clients and --operations must be positive");
            }
            let dir = dir.unwrap_or_else(|| config.data_dir.join("bench").join("catalog"));
            let options = crate::bench_catalog::CatalogBenchOptions {
                clients,
                operations,
                postgres,
                dir,
            };
            crate::bench_catalog::run(&config, &options).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Cdc {
            rows,
            changes,
            writers,
            freshness_seconds,
            rate,
            source,
            dir,
            latest_flush,
            cockroach_contract,
            metrics,
        } => {
            if metrics {
                crate::serve::install_metrics()?;
            }
            if rows == 0 || writers == 0 || rate == 0 {
                bail!("--rows, --writers and --rate must be positive");
            }
            let dir = dir.unwrap_or_else(|| crate::bench_cdc::default_dir(&config));
            crate::bench_cdc::run(
                &config,
                crate::bench_cdc::CdcBenchOptions {
                    rows,
                    changes,
                    writers,
                    freshness_seconds,
                    rate,
                    source,
                    dir,
                    cockroach_contract,
                    latest_flush: Some(latest_flush),
                },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `tarn bench tpch` was asked to do.
struct TpchOptions {
    sf: f64,
    runs: usize,
    only: Vec<usize>,
    python: Option<PathBuf>,
    no_duckdb: bool,
    reuse: bool,
}

async fn tpch(base: &Config, options: &TpchOptions, dir: &Path) -> Result<()> {
    let TpchOptions { sf, runs, .. } = *options;
    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.catalog.url = None;
    config.storage.warehouse = None;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("tarn bench tpch: scale factor {sf}, {cores} cores, {runs} timed run(s) per query");

    let lake = if options.reuse {
        if !config.data_dir.join("catalog.db").exists() {
            bail!(
                "--reuse: no benchmark lake in {}; run once without --reuse first",
                dir.display()
            );
        }
        println!("reusing the lake in {}", config.data_dir.display());
        Lake::open(&config).await?
    } else {
        generate_and_load(&config, sf, dir).await?
    };
    let session = TarnSession::new(lake.clone()).await?;
    for table in TABLES {
        if !lake
            .table_exists(&parse_table_name(&format!("tpch.{table}"))?)
            .await?
        {
            bail!("the benchmark lake has no table tpch.{table}; run without --reuse");
        }
    }
    let only = &options.only;
    session
        .run_sql("SET datafusion.catalog.default_schema = 'tpch'")
        .await?;
    let mut reference = if options.no_duckdb {
        None
    } else {
        match DuckDb::start(&lake, dir, options.python.clone()).await {
            Ok(d) => Some(d),
            Err(e) => {
                println!("\nno DuckDB reference run: {e:#}");
                None
            }
        }
    };
    println!(
        "\n== queries (best of {runs} after a warm-up{}) ==",
        if reference.is_some() {
            "; each run of tarn followed by one of DuckDB on the same files"
        } else {
            ""
        }
    );
    let mut tarn_times = BTreeMap::new();
    let mut duckdb_times = BTreeMap::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        let n = i + 1;
        if !only.is_empty() && !only.contains(&n) {
            continue;
        }
        let name = format!("q{n:02}");
        let mut best = f64::INFINITY;
        let mut best_duckdb = f64::INFINITY;
        let mut rows = 0;
        let mut failed = None;
        for run in 0..=runs {
            let t = Instant::now();
            match query_rows(&session, sql).await {
                Ok(r) => rows = r,
                Err(e) => {
                    failed = Some(format!("{e:#}"));
                    break;
                }
            }
            if run > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
            if let Some(duckdb) = reference.as_mut() {
                match duckdb.run(&name).await {
                    Ok(secs) if run > 0 => best_duckdb = best_duckdb.min(secs),
                    Ok(_) => {}
                    Err(e) => {
                        println!("{name} DuckDB: {e:#}");
                        best_duckdb = f64::NAN;
                    }
                }
            }
        }
        match failed {
            Some(e) => println!("{name} FAILED: {e}"),
            None => {
                let versus = if best_duckdb.is_finite() {
                    duckdb_times.insert(name.clone(), best_duckdb);
                    format!("   DuckDB {best_duckdb:>8.3}s")
                } else {
                    String::new()
                };
                println!("{name} {best:>8.3}s {rows:>6} rows{versus}");
                tarn_times.insert(name, best);
            }
        }
    }
    let duckdb = reference.is_some().then_some(duckdb_times);

    println!("\n== summary ==");
    let mut report = String::new();
    writeln!(
        report,
        "{:<5} {:>10} {:>10} {:>8}",
        "query", "tarn s", "duckdb s", "ratio"
    )?;
    let mut log_sum = 0.0;
    let mut counted = 0;
    for (q, t) in &tarn_times {
        let d = duckdb.as_ref().and_then(|d| d.get(q)).copied();
        match d {
            Some(d) if d > 0.0 => {
                let ratio = t / d;
                log_sum += ratio.ln();
                counted += 1;
                writeln!(report, "{q:<5} {t:>10.3} {d:>10.3} {ratio:>8.2}")?;
            }
            _ => writeln!(report, "{q:<5} {t:>10.3} {:>10} {:>8}", "-", "-")?,
        }
    }
    let tarn_geo = (tarn_times.values().map(|t| t.ln()).sum::<f64>() / tarn_times.len().max(1) as f64).exp();
    writeln!(
        report,
        "tarn geometric mean: {tarn_geo:.3}s over {} queries",
        tarn_times.len()
    )?;
    if counted > 0 {
        writeln!(
            report,
            "geometric mean ratio tarn/duckdb: {:.2} over {counted} queries",
            (log_sum / counted as f64).exp()
        )?;
    }
    writeln!(
        report,
        "peak RSS: {}",
        crate::measure::peak_rss().unwrap_or_else(|| "unknown".into())
    )?;
    print!("{report}");
    Ok(())
}

/// Generates the data as CSV in `dir/csv` and loads it into a fresh lake at `config.data_dir`,
/// printing load throughput.
pub(crate) async fn generate_and_load(config: &Config, sf: f64, dir: &Path) -> Result<Lake> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let csv_dir = dir.join("csv");
    std::fs::create_dir_all(&csv_dir)?;
    let start = Instant::now();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let csv_dir_clone = csv_dir.clone();
    let parts = cores.max(1) as i32;
    tokio::task::spawn_blocking(move || generate_csv(&csv_dir_clone, sf, parts)).await??;
    println!("generated CSV in {:.1}s", start.elapsed().as_secs_f64());

    let lake = Lake::open(config).await?;
    let session = TarnSession::new(lake.clone()).await?;
    for statement in TarnSession::prepare(SCHEMA_SQL)? {
        session.run(&statement).await?;
    }

    println!("\n== load (CSV -> Iceberg/Parquet zstd) ==");
    let mut total_rows = 0u64;
    let mut total_bytes = 0u64;
    let mut total_time = Duration::ZERO;
    for table in TABLES {
        let ident = parse_table_name(&format!("tpch.{table}"))?;
        let pattern = format!("{}/{table}-*.csv", csv_dir.display());
        let (outcome, bytes, elapsed) =
            crate::load::load_with_progress(&session, &[pattern], &ident, &LoadOptions::default(), false)
                .await?;
        println!(
            "{table:<10} {:>10} rows  {:>8.1} MB  {:>6.2}s  {:>10.0} rows/s  {:>6.1} MB/s",
            outcome.rows,
            bytes as f64 / 1e6,
            elapsed.as_secs_f64(),
            outcome.rows as f64 / elapsed.as_secs_f64().max(1e-3),
            bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3)
        );
        total_rows += outcome.rows;
        total_bytes += bytes;
        total_time += elapsed;
    }
    let secs = total_time.as_secs_f64().max(1e-3);
    println!(
        "{:<10} {:>10} rows  {:>8.1} MB  {:>6.2}s  {:>10.0} rows/s  {:>6.1} MB/s",
        "total",
        total_rows,
        total_bytes as f64 / 1e6,
        secs,
        total_rows as f64 / secs,
        total_bytes as f64 / 1e6 / secs
    );

    Ok(lake)
}

pub(crate) async fn query_rows(session: &TarnSession, sql: &str) -> Result<usize> {
    match session.run_sql(sql).await? {
        Output::Rows(stream) => {
            let batches: Vec<_> = stream.try_collect().await.map_err(tarn_query::from_df_error)?;
            Ok(batches.iter().map(|b| b.num_rows()).sum())
        }
        Output::Command { .. } => Ok(0),
    }
}

fn generate_csv(dir: &Path, sf: f64, parts: i32) -> Result<()> {
    use tpchgen::csv::*;
    use tpchgen::generators::*;
    fn write_part<T: std::fmt::Display>(
        dir: &Path,
        table: &str,
        part: i32,
        header: &str,
        rows: impl Iterator<Item = T>,
    ) -> Result<()> {
        let path = dir.join(format!("{table}-{part}.csv"));
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        writeln!(out, "{header}")?;
        for row in rows {
            writeln!(out, "{row}")?;
        }
        out.flush()?;
        Ok(())
    }
    // The two tiny tables come in one part.
    write_part(
        dir,
        "nation",
        1,
        NationCsv::header(),
        NationGenerator::new(sf, 1, 1).iter().map(NationCsv::new),
    )?;
    write_part(
        dir,
        "region",
        1,
        RegionCsv::header(),
        RegionGenerator::new(sf, 1, 1).iter().map(RegionCsv::new),
    )?;
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for part in 1..=parts {
            handles.push(scope.spawn(move || -> Result<()> {
                write_part(
                    dir,
                    "part",
                    part,
                    PartCsv::header(),
                    PartGenerator::new(sf, part, parts).iter().map(PartCsv::new),
                )?;
                write_part(
                    dir,
                    "supplier",
                    part,
                    SupplierCsv::header(),
                    SupplierGenerator::new(sf, part, parts)
                        .iter()
                        .map(SupplierCsv::new),
                )?;
                write_part(
                    dir,
                    "partsupp",
                    part,
                    PartSuppCsv::header(),
                    PartSuppGenerator::new(sf, part, parts)
                        .iter()
                        .map(PartSuppCsv::new),
                )?;
                write_part(
                    dir,
                    "customer",
                    part,
                    CustomerCsv::header(),
                    CustomerGenerator::new(sf, part, parts)
                        .iter()
                        .map(CustomerCsv::new),
                )?;
                write_part(
                    dir,
                    "orders",
                    part,
                    OrderCsv::header(),
                    OrderGenerator::new(sf, part, parts).iter().map(OrderCsv::new),
                )?;
                write_part(
                    dir,
                    "lineitem",
                    part,
                    LineItemCsv::header(),
                    LineItemGenerator::new(sf, part, parts)
                        .iter()
                        .map(LineItemCsv::new),
                )?;
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        Ok(())
    })
}

/// DuckDB answering one query run at a time (`benches/tpch_duckdb.py --serve`) over the very
/// Parquet files the benchmark's Iceberg tables reference.
struct DuckDb {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl DuckDb {
    async fn start(lake: &Lake, dir: &Path, python: Option<PathBuf>) -> Result<Self> {
        let mut tables = serde_json::Map::new();
        for table in TABLES {
            let t = lake
                .load_table(&parse_table_name(&format!("tpch.{table}"))?)
                .await?;
            let scan = t.scan().build().context("cannot plan a scan")?;
            let tasks: Vec<_> = scan.plan_files().await?.try_collect().await?;
            let files: Vec<serde_json::Value> = tasks
                .iter()
                .map(|task| serde_json::Value::String(task.data_file_path().to_string()))
                .collect();
            tables.insert(table.to_string(), serde_json::Value::Array(files));
        }
        let tables_path = dir.join("tables.json");
        std::fs::write(&tables_path, serde_json::to_vec_pretty(&tables)?)?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = root.join("benches/tpch_duckdb.py");
        let python = python.unwrap_or_else(|| {
            let venv = root.join(".venv/bin/python");
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut child = tokio::process::Command::new(&python)
            .arg(&script)
            .arg("--tables")
            .arg(&tables_path)
            .arg("--queries")
            .arg(root.join("benches/tpch"))
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--serve")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let stdin = child.stdin.take().context("DuckDB's stdin")?;
        let stdout = child.stdout.take().context("DuckDB's stdout")?;
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        println!("DuckDB {threads} threads via {}", script.display());
        Ok(Self { child, stdin, lines })
    }

    /// Runs `query` (`q05`) once; its wall time in seconds.
    async fn run(&mut self, query: &str) -> Result<f64> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{query}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let Some(line) = self.lines.next_line().await? else {
            let status = self.child.wait().await?;
            bail!("the DuckDB reference script exited ({status})");
        };
        let answer: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("unexpected answer {line:?}"))?;
        if let Some(error) = answer.get("error").and_then(serde_json::Value::as_str) {
            bail!("{error}");
        }
        answer
            .get("seconds")
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("no seconds in {line:?}"))
    }
}
