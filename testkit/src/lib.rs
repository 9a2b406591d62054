//! Helpers for integration tests: a Tansu broker per test (so a test can
//! stop it), the shared Firestore emulator, a Server-Sent Events reader, and
//! registering and logging in users over HTTP.
//!
//! A backend that is not available makes its tests print `SKIPPED …` and
//! return, unless the matching `REQUIRE_…=1` is set (the README's test
//! command sets them all), which turns that into a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// A Tansu broker on its own port with in-memory storage; killed on drop.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
}

fn tansu_binary() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return Some(PathBuf::from(bin));
    }
    let home = std::env::var("HOME").ok()?;
    let cached = PathBuf::from(home).join(".cache/tansu/bin/tansu");
    cached.exists().then_some(cached)
}

impl Broker {
    /// Starts a broker, or returns `None` (saying so) when Tansu is not
    /// installed and `REQUIRE_KAFKA` is not `1`.
    pub fn start() -> Option<Broker> {
        let Some(bin) = tansu_binary() else {
            assert!(
                !required("REQUIRE_KAFKA"),
                "REQUIRE_KAFKA=1 but no Tansu binary (set TANSU_BIN)"
            );
            eprintln!("SKIPPED Kafka test: no Tansu binary (set TANSU_BIN)");
            return None;
        };
        let port = free_port();
        let mut broker = Broker { port, child: None };
        broker.spawn(&bin);
        Some(broker)
    }

    fn spawn(&mut self, bin: &PathBuf) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20));
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (its in-memory data is gone).
    pub fn restart(&mut self) {
        self.kill();
        let bin = tansu_binary().expect("tansu");
        self.spawn(&bin);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Firebase Auth emulator's `host:port` from
/// `FIREBASE_AUTH_EMULATOR_HOST`, or `None` (saying so) unless
/// `REQUIRE_FIREBASE_AUTH=1`.
pub fn firebase_auth_emulator() -> Option<String> {
    emulator(
        "FIREBASE_AUTH_EMULATOR_HOST",
        "REQUIRE_FIREBASE_AUTH",
        "Firebase",
    )
}

/// An emulator's `host:port` from `var`, or `None` (saying so) unless
/// `require` is `1`.
fn emulator(var: &str, require: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(host) if !host.is_empty() => Some(host),
        _ => {
            assert!(!required(require), "{require}=1 but {var} is not set");
            eprintln!("SKIPPED {what} test: {var} is not set");
            None
        }
    }
}

/// A fresh, empty PostgreSQL database (named `{prefix}_{random}`) on the
/// server of `TEST_DATABASE_URL`; returns its URL, or `None` (saying so)
/// unless `REQUIRE_POSTGRES=1`.
pub async fn fresh_postgres_database(prefix: &str) -> Option<String> {
    use sqlx::Connection;
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        assert!(
            !required("REQUIRE_POSTGRES"),
            "REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set"
        );
        eprintln!("SKIPPED on PostgreSQL: TEST_DATABASE_URL is not set");
        return None;
    };
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database name");
    Some(format!("{base}/{name}"))
}

/// A fresh 2048-bit RSA private key, PKCS#8 PEM, from the `openssl`
/// command (as a Google service account key holds one).
pub fn rsa_private_key_pem() -> String {
    let out = Command::new("openssl")
        .args(["genpkey", "-quiet", "-algorithm", "RSA"])
        .args(["-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl genpkey");
    assert!(out.status.success(), "openssl genpkey failed");
    String::from_utf8(out.stdout).expect("PEM")
}

/// A binary of this workspace (`auth-service`, `chat-service`,
/// `aggregator`, …) from the target directory the running test was built
/// in. The test command builds them all first (`scripts/build-binaries`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run scripts/build-binaries (the test command does)",
        bin.display()
    );
    bin
}

/// A child process killed (SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
}

/// `bin --listen 127.0.0.1:<port> --data-dir <data_dir>`, logging warnings
/// and above to stderr, stdout discarded: how every test and the bench start
/// a service binary (add its own flags, then [`Process::spawn`]).
pub fn service_command(
    bin: impl AsRef<std::ffi::OsStr>,
    port: u16,
    data_dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

impl Process {
    /// Spawns `command` (stdout discarded unless the command says
    /// otherwise, stderr inherited) and, if given, waits for `port`.
    pub fn spawn(name: &str, command: &mut Command, port: Option<u16>) -> Self {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let process = Self {
            name: name.to_owned(),
            child,
        };
        if let Some(port) = port {
            wait_for_port(port, Duration::from_secs(60));
        }
        process
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGKILL: no flush, no commit, no goodbye to the consumer group.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a graceful shutdown), and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Firestore emulator's `host:port` from `FIRESTORE_EMULATOR_HOST`, or
/// `None` (saying so) unless `REQUIRE_FIRESTORE=1`.
pub fn firestore_emulator() -> Option<String> {
    emulator("FIRESTORE_EMULATOR_HOST", "REQUIRE_FIRESTORE", "Firestore")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub fn wait_for_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads events from an open `text/event-stream` response.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or `None` when
    /// `limit` passes first or the stream ends.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        match self.read(limit).await {
            SseRead::Event(event) => Some(event),
            SseRead::End | SseRead::Timeout => None,
        }
    }

    /// The next event, or whether the stream ended or `limit` passed first.
    pub async fn read(&mut self, limit: Duration) -> SseRead {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_data = true;
                    }
                }
                if has_data {
                    return SseRead::Event(event);
                }
                continue;
            }
            let chunk = match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return SseRead::Timeout,
                Ok(None | Some(Err(_))) => return SseRead::End,
                Ok(Some(Ok(chunk))) => chunk,
            };
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// What [`SseReader::read`] found.
pub enum SseRead {
    Event(SseEvent),
    /// The server ended the stream (or the connection broke).
    End,
    Timeout,
}

/// `GET {base}/chat/{chat}/stream` with the bearer `token`: the response,
/// whatever its status.
pub async fn open_stream(
    http: &reqwest::Client,
    base: &str,
    chat: &str,
    token: &str,
) -> reqwest::Response {
    http.get(format!("{base}/chat/{chat}/stream"))
        .bearer_auth(token)
        .send()
        .await
        .expect("stream")
}

/// The password every test user gets.
pub const PASSWORD: &str = "password123";

/// Registers `name` at auth `base` (`http://host:port`); returns the status.
pub async fn register(http: &reqwest::Client, base: &str, name: &str) -> reqwest::StatusCode {
    http.post(format!("{base}/users"))
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .expect("register")
        .status()
}

/// A logged-in user: id (as the API returns it) and access token.
pub struct Login {
    pub id: String,
    pub token: String,
}

/// Logs `name` in at auth `base`.
pub async fn login(http: &reqwest::Client, base: &str, name: &str) -> Login {
    let login: serde_json::Value = http
        .post(format!("{base}/login"))
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    Login {
        id: login["user"]["id"].as_str().expect("id").to_owned(),
        token: login["access_token"].as_str().expect("token").to_owned(),
    }
}

/// Starts (or gets) the chat between the holder of `token` and `other` at
/// chat-service `base`; returns its id.
pub async fn start_chat(http: &reqwest::Client, base: &str, token: &str, other: &str) -> String {
    let chat: serde_json::Value = http
        .post(format!("{base}/chats"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "user_id": other }))
        .send()
        .await
        .expect("chat")
        .json()
        .await
        .expect("json");
    chat["id"].as_str().expect("id").to_owned()
}

/// A service running in this process as its binary runs it
/// ([`service_kit::server::App::run_until_stopped`]); told to stop when
/// dropped.
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Builds the service from `config` and serves it (port 0: a free one).
    pub async fn start<S: service_kit::server::Service>(config: S::Config) -> Self {
        let app = service_kit::server::App::<S>::build(config)
            .await
            .unwrap_or_else(|e| panic!("{} builds: {e:#}", S::NAME));
        Self::run(app.local_addr(), |stopped| app.run_until_stopped(stopped))
    }

    /// Runs `serve` (given the future that completes when it must stop) on
    /// a task, for a server listening on `addr`.
    pub fn run<F>(
        addr: std::net::SocketAddr,
        serve: impl FnOnce(futures::future::BoxFuture<'static, ()>) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(Box::pin(async move {
            let _ = stopped.await;
        })));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops it gracefully and waits; panics unless it ran cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("server ran cleanly");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts `response` has `status` and the JSON error body
/// `{"error": {"code", "message"}}`; returns the code.
pub async fn error_code(response: reqwest::Response, status: reqwest::StatusCode) -> String {
    let actual = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
    assert!(body["error"]["message"].is_string(), "{text}");
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned()
}

/// Asserts how `base` answers browsers: a preflight for `POST {path}` with
/// the headers a client sends is allowed from `allowed` (when given) and
/// refused from `refused` (answered without `Access-Control-Allow-Origin`,
/// so a browser blocks the request); a plain request from `allowed` gets its
/// CORS headers too.
pub async fn assert_cors(base: &str, path: &str, allowed: Option<&str>, refused: &str) {
    let http = reqwest::Client::new();
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    if let Some(origin) = allowed {
        let r = preflight(origin).await.expect("preflight");
        assert!(
            r.status().is_success(),
            "preflight from {origin}: {}",
            r.status()
        );
        assert_eq!(
            header(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        let methods = header(&r, "access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("post"), "allowed methods: {methods}");
        let headers = header(&r, "access-control-allow-headers").unwrap_or_default();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "allowed headers: {headers}"
        );
        let r = http
            .get(format!("{base}/healthz"))
            .header("origin", origin)
            .send()
            .await
            .expect("get");
        assert_eq!(
            header(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        let exposed = header(&r, "access-control-expose-headers").unwrap_or_default();
        assert!(exposed.contains("x-request-id"), "exposed: {exposed}");
    }
    let r = preflight(refused).await.expect("preflight");
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        None,
        "{refused} must not be allowed"
    );
}

/// `GET {base}/metrics`: the Prometheus text.
pub async fn scrape(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The sum of the samples of metric `name` (all its label sets) in a
/// scrape; 0 when it has none yet.
pub fn metric_value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts that a `/metrics` scrape describes every metric family (a
/// `# HELP` line for each `# TYPE`) and carries the process metrics.
pub fn assert_metrics_described(scrape: &str) {
    let help: std::collections::HashSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let undescribed: Vec<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !help.contains(name))
        .collect();
    assert!(
        undescribed.is_empty(),
        "metrics without # HELP: {undescribed:?}"
    );
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(scrape.contains(process), "{process} in {scrape}");
    }
}
