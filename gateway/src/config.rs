//! The gateway's limits, shared by the `gateway` binary and the all-in-one.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use crate::hub::HubLimits;

/// Bounds on the per-user streams (`/events`, `/ws`).
#[derive(Debug, Clone, clap::Args)]
pub struct EventLimits {
    /// Streams (SSE and WebSocket together) one user may have open at once
    /// on this replica; past it, 429 `too_many_streams`.
    #[arg(long, env = "EVENTS_MAX_PER_USER", default_value = "16")]
    pub events_max_per_user: NonZeroU32,

    /// Bytes of frames one stream may hold for a client that has not read
    /// them; a client that lets it fill is disconnected (it resumes with its
    /// cursor).
    #[arg(long, env = "EVENTS_QUEUE_BYTES", default_value = "262144")]
    pub events_queue_bytes: NonZeroU32,

    /// Bytes of recent events kept for clients that resume; a cursor older
    /// than what is kept gets a `reset`.
    #[arg(long, env = "EVENTS_RING_BYTES", default_value = "67108864")]
    pub events_ring_bytes: NonZeroU64,

    /// Events read back from the log at start, so cursors from before a
    /// restart resume exactly.
    #[arg(long, env = "EVENTS_BACKFILL", default_value = "100000")]
    pub events_backfill: NonZeroU64,

    /// At most one `typing` per user and chat goes out per this many
    /// milliseconds; more are dropped.
    #[arg(long, env = "TYPING_INTERVAL_MS", default_value = "1000")]
    pub typing_interval_ms: NonZeroU64,

    /// How long a user stays online after their last stream closes,
    /// milliseconds (a reconnect within it is not a presence change).
    #[arg(long, env = "PRESENCE_GRACE_MS", default_value = "5000")]
    pub presence_grace_ms: NonZeroU64,

    /// How often a replica tells the others who is connected to it,
    /// milliseconds; a replica silent for three of these (a crash) has its
    /// users taken offline.
    #[arg(long, env = "PRESENCE_HEARTBEAT_MS", default_value = "20000")]
    pub presence_heartbeat_ms: NonZeroU64,
}

impl EventLimits {
    pub fn hub(&self) -> HubLimits {
        HubLimits {
            queue_bytes: self.events_queue_bytes.get() as usize,
            ring_bytes: usize::try_from(self.events_ring_bytes.get()).unwrap_or(usize::MAX),
            max_per_user: self.events_max_per_user.get(),
            typing_interval: Duration::from_millis(self.typing_interval_ms.get()),
            presence_grace: Duration::from_millis(self.presence_grace_ms.get()),
            heartbeat: Duration::from_millis(self.presence_heartbeat_ms.get()),
        }
    }
}

/// The `gateway` binary's settings (flags, with environment fallbacks).
#[cfg(feature = "kafka")]
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8084")]
    pub listen: std::net::SocketAddr,

    /// Where the HS256 secret is looked for when no token key is configured
    /// (a data directory shared with auth-service).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,

    /// Base URL of chat-service: users' chats, and WebSocket sends.
    #[arg(
        long,
        env = "CHAT_SERVICE_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub chat_service_url: String,

    #[command(flatten)]
    pub auth: auth_validator::VerifierConfig,

    #[command(flatten)]
    pub kafka: chat_events::KafkaTopic,

    /// Topic of typing and presence between replicas (created when missing).
    #[arg(long, env = "SIGNALS_TOPIC", default_value = "chat.signals")]
    pub signals_topic: String,

    /// Partitions of the signals topic, when it is created.
    #[arg(long, env = "SIGNALS_PARTITIONS", default_value = "3")]
    pub signals_partitions: NonZeroU32,

    /// Retention of the signals topic, milliseconds, when it is created.
    #[arg(long, env = "SIGNALS_RETENTION_MS", default_value = "60000")]
    pub signals_retention_ms: NonZeroU64,

    /// How long to wait at start for the event topic to exist, milliseconds.
    #[arg(long, env = "TOPIC_WAIT_MS", default_value = "60000")]
    pub topic_wait_ms: NonZeroU64,

    #[command(flatten)]
    pub events: EventLimits,

    #[command(flatten)]
    pub tickets: auth_validator::TicketConfig,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: service_kit::telemetry::LogFormat,

    #[command(flatten)]
    pub cors: service_kit::cors::CorsConfig,

    #[command(flatten)]
    pub connections: service_kit::server::ConnectionLimits,
}

#[cfg(all(test, feature = "kafka"))]
mod tests {
    #[test]
    fn the_command_line_is_well_formed_and_limits_positive_by_type() {
        service_kit::config::assert_well_formed::<super::Config>(&[
            "--max-connections",
            "--header-read-timeout-ms",
            "--write-stall-timeout-ms",
            "--signals-partitions",
            "--signals-retention-ms",
            "--topic-wait-ms",
            "--events-max-per-user",
            "--events-queue-bytes",
            "--events-ring-bytes",
            "--events-backfill",
            "--typing-interval-ms",
            "--presence-grace-ms",
            "--presence-heartbeat-ms",
        ]);
    }
}
