//! Object storage for table files, through the `object_store` crate.
//!
//! [`ObjectStores`] resolves a location (`file:///dir/f`, `file:/dir/f`, `/dir/f`, `s3://bucket/key`) to an
//! `object_store` store and a path inside it; it serves both the Iceberg file IO (metadata,
//! manifests, data files) and DataFusion (files read by `tarn load`).
//!
//! Local locations come in the forms other engines write them: `file:///dir/f` (pyiceberg,
//! tarn), `file:/dir/f` (Hadoop's `Path`, hence Spark, Flink and Iceberg's Java catalogs),
//! `file://localhost/dir/f` (RFC 8089) and a bare absolute path. All name the same file, so a
//! table whose metadata mixes them (Spark wrote `file:/`, tarn appended with the table's own
//! prefix) reads as one.
//!
//! `iceberg` 0.10 ships only local-filesystem and in-memory storage and leaves other backends
//! to a pluggable [`Storage`] trait, so tarn writes its own [`ObjectStoreStorage`] that
//! implements that trait over `object_store`. Writes go through `object_store`'s buffered
//! writer: one `PUT` for small files, a multipart upload for large ones; local files are
//! written to a temporary name and renamed, so a reader never sees half a file.
//!
//! S3 settings travel as the standard Iceberg file-IO properties (`s3.endpoint`,
//! `s3.region`, `s3.access-key-id`, `s3.secret-access-key`, `s3.session-token`,
//! `s3.path-style-access`) plus `tarn.s3.allow-http`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory,
};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tarn_core::config::S3Config;
use tokio::io::AsyncWriteExt;

/// Iceberg file-IO property: S3 endpoint URL.
pub const S3_ENDPOINT: &str = "s3.endpoint";
/// Iceberg file-IO property: S3 region.
pub const S3_REGION: &str = "s3.region";
/// Iceberg file-IO property: access key id.
pub const S3_ACCESS_KEY_ID: &str = "s3.access-key-id";
/// Iceberg file-IO property: secret access key.
pub const S3_SECRET_ACCESS_KEY: &str = "s3.secret-access-key";
/// Iceberg file-IO property: session token.
pub const S3_SESSION_TOKEN: &str = "s3.session-token";
/// Iceberg file-IO property: path-style requests.
pub const S3_PATH_STYLE_ACCESS: &str = "s3.path-style-access";
/// tarn property: allow plain-HTTP endpoints.
pub const S3_ALLOW_HTTP: &str = "tarn.s3.allow-http";

/// The file-IO properties for an S3 configuration.
pub fn s3_properties(s3: &S3Config) -> HashMap<String, String> {
    let mut props = HashMap::new();
    let mut set = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            props.insert(k.to_string(), v.clone());
        }
    };
    set(S3_ENDPOINT, s3.endpoint.as_ref());
    set(S3_REGION, s3.region.as_ref());
    set(S3_ACCESS_KEY_ID, s3.access_key_id.as_ref());
    set(S3_SECRET_ACCESS_KEY, s3.secret_access_key.as_ref());
    set(S3_SESSION_TOKEN, s3.session_token.as_ref());
    props.insert(S3_PATH_STYLE_ACCESS.into(), s3.path_style.to_string());
    props.insert(S3_ALLOW_HTTP.into(), s3.allow_http.to_string());
    props
}

/// Resolves locations to `object_store` stores, one per bucket, built on first use.
#[derive(Debug, Clone)]
pub struct ObjectStores {
    props: HashMap<String, String>,
    buckets: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
    local: Arc<dyn ObjectStore>,
}

/// A location split into its store and the path inside it.
#[derive(Debug, Clone)]
pub struct ResolvedLocation {
    /// The store holding the object.
    pub store: Arc<dyn ObjectStore>,
    /// The object's path inside the store.
    pub path: ObjectPath,
    /// The store's base URL (`file:///` or `s3://bucket`), for registering it with DataFusion.
    pub base_url: String,
}

impl ObjectStores {
    /// Stores configured by file-IO `props` (see the module doc for the keys).
    pub fn new(props: HashMap<String, String>) -> Self {
        Self {
            props,
            buckets: Arc::default(),
            local: Arc::new(LocalFileSystem::new()),
        }
    }

    /// Splits `location` into store and path.
    pub fn resolve(&self, location: &str) -> iceberg::Result<ResolvedLocation> {
        if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid(format!("no bucket in location {location:?}")));
            }
            let store = self.bucket(bucket)?;
            let path = ObjectPath::parse(key)
                .map_err(|e| invalid(format!("bad object key in {location:?}: {e}")))?;
            return Ok(ResolvedLocation {
                store,
                path,
                base_url: format!("s3://{bucket}"),
            });
        }
        let Some(file_path) = local_path(location) else {
            return Err(invalid(format!(
                "unsupported location {location:?}: expected file:/, file://, an absolute path or s3://"
            )));
        };
        let path = ObjectPath::parse(file_path.trim_start_matches('/'))
            .map_err(|e| invalid(format!("bad file path {location:?}: {e}")))?;
        Ok(ResolvedLocation {
            store: self.local.clone(),
            path,
            base_url: "file:///".into(),
        })
    }

    fn bucket(&self, bucket: &str) -> iceberg::Result<Arc<dyn ObjectStore>> {
        let mut buckets = self.buckets.lock().expect("bucket map poisoned");
        if let Some(store) = buckets.get(bucket) {
            return Ok(store.clone());
        }
        let prop = |k: &str| self.props.get(k).cloned();
        let truthy = |k: &str| prop(k).is_some_and(|v| matches!(v.as_str(), "true" | "1" | "on"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(prop(S3_REGION).unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(!truthy(S3_PATH_STYLE_ACCESS))
            .with_allow_http(truthy(S3_ALLOW_HTTP))
            // Fail within seconds, not minutes, when a bucket is unreachable.
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(15),
                ..Default::default()
            });
        if let Some(v) = prop(S3_ENDPOINT) {
            builder = builder.with_endpoint(v);
        }
        if let Some(v) = prop(S3_ACCESS_KEY_ID) {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = prop(S3_SECRET_ACCESS_KEY) {
            builder = builder.with_secret_access_key(v);
        }
        if let Some(v) = prop(S3_SESSION_TOKEN) {
            builder = builder.with_token(v);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(
            builder
                .build()
                .map_err(|e| storage_error(format!("cannot configure S3 bucket {bucket:?}"), e))?,
        );
        buckets.insert(bucket.to_string(), store.clone());
        Ok(store)
    }
}

/// The absolute path a local `location` names: `file:///p`, `file://localhost/p`, Hadoop's
/// `file:/p`, or `/p` itself; `None` for other schemes and for `file://host/p` on another host.
pub(crate) fn local_path(location: &str) -> Option<&str> {
    let Some(rest) = location.strip_prefix("file:") else {
        return location.starts_with('/').then_some(location);
    };
    match rest.strip_prefix("//") {
        // `file:///p`: an empty authority.
        Some(after) if after.starts_with('/') => Some(after),
        Some(after) => after.strip_prefix("localhost").filter(|p| p.starts_with('/')),
        // `file:/p`: no authority at all, as Hadoop writes it.
        None => rest.starts_with('/').then_some(rest),
    }
}

fn invalid(message: String) -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::DataInvalid, message)
}

fn storage_error(message: String, source: object_store::Error) -> iceberg::Error {
    let retryable = !matches!(
        source,
        object_store::Error::NotFound { .. } | object_store::Error::InvalidPath { .. }
    );
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, message)
        .with_source(source)
        .with_retryable(retryable)
}

/// Iceberg [`Storage`] over `object_store`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ObjectStoreStorage {
    props: HashMap<String, String>,
    #[serde(skip)]
    stores: Option<ObjectStores>,
}

impl ObjectStoreStorage {
    /// Storage configured by file-IO `props`.
    pub fn new(props: HashMap<String, String>) -> Self {
        let stores = ObjectStores::new(props.clone());
        Self {
            props,
            stores: Some(stores),
        }
    }

    fn resolve(&self, location: &str) -> iceberg::Result<ResolvedLocation> {
        match &self.stores {
            Some(stores) => stores.resolve(location),
            // Deserialized copies rebuild their stores from the properties.
            None => ObjectStores::new(self.props.clone()).resolve(location),
        }
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let loc = self.resolve(path)?;
        match loc.store.head(&loc.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error(format!("cannot stat {path}"), e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let loc = self.resolve(path)?;
        let meta = loc
            .store
            .head(&loc.path)
            .await
            .map_err(|e| storage_error(format!("cannot stat {path}"), e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let loc = self.resolve(path)?;
        let result = loc
            .store
            .get(&loc.path)
            .await
            .map_err(|e| storage_error(format!("cannot read {path}"), e))?;
        result
            .bytes()
            .await
            .map_err(|e| storage_error(format!("cannot read {path}"), e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let loc = self.resolve(path)?;
        Ok(Box::new(ObjectRead {
            location: path.to_string(),
            store: loc.store,
            path: loc.path,
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let loc = self.resolve(path)?;
        loc.store
            .put(&loc.path, bs.into())
            .await
            .map_err(|e| storage_error(format!("cannot write {path}"), e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let loc = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            location: path.to_string(),
            writer: Some(BufWriter::new(loc.store, loc.path)),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let loc = self.resolve(path)?;
        match loc.store.delete(&loc.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error(format!("cannot delete {path}"), e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let loc = self.resolve(path)?;
        let prefix = loc.path.clone();
        let locations = loc
            .store
            .list(Some(&prefix))
            .map(|meta| meta.map(|m| m.location))
            .boxed();
        let mut deleted = loc.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(format!("cannot delete under {path}"), e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone_shallow()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone_shallow()), path.to_string()))
    }
}

impl ObjectStoreStorage {
    fn clone_shallow(&self) -> Self {
        Self {
            props: self.props.clone(),
            stores: self.stores.clone(),
        }
    }
}

struct ObjectRead {
    location: String,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.path, range.clone())
            .await
            .map_err(|e| {
                storage_error(
                    format!(
                        "cannot read bytes {}..{} of {}",
                        range.start, range.end, self.location
                    ),
                    e,
                )
            })
    }
}

struct ObjectWrite {
    location: String,
    writer: Option<BufWriter>,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| invalid(format!("write to {} after it was closed", self.location)))?;
        writer
            .put(bs)
            .await
            .map_err(|e| storage_error(format!("cannot write {}", self.location), e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Err(invalid(format!("{} closed twice", self.location)));
        };
        writer.shutdown().await.map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("cannot finish writing {}", self.location),
            )
            .with_source(e)
        })
    }
}

/// Builds [`ObjectStoreStorage`] from the file-IO properties the catalog forwards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStoreStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStoreStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStoreStorage::new(config.props().clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStoreStorage::new(HashMap::new());
        let path = format!("file://{}/a/b/c.bin", dir.path().display());
        assert!(!storage.exists(&path).await.unwrap());
        let mut w = storage.writer(&path).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"world")).await.unwrap();
        w.close().await.unwrap();
        assert!(w.close().await.is_err());
        assert_eq!(storage.metadata(&path).await.unwrap().size, 11);
        let r = storage.reader(&path).await.unwrap();
        assert_eq!(&r.read(6..11).await.unwrap()[..], b"world");
        storage
            .delete_prefix(&format!("{}/a", dir.path().display()))
            .await
            .unwrap();
        assert!(!storage.exists(&path).await.unwrap());
    }

    #[test]
    fn local_locations_in_every_spelling_name_one_file() {
        let stores = ObjectStores::new(HashMap::new());
        for location in [
            "file:///w/ns/t/data/f.parquet",
            "file:/w/ns/t/data/f.parquet",
            "file://localhost/w/ns/t/data/f.parquet",
            "/w/ns/t/data/f.parquet",
        ] {
            let resolved = stores.resolve(location).unwrap();
            assert_eq!(resolved.path.as_ref(), "w/ns/t/data/f.parquet", "{location}");
            assert_eq!(resolved.base_url, "file:///", "{location}");
        }
        for location in ["file://otherhost/w/f", "file:relative/f", "relative/f"] {
            let err = stores.resolve(location).unwrap_err();
            assert!(
                err.to_string().contains("unsupported location"),
                "{location}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn hadoop_style_locations_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStoreStorage::new(HashMap::new());
        let hadoop = format!("file:{}/t/f.bin", dir.path().display());
        storage
            .write(&hadoop, Bytes::from_static(b"spark"))
            .await
            .unwrap();
        let uri = format!("file://{}/t/f.bin", dir.path().display());
        assert_eq!(&storage.read(&uri).await.unwrap()[..], b"spark");
        assert!(storage.exists(&hadoop).await.unwrap());
    }

    #[test]
    fn rejects_unknown_scheme() {
        let stores = ObjectStores::new(HashMap::new());
        let err = stores.resolve("ftp://x/y").unwrap_err();
        assert!(err.to_string().contains("unsupported location"), "{err}");
    }
}
