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

use crate::domain::{self, ClientMessageId, MessageText, Quantity, TextError, Title};
use crate::error::{Error, Result};
use crate::store::{ChatCursor, ChatSummary, Inserted, Item, Member, Message, Role, TimelineEvent};
use crate::AppState;

/// The API routes alone (no probes, metrics or OpenAPI), for embedding.
pub fn api(state: AppState) -> Router {
    Router::new()
        .route("/chats", post(start_chat).get(list_chats))
        .route("/chat/{id}", get(history).patch(rename))
        .route("/chat/{id}/messages", post(send))
        .route("/chat/{id}/members", get(members).post(add_member))
        .route(
            "/chat/{id}/members/{user_id}",
            axum::routing::delete(remove_member).patch(set_role),
        )
        .route("/chat/{id}/read", post(mark_read))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&Conventions),
    info(
        title = "chat-service",
        description = "Direct and group chats, members and roles, sending and replies, the \
                       TimeUUID timeline (history and catch-up) and read state."
    ),
    paths(
        start_chat,
        list_chats,
        send,
        history,
        rename,
        members,
        add_member,
        remove_member,
        set_role,
        mark_read
    ),
    components(schemas(
        StartChat,
        StartDirect,
        NewGroup,
        ChatOut,
        UserOut,
        LastMessageOut,
        ChatList,
        SendMessage,
        MessageOut,
        EventOut,
        ItemOut,
        HistoryPage,
        Rename,
        MemberOut,
        MemberList,
        AddMember,
        RoleOut,
        SetRole,
        MarkRead,
        ErrorBody,
        ErrorDetail
    ))
)]
pub struct ApiDoc;

/// A direct chat with another user, or a new group.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StartChat {
    Direct(StartDirect),
    Group(NewGroup),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDirect {
    /// The other member.
    #[schema(example = "0b6ad5c4-6f4e-4b8e-9f5d-2f1f6f0a9c3e")]
    pub user_id: Uuid,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// 1 to 100 characters, not only whitespace.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"\S",
        example = "Weekend trip"
    )]
    pub title: String,
    /// The members besides the caller (who becomes the owner): at least one,
    /// all existing users; duplicates and the caller are ignored.
    #[schema(min_items = 1, example = json!(["0b6ad5c4-6f4e-4b8e-9f5d-2f1f6f0a9c3e"]))]
    pub member_ids: Vec<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    pub username: String,
}

#[derive(Serialize, ToSchema)]
pub struct LastMessageOut {
    pub id: Uuid,
    pub sender_id: Uuid,
    /// The first 100 characters.
    pub text: String,
    /// RFC 3339, UTC.
    pub sent_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChatOut {
    /// A direct chat's id is derived from its two members: the same for both
    /// of them. A group's is random.
    pub id: Uuid,
    /// `direct` or `group`.
    #[schema(example = "direct")]
    pub kind: String,
    /// A group's title (null for direct chats).
    pub title: Option<String>,
    /// A direct chat's other member (null for groups).
    pub other: Option<UserOut>,
    pub member_count: usize,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: the newest timeline item, or creation. The list is ordered
    /// by it.
    pub last_activity: String,
    pub last_message: Option<LastMessageOut>,
    pub last_message_id: Option<Uuid>,
    /// Messages from others after the caller's read horizon, at most 1000.
    pub unread_count: u64,
    /// The newest message the caller has read (their own sends count).
    pub last_read_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatList {
    /// Most recently active first.
    pub chats: Vec<ChatOut>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// Most chats on one page of `GET /chats`.
pub const MAX_CHATS_PER_PAGE: usize = 500;
/// Chats on a page when `limit` is not given.
pub const DEFAULT_CHATS_PER_PAGE: usize = 100;

#[derive(Deserialize, IntoParams)]
pub struct ChatListParams {
    /// 1–500, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page (opaque); absent or empty: the
    /// first page.
    #[param(value_type = Option<String>, pattern = r"^([0-9]{1,18}\.[0-9a-f]{32})?$")]
    pub cursor: Option<String>,
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
    /// The id of a message of the same chat this one answers.
    pub reply_to: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Message,
}

#[derive(Serialize, ToSchema)]
pub struct MessageOut {
    /// Version-1 TimeUUID; its timestamp is `sent_at`.
    pub id: Uuid,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: MessageType,
    pub chat_id: Uuid,
    pub sender_id: Uuid,
    pub text: String,
    /// RFC 3339, UTC.
    pub sent_at: String,
    pub client_message_id: Option<String>,
    /// The message this one answers.
    pub reply_to: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ChatCreated,
    MemberAdded,
    MemberRemoved,
    ChatRenamed,
}

/// A timeline event of a group.
#[derive(Serialize, ToSchema)]
pub struct EventOut {
    /// Version-1 TimeUUID, on the same order as messages.
    pub id: Uuid,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: EventType,
    pub chat_id: Uuid,
    /// Who did it.
    pub actor_id: Uuid,
    /// The member added or removed (the actor, when they left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The title given (`chat_created`, `chat_renamed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `chat_created`: the initial members, the owner first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Uuid>>,
    /// RFC 3339, UTC: the id's timestamp.
    pub sent_at: String,
}

/// One item of a chat's timeline: a message (`type` `message`) or an event.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ItemOut {
    Message(MessageOut),
    Event(EventOut),
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// The timeline's items: messages and events. With `time` (or neither
    /// parameter): newest first. With `after`: oldest first.
    pub messages: Vec<ItemOut>,
    /// Whether more items lie beyond this page (older with `time`, newer
    /// with `after`).
    pub has_more: bool,
    /// History: pass as `time` for the next (older) page; null when
    /// `has_more` is false or when catching up.
    pub next_time: Option<Uuid>,
    /// Catch-up: the newest item returned (else the `after` given), to pass
    /// as `after` next; null in history.
    pub next_after: Option<Uuid>,
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryParams {
    /// History: a version-1 UUID; only items strictly older are returned
    /// (usually the oldest item the client has). Absent or empty: the
    /// newest items. Not together with `after`.
    #[param(value_type = Option<String>, pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-1[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$")]
    pub time: Option<String>,
    /// Catch-up: a version-1 UUID; only items strictly newer are returned,
    /// oldest first (usually the newest item the client has). Not together
    /// with `time`.
    #[param(value_type = Option<String>, pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-1[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$")]
    pub after: Option<String>,
    /// 1–100, default 10.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub quantity: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct Rename {
    /// 1 to 100 characters, not only whitespace.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"\S",
        example = "Trip planning"
    )]
    pub title: String,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RoleOut {
    Owner,
    Admin,
    Member,
}

impl From<Role> for RoleOut {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => RoleOut::Owner,
            Role::Admin => RoleOut::Admin,
            Role::Member => RoleOut::Member,
        }
    }
}

impl From<RoleOut> for Role {
    fn from(role: RoleOut) -> Self {
        match role {
            RoleOut::Owner => Role::Owner,
            RoleOut::Admin => Role::Admin,
            RoleOut::Member => Role::Member,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MemberOut {
    pub id: Uuid,
    pub username: String,
    pub role: RoleOut,
    /// RFC 3339.
    pub joined_at: String,
    /// The newest message they have read (their own sends count): read
    /// receipts.
    pub last_read_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    /// In the order they joined.
    pub members: Vec<MemberOut>,
}

#[derive(Deserialize, ToSchema)]
pub struct AddMember {
    pub user_id: Uuid,
}

#[derive(Deserialize, ToSchema)]
pub struct SetRole {
    /// `owner` hands the group over: the caller becomes an admin.
    pub role: RoleOut,
}

#[derive(Deserialize, ToSchema)]
pub struct MarkRead {
    /// A message of the chat: the caller's read horizon moves forward to it
    /// (never back).
    pub message_id: Uuid,
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

fn rfc3339(id: TimeUuid) -> String {
    id.datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn chat_out(summary: &ChatSummary) -> ChatOut {
    let chat = &summary.chat;
    ChatOut {
        id: chat.id.uuid(),
        kind: chat.kind.as_str().to_owned(),
        title: chat.title.clone(),
        other: summary.other.as_ref().map(|m| UserOut {
            id: m.id.uuid(),
            username: m.username.clone(),
        }),
        member_count: chat.member_count,
        created_at: rfc3339_millis(chat.created_at),
        last_activity: rfc3339_millis(summary.last_activity),
        last_message: summary.last_message.as_ref().map(|m| LastMessageOut {
            id: m.id.uuid(),
            sender_id: m.sender_id.uuid(),
            text: m.preview.clone(),
            sent_at: rfc3339(m.id),
        }),
        last_message_id: summary.last_message.as_ref().map(|m| m.id.uuid()),
        unread_count: summary.unread,
        last_read_id: summary.last_read_id.map(TimeUuid::uuid),
    }
}

fn member_out(m: &Member) -> MemberOut {
    MemberOut {
        id: m.id.uuid(),
        username: m.username.clone(),
        role: m.role.into(),
        joined_at: rfc3339_millis(m.joined_at),
        last_read_id: m.last_read_id.map(TimeUuid::uuid),
    }
}

fn message_out(m: &Message) -> MessageOut {
    MessageOut {
        id: m.id.uuid(),
        kind: MessageType::Message,
        chat_id: m.chat_id.uuid(),
        sender_id: m.sender_id.uuid(),
        text: m.text.as_str().to_owned(),
        sent_at: rfc3339(m.id),
        client_message_id: m.client_message_id.as_ref().map(|c| c.as_str().to_owned()),
        reply_to: m.reply_to.map(TimeUuid::uuid),
    }
}

fn event_out(e: &TimelineEvent) -> EventOut {
    use crate::store::ChatEventType as T;
    EventOut {
        id: e.id.uuid(),
        kind: match e.kind {
            T::ChatCreated => EventType::ChatCreated,
            T::MemberAdded => EventType::MemberAdded,
            T::MemberRemoved => EventType::MemberRemoved,
            T::ChatRenamed => EventType::ChatRenamed,
        },
        chat_id: e.chat_id.uuid(),
        actor_id: e.actor_id.uuid(),
        user_id: e.user_id.map(UserId::uuid),
        title: e.title.clone(),
        members: (!e.members.is_empty()).then(|| e.members.iter().map(|m| m.uuid()).collect()),
        sent_at: rfc3339(e.id),
    }
}

fn item_out(item: &Item) -> ItemOut {
    match item {
        Item::Message(m) => ItemOut::Message(message_out(m)),
        Item::Event(e) => ItemOut::Event(event_out(e)),
    }
}

/// Start (or get) the direct chat with another user, or create a group.
///
/// `{user_id}`: the direct chat with that user, 201 when new, 200 when it
/// existed. `{title, member_ids}`: a new group, 201, with the caller as its
/// owner.
#[utoipa::path(post, path = "/chats", request_body = StartChat, security(("bearer" = [])), responses(
    (status = 201, description = "created", body = ChatOut),
    (status = 200, description = "the direct chat already existed", body = ChatOut),
    (status = 422, description = "yourself, no such user, a bad title, no members or too many"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn start_chat(
    State(state): State<AppState>,
    caller: AuthUser,
    Json(body): Json<StartChat>,
) -> Result<(StatusCode, Json<ChatOut>)> {
    let (created, summary) = match body {
        StartChat::Direct(d) => {
            state
                .chats
                .start_chat(&caller, UserId::from(d.user_id))
                .await?
        }
        StartChat::Group(g) => {
            let title = Title::parse(g.title)
                .map_err(|e| Error::Unprocessable("invalid_title", e.into()))?;
            let members = g.member_ids.into_iter().map(UserId::from).collect();
            (
                true,
                state.chats.create_group(&caller, title, members).await?,
            )
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(chat_out(&summary))))
}

/// The caller's chats, most recently active first, a page at a time.
///
/// Follow `next_cursor` for the rest. A chat that becomes active while
/// you page moves to the front: it is on a page already read (reload the
/// first page to see it there), and one page may then show a chat again.
#[utoipa::path(get, path = "/chats", params(ChatListParams), security(("bearer" = [])), responses(
    (status = 200, body = ChatList),
    (status = 400, description = "limit outside 1–500, or not a cursor this list gave out"),
))]
async fn list_chats(
    State(state): State<AppState>,
    caller: AuthUser,
    Query(params): Query<ChatListParams>,
) -> Result<Json<ChatList>> {
    let limit = match params.limit.as_deref() {
        None => DEFAULT_CHATS_PER_PAGE,
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|l| (1..=MAX_CHATS_PER_PAGE).contains(l))
            .ok_or_else(|| {
                Error::BadRequest(
                    "invalid_limit",
                    format!("limit must be 1 to {MAX_CHATS_PER_PAGE}"),
                )
            })?,
    };
    let after = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => Some(ChatCursor::parse(raw).ok_or_else(|| {
            Error::BadRequest("invalid_cursor", "not a cursor of this list".into())
        })?),
    };
    let (chats, next) = state.chats.chats_of(caller.id.into(), after, limit).await?;
    Ok(Json(ChatList {
        chats: chats.iter().map(chat_out).collect(),
        next_cursor: next.map(|c| c.encode()),
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
    (status = 404, description = "no such chat, or not a member"),
    (status = 422, description = "empty or too long text, bad client_message_id, reply_to not a message of this chat"),
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
    let reply_to = body
        .reply_to
        .map(TimeUuid::from_uuid)
        .transpose()
        .map_err(|_| {
            Error::Unprocessable(
                "invalid_reply_to",
                "reply_to is not a message of this chat".into(),
            )
        })?;
    let inserted = state
        .chats
        .send(&id, caller.id.into(), text, client_id, reply_to)
        .await?;
    let status = match inserted {
        Inserted::New(_) => StatusCode::CREATED,
        Inserted::Existing(_) => StatusCode::OK,
    };
    Ok((status, Json(message_out(inserted.message()))))
}

/// Page through a chat's timeline: history (newest first) or catch-up
/// (`after`: oldest first).
#[utoipa::path(get, path = "/chat/{id}", params(("id" = Uuid, Path, description = "The chat."), HistoryParams), security(("bearer" = [])), responses(
    (status = 200, body = HistoryPage),
    (status = 400, description = "time or after not a version-1 UUID, both given, or quantity outside 1–100"),
    (status = 404, description = "no such chat, or not a member"),
))]
async fn history(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<HistoryPage>> {
    let before = domain::parse_time(params.time.as_deref())
        .map_err(|e| Error::BadRequest("invalid_time", e.into()))?;
    let after = domain::parse_after(params.after.as_deref())
        .map_err(|e| Error::BadRequest("invalid_after", e.into()))?;
    let quantity = Quantity::parse(params.quantity.as_deref())
        .map_err(|e| Error::BadRequest("invalid_quantity", e.into()))?;
    let caller = UserId::from(caller.id);
    if let Some(after) = after {
        if before.is_some() {
            return Err(Error::BadRequest(
                "time_and_after",
                "give time (history) or after (catch-up), not both".into(),
            ));
        }
        let (items, has_more) = state.chats.catch_up(&id, caller, after, quantity).await?;
        let next_after = items.last().map_or(after, Item::id);
        return Ok(Json(HistoryPage {
            messages: items.iter().map(item_out).collect(),
            has_more,
            next_time: None,
            next_after: Some(next_after.uuid()),
        }));
    }
    let (items, has_more) = state.chats.history(&id, caller, before, quantity).await?;
    let next_time = if has_more {
        items.last().map(|m| m.id().uuid())
    } else {
        None
    };
    Ok(Json(HistoryPage {
        messages: items.iter().map(item_out).collect(),
        has_more,
        next_time,
        next_after: None,
    }))
}

/// Rename a group (its owner and admins).
#[utoipa::path(patch, path = "/chat/{id}", params(("id" = Uuid, Path, description = "The group.")), request_body = Rename, security(("bearer" = [])), responses(
    (status = 200, body = ChatOut),
    (status = 403, description = "not the group's owner or an admin"),
    (status = 404, description = "no such chat, or not a member"),
    (status = 409, description = "a direct chat"),
    (status = 422, description = "a bad title"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn rename(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<Rename>,
) -> Result<Json<ChatOut>> {
    let title =
        Title::parse(body.title).map_err(|e| Error::Unprocessable("invalid_title", e.into()))?;
    let summary = state.chats.rename(&id, caller.id.into(), title).await?;
    Ok(Json(chat_out(&summary)))
}

/// A chat's members with their roles and read horizons (read receipts).
#[utoipa::path(get, path = "/chat/{id}/members", params(("id" = Uuid, Path, description = "The chat.")), security(("bearer" = [])), responses(
    (status = 200, body = MemberList),
    (status = 404, description = "no such chat, or not a member"),
))]
async fn members(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MemberList>> {
    let members = state.chats.members(&id, caller.id.into()).await?;
    Ok(Json(MemberList {
        members: members.iter().map(member_out).collect(),
    }))
}

/// Add a member to a group (its owner and admins).
#[utoipa::path(post, path = "/chat/{id}/members", params(("id" = Uuid, Path, description = "The group.")), request_body = AddMember, security(("bearer" = [])), responses(
    (status = 201, description = "added", body = MemberOut),
    (status = 200, description = "already a member", body = MemberOut),
    (status = 403, description = "not the group's owner or an admin"),
    (status = 404, description = "no such chat, or not a member"),
    (status = 409, description = "a direct chat"),
    (status = 422, description = "no such user, or the group is full"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn add_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<AddMember>,
) -> Result<(StatusCode, Json<MemberOut>)> {
    let (added, member) = state
        .chats
        .add_member(&id, &caller, UserId::from(body.user_id))
        .await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(member_out(&member))))
}

/// The member a path names; a malformed id names nobody.
fn member_id(raw: &str) -> Result<UserId> {
    raw.parse::<Uuid>()
        .map(UserId::from)
        .map_err(|_| Error::NotFound("member_not_found", "no such member of this chat".into()))
}

/// Remove a member from a group (owner: anyone; admins: plain members), or
/// leave it (your own id).
#[utoipa::path(delete, path = "/chat/{id}/members/{user_id}", params(("id" = Uuid, Path, description = "The group."), ("user_id" = Uuid, Path, description = "The member; your own id to leave.")), security(("bearer" = [])), responses(
    (status = 204, description = "removed"),
    (status = 403, description = "not allowed to remove that member"),
    (status = 404, description = "no such chat, not a member, or no such member"),
    (status = 409, description = "a direct chat"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn remove_member(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode> {
    let caller = UserId::from(caller.id);
    state.chats.access(&id, caller).await?;
    state
        .chats
        .remove_member(&id, caller, member_id(&user)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a member's role (the owner only); `owner` hands the group over.
#[utoipa::path(patch, path = "/chat/{id}/members/{user_id}", params(("id" = Uuid, Path, description = "The group."), ("user_id" = Uuid, Path, description = "The member.")), request_body = SetRole, security(("bearer" = [])), responses(
    (status = 200, body = MemberOut),
    (status = 403, description = "not the group's owner"),
    (status = 404, description = "no such chat, not a member, or no such member"),
    (status = 409, description = "a direct chat"),
    (status = 422, description = "the owner's own role"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn set_role(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, user)): Path<(String, String)>,
    Json(body): Json<SetRole>,
) -> Result<Json<MemberOut>> {
    let caller = UserId::from(caller.id);
    state.chats.access(&id, caller).await?;
    let member = state
        .chats
        .set_role(&id, caller, member_id(&user)?, body.role.into())
        .await?;
    Ok(Json(member_out(&member)))
}

/// Move the caller's read horizon forward to a message (never back).
#[utoipa::path(post, path = "/chat/{id}/read", params(("id" = Uuid, Path, description = "The chat.")), request_body = MarkRead, security(("bearer" = [])), responses(
    (status = 204, description = "the horizon is at or past the message"),
    (status = 404, description = "no such chat, or not a member"),
    (status = 422, description = "not a message of this chat"),
))]
#[tracing::instrument(skip_all, fields(caller = %caller.id))]
async fn mark_read(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<MarkRead>,
) -> Result<StatusCode> {
    let message = TimeUuid::from_uuid(body.message_id).map_err(|_| {
        Error::Unprocessable(
            "invalid_message_id",
            "message_id is not a message of this chat".into(),
        )
    })?;
    state
        .chats
        .mark_read(&id, caller.id.into(), message)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

service_kit::test_every_route_is_documented!(
    include_str!("routes.rs"),
    <ApiDoc as utoipa::OpenApi>::openapi()
);
