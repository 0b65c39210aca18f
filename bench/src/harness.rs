//! What every benchmark row needs: the daemon as a child process (CPU and memory from /proc),
//! config files, application connections, deterministic page contents, replica-tree helpers,
//! a metrics scrape, inotify, and one-shot runs with their peak RSS.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The binary under test: `LITESTREAM_BIN`, else `../target/release/litestream`.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LITESTREAM_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/litestream")
}

/// Litestream v0.3.13, for the side-by-side rows: `LITESTREAM_V0313` (a binary), else
/// `bench/target/litestream-v0.3.13`, unpacked there if absent by
/// `get-litestream-v0.3.13.sh` from `LITESTREAM_ANCHORS` (default `../shared/anchors` beside
/// the repo). Err says why it is not there; the rows then say so instead of failing.
pub fn v0313(repo: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LITESTREAM_V0313") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("LITESTREAM_V0313={} is not a file", p.display()))
        };
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/litestream-v0.3.13");
    if out.is_file() {
        return Ok(out);
    }
    let anchors = std::env::var_os("LITESTREAM_ANCHORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/anchors"));
    let script = anchors.join("get-litestream-v0.3.13.sh");
    if !script.is_file() {
        return Err(format!(
            "not found: {} absent and no {} (set LITESTREAM_V0313 or LITESTREAM_ANCHORS)",
            out.display(),
            script.display()
        ));
    }
    match Command::new(&script).arg(&out).output() {
        Ok(o) if o.status.success() && out.is_file() => Ok(out),
        Ok(o) => Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{}: {e}", script.display())),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every `every` until it returns Some, or None after `deadline`.
pub fn wait_for<T>(
    deadline: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// A `litestream replicate -config CFG` child; SIGKILLed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    pub pid: i32,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::start_bin(&bin(), config, log)
    }

    /// `BIN replicate -config CFG`: ours or another Litestream (v0.3.13 reads the same config).
    pub fn start_bin(bin: &Path, config: &Path, log: &Path) -> Daemon {
        let out = fs::File::create(log).expect("create daemon log");
        let child = Command::new(bin)
            .arg("replicate")
            .arg("-config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id() as i32;
        Daemon {
            child: Some(child),
            pid,
            log: log.to_path_buf(),
        }
    }

    /// utime + stime of the process (all threads), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid)
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid, field)
    }

    /// SIGTERM, then wait (30 s) for a clean exit; SIGKILL after that.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() > end {
                eprintln!("daemon {} ignored SIGTERM for 30 s; killing it", self.pid);
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Seconds of the first `msg` event's `elapsed=` field in a daemon log (Go-style duration).
pub fn logged_elapsed(log: &Path, msg: &str) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(msg))?;
    let v = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("elapsed="))?;
    let units = [
        ("ms", 1e-3),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
    ];
    units.iter().find_map(|(u, k)| {
        v.strip_suffix(u)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n * k)
    })
}

pub fn proc_cpu_seconds(pid: i32) -> f64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// utime + stime per thread name (`comm`), seconds, summed over threads of that name.
pub fn thread_cpu(pid: i32) -> BTreeMap<String, f64> {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = BTreeMap::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let s = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(a), Some(b)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = s[a + 1..b].to_string();
        let f: Vec<&str> = s[b + 2..].split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += ticks / hz;
    }
    out
}

/// "name s, …" of the growth of each thread group's CPU between two [`thread_cpu`] readings.
pub fn thread_cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 0.01)
        .collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    v.iter()
        .map(|(k, d)| format!("{k} {d:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    for line in s.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            return v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

pub struct DbCfg {
    pub path: PathBuf,
    /// `None`: the default (1s).
    pub monitor_interval: Option<String>,
    /// Raw YAML lines under the db (4-space indented), e.g. `min-checkpoint-page-count: 1000`.
    pub extra: String,
    /// Replica blocks from [`file_replica`] / `S3Server::replica_yaml`.
    pub replicas: Vec<String>,
}

/// A file replica block; `None` keeps the default (sync-interval 1s, gzip).
pub fn file_replica(
    name: &str,
    dir: &Path,
    sync: Option<&str>,
    compression: Option<&str>,
) -> String {
    let mut y = format!(
        "      - type: file\n        name: {name}\n        path: \"{}\"\n",
        dir.display()
    );
    if let Some(s) = sync {
        y.push_str(&format!("        sync-interval: {s}\n"));
    }
    if let Some(c) = compression {
        y.push_str(&format!("        compression: {c}\n"));
    }
    y
}

pub fn write_config(path: &Path, addr: Option<u16>, dbs: &[DbCfg]) {
    let mut y = String::new();
    if let Some(port) = addr {
        y.push_str(&format!("addr: \"127.0.0.1:{port}\"\n"));
    }
    y.push_str("dbs:\n");
    for d in dbs {
        y.push_str(&format!("  - path: \"{}\"\n", d.path.display()));
        if let Some(mi) = &d.monitor_interval {
            y.push_str(&format!("    monitor-interval: {mi}\n"));
        }
        y.push_str(&d.extra);
        y.push_str("    replicas:\n");
        for r in &d.replicas {
            y.push_str(r);
        }
    }
    fs::write(path, y).expect("write config");
}

/// The daemon's metadata dir next to `db`.
pub fn meta_dir(db: &Path) -> PathBuf {
    let name = db.file_name().unwrap().to_string_lossy();
    db.with_file_name(format!(".{name}-litestream"))
}

// ---------------------------------------------------------------------------------------------
// The application side
// ---------------------------------------------------------------------------------------------

/// An application connection: WAL, synchronous=NORMAL (Litestream's recommendation),
/// busy_timeout 5 s, and table `t(id INTEGER PRIMARY KEY, v BLOB)`.
pub fn open_app(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open db");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=wal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    c.execute_batch(
        "PRAGMA synchronous=NORMAL; CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    c
}

/// Deterministic contents: xorshift64* random bytes and repeated English text.
pub struct Gen {
    state: u64,
}

const TEXT: &[u8] =
    b"It was the best of times, it was the worst of times, it was the age of wisdom, \
it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. ";

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn random(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// Repeated text tagged with `tag`, so no two rows are identical.
    pub fn text(&mut self, len: usize, tag: u64) -> Vec<u8> {
        let mut v = format!("row {tag}: ").into_bytes();
        while v.len() < len {
            v.extend_from_slice(TEXT);
        }
        v.truncate(len);
        v
    }

    /// Row `i`: random when `i` is even, text when odd (half and half).
    pub fn row(&mut self, i: u64, len: usize) -> Vec<u8> {
        if i.is_multiple_of(2) {
            self.random(len)
        } else {
            self.text(len, i)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replica trees
// ---------------------------------------------------------------------------------------------

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn is_object(p: &Path) -> bool {
    let n = p.file_name().unwrap_or_default().to_string_lossy();
    n.ends_with(".gz") || n.ends_with(".lz4")
}

/// Generation dirs of a replica tree (a file replica dir, or an S3 prefix on s3s-fs's disk).
pub fn generations(root: &Path) -> Vec<PathBuf> {
    list(&root.join("generations"))
}

/// Complete snapshot objects of every generation.
pub fn snapshots(root: &Path) -> Vec<PathBuf> {
    generations(root)
        .iter()
        .flat_map(|g| list(&g.join("snapshots")))
        .filter(|p| is_object(p))
        .collect()
}

/// Complete WAL segment objects of one generation.
pub fn wal_segments(gen: &Path) -> Vec<PathBuf> {
    list(&gen.join("wal"))
        .into_iter()
        .filter(|p| is_object(p))
        .collect()
}

/// Every generation holds a complete snapshot (and there is at least one).
pub fn all_generations_snapshotted(root: &Path) -> bool {
    let gens = generations(root);
    !gens.is_empty()
        && gens
            .iter()
            .all(|g| list(&g.join("snapshots")).iter().any(|p| is_object(p)))
}

/// Decompressed contents of a replica object (by suffix).
pub fn read_object(p: &Path) -> Vec<u8> {
    let f = match fs::File::open(p) {
        Ok(f) => f,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    let name = p.to_string_lossy();
    if name.ends_with(".lz4") {
        let _ = lz4_flex::frame::FrameDecoder::new(f).read_to_end(&mut out);
    } else {
        let _ = flate2::read::GzDecoder::new(f).read_to_end(&mut out);
    }
    out
}

/// WAL index of a segment name `IIIIIIII_OOOOOOOO.wal.gz`.
pub fn segment_index(p: &Path) -> Option<u32> {
    let n = p.file_name()?.to_string_lossy().to_string();
    u32::from_str_radix(n.split('_').next()?, 16).ok()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One scrape of `/metrics`: (name, labels) -> value.
pub struct Metrics(pub HashMap<(String, String), f64>);

impl Metrics {
    pub fn scrape(port: u16) -> Option<Metrics> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (_, body) = body.split_once("\r\n\r\n")?;
        let mut m = HashMap::new();
        for line in body.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((key, val)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = match key.split_once('{') {
                Some((n, l)) => (n.to_string(), l.trim_end_matches('}').to_string()),
                None => (key.to_string(), String::new()),
            };
            if let Ok(v) = val.parse() {
                m.insert((name, labels), v);
            }
        }
        Some(Metrics(m))
    }

    /// Every value of metric `name`.
    pub fn all(&self, name: &str) -> Vec<(&str, f64)> {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.as_str(), *v))
            .collect()
    }

    pub fn sum(&self, name: &str) -> f64 {
        self.all(name).iter().map(|(_, v)| v).sum()
    }

    /// Every replica has uploaded everything the shadow WAL holds, with zero lag.
    pub fn caught_up(&self) -> bool {
        let shadow_idx = self.sum("litestream_shadow_wal_index");
        let shadow_size = self.sum("litestream_shadow_wal_size");
        let idx = self.all("litestream_replica_wal_index");
        let off = self.all("litestream_replica_wal_offset");
        let lag = self.all("litestream_replica_lag_seconds");
        !idx.is_empty()
            && idx.iter().all(|(_, v)| *v == shadow_idx)
            && off.iter().all(|(_, v)| *v == shadow_size)
            && lag.iter().all(|(_, v)| *v == 0.0)
    }
}

/// Waits until the daemon's one db is fully replicated: caught up, and the WAL bytes it has
/// copied unchanged for `quiet`. The quiet window must outlast anything the db thread can be
/// busy with while the metrics stand still (a checkpoint of a WAL that grew for a whole
/// monitor-interval under a fast writer takes about a second), or a writer's last frames,
/// not yet seen, look replicated.
pub fn wait_caught_up(port: u16, deadline: Duration) -> bool {
    wait_caught_up_quiet(port, deadline, Duration::from_secs(3))
}

pub fn wait_caught_up_quiet(port: u16, deadline: Duration, quiet: Duration) -> bool {
    let mut since: Option<(f64, Instant)> = None;
    wait_for(deadline, Duration::from_millis(100), || {
        let m = Metrics::scrape(port)?;
        let total = m.sum("litestream_total_wal_bytes");
        if !m.caught_up() {
            since = None;
            return None;
        }
        match since {
            Some((t, at)) if t == total => (at.elapsed() >= quiet).then_some(()),
            _ => {
                since = Some((total, Instant::now()));
                None
            }
        }
    })
    .is_some()
}

// ---------------------------------------------------------------------------------------------
// inotify
// ---------------------------------------------------------------------------------------------

/// Records (time, name) of every file created in or renamed into a directory.
pub struct DirWatch {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: Option<JoinHandle<()>>,
}

impl DirWatch {
    pub fn start(dir: &Path) -> DirWatch {
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(fd >= 0, "inotify_init1 failed");
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let wd =
            unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_MOVED_TO | libc::IN_CREATE) };
        assert!(wd >= 0, "inotify_add_watch {} failed", dir.display());
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (stop.clone(), events.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !s.load(Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                let now = Instant::now();
                if n <= 0 {
                    continue;
                }
                let mut off = 0usize;
                let hdr = std::mem::size_of::<libc::inotify_event>();
                while off + hdr <= n as usize {
                    let ev: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                    let name_bytes = &buf[off + hdr..off + hdr + ev.len as usize];
                    let end = name_bytes
                        .iter()
                        .position(|&b| b == 0)
                        .unwrap_or(name_bytes.len());
                    let name = String::from_utf8_lossy(&name_bytes[..end]).to_string();
                    if !name.ends_with(".tmp") {
                        e.lock().unwrap().push((now, name));
                    }
                    off += hdr + ev.len as usize;
                }
            }
            unsafe { libc::close(fd) };
        });
        DirWatch {
            stop,
            events,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------------------------

pub struct Run {
    pub ok: bool,
    pub elapsed: Duration,
    /// Highest VmHWM seen (polled every 2 ms), KiB. Not wait4's ru_maxrss: Linux carries the
    /// spawning process's high-water mark across exec, so it would report this bench's RSS.
    pub peak_kib: u64,
    /// utime + stime of the process (wait4's rusage), seconds.
    pub cpu: f64,
    pub stderr: String,
}

/// Runs the binary with `args` and `env`, measuring wall time and peak RSS (VmHWM polled).
/// Writes back every dirty page on the machine (`sync`) and lets the disk settle, so that the
/// measurement that follows does not pay for the previous row's writeback: with a GiB of
/// another row's files still being written back, the kernel's copies into new page-cache
/// pages cost several times their quiet CPU (seen as a 2–3× swing of the db thread's CPU in
/// the lz4 row, which ran right after the gzip one, and of the first restore after a daemon
/// wrote its replicas).
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(500));
}

pub fn run_measured(args: &[&str], env: &[(&str, &str)], log: &Path) -> Run {
    let err = fs::File::create(log).unwrap();
    let start = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(err.try_clone().unwrap())
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn litestream");
    let pid = child.id() as i32;
    let mut peak_kib = 0;
    let mut status = 0i32;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        peak_kib = peak_kib.max(proc_status_kib(pid, "VmHWM"));
        // Reaped here (not by `child`), so the rusage of this child comes with it.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(child);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        elapsed: start.elapsed(),
        peak_kib,
        cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
        stderr: fs::read_to_string(log).unwrap_or_default(),
    }
}
