//! The message log that the aggregator consumes.
//!
//! - [`crate::outbox::OutboxLog`] (embedded): the embedded store already
//!   appended the event to its outbox in the message's own transaction, so
//!   publishing only wakes the readers in this process and cannot fail.
//!   The aggregator reads the outbox through [`crate::outbox::OutboxReader`].
//! - [`kafka::KafkaLog`]: an idempotent `acks=all` producer; `publish`
//!   returns once the broker has acknowledged the event.

#[cfg(feature = "kafka")]
pub mod kafka;

use async_trait::async_trait;
use chat_events::Event;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kafka: {0}")]
    Kafka(String),
}

#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Returns when the event is durably on the log.
    async fn publish(&self, event: &Event) -> Result<(), LogError>;

    /// Whether the log answers.
    async fn ping(&self) -> Result<(), LogError>;

    fn backend(&self) -> &'static str;
}
