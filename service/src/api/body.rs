//! The JSON body extractor of mutating routes: bounded (by the router's body limit), parsed
//! strictly with the parser's own message in a 400, and hashed, so the audit event can name
//! the exact request that caused it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
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
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("invalid JSON body: {e}"),
            )
        })?;
        Ok(AuditedJson {
            value,
            digest: Sha256::of(&bytes).to_string(),
        })
    }
}
