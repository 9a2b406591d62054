//! The document shape clients read, the same in Firestore and embedded.
//!
//! `chats/{chat_id}/batches/{batch_id}`:
//! `chat_id`, `members`, `sender_id`, `seq` (1, 2, 3… per chat: a gap
//! means a missed batch, so fall back to history), `messages` (`id`, `text`,
//! `sent_at`), `first_message_id`, `last_message_id`, `first_at`,
//! `last_at`, `count`, `closed`, `expire_at` (for a TTL policy: history lives
//! in the message store), and `log_partition` / `log_offset` (the log
//! position of the last message, used by the aggregator itself).
//!
//! `chats/{chat_id}`: `chat_id`, `members`, `last_batch_id`,
//! `last_batch_seq`, `last_sender_id`, `last_activity`.
//!
//! `members` lists the user ids allowed to read the chat: Firestore's rules
//! read it from the chat document, and clients list their chats with
//! `where("members", "array-contains", uid)` (`firestore.indexes.json`).
//! Documents written before it was named `members` said `participants`;
//! the Firestore sink still reads those.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::batcher::{Batch, Summary};

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The batch document, serialised straight from the batch (no
/// intermediate `Value`: growing batches are rewritten often).
#[derive(Serialize)]
struct BatchDoc<'a> {
    id: Uuid,
    chat_id: Uuid,
    members: [Uuid; 2],
    sender_id: Uuid,
    seq: u64,
    messages: Vec<MessageDoc<'a>>,
    first_message_id: Uuid,
    last_message_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    first_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    last_at: OffsetDateTime,
    count: usize,
    closed: bool,
    #[serde(with = "time::serde::rfc3339")]
    expire_at: OffsetDateTime,
    log_partition: i32,
    log_offset: i64,
}

#[derive(Serialize)]
struct MessageDoc<'a> {
    id: Uuid,
    text: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    sent_at: OffsetDateTime,
}

impl<'a> BatchDoc<'a> {
    fn new(batch: &'a Batch, ttl: Duration) -> Self {
        Self {
            id: batch.batch_id,
            chat_id: batch.chat_id,
            members: batch.participants,
            sender_id: batch.sender_id,
            seq: batch.seq,
            messages: batch
                .messages
                .iter()
                .map(|m| MessageDoc {
                    id: m.id,
                    text: &m.text,
                    sent_at: m.sent_at,
                })
                .collect(),
            first_message_id: batch.first().id,
            last_message_id: batch.last().id,
            first_at: batch.first().sent_at,
            last_at: batch.last().sent_at,
            count: batch.count(),
            closed: batch.closed,
            expire_at: expire_at(batch, ttl),
            log_partition: batch.last_position.partition,
            log_offset: batch.last_position.offset,
        }
    }
}

/// The batch document as JSON text (times as RFC 3339 strings).
pub fn batch_json_text(batch: &Batch, ttl: Duration) -> String {
    serde_json::to_string(&BatchDoc::new(batch, ttl)).unwrap_or_default()
}

pub fn summary_json(summary: &Summary) -> Value {
    json!({
        "chat_id": summary.chat_id,
        "members": summary.participants,
        "last_batch_id": summary.last_batch_id,
        "last_batch_seq": summary.last_batch_seq,
        "last_sender_id": summary.last_sender_id,
        "last_activity": rfc3339(summary.last_activity),
    })
}

pub fn expire_at(batch: &Batch, ttl: Duration) -> OffsetDateTime {
    batch.last().sent_at + ttl
}
