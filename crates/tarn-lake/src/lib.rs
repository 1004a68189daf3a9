//! Iceberg tables on object storage: the storage layer, the SQL catalog, partition layouts
//! and the data-file writer.
//!
//! [`Lake`] is the entry point: open it from a [`tarn_core::Config`], then create, load, list,
//! append to and drop tables. Table files are Parquet plus Iceberg format-v2 metadata, so any
//! Iceberg engine reads what tarn writes.

mod lake;
pub mod layout;
pub mod storage;
mod writer;

pub use lake::{Lake, TableLayout, iceberg_error, parse_table_name};
pub use writer::{DataWriter, parquet_compression};
