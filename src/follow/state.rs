//! Follow mode's position, pure: where in the replica's WAL stream the followed database is
//! (`Point`), the position file that records it beside the output (`Record`, its text format
//! and parsing), the set of pages a transaction touched (`PageSet`) and what to ask the store
//! for next (`Probe`, `next_probe`).
//!
//! The position file is written before each transaction commits into the output, naming both
//! the state before it (`base`) and after it (`next`) with a digest of the touched pages in
//! each state: after a crash the output's pages say which of the two it is in, so a restart
//! never applies a transaction twice or skips one. No I/O here.

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Result};

use crate::codec::Compression;
use crate::position::is_generation;
use crate::wal::{WalHeader, WAL_HEADER_SIZE};

/// A place in one generation's WAL stream: every frame before `offset` of index `index` is in
/// the database, and the segment that holds the frames from there starts at `segment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The generation followed.
    pub generation: String,
    /// The WAL index (one WAL life of the primary) being applied.
    pub index: u32,
    /// Offset (in the index's decompressed WAL) of the segment to read next; at most `offset`.
    pub segment: u64,
    /// Bytes of the index applied (its header included), ending at a commit frame.
    pub offset: u64,
    /// The index's WAL header; `None` before its first segment was read.
    pub header: Option<WalHeader>,
    /// The checksum chain after the frame that ends at `offset`.
    pub chain: (u32, u32),
    /// The suffix the next segment is looked for under.
    pub compression: Compression,
}

impl Point {
    fn encode(&self) -> String {
        let header = match &self.header {
            Some(h) => hex(&h.to_bytes()),
            None => "-".to_string(),
        };
        format!(
            "{} {:08x} {} {} {} {} {:08x} {:08x}",
            self.generation,
            self.index,
            self.segment,
            self.offset,
            self.compression.extension(),
            header,
            self.chain.0,
            self.chain.1
        )
    }

    fn decode(s: &str) -> Result<Point> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let [generation, index, segment, offset, compression, header, c1, c2] = f.as_slice() else {
            bail!("a position has 8 fields, this one {}", f.len());
        };
        if !is_generation(generation) {
            bail!("{generation:?} is not a generation id");
        }
        let index = u32::from_str_radix(index, 16).map_err(|_| anyhow!("bad index {index:?}"))?;
        let segment: u64 = segment
            .parse()
            .map_err(|_| anyhow!("bad segment offset {segment:?}"))?;
        let offset: u64 = offset
            .parse()
            .map_err(|_| anyhow!("bad offset {offset:?}"))?;
        if segment > offset {
            bail!("segment offset {segment} is past the applied offset {offset}");
        }
        let compression = Compression::from_extension(compression)
            .ok_or_else(|| anyhow!("bad compression {compression:?}"))?;
        let header = match *header {
            "-" => None,
            h => {
                let bytes = unhex(h).ok_or_else(|| anyhow!("bad WAL header {h:?}"))?;
                if bytes.len() != WAL_HEADER_SIZE {
                    bail!("the WAL header is {} bytes", bytes.len());
                }
                Some(WalHeader::parse(&bytes).map_err(|e| anyhow!("{e}"))?)
            }
        };
        if header.is_none() && offset != 0 {
            bail!("offset {offset} without a WAL header");
        }
        let c1 = u32::from_str_radix(c1, 16).map_err(|_| anyhow!("bad checksum {c1:?}"))?;
        let c2 = u32::from_str_radix(c2, 16).map_err(|_| anyhow!("bad checksum {c2:?}"))?;
        Ok(Point {
            generation: generation.to_string(),
            index,
            segment,
            offset,
            header,
            chain: (c1, c2),
            compression,
        })
    }
}

/// Page numbers, as sorted disjoint inclusive ranges (a transaction's pages, or all of a
/// rebuilt database's, stay small on disk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageSet {
    ranges: Vec<(u32, u32)>,
}

impl PageSet {
    /// The set of `pages` (any order, duplicates allowed).
    pub fn from_sorted_iter(pages: impl IntoIterator<Item = u32>) -> PageSet {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for p in pages {
            match ranges.last_mut() {
                Some((_, hi)) if p <= *hi => {}
                Some((_, hi)) if p == *hi + 1 => *hi = p,
                _ => ranges.push((p, p)),
            }
        }
        PageSet { ranges }
    }

    /// The set of pages in inclusive `ranges` (any order, overlaps allowed).
    pub fn from_ranges(mut ranges: Vec<(u32, u32)>) -> PageSet {
        ranges.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some((_, top)) if lo <= top.saturating_add(1) => *top = (*top).max(hi),
                _ => out.push((lo, hi)),
            }
        }
        PageSet { ranges: out }
    }

    /// Every page number in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(|&(lo, hi)| lo..=hi)
    }

    fn encode(&self) -> String {
        let mut s = String::new();
        for (k, (lo, hi)) in self.ranges.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            if lo == hi {
                let _ = write!(s, "{lo}");
            } else {
                let _ = write!(s, "{lo}-{hi}");
            }
        }
        s
    }

    fn decode(s: &str) -> Result<PageSet> {
        let mut ranges = Vec::new();
        let mut last = 0u32;
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
                None => (part.parse::<u32>(), part.parse::<u32>()),
            };
            let (Ok(lo), Ok(hi)) = (lo, hi) else {
                bail!("bad page range {part:?}");
            };
            if lo == 0 || hi < lo || lo <= last {
                bail!("page ranges out of order at {part:?}");
            }
            ranges.push((lo, hi));
            last = hi;
        }
        Ok(PageSet { ranges })
    }
}

/// What the position file says: the output is at `base` or at `next`, and the pages in
/// `pages` (with the page count) hash to `pre` in the one state and `post` in the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Device and inode of the output when the record was written: another file at that path
    /// is not the database this position describes.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// The state before the transaction the record was written for.
    pub base: Point,
    /// The state after it (the same as `base` when none was in flight).
    pub next: Point,
    /// The pages that transaction wrote.
    pub pages: PageSet,
    /// Digest of `pages` and the page count at `base`.
    pub pre: [u8; 32],
    /// Digest of `pages` and the page count at `next`.
    pub post: [u8; 32],
}

const MAGIC: &str = "litestream-follow 1";

impl Record {
    /// The file's text.
    pub fn encode(&self) -> String {
        format!(
            "{MAGIC}\nfile {} {}\nbase {}\nnext {}\npages {}\npre {}\npost {}\n",
            self.dev,
            self.ino,
            self.base.encode(),
            self.next.encode(),
            self.pages.encode(),
            hex(&self.pre),
            hex(&self.post)
        )
    }

    /// Parses the file's text; an error says what is wrong with it.
    pub fn decode(text: &str) -> Result<Record> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            bail!("not a follow position file (its first line is not {MAGIC:?})");
        }
        let mut field = |name: &str| -> Result<&str> {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("it ends before the {name} line"))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| anyhow!("expected a {name} line, found {line:?}"))
        };
        let file = field("file")?;
        let (dev, ino) = file
            .split_once(' ')
            .and_then(|(d, i)| Some((d.parse().ok()?, i.parse().ok()?)))
            .ok_or_else(|| anyhow!("bad file line {file:?}"))?;
        let base = Point::decode(field("base")?).map_err(|e| anyhow!("base: {e}"))?;
        let next = Point::decode(field("next")?).map_err(|e| anyhow!("next: {e}"))?;
        let pages = PageSet::decode(field("pages")?)?;
        let digest = |s: &str| -> Result<[u8; 32]> {
            unhex(s)
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| anyhow!("bad digest {s:?}"))
        };
        let pre = digest(field("pre")?)?;
        let post = digest(field("post")?)?;
        Ok(Record {
            dev,
            ino,
            base,
            next,
            pages,
            pre,
            post,
        })
    }

    /// Which state a database whose pages hash to `digest` is in: `next` when it matches
    /// `post` (also when `pre` does too: then both states hold the same pages), `base` when
    /// it matches `pre`, `None` when it is in neither.
    pub fn state_for(&self, digest: &[u8; 32]) -> Option<&Point> {
        if *digest == self.post {
            Some(&self.next)
        } else if *digest == self.pre {
            Some(&self.base)
        } else {
            None
        }
    }
}

/// One request to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// GET this WAL segment (index, offset).
    Segment(u32, u64),
    /// List the replica: a new generation, a hole, another compression.
    Listing,
}

/// The request for idle poll number `misses` (0 right after data): the segment that would
/// continue the current index, or, on every other poll once the index holds frames, the
/// first segment of the next index (the primary's WAL restarted); a listing when one is due
/// (`list_due`: idle for `-follow-list-interval`). One request per poll, never a listing while
/// data keeps coming.
pub fn next_probe(at: &Point, misses: u32, list_due: bool) -> Probe {
    if misses > 0 && list_due {
        return Probe::Listing;
    }
    if at.offset > 0 && misses % 2 == 1 {
        return Probe::Segment(at.index.wrapping_add(1), 0);
    }
    Probe::Segment(at.index, at.segment)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> WalHeader {
        // A real header: the first 32 bytes of a WAL written by SQLite.
        let wal = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/wal/valid.wal"
        ))
        .expect("testdata wal");
        WalHeader::parse(&wal).expect("header")
    }

    fn point(offset: u64) -> Point {
        Point {
            generation: "0123456789abcdef".into(),
            index: 7,
            segment: offset / 2,
            offset,
            header: (offset > 0).then(header),
            chain: (1, 0xffff_ffff),
            compression: Compression::Lz4,
        }
    }

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let r = Record {
            dev: 2049,
            ino: 77,
            base: point(0),
            next: point(4152),
            pages: PageSet::from_sorted_iter([1, 2, 3, 5, 9, 10]),
            pre: [3; 32],
            post: [4; 32],
        };
        let text = r.encode();
        assert!(text.contains("pages 1-3,5,9-10\n"), "{text}");
        assert_eq!(Record::decode(&text).unwrap(), r);
        assert_eq!(
            header(),
            WalHeader::parse(&header().to_bytes()).unwrap(),
            "to_bytes is parse's inverse"
        );
        for bad in [
            text.replace("litestream-follow 1", "x"),
            text.replace("pages 1-3", "pages 3-1"),
            text.replace(
                "0123456789abcdef 00000007 0 0",
                "0123456789abcdef 00000007 0 9",
            ),
            text.lines().take(4).collect::<Vec<_>>().join("\n"),
            text.replace("post 0404", "post 04zz"),
        ] {
            assert!(Record::decode(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn state_for_prefers_next_when_both_states_hold_the_same_pages() {
        let mut r = Record {
            dev: 1,
            ino: 1,
            base: point(0),
            next: point(4152),
            pages: PageSet::from_sorted_iter([1]),
            pre: [1; 32],
            post: [2; 32],
        };
        assert_eq!(r.state_for(&[2; 32]), Some(&r.next));
        assert_eq!(r.state_for(&[1; 32]), Some(&r.base));
        assert_eq!(r.state_for(&[9; 32]), None);
        r.post = r.pre;
        assert_eq!(r.state_for(&[1; 32]), Some(&r.next));
    }

    #[test]
    fn probes_alternate_with_the_next_index_and_list_only_when_due() {
        let at = point(4152);
        assert_eq!(next_probe(&at, 0, false), Probe::Segment(7, 2076));
        assert_eq!(next_probe(&at, 1, false), Probe::Segment(8, 0));
        assert_eq!(next_probe(&at, 2, false), Probe::Segment(7, 2076));
        // No listing by count of idle polls (the old code listed every 60th).
        let lists = (0..100_000)
            .filter(|&m| next_probe(&at, m, false) == Probe::Listing)
            .count();
        assert_eq!(lists, 0);
        assert_eq!(next_probe(&at, 5, true), Probe::Listing);
        assert_eq!(next_probe(&at, 0, true), Probe::Segment(7, 2076));
        // An index with nothing yet: only its first segment can come next.
        let empty = point(0);
        assert_eq!(next_probe(&empty, 1, false), Probe::Segment(7, 0));
    }

    #[test]
    fn page_sets_merge_runs() {
        let r = PageSet::from_ranges(vec![(7, 9), (1, 1), (2, 4), (3, 5)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 7, 8, 9]);
        let s = PageSet::from_sorted_iter([1, 1, 2, 4]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 2, 4]);
        assert_eq!(PageSet::decode(&s.encode()).unwrap(), s);
    }
}
