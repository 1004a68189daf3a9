//! Products: create, read, list, update (name, price, stock), delete (only if never ordered).

use serde::Deserialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{MoneyInput, PageRequest, check};
use crate::error::{ConstraintExt, ShopError};
use crate::model::{Page, Product};

/// The most units of one product the shop stocks.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// The body of `POST /products` and `PATCH /products/{id}`. A POST needs `sku`, `name` and
/// `price` (`stock` defaults to 0); a PATCH changes what it gives.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    /// Stock-keeping unit, unique.
    pub sku: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Unit price.
    pub price: Option<MoneyInput>,
    /// Units in stock.
    pub stock: Option<i64>,
}

/// A validated [`ProductInput`]; `None` means "leave as is".
#[derive(Debug, Clone, PartialEq)]
pub struct ProductChange {
    /// New SKU.
    pub sku: Option<String>,
    /// New name.
    pub name: Option<String>,
    /// New price.
    pub price: Option<rust_decimal::Decimal>,
    /// New stock.
    pub stock: Option<i64>,
}

impl ProductInput {
    /// Validates a new product.
    pub fn validate_new(&self) -> Result<ProductChange, ShopError> {
        check::required(self.sku.as_ref(), "sku")?;
        check::required(self.name.as_ref(), "name")?;
        check::required(self.price.as_ref(), "price")?;
        let mut change = self.validate_change()?;
        change.stock.get_or_insert(0);
        Ok(change)
    }

    /// Validates a change: at least one field.
    pub fn validate_change(&self) -> Result<ProductChange, ShopError> {
        let change = ProductChange {
            sku: self.sku.as_deref().map(|v| check::sku(v, "sku")).transpose()?,
            name: self.name.as_deref().map(|v| check::name(v, "name")).transpose()?,
            price: self
                .price
                .as_ref()
                .map(|v| check::money(v, "price", true))
                .transpose()?,
            stock: self
                .stock
                .map(|v| check::count(v, "stock", 0..=MAX_STOCK))
                .transpose()?,
        };
        if change
            == (ProductChange {
                sku: None,
                name: None,
                price: None,
                stock: None,
            })
        {
            return Err(ShopError::Malformed(
                "nothing to change: give sku, name, price and/or stock".into(),
            ));
        }
        Ok(change)
    }
}

fn duplicate_sku(sku: &Option<String>) -> impl FnOnce() -> ShopError + '_ {
    move || {
        ShopError::conflict(
            "sku",
            format!(
                "a product with sku {} already exists",
                sku.as_deref().unwrap_or("?")
            ),
        )
    }
}

/// Inserts a product with a new UUID.
pub async fn create(conn: &mut PgConnection, new: &ProductChange) -> Result<Product, ShopError> {
    sqlx::query_as::<_, Product>(
        "INSERT INTO products (id, sku, name, price, stock) VALUES ($1, $2, $3, $4, $5) RETURNING *",
    )
    .bind(Uuid::new_v4())
    .bind(&new.sku)
    .bind(&new.name)
    .bind(new.price)
    .bind(new.stock.unwrap_or(0))
    .fetch_one(conn)
    .await
    .on_constraint("products_sku_key", duplicate_sku(&new.sku))
}

/// One product.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Product, ShopError> {
    sqlx::query_as::<_, Product>("SELECT * FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ShopError::not_found("product", id))
}

/// A page of products in id order.
pub async fn list(db: impl PgExecutor<'_>, page: PageRequest) -> Result<Page<Product>, ShopError> {
    let rows = sqlx::query_as::<_, Product>("SELECT * FROM products WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(page.after_id())
        .bind(page.limit + 1)
        .fetch_all(db)
        .await?;
    Ok(page.page(rows, |p| p.id))
}

/// Changes a product. A new price applies to orders placed from now on; existing order items
/// keep the price they were placed at.
pub async fn update(conn: &mut PgConnection, id: Uuid, change: &ProductChange) -> Result<Product, ShopError> {
    sqlx::query_as::<_, Product>(
        "UPDATE products SET sku = COALESCE($2, sku), name = COALESCE($3, name), price = COALESCE($4, price), \
         stock = COALESCE($5, stock), updated_at = now() WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&change.sku)
    .bind(&change.name)
    .bind(change.price)
    .bind(change.stock)
    .fetch_optional(conn)
    .await
    .on_constraint("products_sku_key", duplicate_sku(&change.sku))?
    .ok_or_else(|| ShopError::not_found("product", id))
}

/// Deletes a product that is on no order.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), ShopError> {
    let deleted = sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .on_constraint("order_items_product_id_fkey", || {
            ShopError::conflict("id", format!("product {id} is on orders and cannot be deleted"))
        })?;
    if deleted.rows_affected() == 0 {
        return Err(ShopError::not_found("product", id));
    }
    Ok(())
}

/// The body of `POST /products/{id}/restock`: units received into stock.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestockInput {
    /// Units received, `> 0`.
    pub quantity: Option<i64>,
}

impl RestockInput {
    /// The validated quantity.
    pub fn validate(&self) -> Result<i64, ShopError> {
        check::count(
            check::required(self.quantity, "quantity")?,
            "quantity",
            1..=MAX_STOCK,
        )
    }
}

/// Adds `quantity` units to a product's stock (an increment, so concurrent restocks and
/// orders never overwrite each other).
pub async fn restock(conn: &mut PgConnection, id: Uuid, quantity: i64) -> Result<Product, ShopError> {
    let product = sqlx::query_as::<_, Product>(
        "UPDATE products SET stock = stock + $2, updated_at = now() WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(quantity)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ShopError::not_found("product", id))?;
    if product.stock > MAX_STOCK {
        return Err(ShopError::invalid(
            "quantity",
            format!(
                "stock would be {}, above the largest stock {MAX_STOCK}",
                product.stock
            ),
        ));
    }
    Ok(product)
}
