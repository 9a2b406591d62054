//! End to end: the real all-in-one binary as a child process on a free port
//! with a fresh data directory, driven over HTTP as two users; then
//! restarted on the same data directory.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{SseEvent, SseReader};

use crate::support::Server;

struct User {
    id: String,
    token: String,
}

async fn user(http: &reqwest::Client, base: &str, name: &str, register: bool) -> User {
    if register {
        assert_eq!(testkit::register(http, base, name).await, 201);
    }
    let testkit::Login { id, token } = testkit::login(http, base, name).await;
    User { id, token }
}

/// `POST /chat/{chat}/messages` as `from`; the response status.
async fn send(
    http: &reqwest::Client,
    base: &str,
    chat: &str,
    from: &User,
    text: &str,
    client_id: &str,
) -> u16 {
    http.post(format!("{base}/chat/{chat}/messages"))
        .bearer_auth(&from.token)
        .json(&json!({"text": text, "client_message_id": client_id}))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

async fn history(http: &reqwest::Client, base: &str, chat: &str, u: &User) -> Vec<String> {
    let url = format!("{base}/chat/{chat}?quantity=100");
    let page = crate::support::get_json(http, &url, &u.token).await;
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect()
}

async fn next_batch(reader: &mut SseReader) -> Value {
    let e: SseEvent = reader
        .next(Duration::from_secs(3))
        .await
        .expect("an SSE event");
    serde_json::from_str(&e.data).expect("JSON document")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_through_the_all_in_one_binary_and_a_restart_loses_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();
    let server = Server::start_with_env(
        data.path(),
        &[("CORS_ALLOWED_ORIGINS", "https://app.example")],
    );
    let base = server.base.clone();
    testkit::assert_cors(
        &base,
        "/chats",
        Some("https://app.example"),
        "https://evil.example",
    )
    .await;

    let page = http.get(&base).send().await.expect("index");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("<title>chat</title>"),
        "the web client is served at /"
    );
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(
        doc["paths"]["/login"].is_object() && doc["paths"]["/chat/{id}/messages"].is_object(),
        "one document for every service's routes"
    );
    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");

    let alice = user(&http, &base, "alice", true).await;
    let bob = user(&http, &base, "bob", true).await;
    let found: Value = http
        .get(format!("{base}/users?query=bo"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert_eq!(found["users"][0]["id"], bob.id.as_str());
    let chat = testkit::start_chat(&http, &base, &alice.token, &bob.id).await;

    let stream = testkit::open_stream(&http, &base, &chat, &bob.token).await;
    assert_eq!(stream.status(), 200);
    let mut bob_sees = SseReader::new(stream);

    for (from, text) in [(&alice, "hi bob"), (&alice, "lunch?"), (&bob, "sure")] {
        let sent = Instant::now();
        let client_id = text.replace([' ', '?'], "-");
        assert_eq!(send(&http, &base, &chat, from, text, &client_id).await, 201);
        // Bob's stream shows each message as part of a batch document.
        loop {
            let doc = next_batch(&mut bob_sees).await;
            let texts: Vec<&str> = doc["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["text"].as_str().expect("text"))
                .collect();
            if texts.contains(&text) {
                assert_eq!(doc["sender_id"], from.id.as_str());
                eprintln!("{text:?} on the stream {:?} after the send", sent.elapsed());
                break;
            }
        }
    }
    assert_eq!(
        history(&http, &base, &chat, &bob).await,
        ["sure", "lunch?", "hi bob"]
    );
    drop(bob_sees);
    server.stop();

    // Same data directory: users, chats, messages and batches are all there,
    // and the old tokens still work (the signing key was kept).
    let server = Server::start(data.path());
    let base = server.base.clone();
    // Without the setting, no other origin is allowed.
    testkit::assert_cors(&base, "/chats", None, "https://app.example").await;
    assert_eq!(
        history(&http, &base, &chat, &alice).await,
        ["sure", "lunch?", "hi bob"]
    );
    let again = user(&http, &base, "bob", false).await;
    assert_eq!(again.id, bob.id);
    let chats: Value = http
        .get(format!("{base}/chats"))
        .bearer_auth(&bob.token)
        .send()
        .await
        .expect("chats")
        .json()
        .await
        .expect("json");
    assert_eq!(chats["chats"][0]["id"], chat.as_str());
    let mut snapshot = SseReader::new(testkit::open_stream(&http, &base, &chat, &bob.token).await);
    let first = next_batch(&mut snapshot).await;
    let second = next_batch(&mut snapshot).await;
    // (`closed` is not asserted: a batch fully written before the reply
    // is not rewritten just to set it; the next seq says it is over.)
    assert_eq!(
        (first["seq"].as_u64(), first["count"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(second["seq"].as_u64(), Some(2));
    assert_eq!(second["messages"][0]["text"], "sure");
    // A retried send after the restart is still recognised.
    assert_eq!(send(&http, &base, &chat, &bob, "sure", "sure").await, 200);
    assert_eq!(history(&http, &base, &chat, &bob).await.len(), 3);
    server.stop();
}

/// The all-in-one embeds every service with its defaults: the services' own
/// settings in its environment (as a shell that also runs the distributed
/// services may have) choose no backend and change no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_in_one_ignores_the_services_settings_in_its_environment() {
    let data = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let elsewhere = elsewhere.path().join("data");
    let unreachable = "127.0.0.1:9";
    let env = [
        ("AUTH_DATABASE_URL", "postgres://nobody@127.0.0.1:9/none"),
        ("JWT_ALGORITHM", "RS256"),
        ("CHAT_STORE", "cql"),
        ("CQL_CONTACT_POINTS", unreachable),
        ("CHAT_LOG", "kafka"),
        ("KAFKA_BROKERS", unreachable),
        ("AGGREGATOR_SOURCE", "kafka"),
        ("AGGREGATOR_SINK", "firestore"),
        ("BATCH_MAX_COUNT", "1"),
        ("AUTH_LISTEN", unreachable),
        ("CHAT_LISTEN", unreachable),
        ("AGGREGATOR_LISTEN", unreachable),
        ("DATA_DIR", elsewhere.to_str().expect("utf-8 path")),
    ];
    let server = Server::start_with_env(data.path(), &env);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "every embedded backend is up");

    let alice = user(&http, &base, "alice", true).await;
    let bob = user(&http, &base, "bob", true).await;
    let chat = testkit::start_chat(&http, &base, &alice.token, &bob.id).await;
    let mut bob_sees = SseReader::new(testkit::open_stream(&http, &base, &chat, &bob.token).await);
    for text in ["one", "two"] {
        assert_eq!(send(&http, &base, &chat, &alice, text, text).await, 201);
    }
    // Through the embedded outbox to the embedded realtime store, batched
    // with the default limits (BATCH_MAX_COUNT=1 would split them).
    loop {
        let doc = next_batch(&mut bob_sees).await;
        if doc["count"].as_u64() == Some(2) {
            assert_eq!(doc["seq"].as_u64(), Some(1));
            break;
        }
    }
    assert_eq!(history(&http, &base, &chat, &bob).await, ["two", "one"]);
    assert!(
        !elsewhere.exists(),
        "every service keeps its data in the all-in-one's data directory"
    );
    server.stop();
}

/// Operators' view: with `--log-format json` every line on stdout is a JSON
/// log record (nothing else is printed), and each request gets one access
/// line at info with its method, route, status, latency and request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_an_access_line_per_request() {
    use std::io::Read;
    let data = tempfile::tempdir().expect("tempdir");
    let port = testkit::free_port();
    let mut command =
        testkit::service_command(env!("CARGO_BIN_EXE_chat-backend"), port, data.path());
    command
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped());
    let mut process = testkit::Process::spawn("chat-backend", &mut command, Some(port));
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://127.0.0.1:{port}/chats"))
        .header("x-request-id", "e2e-access-1")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    assert!(process.stop().success());
    let mut stdout = String::new();
    process
        .child()
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    let records: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(
        records.iter().any(|r| r["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening"))),
        "the start-up line is a log record: {stdout}"
    );
    let access: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == "access" && r["route"] == "/chats")
        .collect();
    assert_eq!(access.len(), 1, "one access line: {stdout}");
    let line = access[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(
        (line["method"].as_str(), line["status"].as_u64()),
        (Some("GET"), Some(401))
    );
    assert!(line["latency_ms"].as_f64().is_some(), "{line}");
    assert_eq!(line["span"]["request_id"], "e2e-access-1", "{line}");
}
