//! The harness: a real PostgreSQL (from `tarn-test-utils`) with the shop's schema, the shop
//! serving on 127.0.0.1:0 in this process, and an HTTP client that talks to it.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use shop::App;
use shop::config::DatabaseSettings;
use shop::db::RetryPolicy;
use shop::migrate::{self, MigrationSet};
use sqlx::PgPool;
use tarn_test_utils::PostgresServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Starts a PostgreSQL and creates database `db` in it.
pub async fn postgres_with_database(db: &str) -> Result<PostgresServer> {
    let pg = tokio::task::spawn_blocking(tarn_test_utils::start_postgres).await??;
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))?;
    Ok(pg)
}

/// A pool on database `db` of `pg`.
pub async fn pool(pg: &PostgresServer, db: &str) -> Result<PgPool> {
    Ok(DatabaseSettings::from_url(&pg.url(db))?.connect().await?)
}

/// A shop on a fresh, migrated database.
pub struct TestShop {
    pub pg: PostgresServer,
    pub pool: PgPool,
    pub app: App,
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestShop {
    pub async fn start() -> Result<Self> {
        Self::start_with(RetryPolicy::default()).await
    }

    pub async fn start_with(policy: RetryPolicy) -> Result<Self> {
        let pg = postgres_with_database("shop").await?;
        let pool = pool(&pg, "shop").await?;
        migrate::up(&pool, &MigrationSet::embedded()?).await?;
        let app = App::with_retry_policy(pool.clone(), policy);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(shop::serve_app(listener, app.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            pg,
            pool,
            app,
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))?
        };
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Sends raw bytes as a JSON body.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &'static str,
    ) -> Result<(u16, Value)> {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// POSTs and expects 201; returns the body.
    pub async fn create(&self, path: &str, body: Value) -> Result<Value> {
        let (status, value) = self.post(path, body.clone()).await?;
        anyhow::ensure!(status == 201, "POST {path} {body}: {status} {value}");
        Ok(value)
    }

    pub async fn customer(&self, email: &str) -> Result<String> {
        let c = self
            .create(
                "/customers",
                serde_json::json!({"email": email, "name": "Test Customer"}),
            )
            .await?;
        Ok(c["id"].as_str().unwrap().to_string())
    }

    pub async fn product(&self, sku: &str, price: &str, stock: i64) -> Result<String> {
        let p = self
            .create(
                "/products",
                serde_json::json!({"sku": sku, "name": "Test Product", "price": price, "stock": stock}),
            )
            .await?;
        Ok(p["id"].as_str().unwrap().to_string())
    }

    pub async fn stock(&self, product: &str) -> Result<i64> {
        let (status, p) = self.get(&format!("/products/{product}")).await?;
        anyhow::ensure!(status == 200, "GET product: {status} {p}");
        Ok(p["stock"].as_i64().unwrap())
    }

    /// The value of counter `name` (with its labels, e.g. `x{class="2xx"}`) on `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<u64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .with_context(|| format!("no {name} in /metrics:\n{text}"))?
            .trim()
            .parse()
            .context("a counter value")
    }
}

impl Drop for TestShop {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The string at `key` of a JSON object.
pub fn s(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {value}"))
        .to_string()
}
