//! The SQLite WAL file format (SPEC §1): the 32-byte header, 24-byte frame headers, the
//! checksum chain, and which prefix of a WAL is committed.
//!
//! Pure: bytes in, facts out. No file I/O, no SQLite calls; the db thread, the replica thread
//! and restore bring their own bytes and decide what to do with a frame that fails. This
//! module must never "repair" anything: a frame is valid or it is not.

use std::fmt;

/// Bytes of the WAL header at the start of every WAL file.
pub const WAL_HEADER_SIZE: usize = 32;
/// Bytes of the header in front of each frame's page.
pub const FRAME_HEADER_SIZE: usize = 24;
/// Checksums read little-endian.
pub const MAGIC_LE: u32 = 0x377f_0682;
/// Checksums read big-endian.
pub const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes (3.7.0).
pub const WAL_VERSION: u32 = 3_007_000;

/// Why 32 bytes are not a WAL header we can follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalError {
    /// Fewer than `WAL_HEADER_SIZE` bytes.
    TooShort,
    /// Neither magic number: not a WAL file (the value found).
    BadMagic(u32),
    /// A format version other than `WAL_VERSION` (the value found).
    BadVersion(u32),
    /// Not a power of two in 512..=65536 (the on-disk value).
    BadPageSize(u32),
    /// The header's own checksum does not match its first 24 bytes.
    BadHeaderChecksum,
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::TooShort => write!(f, "wal header: shorter than {WAL_HEADER_SIZE} bytes"),
            WalError::BadMagic(m) => {
                write!(f, "wal header: bad magic {m:#010x} (not a SQLite WAL file)")
            }
            WalError::BadVersion(v) => write!(
                f,
                "wal header: unsupported version {v} (want {WAL_VERSION})"
            ),
            WalError::BadPageSize(p) => write!(f, "wal header: invalid page size {p}"),
            WalError::BadHeaderChecksum => write!(f, "wal header: checksum mismatch"),
        }
    }
}

impl std::error::Error for WalError {}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A decoded WAL header. Two headers are equal exactly when their 32 bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// `MAGIC_LE` or `MAGIC_BE`: the byte order of every checksum in this WAL.
    pub magic: u32,
    /// Always `WAL_VERSION` once parsed.
    pub version: u32,
    /// The real page size (the on-disk value 1 means 65536).
    pub page_size: u32,
    /// Checkpoint sequence number, incremented by SQLite at each WAL restart.
    pub checkpoint_seq: u32,
    /// Salt-1: incremented at each restart, so it tells one WAL life from the next.
    pub salt1: u32,
    /// Salt-2: random at each restart; frames of an older life carry another.
    pub salt2: u32,
    /// First half of the header checksum (the start of the frame checksum chain).
    pub checksum1: u32,
    /// Second half of the header checksum.
    pub checksum2: u32,
}

impl WalHeader {
    /// Decodes and checks the first `WAL_HEADER_SIZE` bytes of a WAL (more are ignored).
    pub fn parse(bytes: &[u8]) -> Result<WalHeader, WalError> {
        if bytes.len() < WAL_HEADER_SIZE {
            return Err(WalError::TooShort);
        }
        let magic = be32(bytes, 0);
        if magic != MAGIC_LE && magic != MAGIC_BE {
            return Err(WalError::BadMagic(magic));
        }
        let version = be32(bytes, 4);
        if version != WAL_VERSION {
            return Err(WalError::BadVersion(version));
        }
        let raw_page_size = be32(bytes, 8);
        let page_size = if raw_page_size == 1 {
            65536
        } else {
            raw_page_size
        };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::BadPageSize(raw_page_size));
        }
        let header = WalHeader {
            magic,
            version,
            page_size,
            checkpoint_seq: be32(bytes, 12),
            salt1: be32(bytes, 16),
            salt2: be32(bytes, 20),
            checksum1: be32(bytes, 24),
            checksum2: be32(bytes, 28),
        };
        if checksum(header.big_endian(), &bytes[..24], (0, 0)) != header.checksum() {
            return Err(WalError::BadHeaderChecksum);
        }
        Ok(header)
    }

    /// The 32 bytes this header was parsed from (`parse(&h.to_bytes()) == Ok(h)`).
    pub fn to_bytes(&self) -> [u8; WAL_HEADER_SIZE] {
        let raw_page_size = if self.page_size == 65536 {
            1
        } else {
            self.page_size
        };
        let words = [
            self.magic,
            self.version,
            raw_page_size,
            self.checkpoint_seq,
            self.salt1,
            self.salt2,
            self.checksum1,
            self.checksum2,
        ];
        let mut out = [0u8; WAL_HEADER_SIZE];
        for (k, w) in words.iter().enumerate() {
            out[k * 4..k * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Whether this WAL's checksums read its words big-endian (`MAGIC_BE`).
    pub fn big_endian(&self) -> bool {
        self.magic == MAGIC_BE
    }

    /// Bytes of one frame: its header and one page.
    pub fn frame_size(&self) -> usize {
        FRAME_HEADER_SIZE + self.page_size as usize
    }

    /// The stored header checksum: where the frame checksum chain starts.
    pub fn checksum(&self) -> (u32, u32) {
        (self.checksum1, self.checksum2)
    }
}

/// A decoded frame header (the 24 bytes in front of each page in a WAL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The database page this frame's data replaces (1-based).
    pub page_no: u32,
    /// Db size in pages after this frame's transaction; non-zero only on a commit frame.
    pub db_size: u32,
    /// Must equal the WAL header's salt-1, else the frame belongs to another WAL life.
    pub salt1: u32,
    /// Must equal the WAL header's salt-2.
    pub salt2: u32,
    /// First half of the cumulative checksum up to and including this frame.
    pub checksum1: u32,
    /// Second half of the cumulative checksum.
    pub checksum2: u32,
}

impl FrameHeader {
    /// Decodes the first `FRAME_HEADER_SIZE` bytes; `None` when there are fewer. Checks
    /// nothing: validity is `FrameVerifier`'s business.
    pub fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        if bytes.len() < FRAME_HEADER_SIZE {
            return None;
        }
        Some(FrameHeader {
            page_no: be32(bytes, 0),
            db_size: be32(bytes, 4),
            salt1: be32(bytes, 8),
            salt2: be32(bytes, 12),
            checksum1: be32(bytes, 16),
            checksum2: be32(bytes, 20),
        })
    }

    /// Whether this frame ends a transaction (it carries the db size after it).
    pub fn is_commit(&self) -> bool {
        self.db_size != 0
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes; a ragged tail is ignored),
/// continuing from `init`.
pub fn checksum(big_endian: bool, data: &[u8], init: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = init;
    let chunks = data.chunks_exact(8);
    if big_endian {
        for c in chunks {
            let x0 = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let x1 = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            s0 = s0.wrapping_add(x0).wrapping_add(s1);
            s1 = s1.wrapping_add(x1).wrapping_add(s0);
        }
    } else {
        for c in chunks {
            let x0 = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let x1 = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            s0 = s0.wrapping_add(x0).wrapping_add(s1);
            s1 = s1.wrapping_add(x1).wrapping_add(s0);
        }
    }
    (s0, s1)
}

/// Walks frames of one WAL life in order, checking salts and the checksum chain.
#[derive(Clone, Debug)]
pub struct FrameVerifier {
    header: WalHeader,
    chain: (u32, u32),
}

impl FrameVerifier {
    /// A walk from the first frame of the WAL life `header` begins.
    pub fn new(header: &WalHeader) -> FrameVerifier {
        FrameVerifier {
            header: *header,
            chain: header.checksum(),
        }
    }

    /// Continues a walk that stopped with checksum state `chain`.
    pub fn resume(header: &WalHeader, chain: (u32, u32)) -> FrameVerifier {
        FrameVerifier {
            header: *header,
            chain,
        }
    }

    /// Checks one whole frame (header + page). `None`, without advancing, when it is not the
    /// next valid frame of this WAL life.
    pub fn check(&mut self, frame: &[u8]) -> Option<FrameHeader> {
        if frame.len() != self.header.frame_size() {
            return None;
        }
        let fh = FrameHeader::parse(frame)?;
        if fh.salt1 != self.header.salt1 || fh.salt2 != self.header.salt2 {
            return None;
        }
        let be = self.header.big_endian();
        let sum = checksum(be, &frame[..8], self.chain);
        let sum = checksum(be, &frame[FRAME_HEADER_SIZE..], sum);
        if sum != (fh.checksum1, fh.checksum2) {
            return None;
        }
        self.chain = sum;
        Some(fh)
    }

    /// The checksum state after the last frame accepted (to `resume` from later).
    pub fn chain(&self) -> (u32, u32) {
        self.chain
    }
}

/// True when `new` heads the WAL life right after `old`'s: SQLite adds one to salt-1 on every
/// restart, so any other step means at least one life in between went unseen.
pub(crate) fn is_next_life(old: &WalHeader, new: &WalHeader) -> bool {
    new.salt1 == old.salt1.wrapping_add(1)
}

/// Whether a WAL restart that happened out of our sight provably left the old life whole in
/// our copy. `next` is what the WAL file holds now, under the write lock, where the copy of the
/// old life stopped: the bytes of the frame after the last committed one we copied, or `None`
/// past the end of the file.
///
/// The new life overwrites the file from its first frame on, strictly in order, so the first
/// position it has not reached still holds whatever was there before. If that position is at or
/// before our copy's end, the old life's frames past the copy are intact and the copy (which
/// reads until the chain breaks) took them all. If the new life reached it, a frame there has
/// the new life's salts, or zero salts (SQLite writes those until a transaction that rewrote a
/// page in place commits), and what it overwrote cannot be known. A file that ends there was
/// not overwritten, but it may have been truncated: `truncated` says whether it was ever seen
/// longer. `Err` carries the reason for a log line.
pub(crate) fn old_life_copied_whole(
    old: &WalHeader,
    new: &WalHeader,
    next: Option<&[u8]>,
    truncated: bool,
) -> Result<(), String> {
    if !is_next_life(old, new) {
        return Err(format!(
            "the wal restarted more than once out of sight (salt-1 {:#x} -> {:#x})",
            old.salt1, new.salt1
        ));
    }
    match next.and_then(FrameHeader::parse) {
        None if truncated => Err("the wal file was truncated after a restart out of sight".into()),
        None => Ok(()),
        Some(fh)
            if (fh.salt1, fh.salt2) == (new.salt1, new.salt2) || (fh.salt1, fh.salt2) == (0, 0) =>
        {
            Err(
                "the wal was restarted out of sight and overwritten past the last copied frame"
                    .into(),
            )
        }
        Some(_) => Ok(()),
    }
}

/// The committed prefix of an in-memory WAL: (header, byte length ending at the last valid
/// commit frame — at least the header — and the number of frames in it).
pub fn committed_prefix(wal: &[u8]) -> Result<(WalHeader, u64, u64), WalError> {
    let header = WalHeader::parse(wal)?;
    let fs = header.frame_size();
    let mut verifier = FrameVerifier::new(&header);
    let (mut off, mut frames) = (WAL_HEADER_SIZE, 0u64);
    let mut committed = (WAL_HEADER_SIZE as u64, 0u64);
    while off + fs <= wal.len() {
        let Some(fh) = verifier.check(&wal[off..off + fs]) else {
            break;
        };
        off += fs;
        frames += 1;
        if fh.is_commit() {
            committed = (off as u64, frames);
        }
    }
    Ok((header, committed.0, committed.1))
}

/// Page size from a SQLite database file header (offset 16, big-endian u16, 1 = 65536).
pub fn db_page_size(db_header: &[u8]) -> Option<u32> {
    if db_header.len() < 18 {
        return None;
    }
    let raw = u16::from_be_bytes([db_header[16], db_header[17]]) as u32;
    let size = if raw == 1 { 65536 } else { raw };
    ((512..=65536).contains(&size) && size.is_power_of_two()).then_some(size)
}

/// The database size a SQLite header declares (page count × page size), when the header
/// marks that field valid: its version-valid-for number (offset 92) equals the change counter
/// (offset 24), as in every database written by SQLite 3.7.0 or later (so every WAL-mode one).
pub(crate) fn db_declared_size(db_header: &[u8], page_size: u32) -> Option<u64> {
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            db_header.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let pages = be(28)?;
    (pages > 0 && be(24)? == be(92)?).then(|| u64::from(pages) * u64::from(page_size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/wal")
            .join(name);
        std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/gen-testdata.py)", p.display()))
    }

    /// Frame counts written by scripts/gen-testdata.py, which checks them on every run
    /// (see testdata/wal/README.md). Every fixture's first life starts with the same three
    /// committed frames (create table: 2, then one row: 1), hence `FIRST_TXS_FRAMES`.
    const VALID_FRAMES: u64 = 7;
    const FIRST_TXS_FRAMES: u64 = 3;
    const UNCOMMITTED_TAIL_FRAMES: u64 = 16;
    const STALE_SALT_FRAMES: u64 = 14;

    fn prefix_len(frames: u64) -> u64 {
        WAL_HEADER_SIZE as u64 + frames * (FRAME_HEADER_SIZE as u64 + 4096)
    }

    fn frames_in(wal: &[u8]) -> u64 {
        let h = WalHeader::parse(wal).unwrap();
        ((wal.len() - WAL_HEADER_SIZE) / h.frame_size()) as u64
    }

    #[test]
    fn valid_fixture_is_fully_committed() {
        let wal = fixture("valid.wal");
        let (h, len, frames) = committed_prefix(&wal).unwrap();
        assert_eq!(h.page_size, 4096);
        assert!(!h.big_endian());
        assert_eq!(frames, VALID_FRAMES);
        assert_eq!(frames, frames_in(&wal));
        assert_eq!(len, wal.len() as u64);
    }

    #[test]
    fn torn_last_frame_is_excluded() {
        let valid = fixture("valid.wal");
        let torn = fixture("torn.wal");
        let (_, len, frames) = committed_prefix(&torn).unwrap();
        assert_eq!(frames_in(&torn), VALID_FRAMES - 1);
        assert_eq!(
            (len, frames),
            (prefix_len(FIRST_TXS_FRAMES), FIRST_TXS_FRAMES)
        );
        // The prefix is exactly the valid file's prefix up to its previous commit.
        assert_eq!(&torn[..len as usize], &valid[..len as usize]);
    }

    #[test]
    fn uncommitted_tail_stops_at_last_commit() {
        let wal = fixture("uncommitted-tail.wal");
        let (h, len, frames) = committed_prefix(&wal).unwrap();
        assert_eq!(frames_in(&wal), UNCOMMITTED_TAIL_FRAMES);
        assert_eq!(
            (len, frames),
            (prefix_len(FIRST_TXS_FRAMES), FIRST_TXS_FRAMES)
        );
        // Every frame after the prefix verifies but none commits.
        let mut v = FrameVerifier::new(&h);
        let fs = h.frame_size();
        let mut off = WAL_HEADER_SIZE;
        while off + fs <= wal.len() {
            let fh = v.check(&wal[off..off + fs]).expect("all frames are valid");
            if off as u64 >= len {
                assert!(!fh.is_commit());
            }
            off += fs;
        }
    }

    #[test]
    fn stale_salt_frames_end_the_prefix() {
        let wal = fixture("stale-salt.wal");
        let (h, len, frames) = committed_prefix(&wal).unwrap();
        assert_eq!(frames_in(&wal), STALE_SALT_FRAMES);
        // The restarted life holds one commit frame; the old life's 13 follow it.
        assert_eq!((len, frames), (prefix_len(1), 1));
        let next = FrameHeader::parse(&wal[len as usize..]).unwrap();
        assert!(next.salt1 != h.salt1 || next.salt2 != h.salt2);
    }

    #[test]
    fn bad_checksum_ends_the_prefix_before_its_transaction() {
        let valid = fixture("valid.wal");
        let bad = fixture("bad-checksum.wal");
        let (_, len, frames) = committed_prefix(&bad).unwrap();
        let (_, full, _) = committed_prefix(&valid).unwrap();
        assert_eq!(full, bad.len() as u64);
        assert_eq!(
            (len, frames),
            (prefix_len(FIRST_TXS_FRAMES), FIRST_TXS_FRAMES)
        );
        // The flipped byte sits in the second frame of the last transaction: its first frame
        // still verifies, yet it is not in the prefix because its commit never arrives.
        let h = WalHeader::parse(&bad).unwrap();
        let mut v = FrameVerifier::new(&h);
        let frame = |i: u64| &bad[prefix_len(i) as usize..prefix_len(i + 1) as usize];
        for i in 0..=FIRST_TXS_FRAMES {
            assert!(v.check(frame(i)).is_some(), "frame {i}");
        }
        let before = v.chain();
        assert!(v.check(frame(FIRST_TXS_FRAMES + 1)).is_none());
        assert_eq!(v.chain(), before);
        let first_diff = valid.iter().zip(&bad).position(|(a, b)| a != b).unwrap() as u64;
        assert!(len <= first_diff);
    }

    #[test]
    fn every_fixture_header_parses() {
        for name in [
            "valid.wal",
            "torn.wal",
            "uncommitted-tail.wal",
            "stale-salt.wal",
            "bad-checksum.wal",
        ] {
            let h = WalHeader::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (h.magic, h.version, h.page_size),
                (MAGIC_LE, WAL_VERSION, 4096)
            );
            assert_eq!(h.frame_size(), 4120);
        }
    }

    #[test]
    fn header_rejections() {
        let wal = fixture("valid.wal");
        assert_eq!(WalHeader::parse(&wal[..31]), Err(WalError::TooShort));
        let mut b = wal[..32].to_vec();
        b[3] = 0x99;
        assert!(matches!(WalHeader::parse(&b), Err(WalError::BadMagic(_))));
        let mut b = wal[..32].to_vec();
        b[7] ^= 1;
        assert!(matches!(WalHeader::parse(&b), Err(WalError::BadVersion(_))));
        let mut b = wal[..32].to_vec();
        b[8..12].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(WalHeader::parse(&b), Err(WalError::BadPageSize(1000)));
        let mut b = wal[..32].to_vec();
        b[20] ^= 0xff; // salt changed, checksum not
        assert_eq!(WalHeader::parse(&b), Err(WalError::BadHeaderChecksum));
        assert!(WalError::BadMagic(0x12345678)
            .to_string()
            .contains("0x12345678"));
    }

    /// Builds a WAL in memory with the given byte order: header and `pages` commit frames.
    fn synthetic(big_endian: bool, page_size: u32, pages: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(&(if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
        w.extend_from_slice(&WAL_VERSION.to_be_bytes());
        w.extend_from_slice(&(if page_size == 65536 { 1 } else { page_size }).to_be_bytes());
        w.extend_from_slice(&7u32.to_be_bytes());
        w.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        w.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        let (c1, c2) = checksum(big_endian, &w[..24], (0, 0));
        w.extend_from_slice(&c1.to_be_bytes());
        w.extend_from_slice(&c2.to_be_bytes());
        let mut chain = (c1, c2);
        for (i, fill) in pages.iter().enumerate() {
            let mut fh = Vec::new();
            fh.extend_from_slice(&(i as u32 + 1).to_be_bytes());
            fh.extend_from_slice(&(i as u32 + 1).to_be_bytes());
            fh.extend_from_slice(&0xdead_beefu32.to_be_bytes());
            fh.extend_from_slice(&0x0102_0304u32.to_be_bytes());
            let page = vec![*fill; page_size as usize];
            chain = checksum(big_endian, &fh[..8], chain);
            chain = checksum(big_endian, &page, chain);
            fh.extend_from_slice(&chain.0.to_be_bytes());
            fh.extend_from_slice(&chain.1.to_be_bytes());
            w.extend_from_slice(&fh);
            w.extend_from_slice(&page);
        }
        w
    }

    #[test]
    fn checksum_known_answers() {
        let data = [1u8, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
        // LE: x = (1,2) then (3,4): s0=1, s1=3; s0=1+3+3=7, s1=3+4+7=14.
        assert_eq!(checksum(false, &data, (0, 0)), (7, 14));
        // BE reads the same bytes as 0x01000000, 0x02000000, ...
        let (a, b) = checksum(true, &data, (0, 0));
        assert_eq!((a, b), (0x0700_0000, 0x0e00_0000));
        // Wrapping arithmetic, continuing from a non-zero state.
        let (s0, s1) = checksum(false, &[0xff; 8], (u32::MAX, 1));
        assert_eq!(s0, u32::MAX.wrapping_add(u32::MAX).wrapping_add(1));
        assert_eq!(s1, 1u32.wrapping_add(u32::MAX).wrapping_add(s0));
    }

    #[test]
    fn both_byte_orders_and_big_pages_verify() {
        for be in [false, true] {
            for ps in [512, 65536] {
                let w = synthetic(be, ps, &[1, 2, 3]);
                let (h, len, frames) = committed_prefix(&w).unwrap();
                assert_eq!(h.big_endian(), be);
                assert_eq!(h.page_size, ps);
                assert_eq!((len, frames), (w.len() as u64, 3));
            }
        }
    }

    #[test]
    fn verifier_does_not_advance_on_failure_and_resumes() {
        let w = synthetic(false, 512, &[1, 2, 3]);
        let h = WalHeader::parse(&w).unwrap();
        let fs = h.frame_size();
        let frame = |i: usize| &w[WAL_HEADER_SIZE + i * fs..WAL_HEADER_SIZE + (i + 1) * fs];
        let mut v = FrameVerifier::new(&h);
        assert!(v.check(frame(1)).is_none(), "out of order");
        assert_eq!(v.chain(), h.checksum());
        assert!(v.check(&frame(0)[..fs - 1]).is_none(), "short");
        let mut bad = frame(0).to_vec();
        bad[100] ^= 1;
        assert!(v.check(&bad).is_none(), "flipped byte");
        assert_eq!(v.check(frame(0)).unwrap().page_no, 1);
        let mut r = FrameVerifier::resume(&h, v.chain());
        let a = r.check(frame(1)).unwrap();
        let b = v.check(frame(1)).unwrap();
        assert_eq!((a, r.chain()), (b, v.chain()));
        assert_eq!(a.page_no, 2);
    }

    #[test]
    fn db_page_sizes() {
        let mut h = [0u8; 100];
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        assert_eq!(db_page_size(&h), Some(4096));
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(db_page_size(&h), Some(65536));
        h[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(db_page_size(&h), None);
        assert_eq!(db_page_size(&h[..10]), None);
    }

    #[test]
    fn declared_size_comes_from_a_valid_header_only() {
        let mut h = [0u8; 100];
        h[28..32].copy_from_slice(&3u32.to_be_bytes());
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(db_declared_size(&h, 4096), Some(3 * 4096));
        h[92..96].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(db_declared_size(&h, 4096), None, "stale in-header size");
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(db_declared_size(&h, 4096), None, "zero pages");
    }

    fn frame_header(salt1: u32, salt2: u32) -> [u8; FRAME_HEADER_SIZE] {
        let mut f = [0u8; FRAME_HEADER_SIZE];
        f[0..4].copy_from_slice(&2u32.to_be_bytes());
        f[8..12].copy_from_slice(&salt1.to_be_bytes());
        f[12..16].copy_from_slice(&salt2.to_be_bytes());
        f[16..24].copy_from_slice(&[0xab; 8]);
        f
    }

    #[test]
    fn an_unseen_restart_is_proven_harmless_only_where_the_new_life_did_not_reach() {
        let old = WalHeader::parse(&fixture("valid.wal")).unwrap();
        let new = WalHeader {
            salt1: old.salt1.wrapping_add(1),
            salt2: 0x1234_5678,
            ..old
        };
        let ok =
            |next: Option<&[u8]>, truncated| old_life_copied_whole(&old, &new, next, truncated);

        // The position after our copy holds an old-life frame that does not chain (or one of an
        // older life): the new life never got there, so the copy saw the old life's real end.
        assert_eq!(ok(Some(&frame_header(old.salt1, old.salt2)), false), Ok(()));
        assert_eq!(
            ok(Some(&frame_header(old.salt1.wrapping_sub(3), 9)), false),
            Ok(())
        );
        // The file ends there and was never seen longer.
        assert_eq!(ok(None, false), Ok(()));
        // A piece of a frame header is no frame.
        assert_eq!(
            ok(Some(&frame_header(new.salt1, new.salt2)[..10]), false),
            Ok(())
        );

        // The new life reached it: whatever the old life had there and beyond is unknown.
        assert!(ok(Some(&frame_header(new.salt1, new.salt2)), false).is_err());
        // Zero salts: a new-life frame of a transaction that rewrote a page in place.
        assert!(ok(Some(&frame_header(0, 0)), false).is_err());
        // The file ends there but was longer before: truncated, maybe over old frames.
        assert!(ok(None, true).is_err());
    }

    #[test]
    fn salt1_counts_restarts_so_a_skipped_life_is_seen() {
        let old = WalHeader::parse(&fixture("valid.wal")).unwrap();
        let next = WalHeader {
            salt1: old.salt1.wrapping_add(1),
            ..old
        };
        let after_next = WalHeader {
            salt1: old.salt1.wrapping_add(2),
            ..old
        };
        assert!(is_next_life(&old, &next));
        assert!(!is_next_life(&old, &after_next));
        assert!(!is_next_life(&old, &old));
        let last = WalHeader {
            salt1: u32::MAX,
            ..old
        };
        let wrapped = WalHeader { salt1: 0, ..old };
        assert!(
            is_next_life(&last, &wrapped),
            "salt-1 wraps like SQLite's u32"
        );
        let far = frame_header(old.salt1, old.salt2);
        let e = old_life_copied_whole(&old, &after_next, Some(&far), false).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
    }
}
