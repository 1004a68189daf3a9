//! Request parsing that names what is wrong: a JSON body whose errors carry the field's JSON
//! path ([`ApiJson`]), path ids that must be UUIDs ([`parse_id`]), and query strings with
//! known parameters only ([`QueryParams`]).
//!
//! axum's own `Json` and `Query` extractors answer bad input with plain-text bodies; the shop
//! answers every error with its JSON error body, so it parses these itself.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::error::ShopError;
use crate::store::{MAX_PAGE, PageRequest};

/// A JSON request body parsed into `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// Cuts serde_json's " at line L column C" from a message.
fn without_position(message: &str) -> &str {
    message.find(" at line ").map_or(message, |at| &message[..at])
}

/// The name between the first pair of backticks (`unknown field `x``).
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Parses `bytes` as a `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ShopError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ShopError::Malformed(
            "the request body must be a JSON object".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = without_position(&inner.to_string()).to_string();
        if !inner.is_data() {
            return ShopError::Malformed(format!(
                "the body is not valid JSON: {message} (line {}, column {})",
                inner.line(),
                inner.column()
            ));
        }
        // The path includes an unknown field's own name.
        let at = if path == "." { None } else { Some(path) };
        if message.starts_with("unknown field") {
            let field = at.unwrap_or_else(|| quoted_name(&message).unwrap_or("?").to_string());
            return ShopError::invalid(field, message);
        }
        match at {
            Some(field) => ShopError::invalid(field.clone(), format!("{field}: {message}")),
            None => ShopError::Malformed(format!("the body must be a JSON object: {message}")),
        }
    })?;
    deserializer.end().map_err(|e| {
        ShopError::Malformed(format!(
            "the body has more after the JSON value (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ShopError::Malformed(format!("cannot read the request body: {e}")))?;
        Ok(ApiJson(parse_json(&bytes)?))
    }
}

/// A path segment that must be a UUID; `what` names it in the error (`id`, `product_id`).
pub fn parse_id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ShopError::Malformed(format!("{what} in the path must be a UUID, got {text:?}")).into())
}

/// A query string's parameters; each is taken once by name, and [`QueryParams::finish`]
/// refuses any left over.
#[derive(Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Parses `raw` (`limit=10&after=...`).
    pub fn parse(raw: Option<&str>) -> Self {
        Self {
            pairs: raw
                .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        }
    }

    fn bad(name: &str, message: String) -> ApiError {
        ShopError::Invalid {
            field: name.to_string(),
            message,
        }
        .into()
    }

    /// Takes parameter `name`, parsed as `T`.
    pub fn take<T: FromStr>(&mut self, name: &str, expected: &str) -> Result<Option<T>, ApiError> {
        let Some(at) = self.pairs.iter().position(|(k, _)| k == name) else {
            return Ok(None);
        };
        let (_, value) = self.pairs.remove(at);
        if self.pairs.iter().any(|(k, _)| k == name) {
            return Err(Self::bad(
                name,
                format!("query parameter {name} is given more than once"),
            ));
        }
        value.parse().map(Some).map_err(|_| {
            Self::bad(
                name,
                format!("query parameter {name} must be {expected}, got {value:?}"),
            )
        })
    }

    /// Takes `limit` and `after`.
    pub fn page(&mut self) -> Result<PageRequest, ApiError> {
        let mut page = PageRequest::default();
        if let Some(limit) = self.take::<i64>("limit", &format!("a number from 1 to {MAX_PAGE}"))? {
            if !(1..=MAX_PAGE).contains(&limit) {
                return Err(Self::bad(
                    "limit",
                    format!("query parameter limit must be from 1 to {MAX_PAGE}, got {limit}"),
                ));
            }
            page.limit = limit;
        }
        page.after = self.take::<Uuid>("after", "a UUID (the next_after of the previous page)")?;
        Ok(page)
    }

    /// Refuses parameters nobody took.
    pub fn finish(self, known: &str) -> Result<(), ApiError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(Self::bad(
                name,
                format!("unknown query parameter {name}; known: {known}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::customers::CustomerInput;
    use crate::store::orders::NewOrderInput;

    fn field_of(error: ShopError) -> Option<String> {
        match error {
            ShopError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let err =
            parse_json::<NewOrderInput>(br#"{"items": [{"product_id": "x", "quantity": 1}]}"#).unwrap_err();
        assert_eq!(field_of(err).as_deref(), Some("items[0].product_id"));
        let err =
            parse_json::<NewOrderInput>(br#"{"items": [{"quantity": 1, "colour": "red"}]}"#).unwrap_err();
        assert_eq!(field_of(err).as_deref(), Some("items[0].colour"));
        let err = parse_json::<CustomerInput>(br#"{"email": 5}"#).unwrap_err();
        assert_eq!(field_of(err).as_deref(), Some("email"));
        let err = parse_json::<CustomerInput>(br#"{"nickname": "x"}"#).unwrap_err();
        assert_eq!(field_of(err).as_deref(), Some("nickname"));
        assert!(matches!(
            parse_json::<CustomerInput>(b"{\"email\": "),
            Err(ShopError::Malformed(_))
        ));
        assert!(matches!(
            parse_json::<CustomerInput>(b"[]"),
            Err(ShopError::Malformed(_))
        ));
        assert!(matches!(
            parse_json::<CustomerInput>(b"{} x"),
            Err(ShopError::Malformed(_))
        ));
        assert!(matches!(
            parse_json::<CustomerInput>(b""),
            Err(ShopError::Malformed(_))
        ));
    }

    #[test]
    fn query_parameters() {
        let mut q = QueryParams::parse(Some("limit=5&status=paid"));
        assert_eq!(q.page().unwrap().limit, 5);
        assert!(q.finish("limit, after").is_err(), "status was not taken");
        let mut q = QueryParams::parse(Some("limit=0"));
        assert!(q.page().is_err());
        let mut q = QueryParams::parse(Some("after=nope"));
        assert!(q.page().is_err());
    }
}
