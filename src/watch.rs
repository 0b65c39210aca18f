//! Wakes a db thread as soon as its `-wal` file is written (inotify), so a commit is captured
//! in milliseconds and an idle database costs no work. The monitor-interval tick stays as the
//! fallback and safety net: a db that cannot be watched is polled, and nothing here decides
//! what a tick does.
//!
//! One inotify descriptor and one small thread serve every database of the daemon (inotify
//! instances are limited per user, 128 by default, and a thread per db costs memory). Each
//! `-wal` file is watched itself, and its directory only for files created or renamed into
//! it, to follow a WAL that SQLite removed and created again: a watch of the whole directory
//! would report every write to every file there, including the db file during checkpoints
//! and the other databases of that directory. Events are coalesced into each db's capacity-1
//! channel; this module never reads the WAL or touches SQLite.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

use crate::sync::lock;

/// The shortest gap between two wake-ups: small against the lag target, large against the
/// cost of a tick.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

/// One watched database.
struct Entry {
    wal_path: CString,
    wal_name: Vec<u8>,
    dir_wd: i32,
    /// The watch of the current `-wal` file, or -1 while it does not exist.
    wal_wd: i32,
    wake: Sender<()>,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
}

/// The daemon's one inotify descriptor and its thread.
pub(crate) struct WalWatcher {
    fd: i32,
    /// Written to stop the thread (an eventfd: closing a descriptor does not wake a `read`).
    stop_fd: i32,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl WalWatcher {
    /// Opens the inotify descriptor and starts its thread; an error means polling only.
    pub(crate) fn start() -> io::Result<WalWatcher> {
        // SAFETY: plain syscalls on descriptors we own.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stop_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop_fd < 0 {
            let err = io::Error::last_os_error();
            unsafe { libc::close(fd) };
            return Err(err);
        }
        let state = Arc::new(Mutex::new(State::default()));
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("wal-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || run(fd, stop_fd, &thread_state));
        match thread {
            Ok(thread) => Ok(WalWatcher {
                fd,
                stop_fd,
                state,
                thread: Some(thread),
            }),
            Err(err) => {
                unsafe {
                    libc::close(fd);
                    libc::close(stop_fd);
                }
                Err(err)
            }
        }
    }

    /// Sends a wake-up on `wake` for each burst of writes to `<db>-wal`.
    pub(crate) fn watch(&self, db_path: &Path, wake: Sender<()>) -> io::Result<()> {
        let dir = db_path.parent().unwrap_or_else(|| Path::new("/"));
        let mut wal_name = db_path.file_name().unwrap_or_default().as_bytes().to_vec();
        wal_name.extend_from_slice(b"-wal");
        let nul = || io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte");
        let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(|_| nul())?;
        let mut wal_path = dir.as_os_str().as_bytes().to_vec();
        wal_path.push(b'/');
        wal_path.extend_from_slice(&wal_name);
        let wal_path = CString::new(wal_path).map_err(|_| nul())?;
        let mut state = lock(&self.state);
        // IN_MASK_ADD: the directory may hold other watched databases (same watch).
        // SAFETY: plain syscall; the path outlives it.
        let dir_wd = unsafe {
            libc::inotify_add_watch(
                self.fd,
                cdir.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MASK_ADD,
            )
        };
        if dir_wd < 0 {
            return Err(io::Error::last_os_error());
        }
        // The WAL may not exist yet (-1): its creation is seen through the directory watch.
        let wal_wd = add_file_watch(self.fd, &wal_path);
        state.entries.push(Entry {
            wal_path,
            wal_name,
            dir_wd,
            wal_wd,
            wake,
        });
        Ok(())
    }
}

impl Drop for WalWatcher {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.stop_fd, (&one as *const u64).cast(), 8) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        unsafe {
            libc::close(self.fd);
            libc::close(self.stop_fd);
        }
    }
}

fn add_file_watch(fd: i32, path: &CString) -> i32 {
    // SAFETY: plain syscall; the path outlives it.
    unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY | libc::IN_CLOSE_WRITE) }
}

/// The thread body: wait for events (or the stop eventfd), wake the dbs they concern, pause.
fn run(fd: i32, stop_fd: i32, state: &Mutex<State>) {
    // Room for a few hundred events per read: file events carry no name.
    let mut buf = [0u8; 8192];
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two descriptors we own, blocking until one is readable.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let mut woke = false;
        loop {
            // SAFETY: reads into our buffer, within its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // EAGAIN: drained (the descriptor is non-blocking).
                break;
            }
            woke |= dispatch(&buf[..n as usize], fd, &mut lock(state));
        }
        if woke {
            // An application writes the WAL page by page: one event each. Pausing lets the
            // kernel merge a transaction's events into one, so a db wakes (and ticks) at most
            // every COALESCE instead of per page, which would slow the application's writes.
            std::thread::sleep(COALESCE);
        }
    }
}

/// Applies one batch of events: wakes every db whose WAL was written or created, and watches
/// a newly created WAL. True if any db was woken.
fn dispatch(buf: &[u8], fd: i32, state: &mut State) -> bool {
    let mut woken = vec![false; state.entries.len()];
    for ev in events(buf) {
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            // Events were lost: every db may have been written.
            woken.iter_mut().for_each(|w| *w = true);
            continue;
        }
        for (i, e) in state.entries.iter_mut().enumerate() {
            if e.wal_wd >= 0 && ev.wd == e.wal_wd {
                if ev.mask & libc::IN_IGNORED != 0 {
                    // The file is gone and so is its watch.
                    e.wal_wd = -1;
                } else {
                    woken[i] = true;
                }
            } else if ev.wd == e.dir_wd
                && ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0
                && ev.name == e.wal_name.as_slice()
            {
                // A new WAL file (new inode): watch it; the old watch went with the old file.
                e.wal_wd = add_file_watch(fd, &e.wal_path);
                woken[i] = true;
            }
        }
    }
    let mut any = false;
    let mut gone = Vec::new();
    for (i, e) in state.entries.iter().enumerate() {
        if woken[i] {
            any = true;
            // A full channel already holds a wake-up.
            if let Err(TrySendError::Disconnected(())) = e.wake.try_send(()) {
                gone.push(i);
            }
        }
    }
    // A db thread that has stopped needs no more wake-ups.
    for i in gone.into_iter().rev() {
        state.entries.swap_remove(i);
    }
    any
}

struct Event<'a> {
    wd: i32,
    mask: u32,
    name: &'a [u8],
}

/// The events of one `read` of an inotify descriptor.
fn events(buf: &[u8]) -> impl Iterator<Item = Event<'_>> {
    const HDR: usize = std::mem::size_of::<libc::inotify_event>();
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + HDR > buf.len() {
            return None;
        }
        let word = |at: usize| {
            let b = &buf[off + at..off + at + 4];
            [b[0], b[1], b[2], b[3]]
        };
        let wd = i32::from_ne_bytes(word(0));
        let mask = u32::from_ne_bytes(word(4));
        let len = u32::from_ne_bytes(word(12)) as usize;
        let start = off + HDR;
        let end = (start + len).min(buf.len());
        let name = buf[start..end].split(|b| *b == 0).next().unwrap_or(&[]);
        off = start + len;
        Some(Event { wd, mask, name })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn drain(rx: &crossbeam_channel::Receiver<()>) {
        std::thread::sleep(Duration::from_millis(20));
        while rx.try_recv().is_ok() {}
    }

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    #[test]
    fn wakes_on_wal_writes_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let watcher = WalWatcher::start().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        watcher.watch(&db, tx).unwrap();
        std::fs::write(dir.path().join("other-file"), b"x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // Created, then written.
        std::fs::write(dir.path().join("app.db-wal"), b"x").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        drain(&rx);
        append(&dir.path().join("app.db-wal"), b"y");
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        // Other files in the directory, including the db file, never wake.
        drain(&rx);
        std::fs::write(&db, b"z").unwrap();
        append(&dir.path().join("other-file"), b"z");
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn follows_a_recreated_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let wal = dir.path().join("app.db-wal");
        std::fs::write(&wal, b"old").unwrap();
        let watcher = WalWatcher::start().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        watcher.watch(&db, tx).unwrap();
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"new").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        drain(&rx);
        append(&wal, b"more");
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn many_dbs_in_one_directory_wake_separately() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = WalWatcher::start().unwrap();
        let mut rxs = Vec::new();
        for i in 0..3 {
            let db = dir.path().join(format!("db{i}.db"));
            std::fs::write(dir.path().join(format!("db{i}.db-wal")), b"x").unwrap();
            let (tx, rx) = crossbeam_channel::bounded(1);
            watcher.watch(&db, tx).unwrap();
            rxs.push(rx);
        }
        rxs.iter().for_each(drain);
        append(&dir.path().join("db1.db-wal"), b"y");
        assert!(rxs[1].recv_timeout(Duration::from_secs(5)).is_ok());
        assert!(rxs[0].recv_timeout(Duration::from_millis(100)).is_err());
        assert!(rxs[2].try_recv().is_err());
        // A db created after the others (a new file in the shared directory watch).
        std::fs::write(dir.path().join("db2.db-wal.tmp"), b"z").unwrap();
        std::fs::rename(
            dir.path().join("db2.db-wal.tmp"),
            dir.path().join("db2.db-wal"),
        )
        .unwrap();
        assert!(rxs[2].recv_timeout(Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn stops_when_dropped() {
        let watcher = WalWatcher::start().unwrap();
        drop(watcher);
    }
}
