//! How this crate creates, writes and syncs files: one place for the rules every file we
//! write next to a database, in a file replica or in a restore's output directory follows.
//!
//! Durability: a new directory entry is fsynced into its parent; an object is written to a
//! temp name, fsynced, renamed into place and its directory fsynced, so a crash leaves a
//! whole file or none. Modes: a file gets exactly the mode asked for (the umask neither widens
//! nor narrows it, a leftover file does not keep its own), a directory the matching
//! `dir_mode_for`. A thin I/O edge: it knows nothing of SQLite, WAL contents or stores.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

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
    Dir::open(dir)
        .and_then(|d| d.fsync())
        .with_context(|| format!("{}: cannot fsync directory", dir.display()))
}

/// Creates a new file for writing with exactly `mode`. Never an existing file and never
/// through a link, neither at the name (`O_CREAT | O_EXCL | O_NOFOLLOW`) nor on the way to
/// it (the directory is reached as `Dir::open` does): whoever can write into a directory may
/// have planted a link to make us overwrite (and chmod) a file of their choice, or create one
/// where they could not. The mode is set on the descriptor and, as root, the file is given to
/// the directory's owner (what we write there is theirs to read: the meta dir is the db
/// owner's, a replica dir its owner's), before anything is written.
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    let (dir, name) = split(path).with_context(|| format!("{}: cannot create", path.display()))?;
    dir.create_file(&name, mode)
        .with_context(|| format!("{}: cannot create", path.display()))
}

/// `create_new` at a name of ours that a crash (or someone else) may have left taken: the
/// entry there, a file or a link, is removed first, never followed. Should another one be
/// planted between the two steps, `create_new` fails and the caller tries again later.
pub fn create_replacing(path: &Path, mode: u32) -> Result<File> {
    let (dir, name) = split(path).with_context(|| format!("{}: cannot create", path.display()))?;
    replace_in(&dir, &name, mode).with_context(|| format!("{}: cannot create", path.display()))
}

fn replace_in(dir: &Dir, name: &CStr, mode: u32) -> io::Result<File> {
    match dir.unlink(name, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    dir.create_file(name, mode)
}

/// Opens an existing regular file (for writing too, with `write`), never through a link on
/// the way or at the name, and never one with other hard links (on a host without
/// `fs.protected_hardlinks` someone could link a file of root's into a directory of theirs).
/// As root, a file whose owner is not its directory's (left by an older version, which kept
/// them root's) is given to the directory's owner, so a later run as that user can open it.
pub fn open_existing(path: &Path, write: bool) -> io::Result<File> {
    let (dir, name) = split(path)?;
    let access = if write { libc::O_RDWR } else { libc::O_RDONLY };
    let fd = open_at(
        dir.fd.as_raw_fd(),
        &name,
        access | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )?;
    let st = stat_fd(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        ));
    }
    if st.st_nlink > 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: has {} hard links, and litestream never creates one: refusing to open it (remove it)",
                path.display(),
                st.st_nlink
            ),
        ));
    }
    if (st.st_uid, st.st_gid) != (dir.st.st_uid, dir.st.st_gid) {
        give(fd.as_raw_fd(), dir.owner());
    }
    Ok(File::from(fd))
}

/// Opens someone else's existing regular file to read it (a key file the configuration
/// names), never through a planted link on the way or at the name, and never changing it
/// (unlike [`open_existing`], which gives our own files back to their directory's owner).
pub fn open_read_only(path: &Path) -> io::Result<File> {
    let (dir, name) = split(path)?;
    let fd = open_at(
        dir.fd.as_raw_fd(),
        &name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )?;
    let st = stat_fd(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(File::from(fd))
}

/// Writes the file at `path` atomically with `write`, which fills the new file: a temp name
/// (`<path>.tmp`, created new: see `create_replacing`) with exactly `mode`, fsync, rename into
/// place (which replaces an entry at `path` without following it), fsync of the directory,
/// all in the one directory descriptor reached once. On error the temp file is removed and
/// `path` is as it was. Returns what `write` returned and the written file's metadata.
pub fn write_atomic_with<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File, &Path) -> Result<T>,
) -> Result<(T, fs::Metadata)> {
    let tmp = sibling(path, ".tmp");
    let (dir, name) = split(path).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let mut tmp_name = name.as_bytes().to_vec();
    tmp_name.extend_from_slice(b".tmp");
    let tmp_name = CString::new(tmp_name).map_err(io::Error::other)?;
    let result = (|| -> Result<(T, fs::Metadata)> {
        let mut f = replace_in(&dir, &tmp_name, mode)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let value = write(&mut f, &tmp)?;
        f.sync_all()
            .with_context(|| format!("{}: cannot fsync", tmp.display()))?;
        let meta = f
            .metadata()
            .with_context(|| format!("{}: cannot stat", tmp.display()))?;
        drop(f);
        // SAFETY: both names are NUL-terminated; renameat never follows a link.
        cvt(unsafe {
            libc::renameat(
                dir.fd.as_raw_fd(),
                tmp_name.as_ptr(),
                dir.fd.as_raw_fd(),
                name.as_ptr(),
            )
        })
        .with_context(|| format!("{}: cannot rename into place", path.display()))?;
        dir.fsync()
            .with_context(|| format!("{}: cannot fsync directory", dir.path.display()))?;
        Ok((value, meta))
    })();
    if result.is_err() {
        let _ = dir.unlink(&tmp_name, 0);
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
/// run as root) given to `owner`, or with `None` to its parent's owner. Walked as `Dir::open`
/// does: a link planted on the way is refused, never followed.
pub fn create_dir_all(dir: &Path, mode: u32, owner: Option<Owner>) -> Result<()> {
    Dir::walk(dir, Some((mode, owner)))
        .map(|_| ())
        .with_context(|| format!("{}: cannot create directory", dir.display()))
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

// ---------------------------------------------------------------------------------------------
// Reaching a directory without following a planted link
// ---------------------------------------------------------------------------------------------
//
// `O_NOFOLLOW` guards only a path's last component: whoever owns a directory on the way (the
// db's owner owns the meta dir; a shared replica dir has its own) can swap a subdirectory for
// a link to /etc and have a root daemon create, remove or list there. So every path we write
// under is walked from `/` one component at a time with `openat(O_DIRECTORY | O_NOFOLLOW)` on
// the directory descriptor reached so far, and the final operation (create, rename, unlink,
// list) is an `*at` call on that descriptor: nothing is looked up by path twice. A symbolic
// link on the way is followed only where no one but root or us could have put it (its
// directory is owned by root or us and writable by no group or other, or it is sticky and
// the link is root's or ours); anywhere else it is refused with the path and the fix.

/// Most links followed in one walk, as the kernel's own limit.
const MAX_LINKS: usize = 40;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is NUL-terminated; the returned descriptor is owned below.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor we just opened and nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn stat_fd(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter; fstat fills it or fails.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstat(fd, &mut st))?;
        Ok(st)
    }
}

fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: as `stat_fd`; `name` is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstatat(
            dir,
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ))?;
        Ok(st)
    }
}

fn read_link_at(dir: RawFd, name: &CStr) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its length; readlinkat writes at most that many bytes.
    let n = unsafe {
        libc::readlinkat(
            dir,
            name.as_ptr(),
            buf.as_mut_ptr().cast::<libc::c_char>(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// A directory, open: its descriptor (read-only, or `O_PATH` where we may only search it),
/// its `fstat` and the path it was reached by (for messages only, never looked up again).
pub struct Dir {
    fd: OwnedFd,
    st: libc::stat,
    path: PathBuf,
}

fn is_link(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Opens the subdirectory `name` of `dir`, never through a link (`O_PATH` when we may search
/// it but not read it).
fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    match open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => open_at(
            dir,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ),
        r => r,
    }
}

/// True when a link in the directory `dir_st` can only have been put there by root or us.
fn may_follow(dir_st: &libc::stat, link_st: &libc::stat) -> bool {
    let ours = |uid: u32| uid == 0 || uid == euid();
    (ours(dir_st.st_uid) && dir_st.st_mode & 0o022 == 0)
        || (dir_st.st_mode & libc::S_ISVTX != 0 && ours(link_st.st_uid))
}

/// fsyncs a directory descriptor; one we may not read (`O_PATH`, or a mode like 0733) leaves
/// the new entry's durability to the file system.
fn fsync_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor we own has no memory effects.
    match cvt(unsafe { libc::fsync(fd) }) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF) | Some(libc::EACCES)) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Gives a new entry (by its descriptor) to `owner`, as root only; a file system that cannot
/// (some network mounts) leaves it root's.
fn give(fd: RawFd, owner: Owner) {
    if euid() == 0 {
        // SAFETY: fchown on a descriptor we own has no memory effects.
        let _ = unsafe { libc::fchown(fd, owner.uid, owner.gid) };
    }
}

impl Dir {
    /// Walks `path` from `/` (a relative one from the working directory), one component at
    /// a time, following links only where `may_follow` allows; with `create`, missing
    /// components are made with that mode and owner (the parent's when `None`, as root).
    fn walk(path: &Path, create: Option<(u32, Option<Owner>)>) -> io::Result<Dir> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        let slash = c"/";
        let open_root = || open_at(libc::AT_FDCWD, slash, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        let mut fd = open_root()?;
        let mut st = stat_fd(fd.as_raw_fd())?;
        let mut shown = PathBuf::from("/");
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&abs, &mut pending);
        let mut links = 0;
        while let Some(comp) = pending.pop() {
            let name = c_name(&comp)?;
            let opened = open_dir_at(fd.as_raw_fd(), &name);
            let next = match opened {
                Ok(next) => next,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                    let lst = stat_at(fd.as_raw_fd(), &name)?;
                    if !is_link(&lst) {
                        return Err(e);
                    }
                    let link = shown.join(&comp);
                    if !may_follow(&st, &lst) {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "{} is a symbolic link in {}, a directory uid {} can write (mode {:o}): litestream never follows links there; name the real directory instead (or remove the link)",
                                link.display(),
                                shown.display(),
                                st.st_uid,
                                st.st_mode & 0o7777
                            ),
                        ));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = read_link_at(fd.as_raw_fd(), &name)?;
                    if target.is_absolute() {
                        fd = open_root()?;
                        st = stat_fd(fd.as_raw_fd())?;
                        shown = PathBuf::from("/");
                    }
                    push_components(&target, &mut pending);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let Some((mode, owner)) = create else {
                        return Err(e);
                    };
                    refuse_world_writable(&st, &shown)?;
                    // SAFETY: `name` is NUL-terminated; mkdirat has no memory effects.
                    match cvt(unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), mode) }) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            pending.push(comp);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    let new = open_dir_at(fd.as_raw_fd(), &name)?;
                    // SAFETY: fchmod on a descriptor we own (fails harmlessly on O_PATH).
                    let _ = unsafe { libc::fchmod(new.as_raw_fd(), mode) };
                    give(
                        new.as_raw_fd(),
                        owner.unwrap_or(Owner {
                            uid: st.st_uid,
                            gid: st.st_gid,
                        }),
                    );
                    fsync_fd(fd.as_raw_fd())?;
                    new
                }
                Err(e) => return Err(e),
            };
            fd = next;
            st = stat_fd(fd.as_raw_fd())?;
            if comp == ".." {
                shown.pop();
            } else {
                shown.push(&comp);
            }
        }
        Ok(Dir { fd, st, path: abs })
    }

    /// Opens the directory at `path` (see `walk`).
    pub fn open(path: &Path) -> io::Result<Dir> {
        Dir::walk(path, None)
    }

    /// The directory's owner.
    pub fn owner(&self) -> Owner {
        Owner {
            uid: self.st.st_uid,
            gid: self.st.st_gid,
        }
    }

    /// The directory's mode bits (with setuid, setgid and sticky).
    pub fn mode(&self) -> u32 {
        self.st.st_mode & 0o7777
    }

    /// The path it was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file `name` in it, new, with exactly `mode`, owned like the directory
    /// (as root): see `create_new`.
    fn create_file(&self, name: &CStr, mode: u32) -> io::Result<File> {
        refuse_world_writable(&self.st, &self.path)?;
        let fd = open_at(
            self.fd.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?;
        let f = File::from(fd);
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        give(f.as_raw_fd(), self.owner());
        Ok(f)
    }

    /// fsyncs it (see `fsync_fd`).
    fn fsync(&self) -> io::Result<()> {
        fsync_fd(self.fd.as_raw_fd())
    }

    fn unlink(&self, name: &CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated; unlinkat never follows a link.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
    }

    /// The names in it (never `.` or `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let reopened = open_at(
            self.fd.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        // SAFETY: fdopendir takes ownership of the descriptor (released from `reopened`);
        // readdir's entries are valid until the next readdir; closedir closes it.
        unsafe {
            let dirp = libc::fdopendir(reopened.into_raw_fd());
            if dirp.is_null() {
                return Err(io::Error::last_os_error());
            }
            let mut out = Vec::new();
            loop {
                *libc::__errno_location() = 0;
                let ent = libc::readdir(dirp);
                if ent.is_null() {
                    let e = io::Error::last_os_error();
                    libc::closedir(dirp);
                    if e.raw_os_error().unwrap_or(0) != 0 {
                        return Err(e);
                    }
                    return Ok(out);
                }
                let name = CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes();
                if name != b"." && name != b".." {
                    out.push(OsString::from_vec(name.to_vec()));
                }
            }
        }
    }

    /// `lstat` of an entry.
    fn entry_stat(&self, name: &CStr) -> io::Result<libc::stat> {
        stat_at(self.fd.as_raw_fd(), name)
    }

    /// Removes the entry `name`, a directory with everything in it; links are removed, never
    /// followed.
    fn remove_tree(&self, name: &CStr) -> io::Result<()> {
        match self.unlink(name, 0) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {}
            r => return r,
        }
        let sub = Dir {
            fd: open_dir_at(self.fd.as_raw_fd(), name)?,
            st: self.st,
            path: self.path.join(OsStr::from_bytes(name.to_bytes())),
        };
        for n in sub.names()? {
            match sub.remove_tree(&c_name(&n)?) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        self.unlink(name, libc::AT_REMOVEDIR)
    }
}

/// Pushes `path`'s components onto `pending` so that the first is popped first (`.` dropped,
/// `..` kept: on a descriptor it is the real parent, whatever links led there).
fn push_components(path: &Path, pending: &mut Vec<OsString>) {
    let comps: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    pending.extend(comps.into_iter().rev());
}

/// A directory anyone may write without the sticky bit lets anyone replace what we put there.
fn refuse_world_writable(st: &libc::stat, path: &Path) -> io::Result<()> {
    if st.st_mode & 0o002 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: directory is writable by every user (mode {:o}) without the sticky bit, so anyone could replace what litestream writes there: `chmod o-w {}` (or `chmod +t`)",
                path.display(),
                st.st_mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The open parent directory of `path` and its last component.
fn split(path: &Path) -> io::Result<(Dir, CString)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    Ok((Dir::open(parent_dir(path))?, c_name(name)?))
}

/// Checks a directory we are about to write into but may not have created: owned by root,
/// by us or by `owner` (the db's), and not writable by everyone without the sticky bit.
pub fn check_dir(path: &Path, owner: Option<u32>) -> Result<()> {
    let dir = Dir::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    refuse_world_writable(&dir.st, path)?;
    let uid = dir.st.st_uid;
    if uid != 0 && uid != euid() && Some(uid) != owner {
        bail!(
            "{}: directory belongs to uid {uid}, not to root, litestream's user (uid {}) or the database's owner: `chown` it to one of them",
            path.display(),
            euid()
        );
    }
    Ok(())
}

/// The names in the directory `path`, reached as `Dir::open` does.
pub fn read_dir_names(path: &Path) -> io::Result<Vec<OsString>> {
    Dir::open(path)?.names()
}

/// The entry at `path` is a directory (not a link to one), reached as `Dir::open` does.
pub fn is_real_dir(path: &Path) -> bool {
    split(path)
        .and_then(|(d, n)| d.entry_stat(&n))
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Removes the file (or link) at `path`, never following a link on the way.
pub fn remove_file(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    dir.unlink(&name, 0)
}

/// Removes the directory at `path` with everything in it, never following a link (neither on
/// the way nor inside).
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    dir.remove_tree(&name)
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
