//! Follow mode (`litestream restore -f`): after a restore, keep the output following its
//! replica, readable the whole time, until SIGINT/SIGTERM.
//!
//! The next segment's name is known from the position (`<index>_<offset>` continuing the
//! index, or the next index at offset 0), so an idle follower sends one GET per poll and
//! lists the replica only at start, at an index change, and after `-follow-list-interval`
//! (default 10 minutes) of idleness (a new generation's name only a listing finds). The whole transactions of a fetched segment are
//! applied as one SQLite write transaction on the output (`apply`; `BATCH_BYTES` of distinct
//! pages at most; a batch that cannot end whole is applied again one transaction at a time), and the position file beside it
//! (`<out>-litestream-follow`, `state::Record`) is written before each commit with digests of
//! the state before and after, so a follower killed at any point resumes exactly where the
//! output is. When the replica moved to another generation, or no longer holds what comes
//! next, the database is restored anew beside the output and copied into it in one
//! transaction: readers see the old database until that commit and the new one after it.

pub mod apply;
pub mod state;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use crate::backoff::{Backoff, Growth};
use crate::client::{self, WalSegmentInfo};
use crate::codec::{self, read_full, Compression};
use crate::encryption::Objects;
use crate::files;
use crate::layout;
use crate::logging;
use crate::restore::{self, Options, Plan, Restored, Source};
use crate::wal::{self, FrameVerifier, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

use apply::{Change, Digest, Output, Txn};
use state::{next_probe, PageSet, Point, Probe, Record};

/// The position file beside `out`.
pub fn position_path(out: &Path) -> PathBuf {
    files::sibling(out, "-litestream-follow")
}

/// Where a rebuild restores the new database before copying it into `out`.
fn rebuild_path(out: &Path) -> PathBuf {
    files::sibling(out, "-litestream-rebuild")
}

/// The largest position file we read: a transaction's page ranges, a few lines.
const MAX_POSITION_FILE: u64 = 64 << 20;

/// A corrupt-looking segment is fetched this many times (one per poll) before the follower
/// stops: without a listed size, a download cut short decodes like a damaged object.
const CORRUPT_STRIKES: u32 = 3;

/// The whole transactions of one segment are applied as one SQLite transaction (one
/// position-file write, one commit: a few fsyncs for all of them), closed early once it has
/// written this many bytes of distinct pages, which bounds its memory and the output's WAL.
const BATCH_BYTES: usize = 16 << 20;

/// What the follower needs besides its output.
pub struct Settings {
    /// The replica followed.
    pub source: Source,
    /// The restore's filters (no `-index`/`-timestamp`): a listing chooses with them.
    pub opts: Options,
    /// The poll interval (`-follow-interval`).
    pub interval: Duration,
    /// Idle time after which the replica is listed for a new generation
    /// (`-follow-list-interval`); zero: never.
    pub list_interval: Duration,
    /// The mode of files we create beside the output.
    pub mode: u32,
    /// Where the position and lag go when metrics are served (`addr`).
    pub metrics: Option<Arc<crate::metrics::FollowMetrics>>,
}

/// A database following its replica.
pub struct Follower {
    settings: Settings,
    out: PathBuf,
    pos: PathBuf,
    output: Output,
    point: Point,
    /// The output's digest at `point`, kept up to date by each commit.
    full: Digest,
    /// List the replica before the first poll: a resumed follower may have been down while
    /// the replica moved to another generation or retention removed what comes next.
    list_first: bool,
}

impl Follower {
    /// Starts following `out`, just restored to `restored`.
    pub fn after_restore(
        settings: Settings,
        out: &Path,
        restored: &Restored,
        snapshot_compression: Compression,
    ) -> Result<Follower> {
        let point = point_of(restored, snapshot_compression);
        let mut output = Output::open(out)?;
        let full = output.full_digest()?;
        record_state(out, &position_path(out), &point, &full, settings.mode)?;
        Ok(Follower {
            settings,
            out: out.to_path_buf(),
            pos: position_path(out),
            output,
            point,
            full,
            list_first: false,
        })
    }

    /// Resumes following `out` from its position file, after checking the file describes it.
    pub fn resume(settings: Settings, out: &Path) -> Result<Follower> {
        let pos = position_path(out);
        let record = read_record(&pos)?;
        let meta = std::fs::symlink_metadata(out)
            .with_context(|| format!("{}: cannot stat", out.display()))?;
        if (meta.dev(), meta.ino()) != (record.dev, record.ino) {
            bail!(
                "{} is not the file {} describes (it was replaced since follow mode last ran); remove the position file to restore it anew",
                out.display(),
                pos.display()
            );
        }
        let mut output = Output::open(out)?;
        let full = output.full_digest()?;
        let Some(point) = record.state_for(&full.finish()).cloned() else {
            bail!(
                "{} holds neither state {} records (someone else changed it); remove both to restore it anew",
                out.display(),
                pos.display()
            );
        };
        logging::info(
            "resuming follow",
            &[
                ("output", &out.display()),
                ("generation", &point.generation),
                ("index", &format!("{:08x}", point.index)),
                ("offset", &point.offset),
            ],
        );
        Ok(Follower {
            settings,
            out: out.to_path_buf(),
            pos,
            output,
            point,
            full,
            list_first: true,
        })
    }

    /// Where the output is now.
    pub fn point(&self) -> &Point {
        &self.point
    }

    /// Polls and applies until `stop()` says so (checked between transactions and while
    /// waiting). Returns an error for what following cannot get past: a corrupt segment, a
    /// write by someone else, a replica that holds nothing to follow.
    pub fn run(&mut self, stop: &dyn Fn() -> bool) -> Result<()> {
        logging::info(
            "following",
            &[
                ("output", &self.out.display()),
                ("replica", &self.settings.source.name),
                ("generation", &self.point.generation),
                ("index", &format!("{:08x}", self.point.index)),
                ("offset", &self.point.offset),
                ("interval", &format!("{:?}", self.settings.interval)),
            ],
        );
        self.publish();
        let mut misses: u32 = 0;
        let mut caught_up = false;
        // The last poll that found nothing new: how far behind the replica the output may be.
        let mut last_caught_up = Instant::now();
        let mut strikes: u32 = 0;
        // Idle listings are timed from the last one or from the last data.
        let mut last_listing = Instant::now();
        let mut errors = Backoff::new(
            self.settings.interval.max(Duration::from_millis(100)),
            Duration::from_secs(30),
            Growth::Doubling,
        );
        if std::mem::take(&mut self.list_first) {
            match self.check_listing() {
                Err(FollowError::Fatal(e)) => return Err(e),
                Err(FollowError::Store(e) | FollowError::Corrupt(e) | FollowError::Unbatch(e)) => {
                    logging::warn(
                        "cannot list the replica, polling on",
                        &[("error", &format!("{e:#}"))],
                    )
                }
                Ok(()) => {}
            }
        }
        while !stop() {
            let list_due = !self.settings.list_interval.is_zero()
                && last_listing.elapsed() >= self.settings.list_interval;
            let probe = next_probe(&self.point, misses, list_due);
            if probe == Probe::Listing {
                last_listing = Instant::now();
            }
            let outcome = match &probe {
                Probe::Segment(index, offset) => self.segment(*index, *offset, stop),
                Probe::Listing => self.check_listing().map(|()| Outcome::Missing),
            };
            match outcome {
                Ok(Outcome::Applied { txns }) => {
                    errors.reset();
                    strikes = 0;
                    misses = 0;
                    caught_up = false;
                    last_listing = Instant::now();
                    self.publish();
                    if let Some(m) = &self.settings.metrics {
                        m.applied(txns);
                    }
                    if txns == 0 {
                        continue;
                    }
                    logging::info(
                        "applied",
                        &[
                            ("generation", &self.point.generation),
                            ("index", &format!("{:08x}", self.point.index)),
                            ("offset", &self.point.offset),
                            ("transactions", &txns),
                            (
                                "behind",
                                &format!("{:.3}s", last_caught_up.elapsed().as_secs_f64()),
                            ),
                        ],
                    );
                }
                Ok(Outcome::Missing) => {
                    errors.reset();
                    // Caught up once both names that could come next were missed (polls
                    // alternate between them), or the one name when an index is empty.
                    let both_missed = matches!(probe, Probe::Segment(..))
                        && (misses >= 1 || self.point.offset == 0);
                    if let Some(m) = &self.settings.metrics {
                        // A listing's rebuild moves the position too.
                        self.publish();
                        if both_missed {
                            m.caught_up(SystemTime::now());
                        }
                    }
                    if both_missed {
                        last_caught_up = Instant::now();
                        if !caught_up {
                            caught_up = true;
                            logging::info(
                                "caught up",
                                &[
                                    ("generation", &self.point.generation),
                                    ("index", &format!("{:08x}", self.point.index)),
                                    ("offset", &self.point.offset),
                                ],
                            );
                        }
                    }
                    misses = misses.wrapping_add(1);
                    pause(self.settings.interval, stop);
                }
                Err(FollowError::Fatal(e)) => return Err(e),
                Err(FollowError::Corrupt(e) | FollowError::Unbatch(e)) => {
                    strikes += 1;
                    if strikes >= CORRUPT_STRIKES {
                        return Err(e.context(format!(
                            "{} stays at its last whole transaction (generation {} index {:08x} offset {})",
                            self.out.display(),
                            self.point.generation,
                            self.point.index,
                            self.point.offset
                        )));
                    }
                    logging::warn(
                        "segment failed its checks or a rebuild failed, trying again",
                        &[("error", &format!("{e:#}")), ("attempt", &strikes)],
                    );
                    pause(self.settings.interval, stop);
                }
                Err(FollowError::Store(e)) => {
                    let wait = errors.next_wait();
                    logging::warn(
                        "replica unavailable, retrying",
                        &[
                            ("error", &format!("{e:#}")),
                            ("retry_in", &format!("{wait:?}")),
                        ],
                    );
                    pause(wait, stop);
                }
            }
        }
        logging::info(
            "follow stopped",
            &[
                ("generation", &self.point.generation),
                ("index", &format!("{:08x}", self.point.index)),
                ("offset", &self.point.offset),
            ],
        );
        Ok(())
    }

    /// Stores the position into the metrics, when they are served.
    fn publish(&self) {
        if let Some(m) = &self.settings.metrics {
            m.position(&self.point.generation, self.point.index, self.point.offset);
        }
    }

    /// Fetches and applies segment (`index`, `offset`), transaction by transaction; on an
    /// error the transaction in progress is rolled back.
    fn segment(
        &mut self,
        index: u32,
        offset: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, FollowError> {
        let mut result = self.segment_inner(index, offset, stop, true);
        if let Err(FollowError::Unbatch(e)) = &result {
            self.output.rollback();
            logging::info(
                "applying the segment one transaction at a time",
                &[("reason", &format!("{e:#}"))],
            );
            result = self.segment_inner(index, offset, stop, false);
        }
        if result.is_err() {
            self.output.rollback();
        }
        result
    }

    fn segment_inner(
        &mut self,
        index: u32,
        offset: u64,
        stop: &dyn Fn() -> bool,
        batch: bool,
    ) -> Result<Outcome, FollowError> {
        let Some(raw) = self.open(index, offset)? else {
            return Ok(Outcome::Missing);
        };
        if index != self.point.index && self.point.offset > 0 {
            // The next index exists, so the current one is closed; but its last segment may
            // have been uploaded (before the next index's first: replicas upload in order)
            // since this index was last polled, or retention may have removed it. Only the
            // listing tells: one LIST per index change, never while idle.
            let (i, s) = (self.point.index, self.point.segment);
            let listed = self
                .settings
                .source
                .client
                .wal_segments(&self.point.generation)
                .map_err(FollowError::Store)?;
            let ours: Vec<&WalSegmentInfo> = listed.iter().filter(|g| g.index == i).collect();
            if let Some(tail) = ours.iter().find(|g| g.offset == s) {
                drop(raw);
                self.point.compression = tail.compression;
                let Some(tail) = self.open(i, s)? else {
                    return Ok(Outcome::Missing);
                };
                return self.apply_stream(i, s, tail, stop, batch);
            }
            if ours.is_empty() || ours.iter().any(|g| g.offset > s) {
                drop(raw);
                let reason = format!(
                    "index {i:08x} is no longer whole on the replica (retention removed it, or a segment is missing), so whether the output holds all of it cannot be known"
                );
                return self
                    .rebuild_latest(&reason)
                    .map(|()| Outcome::Applied { txns: 0 });
            }
        }
        self.apply_stream(index, offset, raw, stop, batch)
    }

    /// Rebuilds from what the replica holds now (see `rebuild`).
    fn rebuild_latest(&mut self, reason: &str) -> Result<(), FollowError> {
        let sources = std::slice::from_ref(&self.settings.source);
        let listings = restore::list(sources, &self.settings.opts).map_err(FollowError::Store)?;
        let Some(plan) =
            restore::choose(&listings, &self.settings.opts).map_err(FollowError::Store)?
        else {
            return Err(FollowError::Fatal(anyhow!(
                "{reason}, and the replica holds no backup to rebuild from"
            )));
        };
        self.rebuild(&plan, reason).map_err(FollowError::Corrupt)
    }

    /// GETs segment (`index`, `offset`); `None` when the store has no such object.
    fn open(&self, index: u32, offset: u64) -> Result<Option<Box<dyn Read + Send>>, FollowError> {
        let generation = &self.point.generation;
        let compression = self.point.compression;
        let info = WalSegmentInfo {
            generation: generation.clone(),
            index,
            offset,
            size: 0,
            created: SystemTime::UNIX_EPOCH,
            compression,
        };
        match self.settings.source.client.open_wal_segment(&info) {
            Ok(r) => Ok(Some(r)),
            Err(e) if client::is_not_found(&e) => Ok(None),
            Err(e) => {
                let key = layout::wal_segment_key(generation, index, offset, compression);
                Err(FollowError::Store(e.context(format!("GET {key}"))))
            }
        }
    }

    /// Applies the segment (`index`, `offset`) read from `raw`, transaction by transaction.
    fn apply_stream(
        &mut self,
        index: u32,
        offset: u64,
        raw: Box<dyn Read + Send>,
        stop: &dyn Fn() -> bool,
        batch: bool,
    ) -> Result<Outcome, FollowError> {
        match self.apply_inner(index, offset, raw, stop, batch) {
            // A batch that cannot end whole is rolled back (`segment`) and applied again
            // transaction by transaction, which commits every whole one before the damage.
            Err(FollowError::Corrupt(e)) if batch => Err(FollowError::Unbatch(e)),
            r => r,
        }
    }

    fn apply_inner(
        &mut self,
        index: u32,
        offset: u64,
        raw: Box<dyn Read + Send>,
        stop: &dyn Fn() -> bool,
        batch: bool,
    ) -> Result<Outcome, FollowError> {
        let generation = self.point.generation.clone();
        let compression = self.point.compression;
        let key = layout::wal_segment_key(&generation, index, offset, compression);
        // An encrypted replica's segment is age(compressed(raw)), as restore reads it.
        let raw = Objects::new(self.settings.source.keys.clone())
            .open(&key, raw)
            .map_err(|e| FollowError::Corrupt(e.context(format!("WAL segment {key}"))))?;
        let mut r = codec::decoder(compression, raw)
            .map_err(|e| FollowError::Corrupt(anyhow!("WAL segment {key}: {e}")))?;
        let corrupt = |msg: String| FollowError::Corrupt(anyhow!("WAL segment {key}: {msg}"));
        let read = |r: &mut dyn Read, buf: &mut [u8]| {
            read_full(r, buf)
                .map_err(|e| FollowError::Corrupt(anyhow!("WAL segment {key}: cannot read: {e}")))
        };

        let mut cur = if index == self.point.index {
            self.point.clone()
        } else {
            Point {
                generation: generation.clone(),
                index,
                segment: 0,
                offset: 0,
                header: None,
                chain: (0, 0),
                compression,
            }
        };
        cur.segment = offset;
        // The header, or the bytes of this segment already applied.
        let header = match cur.header {
            Some(h) => {
                let mut skip = cur.offset - offset;
                let mut buf = vec![0u8; 64 * 1024];
                while skip > 0 {
                    let want = skip.min(buf.len() as u64) as usize;
                    let n = read(&mut r, &mut buf[..want])?;
                    if n < want {
                        return Err(corrupt(format!(
                            "it ends before offset {}, which the database has applied",
                            cur.offset
                        )));
                    }
                    skip -= n as u64;
                }
                h
            }
            None => {
                let mut hdr = [0u8; WAL_HEADER_SIZE];
                if read(&mut r, &mut hdr)? < WAL_HEADER_SIZE {
                    return Err(corrupt("shorter than a WAL header".into()));
                }
                let h = WalHeader::parse(&hdr).map_err(|e| corrupt(e.to_string()))?;
                if h.page_size != self.output.page_size() {
                    return Err(corrupt(format!(
                        "page size {} differs from the database's {}",
                        h.page_size,
                        self.output.page_size()
                    )));
                }
                if let Some(prev) = &self.point.header {
                    if index != self.point.index
                        && !(wal::is_next_life(prev, &h) || h.checkpoint_seq == 0)
                    {
                        return Err(corrupt(format!(
                            "index {index:08x} does not follow index {:08x} (salt-1 {:08x} after {:08x}); it comes from another WAL history",
                            self.point.index, h.salt1, prev.salt1
                        )));
                    }
                }
                cur.header = Some(h);
                cur.offset = WAL_HEADER_SIZE as u64;
                cur.chain = h.checksum();
                h
            }
        };
        let frame_size = header.frame_size();
        let mut verifier = FrameVerifier::resume(&header, cur.chain);
        let mut frame = vec![0u8; frame_size];
        let mut txns = 0u64;
        let mut pending = 0u64;
        // The SQLite transaction open on the output, the state it began at, and how many
        // replicated transactions it holds whole (their commit frames read).
        let mut txn: Option<Txn> = None;
        let mut base = cur.clone();
        let mut held = 0u64;
        let mut db_size = 0u32;
        let page_size = self.output.page_size() as usize;
        loop {
            let n = read(&mut r, &mut frame)?;
            if n == 0 {
                break;
            }
            let at = cur.offset + pending * frame_size as u64;
            if n < frame_size {
                return Err(corrupt(format!("torn frame at offset {at} ({n} bytes)")));
            }
            let Some(fh) = verifier.check(&frame) else {
                return Err(corrupt(format!(
                    "frame at offset {at} fails its salt or checksum check"
                )));
            };
            if fh.page_no == 0 {
                return Err(corrupt(format!("frame at offset {at} is for page 0")));
            }
            if txn.is_none() {
                txn = Some(self.output.begin().map_err(FollowError::Fatal)?);
                base = cur.clone();
            }
            let Some(t) = txn.as_mut() else {
                return Err(FollowError::Fatal(anyhow!("no transaction")));
            };
            self.output
                .write(t, fh.page_no, &frame[FRAME_HEADER_SIZE..])
                .map_err(FollowError::Fatal)?;
            pending += 1;
            if fh.is_commit() {
                if batch && held > 0 && t.refuses(fh.db_size) {
                    // Pages written by the batch's earlier transactions lie past this one's
                    // end, which only a commit between them can truncate.
                    return Err(FollowError::Unbatch(anyhow!(
                        "WAL segment {key}: a transaction at offset {at} shrinks the database below pages its batch wrote"
                    )));
                }
                cur = Point {
                    offset: at + frame_size as u64,
                    chain: verifier.chain(),
                    ..cur.clone()
                };
                pending = 0;
                held += 1;
                db_size = fh.db_size;
                let stopping = stop();
                if !batch || stopping || t.pages() * page_size >= BATCH_BYTES {
                    self.commit_batch(txn.take(), db_size, &base, &cur)?;
                    txns += std::mem::take(&mut held);
                    if stopping {
                        return Ok(Outcome::Applied { txns });
                    }
                }
            }
        }
        if pending > 0 {
            // In a batch, the transactions before this point are rolled back with it and
            // applied again one by one (`segment`), so the output ends at the last whole one.
            return Err(corrupt(format!(
                "it ends at offset {} inside a transaction (no commit frame)",
                cur.offset + pending * frame_size as u64
            )));
        }
        if txn.is_some() {
            self.commit_batch(txn.take(), db_size, &base, &cur)?;
            txns += held;
        }
        if cur.offset == offset {
            // Nothing past its start: taking it as progress would fetch it again at once.
            return Err(corrupt("it holds no frame".into()));
        }
        // The next segment starts where this one ended.
        cur.segment = cur.offset;
        self.point = cur;
        Ok(Outcome::Applied { txns })
    }

    /// Commits the replicated transactions `txn` holds, from `base` to `next` (the last
    /// one's end, at `db_size` pages): one position-file write, one SQLite commit.
    fn commit_batch(
        &mut self,
        txn: Option<Txn>,
        db_size: u32,
        base: &Point,
        next: &Point,
    ) -> Result<(), FollowError> {
        let Some(t) = txn else {
            return Err(FollowError::Fatal(anyhow!("no transaction")));
        };
        let (out, pos, mode) = (&self.out, &self.pos, self.settings.mode);
        self.full = self
            .output
            .commit(t, db_size, &self.full, |change| {
                write_record(out, pos, base, next, change, mode)
            })
            .map_err(FollowError::Fatal)?;
        self.point = next.clone();
        Ok(())
    }

    /// Lists the replica: follows a new generation (or a hole in this one) with a rebuild,
    /// and adopts the compression the next segment is stored under.
    fn check_listing(&mut self) -> Result<(), FollowError> {
        let sources = std::slice::from_ref(&self.settings.source);
        let listings = restore::list(sources, &self.settings.opts).map_err(FollowError::Store)?;
        let Some(plan) =
            restore::choose(&listings, &self.settings.opts).map_err(FollowError::Store)?
        else {
            logging::warn(
                "the replica holds no backup to follow now; waiting",
                &[("replica", &self.settings.source.name)],
            );
            return Ok(());
        };
        if plan.generation != self.point.generation {
            let reason = format!(
                "the replica moved to generation {} (from {})",
                plan.generation, self.point.generation
            );
            return self.rebuild(&plan, &reason).map_err(FollowError::Corrupt);
        }
        let (i, s) = (self.point.index, self.point.segment);
        let later: Vec<&WalSegmentInfo> = listings
            .iter()
            .filter(|l| l.generation == self.point.generation)
            .flat_map(|l| l.segments.iter())
            .filter(|seg| (seg.index, seg.offset) >= (i, s))
            .collect();
        let Some(first) = later.first() else {
            return Ok(());
        };
        let expected = (first.index, first.offset) == (i, s)
            || (self.point.offset > 0 && (first.index, first.offset) == (i.wrapping_add(1), 0));
        if expected {
            if first.compression != self.point.compression {
                self.point.compression = first.compression;
            }
            return Ok(());
        }
        let reason = format!(
            "the replica no longer holds WAL segment {} (retention removed it, or it was never uploaded); the next one it holds is {}",
            layout::wal_segment_name(i, s, self.point.compression),
            layout::wal_segment_name(first.index, first.offset, first.compression)
        );
        self.rebuild(&plan, &reason).map_err(FollowError::Corrupt)
    }

    /// Restores `plan` beside the output, then copies it into the output in one transaction.
    fn rebuild(&mut self, plan: &Plan, reason: &str) -> Result<()> {
        logging::warn(
            "rebuilding the followed database",
            &[
                ("reason", &reason),
                ("output", &self.out.display()),
                ("generation", &plan.generation),
            ],
        );
        let staging = rebuild_path(&self.out);
        remove_staging(&staging);
        let result = self.rebuild_from(plan, &staging);
        remove_staging(&staging);
        result
    }

    fn rebuild_from(&mut self, plan: &Plan, staging: &Path) -> Result<()> {
        let restored = restore::apply(
            &self.settings.source.client,
            &self.settings.source.keys,
            plan,
            staging,
            self.settings.opts.parallelism,
            Some(self.settings.mode),
        )?;
        let file = files::open_existing(staging, false)
            .with_context(|| format!("{}: cannot open", staging.display()))?;
        let page_size = u64::from(self.output.page_size());
        let mut head = [0u8; 100];
        // Through the descriptor the pages are copied from, not by name a second time.
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
            .with_context(|| format!("{}: cannot read its header", staging.display()))?;
        if wal::db_page_size(&head).map(u64::from) != Some(page_size) {
            bail!(
                "the new generation's database has another page size than {} ({page_size}); remove the output and its position file and restore it anew",
                self.out.display()
            );
        }
        let len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", staging.display()))?
            .len();
        let pages = u32::try_from(len / page_size)
            .map_err(|_| anyhow!("{}: too many pages", staging.display()))?;
        let next = point_of(&restored, plan.snapshot.compression);
        let mut buf = vec![0u8; page_size as usize];
        // Pages in ascending order, each once: the transaction keeps no per-page state.
        let mut txn = self.output.begin_sequential()?;
        let copied = (|| -> Result<Digest> {
            // The pending-byte page (past 1 GiB) is skipped: SQLite never uses it and
            // `sqlite_dbpage` refuses to write it.
            for p in apply::copied_pages(pages, self.output.page_size()) {
                let n = files::read_at_most(&file, u64::from(p - 1) * page_size, &mut buf)
                    .with_context(|| format!("{}: cannot read", staging.display()))?;
                if n != buf.len() {
                    bail!("{}: short read at page {p}", staging.display());
                }
                self.output.write(&mut txn, p, &buf)?;
            }
            let (out, pos, mode, base) = (&self.out, &self.pos, self.settings.mode, &self.point);
            self.output.commit(txn, pages, &self.full, |change| {
                write_record(out, pos, base, &next, change, mode)
            })
        })();
        if copied.is_err() {
            self.output.rollback();
        }
        self.full = copied?;
        self.point = next;
        logging::info(
            "rebuilt the followed database",
            &[
                ("output", &self.out.display()),
                ("generation", &self.point.generation),
                ("index", &format!("{:08x}", self.point.index)),
            ],
        );
        Ok(())
    }
}

enum Outcome {
    Missing,
    Applied { txns: u64 },
}

enum FollowError {
    /// The store failed: wait and try again.
    Store(anyhow::Error),
    /// The segment failed our checks, or a rebuild failed (retention may remove what its
    /// restore chose while it runs): tried again on the next polls a few times, then fatal.
    Corrupt(anyhow::Error),
    /// Nothing to retry: stop.
    Fatal(anyhow::Error),
    /// A batch of transactions could not be applied as one: roll it back and apply the
    /// segment again one transaction at a time (which reports the error, if it is one).
    Unbatch(anyhow::Error),
}

/// Where a restore left the database, as a follow position.
fn point_of(r: &Restored, fallback: Compression) -> Point {
    Point {
        generation: r.generation.clone(),
        index: r.index,
        segment: r.end.offset,
        offset: r.end.offset,
        header: r.header,
        chain: r.end.chain.unwrap_or((0, 0)),
        compression: r.end.compression.unwrap_or(fallback),
    }
}

/// Records `point` as the output's state when no transaction is in flight (after a
/// restore), with the digest of the whole database.
fn record_state(out: &Path, pos: &Path, point: &Point, full: &Digest, mode: u32) -> Result<()> {
    let change = Change {
        pages: PageSet::from_sorted_iter([1]),
        pre: full.finish(),
        post: full.finish(),
    };
    write_record(out, pos, point, point, &change, mode)
}

fn write_record(
    out: &Path,
    pos: &Path,
    base: &Point,
    next: &Point,
    change: &Change,
    mode: u32,
) -> Result<()> {
    let meta = std::fs::symlink_metadata(out)
        .with_context(|| format!("{}: cannot stat", out.display()))?;
    let record = Record {
        dev: meta.dev(),
        ino: meta.ino(),
        base: base.clone(),
        next: next.clone(),
        pages: change.pages.clone(),
        pre: change.pre,
        post: change.post,
    };
    files::write_atomic(pos, record.encode().as_bytes(), mode & 0o666)
}

fn read_record(pos: &Path) -> Result<Record> {
    let file = files::open_existing(pos, false)
        .with_context(|| format!("{}: cannot open the follow position file", pos.display()))?;
    let mut text = String::new();
    file.take(MAX_POSITION_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("{}: cannot read", pos.display()))?;
    Record::decode(&text).map_err(|e| {
        anyhow!(
            "{}: {e:#}; remove it and the database beside it to restore anew",
            pos.display()
        )
    })
}

/// Removes a rebuild's leftovers (ours by name: a crash mid-rebuild leaves them).
fn remove_staging(staging: &Path) {
    for p in [
        staging.to_path_buf(),
        files::wal_path(staging),
        files::shm_path(staging),
    ] {
        let _ = files::remove_file(&p);
    }
    let meta = crate::config::default_meta_dir(staging);
    if files::is_real_dir(&meta) {
        let _ = files::remove_dir_all(&meta);
    }
}

/// Sleeps `d`, waking early when `stop()` says so.
fn pause(d: Duration, stop: &dyn Fn() -> bool) {
    let until = Instant::now() + d;
    while !stop() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A client handle for `Settings` from the command's sources.
pub fn source_of(sources: &[Source], k: usize) -> Option<Source> {
    sources.get(k).map(|s| Source {
        name: s.name.clone(),
        client: Arc::clone(&s.client),
        keys: Arc::clone(&s.keys),
    })
}
