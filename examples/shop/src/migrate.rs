//! Versioned schema migrations that run on PostgreSQL and CockroachDB alike.
//!
//! A migration is a file `NNNN_name.sql` (version `NNNN`, four or more digits; name
//! `[a-z0-9_]+`). [`up`] applies the pending ones in version order, each in its own
//! transaction together with its row in `shop_schema_migrations` (version, name, SHA-256 of the
//! file, when, how long), so a migration is either applied and recorded or neither. Before it
//! applies anything it checks the recorded history against the files and refuses to go on when
//! an applied file was changed ([`MigrateError::ChecksumMismatch`], naming the file and both
//! checksums), deleted, or when a new file sorts below the latest applied version.
//!
//! Why not sqlx's migrator: it serialises concurrent runners with `pg_advisory_lock`, which
//! CockroachDB does not have. This one uses a lock *row* instead: a runner takes the lock by
//! `INSERT … ON CONFLICT (id) DO NOTHING` of the single row of `shop_migration_lock` (it holds
//! the lock when its insert added the row), and releases it by deleting the row. Both databases
//! make that insert atomic, so of two runners started together one migrates and the other
//! waits, then finds nothing pending. A runner that crashes leaves the row behind; the next one
//! waits [`UpOptions::lock_wait`] and then fails naming the holder, and `shop migrate unlock`
//! ([`unlock`]) removes a lock whose holder is known to be gone.
//!
//! The SQL must be portable, which is the author's job: UUID keys (no `SERIAL`), no
//! `CREATE INDEX CONCURRENTLY` (it cannot run in a transaction), no PostgreSQL-only
//! functions or extensions. CockroachDB runs schema changes inside a transaction with some
//! limits (see its "online schema changes" documentation): keep a migration to DDL, or to
//! DML, not both on the same table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

use crate::db::{Db, Isolation, RetryPolicy};
use crate::error::ShopError;

/// The table of applied migrations.
pub const HISTORY_TABLE: &str = "shop_schema_migrations";
/// The table whose single row is the migration lock.
pub const LOCK_TABLE: &str = "shop_migration_lock";

const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));

/// An error of the migrator; each names the file, version or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file in the migrations directory has a bad name or cannot be read.
    #[error("migration file {file}: {message}")]
    BadFile {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Two files have the same version.
    #[error("migration files {first} and {second} have the same version {version}; renumber one")]
    DuplicateVersion {
        /// The version.
        version: u32,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// An applied migration's file changed since.
    #[error(
        "migration {file} was changed after it was applied: the database recorded sha256 {applied}, \
         the file now has sha256 {current}; restore the file and put the change in a new migration"
    )]
    ChecksumMismatch {
        /// The file.
        file: String,
        /// Its version.
        version: u32,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The file's checksum now.
        current: String,
    },
    /// An applied migration's file is gone.
    #[error(
        "migration {version} ({name}) was applied to the database but there is no file for it in {source_name}"
    )]
    MissingFile {
        /// Its version.
        version: u32,
        /// Its recorded name.
        name: String,
        /// Where the files were read from.
        source_name: String,
    },
    /// A pending migration sorts below one already applied.
    #[error(
        "migration {file} is not applied but version {latest} already is; migrations apply in \
         order, so give it a version above {latest}"
    )]
    OutOfOrder {
        /// The pending file.
        file: String,
        /// The latest applied version.
        latest: u32,
    },
    /// Another runner holds the lock.
    #[error(
        "the migration lock is held by {holder} since {since} (waited {waited:?}); if no migration \
         is running, remove it with `shop migrate unlock`"
    )]
    Locked {
        /// Who holds it.
        holder: String,
        /// Since when.
        since: DateTime<Utc>,
        /// How long this runner waited.
        waited: Duration,
    },
    /// A migration's SQL failed; nothing of it was applied.
    #[error("migration {file} failed and was rolled back: {source}")]
    Apply {
        /// The file.
        file: String,
        /// The database's error.
        #[source]
        source: ShopError,
    },
    /// A statement of the migrator itself failed.
    #[error("{what}: {source}")]
    Database {
        /// What the migrator was doing.
        what: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn db_error(what: &'static str) -> impl FnOnce(sqlx::Error) -> MigrateError {
    move |source| MigrateError::Database { what, source }
}

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Its version (the number the file name starts with).
    pub version: u32,
    /// Its name (the rest of the file name).
    pub name: String,
    /// The file name.
    pub file: String,
    /// The SQL.
    pub sql: String,
    /// Hex SHA-256 of the file's bytes.
    pub checksum: String,
}

impl Migration {
    /// A migration from its file name and contents.
    pub fn new(file: &str, sql: &str) -> Result<Self, MigrateError> {
        let (version, name) = parse_file_name(file).map_err(|message| MigrateError::BadFile {
            file: file.to_string(),
            message,
        })?;
        Ok(Self {
            version,
            name,
            file: file.to_string(),
            sql: sql.to_string(),
            checksum: hex::encode(Sha256::digest(sql.as_bytes())),
        })
    }
}

/// Splits `NNNN_name.sql` into its version and name.
pub fn parse_file_name(file: &str) -> Result<(u32, String), String> {
    let expected =
        "expected NNNN_name.sql: a version of at least four digits, '_', a name of a-z, 0-9 and '_'";
    let stem = file.strip_suffix(".sql").ok_or_else(|| expected.to_string())?;
    let (digits, name) = stem.split_once('_').ok_or_else(|| expected.to_string())?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected.to_string());
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(expected.to_string());
    }
    let version = digits
        .parse::<u32>()
        .map_err(|_| format!("version {digits} is too large"))?;
    if version == 0 {
        return Err("versions start at 0001".to_string());
    }
    Ok((version, name.to_string()))
}

/// The migrations of one source, in version order.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    source: String,
    migrations: Vec<Migration>,
}

impl MigrationSet {
    /// The shop's own migrations, compiled into the library from `examples/shop/migrations`.
    pub fn embedded() -> Result<Self, MigrateError> {
        Self::from_files("the migrations built into shop", EMBEDDED.iter().copied())
    }

    /// The `*.sql` files of `dir` (other files, such as a README, are ignored).
    pub fn from_dir(dir: &Path) -> Result<Self, MigrateError> {
        let io = |source| MigrateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.ends_with(".sql") || file.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let sql = std::fs::read_to_string(&path).map_err(|e| MigrateError::BadFile {
                file: path.display().to_string(),
                message: format!("cannot read it: {e}"),
            })?;
            files.push((file, sql));
        }
        Self::from_files(
            &dir.display().to_string(),
            files.iter().map(|(f, s)| (f.as_str(), s.as_str())),
        )
    }

    /// Migrations from (file name, SQL) pairs; `source` names where they came from.
    pub fn from_files<'a>(
        source: &str,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, MigrateError> {
        let mut migrations = files
            .into_iter()
            .map(|(file, sql)| Migration::new(file, sql))
            .collect::<Result<Vec<_>, _>>()?;
        migrations.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.file.cmp(&b.file)));
        if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(MigrateError::DuplicateVersion {
                version: pair[0].version,
                first: pair[0].file.clone(),
                second: pair[1].file.clone(),
            });
        }
        Ok(Self {
            source: source.to_string(),
            migrations,
        })
    }

    /// The migrations in version order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// Where they came from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Creates `dir/NNNN_name.sql` with the next free version and a template; returns its path.
/// `name` is lower-cased and every run of other characters than a-z and 0-9 becomes `_`.
pub fn new_migration(dir: &Path, name: &str) -> Result<PathBuf, MigrateError> {
    let mut slug = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('_') && !slug.is_empty() {
            slug.push('_');
        }
    }
    let slug = slug.trim_end_matches('_').to_string();
    if slug.is_empty() {
        return Err(MigrateError::BadFile {
            file: name.to_string(),
            message: "the migration name needs letters or digits".to_string(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| MigrateError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let next = MigrationSet::from_dir(dir)?
        .migrations
        .last()
        .map_or(1, |m| m.version + 1);
    let file = format!("{next:04}_{slug}.sql");
    let path = dir.join(&file);
    let template = format!(
        "-- {file}: describe the change here.\n\
         --\n\
         -- Applied in one transaction, on PostgreSQL and CockroachDB alike: UUID keys made by the\n\
         -- application (no SERIAL), BIGINT rather than INT, named constraints, no\n\
         -- CREATE INDEX CONCURRENTLY. Once applied anywhere, never edit this file: add another.\n\n"
    );
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| MigrateError::Io {
            path: path.clone(),
            source,
        })?;
    std::io::Write::write_all(&mut out, template.as_bytes()).map_err(|source| MigrateError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A migration [`up`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its version.
    pub version: u32,
    /// Its file.
    pub file: String,
    /// How long it took.
    pub duration: Duration,
}

/// The state of one migration, for [`status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Applied, and the file is unchanged.
    Applied {
        /// When.
        at: DateTime<Utc>,
    },
    /// Applied, but the file changed since.
    Changed {
        /// When it was applied.
        at: DateTime<Utc>,
        /// The checksum recorded then.
        applied: String,
    },
    /// Applied, but there is no file for it.
    MissingFile {
        /// When.
        at: DateTime<Utc>,
    },
    /// Not applied yet.
    Pending,
}

/// One line of [`status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The version.
    pub version: u32,
    /// The name (from the file, or as recorded when the file is missing).
    pub name: String,
    /// The state.
    pub state: State,
}

impl std::fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Applied { at } => format!("applied {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
            State::Changed { at, .. } => format!(
                "CHANGED since it was applied {} (checksum differs)",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            State::MissingFile { at } => format!(
                "applied {} but its file is MISSING",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            State::Pending => "pending".to_string(),
        };
        write!(f, "{:04}  {:<40}  {state}", self.version, self.name)
    }
}

/// A row of the history table.
#[derive(Debug, Clone, sqlx::FromRow)]
struct HistoryRow {
    version: i64,
    name: String,
    checksum: String,
    applied_at: DateTime<Utc>,
}

async fn history(pool: &PgPool) -> Result<Vec<HistoryRow>, MigrateError> {
    sqlx::query_as::<_, HistoryRow>(&format!(
        "SELECT version, name, checksum, applied_at FROM {HISTORY_TABLE} ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .map_err(db_error("reading the migration history"))
}

async fn history_exists(pool: &PgPool) -> Result<bool, MigrateError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind(HISTORY_TABLE)
    .fetch_one(pool)
    .await
    .map_err(db_error("looking for the migration history table"))?;
    Ok(n > 0)
}

/// Every migration known to the files or the database, with its state. Reads only: it creates
/// no table, takes no lock.
pub async fn status(pool: &PgPool, set: &MigrationSet) -> Result<Vec<MigrationStatus>, MigrateError> {
    let applied = if history_exists(pool).await? {
        history(pool).await?
    } else {
        Vec::new()
    };
    let mut out: Vec<MigrationStatus> = set
        .migrations
        .iter()
        .map(|m| {
            let state = match applied.iter().find(|a| a.version == i64::from(m.version)) {
                Some(a) if a.checksum == m.checksum => State::Applied { at: a.applied_at },
                Some(a) => State::Changed {
                    at: a.applied_at,
                    applied: a.checksum.clone(),
                },
                None => State::Pending,
            };
            MigrationStatus {
                version: m.version,
                name: m.name.clone(),
                state,
            }
        })
        .collect();
    for a in &applied {
        if !set.migrations.iter().any(|m| i64::from(m.version) == a.version) {
            out.push(MigrationStatus {
                version: u32::try_from(a.version).unwrap_or(u32::MAX),
                name: a.name.clone(),
                state: State::MissingFile { at: a.applied_at },
            });
        }
    }
    out.sort_by_key(|s| s.version);
    Ok(out)
}

/// How [`up_with`] behaves.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How long to wait for another runner's lock before failing.
    pub lock_wait: Duration,
    /// Who this runner is, as recorded in the lock row.
    pub holder: String,
}

impl Default for UpOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "an unknown host".to_string());
        Self {
            lock_wait: Duration::from_secs(60),
            holder: format!(
                "shop pid {} on {host} ({})",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }
}

/// Applies the pending migrations of `set` with the default [`UpOptions`]; returns those
/// applied (none when the database is up to date).
pub async fn up(pool: &PgPool, set: &MigrationSet) -> Result<Vec<Applied>, MigrateError> {
    up_with(pool, set, &UpOptions::default()).await
}

/// Applies the pending migrations of `set`, as the module doc describes.
pub async fn up_with(
    pool: &PgPool,
    set: &MigrationSet,
    options: &UpOptions,
) -> Result<Vec<Applied>, MigrateError> {
    bootstrap(pool).await?;
    acquire_lock(pool, options).await?;
    let result = apply_pending(pool, set).await;
    let released = release_lock(pool, &options.holder).await;
    let applied = result?;
    released?;
    Ok(applied)
}

/// Removes the migration lock, whoever holds it; returns whether there was one.
pub async fn unlock(pool: &PgPool) -> Result<Option<String>, MigrateError> {
    if !history_exists(pool).await? {
        return Ok(None);
    }
    let holder: Option<String> =
        sqlx::query_scalar(&format!("DELETE FROM {LOCK_TABLE} WHERE id = 1 RETURNING holder"))
            .fetch_optional(pool)
            .await
            .map_err(db_error("removing the migration lock"))?;
    Ok(holder)
}

/// Creates the history and lock tables if they are missing. Two runners doing so at once can
/// make PostgreSQL report a duplicate catalog entry (`23505`, `42P07`, or `42710` for the
/// table's row type) despite `IF NOT EXISTS`; the loser tries again and finds the table.
async fn bootstrap(pool: &PgPool) -> Result<(), MigrateError> {
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
                version      BIGINT      NOT NULL,
                name         TEXT        NOT NULL,
                checksum     TEXT        NOT NULL,
                applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
                execution_ms BIGINT      NOT NULL,
                CONSTRAINT {HISTORY_TABLE}_pkey PRIMARY KEY (version)
            )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (
                id          BIGINT      NOT NULL,
                holder      TEXT        NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                CONSTRAINT {LOCK_TABLE}_pkey PRIMARY KEY (id),
                CONSTRAINT {LOCK_TABLE}_single_row CHECK (id = 1)
            )"
        ),
    ];
    for statement in &statements {
        let mut tries = 0;
        loop {
            tries += 1;
            match sqlx::raw_sql(statement).execute(pool).await {
                Ok(_) => break,
                Err(e)
                    if tries < 5
                        && matches!(
                            crate::error::sqlstate(&e).as_deref(),
                            Some("23505" | "42P07" | "42710" | "40001")
                        ) =>
                {
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(e) => return Err(db_error("creating the migration tables")(e)),
            }
        }
    }
    Ok(())
}

async fn acquire_lock(pool: &PgPool, options: &UpOptions) -> Result<(), MigrateError> {
    let started = Instant::now();
    loop {
        let taken = sqlx::query(&format!(
            "INSERT INTO {LOCK_TABLE} (id, holder, acquired_at) VALUES (1, $1, now()) ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&options.holder)
        .execute(pool)
        .await
        .map_err(db_error("taking the migration lock"))?
        .rows_affected()
            == 1;
        if taken {
            return Ok(());
        }
        let row = sqlx::query(&format!(
            "SELECT holder, acquired_at FROM {LOCK_TABLE} WHERE id = 1"
        ))
        .fetch_optional(pool)
        .await
        .map_err(db_error("reading the migration lock"))?;
        let Some(row) = row else {
            continue; // released between our insert and our read
        };
        if started.elapsed() >= options.lock_wait {
            return Err(MigrateError::Locked {
                holder: row.get("holder"),
                since: row.get("acquired_at"),
                waited: started.elapsed(),
            });
        }
        tracing::info!(
            holder = row.get::<String, _>("holder"),
            "waiting for the migration lock"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn release_lock(pool: &PgPool, holder: &str) -> Result<(), MigrateError> {
    sqlx::query(&format!("DELETE FROM {LOCK_TABLE} WHERE id = 1 AND holder = $1"))
        .bind(holder)
        .execute(pool)
        .await
        .map_err(db_error("releasing the migration lock"))?;
    Ok(())
}

/// Checks the history against `set` and applies what is pending; the caller holds the lock.
async fn apply_pending(pool: &PgPool, set: &MigrationSet) -> Result<Vec<Applied>, MigrateError> {
    let applied = history(pool).await?;
    for row in &applied {
        match set
            .migrations
            .iter()
            .find(|m| i64::from(m.version) == row.version)
        {
            None => {
                return Err(MigrateError::MissingFile {
                    version: u32::try_from(row.version).unwrap_or(u32::MAX),
                    name: row.name.clone(),
                    source_name: set.source.clone(),
                });
            }
            Some(m) if m.checksum != row.checksum => {
                return Err(MigrateError::ChecksumMismatch {
                    file: m.file.clone(),
                    version: m.version,
                    applied: row.checksum.clone(),
                    current: m.checksum.clone(),
                });
            }
            Some(_) => {}
        }
    }
    let latest = applied.iter().map(|r| r.version).max();
    let pending: Vec<&Migration> = set
        .migrations
        .iter()
        .filter(|m| !applied.iter().any(|r| r.version == i64::from(m.version)))
        .collect();
    if let (Some(latest), Some(first)) = (latest, pending.first())
        && i64::from(first.version) < latest
    {
        return Err(MigrateError::OutOfOrder {
            file: first.file.clone(),
            latest: u32::try_from(latest).unwrap_or(u32::MAX),
        });
    }
    // DDL rarely conflicts, but on CockroachDB any transaction may be asked to restart.
    let db = Db::with_policy(pool.clone(), RetryPolicy::default());
    let mut done = Vec::new();
    for migration in pending {
        let started = Instant::now();
        let m = migration.clone();
        db.write("apply migration", Isolation::DatabaseDefault, move |conn| {
            let m = m.clone();
            Box::pin(async move {
                let started = Instant::now();
                // A plain string runs as a simple query: several statements, no parameters.
                sqlx::Executor::execute(&mut *conn, m.sql.as_str()).await?;
                let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
                sqlx::query(&format!(
                    "INSERT INTO {HISTORY_TABLE} (version, name, checksum, applied_at, execution_ms) \
                     VALUES ($1, $2, $3, now(), $4)"
                ))
                .bind(i64::from(m.version))
                .bind(&m.name)
                .bind(&m.checksum)
                .bind(elapsed_ms)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await
        .map_err(|source| MigrateError::Apply {
            file: migration.file.clone(),
            source,
        })?;
        tracing::info!(file = %migration.file, "applied migration");
        done.push(Applied {
            version: migration.version,
            file: migration.file.clone(),
            duration: started.elapsed(),
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0001_initial.sql"), Ok((1, "initial".into())));
        assert_eq!(
            parse_file_name("20240101_add_x2.sql"),
            Ok((20240101, "add_x2".into()))
        );
        for bad in [
            "001_x.sql",
            "0001-x.sql",
            "0001_X.sql",
            "0001_.sql",
            "0001_x.SQL",
            "x_0001.sql",
            "0000_x.sql",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_embedded_migrations_parse_in_order() {
        let set = MigrationSet::embedded().unwrap();
        let versions: Vec<u32> = set.migrations().iter().map(|m| m.version).collect();
        assert!(versions.len() >= 2);
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(set.migrations()[0].checksum.len(), 64);
    }

    #[test]
    fn duplicate_versions_are_refused() {
        let err = MigrationSet::from_files("test", [("0001_a.sql", ""), ("0001_b.sql", "")]).unwrap_err();
        assert!(err.to_string().contains("0001_a.sql and 0001_b.sql"), "{err}");
    }

    #[test]
    fn new_numbers_after_the_last_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = new_migration(dir.path(), "Add Customers!").unwrap();
        assert!(first.ends_with("0001_add_customers.sql"), "{}", first.display());
        std::fs::write(dir.path().join("0007_x.sql"), "").unwrap();
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        let next = new_migration(dir.path(), "loyalty points").unwrap();
        assert!(next.ends_with("0008_loyalty_points.sql"), "{}", next.display());
        assert!(new_migration(dir.path(), "!!!").is_err());
    }
}
