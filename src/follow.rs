//! `restore -f`: a restored database that keeps following its replica (issue #25).
//!
//! The follower restores as `restore` does (into `<out>.follow-new`, then swapped in), then
//! polls for the next WAL segment by name: `<index>_<offset>` right after the last one
//! applied, else the next index at offset 0 (one GET per idle poll, the two names taking
//! turns). It lists the replica only at start, at a rebuild, and every [`CHECK_POLLS`] idle
//! polls (a new generation or a retention gap is invisible to name probes).
//!
//! Each replicated transaction (the frames up to a commit frame) is verified against the
//! WAL's checksum chain and applied to OUT through SQLite itself, as a writer would: one
//! `BEGIN IMMEDIATE … COMMIT` of `INSERT INTO sqlite_dbpage(pgno, data)` (and a NULL insert
//! past the commit's size to shrink the file). OUT stays in WAL mode, so readers see whole
//! transactions, keep their snapshots, and wait at most for a commit.
//!
//! Crash safety rests on the position file `<out>-follow` (written atomically): the position
//! and a content hash of OUT after the last transaction (`cur`), and, written inside the
//! open SQLite transaction just before its COMMIT, the position and hash of the state that
//! COMMIT produces (`next`). At start OUT's pages are hashed: equal to `next`, the commit
//! landed; equal to `cur`, it did not; anything else means someone else wrote to OUT, and the
//! follower refuses to continue. While running, `PRAGMA data_version` tells the same.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags};

use crate::client::{self, ReplicaClient, WalSegmentInfo};
use crate::codec::{self, read_full, Compression};
use crate::files;
use crate::layout;
use crate::logging;
use crate::restore::{self, Options, Plan, Source};
use crate::wal::{self, FrameHeader, FrameVerifier, WalHeader, WAL_HEADER_SIZE};

/// Idle polls between two listings of the replica (a new generation, a retention gap).
pub const CHECK_POLLS: u64 = 60;

/// How long the swap of a rebuilt database waits for readers of the old WAL per attempt.
const SWAP_BUSY: Duration = Duration::from_secs(5);

/// What the follower needs besides the replicas.
pub struct FollowOptions {
    /// Time between polls when there is nothing new.
    pub interval: Duration,
    /// The restore's `-parallelism`, for (re)builds.
    pub parallelism: usize,
    /// Mode of the built database (the original db's, when known).
    pub mode: Option<u32>,
    /// Restore's filters (`-replica`, `-generation`); never `-index` or `-timestamp`.
    pub restore: Options,
}

/// Where OUT is in the replica: the next byte of WAL index `index` of `generation` to apply,
/// how to verify it, and what OUT's pages hash to there.
#[derive(Clone, Debug, PartialEq)]
struct State {
    generation: String,
    index: u32,
    offset: u64,
    /// The header of `index` as read (absent before its first byte is applied).
    header: Option<[u8; WAL_HEADER_SIZE]>,
    /// The checksum chain after the last applied frame of `index`.
    chain: (u32, u32),
    /// The compression the replica's segments use (the probe's suffix).
    compression: Compression,
    /// [`content_hash`] of OUT in this state.
    hash: u128,
}

/// The position file's contents.
#[derive(Clone, Debug, PartialEq)]
struct PositionFile {
    cur: State,
    /// The state a commit in progress produces.
    next: Option<State>,
    /// `cur` is the database at `<out>.follow-new`, not yet renamed to OUT.
    swap: bool,
}

/// The position file beside `out`.
pub fn position_path(out: &Path) -> PathBuf {
    files::sibling(out, "-follow")
}

/// Where a (re)build is made before it is swapped in.
fn new_path(out: &Path) -> PathBuf {
    files::sibling(out, ".follow-new")
}

fn encode(p: &PositionFile) -> String {
    let mut s = String::from("litestream-follow 1\n");
    let mut state = |name: &str, st: &State| {
        let header = st
            .header
            .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{name} {} {:08x} {} {header} {:08x} {:08x} {} {:032x}\n",
            st.generation,
            st.index,
            st.offset,
            st.chain.0,
            st.chain.1,
            st.compression.extension(),
            st.hash
        ));
    };
    state("cur", &p.cur);
    if let Some(n) = &p.next {
        state("next", n);
    }
    if p.swap {
        s.push_str("swap\n");
    }
    s
}

fn decode(text: &str) -> Option<PositionFile> {
    let mut lines = text.lines();
    if lines.next()? != "litestream-follow 1" {
        return None;
    }
    let state = |line: &str, name: &str| -> Option<State> {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 9 || f[0] != name || !crate::position::is_generation(f[1]) {
            return None;
        }
        let header = match f[4] {
            "-" => None,
            h if h.len() == 2 * WAL_HEADER_SIZE => {
                let mut out = [0u8; WAL_HEADER_SIZE];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                WalHeader::parse(&out).ok()?;
                Some(out)
            }
            _ => return None,
        };
        Some(State {
            generation: f[1].to_string(),
            index: u32::from_str_radix(f[2], 16).ok()?,
            offset: f[3].parse().ok()?,
            header,
            chain: (
                u32::from_str_radix(f[5], 16).ok()?,
                u32::from_str_radix(f[6], 16).ok()?,
            ),
            compression: Compression::from_extension(f[7])?,
            hash: u128::from_str_radix(f[8], 16).ok()?,
        })
    };
    let cur = state(lines.next()?, "cur")?;
    let mut next = None;
    let mut swap = false;
    for line in lines {
        if line == "swap" {
            swap = true;
        } else {
            next = Some(state(line, "next")?);
        }
    }
    Some(PositionFile { cur, next, swap })
}

fn write_position(out: &Path, p: &PositionFile) -> Result<()> {
    files::write_atomic(&position_path(out), encode(p).as_bytes(), 0o600)
}

fn read_position(out: &Path) -> Result<Option<PositionFile>> {
    let path = position_path(out);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("{}: cannot read: {e}", path.display())),
    };
    decode(&text).map(Some).ok_or_else(|| {
        anyhow!(
            "{}: not a follower position file (remove it and {} to restore afresh)",
            path.display(),
            out.display()
        )
    })
}

/// FNV-1a, 128 bits, of a page and its number: OUT's content hash is the XOR of it over every
/// page, so a transaction updates it from the pages it touches alone. Not a defence against
/// someone forging pages (who can write OUT can do anything to its readers anyway), but no
/// careless write goes unseen.
///
/// Page 1's file change counter and version-valid-for (bytes 24..28 and 92..96) are left
/// out: SQLite's pager rewrites them with its own count whenever a commit writes page 1, so
/// the follower's differ from the primary's (harmless in WAL mode, where readers use the
/// WAL index, not the counter, to see changes).
fn page_hash(pgno: u32, data: &[u8]) -> u128 {
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in pgno.to_le_bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    for (i, b) in data.iter().enumerate() {
        let b = if pgno == 1 && ((24..28).contains(&i) || (92..96).contains(&i)) {
            0
        } else {
            *b
        };
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The content hash of the database `conn` sees (its whole page image, WAL included).
fn content_hash(conn: &Connection) -> Result<u128> {
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage")?;
    let mut rows = stmt.query([])?;
    let mut h = 0u128;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data: Vec<u8> = row.get(1)?;
        h ^= page_hash(pgno, &data);
    }
    Ok(h)
}

/// The follower's connection to OUT: WAL mode, commits durable (a power cut must not lose a
/// commit whose position was recorded), no automatic checkpoint on the commit path beyond
/// SQLite's passive one.
fn open_out(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("{}: cannot open", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = wal", [], |r| r.get(0))
        .with_context(|| format!("{}: cannot enable WAL mode", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{}: journal_mode is {mode}, not wal; readers would block the follower",
            path.display()
        );
    }
    conn.execute_batch("PRAGMA synchronous = FULL;")
        .with_context(|| format!("{}: cannot set synchronous", path.display()))?;
    // Fails early, with the reason, on a SQLite built without the table.
    conn.query_row("SELECT count(*) FROM sqlite_dbpage WHERE pgno = 1", [], |_| Ok(()))
        .with_context(|| {
            format!(
                "{}: this build's SQLite has no sqlite_dbpage table (build with LIBSQLITE3_FLAGS=SQLITE_ENABLE_DBPAGE_VTAB)",
                path.display()
            )
        })?;
    Ok(conn)
}

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

fn page_size(conn: &Connection) -> Result<u32> {
    Ok(conn.query_row("PRAGMA page_size", [], |r| r.get(0))?)
}

/// Runs the follower until SIGINT/SIGTERM (then `Ok`) or an error that stops it.
pub fn run(sources: &[Source], out: &Path, opts: &FollowOptions) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| anyhow!("cannot handle signal {sig}: {e}"))?;
    }
    let mut f = Follower::start(sources, out, opts, &stop)?;
    f.follow(&stop)
}

struct Follower<'a> {
    sources: &'a [Source],
    out: &'a Path,
    opts: &'a FollowOptions,
    /// Which source the current generation comes from.
    replica: usize,
    conn: Connection,
    state: State,
    /// `PRAGMA data_version` after our last commit.
    version: i64,
    page_size: u32,
    /// Generations seen at the last listing.
    known: Vec<String>,
}

impl<'a> Follower<'a> {
    fn start(
        sources: &'a [Source],
        out: &'a Path,
        opts: &'a FollowOptions,
        stop: &AtomicBool,
    ) -> Result<Follower<'a>> {
        let listings = restore::list(sources, &opts.restore)?;
        let plan = restore::choose(&listings, &opts.restore)?
            .ok_or_else(|| anyhow!("no matching backups found to follow"))?;
        let known = listings.iter().map(|l| l.generation.clone()).collect();
        let position = read_position(out)?;
        let out_exists = fs::symlink_metadata(out).is_ok();
        let resumed = match position {
            None if out_exists => bail!(
                "{} exists and has no follower position file {}: it was not made by `restore -f` (move it away, or restore without -f)",
                out.display(),
                position_path(out).display()
            ),
            None => None,
            Some(p) => {
                if p.swap {
                    finish_swap(out, &p)?;
                }
                if fs::symlink_metadata(out).is_err() {
                    logging::warn(
                        "the followed database is gone; restoring it afresh",
                        &[("path", &out.display())],
                    );
                    None
                } else {
                    Some(resume(out, p)?)
                }
            }
        };
        let (conn, state) = match resumed {
            Some(r) => r,
            None => {
                if stop.load(Ordering::SeqCst) {
                    bail!("stopped before the first restore");
                }
                build(sources, &plan, out, opts, None)?
            }
        };
        let mut f = Follower {
            sources,
            out,
            opts,
            replica: plan.replica,
            version: data_version(&conn)?,
            page_size: page_size(&conn)?,
            conn,
            state,
            known,
        };
        f.check_reachable(&listings, &plan)?;
        logging::info(
            "following",
            &[
                ("output", &out.display()),
                ("replica", &sources[f.replica].name),
                ("generation", &f.state.generation),
                ("index", &format!("{:08x}", f.state.index)),
                ("offset", &f.state.offset),
                ("interval", &format!("{:?}", opts.interval)),
            ],
        );
        Ok(f)
    }

    fn client(&self) -> &Arc<dyn ReplicaClient> {
        &self.sources[self.replica].client
    }

    /// With a fresh listing: rebuilds when the replica moved to another generation or
    /// retention removed the segments OUT needs next.
    fn check_reachable(
        &mut self,
        listings: &[restore::GenerationListing],
        plan: &Plan,
    ) -> Result<()> {
        let reason = if plan.generation != self.state.generation {
            Some(format!(
                "the replica moved on to generation {} (following {})",
                plan.generation, self.state.generation
            ))
        } else {
            let st = &self.state;
            let segs: Vec<&WalSegmentInfo> = listings
                .iter()
                .filter(|l| l.replica == plan.replica && l.generation == st.generation)
                .flat_map(|l| l.segments.iter())
                .collect();
            let next_here = segs
                .iter()
                .any(|s| (s.index, s.offset) == (st.index, st.offset));
            let next_index = segs
                .iter()
                .any(|s| (s.index, s.offset) == (st.index.wrapping_add(1), 0));
            let later = segs
                .iter()
                .any(|s| (s.index, s.offset) > (st.index, st.offset));
            if later && !next_here && !next_index {
                Some(format!(
                    "the replica no longer holds WAL segment {} or {} (retention removed what this copy needs next)",
                    layout::wal_segment_stem(st.index, st.offset),
                    layout::wal_segment_stem(st.index.wrapping_add(1), 0),
                ))
            } else {
                if let Some(c) = segs.last().map(|s| s.compression) {
                    self.state.compression = c;
                }
                None
            }
        };
        if let Some(reason) = reason {
            logging::warn(
                "rebuilding the followed database",
                &[("reason", &reason), ("output", &self.out.display())],
            );
            let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
            let (conn, state) = build(self.sources, plan, self.out, self.opts, Some(old))?;
            self.conn = conn;
            self.state = state;
            self.replica = plan.replica;
            self.version = data_version(&self.conn)?;
            self.page_size = page_size(&self.conn)?;
        }
        Ok(())
    }

    /// Lists the replica again and acts on what changed.
    fn recheck(&mut self) -> Result<()> {
        let listings = restore::list(self.sources, &self.opts.restore)?;
        let gens: Vec<String> = listings.iter().map(|l| l.generation.clone()).collect();
        if gens != self.known {
            logging::info(
                "the replica's generations changed",
                &[("generations", &gens.join(","))],
            );
        }
        self.known = gens;
        let Some(plan) = restore::choose(&listings, &self.opts.restore)? else {
            return Ok(());
        };
        self.check_reachable(&listings, &plan)
    }

    fn follow(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut idle: u64 = 0;
        let mut applied_burst = 0u64;
        let mut burst_start = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            // One probe per poll: the next segment of this index, or (taking turns while
            // idle) the first of the next index.
            let candidates = if idle % 2 == 0 {
                [
                    (self.state.index, self.state.offset),
                    (self.state.index.wrapping_add(1), 0),
                ]
            } else {
                [
                    (self.state.index.wrapping_add(1), 0),
                    (self.state.index, self.state.offset),
                ]
            };
            let (index, offset) = candidates[0];
            if index != self.state.index && self.state.offset == 0 {
                // Nothing of this index applied yet: its first segment comes first.
                idle += 1;
                if self.idle_pause(stop, idle)? {
                    break;
                }
                continue;
            }
            let info = WalSegmentInfo {
                generation: self.state.generation.clone(),
                index,
                offset,
                size: 0,
                created: SystemTime::UNIX_EPOCH,
                compression: self.state.compression,
            };
            let key = layout::wal_segment_key(&info.generation, index, offset, info.compression);
            let reader = match self.client().open_wal_segment(&info) {
                Ok(r) => Some(r),
                Err(e) if client::is_not_found(&e) => None,
                Err(e) => {
                    logging::warn(
                        "cannot read the next WAL segment; retrying",
                        &[("key", &key), ("error", &format!("{e:#}"))],
                    );
                    None
                }
            };
            let Some(reader) = reader else {
                if applied_burst > 0 {
                    logging::info(
                        "caught up",
                        &[
                            ("generation", &self.state.generation),
                            ("index", &format!("{:08x}", self.state.index)),
                            ("offset", &self.state.offset),
                            ("transactions", &applied_burst),
                            (
                                "elapsed",
                                &format!("{:.3}s", burst_start.elapsed().as_secs_f64()),
                            ),
                        ],
                    );
                    applied_burst = 0;
                }
                idle += 1;
                if self.idle_pause(stop, idle)? {
                    break;
                }
                continue;
            };
            if applied_burst == 0 {
                burst_start = Instant::now();
            }
            idle = 0;
            applied_burst += self.apply_segment(reader, index, offset, &key, stop)?;
        }
        logging::info(
            "follower stopped",
            &[
                ("generation", &self.state.generation),
                ("index", &format!("{:08x}", self.state.index)),
                ("offset", &self.state.offset),
            ],
        );
        Ok(())
    }

    /// Sleeps one interval (waking for a signal); lists the replica every `CHECK_POLLS`
    /// idle polls. True when stopped.
    fn idle_pause(&mut self, stop: &AtomicBool, idle: u64) -> Result<bool> {
        if idle % CHECK_POLLS == 0 {
            if let Err(e) = self.recheck() {
                logging::warn("cannot list the replica", &[("error", &format!("{e:#}"))]);
            }
        }
        let until = Instant::now() + self.opts.interval;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        Ok(stop.load(Ordering::SeqCst))
    }

    /// Applies every transaction of one segment, each in its own SQLite transaction. A bad
    /// frame or a segment ending inside a transaction stops the follower with OUT at its
    /// last whole transaction. Returns the transactions applied.
    fn apply_segment(
        &mut self,
        reader: Box<dyn Read + Send>,
        index: u32,
        offset: u64,
        key: &str,
        stop: &AtomicBool,
    ) -> Result<u64> {
        let at = layout::wal_segment_stem(self.state.index, self.state.offset);
        let corrupt = move |msg: String| {
            anyhow!(
                "WAL segment {key}: {msg}; the replica is corrupt (the followed database stays at its last whole transaction, before {at})"
            )
        };
        let mut r = codec::decoder(self.state.compression, reader)
            .with_context(|| format!("cannot read WAL segment {key}"))?;
        let mut next = self.state.clone();
        if index != self.state.index {
            next.index = index;
            next.offset = 0;
            next.header = None;
        }
        let header = if offset == 0 {
            let mut raw = [0u8; WAL_HEADER_SIZE];
            let n =
                read_full(&mut r, &mut raw).map_err(|e| corrupt(format!("cannot read: {e}")))?;
            if n < WAL_HEADER_SIZE {
                return Err(corrupt(format!("{n} bytes, shorter than a WAL header")));
            }
            let h = WalHeader::parse(&raw).map_err(|e| corrupt(e.to_string()))?;
            if let Some(prev) = self
                .state
                .header
                .as_ref()
                .and_then(|p| WalHeader::parse(p).ok())
            {
                if index != self.state.index
                    && !wal::is_next_life(&prev, &h)
                    && h.checkpoint_seq != 0
                {
                    return Err(corrupt(format!(
                        "its header has salt-1 {:08x}, where the WAL restart after index {:08x} gives {:08x}; it comes from another database or WAL history",
                        h.salt1, self.state.index, prev.salt1.wrapping_add(1)
                    )));
                }
            }
            next.header = Some(raw);
            next.chain = h.checksum();
            next.offset = WAL_HEADER_SIZE as u64;
            h
        } else {
            let raw = next
                .header
                .ok_or_else(|| corrupt("no header for this index".into()))?;
            WalHeader::parse(&raw).map_err(|e| corrupt(e.to_string()))?
        };
        if header.page_size != self.page_size {
            return Err(corrupt(format!(
                "page size {} differs from the database's {}",
                header.page_size, self.page_size
            )));
        }
        let mut verifier = FrameVerifier::resume(&header, next.chain);
        let frame_size = header.frame_size();
        let mut frame = vec![0u8; frame_size];
        let mut in_tx = false;
        let mut touched: HashMap<u32, u128> = HashMap::new();
        let mut applied = 0u64;
        let mut frames_in_tx = 0u64;
        let result = (|| -> Result<()> {
            loop {
                let n = read_full(&mut r, &mut frame).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidData
                        || e.kind() == std::io::ErrorKind::InvalidInput
                    {
                        corrupt(format!("cannot decompress: {e}"))
                    } else {
                        anyhow!("WAL segment {key}: cannot read: {e}")
                    }
                })?;
                if n == 0 {
                    if in_tx {
                        return Err(corrupt(format!(
                            "segment ends at offset {} inside a transaction (no commit frame)",
                            next.offset + frames_in_tx * frame_size as u64
                        )));
                    }
                    return Ok(());
                }
                if n < frame_size {
                    return Err(corrupt(format!("torn frame ({n} bytes)")));
                }
                let Some(fh) = verifier.check(&frame) else {
                    return Err(corrupt(format!(
                        "frame at offset {} fails its salt or checksum check",
                        next.offset + frames_in_tx * frame_size as u64
                    )));
                };
                if fh.page_no == 0 {
                    return Err(corrupt("frame for page 0".into()));
                }
                if !in_tx {
                    if data_version(&self.conn)? != self.version {
                        bail!(
                            "{}: another connection wrote to the followed database; refusing to continue (a read replica must only be read; restore it afresh)",
                            self.out.display()
                        );
                    }
                    self.conn.execute_batch("BEGIN IMMEDIATE")?;
                    in_tx = true;
                    touched.clear();
                }
                frames_in_tx += 1;
                self.write_page(
                    fh.page_no,
                    &frame[wal::FRAME_HEADER_SIZE..],
                    &mut next,
                    &mut touched,
                )?;
                if fh.is_commit() {
                    self.commit(
                        &fh,
                        &verifier,
                        frames_in_tx,
                        frame_size,
                        &mut next,
                        &touched,
                    )?;
                    in_tx = false;
                    frames_in_tx = 0;
                    applied += 1;
                    // A signal stops after the transaction being applied.
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                }
            }
        })();
        if in_tx {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result?;
        if offset == 0 && applied == 0 && next.offset == WAL_HEADER_SIZE as u64 {
            // A segment with a header and no frames: the index starts here.
            self.state = State {
                hash: self.state.hash,
                ..next
            };
            write_position(
                self.out,
                &PositionFile {
                    cur: self.state.clone(),
                    next: None,
                    swap: false,
                },
            )?;
        }
        Ok(applied)
    }

    /// Writes one frame's page inside the open transaction, keeping the content hash: the
    /// page's old version leaves it when first touched, and `touched` keeps the hash of its
    /// newest version. (Within the transaction `sqlite_dbpage` sees only the pages that
    /// existed when it began: writes through it bypass the b-tree's page count.)
    fn write_page(
        &self,
        pgno: u32,
        data: &[u8],
        next: &mut State,
        touched: &mut HashMap<u32, u128>,
    ) -> Result<()> {
        if !touched.contains_key(&pgno) {
            if let Some(old) = self.read_page(pgno)? {
                next.hash ^= page_hash(pgno, &old);
            }
        }
        touched.insert(pgno, page_hash(pgno, data));
        self.conn
            .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?
            .execute(params![pgno, data])
            .with_context(|| format!("{}: cannot write page {pgno}", self.out.display()))?;
        Ok(())
    }

    fn read_page(&self, pgno: u32) -> Result<Option<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
        let mut rows = stmt.query(params![pgno])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }

    /// Ends the replicated transaction: shrinks to the commit's size, records the state it
    /// produces in the position file, then commits.
    fn commit(
        &mut self,
        fh: &FrameHeader,
        verifier: &FrameVerifier,
        frames: u64,
        frame_size: usize,
        next: &mut State,
        touched: &HashMap<u32, u128>,
    ) -> Result<()> {
        // The size when the transaction began (see `write_page`).
        let pages: u32 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        // Pages past the new end leave the hash (those written in this transaction were
        // counted out when first touched).
        for p in fh.db_size.saturating_add(1)..=pages {
            if !touched.contains_key(&p) {
                if let Some(old) = self.read_page(p)? {
                    next.hash ^= page_hash(p, &old);
                }
            }
        }
        let end = touched.keys().copied().max().unwrap_or(0).max(pages);
        if fh.db_size < end {
            self.conn
                .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, NULL)")?
                .execute(params![fh.db_size + 1])
                .with_context(|| format!("{}: cannot shrink", self.out.display()))?;
        }
        for (&p, &h) in touched {
            if p <= fh.db_size {
                next.hash ^= h;
            }
        }
        next.offset += frames * frame_size as u64;
        next.chain = verifier.chain();
        write_position(
            self.out,
            &PositionFile {
                cur: self.state.clone(),
                next: Some(next.clone()),
                swap: false,
            },
        )?;
        self.conn
            .execute_batch("COMMIT")
            .with_context(|| format!("{}: cannot commit", self.out.display()))?;
        self.version = data_version(&self.conn)?;
        if cfg!(debug_assertions) && std::env::var_os("LITESTREAM_FOLLOW_VERIFY").is_some() {
            // Tests: the incremental hash against a full one after every commit.
            let full = content_hash(&self.conn)?;
            if full != next.hash {
                let mut stmt = self.conn.prepare("SELECT pgno, data FROM sqlite_dbpage")?;
                let mut rows = stmt.query([])?;
                let mut info = Vec::new();
                while let Some(row) = rows.next()? {
                    let pgno: u32 = row.get(0)?;
                    let data: Vec<u8> = row.get(1)?;
                    info.push((
                        pgno,
                        page_hash(pgno, &data) as u16,
                        touched.get(&pgno).map(|h| *h as u16),
                    ));
                }
                bail!("content hash drifted after index {:08x} offset {} pages_at_begin={pages} db_size={} {info:?}", next.index, next.offset, fh.db_size);
            }
        }
        self.state = next.clone();
        logging::debug(
            "applied transaction",
            &[
                ("index", &format!("{:08x}", next.index)),
                ("offset", &next.offset),
                ("frames", &frames),
                ("pages", &fh.db_size),
            ],
        );
        Ok(())
    }
}

/// Checks OUT against the position file and opens it.
fn resume(out: &Path, p: PositionFile) -> Result<(Connection, State)> {
    let conn = open_out(out)?;
    let hash = content_hash(&conn)?;
    let state = if p.next.as_ref().is_some_and(|n| n.hash == hash) {
        p.next.clone().unwrap_or(p.cur.clone())
    } else if p.cur.hash == hash {
        p.cur.clone()
    } else {
        bail!(
            "{}: its contents are not what the follower last wrote ({}): someone else wrote to it; refusing to continue (move it and {} away to restore afresh)",
            out.display(),
            position_path(out).display(),
            position_path(out).display()
        );
    };
    write_position(
        out,
        &PositionFile {
            cur: state.clone(),
            next: None,
            swap: false,
        },
    )?;
    logging::info(
        "resuming",
        &[
            ("generation", &state.generation),
            ("index", &format!("{:08x}", state.index)),
            ("offset", &state.offset),
        ],
    );
    Ok((conn, state))
}

/// Restores `plan` beside OUT (`<out>.follow-new`) and swaps it in. The whole plan is
/// restored before any reader sees it (the snapshot is newer than the start of its index, so
/// the index's first transactions replayed one by one would show states that never were).
fn build(
    sources: &[Source],
    plan: &Plan,
    out: &Path,
    opts: &FollowOptions,
    old: Option<Connection>,
) -> Result<(Connection, State)> {
    let new = new_path(out);
    for p in [new.clone(), files::wal_path(&new), files::shm_path(&new)] {
        // Only ours: a leftover of a build a crash interrupted.
        let _ = fs::remove_file(&p);
    }
    let source = &sources[plan.replica];
    restore::apply(&source.client, plan, &new, opts.parallelism, opts.mode).map_err(|e| {
        anyhow!(
            "restore: generation {} from replica {}: {e:#}",
            plan.generation,
            source.name
        )
    })?;
    // Where the last index ends, and its checksum chain there: read again, verified.
    let (index, end) = match plan.indexes.last() {
        Some((index, segments)) => (
            *index,
            Some(index_end(
                source.client.as_ref(),
                &plan.generation,
                *index,
                segments,
            )?),
        ),
        None => (plan.snapshot.index, None),
    };
    let hash = {
        let conn = open_out(&new)?;
        let h = content_hash(&conn)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        h
    };
    for p in [files::wal_path(&new), files::shm_path(&new)] {
        let _ = fs::remove_file(&p);
    }
    let compression = plan
        .indexes
        .last()
        .and_then(|(_, segs)| segs.last())
        .map(|s| s.compression)
        .unwrap_or(plan.snapshot.compression);
    let state = match end {
        Some((header, offset, chain)) => State {
            generation: plan.generation.clone(),
            index,
            offset,
            header: Some(header),
            chain,
            compression,
            hash,
        },
        None => State {
            generation: plan.generation.clone(),
            index,
            offset: 0,
            header: None,
            chain: (0, 0),
            compression,
            hash,
        },
    };
    if let Some(old) = old {
        drain_wal(out, &old)?;
        drop(old);
    }
    let p = PositionFile {
        cur: state.clone(),
        next: None,
        swap: true,
    };
    write_position(out, &p)?;
    finish_swap(out, &p)?;
    let conn = open_out(out)?;
    logging::info(
        "restored; following from here",
        &[
            ("generation", &state.generation),
            ("index", &format!("{:08x}", state.index)),
            ("output", &out.display()),
        ],
    );
    Ok((conn, state))
}

/// Reads one index's segments again, verifying every frame, to find where it ends: (its
/// header, the offset after its last frame, the checksum chain there). A restore applies an
/// index without recording that; the follower continues from exactly there.
fn index_end(
    client: &dyn ReplicaClient,
    generation: &str,
    index: u32,
    segments: &[WalSegmentInfo],
) -> Result<([u8; WAL_HEADER_SIZE], u64, (u32, u32))> {
    let mut header: Option<([u8; WAL_HEADER_SIZE], WalHeader, FrameVerifier)> = None;
    let mut offset = 0u64;
    let mut frame = Vec::new();
    for seg in segments {
        let key = layout::wal_segment_key(generation, index, seg.offset, seg.compression);
        let corrupt = |msg: String| anyhow!("WAL segment {key}: {msg}; the replica is corrupt");
        if seg.offset != offset {
            return Err(corrupt(format!("expected offset {offset}")));
        }
        let raw = client
            .open_wal_segment(seg)
            .with_context(|| format!("cannot read WAL segment {key}"))?;
        let mut r = codec::decoder(seg.compression, raw)
            .with_context(|| format!("cannot read WAL segment {key}"))?;
        if header.is_none() {
            let mut raw = [0u8; WAL_HEADER_SIZE];
            let n = read_full(&mut r, &mut raw).map_err(|e| corrupt(e.to_string()))?;
            if n < WAL_HEADER_SIZE {
                return Err(corrupt("shorter than a WAL header".into()));
            }
            let h = WalHeader::parse(&raw).map_err(|e| corrupt(e.to_string()))?;
            frame = vec![0u8; h.frame_size()];
            header = Some((raw, h, FrameVerifier::new(&h)));
            offset = WAL_HEADER_SIZE as u64;
        }
        let Some((_, _, verifier)) = header.as_mut() else {
            return Err(corrupt("no WAL header".into()));
        };
        let mut last_commit = true;
        loop {
            let n = read_full(&mut r, &mut frame).map_err(|e| corrupt(e.to_string()))?;
            if n == 0 {
                break;
            }
            if n < frame.len() {
                return Err(corrupt("torn frame".into()));
            }
            let fh = verifier.check(&frame).ok_or_else(|| {
                corrupt(format!("frame at offset {offset} fails its checksum check"))
            })?;
            last_commit = fh.is_commit();
            offset += frame.len() as u64;
        }
        if !last_commit {
            return Err(corrupt("ends inside a transaction".into()));
        }
    }
    match header {
        Some((raw, _, verifier)) => Ok((raw, offset, verifier.chain())),
        None => bail!("WAL index {generation}/{index:08x} has no segments"),
    }
}

/// Checkpoints OUT's WAL into the db file and empties it, waiting for readers still using it:
/// the rebuilt file that replaces OUT must not meet the old file's WAL frames.
fn drain_wal(out: &Path, conn: &Connection) -> Result<()> {
    conn.busy_timeout(SWAP_BUSY)?;
    for attempt in 0.. {
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .with_context(|| format!("{}: cannot checkpoint", out.display()))?;
        if busy == 0 {
            return Ok(());
        }
        if attempt % 6 == 0 {
            logging::warn(
                "waiting for readers of the old database to finish before swapping the rebuilt one in",
                &[("path", &out.display())],
            );
        }
    }
    Ok(())
}

/// Renames `<out>.follow-new` over OUT (when still there), removes the old WAL and index, and
/// clears the swap mark. Readers holding the old file keep it (and the unlinked WAL and
/// index they opened): a consistent, frozen copy until they reopen.
fn finish_swap(out: &Path, p: &PositionFile) -> Result<()> {
    let new = new_path(out);
    if fs::symlink_metadata(&new).is_ok() {
        if fs::symlink_metadata(out).is_ok() {
            // A restart after a crash mid-swap: the old file's WAL may still hold frames.
            let conn = open_out(out)?;
            drain_wal(out, &conn)?;
        }
        fs::rename(&new, out)
            .with_context(|| format!("{}: cannot rename into place", out.display()))?;
        for path in [files::wal_path(out), files::shm_path(out)] {
            let _ = fs::remove_file(&path);
        }
        files::fsync_dir(files::parent_dir(out))?;
    }
    write_position(
        out,
        &PositionFile {
            cur: p.cur.clone(),
            next: None,
            swap: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_file_round_trips_and_rejects_junk() {
        let st = State {
            generation: "0123456789abcdef".into(),
            index: 7,
            offset: 4152,
            header: None,
            chain: (1, 0xffff_ffff),
            compression: Compression::Gzip,
            hash: 0xdead_beef_u128 << 64,
        };
        let p = PositionFile {
            cur: st.clone(),
            next: Some(State { offset: 8272, ..st }),
            swap: true,
        };
        assert_eq!(decode(&encode(&p)), Some(p));
        assert_eq!(decode("litestream-follow 1\ncur x\n"), None);
        assert_eq!(decode(""), None);
    }

    #[test]
    fn page_hash_depends_on_number_and_data() {
        let a = page_hash(1, &[0u8; 16]);
        assert_ne!(a, page_hash(2, &[0u8; 16]));
        assert_ne!(a, page_hash(1, &[1u8; 16]));
    }
}
