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
//! run. With the outbox on, each change's event (`message.created`, the
//! timeline events, `read.updated`) is appended to the `log` table in the
//! change's own transaction, so an acknowledged change is always on the log
//! (the embedded log's guarantee; see [`crate::outbox`]).
//!
//! Tables (`migrations/sqlite`): `chats` (kind, title, member count,
//! activity, the message count `message_seq` and the newest message's
//! preview), `members` (role, join time and read horizon: `read_seq`, the
//! `seq` of the newest message read), `timeline` (messages and events in
//! TimeUUID order; messages numbered 1, 2, 3… per chat by `seq`) and `log`.
//! Every check a change depends on (membership, the member limit, a reply's
//! target) runs inside the change's transaction.

use std::path::Path;

use async_trait::async_trait;
use chat_events::{ChatEventType, ChatId, ChatKind, Event, ReadUpdated, TimeUuid, UserId};
use embedded_db::{GroupError, GroupWriter, Migration, ReadError, ReadPool, WalLimit};
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::{
    preview, Added, Changed, Chat, ChatSummary, ChatsPage, Inserted, Item, LastMessage, Member,
    Message, MessageStore, NewChat, ReadMark, Role, StoreError, TimelineEvent, UNREAD_CAP,
};
use crate::domain::{ClientMessageId, MessageText};
use crate::outbox::OutboxLog;

pub const FILE: &str = "chat.db";

/// `migrations/sqlite`, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../../migrations/sqlite/0001_chats.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../../migrations/sqlite/0002_groups.sql"),
    },
];

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
    pub async fn open(data_dir: &Path, wal: WalLimit) -> anyhow::Result<Self> {
        Self::open_inner(data_dir, false, wal).await
    }

    /// Like [`SqliteStore::open`], and the store appends each new message's
    /// event to its outbox: the embedded log, whose send side is the
    /// returned [`OutboxLog`] (see [`crate::outbox`]).
    pub async fn open_with_outbox(
        data_dir: &Path,
        wal: WalLimit,
    ) -> anyhow::Result<(Self, OutboxLog)> {
        Ok((
            Self::open_inner(data_dir, true, wal).await?,
            OutboxLog::new(),
        ))
    }

    async fn open_inner(data_dir: &Path, outbox: bool, wal: WalLimit) -> anyhow::Result<Self> {
        let path = data_dir.join(FILE);
        embedded_db::migrate(&path, MIGRATIONS).await?;
        let write = GroupWriter::spawn("chat.db", &path, GROUP, wal)?;
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

    /// A page of a timeline: `query` is [`OLDER_PAGE`] or [`NEWER_PAGE`].
    async fn page(
        &self,
        query: &'static str,
        chat: ChatId,
        ts: i64,
        id: Uuid,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.read(move |c| {
            let mut query = c.prepare_cached(query)?;
            let rows =
                query.query_map(params![chat.uuid(), ts, id, limit as i64], item_from_row)?;
            rows.collect()
        })
        .await
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

fn corrupt(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Blob, Box::new(e))
}

fn time_uuid(row: &Row<'_>, column: usize) -> rusqlite::Result<TimeUuid> {
    TimeUuid::from_uuid(row.get(column)?).map_err(|e| corrupt(column, e))
}

fn opt_time_uuid(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<TimeUuid>> {
    row.get::<_, Option<Uuid>>(column)?
        .map(|u| TimeUuid::from_uuid(u).map_err(|e| corrupt(column, e)))
        .transpose()
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {0} {1:?}")]
struct Unknown(&'static str, String);

fn kind_of(name: &str) -> rusqlite::Result<ChatKind> {
    match name {
        "direct" => Ok(ChatKind::Direct),
        "group" => Ok(ChatKind::Group),
        other => Err(corrupt(1, Unknown("chat kind", other.into()))),
    }
}

fn role_of(name: &str, column: usize) -> rusqlite::Result<Role> {
    Role::parse(name).ok_or_else(|| corrupt(column, Unknown("role", name.into())))
}

const CHAT_COLUMNS: &str = "c.id, c.kind, c.title, c.created_at, c.member_count";

/// [`CHAT_COLUMNS`] from `at` on.
fn chat_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Chat> {
    Ok(Chat {
        id: ChatId::from_uuid(row.get(at)?),
        kind: kind_of(&row.get::<_, String>(at + 1)?)?,
        title: row.get(at + 2)?,
        created_at: row.get(at + 3)?,
        member_count: row.get::<_, i64>(at + 4)?.max(0) as usize,
    })
}

const MEMBER_COLUMNS: &str = "m.user_id, m.username, m.role, m.joined_at, m.last_read_id";
/// Members in the order they joined; those who joined together owner first,
/// then admins.
const MEMBER_ORDER: &str = "m.joined_at, CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 \
     ELSE 2 END, m.user_id";

/// [`MEMBER_COLUMNS`] from `at` on.
fn member_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Member> {
    Ok(Member {
        id: UserId::from_uuid(row.get(at)?),
        username: row.get(at + 1)?,
        role: role_of(&row.get::<_, String>(at + 2)?, at + 2)?,
        joined_at: row.get(at + 3)?,
        last_read_id: opt_time_uuid(row, at + 4)?,
    })
}

/// A member's chat list entry: the chat, activity, last message, unread
/// count and horizon, and a direct chat's other member.
const SUMMARY_QUERY: &str = "SELECT c.id, c.kind, c.title, c.created_at, c.member_count, \
     c.last_activity, c.last_message_id, c.last_sender_id, c.last_preview, \
     c.message_seq - m.read_seq, m.last_read_id, \
     o.user_id, o.username, o.role, o.joined_at, o.last_read_id \
     FROM members m JOIN chats c ON c.id = m.chat_id \
     LEFT JOIN members o ON c.kind = 'direct' AND o.chat_id = c.id AND o.user_id <> m.user_id \
     WHERE m.user_id = ?1";

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<ChatSummary> {
    let last_message = match (opt_time_uuid(row, 6)?, row.get::<_, Option<Uuid>>(7)?) {
        (Some(id), Some(sender)) => Some(LastMessage {
            id,
            sender_id: UserId::from_uuid(sender),
            preview: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
        }),
        _ => None,
    };
    let other = match row.get::<_, Option<Uuid>>(11)? {
        Some(_) => Some(member_from_row(row, 11)?),
        None => None,
    };
    Ok(ChatSummary {
        chat: chat_from_row(row, 0)?,
        last_activity: row.get(5)?,
        last_message,
        unread: (row.get::<_, i64>(9)?.max(0) as u64).min(UNREAD_CAP),
        last_read_id: opt_time_uuid(row, 10)?,
        other,
    })
}

const ITEM_COLUMNS: &str =
    "chat_id, id, type, sender_id, text, client_message_id, reply_to, user_id, members";

/// History: items strictly older than `(ts, id)`, newest first.
const OLDER_PAGE: &str = "SELECT chat_id, id, type, sender_id, text, client_message_id, reply_to, \
     user_id, members FROM timeline WHERE chat_id = ?1 AND (ts < ?2 OR (ts = ?2 AND id < ?3)) \
     ORDER BY ts DESC, id DESC LIMIT ?4";

/// Catch-up: items strictly newer than `(ts, id)`, oldest first.
const NEWER_PAGE: &str = "SELECT chat_id, id, type, sender_id, text, client_message_id, reply_to, \
     user_id, members FROM timeline WHERE chat_id = ?1 AND (ts > ?2 OR (ts = ?2 AND id > ?3)) \
     ORDER BY ts, id LIMIT ?4";

fn item_from_row(row: &Row<'_>) -> rusqlite::Result<Item> {
    let id = time_uuid(row, 1)?;
    let chat_id = ChatId::from_uuid(row.get(0)?);
    let kind: String = row.get(2)?;
    let sender_id = UserId::from_uuid(row.get(3)?);
    if kind == "message" {
        return Ok(Item::Message(Message {
            id,
            chat_id,
            sender_id,
            text: MessageText::stored(row.get::<_, Option<String>>(4)?.unwrap_or_default()),
            client_message_id: row
                .get::<_, Option<String>>(5)?
                .map(ClientMessageId::stored),
            reply_to: opt_time_uuid(row, 6)?,
        }));
    }
    let event = ChatEventType::from_timeline_name(&kind)
        .ok_or_else(|| corrupt(2, Unknown("timeline type", kind.clone())))?;
    let members: Vec<UserId> = match row.get::<_, Option<String>>(8)? {
        Some(json) => serde_json::from_str(&json).map_err(|e| corrupt(8, e))?,
        None => Vec::new(),
    };
    Ok(Item::Event(TimelineEvent {
        id,
        chat_id,
        kind: event,
        actor_id: sender_id,
        user_id: row.get::<_, Option<Uuid>>(7)?.map(UserId::from_uuid),
        title: row.get(4)?,
        members,
    }))
}

fn message_of(item: Item) -> Result<Message, StoreError> {
    match item {
        Item::Message(m) => Ok(m),
        Item::Event(e) => Err(StoreError::Corrupt(format!(
            "{} is an event, not a message",
            e.id
        ))),
    }
}

/// Appends `event` to the outbox when the store has one.
fn append_log(conn: &Connection, outbox: bool, event: &Event) -> Result<(), StoreError> {
    if outbox {
        conn.prepare_cached("INSERT INTO log (chat_id, payload) VALUES (?1, ?2)")?
            .execute(params![event.chat_id().uuid(), event.encode()])?;
    }
    Ok(())
}

/// The chat's members' ids, in the order they joined.
fn member_ids(conn: &Connection, chat: ChatId) -> Result<Vec<UserId>, StoreError> {
    let mut query = conn.prepare_cached(&format!(
        "SELECT user_id FROM members m WHERE chat_id = ?1 ORDER BY {MEMBER_ORDER}"
    ))?;
    let rows = query.query_map([chat.uuid()], |r| Ok(UserId::from_uuid(r.get(0)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The member's role, if they are one.
fn role(conn: &Connection, chat: ChatId, user: UserId) -> Result<Option<Role>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT role FROM members WHERE chat_id = ?1 AND user_id = ?2")?
        .query_row(params![chat.uuid(), user.uuid()], |r| {
            role_of(&r.get::<_, String>(0)?, 0)
        })
        .optional()?)
}

fn insert_member(
    conn: &Connection,
    chat: ChatId,
    m: &Member,
    read_seq: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO members (chat_id, user_id, username, role, joined_at, last_read_id, read_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        chat.uuid(),
        m.id.uuid(),
        m.username,
        m.role.as_str(),
        m.joined_at,
        m.last_read_id.map(TimeUuid::uuid),
        read_seq
    ])?;
    Ok(())
}

/// Stores a timeline event and counts it as the chat's activity.
fn insert_event(conn: &Connection, e: &TimelineEvent) -> Result<(), StoreError> {
    let members = (!e.members.is_empty())
        .then(|| serde_json::to_string(&e.members))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO timeline (chat_id, ts, id, type, sender_id, text, user_id, members) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.chat_id.uuid(),
        e.id.ticks() as i64,
        e.id.uuid(),
        e.kind.timeline_name(),
        e.actor_id.uuid(),
        e.title,
        e.user_id.map(UserId::uuid),
        members
    ])?;
    conn.prepare_cached("UPDATE chats SET last_activity = MAX(last_activity, ?2) WHERE id = ?1")?
        .execute(params![e.chat_id.uuid(), e.id.unix_millis()])?;
    Ok(())
}

fn create_chat(
    conn: &Connection,
    outbox: bool,
    new: &NewChat,
    log: &Event,
) -> Result<bool, StoreError> {
    let chat = &new.chat;
    let created = conn
        .prepare_cached(
            "INSERT INTO chats (id, kind, title, created_at, member_count, last_activity) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?4) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            chat.id.uuid(),
            chat.kind.as_str(),
            chat.title,
            chat.created_at,
            new.members.len() as i64
        ])?;
    if created == 0 {
        return Ok(false);
    }
    for member in &new.members {
        insert_member(conn, chat.id, member, 0)?;
    }
    if let Some(event) = &new.event {
        insert_event(conn, event)?;
    }
    append_log(conn, outbox, log)?;
    Ok(true)
}

/// The timeline item `id` of `chat`.
fn item(
    conn: &Connection,
    chat: ChatId,
    id: TimeUuid,
) -> Result<Option<(Item, Option<i64>)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS}, seq FROM timeline WHERE chat_id = ?1 AND ts = ?2 AND id = ?3"
        ))?
        .query_row(params![chat.uuid(), id.ticks() as i64, id.uuid()], |r| {
            Ok((item_from_row(r)?, r.get(9)?))
        })
        .optional()?)
}

/// Stores a new message (and its outbox entry), or returns the one this
/// sender already sent with the same client id (earlier writes of the same
/// group included: they share the transaction).
fn insert(
    conn: &Connection,
    outbox: bool,
    m: Message,
    log: &Event,
) -> Result<Inserted, StoreError> {
    if role(conn, m.chat_id, m.sender_id)?.is_none() {
        return Err(StoreError::NotMember);
    }
    if let Some(client_id) = &m.client_message_id {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM timeline \
                 WHERE chat_id = ?1 AND sender_id = ?2 AND client_message_id = ?3"
            ))?
            .query_row(
                params![m.chat_id.uuid(), m.sender_id.uuid(), client_id.as_str()],
                item_from_row,
            )
            .optional()?;
        if let Some(existing) = existing {
            return Ok(Inserted::Existing(message_of(existing)?));
        }
    }
    if let Some(target) = m.reply_to {
        if !matches!(item(conn, m.chat_id, target)?, Some((Item::Message(_), _))) {
            return Err(StoreError::NoSuchReply);
        }
    }
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE chats SET message_seq = message_seq + 1, \
             last_activity = MAX(last_activity, ?2), last_message_id = ?3, \
             last_sender_id = ?4, last_preview = ?5 WHERE id = ?1 RETURNING message_seq",
        )?
        .query_row(
            params![
                m.chat_id.uuid(),
                m.id.unix_millis(),
                m.id.uuid(),
                m.sender_id.uuid(),
                preview(m.text.as_str())
            ],
            |r| r.get(0),
        )?;
    conn.prepare_cached(
        "INSERT INTO timeline (chat_id, ts, id, type, sender_id, text, client_message_id, \
         reply_to, seq) VALUES (?1, ?2, ?3, 'message', ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        m.chat_id.uuid(),
        m.id.ticks() as i64,
        m.id.uuid(),
        m.sender_id.uuid(),
        m.text.as_str(),
        m.client_message_id.as_ref().map(ClientMessageId::as_str),
        m.reply_to.map(TimeUuid::uuid),
        seq
    ])?;
    conn.prepare_cached(
        "UPDATE members SET read_seq = ?3, last_read_id = ?4 WHERE chat_id = ?1 AND user_id = ?2",
    )?
    .execute(params![
        m.chat_id.uuid(),
        m.sender_id.uuid(),
        seq,
        m.id.uuid()
    ])?;
    append_log(conn, outbox, log)?;
    Ok(Inserted::New(m))
}

fn add_member(
    conn: &Connection,
    outbox: bool,
    member: &Member,
    event: &TimelineEvent,
    limit: usize,
) -> Result<Added, StoreError> {
    let chat = event.chat_id;
    if role(conn, chat, member.id)?.is_some() {
        return Ok(Added::Already);
    }
    let (count, seq): (i64, i64) = conn
        .prepare_cached("SELECT member_count, message_seq FROM chats WHERE id = ?1")?
        .query_row([chat.uuid()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if count.max(0) as usize >= limit {
        return Ok(Added::Full);
    }
    // Messages before they joined are not unread for them.
    insert_member(conn, chat, member, seq)?;
    conn.prepare_cached("UPDATE chats SET member_count = member_count + 1 WHERE id = ?1")?
        .execute([chat.uuid()])?;
    let members = record_group_event(conn, outbox, event)?;
    Ok(Added::Added(members))
}

/// Stores a group's timeline event and appends it to the outbox with every
/// member after it; returns those members.
fn record_group_event(
    conn: &Connection,
    outbox: bool,
    event: &TimelineEvent,
) -> Result<Vec<UserId>, StoreError> {
    insert_event(conn, event)?;
    let members = member_ids(conn, event.chat_id)?;
    append_log(
        conn,
        outbox,
        &event.log_event(ChatKind::Group, members.clone()),
    )?;
    Ok(members)
}

fn remove_member(
    conn: &Connection,
    outbox: bool,
    event: &TimelineEvent,
) -> Result<Changed, StoreError> {
    let chat = event.chat_id;
    let Some(user) = event.user_id else {
        return Ok(Changed::NotMember);
    };
    let Some(role) = role(conn, chat, user)? else {
        return Ok(Changed::NotMember);
    };
    conn.prepare_cached("DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2")?
        .execute(params![chat.uuid(), user.uuid()])?;
    conn.prepare_cached("UPDATE chats SET member_count = member_count - 1 WHERE id = ?1")?
        .execute([chat.uuid()])?;
    if role == Role::Owner {
        conn.prepare_cached(
            "UPDATE members SET role = 'owner' WHERE chat_id = ?1 AND user_id = \
             (SELECT user_id FROM members WHERE chat_id = ?1 \
              ORDER BY role = 'admin' DESC, joined_at, user_id LIMIT 1)",
        )?
        .execute([chat.uuid()])?;
    }
    let members = record_group_event(conn, outbox, event)?;
    Ok(Changed::Done(members))
}

fn rename(conn: &Connection, outbox: bool, event: &TimelineEvent) -> Result<Changed, StoreError> {
    let chat = event.chat_id;
    if role(conn, chat, event.actor_id)?.is_none() {
        return Ok(Changed::NotMember);
    }
    conn.prepare_cached("UPDATE chats SET title = ?2 WHERE id = ?1 AND kind = 'group'")?
        .execute(params![chat.uuid(), event.title])?;
    let members = record_group_event(conn, outbox, event)?;
    Ok(Changed::Done(members))
}

fn set_role(conn: &Connection, chat: ChatId, user: UserId, new: Role) -> Result<bool, StoreError> {
    if role(conn, chat, user)?.is_none() {
        return Ok(false);
    }
    if new == Role::Owner {
        conn.prepare_cached(
            "UPDATE members SET role = 'admin' WHERE chat_id = ?1 AND role = 'owner'",
        )?
        .execute([chat.uuid()])?;
    }
    conn.prepare_cached("UPDATE members SET role = ?3 WHERE chat_id = ?1 AND user_id = ?2")?
        .execute(params![chat.uuid(), user.uuid(), new.as_str()])?;
    Ok(true)
}

fn mark_read(
    conn: &Connection,
    outbox: bool,
    chat: ChatId,
    user: UserId,
    message: TimeUuid,
) -> Result<ReadMark, StoreError> {
    let horizon: Option<i64> = conn
        .prepare_cached("SELECT read_seq FROM members WHERE chat_id = ?1 AND user_id = ?2")?
        .query_row(params![chat.uuid(), user.uuid()], |r| r.get(0))
        .optional()?;
    let Some(horizon) = horizon else {
        return Ok(ReadMark::NotMember);
    };
    let Some((Item::Message(_), Some(seq))) = item(conn, chat, message)? else {
        return Ok(ReadMark::NotAMessage);
    };
    if seq <= horizon {
        return Ok(ReadMark::Unchanged);
    }
    conn.prepare_cached(
        "UPDATE members SET read_seq = ?3, last_read_id = ?4 WHERE chat_id = ?1 AND user_id = ?2",
    )?
    .execute(params![chat.uuid(), user.uuid(), seq, message.uuid()])?;
    let event = Event::Read(ReadUpdated {
        v: chat_events::event::VERSION,
        kind: chat_events::event::READ_TYPE.to_owned(),
        chat_id: chat,
        user_id: user,
        last_read_id: message.uuid(),
        at: time::OffsetDateTime::now_utc(),
    });
    append_log(conn, outbox, &event)?;
    Ok(ReadMark::Moved)
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_chat(&self, new: NewChat, log: Event) -> Result<bool, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| create_chat(conn, outbox, &new, &log))
            .await
    }

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats c WHERE c.id = ?1"
            ))?
            .query_row([id.uuid()], |r| chat_from_row(r, 0))
            .optional()
        })
        .await
    }

    async fn membership(
        &self,
        chat: ChatId,
        user: UserId,
    ) -> Result<Option<(Chat, Member)>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS}, {MEMBER_COLUMNS} FROM chats c \
                 JOIN members m ON m.chat_id = c.id WHERE c.id = ?1 AND m.user_id = ?2"
            ))?
            .query_row(params![chat.uuid(), user.uuid()], |r| {
                Ok((chat_from_row(r, 0)?, member_from_row(r, 5)?))
            })
            .optional()
        })
        .await
    }

    async fn members(&self, chat: ChatId) -> Result<Vec<Member>, StoreError> {
        self.scan(move |c| {
            let mut query = c.prepare_cached(&format!(
                "SELECT {MEMBER_COLUMNS} FROM members m WHERE m.chat_id = ?1 \
                 ORDER BY {MEMBER_ORDER}"
            ))?;
            let rows = query.query_map([chat.uuid()], |r| member_from_row(r, 0))?;
            rows.collect()
        })
        .await
    }

    async fn chat_summary(
        &self,
        user: UserId,
        id: ChatId,
    ) -> Result<Option<ChatSummary>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!("{SUMMARY_QUERY} AND c.id = ?2"))?
                .query_row(params![user.uuid(), id.uuid()], summary_from_row)
                .optional()
        })
        .await
    }

    async fn chats_of(
        &self,
        user: UserId,
        page: ChatsPage,
    ) -> Result<Vec<ChatSummary>, StoreError> {
        // A user's chats can be many: off the async runtime's threads.
        let (at, id) = page
            .after
            .map_or((i64::MAX, None), |c| (c.last_activity, Some(c.id.uuid())));
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        self.scan(move |c| {
            let mut query = c.prepare_cached(&format!(
                "{SUMMARY_QUERY} AND (c.last_activity < ?2 OR (c.last_activity = ?2 AND \
                 (?3 IS NULL OR c.id > ?3))) ORDER BY c.last_activity DESC, c.id LIMIT ?4"
            ))?;
            let rows = query.query_map(params![user.uuid(), at, id, limit], summary_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn insert_message(&self, message: Message, log: Event) -> Result<Inserted, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| insert(conn, outbox, message, &log))
            .await
    }

    async fn history(
        &self,
        chat: ChatId,
        before: Option<TimeUuid>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let (ts, id) = match before {
            Some(t) => (t.ticks() as i64, t.uuid()),
            None => (i64::MAX, Uuid::max()),
        };
        self.page(OLDER_PAGE, chat, ts, id, limit).await
    }

    async fn catch_up(
        &self,
        chat: ChatId,
        after: TimeUuid,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.page(NEWER_PAGE, chat, after.ticks() as i64, after.uuid(), limit)
            .await
    }

    async fn add_member(
        &self,
        member: Member,
        event: TimelineEvent,
        limit: usize,
    ) -> Result<Added, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| add_member(conn, outbox, &member, &event, limit))
            .await
    }

    async fn remove_member(&self, event: TimelineEvent) -> Result<Changed, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| remove_member(conn, outbox, &event))
            .await
    }

    async fn rename(&self, event: TimelineEvent) -> Result<Changed, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| rename(conn, outbox, &event))
            .await
    }

    async fn set_role(&self, chat: ChatId, user: UserId, role: Role) -> Result<bool, StoreError> {
        self.write
            .write(move |conn| set_role(conn, chat, user, role))
            .await
    }

    async fn mark_read(
        &self,
        chat: ChatId,
        user: UserId,
        message: TimeUuid,
    ) -> Result<ReadMark, StoreError> {
        let outbox = self.outbox;
        self.write
            .write(move |conn| mark_read(conn, outbox, chat, user, message))
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

#[cfg(test)]
mod tests {
    use super::*;
    use chat_events::TimeUuidGenerator;

    /// A `chat.db` written by a build before groups keeps its chats and
    /// messages: members, sequence numbers, previews and client ids carry
    /// over, and nothing old shows as unread.
    #[tokio::test]
    async fn a_schema_1_database_upgrades_with_its_chats_and_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        embedded_db::migrate(&path, &MIGRATIONS[..1])
            .await
            .expect("schema 1");
        let (a, b) = (UserId::from(Uuid::new_v4()), UserId::from(Uuid::new_v4()));
        let chat = chat_events::chat_id(a, b);
        let ids = TimeUuidGenerator::new();
        let sent: Vec<TimeUuid> = (0..3).map(|_| ids.next()).collect();
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute(
                "INSERT INTO chats (id, user_a, user_a_name, user_b, user_b_name, created_at, \
                 last_activity, last_message_id) VALUES (?1, ?2, 'alice', ?3, 'bob', 1, ?4, ?5)",
                params![
                    chat.uuid(),
                    a.uuid(),
                    b.uuid(),
                    sent[2].unix_millis(),
                    sent[2].uuid()
                ],
            )
            .expect("chat");
            for (i, id) in sent.iter().enumerate() {
                let (from, to) = if i == 1 { (b, a) } else { (a, b) };
                conn.execute(
                    "INSERT INTO messages (chat_id, ts, id, sender_id, recipient_id, text, \
                     client_message_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        chat.uuid(),
                        id.ticks() as i64,
                        id.uuid(),
                        from.uuid(),
                        to.uuid(),
                        format!("old {i}"),
                        format!("c-{i}")
                    ],
                )
                .expect("message");
            }
        }
        let store = SqliteStore::open(dir.path(), WalLimit::default())
            .await
            .expect("upgrade");
        let history = store.history(chat, None, 10).await.expect("history");
        let texts: Vec<&str> = history
            .iter()
            .filter_map(|i| i.message().map(|m| m.text.as_str()))
            .collect();
        assert_eq!(texts, ["old 2", "old 1", "old 0"]);
        let listed = store.chats_of(a, ChatsPage::ALL).await.expect("list");
        assert_eq!(listed.len(), 1);
        let summary = &listed[0];
        assert_eq!(summary.chat.kind, ChatKind::Direct);
        assert_eq!(
            summary.other.as_ref().map(|o| (o.id, o.username.as_str())),
            Some((b, "bob"))
        );
        assert_eq!(
            summary
                .last_message
                .as_ref()
                .map(|m| (m.id, m.preview.as_str())),
            Some((sent[2], "old 2"))
        );
        assert_eq!((summary.unread, summary.last_read_id), (0, Some(sent[2])));
        // Old client ids still deduplicate; new messages are numbered on.
        let repeat = Message {
            id: ids.next(),
            chat_id: chat,
            sender_id: b,
            text: MessageText::parse("again".into()).expect("text"),
            client_message_id: Some(ClientMessageId::parse("c-1".into()).expect("id")),
            reply_to: None,
        };
        let event = Event::Message(repeat.event(ChatKind::Direct, Some(a)));
        let outcome = store
            .insert_message(repeat.clone(), event.clone())
            .await
            .expect("insert");
        assert!(matches!(outcome, Inserted::Existing(m) if m.id == sent[1]));
        let new = Message {
            client_message_id: None,
            ..repeat
        };
        store.insert_message(new, event).await.expect("insert");
        assert_eq!(
            store.chats_of(a, ChatsPage::ALL).await.expect("list")[0].unread,
            1
        );
        assert_eq!(store.members(chat).await.expect("members").len(), 2);
    }
}
