//! Where events come from: Kafka, or the embedded log.

pub mod embedded;
pub mod kafka;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chat_events::MessageCreated;

use crate::batcher::Position;

#[derive(Debug)]
pub enum Delivery {
    Event(MessageCreated, Position),
    /// A record that is not a `message.created` v1 event: logged, counted
    /// and skipped (it must not block the partition forever).
    Undecodable(Position, String),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The next record, in log order per partition. Cancel-safe.
    async fn next(&mut self) -> Result<Delivery, SourceError>;

    /// Records progress: everything delivered so far, except each
    /// partition's records from its offset in `uncovered` on (applied but
    /// not yet written), which must be delivered again after a restart.
    async fn commit(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError>;

    /// Final commit at shutdown.
    async fn close(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.commit(uncovered).await
    }

    /// Records on the log not yet committed, when known.
    async fn lag(&mut self) -> Option<i64>;
}
