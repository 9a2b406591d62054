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

/// Why a write through a [`GroupWriter`] did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    #[error("the {0} writer has stopped")]
    Stopped(&'static str),
    #[error("the {0} group commit failed: {1}")]
    Commit(&'static str, String),
}

type Queued<J, O, E> = (J, tokio::sync::oneshot::Sender<Result<O, E>>);

/// One thread that owns a database's only write connection and commits
/// queued writes in groups: it takes every write waiting at that moment (up
/// to `max_group`), applies each inside a savepoint of one transaction, and
/// answers each only after that transaction commits. A write whose `apply`
/// fails is rolled back alone and gets its error; if the commit fails, every
/// write of the group gets [`GroupError::Commit`] and none of it is stored.
/// Concurrent writers so share one commit instead of queueing for one each.
///
/// The writer never checkpoints the WAL itself (a checkpoint syncs the file
/// and would hold up every write queued behind it): a thread of its own does
/// a passive checkpoint every [`CHECKPOINT_EVERY`], alongside the writes.
pub struct GroupWriter<J, O, E> {
    jobs: tokio::sync::mpsc::Sender<Queued<J, O, E>>,
    name: &'static str,
    /// Dropped with the last clone, which stops the checkpointer.
    _checkpoints: std::sync::Arc<std::sync::mpsc::Sender<()>>,
}

/// How often the WAL is checkpointed, off the write path.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

impl<J, O, E> Clone for GroupWriter<J, O, E> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
            name: self.name,
            _checkpoints: self._checkpoints.clone(),
        }
    }
}

/// Checkpoints `path`'s WAL every [`CHECKPOINT_EVERY`] until `stop`'s
/// sender is gone.
fn spawn_checkpointer(
    name: &'static str,
    path: &Path,
    stop: std::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    std::thread::Builder::new()
        .name(format!("{name}-ckpt"))
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(CHECKPOINT_EVERY)
            {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                if let Err(e) = done {
                    tracing::warn!(error = %e, db = name, "WAL checkpoint failed");
                }
            }
        })?;
    Ok(())
}

impl<J, O, E> GroupWriter<J, O, E>
where
    J: Send + 'static,
    O: Send + 'static,
    E: From<GroupError> + From<rusqlite::Error> + Send + 'static,
{
    /// Starts the writer thread on the database at `path` (already
    /// [`migrate`]d). It ends when every clone of the returned writer is gone
    /// and the queue is empty.
    pub fn spawn<F>(
        name: &'static str,
        path: &Path,
        max_group: usize,
        mut apply: F,
    ) -> anyhow::Result<Self>
    where
        F: FnMut(&rusqlite::Connection, J) -> Result<O, E> + Send + 'static,
    {
        let mut conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.set_prepared_statement_cache_capacity(32);
        let (checkpoints, stop) = std::sync::mpsc::channel();
        spawn_checkpointer(name, path, stop)?;
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Queued<J, O, E>>(4 * max_group);
        std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < max_group {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    commit_group(name, &mut conn, group, &mut apply);
                }
            })?;
        Ok(Self {
            jobs,
            name,
            _checkpoints: std::sync::Arc::new(checkpoints),
        })
    }

    /// Queues `job` and waits until its group has committed.
    pub async fn write(&self, job: J) -> Result<O, E> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let stopped = || E::from(GroupError::Stopped(self.name));
        self.jobs.send((job, reply)).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    pub fn is_stopped(&self) -> bool {
        self.jobs.is_closed()
    }
}

fn commit_group<J, O, E, F>(
    name: &'static str,
    conn: &mut rusqlite::Connection,
    group: Vec<Queued<J, O, E>>,
    apply: &mut F,
) where
    E: From<GroupError> + From<rusqlite::Error>,
    F: FnMut(&rusqlite::Connection, J) -> Result<O, E>,
{
    let mut answers = Vec::with_capacity(group.len());
    let committed = (|| -> rusqlite::Result<()> {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (job, reply) in group {
            let savepoint = tx.savepoint()?;
            let outcome = apply(&savepoint, job);
            if outcome.is_ok() {
                savepoint.commit()?;
            } // else dropping it rolls this write back
            answers.push((reply, outcome));
        }
        tx.commit()
    })();
    match committed {
        Ok(()) => {
            for (reply, outcome) in answers {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, db = name, writes = answers.len(), "group commit failed");
            for (reply, _) in answers {
                let _ = reply.send(Err(E::from(GroupError::Commit(name, e.to_string()))));
            }
        }
    }
}

/// A pool of read-only `rusqlite` connections to one database, each with a
/// prepared-statement cache.
#[derive(Clone)]
pub struct ReadPool {
    pool: r2d2::Pool<r2d2_sqlite::SqliteConnectionManager>,
}

impl ReadPool {
    pub async fn open(path: &Path, size: u32) -> anyhow::Result<Self> {
        use rusqlite::OpenFlags;
        let manager = r2d2_sqlite::SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| {
                c.set_prepared_statement_cache_capacity(32);
                Ok(())
            });
        let pool = tokio::task::spawn_blocking(move || {
            r2d2::Pool::builder()
                .max_size(size)
                .test_on_check_out(false)
                .build(manager)
        })
        .await??;
        Ok(Self { pool })
    }

    /// Runs `query` on a read connection: right here when one is free (an
    /// indexed read from SQLite's page cache takes tens of microseconds,
    /// less than handing it to a blocking thread and back), otherwise on a
    /// blocking thread that waits for one.
    pub async fn read<T, F>(&self, query: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if let Some(conn) = self.pool.try_get() {
            return Ok(query(&conn)?);
        }
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(|e| ReadError::Pool(e.to_string()))?;
            Ok(query(&conn)?)
        })
        .await
        .map_err(|e| ReadError::Pool(e.to_string()))?
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("no read connection: {0}")]
    Pool(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Group(#[from] GroupError),
        #[error(transparent)]
        Sqlite(#[from] rusqlite::Error),
        #[error("refused {0}")]
        Refused(i64),
    }

    static MIGRATOR: Migrator = sqlx::migrate!("./tests/migrations");

    /// Writes `n` rows; odd ones are refused after their insert ran.
    fn apply(conn: &rusqlite::Connection, n: i64) -> Result<i64, TestError> {
        conn.execute("INSERT INTO rows (n) VALUES (?1)", [n])?;
        if n % 2 == 1 {
            return Err(TestError::Refused(n));
        }
        Ok(n)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_a_refused_one_rolls_back_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        migrate(&path, &MIGRATOR).await.expect("migrate");
        let writer =
            GroupWriter::<i64, i64, TestError>::spawn("t.db", &path, 16, apply).expect("writer");
        let outcomes = futures::future::join_all((0..200).map(|n| {
            let writer = writer.clone();
            tokio::spawn(async move { (n, writer.write(n).await) })
        }))
        .await;
        for done in outcomes {
            let (n, outcome) = done.expect("task");
            match outcome {
                Ok(got) => assert_eq!((n % 2, got), (0, n)),
                Err(TestError::Refused(got)) => assert_eq!((n % 2, got), (1, n)),
                Err(e) => panic!("write {n}: {e}"),
            }
        }
        // Every answer came after its commit: a fresh reader sees exactly
        // the accepted rows.
        let read = ReadPool::open(&path, 2).await.expect("pool");
        let rows: Vec<i64> = read
            .read(|c| {
                c.prepare("SELECT n FROM rows ORDER BY n")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .expect("read");
        assert_eq!(rows, (0..200).filter(|n| n % 2 == 0).collect::<Vec<i64>>());
        drop(writer);
    }
}
