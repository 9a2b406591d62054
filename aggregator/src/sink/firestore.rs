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
use uuid::Uuid;

use super::doc::{BatchDoc, SummaryDoc};
use super::{Sink, SinkError};
use crate::batcher::{Batch, Compared, Write};

pub const CHATS: &str = "chats";
pub const BATCHES: &str = "batches";

/// `chats/{chat_id}/batches/{batch_id}` as Firestore stores it.
pub type FsBatch = BatchDoc<'static, SystemTime>;
/// `chats/{chat_id}` as Firestore stores it.
pub type FsSummary = SummaryDoc<SystemTime>;

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

    async fn read_horizons(
        &self,
        chat: Uuid,
    ) -> Result<std::collections::BTreeMap<Uuid, Uuid>, SinkError> {
        let summary: Option<FsSummary> = self
            .db
            .fluent()
            .select()
            .by_id_in(CHATS)
            .obj()
            .one(chat.to_string())
            .await
            .map_err(unavailable)?;
        Ok(summary.map(|s| s.read_horizons()).unwrap_or_default())
    }

    async fn write(&self, w: &Write) -> Result<usize, SinkError> {
        let ttl = self.ttl;
        let batches: Vec<FsBatch> = w
            .closing
            .iter()
            .chain(w.batch_changed.then_some(&w.batch))
            .map(|b| BatchDoc::new(b, ttl).into_owned())
            .collect();
        let summary = w.summary.as_ref().map(FsSummary::new);
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
