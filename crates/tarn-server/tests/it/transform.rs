//! Streaming SQL (`[[cdc.transforms]]`) against a real PostgreSQL: a table's changes go
//! through a `SELECT` with a projection, derived columns, a filter and a lookup of a lake
//! table before they are written; the lake equals the same query over PostgreSQL after the
//! copy, inserts, updates (into and out of the filter), key changes and deletes, and after a
//! restart. Bad transforms are refused naming the table.

use std::time::Duration;

use crate::cdc::Cdc;

const WAIT: Duration = Duration::from_secs(90);

const SETUP: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, amount numeric(10,2), status text);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g;
INSERT INTO orders SELECT g, g % 50 + 1, g / 4.0, CASE WHEN g % 5 = 0 THEN 'cancelled' ELSE 'new' END
  FROM generate_series(1, 400) g;
";

/// The transform, and the same query over PostgreSQL.
const TRANSFORM: &str = "SELECT o.id, o.amount * 2 AS doubled, upper(o.status) AS status, c.name AS customer \
     FROM changes o LEFT JOIN cdc.customers c ON c.id = o.customer_id WHERE o.status <> 'cancelled'";
const PG: &str = "SELECT o.id, o.amount * 2, upper(o.status), coalesce(c.name, 'NULL') \
     FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE o.status <> 'cancelled' ORDER BY o.id";
const LAKE: &str = "SELECT id, doubled, status, customer FROM cdc.orders ORDER BY id";

fn transforms_toml(sql: &str) -> String {
    format!("[{{table = \"public.orders\", sql = {sql:?}}}]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_with_a_lookup_shapes_the_lake_table() {
    let mut cdc = Cdc::new(SETUP).await;
    cdc.set("cdc.transforms", &transforms_toml(TRANSFORM));
    let running = cdc.start().await;
    cdc.wait_same(PG, LAKE, WAIT).await;

    // Inserts, updates into and out of the filter, a key change, deletes, in transactions.
    cdc.sql(
        "INSERT INTO orders VALUES (1001, 3, 10.50, 'new'), (1002, 4, 1.25, 'cancelled');
         UPDATE orders SET status = 'paid' WHERE id <= 20;
         UPDATE orders SET status = 'cancelled' WHERE id BETWEEN 21 AND 30;
         UPDATE orders SET status = 'new' WHERE id IN (35, 40);
         UPDATE orders SET id = 5001 WHERE id = 41;
         DELETE FROM orders WHERE id BETWEEN 100 AND 120;
         BEGIN; UPDATE orders SET amount = amount + 1 WHERE id = 42; UPDATE orders SET amount = amount + 1 WHERE id = 42; COMMIT;",
    );
    cdc.wait_same(PG, LAKE, WAIT).await;
    running.stop().await;
    // Changes while stopped, then a restart.
    cdc.sql("UPDATE orders SET status = 'shipped' WHERE id BETWEEN 200 AND 210; DELETE FROM orders WHERE id = 211;");
    let running = cdc.start().await;
    cdc.wait_same(PG, LAKE, WAIT).await;
    // The untransformed table lands as it is.
    cdc.wait_same(
        "SELECT id, name FROM customers ORDER BY id",
        "SELECT id, name FROM cdc.customers ORDER BY id",
        WAIT,
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_that_drops_the_key_is_refused_naming_the_table() {
    let mut cdc = Cdc::new(SETUP).await;
    cdc.set(
        "cdc.transforms",
        &transforms_toml("SELECT amount * 2 AS doubled FROM changes"),
    );
    let running = cdc.start().await;
    let error = running.wait_error("a transform without the key").await;
    assert!(
        error.contains("public.orders") && error.contains("key column(s) id"),
        "the error names the table and the key: {error}"
    );
    drop(running);

    let mut cdc = Cdc::new(SETUP).await;
    cdc.set("cdc.transforms", &transforms_toml("SELECT id, nope FROM changes"));
    let running = cdc.start().await;
    let error = running.wait_error("a transform naming an unknown column").await;
    assert!(
        error.contains("public.orders") && error.contains("nope"),
        "the error names the table and the column: {error}"
    );
}
