//! Row 2: the application's write throughput with the daemon replicating vs without it (same
//! db, alternating phases in one run), and beside it the same ratio with only a read lock held
//! the way Litestream v0.3 holds it (no copying at all): the floor any replicator that pins the
//! WAL with a read transaction pays. Row 3: the daemon's CPU seconds per GiB of WAL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use crate::harness::{self, Daemon, DbCfg, Gen, Metrics, GIB, MIB};
use crate::lag::err_row;
use crate::{Ctx, Met, Row};

/// A daemon for `db` → file replica `replica`, default intervals, metrics on `port`.
fn start_daemon(
    dir: &Path,
    db: &Path,
    replica: &Path,
    port: u16,
    compression: Option<&str>,
    log: &str,
) -> Daemon {
    let cfg = dir.join("litestream.yml");
    harness::write_config(
        &cfg,
        Some(port),
        &[DbCfg {
            path: db.to_path_buf(),
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![harness::file_replica("file", replica, None, compression)],
        }],
    );
    Daemon::start(&cfg, &dir.join(log))
}

/// Waits until the daemon has snapshotted every generation and uploaded all WAL.
pub fn wait_ready(d: &Daemon, replica: &Path, port: u16) -> Result<(), String> {
    let ok = harness::wait_for(Duration::from_secs(300), Duration::from_millis(50), || {
        harness::all_generations_snapshotted(replica).then_some(())
    })
    .is_some()
        && harness::wait_caught_up(port, Duration::from_secs(300));
    if ok {
        Ok(())
    } else {
        Err(format!("daemon not ready: {}", d.log_tail()))
    }
}

pub struct Writer {
    conn: Connection,
    big: bool,
    pool: Vec<Vec<u8>>,
    i: u64,
}

impl Writer {
    pub fn new(db: &Path, big: bool) -> Writer {
        let mut g = Gen::new(7);
        let pool = if big {
            (0..16).map(|i| g.row(i, 64 * 1024)).collect()
        } else {
            Vec::new()
        };
        Writer {
            conn: harness::open_app(db),
            big,
            pool,
            i: 0,
        }
    }

    /// One transaction: a ~100-byte text row, or a 64 KiB row (alternately random and text).
    pub fn commit(&mut self) {
        self.i += 1;
        let mut st = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO t (id, v) VALUES (?1, ?2)")
            .unwrap();
        if self.big {
            let v = &self.pool[(self.i % self.pool.len() as u64) as usize];
            st.execute(params![(self.i % 256) as i64, v]).unwrap();
        } else {
            let v = format!("small row {:>12} the quick brown fox jumps over the lazy dog, lorem ipsum dolor sit amet", self.i);
            st.execute(params![(self.i % 100_000) as i64, v.into_bytes()])
                .unwrap();
        }
    }

    /// Commits for `d`; returns transactions per second.
    pub fn run_for(&mut self, d: Duration) -> (u64, Duration) {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < d {
            self.commit();
            n += 1;
        }
        (n, start.elapsed())
    }
}

/// What runs beside the writer in the "with" phases.
#[derive(Clone, Copy, PartialEq)]
enum Beside {
    Daemon,
    /// Litestream v0.3's lock alone: a read transaction held all the time, released once a
    /// second for a PASSIVE checkpoint (its default monitor-interval and min page count).
    ReadLockOnly,
}

/// Holds v0.3's read lock on `db` until dropped.
struct ReadLockHolder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadLockHolder {
    fn start(db: PathBuf) -> ReadLockHolder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let c = harness::open_app(&db);
            c.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
            while !flag.load(Ordering::SeqCst) {
                c.execute_batch("BEGIN").unwrap();
                c.query_row("SELECT COUNT(1) FROM sqlite_master", [], |_| Ok(()))
                    .unwrap();
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(1) && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                c.execute_batch("ROLLBACK").unwrap();
                c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .unwrap();
            }
        });
        ReadLockHolder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ReadLockHolder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn overhead_one(ctx: &Ctx, big: bool, beside: Beside) -> Result<(f64, f64, usize, f64), String> {
    let dir = ctx.dir(match (big, beside) {
        (true, _) => "overhead-64k",
        (false, Beside::Daemon) => "overhead-small",
        (false, Beside::ReadLockOnly) => "overhead-small-readlock",
    });
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let port = harness::free_port();
    let mut w = Writer::new(&db, big);
    let (pairs, phase) = if ctx.quick {
        (2, Duration::from_millis(1500))
    } else {
        (4, Duration::from_secs(5))
    };
    // Warm-up: the table reaches its steady size before anything is measured.
    w.run_for(if ctx.quick {
        phase
    } else {
        Duration::from_secs(3)
    });
    let (mut on_n, mut on_t, mut off_n, mut off_t) = (0u64, 0f64, 0u64, 0f64);
    let mut on_cpu = 0f64;
    for p in 0..pairs {
        // ABBA order: off,on,on,off,… so drift over the run cancels.
        let order = if p % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            if with && beside == Beside::ReadLockOnly {
                let holder = ReadLockHolder::start(db.clone());
                std::thread::sleep(Duration::from_millis(500));
                let (n, t) = w.run_for(phase);
                drop(holder);
                on_n += n;
                on_t += t.as_secs_f64();
            } else if with {
                let d = start_daemon(&dir, &db, &replica, port, None, &format!("daemon-{p}.log"));
                wait_ready(&d, &replica, port)?;
                std::thread::sleep(Duration::from_millis(500));
                let c0 = d.cpu_seconds();
                let (n, t) = w.run_for(phase);
                on_cpu += d.cpu_seconds() - c0;
                if !harness::wait_caught_up(port, Duration::from_secs(120)) {
                    return Err(format!("daemon fell behind: {}", d.log_tail()));
                }
                d.stop();
                on_n += n;
                on_t += t.as_secs_f64();
            } else {
                std::thread::sleep(Duration::from_millis(500));
                let (n, t) = w.run_for(phase);
                off_n += n;
                off_t += t.as_secs_f64();
            }
        }
    }
    Ok((
        on_n as f64 / on_t,
        off_n as f64 / off_t,
        pairs,
        on_cpu / on_t,
    ))
}

pub fn overhead(ctx: &mut Ctx) {
    for (big, beside) in [
        (false, Beside::Daemon),
        (false, Beside::ReadLockOnly),
        (true, Beside::Daemon),
    ] {
        let metric = match (big, beside) {
            (true, _) => "application throughput with daemon / without (64 KiB rows)",
            (false, Beside::Daemon) => "application throughput with daemon / without (small rows)",
            (false, Beside::ReadLockOnly) => {
                "application throughput with only v0.3's read lock held / without (small rows)"
            }
        };
        match overhead_one(ctx, big, beside) {
            Ok((on, off, pairs, daemon_cores)) => {
                let ratio = on / off;
                let phase = if ctx.quick { "1.5 s" } else { "5 s" };
                let what = match beside {
                    Beside::Daemon => "the daemon (default intervals, file replica, gzip; started before and stopped after its phase, measured once it has caught up)",
                    Beside::ReadLockOnly => "no daemon but a second connection doing what Litestream v0.3 does to the WAL, minus all copying: a read transaction held throughout, released once a second for `PRAGMA wal_checkpoint(PASSIVE)` (the floor for any replicator that pins the WAL; information only)",
                };
                let w = format!(
                    "one writer thread, one autocommit `INSERT OR REPLACE` per transaction ({}), back to back; {} phases of {phase} with {what} alternating ABBA with {} phases without it, same db",
                    if big {
                        "64 KiB row, alternately random and text, ids cycling over 256"
                    } else {
                        "~100-byte text row, ids cycling over 100,000"
                    },
                    pairs,
                    pairs
                );
                let value = match beside {
                    Beside::Daemon => format!(
                        "{ratio:.3} ({on:.0} vs {off:.0} tx/s; the daemon used {:.0}% of a core meanwhile)",
                        daemon_cores * 100.0
                    ),
                    Beside::ReadLockOnly => format!("{ratio:.3} ({on:.0} vs {off:.0} tx/s)"),
                };
                let headline = !big && beside == Beside::Daemon;
                ctx.push(Row::new(
                    metric,
                    value,
                    if headline { "≥ 0.98" } else { "–" },
                    if headline { "0.94–0.96" } else { "–" },
                    if headline {
                        Row::met_if(ratio >= 0.98)
                    } else {
                        Met::Na
                    },
                    w,
                ));
            }
            Err(e) => err_row(ctx, metric, &e),
        }
    }
}

fn cpu_one(ctx: &Ctx, compression: &str) -> Result<(f64, f64, f64, String), String> {
    let dir = ctx.dir(&format!("cpu-{compression}"));
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let port = harness::free_port();
    let conn = harness::open_app(&db);
    conn.execute("INSERT INTO t (v) VALUES (x'00')", [])
        .unwrap();
    let d = start_daemon(&dir, &db, &replica, port, Some(compression), "daemon.log");
    wait_ready(&d, &replica, port)?;
    harness::settle();
    let m0 = Metrics::scrape(port).ok_or("no metrics")?;
    let cpu0 = d.cpu_seconds();
    let threads0 = harness::thread_cpu(d.pid);
    let target = if ctx.quick { 128.0 * MIB } else { GIB };
    let mut g = Gen::new(3);
    let pool: Vec<Vec<u8>> = (0..32).map(|i| g.row(i, 64 * 1024)).collect();
    let start = Instant::now();
    let mut written = 0f64;
    let mut i = 0u64;
    let mut conn = conn;
    while written < target {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT OR REPLACE INTO t (id, v) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..16 {
                i += 1;
                st.execute(params![(i % 1024) as i64, &pool[(i % 32) as usize]])
                    .unwrap();
                written += 64.0 * 1024.0;
            }
        }
        tx.commit().unwrap();
    }
    if !harness::wait_caught_up(port, Duration::from_secs(600)) {
        return Err(format!("daemon did not catch up: {}", d.log_tail()));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = d.cpu_seconds();
    let threads = harness::thread_cpu_delta(&threads0, &harness::thread_cpu(d.pid));
    let m1 = Metrics::scrape(port).ok_or("no metrics")?;
    d.stop();
    let wal = m1.sum("litestream_total_wal_bytes") - m0.sum("litestream_total_wal_bytes");
    Ok((cpu1 - cpu0, wal, elapsed, threads))
}

pub fn cpu_per_gib(ctx: &mut Ctx) {
    for c in ["gzip", "lz4"] {
        let metric = format!("CPU s per GiB WAL ({c})");
        match cpu_one(ctx, c) {
            Ok((cpu, wal, elapsed, threads)) => {
                let per = cpu / (wal / GIB);
                let w = format!(
                    "{:.0} MiB of WAL (transactions of 16 × 64 KiB rows, alternately random and text, `INSERT OR REPLACE` over 1,024 ids) written as fast as possible, replicated to a file replica ({c}, default intervals); daemon utime+stime from /proc/PID/stat from before the first write to fully caught up ({elapsed:.1} s); WAL bytes from litestream_total_wal_bytes",
                    wal / MIB
                );
                ctx.push(Row::new(
                    &metric,
                    format!(
                        "{per:.2} s/GiB ({cpu:.2} s for {:.2} GiB; by thread: {threads})",
                        wal / GIB
                    ),
                    "≤ 3",
                    "10.4–11.4 (its lz4)",
                    Row::met_if(per <= 3.0),
                    w,
                ));
            }
            Err(e) => err_row(ctx, &metric, &e),
        }
    }
}
