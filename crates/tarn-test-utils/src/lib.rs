//! Test harness: real services on loopback, in temporary directories, stopped on drop.
//!
//! - [`PostgresServer`]: a PostgreSQL from the system's binaries with `wal_level=logical`, on a
//!   free port of 127.0.0.1 (tarn's own [`tarn_cdc::postgres::local::LocalPostgres`]).
//! - [`S3Server`]: moto's S3 API server from the project's Python venv, with a bucket.
//! - [`python`]: the venv's interpreter (pyiceberg, duckdb, psycopg), set up by
//!   `scripts/setup.sh`.
//! - [`cockroach::StandInCluster`]: a CockroachDB cluster played in front of a PostgreSQL
//!   database (catalog, changefeeds, webhook delivery), for the CockroachDB source's tests.
//! - `kafka::Broker` (feature `kafka`): a Kafka-protocol broker (tansu, from the venv) on a
//!   free loopback port.
//!
//! Waits are on conditions with deadlines, never bare sleeps.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod cockroach;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod oidc;
pub mod tls;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until `check` returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    wait_for(&format!("127.0.0.1:{port}"), timeout, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// The venv's Python interpreter.
pub fn python() -> Result<PathBuf> {
    let p = workspace_root().join(".venv/bin/python");
    if !p.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh (the README's test command does)",
            p.display()
        );
    }
    Ok(p)
}

/// A PostgreSQL for one test: fresh cluster in a temporary directory, logical replication
/// on, a free loopback port; stopped and removed on drop.
pub type PostgresServer = tarn_cdc::postgres::local::LocalPostgres;

/// Starts a [`PostgresServer`].
pub fn start_postgres() -> Result<PostgresServer> {
    Ok(PostgresServer::start_temporary()?)
}

/// moto's S3 API server for one test, with one bucket.
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
}

impl S3Server {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> Result<Self> {
        let python = python()?;
        let moto = python.parent().unwrap().join("moto_server");
        let port = free_port();
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", moto.display()))?;
        let server = Self {
            child,
            port,
            bucket: bucket.to_string(),
        };
        wait_for_port(port, Duration::from_secs(30))?;
        server.create_bucket()?;
        Ok(server)
    }

    fn create_bucket(&self) -> Result<()> {
        self.request(&format!("/{}", self.bucket), b"")
    }

    /// Uploads `body` as object `key` of the bucket.
    pub fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        self.request(&format!("/{}/{key}", self.bucket), body)
    }

    fn request(&self, path: &str, body: &[u8]) -> Result<()> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            stream,
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )?;
        stream.write_all(body)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("PUT {path} failed: {}", response.lines().next().unwrap_or(""));
        }
        Ok(())
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python script from `tests/interop/` with the venv interpreter; returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> Result<String> {
    let python = python()?;
    let path = workspace_root().join("tests/interop").join(script);
    let out = Command::new(&python).arg(&path).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{script} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
