//! aggregator: Kafka → consecutive-message batches → Firestore (not built yet; see the issue tracker).
