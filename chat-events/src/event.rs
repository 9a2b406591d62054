//! The `message.created` event.
//!
//! Key on the log: the chat id (so one chat stays in order on one
//! partition). Value: this JSON, one object per message:
//!
//! ```json
//! {"v":1,"type":"message.created","id":"<timeuuid>","chat_id":"<uuid>",
//!  "sender_id":"<uuid>","recipient_id":"<uuid>","text":"hi",
//!  "sent_at":"2026-11-23T12:00:00.123456Z","client_message_id":"c-1"}
//! ```
//!
//! `sent_at` is the id's timestamp in RFC 3339, UTC; `client_message_id` is
//! `null` when the sender gave none. Consumers must refuse other `v` values
//! rather than guess.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ChatId, UserId};

pub const VERSION: u32 = 1;
pub const TYPE: &str = "message.created";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCreated {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
    pub chat_id: ChatId,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    pub client_message_id: Option<String>,
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

impl MessageCreated {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(bytes)?;
        if event.v != VERSION {
            return Err(EventError::Version(event.v));
        }
        if event.kind != TYPE {
            return Err(EventError::Type(event.kind));
        }
        if event.id.get_version_num() != 1 {
            return Err(EventError::Id);
        }
        Ok(event)
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
            sender_id: Uuid::new_v4().into(),
            recipient_id: Uuid::new_v4().into(),
            text: "hello \"world\"".into(),
            sent_at: id.datetime(),
            client_message_id: Some("c-1".into()),
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
            "sender_id",
            "recipient_id",
            "text",
            "sent_at",
            "client_message_id",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["type"], "message.created");
        assert!(json["sent_at"].as_str().expect("string").ends_with('Z'));
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
    }
}
