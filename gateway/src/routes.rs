//! `GET /events` (Server-Sent Events), `GET /ws` (WebSocket) and
//! `POST /events/ticket`.

use std::convert::Infallible;
use std::sync::Arc;

use auth_validator::tickets::Ticket;
use auth_validator::{AuthUser, StreamUser, Tickets, Verifier};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use service_kit::error::{ErrorBody, ErrorDetail};
use service_kit::openapi::Conventions;
use service_kit::{ApiError, Query};
use utoipa::OpenApi;

use crate::chat_api::ChatApi;
use crate::cursor::Cursor;
use crate::frames::{self, ClientFrame, SendBody, MAX_REQUEST_ID};
use crate::hub::Hub;
use crate::session::{Out, Session};

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

#[derive(Clone)]
pub struct GatewayState {
    pub hub: Arc<Hub>,
    pub api: Arc<dyn ChatApi>,
    pub verifier: Verifier,
    pub tickets: Tickets,
}

impl FromRef<GatewayState> for Verifier {
    fn from_ref(state: &GatewayState) -> Verifier {
        state.verifier.clone()
    }
}

impl FromRef<GatewayState> for Tickets {
    fn from_ref(state: &GatewayState) -> Tickets {
        state.tickets.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gateway",
        description = "One realtime stream per user: every event of every chat they belong to, over Server-Sent Events or WebSocket."
    ),
    modifiers(&Conventions),
    paths(events, websocket, ticket),
    components(schemas(Ticket, ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// The document of what is served: with the ticket route or without (the
/// all-in-one serves it once for every stream).
pub fn openapi(ticket_route: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if !ticket_route {
        doc.paths.paths.remove("/events/ticket");
    }
    doc
}

/// The streams; with `ticket_route`, `POST /events/ticket` too.
pub fn router(state: GatewayState, ticket_route: bool) -> Router {
    let router = Router::new()
        .route("/events", get(events))
        .route("/ws", get(websocket));
    let router = if ticket_route {
        router.route("/events/ticket", post(ticket))
    } else {
        router
    };
    router.with_state(state)
}

/// Get a stream ticket.
///
/// A single-use ticket, valid for `expires_in` seconds, that opens one
/// stream (`/events`, `/ws`) as the caller with `?ticket=…`: browsers
/// cannot send an `Authorization` header on `EventSource` or `WebSocket`,
/// and access tokens never go in URLs. A ticket opens a stream on the
/// replica that issued it.
#[utoipa::path(post, path = "/events/ticket", security(("bearer" = [])), responses(
    (status = 200, body = Ticket),
    (status = 503, description = "too many tickets outstanding; retry shortly"),
))]
async fn ticket(
    State(state): State<GatewayState>,
    caller: AuthUser,
) -> Result<axum::Json<Ticket>, ApiError> {
    state.tickets.issue(&caller).map(axum::Json)
}

#[derive(Deserialize)]
struct StreamQuery {
    cursor: Option<String>,
}

/// The cursor to resume from: the `Last-Event-ID` header, else `?cursor=`.
///
/// A `?cursor=` that is not written as a cursor is the caller's mistake: 400
/// `invalid_cursor`. `Last-Event-ID` is whatever the browser kept, so one
/// that is not a cursor gets the stream's `reset` (`cursor_invalid`) instead
/// of an error an `EventSource` would not recover from.
fn resume_from(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<String>, ApiError> {
    if query
        .cursor
        .as_deref()
        .is_some_and(|c| !Cursor::well_formed(c))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "cursor must be offsets joined by '.', as the stream gives them",
        ));
    }
    let header = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .filter(|c| !c.is_empty());
    Ok(header.or_else(|| query.cursor.clone()))
}

/// A stream for `caller`, resuming where the request says.
async fn open_session(
    state: &GatewayState,
    caller: &AuthUser,
    query: &StreamQuery,
    headers: &HeaderMap,
) -> Result<Session, ApiError> {
    let resume = resume_from(headers, query)?;
    Session::open(
        state.hub.clone(),
        state.api.as_ref(),
        caller,
        resume.as_deref(),
    )
    .await
}

/// The caller's events (Server-Sent Events).
///
/// One stream of every event of every chat the caller belongs to. Each
/// event's data is a JSON object with a `type`: `hello` (first, with the
/// starting `cursor`), `message`, `chat_created`, `member_added`,
/// `member_removed`, `chat_renamed`, `read`, `typing`, `presence`, `cursor`
/// (the stream moved on with nothing for you), `reset` (the cursor given
/// cannot be resumed from: `cursor_too_old`, `cursor_ahead` or
/// `cursor_invalid`; catch up with history `after=`), `expired` (the token
/// expired; reconnect with a new one) and `reconnect` (the server is going
/// away). Log events carry their cursor as the SSE `id` and in `cursor`:
/// reconnect with `Last-Event-ID` (or `?cursor=`) to get exactly what was
/// missed, in order, nothing twice. A comment or a `cursor` event comes at
/// least every 15 s. A client that leaves `--events-queue-bytes` unread is
/// disconnected and resumes with its cursor. At most
/// `--events-max-per-user` streams (SSE and WebSocket together) per user.
/// Authenticate with `Authorization: Bearer …` or, from a browser,
/// `?ticket=` from `POST /events/ticket`.
#[utoipa::path(
    get,
    path = "/events",
    params(
        ("ticket" = Option<String>, Query, description = "A ticket from `POST /events/ticket`, instead of the `Authorization` header."),
        ("cursor" = Option<String>, Query, description = "Resume after this cursor (when `Last-Event-ID` cannot be sent).", pattern = r"^[0-9]{1,18}(\.[0-9]{1,18})*$"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last cursor received: resume after it."),
    ),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "`text/event-stream` of JSON events", content_type = "text/event-stream"),
        (status = 400, description = "`invalid_cursor`: `cursor` is not a cursor"),
        (status = 401, description = "no valid token or ticket"),
        (status = 429, description = "`too_many_streams`: the user has `--events-max-per-user` streams open"),
        (status = 503, description = "not ready, shutting down, or chat-service unavailable"),
    )
)]
async fn events(
    State(state): State<GatewayState>,
    StreamUser(caller): StreamUser,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = open_session(&state, &caller, &query, &headers).await?;
    metrics::counter!("gateway_streams_opened_total", "transport" => "sse").increment(1);
    let events = futures::stream::unfold(session, |mut session| async move {
        let out = session.next().await?;
        let event = match out {
            Out::Event(cursor, frame) => {
                metrics::counter!("gateway_events_delivered_total", "transport" => "sse")
                    .increment(1);
                Event::default().id(cursor).data(frame)
            }
            Out::Text(text) => Event::default().data(&*text),
            Out::Cursor(cursor) => {
                let frame = frames::cursor_only(&cursor);
                Event::default().id(cursor).data(frame)
            }
            Out::KeepAlive => Event::default().comment(""),
        };
        Some((Ok::<_, Infallible>(event), session))
    });
    Ok(Sse::new(events).into_response())
}

/// The caller's events (WebSocket).
///
/// The same events as `GET /events`, one JSON text frame each (log events
/// with their `cursor`), and the client's frames: `send` (answered by `ack`
/// with the stored message, or `error` with the HTTP status and error body
/// `POST /chat/{id}/messages` would give), `read` (`ack` or `error`),
/// `typing` and `ping` (`pong`); see the crate docs for their fields. Resume
/// with `?cursor=`. A ping frame comes at least every 15 s. When the server
/// shuts down it sends `reconnect` and closes with 1012. Authenticate with
/// `Authorization: Bearer …` or `?ticket=`.
#[utoipa::path(
    get,
    path = "/ws",
    params(
        ("ticket" = Option<String>, Query, description = "A ticket from `POST /events/ticket`, instead of the `Authorization` header."),
        ("cursor" = Option<String>, Query, description = "Resume after this cursor.", pattern = r"^[0-9]{1,18}(\.[0-9]{1,18})*$"),
    ),
    security(("bearer" = []), ()),
    responses(
        (status = 101, description = "WebSocket of JSON text frames"),
        (status = 400, description = "`invalid_cursor`: `cursor` is not a cursor"),
        (status = 426, description = "`not_websocket`: not a WebSocket upgrade request"),
        (status = 401, description = "no valid token or ticket"),
        (status = 429, description = "`too_many_streams`: the user has `--events-max-per-user` streams open"),
        (status = 503, description = "not ready, shutting down, or chat-service unavailable"),
    )
)]
async fn websocket(
    State(state): State<GatewayState>,
    StreamUser(caller): StreamUser,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let resume = resume_from(&headers, &query)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(StatusCode::UPGRADE_REQUIRED, "not_websocket", e.body_text())
            .with_header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .with_header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
            .with_header(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            )
    })?;
    let session = Session::open(
        state.hub.clone(),
        state.api.as_ref(),
        &caller,
        resume.as_deref(),
    )
    .await?;
    metrics::counter!("gateway_streams_opened_total", "transport" => "ws").increment(1);
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| serve_socket(socket, session, state.api, caller))
        .into_response())
}

async fn serve_socket(
    socket: WebSocket,
    mut session: Session,
    api: Arc<dyn ChatApi>,
    caller: AuthUser,
) {
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            out = session.next() => {
                let Some(out) = out else { break };
                let message = match out {
                    Out::Event(_, frame) => {
                        metrics::counter!("gateway_events_delivered_total", "transport" => "ws").increment(1);
                        Message::Text(frame.into())
                    }
                    Out::Text(text) => Message::Text((&*text).into()),
                    Out::Cursor(cursor) => Message::Text(frames::cursor_only(&cursor).into()),
                    Out::KeepAlive => Message::Ping(Default::default()),
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
            received = rx.next() => match received {
                Some(Ok(Message::Text(text))) => {
                    if let Some(answer) = answer(&session, api.as_ref(), &caller, text.as_str()).await {
                        session.answer(answer);
                    }
                }
                Some(Ok(Message::Binary(_))) => session.answer(frames::error(
                    None, 400, "invalid_frame", "frames are JSON text",
                )),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
    // Ended by the server: say why in the close frame.
    let (code, reason) = if session.cut_off {
        (1008, "too slow: resume with your cursor")
    } else if session.hub().is_closing() {
        (1012, "server restart: reconnect with your cursor")
    } else {
        (1000, "stream ended")
    };
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// The answer to one client frame, if any.
async fn answer(
    session: &Session,
    api: &dyn ChatApi,
    caller: &AuthUser,
    text: &str,
) -> Option<String> {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => {
            return Some(frames::error(
                None,
                400,
                "invalid_frame",
                &format!("not a client frame: {e}"),
            ))
        }
    };
    let request_id = frame.request_id().map(str::to_owned);
    if request_id
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REQUEST_ID)
    {
        return Some(frames::error(
            None,
            400,
            "invalid_frame",
            "request_id is at most 64 bytes",
        ));
    }
    let rid = request_id.as_deref();
    let not_found = || frames::error(rid, 404, "not_found", "chat not found");
    let call = |path: String, body: Vec<u8>| async move {
        api.call(Method::POST, &path, caller.token.as_str(), Some(body))
            .await
    };
    match frame {
        ClientFrame::Ping { .. } => Some(frames::pong(rid)),
        ClientFrame::Typing { chat_id, .. } => {
            let Some(chat) = frames::chat_id(&chat_id) else {
                return Some(not_found());
            };
            match session.hub().typing(session.conn().user, chat).await {
                Ok(_) => None,
                Err(()) => Some(not_found()),
            }
        }
        ClientFrame::Send {
            chat_id,
            text,
            client_message_id,
            reply_to,
            ..
        } => {
            let Some(chat) = frames::chat_id(&chat_id) else {
                return Some(not_found());
            };
            let body = serde_json::to_vec(&SendBody {
                text: &text,
                client_message_id: client_message_id.as_ref(),
                reply_to: reply_to.as_ref(),
            })
            .unwrap_or_default();
            Some(match call(format!("/chat/{chat}/messages"), body).await {
                Ok(a) if a.status.is_success() => {
                    metrics::counter!("gateway_sends_total").increment(1);
                    frames::ack(rid, serde_json::from_slice(&a.body).ok())
                }
                Ok(a) => frames::error_from_body(rid, a.status.as_u16(), &a.body),
                Err(e) => {
                    tracing::warn!(error = %e, "sending for a WebSocket client");
                    frames::error(rid, 503, "unavailable", "chat-service unavailable")
                }
            })
        }
        ClientFrame::Read {
            chat_id,
            message_id,
            ..
        } => {
            let Some(chat) = frames::chat_id(&chat_id) else {
                return Some(not_found());
            };
            let body = serde_json::to_vec(&serde_json::json!({ "message_id": message_id }))
                .unwrap_or_default();
            Some(match call(format!("/chat/{chat}/read"), body).await {
                Ok(a) if a.status.is_success() => frames::ack(rid, None),
                Ok(a) => frames::error_from_body(rid, a.status.as_u16(), &a.body),
                Err(e) => {
                    tracing::warn!(error = %e, "marking read for a WebSocket client");
                    frames::error(rid, 503, "unavailable", "chat-service unavailable")
                }
            })
        }
    }
}

service_kit::test_every_route_is_documented!(include_str!("routes.rs"), openapi(true));
