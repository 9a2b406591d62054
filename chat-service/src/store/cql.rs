//! Cassandra / ScyllaDB store through the `scylla` driver.
//!
//! Schema (created at start-up when missing):
//! - `messages`: partition `(chat_id, bucket)`, clustered by `id timeuuid`
//!   descending. `bucket` is the message time divided by the bucket length
//!   (default one day), so no partition grows without bound.
//! - `chat_buckets`: per chat, the buckets that hold messages (descending),
//!   so history skips empty days instead of probing them one by one.
//! - `chats` and `user_chats` (a user's chats with last activity).
//! - `client_ids`: `(chat, sender, client_message_id) → message id`, claimed
//!   with a lightweight transaction (`IF NOT EXISTS`), which makes the
//!   idempotency check race-free across replicas.
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
use chat_events::{ChatId, TimeUuid, UserId};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlTimeuuid, CqlValue, Row};
use uuid::Uuid;

use super::{Chat, ChatSummary, Inserted, Message, MessageStore, Participant, StoreError};
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

pub struct CqlStore {
    session: Session,
    bucket_ms: i64,
    insert_chat: PreparedStatement,
    insert_user_chat: PreparedStatement,
    touch_user_chat: PreparedStatement,
    select_chat: PreparedStatement,
    select_chats: PreparedStatement,
    select_user_chats: PreparedStatement,
    select_user_chat: PreparedStatement,
    claim_client_id: PreparedStatement,
    select_client_id: PreparedStatement,
    insert_message: PreparedStatement,
    insert_bucket: PreparedStatement,
    select_message: PreparedStatement,
    select_buckets: PreparedStatement,
    select_page: PreparedStatement,
    select_page_before: PreparedStatement,
}

/// Chats looked up per `IN` query by [`CqlStore::chats_of`].
const CHATS_PER_QUERY: usize = 100;

/// A `chats` row: id, both participants (id, name), creation time.
type ChatRow = (Uuid, Uuid, String, Uuid, String, i64);

fn chat_of_row((id, a, a_name, b, b_name, created_at): ChatRow) -> Chat {
    Chat {
        id: ChatId::from_uuid(id),
        participants: [
            Participant {
                id: UserId::from_uuid(a),
                username: a_name,
            },
            Participant {
                id: UserId::from_uuid(b),
                username: b_name,
            },
        ],
        created_at,
    }
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
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = 'system_schema' \
             AND table_name = 'scylla_keyspaces'",
            &[],
        )
        .await
        .context("reading the server's schema tables")?
        .into_rows_result()
        .context("reading the server's schema tables")?;
    let mut found = false;
    for row in rows.rows::<(String,)>().context("schema rows")? {
        found |= row.context("schema row")?.0 == "initial_tablets";
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
        Ok(Self {
            bucket_ms: settings.bucket.as_millis().max(1) as i64,
            insert_chat: prepare(
                format!(
                    "INSERT INTO {ks}.chats (chat_id, user_a, user_a_name, user_b, user_b_name, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            insert_user_chat: prepare(
                format!(
                    "UPDATE {ks}.user_chats SET last_activity = ? WHERE user_id = ? AND chat_id = ? \
                     IF last_activity = null"
                ),
                false,
            )
            .await?,
            touch_user_chat: prepare(
                format!(
                    "UPDATE {ks}.user_chats SET last_activity = ?, last_message_id = ? \
                     WHERE user_id = ? AND chat_id = ?"
                ),
                true,
            )
            .await?,
            select_chat: prepare(
                format!(
                    "SELECT chat_id, user_a, user_a_name, user_b, user_b_name, created_at \
                     FROM {ks}.chats WHERE chat_id = ?"
                ),
                true,
            )
            .await?,
            select_chats: prepare(
                format!(
                    "SELECT chat_id, user_a, user_a_name, user_b, user_b_name, created_at \
                     FROM {ks}.chats WHERE chat_id IN ?"
                ),
                true,
            )
            .await?,
            select_user_chats: prepare(
                format!(
                    "SELECT chat_id, last_activity, last_message_id FROM {ks}.user_chats WHERE user_id = ?"
                ),
                true,
            )
            .await?,
            select_user_chat: prepare(
                format!(
                    "SELECT last_activity, last_message_id FROM {ks}.user_chats \
                     WHERE user_id = ? AND chat_id = ?"
                ),
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
            select_client_id: {
                let mut p = prepare(
                    format!(
                        "SELECT message_id FROM {ks}.client_ids \
                         WHERE chat_id = ? AND sender_id = ? AND client_message_id = ?"
                    ),
                    true,
                )
                .await?;
                // Read what the LWT decided, not a stale replica.
                p.set_consistency(Consistency::LocalSerial);
                p
            },
            insert_message: prepare(
                format!(
                    "INSERT INTO {ks}.messages (chat_id, bucket, id, sender_id, recipient_id, text, \
                     client_message_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            insert_bucket: prepare(
                format!("INSERT INTO {ks}.chat_buckets (chat_id, bucket) VALUES (?, ?)"),
                true,
            )
            .await?,
            select_message: prepare(
                format!(
                    "SELECT id, sender_id, recipient_id, text, client_message_id FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND id = ?"
                ),
                true,
            )
            .await?,
            select_buckets: prepare(
                format!(
                    "SELECT bucket FROM {ks}.chat_buckets WHERE chat_id = ? AND bucket <= ? LIMIT 64"
                ),
                true,
            )
            .await?,
            select_page: prepare(
                format!(
                    "SELECT id, sender_id, recipient_id, text, client_message_id FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? LIMIT ?"
                ),
                true,
            )
            .await?,
            select_page_before: prepare(
                format!(
                    "SELECT id, sender_id, recipient_id, text, client_message_id FROM {ks}.messages \
                     WHERE chat_id = ? AND bucket = ? AND id < ? LIMIT ?"
                ),
                true,
            )
            .await?,
            session,
        })
    }

    fn bucket_of(&self, id: TimeUuid) -> i64 {
        id.unix_millis().div_euclid(self.bucket_ms)
    }

    async fn message(&self, chat: ChatId, id: TimeUuid) -> Result<Option<Message>, StoreError> {
        let rows = self
            .session
            .execute_unpaged(
                &self.select_message,
                (
                    chat.uuid(),
                    self.bucket_of(id),
                    CqlTimeuuid::from(id.uuid()),
                ),
            )
            .await?
            .into_rows_result()?;
        let row = rows.maybe_first_row::<MessageRow>()?;
        row.map(|r| r.into_message(chat)).transpose()
    }

    /// Claims the client id for `id`; returns the id that owns it.
    async fn claim(&self, m: &Message, client_id: &str) -> Result<TimeUuid, StoreError> {
        let (chat, sender) = (m.chat_id.uuid(), m.sender_id.uuid());
        let result = self
            .session
            .execute_unpaged(
                &self.claim_client_id,
                (chat, sender, client_id, CqlTimeuuid::from(m.id.uuid())),
            )
            .await?
            .into_rows_result()?;
        if lwt_applied(&result)? {
            return Ok(m.id);
        }
        let owner = self
            .session
            .execute_unpaged(&self.select_client_id, (chat, sender, client_id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(CqlTimeuuid,)>()?
            .ok_or_else(|| StoreError::Cql("client id claimed but not readable".into()))?;
        TimeUuid::from_uuid(owner.0.into()).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn write_message(&self, m: &Message) -> Result<(), StoreError> {
        let bucket = self.bucket_of(m.id);
        let id = CqlTimeuuid::from(m.id.uuid());
        let chat = m.chat_id.uuid();
        self.session
            .execute_unpaged(
                &self.insert_message,
                (
                    chat,
                    bucket,
                    id,
                    m.sender_id.uuid(),
                    m.recipient_id.uuid(),
                    m.text.as_str(),
                    m.client_message_id.as_ref().map(ClientMessageId::as_str),
                ),
            )
            .await?;
        self.session
            .execute_unpaged(&self.insert_bucket, (chat, bucket))
            .await?;
        let at = m.id.unix_millis();
        for user in [m.sender_id, m.recipient_id] {
            self.session
                .execute_unpaged(&self.touch_user_chat, (at, id, user.uuid(), chat))
                .await?;
        }
        Ok(())
    }
}

/// The `[applied]` column of an LWT result.
fn lwt_applied(rows: &scylla::response::query_result::QueryRowsResult) -> Result<bool, StoreError> {
    let row = rows
        .maybe_first_row::<Row>()?
        .ok_or_else(|| StoreError::Cql("LWT returned no row".into()))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::Cql(format!("unexpected LWT result {other:?}"))),
    }
}

type MessageRow = (CqlTimeuuid, Uuid, Uuid, String, Option<String>);

trait IntoMessage {
    fn into_message(self, chat: ChatId) -> Result<Message, StoreError>;
}

impl IntoMessage for MessageRow {
    fn into_message(self, chat: ChatId) -> Result<Message, StoreError> {
        let (id, sender_id, recipient_id, text, client_message_id) = self;
        Ok(Message {
            id: TimeUuid::from_uuid(id.into()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            chat_id: chat,
            sender_id: UserId::from_uuid(sender_id),
            recipient_id: UserId::from_uuid(recipient_id),
            text: MessageText::stored(text),
            client_message_id: client_message_id.map(ClientMessageId::stored),
        })
    }
}

#[async_trait]
impl MessageStore for CqlStore {
    async fn create_chat(&self, chat: &Chat) -> Result<bool, StoreError> {
        let [a, b] = &chat.participants;
        let result = self
            .session
            .execute_unpaged(
                &self.insert_chat,
                (
                    chat.id.uuid(),
                    a.id.uuid(),
                    &a.username,
                    b.id.uuid(),
                    &b.username,
                    chat.created_at,
                ),
            )
            .await?
            .into_rows_result()?;
        let created = lwt_applied(&result)?;
        // Conditional, so a retry never moves a chat's activity backwards.
        for user in [a.id, b.id] {
            self.session
                .execute_unpaged(
                    &self.insert_user_chat,
                    (chat.created_at, user.uuid(), chat.id.uuid()),
                )
                .await?;
        }
        Ok(created)
    }

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError> {
        let row = self
            .session
            .execute_unpaged(&self.select_chat, (id.uuid(),))
            .await?
            .into_rows_result()?
            .maybe_first_row::<ChatRow>()?;
        Ok(row.map(chat_of_row))
    }

    async fn chat_summary(
        &self,
        user: UserId,
        id: ChatId,
    ) -> Result<Option<ChatSummary>, StoreError> {
        let activity = self
            .session
            .execute_unpaged(&self.select_user_chat, (user.uuid(), id.uuid()))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>, Option<CqlTimeuuid>)>()?;
        let Some((last_activity, last_message_id)) = activity else {
            return Ok(None);
        };
        Ok(self.chat(id).await?.map(|chat| ChatSummary {
            last_activity: last_activity.unwrap_or(chat.created_at),
            last_message_id: last_message_id.and_then(|t| TimeUuid::from_uuid(t.into()).ok()),
            chat,
        }))
    }

    async fn chats_of(&self, user: UserId) -> Result<Vec<ChatSummary>, StoreError> {
        let rows = self
            .session
            .execute_unpaged(&self.select_user_chats, (user.uuid(),))
            .await?
            .into_rows_result()?;
        let mut entries = Vec::new();
        for row in rows.rows::<(Uuid, Option<i64>, Option<CqlTimeuuid>)>()? {
            entries.push(row?);
        }
        // The chats themselves, a bounded `IN` list per query, the queries
        // concurrent (not one round trip per chat).
        let ids: Vec<Uuid> = entries.iter().map(|(id, _, _)| *id).collect();
        let pages = futures::future::try_join_all(
            ids.chunks(CHATS_PER_QUERY)
                .map(|chunk| self.session.execute_unpaged(&self.select_chats, (chunk,))),
        )
        .await?;
        let mut chats = std::collections::HashMap::with_capacity(ids.len());
        for page in pages {
            let rows = page.into_rows_result()?;
            for row in rows.rows::<ChatRow>()? {
                let chat = chat_of_row(row?);
                chats.insert(chat.id, chat);
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for (chat_id, last_activity, last_message_id) in entries {
            if let Some(chat) = chats.remove(&ChatId::from_uuid(chat_id)) {
                out.push(ChatSummary {
                    last_activity: last_activity.unwrap_or(chat.created_at),
                    last_message_id: last_message_id
                        .and_then(|t| TimeUuid::from_uuid(t.into()).ok()),
                    chat,
                });
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.last_activity));
        Ok(out)
    }

    async fn insert_message(&self, m: Message) -> Result<Inserted, StoreError> {
        if let Some(client_id) = m.client_message_id.clone() {
            let owner = self.claim(&m, client_id.as_str()).await?;
            if owner != m.id {
                // Another request claimed this client id. Its message may not
                // be written yet (it may even have crashed after the claim):
                // write it from this request's copy, which carries the same
                // content, so the outcome is one message either way.
                if let Some(existing) = self.message(m.chat_id, owner).await? {
                    return Ok(Inserted::Existing(existing));
                }
                let repaired = Message { id: owner, ..m };
                self.write_message(&repaired).await?;
                return Ok(Inserted::Existing(repaired));
            }
        }
        self.write_message(&m).await?;
        Ok(Inserted::New(m))
    }

    async fn history(
        &self,
        chat_id: ChatId,
        before: Option<TimeUuid>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let chat = chat_id.uuid();
        let start = match before {
            Some(t) => self.bucket_of(t),
            None => i64::MAX,
        };
        let mut out: Vec<Message> = Vec::with_capacity(limit);
        let mut upper = start;
        'buckets: loop {
            let buckets = self
                .session
                .execute_unpaged(&self.select_buckets, (chat, upper))
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
                let result = match before {
                    Some(t) if *bucket == start => {
                        self.session
                            .execute_unpaged(
                                &self.select_page_before,
                                (chat, *bucket, CqlTimeuuid::from(t.uuid()), want),
                            )
                            .await
                    }
                    _ => {
                        self.session
                            .execute_unpaged(&self.select_page, (chat, *bucket, want))
                            .await
                    }
                }?
                .into_rows_result()?;
                for row in result.rows::<MessageRow>()? {
                    out.push(row?.into_message(chat_id)?);
                }
                if out.len() >= limit {
                    break 'buckets;
                }
            }
            match found.last() {
                Some(&last) if found.len() == 64 => upper = last - 1,
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
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
                "user_chats",
                "messages",
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
