//! Validation (SPEC §5.5): restore the replica at a position P into a scratch directory and
//! compare it page by page with the database as it was at P.
//!
//! The local side is rebuilt the way a snapshot is taken: the db file is copied while our own
//! checkpoints are held off (so it holds nothing beyond the published position, which is P),
//! then the shadow WAL of P's index up to P's offset is replayed over it. Both sides therefore
//! describe exactly the same committed state, whatever the application writes or checkpoints
//! meanwhile, and a difference can only come from the replica. Scratch files live under the
//! db's metadata directory and are removed afterwards; nothing here touches the database, the
//! shadow WAL or the store's objects.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::ReplicaClient;
use crate::db::DbShared;
use crate::encryption::Keys;
use crate::files;
use crate::position::Position;
use crate::restore::{self, GenerationListing, Options};
use crate::wal::{WalHeader, WAL_HEADER_SIZE};

/// Header bytes of page 1 that legitimately differ between two copies of the same state:
/// the file change counter (24..28) and version-valid-for / SQLite version (92..100).
const IGNORED_HEADER: [std::ops::Range<usize>; 2] = [24..28, 92..100];

/// The outcome of one validation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok { pages: u64 },
    Mismatch { page: u64, detail: String },
}

/// Validates the replica at the db's current published position P; `upload_until` must bring
/// the store up to P (the replica thread's own upload, so nothing races it).
pub(crate) fn validate(
    db: &DbShared,
    client: &Arc<dyn ReplicaClient>,
    keys: &Arc<Keys>,
    scratch: &Path,
    upload_until: &mut dyn FnMut(&Position) -> Result<()>,
) -> Result<(Position, Outcome)> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).with_context(|| format!("{}: cannot create", scratch.display()))?;
    let result = run(db, client, keys, scratch, upload_until);
    let _ = fs::remove_dir_all(scratch);
    result
}

fn run(
    db: &DbShared,
    client: &Arc<dyn ReplicaClient>,
    keys: &Arc<Keys>,
    scratch: &Path,
    upload_until: &mut dyn FnMut(&Position) -> Result<()>,
) -> Result<(Position, Outcome)> {
    let local = scratch.join("local.db");
    let pos = {
        let _guard = db.checkpoint_lock.read().unwrap_or_else(|e| e.into_inner());
        let pos = db
            .position()
            .ok_or_else(|| anyhow!("database not initialised"))?;
        let file = db
            .db_file()
            .ok_or_else(|| anyhow!("database file not open"))?;
        copy_db(&file, &local)?;
        pos
    };
    upload_until(&pos)?;
    let frames = copy_shadow_prefix(
        &db.shadow_wal_path(&pos.generation, pos.index),
        &pos,
        &local,
    )?;
    if frames > 0 {
        restore::replay_wal_in_place(&local, frames)?;
    }

    let listing = GenerationListing {
        replica: 0,
        generation: pos.generation.clone(),
        snapshots: client.snapshots(&pos.generation)?,
        segments: client
            .wal_segments(&pos.generation)?
            .into_iter()
            .filter(|s| s.index < pos.index || (s.index == pos.index && s.offset < pos.offset))
            .collect(),
    };
    let opts = Options {
        generation: Some(pos.generation.clone()),
        index: Some(pos.index),
        ..Default::default()
    };
    let plan = restore::choose(&[listing], &opts)?.ok_or_else(|| {
        anyhow!(
            "the replica has no snapshot of generation {}",
            pos.generation
        )
    })?;
    let remote = scratch.join("replica.db");
    restore::apply(client, keys, &plan, &remote, 2, None)?;
    let outcome = compare(&local, &remote)?;
    Ok((pos, outcome))
}

fn copy_db(file: &File, to: &Path) -> Result<()> {
    let mut w = BufWriter::new(files::create_replacing(to, 0o600)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, off)
            .context("cannot read the database")?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .with_context(|| format!("{}: cannot write", to.display()))?;
        off += n as u64;
    }
    w.flush()
        .with_context(|| format!("{}: cannot write", to.display()))?;
    Ok(())
}

/// Copies the shadow WAL bytes `[0, pos.offset)` beside `local` as its `-wal`; returns the
/// number of frames.
fn copy_shadow_prefix(shadow: &Path, pos: &Position, local: &Path) -> Result<u64> {
    if pos.offset <= WAL_HEADER_SIZE as u64 {
        return Ok(0);
    }
    let mut f = File::open(shadow)
        .with_context(|| format!("{}: cannot open shadow wal", shadow.display()))?;
    let mut hdr = [0u8; WAL_HEADER_SIZE];
    f.read_exact(&mut hdr)
        .with_context(|| format!("{}: cannot read", shadow.display()))?;
    let header = WalHeader::parse(&hdr).map_err(|e| anyhow!("{}: {e}", shadow.display()))?;
    f.seek(SeekFrom::Start(0))?;
    let wal = files::wal_path(local);
    let mut w = files::create_replacing(&wal, 0o600)?;
    io::copy(&mut f.take(pos.offset), &mut w)
        .with_context(|| format!("{}: cannot copy", wal.display()))?;
    Ok((pos.offset - WAL_HEADER_SIZE as u64) / header.frame_size() as u64)
}

/// Page-by-page comparison, ignoring the page-1 header fields that differ by construction.
fn compare(a: &Path, b: &Path) -> Result<Outcome> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    let mut header = [0u8; 100];
    fa.read_exact_at(&mut header, 0)
        .context("cannot read the local copy")?;
    let page_size = crate::wal::db_page_size(&header)
        .ok_or_else(|| anyhow!("local copy has a bad header"))? as usize;
    if la != lb {
        return Ok(Outcome::Mismatch {
            page: la.min(lb) / page_size as u64 + 1,
            detail: format!("database sizes differ: local {la} bytes, replica {lb} bytes"),
        });
    }
    let (mut pa, mut pb) = (vec![0u8; page_size], vec![0u8; page_size]);
    let pages = la / page_size as u64;
    for page in 0..pages {
        fa.read_exact_at(&mut pa, page * page_size as u64)?;
        fb.read_exact_at(&mut pb, page * page_size as u64)?;
        if page == 0 {
            for r in IGNORED_HEADER {
                pa[r.clone()].fill(0);
                pb[r].fill(0);
            }
        }
        if pa != pb {
            let at = pa.iter().zip(&pb).position(|(x, y)| x != y).unwrap_or(0);
            return Ok(Outcome::Mismatch {
                page: page + 1,
                detail: format!("page {} differs at byte {at}", page + 1),
            });
        }
    }
    if la % page_size as u64 != 0 {
        bail!("local copy is not a whole number of pages");
    }
    Ok(Outcome::Ok { pages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_ignores_only_the_volatile_header_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut page1 = vec![0u8; 1024];
        page1[..16].copy_from_slice(b"SQLite format 3\0");
        page1[16..18].copy_from_slice(&512u16.to_be_bytes());
        let mut a = page1.clone();
        a.extend(vec![7u8; 512]);
        let mut b = a.clone();
        b[25] = 9; // change counter
        b[97] = 1; // SQLite version
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&pa, &a).unwrap();
        fs::write(&pb, &b).unwrap();
        assert_eq!(compare(&pa, &pb).unwrap(), Outcome::Ok { pages: 3 });
        b[1000] ^= 1;
        fs::write(&pb, &b).unwrap();
        assert!(matches!(
            compare(&pa, &pb).unwrap(),
            Outcome::Mismatch { page: 2, .. }
        ));
        fs::write(&pb, &b[..1024]).unwrap();
        assert!(matches!(
            compare(&pa, &pb).unwrap(),
            Outcome::Mismatch { .. }
        ));
    }
}
