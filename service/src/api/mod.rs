//! The HTTP API (axum): the router, its shared state and the OpenAPI document. Handlers are
//! thin: extract, call a domain function with explicit dependencies, map the error.

pub mod auth;
pub mod body;
pub mod error;
pub mod health;
pub mod v1;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use sea_orm::DatabaseConnection;
use utoipa::OpenApi;

use self::error::ErrorResponses;
use crate::config::Settings;
use crate::mqtt::bridge::Bridge;
use crate::releases::Trust;
use crate::storage::Storage;

/// What every handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database pool.
    pub db: DatabaseConnection,
    /// The settings the service started with.
    pub settings: Arc<Settings>,
    /// Where images live.
    pub storage: Storage,
    /// The release keys uploads must be signed by (none: uploads are refused).
    pub trust: Option<Arc<Trust>>,
    /// Publishing to devices.
    pub mqtt: Bridge,
}

/// The OpenAPI document of `/v1`.
#[derive(OpenApi)]
#[openapi(
    info(title = "fleetwave", description = "Fleet firmware updates in waves that halt themselves."),
    paths(
        health::health, health::ready,
        v1::devices::create, v1::devices::list, v1::devices::show, v1::devices::update, v1::devices::delete,
        v1::devices::shadow, v1::devices::set_desired,
        v1::groups::create, v1::groups::list, v1::groups::show, v1::groups::delete, v1::groups::devices,
        v1::groups::add_members, v1::groups::remove_member,
        v1::jobs::create, v1::jobs::execution,
        v1::rollouts::create, v1::rollouts::list, v1::rollouts::show, v1::rollouts::pause,
        v1::rollouts::resume, v1::rollouts::cancel, v1::rollouts::approve,
        v1::releases::upload, v1::releases::list, v1::releases::show, v1::releases::download,
        v1::releases::object,
        v1::tokens::create,
        v1::audit::verify, v1::audit::devices,
    ),
    modifiers(&BearerAuth, &ErrorResponses)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let authenticated = Router::new()
        .route(
            "/v1/devices",
            get(v1::devices::list).post(v1::devices::create),
        )
        .route(
            "/v1/devices/{id}",
            get(v1::devices::show)
                .patch(v1::devices::update)
                .delete(v1::devices::delete),
        )
        .route(
            "/v1/devices/{id}/shadow",
            get(v1::devices::shadow).patch(v1::devices::set_desired),
        )
        .route("/v1/jobs", axum::routing::post(v1::jobs::create))
        .route(
            "/v1/rollouts",
            get(v1::rollouts::list).post(v1::rollouts::create),
        )
        .route("/v1/rollouts/{id}", get(v1::rollouts::show))
        .route(
            "/v1/rollouts/{id}/pause",
            axum::routing::post(v1::rollouts::pause),
        )
        .route(
            "/v1/rollouts/{id}/resume",
            axum::routing::post(v1::rollouts::resume),
        )
        .route(
            "/v1/rollouts/{id}/cancel",
            axum::routing::post(v1::rollouts::cancel),
        )
        .route(
            "/v1/rollouts/{id}/approve",
            axum::routing::post(v1::rollouts::approve),
        )
        .route(
            "/v1/jobs/{id}/executions/{device}",
            get(v1::jobs::execution),
        )
        .route("/v1/groups", get(v1::groups::list).post(v1::groups::create))
        .route(
            "/v1/groups/{name}",
            get(v1::groups::show).delete(v1::groups::delete),
        )
        .route("/v1/groups/{name}/devices", get(v1::groups::devices))
        .route(
            "/v1/groups/{name}/members",
            axum::routing::post(v1::groups::add_members),
        )
        .route(
            "/v1/groups/{name}/members/{id}",
            axum::routing::delete(v1::groups::remove_member),
        )
        .route(
            "/v1/releases",
            get(v1::releases::list)
                .post(v1::releases::upload)
                // The image is bounded by its manifest's signed size instead.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/releases/{id}", get(v1::releases::show))
        .route("/v1/releases/{id}/download", get(v1::releases::download))
        .route("/v1/tokens", axum::routing::post(v1::tokens::create))
        .route("/v1/audit/verify", get(v1::audit::verify))
        .route("/v1/audit/devices", get(v1::audit::devices))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/v1/health", get(health::health))
        .route("/v1/ready", get(health::ready))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/objects/{*key}", get(v1::releases::object))
        .merge(authenticated)
        .layer(axum::middleware::from_fn(body::refuse_nul))
        .layer(DefaultBodyLimit::max(state.settings.server.max_body_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The OpenAPI document as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_names_every_rollout_route_and_schema() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        for path in [
            "/v1/rollouts",
            "/v1/rollouts/{id}",
            "/v1/rollouts/{id}/approve",
            "/v1/audit/devices",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is documented");
        }
        let wave = &doc["components"]["schemas"]["WaveStatus"];
        assert!(wave.is_object(), "WaveStatus has a schema");
    }
}
