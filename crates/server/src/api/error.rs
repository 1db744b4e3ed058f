//! The API's error type: every failure becomes `{"error": "...", "field": ...}`
//! with a 4xx status, or a logged 5xx whose detail stays in the log.
//!
//! Status choices (also in openapi.json):
//! - 400: the request body is malformed, has a wrong type, an unknown field, or a
//!   value that breaks a rule — including a duplicate extension or number: the
//!   client must change what it sent, and `field` says where.
//! - 409: the request is fine but the current state forbids it: removing or
//!   renumbering a user or room that something else refers to, or applying a
//!   draft that is inconsistent as a whole (then `errors` lists every problem).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use confero_pbx::config::FieldError;
use confero_store::StoreError;
use serde_json::json;

#[derive(Debug)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed JSON, a wrong type, an unknown or missing field (400).
    BadRequest {
        message: String,
        field: Option<String>,
    },
    /// A value that breaks a configuration rule (400).
    Validation(FieldError),
    /// No or wrong credentials (401, with a Basic challenge).
    Unauthorized,
    /// Authenticated, but not allowed to do this (403).
    Forbidden(String),
    /// Too many failed sign-ins from this client or for this account (429, Retry-After).
    TooManyAttempts(std::time::Duration),
    NotFound(String),
    /// Something else depends on what the request would remove or change (409).
    Conflict(FieldError),
    /// `apply` refused: the draft as a whole is inconsistent (409).
    InvalidDraft(Vec<FieldError>),
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The database is overloaded; try again shortly (503 with Retry-After).
    Unavailable,
    /// A bug or an operator problem; the detail is logged, not shown (500).
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, field: Option<&str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } | ApiError::Validation(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InvalidDraft(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Validation(f) => ApiError::Validation(f),
            StoreError::Conflict(f) => ApiError::Conflict(f),
            StoreError::NotFound { entity, id } => {
                ApiError::NotFound(format!("{entity} {id} not found"))
            }
            StoreError::InvalidDraft(errors) => ApiError::InvalidDraft(errors),
            e if e.is_busy() => ApiError::Unavailable,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::BadRequest { message, field } => json!({"error": message, "field": field}),
            ApiError::Validation(f) | ApiError::Conflict(f) => {
                json!({"error": f.message, "field": f.field})
            }
            ApiError::Unauthorized => {
                json!({"error": "authentication required: a Bearer token or HTTP Basic with a console account", "field": null})
            }
            ApiError::Forbidden(m) | ApiError::NotFound(m) => json!({"error": m, "field": null}),
            ApiError::TooManyAttempts(wait) => json!({
                "error": format!("too many failed sign-ins; retry in {} s", wait.as_secs().max(1)),
                "field": null,
            }),
            ApiError::InvalidDraft(errors) => json!({
                "error": format!("the draft cannot be applied: {} problem(s) to fix first", errors.len()),
                "field": errors.first().map(|f| f.field.clone()),
                "errors": errors,
            }),
            ApiError::PayloadTooLarge => {
                json!({"error": "request body is larger than 64 KiB", "field": null})
            }
            ApiError::UnsupportedMediaType => {
                json!({"error": "send the body as JSON with Content-Type: application/json", "field": null})
            }
            ApiError::Unavailable => {
                json!({"error": "the server is busy; retry shortly", "field": null})
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "API request failed");
                json!({"error": "internal error (see the server log)", "field": null})
            }
        };
        let mut response = (status, Json(body)).into_response();
        match self {
            ApiError::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"confero\""),
                );
            }
            ApiError::Unavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::TooManyAttempts(wait) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            _ => {}
        }
        response
    }
}
