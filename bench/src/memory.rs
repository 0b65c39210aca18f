//! Row 4: RSS of an idle daemon with one db; peak RSS (VmHWM) of one daemon with 100 dbs under
//! 15,000 commits spread over 15 s; then that daemon's idle CPU.

use std::time::{Duration, Instant};

use rusqlite::params;

use crate::harness::{self, Daemon, DbCfg};
use crate::lag::err_row;
use crate::{Ctx, Row};

fn idle_one(ctx: &Ctx) -> Result<(u64, f64), String> {
    let dir = ctx.dir("mem-idle");
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let conn = harness::open_app(&db);
    for i in 0..10 {
        conn.execute("INSERT INTO t (v) VALUES (?1)", params![format!("row {i}")])
            .unwrap();
    }
    let cfg = dir.join("litestream.yml");
    harness::write_config(
        &cfg,
        None,
        &[DbCfg {
            path: db.clone(),
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![harness::file_replica("file", &replica, None, None)],
        }],
    );
    let d = Daemon::start(&cfg, &dir.join("daemon.log"));
    harness::wait_for(Duration::from_secs(60), Duration::from_millis(20), || {
        harness::all_generations_snapshotted(&replica).then_some(())
    })
    .ok_or_else(|| format!("no snapshot: {}", d.log_tail()))?;
    let settle = if ctx.quick { 3.0 } else { 10.0 };
    std::thread::sleep(Duration::from_secs_f64(settle));
    let rss = d.status_kib("VmRSS");
    d.stop();
    Ok((rss, settle))
}

struct Many {
    hwm_kib: u64,
    hwm_writes_kib: u64,
    rss_after_kib: u64,
    /// First idle window, then the second.
    idle_cpu_pct: [f64; 2],
    idle_s: f64,
    commits: usize,
    write_s: f64,
    dbs: usize,
}

fn many(ctx: &Ctx) -> Result<Many, String> {
    let dir = ctx.dir("mem-100");
    let dbs = 100;
    let (commits, span, idle) = if ctx.quick {
        (3_000, 3.0, 10.0)
    } else {
        (15_000, 15.0, 60.0)
    };
    let mut conns = Vec::new();
    let mut cfgs = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..dbs {
        let db = dir.join(format!("db{i:03}.db"));
        let replica = dir.join(format!("replica{i:03}"));
        let c = harness::open_app(&db);
        c.execute("INSERT INTO t (v) VALUES (x'00')", []).unwrap();
        conns.push(c);
        cfgs.push(DbCfg {
            path: db,
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![harness::file_replica("file", &replica, None, None)],
        });
        replicas.push(replica);
    }
    let cfg = dir.join("litestream.yml");
    harness::write_config(&cfg, None, &cfgs);
    let d = Daemon::start(&cfg, &dir.join("daemon.log"));
    harness::wait_for(Duration::from_secs(300), Duration::from_millis(100), || {
        replicas
            .iter()
            .all(|r| harness::all_generations_snapshotted(r))
            .then_some(())
    })
    .ok_or_else(|| format!("not every db snapshotted: {}", d.log_tail()))?;
    let start = Instant::now();
    for i in 0..commits {
        let due = start + Duration::from_secs_f64(span * i as f64 / commits as f64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        conns[i % dbs]
            .execute(
                "INSERT INTO t (v) VALUES (?1)",
                params![format!("commit {i} of the memory benchmark, a small row").into_bytes()],
            )
            .unwrap();
    }
    let write_s = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let hwm_writes_kib = d.status_kib("VmHWM");
    // Two idle windows: the first holds the one-off checkpoint-interval (1m) checkpoint of
    // every db after its writes (and the WAL restart and upload that follow); the second is
    // the steady state.
    let mut pct = [0.0; 2];
    let mut idle_s = 0.0;
    for p in pct.iter_mut() {
        let cpu0 = d.cpu_seconds();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(idle));
        idle_s = t0.elapsed().as_secs_f64();
        *p = (d.cpu_seconds() - cpu0) / idle_s * 100.0;
    }
    let hwm_kib = d.status_kib("VmHWM");
    let rss_after_kib = d.status_kib("VmRSS");
    d.stop();
    Ok(Many {
        hwm_kib,
        hwm_writes_kib,
        rss_after_kib,
        idle_cpu_pct: pct,
        idle_s,
        commits,
        write_s,
        dbs,
    })
}

pub fn run(ctx: &mut Ctx) {
    let metric = "idle RSS, 1 db";
    match idle_one(ctx) {
        Ok((rss, settle)) => {
            let mib = rss as f64 / 1024.0;
            ctx.push(Row::new(
                metric,
                format!("{mib:.1} MiB"),
                "≤ 8 MiB",
                "23.8–23.9 MiB",
                Row::met_if(mib <= 8.0),
                format!("one db (10 small rows), file replica, default intervals, no metrics; VmRSS from /proc/PID/status {settle:.0} s after the first snapshot"),
            ));
        }
        Err(e) => err_row(ctx, metric, &e),
    }
    let metric = "peak RSS, 100 dbs under writes";
    match many(ctx) {
        Ok(m) => {
            let mib = m.hwm_kib as f64 / 1024.0;
            ctx.push(Row::new(
                metric,
                format!(
                    "{mib:.1} MiB ({:.1} MiB 5 s after the writes; VmRSS at the end {:.1} MiB)",
                    m.hwm_writes_kib as f64 / 1024.0,
                    m.rss_after_kib as f64 / 1024.0
                ),
                "≤ 40 MiB",
                "177–226 MiB",
                Row::met_if(mib <= 40.0),
                format!(
                    "one daemon, {} dbs, each with its own file replica, default intervals; {} single-row commits round-robin over the dbs, evenly paced over {:.1} s; VmHWM (peak since start: the 100 initial snapshots, the writes, and the two idle windows below with their checkpoints), read at the end",
                    m.dbs, m.commits, m.write_s
                ),
            ));
            ctx.push(Row::new(
                "idle CPU, same daemon (100 dbs)",
                format!(
                    "{:.2}% of a core (first window: {:.2}%)",
                    m.idle_cpu_pct[1], m.idle_cpu_pct[0]
                ),
                "≤ 0.5% of a core",
                "–",
                Row::met_if(m.idle_cpu_pct[1] <= 0.5),
                format!(
                    "the daemon above, no writes: utime+stime over a second window of {:.0} s, after a first one starting 5 s after the last commit{}",
                    m.idle_s,
                    if m.idle_s >= 60.0 { " (the first holds each db's one-off checkpoint-interval (1m) checkpoint after its writes)" } else { "" }
                ),
            ));
        }
        Err(e) => err_row(ctx, metric, &e),
    }
}
