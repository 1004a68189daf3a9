//! Types shared by every tarn crate: the error type and the layered configuration.
//!
//! tarn is a datalake in one binary: change data capture and batch loads into Apache Iceberg
//! tables on object storage, a SQL catalog that other engines open too, and SQL over it all.
//! This crate is the bottom of the dependency graph and stays free of heavy dependencies.

pub mod config;
mod console_config;
mod error;
pub mod failpoint;
mod jobs_config;
pub mod priority;
pub mod telemetry;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};
