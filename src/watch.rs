//! Wakes a db thread as soon as its `-wal` file is written (inotify), so a commit is captured
//! in milliseconds and an idle database costs no work. The monitor-interval tick stays as the
//! fallback: if inotify is unavailable this module just returns an error and polling goes on.
//!
//! Owns one inotify descriptor and one small thread per db. Events are coalesced into a
//! capacity-1 channel; it never reads the WAL or touches SQLite.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crossbeam_channel::Sender;

/// The shortest gap between two wake-ups: small against the lag target, large against the
/// cost of a tick.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

/// Watches the db's directory for writes to `<db>-wal` and sends a wake-up for each burst.
pub fn watch_wal(db_path: &Path, wake: Sender<()>) -> io::Result<()> {
    let dir = db_path.parent().unwrap_or_else(|| Path::new("/"));
    let mut wal_name = db_path.file_name().unwrap_or_default().as_bytes().to_vec();
    wal_name.extend_from_slice(b"-wal");
    let cdir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: plain syscalls on a descriptor we own; the buffer outlives each read.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
    if unsafe { libc::inotify_add_watch(fd, cdir.as_ptr(), mask) } < 0 {
        let err = io::Error::last_os_error();
        unsafe { libc::close(fd) };
        return Err(err);
    }
    std::thread::Builder::new()
        .name("wal-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                if events_name(&buf[..n as usize], &wal_name) {
                    match wake.try_send(()) {
                        Ok(()) | Err(crossbeam_channel::TrySendError::Full(())) => {}
                        // The db thread is gone: stop watching.
                        Err(crossbeam_channel::TrySendError::Disconnected(())) => break,
                    }
                    // An application writes the WAL page by page: one event each. Pausing
                    // lets the kernel merge a transaction's events into one, so we wake (and
                    // tick) at most every COALESCE instead of per page, which would slow the
                    // application's own writes.
                    std::thread::sleep(COALESCE);
                }
            }
            unsafe { libc::close(fd) };
        })?;
    Ok(())
}

/// True when any inotify event in `buf` names `name`.
fn events_name(buf: &[u8], name: &[u8]) -> bool {
    const HDR: usize = std::mem::size_of::<libc::inotify_event>();
    let mut off = 0;
    while off + HDR <= buf.len() {
        let len = u32::from_ne_bytes([buf[off + 12], buf[off + 13], buf[off + 14], buf[off + 15]])
            as usize;
        let start = off + HDR;
        let end = (start + len).min(buf.len());
        let raw = &buf[start..end];
        let ev_name = raw.split(|b| *b == 0).next().unwrap_or(&[]);
        if ev_name == name {
            return true;
        }
        off = start + len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wakes_on_wal_write_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let (tx, rx) = crossbeam_channel::bounded(1);
        watch_wal(&db, tx).unwrap();
        std::fs::write(dir.path().join("other-file"), b"x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        std::fs::write(dir.path().join("app.db-wal"), b"x").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    }
}
