//! The per-user stream of the all-in-one (`GET /events`, `GET /ws`), driven
//! by a real WebSocket client (tokio-tungstenite) and a real SSE client.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use testkit::SseReader;
use tokio_tungstenite::tungstenite::Message;

use crate::support::Server;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);
/// How long a read may wait while a cut-off stream drains what the kernel
/// kept for it (the machine may be busy with other tests).
const DRAIN: Duration = Duration::from_secs(20);

pub struct User {
    pub id: String,
    pub token: String,
}

pub async fn user(http: &reqwest::Client, base: &str, name: &str) -> User {
    assert_eq!(testkit::register(http, base, name).await, 201);
    let testkit::Login { id, token } = testkit::login(http, base, name).await;
    User { id, token }
}

/// A WebSocket client of `/ws`.
pub struct Ws {
    socket: Socket,
}

impl Ws {
    /// Opens `/ws` with a fresh ticket (as a browser does), resuming from
    /// `cursor`.
    pub async fn open(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        cursor: Option<&str>,
    ) -> Self {
        let ticket = ticket(http, base, token).await;
        let ws_base = base.replacen("http://", "ws://", 1);
        let mut url = format!("{ws_base}/ws?ticket={ticket}");
        if let Some(cursor) = cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let (socket, response) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        assert_eq!(response.status(), 101);
        Self { socket }
    }

    /// The next JSON frame (pings and keep-alive `cursor` frames skipped),
    /// or `None` after `limit` or at the end.
    pub async fn next(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match message.ok()? {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                    if frame["type"] != "cursor" {
                        return Some(frame);
                    }
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// The next frame of `kind` (others skipped).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("a {kind} frame"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("ws send");
    }

    /// Nothing but keep-alives for `limit`.
    #[allow(dead_code)]
    pub async fn assert_quiet(&mut self, limit: Duration) {
        if let Some(frame) = self.next(limit).await {
            panic!("expected nothing, got {frame}");
        }
    }
}

pub async fn ticket(http: &reqwest::Client, base: &str, token: &str) -> String {
    let ticket: Value = http
        .post(format!("{base}/events/ticket"))
        .bearer_auth(token)
        .send()
        .await
        .expect("ticket")
        .json()
        .await
        .expect("json");
    ticket["ticket"].as_str().expect("ticket").to_owned()
}

/// An SSE client of `/events`.
pub struct Sse(SseReader);

impl Sse {
    pub async fn open(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut request = http.get(format!("{base}/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("events");
        assert_eq!(response.status(), 200);
        Self(SseReader::new(response))
    }

    /// The next event's data and id (keep-alive `cursor` events skipped).
    pub async fn next(&mut self, limit: Duration) -> Option<(Value, Option<String>)> {
        loop {
            let event = self.0.next(limit).await?;
            let data: Value = serde_json::from_str(&event.data).expect("JSON data");
            if data["type"] != "cursor" {
                return Some((data, event.id));
            }
        }
    }

    pub async fn next_of(&mut self, kind: &str) -> (Value, Option<String>) {
        loop {
            let (data, id) = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("a {kind} event"));
            if data["type"] == kind {
                return (data, id);
            }
        }
    }
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("post");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap_or(Value::Null)
}

async fn send(http: &reqwest::Client, base: &str, chat: &str, from: &User, text: &str) -> Value {
    post(
        http,
        format!("{base}/chat/{chat}/messages"),
        &from.token,
        json!({ "text": text }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_carries_every_event_of_every_chat_over_websocket_and_sse() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_env(data.path(), &[("PRESENCE_GRACE_MS", "300")]);
    let (http, base) = (reqwest::Client::new(), server.base.clone());
    let alice = user(&http, &base, "alice").await;
    let bob = user(&http, &base, "bob").await;
    let carol = user(&http, &base, "carol").await;

    let mut ws = Ws::open(&http, &base, &alice.token, None).await;
    let hello = ws.next_of("hello").await;
    assert_eq!(hello["user_id"], alice.id.as_str());
    assert!(hello["cursor"].is_string());
    let mut sse = Sse::open(&http, &base, &alice.token, None).await;
    sse.next_of("hello").await;

    // A direct chat started by someone else arrives, then its messages.
    let direct = testkit::start_chat(&http, &base, &bob.token, &alice.id).await;
    for frame in [
        ws.next_of("chat_created").await,
        sse.next_of("chat_created").await.0,
    ] {
        assert_eq!(frame["chat_id"], direct.as_str());
        assert_eq!(frame["chat_kind"], "direct");
    }
    let sent = send(&http, &base, &direct, &bob, "hello alice").await;
    let frame = ws.next_of("message").await;
    assert_eq!(frame["id"], sent["id"]);
    assert_eq!(frame["text"], "hello alice");
    assert_eq!(frame["sender_id"], bob.id.as_str());
    let (event, id) = sse.next_of("message").await;
    assert_eq!(event["id"], sent["id"]);
    assert_eq!(
        id.as_deref(),
        event["cursor"].as_str(),
        "the SSE id is the cursor"
    );

    // A group: created, renamed, a member added, read receipts.
    let group = post(
        &http,
        format!("{base}/chats"),
        &alice.token,
        json!({"title": "trio", "member_ids": [bob.id]}),
    )
    .await;
    let group_id = group["id"].as_str().expect("id").to_owned();
    let created = ws.next_of("chat_created").await;
    assert_eq!(created["chat_id"], group_id.as_str());
    assert_eq!(created["title"], "trio");
    http.patch(format!("{base}/chat/{group_id}"))
        .bearer_auth(&alice.token)
        .json(&json!({"title": "quartet"}))
        .send()
        .await
        .expect("rename");
    assert_eq!(ws.next_of("chat_renamed").await["title"], "quartet");
    post(
        &http,
        format!("{base}/chat/{group_id}/members"),
        &alice.token,
        json!({"user_id": carol.id}),
    )
    .await;
    assert_eq!(
        ws.next_of("member_added").await["user_id"],
        carol.id.as_str()
    );
    let in_group = send(&http, &base, &group_id, &carol, "hi all").await;
    assert_eq!(ws.next_of("message").await["id"], in_group["id"]);
    post(
        &http,
        format!("{base}/chat/{group_id}/read"),
        &bob.token,
        json!({"message_id": in_group["id"]}),
    )
    .await;
    let read = ws.next_of("read").await;
    assert_eq!(
        (read["user_id"].as_str(), &read["last_read_id"]),
        (Some(bob.id.as_str()), &in_group["id"])
    );

    // Presence and typing: bob comes online, types, goes.
    let mut bob_ws = Ws::open(&http, &base, &bob.token, None).await;
    bob_ws.next_of("hello").await;
    let online = ws.next_of("presence").await;
    assert_eq!(
        (online["user_id"].as_str(), &online["online"]),
        (Some(bob.id.as_str()), &json!(true))
    );
    bob_ws
        .send(json!({"type": "typing", "chat_id": group_id}))
        .await;
    bob_ws
        .send(json!({"type": "typing", "chat_id": group_id}))
        .await; // rate-limited: dropped
    let typing = ws.next_of("typing").await;
    assert_eq!(
        (typing["chat_id"].as_str(), typing["user_id"].as_str()),
        (Some(group_id.as_str()), Some(bob.id.as_str()))
    );
    assert_eq!(sse.next_of("typing").await.0["user_id"], bob.id.as_str());

    // Sending over the socket: an ack with the stored message; a retry with
    // the same client_message_id is the same message, delivered once.
    let request = json!({"type": "send", "request_id": "r1", "chat_id": direct, "text": "over ws", "client_message_id": "ws-1"});
    bob_ws.send(request.clone()).await;
    let ack = bob_ws.next_of("ack").await;
    assert_eq!(ack["request_id"], "r1");
    let message_id = ack["message"]["id"].clone();
    assert!(message_id.is_string());
    bob_ws.send(request).await;
    assert_eq!(bob_ws.next_of("ack").await["message"]["id"], message_id);
    assert_eq!(ws.next_of("message").await["id"], message_id);
    bob_ws
        .send(json!({"type": "ping", "request_id": "p"}))
        .await;
    assert_eq!(bob_ws.next_of("pong").await["request_id"], "p");
    // Errors carry the HTTP status and error body of the route.
    bob_ws
        .send(json!({"type": "send", "request_id": "r2", "chat_id": direct, "text": ""}))
        .await;
    let error = bob_ws.next_of("error").await;
    assert_eq!(
        (error["request_id"].as_str(), error["status"].as_u64()),
        (Some("r2"), Some(422))
    );
    bob_ws.send(json!({"type": "shout"})).await;
    assert_eq!(
        bob_ws.next_of("error").await["error"]["code"],
        "invalid_frame"
    );
    bob_ws.send(json!({"type": "read", "request_id": "r3", "chat_id": direct, "message_id": message_id})).await;
    assert_eq!(bob_ws.next_of("ack").await["request_id"], "r3");
    drop(bob_ws);
    let offline = ws.next_of("presence").await;
    assert_eq!(
        (offline["user_id"].as_str(), &offline["online"]),
        (Some(bob.id.as_str()), &json!(false))
    );
    server.stop();
}

/// The all-in-one started with `env` (sends unthrottled), alice and bob
/// registered, and their direct chat.
struct Direct {
    data: tempfile::TempDir,
    server: Server,
    http: reqwest::Client,
    base: String,
    alice: User,
    bob: User,
    chat: String,
}

/// Lets a test send as fast as it likes.
const UNTHROTTLED: [(&str, &str); 2] = [("SEND_BURST", "1000"), ("SEND_RATE_PER_SEC", "1000")];

async fn direct_chat(env: &[(&str, &str)]) -> Direct {
    let data = tempfile::tempdir().expect("tempdir");
    let env: Vec<(&str, &str)> = UNTHROTTLED.iter().chain(env).copied().collect();
    let server = Server::start_with_env(data.path(), &env);
    let (http, base) = (reqwest::Client::new(), server.base.clone());
    let alice = user(&http, &base, "alice").await;
    let bob = user(&http, &base, "bob").await;
    let chat = testkit::start_chat(&http, &base, &alice.token, &bob.id).await;
    Direct {
        data,
        server,
        http,
        base,
        alice,
        bob,
        chat,
    }
}

/// Texts of the `message` frames among `frames`.
fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["text"].as_str().expect("text").to_owned())
        .collect()
}

/// Every frame until `limit` passes with nothing new.
async fn drain_ws(ws: &mut Ws, limit: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(frame) = ws.next(limit).await {
        frames.push(frame);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_gets_exactly_what_it_missed_even_across_a_kill_9() {
    let Direct {
        data,
        mut server,
        http,
        mut base,
        alice,
        bob,
        chat,
    } = direct_chat(&[]).await;

    // Bob reads two messages, goes away; thirty more are sent.
    let mut ws = Ws::open(&http, &base, &bob.token, None).await;
    ws.next_of("hello").await;
    for i in 0..2 {
        send(&http, &base, &chat, &alice, &format!("m{i}")).await;
    }
    ws.next_of("message").await;
    let cursor = ws.next_of("message").await["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    drop(ws);
    let mut sse = Sse::open(&http, &base, &bob.token, None).await;
    let sse_start = sse.next_of("hello").await.0["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    drop(sse);
    for i in 2..32 {
        send(&http, &base, &chat, &alice, &format!("m{i}")).await;
    }
    let expected: Vec<String> = (2..32).map(|i| format!("m{i}")).collect();

    // Over WebSocket (`?cursor=`) and over SSE (`Last-Event-ID`): exactly
    // the thirty, in order, once.
    let mut ws = Ws::open(&http, &base, &bob.token, Some(&cursor)).await;
    assert_eq!(ws.next_of("hello").await["cursor"], cursor.as_str());
    let frames = drain_ws(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(texts(&frames), expected);
    let last = frames.last().expect("frames")["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    drop(ws);
    let mut sse = Sse::open(&http, &base, &bob.token, Some(&sse_start)).await;
    sse.next_of("hello").await;
    let mut got = Vec::new();
    let mut ids = Vec::new();
    while let Some((event, id)) = sse.next(Duration::from_millis(500)).await {
        if event["type"] == "message" {
            got.push(event["text"].as_str().expect("text").to_owned());
            ids.push(id.expect("id"));
        }
    }
    assert_eq!(got, expected);
    assert_eq!(
        ids.last(),
        Some(&last),
        "the same cursor on either transport"
    );
    drop(sse);

    // Killed mid-stream: the resumed stream after the restart misses and
    // repeats nothing.
    let mut ws = Ws::open(&http, &base, &bob.token, Some(&last)).await;
    ws.next_of("hello").await;
    send(&http, &base, &chat, &alice, "before the kill").await;
    let seen = ws.next_of("message").await;
    assert_eq!(seen["text"], "before the kill");
    let cursor = seen["cursor"].as_str().expect("cursor").to_owned();
    server.process.kill();
    server = Server::start_with_env(data.path(), &UNTHROTTLED);
    base = server.base.clone();
    let alice = testkit::login(&http, &base, "alice").await;
    let alice = User {
        id: alice.id,
        token: alice.token,
    };
    let bob = testkit::login(&http, &base, "bob").await;
    for i in 0..5 {
        send(&http, &base, &chat, &alice, &format!("after {i}")).await;
    }
    let mut ws = Ws::open(&http, &base, &bob.token, Some(&cursor)).await;
    ws.next_of("hello").await;
    let frames = drain_ws(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(
        texts(&frames),
        (0..5).map(|i| format!("after {i}")).collect::<Vec<_>>()
    );

    // Cursors it cannot resume from get a reset, then the stream goes on.
    for (bad, reason) in [("999999999", "cursor_ahead"), ("1.2", "cursor_invalid")] {
        let mut ws = Ws::open(&http, &base, &bob.token, Some(bad)).await;
        ws.next_of("hello").await;
        assert_eq!(ws.next_of("reset").await["reason"], reason, "{bad}");
        send(&http, &base, &chat, &alice, "after a reset").await;
        assert_eq!(ws.next_of("message").await["text"], "after a reset");
    }
    // A `Last-Event-ID` that is not a cursor (the browser kept something
    // else) is a reset too; the same text as `?cursor=` is a 400.
    let mut sse = Sse::open(&http, &base, &bob.token, Some("12x")).await;
    sse.next_of("hello").await;
    assert_eq!(sse.next_of("reset").await.0["reason"], "cursor_invalid");
    drop(sse);
    for path in ["events", "ws"] {
        let response = http
            .get(format!("{base}/{path}?cursor=12x"))
            .bearer_auth(&bob.token)
            .send()
            .await
            .expect("bad cursor");
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "invalid_cursor", "{path}");
    }
    // /ws over plain HTTP: 426, saying what to upgrade to.
    let response = http
        .get(format!("{base}/ws"))
        .bearer_auth(&bob.token)
        .send()
        .await
        .expect("plain GET /ws");
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let body: Value = response.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "not_websocket");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_removed_members_get_nothing_and_tickets_are_single_use_and_expire() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_env(data.path(), &[("TICKET_TTL_SECS", "2")]);
    let (http, base) = (reqwest::Client::new(), server.base.clone());
    let alice = user(&http, &base, "alice").await;
    let bob = user(&http, &base, "bob").await;
    let carol = user(&http, &base, "carol").await;
    let mallory = user(&http, &base, "mallory").await;

    let mut stranger = Ws::open(&http, &base, &mallory.token, None).await;
    stranger.next_of("hello").await;
    let group = post(
        &http,
        format!("{base}/chats"),
        &alice.token,
        json!({"title": "secret", "member_ids": [bob.id, carol.id]}),
    )
    .await;
    let group = group["id"].as_str().expect("id").to_owned();
    let mut carol_ws = Ws::open(&http, &base, &carol.token, None).await;
    carol_ws.next_of("hello").await;
    send(&http, &base, &group, &bob, "for all three").await;
    let seen = carol_ws.next_of("message").await;
    assert_eq!(seen["text"], "for all three");
    let cursor = seen["cursor"].as_str().expect("cursor").to_owned();

    // Removed: carol hears of her removal, and nothing of the chat after it,
    // live or resumed from before it.
    let removed = http
        .delete(format!("{base}/chat/{group}/members/{}", carol.id))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("remove");
    assert!(removed.status().is_success());
    let frame = carol_ws.next_of("member_removed").await;
    assert_eq!(frame["user_id"], carol.id.as_str());
    send(&http, &base, &group, &bob, "after the removal").await;
    carol_ws
        .send(json!({"type": "typing", "request_id": "t", "chat_id": group}))
        .await;
    assert_eq!(carol_ws.next_of("error").await["status"], 404);
    let of_group = |frames: &[Value]| {
        frames
            .iter()
            .filter(|f| f["chat_id"] == group.as_str())
            .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let later = drain_ws(&mut carol_ws, Duration::from_millis(500)).await;
    assert_eq!(of_group(&later), Vec::<String>::new(), "{later:?}");
    let mut resumed = Ws::open(&http, &base, &carol.token, Some(&cursor)).await;
    let frames = drain_ws(&mut resumed, Duration::from_millis(500)).await;
    assert_eq!(of_group(&frames), ["member_removed"], "{frames:?}");

    // The stranger heard nothing of it at all.
    let frames = drain_ws(&mut stranger, Duration::from_millis(200)).await;
    assert_eq!(of_group(&frames), Vec::<String>::new(), "{frames:?}");

    // Tickets: one use each; unknown ones and no credentials are 401.
    let once = ticket(&http, &base, &bob.token).await;
    let open = |query: String| {
        let http = http.clone();
        let url = format!("{base}/events{query}");
        async move { http.get(url).send().await.expect("events") }
    };
    let first = open(format!("?ticket={once}")).await;
    assert_eq!(first.status(), 200);
    drop(first);
    for query in [
        format!("?ticket={once}"),
        "?ticket=made-up".to_owned(),
        String::new(),
    ] {
        let response = open(query.clone()).await;
        assert_eq!(response.status(), 401, "{query}");
        let body: Value = response.json().await.expect("json");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    // …and they expire (`--ticket-ttl-secs 2` here): unused for longer, a
    // ticket opens neither transport.
    let (late_sse, late_ws) = (
        ticket(&http, &base, &bob.token).await,
        ticket(&http, &base, &bob.token).await,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = open(format!("?ticket={late_sse}")).await;
    assert_eq!(response.status(), 401);
    let ws_base = base.replacen("http://", "ws://", 1);
    match tokio_tungstenite::connect_async(format!("{ws_base}/ws?ticket={late_ws}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("an expired ticket opened /ws: {other:?}"),
    }
    server.stop();
}

/// Slow clients: streams that stop reading are cut off once
/// `--events-queue-bytes` wait for them, the gateway's memory stays bounded
/// while they hold their connections, what reached them before the cut is
/// in order, and their cursor resumes exactly after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_with_bounded_memory_and_resumes() {
    // Four slow streams, 1,500 messages of 4,000 characters: 6 MB for each
    // stream, more than the kernel takes into a socket's buffers (the
    // sender's grows to 4 MiB here, `net.ipv4.tcp_wmem`) and the 64 KiB
    // queue.
    const STREAMS: usize = 2;
    const MESSAGES: usize = 1500;
    const PEAK_MIB: f64 = 48.0;
    let Direct {
        data: _data,
        server,
        http,
        base,
        alice,
        bob,
        chat,
    } = direct_chat(&[
        ("EVENTS_QUEUE_BYTES", "65536"),
        ("EVENTS_MAX_PER_USER", "32"),
    ])
    .await;
    let scrape = || testkit::scrape(&http, &base);
    let cut_before = testkit::metric_value(&scrape().await, "gateway_cut_off_total");

    let mut slow_ws = Vec::new();
    let mut slow_sse = Vec::new();
    for _ in 0..STREAMS {
        let mut ws = Ws::open(&http, &base, &bob.token, None).await;
        ws.next_of("hello").await;
        slow_ws.push(ws);
        let mut sse = Sse::open(&http, &base, &bob.token, None).await;
        sse.next_of("hello").await;
        slow_sse.push(sse);
    }
    let rss_before = server.rss_mib();
    let mut peak = rss_before;
    let body = "x".repeat(3990);
    for i in 0..MESSAGES {
        send(&http, &base, &chat, &alice, &format!("{i:04}{body}")).await;
        if i % 100 == 0 {
            peak = peak.max(server.rss_mib());
        }
    }
    // Every slow stream was cut off (the counter counts each once).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let cut = testkit::metric_value(&scrape().await, "gateway_cut_off_total") - cut_before;
        if cut >= (2 * STREAMS) as f64 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let scrape = scrape().await;
            let gateway: Vec<&str> = scrape
                .lines()
                .filter(|l| l.starts_with("gateway_"))
                .collect();
            panic!(
                "{cut} of {} slow streams cut off\n{}",
                2 * STREAMS,
                gateway.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(server.rss_mib());
    assert!(
        peak < rss_before + PEAK_MIB,
        "RSS {rss_before:.1} → peak {peak:.1} MiB with {} slow streams",
        2 * STREAMS
    );
    let queued = testkit::metric_value(&scrape().await, "gateway_queued_bytes");
    assert!(
        queued <= (2 * STREAMS * 65536) as f64,
        "{queued} bytes queued"
    );

    let number = |frame: &Value| -> usize {
        frame["text"].as_str().expect("text")[..4]
            .parse()
            .expect("number")
    };
    // WebSocket: what was in flight, in order, then close 1008; resuming
    // from the last cursor read gives exactly the rest.
    for mut ws in slow_ws {
        let mut got = Vec::new();
        let mut cursor = None;
        let code = loop {
            let message = tokio::time::timeout(DRAIN, ws.socket.next())
                .await
                .expect("the cut-off stream ends")
                .expect("a close frame")
                .expect("frame");
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    if frame["type"] == "message" {
                        got.push(number(&frame));
                        cursor = frame["cursor"].as_str().map(str::to_owned);
                    }
                }
                Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        };
        assert_eq!(code, Some(1008));
        assert!(got.len() < MESSAGES, "a slow WebSocket was not cut off");
        assert_eq!(got, (0..got.len()).collect::<Vec<_>>());
        let mut resumed = Ws::open(&http, &base, &bob.token, cursor.as_deref()).await;
        resumed.next_of("hello").await;
        let rest: Vec<usize> = drain_ws(&mut resumed, Duration::from_millis(1500))
            .await
            .iter()
            .filter(|f| f["type"] == "message")
            .map(number)
            .collect();
        assert_eq!(rest, (got.len()..MESSAGES).collect::<Vec<_>>());
    }
    // SSE: the same, the stream ending where the WebSocket closes.
    for mut sse in slow_sse {
        let mut got = Vec::new();
        let mut last_id = None;
        loop {
            match sse.0.read(DRAIN).await {
                testkit::SseRead::Event(event) => {
                    let frame: Value = serde_json::from_str(&event.data).expect("JSON");
                    if frame["type"] == "message" {
                        got.push(number(&frame));
                        last_id = event.id;
                    }
                }
                testkit::SseRead::End => break,
                testkit::SseRead::Timeout => {
                    let scrape = scrape().await;
                    let gateway: Vec<&str> = scrape
                        .lines()
                        .filter(|l| l.starts_with("gateway_"))
                        .collect();
                    panic!(
                        "a cut-off SSE stream did not end ({} messages read)\n{}",
                        got.len(),
                        gateway.join("\n")
                    );
                }
            }
        }
        assert!(got.len() < MESSAGES, "a slow SSE stream was not cut off");
        assert_eq!(got, (0..got.len()).collect::<Vec<_>>());
        let mut resumed = Sse::open(&http, &base, &bob.token, last_id.as_deref()).await;
        resumed.next_of("hello").await;
        let mut rest = Vec::new();
        while let Some((frame, _)) = resumed.next(Duration::from_millis(1500)).await {
            if frame["type"] == "message" {
                rest.push(number(&frame));
            }
        }
        assert_eq!(rest, (got.len()..MESSAGES).collect::<Vec<_>>());
    }
    server.stop();
}

/// `token` re-signed with the all-in-one's own key (`jwt-secret` in its
/// data directory) to expire `secs` from now.
fn expiring_in(token: &str, data: &std::path::Path, secs: i64) -> String {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let secret = std::fs::read_to_string(data.join("jwt-secret")).expect("jwt-secret");
    let secret = secret.trim().as_bytes();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let mut claims =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(secret), &validation)
            .expect("the server's token")
            .claims;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    claims["exp"] = json!(now + secs);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// How streams end: `expired` when the token does (over both transports),
/// `reconnect` (and WebSocket close 1012) when the server shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_expired_and_with_reconnect_on_shutdown() {
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data.path());
    let (http, base) = (reqwest::Client::new(), server.base.clone());
    let alice = user(&http, &base, "alice").await;

    let short = expiring_in(&alice.token, data.path(), 2);
    let mut ws = Ws::open(&http, &base, &short, None).await;
    let mut sse = Sse::open(&http, &base, &short, None).await;
    ws.next_of("hello").await;
    sse.next_of("hello").await;
    assert!(ws.next_of("expired").await["reason"].is_string());
    assert!(
        ws.next(WAIT).await.is_none(),
        "the socket ends after expired"
    );
    assert!(sse.next_of("expired").await.0["reason"].is_string());
    assert!(matches!(sse.0.read(WAIT).await, testkit::SseRead::End));

    let mut ws = Ws::open(&http, &base, &alice.token, None).await;
    let mut sse = Sse::open(&http, &base, &alice.token, None).await;
    ws.next_of("hello").await;
    sse.next_of("hello").await;
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    assert!(ws.next_of("reconnect").await["reason"].is_string());
    let code = loop {
        match tokio::time::timeout(WAIT, ws.socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1012));
    assert!(sse.next_of("reconnect").await.0["reason"].is_string());
    assert!(matches!(sse.0.read(WAIT).await, testkit::SseRead::End));
    stopping.await.expect("stopped");
}

/// The ring of recent events is bounded (`--events-ring-bytes`): a cursor
/// from before what it still holds gets a `reset` (`cursor_too_old`) with
/// the present cursor, and the stream goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_ring_gets_a_reset() {
    let Direct {
        data: _data,
        server,
        http,
        base,
        alice,
        bob,
        chat,
    } = direct_chat(&[("EVENTS_RING_BYTES", "65536")]).await;
    let mut ws = Ws::open(&http, &base, &bob.token, None).await;
    let old = ws.next_of("hello").await["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    drop(ws);
    // 100 messages of 2,000 characters: three times what the ring keeps.
    let text = "y".repeat(2000);
    for _ in 0..100 {
        send(&http, &base, &chat, &alice, &text).await;
    }
    let mut ws = Ws::open(&http, &base, &bob.token, Some(&old)).await;
    let hello = ws.next_of("hello").await;
    let reset = ws.next_of("reset").await;
    assert_eq!(reset["reason"], "cursor_too_old");
    assert_eq!(reset["cursor"], hello["cursor"]);
    assert_ne!(reset["cursor"].as_str(), Some(old.as_str()));
    send(&http, &base, &chat, &alice, "after the reset").await;
    let frames = drain_ws(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(texts(&frames), ["after the reset"]);
    // A cursor the ring still covers resumes exactly.
    let recent = reset["cursor"].as_str().expect("cursor").to_owned();
    drop(ws);
    send(&http, &base, &chat, &alice, "one more").await;
    let mut ws = Ws::open(&http, &base, &bob.token, Some(&recent)).await;
    let frames = drain_ws(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(texts(&frames), ["after the reset", "one more"]);
    server.stop();
}
