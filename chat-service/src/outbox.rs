//! The embedded log, as one pair: the embedded store writes it, readers in
//! any process read it through [`OutboxReader`].
//!
//! - **Write.** [`SqliteStore::open_with_outbox`] appends each change's
//!   event (`message.created`, the timeline events, `read.updated`) to the
//!   `log` table of `chat.db` in the change's own transaction, so an
//!   acknowledged change is always on the log. It hands back the [`OutboxLog`] that goes with it: the send
//!   path's [`MessageLog`], with nothing left to publish, which wakes the
//!   readers in this process ([`OutboxWake`]) after each send.
//! - **Read.** [`OutboxReader`] opens `chat.db` read-only: entries after a
//!   `seq`, in `seq` order (commit order: one writer thread appends them),
//!   the newest `seq`, and whether a user is a chat's member (who may
//!   follow its stream).
//!   Readers keep their own position; `seq` starts at 1 and never goes back.
//!
//! [`SqliteStore::open_with_outbox`]: crate::store::sqlite::SqliteStore::open_with_outbox

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chat_events::Event;
use embedded_db::ReadPool;
use rusqlite::{params, OptionalExtension};
use tokio::sync::watch;
use uuid::Uuid;

use crate::log::{LogError, MessageLog};
use crate::store::sqlite::FILE;
use crate::store::StoreError;

/// Read-only connections a reader keeps.
const READERS: u32 = 4;

/// One entry of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: i64,
    pub chat_id: Uuid,
    /// The encoded [`Event`].
    pub payload: Vec<u8>,
}

/// The send path's side of the embedded log (see the module docs).
pub struct OutboxLog {
    sends: watch::Sender<u64>,
}

impl OutboxLog {
    /// Only the embedded store makes one, paired with its outbox.
    pub(crate) fn new() -> Self {
        Self {
            sends: watch::Sender::new(0),
        }
    }

    /// A wake-up for one reader in this process.
    pub fn wake(&self) -> OutboxWake {
        OutboxWake(self.sends.subscribe())
    }
}

#[async_trait]
impl MessageLog for OutboxLog {
    async fn publish(&self, _event: &Event) -> Result<(), LogError> {
        // The store appended the event with the message: only wake readers.
        self.sends.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// Tells one reader that something was appended since it last waited.
#[derive(Debug)]
pub struct OutboxWake(watch::Receiver<u64>);

impl Clone for OutboxWake {
    /// A wake-up for another reader (each sees every send).
    fn clone(&self) -> Self {
        let mut rx = self.0.clone();
        rx.mark_unchanged();
        Self(rx)
    }
}

impl OutboxWake {
    /// Returns once a send happened since this reader's last wait (at once
    /// if one already did), or after `limit`. Never misses a send: one
    /// made between a reader's empty read and its wait ends the wait.
    pub async fn wait(&mut self, limit: Duration) {
        // A closed channel (the log is gone) waits out the limit.
        if tokio::time::timeout(limit, self.0.changed())
            .await
            .is_ok_and(|r| r.is_err())
        {
            tokio::time::sleep(limit).await;
        }
    }
}

/// Reads the outbox (and chat membership) of a `chat.db`, read-only.
#[derive(Clone)]
pub struct OutboxReader {
    pool: ReadPool,
}

impl OutboxReader {
    /// Opens `chat.db` in `data_dir`, waiting up to `wait` for chat-service
    /// to create it.
    pub async fn open(data_dir: &Path, wait: Duration) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
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
            pool: ReadPool::open(&path, READERS).await?,
        })
    }

    /// Entries with `seq > after`, in order, at most `limit`.
    pub async fn after(&self, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        Ok(self
            .pool
            .read(move |c| {
                let mut query = c.prepare_cached(
                    "SELECT seq, chat_id, payload FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = query.query_map(params![after, limit], |r| {
                    Ok(LogEntry {
                        seq: r.get(0)?,
                        chat_id: r.get(1)?,
                        payload: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await?)
    }

    /// The newest entry's `seq` (0 while the log is empty).
    pub async fn head(&self) -> Result<i64, StoreError> {
        let head: Option<i64> = self
            .pool
            .read(|c| c.query_row("SELECT MAX(seq) FROM log", [], |r| r.get(0)))
            .await?;
        Ok(head.unwrap_or(0))
    }

    /// Whether `user` is a member of `chat` now.
    pub async fn is_member(&self, chat: Uuid, user: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .pool
            .read(move |c| {
                c.prepare_cached("SELECT 1 FROM members WHERE chat_id = ?1 AND user_id = ?2")?
                    .query_row([chat, user], |_| Ok(()))
                    .optional()
            })
            .await?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let id = chat_events::TimeUuidGenerator::new().next();
        Event::Message(chat_events::MessageCreated::new(
            id.uuid(),
            Uuid::new_v4().into(),
            Uuid::new_v4().into(),
            Some(Uuid::new_v4().into()),
            "hi".into(),
            id.datetime(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn every_reader_is_woken_by_a_send_even_one_made_before_it_waits() {
        let log = OutboxLog::new();
        let mut first = log.wake();
        let mut second = first.clone();
        let limit = Duration::from_secs(60);

        // A send between a reader's empty read and its wait is not missed.
        log.publish(&event()).await.expect("publish");
        let start = tokio::time::Instant::now();
        first.wait(limit).await;
        second.wait(limit).await;
        assert!(start.elapsed() < limit, "both woken at once");

        // Without a new send, a wait lasts its limit.
        first.wait(limit).await;
        assert!(start.elapsed() >= limit);
    }
}
