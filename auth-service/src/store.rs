//! Users and refresh tokens, in SQLite (embedded default) or PostgreSQL.
//!
//! Both backends run the same SQL: ids bind as `Uuid` (a 16-byte BLOB in
//! SQLite, `uuid` in PostgreSQL), times as Unix seconds, and `username_key`
//! compares bytewise in both (PostgreSQL column collation "C"), so ordering,
//! prefix search and cursors behave identically. The backend is picked once
//! from the database URL; [`with_pool!`] expands each query for both pool
//! types, so there is one copy of every statement.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
#[cfg(feature = "postgres")]
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use uuid::Uuid;

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds.
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            Db::Postgres($pool) => $body,
        }
    };
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub username_key: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub created_at: i64,
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live; it is now spent and `new` replaces it.
    Rotated { user_id: Uuid },
    /// The token had already been spent: its whole family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// SQLite's automatic checkpoints are passive: while reads and writes keep
/// coming, the WAL may never start over and grows with every write. Past
/// `limit` bytes it is checkpointed and emptied (which waits for readers of
/// the old WAL, up to the busy timeout). Ends with the pool.
async fn bound_wal(pool: sqlx::SqlitePool, wal: std::path::PathBuf, limit: u64) {
    let mut tick = tokio::time::interval(embedded_db::CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !pool.is_closed() {
        tick.tick().await;
        let size = tokio::fs::metadata(&wal).await.map_or(0, |m| m.len());
        if size <= limit || pool.is_closed() {
            continue;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, wal_bytes = size, "could not empty auth.db's WAL");
        }
    }
}

impl Db {
    /// Connects to `url` (`postgres://…` or `sqlite://…`), or to `auth.db`
    /// in `data_dir` when no URL is given.
    pub async fn connect(
        url: Option<&str>,
        data_dir: &Path,
        max_connections: u32,
        wal: embedded_db::WalLimit,
    ) -> anyhow::Result<Db> {
        let acquire = Duration::from_secs(5);
        match url {
            #[cfg(not(feature = "postgres"))]
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                anyhow::bail!(service_kit::config::not_built(
                    "a postgres:// database URL",
                    "postgres"
                ))
            }
            #[cfg(feature = "postgres")]
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire)
                    .connect(url)
                    .await
                    .context("connecting to PostgreSQL")?;
                Ok(Db::Postgres(pool))
            }
            Some(url) if url.starts_with("sqlite:") => {
                let options = SqliteConnectOptions::from_str(url).context("SQLite URL")?;
                Self::sqlite(options, max_connections, acquire, wal).await
            }
            Some(_) => anyhow::bail!("the database URL must start with postgres:// or sqlite:"),
            None => {
                embedded_db::private_dir(data_dir)?;
                let options = SqliteConnectOptions::new().filename(data_dir.join("auth.db"));
                Self::sqlite(options, max_connections, acquire, wal).await
            }
        }
    }

    async fn sqlite(
        options: SqliteConnectOptions,
        max_connections: u32,
        acquire: Duration,
        wal: embedded_db::WalLimit,
    ) -> anyhow::Result<Db> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // When the WAL starts over, it is cut back to this size.
            .pragma(
                "journal_size_limit",
                embedded_db::WAL_LIMIT_BYTES.to_string(),
            );
        let wal_file = {
            let mut wal = options.get_filename().as_os_str().to_owned();
            wal.push("-wal");
            std::path::PathBuf::from(wal)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire)
            .connect_with(options)
            .await
            .context("opening SQLite")?;
        tokio::spawn(bound_wal(pool.clone(), wal_file, wal.bytes));
        Ok(Db::Sqlite(pool))
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
            #[cfg(feature = "postgres")]
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        }
        .context("running migrations")
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await);
    }

    /// Inserts a user; a taken username (case-insensitively) is
    /// [`Error::UsernameTaken`], decided by the unique index so concurrent
    /// registrations of one name cannot both succeed.
    pub async fn insert_user(&self, user: &UserRow) -> Result<()> {
        let result = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO users (id, username, username_key, email, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(user.id)
            .bind(&user.username)
            .bind(&user.username_key)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.created_at)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::UsernameTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn user_by_key(&self, key: &str) -> Result<Option<UserRow>> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, UserRow>("SELECT * FROM users WHERE username_key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await
        })?)
    }

    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<UserRow>> {
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, UserRow>("SELECT * FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Users whose key starts with `prefix` and sorts after `after`, in key
    /// order. Every allowed username character sorts below `{`, so
    /// `[prefix, prefix + "{")` is exactly the keys with that prefix.
    pub async fn search_users(
        &self,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<UserRow>> {
        let upper = format!("{prefix}{{");
        Ok(with_pool!(self, |pool| {
            sqlx::query_as::<_, UserRow>(
                "SELECT * FROM users \
                 WHERE username_key >= $1 AND username_key < $2 AND username_key > $3 \
                 ORDER BY username_key LIMIT $4",
            )
            .bind(prefix)
            .bind(&upper)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    pub async fn insert_refresh_token(
        &self,
        hash: &str,
        family: Uuid,
        user_id: Uuid,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash)
            .bind(family)
            .bind(user_id)
            .bind(now)
            .bind(expires_at)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Spends the token `old_hash` and stores `new_hash` in its family, in one
    /// transaction. Spending is a conditional update, so of two concurrent
    /// uses exactly one rotates and the other is treated as reuse.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Rotation> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let spent: Option<(Uuid, Uuid)> = sqlx::query_as(
                "UPDATE refresh_tokens SET used_at = $1 \
                 WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1 \
                 RETURNING user_id, family_id",
            )
            .bind(now)
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((user_id, family)) = spent {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(new_hash)
                .bind(family)
                .bind(user_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Rotation::Rotated { user_id });
            }
            let reused: Option<(Uuid,)> = sqlx::query_as(
                "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NOT NULL",
            )
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((family,)) = reused else {
                return Ok(Rotation::Invalid);
            };
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(family)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Rotation::Reused)
        })
    }

    /// Revokes the family of the token `hash`. Returns whether one was found.
    pub async fn revoke_family_of(&self, hash: &str, now: i64) -> Result<bool> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 \
                 WHERE revoked_at IS NULL AND family_id = \
                   (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
            )
            .bind(now)
            .bind(hash)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done > 0)
    }
}
