//! Binding and serving, the same way for every service.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

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

/// What a service is to [`App`]: a state built from its configuration that
/// serves on a bound listener.
pub trait Service: Sized + Send + 'static {
    type Config: Send + Sync;

    /// Where the configuration says to listen.
    fn listen_addr(config: &Self::Config) -> SocketAddr;

    /// The state, with every backend connected.
    fn from_config(config: &Self::Config) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Serves until `shutdown`, then finishes in-flight requests and
    /// releases what the state holds.
    fn serve<F>(
        self,
        listener: Listener,
        shutdown: F,
    ) -> impl Future<Output = anyhow::Result<()>> + Send
    where
        F: Future<Output = ()> + Send + 'static;
}

/// A built service bound to its address, ready to run.
pub struct App<S> {
    listener: Listener,
    state: S,
}

impl<S: Service> App<S> {
    /// Builds the state and binds the listener (port 0 picks a free port).
    pub async fn build(config: S::Config) -> anyhow::Result<Self> {
        let state = S::from_config(&config).await?;
        let listener = Listener::bind(S::listen_addr(&config)).await?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// Serves until `shutdown` completes; see [`Service::serve`].
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.state.serve(self.listener, shutdown).await
    }
}
