//! Settings, from flags with environment fallbacks. The defaults are the
//! embedded mode: SQLite and an HS256 secret in the data directory.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use secrecy::SecretString;
use service_kit::telemetry::LogFormat;

/// auth-service: register, log in, refresh tokens, find users.
#[derive(Debug, Clone, Parser)]
#[command(name = "auth-service", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "AUTH_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Directory for embedded data: the SQLite file and generated keys.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database URL: `postgres://…` for PostgreSQL, `sqlite://…` for a SQLite
    /// file. Default: `auth.db` in the data directory.
    #[arg(long, env = "AUTH_DATABASE_URL")]
    pub database_url: Option<SecretString>,

    /// Largest number of pooled database connections.
    #[arg(long, env = "AUTH_DATABASE_MAX_CONNECTIONS", default_value = "10")]
    pub database_max_connections: NonZeroU32,

    /// The WAL bound of a SQLite database.
    #[command(flatten)]
    pub wal: embedded_db::WalLimit,

    #[command(flatten)]
    pub tokens: TokenConfig,

    #[command(flatten)]
    pub security: SecurityConfig,

    #[command(flatten)]
    pub firebase: crate::firebase::FirebaseConfig,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub cors: service_kit::cors::CorsConfig,

    #[command(flatten)]
    pub connections: service_kit::server::ConnectionLimits,
}

/// Signing algorithm of access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 with a shared secret: every validator needs the secret.
    Hs256,
    /// Ed25519: only auth-service holds the private key; validators use the
    /// public key or `/.well-known/jwks.json`.
    Eddsa,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenConfig {
    /// Signing algorithm for access tokens.
    #[arg(long, env = "JWT_ALGORITHM", value_enum, default_value = "hs256")]
    pub jwt_algorithm: SigningAlgorithm,

    /// HS256 secret (at least 32 bytes). Default: read from, or generated
    /// into, `jwt-secret` in the data directory.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// Ed25519 private key (PKCS#8 PEM) for `eddsa`. Default: read from, or
    /// generated into, `jwt-ed25519.pem` in the data directory (the public
    /// key is written beside it as `jwt-ed25519.pub.pem`).
    #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,

    /// `iss` of issued tokens; validators must expect the same.
    #[arg(long, env = "JWT_ISSUER", default_value = "chat-auth")]
    pub jwt_issuer: String,

    /// `aud` of issued tokens; validators must expect the same.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "chat")]
    pub jwt_audience: String,

    /// Access token lifetime, seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value = "900")]
    pub access_token_ttl_secs: NonZeroU64,

    /// Refresh token lifetime, seconds.
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value = "2592000")]
    pub refresh_token_ttl_secs: NonZeroU64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SecurityConfig {
    /// Password hashes computed at once (each argon2id hash takes 19 MiB).
    /// Default: the number of CPUs.
    #[arg(long, env = "MAX_CONCURRENT_HASHES")]
    pub max_concurrent_hashes: Option<NonZeroUsize>,

    /// How long a request may wait for a hashing slot before getting 503.
    #[arg(long, env = "HASH_QUEUE_TIMEOUT_MS", default_value_t = 5000)]
    pub hash_queue_timeout_ms: u64,

    /// Failed logins allowed for one account from one client address within
    /// the window before that pair gets 429.
    #[arg(
        long,
        env = "LOGIN_MAX_FAILURES_PER_ACCOUNT_ADDRESS",
        default_value = "5"
    )]
    pub login_max_failures_per_account_address: NonZeroU32,

    /// Failed logins allowed per account, from addresses it has not logged
    /// in from, within the window before 429 for them (25 per 15 minutes is
    /// at most 100 an hour). Addresses the account logged in from in the
    /// last 30 days are not held back by it.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value = "25")]
    pub login_max_failures_per_account: NonZeroU32,

    /// Failed logins allowed per client address, across accounts it has not
    /// logged in to, within the window before 429.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ADDRESS", default_value = "50")]
    pub login_max_failures_per_address: NonZeroU32,

    /// Accounts one client address may register per hour (a burst of as
    /// many, refilled evenly); past it, 429.
    #[arg(long, env = "REGISTRATIONS_PER_ADDRESS_PER_HOUR", default_value = "20")]
    pub registrations_per_address_per_hour: NonZeroU32,

    /// Length of the failed-login window, seconds.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW_SECS", default_value = "900")]
    pub login_failure_window_secs: NonZeroU64,

    /// Header holding the client address when behind a trusted reverse proxy
    /// (for example `x-forwarded-for`; its first address is used). Without
    /// it, the TCP peer address is the client address.
    #[arg(long, env = "CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
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
            "--database-max-connections",
            "--access-token-ttl-secs",
            "--refresh-token-ttl-secs",
            "--max-concurrent-hashes",
            "--login-max-failures-per-account-address",
            "--login-max-failures-per-account",
            "--registrations-per-address-per-hour",
            "--login-max-failures-per-address",
            "--login-failure-window-secs",
        ]);
    }
}
