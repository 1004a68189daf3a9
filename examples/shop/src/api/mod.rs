//! The shop's HTTP API: JSON over HTTP/1.1 with axum.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /healthz` | 200 when the database answers, else 503 |
//! | `GET /metrics` | transaction and response counters, Prometheus text format |
//! | `POST /customers`, `GET /customers` | create; list (`limit`, `after`) |
//! | `GET`, `PATCH`, `DELETE /customers/{id}` | read; change `email`/`name`; delete (409 if the customer has orders) |
//! | `POST /products`, `GET /products` | create; list |
//! | `GET`, `PATCH`, `DELETE /products/{id}` | read; change `sku`/`name`/`price`/`stock`; delete (409 if ordered) |
//! | `POST /products/{id}/restock` | add `quantity` to the stock |
//! | `POST /orders`, `GET /orders` | place (stock checked, total computed); list (`customer_id`, `status`, `limit`, `after`) |
//! | `GET`, `PATCH`, `DELETE /orders/{id}` | read with items; change `status`; delete a pending/cancelled order |
//! | `PATCH`, `DELETE /orders/{id}/items/{product_id}` | change an item's `quantity`; remove it |
//! | `POST /payments`, `GET /payments` | pay (the order becomes paid when covered); list (`order_id`, `limit`, `after`) |
//! | `GET`, `PATCH`, `DELETE /payments/{id}` | read; refund (`{"status": "refunded"}`); delete a refunded one |
//!
//! Creates answer 201 with the row, deletes 204, the rest 200. Lists answer
//! `{"items": [...], "next_after": id-or-null}` in id order. Errors are described in
//! [`error`]. Every write runs through [`crate::db::Db::write`]: orders and payments at
//! SERIALIZABLE isolation, customers and products (single-row writes) at the database default.

pub mod error;
pub mod extract;
mod handlers;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sqlx::PgPool;

use crate::db::{Db, RetryPolicy};

/// The service's state: the database handle and the response counters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct App {
    db: Db,
    responses: Arc<ResponseCounts>,
}

#[derive(Debug, Default)]
struct ResponseCounts {
    by_class: [AtomicU64; 5],
}

impl App {
    /// A service over `pool` with the default retry policy.
    pub fn new(pool: PgPool) -> Self {
        Self::with_retry_policy(pool, RetryPolicy::default())
    }

    /// A service over `pool` retrying transactions per `policy`.
    pub fn with_retry_policy(pool: PgPool, policy: RetryPolicy) -> Self {
        Self {
            db: Db::with_policy(pool, policy),
            responses: Arc::default(),
        }
    }

    /// The database handle (its [`Db::stats`] are the transaction counters).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The axum router of the API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route(
                "/customers",
                post(handlers::create_customer).get(handlers::list_customers),
            )
            .route(
                "/customers/{id}",
                get(handlers::get_customer)
                    .patch(handlers::update_customer)
                    .delete(handlers::delete_customer),
            )
            .route(
                "/products",
                post(handlers::create_product).get(handlers::list_products),
            )
            .route(
                "/products/{id}",
                get(handlers::get_product)
                    .patch(handlers::update_product)
                    .delete(handlers::delete_product),
            )
            .route("/products/{id}/restock", post(handlers::restock_product))
            .route("/orders", post(handlers::create_order).get(handlers::list_orders))
            .route(
                "/orders/{id}",
                get(handlers::get_order)
                    .patch(handlers::update_order)
                    .delete(handlers::delete_order),
            )
            .route(
                "/orders/{id}/items/{product_id}",
                axum::routing::patch(handlers::update_order_item).delete(handlers::delete_order_item),
            )
            .route(
                "/payments",
                post(handlers::create_payment).get(handlers::list_payments),
            )
            .route(
                "/payments/{id}",
                get(handlers::get_payment)
                    .patch(handlers::update_payment)
                    .delete(handlers::delete_payment),
            )
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(self.clone(), count_responses))
            .with_state(self.clone())
    }
}

async fn count_responses(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let class = usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1;
    app.responses.by_class[class].fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%method, path, status = response.status().as_u16(), "request");
    response
}

async fn not_found() -> error::ApiError {
    crate::error::ShopError::Malformed("no such endpoint; see the shop's README for the API".into()).into()
}

async fn healthz(State(app): State<App>) -> Response {
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(app.db.pool()),
    )
    .await;
    match ping {
        Ok(Ok(_)) => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response(),
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable("the database did not answer within 2 s"),
    }
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"status": "unavailable", "error": why})),
    )
        .into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    let tx = app.db.stats();
    let mut out = String::new();
    for (name, help, value) in [
        (
            "shop_transaction_attempts_total",
            "Transactions begun, retries included.",
            tx.attempts,
        ),
        (
            "shop_transactions_committed_total",
            "Transactions committed.",
            tx.committed,
        ),
        (
            "shop_transaction_retries_total",
            "Transactions run again after a serialization failure (SQLSTATE 40001) or deadlock.",
            tx.retries,
        ),
        (
            "shop_transactions_exhausted_total",
            "Writes that failed with 503 because every retry hit a serialization failure.",
            tx.exhausted,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP shop_http_responses_total HTTP responses by status class.\n# TYPE shop_http_responses_total counter"
    );
    for (i, count) in app.responses.by_class.iter().enumerate() {
        let _ = writeln!(
            out,
            "shop_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            count.load(Ordering::Relaxed)
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
