-- The change feed's size, kept as changes are recorded and pruned, so its
-- retention is bounded in bytes without scanning it.
ALTER TABLE changes ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE changes SET bytes = length(CAST(doc AS BLOB));
CREATE TABLE feed_size (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    rows   INTEGER NOT NULL,
    bytes  INTEGER NOT NULL
);
INSERT INTO feed_size (id, rows, bytes)
    SELECT 1, COUNT(*), COALESCE(SUM(bytes), 0) FROM changes;
