//! Test harness: real services on loopback, in temporary directories, stopped on drop.
//!
//! - [`PostgresServer`]: a PostgreSQL from the system's binaries (`initdb`, `pg_ctl`) with
//!   `wal_level=logical`, on a free port of 127.0.0.1. As root it runs as the `postgres` user,
//!   since `initdb` refuses root.
//! - [`S3Server`]: moto's S3 API server from the project's Python venv, with a bucket.
//! - [`python`]: the venv's interpreter (pyiceberg, duckdb, psycopg), set up by
//!   `scripts/setup.sh`.
//!
//! Waits are on conditions with deadlines, never bare sleeps.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_bin_dir() -> Result<PathBuf> {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .with_context(|| format!("no PostgreSQL under {}: install postgresql", base.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().context("no pg_ctl found: install postgresql")
}

/// A PostgreSQL server for one test.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl PostgresServer {
    /// Starts a fresh server with logical replication enabled.
    pub fn start() -> Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("tarn-pg-").tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("cannot chown {} to postgres", dir.path().display());
            }
        }
        let server = Self {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = server.dir.path().join("data");
        server.run(&[
            server.bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ])?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off",
            server.port,
            server.dir.path().display()
        );
        server.run(&[
            server.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-l",
            server.dir.path().join("log").to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-t",
            "60",
            "start",
        ])?;
        wait_for_port(server.port, Duration::from_secs(30))?;
        Ok(server)
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let output = if self.as_postgres {
            Command::new("runuser")
                .arg("-u")
                .arg("postgres")
                .arg("--")
                .args(args)
                .output()?
        } else {
            Command::new(args[0]).args(&args[1..]).output()?
        };
        if !output.status.success() {
            bail!(
                "{} failed: {}{}",
                args[0],
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql against database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .arg(self.url(db))
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
    }
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
