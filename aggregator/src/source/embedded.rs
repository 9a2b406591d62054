//! The embedded log: chat-service's outbox, read through its
//! [`OutboxReader`] in `seq` order.
//!
//! The committed position is this source's own: the next `seq` to deliver,
//! in `embedded-source.position` in the data directory (replaced atomically;
//! what a Kafka commit means too). Before this file existed the position was
//! a row of `realtime.db`; it is read from there once.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chat_events::Event;
use chat_service::outbox::{LogEntry, OutboxReader, OutboxWake};
use rusqlite::OptionalExtension;

use super::{Delivery, Source, SourceError};
use crate::batcher::Position;

pub const POSITION_FILE: &str = "embedded-source.position";
const PAGE: i64 = 512;
/// Least time between two position stores while running.
const STORE_EVERY: Duration = Duration::from_secs(1);

fn failed(e: impl std::fmt::Display) -> SourceError {
    SourceError::Failed(e.to_string())
}

/// The next `seq` to deliver after a restart, kept in one small file.
#[derive(Debug, Clone)]
pub struct PositionFile {
    path: PathBuf,
}

impl PositionFile {
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(POSITION_FILE),
        }
    }

    /// The committed position: the file's, else the one an older version
    /// kept in `realtime.db`, else 1 (the log's first `seq`).
    pub async fn load(&self) -> anyhow::Result<i64> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let legacy = path.with_file_name(crate::sink::embedded::FILE);
                Ok(legacy_position(&legacy)?.map_or(1, |done| done + 1))
            }
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        })
        .await?
    }

    /// Replaces the file with `next`: written to a temporary file, synced,
    /// then renamed over the old one (the directory is not synced: a
    /// rename lost in a power cut leaves an older position, which only
    /// means replaying entries the batcher drops as duplicates).
    pub async fn store(&self, next: i64) -> std::io::Result<()> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            writeln!(file, "{next}")?;
            file.as_file().sync_all()?;
            file.persist(&path).map(drop).map_err(|e| e.error)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// The last `seq` done, as versions before [`POSITION_FILE`] kept it.
fn legacy_position(realtime_db: &Path) -> anyhow::Result<Option<i64>> {
    if !realtime_db.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        realtime_db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'positions')",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT position FROM positions WHERE name = 'embedded-log'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

pub struct EmbeddedSource {
    outbox: OutboxReader,
    position: PositionFile,
    /// The committed next `seq`.
    committed: i64,
    /// When the position was last stored.
    last_store: Option<std::time::Instant>,
    /// Highest `seq` delivered.
    seen: i64,
    buffer: VecDeque<LogEntry>,
    poll: Duration,
    wake: Option<OutboxWake>,
}

impl EmbeddedSource {
    async fn store(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        let next = uncovered.get(&0).copied().unwrap_or(self.seen + 1);
        if next > self.committed {
            self.position.store(next).await.map_err(failed)?;
            self.committed = next;
            self.last_store = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Starts at the committed position. `wake`, when given (chat-service
    /// in the same process), ends a wait for new entries at each send;
    /// otherwise the source polls every `poll`.
    pub async fn new(
        outbox: OutboxReader,
        position: PositionFile,
        poll: Duration,
        wake: Option<OutboxWake>,
    ) -> anyhow::Result<Self> {
        let committed = position.load().await?;
        Ok(Self {
            outbox,
            position,
            committed,
            last_store: None,
            seen: committed - 1,
            buffer: VecDeque::new(),
            poll,
            wake,
        })
    }
}

#[async_trait]
impl Source for EmbeddedSource {
    async fn next(&mut self) -> Result<Delivery, SourceError> {
        while self.buffer.is_empty() {
            let page = self.outbox.after(self.seen, PAGE).await.map_err(failed)?;
            self.buffer.extend(page);
            if self.buffer.is_empty() {
                match &mut self.wake {
                    Some(wake) => wake.wait(self.poll).await,
                    None => tokio::time::sleep(self.poll).await,
                }
            }
        }
        let Some(entry) = self.buffer.pop_front() else {
            return Err(failed("empty buffer"));
        };
        self.seen = entry.seq;
        let position = Position {
            partition: 0,
            offset: entry.seq,
        };
        Ok(match Event::decode(&entry.payload) {
            Ok(event) => Delivery::Event(event, position),
            Err(e) => Delivery::Undecodable(position, e.to_string()),
        })
    }

    /// Stores the position at most once per [`STORE_EVERY`] (each store
    /// syncs a file; a position a little behind only means replaying
    /// entries the batcher drops as duplicates).
    async fn commit(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        if self.last_store.is_some_and(|t| t.elapsed() < STORE_EVERY) {
            return Ok(());
        }
        self.store(uncovered).await
    }

    /// Stores the position now.
    async fn close(&mut self, uncovered: &BTreeMap<i32, i64>) -> Result<(), SourceError> {
        self.store(uncovered).await
    }

    async fn lag(&mut self) -> Option<i64> {
        let head = self.outbox.head().await.ok()?;
        Some((head + 1 - self.committed).max(0))
    }

    fn status(&self) -> std::sync::Arc<super::SourceStatus> {
        // The log is a table in a local file: there is nothing to wait for.
        std::sync::Arc::new(super::SourceStatus::ready("embedded"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_position_is_the_files_or_else_the_one_realtime_db_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = PositionFile::in_dir(dir.path());
        assert_eq!(file.load().await.expect("load"), 1, "a new log starts at 1");

        let legacy = rusqlite::Connection::open(dir.path().join(crate::sink::embedded::FILE))
            .expect("realtime.db");
        legacy
            .execute_batch(
                "CREATE TABLE positions (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
                 INSERT INTO positions VALUES ('embedded-log', 41);",
            )
            .expect("legacy position");
        assert_eq!(
            file.load().await.expect("load"),
            42,
            "after the last seq an older version had done"
        );

        file.store(50).await.expect("store");
        assert_eq!(file.load().await.expect("load"), 50, "the file wins");
    }
}
