//! The replica thread: one per replica. It uploads WAL segments and snapshots from the shadow
//! WAL and the db file to a store, through a `ReplicaClient`.
//!
//! It owns the replica's position (what the store holds), kept in memory and rediscovered by
//! listing only at start and at a generation change. It reads shadow files but never writes
//! them, and never touches the SQLite connection: the db thread's shared position tells it how
//! far the shadow is durable. A slow or failing store only delays this thread; the db thread
//! never waits for it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::Receiver;

use crate::backoff::{Backoff, Growth};
use crate::client::{ReplicaClient, SnapshotInfo};
use crate::codec;
use crate::config::ReplicaConfig;
use crate::db::{identity, DbShared, Notice};
use crate::encryption::{self, Keys};
use crate::layout;
use crate::logging;
use crate::position::Position;
use crate::sync::Semaphore;
use crate::wal::WAL_HEADER_SIZE;

/// Retries of a failing store: 1 s, 2 s, 4 s … 30 s, each ±25 % so that the replicas of one
/// process do not retry in step. A store that is down for hours costs two requests a minute.
fn store_backoff() -> Backoff {
    Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(30),
        Growth::Doubling,
    )
    .with_jitter()
}

/// One replica's thread state: its store, where the store stands in the current generation,
/// and its schedules (snapshots, retention, validation).
pub struct Replica {
    /// Position of this replica in its db's replica list.
    slot: usize,
    cfg: ReplicaConfig,
    client: Arc<dyn ReplicaClient>,
    /// The `age:` keys: objects are encrypted to the recipients, read with the identities.
    keys: Arc<Keys>,
    db: Arc<DbShared>,
    snapshots: Arc<Semaphore>,
    /// What the store holds of the current generation (None until known).
    pos: Option<Position>,
    /// Whether the store has a snapshot of `pos.generation`.
    has_snapshot: bool,
    /// When the last sync (or scheduled task) that uploaded something began: the next sync
    /// is due a sync-interval after it (`sync_due`).
    last_upload: Option<Instant>,
    /// When the sync or scheduled task now running began; an upload dates the cycle from it.
    task_started: Instant,
    /// Index and store timestamp of the newest snapshot of the current generation, so the
    /// snapshot schedule survives restarts (it is aligned to that snapshot's age).
    newest_snapshot: Option<(u32, SystemTime)>,
    /// When retention runs next (`retention-check-interval`).
    next_retention: Option<Instant>,
    /// When to look again at a due scheduled snapshot that had to wait for a new index.
    snapshot_recheck: Option<Instant>,
    /// When validation runs next (`validation-interval`).
    next_validation: Option<Instant>,
    /// Validation results so far: (ok, failed).
    pub validations: (u64, u64),
    /// Foreign names already warned about (once per name per run).
    warned_foreign: std::collections::HashSet<String>,
    /// This db's identity (`db::identity`), once loaded.
    db_id: Option<String>,
    /// Each other generation's marker as read (`None`: it has none), read once per run.
    markers: HashMap<String, Option<String>>,
}

impl Replica {
    /// A replica of the db behind `db`, at `slot` in its replica list, writing through
    /// `client` (encrypted to `keys`' recipients, if any); `snapshots` bounds how many
    /// snapshots the whole daemon takes at once.
    pub fn new(
        slot: usize,
        cfg: ReplicaConfig,
        client: Arc<dyn ReplicaClient>,
        keys: Arc<Keys>,
        db: Arc<DbShared>,
        snapshots: Arc<Semaphore>,
    ) -> Self {
        Replica {
            slot,
            cfg,
            client,
            keys,
            db,
            snapshots,
            pos: None,
            has_snapshot: false,
            last_upload: None,
            task_started: Instant::now(),
            newest_snapshot: None,
            next_retention: None,
            snapshot_recheck: None,
            next_validation: None,
            validations: (0, 0),
            warned_foreign: std::collections::HashSet::new(),
            db_id: None,
            markers: HashMap::new(),
        }
    }

    /// This db's identity (`db::identity`), created on first use.
    fn db_id(&mut self) -> Result<String> {
        if let Some(id) = &self.db_id {
            return Ok(id.clone());
        }
        let id = identity::load_or_create(&self.db.meta_dir, self.db.file_mode())
            .context("cannot keep the database's identity in its meta dir")?;
        self.db_id = Some(id.clone());
        Ok(id)
    }

    /// Whether `generation` is another db's: `Ok(Some(id))` when its marker names an id not
    /// ours; `Ok(None)` for ours and for a generation without a marker (older versions,
    /// Litestream v0.3: today's behaviour); an error when the marker cannot be read now
    /// (asked again later; retention leaves such a generation alone this time). Warns once
    /// per generation, naming both ids and the fix.
    fn foreign_writer(&mut self, generation: &str) -> Result<Option<String>> {
        // Without an id of our own (meta dir unwritable) nothing can be told apart; the
        // snapshot that needs the id reports the error.
        let Ok(ours) = self.db_id() else {
            return Ok(None);
        };
        let marker = match self.markers.get(generation) {
            Some(m) => m.clone(),
            None => {
                let m = self.client.read_db_id(generation)?;
                self.markers.insert(generation.to_string(), m.clone());
                if let Some(other) = m.as_ref().filter(|m| **m != ours) {
                    logging::warn(
                        "replica holds a generation written by another database: it is kept (never deleted by retention) and this database's generations go beside it; point this db at its own path",
                        &[
                            ("db", &self.db_label()),
                            ("replica", &self.cfg.name),
                            ("path", &self.client.describe()),
                            ("generation", &generation),
                            ("writer_db_id", other),
                            ("db_id", &ours),
                        ],
                    );
                }
                m
            }
        };
        Ok(marker.filter(|m| *m != ours))
    }

    /// Warns, once per name per run, of names in the store that restore would refuse
    /// (`client::Listing::foreign`): replication goes on, but the replica cannot be restored
    /// until someone removes them.
    fn warn_foreign(&mut self, foreign: Vec<String>) {
        for name in foreign {
            if self.warned_foreign.insert(name.clone()) {
                logging::warn(
                    "replica holds a name litestream never writes; restore refuses this replica until it is removed",
                    &[
                        ("db", &self.db_label()),
                        ("replica", &self.cfg.name),
                        ("name", &layout::display_name(&name)),
                    ],
                );
            }
        }
    }

    /// The replica's configured name (its `name` label).
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn db_label(&self) -> String {
        self.db.path.display().to_string()
    }

    /// The thread body. Uploads at most once per sync-interval and only when something
    /// changed; on `stop` (carrying the shutdown deadline) it uploads what is left, then exits.
    /// Returns whether the store holds everything the shadow did at the end.
    pub fn run(mut self, notices: Receiver<Notice>, stop: Receiver<Instant>) -> bool {
        // Start-up counts as a change: the store may lag the shadow from before a restart.
        let mut dirty = true;
        let mut backoff = store_backoff();
        let mut retry_at: Option<Instant> = None;
        loop {
            while notices.try_recv().is_ok() {
                dirty = true;
            }
            let now = Instant::now();
            let due = sync_due(retry_at, self.last_upload, self.cfg.sync_interval, now);
            if dirty && now >= due {
                match self.sync() {
                    Ok(()) => {
                        dirty = false;
                        backoff.reset();
                        retry_at = None;
                    }
                    Err(err) => retry_at = Some(self.retry_later(&err, &mut backoff)),
                }
                continue;
            }
            if retry_at.is_none() {
                if let Err(err) = self.scheduled_work() {
                    retry_at = Some(self.retry_later(&err, &mut backoff));
                    dirty = true;
                    continue;
                }
            }
            let mut wait = if dirty {
                due.saturating_duration_since(now)
            } else {
                Duration::from_secs(3600)
            };
            if let Some(at) = self.next_scheduled() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            crossbeam_channel::select! {
                recv(notices) -> msg => match msg {
                    Ok(_) => dirty = true,
                    // The db thread is gone; only a stop can follow.
                    Err(_) => {
                        return match stop.recv() {
                            Ok(deadline) => self.final_sync(deadline),
                            Err(_) => false,
                        };
                    }
                },
                recv(stop) -> deadline => {
                    return self.final_sync(deadline.unwrap_or_else(|_| Instant::now()));
                }
                default(wait) => {}
            }
        }
    }

    /// Logs a failed sync or scheduled task; returns when to try again.
    fn retry_later(&self, err: &anyhow::Error, backoff: &mut Backoff) -> Instant {
        let wait = backoff.next_wait();
        logging::error(
            "replica sync error",
            &[
                ("db", &self.db_label()),
                ("replica", &self.cfg.name),
                ("error", &format!("{err:#}")),
                ("retry_in", &format!("{wait:?}")),
            ],
        );
        Instant::now() + wait
    }

    /// Uploads everything the shadow holds, retrying until `deadline`; returns whether it did.
    fn final_sync(&mut self, deadline: Instant) -> bool {
        let mut backoff = store_backoff();
        loop {
            match self.sync() {
                Ok(()) => return true,
                Err(err) => {
                    let wait = backoff.next_wait();
                    let give_up = Instant::now() + wait >= deadline;
                    logging::error(
                        if give_up {
                            "replica not fully synced at shutdown"
                        } else {
                            "replica sync error"
                        },
                        &[
                            ("db", &self.db_label()),
                            ("replica", &self.cfg.name),
                            ("error", &format!("{err:#}")),
                        ],
                    );
                    if give_up {
                        return false;
                    }
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Brings the store up to the shadow's current position, and records the outcome in the
    /// metrics (position, lag, last error).
    pub fn sync(&mut self) -> Result<()> {
        self.task_started = Instant::now();
        let metrics = self.db.metrics.clone();
        // Read before the target: what gets uploaded is at least what this number published.
        let seq = metrics.publish_seq();
        self.client.set_object_mode(self.db.file_mode());
        if let Some(meta) = self.db.db_file().and_then(|f| f.metadata().ok()) {
            self.client.set_db_owner(meta.uid());
        }
        let result = self.sync_to_shadow();
        match &result {
            Ok(()) => metrics.replica_synced(self.slot, seq),
            Err(err) => metrics.replica_failed(self.slot, &format!("{err:#}")),
        }
        if let Some(p) = &self.pos {
            metrics.replica_position(self.slot, p.index, p.offset);
        }
        result
    }

    /// One sync: rediscovers the store at a generation change, snapshots when the store has
    /// none of this generation, else uploads the shadow up to its published position.
    fn sync_to_shadow(&mut self) -> Result<()> {
        let Some(target) = self.db.position() else {
            return Ok(());
        };
        if self.pos.as_ref().map(|p| &p.generation) != Some(&target.generation) {
            self.discover(&target)?;
        }
        if !self.has_snapshot {
            return self.snapshot();
        }
        self.upload_until(&target)
    }

    /// Finds what the store holds of `target`'s generation (SPEC §5.2: after a restart, resume
    /// from the replica's own listing).
    fn discover(&mut self, target: &Position) -> Result<()> {
        let generation = &target.generation;
        self.pos = None;
        self.has_snapshot = false;
        self.newest_snapshot = None;
        self.db.set_replica_position(self.slot, None);
        // Only for the warning: a failure here shows up in the listings below.
        if let Ok(generations) = self.client.list_generations() {
            self.warn_foreign(generations.foreign);
            for g in generations.items.iter().filter(|g| *g != generation) {
                let _ = self.foreign_writer(g);
            }
        }
        let snapshots = self.client.list_snapshots(generation)?;
        let segments = self.client.list_wal_segments(generation)?;
        self.warn_foreign(snapshots.foreign);
        self.warn_foreign(segments.foreign);
        let (snapshots, segments) = (snapshots.items, segments.items);
        self.has_snapshot = !snapshots.is_empty();
        self.newest_snapshot = snapshots.iter().map(|s| (s.index, s.created)).max();
        let last_snapshot = snapshots.iter().map(|s| s.index).max();
        let pos = match (segments.last(), last_snapshot) {
            (Some(seg), snap) if snap.is_none_or(|s| s <= seg.index) => {
                let stem = layout::wal_segment_stem(seg.index, seg.offset);
                let raw = self.client.open_wal_segment(seg)?;
                let raw = self.continue_or_not(generation, &stem, raw, true)?;
                let objects = encryption::Objects::new(self.keys.clone());
                let read = objects.open(&stem, raw).and_then(|raw| {
                    let mut r = codec::decoder(seg.compression, raw)?;
                    io::copy(&mut r, &mut io::sink())
                        .with_context(|| format!("cannot read wal segment {stem}"))
                });
                let len = match read {
                    Ok(len) => len,
                    // An age segment this host cannot read (the key was rotated, or the
                    // object is truncated or garbage) has no length to continue after: a new
                    // generation, never a stall on it.
                    Err(e) if self.keys.encrypts() => {
                        return Err(self.not_continued(generation, &stem, &e));
                    }
                    Err(e) => return Err(e),
                };
                Some(Position::new(
                    generation.clone(),
                    seg.index,
                    seg.offset + len,
                ))
            }
            (_, Some(s)) => {
                if let Some(info) = snapshots.iter().find(|i| i.index == s) {
                    let name = layout::snapshot_key(generation, s, info.compression);
                    let raw = self.client.open_snapshot(info)?;
                    let raw = self.continue_or_not(generation, &name, raw, false)?;
                    // Continuing after a snapshot these identities cannot open would leave a
                    // generation no single key set restores: start a new one.
                    if self.keys.encrypts() && self.keys.decrypts() {
                        let objects = encryption::Objects::new(self.keys.clone());
                        if let Err(e) = objects.open(&name, raw) {
                            return Err(self.not_continued(generation, &name, &e));
                        }
                    }
                }
                Some(Position::new(generation.clone(), s, 0))
            }
            (_, None) => None,
        };
        if let Some(p) = &pos {
            // Same generation as `target` (built from it above), so the order is defined.
            if p > target {
                // The store holds data the shadow does not: continuing would interleave two
                // histories. Only a new generation is safe.
                self.db.request_new_generation();
                bail!(
                    "replica {} is ahead of the local shadow wal ({p} > {target})",
                    self.cfg.name
                );
            }
            if !self.db.shadow_wal_path(generation, p.index).exists() {
                // The shadow that would continue this position is gone: a new snapshot covers it.
                self.has_snapshot = false;
                self.pos = None;
                return Ok(());
            }
            logging::info(
                "replica resumed",
                &[
                    ("db", &self.db_label()),
                    ("replica", &self.cfg.name),
                    ("position", p),
                ],
            );
        }
        self.pos = pos;
        if self.has_snapshot {
            self.db.set_replica_position(self.slot, self.pos.clone());
        }
        Ok(())
    }

    /// Whether the generation can be continued after `name`, its newest object (`raw`, its
    /// stored bytes), as far as encryption goes: its kind (age or plain) must be the one this
    /// replica writes now, or the generation would mix the two; and continuing after a
    /// segment (`need_read`) means reading its length, which an age segment allows only with
    /// an identity. Otherwise a new generation is requested and this is an error. Returns the
    /// object's bytes again, for reading on.
    fn continue_or_not(
        &mut self,
        generation: &str,
        name: &str,
        mut raw: Box<dyn Read + Send>,
        need_read: bool,
    ) -> Result<Box<dyn Read + Send>> {
        let mut head = [0u8; encryption::AGE_MAGIC.len()];
        let n =
            codec::read_full(&mut raw, &mut head).with_context(|| format!("cannot read {name}"))?;
        let encrypted = encryption::is_age(&head[..n]);
        let why = if encrypted != self.keys.encrypts() {
            Some(if encrypted {
                "the replica's newest object is age-encrypted and this replica has no age recipient now"
            } else {
                "this replica is now age-encrypted and its newest object is not"
            })
        } else if encrypted && need_read && !self.keys.decrypts() {
            Some("the replica is age-encrypted and this host has no identity to read the length of its last wal segment")
        } else {
            None
        };
        if let Some(why) = why {
            logging::info(
                "replica cannot continue its generation: starting a new generation",
                &[
                    ("db", &self.db_label()),
                    ("replica", &self.cfg.name),
                    ("object", &name),
                    ("reason", &why),
                ],
            );
            self.db.request_new_generation();
            bail!(
                "replica {}: generation {generation} is not continued ({why}); a new generation follows",
                self.cfg.name
            );
        }
        Ok(Box::new(io::Cursor::new(head[..n].to_vec()).chain(raw)))
    }

    /// `name`, the generation's newest object, cannot be read with this replica's identities
    /// (`e` says why; it never holds a key): logs it, requests a new generation and returns
    /// the error for this sync.
    fn not_continued(&mut self, generation: &str, name: &str, e: &anyhow::Error) -> anyhow::Error {
        let why = format!("{e:#}");
        logging::info(
            "replica cannot read its generation's newest object: starting a new generation",
            &[
                ("db", &self.db_label()),
                ("replica", &self.cfg.name),
                ("object", &name),
                ("reason", &why),
            ],
        );
        self.db.request_new_generation();
        anyhow!(
            "replica {}: generation {generation} is not continued ({why}); a new generation follows",
            self.cfg.name
        )
    }

    /// Takes a snapshot of the db at the shadow's current index. The WAL of that index up to
    /// the shadow's end is uploaded first: the db file may already hold pages of those frames
    /// (checkpointed by the application), so a restore must never use this snapshot without
    /// them, and a segment uploaded before the snapshot is always included.
    fn snapshot(&mut self) -> Result<()> {
        let (semaphore, db) = (self.snapshots.clone(), self.db.clone());
        let _permit = semaphore.acquire();
        // Our own checkpoints would change the db file under the read below.
        let _guard = db.checkpoint_lock.read().unwrap_or_else(|e| e.into_inner());
        let target = self
            .db
            .position()
            .ok_or_else(|| anyhow!("database not initialised"))?;
        let generation = target.generation.clone();
        match &self.pos {
            Some(p) if p.generation == generation && p.index == target.index => {}
            // A scheduled snapshot in a chain the store already holds: finish the earlier
            // indexes first, so restores from older snapshots (points in time) stay whole.
            Some(p)
                if p.generation == generation && p.index < target.index && self.has_snapshot => {}
            _ => self.pos = Some(Position::new(generation.clone(), target.index, 0)),
        }
        if !self.has_snapshot {
            // The generation's first object in the store names its writer (`db::identity`).
            let id = self.db_id()?;
            self.client.write_db_id(&generation, &id).with_context(|| {
                format!(
                    "replica {}: cannot write the marker of generation {generation}",
                    self.cfg.name
                )
            })?;
        }

        self.upload_until(&target)?;

        let started = Instant::now();
        let file = self
            .db
            .db_file()
            .ok_or_else(|| anyhow!("database file not open yet"))?;
        // Compressed on worker threads while this one reads the file and feeds the store.
        let mut data = encryption::encrypt(
            &self.keys,
            codec::snapshot_encoder(self.cfg.compression, PositionalReader { file, offset: 0 })?,
        )?;
        let info = self
            .client
            .write_snapshot(&generation, target.index, self.cfg.compression, &mut data)
            .with_context(|| {
                format!(
                    "replica {}: cannot write snapshot {generation}/{:08x}",
                    self.cfg.name, target.index
                )
            })?;
        self.has_snapshot = true;
        self.newest_snapshot = Some((target.index, info.created));
        self.db.set_replica_position(self.slot, self.pos.clone());
        logging::info(
            "snapshot written",
            &[
                ("db", &self.db_label()),
                ("replica", &self.cfg.name),
                ("position", &target),
                ("size", &info.size),
                ("elapsed", &format!("{:?}", started.elapsed())),
            ],
        );
        self.last_upload = Some(self.task_started);
        Ok(())
    }

    /// The next moment a scheduled snapshot, a retention check or a validation is due.
    fn next_scheduled(&self) -> Option<Instant> {
        let snapshot = self.snapshot_due();
        [snapshot, self.next_retention, self.next_validation]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the next scheduled snapshot is due: `snapshot-interval` after the newest one, or
    /// the recheck of one that waited for a new index.
    fn snapshot_due(&self) -> Option<Instant> {
        let interval = self.cfg.snapshot_interval;
        if interval.is_zero() || !self.has_snapshot {
            return None;
        }
        if let Some(at) = self.snapshot_recheck {
            return Some(at);
        }
        let (_, created) = self.newest_snapshot?;
        let age = SystemTime::now()
            .duration_since(created)
            .unwrap_or_default();
        Some(Instant::now() + interval.saturating_sub(age))
    }

    /// Scheduled snapshots (SPEC §5.3), validation (SPEC §5.5) and retention (SPEC §5.4),
    /// when due.
    fn scheduled_work(&mut self) -> Result<()> {
        self.task_started = Instant::now();
        if self.snapshot_due().is_some_and(|at| at <= Instant::now()) {
            self.scheduled_snapshot()?;
        }
        let now = Instant::now();
        let every = self.cfg.validation_interval;
        if !every.is_zero() && self.has_snapshot {
            match self.next_validation {
                None => self.next_validation = Some(now + every),
                Some(at) if at <= now => {
                    self.validate();
                    self.next_validation = Some(Instant::now() + every);
                }
                Some(_) => {}
            }
        }
        let check = self.cfg.retention_check_interval;
        if !check.is_zero() {
            match self.next_retention {
                None => self.next_retention = Some(now + check),
                Some(at) if at <= now => {
                    self.next_retention = Some(now + check);
                    self.enforce_retention()?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Runs one validation and records its outcome (SPEC §5.5). A failure to validate (the store unreachable, the replica unreadable) counts
    /// as a failed validation too: either way the replica would not restore.
    fn validate(&mut self) {
        let (db, client, keys) = (self.db.clone(), self.client.clone(), self.keys.clone());
        let scratch = db.meta_dir.join(format!("validation-{}", self.slot));
        let started = Instant::now();
        let result = crate::validate::validate(&db, &client, &keys, &scratch, &mut |p| {
            if self.pos.as_ref().map(|x| &x.generation) != Some(&p.generation) {
                bail!("generation changed");
            }
            self.upload_until(p)
        });
        match result {
            Ok((pos, crate::validate::Outcome::Ok { pages })) => {
                self.validations.0 += 1;
                self.db.metrics.replica_validation(self.slot, true);
                logging::info(
                    "validation ok",
                    &[
                        ("db", &self.db_label()),
                        ("replica", &self.cfg.name),
                        ("position", &pos),
                        ("pages", &pages),
                        ("elapsed", &format!("{:?}", started.elapsed())),
                        ("ok_total", &self.validations.0),
                    ],
                );
            }
            Ok((pos, crate::validate::Outcome::Mismatch { detail, .. })) => {
                self.validations.1 += 1;
                self.db.metrics.replica_validation(self.slot, false);
                logging::error(
                    "validation failed",
                    &[
                        ("db", &self.db_label()),
                        ("replica", &self.cfg.name),
                        ("position", &pos),
                        (
                            "error",
                            &format!("replica differs from the database: {detail}"),
                        ),
                        ("failed_total", &self.validations.1),
                    ],
                );
            }
            Err(err) => {
                self.validations.1 += 1;
                self.db.metrics.replica_validation(self.slot, false);
                logging::error(
                    "validation failed",
                    &[
                        ("db", &self.db_label()),
                        ("replica", &self.cfg.name),
                        ("error", &format!("{err:#}")),
                        ("failed_total", &self.validations.1),
                    ],
                );
            }
        }
    }

    /// Takes a due scheduled snapshot, unless the newest snapshot is already of the current
    /// index. A snapshot is named by its index and restore replays that index from offset 0 anyway,
    /// so a second snapshot of the same index would not shorten any restore, and overwriting
    /// the first would take away the point-in-time restores between the two. Such a snapshot
    /// waits until the index moves on (every checkpoint that restarts the WAL moves it).
    fn scheduled_snapshot(&mut self) -> Result<()> {
        let Some(target) = self.db.position() else {
            return Ok(());
        };
        let same_index = match (&self.pos, self.newest_snapshot) {
            (Some(p), Some((index, _))) => {
                p.generation == target.generation && index >= target.index
            }
            _ => false,
        };
        if same_index {
            self.snapshot_recheck =
                Some(Instant::now() + self.cfg.snapshot_interval.min(Duration::from_secs(1)));
            return Ok(());
        }
        self.snapshot_recheck = None;
        if self.pos.as_ref().map(|p| &p.generation) != Some(&target.generation) {
            self.discover(&target)?;
        }
        self.snapshot()
    }

    /// SPEC §5.4: keep snapshots newer than `now - retention` (taking one now if none is),
    /// delete generations without a kept snapshot and, in the others, everything below the
    /// lowest kept snapshot. The current generation's newest snapshot and all after it stay.
    /// Snapshots go before the WAL they need, oldest first, so a concurrent restore that
    /// listed earlier fails cleanly (a missing object) rather than restoring something wrong.
    fn enforce_retention(&mut self) -> Result<()> {
        let cutoff = SystemTime::now()
            .checked_sub(self.cfg.retention)
            .unwrap_or(UNIX_EPOCH);
        let current = self.db.position().map(|p| p.generation);
        for (generation, snapshots) in self.retention_listing(cutoff)? {
            let is_current = current.as_deref() == Some(generation.as_str());
            self.trim_generation(&generation, snapshots, cutoff, is_current)?;
        }
        Ok(())
    }

    /// Every generation in the store with its snapshots. When no snapshot anywhere is newer
    /// than `cutoff`, one is taken first (and the current generation listed again), so that
    /// retention never leaves the store without a snapshot to restore from.
    fn retention_listing(
        &mut self,
        cutoff: SystemTime,
    ) -> Result<Vec<(String, Vec<SnapshotInfo>)>> {
        let mut listed = Vec::new();
        let mut any_kept = false;
        let generations = self.client.list_generations()?;
        self.warn_foreign(generations.foreign);
        let current = self.db.position().map(|p| p.generation);
        for generation in generations.items {
            // Another db's history is not ours to trim (warned once in `foreign_writer`).
            if current.as_deref() != Some(generation.as_str())
                && !matches!(self.foreign_writer(&generation), Ok(None))
            {
                continue;
            }
            let snapshots = self.client.snapshots(&generation)?;
            any_kept |= snapshots.iter().any(|s| s.created > cutoff);
            listed.push((generation, snapshots));
        }
        if !any_kept {
            if let Some(target) = self.db.position() {
                if self.pos.as_ref().map(|p| &p.generation) != Some(&target.generation) {
                    self.discover(&target)?;
                }
                self.snapshot()?;
                let gen = target.generation.clone();
                let snapshots = self.client.snapshots(&gen)?;
                match listed.iter_mut().find(|(g, _)| *g == gen) {
                    Some(entry) => entry.1 = snapshots,
                    None => listed.push((gen, snapshots)),
                }
            }
        }
        Ok(listed)
    }

    /// Retention in one generation: without a kept snapshot (newer than `cutoff`, or the
    /// current generation's newest) the generation goes; otherwise the snapshots and then the
    /// WAL segments below the lowest kept snapshot.
    fn trim_generation(
        &mut self,
        generation: &str,
        snapshots: Vec<SnapshotInfo>,
        cutoff: SystemTime,
        is_current: bool,
    ) -> Result<()> {
        let mut kept: Vec<u32> = snapshots
            .iter()
            .filter(|s| s.created > cutoff)
            .map(|s| s.index)
            .collect();
        if is_current {
            if let Some(newest) = snapshots.iter().map(|s| s.index).max() {
                kept.push(newest);
            }
        }
        let Some(&lowest) = kept.iter().min() else {
            if !is_current {
                self.client.delete_generation(generation)?;
                logging::info(
                    "generation deleted",
                    &[
                        ("db", &self.db_label()),
                        ("replica", &self.cfg.name),
                        ("generation", &generation),
                    ],
                );
            }
            return Ok(());
        };
        let old_snapshots: Vec<_> = snapshots.into_iter().filter(|s| s.index < lowest).collect();
        if !old_snapshots.is_empty() {
            self.client.delete_snapshots(&old_snapshots)?;
            logging::info(
                "snapshots deleted",
                &[
                    ("db", &self.db_label()),
                    ("replica", &self.cfg.name),
                    ("generation", &generation),
                    ("below_index", &format!("{lowest:08x}")),
                    ("count", &old_snapshots.len()),
                ],
            );
        }
        let old_segments: Vec<_> = self
            .client
            .wal_segments(generation)?
            .into_iter()
            .filter(|s| s.index < lowest)
            .collect();
        if !old_segments.is_empty() {
            self.client.delete_wal_segments(&old_segments)?;
            logging::info(
                "wal segments deleted",
                &[
                    ("db", &self.db_label()),
                    ("replica", &self.cfg.name),
                    ("generation", &generation),
                    ("below_index", &format!("{lowest:08x}")),
                    ("count", &old_segments.len()),
                ],
            );
        }
        Ok(())
    }

    /// Uploads one segment per index from the replica's position up to `target`.
    fn upload_until(&mut self, target: &Position) -> Result<()> {
        loop {
            let pos = self
                .pos
                .clone()
                .ok_or_else(|| anyhow!("replica position unknown"))?;
            if pos.generation != target.generation {
                bail!("generation changed");
            }
            // Same generation (checked above), so the order is index then offset.
            if pos >= *target {
                return Ok(());
            }
            let path = self.db.shadow_wal_path(&pos.generation, pos.index);
            let end = if pos.index < target.index {
                match std::fs::metadata(&path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // The index was cleaned up locally before we uploaded it: the chain in
                        // the store cannot continue, so start again from a new snapshot.
                        self.has_snapshot = false;
                        bail!(
                            "shadow wal {} is gone; a new snapshot will be taken",
                            path.display()
                        );
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("{}: cannot stat", path.display()))
                    }
                }
            } else {
                target.offset
            };
            if pos.index == target.index && pos.offset == 0 && end <= WAL_HEADER_SIZE as u64 {
                // A WAL life with no frame yet: its header goes up with its first frames.
                return Ok(());
            }
            if end > pos.offset {
                self.upload_segment(&pos, end)?;
            }
            let next = if pos.index < target.index {
                Position::new(pos.generation.clone(), pos.index + 1, 0)
            } else {
                Position::new(pos.generation.clone(), pos.index, end)
            };
            self.pos = Some(next.clone());
            if self.has_snapshot {
                self.db.set_replica_position(self.slot, Some(next));
            }
        }
    }

    /// Uploads the shadow WAL of `pos.index` from `pos.offset` to `end` as one segment.
    fn upload_segment(&mut self, pos: &Position, end: u64) -> Result<()> {
        let started = Instant::now();
        let path = self.db.shadow_wal_path(&pos.generation, pos.index);
        // Never through a link: the meta dir is the db owner's, and a link swapped in for the
        // shadow file would have us upload a file of root's to the replica.
        let mut f = crate::files::open_existing(&path, false)
            .with_context(|| format!("{}: cannot open shadow wal", path.display()))?;
        f.seek(SeekFrom::Start(pos.offset))?;
        let raw = f.take(end - pos.offset);
        // A small segment (the usual case) is compressed into memory first, so the encoder
        // (a few hundred KiB of deflate state) lives for microseconds, not through the write,
        // fsync and rename or the PUT: with a hundred databases syncing together, encoders
        // held across I/O were most of the daemon's peak memory. Larger segments stream.
        let mut data: Box<dyn Read + Send> = if end - pos.offset <= SMALL_SEGMENT {
            let mut compressed = Vec::new();
            encryption::encrypt(&self.keys, codec::encoder(self.cfg.compression, raw)?)?
                .read_to_end(&mut compressed)
                .with_context(|| format!("{}: cannot read shadow wal", path.display()))?;
            Box::new(io::Cursor::new(compressed))
        } else {
            encryption::encrypt(&self.keys, codec::encoder(self.cfg.compression, raw)?)?
        };
        let info = self
            .client
            .write_wal_segment(
                &pos.generation,
                pos.index,
                pos.offset,
                self.cfg.compression,
                &mut data,
            )
            .with_context(|| {
                format!(
                    "replica {}: cannot write wal segment {}",
                    self.cfg.name,
                    layout::wal_segment_stem(pos.index, pos.offset)
                )
            })?;
        self.last_upload = Some(self.task_started);
        self.db
            .metrics
            .replica_wal_bytes(self.slot, end - pos.offset);
        self.db.metrics.replica_position(self.slot, pos.index, end);
        if logging::enabled(crate::config::LogLevel::Debug) {
            logging::debug(
                "wal segment written",
                &[
                    ("db", &self.db_label()),
                    ("replica", &self.cfg.name),
                    ("position", pos),
                    ("bytes", &(end - pos.offset)),
                    ("size", &info.size),
                    ("elapsed", &format!("{:?}", started.elapsed())),
                ],
            );
        }
        Ok(())
    }
}

/// Reads the shared db file descriptor with `pread`, so no descriptor of the db file is
/// ever opened and closed here (see `DbShared::db_file`).
struct PositionalReader {
    file: Arc<File>,
    offset: u64,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// When the next sync may run: at `retry_at` after a failure; else a `sync_interval` after
/// `last_upload`, the start of the last sync that uploaded (so a cycle lasts the interval
/// however long its upload took, and one that took longer is followed at once); else `now`.
/// Dated from the upload's end instead, each cycle under a heavy writer was the interval plus
/// the upload, and lag p99 1.65 s at the default 1 s (issue 23).
fn sync_due(
    retry_at: Option<Instant>,
    last_upload: Option<Instant>,
    sync_interval: Duration,
    now: Instant,
) -> Instant {
    match (retry_at, last_upload) {
        (Some(t), _) => t,
        (None, Some(last)) => last + sync_interval,
        (None, None) => now,
    }
}

/// Segments up to this size are compressed in memory before they are written.
const SMALL_SEGMENT: u64 = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::client::file::FileClient;
    use crate::client::{Listing, WalSegmentInfo};
    use crate::codec::Compression;
    use crate::config::{ReplicaConfig, ReplicaTarget};
    use crate::metrics::DbMetrics;
    use std::sync::Mutex;

    /// A file replica whose WAL segment writes take 20 ms (a store at some distance), and
    /// which records when the first one began.
    struct SlowStore {
        inner: FileClient,
        first_write: Mutex<Option<Instant>>,
    }

    impl ReplicaClient for SlowStore {
        fn kind(&self) -> &'static str {
            self.inner.kind()
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn list_generations(&self) -> Result<Listing<String>> {
            self.inner.list_generations()
        }
        fn list_snapshots(&self, generation: &str) -> Result<Listing<SnapshotInfo>> {
            self.inner.list_snapshots(generation)
        }
        fn list_wal_segments(&self, generation: &str) -> Result<Listing<WalSegmentInfo>> {
            self.inner.list_wal_segments(generation)
        }
        fn write_snapshot(
            &self,
            generation: &str,
            index: u32,
            compression: Compression,
            data: &mut dyn Read,
        ) -> Result<SnapshotInfo> {
            self.inner
                .write_snapshot(generation, index, compression, data)
        }
        fn write_wal_segment(
            &self,
            generation: &str,
            index: u32,
            offset: u64,
            compression: Compression,
            data: &mut dyn Read,
        ) -> Result<WalSegmentInfo> {
            self.first_write
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
            std::thread::sleep(Duration::from_millis(20));
            self.inner
                .write_wal_segment(generation, index, offset, compression, data)
        }
        fn open_snapshot(&self, info: &SnapshotInfo) -> Result<Box<dyn Read + Send>> {
            self.inner.open_snapshot(info)
        }
        fn open_wal_segment(&self, info: &WalSegmentInfo) -> Result<Box<dyn Read + Send>> {
            self.inner.open_wal_segment(info)
        }
        fn delete_generation(&self, generation: &str) -> Result<()> {
            self.inner.delete_generation(generation)
        }
        fn delete_snapshots(&self, snapshots: &[SnapshotInfo]) -> Result<()> {
            self.inner.delete_snapshots(snapshots)
        }
        fn delete_wal_segments(&self, segments: &[WalSegmentInfo]) -> Result<()> {
            self.inner.delete_wal_segments(segments)
        }
    }

    /// Issue 23, point 5: under a heavy writer each cycle was the sync-interval plus the
    /// upload, because the next sync was dated from the upload's end. Asserted on the order of
    /// instants, not on durations: the next sync is due no later than a sync-interval after
    /// the upload began (before the fix: a sync-interval after it ended, 20 ms later).
    #[test]
    fn the_next_sync_is_due_an_interval_after_the_last_one_began() {
        let dir = tempfile::tempdir().unwrap();
        let generation = "0123456789abcdef";
        let metrics = Arc::new(DbMetrics::new("/a.db".into(), &["file".into()]));
        let db = Arc::new(DbShared::new(
            dir.path().join("a.db"),
            dir.path().join("meta"),
            1,
            metrics,
        ));
        // The shadow WAL as the db thread leaves it: a header and one frame (the replica
        // uploads bytes; it does not parse them).
        let shadow = db.shadow_wal_path(generation, 0);
        std::fs::create_dir_all(shadow.parent().unwrap()).unwrap();
        std::fs::write(&shadow, vec![7u8; WAL_HEADER_SIZE + 4096 + 24]).unwrap();
        let len = std::fs::metadata(&shadow).unwrap().len();
        db.publish_for_test(Position::new(generation, 0, len));

        let store = Arc::new(SlowStore {
            inner: FileClient::new(dir.path().join("replica")),
            first_write: Mutex::new(None),
        });
        let cfg = ReplicaConfig::with_defaults(ReplicaTarget::File {
            path: dir.path().join("replica"),
        });
        let interval = cfg.sync_interval;
        let mut replica = Replica::new(
            0,
            cfg,
            store.clone(),
            Arc::new(Keys::default()),
            db,
            Arc::new(Semaphore::new(1)),
        );
        replica.pos = Some(Position::new(generation, 0, 0));
        replica.has_snapshot = true;

        replica.sync().unwrap();
        assert_eq!(replica.pos, Some(Position::new(generation, 0, len)));
        let began = store
            .first_write
            .lock()
            .unwrap()
            .expect("a segment was written");
        let due = sync_due(None, replica.last_upload, interval, Instant::now());
        assert!(
            due <= began + interval,
            "next sync due {:?} after the upload began, more than the sync-interval {interval:?}",
            due - began
        );
    }

    #[test]
    fn sync_due_prefers_the_retry_and_runs_at_once_before_any_upload() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(sync_due(None, None, second, now), now);
        assert_eq!(sync_due(None, Some(now), second, now), now + second);
        let retry = now + Duration::from_secs(5);
        assert_eq!(sync_due(Some(retry), Some(now), second, now), retry);
    }

    #[test]
    fn store_backoff_grows_and_caps() {
        let mut b = store_backoff();
        let seen: Vec<Duration> = (0..10).map(|_| b.next_wait()).collect();
        assert!(seen[0] >= Duration::from_millis(750) && seen[0] <= Duration::from_millis(1250));
        assert!(seen.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(seen[9] >= Duration::from_secs(20));
    }
}
