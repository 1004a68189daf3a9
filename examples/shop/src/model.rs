//! The shop's rows: one struct per table, read with sqlx's `FromRow` and written to clients as
//! JSON. Money is `NUMERIC(12,2)` in the database and a decimal string (`"19.99"`) in JSON, so
//! no amount passes through a binary float. Times are UTC.
//!
//! The status columns are `TEXT` with a `CHECK` constraint (portable; PostgreSQL enums differ
//! from CockroachDB's), read and written as Rust enums through `text_enum!`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Declares a Rust enum stored as one of a fixed set of strings in a `TEXT` column.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "expected one of {}, got {other:?}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}

text_enum! {
    /// Where an order is in its life.
    OrderStatus {
        /// Created; items can change; awaiting payment.
        Pending => "pending",
        /// Paid in full.
        Paid => "paid",
        /// Handed to the carrier.
        Shipped => "shipped",
        /// Received by the customer.
        Delivered => "delivered",
        /// Cancelled; its stock was returned and its payments refunded.
        Cancelled => "cancelled",
    }
}

impl OrderStatus {
    /// Whether a client may move an order from `self` to `to` with `PATCH /orders/{id}`.
    /// `pending → paid` happens only by paying (`POST /payments`).
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, Cancelled) | (Paid, Shipped) | (Paid, Cancelled) | (Shipped, Delivered)
        )
    }
}

text_enum! {
    /// Where a payment is.
    PaymentStatus {
        /// The money was taken.
        Captured => "captured",
        /// The money was given back.
        Refunded => "refunded",
    }
}

text_enum! {
    /// How a customer paid.
    PaymentMethod {
        /// Credit or debit card.
        Card => "card",
        /// Bank transfer.
        BankTransfer => "bank_transfer",
        /// A wallet app.
        Wallet => "wallet",
    }
}

/// A row of `customers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Customer {
    /// Primary key, made by the application (UUID v4).
    pub id: Uuid,
    /// Unique e-mail address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `products`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Product {
    /// Primary key.
    pub id: Uuid,
    /// Unique stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price, `>= 0`, two decimal places.
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    /// Units in stock, `>= 0`.
    pub stock: i64,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Order {
    /// Primary key.
    pub id: Uuid,
    /// The customer who placed it.
    pub customer_id: Uuid,
    /// Its status.
    pub status: OrderStatus,
    /// Sum of quantity × unit price over its items.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `order_items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OrderItem {
    /// Primary key.
    pub id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The product; unique within the order.
    pub product_id: Uuid,
    /// Units, `> 0`.
    pub quantity: i64,
    /// The product's price when the item was added.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
}

/// An order with its items, as `GET /orders/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderDetail {
    /// The order.
    #[serde(flatten)]
    pub order: Order,
    /// Its items, by product id.
    pub items: Vec<OrderItem>,
}

/// A row of `payments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Payment {
    /// Primary key.
    pub id: Uuid,
    /// The order paid for.
    pub order_id: Uuid,
    /// Amount, `> 0`.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// How it was paid.
    pub method: PaymentMethod,
    /// Captured or refunded.
    pub status: PaymentStatus,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// One page of a list: the rows and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The rows, in id order.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `null` on the last page.
    pub next_after: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_round_trips() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(*s));
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert!("lost".parse::<OrderStatus>().unwrap_err().contains("pending"));
    }

    #[test]
    fn transitions() {
        use OrderStatus::*;
        assert!(Pending.can_become(Cancelled));
        assert!(!Pending.can_become(Paid), "paying is a payment, not a patch");
        assert!(!Delivered.can_become(Cancelled));
        assert!(!Cancelled.can_become(Pending));
    }
}
