//! End-to-end tests of whole deployments, driven from outside as clients:
//! - `e2e`: the all-in-one binary (everything embedded), over HTTP and SSE;
//! - `distributed`: the per-service binaries on real backends (PostgreSQL,
//!   a Kafka-protocol broker, the Firestore and Firebase Auth emulators),
//!   with a Firebase JS SDK client listening to Firestore.

mod distributed;
mod e2e;
mod gateway;
mod hostile;
mod replicas;
mod support;
