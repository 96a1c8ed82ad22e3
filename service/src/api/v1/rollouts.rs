//! `/v1/rollouts`: thin handlers over `rollouts`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::{AuditedJson, Path, Query};
use crate::api::error::{ApiError, ErrorBody};
use crate::auth::Role;
use crate::registry::devices::page_limit;
use crate::rollouts::plan::State as RolloutState;
use crate::rollouts::spec::NewRollout;
use crate::rollouts::{self, Action, Rollout, Status};

impl From<rollouts::Error> for ApiError {
    fn from(e: rollouts::Error) -> Self {
        match e {
            rollouts::Error::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                e.to_string(),
            ),
            rollouts::Error::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            rollouts::Error::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "illegal_state", e.to_string())
            }
            rollouts::Error::Unusable(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "manifest_expired",
                e.to_string(),
            ),
            rollouts::Error::Db(d) => ApiError::internal(d),
            rollouts::Error::Registry(r) => r.into(),
        }
    }
}

/// Which rollouts to list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only those in this state (`RUNNING`, `HALTED`, ...).
    pub state: Option<String>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// Which wave to approve.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The wave, from 1 (default: the next gated one).
    #[serde(default)]
    pub wave: Option<u32>,
}

/// Create a rollout. It starts at its `start_at` (at once without one); its target is cut
/// into waves then, by each device's stable bucket.
#[utoipa::path(post, path = "/v1/rollouts", tag = "rollouts", request_body = NewRollout, security(("bearer" = [])),
    responses((status = 201, body = Rollout), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "a bad field (the message names it), or an expired release")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: AuditedJson<NewRollout>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    caller.require(Role::Release)?;
    let rollout = rollouts::create(&state.db, &caller.actor(Some(body.digest)), body.value).await?;
    Ok((StatusCode::CREATED, Json(rollout)))
}

/// The newest rollouts first.
#[utoipa::path(get, path = "/v1/rollouts", tag = "rollouts", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<Rollout>), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<Rollout>>, ApiError> {
    let filter = query
        .state
        .as_deref()
        .map(|s| s.parse::<RolloutState>())
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e))?;
    Ok(Json(
        rollouts::list(&state.db, filter, page_limit(query.limit)?).await?,
    ))
}

/// A rollout with every wave's counters (maintained, never counted) and its incompatible
/// devices.
#[utoipa::path(get, path = "/v1/rollouts/{id}", tag = "rollouts", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = Status), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Status>, ApiError> {
    Ok(Json(rollouts::status(&state.db, &id).await?))
}

async fn act(
    state: &AppState,
    caller: &Caller,
    digest: Option<String>,
    id: &str,
    action: Action,
) -> Result<Json<Rollout>, ApiError> {
    caller.require(Role::Release)?;
    Ok(Json(
        rollouts::act(&state.db, &caller.actor(digest), id, action).await?,
    ))
}

/// Pause: nothing more is queued and no wave advances; the wave notice is cleared.
#[utoipa::path(post, path = "/v1/rollouts/{id}/pause", tag = "rollouts", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = Rollout), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    act(&state, &caller, None, &id, Action::Pause).await
}

/// Resume a paused rollout where it stopped.
#[utoipa::path(post, path = "/v1/rollouts/{id}/resume", tag = "rollouts", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = Rollout), (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    act(&state, &caller, None, &id, Action::Resume).await
}

/// Cancel for good: queued executions are canceled, the notice cleared.
#[utoipa::path(post, path = "/v1/rollouts/{id}/cancel", tag = "rollouts", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = Rollout), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    act(&state, &caller, None, &id, Action::Cancel).await
}

/// Approve a gated wave.
#[utoipa::path(post, path = "/v1/rollouts/{id}/approve", tag = "rollouts", params(("id" = String, Path)),
    request_body = Approval, security(("bearer" = [])),
    responses((status = 200, body = Rollout), (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: AuditedJson<Approval>,
) -> Result<Json<Rollout>, ApiError> {
    let wave = body.value.wave;
    act(
        &state,
        &caller,
        Some(body.digest),
        &id,
        Action::Approve(wave),
    )
    .await
}
