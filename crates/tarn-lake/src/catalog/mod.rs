//! The catalog behind a [`crate::Lake`]: where each table's current metadata is, and the atomic
//! switch to new metadata that every commit ends with.
//!
//! [`CatalogBackend`] is the seam. Everything but commits goes through the `iceberg` crate's
//! [`Catalog`] of the backend (namespaces, create, list, drop); tarn's own commits
//! ([`crate::commit`]) build the new [`TableMetadata`] themselves and hand it to
//! [`CatalogBackend::commit`], which lands it or reports that another writer won:
//!
//! - [`sql::SqlBackend`] (`catalog.kind = "sql"`): `iceberg-catalog-sql` plus tarn's own
//!   connection pool. A commit writes the next metadata file and swaps the table's row with a
//!   conditional `UPDATE ... WHERE metadata_location = <the one read>` (the JDBC catalog's
//!   compare-and-swap), so tarn and other engines on the same database exclude each other.
//! - [`rest::RestBackend`] (`catalog.kind = "rest"`): `iceberg-catalog-rest` for the catalog
//!   calls; a commit is the REST `POST .../tables/{table}` with the metadata changes as updates
//!   and requirements (`assert-table-uuid`, `assert-ref-snapshot-id`,
//!   `assert-current-schema-id`, ...) standing for "the table is still as read"; the catalog
//!   writes the metadata file. A 409 is a lost race.
//! - `hms::HmsBackend` (`catalog.kind = "hms"`, feature `hms`): `iceberg-catalog-hms` for the
//!   catalog calls; a commit writes the metadata file and moves the table's `metadata_location`
//!   parameter under a metastore table lock, as Iceberg's Java `HiveCatalog` does.
//!
//! Contract of [`CatalogBackend::commit`]: `Committed` means the catalog now points at the new
//! metadata; `Conflict` means it did not change and no file written for the attempt is
//! referenced (the caller deletes them, re-reads the table, re-validates and re-applies its
//! change); an error means the outcome may be unknown (a REST 5xx, a dropped connection), so
//! the caller keeps the files and fails.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::spec::{MAIN_BRANCH, TableMetadata};
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableIdent, TableRequirement, TableUpdate};
use tarn_core::Result;

#[cfg(feature = "hms")]
pub(crate) mod hms;
pub(crate) mod rest;
pub(crate) mod sql;

pub use tarn_core::config::CatalogKind;

/// Where a table's metadata is now.
#[derive(Debug, Clone)]
pub struct CurrentMetadata {
    /// The metadata file the catalog points at.
    pub location: String,
    /// The metadata itself when the catalog sent it along (a REST `loadTable`); else the
    /// caller reads it from `location` (or knows it already).
    pub metadata: Option<TableMetadata>,
}

/// What a commit asks the catalog to apply to one table.
#[derive(Debug)]
pub struct MetadataCommit<'a> {
    /// The table as read: the commit lands only if the catalog still holds it.
    pub current: &'a Table,
    /// The table's new metadata, built from `current`'s with `updates`.
    pub metadata: TableMetadata,
    /// The changes from `current`'s metadata to `metadata`, as the REST protocol sends them.
    pub updates: Vec<TableUpdate>,
    /// What must still hold of the table for the change to apply (REST requirements); SQL and
    /// HMS check the stronger "the metadata location is still `current`'s".
    pub requirements: Vec<TableRequirement>,
}

/// What became of a [`MetadataCommit`].
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per commit, moved once
pub enum CommitOutcome {
    /// The catalog now points at `location`, holding `metadata`.
    Committed {
        /// The new metadata file.
        location: String,
        /// The table's metadata as committed (a REST catalog may have added to it).
        metadata: TableMetadata,
    },
    /// Another writer changed the table first; nothing changed.
    Conflict,
}

/// One table's catalog pointer change in [`crate::Lake::swap_metadata_locations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataSwap {
    /// The table.
    pub ident: TableIdent,
    /// The metadata location the catalog must still hold; `None`: the table must not exist
    /// yet, and the swap inserts its catalog row (the commit of a staged create).
    pub expected: Option<String>,
    /// The metadata file to point the table at.
    pub new_location: String,
}

/// A catalog tarn keeps its tables in; see the module doc for the contract.
#[async_trait]
pub trait CatalogBackend: Debug + Send + Sync {
    /// Which kind of catalog this is.
    fn kind(&self) -> CatalogKind;

    /// The catalog for everything but commits: namespaces, create, list, load, drop.
    fn catalog(&self) -> Arc<dyn Catalog>;

    /// Where `ident`'s metadata is now; a [`tarn_core::ErrorKind::NotFound`] error when the
    /// table does not exist.
    async fn current_metadata(&self, ident: &TableIdent) -> Result<CurrentMetadata>;

    /// Lands `commit` or reports a lost race. `written` collects files the attempt wrote (a
    /// metadata file) so that the caller deletes them on a conflict.
    async fn commit(&self, commit: MetadataCommit<'_>, written: &mut Vec<String>) -> Result<CommitOutcome>;

    /// Swaps the metadata locations of several tables at once, or none; `Ok(false)` when one
    /// of them no longer held its expected location. What `tarn serve`'s REST catalog commits
    /// with; only the SQL catalog can.
    async fn swap_metadata_locations(&self, swaps: &[MetadataSwap]) -> Result<bool>;

    /// Removes the properties `keys` of namespace `ns`; returns those it had.
    async fn remove_namespace_properties(&self, ns: &NamespaceIdent, keys: &[String]) -> Result<Vec<String>>;
}

/// The requirements that stand for "the table is as `current` was" for a commit that adds a
/// snapshot to `main`: same table, same `main` head, same schema and partition spec (the files
/// were written with them).
pub fn snapshot_requirements(current: &TableMetadata) -> Vec<TableRequirement> {
    vec![
        TableRequirement::UuidMatch { uuid: current.uuid() },
        TableRequirement::RefSnapshotIdMatch {
            r#ref: MAIN_BRANCH.to_string(),
            snapshot_id: current.current_snapshot_id(),
        },
        TableRequirement::CurrentSchemaIdMatch {
            current_schema_id: current.current_schema_id(),
        },
        TableRequirement::DefaultSpecIdMatch {
            default_spec_id: current.default_partition_spec_id(),
        },
    ]
}

/// The requirements of a schema change planned on `current`'s schema.
pub fn schema_requirements(current: &TableMetadata) -> Vec<TableRequirement> {
    vec![
        TableRequirement::UuidMatch { uuid: current.uuid() },
        TableRequirement::CurrentSchemaIdMatch {
            current_schema_id: current.current_schema_id(),
        },
        TableRequirement::LastAssignedFieldIdMatch {
            last_assigned_field_id: current.last_column_id(),
        },
    ]
}

/// Deletes the files a lost commit attempt on `table` wrote (nothing references them); a file
/// that cannot be deleted is logged and left for orphan removal.
pub(crate) async fn delete_lost_files(table: &Table, paths: impl IntoIterator<Item = String>) {
    for path in paths {
        if let Err(e) = table.file_io().delete(&path).await {
            tracing::warn!(table = %table.identifier(), file = %path, error = %e, "cannot delete file of a lost commit");
        }
    }
}

/// The requirements of a property change: only that it is still the same table.
pub fn table_requirements(current: &TableMetadata) -> Vec<TableRequirement> {
    vec![TableRequirement::UuidMatch { uuid: current.uuid() }]
}

/// Catalog properties every backend's file access gets: tarn's storage settings.
pub(crate) type StorageProps = HashMap<String, String>;
