//! aggregator: message.created events → consecutive-message batch documents.
pub mod batcher;
