//! Section 13: follow mode (`litestream restore -f`, issue #25) against a real primary daemon:
//! commit on the primary → row visible through a read-only connection on the follower's
//! output (p50/p99, file and S3 replicas, `-follow-interval 1s`, the primary at its default
//! sync-interval 1s), the requests an idle S3 follower sends per minute (counted at the S3
//! proxy), and how many replicated transactions per second a follower applies when it has a
//! backlog (the follower SIGSTOPped while the primary commits, then let go).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags};

use crate::harness::{self, Daemon, DbCfg};
use crate::lag::err_row;
use crate::{Ctx, Met, Row};

/// A `litestream restore -f` child; SIGKILLed on drop.
struct Follower {
    child: Child,
    log: PathBuf,
}

impl Follower {
    fn start(url: &str, out: &Path, env: &[(&str, &str)], log: &Path) -> Follower {
        let file = std::fs::File::create(log).expect("create follower log");
        let child = Command::new(harness::bin())
            .args(["restore", "-f", "-follow-interval", "1s", "-o"])
            .arg(out)
            .arg(url)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start follower");
        Follower {
            child,
            log: log.to_path_buf(),
        }
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn max_id(out: &Path) -> Option<i64> {
    let c = Connection::open_with_flags(
        out,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    c.busy_timeout(Duration::from_secs(5)).ok()?;
    c.query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
        .ok()
}

/// Waits until the output shows id `id` (polling a read-only connection every 2 ms).
fn wait_visible(reader: &Connection, id: i64, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    harness::wait_for(deadline, Duration::from_millis(2), || {
        let m: i64 = reader
            .query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
            .ok()?;
        (m >= id).then(|| start.elapsed())
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A primary with one replica (`replica_yaml`), its first row in and its snapshot up
/// (`snapshotted`), and a follower of `url` that shows that row.
struct Setup {
    conn: Connection,
    daemon: Daemon,
    follower: Follower,
    out: PathBuf,
}

fn setup(
    dir: &Path,
    replica_yaml: String,
    url: &str,
    env: &[(&str, &str)],
    snapshotted: &dyn Fn() -> bool,
) -> Result<Setup, String> {
    let db = dir.join("app.db");
    let conn = harness::open_app(&db);
    conn.execute("INSERT INTO t (id, v) VALUES (1, x'00')", [])
        .unwrap();
    let cfg = dir.join("litestream.yml");
    harness::write_config(
        &cfg,
        None,
        &[DbCfg {
            path: db,
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![replica_yaml],
        }],
    );
    let daemon = Daemon::start(&cfg, &dir.join("daemon.log"));
    if harness::wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
        snapshotted().then_some(())
    })
    .is_none()
    {
        return Err(format!("no snapshot: {}", daemon.log_tail()));
    }
    let out = dir.join("follower.db");
    let follower = Follower::start(url, &out, env, &dir.join("follower.log"));
    if harness::wait_for(Duration::from_secs(60), Duration::from_millis(20), || {
        (out.exists() && max_id(&out) == Some(1)).then_some(())
    })
    .is_none()
    {
        return Err(format!("follower did not start: {}", follower.log_tail()));
    }
    Ok(Setup {
        conn,
        daemon,
        follower,
        out,
    })
}

/// Commit → visible lags (ms, sorted) of `n` single-row commits spaced 1.1–2.0 s apart.
fn lags(s: &Setup, n: usize) -> Result<Vec<f64>, String> {
    let reader = Connection::open_with_flags(
        &s.out,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut gen = harness::Gen::new(13);
    let mut ms = Vec::new();
    for k in 0..n {
        let id = 2 + k as i64;
        s.conn
            .execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                params![id, gen.text(100, id as u64)],
            )
            .unwrap();
        let Some(lag) = wait_visible(&reader, id, Duration::from_secs(30)) else {
            return Err(format!(
                "row {id} not visible in 30 s: {}",
                s.follower.log_tail()
            ));
        };
        ms.push(lag.as_secs_f64() * 1000.0);
        // Commits land at random points of the primary's sync and the follower's poll.
        std::thread::sleep(Duration::from_millis(100 + gen.next_u64() % 900));
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

fn lag_row(ctx: &mut Ctx, kind: &str, ms: &[f64]) {
    let (p50, p99) = (pct(ms, 0.5), pct(ms, 0.99));
    ctx.push(Row::new(
        &format!("follow lag commit → visible, {kind} replica (p50 / p99)"),
        format!("{p50:.0} ms / {p99:.0} ms"),
        "p50 ≤ follow-interval + 50 ms (1050 ms)",
        "– (no follow mode)",
        Row::met_if(p50 <= 1050.0),
        format!(
            "{} single-row commits 1.1–2.0 s apart, primary sync-interval 1s, `restore -f -follow-interval 1s`; visible = a read-only connection on the output sees the row (polled every 2 ms); min {:.0} ms, max {:.0} ms",
            ms.len(),
            ms.first().copied().unwrap_or(f64::NAN),
            ms.last().copied().unwrap_or(f64::NAN)
        ),
    ));
}

/// Transactions per second the follower applies from a backlog of `n` single-row commits.
fn throughput(s: &Setup, first_id: i64, n: i64) -> Result<(f64, f64), String> {
    s.follower.signal(libc::SIGSTOP);
    for id in first_id..first_id + n {
        s.conn
            .execute("INSERT INTO t (id, v) VALUES (?1, x'0102')", params![id])
            .unwrap();
    }
    // Everything uploaded (sync-interval 1s) before the follower goes on.
    std::thread::sleep(Duration::from_secs(4));
    let last = first_id + n - 1;
    let reader = Connection::open_with_flags(
        &s.out,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    // The follower's next poll is at most one interval away: timed from its first change.
    let before: i64 = reader
        .query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let resumed = Instant::now();
    s.follower.signal(libc::SIGCONT);
    let started = harness::wait_for(Duration::from_secs(30), Duration::from_millis(1), || {
        let m: i64 = reader
            .query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
            .ok()?;
        (m > before).then(|| (Instant::now(), m))
    });
    let Some((_, m0)) = started else {
        return Err(format!(
            "follower applied nothing: {}",
            s.follower.log_tail()
        ));
    };
    let Some(took) = wait_visible(&reader, last, Duration::from_secs(600)) else {
        return Err(format!(
            "follower did not catch up: {}",
            s.follower.log_tail()
        ));
    };
    let applied = (last - m0) as f64;
    Ok((
        applied / took.as_secs_f64().max(1e-6),
        resumed.elapsed().as_secs_f64(),
    ))
}

pub fn run(ctx: &mut Ctx) {
    let n = if ctx.quick { 12 } else { 40 };
    let backlog = if ctx.quick { 2000 } else { 10_000 };

    // File replica: lag, then throughput.
    let dir = ctx.dir("follow-file");
    let replica = dir.join("replica");
    let root = replica.clone();
    match setup(
        &dir,
        harness::file_replica("file", &replica, Some("1s"), None),
        &format!("file://{}", replica.display()),
        &[],
        &|| harness::all_generations_snapshotted(&root),
    ) {
        Err(e) => err_row(ctx, "follow, file replica", &e),
        Ok(s) => {
            match lags(&s, n) {
                Ok(ms) => lag_row(ctx, "file", &ms),
                Err(e) => err_row(ctx, "follow lag, file replica", &e),
            }
            match throughput(&s, 2 + n as i64, backlog) {
                Ok((tps, all)) => ctx.push(Row::new(
                    "follow apply rate from a backlog, file replica",
                    format!("{tps:.0} tx/s after its first commit; all {backlog} visible {all:.2} s after SIGCONT"),
                    "–",
                    "–",
                    Met::Na,
                    format!("{backlog} single-row commits on the primary while the follower is SIGSTOPped, then SIGCONT: rows applied after its first visible commit / seconds from it to the last (a batch applies a segment's transactions in one commit, so this is large when few commits hold them all); SIGCONT → all visible includes up to one 1 s poll wait"),
                )),
                Err(e) => err_row(ctx, "follow apply rate, file replica", &e),
            }
            s.daemon.stop();
        }
    }

    // S3 replica: lag, then an idle window counted at the proxy.
    let Some(s3) = ctx.s3.as_ref() else {
        err_row(ctx, "follow, S3 replica", "s3s-fs not installed");
        return;
    };
    let idle = if ctx.quick { 30.0 } else { 120.0 };
    let dir = ctx.dir("follow-s3");
    let prefix = "follow";
    let url = format!(
        "s3://{}/{prefix}?endpoint={}",
        crate::s3::BUCKET,
        s3.endpoint()
    );
    let pdir = s3.prefix_dir(prefix);
    let env = s3.env();
    let result = setup(
        &dir,
        s3.replica_yaml("s3", prefix, Some("1s"), None),
        &url,
        &env,
        &|| harness::all_generations_snapshotted(&pdir),
    );
    let s = match result {
        Err(e) => {
            err_row(ctx, "follow, S3 replica", &e);
            return;
        }
        Ok(s) => s,
    };
    let lag_result = lags(&s, n);
    // Idle: the primary's last upload and the follower's catch-up are over.
    std::thread::sleep(Duration::from_secs(3));
    let mark = s3.proxy.mark();
    std::thread::sleep(Duration::from_secs_f64(idle));
    let reqs = s3.proxy.since(mark);
    let lists = reqs.iter().filter(|r| r.is_list()).count();
    let gets = reqs
        .iter()
        .filter(|r| r.method == "GET" && !r.is_list())
        .count();
    let heads = reqs.iter().filter(|r| r.method == "HEAD").count();
    // The primary's only requests are PUTs (its checkpoint a minute after the last write
    // uploads one segment): counted apart.
    let puts = reqs.iter().filter(|r| r.method == "PUT").count();
    let other = reqs.len() - lists - gets - heads - puts;
    s.daemon.stop();
    drop(s.follower);
    match lag_result {
        Ok(ms) => lag_row(ctx, "S3", &ms),
        Err(e) => err_row(ctx, "follow lag, S3 replica", &e),
    }
    let per_min = |c: usize| c as f64 * 60.0 / idle;
    ctx.push(Row::new(
        "follow: requests per idle minute, S3 replica",
        format!(
            "{:.1} ({:.1} GET, {:.1} HEAD, {:.1} LIST, {:.1} other; primary's PUTs apart: {puts})",
            per_min(gets + heads + lists + other),
            per_min(gets),
            per_min(heads),
            per_min(lists),
            per_min(other)
        ),
        "≤ 60 (one GET or HEAD per 1 s poll), no LIST",
        "– (v0.5 lists on every poll)",
        Row::met_if(lists == 0 && per_min(gets + heads) <= 61.0 && other == 0),
        format!("primary and follower idle (the primary committed nothing), `-follow-interval 1s`, every request counted at the proxy over {idle:.0} s, per minute (PUTs are the primary's)"),
    ));
}
