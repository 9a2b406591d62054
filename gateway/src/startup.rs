//! The `gateway` binary: the event topic from Kafka, signals over Kafka,
//! chat-service over HTTP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use service_kit::probes::Check;
use service_kit::server::Listener;

use crate::chat_api::Http;
use crate::config::Config;
use crate::hub::Hub;
use crate::kafka::{KafkaLog, KafkaSignals};
use crate::log::LogSource;
use crate::routes::{router, GatewayState};

/// A built, bound gateway.
pub struct App {
    listener: Listener,
    router: Router,
    hub: Arc<Hub>,
    log: Box<dyn LogSource>,
    connections: service_kit::server::ConnectionLimits,
}

#[derive(Clone)]
struct Probes {
    hub: Arc<Hub>,
    http: reqwest::Client,
    chat: String,
}

/// Ready once the topic has been read to where it stood at start, and
/// chat-service answers.
async fn readyz(State(p): State<Probes>) -> Response {
    let log = if p.hub.is_ready() {
        Ok(())
    } else {
        Err("still reading the event topic")
    };
    let chat = match p
        .http
        .get(format!("{}/healthz", p.chat.trim_end_matches('/')))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("chat-service answered {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    service_kit::probes::readyz(vec![
        Check::new("log", "kafka", log),
        Check::new("chats", "http", chat),
    ])
}

pub fn describe_metrics() {
    for (name, help) in [
        (
            "gateway_streams_opened_total",
            "Per-user streams opened, by transport (sse, ws).",
        ),
        (
            "gateway_events_delivered_total",
            "Log events written to clients, by transport.",
        ),
        (
            "gateway_events_routed_total",
            "Log events queued for live connections.",
        ),
        (
            "gateway_resumes_total",
            "Streams that resumed from a cursor.",
        ),
        (
            "gateway_resets_total",
            "Streams whose cursor could not be resumed from (reset).",
        ),
        (
            "gateway_cut_off_total",
            "Connections cut off because their client let the queue fill.",
        ),
        (
            "gateway_connections_refused_total",
            "Streams refused: the user had --events-max-per-user open.",
        ),
        ("gateway_sends_total", "Messages sent over WebSocket."),
        (
            "gateway_signals_total",
            "Typing and presence signals heard, by type.",
        ),
    ] {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_gauge!("gateway_connections_open", "Per-user streams open.");
    metrics::describe_gauge!(
        "gateway_connections_live",
        "Streams caught up with the log (pushed to)."
    );
    metrics::describe_gauge!(
        "gateway_ring_events",
        "Recent events kept for resuming streams."
    );
    metrics::describe_gauge!(
        "gateway_queued_bytes",
        "Bytes waiting in every connection's queue."
    );
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        service_kit::metrics::handle();
        describe_metrics();
        let http = reqwest::Client::new();
        let verifier = config
            .auth
            .build_or_shared_secret(&config.data_dir, http.clone())?;
        let log = KafkaLog::connect(
            &config.kafka.kafka_brokers,
            &config.kafka.kafka_topic,
            config.events.events_backfill.get(),
            Duration::from_millis(config.topic_wait_ms.get()),
        )
        .await?;
        let signals = KafkaSignals::connect(
            &config.kafka.kafka_brokers,
            &config.signals_topic,
            i32::try_from(config.signals_partitions.get()).unwrap_or(3),
            Duration::from_millis(config.signals_retention_ms.get()),
        )
        .await?;
        let hub = Hub::new(log.start(), config.events.hub(), signals);
        let state = GatewayState {
            hub: hub.clone(),
            api: Arc::new(Http {
                client: http.clone(),
                base: config.chat_service_url.clone(),
            }),
            verifier,
            tickets: config.tickets.tickets(),
        };
        let probes = Probes {
            hub: hub.clone(),
            http,
            chat: config.chat_service_url.clone(),
        };
        let doc = service_kit::openapi::json(&crate::routes::openapi(true));
        let router = router(state, true)
            .merge(service_kit::probes::router(get(readyz)).with_state(probes))
            .route(
                "/openapi.json",
                get(move || std::future::ready(axum::Json(doc.clone()))),
            );
        let router =
            service_kit::layers::apply(router, "gateway", Default::default(), &config.cors);
        let listener = Listener::bind(config.listen).await?;
        Ok(Self {
            listener,
            router,
            hub,
            log: Box::new(log),
            connections: config.connections.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; then tells every stream to reconnect and
    /// stops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        run(
            self.listener,
            self.router,
            self.connections,
            self.hub,
            self.log,
            shutdown,
        )
        .await
    }
}

/// Reads the log into `hub` and serves `router` until `shutdown`; then
/// every stream says `reconnect` and the server stops (the all-in-one runs
/// its streams the same way).
pub async fn run(
    listener: Listener,
    router: Router,
    connections: service_kit::server::ConnectionLimits,
    hub: Arc<Hub>,
    log: Box<dyn LogSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, signal) = service_kit::shutdown::Shutdown::on(shutdown);
    let ingest = tokio::spawn(crate::log::ingest(log, hub.clone(), stop.clone().wait()));
    let signals = crate::spawn_signals(hub.clone());
    let server = tokio::spawn(listener.serve(router, connections, stop.clone().wait()));
    stop.wait().await;
    hub.shut_down();
    signal.abort();
    // Streams end once they have said `reconnect`; give them a moment.
    let served = tokio::time::timeout(Duration::from_secs(5), server).await;
    signals.abort();
    let _ = ingest.await;
    match served {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(()),
    }
}
