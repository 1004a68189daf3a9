//! tarn's integration tests: one binary, real parts (PostgreSQL, an S3 server, pyiceberg,
//! DuckDB, psql, psycopg, pgjdbc, the example shop, the `tarn` binary itself).

mod airbyte;
#[cfg(feature = "kafka")]
mod archive;
mod audit;
mod bi;
mod bridge;
mod catalog;
mod catalog_kind;
mod cdc;
mod cli;
mod cockroach;
mod console;
mod datahub;
mod demo;
mod federation;
mod foreign;
mod governance;
mod ingest_sql;
mod interop;
mod jobs;
#[cfg(feature = "kafka")]
mod kafka;
mod keycloak;
mod local_postgres;
mod observability;
mod oidc;
mod pgwire;
#[cfg(feature = "kafka")]
mod publish;
mod rest_catalog;
mod row_level;
mod slt;
mod sql;
mod tls;
mod transform;
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tarn_core::Config;
use tarn_lake::Lake;
use tarn_query::{Output, TarnSession};

/// Sends tarn's logs to the test output (shown for failing tests); `TARN_LOG` filters them.
pub(crate) fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("TARN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Every thread's stack of the process `pid`, for the failure message of a process that hung
/// (gdb attaches in batch mode; without gdb, says so). gdb writes to a file, not a pipe: when
/// `pid` is this process, gdb stops the thread that would drain the pipe.
pub(crate) fn thread_stacks(pid: u32) -> String {
    let out = match tempfile::tempfile() {
        Ok(out) => out,
        Err(e) => return format!("no thread stacks of the hung process {pid}: {e}"),
    };
    let run = out.try_clone().and_then(|stdout| {
        std::process::Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-nx",
                "-ex",
                "thread apply all bt 40",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(std::process::Stdio::null())
            .status()
    });
    match run {
        Ok(_) => {
            use std::io::{Read, Seek};
            let mut text = String::new();
            let mut out = out;
            let _ = out.rewind().and_then(|_| out.read_to_string(&mut text));
            format!("threads of the hung process {pid}:\n{text}")
        }
        Err(e) => format!("no thread stacks of the hung process {pid}: gdb: {e}"),
    }
}

/// `step`'s output, or a failure naming `what` with every thread's stack of this process when
/// it takes longer than `limit`: a step that hangs says which one it was, instead of the whole
/// test running into the runner's timeout.
pub(crate) async fn within<T>(
    what: impl std::fmt::Display,
    limit: std::time::Duration,
    step: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, step).await {
        Ok(out) => out,
        Err(_) => {
            eprintln!("{}", thread_stacks(std::process::id()));
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// A lake in a temporary directory (SQLite catalog, local warehouse) unless `catalog_url` says
/// otherwise.
pub(crate) struct TestLake {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: Config,
    pub(crate) session: TarnSession,
}

impl TestLake {
    pub(crate) async fn new() -> Self {
        Self::with(&[]).await
    }

    pub(crate) async fn with(overrides: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new().prefix("tarn-it-").tempdir().unwrap();
        let config = config_for(dir.path(), overrides);
        let lake = Lake::open(&config).await.unwrap();
        let session = TarnSession::new(lake).await.unwrap();
        Self { dir, config, session }
    }

    /// Another session on the same catalog, as another process would have.
    pub(crate) async fn second_session(&self) -> TarnSession {
        let lake = Lake::open(&self.config).await.unwrap();
        TarnSession::new(lake).await.unwrap()
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs SQL and returns the last statement's rows as text lines (`a|b|c`).
    pub(crate) async fn query(&self, sql: &str) -> Vec<String> {
        query(&self.session, sql).await.unwrap()
    }

    /// The current metadata location of table `name` (`ns.table`): changes with every commit.
    pub(crate) async fn metadata_location(&self, name: &str) -> String {
        let ident = tarn_lake::parse_table_name(name).unwrap();
        let table = self.session.lake().load_table(&ident).await.unwrap();
        table.metadata_location().unwrap().to_string()
    }

    pub(crate) async fn exec(&self, sql: &str) {
        query(&self.session, sql).await.unwrap();
    }

    pub(crate) async fn error(&self, sql: &str) -> String {
        match query(&self.session, sql).await {
            Ok(rows) => panic!("expected {sql:?} to fail, got {rows:?}"),
            Err(e) => e.to_string(),
        }
    }
}

pub(crate) fn config_for(dir: &Path, overrides: &[(&str, &str)]) -> Config {
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(dir, None, HashMap::<String, String>::new(), &overrides).unwrap()
}

/// Runs every statement of `sql`; returns the rows of the last one as `a|b|c` lines.
pub(crate) async fn query(session: &TarnSession, sql: &str) -> tarn_core::Result<Vec<String>> {
    let mut lines = Vec::new();
    for statement in TarnSession::prepare(sql)? {
        lines.clear();
        match session.run(&statement).await? {
            Output::Rows(stream) => {
                let batches = datafusion::physical_plan::common::collect(stream)
                    .await
                    .map_err(tarn_query::from_df_error)?;
                lines = render(&batches);
            }
            Output::Command { tag, .. } => lines.push(tag),
        }
    }
    Ok(lines)
}

/// Rows as `a|b|c` lines, NULL as `NULL`.
pub(crate) fn render(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    let mut lines = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters.iter().map(|f| f.value(row).to_string()).collect();
            lines.push(cells.join("|"));
        }
    }
    lines
}

/// The `tarn` binary under test: the one cargo built with the tests, or `TARN_TEST_BIN` (for
/// checkouts that share one target directory, where the last build's binary wins).
pub(crate) fn tarn_bin() -> PathBuf {
    std::env::var_os("TARN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tarn")))
}

/// Runs `tarn` with `--data-dir dir` and `args`; returns (exit ok, stdout, stderr).
pub(crate) fn tarn(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(tarn_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("TARN_DATA_DIR")
        .env_remove("TARN_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
