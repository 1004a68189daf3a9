//! The automatic maintenance policy of the tables a sink writes (`[maintenance]` in the
//! config): compaction, snapshot expiry and orphan-file removal, run by the writer itself.
//!
//! The pipeline runs it between commits (nothing buffered, no transaction open), so nothing
//! this writer does conflicts with it. Compaction rewrites data files, which moves rows: the
//! key index drops the rewritten files and reads the files compaction wrote
//! ([`LakeSink::reindex_files`]). Stopped tables are left alone.

use std::collections::HashSet;
use std::time::Instant;

use iceberg::TableIdent;
use tarn_core::Result;

use super::{LakeSink, rebuild_index};

impl LakeSink {
    /// The automatic maintenance policy: compacts, expires snapshots of and removes orphan
    /// files from every table this sink writes, between commits (so nothing of this writer
    /// conflicts), and re-indexes the files compaction wrote.
    pub async fn maintain(&mut self, config: &tarn_core::config::MaintenanceConfig) -> Result<()> {
        if self.pending_events > 0 || self.in_transaction {
            return Ok(());
        }
        let lake = self.lake.clone();
        let now = chrono::Utc::now();
        let age = |key: &str| {
            chrono::Duration::from_std(config.duration(key)).unwrap_or(chrono::Duration::hours(1))
        };
        let idents: Vec<TableIdent> = self
            .tables
            .values()
            .filter(|t| t.stopped.is_none())
            .map(|t| t.ident.clone())
            .collect();
        for ident in idents {
            let started = Instant::now();
            let outcome = lake
                .compact(
                    &ident,
                    &tarn_lake::CompactOptions {
                        small_file_threshold: config.small_file_bytes,
                        min_input_files: config.min_files,
                        delete_ratio_threshold: config.delete_ratio,
                        file_prefix: format!("compact-{}", uuid::Uuid::new_v4()),
                        ..tarn_lake::CompactOptions::default()
                    },
                )
                .await?;
            if outcome.snapshot_id.is_some() {
                let removed: HashSet<String> = outcome.removed_data_files.iter().cloned().collect();
                let added: HashSet<String> = outcome
                    .added_data_files
                    .iter()
                    .map(|f| f.file_path().to_string())
                    .collect();
                self.reindex_files(&ident, &removed, &added).await?;
                tracing::info!(
                    table = %ident,
                    removed = removed.len(),
                    added = added.len(),
                    rows = outcome.rows_rewritten,
                    purged = outcome.rows_purged,
                    seconds = started.elapsed().as_secs_f64(),
                    "compacted"
                );
            }
            let expired = lake
                .expire_snapshots(
                    &ident,
                    &tarn_lake::ExpireOptions {
                        older_than: now - age("snapshot_age"),
                        retain_last: config.retain_snapshots,
                        progress: None,
                    },
                )
                .await?;
            let orphans = lake
                .remove_orphan_files(
                    &ident,
                    &tarn_lake::OrphanOptions {
                        older_than: now - age("orphan_age"),
                        dry_run: false,
                        progress: None,
                    },
                )
                .await?;
            if !expired.expired_snapshots.is_empty() || orphans.deleted > 0 {
                tracing::info!(
                    table = %ident,
                    expired_snapshots = expired.expired_snapshots.len(),
                    deleted_files = expired.deleted_data_files + expired.deleted_delete_files,
                    orphans = orphans.deleted,
                    "expired snapshots and removed orphan files"
                );
            }
            for state in self.tables.values_mut() {
                if state.ident == ident {
                    state.table = lake.load_table(&ident).await?;
                }
            }
        }
        Ok(())
    }

    /// Tables whose key index must be rebuilt because `removed` data files were rewritten
    /// (by maintenance in this process): drops their entries and reads the `added` files.
    pub async fn reindex_files(
        &mut self,
        ident: &TableIdent,
        removed: &HashSet<String>,
        added: &HashSet<String>,
    ) -> Result<()> {
        let lake = self.lake.clone();
        for state in self.tables.values_mut() {
            if &state.ident == ident {
                state.table = lake.load_table(ident).await?;
                state.index.remove_files(removed);
                rebuild_index(&lake, state, Some(added)).await?;
            }
        }
        Ok(())
    }
}
