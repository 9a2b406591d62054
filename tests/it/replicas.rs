//! Two `gateway` replicas on one Tansu broker, behind chat-service on the
//! Kafka log: a message sent through chat-service reaches users connected
//! to either replica, typing and presence cross replicas, and a replica
//! killed with SIGKILL and restarted resumes its clients exactly.

use std::time::Duration;

use serde_json::json;
use testkit::{Broker, Process};

use crate::gateway::{user, Sse, Ws};

const TOPIC: &str = "chat.messages";

struct Gateway {
    process: Process,
    base: String,
    port: u16,
}

fn start_gateway(dir: &std::path::Path, brokers: &str, chat: &str, port: u16) -> Gateway {
    let mut cmd = testkit::service_command(testkit::workspace_binary("gateway"), port, dir);
    cmd.args(["--kafka-brokers", brokers, "--kafka-topic", TOPIC])
        .args(["--chat-service-url", chat])
        .args([
            "--signals-topic",
            "chat.signals",
            "--presence-grace-ms",
            "300",
        ])
        .args(["--presence-heartbeat-ms", "500"]);
    Gateway {
        process: Process::spawn("gateway", &mut cmd, Some(port)),
        base: format!("http://127.0.0.1:{port}"),
        port,
    }
}

/// Waits until `base/readyz` answers 200.
async fn ready(http: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} never became ready");
}

/// The next two `presence` frames, all `online` (or not): whose, sorted.
async fn presence(ws: &mut Ws, online: bool) -> Vec<String> {
    let mut users = Vec::new();
    while users.len() < 2 {
        let frame = ws.next_of("presence").await;
        assert_eq!(frame["online"], online, "{frame}");
        users.push(frame["user_id"].as_str().expect("user").to_owned());
    }
    users.sort();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_replicas_serve_every_user_and_share_typing_and_presence() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = reqwest::Client::new();
    let auth_port = testkit::free_port();
    let auth_base = format!("http://127.0.0.1:{auth_port}");
    let _auth = Process::spawn(
        "auth-service",
        &mut testkit::service_command(
            testkit::workspace_binary("auth-service"),
            auth_port,
            dir.path(),
        ),
        Some(auth_port),
    );
    let chat_port = testkit::free_port();
    let chat_base = format!("http://127.0.0.1:{chat_port}");
    let mut chat_cmd = testkit::service_command(
        testkit::workspace_binary("chat-service"),
        chat_port,
        dir.path(),
    );
    chat_cmd
        .args(["--log", "kafka", "--kafka-brokers", &brokers])
        .args(["--kafka-topic", TOPIC, "--kafka-partitions", "3"])
        .args(["--kafka-batch-num-messages", "1"])
        .args(["--auth-url", &auth_base, "--store", "embedded"])
        .args(["--send-rate-per-sec", "1000", "--send-burst", "1000"]);
    let _chat = Process::spawn("chat-service", &mut chat_cmd, Some(chat_port));
    ready(&http, &chat_base).await;
    let one = start_gateway(dir.path(), &brokers, &chat_base, testkit::free_port());
    let mut two = start_gateway(dir.path(), &brokers, &chat_base, testkit::free_port());
    ready(&http, &one.base).await;
    ready(&http, &two.base).await;

    let alice = user(&http, &auth_base, "alice").await;
    let bob = user(&http, &auth_base, "bob").await;
    let carol = user(&http, &auth_base, "carol").await;
    let group = http
        .post(format!("{chat_base}/chats"))
        .bearer_auth(&alice.token)
        .json(&json!({"title": "across", "member_ids": [bob.id, carol.id]}))
        .send()
        .await
        .expect("group")
        .json::<serde_json::Value>()
        .await
        .expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Alice on replica one (WebSocket), bob on replica two (WebSocket),
    // carol on replica two (SSE).
    let mut alice_ws = Ws::open(&http, &one.base, &alice.token, None).await;
    alice_ws.next_of("hello").await;
    let mut bob_ws = Ws::open(&http, &two.base, &bob.token, None).await;
    bob_ws.next_of("hello").await;
    let mut carol_sse = Sse::open(&http, &two.base, &carol.token, None).await;
    carol_sse.next_of("hello").await;
    // Bob's and carol's coming online reach alice on the other replica.
    let mut both = vec![bob.id.clone(), carol.id.clone()];
    both.sort();
    assert_eq!(presence(&mut alice_ws, true).await, both);

    // Sent through chat-service: everyone gets it, on either replica.
    let sent: serde_json::Value = http
        .post(format!("{chat_base}/chat/{group}/messages"))
        .bearer_auth(&alice.token)
        .json(&json!({"text": "to both replicas"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    for frame in [
        alice_ws.next_of("message").await,
        bob_ws.next_of("message").await,
        carol_sse.next_of("message").await.0,
    ] {
        assert_eq!(frame["id"], sent["id"]);
    }
    // Sent over bob's socket on replica two: alice hears it on replica one.
    bob_ws
        .send(json!({"type": "send", "request_id": "b1", "chat_id": group, "text": "from two"}))
        .await;
    let ack = bob_ws.next_of("ack").await;
    assert_eq!(
        alice_ws.next_of("message").await["id"],
        ack["message"]["id"]
    );
    let own = bob_ws.next_of("message").await;
    assert_eq!(own["id"], ack["message"]["id"]);
    let bob_cursor = own["cursor"].as_str().expect("cursor").to_owned();
    // Typing crosses replicas too.
    alice_ws
        .send(json!({"type": "typing", "chat_id": group}))
        .await;
    assert_eq!(bob_ws.next_of("typing").await["user_id"], alice.id.as_str());
    assert_eq!(
        carol_sse.next_of("typing").await.0["user_id"],
        alice.id.as_str()
    );

    // Replica two killed mid-stream and restarted: bob resumes from his
    // cursor and gets exactly what was sent meanwhile.
    drop(bob_ws);
    drop(carol_sse);
    two.process.kill();
    for i in 0..5 {
        let response = http
            .post(format!("{chat_base}/chat/{group}/messages"))
            .bearer_auth(&alice.token)
            .json(&json!({"text": format!("while down {i}")}))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 201);
    }
    // Carol left, bob's replica died: both go offline for alice (bob once
    // the dead replica has missed its heartbeats).
    assert_eq!(presence(&mut alice_ws, false).await, both);
    two = start_gateway(dir.path(), &brokers, &chat_base, two.port);
    ready(&http, &two.base).await;
    let mut bob_ws = Ws::open(&http, &two.base, &bob.token, Some(&bob_cursor)).await;
    bob_ws.next_of("hello").await;
    let mut texts = Vec::new();
    while let Some(frame) = bob_ws.next(Duration::from_millis(800)).await {
        if frame["type"] == "message" {
            texts.push(frame["text"].as_str().expect("text").to_owned());
        }
    }
    assert_eq!(
        texts,
        (0..5)
            .map(|i| format!("while down {i}"))
            .collect::<Vec<_>>()
    );
    drop(broker);
}
