//! The embedded realtime document store: SQLite (`realtime.db` in the data
//! directory) plus a change feed that Server-Sent Events streams follow.
//!
//! Every stored change gets a `version` (the SSE event id). Changes are kept
//! in a table so a client reconnecting with `Last-Event-ID` gets exactly
//! what it missed, and broadcast to live streams after each commit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use embedded_db::{GroupError, GroupWriter, Migration, ReadError, ReadPool};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::doc::{batch_json_text, summary_json_text};
use super::{Sink, SinkError};
use crate::batcher::{Batch, Compared, Progress, Write};

pub const FILE: &str = "realtime.db";

/// `migrations/`, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../../migrations/0001_realtime.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../../migrations/0002_expiry.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../../migrations/0003_batch_progress.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("../../migrations/0004_feed_size.sql"),
    },
];
/// Most changes kept for resumption (besides [`FeedRetention::max_bytes`]);
/// older `Last-Event-ID`s get a reset and a fresh snapshot.
const KEEP_CHANGES: i64 = 200_000;
/// Oldest changes deleted at once when the feed is over its bounds.
const PRUNE_STEP: i64 = 500;

/// How much of the change feed is kept for clients that resume.
#[derive(Debug, Clone, Copy)]
pub struct FeedRetention {
    /// Most bytes of documents kept in the feed.
    pub max_bytes: i64,
}
/// Live changes buffered for SSE streams; a stream that falls further behind
/// replays from the `changes` table instead.
const LIVE_CHANGES: usize = 32;
/// Most writes committed in one transaction.
const GROUP: usize = 128;

/// What happened to a batch document (the SSE event name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    /// Expired; the change's `doc` is just `id`, `chat_id` and `seq`.
    Removed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Modified => "modified",
            Self::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Added, Self::Modified, Self::Removed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl PartialEq<&str> for ChangeKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One change to a batch document.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub version: i64,
    pub chat_id: Uuid,
    pub kind: ChangeKind,
    /// The document, JSON text (shared by every stream that sends it).
    pub doc: Arc<str>,
}

impl Change {
    /// The document as a JSON value.
    pub fn doc_value(&self) -> Value {
        serde_json::from_str(&self.doc).unwrap_or_default()
    }
}

/// The writing side: writes go through one writer thread that
/// group-commits them ([`GroupWriter`]), so the pipeline's concurrent
/// writes for different chats share transactions. Readers use its
/// [`Feed`].
#[derive(Clone)]
pub struct EmbeddedSink {
    write: GroupWriter,
    feed: Feed,
    ttl: Duration,
    retention: FeedRetention,
}

/// The reading side, for the SSE streams: a chat's snapshot, its changes
/// since a version, and live changes (a read-only pool, [`ReadPool`], and
/// the broadcast the writer feeds after each commit).
#[derive(Clone)]
pub struct Feed {
    read: ReadPool,
    changes: broadcast::Sender<Change>,
}

/// A pipeline write with its JSON already encoded, so the writer thread
/// only runs SQL.
struct Prepared {
    batches: Vec<PreparedBatch>,
    summary: Option<(Uuid, String)>,
}

struct PreparedBatch {
    chat_id: Uuid,
    seq: i64,
    progress: Progress,
    state: String,
    doc: Arc<str>,
    expire_at: i64,
}

impl PreparedBatch {
    fn new(batch: &Batch, ttl: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            chat_id: batch.chat_id,
            seq: batch.seq as i64,
            progress: Progress::of(batch),
            state: serde_json::to_string(batch).map_err(unavailable)?,
            doc: batch_json_text(batch, ttl).into(),
            expire_at: super::doc::expire_at(batch, ttl).unix_timestamp(),
        })
    }
}

struct Done {
    changes: Vec<Change>,
    documents: usize,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

impl From<GroupError> for SinkError {
    fn from(e: GroupError) -> Self {
        unavailable(e)
    }
}

impl From<rusqlite::Error> for SinkError {
    fn from(e: rusqlite::Error) -> Self {
        unavailable(e)
    }
}

impl From<ReadError> for SinkError {
    fn from(e: ReadError) -> Self {
        unavailable(e)
    }
}

impl EmbeddedSink {
    pub async fn open(
        data_dir: &Path,
        ttl: Duration,
        retention: FeedRetention,
        wal: embedded_db::WalLimit,
    ) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
        embedded_db::migrate(&path, MIGRATIONS).await?;
        let write = GroupWriter::spawn("realtime.db", &path, GROUP, wal)?;
        let read = ReadPool::open(&path, 4).await?;
        let (changes, _) = broadcast::channel(LIVE_CHANGES);
        Ok(Self {
            write,
            feed: Feed { read, changes },
            ttl,
            retention,
        })
    }

    /// What the SSE streams read.
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Runs `job` on the writer; then tells live streams what changed.
    async fn commit<F>(&self, job: F) -> Result<usize, SinkError>
    where
        F: FnOnce(&Connection) -> Result<Done, SinkError> + Send + 'static,
    {
        let done = self.write.write(job).await?;
        for change in done.changes {
            // No subscribers is fine.
            let _ = self.feed.changes.send(change);
        }
        Ok(done.documents)
    }

    /// Deletes the batch documents whose `expire_at` has passed, recording a
    /// `removed` change for each (the embedded counterpart of Firestore's
    /// TTL policy). Returns how many were removed.
    pub async fn expire(&self, now: time::OffsetDateTime) -> Result<usize, SinkError> {
        let now = now.unix_timestamp();
        let retention = self.retention;
        self.commit(move |conn| {
            let done = expire(conn, now)?;
            prune_feed(conn, retention)?;
            Ok(done)
        })
        .await
    }

    /// Runs [`EmbeddedSink::expire`] every `every` until the task is aborted.
    pub fn spawn_expiry(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match store.expire(time::OffsetDateTime::now_utc()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired batch documents"),
                    Err(e) => tracing::warn!(error = %e, "expiring batch documents"),
                }
            }
        })
    }

    /// Nothing to do: the writer thread ends once the queued writes are
    /// committed and every clone of this store is gone.
    pub async fn close(&self) {}
}

impl Feed {
    /// Live changes from now on (all chats).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn read<T, F>(&self, query: F) -> Result<T, SinkError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Ok(self.read.read(query).await?)
    }

    /// [`Feed::read`] for a scan (many rows): on a blocking thread.
    async fn scan<T, F>(&self, query: F) -> Result<T, SinkError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Ok(self.read.scan(query).await?)
    }

    /// The chat's newest `limit` batch documents in `seq` order, and the
    /// newest change version they reflect.
    pub async fn snapshot(&self, chat: Uuid, limit: i64) -> Result<(Vec<Value>, i64), SinkError> {
        let (rows, latest) = self
            .scan(move |c| {
                let mut query = c.prepare_cached(
                    "SELECT doc, version FROM (SELECT doc, version, seq FROM batches WHERE chat_id = ?1 \
                     ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
                )?;
                let rows = query
                    .query_map(params![chat, limit], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let latest: Option<i64> = c
                    .prepare_cached("SELECT MAX(version) FROM changes")?
                    .query_row([], |r| r.get(0))?;
                Ok((rows, latest))
            })
            .await?;
        let mut docs = Vec::with_capacity(rows.len());
        let mut newest = 0;
        for (doc, version) in rows {
            newest = newest.max(version);
            docs.push(serde_json::from_str(&doc).map_err(unavailable)?);
        }
        Ok((docs, latest.unwrap_or(0).max(newest)))
    }

    /// Where a snapshot of the chat's newest `limit` batches starts (the
    /// `seq` of its oldest; `None` for a chat with none), and the feed's
    /// version it shows at least. Read it with [`Feed::batches_from`], a
    /// page at a time: a document read later may be newer, never older.
    pub async fn snapshot_start(
        &self,
        chat: Uuid,
        limit: i64,
    ) -> Result<(Option<i64>, i64), SinkError> {
        self.scan(move |c| {
            let latest: Option<i64> = c
                .prepare_cached("SELECT MAX(version) FROM changes")?
                .query_row([], |r| r.get(0))?;
            let start: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(seq) FROM (SELECT seq FROM batches WHERE chat_id = ?1 \
                     ORDER BY seq DESC LIMIT ?2)",
                )?
                .query_row(params![chat, limit], |r| r.get(0))?;
            Ok((start, latest.unwrap_or(0)))
        })
        .await
    }

    /// Up to `page` of the chat's batch documents from `seq` on, oldest
    /// first: each `seq` and document (JSON text).
    pub async fn batches_from(
        &self,
        chat: Uuid,
        seq: i64,
        page: i64,
    ) -> Result<Vec<(i64, String)>, SinkError> {
        self.scan(move |c| {
            c.prepare_cached(
                "SELECT seq, doc FROM batches WHERE chat_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![chat, seq, page], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
        .await
    }

    /// Up to `limit` of the chat's changes after `version`, oldest first;
    /// or that changes that old are no longer kept, or that `version` is
    /// newer than any change (a cursor this feed never gave out).
    pub async fn changes_since(
        &self,
        chat: Uuid,
        version: i64,
        limit: i64,
    ) -> Result<Resume, SinkError> {
        let found = self
            .scan(move |c| {
                let (oldest, newest): (Option<i64>, Option<i64>) = c
                    .prepare_cached("SELECT MIN(version), MAX(version) FROM changes")?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                if version > newest.unwrap_or(0) {
                    return Ok(Err(Resume::Ahead));
                }
                if version < 0 || oldest.is_some_and(|o| o > version.saturating_add(1)) {
                    return Ok(Err(Resume::TooOld));
                }
                let mut query = c.prepare_cached(
                    "SELECT version, kind, doc FROM changes WHERE chat_id = ?1 AND version > ?2 \
                     ORDER BY version LIMIT ?3",
                )?;
                let rows = query
                    .query_map(params![chat, version, limit], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Ok(rows))
            })
            .await?;
        let rows = match found {
            Ok(rows) => rows,
            Err(other) => return Ok(other),
        };
        let changes = rows
            .into_iter()
            .map(|(version, kind, doc)| Change {
                version,
                chat_id: chat,
                kind: ChangeKind::parse(&kind).unwrap_or(ChangeKind::Modified),
                doc: doc.into(),
            })
            .collect();
        Ok(Resume::Changes(changes))
    }
}

/// What [`Feed::changes_since`] found for a cursor.
#[derive(Debug)]
pub enum Resume {
    /// Everything after it, oldest first (maybe nothing).
    Changes(Vec<Change>),
    /// Older than the oldest change kept.
    TooOld,
    /// Newer than the newest change.
    Ahead,
}

impl Resume {
    /// The changes, when the cursor could be honoured.
    pub fn changes(self) -> Option<Vec<Change>> {
        match self {
            Self::Changes(c) => Some(c),
            Self::TooOld | Self::Ahead => None,
        }
    }
}

fn record_change(
    conn: &Connection,
    chat: Uuid,
    kind: ChangeKind,
    doc: &str,
) -> rusqlite::Result<i64> {
    let version = conn
        .prepare_cached(
            "INSERT INTO changes (chat_id, kind, doc, bytes) VALUES (?1, ?2, ?3, ?4) \
             RETURNING version",
        )?
        .query_row(params![chat, kind.as_str(), doc, doc.len()], |r| r.get(0))?;
    conn.prepare_cached("UPDATE feed_size SET rows = rows + 1, bytes = bytes + ?1 WHERE id = 1")?
        .execute([doc.len()])?;
    Ok(version)
}

/// Deletes the oldest changes once the feed holds more than
/// `retention.max_bytes` of documents or [`KEEP_CHANGES`] changes, down to
/// nine tenths of the bound (so pruning is not paid on every write), always
/// keeping the newest change (the feed's position).
fn prune_feed(conn: &Connection, retention: FeedRetention) -> rusqlite::Result<()> {
    let (rows, bytes): (i64, i64) = conn
        .prepare_cached("SELECT rows, bytes FROM feed_size WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if rows <= KEEP_CHANGES && bytes <= retention.max_bytes {
        return Ok(());
    }
    let (rows_over, bytes_over) = (
        rows - KEEP_CHANGES * 9 / 10,
        bytes - retention.max_bytes * 9 / 10,
    );
    let (mut cut, mut freed_rows, mut freed_bytes) = (None, 0i64, 0i64);
    while freed_rows < rows - 1 && (freed_rows < rows_over || freed_bytes < bytes_over) {
        let after = cut.unwrap_or(i64::MIN);
        let oldest: Vec<(i64, i64)> = conn
            .prepare_cached(
                "SELECT version, bytes FROM changes WHERE version > ?1 ORDER BY version LIMIT ?2",
            )?
            .query_map([after, PRUNE_STEP], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if oldest.is_empty() {
            break;
        }
        for (version, size) in oldest {
            if freed_rows >= rows - 1 || (freed_rows >= rows_over && freed_bytes >= bytes_over) {
                break;
            }
            cut = Some(version);
            freed_rows += 1;
            freed_bytes += size;
        }
    }
    let Some(cut) = cut else { return Ok(()) };
    conn.prepare_cached("DELETE FROM changes WHERE version <= ?1")?
        .execute([cut])?;
    conn.prepare_cached("UPDATE feed_size SET rows = rows - ?1, bytes = bytes - ?2 WHERE id = 1")?
        .execute([freed_rows, freed_bytes])?;
    Ok(())
}

/// One pipeline write, atomically (it runs inside its own savepoint).
fn store_write(conn: &Connection, w: Prepared) -> Result<Done, SinkError> {
    let mut changes = Vec::new();
    for batch in w.batches {
        let stored: Option<(Option<usize>, Option<bool>, String)> = conn
            .prepare_cached(
                "SELECT count, closed, state FROM batches WHERE chat_id = ?1 AND seq = ?2",
            )?
            .query_row(params![batch.chat_id, batch.seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let exists = stored.is_some();
        if let Some((count, closed, state)) = stored {
            let stored = match (count, closed) {
                (Some(count), Some(closed)) => Progress { count, closed },
                _ => {
                    // Written before the progress columns existed.
                    let old: Batch = serde_json::from_str(&state).map_err(unavailable)?;
                    Progress::of(&old)
                }
            };
            match batch.progress.against(stored) {
                Compared::Same => continue,
                Compared::Ahead => {}
                Compared::Behind => return Err(SinkError::Stale(batch.chat_id)),
            }
        }
        let kind = if exists {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        let version = record_change(conn, batch.chat_id, kind, &batch.doc)?;
        conn.prepare_cached(
            "INSERT INTO batches (chat_id, seq, state, doc, version, expire_at, count, closed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (chat_id, seq) DO UPDATE SET state = excluded.state, doc = excluded.doc, \
             version = excluded.version, expire_at = excluded.expire_at, count = excluded.count, \
             closed = excluded.closed",
        )?
        .execute(params![
            batch.chat_id,
            batch.seq,
            batch.state,
            &*batch.doc,
            version,
            batch.expire_at,
            batch.progress.count,
            batch.progress.closed
        ])?;
        changes.push(Change {
            version,
            chat_id: batch.chat_id,
            kind,
            doc: batch.doc,
        });
    }
    let mut documents = changes.len();
    if let Some((chat_id, doc)) = &w.summary {
        conn.prepare_cached(
            "INSERT INTO summaries (chat_id, doc) VALUES (?1, ?2) \
             ON CONFLICT (chat_id) DO UPDATE SET doc = excluded.doc",
        )?
        .execute(params![chat_id, doc])?;
        documents += 1;
    }
    Ok(Done { changes, documents })
}

fn expire(conn: &Connection, now: i64) -> Result<Done, SinkError> {
    let expired = conn
        .prepare_cached(
            "DELETE FROM batches WHERE expire_at > 0 AND expire_at <= ?1 RETURNING chat_id, seq, state",
        )?
        .query_map([now], |r| Ok((r.get::<_, Uuid>(0)?, r.get::<_, String>(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut changes = Vec::with_capacity(expired.len());
    for (chat_id, state) in expired {
        let batch: Batch = serde_json::from_str(&state).map_err(unavailable)?;
        let doc = serde_json::json!({ "id": batch.batch_id, "chat_id": chat_id, "seq": batch.seq })
            .to_string();
        let version = record_change(conn, chat_id, ChangeKind::Removed, &doc)?;
        changes.push(Change {
            version,
            chat_id,
            kind: ChangeKind::Removed,
            doc: doc.into(),
        });
    }
    let documents = changes.len();
    Ok(Done { changes, documents })
}

#[async_trait]
impl Sink for EmbeddedSink {
    async fn newest_batch(&self, chat: Uuid) -> Result<Option<Batch>, SinkError> {
        let state: Option<String> = self
            .feed
            .read(move |c| {
                c.prepare_cached(
                    "SELECT state FROM batches WHERE chat_id = ?1 ORDER BY seq DESC LIMIT 1",
                )?
                .query_row([chat], |r| r.get(0))
                .optional()
            })
            .await?;
        state
            .map(|s| serde_json::from_str(&s).map_err(unavailable))
            .transpose()
    }

    async fn read_horizons(
        &self,
        chat: Uuid,
    ) -> Result<std::collections::BTreeMap<Uuid, Uuid>, SinkError> {
        let doc: Option<String> = self
            .feed
            .read(move |c| {
                c.prepare_cached("SELECT doc FROM summaries WHERE chat_id = ?1")?
                    .query_row([chat], |r| r.get(0))
                    .optional()
            })
            .await?;
        Ok(doc
            .map(|d| serde_json::from_str::<super::doc::SummaryDoc<super::doc::Rfc3339>>(&d))
            .transpose()
            .map_err(unavailable)?
            .map(|s| s.read_horizons())
            .unwrap_or_default())
    }

    async fn write(&self, w: &Write) -> Result<usize, SinkError> {
        let batch = w.batch_changed.then_some(&w.batch);
        let prepared = Prepared {
            batches: w
                .closing
                .iter()
                .chain(batch)
                .map(|b| PreparedBatch::new(b, self.ttl))
                .collect::<Result<_, _>>()?,
            summary: w
                .summary
                .as_ref()
                .map(|s| (s.chat_id, summary_json_text(s))),
        };
        let retention = self.retention;
        self.commit(move |conn| {
            let done = store_write(conn, prepared)?;
            if !done.changes.is_empty() {
                prune_feed(conn, retention)?;
            }
            Ok(done)
        })
        .await
    }

    async fn ping(&self) -> Result<(), SinkError> {
        self.feed
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        if self.write.is_stopped() {
            return Err(unavailable("the realtime.db writer has stopped"));
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
