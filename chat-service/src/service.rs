//! The send path.
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

use chat_events::TimeUuidGenerator;
use uuid::Uuid;

use crate::error::Result;
use crate::log::MessageLog;
use crate::store::{Chat, Inserted, Message, MessageStore};

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
        sender: Uuid,
        text: String,
        client_message_id: Option<String>,
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
