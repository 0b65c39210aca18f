//! Shared harness for the integration tests: the real `litestream` binary, real SQLite files,
//! real replica trees in a per-test temp dir.
//!
//! - [`Env`]: one temp dir per test (db, replica, config), and on panic it prints every daemon
//!   log it started so a failing test explains itself.
//! - [`Daemon`]: a `litestream replicate` child (config or ad-hoc form), stopped with SIGTERM
//!   (waited with a deadline) or SIGKILL; killed on drop whatever happens.
//! - [`run`]: a one-shot command (restore, bad configs …) with a deadline, its exit code, stdout,
//!   stderr and peak RSS (VmHWM polled from `/proc/PID/status`).
//! - App helpers: [`open_app`] (WAL, busy_timeout 5 s), [`Rng`] (deterministic blobs),
//!   [`Writer`] (a thread committing sequential ids).
//! - Checks: [`table_digest`], [`integrity_check`], [`id_summary`], replica tree listing.
//! - [`wait_until`]: polling with a generous deadline instead of timing assertions.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_litestream");

/// Generous deadline for "eventually" conditions (replication of small writes, restarts).
pub const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Test environment
// ---------------------------------------------------------------------------------------------

/// Config knobs written into `litestream.yml`; defaults keep tests fast.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub monitor_interval: &'static str,
    pub checkpoint_interval: &'static str,
    pub min_checkpoint_page_count: u32,
    pub sync_interval: &'static str,
    /// `logging.level`, when set.
    pub log_level: Option<&'static str>,
    /// Extra raw YAML lines under the db entry (indented by the caller with 4 spaces).
    pub extra_db: String,
    /// `addr:` (metrics listen address), when set.
    pub addr: Option<String>,
    /// `exec:` (child command line), when set.
    pub exec: Option<String>,
    /// Extra raw top-level YAML lines (unindented), e.g. `health-max-lag: 1s`.
    pub extra_global: String,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            monitor_interval: "100ms",
            checkpoint_interval: "1m",
            min_checkpoint_page_count: 1000,
            sync_interval: "100ms",
            log_level: None,
            extra_db: String::new(),
            addr: None,
            exec: None,
            extra_global: String::new(),
        }
    }
}

/// One test's world: a temp dir holding `app.db`, `replica/`, `litestream.yml` and logs.
pub struct Env {
    /// Removed on drop, except when the test failed: then it is kept for a post-mortem.
    tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub db: PathBuf,
    pub replica: PathBuf,
    pub config: PathBuf,
    logs: Arc<Mutex<Vec<PathBuf>>>,
    counter: AtomicU64,
}

impl Env {
    pub fn new(name: &str) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("litestream-it-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().canonicalize().expect("canonicalize temp dir");
        Env {
            db: root.join("app.db"),
            replica: root.join("replica"),
            config: root.join("litestream.yml"),
            root,
            tmp: Some(tmp),
            logs: Arc::new(Mutex::new(Vec::new())),
            counter: AtomicU64::new(0),
        }
    }

    /// `file://` URL of the replica dir.
    pub fn replica_url(&self) -> String {
        format!("file://{}", self.replica.display())
    }

    /// A path under the temp dir that does not exist yet (`<stem>-<n>.db`).
    pub fn fresh(&self, stem: &str) -> PathBuf {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let p = self.root.join(format!("{stem}-{n}.db"));
            if !p.exists() {
                return p;
            }
        }
    }

    /// Writes `litestream.yml` for `self.db` → `self.replica` with the given knobs.
    pub fn write_config(&self, cfg: &Cfg) -> PathBuf {
        let mut y = String::new();
        if let Some(level) = cfg.log_level {
            y.push_str(&format!("logging:\n  level: {level}\n"));
        }
        if let Some(addr) = &cfg.addr {
            y.push_str(&format!("addr: \"{addr}\"\n"));
        }
        if let Some(exec) = &cfg.exec {
            y.push_str(&format!("exec: {exec:?}\n"));
        }
        y.push_str(&cfg.extra_global);
        y.push_str(&format!(
            "dbs:\n  - path: \"{db}\"\n    monitor-interval: {mi}\n    checkpoint-interval: {ci}\n    min-checkpoint-page-count: {minp}\n{extra}    replicas:\n      - type: file\n        path: \"{rep}\"\n        sync-interval: {si}\n",
            db = self.db.display(),
            mi = cfg.monitor_interval,
            ci = cfg.checkpoint_interval,
            minp = cfg.min_checkpoint_page_count,
            extra = cfg.extra_db,
            rep = self.replica.display(),
            si = cfg.sync_interval,
        ));
        fs::write(&self.config, y).expect("write config");
        self.config.clone()
    }

    /// Registers a log file so it is printed if the test panics.
    fn register_log(&self, label: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let p = self.root.join(format!("{label}-{n}.log"));
        self.logs.lock().unwrap().push(p.clone());
        p
    }

    /// `litestream replicate -config <self.config>`.
    pub fn start(&self, label: &str) -> Daemon {
        let args: Vec<OsString> = vec![
            "replicate".into(),
            "-config".into(),
            self.config.clone().into(),
        ];
        self.spawn_daemon(label, args)
    }

    /// `litestream replicate <self.db> <self.replica_url()>`.
    pub fn start_adhoc(&self, label: &str) -> Daemon {
        let args: Vec<OsString> = vec![
            "replicate".into(),
            self.db.clone().into(),
            self.replica_url().into(),
        ];
        self.spawn_daemon(label, args)
    }

    pub fn spawn_daemon(&self, label: &str, args: Vec<OsString>) -> Daemon {
        let log = self.register_log(label);
        Daemon::spawn(&self.root, args, log)
    }

    /// Runs the binary with `args` (deadline 120 s) from the temp dir.
    pub fn run(&self, args: &[&str]) -> Out {
        run(&self.root, args, Duration::from_secs(120))
    }

    /// `restore -config CFG -o <fresh> <db>`, whatever the outcome.
    pub fn try_restore_config(&self) -> (Out, PathBuf) {
        let out = self.fresh("restored-config");
        let o = self.run(&[
            "restore",
            "-config",
            self.config.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            self.db.to_str().unwrap(),
        ]);
        (o, out)
    }

    /// `restore -config CFG -o <fresh> <db>`; panics unless it succeeds. Returns the output path.
    pub fn restore_config(&self) -> PathBuf {
        let (o, out) = self.try_restore_config();
        o.assert_ok("restore -config");
        assert!(
            out.exists(),
            "restore exited 0 but {} does not exist",
            out.display()
        );
        out
    }

    /// `restore -o <fresh> [extra…] file:///replica`; panics unless it succeeds.
    pub fn restore_url(&self, extra: &[&str]) -> PathBuf {
        let (o, out) = self.try_restore_url(extra);
        o.assert_ok(&format!("restore {extra:?} {}", self.replica_url()));
        assert!(
            out.exists(),
            "restore exited 0 but {} does not exist",
            out.display()
        );
        out
    }

    /// `restore -o <fresh> [extra…] file:///replica`, whatever the outcome.
    pub fn try_restore_url(&self, extra: &[&str]) -> (Out, PathBuf) {
        let out = self.fresh("restored");
        let url = self.replica_url();
        let mut args = vec!["restore", "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(&url);
        (self.run(&args), out)
    }

    /// Polls restores of the replica until `pred(restored_path)` holds (deadline `timeout`).
    /// Returns the last successful restore path, or panics with the last failure.
    pub fn wait_restore(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Path) -> bool,
    ) -> PathBuf {
        let start = Instant::now();
        loop {
            let (o, out) = self.try_restore_url(&[]);
            let last;
            if o.code == Some(0) && out.exists() {
                if pred(&out) {
                    return out;
                }
                last = format!("restore succeeded but condition not met: {what}");
                remove_db_files(&out);
            } else {
                last = format!(
                    "restore failed: code={:?} stderr={}",
                    o.code,
                    o.stderr.trim()
                );
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for: {what}; last: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(tmp) = self.tmp.take() {
                let _ = tmp.keep();
            }
            eprintln!(
                "==== test failed; temp dir {} (kept) ====",
                self.root.display()
            );
            for log in self.logs.lock().unwrap().iter() {
                let text =
                    fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read: {e})"));
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(200);
                eprintln!(
                    "---- {} (last {} of {} lines) ----",
                    log.display(),
                    lines.len() - from,
                    lines.len()
                );
                for l in &lines[from..] {
                    eprintln!("{l}");
                }
            }
            eprintln!("==== end of logs ====");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

/// A running `litestream replicate` child. Killed (SIGKILL) and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    pub log: PathBuf,
    peak_kb: u64,
}

/// How a daemon ended.
#[derive(Debug)]
pub struct Stopped {
    /// Exit code; `None` when it died from a signal.
    pub code: Option<i32>,
    /// Highest VmHWM seen (KiB) while it ran.
    pub peak_kb: u64,
    pub log: String,
}

impl Daemon {
    fn spawn(cwd: &Path, args: Vec<OsString>, log: PathBuf) -> Daemon {
        let f = fs::File::create(&log).expect("create log file");
        let f2 = f.try_clone().expect("clone log file");
        let child = Command::new(BIN)
            .args(&args)
            .current_dir(cwd)
            .env_remove("LITESTREAM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .expect("spawn litestream replicate");
        let pid = child.id();
        Daemon {
            child: Some(child),
            pid,
            log,
            peak_kb: 0,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Current VmHWM in KiB (and remembers the highest value seen).
    pub fn sample_hwm(&mut self) -> Option<u64> {
        let v = vm_hwm_kb(self.pid);
        if let Some(v) = v {
            self.peak_kb = self.peak_kb.max(v);
        }
        v
    }

    pub fn peak_kb(&self) -> u64 {
        self.peak_kb
    }

    /// Waits until the log contains `needle`; panics if the daemon exits or the deadline passes.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if !self.alive() {
                panic!("daemon exited before logging {needle:?}; log:\n{text}");
            }
            if start.elapsed() > timeout {
                panic!("daemon did not log {needle:?} within {timeout:?}; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics if the daemon has exited (with its log).
    pub fn assert_alive(&mut self) {
        if !self.alive() {
            let st = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "daemon exited unexpectedly ({st:?}); log:\n{}",
                self.log_text()
            );
        }
    }

    /// SIGTERM, then waits up to 60 s for the exit (sampling VmHWM meanwhile). Panics (after a
    /// SIGKILL) if it does not exit in time.
    pub fn stop(mut self) -> Stopped {
        let mut child = self.child.take().expect("daemon already reaped");
        self.sample_hwm();
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            self.sample_hwm();
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not exit within 60 s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Stopped {
            code: status.code(),
            peak_kb: self.peak_kb,
            log: self.log_text(),
        }
    }

    /// SIGTERM and asserts a clean exit 0.
    pub fn stop_ok(self) -> Stopped {
        let s = self.stop();
        assert_eq!(
            s.code,
            Some(0),
            "daemon did not exit 0 after SIGTERM; log:\n{}",
            s.log
        );
        s
    }

    /// Sends `sig` to the daemon (it keeps running unless the signal ends it).
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }

    /// Waits (without signalling) up to `timeout` for the daemon to exit on its own, e.g.
    /// when its `-exec` child ends. Panics (after a SIGKILL) if it does not.
    pub fn wait_exit(mut self, timeout: Duration) -> Stopped {
        let mut child = self.child.take().expect("daemon already reaped");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            self.sample_hwm();
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not exit on its own within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Stopped {
            code: status.code(),
            peak_kb: self.peak_kb,
            log: self.log_text(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------------------------

/// Result of a one-shot command.
#[derive(Debug)]
pub struct Out {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Highest VmHWM (KiB) observed by polling `/proc/PID/status` every millisecond or so.
    pub peak_kb: u64,
}

impl Out {
    pub fn assert_ok(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: expected exit 0\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    pub fn assert_fails(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(1),
            "{what}: expected exit 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs the binary with `args` in `cwd`; kills it and panics after `timeout`.
pub fn run(cwd: &Path, args: &[&str], timeout: Duration) -> Out {
    run_env(cwd, args, &[], timeout)
}

/// [`run`] with extra environment variables (e.g. S3 credentials).
pub fn run_env(cwd: &Path, args: &[&str], vars: &[(&str, &str)], timeout: Duration) -> Out {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(vars.iter().copied())
        .current_dir(cwd)
        .env_remove("LITESTREAM_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn litestream");
    let guard = KillOnDrop(child.id());
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let pid = child.id();
    let start = Instant::now();
    let mut peak = 0u64;
    let status = loop {
        if let Some(v) = vm_hwm_kb(pid) {
            peak = peak.max(v);
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            std::mem::forget(guard);
            panic!("litestream {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    std::mem::forget(guard);
    let stdout = String::from_utf8_lossy(&t1.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t2.join().unwrap()).into_owned();
    Out {
        code: status.code(),
        stdout,
        stderr,
        peak_kb: peak,
    }
}

/// SIGKILLs a pid on drop (used while a child is unreaped and a panic may unwind).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Where the prerequisites script puts the tools it takes out of Debian packages without
/// installing them (promtool, systemd-analyze): searched before PATH.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin")
}

/// `program` in [`tools_dir`], else the first executable of that name on PATH.
pub fn find_tool(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(tools_dir())
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// [`find_tool`], or `None` (with a SKIP line) when the program is missing outside CI. Under
/// CI a missing tool fails the test: the prerequisites script provides it.
pub fn require_tool(program: &str) -> Option<PathBuf> {
    let found = find_tool(program);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} missing under CI (looked in {} and on PATH); run scripts/install-test-prereqs.sh",
            tools_dir().display()
        );
        eprintln!(
            "SKIP: {program} not found in {} or on PATH (scripts/install-test-prereqs.sh provides it)",
            tools_dir().display()
        );
    }
    found
}

/// Runs `program args` (found by [`require_tool`]) with `input` on stdin and returns its
/// output; `None` (with a SKIP line) when the program is missing outside CI.
pub fn pipe_through_tool(
    program: &str,
    args: &[&str],
    input: &[u8],
) -> Option<std::process::Output> {
    use std::io::Write;
    let path = require_tool(program)?;
    let mut child = Command::new(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    child.stdin.take().unwrap().write_all(input).unwrap();
    Some(child.wait_with_output().unwrap())
}

/// VmHWM (peak resident set, KiB) of a live process; `None` once it has exited.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Application side
// ---------------------------------------------------------------------------------------------

/// An application connection: WAL mode, busy_timeout 5 s.
pub fn open_app(db: &Path) -> Connection {
    let c = Connection::open(db).expect("open app db");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    c
}

/// Creates the db with `page_size` and the standard test table
/// `t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, h INTEGER NOT NULL, b BLOB)`.
pub fn create_app_db(db: &Path, page_size: u32) -> Connection {
    let c = Connection::open(db).expect("create app db");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch(&format!("PRAGMA page_size={page_size};"))
        .unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, h INTEGER NOT NULL, b BLOB);")
        .unwrap();
    c
}

/// Runs `f` inside `BEGIN IMMEDIATE … COMMIT` (immediate: no SQLITE_BUSY_SNAPSHOT when the
/// daemon writes its own helper row between our read and our write).
pub fn tx<T>(c: &Connection, f: impl FnOnce(&Connection) -> T) -> T {
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    let v = f(c);
    c.execute_batch("COMMIT").unwrap();
    v
}

/// Inserts row `id` with a deterministic blob of `len` bytes (seeded by `id`).
pub fn insert_row(c: &Connection, id: i64, len: usize) {
    let b = Rng::new(id as u64).bytes(len);
    let h = hash_bytes(&b) as i64;
    c.execute(
        "INSERT INTO t (id, n, h, b) VALUES (?1, ?2, ?3, ?4)",
        params![id, 0i64, h, b],
    )
    .unwrap();
}

/// Deterministic PRNG (splitmix64) for blob contents.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// A stable 64-bit hash of bytes (word-wise FNV-style mix; fast enough in debug builds).
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (b.len() as u64);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &x in chunks.remainder() {
        h = (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A thread committing rows with sequential ids 1, 2, 3 … (one row, small blob, per
/// transaction) until stopped. `committed()` is the highest id whose COMMIT returned.
pub struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Writer {
    /// Starts writing into `db` (table `t` must exist), pausing `pause` between commits.
    pub fn start(db: &Path, first_id: u64, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(first_id - 1));
        let (s, cm) = (stop.clone(), committed.clone());
        let db = db.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<(), String> {
            let c = Connection::open(&db).map_err(|e| e.to_string())?;
            c.busy_timeout(Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let mut id = first_id;
            while !s.load(Ordering::Relaxed) {
                let b = Rng::new(id).bytes(200 + (id as usize % 1800));
                let h = hash_bytes(&b) as i64;
                let mut attempts = 0;
                loop {
                    match c.execute(
                        "INSERT INTO t (id, n, h, b) VALUES (?1, ?2, ?3, ?4)",
                        params![id as i64, 0i64, h, &b],
                    ) {
                        Ok(_) => break,
                        Err(e) if attempts < 5 && e.to_string().contains("locked") => {
                            attempts += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => return Err(format!("insert id {id}: {e}")),
                    }
                }
                cm.store(id, Ordering::SeqCst);
                id += 1;
                std::thread::sleep(pause);
            }
            Ok(())
        });
        Writer {
            stop,
            committed,
            handle: Some(handle),
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Stops the thread and returns the last committed id; panics if the writer failed.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let r = self
            .handle
            .take()
            .unwrap()
            .join()
            .expect("writer thread panicked");
        if let Err(e) = r {
            panic!("writer failed: {e}");
        }
        self.committed()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks on databases
// ---------------------------------------------------------------------------------------------

/// Opens an existing db file (never creates one).
pub fn open_existing(path: &Path) -> Connection {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// `PRAGMA integrity_check` rows joined by newlines (`"ok"` when healthy).
pub fn integrity_check(path: &Path) -> String {
    let c = open_existing(path);
    let mut st = c.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    rows.join("\n")
}

pub fn assert_integrity_ok(path: &Path) {
    let r = integrity_check(path);
    assert_eq!(r, "ok", "integrity_check of {} failed: {r}", path.display());
}

/// Row count and a digest of every column of every row of `table`, in rowid order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub rows: u64,
    pub hash: u64,
}

pub fn table_digest(path: &Path, table: &str) -> Digest {
    let c = open_existing(path);
    digest_conn(&c, table)
}

pub fn digest_conn(c: &Connection, table: &str) -> Digest {
    use rusqlite::types::ValueRef;
    let mut st = c
        .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
        .unwrap();
    let ncol = st.column_count();
    let mut rows = st.query([]).unwrap();
    let mut d = Digest {
        rows: 0,
        hash: 0x84222325,
    };
    while let Some(r) = rows.next().unwrap() {
        d.rows += 1;
        for i in 0..ncol {
            let h = match r.get_ref(i).unwrap() {
                ValueRef::Null => 1,
                ValueRef::Integer(v) => hash_bytes(&v.to_le_bytes()) ^ 2,
                ValueRef::Real(v) => hash_bytes(&v.to_le_bytes()) ^ 3,
                ValueRef::Text(t) => hash_bytes(t) ^ 4,
                ValueRef::Blob(b) => hash_bytes(b) ^ 5,
            };
            d.hash = (d.hash ^ h)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(17);
        }
    }
    d
}

/// `(id, n, length(b), h)` of every row of `t`, by id: a readable dump for assertion diffs.
pub fn row_summary(path: &Path) -> Vec<(i64, i64, i64, i64)> {
    let c = open_existing(path);
    let mut st = c
        .prepare("SELECT id, n, coalesce(length(b), -1), h FROM t ORDER BY id")
        .unwrap();
    let v = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    v
}

/// `(count, min id, max id)` of table `t`.
pub fn id_summary(path: &Path) -> (i64, i64, i64) {
    let c = open_existing(path);
    c.query_row(
        "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// Every blob in `t` hashes to its stored `h` (content really survived, not just the row).
pub fn assert_blobs_match_hash(path: &Path) {
    let c = open_existing(path);
    let mut st = c.prepare("SELECT id, h, b FROM t ORDER BY id").unwrap();
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let h: i64 = r.get(1).unwrap();
        let b = r.get_ref(2).unwrap().as_blob().unwrap();
        assert_eq!(
            hash_bytes(b) as i64,
            h,
            "row {id}: blob content does not match its hash"
        );
    }
}

/// Removes a db and its `-wal`/`-shm`.
pub fn remove_db_files(path: &Path) {
    let _ = fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

// ---------------------------------------------------------------------------------------------
// Replica tree
// ---------------------------------------------------------------------------------------------

/// Every file under `root` as `relative path → size`.
pub fn list_tree(root: &Path) -> BTreeMap<String, u64> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let md = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, md.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A replica object name, parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Obj {
    Snapshot {
        gen: String,
        index: u32,
    },
    Wal {
        gen: String,
        index: u32,
        offset: u64,
    },
}

/// Parses `generations/<16 hex>/snapshots/<8 hex>.snapshot.gz` and
/// `generations/<16 hex>/wal/<8 hex>_<8 hex>.wal.gz`; `None` for anything else.
pub fn parse_obj(rel: &str) -> Option<Obj> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.len() != 4 || parts[0] != "generations" || !is_hex(parts[1], 16) {
        return None;
    }
    let gen = parts[1].to_string();
    match parts[2] {
        "snapshots" => {
            let idx = parts[3].strip_suffix(".snapshot.gz")?;
            if !is_hex(idx, 8) {
                return None;
            }
            Some(Obj::Snapshot {
                gen,
                index: u32::from_str_radix(idx, 16).ok()?,
            })
        }
        "wal" => {
            let stem = parts[3].strip_suffix(".wal.gz")?;
            let (i, o) = stem.split_once('_')?;
            if !is_hex(i, 8) || !is_hex(o, 8) {
                return None;
            }
            Some(Obj::Wal {
                gen,
                index: u32::from_str_radix(i, 16).ok()?,
                offset: u64::from_str_radix(o, 16).ok()?,
            })
        }
        _ => None,
    }
}

/// Generation ids present under `replica/generations/`.
pub fn generations(replica: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(replica.join("generations"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Snapshot indexes of a generation.
pub fn snapshot_indexes(replica: &Path, gen: &str) -> Vec<u32> {
    let mut v: Vec<u32> = list_tree(replica)
        .keys()
        .filter_map(|k| match parse_obj(k) {
            Some(Obj::Snapshot { gen: g, index }) if g == gen => Some(index),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// `(index, offset, path)` of every WAL segment of a generation, sorted.
pub fn wal_segments(replica: &Path, gen: &str) -> Vec<(u32, u64, PathBuf)> {
    let mut v: Vec<(u32, u64, PathBuf)> = list_tree(replica)
        .keys()
        .filter_map(|k| match parse_obj(k) {
            Some(Obj::Wal {
                gen: g,
                index,
                offset,
            }) if g == gen => Some((index, offset, replica.join(k))),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Total size of the files under `root` whose name ends with `suffix`.
pub fn total_size(root: &Path, suffix: &str) -> u64 {
    list_tree(root)
        .iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| *v)
        .sum()
}

/// Decompressed contents of a `.gz` object.
pub fn gunzip(path: &Path) -> Vec<u8> {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut d = flate2::read::GzDecoder::new(f);
    let mut v = Vec::new();
    d.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
    v
}

/// Checks the whole replica tree: every file matches the layout (no leftovers such as `.tmp`),
/// each generation has a snapshot at or below its lowest WAL index, snapshots are SQLite files,
/// and the segments of every index start at 0 with a WAL header and are contiguous.
pub fn assert_replica_tree_valid(replica: &Path) {
    let tree = list_tree(replica);
    assert!(!tree.is_empty(), "replica {} is empty", replica.display());
    for k in tree.keys() {
        // The generation's marker naming the db that wrote it.
        let marker = k
            .strip_prefix("generations/")
            .and_then(|r| r.strip_suffix("/db-id"))
            .is_some_and(|g| g.len() == 16 && !g.contains('/'));
        assert!(
            marker || parse_obj(k).is_some(),
            "replica holds a file that matches no layout pattern: {k}"
        );
    }
    for gen in generations(replica) {
        assert!(
            is_hex(&gen, 16),
            "generation dir name is not 16 lowercase hex: {gen}"
        );
        let snaps = snapshot_indexes(replica, &gen);
        let segs = wal_segments(replica, &gen);
        assert!(!snaps.is_empty(), "generation {gen} has no snapshot");
        for &s in &snaps {
            let data =
                gunzip(&replica.join(format!("generations/{gen}/snapshots/{s:08x}.snapshot.gz")));
            assert!(
                data.starts_with(b"SQLite format 3\0"),
                "snapshot {gen}/{s:08x} is not a SQLite db file"
            );
        }
        let mut by_index: BTreeMap<u32, Vec<(u64, PathBuf)>> = BTreeMap::new();
        for (i, o, p) in segs {
            by_index.entry(i).or_default().push((o, p));
        }
        if let Some((&lo, _)) = by_index.iter().next() {
            assert!(
                snaps[0] <= lo,
                "generation {gen}: lowest snapshot {:08x} is above lowest WAL index {lo:08x}",
                snaps[0]
            );
        }
        for (i, segs) in &by_index {
            let mut expect = 0u64;
            for (k, (o, p)) in segs.iter().enumerate() {
                assert_eq!(*o, expect, "generation {gen} index {i:08x}: segment offset {o} but previous segments end at {expect}");
                let data = gunzip(p);
                assert!(!data.is_empty(), "empty WAL segment {}", p.display());
                if k == 0 {
                    assert!(
                        data.len() >= 32,
                        "first segment of {gen}/{i:08x} is shorter than a WAL header"
                    );
                    let magic = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    assert!(
                        magic == 0x377f0682 || magic == 0x377f0683,
                        "segment {gen}/{i:08x}_0 lacks the WAL magic"
                    );
                }
                expect += data.len() as u64;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// RFC 3339 UTC with microseconds: `2026-01-02T03:04:05.123456Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_micros()
    )
}

/// The metadata dir next to a db: `<dir>/.<file>-litestream`.
pub fn meta_dir(db: &Path) -> PathBuf {
    let name = db.file_name().unwrap().to_string_lossy();
    db.parent().unwrap().join(format!(".{name}-litestream"))
}

/// Contents of the metadata dir's `generation` file, trimmed.
pub fn local_generation(db: &Path) -> Option<String> {
    fs::read_to_string(meta_dir(db).join("generation"))
        .ok()
        .map(|s| s.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// HTTP (metrics)
// ---------------------------------------------------------------------------------------------

/// A listener on 127.0.0.1 (the test servers and proxies): each connection is handed to
/// `handle` on a thread of its own, with the flag that says the server is being dropped; the
/// drop sets it and connects once so that the accept loop wakes and ends.
pub struct LoopbackServer {
    pub port: u16,
    closed: Arc<AtomicBool>,
}

impl LoopbackServer {
    pub fn start(
        handle: impl Fn(std::net::TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> LoopbackServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let closed = Arc::new(AtomicBool::new(false));
        let (done, handle) = (closed.clone(), Arc::new(handle));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (done, handle) = (done.clone(), handle.clone());
                std::thread::spawn(move || handle(conn, &done));
            }
        });
        LoopbackServer { port, closed }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `GET path` from `addr` (HTTP/1.0, no keep-alive): `(status, body)`, or `None` when nothing
/// answers (not listening yet, connection refused, timeout).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Small replicas for restore error paths
// ---------------------------------------------------------------------------------------------

/// Waits until the file replica holds a generation with a snapshot (the daemon is up and has
/// synced once); panics if the daemon dies or none appears within DEADLINE.
pub fn wait_for_a_snapshot(env: &Env, d: &mut Daemon) {
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        generations(&env.replica)
            .iter()
            .any(|g| !snapshot_indexes(&env.replica, g).is_empty())
    });
    assert!(
        ok,
        "no snapshot in the replica within {DEADLINE:?}; tree: {:?}",
        list_tree(&env.replica)
    );
}

/// A small real replica: daemon, a few commits, graceful stop. Returns the source digest.
pub fn make_replica(env: &Env) -> Digest {
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(env, &mut d);
    for chunk in 0..6 {
        tx(&app, |c| {
            for i in 0..5 {
                let id = chunk * 5 + i + 1;
                insert_row(c, id, 6000 + id as usize * 10);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    env.wait_restore(DEADLINE, "30 rows replicated", |p| {
        id_summary(p) == (30, 1, 30)
    });
    let src = digest_conn(&app, "t");
    d.stop_ok();
    src
}

pub fn copy_tree(from: &Path, to: &Path) {
    for (rel, _) in list_tree(from) {
        let dst = to.join(&rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(from.join(&rel), dst).unwrap();
    }
}

/// Files in `dir` whose name starts with `stem` (the output, its `.tmp`, `-wal`, …).
pub fn leftovers(dir: &Path, stem: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(stem))
        .collect()
}

pub fn restore_from(env: &Env, replica: &Path, out: &Path, extra: &[&str]) -> Out {
    let url = format!("file://{}", replica.display());
    let mut args = vec!["restore", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&url);
    env.run(&args)
}

pub fn one_line(o: &Out, what: &str) -> String {
    // Log lines (restore's progress goes to stderr too) are not part of the error.
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("time=") && !l.starts_with("{\"time\""))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr, got:\n{}",
        o.stderr
    );
    lines[0].to_string()
}

/// `target/litestream-static`, built by `make static-bin` (cargo's incremental build makes the
/// second caller's run a no-op). One build at a time across test binaries: an exclusive
/// `flock` on `target/static-bin.lock`.
pub fn static_binary() -> PathBuf {
    use std::os::fd::AsRawFd;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = fs::File::create(root.join("target/static-bin.lock")).expect("lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let out = Command::new("make")
        .args(["-s", "static-bin"])
        .current_dir(root)
        .output()
        .expect("make static-bin");
    assert!(
        out.status.success(),
        "make static-bin failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("target/litestream-static")
}

/// Inserts ids `from..=to` into `t`, a few rows of 3–9 KB per transaction.
pub fn insert_ids(app: &Connection, from: i64, to: i64) {
    let mut id = from;
    while id <= to {
        let end = (id + 4).min(to);
        tx(app, |c| {
            for i in id..=end {
                insert_row(c, i, 3000 + (i as usize * 37) % 6000);
            }
        });
        id = end + 1;
    }
}

/// Waits until a restore of the replica holds exactly ids 1..=n; returns it.
pub fn wait_rows(env: &Env, n: i64) -> PathBuf {
    env.wait_restore(DEADLINE, &format!("restore holds ids 1..={n}"), |p| {
        id_summary(p) == (n, 1, n)
    })
}

/// A daemon ("daemon-1") that has snapshotted, then replicated ids 1..=n written by `app`.
pub fn replicating(env: &Env, app: &Connection, n: i64) -> Daemon {
    let mut d = env.start("daemon-1");
    wait_for_a_snapshot(env, &mut d);
    insert_ids(app, 1, n);
    wait_rows(env, n);
    d
}

/// A daemon that has replicated ids 1..=n and then stopped cleanly (its seal recorded).
pub fn sealed_after(env: &Env, app: &Connection, n: i64) -> Stopped {
    let s = replicating(env, app, n).stop_ok();
    assert!(s.log.contains("clean stop recorded"), "{}", s.log);
    s
}
