//! Prometheus metrics (SPEC §9) and the health check, served on `addr` by `server` (a
//! bounded GET-only HTTP server): `GET /metrics` (text format 0.0.4), `GET /healthz`, 404 for
//! anything else.
//!
//! The db and replica threads only store into atomics they were handed at start-up; the
//! server thread loads them when scraped and renders the text with a pure function. No lock is
//! taken on the replication path, and a slow or hostile client only ever holds up the server's
//! own threads.
//! Nothing here may carry a secret: labels are db paths, replica names and replica types.
//!
//! Replica lag (`litestream_replica_lag_seconds`): the db thread numbers every shadow position
//! it publishes and keeps the publish times of the last few in a ring; a replica records the
//! number it has fully uploaded. The lag is the age of the first publish the replica has not
//! uploaded yet, or 0 when it has them all. When that publish has left the ring, the replica
//! keeps its older time, so the lag is overstated rather than understated.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sync::lock;

mod server;
pub(crate) use server::Server;

/// Publish times kept per db for the lag computation (2 KiB per db).
const RING: u64 = 256;

/// Checkpoint modes in label order.
pub(crate) const MODES: [&str; 3] = ["PASSIVE", "RESTART", "TRUNCATE"];

/// Store operations counted per replica type.
pub(crate) const OPERATIONS: [&str; 4] = ["GET", "PUT", "LIST", "DELETE"];
const GET: usize = Operation::Get as usize;
const PUT: usize = Operation::Put as usize;

/// A store operation, the `operation` label of `litestream_replica_operation_*`; its value is
/// its slot in `OPERATIONS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// Opening an object for reading; its bytes are counted as they are read.
    Get = 0,
    /// Writing an object; counts the compressed size stored.
    Put = 1,
    /// One listing call, however many pages the store answered with.
    List = 2,
    /// One delete call, however many objects it removed.
    Delete = 3,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct CheckpointCounters {
    count: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
}

/// One db's metrics; the db thread writes them, its replica threads write their own entries.
pub struct DbMetrics {
    /// The `db` label: the absolute db path.
    pub(crate) path: String,
    db_size: AtomicU64,
    wal_size: AtomicU64,
    shadow_wal_index: AtomicU64,
    shadow_wal_size: AtomicU64,
    total_wal_bytes: AtomicU64,
    sync_count: AtomicU64,
    sync_errors: AtomicU64,
    sync_nanos: AtomicU64,
    checkpoints: [CheckpointCounters; 3],
    /// Number of the last published shadow position (0: none yet).
    publish_seq: AtomicU64,
    /// Publish time (unix ns) of position `n` at `n % RING`.
    publish_times: Vec<AtomicU64>,
    /// Set after the db thread's first tick, whatever its outcome (`-exec` waits for it).
    first_tick_done: AtomicBool,
    /// Why the db thread cannot vouch for its replicas now (the db file replaced or gone);
    /// `/healthz` is not ok while set. Touched only when that changes, and on scrapes.
    db_problem: Mutex<Option<String>>,
    pub(crate) replicas: Vec<ReplicaMetrics>,
}

/// One replica's metrics.
pub(crate) struct ReplicaMetrics {
    /// The `name` label.
    pub name: String,
    wal_index: AtomicU64,
    wal_offset: AtomicU64,
    wal_bytes: AtomicU64,
    validation_ok: AtomicU64,
    validation_error: AtomicU64,
    /// Publish number of the last position known to be entirely in the store.
    synced_seq: AtomicU64,
    /// Publish time (unix ns) of the first position not yet in the store.
    behind_since: AtomicU64,
    /// Why the last sync failed (cleared by a successful one); shown by `/healthz`.
    last_error: Mutex<Option<String>>,
}

impl DbMetrics {
    /// The metrics of the db at `path` (its `db` label) with one entry per replica name.
    pub(crate) fn new(path: String, replica_names: &[String]) -> DbMetrics {
        DbMetrics {
            path,
            db_size: AtomicU64::new(0),
            wal_size: AtomicU64::new(0),
            shadow_wal_index: AtomicU64::new(0),
            shadow_wal_size: AtomicU64::new(0),
            total_wal_bytes: AtomicU64::new(0),
            sync_count: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
            checkpoints: Default::default(),
            publish_seq: AtomicU64::new(0),
            publish_times: (0..RING).map(|_| AtomicU64::new(0)).collect(),
            first_tick_done: AtomicBool::new(false),
            db_problem: Mutex::new(None),
            replicas: replica_names
                .iter()
                .map(|name| ReplicaMetrics {
                    name: name.clone(),
                    wal_index: AtomicU64::new(0),
                    wal_offset: AtomicU64::new(0),
                    wal_bytes: AtomicU64::new(0),
                    validation_ok: AtomicU64::new(0),
                    validation_error: AtomicU64::new(0),
                    synced_seq: AtomicU64::new(0),
                    behind_since: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                })
                .collect(),
        }
    }

    // ---- db thread ----

    /// The gauges read at the end of a tick.
    pub(crate) fn set_sizes(&self, db_size: u64, wal_size: u64, shadow: Option<(u32, u64)>) {
        self.db_size.store(db_size, Ordering::Relaxed);
        self.wal_size.store(wal_size, Ordering::Relaxed);
        if let Some((index, size)) = shadow {
            self.shadow_wal_index
                .store(u64::from(index), Ordering::Relaxed);
            self.shadow_wal_size.store(size, Ordering::Relaxed);
        }
    }

    /// `n` more bytes copied into the shadow WAL.
    pub(crate) fn add_wal_bytes(&self, n: u64) {
        self.total_wal_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// One tick (Litestream's "sync") and how long it took.
    pub(crate) fn tick_done(&self, ok: bool, elapsed: Duration) {
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.sync_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.sync_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.first_tick_done.store(true, Ordering::SeqCst);
    }

    /// Whether the db thread has run its first tick (see `tick_done`).
    pub(crate) fn first_tick_done(&self) -> bool {
        self.first_tick_done.load(Ordering::SeqCst)
    }

    /// Sets (or with `None` clears) why this db's replicas cannot be trusted now.
    pub(crate) fn set_db_problem(&self, problem: Option<String>) {
        *self.db_problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Counts a checkpoint in `mode` (one of `MODES`, as `sqlite::CheckpointMode::name` spells
    /// it; any other name is not counted).
    pub(crate) fn checkpoint_done(&self, mode: &str, ok: bool, elapsed: Duration) {
        let Some(c) = MODES
            .iter()
            .position(|m| *m == mode)
            .map(|slot| &self.checkpoints[slot])
        else {
            return;
        };
        c.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A new shadow position was published (call before waking the replicas). Only the db
    /// thread calls this.
    pub(crate) fn published(&self, now: SystemTime) {
        let t = unix_nanos(now);
        let k = self.publish_seq.load(Ordering::SeqCst) + 1;
        self.publish_times[(k % RING) as usize].store(t, Ordering::SeqCst);
        self.publish_seq.store(k, Ordering::SeqCst);
        // A replica that had everything up to now starts being behind with this publish.
        // (If it records k-1 just after this load, it sees k itself in `replica_synced`.)
        for r in &self.replicas {
            if r.synced_seq.load(Ordering::SeqCst) == k - 1 {
                r.behind_since.store(t, Ordering::SeqCst);
            }
        }
    }

    // ---- replica threads ----

    /// The publish number to pass to `replica_synced` after uploading the position read next.
    pub(crate) fn publish_seq(&self) -> u64 {
        self.publish_seq.load(Ordering::SeqCst)
    }

    /// Replica `slot` holds everything up to publish `seq` (read before its target).
    pub(crate) fn replica_synced(&self, slot: usize, seq: u64) {
        let Some(r) = self.replicas.get(slot) else {
            return;
        };
        r.synced_seq.store(seq, Ordering::SeqCst);
        *lock(&r.last_error) = None;
        let latest = self.publish_seq.load(Ordering::SeqCst);
        if latest > seq && latest - seq < RING {
            let t = self.publish_times[((seq + 1) % RING) as usize].load(Ordering::SeqCst);
            // Only if the slot was not reused while we read it; else keep the older time.
            if self.publish_seq.load(Ordering::SeqCst) - seq < RING {
                r.behind_since.store(t, Ordering::SeqCst);
            }
        }
    }

    /// Replica `slot`'s last sync failed with `error` (kept, one line, for `/healthz`).
    pub(crate) fn replica_failed(&self, slot: usize, error: &str) {
        if let Some(r) = self.replicas.get(slot) {
            *lock(&r.last_error) = Some(one_line(error, 300));
        }
    }

    /// Where replica `slot` stands in the store (the WAL index and offset gauges).
    pub(crate) fn replica_position(&self, slot: usize, index: u32, offset: u64) {
        if let Some(r) = self.replicas.get(slot) {
            r.wal_index.store(u64::from(index), Ordering::Relaxed);
            r.wal_offset.store(offset, Ordering::Relaxed);
        }
    }

    /// `n` more WAL bytes (uncompressed) uploaded by replica `slot`.
    pub(crate) fn replica_wal_bytes(&self, slot: usize, n: u64) {
        if let Some(r) = self.replicas.get(slot) {
            r.wal_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// One validation of replica `slot`, passed or failed.
    pub(crate) fn replica_validation(&self, slot: usize, ok: bool) {
        if let Some(r) = self.replicas.get(slot) {
            let c = if ok {
                &r.validation_ok
            } else {
                &r.validation_error
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Plain values for rendering, lag computed against `now`.
    fn snapshot(&self, now: SystemTime) -> DbSnapshot {
        let latest = self.publish_seq.load(Ordering::SeqCst);
        let now_ns = unix_nanos(now);
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DbSnapshot {
            path: self.path.clone(),
            problem: self
                .db_problem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            db_size: ld(&self.db_size),
            wal_size: ld(&self.wal_size),
            shadow_wal_index: ld(&self.shadow_wal_index),
            shadow_wal_size: ld(&self.shadow_wal_size),
            total_wal_bytes: ld(&self.total_wal_bytes),
            sync_count: ld(&self.sync_count),
            sync_error_count: ld(&self.sync_errors),
            sync_seconds: nanos_to_secs(ld(&self.sync_nanos)),
            checkpoints: std::array::from_fn(|i| {
                let c = &self.checkpoints[i];
                (ld(&c.count), ld(&c.errors), nanos_to_secs(ld(&c.nanos)))
            }),
            replicas: self
                .replicas
                .iter()
                .map(|r| ReplicaSnapshot {
                    name: r.name.clone(),
                    wal_index: ld(&r.wal_index),
                    wal_offset: ld(&r.wal_offset),
                    wal_bytes: ld(&r.wal_bytes),
                    validation_ok: ld(&r.validation_ok),
                    validation_error: ld(&r.validation_error),
                    lag_seconds: lag_seconds(
                        r.synced_seq.load(Ordering::SeqCst),
                        latest,
                        r.behind_since.load(Ordering::SeqCst),
                        now_ns,
                    ),
                    last_error: lock(&r.last_error).clone(),
                })
                .collect(),
        }
    }
}

/// Seconds since the first unsynced publish; 0 when the replica has every publish. Pure.
pub(crate) fn lag_seconds(synced: u64, latest: u64, behind_since_ns: u64, now_ns: u64) -> f64 {
    if synced >= latest || behind_since_ns == 0 {
        return 0.0;
    }
    nanos_to_secs(now_ns.saturating_sub(behind_since_ns))
}

fn nanos_to_secs(n: u64) -> f64 {
    n as f64 / 1e9
}

/// Store operations of one replica type (`litestream_replica_operation_*`).
pub(crate) struct OpCounters {
    pub replica_type: &'static str,
    total: [AtomicU64; 4],
    bytes: [AtomicU64; 4],
}

impl OpCounters {
    fn new(replica_type: &'static str) -> OpCounters {
        OpCounters {
            replica_type,
            total: Default::default(),
            bytes: Default::default(),
        }
    }

    /// One `op` that moved `bytes` (compressed).
    pub(crate) fn count(&self, op: Operation, bytes: u64) {
        self.total[op as usize].fetch_add(1, Ordering::Relaxed);
        self.bytes[op as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// `n` more bytes moved by an operation already counted (a GET being read).
    pub(crate) fn add_bytes(&self, op: Operation, n: u64) {
        self.bytes[op as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// Follow mode's metrics (`restore -f` with `addr`): the position the output is at and how
/// long since the follower last found nothing new to apply. The follower thread stores them.
pub struct FollowMetrics {
    /// The `output` label: the followed database's path.
    pub(crate) output: String,
    /// The generation id (16 hex digits) as a number.
    generation: AtomicU64,
    index: AtomicU64,
    offset: AtomicU64,
    transactions: AtomicU64,
    /// Unix ns of the last poll that found nothing new; the start until the first one.
    caught_up_at: AtomicU64,
}

impl FollowMetrics {
    /// The metrics of a follower of `output`, started now.
    pub(crate) fn new(output: String) -> FollowMetrics {
        FollowMetrics {
            output,
            generation: AtomicU64::new(0),
            index: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            caught_up_at: AtomicU64::new(unix_nanos(SystemTime::now())),
        }
    }

    /// The output is now at this position.
    pub(crate) fn position(&self, generation: &str, index: u32, offset: u64) {
        let g = u64::from_str_radix(generation, 16).unwrap_or(0);
        self.generation.store(g, Ordering::Relaxed);
        self.index.store(u64::from(index), Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
    }

    /// `n` more replicated transactions applied.
    pub(crate) fn applied(&self, n: u64) {
        self.transactions.fetch_add(n, Ordering::Relaxed);
    }

    /// A poll at `now` found nothing new: the output holds everything the replica has.
    pub(crate) fn caught_up(&self, now: SystemTime) {
        self.caught_up_at.store(unix_nanos(now), Ordering::Relaxed);
    }

    fn snapshot(&self, now: SystemTime) -> FollowSnapshot {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FollowSnapshot {
            output: self.output.clone(),
            generation: format!("{:016x}", ld(&self.generation)),
            index: ld(&self.index),
            offset: ld(&self.offset),
            transactions: ld(&self.transactions),
            lag_seconds: nanos_to_secs(unix_nanos(now).saturating_sub(ld(&self.caught_up_at))),
        }
    }
}

/// A follower's values in a `Snapshot`.
#[derive(Clone, Debug, Default)]
pub(crate) struct FollowSnapshot {
    pub output: String,
    pub generation: String,
    pub index: u64,
    pub offset: u64,
    pub transactions: u64,
    /// Seconds since the last poll that found nothing new: at most one poll interval (plus
    /// a poll's time) while caught up, growing while the follower is behind or failing.
    pub lag_seconds: f64,
}

/// Everything the server renders. Built before any thread starts, then read-only apart from
/// the atomics inside.
pub(crate) struct Registry {
    pub dbs: Vec<Arc<DbMetrics>>,
    ops: Vec<Arc<OpCounters>>,
    follow: Option<Arc<FollowMetrics>>,
}

impl Registry {
    /// The registry of `dbs`, with one set of operation counters per distinct replica type.
    pub(crate) fn new(dbs: Vec<Arc<DbMetrics>>, replica_types: &[&'static str]) -> Registry {
        let mut ops: Vec<Arc<OpCounters>> = Vec::new();
        for t in replica_types {
            if !ops.iter().any(|o| o.replica_type == *t) {
                ops.push(Arc::new(OpCounters::new(t)));
            }
        }
        Registry {
            dbs,
            ops,
            follow: None,
        }
    }

    /// The registry of a follower (`restore -f`): its metrics, no db.
    pub(crate) fn with_follow(mut self, follow: Arc<FollowMetrics>) -> Registry {
        self.follow = Some(follow);
        self
    }

    /// The store-operation counters of `replica_type` (a `ReplicaClient::kind`); `None` for a
    /// type not registered at start-up, whose operations are then not counted.
    pub(crate) fn op_counters(&self, replica_type: &str) -> Option<Arc<OpCounters>> {
        self.ops
            .iter()
            .find(|o| o.replica_type == replica_type)
            .cloned()
    }

    /// Every value as of now, lag computed against `now`, for one scrape.
    pub(crate) fn snapshot(&self, now: SystemTime) -> Snapshot {
        Snapshot {
            dbs: self.dbs.iter().map(|d| d.snapshot(now)).collect(),
            ops: self
                .ops
                .iter()
                .map(|o| OpSnapshot {
                    replica_type: o.replica_type,
                    total: std::array::from_fn(|i| o.total[i].load(Ordering::Relaxed)),
                    bytes: std::array::from_fn(|i| o.bytes[i].load(Ordering::Relaxed)),
                })
                .collect(),
            process: ProcessStats::read(),
            follow: self.follow.as_ref().map(|f| f.snapshot(now)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain values and rendering
// ---------------------------------------------------------------------------------------------

/// Everything one scrape shows, as plain values: what `render` and `health` are pure over.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub dbs: Vec<DbSnapshot>,
    pub ops: Vec<OpSnapshot>,
    /// `None` where `/proc/self` cannot be read.
    pub process: Option<ProcessStats>,
    /// A follower's position and lag (`restore -f`).
    pub follow: Option<FollowSnapshot>,
}

/// One db's values in a `Snapshot` (the `litestream_db_*`, sync and checkpoint families).
#[derive(Clone, Debug, Default)]
pub(crate) struct DbSnapshot {
    pub path: String,
    /// See `DbMetrics::db_problem`.
    pub problem: Option<String>,
    pub db_size: u64,
    pub wal_size: u64,
    pub shadow_wal_index: u64,
    pub shadow_wal_size: u64,
    pub total_wal_bytes: u64,
    pub sync_count: u64,
    pub sync_error_count: u64,
    pub sync_seconds: f64,
    /// (count, errors, seconds) per mode, in `MODES` order.
    pub checkpoints: [(u64, u64, f64); 3],
    pub replicas: Vec<ReplicaSnapshot>,
}

/// One replica's values in a `Snapshot`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplicaSnapshot {
    pub name: String,
    pub wal_index: u64,
    pub wal_offset: u64,
    pub wal_bytes: u64,
    pub validation_ok: u64,
    pub validation_error: u64,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
}

/// One replica type's store-operation counts in a `Snapshot`.
#[derive(Clone, Debug)]
pub(crate) struct OpSnapshot {
    pub replica_type: &'static str,
    /// Per operation, in `OPERATIONS` order.
    pub total: [u64; 4],
    pub bytes: [u64; 4],
}

/// The `process_*` metrics, from `/proc/self`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// This process's stats; `None` where `/proc/self` cannot be read.
    pub(crate) fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut p = parse_proc_stat(&stat, &boot, ticks.max(1) as u64, page.max(1) as u64)?;
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        p.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| parse_max_fds(&l));
        Some(p)
    }
}

/// Parses `/proc/self/stat` (and `btime` from `/proc/stat`). Pure.
pub(crate) fn parse_proc_stat(
    stat: &str,
    proc_stat: &str,
    ticks: u64,
    page: u64,
) -> Option<ProcessStats> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    let (utime, stime, start, vsize, rss) = (num(14)?, num(15)?, num(22)?, num(23)?, num(24)?);
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
        resident_bytes: rss * page,
        virtual_bytes: vsize,
        start_time_seconds: btime as f64 + start as f64 / ticks as f64,
        open_fds: 0,
        max_fds: None,
    })
}

fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Label value escaping of the text format: `\`, `"` and newline.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float the way Prometheus reads it back exactly.
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    /// `# HELP` and `# TYPE`, as Litestream v0.3 declares them: its counters are typed
    /// `counter` even where the name lacks `_total` (`promtool check metrics` lints those
    /// names; they are fixed by compatibility).
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", num(value));
    }
}

/// Renders a snapshot in the Prometheus text format 0.0.4, one group of families after
/// another, always in the same order. Pure.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096 + 2048 * s.dbs.len());
    render_db(&mut out, s);
    render_checkpoints(&mut out, s);
    render_replicas(&mut out, s);
    render_store_operations(&mut out, s);
    if let Some(f) = &s.follow {
        render_follow(&mut out, f);
    }
    if let Some(p) = &s.process {
        render_process(&mut out, p);
    }
    out
}

/// The per-db gauges and counters.
fn render_db(out: &mut String, s: &Snapshot) {
    type DbValue = fn(&DbSnapshot) -> f64;
    let db_families: [(&str, &str, &str, DbValue); 8] = [
        (
            "litestream_db_size",
            "gauge",
            "The current size of the real DB",
            |d| d.db_size as f64,
        ),
        (
            "litestream_wal_size",
            "gauge",
            "The current size of the real WAL",
            |d| d.wal_size as f64,
        ),
        (
            "litestream_shadow_wal_index",
            "gauge",
            "The current index of the shadow WAL",
            |d| d.shadow_wal_index as f64,
        ),
        (
            "litestream_shadow_wal_size",
            "gauge",
            "Current size of shadow WAL, in bytes",
            |d| d.shadow_wal_size as f64,
        ),
        (
            "litestream_total_wal_bytes",
            "counter",
            "Total number of bytes written to shadow WAL",
            |d| d.total_wal_bytes as f64,
        ),
        (
            "litestream_sync_count",
            "counter",
            "Number of sync operations performed",
            |d| d.sync_count as f64,
        ),
        (
            "litestream_sync_error_count",
            "counter",
            "Number of sync errors that have occurred",
            |d| d.sync_error_count as f64,
        ),
        (
            "litestream_sync_seconds",
            "counter",
            "Time spent syncing shadow WAL, in seconds",
            |d| d.sync_seconds,
        ),
    ];
    for (name, kind, help, value) in db_families {
        let mut f = Family::new(out, name, kind, help);
        for d in &s.dbs {
            f.sample(&[("db", &d.path)], value(d));
        }
    }
}

/// Checkpoints per db and mode.
fn render_checkpoints(out: &mut String, s: &Snapshot) {
    type CkValue = fn(&(u64, u64, f64)) -> f64;
    let ck_families: [(&str, &str, CkValue); 3] = [
        (
            "litestream_checkpoint_count",
            "Number of checkpoint operations performed",
            |c| c.0 as f64,
        ),
        (
            "litestream_checkpoint_error_count",
            "Number of checkpoint errors that have occurred",
            |c| c.1 as f64,
        ),
        (
            "litestream_checkpoint_seconds",
            "Time spent checkpointing WAL, in seconds",
            |c| c.2,
        ),
    ];
    for (name, help, value) in ck_families {
        let mut f = Family::new(out, name, "counter", help);
        for d in &s.dbs {
            for (mode, c) in MODES.iter().zip(&d.checkpoints) {
                f.sample(&[("db", &d.path), ("mode", mode)], value(c));
            }
        }
    }
}

/// The per-replica families.
fn render_replicas(out: &mut String, s: &Snapshot) {
    type RValue = fn(&ReplicaSnapshot) -> f64;
    let r_families: [(&str, &str, &str, RValue); 4] = [
        ("litestream_replica_wal_index", "gauge", "The current WAL index", |r| r.wal_index as f64),
        ("litestream_replica_wal_offset", "gauge", "The current WAL offset", |r| r.wal_offset as f64),
        ("litestream_replica_lag_seconds", "gauge", "Seconds since the oldest committed data not yet on the replica was written to the shadow WAL; 0 when caught up.", |r| r.lag_seconds),
        ("litestream_replica_wal_bytes", "counter", "The number wal bytes written", |r| r.wal_bytes as f64),
    ];
    for (name, kind, help, value) in r_families {
        let mut f = Family::new(out, name, kind, help);
        for d in &s.dbs {
            for r in &d.replicas {
                f.sample(&[("db", &d.path), ("name", &r.name)], value(r));
            }
        }
    }
    {
        let mut f = Family::new(
            out,
            "litestream_replica_validation_total",
            "counter",
            "The number of validations performed",
        );
        for d in &s.dbs {
            for r in &d.replicas {
                for (status, v) in [("ok", r.validation_ok), ("error", r.validation_error)] {
                    f.sample(
                        &[("db", &d.path), ("name", &r.name), ("status", status)],
                        v as f64,
                    );
                }
            }
        }
    }
}

/// Store operations and their bytes, per replica type.
fn render_store_operations(out: &mut String, s: &Snapshot) {
    for (name, help, bytes) in [
        (
            "litestream_replica_operation_total",
            "Number of store operations, by replica type and operation.",
            false,
        ),
        (
            "litestream_replica_operation_bytes",
            "Bytes moved by store operations (compressed), by replica type and operation.",
            true,
        ),
    ] {
        let mut f = Family::new(out, name, "counter", help);
        for o in &s.ops {
            for (i, op) in OPERATIONS.iter().enumerate() {
                if bytes && !matches!(i, GET | PUT) {
                    continue;
                }
                let v = if bytes { o.bytes[i] } else { o.total[i] };
                f.sample(
                    &[("replica_type", o.replica_type), ("operation", op)],
                    v as f64,
                );
            }
        }
    }
}

/// A follower's families (`restore -f`).
fn render_follow(out: &mut String, f: &FollowSnapshot) {
    let labels = [
        ("output", f.output.as_str()),
        ("generation", f.generation.as_str()),
    ];
    for (name, kind, help, v) in [
        (
            "litestream_follow_wal_index",
            "gauge",
            "The WAL index the followed database is at",
            f.index as f64,
        ),
        (
            "litestream_follow_wal_offset",
            "gauge",
            "The WAL offset the followed database is at",
            f.offset as f64,
        ),
        (
            "litestream_follow_transactions_total",
            "counter",
            "Replicated transactions applied to the followed database",
            f.transactions as f64,
        ),
        (
            "litestream_follow_lag_seconds",
            "gauge",
            "Seconds since the follower last found nothing new on the replica",
            f.lag_seconds,
        ),
    ] {
        Family::new(out, name, kind, help).sample(&labels, v);
    }
}

/// The standard `process_*` families.
fn render_process(out: &mut String, p: &ProcessStats) {
    let mut fams: Vec<(&'static str, &str, &str, f64)> = vec![
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
    ];
    if let Some(max) = p.max_fds {
        fams.push((
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        ));
    }
    for (name, kind, help, v) in fams {
        Family::new(out, name, kind, help).sample(&[], v);
    }
}

/// `Ok` when every replica's lag is under `max_lag`, else one line per lagging replica. Pure.
pub(crate) fn health(s: &Snapshot, max_lag: Duration) -> std::result::Result<(), String> {
    let mut bad = String::new();
    for d in &s.dbs {
        if let Some(p) = &d.problem {
            let _ = writeln!(bad, "db {}: {p}", d.path);
        }
        for r in &d.replicas {
            if r.lag_seconds < max_lag.as_secs_f64() {
                continue;
            }
            let _ = write!(
                bad,
                "db {} replica {}: {:.1}s behind (health-max-lag {:?})",
                d.path, r.name, r.lag_seconds, max_lag
            );
            match &r.last_error {
                Some(e) => {
                    let _ = writeln!(bad, "; last error: {e}");
                }
                None => bad.push('\n'),
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// First line of `s`, at most `max` bytes (on a char boundary).
fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            dbs: vec![DbSnapshot {
                path: "/data/a \"b\".db".into(),
                problem: None,
                db_size: 8192,
                wal_size: 4152,
                shadow_wal_index: 3,
                shadow_wal_size: 4152,
                total_wal_bytes: 123456,
                sync_count: 10,
                sync_error_count: 1,
                sync_seconds: 0.25,
                checkpoints: [(2, 0, 0.5), (1, 1, 0.125), (0, 0, 0.0)],
                replicas: vec![ReplicaSnapshot {
                    name: "file".into(),
                    wal_index: 3,
                    wal_offset: 4152,
                    wal_bytes: 100,
                    validation_ok: 4,
                    validation_error: 0,
                    lag_seconds: 1.5,
                    last_error: None,
                }],
            }],
            ops: vec![OpSnapshot {
                replica_type: "file",
                total: [1, 2, 3, 4],
                bytes: [10, 20, 0, 0],
            }],
            process: Some(ProcessStats {
                cpu_seconds: 1.5,
                resident_bytes: 4096,
                virtual_bytes: 8192,
                start_time_seconds: 1_700_000_000.5,
                open_fds: 7,
                max_fds: Some(1024),
            }),
            follow: None,
        }
    }

    #[test]
    fn a_follower_renders_its_position_and_lag() {
        let f = FollowMetrics::new("/srv/r.db".into());
        f.position("0123456789abcdef", 7, 4152);
        f.applied(3);
        let now = SystemTime::now();
        f.caught_up(now);
        let s = Snapshot {
            follow: Some(f.snapshot(now + Duration::from_millis(1500))),
            ..Snapshot::default()
        };
        let text = render(&s);
        for line in [
            "# TYPE litestream_follow_lag_seconds gauge",
            "litestream_follow_wal_index{output=\"/srv/r.db\",generation=\"0123456789abcdef\"} 7",
            "litestream_follow_wal_offset{output=\"/srv/r.db\",generation=\"0123456789abcdef\"} 4152",
            "litestream_follow_transactions_total{output=\"/srv/r.db\",generation=\"0123456789abcdef\"} 3",
            "litestream_follow_lag_seconds{output=\"/srv/r.db\",generation=\"0123456789abcdef\"} 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn renders_every_family_with_help_type_and_escaped_labels() {
        let text = render(&sample());
        for line in [
            "# TYPE litestream_db_size gauge",
            r#"litestream_db_size{db="/data/a \"b\".db"} 8192"#,
            "# TYPE litestream_sync_count counter",
            r#"litestream_sync_seconds{db="/data/a \"b\".db"} 0.25"#,
            r#"litestream_checkpoint_count{db="/data/a \"b\".db",mode="RESTART"} 1"#,
            r#"litestream_checkpoint_error_count{db="/data/a \"b\".db",mode="TRUNCATE"} 0"#,
            r#"litestream_replica_lag_seconds{db="/data/a \"b\".db",name="file"} 1.5"#,
            r#"litestream_replica_validation_total{db="/data/a \"b\".db",name="file",status="ok"} 4"#,
            "# TYPE litestream_replica_validation_total counter",
            r#"litestream_replica_operation_total{replica_type="file",operation="DELETE"} 4"#,
            r#"litestream_replica_operation_bytes{replica_type="file",operation="PUT"} 20"#,
            "process_start_time_seconds 1700000000.5",
            "process_max_fds 1024",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("operation_bytes{replica_type=\"file\",operation=\"LIST\"}"));
        // Every sample line belongs to a family announced just before.
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {l}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn health_lists_each_lagging_replica() {
        let mut s = sample();
        assert_eq!(health(&s, Duration::from_secs(60)), Ok(()));
        s.dbs[0].replicas[0].lag_seconds = 75.0;
        s.dbs[0].replicas[0].last_error = Some("disk full".into());
        let mut r2 = s.dbs[0].replicas[0].clone();
        r2.name = "s3".into();
        r2.last_error = None;
        s.dbs[0].replicas.push(r2);
        let err = health(&s, Duration::from_secs(60)).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].contains("replica file: 75.0s behind")
                && lines[0].ends_with("last error: disk full")
        );
        assert!(lines[1].contains("replica s3: 75.0s behind (health-max-lag 60s)"));
    }

    #[test]
    fn lag_follows_publishes_and_syncs() {
        let m = DbMetrics::new("/a.db".into(), &["r".into()]);
        let lag = |now: u64| {
            let r = &m.replicas[0];
            lag_seconds(
                r.synced_seq.load(Ordering::SeqCst),
                m.publish_seq(),
                r.behind_since.load(Ordering::SeqCst),
                now,
            )
        };
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(lag(unix_nanos(t(5))), 0.0);
        m.published(t(10)); // seq 1
        assert_eq!(lag(unix_nanos(t(12))), 2.0);
        // The replica read seq 1, and seq 2 arrived while it uploaded.
        let seq = m.publish_seq();
        m.published(t(11));
        m.replica_synced(0, seq);
        assert_eq!(lag(unix_nanos(t(15))), 4.0, "age of publish 2");
        m.replica_synced(0, m.publish_seq());
        assert_eq!(lag(unix_nanos(t(15))), 0.0);
        m.published(t(20));
        assert_eq!(lag(unix_nanos(t(21))), 1.0);
        // Far behind: the ring forgot publish n+1, so the older time stays (overstated).
        let seq = m.publish_seq();
        for i in 0..RING + 5 {
            m.published(t(30 + i));
        }
        m.replica_synced(0, seq);
        assert_eq!(lag(unix_nanos(t(100))), 80.0);
    }

    #[test]
    fn proc_stat_parsing() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 500 10485760 300 18446744073709551615";
        let p = parse_proc_stat(stat, "cpu 1 2 3\nbtime 1700000000\n", 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(p.virtual_bytes, 10_485_760);
        assert_eq!(p.start_time_seconds, 1_700_000_005.0);
        assert!(parse_proc_stat("garbage", "", 100, 4096).is_none());
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert!(ProcessStats::read().is_some_and(|p| p.resident_bytes > 0 && p.open_fds > 0));
    }

    #[test]
    fn one_line_cuts() {
        assert_eq!(one_line("a\nb", 10), "a");
        assert_eq!(one_line("ééé", 3), "é…");
    }
}
