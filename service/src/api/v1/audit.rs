//! `/v1/audit`: the audit chain, readable by every role.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::AppState;
use crate::api::body::Query;
use crate::api::error::ApiError;
use crate::audit::{self, Report};

/// Walk the whole audit chain and report the first broken link, if any.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = Report)))]
pub async fn verify(State(state): State<AppState>) -> Result<Json<Report>, ApiError> {
    Ok(Json(audit::verify(&state.db).await?))
}

/// Which page of the device report, in which format.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DevicesQuery {
    /// Devices after this id.
    pub after: Option<String>,
    /// At most this many (1 to 10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u64>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// For every device: the version it runs, since when, through which rollout and release,
/// created and approved by whom. Page with `after` (the last device id of the page before).
#[utoipa::path(get, path = "/v1/audit/devices", tag = "audit", params(DevicesQuery),
    security(("bearer" = [])), responses((status = 200, body = Vec<audit::devices::DeviceLine>),
        (status = 422, body = crate::api::error::ErrorBody)))]
pub async fn devices(
    State(state): State<AppState>,
    Query(query): Query<DevicesQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "limit: 1 to 10000",
        ));
    }
    let lines = audit::devices::lines(&state.db, query.after.as_deref(), limit).await?;
    match query.format.as_deref() {
        None | Some("json") => Ok(Json(lines).into_response()),
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            audit::devices::csv(&lines),
        )
            .into_response()),
        Some(other) => Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("format: {other:?} is neither json nor csv"),
        )),
    }
}
