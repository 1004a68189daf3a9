//! Serialization failures (SQLSTATE 40001) are retried to success, and a budget that runs out
//! answers 503.
//!
//! To make PostgreSQL abort a shop transaction on purpose, the test holds a row lock in a
//! transaction of its own: the shop's SERIALIZABLE transaction takes its snapshot, then waits
//! for the lock; when the test commits its update of the row, PostgreSQL aborts the waiter with
//! "could not serialize access due to concurrent update" (40001). The test waits for the
//! waiters by watching `pg_stat_activity`, not by sleeping.

use std::time::{Duration, Instant};

use serde_json::json;
use shop::db::RetryPolicy;
use sqlx::{Connection, PgConnection};

use crate::common::{TestShop, s};

/// Begins a transaction that updates `product` (taking its row lock) and leaves it open.
async fn hold_product_lock(shop: &TestShop, product: &str) -> anyhow::Result<PgConnection> {
    let mut conn = PgConnection::connect(&shop.pg.url("shop")).await?;
    sqlx::query("BEGIN").execute(&mut conn).await?;
    sqlx::query("UPDATE products SET updated_at = now() WHERE id = $1::uuid")
        .bind(product)
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Waits until `n` of the shop's sessions wait for a lock.
async fn wait_for_lock_waiters(shop: &TestShop, n: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shop' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&shop.pool)
        .await?;
        if waiting >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {waiting} of {n} requests wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_serialization_failure_is_retried_to_success() -> anyhow::Result<()> {
    let shop = std::sync::Arc::new(TestShop::start().await?);
    let customer = shop.customer("r@example.com").await?;
    let product = shop.product("R-1", "2.00", 100).await?;
    let before = shop.metric("shop_transaction_retries_total").await?;

    let mut blocker = hold_product_lock(&shop, &product).await?;
    let request = {
        let shop = shop.clone();
        let body = json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 3}]});
        tokio::spawn(async move { shop.post("/orders", body).await })
    };
    wait_for_lock_waiters(&shop, 1).await?;
    sqlx::query("COMMIT").execute(&mut blocker).await?;

    let (status, order) = request.await??;
    assert_eq!(status, 201, "{order}");
    let after = shop.metric("shop_transaction_retries_total").await?;
    assert!(
        after > before,
        "the retry counter did not move ({before} → {after})"
    );
    assert_eq!(shop.stock(&product).await?, 97);
    assert_eq!(order["total"], "6.00");
    Ok(())
}

#[tokio::test]
async fn many_writers_of_one_row_all_succeed() -> anyhow::Result<()> {
    const WRITERS: i64 = 8;
    let shop = std::sync::Arc::new(TestShop::start().await?);
    let customer = shop.customer("many@example.com").await?;
    let product = shop.product("MANY-1", "1.50", 1000).await?;

    let mut blocker = hold_product_lock(&shop, &product).await?;
    let requests: Vec<_> = (0..WRITERS)
        .map(|_| {
            let shop = shop.clone();
            let body = json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 2}]});
            tokio::spawn(async move { shop.post("/orders", body).await })
        })
        .collect();
    wait_for_lock_waiters(&shop, WRITERS).await?;
    sqlx::query("COMMIT").execute(&mut blocker).await?;

    for request in requests {
        let (status, body) = request.await??;
        assert_eq!(status, 201, "{body}");
    }
    let stats = shop.app.db().stats();
    assert!(
        stats.retries >= WRITERS as u64,
        "every writer that waited was aborted once at least: {stats:?}"
    );
    assert_eq!(stats.exhausted, 0);
    // Nothing lost, nothing doubled.
    assert_eq!(shop.stock(&product).await?, 1000 - 2 * WRITERS);
    let orders = shop.pg.psql("shop", "SELECT count(*), sum(total) FROM orders")?;
    assert_eq!(orders.trim(), format!("{WRITERS}|{}.00", 3 * WRITERS));

    // Concurrent payments of the same order: exactly one wins, the rest see it paid.
    let (_, order) = shop
        .post(
            "/orders",
            json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 4}]}),
        )
        .await?;
    let id = s(&order, "id");
    let payers: Vec<_> = (0..6)
        .map(|_| {
            let shop = shop.clone();
            let body = json!({"order_id": id, "amount": "6.00", "method": "card"});
            tokio::spawn(async move { shop.post("/payments", body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for payer in payers {
        statuses.push(payer.await??.0);
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409], "one payment captured");
    let paid = shop.pg.psql(
        "shop",
        &format!("SELECT o.status || '|' || (SELECT sum(amount) FROM payments WHERE order_id = o.id) FROM orders o WHERE id = '{id}'"),
    )?;
    assert_eq!(paid.trim(), "paid|6.00");
    Ok(())
}

#[tokio::test]
async fn an_exhausted_retry_budget_answers_503() -> anyhow::Result<()> {
    let policy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let shop = std::sync::Arc::new(TestShop::start_with(policy).await?);
    let customer = shop.customer("x@example.com").await?;
    let product = shop.product("X-1", "1.00", 10).await?;

    let mut blocker = hold_product_lock(&shop, &product).await?;
    let request = {
        let shop = shop.clone();
        let body = json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]});
        tokio::spawn(async move {
            let url = format!("{}/orders", shop.base);
            shop.client.post(url).json(&body).send().await
        })
    };
    wait_for_lock_waiters(&shop, 1).await?;
    sqlx::query("COMMIT").execute(&mut blocker).await?;

    let response = request.await??;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await?;
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("create order") && message.contains("40001") && message.contains("1 attempts"),
        "{message}"
    );
    assert_eq!(shop.metric("shop_transactions_exhausted_total").await?, 1);
    assert_eq!(shop.stock(&product).await?, 10, "nothing was taken");
    Ok(())
}
