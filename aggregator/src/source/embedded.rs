//! The embedded log: chat-service's outbox table (`log` in `chat.db`),
//! read in `seq` order. The committed position lives in the realtime
//! store's `positions` table.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_events::MessageCreated;
use rusqlite::{params, OptionalExtension};
use service_kit::sqlite::{ReadError, ReadPool};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Delivery, Source, SourceError};
use crate::batcher::Position;
use crate::sink::embedded::EmbeddedSink;

pub const CHAT_DB: &str = "chat.db";
const POSITION_NAME: &str = "embedded-log";
const PAGE: i64 = 512;

/// Read-only access to chat-service's embedded database: the log, and who
/// is in a chat (for the SSE stream's access check).
#[derive(Clone)]
pub struct ChatDb {
    pool: ReadPool,
}

impl ChatDb {
    /// Opens `chat.db` in `data_dir` read-only, waiting up to `wait` for
    /// chat-service to create it.
    pub async fn open(data_dir: &Path, wait: Duration) -> anyhow::Result<Self> {
        let path = data_dir.join(CHAT_DB);
        let deadline = tokio::time::Instant::now() + wait;
        while !path.exists() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} does not exist: start chat-service on the same --data-dir",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            pool: ReadPool::open(&path, 4).await?,
        })
    }

    /// The two participants of a chat, if it exists.
    pub async fn participants(&self, chat: Uuid) -> Result<Option<[Uuid; 2]>, ReadError> {
        self.pool
            .read(move |c| {
                c.prepare_cached("SELECT user_a, user_b FROM chats WHERE id = ?1")?
                    .query_row([chat], |r| Ok([r.get(0)?, r.get(1)?]))
                    .optional()
            })
            .await
    }
}

pub struct EmbeddedSource {
    db: ChatDb,
    positions: EmbeddedSink,
    committed: i64,
    /// Highest seq delivered.
    seen: i64,
    buffer: VecDeque<(i64, Vec<u8>)>,
    poll: Duration,
    notify: Option<Arc<Notify>>,
}

impl EmbeddedSource {
    /// Starts after the committed position. `notify`, when given, wakes
    /// the source as soon as a writer in the same process appends.
    pub async fn new(
        db: ChatDb,
        positions: EmbeddedSink,
        poll: Duration,
        notify: Option<Arc<Notify>>,
    ) -> anyhow::Result<Self> {
        let committed = positions.position(POSITION_NAME).await?;
        Ok(Self {
            db,
            positions,
            committed,
            seen: committed,
            buffer: VecDeque::new(),
            poll,
            notify,
        })
    }

    async fn fill(&mut self) -> Result<(), SourceError> {
        let seen = self.seen;
        let rows = self
            .db
            .pool
            .read(move |c| {
                c.prepare_cached(
                    "SELECT seq, payload FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![seen, PAGE], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(i64, Vec<u8>)>>>()
            })
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        self.buffer.extend(rows);
        Ok(())
    }
}

#[async_trait]
impl Source for EmbeddedSource {
    async fn next(&mut self) -> Result<Delivery, SourceError> {
        while self.buffer.is_empty() {
            self.fill().await?;
            if self.buffer.is_empty() {
                match &self.notify {
                    Some(n) => {
                        let _ = tokio::time::timeout(self.poll, n.notified()).await;
                    }
                    None => tokio::time::sleep(self.poll).await,
                }
            }
        }
        let Some((seq, payload)) = self.buffer.pop_front() else {
            return Err(SourceError::Failed("empty buffer".into()));
        };
        self.seen = seq;
        let position = Position {
            partition: 0,
            offset: seq,
        };
        Ok(match MessageCreated::decode(&payload) {
            Ok(event) => Delivery::Event(event, position),
            Err(e) => Delivery::Undecodable(position, e.to_string()),
        })
    }

    async fn commit(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        let upto = uncovered.get(&0).map_or(self.seen, |low| low - 1);
        if upto > self.committed {
            self.positions
                .set_position(POSITION_NAME, upto)
                .await
                .map_err(|e| SourceError::Failed(e.to_string()))?;
            self.committed = upto;
        }
        Ok(())
    }

    async fn lag(&mut self) -> Option<i64> {
        let head: Option<i64> = self
            .db
            .pool
            .read(|c| c.query_row("SELECT MAX(seq) FROM log", [], |r| r.get(0)))
            .await
            .ok()?;
        Some(head.unwrap_or(0) - self.committed)
    }

    fn status(&self) -> std::sync::Arc<super::SourceStatus> {
        // The log is a table in a local file: there is nothing to wait for.
        std::sync::Arc::new(super::SourceStatus::ready("embedded"))
    }
}
