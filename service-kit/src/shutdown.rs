//! Graceful shutdown.

/// Completes on SIGTERM or Ctrl-C, whichever comes first.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received, draining");
}

/// One shutdown signal shared by several tasks (a server and a pipeline,
/// say): each clone's [`Shutdown::wait`] completes once the signal fires.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Watches `signal` in a task; abort the returned handle when done.
    pub fn on(
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        (Self(rx), task)
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn every_clone_sees_the_signal() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (stop, task) = Shutdown::on(async move {
            let _ = rx.await;
        });
        let a = tokio::spawn(stop.clone().wait());
        let b = tokio::spawn(stop.wait());
        let _ = tx.send(());
        a.await.expect("a");
        b.await.expect("b");
        task.await.expect("signal task");
    }
}
