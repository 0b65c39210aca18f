//! The SQLite side of the crate: opening our connections, read transactions, checkpoints and
//! short lock waits, and the checks a restored database must pass. The db thread, restore and
//! validation all reach SQLite through here, so "how we talk to SQLite" has one home.
//!
//! A thin edge over rusqlite: it decides nothing (when to checkpoint is `db::policy`'s
//! business), holds no state of its own, and never touches a WAL file except through SQLite.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

use crate::backoff::{Backoff, Growth};
use crate::logging;

/// Checkpoint modes we run, in increasing strength.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copy what no reader needs; never waits, never restarts the WAL.
    Passive,
    /// Copy everything and let the next writer restart the WAL from its start.
    Restart,
    /// As `Restart`, and truncate the WAL file.
    Truncate,
}

impl CheckpointMode {
    /// The mode as `PRAGMA wal_checkpoint` and the metrics' `mode` label spell it.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PASSIVE",
            CheckpointMode::Restart => "RESTART",
            CheckpointMode::Truncate => "TRUNCATE",
        }
    }
}

/// How often a checkpoint under our write lock retries SQLite's checkpoint lock
/// (`passive_checkpoint_retrying`).
const CHECKPOINT_LOCK_TRIES: u32 = 100;

/// The pause between two tries for a lock an application holds only for moments (`briefly`,
/// `passive_checkpoint_retrying`): such a lock is held for microseconds at a time.
pub(crate) const LOCK_RETRY_PAUSE: Duration = Duration::from_micros(50);

fn lock_spin() -> Backoff {
    Backoff::new(LOCK_RETRY_PAUSE, LOCK_RETRY_PAUSE, Growth::Fixed)
}

/// A connection with SQLite's per-connection preallocations turned off, the WAL kept when it
/// closes, and `busy_timeout`.
fn open_slim(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .with_context(|| format!("{}: cannot open database", path.display()))?;
    // This connection runs a handful of tiny statements and checkpoints (which bypass the page
    // cache), so SQLite's per-connection preallocations would be waste: the lookaside arena
    // and the page cache's first bulk allocation (about 20 pages) were most of a db's
    // resident memory in a daemon with many databases. Both must be set before the first
    // statement. Memory-only settings: nothing about the db changes.
    // SAFETY: the handle is valid while `conn` lives; no statement has run, so no lookaside
    // memory is in use, which SQLITE_DBCONFIG_LOOKASIDE requires.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        logging::warn(
            "cannot turn off sqlite lookaside memory",
            &[("db", &path.display()), ("code", &rc)],
        );
    }
    conn.execute_batch("PRAGMA cache_size = -64")
        .with_context(|| format!("{}: cannot set cache_size", path.display()))?;
    conn.busy_timeout(busy_timeout)?;
    // The -wal must outlive our connection so a restart can resume from it.
    let mut persist: std::ffi::c_int = 1;
    conn.file_control(
        Some(rusqlite::MAIN_DB),
        rusqlite::FileControl::PersistWal(&mut persist),
    )
    .context("cannot set SQLITE_FCNTL_PERSIST_WAL")?;
    Ok(conn)
}

/// The pin's connection (see `Db::checkpoint`): it only ever holds a read transaction and runs
/// the PASSIVE checkpoint of `Db::restart_wal`; the schema is our main connection's business.
pub(crate) fn open_pin_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = open_slim(path, busy_timeout)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
        .with_context(|| format!("{}: cannot prepare the pin connection", path.display()))?;
    Ok(conn)
}

/// Runs `PRAGMA wal_checkpoint(mode)` on `conn`: (busy, frames in the WAL, frames checkpointed).
pub(crate) fn checkpoint(conn: &Connection, mode: CheckpointMode) -> Result<(bool, i64, i64)> {
    let (busy, log, checkpointed) = conn
        .query_row(
            &format!("PRAGMA wal_checkpoint({})", mode.name()),
            [],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )
        .with_context(|| format!("checkpoint {} failed", mode.name()))?;
    Ok((busy != 0, log, checkpointed))
}

/// A PASSIVE `checkpoint`, asked again up to CHECKPOINT_LOCK_TRIES times while it
/// is busy with no counts: another connection holds SQLite's checkpoint lock, which SQLite
/// never waits for (not even with a busy handler). For use under our write lock only: an
/// application's auto-checkpoint then cannot be started again by a commit and soon lets go;
/// elsewhere the next tick tries again.
pub(crate) fn passive_checkpoint_retrying(conn: &Connection) -> Result<(bool, i64, i64)> {
    let mut spin = lock_spin();
    loop {
        let counts = checkpoint(conn, CheckpointMode::Passive)?;
        if !(counts.0 && counts.1 < 0) || spin.failures() >= CHECKPOINT_LOCK_TRIES {
            return Ok(counts);
        }
        std::thread::sleep(spin.next_wait());
    }
}

/// Begins a read transaction that holds SQLite's WAL read lock until `end_read`.
pub(crate) fn begin_read(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN")?;
    if let Err(e) = conn.query_row("SELECT COUNT(1) FROM _litestream_seq", [], |_| Ok(())) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

/// Ends whatever transaction `conn` has open (none is fine).
pub(crate) fn end_read(conn: &Connection) -> rusqlite::Result<()> {
    if conn.is_autocommit() {
        return Ok(());
    }
    conn.execute_batch("ROLLBACK")
}

/// Runs `f` with a busy handler that retries for at most 100 ms: while we take the write lock,
/// application writers wait on us, so we wait for theirs no longer than that. It retries every
/// 50 µs, not SQLite's default 1, 2, 5, 10… ms: a back-to-back writer holds the write lock
/// nearly all the time and commits between our read snapshot and our write-lock attempt, so
/// the default's eight tries in 100 ms nearly always all failed and a checkpoint that should
/// restart the WAL gave up. `restore` is the busy timeout to put back.
pub(crate) fn briefly<T>(
    conn: &mut Connection,
    restore: Duration,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<rusqlite::Result<T>> {
    let deadline = Instant::now() + Duration::from_millis(100);
    let mut spin = lock_spin();
    conn.busy_handler(Some(move |_tries: i32| {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(spin.next_wait());
        true
    }))?;
    let r = f(conn);
    conn.busy_timeout(restore)?;
    Ok(r)
}

/// SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock we asked for.
pub(crate) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The db thread's connection: WAL mode, no auto-checkpoint of its own, and our two tables.
pub(crate) fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = open_slim(path, busy_timeout)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = wal", [], |r| r.get(0))
        .with_context(|| format!("{}: cannot enable WAL mode", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{}: journal_mode is {mode}, not wal (is another process holding it in rollback mode?)",
            path.display()
        );
    }
    // synchronous=NORMAL: our only commits are the `_litestream_seq` writes that restart the
    // WAL, made while holding the write lock; under FULL each also waited for an fsync of the
    // WAL with the application blocked behind us. Checkpoints still fsync the WAL and the db,
    // and a restarted WAL's header is still synced before its first frame (SQLite does both
    // in NORMAL); losing our row to a power cut costs nothing.
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
         CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER);",
    )
    .with_context(|| format!("{}: cannot prepare database", path.display()))?;
    Ok(conn)
}

/// Bumps our `_litestream_seq` row: a one-row write that gives an empty WAL a header, or that
/// restarts a fully checkpointed one.
pub(crate) fn bump_seq(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1",
        [],
    )
}

/// A connection to a database that restore (or validation) is building: nobody else may touch
/// it, so no waiting on locks, and a page cache big enough for the integrity check.
pub(crate) fn open_private(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("{}: cannot open restored database", db.display()))?;
    conn.busy_timeout(Duration::ZERO)?;
    conn.execute_batch("PRAGMA cache_size = -2048;")?;
    Ok(conn)
}

/// `PRAGMA integrity_check`'s rows: `["ok"]` for a sound database.
pub(crate) fn integrity_problems(conn: &Connection, db: &Path) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let problems = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .with_context(|| format!("{}: integrity check failed to run", db.display()))?
        .collect::<rusqlite::Result<_>>()
        .with_context(|| format!("{}: integrity check failed to run", db.display()))?;
    Ok(problems)
}
