//! The request extractors of the API, each refusing bad input with the API's JSON error: the
//! JSON body of mutating routes (bounded by the router's body limit, parsed strictly with the
//! parser's own message in a 400, and hashed, so the audit event can name the exact request
//! that caused it), and the query string and path parameters (`invalid_query`, `invalid_path`).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use fleetwave_artifacts::Sha256;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A parsed JSON body and the hex SHA-256 of its bytes.
pub struct AuditedJson<T> {
    /// The parsed value.
    pub value: T,
    /// Hex SHA-256 of the body as received.
    pub digest: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AuditedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "invalid_body"
            };
            ApiError::new(status, code, e.body_text())
        })?;
        let invalid =
            |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message);
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("invalid JSON body: {e}")))?;
        // JSON writes NUL only as the escape \u0000; PostgreSQL text cannot hold it.
        if bytes.windows(6).any(|w| w == b"\\u0000")
            && serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| has_nul(&v))
        {
            return Err(invalid("strings may not contain NUL (\\u0000)".to_owned()));
        }
        Ok(AuditedJson {
            value,
            digest: Sha256::of(&bytes).to_string(),
        })
    }
}

/// The query string as `T`; a 400 `invalid_query` naming the problem when it does not parse.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The path parameters as `T`; a 400 `invalid_path` when they do not parse.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Whether any string or key in `value` holds U+0000.
fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Middleware: a request whose path or query string holds an encoded NUL (`%00`) is refused
/// with a 400 before any handler sees it (PostgreSQL text cannot hold NUL; no id or cursor
/// has one).
pub async fn refuse_nul(
    request: Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let uri = request.uri();
    let has = |s: &str| {
        s.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    if has(uri.path()) || uri.query().is_some_and(has) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the path and query may not contain NUL (%00)",
        ));
    }
    Ok(next.run(request).await)
}
