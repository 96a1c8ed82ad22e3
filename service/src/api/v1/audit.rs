//! `/v1/audit`: the audit chain, readable by every role.

use axum::Json;
use axum::extract::State;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::audit::{self, Report};

/// Walk the whole audit chain and report the first broken link, if any.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Report)))]
pub async fn verify(State(state): State<AppState>) -> Result<Json<Report>, ApiError> {
    Ok(Json(audit::verify(&state.db).await?))
}
