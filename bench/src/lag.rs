//! Row 1: replication lag of sparse commits. One small commit every 1.5 s; for each, the time
//! from COMMIT returning to the replica object that holds it being in place: for a file
//! replica the segment renamed into `generations/<gen>/wal/` (inotify IN_MOVED_TO|IN_CREATE),
//! for S3 the PUT of that segment answered (seen at the proxy). Which object holds which commit
//! is checked afterwards by decompressing the objects and finding the commit's marker text.

use std::time::{Duration, Instant};

use rusqlite::params;

use crate::harness::{self, Daemon, DbCfg, DirWatch};
use crate::{Ctx, Met, Row};

const PERIOD: Duration = Duration::from_millis(1500);

pub struct Lags {
    /// Milliseconds, sorted.
    pub ms: Vec<f64>,
    pub missing: usize,
    pub generations: usize,
}

impl Lags {
    pub fn pct(&self, p: f64) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * self.ms.len() as f64).ceil() as usize).clamp(1, self.ms.len());
        self.ms[rank - 1]
    }
}

fn marker(label: &str, k: usize) -> String {
    format!("lagmark-{label}-{k:05}-")
}

fn row_text(label: &str, k: usize) -> String {
    let mut s = marker(label, k);
    while s.len() < 100 {
        s.push_str("lorem ipsum ");
    }
    s
}

/// Commits `n` rows 1.5 s apart; returns each commit's return time.
fn commit_sparse(conn: &rusqlite::Connection, label: &str, n: usize) -> Vec<Instant> {
    let start = Instant::now();
    let mut times = Vec::with_capacity(n);
    for k in 0..n {
        let due = start + PERIOD * k as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        conn.execute(
            "INSERT INTO t (v) VALUES (?1)",
            params![row_text(label, k).into_bytes()],
        )
        .unwrap();
        times.push(Instant::now());
    }
    times
}

/// Lag of each commit: the earliest object event at or after the commit whose object holds
/// the commit's marker.
fn match_lags(
    label: &str,
    commits: &[Instant],
    objects: &[(Instant, Vec<u8>)],
    gens: usize,
) -> Lags {
    let mut ms = Vec::new();
    let mut missing = 0;
    for (k, t) in commits.iter().enumerate() {
        let m = marker(label, k);
        let hit = objects
            .iter()
            .filter(|(at, data)| at >= t && harness::contains(data, m.as_bytes()))
            .map(|(at, _)| *at)
            .min();
        match hit {
            Some(at) => ms.push(at.duration_since(*t).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Lags {
        ms,
        missing,
        generations: gens,
    }
}

fn lag_file(ctx: &Ctx, label: &str, interval: Option<&str>, n: usize) -> Result<Lags, String> {
    lag_file_bin(ctx, &harness::bin(), label, interval, n)
}

/// [`lag_file`] with another Litestream binary (v0.3.13 reads the same config).
pub fn lag_file_bin(
    ctx: &Ctx,
    bin: &std::path::Path,
    label: &str,
    interval: Option<&str>,
    n: usize,
) -> Result<Lags, String> {
    let dir = ctx.dir(&format!("lag-{label}"));
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let conn = harness::open_app(&db);
    conn.execute("INSERT INTO t (v) VALUES (x'00')", [])
        .unwrap();
    let cfg = dir.join("litestream.yml");
    harness::write_config(
        &cfg,
        None,
        &[DbCfg {
            path: db.clone(),
            monitor_interval: interval.map(String::from),
            extra: String::new(),
            replicas: vec![harness::file_replica("file", &replica, interval, None)],
        }],
    );
    let daemon = Daemon::start_bin(bin, &cfg, &dir.join("daemon.log"));
    let wal_dir = harness::wait_for(Duration::from_secs(60), Duration::from_millis(10), || {
        if !harness::all_generations_snapshotted(&replica) {
            return None;
        }
        let g = harness::generations(&replica).pop()?;
        g.join("wal").is_dir().then(|| g.join("wal"))
    })
    .ok_or_else(|| format!("no snapshot after 60 s: {}", daemon.log_tail()))?;
    let watch = DirWatch::start(&wal_dir);
    std::thread::sleep(PERIOD);
    let commits = commit_sparse(&conn, label, n);
    std::thread::sleep(Duration::from_secs(3));
    let events = watch.finish();
    daemon.stop();
    let objects: Vec<(Instant, Vec<u8>)> = events
        .iter()
        .map(|(at, name)| (*at, harness::read_object(&wal_dir.join(name))))
        .collect();
    Ok(match_lags(
        label,
        &commits,
        &objects,
        harness::generations(&replica).len(),
    ))
}

fn lag_s3(ctx: &Ctx, label: &str, interval: Option<&str>, n: usize) -> Result<Lags, String> {
    let s3 = ctx.s3.as_ref().ok_or("s3s-fs not installed")?;
    let dir = ctx.dir(&format!("lag-{label}"));
    let db = dir.join("app.db");
    let prefix = format!("lag-{label}");
    let conn = harness::open_app(&db);
    conn.execute("INSERT INTO t (v) VALUES (x'00')", [])
        .unwrap();
    let cfg = dir.join("litestream.yml");
    harness::write_config(
        &cfg,
        None,
        &[DbCfg {
            path: db.clone(),
            monitor_interval: interval.map(String::from),
            extra: String::new(),
            replicas: vec![s3.replica_yaml("s3", &prefix, interval, None)],
        }],
    );
    let mark = s3.proxy.mark();
    let daemon = Daemon::start(&cfg, &dir.join("daemon.log"));
    harness::wait_for(Duration::from_secs(60), Duration::from_millis(10), || {
        s3.proxy
            .since(mark)
            .iter()
            .any(|r| r.method == "PUT" && r.path().contains("/snapshots/") && r.status == 200)
            .then_some(())
    })
    .ok_or_else(|| format!("no snapshot after 60 s: {}", daemon.log_tail()))?;
    std::thread::sleep(PERIOD);
    let commits = commit_sparse(&conn, label, n);
    std::thread::sleep(Duration::from_secs(3));
    daemon.stop();
    let objects: Vec<(Instant, Vec<u8>)> = s3
        .proxy
        .since(mark)
        .iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/wal/") && r.status == 200)
        .filter_map(|r| Some((r.answered?, harness::read_object(&s3.object_file(r)))))
        .collect();
    let gens = harness::generations(&s3.prefix_dir(&prefix)).len();
    Ok(match_lags(label, &commits, &objects, gens))
}

pub fn describe(l: &Lags) -> String {
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        l.pct(0.5),
        l.pct(0.9),
        l.pct(0.99)
    )
}

pub fn notes(l: &Lags) -> String {
    let mut s = String::new();
    if l.missing > 0 {
        s.push_str(&format!(
            "; {} commits never seen on the replica",
            l.missing
        ));
    }
    if l.generations != 1 {
        s.push_str(&format!("; {} generations", l.generations));
    }
    s
}

pub fn run(ctx: &mut Ctx) {
    let n = if ctx.quick { 6 } else { 30 };
    let n_s3 = if ctx.quick { 6 } else { 20 };
    let workload = |n: usize, what: &str, iv: &str| {
        format!(
            "{n} commits of one ~100-byte row, one every 1.5 s (after 1.5 s idle), one db, {what}, {iv}; lag = COMMIT returned → {}; p99 of {n} samples is their maximum",
            if what.starts_with("file") {
                "segment renamed into the replica's wal dir (inotify)"
            } else {
                "PUT of the segment answered (proxy)"
            }
        )
    };

    // File replica, default intervals.
    match lag_file(ctx, "file-default", None, n) {
        Ok(l) => {
            let ok = l.missing == 0 && l.pct(0.5) <= 50.0 && l.pct(0.99) <= 150.0;
            let w = workload(
                n,
                "file replica",
                "default monitor-interval 1s, sync-interval 1s",
            ) + &notes(&l);
            ctx.push(Row::new(
                "lag, default intervals, sparse commits, file replica",
                describe(&l),
                "p50 ≤ 50 ms (p99 ≤ 150 ms)",
                "p50 727–728 ms (p90 ~980 ms)",
                Row::met_if(ok),
                w,
            ));
        }
        Err(e) => err_row(ctx, "lag, default intervals, file replica", &e),
    }
    // File replica, 10ms/10ms.
    match lag_file(ctx, "file-10ms", Some("10ms"), n) {
        Ok(l) => {
            let ok = l.missing == 0 && l.pct(0.5) <= 5.0 && l.pct(0.99) <= 20.0;
            let w = workload(
                n,
                "file replica",
                "monitor-interval 10ms, sync-interval 10ms",
            ) + &notes(&l);
            ctx.push(Row::new(
                "lag at 10ms/10ms, file replica, p50 / p99",
                describe(&l),
                "p50 ≤ 5 ms / p99 ≤ 20 ms",
                "p50 10.7 ms / 11–16 ms (p90)",
                Row::met_if(ok),
                w,
            ));
        }
        Err(e) => err_row(ctx, "lag at 10ms/10ms, file replica", &e),
    }
    for (label, iv, desc) in [
        (
            "s3-default",
            None,
            "default monitor-interval 1s, sync-interval 1s",
        ),
        (
            "s3-10ms",
            Some("10ms"),
            "monitor-interval 10ms, sync-interval 10ms",
        ),
    ] {
        let metric = format!(
            "lag, {}, S3 replica (local s3s-fs)",
            if iv.is_some() {
                "10ms/10ms"
            } else {
                "default intervals"
            }
        );
        match lag_s3(ctx, label, iv, n_s3) {
            Ok(l) => {
                let w = workload(n_s3, "S3 replica on local s3s-fs", desc) + &notes(&l);
                ctx.push(Row::new(&metric, describe(&l), "–", "–", Met::Na, w));
            }
            Err(e) => err_row(ctx, &metric, &e),
        }
    }
}

pub fn err_row(ctx: &mut Ctx, metric: &str, e: &str) {
    let e: String = e.chars().take(300).collect();
    ctx.push(Row::new(
        metric,
        format!("error: {e}"),
        "",
        "",
        Met::Na,
        String::new(),
    ));
}
