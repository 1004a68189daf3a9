//! The shop's operations on its tables, independent of HTTP: input types with their
//! validation, and the SQL of each create, read, update and delete.
//!
//! Writes take a `&mut PgConnection` that is inside a transaction opened by
//! [`crate::db::Db::write`], so they may be run again after a serialization failure; they keep
//! no state outside the transaction. Rows that a write reads in order to decide (stock, an
//! order's status) are read `FOR UPDATE`: CockroachDB then queues the conflicting writers
//! instead of aborting them, and on PostgreSQL the loser of a race gets `40001` at
//! SERIALIZABLE and is retried. Rows are locked in a fixed order (orders before payments,
//! products by id) so two transactions do not deadlock.
//!
//! Validation happens before the transaction and names the field at fault with its JSON path
//! (`items[2].quantity`).

pub mod customers;
pub mod orders;
pub mod payments;
pub mod products;

use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ShopError;
use crate::model::Page;

/// The largest page a list returns.
pub const MAX_PAGE: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 50;

/// Keyset pagination: rows are listed in id order, `limit` at a time, starting after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows per page, 1..=[`MAX_PAGE`].
    pub limit: i64,
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_PAGE,
            after: None,
        }
    }
}

impl PageRequest {
    /// The id to list after: the cursor, or the nil UUID (below every UUID v4) for the first
    /// page, so the query is always an index range scan `id > $1`.
    pub(crate) fn after_id(&self) -> Uuid {
        self.after.unwrap_or(Uuid::nil())
    }

    /// Cuts the `limit + 1` rows a list query fetched into a page and the next cursor.
    pub(crate) fn page<T>(&self, mut rows: Vec<T>, id: impl Fn(&T) -> Uuid) -> Page<T> {
        let limit = usize::try_from(self.limit).unwrap_or(0);
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(id)
        } else {
            None
        };
        Page {
            items: rows,
            next_after,
        }
    }
}

/// A money amount as a client may send it: a JSON number (`19.99`) or a string (`"19.99"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MoneyInput {
    /// A JSON number.
    Number(serde_json::Number),
    /// A string.
    Text(String),
}

impl From<Decimal> for MoneyInput {
    fn from(value: Decimal) -> Self {
        MoneyInput::Text(value.to_string())
    }
}

/// The largest amount `NUMERIC(12,2)` holds.
fn money_max() -> Decimal {
    Decimal::new(999_999_999_999, 2)
}

/// Field validators: each returns the cleaned value or an error naming `field`.
pub(crate) mod check {
    use super::*;

    /// The value of a required field.
    pub fn required<T>(value: Option<T>, field: &str) -> Result<T, ShopError> {
        value.ok_or_else(|| ShopError::invalid(field, format!("{field} is required")))
    }

    /// A display name: trimmed, 1 to 200 characters, no control characters.
    pub fn name(value: &str, field: &str) -> Result<String, ShopError> {
        let v = value.trim();
        if v.is_empty() {
            return Err(ShopError::invalid(field, format!("{field} must not be empty")));
        }
        if v.chars().count() > 200 {
            return Err(ShopError::invalid(
                field,
                format!("{field} is longer than 200 characters"),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(ShopError::invalid(
                field,
                format!("{field} contains control characters"),
            ));
        }
        Ok(v.to_string())
    }

    /// An e-mail address: trimmed and lower-cased, `local@domain.tld`, at most 254 characters.
    pub fn email(value: &str, field: &str) -> Result<String, ShopError> {
        let v = value.trim().to_lowercase();
        let bad = || {
            ShopError::invalid(
                field,
                format!("expected an e-mail address such as ada@example.com, got {value:?}"),
            )
        };
        if v.len() > 254 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = v.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(bad());
        }
        Ok(v)
    }

    /// A SKU: trimmed and upper-cased, 1 to 64 of `A-Z`, `0-9`, `-`.
    pub fn sku(value: &str, field: &str) -> Result<String, ShopError> {
        let v = value.trim().to_uppercase();
        if v.is_empty()
            || v.len() > 64
            || !v
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ShopError::invalid(
                field,
                format!("expected 1 to 64 letters, digits and '-' such as TEA-GREEN-100G, got {value:?}"),
            ));
        }
        Ok(v)
    }

    /// A money amount: a decimal with at most two places, in `[0, 9999999999.99]`, and above
    /// zero unless `allow_zero`.
    pub fn money(value: &MoneyInput, field: &str, allow_zero: bool) -> Result<Decimal, ShopError> {
        let text = match value {
            MoneyInput::Number(n) => n.to_string(),
            MoneyInput::Text(t) => t.trim().to_string(),
        };
        let amount: Decimal = text.parse().map_err(|_| {
            ShopError::invalid(
                field,
                format!("expected a decimal amount such as 19.99, got {text:?}"),
            )
        })?;
        if amount.normalize().scale() > 2 {
            return Err(ShopError::invalid(
                field,
                format!("{field} has more than two decimal places: {text}"),
            ));
        }
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(ShopError::invalid(
                field,
                format!("{field} must not be negative, got {text}"),
            ));
        }
        if amount.is_zero() && !allow_zero {
            return Err(ShopError::invalid(field, format!("{field} must be above zero")));
        }
        if amount > money_max() {
            return Err(ShopError::invalid(
                field,
                format!("{field} is above the largest amount 9999999999.99"),
            ));
        }
        let mut amount = amount;
        amount.rescale(2);
        Ok(amount)
    }

    /// A whole number in `range`.
    pub fn count(value: i64, field: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64, ShopError> {
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ShopError::invalid(
                field,
                format!(
                    "{field} must be between {} and {}, got {value}",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            check::email(" Ada@Example.COM ", "email").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "ada@.com",
        ] {
            let err = check::email(bad, "email").unwrap_err();
            assert!(
                matches!(&err, ShopError::Invalid { field, .. } if field == "email"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn money() {
        let m = |s: &str| MoneyInput::Text(s.into());
        assert_eq!(
            check::money(&m("19.9"), "price", true).unwrap().to_string(),
            "19.90"
        );
        assert!(check::money(&m("0"), "price", true).is_ok());
        assert!(check::money(&m("0"), "amount", false).is_err());
        assert!(check::money(&m("-1"), "price", true).is_err());
        assert!(check::money(&m("1.005"), "price", true).is_err());
        assert!(
            check::money(&m("1.500"), "price", true).is_ok(),
            "trailing zeros are fine"
        );
        assert!(check::money(&m("abc"), "price", true).is_err());
        assert!(check::money(&m("10000000000"), "price", true).is_err());
        let n: MoneyInput = serde_json::from_str("19.99").unwrap();
        assert_eq!(check::money(&n, "price", true).unwrap(), Decimal::new(1999, 2));
    }

    #[test]
    fn skus() {
        assert_eq!(check::sku(" tea-green-100g ", "sku").unwrap(), "TEA-GREEN-100G");
        assert!(check::sku("tea green", "sku").is_err());
        assert!(check::sku("", "sku").is_err());
    }

    #[test]
    fn pages() {
        let req = PageRequest {
            limit: 2,
            after: None,
        };
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let page = req.page(ids.clone(), |id| *id);
        assert_eq!(page.items, ids[..2]);
        assert_eq!(page.next_after, Some(ids[1]));
        let page = req.page(ids[..2].to_vec(), |id| *id);
        assert_eq!(page.next_after, None);
    }
}
