//! The embedded store: SQLite (WAL) in the data directory.
//!
//! Writes go through a single connection, so they are serialised without
//! SQLite busy errors and the outbox's `seq` order is commit order; reads use
//! a pool of their own. Message inserts are group-committed: one writer task
//! stores everything queued in one transaction and acknowledges each insert
//! after that commit. With the outbox on, each message's `message.created`
//! event is appended to the `log` table in the message's own transaction, so
//! an acknowledged message is always on the log (the embedded log's
//! guarantee; see [`crate::log`]).

use std::path::Path;

use async_trait::async_trait;
use chat_events::TimeUuid;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Chat, ChatSummary, Inserted, Message, MessageStore, Participant, StoreError};

pub const FILE: &str = "chat.db";

#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    /// Inserts go to one writer task that commits them in groups.
    inserts: mpsc::Sender<InsertJob>,
}

struct InsertJob {
    message: Message,
    done: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// Most inserts committed in one transaction.
const GROUP: usize = 256;

/// One log entry of the embedded outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: i64,
    pub chat_id: Uuid,
    pub payload: Vec<u8>,
}

impl SqliteStore {
    /// Opens (creating if needed) `chat.db` in `data_dir` and migrates it.
    /// `outbox`: also append each new message's event to the `log` table.
    pub async fn open(data_dir: &Path, outbox: bool) -> anyhow::Result<Self> {
        let service_kit::sqlite::Pools { write, read } = service_kit::sqlite::open(
            &data_dir.join(FILE),
            &sqlx::migrate!("./migrations/sqlite"),
            8,
        )
        .await?;
        let (inserts, jobs) = mpsc::channel(4 * GROUP);
        tokio::spawn(group_commit(write.clone(), outbox, jobs));
        Ok(Self {
            read,
            write,
            inserts,
        })
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Outbox entries with `seq > after`, in order, at most `limit`.
    pub async fn log_after(&self, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, chat_id, payload FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogEntry {
                    seq: r.try_get("seq")?,
                    chat_id: r.try_get("chat_id")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }
}

fn chat_from_row(row: &SqliteRow) -> Result<Chat, StoreError> {
    Ok(Chat {
        id: row.try_get("id")?,
        participants: [
            Participant {
                id: row.try_get("user_a")?,
                username: row.try_get("user_a_name")?,
            },
            Participant {
                id: row.try_get("user_b")?,
                username: row.try_get("user_b_name")?,
            },
        ],
        created_at: row.try_get("created_at")?,
    })
}

fn message_from_row(row: &SqliteRow) -> Result<Message, StoreError> {
    let id: Uuid = row.try_get("id")?;
    Ok(Message {
        id: TimeUuid::from_uuid(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        chat_id: row.try_get("chat_id")?,
        sender_id: row.try_get("sender_id")?,
        recipient_id: row.try_get("recipient_id")?,
        text: row.try_get("text")?,
        client_message_id: row.try_get("client_message_id")?,
    })
}

const MESSAGE_COLUMNS: &str = "chat_id, id, sender_id, recipient_id, text, client_message_id";

/// The writer: takes whatever inserts are queued (up to [`GROUP`]) and
/// stores them in one transaction, so concurrent sends share a commit. Each
/// insert is acknowledged only after that commit; if the transaction fails,
/// every insert in it gets the error and nothing of it is stored.
async fn group_commit(write: SqlitePool, outbox: bool, mut jobs: mpsc::Receiver<InsertJob>) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let messages: Vec<Message> = group.iter().map(|j| j.message.clone()).collect();
        match insert_group(&write, outbox, messages).await {
            Ok(outcomes) => {
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    let _ = job.done.send(Ok(outcome));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in group {
                    let _ = job.done.send(Err(StoreError::Corrupt(format!(
                        "group commit failed: {message}"
                    ))));
                }
            }
        }
    }
}

async fn insert_group(
    write: &SqlitePool,
    outbox: bool,
    messages: Vec<Message>,
) -> Result<Vec<Inserted>, StoreError> {
    let mut tx = write.begin().await?;
    let mut outcomes = Vec::with_capacity(messages.len());
    for m in messages {
        if let Some(client_id) = &m.client_message_id {
            // Sees earlier inserts of this group too (same transaction).
            let existing = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND sender_id = ?2 AND client_message_id = ?3"
            ))
            .bind(m.chat_id)
            .bind(m.sender_id)
            .bind(client_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                outcomes.push(Inserted::Existing(message_from_row(&row)?));
                continue;
            }
        }
        sqlx::query(
            "INSERT INTO messages (chat_id, ts, id, sender_id, recipient_id, text, client_message_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(m.chat_id)
        .bind(m.id.ticks() as i64)
        .bind(m.id.uuid())
        .bind(m.sender_id)
        .bind(m.recipient_id)
        .bind(&m.text)
        .bind(&m.client_message_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE chats SET last_activity = MAX(last_activity, ?2), last_message_id = ?3 WHERE id = ?1",
        )
        .bind(m.chat_id)
        .bind(m.id.unix_millis())
        .bind(m.id.uuid())
        .execute(&mut *tx)
        .await?;
        if outbox {
            sqlx::query("INSERT INTO log (chat_id, payload) VALUES (?1, ?2)")
                .bind(m.chat_id)
                .bind(m.event().encode())
                .execute(&mut *tx)
                .await?;
        }
        outcomes.push(Inserted::New(m));
    }
    tx.commit().await?;
    Ok(outcomes)
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_chat(&self, chat: &Chat) -> Result<bool, StoreError> {
        let [a, b] = &chat.participants;
        let done = sqlx::query(
            "INSERT INTO chats (id, user_a, user_a_name, user_b, user_b_name, created_at, last_activity) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(chat.id)
        .bind(a.id)
        .bind(&a.username)
        .bind(b.id)
        .bind(&b.username)
        .bind(chat.created_at)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn chat(&self, id: Uuid) -> Result<Option<Chat>, StoreError> {
        let row = sqlx::query("SELECT * FROM chats WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(chat_from_row).transpose()
    }

    async fn chats_of(&self, user: Uuid) -> Result<Vec<ChatSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM chats WHERE user_a = ?1 UNION ALL SELECT * FROM chats WHERE user_b = ?1 \
             ORDER BY last_activity DESC",
        )
        .bind(user)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let last: Option<Uuid> = row.try_get("last_message_id")?;
                Ok(ChatSummary {
                    chat: chat_from_row(row)?,
                    last_activity: row.try_get("last_activity")?,
                    last_message_id: last.and_then(|u| TimeUuid::from_uuid(u).ok()),
                })
            })
            .collect()
    }

    async fn insert_message(&self, message: Message) -> Result<Inserted, StoreError> {
        let (done, outcome) = oneshot::channel();
        let closed = || StoreError::Corrupt("the message writer has stopped".into());
        self.inserts
            .send(InsertJob { message, done })
            .await
            .map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    async fn history(
        &self,
        chat: Uuid,
        before: Option<TimeUuid>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let (ts, id) = match before {
            Some(t) => (t.ticks() as i64, t.uuid()),
            None => (i64::MAX, Uuid::max()),
        };
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE chat_id = ?1 AND (ts < ?2 OR (ts = ?2 AND id < ?3)) \
             ORDER BY ts DESC, id DESC LIMIT ?4"
        ))
        .bind(chat)
        .bind(ts)
        .bind(id)
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
