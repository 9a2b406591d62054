//! The aggregation rules, as pure logic over messages and a clock.
//!
//! A batch is a maximal run of consecutive messages in one chat from one
//! sender. It closes when another member sends, when a timeline event
//! happens, when the gap between two of its messages' `sent_at` passes
//! `max_gap`, or when it would exceed `max_count` messages or `max_bytes`.
//! A timeline event (`chat_created`, `member_added`, `member_removed`,
//! `chat_renamed`) is a batch of its own: one item, closed at once, with its
//! own `seq`. Every decision depends only on the items themselves (sender,
//! `sent_at`, size, type), never on when they arrive, so replaying the log
//! after a crash rebuilds exactly the same batches.
//!
//! Each batch carries the chat's kind, title and members as they were when
//! it started (a direct chat's pair; a group's from its newest timeline
//! event, since every such event on the log lists the members after it), so
//! the newest batch is all a restart needs to continue.
//!
//! Writes (each document at most once per `flush_interval`, so Firestore's
//! one write per second per document holds, and as few as that allows):
//! - a new batch is written at once (it is a new document), except when
//!   the batch it closes still holds unwritten messages and was written less
//!   than `flush_interval` ago: then both wait for the rest of that interval
//!   and are written together (the closed one marked `closed`). They must go
//!   together: once a newer batch is stored, a restart treats every earlier
//!   log position as written;
//! - growth of a batch is written at most once per `flush_interval`;
//! - a batch whose messages were all written when it closed is not
//!   rewritten just to set `closed`: it is over because a batch with a
//!   higher `seq` exists, which clients see anyway. `closed` is set on the
//!   documents where it comes free (size limits, and the final writes
//!   above);
//! - the chat summary follows the newest batch, written at most once per
//!   `flush_interval`;
//! - [`Batcher::take_all`] hands out everything pending, at once, for the
//!   shutdown flush.
//!
//! Exactly-once effect: each batch remembers the log position of its last
//! message. A redelivered message (position at or before that, on the same
//! partition) or a re-published one (its id already in the open batch) is
//! recognised as a duplicate and changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chat_events::{ChatEvent, ChatEventType, ChatKind, MessageCreated, ReadUpdated, TimeUuid};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

/// Where a message sits on the log: Kafka partition and offset, or the
/// embedded log's sequence number (partition 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_gap: Duration,
    pub max_count: usize,
    pub max_bytes: usize,
    pub flush_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_gap: Duration::from_secs(300),
            max_count: 200,
            max_bytes: 256 * 1024,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// Fixed per-message overhead counted against `max_bytes`, on top of the
/// text: field names, ids and timestamps as Firestore stores them.
pub const MESSAGE_OVERHEAD_BYTES: usize = 96;
/// Fixed per-document overhead counted against `max_bytes`.
pub const DOCUMENT_OVERHEAD_BYTES: usize = 1024;
/// Bytes of one member id in a document, counted against `max_bytes`.
pub const MEMBER_BYTES: usize = 40;

/// What a timeline event item records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemEvent {
    pub kind: ChatEventType,
    /// The member added or removed.
    pub user_id: Option<Uuid>,
    /// The title given.
    pub title: Option<String>,
}

/// One item of a batch: a message, or (alone in its batch) a timeline
/// event, whose actor is the batch's `sender_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMessage {
    pub id: Uuid,
    pub text: String,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    #[serde(default)]
    pub reply_to: Option<Uuid>,
    #[serde(default)]
    pub event: Option<ItemEvent>,
}

impl BatchMessage {
    pub fn bytes(&self) -> usize {
        self.text.len() + MESSAGE_OVERHEAD_BYTES
    }
}

/// One record the batcher applies: a message, or a group's timeline event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub chat_id: Uuid,
    pub chat_kind: ChatKind,
    /// The sender, or the event's actor.
    pub sender_id: Uuid,
    pub item: BatchMessage,
    /// Every member after this record, when it says (a direct chat's pair,
    /// a timeline event's list); a group message leaves them as they were.
    pub members: Option<Vec<Uuid>>,
    /// The chat's title after this record, when it gives one.
    pub title: Option<String>,
}

impl From<&MessageCreated> for Incoming {
    fn from(m: &MessageCreated) -> Self {
        let members = m.recipient_id.map(|r| {
            let (a, b) = (m.sender_id.uuid(), r.uuid());
            if a <= b {
                vec![a, b]
            } else {
                vec![b, a]
            }
        });
        Self {
            chat_id: m.chat_id.uuid(),
            chat_kind: m.chat_kind,
            sender_id: m.sender_id.uuid(),
            item: BatchMessage {
                id: m.id,
                text: m.text.clone(),
                sent_at: m.sent_at,
                reply_to: m.reply_to,
                event: None,
            },
            members,
            title: None,
        }
    }
}

impl From<&ChatEvent> for Incoming {
    fn from(e: &ChatEvent) -> Self {
        Self {
            chat_id: e.chat_id.uuid(),
            chat_kind: e.chat_kind,
            sender_id: e.actor_id.uuid(),
            item: BatchMessage {
                id: e.id,
                text: String::new(),
                sent_at: e.at,
                reply_to: None,
                event: Some(ItemEvent {
                    kind: e.kind,
                    user_id: e.user_id.map(|u| u.uuid()),
                    title: e.title.clone(),
                }),
            },
            members: Some(e.members.iter().map(|m| m.uuid()).collect()),
            title: e.title.clone(),
        }
    }
}

/// One batch document's content, whatever the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub chat_id: Uuid,
    /// The first message's id: deterministic, so a replay rewrites the same
    /// document.
    pub batch_id: Uuid,
    /// 1, 2, 3… per chat: a client that sees a gap falls back to history.
    pub seq: u64,
    #[serde(default)]
    pub chat_kind: ChatKind,
    /// A group's title when the batch started.
    #[serde(default)]
    pub title: Option<String>,
    /// The chat's members when the batch started.
    #[serde(alias = "participants")]
    pub members: Vec<Uuid>,
    /// The sender (or a timeline event's actor).
    pub sender_id: Uuid,
    pub messages: Vec<BatchMessage>,
    pub closed: bool,
    /// Position of the last message: the high-water mark for duplicates and
    /// for refusing writes that would go backwards.
    pub last_position: Position,
}

impl Batch {
    pub fn count(&self) -> usize {
        self.messages.len()
    }

    pub fn bytes(&self) -> usize {
        DOCUMENT_OVERHEAD_BYTES
            + self.members.len() * MEMBER_BYTES
            + self.messages.iter().map(BatchMessage::bytes).sum::<usize>()
    }

    /// Whether this batch is a timeline event's.
    pub fn is_event(&self) -> bool {
        self.messages.iter().any(|m| m.event.is_some())
    }

    pub fn first(&self) -> &BatchMessage {
        &self.messages[0]
    }

    pub fn last(&self) -> &BatchMessage {
        &self.messages[self.messages.len() - 1]
    }

    pub fn contains(&self, id: Uuid) -> bool {
        self.messages.iter().any(|m| m.id == id)
    }

    /// Whether `self` is at least as far along the log as `other` (same
    /// chat): a later batch, or this batch no less far along
    /// ([`Progress::against`]).
    pub fn is_not_older_than(&self, other: &Batch) -> bool {
        self.seq > other.seq
            || (self.seq == other.seq
                && Progress::of(self).against(Progress::of(other)) != Compared::Behind)
    }
}

/// How far along one batch document is. A batch only ever grows and then
/// closes, so this orders every state a document goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub count: usize,
    pub closed: bool,
}

/// A write's state of a batch against the stored state of the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// The same state: nothing to write.
    Same,
    /// Further along: write it.
    Ahead,
    /// The stored state is further along (or not on this write's path):
    /// the writer is stale and must not write.
    Behind,
}

impl Progress {
    pub fn of(batch: &Batch) -> Self {
        Self {
            count: batch.count(),
            closed: batch.closed,
        }
    }

    /// The one rule every sink applies before it replaces a stored batch
    /// document.
    pub fn against(self, stored: Progress) -> Compared {
        if self == stored {
            Compared::Same
        } else if self.count >= stored.count && (self.closed || !stored.closed) {
            Compared::Ahead
        } else {
            Compared::Behind
        }
    }
}

/// The chat summary document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub chat_id: Uuid,
    pub chat_kind: ChatKind,
    pub title: Option<String>,
    /// Who may read the chat now.
    pub members: Vec<Uuid>,
    pub last_batch_id: Uuid,
    pub last_batch_seq: u64,
    pub last_sender_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity: OffsetDateTime,
    /// Each member's read horizon (the newest message they have read): read
    /// receipts.
    pub read: BTreeMap<Uuid, Uuid>,
}

/// What one sink write must store, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub chat_id: Uuid,
    /// Batches closed since the last write, oldest first (written first).
    pub closing: Vec<Batch>,
    /// The chat's newest batch: the sinks skip it when it is unchanged.
    pub batch: Batch,
    /// Whether `batch` holds changes not written yet.
    pub batch_changed: bool,
    /// Present when the summary must move to a newer batch.
    pub summary: Option<Summary>,
    /// Log positions whose effect this write stores.
    pub covers: Vec<Position>,
}

impl Write {
    /// Documents this write touches.
    pub fn documents(&self) -> usize {
        usize::from(self.batch_changed) + self.closing.len() + usize::from(self.summary.is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Already stored (redelivered or re-published): nothing changes.
    Duplicate,
    /// Added to the open batch; written at the next flush.
    Appended,
    /// Started a new batch: write it now.
    Started,
}

#[derive(Debug, Default)]
struct ChatState {
    /// The newest batch (open, or closed by a size limit).
    current: Option<Batch>,
    /// Closed batches holding messages not written yet (oldest first).
    closing: Vec<Batch>,
    /// Log positions of the unwritten messages in `closing`.
    closing_pending: Vec<Position>,
    /// `current` has never been written.
    is_new: bool,
    /// Log positions of the unwritten messages in `current`.
    pending: Vec<Position>,
    /// The summary must move to a newer batch.
    summary_due: bool,
    /// The members changed: everything pending is written at once, whatever
    /// the spacing, so the chat document (which Firestore's rules read)
    /// stops listing a removed member without delay.
    members_changed: bool,
    /// Read horizons by member, as the chat summary holds them.
    reads: BTreeMap<Uuid, Uuid>,
    /// Log positions of horizon moves not written yet (they go with the
    /// summary, at most once per `flush_interval`).
    reads_pending: Vec<Position>,
    last_write: Option<Instant>,
    last_summary: Option<Instant>,
}

impl ChatState {
    fn dirty(&self) -> bool {
        !self.pending.is_empty()
            || !self.closing.is_empty()
            || self.summary_due
            || !self.reads_pending.is_empty()
    }
}

/// Per-chat batching state. Chats are loaded from the sink before their
/// first message ([`Batcher::knows`], [`Batcher::restore`]).
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    chats: HashMap<Uuid, ChatState>,
}

impl Batcher {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            chats: HashMap::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the chat's state is loaded.
    pub fn knows(&self, chat: Uuid) -> bool {
        self.chats.contains_key(&chat)
    }

    /// Loads a chat's state from its newest stored batch (`None`: no batch
    /// yet), so appending continues in that document after a restart.
    pub fn restore(&mut self, chat: Uuid, newest: Option<Batch>) {
        self.restore_with_reads(chat, newest, BTreeMap::new());
    }

    /// [`Batcher::restore`], with the read horizons the chat summary holds.
    pub fn restore_with_reads(
        &mut self,
        chat: Uuid,
        newest: Option<Batch>,
        reads: BTreeMap<Uuid, Uuid>,
    ) {
        self.chats.insert(
            chat,
            ChatState {
                current: newest,
                reads,
                ..ChatState::default()
            },
        );
    }

    /// Applies a read horizon's move at `position` (the chat must be known):
    /// the summary takes it at its next write. Horizons only move forward,
    /// so a replay changes nothing. A chat without any batch has no summary
    /// to carry it.
    pub fn apply_read(&mut self, read: &ReadUpdated, position: Position) -> Applied {
        let state = self.chats.entry(read.chat_id.uuid()).or_default();
        if state.current.is_none() {
            return Applied::Duplicate;
        }
        let newer = match state.reads.get(&read.user_id.uuid()) {
            None => true,
            Some(old) => match (
                TimeUuid::from_uuid(*old),
                TimeUuid::from_uuid(read.last_read_id),
            ) {
                (Ok(old), Ok(new)) => new.sort_key() > old.sort_key(),
                _ => true,
            },
        };
        if !newer {
            return Applied::Duplicate;
        }
        state.reads.insert(read.user_id.uuid(), read.last_read_id);
        state.reads_pending.push(position);
        state.summary_due = true;
        Applied::Appended
    }

    /// Forgets a chat (its state will be reloaded from the sink).
    pub fn forget(&mut self, chat: Uuid) {
        self.chats.remove(&chat);
    }

    /// Applies one message or timeline event at `position`. The chat must
    /// be known.
    pub fn apply(&mut self, incoming: impl Into<Incoming>, position: Position) -> Applied {
        let incoming: Incoming = incoming.into();
        let limits = self.limits;
        let state = self.chats.entry(incoming.chat_id).or_default();
        let message = incoming.item;
        let id = message.id;
        if let Some(b) = &state.current {
            let replayed =
                position.partition == b.last_position.partition && position <= b.last_position;
            let republished = b.contains(id) || state.closing.iter().any(|c| c.contains(id));
            if replayed || republished {
                return Applied::Duplicate;
            }
        }
        let is_event = message.event.is_some();
        let fits = !is_event
            && state.current.as_ref().is_some_and(|b| {
                !b.closed
                    && b.sender_id == incoming.sender_id
                    && gap(b.last().sent_at, message.sent_at) <= limits.max_gap
                    && b.count() < limits.max_count
                    && b.bytes() + message.bytes() <= limits.max_bytes
            });
        if fits {
            if let Some(b) = state.current.as_mut() {
                b.messages.push(message);
                b.last_position = position;
                b.closed = b.count() >= limits.max_count;
            }
            state.pending.push(position);
            return Applied::Appended;
        }
        let seq = state.current.as_ref().map_or(1, |b| b.seq + 1);
        let before = state.current.as_ref();
        let members = incoming
            .members
            .or_else(|| before.map(|b| b.members.clone()))
            .unwrap_or_default();
        let title = incoming
            .title
            .or_else(|| before.and_then(|b| b.title.clone()));
        if let Some(mut previous) = state.current.take() {
            // A final write only if it still holds unwritten messages.
            if !state.pending.is_empty() {
                previous.closed = true;
                state.closing.push(previous);
                state.closing_pending.append(&mut state.pending);
            }
        }
        state.pending.push(position);
        state.summary_due = true;
        state.members_changed |= message.event.as_ref().is_some_and(|e| {
            matches!(
                e.kind,
                ChatEventType::MemberAdded | ChatEventType::MemberRemoved
            )
        });
        let batch = Batch {
            chat_id: incoming.chat_id,
            batch_id: id,
            seq,
            chat_kind: incoming.chat_kind,
            title,
            members,
            sender_id: incoming.sender_id,
            closed: is_event || limits.max_count <= 1,
            messages: vec![message],
            last_position: position,
        };
        state.current = Some(batch);
        state.is_new = true;
        Applied::Started
    }

    /// Chats whose pending changes are due: new batches at once, the rest
    /// once `flush_interval` has passed since the chat's last write.
    pub fn due(&self, now: Instant) -> Vec<Uuid> {
        let interval = self.limits.flush_interval;
        self.chats
            .iter()
            .filter(|(_, s)| {
                s.dirty()
                    && ((s.is_new && s.closing.is_empty())
                        || s.members_changed
                        || spaced(s.last_write, now, interval))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// When the next coalesced write falls due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        let interval = self.limits.flush_interval;
        self.chats
            .values()
            .filter(|s| s.dirty())
            .map(|s| s.last_write.map_or_else(Instant::now, |t| t + interval))
            .min()
    }

    /// The write that stores what of the chat's pending changes may be
    /// written at `now` (the newest batch's changes always; final states of
    /// closed batches and the summary only `flush_interval` after the
    /// previous write of the chat or summary). `None` when that is nothing.
    pub fn take_write(&mut self, chat: Uuid, now: Instant) -> Option<Write> {
        self.take(chat, now, false)
    }

    fn take(&mut self, chat: Uuid, now: Instant, everything: bool) -> Option<Write> {
        let interval = self.limits.flush_interval;
        let state = self.chats.get_mut(&chat)?;
        if !state.dirty() {
            return None;
        }
        let everything = everything || std::mem::take(&mut state.members_changed);
        let batch = state.current.clone()?;
        if !state.closing.is_empty() && !everything && !spaced(state.last_write, now, interval) {
            // Final states of closed batches go in the same write as the
            // batch after them: once a newer batch is stored, a restart
            // treats every earlier log position as written.
            return None;
        }
        let mut covers = std::mem::take(&mut state.closing_pending);
        let closing = std::mem::take(&mut state.closing);
        let summary = (state.summary_due
            && (everything || spaced(state.last_summary, now, interval)))
        .then(|| Summary {
            chat_id: chat,
            chat_kind: batch.chat_kind,
            title: batch.title.clone(),
            members: batch.members.clone(),
            last_batch_id: batch.batch_id,
            last_batch_seq: batch.seq,
            last_sender_id: batch.sender_id,
            last_activity: batch.last().sent_at,
            read: state.reads.clone(),
        });
        let batch_changed = !state.pending.is_empty();
        if !batch_changed && closing.is_empty() && summary.is_none() {
            return None;
        }
        covers.append(&mut state.pending);
        if summary.is_some() {
            covers.append(&mut state.reads_pending);
            state.summary_due = false;
            state.last_summary = Some(now);
        }
        state.is_new = false;
        state.last_write = Some(now);
        Some(Write {
            chat_id: chat,
            closing,
            batch,
            batch_changed,
            summary,
            covers,
        })
    }

    /// Every pending write, whatever its spacing (the shutdown flush).
    pub fn take_all(&mut self, now: Instant) -> Vec<Write> {
        let chats: Vec<Uuid> = self.chats.keys().copied().collect();
        chats
            .into_iter()
            .filter_map(|c| self.take(c, now, true))
            .collect()
    }

    /// Positions applied but not yet covered by a write, by partition: the
    /// source may commit only below the smallest of them.
    pub fn uncovered(&self) -> BTreeMap<i32, i64> {
        let mut low: BTreeMap<i32, i64> = BTreeMap::new();
        for p in self.chats.values().flat_map(|s| {
            s.pending
                .iter()
                .chain(&s.closing_pending)
                .chain(&s.reads_pending)
        }) {
            low.entry(p.partition)
                .and_modify(|o| *o = (*o).min(p.offset))
                .or_insert(p.offset);
        }
        low
    }
}

/// Whether a write at `now` keeps `interval` after the one at `last`.
fn spaced(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= interval)
}

fn gap(earlier: OffsetDateTime, later: OffsetDateTime) -> Duration {
    let d = later - earlier;
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_events::{ChatId, TimeUuidGenerator, UserId};
    use proptest::prelude::*;

    #[test]
    fn a_stored_batch_is_replaced_only_by_a_state_further_along() {
        let p = |count, closed| Progress { count, closed };
        assert_eq!(p(3, false).against(p(3, false)), Compared::Same);
        assert_eq!(p(3, true).against(p(3, true)), Compared::Same);
        assert_eq!(p(4, false).against(p(3, false)), Compared::Ahead);
        assert_eq!(p(3, true).against(p(3, false)), Compared::Ahead);
        assert_eq!(p(4, true).against(p(3, false)), Compared::Ahead);
        assert_eq!(p(2, false).against(p(3, false)), Compared::Behind);
        assert_eq!(p(2, true).against(p(3, false)), Compared::Behind);
        assert_eq!(p(3, false).against(p(3, true)), Compared::Behind);
        assert_eq!(
            p(5, false).against(p(3, true)),
            Compared::Behind,
            "a closed batch never grows"
        );
    }

    struct Chat {
        id: Uuid,
        users: [UserId; 2],
        ids: TimeUuidGenerator,
        start: OffsetDateTime,
        offset: i64,
    }

    impl Chat {
        fn new() -> Self {
            let users = [UserId::from(Uuid::new_v4()), Uuid::new_v4().into()];
            Self {
                id: chat_events::chat_id(users[0], users[1]).uuid(),
                users,
                ids: TimeUuidGenerator::new(),
                start: OffsetDateTime::now_utc(),
                offset: 0,
            }
        }

        /// A message from participant `who`, `at_ms` after the start.
        fn msg(&mut self, who: usize, at_ms: i64, text: &str) -> (MessageCreated, Position) {
            self.offset += 1;
            let event = MessageCreated::new(
                self.ids.next().uuid(),
                ChatId::from_uuid(self.id),
                self.users[who],
                Some(self.users[1 - who]),
                text.into(),
                self.start + time::Duration::milliseconds(at_ms),
            );
            (
                event,
                Position {
                    partition: 0,
                    offset: self.offset,
                },
            )
        }
    }

    fn limits() -> Limits {
        Limits {
            max_gap: Duration::from_secs(60),
            max_count: 5,
            max_bytes: 64 * 1024,
            flush_interval: Duration::from_secs(1),
        }
    }

    fn batcher_for(chat: &Chat, limits: Limits) -> Batcher {
        let mut b = Batcher::new(limits);
        b.restore(chat.id, None);
        b
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_switch_closes_the_batch_and_starts_a_new_one() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        let (m1, p1) = chat.msg(0, 0, "hi");
        assert_eq!(b.apply(&m1, p1), Applied::Started);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!(
            (w.batch.seq, w.batch.count(), w.closing.is_empty()),
            (1, 1, true)
        );
        assert!(w.summary.is_some(), "a new batch updates the summary");
        let (m2, p2) = chat.msg(1, 10, "hello");
        assert_eq!(b.apply(&m2, p2), Applied::Started);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert!(
            w.closing.is_empty(),
            "the first batch was fully written: no write just to close it"
        );
        assert_eq!(
            (w.batch.seq, w.batch.batch_id, w.batch.closed),
            (2, m2.id, false)
        );
        assert!(w.summary.is_none(), "the summary waits for the interval");
        assert_eq!(w.documents(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.due(Instant::now()), vec![chat.id]);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!(w.summary.as_ref().map(|s| s.last_batch_id), Some(m2.id));
        assert_eq!(w.documents(), 1, "the summary alone");
        assert!(b.take_write(chat.id, Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeline_event_is_a_closed_batch_of_its_own_and_a_removal_is_written_at_once() {
        let chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        let (a, x) = (chat.users[0], chat.users[1]);
        let ids = TimeUuidGenerator::new();
        let start = OffsetDateTime::now_utc();
        let at = |ms: i64| start + time::Duration::milliseconds(ms);
        let pos = |offset| Position {
            partition: 0,
            offset,
        };
        let event = |kind, ms, user: Option<UserId>, members: Vec<UserId>| ChatEvent {
            v: 1,
            kind,
            id: ids.next().uuid(),
            chat_id: ChatId::from_uuid(chat.id),
            chat_kind: ChatKind::Group,
            actor_id: a,
            user_id: user,
            title: (kind == ChatEventType::ChatCreated).then(|| "trip".to_owned()),
            members,
            at: at(ms),
        };
        let say = |ms| {
            MessageCreated::new(
                ids.next().uuid(),
                ChatId::from_uuid(chat.id),
                a,
                None,
                "hi".into(),
                at(ms),
            )
        };

        let created = event(ChatEventType::ChatCreated, 0, None, vec![a, x]);
        assert_eq!(b.apply(&created, pos(1)), Applied::Started);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert!(w.batch.is_event() && w.batch.closed && w.batch.count() == 1);
        assert_eq!(w.batch.members, [a.uuid(), x.uuid()]);
        assert_eq!(w.batch.title.as_deref(), Some("trip"));
        assert_eq!(w.batch.chat_kind, ChatKind::Group);

        // A group message: no recipient; members and title carry over.
        assert_eq!(b.apply(&say(10), pos(2)), Applied::Started);
        b.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!(b.apply(&say(20), pos(3)), Applied::Appended);
        tokio::time::advance(Duration::from_millis(300)).await;
        let removed = event(ChatEventType::MemberRemoved, 30, Some(x), vec![a]);
        assert_eq!(b.apply(&removed, pos(4)), Applied::Started);
        // Within the interval, yet written now: the chat document must stop
        // listing the removed member at once.
        let w = b
            .take_write(chat.id, Instant::now())
            .expect("written at once");
        let closing: Vec<(u64, usize, bool)> = w
            .closing
            .iter()
            .map(|c| (c.seq, c.count(), c.closed))
            .collect();
        assert_eq!(closing, [(2, 2, true)]);
        assert!(w.batch.is_event() && w.batch.seq == 3);
        assert_eq!(
            w.summary.as_ref().map(|s| s.members.clone()),
            Some(vec![a.uuid()])
        );
        assert_eq!(w.covers, [pos(3), pos(4)]);
        assert_eq!(b.apply(&say(40), pos(5)), Applied::Started);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!((w.batch.seq, w.batch.members.clone()), (4, vec![a.uuid()]));
        assert_eq!(w.batch.title.as_deref(), Some("trip"));
        // A replayed event changes nothing.
        assert_eq!(b.apply(&removed, pos(4)), Applied::Duplicate);
    }

    #[tokio::test(start_paused = true)]
    async fn read_horizons_go_with_the_summary_forward_only_and_coalesced() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        let chat_id = chat.id;
        let read = |user: UserId, message: Uuid| ReadUpdated {
            v: 1,
            kind: chat_events::event::READ_TYPE.into(),
            chat_id: ChatId::from_uuid(chat_id),
            user_id: user,
            last_read_id: message,
            at: OffsetDateTime::now_utc(),
        };
        let pos = |offset| Position {
            partition: 0,
            offset,
        };
        let (reader, other) = (chat.users[1], chat.users[0]);
        // No batch yet: no summary to carry a horizon.
        let (m0, _) = chat.msg(0, 0, "unseen");
        assert_eq!(
            b.apply_read(&read(reader, m0.id), pos(1)),
            Applied::Duplicate
        );
        let (m1, p1) = chat.msg(0, 0, "hi");
        b.apply(&m1, p1);
        b.take_write(chat.id, Instant::now()).expect("write");
        let (m2, p2) = chat.msg(0, 10, "again");
        b.apply(&m2, p2);
        assert_eq!(
            b.apply_read(&read(reader, m2.id), pos(10)),
            Applied::Appended
        );
        assert_eq!(
            b.apply_read(&read(reader, m1.id), pos(11)),
            Applied::Duplicate,
            "never back"
        );
        let growth = b.take_write(chat.id, Instant::now()).expect("write");
        assert!(
            growth.summary.is_none(),
            "the summary waits for the interval"
        );
        assert_eq!(
            b.uncovered().get(&0),
            Some(&10),
            "the horizon is not written yet"
        );
        assert!(b.due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.due(Instant::now()), vec![chat.id]);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        let summary = w.summary.expect("the summary carries the horizon");
        assert_eq!(summary.read.get(&reader.uuid()), Some(&m2.id));
        assert!(w.covers.contains(&pos(10)));
        assert!(b.uncovered().is_empty());
        // After a restart the stored horizons come back with the chat.
        let mut again = Batcher::new(limits());
        again.restore_with_reads(chat.id, Some(w.batch.clone()), summary.read.clone());
        assert_eq!(
            again.apply_read(&read(reader, m1.id), pos(12)),
            Applied::Duplicate
        );
        assert_eq!(
            again.apply_read(&read(other, m2.id), pos(13)),
            Applied::Appended
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_batch_with_unwritten_messages_and_its_successor_wait_for_the_interval() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        let (m1, p1) = chat.msg(0, 0, "a");
        b.apply(&m1, p1);
        b.take_write(chat.id, Instant::now()).expect("write");
        let (m2, p2) = chat.msg(0, 100, "b");
        assert_eq!(b.apply(&m2, p2), Applied::Appended);
        tokio::time::advance(Duration::from_millis(300)).await;
        let (m3, p3) = chat.msg(1, 300, "c");
        assert_eq!(b.apply(&m3, p3), Applied::Started);
        assert!(
            b.take_write(chat.id, Instant::now()).is_none(),
            "the closed batch was written 300 ms ago: both wait"
        );
        assert_eq!(b.uncovered().get(&0), Some(&p2.offset));
        tokio::time::advance(Duration::from_millis(699)).await;
        assert!(b.due(Instant::now()).is_empty(), "not within the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.due(Instant::now()), vec![chat.id]);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        let closing: Vec<(u64, usize, bool)> = w
            .closing
            .iter()
            .map(|c| (c.seq, c.count(), c.closed))
            .collect();
        assert_eq!(closing, [(1, 2, true)]);
        assert_eq!((w.batch.seq, w.batch_changed), (2, true));
        assert!(w.summary.is_some());
        assert_eq!(w.documents(), 3);
        assert_eq!(w.covers, vec![p2, p3]);
        assert!(b.uncovered().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn several_switches_before_a_write_close_every_batch() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        for (i, who) in [0, 1, 0].into_iter().enumerate() {
            let (m, p) = chat.msg(who, i as i64, "x");
            assert_eq!(b.apply(&m, p), Applied::Started);
        }
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        let closed: Vec<(u64, bool)> = w.closing.iter().map(|c| (c.seq, c.closed)).collect();
        assert_eq!(closed, [(1, true), (2, true)]);
        assert_eq!(w.batch.seq, 3);
        assert_eq!(w.summary.map(|s| s.last_batch_seq), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_closes_the_batch() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        let (m1, p1) = chat.msg(0, 0, "a");
        let (m2, p2) = chat.msg(0, 60_000, "b");
        let (m3, p3) = chat.msg(0, 120_001, "c");
        assert_eq!(b.apply(&m1, p1), Applied::Started);
        assert_eq!(
            b.apply(&m2, p2),
            Applied::Appended,
            "a gap of exactly max_gap stays"
        );
        assert_eq!(
            b.apply(&m3, p3),
            Applied::Started,
            "a longer gap starts a new batch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_limit_closes_the_batch_when_reached() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        for i in 0..5 {
            let (m, p) = chat.msg(0, i, "x");
            let expected = if i == 0 {
                Applied::Started
            } else {
                Applied::Appended
            };
            assert_eq!(b.apply(&m, p), expected);
        }
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert!(w.batch.closed, "closed as soon as it holds max_count");
        assert_eq!(w.batch.count(), 5);
        let (m, p) = chat.msg(0, 10, "y");
        assert_eq!(b.apply(&m, p), Applied::Started);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert!(
            w.closing.is_empty(),
            "already written closed: no extra write"
        );
        assert_eq!(w.batch.seq, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_limit_closes_the_batch() {
        let mut chat = Chat::new();
        let limits = Limits {
            max_bytes: 4096,
            max_count: 100,
            ..limits()
        };
        let mut b = batcher_for(&chat, limits);
        let big = "x".repeat(1200);
        let (m1, p1) = chat.msg(0, 0, &big);
        let (m2, p2) = chat.msg(0, 1, &big);
        let (m3, p3) = chat.msg(0, 2, &big);
        assert_eq!(b.apply(&m1, p1), Applied::Started);
        assert_eq!(b.apply(&m2, p2), Applied::Appended);
        assert_eq!(
            b.apply(&m3, p3),
            Applied::Started,
            "a third would pass 4096 bytes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn growth_is_coalesced_into_one_write_per_flush_interval() {
        let mut chat = Chat::new();
        let mut b = batcher_for(
            &chat,
            Limits {
                max_count: 100,
                ..limits()
            },
        );
        let (m, p) = chat.msg(0, 0, "first");
        b.apply(&m, p);
        assert_eq!(
            b.due(Instant::now()),
            vec![chat.id],
            "a new batch is due at once"
        );
        b.take_write(chat.id, Instant::now()).expect("write");
        for i in 1..50 {
            let (m, p) = chat.msg(0, i * 10, "more");
            assert_eq!(b.apply(&m, p), Applied::Appended);
        }
        assert!(
            b.due(Instant::now()).is_empty(),
            "growth waits for the interval"
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(b.due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.due(Instant::now()), vec![chat.id]);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!(w.batch.count(), 50);
        assert_eq!(w.covers.len(), 49);
        assert!(w.summary.is_none(), "growth does not touch the summary");
        assert!(
            b.take_write(chat.id, Instant::now()).is_none(),
            "nothing left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_takes_everything_pending() {
        let mut chat = Chat::new();
        let mut other = Chat::new();
        let mut b = batcher_for(
            &chat,
            Limits {
                max_count: 100,
                ..limits()
            },
        );
        b.restore(other.id, None);
        let (m, p) = chat.msg(0, 0, "a");
        b.apply(&m, p);
        b.take_write(chat.id, Instant::now());
        let (m, p) = chat.msg(0, 1, "b");
        b.apply(&m, p);
        let (m, p) = other.msg(1, 0, "c");
        b.apply(&m, p);
        assert_eq!(b.uncovered().get(&0), Some(&1), "lowest unwritten offset");
        let writes = b.take_all(Instant::now());
        assert_eq!(writes.len(), 2);
        assert!(b.uncovered().is_empty());
        assert!(b.take_all(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn redelivered_and_republished_messages_change_nothing() {
        let mut chat = Chat::new();
        let mut b = batcher_for(&chat, limits());
        let (m1, p1) = chat.msg(0, 0, "a");
        let (m2, p2) = chat.msg(0, 1, "b");
        b.apply(&m1, p1);
        b.apply(&m2, p2);
        let w = b.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!(b.apply(&m1, p1), Applied::Duplicate, "redelivered");
        let republished = Position {
            partition: 0,
            offset: 99,
        };
        assert_eq!(
            b.apply(&m2, republished),
            Applied::Duplicate,
            "same id, later offset"
        );
        assert!(b.take_write(chat.id, Instant::now()).is_none());

        // After a restart the state comes back from the stored batch.
        let mut fresh = Batcher::new(limits());
        fresh.restore(chat.id, Some(w.batch.clone()));
        assert_eq!(fresh.apply(&m2, p2), Applied::Duplicate);
        let (m3, p3) = chat.msg(0, 2, "c");
        assert_eq!(
            fresh.apply(&m3, p3),
            Applied::Appended,
            "continues the stored batch"
        );
        let w2 = fresh.take_write(chat.id, Instant::now()).expect("write");
        assert_eq!((w2.batch.batch_id, w2.batch.count()), (w.batch.batch_id, 3));
        assert!(w2.batch.is_not_older_than(&w.batch));
        assert!(!w.batch.is_not_older_than(&w2.batch));
    }

    /// A message of the generated history: sender, ms since the previous
    /// message, text length, and whether it is delivered twice.
    type Step = (usize, i64, usize, bool);

    fn run(
        steps: &[Step],
        limits: Limits,
        restart_at: Option<usize>,
    ) -> (Vec<MessageCreated>, Vec<Batch>) {
        let mut chat = Chat::new();
        let mut stored: std::collections::BTreeMap<u64, Batch> = Default::default();
        let mut b = batcher_for(&chat, limits);
        let mut sent = Vec::new();
        let mut at = 0;
        let now = Instant::now();
        for (i, (who, delay, len, twice)) in steps.iter().enumerate() {
            if restart_at == Some(i) {
                // Crash: unwritten state is lost; rebuild from the sink and
                // replay from the lowest unwritten position.
                let newest = stored.values().next_back().cloned();
                b = Batcher::new(limits);
                b.restore(chat.id, newest);
                let replay: Vec<(MessageCreated, Position)> = sent
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(k, e)| {
                        (
                            e,
                            Position {
                                partition: 0,
                                offset: k as i64 + 1,
                            },
                        )
                    })
                    .collect();
                for (e, p) in &replay {
                    b.apply(e, *p);
                    while let Some(w) = b.take_write(chat.id, now) {
                        store(&mut stored, w);
                    }
                }
            }
            at += delay;
            let (event, position) = chat.msg(*who, at, &"t".repeat(*len));
            let copies = if *twice { 2 } else { 1 };
            for _ in 0..copies {
                b.apply(&event, position);
                // Write only sometimes, as flushes would.
                if position.offset % 3 == 0 || b.due(now).contains(&chat.id) {
                    if let Some(w) = b.take_write(chat.id, now) {
                        store(&mut stored, w);
                    }
                }
            }
            sent.push(event);
        }
        for w in b.take_all(now) {
            store(&mut stored, w);
        }
        (sent, stored.into_values().collect())
    }

    fn store(stored: &mut std::collections::BTreeMap<u64, Batch>, w: Write) {
        for batch in w.closing.into_iter().chain(std::iter::once(w.batch)) {
            if stored
                .get(&batch.seq)
                .is_none_or(|old| batch.is_not_older_than(old))
            {
                stored.insert(batch.seq, batch);
            }
        }
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                0..2usize,
                0..90_000i64,
                1..3000usize,
                prop::bool::weighted(0.1),
            ),
            1..80,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn batches_are_exactly_the_maximal_runs(steps in steps(), restart in prop::option::of(0..80usize)) {
            let limits = Limits { max_gap: Duration::from_secs(60), max_count: 7, max_bytes: 16 * 1024, flush_interval: Duration::from_secs(1) };
            let (sent, batches) = run(&steps, limits, restart);
            // Every message once, in order.
            let flat: Vec<Uuid> = batches.iter().flat_map(|b| b.messages.iter().map(|m| m.id)).collect();
            let expected: Vec<Uuid> = sent.iter().map(|e| e.id).collect();
            prop_assert_eq!(flat, expected);
            for (i, batch) in batches.iter().enumerate() {
                prop_assert_eq!(batch.seq, i as u64 + 1);
                prop_assert_eq!(batch.batch_id, batch.first().id);
                let senders: std::collections::HashSet<Option<UserId>> = batch.messages.iter().map(|m| sent.iter().find(|e| e.id == m.id).map(|e| e.sender_id)).collect();
                prop_assert_eq!(senders.len(), 1, "one sender per batch");
                prop_assert!(batch.count() <= limits.max_count);
                prop_assert!(batch.bytes() <= limits.max_bytes);
                for pair in batch.messages.windows(2) {
                    prop_assert!(gap(pair[0].sent_at, pair[1].sent_at) <= limits.max_gap);
                }
                if let Some(next) = batches.get(i + 1) {
                    // (Not every older batch is marked closed: one fully
                    // written when it closed is not rewritten for the flag.)
                    // Maximal: the same sender continues only where a limit split.
                    if next.sender_id == batch.sender_id {
                        let split = batch.count() == limits.max_count
                            || batch.bytes() + next.first().bytes() > limits.max_bytes
                            || gap(batch.last().sent_at, next.first().sent_at) > limits.max_gap;
                        prop_assert!(split, "batches {} and {} should have been one", batch.seq, next.seq);
                    }
                }
            }
        }
    }
}
