//! Liveness and readiness, unauthenticated and logged at DEBUG.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use super::AppState;

/// The process is up.
#[utoipa::path(get, path = "/v1/health", tag = "health", responses((status = 200, description = "up")))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: its database answers.
#[utoipa::path(get, path = "/v1/ready", tag = "health", responses(
    (status = 200, description = "ready"), (status = 503, description = "the database does not answer")))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.db.execute_unprepared("SELECT 1").await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error.message = %e, "not ready: database");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "database"})),
            )
        }
    }
}
