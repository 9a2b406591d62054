//! HTTP: probes, metrics and, with the embedded sink, one Server-Sent
//! Events stream per chat.
//!
//! `GET /chat/{id}/stream` (participants only, like every chat route): the
//! chat's newest batch documents first (as `added`, oldest first), then
//! `added` / `modified` events as they are written. Every event has an id;
//! reconnecting with `Last-Event-ID` replays exactly the changes missed, or
//! a fresh snapshot if they are older than the kept change feed. Event data
//! is the batch document (see [`crate::sink::doc`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use auth_validator::{AuthUser, Verifier};
use axum::extract::{FromRef, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use service_kit::probes::Check;
use service_kit::{ApiError, Path};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::sink::embedded::{Change, ChangeKind, Feed};
use crate::sink::Sink;
use crate::source::SourceStatus;
use chat_service::outbox::OutboxReader;

/// Newest batches sent when a stream starts; older ones come from history.
pub const SNAPSHOT_BATCHES: i64 = 50;

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
}

impl FromRef<StreamState> for Verifier {
    fn from_ref(state: &StreamState) -> Verifier {
        state.verifier.clone()
    }
}

pub fn streams(state: StreamState) -> Router {
    Router::new()
        .route("/chat/{id}/stream", get(stream))
        .with_state(state)
}

fn event(kind: ChangeKind, version: i64, doc: &str) -> Event {
    Event::default()
        .event(kind.as_str())
        .id(version.to_string())
        .data(doc)
}

async fn stream(
    State(state): State<StreamState>,
    caller: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("chat not found");
    let chat = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let participants = state.chats.members(chat).await.map_err(|e| {
        tracing::error!(error = %e, "reading chat participants");
        ApiError::unavailable("chat store unavailable")
    })?;
    if !participants.is_some_and(|p| p.contains(&caller.id)) {
        return Err(not_found());
    }
    let resume: Option<i64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    // Subscribe before reading, so nothing falls between the two.
    let live = state.feed.subscribe();
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(follow(state.feed.clone(), chat, resume, live, tx));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    metrics::counter!("aggregator_streams_opened_total").increment(1);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Sends the snapshot or the missed changes, then live changes, until the
/// client goes away.
async fn follow(
    store: Feed,
    chat: Uuid,
    resume: Option<i64>,
    mut live: broadcast::Receiver<Change>,
    tx: mpsc::Sender<Event>,
) {
    let mut last = match catch_up(&store, chat, resume, &tx).await {
        Some(v) => v,
        None => return,
    };
    loop {
        match live.recv().await {
            Ok(change) if change.chat_id == chat && change.version > last => {
                last = change.version;
                if tx
                    .send(event(change.kind, change.version, &change.doc))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too slow for the live feed: replay from the table instead.
                match catch_up(&store, chat, Some(last), &tx).await {
                    Some(v) => last = v,
                    None => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends what the client lacks; returns the newest version it now has, or
/// `None` if the client is gone or the store failed.
async fn catch_up(
    store: &Feed,
    chat: Uuid,
    resume: Option<i64>,
    tx: &mpsc::Sender<Event>,
) -> Option<i64> {
    if let Some(from) = resume {
        match store.changes_since(chat, from).await {
            Ok(Some(changes)) => {
                let mut last = from;
                for c in changes {
                    last = c.version;
                    tx.send(event(c.kind, c.version, &c.doc)).await.ok()?;
                }
                return Some(last);
            }
            Ok(None) => {} // too old: fall through to a snapshot
            Err(e) => {
                tracing::error!(error = %e, "reading the change feed");
                return None;
            }
        }
    }
    match store.snapshot(chat, SNAPSHOT_BATCHES).await {
        Ok((docs, version)) => {
            for doc in &docs {
                tx.send(event(ChangeKind::Added, version, &doc.to_string()))
                    .await
                    .ok()?;
            }
            Some(version)
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the snapshot");
            None
        }
    }
}
