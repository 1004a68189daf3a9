//! The workload generator: a stream of realistic shop traffic through the HTTP API, at a
//! fixed rate, for a fixed time — the change stream tarn's CDC captures.
//!
//! It goes through HTTP rather than calling the library so that it exercises what a real
//! client does (validation, status codes, the retry helper under concurrent requests) and can
//! drive a shop running anywhere (`--url`). Each tick starts one operation, chosen at random
//! by weight among those possible with the orders it knows:
//!
//! | operation | weight | request |
//! |---|---|---|
//! | place an order (1–4 products, 1–3 units each) | 30 | `POST /orders` |
//! | change an item's quantity (pending order) | 12 | `PATCH /orders/{id}/items/{product}` |
//! | pay an order in full | 20 | `POST /payments` |
//! | ship a paid order / deliver a shipped one | 10 / 8 | `PATCH /orders/{id}` |
//! | cancel a pending or paid order | 5 | `PATCH /orders/{id}` |
//! | delete a pending order, or a cancelled one without payments | 5 | `DELETE /orders/{id}` |
//! | refund a paid order's payment | 2 | `PATCH /payments/{id}` |
//! | restock a product (+50..200) | 3 | `POST /products/{id}/restock` |
//! | rename a customer | 2 | `PATCH /customers/{id}` |
//! | read an order | 5 | `GET /orders/{id}` |
//!
//! An order is used by one operation at a time. A 409 (a product out of stock, another
//! client's change in between) is counted as a *conflict*, a normal outcome for a shop;
//! anything else that is not 2xx — a 503 after exhausted retries, a 5xx, a 4xx that means the
//! generator sent something wrong, a failed connection — is an *error*.
//!
//! With an empty shop it first creates 20 customers and 30 products through the API.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::IndexedRandom;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::model::{Customer, OrderDetail, OrderStatus, Page, Payment, Product};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The shop's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// Operations started per second.
    pub rate: f64,
    /// How long to start operations.
    pub duration: Duration,
    /// The most operations in flight at once.
    pub concurrency: usize,
    /// How often to report progress.
    pub report_every: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".into(),
            rate: 20.0,
            duration: Duration::from_secs(30),
            concurrency: 32,
            report_every: Duration::from_secs(1),
        }
    }
}

/// The workload could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad option.
    #[error("invalid option {option}: {message}")]
    Option {
        /// The option.
        option: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The shop did not answer as expected while the generator prepared.
    #[error("preparing the workload against {url}: {message}")]
    Setup {
        /// The shop's URL.
        url: String,
        /// What failed.
        message: String,
    },
}

/// Progress so far, reported every [`LoadOptions::report_every`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Operations finished.
    pub requests: u64,
    /// Of which succeeded.
    pub ok: u64,
    /// Of which answered 409.
    pub conflicts: u64,
    /// Of which failed otherwise.
    pub errors: u64,
    /// Operations finished per second since the last report.
    pub rate: f64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6.1}s  {:>7.1} req/s  {} requests  {} ok  {} conflicts  {} errors",
            self.elapsed.as_secs_f64(),
            self.rate,
            self.requests,
            self.ok,
            self.conflicts,
            self.errors
        )
    }
}

/// Outcomes of one kind of operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// 2xx.
    pub ok: u64,
    /// 409.
    pub conflicts: u64,
    /// Anything else.
    pub errors: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadSummary {
    /// How long it ran, the wait for the last operations included.
    pub elapsed: Duration,
    /// Operations finished.
    pub requests: u64,
    /// Of which succeeded.
    pub ok: u64,
    /// Of which answered 409.
    pub conflicts: u64,
    /// Of which failed otherwise.
    pub errors: u64,
    /// Outcomes per operation.
    pub by_operation: BTreeMap<&'static str, OpCounts>,
    /// Latency percentiles (50, 95, 99, 100) of all operations.
    pub latency: [Duration; 4],
    /// Units added to stock by successful restocks.
    pub restocked_units: i64,
    /// The first few errors, for diagnosis.
    pub error_samples: Vec<String>,
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        writeln!(
            f,
            "{} requests in {secs:.1}s ({:.1} req/s): {} ok, {} conflicts, {} errors",
            self.requests,
            self.requests as f64 / secs,
            self.ok,
            self.conflicts,
            self.errors
        )?;
        let [p50, p95, p99, max] = self.latency;
        writeln!(
            f,
            "latency: p50 {p50:.1?}  p95 {p95:.1?}  p99 {p99:.1?}  max {max:.1?}"
        )?;
        writeln!(
            f,
            "{:<16} {:>8} {:>10} {:>8}",
            "operation", "ok", "conflicts", "errors"
        )?;
        for (op, c) in &self.by_operation {
            writeln!(f, "{op:<16} {:>8} {:>10} {:>8}", c.ok, c.conflicts, c.errors)?;
        }
        for sample in &self.error_samples {
            writeln!(f, "error: {sample}")?;
        }
        Ok(())
    }
}

/// An order the generator placed, as it last saw it.
#[derive(Debug, Clone)]
struct TrackedOrder {
    id: Uuid,
    status: OrderStatus,
    total: Decimal,
    products: Vec<Uuid>,
    payment: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    EditQuantity,
    Pay,
    Ship,
    Deliver,
    Cancel,
    Delete,
    Refund,
    Restock,
    RenameCustomer,
    Read,
}

impl Op {
    const WEIGHTED: [(Op, u32); 11] = [
        (Op::Create, 30),
        (Op::EditQuantity, 12),
        (Op::Pay, 20),
        (Op::Ship, 10),
        (Op::Deliver, 8),
        (Op::Cancel, 5),
        (Op::Delete, 5),
        (Op::Refund, 2),
        (Op::Restock, 3),
        (Op::RenameCustomer, 2),
        (Op::Read, 5),
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create_order",
            Op::EditQuantity => "edit_quantity",
            Op::Pay => "pay",
            Op::Ship => "ship",
            Op::Deliver => "deliver",
            Op::Cancel => "cancel",
            Op::Delete => "delete_order",
            Op::Refund => "refund",
            Op::Restock => "restock",
            Op::RenameCustomer => "rename_customer",
            Op::Read => "read_order",
        }
    }

    /// Whether the operation can work on an order in this state.
    fn fits(self, order: &TrackedOrder) -> bool {
        use OrderStatus::*;
        match self {
            Op::EditQuantity | Op::Pay => order.status == Pending,
            Op::Ship => order.status == Paid,
            Op::Deliver => order.status == Shipped,
            Op::Cancel => matches!(order.status, Pending | Paid),
            Op::Delete => order.payment.is_none() && matches!(order.status, Pending | Cancelled),
            Op::Refund => order.status == Paid && order.payment.is_some(),
            Op::Read => true,
            Op::Create | Op::Restock | Op::RenameCustomer => false,
        }
    }

    fn needs_order(self) -> bool {
        !matches!(self, Op::Create | Op::Restock | Op::RenameCustomer)
    }
}

enum Outcome {
    Ok,
    Conflict,
    Error(String),
}

#[derive(Default)]
struct Stats {
    requests: u64,
    ok: u64,
    conflicts: u64,
    errors: u64,
    by_operation: BTreeMap<&'static str, OpCounts>,
    latencies_us: Vec<u32>,
    restocked_units: i64,
    error_samples: Vec<String>,
}

struct Workload {
    client: reqwest::Client,
    url: String,
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
    /// Orders not in use by an operation.
    idle: Mutex<Vec<TrackedOrder>>,
    stats: Mutex<Stats>,
}

/// An HTTP answer: the status and the body.
struct Answer {
    status: u16,
    body: String,
}

impl Workload {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, String> {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        Ok(Answer { status, body })
    }

    fn parse<T: DeserializeOwned>(answer: &Answer) -> Result<T, String> {
        serde_json::from_str(&answer.body).map_err(|e| format!("unexpected body ({e}): {}", answer.body))
    }

    /// Checks an order out of the idle pool for `op`.
    fn checkout(&self, op: Op) -> Option<TrackedOrder> {
        let mut idle = self.idle.lock().expect("idle orders");
        if idle.is_empty() {
            return None;
        }
        let start = rand::rng().random_range(0..idle.len());
        let n = idle.len();
        let at = (0..n).map(|i| (start + i) % n).find(|i| op.fits(&idle[*i]))?;
        Some(idle.swap_remove(at))
    }

    /// Returns an order to the pool, unless it is final.
    fn checkin(&self, order: TrackedOrder) {
        let finished = order.status == OrderStatus::Delivered
            || (order.status == OrderStatus::Cancelled && order.payment.is_some());
        if !finished {
            self.idle.lock().expect("idle orders").push(order);
        }
    }

    fn record(&self, op: Op, outcome: Outcome, latency: Duration) {
        let mut stats = self.stats.lock().expect("stats");
        stats.requests += 1;
        stats
            .latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        let counts = stats.by_operation.entry(op.name()).or_default();
        match outcome {
            Outcome::Ok => {
                counts.ok += 1;
                stats.ok += 1;
            }
            Outcome::Conflict => {
                counts.conflicts += 1;
                stats.conflicts += 1;
            }
            Outcome::Error(message) => {
                counts.errors += 1;
                stats.errors += 1;
                if stats.error_samples.len() < 10 {
                    stats.error_samples.push(format!("{}: {message}", op.name()));
                }
            }
        }
    }

    /// Classifies an answer: 2xx runs `then`, 409 is a conflict, the rest an error.
    fn classify(answer: &Answer, what: &str, then: impl FnOnce() -> Result<(), String>) -> Outcome {
        match answer.status {
            200..=299 => match then() {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Error(format!("{what}: {e}")),
            },
            409 => Outcome::Conflict,
            status => Outcome::Error(format!("{what}: HTTP {status}: {}", answer.body)),
        }
    }

    async fn run_op(&self, op: Op, order: Option<TrackedOrder>) -> Outcome {
        match self.try_op(op, order).await {
            Ok(outcome) => outcome,
            Err(transport) => Outcome::Error(transport),
        }
    }

    async fn try_op(&self, op: Op, order: Option<TrackedOrder>) -> Result<Outcome, String> {
        use reqwest::Method;
        let dice = Dice::roll(self, order.as_ref());
        let customer = dice.customer;
        let Some(mut order) = order else {
            return Ok(match op {
                Op::Create => {
                    let items: Vec<_> = dice
                        .products
                        .iter()
                        .map(|p| json!({"product_id": p, "quantity": dice.quantity}))
                        .collect();
                    let answer = self
                        .send(
                            Method::POST,
                            "/orders",
                            Some(json!({"customer_id": customer, "items": items})),
                        )
                        .await?;
                    Self::classify(&answer, "POST /orders", || {
                        let detail: OrderDetail = Self::parse(&answer)?;
                        self.checkin(TrackedOrder {
                            id: detail.order.id,
                            status: detail.order.status,
                            total: detail.order.total,
                            products: detail.items.iter().map(|i| i.product_id).collect(),
                            payment: None,
                        });
                        Ok(())
                    })
                }
                Op::Restock => {
                    let (product, restock) = (dice.products[0], dice.restock);
                    let answer = self
                        .send(
                            Method::POST,
                            &format!("/products/{product}/restock"),
                            Some(json!({"quantity": restock})),
                        )
                        .await?;
                    Self::classify(&answer, "POST /products/{id}/restock", || {
                        self.stats.lock().expect("stats").restocked_units += restock;
                        Ok(())
                    })
                }
                _ => {
                    let answer = self
                        .send(
                            Method::PATCH,
                            &format!("/customers/{customer}"),
                            Some(json!({"name": format!("Customer {}", dice.number)})),
                        )
                        .await?;
                    Self::classify(&answer, "PATCH /customers/{id}", || Ok(()))
                }
            });
        };
        let id = order.id;
        let outcome = match op {
            Op::EditQuantity => {
                let product = dice.item;
                let answer = self
                    .send(
                        Method::PATCH,
                        &format!("/orders/{id}/items/{product}"),
                        Some(json!({"quantity": dice.quantity + 1})),
                    )
                    .await?;
                Self::classify(&answer, "PATCH /orders/{id}/items/{product_id}", || {
                    let detail: OrderDetail = Self::parse(&answer)?;
                    order.total = detail.order.total;
                    Ok(())
                })
            }
            Op::Pay => {
                let method = dice.method;
                let answer = self
                    .send(
                        Method::POST,
                        "/payments",
                        Some(json!({"order_id": id, "amount": order.total.to_string(), "method": method})),
                    )
                    .await?;
                Self::classify(&answer, "POST /payments", || {
                    let payment: Payment = Self::parse(&answer)?;
                    order.payment = Some(payment.id);
                    order.status = OrderStatus::Paid;
                    Ok(())
                })
            }
            Op::Ship | Op::Deliver | Op::Cancel => {
                let to = match op {
                    Op::Ship => OrderStatus::Shipped,
                    Op::Deliver => OrderStatus::Delivered,
                    _ => OrderStatus::Cancelled,
                };
                let answer = self
                    .send(
                        Method::PATCH,
                        &format!("/orders/{id}"),
                        Some(json!({"status": to})),
                    )
                    .await?;
                Self::classify(&answer, "PATCH /orders/{id}", || {
                    let detail: OrderDetail = Self::parse(&answer)?;
                    order.status = detail.order.status;
                    Ok(())
                })
            }
            Op::Delete => {
                let answer = self.send(Method::DELETE, &format!("/orders/{id}"), None).await?;
                let outcome = Self::classify(&answer, "DELETE /orders/{id}", || Ok(()));
                if matches!(outcome, Outcome::Ok) {
                    return Ok(outcome); // gone: not checked back in
                }
                outcome
            }
            Op::Refund => {
                let payment = order.payment.unwrap_or_default();
                let answer = self
                    .send(
                        Method::PATCH,
                        &format!("/payments/{payment}"),
                        Some(json!({"status": "refunded"})),
                    )
                    .await?;
                Self::classify(&answer, "PATCH /payments/{id}", || {
                    // The order owes its total again; this payment stays on it.
                    order.status = OrderStatus::Pending;
                    Ok(())
                })
            }
            _ => {
                let answer = self.send(Method::GET, &format!("/orders/{id}"), None).await?;
                Self::classify(&answer, "GET /orders/{id}", || {
                    let detail: OrderDetail = Self::parse(&answer)?;
                    order.status = detail.order.status;
                    order.total = detail.order.total;
                    Ok(())
                })
            }
        };
        self.checkin(order);
        Ok(outcome)
    }

    fn progress(&self, elapsed: Duration, last: &mut (Duration, u64)) -> Progress {
        let stats = self.stats.lock().expect("stats");
        let dt = (elapsed - last.0).as_secs_f64().max(f64::EPSILON);
        let rate = (stats.requests - last.1) as f64 / dt;
        *last = (elapsed, stats.requests);
        Progress {
            elapsed,
            requests: stats.requests,
            ok: stats.ok,
            conflicts: stats.conflicts,
            errors: stats.errors,
            rate,
        }
    }
}

/// The random choices of one operation, made before it awaits anything.
struct Dice {
    customer: Uuid,
    /// 1–4 distinct products.
    products: Vec<Uuid>,
    /// One of the order's products.
    item: Uuid,
    quantity: i64,
    restock: i64,
    method: &'static str,
    number: u32,
}

impl Dice {
    fn roll(workload: &Workload, order: Option<&TrackedOrder>) -> Self {
        let mut rng = rand::rng();
        let count = rng.random_range(1..=4usize).min(workload.products.len());
        let products: Vec<Uuid> = workload
            .products
            .choose_multiple(&mut rng, count)
            .copied()
            .collect();
        Self {
            customer: workload.customers.choose(&mut rng).copied().unwrap_or_default(),
            item: order
                .and_then(|o| o.products.choose(&mut rng).copied())
                .unwrap_or_default(),
            products,
            quantity: rng.random_range(1..=3),
            restock: rng.random_range(50..=200),
            method: ["card", "bank_transfer", "wallet"]
                .choose(&mut rng)
                .copied()
                .unwrap_or("card"),
            number: rng.random_range(0..100_000),
        }
    }
}

fn pick_op() -> Op {
    let total: u32 = Op::WEIGHTED.iter().map(|(_, w)| w).sum();
    let mut roll = rand::rng().random_range(0..total);
    for (op, weight) in Op::WEIGHTED {
        if roll < weight {
            return op;
        }
        roll -= weight;
    }
    Op::Create
}

/// Fetches the first page (up to 500) of `path`, creating `make` rows first when it is empty.
async fn reference_rows<T: DeserializeOwned>(
    workload: &Workload,
    path: &str,
    make: impl Fn(usize) -> serde_json::Value,
    count: usize,
) -> Result<Vec<T>, String> {
    let answer = workload
        .send(reqwest::Method::GET, &format!("{path}?limit=500"), None)
        .await?;
    if answer.status != 200 {
        return Err(format!("GET {path}: HTTP {}: {}", answer.status, answer.body));
    }
    let page: Page<T> = Workload::parse(&answer)?;
    if !page.items.is_empty() {
        return Ok(page.items);
    }
    let mut rows = Vec::with_capacity(count);
    for i in 0..count {
        let answer = workload.send(reqwest::Method::POST, path, Some(make(i))).await?;
        if answer.status != 201 {
            return Err(format!("POST {path}: HTTP {}: {}", answer.status, answer.body));
        }
        rows.push(Workload::parse(&answer)?);
    }
    Ok(rows)
}

/// Runs the workload; `on_progress` is called every [`LoadOptions::report_every`].
pub async fn run(
    options: &LoadOptions,
    on_progress: impl FnMut(&Progress) + Send,
) -> Result<LoadSummary, LoadError> {
    run_until(options, on_progress, std::future::pending()).await
}

/// [`run`] that also stops starting operations when `stop` completes (before
/// [`LoadOptions::duration`] has passed), e.g. on Ctrl-C; either way it waits for the
/// operations in flight, so every change the summary counts has been committed or refused.
pub async fn run_until(
    options: &LoadOptions,
    mut on_progress: impl FnMut(&Progress) + Send,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<LoadSummary, LoadError> {
    let url = options.url.trim_end_matches('/').to_string();
    let parsed = url::Url::parse(&url).map_err(|e| LoadError::Option {
        option: "url",
        message: format!("{url:?} is not a URL: {e}"),
    })?;
    if parsed.scheme() != "http" {
        return Err(LoadError::Option {
            option: "url",
            message: format!("expected an http:// URL (the generator speaks plain HTTP), got {url}"),
        });
    }
    if !(options.rate.is_finite() && options.rate > 0.0 && options.rate <= 100_000.0) {
        return Err(LoadError::Option {
            option: "rate",
            message: format!(
                "expected operations per second in (0, 100000], got {}",
                options.rate
            ),
        });
    }
    if options.concurrency == 0 {
        return Err(LoadError::Option {
            option: "concurrency",
            message: "expected at least 1".into(),
        });
    }
    let setup = |message: String| LoadError::Setup {
        url: url.clone(),
        message,
    };
    crate::config::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
    let mut workload = Workload {
        client,
        url: url.clone(),
        customers: Vec::new(),
        products: Vec::new(),
        idle: Mutex::default(),
        stats: Mutex::default(),
    };
    let tag = Uuid::new_v4().simple().to_string();
    let customers: Vec<Customer> = reference_rows(
        &workload,
        "/customers",
        |i| json!({"email": format!("load-{}-{i}@example.com", &tag[..8]), "name": format!("Load Customer {i}")}),
        20,
    )
    .await
    .map_err(setup)?;
    let products: Vec<Product> = reference_rows(
        &workload,
        "/products",
        |i| json!({"sku": format!("LOAD-{}-{i}", &tag[..8]), "name": format!("Load Product {i}"), "price": format!("{}.99", 1 + i % 40), "stock": 1000}),
        30,
    )
    .await
    .map_err(setup)?;
    workload.customers = customers.iter().map(|c| c.id).collect();
    workload.products = products.iter().map(|p| p.id).collect();
    let workload = Arc::new(workload);

    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reporter = tokio::time::interval_at(
        tokio::time::Instant::now() + options.report_every,
        options.report_every,
    );
    let deadline = tokio::time::sleep(options.duration);
    tokio::pin!(deadline);
    tokio::pin!(stop);
    let mut last = (Duration::ZERO, 0u64);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            () = &mut stop => break,
            _ = reporter.tick() => on_progress(&workload.progress(started.elapsed(), &mut last)),
            _ = ticker.tick() => {
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    _ = &mut deadline => break,
                    () = &mut stop => break,
                };
                let mut op = pick_op();
                let order = if op.needs_order() { workload.checkout(op) } else { None };
                if op.needs_order() && order.is_none() {
                    op = Op::Create;
                }
                let workload = workload.clone();
                tasks.spawn(async move {
                    let begun = Instant::now();
                    let outcome = workload.run_op(op, order).await;
                    workload.record(op, outcome, begun.elapsed());
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    on_progress(&workload.progress(elapsed, &mut last));

    let mut stats = std::mem::take(&mut *workload.stats.lock().expect("stats"));
    stats.latencies_us.sort_unstable();
    let percentile = |p: f64| -> Duration {
        if stats.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let at = ((stats.latencies_us.len() - 1) as f64 * p).round() as usize;
        Duration::from_micros(u64::from(stats.latencies_us[at]))
    };
    Ok(LoadSummary {
        elapsed,
        requests: stats.requests,
        ok: stats.ok,
        conflicts: stats.conflicts,
        errors: stats.errors,
        latency: [
            percentile(0.50),
            percentile(0.95),
            percentile(0.99),
            percentile(1.0),
        ],
        by_operation: stats.by_operation,
        restocked_units: stats.restocked_units,
        error_samples: stats.error_samples,
    })
}
