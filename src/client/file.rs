//! The file replica client: the replica tree (SPEC §2) in a local directory, e.g. another
//! disk or a network mount.
//!
//! It owns durability on that filesystem: every object is written to `<final>.tmp`, fsynced,
//! renamed, and its directory fsynced, so a crash leaves a whole object or none. It streams
//! (never holds an object in memory) and knows names only through `layout`; it never
//! compresses, decompresses or interprets contents.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::SystemTime;

use anyhow::{anyhow, Context};

use super::{Listing, NotFound, ReplicaClient, Result, SnapshotInfo, WalSegmentInfo};
use crate::codec::Compression;
use crate::files::{self, fsync_dir};
use crate::layout;
use crate::position::is_generation;

/// A directory entry: its name and (lstat) metadata.
type Entry = (String, fs::Metadata);

/// A replica in a local directory (a `file` replica): the replica tree under `root`.
pub struct FileClient {
    root: PathBuf,
    /// Mode of the object files (the db file's, set by the replica); directories get it with
    /// `x` wherever it has `r`. Owner-only until told otherwise.
    mode: AtomicU32,
    /// The db file's owner (set by the replica), who may own the replica dir besides root
    /// and us; `u32::MAX` until told.
    db_owner: AtomicU32,
    /// The root was found owned by root, us or the db's owner and not writable by all: an
    /// owner cannot change without root, so it is checked until it passes once.
    root_checked: AtomicBool,
}

impl FileClient {
    /// The replica rooted at `root`, which need not exist yet (it is created on first write).
    pub fn new(root: PathBuf) -> FileClient {
        FileClient {
            root,
            mode: AtomicU32::new(0o600),
            db_owner: AtomicU32::new(u32::MAX),
            root_checked: AtomicBool::new(false),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Entries of a directory as (name, metadata), plus the names that are not UTF-8 (never
    /// ours); a missing directory is empty.
    fn entries(&self, dir: &Path) -> Result<(Vec<Entry>, Vec<String>)> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(anyhow!("{}: cannot list: {e}", dir.display())),
        };
        let mut out = Vec::new();
        let mut not_utf8 = Vec::new();
        for entry in rd {
            let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
            let name = match entry.file_name().into_string() {
                Ok(name) => name,
                Err(raw) => {
                    not_utf8.push(raw.to_string_lossy().into_owned());
                    continue;
                }
            };
            // A file removed between readdir and stat (retention elsewhere) is simply gone.
            let Ok(meta) = entry.metadata() else { continue };
            out.push((name, meta));
        }
        Ok((out, not_utf8))
    }

    /// Splits a directory's entries into what `parse` recognises (regular files, or
    /// directories when `dirs`) and foreign names (relative to the root, under `rel`).
    fn listing<T>(
        &self,
        rel: &str,
        dirs: bool,
        parse: impl Fn(&str, &fs::Metadata) -> Option<T>,
    ) -> Result<Listing<T>> {
        let (entries, not_utf8) = self.entries(&self.path(rel))?;
        let mut items = Vec::new();
        let mut foreign: Vec<String> = not_utf8.into_iter().map(|n| format!("{rel}/{n}")).collect();
        for (name, meta) in entries {
            // DirEntry metadata is lstat: a symlink is neither, so never followed out of
            // the replica.
            let right_kind = if dirs { meta.is_dir() } else { meta.is_file() };
            match parse(&name, &meta).filter(|_| right_kind) {
                Some(item) => items.push(item),
                None if !dirs && meta.is_file() && layout::is_temp_name(&name) => {}
                None if layout::is_junk_name(&name) => {}
                None => foreign.push(format!("{rel}/{name}")),
            }
        }
        foreign.sort();
        Ok(Listing { items, foreign })
    }

    /// Writes `data` to `key` atomically; returns (size, mtime).
    fn write_object(&self, key: &str, data: &mut dyn Read) -> Result<(u64, SystemTime)> {
        let path = self.path(key);
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{}: no parent directory", path.display()))?;
        self.check_root()?;
        let mode = self.mode.load(Ordering::Relaxed);
        // Exactly the db's mode: the umask must not widen it nor a leftover keep its own.
        files::create_dir_all(dir, files::dir_mode_for(mode), None)?;
        let (size, meta) = files::write_atomic_with(&path, mode, |f, tmp| copy(data, f, tmp))?;
        let mtime = meta
            .modified()
            .with_context(|| format!("{}: cannot stat", path.display()))?;
        Ok((size, mtime))
    }

    /// Refuses a root directory that exists and that someone else could swap the contents
    /// of: owned by another user than root, us or the db's owner, or writable by all without
    /// the sticky bit (`files::check_dir`). One we are about to create is made by the walk
    /// in `create_dir_all`, which refuses a world-writable parent.
    fn check_root(&self) -> Result<()> {
        if self.root_checked.load(Ordering::Relaxed) || !self.root.exists() {
            return Ok(());
        }
        let owner = Some(self.db_owner.load(Ordering::Relaxed)).filter(|&u| u != u32::MAX);
        files::check_dir(&self.root, owner).context("file replica")?;
        self.root_checked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The object at `key` from byte `offset` on.
    fn open_object(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        use std::io::{Seek, SeekFrom};
        let path = self.path(key);
        match File::open(&path) {
            Ok(mut f) => {
                if offset > 0 {
                    f.seek(SeekFrom::Start(offset))
                        .map_err(|e| anyhow!("{}: cannot seek: {e}", path.display()))?;
                }
                Ok(Box::new(BufReader::with_capacity(64 * 1024, f)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(NotFound(path.display().to_string())))
            }
            Err(e) => Err(anyhow!("{}: cannot open: {e}", path.display())),
        }
    }

    fn remove_files(&self, keys: impl Iterator<Item = String>) -> Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for key in keys {
            let path = self.path(&key);
            match files::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow!("{}: cannot delete: {e}", path.display())),
            }
            if let Some(d) = path.parent() {
                if !dirs.iter().any(|x| x == d) {
                    dirs.push(d.to_path_buf());
                }
            }
        }
        for d in dirs {
            if d.exists() {
                fsync_dir(&d)?;
            }
        }
        Ok(())
    }
}

/// io::copy that tells a failing source from a failing destination.
fn copy(data: &mut dyn Read, f: &mut File, path: &Path) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(anyhow!(
                    "{}: cannot read the data to store: {e}",
                    path.display()
                ))
            }
        };
        f.write_all(&buf[..n])
            .with_context(|| format!("{}: cannot write", path.display()))?;
        total += n as u64;
    }
}

fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

impl ReplicaClient for FileClient {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn set_object_mode(&self, mode: u32) {
        self.mode.store(mode & 0o777, Ordering::Relaxed);
    }

    fn set_db_owner(&self, uid: u32) {
        self.db_owner.store(uid, Ordering::Relaxed);
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list_generations(&self) -> Result<Listing<String>> {
        let mut l = self.listing(layout::GENERATIONS_DIR, true, |name, _| {
            is_generation(name).then(|| name.to_string())
        })?;
        l.items.sort();
        Ok(l)
    }

    fn list_snapshots(&self, generation: &str) -> Result<Listing<SnapshotInfo>> {
        let mut l = self.listing(&layout::snapshots_dir(generation), false, |name, meta| {
            SnapshotInfo::from_name(generation, name, meta.len(), mtime(meta))
        })?;
        l.items.sort_by_key(|s| s.index);
        Ok(l)
    }

    fn list_wal_segments(&self, generation: &str) -> Result<Listing<WalSegmentInfo>> {
        let mut l = self.listing(&layout::wal_dir(generation), false, |name, meta| {
            WalSegmentInfo::from_name(generation, name, meta.len(), mtime(meta))
        })?;
        l.items.sort_by_key(|s| (s.index, s.offset));
        Ok(l)
    }

    fn write_snapshot(
        &self,
        generation: &str,
        index: u32,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<SnapshotInfo> {
        let key = layout::snapshot_key(generation, index, compression);
        let (size, created) = self.write_object(&key, data)?;
        Ok(SnapshotInfo {
            generation: generation.to_string(),
            index,
            size,
            created,
            compression,
        })
    }

    fn write_wal_segment(
        &self,
        generation: &str,
        index: u32,
        offset: u64,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<WalSegmentInfo> {
        let key = layout::wal_segment_key(generation, index, offset, compression);
        let (size, created) = self.write_object(&key, data)?;
        Ok(WalSegmentInfo {
            generation: generation.to_string(),
            index,
            offset,
            size,
            created,
            compression,
        })
    }

    fn open_snapshot(&self, info: &SnapshotInfo) -> Result<Box<dyn Read + Send>> {
        self.open_snapshot_at(info, 0)
    }

    fn open_wal_segment(&self, info: &WalSegmentInfo) -> Result<Box<dyn Read + Send>> {
        self.open_wal_segment_at(info, 0)
    }

    fn open_snapshot_at(&self, info: &SnapshotInfo, offset: u64) -> Result<Box<dyn Read + Send>> {
        self.open_object(
            &layout::snapshot_key(&info.generation, info.index, info.compression),
            offset,
        )
    }

    fn open_wal_segment_at(
        &self,
        info: &WalSegmentInfo,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>> {
        self.open_object(
            &layout::wal_segment_key(&info.generation, info.index, info.offset, info.compression),
            offset,
        )
    }

    fn write_db_id(&self, generation: &str, id: &str) -> Result<()> {
        let data = format!("{id}\n");
        self.write_object(&layout::db_id_key(generation), &mut data.as_bytes())?;
        Ok(())
    }

    fn read_db_id(&self, generation: &str) -> Result<Option<String>> {
        super::read_id(self.open_object(&layout::db_id_key(generation), 0))
    }

    fn delete_generation(&self, generation: &str) -> Result<()> {
        if !is_generation(generation) {
            return Err(anyhow!(
                "refusing to delete {generation:?}: not a generation id"
            ));
        }
        let dir = self.path(&layout::generation_dir(generation));
        // Never following a link on the way or inside (see `files::Dir`).
        match files::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(anyhow!("{}: cannot delete generation: {e}", dir.display())),
        }
        fsync_dir(&self.path(layout::GENERATIONS_DIR))
    }

    fn delete_snapshots(&self, snapshots: &[SnapshotInfo]) -> Result<()> {
        self.remove_files(
            snapshots
                .iter()
                .map(|s| layout::snapshot_key(&s.generation, s.index, s.compression)),
        )
    }

    fn delete_wal_segments(&self, segments: &[WalSegmentInfo]) -> Result<()> {
        self.remove_files(
            segments
                .iter()
                .map(|s| layout::wal_segment_key(&s.generation, s.index, s.offset, s.compression)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::is_not_found;

    const G: &str = "0123456789abcdef";

    fn read_all(mut r: Box<dyn Read + Send>) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn round_trip_list_open_delete() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileClient::new(dir.path().join("replica"));
        assert!(
            c.generations().unwrap().is_empty(),
            "missing root lists empty"
        );
        assert!(c.snapshots(G).unwrap().is_empty());

        let s = c
            .write_snapshot(G, 0, Compression::Gzip, &mut &b"snap"[..])
            .unwrap();
        assert_eq!(s.size, 4);
        let w1 = c
            .write_wal_segment(G, 0, 32, Compression::Gzip, &mut &b"bb"[..])
            .unwrap();
        let w0 = c
            .write_wal_segment(G, 0, 0, Compression::Gzip, &mut &b"a"[..])
            .unwrap();
        let w2 = c
            .write_wal_segment(G, 0x1_0000, 0, Compression::Gzip, &mut &b"c"[..])
            .unwrap();
        assert!(dir
            .path()
            .join("replica/generations")
            .join(G)
            .join("snapshots/00000000.snapshot.gz")
            .is_file());
        assert!(dir
            .path()
            .join("replica/generations")
            .join(G)
            .join("wal/00000000_00000020.wal.gz")
            .is_file());

        assert_eq!(c.generations().unwrap(), vec![G.to_string()]);
        assert_eq!(c.snapshots(G).unwrap(), vec![s.clone()]);
        let segs = c.wal_segments(G).unwrap();
        assert_eq!(segs, vec![w0.clone(), w1.clone(), w2.clone()]);
        assert_eq!(read_all(c.open_snapshot(&s).unwrap()), b"snap");
        assert_eq!(read_all(c.open_wal_segment(&w1).unwrap()), b"bb");

        c.delete_wal_segments(&[w0.clone(), w0.clone()]).unwrap();
        assert_eq!(c.wal_segments(G).unwrap(), vec![w1, w2]);
        assert!(is_not_found(&c.open_wal_segment(&w0).err().unwrap()));
        c.delete_snapshots(std::slice::from_ref(&s)).unwrap();
        assert!(c.snapshots(G).unwrap().is_empty());
        c.delete_generation(G).unwrap();
        c.delete_generation(G).unwrap();
        assert!(c.generations().unwrap().is_empty());
        assert!(c.delete_generation("../etc").is_err());
    }

    #[test]
    fn listing_ignores_foreign_and_tmp_names() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileClient::new(dir.path().to_path_buf());
        c.write_snapshot(G, 2, Compression::Gzip, &mut &b"x"[..])
            .unwrap();
        c.write_wal_segment(G, 2, 0, Compression::Gzip, &mut &b"x"[..])
            .unwrap();
        let gens = dir.path().join("generations");
        fs::create_dir_all(gens.join("not-a-generation")).unwrap();
        fs::write(gens.join("fedcba9876543210"), b"a file, not a dir").unwrap();
        let g = gens.join(G);
        fs::write(g.join("snapshots/00000001.snapshot.gz.tmp"), b"partial").unwrap();
        fs::write(g.join("snapshots/README"), b"").unwrap();
        fs::write(g.join("wal/00000003_00000000.wal.zst"), b"").unwrap();
        fs::write(g.join("wal/0000003_00000000.wal.gz"), b"").unwrap();
        // Junk a desktop or an NFS server leaves is not even foreign.
        fs::write(gens.join(".DS_Store"), b"").unwrap();
        fs::write(g.join("wal/.nfs000000000012345600000001"), b"").unwrap();
        fs::write(g.join("snapshots/._00000002.snapshot.gz"), b"").unwrap();
        let foreign = |l: Vec<String>| {
            l.into_iter()
                .filter(|n| n.contains(".DS_Store") || n.contains(".nfs") || n.contains("._"))
                .collect::<Vec<_>>()
        };
        assert!(foreign(c.list_generations().unwrap().foreign).is_empty());
        assert!(foreign(c.list_snapshots(G).unwrap().foreign).is_empty());
        assert!(foreign(c.list_wal_segments(G).unwrap().foreign).is_empty());
        assert_eq!(c.generations().unwrap(), vec![G.to_string()]);
        assert_eq!(
            c.snapshots(G)
                .unwrap()
                .iter()
                .map(|s| s.index)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(c.wal_segments(G).unwrap().len(), 1);
    }

    #[test]
    fn wide_offsets_sort_numerically_and_missing_snapshot_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileClient::new(dir.path().to_path_buf());
        // A 9-digit offset sorts before `ffffffff` as a string; the listing must sort by value.
        let wide = c
            .write_wal_segment(G, 1, 0x1_0000_0000, Compression::Gzip, &mut &b"w"[..])
            .unwrap();
        let narrow = c
            .write_wal_segment(G, 1, 0xffff_fff0, Compression::Lz4, &mut &b"n"[..])
            .unwrap();
        assert!(dir
            .path()
            .join("generations")
            .join(G)
            .join("wal/00000001_100000000.wal.gz")
            .is_file());
        let segs = c.wal_segments(G).unwrap();
        assert_eq!(segs, vec![narrow, wide]);
        assert_eq!(segs[0].compression, Compression::Lz4, "taken from the name");

        let gone = SnapshotInfo {
            generation: G.to_string(),
            index: 9,
            size: 0,
            created: SystemTime::UNIX_EPOCH,
            compression: Compression::Gzip,
        };
        assert!(is_not_found(&c.open_snapshot(&gone).err().unwrap()));
        c.delete_snapshots(&[gone]).unwrap();
    }

    struct FailingReader(usize);

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("source broke"));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileClient::new(dir.path().to_path_buf());
        let err = c
            .write_snapshot(G, 0, Compression::Gzip, &mut FailingReader(100_000))
            .unwrap_err();
        assert!(err.to_string().contains("source broke"), "{err}");
        let snaps = dir.path().join("generations").join(G).join("snapshots");
        assert_eq!(
            fs::read_dir(&snaps).unwrap().count(),
            0,
            "no final and no tmp file"
        );
        assert!(c.snapshots(G).unwrap().is_empty());
    }
}
