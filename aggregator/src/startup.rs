//! Wiring: source, sink and pipeline from config; the HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use service_kit::server::Listener;

use crate::config::{SinkKind, SourceKind};
use crate::pipeline::Pipeline;
use crate::routes::{probes, streams, ProbeState, StreamState};
use crate::sink::embedded::EmbeddedSink;
#[cfg(feature = "firestore")]
use crate::sink::firestore::FirestoreSink;
use crate::sink::Sink;
use crate::source::embedded::{EmbeddedSource, PositionFile};
#[cfg(feature = "kafka")]
use crate::source::kafka::{KafkaSource, KafkaSourceSettings};
use crate::source::{Source, SourceStatus};
use crate::Config;
use chat_service::outbox::{OutboxReader, OutboxWake};

/// How long a standalone aggregator waits for chat-service's `chat.db`.
const CHAT_DB_WAIT: Duration = Duration::from_secs(60);

pub struct App {
    listener: Listener,
    router: Router,
    pipeline: Pipeline,
    embedded: Option<EmbeddedSink>,
    connections: service_kit::server::ConnectionLimits,
}

/// The aggregator's parts, for embedding it in another process.
pub struct Components {
    pub pipeline: Pipeline,
    /// Checks the sink.
    pub sink: Arc<dyn Sink>,
    /// Whether the source can deliver (a Kafka member holds partitions).
    pub source: Arc<SourceStatus>,
    /// `/chat/{id}/stream` (embedded sink only), without middleware.
    pub streams: Option<Router>,
    /// The stream tickets `POST /events/ticket` issues (with the streams),
    /// for other streams served beside them to redeem.
    pub tickets: auth_validator::Tickets,
    /// `chat.db`'s outbox and membership, read-only (when the source or
    /// the sink is embedded).
    pub chat_db: Option<OutboxReader>,
    /// The embedded store, whose expired documents must be removed now and
    /// then ([`EmbeddedSink::spawn_expiry`]).
    pub embedded: Option<EmbeddedSink>,
}

/// How often the embedded store removes expired batch documents.
pub const EXPIRY_EVERY: Duration = Duration::from_secs(60);

impl Components {
    /// Builds source, sink and pipeline. `wake`, in a single process with
    /// chat-service, wakes the embedded source on each send instead of
    /// waiting for a poll.
    pub async fn build(config: &Config, wake: Option<OutboxWake>) -> anyhow::Result<Self> {
        config.validate()?;
        service_kit::metrics::handle();
        describe_metrics();
        let embedded = match config.sink {
            SinkKind::Embedded => Some(
                EmbeddedSink::open(
                    &config.data_dir,
                    config.ttl(),
                    config.retention(),
                    config.wal,
                )
                .await?,
            ),
            SinkKind::Firestore => None,
        };
        let sink: Arc<dyn Sink> = match &embedded {
            Some(store) => Arc::new(store.clone()),
            #[cfg(feature = "firestore")]
            None => {
                Arc::new(FirestoreSink::connect(&config.firestore_project_id, config.ttl()).await?)
            }
            #[cfg(not(feature = "firestore"))]
            None => anyhow::bail!(service_kit::config::not_built(
                "--sink firestore",
                "firestore"
            )),
        };
        let needs_chat_db = config.source == SourceKind::Embedded || embedded.is_some();
        let chat_db = if needs_chat_db {
            Some(OutboxReader::open(&config.data_dir, CHAT_DB_WAIT).await?)
        } else {
            None
        };
        let source: Box<dyn Source> = match config.source {
            SourceKind::Embedded => Box::new(
                EmbeddedSource::new(
                    chat_db.clone().context("chat.db")?,
                    PositionFile::in_dir(&config.data_dir),
                    Duration::from_millis(config.embedded_poll_ms.get()),
                    wake,
                )
                .await?,
            ),
            #[cfg(not(feature = "kafka"))]
            SourceKind::Kafka => {
                anyhow::bail!(service_kit::config::not_built("--source kafka", "kafka"))
            }
            #[cfg(feature = "kafka")]
            SourceKind::Kafka => Box::new(KafkaSource::connect(&KafkaSourceSettings {
                brokers: config.kafka.kafka_brokers.clone(),
                topic: config.kafka.kafka_topic.clone(),
                group_id: config.kafka_group_id.clone(),
                session_timeout: Duration::from_millis(config.kafka_session_timeout_ms),
                max_poll_interval: Duration::from_millis(config.kafka_max_poll_interval_ms),
                stall_timeout: Duration::from_millis(config.kafka_stall_timeout_ms),
            })?),
        };
        let tickets = config.tickets.tickets();
        let streams = match (embedded.clone(), chat_db.clone()) {
            (Some(store), Some(chats)) => {
                // The configured key, or else the HS256 secret auth-service
                // keeps in the shared data directory (embedded mode).
                let verifier = config
                    .auth
                    .build_or_shared_secret(&config.data_dir, reqwest::Client::new())?;
                Some(streams(StreamState {
                    feed: store.feed(),
                    chats,
                    verifier,
                    tickets: tickets.clone(),
                    limits: config.streams.clone(),
                    open: crate::routes::OpenStreams::default(),
                }))
            }
            _ => None,
        };
        let source_status = source.status();
        Ok(Self {
            pipeline: Pipeline::new(source, sink.clone(), config.limits()),
            sink,
            source: source_status,
            streams,
            tickets,
            chat_db,
            embedded,
        })
    }
}

impl App {
    /// A standalone aggregator (an embedded source polls the outbox).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let parts = Components::build(&config, None).await?;
        let mut router = probes(ProbeState {
            sink: parts.sink,
            source: parts.source,
        });
        let doc = service_kit::openapi::json(&crate::routes::openapi(parts.streams.is_some()));
        router = router.route(
            "/openapi.json",
            axum::routing::get(move || std::future::ready(axum::Json(doc.clone()))),
        );
        if let Some(streams) = parts.streams {
            router = router.merge(streams);
        }
        let router =
            service_kit::layers::apply(router, "aggregator", Default::default(), &config.cors);
        let listener = Listener::bind(config.listen).await?;
        Ok(Self {
            listener,
            router,
            pipeline: parts.pipeline,
            embedded: parts.embedded,
            connections: config.connections.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Runs the pipeline and the server until `shutdown`; then flushes what
    /// is pending and commits. Returns an error if the pipeline failed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, signal) = service_kit::shutdown::Shutdown::on(shutdown);
        let expiry = self.embedded.as_ref().map(|e| e.spawn_expiry(EXPIRY_EVERY));
        let server = tokio::spawn(self.listener.serve(
            self.router,
            self.connections,
            stop.clone().wait(),
        ));
        let result = self.pipeline.run(stop.wait()).await;
        signal.abort();
        server.abort();
        if let Some(expiry) = expiry {
            expiry.abort();
        }
        result.context("pipeline")
    }
}

/// The `# HELP` of the aggregator's metrics.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "aggregator_messages_in_total",
        "Messages read from the log."
    );
    describe_counter!(
        "aggregator_events_in_total",
        "Group timeline events read from the log (each a batch of its own)."
    );
    describe_counter!(
        "aggregator_reads_in_total",
        "Read horizon moves read from the log (receipts in the chat summary)."
    );
    describe_counter!(
        "aggregator_duplicates_total",
        "Events dropped as already applied (redelivered or re-published)."
    );
    describe_counter!(
        "aggregator_undecodable_total",
        "Log records that are not a known event (skipped, logged)."
    );
    describe_counter!("aggregator_batches_started_total", "Batches started.");
    describe_counter!(
        "aggregator_writes_total",
        "Sink writes (each of one or more documents)."
    );
    describe_counter!(
        "aggregator_documents_written_total",
        "Documents written to the sink."
    );
    describe_counter!(
        "aggregator_sink_errors_total",
        "Sink writes that failed and were retried."
    );
    describe_gauge!(
        "aggregator_documents_per_message",
        "Documents written per message read, since start."
    );
    describe_gauge!(
        "aggregator_consumer_lag",
        "Records on the log not yet read by this consumer (Kafka source)."
    );
    describe_gauge!(
        "aggregator_assigned_partitions",
        "Log partitions the consumer group gives this aggregator (Kafka source)."
    );
    describe_counter!(
        "aggregator_group_rejoins_total",
        "Times this aggregator left and rejoined its consumer group after a stall."
    );
    describe_counter!(
        "aggregator_streams_opened_total",
        "Realtime streams opened."
    );
    describe_gauge!("aggregator_streams_open", "Realtime streams open now.");
    describe_counter!(
        "aggregator_streams_refused_total",
        "Streams refused because their user had --max-streams-per-user open."
    );
    describe_counter!(
        "aggregator_streams_cut_off_total",
        "Streams ended because their client left the queue full for the stall timeout."
    );
    describe_counter!(
        "aggregator_streams_reset_total",
        "Streams opened with a Last-Event-ID they could not resume from (a reset, then a snapshot)."
    );
}
