//! The db thread: one per database. It holds SQLite's read lock so nobody restarts the WAL
//! behind our back, copies committed frames from the `-wal` into the shadow WAL under
//! `.<db>-litestream/`, decides checkpoints, starts generations, and publishes the shadow
//! position to the replica threads.
//!
//! It owns the SQLite connection and the shadow WAL files (the only writer of both). It never
//! talks to a store and never blocks on a replica: replicas are told about new data with a
//! non-blocking send and read the bytes from the shadow WAL themselves.
//!
//! Read this file top to bottom for the tick: `Db::run` → `tick` → `init` (resume or start a
//! generation) → `sync` (does the shadow still follow the WAL? copy) → a checkpoint when the
//! policy says so → `clean_up_shadow`. The parts, one job each:
//! - `policy`: when to checkpoint and what follows one (pure);
//! - `verdict`: whether the shadow follows the WAL, and why a new generation starts (pure);
//! - `shadow`: the shadow WAL files and the copy from the real WAL;
//! - `checkpoint`: our read locks, the pin, and the checkpoint protocol that keeps frames safe.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;

mod checkpoint;
pub mod identity;
mod pace;
mod policy;
mod seal;
mod shadow;
mod verdict;

use pace::Pace;
use policy::CheckpointPolicy;
use shadow::{
    highest_shadow_index, remove_indexes_below, remove_other_generations, remove_tmp_files,
    wal_facts, wal_frames, Shadow,
};
pub use shadow::{shadow_wal_dir, shadow_wal_path};
use verdict::{Follow, Reason, Verdict, When};

use crate::config::DbConfig;
use crate::files::{self, wal_path, write_atomic};
use crate::logging;
use crate::metrics::DbMetrics;
use crate::position::{self, Position, MAX_INDEX};
use crate::sqlite::open_connection;
use crate::sync::lock;
use crate::wal::{WalHeader, WAL_HEADER_SIZE};

/// What the db thread shares with its replica threads.
pub struct DbShared {
    /// The database file (absolute).
    pub path: PathBuf,
    /// `.<db>-litestream/` or the configured `meta-path`: generation file, lock, shadow WAL.
    pub meta_dir: PathBuf,
    /// The shadow WAL's committed end: everything before it is durable in the shadow.
    position: Mutex<Option<Position>>,
    /// Snapshots hold it for reading; our checkpoints need it for writing (and skip a tick
    /// rather than wait), so a snapshot never races a checkpoint of ours.
    pub checkpoint_lock: RwLock<()>,
    /// Each replica's uploaded position, so shadow files it still needs are kept.
    replica_positions: Mutex<Vec<Option<Position>>>,
    /// Set by a replica that found its store ahead of the shadow WAL (an inconsistency only a
    /// fresh generation resolves).
    new_generation_requested: AtomicBool,
    /// Mode of the db file, given to every file we create next to it.
    pub file_mode: AtomicU32,
    /// The one descriptor through which we read the db file (snapshots). POSIX drops every
    /// fcntl lock a process holds on a file when *any* of its descriptors for that file is
    /// closed, which would silently release our SQLite connection's SHARED lock and let the
    /// application delete the WAL under it (corrupting the db). So the file is opened once,
    /// before the connection, and only closed after it (this struct outlives the db thread).
    db_file: Mutex<Option<Arc<File>>>,
    /// Counters and gauges of this db and its replicas (atomics; never blocks).
    pub metrics: Arc<DbMetrics>,
}

impl DbShared {
    /// The shared state of one db with `replicas` replica threads; nothing published yet.
    pub fn new(path: PathBuf, meta_dir: PathBuf, replicas: usize, metrics: Arc<DbMetrics>) -> Self {
        DbShared {
            path,
            meta_dir,
            position: Mutex::new(None),
            checkpoint_lock: RwLock::new(()),
            replica_positions: Mutex::new(vec![None; replicas]),
            new_generation_requested: AtomicBool::new(false),
            file_mode: AtomicU32::new(0o600),
            db_file: Mutex::new(None),
            metrics,
        }
    }

    /// The shadow WAL's committed end, once the db is initialised.
    pub fn position(&self) -> Option<Position> {
        lock(&self.position).clone()
    }

    fn set_position(&self, pos: Option<Position>) {
        *lock(&self.position) = pos;
    }

    /// Publishes `pos` as the db thread would, for other modules' unit tests (a replica's).
    #[cfg(test)]
    pub(crate) fn publish_for_test(&self, pos: Position) {
        self.set_position(Some(pos));
    }

    /// Records what replica number `replica` has uploaded, so the shadow files it still needs
    /// are kept.
    pub fn set_replica_position(&self, replica: usize, pos: Option<Position>) {
        if let Some(slot) = lock(&self.replica_positions).get_mut(replica) {
            *slot = pos;
        }
    }

    /// Asks the db thread for a new generation on its next tick (a replica found its store
    /// ahead of the shadow WAL).
    pub fn request_new_generation(&self) {
        self.new_generation_requested.store(true, Ordering::SeqCst);
    }

    /// The shadow WAL file of `index` in `generation`.
    pub fn shadow_wal_path(&self, generation: &str, index: u32) -> PathBuf {
        shadow_wal_path(&self.meta_dir, generation, index)
    }

    /// The db file's mode, which every file we create for it gets.
    pub fn file_mode(&self) -> u32 {
        self.file_mode.load(Ordering::Relaxed)
    }

    /// The db file, for positional reads only (see `db_file`); never close a clone early.
    pub fn db_file(&self) -> Option<Arc<File>> {
        lock(&self.db_file).clone()
    }

    /// Opens the db file unless the one open is still the file at the path; returns its
    /// identity. Called only while no connection is open (closing the old descriptor then
    /// drops no lock of ours).
    fn open_db_file(&self) -> Result<FileId> {
        let mut slot = lock(&self.db_file);
        if let Some(f) = slot.as_ref() {
            let open = FileId::of_file(f)?;
            if FileId::of_path(&self.path)? == Some(open) {
                return Ok(open);
            }
        }
        let f = File::open(&self.path)
            .with_context(|| format!("{}: cannot open database", self.path.display()))?;
        let id = FileId::of_file(&f)?;
        *slot = Some(Arc::new(f));
        Ok(id)
    }

    /// Forgets the db file (see `Db::let_go_of_db_file`).
    fn close_db_file(&self) {
        *lock(&self.db_file) = None;
    }
}

/// Which file a descriptor or path is: device and inode. While we hold a descriptor of a file
/// its inode number cannot be reused, so a different identity at the path is another file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of_file(f: &File) -> Result<FileId> {
        let m = f.metadata().context("cannot stat the open database file")?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// `None` when nothing is at `path`.
    fn of_path(path: &Path) -> Result<Option<FileId>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(FileId {
                dev: m.dev(),
                ino: m.ino(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: cannot stat database", path.display())),
        }
    }
}

pub use crate::config::default_meta_dir;

/// A message from the db thread to a replica thread.
#[derive(Clone, Debug)]
pub enum Notice {
    /// The shadow WAL now ends at this position.
    Synced(Position),
}

/// The db thread's state.
pub struct Db {
    cfg: DbConfig,
    shared: Arc<DbShared>,
    replicas: Vec<Sender<Notice>>,
    conn: Option<Connection>,
    in_read_tx: bool,
    /// True when, since the current read transaction began, a copy ran and the WAL still had
    /// the shadow's header after it: a later restart by another writer cannot then have dropped
    /// uncopied frames (see `after_read_tx_begun`).
    clean_read_tx: bool,
    /// The longest the WAL file was seen since the shadow's current index began: a file shorter
    /// than that was truncated, maybe over frames not copied yet (see `old_life_proof`).
    wal_len_max: u64,
    shadow: Option<Shadow>,
    /// When to checkpoint, and what follows one.
    policy: CheckpointPolicy,
    waiting_logged: bool,
    /// `flock` on `<meta dir>/lock`, held for as long as this process replicates the db.
    meta_lock: Option<File>,
    /// The WAL file as the last successful full tick found it before reading it.
    wal_seen: Option<WalStat>,
    /// The copy buffer while frames keep coming (see `Shadow::copy_from`).
    copy_buffer: Vec<u8>,
    /// The generation and first kept index `clean_up_shadow` last acted on.
    cleaned_for: Option<(String, u32)>,
    /// The db file our connection and `DbShared::db_file` have open.
    db_id: Option<FileId>,
    /// Why the next `init` must start a new generation whatever the shadow says (the db file
    /// at the path is not the one the shadow followed).
    forced_reason: Option<Reason>,
    /// The health problem we set (`DbMetrics::set_db_problem`) is to be cleared once every
    /// replica has a snapshot of the current generation.
    problem_set: bool,
}

/// What a `stat` of the WAL file says about its contents: which file, how long, when changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct WalStat {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl WalStat {
    fn of(path: &Path) -> Option<WalStat> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        Some(WalStat {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl Db {
    /// The db thread's state before its first tick; `replicas` are the wake-up channels of its
    /// replica threads.
    pub fn new(cfg: DbConfig, shared: Arc<DbShared>, replicas: Vec<Sender<Notice>>) -> Self {
        Db {
            policy: CheckpointPolicy::new(Instant::now()),
            cfg,
            shared,
            replicas,
            conn: None,
            in_read_tx: false,
            clean_read_tx: false,
            wal_len_max: 0,
            shadow: None,
            waiting_logged: false,
            meta_lock: None,
            wal_seen: None,
            copy_buffer: Vec::new(),
            cleaned_for: None,
            db_id: None,
            forced_reason: None,
            problem_set: false,
        }
    }

    fn db_label(&self) -> String {
        self.shared.path.display().to_string()
    }

    /// The thread body: initialise (retrying), then tick until `stop` says so; a final tick
    /// and a clean close on the way out. `wake` fires when the WAL is written (None: the WAL
    /// cannot be watched, and every tick is a full one).
    pub fn run(mut self, stop: Receiver<()>, wake: Option<Receiver<()>>) {
        let interval = self.cfg.monitor_interval;
        let mut watched = wake.is_some();
        let mut wake = wake.unwrap_or_else(crossbeam_channel::never);
        let mut failed = false;
        // The first tick runs at once: initialisation (and the first snapshot) should not
        // wait a monitor interval after start.
        let mut first = true;
        let mut pace = Pace::default();
        loop {
            let mut woken = true;
            if std::mem::take(&mut first) {
                // Tick now.
            } else if failed {
                // After an error, wait a whole interval: our own recovery writes touch the
                // WAL and would otherwise wake us into a busy loop of retries.
                crossbeam_channel::select! {
                    recv(stop) -> _ => break,
                    default(interval) => {},
                }
                while wake.try_recv().is_ok() {}
            } else {
                crossbeam_channel::select! {
                    recv(stop) -> _ => break,
                    recv(wake) -> msg => if msg.is_err() {
                        // The watcher is gone: poll from now on instead of spinning.
                        wake = crossbeam_channel::never();
                        watched = false;
                    },
                    default(interval) => woken = !watched,
                }
                // Under a commit storm, batch (`pace`): a woken tick follows the last tick
                // that copied by at least a quantum, so the shadow is fsynced at most that
                // often. A commit after a quiet spell still ticks at once.
                let wait = pace.wait(Instant::now());
                if woken && !wait.is_zero() {
                    crossbeam_channel::select! {
                        recv(stop) -> _ => break,
                        default(wait) => {},
                    }
                }
            }
            let started = Instant::now();
            let before = self.shadow_end();
            failed = !self.tick_logged(!woken);
            pace.ticked(started, self.shadow_end() != before);
        }
        if self.tick_logged(false) {
            self.seal();
        }
        self.close();
    }

    /// Where the shadow ends (index, committed size): a tick that moved it copied frames.
    fn shadow_end(&self) -> Option<(u32, u64)> {
        self.shadow.as_ref().map(|s| (s.index, s.size))
    }

    /// Runs one tick, logging its error (never fatal: the next tick retries); `false` when it
    /// failed. `unwoken`: no write woke this tick, so an unchanged WAL needs only a `stat`.
    pub fn tick_logged(&mut self, unwoken: bool) -> bool {
        let started = Instant::now();
        let result = match self.db_file_moved() {
            Err(e) => Err(e),
            // Busy: the old file is let go of on a later tick.
            Ok(Moved::Busy) => Ok(()),
            Ok(Moved::No) if unwoken && self.unchanged_since_last_tick() => self.clean_up_shadow(),
            Ok(Moved::No | Moved::LetGo) => self.tick(),
        };
        self.clear_problem_once_snapshotted();
        self.update_gauges();
        self.shared
            .metrics
            .tick_done(result.is_ok(), started.elapsed());
        if let Err(err) = &result {
            logging::error(
                "sync error",
                &[("db", &self.db_label()), ("error", &format!("{err:#}"))],
            );
            // A broken connection is rebuilt from scratch on the next tick.
            if err
                .chain()
                .any(|e| e.downcast_ref::<rusqlite::Error>().is_some())
                && !self.read_tx_alive()
            {
                self.close();
            }
        }
        result.is_ok()
    }

    /// Sizes for the gauges of SPEC §9 (a missing file counts as 0).
    fn update_gauges(&self) {
        self.shared.metrics.set_sizes(
            files::len_or_zero(&self.shared.path),
            files::len_or_zero(&wal_path(&self.shared.path)),
            self.shadow.as_ref().map(|s| (s.index, s.size)),
        );
    }

    fn read_tx_alive(&self) -> bool {
        match &self.conn {
            Some(conn) => self.in_read_tx && !conn.is_autocommit(),
            None => false,
        }
    }

    /// The polling tick of a watched db, when no write woke it: true if the WAL file is as
    /// the last full tick found it and no checkpoint is due, so there is nothing to copy.
    /// That tick recorded the file's identity, size and change times before it read the WAL,
    /// so a later write shows here, or else (a write within the same timestamp granule that
    /// left the size unchanged) through the watch, whose wake-up makes the next tick full.
    fn unchanged_since_last_tick(&self) -> bool {
        let (Some(seen), Some(shadow)) = (&self.wal_seen, &self.shadow) else {
            return false;
        };
        if self.conn.is_none() || self.shared.new_generation_requested.load(Ordering::SeqCst) {
            return false;
        }
        let Some(now) = WalStat::of(&wal_path(&self.shared.path)) else {
            return false;
        };
        if now != *seen {
            return false;
        }
        let wal_frames =
            now.len.saturating_sub(WAL_HEADER_SIZE as u64) / shadow.header.frame_size() as u64;
        self.policy
            .decide(&self.cfg, wal_frames, shadow.frames(), Instant::now())
            .is_none()
    }

    /// Initialises if needed, then copies new frames, notifies replicas and checkpoints.
    pub fn tick(&mut self) -> Result<()> {
        // Before anything reads the WAL: see `unchanged_since_last_tick`.
        self.wal_seen = None;
        let seen = WalStat::of(&wal_path(&self.shared.path));
        if self.conn.is_none() && !self.init()? {
            return Ok(());
        }
        if self
            .shared
            .new_generation_requested
            .swap(false, Ordering::SeqCst)
        {
            self.new_generation(Reason::ReplicaAhead)?;
        }
        self.sync()?;
        let shadow = self
            .shadow
            .as_ref()
            .ok_or_else(|| anyhow!("no shadow wal after sync"))?;
        let wal_frames = wal_frames(&wal_path(&self.shared.path), shadow.header.frame_size());
        if let Some(mode) =
            self.policy
                .decide(&self.cfg, wal_frames, shadow.frames(), Instant::now())
        {
            self.checkpoint(mode)?;
        }
        self.clean_up_shadow()?;
        self.wal_seen = seen;
        Ok(())
    }

    /// Opens the connection and resumes or starts a generation. `Ok(false)` while the db file
    /// does not exist yet.
    fn init(&mut self) -> Result<bool> {
        let path = self.shared.path.clone();
        if !path.exists() {
            if !self.waiting_logged {
                logging::info(
                    "waiting for database file to be created",
                    &[("db", &self.db_label())],
                );
                self.waiting_logged = true;
            }
            return Ok(false);
        }
        let meta = fs::metadata(&path)
            .with_context(|| format!("{}: cannot stat database", path.display()))?;
        self.shared
            .file_mode
            .store(meta.permissions().mode() & 0o7777, Ordering::Relaxed);

        let meta_dir = self.shared.meta_dir.clone();
        create_dir_like(&meta_dir, &path)?;
        if self.meta_lock.is_none() {
            self.meta_lock = Some(lock_meta_dir(&meta_dir, &path, self.shared.file_mode())?);
        }
        let db_id = self.shared.open_db_file()?;
        let conn = open_connection(&path, self.cfg.busy_timeout)?;
        if FileId::of_path(&path)? != Some(db_id) {
            // Replaced again between the two opens: the connection may be on another file
            // than the one snapshots read. Start over on the next tick.
            bail!(
                "{}: the database file changed while it was being opened; retrying",
                path.display()
            );
        }
        self.conn = Some(conn);
        self.db_id = Some(db_id);
        self.in_read_tx = false;
        self.begin_read_tx()?;

        remove_tmp_files(&meta_dir);

        let resumed = match self.forced_reason.clone() {
            Some(reason) => Err(reason),
            None => self.resume()?,
        };
        match resumed {
            Ok(Resume::Following(shadow)) => {
                logging::info(
                    "resuming generation",
                    &[("db", &self.db_label()), ("position", &shadow.position())],
                );
                self.shadow = Some(shadow);
                self.after_read_tx_begun()?;
            }
            Ok(Resume::AfterCleanStop(shadow, seal)) => {
                if let Some(reason) = self.continue_after_clean_stop(shadow, &seal)? {
                    self.shadow = None;
                    self.new_generation(reason)?;
                }
            }
            Err(reason) => {
                self.shadow = None;
                self.new_generation(reason)?;
                self.forced_reason = None;
            }
        }
        self.publish();
        logging::info("initialized db", &[("path", &self.db_label())]);
        Ok(true)
    }

    /// The generation recorded on disk, if its shadow still follows the real WAL (SPEC §4.1
    /// step 4) or the last stop was sealed at its end (`seal`); else why a new generation is
    /// needed.
    fn resume(&mut self) -> Result<Verdict<Resume>> {
        // Single-use, whatever follows (see `seal`).
        let sealed = seal::take(&self.shared.meta_dir);
        let meta_dir = &self.shared.meta_dir;
        let generation = match fs::read_to_string(meta_dir.join("generation")) {
            Ok(s) if position::is_generation(s.trim()) => s.trim().to_string(),
            Ok(_) => return Ok(Err(Reason::InvalidGenerationFile)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(Reason::NoGeneration)),
            Err(e) => return Err(e).context("cannot read generation file"),
        };
        let Some(index) = highest_shadow_index(&shadow_wal_dir(meta_dir, &generation))? else {
            return Ok(Err(Reason::NoShadowWal));
        };
        let path = shadow_wal_path(meta_dir, &generation, index);
        let shadow = match Shadow::load(path, generation, index)? {
            Ok(s) => s,
            Err(reason) => return Ok(Err(reason)),
        };
        let reason = match self.follow(&shadow, When::Resuming)? {
            Follow::Same => return Ok(Ok(Resume::Following(shadow))),
            Follow::NewGeneration(reason) => reason,
            // `When::Resuming` takes every other WAL life for a mismatch.
            Follow::Restart | Follow::UnseenRestart => Reason::WalHeaderMismatch,
        };
        // Another WAL life than the shadow's (or none): only the seal can say that the db
        // file holds the shadow's end state, so that this WAL's frames are all newer.
        let other_life = matches!(
            reason,
            Reason::WalMissingOrEmpty | Reason::WalHeaderMismatch | Reason::HeaderOnlyMismatched
        );
        Ok(match sealed {
            Some(seal) if other_life && seal.is_at_end_of(&shadow) => {
                Ok(Resume::AfterCleanStop(shadow, seal))
            }
            _ if other_life => Err(Reason::NoCleanStop(Box::new(reason))),
            _ => Err(reason),
        })
    }

    /// Continues `shadow`'s generation in its next index after a sealed stop, once the db
    /// file is proven unchanged since (see `seal`); else why a new generation is needed.
    fn continue_after_clean_stop(
        &mut self,
        shadow: Shadow,
        seal: &seal::Seal,
    ) -> Result<Option<Reason>> {
        self.shadow = Some(shadow);
        // The next index starts from a WAL header: a missing or empty WAL gets one from our
        // tiny write, after which our read lock is held again.
        if self.wal_len() < WAL_HEADER_SIZE as u64 {
            self.write_seq()?;
        }
        // Checked under our read lock and after our write: a checkpoint that changed the db
        // file since the seal (of frames we never saw) shows here, and none can drop a frame
        // from now on.
        if seal::boot_id().as_deref() != Some(seal.boot_id.as_str()) {
            return Ok(Some(Reason::ChangedWhileStopped(
                "the machine restarted since the clean stop, and a crash can keep a write's data on disk without its mtime",
            )));
        }
        let now = seal::DbStamp::of(&self.shared.path)
            .with_context(|| format!("{}: cannot stat", self.shared.path.display()))?;
        if let Some(what) = now.changed_since(&seal.stamp) {
            return Ok(Some(Reason::ChangedWhileStopped(what)));
        }
        let header = shadow::read_header(&wal_path(&self.shared.path))?;
        let header = match header
            .ok_or_else(|| "the wal has no header".to_string())
            .and_then(|h| WalHeader::parse(&h).map_err(|e| e.to_string()))
        {
            Ok(h) => h,
            Err(e) => return Ok(Some(Reason::WalHeaderInvalid(e))),
        };
        // Only a life restore will accept after the shadow's (its `follows`): the next one
        // (salt-1 + 1) or a fresh WAL (checkpoint sequence 0). Another (say two TRUNCATE
        // checkpoints while stopped: two restarts without a frame) holds only newer frames
        // too, but an index restore refuses would cut the generation short there.
        let prev = self.shadow.as_ref().map(|s| s.header);
        if let Some(prev) = prev {
            if header.page_size != prev.page_size {
                return Ok(Some(Reason::WalHeaderInvalid(format!(
                    "its page size {} is not the shadow's {}",
                    header.page_size, prev.page_size
                ))));
            }
            if !(crate::wal::is_next_life(&prev, &header) || header.checkpoint_seq == 0) {
                return Ok(Some(Reason::RestartedTwiceBeforeCopy));
            }
        }
        self.start_next_index()?;
        self.copy_to_shadow()?;
        self.after_read_tx_begun()?;
        let position = self.shadow.as_ref().map(Shadow::position);
        logging::info(
            "resuming generation after a clean stop: the database file is as the last stop left it, and its new wal continues the generation",
            &[
                ("db", &self.db_label()),
                (
                    "position",
                    &position.map(|p| p.to_string()).unwrap_or_default(),
                ),
            ],
        );
        Ok(None)
    }

    /// Copies newly committed frames into the shadow WAL after checking that the WAL is still
    /// the one the shadow follows (SPEC §4.2 steps 1–4).
    fn sync(&mut self) -> Result<()> {
        let wal_len = self.wal_len();
        self.wal_len_max = self.wal_len_max.max(wal_len);
        let shared = self.shared.clone();
        let mut _guard = None;
        if wal_len < WAL_HEADER_SIZE as u64 {
            // An empty WAL has no header to follow: one tiny write gives it one. That write
            // moves our read mark, so no snapshot may be reading the db file meanwhile.
            match shared.checkpoint_lock.try_write() {
                Ok(g) => _guard = Some(g),
                Err(_) => return Ok(()),
            }
            self.write_seq()?;
        }
        let follow = match &self.shadow {
            None => Follow::NewGeneration(Reason::NoGeneration),
            Some(shadow) => {
                let when = When::Running {
                    clean_read_tx: self.clean_read_tx,
                };
                self.follow(shadow, when)?
            }
        };
        match follow {
            Follow::Same => {}
            Follow::Restart => self.finish_and_restart()?,
            Follow::UnseenRestart => self.finish_restart_locked()?,
            Follow::NewGeneration(reason) => self.new_generation(reason)?,
        }
        if self.copy_to_shadow()? {
            self.publish();
        }
        Ok(())
    }

    /// `verdict::follow` on the files as they are now.
    fn follow(&self, shadow: &Shadow, when: When) -> Result<Follow> {
        let wal = wal_path(&self.shared.path);
        let shadow_len = fs::metadata(&shadow.path).ok().map(|m| m.len());
        verdict::follow(
            shadow,
            shadow_len,
            || wal_facts(&wal),
            when,
            || shadow.last_frame_matches(&wal),
        )
    }

    /// The WAL was restarted while our read transaction made that safe: copy what is left of
    /// the old life (frames the new life did not overwrite), then follow the new life as the
    /// next index.
    fn finish_and_restart(&mut self) -> Result<()> {
        self.copy_to_shadow()?;
        self.start_next_index()
    }

    /// Starts shadow index + 1 from the real WAL's current header.
    fn start_next_index(&mut self) -> Result<()> {
        let Some(shadow) = &mut self.shadow else {
            return Err(anyhow!("no shadow wal"));
        };
        if shadow.index + 1 >= MAX_INDEX {
            return self.new_generation(Reason::MaxIndexExceeded);
        }
        shadow.cut_to_size()?;
        let (generation, index) = (shadow.generation.clone(), shadow.index + 1);
        self.shadow = Some(self.create_shadow(&generation, index)?);
        self.wal_len_max = self.wal_len();
        // The old index is complete: replicas may now upload its tail and move on.
        self.publish();
        Ok(())
    }

    /// Creates shadow file `index` holding the real WAL's header.
    fn create_shadow(&self, generation: &str, index: u32) -> Result<Shadow> {
        let wal = wal_path(&self.shared.path);
        let db = &self.shared.path;
        Shadow::create(
            &self.shared.meta_dir,
            &wal,
            generation,
            index,
            self.shared.file_mode(),
            |dir| create_dir_like(dir, db),
        )
    }

    /// SPEC §4.4: a fresh generation, shadow index 0 from the current WAL.
    fn new_generation(&mut self, reason: Reason) -> Result<()> {
        if self.wal_len() < WAL_HEADER_SIZE as u64 {
            self.write_seq()?;
        }
        let generation = position::new_generation().context("cannot draw a generation id")?;
        self.shadow = Some(self.create_shadow(&generation, 0)?);
        self.wal_len_max = self.wal_len();
        // Whatever the WAL holds now belongs to the new generation's index 0: the snapshot
        // the replicas take will be replayed with it.
        self.copy_to_shadow()?;
        self.clean_read_tx = self.in_read_tx && self.wal_header_is_shadows()?;
        write_atomic(
            &self.shared.meta_dir.join("generation"),
            format!("{generation}\n").as_bytes(),
            self.shared.file_mode(),
        )?;
        remove_other_generations(&self.shared.meta_dir, &generation);
        logging::info(
            "new generation",
            &[
                ("db", &self.db_label()),
                ("generation", &generation),
                ("reason", &reason),
            ],
        );
        self.publish();
        Ok(())
    }

    /// `Shadow::copy_from` the real WAL, fsynced; `Ok(true)` if the shadow grew.
    fn copy_to_shadow(&mut self) -> Result<bool> {
        self.copy_frames(true)
    }

    /// `copy_to_shadow`, leaving the fsync to the caller when `sync` is false (it must call
    /// `Shadow::sync` before anything publishes the new size).
    fn copy_frames(&mut self, sync: bool) -> Result<bool> {
        let wal = wal_path(&self.shared.path);
        let shadow = self
            .shadow
            .as_mut()
            .ok_or_else(|| anyhow!("no shadow wal"))?;
        let added = shadow.copy_from(&wal, &mut self.copy_buffer, sync)?;
        self.shared.metrics.add_wal_bytes(added);
        Ok(added > 0)
    }

    /// Publishes the shadow position and wakes every replica without ever blocking.
    fn publish(&self) {
        let pos = self.shadow.as_ref().map(Shadow::position);
        let changed = self.shared.position() != pos;
        self.shared.set_position(pos.clone());
        if let Some(pos) = pos {
            if changed {
                // Before the wake-ups: a replica that wakes must see this publish's number.
                self.shared.metrics.published(std::time::SystemTime::now());
            }
            for tx in &self.replicas {
                // A full channel already holds a wake-up; the replica reads the latest
                // position from the shared state, so dropping this one loses nothing.
                let _ = tx.try_send(Notice::Synced(pos.clone()));
            }
        }
    }

    /// The WAL file's length now (0 when it does not exist).
    fn wal_len(&self) -> u64 {
        files::len_or_zero(&wal_path(&self.shared.path))
    }

    /// Deletes shadow files every replica has uploaded (keeping one extra index).
    fn clean_up_shadow(&mut self) -> Result<()> {
        let Some(shadow) = &self.shadow else {
            return Ok(());
        };
        let positions = lock(&self.shared.replica_positions).clone();
        let mut min = shadow.index;
        for p in &positions {
            match p {
                Some(p) if p.generation == shadow.generation => min = min.min(p.index),
                // A replica that has not reported for this generation may still need it all.
                _ => return Ok(()),
            }
        }
        let keep_from = min.saturating_sub(1);
        let key = (shadow.generation.clone(), keep_from);
        if self.cleaned_for.as_ref() == Some(&key) {
            // Nothing below keep_from was created since: no need to list the directory.
            return Ok(());
        }
        remove_indexes_below(
            &shadow_wal_dir(&self.shared.meta_dir, &shadow.generation),
            keep_from,
        );
        self.cleaned_for = Some(key);
        Ok(())
    }

    /// Whether the db file at the path is still the one we opened. When it is not (replaced,
    /// or deleted and maybe created again), our connection and snapshots would read the old
    /// file while the shadow follows the new `-wal` by its path: a replica mixing two
    /// databases. So everything on the old file is let go of, the replicas see no position
    /// until a new generation starts from the new file, and health is not ok until every
    /// replica holds that generation's snapshot.
    fn db_file_moved(&mut self) -> Result<Moved> {
        let Some(open) = self.db_id else {
            return Ok(Moved::No);
        };
        let now = FileId::of_path(&self.shared.path)?;
        if now == Some(open) {
            return Ok(Moved::No);
        }
        // No snapshot may be reading the old file (or pairing it with the new position).
        let shared = self.shared.clone();
        let Ok(_guard) = shared.checkpoint_lock.try_write() else {
            return Ok(Moved::Busy);
        };
        let (what, reason) = match now {
            Some(_) => (
                "database file replaced: another file now has its path",
                Reason::DbFileReplaced,
            ),
            None => (
                "database file deleted: nothing is replicated until a database is created at its path again",
                Reason::DbFileRecreated,
            ),
        };
        // Health says so before the log line does: whoever reads the log and then asks
        // `/healthz` must not be told ok.
        self.shared.metrics.set_db_problem(Some(format!(
            "{what}; the replicas hold the old file's data"
        )));
        self.problem_set = true;
        logging::warn(
            what,
            &[
                ("db", &self.db_label()),
                (
                    "generation",
                    &self
                        .shadow
                        .as_ref()
                        .map(|s| s.generation.clone())
                        .unwrap_or_default(),
                ),
            ],
        );
        self.let_go_of_db_file();
        // `init` logs nothing more while the path stays empty.
        self.waiting_logged = true;
        self.forced_reason = Some(reason);
        Ok(Moved::LetGo)
    }

    /// Closes the connection on a db file that is no longer at the path, and forgets the
    /// file, the shadow and the published position. SQLite must not checkpoint on this close:
    /// as the last connection it would then delete the `-wal` by its path, which may by now
    /// be the new file's.
    fn let_go_of_db_file(&mut self) {
        if let Some(conn) = &self.conn {
            let _ = conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            );
        }
        self.close();
        self.shared.close_db_file();
        self.db_id = None;
        self.shadow = None;
        self.wal_seen = None;
        self.cleaned_for = None;
        self.shared.set_position(None);
    }

    /// Clears the health problem `db_file_moved` set once every replica has uploaded a
    /// snapshot of the current generation (a replica reports a position only after that).
    fn clear_problem_once_snapshotted(&mut self) {
        if !self.problem_set || self.forced_reason.is_some() {
            return;
        }
        let Some(shadow) = &self.shadow else {
            return;
        };
        let all = lock(&self.shared.replica_positions).iter().all(|p| {
            p.as_ref()
                .is_some_and(|p| p.generation == shadow.generation)
        });
        if all {
            self.shared.metrics.set_db_problem(None);
            self.problem_set = false;
            logging::info(
                "replicas hold a snapshot of the new database file",
                &[("db", &self.db_label()), ("generation", &shadow.generation)],
            );
        }
    }

    /// Releases the read lock and closes the connection.
    pub fn close(&mut self) {
        let _ = self.end_read_tx();
        self.conn = None;
        self.in_read_tx = false;
    }
}

/// What `Db::resume` found on disk.
enum Resume {
    /// The shadow still follows the WAL: go on in its index.
    Following(Shadow),
    /// The WAL is another life (or none), and the last stop was sealed at the shadow's end.
    AfterCleanStop(Shadow, seal::Seal),
}

/// What `Db::db_file_moved` found.
enum Moved {
    /// The db file at the path is the one we have open.
    No,
    /// It is not; we let go of the old one, and `init` starts again from the path.
    LetGo,
    /// It is not, but a snapshot is reading the old file: try again next tick.
    Busy,
}

/// Takes an exclusive `flock` on `<meta dir>/lock`. Two daemons replicating one db would each
/// take the other's WAL restarts for lost frames and remove the other's generations; the
/// second one waits here instead (retried every monitor-interval, so it takes over when the
/// first exits). The kernel drops the lock when the process dies, even by SIGKILL.
fn lock_meta_dir(meta_dir: &Path, db_path: &Path, mode: u32) -> Result<File> {
    let path = meta_dir.join("lock");
    // Read-only is enough for flock; never through a link (a planted one would have us lock
    // a file of someone else's choosing). A missing one is created new with the db file's
    // mode, as every file here has; when two daemons create it at once, the second opens the
    // first's.
    let file = match files::open_existing(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => files::create_new(&path, mode)
            .or_else(|_| files::open_existing(&path, false).map_err(anyhow::Error::from))
            .with_context(|| format!("{}: cannot create lock file", path.display()))?,
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot open lock file", path.display()))
        }
    };
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor owned by `file`; flock has no memory effects.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "{}: another litestream process is already replicating this database (it holds {}); waiting for it to exit",
                db_path.display(),
                path.display()
            );
        }
        return Err(err).with_context(|| format!("{}: cannot lock", path.display()));
    }
    Ok(file)
}

/// Creates the metadata dir `dir` with the db file's mode (plus `x` where it has `r`, see
/// `files::dir_mode_for`) and, as root, the db file's owner: the shadow WAL holds the data,
/// so no more people may read it than may read the db. Everything created inside it is owned
/// like it (`files::create_new`), so a later run as the db's owner can use it all. One that
/// was there before is checked: owned by root, us or the db's owner, and not writable by all.
fn create_dir_like(dir: &Path, db_path: &Path) -> Result<()> {
    let meta =
        fs::metadata(db_path).with_context(|| format!("{}: cannot stat", db_path.display()))?;
    let owner = files::Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    };
    files::create_dir_all(dir, files::dir_mode_for(meta.mode()), Some(owner))?;
    files::check_dir(dir, Some(meta.uid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_paths() {
        assert_eq!(
            default_meta_dir(Path::new("/var/lib/app.db")),
            PathBuf::from("/var/lib/.app.db-litestream")
        );
        assert_eq!(
            wal_path(Path::new("/var/lib/app.db")),
            PathBuf::from("/var/lib/app.db-wal")
        );
        assert_eq!(
            shadow_wal_path(Path::new("/m"), "0123456789abcdef", 10),
            PathBuf::from("/m/generations/0123456789abcdef/wal/0000000a.wal")
        );
    }
}
