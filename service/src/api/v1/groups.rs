//! `/v1/groups`: thin handlers over `registry::groups`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::{AuditedJson, Path, Query};
use crate::api::error::{ApiError, ErrorBody};
use crate::registry::devices::{Device, Page};
use crate::registry::groups::{self, Group, Members, MembersQuery, NewGroup};

/// A group with its current size.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupInfo {
    /// The group.
    #[serde(flatten)]
    pub group: Group,
    /// How many devices it holds now (a dynamic group's query is evaluated).
    pub devices: u64,
}

/// How many devices were added.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Added {
    /// Devices that were not members before.
    pub added: u64,
}

/// Create a static group, or a dynamic one with a `query`.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = NewGroup, security(("bearer" = [])),
    responses((status = 201, body = Group), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "bad name, or a query that does not parse (the message names the column)")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: AuditedJson<NewGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let group = groups::create(&state.db, &caller.actor(Some(body.digest)), body.value).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

/// Every group.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", security(("bearer" = [])),
    responses((status = 200, body = Vec<Group>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(groups::list(&state.db).await?))
}

/// One group and its current size.
#[utoipa::path(get, path = "/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = GroupInfo), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GroupInfo>, ApiError> {
    let group = groups::get(&state.db, &name).await?;
    let devices = groups::count(&state.db, &name).await?;
    Ok(Json(GroupInfo { group, devices }))
}

/// Delete a group (its devices stay registered).
#[utoipa::path(delete, path = "/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    security(("bearer" = [])), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    groups::delete(&state.db, &caller.actor(None), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The group's devices, a page at a time (a dynamic group's query runs in SQL).
#[utoipa::path(get, path = "/v1/groups/{name}/devices", tag = "groups", params(("name" = String, Path), MembersQuery),
    security(("bearer" = [])), responses((status = 200, body = Page<Device>), (status = 404, body = ErrorBody)))]
pub async fn devices(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<MembersQuery>,
) -> Result<Json<Page<Device>>, ApiError> {
    Ok(Json(groups::devices(&state.db, &name, &page).await?))
}

/// Add registered devices to a static group.
#[utoipa::path(post, path = "/v1/groups/{name}/members", tag = "groups", params(("name" = String, Path)),
    request_body = Members, security(("bearer" = [])),
    responses((status = 200, body = Added), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: AuditedJson<Members>,
) -> Result<Json<Added>, ApiError> {
    let added = groups::add_members(
        &state.db,
        &caller.actor(Some(body.digest)),
        &name,
        body.value,
    )
    .await?;
    Ok(Json(Added { added }))
}

/// Remove a device from a static group.
#[utoipa::path(delete, path = "/v1/groups/{name}/members/{id}", tag = "groups",
    params(("name" = String, Path), ("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    groups::remove_member(&state.db, &caller.actor(None), &name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
