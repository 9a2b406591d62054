//! The whole chat backend in one process, every backend embedded.
//!
//! auth-service, chat-service and the aggregator share one data directory
//! and one port: SQLite for users and messages, chat-service's outbox as the
//! log, the embedded realtime store (served over SSE) in place of Firestore,
//! and the HS256 signing key generated on first start. In-process, chat-service
//! looks users up directly in auth-service's database and wakes the
//! aggregator after each send, so a message reaches SSE listeners in
//! milliseconds. The web client is served at `/`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chat_events::UserId;
use chat_service::users::{DirectoryError, UserDirectory};
use clap::Parser;
use service_kit::probes::Check;
use service_kit::server::{Listener, Service};
use service_kit::telemetry::LogFormat;

/// chat-backend: auth, chat and aggregator in one process, everything
/// embedded (nothing else to install). Run the per-service binaries
/// (auth-service, chat-service, aggregator) for the distributed backends.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-backend", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for all data: users, messages, realtime documents, keys.
    /// It survives restarts.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub limits: chat_service::config::ChatLimits,

    #[command(flatten)]
    pub streams: aggregator::config::StreamLimits,

    #[command(flatten)]
    pub events: gateway::config::EventLimits,

    #[command(flatten)]
    pub tickets: auth_validator::TicketConfig,

    #[command(flatten)]
    pub security: auth_service::config::SecurityConfig,

    /// The WAL bound of each embedded database (users, messages, realtime).
    #[command(flatten)]
    pub wal: embedded_db::WalLimit,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub cors: service_kit::cors::CorsConfig,

    #[command(flatten)]
    pub connections: service_kit::server::ConnectionLimits,
}

/// chat-service's user lookups, answered from auth-service's database.
struct LocalUsers(auth_service::store::Db);

#[async_trait]
impl UserDirectory for LocalUsers {
    async fn username(&self, id: UserId, _bearer: &str) -> Result<Option<String>, DirectoryError> {
        self.0
            .user_by_id(id.uuid())
            .await
            .map(|u| u.map(|u| u.username))
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))
    }
}

#[derive(Clone)]
struct Probes {
    auth: auth_service::AppState,
    chat: chat_service::AppState,
    sink: Arc<dyn aggregator::sink::Sink>,
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(service_kit::openapi::json(&openapi()))
}

/// The web client: register or log in, chats, sending, live batches.
/// Served with a Content-Security-Policy that lets only its own inline
/// script run (by hash) and only this origin be called, never framed.
#[utoipa::path(get, path = "/", responses((status = 200, description = "the web client's page", content_type = "text/html")))]
async fn web_client() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(INDEX),
    )
}

/// The page's policy: its one inline `<script>` allowed by its SHA-256,
/// inline styles, requests to this origin only, no plugins, no framing.
fn content_security_policy() -> &'static str {
    use base64::Engine as _;
    use sha2::Digest as _;
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let script = INDEX
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
        format!(
            "default-src 'self'; script-src 'sha256-{hash}'; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'"
        )
    })
}

/// The all-in-one's own routes, beside the services'.
#[derive(utoipa::OpenApi)]
#[openapi(paths(web_client))]
struct OwnDoc;

/// The all-in-one's OpenAPI document: every service's routes, as served
/// here on one port.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = service_kit::openapi::merged(
        "chat-backend",
        "auth-service, chat-service and the aggregator's streams in one process (the all-in-one).",
        [
            auth_service::routes::ApiDoc::openapi(),
            chat_service::routes::ApiDoc::openapi(),
            aggregator::routes::openapi(true),
            gateway::routes::openapi(false),
            OwnDoc::openapi(),
        ],
    );
    doc.paths.paths.remove("/token/firebase");
    doc
}

async fn readyz(State(p): State<Probes>) -> Response {
    service_kit::probes::readyz(vec![
        Check::new("users", p.auth.db.backend(), p.auth.db.ping().await),
        Check::new(
            "messages",
            p.chat.store.backend(),
            p.chat.store.ping().await,
        ),
        Check::new("log", p.chat.log.backend(), p.chat.log.ping().await),
        Check::new("realtime", p.sink.backend(), p.sink.ping().await),
    ])
}

const INDEX: &str = include_str!("../web/index.html");

/// How often a growing batch is rewritten in the embedded realtime store.
pub const EMBEDDED_FLUSH_INTERVAL_MS: std::num::NonZeroU64 =
    std::num::NonZeroU64::new(20).expect("positive");

/// A built, bound all-in-one server.
pub struct App {
    listener: Listener,
    router: Router,
    pipeline: aggregator::pipeline::Pipeline,
    realtime: aggregator::sink::embedded::EmbeddedSink,
    hub: Arc<gateway::hub::Hub>,
    log: Box<dyn gateway::log::LogSource>,
    data_dir: PathBuf,
    connections: service_kit::server::ConnectionLimits,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let dir = &config.data_dir;
        embedded_db::private_dir(dir)?;
        // auth first: it creates the signing key the others check tokens with.
        let mut auth_config = auth_service::Config::embedded(dir);
        auth_config.security = config.security.clone();
        auth_config.wal = config.wal;
        let auth = auth_service::AppState::build(&auth_config).await?;
        let users: Arc<dyn UserDirectory> = Arc::new(LocalUsers(auth.db.clone()));
        let mut chat_config = chat_service::Config::embedded(dir);
        chat_config.limits = config.limits.clone();
        chat_config.store.wal = config.wal;
        let chat = chat_service::AppState::build_with(&chat_config, Some(users)).await?;
        // SQLite has no per-document write limit, so the embedded store can
        // show a growing batch sooner than Firestore's once a second.
        let mut aggregator_config = aggregator::Config::embedded(dir);
        aggregator_config.flush_interval_ms = EMBEDDED_FLUSH_INTERVAL_MS;
        aggregator_config.streams = config.streams.clone();
        aggregator_config.tickets = config.tickets.clone();
        aggregator_config.wal = config.wal;
        let parts =
            aggregator::Components::build(&aggregator_config, chat.outbox_wake.clone()).await?;
        let streams = parts
            .streams
            .context("the embedded aggregator serves SSE streams")?;
        let realtime = parts
            .embedded
            .clone()
            .context("the embedded realtime store")?;
        // The per-user streams, from the same outbox, in process.
        let chat_db = parts.chat_db.clone().context("chat.db")?;
        let log = gateway::log::EmbeddedLog::open(
            chat_db,
            chat.outbox_wake.clone(),
            config.events.events_backfill.get(),
            std::time::Duration::from_millis(500),
        )
        .await?;
        let hub = gateway::hub::Hub::new(
            gateway::log::LogSource::start(&log),
            config.events.hub(),
            Arc::new(gateway::signals::Local::default()),
        );
        let events = gateway::routes::router(
            gateway::routes::GatewayState {
                hub: hub.clone(),
                api: Arc::new(gateway::chat_api::InProcess(chat.api())),
                verifier: chat.verifier.clone(),
                tickets: parts.tickets.clone(),
            },
            false,
        );
        let probes = Probes {
            auth: auth.clone(),
            chat: chat.clone(),
            sink: parts.sink.clone(),
        };
        // No Firestore here, so no Firebase custom tokens either.
        let router = auth_service::routes::api_without_firebase(auth)
            .merge(chat.api())
            .merge(streams)
            .merge(events)
            .merge(service_kit::probes::router(get(readyz)).with_state(probes))
            .route("/openapi.json", get(openapi_json))
            .route("/", get(web_client));
        let router =
            service_kit::layers::apply(router, "all-in-one", Default::default(), &config.cors);
        let listener = Listener::bind(config.listen).await?;
        Ok(Self {
            listener,
            router,
            pipeline: parts.pipeline,
            realtime,
            hub,
            log: Box::new(log),
            data_dir: config.data_dir.clone(),
            connections: config.connections.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Serves until `shutdown`; then finishes requests, flushes the
    /// aggregator and commits its position.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, signal) = service_kit::shutdown::Shutdown::on(shutdown);
        let expiry = self
            .realtime
            .spawn_expiry(aggregator::startup::EXPIRY_EVERY);
        let ingest = tokio::spawn(gateway::log::ingest(
            self.log,
            self.hub.clone(),
            stop.clone().wait(),
        ));
        let signals = gateway::spawn_signals(self.hub.clone());
        let hub = self.hub.clone();
        let closing = stop.clone();
        let tell_streams = tokio::spawn(async move {
            closing.wait().await;
            // Every per-user stream says `reconnect` before the server goes.
            hub.shut_down();
        });
        let server = tokio::spawn(self.listener.serve(
            self.router,
            self.connections,
            stop.clone().wait(),
        ));
        let pipeline = self.pipeline.run(stop.wait()).await;
        signal.abort();
        expiry.abort();
        signals.abort();
        let _ = tell_streams.await;
        let _ = ingest.await;
        // SSE streams never end on their own: give requests a moment, then go.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
        pipeline.context("aggregator")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every operation of `doc`, as (method path, operation).
    fn operations(doc: &Value) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                out.push((format!("{method} {path}"), op));
            }
        }
        out
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn one_document_declares_its_security_and_error_bodies() {
        let doc = service_kit::openapi::json(&super::openapi());
        assert!(doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")));
        let scheme = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!(
            (scheme["type"].as_str(), scheme["scheme"].as_str()),
            (Some("http"), Some("bearer"))
        );
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in refs {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is defined"
            );
        }
        let ops = operations(&doc);
        for route in [
            "post /login",
            "post /users",
            "post /chats",
            "get /chat/{id}",
            "post /chat/{id}/messages",
        ] {
            assert!(ops.iter().any(|(r, _)| r == route), "{route} is documented");
        }
        for (route, op) in &ops {
            let responses = op["responses"].as_object().expect("responses");
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(responses.contains_key("401"), "{route}: 401");
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{route} {status}: the error body"
                    );
                }
            }
        }
        let history = ops
            .iter()
            .find(|(r, _)| r == "get /chat/{id}")
            .expect("history")
            .1;
        let quantity = history["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "quantity")
            .expect("quantity");
        let kind = &quantity["schema"]["type"];
        assert!(
            kind == "integer"
                || kind
                    .as_array()
                    .is_some_and(|k| k.contains(&"integer".into())),
            "{quantity}"
        );
    }
}

service_kit::test_every_route_is_documented!(include_str!("lib.rs"), openapi());
