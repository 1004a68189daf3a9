//! The SQL engine: DataFusion over the Iceberg catalog.
//!
//! [`TarnSession`] runs statements: queries through DataFusion, catalog changes and writes as
//! Iceberg commits. [`load`] brings files in. [`result_names`] gives result columns
//! PostgreSQL's names. [`federation`] attaches live PostgreSQL / CockroachDB databases as catalogs. The Postgres wire endpoint and the CLI are both thin layers over this
//! crate.

pub mod audit;
pub mod bridge;
mod decimal_literals;
pub mod federation;
mod filter_order;
pub mod governance;
pub mod lineage;
pub mod load;
pub mod provider;
pub mod result_names;
pub mod row_level;
mod runtime_filter;
mod session;
pub mod sql_ext;
mod stats;
pub mod uuid_column;
mod v3_scan;
pub mod workload;
pub mod write;

pub use session::{DEFAULT_SCHEMA, Output, TarnSession, from_df_error, lake_schema};
