//! The document shape clients read, the same in Firestore and embedded.
//!
//! `chats/{chat_id}/batches/{batch_id}`:
//! `chat_id`, `chat_kind` (`direct` or `group`), `title` (a group's, when
//! the batch started), `members`, `sender_id`, `seq` (1, 2, 3… per chat: a
//! gap means a missed batch, so fall back to history), `messages` (`id`,
//! `type`, `text`, `sent_at`, `reply_to`, and for events `user_id` and
//! `title`), `first_message_id`, `last_message_id`, `first_at`, `last_at`,
//! `count`, `closed`, `expire_at` (for a TTL policy: history lives in the
//! message store), and `log_partition` / `log_offset` (the log position of
//! the last message, used by the aggregator itself).
//!
//! A group's timeline event is a batch of its own: `count` 1, `closed`, its
//! one item's `type` the event (`chat_created`, `member_added`,
//! `member_removed`, `chat_renamed`), `sender_id` its actor, `user_id` the
//! member added or removed, `title` the title given, `text` empty. Message
//! items have `type` `message`.
//!
//! `chats/{chat_id}`: `chat_id`, `chat_kind`, `title`, `members` (who may
//! read the chat now), `last_batch_id`, `last_batch_seq`, `last_sender_id`,
//! `last_activity`, `read` (member id → the newest message id they have
//! read: read receipts, at most one write per flush interval).
//!
//! One type for each, [`BatchDoc`] and [`SummaryDoc`], whatever the sink;
//! only how times are stored differs (`T`): Firestore timestamps
//! (`SystemTime`) or RFC 3339 text in the embedded store ([`Rfc3339`]).
//!
//! `members` lists the user ids allowed to read the chat: Firestore's rules
//! read it from the chat document, and clients list their chats with
//! `where("members", "array-contains", uid)` (`firestore.indexes.json`).
//! Documents written before it was named `members` said `participants`;
//! the Firestore sink still reads those.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use chat_events::{ChatEventType, ChatKind};

use crate::batcher::{Batch, BatchMessage, ItemEvent, Position, Progress, Summary};

/// A time stored as RFC 3339 text (the embedded store's documents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = DateTime)]
pub struct Rfc3339(#[serde(with = "time::serde::rfc3339")] pub OffsetDateTime);

impl From<OffsetDateTime> for Rfc3339 {
    fn from(t: OffsetDateTime) -> Self {
        Self(t)
    }
}

impl From<Rfc3339> for OffsetDateTime {
    fn from(t: Rfc3339) -> Self {
        t.0
    }
}

/// `chats/{chat_id}/batches/{batch_id}`. Message texts are borrowed from
/// the batch when writing (growing batches are rewritten often).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchDoc<'a, T> {
    pub id: String,
    pub chat_id: String,
    /// `direct` or `group`.
    #[serde(default = "direct")]
    pub chat_kind: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(alias = "participants")]
    pub members: Vec<String>,
    pub sender_id: String,
    pub seq: i64,
    pub messages: Vec<MessageDoc<'a, T>>,
    pub first_message_id: String,
    pub last_message_id: String,
    pub first_at: T,
    pub last_at: T,
    pub count: i64,
    pub closed: bool,
    pub expire_at: T,
    pub log_partition: i64,
    pub log_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageDoc<'a, T> {
    pub id: String,
    /// `message`, or the timeline event (`member_added`…).
    #[serde(rename = "type", default = "message_type")]
    #[schema(rename = "type")]
    pub kind: String,
    #[schema(value_type = String)]
    pub text: Cow<'a, str>,
    pub sent_at: T,
    /// The message this one answers.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// An event's member added or removed.
    #[serde(default)]
    pub user_id: Option<String>,
    /// An event's title given.
    #[serde(default)]
    pub title: Option<String>,
}

fn direct() -> String {
    ChatKind::Direct.as_str().to_owned()
}

fn message_type() -> String {
    "message".to_owned()
}

fn kind_of(name: &str) -> Result<ChatKind, String> {
    match name {
        "direct" => Ok(ChatKind::Direct),
        "group" => Ok(ChatKind::Group),
        other => Err(format!("chat_kind {other:?}")),
    }
}

/// `chats/{chat_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryDoc<T> {
    pub chat_id: String,
    #[serde(default = "direct")]
    pub chat_kind: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(alias = "participants")]
    pub members: Vec<String>,
    pub last_batch_id: String,
    pub last_batch_seq: i64,
    pub last_sender_id: String,
    pub last_activity: T,
    /// Member id → the newest message id they have read.
    #[serde(default)]
    pub read: BTreeMap<String, String>,
}

impl<T> SummaryDoc<T> {
    /// The read horizons, by member (entries that are not ids are skipped).
    pub fn read_horizons(&self) -> BTreeMap<Uuid, Uuid> {
        self.read
            .iter()
            .filter_map(|(user, message)| Some((user.parse().ok()?, message.parse().ok()?)))
            .collect()
    }
}

impl<'a, T: From<OffsetDateTime>> BatchDoc<'a, T> {
    pub fn new(batch: &'a Batch, ttl: Duration) -> Self {
        Self {
            id: batch.batch_id.to_string(),
            chat_id: batch.chat_id.to_string(),
            chat_kind: batch.chat_kind.as_str().to_owned(),
            title: batch.title.clone(),
            members: batch.members.iter().map(Uuid::to_string).collect(),
            sender_id: batch.sender_id.to_string(),
            seq: batch.seq as i64,
            messages: batch
                .messages
                .iter()
                .map(|m| MessageDoc {
                    id: m.id.to_string(),
                    kind: m
                        .event
                        .as_ref()
                        .map_or("message", |e| e.kind.timeline_name())
                        .to_owned(),
                    text: Cow::Borrowed(&m.text),
                    sent_at: m.sent_at.into(),
                    reply_to: m.reply_to.map(|r| r.to_string()),
                    user_id: m
                        .event
                        .as_ref()
                        .and_then(|e| e.user_id)
                        .map(|u| u.to_string()),
                    title: m.event.as_ref().and_then(|e| e.title.clone()),
                })
                .collect(),
            first_message_id: batch.first().id.to_string(),
            last_message_id: batch.last().id.to_string(),
            first_at: batch.first().sent_at.into(),
            last_at: batch.last().sent_at.into(),
            count: batch.count() as i64,
            closed: batch.closed,
            expire_at: expire_at(batch, ttl).into(),
            log_partition: i64::from(batch.last_position.partition),
            log_offset: batch.last_position.offset,
        }
    }
}

impl<T> BatchDoc<'_, T> {
    /// The document with its own copy of every text.
    pub fn into_owned(self) -> BatchDoc<'static, T> {
        BatchDoc {
            id: self.id,
            chat_id: self.chat_id,
            chat_kind: self.chat_kind,
            title: self.title,
            members: self.members,
            sender_id: self.sender_id,
            seq: self.seq,
            messages: self
                .messages
                .into_iter()
                .map(|m| MessageDoc {
                    id: m.id,
                    kind: m.kind,
                    text: Cow::Owned(m.text.into_owned()),
                    sent_at: m.sent_at,
                    reply_to: m.reply_to,
                    user_id: m.user_id,
                    title: m.title,
                })
                .collect(),
            first_message_id: self.first_message_id,
            last_message_id: self.last_message_id,
            first_at: self.first_at,
            last_at: self.last_at,
            count: self.count,
            closed: self.closed,
            expire_at: self.expire_at,
            log_partition: self.log_partition,
            log_offset: self.log_offset,
        }
    }
}

impl<T: Clone + Into<OffsetDateTime>> BatchDoc<'_, T> {
    /// How far along this document is ([`Progress::against`]).
    pub fn progress(&self) -> Progress {
        Progress {
            count: usize::try_from(self.count).unwrap_or(0),
            closed: self.closed,
        }
    }

    /// The batch this document stores (to continue it after a restart).
    pub fn to_batch(&self) -> Result<Batch, String> {
        let uuid = |s: &str| Uuid::parse_str(s).map_err(|e| format!("{s}: {e}"));
        let members: Vec<Uuid> = self
            .members
            .iter()
            .map(|p| uuid(p))
            .collect::<Result<_, _>>()?;
        Ok(Batch {
            chat_id: uuid(&self.chat_id)?,
            batch_id: uuid(&self.id)?,
            seq: u64::try_from(self.seq).map_err(|e| format!("seq: {e}"))?,
            chat_kind: kind_of(&self.chat_kind)?,
            title: self.title.clone(),
            members,
            sender_id: uuid(&self.sender_id)?,
            messages: self
                .messages
                .iter()
                .map(|m| {
                    let event = match m.kind.as_str() {
                        "message" => None,
                        name => Some(ItemEvent {
                            kind: ChatEventType::from_timeline_name(name)
                                .ok_or_else(|| format!("item type {name:?}"))?,
                            user_id: m.user_id.as_deref().map(uuid).transpose()?,
                            title: m.title.clone(),
                        }),
                    };
                    Ok(BatchMessage {
                        id: uuid(&m.id)?,
                        text: m.text.clone().into_owned(),
                        sent_at: m.sent_at.clone().into(),
                        reply_to: m.reply_to.as_deref().map(uuid).transpose()?,
                        event,
                    })
                })
                .collect::<Result<_, String>>()?,
            closed: self.closed,
            last_position: Position {
                partition: i32::try_from(self.log_partition)
                    .map_err(|e| format!("log_partition: {e}"))?,
                offset: self.log_offset,
            },
        })
    }
}

impl<T: From<OffsetDateTime>> SummaryDoc<T> {
    pub fn new(summary: &Summary) -> Self {
        Self {
            chat_id: summary.chat_id.to_string(),
            chat_kind: summary.chat_kind.as_str().to_owned(),
            title: summary.title.clone(),
            members: summary.members.iter().map(Uuid::to_string).collect(),
            last_batch_id: summary.last_batch_id.to_string(),
            last_batch_seq: summary.last_batch_seq as i64,
            last_sender_id: summary.last_sender_id.to_string(),
            last_activity: summary.last_activity.into(),
            read: summary
                .read
                .iter()
                .map(|(user, message)| (user.to_string(), message.to_string()))
                .collect(),
        }
    }
}

/// The batch document as JSON text (times as RFC 3339 strings).
pub fn batch_json_text(batch: &Batch, ttl: Duration) -> String {
    serde_json::to_string(&BatchDoc::<Rfc3339>::new(batch, ttl)).unwrap_or_default()
}

/// The summary document as JSON text (times as RFC 3339 strings).
pub fn summary_json_text(summary: &Summary) -> String {
    serde_json::to_string(&SummaryDoc::<Rfc3339>::new(summary)).unwrap_or_default()
}

pub fn expire_at(batch: &Batch, ttl: Duration) -> OffsetDateTime {
    batch.last().sent_at + ttl
}
