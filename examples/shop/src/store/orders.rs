//! Orders and their items: placing an order (stock checked and taken, total computed, all in
//! one transaction), status changes, quantity edits, deletion.
//!
//! Invariants every write keeps, inside its transaction:
//! - `orders.total` = Σ `quantity × unit_price` over the order's items;
//! - a product's stock goes down by what a live order holds and comes back when the order is
//!   cancelled, deleted while pending, or an item shrinks or goes;
//! - items change only while the order is `pending`.

use std::collections::{BTreeMap, HashSet};

use rust_decimal::Decimal;
use serde::Deserialize;
use sqlx::{PgConnection, PgExecutor, QueryBuilder};
use uuid::Uuid;

use super::{PageRequest, check};
use crate::error::{ConstraintExt, ShopError};
use crate::model::{Order, OrderDetail, OrderItem, OrderStatus, Page, PaymentStatus};

/// The most items an order may have.
pub const MAX_ITEMS: usize = 100;
/// The most units of one product an order may hold.
pub const MAX_QUANTITY: i64 = 10_000;

/// One line of [`NewOrderInput`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItemInput {
    /// The product.
    pub product_id: Option<Uuid>,
    /// Units, `> 0`.
    pub quantity: Option<i64>,
}

/// The body of `POST /orders`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrderInput {
    /// Who orders.
    pub customer_id: Option<Uuid>,
    /// What, at least one item, each product once.
    pub items: Option<Vec<NewItemInput>>,
}

/// A validated [`NewOrderInput`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// Who orders.
    pub customer_id: Uuid,
    /// (product, quantity) in the order given.
    pub items: Vec<(Uuid, i64)>,
}

impl NewOrderInput {
    /// Validates an order.
    pub fn validate(&self) -> Result<NewOrder, ShopError> {
        let customer_id = check::required(self.customer_id, "customer_id")?;
        let items = check::required(self.items.as_ref(), "items")?;
        if items.is_empty() {
            return Err(ShopError::invalid("items", "an order needs at least one item"));
        }
        if items.len() > MAX_ITEMS {
            return Err(ShopError::invalid(
                "items",
                format!("an order has at most {MAX_ITEMS} items"),
            ));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let product_id = check::required(item.product_id, &format!("items[{i}].product_id"))?;
            let field = format!("items[{i}].quantity");
            let quantity = check::count(check::required(item.quantity, &field)?, &field, 1..=MAX_QUANTITY)?;
            if !seen.insert(product_id) {
                return Err(ShopError::invalid(
                    format!("items[{i}].product_id"),
                    format!("product {product_id} is on the order twice; give one item with the sum"),
                ));
            }
            out.push((product_id, quantity));
        }
        Ok(NewOrder {
            customer_id,
            items: out,
        })
    }
}

/// The body of `PATCH /orders/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPatch {
    /// The new status; see [`OrderStatus::can_become`].
    pub status: Option<OrderStatus>,
}

/// The body of `PATCH /orders/{id}/items/{product_id}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    /// The new quantity, `> 0`.
    pub quantity: Option<i64>,
}

impl ItemPatch {
    /// The validated quantity.
    pub fn validate(&self) -> Result<i64, ShopError> {
        check::count(
            check::required(self.quantity, "quantity")?,
            "quantity",
            1..=MAX_QUANTITY,
        )
    }
}

/// Filters of `GET /orders`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only this customer's orders.
    pub customer_id: Option<Uuid>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
}

#[derive(sqlx::FromRow)]
struct StockRow {
    id: Uuid,
    sku: String,
    price: Decimal,
    stock: i64,
}

/// Places an order: checks the customer, takes the stock of every item (refusing the order if
/// any product is short), snapshots the prices and computes the total.
pub async fn create(conn: &mut PgConnection, new: &NewOrder) -> Result<OrderDetail, ShopError> {
    let customer: Option<Uuid> = sqlx::query_scalar("SELECT id FROM customers WHERE id = $1")
        .bind(new.customer_id)
        .fetch_optional(&mut *conn)
        .await?;
    if customer.is_none() {
        return Err(ShopError::conflict(
            "customer_id",
            format!("there is no customer {}", new.customer_id),
        ));
    }
    let ids: Vec<Uuid> = new.items.iter().map(|(id, _)| *id).collect();
    let products: BTreeMap<Uuid, StockRow> = sqlx::query_as::<_, StockRow>(
        "SELECT id, sku, price, stock FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|p| (p.id, p))
    .collect();
    let mut total = Decimal::ZERO;
    for (i, (product_id, quantity)) in new.items.iter().enumerate() {
        let product = products.get(product_id).ok_or_else(|| {
            ShopError::conflict(
                format!("items[{i}].product_id"),
                format!("there is no product {product_id}"),
            )
        })?;
        if product.stock < *quantity {
            return Err(ShopError::conflict(
                format!("items[{i}].quantity"),
                format!(
                    "only {} of {} in stock, {quantity} ordered",
                    product.stock, product.sku
                ),
            ));
        }
        total += product.price * Decimal::from(*quantity);
    }
    // Take the stock in id order, the order the rows were locked in.
    let mut by_id: Vec<&(Uuid, i64)> = new.items.iter().collect();
    by_id.sort();
    for (product_id, quantity) in by_id {
        sqlx::query("UPDATE products SET stock = stock - $2, updated_at = now() WHERE id = $1")
            .bind(product_id)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
    }
    let order = sqlx::query_as::<_, Order>(
        "INSERT INTO orders (id, customer_id, status, total) VALUES ($1, $2, $3, $4) RETURNING *",
    )
    .bind(Uuid::new_v4())
    .bind(new.customer_id)
    .bind(OrderStatus::Pending)
    .bind(total)
    .fetch_one(&mut *conn)
    .await
    .on_constraint("orders_customer_id_fkey", || {
        ShopError::conflict("customer_id", format!("there is no customer {}", new.customer_id))
    })?;
    let mut insert =
        QueryBuilder::new("INSERT INTO order_items (id, order_id, product_id, quantity, unit_price) ");
    insert.push_values(&new.items, |mut row, (product_id, quantity)| {
        row.push_bind(Uuid::new_v4())
            .push_bind(order.id)
            .push_bind(*product_id)
            .push_bind(*quantity)
            .push_bind(products[product_id].price);
    });
    insert.push(" RETURNING *");
    let mut items: Vec<OrderItem> = insert.build_query_as().fetch_all(&mut *conn).await?;
    items.sort_by_key(|i| i.product_id);
    Ok(OrderDetail { order, items })
}

/// An order without its items.
pub async fn get_order(db: impl PgExecutor<'_>, id: Uuid) -> Result<Order, ShopError> {
    sqlx::query_as::<_, Order>("SELECT * FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ShopError::not_found("order", id))
}

/// An order with its items; run it in a transaction for a consistent view of both.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<OrderDetail, ShopError> {
    let order = get_order(&mut *conn, id).await?;
    let items = items(&mut *conn, id).await?;
    Ok(OrderDetail { order, items })
}

async fn items(db: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<OrderItem>, ShopError> {
    Ok(
        sqlx::query_as::<_, OrderItem>("SELECT * FROM order_items WHERE order_id = $1 ORDER BY product_id")
            .bind(order_id)
            .fetch_all(db)
            .await?,
    )
}

/// A page of orders (without items) in id order.
pub async fn list(
    db: impl PgExecutor<'_>,
    page: PageRequest,
    filter: OrderFilter,
) -> Result<Page<Order>, ShopError> {
    let mut query = QueryBuilder::new("SELECT * FROM orders WHERE id > ");
    query.push_bind(page.after_id());
    if let Some(customer_id) = filter.customer_id {
        query.push(" AND customer_id = ").push_bind(customer_id);
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    query.push(" ORDER BY id LIMIT ").push_bind(page.limit + 1);
    let rows: Vec<Order> = query.build_query_as().fetch_all(db).await?;
    Ok(page.page(rows, |o| o.id))
}

async fn lock_order(conn: &mut PgConnection, id: Uuid) -> Result<Order, ShopError> {
    sqlx::query_as::<_, Order>("SELECT * FROM orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ShopError::not_found("order", id))
}

/// Gives the order's items back to stock, in product id order.
async fn restore_stock(conn: &mut PgConnection, items: &[OrderItem]) -> Result<(), ShopError> {
    for item in items {
        sqlx::query("UPDATE products SET stock = stock + $2, updated_at = now() WHERE id = $1")
            .bind(item.product_id)
            .bind(item.quantity)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Recomputes and stores the order's total from its items.
async fn update_total(conn: &mut PgConnection, order_id: Uuid) -> Result<Order, ShopError> {
    Ok(sqlx::query_as::<_, Order>(
        "UPDATE orders SET total = (SELECT COALESCE(sum(quantity * unit_price), 0) FROM order_items WHERE order_id = $1), \
         updated_at = now() WHERE id = $1 RETURNING *",
    )
    .bind(order_id)
    .fetch_one(conn)
    .await?)
}

/// Captured payments of an order.
pub(crate) async fn captured(conn: &mut PgConnection, order_id: Uuid) -> Result<Decimal, ShopError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0) FROM payments WHERE order_id = $1 AND status = $2",
    )
    .bind(order_id)
    .bind(PaymentStatus::Captured)
    .fetch_one(conn)
    .await?)
}

/// Moves an order to `to` (see [`OrderStatus::can_become`]). Cancelling returns the stock
/// and refunds captured payments. Setting the status it already has changes nothing.
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    to: OrderStatus,
) -> Result<OrderDetail, ShopError> {
    let order = lock_order(conn, id).await?;
    if order.status == to {
        return get(conn, id).await;
    }
    if !order.status.can_become(to) {
        let hint = if to == OrderStatus::Paid {
            "; an order becomes paid when payments cover its total (POST /payments)".to_string()
        } else {
            let allowed: Vec<&str> = OrderStatus::ALL
                .iter()
                .filter(|s| order.status.can_become(**s))
                .map(|s| s.as_str())
                .collect();
            if allowed.is_empty() {
                format!("; a {} order is final", order.status)
            } else {
                format!("; from {} it can become {}", order.status, allowed.join(" or "))
            }
        };
        return Err(ShopError::conflict(
            "status",
            format!("order {id} cannot go from {} to {to}{hint}", order.status),
        ));
    }
    if to == OrderStatus::Cancelled {
        let items = items(&mut *conn, id).await?;
        restore_stock(conn, &items).await?;
        sqlx::query(
            "UPDATE payments SET status = $2, updated_at = now() WHERE order_id = $1 AND status = $3",
        )
        .bind(id)
        .bind(PaymentStatus::Refunded)
        .bind(PaymentStatus::Captured)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(to)
        .execute(&mut *conn)
        .await?;
    get(conn, id).await
}

async fn lock_pending_item(
    conn: &mut PgConnection,
    order_id: Uuid,
    product_id: Uuid,
) -> Result<(Order, OrderItem), ShopError> {
    let order = lock_order(conn, order_id).await?;
    if order.status != OrderStatus::Pending {
        return Err(ShopError::conflict(
            "status",
            format!(
                "order {order_id} is {}; items change only while it is pending",
                order.status
            ),
        ));
    }
    let item = sqlx::query_as::<_, OrderItem>(
        "SELECT * FROM order_items WHERE order_id = $1 AND product_id = $2 FOR UPDATE",
    )
    .bind(order_id)
    .bind(product_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ShopError::not_found("order item", format!("{order_id}/items/{product_id}")))?;
    Ok((order, item))
}

/// Refuses a total below what was already paid.
async fn check_total_covers_payments(conn: &mut PgConnection, order: &Order) -> Result<(), ShopError> {
    let paid = captured(conn, order.id).await?;
    if order.total < paid {
        return Err(ShopError::conflict(
            "quantity",
            format!(
                "the order's total would be {}, below the {paid} already paid; refund a payment first",
                order.total
            ),
        ));
    }
    Ok(())
}

/// Changes the quantity of one item of a pending order, taking or returning stock and
/// recomputing the total.
pub async fn set_item_quantity(
    conn: &mut PgConnection,
    order_id: Uuid,
    product_id: Uuid,
    quantity: i64,
) -> Result<OrderDetail, ShopError> {
    let (_, item) = lock_pending_item(conn, order_id, product_id).await?;
    let delta = quantity - item.quantity;
    if delta != 0 {
        let (sku, stock): (String, i64) =
            sqlx::query_as("SELECT sku, stock FROM products WHERE id = $1 FOR UPDATE")
                .bind(product_id)
                .fetch_one(&mut *conn)
                .await?;
        if delta > stock {
            return Err(ShopError::conflict(
                "quantity",
                format!(
                    "only {stock} more of {sku} in stock, {delta} more wanted ({} → {quantity})",
                    item.quantity
                ),
            ));
        }
        sqlx::query("UPDATE products SET stock = stock - $2, updated_at = now() WHERE id = $1")
            .bind(product_id)
            .bind(delta)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE order_items SET quantity = $2 WHERE id = $1")
            .bind(item.id)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
        let order = update_total(conn, order_id).await?;
        check_total_covers_payments(conn, &order).await?;
    }
    get(conn, order_id).await
}

/// Removes one item of a pending order, returning its stock; the last item cannot go (cancel
/// or delete the order instead).
pub async fn remove_item(
    conn: &mut PgConnection,
    order_id: Uuid,
    product_id: Uuid,
) -> Result<OrderDetail, ShopError> {
    let (_, item) = lock_pending_item(conn, order_id, product_id).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    if count <= 1 {
        return Err(ShopError::conflict(
            "product_id",
            format!("it is the last item of order {order_id}; cancel or delete the order instead"),
        ));
    }
    restore_stock(conn, std::slice::from_ref(&item)).await?;
    sqlx::query("DELETE FROM order_items WHERE id = $1")
        .bind(item.id)
        .execute(&mut *conn)
        .await?;
    let order = update_total(conn, order_id).await?;
    check_total_covers_payments(conn, &order).await?;
    get(conn, order_id).await
}

/// Deletes a pending or cancelled order without payments (a pending one gives its stock
/// back); its items go with it.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), ShopError> {
    let order = lock_order(conn, id).await?;
    match order.status {
        OrderStatus::Pending => {
            let items = items(&mut *conn, id).await?;
            restore_stock(conn, &items).await?;
        }
        OrderStatus::Cancelled => {}
        other => {
            return Err(ShopError::conflict(
                "status",
                format!("order {id} is {other}; only pending or cancelled orders can be deleted"),
            ));
        }
    }
    sqlx::query("DELETE FROM orders WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .on_constraint("payments_order_id_fkey", || {
            ShopError::conflict(
                "id",
                format!("order {id} has payments and cannot be deleted; cancel it instead"),
            )
        })?;
    Ok(())
}
