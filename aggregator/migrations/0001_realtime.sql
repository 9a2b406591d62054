-- The embedded realtime document store.
CREATE TABLE batches (
    chat_id   BLOB    NOT NULL,
    seq       INTEGER NOT NULL,
    state     TEXT    NOT NULL,  -- the aggregator's Batch, JSON
    doc       TEXT    NOT NULL,  -- the client document, JSON
    version   INTEGER NOT NULL,  -- the change that last wrote it
    PRIMARY KEY (chat_id, seq)
) WITHOUT ROWID;

CREATE TABLE summaries (
    chat_id  BLOB PRIMARY KEY NOT NULL,
    doc      TEXT NOT NULL
);

-- Change feed for SSE resumption (Last-Event-ID = version).
CREATE TABLE changes (
    version  INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id  BLOB    NOT NULL,
    kind     TEXT    NOT NULL,
    doc      TEXT    NOT NULL
);
CREATE INDEX changes_chat ON changes (chat_id, version);

-- Committed positions of embedded sources.
CREATE TABLE positions (
    name      TEXT    PRIMARY KEY NOT NULL,
    position  INTEGER NOT NULL
);
