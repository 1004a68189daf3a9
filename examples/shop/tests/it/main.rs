//! The shop's integration tests, one binary: a real PostgreSQL per test (from
//! `tarn-test-utils`), the service on 127.0.0.1:0, real HTTP.

mod common;
mod crud;
mod load;
mod migrations;
mod retry;
mod tls;
mod validation;
