//! `tarn bench airbyte`: records/s of `tarn ingest airbyte` beside the connector's own `read`
//! with its output thrown away (the ceiling: no destination can go faster than its source), in
//! the same run, on the same configured catalog.
//!
//! The catalog is discovered once (or given); both runs read it without `check` or `discover`,
//! so the figures compare reading alone with reading, decoding, writing Parquet and committing.
//! The lake is a fresh one in the benchmark's directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tarn_core::Config;
use tarn_lake::Lake;

/// What to measure.
#[derive(Debug, Clone)]
pub struct AirbyteBenchOptions {
    /// The connector's command.
    pub connector: String,
    /// Its configuration.
    pub config: PathBuf,
    /// A configured catalog; discovered when absent.
    pub catalog: Option<PathBuf>,
    /// Where the lake goes (cleared first).
    pub dir: PathBuf,
}

/// Runs the benchmark (module doc).
pub async fn run(base: &Config, options: &AirbyteBenchOptions) -> Result<()> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let catalog_path = match &options.catalog {
        Some(path) => tarn_core::config::absolute(path),
        None => {
            let catalog = crate::airbyte::discovered_catalog(&options.connector, &options.config).await?;
            let path = tarn_core::config::absolute(&dir.join("catalog.json"));
            std::fs::write(&path, serde_json::to_vec(&catalog)?)?;
            path
        }
    };
    let config_path = tarn_core::config::absolute(&options.config);

    // The ceiling: the connector's own read, its output to /dev/null.
    let mut words = options.connector.split_whitespace();
    let program = words.next().context("--connector is empty")?;
    let started = Instant::now();
    let status = tokio::process::Command::new(program)
        .args(words)
        .arg("read")
        .arg("--config")
        .arg(&config_path)
        .arg("--catalog")
        .arg(&catalog_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot start {program}"))?;
    let ceiling = started.elapsed();
    if !status.success() {
        bail!("the connector's own read failed: {status}");
    }

    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.storage.warehouse = None;
    config.catalog.url = None;
    config.validate()?;
    let lake = Lake::open(&config).await?;
    let flags: Vec<String> = [
        "--connector",
        &options.connector,
        "--config",
        &config_path.display().to_string(),
        "--catalog",
        &catalog_path.display().to_string(),
        "--namespace",
        "bench",
        "--skip-check",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let records = crate::airbyte::sync_with_flags(&lake, &flags).await?;
    let synced = started.elapsed();

    let rate = |secs: f64| records as f64 / secs.max(0.001);
    println!("airbyte: {records} records, connector {:?}", options.connector);
    println!(
        "  connector read > /dev/null  {:>8.2} s  {:>10.0} records/s",
        ceiling.as_secs_f64(),
        rate(ceiling.as_secs_f64())
    );
    println!(
        "  tarn ingest airbyte         {:>8.2} s  {:>10.0} records/s  ({:.0} % of the ceiling)",
        synced.as_secs_f64(),
        rate(synced.as_secs_f64()),
        100.0 * ceiling.as_secs_f64() / synced.as_secs_f64().max(0.001)
    );
    Ok(())
}
