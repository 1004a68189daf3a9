//! Loading files into a table with a progress line: `tarn load`, and the load phase of
//! `tarn bench tpch`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use tarn_query::TarnSession;
use tarn_query::load::LoadOptions;
use tarn_query::write::WriteProgress;

/// Loads `paths` into `ident` with a progress bar (when `show` and stderr is a terminal);
/// returns what was written and how long it took.
pub async fn load_with_progress(
    session: &TarnSession,
    paths: &[String],
    ident: &iceberg::TableIdent,
    options: &LoadOptions,
    show: bool,
) -> Result<(tarn_query::write::WriteOutcome, u64, Duration)> {
    let plan = tarn_query::load::plan_load(session, paths, options).await?;
    let progress = Arc::new(WriteProgress::default());
    let bar = if show {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let total_bytes = plan.bytes;
    let files = plan.files.len();
    let start = Instant::now();
    let ticker = {
        let bar = bar.clone();
        let progress = progress.clone();
        let ident = ident.to_string();
        tokio::spawn(async move {
            loop {
                let rows = progress.rows.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "loading {files} file(s), {} into {ident}: {rows} rows ({:.0} rows/s)",
                    human_bytes(total_bytes),
                    rows as f64 / secs
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let outcome = tarn_query::load::load(session, &plan, ident, options, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let outcome = outcome?;
    let elapsed = start.elapsed();
    if show {
        let secs = elapsed.as_secs_f64().max(0.001);
        eprintln!(
            "loaded {} rows from {files} file(s) ({}) into {ident} in {:.2}s: {:.0} rows/s, {:.1} MB/s; {} data file(s), snapshot {}",
            outcome.rows,
            human_bytes(total_bytes),
            secs,
            outcome.rows as f64 / secs,
            total_bytes as f64 / 1e6 / secs,
            outcome.files,
            outcome.snapshot_id.map_or("none".into(), |s| s.to_string()),
        );
    }
    Ok((outcome, total_bytes, elapsed))
}

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
