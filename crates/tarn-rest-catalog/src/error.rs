//! The REST protocol's error model, at the HTTP edge only: every failure leaves as
//! `{"error": {"message", "type", "code"}}` with the status code and exception type name the
//! specification gives for the route (`NoSuchTableException` 404, `CommitFailedException` 409,
//! ...). Clients (pyiceberg, Iceberg's Java client, DuckDB) pick the exception they raise by
//! the code and the type, so the names are the specification's, never tarn's own.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iceberg::{NamespaceIdent, TableIdent};
use iceberg_catalog_rest::ErrorModel;
use serde::Serialize;
use tarn_core::ErrorKind;

/// A failed request: the status, the specification's exception type and a message that names
/// the namespace, table or field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The exception type name of the specification, e.g. `NoSuchTableException`.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

/// `{"error": ErrorModel}`: `iceberg-catalog-rest`'s `ErrorResponse` keeps its field private
/// (it is only ever deserialized by the client), so the envelope is ours.
#[derive(Serialize)]
struct ErrorEnvelope {
    error: ErrorModel,
}

impl RestError {
    /// An error with `status` and the specification's type name `kind`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400 `BadRequestException`: malformed JSON, a missing field, an invalid value.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestException", message)
    }

    /// 404 `NoSuchNamespaceException`.
    pub fn no_such_namespace(ns: &NamespaceIdent) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchNamespaceException",
            format!("namespace {} does not exist", display_namespace(ns)),
        )
    }

    /// 404 `NoSuchTableException`.
    pub fn no_such_table(ident: &TableIdent) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchTableException",
            format!("table {} does not exist", display_table(ident)),
        )
    }

    /// 409 `AlreadyExistsException`.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "AlreadyExistsException", message)
    }

    /// 409 `CommitFailedException`: a requirement failed or another writer committed first;
    /// the catalog is unchanged and the client may retry on the table as it is now.
    pub fn commit_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CommitFailedException", message)
    }

    /// 500 `InternalServerError`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", message)
    }

    /// 500 `CommitStateUnknownException`: the catalog database failed while swapping the
    /// table pointer, so whether the commit landed is unknown; clients must not delete the
    /// files they wrote for it.
    pub fn commit_state_unknown(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CommitStateUnknownException",
            message,
        )
    }

    /// A tarn error from the lake, by its kind. Call sites that know whether a table or a
    /// namespace was missing map `NotFound` themselves, with the specific type.
    pub fn from_lake(e: &tarn_core::Error) -> Self {
        let message = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => Self::new(StatusCode::NOT_FOUND, "NotFoundException", message),
            ErrorKind::AlreadyExists => Self::already_exists(message),
            ErrorKind::CommitConflict => Self::commit_failed(message),
            ErrorKind::InvalidInput | ErrorKind::Config => Self::bad_request(message),
            _ => Self::internal(message),
        }
    }

    /// An `iceberg` error raised while checking requirements or applying updates.
    pub fn from_iceberg(what: &str, e: &iceberg::Error) -> Self {
        use iceberg::ErrorKind as K;
        let message = format!("{what}: {e}");
        match e.kind() {
            K::CatalogCommitConflicts => Self::commit_failed(message),
            K::TableNotFound => Self::new(StatusCode::NOT_FOUND, "NoSuchTableException", message),
            K::NamespaceNotFound => Self::new(StatusCode::NOT_FOUND, "NoSuchNamespaceException", message),
            K::TableAlreadyExists | K::NamespaceAlreadyExists => Self::already_exists(message),
            K::DataInvalid | K::FeatureUnsupported | K::PreconditionFailed => Self::bad_request(message),
            _ => Self::internal(message),
        }
    }
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.message)
    }
}

impl std::error::Error for RestError {}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorModel {
                message: self.message,
                r#type: self.kind.to_string(),
                code: self.status.as_u16(),
                stack: None,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// A namespace as people write it: levels joined by dots.
pub(crate) fn display_namespace(ns: &NamespaceIdent) -> String {
    ns.join(".")
}

/// A table as people write it: `ns.table`.
pub(crate) fn display_table(ident: &TableIdent) -> String {
    format!("{}.{}", ident.namespace().join("."), ident.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_body_is_the_spec_envelope() {
        let ns = NamespaceIdent::new("sales".into());
        let response = RestError::no_such_namespace(&ns).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "namespace sales does not exist",
                "type": "NoSuchNamespaceException",
                "code": 404,
                "stack": null
            }})
        );
    }
}
