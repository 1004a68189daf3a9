//! The SQL catalog (`catalog.kind = "sql"`, the default): `iceberg-catalog-sql`'s `SqlCatalog`
//! on the table layout of Iceberg's JDBC catalog (`iceberg_tables`,
//! `iceberg_namespace_properties`), so pyiceberg's `SqlCatalog` and Spark's `JdbcCatalog` open
//! the very same database. SQLite by default, PostgreSQL when `catalog.url` is a `postgres://`
//! URL.
//!
//! Besides the catalog, the backend holds its own small connection pool to the catalog
//! database: tarn's commits swap `metadata_location` through it with the same conditional
//! `UPDATE ... WHERE metadata_location = <the one read>` the catalog commits with, so tarn's
//! commits and those of other engines on the same catalog exclude each other.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iceberg::{Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tarn_core::{Config, Error, ErrorKind, Result};

use super::{
    CatalogBackend, CatalogKind, CommitOutcome, CurrentMetadata, MetadataCommit, MetadataSwap, StorageProps,
};
use crate::lake::iceberg_error;
use crate::storage::ObjectStoreStorageFactory;

/// How long opening the catalog database may take before tarn gives up with an error.
const CATALOG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The catalog row of a table, for tarn's own compare-and-swap commits.
const CATALOG_WHERE: &str = "catalog_name = ? AND table_namespace = ? AND table_name = ? \
     AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)";

/// A catalog in a SQL database; see the module doc.
#[derive(Debug)]
pub(crate) struct SqlBackend {
    catalog: Arc<SqlCatalog>,
    /// tarn's own connection pool to the catalog database, for the compare-and-swap commits.
    pool: AnyPool,
    /// PostgreSQL binds `$1, $2, ...`; SQLite `?`.
    dollar_binds: bool,
    /// The catalog name (the `catalog_name` column).
    name: String,
}

impl SqlBackend {
    /// Opens (creating on first use) the catalog database `config` names.
    pub(crate) async fn open(config: &Config, warehouse: &str, props: StorageProps) -> Result<Self> {
        let url = config.catalog_url();
        let (uri, bind_style) = if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Error::new(ErrorKind::Catalog, "cannot create the catalog directory")
                        .with_context("dir", parent.display())
                        .with_source(e)
                })?;
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            (format!("sqlite://{path}{sep}mode=rwc"), SqlBindStyle::QMark)
        } else {
            (url.clone(), SqlBindStyle::DollarNumeric)
        };
        let mut props = props;
        props.insert(
            "pool.max-connections".into(),
            config.catalog.max_connections.to_string(),
        );
        let timed_out = || {
            Error::new(ErrorKind::Catalog, "timed out connecting to the catalog database")
                .with_context("catalog.url", tarn_core::config::redact_url(&url))
        };
        let cannot_open = || {
            Error::new(ErrorKind::Catalog, "cannot open the catalog database")
                .with_context("catalog.url", tarn_core::config::redact_url(&url))
        };
        let dollar_binds = bind_style == SqlBindStyle::DollarNumeric;
        let catalog = tokio::time::timeout(
            CATALOG_CONNECT_TIMEOUT,
            SqlCatalogBuilder::default()
                .uri(uri.clone())
                .warehouse_location(warehouse.to_string())
                .sql_bind_style(bind_style)
                .props(props)
                .with_storage_factory(Arc::new(ObjectStoreStorageFactory))
                .load(config.catalog.name.clone(), HashMap::new()),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| cannot_open().with_source(e))?;
        // The catalog above installed sqlx's `Any` drivers and created the catalog tables.
        sqlx::any::install_default_drivers();
        let pool = tokio::time::timeout(
            CATALOG_CONNECT_TIMEOUT,
            AnyPoolOptions::new()
                .max_connections(config.catalog.max_connections.clamp(1, 4))
                .idle_timeout(Duration::from_secs(30))
                .connect(&uri),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| cannot_open().with_source(e))?;
        if !dollar_binds {
            // SQLite: write-ahead logging, so readers (every table load looks the catalog row
            // up) never block a commit's swap and concurrent committers wait their turn instead
            // of failing with "database is locked" (in the default rollback-journal mode a
            // writer waits for all readers to finish, and under a few concurrent writers the
            // busy timeout runs out). The mode is kept in the file; other engines opening the
            // catalog (pyiceberg, Spark's JDBC catalog) work with it on the same machine.
            if let Err(e) = sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await {
                tracing::warn!(error = %e, "cannot switch the SQLite catalog to write-ahead logging; concurrent commits may fail with \"database is locked\"");
            }
        }
        Ok(Self {
            catalog: Arc::new(catalog),
            pool,
            dollar_binds,
            name: config.catalog.name.clone(),
        })
    }

    /// `query` with `?` placeholders in the catalog database's bind style.
    fn sql(&self, query: &str) -> String {
        if !self.dollar_binds {
            return query.to_string();
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Points `ident` at `new_location` if the catalog still holds `expected`: the same
    /// conditional `UPDATE` the SQL catalog commits with. `Ok(false)`: another writer won.
    async fn swap_metadata_location(
        &self,
        ident: &TableIdent,
        expected: &str,
        new_location: &str,
    ) -> Result<bool> {
        let query = self.sql(&format!(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE {CATALOG_WHERE} AND metadata_location = ?"
        ));
        let result = sqlx::query(&query)
            .bind(new_location.to_string())
            .bind(expected.to_string())
            .bind(self.name.clone())
            .bind(ident.namespace().join("."))
            .bind(ident.name().to_string())
            .bind(expected.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Catalog, format!("cannot commit to table {ident}"))
                    .with_context("metadata", new_location)
                    .with_source(e)
            })?;
        Ok(result.rows_affected() == 1)
    }
}

/// The next metadata file of a table whose metadata is at `current_location`:
/// `<location>/metadata/<version + 1>-<uuid>.metadata.json`, as every Iceberg catalog names it.
pub(crate) fn next_metadata_location(
    ident: &TableIdent,
    current_location: &str,
    metadata: &iceberg::spec::TableMetadata,
) -> Result<MetadataLocation> {
    Ok(MetadataLocation::from_str(current_location)
        .map_err(|e| iceberg_error(format!("unexpected metadata location of {ident}"), e))?
        .with_next_version()
        .with_new_metadata(metadata))
}

/// Writes `commit`'s metadata as the next metadata file of its table; returns its location.
pub(crate) async fn write_next_metadata(
    commit: &MetadataCommit<'_>,
    written: &mut Vec<String>,
) -> Result<String> {
    let current = commit.current;
    let ident = current.identifier();
    let current_location = current.metadata_location().ok_or_else(|| {
        Error::new(
            ErrorKind::Internal,
            format!("table {ident} was loaded without a metadata location"),
        )
    })?;
    let location = next_metadata_location(ident, current_location, &commit.metadata)?;
    let location_text = location.to_string();
    commit
        .metadata
        .write_to(current.file_io(), &location)
        .await
        .map_err(|e| iceberg_error(format!("cannot write metadata file {location_text}"), e))?;
    written.push(location_text.clone());
    Ok(location_text)
}

#[async_trait]
impl CatalogBackend for SqlBackend {
    fn kind(&self) -> CatalogKind {
        CatalogKind::Sql
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    async fn current_metadata(&self, ident: &TableIdent) -> Result<CurrentMetadata> {
        let query = self.sql(&format!(
            "SELECT metadata_location FROM iceberg_tables WHERE {CATALOG_WHERE}"
        ));
        let row: Option<(Option<String>,)> = sqlx::query_as(&query)
            .bind(self.name.clone())
            .bind(ident.namespace().join("."))
            .bind(ident.name().to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Catalog, format!("cannot look up table {ident}")).with_source(e)
            })?;
        match row {
            Some((Some(location),)) => Ok(CurrentMetadata {
                location,
                metadata: None,
            }),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("table {ident} does not exist"),
            )),
        }
    }

    async fn commit(&self, commit: MetadataCommit<'_>, written: &mut Vec<String>) -> Result<CommitOutcome> {
        let location = write_next_metadata(&commit, written).await?;
        let current = commit.current;
        let expected = current.metadata_location().unwrap_or_default();
        if self
            .swap_metadata_location(current.identifier(), expected, &location)
            .await?
        {
            Ok(CommitOutcome::Committed {
                location,
                metadata: commit.metadata,
            })
        } else {
            Ok(CommitOutcome::Conflict)
        }
    }

    /// Atomicity is the catalog database's: one SQLite or PostgreSQL transaction.
    async fn swap_metadata_locations(&self, swaps: &[MetadataSwap]) -> Result<bool> {
        let failed =
            |e: sqlx::Error| Error::new(ErrorKind::Catalog, "cannot commit to the catalog").with_source(e);
        let update = self.sql(&format!(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE {CATALOG_WHERE} AND metadata_location = ?"
        ));
        let insert = self.sql(
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location, iceberg_type) VALUES (?, ?, ?, ?, NULL, 'TABLE')",
        );
        let mut tx = self.pool.begin().await.map_err(failed)?;
        for swap in swaps {
            let applied = match &swap.expected {
                Some(expected) => sqlx::query(&update)
                    .bind(swap.new_location.clone())
                    .bind(expected.clone())
                    .bind(self.name.clone())
                    .bind(swap.ident.namespace().join("."))
                    .bind(swap.ident.name().to_string())
                    .bind(expected.clone())
                    .execute(&mut *tx)
                    .await
                    .map(|r| r.rows_affected() == 1),
                None => match sqlx::query(&insert)
                    .bind(self.name.clone())
                    .bind(swap.ident.namespace().join("."))
                    .bind(swap.ident.name().to_string())
                    .bind(swap.new_location.clone())
                    .execute(&mut *tx)
                    .await
                {
                    Ok(r) => Ok(r.rows_affected() == 1),
                    // Another writer created the table first.
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => Ok(false),
                    Err(e) => Err(e),
                },
            };
            match applied {
                Ok(true) => {}
                Ok(false) => {
                    tx.rollback().await.map_err(failed)?;
                    return Ok(false);
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    return Err(failed(e).with_context("table", &swap.ident));
                }
            }
        }
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }

    /// The `exists` marker row the JDBC catalog layout keeps for every namespace stays: without
    /// it an empty namespace would vanish.
    async fn remove_namespace_properties(&self, ns: &NamespaceIdent, keys: &[String]) -> Result<Vec<String>> {
        let query = self.sql(
            "DELETE FROM iceberg_namespace_properties \
             WHERE catalog_name = ? AND namespace = ? AND property_key = ?",
        );
        let mut removed = Vec::new();
        for key in keys.iter().filter(|k| k.as_str() != "exists") {
            let result = sqlx::query(&query)
                .bind(self.name.clone())
                .bind(ns.join("."))
                .bind(key.clone())
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Catalog,
                        format!("cannot remove property {key:?} of namespace {}", ns.join(".")),
                    )
                    .with_source(e)
                })?;
            if result.rows_affected() > 0 {
                removed.push(key.clone());
            }
        }
        Ok(removed)
    }
}
