//! `tarn maintain`: compaction, snapshot expiry and orphan-file removal on demand, with the
//! thresholds of the `[maintenance]` config section.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use iceberg::{NamespaceIdent, TableIdent};
use indicatif::{ProgressBar, ProgressStyle};
use tarn_core::Config;
use tarn_lake::{CompactOptions, ExpireOptions, Lake, OrphanOptions, Progress, ProgressFn};

/// Options of `tarn maintain`.
#[derive(Debug, Clone, Args)]
pub struct MaintainArgs {
    /// Tables (`ns.table`) or namespaces (`ns`); default every table of the lake.
    targets: Vec<String>,
    /// Compact small files and files with many deleted rows.
    #[arg(long)]
    compact: bool,
    /// Expire snapshots older than `maintenance.snapshot_age` (keeping
    /// `maintenance.retain_snapshots`) and delete the files only they reached.
    #[arg(long)]
    expire: bool,
    /// Delete files no snapshot references and older than `maintenance.orphan_age`.
    #[arg(long)]
    orphans: bool,
    /// Report what orphan removal would delete without deleting it.
    #[arg(long)]
    dry_run: bool,
    /// The policy each step is asked of, for the principal the maintenance runs as (a
    /// scheduled `maintain` task's job principal); `tarn maintain` runs as the operator.
    #[arg(skip)]
    governance: Option<Arc<tarn_query::governance::Governance>>,
}

fn progress_bar(show: bool) -> (ProgressBar, ProgressFn) {
    let bar = if show && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} files")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let b = bar.clone();
    let f: ProgressFn = Arc::new(move |p: &Progress| {
        b.set_length(p.files_total);
        b.set_position(p.files_done);
        b.set_message(format!("{} ({:.1} MB)", p.phase, p.bytes_done as f64 / 1e6));
    });
    (bar, f)
}

async fn targets(lake: &Lake, names: &[String]) -> Result<Vec<TableIdent>> {
    if names.is_empty() {
        return Ok(lake.list_all_tables().await?);
    }
    let mut out = Vec::new();
    for name in names {
        if name.contains('.') {
            let ident = tarn_lake::parse_table_name(name)?;
            if !lake.table_exists(&ident).await? {
                bail!("table {name} does not exist");
            }
            out.push(ident);
        } else {
            let ns = NamespaceIdent::new(name.clone());
            if !lake.namespace_exists(&ns).await? {
                bail!("schema {name} does not exist");
            }
            out.extend(lake.list_tables(&ns).await?);
        }
    }
    Ok(out)
}

/// Runs `tarn maintain`.
pub async fn run(args: MaintainArgs, config: &Config) -> Result<ExitCode> {
    let lake = Lake::open(config).await?;
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    maintain_yielding(&lake, config, &args, show, &mut |line| println!("{line}")).await?;
    Ok(ExitCode::SUCCESS)
}

impl MaintainArgs {
    /// The maintenance of `targets` (tables `ns.table` or namespaces; every table when empty):
    /// all three steps unless `compact`, `expire` or `orphans` choose some.
    pub fn new(targets: Vec<String>, compact: bool, expire: bool, orphans: bool, dry_run: bool) -> Self {
        Self {
            targets,
            compact,
            expire,
            orphans,
            dry_run,
            governance: None,
        }
    }

    /// This maintenance asked of `governance`'s policy, step by step and table by table, as
    /// `ExecuteTableProcedure` with Trino's procedure names (`optimize`, `expire_snapshots`,
    /// `remove_orphan_files`) for the principal the caller runs as; each step is audited.
    pub fn governed(mut self, governance: Option<Arc<tarn_query::governance::Governance>>) -> Self {
        self.governance = governance;
        self
    }
}

/// Asks the policy (when governed) whether the current principal may run `procedure` on
/// `ident`.
fn check_procedure(args: &MaintainArgs, ident: &TableIdent, procedure: &str) -> Result<()> {
    if let Some(g) = &args.governance {
        g.check_table_write("ExecuteTableProcedure", ident, Some(procedure))?;
    }
    Ok(())
}

/// Records (when governed) that `procedure` ran on `ident`, rewriting `rows` rows.
fn audit_procedure(args: &MaintainArgs, ident: &TableIdent, procedure: &str, rows: u64) {
    if let Some(g) = &args.governance {
        g.record_table_write(&format!("ExecuteTableProcedure({procedure})"), ident, rows);
    }
}

/// The runtime maintenance runs on ([`tarn_core::priority::maintenance_runtime`]):
/// `maintenance.threads` workers at `maintenance.thread_nice` below the process's operating
/// system priority, shared with the CDC writers' automatic maintenance.
fn maintenance_runtime(config: &Config) -> Result<&'static tokio::runtime::Handle> {
    let m = &config.maintenance;
    tarn_core::priority::maintenance_runtime(m.threads, m.thread_nice)
        .context("cannot start the maintenance runtime")
}

/// [`maintain`] on the maintenance runtime (see [`maintenance_runtime`]): `tarn maintain` and
/// scheduled `maintain` tasks run this way, so they yield to the pipelines.
pub async fn maintain_yielding(
    lake: &Lake,
    config: &Config,
    args: &MaintainArgs,
    show: bool,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The principal the caller runs as goes along to the maintenance runtime.
    let principal = tarn_query::governance::current_principal();
    let task = maintenance_runtime(config)?.spawn({
        let (lake, config, args) = (lake.clone(), config.clone(), args.clone());
        tarn_query::governance::with_principal(principal, async move {
            maintain(&lake, &config, &args, show, &mut |line| {
                let _ = tx.send(line);
            })
            .await
        })
    });
    while let Some(line) = rx.recv().await {
        out(line);
    }
    task.await.context("maintenance panicked")?
}

/// The maintenance `args` asks for, on `lake`: what each step did, as lines to `out` (what
/// `tarn maintain` prints, and a scheduled `maintain` task's log); progress bars when `show`.
pub async fn maintain(
    lake: &Lake,
    config: &Config,
    args: &MaintainArgs,
    show: bool,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<()> {
    let all = !args.compact && !args.expire && !args.orphans;
    let mut tables = targets(lake, &args.targets).await?;
    if args.governance.is_some() && args.targets.is_empty() {
        // The audit trail is maintained by its own writer; nobody's policy reaches it.
        tables.retain(|t| t.namespace().join(".") != tarn_query::audit::AUDIT_SCHEMA);
    }
    let m = &config.maintenance;
    let now = chrono::Utc::now();
    let age = |key: &str| chrono::Duration::from_std(m.duration(key)).unwrap_or(chrono::Duration::hours(1));
    for ident in tables {
        out(format!("{ident}"));
        if all || args.compact {
            check_procedure(args, &ident, "optimize")?;
            let (bar, progress) = progress_bar(show);
            let outcome = lake
                .compact(
                    &ident,
                    &CompactOptions {
                        small_file_threshold: m.small_file_bytes,
                        min_input_files: m.min_files,
                        delete_ratio_threshold: m.delete_ratio,
                        progress: Some(progress),
                        ..CompactOptions::default()
                    },
                )
                .await;
            bar.finish_and_clear();
            let outcome = outcome?;
            audit_procedure(args, &ident, "optimize", outcome.rows_rewritten);
            match outcome.snapshot_id {
                Some(id) => out(format!(
                    "  compacted: {} data file(s) and {} delete file(s) into {}; {} rows rewritten, {} deleted rows purged; {:.1} MB read, {:.1} MB written (snapshot {id})",
                    outcome.removed_data_files.len(),
                    outcome.removed_delete_files.len(),
                    outcome.added_data_files.len(),
                    outcome.rows_rewritten,
                    outcome.rows_purged,
                    outcome.bytes_read as f64 / 1e6,
                    outcome.bytes_written as f64 / 1e6,
                )),
                None => out("  compaction: nothing to do".to_string()),
            }
        }
        if all || args.expire {
            check_procedure(args, &ident, "expire_snapshots")?;
            let (bar, progress) = progress_bar(show);
            let outcome = lake
                .expire_snapshots(
                    &ident,
                    &ExpireOptions {
                        older_than: now - age("snapshot_age"),
                        retain_last: m.retain_snapshots,
                        progress: Some(progress),
                    },
                )
                .await;
            bar.finish_and_clear();
            let outcome = outcome?;
            audit_procedure(args, &ident, "expire_snapshots", 0);
            out(format!(
                "  expired {} snapshot(s); deleted {} manifest list(s), {} manifest(s), {} data file(s), {} delete file(s), {:.1} MB",
                outcome.expired_snapshots.len(),
                outcome.deleted_manifest_lists,
                outcome.deleted_manifests,
                outcome.deleted_data_files,
                outcome.deleted_delete_files,
                outcome.deleted_bytes as f64 / 1e6
            ));
        }
        if all || args.orphans {
            check_procedure(args, &ident, "remove_orphan_files")?;
            let (bar, progress) = progress_bar(show);
            let outcome = lake
                .remove_orphan_files(
                    &ident,
                    &OrphanOptions {
                        older_than: now - age("orphan_age"),
                        dry_run: args.dry_run,
                        progress: Some(progress),
                    },
                )
                .await;
            bar.finish_and_clear();
            let outcome = outcome?;
            if !args.dry_run {
                audit_procedure(args, &ident, "remove_orphan_files", 0);
            }
            out(format!(
                "  {} {} orphan file(s) of {} listed ({:.1} MB)",
                if args.dry_run { "would delete" } else { "deleted" },
                outcome.orphans.len(),
                outcome.files_listed,
                outcome.orphan_bytes as f64 / 1e6
            ));
            if args.dry_run {
                for path in &outcome.orphans {
                    out(format!("    {path}"));
                }
            }
        }
    }
    Ok(())
}
