//! Reference data: `shop seed --customers N --products M` inserts made-up customers and
//! products straight through the library (multi-row inserts of 500 rows per transaction,
//! each through [`Db::write`]), so a workload has something to order.
//!
//! Seeding again adds more: numbering continues after the rows already there, and a
//! duplicate e-mail or SKU is skipped (`ON CONFLICT DO NOTHING`), never an error.

use rand::Rng;
use rand::seq::IndexedRandom;
use rust_decimal::Decimal;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::db::{Db, Isolation};
use crate::error::ShopError;

const BATCH: u64 = 500;

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "John",
    "Margaret",
    "Ken",
    "Radia",
    "Dennis",
    "Hedy",
    "Tim",
    "Katherine",
    "Linus",
    "Shafi",
    "Niklaus",
    "Sophie",
    "Leslie",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "McCarthy",
    "Hamilton",
    "Thompson",
    "Perlman",
    "Ritchie",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Torvalds",
    "Goldwasser",
    "Wirth",
    "Wilson",
    "Lamport",
];
const ADJECTIVES: &[&str] = &[
    "Green",
    "Smoked",
    "Organic",
    "Roasted",
    "Wild",
    "Aged",
    "Spiced",
    "Cold-Pressed",
    "Stone-Ground",
    "Dark",
];
const NOUNS: &[(&str, &str)] = &[
    ("TEA", "Tea"),
    ("COF", "Coffee"),
    ("HON", "Honey"),
    ("OIL", "Olive Oil"),
    ("CHO", "Chocolate"),
    ("SAL", "Sea Salt"),
    ("FLR", "Flour"),
    ("JAM", "Jam"),
];

/// What [`seed`] inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedSummary {
    /// Customers inserted.
    pub customers: u64,
    /// Products inserted.
    pub products: u64,
}

/// Inserts `customers` customers and `products` products.
pub async fn seed(db: &Db, customers: u64, products: u64) -> Result<SeedSummary, ShopError> {
    let mut summary = SeedSummary::default();
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(db.pool())
        .await?;
    let mut n = u64::try_from(existing).unwrap_or(0);
    let mut left = customers;
    while left > 0 {
        let batch = left.min(BATCH);
        let rows: Vec<(Uuid, String, String)> = {
            let mut rng = rand::rng();
            (0..batch)
                .map(|i| {
                    let first = FIRST.choose(&mut rng).copied().unwrap_or("Ada");
                    let last = LAST.choose(&mut rng).copied().unwrap_or("Lovelace");
                    let number = n + i + 1;
                    (
                        Uuid::new_v4(),
                        format!(
                            "{}.{}.{number}@example.com",
                            first.to_lowercase(),
                            last.to_lowercase()
                        ),
                        format!("{first} {last}"),
                    )
                })
                .collect()
        };
        summary.customers += db
            .write("seed customers", Isolation::DatabaseDefault, move |conn| {
                let rows = rows.clone();
                Box::pin(async move {
                    let mut insert = QueryBuilder::new("INSERT INTO customers (id, email, name) ");
                    insert.push_values(&rows, |mut row, (id, email, name)| {
                        row.push_bind(*id).push_bind(email).push_bind(name);
                    });
                    insert.push(" ON CONFLICT (email) DO NOTHING");
                    Ok(insert.build().execute(conn).await?.rows_affected())
                })
            })
            .await?;
        n += batch;
        left -= batch;
    }

    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(db.pool())
        .await?;
    let mut n = u64::try_from(existing).unwrap_or(0);
    let mut left = products;
    while left > 0 {
        let batch = left.min(BATCH);
        let rows: Vec<(Uuid, String, String, Decimal, i64)> = {
            let mut rng = rand::rng();
            (0..batch)
                .map(|i| {
                    let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("Green");
                    let (code, noun) = NOUNS.choose(&mut rng).copied().unwrap_or(("TEA", "Tea"));
                    let number = n + i + 1;
                    (
                        Uuid::new_v4(),
                        format!("{code}-{number:06}"),
                        format!("{adjective} {noun}"),
                        Decimal::new(rng.random_range(100..25_000), 2),
                        rng.random_range(100..2_000),
                    )
                })
                .collect()
        };
        summary.products += db
            .write("seed products", Isolation::DatabaseDefault, move |conn| {
                let rows = rows.clone();
                Box::pin(async move {
                    let mut insert = QueryBuilder::new("INSERT INTO products (id, sku, name, price, stock) ");
                    insert.push_values(&rows, |mut row, (id, sku, name, price, stock)| {
                        row.push_bind(*id)
                            .push_bind(sku)
                            .push_bind(name)
                            .push_bind(*price)
                            .push_bind(*stock);
                    });
                    insert.push(" ON CONFLICT (sku) DO NOTHING");
                    Ok(insert.build().execute(conn).await?.rows_affected())
                })
            })
            .await?;
        n += batch;
        left -= batch;
    }
    Ok(summary)
}
