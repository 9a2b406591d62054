//! The axum extractor.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use service_kit::ApiError;
use uuid::Uuid;

use crate::{Claims, TokenError, Verifier};

/// The caller, proven by a valid access token.
///
/// Any router whose state can hand out a [`Verifier`] (`Verifier: FromRef<S>`)
/// can take this as a handler argument.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
    /// The token itself, for calls made on the caller's behalf (such as
    /// chat-service asking auth-service for a username).
    pub token: BearerToken,
}

/// An access token as presented; its `Debug` never shows it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Verifier: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        let token = bearer_token(parts).map_err(rejection)?;
        let claims = verifier.verify(token).await.map_err(rejection)?;
        Ok(AuthUser {
            id: claims.sub,
            claims,
            token: BearerToken(token.into()),
        })
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, TokenError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(TokenError::Missing)?
        .to_str()
        .map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(token.trim())
}

/// 401 with an RFC 6750 challenge, or 503 when keys cannot be fetched.
fn rejection(error: TokenError) -> ApiError {
    let challenge = match &error {
        TokenError::Missing => r#"Bearer realm="chat""#.to_owned(),
        TokenError::KeysUnavailable => {
            return ApiError::unavailable("cannot verify tokens right now");
        }
        other => {
            format!(r#"Bearer realm="chat", error="invalid_token", error_description="{other}""#)
        }
    };
    let code = match error {
        TokenError::Missing => "unauthenticated",
        TokenError::Expired => "token_expired",
        _ => "invalid_token",
    };
    let mut api = ApiError::new(StatusCode::UNAUTHORIZED, code, error.to_string());
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        api = api.with_header(WWW_AUTHENTICATE, value);
    }
    api
}
