//! Binding and serving, the same way for every service.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::cors::CorsConfig;
use crate::telemetry::LogFormat;
use crate::{layers, probes};

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

    /// Serves `router` (with the peer address available to handlers as
    /// `ConnectInfo<SocketAddr>`) until `shutdown`, then lets in-flight
    /// requests finish.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.0, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")
    }
}

/// A service's settings, as far as [`App`] needs them.
pub trait ServiceConfig: Send + Sync {
    /// Where to listen.
    fn listen(&self) -> SocketAddr;
    /// How to log.
    fn log_format(&self) -> LogFormat;
    /// Which browser origins may call it.
    fn cors(&self) -> &CorsConfig;
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
        let result = self.listener.serve(self.router, shutdown).await;
        for task in tasks {
            task.abort();
        }
        self.state.close().await;
        tracing::info!("{} stopped", S::NAME);
        result
    }
}
