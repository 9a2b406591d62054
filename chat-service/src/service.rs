//! The chat rules the handlers call ([`ChatService`]), and the send path
//! ([`Sender`]).
//!
//! Sends in one chat are serialised inside this process (a striped lock on
//! the chat id, held from choosing the id to the log's acknowledgement), so
//! each chat's messages reach the log in id order. Then:
//! 1. the store write, which also resolves a repeated `client_message_id` to
//!    the original message;
//! 2. the publish, for a new message and also for a repeat, so a send whose
//!    publish failed (503) is completed by its retry instead of being stored
//!    twice. Consumers drop the duplicate event by message id.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chat_events::{ChatId, TimeUuidGenerator, UserId};

use auth_validator::AuthUser;
use chat_events::TimeUuid;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::{ClientMessageId, MessageText, Quantity};
use crate::error::{Error, Result};
use crate::log::MessageLog;
use crate::store::{Chat, ChatSummary, Inserted, Message, MessageStore, Participant};
use crate::users::UserDirectory;

const STRIPES: usize = 1024;

pub struct Sender {
    store: Arc<dyn MessageStore>,
    log: Arc<dyn MessageLog>,
    ids: TimeUuidGenerator,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Sender {
    pub fn new(store: Arc<dyn MessageStore>, log: Arc<dyn MessageLog>) -> Self {
        Self {
            store,
            log,
            ids: TimeUuidGenerator::new(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    pub async fn send(
        &self,
        chat: &Chat,
        sender: UserId,
        text: MessageText,
        client_message_id: Option<ClientMessageId>,
    ) -> Result<Inserted> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        chat.id.hash(&mut hasher);
        let _turn = self.stripes[(hasher.finish() as usize) % STRIPES]
            .lock()
            .await;
        let message = Message {
            id: self.ids.next(),
            chat_id: chat.id,
            sender_id: sender,
            recipient_id: chat.other(sender).id,
            text,
            client_message_id,
        };
        let inserted = self.store.insert_message(message).await?;
        self.log.publish(&inserted.message().event()).await?;
        let outcome = match inserted {
            Inserted::New(_) => "new",
            Inserted::Existing(_) => "repeat",
        };
        metrics::counter!("chat_messages_sent_total", "outcome" => outcome).increment(1);
        Ok(inserted)
    }
}

/// Chats kept in [`ChatService`]'s cache (about 200 bytes each).
pub const CACHED_CHATS: usize = 100_000;

/// What the HTTP handlers call: starting and listing chats, sending, and
/// history, each for an authenticated caller, over the store, the log and
/// the user directory. Handlers only parse requests and shape responses.
pub struct ChatService {
    store: Arc<dyn MessageStore>,
    sender: Sender,
    users: Arc<dyn UserDirectory>,
    send_limiter: DefaultKeyedRateLimiter<UserId>,
    /// Chats by id, as read from the store. A chat never changes once
    /// created (participants and their names at creation), so entries never
    /// go stale; only chats that exist are kept.
    chats: quick_cache::sync::Cache<ChatId, Chat>,
}

impl ChatService {
    /// `send_quota`: how fast one user may send.
    pub fn new(
        store: Arc<dyn MessageStore>,
        log: Arc<dyn MessageLog>,
        users: Arc<dyn UserDirectory>,
        send_quota: Quota,
    ) -> Self {
        Self {
            sender: Sender::new(store.clone(), log),
            store,
            users,
            send_limiter: RateLimiter::keyed(send_quota),
            chats: quick_cache::sync::Cache::new(CACHED_CHATS),
        }
    }

    /// Starts the chat between the caller and `other`, or finds it;
    /// `true` when it is new. Returns what is stored, so both members see
    /// the same record.
    pub async fn start_chat(
        &self,
        caller: &AuthUser,
        other: UserId,
    ) -> Result<(bool, ChatSummary)> {
        let caller_id = UserId::from(caller.id);
        if other == caller_id {
            return Err(Error::Unprocessable(
                "self_chat",
                "you cannot start a chat with yourself".into(),
            ));
        }
        let token = caller.token.as_str();
        let other_name = self
            .users
            .username(other, token)
            .await?
            .ok_or_else(|| Error::Unprocessable("unknown_user", "no such user".into()))?;
        let caller_name = match caller.claims.name.clone() {
            Some(name) => name,
            None => self
                .users
                .username(caller_id, token)
                .await?
                .unwrap_or_default(),
        };
        let chat = Chat {
            id: chat_events::chat_id(caller_id, other),
            participants: [
                Participant {
                    id: caller_id,
                    username: caller_name,
                },
                Participant {
                    id: other,
                    username: other_name,
                },
            ],
            created_at: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        };
        let created = self.store.create_chat(&chat).await?;
        let summary = self
            .store
            .chat_summary(caller_id, chat.id)
            .await?
            .unwrap_or(ChatSummary {
                last_activity: chat.created_at,
                last_message_id: None,
                chat,
            });
        Ok((created, summary))
    }

    /// The caller's chats, most recently active first.
    pub async fn chats_of(&self, caller: UserId) -> Result<Vec<ChatSummary>> {
        Ok(self.store.chats_of(caller).await?)
    }

    /// The chat `raw_id` if the caller is a member; otherwise (or if it is
    /// not a chat id at all) "not found", never "forbidden".
    pub async fn chat_for(&self, raw_id: &str, caller: UserId) -> Result<Chat> {
        let id: ChatId = raw_id.parse().map_err(|_| Error::ChatNotFound)?;
        let chat = match self.chats.get(&id) {
            Some(chat) => Some(chat),
            None => {
                let stored = self.store.chat(id).await?;
                if let Some(chat) = &stored {
                    self.chats.insert(id, chat.clone());
                }
                stored
            }
        };
        match chat {
            Some(chat) if chat.has(caller) => Ok(chat),
            _ => Err(Error::ChatNotFound),
        }
    }

    /// Sends in chat `raw_id`, within the caller's rate.
    pub async fn send(
        &self,
        raw_id: &str,
        caller: UserId,
        text: MessageText,
        client_message_id: Option<ClientMessageId>,
    ) -> Result<Inserted> {
        let chat = self.chat_for(raw_id, caller).await?;
        if let Err(not_until) = self.send_limiter.check_key(&caller) {
            return Err(Error::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        self.sender
            .send(&chat, caller, text, client_message_id)
            .await
    }

    /// Up to `quantity` messages of chat `raw_id` older than `before` (the
    /// newest without it), newest first, and whether older ones remain.
    pub async fn history(
        &self,
        raw_id: &str,
        caller: UserId,
        before: Option<TimeUuid>,
        quantity: Quantity,
    ) -> Result<(Vec<Message>, bool)> {
        let chat = self.chat_for(raw_id, caller).await?;
        let quantity = quantity.get();
        let mut messages = self.store.history(chat.id, before, quantity + 1).await?;
        let has_more = messages.len() > quantity;
        messages.truncate(quantity);
        Ok((messages, has_more))
    }

    /// Forgets idle users' rate-limit state, so memory is bounded by
    /// recently active senders.
    pub fn forget_idle_senders(&self) {
        self.send_limiter.retain_recent();
    }
}
