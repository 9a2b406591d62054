CREATE TABLE users (
    id             UUID   PRIMARY KEY,
    username       TEXT   NOT NULL,
    -- Byte order, so prefix ranges and cursors mean the same as in SQLite.
    username_key   TEXT   COLLATE "C" NOT NULL UNIQUE,
    email          TEXT,
    password_hash  TEXT   NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    token_hash  TEXT   PRIMARY KEY,
    family_id   UUID   NOT NULL,
    user_id     UUID   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
