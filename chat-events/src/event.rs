//! The events on the log, one JSON object each.
//!
//! Key on the log: the chat id, so every event of one chat stays in order on
//! one partition. Every value has `"v": 1` and a `type`:
//!
//! - `message.created`, one per message:
//!
//!   ```json
//!   {"v":1,"type":"message.created","id":"<timeuuid>","chat_id":"<uuid>",
//!    "chat_kind":"direct","sender_id":"<uuid>","recipient_id":"<uuid>",
//!    "text":"hi","sent_at":"2026-11-23T12:00:00.123456Z",
//!    "client_message_id":"c-1","reply_to":null}
//!   ```
//!
//!   `sent_at` is the id's timestamp in RFC 3339, UTC; `client_message_id`
//!   and `reply_to` are `null` when absent. In a group (`chat_kind`
//!   `"group"`) `recipient_id` is `null`: who may see the message is the
//!   chat's members as of the newest membership event before it on the log
//!   (the same partition). Events written before groups existed have no
//!   `chat_kind` (read as `"direct"`) and no `reply_to`.
//! - `chat.created`, `member.added`, `member.removed`, `chat.renamed`
//!   ([`ChatEvent`]): the chat's timeline events, with the TimeUUID `id` they
//!   have in history, `actor_id` (who did it), `user_id` (added or removed),
//!   `title` (created or renamed), and `members`: every member after the
//!   event, so a consumer knows who may see the chat without asking. A
//!   direct chat's `chat.created` is on the log (its two members learn of
//!   it) but not in its history, which holds only messages.
//! - `read.updated` ([`ReadUpdated`]): a member's read horizon moved
//!   forward to `last_read_id`.
//!
//! Consumers skip types they do not know ([`EventError::Type`]) and refuse
//! versions they do not know ([`EventError::Version`]) rather than guess.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ChatId, UserId};

pub const VERSION: u32 = 1;
/// The `type` of [`MessageCreated`].
pub const TYPE: &str = "message.created";
/// The `type` of [`ReadUpdated`].
pub const READ_TYPE: &str = "read.updated";

/// Direct (two users, for ever) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    #[default]
    Direct,
    Group,
}

impl ChatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCreated {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
    pub chat_id: ChatId,
    #[serde(default)]
    pub chat_kind: ChatKind,
    pub sender_id: UserId,
    /// The other member of a direct chat; `None` in a group.
    pub recipient_id: Option<UserId>,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    pub client_message_id: Option<String>,
    /// A message of the same chat this one answers.
    #[serde(default)]
    pub reply_to: Option<Uuid>,
}

/// What a timeline event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChatEventType {
    #[serde(rename = "chat.created")]
    ChatCreated,
    #[serde(rename = "member.added")]
    MemberAdded,
    #[serde(rename = "member.removed")]
    MemberRemoved,
    #[serde(rename = "chat.renamed")]
    ChatRenamed,
}

impl ChatEventType {
    pub const ALL: [ChatEventType; 4] = [
        ChatEventType::ChatCreated,
        ChatEventType::MemberAdded,
        ChatEventType::MemberRemoved,
        ChatEventType::ChatRenamed,
    ];

    /// Its `type` on the log.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatEventType::ChatCreated => "chat.created",
            ChatEventType::MemberAdded => "member.added",
            ChatEventType::MemberRemoved => "member.removed",
            ChatEventType::ChatRenamed => "chat.renamed",
        }
    }

    /// Its `type` in history (`chat_created`…).
    pub fn timeline_name(self) -> &'static str {
        match self {
            ChatEventType::ChatCreated => "chat_created",
            ChatEventType::MemberAdded => "member_added",
            ChatEventType::MemberRemoved => "member_removed",
            ChatEventType::ChatRenamed => "chat_renamed",
        }
    }

    pub fn from_timeline_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.timeline_name() == name)
    }
}

/// A timeline event of a chat (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: ChatEventType,
    /// Its TimeUUID in the chat's history.
    pub id: Uuid,
    pub chat_id: ChatId,
    pub chat_kind: ChatKind,
    pub actor_id: UserId,
    /// The member added or removed.
    pub user_id: Option<UserId>,
    /// The title given (created or renamed; groups only).
    pub title: Option<String>,
    /// Every member after the event.
    pub members: Vec<UserId>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A member's read horizon moved forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadUpdated {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub chat_id: ChatId,
    pub user_id: UserId,
    pub last_read_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Any event on the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(MessageCreated),
    Chat(ChatEvent),
    Read(ReadUpdated),
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported event version {0}")]
    Version(u32),
    #[error("unsupported event type {0:?}")]
    Type(String),
    #[error("id is not a version-1 UUID")]
    Id,
}

/// What every event starts with.
#[derive(Deserialize)]
struct Header {
    v: u32,
    #[serde(rename = "type")]
    kind: String,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data to a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn time_id(id: Uuid) -> Result<(), EventError> {
    if id.get_version_num() == 1 {
        Ok(())
    } else {
        Err(EventError::Id)
    }
}

impl MessageCreated {
    /// A message without client id or reply: in a direct chat with
    /// `recipient`, or (`None`) in a group.
    pub fn new(
        id: Uuid,
        chat_id: ChatId,
        sender_id: UserId,
        recipient_id: Option<UserId>,
        text: String,
        sent_at: OffsetDateTime,
    ) -> Self {
        Self {
            v: VERSION,
            kind: TYPE.to_owned(),
            id,
            chat_id,
            chat_kind: if recipient_id.is_some() {
                ChatKind::Direct
            } else {
                ChatKind::Group
            },
            sender_id,
            recipient_id,
            text,
            sent_at,
            client_message_id: None,
            reply_to: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// A `message.created` event, and nothing else.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        match Event::decode(bytes)? {
            Event::Message(m) => Ok(m),
            Event::Chat(e) => Err(EventError::Type(e.kind.as_str().to_owned())),
            Event::Read(r) => Err(EventError::Type(r.kind)),
        }
    }
}

impl Event {
    pub fn chat_id(&self) -> ChatId {
        match self {
            Event::Message(m) => m.chat_id,
            Event::Chat(e) => e.chat_id,
            Event::Read(r) => r.chat_id,
        }
    }

    /// The event's `type` on the log.
    pub fn type_name(&self) -> &str {
        match self {
            Event::Message(m) => &m.kind,
            Event::Chat(e) => e.kind.as_str(),
            Event::Read(r) => &r.kind,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Event::Message(m) => encode(m),
            Event::Chat(e) => encode(e),
            Event::Read(r) => encode(r),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let header: Header = serde_json::from_slice(bytes)?;
        if header.v != VERSION {
            return Err(EventError::Version(header.v));
        }
        match header.kind.as_str() {
            TYPE => {
                let m: MessageCreated = serde_json::from_slice(bytes)?;
                time_id(m.id)?;
                Ok(Event::Message(m))
            }
            READ_TYPE => {
                let r: ReadUpdated = serde_json::from_slice(bytes)?;
                time_id(r.last_read_id)?;
                Ok(Event::Read(r))
            }
            other if ChatEventType::ALL.iter().any(|t| t.as_str() == other) => {
                let e: ChatEvent = serde_json::from_slice(bytes)?;
                time_id(e.id)?;
                Ok(Event::Chat(e))
            }
            _ => Err(EventError::Type(header.kind)),
        }
    }
}

impl From<MessageCreated> for Event {
    fn from(m: MessageCreated) -> Self {
        Event::Message(m)
    }
}

impl From<&MessageCreated> for Event {
    fn from(m: &MessageCreated) -> Self {
        Event::Message(m.clone())
    }
}

impl From<ChatEvent> for Event {
    fn from(e: ChatEvent) -> Self {
        Event::Chat(e)
    }
}

impl From<&Event> for Event {
    fn from(e: &Event) -> Self {
        e.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TimeUuidGenerator;

    fn sample() -> MessageCreated {
        let id = TimeUuidGenerator::new().next();
        MessageCreated {
            v: VERSION,
            kind: TYPE.into(),
            id: id.uuid(),
            chat_id: Uuid::new_v4().into(),
            chat_kind: ChatKind::Direct,
            sender_id: Uuid::new_v4().into(),
            recipient_id: Some(Uuid::new_v4().into()),
            text: "hello \"world\"".into(),
            sent_at: id.datetime(),
            client_message_id: Some("c-1".into()),
            reply_to: None,
        }
    }

    fn chat_event(kind: ChatEventType) -> ChatEvent {
        let id = TimeUuidGenerator::new().next();
        ChatEvent {
            v: VERSION,
            kind,
            id: id.uuid(),
            chat_id: Uuid::new_v4().into(),
            chat_kind: ChatKind::Group,
            actor_id: Uuid::new_v4().into(),
            user_id: Some(Uuid::new_v4().into()),
            title: Some("team".into()),
            members: vec![Uuid::new_v4().into()],
            at: id.datetime(),
        }
    }

    #[test]
    fn round_trips_and_has_the_documented_fields() {
        let e = sample();
        let bytes = e.encode();
        assert_eq!(MessageCreated::decode(&bytes).expect("decode"), e);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        for field in [
            "v",
            "type",
            "id",
            "chat_id",
            "chat_kind",
            "sender_id",
            "recipient_id",
            "text",
            "sent_at",
            "client_message_id",
            "reply_to",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["type"], "message.created");
        assert_eq!(json["chat_kind"], "direct");
        assert!(json["sent_at"].as_str().expect("string").ends_with('Z'));
    }

    #[test]
    fn events_written_before_groups_still_decode_as_direct() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().encode()).expect("json");
        let object = json.as_object_mut().expect("object");
        object.remove("chat_kind");
        object.remove("reply_to");
        let old = serde_json::to_vec(&json).expect("encode");
        let decoded = MessageCreated::decode(&old).expect("decode");
        assert_eq!(decoded.chat_kind, ChatKind::Direct);
        assert_eq!(decoded.reply_to, None);
    }

    #[test]
    fn every_type_round_trips_through_the_one_decoder() {
        let mut events = vec![Event::Message(sample())];
        events.extend(ChatEventType::ALL.map(|t| Event::Chat(chat_event(t))));
        events.push(Event::Read(ReadUpdated {
            v: VERSION,
            kind: READ_TYPE.into(),
            chat_id: Uuid::new_v4().into(),
            user_id: Uuid::new_v4().into(),
            last_read_id: TimeUuidGenerator::new().next().uuid(),
            at: OffsetDateTime::now_utc(),
        }));
        for event in events {
            let bytes = event.encode();
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(json["type"], event.type_name());
            assert_eq!(Event::decode(&bytes).expect("decode"), event);
        }
        let renamed = chat_event(ChatEventType::ChatRenamed);
        let json: serde_json::Value =
            serde_json::from_slice(&Event::Chat(renamed).encode()).expect("json");
        assert_eq!(json["type"], "chat.renamed");
        assert_eq!(json["chat_kind"], "group");
    }

    #[test]
    fn other_versions_types_and_ids_are_refused() {
        let mut e = sample();
        e.v = 2;
        assert!(matches!(
            MessageCreated::decode(&e.encode()),
            Err(EventError::Version(2))
        ));
        let mut e = sample();
        e.kind = "message.deleted".into();
        assert!(matches!(
            MessageCreated::decode(&e.encode()),
            Err(EventError::Type(_))
        ));
        let mut e = sample();
        e.id = Uuid::new_v4();
        assert!(matches!(
            MessageCreated::decode(&e.encode()),
            Err(EventError::Id)
        ));
        assert!(MessageCreated::decode(b"{").is_err());
        let read = Event::Chat(chat_event(ChatEventType::MemberAdded)).encode();
        assert!(
            matches!(MessageCreated::decode(&read), Err(EventError::Type(t)) if t == "member.added")
        );
        let mut unknown = chat_event(ChatEventType::ChatCreated);
        unknown.id = Uuid::new_v4();
        assert!(matches!(
            Event::decode(&Event::Chat(unknown).encode()),
            Err(EventError::Id)
        ));
    }
}
