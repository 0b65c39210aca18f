//! The fault-injection soak (`make soak SECONDS=N`; 60 s inside `make test`).
//!
//! A live application writes sequential ids in transactions of random sizes (now and then a
//! multi-MB one) while a seeded random schedule applies one fault per step: SIGKILL and
//! restart the daemon, SIGSTOP/SIGCONT, the application's own PASSIVE/RESTART/TRUNCATE
//! checkpoints, the application closing every connection and reopening, the db file replaced
//! by a copy or deleted and put back (a new generation each, from the file now live), the file replica's
//! directory made unwritable, and the S3 proxy dropping connections, stalling or answering
//! 500/503. Before each step the daemon is asked, through `/metrics`, which committed point it
//! has synced (a db tick after that commit, then zero lag on the replica); after each step a
//! restore (alternately from the file and the S3 replica, into tmpfs when there is one) must
//! pass integrity_check, hold exactly ids 1..=N for a committed N with every row equal to what
//! the writer stored (columns, blob length and CRC-32, recorded per row as it was written), and
//! be no older than that synced point. At the end, after a graceful stop, both replicas restore
//! to the final state. The summary prints the steps per kind, restores checked, rows committed
//! and lost, peak RSS and the seed, plus evidence that the replica faults met syncs (sync
//! errors the daemon logged in the window, S3 requests that got the fault) and the time per
//! phase of a step, and the generations started with their logged reasons.
//!
//! `SOAK_SECONDS` (default 60) and `SOAK_SEED` (default: from the clock) drive it.

mod common;
mod s3_server;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rusqlite::Connection;
use s3_server::*;

const KINDS: &[&str] = &[
    "sigkill-restart",
    "sigstop-sigcont",
    "app-checkpoint-passive",
    "app-checkpoint-restart",
    "app-checkpoint-truncate",
    "app-close-reopen",
    "db-replaced",
    "db-deleted-recreated",
    "file-replica-unwritable",
    "s3-connections-dropped",
    "s3-stall",
    "s3-http-500",
    "s3-http-503",
];

/// Both replicas' sync-interval.
const SYNC_INTERVAL: &str = "200ms";
/// Both replicas' snapshot-interval (see the config in `soak`).
const SNAPSHOT_INTERVAL: &str = "15s";

/// Writer control: run, pause (for a sync barrier), or close every connection.
const RUN: u8 = 0;
const PAUSE: u8 = 1;
const CLOSED: u8 = 2;

struct App {
    db: PathBuf,
    control: Arc<AtomicU8>,
    /// The writer is between transactions and honours `control` (paused or closed).
    idle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The last id of every committed transaction: the states a restore may equal.
    commits: Arc<Mutex<BTreeSet<i64>>>,
    /// What the writer stored in row `id` at index `id - 1`, for every committed row.
    rows: Arc<Mutex<Vec<RowSig>>>,
    committed: Arc<AtomicI64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl App {
    fn start(db: &Path, seed: u64) -> App {
        let app = App {
            db: db.to_path_buf(),
            control: Arc::new(AtomicU8::new(RUN)),
            idle: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            commits: Arc::new(Mutex::new(BTreeSet::from([0]))),
            rows: Arc::new(Mutex::new(Vec::new())),
            committed: Arc::new(AtomicI64::new(0)),
            handle: None,
        };
        let (db, control, idle, stop, commits, sigs, committed) = (
            app.db.clone(),
            app.control.clone(),
            app.idle.clone(),
            app.stop.clone(),
            app.commits.clone(),
            app.rows.clone(),
            app.committed.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0xa5a5);
            let mut conn: Option<Connection> = Some(open_app(&db));
            let mut next = 1i64;
            while !stop.load(Ordering::SeqCst) {
                match control.load(Ordering::SeqCst) {
                    RUN => {}
                    CLOSED => {
                        conn = None;
                        idle.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    _ => {
                        idle.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                }
                idle.store(false, Ordering::SeqCst);
                let c = conn.get_or_insert_with(|| open_app(&db));
                let big = rng.range(0, 1500) == 0;
                let (rows, len) = if big {
                    (rng.range(2, 5), 1 << 20)
                } else {
                    (rng.range(1, 5), rng.range(50, 1500) as usize)
                };
                // Like any application beside a RESTART/TRUNCATE checkpoint (which holds
                // the write lock while it waits for readers), retry a busy BEGIN.
                let mut tries = 0;
                while let Err(e) = c.execute_batch("BEGIN IMMEDIATE") {
                    tries += 1;
                    assert!(tries < 20, "writer: BEGIN kept failing: {e}");
                }
                let written: Vec<RowSig> = (0..rows as i64)
                    .map(|i| insert_row_sig(c, next + i, len))
                    .collect();
                c.execute_batch("COMMIT").expect("writer: COMMIT");
                // Rows first, then the commit: a committed id always has its rows' oracle.
                sigs.lock().unwrap().extend(written);
                next += rows as i64;
                commits.lock().unwrap().insert(next - 1);
                committed.store(next - 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(rng.range(10, 40)));
            }
        });
        App {
            handle: Some(handle),
            ..app
        }
    }

    /// Sets the writer's mode and waits until it is between transactions.
    fn set(&self, mode: u8) {
        self.idle.store(false, Ordering::SeqCst);
        self.control.store(mode, Ordering::SeqCst);
        if mode != RUN {
            // Polled every millisecond, not at wait_until's 50 ms: the writer is between
            // transactions within a few ms, and every step pauses it for its barrier.
            let start = Instant::now();
            while !self.idle.load(Ordering::SeqCst) {
                assert!(start.elapsed() < DEADLINE, "the writer did not pause");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn committed(&self) -> i64 {
        self.committed.load(Ordering::SeqCst)
    }

    fn is_commit(&self, id: i64) -> bool {
        self.commits.lock().unwrap().contains(&id)
    }

    /// What the writer stored in rows 1..=`last` (all committed).
    fn rows_up_to(&self, last: i64) -> Vec<RowSig> {
        self.rows.lock().unwrap()[..last as usize].to_vec()
    }

    fn finish(&mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.committed()
    }
}

/// What the writer stored in one row: the `n` and `h` columns, and the blob's length and
/// CRC-32. A restored row must match it exactly. The CRC comes from flate2 (an optimised
/// dependency, like SQLite), so checking every byte of a db of tens of MB after each step costs
/// milliseconds, where hashing the blobs in this debug-built test took most of a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowSig {
    n: i64,
    h: i64,
    len: usize,
    crc: u32,
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(b);
    c.sum()
}

/// The row `insert_row` writes (the same deterministic blob and hash), and its signature.
fn insert_row_sig(c: &Connection, id: i64, len: usize) -> RowSig {
    let b = Rng::new(id as u64).bytes(len);
    let h = hash_bytes(&b) as i64;
    c.execute(
        "INSERT INTO t (id, n, h, b) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![id, 0i64, h, b],
    )
    .unwrap();
    RowSig {
        n: 0,
        h,
        len,
        crc: crc32(&b),
    }
}

/// One scrape, as `name{labels} → value` for the lines we read.
fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        return None;
    }
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse() {
                out.insert(k.to_string(), v);
            }
        }
    }
    Some(out)
}

fn metric(m: &BTreeMap<String, f64>, name: &str, replica: Option<&str>) -> Option<f64> {
    m.iter()
        .find(|(k, _)| {
            k.starts_with(&format!("{name}{{"))
                && replica.is_none_or(|r| k.contains(&format!("name=\"{r}\"")))
        })
        .map(|(_, v)| *v)
}

struct Soak {
    env: Env,
    s3: S3Server,
    addr: String,
    daemon: Option<Daemon>,
    peak_kb: u64,
    restarts: u64,
}

impl Soak {
    fn start_daemon(&mut self) {
        let mut d = self.env.start(&format!("daemon-{}", self.restarts));
        self.restarts += 1;
        let ok = wait_until(DEADLINE, || {
            d.assert_alive();
            scrape(&self.addr).is_some()
        });
        assert!(ok, "metrics never came up");
        self.daemon = Some(d);
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon running")
    }

    /// How many times the running daemon has logged a failed sync of `replica`.
    fn sync_errors(&self, replica: &str) -> usize {
        let needle = format!(" replica={replica} ");
        self.daemon
            .as_ref()
            .map(|d| {
                d.log_text()
                    .lines()
                    .filter(|l| l.contains("msg=\"replica sync error\"") && l.contains(&needle))
                    .count()
            })
            .unwrap_or(0)
    }

    fn sample(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.assert_alive();
            if let Some(v) = d.sample_hwm() {
                self.peak_kb = self.peak_kb.max(v);
            }
        }
    }

    /// The committed point each replica has synced, as the daemon reports it: with the
    /// writer paused at commit C, a db tick that began after C (two ticks, no tick error)
    /// and then zero lag on a replica mean C is on that replica. Waits up to 40 s per
    /// replica; a replica that does not report in time keeps its earlier point.
    fn barrier(&mut self, app: &App, synced: &mut BTreeMap<&'static str, i64>) -> usize {
        app.set(PAUSE);
        let c = app.committed();
        let start = Instant::now();
        let mut base: Option<(f64, f64)> = None;
        let mut pending: Vec<&'static str> = vec!["file", "s3"];
        while !pending.is_empty() && start.elapsed() < Duration::from_secs(40) {
            self.sample();
            let Some(m) = scrape(&self.addr) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let ticks = metric(&m, "litestream_sync_count", None).unwrap_or(0.0);
            let errors = metric(&m, "litestream_sync_error_count", None).unwrap_or(0.0);
            match base {
                Some((t0, e0)) if errors == e0 && ticks >= t0 + 2.0 => {
                    pending.retain(|r| {
                        let caught_up =
                            metric(&m, "litestream_replica_lag_seconds", Some(r)) == Some(0.0);
                        if caught_up {
                            synced.insert(r, c);
                        }
                        !caught_up
                    });
                }
                Some((_, e0)) if errors != e0 => base = Some((ticks, errors)),
                None => base = Some((ticks, errors)),
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        app.set(RUN);
        pending.len()
    }
}

/// Where restores go: tmpfs when there is one (a restore writes the whole db, and the disk
/// is shared with builds), else the system temp dir. Removed on drop.
struct Restores {
    dir: tempfile::TempDir,
    n: u64,
}

impl Restores {
    fn new() -> Restores {
        let b = tempfile::Builder::new()
            .prefix("litestream-it-soak-restore-")
            .to_owned();
        let dir = b
            .tempdir_in("/dev/shm")
            .or_else(|_| b.tempdir())
            .expect("restore dir");
        Restores { dir, n: 0 }
    }

    fn fresh(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.path().join(format!("restore-{}.db", self.n))
    }
}

/// Time spent per phase, summed over the run (printed, never asserted).
#[derive(Default)]
struct Phases {
    barrier: Duration,
    fault: Duration,
    restore: Duration,
    check: Duration,
}

/// Restores `url` and checks it against the oracle: integrity_check, ids exactly 1..=N for a
/// committed N, every row equal to what the writer stored, and N at least `at_least`.
/// Returns N.
#[allow(clippy::too_many_arguments)]
fn verify(
    env: &Env,
    restores: &mut Restores,
    phases: &mut Phases,
    url: &str,
    creds: &[(&str, &str)],
    app: &App,
    at_least: i64,
    what: &str,
) -> i64 {
    let t = Instant::now();
    let out = restores.fresh();
    let o = run_env(
        &env.root,
        &["restore", "-o", out.to_str().unwrap(), url],
        creds,
        Duration::from_secs(300),
    );
    o.assert_ok(what);
    phases.restore += t.elapsed();
    let t = Instant::now();
    assert_eq!(integrity_check(&out), "ok", "{what}: integrity_check");
    let (count, min, max) = id_summary(&out);
    assert!(
        count == max && (count == 0 || min == 1),
        "{what}: restored ids are not a prefix: count {count}, min {min}, max {max}"
    );
    assert!(
        app.is_commit(max),
        "{what}: restored state (ids 1..={max}) is not any committed state"
    );
    let expected = app.rows_up_to(max);
    let c = open_existing(&out);
    let mut st = c.prepare("SELECT id, n, h, b FROM t ORDER BY id").unwrap();
    let mut rows = st.query([]).unwrap();
    let mut seen = 0usize;
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        assert_eq!(id, seen as i64 + 1, "{what}: ids are not 1..={max}");
        let b = r
            .get_ref(3)
            .unwrap()
            .as_blob()
            .unwrap_or_else(|e| panic!("{what}: row {id}: b is not a blob: {e}"));
        let got = RowSig {
            n: r.get(1).unwrap(),
            h: r.get(2).unwrap(),
            len: b.len(),
            crc: crc32(b),
        };
        assert_eq!(
            got, expected[seen],
            "{what}: row {id} differs from what the application wrote"
        );
        seen += 1;
    }
    assert_eq!(seen as i64, max, "{what}: rows read back");
    drop(rows);
    drop(st);
    drop(c);
    assert!(
        max >= at_least,
        "{what}: restored {max} rows, but the daemon had reported {at_least} synced before the step: {} rows lost",
        at_least - max
    );
    remove_db_files(&out);
    phases.check += t.elapsed();
    max
}

#[test]
fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    println!("soak: {seconds} s, seed {seed} (replay: SOAK_SEED={seed})");
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("soak");
    let s3 = S3Server::start(&env.root.join("s3"));
    let addr = format!("127.0.0.1:{}", free_port());
    // Snapshots every SNAPSHOT_INTERVAL: without them a restore replays every WAL segment
    // since the generation began, and restores grew from under a second to several seconds
    // over a 600 s run. With them a restore is a recent snapshot plus up to that many seconds
    // of segments (still many indexes and segments), and snapshots are taken under faults too.
    let y = format!(
        "addr: \"{addr}\"\ndbs:\n  - path: \"{db}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 400\n    max-checkpoint-page-count: 4000\n    replicas:\n      - type: file\n        name: file\n        path: \"{rep}\"\n        sync-interval: {SYNC_INTERVAL}\n        snapshot-interval: {SNAPSHOT_INTERVAL}\n{s3}        snapshot-interval: {SNAPSHOT_INTERVAL}\n",
        db = env.db.display(),
        rep = env.replica.display(),
        s3 = s3.replica_yaml(SECRET_KEY, SYNC_INTERVAL),
    );
    fs::write(&env.config, y).unwrap();
    drop(create_app_db(&env.db, 4096));
    let mut app = App::start(&env.db, seed);
    let mut soak = Soak {
        env,
        s3,
        addr,
        daemon: None,
        peak_kb: 0,
        restarts: 0,
    };
    soak.start_daemon();
    let creds = [
        ("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY),
        ("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let file_url = soak.env.replica_url();
    let s3_url = soak.s3.url();

    let mut rng = Rng::new(seed);
    let mut synced: BTreeMap<&'static str, i64> = BTreeMap::from([("file", 0), ("s3", 0)]);
    let mut steps: BTreeMap<&str, u64> = KINDS.iter().map(|k| (*k, 0)).collect();
    let mut restores = 0u64;
    let mut restores_dir = Restores::new();
    let mut phases = Phases::default();
    // S3 requests that met a stall or an injected 500/503, per kind: evidence that the
    // windows overlapped the daemon's syncs.
    let mut faulted: BTreeMap<&str, u64> = BTreeMap::new();
    // Replica-fault steps during which the daemon logged a failed sync of that replica.
    let mut failed_syncs: BTreeMap<&str, u64> = BTreeMap::new();
    // S3 faults held past the client's retries, and how many of them failed a sync.
    let (mut long_steps, mut long_failed) = (0u64, 0u64);
    let mut barrier_misses = 0u64;
    let mut round: Vec<&str> = Vec::new();
    let start = Instant::now();
    let mut step = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let t = Instant::now();
        barrier_misses += soak.barrier(&app, &mut synced) as u64;
        phases.barrier += t.elapsed();
        let t = Instant::now();
        let before = synced.clone();
        if round.is_empty() {
            // Every kind once per round, in a seeded order.
            round = KINDS.to_vec();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.range(0, i as u64 + 1) as usize);
            }
        }
        let kind = round.pop().unwrap();
        // The replica a fault of this kind is aimed at, and its sync errors so far.
        let target = match kind {
            "file-replica-unwritable" => Some("file"),
            k if k.starts_with("s3-") => Some("s3"),
            _ => None,
        };
        let errors_before = target.map(|r| soak.sync_errors(r));
        // How long a fault lasts: at least 300 ms, i.e. more than a sync-interval plus a
        // monitor tick, so every replica fault meets at least one sync attempt (and a
        // SIGSTOP several ticks), and under a second, so the run spends its time on steps.
        // The S3 client retries a failed request itself (waits of 0.4, 0.8, 1.6, 3.2 s,
        // ±25%), so a short S3 fault only meets those retries; one S3 fault in 16 lasts
        // 8-9 s, past them, so the sync fails and the replica's own error, backoff and
        // resume path runs too (a stall holds one request for the whole window instead).
        let long = target == Some("s3") && rng.range(0, 16) == 0;
        let hold = Duration::from_millis(if long {
            rng.range(8000, 9000)
        } else {
            rng.range(300, 900)
        });
        step += 1;
        long_steps += long as u64;
        match kind {
            "sigkill-restart" => {
                std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
                soak.sample();
                soak.daemon.take().unwrap().kill();
                std::thread::sleep(Duration::from_millis(rng.range(0, 500)));
                soak.start_daemon();
            }
            "sigstop-sigcont" => {
                soak.daemon().signal(libc::SIGSTOP);
                std::thread::sleep(hold);
                soak.daemon().signal(libc::SIGCONT);
            }
            "app-checkpoint-passive" | "app-checkpoint-restart" | "app-checkpoint-truncate" => {
                let mode = kind.rsplit('-').next().unwrap().to_uppercase();
                std::thread::sleep(Duration::from_millis(rng.range(0, 500)));
                let c = open_app(&soak.env.db);
                // Shorter than the writer's: this is the one that gives up on a busy db.
                c.busy_timeout(Duration::from_secs(1)).unwrap();
                let _: (i64, i64, i64) = c
                    .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .unwrap_or_else(|e| panic!("app checkpoint {mode}: {e}"));
            }
            "app-close-reopen" => {
                app.set(CLOSED);
                std::thread::sleep(hold);
                app.set(RUN);
            }
            "db-replaced" | "db-deleted-recreated" => {
                // The operator swaps the db under the daemon: a consistent copy of it (same
                // rows, so the oracle still holds; other pages) moved over it, or the db
                // deleted and the copy put in its place a moment later. The app is closed
                // meanwhile, as SQLite requires for a file swap. The stale -wal and -shm go
                // first: the daemon's connection keeps its descriptors of them, and a -wal
                // left beside the new file would be replayed into it by SQLite.
                app.set(CLOSED);
                let db = soak.env.db.clone();
                let copy = soak.env.root.join("swap.db");
                let _ = fs::remove_file(&copy);
                open_app(&db)
                    .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
                    .unwrap_or_else(|e| panic!("{kind}: VACUUM INTO: {e}"));
                for sibling in ["-wal", "-shm"] {
                    let _ = fs::remove_file(format!("{}{sibling}", db.display()));
                }
                if kind == "db-deleted-recreated" {
                    fs::remove_file(&db).unwrap();
                    std::thread::sleep(hold);
                }
                fs::rename(&copy, &db).unwrap();
                app.set(RUN);
            }
            "file-replica-unwritable" => {
                // A file where the directory was: every write fails, even as root.
                let moved = soak.env.root.join("replica.moved");
                fs::rename(&soak.env.replica, &moved).unwrap();
                fs::write(&soak.env.replica, b"in the way").unwrap();
                std::thread::sleep(hold);
                fs::remove_file(&soak.env.replica).unwrap();
                fs::rename(&moved, &soak.env.replica).unwrap();
            }
            "s3-connections-dropped" => {
                // Refused connections are not recorded as requests, so no count here.
                soak.s3.proxy.set_down();
                std::thread::sleep(hold);
                soak.s3.proxy.set_up();
            }
            "s3-stall" | "s3-http-500" | "s3-http-503" => {
                let before = soak.s3.proxy.requests().len();
                soak.s3.proxy.set_fault(match kind {
                    "s3-stall" => Fault::Stall,
                    "s3-http-500" => Fault::Status(500),
                    _ => Fault::Status(503),
                });
                std::thread::sleep(hold);
                soak.s3.proxy.set_fault(Fault::None);
                let n = soak.s3.proxy.requests().len() - before;
                *faulted.entry(kind).or_default() += n as u64;
            }
            _ => unreachable!(),
        }
        *steps.get_mut(kind).unwrap() += 1;
        phases.fault += t.elapsed();
        soak.sample();
        // Check one replica per step, alternating.
        let (name, url, creds): (&str, &str, &[(&str, &str)]) = if step.is_multiple_of(2) {
            ("file", &file_url, &[])
        } else {
            ("s3", &s3_url, &creds)
        };
        let what = format!("step {step} ({kind}), {name} replica");
        let got = verify(
            &soak.env,
            &mut restores_dir,
            &mut phases,
            url,
            creds,
            &app,
            before[name],
            &what,
        );
        restores += 1;
        // Counted after the restore: a stalled or refused request may fail (and be logged)
        // only when the window ends, or after the client's own retries.
        if let (Some(r), Some(n)) = (target, errors_before) {
            if soak.sync_errors(r) > n {
                *failed_syncs.entry(kind).or_default() += 1;
                long_failed += long as u64;
            }
        }
        if step.is_multiple_of(10) {
            println!(
                "  step {step} at {:.0} s: {kind}; committed {}, restored {got} from {name} (synced before: {})",
                start.elapsed().as_secs_f64(),
                app.committed(),
                before[name]
            );
        }
    }

    // Graceful stop: both replicas hold the final state.
    let elapsed = start.elapsed();
    let committed = app.finish();
    let db_bytes = fs::metadata(&soak.env.db).map(|m| m.len()).unwrap_or(0);
    soak.sample();
    soak.daemon.take().unwrap().stop_ok();
    let mut lost = 0;
    for (name, url, creds) in [
        ("file", file_url.as_str(), &[][..]),
        ("s3", s3_url.as_str(), &creds[..]),
    ] {
        let got = verify(
            &soak.env,
            &mut restores_dir,
            &mut phases,
            url,
            creds,
            &app,
            committed,
            &format!("final, {name} replica"),
        );
        restores += 1;
        lost += committed - got;
    }
    println!("soak summary (seed {seed}, {seconds} s):");
    for (k, n) in &steps {
        println!("  {k:<26} {n}");
    }
    println!(
        "  fault steps               {}",
        steps.values().sum::<u64>()
    );
    println!("  restores checked          {restores}");
    println!("  rows committed            {committed}");
    println!("  rows lost                 {lost}");
    println!("  daemon restarts           {}", soak.restarts - 1);
    // Every generation is a full snapshot upload: count them, each with its logged reason.
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut logs: Vec<PathBuf> = fs::read_dir(&soak.env.root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in &logs {
        for line in fs::read_to_string(log).unwrap_or_default().lines() {
            if !line.contains("msg=\"new generation\"") {
                continue;
            }
            let reason = line
                .split_once("reason=")
                .map(|(_, r)| r.trim_matches('"').to_string())
                .unwrap_or_default();
            assert!(
                !reason.is_empty(),
                "a new generation without a reason: {line}"
            );
            *reasons.entry(reason).or_default() += 1;
        }
    }
    let gens = generations(&soak.env.replica).len();
    println!(
        "  generations               {gens} in the file replica, {} logged:",
        reasons.values().sum::<u64>()
    );
    for (reason, n) in &reasons {
        println!("    {n:>4}  {reason}");
    }
    println!("  replica barriers missed   {barrier_misses} (no zero-lag report within 40 s)");
    println!("  peak RSS (daemon)         {} KiB", soak.peak_kb);
    println!(
        "  final db size             {:.1} MiB",
        db_bytes as f64 / 1048576.0
    );
    println!(
        "  s3 requests faulted       {}",
        faulted
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  replica faults that failed a sync {}",
        steps
            .iter()
            .filter(|(k, _)| **k == "file-replica-unwritable" || k.starts_with("s3-"))
            .map(|(k, n)| format!("{k} {}/{n}", failed_syncs.get(k).unwrap_or(&0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  long S3 faults (8-9 s)    {long_steps}, {long_failed} failed a sync");
    // Where the time went, per step (the two final restores count under restore/check).
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / step.max(1) as f64;
    println!(
        "  ms per step               {:.0} in {:.0} s: barrier {:.0}, fault {:.0}, restore {:.0}, check {:.0}",
        elapsed.as_secs_f64() * 1000.0 / step.max(1) as f64,
        elapsed.as_secs_f64(),
        per(phases.barrier),
        per(phases.fault),
        per(phases.restore),
        per(phases.check),
    );
    assert_eq!(lost, 0);
}
