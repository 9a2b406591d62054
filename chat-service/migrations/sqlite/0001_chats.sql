CREATE TABLE chats (
    id               BLOB    PRIMARY KEY NOT NULL,
    user_a           BLOB    NOT NULL,
    user_a_name      TEXT    NOT NULL,
    user_b           BLOB    NOT NULL,
    user_b_name      TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    last_activity    INTEGER NOT NULL,
    last_message_id  BLOB
);
CREATE INDEX chats_user_a ON chats (user_a, last_activity);
CREATE INDEX chats_user_b ON chats (user_b, last_activity);

-- ts: the TimeUUID's 100 ns tick; (ts, id) orders like Cassandra's timeuuid.
CREATE TABLE messages (
    chat_id            BLOB    NOT NULL,
    ts                 INTEGER NOT NULL,
    id                 BLOB    NOT NULL,
    sender_id          BLOB    NOT NULL,
    recipient_id       BLOB    NOT NULL,
    text               TEXT    NOT NULL,
    client_message_id  TEXT,
    PRIMARY KEY (chat_id, ts, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_client_id
    ON messages (chat_id, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

-- The embedded log: an outbox written in the same transaction as the
-- message, read in seq order by the aggregator.
CREATE TABLE log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id  BLOB    NOT NULL,
    payload  BLOB    NOT NULL
);
