-- When a batch document expires (Unix seconds): the TTL policy of the
-- embedded store, like Firestore's on expire_at.
ALTER TABLE batches ADD COLUMN expire_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX batches_expire_at ON batches (expire_at);
