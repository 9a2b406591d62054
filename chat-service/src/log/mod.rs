//! The message log that the aggregator consumes.
//!
//! - [`OutboxLog`] (embedded): the embedded store already appended the event
//!   to its `log` table in the message's own transaction, so publishing has
//!   nothing left to do and cannot fail. The aggregator reads that table.
//! - [`kafka::KafkaLog`]: an idempotent `acks=all` producer; `publish`
//!   returns once the broker has acknowledged the event.

#[cfg(feature = "kafka")]
pub mod kafka;

use async_trait::async_trait;
use chat_events::MessageCreated;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kafka: {0}")]
    Kafka(String),
}

#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Returns when the event is durably on the log.
    async fn publish(&self, event: &MessageCreated) -> Result<(), LogError>;

    /// Whether the log answers.
    async fn ping(&self) -> Result<(), LogError>;

    fn backend(&self) -> &'static str;
}

/// The embedded log: written by the embedded store as an outbox.
pub struct OutboxLog;

#[async_trait]
impl MessageLog for OutboxLog {
    async fn publish(&self, _event: &MessageCreated) -> Result<(), LogError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
