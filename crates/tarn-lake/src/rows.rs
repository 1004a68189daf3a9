//! Reading the live rows of a table together with their positions in the data files.
//!
//! tarn's CDC writer keeps a primary-key index (key → data file + row position) so that an
//! update or delete becomes a *position* delete (see `DESIGN.md`, "Deletes: position, not
//! equality"). This module is what that index is built from and what fills in unchanged values:
//!
//! - [`Lake::scan_live_rows`] streams, for every data file of the current snapshot (or only
//!   the files asked for), batches of the requested columns plus an `Int64` column `_pos`: the
//!   row's position in its data file. Rows deleted by position delete files are skipped with a
//!   Parquet row selection (they are never decoded); rows deleted by equality delete files are
//!   filtered after decoding.
//! - [`Lake::read_rows_at`] reads the rows at given positions of one data file (point lookups
//!   through the Parquet page index), regardless of deletes.
//! - [`Lake::deletes_since`] reads which rows of given data files other writers deleted after
//!   a snapshot: how a row-level statement tells a concurrent change of the rows it rewrites
//!   from one of other rows of the same files.
//!
//! Columns are matched by Iceberg field id, so renamed columns are found under their new name,
//! columns added after a file was written read as NULL, and promoted types (`int` → `long`,
//! `float` → `double`, wider decimals) are cast to the current schema's type.
//!
//! Memory stays bounded: files are read one at a time in batches; the delete positions of one
//! partition at a time are held in memory (equality deletes, a fallback only, are held per
//! delete file while their partition is read).
//!
//! Why our own: the `iceberg` crate's Arrow reader applies deletes but neither reports row
//! positions nor reads rows by position, and delete-file planning is not public. The
//! planning here follows the spec's scan-planning rules: a position delete file applies to a
//! data file of the same partition whose data sequence number is lower or equal (narrowed by
//! `referenced_data_file` and the `file_path` bounds); an equality delete file applies to data
//! files with a strictly lower data sequence number, of the same partition or of every
//! partition when the delete file is unpartitioned.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, new_null_array};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow_schema::{DataType, Field, FieldRef, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataContentType, DataFile, ManifestContentType, ManifestEntryRef, PrimitiveLiteral, SnapshotRef, Struct,
};
use iceberg::table::Table;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::arrow::{PARQUET_FIELD_ID_META_KEY, ProjectionMask};
use parquet::file::metadata::PageIndexPolicy;
use tarn_core::{Error, ErrorKind, Result};

use crate::lake::{Lake, iceberg_error};
use crate::storage::ObjectStores;

/// Field id of `file_path` in position delete files (reserved by the Iceberg spec).
pub const DELETE_FILE_PATH_FIELD_ID: i32 = 2_147_483_546;
/// Field id of `pos` in position delete files (reserved by the Iceberg spec).
pub const DELETE_POS_FIELD_ID: i32 = 2_147_483_545;
/// Name of the row-position column [`Lake::scan_live_rows`] and [`Lake::read_rows_at`] add.
pub const POS_COLUMN: &str = "_pos";
/// Field id of the `_pos` metadata column (reserved by the Iceberg spec).
const POS_FIELD_ID: i32 = 2_147_483_645;
/// Rows per batch read from data files.
const BATCH_ROWS: usize = 8192;
/// Manifests read at once.
const MANIFEST_CONCURRENCY: usize = 8;

/// A data or delete file a snapshot added or removed ([`Lake::files_changed_since`]).
#[derive(Debug, Clone)]
pub struct ChangedFile {
    /// The snapshot that changed it.
    pub snapshot_id: i64,
    /// That snapshot's operation (`append`, `overwrite`, `delete`, `replace`).
    pub operation: String,
    /// Added (`false`: removed).
    pub added: bool,
    /// The file, with its partition and content type.
    pub file: DataFile,
}

/// Deletes committed after a snapshot, as far as they touch some data files
/// ([`Lake::deletes_since`]).
#[derive(Debug, Clone, Default)]
pub struct DeletesSince {
    /// Positions deleted, by data file (only the files asked about).
    pub positions: HashMap<String, HashSet<u64>>,
    /// Equality delete files committed since: they may delete any row.
    pub equality_files: Vec<String>,
}

/// Live rows of one data file: the requested columns plus `_pos`.
#[derive(Debug, Clone)]
pub struct LiveRows {
    /// The data file the rows are in, as the table's manifests name it.
    pub data_file: Arc<str>,
    /// The partition of `data_file` (empty for an unpartitioned table), e.g. for
    /// [`crate::write_position_deletes_in_partitions`].
    pub partition: Struct,
    /// The rows: the requested columns in the order asked for, then `_pos` (`Int64`, the
    /// row's position in `data_file`, ascending).
    pub batch: RecordBatch,
}

/// A live file of a snapshot: its manifest entry (with inherited sequence numbers) and the
/// partition spec its manifest was written with.
#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    pub(crate) entry: ManifestEntryRef,
    pub(crate) spec_id: i32,
}

impl FileEntry {
    pub(crate) fn file(&self) -> &DataFile {
        self.entry.data_file()
    }

    pub(crate) fn path(&self) -> &str {
        self.entry.file_path()
    }

    /// The data sequence number.
    pub(crate) fn seq(&self) -> i64 {
        self.entry.sequence_number().unwrap_or(0)
    }

    pub(crate) fn content(&self) -> DataContentType {
        self.entry.content_type()
    }

    /// Whether this delete file applies to `data` (spec "Scan Planning"); the caller has
    /// matched partitions already.
    fn applies_to(&self, data: &FileEntry) -> bool {
        match self.content() {
            DataContentType::PositionDeletes => {
                self.seq() >= data.seq()
                    && self
                        .file()
                        .referenced_data_file()
                        .is_none_or(|r| r == data.path())
                    && path_bounds(self.file())
                        .is_none_or(|(lo, hi)| lo.as_str() <= data.path() && data.path() <= hi.as_str())
            }
            DataContentType::EqualityDeletes => self.seq() > data.seq(),
            DataContentType::Data => false,
        }
    }
}

/// The `file_path` bounds of a position delete file, when its manifest entry has them.
pub(crate) fn path_bounds(file: &DataFile) -> Option<(String, String)> {
    let text = |d: Option<&iceberg::spec::Datum>| match d.map(|d| d.literal()) {
        Some(PrimitiveLiteral::String(s)) => Some(s.clone()),
        _ => None,
    };
    Some((
        text(file.lower_bounds().get(&DELETE_FILE_PATH_FIELD_ID))?,
        text(file.upper_bounds().get(&DELETE_FILE_PATH_FIELD_ID))?,
    ))
}

/// The single data file a position delete file points at, when its metadata says so.
pub(crate) fn single_referenced_file(file: &DataFile) -> Option<String> {
    file.referenced_data_file()
        .or_else(|| path_bounds(file).and_then(|(lo, hi)| (lo == hi).then_some(lo)))
}

/// The live data and delete files of one snapshot, indexed for delete matching.
#[derive(Debug, Default)]
pub(crate) struct SnapshotFiles {
    pub(crate) data: Vec<FileEntry>,
    pub(crate) deletes: Vec<FileEntry>,
    /// spec id → partition → indices into `deletes`.
    by_partition: HashMap<i32, HashMap<Struct, Vec<usize>>>,
    /// Equality deletes of an unpartitioned spec: they apply to every partition.
    global_equality: Vec<usize>,
}

impl SnapshotFiles {
    /// The files of `table`'s current snapshot (none for a table without snapshots).
    pub(crate) async fn current(table: &Table) -> Result<Self> {
        match table.metadata().current_snapshot() {
            Some(snapshot) => Self::load(table, snapshot).await,
            None => Ok(Self::default()),
        }
    }

    /// The files of `snapshot` of `table`.
    pub(crate) async fn load(table: &Table, snapshot: &SnapshotRef) -> Result<Self> {
        let name = table.identifier().to_string();
        let list = table.manifest_list_reader(snapshot).load().await.map_err(|e| {
            iceberg_error(
                format!(
                    "cannot read the manifest list of snapshot {} of {name}",
                    snapshot.snapshot_id()
                ),
                e,
            )
        })?;
        let io = table.file_io().clone();
        let manifests: Vec<_> = futures::stream::iter(list.entries().to_vec())
            .map(|manifest| {
                let io = io.clone();
                let name = name.clone();
                async move {
                    let loaded = manifest.load_manifest(&io).await.map_err(|e| {
                        iceberg_error(
                            format!("cannot read manifest {} of {name}", manifest.manifest_path),
                            e,
                        )
                    })?;
                    Ok::<_, Error>((manifest.partition_spec_id, loaded))
                }
            })
            .buffered(MANIFEST_CONCURRENCY)
            .try_collect()
            .await?;
        let mut files = Self::default();
        for (spec_id, manifest) in manifests {
            for entry in manifest.entries() {
                if !entry.is_alive() {
                    continue;
                }
                let file = FileEntry {
                    entry: entry.clone(),
                    spec_id,
                };
                if file.content() == DataContentType::Data {
                    files.data.push(file);
                } else {
                    files.deletes.push(file);
                }
            }
        }
        for (i, delete) in files.deletes.iter().enumerate() {
            if delete.content() == DataContentType::EqualityDeletes
                && delete.file().partition().fields().is_empty()
            {
                files.global_equality.push(i);
            } else {
                files
                    .by_partition
                    .entry(delete.spec_id)
                    .or_default()
                    .entry(delete.file().partition().clone())
                    .or_default()
                    .push(i);
            }
        }
        Ok(files)
    }

    /// The delete files that apply to `data`.
    pub(crate) fn deletes_for(&self, data: &FileEntry) -> Vec<&FileEntry> {
        let mut out = Vec::new();
        if let Some(indices) = self
            .by_partition
            .get(&data.spec_id)
            .and_then(|parts| parts.get(data.file().partition()))
        {
            out.extend(
                indices
                    .iter()
                    .map(|&i| &self.deletes[i])
                    .filter(|d| d.applies_to(data)),
            );
        }
        out.extend(
            self.global_equality
                .iter()
                .map(|&i| &self.deletes[i])
                .filter(|d| d.applies_to(data)),
        );
        out
    }
}

fn parquet_error(what: String, e: parquet::errors::ParquetError) -> Error {
    Error::new(ErrorKind::Storage, what).with_source(e)
}

fn arrow_error(what: String, e: arrow_schema::ArrowError) -> Error {
    Error::new(ErrorKind::Internal, what).with_source(e)
}

/// Opens a Parquet file for async reading.
pub(crate) async fn open_parquet(
    stores: &ObjectStores,
    location: &str,
    size: Option<u64>,
    page_index: bool,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>> {
    let resolved = stores
        .resolve(location)
        .map_err(|e| iceberg_error(format!("cannot open {location}"), e))?;
    let mut reader = ParquetObjectReader::new(resolved.store, resolved.path);
    if let Some(size) = size {
        reader = reader.with_file_size(size);
    }
    ParquetRecordBatchStreamBuilder::new_with_options(
        reader,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::from(page_index)),
    )
    .await
    .map_err(|e| parquet_error(format!("cannot read Parquet file {location}"), e))
}

fn field_id(field: &Field) -> Option<i32> {
    field.metadata().get(PARQUET_FIELD_ID_META_KEY)?.parse().ok()
}

/// Root column indices of `file_schema` holding `wanted` (field id, name): by field id, or by
/// name when the file has no field ids at all (written without Iceberg metadata).
fn locate_columns(file_schema: &ArrowSchema, wanted: &[(i32, String)]) -> Vec<Option<usize>> {
    let has_ids = file_schema.fields().iter().any(|f| field_id(f).is_some());
    wanted
        .iter()
        .map(|(id, name)| {
            file_schema.fields().iter().position(|f| {
                if has_ids {
                    field_id(f) == Some(*id)
                } else {
                    f.name() == name
                }
            })
        })
        .collect()
}

/// Projection of the located roots, and per wanted column its index in projected batches.
fn projection(
    builder_schema: &parquet::schema::types::SchemaDescriptor,
    located: &[Option<usize>],
) -> (ProjectionMask, Vec<Option<usize>>) {
    let mut roots: Vec<usize> = located.iter().flatten().copied().collect();
    roots.sort_unstable();
    roots.dedup();
    let slots = located
        .iter()
        .map(|root| root.map(|r| roots.binary_search(&r).expect("root was projected")))
        .collect();
    (ProjectionMask::roots(builder_schema, roots), slots)
}

/// Gives column `slot` of `batch` the type of `target`, or NULLs when the file lacks it.
fn conform_column(batch: &RecordBatch, slot: Option<usize>, target: &Field, file: &str) -> Result<ArrayRef> {
    let Some(slot) = slot else {
        if !target.is_nullable() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "required column {} is missing from data file {file}",
                    target.name()
                ),
            ));
        }
        return Ok(new_null_array(target.data_type(), batch.num_rows()));
    };
    let column = batch.column(slot);
    if column.data_type() == target.data_type() {
        return Ok(column.clone());
    }
    cast(column, target.data_type()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "column {} of data file {file} has type {}, which does not convert to {}: {e}",
                target.name(),
                column.data_type(),
                target.data_type()
            ),
        )
    })
}

/// Calls `f(data_file_path, pos)` for every row of position delete file `delete`.
pub(crate) async fn for_each_position_delete(
    stores: &ObjectStores,
    delete: &DataFile,
    mut f: impl FnMut(&str, u64),
) -> Result<()> {
    let location = delete.file_path();
    let builder = open_parquet(stores, location, Some(delete.file_size_in_bytes()), false).await?;
    let located = locate_columns(
        builder.schema(),
        &[
            (DELETE_FILE_PATH_FIELD_ID, "file_path".to_string()),
            (DELETE_POS_FIELD_ID, "pos".to_string()),
        ],
    );
    if located.iter().any(Option::is_none) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("position delete file {location} lacks the file_path or pos column"),
        ));
    }
    let (mask, slots) = projection(builder.parquet_schema(), &located);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(65536)
        .build()
        .map_err(|e| parquet_error(format!("cannot read {location}"), e))?;
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| parquet_error(format!("cannot read {location}"), e))?
    {
        let paths = cast(batch.column(slots[0].expect("located")), &DataType::Utf8)
            .map_err(|e| arrow_error(format!("bad file_path column in {location}"), e))?;
        let positions = cast(batch.column(slots[1].expect("located")), &DataType::Int64)
            .map_err(|e| arrow_error(format!("bad pos column in {location}"), e))?;
        let paths = paths
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let positions = positions
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64");
        for i in 0..batch.num_rows() {
            if paths.is_null(i) || positions.is_null(i) || positions.value(i) < 0 {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("position delete file {location} has an invalid row {i}"),
                ));
            }
            f(paths.value(i), positions.value(i) as u64);
        }
    }
    Ok(())
}

/// The rows of one equality delete file, keyed for lookup.
struct EqualityDeletes {
    field_ids: Vec<i32>,
    converter: RowConverter,
    rows: HashSet<OwnedRow>,
}

impl EqualityDeletes {
    async fn load(ctx: &ScanContext, delete: &DataFile) -> Result<Self> {
        let location = delete.file_path();
        let field_ids = delete.equality_ids().unwrap_or_default();
        if field_ids.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("equality delete file {location} names no equality fields"),
            ));
        }
        let fields = field_ids
            .iter()
            .map(|id| ctx.field(*id, location))
            .collect::<Result<Vec<_>>>()?;
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| arrow_error(format!("cannot key equality deletes of {location}"), e))?;
        let builder = open_parquet(&ctx.stores, location, Some(delete.file_size_in_bytes()), false).await?;
        let wanted: Vec<(i32, String)> = fields
            .iter()
            .zip(&field_ids)
            .map(|(f, id)| (*id, f.name().clone()))
            .collect();
        let located = locate_columns(builder.schema(), &wanted);
        let (mask, slots) = projection(builder.parquet_schema(), &located);
        let mut stream = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| parquet_error(format!("cannot read {location}"), e))?;
        let mut rows = HashSet::new();
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| parquet_error(format!("cannot read {location}"), e))?
        {
            let columns = slots
                .iter()
                .zip(&fields)
                .map(|(slot, field)| conform_column(&batch, *slot, field, location))
                .collect::<Result<Vec<_>>>()?;
            let keys = converter
                .convert_columns(&columns)
                .map_err(|e| arrow_error(format!("cannot key equality deletes of {location}"), e))?;
            rows.extend(keys.iter().map(|r| r.owned()));
        }
        Ok(Self {
            field_ids,
            converter,
            rows,
        })
    }

    /// `true` for the rows of `columns` (the equality fields' arrays) that are deleted.
    fn deleted(&self, columns: &[ArrayRef]) -> Result<Vec<bool>> {
        let keys = self
            .converter
            .convert_columns(columns)
            .map_err(|e| arrow_error("cannot key rows for equality deletes".into(), e))?;
        Ok(keys.iter().map(|k| self.rows.contains(&k.owned())).collect())
    }
}

/// What every file of one scan shares.
struct ScanContext {
    stores: ObjectStores,
    table: String,
    /// Output schema: the requested columns, then `_pos`.
    output: ArrowSchemaRef,
    /// Field id of every requested column, in output order.
    columns: Vec<i32>,
    /// Every top-level field of the current schema, by field id, with its Arrow type.
    fields_by_id: HashMap<i32, FieldRef>,
}

impl ScanContext {
    fn new(lake: &Lake, table: &Table, columns: &[String]) -> Result<Self> {
        let name = table.identifier().to_string();
        let schema = table.metadata().current_schema();
        let arrow = schema_to_arrow_schema(schema)
            .map_err(|e| iceberg_error(format!("cannot map the schema of {name}"), e))?;
        let fields_by_id: HashMap<i32, FieldRef> = arrow
            .fields()
            .iter()
            .filter_map(|f| field_id(f).map(|id| (id, f.clone())))
            .collect();
        let mut ids = Vec::with_capacity(columns.len());
        let mut fields = Vec::with_capacity(columns.len() + 1);
        for column in columns {
            let Some(field) = arrow.fields().iter().find(|f| f.name() == column) else {
                let names: Vec<&str> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "table {name} has no column {column:?} (columns: {})",
                        names.join(", ")
                    ),
                ));
            };
            ids.push(field_id(field).expect("Iceberg schemas carry field ids"));
            fields.push(field.clone());
        }
        fields.push(Arc::new(pos_field()));
        Ok(Self {
            stores: lake.stores().clone(),
            table: name,
            output: Arc::new(ArrowSchema::new(fields)),
            columns: ids,
            fields_by_id,
        })
    }

    fn field(&self, id: i32, file: &str) -> Result<FieldRef> {
        self.fields_by_id.get(&id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "delete file {file} of table {} uses field id {id}, which is not a top-level column of the current schema",
                    self.table
                ),
            )
        })
    }
}

fn pos_field() -> Field {
    Field::new(POS_COLUMN, DataType::Int64, false).with_metadata(HashMap::from([(
        PARQUET_FIELD_ID_META_KEY.to_string(),
        POS_FIELD_ID.to_string(),
    )]))
}

/// Data files of one partition, with the delete files that apply to each.
struct Group {
    files: Vec<(FileEntry, Vec<FileEntry>)>,
}

/// One data file ready to open.
struct PendingFile {
    file: FileEntry,
    deleted: Vec<u64>,
    equality: Vec<Arc<EqualityDeletes>>,
}

/// The positions of the rows a file still has, in order.
struct KeptPositions {
    ranges: VecDeque<Range<u64>>,
}

impl KeptPositions {
    /// Kept ranges of a file with `num_rows` rows and the sorted, unique `deleted` positions.
    fn new(deleted: &[u64], num_rows: u64) -> Self {
        let mut ranges = VecDeque::new();
        let mut start = 0;
        for &d in deleted {
            if d >= num_rows {
                break;
            }
            if d > start {
                ranges.push_back(start..d);
            }
            start = d + 1;
        }
        if start < num_rows {
            ranges.push_back(start..num_rows);
        }
        Self { ranges }
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn selection(&self, num_rows: u64) -> RowSelection {
        let mut selectors = Vec::with_capacity(self.ranges.len() * 2 + 1);
        let mut at = 0;
        for r in &self.ranges {
            if r.start > at {
                selectors.push(RowSelector::skip((r.start - at) as usize));
            }
            selectors.push(RowSelector::select((r.end - r.start) as usize));
            at = r.end;
        }
        if at < num_rows {
            selectors.push(RowSelector::skip((num_rows - at) as usize));
        }
        RowSelection::from(selectors)
    }

    /// The next `n` positions.
    fn take(&mut self, n: usize, file: &str) -> Result<Int64Array> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(range) = self.ranges.front_mut() else {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("data file {file} returned more rows than its row selection"),
                ));
            };
            let take = ((n - out.len()) as u64).min(range.end - range.start);
            out.extend((range.start..range.start + take).map(|p| p as i64));
            range.start += take;
            if range.start == range.end {
                self.ranges.pop_front();
            }
        }
        Ok(Int64Array::from(out))
    }
}

/// A data file being read.
struct OpenFile {
    path: Arc<str>,
    partition: Struct,
    stream: ParquetRecordBatchStream<ParquetObjectReader>,
    /// Field ids read: the requested columns, then equality-delete fields not among them.
    read_ids: Vec<i32>,
    slots: Vec<Option<usize>>,
    positions: KeptPositions,
    equality: Vec<Arc<EqualityDeletes>>,
}

impl OpenFile {
    async fn open(ctx: &ScanContext, pending: PendingFile) -> Result<Option<Self>> {
        let path: Arc<str> = Arc::from(pending.file.path());
        let builder = open_parquet(
            &ctx.stores,
            &path,
            Some(pending.file.file().file_size_in_bytes()),
            false,
        )
        .await?;
        let num_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let positions = KeptPositions::new(&pending.deleted, num_rows);
        if positions.is_empty() {
            return Ok(None);
        }
        let mut read_ids = ctx.columns.clone();
        for eq in &pending.equality {
            for id in &eq.field_ids {
                if !read_ids.contains(id) {
                    read_ids.push(*id);
                }
            }
        }
        let wanted = read_ids
            .iter()
            .map(|id| Ok((*id, ctx.field(*id, &path)?.name().clone())))
            .collect::<Result<Vec<_>>>()?;
        let located = locate_columns(builder.schema(), &wanted);
        let (mask, slots) = projection(builder.parquet_schema(), &located);
        let mut builder = builder.with_projection(mask).with_batch_size(BATCH_ROWS);
        if !pending.deleted.is_empty() {
            builder = builder.with_row_selection(positions.selection(num_rows));
        }
        let stream = builder
            .build()
            .map_err(|e| parquet_error(format!("cannot read data file {path} of {}", ctx.table), e))?;
        Ok(Some(Self {
            path,
            partition: pending.file.file().partition().clone(),
            stream,
            read_ids,
            slots,
            positions,
            equality: pending.equality,
        }))
    }

    /// The next non-empty batch of live rows, or `None` at the end of the file.
    async fn next(&mut self, ctx: &ScanContext) -> Result<Option<LiveRows>> {
        loop {
            let Some(batch) = self.stream.try_next().await.map_err(|e| {
                parquet_error(format!("cannot read data file {} of {}", self.path, ctx.table), e)
            })?
            else {
                return Ok(None);
            };
            let positions = self.positions.take(batch.num_rows(), &self.path)?;
            let mut by_id = HashMap::with_capacity(self.read_ids.len());
            for (id, slot) in self.read_ids.iter().zip(&self.slots) {
                let target = ctx.field(*id, &self.path)?;
                by_id.insert(*id, conform_column(&batch, *slot, &target, &self.path)?);
            }
            let mut columns: Vec<ArrayRef> = ctx.columns.iter().map(|id| by_id[id].clone()).collect();
            columns.push(Arc::new(positions));
            let mut out = RecordBatch::try_new_with_options(
                ctx.output.clone(),
                columns,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
            )
            .map_err(|e| {
                arrow_error(
                    format!("rows of {} do not fit the schema of {}", self.path, ctx.table),
                    e,
                )
            })?;
            if !self.equality.is_empty() {
                let mut keep = vec![true; out.num_rows()];
                for eq in &self.equality {
                    let key_columns: Vec<ArrayRef> =
                        eq.field_ids.iter().map(|id| by_id[id].clone()).collect();
                    for (k, deleted) in keep.iter_mut().zip(eq.deleted(&key_columns)?) {
                        *k &= !deleted;
                    }
                }
                out = filter_record_batch(&out, &BooleanArray::from(keep))
                    .map_err(|e| arrow_error(format!("cannot filter rows of {}", self.path), e))?;
            }
            if out.num_rows() > 0 {
                return Ok(Some(LiveRows {
                    data_file: self.path.clone(),
                    partition: self.partition.clone(),
                    batch: out,
                }));
            }
        }
    }
}

/// Reads the delete files of `group` and lines up its data files.
async fn load_group(ctx: &ScanContext, group: Group) -> Result<VecDeque<PendingFile>> {
    // Which data files (of this group) each position delete file applies to.
    let mut position_targets: HashMap<String, (DataFile, HashSet<String>)> = HashMap::new();
    let mut equality: HashMap<String, (DataFile, Option<Arc<EqualityDeletes>>)> = HashMap::new();
    for (data, deletes) in &group.files {
        for delete in deletes {
            match delete.content() {
                DataContentType::PositionDeletes => {
                    position_targets
                        .entry(delete.path().to_string())
                        .or_insert_with(|| (delete.file().clone(), HashSet::new()))
                        .1
                        .insert(data.path().to_string());
                }
                DataContentType::EqualityDeletes => {
                    equality
                        .entry(delete.path().to_string())
                        .or_insert_with(|| (delete.file().clone(), None));
                }
                DataContentType::Data => {}
            }
        }
    }
    let mut deleted: HashMap<String, Vec<u64>> = HashMap::new();
    for (file, targets) in position_targets.values() {
        for_each_position_delete(&ctx.stores, file, |path, pos| {
            if let Some(list) = deleted.get_mut(path) {
                list.push(pos);
            } else if targets.contains(path) {
                deleted.insert(path.to_string(), vec![pos]);
            }
        })
        .await?;
    }
    for (file, loaded) in equality.values_mut() {
        *loaded = Some(Arc::new(EqualityDeletes::load(ctx, file).await?));
    }
    let mut pending = VecDeque::with_capacity(group.files.len());
    for (data, deletes) in group.files {
        let mut positions = deleted.remove(data.path()).unwrap_or_default();
        positions.sort_unstable();
        positions.dedup();
        let equality = deletes
            .iter()
            .filter(|d| d.content() == DataContentType::EqualityDeletes)
            .filter_map(|d| equality.get(d.path()).and_then(|(_, e)| e.clone()))
            .collect();
        pending.push_back(PendingFile {
            file: data,
            deleted: positions,
            equality,
        });
    }
    Ok(pending)
}

/// The names of `table`'s columns in its current schema, in order: all the columns, as
/// [`Lake::scan_live_rows`] takes them.
pub fn column_names(table: &Table) -> Vec<String> {
    table
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

struct ScanState {
    ctx: Arc<ScanContext>,
    groups: VecDeque<Group>,
    pending: VecDeque<PendingFile>,
    open: Option<OpenFile>,
}

impl Lake {
    /// Live rows of `table`'s current snapshot: for every data file (only those in `files`
    /// when given), batches of `columns` plus an `Int64` `_pos` column with the row's position
    /// in the file, skipping rows deleted by position delete files and equality delete files.
    /// See the module doc for how columns are matched and how much is held in memory.
    pub async fn scan_live_rows(
        &self,
        table: &Table,
        columns: &[String],
        files: Option<&HashSet<String>>,
    ) -> Result<BoxStream<'static, Result<LiveRows>>> {
        let ctx = Arc::new(ScanContext::new(self, table, columns)?);
        let snapshot_files = SnapshotFiles::current(table).await?;
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<(i32, Struct), usize> = HashMap::new();
        for data in &snapshot_files.data {
            if files.is_some_and(|wanted| !wanted.contains(data.path())) {
                continue;
            }
            let deletes: Vec<FileEntry> = snapshot_files.deletes_for(data).into_iter().cloned().collect();
            let key = (data.spec_id, data.file().partition().clone());
            let index = *group_of.entry(key).or_insert_with(|| {
                groups.push(Group { files: Vec::new() });
                groups.len() - 1
            });
            groups[index].files.push((data.clone(), deletes));
        }
        let state = ScanState {
            ctx,
            groups: groups.into(),
            pending: VecDeque::new(),
            open: None,
        };
        let stream = futures::stream::try_unfold(state, |mut st| async move {
            loop {
                if let Some(open) = st.open.as_mut() {
                    if let Some(rows) = open.next(&st.ctx).await? {
                        return Ok(Some((rows, st)));
                    }
                    st.open = None;
                    continue;
                }
                if let Some(pending) = st.pending.pop_front() {
                    st.open = OpenFile::open(&st.ctx, pending).await?;
                    continue;
                }
                match st.groups.pop_front() {
                    Some(group) => st.pending = load_group(&st.ctx, group).await?,
                    None => return Ok(None),
                }
            }
        });
        Ok(stream.boxed())
    }

    /// The data and delete files that the snapshots committed after snapshot `since` (`None`:
    /// the table's first) up to `table`'s current one added or removed, with the snapshot and
    /// its operation: what a writer that planned on `since` validates its commit against. Only
    /// each snapshot's own manifests are read. `None` when `since` is not an ancestor of the
    /// current snapshot (expired, or the table was rolled back).
    pub async fn files_changed_since(
        &self,
        table: &Table,
        since: Option<i64>,
    ) -> Result<Option<Vec<ChangedFile>>> {
        let changes = crate::cache::changes_since(table, since, usize::MAX, None)
            .await
            .map_err(|e| {
                iceberg_error(
                    format!(
                        "cannot read the manifests of the snapshots of {} since {}",
                        table.identifier(),
                        since.map_or("its first".to_string(), |id| format!("snapshot {id}"))
                    ),
                    e,
                )
            })?;
        Ok(changes.map(|changes| {
            changes
                .into_iter()
                .map(|c| ChangedFile {
                    snapshot_id: c.snapshot.snapshot_id(),
                    operation: c.snapshot.summary().operation.as_str().to_string(),
                    added: c.added,
                    file: c.file,
                })
                .collect()
        }))
    }

    /// The position deletes live in `table`'s current snapshot that were committed after the
    /// snapshot with sequence number `since_sequence` and point into `files`, and the equality
    /// delete files committed after it. Delete files whose metadata shows they point elsewhere
    /// are not read.
    pub async fn deletes_since(
        &self,
        table: &Table,
        since_sequence: i64,
        files: &HashSet<String>,
    ) -> Result<DeletesSince> {
        let mut out = DeletesSince::default();
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(out);
        };
        let name = table.identifier().to_string();
        let list = table.manifest_list_reader(snapshot).load().await.map_err(|e| {
            iceberg_error(
                format!(
                    "cannot read the manifest list of snapshot {} of {name}",
                    snapshot.snapshot_id()
                ),
                e,
            )
        })?;
        // Only delete manifests written after the snapshot can hold deletes committed after it.
        let io = table.file_io().clone();
        let recent: Vec<_> = list
            .entries()
            .iter()
            .filter(|m| m.content == ManifestContentType::Deletes && m.sequence_number > since_sequence)
            .cloned()
            .collect();
        let manifests: Vec<_> = futures::stream::iter(recent)
            .map(|manifest| {
                let io = io.clone();
                let name = name.clone();
                async move {
                    manifest.load_manifest(&io).await.map_err(|e| {
                        iceberg_error(
                            format!("cannot read manifest {} of {name}", manifest.manifest_path),
                            e,
                        )
                    })
                }
            })
            .buffered(MANIFEST_CONCURRENCY)
            .try_collect()
            .await?;
        for manifest in manifests {
            for entry in manifest.entries() {
                if !entry.is_alive() || entry.sequence_number().unwrap_or(0) <= since_sequence {
                    continue;
                }
                let file = entry.data_file();
                match file.content_type() {
                    DataContentType::EqualityDeletes => out.equality_files.push(file.file_path().to_string()),
                    DataContentType::PositionDeletes => {
                        let touches = match (single_referenced_file(file), path_bounds(file)) {
                            (Some(only), _) => files.contains(&only),
                            (None, Some((lo, hi))) => files
                                .iter()
                                .any(|f| lo.as_str() <= f.as_str() && f.as_str() <= hi.as_str()),
                            (None, None) => true,
                        };
                        if !touches {
                            continue;
                        }
                        for_each_position_delete(self.stores(), file, |path, pos| {
                            if files.contains(path) {
                                out.positions.entry(path.to_string()).or_default().insert(pos);
                            }
                        })
                        .await?;
                    }
                    DataContentType::Data => {}
                }
            }
        }
        Ok(out)
    }

    /// The rows at `positions` of data file `data_file` of `table`, with `columns` (matched by
    /// field id as in [`Lake::scan_live_rows`]) and `_pos`, in position order. Deletes are not
    /// applied: the caller asks for rows it knows are live (e.g. to fill unchanged TOASTed
    /// values of an update). Only the row groups and pages holding the rows are read.
    pub async fn read_rows_at(
        &self,
        table: &Table,
        data_file: &str,
        positions: &[u64],
        columns: &[String],
    ) -> Result<RecordBatch> {
        let ctx = ScanContext::new(self, table, columns)?;
        let mut positions = positions.to_vec();
        positions.sort_unstable();
        positions.dedup();
        if positions.is_empty() {
            return Ok(RecordBatch::new_empty(ctx.output.clone()));
        }
        let builder = open_parquet(&ctx.stores, data_file, None, true).await?;
        let num_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        if let Some(&last) = positions.last()
            && last >= num_rows
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "data file {data_file} of {} has {num_rows} rows, no row at position {last}",
                    ctx.table
                ),
            ));
        }
        // The row groups holding the positions, and the selection relative to them.
        let mut row_groups = Vec::new();
        let mut selectors = Vec::new();
        let mut group_start = 0u64;
        let mut next = 0usize;
        for (index, group) in builder.metadata().row_groups().iter().enumerate() {
            let group_end = group_start + group.num_rows().max(0) as u64;
            let first = next;
            while next < positions.len() && positions[next] < group_end {
                next += 1;
            }
            if next > first {
                row_groups.push(index);
                let mut at = group_start;
                for &p in &positions[first..next] {
                    if p > at {
                        selectors.push(RowSelector::skip((p - at) as usize));
                    }
                    selectors.push(RowSelector::select(1));
                    at = p + 1;
                }
                if at < group_end {
                    selectors.push(RowSelector::skip((group_end - at) as usize));
                }
            }
            group_start = group_end;
        }
        let wanted = ctx
            .columns
            .iter()
            .map(|id| Ok((*id, ctx.field(*id, data_file)?.name().clone())))
            .collect::<Result<Vec<_>>>()?;
        let located = locate_columns(builder.schema(), &wanted);
        let (mask, slots) = projection(builder.parquet_schema(), &located);
        let mut stream = builder
            .with_projection(mask)
            .with_row_groups(row_groups)
            .with_row_selection(RowSelection::from(selectors))
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| parquet_error(format!("cannot read data file {data_file} of {}", ctx.table), e))?;
        let mut batches = Vec::new();
        let mut offset = 0usize;
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| parquet_error(format!("cannot read data file {data_file} of {}", ctx.table), e))?
        {
            let mut out = Vec::with_capacity(ctx.columns.len() + 1);
            for (id, slot) in ctx.columns.iter().zip(&slots) {
                out.push(conform_column(
                    &batch,
                    *slot,
                    ctx.field(*id, data_file)?.as_ref(),
                    data_file,
                )?);
            }
            let end = offset + batch.num_rows();
            let pos = positions.get(offset..end).ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("data file {data_file} returned more rows than asked for"),
                )
            })?;
            out.push(Arc::new(Int64Array::from_iter_values(
                pos.iter().map(|p| *p as i64),
            )));
            offset = end;
            batches.push(
                RecordBatch::try_new_with_options(
                    ctx.output.clone(),
                    out,
                    &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
                )
                .map_err(|e| {
                    arrow_error(
                        format!("rows of {data_file} do not fit the schema of {}", ctx.table),
                        e,
                    )
                })?,
            );
        }
        concat_batches(&ctx.output, &batches)
            .map_err(|e| arrow_error(format!("cannot collect rows of {data_file}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::RowDelta;
    use crate::testing::{TestLake, delete, iceberg_rows, insert, kv_batch, live_rows};
    use crate::testing_eq::equality_delete_file;

    fn many(range: std::ops::Range<i64>) -> Vec<(i64, String, String)> {
        range
            .map(|i| {
                (
                    i,
                    format!("n{i}"),
                    if i % 2 == 0 { "eu" } else { "us" }.to_string(),
                )
            })
            .collect()
    }

    fn batch_of(rows: &[(i64, String, String)]) -> RecordBatch {
        let refs: Vec<(i64, &str, &str)> = rows
            .iter()
            .map(|(i, n, r)| (*i, n.as_str(), r.as_str()))
            .collect();
        kv_batch(&refs)
    }

    #[tokio::test]
    async fn live_rows_carry_positions_and_skip_deletes() {
        let t = TestLake::new().await;
        let table = t.create("live", &[]).await;
        let rows = many(0..5000);
        let (table, mut index) = insert(&t.lake, &table, vec![batch_of(&rows[..3000])]).await;
        let (table, more) = insert(&t.lake, &table, vec![batch_of(&rows[3000..])]).await;
        index.extend(more);
        let table = delete(&t.lake, &table, &index, &[0, 7, 2999, 4000]).await;
        let batches: Vec<LiveRows> = t
            .lake
            .scan_live_rows(&table, &["name".to_string(), "id".to_string()], None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut seen = 0;
        for live in &batches {
            assert_eq!(live.batch.schema().field(0).name(), "name");
            assert_eq!(live.batch.schema().field(2).name(), POS_COLUMN);
            let ids = live
                .batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let pos = live
                .batch
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 0..live.batch.num_rows() {
                let (file, at) = &index[&ids.value(i)];
                assert_eq!(file.as_ref(), live.data_file.as_ref());
                assert_eq!(*at as i64, pos.value(i), "position of id {}", ids.value(i));
                assert!(![0, 7, 2999, 4000].contains(&ids.value(i)));
                seen += 1;
            }
        }
        assert_eq!(seen, 4996);
        // Only the files asked for.
        let only = HashSet::from([index[&4000].0.to_string()]);
        let n: usize = t
            .lake
            .scan_live_rows(&table, &[], Some(&only))
            .await
            .unwrap()
            .map_ok(|l| l.batch.num_rows())
            .try_fold(0, |a, b| async move { Ok(a + b) })
            .await
            .unwrap();
        assert_eq!(n, 1999);
        let err = t
            .lake
            .scan_live_rows(&table, &["nope".to_string()], None)
            .await
            .err()
            .unwrap();
        assert!(
            err.message().contains("nope") && err.message().contains("id, name, region"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn rows_at_positions() {
        let t = TestLake::new().await;
        let table = t.create("at", &[]).await;
        let rows = many(0..20_000);
        let (table, index) = insert(&t.lake, &table, vec![batch_of(&rows)]).await;
        let file = index[&0].0.clone();
        let batch = t
            .lake
            .read_rows_at(&table, &file, &[19_999, 5, 100, 5], &["name".to_string()])
            .await
            .unwrap();
        assert_eq!(batch.num_rows(), 3);
        let names = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let pos = batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            (0..3)
                .map(|i| (names.value(i).to_string(), pos.value(i)))
                .collect::<Vec<_>>(),
            vec![
                ("n5".to_string(), 5),
                ("n100".to_string(), 100),
                ("n19999".to_string(), 19_999)
            ]
        );
        let err = t
            .lake
            .read_rows_at(&table, &file, &[20_000], &[])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("20000"), "{err}");
        assert_eq!(
            t.lake
                .read_rows_at(&table, &file, &[], &[])
                .await
                .unwrap()
                .num_rows(),
            0
        );
    }

    #[tokio::test]
    async fn equality_deletes_apply_to_older_rows_only() {
        let t = TestLake::new().await;
        let table = t.create("eq", &[]).await;
        let (table, _) = insert(
            &t.lake,
            &table,
            vec![kv_batch(&[(1, "a", "eu"), (2, "b", "us"), (3, "c", "eu")])],
        )
        .await;
        // Delete key 2 by equality, and re-insert key 3 in the same commit: the equality
        // delete of 3 applies to the old row only (strictly lower sequence number).
        let eq = equality_delete_file(&table, &[2, 3], Struct::empty()).await;
        let (data_files, _) = crate::testing::write(&table, vec![kv_batch(&[(3, "c2", "eu")])]).await;
        let table = t
            .lake
            .commit_row_delta(
                &table,
                RowDelta {
                    data_files,
                    delete_files: vec![eq],
                    ..RowDelta::default()
                },
            )
            .await
            .unwrap();
        let want = vec!["1|a|eu".to_string(), "3|c2|eu".to_string()];
        assert_eq!(live_rows(&t.lake, &table).await, want);
        assert_eq!(iceberg_rows(&table).await, want);
    }

    #[test]
    fn kept_positions_skip_deleted_rows() {
        let mut kept = KeptPositions::new(&[0, 3, 4, 9, 12], 10);
        let selection = kept.selection(10);
        assert_eq!(selection.row_count(), 6);
        assert_eq!(kept.take(4, "f").unwrap().values().to_vec(), vec![1, 2, 5, 6]);
        assert_eq!(kept.take(2, "f").unwrap().values().to_vec(), vec![7, 8]);
        assert!(kept.take(1, "f").is_err());
        assert!(KeptPositions::new(&[0, 1], 2).is_empty());
        assert_eq!(
            KeptPositions::new(&[], 3).take(3, "f").unwrap().values().to_vec(),
            vec![0, 1, 2]
        );
    }
}
