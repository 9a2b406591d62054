//! Where chats and messages live.
//!
//! One trait, two implementations that pass one shared test suite
//! (`tests/it/store_suite.rs`): [`sqlite::SqliteStore`] (embedded, the
//! default) and [`cql::CqlStore`] (Cassandra/ScyllaDB).

#[cfg(feature = "cql")]
pub mod cql;
pub mod sqlite;

use async_trait::async_trait;
use chat_events::{ChatId, MessageCreated, TimeUuid, UserId};

use crate::domain::{ClientMessageId, MessageText};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub id: UserId,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub id: ChatId,
    pub participants: [Participant; 2],
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl Chat {
    pub fn has(&self, user: UserId) -> bool {
        self.participants.iter().any(|p| p.id == user)
    }

    /// The participant who is not `user`.
    pub fn other(&self, user: UserId) -> &Participant {
        if self.participants[0].id == user {
            &self.participants[1]
        } else {
            &self.participants[0]
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSummary {
    pub chat: Chat,
    /// Milliseconds since the Unix epoch: the last message, or creation.
    pub last_activity: i64,
    pub last_message_id: Option<TimeUuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: TimeUuid,
    pub chat_id: ChatId,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub text: MessageText,
    pub client_message_id: Option<ClientMessageId>,
}

impl Message {
    pub fn event(&self) -> MessageCreated {
        MessageCreated {
            v: chat_events::event::VERSION,
            kind: chat_events::event::TYPE.to_owned(),
            id: self.id.uuid(),
            chat_id: self.chat_id,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            text: self.text.as_str().to_owned(),
            sent_at: self.id.datetime(),
            client_message_id: self
                .client_message_id
                .as_ref()
                .map(|c| c.as_str().to_owned()),
        }
    }
}

/// What [`MessageStore::insert_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now.
    New(Message),
    /// The `(chat, sender, client_message_id)` was already stored: this is
    /// the original, and nothing new was written.
    Existing(Message),
}

impl Inserted {
    pub fn message(&self) -> &Message {
        match self {
            Inserted::New(m) | Inserted::Existing(m) => m,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("cql: {0}")]
    Cql(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `chat` if it is new; returns whether it was.
    async fn create_chat(&self, chat: &Chat) -> Result<bool, StoreError>;

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError>;

    /// The user's chats, most recently active first.
    async fn chats_of(&self, user: UserId) -> Result<Vec<ChatSummary>, StoreError>;

    /// One chat of the user's, with its activity (`None`: no such chat, or
    /// the user is not in it).
    async fn chat_summary(
        &self,
        user: UserId,
        id: ChatId,
    ) -> Result<Option<ChatSummary>, StoreError>;

    /// Stores `message` (its id chosen by the caller), unless one with the
    /// same chat, sender and `client_message_id` exists: then returns that.
    /// Two concurrent inserts with one `client_message_id` store one message.
    async fn insert_message(&self, message: Message) -> Result<Inserted, StoreError>;

    /// Up to `limit` messages of the chat strictly older than `before` (or
    /// the newest, without it), newest first.
    async fn history(
        &self,
        chat: ChatId,
        before: Option<TimeUuid>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;

    fn backend(&self) -> &'static str;
}
