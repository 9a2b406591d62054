CREATE TABLE users (
    id             BLOB    PRIMARY KEY NOT NULL,
    username       TEXT    NOT NULL,
    username_key   TEXT    NOT NULL UNIQUE,
    email          TEXT,
    password_hash  TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE refresh_tokens (
    token_hash  TEXT    PRIMARY KEY NOT NULL,
    family_id   BLOB    NOT NULL,
    user_id     BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
