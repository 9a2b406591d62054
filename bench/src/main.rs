//! The benchmark suite: starts the all-in-one server itself, drives it over
//! real HTTP with many concurrent keep-alive clients (real users, tokens and
//! chats), and prints each figure next to a baseline measured in the same
//! run, plus a JSON file.
//!
//! `cargo run --release -p bench -- all` (or `smoke`, a few seconds, for CI).
//! It runs the `chat-backend` binary found beside its own executable, so
//! build both in the same profile (`cargo build --release --bins`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregator::batcher::{Batcher, Limits, Position};
use anyhow::Context;
use chat_events::{MessageCreated, TimeUuidGenerator};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

mod gateway;
mod groups;
mod kafka;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Every figure at full load (minutes).
    All,
    /// Every figure at a token load (seconds): proves the suite runs.
    Smoke,
}

/// Benchmarks of the chat backend.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[arg(value_enum, default_value = "all")]
    mode: Mode,
    /// Where to write the machine-readable results.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// The chat-backend binary (default: beside this executable).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Run only these parts (default: all of them).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Figures 1-3 and 6-8: send, history, realtime, memory, groups.
    Http,
    /// Figure 4: aggregator in Kafka mode vs a plain consumer.
    Aggregator,
    /// Figure 5: Firestore writes per message.
    Firestore,
    /// Figures 9-12: the per-user stream (WebSocket).
    Gateway,
}

struct Plan {
    phase: Duration,
    concurrency: usize,
    history_messages: usize,
    realtime_rate: u32,
    conversations: usize,
    aggregator_messages: usize,
    aggregator_chats: usize,
    /// Members of the group sends go into (figure 7).
    group_members: usize,
    /// Chats in the long chat list (figure 8).
    listed_chats: usize,
    /// Messages a second into a group for the fan-out (figure 10).
    fanout_rate: u32,
    /// Events missed before a resume (figure 11), and rounds of it.
    resume_events: usize,
    resume_rounds: usize,
    /// Idle WebSockets opened at once (figure 12).
    idle_connections: usize,
}

impl Plan {
    fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::All => Self {
                phase: Duration::from_secs(10),
                concurrency: 64,
                history_messages: 100_000,
                realtime_rate: 500,
                conversations: 2_000,
                aggregator_messages: 200_000,
                aggregator_chats: 1_000,
                group_members: 100,
                listed_chats: 1_000,
                fanout_rate: 20,
                resume_events: 1_000,
                resume_rounds: 5,
                idle_connections: 10_000,
            },
            Mode::Smoke => Self {
                phase: Duration::from_secs(1),
                concurrency: 8,
                history_messages: 500,
                realtime_rate: 50,
                conversations: 50,
                aggregator_messages: 2_000,
                aggregator_chats: 20,
                group_members: 10,
                listed_chats: 50,
                fanout_rate: 5,
                resume_events: 100,
                resume_rounds: 1,
                idle_connections: 100,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Figure {
    name: String,
    value: f64,
    unit: String,
    baseline: Option<f64>,
    /// value / baseline.
    ratio: Option<f64>,
    load: String,
    extra: Value,
}

/// Latencies (µs) and counts of a closed-loop run.
struct Stats {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn summary(&self) -> Value {
        json!({
            "ok": self.ok, "errors": self.errors, "per_sec": self.rate(),
            "p50_ms": self.ms(0.5), "p99_ms": self.ms(0.99), "p999_ms": self.ms(0.999),
        })
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// `concurrency` workers each repeat `op(worker, iteration)` until
/// `duration` is over; `op` returns whether the request succeeded.
async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut ok, mut errors, mut i) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if op(w, i).await {
                        ok += 1;
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                (ok, errors, hist)
            })
        })
        .collect();
    let mut stats = Stats {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        hist: histogram(),
    };
    for w in workers {
        if let Ok((ok, errors, hist)) = w.await {
            stats.ok += ok;
            stats.errors += errors;
            let _ = stats.hist.add(hist);
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

struct Server {
    process: testkit::Process,
    base: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(bin: &Path) -> anyhow::Result<Self> {
        let args = [
            "--send-rate-per-sec",
            "1000000",
            "--send-burst",
            "1000000",
            "--registrations-per-address-per-hour",
            "1000000",
        ];
        Self::start_with(bin, tempfile::tempdir()?, &args)
    }

    /// Runs `bin --listen <free port> --data-dir <data> <args>` and waits
    /// until it listens.
    fn start_with(bin: &Path, data: tempfile::TempDir, args: &[&str]) -> anyhow::Result<Self> {
        let port = testkit::free_port();
        let mut command = testkit::service_command(bin, port, data.path());
        command.args(args).stderr(Stdio::inherit());
        let name = bin.display().to_string();
        Ok(Self {
            process: testkit::Process::spawn(&name, &mut command, Some(port)),
            base: format!("http://127.0.0.1:{port}"),
            _data: data,
        })
    }

    fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// Stops it with SIGTERM (a graceful shutdown) and waits for it.
    fn stop(&mut self) -> std::process::ExitStatus {
        self.process.stop()
    }

    /// Peak resident set size so far (VmHWM), MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        self.status_mib("VmHWM:")
    }

    /// Resident set size now (VmRSS), MiB.
    fn rss_mib(&self) -> Option<f64> {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

#[derive(Clone)]
struct User {
    id: String,
    token: String,
    /// `Bearer <token>`, built once (the load generator shares the CPU).
    auth: reqwest::header::HeaderValue,
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn user(&self, name: &str) -> anyhow::Result<User> {
        let body = json!({"username": name, "password": "bench-password"});
        self.http
            .post(format!("{}/users", self.base))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let login: Value = self
            .http
            .post(format!("{}/login", self.base))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = login["access_token"].as_str().context("token")?.to_owned();
        Ok(User {
            id: login["user"]["id"].as_str().context("id")?.to_owned(),
            auth: format!("Bearer {token}").parse()?,
            token,
        })
    }

    async fn user_owned(&self, name: String) -> anyhow::Result<User> {
        self.user(&name).await
    }

    /// A new group of `owner` and `members`; its id.
    async fn group(&self, owner: &User, title: &str, members: &[User]) -> anyhow::Result<String> {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let chat: Value = self
            .http
            .post(format!("{}/chats", self.base))
            .bearer_auth(&owner.token)
            .json(&json!({"title": title, "member_ids": ids}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(chat["id"].as_str().context("group id")?.to_owned())
    }

    async fn chat(&self, a: &User, b: &User) -> anyhow::Result<String> {
        let chat: Value = self
            .http
            .post(format!("{}/chats", self.base))
            .bearer_auth(&a.token)
            .json(&json!({"user_id": b.id}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(chat["id"].as_str().context("chat id")?.to_owned())
    }
}

/// A 64-byte message body, like a short chat line.
pub(crate) const TEXT: &str = "benchmark message: the quick brown fox jumps over the lazy dog!!";

/// The send request's body, encoded once.
fn send_body() -> &'static str {
    static BODY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BODY.get_or_init(|| json!({ "text": TEXT }).to_string())
}

fn url(text: String) -> reqwest::Url {
    reqwest::Url::parse(&text).unwrap_or_else(|e| panic!("bad URL {text}: {e}"))
}

/// `POST /chat/{chat}/messages` (`messages`: that URL, parsed once);
/// the response, if it was 201.
async fn post_message(
    http: &reqwest::Client,
    messages: &reqwest::Url,
    from: &User,
) -> Option<reqwest::Response> {
    let r = http
        .post(messages.clone())
        .header(reqwest::header::AUTHORIZATION, from.auth.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(send_body())
        .send()
        .await
        .ok()?;
    (r.status() == 201).then_some(r)
}

/// Sends one message; returns its id.
async fn send(http: &reqwest::Client, base: &str, chat: &str, from: &User) -> Option<String> {
    let r = post_message(http, &url(format!("{base}/chat/{chat}/messages")), from).await?;
    let m: Value = r.json().await.ok()?;
    m["id"].as_str().map(str::to_owned)
}

/// Sends one message and reads the whole response (like [`get_ok`]).
async fn send_ok(http: &reqwest::Client, messages: &reqwest::Url, from: &User) -> bool {
    match post_message(http, messages, from).await {
        Some(r) => r.bytes().await.is_ok(),
        None => false,
    }
}

async fn get_ok(
    http: &reqwest::Client,
    url: reqwest::Url,
    auth: &reqwest::header::HeaderValue,
) -> bool {
    let request = http
        .get(url)
        .header(reqwest::header::AUTHORIZATION, auth.clone());
    match request.send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

fn figure(
    name: &str,
    value: f64,
    unit: &str,
    baseline: Option<f64>,
    load: String,
    extra: Value,
) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline,
        ratio: baseline.filter(|b| *b > 0.0).map(|b| value / b),
        load,
        extra,
    }
}

/// The users and chats the HTTP phases share.
struct Fixture {
    http: reqwest::Client,
    base: String,
    api: Api,
    /// `2 * concurrency + 2` users; sender `w` is user `2w`, in chat `w`
    /// with user `2w + 1`.
    users: Arc<Vec<User>>,
    chats: Arc<Vec<String>>,
    /// `GET /chats`, the baseline: HTTP, JSON, the token check and one
    /// indexed read.
    chat_list: reqwest::Url,
    concurrency: usize,
}

impl Fixture {
    async fn new(plan: &Plan, server: &Server) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?;
        let api = Api {
            http: http.clone(),
            base: server.base.clone(),
        };
        let c = plan.concurrency;
        let mut users = Vec::new();
        for i in 0..(2 * c + 2) {
            users.push(api.user(&format!("bench{i}")).await?);
        }
        let mut chats = Vec::new();
        for w in 0..c {
            chats.push(api.chat(&users[2 * w], &users[2 * w + 1]).await?);
        }
        // URLs are parsed once, like a real client would: parsing (with
        // IDNA) on every request was a visible part of the load
        // generator's CPU.
        let chat_list = url(format!("{}/chats", server.base));
        Ok(Self {
            http,
            base: server.base.clone(),
            api,
            users: Arc::new(users),
            chats: Arc::new(chats),
            chat_list,
            concurrency: c,
        })
    }
}

async fn run_http(plan: &Plan, bin: &Path, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let server = Server::start(bin)?;
    let fixture = Fixture::new(plan, &server).await?;
    let sent = send_phase(plan, &fixture, figures).await;
    let rss_after_send = server.peak_rss_mib();
    let filled = history_phase(plan, &fixture, sent, figures).await?;
    realtime_phase(plan, &fixture, sent + filled, figures).await?;
    let peak = server.peak_rss_mib().unwrap_or(0.0);
    groups::groups_phase(plan, &fixture, figures).await?;

    // 6. Memory, over runs 1-3 (before the group figures, whose long chat
    // lists are measured apart).
    figures.push(figure(
        "all-in-one peak RSS (runs 1-3)",
        peak,
        "MiB",
        None,
        "VmHWM of the chat-backend process".into(),
        json!({"after_send_phase_mib": rss_after_send}),
    ));
    figures.push(figure(
        "all-in-one peak RSS (runs 1-3, 7, 8)",
        server.peak_rss_mib().unwrap_or(0.0),
        "MiB",
        None,
        "VmHWM, after the group figures too".into(),
        json!({}),
    ));
    Ok(())
}

/// Phase 1; returns how many messages were sent.
async fn send_phase(plan: &Plan, f: &Fixture, figures: &mut Vec<Figure>) -> u64 {
    let (http, users, chats, c) = (&f.http, &f.users, &f.chats, f.concurrency);
    let load = format!(
        "{c} concurrent keep-alive clients, {:?}, {}-byte messages",
        plan.phase,
        TEXT.len()
    );
    // 1. Send, next to a cheap authenticated read: the caller's chat list
    // (one chat), which is HTTP, JSON, the token check and one indexed read.
    progress("send baseline (GET /chats)");
    // URLs are parsed once, like a real client would: parsing (with IDNA)
    // on every request was a visible part of the load generator's CPU.
    let baseline = {
        let (http, chat_list, users) = (http.clone(), f.chat_list.clone(), users.clone());
        closed_loop(c, plan.phase, move |w, _| {
            let (http, url, users) = (http.clone(), chat_list.clone(), users.clone());
            async move { get_ok(&http, url, &users[2 * w].auth).await }
        })
        .await
    };
    progress("send");
    let sends = {
        let targets: Arc<Vec<reqwest::Url>> = Arc::new(
            chats
                .iter()
                .map(|chat| url(format!("{}/chat/{chat}/messages", f.base)))
                .collect(),
        );
        let (http, users) = (http.clone(), users.clone());
        closed_loop(c, plan.phase, move |w, _| {
            let (http, users, targets) = (http.clone(), users.clone(), targets.clone());
            async move { send_ok(&http, &targets[w], &users[2 * w]).await }
        })
        .await
    };
    figures.push(figure(
        "send messages/s",
        sends.rate(),
        "req/s",
        Some(baseline.rate()),
        load.clone(),
        json!({"send": sends.summary(), "baseline_get_chats": baseline.summary()}),
    ));
    figures.push(figure(
        "send p99",
        sends.ms(0.99),
        "ms",
        Some(baseline.ms(0.99)),
        load.clone(),
        json!({"p50_ms": sends.ms(0.5), "p999_ms": sends.ms(0.999)}),
    ));
    sends.ok
}

/// Phase 2, after `sent` messages; returns how many it sent.
async fn history_phase(
    plan: &Plan,
    f: &Fixture,
    sent: u64,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<u64> {
    let (http, base, users, c) = (&f.http, &f.base, &f.users, f.concurrency);
    // 2. History at random positions of one long chat.
    let (a, b) = (users[2 * c].clone(), users[2 * c + 1].clone());
    let history_chat = f.api.chat(&a, &b).await?;
    let ids = Arc::new(Mutex::new(Vec::with_capacity(plan.history_messages)));
    progress("history: filling the long chat");
    let fill_started = Instant::now();
    futures::stream::iter(0..plan.history_messages)
        .map(|i| {
            let (http, base, chat, ids) = (
                http.clone(),
                base.clone(),
                history_chat.clone(),
                ids.clone(),
            );
            let from = if (i / 7) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            async move {
                if let Some(id) = send(&http, &base, &chat, &from).await {
                    ids.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(id);
                }
            }
        })
        .buffer_unordered(c)
        .collect::<()>()
        .await;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let ids: Arc<Vec<String>> = Arc::new(std::mem::take(
        &mut *ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    ));
    // Let the aggregator take in the fill first, so its catching up does
    // not share the CPU with the history phase.
    wait_for_aggregator(
        http,
        base,
        sent + ids.len() as u64,
        Duration::from_secs(300),
    )
    .await;
    progress("history");
    let history = {
        let page = url(format!("{base}/chat/{history_chat}"));
        let (http, ids, auth) = (http.clone(), ids.clone(), a.auth.clone());
        closed_loop(c, plan.phase, move |w, i| {
            let mut rng = rand::rngs::StdRng::seed_from_u64((w as u64) << 32 | i);
            let time = &ids[rng.gen_range(0..ids.len())];
            let mut url = page.clone();
            url.set_query(Some(&format!("time={time}&quantity=50")));
            let (http, auth) = (http.clone(), auth.clone());
            async move { get_ok(&http, url, &auth).await }
        })
        .await
    };
    let baseline = {
        let (http, auth, chat_list) = (http.clone(), a.auth.clone(), f.chat_list.clone());
        closed_loop(c, plan.phase, move |_, _| {
            let (http, url, auth) = (http.clone(), chat_list.clone(), auth.clone());
            async move { get_ok(&http, url, &auth).await }
        })
        .await
    };
    let hload = format!(
        "{c} concurrent clients, quantity=50 at random positions of a {}-message chat, {:?}",
        ids.len(),
        plan.phase
    );
    figures.push(figure("history requests/s", history.rate(), "req/s", Some(baseline.rate()), hload.clone(),
        json!({"history": history.summary(), "baseline_get_chats": baseline.summary(), "fill_messages_per_sec": ids.len() as f64 / fill_secs})));
    figures.push(figure(
        "history p99",
        history.ms(0.99),
        "ms",
        Some(baseline.ms(0.99)),
        hload,
        json!({}),
    ));

    Ok(ids.len() as u64)
}

/// Phase 3, once the aggregator has taken in the `written` messages.
async fn realtime_phase(
    plan: &Plan,
    f: &Fixture,
    written: u64,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let (http, base, users, chats) = (&f.http, &f.base, &f.users, &f.chats);
    // 3. Realtime: send → the other participant's SSE event, at a fixed rate.
    progress("realtime");
    // First let the aggregator drain what phases 1 and 2 wrote, so this
    // measures delivery, not a backlog.
    let caught_up = wait_for_aggregator(http, base, written, Duration::from_secs(120)).await;
    let (s, r) = (users[0].clone(), users[1].clone());
    let chat = chats[0].clone();
    let stream = http
        .get(format!("{base}/chat/{chat}/stream"))
        .bearer_auth(&r.token)
        .send()
        .await?;
    let mut events = testkit::SseReader::new(stream);
    // Skip the snapshot of what phase 1 wrote.
    while events.next(Duration::from_millis(300)).await.is_some() {}
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (plan.realtime_rate as u64 * plan.phase.as_secs().max(1)) as usize;
    let sender = {
        let (http, base, acked, chat) = (http.clone(), base.clone(), acked.clone(), chat.clone());
        let every = Duration::from_secs_f64(1.0 / f64::from(plan.realtime_rate));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut tasks = Vec::with_capacity(total);
            for _ in 0..total {
                tick.tick().await;
                let (http, base, acked, chat, s) = (
                    http.clone(),
                    base.clone(),
                    acked.clone(),
                    chat.clone(),
                    s.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    if let Some(id) = send(&http, &base, &chat, &s).await {
                        acked
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(id, Instant::now());
                    }
                }));
            }
            futures::future::join_all(tasks).await;
        })
    };
    // Listen until every acknowledged message has been seen, or 5 s after
    // the last send returned. (Batch documents also carry older messages.)
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let listener = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next(Duration::from_secs(30)).await {
                let Ok(doc) = serde_json::from_str::<Value>(&e.data) else {
                    continue;
                };
                let now = Instant::now();
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for m in doc["messages"].as_array().into_iter().flatten() {
                    if let Some(id) = m["id"].as_str() {
                        seen.entry(id.to_owned()).or_insert(now);
                    }
                }
            }
        })
    };
    let _ = sender.await;
    let grace = Instant::now() + Duration::from_secs(5);
    loop {
        let done = {
            let acked = acked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            acked.keys().all(|id| seen.contains_key(id))
        };
        if done || Instant::now() > grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listener.abort();
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let acked = acked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut hist = histogram();
    let mut missing = 0;
    for (id, at) in &acked {
        match seen.get(id) {
            Some(t) => {
                let _ = hist.record(t.saturating_duration_since(*at).as_micros().max(1) as u64);
            }
            None => missing += 1,
        }
    }
    let rload = format!(
        "{} messages/s for {:?} into one chat, one SSE listener",
        plan.realtime_rate, plan.phase
    );
    figures.push(figure(
        "send → SSE p50",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        "ms",
        None,
        rload.clone(),
        json!({"acked": acked.len(), "missing": missing, "backlog_drained_before_s": caught_up}),
    ));
    figures.push(figure(
        "send → SSE p99",
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        "ms",
        None,
        rload,
        json!({}),
    ));

    Ok(())
}

/// Waits until the aggregator has taken in `messages` (its
/// `aggregator_messages_in_total`); returns the seconds waited.
async fn wait_for_aggregator(
    http: &reqwest::Client,
    base: &str,
    messages: u64,
    limit: Duration,
) -> f64 {
    let start = Instant::now();
    while start.elapsed() < limit {
        if messages_in(http, base).await.unwrap_or(0) >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed().as_secs_f64()
}

/// Says on stderr which phase starts (and when, for attaching a profiler).
fn progress(phase: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    eprintln!("bench: {phase} (unix time {now:.1})");
}

/// The aggregator's `aggregator_messages_in_total`, from its `/metrics`.
async fn messages_in(http: &reqwest::Client, base: &str) -> Option<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let taken: f64 = text
        .lines()
        .filter(|l| l.starts_with("aggregator_messages_in_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(taken as u64)
}

/// Figure 5: Firestore documents written per message for a bursty
/// conversation mix, through the real batching rules on a simulated clock
/// (`flush`: the growth write interval; 1 s is the aggregator's default),
/// against the one write per message of a naive design.
fn firestore_cost(plan: &Plan, flush: Duration) -> Figure {
    let limits = Limits {
        flush_interval: flush,
        ..Limits::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let ids = TimeUuidGenerator::new();
    let t0 = tokio::time::Instant::now();
    let start = time::OffsetDateTime::now_utc();
    let (mut messages, mut documents) = (0u64, 0u64);
    let mut max_per_doc_per_sec = 0u32;
    for _ in 0..plan.conversations {
        let users = [
            chat_events::UserId::from(uuid::Uuid::new_v4()),
            uuid::Uuid::new_v4().into(),
        ];
        let chat_id = chat_events::chat_id(users[0], users[1]);
        let chat = chat_id.uuid();
        let mut b = Batcher::new(limits);
        b.restore(chat, None);
        let mut clock = Duration::ZERO;
        let mut writes_at: HashMap<(uuid::Uuid, u64), Vec<Duration>> = HashMap::new();
        let mut record = |w: aggregator::batcher::Write, at: Duration, documents: &mut u64| {
            *documents += w.documents() as u64;
            let batch = w.batch_changed.then_some(&w.batch);
            for doc in w.closing.iter().chain(batch) {
                writes_at
                    .entry((doc.batch_id, doc.seq))
                    .or_default()
                    .push(at);
            }
            if w.summary.is_some() {
                // The chat's summary document (batch seqs start at 1).
                writes_at.entry((w.chat_id, 0)).or_default().push(at);
            }
        };
        let mut who = 0;
        for turn in 0..rng.gen_range(4..20) {
            if turn > 0 {
                clock += Duration::from_millis(rng.gen_range(2_000..30_000));
                who = 1 - who;
            }
            for i in 0..rng.gen_range(1..=20) {
                if i > 0 {
                    clock += Duration::from_millis(rng.gen_range(100..600));
                }
                // Flushes due before this message.
                for c in b.due(t0 + clock) {
                    if let Some(w) = b.take_write(c, t0 + clock) {
                        record(w, clock, &mut documents);
                    }
                }
                let event = MessageCreated::new(
                    ids.next().uuid(),
                    chat_id,
                    users[who],
                    Some(users[1 - who]),
                    TEXT.into(),
                    start + time::Duration::try_from(clock).unwrap_or_default(),
                );
                messages += 1;
                let started = b.apply(
                    &event,
                    Position {
                        partition: 0,
                        offset: messages as i64,
                    },
                );
                if started == aggregator::batcher::Applied::Started {
                    if let Some(w) = b.take_write(chat, t0 + clock) {
                        record(w, clock, &mut documents);
                    }
                }
            }
        }
        clock += Duration::from_secs(5);
        for w in b.take_all(t0 + clock) {
            record(w, clock, &mut documents);
        }
        for times in writes_at.values() {
            for (i, t) in times.iter().enumerate() {
                let in_window = times[i..]
                    .iter()
                    .take_while(|u| **u < *t + Duration::from_secs(1))
                    .count() as u32;
                max_per_doc_per_sec = max_per_doc_per_sec.max(in_window);
            }
        }
    }
    let name = if flush == Limits::default().flush_interval {
        "Firestore document writes per message".to_owned()
    } else {
        format!("  same, growth written every {flush:?}")
    };
    figure(
        &name,
        documents as f64 / messages as f64,
        "writes/msg",
        Some(1.0),
        format!("{} simulated conversations, {messages} messages: turns of 1-20 messages 0.1-0.6 s apart, 2-30 s between turns; {flush:?} flush; max {max_per_doc_per_sec} write(s) to one document in any second", plan.conversations),
        json!({"documents": documents, "messages": messages, "max_writes_to_one_document_in_any_second": max_per_doc_per_sec,
               "baseline": "naive: one write per message"}),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plan = Plan::for_mode(cli.mode);
    let bin = match cli.server {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("chat-backend"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release --bins (same profile as bench)",
        bin.display()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut figures = Vec::new();
    let runs = |part| cli.only.is_empty() || cli.only.contains(&part);
    if runs(Part::Http) {
        run_http(&plan, &bin, &mut figures).await?;
    }
    if runs(Part::Gateway) {
        let mut server = Server::start(&bin)?;
        let fixture = Fixture::new(&plan, &server).await?;
        gateway::stream_phase(&plan, &fixture, &mut figures).await?;
        server.stop();
        gateway::idle_phase(&plan, &bin, &mut figures).await?;
    }
    if runs(Part::Aggregator) {
        let bin_dir = bin.parent().context("binary directory")?;
        let kafka_load = kafka::Load {
            messages: plan.aggregator_messages,
            chats: plan.aggregator_chats,
        };
        let aggregator = kafka::aggregator_vs_plain(&kafka_load, bin_dir).await?;
        if aggregator.is_none() {
            println!(
                "\naggregator throughput in Kafka mode vs a plain consumer: NOT MEASURED, no \
                 Tansu binary (./scripts/test builds one into ~/.cache/tansu; or set TANSU_BIN)"
            );
        }
        figures.extend(aggregator);
    }
    if runs(Part::Firestore) {
        // The default, then what longer growth intervals would save.
        for secs in [1, 2, 3] {
            figures.push(firestore_cost(&plan, Duration::from_secs(secs)));
        }
    }

    println!("\nchat-backend benchmarks ({:?} mode, {cores} cores, load generator on the same machine)\n", cli.mode);
    println!(
        "{:<40} {:>12} {:>12} {:>8}  load",
        "figure", "value", "baseline", "ratio"
    );
    for f in &figures {
        println!(
            "{:<40} {:>8} {:<3} {:>12} {:>8}  {}",
            f.name,
            if f.value < 10.0 {
                format!("{:.2}", f.value)
            } else {
                format!("{:.1}", f.value)
            },
            f.unit.split('/').next().unwrap_or(""),
            f.baseline.map_or("-".into(), |b| format!("{b:.1}")),
            f.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            f.load
        );
    }
    let out = json!({"mode": format!("{:?}", cli.mode), "cores": cores, "figures": figures});
    std::fs::write(&cli.json, serde_json::to_string_pretty(&out)?)?;
    println!("results written to {}", cli.json.display());
    Ok(())
}
