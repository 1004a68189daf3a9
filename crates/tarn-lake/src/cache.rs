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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use iceberg::TableIdent;
use iceberg::spec::{DataFile, ManifestContentType, ManifestList};
use iceberg::table::Table;
use tokio::sync::OnceCell;

/// Tables kept. Each holds its metadata and (through the `iceberg` crate's object cache) the
/// manifests read while planning its scans.
pub(crate) const CAPACITY: usize = 64;

/// The data files of a table's current snapshot by path, with their manifest entries'
/// statistics.
pub type DataFiles = Arc<HashMap<String, DataFile>>;

#[derive(Debug)]
struct Entry {
    table: Table,
    files: Arc<OnceCell<DataFiles>>,
    used: u64,
}

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
        let files = inner
            .entries
            .get(&ident)
            .filter(|e| same_snapshot(&e.table, table))
            .map_or_else(Arc::default, |e| e.files.clone());
        inner.entries.insert(
            ident,
            Entry {
                table: table.clone(),
                files,
                used: now,
            },
        );
    }

    /// The data files of `table`'s current snapshot, if read or seeded already.
    pub(crate) fn known_data_files(&self, table: &Table) -> Option<DataFiles> {
        self.files_slot(table)?.get().cloned()
    }

    /// Sets the data files of `table`'s current snapshot without reading its manifests: the
    /// commit that made the snapshot knows them (its parent's, minus the files it removed,
    /// plus the files it added). Nothing happens when `table` is not the cached one.
    pub(crate) fn seed_data_files(&self, table: &Table, files: DataFiles) {
        if let Some(slot) = self.files_slot(table) {
            // Already set: by a reader, from the same manifests.
            let _ = slot.set(files);
        }
    }

    /// The once-filled slot for the data files of `table`, when `table` is the cached one.
    fn files_slot(&self, table: &Table) -> Option<Arc<OnceCell<DataFiles>>> {
        let inner = self.inner.lock().expect("table cache poisoned");
        let entry = inner.entries.get(table.identifier())?;
        (entry.table.metadata_location().is_some()
            && entry.table.metadata_location() == table.metadata_location())
        .then(|| entry.files.clone())
    }

    /// The data files of `table`'s current snapshot, read once per snapshot.
    pub(crate) async fn data_files(&self, table: &Table) -> iceberg::Result<DataFiles> {
        match self.files_slot(table) {
            Some(slot) => slot
                .get_or_try_init(|| async { read_data_files(table).await.map(Arc::new) })
                .await
                .cloned(),
            None => read_data_files(table).await.map(Arc::new),
        }
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
    let metadata = table.metadata();
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(out);
    };
    let bytes = table
        .file_io()
        .new_input(snapshot.manifest_list())?
        .read()
        .await?;
    let list = ManifestList::parse_with_version(&bytes, metadata.format_version())?;
    for manifest in list.entries() {
        if manifest.content != ManifestContentType::Data {
            continue;
        }
        for entry in manifest.load_manifest(table.file_io()).await?.entries() {
            if entry.is_alive() {
                let file = entry.data_file();
                out.insert(file.file_path().to_string(), file.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::testing::{TestLake, ident, insert, kv_batch};

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
}
