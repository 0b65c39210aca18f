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
use std::time::{Duration, Instant};


use crate::app::Writer;
use crate::harness::{self, Daemon, DbCfg, Metrics};
use crate::lag::err_row;
use crate::{Ctx, Row};

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

pub fn paced(ctx: &mut Ctx) {
    let _ = ctx;
}

// ---------------------------------------------------------------------------------------------
// 11: CPU
// ---------------------------------------------------------------------------------------------

pub fn cpu(ctx: &mut Ctx) {
    let _ = ctx;
}

// ---------------------------------------------------------------------------------------------
// 12: lag
// ---------------------------------------------------------------------------------------------

pub fn lag(ctx: &mut Ctx) {
    let _ = ctx;
}
