//! Whether the shadow WAL still follows the real WAL, and if not why a new generation starts:
//! one list of reasons (`Reason`, whose `Display` is the logged `reason=`) and one check
//! (`follow`) shared by resuming at start-up and by every tick.
//!
//! Pure: the caller gathers the facts (file lengths, the WAL header) and passes the one costly
//! check, comparing the shadow's last frame with the WAL's, as a closure that runs only when
//! everything else agrees. Nothing here reads a file or starts a generation.

use std::fmt;

use anyhow::Result;

use super::shadow::Shadow;
use crate::position::MAX_INDEX;
use crate::wal::{self, WalHeader, WAL_HEADER_SIZE};

/// Why the db thread starts a new generation (a full snapshot follows): each is a state from
/// which the shadow WAL's history cannot be proven to continue the replica's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No `generation` file in the meta dir: a first start, or a removed meta dir.
    NoGeneration,
    /// The `generation` file does not hold a generation id.
    InvalidGenerationFile,
    /// The current generation has no shadow WAL file.
    NoShadowWal,
    /// The shadow WAL file is shorter than a WAL header.
    ShortShadowWal,
    /// The shadow WAL's header does not parse.
    InvalidShadowHeader(String),
    /// The WAL file is missing or shorter than its header (the application closed the db, or
    /// something truncated the WAL).
    WalMissingOrEmpty,
    /// At start-up, the WAL is not the life the shadow followed.
    WalHeaderMismatch,
    /// The WAL file is shorter than what the shadow copied of it.
    WalTruncated,
    /// The WAL's bytes differ from the shadow's copy of its last frame.
    WalOverwritten,
    /// The WAL restarted before the shadow copied any frame of its life.
    HeaderOnlyMismatched,
    /// The shadow's index reached `MAX_INDEX`.
    MaxIndexExceeded,
    /// The WAL restarted past the one restart our read lock allows.
    RestartedTwiceBeforeCopy,
    /// The WAL restarted past the one restart the pin allows during a checkpoint.
    RestartedTwiceDuringCheckpoint,
    /// A replica found its store ahead of the shadow WAL.
    ReplicaAhead,
    /// After a restart out of sight, the WAL file lost its header.
    WalLostHeader,
    /// After a restart out of sight, the WAL header does not parse.
    WalHeaderInvalid(String),
    /// After a restart out of sight, the old life cannot be proven whole in the shadow
    /// (`wal::old_life_copied_whole` says why).
    OldLifeNotProven(String),
    /// Another file was moved to the db's path while we replicated it.
    DbFileReplaced,
    /// The db file was deleted while we replicated it, and a database created at its path.
    DbFileRecreated,
    /// At start-up the WAL is another life than the shadow's (or none), and the last stop
    /// left no clean-stop record to prove the db file unchanged (`seal`).
    NoCleanStop(Box<Reason>),
    /// The last stop was clean, but the db file changed since (what changed).
    ChangedWhileStopped(&'static str),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoGeneration => f.write_str("no generation"),
            Reason::DbFileReplaced => f.write_str(
                "the database file was replaced by another file; replicating the new one from a fresh snapshot (restore -generation <old> gets the old file's data)",
            ),
            Reason::DbFileRecreated => f.write_str(
                "the database file was deleted and created again; replicating the new one from a fresh snapshot (restore -generation <old> gets the old file's data)",
            ),
            Reason::InvalidGenerationFile => f.write_str("invalid generation file"),
            Reason::NoShadowWal => f.write_str("no shadow wal"),
            Reason::ShortShadowWal => f.write_str("short shadow wal"),
            Reason::InvalidShadowHeader(e) => write!(f, "invalid shadow wal header: {e}"),
            Reason::WalMissingOrEmpty => f.write_str("wal missing or empty"),
            Reason::WalHeaderMismatch => f.write_str("wal header mismatch"),
            Reason::WalTruncated => f.write_str("wal truncated by another process"),
            Reason::WalOverwritten => f.write_str("wal overwritten by another process"),
            Reason::HeaderOnlyMismatched => f.write_str("wal header only, mismatched"),
            Reason::MaxIndexExceeded => f.write_str("max index exceeded"),
            Reason::RestartedTwiceBeforeCopy => {
                f.write_str("wal restarted more than once before it was copied")
            }
            Reason::RestartedTwiceDuringCheckpoint => {
                f.write_str("wal restarted more than once during a checkpoint")
            }
            Reason::ReplicaAhead => f.write_str("a replica is ahead of the shadow wal"),
            Reason::WalLostHeader => f.write_str("the wal lost its header"),
            Reason::WalHeaderInvalid(e) => write!(f, "the wal header is invalid: {e}"),
            Reason::OldLifeNotProven(why) => f.write_str(why),
            Reason::NoCleanStop(inner) => write!(
                f,
                "{inner}, and the last stop recorded no clean stop (killed, or see its \"clean stop not recorded\" line), so the database file cannot be proven unchanged"
            ),
            Reason::ChangedWhileStopped(what) => write!(
                f,
                "the database changed while the daemon was stopped ({what}): changes made without the daemon cannot be replayed, only snapshotted"
            ),
        }
    }
}

/// A check's outcome where `Err` means "start a new generation, for this reason".
pub type Verdict<T> = std::result::Result<T, Reason>;

/// How the shadow relates to the WAL as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Follow {
    /// The WAL is the life the shadow follows: copy on.
    Same,
    /// The WAL restarted while our read lock made that safe: finish the old life, then follow
    /// the new one as the next index.
    Restart,
    /// The WAL restarted when no lock of ours may have held it: only the WAL, under the write
    /// lock, can tell whether the old life is whole in the shadow (`Db::finish_restart_locked`).
    UnseenRestart,
    /// Start a new generation.
    NewGeneration(Reason),
}

/// When `follow` runs: a restart seen at start-up proves nothing; one seen while running is
/// judged by whether our read lock was held since the shadow last matched the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Resuming a generation at start-up.
    Resuming,
    /// A tick; `clean_read_tx` as `Db::clean_read_tx`.
    Running {
        /// Our read transaction was open since a copy that found the WAL still the shadow's.
        clean_read_tx: bool,
    },
}

/// The WAL file as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalFacts {
    /// Its length (0 when missing).
    pub len: u64,
    /// Its header, when it is at least that long.
    pub header: Option<[u8; WAL_HEADER_SIZE]>,
}

/// Whether `shadow` (whose file is `shadow_file_len` long, `None` when missing) still follows
/// the WAL that `wal` describes. `wal` runs once the shadow's own checks passed (so a WAL that
/// cannot be read does not hide a missing shadow); `last_frame_matches` compares the shadow's
/// last frame with the WAL's bytes at the same offset, and runs only when every other check
/// passed.
pub fn follow(
    shadow: &Shadow,
    shadow_file_len: Option<u64>,
    wal: impl FnOnce() -> Result<WalFacts>,
    when: When,
    last_frame_matches: impl FnOnce() -> Result<bool>,
) -> Result<Follow> {
    let new = |reason| Ok(Follow::NewGeneration(reason));
    if shadow.index >= MAX_INDEX {
        return new(Reason::MaxIndexExceeded);
    }
    match shadow_file_len {
        None => return new(Reason::NoShadowWal),
        Some(len) if len < WAL_HEADER_SIZE as u64 => return new(Reason::ShortShadowWal),
        Some(_) => {}
    }
    let wal = wal()?;
    let Some(header) = wal.header.filter(|_| wal.len >= WAL_HEADER_SIZE as u64) else {
        return new(Reason::WalMissingOrEmpty);
    };
    if header == shadow.header_bytes {
        if shadow.size > wal.len {
            return new(Reason::WalTruncated);
        }
        if !last_frame_matches()? {
            return new(Reason::WalOverwritten);
        }
        return Ok(Follow::Same);
    }
    let clean_read_tx = match when {
        When::Resuming => return new(Reason::WalHeaderMismatch),
        When::Running { clean_read_tx } => clean_read_tx,
    };
    if shadow.size == WAL_HEADER_SIZE as u64 {
        return new(Reason::HeaderOnlyMismatched);
    }
    if !clean_read_tx {
        // Maybe before our read lock was taken: only the WAL can tell.
        return Ok(Follow::UnseenRestart);
    }
    // Our read lock allows one restart at most, and only of a life we copied whole (so the new
    // life may well have overwritten our last frame already). A salt-1 more than one ahead, or
    // a header that does not parse, says something else happened.
    let next = WalHeader::parse(&header).is_ok_and(|h| wal::is_next_life(&shadow.header, &h));
    if !next {
        return new(Reason::RestartedTwiceBeforeCopy);
    }
    Ok(Follow::Restart)
}

/// Whether the old WAL life is provably whole in the shadow after a restart out of sight
/// (under the write lock, after copying what was left of it): `header` is the WAL's now
/// (`None` when it is shorter than one), `next` the bytes where the copy stopped, `truncated`
/// whether the file was ever seen longer than it is (`wal::old_life_copied_whole`).
pub fn old_life(
    shadow: &Shadow,
    header: Option<&[u8; WAL_HEADER_SIZE]>,
    next: Option<&[u8]>,
    truncated: bool,
) -> Verdict<()> {
    let header = header.ok_or(Reason::WalLostHeader)?;
    let new = WalHeader::parse(header).map_err(|e| Reason::WalHeaderInvalid(e.to_string()))?;
    wal::old_life_copied_whole(&shadow.header, &new, next, truncated)
        .map_err(Reason::OldLifeNotProven)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A valid little-endian WAL header with these salts.
    fn header_bytes(page_size: u32, salt1: u32, salt2: u32) -> [u8; WAL_HEADER_SIZE] {
        let mut h = [0u8; WAL_HEADER_SIZE];
        for (at, v) in [
            (0, 0x377f_0682u32),
            (4, 3_007_000),
            (8, page_size),
            (12, 0),
            (16, salt1),
            (20, salt2),
        ] {
            h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        let (c1, c2) = wal::checksum(false, &h[..24], (0, 0));
        h[24..28].copy_from_slice(&c1.to_be_bytes());
        h[28..32].copy_from_slice(&c2.to_be_bytes());
        h
    }

    fn shadow(size_frames: u64) -> Shadow {
        let bytes = header_bytes(4096, 7, 11);
        let header = WalHeader::parse(&bytes).unwrap();
        Shadow {
            generation: "0123456789abcdef".into(),
            index: 3,
            path: PathBuf::from("/nonexistent/00000003.wal"),
            header,
            header_bytes: bytes,
            size: WAL_HEADER_SIZE as u64 + size_frames * header.frame_size() as u64,
            chain: header.checksum(),
            scan: None,
            stopped_at_stale: false,
            wal_bytes_read: 0,
            file: Default::default(),
        }
    }

    fn wal(header: [u8; WAL_HEADER_SIZE], len: u64) -> WalFacts {
        WalFacts {
            len,
            header: Some(header),
        }
    }

    const RUN_CLEAN: When = When::Running {
        clean_read_tx: true,
    };

    fn check(s: &Shadow, w: &WalFacts, when: When, last: bool) -> Follow {
        follow(s, Some(s.size), || Ok(*w), when, || Ok(last)).unwrap()
    }

    #[test]
    fn the_same_life_is_followed_unless_truncated_or_overwritten() {
        let s = shadow(2);
        let same = wal(s.header_bytes, s.size + 4120);
        assert_eq!(check(&s, &same, RUN_CLEAN, true), Follow::Same);
        assert_eq!(check(&s, &same, When::Resuming, true), Follow::Same);
        assert_eq!(
            check(&s, &same, RUN_CLEAN, false),
            Follow::NewGeneration(Reason::WalOverwritten)
        );
        let short = wal(s.header_bytes, s.size - 1);
        assert_eq!(
            check(&s, &short, When::Resuming, true),
            Follow::NewGeneration(Reason::WalTruncated)
        );
        let gone = WalFacts {
            len: 0,
            header: None,
        };
        assert_eq!(
            check(&s, &gone, RUN_CLEAN, true),
            Follow::NewGeneration(Reason::WalMissingOrEmpty)
        );
    }

    #[test]
    fn the_shadow_file_and_index_are_checked_first() {
        let s = shadow(2);
        let same = wal(s.header_bytes, s.size);
        let never = || -> Result<bool> { panic!("last frame read needlessly") };
        let unreadable = || -> Result<WalFacts> { anyhow::bail!("the wal is not read first") };
        assert_eq!(
            follow(&s, None, unreadable, RUN_CLEAN, never).unwrap(),
            Follow::NewGeneration(Reason::NoShadowWal)
        );
        assert_eq!(
            follow(&s, Some(10), unreadable, RUN_CLEAN, never).unwrap(),
            Follow::NewGeneration(Reason::ShortShadowWal)
        );
        assert!(follow(&s, Some(s.size), unreadable, RUN_CLEAN, never).is_err());
        let mut last = shadow(2);
        last.index = MAX_INDEX;
        assert_eq!(
            check(&last, &same, RUN_CLEAN, true),
            Follow::NewGeneration(Reason::MaxIndexExceeded)
        );
    }

    #[test]
    fn a_restart_is_followed_only_when_our_lock_made_it_safe() {
        let s = shadow(2);
        let next = wal(header_bytes(4096, 8, 99), 4096);
        let later = wal(header_bytes(4096, 9, 99), 4096);
        assert_eq!(check(&s, &next, RUN_CLEAN, false), Follow::Restart);
        assert_eq!(
            check(
                &s,
                &next,
                When::Running {
                    clean_read_tx: false
                },
                true
            ),
            Follow::UnseenRestart
        );
        assert_eq!(
            check(&s, &later, RUN_CLEAN, true),
            Follow::NewGeneration(Reason::RestartedTwiceBeforeCopy)
        );
        assert_eq!(
            check(&s, &next, When::Resuming, true),
            Follow::NewGeneration(Reason::WalHeaderMismatch)
        );
        assert_eq!(
            check(&shadow(0), &next, RUN_CLEAN, true),
            Follow::NewGeneration(Reason::HeaderOnlyMismatched)
        );
    }

    #[test]
    fn the_old_life_after_an_unseen_restart() {
        let s = shadow(2);
        let next = header_bytes(4096, 8, 99);
        assert_eq!(old_life(&s, None, None, false), Err(Reason::WalLostHeader));
        assert!(matches!(
            old_life(&s, Some(&[0u8; WAL_HEADER_SIZE]), None, false),
            Err(Reason::WalHeaderInvalid(_))
        ));
        assert_eq!(old_life(&s, Some(&next), None, false), Ok(()));
        assert!(matches!(
            old_life(&s, Some(&next), None, true),
            Err(Reason::OldLifeNotProven(_))
        ));
    }

    #[test]
    fn reasons_read_as_before() {
        assert_eq!(
            Reason::WalMissingOrEmpty.to_string(),
            "wal missing or empty"
        );
        assert_eq!(
            Reason::InvalidShadowHeader("bad magic".into()).to_string(),
            "invalid shadow wal header: bad magic"
        );
        assert_eq!(
            Reason::OldLifeNotProven("the wal file was truncated".into()).to_string(),
            "the wal file was truncated"
        );
    }
}
