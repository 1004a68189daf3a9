//! The publication and the logical replication slot of a pipeline.
//!
//! tarn creates the publication when it is missing (for the captured tables) and adds newly
//! captured tables to a publication it lists tables of; a `FOR ALL TABLES` publication is used
//! as it is. The slot is created in a replication session with an exported snapshot, so the
//! initial copy sees exactly the rows committed before the slot's consistent point and the
//! stream delivers exactly the transactions after it.

use pgwire_replication::ReplicationClient;
use tarn_core::{Error, ErrorKind, Result};
use tokio_postgres::Client;

use super::connect::{query_error, quote_ident, replication_error};
use crate::position::Lsn;
use crate::source::TableSpec;

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The slot name.
    pub name: String,
    /// Its output plugin (`pgoutput` for ours).
    pub plugin: Option<String>,
    /// Its database.
    pub database: Option<String>,
    /// Everything before this position was acknowledged.
    pub confirmed_flush: Option<Lsn>,
    /// The oldest WAL the slot holds on to.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub wal_status: Option<String>,
    /// The PID of the session streaming from it, if any.
    pub active_pid: Option<i32>,
    /// Bytes of WAL the slot keeps from being removed.
    pub retained_bytes: Option<i64>,
    /// The server's current WAL position.
    pub current_lsn: Option<Lsn>,
}

impl SlotInfo {
    /// Whether PostgreSQL invalidated the slot (the WAL it needs is gone).
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
            || (self.restart_lsn.is_none() && self.confirmed_flush.is_none())
    }

    /// Bytes between the server's current position and what the slot confirmed.
    pub fn lag_bytes(&self) -> Option<u64> {
        Some(self.current_lsn?.0.saturating_sub(self.confirmed_flush?.0))
    }
}

fn lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

/// Reads slot `name`, if it exists.
pub async fn slot_info(client: &Client, name: &str) -> Result<Option<SlotInfo>> {
    let rows = client
        .query(
            "SELECT slot_name::text, plugin::text, database::text, confirmed_flush_lsn::text, restart_lsn::text, \
                    wal_status, active_pid, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                    pg_current_wal_lsn()::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(format!("cannot read replication slot {name}"), e))?;
    Ok(rows.first().map(|r| SlotInfo {
        name: r.get(0),
        plugin: r.get(1),
        database: r.get(2),
        confirmed_flush: lsn(r.get(3)),
        restart_lsn: lsn(r.get(4)),
        wal_status: r.get(5),
        active_pid: r.get(6),
        retained_bytes: r.get(7),
        current_lsn: lsn(r.get(8)),
    }))
}

/// Checks that the server can do logical replication.
pub async fn check_server(client: &Client, display: &str) -> Result<i32> {
    let banner: String = client
        .query_one("SELECT version()", &[])
        .await
        .map_err(|e| query_error("cannot read the source's version", e))?
        .get(0);
    if banner.contains("CockroachDB") {
        // Needs a configuration change, not a retry.
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the source is CockroachDB, which has no logical replication: set cdc.source_kind = \"cockroachdb\" \
             to capture it with a changefeed (see docs/cockroachdb.md)",
        )
        .with_context("source", display));
    }
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| query_error("cannot read the source's settings", e))?;
    let wal_level: String = row.get(0);
    let version: i32 = row.get(1);
    if wal_level != "logical" {
        return Err(Error::new(
            ErrorKind::Source,
            format!(
                "the source database has wal_level = {wal_level}; logical replication needs wal_level = logical \
                 (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
            ),
        )
        .with_context("source", display));
    }
    if version < 100_000 {
        return Err(Error::new(
            ErrorKind::Source,
            format!("the source runs PostgreSQL {version}; tarn needs PostgreSQL 10 or later"),
        )
        .with_context("source", display));
    }
    Ok(version)
}

/// What [`ensure_publication`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationAction {
    /// Created it for these tables.
    Created(Vec<String>),
    /// Added these tables to it.
    Added(Vec<String>),
    /// It already covered every table.
    Reused,
}

/// Makes publication `name` cover `tables`.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[&TableSpec],
) -> Result<PublicationAction> {
    let wanted: Vec<String> = tables.iter().map(|t| t.qualified()).collect();
    let quoted = |ts: &[&TableSpec]| {
        ts.iter()
            .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let existing = client
        .query(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(format!("cannot read publication {name}"), e))?;
    let Some(row) = existing.first() else {
        let sql = if tables.is_empty() {
            format!("CREATE PUBLICATION {}", quote_ident(name))
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(name),
                quoted(tables)
            )
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| query_error(format!("cannot create publication {name}"), e))?;
        return Ok(PublicationAction::Created(wanted));
    };
    if row.get::<_, bool>(0) {
        return Ok(PublicationAction::Reused);
    }
    let listed: Vec<String> = client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(format!("cannot read the tables of publication {name}"), e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&TableSpec> = tables
        .iter()
        .copied()
        .filter(|t| !listed.contains(&t.qualified()))
        .collect();
    if missing.is_empty() {
        return Ok(PublicationAction::Reused);
    }
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(name),
            quoted(&missing)
        ))
        .await
        .map_err(|e| query_error(format!("cannot add tables to publication {name}"), e))?;
    Ok(PublicationAction::Added(
        missing.iter().map(|t| t.qualified()).collect(),
    ))
}

/// Tables publication `name` publishes, as `schema.table`.
pub async fn published_tables(client: &Client, name: &str) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(format!("cannot read the tables of publication {name}"), e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A slot created with an exported snapshot, and the session holding that snapshot open.
pub struct ExportedSlot {
    /// The session; the snapshot stays valid until it runs another command or closes.
    pub session: ReplicationClient,
    /// Transactions committed before this position are in the snapshot, later ones stream.
    pub consistent_point: Lsn,
    /// The snapshot name for `SET TRANSACTION SNAPSHOT`.
    pub snapshot_name: String,
}

/// Creates logical slot `slot` (`pgoutput`) in `session` with an exported snapshot;
/// `temporary` slots vanish with the session.
pub async fn create_slot_exporting(
    mut session: ReplicationClient,
    slot: &str,
    temporary: bool,
    server_version: i32,
    display: &str,
) -> Result<ExportedSlot> {
    let temp = if temporary { " TEMPORARY" } else { "" };
    let command = if server_version >= 150_000 {
        format!(
            "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput (SNAPSHOT 'export')",
            quote_ident(slot)
        )
    } else {
        format!(
            "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(slot)
        )
    };
    let rows = session
        .simple_query(&command)
        .await
        .map_err(|e| replication_error(&format!("cannot create replication slot {slot}"), display, e))?;
    let row = rows.first().ok_or_else(|| {
        Error::new(
            ErrorKind::Source,
            format!("CREATE_REPLICATION_SLOT {slot} returned no row"),
        )
    })?;
    let text = |i: usize| -> Result<String> {
        row.get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Source,
                    format!("CREATE_REPLICATION_SLOT {slot} returned no column {i}"),
                )
            })
    };
    let consistent = text(1)?;
    let consistent_point: Lsn = consistent.parse().map_err(|e| {
        Error::new(
            ErrorKind::Source,
            format!("CREATE_REPLICATION_SLOT {slot} returned a bad consistent point: {e}"),
        )
    })?;
    Ok(ExportedSlot {
        session,
        consistent_point,
        snapshot_name: text(2)?,
    })
}

/// How long [`drop_slot`] waits for a slot's last session to let go of it: the server
/// process of a session that just ended releases the slot a moment after the client left.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Drops slot `name` if it exists. A slot still in use is waited for up to a few seconds (a
/// pipeline that just stopped), then refused.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    loop {
        let Some(info) = slot_info(client, name).await? else {
            return Ok(false);
        };
        let Some(pid) = info.active_pid else { break };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Source,
                format!("replication slot {name} is in use by process {pid}; stop the pipeline first"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .map_err(|e| query_error(format!("cannot drop replication slot {name}"), e))?;
    Ok(true)
}

/// Drops publication `name` if it exists.
pub async fn drop_publication(client: &Client, name: &str) -> Result<()> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(|e| query_error(format!("cannot drop publication {name}"), e))
}
