//! `/v1/devices`: thin handlers over `registry::devices`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::{AuditedJson, Path, Query};
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

/// Remove a device with its job executions and group memberships; its execution history (the
/// audit trail of what it ran) stays.
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

/// Desired state to set on a device's shadow (fields merge; `null` deletes one).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredUpdate {
    /// The desired fields.
    #[schema(value_type = Object)]
    pub desired: serde_json::Value,
    /// Apply only if the shadow is at this version (else 409).
    #[serde(default)]
    pub version: Option<u64>,
}

fn shadow_error(r: crate::shadow::document::Rejection) -> ApiError {
    let (status, code) = match r.code {
        404 => (StatusCode::NOT_FOUND, "not_found"),
        409 => (StatusCode::CONFLICT, "version_conflict"),
        413 => (StatusCode::PAYLOAD_TOO_LARGE, "shadow_too_large"),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_shadow_update"),
    };
    ApiError::new(status, code, r.message)
}

fn device_id(id: &str) -> Result<fleetwave_artifacts::DeviceId, ApiError> {
    fleetwave_artifacts::DeviceId::parse(id)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()))
}

/// Read a device's shadow: desired, reported, delta, metadata and version.
#[utoipa::path(get, path = "/v1/devices/{id}/shadow", tag = "devices", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, description = "the shadow document"), (status = 404, body = ErrorBody)))]
pub async fn shadow(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let thing = device_id(&id)?;
    let shadow = crate::shadow::load(&state.db, &thing)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no shadow exists for {id}"),
            )
        })?;
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    Ok(Json(shadow.get_document(now, None)))
}

/// Set desired state on a device's shadow; the device hears the delta over MQTT.
#[utoipa::path(patch, path = "/v1/devices/{id}/shadow", tag = "devices", params(("id" = String, Path)),
    request_body = DesiredUpdate, security(("bearer" = [])),
    responses((status = 200, description = "the update/accepted document"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_desired(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: AuditedJson<DesiredUpdate>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let thing = device_id(&id)?;
    let mut request = serde_json::json!({"state": {"desired": body.value.desired}});
    if let Some(v) = body.value.version {
        request["version"] = v.into();
    }
    let actor = caller.actor(Some(body.digest));
    let updated = crate::shadow::apply(&state.db, &thing, &request, Some(&actor))
        .await?
        .map_err(shadow_error)?;
    let accepted = updated.accepted;
    let mut out = vec![crate::shadow::Outgoing {
        channel: crate::shadow::Channel::Documents,
        payload: updated.documents,
    }];
    if let Some(delta) = updated.delta {
        out.push(crate::shadow::Outgoing {
            channel: crate::shadow::Channel::Delta,
            payload: delta,
        });
    }
    state.mqtt.publish_shadow(&thing, out).await;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        accepted,
    ))
}
