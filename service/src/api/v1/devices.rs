//! `/v1/devices`: thin handlers over `registry::devices`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::AuditedJson;
use crate::api::error::{ApiError, ErrorBody};
use crate::registry::devices::{self, Device, DevicePatch, ListQuery, NewDevice, Page};

/// Register a device.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = NewDevice,
    security(("bearer" = [])),
    responses((status = 201, body = Device), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: AuditedJson<NewDevice>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    let device = devices::create(&state.db, &caller.actor(Some(body.digest)), body.value).await?;
    Ok((StatusCode::CREATED, Json(device)))
}

/// List devices in id order, a page at a time.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<Device>), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Page<Device>>, ApiError> {
    Ok(Json(devices::list(&state.db, &query).await?))
}

/// Read one device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(devices::get(&state.db, &id).await?))
}

/// Change a device's serial, hardware or attributes.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    request_body = DevicePatch, security(("bearer" = [])),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: AuditedJson<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    let actor = caller.actor(Some(body.digest));
    Ok(Json(
        devices::update(&state.db, &actor, &id, body.value).await?,
    ))
}

/// Remove a device.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    devices::delete(&state.db, &caller.actor(None), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
