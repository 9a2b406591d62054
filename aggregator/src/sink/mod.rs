//! Where batch documents go: Firestore, or the embedded realtime store.
//!
//! Both store the same document shape (see [`doc`]): Firestore as
//! `chats/{chat_id}/batches/{batch_id}` and `chats/{chat_id}`, the embedded
//! store in SQLite, served to clients over Server-Sent Events.

pub mod doc;
pub mod embedded;
#[cfg(feature = "firestore")]
pub mod firestore;

use std::collections::BTreeMap;

use async_trait::async_trait;
use uuid::Uuid;

use crate::batcher::{Batch, Write};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The stored document is newer than the write: this process's state
    /// is stale (another instance moved on). Nothing was written.
    #[error("refused a write that would go backwards for chat {0}")]
    Stale(Uuid),
    #[error("sink unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The chat's newest batch, to continue it after a restart.
    async fn newest_batch(&self, chat: Uuid) -> Result<Option<Batch>, SinkError>;

    /// The read horizons the chat's summary holds (member → message), so a
    /// restart keeps every receipt it does not rewrite.
    async fn read_horizons(&self, chat: Uuid) -> Result<BTreeMap<Uuid, Uuid>, SinkError>;

    /// Stores the write atomically, refusing to replace any stored batch
    /// with an older state of it. Returns the number of documents written
    /// (unchanged documents are not rewritten).
    async fn write(&self, write: &Write) -> Result<usize, SinkError>;

    async fn ping(&self) -> Result<(), SinkError>;

    fn backend(&self) -> &'static str;
}
