//! The clean stop: at shutdown, proof that the db file alone holds the replicated state, so the
//! next start can continue the generation instead of uploading a full snapshot.
//!
//! Why: after the daemon stops, the application usually keeps going and later closes the
//! database, and SQLite's last connection checkpoints and deletes the `-wal`. The next start
//! then finds no WAL life the shadow followed, and without more knowledge the only sound
//! choice is a new generation, a full snapshot upload (Litestream's #1165/#1197: gigabytes on
//! every restart). The seal gives that knowledge. Under SQLite's write lock (no frame can be
//! added), with every committed frame copied into the shadow and the WAL fully checkpointed
//! into the db file, the db file *is* the state at the shadow's position. We record the db
//! file's identity, size and change times with that position (`<meta dir>/clean-stop`). At the
//! next start, a db file with the same stamp still is that state: any write to it since (a
//! checkpoint of frames we never saw, a restore over it, a copy) changes its size or its
//! mtime/ctime, and the seal waits out the timestamp granule before it lets writers in, so a
//! later write cannot share the recorded mtime. Then whatever WAL SQLite now reads (none, a
//! fresh one, or the life the application restarted) holds only changes made after that
//! state, and becomes the generation's next index.
//!
//! Two limits of `stat`, where the seal is refused: a filesystem with whole-second timestamps
//! (a write in the seal's second leaves the stamp as it was), and another boot (after a crash
//! the disk can hold a checkpoint's data without its new mtime/ctime: fdatasync does not flush
//! them, `lazytime` keeps them for hours). And the next index must be one restore follows: a
//! WAL life that is neither the next (salt-1 + 1) nor a fresh WAL (checkpoint sequence 0),
//! say after two TRUNCATE checkpoints while stopped, starts a new generation.
//!
//! The record is single-use: it is removed when the next start reads it, whatever it decides,
//! so a crash later never resumes from a stale one. A `kill -9` leaves no record, and the start
//! after it behaves as before (resume if the WAL life is the shadow's, else a new generation).
//!
//! The record's format and its comparison are pure (`Seal`); the two `Db` methods do the I/O.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

use super::shadow::{read_header, Shadow};
use super::Db;
use crate::files::{self, wal_path, write_atomic};
use crate::logging;
use crate::sqlite::{self, briefly, open_pin_connection, CheckpointMode};
use crate::wal::WAL_HEADER_SIZE;

/// The record's file name in the meta dir.
pub(super) const CLEAN_STOP: &str = "clean-stop";

/// How long after its last change a db file's stamp can be trusted: longer than the kernel's
/// coarse timestamp granule (one jiffy: 1–10 ms), so a write after the seal cannot leave the
/// recorded mtime in place.
const GRANULE: Duration = Duration::from_millis(25);

/// What makes a db file the same file with the same contents, as far as `stat` can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DbStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl DbStamp {
    pub(super) fn of(path: &Path) -> io::Result<DbStamp> {
        let m = fs::metadata(path)?;
        Ok(DbStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether both times are whole seconds: the mark of a filesystem whose timestamps are
    /// that coarse (ext4 with 128-byte inodes, ext3, FAT, HFS+). There a write in the same
    /// second as the seal (the app's close checkpointing an in-place update) leaves the stamp
    /// as it was, and no sleep short enough to hold the write lock through can wait it out.
    /// (On a nanosecond filesystem both are zero about once in 10^18 seals.)
    pub(super) fn has_whole_second_times(&self) -> bool {
        self.mtime.1 == 0 && self.ctime.1 == 0
    }

    /// What differs from `then`, in words for the log; `None` when nothing does.
    pub(super) fn changed_since(&self, then: &DbStamp) -> Option<&'static str> {
        if (self.dev, self.ino) != (then.dev, then.ino) {
            Some("another file is at the database's path")
        } else if self.size != then.size {
            Some("the database file's size changed")
        } else if self.mtime != then.mtime {
            Some("the database file was written")
        } else if self.ctime != then.ctime {
            Some("the database file's inode changed (written, chmod or chown)")
        } else {
            None
        }
    }
}

/// The record: at position (`generation`, `index`, `offset`) of a shadow whose WAL header was
/// `header`, the db file had `stamp` and held that state by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seal {
    pub generation: String,
    pub index: u32,
    pub offset: u64,
    pub header: [u8; WAL_HEADER_SIZE],
    pub stamp: DbStamp,
    /// The kernel's boot id at the seal: a stamp is in-memory truth, and after a crash the
    /// disk may hold a write's data without its mtime/ctime (fdatasync does not flush them).
    pub boot_id: String,
}

impl Seal {
    pub(super) fn encode(&self) -> String {
        let s = &self.stamp;
        format!(
            "generation={}\nindex={:08x}\noffset={}\nwal-header={}\ndb-dev={}\ndb-ino={}\ndb-size={}\ndb-mtime={}.{:09}\ndb-ctime={}.{:09}\nboot-id={}\n",
            self.generation,
            self.index,
            self.offset,
            hex(&self.header),
            s.dev,
            s.ino,
            s.size,
            s.mtime.0,
            s.mtime.1,
            s.ctime.0,
            s.ctime.1,
            self.boot_id,
        )
    }

    /// `None` for anything that is not a whole record (a record is never half trusted).
    pub(super) fn decode(text: &str) -> Option<Seal> {
        let get = |key: &str| -> Option<&str> {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        };
        let generation = get("generation")?.to_string();
        let index = u32::from_str_radix(get("index")?, 16).ok()?;
        let offset = get("offset")?.parse().ok()?;
        let header = unhex(get("wal-header")?)?;
        let time = |s: &str| -> Option<(i64, i64)> {
            let (a, b) = s.split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let stamp = DbStamp {
            dev: get("db-dev")?.parse().ok()?,
            ino: get("db-ino")?.parse().ok()?,
            size: get("db-size")?.parse().ok()?,
            mtime: time(get("db-mtime")?)?,
            ctime: time(get("db-ctime")?)?,
        };
        let boot_id = get("boot-id")?.to_string();
        if boot_id.is_empty() {
            return None;
        }
        Some(Seal {
            boot_id,
            generation,
            index,
            offset,
            header,
            stamp,
        })
    }

    /// Whether this record was made at the end of `shadow` as loaded now.
    pub(super) fn is_at_end_of(&self, shadow: &Shadow) -> bool {
        self.generation == shadow.generation
            && self.index == shadow.index
            && self.offset == shadow.size
            && self.header == shadow.header_bytes
    }
}

/// This boot's id (Linux), `None` where there is none.
pub(super) fn boot_id() -> Option<String> {
    let s = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let s = s.trim();
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then(|| s.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; WAL_HEADER_SIZE]> {
    if s.len() != 2 * WAL_HEADER_SIZE || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; WAL_HEADER_SIZE];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads and removes the record (single-use); `None` when there is none or it does not parse.
pub(super) fn take(meta_dir: &Path) -> Option<Seal> {
    let path = meta_dir.join(CLEAN_STOP);
    let text = fs::read_to_string(&path).ok();
    let _ = files::remove_file(&path);
    text.as_deref().and_then(Seal::decode)
}

impl Db {
    /// At shutdown, after the final tick: records the clean stop when it can be proven (see
    /// the module comment). Never fails the shutdown: a seal that cannot be made is logged and
    /// the next start decides as it always did.
    pub(super) fn seal(&mut self) {
        match self.try_seal() {
            Ok(Ok(seal)) => logging::info(
                "clean stop recorded: the next start continues this generation unless the database file changes meanwhile",
                &[
                    ("db", &self.db_label()),
                    ("generation", &seal.generation),
                    ("index", &format!("{:08x}", seal.index)),
                ],
            ),
            Ok(Err(why)) => logging::info(
                "clean stop not recorded: the next start may begin a new generation",
                &[("db", &self.db_label()), ("why", &why)],
            ),
            Err(e) => logging::warn(
                "clean stop not recorded: the next start may begin a new generation",
                &[("db", &self.db_label()), ("error", &format!("{e:#}"))],
            ),
        }
    }

    fn try_seal(&mut self) -> Result<Result<Seal, String>> {
        if self.shadow.is_none() || self.conn.is_none() || self.db_id.is_none() {
            return Ok(Err("the database is not being replicated".into()));
        }
        // Most of the backfill first, outside the write lock, so that application writers
        // wait on the one below only for what was committed meanwhile. (Our read lock keeps
        // frames we have not copied out of it.)
        if let Ok(pin) = open_pin_connection(&self.shared.path, self.cfg.busy_timeout) {
            let _ = sqlite::checkpoint(&pin, CheckpointMode::Passive);
        }
        self.end_read_tx()?;
        let busy_timeout = self.cfg.busy_timeout;
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        match briefly(conn, busy_timeout, |c| c.execute_batch("BEGIN IMMEDIATE"))? {
            Ok(()) => {}
            Err(e) if sqlite::is_busy(&e) => {
                return Ok(Err("the application holds the write lock".into()))
            }
            Err(e) => return Err(e).context("cannot take the write lock"),
        }
        let sealed = self.seal_under_write_lock();
        let conn = self.conn.as_ref().ok_or_else(|| anyhow!("no connection"))?;
        let released = conn.execute_batch("ROLLBACK");
        let sealed = sealed?;
        released.context("cannot release the write lock")?;
        Ok(sealed)
    }

    /// Under our write lock: nobody can add a frame, so the copy below is the WAL's last
    /// commit, and a checkpoint that backfills every frame leaves the db file equal to the
    /// shadow's position.
    fn seal_under_write_lock(&mut self) -> Result<Result<Seal, String>> {
        let wal = wal_path(&self.shared.path);
        if !self.wal_header_is_shadows()? {
            return Ok(Err("the wal is not the life the shadow follows".into()));
        }
        if self.copy_to_shadow()? {
            self.publish();
        }
        let shadow = self
            .shadow
            .as_ref()
            .ok_or_else(|| anyhow!("no shadow wal"))?;
        let pin = open_pin_connection(&self.shared.path, self.cfg.busy_timeout)?;
        let (_, log, checkpointed) = sqlite::checkpoint(&pin, CheckpointMode::Passive)?;
        drop(pin);
        if log < 0 || checkpointed != log {
            return Ok(Err(format!(
                "the wal could not be checkpointed whole ({checkpointed} of {log} frames; a reader of the application holds it)"
            )));
        }
        if u64::try_from(log).ok() != Some(shadow.frames()) {
            return Ok(Err(format!(
                "the wal holds {log} committed frames, the shadow {}",
                shadow.frames()
            )));
        }
        if read_header(&wal)? != Some(shadow.header_bytes) {
            return Ok(Err("the wal restarted during the seal".into()));
        }
        let stamp = DbStamp::of(&self.shared.path)
            .with_context(|| format!("{}: cannot stat", self.shared.path.display()))?;
        if stamp.has_whole_second_times() {
            return Ok(Err(
                "the filesystem keeps whole-second timestamps, too coarse to prove the database file unchanged".into(),
            ));
        }
        // A write after we let go must not land in the granule of the last one before.
        let changed = UNIX_EPOCH
            + Duration::new(
                stamp.mtime.0.max(0) as u64,
                stamp.mtime.1.clamp(0, 999_999_999) as u32,
            );
        if let Ok(age) = SystemTime::now().duration_since(changed) {
            if age < GRANULE {
                std::thread::sleep(GRANULE - age);
            }
        } else {
            // An mtime in the future (clock stepped back): the granule argument fails.
            return Ok(Err("the database file's mtime is in the future".into()));
        }
        let Some(boot_id) = boot_id() else {
            return Ok(Err("this system has no boot id to tell a reboot by".into()));
        };
        let seal = Seal {
            boot_id,
            generation: shadow.generation.clone(),
            index: shadow.index,
            offset: shadow.size,
            header: shadow.header_bytes,
            stamp,
        };
        write_atomic(
            &self.shared.meta_dir.join(CLEAN_STOP),
            seal.encode().as_bytes(),
            self.shared.file_mode(),
        )?;
        Ok(Ok(seal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> DbStamp {
        DbStamp {
            dev: 2049,
            ino: 77,
            size: 4096 * 3,
            mtime: (1_700_000_000, 5),
            ctime: (1_700_000_001, 999_999_999),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let seal = Seal {
            generation: "0123456789abcdef".into(),
            index: 0x1f,
            offset: 32 + 3 * 4120,
            header: [7u8; WAL_HEADER_SIZE],
            stamp: stamp(),
            boot_id: "0f6c2a1e-3b7d-4c59-9e2a-7d1b8c4f5a60".into(),
        };
        assert_eq!(Seal::decode(&seal.encode()), Some(seal));
    }

    #[test]
    fn a_partial_or_damaged_record_is_none() {
        let seal = Seal {
            generation: "0123456789abcdef".into(),
            index: 1,
            offset: 32,
            header: [7u8; WAL_HEADER_SIZE],
            stamp: stamp(),
            boot_id: "0f6c2a1e-3b7d-4c59-9e2a-7d1b8c4f5a60".into(),
        };
        let text = seal.encode();
        for n in 0..text.lines().count() {
            let cut: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
            assert_eq!(Seal::decode(&cut), None, "{n} lines");
        }
        assert_eq!(
            Seal::decode(&text.replace("wal-header=07", "wal-header=zz")),
            None
        );
        assert_eq!(Seal::decode(&text.replace("db-size=", "db-size=-")), None);
    }

    #[test]
    fn whole_second_times_are_too_coarse_to_seal() {
        assert!(!stamp().has_whole_second_times());
        let coarse = DbStamp {
            mtime: (1_700_000_000, 0),
            ctime: (1_700_000_001, 0),
            ..stamp()
        };
        assert!(coarse.has_whole_second_times());
        // One zero alone is chance, not a coarse filesystem.
        assert!(!DbStamp {
            mtime: (1_700_000_000, 0),
            ..stamp()
        }
        .has_whole_second_times());
    }

    #[test]
    fn every_change_of_the_stamp_is_named() {
        let then = stamp();
        assert_eq!(then.changed_since(&then), None);
        for (now, what) in [
            (DbStamp { ino: 78, ..then }, "another file"),
            (DbStamp { size: 1, ..then }, "size"),
            (
                DbStamp {
                    mtime: (1_700_000_000, 6),
                    ..then
                },
                "written",
            ),
            (
                DbStamp {
                    ctime: (1_700_000_002, 0),
                    ..then
                },
                "inode",
            ),
        ] {
            assert!(now.changed_since(&then).unwrap().contains(what));
        }
    }
}
