//! How this crate creates, writes and syncs files: one place for the rules every file we
//! write next to a database, in a file replica or in a restore's output directory follows.
//!
//! Durability: a new directory entry is fsynced into its parent; an object is written to a
//! temp name, fsynced, renamed into place and its directory fsynced, so a crash leaves a
//! whole file or none. Modes: a file gets exactly the mode asked for (the umask neither widens
//! nor narrows it, a leftover file does not keep its own), a directory the matching
//! `dir_mode_for`. A thin I/O edge: it knows nothing of SQLite, WAL contents or stores.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `<path><suffix>`: SQLite's names beside a database (`-wal`, `-shm`) and our temp names.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The WAL file SQLite keeps beside `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    sibling(db, "-wal")
}

/// The shared-memory index SQLite keeps beside `db`.
pub fn shm_path(db: &Path) -> PathBuf {
    sibling(db, "-shm")
}

/// The directory that holds `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The directory mode that goes with a file mode: searchable by whoever may read.
pub fn dir_mode_for(file_mode: u32) -> u32 {
    let m = file_mode & 0o777;
    m | ((m & 0o444) >> 2) | 0o700
}

/// fsyncs a directory, so the entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot fsync directory", dir.display()))
}

/// Creates a new file for writing with exactly `mode`. Never an existing file and never
/// through a link (`O_CREAT | O_EXCL | O_NOFOLLOW`): whoever can write into the directory may
/// have planted a link at the name to make us overwrite (and chmod) a file of their choice,
/// so a name already taken is an error, not a target. The mode is set on the descriptor.
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("{}: cannot set mode", path.display()))?;
    Ok(f)
}

/// `create_new` at a name of ours that a crash (or someone else) may have left taken: the
/// entry there, a file or a link, is removed first, never followed. Should another one be
/// planted between the two steps, `create_new` fails and the caller tries again later.
pub fn create_replacing(path: &Path, mode: u32) -> Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot remove", path.display())),
    }
    create_new(path, mode)
}

/// Opens an existing file (for writing too, with `write`), never through a link.
pub fn open_existing(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes the file at `path` atomically with `write`, which fills the new file: a temp name
/// (`<path>.tmp`, created new: see `create_replacing`) with exactly `mode`, fsync, rename into
/// place (which replaces an entry at `path` without following it), fsync of the directory. On
/// error the temp file is removed and `path` is as it was. Returns what `write` returned and
/// the written file's metadata.
pub fn write_atomic_with<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File, &Path) -> Result<T>,
) -> Result<(T, fs::Metadata)> {
    let tmp = sibling(path, ".tmp");
    let result = (|| -> Result<(T, fs::Metadata)> {
        let mut f = create_replacing(&tmp, mode)?;
        let value = write(&mut f, &tmp)?;
        f.sync_all()
            .with_context(|| format!("{}: cannot fsync", tmp.display()))?;
        let meta = f
            .metadata()
            .with_context(|| format!("{}: cannot stat", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename into place", path.display()))?;
        fsync_dir(parent_dir(path))?;
        Ok((value, meta))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a small file atomically (see `write_atomic_with`).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_atomic_with(path, mode, |f, tmp| {
        f.write_all(data)
            .with_context(|| format!("{}: cannot write", tmp.display()))
    })
    .map(|_| ())
}

/// Who a created directory should belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Creates `dir` and its missing parents with exactly `mode`, each new one fsynced into its
/// parent so the tree survives a crash together with what is written into it, and (when we
/// run as root) given to `owner`.
pub fn create_dir_all(dir: &Path, mode: u32, owner: Option<Owner>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent, mode, owner)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot create directory", dir.display()))
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("{}: cannot set mode {mode:o}", dir.display()))?;
    if let Some(owner) = owner {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid));
        }
    }
    // A daemon may write into a directory it cannot read (mode 0733, say), and opening a
    // directory to fsync it needs read permission: there, the new entry's durability is the
    // file system's, as it was before this fsync existed.
    match fsync_dir(parent_dir(dir)) {
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::PermissionDenied) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Fills `buf` from `offset` with `pread`; fewer bytes only at the end of the file.
pub fn read_at_most(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads exactly `buf.len()` bytes at `offset` of the file at `path`.
pub fn read_at(path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    f.read_exact_at(buf, offset).with_context(|| {
        format!(
            "{}: cannot read {} bytes at {offset}",
            path.display(),
            buf.len()
        )
    })
}

/// The file's length, 0 when it does not exist (or cannot be read).
pub fn len_or_zero(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_and_dir_modes() {
        assert_eq!(
            wal_path(Path::new("/var/lib/app.db")),
            PathBuf::from("/var/lib/app.db-wal")
        );
        assert_eq!(shm_path(Path::new("app.db")), PathBuf::from("app.db-shm"));
        assert_eq!(parent_dir(Path::new("app.db")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/b.db")), Path::new("/a"));
        assert_eq!(dir_mode_for(0o600), 0o700);
        assert_eq!(dir_mode_for(0o640), 0o750);
        assert_eq!(dir_mode_for(0o644), 0o755);
    }

    #[test]
    fn atomic_write_replaces_whole_and_cleans_up_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation");
        write_atomic(&path, b"one\n", 0o640).unwrap();
        write_atomic(&path, b"two\n", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let err = write_atomic_with(&path, 0o640, |f, _| -> Result<()> {
            f.write_all(b"partial")?;
            anyhow::bail!("source failed")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("source failed"));
        assert_eq!(fs::read(&path).unwrap(), b"two\n");
        assert!(!sibling(&path, ".tmp").exists());
    }

    #[test]
    fn created_dirs_get_exactly_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep, 0o750, None).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let m = fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o750, "{d}");
        }
        create_dir_all(&deep, 0o700, None).unwrap();
    }
}
