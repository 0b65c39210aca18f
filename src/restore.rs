//! Restore (SPEC §6): pick a replica, generation, snapshot and WAL segments, then rebuild the
//! database beside its final path and move it into place only once it is proven sound.
//!
//! Choosing is pure ([`choose`] over listings, unit-tested); applying touches only files named
//! after the output (`<out>.tmp`, `<out>.tmp-wal`, `<out>.tmp-shm`, `<out>.tmp-XXXXXXXX.wal`)
//! and never the output itself until the final no-clobber link. Every WAL byte is verified
//! (frame salts and checksum chain, segment contiguity, commit boundaries) before SQLite sees
//! it, because SQLite's own WAL recovery silently stops at the first bad frame and would turn a
//! corrupt replica into a shorter database instead of an error. Memory is bounded: objects
//! stream through a decoder one frame at a time; parallel downloads stage whole indexes on disk
//! with a bounded look-ahead.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

use crate::client::{self, ReplicaClient, SnapshotInfo, WalSegmentInfo};
use crate::codec;
use crate::layout;
use crate::logging;
use crate::wal::{self, FrameHeader, FrameVerifier, WalHeader, WAL_HEADER_SIZE};

/// Attempts per WAL index download before giving up (stores fail transiently).
const DOWNLOAD_ATTEMPTS: u32 = 3;

/// What to restore; all optional filters.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this replica (by name); `None` = every replica given.
    pub replica: Option<String>,
    pub generation: Option<String>,
    /// Restore up to and including this WAL index (needs `generation`).
    pub index: Option<u32>,
    /// Restore the state as of this moment (exclusive with `index`).
    pub timestamp: Option<SystemTime>,
    /// Indexes downloaded at once (and staged ahead of the one being applied).
    pub parallelism: usize,
}

/// A replica to restore from.
pub struct Source {
    pub name: String,
    pub client: Arc<dyn ReplicaClient>,
}

/// One generation of one replica as listed.
#[derive(Clone, Debug)]
pub struct GenerationListing {
    pub replica: usize,
    pub generation: String,
    pub snapshots: Vec<SnapshotInfo>,
    pub segments: Vec<WalSegmentInfo>,
}

impl GenerationListing {
    /// (earliest, latest) object timestamp; `None` for an empty generation.
    pub fn bounds(&self) -> Option<(SystemTime, SystemTime)> {
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
    pub generation: String,
    pub snapshot: SnapshotInfo,
    /// Indexes from the snapshot's upward, each with its segments in offset order.
    pub indexes: Vec<(u32, Vec<WalSegmentInfo>)>,
}

impl Plan {
    /// The last index applied (the snapshot's when no WAL follows it).
    pub fn last_index(&self) -> u32 {
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
        segments.sort_by_key(|s| s.offset);
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
    Ok(Some(Plan {
        replica: g.replica,
        generation: g.generation.clone(),
        snapshot: snapshot.clone(),
        indexes,
    }))
}

/// With `-index I`: the highest snapshot at or below I. With `-timestamp T`: the latest
/// created at or before T. Otherwise the latest.
fn pick_snapshot<'a>(snapshots: &'a [SnapshotInfo], opts: &Options) -> Option<&'a SnapshotInfo> {
    snapshots
        .iter()
        .filter(|s| opts.index.is_none_or(|i| s.index <= i))
        .filter(|s| opts.timestamp.is_none_or(|t| s.created <= t))
        .max_by_key(|s| (s.index, s.created))
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

/// The temp files of a restore to `out`.
struct TempPaths {
    db: PathBuf,
    wal: PathBuf,
    shm: PathBuf,
    dir: PathBuf,
    stem: String,
}

impl TempPaths {
    fn new(out: &Path) -> Result<TempPaths> {
        let name = out
            .file_name()
            .ok_or_else(|| anyhow!("{}: output path has no file name", out.display()))?
            .to_string_lossy()
            .into_owned();
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = format!("{name}.tmp");
        Ok(TempPaths {
            db: dir.join(&stem),
            wal: dir.join(format!("{stem}-wal")),
            shm: dir.join(format!("{stem}-shm")),
            dir,
            stem,
        })
    }

    fn staged(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{}-{index:08x}.wal", self.stem))
    }

    /// Removes every temp file of this output, including staged indexes of an earlier,
    /// interrupted restore (they are ours by name).
    fn remove_all(&self) {
        for p in [&self.db, &self.wal, &self.shm] {
            let _ = fs::remove_file(p);
        }
        let prefix = format!("{}-", self.stem);
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with(&prefix) && n.ends_with(".wal") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Refuses an output that exists, or that SQLite would combine with a leftover `-wal`.
pub fn check_output(out: &Path) -> Result<()> {
    if fs::symlink_metadata(out).is_ok() {
        bail!(
            "cannot restore, output path already exists: {}",
            out.display()
        );
    }
    for suffix in ["-wal", "-shm"] {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if fs::symlink_metadata(&p).is_ok() {
            bail!(
                "cannot restore, {} exists beside the output path and SQLite would apply it to the restored database (move it away first)",
                p.display()
            );
        }
    }
    Ok(())
}

/// Builds the database of `plan` at `out`. On error nothing is left at `out` or beside it.
/// Everything is written owner-only while it is built; the finished file gets `mode` (the
/// original db's, when known), else stays 0600: a backup never widens who can read the data.
pub fn apply(
    client: &Arc<dyn ReplicaClient>,
    plan: &Plan,
    out: &Path,
    parallelism: usize,
    mode: Option<u32>,
) -> Result<()> {
    let tmp = TempPaths::new(out)?;
    fs::create_dir_all(&tmp.dir)
        .with_context(|| format!("{}: cannot create output directory", tmp.dir.display()))?;
    tmp.remove_all();
    let result = build(client, plan, &tmp, parallelism.max(1)).and_then(|()| {
        let mode = mode.unwrap_or(0o600) & 0o7777;
        fs::set_permissions(&tmp.db, fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot set mode {mode:o}", tmp.db.display()))?;
        publish(&tmp.db, out)?;
        Ok(())
    });
    tmp.remove_all();
    result
}

fn build(
    client: &Arc<dyn ReplicaClient>,
    plan: &Plan,
    tmp: &TempPaths,
    parallelism: usize,
) -> Result<()> {
    let page_size = restore_snapshot(client.as_ref(), &plan.snapshot, &tmp.db)?;
    if plan.indexes.is_empty() {
        return finish(&tmp.db);
    }

    let window = Window::new(plan.indexes.len(), parallelism);
    let abort = AtomicBool::new(false);
    let result = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..parallelism.min(plan.indexes.len()) {
            let (window, abort) = (&window, &abort);
            scope.spawn(move || {
                while let Some(k) = window.next_job() {
                    if abort.load(Ordering::SeqCst) {
                        window.done(k, Err(anyhow!("aborted")));
                        continue;
                    }
                    let (index, segments) = &plan.indexes[k];
                    let staged = tmp.staged(*index);
                    let r = download_index(
                        client.as_ref(),
                        &plan.generation,
                        *index,
                        segments,
                        &staged,
                        page_size,
                        abort,
                    );
                    if r.is_err() {
                        let _ = fs::remove_file(&staged);
                    }
                    window.done(k, r);
                }
            });
        }
        let applied = (|| -> Result<()> {
            for (k, (index, _)) in plan.indexes.iter().enumerate() {
                let staged = window.wait(k)?;
                apply_index(
                    &tmp.db,
                    &tmp.wal,
                    &tmp.shm,
                    &staged,
                    &plan.generation,
                    *index,
                )?;
                window.applied(k);
            }
            Ok(())
        })();
        if applied.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        window.close();
        applied
    });
    result?;
    finish(&tmp.db)
}

/// Streams the snapshot into `db`; returns its page size.
fn restore_snapshot(client: &dyn ReplicaClient, info: &SnapshotInfo, db: &Path) -> Result<u32> {
    let key = layout::snapshot_key(&info.generation, info.index, info.compression);
    logging::info(
        "restoring snapshot",
        &[("snapshot", &key), ("path", &db.display())],
    );
    let reader = client
        .open_snapshot(info)
        .with_context(|| format!("cannot read snapshot {key}"))?;
    let mut reader =
        codec::decoder(info.compression, reader).with_context(|| format!("snapshot {key}"))?;
    let file = create_private(db)?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    let mut header = [0u8; 100];
    let n = read_full(&mut reader, &mut header)
        .with_context(|| format!("snapshot {key}: cannot decompress"))?;
    if n < header.len() || &header[..16] != b"SQLite format 3\0" {
        bail!("snapshot {key} is not a SQLite database (bad header); the replica is corrupt");
    }
    let page_size = wal::db_page_size(&header)
        .ok_or_else(|| anyhow!("snapshot {key}: bad page size in header"))?;
    w.write_all(&header)
        .with_context(|| format!("{}: cannot write", db.display()))?;
    // SQLite sizes a database by its header, and every database in WAL mode (SQLite 3.7.0
    // or later) keeps that field valid; so we copy exactly that much. This also bounds what
    // a hostile snapshot (a small object that decompresses to terabytes) can make us write.
    let declared = wal::db_declared_size(&header, page_size).ok_or_else(|| {
        anyhow!("snapshot {key}: its header declares no valid database size, which no WAL-mode database lacks; the replica is corrupt")
    })?;
    let mut reader = reader.take(declared.saturating_sub(header.len() as u64));
    let mut copied = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("snapshot {key}: cannot read or decompress: {e}"),
        };
        w.write_all(&buf[..n])
            .with_context(|| format!("{}: cannot write", db.display()))?;
        copied += n as u64;
    }
    let total = copied + header.len() as u64;
    if total == declared {
        // Bytes past the declared size are pages SQLite no longer uses (a checkpoint that
        // shrank the db could not truncate it yet); they are not read, let alone written.
        let mut probe = [0u8; 1];
        if matches!(reader.into_inner().read(&mut probe), Ok(1)) {
            logging::info(
                "snapshot holds bytes past the size its header declares; ignored",
                &[("snapshot", &key), ("declared", &total)],
            );
        }
    }
    if total % page_size as u64 != 0 {
        bail!("snapshot {key}: {total} bytes is not a whole number of {page_size}-byte pages; the replica is corrupt");
    }
    let file = w
        .into_inner()
        .map_err(|e| anyhow!("{}: cannot write: {}", db.display(), e.error()))?;
    file.sync_all()
        .with_context(|| format!("{}: cannot fsync", db.display()))?;
    Ok(page_size)
}

/// Downloads one index's segments into `staged` as one WAL file, verifying every frame.
fn download_index(
    client: &dyn ReplicaClient,
    generation: &str,
    index: u32,
    segments: &[WalSegmentInfo],
    staged: &Path,
    page_size: u32,
    abort: &AtomicBool,
) -> Result<Staged> {
    let mut attempt = 1;
    loop {
        match stage_index(client, generation, index, segments, staged, page_size) {
            Ok(s) => return Ok(s),
            Err(StageError::Fatal(e)) => return Err(e),
            Err(StageError::Retry(e))
                if attempt >= DOWNLOAD_ATTEMPTS || abort.load(Ordering::SeqCst) =>
            {
                return Err(e)
            }
            Err(StageError::Retry(e)) => {
                logging::warn(
                    "WAL download failed, retrying",
                    &[
                        ("index", &format!("{index:08x}")),
                        ("attempt", &attempt),
                        ("error", &format!("{e:#}")),
                    ],
                );
                std::thread::sleep(Duration::from_millis(250 * u64::from(attempt)));
                attempt += 1;
            }
        }
    }
}

/// A WAL index verified and written to disk, ready to apply.
#[derive(Debug)]
struct Staged {
    path: PathBuf,
    frames: u64,
}

enum StageError {
    /// The store failed to deliver (network, I/O): worth another try.
    Retry(anyhow::Error),
    /// The data itself is wrong or missing: retrying cannot help.
    Fatal(anyhow::Error),
}

fn stage_index(
    client: &dyn ReplicaClient,
    generation: &str,
    index: u32,
    segments: &[WalSegmentInfo],
    staged: &Path,
    page_size: u32,
) -> std::result::Result<Staged, StageError> {
    let fatal = StageError::Fatal;
    let file = create_private(staged).map_err(fatal)?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    let write_err =
        |e: io::Error| StageError::Fatal(anyhow!("{}: cannot write: {e}", staged.display()));
    let mut stream = WalStream::new(page_size);
    for (k, seg) in segments.iter().enumerate() {
        let key = layout::wal_segment_key(generation, index, seg.offset, seg.compression);
        // A segment followed by another ends exactly where that one starts: decompressing
        // more than that (a hostile, bomb-like object) is an error found after one frame.
        let limit = segments
            .get(k + 1)
            .map(|next| next.offset.saturating_sub(seg.offset));
        if seg.offset != stream.offset {
            return Err(fatal(anyhow!(
                "missing WAL segment before {key}: the previous segments of index {index:08x} end at offset {}",
                stream.offset
            )));
        }
        let reader = match client.open_wal_segment(seg) {
            Ok(r) => r,
            Err(e) if client::is_not_found(&e) => {
                return Err(fatal(anyhow!(
                    "WAL segment {key} disappeared from the replica during the restore"
                )))
            }
            Err(e) => {
                return Err(StageError::Retry(
                    e.context(format!("cannot read WAL segment {key}")),
                ))
            }
        };
        let mut reader = codec::decoder(seg.compression, reader)
            .map_err(|e| fatal(anyhow!("WAL segment {key}: {e}")))?;
        stream
            .segment(&mut reader, &mut w, limit)
            .map_err(|e| match e {
                SegmentError::Write(e) => write_err(e),
                SegmentError::Read(e)
                    if e.kind() == io::ErrorKind::InvalidData
                        || e.kind() == io::ErrorKind::InvalidInput
                        || e.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    fatal(anyhow!(
                        "WAL segment {key}: cannot decompress: {e}; the replica is corrupt"
                    ))
                }
                SegmentError::Read(e) => {
                    StageError::Retry(anyhow!("WAL segment {key}: cannot read: {e}"))
                }
                SegmentError::Corrupt(msg) => {
                    fatal(anyhow!("WAL segment {key}: {msg}; the replica is corrupt"))
                }
            })?;
    }
    let file = w
        .into_inner()
        .map_err(|e| write_err(io::Error::other(e.error().to_string())))?;
    file.sync_all().map_err(write_err)?;
    Ok(Staged {
        path: staged.to_path_buf(),
        frames: stream.frames,
    })
}

enum SegmentError {
    Read(io::Error),
    Write(io::Error),
    Corrupt(String),
}

/// Follows one WAL index across its segments: header, frame chain, commit boundaries.
#[derive(Debug)]
struct WalStream {
    page_size: u32,
    /// Decompressed bytes seen so far: the offset the next segment must start at.
    offset: u64,
    verifier: Option<(WalHeader, FrameVerifier)>,
    frames: u64,
    frame: Vec<u8>,
}

impl WalStream {
    fn new(page_size: u32) -> WalStream {
        WalStream {
            page_size,
            offset: 0,
            verifier: None,
            frames: 0,
            frame: Vec::new(),
        }
    }

    fn segment(
        &mut self,
        r: &mut dyn Read,
        w: &mut dyn Write,
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
        let result = self.frames_of(r, w);
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
        w: &mut dyn Write,
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
            if header.page_size != self.page_size {
                return Err(SegmentError::Corrupt(format!(
                    "page size {} differs from the snapshot's {}",
                    header.page_size, self.page_size
                )));
            }
            w.write_all(&hdr).map_err(SegmentError::Write)?;
            self.offset += WAL_HEADER_SIZE as u64;
            self.frame = vec![0u8; header.frame_size()];
            self.verifier = Some((header, FrameVerifier::new(&header)));
        }
        let Some((_, verifier)) = self.verifier.as_mut() else {
            return Err(SegmentError::Corrupt("no WAL header".into()));
        };
        let mut last: Option<FrameHeader> = None;
        loop {
            let n = read_full(r, &mut self.frame).map_err(SegmentError::Read)?;
            if n == 0 {
                break;
            }
            if n < self.frame.len() {
                return Err(SegmentError::Corrupt(format!(
                    "torn frame at offset {} ({n} bytes)",
                    self.offset
                )));
            }
            let Some(fh) = verifier.check(&self.frame) else {
                return Err(SegmentError::Corrupt(format!(
                    "frame at offset {} fails its salt or checksum check",
                    self.offset
                )));
            };
            w.write_all(&self.frame).map_err(SegmentError::Write)?;
            self.offset += self.frame.len() as u64;
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

/// Applies a staged index: it becomes `<out>.tmp-wal` and SQLite checkpoints it into the db.
fn apply_index(
    db: &Path,
    wal_path: &Path,
    shm: &Path,
    staged: &Staged,
    generation: &str,
    index: u32,
) -> Result<()> {
    if staged.frames == 0 {
        let _ = fs::remove_file(&staged.path);
        return Ok(());
    }
    fs::rename(&staged.path, wal_path).with_context(|| {
        format!(
            "{}: cannot move staged WAL into place",
            staged.path.display()
        )
    })?;
    let conn = open(db)?;
    // A fresh connection learns the db is in WAL mode (and opens the WAL) only when it first
    // reads; until then the checkpoint pragma is a no-op.
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))
        .with_context(|| {
            format!(
                "{}: cannot read restored database with WAL index {index:08x}",
                db.display()
            )
        })?;
    let checkpoint = |mode: &str| -> Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .with_context(|| format!("{}: cannot apply WAL index {index:08x}", db.display()))
    };
    // RESTART reports how many frames SQLite found and copied (TRUNCATE reports 0 once the
    // file is emptied), which proves SQLite used every frame we verified; TRUNCATE then
    // empties the WAL before the next index replaces it.
    let (busy, log, checkpointed) = checkpoint("RESTART")?;
    let (busy_truncate, _, _) = checkpoint("TRUNCATE")?;
    let busy = busy.max(busy_truncate);
    drop(conn);
    if busy != 0 || log < 0 || log as u64 != staged.frames || checkpointed != log {
        bail!(
            "{}: applying WAL index {generation}/{index:08x} checkpointed {checkpointed} of {} frames (busy={busy}, wal frames={log})",
            db.display(),
            staged.frames
        );
    }
    let _ = fs::remove_file(wal_path);
    let _ = fs::remove_file(shm);
    logging::info(
        "applied WAL index",
        &[
            ("generation", &generation),
            ("index", &format!("{index:08x}")),
            ("frames", &staged.frames),
        ],
    );
    Ok(())
}

/// Checkpoints a WAL already in place at `<db>-wal` (committed frames only, `frames` of them)
/// into `db`, with the same proof of completeness as a restore. Used by validation to rebuild
/// the local state at a position from the shadow WAL.
pub fn replay_wal_in_place(db: &Path, frames: u64) -> Result<()> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let wal = PathBuf::from(wal);
    let staged = Staged {
        path: wal.clone(),
        frames,
    };
    apply_index(db, &wal, Path::new(&shm), &staged, "local", 0)
}

fn open(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("{}: cannot open restored database", db.display()))?;
    // Nobody else may touch a database being restored; no shared memory, no waiting.
    conn.busy_timeout(Duration::ZERO)?;
    conn.execute_batch("PRAGMA cache_size = -2048;")?;
    Ok(conn)
}

/// `PRAGMA integrity_check`, then fsync: only a sound database leaves the temp name.
fn finish(db: &Path) -> Result<()> {
    let conn = open(db)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .with_context(|| format!("{}: integrity check failed to run", db.display()))?
        .collect::<rusqlite::Result<_>>()
        .with_context(|| format!("{}: integrity check failed to run", db.display()))?;
    drop(stmt);
    drop(conn);
    if problems != ["ok"] {
        let first = problems.first().cloned().unwrap_or_default();
        bail!(
            "restored database fails PRAGMA integrity_check ({} problem(s), first: {first}); nothing was written",
            problems.len()
        );
    }
    File::open(db)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: cannot fsync", db.display()))?;
    Ok(())
}

/// Moves the finished database to `out` without ever replacing a file that appeared there
/// meanwhile: a hard link fails if `out` exists; filesystems without links fall back to a
/// checked rename.
fn publish(tmp: &Path, out: &Path) -> Result<()> {
    match fs::hard_link(tmp, out) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            bail!(
                "cannot restore, output path already exists: {}",
                out.display()
            )
        }
        Err(_) => {
            if fs::symlink_metadata(out).is_ok() {
                bail!(
                    "cannot restore, output path already exists: {}",
                    out.display()
                );
            }
            fs::rename(tmp, out)
                .with_context(|| format!("{}: cannot rename into place", out.display()))?;
        }
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot fsync directory", dir.display()))?;
    Ok(())
}

/// A new file readable by the owner only.
fn create_private(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Hands index downloads to workers in order, at most `ahead` beyond the one being applied
/// (staged indexes wait on disk, so this bounds disk use, not memory), and returns results
/// to the applier in order.
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
    results: BTreeMap<usize, Result<Staged>>,
}

impl Window {
    fn new(total: usize, ahead: usize) -> Window {
        Window {
            state: Mutex::new(WindowState {
                next: 0,
                total,
                applied: 0,
                closed: false,
                results: BTreeMap::new(),
            }),
            cv: Condvar::new(),
            ahead: ahead.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&self, k: usize, r: Result<Staged>) {
        self.lock().results.insert(k, r);
        self.cv.notify_all();
    }

    fn wait(&self, k: usize) -> Result<Staged> {
        let mut s = self.lock();
        loop {
            if let Some(r) = s.results.remove(&k) {
                return r;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
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
    use crate::codec::Compression;
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
        w.done(0, Err(anyhow!("x")));
        assert!(w.wait(0).is_err());
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

    fn stream(parts: &[&[u8]]) -> std::result::Result<(WalStream, Vec<u8>), String> {
        let mut st = WalStream::new(4096);
        let mut out = Vec::new();
        for p in parts {
            st.segment(&mut &p[..], &mut out, None)
                .map_err(|e| match e {
                    SegmentError::Corrupt(m) => m,
                    SegmentError::Read(e) | SegmentError::Write(e) => e.to_string(),
                })?;
        }
        Ok((st, out))
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
        let mut other_page = WalStream::new(1024);
        assert!(other_page
            .segment(&mut &wal[..], &mut Vec::new(), None)
            .is_err());
    }

    #[test]
    fn a_segment_longer_than_the_gap_to_the_next_one_is_corrupt() {
        let wal = fixture("valid.wal");
        let cut = commit_ends(&wal)[0];
        // Exactly the gap: fine.
        let mut st = WalStream::new(4096);
        st.segment(&mut &wal[..cut], &mut Vec::new(), Some(cut as u64))
            .map_err(|_| "exact gap rejected")
            .unwrap();
        // The whole WAL claimed to fit before a segment at `cut`: refused, having read at
        // most one frame past the gap.
        let mut st = WalStream::new(4096);
        let mut out = Vec::new();
        match st.segment(&mut &wal[..], &mut out, Some(cut as u64)) {
            Err(SegmentError::Corrupt(m)) => {
                assert!(m.contains("torn frame") || m.contains("more than"), "{m}")
            }
            _ => panic!("an over-long segment was accepted"),
        }
        assert!(out.len() <= cut + 4120, "{} bytes written", out.len());
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
