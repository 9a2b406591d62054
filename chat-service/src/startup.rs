//! Wiring: backends from config, the router with its middleware, the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use auth_validator::Verifier;
use axum::extract::FromRef;
use axum::Router;
#[cfg(feature = "cql")]
use secrecy::ExposeSecret;
use service_kit::probes::Check;

use crate::config::{LogKind, StoreKind};
#[cfg(feature = "kafka")]
use crate::log::kafka::{KafkaLog, KafkaSettings};
use crate::log::MessageLog;
use crate::outbox::{OutboxLog, OutboxWake};
use crate::service::ChatService;
#[cfg(feature = "cql")]
use crate::store::cql::{parse_consistency, CqlSettings, CqlStore};
use crate::store::sqlite::SqliteStore;
use crate::store::MessageStore;
use crate::users::{HttpDirectory, UserDirectory};
use crate::Config;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The chat rules the handlers call.
    pub chats: Arc<ChatService>,
    /// For readiness.
    pub store: Arc<dyn MessageStore>,
    pub log: Arc<dyn MessageLog>,
    pub verifier: Verifier,
    /// With the embedded log: wakes a reader of the outbox in this process
    /// after each send (clone it per reader).
    pub outbox_wake: Option<OutboxWake>,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Verifier {
        state.verifier.clone()
    }
}

impl AppState {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with(config, None).await
    }

    /// Like [`AppState::build`], for embedding in one process: `users`
    /// replaces the HTTP lookup in auth-service.
    pub async fn build_with(
        config: &Config,
        users: Option<Arc<dyn UserDirectory>>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        service_kit::metrics::handle();
        metrics::describe_counter!(
            "chat_messages_sent_total",
            "Sends acknowledged, by outcome: new, or repeat (a client_message_id already stored)."
        );
        let http = reqwest::Client::new();
        // The configured key, or else the HS256 secret auth-service keeps
        // in the shared data directory (embedded mode).
        let verifier = config
            .auth
            .build_or_shared_secret(&config.data_dir, http.clone())?;
        // The embedded log is the embedded store's outbox: they come as a pair.
        let mut outbox: Option<OutboxLog> = None;
        let store: Arc<dyn MessageStore> = match config.store.kind {
            StoreKind::Embedded if config.log.kind == LogKind::Embedded => {
                let (store, log) =
                    SqliteStore::open_with_outbox(&config.data_dir, config.store.wal).await?;
                outbox = Some(log);
                Arc::new(store)
            }
            StoreKind::Embedded => {
                Arc::new(SqliteStore::open(&config.data_dir, config.store.wal).await?)
            }
            #[cfg(not(feature = "cql"))]
            StoreKind::Cql => anyhow::bail!(service_kit::config::not_built("--store cql", "cql")),
            #[cfg(feature = "cql")]
            StoreKind::Cql => {
                let s = &config.store;
                let settings = CqlSettings {
                    contact_points: s.cql_contact_points.clone(),
                    keyspace: s.cql_keyspace.clone(),
                    replication_factor: s.cql_replication_factor,
                    consistency: parse_consistency(&s.cql_consistency)
                        .map_err(anyhow::Error::msg)?,
                    bucket: Duration::from_secs(u64::from(s.cql_bucket_hours.get()) * 3600),
                    username: s.cql_username.clone(),
                    password: s
                        .cql_password
                        .as_ref()
                        .map(|p| p.expose_secret().to_owned()),
                };
                Arc::new(CqlStore::connect(&settings).await?)
            }
        };
        let outbox_wake = outbox.as_ref().map(OutboxLog::wake);
        let log: Arc<dyn MessageLog> = match config.log.kind {
            LogKind::Embedded => Arc::new(outbox.context("--log embedded needs --store embedded")?),
            #[cfg(not(feature = "kafka"))]
            LogKind::Kafka => anyhow::bail!(service_kit::config::not_built("--log kafka", "kafka")),
            #[cfg(feature = "kafka")]
            LogKind::Kafka => {
                let l = &config.log;
                Arc::new(
                    KafkaLog::connect(&KafkaSettings {
                        brokers: l.kafka.kafka_brokers.clone(),
                        topic: l.kafka.kafka_topic.clone(),
                        partitions: i32::from(l.kafka_partitions.get()),
                        replication_factor: l.kafka_replication_factor,
                        message_timeout: Duration::from_millis(l.kafka_message_timeout_ms),
                        batch_num_messages: l.kafka_batch_num_messages.get(),
                    })
                    .await?,
                )
            }
        };
        let users = users.unwrap_or_else(|| Arc::new(HttpDirectory::new(&config.auth_url, http)));
        Ok(Self {
            chats: Arc::new(ChatService::new(
                store.clone(),
                log.clone(),
                users,
                &config.limits,
            )),
            store,
            log,
            verifier,
            outbox_wake,
        })
    }
}

impl service_kit::server::Service for AppState {
    type Config = Config;
    type Doc = crate::routes::ApiDoc;
    const NAME: &'static str = "chat-service";
    const METRIC: &'static str = "chat";

    async fn from_config(config: &Config) -> anyhow::Result<Self> {
        AppState::build(config).await
    }

    fn api(&self) -> Router {
        crate::routes::api(self.clone())
    }

    async fn checks(&self) -> Vec<Check> {
        vec![
            Check::new("store", self.store.backend(), self.store.ping().await),
            Check::new("log", self.log.backend(), self.log.ping().await),
        ]
    }

    /// Forgets idle users' rate-limit state now and then, so memory is
    /// bounded by recently active senders.
    fn background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let chats = self.chats.clone();
        vec![tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                chats.forget_idle_senders();
            }
        })]
    }
}
