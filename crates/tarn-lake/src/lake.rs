//! The lake: an Iceberg catalog plus the object storage its tables live on.
//!
//! The catalog is a [`CatalogBackend`] (see [`crate::catalog`]): by default the SQL catalog
//! (`iceberg-catalog-sql`, the table layout of Iceberg's JDBC catalog, so pyiceberg's
//! `SqlCatalog` and Spark's `JdbcCatalog` open the very same database), or an Iceberg REST
//! catalog, or a Hive Metastore (`catalog.kind`). A commit is a compare-and-swap of the
//! table's metadata: of two racing writers one wins, the other reloads the table, re-applies
//! its change and tries again, up to `write.commit_retries` times, then fails with a
//! commit-conflict error. Nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema as ArrowSchema;
use iceberg::io::{FileIO, FileIOBuilder};
use iceberg::spec::{DataFile, FormatVersion, Schema, TableMetadata, TableProperties};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, NamespaceIdent, Runtime, TableCreation, TableIdent};
use tarn_core::{Config, Error, ErrorKind, Result};

use crate::cache::{DataFiles, TableCache};
use crate::catalog::{CatalogBackend, CatalogKind, MetadataSwap};
use crate::layout::{self, PartitionField, SortKey};
use crate::storage::{ObjectStoreStorageFactory, ObjectStores, s3_properties};

/// What a new table looks like besides its columns.
#[derive(Debug, Clone, Default)]
pub struct TableLayout {
    /// Partition fields, in order.
    pub partition: Vec<PartitionField>,
    /// Sort order of written data.
    pub sort: Vec<SortKey>,
    /// Extra table properties.
    pub properties: HashMap<String, String>,
}

/// The catalog and storage of one tarn installation.
#[derive(Debug, Clone)]
pub struct Lake {
    /// The catalog: where tables' metadata is, and how commits land (see [`crate::catalog`]).
    backend: Arc<dyn CatalogBackend>,
    stores: ObjectStores,
    /// The same file access the catalog has, for reading tables' metadata files.
    file_io: FileIO,
    /// Tables as last loaded; see [`crate::cache`].
    tables: Arc<TableCache>,
    name: String,
    warehouse: String,
    target_file_size: u64,
    compression: String,
    commit_retries: u32,
}

/// Maps an `iceberg` error to tarn's, naming `what` was being done.
pub fn iceberg_error(what: impl std::fmt::Display, e: iceberg::Error) -> Error {
    use iceberg::ErrorKind as K;
    let kind = match e.kind() {
        K::TableNotFound | K::NamespaceNotFound => ErrorKind::NotFound,
        K::TableAlreadyExists | K::NamespaceAlreadyExists => ErrorKind::AlreadyExists,
        K::CatalogCommitConflicts => ErrorKind::CommitConflict,
        K::DataInvalid | K::FeatureUnsupported | K::PreconditionFailed => ErrorKind::InvalidInput,
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("{what}: {}", e.message())).with_source(e)
}

/// Parses `ns.table` (or `a.b.table` for nested namespaces) into an identifier.
pub fn parse_table_name(name: &str) -> Result<TableIdent> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("invalid table name {name:?}: expected NAMESPACE.TABLE"),
        ));
    }
    let (table, ns) = parts.split_last().expect("two parts at least");
    let ns = NamespaceIdent::from_strs(ns.iter().copied())
        .map_err(|e| iceberg_error(format!("invalid namespace in {name:?}"), e))?;
    Ok(TableIdent::new(ns, table.to_string()))
}

impl Lake {
    /// Opens (creating on first use) the catalog and warehouse that `config` names.
    pub async fn open(config: &Config) -> Result<Self> {
        let warehouse = config.warehouse_url();
        if let Some(dir) = crate::storage::local_path(&warehouse) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(ErrorKind::Storage, "cannot create the warehouse directory")
                    .with_context("dir", dir)
                    .with_source(e)
            })?;
        }
        let props = s3_properties(&config.storage.s3);
        let stores = ObjectStores::new(props.clone());
        let file_io = FileIOBuilder::new(Arc::new(ObjectStoreStorageFactory))
            .with_props(props.clone())
            .build();
        let backend: Arc<dyn CatalogBackend> = match config.catalog.kind {
            CatalogKind::Sql => {
                Arc::new(crate::catalog::sql::SqlBackend::open(config, &warehouse, props).await?)
            }
            CatalogKind::Rest => Arc::new(crate::catalog::rest::RestBackend::open(config, props).await?),
            #[cfg(feature = "hms")]
            CatalogKind::Hms => {
                Arc::new(crate::catalog::hms::HmsBackend::open(config, &warehouse, props).await?)
            }
            #[cfg(not(feature = "hms"))]
            CatalogKind::Hms => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "catalog.kind = \"hms\": this tarn was built without the `hms` feature",
                ));
            }
        };
        Ok(Self {
            backend,
            stores,
            file_io,
            tables: Arc::default(),
            name: config.catalog.name.clone(),
            warehouse,
            target_file_size: config.write.target_file_size,
            compression: config.write.compression.clone(),
            commit_retries: config.write.commit_retries,
        })
    }

    /// The catalog, for engines that take an `iceberg::Catalog`.
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        self.backend.catalog()
    }

    /// Which kind of catalog holds the tables.
    pub fn catalog_kind(&self) -> CatalogKind {
        self.backend.kind()
    }

    /// The catalog backend, for tarn's own commits (see [`crate::commit`]).
    pub(crate) fn backend(&self) -> &dyn CatalogBackend {
        self.backend.as_ref()
    }

    /// File access with the catalog's storage settings: how metadata files of tables not
    /// yet in the catalog (a staged create) are written.
    pub fn file_io(&self) -> &FileIO {
        &self.file_io
    }

    /// The object stores table files live on.
    pub fn stores(&self) -> &ObjectStores {
        &self.stores
    }

    /// The catalog name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The warehouse root URL.
    pub fn warehouse(&self) -> &str {
        &self.warehouse
    }

    /// Target data file size in bytes.
    pub fn target_file_size(&self) -> u64 {
        self.target_file_size
    }

    /// Parquet compression codec name.
    pub fn compression(&self) -> &str {
        &self.compression
    }

    /// Top-level namespaces, sorted.
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceIdent>> {
        let mut all = self
            .catalog()
            .list_namespaces(None)
            .await
            .map_err(|e| iceberg_error("cannot list namespaces", e))?;
        all.sort_by_key(|n| n.join("."));
        Ok(all)
    }

    /// Whether namespace `ns` exists.
    pub async fn namespace_exists(&self, ns: &NamespaceIdent) -> Result<bool> {
        self.catalog()
            .namespace_exists(ns)
            .await
            .map_err(|e| iceberg_error(format!("cannot look up namespace {}", ns.join(".")), e))
    }

    /// Creates namespace `ns`; with `if_not_exists`, an existing one is fine.
    pub async fn create_namespace(&self, ns: &NamespaceIdent, if_not_exists: bool) -> Result<()> {
        if self.namespace_exists(ns).await? {
            if if_not_exists {
                return Ok(());
            }
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("schema {} already exists", ns.join(".")),
            ));
        }
        match self.catalog().create_namespace(ns, HashMap::new()).await {
            Ok(_) => Ok(()),
            // Lost a race with another creator.
            Err(e) if if_not_exists && e.kind() == iceberg::ErrorKind::NamespaceAlreadyExists => Ok(()),
            // The SQL catalog reports a lost race as a unique-constraint violation of
            // `iceberg_namespace_properties` (two processes starting on a new catalog): it
            // exists now, which is all `if_not_exists` asks.
            Err(_) if if_not_exists && self.namespace_exists(ns).await.unwrap_or(false) => Ok(()),
            Err(e) => Err(iceberg_error(format!("cannot create schema {}", ns.join(".")), e)),
        }
    }

    /// Drops an empty namespace.
    pub async fn drop_namespace(&self, ns: &NamespaceIdent, if_exists: bool) -> Result<()> {
        if !self.namespace_exists(ns).await? {
            if if_exists {
                return Ok(());
            }
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("schema {} does not exist", ns.join(".")),
            ));
        }
        let tables = self.list_tables(ns).await?;
        if !tables.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "schema {} is not empty: it has {} table(s); drop them first",
                    ns.join("."),
                    tables.len()
                ),
            ));
        }
        self.catalog()
            .drop_namespace(ns)
            .await
            .map_err(|e| iceberg_error(format!("cannot drop schema {}", ns.join(".")), e))
    }

    /// Tables of namespace `ns`, sorted by name.
    pub async fn list_tables(&self, ns: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        let mut tables = self
            .catalog()
            .list_tables(ns)
            .await
            .map_err(|e| iceberg_error(format!("cannot list tables of {}", ns.join(".")), e))?;
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(tables)
    }

    /// Every table of every namespace.
    pub async fn list_all_tables(&self) -> Result<Vec<TableIdent>> {
        let mut all = Vec::new();
        for ns in self.list_namespaces().await? {
            all.extend(self.list_tables(&ns).await?);
        }
        Ok(all)
    }

    /// Whether `ident` exists.
    pub async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        self.catalog()
            .table_exists(ident)
            .await
            .map_err(|e| iceberg_error(format!("cannot look up table {ident}"), e))
    }

    /// Loads the current metadata of `ident`.
    pub async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let current = self.backend.current_metadata(ident).await?;
        let location = current.location;
        if let Some(table) = self.tables.get(ident, &location) {
            return Ok(table);
        }
        let metadata = match current.metadata {
            Some(metadata) => metadata,
            None => TableMetadata::read_from(&self.file_io, &location)
                .await
                .map_err(|e| iceberg_error(format!("cannot load table {ident} from {location}"), e))?,
        };
        self.open_table(ident, location, metadata)
    }

    /// `ident` with `metadata`, read from or just written to `location`; kept as the table's
    /// latest, so the next load finds it without reading the metadata file (again).
    pub fn open_table(&self, ident: &TableIdent, location: String, metadata: TableMetadata) -> Result<Table> {
        let table = Table::builder()
            .file_io(self.file_io.clone())
            .identifier(ident.clone())
            .metadata_location(location)
            .metadata(metadata)
            .runtime(Runtime::try_current().map_err(|e| iceberg_error("no async runtime", e))?)
            .build()
            .map_err(|e| iceberg_error(format!("cannot open table {ident}"), e))?;
        self.remember(&table);
        Ok(table)
    }

    /// Keeps a table this process just committed, so the next load finds it without reading
    /// its metadata file back.
    pub(crate) fn remember(&self, table: &Table) {
        self.tables.put(table);
    }

    /// The data files of `table`'s current snapshot by path, with the column statistics of
    /// their manifest entries; read once per snapshot of a loaded table.
    pub async fn current_data_files(&self, table: &Table) -> Result<DataFiles> {
        self.tables
            .data_files(table)
            .await
            .map_err(|e| iceberg_error(format!("cannot read the manifests of {}", table.identifier()), e))
    }

    /// Every live data file and delete file of `table`'s current snapshot, read from its
    /// manifests.
    pub async fn live_files(table: &Table) -> Result<(Vec<DataFile>, Vec<DataFile>)> {
        let metadata = table.metadata();
        let Some(snapshot) = metadata.current_snapshot() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let ice = |e| iceberg_error(format!("cannot read the manifests of {}", table.identifier()), e);
        let list = table.manifest_list_reader(snapshot).load().await.map_err(ice)?;
        let (mut data, mut deletes) = (Vec::new(), Vec::new());
        for manifest_file in list.entries() {
            let manifest = manifest_file.load_manifest(table.file_io()).await.map_err(ice)?;
            for entry in manifest.entries() {
                if !entry.is_alive() {
                    continue;
                }
                let file = entry.data_file().clone();
                if file.content_type() == iceberg::spec::DataContentType::Data {
                    data.push(file);
                } else {
                    deletes.push(file);
                }
            }
        }
        Ok((data, deletes))
    }

    /// The data files of `table`'s current snapshot if this process has them already.
    pub(crate) fn known_data_files(&self, table: &Table) -> Option<DataFiles> {
        self.tables.known_data_files(table)
    }

    /// Records the data files of `table`'s current snapshot, which the commit that made it
    /// derived from its parent's; see [`crate::cache`].
    pub(crate) fn seed_data_files(&self, table: &Table, files: DataFiles) {
        self.tables.seed_data_files(table, files);
    }

    /// Creates a format-v2 table with `schema` and `layout`. Nullable Arrow fields become
    /// optional Iceberg fields, non-nullable ones required.
    pub async fn create_table(
        &self,
        ident: &TableIdent,
        schema: &ArrowSchema,
        layout: &TableLayout,
    ) -> Result<Table> {
        let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(schema)
            .map_err(|e| iceberg_error(format!("cannot map the columns of {ident} to Iceberg types"), e))?;
        self.create_table_with_schema(ident, schema, layout).await
    }

    /// Creates a format-v2 table with an Iceberg `schema`, keeping its identifier fields (the
    /// primary key of a CDC table; see [`iceberg_schema_with_keys`]). As for every new Iceberg
    /// table, the catalog assigns fresh field ids in schema order; the identifier fields follow
    /// their columns. Read the ids back from the returned table.
    pub async fn create_table_with_schema(
        &self,
        ident: &TableIdent,
        schema: Schema,
        layout: &TableLayout,
    ) -> Result<Table> {
        let spec = layout::partition_spec(&schema, &layout.partition)?;
        let sort = layout::sort_order(&schema, &layout.sort)?;
        let mut properties = HashMap::from([
            (
                TableProperties::PROPERTY_WRITE_TARGET_FILE_SIZE_BYTES.to_string(),
                self.target_file_size.to_string(),
            ),
            (
                "write.parquet.compression-codec".to_string(),
                self.compression.clone(),
            ),
            (
                TableProperties::PROPERTY_COMMIT_NUM_RETRIES.to_string(),
                self.commit_retries.to_string(),
            ),
            (
                TableProperties::PROPERTY_COMMIT_MIN_RETRY_WAIT_MS.to_string(),
                "10".to_string(),
            ),
            (
                TableProperties::PROPERTY_COMMIT_MAX_RETRY_WAIT_MS.to_string(),
                "1000".to_string(),
            ),
        ]);
        properties.extend(layout.properties.clone());
        // A metastore names a database's location the Hadoop way (`file:/dir`); the table's
        // own location keeps the warehouse's form.
        let location = (self.catalog_kind() == CatalogKind::Hms).then(|| {
            format!(
                "{}/{}.db/{}",
                self.warehouse,
                ident.namespace().join("."),
                ident.name()
            )
        });
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .location_opt(location)
            .schema(schema)
            .partition_spec(spec)
            .sort_order(sort)
            .properties(properties)
            .format_version(FormatVersion::V2)
            .build();
        if !self.namespace_exists(ident.namespace()).await? {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "schema {} does not exist (create it with CREATE SCHEMA {})",
                    ident.namespace().join("."),
                    ident.namespace().join(".")
                ),
            ));
        }
        self.catalog()
            .create_table(ident.namespace(), creation)
            .await
            .map_err(|e| {
                if e.kind() == iceberg::ErrorKind::TableAlreadyExists {
                    Error::new(ErrorKind::AlreadyExists, format!("table {ident} already exists"))
                } else {
                    iceberg_error(format!("cannot create table {ident}"), e)
                }
            })
    }

    /// Drops `ident` from the catalog; with `purge`, deletes its files too.
    pub async fn drop_table(&self, ident: &TableIdent, purge: bool) -> Result<()> {
        // The table's own file IO carries the storage settings (S3 endpoint, credentials).
        let purge_target = if purge {
            let table = self.load_table(ident).await?;
            Some((table.metadata().location().to_string(), table.file_io().clone()))
        } else {
            None
        };
        self.catalog().drop_table(ident).await.map_err(|e| {
            if e.kind() == iceberg::ErrorKind::TableNotFound {
                Error::new(ErrorKind::NotFound, format!("table {ident} does not exist"))
            } else {
                iceberg_error(format!("cannot drop table {ident}"), e)
            }
        })?;
        if let Some((location, io)) = purge_target {
            // Files of a dropped table are garbage: failing to delete them loses nothing.
            if let Err(e) = io.delete_prefix(&location).await {
                tracing::warn!(table = %ident, %location, error = %e, "cannot delete files of dropped table");
            }
        }
        Ok(())
    }

    /// Commits `files` to `ident` as one append snapshot with `summary` properties, retrying
    /// on commit conflicts. Returns the table as committed.
    ///
    /// Through the `iceberg` crate's fast append and the catalog's own commit; a Hive
    /// Metastore's catalog crate cannot commit, so there it is tarn's own row delta.
    #[tracing::instrument(name = "commit", skip_all, fields(table = %ident, files = files.len()))]
    pub async fn append(
        &self,
        ident: &TableIdent,
        files: Vec<DataFile>,
        summary: HashMap<String, String>,
    ) -> Result<Table> {
        if self.catalog_kind() == CatalogKind::Hms {
            let table = self.load_table(ident).await?;
            let delta = crate::RowDelta {
                data_files: files,
                summary,
                ..crate::RowDelta::default()
            };
            return self.commit_row_delta(&table, delta).await;
        }
        let mut attempt = 0u32;
        loop {
            let table = self.load_table(ident).await?;
            let tx = Transaction::new(&table);
            let action = tx
                .fast_append()
                .add_data_files(files.clone())
                .set_snapshot_properties(summary.clone());
            let tx = action
                .apply(tx)
                .map_err(|e| iceberg_error(format!("cannot append to {ident}"), e))?;
            match tx.commit(self.catalog().as_ref()).await {
                Ok(table) => {
                    self.remember(&table);
                    metrics::counter!("tarn_commits_total", "table" => ident.to_string()).increment(1);
                    // The table's conflict counter exists (at 0) from its first commit, so an alert on
                    // its increase sees the first conflict too.
                    metrics::counter!("tarn_commit_conflicts_total", "table" => ident.to_string())
                        .increment(0);
                    return Ok(table);
                }
                Err(e)
                    if e.kind() == iceberg::ErrorKind::CatalogCommitConflicts
                        && attempt < self.commit_retries =>
                {
                    attempt += 1;
                    metrics::counter!("tarn_commit_conflicts_total", "table" => ident.to_string())
                        .increment(1);
                    let backoff = Duration::from_millis(10 * u64::from(attempt.min(20)));
                    tracing::debug!(table = %ident, attempt, "commit conflict, retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    return Err(iceberg_error(
                        format!("cannot commit to {ident} after {attempt} retries"),
                        e,
                    ));
                }
            }
        }
    }
}

/// The Iceberg schema for Arrow `schema` with `key_columns` as its identifier fields (the
/// row identity Iceberg engines use for upserts; tarn's CDC tables use the source's primary
/// key). Key columns become required; field ids are assigned in column order.
pub fn iceberg_schema_with_keys(schema: &ArrowSchema, key_columns: &[&str]) -> Result<Schema> {
    let mut fields: Vec<arrow_schema::FieldRef> = schema.fields().iter().cloned().collect();
    for key in key_columns {
        let Some(i) = fields.iter().position(|f| f.name() == key) else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("key column {key:?} is not among the columns"),
            ));
        };
        fields[i] = Arc::new(fields[i].as_ref().clone().with_nullable(false));
    }
    let arrow = ArrowSchema::new_with_metadata(fields, schema.metadata().clone());
    let base = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow)
        .map_err(|e| iceberg_error("cannot map the columns to Iceberg types", e))?;
    let ids = key_columns
        .iter()
        .map(|k| base.field_by_name(k).map(|f| f.id).expect("checked above"))
        .collect::<Vec<_>>();
    base.into_builder()
        .with_identifier_field_ids(ids)
        .build()
        .map_err(|e| iceberg_error("invalid key columns", e))
}

impl Lake {
    /// `write.commit_retries`: how often a commit that lost a race is re-applied.
    pub(crate) fn commit_retries(&self) -> u32 {
        self.commit_retries
    }

    /// The metadata location the catalog holds for `ident` right now.
    pub async fn current_metadata_location(&self, ident: &TableIdent) -> Result<String> {
        Ok(self.backend.current_metadata(ident).await?.location)
    }

    /// Swaps the metadata locations of several tables in one catalog transaction: either every
    /// table still held its `expected` location (or did not exist, for `None`) and all now point
    /// at their new files, or nothing changed and the result is `Ok(false)`. The same
    /// conditional `UPDATE` as every other commit, so engines committing through the SQL
    /// catalog directly exclude these swaps as they exclude each other.
    ///
    /// Atomicity is the catalog database's: one SQLite or PostgreSQL transaction. Only the SQL
    /// catalog can (a REST catalog or a metastore commits updates, not locations).
    #[tracing::instrument(name = "commit", skip_all, fields(tables = swaps.len()))]
    pub async fn swap_metadata_locations(&self, swaps: &[MetadataSwap]) -> Result<bool> {
        let swapped = self.backend.swap_metadata_locations(swaps).await?;
        if swapped {
            for swap in swaps {
                metrics::counter!("tarn_commits_total", "table" => swap.ident.to_string()).increment(1);
                // The table's conflict counter exists (at 0) from its first commit, so an alert on
                // its increase sees the first conflict too.
                metrics::counter!("tarn_commit_conflicts_total", "table" => swap.ident.to_string())
                    .increment(0);
            }
        }
        Ok(swapped)
    }

    /// Removes the properties `keys` of namespace `ns`; returns those it had. The `exists`
    /// marker row the JDBC catalog layout keeps for every namespace stays: without it an empty
    /// namespace would vanish.
    pub async fn remove_namespace_properties(
        &self,
        ns: &NamespaceIdent,
        keys: &[String],
    ) -> Result<Vec<String>> {
        self.backend.remove_namespace_properties(ns, keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lake_is_shareable() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Lake>();
    }

    /// [`Lake::swap_metadata_locations`] on `lake`, whose namespace `t` has tables `a` and `b`.
    async fn check_swaps_are_all_or_nothing(lake: &Lake) {
        let (a, b) = (crate::testing::ident("a"), crate::testing::ident("b"));
        let a0 = lake.current_metadata_location(&a).await.unwrap();
        let b0 = lake.current_metadata_location(&b).await.unwrap();
        let swap = |ident: &TableIdent, expected: Option<&str>, new: &str| MetadataSwap {
            ident: ident.clone(),
            expected: expected.map(str::to_string),
            new_location: new.to_string(),
        };
        // b no longer holds what the swap expects: neither table moves.
        let stale = [swap(&a, Some(&a0), "a1"), swap(&b, Some("elsewhere"), "b1")];
        assert!(!lake.swap_metadata_locations(&stale).await.unwrap());
        assert_eq!(lake.current_metadata_location(&a).await.unwrap(), a0);
        // Creating a table that exists fails the whole swap too.
        let exists = [swap(&a, Some(&a0), "a1"), swap(&b, None, "b1")];
        assert!(!lake.swap_metadata_locations(&exists).await.unwrap());
        assert_eq!(lake.current_metadata_location(&a).await.unwrap(), a0);
        let c = crate::testing::ident("c");
        let good = [
            swap(&a, Some(&a0), "a1"),
            swap(&b, Some(&b0), "b1"),
            swap(&c, None, "c0"),
        ];
        assert!(lake.swap_metadata_locations(&good).await.unwrap());
        for (ident, location) in [(&a, "a1"), (&b, "b1"), (&c, "c0")] {
            assert_eq!(lake.current_metadata_location(ident).await.unwrap(), location);
        }
    }

    #[tokio::test]
    async fn swaps_of_several_tables_are_all_or_nothing() {
        let t = crate::testing::TestLake::new().await;
        t.create("a", &[]).await;
        t.create("b", &[]).await;
        check_swaps_are_all_or_nothing(&t.lake).await;
    }

    #[tokio::test]
    async fn swaps_of_several_tables_are_all_or_nothing_on_postgres() {
        let pg = tarn_test_utils::start_postgres().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.catalog.url = Some(pg.url("postgres"));
        let lake = Lake::open(&config).await.unwrap();
        lake.create_namespace(&NamespaceIdent::new("t".into()), true)
            .await
            .unwrap();
        for name in ["a", "b"] {
            lake.create_table(
                &crate::testing::ident(name),
                &crate::testing::kv_schema(),
                &TableLayout::default(),
            )
            .await
            .unwrap();
        }
        check_swaps_are_all_or_nothing(&lake).await;
    }

    #[tokio::test]
    async fn namespace_properties_are_removed_but_not_the_marker() {
        let t = crate::testing::TestLake::new().await;
        let ns = NamespaceIdent::new("p".into());
        t.lake
            .catalog()
            .create_namespace(&ns, HashMap::from([("owner".to_string(), "me".to_string())]))
            .await
            .unwrap();
        let keys = ["owner".to_string(), "exists".to_string(), "nope".to_string()];
        let removed = t.lake.remove_namespace_properties(&ns, &keys).await.unwrap();
        assert_eq!(removed, ["owner"]);
        assert!(t.lake.namespace_exists(&ns).await.unwrap());
    }

    #[test]
    fn table_names() {
        let t = parse_table_name("sales.orders").unwrap();
        assert_eq!(t.name(), "orders");
        assert_eq!(t.namespace().join("."), "sales");
        assert!(parse_table_name("orders").is_err());
        assert!(parse_table_name("a..b").is_err());
    }
}
