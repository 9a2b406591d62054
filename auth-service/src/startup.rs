//! Wiring: state from config, the router with its middleware, the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use auth_validator::Verifier;
use axum::extract::FromRef;
use axum::http::HeaderName;
use axum::Router;
use secrecy::ExposeSecret;
use service_kit::probes::Check;

use crate::firebase::FirebaseTokens;
use crate::limiter::{LoginLimits, LoginPolicy};
use crate::passwords::Passwords;
use crate::store::Db;
use crate::tokens::Tokens;
use crate::Config;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub passwords: Arc<Passwords>,
    pub tokens: Arc<Tokens>,
    pub verifier: Verifier,
    /// Failed-login limits.
    pub logins: Arc<LoginLimits>,
    /// Registrations per client address.
    pub registrations: Arc<DefaultKeyedRateLimiter<std::net::IpAddr>>,
    pub client_ip_header: Option<HeaderName>,
    /// Signs Firebase custom tokens, when a service account is configured.
    pub firebase: Option<Arc<FirebaseTokens>>,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Verifier {
        state.verifier.clone()
    }
}

impl AppState {
    /// Opens the database (running migrations), loads or creates keys.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything records.
        service_kit::metrics::handle();
        describe_metrics();
        let url = config
            .database_url
            .as_ref()
            .map(|u| u.expose_secret().to_owned());
        let db = Db::connect(
            url.as_deref(),
            &config.data_dir,
            config.database_max_connections.get(),
            config.wal,
        )
        .await?;
        db.migrate().await?;
        let tokens = Tokens::from_config(&config.tokens, &config.data_dir)?;
        let firebase = FirebaseTokens::from_config(&config.firebase)?.map(Arc::new);
        let sec = &config.security;
        let hashes = sec
            .max_concurrent_hashes
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let passwords = Passwords::new(hashes, Duration::from_millis(sec.hash_queue_timeout_ms))?;
        let window = Duration::from_secs(sec.login_failure_window_secs.get());
        let client_ip_header = sec
            .client_ip_header
            .as_deref()
            .map(HeaderName::try_from)
            .transpose()
            .context("--client-ip-header is not a header name")?;
        Ok(Self {
            db,
            passwords: Arc::new(passwords),
            verifier: tokens.verifier(),
            tokens: Arc::new(tokens),
            logins: Arc::new(LoginLimits::new(LoginPolicy {
                per_account_address: sec.login_max_failures_per_account_address,
                per_account: sec.login_max_failures_per_account,
                per_address: sec.login_max_failures_per_address,
                window,
            })),
            registrations: Arc::new(RateLimiter::keyed(Quota::per_hour(
                sec.registrations_per_address_per_hour,
            ))),
            client_ip_header,
            firebase,
        })
    }
}

impl service_kit::server::Service for AppState {
    type Config = Config;
    type Doc = crate::routes::ApiDoc;
    const NAME: &'static str = "auth-service";
    const METRIC: &'static str = "auth";

    async fn from_config(config: &Config) -> anyhow::Result<Self> {
        AppState::build(config).await
    }

    fn api(&self) -> Router {
        crate::routes::api(self.clone())
    }

    async fn checks(&self) -> Vec<Check> {
        vec![Check::new(
            "database",
            self.db.backend(),
            self.db.ping().await,
        )]
    }

    /// Closes the database pool.
    async fn close(self) {
        self.db.close().await;
    }
}

/// The `# HELP` of auth-service's metrics.
fn describe_metrics() {
    metrics::describe_counter!("auth_registrations_total", "Users registered.");
    metrics::describe_counter!(
        "auth_logins_total",
        "Login attempts, by outcome (success, failure, limited)."
    );
    metrics::describe_counter!(
        "auth_refresh_reuse_total",
        "Spent refresh tokens presented again (each revokes its token family)."
    );
    metrics::describe_counter!(
        "auth_registrations_refused_total",
        "Registrations refused by the per-address limit."
    );
    metrics::describe_histogram!(
        "password_hash_seconds",
        metrics::Unit::Seconds,
        "Time to hash or verify one password (Argon2id)."
    );
}
