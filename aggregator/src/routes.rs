//! HTTP: probes, metrics and, with the embedded sink, one Server-Sent
//! Events stream per chat.
//!
//! `GET /chat/{id}/stream` (members only, like every chat route): the
//! chat's newest batch documents first (as `added`, oldest first), then
//! `added` / `modified` events as they are written. Every event has an id;
//! reconnecting with `Last-Event-ID` replays exactly the changes missed, or
//! a fresh snapshot if they are older than the kept change feed. Event data
//! is the batch document (see [`crate::sink::doc`]). Browsers, whose
//! `EventSource` cannot send an `Authorization` header, first get a
//! single-use ticket from `POST /events/ticket` and open the stream with
//! `?ticket=…` (see [`auth_validator::tickets`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth_validator::tickets::Ticket;
use auth_validator::{AuthUser, StreamUser, Tickets, Verifier};
use axum::extract::{FromRef, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use service_kit::error::{ErrorBody, ErrorDetail};
use service_kit::openapi::Conventions;
use service_kit::probes::Check;
use service_kit::{ApiError, Path};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::config::StreamLimits;
use crate::sink::doc::{BatchDoc, Rfc3339};
use crate::sink::embedded::{Change, ChangeKind, Feed, Resume};
use crate::sink::Sink;
use crate::source::SourceStatus;
use chat_service::outbox::OutboxReader;

/// Newest batches sent when a stream starts; older ones come from history.
pub const SNAPSHOT_BATCHES: i64 = 50;

/// Documents a stream reads from the store at once, catching up or sending
/// its snapshot.
const PAGE: i64 = 8;

/// A batch document as a stream's `added` and `modified` events carry it.
pub type StreamBatch = BatchDoc<'static, Rfc3339>;

/// The data of a `removed` event: which batch expired.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemovedBatch {
    pub id: Uuid,
    pub chat_id: Uuid,
    pub seq: i64,
}

/// The data of a stream event: the batch document (`added`, `modified`)
/// or the batch that expired (`removed`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // documentation only
pub enum StreamEventData {
    Batch(Box<StreamBatch>),
    Removed(RemovedBatch),
}

/// The aggregator's HTTP API: the probes and, with the embedded sink, the
/// streams.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "aggregator",
        description = "Batches of consecutive messages, streamed to clients (embedded realtime store)."
    ),
    modifiers(&Conventions),
    paths(
        stream,
        ticket
    ),
    components(schemas(StreamEventData, StreamBatch, RemovedBatch, Rfc3339, Ticket, ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// Paths of [`ApiDoc`] served only with the embedded sink.
const STREAM_PATHS: [&str; 2] = ["/chat/{id}/stream", "/events/ticket"];

/// The document of what this aggregator serves: with `streams` (the
/// embedded sink) or without.
pub fn openapi(streams: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if !streams {
        doc.paths
            .paths
            .retain(|path, _| !STREAM_PATHS.contains(&path.as_str()));
    }
    doc
}

#[derive(Clone)]
pub struct ProbeState {
    pub sink: Arc<dyn Sink>,
    pub source: Arc<SourceStatus>,
}

pub fn probes(state: ProbeState) -> Router {
    service_kit::probes::router(get(readyz)).with_state(state)
}

/// Ready when the sink answers and the source can deliver: a Kafka member
/// without partitions (joining, rebalancing, or a spare replica) is not.
async fn readyz(State(state): State<ProbeState>) -> Response {
    let source = state.source.check();
    service_kit::probes::readyz(vec![
        Check::new("source", state.source.backend(), source),
        Check::new("sink", state.sink.backend(), state.sink.ping().await),
    ])
}

#[derive(Clone)]
pub struct StreamState {
    pub feed: Feed,
    pub chats: OutboxReader,
    pub verifier: Verifier,
    /// Single-use tickets for browsers' `EventSource`.
    pub tickets: Tickets,
    pub limits: StreamLimits,
    /// Who has how many streams open.
    pub open: OpenStreams,
}

impl FromRef<StreamState> for Verifier {
    fn from_ref(state: &StreamState) -> Verifier {
        state.verifier.clone()
    }
}

impl FromRef<StreamState> for Tickets {
    fn from_ref(state: &StreamState) -> Tickets {
        state.tickets.clone()
    }
}

pub fn streams(state: StreamState) -> Router {
    Router::new()
        .route("/chat/{id}/stream", get(stream))
        .route("/events/ticket", post(ticket))
        .with_state(state)
}

/// Get a stream ticket.
///
/// A single-use ticket, valid for `expires_in` seconds, that opens one
/// stream as the caller with `?ticket=…`: browsers' `EventSource` cannot
/// send an `Authorization` header, and access tokens never go in URLs.
#[utoipa::path(post, path = "/events/ticket", security(("bearer" = [])), responses(
    (status = 200, body = Ticket),
    (status = 503, description = "too many tickets outstanding; retry shortly"),
))]
async fn ticket(
    State(state): State<StreamState>,
    caller: AuthUser,
) -> Result<axum::Json<auth_validator::tickets::Ticket>, ApiError> {
    state.tickets.issue(&caller).map(axum::Json)
}

fn event(kind: ChangeKind, version: i64, doc: &str) -> Event {
    Event::default()
        .event(kind.as_str())
        .id(version.to_string())
        .data(doc)
}

/// Watch a chat's batches (Server-Sent Events).
///
/// Participants only; anyone else gets 404. The stream opens with the
/// chat's newest batch documents as `added` events (oldest first), then
/// sends `added` and `modified` as batches are written, and `removed` (data
/// `{id, chat_id, seq}`) when a batch expires. The data of `added` and
/// `modified` is the batch document (`StreamBatch`). Each event's `id` is a
/// change version: reconnect with `Last-Event-ID` for exactly the changes
/// missed. A `Last-Event-ID` this stream cannot resume from (older than the
/// changes kept, or newer than any) gets a `reset` event (data
/// `{"reason": "cursor_too_old" | "cursor_ahead"}`): drop what you hold,
/// a fresh snapshot follows. A comment line keeps the connection alive
/// every 15 s. The stream ends when the token (or the ticket's token)
/// expires, after an `expired` event: reconnect with a fresh one. A client
/// that leaves `--stream-queue-bytes` of events unread for
/// `--stream-stall-timeout-ms` is disconnected and resumes with
/// `Last-Event-ID`. At most `--max-streams-per-user` streams per user are
/// open at once. Authenticate with `Authorization: Bearer …` or, from a
/// browser, `?ticket=` from `POST /events/ticket`.
#[utoipa::path(
    get,
    path = "/chat/{id}/stream",
    params(
        ("id" = Uuid, Path, description = "The chat."),
        ("ticket" = Option<String>, Query, description = "A ticket from `POST /events/ticket`, instead of the `Authorization` header."),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event id received: resume after it."),
    ),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "`text/event-stream` of `added`, `modified`, `removed`, `reset` and `expired` events", content_type = "text/event-stream", body = StreamEventData),
        (status = 401, description = "no valid token or ticket"),
        (status = 404, description = "no such chat, or not a member"),
        (status = 429, description = "`too_many_streams`: the user has `--max-streams-per-user` streams open", body = ErrorBody),
        (status = 503, description = "the chat store is unavailable"),
    )
)]
async fn stream(
    State(state): State<StreamState>,
    StreamUser(caller): StreamUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("chat not found");
    let chat = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let member = state.chats.is_member(chat, caller.id).await.map_err(|e| {
        tracing::error!(error = %e, "reading chat membership");
        ApiError::unavailable("chat store unavailable")
    })?;
    if !member {
        return Err(not_found());
    }
    let open = state
        .open
        .open(caller.id, state.limits.max_streams_per_user.get())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "at most {} streams per user are open at once; close one first",
                    state.limits.max_streams_per_user
                ),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(1))
        })?;
    // A cursor is a change version, never negative; anything else is no
    // cursor at all.
    let resume: Option<i64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &i64| *v >= 0);
    // Subscribe before reading, so nothing falls between the two.
    let live = state.feed.subscribe();
    let (queue, rx) = Queue::new(&state.limits);
    let reader = Reader {
        chats: state.chats.clone(),
        chat,
        user: caller.id,
        expires: tokio::time::Instant::now() + caller.claims.remaining(),
    };
    tokio::spawn(async move {
        follow(state.feed.clone(), reader, resume, live, queue).await;
        drop(open);
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        // The event's room in the queue is freed as it leaves for the client.
        rx.recv()
            .await
            .map(|(event, _room)| (Ok::<_, Infallible>(event), rx))
    });
    metrics::counter!("aggregator_streams_opened_total").increment(1);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The streams each user has open in this process.
#[derive(Clone, Default)]
pub struct OpenStreams(Arc<Mutex<HashMap<Uuid, u32>>>);

impl OpenStreams {
    /// One more stream for `user`, unless they have `max` open; counted in
    /// `aggregator_streams_open` until the returned guard drops.
    fn open(&self, user: Uuid, max: u32) -> Option<OpenStream> {
        let mut open = self.lock();
        let count = open.entry(user).or_insert(0);
        if *count >= max {
            metrics::counter!("aggregator_streams_refused_total").increment(1);
            return None;
        }
        *count += 1;
        metrics::gauge!("aggregator_streams_open").increment(1.0);
        Some(OpenStream {
            streams: self.clone(),
            user,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, u32>> {
        // Only counters: a poisoned map is still right.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One open stream, from its start until its task ends.
struct OpenStream {
    streams: OpenStreams,
    user: Uuid,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
        metrics::gauge!("aggregator_streams_open").decrement(1.0);
    }
}

/// The events waiting for one client, bounded in bytes: each holds room in
/// the queue (its size, at most the whole queue) until the response body
/// takes it.
struct Queue {
    tx: mpsc::Sender<(Event, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    bytes: u32,
    stall: Duration,
}

impl Queue {
    fn new(limits: &StreamLimits) -> (Self, mpsc::Receiver<(Event, OwnedSemaphorePermit)>) {
        let bytes = limits.stream_queue_bytes.get();
        let (tx, rx) = mpsc::channel(256);
        let queue = Self {
            tx,
            room: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
            stall: limits.stall_timeout(),
        };
        (queue, rx)
    }

    /// Queues `event` (`len` bytes of data); `false` when the client is
    /// gone, or left the queue full for the stall timeout (then it is cut
    /// off: ending the stream ends the response).
    async fn send(&self, event: Event, len: usize) -> bool {
        let need = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.bytes);
        let room = tokio::select! {
            room = tokio::time::timeout(self.stall, self.room.clone().acquire_many_owned(need)) => room,
            () = self.tx.closed() => return false,
        };
        let Ok(Ok(room)) = room else {
            metrics::counter!("aggregator_streams_cut_off_total").increment(1);
            tracing::info!("a stream's client stopped reading: disconnected");
            return false;
        };
        match tokio::time::timeout(self.stall, self.tx.send((event, room))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                metrics::counter!("aggregator_streams_cut_off_total").increment(1);
                false
            }
        }
    }

    async fn change(&self, kind: ChangeKind, version: i64, doc: &str) -> bool {
        self.send(event(kind, version, doc), doc.len()).await
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// Who follows which chat's stream, until when.
struct Reader {
    chats: OutboxReader,
    chat: Uuid,
    user: Uuid,
    expires: tokio::time::Instant,
}

impl Reader {
    /// Whether the reader is still a member: a removed member's stream ends
    /// before it carries anything written after the removal.
    async fn still_member(&self) -> bool {
        match self.chats.is_member(self.chat, self.user).await {
            Ok(member) => member,
            Err(e) => {
                tracing::error!(error = %e, "reading chat membership");
                false
            }
        }
    }
}

/// Sends the snapshot or the missed changes, then live changes, until the
/// client goes away, stops reading, stops being a member or its token
/// expires.
async fn follow(
    store: Feed,
    reader: Reader,
    resume: Option<i64>,
    mut live: broadcast::Receiver<Change>,
    queue: Queue,
) {
    let chat = reader.chat;
    let mut last = match catch_up(&store, chat, resume, &queue).await {
        Some(v) => v,
        None => return,
    };
    loop {
        // Ends as soon as the client goes away, even if nothing changes.
        let received = tokio::select! {
            received = live.recv() => received,
            () = queue.closed() => return,
            () = tokio::time::sleep_until(reader.expires) => {
                let expired = Event::default().event("expired").data(r#"{"reason":"token_expired"}"#);
                queue.send(expired, 32).await;
                return;
            }
        };
        match received {
            Ok(change) if change.chat_id == chat && change.version > last => {
                if !reader.still_member().await {
                    return;
                }
                last = change.version;
                if !queue.change(change.kind, change.version, &change.doc).await {
                    return;
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !reader.still_member().await {
                    return;
                }
                // Too slow for the live feed: replay from the table instead.
                match catch_up(&store, chat, Some(last), &queue).await {
                    Some(v) => last = v,
                    None => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends what the client lacks; returns the newest version it now has, or
/// `None` if the client is gone or the store failed. Reads [`PAGE`]
/// documents at a time: a stream whose client does not read holds at most
/// that many beyond its queue, however far behind it is.
async fn catch_up(store: &Feed, chat: Uuid, resume: Option<i64>, queue: &Queue) -> Option<i64> {
    if let Some(from) = resume {
        let mut last = from;
        let reason = loop {
            match store.changes_since(chat, last, PAGE).await {
                Ok(Resume::Changes(changes)) => {
                    let more = changes.len() == PAGE as usize;
                    for c in changes {
                        last = c.version;
                        if !queue.change(c.kind, c.version, &c.doc).await {
                            return None;
                        }
                    }
                    if !more {
                        return Some(last);
                    }
                }
                // Also when the feed was pruned past `last` between pages.
                Ok(Resume::TooOld) => break "cursor_too_old",
                Ok(Resume::Ahead) => break "cursor_ahead",
                Err(e) => {
                    tracing::error!(error = %e, "reading the change feed");
                    return None;
                }
            }
        };
        let data = format!(r#"{{"reason":"{reason}"}}"#);
        metrics::counter!("aggregator_streams_reset_total").increment(1);
        if !queue
            .send(Event::default().event("reset").data(&data), data.len())
            .await
        {
            return None;
        }
    }
    let (mut seq, version) = match store.snapshot_start(chat, SNAPSHOT_BATCHES).await {
        Ok((Some(seq), version)) => (seq, version),
        Ok((None, version)) => return Some(version),
        Err(e) => {
            tracing::error!(error = %e, "reading the snapshot");
            return None;
        }
    };
    loop {
        let docs = match store.batches_from(chat, seq, PAGE).await {
            Ok(docs) => docs,
            Err(e) => {
                tracing::error!(error = %e, "reading the snapshot");
                return None;
            }
        };
        let more = docs.len() == PAGE as usize;
        for (at, doc) in docs {
            seq = at + 1;
            if !queue.change(ChangeKind::Added, version, &doc).await {
                return None;
            }
        }
        if !more {
            return Some(version);
        }
    }
}

service_kit::test_every_route_is_documented!(include_str!("routes.rs"), openapi(true));
