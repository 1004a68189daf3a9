//! `tarn bench publish`: PostgreSQL → Kafka (`cdc.sink = "kafka"`), against PostgreSQL's own
//! tools on the same data in the same run, and freshness through Kafka into the lake.
//!
//! 1. **Initial copy**: a table of `--rows` rows is published as snapshot-read events;
//!    reference: `psql` `\copy` of the same table to `/dev/null`.
//! 2. **Backlog**: with the publisher stopped, `--writers` connections make `--changes`
//!    inserts, updates and deletes; a second slot on the same publication holds the same
//!    backlog. `pg_recvlogical` drains that slot (reference), then the publisher drains its own
//!    into Kafka transactions until it acknowledged the backlog's end — both times and the
//!    ratio are printed.
//! 3. **Freshness**: the publisher and a Kafka pipeline consuming its topics into the lake run
//!    together while writers keep `--rate` changes/s; a probe commits a row every 100 ms in
//!    PostgreSQL and polls tarn's SQL until it is visible: p50 and p99 of commit-to-visibility
//!    through Kafka.
//!
//! The broker is tansu from the project's venv (in memory, on a loopback port), the source a
//! private PostgreSQL (or `--source`). Only the release profile's figures belong in
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tarn_cdc::pipeline::{PipelineHandle, RunOptions};
use tarn_cdc::postgres::local::LocalPostgres;
use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::TarnSession;
use tarn_test_utils::kafka::Broker;

use crate::bench_cdc::{
    CdcBenchOptions, backlog_with_reference, connect, create_tables, drain_backlog, freshness, percentile,
    psql_copy_seconds, query_rows_text,
};

/// Runs the benchmark; see the module doc. `partitions`: of each table topic.
pub async fn run(base: &Config, options: CdcBenchOptions, partitions: i32) -> Result<()> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let _local;
    let url = match &options.source {
        Some(url) => url.clone(),
        None => {
            let pg_dir = dir.join("postgres");
            let pg = tokio::task::spawn_blocking(move || LocalPostgres::start_scratch(&pg_dir)).await??;
            println!("private PostgreSQL in {}", pg.dir().display());
            pg.psql("postgres", "CREATE DATABASE bench")?;
            let url = pg.url("bench");
            _local = pg;
            url
        }
    };
    let broker = tokio::task::block_in_place(Broker::start)
        .context("cannot start the benchmark's Kafka broker (tansu; bash scripts/setup.sh installs it)")?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "tarn bench publish: {} rows, {} changes from {} writers, topics of {partitions} partition(s), broker tansu on {}, {cores} cores",
        options.rows,
        options.changes,
        options.writers,
        broker.bootstrap()
    );
    let client = connect(&url).await?;
    create_tables(&client, options.rows).await?;

    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.catalog.url = None;
    config.storage.warehouse = None;
    config.cdc.source = Some(url.clone());
    config.cdc.tables = vec!["public.bench_*".into()];
    config.cdc.pipeline = "bench".into();
    config.cdc.sink = "kafka".into();
    config.cdc.publish.brokers = broker.bootstrap();
    config.cdc.publish.topic_prefix = Some("bench".into());
    config.cdc.publish.partitions = partitions;
    config.validate()?;
    let lake = Lake::open(&config).await?;

    // 1. Initial copy, against psql's \copy of the same table.
    println!("\n== initial copy into Kafka ==");
    let reference = psql_copy_seconds(&url)?;
    let started = Instant::now();
    let mut publisher = PipelineHandle::spawn(&config, lake.clone(), RunOptions::default());
    publisher
        .wait_until("the initial copy", Duration::from_secs(3600), |r| {
            r.state == "streaming"
        })
        .await?;
    let copy = started.elapsed().as_secs_f64();
    println!(
        "tarn       {:>10} rows in {copy:>7.2}s  {:>10.0} rows/s (r events, one Kafka transaction)\n\
         psql \\copy {:>10} rows in {reference:>7.2}s  {:>10.0} rows/s\nratio tarn/psql: {:.2}",
        options.rows,
        options.rows as f64 / copy,
        options.rows,
        options.rows as f64 / reference,
        copy / reference
    );
    publisher.stop().await?;

    // 2. The same backlog drained by pg_recvlogical and by the publisher.
    println!("\n== backlog: PostgreSQL → Kafka ==");
    let backlog = backlog_with_reference(&client, &url, &options).await?;
    let (mut publisher, _) = drain_backlog(&config, &lake, &backlog, "into Kafka, committed").await?;

    // 3. Freshness through Kafka: the publisher and a Kafka pipeline into the lake together.
    println!(
        "\n== freshness PostgreSQL → Kafka → lake: {} changes/s for {}s, Kafka commits every {}, lake commits every {} ==",
        options.rate, options.freshness_seconds, config.cdc.publish.flush_interval, config.cdc.flush.interval
    );
    let mut consumer_config = config.clone();
    consumer_config.cdc.source_kind = "kafka".into();
    consumer_config.cdc.sink = "lake".into();
    consumer_config.cdc.pipeline = "bench_consume".into();
    consumer_config.cdc.kafka.brokers = broker.bootstrap();
    consumer_config.cdc.kafka.topics = vec!["^bench\\.public\\..*".into()];
    consumer_config.cdc.kafka.group = "tarn_bench_publish".into();
    consumer_config.cdc.kafka.session_timeout = "6s".into();
    consumer_config.validate()?;
    let mut consumer = PipelineHandle::spawn(&consumer_config, lake.clone(), RunOptions::default());
    let session = TarnSession::new(lake.clone()).await?;
    let caught_up = Instant::now();
    consumer
        .wait_for::<anyhow::Error, _, _>(
            "the lake to hold the published tables",
            Duration::from_secs(3600),
            None,
            |_| {
                let session = &session;
                async move {
                    let rows = query_rows_text(session, "SELECT count(*) FROM cdc.bench_probe").await;
                    Ok(rows.is_ok_and(|r| r.first().is_some_and(|c| c == "1")))
                }
            },
        )
        .await?;
    println!(
        "the lake caught up with the topics in {:.1}s",
        caught_up.elapsed().as_secs_f64()
    );
    let fresh = freshness(&url, &session, "cdc", &options, 0).await?;
    consumer.stop().await?;
    publisher.stop().await?;
    println!(
        "freshness over {} probes: p50 {:.3}s  p99 {:.3}s  max {:.3}s",
        fresh.len(),
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        fresh.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "\npeak RSS: {}",
        crate::measure::peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}
