//! Names and URLs on arbitrary strings: replica object names (src/layout.rs), generation ids
//! and positions (src/position.rs), replica URLs and Go durations (src/config/). No panics,
//! and what parses must round-trip through the functions that write it.
#![no_main]

use std::path::{Component, Path};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use litestream::codec::Compression;
use litestream::config::{self, LogLevel, ReplicaConfig, ReplicaTarget};
use litestream::layout;
use litestream::position::{is_generation, Position};

fuzz_target!(|data: &[u8]| {
    numbers_round_trip(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    names(s);
    urls(s);
    durations(s);
    let _ = Compression::from_config(s);
    let _ = LogLevel::from_config(s);
});

/// Any (index, offset, compression) written as a name parses back to itself.
fn numbers_round_trip(data: &[u8]) {
    let mut b = [0u8; 13];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let index = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let offset = u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
    let compression = if b[12] & 1 == 0 {
        Compression::Gzip
    } else {
        Compression::Lz4
    };
    let snap = layout::snapshot_name(index, compression);
    assert_eq!(
        layout::parse_snapshot_name(&snap),
        Some((index, compression))
    );
    let seg = layout::wal_segment_name(index, offset, compression);
    assert_eq!(
        layout::parse_wal_segment_name(&seg),
        Some((index, offset, compression))
    );
    let generation = format!("{:016x}", offset);
    assert!(is_generation(&generation));
    let key = layout::wal_segment_key(&generation, index, offset, compression);
    assert_eq!(key, format!("{}/{seg}", layout::wal_dir(&generation)));
    let key = layout::snapshot_key(&generation, index, compression);
    assert_eq!(
        key,
        format!("{}/{snap}", layout::snapshots_dir(&generation))
    );
}

fn names(s: &str) {
    if let Some((index, compression)) = layout::parse_snapshot_name(s) {
        // Snapshot names have exactly one spelling.
        assert_eq!(layout::snapshot_name(index, compression), s);
    }
    if let Some((index, offset, compression)) = layout::parse_wal_segment_name(s) {
        let canonical = layout::wal_segment_name(index, offset, compression);
        assert_eq!(
            layout::parse_wal_segment_name(&canonical),
            Some((index, offset, compression))
        );
        // Only the offset may be spelled wider than the canonical name (leading zeros).
        assert!(s.len() >= canonical.len());
        assert!(s.starts_with(&canonical[..9]), "{s:?} vs {canonical:?}");
    }
    if is_generation(s) {
        assert_eq!(s.len(), 16);
        let a = Position::new(s, 1, 2);
        let b = Position::new(s, 1, 3);
        assert!(a < b);
        assert_eq!(a.to_string(), format!("{s}/00000001:2"));
        assert_eq!(
            a.partial_cmp(&Position::new("x", 0, 0)),
            None,
            "positions of different generations compare"
        );
    }
}

fn urls(s: &str) {
    let cwd = Path::new("/fuzz/cwd");
    for home in [None, Some(Path::new("/home/fuzz"))] {
        match config::parse_replica_url(s, cwd, home) {
            Ok(ReplicaTarget::File { path }) => {
                assert!(path.is_absolute(), "{s:?} -> {path:?}");
                assert!(
                    path.components()
                        .all(|c| !matches!(c, Component::CurDir | Component::ParentDir)),
                    "{s:?} -> {path:?} is not clean"
                );
            }
            Ok(ReplicaTarget::S3(s3)) => {
                assert!(!s3.bucket.is_empty());
                // The documented shape of a key prefix.
                assert!(
                    !s3.path.starts_with('/') && !s3.path.ends_with('/'),
                    "{s3:?}"
                );
                assert!(
                    s3.path.is_empty() || s3.path.split('/').all(|p| !matches!(p, "" | "." | "..")),
                    "{s:?} -> {s3:?}"
                );
                if let Some(e) = &s3.endpoint {
                    let lower = e.to_ascii_lowercase();
                    assert!(
                        lower.starts_with("http://") || lower.starts_with("https://"),
                        "{e:?}"
                    );
                    assert!(!e.ends_with('/'), "{e:?}");
                }
                // Secrets never come from a URL.
                assert!(s3.access_key_id.is_none() && s3.secret_access_key.is_none());
                let _ = format!("{s3:?}");
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
    if let Ok(r) = ReplicaConfig::from_url(s, cwd) {
        assert_eq!(r.name, r.target.type_name());
    }
}

fn durations(s: &str) {
    match config::parse_duration(s) {
        Ok(d) => {
            assert!(d.as_nanos() <= i64::MAX as u128, "{s:?} -> {d:?}");
            // Whatever parses, parses again from its nanosecond count.
            let ns = format!("{}ns", d.as_nanos());
            assert_eq!(config::parse_duration(&ns), Ok(d));
            if d == Duration::ZERO {
                assert_eq!(config::parse_duration("0"), Ok(d));
            }
        }
        Err(e) => assert!(e.contains("invalid duration")),
    }
}
