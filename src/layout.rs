//! The replica tree: where generations, snapshots and WAL segments live and how they are named.
//!
//! `<root>/generations/<GEN>/snapshots/<IDX>.snapshot.<ext>` and
//! `<root>/generations/<GEN>/wal/<IDX>_<OFF>.wal.<ext>`, with `IDX`/`OFF` as `%08x` (any width
//! of at least 8 lowercase hex digits is accepted when parsing). Paths here are relative,
//! `/`-joined keys; each client maps them onto its store. Pure: no I/O.

use crate::codec::Compression;

/// Key of the directory holding every generation.
pub(crate) const GENERATIONS_DIR: &str = "generations";

pub(crate) fn generation_dir(generation: &str) -> String {
    format!("{GENERATIONS_DIR}/{generation}")
}

/// The marker naming the db that wrote a generation (`db::identity`). It sits beside
/// `snapshots/` and `wal/`, which is never listed (by us or by Litestream v0.3.13, which lists
/// only `generations/`, `…/snapshots/` and `…/wal/`), and goes with the generation when
/// either deletes it (both remove everything under `generations/<gen>/`).
pub(crate) fn db_id_key(generation: &str) -> String {
    format!("{GENERATIONS_DIR}/{generation}/db-id")
}

/// Key of the directory holding a generation's snapshots.
pub fn snapshots_dir(generation: &str) -> String {
    format!("{GENERATIONS_DIR}/{generation}/snapshots")
}

/// Key of the directory holding a generation's WAL segments.
pub fn wal_dir(generation: &str) -> String {
    format!("{GENERATIONS_DIR}/{generation}/wal")
}

/// File name of a snapshot, e.g. `00000003.snapshot.gz`.
pub fn snapshot_name(index: u32, compression: Compression) -> String {
    format!("{index:08x}.snapshot.{}", compression.extension())
}

/// A WAL segment's name without its suffix, `IIIIIIII_OOOOOOOO` (e.g. `00000003_00002060`):
/// how messages name a segment whatever its compression.
pub(crate) fn wal_segment_stem(index: u32, offset: u64) -> String {
    format!("{index:08x}_{offset:08x}")
}

/// File name of a WAL segment, e.g. `00000003_00002060.wal.gz`.
pub fn wal_segment_name(index: u32, offset: u64, compression: Compression) -> String {
    format!(
        "{}.wal.{}",
        wal_segment_stem(index, offset),
        compression.extension()
    )
}

/// Key of a snapshot object, relative to the replica root.
pub fn snapshot_key(generation: &str, index: u32, compression: Compression) -> String {
    format!(
        "{}/{}",
        snapshots_dir(generation),
        snapshot_name(index, compression)
    )
}

/// Key of a WAL segment object, relative to the replica root.
pub fn wal_segment_key(
    generation: &str,
    index: u32,
    offset: u64,
    compression: Compression,
) -> String {
    format!(
        "{}/{}",
        wal_dir(generation),
        wal_segment_name(index, offset, compression)
    )
}

/// Parses a hex field of at least 8 lowercase hex digits.
fn parse_hex(s: &str, max_len: usize) -> Option<u64> {
    if s.len() < 8 || s.len() > max_len {
        return None;
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn split_extension(name: &str) -> Option<(&str, Compression)> {
    let (stem, ext) = name.rsplit_once('.')?;
    Some((stem, Compression::from_extension(ext)?))
}

/// Parses a snapshot file name into (index, compression). Names that do not match are `None`
/// (callers ignore them: foreign files in a replica are never an error).
pub fn parse_snapshot_name(name: &str) -> Option<(u32, Compression)> {
    let (stem, compression) = split_extension(name)?;
    let idx = stem.strip_suffix(".snapshot")?;
    let index = u32::try_from(parse_hex(idx, 8)?).ok()?;
    Some((index, compression))
}

/// Parses a WAL segment file name into (index, offset, compression).
pub fn parse_wal_segment_name(name: &str) -> Option<(u32, u64, Compression)> {
    let (stem, compression) = split_extension(name)?;
    let stem = stem.strip_suffix(".wal")?;
    let (idx, off) = stem.split_once('_')?;
    let index = u32::try_from(parse_hex(idx, 8)?).ok()?;
    let offset = parse_hex(off, 16)?;
    Some((index, offset, compression))
}

/// True for the name of an object write that a crash interrupted (`<name>.tmp`, file
/// replicas): it is ours, never read, and replaced by the next write of that object.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.strip_suffix(".tmp")
        .is_some_and(|n| parse_snapshot_name(n).is_some() || parse_wal_segment_name(n).is_some())
}

/// True for a name that desktops and file servers drop into any directory they show or
/// share (`.DS_Store`, `._*` resource forks, NFS's `.nfs*` silly-renames, `Thumbs.db`,
/// `desktop.ini`): nobody's data, so listings skip it instead of calling the replica
/// foreign. Only the last component counts (an S3 "directory" may end in `/`).
pub(crate) fn is_junk_name(name: &str) -> bool {
    let last = name.trim_end_matches('/');
    let last = last.rsplit('/').next().unwrap_or(last);
    last == ".DS_Store"
        || last.starts_with("._")
        || last.starts_with(".nfs")
        || last.eq_ignore_ascii_case("Thumbs.db")
        || last.eq_ignore_ascii_case("desktop.ini")
}

/// A name for messages: control characters escaped and at most 120 characters, so that a
/// hostile listing cannot flood or garble a log line.
pub(crate) fn display_name(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    if escaped.chars().count() > 120 {
        let head: String = escaped.chars().take(100).collect();
        format!("{head}… ({} bytes)", name.len())
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_names() {
        for junk in [
            ".DS_Store",
            "._00000001.snapshot.gz",
            ".nfs0000000001a2b3c400000001",
            "Thumbs.db",
            "desktop.ini",
            "generations/.DS_Store",
            "generations/._x/",
        ] {
            assert!(is_junk_name(junk), "{junk}");
        }
        for ours_or_foreign in ["00000001.snapshot.gz", "..", "README", "x.DS_Store", "nfs"] {
            assert!(!is_junk_name(ours_or_foreign), "{ours_or_foreign}");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(snapshot_name(3, Compression::Gzip), "00000003.snapshot.gz");
        assert_eq!(
            wal_segment_name(0x1a, 4152, Compression::Gzip),
            "0000001a_00001038.wal.gz"
        );
        assert_eq!(
            wal_segment_name(1, 0, Compression::Lz4),
            "00000001_00000000.wal.lz4"
        );
        assert_eq!(
            parse_snapshot_name("00000003.snapshot.gz"),
            Some((3, Compression::Gzip))
        );
        assert_eq!(
            parse_snapshot_name("00000001.snapshot.lz4"),
            Some((1, Compression::Lz4))
        );
        assert_eq!(
            parse_wal_segment_name("0000001a_00001038.wal.gz"),
            Some((0x1a, 4152, Compression::Gzip))
        );
        assert_eq!(
            parse_wal_segment_name("00000001_100000000.wal.gz"),
            Some((1, 0x1_0000_0000, Compression::Gzip))
        );
    }

    #[test]
    fn segment_stems() {
        assert_eq!(wal_segment_stem(0x1a, 4152), "0000001a_00001038");
        assert_eq!(wal_segment_stem(1, 0x1_0000_0000), "00000001_100000000");
        assert_eq!(
            format!("{}.wal.gz", wal_segment_stem(3, 8288)),
            wal_segment_name(3, 8288, Compression::Gzip)
        );
    }

    #[test]
    fn keys() {
        assert_eq!(
            snapshot_key("9b0ed7758f1927b6", 0, Compression::Gzip),
            "generations/9b0ed7758f1927b6/snapshots/00000000.snapshot.gz"
        );
        assert_eq!(
            wal_segment_key("9b0ed7758f1927b6", 2, 32, Compression::Gzip),
            "generations/9b0ed7758f1927b6/wal/00000002_00000020.wal.gz"
        );
    }

    #[test]
    fn foreign_names_are_ignored() {
        for bad in [
            "3.snapshot.gz",
            "0000003.snapshot.gz",
            "00000003.snapshot.zip",
            "0000000G.snapshot.gz",
            "00000003.snapshot.gz.tmp",
            "000000AB.snapshot.gz",
            "100000000.snapshot.gz",
            "00000001.wal.gz",
            "00000001_0000000.wal.gz",
            "00000001-00000000.wal.gz",
            "../00000001_00000000.wal.gz",
            "00000001_00000000.wal",
            "",
        ] {
            assert_eq!(parse_snapshot_name(bad), None, "{bad}");
            assert_eq!(parse_wal_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn temp_names_are_ours_only_for_our_object_names() {
        assert!(is_temp_name("00000001.snapshot.gz.tmp"));
        assert!(is_temp_name("00000001_00000000000020a0.wal.lz4.tmp"));
        assert!(!is_temp_name("00000001.snapshot.gz"));
        assert!(!is_temp_name("x.tmp"));
        assert!(!is_temp_name("../00000001.snapshot.gz.tmp"));
    }

    #[test]
    fn display_names_are_escaped_and_bounded() {
        assert_eq!(display_name("a\nb"), "a\\nb");
        assert_eq!(display_name("a\u{1b}[31m"), "a\\u{1b}[31m");
        let long = "0".repeat(5000);
        let shown = display_name(&long);
        assert!(shown.chars().count() < 130, "{shown}");
        assert!(shown.ends_with("(5000 bytes)"), "{shown}");
    }
}
