//! What chat-service and the aggregator agree on.
//!
//! - [`timeuuid`]: version-1 TimeUUID message ids (Cassandra's `timeuuid`),
//!   unique across processes and monotonic within one;
//! - [`ChatId`], [`UserId`]: typed ids;
//! - [`chat_id`]: the chat id derived from the pair of participants;
//! - [`event`]: the events on the log (Kafka or embedded): messages,
//!   timeline events and read horizons, their JSON form and their decoding;
//! - [`KafkaTopic`]: where that event lives on Kafka, one settings group for
//!   chat-service (which produces it) and the aggregator (which consumes it).

pub mod event;
pub mod ids;
pub mod timeuuid;

pub use event::{
    ChatEvent, ChatEventType, ChatKind, Event, EventError, MessageCreated, ReadUpdated,
};
pub use ids::{ChatId, UserId};
pub use timeuuid::{TimeUuid, TimeUuidGenerator};

use uuid::Uuid;

/// Where the chat events live on Kafka.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaTopic {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic of the chat events (`message.created`, timeline events,
    /// `read.updated`); chat-service creates it when missing.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "chat.messages")]
    pub kafka_topic: String,
}

/// Namespace of chat ids (UUIDv5). Never change it: ids would change.
const CHAT_NAMESPACE: Uuid = Uuid::from_u128(0x3c1e_62a4_8f0b_4d5e_9a47_1b2f_6c0d_e915);

/// The chat between `a` and `b`: the same whichever of them asks.
pub fn chat_id(a: UserId, b: UserId) -> ChatId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(lo.uuid().as_bytes());
    name[16..].copy_from_slice(hi.uuid().as_bytes());
    ChatId::from_uuid(Uuid::new_v5(&CHAT_NAMESPACE, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_ignore_the_order_of_participants() {
        let [a, b, c] = [(); 3].map(|_| UserId::from(Uuid::new_v4()));
        assert_eq!(chat_id(a, b), chat_id(b, a));
        assert_ne!(chat_id(a, b), chat_id(a, c));
        assert_eq!(chat_id(a, b).uuid().get_version_num(), 5);
    }
}
