//! chat-service, as the gateway calls it on a user's behalf: the user's
//! chats when a stream opens, and the WebSocket's `send` and `read`.
//!
//! Every call carries the user's own access token and goes through
//! chat-service's routes, so a WebSocket `send` is exactly an HTTP send:
//! same validation, same idempotency, same errors. The all-in-one calls
//! the routes in process ([`InProcess`]); the `gateway` binary calls
//! chat-service over HTTP ([`Http`]).

use std::collections::HashSet;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use chat_events::ChatId;
use serde::Deserialize;
use tower::ServiceExt as _;

/// Chats fetched at most for one user (`GET /chats` pages of 500).
pub const MAX_CHATS: usize = 100_000;

/// chat-service could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("chat-service unavailable: {0}")]
pub struct Unavailable(pub String);

/// A route's answer: its status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

#[async_trait]
pub trait ChatApi: Send + Sync + 'static {
    /// Calls `method path` with `bearer` and a JSON `body`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Unavailable>;
}

#[derive(Deserialize)]
struct ChatsPage {
    chats: Vec<ChatItem>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ChatItem {
    id: ChatId,
}

/// Why a user's chats could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ChatsError {
    /// The token was refused (expired since the stream was asked for).
    #[error("the token was refused")]
    Unauthorized,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Every chat the token's user is a member of now.
pub async fn chats_of(api: &dyn ChatApi, bearer: &str) -> Result<HashSet<ChatId>, ChatsError> {
    let mut chats = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/chats?limit=500&cursor={c}"),
            None => "/chats?limit=500".to_owned(),
        };
        let answer = api.call(Method::GET, &path, bearer, None).await?;
        match answer.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(ChatsError::Unauthorized),
            other => {
                return Err(Unavailable(format!("GET /chats answered {other}")).into());
            }
        }
        let page: ChatsPage = serde_json::from_slice(&answer.body)
            .map_err(|e| Unavailable(format!("GET /chats: {e}")))?;
        chats.extend(page.chats.into_iter().map(|c| c.id));
        match page.next_cursor {
            Some(next) if chats.len() < MAX_CHATS => cursor = Some(next),
            _ => return Ok(chats),
        }
    }
}

/// chat-service's routes in this process.
pub struct InProcess(pub axum::Router);

#[async_trait]
impl ChatApi for InProcess {
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Unavailable> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.unwrap_or_default()))
            .map_err(|e| Unavailable(e.to_string()))?;
        let response = self
            .0
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        Ok(Answer { status, body })
    }
}

/// chat-service over HTTP, at `base` (`http://chat-service:8082`).
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
}

#[async_trait]
impl ChatApi for Http {
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Unavailable> {
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| Unavailable(e.to_string()))?;
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        let status = StatusCode::from_u16(response.status().as_u16())
            .map_err(|e| Unavailable(e.to_string()))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        Ok(Answer {
            status,
            body: Bytes::from(body.to_vec()),
        })
    }
}
