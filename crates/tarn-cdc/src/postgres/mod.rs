//! The PostgreSQL source: logical replication with `pgoutput`.
//!
//! [`PostgresSource`] connects to the source database, finds the captured tables
//! ([`catalog`]), keeps the publication and slot ([`slot`]), copies tables inside exported
//! snapshots ([`snapshot`]) and turns the replication stream into [`SourceEvent`]s. The
//! transport is the `pgwire-replication` crate, which hands over raw `pgoutput` payloads and
//! reports to the server only the position tarn acknowledges; [`pgoutput`] decodes them and
//! [`types`] maps column types to tarn's value model (`crate::value`).

pub mod catalog;
pub mod change_source;
pub mod connect;
pub mod copy_binary;
pub mod copy_text;
pub mod local;
pub mod pgoutput;
pub mod slot;
pub mod snapshot;
pub mod types;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tarn_core::config::CdcConfig;
use tarn_core::{Error, ErrorKind, Result};

use self::catalog::{TableFilter, TypeCache};
use self::connect::{SourceAddress, replication_error};
use self::pgoutput::{Message, OldTuple};
use self::slot::ExportedSlot;
use self::types::{NumericMode, TypeOptions};
use crate::position::Lsn;
use crate::source::{SourceEvent, TableSpec};

/// The type-mapping options a pipeline's config asks for.
pub fn type_options(config: &CdcConfig) -> TypeOptions {
    TypeOptions {
        unconstrained_numeric: if config.unconstrained_numeric == "text" {
            NumericMode::Text
        } else {
            NumericMode::Decimal
        },
        unsupported_as_text: config.unsupported_types == "text",
    }
}

/// A PostgreSQL database as a change source.
pub struct PostgresSource {
    address: SourceAddress,
    client: tokio_postgres::Client,
    server_version: i32,
    types: TypeCache,
    options: TypeOptions,
    filter: TableFilter,
    slot: String,
    publication: String,
    stream: Option<ReplicationClient>,
    /// Specs of relations seen in the stream (or discovered), by OID.
    relations: HashMap<u32, Arc<TableSpec>>,
    /// Relations in the stream that the pipeline does not capture.
    ignored: HashSet<u32>,
    /// The newest position the stream reached.
    received: Lsn,
    /// The transaction being decoded (from its Begin message).
    xid: Option<u32>,
}

impl PostgresSource {
    /// Connects and checks that the server can do logical replication.
    pub async fn connect(config: &CdcConfig) -> Result<Self> {
        let url = config.source.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "no CDC source: set cdc.source to a postgres:// URL",
            )
        })?;
        let address = SourceAddress::parse(url)?;
        let client = address.connect().await?;
        let server_version = slot::check_server(&client, &address.display).await?;
        let types = TypeCache::load(&client).await?;
        Ok(Self {
            address,
            client,
            server_version,
            types,
            options: type_options(config),
            filter: TableFilter {
                include: config.tables.clone(),
                exclude: config.exclude.clone(),
            },
            slot: config.slot_name(),
            publication: config.publication_name(),
            stream: None,
            relations: HashMap::new(),
            ignored: HashSet::new(),
            received: Lsn::default(),
            xid: None,
        })
    }

    /// The source URL with its password redacted.
    pub fn display(&self) -> &str {
        &self.address.display
    }

    /// The address, for copy connections.
    pub fn address(&self) -> &SourceAddress {
        &self.address
    }

    /// The control connection.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// The slot name.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// The publication name.
    pub fn publication_name(&self) -> &str {
        &self.publication
    }

    /// The captured tables as the catalog has them now.
    pub async fn discover(&mut self) -> Result<Vec<Arc<TableSpec>>> {
        self.types = TypeCache::load(&self.client).await?;
        let specs = catalog::discover_tables(&self.client, &self.filter, &self.types, &self.options).await?;
        for spec in &specs {
            self.relations.insert(spec.id, spec.clone());
        }
        Ok(specs)
    }

    /// Whether `schema.table` is captured by this pipeline.
    pub fn accepts(&self, qualified: &str) -> bool {
        self.filter.accepts(qualified)
    }

    /// Makes the publication cover `tables`.
    pub async fn ensure_publication(&self, tables: &[Arc<TableSpec>]) -> Result<slot::PublicationAction> {
        let refs: Vec<&TableSpec> = tables.iter().map(AsRef::as_ref).collect();
        slot::ensure_publication(&self.client, &self.publication, &refs).await
    }

    /// The slot, if it exists.
    pub async fn slot_info(&self) -> Result<Option<slot::SlotInfo>> {
        slot::slot_info(&self.client, &self.slot).await
    }

    /// Creates the pipeline's slot with an exported snapshot.
    pub async fn create_slot(&self) -> Result<ExportedSlot> {
        let session = self
            .address
            .replication_session(&self.slot, &self.publication)
            .await?;
        slot::create_slot_exporting(
            session,
            &self.slot,
            false,
            self.server_version,
            &self.address.display,
        )
        .await
    }

    /// Creates a temporary slot with an exported snapshot, to copy tables added later: the
    /// copy holds exactly the transactions before its consistent point.
    pub async fn export_snapshot(&self) -> Result<ExportedSlot> {
        let name = format!(
            "{}_snap_{}",
            self.slot,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let session = self.address.replication_session(&name, &self.publication).await?;
        slot::create_slot_exporting(session, &name, true, self.server_version, &self.address.display).await
    }

    /// Starts streaming from `start` in `session` (the one that created the slot) or in a new
    /// session.
    pub async fn start_stream(&mut self, session: Option<ReplicationClient>, start: Lsn) -> Result<()> {
        let mut session = match session {
            Some(s) => s,
            None => {
                let config = self
                    .address
                    .replication_config(&self.slot, &self.publication, start.0);
                ReplicationClient::connect(config)
                    .await
                    .map_err(|e| replication_error("cannot start streaming", &self.address.display, e))?
            }
        };
        // A gated session (the slot's creator) starts on request and streams from the slot's
        // consistent point, where the exported snapshot ends; a new session is already
        // starting, and `start` on it is a no-op error.
        let _ = session.start().await;
        session.wait_started().await.map_err(|e| {
            replication_error(
                &format!("cannot stream from replication slot {}", self.slot),
                &self.address.display,
                e,
            )
        })?;
        self.received = start;
        self.stream = Some(session);
        Ok(())
    }

    /// Tells the server everything up to `position` is durable in the lake; the slot's
    /// `confirmed_flush_lsn` follows, and WAL before it may be recycled.
    pub fn acknowledge(&self, position: Lsn) {
        if let Some(stream) = &self.stream {
            stream.update_applied_lsn(pgwire_replication::Lsn::from_u64(position.0));
        }
    }

    /// The newest position the stream reached.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// The spec of relation `id`, if known.
    pub fn relation(&self, id: u32) -> Option<&Arc<TableSpec>> {
        self.relations.get(&id)
    }

    /// Stops streaming.
    pub async fn stop(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.shutdown()).await;
        }
    }

    /// The next event of the stream.
    pub async fn next_event(&mut self) -> Result<SourceEvent> {
        loop {
            let raw = self.recv().await?;
            if let Some(event) = self.convert(raw).await? {
                return Ok(event);
            }
        }
    }

    /// The next raw message of the stream. Cancel-safe: dropping the future loses nothing.
    pub async fn recv(&mut self) -> Result<ReplicationEvent> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "the replication stream was not started"))?;
        let event = stream
            .recv()
            .await
            .map_err(|e| replication_error("the replication stream failed", &self.address.display, e))?;
        event.ok_or_else(|| {
            Error::new(ErrorKind::Source, "the source ended the replication stream")
                .with_context("source", &self.address.display)
        })
    }

    /// Turns a raw message into an event; `None` for messages that carry nothing for tarn.
    pub async fn convert(&mut self, event: ReplicationEvent) -> Result<Option<SourceEvent>> {
        Ok(match event {
            ReplicationEvent::Begin { final_lsn, xid, .. } => {
                self.xid = Some(xid);
                Some(SourceEvent::Begin {
                    commit_position: Lsn(final_lsn.as_u64()).into(),
                    transaction_id: Some(i64::from(xid)),
                })
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                let position = Lsn(end_lsn.as_u64());
                self.received = self.received.max(position);
                Some(SourceEvent::Commit {
                    position: position.into(),
                    commit_time_micros: pgoutput::unix_micros(commit_time_micros),
                })
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let position = Lsn(wal_end.as_u64());
                self.received = self.received.max(position);
                Some(SourceEvent::Keepalive {
                    position: position.into(),
                })
            }
            ReplicationEvent::XLogData { data, .. } => self.decode(&data).await?,
            ReplicationEvent::Message { .. } => None,
            ReplicationEvent::StoppedAt { reached } => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("the replication stream stopped at {reached}"),
                ));
            }
        })
    }

    async fn decode(&mut self, data: &bytes::Bytes) -> Result<Option<SourceEvent>> {
        let message = pgoutput::decode(data)?;
        Ok(match message {
            Message::Relation(relation) => {
                let qualified = format!("{}.{}", relation.namespace, relation.name);
                if !self.filter.accepts(&qualified) {
                    self.ignored.insert(relation.id);
                    return Ok(None);
                }
                self.ignored.remove(&relation.id);
                // Types created after start-up (a new enum, a domain) need a reload.
                if relation.columns.iter().any(|c| !self.types.contains(c.type_oid)) {
                    self.types = TypeCache::load(&self.client).await?;
                }
                // The stream sends a transaction once its commit record is on disk, a moment
                // before other sessions see it: read the catalog after it, not before.
                if let Some(xid) = self.xid {
                    catalog::wait_until_visible(&self.client, xid).await?;
                }
                let attnums = catalog::column_info(&self.client, relation.id).await?;
                let previous = self.relations.get(&relation.id).cloned();
                let spec = catalog::spec_from_relation(
                    &relation,
                    previous.as_deref(),
                    &self.types,
                    &self.options,
                    &attnums,
                )?;
                let spec = Arc::new(spec);
                self.relations.insert(relation.id, spec.clone());
                Some(SourceEvent::Relation(spec))
            }
            Message::Insert(insert) => {
                if self.ignored.contains(&insert.relation_id) {
                    return Ok(None);
                }
                Some(SourceEvent::Insert {
                    table: insert.relation_id,
                    new: insert.new.0,
                })
            }
            Message::Update(update) => {
                if self.ignored.contains(&update.relation_id) {
                    return Ok(None);
                }
                Some(SourceEvent::Update {
                    table: update.relation_id,
                    old: update.old.map(|o| match o {
                        OldTuple::Key(t) | OldTuple::Full(t) => t.0,
                    }),
                    new: update.new.0,
                })
            }
            Message::Delete(delete) => {
                if self.ignored.contains(&delete.relation_id) {
                    return Ok(None);
                }
                Some(SourceEvent::Delete {
                    table: delete.relation_id,
                    old: match delete.old {
                        OldTuple::Key(t) | OldTuple::Full(t) => t.0,
                    },
                })
            }
            Message::Truncate(truncate) => {
                let tables: Vec<u32> = truncate
                    .relation_ids
                    .into_iter()
                    .filter(|id| !self.ignored.contains(id))
                    .collect();
                if tables.is_empty() {
                    return Ok(None);
                }
                Some(SourceEvent::Truncate { tables })
            }
            Message::Begin(_)
            | Message::Commit(_)
            | Message::Origin(_)
            | Message::Type(_)
            | Message::LogicalMessage(_) => None,
        })
    }
}
