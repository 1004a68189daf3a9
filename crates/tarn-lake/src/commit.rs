//! tarn's own commits: row deltas (data + position delete files), rewrites (compaction) and
//! schema changes, each a compare-and-swap of the table's catalog row.
//!
//! Why our own: the `iceberg` crate (0.10) commits only what its `Transaction` actions
//! express — fast appends, property and schema updates by name, snapshot expiry — and both
//! `TableCommit` and `TransactionAction` are crate-private, so a commit that adds delete
//! files, removes files, keeps a rewritten file's data sequence number, sets a schema with
//! given field ids (renames, type promotion, identifier fields), or replaces a table's
//! definition with its rows (it has no replace transaction) cannot go through it. This
//! module builds those commits from the crate's public spec types: it writes manifests
//! (`ManifestWriter`), a manifest list (`ManifestListWriter::v2`), the new `TableMetadata`
//! (`TableMetadataBuilder`) with the changes that made it, and hands both to the lake's
//! [`crate::CatalogBackend`]: the SQL catalog writes it as
//! `<location>/metadata/<version>-<uuid>.metadata.json` and swaps the catalog row with the same
//! conditional `UPDATE ... WHERE metadata_location = <read>` as the SQL catalog itself; a REST
//! catalog gets the changes as a commit whose requirements say "the table is as read" (a 409 is
//! a lost race); a Hive Metastore moves the table's `metadata_location` under a table lock. So
//! tarn and other engines on the same catalog exclude each other (see [`crate::catalog`]).
//!
//! Contract of every commit here:
//!
//! - It applies on top of the table's *current* metadata, never over it: when another writer
//!   committed since `base`, the change is validated against what that writer did and re-applied
//!   (with backoff, up to `write.commit_retries` times). A lost swap leaves nothing behind: the
//!   files of the attempt (manifest list, rewritten manifests, metadata file) are deleted.
//! - Validation failures are [`ErrorKind::CommitConflict`] errors naming the file and the
//!   snapshot, so the caller can re-plan:
//!   - a row delta fails when a data file its position deletes point at is not live in the
//!     snapshot it is committed on top of (e.g. compaction rewrote it) — checked against that
//!     snapshot, not only the snapshots after `base`: a caller may hold row positions planned on
//!     an older snapshot than the `base` it passes (the CDC writer keeps its key index across a
//!     reload of the table), and deletes of a file removed at or before `base` would apply to
//!     nothing, leaving the rows a compaction copied elsewhere live. The live data files of a
//!     snapshot this process committed are derived from its parent's, so a writer's commits
//!     do not read every manifest again (see [`crate::cache`]);
//!   - a rewrite fails when a removed file is no longer live, or a snapshot committed after
//!     `base` added position deletes pointing at a removed data file (the rewrite would bring
//!     the deleted rows back). Equality deletes committed after `base` keep applying to the
//!     rewritten rows, because rewritten files keep the base snapshot's sequence number (below);
//!     they conflict only when the removed file was written with an older partition spec.
//! - Sequence numbers follow the spec: a new snapshot takes the next sequence number; files it
//!   adds are written with a `null` data sequence number and inherit the snapshot's (so the
//!   manifests are written once and reused across retries; only the manifest list is redone).
//!   Files added by a rewrite get the *base* snapshot's sequence number as their data sequence
//!   number (their file sequence number is the new snapshot's), so deletes committed after the
//!   rewrite's base still apply to the rewritten rows, and deletes already applied while
//!   rewriting do not apply twice.
//! - A rewrite also merges the current snapshot's manifests into one per content type and
//!   partition spec (dropping entries of files deleted by earlier snapshots), so compaction keeps
//!   the manifest count from growing with every CDC commit; any commit drops manifests that hold
//!   only deleted entries.
//! - Operations: `append` (only data files added), `delete` (only delete files added, or
//!   only files removed by an [`Overwrite`]), `overwrite` (data and delete files added, or an
//!   [`Overwrite`] that adds files), `replace` (a [`Rewrite`]: same rows, other files;
//!   incremental readers skip it, so a `TRUNCATE` or a fresh copy of a source table must be an
//!   [`Overwrite`]). The summary carries the
//!   spec's counters (`added-data-files`, `added-records`, `added-files-size`,
//!   `added-delete-files`, `added-position-delete-files`, `added-position-deletes`,
//!   `deleted-data-files`, `deleted-records`, `removed-files-size`, `removed-delete-files`,
//!   `removed-position-delete-files`, `removed-position-deletes`, `total-*`) plus the caller's
//!   properties (e.g. the CDC source position); computed counters win over caller keys.
//! - A [`Replacement`] (`CREATE OR REPLACE TABLE`) is an overwrite of every live file whose
//!   metadata update also adds the new schema, partition spec and sort order, makes them
//!   current and sets properties, so the new definition and its rows land in one swap. Its
//!   field ids are assigned against the table as planned: a commit finding the table's
//!   schemas, specs or sort orders changed since fails with a conflict.
//! - Files added are taken to be written with the table's default partition spec (as
//!   [`crate::DataWriter`], [`crate::PositionedDataWriter`] and [`crate::write_position_deletes`]
//!   write them); tables are format v2.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, ListType, MAIN_BRANCH, Manifest, ManifestContentType,
    ManifestFile, ManifestListWriter, ManifestWriterBuilder, MapType, NestedField, NestedFieldRef, Operation,
    PrimitiveType, Schema, Snapshot, SnapshotRef, SortOrder, StructType, Summary, TableMetadata,
    TableMetadataBuildResult, TableMetadataBuilder, Type, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::{TableIdent, TableRequirement};
use tarn_core::{Error, ErrorKind, Result};
use uuid::Uuid;

use crate::TableLayout;

use crate::cache::DataFiles;
use crate::catalog::{
    CommitOutcome, MetadataCommit, schema_requirements, snapshot_requirements, table_requirements,
};
use crate::lake::{Lake, iceberg_error};
use crate::rows::{FileEntry, for_each_position_delete, path_bounds};

/// Manifests read at once.
pub(crate) const MANIFEST_CONCURRENCY: usize = 8;

/// Data and delete files to commit together: new rows, and position deletes for old ones.
#[derive(Debug, Clone, Default)]
pub struct RowDelta {
    /// New data files.
    pub data_files: Vec<DataFile>,
    /// New delete files (position deletes; equality deletes only as a fallback).
    pub delete_files: Vec<DataFile>,
    /// The data files the position deletes point at. Files among `data_files` need not be
    /// listed. The commit fails with a conflict when one of them is not live in the snapshot
    /// the commit lands on (a concurrent commit, or one before `base`, removed it).
    pub referenced_data_files: HashSet<String>,
    /// Extra snapshot summary properties, e.g. the CDC source position.
    pub summary: HashMap<String, String>,
}

impl RowDelta {
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.data_files.is_empty() && self.delete_files.is_empty()
    }
}

/// A check of the table a commit is about to land on, run on every attempt against the
/// metadata the compare-and-swap will replace: an error aborts the commit (nothing is written
/// that stays), and the properties it returns go into the new snapshot's summary (caller keys
/// of the change's own summary are overridden). Writers that share a table use it to fence
/// each other: the CDC sink checks that no other worker advanced the source positions it is
/// about to record, and records its positions merged with the ones the table holds; a
/// row-level SQL statement checks what the snapshots committed since it read the table deleted
/// (an async check, [`CommitGuard::new_async`]).
#[derive(Clone)]
pub struct CommitGuard(Arc<GuardFn>);

/// What a [`CommitGuard`] runs: the table the commit lands on → summary properties, or why not.
type GuardFn = dyn Fn(&Table) -> BoxFuture<'static, Result<HashMap<String, String>>> + Send + Sync;

impl CommitGuard {
    /// A guard running `check`.
    pub fn new(check: impl Fn(&Table) -> Result<HashMap<String, String>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(move |table: &Table| {
            let checked = check(table);
            Box::pin(async move { checked })
        }))
    }

    /// A guard running `check`, which may read the table's files.
    pub fn new_async<F, Fut>(check: F) -> Self
    where
        F: Fn(Table) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<HashMap<String, String>>> + Send + 'static,
    {
        Self(Arc::new(move |table: &Table| Box::pin(check(table.clone()))))
    }

    /// A guard running this one and then `other`; the commit records what both return.
    pub fn and(self, other: CommitGuard) -> Self {
        Self::new_async(move |table: Table| {
            let (first, second) = (self.clone(), other.clone());
            async move {
                let mut properties = first.check(&table).await?;
                properties.extend(second.check(&table).await?);
                Ok(properties)
            }
        })
    }

    async fn check(&self, table: &Table) -> Result<HashMap<String, String>> {
        (self.0)(table).await
    }
}

impl std::fmt::Debug for CommitGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitGuard")
    }
}

/// A rewrite (compaction): files replaced by files holding the same live rows.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Data files whose live rows were rewritten.
    pub removed_data_files: Vec<DataFile>,
    /// Delete files that no longer apply to any remaining data file.
    pub removed_delete_files: Vec<DataFile>,
    /// The new data files.
    pub added_data_files: Vec<DataFile>,
    /// Extra snapshot summary properties.
    pub summary: HashMap<String, String>,
}

impl Rewrite {
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.removed_data_files.is_empty()
            && self.removed_delete_files.is_empty()
            && self.added_data_files.is_empty()
    }
}

/// A logical replacement of rows: files removed (their rows are gone, e.g. a `TRUNCATE` or a
/// fresh copy of a source table) and files added (new rows).
#[derive(Debug, Clone, Default)]
pub struct Overwrite {
    /// Data files whose rows are removed.
    pub removed_data_files: Vec<DataFile>,
    /// Delete files removed with them.
    pub removed_delete_files: Vec<DataFile>,
    /// Data files with the new rows.
    pub added_data_files: Vec<DataFile>,
    /// Extra snapshot summary properties.
    pub summary: HashMap<String, String>,
}

impl Overwrite {
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.removed_data_files.is_empty()
            && self.removed_delete_files.is_empty()
            && self.added_data_files.is_empty()
    }
}

/// A table redefined in place (`CREATE OR REPLACE TABLE`): the schema, partition spec, sort
/// order and properties its next snapshot is written with. Made by
/// [`Lake::plan_replacement`]; data for it is written through [`Lake::replacement_table`] and
/// committed by [`Lake::commit_replacement`].
#[derive(Debug, Clone)]
pub struct Replacement {
    /// The new schema, its field ids assigned against the table's (see
    /// [`Lake::plan_replacement`]).
    pub schema: Schema,
    /// The new partition spec, bound to `schema`.
    pub partition: UnboundPartitionSpec,
    /// The new sort order, bound to `schema`.
    pub sort_order: SortOrder,
    /// Properties set over the table's.
    pub properties: HashMap<String, String>,
    /// The table's metadata as planned on: a commit finding its schemas, specs or sort orders
    /// changed since fails (the ids above were assigned against these).
    planned_on: Arc<TableMetadata>,
}

impl Replacement {
    /// Adds the replacement's changes to `builder` (the table's metadata), making them current.
    fn apply(&self, builder: TableMetadataBuilder) -> iceberg::Result<TableMetadataBuilder> {
        let mut builder = builder
            .add_current_schema(self.schema.clone())?
            .add_default_partition_spec(self.partition.clone())?
            .add_sort_order(self.sort_order.clone())?
            .set_default_sort_order(-1)?;
        if !self.properties.is_empty() {
            builder = builder.set_properties(self.properties.clone())?;
        }
        Ok(builder)
    }

    /// The metadata `table` (the one planned on) has with the replacement applied.
    fn applied_to(&self, table: &Table) -> Result<TableMetadata> {
        let builder = TableMetadataBuilder::new_from_metadata(
            table.metadata().clone(),
            table.metadata_location().map(str::to_string),
        );
        self.apply(builder)
            .and_then(|b| b.build())
            .map(|built| built.metadata)
            .map_err(|e| iceberg_error(format!("cannot redefine table {}", table.identifier()), e))
    }

    /// Fails with a conflict when `current`'s schemas, partition specs or sort orders are not
    /// the ones the replacement was planned on.
    fn check_layout_unchanged(&self, current: &TableMetadata, ident: &TableIdent) -> Result<()> {
        let planned = &self.planned_on;
        let same = current.current_schema_id() == planned.current_schema_id()
            && current.last_column_id() == planned.last_column_id()
            && current.schemas_iter().count() == planned.schemas_iter().count()
            && current.default_partition_spec_id() == planned.default_partition_spec_id()
            && current.last_partition_id() == planned.last_partition_id()
            && current.partition_specs_iter().count() == planned.partition_specs_iter().count()
            && current.default_sort_order_id() == planned.default_sort_order_id()
            && current.sort_orders_iter().count() == planned.sort_orders_iter().count();
        if same {
            Ok(())
        } else {
            Err(conflict(format!(
                "the schema, partitioning or sort order of {ident} changed since the replacement was planned; run it again"
            )))
        }
    }
}

/// `field` and the fields nested in it with fresh ids counted up from `next`.
fn with_fresh_ids(field: &NestedField, next: &mut i32) -> NestedField {
    *next += 1;
    let mut fresh = field.clone();
    fresh.id = *next;
    fresh.field_type = Box::new(type_with_fresh_ids(&field.field_type, next));
    fresh
}

fn type_with_fresh_ids(field_type: &Type, next: &mut i32) -> Type {
    match field_type {
        Type::Primitive(_) => field_type.clone(),
        Type::Struct(s) => Type::Struct(StructType::new(
            s.fields()
                .iter()
                .map(|f| Arc::new(with_fresh_ids(f, next)))
                .collect(),
        )),
        Type::List(l) => Type::List(ListType {
            element_field: Arc::new(with_fresh_ids(&l.element_field, next)),
        }),
        Type::Map(m) => Type::Map(MapType {
            key_field: Arc::new(with_fresh_ids(&m.key_field, next)),
            value_field: Arc::new(with_fresh_ids(&m.value_field, next)),
        }),
    }
}

/// What one snapshot changes.
struct Change {
    operation: Operation,
    added_data: Vec<DataFile>,
    added_deletes: Vec<DataFile>,
    /// Data sequence number of the added data files; `None` inherits the new snapshot's.
    data_sequence_number: Option<i64>,
    /// Paths of the files the snapshot removes.
    removed: HashSet<String>,
    /// Rewrite all of the current snapshot's manifests into one per content and spec.
    merge_manifests: bool,
    summary: HashMap<String, String>,
    /// The table redefined in the same commit (`CREATE OR REPLACE TABLE`).
    replacement: Option<Replacement>,
}

/// What a commit must check against snapshots committed after its base.
enum Validation {
    RowDelta {
        referenced: HashSet<String>,
    },
    Rewrite,
    /// Only that the removed files are still live (checked while reading the manifests).
    Overwrite,
}

/// A removed file as the current snapshot's manifests hold it.
struct RemovedFile {
    file: DataFile,
    spec_id: i32,
}

/// A manifest list entry with the manifest it points at.
type LoadedManifest = (ManifestFile, Manifest);

/// The current snapshot's manifests, split into those kept as they are and those holding
/// removed files (to be rewritten with the files marked deleted).
struct CarriedManifests {
    kept: Vec<ManifestFile>,
    rewrite: Vec<LoadedManifest>,
    removed: HashMap<String, RemovedFile>,
}

/// Files written by one commit attempt, deleted when the attempt loses the race.
#[derive(Default)]
struct AttemptFiles(Vec<String>);

fn conflict(message: String) -> Error {
    Error::new(ErrorKind::CommitConflict, message)
}

fn random_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (a, b) = Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) & (i64::MAX as u64)) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// How long a writer whose catalog swap lost a race waits before its `attempt`-th retry:
/// 10 ms doubling to 1 s, plus up to half again of jitter. Every commit path of tarn (its own
/// writers, the REST catalog's commits) waits the same way.
pub fn retry_backoff(attempt: u32) -> Duration {
    let base = 10u64.saturating_mul(1 << attempt.min(7)).min(1000);
    // A little jitter keeps two retrying writers from colliding again.
    let jitter = u64::from(Uuid::new_v4().as_u128() as u16) % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

/// Snapshots of `metadata` committed after `base_id` on the main branch, newest first; `None`
/// when `base_id` is not an ancestor of the current snapshot (rolled back or expired).
fn snapshots_since(metadata: &TableMetadata, base_id: Option<i64>) -> Option<Vec<SnapshotRef>> {
    let mut out = Vec::new();
    let mut next = metadata.current_snapshot_id();
    while let Some(id) = next {
        if Some(id) == base_id {
            return Some(out);
        }
        let snapshot = metadata.snapshot_by_id(id)?;
        next = snapshot.parent_snapshot_id();
        out.push(snapshot.clone());
    }
    base_id.is_none().then_some(out)
}

/// What one snapshot itself added (delete files) and removed (paths), from the manifests it wrote.
struct SnapshotDelta {
    added_deletes: Vec<FileEntry>,
    removed: Vec<String>,
}

async fn snapshot_delta(table: &Table, snapshot: &SnapshotRef) -> Result<SnapshotDelta> {
    let name = table.identifier();
    let id = snapshot.snapshot_id();
    let list = table.manifest_list_reader(snapshot).load().await.map_err(|e| {
        iceberg_error(
            format!("cannot read the manifest list of snapshot {id} of {name}"),
            e,
        )
    })?;
    let wanted: Vec<ManifestFile> = list
        .entries()
        .iter()
        .filter(|m| {
            m.added_snapshot_id == id
                && (m.has_deleted_files()
                    || (m.content == ManifestContentType::Deletes && m.has_added_files()))
        })
        .cloned()
        .collect();
    let io = table.file_io().clone();
    let manifests: Vec<(i32, Manifest)> = futures::stream::iter(wanted)
        .map(|m| {
            let io = io.clone();
            async move {
                let loaded = m.load_manifest(&io).await.map_err(|e| {
                    iceberg_error(format!("cannot read manifest {} of {name}", m.manifest_path), e)
                })?;
                Ok::<_, Error>((m.partition_spec_id, loaded))
            }
        })
        .buffered(MANIFEST_CONCURRENCY)
        .try_collect()
        .await?;
    let mut delta = SnapshotDelta {
        added_deletes: Vec::new(),
        removed: Vec::new(),
    };
    for (spec_id, manifest) in manifests {
        for entry in manifest.entries() {
            if entry.snapshot_id() != Some(id) {
                continue;
            }
            match entry.status() {
                iceberg::spec::ManifestStatus::Deleted => delta.removed.push(entry.file_path().to_string()),
                iceberg::spec::ManifestStatus::Added if entry.content_type() != DataContentType::Data => {
                    delta.added_deletes.push(FileEntry {
                        entry: entry.clone(),
                        spec_id,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(delta)
}

/// The spec's summary counters for `change` on top of `previous`.
fn summary_properties(
    previous: Option<&Summary>,
    change: &Change,
    removed: &HashMap<String, RemovedFile>,
) -> HashMap<String, String> {
    #[derive(Default)]
    struct Counts {
        data_files: u64,
        records: u64,
        size: u64,
        delete_files: u64,
        pos_delete_files: u64,
        pos_deletes: u64,
        eq_delete_files: u64,
        eq_deletes: u64,
    }
    fn count<'a>(files: impl Iterator<Item = &'a DataFile>) -> Counts {
        let mut c = Counts::default();
        for f in files {
            c.size += f.file_size_in_bytes();
            match f.content_type() {
                DataContentType::Data => {
                    c.data_files += 1;
                    c.records += f.record_count();
                }
                DataContentType::PositionDeletes => {
                    c.delete_files += 1;
                    c.pos_delete_files += 1;
                    c.pos_deletes += f.record_count();
                }
                DataContentType::EqualityDeletes => {
                    c.delete_files += 1;
                    c.eq_delete_files += 1;
                    c.eq_deletes += f.record_count();
                }
            }
        }
        c
    }
    let added = count(change.added_data.iter().chain(&change.added_deletes));
    let gone = count(removed.values().map(|r| &r.file));
    let mut out = change.summary.clone();
    let mut put = |key: &str, value: u64| {
        if value > 0 {
            out.insert(key.to_string(), value.to_string());
        }
    };
    put("added-data-files", added.data_files);
    put("added-records", added.records);
    put("added-files-size", added.size);
    put("added-delete-files", added.delete_files);
    put("added-position-delete-files", added.pos_delete_files);
    put("added-position-deletes", added.pos_deletes);
    put("added-equality-delete-files", added.eq_delete_files);
    put("added-equality-deletes", added.eq_deletes);
    put("deleted-data-files", gone.data_files);
    put("deleted-records", gone.records);
    put("removed-files-size", gone.size);
    put("removed-delete-files", gone.delete_files);
    put("removed-position-delete-files", gone.pos_delete_files);
    put("removed-position-deletes", gone.pos_deletes);
    put("removed-equality-delete-files", gone.eq_delete_files);
    put("removed-equality-deletes", gone.eq_deletes);
    // Totals carry over from the previous snapshot; without a previous total there is no
    // honest total to write (another engine may have left it out), so none is written.
    let totals: [(&str, u64, u64); 6] = [
        ("total-records", added.records, gone.records),
        ("total-files-size", added.size, gone.size),
        ("total-data-files", added.data_files, gone.data_files),
        ("total-delete-files", added.delete_files, gone.delete_files),
        ("total-position-deletes", added.pos_deletes, gone.pos_deletes),
        ("total-equality-deletes", added.eq_deletes, gone.eq_deletes),
    ];
    for (key, plus, minus) in totals {
        let before = match previous {
            None => Some(0),
            Some(summary) => summary
                .additional_properties
                .get(key)
                .and_then(|v| v.parse::<u64>().ok()),
        };
        if let Some(before) = before {
            out.insert(key.to_string(), (before + plus).saturating_sub(minus).to_string());
        } else {
            out.remove(key);
        }
    }
    out
}

impl Lake {
    /// Commits `delta` (new data files and delete files) as one snapshot on top of the
    /// table's current snapshot; see the module doc for validation and retries. An empty
    /// delta commits nothing and returns the current table.
    pub async fn commit_row_delta(&self, base: &Table, delta: RowDelta) -> Result<Table> {
        self.commit_row_delta_guarded(base, delta, None).await
    }

    /// [`Lake::commit_row_delta`] with `guard` checked against the table on every attempt
    /// (see [`CommitGuard`]). An empty delta commits nothing and checks nothing.
    pub async fn commit_row_delta_guarded(
        &self,
        base: &Table,
        delta: RowDelta,
        guard: Option<&CommitGuard>,
    ) -> Result<Table> {
        if delta.is_empty() {
            return self.refresh(base).await;
        }
        if let Some(f) = delta
            .data_files
            .iter()
            .find(|f| f.content_type() != DataContentType::Data)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a delete file, listed among the data files of a row delta",
                    f.file_path()
                ),
            ));
        }
        if let Some(f) = delta
            .delete_files
            .iter()
            .find(|f| f.content_type() == DataContentType::Data)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a data file, listed among the delete files of a row delta",
                    f.file_path()
                ),
            ));
        }
        let operation = match (delta.data_files.is_empty(), delta.delete_files.is_empty()) {
            (false, true) => Operation::Append,
            (true, false) => Operation::Delete,
            _ => Operation::Overwrite,
        };
        let own: HashSet<&str> = delta.data_files.iter().map(|f| f.file_path()).collect();
        let referenced = delta
            .referenced_data_files
            .iter()
            .filter(|p| !own.contains(p.as_str()))
            .cloned()
            .collect();
        let change = Change {
            operation,
            added_data: delta.data_files,
            added_deletes: delta.delete_files,
            data_sequence_number: None,
            removed: HashSet::new(),
            merge_manifests: false,
            summary: delta.summary,
            replacement: None,
        };
        self.produce_snapshot(base, change, Validation::RowDelta { referenced }, guard)
            .await
    }

    /// Commits `rewrite` (compaction) as one `replace` snapshot on top of the table's current
    /// snapshot; the added files keep `base`'s sequence number. See the module doc for
    /// validation and retries. An empty rewrite commits nothing.
    pub async fn commit_rewrite(&self, base: &Table, rewrite: Rewrite) -> Result<Table> {
        if rewrite.is_empty() {
            return self.refresh(base).await;
        }
        if let Some(f) = rewrite
            .added_data_files
            .iter()
            .chain(&rewrite.removed_data_files)
            .find(|f| f.content_type() != DataContentType::Data)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a delete file, listed among the data files of a rewrite",
                    f.file_path()
                ),
            ));
        }
        if let Some(f) = rewrite
            .removed_delete_files
            .iter()
            .find(|f| f.content_type() == DataContentType::Data)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a data file, listed among the removed delete files",
                    f.file_path()
                ),
            ));
        }
        let base_snapshot = base.metadata().current_snapshot().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("table {} has no snapshot to rewrite", base.identifier()),
            )
        })?;
        let removed = rewrite
            .removed_data_files
            .iter()
            .chain(&rewrite.removed_delete_files)
            .map(|f| f.file_path().to_string())
            .collect();
        let change = Change {
            operation: Operation::Replace,
            added_data: rewrite.added_data_files,
            added_deletes: Vec::new(),
            data_sequence_number: Some(base_snapshot.sequence_number()),
            removed,
            merge_manifests: true,
            summary: rewrite.summary,
            replacement: None,
        };
        self.produce_snapshot(base, change, Validation::Rewrite, None)
            .await
    }

    /// Commits `overwrite` as one snapshot on top of the table's current snapshot: operation
    /// `delete` when it only removes files, else `overwrite`. Unlike a [`Rewrite`] this changes
    /// the table's rows, so incremental readers see it, and the added files are new data (they
    /// take the new snapshot's sequence number). The only check against concurrent commits is
    /// that the removed files are still live; rows other writers appended meanwhile stay.
    pub async fn commit_overwrite(&self, base: &Table, overwrite: Overwrite) -> Result<Table> {
        self.commit_overwrite_guarded(base, overwrite, None).await
    }

    /// [`Lake::commit_overwrite`] with `guard` checked against the table on every attempt
    /// (see [`CommitGuard`]).
    pub async fn commit_overwrite_guarded(
        &self,
        base: &Table,
        overwrite: Overwrite,
        guard: Option<&CommitGuard>,
    ) -> Result<Table> {
        if overwrite.is_empty() {
            return self.refresh(base).await;
        }
        self.overwrite_with(base, overwrite, None, guard).await
    }

    /// Plans redefining `base` (`CREATE OR REPLACE TABLE`) with `schema` (its field ids are
    /// reassigned here) and `layout`. As in Iceberg's replace transactions, a top-level column
    /// keeps its field id when the table has a column of that name and the same primitive
    /// type; every other field takes a fresh id above the table's last column id, so old
    /// snapshots keep reading their files as they were written. Properties in `layout` are set
    /// over the table's; the partition spec and sort order are `layout`'s (none: unpartitioned,
    /// unsorted).
    pub fn plan_replacement(
        &self,
        base: &Table,
        schema: &Schema,
        layout: &TableLayout,
    ) -> Result<Replacement> {
        let metadata = base.metadata();
        let old = metadata.current_schema();
        let mut next = metadata.last_column_id();
        let fields: Vec<NestedFieldRef> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| {
                let kept = old
                    .as_struct()
                    .field_by_name(&f.name)
                    .filter(|o| matches!(*o.field_type, Type::Primitive(_)) && o.field_type == f.field_type);
                Arc::new(match kept {
                    Some(o) => {
                        let mut same = f.as_ref().clone();
                        same.id = o.id;
                        same
                    }
                    None => with_fresh_ids(f, &mut next),
                })
            })
            .collect();
        let ident = base.identifier();
        let schema = Schema::builder()
            .with_fields(fields)
            .build()
            .map_err(|e| iceberg_error(format!("invalid columns for {ident}"), e))?;
        Ok(Replacement {
            partition: crate::layout::partition_spec(&schema, &layout.partition)?,
            sort_order: crate::layout::sort_order(&schema, &layout.sort)?,
            properties: layout.properties.clone(),
            schema,
            planned_on: Arc::new(metadata.clone()),
        })
    }

    /// `base` as `replacement` redefines it, held in memory only (not committed, not cached):
    /// write the replacement's data files with it, so they carry its field ids and partition
    /// values.
    pub fn replacement_table(&self, base: &Table, replacement: &Replacement) -> Result<Table> {
        let ident = base.identifier();
        let mut builder = Table::builder()
            .file_io(base.file_io().clone())
            .identifier(ident.clone())
            .metadata(replacement.applied_to(base)?)
            .runtime(iceberg::Runtime::try_current().map_err(|e| iceberg_error("no async runtime", e))?);
        if let Some(location) = base.metadata_location() {
            builder = builder.metadata_location(location);
        }
        builder
            .build()
            .map_err(|e| iceberg_error(format!("cannot redefine table {ident}"), e))
    }

    /// Commits `overwrite` (files written with [`Lake::replacement_table`]) and `replacement`
    /// in one snapshot: readers see the old definition and rows or the new ones. Fails with a
    /// commit conflict when the table's schemas, partition specs or sort orders changed since
    /// the replacement was planned, or `guard` fails; the table keeps its history (time
    /// travel before the replacement reads the old schema).
    pub async fn commit_replacement(
        &self,
        base: &Table,
        overwrite: Overwrite,
        replacement: Replacement,
        guard: Option<&CommitGuard>,
    ) -> Result<Table> {
        self.overwrite_with(base, overwrite, Some(replacement), guard)
            .await
    }

    async fn overwrite_with(
        &self,
        base: &Table,
        overwrite: Overwrite,
        replacement: Option<Replacement>,
        guard: Option<&CommitGuard>,
    ) -> Result<Table> {
        if let Some(f) = overwrite
            .added_data_files
            .iter()
            .chain(&overwrite.removed_data_files)
            .find(|f| f.content_type() != DataContentType::Data)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is a delete file, listed among the data files of an overwrite",
                    f.file_path()
                ),
            ));
        }
        let operation = if overwrite.added_data_files.is_empty() && overwrite.removed_delete_files.is_empty()
        {
            Operation::Delete
        } else {
            Operation::Overwrite
        };
        let removed = overwrite
            .removed_data_files
            .iter()
            .chain(&overwrite.removed_delete_files)
            .map(|f| f.file_path().to_string())
            .collect();
        let change = Change {
            operation,
            added_data: overwrite.added_data_files,
            added_deletes: Vec::new(),
            data_sequence_number: None,
            removed,
            merge_manifests: true,
            summary: overwrite.summary,
            replacement,
        };
        self.produce_snapshot(base, change, Validation::Overwrite, guard)
            .await
    }

    /// Makes `new_schema` the current schema of the table (no snapshot). Field ids are the
    /// caller's: kept columns keep their ids (a rename keeps the id, a drop leaves it out, a
    /// type promotion `int` → `long`, `float` → `double` or a wider decimal keeps it), new
    /// columns take ids above the table's `last-column-id` and must be optional; identifier
    /// fields come with the schema. `properties` are set in the same commit. When another
    /// writer changed the table meanwhile, the change is re-applied if the current schema is
    /// still `base`'s; otherwise it fails with a commit conflict.
    pub async fn evolve_schema(
        &self,
        base: &Table,
        new_schema: Schema,
        properties: HashMap<String, String>,
    ) -> Result<Table> {
        let ident = base.identifier().clone();
        let base_schema_id = base.metadata().current_schema_id();
        check_schema_evolution(base.metadata(), &new_schema, &ident)?;
        let mut current = self.refresh(base).await?;
        let mut attempt = 0u32;
        loop {
            if current.metadata().current_schema_id() != base_schema_id {
                return Err(conflict(format!(
                    "the schema of {ident} changed since schema {base_schema_id} (now {}): re-plan the change",
                    current.metadata().current_schema_id()
                )));
            }
            let mut builder = TableMetadataBuilder::new_from_metadata(
                current.metadata().clone(),
                current.metadata_location().map(str::to_string),
            )
            .add_current_schema(new_schema.clone())
            .map_err(|e| iceberg_error(format!("invalid schema for {ident}"), e))?;
            if !properties.is_empty() {
                builder = builder
                    .set_properties(properties.clone())
                    .map_err(|e| iceberg_error(format!("invalid properties for {ident}"), e))?;
            }
            let built = builder
                .build()
                .map_err(|e| iceberg_error(format!("invalid schema for {ident}"), e))?;
            let requirements = schema_requirements(current.metadata());
            if let Some(table) = self
                .write_and_swap(&current, built, requirements, &mut AttemptFiles::default())
                .await?
            {
                tracing::info!(table = %ident, schema_id = table.metadata().current_schema_id(), "schema evolved");
                return Ok(table);
            }
            attempt = self.next_attempt(&ident, attempt).await?;
            current = self.refresh(&current).await?;
        }
    }

    /// Sets table properties of `ident` (merged into the existing ones), retrying on conflicts.
    pub async fn set_properties(&self, ident: &TableIdent, props: HashMap<String, String>) -> Result<Table> {
        let mut current = self.load_table(ident).await?;
        let mut attempt = 0u32;
        loop {
            let built = TableMetadataBuilder::new_from_metadata(
                current.metadata().clone(),
                current.metadata_location().map(str::to_string),
            )
            .set_properties(props.clone())
            .and_then(|b| b.build())
            .map_err(|e| iceberg_error(format!("invalid properties for {ident}"), e))?;
            let requirements = table_requirements(current.metadata());
            if let Some(table) = self
                .write_and_swap(&current, built, requirements, &mut AttemptFiles::default())
                .await?
            {
                return Ok(table);
            }
            attempt = self.next_attempt(ident, attempt).await?;
            current = self.refresh(&current).await?;
        }
    }

    /// `table` if the catalog still points at its metadata, else the table as it is now.
    pub(crate) async fn refresh(&self, table: &Table) -> Result<Table> {
        let location = self.current_metadata_location(table.identifier()).await?;
        if table.metadata_location() == Some(location.as_str()) {
            Ok(table.clone())
        } else {
            self.load_table(table.identifier()).await
        }
    }

    /// Counts a lost race; fails when retries are used up, else waits before the next try.
    async fn next_attempt(&self, ident: &TableIdent, attempt: u32) -> Result<u32> {
        metrics::counter!("tarn_commit_conflicts_total", "table" => ident.to_string()).increment(1);
        if attempt >= self.commit_retries() {
            return Err(conflict(format!(
                "cannot commit to {ident}: other writers committed first {} times in a row",
                attempt + 1
            )));
        }
        tracing::debug!(table = %ident, attempt, "commit conflict, retrying");
        tokio::time::sleep(retry_backoff(attempt)).await;
        Ok(attempt + 1)
    }

    /// Lands `built` (the new metadata and the changes that made it from `current`'s) through
    /// the catalog: the SQL catalog writes the next metadata file and swaps the table's row, a
    /// REST catalog applies the changes if `requirements` still hold (see [`crate::catalog`]).
    /// `Ok(None)`: another writer won; the files of the attempt are deleted. On an error the
    /// commit may or may not have landed, and the files stay.
    #[tracing::instrument(name = "commit", skip_all, fields(table = %current.identifier()))]
    async fn write_and_swap(
        &self,
        current: &Table,
        built: TableMetadataBuildResult,
        requirements: Vec<TableRequirement>,
        attempt: &mut AttemptFiles,
    ) -> Result<Option<Table>> {
        let ident = current.identifier();
        let commit = MetadataCommit {
            current,
            metadata: built.metadata,
            updates: built.changes,
            requirements,
        };
        match self.backend().commit(commit, &mut attempt.0).await? {
            CommitOutcome::Committed { location, metadata } => {
                let table = self.open_table(ident, location, metadata)?;
                metrics::counter!("tarn_commits_total", "table" => ident.to_string()).increment(1);
                // The table's conflict counter exists (at 0) from its first commit, so an alert on
                // its increase sees the first conflict too.
                metrics::counter!("tarn_commit_conflicts_total", "table" => ident.to_string()).increment(0);
                Ok(Some(table))
            }
            CommitOutcome::Conflict => {
                crate::catalog::delete_lost_files(current, attempt.0.drain(..)).await;
                Ok(None)
            }
        }
    }

    /// The snapshot producer behind row deltas and rewrites.
    async fn produce_snapshot(
        &self,
        base: &Table,
        mut change: Change,
        validation: Validation,
        guard: Option<&CommitGuard>,
    ) -> Result<Table> {
        let own_summary = change.summary.clone();
        let ident = base.identifier().clone();
        if base.metadata().format_version() != FormatVersion::V2 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "table {ident} has format version {}; tarn writes row deltas and rewrites to format v2 tables",
                    base.metadata().format_version()
                ),
            ));
        }
        // The metadata the added files are written for: the table's, or its redefinition's.
        let layout = match &change.replacement {
            Some(r) => r.applied_to(base)?,
            None => base.metadata().clone(),
        };
        let default_arity = layout.default_partition_type().fields().len();
        if let Some(f) = change
            .added_data
            .iter()
            .chain(&change.added_deletes)
            .find(|f| f.partition().fields().len() != default_arity)
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "file {} does not have the partition of table {ident}'s current partition spec",
                    f.file_path()
                ),
            ));
        }
        let base_snapshot_id = base.metadata().current_snapshot_id();
        let commit_id = Uuid::new_v4();
        let mut current = self.refresh(base).await?;
        let mut snapshot_id = random_snapshot_id(current.metadata());
        let mut manifest_counter = 0u32;
        let mut added: Option<Vec<ManifestFile>> = None;
        let mut attempt = 0u32;
        loop {
            let checked = async {
                if let Some(r) = &change.replacement {
                    r.check_layout_unchanged(current.metadata(), &ident)?;
                }
                let carried = self
                    .carried_manifests(&current, &change.removed, change.merge_manifests)
                    .await?;
                self.validate(base_snapshot_id, &current, &validation, &carried.removed)
                    .await?;
                let guarded = match guard {
                    Some(g) => Some(g.check(&current).await?),
                    None => None,
                };
                Ok::<_, Error>((carried, guarded))
            }
            .await;
            let carried = match checked {
                Ok((carried, guarded)) => {
                    if let Some(extra) = guarded {
                        change.summary = own_summary.clone();
                        change.summary.extend(extra);
                    }
                    carried
                }
                Err(e) => {
                    // Manifests written by an earlier attempt are no one's now.
                    if let Some(files) = added.take() {
                        delete_manifests(&current, &files).await;
                    }
                    return Err(e);
                }
            };
            if current.metadata().snapshot_by_id(snapshot_id).is_some() {
                // Someone else took the id: the written manifests carry it, so write anew.
                snapshot_id = random_snapshot_id(current.metadata());
                if let Some(files) = added.take() {
                    delete_manifests(&current, &files).await;
                }
            }
            let new_manifests = match &added {
                Some(files) => files.clone(),
                None => {
                    let files = self
                        .write_added_manifests(
                            &current,
                            &layout,
                            snapshot_id,
                            commit_id,
                            &mut manifest_counter,
                            &change,
                        )
                        .await?;
                    added = Some(files.clone());
                    files
                }
            };
            // Known when validation read them (or an earlier commit of this process seeded them).
            let parent_files = self.known_data_files(&current);
            let mut attempt_files = AttemptFiles::default();
            let result = self
                .try_commit(
                    &current,
                    layout.current_schema_id(),
                    snapshot_id,
                    commit_id,
                    attempt,
                    &mut manifest_counter,
                    &change,
                    new_manifests,
                    carried,
                    &mut attempt_files,
                )
                .await;
            // On an error the swap may or may not have happened: the files stay (orphan
            // removal takes them if they are not committed) rather than risk a committed one.
            if let Some(table) = result? {
                if let Some(parent) = parent_files {
                    self.seed_data_files(&table, next_data_files(parent, &change));
                }
                tracing::info!(
                    table = %ident,
                    snapshot_id,
                    operation = change.operation.as_str(),
                    data_files = change.added_data.len(),
                    delete_files = change.added_deletes.len(),
                    removed_files = change.removed.len(),
                    "committed"
                );
                return Ok(table);
            }
            match self.next_attempt(&ident, attempt).await {
                Ok(next) => attempt = next,
                Err(e) => {
                    if let Some(files) = added.take() {
                        delete_manifests(&current, &files).await;
                    }
                    return Err(e);
                }
            }
            current = self.refresh(&current).await?;
        }
    }

    /// Splits the current snapshot's manifests into kept ones and ones holding `removed`
    /// files; fails with a conflict when a removed file is not live.
    async fn carried_manifests(
        &self,
        current: &Table,
        removed: &HashSet<String>,
        merge: bool,
    ) -> Result<CarriedManifests> {
        let ident = current.identifier();
        let mut carried = CarriedManifests {
            kept: Vec::new(),
            rewrite: Vec::new(),
            removed: HashMap::new(),
        };
        let Some(snapshot) = current.metadata().current_snapshot() else {
            if let Some(path) = removed.iter().next() {
                return Err(conflict(format!(
                    "file {path} is no longer in table {ident}: it has no snapshot"
                )));
            }
            return Ok(carried);
        };
        let list = current
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(|e| iceberg_error(format!("cannot read the manifest list of {ident}"), e))?;
        let mut to_load = Vec::new();
        for manifest in list.entries() {
            // Only deleted entries: history of an earlier snapshot, nothing of the new one.
            if manifest.added_files_count == Some(0) && manifest.existing_files_count == Some(0) {
                continue;
            }
            let may_hold_live = manifest.has_added_files() || manifest.has_existing_files();
            if !merge && (removed.is_empty() || !may_hold_live) {
                carried.kept.push(manifest.clone());
            } else {
                to_load.push(manifest.clone());
            }
        }
        let io = current.file_io().clone();
        let loaded: Vec<(ManifestFile, Manifest)> = futures::stream::iter(to_load)
            .map(|m| {
                let io = io.clone();
                async move {
                    let loaded = m.load_manifest(&io).await.map_err(|e| {
                        iceberg_error(format!("cannot read manifest {} of {ident}", m.manifest_path), e)
                    })?;
                    Ok::<_, Error>((m, loaded))
                }
            })
            .buffered(MANIFEST_CONCURRENCY)
            .try_collect()
            .await?;
        for (manifest, entries) in loaded {
            let mut holds_removed = false;
            for entry in entries.entries() {
                if entry.is_alive() && removed.contains(entry.file_path()) {
                    holds_removed = true;
                    carried.removed.insert(
                        entry.file_path().to_string(),
                        RemovedFile {
                            file: entry.data_file().clone(),
                            spec_id: manifest.partition_spec_id,
                        },
                    );
                }
            }
            if holds_removed || merge {
                carried.rewrite.push((manifest, entries));
            } else {
                carried.kept.push(manifest);
            }
        }
        if let Some(missing) = removed.iter().find(|p| !carried.removed.contains_key(*p)) {
            return Err(conflict(format!(
                "file {missing} is no longer in table {ident} (current snapshot {}): another commit removed it",
                snapshot.snapshot_id()
            )));
        }
        Ok(carried)
    }

    /// Checks the change against the table it is about to replace (`current`, whose metadata
    /// location the compare-and-swap expects) and the snapshots committed after
    /// `base_snapshot_id`.
    async fn validate(
        &self,
        base_snapshot_id: Option<i64>,
        current: &Table,
        validation: &Validation,
        removed: &HashMap<String, RemovedFile>,
    ) -> Result<()> {
        let ident = current.identifier();
        let metadata = current.metadata();
        let referenced = match validation {
            Validation::RowDelta { referenced } => referenced,
            Validation::Overwrite => return Ok(()),
            Validation::Rewrite => {
                return self.validate_rewrite(base_snapshot_id, current, removed).await;
            }
        };
        // Position deletes apply only to the data file they name, so that file must be live in
        // the snapshot they are committed on top of, whatever the base: a caller whose deletes
        // were planned on an older snapshot than the base it passes (an index of row positions
        // kept while the table was reloaded) would otherwise commit deletes that apply to
        // nothing, and the rows they delete, copied into another file by a compaction, would
        // stay live. Checking the current snapshot rather than the history since the base also
        // covers a base that was expired.
        if referenced.is_empty() {
            return Ok(());
        }
        let live = self.current_data_files(current).await?;
        match referenced.iter().find(|p| !live.contains_key(p.as_str())) {
            Some(missing) => Err(conflict(format!(
                "data file {missing} that position deletes point at is no longer in table {ident} (current \
                 snapshot {}, base snapshot {}): another commit removed it; re-plan the deletes",
                metadata.current_snapshot_id().unwrap_or_default(),
                base_snapshot_id.map_or("none".to_string(), |id| id.to_string()),
            ))),
            None => Ok(()),
        }
    }

    /// Checks the snapshots committed after a rewrite's base: none may have removed a file the
    /// rewrite removes, nor added deletes that would lose rows of a removed data file.
    async fn validate_rewrite(
        &self,
        base_snapshot_id: Option<i64>,
        current: &Table,
        removed: &HashMap<String, RemovedFile>,
    ) -> Result<()> {
        let ident = current.identifier();
        let metadata = current.metadata();
        if metadata.current_snapshot_id() == base_snapshot_id {
            return Ok(());
        }
        let base_text = base_snapshot_id.map_or("none".to_string(), |id| id.to_string());
        let Some(since) = snapshots_since(metadata, base_snapshot_id) else {
            return Err(conflict(format!(
                "the rewrite's base snapshot {base_text} of {ident} is no longer an ancestor of the current \
                 snapshot; re-plan the rewrite"
            )));
        };
        for snapshot in &since {
            let operation = &snapshot.summary().operation;
            if *operation == Operation::Append {
                continue;
            }
            let delta = snapshot_delta(current, snapshot).await?;
            if let Some(path) = delta.removed.iter().find(|p| removed.contains_key(*p)) {
                return Err(conflict(format!(
                    "file {path} was already removed from {ident} by snapshot {} ({}) committed after base \
                     snapshot {base_text}",
                    snapshot.snapshot_id(),
                    operation.as_str()
                )));
            }
            for delete in &delta.added_deletes {
                if let Some(path) = self.delete_hits_removed(current, delete, removed).await? {
                    return Err(conflict(format!(
                        "snapshot {} ({}) committed after base snapshot {base_text} of {ident} added delete \
                         file {} for data file {path}, which the rewrite removes; re-plan the rewrite",
                        snapshot.snapshot_id(),
                        operation.as_str(),
                        delete.path()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The removed data file that new delete file `delete` would lose rows of, if any.
    async fn delete_hits_removed(
        &self,
        current: &Table,
        delete: &FileEntry,
        removed: &HashMap<String, RemovedFile>,
    ) -> Result<Option<String>> {
        let default_spec = current.metadata().default_partition_spec_id();
        let same_partition =
            |r: &RemovedFile| r.spec_id == delete.spec_id && r.file.partition() == delete.file().partition();
        match delete.content() {
            DataContentType::PositionDeletes => {
                let bounds = path_bounds(delete.file());
                let candidates: Vec<&str> = removed
                    .iter()
                    .filter(|(_, r)| r.file.content_type() == DataContentType::Data && same_partition(r))
                    .map(|(p, _)| p.as_str())
                    .filter(|p| delete.file().referenced_data_file().is_none_or(|r| r == *p))
                    .filter(|p| {
                        bounds
                            .as_ref()
                            .is_none_or(|(lo, hi)| lo.as_str() <= *p && *p <= hi.as_str())
                    })
                    .collect();
                if candidates.is_empty() {
                    return Ok(None);
                }
                if delete.file().referenced_data_file().is_some()
                    || bounds.as_ref().is_some_and(|(lo, hi)| lo == hi)
                {
                    return Ok(Some(candidates[0].to_string()));
                }
                let wanted: HashSet<&str> = candidates.into_iter().collect();
                let mut hit: Option<String> = None;
                for_each_position_delete(self.stores(), delete.file(), |path, _| {
                    if hit.is_none() && wanted.contains(path) {
                        hit = Some(path.to_string());
                    }
                })
                .await?;
                Ok(hit)
            }
            DataContentType::EqualityDeletes => {
                let global = delete.file().partition().fields().is_empty();
                Ok(removed
                    .iter()
                    .find(|(_, r)| {
                        r.file.content_type() == DataContentType::Data
                            && (global || same_partition(r))
                            && r.spec_id != default_spec
                    })
                    .map(|(p, _)| p.clone()))
            }
            DataContentType::Data => Ok(None),
        }
    }

    /// Writes the manifests listing the files `change` adds (written once, reused on retries).
    /// `layout` is the metadata they were written for (`current`'s, or its redefinition's).
    async fn write_added_manifests(
        &self,
        current: &Table,
        layout: &TableMetadata,
        snapshot_id: i64,
        commit_id: Uuid,
        counter: &mut u32,
        change: &Change,
    ) -> Result<Vec<ManifestFile>> {
        let ident = current.identifier();
        let metadata = current.metadata();
        let mut out = Vec::new();
        for (content, files) in [
            (ManifestContentType::Data, &change.added_data),
            (ManifestContentType::Deletes, &change.added_deletes),
        ] {
            if files.is_empty() {
                continue;
            }
            let path = manifest_path(metadata, commit_id, counter);
            let output = current
                .file_io()
                .new_output(&path)
                .map_err(|e| iceberg_error(format!("cannot create manifest {path}"), e))?;
            let builder = ManifestWriterBuilder::new(
                output,
                Some(snapshot_id),
                layout.current_schema().clone(),
                layout.default_partition_spec().as_ref().clone(),
            );
            let mut writer = match content {
                ManifestContentType::Data => builder.build_v2_data(),
                ManifestContentType::Deletes => builder.build_v2_deletes(),
            };
            let sequence = match content {
                ManifestContentType::Data => change.data_sequence_number.unwrap_or(-1),
                ManifestContentType::Deletes => -1,
            };
            for file in files {
                writer.add_file(file.clone(), sequence).map_err(|e| {
                    iceberg_error(
                        format!("cannot list {} in a manifest of {ident}", file.file_path()),
                        e,
                    )
                })?;
            }
            out.push(
                writer
                    .write_manifest_file()
                    .await
                    .map_err(|e| iceberg_error(format!("cannot write manifest {path}"), e))?,
            );
        }
        Ok(out)
    }

    /// One attempt: rewrites manifests holding removed files, writes the manifest list and the
    /// metadata (the new snapshot written with schema `schema_id`), and swaps. `Ok(None)`: lost the race, the attempt's files are deleted.
    #[allow(clippy::too_many_arguments)]
    async fn try_commit(
        &self,
        current: &Table,
        schema_id: i32,
        snapshot_id: i64,
        commit_id: Uuid,
        attempt: u32,
        counter: &mut u32,
        change: &Change,
        new_manifests: Vec<ManifestFile>,
        carried: CarriedManifests,
        files: &mut AttemptFiles,
    ) -> Result<Option<Table>> {
        let ident = current.identifier();
        let metadata = current.metadata();
        let mut manifests = new_manifests;
        // Merging: one manifest per content and partition spec; else one per manifest.
        let mut groups: BTreeMap<(u8, i32, usize), Vec<&LoadedManifest>> = BTreeMap::new();
        for (i, carried_manifest) in carried.rewrite.iter().enumerate() {
            let (manifest, _) = carried_manifest;
            let key = (
                manifest.content as u8,
                manifest.partition_spec_id,
                if change.merge_manifests { 0 } else { i },
            );
            groups.entry(key).or_default().push(carried_manifest);
        }
        for members in groups.values() {
            let (first, first_entries) = members[0];
            let path = manifest_path(metadata, commit_id, counter);
            let output = current
                .file_io()
                .new_output(&path)
                .map_err(|e| iceberg_error(format!("cannot create manifest {path}"), e))?;
            let builder = ManifestWriterBuilder::new(
                output,
                Some(snapshot_id),
                first_entries.metadata().schema().clone(),
                first_entries.metadata().partition_spec().clone(),
            );
            let mut writer = match first.content {
                ManifestContentType::Data => builder.build_v2_data(),
                ManifestContentType::Deletes => builder.build_v2_deletes(),
            };
            let mut written = 0usize;
            for (manifest, entries) in members {
                for entry in entries.entries() {
                    // Entries deleted by earlier snapshots are history; the new manifest drops them.
                    if !entry.is_alive() {
                        continue;
                    }
                    let sequence = entry.sequence_number().unwrap_or(manifest.sequence_number);
                    let file_sequence = entry.file_sequence_number.or(Some(sequence));
                    let file = entry.data_file().clone();
                    let result = if carried.removed.contains_key(entry.file_path()) {
                        writer.add_delete_file(file, sequence, file_sequence)
                    } else {
                        let added_by = entry.snapshot_id().unwrap_or(manifest.added_snapshot_id);
                        writer.add_existing_file(file, added_by, sequence, file_sequence)
                    };
                    result.map_err(|e| {
                        iceberg_error(format!("cannot rewrite manifest {}", manifest.manifest_path), e)
                    })?;
                    written += 1;
                }
            }
            if written == 0 {
                // Only history: nothing to carry. The writer never created its file.
                continue;
            }
            manifests.push(
                writer
                    .write_manifest_file()
                    .await
                    .map_err(|e| iceberg_error(format!("cannot write manifest {path}"), e))?,
            );
            files.0.push(path);
        }
        manifests.extend(carried.kept);

        let sequence_number = metadata.next_sequence_number();
        let parent = metadata.current_snapshot_id();
        let list_path = format!(
            "{}/metadata/snap-{snapshot_id}-{}-{commit_id}.avro",
            metadata.location(),
            attempt + 1
        );
        let writer = current
            .file_io()
            .new_output(&list_path)
            .map_err(|e| iceberg_error(format!("cannot create manifest list {list_path}"), e))?
            .writer()
            .await
            .map_err(|e| iceberg_error(format!("cannot create manifest list {list_path}"), e))?;
        let mut list = ManifestListWriter::v2(writer, snapshot_id, parent, sequence_number);
        list.add_manifests(manifests.into_iter())
            .map_err(|e| iceberg_error(format!("cannot write manifest list {list_path}"), e))?;
        list.close()
            .await
            .map_err(|e| iceberg_error(format!("cannot write manifest list {list_path}"), e))?;
        files.0.push(list_path.clone());

        let summary = Summary {
            operation: change.operation.clone(),
            additional_properties: summary_properties(
                metadata.current_snapshot().map(|s| s.summary()),
                change,
                &carried.removed,
            ),
        };
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent)
            .with_sequence_number(sequence_number)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path)
            .with_summary(summary)
            .with_schema_id(schema_id)
            .build();
        let builder = TableMetadataBuilder::new_from_metadata(
            metadata.clone(),
            current.metadata_location().map(str::to_string),
        );
        let builder = match &change.replacement {
            Some(r) => r.apply(builder),
            None => Ok(builder),
        };
        let built = builder
            .and_then(|b| b.set_branch_snapshot(snapshot, MAIN_BRANCH))
            .and_then(|b| b.build())
            .map_err(|e| iceberg_error(format!("cannot add a snapshot to {ident}"), e))?;
        let mut requirements = snapshot_requirements(metadata);
        if change.replacement.is_some() {
            requirements.extend([
                TableRequirement::LastAssignedFieldIdMatch {
                    last_assigned_field_id: metadata.last_column_id(),
                },
                TableRequirement::LastAssignedPartitionIdMatch {
                    last_assigned_partition_id: metadata.last_partition_id(),
                },
                TableRequirement::DefaultSortOrderIdMatch {
                    default_sort_order_id: metadata.default_sort_order_id(),
                },
            ]);
        }
        self.write_and_swap(current, built, requirements, files).await
    }
}

/// The data files of the snapshot `change` made on top of a snapshot with `parent`'s.
fn next_data_files(parent: DataFiles, change: &Change) -> DataFiles {
    // The committed table replaced the parent in the cache, so this is usually the last
    // holder of the parent's files and they are updated in place.
    let mut files = Arc::try_unwrap(parent).unwrap_or_else(|shared| (*shared).clone());
    files.retain(|path, _| !change.removed.contains(path));
    for file in &change.added_data {
        files.insert(file.file_path().to_string(), file.clone());
    }
    Arc::new(files)
}

fn manifest_path(metadata: &TableMetadata, commit_id: Uuid, counter: &mut u32) -> String {
    let path = format!("{}/metadata/{commit_id}-m{}.avro", metadata.location(), *counter);
    *counter += 1;
    path
}

/// Deletes manifests no commit references (written for a commit that failed).
async fn delete_manifests(table: &Table, manifests: &[ManifestFile]) {
    for m in manifests {
        if let Err(e) = table.file_io().delete(&m.manifest_path).await {
            tracing::warn!(table = %table.identifier(), file = %m.manifest_path, error = %e, "cannot delete unused manifest");
        }
    }
}

/// Checks that `new` is a valid evolution of `metadata`'s current schema.
fn check_schema_evolution(metadata: &TableMetadata, new: &Schema, ident: &TableIdent) -> Result<()> {
    let old = metadata.current_schema();
    let last_column_id = metadata.last_column_id();
    let bad = |msg: String| {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("cannot change the schema of {ident}: {msg}"),
        ))
    };
    let mut fields: Vec<NestedFieldRef> = new.as_struct().fields().to_vec();
    while let Some(field) = fields.pop() {
        match &*field.field_type {
            Type::Struct(s) => fields.extend(s.fields().iter().cloned()),
            Type::List(l) => fields.push(l.element_field.clone()),
            Type::Map(m) => {
                fields.push(m.key_field.clone());
                fields.push(m.value_field.clone());
            }
            Type::Primitive(_) => {}
        }
        match old.field_by_id(field.id) {
            Some(before) => {
                if field.required && !before.required {
                    return bad(format!(
                        "column {} (id {}) cannot become required",
                        field.name, field.id
                    ));
                }
                if !type_change_allowed(&before.field_type, &field.field_type) {
                    return bad(format!(
                        "column {} (id {}) cannot change type from {} to {}",
                        field.name, field.id, before.field_type, field.field_type
                    ));
                }
            }
            None => {
                if field.id <= last_column_id {
                    return bad(format!(
                        "new column {} has id {}, but ids up to {last_column_id} are taken (ever used)",
                        field.name, field.id
                    ));
                }
                if field.required {
                    return bad(format!(
                        "new column {} must be optional: rows already written have no value for it",
                        field.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Iceberg's allowed type promotions, plus no change at all.
fn type_change_allowed(from: &Type, to: &Type) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (Type::Primitive(a), Type::Primitive(b)) => {
            a == b
                || matches!((a, b), (P::Int, P::Long) | (P::Float, P::Double))
                || matches!(
                    (a, b),
                    (P::Decimal { precision: p1, scale: s1 }, P::Decimal { precision: p2, scale: s2 })
                        if s1 == s2 && p2 >= p1
                )
        }
        // Nested types keep their kind; their children are checked by id.
        (Type::Struct(_), Type::Struct(_))
        | (Type::List(_), Type::List(_))
        | (Type::Map(_), Type::Map(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rows::SnapshotFiles;
    use crate::testing::{
        TestLake, delete, deletes_for, iceberg_rows, insert, kv_batch, live_rows, python_rows, write,
    };

    fn expected(rows: &[(i64, &str, &str)]) -> Vec<String> {
        let mut out: Vec<String> = rows.iter().map(|(i, n, r)| format!("{i}|{n}|{r}")).collect();
        out.sort();
        out
    }

    fn summary(table: &Table) -> HashMap<String, String> {
        let s = table.metadata().current_snapshot().unwrap().summary();
        let mut out = s.additional_properties.clone();
        out.insert("operation".into(), s.operation.as_str().to_string());
        out
    }

    #[tokio::test]
    async fn row_delta_with_position_deletes_is_read_by_every_reader() {
        let t = TestLake::new().await;
        for (name, partition) in [("plain", vec![]), ("parted", vec!["region"])] {
            let table = t.create(name, &partition).await;
            let (table, index) = insert(
                &t.lake,
                &table,
                vec![
                    kv_batch(&[(1, "a", "eu"), (2, "b", "us"), (3, "c", "eu")]),
                    kv_batch(&[(4, "d", "us"), (5, "e", "eu")]),
                ],
            )
            .await;
            assert_eq!(summary(&table)["operation"], "append");
            // An update of 2 and a delete of 5, together with a new row.
            let (delete_files, referenced) = deletes_for(&table, &index, &[2, 5]).await;
            assert_eq!(delete_files.len(), if partition.is_empty() { 1 } else { 2 });
            let (data_files, _) = write(&table, vec![kv_batch(&[(2, "b2", "us"), (6, "f", "eu")])]).await;
            let delta = RowDelta {
                data_files,
                delete_files,
                referenced_data_files: referenced,
                summary: HashMap::from([("tarn.cdc.lsn".to_string(), "0/16B3748".to_string())]),
            };
            let table = t.lake.commit_row_delta(&table, delta).await.unwrap();
            let want = expected(&[
                (1, "a", "eu"),
                (2, "b2", "us"),
                (3, "c", "eu"),
                (4, "d", "us"),
                (6, "f", "eu"),
            ]);
            assert_eq!(iceberg_rows(&table).await, want, "iceberg crate scan of {name}");
            assert_eq!(live_rows(&t.lake, &table).await, want, "scan_live_rows of {name}");
            let s = summary(&table);
            assert_eq!(s["operation"], "overwrite");
            assert_eq!(s["tarn.cdc.lsn"], "0/16B3748");
            assert_eq!(s["added-records"], "2");
            assert_eq!(s["added-position-deletes"], "2");
            assert_eq!(s["total-records"], "7");
            assert_eq!(s["total-position-deletes"], "2");
            assert_eq!(
                s["total-delete-files"],
                if partition.is_empty() { "1" } else { "2" }
            );
            // Deletes only: operation `delete`.
            let table = delete(&t.lake, &table, &index, &[1]).await;
            assert_eq!(summary(&table)["operation"], "delete");
            let want = expected(&[(2, "b2", "us"), (3, "c", "eu"), (4, "d", "us"), (6, "f", "eu")]);
            assert_eq!(iceberg_rows(&table).await, want);
            let py = t.python_read(name);
            assert_eq!(python_rows(&py["pyiceberg"]), want, "pyiceberg on {name}: {py}");
            assert_eq!(python_rows(&py["duckdb"]), want, "duckdb on {name}: {py}");
            assert_eq!(py["operation"], "delete");
        }
    }

    #[tokio::test]
    async fn overwrite_replaces_rows_and_keeps_concurrent_appends() {
        let t = TestLake::new().await;
        let other = t.other_writer().await;
        let table = t.create("ow", &[]).await;
        let (base, index) = insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let base = delete(&t.lake, &base, &index, &[2]).await;
        let files = SnapshotFiles::current(&base).await.unwrap();
        // Another writer appends after `base` was read.
        let (_, _) = insert(&other, &base, vec![kv_batch(&[(3, "c", "eu")])]).await;
        let (fresh, _) = write(&base, vec![kv_batch(&[(10, "x", "eu")])]).await;
        let table = t
            .lake
            .commit_overwrite(
                &base,
                Overwrite {
                    removed_data_files: files.data.iter().map(|f| f.file().clone()).collect(),
                    removed_delete_files: files.deletes.iter().map(|f| f.file().clone()).collect(),
                    added_data_files: fresh,
                    summary: HashMap::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(summary(&table)["operation"], "overwrite");
        assert_eq!(summary(&table)["total-delete-files"], "0");
        assert_eq!(
            iceberg_rows(&table).await,
            expected(&[(3, "c", "eu"), (10, "x", "eu")])
        );
        // Removing everything: a `delete` snapshot.
        let files = SnapshotFiles::current(&table).await.unwrap();
        let table = t
            .lake
            .commit_overwrite(
                &table,
                Overwrite {
                    removed_data_files: files.data.iter().map(|f| f.file().clone()).collect(),
                    ..Overwrite::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(summary(&table)["operation"], "delete");
        assert_eq!(summary(&table)["total-records"], "0");
        assert!(iceberg_rows(&table).await.is_empty());
        let py = t.python_read("ow");
        assert_eq!(py["pyiceberg"], serde_json::json!([]), "{py}");
        assert_eq!(py["duckdb"], serde_json::json!([]), "{py}");
    }

    #[tokio::test]
    async fn empty_delta_commits_nothing() {
        let t = TestLake::new().await;
        let table = t.create("e", &[]).await;
        let same = t
            .lake
            .commit_row_delta(&table, RowDelta::default())
            .await
            .unwrap();
        assert_eq!(same.metadata_location(), table.metadata_location());
        assert!(same.metadata().current_snapshot().is_none());
    }

    #[tokio::test]
    async fn concurrent_row_deltas_rebase() {
        let t = TestLake::new().await;
        let other = t.other_writer().await;
        let base = t.create("c", &[]).await;
        let (after_first, _) = insert(&t.lake, &base, vec![kv_batch(&[(1, "a", "eu")])]).await;
        // The second writer still holds `base`: its commit lands on top of the first.
        let (after_second, _) = insert(&other, &base, vec![kv_batch(&[(2, "b", "us")])]).await;
        let meta = after_second.metadata();
        assert_eq!(meta.snapshots().count(), 2);
        let parent = meta.current_snapshot().unwrap().parent_snapshot_id();
        assert_eq!(parent, after_first.metadata().current_snapshot_id());
        assert_eq!(meta.last_sequence_number(), 2);
        assert_eq!(
            iceberg_rows(&after_second).await,
            expected(&[(1, "a", "eu"), (2, "b", "us")])
        );
        assert_eq!(summary(&after_second)["total-records"], "2");
    }

    /// A guard sees the table the commit lands on (another writer's commit included), adds
    /// to the summary what it computes from it, and its refusal leaves the table unchanged.
    #[tokio::test]
    async fn a_guard_checks_the_table_the_commit_lands_on() {
        let t = TestLake::new().await;
        let other = t.other_writer().await;
        let base = t.create("g", &[]).await;
        let (after_other, _) = insert(&other, &base, vec![kv_batch(&[(1, "a", "eu")])]).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let guard = {
            let seen = seen.clone();
            CommitGuard::new(move |current: &Table| {
                let id = current.metadata().current_snapshot_id();
                seen.lock().unwrap().push(id);
                Ok(HashMap::from([("seen".to_string(), format!("{id:?}"))]))
            })
        };
        // Planned on `base`, landing on the other writer's snapshot.
        let (data_files, _) = write(&base, vec![kv_batch(&[(2, "b", "us")])]).await;
        let delta = |data_files| RowDelta {
            data_files,
            summary: HashMap::from([("seen".to_string(), "mine".to_string()), ("k".into(), "v".into())]),
            ..RowDelta::default()
        };
        let landed = t
            .lake
            .commit_row_delta_guarded(&base, delta(data_files), Some(&guard))
            .await
            .unwrap();
        let other_id = after_other.metadata().current_snapshot_id();
        assert_eq!(*seen.lock().unwrap(), vec![other_id]);
        assert_eq!(summary(&landed)["seen"], format!("{other_id:?}"));
        assert_eq!(summary(&landed)["k"], "v");
        // A refusal: nothing committed.
        let refuse = CommitGuard::new(|_: &Table| Err(conflict("fenced".into())));
        let (data_files, _) = write(&landed, vec![kv_batch(&[(3, "c", "us")])]).await;
        let err = t
            .lake
            .commit_row_delta_guarded(&landed, delta(data_files), Some(&refuse))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict);
        let now = t.lake.load_table(landed.identifier()).await.unwrap();
        assert_eq!(now.metadata_location(), landed.metadata_location());
        assert_eq!(
            iceberg_rows(&now).await,
            expected(&[(1, "a", "eu"), (2, "b", "us")])
        );
    }

    /// A data file of `table` and the index position of its rows.
    async fn rewrite_one_file(lake: &Lake, base: &Table, file: &str) -> Table {
        let files = SnapshotFiles::current(base).await.unwrap();
        let old = files
            .data
            .iter()
            .find(|f| f.path() == file)
            .unwrap()
            .file()
            .clone();
        let wanted = HashSet::from([file.to_string()]);
        let columns = vec!["id".to_string(), "name".to_string(), "region".to_string()];
        let batches: Vec<_> = lake
            .scan_live_rows(base, &columns, Some(&wanted))
            .await
            .unwrap()
            .map_ok(|l| l.batch.project(&[0, 1, 2]).unwrap())
            .try_collect()
            .await
            .unwrap();
        let (added, _) = write(base, batches).await;
        let rewrite = Rewrite {
            removed_data_files: vec![old],
            added_data_files: added,
            ..Rewrite::default()
        };
        lake.commit_rewrite(base, rewrite).await.unwrap()
    }

    #[tokio::test]
    async fn row_delta_fails_when_a_rewrite_removed_its_file() {
        let t = TestLake::new().await;
        let compactor = t.other_writer().await;
        let table = t.create("r", &[]).await;
        let (base, index) = insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let file = index[&1].0.to_string();
        let rewritten = rewrite_one_file(&compactor, &base, &file).await;
        assert_eq!(summary(&rewritten)["operation"], "replace");
        // The CDC writer planned its deletes on `base`: they point at the rewritten file.
        let (delete_files, referenced) = deletes_for(&base, &index, &[1]).await;
        let delta = RowDelta {
            delete_files,
            referenced_data_files: referenced,
            ..RowDelta::default()
        };
        let err = t.lake.commit_row_delta(&base, delta).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        let snapshot = rewritten.metadata().current_snapshot_id().unwrap().to_string();
        assert!(
            err.message().contains(&file) && err.message().contains(&snapshot),
            "{err}"
        );
        // Nothing was committed: the rows are intact.
        let now = t.lake.load_table(base.identifier()).await.unwrap();
        assert_eq!(now.metadata_location(), rewritten.metadata_location());
        assert_eq!(
            iceberg_rows(&now).await,
            expected(&[(1, "a", "eu"), (2, "b", "us")])
        );
    }

    /// The deletes were planned on an older snapshot than the table they are committed on top
    /// of: the CDC writer keeps its key index (where each key's row is) across commits, but
    /// reloads its table after maintenance, which may bring in another process's compaction.
    /// No snapshot after that base removed the files the deletes point at (the compaction is
    /// the base, or before it), yet they are gone: committed, the deletes would apply to
    /// nothing, and the old row versions, which the compaction copied into its new file, would
    /// stay live beside the new ones.
    #[tokio::test]
    async fn row_delta_fails_when_its_deletes_point_at_files_gone_before_its_base() {
        let t = TestLake::new().await;
        let maintainer = t.other_writer().await;
        let table = t.create("stale", &[]).await;
        let (table, mut index) =
            insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let (table, more) = insert(&t.lake, &table, vec![kv_batch(&[(3, "c", "eu")])]).await;
        index.extend(more);
        let ident = table.identifier().clone();
        let compacted = maintainer
            .compact(
                &ident,
                &crate::CompactOptions {
                    min_input_files: 2,
                    ..crate::CompactOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(compacted.removed_data_files.len(), 2);
        // The writer reloads its table; its index still points at the files compaction removed.
        let reloaded = t.lake.load_table(&ident).await.unwrap();
        assert_eq!(reloaded.metadata().current_snapshot_id(), compacted.snapshot_id);
        // An update of row 1: its new version, and a position delete of the old one.
        let (delete_files, referenced) = deletes_for(&reloaded, &index, &[1]).await;
        let (data_files, _) = write(&reloaded, vec![kv_batch(&[(1, "a2", "eu")])]).await;
        let delta = RowDelta {
            data_files,
            delete_files,
            referenced_data_files: referenced,
            ..RowDelta::default()
        };
        let result = t.lake.commit_row_delta(&reloaded, delta).await;
        let now = t.lake.load_table(&ident).await.unwrap();
        let rows = iceberg_rows(&now).await;
        let Err(err) = result else {
            panic!("the deletes of a removed file were committed; the table reads {rows:?}");
        };
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        assert!(err.message().contains(&*index[&1].0), "{err}");
        assert_eq!(now.metadata_location(), reloaded.metadata_location());
        assert_eq!(rows, expected(&[(1, "a", "eu"), (2, "b", "us"), (3, "c", "eu")]));
        // Planned again on the table as it is, the update commits.
        let columns = vec!["id".to_string()];
        let live: Vec<crate::LiveRows> = t
            .lake
            .scan_live_rows(&now, &columns, None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let compacted_file = live[0].data_file.clone();
        let position = live[0]
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .values()
            .iter()
            .position(|id| *id == 1)
            .unwrap() as u64;
        let fresh = crate::testing::Index::from([(1, (compacted_file, position))]);
        let (delete_files, referenced) = deletes_for(&now, &fresh, &[1]).await;
        let (data_files, _) = write(&now, vec![kv_batch(&[(1, "a2", "eu")])]).await;
        let updated = t
            .lake
            .commit_row_delta(
                &now,
                RowDelta {
                    data_files,
                    delete_files,
                    referenced_data_files: referenced,
                    ..RowDelta::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            iceberg_rows(&updated).await,
            expected(&[(1, "a2", "eu"), (2, "b", "us"), (3, "c", "eu")])
        );
    }

    /// The live data files a commit of this process derives for its new snapshot (so the next
    /// commit validates its deletes without reading every manifest) are the ones its manifests
    /// hold, through appends, deletes, a compaction and a property change.
    #[tokio::test]
    async fn commits_know_the_data_files_of_their_snapshot() {
        let t = TestLake::new().await;
        let reader = t.other_writer().await;
        let table = t.create("known", &[]).await;
        let (table, mut index) =
            insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        // Read once; every commit from here on derives them.
        t.lake.current_data_files(&table).await.unwrap();
        let (table, more) = insert(&t.lake, &table, vec![kv_batch(&[(3, "c", "eu")])]).await;
        index.extend(more);
        let table = delete(&t.lake, &table, &index, &[2]).await;
        let compacted = t
            .lake
            .compact(
                table.identifier(),
                &crate::CompactOptions {
                    min_input_files: 2,
                    ..crate::CompactOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(compacted.removed_data_files.len(), 2);
        let table = t
            .lake
            .set_properties(table.identifier(), HashMap::from([("k".into(), "v".into())]))
            .await
            .unwrap();
        let (table, _) = insert(&t.lake, &table, vec![kv_batch(&[(4, "d", "us")])]).await;
        let known = t.lake.known_data_files(&table).expect("derived by the commits");
        let read = reader.current_data_files(&table).await.unwrap();
        let mut known_paths: Vec<&String> = known.keys().collect();
        let mut read_paths: Vec<&String> = read.keys().collect();
        known_paths.sort();
        read_paths.sort();
        assert_eq!(known_paths, read_paths);
        assert_eq!(known_paths.len(), 2);
        for (path, file) in read.iter() {
            assert_eq!(known[path].record_count(), file.record_count(), "{path}");
        }
    }

    #[tokio::test]
    async fn rewrite_fails_when_new_deletes_point_at_a_removed_file() {
        let t = TestLake::new().await;
        let compactor = t.other_writer().await;
        let table = t.create("w", &[]).await;
        let (base, index) = insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let (more, _) = insert(&t.lake, &base, vec![kv_batch(&[(3, "c", "eu")])]).await;
        let deleted = delete(&t.lake, &more, &index, &[2]).await;
        // The compactor planned on `base`, before the delete of row 2.
        let file = index[&1].0.to_string();
        let files = SnapshotFiles::current(&base).await.unwrap();
        let old = files
            .data
            .iter()
            .find(|f| f.path() == file)
            .unwrap()
            .file()
            .clone();
        let (added, _) = write(&base, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let rewrite = Rewrite {
            removed_data_files: vec![old],
            added_data_files: added,
            ..Rewrite::default()
        };
        let err = compactor.commit_rewrite(&base, rewrite).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        assert!(err.message().contains(&file), "{err}");
        let snapshot = deleted.metadata().current_snapshot_id().unwrap().to_string();
        assert!(err.message().contains(&snapshot), "{err}");
        let now = t.lake.load_table(base.identifier()).await.unwrap();
        assert_eq!(now.metadata_location(), deleted.metadata_location());
        assert_eq!(
            iceberg_rows(&now).await,
            expected(&[(1, "a", "eu"), (3, "c", "eu")])
        );
    }

    #[tokio::test]
    async fn rewrite_rebases_over_appends_and_keeps_the_base_sequence_number() {
        let t = TestLake::new().await;
        let compactor = t.other_writer().await;
        let table = t.create("s", &[]).await;
        let (base, index) = insert(&t.lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        let base_seq = base.metadata().current_snapshot().unwrap().sequence_number();
        let (_, appended) = insert(&t.lake, &base, vec![kv_batch(&[(3, "c", "eu")])]).await;
        let file = index[&1].0.to_string();
        let rewritten = rewrite_one_file(&compactor, &base, &file).await;
        assert_eq!(
            iceberg_rows(&rewritten).await,
            expected(&[(1, "a", "eu"), (2, "b", "us"), (3, "c", "eu")])
        );
        let files = SnapshotFiles::current(&rewritten).await.unwrap();
        assert_eq!(files.data.len(), 2);
        let new_seq = rewritten.metadata().current_snapshot().unwrap().sequence_number();
        let added = files
            .data
            .iter()
            .find(|f| f.path() != appended[&3].0.as_ref())
            .unwrap();
        assert_eq!(
            added.seq(),
            base_seq,
            "rewritten file keeps the base data sequence number"
        );
        assert_eq!(added.entry.file_sequence_number, Some(new_seq));
        // Removing a file twice is a conflict, naming it.
        let err = compactor
            .commit_rewrite(
                &base,
                Rewrite {
                    removed_data_files: vec![
                        SnapshotFiles::current(&base).await.unwrap().data[0]
                            .file()
                            .clone(),
                    ],
                    ..Rewrite::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        assert!(err.message().contains(&file), "{err}");
    }

    #[tokio::test]
    async fn schema_evolution_reads_back_everywhere() {
        use arrow::array::{Int32Array, RecordBatch as Batch, StringArray};
        use arrow_schema::{DataType, Field, Schema as ArrowSchema};
        use iceberg::spec::NestedField;

        let t = TestLake::new().await;
        let arrow = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("extra", DataType::Utf8, true),
        ]);
        let schema = crate::iceberg_schema_with_keys(&arrow, &["id"]).unwrap();
        let ident = crate::testing::ident("evo");
        let table = t
            .lake
            .create_table_with_schema(&ident, schema, &crate::TableLayout::default())
            .await
            .unwrap();
        assert_eq!(
            table
                .metadata()
                .current_schema()
                .identifier_field_ids()
                .collect::<Vec<_>>(),
            vec![1]
        );
        let batch = Batch::try_new(
            Arc::new(arrow.clone()),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(Int32Array::from(vec![Some(10), None])),
                Arc::new(StringArray::from(vec!["one", "two"])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let (files, index) = write(&table, vec![batch]).await;
        let table = t
            .lake
            .commit_row_delta(
                &table,
                RowDelta {
                    data_files: files,
                    ..RowDelta::default()
                },
            )
            .await
            .unwrap();
        // n: int → long; name → label; extra dropped; note added.
        let old = table.metadata().current_schema();
        let id_of = |name: &str| old.field_by_name(name).unwrap().id;
        let new_schema = Schema::builder()
            .with_identifier_field_ids(vec![id_of("id")])
            .with_fields(vec![
                Arc::new(NestedField::required(
                    id_of("id"),
                    "id",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    id_of("n"),
                    "n",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    id_of("name"),
                    "label",
                    Type::Primitive(PrimitiveType::String),
                )),
                Arc::new(NestedField::optional(
                    table.metadata().last_column_id() + 1,
                    "note",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .build()
            .unwrap();
        // A required new column is refused.
        let bad = Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    id_of("id"),
                    "id",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::required(
                    99,
                    "must",
                    Type::Primitive(PrimitiveType::Int),
                )),
            ])
            .build()
            .unwrap();
        let err = t
            .lake
            .evolve_schema(&table, bad, HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let evolved = t
            .lake
            .evolve_schema(
                &table,
                new_schema.clone(),
                HashMap::from([("tarn.test".into(), "1".into())]),
            )
            .await
            .unwrap();
        assert_eq!(evolved.metadata().properties()["tarn.test"], "1");
        assert!(evolved.metadata().current_snapshot_id() == table.metadata().current_snapshot_id());
        // Delete row 2 (written before the change) and add a row with the new schema.
        let (delete_files, referenced) = deletes_for(&evolved, &index, &[2]).await;
        let new_arrow = iceberg::arrow::schema_to_arrow_schema(evolved.metadata().current_schema()).unwrap();
        let new_batch = Batch::try_new(
            Arc::new(new_arrow),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![3])),
                Arc::new(arrow::array::Int64Array::from(vec![Some(5_000_000_000)])),
                Arc::new(StringArray::from(vec!["three"])),
                Arc::new(StringArray::from(vec![Some("new")])),
            ],
        )
        .unwrap();
        let (data_files, _) = write(&evolved, vec![new_batch]).await;
        let table = t
            .lake
            .commit_row_delta(
                &evolved,
                RowDelta {
                    data_files,
                    delete_files,
                    referenced_data_files: referenced,
                    ..RowDelta::default()
                },
            )
            .await
            .unwrap();
        let want = vec!["1|10|one|NULL".to_string(), "3|5000000000|three|new".to_string()];
        assert_eq!(iceberg_rows(&table).await, want);
        assert_eq!(live_rows(&t.lake, &table).await, want);
        let py = t.python_read("evo");
        assert_eq!(
            py["columns"],
            serde_json::json!(["id", "n", "label", "note"]),
            "{py}"
        );
        assert_eq!(python_rows(&py["pyiceberg"]), want, "{py}");
        assert_eq!(python_rows(&py["duckdb"]), want, "{py}");
    }

    /// The same compare-and-swap on a PostgreSQL catalog (`$n` binds).
    #[tokio::test]
    async fn postgres_catalog_commits_and_conflicts() {
        let pg = tarn_test_utils::start_postgres().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = tarn_core::Config::defaults(dir.path());
        config.catalog.url = Some(pg.url("postgres"));
        let lake = Lake::open(&config).await.unwrap();
        let other = Lake::open(&config).await.unwrap();
        lake.create_namespace(&iceberg::NamespaceIdent::new("t".into()), true)
            .await
            .unwrap();
        let ident = crate::testing::ident("pg");
        let table = lake
            .create_table(
                &ident,
                &crate::testing::kv_schema(),
                &crate::TableLayout::default(),
            )
            .await
            .unwrap();
        let (base, index) = insert(&lake, &table, vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us")])]).await;
        // Two writers from one base: the second rebases.
        let (_, more) = insert(&other, &base, vec![kv_batch(&[(3, "c", "eu")])]).await;
        let table = delete(&lake, &base, &index, &[2]).await;
        assert_eq!(table.metadata().snapshots().count(), 3);
        assert_eq!(
            iceberg_rows(&table).await,
            expected(&[(1, "a", "eu"), (3, "c", "eu")])
        );
        // A rewrite of the file of row 3, then deletes planned before it: a conflict.
        let rewritten = rewrite_one_file(&other, &table, &more[&3].0).await;
        let (delete_files, referenced) = deletes_for(&table, &more, &[3]).await;
        let err = lake
            .commit_row_delta(
                &table,
                RowDelta {
                    delete_files,
                    referenced_data_files: referenced,
                    ..RowDelta::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        let now = lake.load_table(&ident).await.unwrap();
        assert_eq!(now.metadata_location(), rewritten.metadata_location());
        assert_eq!(
            iceberg_rows(&now).await,
            expected(&[(1, "a", "eu"), (3, "c", "eu")])
        );
    }

    #[tokio::test]
    async fn schema_change_from_a_stale_schema_conflicts() {
        use iceberg::spec::NestedField;
        let t = TestLake::new().await;
        let base = t.create("stale", &[]).await;
        let with_column = |name: &str, id: i32| {
            let mut fields = base.metadata().current_schema().as_struct().fields().to_vec();
            fields.push(Arc::new(NestedField::optional(
                id,
                name,
                Type::Primitive(PrimitiveType::String),
            )));
            Schema::builder().with_fields(fields).build().unwrap()
        };
        let next = base.metadata().last_column_id() + 1;
        t.lake
            .evolve_schema(&base, with_column("a", next), HashMap::new())
            .await
            .unwrap();
        let err = t
            .lake
            .evolve_schema(&base, with_column("b", next), HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CommitConflict, "{err}");
        // Properties merge regardless of what changed.
        let table = t
            .lake
            .set_properties(base.identifier(), HashMap::from([("k".into(), "v".into())]))
            .await
            .unwrap();
        assert_eq!(table.metadata().properties()["k"], "v");
        assert!(table.metadata().current_schema().field_by_name("a").is_some());
    }

    #[test]
    fn promotions() {
        let p = |t: PrimitiveType| Type::Primitive(t);
        assert!(type_change_allowed(
            &p(PrimitiveType::Int),
            &p(PrimitiveType::Long)
        ));
        assert!(type_change_allowed(
            &p(PrimitiveType::Float),
            &p(PrimitiveType::Double)
        ));
        assert!(!type_change_allowed(
            &p(PrimitiveType::Long),
            &p(PrimitiveType::Int)
        ));
        assert!(!type_change_allowed(
            &p(PrimitiveType::String),
            &p(PrimitiveType::Long)
        ));
        assert!(type_change_allowed(
            &p(PrimitiveType::Decimal {
                precision: 10,
                scale: 2
            }),
            &p(PrimitiveType::Decimal {
                precision: 12,
                scale: 2
            })
        ));
        assert!(!type_change_allowed(
            &p(PrimitiveType::Decimal {
                precision: 10,
                scale: 2
            }),
            &p(PrimitiveType::Decimal {
                precision: 12,
                scale: 3
            })
        ));
    }

    #[test]
    fn summary_counts_and_totals() {
        let previous = Summary {
            operation: Operation::Append,
            additional_properties: HashMap::from([
                ("total-records".to_string(), "10".to_string()),
                ("total-data-files".to_string(), "2".to_string()),
                ("total-files-size".to_string(), "1000".to_string()),
                ("total-delete-files".to_string(), "0".to_string()),
                ("total-position-deletes".to_string(), "0".to_string()),
                ("total-equality-deletes".to_string(), "0".to_string()),
            ]),
        };
        let file = |content, records, size| {
            iceberg::spec::DataFileBuilder::default()
                .content(content)
                .file_path(format!("f{records}"))
                .file_format(iceberg::spec::DataFileFormat::Parquet)
                .record_count(records)
                .file_size_in_bytes(size)
                .build()
                .unwrap()
        };
        let change = Change {
            operation: Operation::Overwrite,
            added_data: vec![file(DataContentType::Data, 3, 100)],
            added_deletes: vec![file(DataContentType::PositionDeletes, 2, 50)],
            data_sequence_number: None,
            removed: HashSet::new(),
            merge_manifests: false,
            summary: HashMap::from([
                ("tarn.cdc.lsn".to_string(), "0/1".to_string()),
                ("added-records".to_string(), "999".to_string()),
            ]),
            replacement: None,
        };
        let s = summary_properties(Some(&previous), &change, &HashMap::new());
        assert_eq!(s["tarn.cdc.lsn"], "0/1");
        assert_eq!(s["added-records"], "3");
        assert_eq!(s["added-position-deletes"], "2");
        assert_eq!(s["added-position-delete-files"], "1");
        assert_eq!(s["added-files-size"], "150");
        assert_eq!(s["total-records"], "13");
        assert_eq!(s["total-data-files"], "3");
        assert_eq!(s["total-delete-files"], "1");
        assert_eq!(s["total-position-deletes"], "2");
        assert_eq!(s["total-files-size"], "1150");
        assert!(!s.contains_key("deleted-data-files"));
    }
}
