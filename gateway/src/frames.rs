//! What travels over a per-user stream: the JSON of every frame.
//!
//! Server → client, every one an object with a `type`:
//!
//! | `type` | when | fields |
//! | --- | --- | --- |
//! | `hello` | first, on every (re)connection | `cursor`, `user_id` |
//! | `message` | a message in one of the user's chats | `cursor`, `chat_id`, `chat_kind`, `id`, `sender_id`, `text`, `sent_at`, `client_message_id`, `reply_to` |
//! | `chat_created`, `member_added`, `member_removed`, `chat_renamed` | a timeline event (a direct chat's `chat_created` too) | `cursor`, `chat_id`, `chat_kind`, `id`, `actor_id`, `user_id`, `title`, `members`, `at` |
//! | `read` | a member's read horizon moved | `cursor`, `chat_id`, `user_id`, `last_read_id`, `at` |
//! | `typing` | another member is typing | `chat_id`, `user_id` |
//! | `presence` | a member of one of the user's chats came online or went offline | `user_id`, `online` |
//! | `reset` | the cursor given cannot be resumed from | `reason` (`cursor_too_old`, `cursor_ahead`, `cursor_invalid`), `cursor` (where the stream now starts) |
//! | `cursor` | nothing for the user, but the stream moved on (keep-alive) | `cursor` |
//! | `expired` | the token expired; the stream ends | `reason` |
//! | `reconnect` | the server is going away; reconnect with the cursor | `reason` |
//! | `ack`, `error`, `pong` | WebSocket answers (below) | `request_id`, … |
//!
//! Events with a `cursor` are the log's; `typing` and `presence` are never
//! stored and have none.
//!
//! Client → server (WebSocket only), each may carry a `request_id` (string,
//! at most 64 bytes) echoed in the answer:
//!
//! - `{"type":"send","chat_id","text","client_message_id"?,"reply_to"?}` →
//!   `{"type":"ack","request_id","message":{…}}` with the stored message
//!   (the same body and idempotency as `POST /chat/{id}/messages`), or
//!   `{"type":"error","request_id","status","error":{"code","message"}}`
//!   with the HTTP status and error body the route would have answered;
//! - `{"type":"read","chat_id","message_id"}` → `ack` (like
//!   `POST /chat/{id}/read`) or `error`;
//! - `{"type":"typing","chat_id"}` → nothing (at most one per chat per
//!   `--typing-interval-ms` goes out; more are dropped; a chat the user is not
//!   a member of is an `error` 404);
//! - `{"type":"ping"}` → `{"type":"pong"}`.

use chat_events::{ChatEventType, ChatId, ChatKind, Event, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// Who an event is for, as the log says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// A direct chat's message: its two members, for ever.
    Direct { sender: UserId, recipient: UserId },
    /// A group message or a read receipt: the chat's members.
    Members,
    /// A timeline event: every member after it, and the member removed.
    Change {
        members: Vec<UserId>,
        removed: Option<UserId>,
        added: Option<UserId>,
        created: bool,
    },
}

/// One event of the log, ready for clients: where it is on the log, who may
/// see it, and its JSON without the cursor.
#[derive(Debug)]
pub struct Routed {
    pub partition: usize,
    pub offset: i64,
    pub chat: ChatId,
    pub audience: Audience,
    /// `{"type":…}`: a cursor goes in front of its first field.
    pub body: Box<str>,
}

impl Routed {
    /// The client form of `event`.
    pub fn new(partition: usize, offset: i64, event: &Event) -> Self {
        let (audience, body) = match event {
            Event::Message(m) => (
                match (m.chat_kind, m.recipient_id) {
                    (ChatKind::Direct, Some(recipient)) => Audience::Direct {
                        sender: m.sender_id,
                        recipient,
                    },
                    _ => Audience::Members,
                },
                json!({
                    "type": "message",
                    "chat_id": m.chat_id,
                    "chat_kind": m.chat_kind,
                    "id": m.id,
                    "sender_id": m.sender_id,
                    "text": m.text,
                    "sent_at": rfc3339(m.sent_at),
                    "client_message_id": m.client_message_id,
                    "reply_to": m.reply_to,
                }),
            ),
            Event::Chat(e) => (
                Audience::Change {
                    members: e.members.clone(),
                    removed: (e.kind == ChatEventType::MemberRemoved)
                        .then_some(e.user_id)
                        .flatten(),
                    added: (e.kind == ChatEventType::MemberAdded)
                        .then_some(e.user_id)
                        .flatten(),
                    created: e.kind == ChatEventType::ChatCreated,
                },
                json!({
                    "type": e.kind.timeline_name(),
                    "chat_id": e.chat_id,
                    "chat_kind": e.chat_kind,
                    "id": e.id,
                    "actor_id": e.actor_id,
                    "user_id": e.user_id,
                    "title": e.title,
                    "members": e.members,
                    "at": rfc3339(e.at),
                }),
            ),
            Event::Read(r) => (
                Audience::Members,
                json!({
                    "type": "read",
                    "chat_id": r.chat_id,
                    "user_id": r.user_id,
                    "last_read_id": r.last_read_id,
                    "at": rfc3339(r.at),
                }),
            ),
        };
        Self {
            partition,
            offset,
            chat: event.chat_id(),
            audience,
            body: body.to_string().into_boxed_str(),
        }
    }

    /// Bytes it holds in memory, roughly.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.body.len()
            + match &self.audience {
                Audience::Change { members, .. } => members.len() * 16,
                _ => 0,
            }
    }

    /// Its frame for a client at `cursor`.
    pub fn frame(&self, cursor: &str) -> String {
        with_cursor(&self.body, cursor)
    }
}

/// `body` (a JSON object) with `"cursor"` as its first field.
pub fn with_cursor(body: &str, cursor: &str) -> String {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let mut out = String::with_capacity(body.len() + cursor.len() + 12);
    out.push_str("{\"cursor\":\"");
    out.push_str(cursor);
    out.push_str("\",");
    out.push_str(rest);
    out
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn hello(cursor: &str, user: UserId) -> String {
    json!({"type": "hello", "cursor": cursor, "user_id": user}).to_string()
}

pub fn cursor_only(cursor: &str) -> String {
    json!({"type": "cursor", "cursor": cursor}).to_string()
}

pub fn reset(reason: &str, cursor: &str) -> String {
    json!({"type": "reset", "reason": reason, "cursor": cursor}).to_string()
}

pub fn typing(chat: ChatId, user: UserId) -> String {
    json!({"type": "typing", "chat_id": chat, "user_id": user}).to_string()
}

pub fn presence(user: UserId, online: bool) -> String {
    json!({"type": "presence", "user_id": user, "online": online}).to_string()
}

pub fn expired() -> String {
    json!({"type": "expired", "reason": "token_expired"}).to_string()
}

pub fn reconnect(reason: &str) -> String {
    json!({"type": "reconnect", "reason": reason}).to_string()
}

pub fn pong(request_id: Option<&str>) -> String {
    json!({"type": "pong", "request_id": request_id}).to_string()
}

pub fn ack(request_id: Option<&str>, message: Option<serde_json::Value>) -> String {
    let mut ack = json!({"type": "ack", "request_id": request_id});
    if let Some(message) = message {
        ack["message"] = message;
    }
    ack.to_string()
}

pub fn error(request_id: Option<&str>, status: u16, code: &str, message: &str) -> String {
    json!({
        "type": "error",
        "request_id": request_id,
        "status": status,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

/// An answer with the error body a route gave (`{"error": {…}}`).
pub fn error_from_body(request_id: Option<&str>, status: u16, body: &[u8]) -> String {
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or_else(|| json!({"code": "unavailable", "message": "chat-service failed"}));
    json!({"type": "error", "request_id": request_id, "status": status, "error": error}).to_string()
}

/// Most bytes of a `request_id`.
pub const MAX_REQUEST_ID: usize = 64;

/// A client's frame (WebSocket).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    Send {
        request_id: Option<String>,
        chat_id: String,
        text: serde_json::Value,
        client_message_id: Option<serde_json::Value>,
        reply_to: Option<serde_json::Value>,
    },
    Read {
        request_id: Option<String>,
        chat_id: String,
        message_id: serde_json::Value,
    },
    Typing {
        request_id: Option<String>,
        chat_id: String,
    },
    Ping {
        request_id: Option<String>,
    },
}

impl ClientFrame {
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientFrame::Send { request_id, .. }
            | ClientFrame::Read { request_id, .. }
            | ClientFrame::Typing { request_id, .. }
            | ClientFrame::Ping { request_id } => request_id.as_deref(),
        }
    }
}

/// The body of `POST /chat/{id}/messages` a `send` frame stands for.
#[derive(Serialize)]
pub struct SendBody<'a> {
    pub text: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a serde_json::Value>,
}

/// A chat id as a route would take it: anything else is the route's 404.
pub fn chat_id(text: &str) -> Option<ChatId> {
    Uuid::parse_str(text).ok().map(ChatId::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_events::{MessageCreated, TimeUuidGenerator};

    #[test]
    fn an_event_frame_carries_its_cursor_first() {
        let id = TimeUuidGenerator::new().next();
        let (a, b) = (UserId::from(Uuid::new_v4()), UserId::from(Uuid::new_v4()));
        let event = Event::Message(MessageCreated::new(
            id.uuid(),
            chat_events::chat_id(a, b),
            a,
            Some(b),
            "hi \"there\"".into(),
            id.datetime(),
        ));
        let routed = Routed::new(0, 41, &event);
        assert_eq!(
            routed.audience,
            Audience::Direct {
                sender: a,
                recipient: b
            }
        );
        let frame: serde_json::Value = serde_json::from_str(&routed.frame("42")).expect("json");
        assert_eq!(frame["cursor"], "42");
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["text"], "hi \"there\"");
        assert_eq!(frame["id"], id.uuid().to_string());
    }

    #[test]
    fn client_frames_parse_strictly() {
        let send: ClientFrame =
            serde_json::from_str(r#"{"type":"send","request_id":"r1","chat_id":"x","text":"hi"}"#)
                .expect("send");
        assert_eq!(send.request_id(), Some("r1"));
        for bad in [
            r#"{"type":"shout"}"#,
            r#"{"type":"ping","extra":1}"#,
            r#"{"type":"typing"}"#,
            r#"[]"#,
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
    }
}
