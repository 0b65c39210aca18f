//! src/wal.rs on arbitrary bytes: header and frame parsing, the checksum, the frame verifier,
//! `committed_prefix` and `db_page_size` must never panic, and their results must agree with
//! each other.
//!
//! Random bytes almost never carry a valid checksum, so each input is also run a second time
//! with its header and frame checksums recomputed ("fixed up"): that reaches the salt, commit
//! and prefix logic with fuzzed page numbers, commit sizes and salts, and lets a tiny
//! independent model of SPEC §1 check `committed_prefix`'s answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use litestream::wal::{
    checksum, committed_prefix, db_page_size, FrameHeader, FrameVerifier, WalHeader,
    FRAME_HEADER_SIZE, MAGIC_BE, MAGIC_LE, WAL_HEADER_SIZE,
};

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = fix_checksums(data) {
        let expected = model_prefix(&fixed);
        let got = check(&fixed);
        assert_eq!(got, expected, "committed_prefix disagrees with the model");
    }
    let _ = db_page_size(data);
    if let Some(size) = db_page_size(data) {
        assert!(size.is_power_of_two() && (512..=65536).contains(&size));
    }
    checksum_properties(data);
});

/// Runs every parser on `wal`; returns `committed_prefix`'s (length, frames) when it parses.
fn check(wal: &[u8]) -> Option<(u64, u64)> {
    match FrameHeader::parse(wal) {
        Some(fh) => {
            assert!(wal.len() >= FRAME_HEADER_SIZE);
            assert_eq!(fh.is_commit(), fh.db_size != 0);
        }
        None => assert!(wal.len() < FRAME_HEADER_SIZE),
    }
    let header = WalHeader::parse(wal);
    let prefix = committed_prefix(wal);
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            let _ = e.to_string();
            // committed_prefix fails exactly when the header does, with the same error.
            assert_eq!(prefix.map(|_| ()), Err(e));
            return None;
        }
    };
    assert!(header.page_size.is_power_of_two() && (512..=65536).contains(&header.page_size));
    assert!(header.magic == MAGIC_LE || header.magic == MAGIC_BE);
    assert_eq!(
        header.frame_size(),
        FRAME_HEADER_SIZE + header.page_size as usize
    );
    // Only the first 32 bytes decide the header.
    assert_eq!(WalHeader::parse(&wal[..WAL_HEADER_SIZE]), Ok(header));

    let Ok((h, len, frames)) = prefix else {
        panic!("header parses but committed_prefix fails: {prefix:?}");
    };
    assert_eq!(h, header);
    let fs = header.frame_size() as u64;
    assert!(len >= WAL_HEADER_SIZE as u64 && len <= wal.len() as u64);
    assert_eq!(
        (len - WAL_HEADER_SIZE as u64) % fs,
        0,
        "prefix not frame-aligned"
    );
    assert_eq!((len - WAL_HEADER_SIZE as u64) / fs, frames);
    // The committed prefix of the committed prefix is itself.
    assert_eq!(
        committed_prefix(&wal[..len as usize]),
        Ok((header, len, frames))
    );

    // Walk the frames by hand: the verifier never advances on a rejected frame, the prefix's
    // last frame is a commit, and resuming from a saved chain gives the same answers.
    let mut v = FrameVerifier::new(&header);
    let mut off = WAL_HEADER_SIZE;
    let mut verified = 0u64;
    let mut last_commit = 0u64;
    let fs = fs as usize;
    while off + fs <= wal.len() {
        let frame = &wal[off..off + fs];
        let before = v.chain();
        let mut resumed = FrameVerifier::resume(&header, before);
        let got = v.check(frame);
        assert_eq!(resumed.check(frame), got);
        match got {
            Some(fh) => {
                assert_eq!((fh.salt1, fh.salt2), (header.salt1, header.salt2));
                assert_eq!(v.chain(), (fh.checksum1, fh.checksum2));
                verified += 1;
                if fh.is_commit() {
                    last_commit = verified;
                }
            }
            None => {
                assert_eq!(v.chain(), before, "verifier advanced on a rejected frame");
                break;
            }
        }
        // A frame of the wrong size is never accepted.
        assert!(v.clone().check(&frame[..fs - 1]).is_none());
        off += fs;
    }
    assert_eq!(frames, last_commit);
    Some((len, frames))
}

/// `data` with a valid header checksum and every whole frame's checksum recomputed in chain
/// order; salts, page numbers and commit sizes stay as fuzzed. `None` when the header is
/// unusable for another reason (magic, version, page size), which the raw run covers.
fn fix_checksums(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < WAL_HEADER_SIZE {
        return None;
    }
    let mut w = data.to_vec();
    let magic = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
    let be = match magic {
        MAGIC_LE => false,
        MAGIC_BE => true,
        _ => return None,
    };
    let (c1, c2) = checksum(be, &w[..24], (0, 0));
    w[24..28].copy_from_slice(&c1.to_be_bytes());
    w[28..32].copy_from_slice(&c2.to_be_bytes());
    let header = WalHeader::parse(&w).ok()?;
    let fs = header.frame_size();
    let mut chain = header.checksum();
    let mut off = WAL_HEADER_SIZE;
    while off + fs <= w.len() {
        chain = checksum(be, &w[off..off + 8], chain);
        chain = checksum(be, &w[off + FRAME_HEADER_SIZE..off + fs], chain);
        w[off + 16..off + 20].copy_from_slice(&chain.0.to_be_bytes());
        w[off + 20..off + 24].copy_from_slice(&chain.1.to_be_bytes());
        off += fs;
    }
    Some(w)
}

/// SPEC §1 for a WAL whose checksums are all right: frames count while their salts match the
/// header's; the prefix ends at the last commit frame among them.
fn model_prefix(w: &[u8]) -> Option<(u64, u64)> {
    let be32 = |at: usize| u32::from_be_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]]);
    let page = match be32(8) {
        1 => 65536,
        p => p as usize,
    };
    let fs = FRAME_HEADER_SIZE + page;
    let (salt1, salt2) = (be32(16), be32(20));
    let (mut off, mut n, mut committed) = (WAL_HEADER_SIZE, 0u64, 0u64);
    while off + fs <= w.len() && (be32(off + 8), be32(off + 12)) == (salt1, salt2) {
        n += 1;
        if be32(off + 4) != 0 {
            committed = n;
        }
        off += fs;
    }
    Some((WAL_HEADER_SIZE as u64 + committed * fs as u64, committed))
}

/// The checksum continues across any split at a multiple of 8 bytes, ignores a ragged tail,
/// and the two byte orders agree on byte-swapped input.
fn checksum_properties(data: &[u8]) {
    let init = match data {
        [a, b, c, d, e, f, g, h, ..] => (
            u32::from_le_bytes([*a, *b, *c, *d]),
            u32::from_le_bytes([*e, *f, *g, *h]),
        ),
        _ => (0, 0),
    };
    let aligned = data.len() / 8 * 8;
    let split = (data.first().copied().unwrap_or(0) as usize * 8).min(aligned);
    for be in [false, true] {
        let whole = checksum(be, data, init);
        assert_eq!(whole, checksum(be, &data[..aligned], init));
        let head = checksum(be, &data[..split], init);
        assert_eq!(whole, checksum(be, &data[split..], head));
    }
    let swapped: Vec<u8> = data[..aligned]
        .chunks_exact(4)
        .flat_map(|c| [c[3], c[2], c[1], c[0]])
        .collect();
    assert_eq!(checksum(false, data, init), checksum(true, &swapped, init));
}
