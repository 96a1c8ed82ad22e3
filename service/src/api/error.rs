//! The API's one error type: an HTTP status, a stable machine-readable `code` and a message.
//! Server errors keep their cause for the log and show the client only `internal`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry;

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    cause: Option<anyhow::Error>,
}

/// The JSON body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `bad_signature`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// A client error with its own code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// A server error: logged with its cause, opaque to the client.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".to_owned(),
            cause: Some(cause.into()),
        }
    }

    /// 401: no or unknown token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 403: the token's role does not allow this.
    pub fn forbidden(needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {needed} role"),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::error!(error.cause_chain = ?cause, error.message = %cause, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text())
    }
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_upload", e.body_text())
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> Self {
        match e {
            registry::Error::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            registry::Error::AlreadyExists { .. } => {
                Self::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            registry::Error::Invalid { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                e.to_string(),
            ),
            registry::Error::Db(db) => Self::internal(db),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::internal(e)
    }
}

/// Documents the error responses every operation can give by its shape, so the OpenAPI
/// document lists each status the API edge may answer with: 401/403 where a token is
/// required, 400/413 where a body is read, 400 where a query string is parsed, 400/404 where
/// a path names a resource. What an operation documents itself is kept.
pub struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let mut add = Vec::new();
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add.push(("401", "no, an unknown or an expired token (`unauthorized`)"));
                    add.push(("403", "the token's role may not do this (`forbidden`)"));
                }
                if op.request_body.is_some() {
                    add.push((
                        "400",
                        "a body that does not parse (`invalid_body`, `bad_upload`)",
                    ));
                    add.push(("413", "a body over the size limit (`body_too_large`)"));
                }
                let params = op.parameters.as_deref().unwrap_or_default();
                if params.iter().any(|p| p.parameter_in == ParameterIn::Query) {
                    add.push((
                        "400",
                        "a query string that does not parse (`invalid_query`)",
                    ));
                }
                if params.iter().any(|p| p.parameter_in == ParameterIn::Path) {
                    add.push(("400", "path parameters that do not parse (`invalid_path`)"));
                    add.push(("404", "no such resource (`not_found`)"));
                }
                for (status, description) in add {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}
