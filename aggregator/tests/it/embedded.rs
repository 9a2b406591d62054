//! The embedded stack in one process: auth-service, chat-service and the
//! aggregator on one data directory; clients watch batches over SSE.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{SseEvent, SseReader};

type Server = testkit::InProcess;

async fn start_aggregator(dir: PathBuf) -> Server {
    start_aggregator_with(dir, |_| {}).await
}

async fn start_aggregator_with(dir: PathBuf, tune: impl FnOnce(&mut aggregator::Config)) -> Server {
    let mut config = aggregator::Config::embedded(dir);
    config.flush_interval_ms = std::num::NonZeroU64::new(300).expect("positive");
    config.embedded_poll_ms = std::num::NonZeroU64::new(5).expect("positive");
    tune(&mut config);
    let app = aggregator::App::build(config).await.expect("aggregator");
    Server::run(app.local_addr(), |stopped| app.run_until_stopped(stopped))
}

struct Stack {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    auth: Server,
    chat: Server,
    agg: Server,
    http: reqwest::Client,
}

struct User {
    id: String,
    token: String,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(|_, _, _| {}).await
    }

    /// The stack with its services' settings tuned.
    async fn start_with(
        tune: impl FnOnce(&mut auth_service::Config, &mut chat_service::Config, &mut aggregator::Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let mut auth_config = auth_service::Config::embedded(&path);
        let mut chat_config = chat_service::Config::embedded(&path);
        let mut agg_config = aggregator::Config::embedded(&path);
        tune(&mut auth_config, &mut chat_config, &mut agg_config);
        let auth = Server::start::<auth_service::AppState>(auth_config).await;
        chat_config.auth_url = format!("http://{}", auth.addr);
        let chat = Server::start::<chat_service::AppState>(chat_config).await;
        let agg = start_aggregator_with(path.clone(), |config| {
            config.streams = agg_config.streams;
        })
        .await;
        Self {
            _dir: dir,
            dir: path,
            auth,
            chat,
            agg,
            http: reqwest::Client::new(),
        }
    }

    async fn user(&self, name: &str) -> User {
        let base = format!("http://{}", self.auth.addr);
        testkit::register(&self.http, &base, name).await;
        let testkit::Login { id, token } = testkit::login(&self.http, &base, name).await;
        User { id, token }
    }

    async fn chat_between(&self, a: &User, b: &User) -> String {
        let base = format!("http://{}", self.chat.addr);
        testkit::start_chat(&self.http, &base, &a.token, &b.id).await
    }

    async fn send(&self, chat: &str, from: &User, text: &str) -> Value {
        let r = self
            .http
            .post(format!("http://{}/chat/{chat}/messages", self.chat.addr))
            .bearer_auth(&from.token)
            .json(&json!({"text": text}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201);
        r.json().await.expect("json")
    }

    async fn stream(
        &self,
        chat: &str,
        user: &User,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("http://{}/chat/{chat}/stream", self.agg.addr))
            .bearer_auth(&user.token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send().await.expect("stream")
    }
}

fn doc(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).expect("event data is JSON")
}

/// Reads events until one satisfies `want`.
async fn until(
    reader: &mut SseReader,
    limit: Duration,
    want: impl Fn(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(e) = reader
        .next(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        let done = want(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
    panic!("no matching event within {limit:?}; saw {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stream_live_resume_and_survive_a_restart() {
    let s = Stack::start().await;
    let (alice, bob, mallory) = (
        s.user("alice").await,
        s.user("bob").await,
        s.user("mallory").await,
    );
    let chat = s.chat_between(&alice, &bob).await;

    // Participants only.
    assert_eq!(s.stream(&chat, &mallory, None).await.status(), 404);
    let anonymous = s
        .http
        .get(format!("http://{}/chat/{chat}/stream", s.agg.addr))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);

    let r = s.stream(&chat, &bob, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let mut bob_stream = SseReader::new(r);

    // A new batch reaches the other participant within 100 ms.
    let sent = s.send(&chat, &alice, "hi bob").await;
    let acked = Instant::now();
    let events = until(&mut bob_stream, Duration::from_secs(2), |e| {
        e.event == "added"
    })
    .await;
    let latency = acked.elapsed();
    eprintln!("send → SSE latency: {latency:?}");
    assert!(latency < Duration::from_millis(100), "{latency:?}");
    let first = doc(events.last().expect("event"));
    assert_eq!(first["id"], sent["id"]);
    assert_eq!(
        (first["seq"].as_u64(), first["count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(first["messages"][0]["text"], "hi bob");
    assert_eq!(first["sender_id"], alice.id.as_str());
    assert_eq!(first["closed"], false);

    // Growth arrives as one coalesced modification.
    s.send(&chat, &alice, "two").await;
    s.send(&chat, &alice, "three").await;
    let events = until(&mut bob_stream, Duration::from_secs(3), |e| {
        e.event == "modified" && doc(e)["count"] == 3
    })
    .await;
    let last_id = events.last().and_then(|e| e.id.clone()).expect("event id");
    drop(bob_stream);

    // While bob is away: a reply closes the batch and starts another.
    s.send(&chat, &bob, "hello alice").await;
    s.send(&chat, &alice, "back to me").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Resuming replays exactly what was missed.
    let mut resumed = SseReader::new(s.stream(&chat, &bob, Some(&last_id)).await);
    let mut latest: std::collections::BTreeMap<u64, Value> = Default::default();
    let events = until(&mut resumed, Duration::from_secs(3), |e| doc(e)["seq"] == 3).await;
    for e in &events {
        assert!(
            e.id.as_deref().expect("id").parse::<i64>().expect("number")
                > last_id.parse::<i64>().expect("number")
        );
        let d = doc(e);
        latest.insert(d["seq"].as_u64().expect("seq"), d);
    }
    assert!(
        !latest.contains_key(&1),
        "the first batch was fully written when the reply closed it: no write just for the flag"
    );
    assert_eq!(latest[&2]["messages"][0]["text"], "hello alice");

    // A fresh stream starts with the current documents, oldest first.
    let mut fresh = SseReader::new(s.stream(&chat, &alice, None).await);
    let mut snapshot = Vec::new();
    for _ in 0..3 {
        let e = fresh
            .next(Duration::from_secs(2))
            .await
            .expect("snapshot event");
        assert_eq!(e.event, "added");
        snapshot.push(doc(&e));
    }
    assert_eq!(
        snapshot
            .iter()
            .map(|d| d["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(snapshot[0]["count"], 3);
    assert_eq!(snapshot[1], latest[&2]);

    // Restart the aggregator: the open batch continues, nothing repeats.
    let Stack {
        _dir,
        dir,
        auth,
        chat: chat_server,
        agg,
        http,
    } = s;
    agg.stop().await;
    let agg = start_aggregator(dir.clone()).await;
    let s = Stack {
        _dir,
        dir,
        auth,
        chat: chat_server,
        agg,
        http,
    };
    s.send(&chat, &alice, "after restart").await;
    let mut after = SseReader::new(s.stream(&chat, &alice, None).await);
    let events = until(&mut after, Duration::from_secs(3), |e| {
        doc(e)["seq"] == 3 && doc(e)["count"] == 2
    })
    .await;
    let third = doc(events.last().expect("event"));
    let texts: Vec<&str> = third["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["back to me", "after restart"]);
    s.agg.stop().await;
    s.chat.stop().await;
    s.auth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_configured_origins_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    // The aggregator reads chat-service's outbox, and its streams check
    // tokens with auth-service's key.
    let _auth =
        Server::start::<auth_service::AppState>(auth_service::Config::embedded(&path)).await;
    let _chat =
        Server::start::<chat_service::AppState>(chat_service::Config::embedded(&path)).await;
    let mut config = aggregator::Config::embedded(&path);
    config.cors = service_kit::cors::CorsConfig::origins(&["https://app.example"]).expect("origin");
    let app = aggregator::App::build(config).await.expect("aggregator");
    let agg = Server::run(app.local_addr(), |stopped| app.run_until_stopped(stopped));
    let base = format!("http://{}", agg.addr);
    let chat = uuid::Uuid::new_v4();
    let path = format!("/chat/{chat}/stream");
    testkit::assert_cors(
        &base,
        &path,
        Some("https://app.example"),
        "https://evil.example",
    )
    .await;
    let closed = start_aggregator(dir.path().to_path_buf()).await;
    let base = format!("http://{}", closed.addr);
    testkit::assert_cors(&base, &path, None, "https://app.example").await;
}

/// Browsers' `EventSource` sends no headers: a single-use ticket from
/// `POST /events/ticket` opens one stream as the user who asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ticket_opens_one_stream_for_its_user() {
    let s = Stack::start().await;
    let (alice, bob, eve) = (
        s.user("alice").await,
        s.user("bob").await,
        s.user("eve").await,
    );
    let chat = s.chat_between(&alice, &bob).await;
    s.send(&chat, &alice, "hi").await;
    let ticket = |user: &User| {
        let req = s
            .http
            .post(format!("http://{}/events/ticket", s.agg.addr))
            .bearer_auth(&user.token);
        async move {
            let r = req.send().await.expect("ticket");
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.expect("json");
            let expires_in = body["expires_in"].as_u64().expect("expires_in");
            assert!((1..=60).contains(&expires_in), "{body}");
            body["ticket"].as_str().expect("ticket").to_owned()
        }
    };
    let open = |t: &str| {
        s.http
            .get(format!(
                "http://{}/chat/{chat}/stream?ticket={t}",
                s.agg.addr
            ))
            .send()
    };
    // No ticket without a token.
    let r = s
        .http
        .post(format!("http://{}/events/ticket", s.agg.addr))
        .send()
        .await
        .expect("ticket");
    assert_eq!(
        testkit::error_code(r, reqwest::StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );

    let t = ticket(&bob).await;
    let r = open(&t).await.expect("stream");
    assert_eq!(r.status(), 200);
    let mut reader = SseReader::new(r);
    let first = until(&mut reader, Duration::from_secs(10), |e| e.event == "added").await;
    assert_eq!(
        doc(first.last().expect("event"))["messages"][0]["text"],
        "hi"
    );
    let scrape = || {
        let url = format!("http://{}/metrics", s.agg.addr);
        async move {
            reqwest::get(url)
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text")
        }
    };
    let open_streams = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("aggregator_streams_open "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let metrics = scrape().await;
    testkit::assert_metrics_described(&metrics);
    assert_eq!(open_streams(&metrics), Some(1.0), "{metrics}");
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_streams(&scrape().await) != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "a closed stream is no longer counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let again = open(&t).await.expect("stream");
    assert_eq!(
        testkit::error_code(again, reqwest::StatusCode::UNAUTHORIZED).await,
        "invalid_ticket",
        "a ticket opens one stream"
    );
    let made_up = open("not-a-ticket").await.expect("stream");
    assert_eq!(
        testkit::error_code(made_up, reqwest::StatusCode::UNAUTHORIZED).await,
        "invalid_ticket"
    );
    // A ticket is its user's: eve's opens nothing in alice and bob's chat.
    let t = ticket(&eve).await;
    assert_eq!(open(&t).await.expect("stream").status(), 404);
}

/// A group over SSE: its timeline events arrive as batches of their own,
/// replies carry `reply_to`, and a removed member's open stream ends before
/// anything after the removal, with a 404 for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_streams_carry_events_and_end_for_a_removed_member() {
    let s = Stack::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let chat_base = format!("http://{}", s.chat.addr);
    let r = s
        .http
        .post(format!("{chat_base}/chats"))
        .bearer_auth(&alice.token)
        .json(&json!({"title": "Trip", "member_ids": [bob.id]}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let chat = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first = s.send(&chat, &bob, "hello").await;
    let r = s
        .http
        .post(format!("{chat_base}/chat/{chat}/messages"))
        .bearer_auth(&alice.token)
        .json(&json!({"text": "hi bob", "reply_to": first["id"]}))
        .send()
        .await
        .expect("reply");
    assert_eq!(r.status(), 201);

    let r = s.stream(&chat, &bob, None).await;
    assert_eq!(r.status(), 200);
    let mut reader = SseReader::new(r);
    let seen = until(&mut reader, Duration::from_secs(10), |e| {
        doc(e)["messages"][0]["text"] == "hi bob"
    })
    .await;
    let docs: Vec<Value> = seen.iter().map(doc).collect();
    let created = docs
        .iter()
        .find(|d| d["messages"][0]["type"] == "chat_created")
        .expect("chat_created");
    assert_eq!(
        (created["count"].clone(), created["closed"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(
        (created["chat_kind"].clone(), created["title"].clone()),
        (json!("group"), json!("Trip"))
    );
    assert_eq!(created["members"], json!([alice.id, bob.id]));
    let reply = docs.last().expect("reply");
    assert_eq!(reply["messages"][0]["reply_to"], first["id"]);

    let r = s
        .http
        .delete(format!("{chat_base}/chat/{chat}/members/{}", bob.id))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("remove");
    assert_eq!(r.status(), 204);
    s.send(&chat, &alice, "after bob left").await;
    // Bob's stream ends; nothing from after the removal reached it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(e) = reader
        .next(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        let d = doc(&e);
        let texts: Vec<&Value> = d["messages"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| &m["text"])
            .collect();
        assert!(!texts.contains(&&json!("after bob left")), "{d}");
        assert_ne!(d["messages"][0]["type"], "member_removed", "{d}");
    }
    assert!(
        Instant::now() < deadline,
        "the removed member's stream ended"
    );
    assert_eq!(s.stream(&chat, &bob, None).await.status(), 404);
    // Alice sees the removal as its own batch.
    let mut reader = SseReader::new(s.stream(&chat, &alice, None).await);
    let seen = until(&mut reader, Duration::from_secs(10), |e| {
        doc(e)["messages"][0]["text"] == "after bob left"
    })
    .await;
    let removal = seen
        .iter()
        .map(doc)
        .find(|d| d["messages"][0]["type"] == "member_removed")
        .expect("member_removed");
    assert_eq!(removal["messages"][0]["user_id"], json!(bob.id));
    assert_eq!(removal["members"], json!([alice.id]));
}

/// A stream's bounds: a cap per user (429 past it), an explicit `reset` for
/// a cursor it cannot honour (never silence, never an overflow), the end of
/// the stream when its token expires, and a client that stops reading is
/// cut off once its queue stays full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_reset_expire_and_cut_off_slow_readers() {
    let s = Stack::start_with(|auth, chat, agg| {
        auth.tokens.access_token_ttl_secs = std::num::NonZeroU64::new(4).expect("positive");
        chat.limits.send_burst = std::num::NonZeroU32::new(1000).expect("positive");
        agg.streams.max_streams_per_user = std::num::NonZeroU32::new(2).expect("positive");
        agg.streams.stream_queue_bytes = std::num::NonZeroU32::new(16 * 1024).expect("positive");
        agg.streams.stream_stall_timeout_ms = std::num::NonZeroU64::new(300).expect("positive");
    })
    .await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let chat = s.chat_between(&alice, &bob).await;
    s.send(&chat, &alice, "hello").await;

    // Two streams per user; the third is refused until one closes.
    let one = s.stream(&chat, &bob, None).await;
    let two = s.stream(&chat, &bob, None).await;
    assert_eq!((one.status().as_u16(), two.status().as_u16()), (200, 200));
    let third = s.stream(&chat, &bob, None).await;
    assert_eq!(
        testkit::error_code(third, reqwest::StatusCode::TOO_MANY_REQUESTS).await,
        "too_many_streams"
    );
    assert_eq!(
        s.stream(&chat, &alice, None).await.status(),
        200,
        "per user"
    );
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        let r = s.stream(&chat, &bob, None).await;
        if r.status() == 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "a slot frees when a stream closes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop((two, reopened));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Cursors the feed never gave out: a reset, then the snapshot.
    for cursor in ["999999999999", "9223372036854775807"] {
        let mut reader = SseReader::new(s.stream(&chat, &bob, Some(cursor)).await);
        let first = reader.next(Duration::from_secs(3)).await.expect("an event");
        assert_eq!(first.event, "reset", "{cursor}");
        assert_eq!(doc(&first)["reason"], "cursor_ahead");
        let next = reader
            .next(Duration::from_secs(3))
            .await
            .expect("the snapshot");
        assert_eq!(next.event, "added");
        assert_eq!(doc(&next)["messages"][0]["text"], "hello");
    }
    // Not a cursor at all: a plain snapshot.
    for cursor in ["-5", "99999999999999999999999", "x"] {
        let mut reader = SseReader::new(s.stream(&chat, &bob, Some(cursor)).await);
        let first = reader.next(Duration::from_secs(3)).await.expect("an event");
        assert_eq!(first.event, "added", "{cursor}");
    }

    // A client that stops reading while big batches are written is cut off:
    // its stream ends instead of queueing them.
    let stalled = s.stream(&chat, &bob, None).await;
    assert_eq!(stalled.status(), 200);
    let big = "😀".repeat(4000);
    // Well past what the kernel's socket buffers hold (4 MiB here).
    for _ in 0..400 {
        s.send(&chat, &alice, &big).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = testkit::scrape(&s.http, &format!("http://{}", s.agg.addr)).await;
        let cut_off = testkit::metric_value(&metrics, "aggregator_streams_cut_off_total");
        if cut_off >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled stream was cut off:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);

    // The stream ends when the token does: an `expired` event, then the end.
    let opened = Instant::now();
    let mut reader = SseReader::new(s.stream(&chat, &bob, None).await);
    let seen = until(&mut reader, Duration::from_secs(10), |e| {
        e.event == "expired"
    })
    .await;
    assert!(seen.iter().all(|e| e.event != "reset"));
    assert!(
        reader.next(Duration::from_secs(3)).await.is_none(),
        "the stream ends"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(8),
        "{:?}",
        opened.elapsed()
    );
}
