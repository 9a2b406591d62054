//! The embedded stores' SQLite layer, through `rusqlite`: one file in WAL
//! mode, migrated by [`migrate`], written through a single connection
//! ([`GroupWriter`]: writes are serialised without busy errors, and an
//! autoincrement column follows commit order), read through a pool of its
//! own ([`ReadPool`]; [`ReadPool::scan`] for reads of many rows).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Creates the data directory `dir` (and its parents) readable by this
/// user only (0700), or narrows an existing one to 0700 when others may
/// read it: it holds password hashes, signing keys and every message. A
/// directory this process may not change (a mounted volume owned by
/// another user) is left as it is, with a warning.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %e, "the data directory stays readable by others");
        }
    }
    Ok(())
}

/// One schema change: `sql` brings a database from `version - 1` to
/// `version` (versions count from 1, as the files `0001_….sql` do).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub sql: &'static str,
}

/// Creates (with its directory) the database at `path` if needed, switches
/// it to WAL mode and applies the `migrations` it lacks, each in its own
/// transaction, recording the version in `PRAGMA user_version`. A database
/// migrated by the sqlx migrator of earlier versions (its
/// `_sqlx_migrations` table) counts as at that table's newest version. A
/// database newer than `migrations` is refused.
pub async fn migrate(path: &Path, migrations: &'static [Migration]) -> anyhow::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        migrate_now(&path, migrations).with_context(|| format!("migrating {}", path.display()))
    })
    .await?
}

fn migrate_now(path: &Path, migrations: &[Migration]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let new = !path.exists();
    let mut conn = rusqlite::Connection::open(path)?;
    if new {
        // Before WAL mode: SQLite gives the -wal and -shm files the
        // database file's permissions.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("narrowing {}", path.display()))?;
    }
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "journal mode {mode}, not WAL"
    );
    let mut current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current == 0 {
        current = sqlx_version(&conn)?;
        if current > 0 {
            conn.pragma_update(None, "user_version", current)?;
        }
    }
    let newest = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    anyhow::ensure!(
        current <= newest,
        "the database is at schema version {current}, newer than this build's {newest}"
    );
    for m in migrations.iter().filter(|m| m.version > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(m.sql)
            .with_context(|| format!("migration {}", m.version))?;
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
    }
    Ok(())
}

/// The newest version sqlx's migrator applied, or 0.
fn sqlx_version(conn: &rusqlite::Connection) -> rusqlite::Result<u32> {
    let migrated: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
         AND name = '_sqlx_migrations')",
        [],
        |r| r.get(0),
    )?;
    if !migrated {
        return Ok(0);
    }
    let version: Option<u32> = conn.query_row(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
        [],
        |r| r.get(0),
    )?;
    Ok(version.unwrap_or(0))
}

/// Why a write through a [`GroupWriter`] did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    #[error("the {0} writer has stopped")]
    Stopped(&'static str),
    #[error("the {0} group commit failed: {1}")]
    Commit(&'static str, String),
}

/// Answers one write once its group's commit is known.
type Reply = Box<dyn FnOnce(Result<(), GroupError>) + Send>;
/// One queued write: runs on the writer's connection (inside its own
/// savepoint) and says whether it succeeded, with the reply to send once
/// the group's commit is known.
type Job = Box<dyn FnOnce(&rusqlite::Connection) -> (bool, Reply) + Send>;

/// One thread that owns a database's only write connection and commits
/// queued writes in groups: it takes every write waiting at that moment (up
/// to `max_group`), applies each inside a savepoint of one transaction, and
/// answers each only after that transaction commits. A write that fails is
/// rolled back alone and gets its error; if the commit fails, every write
/// of the group gets [`GroupError::Commit`] and none of it is stored.
/// Concurrent writers so share one commit instead of queueing for one each.
/// Each write is a typed closure ([`GroupWriter::write`]) with its own
/// result type.
///
/// The writer never checkpoints the WAL itself (a checkpoint syncs the file
/// and would hold up every write queued behind it): a thread of its own does
/// a passive checkpoint every [`CHECKPOINT_EVERY`], alongside the writes.
/// Passive checkpoints never start the WAL over while writes keep coming, so
/// when the WAL file passes its [`WalLimit`] that
/// thread runs a truncating one: it holds writes back while readers of the
/// old WAL finish (at most [`TRUNCATE_WAIT`]), then empties the file.
#[derive(Clone)]
pub struct GroupWriter {
    jobs: tokio::sync::mpsc::Sender<Job>,
    name: &'static str,
    /// Dropped with the last clone, which stops the checkpointer.
    _checkpoints: std::sync::Arc<std::sync::mpsc::Sender<()>>,
}

/// How often the WAL is checkpointed, off the write path.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Size of the WAL file past which it is checkpointed and emptied, unless
/// [`WalLimit`] says otherwise.
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// How large an embedded database's write-ahead log may grow: every binary
/// with an embedded SQLite database has this flag.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WalLimit {
    /// Bytes past which an embedded SQLite database's WAL file is
    /// checkpointed and emptied (it can pass this by what is written in
    /// half a second, and while readers of the old WAL finish).
    #[arg(long = "wal-max-bytes", env = "WAL_MAX_BYTES", default_value_t = WAL_LIMIT_BYTES,
          value_parser = clap::value_parser!(u64).range(64 * 1024..))]
    pub bytes: u64,
}

impl Default for WalLimit {
    fn default() -> Self {
        Self {
            bytes: WAL_LIMIT_BYTES,
        }
    }
}

/// Longest a truncating checkpoint waits for readers (and holds writes
/// back); if they are not done by then, it is tried again a tick later.
pub const TRUNCATE_WAIT: Duration = Duration::from_secs(2);

/// Checkpoints `path`'s WAL every [`CHECKPOINT_EVERY`] until `stop`'s
/// sender is gone, truncating it when it is larger than `wal_limit`.
fn spawn_checkpointer(
    name: &'static str,
    path: &Path,
    wal_limit: u64,
    stop: std::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(TRUNCATE_WAIT)?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    std::thread::Builder::new()
        .name(format!("{name}-ckpt"))
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(CHECKPOINT_EVERY)
            {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                let mode = if size > wal_limit {
                    "TRUNCATE"
                } else {
                    "PASSIVE"
                };
                // (busy, frames in the WAL, frames checkpointed)
                let done = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    r.get::<_, i64>(0)
                });
                match done {
                    Ok(busy) if busy != 0 && mode == "TRUNCATE" => {
                        tracing::warn!(
                            db = name,
                            wal_bytes = size,
                            "WAL over its limit; readers kept it from being emptied, trying again"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, db = name, "WAL checkpoint failed"),
                }
            }
        })?;
    Ok(())
}

impl GroupWriter {
    /// Starts the writer thread on the database at `path` (already
    /// [`migrate`]d). It ends when every clone of the returned writer is gone
    /// and the queue is empty.
    pub fn spawn(
        name: &'static str,
        path: &Path,
        max_group: usize,
        wal: WalLimit,
    ) -> anyhow::Result<Self> {
        let wal_limit = wal.bytes;
        let mut conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the WAL starts over on its own, it is cut back to this size.
        conn.pragma_update(None, "journal_size_limit", wal_limit)?;
        // A truncating checkpoint holds writes back for up to TRUNCATE_WAIT.
        conn.busy_timeout(TRUNCATE_WAIT + Duration::from_secs(3))?;
        conn.set_prepared_statement_cache_capacity(32);
        let (checkpoints, stop) = std::sync::mpsc::channel();
        spawn_checkpointer(name, path, wal_limit, stop)?;
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(4 * max_group);
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
                    commit_group(name, &mut conn, group);
                }
            })?;
        Ok(Self {
            jobs,
            name,
            _checkpoints: std::sync::Arc::new(checkpoints),
        })
    }

    /// Queues `write` and waits until its group has committed: its result,
    /// or why the group did not commit.
    pub async fn write<T, E, F>(&self, write: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<GroupError> + Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    {
        let (reply, outcome) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let result = write(conn);
            let ok = result.is_ok();
            let answer: Reply = Box::new(move |commit| {
                let _ = reply.send(commit.map_err(E::from).and(result));
            });
            (ok, answer)
        });
        let stopped = || E::from(GroupError::Stopped(self.name));
        self.jobs.send(job).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    pub fn is_stopped(&self) -> bool {
        self.jobs.is_closed()
    }
}

fn commit_group(name: &'static str, conn: &mut rusqlite::Connection, group: Vec<Job>) {
    let mut replies = Vec::with_capacity(group.len());
    let committed = (|| -> rusqlite::Result<()> {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in group {
            let savepoint = tx.savepoint()?;
            let (ok, reply) = job(&savepoint);
            if ok {
                savepoint.commit()?;
            } // else dropping it rolls this write back
            replies.push(reply);
        }
        tx.commit()
    })();
    if let Err(e) = &committed {
        tracing::error!(error = %e, db = name, writes = replies.len(), "group commit failed");
    }
    let commit = committed.map_err(|e| GroupError::Commit(name, e.to_string()));
    for reply in replies {
        reply(commit.clone());
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

    /// Runs `query` on a blocking thread: for scans, whose rows can be
    /// many (a read that may take milliseconds must not hold up the async
    /// runtime's threads).
    pub async fn scan<T, F>(&self, query: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(|e| ReadError::Pool(e.to_string()))?;
            Ok(query(&conn)?)
        })
        .await
        .map_err(|e| ReadError::Pool(e.to_string()))?
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
        self.scan(query).await
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

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    /// The data directory and the database files are this user's alone,
    /// the WAL included; a directory others could read is narrowed.
    #[tokio::test]
    async fn data_files_are_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data").join("nested");
        let path = dir.join("x.db");
        migrate(&path, MIGRATIONS).await.expect("migrate");
        assert_eq!(mode(&dir), 0o700);
        let writer = GroupWriter::spawn("x.db", &path, 8, WalLimit::default()).expect("writer");
        writer
            .write(|c| -> Result<(), TestError> {
                c.execute("INSERT INTO rows (n) VALUES (1)", [])?;
                Ok(())
            })
            .await
            .expect("write");
        for file in ["x.db", "x.db-wal", "x.db-shm"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        use std::os::unix::fs::PermissionsExt;
        let open = root.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&open).expect("private");
        assert_eq!(mode(&open), 0o700);
    }

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Group(#[from] GroupError),
        #[error(transparent)]
        Sqlite(#[from] rusqlite::Error),
        #[error("refused {0}")]
        Refused(i64),
    }

    const MIGRATIONS: &[Migration] = &[Migration {
        version: 1,
        sql: "CREATE TABLE rows (n INTEGER PRIMARY KEY NOT NULL);",
    }];

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
        migrate(&path, MIGRATIONS).await.expect("migrate");
        let writer = GroupWriter::spawn("t.db", &path, 16, WalLimit::default()).expect("writer");
        let outcomes = futures::future::join_all((0..200).map(|n| {
            let writer = writer.clone();
            tokio::spawn(async move { (n, writer.write(move |c| apply(c, n)).await) })
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

    const TWO: &[Migration] = &[
        Migration {
            version: 1,
            sql: "CREATE TABLE a (x INTEGER);",
        },
        Migration {
            version: 2,
            sql: "CREATE TABLE b (y INTEGER); INSERT INTO a VALUES (1);",
        },
    ];

    fn version(path: &Path) -> u32 {
        rusqlite::Connection::open(path)
            .expect("open")
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version")
    }

    #[tokio::test]
    async fn migrations_apply_once_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/m.db");
        migrate(&path, &TWO[..1]).await.expect("first");
        assert_eq!(version(&path), 1);
        migrate(&path, TWO).await.expect("second");
        migrate(&path, TWO).await.expect("again: nothing to do");
        assert_eq!(version(&path), 2);
        let rows: i64 = rusqlite::Connection::open(&path)
            .expect("open")
            .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 1, "migration 2 ran exactly once");
        let err = migrate(&path, &TWO[..1]).await.expect_err("newer database");
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }

    #[tokio::test]
    async fn a_database_sqlx_migrated_continues_from_its_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        rusqlite::Connection::open(&path)
            .expect("open")
            .execute_batch(
                "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT, \
                 installed_on TIMESTAMP, success BOOLEAN NOT NULL, checksum BLOB, \
                 execution_time BIGINT);
                 INSERT INTO _sqlx_migrations (version, description, success) VALUES (1, 'a', 1);
                 CREATE TABLE a (x INTEGER);",
            )
            .expect("an sqlx-migrated database");
        migrate(&path, &TWO[..1]).await.expect("nothing to apply");
        assert_eq!(version(&path), 1, "sqlx's version recorded");
        migrate(&path, TWO).await.expect("continues at 2");
        assert_eq!(version(&path), 2);
    }

    const BLOBS: &[Migration] = &[Migration {
        version: 1,
        sql: "CREATE TABLE blobs (n INTEGER PRIMARY KEY NOT NULL, b BLOB NOT NULL);",
    }];

    /// Under a steady write load with readers always in the middle of a
    /// read, passive checkpoints alone never start the WAL over: it grows
    /// with everything written. The truncating checkpoint keeps it near its
    /// limit, and it ends at most that large.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_near_its_limit_while_readers_and_writers_run() {
        const LIMIT: u64 = 1024 * 1024;
        const WRITTEN: u64 = 16 * 1024 * 1024;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.db");
        let wal = dir.path().join("w.db-wal");
        migrate(&path, BLOBS).await.expect("migrate");
        let writer =
            GroupWriter::spawn("w.db", &path, 16, WalLimit { bytes: LIMIT }).expect("writer");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Two readers whose read transactions overlap: one is always open.
        let readers: Vec<_> = (0..2u64)
            .map(|i| {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(10 * i));
                    let conn = rusqlite::Connection::open(&path).expect("reader");
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        conn.execute_batch("BEGIN").expect("begin");
                        let _: i64 = conn
                            .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
                            .expect("read");
                        std::thread::sleep(Duration::from_millis(20));
                        conn.execute_batch("COMMIT").expect("commit");
                    }
                })
            })
            .collect();
        let (mut largest, chunk) = (0, 64 * 1024);
        for n in 0..(WRITTEN / chunk) {
            writer
                .write(move |c| -> Result<(), TestError> {
                    c.execute(
                        "INSERT INTO blobs (n, b) VALUES (?1, zeroblob(?2))",
                        rusqlite::params![n, chunk],
                    )?;
                    Ok(())
                })
                .await
                .expect("write");
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(10)).await; // about 6 MB/s
        }
        tokio::time::sleep(CHECKPOINT_EVERY * 3).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("reader thread");
        }
        let last = std::fs::metadata(&wal).map_or(0, |m| m.len());
        // At about 6 MB/s, a tick of CHECKPOINT_EVERY adds about 3 MB.
        assert!(
            largest < LIMIT + 6 * 1024 * 1024,
            "the WAL reached {largest} bytes for {WRITTEN} written"
        );
        assert!(last <= LIMIT, "the WAL ended at {last} bytes");
    }
}
