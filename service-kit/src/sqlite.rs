//! The embedded stores' SQLite set-up: one file in WAL mode, written through
//! a single connection (writes are serialised without busy errors, and an
//! autoincrement column follows commit order), read through a pool of its
//! own.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub struct Pools {
    pub write: SqlitePool,
    pub read: SqlitePool,
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
}

async fn open_writer(path: &Path, migrator: &Migrator) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(path))
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    migrator
        .run(&write)
        .await
        .with_context(|| format!("migrating {}", path.display()))?;
    Ok(write)
}

/// Creates (with its directory) the database at `path` if needed, switches
/// it to WAL mode and runs `migrator` on it; for stores that then open it
/// with another driver.
pub async fn migrate(path: &Path, migrator: &Migrator) -> anyhow::Result<()> {
    open_writer(path, migrator).await?.close().await;
    Ok(())
}

/// Opens (creating it and its directory if needed) the database at `path`,
/// runs `migrator` on it, and returns the writer and a pool of `readers`.
pub async fn open(path: &Path, migrator: &Migrator, readers: u32) -> anyhow::Result<Pools> {
    let write = open_writer(path, migrator).await?;
    let options = options(path);
    let read = SqlitePoolOptions::new()
        .max_connections(readers.max(1))
        .connect_with(options.read_only(true))
        .await
        .with_context(|| format!("opening {} for reading", path.display()))?;
    Ok(Pools { write, read })
}
