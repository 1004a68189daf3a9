//! The HTTP edge of [`ShopError`]: each error becomes a status and a JSON body
//! `{"error": "...", "field": "..."}` (`field` only when one field is at fault).
//!
//! | error | status |
//! |---|---|
//! | malformed JSON, bad path or query parameter, nothing to change | 400 |
//! | a field with a value the shop does not accept | 422 |
//! | a row that does not exist | 404 |
//! | duplicate unique value, reference to a missing row or from an existing one, a status change or stock level that forbids the change | 409 |
//! | retries exhausted on serialization conflicts, database unreachable | 503 with `Retry-After` |
//! | anything else | 500, details only in the log |

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{
    CHECK_VIOLATION, FOREIGN_KEY_VIOLATION, ShopError, UNIQUE_VIOLATION, violated_constraint,
};

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// The field at fault, as a JSON path, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

/// A [`ShopError`] on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub ShopError);

impl From<ShopError> for ApiError {
    fn from(error: ShopError) -> Self {
        ApiError(error)
    }
}

/// The column a constraint is about, from the `table_column_suffix` names the migrations
/// give every constraint.
fn constraint_field(constraint: &str) -> String {
    let rest = ["order_items_", "orders_", "customers_", "products_", "payments_"]
        .iter()
        .find_map(|t| constraint.strip_prefix(t))
        .unwrap_or(constraint);
    ["_key", "_fkey", "_check"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest)
        .to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let (status, field, message) = match &error {
            ShopError::Malformed(message) => (StatusCode::BAD_REQUEST, None, message.clone()),
            ShopError::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(field.clone()),
                message.clone(),
            ),
            ShopError::NotFound { .. } => (StatusCode::NOT_FOUND, None, error.to_string()),
            ShopError::Conflict { field, message } => (StatusCode::CONFLICT, field.clone(), message.clone()),
            ShopError::RetriesExhausted { .. } | ShopError::Unavailable(_) => {
                tracing::warn!(%error, "answering 503");
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(ErrorBody {
                        error: error.to_string(),
                        field: None,
                    }),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            ShopError::Database(db) => match violated_constraint(db) {
                Some((code, constraint)) if code == UNIQUE_VIOLATION || code == FOREIGN_KEY_VIOLATION => (
                    StatusCode::CONFLICT,
                    Some(constraint_field(constraint)),
                    format!("the change violates constraint {constraint}"),
                ),
                Some((code, constraint)) if code == CHECK_VIOLATION => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some(constraint_field(constraint)),
                    format!("the value violates constraint {constraint}"),
                ),
                _ if error.sqlstate().is_some_and(|c| c.starts_with("22")) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    None,
                    format!("the database refused a value: {db}"),
                ),
                _ => {
                    tracing::error!(%error, "internal error");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        None,
                        "internal error; the shop's log has the details".to_string(),
                    )
                }
            },
        };
        (
            status,
            Json(ErrorBody {
                error: message,
                field,
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_fields() {
        assert_eq!(constraint_field("customers_email_key"), "email");
        assert_eq!(constraint_field("order_items_product_id_fkey"), "product_id");
        assert_eq!(constraint_field("products_price_check"), "price");
        assert_eq!(constraint_field("other"), "other");
    }
}
