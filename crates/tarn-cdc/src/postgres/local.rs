//! A private PostgreSQL started from the system's binaries (`initdb`, `pg_ctl`), with logical
//! replication on, listening on a loopback port: the source database of `tarn demo`,
//! `tarn bench cdc` and the test suite.
//!
//! The cluster lives in a directory of its own; as root it runs as the `postgres` user, since
//! `initdb` refuses root. That user must be able to reach the directory: under a parent it
//! cannot enter (a home directory of mode 0700) [`LocalPostgres::start_in`] fails naming that
//! parent, and [`LocalPostgres::start_scratch`] places the cluster in a temporary directory
//! instead. It is stopped when the value is dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tarn_core::{Error, ErrorKind, Result};

/// A running private PostgreSQL; see the module doc.
#[derive(Debug)]
pub struct LocalPostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
    remove_on_drop: bool,
}

fn error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Source, message)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| error(format!("no free loopback port: {e}")))
}

/// The newest PostgreSQL server binaries installed (`/usr/lib/postgresql/<version>/bin`).
pub fn server_bin_dir() -> Result<PathBuf> {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .map_err(|_| error("no PostgreSQL server is installed (install the postgresql package)"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .ok_or_else(|| error("no pg_ctl found (install the postgresql package)"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether the `postgres` user passes `test -<flag> path`.
fn postgres_user_can(flag: &str, path: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", flag])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates `dir` for a cluster and, as root, hands it to the `postgres` user; fails naming the
/// directory above it that the `postgres` user cannot enter, if there is one.
fn prepare_dir(dir: &Path, as_postgres: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| error(format!("cannot create {}: {e}", dir.display())))?;
    if !as_postgres {
        return Ok(());
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg("postgres")
        .arg(dir)
        .status()
        .map_err(|e| error(format!("cannot run chown: {e}")))?;
    if !status.success() {
        return Err(error(format!("cannot chown {} to postgres", dir.display())));
    }
    if postgres_user_can("-w", dir) {
        return Ok(());
    }
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    let blocked = ancestors
        .into_iter()
        .find(|a| !postgres_user_can("-x", a))
        .unwrap_or(dir);
    let how = std::fs::metadata(blocked)
        .map(|m| {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            format!(
                " (mode {:o}, owner uid {})",
                m.permissions().mode() & 0o7777,
                m.uid()
            )
        })
        .unwrap_or_default();
    Err(error(format!(
        "PostgreSQL cannot use {}: it runs as the `postgres` user (initdb refuses root), which \
         cannot enter {}{how}; choose a directory every user can reach",
        dir.display(),
        blocked.display()
    )))
}

impl LocalPostgres {
    /// Creates a cluster in a new temporary directory and starts it; the directory is removed
    /// when the value is dropped.
    pub fn start_temporary() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tarn-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut pg = Self::start_in(&dir, free_port()?)?;
        pg.remove_on_drop = true;
        Ok(pg)
    }

    /// Creates a new cluster in `preferred` (which must not exist yet) and starts it, or in a
    /// new temporary directory when the `postgres` user cannot reach `preferred` (see the
    /// module doc). Either directory is removed when the value is dropped.
    pub fn start_scratch(preferred: &Path) -> Result<Self> {
        if preferred.exists() {
            return Err(error(format!(
                "{} exists already; a new cluster needs a new directory",
                preferred.display()
            )));
        }
        let preferred = std::path::absolute(preferred)
            .map_err(|e| error(format!("cannot resolve {}: {e}", preferred.display())))?;
        if let Err(e) = prepare_dir(&preferred, is_root()) {
            tracing::info!(error = %e, "PostgreSQL goes to a temporary directory instead");
            let _ = std::fs::remove_dir_all(&preferred);
            return Self::start_temporary();
        }
        let mut pg = Self::start_in(&preferred, free_port()?)?;
        pg.remove_on_drop = true;
        Ok(pg)
    }

    /// Starts the cluster in `dir` (creating it with `initdb` when `dir` has none) on `port`.
    pub fn start_in(dir: &Path, port: u16) -> Result<Self> {
        let bin = server_bin_dir()?;
        let dir =
            &std::path::absolute(dir).map_err(|e| error(format!("cannot resolve {}: {e}", dir.display())))?;
        let as_postgres = is_root();
        prepare_dir(dir, as_postgres)?;
        let pg = Self {
            dir: dir.to_path_buf(),
            port,
            bin,
            as_postgres,
            remove_on_drop: false,
        };
        let data = pg.dir.join("data");
        if !data.join("PG_VERSION").exists() {
            pg.run(&[
                pg.bin.join("initdb").to_str().unwrap_or("initdb"),
                "-D",
                data.to_str().unwrap_or_default(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])?;
        }
        pg.pg_start()?;
        Ok(pg)
    }

    fn pg_start(&self) -> Result<()> {
        let data = self.dir.join("data");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c wal_level=logical -c max_replication_slots=20 \
             -c max_wal_senders=20 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        self.run(&[
            self.bin.join("pg_ctl").to_str().unwrap_or("pg_ctl"),
            "-D",
            data.to_str().unwrap_or_default(),
            "-l",
            self.dir.join("log").to_str().unwrap_or_default(),
            "-o",
            &opts,
            "-w",
            "-t",
            "60",
            "start",
        ])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(error(format!(
            "PostgreSQL did not listen on 127.0.0.1:{} within 30 s",
            self.port
        )))
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let output = if self.as_postgres {
            // In the cluster's directory, which the `postgres` user can enter (the caller's
            // working directory may not be).
            Command::new("runuser")
                .current_dir(&self.dir)
                .arg("-u")
                .arg("postgres")
                .arg("--")
                .args(args)
                .output()
        } else {
            Command::new(args[0]).args(&args[1..]).output()
        }
        .map_err(|e| error(format!("cannot run {}: {e}", args[0])))?;
        if !output.status.success() {
            return Err(error(format!(
                "{} failed: {}{}",
                args[0],
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server binaries' directory (`pg_recvlogical` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A connection URL for database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with `psql` against database `db`; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .arg(self.url(db))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .map_err(|e| error(format!("cannot run psql: {e}")))?;
        if !out.status.success() {
            return Err(error(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Crashes the server (`pg_ctl stop -m immediate`, no shutdown checkpoint) and starts it
    /// again on the same port: what a power loss and a restart look like to clients.
    pub fn crash_and_restart(&self) -> Result<()> {
        self.stop_mode("immediate")?;
        self.pg_start()
    }

    fn stop_mode(&self, mode: &str) -> Result<()> {
        let data = self.dir.join("data");
        self.run(&[
            self.bin.join("pg_ctl").to_str().unwrap_or("pg_ctl"),
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            mode,
            "-w",
            "stop",
        ])
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = self.stop_mode(if self.remove_on_drop { "immediate" } else { "fast" });
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
