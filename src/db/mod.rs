//! The db thread: one per database. It holds SQLite's read lock so nobody restarts the WAL
//! behind our back, copies committed frames from the `-wal` into the shadow WAL under
//! `.<db>-litestream/`, decides checkpoints, starts generations, and publishes the shadow
//! position to the replica threads.
//!
//! It owns the SQLite connection and the shadow WAL files (the only writer of both). It never
//! talks to a store and never blocks on a replica: replicas are told about new data with a
//! non-blocking send and read the bytes from the shadow WAL themselves.
//!
//! Why the read transaction matters: SQLite restarts a WAL (overwriting it from the start) only
//! when no reader uses it. Our open read transaction either pins WAL frames (so no restart can
//! happen) or, when the WAL was fully checkpointed as it began, blocks every checkpoint (so no
//! frame appended after it can be checkpointed, and no restart can drop an uncopied frame).
//! Our connection must leave it to checkpoint; a second connection, the pin, holds one across
//! that gap (see `Db::checkpoint`). A restart seen when neither held a lock (after an error
//! closed the transaction, say) is checked against the WAL itself (`old_life_proof`), and
//! continues in the next index only when the old life is provably whole in the shadow.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;

mod policy;

use policy::{AfterPass, CheckpointPolicy, Outcome, PassCounts};

use crate::codec;
use crate::config::{DbConfig, LogLevel};
use crate::files::{self, create_file, fsync_dir, read_at, read_at_most, wal_path, write_atomic};
use crate::logging;
use crate::metrics::DbMetrics;
use crate::position::{self, Position, MAX_INDEX};
use crate::sqlite::{
    self, begin_read, briefly, end_read, is_busy, open_connection, open_pin_connection,
    passive_checkpoint_retrying, CheckpointMode,
};
use crate::sync::lock;
use crate::wal::{self, FrameVerifier, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

/// Buffer size for streaming WAL bytes; bounds memory whatever the transaction size.
const COPY_BUFFER: usize = 256 * 1024;

/// What the db thread shares with its replica threads.
pub struct DbShared {
    pub path: PathBuf,
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

    pub fn set_replica_position(&self, replica: usize, pos: Option<Position>) {
        if let Some(slot) = lock(&self.replica_positions).get_mut(replica) {
            *slot = pos;
        }
    }

    pub fn request_new_generation(&self) {
        self.new_generation_requested.store(true, Ordering::SeqCst);
    }

    pub fn shadow_wal_path(&self, generation: &str, index: u32) -> PathBuf {
        shadow_wal_path(&self.meta_dir, generation, index)
    }

    pub fn file_mode(&self) -> u32 {
        self.file_mode.load(Ordering::Relaxed)
    }

    /// The db file, for positional reads only (see `db_file`); never close a clone early.
    pub fn db_file(&self) -> Option<Arc<File>> {
        lock(&self.db_file).clone()
    }

    fn open_db_file(&self) -> Result<()> {
        let mut slot = lock(&self.db_file);
        if slot.is_none() {
            let f = File::open(&self.path)
                .with_context(|| format!("{}: cannot open database", self.path.display()))?;
            *slot = Some(Arc::new(f));
        }
        Ok(())
    }
}

/// Default metadata directory: `<dir>/.<file>-litestream`.
pub fn default_meta_dir(db_path: &Path) -> PathBuf {
    let dir = db_path.parent().unwrap_or_else(|| Path::new("/"));
    let file = db_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{file}-litestream"))
}

pub fn shadow_wal_dir(meta_dir: &Path, generation: &str) -> PathBuf {
    meta_dir.join("generations").join(generation).join("wal")
}

pub fn shadow_wal_path(meta_dir: &Path, generation: &str, index: u32) -> PathBuf {
    shadow_wal_dir(meta_dir, generation).join(format!("{index:08x}.wal"))
}

/// A message from the db thread to a replica thread.
#[derive(Clone, Debug)]
pub enum Notice {
    /// The shadow WAL now ends at this position.
    Synced(Position),
}

/// The shadow WAL life being appended to.
struct Shadow {
    generation: String,
    index: u32,
    header: WalHeader,
    header_bytes: [u8; WAL_HEADER_SIZE],
    /// Committed, frame-aligned length of the shadow file.
    size: u64,
    /// Checksum chain at `size`, to verify the next frames.
    chain: (u32, u32),
    /// How far the real WAL was verified beyond `size` (frames of a transaction not committed
    /// yet), with the chain there, so a long transaction is not re-read on every tick.
    scan: Option<(u64, (u32, u32))>,
}

impl Shadow {
    fn frames(&self) -> u64 {
        (self.size - WAL_HEADER_SIZE as u64) / self.header.frame_size() as u64
    }

    fn position(&self) -> Position {
        Position::new(self.generation.clone(), self.index, self.size)
    }
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
    /// The copy buffer while frames keep coming (see `copy_frames`).
    copy_buffer: Vec<u8>,
    /// The generation and first kept index `clean_up_shadow` last acted on.
    cleaned_for: Option<(String, u32)>,
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
    pub fn new(cfg: DbConfig, shared: Arc<DbShared>, replicas: Vec<Sender<Notice>>) -> Self {
        Db {
            policy: CheckpointPolicy::new(&cfg, Instant::now()),
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
            }
            failed = !self.tick_logged(!woken);
        }
        let _ = self.tick_logged(false);
        self.close();
    }

    /// One tick; errors are logged, never fatal: the next tick retries.
    /// Runs one tick, logging its error; `false` when it failed.
    pub fn tick_logged(&mut self, unwoken: bool) -> bool {
        let started = Instant::now();
        let result = if unwoken && self.unchanged_since_last_tick() {
            self.clean_up_shadow()
        } else {
            self.tick()
        };
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
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        self.shared.metrics.set_sizes(
            size(&self.shared.path),
            size(&wal_path(&self.shared.path)),
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
            .decide(wal_frames, shadow.frames(), Instant::now())
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
            self.new_generation("a replica is ahead of the shadow wal")?;
        }
        self.sync()?;
        let shadow = self
            .shadow
            .as_ref()
            .ok_or_else(|| anyhow!("no shadow wal after sync"))?;
        let wal_frames = wal_frames(&wal_path(&self.shared.path), shadow.header.frame_size());
        if let Some(mode) = self
            .policy
            .decide(wal_frames, shadow.frames(), Instant::now())
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
        self.shared.open_db_file()?;
        let conn = open_connection(&path, self.cfg.busy_timeout)?;
        self.conn = Some(conn);
        self.in_read_tx = false;
        self.begin_read_tx()?;

        remove_tmp_files(&meta_dir);

        match self.resume()? {
            Ok(shadow) => {
                logging::info(
                    "resuming generation",
                    &[("db", &self.db_label()), ("position", &shadow.position())],
                );
                self.shadow = Some(shadow);
                self.after_read_tx_begun()?;
            }
            Err(reason) => {
                self.shadow = None;
                self.new_generation(&reason)?;
            }
        }
        self.publish();
        logging::info("initialized db", &[("path", &self.db_label())]);
        Ok(true)
    }

    /// The position recorded on disk, if it still matches the real WAL (SPEC §4.1 step 4).
    /// `Ok(Err(reason))` when a new generation is needed.
    fn resume(&mut self) -> Result<std::result::Result<Shadow, String>> {
        let meta_dir = &self.shared.meta_dir;
        let generation = match fs::read_to_string(meta_dir.join("generation")) {
            Ok(s) if position::is_generation(s.trim()) => s.trim().to_string(),
            Ok(_) => return Ok(Err("invalid generation file".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Err("no generation".into()))
            }
            Err(e) => return Err(e).context("cannot read generation file"),
        };
        let Some(index) = highest_shadow_index(&shadow_wal_dir(meta_dir, &generation))? else {
            return Ok(Err("no shadow wal".into()));
        };
        let shadow_path = shadow_wal_path(meta_dir, &generation, index);
        let shadow = match load_shadow(&shadow_path, generation, index)? {
            Ok(s) => s,
            Err(reason) => return Ok(Err(reason)),
        };
        let wal = wal_path(&self.shared.path);
        let wal_len = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if wal_len < WAL_HEADER_SIZE as u64 {
            return Ok(Err("wal missing or empty".into()));
        }
        let mut wal_hdr = [0u8; WAL_HEADER_SIZE];
        read_at(&wal, 0, &mut wal_hdr)?;
        if wal_hdr != shadow.header_bytes {
            return Ok(Err("wal header mismatch".into()));
        }
        if shadow.size > wal_len {
            return Ok(Err("wal truncated by another process".into()));
        }
        if !last_frame_matches(&shadow_path, &wal, &shadow)? {
            return Ok(Err("wal overwritten by another process".into()));
        }
        Ok(Ok(shadow))
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
        if let Some(reason) = self.verify()? {
            if reason == RESTART {
                self.finish_and_restart()?;
            } else if reason == UNSEEN_RESTART {
                self.finish_restart_locked()?;
            } else {
                self.new_generation(&reason)?;
            }
        }
        if self.copy_to_shadow()? {
            self.publish();
        }
        Ok(())
    }

    /// `Some(reason)` when the shadow no longer follows the WAL; `Some(RESTART)` for a WAL
    /// restart whose old life we can finish, `Some(UNSEEN_RESTART)` for one that must be
    /// checked first (`finish_restart_locked`).
    fn verify(&mut self) -> Result<Option<String>> {
        let Some(shadow) = &self.shadow else {
            return Ok(Some("no generation".into()));
        };
        if shadow.index >= MAX_INDEX {
            return Ok(Some("max index exceeded".into()));
        }
        let path = self
            .shared
            .shadow_wal_path(&shadow.generation, shadow.index);
        let shadow_len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return Ok(Some("no shadow wal".into())),
        };
        if shadow_len < WAL_HEADER_SIZE as u64 {
            return Ok(Some("short shadow wal".into()));
        }
        let wal = wal_path(&self.shared.path);
        let wal_len = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if wal_len < WAL_HEADER_SIZE as u64 {
            return Ok(Some("wal truncated by another process".into()));
        }
        let mut hdr = [0u8; WAL_HEADER_SIZE];
        read_at(&wal, 0, &mut hdr)?;
        let restarted = hdr != shadow.header_bytes;
        if !restarted && shadow.size > wal_len {
            return Ok(Some("wal truncated by another process".into()));
        }
        if restarted && shadow.size == WAL_HEADER_SIZE as u64 {
            return Ok(Some("wal header only, mismatched".into()));
        }
        if restarted {
            if !self.clean_read_tx {
                // Maybe before our read lock was taken: only the WAL can tell.
                return Ok(Some(UNSEEN_RESTART.into()));
            }
            // Our read lock allows one restart at most, and only of a life we copied whole (so
            // the new life may well have overwritten our last frame already). A salt-1 more
            // than one ahead, or a header that does not parse, says something else happened.
            let next = WalHeader::parse(&hdr).is_ok_and(|h| wal::is_next_life(&shadow.header, &h));
            if !next {
                return Ok(Some(
                    "wal restarted more than once before it was copied".into(),
                ));
            }
            return Ok(Some(RESTART.into()));
        }
        if !last_frame_matches(&path, &wal, shadow)? {
            return Ok(Some("wal overwritten by another process".into()));
        }
        Ok(None)
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
        let (generation, index) = {
            let s = self
                .shadow
                .as_ref()
                .ok_or_else(|| anyhow!("no shadow wal"))?;
            (s.generation.clone(), s.index)
        };
        if index + 1 >= MAX_INDEX {
            return self.new_generation("max index exceeded");
        }
        self.cut_open_transaction_tail()?;
        let shadow = self.create_shadow(&generation, index + 1)?;
        self.shadow = Some(shadow);
        self.wal_len_max = self.wal_len();
        // The old index is complete: replicas may now upload its tail and move on.
        self.publish();
        Ok(())
    }

    /// A closed index's shadow must end at its last commit: replicas take a closed file's
    /// length as its end. `copy_frames` may have written an open transaction's frames past
    /// it; cut them (durably, before the next index exists, so a crash cannot leave a closed
    /// index with a tail).
    fn cut_open_transaction_tail(&mut self) -> Result<()> {
        let Some(s) = &mut self.shadow else {
            return Ok(());
        };
        s.scan = None;
        let path = self.shared.shadow_wal_path(&s.generation, s.index);
        let f = open_shadow(&path)?;
        if f.metadata()?.len() > s.size {
            f.set_len(s.size)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("{}: cannot truncate shadow wal", path.display()))?;
        }
        Ok(())
    }

    /// Creates shadow file `index` holding the real WAL's header.
    fn create_shadow(&self, generation: &str, index: u32) -> Result<Shadow> {
        let wal = wal_path(&self.shared.path);
        let mut hdr_bytes = [0u8; WAL_HEADER_SIZE];
        read_at(&wal, 0, &mut hdr_bytes)?;
        let header = WalHeader::parse(&hdr_bytes).map_err(|e| anyhow!("{}: {e}", wal.display()))?;
        let dir = shadow_wal_dir(&self.shared.meta_dir, generation);
        create_dir_like(&dir, &self.shared.path)?;
        let path = shadow_wal_path(&self.shared.meta_dir, generation, index);
        let mut f = create_file(&path, self.shared.file_mode())?;
        f.write_all(&hdr_bytes)
            .with_context(|| format!("{}: cannot write shadow wal", path.display()))?;
        f.sync_all()
            .with_context(|| format!("{}: cannot fsync shadow wal", path.display()))?;
        fsync_dir(&dir)?;
        Ok(Shadow {
            generation: generation.to_string(),
            index,
            header,
            header_bytes: hdr_bytes,
            size: WAL_HEADER_SIZE as u64,
            chain: header.checksum(),
            scan: None,
        })
    }

    /// SPEC §4.4: a fresh generation, shadow index 0 from the current WAL.
    fn new_generation(&mut self, reason: &str) -> Result<()> {
        let wal = wal_path(&self.shared.path);
        if fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) < WAL_HEADER_SIZE as u64 {
            self.write_seq()?;
        }
        let generation = position::new_generation().context("cannot draw a generation id")?;
        let shadow = self.create_shadow(&generation, 0)?;
        self.shadow = Some(shadow);
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

    /// Appends the WAL's newly committed frames to the shadow in one pass: each frame is
    /// verified (salts and checksum chain) in the buffer it was read into and written from
    /// that buffer at the same offset in the shadow. Frames past the last commit (an open
    /// transaction) are written too, but the shadow's size stays at the last commit: nothing
    /// reads a shadow past its size, `load_shadow` cuts such a tail after a crash, and
    /// `start_next_index` before the index is closed. The scan point is remembered, so an open
    /// transaction's frames are read and verified once, not on every tick. `Ok(true)` if the
    /// shadow grew.
    fn copy_to_shadow(&mut self) -> Result<bool> {
        self.copy_frames(true)
    }

    /// `copy_to_shadow`, leaving the fsync to the caller when `sync` is false (it must call
    /// `sync_shadow` before anything publishes the new size).
    fn copy_frames(&mut self, sync: bool) -> Result<bool> {
        let wal = wal_path(&self.shared.path);
        let shadow_path = {
            let s = self
                .shadow
                .as_ref()
                .ok_or_else(|| anyhow!("no shadow wal"))?;
            self.shared.shadow_wal_path(&s.generation, s.index)
        };
        let shadow = self
            .shadow
            .as_mut()
            .ok_or_else(|| anyhow!("no shadow wal"))?;
        let frame_size = shadow.header.frame_size();
        // Kept between ticks while frames keep coming, dropped on the first tick that copies
        // nothing: under load a fresh buffer per tick cost page faults, and an idle database
        // (of many) should hold none.
        let mut chunk = std::mem::take(&mut self.copy_buffer);

        // Frames in [size, scan point) were verified and written by an earlier tick.
        let (mut start, mut start_chain) = match shadow.scan {
            Some((off, chain)) if off > shadow.size => (off, chain),
            _ => (shadow.size, shadow.chain),
        };
        let wal_file =
            File::open(&wal).with_context(|| format!("{}: cannot open wal", wal.display()))?;
        let mut out: Option<File> = None;
        let max_chunk = (COPY_BUFFER / frame_size).max(1) * frame_size;
        let mut committed: Option<(u64, (u32, u32))> = None;
        let mut stale_tail = false;
        let mut progressed = false;
        for attempt in 0..2 {
            let mut verifier = FrameVerifier::resume(&shadow.header, start_chain);
            let mut off = start;
            // Reads grow from one frame: on most ticks nothing is new, and the bytes past our
            // end are often a previous WAL life's frames; reading a whole buffer of those on
            // every tick was most of an idle daemon's work.
            let mut frames = 1usize;
            loop {
                let want = (frames * frame_size).min(max_chunk);
                if chunk.len() < want {
                    chunk.resize(want, 0);
                }
                let got = read_at_most(&wal_file, off, &mut chunk[..want])?;
                let mut good = 0;
                let mut broken = false;
                for f in chunk[..got - got % frame_size].chunks_exact(frame_size) {
                    let Some(fh) = verifier.check(f) else {
                        broken = true;
                        break;
                    };
                    good += frame_size;
                    if fh.is_commit() {
                        committed = Some((off + good as u64, verifier.chain()));
                    }
                }
                if good > 0 {
                    let file = match out.as_mut() {
                        Some(f) => f,
                        None => out.insert(open_shadow(&shadow_path)?),
                    };
                    file.write_all_at(&chunk[..good], off).with_context(|| {
                        format!("{}: cannot write shadow wal", shadow_path.display())
                    })?;
                    off += good as u64;
                    progressed = true;
                }
                if broken || got < want {
                    break;
                }
                // Capped: unbounded, it wrapped to 0 after 21 full chunks of a large WAL
                // (release builds), and a zero-length read looped forever.
                frames = frames.saturating_mul(8).min(max_chunk / frame_size);
            }
            if off == start && attempt == 0 && start > shadow.size {
                // The remembered scan point no longer continues the chain (an open
                // transaction was rolled back and overwritten): rescan from the shadow's end,
                // and drop what the earlier ticks wrote past it.
                stale_tail = true;
                start = shadow.size;
                start_chain = shadow.chain;
                continue;
            }
            shadow.scan = Some((off, verifier.chain()));
            break;
        }
        if progressed {
            self.copy_buffer = chunk;
        }
        if stale_tail {
            let end = shadow.scan.map_or(shadow.size, |(off, _)| off);
            let file = match out.as_mut() {
                Some(f) => f,
                None => out.insert(open_shadow(&shadow_path)?),
            };
            file.set_len(end).with_context(|| {
                format!("{}: cannot truncate shadow wal", shadow_path.display())
            })?;
        }
        let Some((end, chain)) = committed.filter(|(end, _)| *end > shadow.size) else {
            return Ok(false);
        };
        if sync {
            if let Some(file) = &out {
                file.sync_data().with_context(|| {
                    format!("{}: cannot fsync shadow wal", shadow_path.display())
                })?;
            }
        }
        self.shared.metrics.add_wal_bytes(end - shadow.size);
        shadow.size = end;
        shadow.chain = chain;
        if let Some((scan, _)) = shadow.scan {
            if scan <= end {
                shadow.scan = None;
            }
        }
        Ok(true)
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

    /// SPEC §4.2 step 5: checkpoint, and restart the WAL when that emptied it.
    ///
    /// Our connection must leave its read transaction to checkpoint. A second connection, the
    /// pin, holds one across that gap. While the pin reads at a mark in the WAL nobody can
    /// restart the WAL; while it reads at mark 0 (the WAL was fully checkpointed as it began)
    /// no checkpoint can run, so one restart at most can happen, of a life we had copied
    /// whole. Without the pin, a stall of this thread in the gap (a busy machine, or a read
    /// lock SQLite keeps retrying while the application checkpoints) let the application's own
    /// auto-checkpoint backfill frames we had not copied and its next write restart the WAL
    /// over them, or over a whole life we never saw.
    fn checkpoint(&mut self, mode: CheckpointMode) -> Result<()> {
        // The argument above needs the shadow to hold the WAL as of our read lock. After an
        // error (or `write_seq`) that is not known: take the lock afresh and copy; if the WAL
        // restarted meanwhile, the next tick's `verify` deals with it first.
        if !(self.clean_read_tx && self.read_tx_alive()) {
            self.end_read_tx()?;
            self.begin_read_tx()?;
            self.after_read_tx_begun()?;
            if !self.clean_read_tx {
                return Ok(());
            }
        }
        // A snapshot in progress reads the db file; it must not see our checkpoint.
        let shared = self.shared.clone();
        let Ok(_guard) = shared.checkpoint_lock.try_write() else {
            return Ok(());
        };
        self.copy_to_shadow()?;
        self.publish();
        let wal = wal_path(&self.shared.path);
        let before = read_header(&wal)?;
        let started = Instant::now();
        // Opened for each checkpoint: kept open, its schema and page cache were 60 KiB of
        // every busy db's memory. (SQLite keeps the db file's descriptor open while our
        // connection holds a lock on it, so closing the pin cannot drop our POSIX locks.)
        let pin = open_pin_connection(&self.shared.path, self.cfg.busy_timeout)?;
        begin_read(&pin).context("cannot take the pin's read lock")?;
        let outcome = self
            .end_read_tx()
            .and_then(|()| self.checkpoint_pinned(&pin, mode, before));
        // Our own read transaction first, then the pin may go.
        let relocked = self.begin_read_tx();
        let unpinned = end_read(&pin).context("cannot release the pin's read lock");
        drop(pin);
        self.shared
            .metrics
            .checkpoint_done(mode.name(), outcome.is_ok(), started.elapsed());
        let counts = outcome?;
        relocked?;
        unpinned?;
        let after = read_header(&wal)?;
        let done = Outcome {
            mode,
            lock_busy: counts.lock_busy(),
            busy: counts.busy,
            restarted: before.is_some() && after != before,
        };
        self.policy.record(done, Instant::now());
        logging::log(
            // Retried soon while the lock is taken: not worth a line each time.
            if done.lock_busy {
                LogLevel::Debug
            } else {
                LogLevel::Info
            },
            "checkpoint",
            &[
                ("db", &self.db_label()),
                ("mode", &mode.name()),
                ("result", &done.result()),
                ("wal_frames", &counts.log),
                ("checkpointed", &counts.checkpointed),
                ("restarted", &done.restarted),
                ("elapsed", &format!("{:?}", started.elapsed())),
            ],
        );
        let restarted = done.restarted;
        if restarted {
            // One restart at most, of a life we had copied whole (see above).
            let next = after
                .and_then(|h| WalHeader::parse(&h).ok())
                .zip(self.shadow.as_ref())
                .is_some_and(|(new, s)| wal::is_next_life(&s.header, &new));
            if next {
                self.finish_and_restart()?;
            } else {
                self.new_generation("wal restarted more than once during a checkpoint")?;
            }
        }
        self.after_read_tx_begun()?;
        // Before the guard drops: a snapshot must never read a db file holding frames
        // (up to our new read mark) beyond the published position.
        self.publish();
        Ok(())
    }

    /// The checkpoint proper, with the pin held and our read transaction closed: a PASSIVE
    /// pass, then (for RESTART and TRUNCATE, or when that pass emptied the WAL) `restart_wal`.
    /// The counts are the pass's (busy, frames in the WAL, frames checkpointed), or the
    /// restart's backfill when it emptied the WAL.
    fn checkpoint_pinned(
        &mut self,
        pin: &Connection,
        mode: CheckpointMode,
        before: Option<[u8; WAL_HEADER_SIZE]>,
    ) -> Result<PassCounts> {
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        let pass = PassCounts::from_triple(sqlite::checkpoint(conn, CheckpointMode::Passive)?);
        let frame_size = self.shadow.as_ref().map_or(4096, |s| s.header.frame_size()) as u64;
        let AfterPass::Restart {
            shrink_to,
            unless_beyond,
        } = policy::after_pass(&self.cfg, mode, pass, before.is_some(), frame_size)
        else {
            return Ok(pass);
        };
        Ok(
            match self.restart_wal(pin, before, shrink_to, unless_beyond)? {
                Some(backfill) => backfill,
                None => pass,
            },
        )
    }

    /// A restart we did not see happen: take the write lock (so the WAL holds still), copy what
    /// is left of the old life, then `finish_restart`; our read transaction is open again on
    /// return.
    fn finish_restart_locked(&mut self) -> Result<()> {
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")
                .context("cannot release read lock")?;
        }
        self.in_read_tx = false;
        let locked = conn.execute_batch("BEGIN; INSERT INTO _litestream_lock (id) VALUES (1);");
        if let Err(err) = locked {
            // Busy past the timeout, most likely: hold the read lock again and retry next tick.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            self.begin_read_tx()?;
            return Err(err).context("cannot take the write lock");
        }
        self.in_read_tx = true;
        let outcome = (|| -> Result<()> {
            self.copy_to_shadow()?;
            self.finish_restart()
        })();
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        conn.execute_batch("ROLLBACK")
            .context("cannot release the write lock")?;
        self.in_read_tx = false;
        self.begin_read_tx()?;
        outcome?;
        self.after_read_tx_begun()
    }

    /// After a restart, with the write lock held and the old life copied as far as the WAL
    /// still holds it: the next index if the old life is provably whole in the shadow, else a
    /// new generation.
    fn finish_restart(&mut self) -> Result<()> {
        match self.old_life_proof()? {
            Ok(()) => {
                self.start_next_index()?;
                self.copy_to_shadow()?;
            }
            Err(reason) => self.new_generation(&reason)?,
        }
        Ok(())
    }

    /// Whether the shadow holds every committed frame of the WAL life before the current one
    /// (called under the write lock, after copying that life's tail), for a restart that
    /// happened while neither our connection nor the pin held a read lock: what the WAL holds
    /// where our copy of the old life stopped tells (`wal::old_life_copied_whole`).
    /// `Ok(Err(reason))` when it cannot be proven.
    fn old_life_proof(&self) -> Result<std::result::Result<(), String>> {
        let shadow = self
            .shadow
            .as_ref()
            .ok_or_else(|| anyhow!("no shadow wal"))?;
        let wal = wal_path(&self.shared.path);
        let wal_file =
            File::open(&wal).with_context(|| format!("{}: cannot open wal", wal.display()))?;
        let mut hdr = [0u8; WAL_HEADER_SIZE];
        if read_at_most(&wal_file, 0, &mut hdr)? < hdr.len() {
            return Ok(Err("the wal lost its header".into()));
        }
        let new = match WalHeader::parse(&hdr) {
            Ok(h) => h,
            Err(e) => return Ok(Err(format!("the wal header is invalid: {e}"))),
        };
        let mut next = [0u8; FRAME_HEADER_SIZE];
        let got = read_at_most(&wal_file, shadow.size, &mut next)?;
        let truncated = wal_file.metadata()?.len() < self.wal_len_max;
        Ok(wal::old_life_copied_whole(
            &shadow.header,
            &new,
            (got == next.len()).then_some(&next[..]),
            truncated,
        ))
    }

    /// Restarts the WAL (with the pin held, our read transaction closed): under the write lock
    /// copy the whole life, then backfill all of it through the pin's connection and pin again
    /// (at mark 0, which allows one restart, of that life), release the lock and write our
    /// `_litestream_seq` row, whose read then begins on a fully checkpointed WAL, so the write
    /// restarts it. The application may get the write lock first and restart it itself, which
    /// is as safe. `Some((frames, checkpointed))` of the backfill when the WAL was emptied,
    /// `None` when it could not be (the lock or a reader of the application was in the way).
    /// `emptied` is set after a PASSIVE pass that emptied the WAL (of that many frames), when
    /// no restart was asked for: frames committed since then mean no restart this time, rather
    /// than a backfill (and its fsyncs) while the application waits on our lock.
    /// With `shrink`, our restart also truncates the WAL file to `TRUNCATED_WAL_BYTES`. Only
    /// then: an application that grows the WAL again after each truncation pays for fresh
    /// file blocks and zeroed page-cache pages on every write (measured: +70% of its system
    /// time per transaction), where overwriting the existing file costs nothing extra.
    fn restart_wal(
        &mut self,
        pin: &Connection,
        before: Option<[u8; WAL_HEADER_SIZE]>,
        shrink_to: Option<u64>,
        unless_beyond: Option<u64>,
    ) -> Result<Option<PassCounts>> {
        let timeout = self.cfg.busy_timeout;
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        let locked = briefly(conn, timeout, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
        if let Err(err) = locked {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            if is_busy(&err) {
                return Ok(None);
            }
            return Err(err).context("cannot take the write lock");
        }
        let outcome = (|| -> Result<Option<PassCounts>> {
            if read_header(&wal_path(&self.shared.path))? != before {
                // Restarted while we waited for the lock: the caller follows it.
                return Ok(None);
            }
            // No fsync while the application waits on our lock: it follows the release.
            self.copy_frames(false)?;
            let frames = self.shadow.as_ref().map_or(0, Shadow::frames);
            if unless_beyond.is_some_and(|n| frames > n) {
                return Ok(None);
            }
            end_read(pin).context("cannot release the pin's read lock")?;
            let (busy, log, done) = passive_checkpoint_retrying(pin)?;
            begin_read(pin).context("cannot take the pin's read lock")?;
            Ok((!busy && log >= 0 && done == log)
                .then_some(PassCounts::from_triple((false, log, done))))
        })();
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")
                .context("cannot release the write lock")?;
        }
        self.sync_shadow()?;
        let Some(counts) = outcome? else {
            return Ok(None);
        };
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        if let Some(limit) = shrink_to {
            conn.execute_batch(&format!("PRAGMA journal_size_limit = {limit}"))?;
        }
        let written = briefly(conn, timeout, sqlite::bump_seq)?;
        if shrink_to.is_some() {
            conn.execute_batch("PRAGMA journal_size_limit = -1")?;
        }
        match written {
            Ok(_) => Ok(Some(counts)),
            // The application holds the write lock: its write restarts the WAL instead.
            Err(err) if is_busy(&err) => Ok(Some(counts)),
            Err(err) => Err(err).context("cannot write to _litestream_seq"),
        }
    }

    /// fsyncs the current shadow file (after `copy_frames(false)`).
    fn sync_shadow(&self) -> Result<()> {
        let Some(s) = &self.shadow else {
            return Ok(());
        };
        let path = self.shared.shadow_wal_path(&s.generation, s.index);
        open_shadow(&path)?
            .sync_data()
            .with_context(|| format!("{}: cannot fsync shadow wal", path.display()))
    }

    /// Bookkeeping after a read transaction began: copy at once, then remember whether the
    /// WAL still had the shadow's header (see `clean_read_tx`). In that order: SQLite writes a
    /// new life's header before its first frame, so a header still ours after the copy means
    /// no frame the copy read had been overwritten, and the copy took the life whole as it
    /// stood when our read lock was taken. From then on our lock allows no restart at all (a
    /// read mark in the WAL), or one of exactly that state (read mark 0: the WAL was fully
    /// checkpointed, and no checkpoint can run past our lock).
    fn after_read_tx_begun(&mut self) -> Result<()> {
        let ours = self.wal_header_is_shadows()?;
        if ours {
            self.copy_to_shadow()?;
        }
        self.clean_read_tx = ours && self.wal_header_is_shadows()?;
        Ok(())
    }

    /// True when the WAL file starts with the current shadow's header.
    fn wal_header_is_shadows(&self) -> Result<bool> {
        let hdr = read_header(&wal_path(&self.shared.path))?;
        Ok(match (&self.shadow, hdr) {
            (Some(s), Some(h)) => s.header_bytes == h,
            _ => false,
        })
    }

    /// The WAL file's length now (0 when it does not exist).
    fn wal_len(&self) -> u64 {
        fs::metadata(wal_path(&self.shared.path)).map_or(0, |m| m.len())
    }

    /// Writes one row so the WAL gets a header and a frame (SPEC §4.2 step 1). Done outside our
    /// read transaction: a deferred read transaction cannot always be promoted.
    fn write_seq(&mut self) -> Result<()> {
        let was_in_tx = self.in_read_tx;
        if was_in_tx {
            self.end_read_tx()?;
        }
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        let r = sqlite::bump_seq(conn);
        if was_in_tx {
            self.begin_read_tx()?;
        }
        r.context("cannot write to _litestream_seq")?;
        Ok(())
    }

    fn begin_read_tx(&mut self) -> Result<()> {
        if self.in_read_tx {
            return Ok(());
        }
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        begin_read(conn).context("cannot acquire read lock")?;
        self.in_read_tx = true;
        self.clean_read_tx = false;
        Ok(())
    }

    fn end_read_tx(&mut self) -> Result<()> {
        if !self.in_read_tx {
            return Ok(());
        }
        self.in_read_tx = false;
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        end_read(conn).context("cannot release read lock")
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
        let dir = shadow_wal_dir(&self.shared.meta_dir, &shadow.generation);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(idx) = name
                .strip_suffix(".wal")
                .and_then(|s| u32::from_str_radix(s, 16).ok())
            else {
                continue;
            };
            if idx < keep_from {
                let _ = fs::remove_file(entry.path());
            }
        }
        self.cleaned_for = Some(key);
        Ok(())
    }

    /// Releases the read lock and closes the connection.
    pub fn close(&mut self) {
        let _ = self.end_read_tx();
        self.conn = None;
        self.in_read_tx = false;
    }
}

/// Marker reason for a WAL restart that is safe to follow with the next index.
const RESTART: &str = "restart";
/// `Db::verify`'s reason for a restart that `finish_restart_locked` must check.
const UNSEEN_RESTART: &str = "restart out of sight";

/// Reads exactly `buf.len()` bytes; `Ok(false)` at end of file (a partial frame counts as end:
/// it is a write in progress or a torn tail).
fn read_whole(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    Ok(codec::read_full(r, buf)? == buf.len())
}

/// Opens an existing shadow WAL file for writing.
fn open_shadow(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open shadow wal", path.display()))
}

fn read_header(wal: &Path) -> Result<Option<[u8; WAL_HEADER_SIZE]>> {
    let len = fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    if len < WAL_HEADER_SIZE as u64 {
        return Ok(None);
    }
    let mut hdr = [0u8; WAL_HEADER_SIZE];
    read_at(wal, 0, &mut hdr)?;
    Ok(Some(hdr))
}

/// Number of whole frames in the real WAL file (committed or not).
fn wal_frames(wal: &Path, frame_size: usize) -> u64 {
    let len = fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    len.saturating_sub(WAL_HEADER_SIZE as u64) / frame_size as u64
}

/// True when the shadow's last frame equals the real WAL's bytes at the same offset (or the
/// shadow holds no frame).
fn last_frame_matches(shadow_path: &Path, wal: &Path, shadow: &Shadow) -> Result<bool> {
    if shadow.size <= WAL_HEADER_SIZE as u64 {
        return Ok(true);
    }
    let fs_ = shadow.header.frame_size() as u64;
    let off = shadow.size - fs_;
    let mut a = vec![0u8; fs_ as usize];
    let mut b = vec![0u8; fs_ as usize];
    read_at(shadow_path, off, &mut a)?;
    if read_at(wal, off, &mut b).is_err() {
        return Ok(false);
    }
    Ok(a == b)
}

/// Loads a shadow file: its header, its committed frame-aligned length (a torn or
/// uncommitted tail from a crash is cut off) and the checksum chain there.
fn load_shadow(
    path: &Path,
    generation: String,
    index: u32,
) -> Result<std::result::Result<Shadow, String>> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err("no shadow wal".into())),
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot open shadow wal", path.display()))
        }
    };
    let mut hdr_bytes = [0u8; WAL_HEADER_SIZE];
    if !read_whole(&mut f, &mut hdr_bytes)? {
        return Ok(Err("short shadow wal".into()));
    }
    let header = match WalHeader::parse(&hdr_bytes) {
        Ok(h) => h,
        Err(e) => return Ok(Err(format!("invalid shadow wal header: {e}"))),
    };
    let frame_size = header.frame_size();
    let mut verifier = FrameVerifier::new(&header);
    let mut r = BufReader::with_capacity(COPY_BUFFER, &mut f);
    let mut frame = vec![0u8; frame_size];
    let mut off = WAL_HEADER_SIZE as u64;
    let mut committed = (off, verifier.chain());
    while read_whole(&mut r, &mut frame)? {
        let Some(fh) = verifier.check(&frame) else {
            break;
        };
        off += frame_size as u64;
        if fh.is_commit() {
            committed = (off, verifier.chain());
        }
    }
    drop(r);
    let len = f.metadata()?.len();
    if len > committed.0 {
        f.set_len(committed.0)?;
        f.sync_all()?;
    }
    Ok(Ok(Shadow {
        generation,
        index,
        header,
        header_bytes: hdr_bytes,
        size: committed.0,
        chain: committed.1,
        scan: None,
    }))
}

fn highest_shadow_index(dir: &Path) -> Result<Option<u32>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    let mut max = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(idx) = name
            .strip_suffix(".wal")
            .filter(|s| s.len() == 8)
            .and_then(|s| u32::from_str_radix(s, 16).ok())
        {
            max = max.max(Some(idx));
        }
    }
    Ok(max)
}

fn remove_other_generations(meta_dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(meta_dir.join("generations")) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy() != keep {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes `*.tmp` files left by a crash (SPEC §3).
fn remove_tmp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => remove_tmp_files(&path),
            Ok(_) if path.extension().is_some_and(|e| e == "tmp") => {
                let _ = fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

/// Takes an exclusive `flock` on `<meta dir>/lock`. Two daemons replicating one db would each
/// take the other's WAL restarts for lost frames and remove the other's generations; the
/// second one waits here instead (retried every monitor-interval, so it takes over when the
/// first exits). The kernel drops the lock when the process dies, even by SIGKILL.
fn lock_meta_dir(meta_dir: &Path, db_path: &Path, mode: u32) -> Result<File> {
    let path = meta_dir.join("lock");
    // Read-only is enough for flock. A missing one gets the db file's mode, as every file
    // here has; it stays empty, so two daemons creating it at once truncate nothing.
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_file(&path, mode)?,
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
/// so no more people may read it than may read the db.
fn create_dir_like(dir: &Path, db_path: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let meta =
        fs::metadata(db_path).with_context(|| format!("{}: cannot stat", db_path.display()))?;
    let owner = files::Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    };
    files::create_dir_all(dir, files::dir_mode_for(meta.mode()), Some(owner))
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
