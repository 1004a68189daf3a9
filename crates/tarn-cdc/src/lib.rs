//! Change data capture: every committed change of an OLTP database lands in Iceberg tables,
//! exactly once.
//!
//! - [`source`]: what a source delivers (events, positions, table specs), the
//!   [`source::ChangeSource`] seam every source implements, and its delivery contract.
//! - [`value`]: the value and type model every source shares — a cell's text, a column's
//!   Iceberg type, text into Arrow arrays.
//! - [`postgres`]: the PostgreSQL source — publication and logical replication slot
//!   (`pgoutput`), the initial snapshot inside the slot's exported snapshot, and the stream of
//!   committed transactions after it.
//! - [`sink`]: changes into Iceberg tables as merge-on-read commits with position deletes,
//!   found through a primary-key [`index`].
//! - [`debezium`]: Debezium change events: rows to Kafka messages and back, and their validator.
//! - [`cockroach`]: the CockroachDB source — a changefeed (core or webhook), deduplicated and
//!   committed per resolved timestamp.
//! - [`pipeline`]: the one loop between any source and the sink — flush policy, backpressure,
//!   acknowledgement after commit, restarts.
//! - `kafka` (feature `kafka`): the Kafka source — topics of Debezium change events into the
//!   lake, exactly once per partition through the offsets each table records — and the Kafka
//!   sink, a database source's changes published as Debezium events in Kafka transactions.
//! - [`transform`]: streaming SQL — a table's changes transformed by a `SELECT` (with lake
//!   lookups) before the sink writes them.
//! - [`position`]: typed positions (LSN, HLC timestamp, Kafka offsets) and their text codec.
//! - [`scripted`]: an in-memory source replaying a script, with crashes at chosen steps, for
//!   the sink's exactly-once tests.

pub mod cockroach;
pub mod debezium;
pub mod index;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod pipeline;
pub mod position;
pub mod postgres;
pub mod scripted;
pub mod sink;
pub mod source;
pub mod topic_acl;
pub mod transform;
pub mod value;
