//! The HTTP API. Every route but the probes needs a valid access token.

use auth_validator::AuthUser;
use axum::extract::State;
use axum::http::StatusCode;

use axum::routing::{get, post};
use axum::Router;
use chat_events::{TimeUuid, UserId};
use serde::{Deserialize, Serialize};
use service_kit::error::{ErrorBody, ErrorDetail};
use service_kit::openapi::Conventions;
use service_kit::{Json, Path, Query};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{self, ClientMessageId, MessageText, Quantity, TextError};
use crate::error::{Error, Result};
use crate::store::{ChatSummary, Inserted, Message, Participant};
use crate::AppState;

/// The API routes alone (no probes, metrics or OpenAPI), for embedding.
pub fn api(state: AppState) -> Router {
    Router::new()
        .route("/chats", post(start_chat).get(list_chats))
        .route("/chat/{id}", get(history))
        .route("/chat/{id}/messages", post(send))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&Conventions),
    info(
        title = "chat-service",
        description = "Chats, sending and TimeUUID history."
    ),
    paths(
        start_chat,
        list_chats,
        send,
        history
    ),
    components(schemas(
        StartChat,
        ChatOut,
        UserOut,
        ChatList,
        SendMessage,
        MessageOut,
        HistoryPage,
        ErrorBody,
        ErrorDetail
    ))
)]
pub struct ApiDoc;

#[derive(Deserialize, ToSchema)]
pub struct StartChat {
    /// The other participant.
    #[schema(example = "0b6ad5c4-6f4e-4b8e-9f5d-2f1f6f0a9c3e")]
    pub user_id: Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    pub username: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChatOut {
    /// Derived from the pair of participants: the same for both of them.
    pub id: Uuid,
    pub participants: Vec<UserOut>,
    /// The participant who is not the caller.
    pub other: UserOut,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: the last message, or creation.
    pub last_activity: String,
    pub last_message_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatList {
    /// Most recently active first.
    pub chats: Vec<ChatOut>,
}

#[derive(Deserialize, ToSchema)]
pub struct SendMessage {
    /// 1 to 4000 characters, not only whitespace.
    #[schema(min_length = 1, max_length = 4000, pattern = r"\S", example = "hi bob")]
    pub text: String,
    /// Idempotency key chosen by the client: a repeat returns the original.
    /// 1 to 128 printable ASCII characters, no spaces.
    #[schema(pattern = r"^[!-~]{1,128}$", example = "c-1")]
    pub client_message_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageOut {
    /// Version-1 TimeUUID; its timestamp is `sent_at`.
    pub id: Uuid,
    pub chat_id: Uuid,
    pub sender_id: Uuid,
    pub text: String,
    /// RFC 3339, UTC.
    pub sent_at: String,
    pub client_message_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<MessageOut>,
    /// Whether older messages exist.
    pub has_more: bool,
    /// Pass as `time` to get the next (older) page; null when `has_more` is false.
    pub next_time: Option<Uuid>,
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryParams {
    /// A version-1 UUID: only messages strictly older are returned (usually
    /// the oldest message the client has). Absent or empty: the newest
    /// messages.
    #[param(
        value_type = Option<String>,
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-1[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$"
    )]
    pub time: Option<String>,
    /// 1–100, default 10.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub quantity: Option<String>,
}

fn rfc3339_millis(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn user_out(p: &Participant) -> UserOut {
    UserOut {
        id: p.id.uuid(),
        username: p.username.clone(),
    }
}

fn chat_out(summary: &ChatSummary, caller: UserId) -> ChatOut {
    let chat = &summary.chat;
    ChatOut {
        id: chat.id.uuid(),
        participants: chat.participants.iter().map(user_out).collect(),
        other: user_out(chat.other(caller)),
        created_at: rfc3339_millis(chat.created_at),
        last_activity: rfc3339_millis(summary.last_activity),
        last_message_id: summary.last_message_id.map(TimeUuid::uuid),
    }
}

fn message_out(m: &Message) -> MessageOut {
    MessageOut {
        id: m.id.uuid(),
        chat_id: m.chat_id.uuid(),
        sender_id: m.sender_id.uuid(),
        text: m.text.as_str().to_owned(),
        sent_at: m
            .id
            .datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        client_message_id: m.client_message_id.as_ref().map(|c| c.as_str().to_owned()),
    }
}

/// Start (or get) the chat with another user.
#[utoipa::path(post, path = "/chats", request_body = StartChat, security(("bearer" = [])), responses(
    (status = 201, description = "created", body = ChatOut),
    (status = 200, description = "it already existed", body = ChatOut),
    (status = 422, description = "yourself, or no such user"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn start_chat(
    State(state): State<AppState>,
    caller: AuthUser,
    Json(body): Json<StartChat>,
) -> Result<(StatusCode, Json<ChatOut>)> {
    let (created, summary) = state
        .chats
        .start_chat(&caller, UserId::from(body.user_id))
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(chat_out(&summary, caller.id.into()))))
}

/// The caller's chats, most recently active first.
#[utoipa::path(get, path = "/chats", security(("bearer" = [])), responses((status = 200, body = ChatList)))]
async fn list_chats(State(state): State<AppState>, caller: AuthUser) -> Result<Json<ChatList>> {
    let caller = UserId::from(caller.id);
    let chats = state.chats.chats_of(caller).await?;
    Ok(Json(ChatList {
        chats: chats.iter().map(|s| chat_out(s, caller)).collect(),
    }))
}

/// Send a message.
///
/// 201 with the stored message; 200 with the original when the
/// `client_message_id` was already used in this chat by this sender. 503
/// when the message could not be put on the log: retry with the same
/// `client_message_id`.
#[utoipa::path(post, path = "/chat/{id}/messages", params(("id" = Uuid, Path, description = "The chat.")), request_body = SendMessage, security(("bearer" = [])), responses(
    (status = 201, body = MessageOut),
    (status = 200, description = "repeat of an earlier client_message_id", body = MessageOut),
    (status = 404, description = "no such chat, or not a participant"),
    (status = 422, description = "empty or too long text, bad client_message_id"),
    (status = 429, description = "sending too fast; see Retry-After"),
    (status = 503, description = "log or store unavailable; retry"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn send(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<SendMessage>,
) -> Result<(StatusCode, Json<MessageOut>)> {
    let text = MessageText::parse(body.text).map_err(|e| match e {
        TextError::Empty => Error::Unprocessable("empty_text", "text must not be empty".into()),
        TextError::TooLong => Error::Unprocessable(
            "text_too_long",
            format!("text must be at most {} characters", domain::MAX_TEXT_CHARS),
        ),
    })?;
    let client_id = body
        .client_message_id
        .map(ClientMessageId::parse)
        .transpose()
        .map_err(|e| Error::Unprocessable("invalid_client_message_id", e.into()))?;
    let inserted = state
        .chats
        .send(&id, caller.id.into(), text, client_id)
        .await?;
    let status = match inserted {
        Inserted::New(_) => StatusCode::CREATED,
        Inserted::Existing(_) => StatusCode::OK,
    };
    Ok((status, Json(message_out(inserted.message()))))
}

/// Page through a chat's history, newest first.
#[utoipa::path(get, path = "/chat/{id}", params(("id" = Uuid, Path, description = "The chat."), HistoryParams), security(("bearer" = [])), responses(
    (status = 200, body = HistoryPage),
    (status = 400, description = "time is not a version-1 UUID, or quantity outside 1–100"),
    (status = 404, description = "no such chat, or not a participant"),
))]
async fn history(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<HistoryPage>> {
    let before = domain::parse_time(params.time.as_deref())
        .map_err(|e| Error::BadRequest("invalid_time", e.into()))?;
    let quantity = Quantity::parse(params.quantity.as_deref())
        .map_err(|e| Error::BadRequest("invalid_quantity", e.into()))?;
    let (messages, has_more) = state
        .chats
        .history(&id, caller.id.into(), before, quantity)
        .await?;
    let next_time = if has_more {
        messages.last().map(|m| m.id.uuid())
    } else {
        None
    };
    Ok(Json(HistoryPage {
        messages: messages.iter().map(message_out).collect(),
        has_more,
        next_time,
    }))
}

service_kit::test_every_route_is_documented!(
    include_str!("routes.rs"),
    <ApiDoc as utoipa::OpenApi>::openapi()
);
