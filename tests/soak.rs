//! The fault-injection soak (`make soak SECONDS=N`; 60 s inside `make test`).
//!
//! A live application writes sequential ids in transactions of random sizes (now and then a
//! multi-MB one) while a seeded random schedule applies one fault per step: SIGKILL and
//! restart the daemon, SIGSTOP/SIGCONT, the application's own PASSIVE/RESTART/TRUNCATE
//! checkpoints, the application closing every connection and reopening, the file replica's
//! directory made unwritable, and the S3 proxy dropping connections, stalling or answering
//! 500/503. Before each step the daemon is asked, through `/metrics`, which committed point it
//! has synced (a db tick after that commit, then zero lag on the replica); after each step a
//! restore (alternately from the file and the S3 replica) must pass integrity_check, equal
//! the application's state at some commit, and be no older than that synced point. At the end,
//! after a graceful stop, both replicas restore to the final state. The summary prints the
//! steps per kind, restores checked, rows committed and lost, peak RSS and the seed.
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
    "file-replica-unwritable",
    "s3-connections-dropped",
    "s3-stall",
    "s3-http-500",
    "s3-http-503",
];

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
            committed: Arc::new(AtomicI64::new(0)),
            handle: None,
        };
        let (db, control, idle, stop, commits, committed) = (
            app.db.clone(),
            app.control.clone(),
            app.idle.clone(),
            app.stop.clone(),
            app.commits.clone(),
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
                for i in 0..rows as i64 {
                    insert_row(c, next + i, len);
                }
                c.execute_batch("COMMIT").expect("writer: COMMIT");
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
            let ok = wait_until(DEADLINE, || self.idle.load(Ordering::SeqCst));
            assert!(ok, "the writer did not pause");
        }
    }

    fn committed(&self) -> i64 {
        self.committed.load(Ordering::SeqCst)
    }

    fn is_commit(&self, id: i64) -> bool {
        self.commits.lock().unwrap().contains(&id)
    }

    fn finish(&mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        self.committed()
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

/// Restores `url` and checks it against the oracle. Returns the restored last id.
fn verify(
    env: &Env,
    url: &str,
    creds: &[(&str, &str)],
    app: &App,
    at_least: i64,
    what: &str,
) -> i64 {
    let out = env.fresh("soak-restore");
    let o = run_env(
        &env.root,
        &["restore", "-o", out.to_str().unwrap(), url],
        creds,
        Duration::from_secs(300),
    );
    o.assert_ok(what);
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
    assert_blobs_match_hash(&out);
    assert!(
        max >= at_least,
        "{what}: restored {max} rows, but the daemon had reported {at_least} synced before the step: {} rows lost",
        at_least - max
    );
    remove_db_files(&out);
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
    let y = format!(
        "addr: \"{addr}\"\ndbs:\n  - path: \"{db}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 400\n    max-checkpoint-page-count: 4000\n    replicas:\n      - type: file\n        name: file\n        path: \"{rep}\"\n        sync-interval: 200ms\n{s3}",
        db = env.db.display(),
        rep = env.replica.display(),
        s3 = s3.replica_yaml(SECRET_KEY, "200ms"),
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
    let mut barrier_misses = 0u64;
    let mut round: Vec<&str> = Vec::new();
    let start = Instant::now();
    let mut step = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        barrier_misses += soak.barrier(&app, &mut synced) as u64;
        let before = synced.clone();
        if round.is_empty() {
            // Every kind once per round, in a seeded order.
            round = KINDS.to_vec();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.range(0, i as u64 + 1) as usize);
            }
        }
        let kind = round.pop().unwrap();
        let hold = Duration::from_millis(rng.range(150, 1000));
        step += 1;
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
                soak.s3.proxy.set_down();
                std::thread::sleep(hold);
                soak.s3.proxy.set_up();
            }
            "s3-stall" | "s3-http-500" | "s3-http-503" => {
                soak.s3.proxy.set_fault(match kind {
                    "s3-stall" => Fault::Stall,
                    "s3-http-500" => Fault::Status(500),
                    _ => Fault::Status(503),
                });
                std::thread::sleep(hold);
                soak.s3.proxy.set_fault(Fault::None);
            }
            _ => unreachable!(),
        }
        *steps.get_mut(kind).unwrap() += 1;
        soak.sample();
        // Check one replica per step, alternating.
        let (name, url, creds): (&str, &str, &[(&str, &str)]) = if step % 2 == 0 {
            ("file", &file_url, &[])
        } else {
            ("s3", &s3_url, &creds)
        };
        let what = format!("step {step} ({kind}), {name} replica");
        let got = verify(&soak.env, url, creds, &app, before[name], &what);
        restores += 1;
        if step % 10 == 0 {
            println!(
                "  step {step}: {kind}; committed {}, restored {got} from {name} (synced before: {})",
                app.committed(),
                before[name]
            );
        }
    }

    // Graceful stop: both replicas hold the final state.
    let committed = app.finish();
    soak.sample();
    soak.daemon.take().unwrap().stop_ok();
    let mut lost = 0;
    for (name, url, creds) in [
        ("file", file_url.as_str(), &[][..]),
        ("s3", s3_url.as_str(), &creds[..]),
    ] {
        let got = verify(
            &soak.env,
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
    println!("  replica barriers missed   {barrier_misses} (no zero-lag report within 40 s)");
    println!("  peak RSS (daemon)         {} KiB", soak.peak_kb);
    assert_eq!(lost, 0);
}
