//! Cassandra / ScyllaDB store through the `scylla` driver.
//!
//! Schema (`migrations/cql/schema.cql`, created at start-up when missing):
//! - `timeline`: messages and events, partition `(chat_id, bucket)`,
//!   clustered by `id timeuuid` descending. `bucket` is the item's time
//!   divided by the bucket length (default one day), so no partition grows
//!   without bound, however long a group lives.
//! - `chat_buckets`: per chat, the buckets that hold items (descending), so
//!   history and catch-up skip empty days instead of probing them.
//! - `chats`: kind, title, a direct chat's pair, the member count and the
//!   message count (both changed by lightweight transactions: the member
//!   limit holds under concurrent adds, and messages are numbered 1, 2, 3…
//!   for exact unread counts), and the newest message for the chat list.
//! - `chat_members`: one partition per chat (bounded by the member limit),
//!   with roles and read horizons; `user_chats`: each user's chat ids.
//! - `client_ids`: `(chat, sender, client_message_id) → message id`, claimed
//!   with a lightweight transaction (`IF NOT EXISTS`), which makes the
//!   idempotency check race-free across replicas.
//!
//! The send path reads one member row (the sender's), never the member
//! list. `GET /chats` reads the user's `user_chats` partition and then the
//! chats and the user's member rows with bounded `IN` queries, concurrent:
//! a constant number of round trips per 100 chats, not one per chat. A read
//! horizon is written `USING TIMESTAMP` of the message read, so it only
//! moves forward whatever order concurrent writes land in.
//!
//! Without multi-partition transactions, two windows remain, both only
//! after a crash between two writes: a message numbered but not written
//! (unread counts one too many until the member next reads), and a member
//! row claimed but not counted. Membership checks and membership changes
//! made on two replicas at once are not serialised with each other (the
//! embedded store checks inside the write's transaction).
//!
//! ScyllaDB 6.x creates keyspaces with tablets by default, and tablets refuse
//! lightweight transactions before ScyllaDB 2025.4. Where the server knows
//! tablets, the keyspace is created with `tablets = {'enabled': false}`
//! (a ScyllaDB-only option, so it is added only there), and an existing
//! keyspace that uses tablets is refused at start-up with a clear error
//! instead of failing on the first chat.
//!
//! One shared session; every statement is prepared once at start-up, with
//! the configured consistency (LOCAL_QUORUM by default; LWTs use
//! LOCAL_SERIAL). Plain writes are marked idempotent, so the driver may retry
//! them: rewriting a message with the same id and values changes nothing.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chat_events::{ChatId, Event, TimeUuid, UserId};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlTimeuuid, CqlValue, Row};
use uuid::Uuid;

use super::{
    preview, Added, Changed, Chat, ChatEventType, ChatKind, ChatSummary, ChatsPage, Inserted, Item,
    LastMessage, Member, Message, MessageStore, NewChat, ReadMark, Role, StoreError, TimelineEvent,
    UNREAD_CAP,
};
use crate::domain::{ClientMessageId, MessageText};

/// Settings of the CQL store.
#[derive(Debug, Clone)]
pub struct CqlSettings {
    pub contact_points: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    pub consistency: Consistency,
    pub bucket: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The one conversion of the driver's errors: each becomes
/// [`StoreError::Cql`] with its message, so `?` works on every call.
macro_rules! from_driver_errors {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Cql(e.to_string())
            }
        }
    )*};
}

from_driver_errors!(
    scylla::errors::ExecutionError,
    scylla::errors::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::DeserializationError,
    scylla::errors::MaybeFirstRowError,
);

/// Parses `one`, `quorum`, `local-quorum`, `all`… (case-insensitive).
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => return Err(format!("unknown consistency {other:?}")),
    })
}

/// `CREATE KEYSPACE` for the store; `tablets_option` adds ScyllaDB's
/// `tablets = {'enabled': false}` (lightweight transactions need vnodes
/// before ScyllaDB 2025.4; Cassandra rejects the option).
pub fn keyspace_ddl(keyspace: &str, replication_factor: u32, tablets_option: bool) -> String {
    let mut ddl = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
    );
    if tablets_option {
        ddl.push_str(" AND tablets = {'enabled': false}");
    }
    ddl
}

/// The tables, all in `migrations/cql/schema.cql`.
const SCHEMA: &str = include_str!("../../migrations/cql/schema.cql");

/// The `CREATE TABLE` statements of [`SCHEMA`] for `keyspace`, in order.
pub fn table_ddl(keyspace: &str) -> Vec<String> {
    let text: String = SCHEMA
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(|statement| statement.replace("{ks}", keyspace))
        .collect()
}

/// Whether the server has tablets (ScyllaDB 6.0 and later): its
/// `system_schema.scylla_keyspaces` table has an `initial_tablets` column.
/// Cassandra has no such table, and the query returns nothing there.
async fn server_has_tablets(session: &Session) -> anyhow::Result<bool> {
    has_column(
        session,
        "system_schema",
        "scylla_keyspaces",
        "initial_tablets",
    )
    .await
}

/// Whether `keyspace.table` exists with a column `column`.
async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> anyhow::Result<bool> {
    let what = || format!("reading the columns of {keyspace}.{table}");
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? \
             AND table_name = ?",
            (keyspace, table),
        )
        .await
        .with_context(what)?
        .into_rows_result()
        .with_context(what)?;
    let mut found = false;
    for row in rows.rows::<(String,)>().with_context(what)? {
        found |= row.with_context(what)?.0 == column;
    }
    Ok(found)
}

/// Fails when `keyspace` already exists with tablets enabled: lightweight
/// transactions would fail on every chat.
async fn refuse_tablets_keyspace(session: &Session, keyspace: &str) -> anyhow::Result<()> {
    let rows = session
        .query_unpaged(
            "SELECT initial_tablets FROM system_schema.scylla_keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .context("reading the keyspace's tablets setting")?
        .into_rows_result()
        .context("reading the keyspace's tablets setting")?;
    for row in rows.rows::<(Option<i32>,)>().context("keyspace rows")? {
        anyhow::ensure!(
            row.context("keyspace row")?.0.is_none(),
            "keyspace {keyspace} uses tablets, which refuse the lightweight transactions this \
             store needs (before ScyllaDB 2025.4): recreate it with tablets = {{'enabled': false}}"
        );
    }
    Ok(())
}

/// Every prepared statement of the store.
struct Statements {
    insert_chat: PreparedStatement,
    select_chat: PreparedStatement,
    select_chats: PreparedStatement,
    select_seq: PreparedStatement,
    next_seq: PreparedStatement,
    set_member_count: PreparedStatement,
    set_title: PreparedStatement,
    touch_chat: PreparedStatement,
    insert_member: PreparedStatement,
    claim_member: PreparedStatement,
    select_member: PreparedStatement,
    select_members: PreparedStatement,
    select_member_of_chats: PreparedStatement,
    delete_member_if_exists: PreparedStatement,
    delete_member: PreparedStatement,
    set_role: PreparedStatement,
    set_read: PreparedStatement,
    insert_user_chat: PreparedStatement,
    delete_user_chat: PreparedStatement,
    select_user_chats: PreparedStatement,
    claim_client_id: PreparedStatement,
    select_client_id: PreparedStatement,
    insert_item: PreparedStatement,
    insert_bucket: PreparedStatement,
    select_item: PreparedStatement,
    buckets_down: PreparedStatement,
    buckets_up: PreparedStatement,
    page_down: PreparedStatement,
    page_down_before: PreparedStatement,
    page_up: PreparedStatement,
    page_up_after: PreparedStatement,
}

pub struct CqlStore {
    session: Session,
    bucket_ms: i64,
    q: Statements,
}

/// Chats looked up per `IN` query by [`CqlStore::chats_of`].
const CHATS_PER_QUERY: usize = 100;
/// Buckets listed per query while paging a timeline.
const BUCKETS_PER_QUERY: usize = 64;
/// Tries of a lightweight transaction that lost a race before giving up.
const LWT_TRIES: usize = 32;

const CHAT_COLUMNS: &str = "chat_id, kind, title, created_at, user_a, user_a_name, user_b, \
     user_b_name, member_count, message_seq, last_activity, last_message_id, last_sender_id, \
     last_preview";

/// A `chats` row ([`CHAT_COLUMNS`]).
type ChatRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<Uuid>,
    Option<String>,
    Option<Uuid>,
    Option<String>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<CqlTimeuuid>,
    Option<Uuid>,
    Option<String>,
);

/// A chat as the store keeps it, before it is seen by one member.
struct StoredChat {
    chat: Chat,
    /// A direct chat's two members (id, name).
    pair: Option<[(UserId, String); 2]>,
    message_seq: i64,
    last_activity: i64,
    last_message: Option<LastMessage>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn time_uuid(t: CqlTimeuuid) -> Result<TimeUuid, StoreError> {
    TimeUuid::from_uuid(t.into()).map_err(corrupt)
}

fn stored_chat(row: ChatRow) -> Result<StoredChat, StoreError> {
    let (
        id,
        kind,
        title,
        created_at,
        a,
        a_name,
        b,
        b_name,
        count,
        seq,
        activity,
        last,
        sender,
        text,
    ) = row;
    let kind = match kind.as_deref() {
        Some("group") => ChatKind::Group,
        Some("direct") => ChatKind::Direct,
        other => return Err(corrupt(format!("chat {id} has kind {other:?}"))),
    };
    let created_at = created_at.unwrap_or_default();
    let pair = match (a, b) {
        (Some(a), Some(b)) => Some([
            (UserId::from_uuid(a), a_name.unwrap_or_default()),
            (UserId::from_uuid(b), b_name.unwrap_or_default()),
        ]),
        _ => None,
    };
    let last_message = match (last, sender) {
        (Some(last), Some(sender)) => Some(LastMessage {
            id: time_uuid(last)?,
            sender_id: UserId::from_uuid(sender),
            preview: text.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(StoredChat {
        chat: Chat {
            id: ChatId::from_uuid(id),
            kind,
            title,
            created_at,
            member_count: count.unwrap_or_default().max(0) as usize,
        },
        pair,
        message_seq: seq.unwrap_or_default(),
        last_activity: activity.unwrap_or(created_at),
        last_message,
    })
}

impl StoredChat {
    /// The chat as `user` sees it, with their read horizon.
    fn summary_for(
        self,
        user: UserId,
        read_seq: i64,
        last_read_id: Option<TimeUuid>,
    ) -> ChatSummary {
        let other = self.pair.and_then(|pair| {
            pair.into_iter()
                .find(|(id, _)| *id != user)
                .map(|(id, username)| Member {
                    id,
                    username,
                    role: Role::Member,
                    joined_at: self.chat.created_at,
                    last_read_id: None,
                })
        });
        ChatSummary {
            unread: ((self.message_seq - read_seq).max(0) as u64).min(UNREAD_CAP),
            last_read_id,
            last_activity: self.last_activity,
            last_message: self.last_message,
            other,
            chat: self.chat,
        }
    }
}

const MEMBER_COLUMNS: &str = "user_id, username, role, joined_at, read_seq, last_read_id";

/// A `chat_members` row ([`MEMBER_COLUMNS`]).
type MemberRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<CqlTimeuuid>,
);

/// A member and their `read_seq`; `None` for a row without a role (only a
/// late read-horizon write of someone who has left).
fn member_of_row(row: MemberRow) -> Result<Option<(Member, i64)>, StoreError> {
    let (id, username, role, joined_at, read_seq, last_read) = row;
    let Some(role) = role else {
        return Ok(None);
    };
    let role = Role::parse(&role).ok_or_else(|| corrupt(format!("role {role:?}")))?;
    Ok(Some((
        Member {
            id: UserId::from_uuid(id),
            username: username.unwrap_or_default(),
            role,
            joined_at: joined_at.unwrap_or_default(),
            last_read_id: last_read.map(time_uuid).transpose()?,
        },
        read_seq.unwrap_or_default(),
    )))
}

const ITEM_COLUMNS: &str =
    "id, type, sender_id, text, client_message_id, reply_to, user_id, members, seq";

/// A `timeline` row ([`ITEM_COLUMNS`]).
type ItemRow = (
    CqlTimeuuid,
    String,
    Uuid,
    Option<String>,
    Option<String>,
    Option<CqlTimeuuid>,
    Option<Uuid>,
    Option<Vec<Uuid>>,
    Option<i64>,
);

/// An item and, for a message, its `seq`.
fn item_of_row(row: ItemRow, chat: ChatId) -> Result<(Item, Option<i64>), StoreError> {
    let (id, kind, sender, text, client_id, reply_to, user, members, seq) = row;
    let id = time_uuid(id)?;
    let sender = UserId::from_uuid(sender);
    if kind == "message" {
        return Ok((
            Item::Message(Message {
                id,
                chat_id: chat,
                sender_id: sender,
                text: MessageText::stored(text.unwrap_or_default()),
                client_message_id: client_id.map(ClientMessageId::stored),
                reply_to: reply_to.map(time_uuid).transpose()?,
            }),
            seq,
        ));
    }
    let event = ChatEventType::from_timeline_name(&kind)
        .ok_or_else(|| corrupt(format!("timeline type {kind:?}")))?;
    Ok((
        Item::Event(TimelineEvent {
            id,
            chat_id: chat,
            kind: event,
            actor_id: sender,
            user_id: user.map(UserId::from_uuid),
            title: text,
            members: members
                .unwrap_or_default()
                .into_iter()
                .map(UserId::from_uuid)
                .collect(),
        }),
        None,
    ))
}

/// Microseconds since the Unix epoch of a TimeUUID: the write timestamp of
/// a read horizon, so the newest one wins.
fn micros(id: TimeUuid) -> i64 {
    (id.ticks()
        .saturating_sub(chat_events::timeuuid::GREGORIAN_OFFSET)
        / 10) as i64
}

impl CqlStore {
    pub async fn connect(settings: &CqlSettings) -> anyhow::Result<Self> {
        let mut builder = SessionBuilder::new().known_nodes(&settings.contact_points);
        if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
            builder = builder.user(user, pass);
        }
        let session = builder
            .build()
            .await
            .context("connecting to Cassandra/ScyllaDB")?;
        let ks = &settings.keyspace;
        anyhow::ensure!(
            !ks.is_empty() && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "keyspace names are letters, digits and '_'"
        );
        let tablets = server_has_tablets(&session).await?;
        let schema = std::iter::once(keyspace_ddl(ks, settings.replication_factor, tablets))
            .chain(table_ddl(ks));
        for ddl in schema {
            session
                .query_unpaged(ddl.as_str(), &[])
                .await
                .with_context(|| ddl.clone())?;
        }
        session
            .await_schema_agreement()
            .await
            .context("schema agreement")?;
        if tablets {
            refuse_tablets_keyspace(&session, ks).await?;
        }
        refuse_schema_1(&session, ks).await?;

        let c = settings.consistency;
        let prepare = |text: String, idempotent: bool| {
            let session = &session;
            async move {
                let mut p = session
                    .prepare(text.as_str())
                    .await
                    .with_context(|| format!("preparing {text}"))?;
                p.set_consistency(c);
                p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
                p.set_is_idempotent(idempotent);
                anyhow::Ok(p)
            }
        };
        // Reads of what lightweight transactions decide: not a stale replica.
        let serial_read = |text: String| {
            let prepare = &prepare;
            async move {
                let mut p = prepare(text, true).await?;
                p.set_consistency(Consistency::LocalSerial);
                anyhow::Ok(p)
            }
        };
        let q = Statements {
            insert_chat: prepare(
                format!(
                    "INSERT INTO {ks}.chats (chat_id, kind, title, created_at, user_a, user_a_name, \
                     user_b, user_b_name, member_count, message_seq, last_activity) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            select_chat: prepare(
                format!("SELECT {CHAT_COLUMNS} FROM {ks}.chats WHERE chat_id = ?"),
                true,
            )
            .await?,
            select_chats: prepare(
                format!("SELECT {CHAT_COLUMNS} FROM {ks}.chats WHERE chat_id IN ?"),
                true,
            )
            .await?,
            select_seq: serial_read(format!(
                "SELECT message_seq, member_count FROM {ks}.chats WHERE chat_id = ?"
            ))
            .await?,
            next_seq: prepare(
                format!(
                    "UPDATE {ks}.chats SET message_seq = ?, last_activity = ?, last_message_id = ?, \
                     last_sender_id = ?, last_preview = ? WHERE chat_id = ? IF message_seq = ?"
                ),
                false,
            )
            .await?,
            set_member_count: prepare(
                format!(
                    "UPDATE {ks}.chats SET member_count = ? WHERE chat_id = ? IF member_count = ?"
                ),
                false,
            )
            .await?,
            set_title: prepare(
                format!("UPDATE {ks}.chats SET title = ? WHERE chat_id = ?"),
                true,
            )
            .await?,
            touch_chat: prepare(
                format!("UPDATE {ks}.chats USING TIMESTAMP ? SET last_activity = ? WHERE chat_id = ?"),
                true,
            )
            .await?,
            insert_member: prepare(
                format!(
                    "INSERT INTO {ks}.chat_members (chat_id, user_id, username, role, joined_at, \
                     read_seq) VALUES (?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            claim_member: prepare(
                format!(
                    "INSERT INTO {ks}.chat_members (chat_id, user_id, username, role, joined_at, \
                     read_seq) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            select_member: prepare(
                format!(
                    "SELECT {MEMBER_COLUMNS} FROM {ks}.chat_members WHERE chat_id = ? AND user_id = ?"
                ),
                true,
            )
            .await?,
            select_members: prepare(
                format!("SELECT {MEMBER_COLUMNS} FROM {ks}.chat_members WHERE chat_id = ?"),
                true,
            )
            .await?,
            select_member_of_chats: prepare(
                format!(
                    "SELECT chat_id, {MEMBER_COLUMNS} FROM {ks}.chat_members \
                     WHERE chat_id IN ? AND user_id = ?"
                ),
                true,
            )
            .await?,
            delete_member_if_exists: prepare(
                format!(
                    "DELETE FROM {ks}.chat_members WHERE chat_id = ? AND user_id = ? IF EXISTS"
                ),
                false,
            )
            .await?,
            delete_member: prepare(
                format!("DELETE FROM {ks}.chat_members WHERE chat_id = ? AND user_id = ?"),
                true,
            )
            .await?,
            set_role: prepare(
                format!(
                    "UPDATE {ks}.chat_members SET role = ? WHERE chat_id = ? AND user_id = ?"
                ),
                true,
            )
            .await?,
            set_read: prepare(
                format!(
                    "UPDATE {ks}.chat_members USING TIMESTAMP ? SET read_seq = ?, last_read_id = ? \
                     WHERE chat_id = ? AND user_id = ?"
                ),
                true,
            )
            .await?,
            insert_user_chat: prepare(
                format!("INSERT INTO {ks}.user_chats (user_id, chat_id) VALUES (?, ?)"),
                true,
            )
            .await?,
            delete_user_chat: prepare(
                format!("DELETE FROM {ks}.user_chats WHERE user_id = ? AND chat_id = ?"),
                true,
            )
            .await?,
            select_user_chats: prepare(
                format!("SELECT chat_id FROM {ks}.user_chats WHERE user_id = ?"),
                true,
            )
            .await?,
            claim_client_id: prepare(
                format!(
                    "INSERT INTO {ks}.client_ids (chat_id, sender_id, client_message_id, message_id) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            select_client_id: serial_read(format!(
                "SELECT message_id FROM {ks}.client_ids \
                 WHERE chat_id = ? AND sender_id = ? AND client_message_id = ?"
            ))
            .await?,
            insert_item: prepare(
                format!(
                    "INSERT INTO {ks}.timeline (chat_id, bucket, id, type, sender_id, text, \
                     client_message_id, reply_to, user_id, members, seq) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            insert_bucket: prepare(
                format!("INSERT INTO {ks}.chat_buckets (chat_id, bucket) VALUES (?, ?)"),
                true,
            )
            .await?,
            select_item: prepare(
                format!(
                    "SELECT {ITEM_COLUMNS} FROM {ks}.timeline WHERE chat_id = ? AND bucket = ? AND id = ?"
                ),
                true,
            )
            .await?,
            buckets_down: prepare(
                format!(
                    "SELECT bucket FROM {ks}.chat_buckets WHERE chat_id = ? AND bucket <= ? \
                     LIMIT {BUCKETS_PER_QUERY}"
                ),
                true,
            )
            .await?,
            buckets_up: prepare(
                format!(
                    "SELECT bucket FROM {ks}.chat_buckets WHERE chat_id = ? AND bucket >= ? \
                     ORDER BY bucket ASC LIMIT {BUCKETS_PER_QUERY}"
                ),
                true,
            )
            .await?,
            page_down: prepare(
                format!(
                    "SELECT {ITEM_COLUMNS} FROM {ks}.timeline WHERE chat_id = ? AND bucket = ? LIMIT ?"
                ),
                true,
            )
            .await?,
            page_down_before: prepare(
                format!(
                    "SELECT {ITEM_COLUMNS} FROM {ks}.timeline WHERE chat_id = ? AND bucket = ? \
                     AND id < ? LIMIT ?"
                ),
                true,
            )
            .await?,
            page_up: prepare(
                format!(
                    "SELECT {ITEM_COLUMNS} FROM {ks}.timeline WHERE chat_id = ? AND bucket = ? \
                     ORDER BY id ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            page_up_after: prepare(
                format!(
                    "SELECT {ITEM_COLUMNS} FROM {ks}.timeline WHERE chat_id = ? AND bucket = ? \
                     AND id > ? ORDER BY id ASC LIMIT ?"
                ),
                true,
            )
            .await?,
        };
        Ok(Self {
            bucket_ms: settings.bucket.as_millis().max(1) as i64,
            q,
            session,
        })
    }

    fn bucket_of(&self, id: TimeUuid) -> i64 {
        id.unix_millis().div_euclid(self.bucket_ms)
    }

    async fn stored_chat(&self, id: ChatId) -> Result<Option<StoredChat>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.q.select_chat, (id.uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<ChatRow>()?;
        row.map(stored_chat).transpose()
    }

    /// The member and their `read_seq`, if `user` is a member of `chat`.
    async fn member(
        &self,
        chat: ChatId,
        user: UserId,
    ) -> Result<Option<(Member, i64)>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.q.select_member, (chat.uuid(), user.uuid()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<MemberRow>()?;
        Ok(row.map(member_of_row).transpose()?.flatten())
    }

    async fn member_list(&self, chat: ChatId) -> Result<Vec<Member>, StoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.q.select_members, (chat.uuid(),))
            .await?
            .into_rows_result()?;
        let mut members = Vec::new();
        for row in rows.rows::<MemberRow>()? {
            if let Some((member, _)) = member_of_row(row?)? {
                members.push(member);
            }
        }
        members.sort_by_key(|m| (m.joined_at, std::cmp::Reverse(m.role), m.id));
        Ok(members)
    }

    async fn member_ids(&self, chat: ChatId) -> Result<Vec<UserId>, StoreError> {
        Ok(self
            .member_list(chat)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    /// The message count and member count of `chat`, as the lightweight
    /// transactions left them.
    async fn counts(&self, chat: ChatId) -> Result<(i64, i32), StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.q.select_seq, (chat.uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>, Option<i32>)>()?
            .ok_or_else(|| corrupt(format!("chat {chat} has no row")))?;
        Ok((row.0.unwrap_or_default(), row.1.unwrap_or_default()))
    }

    async fn item(
        &self,
        chat: ChatId,
        id: TimeUuid,
    ) -> Result<Option<(Item, Option<i64>)>, StoreError> {
        let row = self
            .session
            .execute_unpaged(
                &self.q.select_item,
                (
                    chat.uuid(),
                    self.bucket_of(id),
                    CqlTimeuuid::from(id.uuid()),
                ),
            )
            .await?
            .into_rows_result()?
            .maybe_first_row::<ItemRow>()?;
        row.map(|r| item_of_row(r, chat)).transpose()
    }

    /// Claims the client id for `m`; returns the id that owns it.
    async fn claim(&self, m: &Message, client_id: &str) -> Result<TimeUuid, StoreError> {
        let (chat, sender) = (m.chat_id.uuid(), m.sender_id.uuid());
        let result = self
            .session
            .execute_unpaged(
                &self.q.claim_client_id,
                (chat, sender, client_id, CqlTimeuuid::from(m.id.uuid())),
            )
            .await?
            .into_rows_result()?;
        if lwt_applied(&result)? {
            return Ok(m.id);
        }
        let owner = self
            .session
            .execute_unpaged(&self.q.select_client_id, (chat, sender, client_id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(CqlTimeuuid,)>()?
            .ok_or_else(|| StoreError::Cql("client id claimed but not readable".into()))?;
        time_uuid(owner.0)
    }

    /// Stores a timeline item and its bucket.
    async fn write_item(&self, item: &Item, seq: Option<i64>) -> Result<(), StoreError> {
        let id = item.id();
        let bucket = self.bucket_of(id);
        let values = match item {
            Item::Message(m) => (
                m.chat_id.uuid(),
                bucket,
                CqlTimeuuid::from(id.uuid()),
                "message",
                m.sender_id.uuid(),
                Some(m.text.as_str()),
                m.client_message_id.as_ref().map(ClientMessageId::as_str),
                m.reply_to.map(|r| CqlTimeuuid::from(r.uuid())),
                None::<Uuid>,
                None::<Vec<Uuid>>,
                seq,
            ),
            Item::Event(e) => (
                e.chat_id.uuid(),
                bucket,
                CqlTimeuuid::from(id.uuid()),
                e.kind.timeline_name(),
                e.actor_id.uuid(),
                e.title.as_deref(),
                None,
                None,
                e.user_id.map(UserId::uuid),
                (!e.members.is_empty()).then(|| e.members.iter().map(|m| m.uuid()).collect()),
                None,
            ),
        };
        let chat = values.0;
        self.session
            .execute_unpaged(&self.q.insert_item, values)
            .await?;
        self.session
            .execute_unpaged(&self.q.insert_bucket, (chat, bucket))
            .await?;
        Ok(())
    }

    /// Stores a timeline event and counts it as the chat's activity.
    async fn write_event(&self, e: &TimelineEvent) -> Result<(), StoreError> {
        self.write_item(&Item::Event(e.clone()), None).await?;
        self.session
            .execute_unpaged(
                &self.q.touch_chat,
                (micros(e.id), e.id.unix_millis(), e.chat_id.uuid()),
            )
            .await?;
        Ok(())
    }

    /// Numbers a new message: the chat's `message_seq` moves from n to n+1
    /// in one lightweight transaction, which also records it as the newest
    /// message. Returns n+1.
    async fn number(&self, m: &Message) -> Result<i64, StoreError> {
        let chat = m.chat_id.uuid();
        let (mut seq, _) = self.counts(m.chat_id).await?;
        for _ in 0..LWT_TRIES {
            let result = self
                .session
                .execute_unpaged(
                    &self.q.next_seq,
                    (
                        seq + 1,
                        m.id.unix_millis(),
                        CqlTimeuuid::from(m.id.uuid()),
                        m.sender_id.uuid(),
                        preview(m.text.as_str()),
                        chat,
                        seq,
                    ),
                )
                .await?
                .into_rows_result()?;
            match lwt_outcome(&result)? {
                (true, _) => return Ok(seq + 1),
                (false, current) => seq = current.unwrap_or_default(),
            }
        }
        Err(StoreError::Unavailable(format!(
            "chat {} is too contended to number a message",
            m.chat_id
        )))
    }

    /// Changes the member count by `delta` unless it would pass `limit`;
    /// returns whether it changed.
    async fn count_members(
        &self,
        chat: ChatId,
        delta: i32,
        limit: usize,
    ) -> Result<bool, StoreError> {
        let (_, mut count) = self.counts(chat).await?;
        for _ in 0..LWT_TRIES {
            if delta > 0 && (count.max(0) as usize) + (delta as usize) > limit {
                return Ok(false);
            }
            let result = self
                .session
                .execute_unpaged(
                    &self.q.set_member_count,
                    ((count + delta).max(0), chat.uuid(), count),
                )
                .await?
                .into_rows_result()?;
            match lwt_outcome(&result)? {
                (true, _) => return Ok(true),
                (false, current) => count = current.unwrap_or_default() as i32,
            }
        }
        Err(StoreError::Unavailable(format!(
            "chat {chat}'s members are too contended to change"
        )))
    }

    async fn set_read(
        &self,
        chat: ChatId,
        user: UserId,
        seq: i64,
        message: TimeUuid,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.q.set_read,
                (
                    micros(message),
                    seq,
                    CqlTimeuuid::from(message.uuid()),
                    chat.uuid(),
                    user.uuid(),
                ),
            )
            .await?;
        Ok(())
    }

    /// Pages a timeline across its buckets: newest first below `from`
    /// (`up` false), or oldest first above it (`up` true).
    async fn page(
        &self,
        chat_id: ChatId,
        from: Option<TimeUuid>,
        up: bool,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let chat = chat_id.uuid();
        let start = match (from, up) {
            (Some(t), _) => self.bucket_of(t),
            (None, false) => i64::MAX,
            (None, true) => i64::MIN,
        };
        let mut out: Vec<Item> = Vec::with_capacity(limit);
        let mut next = start;
        'buckets: loop {
            let listing = if up {
                &self.q.buckets_up
            } else {
                &self.q.buckets_down
            };
            let buckets = self
                .session
                .execute_unpaged(listing, (chat, next))
                .await?
                .into_rows_result()?;
            let mut found: Vec<i64> = Vec::new();
            for b in buckets.rows::<(i64,)>()? {
                found.push(b?.0);
            }
            if found.is_empty() {
                break;
            }
            for bucket in &found {
                let want = (limit - out.len()) as i32;
                let result = match from {
                    Some(t) if *bucket == start => {
                        let stmt = if up {
                            &self.q.page_up_after
                        } else {
                            &self.q.page_down_before
                        };
                        self.session
                            .execute_unpaged(
                                stmt,
                                (chat, *bucket, CqlTimeuuid::from(t.uuid()), want),
                            )
                            .await
                    }
                    _ => {
                        let stmt = if up {
                            &self.q.page_up
                        } else {
                            &self.q.page_down
                        };
                        self.session
                            .execute_unpaged(stmt, (chat, *bucket, want))
                            .await
                    }
                }?
                .into_rows_result()?;
                for row in result.rows::<ItemRow>()? {
                    out.push(item_of_row(row?, chat_id)?.0);
                }
                if out.len() >= limit {
                    break 'buckets;
                }
            }
            match found.last() {
                Some(&last) if found.len() == BUCKETS_PER_QUERY => {
                    next = if up { last + 1 } else { last - 1 }
                }
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}

/// Fails when `keyspace` holds the tables of a build before groups (schema
/// 1: `chats` without `kind`): their rows are not read by this build.
async fn refuse_schema_1(session: &Session, keyspace: &str) -> anyhow::Result<()> {
    let has_kind = has_column(session, keyspace, "chats", "kind").await?;
    anyhow::ensure!(
        has_kind,
        "keyspace {keyspace} was created by a build without group chats (its chats table has no \
         kind column): point --cql-keyspace at a new keyspace"
    );
    Ok(())
}

/// The `[applied]` column of an LWT result and, when it was not applied,
/// the current value of the column its condition tested (the second one).
fn lwt_outcome(
    rows: &scylla::response::query_result::QueryRowsResult,
) -> Result<(bool, Option<i64>), StoreError> {
    let row = rows
        .maybe_first_row::<Row>()?
        .ok_or_else(|| StoreError::Cql("LWT returned no row".into()))?;
    let applied = match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => *applied,
        other => return Err(StoreError::Cql(format!("unexpected LWT result {other:?}"))),
    };
    let current = match row.columns.get(1) {
        Some(Some(CqlValue::BigInt(v))) => Some(*v),
        Some(Some(CqlValue::Int(v))) => Some(i64::from(*v)),
        _ => None,
    };
    Ok((applied, current))
}

/// The `[applied]` column of an LWT result.
fn lwt_applied(rows: &scylla::response::query_result::QueryRowsResult) -> Result<bool, StoreError> {
    Ok(lwt_outcome(rows)?.0)
}

#[async_trait]
impl MessageStore for CqlStore {
    async fn create_chat(&self, new: NewChat, _log: Event) -> Result<bool, StoreError> {
        let chat = &new.chat;
        let pair = match (chat.kind, new.members.as_slice()) {
            (ChatKind::Direct, [a, b]) => Some((a, b)),
            _ => None,
        };
        let result = self
            .session
            .execute_unpaged(
                &self.q.insert_chat,
                (
                    chat.id.uuid(),
                    chat.kind.as_str(),
                    chat.title.as_deref(),
                    chat.created_at,
                    pair.map(|(a, _)| a.id.uuid()),
                    pair.map(|(a, _)| a.username.as_str()),
                    pair.map(|(_, b)| b.id.uuid()),
                    pair.map(|(_, b)| b.username.as_str()),
                    new.members.len() as i32,
                    chat.created_at,
                ),
            )
            .await?
            .into_rows_result()?;
        let created = lwt_applied(&result)?;
        // A retry completes what an interrupted creation left out, without
        // touching members that are already stored.
        for member in &new.members {
            if !created && self.member(chat.id, member.id).await?.is_some() {
                continue;
            }
            self.session
                .execute_unpaged(
                    &self.q.insert_member,
                    (
                        chat.id.uuid(),
                        member.id.uuid(),
                        &member.username,
                        member.role.as_str(),
                        member.joined_at,
                        0_i64,
                    ),
                )
                .await?;
            self.session
                .execute_unpaged(&self.q.insert_user_chat, (member.id.uuid(), chat.id.uuid()))
                .await?;
        }
        if let Some(event) = &new.event {
            self.write_event(event).await?;
        }
        Ok(created)
    }

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError> {
        Ok(self.stored_chat(id).await?.map(|s| s.chat))
    }

    async fn membership(
        &self,
        chat: ChatId,
        user: UserId,
    ) -> Result<Option<(Chat, Member)>, StoreError> {
        let (stored, member) =
            futures::future::try_join(self.stored_chat(chat), self.member(chat, user)).await?;
        Ok(match (stored, member) {
            (Some(s), Some((member, _))) => Some((s.chat, member)),
            _ => None,
        })
    }

    async fn members(&self, chat: ChatId) -> Result<Vec<Member>, StoreError> {
        self.member_list(chat).await
    }

    async fn chat_summary(
        &self,
        user: UserId,
        id: ChatId,
    ) -> Result<Option<ChatSummary>, StoreError> {
        let (stored, member) =
            futures::future::try_join(self.stored_chat(id), self.member(id, user)).await?;
        Ok(match (stored, member) {
            (Some(s), Some((member, read_seq))) => {
                Some(s.summary_for(user, read_seq, member.last_read_id))
            }
            _ => None,
        })
    }

    async fn chats_of(
        &self,
        user: UserId,
        page: ChatsPage,
    ) -> Result<Vec<ChatSummary>, StoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.q.select_user_chats, (user.uuid(),))
            .await?
            .into_rows_result()?;
        let mut ids: Vec<Uuid> = Vec::new();
        for row in rows.rows::<(Uuid,)>()? {
            ids.push(row?.0);
        }
        // The chats and the user's membership of each, a bounded `IN` list
        // per query, the queries concurrent (not one round trip per chat).
        let chats = futures::future::try_join_all(
            ids.chunks(CHATS_PER_QUERY)
                .map(|chunk| self.session.execute_unpaged(&self.q.select_chats, (chunk,))),
        );
        let memberships = futures::future::try_join_all(ids.chunks(CHATS_PER_QUERY).map(|chunk| {
            self.session
                .execute_unpaged(&self.q.select_member_of_chats, (chunk, user.uuid()))
        }));
        let (chat_pages, member_pages) = futures::future::try_join(chats, memberships).await?;
        let mut mine = std::collections::HashMap::with_capacity(ids.len());
        for page in member_pages {
            let rows = page.into_rows_result()?;
            type Row = (
                Uuid,
                Uuid,
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<i64>,
                Option<CqlTimeuuid>,
            );
            for row in rows.rows::<Row>()? {
                let (chat, id, username, role, joined_at, read_seq, last_read) = row?;
                if let Some((member, seq)) =
                    member_of_row((id, username, role, joined_at, read_seq, last_read))?
                {
                    mine.insert(chat, (member, seq));
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for page in chat_pages {
            let rows = page.into_rows_result()?;
            for row in rows.rows::<ChatRow>()? {
                let stored = stored_chat(row?)?;
                if let Some((member, seq)) = mine.remove(&stored.chat.id.uuid()) {
                    out.push(stored.summary_for(user, seq, member.last_read_id));
                }
            }
        }
        // No index orders a user's chats by activity: sorted here, then cut
        // to the page (the answer is bounded, this read is not).
        out.sort_by_key(|s| (std::cmp::Reverse(s.last_activity), s.chat.id));
        Ok(out
            .into_iter()
            .filter(|s| page.after.is_none_or(|c| c.precedes(s)))
            .take(page.limit)
            .collect())
    }

    async fn insert_message(&self, m: Message, _log: Event) -> Result<Inserted, StoreError> {
        if self.member(m.chat_id, m.sender_id).await?.is_none() {
            return Err(StoreError::NotMember);
        }
        let mut outcome = Inserted::New(m.clone());
        if let Some(client_id) = m.client_message_id.clone() {
            let owner = self.claim(&m, client_id.as_str()).await?;
            if owner != m.id {
                // Another request claimed this client id. Its message may not
                // be written yet (it may even have crashed after the claim):
                // write it from this request's copy, which carries the same
                // content, so the outcome is one message either way.
                if let Some((Item::Message(existing), _)) = self.item(m.chat_id, owner).await? {
                    return Ok(Inserted::Existing(existing));
                }
                outcome = Inserted::Existing(Message {
                    id: owner,
                    ..m.clone()
                });
            }
        }
        let message = outcome.message().clone();
        if let Some(target) = message.reply_to {
            if !matches!(
                self.item(message.chat_id, target).await?,
                Some((Item::Message(_), _))
            ) {
                return Err(StoreError::NoSuchReply);
            }
        }
        let seq = self.number(&message).await?;
        self.write_item(&Item::Message(message.clone()), Some(seq))
            .await?;
        self.set_read(message.chat_id, message.sender_id, seq, message.id)
            .await?;
        Ok(outcome)
    }

    async fn history(
        &self,
        chat: ChatId,
        before: Option<TimeUuid>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.page(chat, before, false, limit).await
    }

    async fn catch_up(
        &self,
        chat: ChatId,
        after: TimeUuid,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.page(chat, Some(after), true, limit).await
    }

    async fn add_member(
        &self,
        member: Member,
        event: TimelineEvent,
        limit: usize,
    ) -> Result<Added, StoreError> {
        let chat = event.chat_id;
        let (seq, _) = self.counts(chat).await?;
        // Messages before they joined are not unread for them.
        let claimed = self
            .session
            .execute_unpaged(
                &self.q.claim_member,
                (
                    chat.uuid(),
                    member.id.uuid(),
                    &member.username,
                    member.role.as_str(),
                    member.joined_at,
                    seq,
                ),
            )
            .await?
            .into_rows_result()?;
        if !lwt_applied(&claimed)? {
            return Ok(Added::Already);
        }
        if !self.count_members(chat, 1, limit).await? {
            self.session
                .execute_unpaged(&self.q.delete_member, (chat.uuid(), member.id.uuid()))
                .await?;
            return Ok(Added::Full);
        }
        self.session
            .execute_unpaged(&self.q.insert_user_chat, (member.id.uuid(), chat.uuid()))
            .await?;
        self.write_event(&event).await?;
        Ok(Added::Added(self.member_ids(chat).await?))
    }

    async fn remove_member(&self, event: TimelineEvent) -> Result<Changed, StoreError> {
        let chat = event.chat_id;
        let Some(user) = event.user_id else {
            return Ok(Changed::NotMember);
        };
        let Some((gone, _)) = self.member(chat, user).await? else {
            return Ok(Changed::NotMember);
        };
        let deleted = self
            .session
            .execute_unpaged(&self.q.delete_member_if_exists, (chat.uuid(), user.uuid()))
            .await?
            .into_rows_result()?;
        if !lwt_applied(&deleted)? {
            return Ok(Changed::NotMember);
        }
        self.count_members(chat, -1, usize::MAX).await?;
        self.session
            .execute_unpaged(&self.q.delete_user_chat, (user.uuid(), chat.uuid()))
            .await?;
        if gone.role == Role::Owner {
            let members = self.member_list(chat).await?;
            let heir = members
                .iter()
                .find(|m| m.role == Role::Admin)
                .or_else(|| members.first());
            if let Some(heir) = heir {
                self.session
                    .execute_unpaged(&self.q.set_role, ("owner", chat.uuid(), heir.id.uuid()))
                    .await?;
            }
        }
        self.write_event(&event).await?;
        Ok(Changed::Done(self.member_ids(chat).await?))
    }

    async fn rename(&self, event: TimelineEvent) -> Result<Changed, StoreError> {
        let chat = event.chat_id;
        if self.member(chat, event.actor_id).await?.is_none() {
            return Ok(Changed::NotMember);
        }
        self.session
            .execute_unpaged(&self.q.set_title, (event.title.as_deref(), chat.uuid()))
            .await?;
        self.write_event(&event).await?;
        Ok(Changed::Done(self.member_ids(chat).await?))
    }

    async fn set_role(&self, chat: ChatId, user: UserId, role: Role) -> Result<bool, StoreError> {
        if self.member(chat, user).await?.is_none() {
            return Ok(false);
        }
        if role == Role::Owner {
            for owner in self
                .member_list(chat)
                .await?
                .iter()
                .filter(|m| m.role == Role::Owner)
            {
                self.session
                    .execute_unpaged(&self.q.set_role, ("admin", chat.uuid(), owner.id.uuid()))
                    .await?;
            }
        }
        self.session
            .execute_unpaged(&self.q.set_role, (role.as_str(), chat.uuid(), user.uuid()))
            .await?;
        Ok(true)
    }

    async fn mark_read(
        &self,
        chat: ChatId,
        user: UserId,
        message: TimeUuid,
    ) -> Result<ReadMark, StoreError> {
        let Some((_, horizon)) = self.member(chat, user).await? else {
            return Ok(ReadMark::NotMember);
        };
        let Some((Item::Message(_), Some(seq))) = self.item(chat, message).await? else {
            return Ok(ReadMark::NotAMessage);
        };
        if seq <= horizon {
            return Ok(ReadMark::Unchanged);
        }
        self.set_read(chat, user, seq, message).await?;
        Ok(ReadMark::Moved)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", &[])
            .await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "cql"
    }
}

#[cfg(test)]
mod tests {
    use super::{keyspace_ddl, table_ddl};

    #[test]
    fn the_schema_file_gives_each_table_once_in_the_keyspace() {
        let ddl = table_ddl("chat_x");
        let tables: Vec<&str> = ddl
            .iter()
            .map(|d| {
                let rest = d
                    .strip_prefix("CREATE TABLE IF NOT EXISTS chat_x.")
                    .unwrap_or_else(|| panic!("not a table in the keyspace: {d}"));
                &rest[..rest.find(' ').unwrap_or(rest.len())]
            })
            .collect();
        assert_eq!(
            tables,
            [
                "chats",
                "chat_members",
                "user_chats",
                "timeline",
                "chat_buckets",
                "client_ids"
            ]
        );
        assert!(ddl.iter().all(|d| !d.contains("{ks}") && !d.contains("--")));
    }

    #[test]
    fn keyspaces_disable_tablets_only_where_the_server_has_them() {
        let scylla = keyspace_ddl("chat", 3, true);
        assert!(
            scylla.ends_with(" AND tablets = {'enabled': false}"),
            "{scylla}"
        );
        let cassandra = keyspace_ddl("chat", 3, false);
        assert!(!cassandra.contains("tablets"), "{cassandra}");
        assert!(cassandra.contains("'replication_factor': 3"), "{cassandra}");
    }
}
