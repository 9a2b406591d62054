//! Where chats and messages live.
//!
//! One trait, two implementations that pass one shared test suite
//! (`tests/it/store_suite.rs`): [`sqlite::SqliteStore`] (embedded, the
//! default) and [`cql::CqlStore`] (Cassandra/ScyllaDB).

#[cfg(feature = "cql")]
pub mod cql;
pub mod sqlite;

use async_trait::async_trait;
use chat_events::{ChatEvent, ChatId, Event, MessageCreated, TimeUuid, UserId};
pub use chat_events::{ChatEventType, ChatKind};

use crate::domain::{ClientMessageId, MessageText};

/// A member's rights in a group (direct chats have two `Member`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    /// Owners and admins manage members and the title.
    pub fn manages(self) -> bool {
        self >= Role::Admin
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: UserId,
    /// The name when they joined.
    pub username: String,
    pub role: Role,
    /// Milliseconds since the Unix epoch.
    pub joined_at: i64,
    /// The newest message they have read (or sent).
    pub last_read_id: Option<TimeUuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub id: ChatId,
    pub kind: ChatKind,
    /// Groups only.
    pub title: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub member_count: usize,
}

/// A chat to create, with its first members; `event` is a group's
/// `chat_created` (a direct chat's timeline holds only messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChat {
    pub chat: Chat,
    pub members: Vec<Member>,
    pub event: Option<TimelineEvent>,
}

impl NewChat {
    /// The direct chat between `a` and `b` (id and name), created at
    /// `created_at` (milliseconds) by `a`, with its `chat.created` event on
    /// the log (`event_id`).
    pub fn direct(
        a: (UserId, String),
        b: (UserId, String),
        created_at: i64,
        event_id: TimeUuid,
    ) -> (Self, Event) {
        let member = |(id, username): (UserId, String)| Member {
            id,
            username,
            role: Role::Member,
            joined_at: created_at,
            last_read_id: None,
        };
        let (a, b) = (member(a), member(b));
        let chat = Chat {
            id: chat_events::chat_id(a.id, b.id),
            kind: ChatKind::Direct,
            title: None,
            created_at,
            member_count: 2,
        };
        let event = TimelineEvent {
            id: event_id,
            chat_id: chat.id,
            kind: ChatEventType::ChatCreated,
            actor_id: a.id,
            user_id: None,
            title: None,
            members: vec![a.id, b.id],
        };
        let log = event.log_event(ChatKind::Direct, event.members.clone());
        let new = Self {
            chat,
            members: vec![a, b],
            event: None,
        };
        (new, log)
    }

    /// A new group `id` titled `title`: `owner` (id and name) its owner,
    /// `others` its members, created at `created_at` (milliseconds), with
    /// its `chat_created` event (`event_id`) and that event on the log.
    pub fn group(
        id: ChatId,
        title: String,
        owner: (UserId, String),
        others: Vec<(UserId, String)>,
        created_at: i64,
        event_id: TimeUuid,
    ) -> (Self, Event) {
        let member = |(id, username): (UserId, String), role| Member {
            id,
            username,
            role,
            joined_at: created_at,
            last_read_id: None,
        };
        let mut members = vec![member(owner, Role::Owner)];
        members.extend(others.into_iter().map(|o| member(o, Role::Member)));
        let ids: Vec<UserId> = members.iter().map(|m| m.id).collect();
        let chat = Chat {
            id,
            kind: ChatKind::Group,
            title: Some(title.clone()),
            created_at,
            member_count: members.len(),
        };
        let event = TimelineEvent {
            id: event_id,
            chat_id: id,
            kind: ChatEventType::ChatCreated,
            actor_id: ids[0],
            user_id: None,
            title: Some(title),
            members: ids.clone(),
        };
        let log = event.log_event(ChatKind::Group, ids);
        let new = Self {
            chat,
            members,
            event: Some(event),
        };
        (new, log)
    }
}

/// The newest message of a chat, for the chat list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMessage {
    pub id: TimeUuid,
    pub sender_id: UserId,
    /// The first [`PREVIEW_CHARS`] characters.
    pub preview: String,
}

/// Characters of a message kept as the chat list's preview.
pub const PREVIEW_CHARS: usize = 100;
/// Unread counts stop here.
pub const UNREAD_CAP: u64 = 1000;

/// The first [`PREVIEW_CHARS`] characters of `text`.
pub fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}

/// One chat as one of its members sees it in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSummary {
    pub chat: Chat,
    /// Milliseconds since the Unix epoch: the newest timeline item, or
    /// creation.
    pub last_activity: i64,
    pub last_message: Option<LastMessage>,
    /// Messages from others after the member's read horizon, at most
    /// [`UNREAD_CAP`].
    pub unread: u64,
    pub last_read_id: Option<TimeUuid>,
    /// A direct chat's other member.
    pub other: Option<Member>,
}

/// A position in a user's chat list (most recently active first, ties by
/// id): the chat a page ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatCursor {
    pub last_activity: i64,
    pub id: ChatId,
}

impl ChatCursor {
    pub fn of(summary: &ChatSummary) -> Self {
        Self {
            last_activity: summary.last_activity,
            id: summary.chat.id,
        }
    }

    /// Whether `summary` comes after this position in the list.
    pub fn precedes(&self, summary: &ChatSummary) -> bool {
        summary.last_activity < self.last_activity
            || (summary.last_activity == self.last_activity && summary.chat.id > self.id)
    }

    /// The cursor as clients see it: opaque text.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.last_activity, self.id.uuid().simple())
    }

    /// A cursor from [`ChatCursor::encode`]; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let (at, id) = raw.split_once('.')?;
        Some(Self {
            last_activity: at.parse().ok()?,
            id: ChatId::from_uuid(uuid::Uuid::try_parse(id).ok()?),
        })
    }
}

/// Which of a user's chats to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatsPage {
    /// Start after this chat; `None`: from the most recently active.
    pub after: Option<ChatCursor>,
    pub limit: usize,
}

impl ChatsPage {
    /// Every chat, in one list.
    pub const ALL: Self = Self {
        after: None,
        limit: usize::MAX,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: TimeUuid,
    pub chat_id: ChatId,
    pub sender_id: UserId,
    pub text: MessageText,
    pub client_message_id: Option<ClientMessageId>,
    /// A message of the same chat this one answers.
    pub reply_to: Option<TimeUuid>,
}

impl Message {
    /// Its `message.created` event in a chat of `kind`; `recipient`: a
    /// direct chat's other member.
    pub fn event(&self, kind: ChatKind, recipient: Option<UserId>) -> MessageCreated {
        MessageCreated {
            v: chat_events::event::VERSION,
            kind: chat_events::event::TYPE.to_owned(),
            id: self.id.uuid(),
            chat_id: self.chat_id,
            chat_kind: kind,
            sender_id: self.sender_id,
            recipient_id: recipient,
            text: self.text.as_str().to_owned(),
            sent_at: self.id.datetime(),
            client_message_id: self
                .client_message_id
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            reply_to: self.reply_to.map(TimeUuid::uuid),
        }
    }
}

/// A timeline event as history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEvent {
    pub id: TimeUuid,
    pub chat_id: ChatId,
    pub kind: ChatEventType,
    pub actor_id: UserId,
    /// The member added or removed.
    pub user_id: Option<UserId>,
    /// The title given (created, renamed).
    pub title: Option<String>,
    /// `chat_created`: the initial members.
    pub members: Vec<UserId>,
}

impl TimelineEvent {
    /// Its event on the log, with every member after it.
    pub fn log_event(&self, chat_kind: ChatKind, members: Vec<UserId>) -> Event {
        Event::Chat(ChatEvent {
            v: chat_events::event::VERSION,
            kind: self.kind,
            id: self.id.uuid(),
            chat_id: self.chat_id,
            chat_kind,
            actor_id: self.actor_id,
            user_id: self.user_id,
            title: self.title.clone(),
            members,
            at: self.id.datetime(),
        })
    }
}

/// One item of a chat's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Message(Message),
    Event(TimelineEvent),
}

impl Item {
    pub fn id(&self) -> TimeUuid {
        match self {
            Item::Message(m) => m.id,
            Item::Event(e) => e.id,
        }
    }

    pub fn message(&self) -> Option<&Message> {
        match self {
            Item::Message(m) => Some(m),
            Item::Event(_) => None,
        }
    }
}

/// What [`MessageStore::insert_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now.
    New(Message),
    /// The `(chat, sender, client_message_id)` was already stored: this is
    /// the original, and nothing new was written.
    Existing(Message),
}

impl Inserted {
    pub fn message(&self) -> &Message {
        match self {
            Inserted::New(m) | Inserted::Existing(m) => m,
        }
    }
}

/// What [`MessageStore::add_member`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Added, with the event stored; every member after it.
    Added(Vec<UserId>),
    /// Already a member: nothing changed.
    Already,
    /// The chat holds its limit of members.
    Full,
}

/// What [`MessageStore::remove_member`] and [`MessageStore::rename`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Done, with the event stored; every member after it.
    Done(Vec<UserId>),
    /// The member was not (or no longer) in the chat.
    NotMember,
}

/// What [`MessageStore::mark_read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMark {
    /// The horizon moved forward to the message.
    Moved,
    /// The horizon was already at or past it.
    Unchanged,
    /// Not a message of the chat.
    NotAMessage,
    /// The reader is not a member.
    NotMember,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("cql: {0}")]
    Cql(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The sender is not a member of the chat (any more).
    #[error("not a member")]
    NotMember,
    /// `reply_to` is not a message of the chat.
    #[error("reply_to is not a message of this chat")]
    NoSuchReply,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `new` (chat, members and a group's `chat_created`) if the chat
    /// is new; returns whether it was. `log` is the chat's `chat.created`.
    async fn create_chat(&self, new: NewChat, log: Event) -> Result<bool, StoreError>;

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError>;

    /// The chat and the user's membership of it (`None`: no such chat, or
    /// the user is not a member).
    async fn membership(
        &self,
        chat: ChatId,
        user: UserId,
    ) -> Result<Option<(Chat, Member)>, StoreError>;

    /// Every member of the chat, in the order they joined.
    async fn members(&self, chat: ChatId) -> Result<Vec<Member>, StoreError>;

    /// Up to `page.limit` of the user's chats after `page.after`, most
    /// recently active first (ties by id).
    async fn chats_of(&self, user: UserId, page: ChatsPage)
        -> Result<Vec<ChatSummary>, StoreError>;

    /// One chat of the user's (`None`: no such chat, or not a member).
    async fn chat_summary(
        &self,
        user: UserId,
        id: ChatId,
    ) -> Result<Option<ChatSummary>, StoreError>;

    /// Stores `message` (its id chosen by the caller; `log` its event),
    /// unless one with the same chat, sender and `client_message_id` exists:
    /// then returns that. Two concurrent inserts with one
    /// `client_message_id` store one message. The sender's read horizon
    /// moves to the new message. Refused with [`StoreError::NotMember`] when
    /// the sender is not a member, and [`StoreError::NoSuchReply`] when
    /// `reply_to` is not a message of the chat.
    async fn insert_message(&self, message: Message, log: Event) -> Result<Inserted, StoreError>;

    /// Up to `limit` items of the chat strictly older than `before` (or the
    /// newest, without it), newest first.
    async fn history(
        &self,
        chat: ChatId,
        before: Option<TimeUuid>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError>;

    /// Up to `limit` items of the chat strictly newer than `after`, oldest
    /// first.
    async fn catch_up(
        &self,
        chat: ChatId,
        after: TimeUuid,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError>;

    /// Adds `member` to the group (its `member_added` event: `event`) unless
    /// it holds `limit` members already.
    async fn add_member(
        &self,
        member: Member,
        event: TimelineEvent,
        limit: usize,
    ) -> Result<Added, StoreError>;

    /// Removes `event.user_id` (its `member_removed` event: `event`). When
    /// the owner goes, the longest-standing admin (else member) becomes the
    /// owner.
    async fn remove_member(&self, event: TimelineEvent) -> Result<Changed, StoreError>;

    /// Gives the group `event.title` (its `chat_renamed` event: `event`).
    async fn rename(&self, event: TimelineEvent) -> Result<Changed, StoreError>;

    /// Sets a member's role; `Role::Owner` hands the chat over: the current
    /// owner becomes an admin. Returns whether `user` is a member.
    async fn set_role(&self, chat: ChatId, user: UserId, role: Role) -> Result<bool, StoreError>;

    /// Moves `user`'s read horizon forward to `message` (never back).
    async fn mark_read(
        &self,
        chat: ChatId,
        user: UserId,
        message: TimeUuid,
    ) -> Result<ReadMark, StoreError>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;

    fn backend(&self) -> &'static str;
}
