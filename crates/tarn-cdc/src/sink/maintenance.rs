//! The automatic maintenance policy of the tables a sink writes (`[maintenance]` in the
//! config): compaction, snapshot expiry and orphan-file removal, run by the writer itself.
//!
//! The pipeline runs it between commits (nothing buffered, no transaction open), so nothing
//! this writer does conflicts with it. Compaction rewrites data files, which moves rows: the
//! key index drops the rewritten files and reads the files compaction wrote. Stopped tables
//! are left alone.
//!
//! The key index must describe exactly the snapshot the next commit is based on. After
//! maintenance the sink takes the table's current snapshot; when anything but this writer's
//! own compaction was committed since the snapshot its index described (another process's
//! compaction or `tarn maintain`, before or after ours), the index is rebuilt from the
//! current snapshot's live rows instead of patched, so no key points at a file that is gone
//! and none is missing.

use std::collections::HashSet;
use std::time::Instant;

use iceberg::TableIdent;
use tarn_core::Result;

use super::{LakeSink, rebuild_index};
use crate::index::KeyIndex;

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
            // The snapshot the key index describes now.
            let indexed = self
                .tables
                .values()
                .find(|t| t.ident == ident)
                .and_then(|t| t.table.metadata().current_snapshot_id());
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
            let table = lake.load_table(&ident).await?;
            let current = table.metadata().current_snapshot_id();
            // Only this writer's compaction, right on top of what the index describes, may be
            // patched into the index; anything else means a rebuild.
            let patchable = match outcome.snapshot_id {
                Some(ours) => {
                    current == Some(ours)
                        && table
                            .metadata()
                            .snapshot_by_id(ours)
                            .and_then(|s| s.parent_snapshot_id())
                            == indexed
                }
                None => current == indexed,
            };
            let removed: HashSet<String> = outcome.removed_data_files.iter().cloned().collect();
            let added: HashSet<String> = outcome
                .added_data_files
                .iter()
                .map(|f| f.file_path().to_string())
                .collect();
            for state in self.tables.values_mut().filter(|t| t.ident == ident) {
                state.table = table.clone();
                if patchable {
                    if outcome.snapshot_id.is_some() {
                        state.index.remove_files(&removed);
                        rebuild_index(&lake, state, Some(&added)).await?;
                    }
                } else {
                    tracing::info!(table = %ident, "another writer changed the table; rebuilding its key index");
                    state.index = KeyIndex::for_table(&state.spec);
                    rebuild_index(&lake, state, None).await?;
                }
            }
            if outcome.snapshot_id.is_some() {
                tracing::info!(
                    table = %ident,
                    removed = removed.len(),
                    added = added.len(),
                    rows = outcome.rows_rewritten,
                    purged = outcome.rows_purged,
                    index = if patchable { "patched" } else { "rebuilt" },
                    seconds = started.elapsed().as_secs_f64(),
                    "compacted"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tarn_core::Config;
    use tarn_lake::Lake;

    use crate::position::Lsn;
    use crate::scripted::testing::{lake_rows, row, table};
    use crate::sink::{LakeSink, SinkOptions};
    use crate::source::{SourceEvent, TableSpec};

    async fn commit(sink: &mut LakeSink, at: u64, changes: Vec<SourceEvent>) {
        sink.apply(SourceEvent::Begin {
            commit_position: Lsn(at).into(),
            transaction_id: None,
        })
        .await
        .unwrap();
        for change in changes {
            sink.apply(change).await.unwrap();
        }
        sink.apply(SourceEvent::Commit {
            position: Lsn(at + 1).into(),
            commit_time_micros: 0,
        })
        .await
        .unwrap();
        sink.flush().await.unwrap();
    }

    fn sink(lake: Lake, config: &Config) -> LakeSink {
        LakeSink::new(
            lake,
            SinkOptions {
                pipeline: config.cdc.pipeline.clone(),
                namespace: config.cdc.namespace.clone(),
                table_name: config.cdc.table_name.clone(),
                spill_bytes: 1 << 20,
            },
        )
    }

    /// Another process compacts the table between this writer's commits; the writer's
    /// maintenance notices, rebuilds its key index from the current snapshot, and the next
    /// updates replace the rows where they now are (no conflict, no row twice).
    #[tokio::test]
    async fn a_compaction_by_another_writer_rebuilds_the_key_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.cdc.pipeline = "p".into();
        // The writer's own compaction never starts: only the other process compacts.
        config.maintenance.min_files = 1000;
        let spec: Arc<TableSpec> = table(1, "items");
        let mut writer = sink(Lake::open(&config).await.unwrap(), &config);
        writer.attach(spec.clone()).await.unwrap();
        for i in 0..4u64 {
            let id = i as i64;
            let insert = SourceEvent::Insert {
                table: 1,
                new: row(id, Some("first")),
            };
            commit(&mut writer, 0x100 * (i + 1), vec![insert]).await;
        }
        let other = Lake::open(&config).await.unwrap();
        let ident = writer.lake_ident(&spec);
        let outcome = other
            .compact(
                &ident,
                &tarn_lake::CompactOptions {
                    min_input_files: 2,
                    ..tarn_lake::CompactOptions::default()
                },
            )
            .await
            .unwrap();
        assert!(outcome.snapshot_id.is_some(), "the other writer did not compact");
        writer.maintain(&config.maintenance).await.unwrap();
        let updates = (0..4)
            .map(|id| SourceEvent::Update {
                table: 1,
                old: None,
                new: row(id, Some("second")),
            })
            .collect();
        commit(&mut writer, 0x1000, updates).await;
        let rows = lake_rows(&config, &spec).await;
        let values: Vec<Option<String>> = rows.values().map(|r| r[1].clone()).collect();
        assert_eq!(values, vec![Some("second".to_string()); 4], "{rows:?}");
    }
}
