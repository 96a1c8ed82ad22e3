//! `/v1/tokens`: API tokens, admin only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::AuditedJson;
use crate::api::error::{ApiError, ErrorBody};
use crate::auth::{self, NewToken, Role};

/// A token to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What the token is for (1 to 128 characters).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Create a token; its secret is in this response only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenRequest,
    security(("bearer" = [])),
    responses((status = 201, body = NewToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: AuditedJson<TokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    caller.require(Role::Admin)?;
    let name = body.value.name.trim();
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "invalid name: 1 to 128 characters",
        ));
    }
    let token = auth::create(
        &state.db,
        &caller.actor(Some(body.digest)),
        name,
        body.value.role,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(token)))
}
