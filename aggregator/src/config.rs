//! Settings, from flags with environment fallbacks. The defaults are the
//! embedded mode: chat-service's outbox in, the embedded realtime store out.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use auth_validator::VerifierConfig;
use clap::{Parser, ValueEnum};
use service_kit::telemetry::LogFormat;

use crate::batcher::Limits;

/// aggregator: folds consecutive messages into batch documents.
#[derive(Debug, Clone, Parser)]
#[command(name = "aggregator", version, about)]
pub struct Config {
    /// Address to listen on (probes, metrics and, embedded, the SSE streams).
    #[arg(long, env = "AGGREGATOR_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,

    /// Directory of embedded data: chat-service's `chat.db` (the embedded
    /// log) and `realtime.db` (the embedded realtime store).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where events come from.
    #[arg(
        id = "source_kind",
        long = "source",
        env = "AGGREGATOR_SOURCE",
        value_enum,
        default_value = "embedded"
    )]
    pub source: SourceKind,

    #[command(flatten)]
    pub kafka: chat_events::KafkaTopic,

    /// Consumer group; replicas in one group share the partitions.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "chat-aggregator")]
    pub kafka_group_id: String,

    /// Kafka consumer session timeout, milliseconds: how long a crashed
    /// replica holds its partitions before the group moves them.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u64,

    /// How long the consumer group may leave this aggregator without
    /// partitions, while the topic has records that nobody consumes, before
    /// it leaves and rejoins the group, milliseconds. Keep it above the
    /// session timeout: a broker first waits that long for a crashed member.
    #[arg(long, env = "KAFKA_STALL_TIMEOUT_MS", default_value_t = 30_000)]
    pub kafka_stall_timeout_ms: u64,

    /// Longest pause between two polls before the consumer counts as stuck
    /// and leaves the group (it rejoins when it polls again), milliseconds.
    #[arg(long, env = "KAFKA_MAX_POLL_INTERVAL_MS", default_value_t = 300_000)]
    pub kafka_max_poll_interval_ms: u64,

    /// Where batch documents go.
    #[arg(
        id = "sink_kind",
        long = "sink",
        env = "AGGREGATOR_SINK",
        value_enum,
        default_value = "embedded"
    )]
    pub sink: SinkKind,

    /// Google Cloud project of the Firestore database. With
    /// `FIRESTORE_EMULATOR_HOST` set, the emulator is used instead.
    #[arg(long, env = "FIRESTORE_PROJECT_ID", default_value = "chat-local")]
    pub firestore_project_id: String,

    /// A batch closes when the gap since its last message passes this.
    #[arg(long, env = "BATCH_MAX_GAP_SECS", default_value_t = 300)]
    pub batch_max_gap_secs: u64,

    /// Most messages in one batch.
    #[arg(long, env = "BATCH_MAX_COUNT", default_value = "200")]
    pub batch_max_count: NonZeroUsize,

    /// Largest batch document, bytes (Firestore's limit is 1 MiB).
    #[arg(long, env = "BATCH_MAX_BYTES", default_value_t = 256 * 1024)]
    pub batch_max_bytes: usize,

    /// Growth of a batch is written at most this often, milliseconds.
    #[arg(long, env = "FLUSH_INTERVAL_MS", default_value = "1000")]
    pub flush_interval_ms: NonZeroU64,

    /// `expire_at` of a batch is its last message plus this many days.
    #[arg(long, env = "BATCH_TTL_DAYS", default_value_t = 30)]
    pub batch_ttl_days: u64,

    /// How often the embedded source polls the log when idle, milliseconds.
    #[arg(long, env = "EMBEDDED_POLL_MS", default_value = "10")]
    pub embedded_poll_ms: NonZeroU64,

    #[command(flatten)]
    pub auth: VerifierConfig,

    #[command(flatten)]
    pub streams: StreamLimits,

    #[command(flatten)]
    pub tickets: auth_validator::TicketConfig,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub cors: service_kit::cors::CorsConfig,

    #[command(flatten)]
    pub connections: service_kit::server::ConnectionLimits,

    /// The WAL bound of the embedded realtime store.
    #[command(flatten)]
    pub wal: embedded_db::WalLimit,
}

/// Bounds on the SSE streams the embedded realtime store serves.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamLimits {
    /// Streams one user may have open at once in this process; past it,
    /// `GET /chat/{id}/stream` answers 429 `too_many_streams`.
    #[arg(long, env = "MAX_STREAMS_PER_USER", default_value = "32")]
    pub max_streams_per_user: std::num::NonZeroU32,

    /// Bytes of events one stream may hold for a client that has not read
    /// them yet. When they are full, the stream waits up to
    /// `--stream-stall-timeout-ms` for the client, then ends (the client
    /// resumes with `Last-Event-ID`).
    #[arg(long, env = "STREAM_QUEUE_BYTES", default_value = "1048576")]
    pub stream_queue_bytes: std::num::NonZeroU32,

    /// How long a stream waits for a client that does not read, milliseconds.
    #[arg(long, env = "STREAM_STALL_TIMEOUT_MS", default_value = "10000")]
    pub stream_stall_timeout_ms: NonZeroU64,

    /// Most bytes of batch documents the embedded change feed keeps for
    /// streams that resume with `Last-Event-ID` (also at most 200,000
    /// changes); a cursor older than what is kept gets a reset and a fresh
    /// snapshot.
    #[arg(long, env = "CHANGE_FEED_MAX_BYTES", default_value = "134217728")]
    pub change_feed_max_bytes: std::num::NonZeroU32,
}

impl StreamLimits {
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_stall_timeout_ms.get())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// chat-service's outbox in `chat.db`.
    Embedded,
    /// A Kafka topic.
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// `realtime.db`, served over SSE.
    Embedded,
    /// Google Firestore (or its emulator).
    Firestore,
}

/// A little under Firestore's 1 MiB document limit.
pub const MAX_DOCUMENT_BYTES: usize = 900 * 1024;

impl Config {
    pub fn limits(&self) -> Limits {
        Limits {
            max_gap: Duration::from_secs(self.batch_max_gap_secs),
            max_count: self.batch_max_count.get(),
            max_bytes: self.batch_max_bytes,
            flush_interval: Duration::from_millis(self.flush_interval_ms.get()),
        }
    }

    /// What the embedded change feed keeps.
    pub fn retention(&self) -> crate::sink::embedded::FeedRetention {
        crate::sink::embedded::FeedRetention {
            max_bytes: i64::from(self.streams.change_feed_max_bytes.get()),
        }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.batch_ttl_days * 24 * 3600)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (16 * 1024..=MAX_DOCUMENT_BYTES).contains(&self.batch_max_bytes),
            "--batch-max-bytes must be 16 KiB to 900 KiB (a message can be 16 KiB; Firestore allows 1 MiB)"
        );
        Ok(())
    }
}

service_kit::service_config!(Config);

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed_and_limits_positive_by_type() {
        service_kit::config::assert_well_formed::<super::Config>(&[
            "--max-connections",
            "--wal-max-bytes",
            "--header-read-timeout-ms",
            "--write-stall-timeout-ms",
            "--batch-max-count",
            "--flush-interval-ms",
            "--embedded-poll-ms",
            "--max-streams-per-user",
            "--change-feed-max-bytes",
            "--stream-queue-bytes",
            "--stream-stall-timeout-ms",
        ]);
    }

    #[test]
    fn limits_are_checked() {
        let mut c = super::Config::embedded("/tmp/x");
        assert!(c.validate().is_ok());
        c.batch_max_bytes = 2 * 1024 * 1024;
        assert!(c.validate().is_err());
    }
}
