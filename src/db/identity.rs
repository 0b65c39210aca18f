//! The db's identity: a random id kept in `<meta dir>/db-id`, which the replica threads
//! write beside each generation they start (`generations/<gen>/db-id`, see `layout`). A
//! daemon pointed at another db's replica prefix then sees generations whose id is not its
//! own, warns, and keeps its retention off them (issue #21). A restore writes the id of the
//! generation it restored into the new db's meta dir: the restored db is that db's
//! continuation, and replicating it back to the same prefix is the normal workflow.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::files;
use crate::position::{hex, random_bytes};

/// The file in the meta dir that holds the id.
pub const DB_ID_FILE: &str = "db-id";

/// Serialises `load_or_create` among one process's replica threads (one db's several
/// replicas start together): the first creates the id, the others read it.
static CREATING: Mutex<()> = Mutex::new(());

/// An id as written: 32 lowercase hex characters.
pub fn is_db_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The id in `meta_dir`, created (16 random bytes, mode `mode`, owned like the meta dir) the
/// first time. A file there that is not an id is replaced with a new one.
pub fn load_or_create(meta_dir: &Path, mode: u32) -> Result<String> {
    let _one = crate::sync::lock(&CREATING);
    if let Some(id) = load(meta_dir)? {
        return Ok(id);
    }
    let mut buf = [0u8; 16];
    random_bytes(&mut buf)?;
    let id = hex(&buf);
    store(meta_dir, &id, mode)?;
    Ok(id)
}

/// The id in `meta_dir`, if there is one.
pub fn load(meta_dir: &Path) -> Result<Option<String>> {
    let path = meta_dir.join(DB_ID_FILE);
    match files::open_existing(&path, false) {
        Ok(mut f) => {
            let mut text = String::new();
            io::Read::read_to_string(&mut io::Read::take(&mut f, 64), &mut text)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            Ok(Some(text.trim().to_string()).filter(|t| is_db_id(t)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: cannot open: {e}", path.display())),
    }
}

/// Writes `id` into `meta_dir` (atomically, replacing any there).
pub fn store(meta_dir: &Path, id: &str, mode: u32) -> Result<()> {
    files::write_atomic(
        &meta_dir.join(DB_ID_FILE),
        format!("{id}\n").as_bytes(),
        mode,
    )
}
