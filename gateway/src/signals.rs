//! Ephemeral signals: typing and presence, never stored.
//!
//! Every replica publishes the signals of the users connected to it and
//! hears every replica's (its own included): in one process over a channel
//! ([`Local`]), between replicas over a short-retention Kafka topic
//! (`crate::kafka::KafkaSignals`). A replica that dies stops sending
//! heartbeats, and the others take its users offline after three missed
//! (`--presence-heartbeat-ms`).

use async_trait::async_trait;
use chat_events::{ChatId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Most chats a presence signal names.
pub const PRESENCE_CHATS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    Typing {
        chat_id: ChatId,
        user_id: UserId,
    },
    /// `user_id` opened a first stream on `replica` (`online`) or closed the
    /// last one there; `chats` are whose members to tell.
    Presence {
        replica: Uuid,
        user_id: UserId,
        online: bool,
        chats: Vec<ChatId>,
    },
    /// Every user connected to `replica`.
    Heartbeat {
        replica: Uuid,
        users: Vec<UserId>,
    },
}

#[async_trait]
pub trait SignalBus: Send + Sync + 'static {
    /// Sends to every replica, this one too; best effort.
    async fn publish(&self, signal: Signal);
    /// Every signal published from now on, by any replica.
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
}

/// Signals within one process.
pub struct Local(broadcast::Sender<Signal>);

impl Default for Local {
    fn default() -> Self {
        Self(broadcast::Sender::new(4096))
    }
}

#[async_trait]
impl SignalBus for Local {
    async fn publish(&self, signal: Signal) {
        let _ = self.0.send(signal);
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.0.subscribe()
    }
}
