//! `/v1/jobs`: single-device jobs (targeted installs, retries) and execution status.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::{AuditedJson, Path};
use crate::api::error::{ApiError, ErrorBody};
use crate::jobs::{self, ExecutionView, Job};

impl From<jobs::Error> for ApiError {
    fn from(e: jobs::Error) -> Self {
        match e {
            jobs::Error::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            jobs::Error::Db(d) => ApiError::internal(d),
            jobs::Error::Url(u) => ApiError::internal(u),
        }
    }
}

/// A job to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The release to install.
    pub release: String,
    /// The device to install it on.
    pub device: String,
}

/// Install a release on one device: the execution is queued and the device is sent the job
/// document on `jobs/notify-next`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = NewJob, security(("bearer" = [])),
    responses((status = 201, body = Job), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: AuditedJson<NewJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = jobs::create_for_device(
        &state.db,
        &caller.actor(Some(body.digest)),
        &body.value.release,
        &body.value.device,
    )
    .await?;
    let thing = fleetwave_artifacts::DeviceId::parse(&body.value.device)
        .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
    if let Some(doc) = jobs::document(&state.db, &state.storage, &job.id, &thing).await? {
        state.mqtt.notify_next(&thing, doc).await;
    }
    Ok((StatusCode::CREATED, Json(job)))
}

/// A device's execution of a job, with every transition it went through.
#[utoipa::path(get, path = "/v1/jobs/{id}/executions/{device}", tag = "jobs",
    params(("id" = String, Path), ("device" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = ExecutionView), (status = 404, body = ErrorBody)))]
pub async fn execution(
    State(state): State<AppState>,
    Path((id, device)): Path<(String, String)>,
) -> Result<Json<ExecutionView>, ApiError> {
    Ok(Json(jobs::execution(&state.db, &id, &device).await?))
}
