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
