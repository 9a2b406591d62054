//! The hub: every event of the log, routed to the connections of the users
//! who may see it.
//!
//! - **Ingest.** One task reads the log ([`crate::log::LogSource`]) and hands
//!   each event to [`Hub::ingest`]: it goes into the *ring* (the newest
//!   events, bounded in bytes) and into the queue of every live connection
//!   whose user may see it.
//! - **Membership.** The hub knows the chats of each connected user: listed
//!   from chat-service when their first stream opens, then kept current by
//!   the timeline events on the log (each carries every member after it).
//!   Membership changes that happen while the list is being fetched are
//!   applied on top of it, so the list is never stale. A removed member
//!   gets the `member_removed` event and nothing of the chat after it.
//! - **Resume.** A new connection *walks* the ring from its cursor, taking a
//!   page at a time as its client reads, and becomes *live* (pushed to) when
//!   it reaches the end: under the hub's lock, so nothing falls between the
//!   two and nothing comes twice. An event is visible to a user when they
//!   were a member when it happened (the nearest timeline event of its chat
//!   in the ring says) and still are (or it is their own removal).
//! - **Queues.** Each connection's queue is bounded in bytes: a live client
//!   that lets it fill is cut off, and resumes with its cursor.
//! - **Presence and typing** ride on [`crate::signals`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_events::{ChatId, UserId};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::cursor::Cursor;
use crate::frames::{self, Audience, Routed};
use crate::signals::{Signal, SignalBus, PRESENCE_CHATS};

/// Ring entries a walking connection takes at once.
const WALK_PAGE: usize = 64;

#[derive(Debug, Clone)]
pub struct HubLimits {
    pub queue_bytes: usize,
    pub ring_bytes: usize,
    pub max_per_user: u32,
    pub typing_interval: Duration,
    pub presence_grace: Duration,
    /// How often this replica says who is connected; three missed and the
    /// others take its users offline.
    pub heartbeat: Duration,
}

/// Something for a client.
#[derive(Debug, Clone)]
pub enum Item {
    /// An event of the log: sent with the connection's cursor.
    Event(Arc<Routed>),
    /// A frame as it is (signals, answers).
    Text(Arc<str>),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Event(r) => r.body.len() + 32,
            Item::Text(t) => t.len() + 32,
        }
    }
}

/// Why a connection was ended from the hub's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Its client let the queue fill up.
    Overflow,
    /// The server is shutting down.
    Shutdown,
}

#[derive(Default)]
struct ConnQueue {
    items: VecDeque<Item>,
    bytes: usize,
    closed: Option<Close>,
}

/// One client connection: its queue.
pub struct Conn {
    pub id: u64,
    pub user: UserId,
    queue: Mutex<ConnQueue>,
    notify: Notify,
    max_bytes: usize,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`; a queue past its bound closes the connection.
    pub fn push(&self, item: Item) -> bool {
        let mut q = self.lock();
        if q.closed.is_some() {
            return false;
        }
        let size = item.size();
        if q.bytes + size > self.max_bytes {
            q.closed = Some(Close::Overflow);
            drop(q);
            metrics::counter!("gateway_cut_off_total").increment(1);
            self.notify.notify_one();
            return false;
        }
        q.bytes += size;
        q.items.push_back(item);
        drop(q);
        metrics::gauge!("gateway_queued_bytes").increment(size as f64);
        self.notify.notify_one();
        true
    }

    fn close(&self, why: Close) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(why);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The next item, `Err` once closed (what is queued before a shutdown
    /// still goes out), `Ok(None)` when empty.
    pub fn pop(&self) -> Result<Option<Item>, Close> {
        let mut q = self.lock();
        match q.closed {
            Some(Close::Overflow) => return Err(Close::Overflow),
            Some(Close::Shutdown) if q.items.is_empty() => return Err(Close::Shutdown),
            _ => {}
        }
        let item = q.items.pop_front();
        if let Some(item) = &item {
            q.bytes -= item.size();
            metrics::gauge!("gateway_queued_bytes").decrement(item.size() as f64);
        }
        Ok(item)
    }

    fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Waits for something to pop (or a close).
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let left = self.lock().bytes;
        if left > 0 {
            metrics::gauge!("gateway_queued_bytes").decrement(left as f64);
        }
    }
}

/// Where a walking connection is in the ring.
pub struct Walker {
    next: u64,
    cursor: Cursor,
}

/// What starting a connection found.
pub struct Start {
    pub walker: Walker,
    /// The cursor the client starts from (its own, or the current position).
    pub cursor: Cursor,
    /// Why its own cursor was not used.
    pub reset: Option<&'static str>,
}

/// A connection's first step in: whether its user's chats must be fetched.
pub struct Admission {
    pub token: u64,
    pub needs_chats: bool,
}

#[derive(Default)]
struct UserEntry {
    chats: HashSet<ChatId>,
    loaded: bool,
    /// Membership changes seen while a fetch (by token) was running.
    loads: Vec<(u64, Vec<(ChatId, bool)>)>,
    live: Vec<Arc<Conn>>,
    conns: u32,
    typing: HashMap<ChatId, Instant>,
}

/// Who is online, as every replica says.
#[derive(Default)]
struct Presence {
    /// Per user: the replicas that have them connected (until when), and
    /// their chats.
    users: HashMap<UserId, (HashMap<Uuid, Instant>, Vec<ChatId>)>,
    by_chat: HashMap<ChatId, HashSet<UserId>>,
}

struct State {
    position: Vec<i64>,
    floor: Vec<i64>,
    ring: VecDeque<Arc<Routed>>,
    ring_base: u64,
    ring_bytes: usize,
    /// Per partition: (offset, sequence in the ring) of each ring entry.
    offsets: Vec<VecDeque<(i64, u64)>>,
    /// Per chat: the ring sequence of each of its timeline events.
    changes: HashMap<ChatId, VecDeque<u64>>,
    users: HashMap<UserId, UserEntry>,
    by_chat: HashMap<ChatId, HashSet<UserId>>,
    presence: Presence,
    closing: bool,
}

pub struct Hub {
    state: Mutex<State>,
    limits: HubLimits,
    next_id: AtomicU64,
    moved: watch::Sender<()>,
    ready: watch::Sender<bool>,
    signals: Arc<dyn SignalBus>,
    replica: Uuid,
}

/// A user the hub refused another connection.
#[derive(Debug)]
pub struct TooMany;

impl Hub {
    /// A hub for a log of `partitions` partitions whose ingestion starts at
    /// `start` (the next offset of each).
    pub fn new(start: Vec<i64>, limits: HubLimits, signals: Arc<dyn SignalBus>) -> Arc<Self> {
        let partitions = start.len();
        Arc::new(Self {
            state: Mutex::new(State {
                floor: start.clone(),
                position: start,
                ring: VecDeque::new(),
                ring_base: 0,
                ring_bytes: 0,
                offsets: vec![VecDeque::new(); partitions],
                changes: HashMap::new(),
                users: HashMap::new(),
                by_chat: HashMap::new(),
                presence: Presence::default(),
                closing: false,
            }),
            limits,
            next_id: AtomicU64::new(1),
            moved: watch::Sender::new(()),
            ready: watch::Sender::new(false),
            signals,
            replica: Uuid::new_v4(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> &HubLimits {
        &self.limits
    }

    pub fn partitions(&self) -> usize {
        self.lock().position.len()
    }

    pub fn position(&self) -> Vec<i64> {
        self.lock().position.clone()
    }

    /// Ingestion has reached what the log held when it started.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until ready, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until ingestion reaches `cursor`, at most `limit`.
    pub async fn wait_position(&self, cursor: &Cursor, limit: Duration) -> bool {
        let mut rx = self.moved.subscribe();
        let reached = |hub: &Self| {
            let state = hub.lock();
            cursor
                .offsets()
                .iter()
                .zip(&state.position)
                .all(|(c, p)| c <= p)
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if reached(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return reached(self);
            }
        }
    }

    /// Marks offsets `up_to` (the next of each partition) as processed
    /// without an event (records that are not events).
    pub fn skip(&self, partition: usize, offset: i64) {
        let mut state = self.lock();
        if let Some(p) = state.position.get_mut(partition) {
            *p = (*p).max(offset + 1);
        }
        drop(state);
        self.moved.send_replace(());
    }

    /// One event of the log: into the ring and to every live connection
    /// whose user may see it.
    pub fn ingest(&self, routed: Routed) {
        let routed = Arc::new(routed);
        let mut guard = self.lock();
        let state = &mut *guard;
        let partition = routed.partition;
        if partition >= state.position.len() || routed.offset < state.position[partition] {
            return; // not this log's, or seen already
        }
        state.position[partition] = routed.offset + 1;
        let seq = state.ring_base + state.ring.len() as u64;
        state.offsets[partition].push_back((routed.offset, seq));
        if matches!(routed.audience, Audience::Change { .. }) {
            state.changes.entry(routed.chat).or_default().push_back(seq);
        }
        state.ring_bytes += routed.size();
        state.ring.push_back(routed.clone());
        state.route(&routed);
        state.evict(self.limits.ring_bytes);
        let depth = state.ring.len();
        drop(guard);
        metrics::gauge!("gateway_ring_events").set(depth as f64);
        self.moved.send_replace(());
    }

    /// Admits one more connection of `user`, unless they have
    /// `max_per_user`.
    pub fn admit(&self, user: UserId) -> Result<Admission, TooMany> {
        let mut state = self.lock();
        let token = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = state.users.entry(user).or_default();
        if entry.conns >= self.limits.max_per_user {
            metrics::counter!("gateway_connections_refused_total").increment(1);
            return Err(TooMany);
        }
        entry.conns += 1;
        let needs_chats = !entry.loaded;
        if needs_chats {
            entry.loads.push((token, Vec::new()));
        }
        Ok(Admission { token, needs_chats })
    }

    /// The user's chats, fetched for `token`: what changed since the fetch
    /// began is applied on top.
    pub fn chats_loaded(&self, user: UserId, token: u64, mut chats: HashSet<ChatId>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.users.get_mut(&user) else {
            return;
        };
        let Some(at) = entry.loads.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, changes) = entry.loads.remove(at);
        for (chat, member) in changes {
            if member {
                chats.insert(chat);
            } else {
                chats.remove(&chat);
            }
        }
        if entry.loaded {
            return; // another connection's list is already kept current
        }
        entry.loaded = true;
        for chat in &chats {
            state.by_chat.entry(*chat).or_default().insert(user);
        }
        entry.chats = chats;
    }

    /// A connection that was admitted but will not start.
    pub fn abandon(&self, user: UserId, token: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(entry) = state.users.get_mut(&user) {
            entry.loads.retain(|(t, _)| *t != token);
            entry.conns = entry.conns.saturating_sub(1);
        }
        state.forget_if_gone(user);
    }

    /// Starts a connection of `user` (admitted, chats loaded) from `resume`
    /// or, without one, from now.
    pub fn start(
        &self,
        user: UserId,
        resume: Option<Result<Cursor, &'static str>>,
    ) -> (Arc<Conn>, Start) {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            queue: Mutex::default(),
            notify: Notify::new(),
            max_bytes: self.limits.queue_bytes,
        });
        let state = self.lock();
        let now = Cursor::new(state.position.clone());
        let resuming = resume.is_some();
        let (cursor, reset) = match resume {
            None => (now, None),
            Some(Err(reason)) => (now, Some(reason)),
            Some(Ok(c)) => {
                let pairs = || {
                    c.offsets()
                        .iter()
                        .zip(state.position.iter().zip(&state.floor))
                };
                if pairs().any(|(c, (_, floor))| c < floor) {
                    (now, Some("cursor_too_old"))
                } else if pairs().any(|(c, (p, _))| c > p) {
                    (now, Some("cursor_ahead"))
                } else {
                    (c, None)
                }
            }
        };
        // The first ring entry the cursor has not seen.
        let end = state.ring_base + state.ring.len() as u64;
        let next = state
            .offsets
            .iter()
            .zip(cursor.offsets())
            .filter_map(|(entries, from)| {
                let i = entries.partition_point(|(offset, _)| offset < from);
                entries.get(i).map(|(_, seq)| *seq)
            })
            .min()
            .unwrap_or(end);
        if reset.is_some() {
            metrics::counter!("gateway_resets_total").increment(1);
        } else if resuming {
            metrics::counter!("gateway_resumes_total").increment(1);
        }
        drop(state);
        let walker = Walker {
            next,
            cursor: cursor.clone(),
        };
        (
            conn,
            Start {
                walker,
                cursor,
                reset,
            },
        )
    }

    /// Moves a walking connection on by a page; `true` once it is live.
    /// A walker the ring has evicted past is reset to now (`Err` with the
    /// new cursor).
    pub fn walk(&self, conn: &Arc<Conn>, walker: &mut Walker) -> Result<bool, Cursor> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closing {
            return Ok(false);
        }
        if walker.next < state.ring_base {
            let now = Cursor::new(state.position.clone());
            walker.next = state.ring_base + state.ring.len() as u64;
            walker.cursor = now.clone();
            metrics::counter!("gateway_resets_total").increment(1);
            return Err(now);
        }
        let end = state.ring_base + state.ring.len() as u64;
        let room = self.limits.queue_bytes / 2;
        let mut taken = 0;
        while walker.next < end && taken < WALK_PAGE && conn.queued_bytes() < room {
            let routed = state.ring[(walker.next - state.ring_base) as usize].clone();
            let seq = walker.next;
            walker.next += 1;
            taken += 1;
            if !walker.cursor.is_due(routed.partition, routed.offset) {
                continue;
            }
            if state.visible(conn.user, &routed, seq) && !conn.push(Item::Event(routed)) {
                return Ok(false);
            }
        }
        if walker.next < end {
            return Ok(false);
        }
        let Some(entry) = state.users.get_mut(&conn.user) else {
            return Ok(false);
        };
        entry.live.push(conn.clone());
        metrics::gauge!("gateway_connections_live").increment(1.0);
        Ok(true)
    }

    /// The position, if `conn` is live and everything before it has left
    /// its queue: its cursor may move there.
    pub fn drained_position(&self, conn: &Arc<Conn>) -> Option<Vec<i64>> {
        let state = self.lock();
        let live = state
            .users
            .get(&conn.user)
            .is_some_and(|e| e.live.iter().any(|c| c.id == conn.id));
        let position = state.position.clone();
        drop(state);
        (live && conn.is_empty()).then_some(position)
    }

    /// A connection ended.
    pub fn leave(self: &Arc<Self>, conn: &Arc<Conn>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut last = false;
        if let Some(entry) = state.users.get_mut(&conn.user) {
            let before = entry.live.len();
            entry.live.retain(|c| c.id != conn.id);
            if entry.live.len() < before {
                metrics::gauge!("gateway_connections_live").decrement(1.0);
            }
            entry.conns = entry.conns.saturating_sub(1);
            last = entry.conns == 0;
        }
        state.forget_if_gone(conn.user);
        drop(guard);
        if last {
            // Offline after a grace period, unless they are back by then.
            let hub = self.clone();
            let user = conn.user;
            tokio::spawn(async move {
                tokio::time::sleep(hub.limits.presence_grace).await;
                let chats = {
                    let state = hub.lock();
                    if state.users.contains_key(&user) {
                        return;
                    }
                    state
                        .presence
                        .users
                        .get(&user)
                        .map(|(_, chats)| chats.clone())
                        .unwrap_or_default()
                };
                hub.signals
                    .publish(Signal::Presence {
                        replica: hub.replica,
                        user_id: user,
                        online: false,
                        chats,
                    })
                    .await;
            });
        }
    }

    /// Says `user` is online here, and queues for `conn` who of the
    /// members of their chats is online.
    pub async fn announce(&self, conn: &Arc<Conn>) {
        let (chats, online) = {
            let state = self.lock();
            let chats: Vec<ChatId> = state
                .users
                .get(&conn.user)
                .map(|e| e.chats.iter().take(PRESENCE_CHATS).copied().collect())
                .unwrap_or_default();
            let mut online = HashSet::new();
            for chat in &chats {
                if let Some(users) = state.presence.by_chat.get(chat) {
                    online.extend(users.iter().filter(|u| **u != conn.user).copied());
                }
            }
            (chats, online)
        };
        for user in online {
            conn.push(Item::Text(frames::presence(user, true).into()));
        }
        self.signals
            .publish(Signal::Presence {
                replica: self.replica,
                user_id: conn.user,
                online: true,
                chats,
            })
            .await;
    }

    /// `user` typing in `chat`: `Err` when they are not a member; `Ok(false)`
    /// when rate-limited (dropped).
    pub async fn typing(&self, user: UserId, chat: ChatId) -> Result<bool, ()> {
        {
            let mut state = self.lock();
            let Some(entry) = state.users.get_mut(&user) else {
                return Err(());
            };
            if !entry.chats.contains(&chat) {
                return Err(());
            }
            let now = Instant::now();
            if entry
                .typing
                .get(&chat)
                .is_some_and(|at| now.duration_since(*at) < self.limits.typing_interval)
            {
                return Ok(false);
            }
            entry
                .typing
                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            entry.typing.insert(chat, now);
        }
        self.signals
            .publish(Signal::Typing {
                chat_id: chat,
                user_id: user,
            })
            .await;
        Ok(true)
    }

    /// A signal from any replica.
    pub fn signal(&self, signal: Signal) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match signal {
            Signal::Typing { chat_id, user_id } => {
                let frame: Arc<str> = frames::typing(chat_id, user_id).into();
                for conn in state.live_members(chat_id).filter(|c| c.user != user_id) {
                    conn.push(Item::Text(frame.clone()));
                }
                metrics::counter!("gateway_signals_total", "type" => "typing").increment(1);
            }
            Signal::Presence {
                replica,
                user_id,
                online,
                chats,
            } => {
                let was = state.presence.is_online(user_id);
                let known = state.presence.chats(user_id);
                let tell = if chats.is_empty() {
                    known
                } else {
                    chats.clone()
                };
                if online {
                    state.presence.online(
                        user_id,
                        replica,
                        Instant::now() + self.limits.heartbeat * 3,
                        chats,
                    );
                } else {
                    state.presence.offline(user_id, replica);
                }
                if was != state.presence.is_online(user_id) {
                    state.tell_presence(user_id, online, &tell);
                }
                metrics::counter!("gateway_signals_total", "type" => "presence").increment(1);
            }
            Signal::Heartbeat { replica, users } => {
                let until = Instant::now() + self.limits.heartbeat * 3;
                for user in users {
                    if let Some((replicas, _)) = state.presence.users.get_mut(&user) {
                        replicas.insert(replica, until);
                    }
                }
            }
        }
    }

    /// Users whose replicas stopped vouching for them go offline.
    pub fn expire_presence(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = Instant::now();
        let mut gone = Vec::new();
        for (user, (replicas, _)) in &mut state.presence.users {
            replicas.retain(|_, until| *until > now);
            if replicas.is_empty() {
                gone.push(*user);
            }
        }
        for user in gone {
            let chats = state.presence.chats(user);
            state.presence.offline(user, Uuid::nil());
            state.tell_presence(user, false, &chats);
        }
    }

    /// This replica's heartbeat: who is connected here.
    pub fn heartbeat(&self) -> Signal {
        let state = self.lock();
        Signal::Heartbeat {
            replica: self.replica,
            users: state.users.keys().copied().collect(),
        }
    }

    pub fn signals(&self) -> &Arc<dyn SignalBus> {
        &self.signals
    }

    /// Ends every connection: each tells its client to reconnect.
    pub fn shut_down(&self) {
        let mut state = self.lock();
        state.closing = true;
        for entry in state.users.values() {
            for conn in &entry.live {
                conn.close(Close::Shutdown);
            }
        }
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Connected users and live connections (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (
            state.users.len(),
            state.users.values().map(|e| e.live.len()).sum(),
        )
    }
}

impl Presence {
    fn chats(&self, user: UserId) -> Vec<ChatId> {
        self.users
            .get(&user)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    fn is_online(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    fn online(&mut self, user: UserId, replica: Uuid, until: Instant, chats: Vec<ChatId>) {
        for chat in &chats {
            self.by_chat.entry(*chat).or_default().insert(user);
        }
        let entry = self.users.entry(user).or_default();
        entry.0.insert(replica, until);
        if !chats.is_empty() {
            entry.1 = chats;
        }
    }

    fn offline(&mut self, user: UserId, replica: Uuid) {
        let Some((replicas, _)) = self.users.get_mut(&user) else {
            return;
        };
        replicas.remove(&replica);
        if !replicas.is_empty() {
            return;
        }
        if let Some((_, chats)) = self.users.remove(&user) {
            for chat in chats {
                if let Some(users) = self.by_chat.get_mut(&chat) {
                    users.remove(&user);
                    if users.is_empty() {
                        self.by_chat.remove(&chat);
                    }
                }
            }
        }
    }
}

impl State {
    /// Live connections of the members of `chat` here.
    fn live_members(&self, chat: ChatId) -> impl Iterator<Item = &Arc<Conn>> {
        self.by_chat
            .get(&chat)
            .into_iter()
            .flatten()
            .filter_map(|u| self.users.get(u))
            .flat_map(|e| e.live.iter())
    }

    /// Tells the members of `chats` connected here that `user` came online
    /// or went offline.
    fn tell_presence(&self, user: UserId, online: bool, chats: &[ChatId]) {
        let mut told = HashSet::new();
        let frame: Arc<str> = frames::presence(user, online).into();
        for chat in chats {
            for member in self.by_chat.get(chat).into_iter().flatten() {
                if *member != user && told.insert(*member) {
                    for conn in self
                        .users
                        .get(member)
                        .into_iter()
                        .flat_map(|e| e.live.iter())
                    {
                        conn.push(Item::Text(frame.clone()));
                    }
                }
            }
        }
    }

    /// Drops what the hub keeps of a user with no connection left.
    fn forget_if_gone(&mut self, user: UserId) {
        let gone = self
            .users
            .get(&user)
            .is_some_and(|e| e.conns == 0 && e.loads.is_empty());
        if !gone {
            return;
        }
        if let Some(entry) = self.users.remove(&user) {
            for chat in entry.chats {
                if let Some(users) = self.by_chat.get_mut(&chat) {
                    users.remove(&user);
                    if users.is_empty() {
                        self.by_chat.remove(&chat);
                    }
                }
            }
        }
    }

    /// Whether `user` was a member of `chat` just before the ring entry
    /// `seq`: the nearest timeline event of the chat in the ring says; with
    /// none, their membership now.
    fn member_before(&self, user: UserId, chat: ChatId, seq: u64) -> bool {
        let now = self
            .users
            .get(&user)
            .is_some_and(|e| e.chats.contains(&chat));
        let Some(changes) = self.changes.get(&chat) else {
            return now;
        };
        let i = changes.partition_point(|s| *s < seq);
        let audience = |s: u64| &self.ring[(s - self.ring_base) as usize].audience;
        if i > 0 {
            if let Audience::Change { members, .. } = audience(changes[i - 1]) {
                return members.contains(&user);
            }
        }
        match changes.get(i).map(|s| audience(*s)) {
            Some(Audience::Change {
                members,
                removed,
                added,
                created,
            }) => {
                if *removed == Some(user) {
                    true
                } else if *added == Some(user) || *created {
                    false
                } else {
                    members.contains(&user)
                }
            }
            _ => now,
        }
    }

    /// Whether `user` may see the ring entry `seq`.
    fn visible(&self, user: UserId, routed: &Routed, seq: u64) -> bool {
        let now = self
            .users
            .get(&user)
            .is_some_and(|e| e.chats.contains(&routed.chat));
        match &routed.audience {
            Audience::Direct { sender, recipient } => user == *sender || user == *recipient,
            Audience::Members => now && self.member_before(user, routed.chat, seq),
            Audience::Change {
                members, removed, ..
            } => {
                let mine = *removed == Some(user);
                (now || mine)
                    && (mine
                        || members.contains(&user)
                        || self.member_before(user, routed.chat, seq))
            }
        }
    }

    /// Pushes a new event to the live connections that may see it, and
    /// applies a timeline event to the members' chat lists.
    fn route(&mut self, routed: &Arc<Routed>) {
        let chat = routed.chat;
        let mut targets: Vec<UserId> = Vec::new();
        match &routed.audience {
            Audience::Direct { sender, recipient } => {
                targets.push(*sender);
                if recipient != sender {
                    targets.push(*recipient);
                }
            }
            Audience::Members => {
                targets.extend(self.by_chat.get(&chat).into_iter().flatten().copied());
            }
            Audience::Change {
                members, removed, ..
            } => {
                let mut all: HashSet<UserId> = self
                    .by_chat
                    .get(&chat)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                all.extend(members.iter().copied());
                all.extend(removed.iter().copied());
                for user in &all {
                    let member = members.contains(user);
                    let Some(entry) = self.users.get_mut(user) else {
                        continue;
                    };
                    for (_, changes) in &mut entry.loads {
                        changes.push((chat, member));
                    }
                    if !entry.loaded {
                        continue;
                    }
                    let was = entry.chats.contains(&chat);
                    if member && !was {
                        entry.chats.insert(chat);
                        self.by_chat.entry(chat).or_default().insert(*user);
                    } else if !member && was {
                        entry.chats.remove(&chat);
                        if let Some(users) = self.by_chat.get_mut(&chat) {
                            users.remove(user);
                            if users.is_empty() {
                                self.by_chat.remove(&chat);
                            }
                        }
                    }
                    // Those added or still there see it; so does whoever
                    // was removed (nothing of the chat after it).
                    if member || (was && *removed == Some(*user)) {
                        targets.push(*user);
                    }
                }
            }
        }
        let mut delivered = 0u64;
        for user in targets {
            let Some(entry) = self.users.get_mut(&user) else {
                continue;
            };
            if let Audience::Direct { .. } = routed.audience {
                if entry.loaded {
                    entry.chats.insert(chat);
                    self.by_chat.entry(chat).or_default().insert(user);
                }
            }
            let entry = &self.users[&user];
            for conn in &entry.live {
                if conn.push(Item::Event(routed.clone())) {
                    delivered += 1;
                }
            }
        }
        metrics::counter!("gateway_events_routed_total").increment(delivered);
    }

    /// Drops the oldest ring entries past `max` bytes.
    fn evict(&mut self, max: usize) {
        while self.ring_bytes > max {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            let seq = self.ring_base;
            self.ring_base += 1;
            self.ring_bytes -= old.size();
            self.floor[old.partition] = old.offset + 1;
            self.offsets[old.partition].pop_front();
            if let Some(changes) = self.changes.get_mut(&old.chat) {
                if changes.front() == Some(&seq) {
                    changes.pop_front();
                }
                if changes.is_empty() {
                    self.changes.remove(&old.chat);
                }
            }
        }
    }
}
