//! The gateway: one realtime stream per user, over Server-Sent Events
//! (`GET /events`) and WebSocket (`GET /ws`), carrying every event of every
//! chat the user belongs to, fed by the log.
//!
//! - [`hub`]: routing, membership, the ring of recent events, resume;
//! - [`session`]: one client's stream, whatever carries it;
//! - [`routes`]: the HTTP side;
//! - [`frames`]: every frame's JSON (the table of frames is there);
//! - [`cursor`]: what a cursor is;
//! - [`log`]: the log it reads (chat-service's outbox embedded; Kafka
//!   distributed);
//! - [`signals`]: typing and presence between replicas;
//! - [`chat_api`]: chat-service, called with the user's token.
//!
//! The all-in-one serves the streams in process from its outbox; the
//! `gateway` binary serves them from Kafka, every replica reading every
//! partition.

pub mod chat_api;
pub mod config;
pub mod cursor;
pub mod frames;
pub mod hub;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
pub mod routes;
pub mod session;
pub mod signals;
#[cfg(feature = "kafka")]
pub mod startup;

use std::sync::Arc;

use hub::Hub;
use signals::SignalBus;

/// Keeps presence current: heartbeats out, other replicas' signals in,
/// silent replicas' users offline. Runs until the bus closes.
pub fn spawn_signals(hub: Arc<Hub>) -> tokio::task::JoinHandle<()> {
    let mut signals = hub.signals().subscribe();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(hub.limits().heartbeat);
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Ok(signal) => hub.signal(signal),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "signals lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = beat.tick() => {
                    hub.expire_presence();
                    let bus: &Arc<dyn SignalBus> = hub.signals();
                    bus.publish(hub.heartbeat()).await;
                }
            }
        }
    })
}
