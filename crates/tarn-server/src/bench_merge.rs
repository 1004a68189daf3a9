//! `tarn bench merge`: a `MERGE` of changed rows (updates and inserts) into a large Iceberg
//! table — its time, the files it writes (data and position-delete files) and what reading the
//! table costs afterwards (a full-scan aggregate before against after) — beside DuckDB running
//! the same `MERGE` on the same generated data in the same run (`benches/merge_duckdb.py`, on
//! DuckDB's own database file).
//!
//! 1. A fresh lake; `bench.target` (`id`, `k`, `v`, `s`) filled with `--rows` rows from
//!    `generate_series`, `bench.changes` with `--changed` rows: the first `--updates` of them
//!    update ids spread evenly over the target (so every data file is touched), the rest insert
//!    new ids after the last.
//! 2. The aggregate `SELECT count(*), sum(v), count(s), max(k)` (best of `--runs` after a
//!    warm-up), the `MERGE` (once), the aggregate again; the snapshot summary of the `MERGE`'s
//!    commit gives the files written.
//! 3. The DuckDB script builds the same tables and does the same, after tarn, so each engine has
//!    the machine to itself.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tarn_core::Config;
use tarn_lake::{Lake, parse_table_name};
use tarn_query::TarnSession;

const SCAN: &str = "SELECT count(*), sum(v), count(s), max(k) FROM bench.target";

/// What to measure.
#[derive(Debug, Clone)]
pub struct MergeBenchOptions {
    /// Rows of the target table.
    pub rows: u64,
    /// Rows of the change set.
    pub changed: u64,
    /// How many of the changed rows update existing ones (the rest are inserts).
    pub updates: u64,
    /// Timed runs of the scan (after one warm-up); the best is reported.
    pub runs: usize,
    /// Write the MERGE copy-on-write instead of merge-on-read.
    pub copy_on_write: bool,
    /// Python with duckdb; default `.venv/bin/python`.
    pub python: Option<PathBuf>,
    /// Skip the DuckDB reference run.
    pub no_duckdb: bool,
    /// Where the lake and DuckDB's database go (cleared first).
    pub dir: PathBuf,
}

/// One engine's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    load: f64,
    scan_before: f64,
    merge: f64,
    scan_after: f64,
}

/// Runs the benchmark (module doc).
pub async fn run(base: &Config, options: &MergeBenchOptions) -> Result<()> {
    let MergeBenchOptions {
        rows,
        changed,
        updates,
        runs,
        ..
    } = *options;
    if rows == 0 || changed == 0 || updates > changed || updates > rows {
        bail!(
            "tarn bench merge: need --rows > 0, --changed > 0 and --updates at most --changed and \
             --rows (got {rows}, {changed}, {updates})"
        );
    }
    let inserts = changed - updates;
    let stride = rows / updates.max(1);
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mode = if options.copy_on_write {
        "copy-on-write"
    } else {
        "merge-on-read"
    };
    println!(
        "tarn bench merge: {rows} rows, {changed} changed ({updates} updates, {inserts} inserts), \
         {cores} cores, {mode}"
    );

    let mut config = base.clone();
    config.data_dir = dir.join("lake");
    config.storage.warehouse = None;
    config.catalog.url = None;
    config.validate()?;
    let lake = Lake::open(&config).await?;
    let session = TarnSession::new(lake.clone()).await?;

    println!("\n== tarn (Iceberg, {mode}) ==");
    let started = Instant::now();
    for sql in [
        "CREATE SCHEMA bench".to_string(),
        format!(
            "CREATE TABLE bench.target (id BIGINT NOT NULL, k BIGINT, v DOUBLE, s VARCHAR) \
             TBLPROPERTIES ('write.merge.mode' = '{mode}')"
        ),
        format!(
            "INSERT INTO bench.target SELECT value, value % 1000, value * 0.5, 'row ' || value \
             FROM generate_series(1, {rows})"
        ),
        format!(
            "CREATE TABLE bench.changes AS SELECT CASE WHEN value <= {updates} THEN value * {stride} \
             ELSE {rows} + value - {updates} END AS id, value % 7 AS k, value * 2.0 AS v, \
             'changed ' || value AS s FROM generate_series(1, {changed})"
        ),
    ] {
        crate::bench::query_rows(&session, &sql)
            .await
            .with_context(|| format!("setting up: {sql}"))?;
    }
    let mut tarn = Figures {
        load: started.elapsed().as_secs_f64(),
        ..Figures::default()
    };
    let ident = parse_table_name("bench.target")?;
    let before = lake.load_table(&ident).await?;
    let data_files_before = summary_value(&before, "total-data-files");
    println!(
        "load         {:>8.2} s  ({data_files_before} data files)",
        tarn.load
    );

    tarn.scan_before = best_scan(&session, runs).await?;
    println!("scan before  {:>8.3} s", tarn.scan_before);

    let started = Instant::now();
    let merged = merge_count(
        &session,
        "MERGE INTO bench.target t USING bench.changes c ON t.id = c.id \
         WHEN MATCHED THEN UPDATE SET k = c.k, v = c.v, s = c.s \
         WHEN NOT MATCHED THEN INSERT VALUES (c.id, c.k, c.v, c.s)",
    )
    .await?;
    tarn.merge = started.elapsed().as_secs_f64();
    if merged != changed {
        bail!("MERGE reported {merged} rows, expected {changed}");
    }
    let after = lake.load_table(&ident).await?;
    let added_data = summary_value(&after, "added-data-files");
    let added_deletes = summary_value(&after, "added-delete-files");
    let removed_data = summary_value(&after, "deleted-data-files");
    let added_bytes = summary_value(&after, "added-files-size");
    let position_deletes = summary_value(&after, "added-position-deletes");
    println!(
        "MERGE        {:>8.2} s  {merged} rows; wrote {added_data} data + {added_deletes} delete \
         files ({:.1} MB, {position_deletes} position deletes), replaced {removed_data} data files",
        tarn.merge,
        added_bytes.parse::<f64>().unwrap_or(0.0) / 1e6
    );

    tarn.scan_after = best_scan(&session, runs).await?;
    let rows_after = count_rows(&session).await?;
    if rows_after != rows + inserts {
        bail!(
            "after the MERGE the table has {rows_after} rows, expected {}",
            rows + inserts
        );
    }
    println!(
        "scan after   {:>8.3} s  ({:.2}x before; {rows_after} rows)",
        tarn.scan_after,
        tarn.scan_after / tarn.scan_before.max(1e-6)
    );
    drop(session);

    let duckdb = if options.no_duckdb {
        None
    } else {
        match duckdb(options, dir, cores).await {
            Ok(d) => Some(d),
            Err(e) => {
                println!("\nno DuckDB reference run: {e:#}");
                None
            }
        }
    };

    println!("\n== summary ==");
    println!(
        "{:<12} {:>10} {:>10} {:>8}",
        "phase", "tarn s", "duckdb s", "ratio"
    );
    let line = |name: &str, t: f64, d: Option<f64>| match d {
        Some(d) => println!("{name:<12} {t:>10.3} {d:>10.3} {:>8.2}", t / d.max(1e-6)),
        None => println!("{name:<12} {t:>10.3} {:>10} {:>8}", "-", "-"),
    };
    line("load", tarn.load, duckdb.map(|d| d.load));
    line("scan before", tarn.scan_before, duckdb.map(|d| d.scan_before));
    line("merge", tarn.merge, duckdb.map(|d| d.merge));
    line("scan after", tarn.scan_after, duckdb.map(|d| d.scan_after));
    println!(
        "peak RSS: {}",
        crate::measure::peak_rss().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

fn summary_value(table: &iceberg::table::Table, key: &str) -> String {
    table
        .metadata()
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get(key).cloned())
        .unwrap_or_else(|| "0".into())
}

async fn best_scan(session: &TarnSession, runs: usize) -> Result<f64> {
    let mut best = f64::INFINITY;
    for run in 0..=runs.max(1) {
        let started = Instant::now();
        crate::bench::query_rows(session, SCAN).await?;
        if run > 0 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

async fn count_rows(session: &TarnSession) -> Result<u64> {
    first_i64(session, "SELECT count(*) FROM bench.target")
        .await
        .map(|n| n as u64)
}

async fn first_i64(session: &TarnSession, sql: &str) -> Result<i64> {
    use arrow::array::{Array, Int64Array};
    use futures::TryStreamExt;
    let tarn_query::Output::Rows(stream) = session.run_sql(sql).await? else {
        bail!("{sql}: no rows");
    };
    let batches: Vec<_> = stream.try_collect().await.map_err(tarn_query::from_df_error)?;
    let batch = batches.iter().find(|b| b.num_rows() > 0).context("no rows")?;
    let column = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .context("not an integer")?;
    Ok(column.value(0))
}

async fn merge_count(session: &TarnSession, sql: &str) -> Result<u64> {
    match session.run_sql(sql).await? {
        tarn_query::Output::Command { rows, tag } => {
            rows.with_context(|| format!("MERGE answered {tag:?} without a count"))
        }
        tarn_query::Output::Rows(_) => bail!("MERGE returned rows"),
    }
}

async fn duckdb(options: &MergeBenchOptions, dir: &std::path::Path, cores: usize) -> Result<Figures> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("benches/merge_duckdb.py");
    let python = options.python.clone().unwrap_or_else(|| {
        let venv = root.join(".venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg("--db")
        .arg(dir.join("merge.duckdb"))
        .args(["--rows", &options.rows.to_string()])
        .args(["--changed", &options.changed.to_string()])
        .args(["--updates", &options.updates.to_string()])
        .args(["--threads", &cores.to_string()])
        .args(["--runs", &options.runs.max(1).to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} exited ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("the DuckDB script printed nothing")?;
    let answer: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("unexpected answer {line:?}"))?;
    let get = |key: &str| {
        answer
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("no {key} in {line:?}"))
    };
    let figures = Figures {
        load: get("load_seconds")?,
        scan_before: get("scan_before_seconds")?,
        merge: get("merge_seconds")? + get("checkpoint_seconds")?,
        scan_after: get("scan_after_seconds")?,
    };
    let rows_after = get("rows_after")? as u64;
    if rows_after != options.rows + options.changed - options.updates {
        bail!("DuckDB's table has {rows_after} rows after its MERGE");
    }
    println!(
        "\n== DuckDB {} (its own database file, {cores} threads) ==",
        answer["version"].as_str().unwrap_or("?")
    );
    println!("load         {:>8.2} s", figures.load);
    println!("scan before  {:>8.3} s", figures.scan_before);
    println!(
        "MERGE        {:>8.2} s  (with its CHECKPOINT; database file {:.1} MB -> {:.1} MB)",
        figures.merge,
        get("db_bytes_before")? / 1e6,
        get("db_bytes_after")? / 1e6
    );
    println!(
        "scan after   {:>8.3} s  ({:.2}x before)",
        figures.scan_after,
        figures.scan_after / figures.scan_before.max(1e-6)
    );
    Ok(figures)
}
