//! The embedded store: SQLite (WAL) in the data directory, through
//! [`embedded_db`] (the embedded stores' one SQLite layer).
//!
//! Writes go through one connection owned by one writer thread, so they are
//! serialised without SQLite busy errors and the outbox's `seq` order is
//! commit order. The writer group-commits
//! ([`embedded_db::GroupWriter`]): every write queued at that moment
//! (up to [`GROUP`]) goes into one transaction, with cached prepared
//! statements, and each is acknowledged after that commit. Reads use a
//! pool of read-only connections, each query a cached prepared statement
//! returning all its rows at once; see [`SqliteStore::read`] for where they
//! run. With the outbox on, each message's `message.created`
//! event is appended to the `log` table in the message's own transaction, so
//! an acknowledged message is always on the log (the embedded log's
//! guarantee; see [`crate::outbox`]).

use std::path::Path;

use async_trait::async_trait;
use chat_events::{ChatId, TimeUuid, UserId};
use embedded_db::{GroupError, GroupWriter, Migration, ReadError, ReadPool};
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::{Chat, ChatSummary, Inserted, Message, MessageStore, Participant, StoreError};
use crate::domain::{ClientMessageId, MessageText};
use crate::outbox::OutboxLog;

pub const FILE: &str = "chat.db";

/// `migrations/sqlite`, in order.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: include_str!("../../migrations/sqlite/0001_chats.sql"),
}];

/// Most writes committed in one transaction.
const GROUP: usize = 256;
/// Read-only connections.
const READERS: u32 = 4;

#[derive(Clone)]
pub struct SqliteStore {
    read: ReadPool,
    write: GroupWriter,
    /// Each new message's event also goes to the outbox.
    outbox: bool,
}

impl From<GroupError> for StoreError {
    fn from(e: GroupError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<ReadError> for StoreError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Sqlite(e) => StoreError::Sqlite(e),
            ReadError::Pool(e) => StoreError::Unavailable(e),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `chat.db` in `data_dir` and migrates it;
    /// messages go to another log.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        Self::open_inner(data_dir, false).await
    }

    /// Like [`SqliteStore::open`], and the store appends each new message's
    /// event to its outbox: the embedded log, whose send side is the
    /// returned [`OutboxLog`] (see [`crate::outbox`]).
    pub async fn open_with_outbox(data_dir: &Path) -> anyhow::Result<(Self, OutboxLog)> {
        Ok((Self::open_inner(data_dir, true).await?, OutboxLog::new()))
    }

    async fn open_inner(data_dir: &Path, outbox: bool) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
        embedded_db::migrate(&path, MIGRATIONS).await?;
        let write = GroupWriter::spawn("chat.db", &path, GROUP)?;
        let read = ReadPool::open(&path, READERS).await?;
        Ok(Self {
            read,
            write,
            outbox,
        })
    }

    /// Nothing to do: the writer thread ends once the queued writes are
    /// committed and every clone of this store is gone.
    pub async fn close(&self) {}

    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Ok(self.read.read(query).await?)
    }

    /// [`SqliteStore::read`] for a scan: always on a blocking thread.
    async fn scan<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Ok(self.read.scan(query).await?)
    }
}

const CHAT_COLUMNS: &str =
    "id, user_a, user_a_name, user_b, user_b_name, created_at, last_activity, last_message_id";

/// A chat row ([`CHAT_COLUMNS`]) with its activity.
fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<ChatSummary> {
    let last: Option<Uuid> = row.get(7)?;
    Ok(ChatSummary {
        chat: chat_from_row(row)?,
        last_activity: row.get(6)?,
        last_message_id: last.and_then(|u| TimeUuid::from_uuid(u).ok()),
    })
}

fn chat_from_row(row: &Row<'_>) -> rusqlite::Result<Chat> {
    Ok(Chat {
        id: ChatId::from_uuid(row.get(0)?),
        participants: [
            Participant {
                id: UserId::from_uuid(row.get(1)?),
                username: row.get(2)?,
            },
            Participant {
                id: UserId::from_uuid(row.get(3)?),
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
        chat_id: ChatId::from_uuid(row.get(0)?),
        sender_id: UserId::from_uuid(row.get(2)?),
        recipient_id: UserId::from_uuid(row.get(3)?),
        text: MessageText::stored(row.get(4)?),
        client_message_id: row
            .get::<_, Option<String>>(5)?
            .map(ClientMessageId::stored),
    })
}

fn create_chat(conn: &Connection, chat: &Chat) -> Result<bool, StoreError> {
    let [a, b] = &chat.participants;
    let created = conn
        .prepare_cached(
            "INSERT INTO chats (id, user_a, user_a_name, user_b, user_b_name, created_at, last_activity) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            chat.id.uuid(),
            a.id.uuid(),
            a.username,
            b.id.uuid(),
            b.username,
            chat.created_at
        ])?;
    Ok(created == 1)
}

/// Stores a new message (and its outbox entry), or returns the one this
/// sender already sent with the same client id (earlier writes of the same
/// group included: they share the transaction).
fn insert(conn: &Connection, outbox: bool, m: Message) -> Result<Inserted, StoreError> {
    if let Some(client_id) = &m.client_message_id {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND sender_id = ?2 AND client_message_id = ?3"
            ))?
            .query_row(
                params![m.chat_id.uuid(), m.sender_id.uuid(), client_id.as_str()],
                message_from_row,
            )
            .optional()?;
        if let Some(existing) = existing {
            return Ok(Inserted::Existing(existing));
        }
    }
    conn.prepare_cached(
        "INSERT INTO messages (chat_id, ts, id, sender_id, recipient_id, text, client_message_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        m.chat_id.uuid(),
        m.id.ticks() as i64,
        m.id.uuid(),
        m.sender_id.uuid(),
        m.recipient_id.uuid(),
        m.text.as_str(),
        m.client_message_id.as_ref().map(ClientMessageId::as_str)
    ])?;
    if outbox {
        conn.prepare_cached("INSERT INTO log (chat_id, payload) VALUES (?1, ?2)")?
            .execute(params![m.chat_id.uuid(), m.event().encode()])?;
    }
    conn.prepare_cached(
        "UPDATE chats SET last_activity = MAX(last_activity, ?2), last_message_id = ?3 WHERE id = ?1",
    )?
    .execute(params![m.chat_id.uuid(), m.id.unix_millis(), m.id.uuid()])?;
    Ok(Inserted::New(m))
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_chat(&self, chat: &Chat) -> Result<bool, StoreError> {
        let chat = chat.clone();
        self.write.write(move |conn| create_chat(conn, &chat)).await
    }

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1"))?
                .query_row([id.uuid()], chat_from_row)
                .optional()
        })
        .await
    }

    async fn chat_summary(
        &self,
        user: UserId,
        id: ChatId,
    ) -> Result<Option<ChatSummary>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE id = ?1 AND (user_a = ?2 OR user_b = ?2)"
            ))?
            .query_row(params![id.uuid(), user.uuid()], summary_from_row)
            .optional()
        })
        .await
    }

    async fn chats_of(&self, user: UserId) -> Result<Vec<ChatSummary>, StoreError> {
        // A user's chats can be many: off the async runtime's threads.
        self.scan(move |c| {
            let mut query = c.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE user_a = ?1 \
                 UNION ALL SELECT {CHAT_COLUMNS} FROM chats WHERE user_b = ?1 \
                 ORDER BY last_activity DESC"
            ))?;
            let rows = query.query_map([user.uuid()], summary_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn insert_message(&self, message: Message) -> Result<Inserted, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| insert(conn, outbox, message))
            .await
    }

    async fn history(
        &self,
        chat: ChatId,
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
            let rows =
                query.query_map(params![chat.uuid(), ts, id, limit as i64], message_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await?;
        if self.write.is_stopped() {
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
