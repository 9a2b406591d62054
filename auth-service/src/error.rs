//! The service's error type and its single mapping to HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Field name → what is wrong with it.
    #[error("invalid input")]
    Validation(BTreeMap<&'static str, &'static str>),
    #[error("username is taken")]
    UsernameTaken,
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("too many failed attempts")]
    RateLimited(Duration),
    #[error("not found")]
    NotFound,
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("server busy")]
    Busy,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal: {0}")]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn field(name: &'static str, problem: &'static str) -> Self {
        Self::Validation(BTreeMap::from([(name, problem)]))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Validation(fields) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "some fields are invalid",
            )
            .with_details(serde_json::json!({ "fields": fields })),
            Error::UsernameTaken => {
                ApiError::new(StatusCode::CONFLICT, "username_taken", "username is taken")
            }
            Error::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid username or password",
            ),
            Error::InvalidRefreshToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_refresh_token",
                "refresh token is invalid, expired or revoked",
            ),
            Error::RateLimited(retry_after) => ApiError::too_many_requests(retry_after),
            Error::NotFound => ApiError::not_found("not found"),
            Error::BadRequest(code, message) => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            Error::Busy => ApiError::unavailable("server busy, retry shortly"),
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::internal()
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
