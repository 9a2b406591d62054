//! aggregator: message.created events → consecutive-message batch documents.
//!
//! A source → aggregate → sink pipeline:
//! - [`source`]: Kafka (consumer group, offsets stored only after the
//!   writes covering them) or the embedded log (chat-service's outbox table,
//!   with its own committed position);
//! - [`batcher`]: the batching rules, pure logic;
//! - [`sink`]: Firestore or the embedded realtime store;
//! - [`pipeline`]: drives them, flushing on time and at shutdown;
//! - [`routes`]: probes, metrics and (embedded) the SSE stream per chat.

pub mod batcher;
pub mod config;
pub mod pipeline;
pub mod routes;
pub mod sink;
pub mod source;
pub mod startup;

pub use config::Config;
pub use startup::{App, Components};
