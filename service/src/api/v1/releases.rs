//! `/v1/releases`: signed uploads (multipart: a `manifest` part, then an `image` part,
//! streamed), listing, and expiring download URLs; `/v1/objects/…`: the local store's
//! downloads behind HMAC-signed URLs, with HTTP Range support.

use axum::Json;
use axum::extract::{Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetwave_artifacts::Sha256;
use fleetwave_artifacts::manifest::MAX_DOCUMENT_BYTES;
use serde::Deserialize;
use tower::ServiceExt;

use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::body::{Path, Query};
use crate::api::error::{ApiError, ErrorBody};
use crate::registry::devices::Page;
use crate::releases::{self, ListQuery, Release};
use crate::storage::{DownloadUrl, LocalUrlError};

impl From<releases::Error> for ApiError {
    fn from(e: releases::Error) -> Self {
        use releases::Error as E;
        match e {
            E::Contract(c) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, c.code(), c.to_string())
            }
            E::Duplicate { .. } => {
                ApiError::new(StatusCode::CONFLICT, "release_exists", e.to_string())
            }
            E::NoTrustedKeys => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_trusted_keys",
                e.to_string(),
            ),
            E::BadUpload(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_upload", e.to_string()),
            E::InvalidQuery(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                e.to_string(),
            ),
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            E::Storage(s) => ApiError::internal(s),
            E::Db(d) => ApiError::internal(d),
        }
    }
}

fn bad_upload(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_upload", message)
}

/// Upload a signed release: `multipart/form-data` with a `manifest` part (the signed
/// manifest, at most 64 KiB) followed by an `image` part (streamed, bounded by the signed
/// size).
#[utoipa::path(post, path = "/v1/releases", tag = "releases", security(("bearer" = [])),
    request_body(content_type = "multipart/form-data", description = "parts `manifest` then `image`"),
    responses((status = 201, body = Release), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "bad signature, digest or size mismatch, expired manifest, ...")))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    let mut multipart = multipart?;
    let mut manifest_field = next_part(&mut multipart, "manifest").await?;
    let mut manifest = Vec::new();
    while let Some(chunk) = manifest_field
        .chunk()
        .await
        .map_err(|e| bad_upload(format!("reading the manifest part: {e}")))?
    {
        if manifest.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "document_too_large",
                format!("the manifest part exceeds {MAX_DOCUMENT_BYTES} bytes"),
            ));
        }
        manifest.extend_from_slice(&chunk);
    }
    drop(manifest_field);
    let image = next_part(&mut multipart, "image").await?;
    let actor = caller.actor(Some(Sha256::of(&manifest).to_string()));
    let release = releases::upload(
        &state.db,
        &state.storage,
        state.trust.as_deref(),
        &actor,
        &manifest,
        Box::pin(image),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(release)))
}

/// The next part of an upload, which must be named `expected`.
async fn next_part<'a>(
    multipart: &'a mut Multipart,
    expected: &str,
) -> Result<axum::extract::multipart::Field<'a>, ApiError> {
    let field = multipart
        .next_field()
        .await
        .map_err(|e| bad_upload(format!("malformed multipart body: {e}")))?
        .ok_or_else(|| bad_upload(format!("the `{expected}` part is missing")))?;
    if field.name() != Some(expected) {
        return Err(bad_upload(format!(
            "expected the `{expected}` part, found {:?} (send `manifest` first, then `image`)",
            field.name().unwrap_or("an unnamed part")
        )));
    }
    Ok(field)
}

/// List releases in upload order.
#[utoipa::path(get, path = "/v1/releases", tag = "releases", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Release>), (status = 422, body = ErrorBody, description = "a limit out of range")))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Page<Release>>, ApiError> {
    Ok(Json(releases::list(&state.db, &query).await?))
}

/// Read one release, with its signed manifest.
#[utoipa::path(get, path = "/v1/releases/{id}", tag = "releases", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = Release), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Release>, ApiError> {
    Ok(Json(releases::get(&state.db, &id).await?))
}

/// An expiring download URL for a release's image.
#[utoipa::path(get, path = "/v1/releases/{id}/download", tag = "releases", params(("id" = String, Path)),
    security(("bearer" = [])), responses((status = 200, body = DownloadUrl), (status = 404, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DownloadUrl>, ApiError> {
    let release = releases::get(&state.db, &id).await?;
    let url = state
        .storage
        .download_url(&release.object_key.as_str().into())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(url))
}

/// The query of a local download URL.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SignedQuery {
    /// Unix time the URL expires at.
    pub expires: Option<u64>,
    /// Hex HMAC-SHA256 of the method, key and expiry.
    pub sig: Option<String>,
}

/// Download an object of the local store through a signed, expiring URL (Range supported).
#[utoipa::path(get, path = "/v1/objects/{key}", tag = "releases", params(("key" = String, Path), SignedQuery),
    responses((status = 200, description = "the object"), (status = 206, description = "a range of it"),
        (status = 403, body = ErrorBody)))]
pub async fn object(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<SignedQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let (Some(expires), Some(sig)) = (query.expires, query.sig.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_url_signature",
            "a download URL needs its expires and sig parameters",
        ));
    };
    state
        .storage
        .check_local_url(&key, expires, sig)
        .map_err(|e| match e {
            LocalUrlError::Expired => {
                ApiError::new(StatusCode::FORBIDDEN, "url_expired", e.to_string())
            }
            LocalUrlError::BadSignature => {
                ApiError::new(StatusCode::FORBIDDEN, "bad_url_signature", e.to_string())
            }
            LocalUrlError::NotLocal => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
        })?;
    let file = state
        .storage
        .local_file(&key)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such object"))?;
    let response = tower_http::services::ServeFile::new(file)
        .oneshot(request)
        .await
        .map_err(ApiError::internal)?;
    Ok(response.into_response())
}
