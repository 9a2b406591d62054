//! chat-service integration tests: the real service (and a real
//! auth-service beside it) on port 0, driven over HTTP; the shared store
//! suite against every store; Kafka mode against a real Kafka-protocol broker
//! (Tansu) that each test starts on its own port.

mod helpers;

mod api;
mod groups;
mod kafka;
mod paging;
mod store_suite;
