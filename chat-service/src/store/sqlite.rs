//! The embedded store: SQLite (WAL) in the data directory, through
//! `rusqlite` (the schema is created with sqlx's migrator, shared with the
//! other embedded stores).
//!
//! Writes go through one connection owned by one writer thread, so they are
//! serialised without SQLite busy errors and the outbox's `seq` order is
//! commit order. The writer group-commits: it takes every write queued at
//! that moment (up to [`GROUP`]), stores them in one transaction with cached
//! prepared statements, and acknowledges each after that commit. Reads run
//! on Tokio's blocking threads over a pool of read-only connections, each
//! query with a cached prepared statement, all rows at once. With the outbox on, each message's `message.created`
//! event is appended to the `log` table in the message's own transaction, so
//! an acknowledged message is always on the log (the embedded log's
//! guarantee; see [`crate::log`]).

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use chat_events::TimeUuid;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Chat, ChatSummary, Inserted, Message, MessageStore, Participant, StoreError};

pub const FILE: &str = "chat.db";

/// Most writes committed in one transaction.
const GROUP: usize = 256;
/// Read-only connections (reads run on Tokio's blocking threads).
const READERS: u32 = 4;

#[derive(Clone)]
pub struct SqliteStore {
    read: r2d2::Pool<SqliteConnectionManager>,
    writes: mpsc::Sender<Job>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Insert(Message, Reply<Inserted>),
    CreateChat(Chat, Reply<bool>),
}

enum Outcome {
    Inserted(Inserted),
    Created(bool),
}

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
        let path = data_dir.join(FILE);
        service_kit::sqlite::migrate(&path, &sqlx::migrate!("./migrations/sqlite")).await?;
        let writer = Connection::open(&path)?;
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.set_prepared_statement_cache_capacity(32);
        let manager = SqliteConnectionManager::file(&path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| {
                c.set_prepared_statement_cache_capacity(32);
                Ok(())
            });
        let read = tokio::task::spawn_blocking(move || {
            r2d2::Pool::builder()
                .max_size(READERS)
                .test_on_check_out(false)
                .build(manager)
        })
        .await??;
        let (writes, jobs) = mpsc::channel(4 * GROUP);
        std::thread::Builder::new()
            .name("chat-db-writer".into())
            .spawn(move || group_commit(writer, outbox, jobs))?;
        Ok(Self { read, writes })
    }

    /// Stops taking writes; the writer thread ends once the queued ones are
    /// committed and every clone of this store is gone.
    pub async fn close(&self) {}

    /// Runs `query` on a read connection, on a blocking thread.
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.read.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .get()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok(query(&conn)?)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let closed = || StoreError::Unavailable("the chat.db writer has stopped".into());
        self.writes.send(job(reply)).await.map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    /// Outbox entries with `seq > after`, in order, at most `limit`.
    pub async fn log_after(&self, after: i64, limit: i64) -> Result<Vec<LogEntry>, StoreError> {
        self.read(move |c| {
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
        .await
    }
}

const CHAT_COLUMNS: &str =
    "id, user_a, user_a_name, user_b, user_b_name, created_at, last_activity, last_message_id";

fn chat_from_row(row: &Row<'_>) -> rusqlite::Result<Chat> {
    Ok(Chat {
        id: row.get(0)?,
        participants: [
            Participant {
                id: row.get(1)?,
                username: row.get(2)?,
            },
            Participant {
                id: row.get(3)?,
                username: row.get(4)?,
            },
        ],
        created_at: row.get(5)?,
    })
}

const MESSAGE_COLUMNS: &str = "chat_id, id, sender_id, recipient_id, text, client_message_id";

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let id: Uuid = row.get(1)?;
    Ok(Message {
        id: TimeUuid::from_uuid(id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
        })?,
        chat_id: row.get(0)?,
        sender_id: row.get(2)?,
        recipient_id: row.get(3)?,
        text: row.get(4)?,
        client_message_id: row.get(5)?,
    })
}

/// The writer thread: takes whatever writes are queued (up to [`GROUP`])
/// and stores them in one transaction, so concurrent sends share a commit.
/// Each write is acknowledged only after that commit; if the transaction
/// fails, every write in it gets the error and nothing of it is stored.
fn group_commit(mut conn: Connection, outbox: bool, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        match store_group(&mut conn, outbox, &group) {
            Ok(outcomes) => {
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    match (job, outcome) {
                        (Job::Insert(_, reply), Outcome::Inserted(done)) => {
                            let _ = reply.send(Ok(done));
                        }
                        (Job::CreateChat(_, reply), Outcome::Created(done)) => {
                            let _ = reply.send(Ok(done));
                        }
                        (Job::Insert(_, reply), _) => {
                            let _ = reply.send(Err(StoreError::Corrupt("writer mix-up".into())));
                        }
                        (Job::CreateChat(_, reply), _) => {
                            let _ = reply.send(Err(StoreError::Corrupt("writer mix-up".into())));
                        }
                    }
                }
            }
            Err(e) => {
                let message = format!("group commit failed: {e}");
                tracing::error!(error = %e, writes = group.len(), "chat.db group commit failed");
                for job in group {
                    let error = StoreError::Unavailable(message.clone());
                    match job {
                        Job::Insert(_, reply) => {
                            let _ = reply.send(Err(error));
                        }
                        Job::CreateChat(_, reply) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
        }
    }
}

fn store_group(
    conn: &mut Connection,
    outbox: bool,
    group: &[Job],
) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(group.len());
    // The newest new message of each chat, for one `chats` update per chat.
    let mut newest: HashMap<Uuid, &Message> = HashMap::new();
    {
        let mut find = tx.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE chat_id = ?1 AND sender_id = ?2 AND client_message_id = ?3"
        ))?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (chat_id, ts, id, sender_id, recipient_id, text, client_message_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut append = tx.prepare_cached("INSERT INTO log (chat_id, payload) VALUES (?1, ?2)")?;
        for job in group {
            match job {
                Job::CreateChat(chat, _) => {
                    let [a, b] = &chat.participants;
                    let created = tx.prepare_cached(
                        "INSERT INTO chats (id, user_a, user_a_name, user_b, user_b_name, created_at, last_activity) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(params![chat.id, a.id, a.username, b.id, b.username, chat.created_at])?;
                    outcomes.push(Outcome::Created(created == 1));
                }
                Job::Insert(m, _) => {
                    if let Some(client_id) = &m.client_message_id {
                        // Sees earlier inserts of this group too (same transaction).
                        let existing = find
                            .query_row(params![m.chat_id, m.sender_id, client_id], message_from_row)
                            .optional()?;
                        if let Some(existing) = existing {
                            outcomes.push(Outcome::Inserted(Inserted::Existing(existing)));
                            continue;
                        }
                    }
                    insert.execute(params![
                        m.chat_id,
                        m.id.ticks() as i64,
                        m.id.uuid(),
                        m.sender_id,
                        m.recipient_id,
                        m.text,
                        m.client_message_id
                    ])?;
                    if outbox {
                        append.execute(params![m.chat_id, m.event().encode()])?;
                    }
                    let slot = newest.entry(m.chat_id).or_insert(m);
                    if slot.id < m.id {
                        *slot = m;
                    }
                    outcomes.push(Outcome::Inserted(Inserted::New(m.clone())));
                }
            }
        }
        let mut touch = tx.prepare_cached(
            "UPDATE chats SET last_activity = MAX(last_activity, ?2), last_message_id = ?3 WHERE id = ?1",
        )?;
        for m in newest.values() {
            touch.execute(params![m.chat_id, m.id.unix_millis(), m.id.uuid()])?;
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_chat(&self, chat: &Chat) -> Result<bool, StoreError> {
        let chat = chat.clone();
        self.write(|reply| Job::CreateChat(chat, reply)).await
    }

    async fn chat(&self, id: Uuid) -> Result<Option<Chat>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"))?
                .query_row([id], chat_from_row)
                .optional()
        })
        .await
    }

    async fn chats_of(&self, user: Uuid) -> Result<Vec<ChatSummary>, StoreError> {
        self.read(move |c| {
            let mut query = c.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE user_a = ?1 \
                 UNION ALL SELECT {CHAT_COLUMNS} FROM chats WHERE user_b = ?1 \
                 ORDER BY last_activity DESC"
            ))?;
            let rows = query.query_map([user], |row| {
                let last: Option<Uuid> = row.get(7)?;
                Ok(ChatSummary {
                    chat: chat_from_row(row)?,
                    last_activity: row.get(6)?,
                    last_message_id: last.and_then(|u| TimeUuid::from_uuid(u).ok()),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn insert_message(&self, message: Message) -> Result<Inserted, StoreError> {
        self.write(|reply| Job::Insert(message, reply)).await
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
        self.read(move |c| {
            let mut query = c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND (ts < ?2 OR (ts = ?2 AND id < ?3)) \
                 ORDER BY ts DESC, id DESC LIMIT ?4"
            ))?;
            let rows = query.query_map(params![chat, ts, id, limit as i64], message_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        if self.writes.is_closed() {
            return Err(StoreError::Unavailable(
                "the chat.db writer has stopped".into(),
            ));
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
