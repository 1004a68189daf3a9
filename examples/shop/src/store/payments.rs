//! Payments: paying (part of) a pending order — the order becomes `paid` when its captured
//! payments reach its total — refunding, reading, listing, and deleting refunded payments.
//!
//! Locks are taken order first, then payment, as cancelling an order does, so a refund and a
//! cancellation of the same order queue rather than deadlock.

use serde::Deserialize;
use sqlx::{PgConnection, PgExecutor, QueryBuilder};
use uuid::Uuid;

use super::{MoneyInput, PageRequest, check};
use crate::error::ShopError;
use crate::model::{Order, OrderStatus, Page, Payment, PaymentMethod, PaymentStatus};
use crate::store::orders::captured;

/// The body of `POST /payments`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPaymentInput {
    /// The order paid for.
    pub order_id: Option<Uuid>,
    /// The amount, `> 0`, at most what is still owed.
    pub amount: Option<MoneyInput>,
    /// How.
    pub method: Option<PaymentMethod>,
}

/// A validated [`NewPaymentInput`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewPayment {
    /// The order.
    pub order_id: Uuid,
    /// The amount.
    pub amount: rust_decimal::Decimal,
    /// How.
    pub method: PaymentMethod,
}

impl NewPaymentInput {
    /// Validates a payment.
    pub fn validate(&self) -> Result<NewPayment, ShopError> {
        Ok(NewPayment {
            order_id: check::required(self.order_id, "order_id")?,
            amount: check::money(check::required(self.amount.as_ref(), "amount")?, "amount", false)?,
            method: check::required(self.method, "method")?,
        })
    }
}

/// The body of `PATCH /payments/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentPatch {
    /// `refunded` to refund a captured payment.
    pub status: Option<PaymentStatus>,
}

/// Records a payment for a pending order; the order becomes `paid` once it is covered.
pub async fn create(conn: &mut PgConnection, new: &NewPayment) -> Result<Payment, ShopError> {
    let order = sqlx::query_as::<_, Order>("SELECT * FROM orders WHERE id = $1 FOR UPDATE")
        .bind(new.order_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ShopError::conflict("order_id", format!("there is no order {}", new.order_id)))?;
    if order.status != OrderStatus::Pending {
        return Err(ShopError::conflict(
            "order_id",
            format!(
                "order {} is {}; only pending orders take payments",
                order.id, order.status
            ),
        ));
    }
    let paid = captured(conn, order.id).await?;
    let owed = order.total - paid;
    if new.amount > owed {
        return Err(ShopError::invalid(
            "amount",
            format!(
                "{} is more than the {owed} still owed on order {}",
                new.amount, order.id
            ),
        ));
    }
    let payment = sqlx::query_as::<_, Payment>(
        "INSERT INTO payments (id, order_id, amount, method, status) VALUES ($1, $2, $3, $4, $5) RETURNING *",
    )
    .bind(Uuid::new_v4())
    .bind(order.id)
    .bind(new.amount)
    .bind(new.method)
    .bind(PaymentStatus::Captured)
    .fetch_one(&mut *conn)
    .await?;
    if paid + new.amount == order.total {
        sqlx::query("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1")
            .bind(order.id)
            .bind(OrderStatus::Paid)
            .execute(&mut *conn)
            .await?;
    }
    Ok(payment)
}

/// One payment.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Payment, ShopError> {
    sqlx::query_as::<_, Payment>("SELECT * FROM payments WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ShopError::not_found("payment", id))
}

/// A page of payments in id order, optionally of one order.
pub async fn list(
    db: impl PgExecutor<'_>,
    page: PageRequest,
    order_id: Option<Uuid>,
) -> Result<Page<Payment>, ShopError> {
    let mut query = QueryBuilder::new("SELECT * FROM payments WHERE id > ");
    query.push_bind(page.after_id());
    if let Some(order_id) = order_id {
        query.push(" AND order_id = ").push_bind(order_id);
    }
    query.push(" ORDER BY id LIMIT ").push_bind(page.limit + 1);
    let rows: Vec<Payment> = query.build_query_as().fetch_all(db).await?;
    Ok(page.page(rows, |p| p.id))
}

/// Locks the payment's order, then the payment.
async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<(Order, Payment), ShopError> {
    let order_id: Uuid = sqlx::query_scalar("SELECT order_id FROM payments WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ShopError::not_found("payment", id))?;
    let order = sqlx::query_as::<_, Order>("SELECT * FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    let payment = sqlx::query_as::<_, Payment>("SELECT * FROM payments WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok((order, payment))
}

/// Sets a payment's status. Only `captured → refunded` is a change: the money no longer counts
/// for the order, and a `paid` order whose payments no longer cover it is `pending` again.
/// Refunds of shipped or delivered orders are returns, which the shop does not model.
pub async fn set_status(conn: &mut PgConnection, id: Uuid, to: PaymentStatus) -> Result<Payment, ShopError> {
    let (order, payment) = lock(conn, id).await?;
    if payment.status == to {
        return Ok(payment);
    }
    if to == PaymentStatus::Captured {
        return Err(ShopError::conflict(
            "status",
            format!("payment {id} was refunded and cannot be captured again; make a new payment"),
        ));
    }
    if matches!(order.status, OrderStatus::Shipped | OrderStatus::Delivered) {
        return Err(ShopError::conflict(
            "status",
            format!(
                "order {} is {}; its payments cannot be refunded",
                order.id, order.status
            ),
        ));
    }
    let payment = sqlx::query_as::<_, Payment>(
        "UPDATE payments SET status = $2, updated_at = now() WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(to)
    .fetch_one(&mut *conn)
    .await?;
    if order.status == OrderStatus::Paid {
        sqlx::query("UPDATE orders SET status = $2, updated_at = now() WHERE id = $1")
            .bind(order.id)
            .bind(OrderStatus::Pending)
            .execute(&mut *conn)
            .await?;
    }
    Ok(payment)
}

/// Deletes a refunded payment; captured ones are the shop's record of money taken.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), ShopError> {
    let (_, payment) = lock(conn, id).await?;
    if payment.status != PaymentStatus::Refunded {
        return Err(ShopError::conflict(
            "status",
            format!(
                "payment {id} is {}; only refunded payments can be deleted",
                payment.status
            ),
        ));
    }
    sqlx::query("DELETE FROM payments WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
