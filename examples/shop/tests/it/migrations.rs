//! The migrator against a real PostgreSQL: fresh, re-run, tampered, missing, out of order,
//! failing, concurrent runners, a stale lock; and the `shop migrate` commands.

use std::process::Command;
use std::time::Duration;

use shop::migrate::{self, MigrateError, MigrationSet, State, UpOptions};

use crate::common::{pool, postgres_with_database};

#[tokio::test]
async fn fresh_then_rerun_then_tampered() -> anyhow::Result<()> {
    let pg = postgres_with_database("shop").await?;
    let pool = pool(&pg, "shop").await?;
    let set = MigrationSet::embedded()?;

    // Fresh: everything pending, then applied in order.
    let status = migrate::status(&pool, &set).await?;
    assert!(status.iter().all(|s| s.state == State::Pending), "{status:?}");
    let applied = migrate::up(&pool, &set).await?;
    let files: Vec<&str> = applied.iter().map(|a| a.file.as_str()).collect();
    assert_eq!(
        files,
        ["0001_customers_and_products.sql", "0002_orders_and_payments.sql"]
    );
    let tables = pg.psql(
        "shop",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'",
    )?;
    assert_eq!(
        tables.trim(),
        "customers,order_items,orders,payments,products,shop_migration_lock,shop_schema_migrations"
    );
    let recorded = pg.psql(
        "shop",
        "SELECT version || ':' || checksum FROM shop_schema_migrations ORDER BY version",
    )?;
    let expected: Vec<String> = set
        .migrations()
        .iter()
        .map(|m| format!("{}:{}", m.version, m.checksum))
        .collect();
    assert_eq!(recorded.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM shop_migration_lock")?
            .trim(),
        "0",
        "lock released"
    );

    // Re-run: a no-op.
    assert!(migrate::up(&pool, &set).await?.is_empty());
    let status = migrate::status(&pool, &set).await?;
    assert!(
        status.iter().all(|s| matches!(s.state, State::Applied { .. })),
        "{status:?}"
    );

    // Tampered: an applied file changed.
    let mut files: Vec<(String, String)> = set
        .migrations()
        .iter()
        .map(|m| (m.file.clone(), m.sql.clone()))
        .collect();
    files[0].1.push_str("\n-- an innocent-looking edit\n");
    let tampered = MigrationSet::from_files("test", files.iter().map(|(f, s)| (f.as_str(), s.as_str())))?;
    let err = migrate::up(&pool, &tampered).await.unwrap_err();
    let message = err.to_string();
    match &err {
        MigrateError::ChecksumMismatch {
            file,
            applied,
            current,
            ..
        } => {
            assert_eq!(file, "0001_customers_and_products.sql");
            assert_eq!(applied, &set.migrations()[0].checksum);
            assert_eq!(current, &tampered.migrations()[0].checksum);
            assert!(
                message.contains(file) && message.contains(applied) && message.contains(current),
                "{message}"
            );
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    let status = migrate::status(&pool, &tampered).await?;
    assert!(matches!(status[0].state, State::Changed { .. }), "{status:?}");
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM shop_migration_lock")?
            .trim(),
        "0",
        "lock released after refusal"
    );

    // Missing: an applied file is gone.
    let missing = MigrationSet::from_files(
        "test",
        files[..1]
            .iter()
            .map(|(f, _)| (f.as_str(), set.migrations()[0].sql.as_str())),
    )?;
    let err = migrate::up(&pool, &missing).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::MissingFile { version: 2, .. }),
        "{err}"
    );

    // A new migration applies on top.
    let mut grown: Vec<(&str, &str)> = set
        .migrations()
        .iter()
        .map(|m| (m.file.as_str(), m.sql.as_str()))
        .collect();
    grown.push((
        "0003_loyalty.sql",
        "ALTER TABLE customers ADD COLUMN loyalty_points BIGINT NOT NULL DEFAULT 0;",
    ));
    let grown = MigrationSet::from_files("test", grown)?;
    let applied = migrate::up(&pool, &grown).await?;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].file, "0003_loyalty.sql");
    Ok(())
}

#[tokio::test]
async fn failures_roll_back_and_order_is_enforced() -> anyhow::Result<()> {
    let pg = postgres_with_database("m").await?;
    let pool = pool(&pg, "m").await?;

    // A failing migration leaves nothing behind, and releases the lock.
    let set = MigrationSet::from_files(
        "test",
        [
            ("0001_a.sql", "CREATE TABLE a (id UUID PRIMARY KEY);"),
            (
                "0002_b.sql",
                "CREATE TABLE b (id UUID PRIMARY KEY); INSERT INTO missing_table VALUES (1);",
            ),
        ],
    )?;
    let err = migrate::up(&pool, &set).await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Apply { file, .. } if file == "0002_b.sql"),
        "{err}"
    );
    assert!(err.to_string().contains("missing_table"), "{err}");
    assert_eq!(
        pg.psql(
            "m",
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'b'"
        )?
        .trim(),
        "0"
    );
    assert_eq!(
        pg.psql(
            "m",
            "SELECT string_agg(version::text, ',') FROM shop_schema_migrations"
        )?
        .trim(),
        "1"
    );
    assert_eq!(
        pg.psql("m", "SELECT count(*) FROM shop_migration_lock")?.trim(),
        "0"
    );

    // Fixed, it applies; then a file numbered below the latest applied is refused.
    let set = MigrationSet::from_files(
        "test",
        [
            ("0001_a.sql", "CREATE TABLE a (id UUID PRIMARY KEY);"),
            ("0003_c.sql", "CREATE TABLE c (id UUID PRIMARY KEY);"),
        ],
    )?;
    assert_eq!(migrate::up(&pool, &set).await?.len(), 1);
    let set = MigrationSet::from_files(
        "test",
        [
            ("0001_a.sql", "CREATE TABLE a (id UUID PRIMARY KEY);"),
            ("0002_b.sql", "CREATE TABLE b (id UUID PRIMARY KEY);"),
            ("0003_c.sql", "CREATE TABLE c (id UUID PRIMARY KEY);"),
        ],
    )?;
    let err = migrate::up(&pool, &set).await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::OutOfOrder { file, latest: 3 } if file == "0002_b.sql"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_runners_apply_once_and_a_stale_lock_is_reported() -> anyhow::Result<()> {
    let pg = postgres_with_database("shop").await?;
    let pool = pool(&pg, "shop").await?;
    let set = MigrationSet::embedded()?;

    let runs = (0..4).map(|_| {
        let pool = pool.clone();
        let set = set.clone();
        tokio::spawn(async move { migrate::up(&pool, &set).await })
    });
    let mut applied = 0;
    for run in runs.collect::<Vec<_>>() {
        applied += run.await??.len();
    }
    assert_eq!(
        applied,
        set.migrations().len(),
        "each migration applied exactly once"
    );
    assert_eq!(
        pg.psql("shop", "SELECT count(*) FROM shop_schema_migrations")?
            .trim(),
        "2"
    );

    // A runner that died left its lock: the next one waits, then names the holder.
    pg.psql(
        "shop",
        "INSERT INTO shop_migration_lock (id, holder) VALUES (1, 'shop pid 4242 on gone-host')",
    )?;
    let options = UpOptions {
        lock_wait: Duration::from_millis(300),
        ..Default::default()
    };
    let err = migrate::up_with(&pool, &set, &options).await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Locked { holder, .. } if holder.contains("pid 4242")),
        "{err}"
    );
    assert!(err.to_string().contains("shop migrate unlock"), "{err}");
    assert_eq!(
        migrate::unlock(&pool).await?.as_deref(),
        Some("shop pid 4242 on gone-host")
    );
    assert!(migrate::up_with(&pool, &set, &options).await?.is_empty());
    Ok(())
}

fn shop_command(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    command
        .env("SHOP_DATABASE_URL", database_url)
        .env("SHOP_LOG", "warn");
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHOP_") && k != "SHOP_DATABASE_URL") {
        command.env_remove(name);
    }
    command
}

fn run(command: &mut Command) -> (bool, String, String) {
    let out = command.output().expect("run shop");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_migrate_commands() -> anyhow::Result<()> {
    let pg = postgres_with_database("cli").await?;
    let url = pg.url("cli");
    let dir = tempfile::tempdir()?;
    let migrations = dir.path().join("migrations");
    let d = migrations.to_str().unwrap();

    let (ok, out, err) = run(shop_command(&url).args(["migrate", "new", "Create widgets", "--dir", d]));
    assert!(ok, "{err}");
    assert!(out.contains("0001_create_widgets.sql"), "{out}");
    let file = migrations.join("0001_create_widgets.sql");
    let template = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        format!("{template}CREATE TABLE widgets (id UUID PRIMARY KEY, name TEXT NOT NULL);\n"),
    )?;

    let (ok, out, err) = run(shop_command(&url).args(["migrate", "status", "--dir", d]));
    assert!(ok, "{err}");
    assert!(
        out.contains("0001  create_widgets") && out.contains("pending"),
        "{out}"
    );

    let (ok, out, err) = run(shop_command(&url).args(["migrate", "up", "--dir", d]));
    assert!(ok, "{err}");
    assert!(out.contains("applied 0001_create_widgets.sql"), "{out}");
    let (ok, out, _) = run(shop_command(&url).args(["migrate", "up", "--dir", d]));
    assert!(ok && out.contains("up to date"), "{out}");

    // Edit the applied file: `up` refuses naming it, `status` flags it and exits 1.
    std::fs::write(&file, "CREATE TABLE widgets (id UUID PRIMARY KEY);\n")?;
    let (ok, _, err) = run(shop_command(&url).args(["migrate", "up", "--dir", d]));
    assert!(!ok);
    assert!(
        err.contains("0001_create_widgets.sql") && err.contains("sha256"),
        "{err}"
    );
    let (ok, out, _) = run(shop_command(&url).args(["migrate", "status", "--dir", d]));
    assert!(!ok && out.contains("CHANGED"), "{out}");

    // The built-in migrations and a bad setting.
    let (ok, out, err) = run(shop_command(&pg.url("postgres")).args(["migrate", "up"]));
    assert!(ok, "{err}");
    assert!(out.contains("applied 0002_orders_and_payments.sql"), "{out}");
    let (ok, _, err) = run(shop_command(&url)
        .env("SHOP_DB_PORT", "70000")
        .args(["migrate", "status"]));
    assert!(!ok);
    assert!(err.contains("SHOP_DB_PORT") && err.contains("70000"), "{err}");
    let (ok, _, err) = run(shop_command("postgres://postgres@127.0.0.1:1/cli")
        .env("SHOP_DB_CONNECT_TIMEOUT", "1s")
        .args(["migrate", "status"]));
    assert!(!ok);
    assert!(
        err.contains("cannot connect to postgres://postgres@127.0.0.1:1/cli"),
        "{err}"
    );
    Ok(())
}
