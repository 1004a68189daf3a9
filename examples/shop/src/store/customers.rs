//! Customers: create, read, list, update (e-mail, name), delete (only without orders).

use serde::Deserialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{PageRequest, check};
use crate::error::{ConstraintExt, ShopError};
use crate::model::{Customer, Page};

/// The body of `POST /customers` and `PATCH /customers/{id}`; absent (or `null`) fields are
/// not changed by a PATCH and are required by a POST.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerInput {
    /// E-mail address, unique among customers.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
}

/// A validated [`CustomerInput`]: `None` means "leave as is".
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerChange {
    /// New e-mail address.
    pub email: Option<String>,
    /// New name.
    pub name: Option<String>,
}

impl CustomerInput {
    /// Validates a new customer: both fields required.
    pub fn validate_new(&self) -> Result<CustomerChange, ShopError> {
        check::required(self.email.as_ref(), "email")?;
        check::required(self.name.as_ref(), "name")?;
        self.validate_change()
    }

    /// Validates a change: at least one field.
    pub fn validate_change(&self) -> Result<CustomerChange, ShopError> {
        let change = CustomerChange {
            email: self
                .email
                .as_deref()
                .map(|v| check::email(v, "email"))
                .transpose()?,
            name: self.name.as_deref().map(|v| check::name(v, "name")).transpose()?,
        };
        if change.email.is_none() && change.name.is_none() {
            return Err(ShopError::Malformed(
                "nothing to change: give email and/or name".into(),
            ));
        }
        Ok(change)
    }
}

fn duplicate_email(email: &Option<String>) -> impl FnOnce() -> ShopError + '_ {
    move || {
        ShopError::conflict(
            "email",
            format!(
                "a customer with e-mail {} already exists",
                email.as_deref().unwrap_or("?")
            ),
        )
    }
}

/// Inserts a customer with a new UUID.
pub async fn create(conn: &mut PgConnection, new: &CustomerChange) -> Result<Customer, ShopError> {
    sqlx::query_as::<_, Customer>("INSERT INTO customers (id, email, name) VALUES ($1, $2, $3) RETURNING *")
        .bind(Uuid::new_v4())
        .bind(&new.email)
        .bind(&new.name)
        .fetch_one(conn)
        .await
        .on_constraint("customers_email_key", duplicate_email(&new.email))
}

/// One customer.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Customer, ShopError> {
    sqlx::query_as::<_, Customer>("SELECT * FROM customers WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ShopError::not_found("customer", id))
}

/// A page of customers in id order.
pub async fn list(db: impl PgExecutor<'_>, page: PageRequest) -> Result<Page<Customer>, ShopError> {
    let rows = sqlx::query_as::<_, Customer>("SELECT * FROM customers WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(page.after_id())
        .bind(page.limit + 1)
        .fetch_all(db)
        .await?;
    Ok(page.page(rows, |c| c.id))
}

/// Changes a customer's e-mail and/or name.
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    change: &CustomerChange,
) -> Result<Customer, ShopError> {
    sqlx::query_as::<_, Customer>(
        "UPDATE customers SET email = COALESCE($2, email), name = COALESCE($3, name), updated_at = now() \
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&change.email)
    .bind(&change.name)
    .fetch_optional(conn)
    .await
    .on_constraint("customers_email_key", duplicate_email(&change.email))?
    .ok_or_else(|| ShopError::not_found("customer", id))
}

/// Deletes a customer who has no orders.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), ShopError> {
    let deleted = sqlx::query("DELETE FROM customers WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .on_constraint("orders_customer_id_fkey", || {
            ShopError::conflict("id", format!("customer {id} has orders and cannot be deleted"))
        })?;
    if deleted.rows_affected() == 0 {
        return Err(ShopError::not_found("customer", id));
    }
    Ok(())
}
