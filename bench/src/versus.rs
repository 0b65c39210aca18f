//! Sections 9–12: the application beside no daemon, beside ours and beside Litestream v0.3.13,
//! in the same run (issue 23). Every daemon runs at its defaults against a file replica and
//! starts fresh for its phase (no metadata dir, empty replica), and is measured once it has
//! snapshotted and caught up. Phases run in ABBA order (alone, ours, v0.3.13, v0.3.13, ours,
//! alone, …) so drift over the run cancels; each figure is the median of its side's phases.
//! When v0.3.13 cannot be had, its column says why and its phases are left out.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use crate::app::Writer;
use crate::harness::{self, Daemon, DbCfg, Metrics, GIB, MIB};
use crate::lag::err_row;
use crate::lag::{describe, lag_file_bin, notes, Lags};
use crate::{Ctx, Met, Row};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Side {
    Alone,
    Ours,
    V0313,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Alone => "alone",
            Side::Ours => "ours",
            Side::V0313 => "v0313",
        }
    }
}

/// The sides this run can measure: v0.3.13 only if its binary is there.
pub fn sides(ctx: &Ctx, alone: bool) -> Vec<Side> {
    let mut v = Vec::new();
    if alone {
        v.push(Side::Alone);
    }
    v.push(Side::Ours);
    if ctx.v0313.is_ok() {
        v.push(Side::V0313);
    }
    v
}

/// `blocks` × (the sides, then the sides reversed): A B C C B A …
pub fn abba(sides: &[Side], blocks: usize) -> Vec<Side> {
    let mut v = Vec::new();
    for _ in 0..blocks {
        v.extend(sides.iter().copied());
        v.extend(sides.iter().rev().copied());
    }
    v
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The v0.3.13 column when it was not measured.
pub fn v0313_absent(ctx: &Ctx) -> String {
    match &ctx.v0313 {
        Ok(_) => "not measured".into(),
        Err(e) => format!("unavailable: {e}"),
    }
}

/// Waits until `side`'s daemon has copied everything. Ours: [`harness::wait_caught_up`].
/// v0.3.13's `litestream_shadow_wal_size` keeps the size of an earlier WAL index after the
/// shadow WAL moves on, so for it: replica index = shadow index, and the replica position and
/// `litestream_total_wal_bytes` unchanged for 2.5 s (more than its 1 s monitor plus 1 s sync).
pub fn wait_caught_up(side: Side, port: u16, deadline: Duration) -> bool {
    if side != Side::V0313 {
        return harness::wait_caught_up(port, deadline);
    }
    let mut since: Option<(Vec<f64>, Instant)> = None;
    harness::wait_for(deadline, Duration::from_millis(100), || {
        let m = Metrics::scrape(port)?;
        let idx = m.all("litestream_replica_wal_index");
        let shadow = m.sum("litestream_shadow_wal_index");
        if idx.is_empty() || idx.iter().any(|(_, v)| *v != shadow) {
            since = None;
            return None;
        }
        let key = vec![
            shadow,
            m.sum("litestream_replica_wal_offset"),
            m.sum("litestream_total_wal_bytes"),
        ];
        match &since {
            Some((k, at)) if *k == key => {
                (at.elapsed() >= Duration::from_millis(2500)).then_some(())
            }
            _ => {
                since = Some((key, Instant::now()));
                None
            }
        }
    })
    .is_some()
}

/// A daemon running for one phase.
pub struct Running {
    pub side: Side,
    pub daemon: Daemon,
    pub port: u16,
    replica: PathBuf,
    db: PathBuf,
}

impl Running {
    pub fn cpu(&self) -> f64 {
        self.daemon.cpu_seconds()
    }

    /// Waits until caught up, stops the daemon, removes its replica and metadata dir.
    pub fn finish(self) -> Result<(), String> {
        let ok = wait_caught_up(self.side, self.port, Duration::from_secs(300));
        let tail = self.daemon.log_tail();
        self.daemon.stop();
        let _ = fs::remove_dir_all(&self.replica);
        let _ = fs::remove_dir_all(harness::meta_dir(&self.db));
        if ok {
            Ok(())
        } else {
            Err(format!("daemon did not catch up in 300 s: {tail}"))
        }
    }
}

/// Starts `side`'s daemon for `db` (nothing for `Alone`) at its defaults with a fresh file
/// replica and no metadata dir, and waits until it has snapshotted and caught up.
pub fn start(ctx: &Ctx, side: Side, db: &Path, tag: &str) -> Result<Option<Running>, String> {
    let bin = match side {
        Side::Alone => return Ok(None),
        Side::Ours => harness::bin(),
        Side::V0313 => ctx.v0313.clone()?,
    };
    let dir = db.parent().unwrap();
    let replica = dir.join(format!("replica-{}", side.name()));
    let _ = fs::remove_dir_all(&replica);
    let _ = fs::remove_dir_all(harness::meta_dir(db));
    let port = harness::free_port();
    let cfg = dir.join(format!("{}.yml", side.name()));
    harness::write_config(
        &cfg,
        Some(port),
        &[DbCfg {
            path: db.to_path_buf(),
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![harness::file_replica("file", &replica, None, None)],
        }],
    );
    let daemon = Daemon::start_bin(&bin, &cfg, &dir.join(format!("{}-{tag}.log", side.name())));
    let ready = harness::wait_for(Duration::from_secs(300), Duration::from_millis(50), || {
        harness::all_generations_snapshotted(&replica).then_some(())
    })
    .is_some()
        && wait_caught_up(side, port, Duration::from_secs(300));
    if !ready {
        return Err(format!(
            "{} daemon not ready: {}",
            side.name(),
            daemon.log_tail()
        ));
    }
    Ok(Some(Running {
        side,
        daemon,
        port,
        replica,
        db: db.to_path_buf(),
    }))
}

// ---------------------------------------------------------------------------------------------
// 9: throughput
// ---------------------------------------------------------------------------------------------

/// Python's sqlite3 module as the application: one autocommit INSERT of ~200 bytes per
/// transaction, back to back, for as long as each line on its stdin says.
const PY_WRITER: &str = r#"
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA busy_timeout=5000")
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA synchronous=NORMAL")
c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
fill = "the quick brown fox jumps over the lazy dog, " * 5
i = 0
print("ready", flush=True)
for line in sys.stdin:
    secs = float(line)
    n = 0
    t0 = time.perf_counter()
    end = t0 + secs
    while True:
        for _ in range(50):
            i += 1
            v = ("py row %12d " % i + fill)[:200]
            c.execute("INSERT OR REPLACE INTO t (id, v) VALUES (?, ?)", (i % 100000, v))
        n += 50
        if time.perf_counter() >= end:
            break
    print(n, time.perf_counter() - t0, flush=True)
"#;

struct PyWriter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PyWriter {
    fn start(db: &Path) -> Result<PyWriter, String> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(PY_WRITER)
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("python3: {e}"))?;
        if line.trim() != "ready" {
            return Err("python3 writer did not start".into());
        }
        Ok(PyWriter {
            child,
            stdin,
            stdout,
        })
    }

    fn run_for(&mut self, d: Duration) -> Result<(u64, f64), String> {
        writeln!(self.stdin, "{}", d.as_secs_f64()).map_err(|e| format!("python3: {e}"))?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("python3: {e}"))?;
        let mut f = line.split_whitespace();
        match (
            f.next().and_then(|v| v.parse().ok()),
            f.next().and_then(|v| v.parse().ok()),
        ) {
            (Some(n), Some(t)) => Ok((n, t)),
            _ => Err(format!("python3 writer said {line:?}")),
        }
    }
}

impl Drop for PyWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Load {
    Python,
    Rust,
    Rust64k,
}

enum LoadWriter {
    Py(PyWriter),
    Rs(Writer),
}

impl LoadWriter {
    fn run_for(&mut self, d: Duration) -> Result<f64, String> {
        match self {
            LoadWriter::Py(p) => p.run_for(d).map(|(n, t)| n as f64 / t),
            LoadWriter::Rs(w) => {
                let (n, t) = w.run_for(d);
                Ok(n as f64 / t.as_secs_f64())
            }
        }
    }
}

/// Per side: tx/s of each phase, and the daemon's share of a core during it.
type Phases = BTreeMap<Side, Vec<(f64, f64)>>;

fn throughput_one(ctx: &Ctx, load: Load) -> Result<Phases, String> {
    let dir = ctx.dir(match load {
        Load::Python => "vs-tput-python",
        Load::Rust => "vs-tput-rust",
        Load::Rust64k => "vs-tput-64k",
    });
    let db = dir.join("app.db");
    let mut w = match load {
        Load::Python => LoadWriter::Py(PyWriter::start(&db)?),
        Load::Rust => LoadWriter::Rs(Writer::new(&db, false)),
        Load::Rust64k => LoadWriter::Rs(Writer::new(&db, true)),
    };
    let (blocks, phase) = if ctx.quick {
        (1, Duration::from_millis(1500))
    } else {
        (2, Duration::from_secs(5))
    };
    // Warm-up: the table reaches its steady size before anything is measured.
    w.run_for(phase.max(Duration::from_secs(2)))?;
    let mut out = Phases::new();
    for (k, side) in abba(&sides(ctx, true), blocks).into_iter().enumerate() {
        let r = start(ctx, side, &db, &format!("tput-{k}"))?;
        std::thread::sleep(Duration::from_millis(500));
        let c0 = r.as_ref().map(|r| r.cpu()).unwrap_or(0.0);
        let t = Instant::now();
        let rate = w.run_for(phase)?;
        let share = r
            .as_ref()
            .map(|r| (r.cpu() - c0) / t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        if let Some(r) = r {
            r.finish()?;
        }
        out.entry(side).or_default().push((rate, share));
    }
    Ok(out)
}

pub fn throughput(ctx: &mut Ctx) {
    let python = Command::new("python3")
        .args(["-c", "import sqlite3"])
        .output()
        .is_ok_and(|o| o.status.success());
    for load in [Load::Python, Load::Rust, Load::Rust64k] {
        let (metric, what) = match load {
            Load::Python => (
                "throughput with daemon / without: Python sqlite3 writer",
                "python3's sqlite3 module (isolation_level=None), one autocommit `INSERT OR REPLACE` of a 200-byte text row per transaction, ids cycling over 100,000",
            ),
            Load::Rust => (
                "throughput with daemon / without: Rust writer, small rows",
                "the bench's Rust writer (rusqlite), one autocommit `INSERT OR REPLACE` of a ~100-byte text row per transaction, ids cycling over 100,000",
            ),
            Load::Rust64k => (
                "throughput with daemon / without: 64 KiB rows",
                "the bench's Rust writer, one autocommit `INSERT OR REPLACE` of a 64 KiB row (alternately random and text) per transaction, ids cycling over 256",
            ),
        };
        if matches!(load, Load::Python) && !python {
            err_row(ctx, metric, "python3 with its sqlite3 module not found");
            continue;
        }
        let phases = match throughput_one(ctx, load) {
            Ok(p) => p,
            Err(e) => {
                err_row(ctx, metric, &e);
                continue;
            }
        };
        let rate = |s: Side| -> Option<(f64, f64, usize)> {
            let v = phases.get(&s)?;
            let r: Vec<f64> = v.iter().map(|p| p.0).collect();
            let c: Vec<f64> = v.iter().map(|p| p.1).collect();
            Some((median(&r), median(&c), v.len()))
        };
        let Some((alone, _, n_alone)) = rate(Side::Alone) else {
            err_row(ctx, metric, "no phases");
            continue;
        };
        let cell = |s: Side| -> Option<(f64, String)> {
            let (r, c, _) = rate(s)?;
            let ratio = r / alone;
            Some((
                ratio,
                format!(
                    "{ratio:.3} ({r:.0} tx/s; daemon {:.0}% of a core)",
                    c * 100.0
                ),
            ))
        };
        let ours = cell(Side::Ours);
        let v = cell(Side::V0313);
        let (ours_ratio, ours_cell) = ours.unwrap_or((f64::NAN, "not measured".into()));
        let met = Row::met_if(ours_ratio >= 0.95 && v.as_ref().is_none_or(|v| ours_ratio > v.0));
        let phase = if ctx.quick { "1.5 s" } else { "5 s" };
        let w = format!(
            "{what}, back to back, synchronous=NORMAL; {n_alone} phases of {phase} per side in ABBA order (alone, ours, v0.3.13, v0.3.13, ours, alone, …), same db; each daemon at its defaults with a file replica, started fresh before its phase and measured from 0.5 s after it had snapshotted and caught up; ratio = median tx/s of the side's phases / median alone"
        );
        ctx.push(
            Row::new(
                metric,
                ours_cell,
                "≥ 0.95 and > v0.3.13",
                &v.map(|v| v.1).unwrap_or_else(|| v0313_absent(ctx)),
                met,
                w,
            )
            .alone(format!("1 ({alone:.0} tx/s)")),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10: paced writer beside readers
// ---------------------------------------------------------------------------------------------

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

struct Paced {
    p99_ms: f64,
    max_ms: f64,
    busy: u64,
    peak_wal: u64,
    commits: u64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Commits one ~100-byte row per transaction at `rate` tx/s for `d` (catching up without
/// sleeping when behind); returns each commit's latency (ms, sorted) and the BUSY errors.
fn paced_writes(conn: &Connection, rate: u32, d: Duration, i0: &mut u64) -> (Vec<f64>, u64) {
    let n = (d.as_secs_f64() * rate as f64) as u64;
    let every = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n as usize);
    let mut busy = 0;
    for k in 0..n {
        let due = start + every * k as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        *i0 += 1;
        let v = format!(
            "paced row {:>12} the quick brown fox jumps over the lazy dog, lorem ipsum dolor sit",
            *i0
        );
        let t = Instant::now();
        let r = conn.execute(
            "INSERT OR REPLACE INTO t (id, v) VALUES (?1, ?2)",
            params![(*i0 % 100_000) as i64, v.into_bytes()],
        );
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Err(e) = r {
            if is_busy(&e) {
                busy += 1;
            }
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (lat, busy)
}

/// One phase: the paced writer at 1000 tx/s beside a reader holding 0.8 s read transactions
/// (0.2 s apart) and a reader doing a point query every 10 ms; the -wal file polled every 5 ms.
fn paced_phase(db: &Path, d: Duration, i0: &mut u64) -> Paced {
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for long in [true, false] {
        let (stop, busy, db) = (stop.clone(), busy.clone(), db.to_path_buf());
        threads.push(std::thread::spawn(move || {
            let c = harness::open_app(&db);
            let mut k = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let r = if long {
                    c.execute_batch("BEGIN").and_then(|_| {
                        c.query_row("SELECT max(id) FROM t", [], |_| Ok(()))?;
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_millis(800)
                            && !stop.load(Ordering::SeqCst)
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        c.execute_batch("COMMIT")?;
                        // A breath between transactions: held back to back, a reader that is
                        // always open pins the WAL for the application's own checkpoints too,
                        // and the baseline would be a WAL that never restarts.
                        std::thread::sleep(Duration::from_millis(200));
                        Ok(())
                    })
                } else {
                    k = (k + 7919) % 100_000;
                    std::thread::sleep(Duration::from_millis(10));
                    c.query_row("SELECT length(v) FROM t WHERE id = ?1", [k], |_| Ok(()))
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(()),
                            e => Err(e),
                        })
                };
                if let Err(e) = r {
                    if is_busy(&e) {
                        busy.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
        }));
    }
    {
        let (stop, peak) = (stop.clone(), peak.clone());
        let wal = db.with_file_name(format!("{}-wal", db.file_name().unwrap().to_string_lossy()));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(m) = fs::metadata(&wal) {
                    peak.fetch_max(m.len(), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let conn = harness::open_app(db);
    let (lat, wbusy) = paced_writes(&conn, 1000, d, i0);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    Paced {
        p99_ms: pct(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        busy: wbusy + busy.load(Ordering::SeqCst),
        peak_wal: peak.load(Ordering::SeqCst),
        commits: lat.len() as u64,
    }
}

pub fn paced(ctx: &mut Ctx) {
    let d = if ctx.quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    };
    let dir = ctx.dir("vs-paced");
    let db = dir.join("app.db");
    let mut i0 = 0u64;
    {
        // The table at its steady size first: 100,000 rows.
        let mut w = Writer::new(&db, false);
        for _ in 0..100_000 {
            w.commit();
        }
        let c = harness::open_app(&db);
        let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    let mut phases: BTreeMap<Side, Vec<Paced>> = BTreeMap::new();
    for (k, side) in abba(&sides(ctx, true), 1).into_iter().enumerate() {
        // SQLite reuses the -wal file without shrinking it: each phase starts from an empty
        // one (no daemon yet, no other connection), so its peak is its own.
        {
            let c = harness::open_app(&db);
            let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        let r = match start(ctx, side, &db, &format!("paced-{k}")) {
            Ok(r) => r,
            Err(e) => {
                err_row(ctx, "paced writer beside readers", &e);
                return;
            }
        };
        let p = paced_phase(&db, d, &mut i0);
        if let Some(r) = r {
            if let Err(e) = r.finish() {
                err_row(ctx, "paced writer beside readers", &e);
                return;
            }
        }
        phases.entry(side).or_default().push(p);
    }
    let med = |s: Side, f: &dyn Fn(&Paced) -> f64| -> Option<f64> {
        let v: Vec<f64> = phases.get(&s)?.iter().map(f).collect();
        Some(median(&v))
    };
    let total_busy = |s: Side| {
        phases
            .get(&s)
            .map(|v| v.iter().map(|p| p.busy).sum::<u64>())
    };
    let n = phases.get(&Side::Alone).map(|v| v.len()).unwrap_or(0);
    let commits = phases
        .get(&Side::Alone)
        .and_then(|v| v.first())
        .map(|p| p.commits)
        .unwrap_or(0);
    let w = format!(
        "a writer at 1000 tx/s ({commits} commits of one ~100-byte `INSERT OR REPLACE` over 100,000 ids per phase of {} s, busy_timeout=5000, synchronous=NORMAL, wal_autocheckpoint 1000) beside two application readers: one holding 0.8 s read transactions with 0.2 s between them, one point query every 10 ms; -wal size polled every 5 ms, from empty (TRUNCATE checkpoint before each phase); {n} phases per side in ABBA order, each daemon at its defaults (file replica) started fresh and caught up before its phase; median of the phases (BUSY: their sum, writer and readers)",
        d.as_secs()
    );
    type Cell = dyn Fn(f64) -> String;
    type Field = dyn Fn(&Paced) -> f64;
    let rows: [(&str, &Field, &Cell, &str); 4] = [
        (
            "paced writer beside readers: commit p99",
            &|p| p.p99_ms,
            &|v| format!("{v:.2} ms"),
            "≤ 1.5 × alone",
        ),
        (
            "paced writer beside readers: longest commit",
            &|p| p.max_ms,
            &|v| format!("{v:.1} ms"),
            "≤ alone + 20 ms",
        ),
        (
            "paced writer beside readers: SQLITE_BUSY",
            &|p| p.busy as f64,
            &|v| format!("{v:.0}"),
            "0",
        ),
        (
            "paced writer beside readers: peak -wal size",
            &|p| p.peak_wal as f64,
            &|v| format!("{:.1} MiB", v / MIB),
            "≤ 2 × alone",
        ),
    ];
    for (i, (metric, f, show, target)) in rows.into_iter().enumerate() {
        let get = |s: Side| {
            if i == 2 {
                total_busy(s).map(|b| b as f64)
            } else {
                med(s, f)
            }
        };
        let Some(alone) = get(Side::Alone) else {
            continue;
        };
        let ok = |v: f64| match i {
            0 => v <= 1.5 * alone,
            1 => v <= alone + 20.0,
            2 => v == 0.0,
            _ => v <= 2.0 * alone,
        };
        let cell = |v: f64| {
            if i == 2 {
                show(v)
            } else {
                format!("{} ({:.2}× alone)", show(v), v / alone)
            }
        };
        let ours = get(Side::Ours);
        let v = get(Side::V0313);
        ctx.push(
            Row::new(
                metric,
                ours.map(cell).unwrap_or_else(|| "not measured".into()),
                target,
                &v.map(|v| format!("{}{}", cell(v), if ok(v) { "" } else { " (would miss)" }))
                    .unwrap_or_else(|| v0313_absent(ctx)),
                ours.map(|o| Row::met_if(ok(o))).unwrap_or(Met::Na),
                w.clone(),
            )
            .alone(show(alone)),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 11: CPU
// ---------------------------------------------------------------------------------------------

/// Daemon CPU (s) and WAL bytes (its litestream_total_wal_bytes) for one phase of `work`,
/// from before the first write to caught up.
fn cpu_phase(
    ctx: &Ctx,
    side: Side,
    db: &Path,
    tag: &str,
    work: &mut dyn FnMut(),
) -> Result<(f64, f64), String> {
    let r = start(ctx, side, db, tag)?.ok_or("no daemon")?;
    harness::settle();
    let m0 = Metrics::scrape(r.port).ok_or("no metrics")?;
    let c0 = r.cpu();
    work();
    if !wait_caught_up(side, r.port, Duration::from_secs(600)) {
        return Err(format!("did not catch up: {}", r.daemon.log_tail()));
    }
    let cpu = r.cpu() - c0;
    let m1 = Metrics::scrape(r.port).ok_or("no metrics")?;
    r.finish()?;
    let wal = m1.sum("litestream_total_wal_bytes") - m0.sum("litestream_total_wal_bytes");
    Ok((cpu, wal))
}

pub fn cpu(ctx: &mut Ctx) {
    let sides = sides(ctx, false);
    // Per GiB of WAL, one 64 KiB row per transaction.
    let metric = "daemon CPU per GiB of WAL, one 64 KiB row per transaction";
    let target_bytes = if ctx.quick { 128.0 * MIB } else { GIB };
    let dir = ctx.dir("vs-cpu-64k");
    let db = dir.join("app.db");
    let mut res: BTreeMap<Side, Vec<f64>> = BTreeMap::new();
    let mut err = None;
    {
        let conn = harness::open_app(&db);
        let mut g = harness::Gen::new(5);
        let pool: Vec<Vec<u8>> = (0..32).map(|i| g.row(i, 64 * 1024)).collect();
        let mut i = 0u64;
        for (k, side) in abba(&sides, 1).into_iter().enumerate() {
            let mut work = || {
                let mut written = 0f64;
                while written < target_bytes {
                    i += 1;
                    conn.execute(
                        "INSERT OR REPLACE INTO t (id, v) VALUES (?1, ?2)",
                        params![(i % 1024) as i64, &pool[(i % 32) as usize]],
                    )
                    .unwrap();
                    written += 64.0 * 1024.0;
                }
            };
            match cpu_phase(ctx, side, &db, &format!("cpu64k-{k}"), &mut work) {
                Ok((cpu, wal)) => res.entry(side).or_default().push(cpu / (wal / GIB)),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    let cell = |v: &[f64]| {
        format!(
            "{:.2} s/GiB (phases: {})",
            median(v),
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match err {
        Some(e) => err_row(ctx, metric, &e),
        None => {
            let ours = res.get(&Side::Ours).map(|v| median(v)).unwrap_or(f64::NAN);
            ctx.push(Row::new(
                metric,
                res.get(&Side::Ours).map(|v| cell(v)).unwrap_or_default(),
                "≤ 3 s/GiB",
                &res.get(&Side::V0313).map(|v| cell(v)).unwrap_or_else(|| v0313_absent(ctx)),
                Row::met_if(ours <= 3.0),
                format!("{:.0} MiB per phase of one 64 KiB row (alternately random and text) per autocommit `INSERT OR REPLACE` over 1,024 ids, as fast as possible; daemon at its defaults, file replica, started fresh; utime+stime from /proc/PID/stat from before the first write until caught up; WAL bytes from its litestream_total_wal_bytes; ABBA (ours, v0.3.13, v0.3.13, ours), median of the phases", target_bytes / MIB),
            ).alone("n/a".into()));
        }
    }

    // Per 1,000 small commits, paced.
    let metric = "daemon CPU per 1,000 small commits (1000 tx/s)";
    let d = if ctx.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(15)
    };
    let dir = ctx.dir("vs-cpu-small");
    let db = dir.join("app.db");
    let mut res: BTreeMap<Side, Vec<f64>> = BTreeMap::new();
    let mut err = None;
    {
        let conn = harness::open_app(&db);
        let mut i0 = 0u64;
        for (k, side) in abba(&sides, 1).into_iter().enumerate() {
            let mut n = 0u64;
            let mut work = || {
                n = paced_writes(&conn, 1000, d, &mut i0).0.len() as u64;
            };
            match cpu_phase(ctx, side, &db, &format!("cpusmall-{k}"), &mut work) {
                Ok((cpu, _)) => res
                    .entry(side)
                    .or_default()
                    .push(cpu * 1000.0 / n as f64 * 1000.0),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    let cell = |v: &[f64]| {
        format!(
            "{:.1} ms (phases: {})",
            median(v),
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match err {
        Some(e) => err_row(ctx, metric, &e),
        None => {
            let ours = res.get(&Side::Ours).map(|v| median(v)).unwrap_or(f64::NAN);
            let v = res.get(&Side::V0313).map(|v| median(v));
            ctx.push(Row::new(
                metric,
                res.get(&Side::Ours).map(|v| cell(v)).unwrap_or_default(),
                "< v0.3.13",
                &res.get(&Side::V0313).map(|v| cell(v)).unwrap_or_else(|| v0313_absent(ctx)),
                match v {
                    Some(v) => Row::met_if(ours < v),
                    None => Met::Na,
                },
                format!("{} commits per phase of one ~100-byte `INSERT OR REPLACE`, paced at 1000 tx/s, no readers; daemon CPU (ms per 1,000 commits) from before the first write until caught up (includes the idle catch-up wait: ours ≥ 3 s quiet, v0.3.13 ≥ 2.5 s); daemon at its defaults, file replica, started fresh; ABBA, median of the phases", d.as_secs() * 1000),
            ).alone("n/a".into()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 12: lag
// ---------------------------------------------------------------------------------------------

/// Lag of marker commits made every 20 ms by a writer committing small rows back to back:
/// COMMIT returned → the first replica segment holding the marker renamed into place.
fn lag_heavy(ctx: &Ctx, side: Side, d: Duration, tag: &str) -> Result<Lags, String> {
    let dir = ctx.dir(&format!("vs-lag-heavy-{tag}"));
    let db = dir.join("app.db");
    let conn = harness::open_app(&db);
    conn.execute("INSERT INTO t (v) VALUES (x'00')", [])
        .map_err(|e| e.to_string())?;
    let r = start(ctx, side, &db, tag)?.ok_or("no daemon")?;
    let g = harness::generations(&r.replica)
        .pop()
        .ok_or("no generation")?;
    let wal_dir = g.join("wal");
    fs::create_dir_all(&wal_dir).map_err(|e| e.to_string())?;
    let watch = harness::DirWatch::start(&wal_dir);
    let label = format!("heavy{tag}-");
    let mut commits = Vec::new();
    let start_t = Instant::now();
    let mut next_mark = start_t;
    let mut i = 0u64;
    while start_t.elapsed() < d {
        i += 1;
        let now = Instant::now();
        let v = if now >= next_mark {
            next_mark += Duration::from_millis(20);
            let mut s = format!("lagmark-{label}{:05}-", commits.len());
            while s.len() < 100 {
                s.push_str("lorem ipsum ");
            }
            Some(s)
        } else {
            None
        };
        let is_mark = v.is_some();
        let v = v.unwrap_or_else(|| {
            format!(
                "heavy row {i:>12} the quick brown fox jumps over the lazy dog, lorem ipsum dolor"
            )
        });
        conn.execute(
            "INSERT OR REPLACE INTO t (id, v) VALUES (?1, ?2)",
            params![(i % 100_000) as i64 + 2, v.into_bytes()],
        )
        .map_err(|e| e.to_string())?;
        if is_mark {
            commits.push(Instant::now());
        }
    }
    let caught = wait_caught_up(side, r.port, Duration::from_secs(300));
    let events = watch.finish();
    let gens = harness::generations(&r.replica).len();
    // First sight of each marker: one pass over every object.
    let prefix = format!("lagmark-{label}").into_bytes();
    let mut seen: Vec<Option<Instant>> = vec![None; commits.len()];
    for (at, name) in &events {
        let data = harness::read_object(&wal_dir.join(name));
        let mut pos = 0;
        while let Some(off) = find(&data[pos..], &prefix) {
            let s = pos + off + prefix.len();
            if let Some(k) = std::str::from_utf8(data.get(s..s + 5).unwrap_or_default())
                .ok()
                .and_then(|d| d.parse::<usize>().ok())
            {
                if let Some(slot) = seen.get_mut(k) {
                    if *at >= commits[k] && slot.is_none_or(|t| *at < t) {
                        *slot = Some(*at);
                    }
                }
            }
            pos = s;
        }
    }
    r.finish()?;
    let _ = fs::remove_dir_all(&dir);
    if !caught {
        return Err("daemon did not catch up in 300 s after the writer stopped".into());
    }
    let mut ms: Vec<f64> = Vec::new();
    let mut missing = 0;
    for (k, t) in commits.iter().enumerate() {
        match seen[k] {
            Some(at) => ms.push(at.duration_since(*t).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(Lags {
        ms,
        missing,
        generations: gens,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let j = hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)?;
        if hay[i + j..].starts_with(needle) {
            return Some(i + j);
        }
        i += j + 1;
    }
    None
}

fn pool(v: Vec<Lags>) -> Lags {
    let mut ms: Vec<f64> = v.iter().flat_map(|l| l.ms.iter().copied()).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Lags {
        ms,
        missing: v.iter().map(|l| l.missing).sum(),
        generations: v.iter().map(|l| l.generations).max().unwrap_or(0),
    }
}

pub fn lag(ctx: &mut Ctx) {
    let sides = sides(ctx, false);
    // Sparse commits, default intervals.
    let metric = "lag side by side: sparse commits, default intervals (p50)";
    let n = if ctx.quick { 4 } else { 15 };
    let mut res: BTreeMap<Side, Vec<Lags>> = BTreeMap::new();
    let mut err = None;
    for (k, side) in abba(&sides, 1).into_iter().enumerate() {
        let bin = match side {
            Side::V0313 => ctx.v0313.clone().unwrap_or_default(),
            _ => harness::bin(),
        };
        match lag_file_bin(ctx, &bin, &format!("vs-{}-{k}", side.name()), None, n) {
            Ok(l) => res.entry(side).or_default().push(l),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let show = |l: &Lags| format!("{}{}", describe(l), notes(l));
    match err {
        Some(e) => err_row(ctx, metric, &e),
        None => {
            let ours = pool(res.remove(&Side::Ours).unwrap_or_default());
            let v = res.remove(&Side::V0313).map(pool);
            ctx.push(Row::new(
                metric,
                show(&ours),
                "p50 ≤ 50 ms",
                &v.as_ref().map(show).unwrap_or_else(|| v0313_absent(ctx)),
                Row::met_if(ours.missing == 0 && ours.pct(0.5) <= 50.0),
                format!("{n} commits of one ~100-byte row per phase, one every 1.5 s; daemon at its defaults (monitor-interval 1s, sync-interval 1s), file replica; lag = COMMIT returned → segment holding it renamed into the replica's wal dir (inotify); ABBA (ours, v0.3.13, v0.3.13, ours), samples of a side's phases pooled"),
            ).alone("n/a".into()));
        }
    }

    // Under the heavy writer.
    let metric = "lag side by side: under the heavy writer (p99)";
    let d = if ctx.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(8)
    };
    let mut res: BTreeMap<Side, Vec<Lags>> = BTreeMap::new();
    let mut err = None;
    for (k, side) in abba(&sides, 1).into_iter().enumerate() {
        match lag_heavy(ctx, side, d, &format!("{}{k}", side.name())) {
            Ok(l) => res.entry(side).or_default().push(l),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    match err {
        Some(e) => err_row(ctx, metric, &e),
        None => {
            let ours = pool(res.remove(&Side::Ours).unwrap_or_default());
            let v = res.remove(&Side::V0313).map(pool);
            ctx.push(Row::new(
                metric,
                show(&ours),
                "p99 ≤ sync-interval + 100 ms = 1100 ms",
                &v.as_ref().map(show).unwrap_or_else(|| v0313_absent(ctx)),
                Row::met_if(ours.missing == 0 && ours.pct(0.99) <= 1100.0),
                format!("the bench's Rust writer committing ~100-byte rows back to back for {} s per phase, every 20 ms one of them a marker; lag = marker's COMMIT returned → first segment holding it renamed into the replica's wal dir (inotify, objects decompressed afterwards); daemon at its defaults, file replica, started fresh; ABBA (ours, v0.3.13, v0.3.13, ours), samples pooled", d.as_secs()),
            ).alone("n/a".into()));
        }
    }
}
