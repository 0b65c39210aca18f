//! Follow mode's writes into the output, through SQLite: one or more whole replicated
//! transactions become one write transaction on the output (`BEGIN IMMEDIATE`, page images
//! into the `sqlite_dbpage` virtual table, the size of the last commit frame, `COMMIT`), so the
//! output's own WAL carries them and its readers see a prefix of whole transactions and keep
//! their snapshots. (The caller batches a segment's transactions: `Txn` keeps the last image's
//! hash of each page written, so the batch's digest is the same as one by one.)
//!
//! `sqlite_dbpage` needs SQLite built with `SQLITE_ENABLE_DBPAGE_VTAB`: `.cargo/config.toml`
//! sets `LIBSQLITE3_FLAGS` for rusqlite's bundled build. Page 1 is written last in each
//! transaction: it carries the schema cookie, and a changed cookie makes SQLite re-read the
//! schema, which must then already be the new one. The truncation (`INSERT … VALUES(n,
//! NULL)`) comes after it, as `sqlite_dbpage` cancels a truncation that a page write follows.
//! SQLite itself rewrites page 1's change counter and version fields (bytes 24..28, 92..100)
//! when it commits page 1 in WAL mode, so digests leave those bytes out.
//!
//! Nobody else may write the output: `PRAGMA data_version`, read inside our `BEGIN
//! IMMEDIATE`, changes only when another connection committed since ours last looked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest as _, Sha256};

use super::state::PageSet;

/// Whether this build's SQLite has the `sqlite_dbpage` table follow mode writes through:
/// checked before a restore, so a build without it does not restore first and fail after.
pub fn check_sqlite() -> Result<()> {
    let conn = Connection::open_in_memory()?;
    conn.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = 1")
        .map(|_| ())
        .map_err(|e| {
            anyhow::anyhow!(
                "follow mode needs SQLite's sqlite_dbpage table, which this build lacks (build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB, as .cargo/config.toml does): {e}"
            )
        })
}

/// SQLite's lock byte: the page holding it (for databases past 1 GiB) is never used, and
/// `sqlite_dbpage` reports it as zeros and refuses to write it (SQLITE_CORRUPT).
const PENDING_BYTE: u64 = 0x4000_0000;

/// The page that holds `PENDING_BYTE` at `page_size`.
pub fn pending_byte_page(page_size: u32) -> u32 {
    (PENDING_BYTE / u64::from(page_size.max(1))) as u32 + 1
}

/// The pages a rebuild copies into a database of `pages` pages: all but the pending-byte
/// page, ascending.
pub fn copied_pages(pages: u32, page_size: u32) -> impl Iterator<Item = u32> {
    let skip = pending_byte_page(page_size);
    (1..=pages).filter(move |&p| p != skip)
}

/// The followed database, open for our writes.
pub struct Output {
    conn: Connection,
    path: PathBuf,
    /// `PRAGMA data_version` as of our last transaction; `None` before the first.
    data_version: Option<i64>,
    page_size: u32,
    /// `pending_byte_page(page_size)`: never written, left out of digests.
    pending: u32,
    /// Whether a transaction of ours is open.
    in_txn: bool,
}

/// How long our `BEGIN IMMEDIATE` waits for the write lock: only a writer holds it, and in
/// follow mode that is only ourselves or an application that must not write (which the
/// data_version check then reports).
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(5);

impl Output {
    /// Opens `path` (it must exist) in WAL mode with full sync: a transaction we report as
    /// applied (and record in the position file) is on disk.
    pub fn open(path: &Path) -> Result<Output> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("{}: cannot open the followed database", path.display()))?;
        conn.busy_timeout(WRITE_LOCK_WAIT)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = wal", [], |r| r.get(0))
            .with_context(|| format!("{}: cannot enable WAL mode", path.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "{}: journal_mode is {mode}, not wal; follow mode keeps the database readable through its WAL",
                path.display()
            );
        }
        conn.execute_batch("PRAGMA synchronous = FULL;")?;
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        // Fails here, once, with the reason, rather than on the first transaction.
        conn.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = 1")
            .map_err(|e| {
                anyhow::anyhow!(
                    "this build of SQLite has no sqlite_dbpage table (built without SQLITE_ENABLE_DBPAGE_VTAB): {e}"
                )
            })?;
        Ok(Output {
            conn,
            path: path.to_path_buf(),
            data_version: None,
            page_size,
            pending: pending_byte_page(page_size),
            in_txn: false,
        })
    }

    /// `page_hash`, with the pending-byte page (which `sqlite_dbpage` reads as zeros)
    /// counted as absent, so a database that grows past it keeps the same digest.
    fn hash(&self, pgno: u32, data: Option<&[u8]>) -> [u8; 32] {
        if pgno == self.pending {
            return [0u8; 32];
        }
        page_hash(pgno, data)
    }

    /// The database's page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Begins our write transaction; refuses to go on when someone else committed to the
    /// output since our last transaction.
    pub fn begin(&mut self) -> Result<Txn> {
        self.begin_as(false)
    }

    /// `begin` for a transaction that writes pages in ascending order, each once (a
    /// rebuild's copy): its digest is kept as it goes, so its memory does not grow with the
    /// number of pages.
    pub fn begin_sequential(&mut self) -> Result<Txn> {
        self.begin_as(true)
    }

    fn begin_as(&mut self, sequential: bool) -> Result<Txn> {
        self.rollback();
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .with_context(|| format!("{}: cannot begin a write transaction (another process holds the write lock: follow mode must be the database's only writer)", self.path.display()))?;
        self.in_txn = true;
        let checked = (|| -> Result<u32> {
            let version: i64 = self
                .conn
                .query_row("PRAGMA data_version", [], |r| r.get(0))?;
            if self.data_version.is_some_and(|v| v != version) {
                bail!(
                    "{}: another process wrote to the followed database (its PRAGMA data_version changed); follow mode must be its only writer (open it read-only), so it stops here: remove it and its position file to restore it anew",
                    self.path.display()
                );
            }
            self.data_version = Some(version);
            self.page_count()
        })();
        match checked {
            Ok(base_pages) => Ok(Txn {
                written: BTreeMap::new(),
                sequential,
                seq_post: [0u8; 32],
                seq_top: 0,
                seq_ranges: Vec::new(),
                pre: [0u8; 32],
                page1: None,
                base_pages,
            }),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Ends a transaction of ours without a change (nothing when none is open): the output
    /// stays at its last whole transaction.
    pub fn rollback(&mut self) {
        if self.in_txn {
            self.in_txn = false;
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn page_count(&self) -> Result<u32> {
        Ok(self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?)
    }

    fn read_page(&self, pgno: u32) -> Result<Option<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
        Ok(stmt
            .query_row(params![pgno], |r| r.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    /// The digest of every page as the output holds them now, read in a transaction of
    /// ours (so the data_version check starts from this state): one pass over the database,
    /// at start; each commit then updates it from the pages it changes.
    pub fn full_digest(&mut self) -> Result<Digest> {
        let txn = self.begin()?;
        let result = (|| -> Result<Digest> {
            let mut raw = [0u8; 32];
            let mut stmt = self
                .conn
                .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let pgno: u32 = row.get(0)?;
                let data = row.get_ref(1)?.as_blob()?;
                xor(&mut raw, &self.hash(pgno, Some(data)));
            }
            Ok(Digest {
                raw,
                pages: txn.base_pages,
            })
        })();
        self.rollback();
        result.with_context(|| format!("{}: cannot read its pages", self.path.display()))
    }

    /// Writes one page image (`data` is one page) in `txn`.
    pub fn write(&mut self, txn: &mut Txn, pgno: u32, data: &[u8]) -> Result<()> {
        if data.len() != self.page_size as usize {
            bail!(
                "a page of {} bytes for a database of {}-byte pages",
                data.len(),
                self.page_size
            );
        }
        if pgno == self.pending {
            bail!(
                "a replicated page {pgno}, the pending-byte page that SQLite never writes at {}-byte pages",
                self.page_size
            );
        }
        let hash = self.hash(pgno, Some(data));
        if txn.sequential {
            if pgno <= txn.seq_top {
                bail!(
                    "page {pgno} after page {} in a sequential copy",
                    txn.seq_top
                );
            }
            let before = if pgno <= txn.base_pages {
                self.read_page(pgno)?
            } else {
                None
            };
            xor(&mut txn.pre, &self.hash(pgno, before.as_deref()));
            xor(&mut txn.seq_post, &hash);
            txn.seq_top = pgno;
            match txn.seq_ranges.last_mut() {
                Some((_, hi)) if *hi + 1 == pgno => *hi = pgno,
                _ => txn.seq_ranges.push((pgno, pgno)),
            }
        } else if txn.written.insert(pgno, hash).is_none() {
            // Past the old end it was absent (and `sqlite_dbpage` bounds its reads by the
            // size the transaction began with, so it could not say otherwise).
            let before = if pgno <= txn.base_pages {
                self.read_page(pgno)?
            } else {
                None
            };
            xor(&mut txn.pre, &self.hash(pgno, before.as_deref()));
        }
        if pgno == 1 {
            txn.page1 = Some(data.to_vec());
            return Ok(());
        }
        self.put(pgno, Some(data))
    }

    fn put(&self, pgno: u32, data: Option<&[u8]>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, ?2)")?;
        stmt.execute(params![pgno, data])
            .with_context(|| format!("{}: cannot write page {pgno}", self.path.display()))?;
        Ok(())
    }

    /// Ends `txn` at `db_pages` pages: page 1, the truncation, then `record` with what
    /// changed (the position file is written there), then `COMMIT`. `before` is the digest
    /// of the database as the transaction began; returns the digest after it. On error the
    /// caller rolls back.
    pub fn commit(
        &mut self,
        mut txn: Txn,
        db_pages: u32,
        before: &Digest,
        record: impl FnOnce(&Change) -> Result<()>,
    ) -> Result<Digest> {
        if before.pages != txn.base_pages {
            bail!(
                "{}: the database has {} pages where follow mode left {}",
                self.path.display(),
                txn.base_pages,
                before.pages
            );
        }
        if let Some(p1) = txn.page1.take() {
            self.put(1, Some(&p1))?;
        }
        if db_pages == 0 {
            bail!("a commit frame with a database size of 0 pages");
        }
        // `sqlite_dbpage` truncates only below the size the transaction began with (it asks
        // the b-tree, which our page writes do not grow), so a transaction that wrote past
        // its own final size above that cannot be applied: refused before the commit.
        if txn.refuses(db_pages) {
            let top = txn.top();
            bail!(
                "a replicated transaction writes page {top} but ends the database at {db_pages} pages, which follow mode cannot apply through SQLite; restore the database anew"
            );
        }
        // Pages the truncation removes leave the digest too (a page past the end hashes to
        // zero, so they add nothing after it). Sequential pages all lie at or below the end
        // (`refuses`).
        let mut ranges: Vec<(u32, u32)> = std::mem::take(&mut txn.seq_ranges);
        let cut_from = db_pages.saturating_add(1);
        for p in cut_from..=txn.base_pages {
            if !txn.written.contains_key(&p) {
                let old = self.read_page(p)?;
                xor(&mut txn.pre, &self.hash(p, old.as_deref()));
            }
        }
        if cut_from <= txn.base_pages {
            ranges.push((cut_from, txn.base_pages));
        }
        if db_pages < self.page_count()? {
            self.put(db_pages + 1, None)?;
        }
        // From the images written, not read back: inside the transaction `sqlite_dbpage`
        // does not read past the size it began with.
        let mut post = txn.seq_post;
        for (&p, hash) in &txn.written {
            if p <= db_pages {
                xor(&mut post, hash);
            } else {
                xor(&mut post, &self.hash(p, None));
            }
        }
        let mut raw = before.raw;
        xor(&mut raw, &txn.pre);
        xor(&mut raw, &post);
        let after = Digest {
            raw,
            pages: db_pages,
        };
        let change = Change {
            pages: PageSet::from_ranges(
                ranges
                    .into_iter()
                    .chain(txn.written.keys().map(|&p| (p, p)))
                    .collect(),
            ),
            pre: before.finish(),
            post: after.finish(),
        };
        record(&change)?;
        self.conn
            .execute_batch("COMMIT")
            .with_context(|| format!("{}: cannot commit", self.path.display()))?;
        self.in_txn = false;
        let pages = self.page_count()?;
        if pages != db_pages {
            bail!(
                "{}: after the commit the database has {pages} pages, the replicated transaction {db_pages}",
                self.path.display()
            );
        }
        Ok(after)
    }
}

/// A whole database's digest: the XOR of its pages' hashes (so a transaction updates it from
/// the pages it changes) and its page count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    raw: [u8; 32],
    pages: u32,
}

impl Digest {
    /// What the position file records.
    pub fn finish(&self) -> [u8; 32] {
        finish_digest(&self.raw, self.pages)
    }
}

/// One replicated transaction being applied: what it touched so far. It holds no
/// connection; `Output` applies it.
pub struct Txn {
    /// Each page written, with the hash of its last image (not in a sequential one).
    written: BTreeMap<u32, [u8; 32]>,
    /// Pages come in ascending order, each once: `seq_*` instead of `written`.
    sequential: bool,
    /// XOR of the sequential pages' new hashes.
    seq_post: [u8; 32],
    /// The last sequential page written.
    seq_top: u32,
    /// The sequential pages, as runs.
    seq_ranges: Vec<(u32, u32)>,
    /// XOR of the touched pages' hashes before the transaction.
    pre: [u8; 32],
    page1: Option<Vec<u8>>,
    base_pages: u32,
}

impl Txn {
    /// Distinct pages written so far.
    pub fn pages(&self) -> usize {
        self.written.len()
    }

    fn top(&self) -> u32 {
        let written = self.written.keys().next_back().copied().unwrap_or(0);
        written.max(self.seq_top)
    }

    /// Whether `commit` at `db_pages` would refuse it: a page written past that end, which
    /// `sqlite_dbpage` cannot cut unless the end is below the size it began with.
    pub fn refuses(&self, db_pages: u32) -> bool {
        let top = self.top();
        (db_pages >= self.base_pages || self.sequential) && top > db_pages
    }
}

/// What a transaction changes, as the position file records it before the commit.
pub struct Change {
    /// The pages it wrote or removed.
    pub pages: PageSet,
    /// The whole database's digest before it.
    pub pre: [u8; 32],
    /// The whole database's digest after it.
    pub post: [u8; 32],
}

/// A page's hash, with the bytes of page 1 that SQLite rewrites at each commit left out; a
/// page past the end contributes nothing (zero), so the XOR over all pages is the same
/// whichever pages past the end a digest happened to visit.
fn page_hash(pgno: u32, data: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pgno.to_be_bytes());
    match data {
        None => return [0u8; 32],
        Some(d) if pgno == 1 && d.len() >= 100 => {
            h.update(&d[..24]);
            h.update(&d[28..92]);
            h.update(&d[100..]);
        }
        Some(d) => h.update(d),
    }
    h.finalize().into()
}

fn xor(acc: &mut [u8; 32], h: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(h) {
        *a ^= b;
    }
}

fn finish_digest(acc: &[u8; 32], pages: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(acc);
    h.update(pages.to_be_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL-mode db at `path` with rows 1..=n of ~5 KB blobs (overflow pages).
    fn db_with_rows(path: &Path, n: i64) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB);",
        )
        .unwrap();
        for id in 1..=n {
            c.execute(
                "INSERT OR IGNORE INTO t VALUES (?1, zeroblob(5000 + ?1))",
                params![id],
            )
            .unwrap();
        }
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }

    fn pages_of(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        bytes.chunks(4096).map(|c| c.to_vec()).collect()
    }

    #[test]
    fn a_rebuild_skips_the_pending_byte_page() {
        // 0x40000000 / 4096 + 1: a copy of a database past 1 GiB must not write it.
        assert_eq!(pending_byte_page(4096), 262_145);
        assert_eq!(pending_byte_page(65_536), 16_385);
        assert_eq!(pending_byte_page(512), 2_097_153);
        let copied: Vec<u32> = copied_pages(262_147, 4096).collect();
        assert_eq!(copied.len(), 262_146);
        assert!(!copied.contains(&262_145));
        assert_eq!(copied[262_143..], [262_144, 262_146, 262_147]);
        assert_eq!(copied_pages(3, 4096).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_sequential_copy_keeps_no_per_page_state_and_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        db_with_rows(&a, 30);
        db_with_rows(&b, 12);
        let small = pages_of(&b);
        let mut out = Output::open(&a).unwrap();
        let start = out.full_digest().unwrap();
        let mut txn = out.begin_sequential().unwrap();
        for (k, page) in small.iter().enumerate() {
            out.write(&mut txn, k as u32 + 1, page).unwrap();
        }
        // A rebuild of a large database holds nothing per page (review MED 8).
        assert_eq!(txn.pages(), 0);
        let mut change = None;
        let after = out
            .commit(txn, small.len() as u32, &start, |c| {
                change = Some(c.pages.iter().count());
                Ok(())
            })
            .unwrap();
        assert_eq!(change, Some(start.pages as usize), "written and cut pages");
        drop(out);
        let mut again = Output::open(&a).unwrap();
        assert_eq!(again.full_digest().unwrap(), after);
        let ok: String = Connection::open(&a)
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_transaction_ending_below_a_page_it_wrote_is_refused_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        db_with_rows(&a, 5);
        let mut out = Output::open(&a).unwrap();
        let start = out.full_digest().unwrap();
        let page = pages_of(&a)[1].clone();
        let mut txn = out.begin().unwrap();
        out.write(&mut txn, start.pages + 5, &page).unwrap();
        let e = out
            .commit(txn, start.pages + 2, &start, |_| Ok(()))
            .unwrap_err();
        assert!(format!("{e:#}").contains("cannot apply"), "{e:#}");
        out.rollback();
        assert_eq!(out.full_digest().unwrap(), start);
    }

    #[test]
    fn digests_recorded_before_commit_match_the_database_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        db_with_rows(&a, 20);
        db_with_rows(&b, 25);
        let newer = pages_of(&b);
        let mut out = Output::open(&a).unwrap();
        let start = out.full_digest().unwrap();
        let mut txn = out.begin().unwrap();
        // Changed pages only, in frame order, as a replicated transaction carries them.
        let older = pages_of(&a);
        for (k, page) in newer.iter().enumerate() {
            if older.get(k) != Some(page) {
                out.write(&mut txn, k as u32 + 1, page).unwrap();
            }
        }
        let mut seen = None;
        let after = out
            .commit(txn, newer.len() as u32, &start, |c| {
                seen = Some((c.pre, c.post));
                Ok(())
            })
            .unwrap();
        let (pre, post) = seen.unwrap();
        assert_ne!(pre, post);
        assert_eq!(pre, start.finish());
        drop(out);
        let mut again = Output::open(&a).unwrap();
        let read = again.full_digest().unwrap();
        assert_eq!(read, after, "after the commit");
        assert_eq!(read.finish(), post);
        // A transaction that stops after its record (a kill before COMMIT) leaves `pre`.
        db_with_rows(&b, 30);
        let newest = pages_of(&b);
        let older = pages_of(&a);
        let mut txn = again.begin().unwrap();
        for (k, page) in newest.iter().enumerate() {
            if older.get(k) != Some(page) {
                again.write(&mut txn, k as u32 + 1, page).unwrap();
            }
        }
        let mut recorded = None;
        let failed = again.commit(txn, newest.len() as u32, &read, |c| {
            recorded = Some(c.pre);
            anyhow::bail!("killed")
        });
        assert!(failed.is_err());
        again.rollback();
        assert_eq!(
            again.full_digest().unwrap().finish(),
            recorded.unwrap(),
            "before the commit"
        );
        // Shrinking: the pages cut off leave the digest.
        db_with_rows(&b, 0);
        let c = Connection::open(&b).unwrap();
        c.execute_batch("DELETE FROM t; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        drop(c);
        let small = pages_of(&b);
        let mut txn = again.begin().unwrap();
        for (k, page) in small.iter().enumerate() {
            again.write(&mut txn, k as u32 + 1, page).unwrap();
        }
        let cut = again
            .commit(txn, small.len() as u32, &read, |_| Ok(()))
            .unwrap();
        assert_eq!(again.full_digest().unwrap(), cut, "after a shrink");
        let check = Connection::open(&a).unwrap();
        let rows: i64 = check
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "the shrunk database is the emptied one");
        let ok: String = check
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
