//! The `shop` command: serve the API, migrate the schema, seed reference data, generate load.
//! A thin layer over the `shop` library; `shop --help` lists everything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use shop::config::Settings;
use shop::migrate::{self, MigrationSet, State};

#[derive(Parser)]
#[command(
    name = "shop",
    version,
    about = "The shop service: customers, products, orders and payments on PostgreSQL or CockroachDB",
    after_help = "Database settings come from the config file, SHOP_DATABASE_URL and SHOP_DB_* \
                  variables (see README.md). Logs go to stderr; SHOP_LOG sets the level (info)."
)]
struct Cli {
    /// Config file (TOML); default: $SHOP_CONFIG, else none.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL, over every other database setting.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API until interrupted.
    Serve {
        /// Address to listen on; default: the `listen` setting (127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Apply the built-in migrations first.
        #[arg(long)]
        migrate: bool,
    },
    /// Create, apply and inspect schema migrations.
    Migrate {
        /// Read migrations from this directory instead of those built into shop.
        #[arg(long, global = true, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Insert made-up customers and products.
    Seed {
        /// Customers to add.
        #[arg(long, default_value_t = 100)]
        customers: u64,
        /// Products to add.
        #[arg(long, default_value_t = 50)]
        products: u64,
    },
    /// Generate order traffic through the HTTP API.
    Load {
        /// Operations started per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// How long, e.g. 30s, 5m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// The shop to drive; default: start one in this process on the configured database.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Most operations in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Print the effective settings (the password hidden) and check that they are valid.
    Config,
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply pending migrations in order, each in a transaction.
    Up,
    /// List migrations and their state; exits 1 if an applied one changed or is missing.
    Status,
    /// Create migrations/NNNN_NAME.sql (or in --dir) with the next version.
    New {
        /// What the migration does, e.g. "add loyalty points".
        name: String,
    },
    /// Remove a migration lock left by a runner that died.
    Unlock,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOP_LOG")
                // sqlx logs the server's "no transaction in progress" notice when it rolls back
                // a transaction whose COMMIT failed with 40001 (and was retried): noise.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=error")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shop: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shop: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    Ok(Settings::from_env(
        cli.config.as_deref(),
        cli.database_url.as_deref(),
    )?)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Config => {
            let s = settings(&cli)?;
            println!("database         {}", s.database);
            println!(
                "password         {}",
                if s.database.password.is_some() {
                    "(set)"
                } else {
                    "(none)"
                }
            );
            println!("pool size        {}", s.database.pool_size);
            println!("connect timeout  {:?}", s.database.connect_timeout);
            println!("listen           {}", s.listen);
            println!(
                "retry            {} attempts, backoff {:?} doubling to {:?}, full jitter",
                s.retry.max_attempts, s.retry.base_delay, s.retry.max_delay
            );
        }
        Command::Serve {
            listen,
            migrate: apply,
        } => {
            let s = settings(&cli)?;
            let pool = s.database.connect().await?;
            if *apply {
                report_applied(&migrate::up(&pool, &MigrationSet::embedded()?).await?);
            }
            let addr = listen.unwrap_or(s.listen);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!(
                "shop: serving http://{} (database {})",
                listener.local_addr()?,
                s.database
            );
            let app = shop::App::with_retry_policy(pool, s.retry);
            shop::serve_app(listener, app, shutdown_signal()).await?;
        }
        Command::Migrate { dir, action } => {
            let set = || -> Result<MigrationSet> {
                Ok(match dir {
                    Some(dir) => MigrationSet::from_dir(dir)?,
                    None => MigrationSet::embedded()?,
                })
            };
            match action {
                MigrateAction::New { name } => {
                    let dir = dir.clone().unwrap_or_else(|| PathBuf::from("migrations"));
                    let path = migrate::new_migration(&dir, name)?;
                    println!("created {}", path.display());
                }
                MigrateAction::Up => {
                    let set = set()?;
                    let pool = settings(&cli)?.database.connect().await?;
                    let applied = migrate::up(&pool, &set).await?;
                    report_applied(&applied);
                }
                MigrateAction::Status => {
                    let set = set()?;
                    let pool = settings(&cli)?.database.connect().await?;
                    let lines = migrate::status(&pool, &set).await?;
                    println!("migrations from {}", set.source());
                    for line in &lines {
                        println!("{line}");
                    }
                    if lines
                        .iter()
                        .any(|l| matches!(l.state, State::Changed { .. } | State::MissingFile { .. }))
                    {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                MigrateAction::Unlock => {
                    let pool = settings(&cli)?.database.connect().await?;
                    match migrate::unlock(&pool).await? {
                        Some(holder) => println!("removed the migration lock of {holder}"),
                        None => println!("there was no migration lock"),
                    }
                }
            }
        }
        Command::Seed { customers, products } => {
            let s = settings(&cli)?;
            let pool = s.database.connect().await?;
            let db = shop::db::Db::with_policy(pool, s.retry);
            let summary = shop::seed::seed(&db, *customers, *products).await?;
            println!(
                "added {} customers and {} products",
                summary.customers, summary.products
            );
        }
        Command::Load {
            rate,
            duration,
            url,
            concurrency,
        } => {
            let mut options = shop::load::LoadOptions {
                rate: *rate,
                duration: *duration,
                concurrency: *concurrency,
                ..Default::default()
            };
            let report = |p: &shop::load::Progress| eprintln!("{p}");
            let summary = match url {
                Some(url) => {
                    options.url = url.clone();
                    shop::load::run(&options, report).await?
                }
                None => {
                    // A shop in this process, on the configured database.
                    let s = settings(&cli)?;
                    let pool = s.database.connect().await?;
                    let pending = migrate::status(&pool, &MigrationSet::embedded()?)
                        .await?
                        .into_iter()
                        .filter(|l| l.state == State::Pending)
                        .count();
                    if pending > 0 {
                        bail!("the database has {pending} pending migrations: run `shop migrate up` first");
                    }
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    options.url = format!("http://{}", listener.local_addr()?);
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let app = shop::App::with_retry_policy(pool, s.retry);
                    let server = tokio::spawn(shop::serve_app(listener, app, async move {
                        let _ = stopped.await;
                    }));
                    let summary = shop::load::run(&options, report).await;
                    let _ = stop.send(());
                    server.await??;
                    summary?
                }
            };
            print!("{summary}");
            if summary.errors > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_applied(applied: &[migrate::Applied]) {
    if applied.is_empty() {
        println!("the database is up to date");
    }
    for a in applied {
        println!("applied {} in {:.1?}", a.file, a.duration);
    }
}
