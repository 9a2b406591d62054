//! The distributed deployment, run as deployed: each service its own
//! process on real backends, and a Firestore client written with the
//! Firebase JS SDK.
//!
//! - `auth-service` on PostgreSQL, EdDSA keys, JWKS, and a service account
//!   key for Firebase custom tokens;
//! - `chat-service` with the Kafka log on a Tansu broker (the embedded
//!   store, or the CQL store when `TEST_CQL_CONTACT_POINTS` is set),
//!   checking tokens against auth-service's JWKS;
//! - `aggregator` from Kafka into the Firestore emulator, which enforces
//!   `firestore.rules` for clients;
//! - the Firebase Auth emulator, and `firebase/client.mjs` (Node, the
//!   Firebase JS SDK) signing in with a token from `POST /token/firebase`.
//!
//! Messages sent over HTTP must reach the member's listener exactly once
//! and in order while the aggregator and then chat-service are killed with
//! SIGKILL mid-stream and restarted at once; a non-member is refused by the
//! rules; every client write is refused.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{Broker, Process};

const TOPIC: &str = "chat.messages";
/// The aggregators' consumer session timeout and the topic's partitions:
/// the production defaults.
const SESSION_TIMEOUT_MS: u64 = 10_000;
const PARTITIONS: &str = "6";
const MESSAGES: usize = 90;
/// Sends after which the aggregator, then chat-service, are killed.
const KILL_AGGREGATOR_AT: usize = 30;
const KILL_CHAT_AT: usize = 60;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the Node client can run: `npm ci --prefix firebase` has been run.
fn node_client_ready() -> bool {
    let ok = repo().join("firebase/node_modules/firebase").exists();
    if !ok {
        assert!(
            std::env::var("REQUIRE_FIREBASE_AUTH").as_deref() != Ok("1"),
            "firebase/node_modules is missing: run npm ci --prefix firebase"
        );
        eprintln!("SKIPPED distributed test: firebase/node_modules is missing");
    }
    ok
}

/// A Google service account key (JSON) with a fresh RSA key, as the Cloud
/// console would download it.
fn service_account(dir: &Path, project: &str) -> PathBuf {
    let account = json!({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "e2e",
        "private_key": testkit::rsa_private_key_pem(),
        "client_email": format!("firebase-adminsdk@{project}.iam.gserviceaccount.com"),
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, account.to_string()).expect("write key");
    path
}

struct Services {
    dir: tempfile::TempDir,
    brokers: String,
    postgres: String,
    project: String,
    auth_port: u16,
    chat_port: u16,
    aggregator_port: u16,
}

impl Services {
    fn auth(&self) -> String {
        format!("http://127.0.0.1:{}", self.auth_port)
    }

    fn chat(&self) -> String {
        format!("http://127.0.0.1:{}", self.chat_port)
    }

    fn start_auth(&self) -> Process {
        let mut cmd = testkit::service_command(
            testkit::workspace_binary("auth-service"),
            self.auth_port,
            &self.dir.path().join("auth"),
        );
        cmd.args(["--database-url", &self.postgres])
            .args(["--jwt-algorithm", "eddsa"])
            .arg("--firebase-service-account-file")
            .arg(self.dir.path().join("service-account.json"));
        Process::spawn("auth-service", &mut cmd, Some(self.auth_port))
    }

    fn start_chat(&self) -> Process {
        let mut cmd = testkit::service_command(
            testkit::workspace_binary("chat-service"),
            self.chat_port,
            &self.dir.path().join("chat"),
        );
        cmd.args(["--log", "kafka", "--kafka-brokers", &self.brokers])
            .args(["--kafka-topic", TOPIC, "--kafka-partitions", PARTITIONS])
            // Tansu 0.6 (see the option's docs).
            .args(["--kafka-batch-num-messages", "1"])
            .args(["--auth-url", &self.auth()])
            .args([
                "--jwks-url",
                &format!("{}/.well-known/jwks.json", self.auth()),
            ])
            .args(["--send-rate-per-sec", "1000", "--send-burst", "1000"]);
        match std::env::var("TEST_CQL_CONTACT_POINTS") {
            Ok(points) if !points.is_empty() => {
                eprintln!("distributed test: CQL store at {points}");
                cmd.args(["--store", "cql", "--cql-contact-points", &points])
                    .args(["--cql-keyspace", &self.project.replace('-', "_")]);
            }
            _ => {
                eprintln!("distributed test: embedded store (TEST_CQL_CONTACT_POINTS not set)");
                cmd.args(["--store", "embedded"]);
            }
        }
        Process::spawn("chat-service", &mut cmd, Some(self.chat_port))
    }

    fn start_aggregator(&self) -> Process {
        let mut cmd = testkit::service_command(
            testkit::workspace_binary("aggregator"),
            self.aggregator_port,
            &self.dir.path().join("aggregator"),
        );
        cmd.args(["--source", "kafka", "--sink", "firestore"])
            .args(["--kafka-brokers", &self.brokers, "--kafka-topic", TOPIC])
            .args(["--kafka-group-id", "e2e-aggregator"])
            .args([
                "--kafka-session-timeout-ms",
                &SESSION_TIMEOUT_MS.to_string(),
            ])
            .args(["--kafka-stall-timeout-ms", "10000"])
            .args(["--firestore-project-id", &self.project])
            .args(["--flush-interval-ms", "300"]);
        Process::spawn("aggregator", &mut cmd, Some(self.aggregator_port))
    }
}

/// `firebase/client.mjs` in a mode, its JSON lines on a channel.
struct NodeClient {
    _process: Process,
    lines: mpsc::Receiver<Value>,
}

impl NodeClient {
    fn start(mode: &str, chat: &str, token: &str, project: &str, auth_emulator: &str) -> Self {
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("firebase/client.mjs"))
            .args([mode, chat])
            .env("FIREBASE_TOKEN", token)
            .env("FIREBASE_PROJECT_ID", project)
            .env("FIREBASE_AUTH_EMULATOR_HOST", auth_emulator)
            .stdout(Stdio::piped());
        let mut process = Process::spawn("node client", &mut cmd, None);
        let stdout = process.child().stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("node client: {line}"),
                }
            }
        });
        Self {
            _process: process,
            lines,
        }
    }

    /// The next line, waiting at most `limit`.
    fn next(&self, limit: Duration) -> Option<Value> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Every line until the process ends (probe mode).
    fn all(&self, limit: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + limit;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => out.push(v),
                Err(_) => break,
            }
        }
        out
    }
}

async fn firebase_token(http: &reqwest::Client, auth: &str, access: &str) -> String {
    let response = http
        .post(format!("{auth}/token/firebase"))
        .bearer_auth(access)
        .send()
        .await
        .expect("token/firebase");
    assert_eq!(response.status(), 200, "POST /token/firebase");
    let body: Value = response.json().await.expect("json");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s <= 3600));
    body["token"].as_str().expect("token").to_owned()
}

/// Sends until the service answers 2xx (the same `client_message_id` every
/// time, so a retry never makes a second message); returns the message id.
async fn send(
    http: &reqwest::Client,
    chat_base: &str,
    chat: &str,
    token: &str,
    i: usize,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let response = http
            .post(format!("{chat_base}/chat/{chat}/messages"))
            .bearer_auth(token)
            .json(&json!({ "text": format!("message {i}"), "client_message_id": format!("m-{i}") }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await.expect("json");
                return body["id"].as_str().expect("id").to_owned();
            }
            Ok(r) if r.status().is_client_error() && r.status() != 429 => {
                panic!(
                    "send {i}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
            }
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "send {i} never succeeded"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn readiness(http: &reqwest::Client, port: u16) -> u16 {
    match http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn probe_outcomes(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["event"] == "probe")
        .map(|l| {
            let what = l["what"].as_str().unwrap_or_default().to_owned();
            let outcome = match &l["listed"] {
                Value::Bool(listed) => format!("allowed, listed: {listed}"),
                _ => l["outcome"].as_str().unwrap_or_default().to_owned(),
            };
            (what, outcome)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_a_firestore_listener_exactly_once_through_crashes() {
    let (Some(_firestore), Some(auth_emulator), Some(broker)) = (
        testkit::firestore_emulator(),
        testkit::firebase_auth_emulator(),
        Broker::start(),
    ) else {
        return;
    };
    if !node_client_ready() {
        return;
    }
    let Some(postgres) = testkit::fresh_postgres_database("e2e").await else {
        return;
    };
    let project = format!(
        "demo-e2e-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let dir = tempfile::tempdir().expect("tempdir");
    service_account(dir.path(), &project);
    let services = Services {
        dir,
        brokers: broker.brokers(),
        postgres,
        project: project.clone(),
        auth_port: testkit::free_port(),
        chat_port: testkit::free_port(),
        aggregator_port: testkit::free_port(),
    };

    let _auth = services.start_auth();
    let mut chat = services.start_chat();
    let mut aggregator = services.start_aggregator();

    let http = reqwest::Client::new();
    let (auth, chat_base) = (services.auth(), services.chat());
    for name in ["alice", "bob", "mallory"] {
        assert_eq!(testkit::register(&http, &auth, name).await, 201);
    }
    let alice = testkit::login(&http, &auth, "alice").await;
    let bob = testkit::login(&http, &auth, "bob").await;
    let mallory = testkit::login(&http, &auth, "mallory").await;
    let chat_id = testkit::start_chat(&http, &chat_base, &alice.token, &bob.id).await;

    // Bob listens from the start, through everything that follows.
    let bob_firebase = firebase_token(&http, &auth, &bob.token).await;
    let listener = NodeClient::start("listen", &chat_id, &bob_firebase, &project, &auth_emulator);
    let signed_in = listener
        .next(Duration::from_secs(60))
        .expect("listener signs in");
    assert_eq!(signed_in["event"], "signed_in", "{signed_in}");
    assert_eq!(
        signed_in["uid"],
        bob.id.as_str(),
        "the Firebase uid is the user id"
    );

    // Runs of 1–4 messages per sender, killing the aggregator and then
    // chat-service mid-stream; each is restarted at once.
    // The aggregator has settled in the group (a member for longer than its
    // session) before anything is sent, as in a deployment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while readiness(&http, services.aggregator_port).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "aggregator never ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS + 1000)).await;

    // Runs of 1–4 messages per sender, sent at a steady pace by their own
    // task, while the aggregator and then chat-service are killed with
    // SIGKILL mid-stream and restarted at once.
    let progress = Arc::new(AtomicUsize::new(0));
    let sending = {
        let (http, chat_base, chat_id) = (http.clone(), chat_base.clone(), chat_id.clone());
        let tokens = [alice.token.clone(), bob.token.clone()];
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(MESSAGES);
            for i in 0..MESSAGES {
                let token = &tokens[(i / 3 + i / 7) % 2];
                sent.push(send(&http, &chat_base, &chat_id, token, i).await);
                progress.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            sent
        })
    };
    let wait_for_sends = |n: usize| {
        let progress = progress.clone();
        async move {
            while progress.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for_sends(KILL_AGGREGATOR_AT).await;
    eprintln!(
        "SIGKILL aggregator after {KILL_AGGREGATOR_AT} sends, sends going on; restarting at once"
    );
    aggregator.kill();
    aggregator = services.start_aggregator();
    wait_for_sends(KILL_CHAT_AT).await;
    eprintln!(
        "SIGKILL chat-service after {KILL_CHAT_AT} sends, sends going on; restarting at once"
    );
    chat.kill();
    chat = services.start_chat();
    let sent = sending.await.expect("sender");

    // Everything reaches the listener: each message once, in send order.
    let mut first_seen: Vec<String> = Vec::new();
    let mut state: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while state.len() < sent.len() && std::time::Instant::now() < deadline {
        let Some(line) = listener.next(Duration::from_secs(5)) else {
            continue;
        };
        match line["event"].as_str() {
            Some("message") => first_seen.push(line["id"].as_str().expect("id").to_owned()),
            Some("state") => {
                state = line["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|v| v.as_str().expect("id").to_owned())
                    .collect();
            }
            Some("error") => panic!("the member's listener failed: {line}"),
            _ => {}
        }
    }
    let unique: HashSet<&String> = state.iter().collect();
    assert_eq!(unique.len(), state.len(), "a message is in two batches");
    assert_eq!(
        state, sent,
        "the batch documents hold every message once, in order"
    );
    assert_eq!(
        first_seen, sent,
        "the listener saw each message once, in order"
    );

    // A non-member is refused by the rules; nobody writes.
    let mallory_firebase = firebase_token(&http, &auth, &mallory.token).await;
    let probe = NodeClient::start(
        "probe",
        &chat_id,
        &mallory_firebase,
        &project,
        &auth_emulator,
    );
    let denied = "permission-denied".to_owned();
    assert_eq!(
        probe_outcomes(&probe.all(Duration::from_secs(60))),
        vec![
            ("listen batches".into(), denied.clone()),
            ("get chat".into(), denied.clone()),
            ("query batches".into(), denied.clone()),
            ("list own chats".into(), "allowed, listed: false".into()),
            ("write batch".into(), denied.clone()),
            ("write chat".into(), denied.clone()),
            ("create chat".into(), denied.clone()),
        ],
        "what a non-member may do"
    );
    let alice_firebase = firebase_token(&http, &auth, &alice.token).await;
    let member = NodeClient::start("probe", &chat_id, &alice_firebase, &project, &auth_emulator);
    assert_eq!(
        probe_outcomes(&member.all(Duration::from_secs(60))),
        vec![
            ("listen batches".into(), "allowed".into()),
            ("get chat".into(), "allowed".into()),
            ("query batches".into(), "allowed".into()),
            ("list own chats".into(), "allowed, listed: true".into()),
            ("write batch".into(), denied.clone()),
            ("write chat".into(), denied.clone()),
            ("create chat".into(), denied),
        ],
        "what a member may do"
    );

    assert!(aggregator.stop().success(), "aggregator stops cleanly");
    assert!(chat.stop().success(), "chat-service stops cleanly");
}
