//! aggregator integration tests:
//! - `embedded`: the whole embedded stack in one process (auth-service,
//!   chat-service, aggregator on one data directory) and the SSE stream;
//! - `firestore`: the aggregator binary consuming a real Kafka-protocol
//!   broker (Tansu) into the real Firestore emulator;
//! - `crash`: the same, killed with SIGKILL again and again mid-stream;
//! - `group`: consumer-group membership after an immediate restart;
//! - `offsets`: the Kafka source commits only what is written;
//! - `sources`: one suite for both sources: what a committed position means.

mod common;

mod crash;
mod embedded;
mod firestore;
mod group;
mod offsets;
mod sinks;
mod sources;
