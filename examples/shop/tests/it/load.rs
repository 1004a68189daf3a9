//! Reference data and the workload generator against the real service, followed by
//! consistency checks of what the workload left in the database.

use std::time::Duration;

use shop::db::Db;
use shop::load::{LoadError, LoadOptions};

use crate::common::TestShop;

#[tokio::test]
async fn seed_adds_rows_and_can_run_again() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    let db = Db::new(shop.pool.clone());
    let first = shop::seed::seed(&db, 1200, 30).await?;
    assert_eq!((first.customers, first.products), (1200, 30));
    let again = shop::seed::seed(&db, 5, 5).await?;
    assert_eq!((again.customers, again.products), (5, 5));
    let counts = shop.pg.psql(
        "shop",
        "SELECT (SELECT count(*) FROM customers) || '|' || (SELECT count(*) FROM products)",
    )?;
    assert_eq!(counts.trim(), "1205|35");
    let bad = shop.pg.psql(
        "shop",
        "SELECT count(*) FROM products WHERE price < 0 OR stock < 0 OR sku !~ '^[A-Z]+-[0-9]{6}$'",
    )?;
    assert_eq!(bad.trim(), "0");
    Ok(())
}

#[tokio::test]
async fn the_workload_runs_without_errors_and_keeps_the_books_straight() -> anyhow::Result<()> {
    let shop = TestShop::start().await?;
    shop::seed::seed(&Db::new(shop.pool.clone()), 20, 8).await?;
    let initial_stock: i64 = shop
        .pg
        .psql("shop", "SELECT sum(stock) FROM products")?
        .trim()
        .parse()?;

    let options = LoadOptions {
        url: shop.base.clone(),
        rate: 60.0,
        duration: Duration::from_secs(4),
        concurrency: 16,
        report_every: Duration::from_secs(1),
    };
    let mut reports = Vec::new();
    let summary = shop::load::run(&options, |p| reports.push(*p)).await?;
    println!("{summary}");
    assert_eq!(summary.errors, 0, "{summary}");
    assert!(summary.requests >= 100, "{summary}");
    assert_eq!(summary.requests, summary.ok + summary.conflicts + summary.errors);
    assert!(summary.by_operation["create_order"].ok > 0, "{summary}");
    assert!(
        summary.by_operation.get("pay").is_some_and(|c| c.ok > 0),
        "{summary}"
    );
    assert!(reports.len() >= 4, "progress every second: {reports:?}");
    assert!(reports.windows(2).all(|w| w[0].requests <= w[1].requests));

    // Every order's total is the sum of its items.
    let wrong_totals = shop.pg.psql(
        "shop",
        "SELECT count(*) FROM orders o WHERE o.total <> \
         (SELECT COALESCE(sum(quantity * unit_price), 0) FROM order_items i WHERE i.order_id = o.id)",
    )?;
    assert_eq!(wrong_totals.trim(), "0");
    // Paid, shipped and delivered orders are covered exactly; others hold no surplus.
    let wrong_payments = shop.pg.psql(
        "shop",
        "SELECT count(*) FROM orders o, LATERAL (SELECT COALESCE(sum(amount), 0) AS captured FROM payments p \
         WHERE p.order_id = o.id AND p.status = 'captured') c \
         WHERE (o.status IN ('paid', 'shipped', 'delivered') AND c.captured <> o.total) \
            OR (o.status = 'cancelled' AND c.captured <> 0) \
            OR (o.status = 'pending' AND c.captured >= o.total AND o.total > 0)",
    )?;
    assert_eq!(wrong_payments.trim(), "0");
    // Stock is conserved: what is on the shelf plus what live orders hold is what there was,
    // plus restocks.
    let accounted: i64 = shop
        .pg
        .psql(
            "shop",
            "SELECT (SELECT sum(stock) FROM products) + (SELECT COALESCE(sum(i.quantity), 0) FROM order_items i \
             JOIN orders o ON o.id = i.order_id WHERE o.status <> 'cancelled')",
        )?
        .trim()
        .parse()?;
    assert_eq!(accounted, initial_stock + summary.restocked_units, "{summary}");
    assert_eq!(shop.app.db().stats().exhausted, 0);
    Ok(())
}

#[tokio::test]
async fn bad_load_options_are_named() -> anyhow::Result<()> {
    for (options, option) in [
        (
            LoadOptions {
                url: "https://shop.example:8443".into(),
                ..Default::default()
            },
            "url",
        ),
        (
            LoadOptions {
                url: "not a url".into(),
                ..Default::default()
            },
            "url",
        ),
        (
            LoadOptions {
                rate: 0.0,
                ..Default::default()
            },
            "rate",
        ),
        (
            LoadOptions {
                concurrency: 0,
                ..Default::default()
            },
            "concurrency",
        ),
    ] {
        match shop::load::run(&options, |_| {}).await {
            Err(LoadError::Option { option: got, .. }) => assert_eq!(got, option),
            other => panic!("{options:?}: {other:?}"),
        }
    }
    Ok(())
}
