//! Settings, from flags with environment fallbacks. The defaults are the
//! embedded mode: SQLite store and outbox log in the data directory, tokens
//! checked with the HS256 secret auth-service keeps there.

use std::net::SocketAddr;
use std::path::PathBuf;

use auth_validator::VerifierConfig;
use clap::{Args, Parser, ValueEnum};
use std::num::{NonZeroU16, NonZeroU32};

use secrecy::SecretString;
use service_kit::telemetry::LogFormat;

/// chat-service: chats, sending and TimeUUID history.
/// Limits of chats: the per-user send rate and the size of groups (also
/// settings of the all-in-one).
#[derive(Debug, Clone, Args)]
pub struct ChatLimits {
    /// Messages a user may send per second (sustained).
    #[arg(long, env = "SEND_RATE_PER_SEC", default_value = "10")]
    pub send_rate_per_sec: NonZeroU32,

    /// Messages a user may send in a burst.
    #[arg(long, env = "SEND_BURST", default_value = "30")]
    pub send_burst: NonZeroU32,

    /// Most members a group may hold, its owner included (2 to 10000: every
    /// membership event on the log lists them all).
    #[arg(
        long,
        env = "MAX_GROUP_MEMBERS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(2..=10_000)
    )]
    pub max_group_members: u32,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "chat-service", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,

    /// Directory for embedded data (`chat.db`), and where the HS256 secret
    /// is looked for when no token key is configured.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Base URL of auth-service, used to look up the other participant.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:8081")]
    pub auth_url: String,

    #[command(flatten)]
    pub auth: VerifierConfig,

    #[command(flatten)]
    pub store: StoreConfig,

    #[command(flatten)]
    pub log: LogConfig,

    #[command(flatten)]
    pub limits: ChatLimits,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub cors: service_kit::cors::CorsConfig,

    #[command(flatten)]
    pub connections: service_kit::server::ConnectionLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// SQLite in the data directory.
    Embedded,
    /// Cassandra or ScyllaDB.
    Cql,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// Message store.
    #[arg(
        long = "store",
        env = "CHAT_STORE",
        value_enum,
        default_value = "embedded"
    )]
    pub kind: StoreKind,

    /// The WAL bound of the embedded store.
    #[command(flatten)]
    pub wal: embedded_db::WalLimit,

    /// CQL contact points, comma-separated `host:port`.
    #[arg(
        long,
        env = "CQL_CONTACT_POINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:9042"
    )]
    pub cql_contact_points: Vec<String>,

    /// Keyspace (created when missing).
    #[arg(long, env = "CQL_KEYSPACE", default_value = "chat")]
    pub cql_keyspace: String,

    /// Replication factor used when creating the keyspace (3 in production).
    #[arg(long, env = "CQL_REPLICATION_FACTOR", default_value_t = 1)]
    pub cql_replication_factor: u32,

    /// Consistency of reads and writes: one, quorum, local-quorum, all…
    #[arg(long, env = "CQL_CONSISTENCY", default_value = "local-quorum")]
    pub cql_consistency: String,

    /// Length of a message partition's time bucket, hours.
    #[arg(long, env = "CQL_BUCKET_HOURS", default_value = "24")]
    pub cql_bucket_hours: NonZeroU32,

    /// CQL user name.
    #[arg(long, env = "CQL_USERNAME")]
    pub cql_username: Option<String>,

    /// CQL password.
    #[arg(long, env = "CQL_PASSWORD", hide_env_values = true)]
    pub cql_password: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogKind {
    /// The embedded store's outbox (needs `--store embedded`).
    Embedded,
    /// Kafka.
    Kafka,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogConfig {
    /// Message log.
    #[arg(
        id = "log_kind",
        long = "log",
        env = "CHAT_LOG",
        value_enum,
        default_value = "embedded"
    )]
    pub kind: LogKind,

    #[command(flatten)]
    pub kafka: chat_events::KafkaTopic,

    /// Partitions when creating the topic.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value = "6")]
    pub kafka_partitions: NonZeroU16,

    /// Replication factor when creating the topic (3 in production).
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,

    /// How long a send waits for the broker's acknowledgement before it
    /// fails with 503, milliseconds.
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 5000)]
    pub kafka_message_timeout_ms: u64,

    /// Most records the producer puts in one batch (librdkafka's
    /// `batch.num.messages`). Set 1 with Tansu 0.6: its fetch from an offset
    /// inside a stored batch skips the rest of that batch, so a consumer
    /// resuming from a committed offset there would miss records. Apache
    /// Kafka has no such limit.
    #[arg(long, env = "KAFKA_BATCH_NUM_MESSAGES", default_value = "10000")]
    pub kafka_batch_num_messages: std::num::NonZeroU32,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !(self.log.kind == LogKind::Embedded && self.store.kind != StoreKind::Embedded),
            "--log embedded is the embedded store's outbox: it needs --store embedded"
        );
        Ok(())
    }
}

service_kit::service_config!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_limits_positive_by_type() {
        service_kit::config::assert_well_formed::<super::Config>(&[
            "--max-connections",
            "--wal-max-bytes",
            "--header-read-timeout-ms",
            "--write-stall-timeout-ms",
            "--send-rate-per-sec",
            "--send-burst",
            "--kafka-partitions",
            "--cql-bucket-hours",
            "--kafka-batch-num-messages",
            "--max-group-members",
        ]);
    }

    #[test]
    fn an_embedded_log_needs_the_embedded_store() {
        let mut c = Config::embedded("/tmp/x");
        assert!(c.validate().is_ok());
        c.store.kind = StoreKind::Cql;
        assert!(c.validate().is_err());
        c.log.kind = LogKind::Kafka;
        assert!(c.validate().is_ok());
    }
}
