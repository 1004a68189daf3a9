//! Tables as last loaded, kept between statements.
//!
//! Every Iceberg metadata file, manifest list and manifest is immutable: a table whose catalog
//! row still points at the metadata file we read last time is exactly the table we read last
//! time. So [`crate::Lake::load_table`] reads the catalog row (one small query, so every
//! statement still sees the latest commit, including other processes' commits) and reuses the
//! parsed metadata, the manifests the `iceberg` crate cached while planning earlier scans, and
//! the data files' manifest entries (the statistics tarn hands to DataFusion's planner) when the
//! location is unchanged. Without it each query re-read and re-parsed the metadata JSON, the
//! manifest list and every manifest of every table it touched, twice — tens of milliseconds a
//! query on small tables, more than the query itself.
//!
//! The cache holds one entry per table (a commit replaces it) and at most [`CAPACITY`] tables,
//! dropping the least recently used.
//!
//! The data files are a function of the current snapshot alone, so they stay with an entry
//! replaced by metadata with the same snapshot (a property change, an expiry), and a commit
//! of this process sets them for its new snapshot from its parent's (see
//! [`TableCache::seed_data_files`]): a writer that validates its position deletes against the
//! live data files on every commit reads its manifests once, not once per commit.
//!
//! When another process committed, the entry keeps the data files of the snapshot it replaced,
//! and the new snapshot's are derived from them: each snapshot committed since writes its own
//! changes (entries `ADDED` and `DELETED` by it) into manifests it adds, so only those are read
//! (as Iceberg's `Snapshot.addedDataFiles` does), not every manifest of the table. Without it
//! a statement racing a CDC pipeline that commits every second re-read all manifests on every
//! commit attempt — seconds on a table with a few hundred manifests, longer than the pipeline
//! took to commit again, so the statement never landed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use iceberg::TableIdent;
use iceberg::spec::{DataFile, ManifestContentType, ManifestFile, ManifestStatus, SnapshotRef};
use iceberg::table::Table;
use tokio::sync::OnceCell;

use crate::commit::MANIFEST_CONCURRENCY;

/// Tables kept. Each holds its metadata and (through the `iceberg` crate's object cache) the
/// manifests read while planning its scans.
pub(crate) const CAPACITY: usize = 64;

/// Snapshots at most between the files an entry knows and the ones asked for that are derived
/// (one manifest list and the snapshot's own manifests each); further apart, the current
/// manifests are read instead.
const DERIVE_LIMIT: usize = 200;

/// The data files of a table's current snapshot by path, with their manifest entries'
/// statistics.
pub type DataFiles = Arc<HashMap<String, DataFile>>;

#[derive(Debug)]
struct Entry {
    table: Table,
    files: Arc<OnceCell<DataFiles>>,
    /// The data files of an earlier snapshot of the table (id, files), until the current
    /// snapshot's are known: what they are derived from.
    earlier: Option<Earlier>,
    used: u64,
}

/// The data files of snapshot `.0` of a table.
type Earlier = (i64, DataFiles);

/// A table's once-filled data files slot and the earlier snapshot's files it may be derived from.
type FilesSlot = (Arc<OnceCell<DataFiles>>, Option<Earlier>);

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct TableCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<TableIdent, Entry>,
    clock: u64,
}

impl TableCache {
    /// The cached `ident` if it is at `location`.
    pub(crate) fn get(&self, ident: &TableIdent, location: &str) -> Option<Table> {
        let mut inner = self.inner.lock().expect("table cache poisoned");
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner.entries.get_mut(ident)?;
        if entry.table.metadata_location() != Some(location) {
            return None;
        }
        entry.used = now;
        Some(entry.table.clone())
    }

    /// Keeps `table` as the latest of its identifier.
    pub(crate) fn put(&self, table: &Table) {
        if table.metadata_location().is_none() {
            return;
        }
        let mut inner = self.inner.lock().expect("table cache poisoned");
        inner.clock += 1;
        let now = inner.clock;
        let ident = table.identifier().clone();
        if !inner.entries.contains_key(&ident)
            && inner.entries.len() >= CAPACITY
            && let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
        {
            inner.entries.remove(&oldest);
        }
        let (files, earlier) = match inner.entries.get(&ident) {
            Some(e) if same_snapshot(&e.table, table) => (e.files.clone(), e.earlier.clone()),
            Some(e) if e.table.metadata().uuid() == table.metadata().uuid() => {
                let known = e
                    .table
                    .metadata()
                    .current_snapshot_id()
                    .zip(e.files.get().cloned());
                (Arc::default(), known.or_else(|| e.earlier.clone()))
            }
            _ => (Arc::default(), None),
        };
        inner.entries.insert(
            ident,
            Entry {
                table: table.clone(),
                files,
                earlier,
                used: now,
            },
        );
    }

    /// The data files of `table`'s current snapshot, if read or seeded already.
    pub(crate) fn known_data_files(&self, table: &Table) -> Option<DataFiles> {
        self.files_slot(table)?.0.get().cloned()
    }

    /// Sets the data files of `table`'s current snapshot without reading its manifests: the
    /// commit that made the snapshot knows them (its parent's, minus the files it removed,
    /// plus the files it added). Nothing happens when `table` is not the cached one.
    pub(crate) fn seed_data_files(&self, table: &Table, files: DataFiles) {
        if let Some((slot, _)) = self.files_slot(table) {
            // Already set: by a reader, from the same manifests.
            let _ = slot.set(files);
            self.forget_earlier(table);
        }
    }

    /// The once-filled slot for the data files of `table` and the earlier snapshot's files they
    /// may be derived from, when `table` is the cached one.
    fn files_slot(&self, table: &Table) -> Option<FilesSlot> {
        let inner = self.inner.lock().expect("table cache poisoned");
        let entry = inner.entries.get(table.identifier())?;
        (entry.table.metadata_location().is_some()
            && entry.table.metadata_location() == table.metadata_location())
        .then(|| (entry.files.clone(), entry.earlier.clone()))
    }

    /// Drops the earlier snapshot's files once `table`'s own are known.
    fn forget_earlier(&self, table: &Table) {
        let mut inner = self.inner.lock().expect("table cache poisoned");
        if let Some(entry) = inner.entries.get_mut(table.identifier())
            && entry.table.metadata_location() == table.metadata_location()
        {
            entry.earlier = None;
        }
    }

    /// The data files of `table`'s current snapshot, read (or derived from an earlier
    /// snapshot's) once per snapshot.
    pub(crate) async fn data_files(&self, table: &Table) -> iceberg::Result<DataFiles> {
        let Some((slot, earlier)) = self.files_slot(table) else {
            return read_data_files(table).await.map(Arc::new);
        };
        let files = slot
            .get_or_try_init(|| async {
                if let Some((id, files)) = &earlier {
                    match derive_data_files(table, *id, files).await {
                        Ok(Some(derived)) => return Ok(Arc::new(derived)),
                        Ok(None) => {}
                        Err(e) => tracing::debug!(
                            table = %table.identifier(),
                            error = %e,
                            "cannot derive the data files from an earlier snapshot; reading them all"
                        ),
                    }
                }
                read_data_files(table).await.map(Arc::new)
            })
            .await
            .cloned()?;
        if earlier.is_some() {
            self.forget_earlier(table);
        }
        Ok(files)
    }
}

/// Whether `a` and `b` are the same table at the same snapshot.
fn same_snapshot(a: &Table, b: &Table) -> bool {
    a.metadata().uuid() == b.metadata().uuid()
        && a.metadata().current_snapshot_id().is_some()
        && a.metadata().current_snapshot_id() == b.metadata().current_snapshot_id()
}

/// Manifest entries of the data files (not delete files) of `table`'s current snapshot.
async fn read_data_files(table: &Table) -> iceberg::Result<HashMap<String, DataFile>> {
    let mut out = HashMap::new();
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(out);
    };
    let list = table.manifest_list_reader(snapshot).load().await?;
    let data = list
        .entries()
        .iter()
        .filter(|m| m.content == ManifestContentType::Data);
    for manifest in load_manifests(table, data).await? {
        for entry in manifest.entries() {
            if entry.is_alive() {
                let file = entry.data_file();
                out.insert(file.file_path().to_string(), file.clone());
            }
        }
    }
    Ok(out)
}

/// The data files of `table`'s current snapshot from `base`, those of its ancestor snapshot
/// `base_id`, and the changes each snapshot since wrote into the manifests it added: its
/// `ADDED` entries join, its `DELETED` entries leave. `None` when `base_id` is not an ancestor
/// within [`DERIVE_LIMIT`] snapshots (or a snapshot between was expired).
async fn derive_data_files(
    table: &Table,
    base_id: i64,
    base: &DataFiles,
) -> iceberg::Result<Option<HashMap<String, DataFile>>> {
    let Some(changes) = changes_since(
        table,
        Some(base_id),
        DERIVE_LIMIT,
        Some(ManifestContentType::Data),
    )
    .await?
    else {
        return Ok(None);
    };
    let mut files = (**base).clone();
    for change in changes {
        if change.added {
            files.insert(change.file.file_path().to_string(), change.file);
        } else {
            files.remove(change.file.file_path());
        }
    }
    Ok(Some(files))
}

/// A file a snapshot's own manifests mark `ADDED` or `DELETED`.
pub(crate) struct Change {
    pub(crate) snapshot: SnapshotRef,
    /// `ADDED` (`false`: `DELETED`).
    pub(crate) added: bool,
    pub(crate) file: DataFile,
}

/// The files each snapshot after `since` (`None`: from the first) up to `table`'s current one
/// added or deleted, oldest snapshot first, read from the manifests of `content` (both kinds
/// when `None`) that each snapshot added itself — as Iceberg's `Snapshot.addedDataFiles` reads
/// them, not every manifest of the table. `None` when `since` is not an ancestor within
/// `limit` snapshots (or a snapshot between was expired).
pub(crate) async fn changes_since(
    table: &Table,
    since: Option<i64>,
    limit: usize,
    content: Option<ManifestContentType>,
) -> iceberg::Result<Option<Vec<Change>>> {
    let metadata = table.metadata();
    let mut snapshots: Vec<SnapshotRef> = Vec::new();
    let mut next = metadata.current_snapshot_id();
    while next != since {
        let Some(snapshot) = next.and_then(|id| metadata.snapshot_by_id(id)) else {
            return Ok(None);
        };
        if snapshots.len() == limit {
            return Ok(None);
        }
        next = snapshot.parent_snapshot_id();
        snapshots.push(snapshot.clone());
    }
    let mut out = Vec::new();
    for snapshot in snapshots.iter().rev() {
        let id = snapshot.snapshot_id();
        let list = table.manifest_list_reader(snapshot).load().await?;
        let own = list.entries().iter().filter(|m| {
            content.is_none_or(|c| m.content == c)
                && m.added_snapshot_id == id
                && (m.has_added_files() || m.has_deleted_files())
        });
        for manifest in load_manifests(table, own).await? {
            for entry in manifest.entries() {
                if entry.snapshot_id() != Some(id) {
                    continue;
                }
                let added = match entry.status() {
                    ManifestStatus::Added => true,
                    ManifestStatus::Deleted => false,
                    ManifestStatus::Existing => continue,
                };
                out.push(Change {
                    snapshot: snapshot.clone(),
                    added,
                    file: entry.data_file().clone(),
                });
            }
        }
    }
    Ok(Some(out))
}

/// Reads `manifests`, a few at a time, in order.
async fn load_manifests<'a>(
    table: &Table,
    manifests: impl Iterator<Item = &'a ManifestFile>,
) -> iceberg::Result<Vec<iceberg::spec::Manifest>> {
    let io = table.file_io().clone();
    let manifests: Vec<ManifestFile> = manifests.cloned().collect();
    futures::stream::iter(manifests)
        .map(move |m| {
            let io = io.clone();
            async move { m.load_manifest(&io).await }
        })
        .buffered(MANIFEST_CONCURRENCY)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::Overwrite;
    use crate::testing::{TestLake, delete, ident, insert, kv_batch, write};

    use super::{derive_data_files, read_data_files};

    #[tokio::test]
    async fn loads_reuse_a_table_until_another_writer_commits() {
        let t = TestLake::new().await;
        let other = t.other_writer().await;
        let created = t.create("cached", &[]).await;
        let (_, _) = insert(&t.lake, &created, vec![kv_batch(&[(1, "a", "eu")])]).await;
        let first = t.lake.load_table(&ident("cached")).await.unwrap();
        let again = t.lake.load_table(&ident("cached")).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(
            &first.metadata_ref(),
            &again.metadata_ref()
        ));
        let files = t.lake.current_data_files(&first).await.unwrap();
        assert_eq!(files.len(), 1);

        // Another process commits: the next load sees its snapshot and its files.
        let (_, _) = insert(&other, &first, vec![kv_batch(&[(2, "b", "us")])]).await;
        let fresh = t.lake.load_table(&ident("cached")).await.unwrap();
        assert_ne!(fresh.metadata_location(), first.metadata_location());
        assert_ne!(
            fresh.metadata().current_snapshot_id(),
            first.metadata().current_snapshot_id()
        );
        assert_eq!(t.lake.current_data_files(&fresh).await.unwrap().len(), 2);
        // The stale table still answers for its own snapshot.
        assert_eq!(t.lake.current_data_files(&first).await.unwrap().len(), 1);

        // A dropped table is not served from the cache.
        t.lake.drop_table(&ident("cached"), true).await.unwrap();
        let err = t.lake.load_table(&ident("cached")).await.unwrap_err();
        assert_eq!(err.kind(), tarn_core::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn data_files_after_another_writers_commits_are_derived_from_the_known_ones() {
        let t = TestLake::new().await;
        let other = t.other_writer().await;
        let created = t.create("derived", &[]).await;
        let (mut table, index) = insert(&t.lake, &created, vec![kv_batch(&[(1, "a", "eu")])]).await;
        let known = t.lake.current_data_files(&table).await.unwrap();
        let known_id = table.metadata().current_snapshot_id().unwrap();
        // Another process appends, deletes rows by position, and overwrites the first file.
        for k in 2..5 {
            let (next, _) = insert(&other, &table, vec![kv_batch(&[(k, "b", "us")])]).await;
            table = next;
        }
        table = delete(&other, &table, &index, &[1]).await;
        let removed: Vec<_> = known.values().cloned().collect();
        let (added, _) = write(&table, vec![kv_batch(&[(20, "d", "eu")])]).await;
        let overwrite = Overwrite {
            removed_data_files: removed,
            removed_delete_files: Vec::new(),
            added_data_files: added,
            summary: Default::default(),
        };
        other.commit_overwrite(&table, overwrite).await.unwrap();

        let fresh = t.lake.load_table(&ident("derived")).await.unwrap();
        let full: BTreeSet<String> = read_data_files(&fresh).await.unwrap().into_keys().collect();
        assert_eq!(full.len(), 4, "three appended files and the overwrite's");
        let derived = derive_data_files(&fresh, known_id, &known)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(derived.keys().cloned().collect::<BTreeSet<_>>(), full);
        // The cache derives them (the entry knew the first snapshot's files).
        let cached = t.lake.current_data_files(&fresh).await.unwrap();
        assert_eq!(cached.keys().cloned().collect::<BTreeSet<_>>(), full);
        for (path, file) in derived {
            assert_eq!(file.record_count(), cached[&path].record_count());
        }
        // Not an ancestor: no derivation.
        assert!(derive_data_files(&fresh, 42, &known).await.unwrap().is_none());
    }
}
