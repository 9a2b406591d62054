//! Binding and serving, the same way for every service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

use crate::cors::CorsConfig;
use crate::telemetry::LogFormat;
use crate::{layers, probes};

/// Largest request line plus headers, in bytes; a larger head gets 431
/// (or 414 for a long URI) and the connection is closed.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// How many connections one process serves and how long a client may take
/// to send a request's head. Every service binary has these flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// Most connections served at once. Past it, a new connection is
    /// answered 503 `too_many_connections` (JSON) and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "10000",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Milliseconds a client has to send a request's line and headers,
    /// counted from when the server waits for them (a new connection, or
    /// an idle keep-alive one); past it the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value = "10000")]
    pub header_read_timeout_ms: std::num::NonZeroU64,

    /// Milliseconds a write to a client may wait for the client to read
    /// (its receive window full, no byte taken); past it the connection is
    /// closed. A client that stops reading a response or a stream so frees
    /// its connection and the buffers behind it.
    #[arg(long, env = "WRITE_STALL_TIMEOUT_MS", default_value = "30000")]
    pub write_stall_timeout_ms: std::num::NonZeroU64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        crate::config::defaults::<LimitsCommand>().limits
    }
}

/// [`ConnectionLimits`] as a command of its own, for its defaults.
#[derive(clap::Parser)]
struct LimitsCommand {
    #[command(flatten)]
    limits: ConnectionLimits,
}

/// A bound listener (port 0 picks a free port, which [`Listener::local_addr`]
/// then reports).
pub struct Listener(TcpListener);

impl Listener {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        TcpListener::bind(addr)
            .await
            .map(Self)
            .with_context(|| format!("binding {addr}"))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.0
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves `router` over HTTP/1.1 (upgrades included; the peer address
    /// is available to handlers as `ConnectInfo<SocketAddr>`) within
    /// `limits`, until `shutdown`; then stops accepting, asks every open
    /// connection to close once its request in flight is answered, and
    /// returns when all have.
    pub async fn serve(
        self,
        router: Router,
        limits: ConnectionLimits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let max = limits.max_connections.max(1);
        let slots = Arc::new(Semaphore::new(max as usize));
        let (stop, stopping) = watch::channel(());
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms.get()))
            .max_buf_size(MAX_HEAD_BYTES);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.0.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("http_connections_refused_total").increment(1);
                tokio::spawn(refuse(stream));
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
            stream.set_write_timeout(Some(Duration::from_millis(
                limits.write_stall_timeout_ms.get(),
            )));
            let service =
                router
                    .clone()
                    .map_request(move |mut request: axum::extract::Request<Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(peer));
                        request
                    });
            let connection = http
                .serve_connection(
                    TokioIo::new(crate::raw_errors::JsonRawErrors::new(Box::pin(stream))),
                    TowerToHyperService::new(service),
                )
                .with_upgrades();
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                let _open = OpenConnection::new(slot);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = stopping.changed() => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            });
        }
        drop(self.0);
        let _ = stop.send(());
        let _all_closed = slots.acquire_many(max).await;
        Ok(())
    }
}

/// Counts a served connection in `http_connections_open` and holds its slot
/// until it ends.
struct OpenConnection(#[allow(dead_code)] OwnedSemaphorePermit);

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        Self(slot)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

/// The answer to a connection past [`ConnectionLimits::max_connections`]:
/// 503 with the JSON error body, then close. What the client sent is read
/// and dropped for up to a second first, so closing does not reset the
/// connection before the client has read the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": "the server is serving as many connections as it may; retry shortly",
    }})
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        let mut discard = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut discard)).await;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut discard).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// A service's settings, as far as [`App`] needs them.
pub trait ServiceConfig: Send + Sync {
    /// Where to listen.
    fn listen(&self) -> SocketAddr;
    /// How to log.
    fn log_format(&self) -> LogFormat;
    /// Which browser origins may call it.
    fn cors(&self) -> &CorsConfig;
    /// How many connections it serves, and how patiently.
    fn connections(&self) -> &ConnectionLimits;
}

/// A service binary's `main`: logging as configured, build, bind, serve
/// until SIGTERM or Ctrl-C, then stop gracefully.
pub async fn main<S: Service>(config: S::Config) -> anyhow::Result<()> {
    crate::telemetry::init(config.log_format());
    let app = App::<S>::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "{} listening", S::NAME);
    app.run_until_stopped(crate::shutdown::signal()).await
}

/// What a service is to [`App`]: a state built from its configuration that
/// serves its API, the probes and its OpenAPI document on a bound listener.
pub trait Service: Clone + Send + Sync + 'static {
    type Config: ServiceConfig;
    /// The OpenAPI document of [`Service::api`].
    type Doc: utoipa::OpenApi + 'static;
    /// Its name in logs.
    const NAME: &'static str;
    /// Its `service` label in metrics.
    const METRIC: &'static str;

    /// The state, with every backend connected.
    fn from_config(config: &Self::Config) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The API routes alone (no probes, no middleware), for embedding.
    fn api(&self) -> Router;

    /// What `/readyz` asks: each backend the service needs.
    fn checks(&self) -> impl Future<Output = Vec<probes::Check>> + Send;

    /// Every route: [`Service::api`], `/healthz`, `/readyz`, `/metrics`,
    /// `/openapi.json` (the middleware is [`App`]'s).
    fn routes(&self) -> Router {
        let state = self.clone();
        let readyz = get(move || {
            let state = state.clone();
            async move { probes::readyz(state.checks().await) }
        });
        self.api()
            .merge(probes::with_openapi::<Self::Doc, ()>(readyz))
    }

    /// Tasks that run while the service serves (housekeeping), aborted when
    /// it stops.
    fn background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }

    /// Releases what the state holds, once in-flight requests are done.
    fn close(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A built service bound to its address, ready to run.
pub struct App<S> {
    listener: Listener,
    state: S,
    router: Router,
    connections: ConnectionLimits,
}

impl<S: Service> App<S> {
    /// Builds the state and binds the listener (port 0 picks a free port).
    pub async fn build(config: S::Config) -> anyhow::Result<Self> {
        let state = S::from_config(&config).await?;
        let router = layers::apply(
            state.routes(),
            S::METRIC,
            layers::Limits::default(),
            config.cors(),
        );
        let listener = Listener::bind(config.listen()).await?;
        Ok(Self {
            listener,
            state,
            router,
            connections: config.connections().clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// Serves until `shutdown` completes, lets in-flight requests finish,
    /// then stops the background tasks and closes the state.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let tasks = self.state.background();
        let result = self
            .listener
            .serve(self.router, self.connections, shutdown)
            .await;
        for task in tasks {
            task.abort();
        }
        self.state.close().await;
        tracing::info!("{} stopped", S::NAME);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    /// A server of one route within `limits`, and its address.
    async fn serving(limits: ConnectionLimits) -> (SocketAddr, watch::Sender<()>) {
        let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr();
        let router = Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/endless",
                get(|| async {
                    let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
                    axum::body::Body::from_stream(futures::stream::repeat_with(move || {
                        Ok::<_, std::convert::Infallible>(chunk.clone())
                    }))
                }),
            );
        let (stop, mut stopped) = watch::channel(());
        tokio::spawn(listener.serve(router, limits, async move {
            let _ = stopped.changed().await;
        }));
        (addr, stop)
    }

    fn limits(max_connections: u32, header_read_timeout_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_read_timeout_ms: header_read_timeout_ms.try_into().expect("positive"),
            write_stall_timeout_ms: 30_000.try_into().expect("positive"),
        }
    }

    /// Everything the server sends until it closes the connection (or
    /// `within` passes, which fails the test).
    async fn until_closed(stream: &mut TcpStream, within: Duration) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(within, stream.read_to_end(&mut out))
            .await
            .expect("the server closes the connection in time")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn connections_past_the_cap_get_a_json_503_and_the_first_are_served() {
        let (addr, _stop) = serving(limits(2, 10_000)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let local = s.local_addr().expect("local").to_string();
            assert!(
                answer.ends_with(&local),
                "the handler sees the peer: {answer}"
            );
            held.push(s);
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        third
            .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut third, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).expect("body")).expect("json");
        assert_eq!(body["error"]["code"], "too_many_connections");
        // A slot frees when a connection ends.
        drop(held.pop());
        let started = Instant::now();
        loop {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .expect("write");
            let answer = until_closed(&mut s, Duration::from_secs(5)).await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off_after_the_header_timeout() {
        let (addr, _stop) = serving(limits(100, 300)).await;
        // A request head that never ends.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /peer HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let started = Instant::now();
        until_closed(&mut slow, Duration::from_secs(3)).await;
        assert!(started.elapsed() >= Duration::from_millis(250));
        // A keep-alive connection that goes quiet after one request.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut idle, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Nothing at all.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        until_closed(&mut silent, Duration::from_secs(3)).await;
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let (addr, _stop) = serving(limits(100, 10_000)).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let method = "X".repeat(MAX_HEAD_BYTES * 2);
        // The server may close before all of it is written.
        let _ = s
            .write_all(format!("{method} /peer HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await;
        let answer = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
        assert!(!answer.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn stopping_waits_for_the_request_in_flight_then_closes() {
        let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr();
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let (stop, mut stopped) = watch::channel(());
        let server = tokio::spawn(listener.serve(router, limits(10, 10_000), async move {
            let _ = stopped.changed().await;
        }));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop.send(());
        let answer = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once the connection closed")
            .expect("join")
            .expect("served");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }

    #[tokio::test]
    async fn requests_hyper_cannot_parse_get_a_json_400() {
        let (addr, _stop) = serving(limits(100, 10_000)).await;
        for request in [
            &b"GET /peer HTTP/1.1\r\nnot a header\r\n\r\n"[..],
            b"GET /peer HTTP/1.1\r\nhost: x\r\nbad header name: y\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(request).await.expect("write");
            let answer = until_closed(&mut s, Duration::from_secs(5)).await;
            let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
            assert!(head.starts_with("HTTP/1.1 400 "), "{answer}");
            assert!(head.contains("content-type: application/json"), "{answer}");
            let body: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(body["error"]["code"], "bad_request");
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected_after_the_write_stall_timeout() {
        let mut limits = limits(10, 10_000);
        limits.write_stall_timeout_ms = 500.try_into().expect("positive");
        let (addr, _stop) = serving(limits).await;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut s = socket.connect(addr).await.expect("connect");
        s.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        // Not reading: the server's writes stall, then it gives up.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut sink = vec![0u8; 64 * 1024];
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            let mut total = 0usize;
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        })
        .await
        .expect("the connection of a client that stopped reading is closed");
        assert!(drained > 0, "the response had started");
    }

    #[test]
    fn the_default_limits_are_the_flags_defaults() {
        let d = ConnectionLimits::default();
        assert_eq!(d.max_connections, 10_000);
        assert_eq!(d.header_read_timeout_ms.get(), 10_000);
        assert_eq!(d.write_stall_timeout_ms.get(), 30_000);
    }
}
