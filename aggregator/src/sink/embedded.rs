//! The embedded realtime document store: SQLite (`realtime.db` in the data
//! directory) plus a change feed that Server-Sent Events streams follow.
//!
//! Every stored change gets a `version` (the SSE event id). Changes are kept
//! in a table so a client reconnecting with `Last-Event-ID` gets exactly
//! what it missed, and broadcast to live streams after each commit.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::doc::{batch_json, summary_json};
use super::{Sink, SinkError};
use crate::batcher::{Batch, Write};

pub const FILE: &str = "realtime.db";
/// Changes kept for resumption; older `Last-Event-ID`s get a fresh snapshot.
const KEEP_CHANGES: i64 = 200_000;

/// One change to a batch document.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub version: i64,
    pub chat_id: Uuid,
    /// `added`, `modified` or `removed` (then `doc` is just `id`,
    /// `chat_id` and `seq`).
    pub kind: String,
    pub doc: Value,
}

#[derive(Clone)]
pub struct EmbeddedSink {
    write: SqlitePool,
    read: SqlitePool,
    changes: broadcast::Sender<Change>,
    ttl: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

impl EmbeddedSink {
    pub async fn open(data_dir: &Path, ttl: Duration) -> anyhow::Result<Self> {
        let service_kit::sqlite::Pools { write, read } =
            service_kit::sqlite::open(&data_dir.join(FILE), &sqlx::migrate!("./migrations"), 4)
                .await?;
        let (changes, _) = broadcast::channel(4096);
        Ok(Self {
            write,
            read,
            changes,
            ttl,
        })
    }

    /// Live changes from now on (all chats).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The chat's newest `limit` batch documents in `seq` order, and the
    /// newest change version they reflect.
    pub async fn snapshot(&self, chat: Uuid, limit: i64) -> Result<(Vec<Value>, i64), SinkError> {
        let rows = sqlx::query(
            "SELECT doc, version FROM (SELECT doc, version, seq FROM batches WHERE chat_id = ?1 \
             ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
        )
        .bind(chat)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(unavailable)?;
        let mut docs = Vec::with_capacity(rows.len());
        let mut newest = 0;
        for row in rows {
            let doc: String = row.get("doc");
            newest = newest.max(row.get::<i64, _>("version"));
            docs.push(serde_json::from_str(&doc).map_err(unavailable)?);
        }
        let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM changes")
            .fetch_one(&self.read)
            .await
            .map_err(unavailable)?;
        Ok((docs, latest.unwrap_or(0).max(newest)))
    }

    /// The chat's changes after `version`, oldest first, or `None` when
    /// changes that old are no longer kept.
    pub async fn changes_since(
        &self,
        chat: Uuid,
        version: i64,
    ) -> Result<Option<Vec<Change>>, SinkError> {
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(version) FROM changes")
            .fetch_one(&self.read)
            .await
            .map_err(unavailable)?;
        if oldest.is_some_and(|o| o > version + 1) {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT version, kind, doc FROM changes WHERE chat_id = ?1 AND version > ?2 ORDER BY version",
        )
        .bind(chat)
        .bind(version)
        .fetch_all(&self.read)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|row| {
                let doc: String = row.get("doc");
                Ok(Change {
                    version: row.get("version"),
                    chat_id: chat,
                    kind: row.get("kind"),
                    doc: serde_json::from_str(&doc).map_err(unavailable)?,
                })
            })
            .collect::<Result<Vec<_>, SinkError>>()
            .map(Some)
    }

    /// The committed position of the embedded source `name`.
    pub async fn position(&self, name: &str) -> Result<i64, SinkError> {
        let p: Option<i64> = sqlx::query_scalar("SELECT position FROM positions WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.write)
            .await
            .map_err(unavailable)?;
        Ok(p.unwrap_or(0))
    }

    pub async fn set_position(&self, name: &str, position: i64) -> Result<(), SinkError> {
        sqlx::query(
            "INSERT INTO positions (name, position) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET position = MAX(position, excluded.position)",
        )
        .bind(name)
        .bind(position)
        .execute(&self.write)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes the batch documents whose `expire_at` has passed, recording a
    /// `removed` change for each (the embedded counterpart of Firestore's
    /// TTL policy). Returns how many were removed.
    pub async fn expire(&self, now: time::OffsetDateTime) -> Result<usize, SinkError> {
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        let rows = sqlx::query(
            "DELETE FROM batches WHERE expire_at > 0 AND expire_at <= ?1 RETURNING chat_id, seq, state",
        )
        .bind(now.unix_timestamp())
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let chat_id: Uuid = row.get("chat_id");
            let state: String = row.get("state");
            let batch: Batch = serde_json::from_str(&state).map_err(unavailable)?;
            let doc =
                serde_json::json!({ "id": batch.batch_id, "chat_id": chat_id, "seq": batch.seq });
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO changes (chat_id, kind, doc) VALUES (?1, 'removed', ?2) RETURNING version",
            )
            .bind(chat_id)
            .bind(doc.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            changes.push(Change {
                version,
                chat_id,
                kind: "removed".into(),
                doc,
            });
        }
        tx.commit().await.map_err(unavailable)?;
        let removed = changes.len();
        for change in changes {
            let _ = self.changes.send(change);
        }
        Ok(removed)
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

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

#[async_trait]
impl Sink for EmbeddedSink {
    async fn newest_batch(&self, chat: Uuid) -> Result<Option<Batch>, SinkError> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM batches WHERE chat_id = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(chat)
        .fetch_optional(&self.write)
        .await
        .map_err(unavailable)?;
        state
            .map(|s| serde_json::from_str(&s).map_err(unavailable))
            .transpose()
    }

    async fn write(&self, w: &Write) -> Result<usize, SinkError> {
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        let mut changes = Vec::new();
        for batch in w.closing.iter().chain(std::iter::once(&w.batch)) {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT state FROM batches WHERE chat_id = ?1 AND seq = ?2")
                    .bind(batch.chat_id)
                    .bind(batch.seq as i64)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            let stored: Option<Batch> = stored
                .map(|s| serde_json::from_str(&s).map_err(unavailable))
                .transpose()?;
            match &stored {
                Some(old) if old == batch => continue,
                Some(old) if !batch.is_not_older_than(old) => {
                    return Err(SinkError::Stale(batch.chat_id))
                }
                _ => {}
            }
            let doc = batch_json(batch, self.ttl);
            let kind = if stored.is_some() {
                "modified"
            } else {
                "added"
            };
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO changes (chat_id, kind, doc) VALUES (?1, ?2, ?3) RETURNING version",
            )
            .bind(batch.chat_id)
            .bind(kind)
            .bind(doc.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO batches (chat_id, seq, state, doc, version, expire_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (chat_id, seq) DO UPDATE SET state = excluded.state, doc = excluded.doc, \
                 version = excluded.version, expire_at = excluded.expire_at",
            )
            .bind(batch.chat_id)
            .bind(batch.seq as i64)
            .bind(serde_json::to_string(batch).map_err(unavailable)?)
            .bind(doc.to_string())
            .bind(version)
            .bind(super::doc::expire_at(batch, self.ttl).unix_timestamp())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            changes.push(Change {
                version,
                chat_id: batch.chat_id,
                kind: kind.to_owned(),
                doc,
            });
        }
        let mut documents = changes.len();
        if let Some(summary) = &w.summary {
            sqlx::query(
                "INSERT INTO summaries (chat_id, doc) VALUES (?1, ?2) \
                 ON CONFLICT (chat_id) DO UPDATE SET doc = excluded.doc",
            )
            .bind(summary.chat_id)
            .bind(summary_json(summary).to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            documents += 1;
        }
        if let Some(last) = changes.last() {
            if last.version % 1000 == 0 {
                sqlx::query("DELETE FROM changes WHERE version < ?1")
                    .bind(last.version - KEEP_CHANGES)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)?;
        for change in changes {
            // No subscribers is fine.
            let _ = self.changes.send(change);
        }
        Ok(documents)
    }

    async fn ping(&self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
