//! `make bench`: benchmarks of the release binary `target/release/litestream` against the
//! targets of the performance issue, beside Litestream v0.3.13's figures (sections 9–12 run
//! it in the same run, see `versus`; elsewhere quoted from the issue). Prints one
//! table and writes it to BENCHMARKS.md (a `--quick` run writes bench/target/BENCHMARKS.quick.md
//! instead, so it never replaces a full run's results).
//!
//! Flags and environment: see [`USAGE`] (`bench --help`).

mod app;
mod follow;
mod harness;
mod lag;
mod memory;
mod requests;
mod s3;
mod snapshot;
mod versus;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str = "\
litestream-bench: benchmarks of target/release/litestream (make bench)

usage: litestream-bench [--quick] [--only N,M,...] [--help]

  --quick        every row small (about two minutes for sections 1-8); also BENCH_QUICK=1.
                 Written to bench/target/BENCHMARKS.quick.md, never to BENCHMARKS.md.
  --only N,...   only these sections (also written to bench/target/BENCHMARKS.quick.md):
                   1  lag (sparse commits, file and S3 replicas)
                   2  application throughput, ours only (small rows, v0.3 read lock, 64 KiB)
                   3  CPU per GiB of WAL, ours (gzip, lz4)
                   4  memory
                   5  snapshot and restore (also 6)
                   7  S3 requests
                   8  static binary size
                 side by side: no daemon / ours / Litestream v0.3.13, file replica, ABBA:
                   9  throughput with/without: Python writer, Rust writer, 64 KiB rows
                  10  paced writer 1000 tx/s beside readers: commit p99, longest, BUSY, peak WAL
                  11  daemon CPU per GiB (one 64 KiB row per tx) and per 1,000 small commits
                  12  lag: p50 of sparse commits, p99 under the heavy writer
                 follow mode (restore -f):
                  13  lag commit -> visible (file, S3), requests per idle minute (S3),
                      apply rate from a backlog

environment:
  LITESTREAM_BIN      binary under test (default ../target/release/litestream)
  LITESTREAM_V0313    Litestream v0.3.13 binary (default bench/target/litestream-v0.3.13,
                      unpacked there if absent from LITESTREAM_ANCHORS, default
                      ../shared/anchors beside the repo; if it cannot be had, its column
                      says why and the bench goes on)
  BENCH_TMPDIR        parent of the scratch dir (default /tmp)
  BENCH_NOTE          a line added to the report
  BENCH_KEEP          keep the scratch dir (debugging)
";

/// Whether a row meets its target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Met {
    Yes,
    No,
    /// No target for this row (information only), or not measured.
    Na,
}

pub struct Row {
    pub metric: String,
    /// The figure without any daemon (side-by-side rows), else "–".
    pub alone: String,
    pub ours: String,
    pub target: String,
    pub v0313: String,
    pub met: Met,
    pub workload: String,
}

impl Row {
    pub fn new(
        metric: &str,
        ours: String,
        target: &str,
        v0313: &str,
        met: Met,
        workload: String,
    ) -> Row {
        Row {
            metric: metric.to_string(),
            alone: "–".to_string(),
            ours,
            target: target.to_string(),
            v0313: v0313.to_string(),
            met,
            workload,
        }
    }

    /// Sets the without-a-daemon column.
    pub fn alone(mut self, alone: String) -> Row {
        self.alone = alone;
        self
    }

    pub fn met_if(ok: bool) -> Met {
        if ok {
            Met::Yes
        } else {
            Met::No
        }
    }
}

/// What every section gets.
pub struct Ctx {
    pub quick: bool,
    pub tmp: PathBuf,
    pub s3: Option<s3::S3Server>,
    pub rows: Vec<Row>,
    /// Litestream v0.3.13's binary, or why it is not there.
    pub v0313: Result<PathBuf, String>,
}

impl Ctx {
    /// A fresh scratch dir for one measurement.
    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn push(&mut self, row: Row) {
        println!(
            "  {:<52} {}{:<40} target {:<28} [{}]",
            row.metric,
            if row.alone == "–" {
                String::new()
            } else {
                format!("alone {} | ", row.alone)
            },
            if row.alone == "–" {
                row.ours.clone()
            } else {
                format!("ours {} | v0.3.13 {}", row.ours, row.v0313)
            },
            row.target,
            status(row.met)
        );
        self.rows.push(row);
    }
}

fn status(m: Met) -> &'static str {
    match m {
        Met::Yes => "met",
        Met::No => "NOT met",
        Met::Na => "–",
    }
}

/// Removes the scratch dir however the run ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("kept {} (BENCH_KEEP)", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sh(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} logical cores")
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Option<Vec<u32>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = repo.canonicalize().unwrap_or(repo);
    let bin = harness::bin();
    if !bin.exists() {
        eprintln!(
            "{} not found: run `cargo build --release` first (make bench does)",
            bin.display()
        );
        std::process::exit(1);
    }
    let parent = std::env::var_os("BENCH_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tmp = parent.join(format!("litestream-bench-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&tmp).unwrap();
    let _scratch = Scratch(tmp.clone());

    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &repo);
    let mut commit = sh("git", &["rev-parse", "--short", "HEAD"], &repo);
    if !sh(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ],
        &repo,
    )
    .is_empty()
    {
        commit.push_str(" (+ uncommitted changes in src/ or Cargo.*)");
    }
    let cpu = cpu_model();
    let load_start = loadavg();
    println!(
        "litestream bench ({}): {} | commit {commit} | {cpu} | load {load_start} | scratch {}",
        if quick { "quick" } else { "full" },
        bin.display(),
        tmp.display()
    );

    let s3 = if s3::available() {
        Some(s3::S3Server::start(&tmp.join("s3")))
    } else {
        eprintln!("s3s-fs not installed (scripts/install-test-prereqs.sh): S3 rows skipped");
        None
    };
    let v0313 = if (9..=12).any(want) {
        harness::v0313(&repo)
    } else {
        Err("not needed by these sections".into())
    };
    match &v0313 {
        Ok(p) => println!("Litestream v0.3.13: {}", p.display()),
        Err(e) if (9..=12).any(want) => eprintln!("Litestream v0.3.13 unavailable: {e}"),
        Err(_) => {}
    }
    let mut ctx = Ctx {
        quick,
        tmp: tmp.clone(),
        s3,
        rows: Vec::new(),
        v0313,
    };

    let started = Instant::now();
    type Section = fn(&mut Ctx);
    let sections: [(u32, &str, Section); 12] = [
        (8, "static binary", snapshot::static_binary),
        (1, "lag", lag::run),
        (2, "application overhead", app::overhead),
        (3, "CPU per GiB of WAL", app::cpu_per_gib),
        (4, "memory", memory::run),
        (5, "snapshot and restore (5, 6)", snapshot::run),
        (7, "S3 requests", requests::run),
        (9, "throughput side by side", versus::throughput),
        (
            10,
            "paced writer beside readers, side by side",
            versus::paced,
        ),
        (11, "daemon CPU side by side", versus::cpu),
        (12, "lag side by side", versus::lag),
        (13, "follow mode (restore -f)", follow::run),
    ];
    for (n, name, f) in sections {
        let n_want = if n == 5 { want(5) || want(6) } else { want(n) };
        if !n_want {
            continue;
        }
        println!(
            "[{n}] {name} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let before = ctx.rows.len();
        if catch_unwind(AssertUnwindSafe(|| f(&mut ctx))).is_err() {
            ctx.push(Row::new(
                name,
                "error (see output above)".into(),
                "",
                "",
                Met::Na,
                String::new(),
            ));
        }
        if ctx.rows.len() == before {
            println!("  (no rows)");
        }
    }
    let total = started.elapsed().as_secs_f64();
    let load_end = loadavg();
    let rows = std::mem::take(&mut ctx.rows);
    drop(ctx); // stops the S3 server

    let mut t = String::new();
    t.push_str("| metric | no daemon | ours | target | v0.3.13 | status | workload |\n");
    t.push_str("|---|---|---|---|---|---|---|\n");
    for r in &rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            md_escape(&r.metric),
            md_escape(&r.alone),
            md_escape(&r.ours),
            md_escape(&r.target),
            md_escape(&r.v0313),
            status(r.met),
            md_escape(&r.workload)
        ));
    }
    println!("\n{t}");
    let met = rows.iter().filter(|r| r.met == Met::Yes).count();
    let not_met = rows.iter().filter(|r| r.met == Met::No).count();
    println!("{met} met, {not_met} NOT met; {total:.0} s");

    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Written by `make bench` (source: `bench/`): the release binary `target/release/litestream` \
driven as a real daemon against real SQLite databases, beside the targets of the performance \
issue and Litestream v0.3.13's figures: measured in the same run for the side-by-side rows (sections 9–12: no daemon, ours and v0.3.13 at their defaults with a file replica, phases in ABBA order, median of the phases; the \"no daemon\" column is the baseline), quoted from the issue elsewhere. Everything runs on 127.0.0.1; \
S3 rows use a local s3s-fs server (lag and request counts through a request-timing proxy, \
restores straight to it), so they measure our client and the protocol, not a network. The application writes with `journal_mode=WAL`, `synchronous=NORMAL` \
and table `t(id INTEGER PRIMARY KEY, v BLOB)`; \"half random, half text\" means alternate rows are \
random bytes and repeated English text. Page cache is warm (databases were just written); before each CPU, snapshot and restore measurement the bench runs `sync` and waits 0.5 s, so that no row pays for the writeback of the one before. Restore rows are the median of 3 back-to-back runs, all three listed: on this VM the same restore at times takes 3–4× as long (the difference is system time in the kernel's page copies), and one run should not decide a row.\n\n",
    );
    md.push_str(&format!(
        "- date: {date}\n- run: {}{}\n- CPU: {cpu}\n- commit: {commit}\n- load average (1/5/15 min): {load_start} at start, {load_end} at end\n- duration: {total:.0} s\n",
        if quick { "quick (`--quick`)" } else { "full" },
        only.as_ref().map(|o| format!(", sections {o:?} only")).unwrap_or_default()
    ));
    if let Ok(note) = std::env::var("BENCH_NOTE") {
        md.push_str(&format!("- note: {note}\n"));
    }
    md.push_str(&format!("\n{t}\n{met} met, {not_met} NOT met.\n"));
    let out = if quick || only.is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/BENCHMARKS.quick.md")
    } else {
        repo.join("BENCHMARKS.md")
    };
    if let Some(p) = out.parent() {
        let _ = fs::create_dir_all(p);
    }
    fs::write(&out, md).expect("write report");
    println!("wrote {}", out.display());
}
