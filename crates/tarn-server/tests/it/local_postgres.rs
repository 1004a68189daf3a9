//! The private PostgreSQL of `tarn demo` and `tarn bench cdc` under a directory that the
//! `postgres` user (as which PostgreSQL runs when tarn runs as root) cannot enter.

use std::os::unix::fs::PermissionsExt;

use tarn_cdc::postgres::local::LocalPostgres;
use tarn_test_utils::free_port;

fn is_root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A directory of mode 0700: as root, one only root can enter (a home directory).
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tarn-private-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn scratch_postgres_moves_out_of_a_directory_its_user_cannot_enter() {
    let private = private_dir();
    let preferred = private.path().join("postgres");
    if is_root() {
        // Where the cluster must stay put, the error names the directory in the way.
        let err = LocalPostgres::start_in(&preferred, free_port()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("cannot enter {} (mode 700", private.path().display())),
            "{message}"
        );
        std::fs::remove_dir_all(&preferred).unwrap();
    }
    let pg = LocalPostgres::start_scratch(&preferred).unwrap();
    assert_eq!(pg.psql("postgres", "SELECT 6 * 7").unwrap().trim(), "42");
    if is_root() {
        assert!(!pg.dir().starts_with(private.path()), "{}", pg.dir().display());
        assert!(!preferred.exists(), "{} was left behind", preferred.display());
    } else {
        assert_eq!(pg.dir(), preferred);
    }
    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// `tarn bench cdc --dir DIR` under a private directory: the regression this guards against
/// was initdb's "Permission denied". The benchmark runs in this process, through the library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_cdc_runs_under_a_private_directory() {
    let private = private_dir();
    let config = crate::config_for(&private.path().join("data"), &[]);
    let options = tarn_server::bench_cdc::CdcBenchOptions {
        rows: 1000,
        changes: 200,
        writers: 1,
        freshness_seconds: 1,
        rate: 50,
        source: None,
        dir: private.path().join("bench"),
        cockroach_contract: false,
        latest_flush: Some("60s".into()),
    };
    let report = tarn_server::bench_cdc::run(&config, options).await.unwrap();
    let placed = report
        .postgres_dir
        .clone()
        .expect("no private PostgreSQL reported");
    assert_eq!(
        is_root(),
        !placed.starts_with(private.path()),
        "{}",
        placed.display()
    );
    assert_eq!(report.snapshot_rows, 1000);
    assert!(report.snapshot_seconds > 0.0, "{report:?}");
    assert_eq!(report.backlog_changes, 200, "{report:?}");
    assert!(!report.freshness.is_empty(), "{report:?}");
    // Probes read through the pipeline's pending changes: visible long before a 60 s flush.
    assert!(!report.latest_freshness.is_empty(), "{report:?}");
    assert!(report.latest_freshness.iter().all(|&s| s < 30.0), "{report:?}");
}
