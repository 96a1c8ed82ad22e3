//! Authentication at the edge: the bearer token becomes a `Principal` request extension, and
//! auditors are confined to reading. Handlers that need more (admin) say so with
//! [`require`].

use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::audit::Actor;
use crate::auth::{self, Principal, Role};

/// Middleware on every authenticated route: resolves the token, refuses unknown ones with
/// 401, and refuses any method but GET and HEAD to auditors with 403.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    let principal = auth::authenticate(&state.db, token.trim())
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if !read_only && !principal.role.allows(Role::Release) {
        return Err(ApiError::forbidden("release or admin"));
    }
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The caller, as the middleware resolved it.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(ApiError::unauthorized)
    }
}

impl Caller {
    /// Fails with 403 unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.0.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(needed.as_str()))
        }
    }

    /// The audit actor for a request whose body hashed to `request_digest`.
    pub fn actor(&self, request_digest: Option<String>) -> Actor {
        Actor {
            id: self.0.token_id.clone(),
            request_digest,
        }
    }
}
