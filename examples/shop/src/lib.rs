//! `shop`: the application of tarn's data flow — an online shop (customers, products, orders
//! with items, payments) on PostgreSQL or CockroachDB, whose committed changes tarn's change
//! data capture streams into the lake.
//!
//! It is a library with a thin binary, so tarn's `demo` command can run it in process:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let settings = shop::config::DatabaseSettings::from_url("postgres://postgres@127.0.0.1:5432/shop")?;
//! let pool = settings.connect().await?;
//! shop::migrate::up(&pool, &shop::migrate::MigrationSet::embedded()?).await?;
//! shop::seed::seed(&shop::db::Db::new(pool.clone()), 100, 50).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(shop::serve(listener, pool, async move { let _ = stopped.await; }));
//! let options = shop::load::LoadOptions { url, ..Default::default() };
//! let summary = shop::load::run(&options, |progress| eprintln!("{progress}")).await?;
//! println!("{summary}");
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`config`] | settings from a file and `SHOP_*` variables; TLS (`sslmode` up to `verify-full`, client certificates) |
//! | [`migrate`] | versioned SQL migrations with checksums and a lock row (no advisory locks) |
//! | [`db`] | [`db::Db::write`]: every write transaction, retried on SQLSTATE 40001 with jittered backoff |
//! | [`model`] | the rows, read with sqlx `FromRow` |
//! | [`store`] | validation and the SQL of every operation |
//! | [`api`] | the JSON/HTTP API (axum) |
//! | [`seed`] | reference data |
//! | [`load`] | the workload generator |

pub mod api;
pub mod config;
pub mod db;
pub mod error;
pub mod load;
pub mod migrate;
pub mod model;
pub mod seed;
pub mod store;

use std::future::Future;

pub use api::App;
pub use error::ShopError;

/// Serves the shop's HTTP API on `listener` over `pool` until `shutdown` completes, then
/// finishes the requests in flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: sqlx::PgPool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener, App::new(pool), shutdown).await
}

/// [`serve`] with a prepared [`App`] (its own retry policy; keep a clone to read its counters).
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "shop listening");
    }
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown)
        .await
}
