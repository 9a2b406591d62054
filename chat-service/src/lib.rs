//! chat-service: chats between two users, sending, and TimeUUID history.
//!
//! Layout:
//! - [`config`]: every setting as a flag with an environment fallback;
//! - [`domain`]: validated input (`MessageText`, `Quantity`, `ClientMessageId`);
//! - [`store`]: the [`store::MessageStore`] trait and its two implementations,
//!   embedded SQLite (the default) and Cassandra/ScyllaDB;
//! - [`log`]: the [`log::MessageLog`] trait: the embedded outbox (written by
//!   the embedded store in the same transaction as the message) and Kafka;
//! - [`outbox`]: the embedded log as one pair: the send side and the
//!   [`outbox::OutboxReader`] that the aggregator reads it with;
//! - [`users`]: looking up the other participant in auth-service;
//! - [`service`]: the send path (ordering, idempotency, publish);
//! - [`routes`] and [`startup`]: HTTP and wiring.

pub mod config;
pub mod domain;
pub mod error;
pub mod log;
pub mod outbox;
pub mod routes;
pub mod service;
pub mod startup;
pub mod store;
pub mod users;

pub use config::Config;
pub use startup::AppState;
