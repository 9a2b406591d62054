-- Group chats, the timeline (messages and events) and read state.
-- Direct chats and their messages carry over: each direct chat gets its two
-- members (read up to its last message, so an upgrade shows no old unread
-- badges) and its messages their per-chat sequence numbers.

CREATE TABLE chats_v2 (
    id               BLOB    PRIMARY KEY NOT NULL,
    kind             TEXT    NOT NULL,          -- 'direct' | 'group'
    title            TEXT,                      -- groups only
    created_at       INTEGER NOT NULL,
    member_count     INTEGER NOT NULL,
    -- Milliseconds: the newest timeline item, or creation.
    last_activity    INTEGER NOT NULL,
    -- Messages so far: the newest message's seq.
    message_seq      INTEGER NOT NULL DEFAULT 0,
    last_message_id  BLOB,
    last_sender_id   BLOB,
    last_preview     TEXT
);

-- read_seq: the seq of the newest message the member has read (their own
-- sends move it too); unread = chats.message_seq - read_seq.
CREATE TABLE members (
    chat_id       BLOB    NOT NULL,
    user_id       BLOB    NOT NULL,
    username      TEXT    NOT NULL,
    role          TEXT    NOT NULL,             -- 'owner' | 'admin' | 'member'
    joined_at     INTEGER NOT NULL,
    last_read_id  BLOB,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_user ON members (user_id);

-- One timeline per chat. ts: the TimeUUID's 100 ns tick; (ts, id) orders
-- like Cassandra's timeuuid. type: 'message' or the event
-- ('chat_created', 'member_added', 'member_removed', 'chat_renamed');
-- sender_id: the sender, or the event's actor; text: the message, or the
-- title an event gives; user_id: the member added or removed; members: a
-- chat_created's initial members (JSON array); seq: messages only, 1, 2, 3…
CREATE TABLE timeline (
    chat_id            BLOB    NOT NULL,
    ts                 INTEGER NOT NULL,
    id                 BLOB    NOT NULL,
    type               TEXT    NOT NULL,
    sender_id          BLOB    NOT NULL,
    text               TEXT,
    client_message_id  TEXT,
    reply_to           BLOB,
    user_id            BLOB,
    members            TEXT,
    seq                INTEGER,
    PRIMARY KEY (chat_id, ts, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX timeline_client_id
    ON timeline (chat_id, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

INSERT INTO timeline (chat_id, ts, id, type, sender_id, text, client_message_id, seq)
SELECT chat_id, ts, id, 'message', sender_id, text, client_message_id,
       ROW_NUMBER() OVER (PARTITION BY chat_id ORDER BY ts, id)
FROM messages;

INSERT INTO chats_v2 (id, kind, created_at, member_count, last_activity, message_seq,
                      last_message_id, last_sender_id, last_preview)
SELECT c.id, 'direct', c.created_at, 2, c.last_activity,
       COALESCE((SELECT MAX(t.seq) FROM timeline t WHERE t.chat_id = c.id), 0),
       last.id, last.sender_id, substr(last.text, 1, 100)
FROM chats c
LEFT JOIN timeline last ON last.chat_id = c.id
    AND last.seq = (SELECT MAX(t.seq) FROM timeline t WHERE t.chat_id = c.id);

INSERT INTO members (chat_id, user_id, username, role, joined_at, last_read_id, read_seq)
SELECT c.id, c.user_a, c.user_a_name, 'member', c.created_at, v.last_message_id, v.message_seq
FROM chats c JOIN chats_v2 v ON v.id = c.id
UNION ALL
SELECT c.id, c.user_b, c.user_b_name, 'member', c.created_at, v.last_message_id, v.message_seq
FROM chats c JOIN chats_v2 v ON v.id = c.id;

DROP TABLE messages;
DROP TABLE chats;
ALTER TABLE chats_v2 RENAME TO chats;
