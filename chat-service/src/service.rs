//! The chat rules the handlers call ([`ChatService`]), and the ordered
//! write path ([`Timeline`]).
//!
//! Every change to a chat's timeline (a message, a membership change, a
//! rename) takes the chat's turn inside this process (a striped lock on the
//! chat id, held from choosing the TimeUUID to the log's acknowledgement),
//! so each chat's items reach the store and the log in id order. For a
//! message:
//! 1. the store write, which checks the sender is still a member and the
//!    reply's target, and resolves a repeated `client_message_id` to the
//!    original message;
//! 2. the publish, for a new message and also for a repeat, so a send whose
//!    publish failed (503) is completed by its retry instead of being stored
//!    twice. Consumers drop the duplicate event by message id.
//!
//! Who may do what in a group: any member sends, reads and leaves; owners
//! and admins add members, remove members (admins remove plain members
//! only) and rename; the owner changes roles and may hand the chat over
//! (`role: owner`; they become an admin). When the owner leaves, the
//! longest-standing admin, else the longest-standing member, becomes the
//! owner. Direct chats refuse every membership change (409).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chat_events::{ChatId, Event, ReadUpdated, TimeUuid, TimeUuidGenerator, UserId};

use auth_validator::AuthUser;
use futures::{StreamExt, TryStreamExt};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::ChatLimits;
use crate::domain::{ClientMessageId, MessageText, Quantity, Title};
use crate::error::{Error, Result};
use crate::log::MessageLog;
use crate::store::{
    Added, Changed, Chat, ChatCursor, ChatEventType, ChatKind, ChatSummary, ChatsPage, Inserted,
    Item, Member, Message, MessageStore, NewChat, ReadMark, Role, StoreError, TimelineEvent,
};
use crate::users::UserDirectory;

const STRIPES: usize = 1024;
/// Concurrent user lookups while creating a group.
const LOOKUPS: usize = 8;

/// The ordered write path of every chat's timeline.
pub struct Timeline {
    store: Arc<dyn MessageStore>,
    log: Arc<dyn MessageLog>,
    ids: TimeUuidGenerator,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Timeline {
    pub fn new(store: Arc<dyn MessageStore>, log: Arc<dyn MessageLog>) -> Self {
        Self {
            store,
            log,
            ids: TimeUuidGenerator::new(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The chat's turn: held while an item is given its id, stored and
    /// published.
    async fn turn(&self, chat: ChatId) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        chat.hash(&mut hasher);
        self.stripes[(hasher.finish() as usize) % STRIPES]
            .lock()
            .await
    }

    /// Sends in `chat`; `recipient`: a direct chat's other member.
    pub async fn send(
        &self,
        chat: &Chat,
        recipient: Option<UserId>,
        sender: UserId,
        text: MessageText,
        client_message_id: Option<ClientMessageId>,
        reply_to: Option<TimeUuid>,
    ) -> Result<Inserted> {
        let _turn = self.turn(chat.id).await;
        let message = Message {
            id: self.ids.next(),
            chat_id: chat.id,
            sender_id: sender,
            text,
            client_message_id,
            reply_to,
        };
        let event = Event::Message(message.event(chat.kind, recipient));
        let inserted = match self.store.insert_message(message, event).await {
            Err(StoreError::NotMember) => return Err(Error::ChatNotFound),
            Err(StoreError::NoSuchReply) => {
                return Err(Error::Unprocessable(
                    "invalid_reply_to",
                    "reply_to is not a message of this chat".into(),
                ))
            }
            other => other?,
        };
        let stored = Event::Message(inserted.message().event(chat.kind, recipient));
        self.log.publish(&stored).await?;
        let outcome = match inserted {
            Inserted::New(_) => "new",
            Inserted::Existing(_) => "repeat",
        };
        metrics::counter!("chat_messages_sent_total", "outcome" => outcome).increment(1);
        Ok(inserted)
    }

    /// A timeline event of `chat`, with its id chosen under the chat's turn.
    fn event(
        &self,
        chat: ChatId,
        kind: ChatEventType,
        actor: UserId,
        user: Option<UserId>,
        title: Option<String>,
    ) -> TimelineEvent {
        TimelineEvent {
            id: self.ids.next(),
            chat_id: chat,
            kind,
            actor_id: actor,
            user_id: user,
            title,
            members: Vec::new(),
        }
    }

    /// Puts a stored group event on the log with every member after it.
    async fn announce(&self, event: &TimelineEvent, members: &[UserId]) -> Result<()> {
        self.log
            .publish(&event.log_event(ChatKind::Group, members.to_vec()))
            .await?;
        Ok(())
    }

    async fn announce_change(&self, event: &TimelineEvent, changed: &Changed) -> Result<()> {
        match changed {
            Changed::Done(members) => self.announce(event, members).await,
            Changed::NotMember => Ok(()),
        }
    }

    async fn add_member(
        &self,
        chat: ChatId,
        actor: UserId,
        member: Member,
        limit: usize,
    ) -> Result<Added> {
        let _turn = self.turn(chat).await;
        let event = self.event(
            chat,
            ChatEventType::MemberAdded,
            actor,
            Some(member.id),
            None,
        );
        let added = self.store.add_member(member, event.clone(), limit).await?;
        if let Added::Added(members) = &added {
            self.announce(&event, members).await?;
        }
        Ok(added)
    }

    async fn remove_member(&self, chat: ChatId, actor: UserId, user: UserId) -> Result<Changed> {
        let _turn = self.turn(chat).await;
        let event = self.event(chat, ChatEventType::MemberRemoved, actor, Some(user), None);
        let changed = self.store.remove_member(event.clone()).await?;
        self.announce_change(&event, &changed).await?;
        Ok(changed)
    }

    async fn rename(&self, chat: ChatId, actor: UserId, title: String) -> Result<Changed> {
        let _turn = self.turn(chat).await;
        let event = self.event(chat, ChatEventType::ChatRenamed, actor, None, Some(title));
        let changed = self.store.rename(event.clone()).await?;
        self.announce_change(&event, &changed).await?;
        Ok(changed)
    }
}

/// Direct chats kept in [`ChatService`]'s cache (about 250 bytes each).
pub const CACHED_CHATS: usize = 100_000;

/// A caller's standing in a chat they are a member of.
#[derive(Debug, Clone)]
pub struct Access {
    pub chat: Chat,
    pub role: Role,
    /// A direct chat's other member.
    pub other: Option<UserId>,
}

impl Access {
    fn group(&self) -> Result<()> {
        match self.chat.kind {
            ChatKind::Group => Ok(()),
            ChatKind::Direct => Err(Error::Conflict(
                "direct_chat",
                "a direct chat's members never change".into(),
            )),
        }
    }

    fn manager(&self) -> Result<()> {
        self.group()?;
        if self.role.manages() {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "not_allowed",
                "only the group's owner and admins may do this".into(),
            ))
        }
    }
}

/// What the HTTP handlers call: starting and listing chats, groups and
/// their members, sending, history, catch-up and read state, each for an
/// authenticated caller, over the store, the log and the user directory.
/// Handlers only parse requests and shape responses.
pub struct ChatService {
    store: Arc<dyn MessageStore>,
    timeline: Timeline,
    users: Arc<dyn UserDirectory>,
    send_limiter: DefaultKeyedRateLimiter<UserId>,
    max_members: usize,
    /// Direct chats by id, with their two members. A direct chat never
    /// changes, so entries never go stale. Groups are read from the store
    /// on every request, so a removal takes effect at once.
    direct: quick_cache::sync::Cache<ChatId, (Chat, [UserId; 2])>,
}

fn now_millis() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl ChatService {
    pub fn new(
        store: Arc<dyn MessageStore>,
        log: Arc<dyn MessageLog>,
        users: Arc<dyn UserDirectory>,
        limits: &ChatLimits,
    ) -> Self {
        let quota = Quota::per_second(limits.send_rate_per_sec).allow_burst(limits.send_burst);
        Self {
            timeline: Timeline::new(store.clone(), log),
            store,
            users,
            send_limiter: RateLimiter::keyed(quota),
            max_members: limits.max_group_members as usize,
            direct: quick_cache::sync::Cache::new(CACHED_CHATS),
        }
    }

    /// The caller's name: from the token when it carries one.
    async fn caller_name(&self, caller: &AuthUser) -> Result<String> {
        match caller.claims.name.clone() {
            Some(name) => Ok(name),
            None => Ok(self
                .users
                .username(caller.id.into(), caller.token.as_str())
                .await?
                .unwrap_or_default()),
        }
    }

    /// A user who must exist, as a new member with `role`.
    async fn new_member(
        &self,
        caller: &AuthUser,
        user: UserId,
        role: Role,
        joined_at: i64,
    ) -> Result<Member> {
        let username = self
            .users
            .username(user, caller.token.as_str())
            .await?
            .ok_or_else(|| Error::Unprocessable("unknown_user", format!("no such user {user}")))?;
        Ok(Member {
            id: user,
            username,
            role,
            joined_at,
            last_read_id: None,
        })
    }

    /// The chat as the caller sees it in the list.
    async fn summary(&self, caller: UserId, chat: ChatId) -> Result<ChatSummary> {
        self.store
            .chat_summary(caller, chat)
            .await?
            .ok_or(Error::ChatNotFound)
    }

    /// Starts the direct chat between the caller and `other`, or finds it;
    /// `true` when it is new. Returns what is stored, so both members see
    /// the same record.
    pub async fn start_chat(
        &self,
        caller: &AuthUser,
        other: UserId,
    ) -> Result<(bool, ChatSummary)> {
        let caller_id = UserId::from(caller.id);
        if other == caller_id {
            return Err(Error::Unprocessable(
                "self_chat",
                "you cannot start a chat with yourself".into(),
            ));
        }
        let created_at = now_millis();
        let other = self
            .new_member(caller, other, Role::Member, created_at)
            .await?;
        let (new, log) = NewChat::direct(
            (caller_id, self.caller_name(caller).await?),
            (other.id, other.username),
            created_at,
            self.timeline.ids.next(),
        );
        let chat = new.chat.id;
        let created = self.store.create_chat(new, log.clone()).await?;
        // Published on every start, so a start whose publish failed is
        // completed by its retry; consumers know a chat they saw created.
        self.timeline.log.publish(&log).await?;
        Ok((created, self.summary(caller_id, chat).await?))
    }

    /// Creates a group: the caller its owner, `member_ids` (duplicates and
    /// the caller ignored; at least one, all existing) its members.
    pub async fn create_group(
        &self,
        caller: &AuthUser,
        title: Title,
        member_ids: Vec<UserId>,
    ) -> Result<ChatSummary> {
        let caller_id = UserId::from(caller.id);
        let mut others: Vec<UserId> = Vec::with_capacity(member_ids.len());
        for id in member_ids {
            if id != caller_id && !others.contains(&id) {
                others.push(id);
            }
        }
        if others.is_empty() {
            return Err(Error::Unprocessable(
                "members_required",
                "a group needs at least one member besides you".into(),
            ));
        }
        if others.len() + 1 > self.max_members {
            return Err(self.full());
        }
        let created_at = now_millis();
        let others: Vec<(UserId, String)> = futures::stream::iter(others)
            .map(|id| self.new_member(caller, id, Role::Member, created_at))
            .buffered(LOOKUPS)
            .map_ok(|m| (m.id, m.username))
            .try_collect()
            .await?;
        let (new, log) = NewChat::group(
            ChatId::from(uuid::Uuid::new_v4()),
            title.into_inner(),
            (caller_id, self.caller_name(caller).await?),
            others,
            created_at,
            self.timeline.ids.next(),
        );
        let chat = new.chat.id;
        self.store.create_chat(new, log.clone()).await?;
        self.timeline.log.publish(&log).await?;
        self.summary(caller_id, chat).await
    }

    fn full(&self) -> Error {
        Error::Unprocessable(
            "too_many_members",
            format!("a group holds at most {} members", self.max_members),
        )
    }

    /// Up to `limit` of the caller's chats after `after`, most recently
    /// active first, and where the next page starts (`None`: no more).
    pub async fn chats_of(
        &self,
        caller: UserId,
        after: Option<ChatCursor>,
        limit: usize,
    ) -> Result<(Vec<ChatSummary>, Option<ChatCursor>)> {
        let page = ChatsPage {
            after,
            limit: limit.saturating_add(1),
        };
        let mut chats = self.store.chats_of(caller, page).await?;
        let next = if chats.len() > limit {
            chats.truncate(limit);
            chats.last().map(ChatCursor::of)
        } else {
            None
        };
        Ok((chats, next))
    }

    /// The chat `raw_id` if the caller is a member; otherwise (or if it is
    /// not a chat id at all) "not found", never "forbidden".
    pub async fn access(&self, raw_id: &str, caller: UserId) -> Result<Access> {
        let id: ChatId = raw_id.parse().map_err(|_| Error::ChatNotFound)?;
        if let Some((chat, pair)) = self.direct.get(&id) {
            return match pair.iter().position(|u| *u == caller) {
                Some(i) => Ok(Access {
                    chat,
                    role: Role::Member,
                    other: Some(pair[1 - i]),
                }),
                None => Err(Error::ChatNotFound),
            };
        }
        let (chat, member) = self
            .store
            .membership(id, caller)
            .await?
            .ok_or(Error::ChatNotFound)?;
        let mut other = None;
        if chat.kind == ChatKind::Direct {
            let members = self.store.members(id).await?;
            if let [a, b] = members.as_slice() {
                self.direct.insert(id, (chat.clone(), [a.id, b.id]));
                other = Some(if a.id == caller { b.id } else { a.id });
            }
        }
        Ok(Access {
            chat,
            role: member.role,
            other,
        })
    }

    /// Sends in chat `raw_id`, within the caller's rate.
    pub async fn send(
        &self,
        raw_id: &str,
        caller: UserId,
        text: MessageText,
        client_message_id: Option<ClientMessageId>,
        reply_to: Option<TimeUuid>,
    ) -> Result<Inserted> {
        let access = self.access(raw_id, caller).await?;
        if let Err(not_until) = self.send_limiter.check_key(&caller) {
            return Err(Error::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        self.timeline
            .send(
                &access.chat,
                access.other,
                caller,
                text,
                client_message_id,
                reply_to,
            )
            .await
    }

    /// Up to `quantity` items of chat `raw_id` older than `before` (the
    /// newest without it), newest first, and whether older ones remain.
    pub async fn history(
        &self,
        raw_id: &str,
        caller: UserId,
        before: Option<TimeUuid>,
        quantity: Quantity,
    ) -> Result<(Vec<Item>, bool)> {
        let access = self.access(raw_id, caller).await?;
        let quantity = quantity.get();
        let mut items = self
            .store
            .history(access.chat.id, before, quantity + 1)
            .await?;
        let has_more = items.len() > quantity;
        items.truncate(quantity);
        Ok((items, has_more))
    }

    /// Up to `quantity` items of chat `raw_id` newer than `after`, oldest
    /// first, and whether newer ones remain.
    pub async fn catch_up(
        &self,
        raw_id: &str,
        caller: UserId,
        after: TimeUuid,
        quantity: Quantity,
    ) -> Result<(Vec<Item>, bool)> {
        let access = self.access(raw_id, caller).await?;
        let quantity = quantity.get();
        let mut items = self
            .store
            .catch_up(access.chat.id, after, quantity + 1)
            .await?;
        let has_more = items.len() > quantity;
        items.truncate(quantity);
        Ok((items, has_more))
    }

    /// The members of chat `raw_id`, in the order they joined.
    pub async fn members(&self, raw_id: &str, caller: UserId) -> Result<Vec<Member>> {
        let access = self.access(raw_id, caller).await?;
        Ok(self.store.members(access.chat.id).await?)
    }

    /// Adds `user` to group `raw_id`; `true` when they were not a member.
    pub async fn add_member(
        &self,
        raw_id: &str,
        caller: &AuthUser,
        user: UserId,
    ) -> Result<(bool, Member)> {
        let caller_id = UserId::from(caller.id);
        let access = self.access(raw_id, caller_id).await?;
        access.manager()?;
        let chat = access.chat.id;
        if let Some((_, member)) = self.store.membership(chat, user).await? {
            return Ok((false, member));
        }
        let member = self
            .new_member(caller, user, Role::Member, now_millis())
            .await?;
        match self
            .timeline
            .add_member(chat, caller_id, member.clone(), self.max_members)
            .await?
        {
            Added::Added(_) => Ok((true, member)),
            Added::Already => {
                let (_, member) = self
                    .store
                    .membership(chat, user)
                    .await?
                    .ok_or_else(member_not_found)?;
                Ok((false, member))
            }
            Added::Full => Err(self.full()),
        }
    }

    /// Removes `user` from group `raw_id`, or (`user` = the caller) leaves.
    pub async fn remove_member(&self, raw_id: &str, caller: UserId, user: UserId) -> Result<()> {
        let access = self.access(raw_id, caller).await?;
        access.group()?;
        let chat = access.chat.id;
        if user != caller {
            access.manager()?;
            let (_, target) = self
                .store
                .membership(chat, user)
                .await?
                .ok_or_else(member_not_found)?;
            if access.role != Role::Owner && target.role.manages() {
                return Err(Error::Forbidden(
                    "not_allowed",
                    "admins remove members only; the owner removes admins".into(),
                ));
            }
        }
        match self.timeline.remove_member(chat, caller, user).await? {
            Changed::Done(_) => Ok(()),
            Changed::NotMember => Err(member_not_found()),
        }
    }

    /// Renames group `raw_id`.
    pub async fn rename(&self, raw_id: &str, caller: UserId, title: Title) -> Result<ChatSummary> {
        let access = self.access(raw_id, caller).await?;
        access.manager()?;
        match self
            .timeline
            .rename(access.chat.id, caller, title.into_inner())
            .await?
        {
            Changed::Done(_) => self.summary(caller, access.chat.id).await,
            Changed::NotMember => Err(Error::ChatNotFound),
        }
    }

    /// Gives `user` `role` in group `raw_id` (the owner only).
    pub async fn set_role(
        &self,
        raw_id: &str,
        caller: UserId,
        user: UserId,
        role: Role,
    ) -> Result<Member> {
        let access = self.access(raw_id, caller).await?;
        access.group()?;
        if access.role != Role::Owner {
            return Err(Error::Forbidden(
                "not_allowed",
                "only the group's owner changes roles".into(),
            ));
        }
        if user == caller {
            return Err(Error::Unprocessable(
                "own_role",
                "the owner hands the group over by making another member its owner".into(),
            ));
        }
        if !self.store.set_role(access.chat.id, user, role).await? {
            return Err(member_not_found());
        }
        let (_, member) = self
            .store
            .membership(access.chat.id, user)
            .await?
            .ok_or_else(member_not_found)?;
        Ok(member)
    }

    /// Moves the caller's read horizon in chat `raw_id` forward to
    /// `message` (never back).
    pub async fn mark_read(&self, raw_id: &str, caller: UserId, message: TimeUuid) -> Result<()> {
        let access = self.access(raw_id, caller).await?;
        let chat = access.chat.id;
        match self.store.mark_read(chat, caller, message).await? {
            ReadMark::Moved => {
                let event = Event::Read(ReadUpdated {
                    v: chat_events::event::VERSION,
                    kind: chat_events::event::READ_TYPE.to_owned(),
                    chat_id: chat,
                    user_id: caller,
                    last_read_id: message.uuid(),
                    at: time::OffsetDateTime::now_utc(),
                });
                self.timeline.log.publish(&event).await?;
                Ok(())
            }
            ReadMark::Unchanged => Ok(()),
            ReadMark::NotAMessage => Err(Error::Unprocessable(
                "invalid_message_id",
                "message_id is not a message of this chat".into(),
            )),
            ReadMark::NotMember => Err(Error::ChatNotFound),
        }
    }

    /// Forgets idle users' rate-limit state, so memory is bounded by
    /// recently active senders.
    pub fn forget_idle_senders(&self) {
        self.send_limiter.retain_recent();
    }
}

fn member_not_found() -> Error {
    Error::NotFound("member_not_found", "no such member of this chat".into())
}
