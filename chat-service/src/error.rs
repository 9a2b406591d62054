//! The service's error type and its single mapping to HTTP.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_kit::ApiError;

use crate::log::LogError;
use crate::store::StoreError;
use crate::users::DirectoryError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The chat does not exist or the caller is not in it: always the same
    /// 404, so outsiders cannot tell which.
    #[error("chat not found")]
    ChatNotFound,
    /// Something other than the chat is missing (a member).
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("rate limited")]
    RateLimited(Duration),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("users: {0}")]
    Directory(#[from] DirectoryError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::ChatNotFound => ApiError::not_found("chat not found"),
            Error::NotFound(code, message) => ApiError::new(StatusCode::NOT_FOUND, code, message),
            Error::Forbidden(code, message) => ApiError::new(StatusCode::FORBIDDEN, code, message),
            Error::Conflict(code, message) => ApiError::new(StatusCode::CONFLICT, code, message),
            Error::BadRequest(code, message) => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            Error::Unprocessable(code, message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            Error::RateLimited(wait) => ApiError::too_many_requests(wait),
            Error::Store(e) => {
                tracing::error!(error = %e, "message store failed");
                ApiError::unavailable("message store unavailable, retry later")
            }
            Error::Log(e) => {
                tracing::error!(error = %e, "publishing to the log failed");
                ApiError::unavailable(
                    "message log unavailable; retry with the same client_message_id",
                )
            }
            Error::Directory(e) => {
                tracing::error!(error = %e, "user lookup failed");
                ApiError::unavailable("user directory unavailable, retry later")
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
