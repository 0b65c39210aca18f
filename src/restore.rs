//! Restore (SPEC §6): pick a replica, generation, snapshot and WAL segments, then rebuild the
//! database beside its final path and move it into place only once it is proven sound.
//!
//! Choosing is pure ([`choose`] over listings, unit-tested); applying touches only files named
//! after the output (a temp `<out>.tmp-<pid>-<n>` it created new, and SQLite's `-wal`/`-shm` beside it while it checks it) and
//! never the output itself until the final no-clobber link. Every WAL frame is verified (salts
//! and checksum chain) before its page is written, and a segment that breaks contiguity or ends
//! inside a transaction fails the whole restore, temp file removed: SQLite's own WAL recovery
//! would silently stop at the first bad frame and turn a corrupt replica into a shorter
//! database instead of an error. Memory is bounded: objects stream through their decoders
//! into a few fixed-size buffers; WAL indexes are decoded at most `-parallelism` ahead of the
//! one being applied, two chunks each. From a remote store (S3) each of those indexes is first
//! downloaded whole, still compressed, into an anonymous spool file beside the output, so the
//! downloads run in parallel instead of at the pace of the applier; disk use is then bounded
//! by the compressed size of `-parallelism` indexes, and nothing of it survives the process.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::backoff::{Backoff, Growth};
use crate::client::{self, ReplicaClient, SnapshotInfo, WalSegmentInfo};
use crate::codec::{self, read_full, Compression};
use crate::encryption::{Keys, Objects};
use crate::files;
use crate::layout;
use crate::logging;
use crate::sqlite::{self, CheckpointMode};
use crate::sync::{lock, wait};
use crate::wal::{self, FrameHeader, FrameVerifier, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

/// What to restore; all optional filters.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this replica (by name); `None` = every replica given.
    pub replica: Option<String>,
    /// Only this generation; `None` = the one with the newest object (see [`choose`]).
    pub generation: Option<String>,
    /// Restore up to and including this WAL index (needs `generation`).
    pub index: Option<u32>,
    /// Restore the state as of this moment (exclusive with `index`).
    pub timestamp: Option<SystemTime>,
    /// Indexes downloaded at once (and decoded ahead of the one being applied).
    pub parallelism: usize,
}

/// A replica to restore from.
pub struct Source {
    /// The replica's name, as `-replica` selects it and messages name it.
    pub name: String,
    /// Its store.
    pub client: Arc<dyn ReplicaClient>,
    /// Its `age:` keys (`Keys::default()` for a replica written in the clear).
    pub keys: Arc<Keys>,
}

/// One generation of one replica as listed.
#[derive(Clone, Debug)]
pub struct GenerationListing {
    /// Position of the replica in the sources.
    pub replica: usize,
    /// The generation id.
    pub generation: String,
    /// Its snapshots, sorted by index.
    pub snapshots: Vec<SnapshotInfo>,
    /// Its WAL segments, sorted by (index, offset).
    pub segments: Vec<WalSegmentInfo>,
}

impl GenerationListing {
    /// (earliest, latest) object timestamp; `None` for an empty generation.
    pub(crate) fn bounds(&self) -> Option<(SystemTime, SystemTime)> {
        let times = self
            .snapshots
            .iter()
            .map(|s| s.created)
            .chain(self.segments.iter().map(|s| s.created));
        times.fold(None, |acc, t| match acc {
            None => Some((t, t)),
            Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
        })
    }
}

/// What will be restored: a snapshot and the WAL indexes to apply on top of it, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Position of the chosen replica in the sources.
    pub replica: usize,
    /// The chosen generation.
    pub generation: String,
    /// The snapshot the database is rebuilt from.
    pub snapshot: SnapshotInfo,
    /// Indexes from the snapshot's upward, each with its segments in offset order.
    pub indexes: Vec<(u32, Vec<WalSegmentInfo>)>,
}

impl Plan {
    /// The last index applied (the snapshot's when no WAL follows it).
    pub(crate) fn last_index(&self) -> u32 {
        self.indexes
            .last()
            .map(|(i, _)| *i)
            .unwrap_or(self.snapshot.index)
    }
}

/// Picks the generation, snapshot and segments (SPEC §6 steps 1–3). `Ok(None)`: nothing
/// matches. `Err`: a match exists but its WAL has a hole, which must never restore silently
/// to an earlier state.
///
/// Generations qualify when they began at or before `-timestamp` (a moment after the last
/// upload restores the latest state) and hold a snapshot usable for the filters; the one whose
/// last object is newest wins, across replicas too (ties: the earlier replica, then the
/// larger generation id).
pub fn choose(listings: &[GenerationListing], opts: &Options) -> Result<Option<Plan>> {
    let mut best: Option<(&GenerationListing, &SnapshotInfo, SystemTime)> = None;
    for g in listings {
        if opts
            .generation
            .as_deref()
            .is_some_and(|want| want != g.generation)
        {
            continue;
        }
        let Some((start, end)) = g.bounds() else {
            continue;
        };
        if opts.timestamp.is_some_and(|t| start > t) {
            continue;
        }
        let Some(snapshot) = pick_snapshot(&g.snapshots, opts) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some((b, _, b_end)) => {
                end > *b_end
                    || (end == *b_end && g.replica == b.replica && g.generation > b.generation)
            }
        };
        if better {
            best = Some((g, snapshot, end));
        }
    }
    let Some((g, snapshot, _)) = best else {
        return Ok(None);
    };

    let mut by_index: BTreeMap<u32, Vec<WalSegmentInfo>> = BTreeMap::new();
    for s in &g.segments {
        if s.index < snapshot.index || opts.index.is_some_and(|i| s.index > i) {
            continue;
        }
        if opts.timestamp.is_some_and(|t| s.created > t) {
            continue;
        }
        by_index.entry(s.index).or_default().push(s.clone());
    }
    let mut indexes = Vec::with_capacity(by_index.len());
    let mut expected = snapshot.index;
    for (index, mut segments) in by_index {
        // The same segment stored twice, as `.gz` and `.lz4` (a replica copied from another
        // tool, or re-compressed): the copies hold the same bytes, so one is read, always the
        // same one: gzip, what this tool writes by default (Litestream v0.3 writes `.lz4`, so
        // a pair means our daemon wrote the `.gz`). Any damage in it still fails its checks.
        segments.sort_by_key(|s| (s.offset, s.compression != Compression::Gzip));
        segments.dedup_by_key(|s| s.offset);
        if index != expected {
            bail!(
                "missing WAL index {expected:08x} in generation {} (segments of index {index:08x} follow it); the replica cannot restore past {:08x}",
                g.generation,
                expected.saturating_sub(1).max(snapshot.index)
            );
        }
        if segments[0].offset != 0 {
            bail!(
                "missing WAL segment {}: index {index:08x} starts at offset {}",
                layout::wal_segment_key(&g.generation, index, 0, segments[0].compression),
                segments[0].offset
            );
        }
        indexes.push((index, segments));
        expected = index.saturating_add(1);
    }
    let plan = Plan {
        replica: g.replica,
        generation: g.generation.clone(),
        snapshot: snapshot.clone(),
        indexes,
    };
    if let Some(want) = opts.index {
        if plan.last_index() < want {
            bail!(
                "generation {} has no WAL index {want:08x}: its last index is {:08x} (snapshot at {:08x}); choose an index from {:08x} to {:08x}",
                g.generation,
                plan.last_index(),
                plan.snapshot.index,
                plan.snapshot.index,
                plan.last_index()
            );
        }
    }
    Ok(Some(plan))
}

/// With `-index I`: the highest snapshot at or below I. With `-timestamp T`: the latest
/// created at or before T. Otherwise the latest.
fn pick_snapshot<'a>(snapshots: &'a [SnapshotInfo], opts: &Options) -> Option<&'a SnapshotInfo> {
    snapshots
        .iter()
        .filter(|s| opts.index.is_none_or(|i| s.index <= i))
        .filter(|s| opts.timestamp.is_none_or(|t| s.created <= t))
        .max_by_key(|s| (s.index, s.compression == Compression::Gzip, s.created))
}

/// Lists every generation of every source (filtered by `-replica` and `-generation`).
/// Refuses a replica that holds names this tool never writes (see [`client::Listing`]): a
/// restore must not guess around objects of unknown origin.
pub fn list(sources: &[Source], opts: &Options) -> Result<Vec<GenerationListing>> {
    let mut out = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        if opts.replica.as_deref().is_some_and(|r| r != src.name) {
            continue;
        }
        let ctx = |what: &str| format!("replica {}: cannot list {what}", src.name);
        let mut foreign = Vec::new();
        let generations = src
            .client
            .list_generations()
            .with_context(|| ctx("generations"))?;
        foreign.extend(generations.foreign);
        for generation in generations.items {
            if opts.generation.as_deref().is_some_and(|g| g != generation) {
                continue;
            }
            let snapshots = src
                .client
                .list_snapshots(&generation)
                .with_context(|| ctx("snapshots"))?;
            let segments = src
                .client
                .list_wal_segments(&generation)
                .with_context(|| ctx("WAL segments"))?;
            foreign.extend(snapshots.foreign);
            foreign.extend(segments.foreign);
            out.push(GenerationListing {
                replica: i,
                generation,
                snapshots: snapshots.items,
                segments: segments.items,
            });
        }
        if let Some(first) = foreign.first() {
            bail!(
                "replica {} ({}) holds {} name(s) that litestream never writes, e.g. \"{}\"; refusing to restore from it (inspect the replica and remove them)",
                src.name,
                src.client.describe(),
                foreign.len(),
                layout::display_name(first)
            );
        }
    }
    Ok(out)
}

/// The temp files of a restore to `out`: a database under a name of its own, and the
/// `-wal`/`-shm` SQLite puts beside it while it checks it.
struct TempPaths {
    db: PathBuf,
    wal: PathBuf,
    shm: PathBuf,
    dir: PathBuf,
    stem: String,
}

/// Temp names drawn in this process, so two draws within one clock tick still differ.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempPaths {
    /// Creates the temp database beside `out` under a name no one else uses
    /// (`<out>.tmp-<pid>-<n>`), created new (never an existing file, never through a link),
    /// with no `-wal` or `-shm` of that name already there: every file of a restore is one
    /// it created, so it removes only those. The name is taken from `out`'s last component,
    /// so an output ending in `..` is refused.
    fn create(out: &Path) -> Result<(TempPaths, File)> {
        let name = out
            .file_name()
            .ok_or_else(|| anyhow!("{}: output path has no file name", out.display()))?
            .to_string_lossy()
            .into_owned();
        let dir = files::parent_dir(out).to_path_buf();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for _ in 0..16 {
            let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let stem = format!(
                "{name}.tmp-{}-{:x}",
                std::process::id(),
                nanos ^ (n as u32).wrapping_mul(0x9e37_79b9)
            );
            let db = dir.join(&stem);
            let t = TempPaths {
                wal: files::wal_path(&db),
                shm: files::shm_path(&db),
                db,
                dir: dir.clone(),
                stem,
            };
            if fs::symlink_metadata(&t.wal).is_ok() || fs::symlink_metadata(&t.shm).is_ok() {
                continue;
            }
            match files::create_new(&t.db, 0o600) {
                Ok(f) => {
                    signal_cleanup::remember(&t);
                    return Ok((t, f));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("every temp name was taken"))
            .context(format!(
                "{}: cannot create the restore's temp file",
                dir.display()
            )))
    }

    /// Removes the files of this restore (SQLite's `-wal` and `-shm` exist only if our
    /// integrity check created them: none were there when the temp name was drawn).
    fn remove_all(&self) {
        for p in [&self.db, &self.wal, &self.shm] {
            let _ = fs::remove_file(p);
        }
    }
}

/// SIGINT/SIGTERM during `litestream restore`: the handler removes the temp files this
/// restore created (`unlink` is async-signal-safe) and exits at once, 128 + the signal, so
/// an interrupted restore leaves nothing, even while a download is blocked.
pub mod signal_cleanup {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

    /// The temp paths (a leaked, NUL-terminated list) the handler removes; null before any.
    static PATHS: AtomicPtr<Vec<CString>> = AtomicPtr::new(std::ptr::null_mut());
    static ENABLED: AtomicBool = AtomicBool::new(false);
    /// Follow mode: the first signal only asks the follower to stop after the transaction
    /// it is applying (`stop_requested`), or, during its initial restore, once that restore
    /// is done and recorded; a second one exits as a plain restore does.
    static GRACEFUL: AtomicBool = AtomicBool::new(false);
    static STOP: AtomicBool = AtomicBool::new(false);

    /// From now on the first SIGINT/SIGTERM sets `stop_requested` instead of exiting.
    pub fn graceful() {
        GRACEFUL.store(true, Ordering::SeqCst);
    }

    /// Whether a signal asked follow mode to stop.
    pub fn stop_requested() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    /// Installs the handlers (the restore command only: the daemon's validations run
    /// restores under its own signal handling).
    pub fn install() -> anyhow::Result<()> {
        ENABLED.store(true, Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only loads an atomic, reads memory that is never freed,
            // and calls unlink and _exit, which are async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    let p = PATHS.load(Ordering::SeqCst);
                    if !p.is_null() {
                        for c in (*p).iter() {
                            libc::unlink(c.as_ptr());
                        }
                    }
                    libc::_exit(128 + sig);
                })
            }
            .map_err(|e| anyhow::anyhow!("cannot handle signal {sig}: {e}"))?;
        }
        Ok(())
    }

    pub(super) fn remember(t: &super::TempPaths) {
        if !ENABLED.load(Ordering::SeqCst) {
            return;
        }
        let list: Vec<CString> = [&t.db, &t.wal, &t.shm]
            .iter()
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect();
        // Leaked on purpose: the handler may read it at any moment until the process ends.
        let old = PATHS.swap(Box::into_raw(Box::new(list)), Ordering::SeqCst);
        let _ = old; // a previous list stays valid memory too
    }
}

/// Refuses an output that exists, or that SQLite would combine with a leftover `-wal`.
pub fn check_output(out: &Path) -> Result<()> {
    if fs::symlink_metadata(out).is_ok() {
        return Err(output_exists(out));
    }
    for p in [files::wal_path(out), files::shm_path(out)] {
        if fs::symlink_metadata(&p).is_ok() {
            bail!(
                "cannot restore, {} exists beside the output path and SQLite would apply it to the restored database (move it away first)",
                p.display()
            );
        }
    }
    Ok(())
}

/// The refusal of an output path that is already taken (before the restore, or by a file
/// that appeared there while it ran): a restore never replaces anything.
fn output_exists(out: &Path) -> anyhow::Error {
    anyhow!(
        "cannot restore, output path already exists: {}",
        out.display()
    )
}

/// Builds the database of `plan` at `out`. On error nothing is left at `out` or beside it.
/// Everything is written owner-only while it is built; the finished file gets `mode` (the
/// original db's, when known), else stays 0600: a backup never widens who can read the data.
pub fn apply(
    client: &Arc<dyn ReplicaClient>,
    keys: &Arc<Keys>,
    plan: &Plan,
    out: &Path,
    parallelism: usize,
    mode: Option<u32>,
) -> Result<Restored> {
    let objects = Objects::new(keys.clone());
    // The snapshot's download starts here, before anything is created: an encrypted replica
    // without its identity (or with the wrong one) fails on its age header. The decoder
    // thread reads on from the same stream.
    let snapshot = open_snapshot(client.as_ref(), &objects, &plan.snapshot)?;
    let dir = files::parent_dir(out);
    fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create output directory", dir.display()))?;
    let (tmp, file) = TempPaths::create(out)?;
    let result = build(
        client,
        &objects,
        snapshot,
        plan,
        &tmp,
        file,
        parallelism.max(1),
    )
    .and_then(|(file, restored)| {
        let mode = mode.unwrap_or(0o600) & 0o7777;
        // Through the descriptor: by name, a link swapped in for the temp file would be
        // chmod'ed instead.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot set mode {mode:o}", tmp.db.display()))?;
        publish(&tmp.db, out, &file)?;
        inherit_db_id(client, &plan.generation, out, mode);
        Ok(restored)
    });
    tmp.remove_all();
    result
}

/// Gives the restored db the identity (`db::identity`) of the db that wrote the generation
/// it came from, in its default meta dir: it is that db's continuation, so replicating it
/// back to the same replica (the normal recovery) must not find the replica's generations
/// foreign. Any id already there goes: nothing was at `out`, so it was not this db's. Only
/// a nicety: a failure is a warning, the restore stands.
fn inherit_db_id(client: &Arc<dyn ReplicaClient>, generation: &str, out: &Path, mode: u32) {
    let result = (|| -> Result<()> {
        let Some(id) = client.read_db_id(generation)? else {
            return Ok(());
        };
        let meta = crate::config::default_meta_dir(out);
        if meta.exists() {
            files::check_dir(&meta, None)?;
        } else {
            files::create_dir_all(&meta, files::dir_mode_for(mode), None)?;
        }
        crate::db::identity::store(&meta, &id, mode)
    })();
    if let Err(e) = result {
        logging::warn(
            "restored database keeps no identity: replicating it back to this replica will warn of the replica's generations as another database's",
            &[("path", &out.display()), ("error", &format!("{e:#}"))],
        );
    }
}

/// Verified WAL frames a worker hands the applier at once: large enough that each hand-off
/// costs little (one channel message, a few positional writes), small enough that
/// `parallelism` indexes decoded ahead fit the memory budget (each holds at most two).
const WAL_CHUNK: usize = 256 * 1024;
/// Snapshot bytes per write: few syscalls, and `SNAPSHOT_BUFFERS` of them stay a small part
/// of the memory budget.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Snapshot buffers: one being decoded into, one being written, one waiting between them.
const SNAPSHOT_BUFFERS: usize = 3;

/// The snapshot's stored bytes, opened through `objects` (decrypting an age object), with the
/// download's own retries (`Resumable`).
fn open_snapshot<'a>(
    client: &'a dyn ReplicaClient,
    objects: &Objects,
    info: &'a SnapshotInfo,
) -> Result<Box<dyn Read + Send + 'a>> {
    let key = layout::snapshot_key(&info.generation, info.index, info.compression);
    logging::info("restoring snapshot", &[("snapshot", &key)]);
    let raw = Resumable::open(&key, info.size, move |at| client.open_snapshot_at(info, at))
        .with_context(|| format!("cannot read snapshot {key}"))?;
    objects.open(&key, raw)
}

/// Builds the database at `tmp.db`: one thread decodes the snapshot
/// (`snapshot`, already opened by `apply`), up to `parallelism`
/// workers download, decode and verify the WAL indexes ahead (at most `parallelism` beyond
/// the one being applied, each holding at most two chunks), and this thread writes the
/// snapshot, then each index's pages in order, straight into the file with positional
/// writes. Nothing is fsynced until the end: the file is a temp file that only becomes the
/// output once it is whole, checked and fsynced (`finish`, `publish`).
#[allow(clippy::too_many_arguments)]
fn build(
    client: &Arc<dyn ReplicaClient>,
    objects: &Objects,
    snapshot: Box<dyn Read + Send + '_>,
    plan: &Plan,
    tmp: &TempPaths,
    file: File,
    parallelism: usize,
) -> Result<(File, Restored)> {
    let n = plan.indexes.len();
    // A file replica reads as fast as it decodes: streaming is best. Over a network, a worker
    // reading only as fast as the applier consumes serialises the downloads; spooling each
    // index lets them all proceed at once.
    let spool = client.is_remote().then_some(SpoolDir {
        dir: tmp.dir.as_path(),
        stem: tmp.stem.as_str(),
    });
    let window = Window::new(n, parallelism);
    let abort = AtomicBool::new(false);
    let pool = BufferPool::new(parallelism);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| {
            let (tx, rx) = bounded::<WalMsg>(1);
            (Some(tx), rx)
        })
        .unzip();
    // A worker takes its index's sender, so the channel closes when the worker is done with
    // it, whatever happened: the applier never waits on a sender nobody holds.
    let senders = Mutex::new(senders);
    let restored = std::thread::scope(|scope| -> Result<Restored> {
        let (snap_tx, snap_rx) = bounded::<SnapMsg>(1);
        // The snapshot's buffers circulate between the decoder and the writer: a fixed set,
        // so the steady state allocates (and page-faults) nothing.
        let (free_tx, free_rx) = bounded::<Vec<u8>>(SNAPSHOT_BUFFERS);
        for _ in 0..SNAPSHOT_BUFFERS - 1 {
            let _ = free_tx.try_send(vec![0u8; SNAPSHOT_CHUNK]);
        }
        // Joined explicitly below: the scope's own wait ends when each closure returns, while
        // the thread may still be running its thread-local destructors (seen by the fuzzer's
        // leak checker); joining waits for the threads themselves to exit.
        let mut threads = Vec::with_capacity(parallelism.min(n) + 1);
        threads
            .push(scope.spawn(move || decode_snapshot(snapshot, &plan.snapshot, snap_tx, free_rx)));
        for _ in 0..parallelism.min(n) {
            let (window, abort, senders, pool) = (&window, &abort, &senders, &pool);
            let spool = spool.as_ref();
            threads.push(scope.spawn(move || {
                wal_worker(
                    client.as_ref(),
                    objects,
                    plan,
                    window,
                    senders,
                    pool,
                    abort,
                    spool,
                )
            }));
        }
        // The receivers move into `apply_all` and are dropped when it returns, so on an
        // error every worker blocked on a full channel wakes up and stops.
        let result = apply_all(
            &file, &tmp.db, plan, snap_rx, free_tx, receivers, &window, &pool,
        );
        if result.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        window.close();
        for t in threads {
            // Joined by hand, a panicking worker is no longer re-raised by the scope.
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    })?;
    finish(&tmp.db, &file)?;
    Ok((file, restored))
}

/// One WAL worker: takes the next index the window hands out, with that index's sender, and
/// streams it; once the restore is aborted it only drops the senders it takes, so the
/// applier never waits on an index nobody works on.
#[allow(clippy::too_many_arguments)]
fn wal_worker(
    client: &dyn ReplicaClient,
    objects: &Objects,
    plan: &Plan,
    window: &Window,
    senders: &Mutex<Vec<Option<Sender<WalMsg>>>>,
    pool: &BufferPool,
    abort: &AtomicBool,
    spool: Option<&SpoolDir<'_>>,
) {
    while let Some(k) = window.next_job() {
        let tx = lock(senders).get_mut(k).and_then(Option::take);
        let Some(tx) = tx else { continue };
        if abort.load(Ordering::SeqCst) {
            continue;
        }
        let (index, segments) = &plan.indexes[k];
        stream_index(
            client,
            objects,
            &plan.generation,
            *index,
            segments,
            &tx,
            pool,
            abort,
            spool,
        );
    }
}

/// The applier: the snapshot, then every WAL index strictly in order.
#[allow(clippy::too_many_arguments)]
fn apply_all(
    file: &File,
    db: &Path,
    plan: &Plan,
    snapshot: Receiver<SnapMsg>,
    free: Sender<Vec<u8>>,
    indexes: Vec<Receiver<WalMsg>>,
    window: &Window,
    pool: &BufferPool,
) -> Result<Restored> {
    let page_size = write_snapshot(file, db, snapshot, free)?;
    let mut previous: Option<WalHeader> = None;
    let mut end = WalEnd {
        offset: 0,
        chain: None,
        compression: None,
    };
    for (k, rx) in indexes.into_iter().enumerate() {
        let (index, segments) = &plan.indexes[k];
        let first = segments
            .first()
            .map(|s| layout::wal_segment_key(&plan.generation, *index, s.offset, s.compression));
        apply_wal_index(
            file,
            db,
            page_size,
            rx,
            &plan.generation,
            *index,
            first.as_deref().unwrap_or("?"),
            pool,
            &mut previous,
            &mut end,
        )?;
        window.applied(k);
    }
    Ok(Restored {
        generation: plan.generation.clone(),
        index: plan.last_index(),
        header: if end.chain.is_some() { previous } else { None },
        end,
    })
}

/// From the snapshot decoder to the applier.
enum SnapMsg {
    /// The next `.1` bytes of the database, in a buffer of `SNAPSHOT_CHUNK`.
    Data(Vec<u8>, usize),
    /// The whole snapshot was delivered; its page size.
    Done(u32),
    Failed(anyhow::Error),
}

/// Decodes the snapshot into `tx` (buffers come back through `free`). Runs on its own thread
/// so decompression never waits for a write, nor a write for decompression.
fn decode_snapshot(
    raw: Box<dyn Read + Send + '_>,
    info: &SnapshotInfo,
    tx: Sender<SnapMsg>,
    free: Receiver<Vec<u8>>,
) {
    let msg = match decode_snapshot_into(raw, info, &tx, &free) {
        Ok(page_size) => SnapMsg::Done(page_size),
        Err(e) => SnapMsg::Failed(e),
    };
    // The applier is gone when this fails: it stopped on an error of its own.
    let _ = tx.send(msg);
}

fn decode_snapshot_into(
    raw: Box<dyn Read + Send + '_>,
    info: &SnapshotInfo,
    tx: &Sender<SnapMsg>,
    free: &Receiver<Vec<u8>>,
) -> Result<u32> {
    let key = layout::snapshot_key(&info.generation, info.index, info.compression);
    let compression = info.compression;
    let mut reader =
        codec::decoder(compression, raw).with_context(|| format!("cannot read snapshot {key}"))?;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    const HEADER: usize = 100;
    let n = read_full(&mut reader, &mut buf[..HEADER])
        .with_context(|| format!("snapshot {key}: cannot decompress"))?;
    if n < HEADER || &buf[..16] != b"SQLite format 3\0" {
        bail!("snapshot {key} is not a SQLite database (bad header); the replica is corrupt");
    }
    let page_size = wal::db_page_size(&buf[..HEADER])
        .ok_or_else(|| anyhow!("snapshot {key}: bad page size in header"))?;
    // SQLite sizes a database by its header, and every database in WAL mode (SQLite 3.7.0
    // or later) keeps that field valid; so we copy exactly that much. This also bounds what
    // a hostile snapshot (a small object that decompresses to terabytes) can make us write.
    let declared = wal::db_declared_size(&buf[..HEADER], page_size).ok_or_else(|| {
        anyhow!("snapshot {key}: its header declares no valid database size, which no WAL-mode database lacks; the replica is corrupt")
    })?;
    let mut body = reader.take(declared.saturating_sub(HEADER as u64));
    let mut total = HEADER as u64;
    let mut len = HEADER;
    loop {
        let n = read_full(&mut body, &mut buf[len..])
            .map_err(|e| anyhow!("snapshot {key}: cannot read or decompress: {e}"))?;
        len += n;
        total += n as u64;
        let eof = len < buf.len();
        if len > 0 {
            // Blocks until the writer hands a buffer back; fails only when it stopped.
            let next = free.recv().map_err(|_| anyhow!("restore stopped"))?;
            let full = std::mem::replace(&mut buf, next);
            tx.send(SnapMsg::Data(full, len))
                .map_err(|_| anyhow!("restore stopped"))?;
            len = 0;
        }
        if eof {
            break;
        }
    }
    if total == declared {
        // Bytes past the declared size are pages SQLite no longer uses (a checkpoint that
        // shrank the db could not truncate it yet); they are not read, let alone written.
        let mut probe = [0u8; 1];
        if matches!(body.into_inner().read(&mut probe), Ok(1)) {
            logging::info(
                "snapshot holds bytes past the size its header declares; ignored",
                &[("snapshot", &key), ("declared", &total)],
            );
        }
    }
    if !total.is_multiple_of(u64::from(page_size)) {
        bail!("snapshot {key}: {total} bytes is not a whole number of {page_size}-byte pages; the replica is corrupt");
    }
    Ok(page_size)
}

/// Writes the decoded snapshot at the start of `file`; returns its page size.
fn write_snapshot(
    file: &File,
    db: &Path,
    rx: Receiver<SnapMsg>,
    free: Sender<Vec<u8>>,
) -> Result<u32> {
    let mut offset = 0u64;
    loop {
        match rx.recv() {
            Ok(SnapMsg::Data(buf, len)) => {
                file.write_all_at(&buf[..len], offset)
                    .with_context(|| format!("{}: cannot write", db.display()))?;
                offset += len as u64;
                // Back to the decoder (the channel holds every buffer, so this never blocks).
                let _ = free.try_send(buf);
            }
            Ok(SnapMsg::Done(page_size)) => return Ok(page_size),
            Ok(SnapMsg::Failed(e)) => return Err(e),
            Err(_) => bail!("the snapshot decoder stopped without a result"),
        }
    }
}

/// From a WAL worker to the applier, for one index.
enum WalMsg {
    /// Verified frames (`.len` bytes of `buf`, whole frames) of the WAL with this header.
    Frames {
        header: WalHeader,
        buf: Vec<u8>,
        len: usize,
    },
    /// Every segment of the index was delivered and verified; the WAL's header, if it had
    /// one, and where the index ended.
    End(Option<WalHeader>, WalEnd),
    Failed(anyhow::Error),
}

/// Chunk buffers handed back by the applier for workers to reuse, so steady state allocates
/// (and page-faults) nothing. Only a cache: memory is bounded by the channels and the window
/// (at most two chunks per index in flight), and the pool keeps no more than that.
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    fn new(parallelism: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            keep: 2 * parallelism + 1,
        }
    }

    fn take(&self) -> Vec<u8> {
        let reused = lock(&self.free).pop();
        reused.unwrap_or_else(|| vec![0u8; WAL_CHUNK])
    }

    fn give(&self, buf: Vec<u8>) {
        let mut v = lock(&self.free);
        if v.len() < self.keep {
            v.push(buf);
        }
    }
}

/// Downloads, decodes and verifies one index's segments into `tx`, ending with `End` or
/// `Failed`. With `spool`, the index is downloaded whole into a spool file first.
#[allow(clippy::too_many_arguments)]
fn stream_index(
    client: &dyn ReplicaClient,
    objects: &Objects,
    generation: &str,
    index: u32,
    segments: &[WalSegmentInfo],
    tx: &Sender<WalMsg>,
    pool: &BufferPool,
    abort: &AtomicBool,
    spool: Option<&SpoolDir<'_>>,
) {
    let mut sink = ChunkSink {
        tx,
        pool,
        buf: Vec::new(),
        len: 0,
        header: None,
    };
    let result = stream_segments(
        client, objects, generation, index, segments, &mut sink, abort, spool,
    )
    .and_then(|end| {
        sink.flush()
            .map_err(|_| anyhow!("restore stopped"))
            .map(|()| (sink.header, end))
    });
    let msg = match result {
        Ok((header, end)) => WalMsg::End(header, end),
        Err(e) => WalMsg::Failed(e),
    };
    // The applier is gone when this fails: it stopped on an error of its own.
    let _ = tx.send(msg);
}

#[allow(clippy::too_many_arguments)]
fn stream_segments(
    client: &dyn ReplicaClient,
    objects: &Objects,
    generation: &str,
    index: u32,
    segments: &[WalSegmentInfo],
    sink: &mut ChunkSink<'_>,
    abort: &AtomicBool,
    spool: Option<&SpoolDir<'_>>,
) -> Result<WalEnd> {
    // Dropped (and so freed on disk) when this index is done, whatever happened.
    let spooled = match spool {
        Some(dir) => Some(spool_index(
            client, generation, index, segments, dir, abort,
        )?),
        None => None,
    };
    let mut stream = WalStream::new();
    for (k, seg) in segments.iter().enumerate() {
        if abort.load(Ordering::SeqCst) {
            bail!("restore stopped");
        }
        let key = layout::wal_segment_key(generation, index, seg.offset, seg.compression);
        // A segment followed by another ends exactly where that one starts: decompressing
        // more than that (a hostile, bomb-like object) is an error found after one frame.
        let limit = segments
            .get(k + 1)
            .map(|next| next.offset.saturating_sub(seg.offset));
        if seg.offset != stream.offset {
            bail!(
                "missing WAL segment before {key}: the previous segments of index {index:08x} end at offset {}",
                stream.offset
            );
        }
        let compression = seg.compression;
        let mut reader: Box<dyn Read + Send + '_> = match &spooled {
            Some(sp) => {
                let (pos, end) = sp.ranges[k];
                let raw = SpoolReader {
                    file: &sp.file,
                    pos,
                    end,
                };
                let raw = objects.open(&key, raw)?;
                codec::decoder(compression, raw)
                    .with_context(|| format!("cannot read WAL segment {key}"))?
            }
            None => {
                let raw = Resumable::open(&key, seg.size, move |at| {
                    client.open_wal_segment_at(seg, at)
                })
                .map_err(|e| segment_open_error(e, &key))?;
                let raw = objects.open(&key, raw)?;
                codec::decoder(compression, raw)
                    .with_context(|| format!("cannot read WAL segment {key}"))?
            }
        };
        stream
            .segment(&mut reader, sink, limit)
            .map_err(|e| match e {
                SegmentError::Write(e) => anyhow!("restore stopped: {e}"),
                SegmentError::Read(e) if is_corrupt(&e) => {
                    anyhow!("WAL segment {key}: cannot decompress: {e}; the replica is corrupt")
                }
                SegmentError::Read(e) => anyhow!("WAL segment {key}: cannot read: {e}"),
                SegmentError::Corrupt(msg) => {
                    anyhow!("WAL segment {key}: {msg}; the replica is corrupt")
                }
            })?;
    }
    Ok(WalEnd {
        offset: stream.offset,
        chain: stream.verifier.map(|(_, v)| v.chain()),
        compression: segments.last().map(|s| s.compression),
    })
}

/// Where a restored WAL index ended: what follow mode continues from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalEnd {
    /// Decompressed bytes of the index applied (header included): the next segment's offset.
    pub offset: u64,
    /// The checksum chain after the last frame; `None` when the index had no segment.
    pub chain: Option<(u32, u32)>,
    /// The compression of the index's last segment (the next one is looked for under it).
    pub compression: Option<Compression>,
}

/// The state a restore left the database in, as a position in the replica's WAL stream:
/// the last index applied, its header and where it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The generation restored.
    pub generation: String,
    /// The last index applied (the snapshot's when no WAL followed it).
    pub index: u32,
    /// That index's WAL header, when it had a segment.
    pub header: Option<WalHeader>,
    /// Where it ended.
    pub end: WalEnd,
}

fn segment_open_error(e: anyhow::Error, key: &str) -> anyhow::Error {
    if client::is_not_found(&e) {
        anyhow!("WAL segment {key} disappeared from the replica during the restore")
    } else {
        e.context(format!("cannot read WAL segment {key}"))
    }
}

/// Where spool files go: the output's directory, which is known to be writable and (unlike a
/// tmpfs `/tmp`) holds disk rather than memory; `stem` names the fallback files.
struct SpoolDir<'a> {
    dir: &'a Path,
    stem: &'a str,
}

/// One index's compressed segments, downloaded back to back into an anonymous file: segment
/// `k` is `ranges[k]` (start, end) of `file`.
struct Spool {
    file: File,
    ranges: Vec<(u64, u64)>,
}

/// Bytes per read of a download: few syscalls, and `-parallelism` of them stay a small part
/// of the memory budget.
const SPOOL_BUF: usize = 64 * 1024;

/// Downloads every segment of one index into a spool file, with the retry/resume of
/// [`Resumable`]. A store that sends more than the size it listed is refused after that many
/// bytes: the listed sizes are what bounds the disk a restore uses.
fn spool_index(
    client: &dyn ReplicaClient,
    generation: &str,
    index: u32,
    segments: &[WalSegmentInfo],
    dir: &SpoolDir<'_>,
    abort: &AtomicBool,
) -> Result<Spool> {
    let file = spool_file(dir)?;
    let mut buf = vec![0u8; SPOOL_BUF];
    let mut ranges = Vec::with_capacity(segments.len());
    let mut at = 0u64;
    for seg in segments {
        let key = layout::wal_segment_key(generation, index, seg.offset, seg.compression);
        let mut reader = Resumable::open(&key, seg.size, move |at| {
            client.open_wal_segment_at(seg, at)
        })
        .map_err(|e| segment_open_error(e, &key))?;
        let start = at;
        loop {
            // Checked per read so a failed restore does not finish its downloads first.
            if abort.load(Ordering::SeqCst) {
                bail!("restore stopped");
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("WAL segment {key}: cannot download: {e}"),
            };
            if at - start + n as u64 > seg.size {
                bail!(
                    "WAL segment {key}: the store sends more than the {} bytes it lists; the replica changed during the restore or the store is broken",
                    seg.size
                );
            }
            file.write_all_at(&buf[..n], at).with_context(|| {
                format!(
                    "cannot spool WAL segment {key} in {} (is the disk full?)",
                    dir.dir.display()
                )
            })?;
            at += n as u64;
        }
        ranges.push((start, at));
    }
    Ok(Spool { file, ranges })
}

/// Fallback spool files get distinct names within the process.
static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// A new read-write file in `dir` that has no name, so no error, crash or `kill -9` can leave
/// it behind: `O_TMPFILE` where the filesystem supports it; elsewhere a file created
/// exclusively and unlinked at once, whose name (`<stem>-spool-….wal`) is one that
/// [`TempPaths::remove_all`] clears should the process die between the two calls.
fn spool_file(dir: &SpoolDir<'_>) -> Result<File> {
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir.dir)
    {
        Ok(f) => return Ok(f),
        // The filesystem (or kernel) has no O_TMPFILE; anything else is a real failure.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) => {}
        Err(e) => {
            return Err(anyhow!(e).context(format!(
                "{}: cannot create a spool file for WAL downloads",
                dir.dir.display()
            )))
        }
    }
    spool_file_named(dir)
}

fn spool_file_named(dir: &SpoolDir<'_>) -> Result<File> {
    let name = format!(
        "{}-spool-{}-{}.wal",
        dir.stem,
        std::process::id(),
        SPOOL_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.dir.join(name);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("{}: cannot create spool file", path.display()))?;
    fs::remove_file(&path)
        .with_context(|| format!("{}: cannot unlink spool file", path.display()))?;
    Ok(file)
}

/// Reads `pos..end` of a spool file with positional reads (no shared file offset).
struct SpoolReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            // The file is ours and was written to `end`: shorter means the disk lost data.
            return Err(io::Error::other("spool file shorter than what was written"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A read error that means the data is bad (retrying cannot help), not that the store failed.
/// Only decoders and our own checks say this: below the decoder every failure is the store's
/// (a [`Resumable`] retries it), so a cut connection is never taken for a corrupt replica.
fn is_corrupt(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
    )
}

/// Reopens that make no progress before a download fails: stores fail transiently, and a
/// store that fails this often in a row at the same byte is reported rather than waited out.
const DOWNLOAD_ATTEMPTS: u32 = 5;

/// An object's stored (compressed) bytes, read from a store that may fail part-way. A read
/// that fails, or a stream that ends before the listed size (a connection the store or the
/// network cut: `UnexpectedEof` from the HTTP client, or a plain early end), reopens the
/// object from the byte reached (a ranged GET, a seek) after the download back-off; only
/// `DOWNLOAD_ATTEMPTS` failures in a row without a byte of progress are final. It sits below
/// the decoder, so the decoder sees one unbroken stream and only bad content is ever called
/// corrupt. A store serving other bytes on the retry is caught like any corruption: the WAL
/// checksum chain continues across the seam, and the snapshot is integrity-checked.
struct Resumable<'a> {
    what: String,
    size: u64,
    open: Box<dyn FnMut(u64) -> Result<Box<dyn Read + Send + 'a>> + Send + 'a>,
    inner: Box<dyn Read + Send + 'a>,
    pos: u64,
    /// Failures since the last byte read.
    failures: u32,
    backoff: Backoff,
}

impl<'a> Resumable<'a> {
    /// Opens the object (`size` bytes, as listed), retrying failures other than
    /// [`client::NotFound`]. `open(offset)` opens it from that byte on.
    fn open(
        what: &str,
        size: u64,
        open: impl FnMut(u64) -> Result<Box<dyn Read + Send + 'a>> + Send + 'a,
    ) -> Result<Resumable<'a>> {
        let mut open: Box<dyn FnMut(u64) -> Result<Box<dyn Read + Send + 'a>> + Send + 'a> =
            Box::new(open);
        let mut failures = 0;
        let mut backoff = download_backoff();
        let inner = loop {
            match open(0) {
                Ok(r) => break r,
                Err(e) if client::is_not_found(&e) || failures + 1 >= DOWNLOAD_ATTEMPTS => {
                    return Err(e)
                }
                Err(e) => {
                    failures += 1;
                    retry_pause(what, &mut backoff, &format!("{e:#}"));
                }
            }
        };
        Ok(Resumable {
            what: what.to_string(),
            size,
            open,
            inner,
            pos: 0,
            failures,
            backoff,
        })
    }
}

impl Read for Resumable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let err = match self.inner.read(buf) {
                Ok(0) if self.pos < self.size => io::Error::other(format!(
                    "the download ended after {} of the {} bytes the store lists",
                    self.pos, self.size
                )),
                Ok(n) => {
                    self.pos += n as u64;
                    if self.pos > self.size {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the store sends more than the {} bytes it lists; the replica changed during the restore or the store is broken",
                                self.size
                            ),
                        ));
                    }
                    if n > 0 && self.failures > 0 {
                        self.failures = 0;
                        self.backoff.reset();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.failures += 1;
            if self.failures >= DOWNLOAD_ATTEMPTS {
                // Not `UnexpectedEof` even when that is what the client said: the decoder above
                // must report a store that kept failing, not a corrupt object.
                return Err(io::Error::other(format!(
                    "download failed {} times in a row at byte {} of {}, last: {err}",
                    self.failures, self.pos, self.size
                )));
            }
            retry_pause(&self.what, &mut self.backoff, &err.to_string());
            self.inner = match (self.open)(self.pos) {
                Ok(r) => r,
                Err(e) if client::is_not_found(&e) => {
                    return Err(io::Error::other(format!(
                        "{} disappeared from the replica during the restore",
                        self.what
                    )))
                }
                Err(e) => Box::new(FailOnce(Some(io::Error::other(format!("{e:#}"))))),
            };
        }
    }
}

/// A stream that could not be reopened: its next read fails with why, so the retry loop
/// counts the failure and tries again.
struct FailOnce(Option<io::Error>);

impl Read for FailOnce {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("store read failed")))
    }
}

/// The pause before a download is tried again: 250 ms, then 500 ms. Short: restore is a person
/// waiting, and a store that fails three times in a row is reported rather than waited out.
fn download_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(250),
        Duration::from_secs(5),
        Growth::Linear,
    )
}

fn retry_pause(what: &str, backoff: &mut Backoff, error: &str) {
    let wait = backoff.next_wait();
    logging::warn(
        "download failed, retrying",
        &[
            ("object", &what),
            ("attempt", &backoff.failures()),
            ("error", &error),
        ],
    );
    std::thread::sleep(wait);
}

/// Collects verified frames into `WAL_CHUNK` buffers for the applier.
struct ChunkSink<'a> {
    tx: &'a Sender<WalMsg>,
    pool: &'a BufferPool,
    buf: Vec<u8>,
    len: usize,
    header: Option<WalHeader>,
}

impl ChunkSink<'_> {
    fn flush(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let Some(header) = self.header else {
            return Ok(());
        };
        let buf = std::mem::take(&mut self.buf);
        let len = std::mem::replace(&mut self.len, 0);
        self.tx
            .send(WalMsg::Frames { header, buf, len })
            .map_err(|_| io::Error::other("restore stopped"))
    }
}

impl FrameSink for ChunkSink<'_> {
    fn header(&mut self, header: &WalHeader, _raw: &[u8]) -> io::Result<()> {
        self.header = Some(*header);
        Ok(())
    }

    fn frame_buf(&mut self, len: usize) -> io::Result<&mut [u8]> {
        if self.len + len > self.buf.len() {
            self.flush()?;
            self.buf = self.pool.take();
            if self.buf.len() < len {
                self.buf.resize(len, 0);
            }
        }
        Ok(&mut self.buf[self.len..self.len + len])
    }

    fn keep(&mut self, len: usize) -> io::Result<()> {
        self.len += len;
        Ok(())
    }
}

/// Where [`WalStream`] puts what it verified.
trait FrameSink {
    /// The (verified) WAL header that starts the index.
    fn header(&mut self, header: &WalHeader, raw: &[u8]) -> io::Result<()>;
    /// Room for the next frame, exactly `len` bytes; it is read and verified in place.
    fn frame_buf(&mut self, len: usize) -> io::Result<&mut [u8]>;
    /// The frame last read into `frame_buf` is verified: keep it.
    fn keep(&mut self, len: usize) -> io::Result<()>;
}

/// Applies one index as it arrives: each verified frame's page is written at its place in
/// the database (runs of consecutive pages in one positional write), in frame order, so the
/// last version of each page wins; then the file takes the size the last commit declares.
/// That is what a SQLite checkpoint of the whole WAL does, without staging the WAL on disk
/// and reading it back.
#[allow(clippy::too_many_arguments)]
fn apply_wal_index(
    file: &File,
    db: &Path,
    snapshot_page_size: u32,
    rx: Receiver<WalMsg>,
    generation: &str,
    index: u32,
    first_key: &str,
    pool: &BufferPool,
    previous: &mut Option<WalHeader>,
    ended: &mut WalEnd,
) -> Result<()> {
    let prev = previous.take();
    let mut seen: Option<WalHeader> = None;
    let mut check = |header: WalHeader| -> Result<()> {
        if seen.is_some() {
            return Ok(());
        }
        seen = Some(header);
        let page_size = header.page_size;
        if page_size != snapshot_page_size {
            bail!(
                "WAL segment {first_key}: page size {page_size} differs from the snapshot's {snapshot_page_size}; the replica is corrupt"
            );
        }
        if let Some(prev) = &prev {
            if !follows(prev, &header) {
                bail!(
                    "WAL index {generation}/{index:08x} does not follow index {:08x}: its header has salt-1 {:08x}, where the WAL restart after {:08x} gives {:08x}; it comes from another database or another WAL history and the replica is corrupt (restore up to the index before with -generation {generation} -index {:08x}, or another generation)",
                    index.wrapping_sub(1),
                    header.salt1,
                    index.wrapping_sub(1),
                    prev.salt1.wrapping_add(1),
                    index.wrapping_sub(1),
                );
            }
        }
        Ok(())
    };
    let mut commit_pages: Option<u32> = None;
    let mut frames = 0u64;
    loop {
        match rx.recv() {
            Ok(WalMsg::Frames { header, buf, len }) => {
                check(header)?;
                frames += write_frames(file, &buf[..len], header.page_size, &mut commit_pages)
                    .map_err(|e| match e {
                        FramesError::PageZero => anyhow!(
                            "WAL index {generation}/{index:08x} holds a frame for page 0; the replica is corrupt"
                        ),
                        FramesError::Write(e) => anyhow!("{}: cannot write: {e}", db.display()),
                    })?;
                pool.give(buf);
            }
            Ok(WalMsg::End(header, end)) => {
                if let Some(h) = header {
                    check(h)?;
                }
                *ended = end;
                break;
            }
            Ok(WalMsg::Failed(e)) => return Err(e),
            Err(_) => bail!("the download of WAL index {index:08x} stopped without a result"),
        }
    }
    *previous = seen;
    if let Some(pages) = commit_pages {
        file.set_len(u64::from(pages) * u64::from(snapshot_page_size))
            .with_context(|| format!("{}: cannot resize", db.display()))?;
    }
    logging::info(
        "applied WAL index",
        &[
            ("generation", &generation),
            ("index", &format!("{index:08x}")),
            ("frames", &frames),
        ],
    );
    Ok(())
}

/// Whether `next` heads the WAL life right after `prev`'s, as consecutive indexes of one
/// generation must: SQLite's restart adds one to salt-1 (and draws a new salt-2). Our daemon
/// continues a generation only across such a restart (`wal::is_next_life`), and Litestream
/// v0.3.13's replicas show the same step. The checkpoint sequence is not part of the rule:
/// it usually steps by one too, but our own replicas show indexes where it stays (a WAL
/// that SQLite truncated and rewrote). Any other salt-1 means the index comes from another
/// database or another history: its frames' checksums hold on their own, so only this
/// check catches it. One exception: a fresh WAL (checkpoint sequence 0, as SQLite writes a
/// WAL it creates anew) follows any index. Our daemon continues a generation across one only
/// after a clean stop proved the db file unchanged since the previous index's end (the
/// application closed the database, deleting its WAL, while the daemon was stopped: see
/// `db::seal`); a foreign index from a restarted WAL is still refused.
fn follows(prev: &WalHeader, next: &WalHeader) -> bool {
    wal::is_next_life(prev, next) || next.checkpoint_seq == 0
}

enum FramesError {
    PageZero,
    Write(io::Error),
}

/// Writes the pages of `frames` (whole frames) into `file`; returns how many frames.
/// `commit_pages` becomes the db size of the last commit frame seen.
fn write_frames(
    file: &File,
    frames: &[u8],
    page_size: u32,
    commit_pages: &mut Option<u32>,
) -> std::result::Result<u64, FramesError> {
    let page_size = page_size as usize;
    let frame_size = FRAME_HEADER_SIZE + page_size;
    let mut run: Vec<&[u8]> = Vec::with_capacity(frames.len() / frame_size);
    let mut run_start = 0u64;
    let mut count = 0u64;
    for frame in frames.chunks_exact(frame_size) {
        let Some(fh) = FrameHeader::parse(frame) else {
            continue;
        };
        if fh.page_no == 0 {
            return Err(FramesError::PageZero);
        }
        if fh.is_commit() {
            *commit_pages = Some(fh.db_size);
        }
        let page_no = u64::from(fh.page_no);
        if run.is_empty() || run_start + run.len() as u64 != page_no || run.len() >= MAX_IOV {
            if !run.is_empty() {
                pwrite_all(file, &run, (run_start - 1) * page_size as u64)
                    .map_err(FramesError::Write)?;
                run.clear();
            }
            run_start = page_no;
        }
        run.push(&frame[FRAME_HEADER_SIZE..]);
        count += 1;
    }
    if !run.is_empty() {
        pwrite_all(file, &run, (run_start - 1) * page_size as u64).map_err(FramesError::Write)?;
    }
    Ok(count)
}

/// Slices per `pwritev` (Linux's IOV_MAX).
const MAX_IOV: usize = 1024;

/// Writes `parts` back to back at `offset` with one `pwritev` (the pages of a run sit apart in
/// the frame buffer, between frame headers; this writes them without copying them together).
fn pwrite_all(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    let written = loop {
        // SAFETY: every iovec points into a slice of `parts`, alive and unmodified for the
        // duration of the call; the count is at most MAX_IOV (callers bound `parts`).
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                off,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if written == total {
        return Ok(());
    }
    // A short write (a signal, a nearly full disk): the rest one part at a time.
    let mut at = offset;
    let mut skip = written;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
        } else {
            file.write_all_at(&p[skip..], at + skip as u64)?;
            skip = 0;
        }
        at += p.len() as u64;
    }
    Ok(())
}

enum SegmentError {
    Read(io::Error),
    Write(io::Error),
    Corrupt(String),
}

/// Follows one WAL index across its segments: header, frame chain, commit boundaries.
#[derive(Debug)]
struct WalStream {
    /// Decompressed bytes seen so far: the offset the next segment must start at.
    offset: u64,
    verifier: Option<(WalHeader, FrameVerifier)>,
    frames: u64,
}

impl WalStream {
    fn new() -> WalStream {
        WalStream {
            offset: 0,
            verifier: None,
            frames: 0,
        }
    }

    fn segment(
        &mut self,
        r: &mut dyn Read,
        sink: &mut dyn FrameSink,
        limit: Option<u64>,
    ) -> std::result::Result<(), SegmentError> {
        let start = self.offset;
        let mut limited;
        let r: &mut dyn Read = match limit {
            Some(l) => {
                limited = r.take(l.saturating_add(1));
                &mut limited
            }
            None => r,
        };
        let result = self.frames_of(r, sink);
        if let Some(l) = limit {
            if result.is_ok() && self.offset - start > l {
                return Err(SegmentError::Corrupt(format!(
                    "segment at offset {start} holds more than the {l} bytes before the next segment"
                )));
            }
        }
        result
    }

    fn frames_of(
        &mut self,
        r: &mut dyn Read,
        sink: &mut dyn FrameSink,
    ) -> std::result::Result<(), SegmentError> {
        if self.verifier.is_none() {
            let mut hdr = [0u8; WAL_HEADER_SIZE];
            let n = read_full(r, &mut hdr).map_err(SegmentError::Read)?;
            if n < WAL_HEADER_SIZE {
                return Err(SegmentError::Corrupt(format!(
                    "{n} bytes, shorter than a WAL header"
                )));
            }
            let header =
                WalHeader::parse(&hdr).map_err(|e| SegmentError::Corrupt(e.to_string()))?;
            sink.header(&header, &hdr).map_err(SegmentError::Write)?;
            self.offset += WAL_HEADER_SIZE as u64;
            self.verifier = Some((header, FrameVerifier::new(&header)));
        }
        let Some((header, verifier)) = self.verifier.as_mut() else {
            return Err(SegmentError::Corrupt("no WAL header".into()));
        };
        let frame_size = header.frame_size();
        let mut last: Option<FrameHeader> = None;
        loop {
            let frame = sink.frame_buf(frame_size).map_err(SegmentError::Write)?;
            let n = read_full(r, frame).map_err(SegmentError::Read)?;
            if n == 0 {
                break;
            }
            if n < frame_size {
                return Err(SegmentError::Corrupt(format!(
                    "torn frame at offset {} ({n} bytes)",
                    self.offset
                )));
            }
            let Some(fh) = verifier.check(frame) else {
                return Err(SegmentError::Corrupt(format!(
                    "frame at offset {} fails its salt or checksum check",
                    self.offset
                )));
            };
            sink.keep(frame_size).map_err(SegmentError::Write)?;
            self.offset += frame_size as u64;
            self.frames += 1;
            last = Some(fh);
        }
        if last.is_some_and(|fh| !fh.is_commit()) {
            return Err(SegmentError::Corrupt(format!(
                "segment ends at offset {} inside a transaction (no commit frame)",
                self.offset
            )));
        }
        Ok(())
    }
}

/// Applies a WAL at `wal_path` (`frames` committed frames) to `db` with a SQLite checkpoint
/// whose frame count must match.
fn checkpoint_wal(
    db: &Path,
    wal_path: &Path,
    shm: &Path,
    frames: u64,
    generation: &str,
    index: u32,
) -> Result<()> {
    if frames == 0 {
        return Ok(());
    }
    let conn = sqlite::open_private(db)?;
    // A fresh connection learns the db is in WAL mode (and opens the WAL) only when it first
    // reads; until then the checkpoint pragma is a no-op.
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))
        .with_context(|| {
            format!(
                "{}: cannot read restored database with WAL index {index:08x}",
                db.display()
            )
        })?;
    let checkpoint = |mode| {
        sqlite::checkpoint(&conn, mode)
            .with_context(|| format!("{}: cannot apply WAL index {index:08x}", db.display()))
    };
    // RESTART reports how many frames SQLite found and copied (TRUNCATE reports 0 once the
    // file is emptied), which proves SQLite used every frame we verified; TRUNCATE then
    // empties the WAL.
    let (busy, log, checkpointed) = checkpoint(CheckpointMode::Restart)?;
    let (busy_truncate, _, _) = checkpoint(CheckpointMode::Truncate)?;
    let busy = u8::from(busy || busy_truncate);
    drop(conn);
    if busy != 0 || log < 0 || log as u64 != frames || checkpointed != log {
        bail!(
            "{}: applying WAL index {generation}/{index:08x} checkpointed {checkpointed} of {frames} frames (busy={busy}, wal frames={log})",
            db.display(),
        );
    }
    let _ = fs::remove_file(wal_path);
    let _ = fs::remove_file(shm);
    Ok(())
}

/// Checkpoints a WAL already in place at `<db>-wal` (committed frames only, `frames` of them)
/// into `db`, with the same proof of completeness as a restore. Used by validation to rebuild
/// the local state at a position from the shadow WAL.
pub(crate) fn replay_wal_in_place(db: &Path, frames: u64) -> Result<()> {
    checkpoint_wal(
        db,
        &files::wal_path(db),
        &files::shm_path(db),
        frames,
        "local",
        0,
    )
}

/// `PRAGMA integrity_check` and fsync: only a sound database, durably on disk, leaves the
/// temp name. The fsync (writing back everything the restore wrote) runs beside the check,
/// which reads the pages back from the page cache; a second fsync afterwards covers anything
/// SQLite itself wrote while it had the file open, and costs nothing when that is nothing.
fn finish(db: &Path, file: &File) -> Result<()> {
    let (synced, checked) = std::thread::scope(|scope| {
        let sync = scope.spawn(|| file.sync_all());
        let checked = integrity_check(db);
        let synced = sync
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("fsync thread failed")));
        (synced, checked)
    });
    checked?;
    synced
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}: cannot fsync", db.display()))?;
    Ok(())
}

fn integrity_check(db: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let problems = sqlite::integrity_problems(&sqlite::open_private(db)?, db)?;
    if problems != ["ok"] {
        let first = problems.first().cloned().unwrap_or_default();
        bail!(
            "restored database fails PRAGMA integrity_check ({} problem(s), first: {first}); nothing was written",
            problems.len()
        );
    }
    logging::info(
        "integrity check passed",
        &[(
            "elapsed",
            &format!("{:.3}s", started.elapsed().as_secs_f64()),
        )],
    );
    Ok(())
}

/// Moves the finished database (`file`, built at `tmp`) to `out` without ever replacing a
/// file that appeared there meanwhile: a hard link fails if `out` exists; filesystems without
/// links fall back to a checked rename. What lands at `out` must be `file` itself: whoever can
/// write into the directory could have swapped a link in for the temp name, and `out` would
/// then be that link; it is removed again and the restore fails.
fn publish(tmp: &Path, out: &Path, file: &File) -> Result<()> {
    match fs::hard_link(tmp, out) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(output_exists(out)),
        Err(_) => {
            if fs::symlink_metadata(out).is_ok() {
                return Err(output_exists(out));
            }
            fs::rename(tmp, out)
                .with_context(|| format!("{}: cannot rename into place", out.display()))?;
        }
    }
    let ours = file
        .metadata()
        .with_context(|| format!("{}: cannot stat", tmp.display()))?;
    let landed = fs::symlink_metadata(out).ok();
    if !landed.is_some_and(|m| m.is_file() && m.dev() == ours.dev() && m.ino() == ours.ino()) {
        let _ = fs::remove_file(out);
        bail!(
            "{}: the restore's temp file {} was replaced while it was written (someone else writes into {}); nothing was restored",
            out.display(),
            tmp.display(),
            files::parent_dir(out).display()
        );
    }
    files::fsync_dir(files::parent_dir(out))
}

/// A new file readable by the owner only; never an existing one, never through a link.
#[cfg(test)]
fn create_private(path: &Path) -> Result<File> {
    files::create_new(path, 0o600)
}

/// Hands index downloads to workers in order, at most `ahead` beyond the one being applied:
/// with each index's channel holding at most one chunk (and its worker filling one more),
/// this is what bounds the memory of the WAL read-ahead.
struct Window {
    state: Mutex<WindowState>,
    cv: Condvar,
    ahead: usize,
}

struct WindowState {
    next: usize,
    total: usize,
    applied: usize,
    closed: bool,
}

impl Window {
    fn new(total: usize, ahead: usize) -> Window {
        Window {
            state: Mutex::new(WindowState {
                next: 0,
                total,
                applied: 0,
                closed: false,
            }),
            cv: Condvar::new(),
            ahead: ahead.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        lock(&self.state)
    }

    fn next_job(&self) -> Option<usize> {
        let mut s = self.lock();
        loop {
            if s.closed || s.next >= s.total {
                return None;
            }
            if s.next < s.applied + self.ahead {
                s.next += 1;
                return Some(s.next - 1);
            }
            s = wait(&self.cv, s);
        }
    }

    fn applied(&self, k: usize) {
        self.lock().applied = k + 1;
        self.cv.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const G1: &str = "1111111111111111";
    const G2: &str = "2222222222222222";

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn snap(g: &str, index: u32, at: u64) -> SnapshotInfo {
        SnapshotInfo {
            generation: g.into(),
            index,
            size: 1,
            created: t(at),
            compression: Compression::Gzip,
        }
    }

    fn seg(g: &str, index: u32, offset: u64, at: u64) -> WalSegmentInfo {
        WalSegmentInfo {
            generation: g.into(),
            index,
            offset,
            size: 1,
            created: t(at),
            compression: Compression::Gzip,
        }
    }

    fn listing(
        replica: usize,
        g: &str,
        snapshots: Vec<SnapshotInfo>,
        segments: Vec<WalSegmentInfo>,
    ) -> GenerationListing {
        GenerationListing {
            replica,
            generation: g.into(),
            snapshots,
            segments,
        }
    }

    fn offsets(plan: &Plan) -> Vec<(u32, Vec<u64>)> {
        plan.indexes
            .iter()
            .map(|(i, s)| (*i, s.iter().map(|s| s.offset).collect()))
            .collect()
    }

    fn two_gens() -> Vec<GenerationListing> {
        vec![
            listing(
                0,
                G1,
                vec![snap(G1, 0, 100)],
                vec![
                    seg(G1, 0, 0, 100),
                    seg(G1, 0, 4152, 110),
                    seg(G1, 1, 0, 120),
                ],
            ),
            listing(
                0,
                G2,
                vec![snap(G2, 0, 200), snap(G2, 2, 240)],
                vec![
                    seg(G2, 0, 0, 200),
                    seg(G2, 1, 0, 210),
                    seg(G2, 1, 4152, 220),
                    seg(G2, 2, 0, 235),
                    seg(G2, 2, 8272, 250),
                ],
            ),
        ]
    }

    #[test]
    fn latest_generation_and_snapshot_win() {
        let plan = choose(&two_gens(), &Options::default()).unwrap().unwrap();
        assert_eq!(plan.generation, G2);
        assert_eq!(plan.snapshot.index, 2);
        assert_eq!(offsets(&plan), vec![(2, vec![0, 8272])]);
        assert_eq!(plan.last_index(), 2);
    }

    #[test]
    fn timestamp_selects_generation_snapshot_and_segments() {
        let opts = Options {
            timestamp: Some(t(215)),
            ..Default::default()
        };
        let plan = choose(&two_gens(), &opts).unwrap().unwrap();
        assert_eq!(plan.generation, G2);
        assert_eq!(plan.snapshot.index, 0);
        assert_eq!(offsets(&plan), vec![(0, vec![0]), (1, vec![0])]);

        // Before G2 began: G1, cut at T.
        let opts = Options {
            timestamp: Some(t(105)),
            ..Default::default()
        };
        let plan = choose(&two_gens(), &opts).unwrap().unwrap();
        assert_eq!(plan.generation, G1);
        assert_eq!(offsets(&plan), vec![(0, vec![0])]);

        // Before anything: nothing.
        let opts = Options {
            timestamp: Some(t(50)),
            ..Default::default()
        };
        assert!(choose(&two_gens(), &opts).unwrap().is_none());

        // After everything: the latest state.
        let opts = Options {
            timestamp: Some(t(10_000)),
            ..Default::default()
        };
        let plan = choose(&two_gens(), &opts).unwrap().unwrap();
        assert_eq!((plan.generation.as_str(), plan.snapshot.index), (G2, 2));
    }

    #[test]
    fn generation_and_index() {
        let opts = Options {
            generation: Some(G2.into()),
            index: Some(1),
            ..Default::default()
        };
        let plan = choose(&two_gens(), &opts).unwrap().unwrap();
        assert_eq!(plan.snapshot.index, 0);
        assert_eq!(offsets(&plan), vec![(0, vec![0]), (1, vec![0, 4152])]);

        let opts = Options {
            generation: Some(G1.into()),
            ..Default::default()
        };
        let plan = choose(&two_gens(), &opts).unwrap().unwrap();
        assert_eq!(plan.generation, G1);
        assert_eq!(offsets(&plan), vec![(0, vec![0, 4152]), (1, vec![0])]);

        let opts = Options {
            generation: Some("3333333333333333".into()),
            ..Default::default()
        };
        assert!(choose(&two_gens(), &opts).unwrap().is_none());
    }

    #[test]
    fn generation_without_usable_snapshot_is_skipped() {
        let gens = vec![
            listing(0, G1, vec![snap(G1, 0, 100)], vec![seg(G1, 0, 0, 100)]),
            // Newest, but its snapshot never landed.
            listing(0, G2, vec![], vec![seg(G2, 0, 0, 300)]),
        ];
        let plan = choose(&gens, &Options::default()).unwrap().unwrap();
        assert_eq!(plan.generation, G1);
    }

    #[test]
    fn latest_end_wins_across_replicas() {
        let gens = vec![
            listing(0, G1, vec![snap(G1, 0, 100)], vec![seg(G1, 0, 0, 150)]),
            listing(
                1,
                G1,
                vec![snap(G1, 0, 100)],
                vec![seg(G1, 0, 0, 150), seg(G1, 0, 4152, 160)],
            ),
        ];
        let plan = choose(&gens, &Options::default()).unwrap().unwrap();
        assert_eq!(plan.replica, 1);
        // Ties go to the earlier replica.
        let gens = vec![
            gens[0].clone(),
            listing(1, G1, vec![snap(G1, 0, 100)], vec![seg(G1, 0, 0, 150)]),
        ];
        assert_eq!(
            choose(&gens, &Options::default()).unwrap().unwrap().replica,
            0
        );
    }

    #[test]
    fn a_segment_stored_as_gz_and_lz4_is_read_once_as_gz() {
        let lz4 = |mut s: WalSegmentInfo| {
            s.compression = Compression::Lz4;
            s
        };
        let mut snap_lz4 = snap(G1, 0, 100);
        snap_lz4.compression = Compression::Lz4;
        let gens = vec![listing(
            0,
            G1,
            vec![snap_lz4, snap(G1, 0, 100)],
            vec![
                lz4(seg(G1, 0, 0, 100)),
                seg(G1, 0, 0, 100),
                seg(G1, 0, 4152, 110),
                lz4(seg(G1, 0, 8272, 120)),
            ],
        )];
        let plan = choose(&gens, &Options::default()).unwrap().unwrap();
        assert_eq!(plan.snapshot.compression, Compression::Gzip);
        let segs = &plan.indexes[0].1;
        let got: Vec<(u64, Compression)> = segs.iter().map(|s| (s.offset, s.compression)).collect();
        assert_eq!(
            got,
            vec![
                (0, Compression::Gzip),
                (4152, Compression::Gzip),
                (8272, Compression::Lz4)
            ]
        );
    }

    #[test]
    fn an_index_past_the_last_one_is_an_error_naming_the_last() {
        let opts = Options {
            generation: Some(G2.into()),
            index: Some(5),
            ..Default::default()
        };
        let err = choose(&two_gens(), &opts).unwrap_err().to_string();
        assert!(err.contains(G2) && err.contains("00000005"), "{err}");
        assert!(err.contains("last index is 00000002"), "{err}");
        // The last one itself is fine.
        let opts = Options {
            index: Some(2),
            ..opts
        };
        assert_eq!(choose(&two_gens(), &opts).unwrap().unwrap().last_index(), 2);
    }

    #[test]
    fn consecutive_indexes_follow_by_salt1() {
        let h = |ckpt: u32, salt1: u32, salt2: u32| {
            let mut w = WalHeader::parse(&fixture("valid.wal")).unwrap();
            w.checkpoint_seq = ckpt;
            w.salt1 = salt1;
            w.salt2 = salt2;
            w
        };
        // As Litestream v0.3.13's replica shows (testdata/litestream-v0.3.13).
        assert!(follows(
            &h(1, 0xacd5018a, 0xc00b1487),
            &h(2, 0xacd5018b, 0xceda8f46)
        ));
        assert!(follows(&h(u32::MAX, u32::MAX, 1), &h(0, 0, 2)));
        // Another database's WAL, or a life skipped or repeated.
        assert!(!follows(&h(1, 0xacd5018a, 1), &h(2, 0x12345678, 2)));
        assert!(!follows(&h(1, 0xacd5018a, 1), &h(3, 0xacd5018c, 2)));
        assert!(!follows(&h(1, 0xacd5018a, 1), &h(1, 0xacd5018a, 1)));
        // A checkpoint sequence that stays, as in our own replicas, is no break.
        assert!(follows(&h(1, 0xacd5018a, 1), &h(1, 0xacd5018b, 2)));
        // A fresh WAL (the application deleted and created it while the daemon was stopped).
        assert!(follows(&h(5, 0xacd5018a, 1), &h(0, 0x12345678, 2)));
    }

    #[test]
    fn holes_are_errors() {
        let gens = vec![listing(
            0,
            G1,
            vec![snap(G1, 0, 100)],
            vec![seg(G1, 0, 0, 100), seg(G1, 2, 0, 120)],
        )];
        let err = choose(&gens, &Options::default()).unwrap_err().to_string();
        assert!(err.contains("missing WAL index 00000001"), "{err}");

        let gens = vec![listing(
            0,
            G1,
            vec![snap(G1, 0, 100)],
            vec![seg(G1, 0, 0, 100), seg(G1, 1, 4152, 120)],
        )];
        let err = choose(&gens, &Options::default()).unwrap_err().to_string();
        assert!(err.contains("00000001_00000000.wal.gz"), "{err}");
    }

    #[test]
    fn indexes_below_the_snapshot_are_never_looked_at() {
        // Index 0 lost its first segment (retention), but the snapshot at 1 covers it.
        let gens = vec![listing(
            0,
            G1,
            vec![snap(G1, 1, 100)],
            vec![seg(G1, 0, 4152, 90), seg(G1, 1, 0, 110)],
        )];
        let plan = choose(&gens, &Options::default()).unwrap().unwrap();
        assert_eq!(offsets(&plan), vec![(1, vec![0])]);
    }

    #[test]
    fn window_bounds_look_ahead() {
        let w = Window::new(5, 2);
        assert_eq!(w.next_job(), Some(0));
        assert_eq!(w.next_job(), Some(1));
        w.applied(0);
        assert_eq!(w.next_job(), Some(2));
        w.close();
        assert_eq!(w.next_job(), None);
    }

    fn fixture(name: &str) -> Vec<u8> {
        fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/wal")
                .join(name),
        )
        .unwrap()
    }

    /// Byte offsets just past each commit frame of a WAL.
    fn commit_ends(wal: &[u8]) -> Vec<usize> {
        let h = WalHeader::parse(wal).unwrap();
        let fs = h.frame_size();
        (0..(wal.len() - WAL_HEADER_SIZE) / fs)
            .filter(|i| {
                FrameHeader::parse(&wal[WAL_HEADER_SIZE + i * fs..])
                    .unwrap()
                    .is_commit()
            })
            .map(|i| WAL_HEADER_SIZE + (i + 1) * fs)
            .collect()
    }

    /// Collects what a WalStream keeps: the header, then each verified frame.
    #[derive(Default)]
    struct Collect {
        kept: Vec<u8>,
        pending: Vec<u8>,
    }

    impl FrameSink for Collect {
        fn header(&mut self, _: &WalHeader, raw: &[u8]) -> io::Result<()> {
            self.kept.extend_from_slice(raw);
            Ok(())
        }

        fn frame_buf(&mut self, len: usize) -> io::Result<&mut [u8]> {
            self.pending.resize(len, 0);
            Ok(&mut self.pending)
        }

        fn keep(&mut self, len: usize) -> io::Result<()> {
            self.kept.extend_from_slice(&self.pending[..len]);
            Ok(())
        }
    }

    fn stream(parts: &[&[u8]]) -> std::result::Result<(WalStream, Vec<u8>), String> {
        let mut st = WalStream::new();
        let mut out = Collect::default();
        for p in parts {
            st.segment(&mut &p[..], &mut out, None)
                .map_err(|e| match e {
                    SegmentError::Corrupt(m) => m,
                    SegmentError::Read(e) | SegmentError::Write(e) => e.to_string(),
                })?;
        }
        Ok((st, out.kept))
    }

    #[test]
    fn wal_stream_accepts_segments_split_at_commits() {
        let wal = fixture("valid.wal");
        let ends = commit_ends(&wal);
        assert!(ends.len() >= 2);
        let cut = ends[0];
        let (st, out) = stream(&[&wal[..cut], &wal[cut..]]).unwrap();
        assert_eq!(out, wal);
        assert_eq!(st.offset, wal.len() as u64);
        assert_eq!(st.frames, ((wal.len() - WAL_HEADER_SIZE) / 4120) as u64);
    }

    #[test]
    fn wal_stream_rejects_damage() {
        let wal = fixture("valid.wal");
        let err = stream(&[&fixture("bad-checksum.wal")]).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        let err = stream(&[&fixture("torn.wal")]).unwrap_err();
        assert!(err.contains("torn frame"), "{err}");
        // A segment must end on a commit frame.
        let err = stream(&[&wal[..commit_ends(&wal)[0] - 4120]]).unwrap_err();
        assert!(err.contains("inside a transaction"), "{err}");
        // Frames of another WAL life (stale salts) are never accepted.
        let stale = fixture("stale-salt.wal");
        assert!(stream(&[&stale]).is_err());
    }

    #[test]
    fn a_segment_longer_than_the_gap_to_the_next_one_is_corrupt() {
        let wal = fixture("valid.wal");
        let cut = commit_ends(&wal)[0];
        // Exactly the gap: fine.
        let mut st = WalStream::new();
        st.segment(&mut &wal[..cut], &mut Collect::default(), Some(cut as u64))
            .map_err(|_| "exact gap rejected")
            .unwrap();
        // The whole WAL claimed to fit before a segment at `cut`: refused, having read at
        // most one frame past the gap.
        let mut st = WalStream::new();
        let mut out = Collect::default();
        match st.segment(&mut &wal[..], &mut out, Some(cut as u64)) {
            Err(SegmentError::Corrupt(m)) => {
                assert!(m.contains("torn frame") || m.contains("more than"), "{m}")
            }
            _ => panic!("an over-long segment was accepted"),
        }
        assert!(out.kept.len() <= cut, "{} bytes kept", out.kept.len());
    }

    /// Serves `data` from `pos`, and (when `cut` is set) stops after byte `cut.0`: with an
    /// error of kind `cut.1`, or, for `None`, with a plain early end of stream, as a
    /// connection the network cut mid-body does.
    struct Flaky {
        data: Vec<u8>,
        pos: usize,
        cut: Option<(usize, Option<io::ErrorKind>)>,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut end = self.data.len();
            if let Some((at, kind)) = self.cut {
                if self.pos >= at {
                    return match kind {
                        Some(kind) => Err(io::Error::new(kind, "injected")),
                        None => Ok(0),
                    };
                }
                end = at.min(end);
            }
            let n = buf.len().min(end - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn resumable_resumes_a_cut_download_where_it_stopped() {
        use std::sync::atomic::AtomicU32;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        // The first `cuts` opens stop 30 000 bytes after where they start.
        let read_with = |cuts: u32, kind: Option<io::ErrorKind>| {
            let opens = AtomicU32::new(0);
            let offsets = Mutex::new(Vec::new());
            let mut r = Resumable::open("obj", data.len() as u64, |at| {
                let n = opens.fetch_add(1, Ordering::SeqCst);
                lock(&offsets).push(at);
                let at = at as usize;
                Ok(Box::new(Flaky {
                    data: data.clone(),
                    pos: at,
                    cut: (n < cuts).then_some((at + 30_000, kind)),
                }) as Box<dyn Read + Send>)
            })
            .unwrap();
            let mut out = Vec::new();
            let result = r.read_to_end(&mut out).map(|_| out);
            drop(r);
            let offsets = lock(&offsets).clone();
            (result, offsets)
        };
        // The HTTP client's `UnexpectedEof` (a peer that disconnected), a reset, a stream that
        // just ends early: each reopened at the byte reached, every byte delivered once.
        for kind in [
            Some(io::ErrorKind::UnexpectedEof),
            Some(io::ErrorKind::ConnectionReset),
            None,
        ] {
            let (out, offsets) = read_with(2, kind);
            assert_eq!(out.unwrap(), data, "{kind:?}");
            assert_eq!(offsets, vec![0, 30_000, 60_000], "{kind:?}");
        }
        // A store that cuts every connection still makes progress: no limit is reached.
        let (out, _) = read_with(u32::MAX, None);
        assert_eq!(out.unwrap(), data);
    }

    #[test]
    fn resumable_gives_up_on_a_store_that_makes_no_progress() {
        let data = vec![7u8; 1000];
        let mut opens = 0;
        let mut r = Resumable::open("obj", 2000, |at| {
            opens += 1;
            Ok(Box::new(Flaky {
                data: data.clone(),
                pos: at as usize,
                cut: None,
            }) as Box<dyn Read + Send>)
        })
        .unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        // Not a corruption: the store failed.
        assert!(!is_corrupt(&err), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("1000 of 2000"), "{msg}");
        drop(r);
        assert_eq!(opens, DOWNLOAD_ATTEMPTS);
    }

    #[test]
    fn frames_land_at_their_pages_in_order() {
        const PS: usize = 512;
        let frame = |page: u32, commit: u32, fill: u8| {
            let mut f = vec![fill; FRAME_HEADER_SIZE + PS];
            f[..4].copy_from_slice(&page.to_be_bytes());
            f[4..8].copy_from_slice(&commit.to_be_bytes());
            f
        };
        // Pages 1-3 form one run; page 2 is written again later and must win.
        let frames: Vec<u8> = [
            frame(1, 0, 1),
            frame(2, 0, 2),
            frame(3, 0, 3),
            frame(5, 0, 5),
            frame(2, 5, 9),
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        let file = create_private(&dir.path().join("db")).unwrap();
        let mut commit = None;
        let n = write_frames(&file, &frames, PS as u32, &mut commit)
            .map_err(|_| "write failed")
            .unwrap();
        assert_eq!((n, commit), (5, Some(5)));
        let written = fs::read(dir.path().join("db")).unwrap();
        assert_eq!(written.len(), 5 * PS);
        for (no, fill) in [(1usize, 1u8), (2, 9), (3, 3), (4, 0), (5, 5)] {
            let page = &written[(no - 1) * PS..no * PS];
            assert!(page.iter().all(|&b| b == fill), "page {no}");
        }
        let zero = frame(0, 1, 7);
        assert!(matches!(
            write_frames(&file, &zero, PS as u32, &mut commit),
            Err(FramesError::PageZero)
        ));
    }

    #[test]
    fn spool_files_have_no_name_and_are_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let sd = SpoolDir {
            dir: dir.path(),
            stem: "out.db.tmp",
        };
        for f in [spool_file(&sd).unwrap(), spool_file_named(&sd).unwrap()] {
            f.write_all_at(b"compressed bytes", 0).unwrap();
            let mut r = SpoolReader {
                file: &f,
                pos: 11,
                end: 16,
            };
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"bytes");
            assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn output_checks() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.db");
        check_output(&out).unwrap();
        fs::write(dir.path().join("x.db-wal"), b"old").unwrap();
        let err = check_output(&out).unwrap_err().to_string();
        assert!(err.contains("x.db-wal"), "{err}");
        fs::write(&out, b"").unwrap();
        let err = check_output(&out).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }
}
