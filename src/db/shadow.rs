//! The shadow WAL: byte-exact copies, under `<meta dir>/generations/<gen>/wal/`, of each WAL
//! life's header and committed frames, from which replicas upload. This module owns those
//! files: their names, loading one after a crash (cutting a torn or uncommitted tail),
//! creating the next index, copying newly committed frames from the real WAL (verifying salts
//! and the checksum chain as it goes), and removing what every replica has uploaded.
//!
//! It never talks to SQLite and decides nothing about generations (`verdict` does); nothing
//! reads a shadow file past the committed `Shadow::size` this module keeps.

use std::cell::OnceCell;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use super::verdict::{Reason, Verdict, WalFacts};
use crate::codec;
use crate::files::{self, read_at, read_at_most};
use crate::position::Position;
use crate::wal::{FrameVerifier, WalHeader, WAL_HEADER_SIZE};

/// Buffer size for copying WAL bytes (one `pread` and one `pwrite` per buffer under load);
/// bounds memory whatever the transaction size.
const COPY_BUFFER: usize = 1024 * 1024;

/// The first read of a copy pass (at least one frame): doubled after every read whose frames
/// all verified, up to `COPY_BUFFER`. After a WAL restart the file keeps its old length but
/// only the first frames are of the new life; a first read of `COPY_BUFFER` read ~1 MiB there
/// to copy a few KiB (issue 23, CPU per commit).
const FIRST_READ: usize = 64 * 1024;

/// The directory of a generation's shadow WAL files.
pub fn shadow_wal_dir(meta_dir: &Path, generation: &str) -> PathBuf {
    meta_dir.join("generations").join(generation).join("wal")
}

/// The shadow WAL file of one index.
pub fn shadow_wal_path(meta_dir: &Path, generation: &str, index: u32) -> PathBuf {
    shadow_wal_dir(meta_dir, generation).join(format!("{index:08x}.wal"))
}

/// The index a shadow file name stands for (`0000000a.wal`); `None` for any other name.
fn shadow_index(name: &str) -> Option<u32> {
    name.strip_suffix(".wal")
        .filter(|s| s.len() == 8)
        .and_then(|s| u32::from_str_radix(s, 16).ok())
}

/// The shadow WAL life being appended to.
pub(super) struct Shadow {
    pub(super) generation: String,
    pub(super) index: u32,
    /// The shadow file.
    pub(super) path: PathBuf,
    pub(super) header: WalHeader,
    pub(super) header_bytes: [u8; WAL_HEADER_SIZE],
    /// Committed, frame-aligned length of the shadow file.
    pub(super) size: u64,
    /// Checksum chain at `size`, to verify the next frames.
    pub(super) chain: (u32, u32),
    /// How far the real WAL was verified beyond `size` (frames of a transaction not committed
    /// yet), with the chain there, so a long transaction is not re-read on every tick.
    pub(super) scan: Option<(u64, (u32, u32))>,
    /// The last copy pass stopped at a frame that did not verify (see `copy_pass`).
    pub(super) stopped_at_stale: bool,
    /// Bytes read from the real WAL by copy passes into this shadow (what copying costs, for
    /// tests beside the bytes copied).
    pub(super) wal_bytes_read: u64,
    /// The shadow file, opened for writing once per index: reaching it anew (a walk from `/`
    /// without following links, ~24 syscalls) for each copy and each fsync was a third of a
    /// small commit's syscalls.
    pub(super) file: OnceCell<File>,
}

/// What one pass of `Shadow::copy_pass` over the WAL found.
struct Pass {
    /// Where the valid frames ended.
    end: u64,
    /// The checksum chain there.
    chain: (u32, u32),
    /// The end of the last commit frame seen, with the chain there.
    committed: Option<(u64, (u32, u32))>,
    /// Frames were written to the shadow file.
    wrote: bool,
}

impl Shadow {
    /// Committed frames in this life.
    pub(super) fn frames(&self) -> u64 {
        (self.size - WAL_HEADER_SIZE as u64) / self.header.frame_size() as u64
    }

    /// The published position: this index at its committed size.
    pub(super) fn position(&self) -> Position {
        Position::new(self.generation.clone(), self.index, self.size)
    }

    /// Creates shadow file `index` of `generation` in `meta_dir`, holding the real WAL's
    /// header, durably. `make_dir` creates the generation's directory, once the WAL's header
    /// has been read (so a WAL without one leaves no empty directory behind).
    pub(super) fn create(
        meta_dir: &Path,
        wal: &Path,
        generation: &str,
        index: u32,
        mode: u32,
        make_dir: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Shadow> {
        let mut header_bytes = [0u8; WAL_HEADER_SIZE];
        read_at(wal, 0, &mut header_bytes)?;
        let header =
            WalHeader::parse(&header_bytes).map_err(|e| anyhow!("{}: {e}", wal.display()))?;
        make_dir(&shadow_wal_dir(meta_dir, generation))?;
        let path = shadow_wal_path(meta_dir, generation, index);
        let mut f = files::create_replacing(&path, mode)?;
        f.write_all(&header_bytes)
            .with_context(|| format!("{}: cannot write shadow wal", path.display()))?;
        f.sync_all()
            .with_context(|| format!("{}: cannot fsync shadow wal", path.display()))?;
        files::fsync_dir(files::parent_dir(&path))?;
        Ok(Shadow {
            generation: generation.to_string(),
            index,
            path,
            header,
            header_bytes,
            size: WAL_HEADER_SIZE as u64,
            chain: header.checksum(),
            scan: None,
            stopped_at_stale: false,
            wal_bytes_read: 0,
            file: OnceCell::from(f),
        })
    }

    /// Loads a shadow file: its header, its committed frame-aligned length (a torn or
    /// uncommitted tail from a crash is cut off) and the checksum chain there.
    pub(super) fn load(path: PathBuf, generation: String, index: u32) -> Result<Verdict<Shadow>> {
        let mut f = match files::open_existing(&path, true) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(Reason::NoShadowWal)),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: cannot open shadow wal", path.display()))
            }
        };
        let mut header_bytes = [0u8; WAL_HEADER_SIZE];
        if !read_whole(&mut f, &mut header_bytes)? {
            return Ok(Err(Reason::ShortShadowWal));
        }
        let header = match WalHeader::parse(&header_bytes) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Reason::InvalidShadowHeader(e.to_string()))),
        };
        let (size, chain) = committed_end(&mut f, &header)?;
        if f.metadata()?.len() > size {
            f.set_len(size)?;
            f.sync_all()?;
        }
        Ok(Ok(Shadow {
            generation,
            index,
            path,
            header,
            header_bytes,
            size,
            chain,
            scan: None,
            stopped_at_stale: false,
            wal_bytes_read: 0,
            file: OnceCell::from(f),
        }))
    }

    /// True when the shadow's last frame equals the real WAL's bytes at the same offset (or the
    /// shadow holds no frame).
    pub(super) fn last_frame_matches(&self, wal: &Path) -> Result<bool> {
        if self.size <= WAL_HEADER_SIZE as u64 {
            return Ok(true);
        }
        let frame_size = self.header.frame_size() as u64;
        let off = self.size - frame_size;
        let mut ours = vec![0u8; frame_size as usize];
        let mut theirs = vec![0u8; frame_size as usize];
        read_at(&self.path, off, &mut ours)?;
        if read_at(wal, off, &mut theirs).is_err() {
            return Ok(false);
        }
        Ok(ours == theirs)
    }

    /// Appends the WAL's newly committed frames to the shadow in one read of them: each frame is
    /// verified (salts and checksum chain) in the buffer it was read into and written from
    /// that buffer at the same offset in the shadow. Frames past the last commit (an open
    /// transaction) are written too, but `size` stays at the last commit: nothing reads a
    /// shadow past its size, `load` cuts such a tail after a crash, and `cut_to_size` before
    /// the index is closed. The scan point is remembered, so an open transaction's frames are
    /// read and verified once, not on every tick. With `sync`, the new frames are fsynced;
    /// without, the caller must `sync` before anything publishes the new size.
    ///
    /// `buffer` is the copy buffer: kept between calls while frames keep coming, and emptied
    /// by a call that copies nothing (under load a fresh buffer per tick cost page faults, and
    /// an idle database, of many, should hold none). Returns the committed bytes added.
    pub(super) fn copy_from(
        &mut self,
        wal: &Path,
        buffer: &mut Vec<u8>,
        sync: bool,
    ) -> Result<u64> {
        let wal_file =
            File::open(wal).with_context(|| format!("{}: cannot open wal", wal.display()))?;
        let wal_len = wal_file
            .metadata()
            .with_context(|| format!("{}: cannot stat wal", wal.display()))?
            .len();
        // Frames in [size, scan point) were verified and written by an earlier call.
        let (start, start_chain) = match self.scan {
            Some((off, chain)) if off > self.size => (off, chain),
            _ => (self.size, self.chain),
        };
        let mut pass = self.copy_pass(&wal_file, wal_len, buffer, start, start_chain)?;
        let stale_tail = pass.end == start && start > self.size;
        if stale_tail {
            // The remembered scan point no longer continues the chain (an open transaction was
            // rolled back and overwritten): rescan from the shadow's end, and drop what the
            // earlier calls wrote past it.
            pass = self.copy_pass(&wal_file, wal_len, buffer, self.size, self.chain)?;
        }
        self.scan = Some((pass.end, pass.chain));
        if !pass.wrote {
            *buffer = Vec::new();
        }
        if stale_tail {
            self.writer()?
                .set_len(pass.end)
                .with_context(|| format!("{}: cannot truncate shadow wal", self.path.display()))?;
        }
        let Some((end, chain)) = pass.committed.filter(|(end, _)| *end > self.size) else {
            return Ok(0);
        };
        if sync && pass.wrote {
            self.writer()?
                .sync_data()
                .with_context(|| format!("{}: cannot fsync shadow wal", self.path.display()))?;
        }
        let added = end - self.size;
        self.size = end;
        self.chain = chain;
        if self.scan.is_some_and(|(scan, _)| scan <= end) {
            self.scan = None;
        }
        Ok(added)
    }

    /// Reads the WAL from `start` (chain `start_chain`) until its frames stop verifying or its
    /// length at the start of the call is reached, writing every verified run of frames to the
    /// shadow at the same offset.
    ///
    /// Reads are sized to the WAL's length (`wal_len`), up to a step that starts at
    /// `FIRST_READ` and doubles after each read whose frames all verified, up to the buffer
    /// (`COPY_BUFFER`): a tick's frames come in a few `pread`s (one for a small commit) and
    /// as many `pwrite`s, and the buffer grows only as far as a tick's frames need (a database
    /// of small commits keeps a small one). Past the end of this life's frames (a restarted
    /// WAL keeps its old length) a pass so reads at most one step beyond the last frame it
    /// copies, and at most `FIRST_READ` when that is the first step. Only when the previous
    /// pass stopped at a frame that did not verify (a previous WAL life's frames lie past our
    /// end, or a frame was being written) does the first read take one frame: on an idle
    /// database those stale bytes would otherwise be read on every tick.
    fn copy_pass(
        &mut self,
        wal: &File,
        wal_len: u64,
        chunk: &mut Vec<u8>,
        start: u64,
        start_chain: (u32, u32),
    ) -> Result<Pass> {
        let frame_size = self.header.frame_size();
        let max_chunk = (COPY_BUFFER / frame_size).max(1) * frame_size;
        let mut step = (FIRST_READ / frame_size).max(1) * frame_size;
        let mut verifier = FrameVerifier::resume(&self.header, start_chain);
        let mut pass = Pass {
            end: start,
            chain: start_chain,
            committed: None,
            wrote: false,
        };
        let mut probe = self.stopped_at_stale;
        let mut broken = false;
        loop {
            let whole = wal_len.saturating_sub(pass.end) / frame_size as u64 * frame_size as u64;
            let want = if probe {
                frame_size
            } else {
                usize::try_from(whole).map_or(step, |w| w.min(step))
            };
            if whole == 0 || want == 0 {
                break;
            }
            probe = false;
            if chunk.len() < want {
                chunk.resize(want, 0);
            }
            let got = read_at_most(wal, pass.end, &mut chunk[..want])?;
            self.wal_bytes_read += got as u64;
            let mut good = 0;
            for f in chunk[..got - got % frame_size].chunks_exact(frame_size) {
                let Some(fh) = verifier.check(f) else {
                    broken = true;
                    break;
                };
                good += frame_size;
                if fh.is_commit() {
                    pass.committed = Some((pass.end + good as u64, verifier.chain()));
                }
            }
            if good > 0 {
                self.writer()?
                    .write_all_at(&chunk[..good], pass.end)
                    .with_context(|| format!("{}: cannot write shadow wal", self.path.display()))?;
                pass.end += good as u64;
                pass.wrote = true;
            }
            if broken || got < want {
                break;
            }
            // Every frame of this read verified: the next may be larger.
            if want == step {
                step = (step * 2).min(max_chunk);
            }
        }
        self.stopped_at_stale = broken;
        pass.chain = verifier.chain();
        Ok(pass)
    }

    /// The shadow file opened for writing, once per index.
    fn writer(&self) -> Result<&File> {
        match self.file.get() {
            Some(f) => Ok(f),
            None => {
                let f = open_for_writing(&self.path)?;
                Ok(self.file.get_or_init(|| f))
            }
        }
    }

    /// A closed index's shadow must end at its last commit: replicas take a closed file's
    /// length as its end. `copy_from` may have written an open transaction's frames past it;
    /// cut them (durably, before the next index exists, so a crash cannot leave a closed
    /// index with a tail).
    pub(super) fn cut_to_size(&mut self) -> Result<()> {
        self.scan = None;
        let f = self.writer()?;
        if f.metadata()?.len() > self.size {
            f.set_len(self.size)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("{}: cannot truncate shadow wal", self.path.display()))?;
        }
        Ok(())
    }

    /// fsyncs the shadow file (after `copy_from` without `sync`).
    pub(super) fn sync(&self) -> Result<()> {
        self.writer()?
            .sync_data()
            .with_context(|| format!("{}: cannot fsync shadow wal", self.path.display()))
    }
}

/// The end of the last valid commit frame of a shadow file read from just past its header,
/// and the checksum chain there.
fn committed_end(f: &mut File, header: &WalHeader) -> Result<(u64, (u32, u32))> {
    let frame_size = header.frame_size();
    let mut verifier = FrameVerifier::new(header);
    let mut r = BufReader::with_capacity(COPY_BUFFER, f);
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
    Ok(committed)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` at end of file (a partial frame counts as end:
/// it is a write in progress or a torn tail).
fn read_whole(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    Ok(codec::read_full(r, buf)? == buf.len())
}

/// Opens an existing shadow WAL file for writing.
fn open_for_writing(path: &Path) -> Result<File> {
    files::open_existing(path, true)
        .with_context(|| format!("{}: cannot open shadow wal", path.display()))
}

/// The real WAL's length and header, from one `stat` (and one read when it has a header).
pub(super) fn wal_facts(wal: &Path) -> Result<WalFacts> {
    let len = files::len_or_zero(wal);
    let header = if len >= WAL_HEADER_SIZE as u64 {
        let mut hdr = [0u8; WAL_HEADER_SIZE];
        read_at(wal, 0, &mut hdr)?;
        Some(hdr)
    } else {
        None
    };
    Ok(WalFacts { len, header })
}

/// The real WAL's header, or `None` while the file is shorter than one.
pub(super) fn read_header(wal: &Path) -> Result<Option<[u8; WAL_HEADER_SIZE]>> {
    Ok(wal_facts(wal)?.header)
}

/// Number of whole frames in the real WAL file (committed or not).
pub(super) fn wal_frames(wal: &Path, frame_size: usize) -> u64 {
    files::len_or_zero(wal).saturating_sub(WAL_HEADER_SIZE as u64) / frame_size as u64
}

/// The highest index among a generation's shadow files.
pub(super) fn highest_shadow_index(dir: &Path) -> Result<Option<u32>> {
    let names = match files::read_dir_names(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    Ok(names
        .iter()
        .filter_map(|n| shadow_index(&n.to_string_lossy()))
        .max())
}

// The removals below list and unlink through `files`, which never follows a link on the way:
// the meta dir is the db owner's, who could otherwise swap `generations` for a link to `/`.

/// Removes a generation's shadow files below `keep_from`.
pub(super) fn remove_indexes_below(dir: &Path, keep_from: u32) {
    let Ok(names) = files::read_dir_names(dir) else {
        return;
    };
    for name in names {
        if shadow_index(&name.to_string_lossy()).is_some_and(|i| i < keep_from) {
            let _ = files::remove_file(&dir.join(name));
        }
    }
}

/// Removes every generation's shadow files but `keep`'s.
pub(super) fn remove_other_generations(meta_dir: &Path, keep: &str) {
    let dir = meta_dir.join("generations");
    let Ok(names) = files::read_dir_names(&dir) else {
        return;
    };
    for name in names {
        if name.to_string_lossy() != keep {
            let _ = files::remove_dir_all(&dir.join(name));
        }
    }
}

/// Removes `*.tmp` files left by a crash (SPEC §3).
pub(super) fn remove_tmp_files(dir: &Path) {
    let Ok(names) = files::read_dir_names(dir) else {
        return;
    };
    for name in names {
        let path = dir.join(name);
        if files::is_real_dir(&path) {
            remove_tmp_files(&path);
        } else if path.extension().is_some_and(|e| e == "tmp") {
            let _ = files::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL of `rows` autocommit rows of 3000 random bytes, written by its own connection
    /// with auto-checkpoints off, so every frame stays in one life.
    fn wal_of(db: &Path, rows: usize) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x BLOB);",
        )
        .unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
        }
        conn
    }

    fn new_shadow(meta: &Path, wal: &Path, index: u32) -> Shadow {
        Shadow::create(meta, wal, "0123456789abcdef", index, 0o600, |d| {
            std::fs::create_dir_all(d).map_err(Into::into)
        })
        .unwrap()
    }

    /// Issue 23, point 4: after a WAL restart the file keeps its old length, and only its
    /// first frames are of the new life. The copy pass read a whole 1 MiB buffer there
    /// ("read 1046480 bytes to copy 12360"); now at most 64 KiB past them.
    #[test]
    fn copy_reads_little_past_a_restarted_wals_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (db, meta) = (dir.path().join("a.db"), dir.path().join("meta"));
        let wal = dir.path().join("a.db-wal");
        let conn = wal_of(&db, 800);
        let old_len = std::fs::metadata(&wal).unwrap().len();
        assert!(old_len > 2 * COPY_BUFFER as u64, "wal of {old_len} bytes");

        // The first life, copied whole in steps of 64 KiB doubling to 1 MiB.
        let mut buf = Vec::new();
        let mut first = new_shadow(&meta, &wal, 0);
        first.copy_from(&wal, &mut buf, true).unwrap();
        assert_eq!(first.size, old_len);
        assert_eq!(
            std::fs::read(&first.path).unwrap(),
            std::fs::read(&wal).unwrap()
        );
        assert!(buf.len() <= COPY_BUFFER);

        // Backfill it all, then one small commit restarts the WAL over the old frames.
        let (busy, log, done): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log), (0, done));
        conn.execute("INSERT INTO t VALUES (x'01')", []).unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), old_len);

        let mut second = new_shadow(&meta, &wal, 1);
        assert_ne!(second.header_bytes, first.header_bytes, "the WAL restarted");
        let added = second.copy_from(&wal, &mut buf, true).unwrap();
        let read = second.wal_bytes_read;
        assert!(added > 0 && added < old_len / 100, "copied {added} bytes");
        assert!(
            read <= added + 64 * 1024,
            "read {read} bytes to copy {added}"
        );
        let copied = std::fs::read(&second.path).unwrap();
        let mut real = vec![0u8; second.size as usize];
        read_at(&wal, 0, &mut real).unwrap();
        assert_eq!(copied[..second.size as usize], real[..]);

        // Nothing new: the next pass probes the stale frame alone.
        assert_eq!(second.copy_from(&wal, &mut buf, true).unwrap(), 0);
        assert_eq!(
            second.wal_bytes_read - read,
            second.header.frame_size() as u64
        );
        drop(conn);
    }

    #[test]
    fn shadow_names() {
        assert_eq!(
            shadow_wal_path(Path::new("/m"), "0123456789abcdef", 10),
            PathBuf::from("/m/generations/0123456789abcdef/wal/0000000a.wal")
        );
        assert_eq!(shadow_index("0000000a.wal"), Some(10));
        assert_eq!(shadow_index("a.wal"), None);
        assert_eq!(shadow_index("0000000a.wal.tmp"), None);
    }
}
