//! Firestore through the `firestore` crate (works with the emulator when
//! `FIRESTORE_EMULATOR_HOST` is set).
//!
//! Each write is one Firestore transaction: it reads the batch documents it
//! is about to replace and refuses (as [`SinkError::Stale`]) if any stored
//! one is further along than ours, so an older state never overwrites a
//! newer one; unchanged documents are not rewritten.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use firestore::FirestoreDb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::doc::expire_at;
use super::{Sink, SinkError};
use crate::batcher::{Batch, BatchMessage, Compared, Position, Progress, Write};

pub const CHATS: &str = "chats";
pub const BATCHES: &str = "batches";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FsMessage {
    pub id: String,
    pub text: String,
    pub sent_at: SystemTime,
}

/// `chats/{chat_id}/batches/{batch_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FsBatch {
    pub id: String,
    pub chat_id: String,
    #[serde(alias = "participants")]
    pub members: Vec<String>,
    pub sender_id: String,
    pub seq: i64,
    pub messages: Vec<FsMessage>,
    pub first_message_id: String,
    pub last_message_id: String,
    pub first_at: SystemTime,
    pub last_at: SystemTime,
    pub count: i64,
    pub closed: bool,
    pub expire_at: SystemTime,
    pub log_partition: i64,
    pub log_offset: i64,
}

/// `chats/{chat_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FsSummary {
    pub chat_id: String,
    #[serde(alias = "participants")]
    pub members: Vec<String>,
    pub last_batch_id: String,
    pub last_batch_seq: i64,
    pub last_sender_id: String,
    pub last_activity: SystemTime,
}

impl FsBatch {
    pub fn from_batch(b: &Batch, ttl: Duration) -> Self {
        Self {
            id: b.batch_id.to_string(),
            chat_id: b.chat_id.to_string(),
            members: b.participants.iter().map(Uuid::to_string).collect(),
            sender_id: b.sender_id.to_string(),
            seq: b.seq as i64,
            messages: b
                .messages
                .iter()
                .map(|m| FsMessage {
                    id: m.id.to_string(),
                    text: m.text.clone(),
                    sent_at: m.sent_at.into(),
                })
                .collect(),
            first_message_id: b.first().id.to_string(),
            last_message_id: b.last().id.to_string(),
            first_at: b.first().sent_at.into(),
            last_at: b.last().sent_at.into(),
            count: b.count() as i64,
            closed: b.closed,
            expire_at: expire_at(b, ttl).into(),
            log_partition: i64::from(b.last_position.partition),
            log_offset: b.last_position.offset,
        }
    }

    pub fn progress(&self) -> Progress {
        Progress {
            count: usize::try_from(self.count).unwrap_or(0),
            closed: self.closed,
        }
    }

    pub fn to_batch(&self) -> Result<Batch, String> {
        let uuid = |s: &str| Uuid::parse_str(s).map_err(|e| format!("{s}: {e}"));
        let participants: Vec<Uuid> = self
            .members
            .iter()
            .map(|p| uuid(p))
            .collect::<Result<_, _>>()?;
        let participants: [Uuid; 2] = participants
            .try_into()
            .map_err(|_| "participants".to_owned())?;
        Ok(Batch {
            chat_id: uuid(&self.chat_id)?,
            batch_id: uuid(&self.id)?,
            seq: self.seq as u64,
            participants,
            sender_id: uuid(&self.sender_id)?,
            messages: self
                .messages
                .iter()
                .map(|m| {
                    Ok(BatchMessage {
                        id: uuid(&m.id)?,
                        text: m.text.clone(),
                        sent_at: OffsetDateTime::from(m.sent_at),
                    })
                })
                .collect::<Result<_, String>>()?,
            closed: self.closed,
            last_position: Position {
                partition: self.log_partition as i32,
                offset: self.log_offset,
            },
        })
    }
}

pub struct FirestoreSink {
    db: FirestoreDb,
    ttl: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

#[derive(Debug, thiserror::Error)]
#[error("stored batch is newer")]
struct StaleMarker;

impl FirestoreSink {
    /// Connects to Firestore (or to the emulator named by
    /// `FIRESTORE_EMULATOR_HOST`) for `project_id`.
    pub async fn connect(project_id: &str, ttl: Duration) -> anyhow::Result<Self> {
        let db = FirestoreDb::new(project_id).await?;
        Ok(Self { db, ttl })
    }

    pub fn db(&self) -> &FirestoreDb {
        &self.db
    }
}

/// Whether the transaction failed on our [`StaleMarker`] (the crate may wrap
/// it in more than one transaction-error layer).
fn is_stale(e: &firestore::errors::FirestoreError) -> bool {
    match e {
        firestore::errors::FirestoreError::ErrorInTransaction(t) => {
            t.source.downcast_ref::<StaleMarker>().is_some()
                || t.source
                    .downcast_ref::<firestore::errors::FirestoreError>()
                    .is_some_and(is_stale)
        }
        _ => false,
    }
}

#[async_trait]
impl Sink for FirestoreSink {
    async fn newest_batch(&self, chat: Uuid) -> Result<Option<Batch>, SinkError> {
        let parent = self
            .db
            .parent_path(CHATS, chat.to_string())
            .map_err(unavailable)?;
        let newest: Vec<FsBatch> = self
            .db
            .fluent()
            .select()
            .from(BATCHES)
            .parent(&parent)
            .order(|o| o.fields([o.field("seq").desc()]))
            .limit(1)
            .obj()
            .query()
            .await
            .map_err(unavailable)?;
        newest
            .first()
            .map(|b| b.to_batch().map_err(SinkError::Unavailable))
            .transpose()
    }

    async fn write(&self, w: &Write) -> Result<usize, SinkError> {
        let ttl = self.ttl;
        let batches: Vec<FsBatch> = w
            .closing
            .iter()
            .chain(w.batch_changed.then_some(&w.batch))
            .map(|b| FsBatch::from_batch(b, ttl))
            .collect();
        let summary = w.summary.as_ref().map(|s| FsSummary {
            chat_id: s.chat_id.to_string(),
            members: s.participants.iter().map(Uuid::to_string).collect(),
            last_batch_id: s.last_batch_id.to_string(),
            last_batch_seq: s.last_batch_seq as i64,
            last_sender_id: s.last_sender_id.to_string(),
            last_activity: s.last_activity.into(),
        });
        let chat = w.chat_id.to_string();
        let result = self
            .db
            .run_transaction(|db, tx| {
                let (batches, summary, chat) = (batches.clone(), summary.clone(), chat.clone());
                Box::pin(async move {
                    let parent = db.parent_path(CHATS, &chat)?;
                    let mut documents = 0usize;
                    for doc in &batches {
                        let stored: Option<FsBatch> = db
                            .fluent()
                            .select()
                            .by_id_in(BATCHES)
                            .parent(&parent)
                            .obj()
                            .one(&doc.id)
                            .await?;
                        match stored.map(|s| doc.progress().against(s.progress())) {
                            Some(Compared::Same) => continue,
                            Some(Compared::Behind) => {
                                return Err(
                                    firestore::errors::FirestoreErrorInTransaction::permanent(
                                        tx,
                                        StaleMarker,
                                    ),
                                );
                            }
                            Some(Compared::Ahead) | None => {}
                        }
                        db.fluent()
                            .update()
                            .in_col(BATCHES)
                            .document_id(&doc.id)
                            .parent(&parent)
                            .object(doc)
                            .add_to_transaction(tx)?;
                        documents += 1;
                    }
                    if let Some(summary) = &summary {
                        db.fluent()
                            .update()
                            .in_col(CHATS)
                            .document_id(&chat)
                            .object(summary)
                            .add_to_transaction(tx)?;
                        documents += 1;
                    }
                    Ok(documents)
                })
            })
            .await;
        match result {
            Ok(documents) => Ok(documents),
            Err(e) if is_stale(&e) => Err(SinkError::Stale(w.chat_id)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn ping(&self) -> Result<(), SinkError> {
        let _: Option<FsSummary> = self
            .db
            .fluent()
            .select()
            .by_id_in(CHATS)
            .obj()
            .one("readiness-probe")
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "firestore"
    }
}
