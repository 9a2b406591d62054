//! Where events come from: Kafka, or the embedded log.

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_events::Event;

use crate::batcher::Position;

#[derive(Debug)]
pub enum Delivery {
    Event(Event, Position),
    /// A record that is not a v1 event of a known type: logged, counted and
    /// skipped (it must not block the partition forever).
    Undecodable(Position, String),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source: {0}")]
    Failed(String),
}

/// Whether a source can deliver records now, for the readiness probe.
#[derive(Debug)]
pub struct SourceStatus {
    backend: &'static str,
    /// `None` when ready, else why not.
    not_ready: Mutex<Option<String>>,
}

impl SourceStatus {
    pub fn new(backend: &'static str, not_ready: &str) -> Self {
        Self {
            backend,
            not_ready: Mutex::new(Some(not_ready.to_owned())),
        }
    }

    pub fn ready(backend: &'static str) -> Self {
        Self {
            backend,
            not_ready: Mutex::new(None),
        }
    }

    pub fn set_ready(&self, ready: bool, otherwise: &str) {
        let mut state = self.not_ready.lock().unwrap_or_else(|e| e.into_inner());
        *state = (!ready).then(|| otherwise.to_owned());
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), String> {
        match &*self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }
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

    /// Readiness, shared with the probes while the pipeline owns the source.
    fn status(&self) -> Arc<SourceStatus>;
}
