//! Figures 9-12: the per-user stream of the all-in-one (`GET /ws`), driven
//! by WebSocket clients in this process.
//!
//! - 9: send → WebSocket delivery at a fixed rate into a direct chat,
//!   against the same sends' own HTTP round trip (send → 201).
//! - 10: one message fanned out to every connected member of a group,
//!   against delivery to the one other member of a direct chat at the same
//!   rate.
//! - 11: resuming after missing a thousand events (`?cursor=`), against
//!   catching up on the same messages with history (`after=`, pages of 100).
//! - 12: idle WebSocket connections held at once, and the server's RSS per
//!   connection (a fresh server, its RSS before the first connection as the
//!   baseline).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{figure, histogram, progress, url, Figure, Fixture, Plan, Server, User, TEXT};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `GET /ws` as `user` (the `Authorization` header), after `cursor`; the
/// socket and the `hello` frame's cursor.
async fn open(base: &str, user: &User, cursor: Option<&str>) -> anyhow::Result<(Socket, String)> {
    let mut target = format!("{}/ws", base.replacen("http://", "ws://", 1));
    if let Some(cursor) = cursor {
        target.push_str(&format!("?cursor={cursor}"));
    }
    let mut request = target.into_client_request()?;
    request
        .headers_mut()
        .insert(reqwest::header::AUTHORIZATION, user.auth.clone());
    // Small buffers: ten thousand of these live in this process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("no hello")?
            .context("closed before hello")??;
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(text.as_str())?;
            if frame["type"] == "hello" {
                let cursor = frame["cursor"].as_str().context("cursor")?.to_owned();
                return Ok((socket, cursor));
            }
        }
    }
}

/// Latencies of one delivery run, µs.
struct Delivery {
    /// Each send's HTTP round trip (send → 201).
    send: Histogram<u64>,
    /// Send → each receiver's `message` frame.
    delivered: Histogram<u64>,
    sent: usize,
    missing: u64,
}

impl Delivery {
    fn ms(h: &Histogram<u64>, q: f64) -> f64 {
        h.value_at_quantile(q) as f64 / 1000.0
    }

    fn summary(&self) -> Value {
        json!({
            "sent": self.sent, "deliveries": self.delivered.len(), "missing": self.missing,
            "delivery_p50_ms": Self::ms(&self.delivered, 0.5),
            "delivery_p99_ms": Self::ms(&self.delivered, 0.99),
            "delivery_max_ms": self.delivered.max() as f64 / 1000.0,
            "send_p50_ms": Self::ms(&self.send, 0.5),
            "send_p99_ms": Self::ms(&self.send, 0.99),
        })
    }
}

/// `rate` messages a second for `phase` from `from` into `chat`, each with
/// its own `client_message_id`, while every one of `receivers` listens on
/// its own WebSocket: the send round trips and every delivery's latency
/// from the moment its send began.
async fn deliveries(
    f: &Fixture,
    from: &User,
    chat: &str,
    receivers: &[User],
    rate: u32,
    phase: Duration,
) -> anyhow::Result<Delivery> {
    let total = (f64::from(rate) * phase.as_secs_f64()) as usize;
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sockets: Vec<Socket> = futures::stream::iter(receivers)
        .map(|r| open(&f.base, r, None))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.map(|(socket, _)| socket))
        .collect::<anyhow::Result<_>>()?;
    let listeners: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (started, mut stopped) = (started.clone(), stopped.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut seen = 0;
                while seen < total {
                    let message = tokio::select! {
                        m = socket.next() => m,
                        _ = stopped.changed() => break,
                    };
                    let Some(Ok(Message::Text(text))) = message else {
                        if message.is_none() {
                            break;
                        }
                        continue;
                    };
                    let at = Instant::now();
                    let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if frame["type"] != "message" {
                        continue;
                    }
                    let Some(id) = frame["client_message_id"].as_str() else {
                        continue;
                    };
                    if let Some(t) = lock(&started).get(id) {
                        let _ =
                            hist.record(at.saturating_duration_since(*t).as_micros().max(1) as u64);
                        seen += 1;
                    }
                }
                hist
            })
        })
        .collect();

    let target = url(format!("{}/chat/{chat}/messages", f.base));
    let send_hist = Arc::new(Mutex::new(histogram()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut sends = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let (http, target, auth) = (f.http.clone(), target.clone(), from.auth.clone());
        let (started, send_hist) = (started.clone(), send_hist.clone());
        sends.push(tokio::spawn(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let t = Instant::now();
            lock(&started).insert(id.clone(), t);
            let response = http
                .post(target)
                .header(reqwest::header::AUTHORIZATION, auth)
                .json(&json!({"text": TEXT, "client_message_id": id}))
                .send()
                .await;
            let Ok(r) = response else { return false };
            if r.status() != 201 || r.bytes().await.is_err() {
                return false;
            }
            let _ = lock(&send_hist).record(t.elapsed().as_micros().max(1) as u64);
            true
        }));
    }
    let sent = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|ok| matches!(ok, Ok(true)))
        .count();
    // What is still on its way gets five seconds.
    let grace = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = stop.send(true);
    });
    let mut delivered = histogram();
    for listener in listeners {
        if let Ok(hist) = listener.await {
            let _ = delivered.add(hist);
        }
    }
    grace.abort();
    let send = lock(&send_hist).clone();
    let expected = (sent * receivers.len()) as u64;
    Ok(Delivery {
        send,
        missing: expected.saturating_sub(delivered.len()),
        delivered,
        sent,
    })
}

/// Figures 9-11 on the HTTP phases' server and users.
pub(crate) async fn stream_phase(
    plan: &Plan,
    f: &Fixture,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let users = &f.users;
    // 9. send → WebSocket, one receiver, at the realtime rate.
    progress("send → WebSocket");
    let rate = plan.realtime_rate;
    let direct = deliveries(f, &users[0], &f.chats[0], &users[1..2], rate, plan.phase).await?;
    let load = format!(
        "{rate} messages/s for {:?} into one direct chat, its other member on one WebSocket",
        plan.phase
    );
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figures.push(figure(
            &format!("send → WebSocket {name}"),
            Delivery::ms(&direct.delivered, q),
            "ms",
            Some(Delivery::ms(&direct.send, q)),
            format!("{load}; baseline: the same sends' HTTP round trip"),
            direct.summary(),
        ));
    }

    // 10. Fan-out to every member of a group.
    let members = plan.group_members.min(users.len() - 1);
    progress(&format!("fan-out to {members} members"));
    let group = f
        .api
        .group(&users[0], "fan-out", &users[1..=members])
        .await?;
    let rate = plan.fanout_rate;
    let single = deliveries(f, &users[0], &f.chats[0], &users[1..2], rate, plan.phase).await?;
    let fanned = deliveries(f, &users[0], &group, &users[1..=members], rate, plan.phase).await?;
    let load = format!(
        "{rate} messages/s for {:?} into a group of {}, each member but the sender on a WebSocket ({} deliveries/s)",
        plan.phase,
        members + 1,
        rate as usize * members
    );
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figures.push(figure(
            &format!("fan-out to {members} members {name}"),
            Delivery::ms(&fanned.delivered, q),
            "ms",
            Some(Delivery::ms(&single.delivered, q)),
            format!("{load}; baseline: send → WebSocket of a direct chat at the same rate"),
            json!({"group": fanned.summary(), "baseline_direct": single.summary()}),
        ));
    }

    // 11. Resume after missing `resume_events` events.
    progress("resume");
    let (sender, reader, chat) = (&users[2], &users[3], &f.chats[1]);
    let (mut resumes, mut catch_ups) = (Vec::new(), Vec::new());
    for _ in 0..plan.resume_rounds {
        // The reader goes away; a marker (where the history baseline
        // starts reading) and the missed messages are sent. The stream
        // brings the marker too: one event more than the baseline reads.
        let (mut socket, cursor) = open(&f.base, reader, None).await?;
        let _ = socket.close(None).await;
        let marker = crate::send(&f.http, &f.base, chat, sender)
            .await
            .context("send")?;
        let rest: Vec<Option<String>> = futures::stream::iter(0..plan.resume_events)
            .map(|_| crate::send(&f.http, &f.base, chat, sender))
            .buffer_unordered(16)
            .collect()
            .await;
        anyhow::ensure!(rest.iter().all(Option::is_some), "a send failed");
        let t = Instant::now();
        let (mut socket, _) = open(&f.base, reader, Some(&cursor)).await?;
        let mut ids = std::collections::HashSet::new();
        while ids.len() <= plan.resume_events {
            let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
                .await
                .context("resume stalled")?
                .context("closed")??;
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str())?;
                if frame["type"] == "message" {
                    let id = frame["id"].as_str().context("id")?.to_owned();
                    anyhow::ensure!(ids.insert(id), "a message came twice");
                }
            }
        }
        resumes.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = socket.close(None).await;
        // Baseline: the same messages through history, after the one
        // before them (pages of 100, as a client with no cursor would).
        let t = Instant::now();
        let mut read = 0;
        let mut after = marker;
        while read < plan.resume_events {
            let page: Value = f
                .http
                .get(format!("{}/chat/{chat}?after={after}&quantity=100", f.base))
                .header(reqwest::header::AUTHORIZATION, reader.auth.clone())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let messages = page["messages"].as_array().context("messages")?;
            anyhow::ensure!(!messages.is_empty(), "history ended early");
            read += messages.len();
            after = messages
                .iter()
                .filter_map(|m| m["id"].as_str())
                .max_by_key(|id| time_key(id))
                .context("id")?
                .to_owned();
        }
        catch_ups.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (resume, catch_up) = (median(&mut resumes), median(&mut catch_ups));
    figures.push(figure(
        &format!("resume after {} missed events", plan.resume_events),
        resume,
        "ms",
        Some(catch_up),
        format!(
            "median of {} rounds: connect with ?cursor= until every missed message is in; baseline: the same messages through history after= (pages of 100)",
            plan.resume_rounds
        ),
        json!({"resume_ms": resumes, "history_ms": catch_ups}),
    ));
    Ok(())
}

/// A TimeUUID's order: its 60-bit timestamp, then the id.
fn time_key(id: &str) -> (String, &str) {
    let parts: Vec<&str> = id.split('-').collect();
    let key = match parts.as_slice() {
        [low, mid, high, ..] => format!("{}{mid}{low}", high.get(1..).unwrap_or_default()),
        _ => String::new(),
    };
    (key, id)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Figure 12: a fresh server, `plan.idle_connections` idle WebSockets.
pub(crate) async fn idle_phase(
    plan: &Plan,
    bin: &std::path::Path,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    const PER_USER: usize = 500;
    let n = plan.idle_connections;
    let mut server = Server::start_with(
        bin,
        tempfile::tempdir()?,
        &[
            "--registrations-per-address-per-hour",
            "1000000",
            "--events-max-per-user",
            &PER_USER.to_string(),
            "--max-connections",
            &(n + 1000).to_string(),
        ],
    )?;
    let api = crate::Api {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    };
    progress("idle connections: users");
    let mut users = Vec::new();
    for i in 0..n.div_ceil(PER_USER) {
        users.push(api.user(&format!("idle{i}")).await?);
    }
    // Everything a first connection makes once (the runtime's, the hub's)
    // is in the baseline.
    for user in &users {
        let (mut socket, _) = open(&server.base, user, None).await?;
        let _ = socket.close(None).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.rss_mib().context("RSS")?;
    progress(&format!("idle connections: opening {n}"));
    let started = Instant::now();
    let opened: Vec<anyhow::Result<Socket>> = futures::stream::iter(0..n)
        .map(|i| {
            let (base, user) = (server.base.clone(), users[i / PER_USER].clone());
            async move { open(&base, &user, None).await.map(|(s, _)| s) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let open_secs = started.elapsed().as_secs_f64();
    let failures: Vec<String> = opened
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .take(3)
        .collect();
    let sockets: Vec<Socket> = opened.into_iter().filter_map(Result::ok).collect();
    let held = sockets.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.rss_mib().context("RSS")?;
    let per_conn_kib = (after - before) * 1024.0 / held.max(1) as f64;
    let scrape = testkit::scrape(&api.http, &server.base).await;
    let server_open = testkit::metric_value(&scrape, "gateway_connections_open");
    drop(sockets);
    server.stop();
    let load = format!(
        "{held} of {n} idle WebSockets held at once ({} users × up to {PER_USER}), opened 64 at a time in {open_secs:.1} s; baseline: RSS before the first",
        users.len()
    );
    figures.push(figure(
        "idle WebSockets held",
        held as f64,
        "conns",
        Some(n as f64),
        load.clone(),
        json!({"server_gauge_open": server_open, "first_failures": failures}),
    ));
    figures.push(figure(
        "RSS per idle WebSocket",
        per_conn_kib,
        "KiB",
        None,
        load,
        json!({"rss_before_mib": before, "rss_after_mib": after}),
    ));
    Ok(())
}
