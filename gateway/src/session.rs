//! One client's stream, whatever carries it: admission, the chat list, the
//! start (or resume), then frames until the client goes, is cut off, its
//! token expires or the server shuts down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use auth_validator::AuthUser;
use axum::http::{header, HeaderValue, StatusCode};
use service_kit::ApiError;

use crate::chat_api::{chats_of, ChatApi, ChatsError};
use crate::cursor::Cursor;
use crate::frames;
use crate::hub::{Close, Conn, Hub, Item, Walker};

/// How often an idle stream hears from the server.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a stream may wait for the hub to catch up with its cursor (a
/// replica a little behind the one the client came from).
const AHEAD_WAIT: Duration = Duration::from_secs(2);
/// How long a stream may wait for the hub to be ready.
const READY_WAIT: Duration = Duration::from_secs(10);

/// What goes to the client next.
#[derive(Debug)]
pub enum Out {
    /// A log event: its cursor and its frame.
    Event(String, String),
    /// A frame without cursor.
    Text(Arc<str>),
    /// The stream moved on with nothing for the client: its new cursor.
    Cursor(String),
    /// Nothing to say: keep the connection alive.
    KeepAlive,
}

/// An open stream.
pub struct Session {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    walker: Walker,
    live: bool,
    cursor: Cursor,
    first: VecDeque<Out>,
    expires: tokio::time::Instant,
    tick: tokio::time::Instant,
    ended: bool,
    /// Whether it was ended by the hub for a slow client.
    pub cut_off: bool,
}

/// Undoes an admission (or a whole connection) when dropped.
struct Admitted {
    hub: Arc<Hub>,
    user: chat_events::UserId,
    token: u64,
    done: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.done {
            self.hub.abandon(self.user, self.token);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.leave(&self.conn);
        metrics::gauge!("gateway_connections_open").decrement(1.0);
    }
}

fn unavailable(what: &str) -> ApiError {
    ApiError::unavailable(what.to_owned()).with_header(header::RETRY_AFTER, HeaderValue::from(1))
}

impl Session {
    /// Opens a stream for `user`, resuming from `resume` (the client's
    /// last cursor) when given.
    pub async fn open(
        hub: Arc<Hub>,
        api: &dyn ChatApi,
        user: &AuthUser,
        resume: Option<&str>,
    ) -> Result<Self, ApiError> {
        if hub.is_closing() {
            return Err(unavailable("the gateway is shutting down: reconnect"));
        }
        if !hub.wait_ready(READY_WAIT).await {
            return Err(unavailable("the gateway is still reading the log"));
        }
        let id = chat_events::UserId::from(user.id);
        let admission = hub.admit(id).map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "at most {} streams per user are open at once; close one first",
                    hub.limits().max_per_user
                ),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(1))
        })?;
        let mut admitted = Admitted {
            hub: hub.clone(),
            user: id,
            token: admission.token,
            done: false,
        };
        if admission.needs_chats {
            match chats_of(api, user.token.as_str()).await {
                Ok(chats) => hub.chats_loaded(id, admission.token, chats),
                Err(ChatsError::Unauthorized) => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        "the token was refused",
                    ))
                }
                Err(ChatsError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "listing a user's chats");
                    return Err(unavailable("chat-service unavailable"));
                }
            }
        }
        let resume = match resume {
            None => None,
            Some(text) => Some(match Cursor::parse(text, hub.partitions()) {
                Ok(cursor) => {
                    hub.wait_position(&cursor, AHEAD_WAIT).await;
                    Ok(cursor)
                }
                Err(_) => Err("cursor_invalid"),
            }),
        };
        let (conn, start) = hub.start(id, resume);
        admitted.done = true;
        drop(admitted);
        metrics::gauge!("gateway_connections_open").increment(1.0);
        let mut first = VecDeque::new();
        let now = start.cursor.to_string();
        first.push_back(Out::Text(frames::hello(&now, id).into()));
        if let Some(reason) = start.reset {
            first.push_back(Out::Text(frames::reset(reason, &now).into()));
        }
        let session = Self {
            hub: hub.clone(),
            conn,
            walker: start.walker,
            live: false,
            cursor: start.cursor,
            first,
            expires: tokio::time::Instant::now() + user.claims.remaining(),
            tick: tokio::time::Instant::now() + KEEP_ALIVE,
            ended: false,
            cut_off: false,
        };
        hub.announce(&session.conn).await;
        Ok(session)
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Queues a frame for the client (a WebSocket answer).
    pub fn answer(&self, frame: String) {
        self.conn.push(Item::Text(frame.into()));
    }

    /// The next thing to send; `None` when the stream is over. Cancel-safe:
    /// nothing is taken from the queue without being returned.
    pub async fn next(&mut self) -> Option<Out> {
        if let Some(out) = self.first.pop_front() {
            return Some(out);
        }
        if self.ended {
            return None;
        }
        loop {
            match self.conn.pop() {
                Err(Close::Overflow) => {
                    self.cut_off = true;
                    tracing::info!(user = %self.conn.user, "a stream's client stopped reading: disconnected");
                    return None;
                }
                Err(Close::Shutdown) => {
                    self.ended = true;
                    return Some(Out::Text(frames::reconnect("shutdown").into()));
                }
                Ok(Some(Item::Event(routed))) => {
                    if !self.cursor.is_due(routed.partition, routed.offset) {
                        continue;
                    }
                    self.cursor.advance(routed.partition, routed.offset);
                    let cursor = self.cursor.to_string();
                    let frame = routed.frame(&cursor);
                    return Some(Out::Event(cursor, frame));
                }
                Ok(Some(Item::Text(text))) => return Some(Out::Text(text)),
                Ok(None) => {}
            }
            if !self.live {
                if self.hub.is_closing() {
                    self.ended = true;
                    return Some(Out::Text(frames::reconnect("shutdown").into()));
                }
                match self.hub.walk(&self.conn, &mut self.walker) {
                    Ok(live) => self.live = live,
                    Err(now) => {
                        self.cursor = now;
                        let cursor = self.cursor.to_string();
                        return Some(Out::Text(frames::reset("cursor_too_old", &cursor).into()));
                    }
                }
                // A page walked (or the walk is over): send what it queued.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = self.conn.ready() => {}
                () = tokio::time::sleep_until(self.tick) => {
                    self.tick = tokio::time::Instant::now() + KEEP_ALIVE;
                    if let Some(position) = self.hub.drained_position(&self.conn) {
                        if self.cursor.catch_up(&position) {
                            return Some(Out::Cursor(self.cursor.to_string()));
                        }
                    }
                    return Some(Out::KeepAlive);
                }
                () = tokio::time::sleep_until(self.expires) => {
                    self.ended = true;
                    return Some(Out::Text(frames::expired().into()));
                }
            }
        }
    }
}
