//! A Hive Metastore (`catalog.kind = "hms"`, cargo feature `hms`).
//!
//! Namespaces (Hive databases), table creation, listing, loading and drops go through
//! `iceberg-catalog-hms`'s `HmsCatalog`. That crate cannot commit (its `update_table` answers
//! "not supported yet", 0.10), so tarn commits as Iceberg's Java `HiveCatalog` does, with the
//! metastore's thrift API (the `hive_metastore` crate the catalog crate is built on): write the
//! next metadata file, take an exclusive metastore lock on the table, re-read the table and
//! check that its `metadata_location` parameter is still the one the commit started from,
//! point it at the new file (keeping the old one as `previous_metadata_location`) with
//! `alter_table`, release the lock. A different location is a lost race.
//!
//! The same commit serves the `iceberg` crate's transactions (snapshot expiry among them):
//! [`CommittingHmsCatalog`] is `HmsCatalog` with its `update_table` done this way.
//!
//! The lock keeps out every writer that locks too (Spark, Trino, Flink through Iceberg's
//! `HiveCatalog` with its default `engine.hive.lock-enabled`); a metastore without the
//! transaction tables that locks need (`hive.txn.manager`) fails the lock call, and tarn
//! reports it.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hive_metastore::{
    CheckLockRequest, DataOperationType, LockComponent, LockLevel, LockRequest, LockState, LockType,
    ThriftHiveMetastoreClient, ThriftHiveMetastoreClientBuilder, UnlockRequest,
};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent};
use iceberg_catalog_hms::{
    HMS_CATALOG_PROP_THRIFT_TRANSPORT, HMS_CATALOG_PROP_URI, HMS_CATALOG_PROP_WAREHOUSE, HmsCatalog,
    HmsCatalogBuilder,
};
use tarn_core::{Config, Error, ErrorKind, Result};

use super::sql::write_next_metadata;
use super::{
    CatalogBackend, CatalogKind, CommitOutcome, CurrentMetadata, MetadataCommit, MetadataSwap, StorageProps,
};
use crate::storage::ObjectStoreStorageFactory;

/// The table parameter holding the current metadata file, as Iceberg's `HiveCatalog` names it.
const METADATA_LOCATION: &str = "metadata_location";
/// The table parameter holding the one before.
const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";
/// How long a commit waits for the table lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// A Hive Metastore; see the module doc.
#[derive(Clone)]
pub(crate) struct HmsBackend {
    catalog: Arc<HmsCatalog>,
    client: ThriftHiveMetastoreClient,
    /// `catalog.hms.uri`, for messages.
    address: String,
}

impl std::fmt::Debug for HmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmsBackend")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl HmsBackend {
    /// Connects to the metastore `config.catalog.hms` names and checks that it answers.
    pub(crate) async fn open(config: &Config, warehouse: &str, storage: StorageProps) -> Result<Self> {
        let hms = &config.catalog.hms;
        let uri = hms
            .uri
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Config, "key `catalog.hms.uri`: not set"))?;
        let address = uri.strip_prefix("thrift://").unwrap_or(uri).to_string();
        let framed = hms.thrift_transport.as_deref() == Some("framed");
        let mut props = storage;
        props.insert(HMS_CATALOG_PROP_URI.into(), address.clone());
        props.insert(HMS_CATALOG_PROP_WAREHOUSE.into(), warehouse.to_string());
        props.insert(
            HMS_CATALOG_PROP_THRIFT_TRANSPORT.into(),
            if framed { "framed" } else { "buffered" }.into(),
        );
        let unreachable = |reason: String| {
            Error::new(
                ErrorKind::Catalog,
                format!("cannot reach the Hive Metastore at {address} (catalog.hms.uri): {reason}"),
            )
        };
        let socket = address
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("the name resolves to no address".into()))?;
        let catalog = HmsCatalogBuilder::default()
            .with_storage_factory(Arc::new(ObjectStoreStorageFactory))
            .load(config.catalog.name.clone(), props)
            .await
            .map_err(|e| unreachable(e.message().to_string()).with_source(e))?;
        let builder = ThriftHiveMetastoreClientBuilder::new("tarn").address(socket);
        let client = if framed {
            builder
                .make_codec(volo_thrift::codec::default::DefaultMakeCodec::framed())
                .build()
        } else {
            builder
                .make_codec(volo_thrift::codec::default::DefaultMakeCodec::buffered())
                .build()
        };
        // The thrift client connects lazily: ask for something small to fail here, not later.
        match client.get_all_databases().await {
            Ok(volo_thrift::MaybeException::Ok(_)) => {}
            Ok(volo_thrift::MaybeException::Exception(e)) => return Err(unreachable(format!("{e:?}"))),
            Err(e) => return Err(unreachable(e.to_string())),
        }
        tracing::info!(metastore = %address, "connected to the Hive Metastore");
        Ok(Self {
            catalog: Arc::new(catalog),
            client,
            address,
        })
    }

    fn failed(&self, what: String, reason: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::Catalog,
            format!("the Hive Metastore at {}: {what}: {reason}", self.address),
        )
    }

    /// The metastore's table `ident`: database and table name, and its parameters.
    async fn hive_table(&self, ident: &TableIdent) -> Result<hive_metastore::Table> {
        let db = database(ident)?;
        match self
            .client
            .get_table(db.into(), ident.name().to_string().into())
            .await
        {
            Ok(volo_thrift::MaybeException::Ok(table)) => Ok(table),
            Ok(volo_thrift::MaybeException::Exception(e)) => {
                let text = format!("{e:?}");
                if text.contains("NoSuchObject") {
                    Err(Error::new(
                        ErrorKind::NotFound,
                        format!("table {ident} does not exist"),
                    ))
                } else {
                    Err(self.failed(format!("cannot look up table {ident}"), text))
                }
            }
            Err(e) => Err(self.failed(format!("cannot look up table {ident}"), e)),
        }
    }

    /// Takes an exclusive lock on `ident`, waiting for it up to [`LOCK_TIMEOUT`].
    async fn lock(&self, ident: &TableIdent) -> Result<i64> {
        let request = LockRequest {
            component: vec![LockComponent {
                r#type: LockType::EXCLUSIVE,
                level: LockLevel::TABLE,
                dbname: database(ident)?.into(),
                tablename: Some(ident.name().to_string().into()),
                // Not part of a Hive transaction, as Iceberg's own Hive lock says.
                operation_type: Some(DataOperationType::NO_TXN),
                is_acid: Some(false),
                ..Default::default()
            }],
            user: "tarn".into(),
            hostname: std::env::var("HOSTNAME")
                .unwrap_or_else(|_| "localhost".into())
                .into(),
            ..Default::default()
        };
        let what = || format!("cannot lock table {ident} to commit");
        let mut response = match self.client.lock(request).await {
            Ok(volo_thrift::MaybeException::Ok(r)) => r,
            Ok(volo_thrift::MaybeException::Exception(e)) => {
                return Err(self.failed(what(), format!("{e:?}")));
            }
            Err(e) => return Err(self.failed(what(), e)),
        };
        let started = Instant::now();
        let mut wait = Duration::from_millis(20);
        while response.state == LockState::WAITING {
            if started.elapsed() > LOCK_TIMEOUT {
                self.unlock(ident, response.lockid).await;
                return Err(Error::new(
                    ErrorKind::CommitConflict,
                    format!(
                        "the Hive Metastore at {}: table {ident} stayed locked by another writer for {}s",
                        self.address,
                        LOCK_TIMEOUT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
            let check = CheckLockRequest {
                lockid: response.lockid,
                ..Default::default()
            };
            response = match self.client.check_lock(check).await {
                Ok(volo_thrift::MaybeException::Ok(r)) => r,
                Ok(volo_thrift::MaybeException::Exception(e)) => {
                    return Err(self.failed(what(), format!("{e:?}")));
                }
                Err(e) => return Err(self.failed(what(), e)),
            };
        }
        if response.state != LockState::ACQUIRED {
            return Err(self.failed(what(), format!("lock state {:?}", response.state)));
        }
        Ok(response.lockid)
    }

    async fn unlock(&self, ident: &TableIdent, lockid: i64) {
        if let Err(e) = self.client.unlock(UnlockRequest { lockid }).await {
            tracing::warn!(table = %ident, lockid, error = %e, "cannot release the metastore lock");
        }
    }

    /// Under the lock: points `ident` at `new_location` if it still is at `expected`.
    async fn swap_locked(&self, ident: &TableIdent, expected: &str, new_location: &str) -> Result<bool> {
        let mut table = self.hive_table(ident).await?;
        let params = table.parameters.get_or_insert_with(Default::default);
        let current = params.get(METADATA_LOCATION).map(|v| v.to_string());
        if current.as_deref() != Some(expected) {
            return Ok(false);
        }
        params.insert(METADATA_LOCATION.into(), new_location.to_string().into());
        params.insert(PREVIOUS_METADATA_LOCATION.into(), expected.to_string().into());
        match self
            .client
            .alter_table(database(ident)?.into(), ident.name().to_string().into(), table)
            .await
        {
            Ok(volo_thrift::MaybeException::Ok(())) => Ok(true),
            Ok(volo_thrift::MaybeException::Exception(e)) => {
                Err(self.failed(format!("cannot commit to table {ident}"), format!("{e:?}")))
            }
            Err(e) => Err(self.failed(format!("cannot commit to table {ident}"), e)),
        }
    }
}

/// The Hive database of `ident`: Hive has one level of namespaces.
fn database(ident: &TableIdent) -> Result<String> {
    match ident.namespace().as_ref().as_slice() {
        [db] => Ok(db.clone()),
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("table {ident}: a Hive Metastore has one level of namespaces (databases)"),
        )),
    }
}

#[async_trait]
impl CatalogBackend for HmsBackend {
    fn kind(&self) -> CatalogKind {
        CatalogKind::Hms
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::new(CommittingHmsCatalog(self.clone()))
    }

    async fn current_metadata(&self, ident: &TableIdent) -> Result<CurrentMetadata> {
        let table = self.hive_table(ident).await?;
        let location = table
            .parameters
            .as_ref()
            .and_then(|p| p.get(METADATA_LOCATION))
            .map(|v| v.to_string())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("table {ident} is not an Iceberg table (no metadata_location parameter)"),
                )
            })?;
        Ok(CurrentMetadata {
            location,
            metadata: None,
        })
    }

    async fn commit(&self, commit: MetadataCommit<'_>, written: &mut Vec<String>) -> Result<CommitOutcome> {
        let location = write_next_metadata(&commit, written).await?;
        let current = commit.current;
        let ident = current.identifier();
        let expected = current.metadata_location().unwrap_or_default();
        let lockid = self.lock(ident).await?;
        let swapped = self.swap_locked(ident, expected, &location).await;
        self.unlock(ident, lockid).await;
        if swapped? {
            Ok(CommitOutcome::Committed {
                location,
                metadata: commit.metadata,
            })
        } else {
            Ok(CommitOutcome::Conflict)
        }
    }

    async fn swap_metadata_locations(&self, _swaps: &[MetadataSwap]) -> Result<bool> {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "swapping several tables' metadata at once needs catalog.kind = \"sql\"; the Hive Metastore at {} cannot",
                self.address
            ),
        ))
    }

    async fn remove_namespace_properties(&self, ns: &NamespaceIdent, keys: &[String]) -> Result<Vec<String>> {
        let namespace = self.catalog.get_namespace(ns).await.map_err(|e| {
            crate::lake::iceberg_error(format!("cannot look up namespace {}", ns.join(".")), e)
        })?;
        let mut properties: HashMap<String, String> = namespace.properties().clone();
        let removed: Vec<String> = keys
            .iter()
            .filter(|k| properties.remove(k.as_str()).is_some())
            .cloned()
            .collect();
        if !removed.is_empty() {
            self.catalog.update_namespace(ns, properties).await.map_err(|e| {
                crate::lake::iceberg_error(format!("cannot update namespace {}", ns.join(".")), e)
            })?;
        }
        Ok(removed)
    }
}

/// `HmsCatalog` whose `update_table` commits as [`HmsBackend::commit`] does (the crate's own
/// answers "not supported"), so the `iceberg` crate's transactions work on a metastore.
#[derive(Debug)]
struct CommittingHmsCatalog(HmsBackend);

fn to_iceberg(e: Error) -> iceberg::Error {
    let kind = if e.kind() == ErrorKind::CommitConflict {
        iceberg::ErrorKind::CatalogCommitConflicts
    } else {
        iceberg::ErrorKind::Unexpected
    };
    iceberg::Error::new(kind, e.to_string())
        .with_retryable(kind == iceberg::ErrorKind::CatalogCommitConflicts)
}

#[async_trait]
impl Catalog for CommittingHmsCatalog {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.0.catalog.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.0.catalog.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.0.catalog.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.0.catalog.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.0.catalog.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.0.catalog.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.0.catalog.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.0.catalog.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.0.catalog.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.0.catalog.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.0.catalog.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.0.catalog.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.0.catalog.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> iceberg::Result<Table> {
        self.0.catalog.register_table(table, metadata_location).await
    }

    async fn update_table(&self, mut commit: TableCommit) -> iceberg::Result<Table> {
        let ident = commit.identifier().clone();
        let current = self.0.catalog.load_table(&ident).await?;
        let requirements = commit.take_requirements();
        let updates = commit.take_updates();
        for requirement in &requirements {
            requirement.check(Some(current.metadata()))?;
        }
        let mut builder = current
            .metadata()
            .clone()
            .into_builder(current.metadata_location().map(str::to_string));
        for update in updates.clone() {
            builder = update.apply(builder)?;
        }
        let metadata = builder.build()?.metadata;
        let mut written = Vec::new();
        let commit = MetadataCommit {
            current: &current,
            metadata,
            updates,
            requirements,
        };
        match self.0.commit(commit, &mut written).await.map_err(to_iceberg)? {
            CommitOutcome::Committed { .. } => self.0.catalog.load_table(&ident).await,
            CommitOutcome::Conflict => {
                super::delete_lost_files(&current, written).await;
                Err(iceberg::Error::new(
                    iceberg::ErrorKind::CatalogCommitConflicts,
                    format!("table {ident} changed in the Hive Metastore during the commit"),
                )
                .with_retryable(true))
            }
        }
    }
}
