//! Row 5: the first snapshot of a 512 MiB db (half random, half repeated text) into a fresh
//! file replica, timed from daemon start. Row 6: restores of those replicas, snapshot only and
//! snapshot + 200 MiB of WAL over 20 indexes, from a file replica and from the local S3 server.
//! Row 8: the size of the `make static` binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::harness::{self, Daemon, DbCfg, Gen, Metrics, MIB};
use crate::lag::err_row;
use crate::{Ctx, Met, Row};

const ROW: usize = 64 * 1024;

/// Builds the db: 64 KiB rows, alternately random and text, until the file reaches `size`.
/// Returns the number of rows and the application's connection, which stays open for the
/// whole section, as an application's would: when the daemon's connection is the last one
/// to close, SQLite checkpoints and resets the WAL, and the next daemon start must begin a
/// new generation.
fn build_db(db: &Path, size: u64) -> (i64, rusqlite::Connection) {
    let mut conn = harness::open_app(db);
    let mut g = Gen::new(11);
    let mut id = 0i64;
    loop {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t (id, v) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..64 {
                id += 1;
                st.execute(params![id, g.row(id as u64, ROW)]).unwrap();
            }
        }
        tx.commit().unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        if pages as u64 * 4096 >= size {
            break;
        }
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    (id, conn)
}

struct Snap {
    secs: f64,
    /// The snapshot's own duration, from the daemon's "snapshot written" log line.
    logged: Option<f64>,
    hwm_kib: u64,
    db_bytes: u64,
    object_bytes: u64,
}

/// A key pair for the encrypted rows only (made with age-keygen's format; it protects nothing).
const BENCH_IDENTITY: &str =
    "AGE-SECRET-KEY-1ERYS5G7WAYJRXZ562ET2V0R0CNJKRT58DSM472Q06KGHTYQLTGSS49AXYY";
const BENCH_RECIPIENT: &str = "age1xtkaxgdgpyfq5lg3ffpnps29hqtllt0jmesz35t78mhznwnk6f4qm0tu98";

/// The `age:` block of an encrypted replica (recipient and identity, so the same config
/// restores it).
fn age_yaml() -> String {
    format!(
        "        age:\n          recipients: [{BENCH_RECIPIENT}]\n          identities: [\"{BENCH_IDENTITY}\"]\n"
    )
}

/// `label` names the files: the compression, plus `-age` when `age`.
fn snapshot_once(
    dir: &Path,
    db: &Path,
    compression: &str,
    age: bool,
) -> Result<(Snap, PathBuf), String> {
    let _ = fs::remove_dir_all(harness::meta_dir(db));
    harness::settle();
    let label = format!("{compression}{}", if age { "-age" } else { "" });
    let replica = dir.join(format!("snap-{label}"));
    let cfg = dir.join(format!("snap-{label}.yml"));
    let comp = (compression != "gzip").then_some(compression);
    let mut rep = harness::file_replica("file", &replica, None, comp);
    if age {
        rep.push_str(&age_yaml());
    }
    harness::write_config(
        &cfg,
        None,
        &[DbCfg {
            path: db.to_path_buf(),
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![rep],
        }],
    );
    let t0 = Instant::now();
    let d_log = dir.join(format!("snap-{label}.log"));
    let d = Daemon::start(&cfg, &d_log);
    let obj = harness::wait_for(Duration::from_secs(900), Duration::from_millis(2), || {
        harness::snapshots(&replica).pop()
    })
    .ok_or_else(|| format!("no snapshot after 900 s: {}", d.log_tail()))?;
    let secs = t0.elapsed().as_secs_f64();
    let hwm_kib = d.status_kib("VmHWM");
    d.stop();
    Ok((
        Snap {
            secs,
            logged: harness::logged_elapsed(&d_log, "snapshot written"),
            hwm_kib,
            db_bytes: fs::metadata(db).map(|m| m.len()).unwrap_or(0),
            object_bytes: fs::metadata(&obj).map(|m| m.len()).unwrap_or(0),
        },
        replica,
    ))
}

struct Restored {
    /// The median run's wall time.
    secs: f64,
    /// Every run's wall time, in order.
    runs: Vec<f64>,
    /// CPU seconds of the restore process.
    cpu: f64,
    /// CPU seconds the S3 server spent meanwhile.
    server_cpu: Option<f64>,
    peak_kib: u64,
    bytes: u64,
}

impl Restored {
    /// "median of 3 runs: 1.42, 0.41, 0.40 s".
    fn runs_text(&self) -> String {
        let runs: Vec<String> = self.runs.iter().map(|s| format!("{s:.2}")).collect();
        format!("median of {} runs: {} s", runs.len(), runs.join(", "))
    }
}

/// Runs of each restore: the median is reported and every run's time printed. On this VM the
/// same restore sometimes takes 3–4× as long (516 MiB db, gzip, snapshot + WAL: 1.5–2.0 s
/// against 0.43–0.50 s), nearly all of the difference system time in the kernel's page
/// copies, the profile otherwise the same. It comes and goes with the machine's state (not
/// with a pause before the run, nor after 8 GB were freed and handed back to the host), so
/// one run should not decide a row.
const RESTORE_RUNS: usize = 3;

/// `litestream restore -o OUT url`, RESTORE_RUNS times back to back; the median run, with
/// the server's CPU during that run when `server_cpu` reads it.
fn restore(
    dir: &Path,
    url: &str,
    env: &[(&str, &str)],
    label: &str,
    server_cpu: Option<&dyn Fn() -> f64>,
) -> Result<Restored, String> {
    restore_from(dir, &[url], env, label, server_cpu)
}

/// [`restore`] from `src`, the arguments after `-o OUT` (a URL, or `-config CFG DB`).
fn restore_from(
    dir: &Path,
    src: &[&str],
    env: &[(&str, &str)],
    label: &str,
    server_cpu: Option<&dyn Fn() -> f64>,
) -> Result<Restored, String> {
    let mut runs = Vec::new();
    for _ in 0..RESTORE_RUNS {
        let cpu0 = server_cpu.map(|f| f());
        let mut r = restore_once(dir, src, env, label)?;
        r.server_cpu = server_cpu.zip(cpu0).map(|(f, c0)| f() - c0);
        runs.push(r);
    }
    let times: Vec<f64> = runs.iter().map(|r| r.secs).collect();
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    let mut median = runs.swap_remove(runs.len() / 2);
    median.runs = times;
    Ok(median)
}

fn restore_once(
    dir: &Path,
    src: &[&str],
    env: &[(&str, &str)],
    label: &str,
) -> Result<Restored, String> {
    let out = dir.join(format!("restored-{label}.db"));
    let _ = fs::remove_file(&out);
    harness::settle();
    let mut args = vec!["restore", "-o", out.to_str().unwrap()];
    args.extend_from_slice(src);
    let r = harness::run_measured(
        &args,
        env,
        &dir.join(format!("restore-{label}.log")),
    );
    let bytes = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&out);
    if !r.ok {
        return Err(format!("restore failed: {}", r.stderr.trim()));
    }
    Ok(Restored {
        secs: r.elapsed.as_secs_f64(),
        runs: Vec::new(),
        cpu: r.cpu,
        server_cpu: None,
        peak_kib: r.peak_kib,
        bytes,
    })
}

fn mibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB / secs
}

fn restore_row(
    ctx: &mut Ctx,
    metric: &str,
    r: Result<Restored, String>,
    workload: String,
) -> Option<f64> {
    match r {
        Ok(r) => {
            let speed = mibs(r.bytes, r.secs);
            let peak = r.peak_kib as f64 / 1024.0;
            ctx.push(Row::new(
                metric,
                format!(
                    "{speed:.0} MiB/s, {peak:.1} MiB peak ({}; {:.2} s CPU)",
                    r.runs_text(),
                    r.cpu
                ),
                "≥ 500 MiB/s, ≤ 24 MiB peak",
                "211–237 MiB/s, 29 MiB peak",
                Row::met_if(speed >= 500.0 && peak <= 24.0),
                workload,
            ));
            Some(r.secs)
        }
        Err(e) => {
            err_row(ctx, metric, &e);
            None
        }
    }
}

fn s3_restore_row(
    ctx: &mut Ctx,
    metric: &str,
    r: Result<Restored, String>,
    file_secs: Option<f64>,
    curl: Option<(f64, &str)>,
    workload: String,
) {
    match r {
        Ok(r) => {
            let speed = mibs(r.bytes, r.secs);
            let peak = r.peak_kib as f64 / 1024.0;
            let (ratio, met) = match file_secs {
                Some(f) => (
                    format!(", {:.2}× the file replica's time", r.secs / f),
                    Row::met_if(r.secs <= 1.5 * f),
                ),
                None => (String::new(), Met::Na),
            };
            // The server's own floor: serving the snapshot to curl, which decodes nothing.
            let floor = match (curl, file_secs) {
                (Some((c, what)), Some(f)) => format!(
                    "; s3s-fs serves {what} to curl in {c:.2} s = {:.2}× the file restore",
                    c / f
                ),
                _ => String::new(),
            };
            ctx.push(Row::new(
                metric,
                format!(
                    "{speed:.0} MiB/s, {peak:.1} MiB peak ({}; {:.2} s CPU{ratio}; s3s-fs used {:.2} s CPU{floor})",
                    r.runs_text(),
                    r.cpu,
                    r.server_cpu.unwrap_or(f64::NAN)
                ),
                "within 1.5× of the file replica",
                "–",
                met,
                workload,
            ));
        }
        Err(e) => err_row(ctx, metric, &e),
    }
}

pub fn run(ctx: &mut Ctx) {
    let size: u64 = if ctx.quick { 64 << 20 } else { 512 << 20 };
    let (n_idx, per_idx_rows) = if ctx.quick { (4, 160) } else { (20, 160) };
    let dir = ctx.dir("snapshot");
    let db = dir.join("app.db");
    let t = Instant::now();
    let (rows, mut conn) = build_db(&db, size);
    let db_mib = fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / MIB;
    println!(
        "  built a {db_mib:.0} MiB db ({rows} rows) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Row 5: first snapshot from daemon start.
    let mut snap_replicas = Vec::new();
    for c in ["gzip", "lz4"] {
        let metric = format!("snapshot {db_mib:.0} MiB db, from daemon start ({c})");
        match snapshot_once(&dir, &db, c, false) {
            Ok((s, replica)) => {
                let speed = mibs(s.db_bytes, s.secs);
                let peak = s.hwm_kib as f64 / 1024.0;
                ctx.push(Row::new(
                    &metric,
                    format!(
                        "{speed:.0} MiB/s, {peak:.1} MiB peak ({:.2} s; the snapshot itself {})",
                        s.secs,
                        s.logged
                            .map(|l| format!("{:.2} s = {:.0} MiB/s", l, mibs(s.db_bytes, l)))
                            .unwrap_or_else(|| "?".into())
                    ),
                    "≥ 400 MiB/s, ≤ 24 MiB peak",
                    "124–131 MiB/s, 30 MiB peak",
                    Row::met_if(speed >= 400.0 && peak <= 24.0),
                    format!(
                        "{:.0} MiB db of {rows} 64 KiB rows (alternately random and repeated text), no metadata dir, fresh file replica, `compression: {c}`{}; from spawning `litestream replicate` to the snapshot object renamed into place (2 ms poll; \"the snapshot itself\" is the elapsed= of the daemon's `snapshot written` log line); object {:.0} MiB; VmHWM of the daemon",
                        s.db_bytes as f64 / MIB,
                        if c == "gzip" { " (the default, not written in the config)" } else { "" },
                        s.object_bytes as f64 / MIB
                    ),
                ));
                snap_replicas.push((c, replica, s.secs));
            }
            Err(e) => err_row(ctx, &metric, &e),
        }
    }

    // Encrypted: the same snapshot with `age:` (one recipient), against the plain row.
    let mut age_snaps = Vec::new();
    for (c, _, plain_secs) in &snap_replicas {
        let metric = format!("snapshot {db_mib:.0} MiB db, from daemon start ({c}, age)");
        match snapshot_once(&dir, &db, c, true) {
            Ok((s, _)) => {
                let ratio = s.secs / plain_secs;
                ctx.push(Row::new(
                    &metric,
                    format!(
                        "{:.0} MiB/s, {:.1} MiB peak ({:.2} s = {ratio:.2}× the plain row)",
                        mibs(s.db_bytes, s.secs),
                        s.hwm_kib as f64 / 1024.0,
                        s.secs
                    ),
                    "within 1.3× of the plain row",
                    "–",
                    Row::met_if(ratio <= 1.3),
                    format!("as the row without age, plus `age:` with one X25519 recipient (and the identity, for the restore row): every object is age(compressed(raw)); object {:.0} MiB", s.object_bytes as f64 / MIB),
                ));
                age_snaps.push((*c, dir.join(format!("snap-{c}-age.yml"))));
            }
            Err(e) => err_row(ctx, &metric, &e),
        }
    }

    // Row 6, snapshot only, file replicas.
    let mut file_snap_secs = Vec::new();
    for (c, replica, _) in &snap_replicas {
        let r = restore(
            &dir,
            &format!("file://{}", replica.display()),
            &[],
            &format!("snap-{c}"),
            None,
        );
        let secs = restore_row(
            ctx,
            &format!("restore, snapshot only, file replica ({c})"),
            r,
            "`litestream restore -o OUT file://…` of the replica above (snapshot + the few-page WAL of index 0), default -parallelism 8, integrity_check included; median of 3 back-to-back runs, all three listed; MiB/s of the restored db; peak RSS = VmHWM of the restore process polled every 2 ms".to_string(),
        );
        file_snap_secs.push((*c, secs));
    }
    for (c, cfg) in &age_snaps {
        let metric = format!("restore, snapshot only, file replica ({c}, age)");
        let plain = file_snap_secs.iter().find(|(fc, _)| fc == c).and_then(|x| x.1);
        match restore_from(
            &dir,
            &["-config", cfg.to_str().unwrap(), db.to_str().unwrap()],
            &[],
            &format!("snap-{c}-age"),
            None,
        ) {
            Ok(r) => {
                let (ratio, met) = match plain {
                    Some(p) => (
                        format!(" = {:.2}× the plain row", r.secs / p),
                        Row::met_if(r.secs <= 1.3 * p),
                    ),
                    None => (String::new(), Met::Na),
                };
                ctx.push(Row::new(
                    &metric,
                    format!(
                        "{:.0} MiB/s, {:.1} MiB peak ({}{ratio}; {:.2} s CPU)",
                        mibs(r.bytes, r.secs),
                        r.peak_kib as f64 / 1024.0,
                        r.runs_text(),
                        r.cpu
                    ),
                    "within 1.3× of the plain row",
                    "–",
                    met,
                    "as the plain row, with `restore -config CFG -o OUT DB` (the config holds the identity) from the encrypted replica above".to_string(),
                ));
            }
            Err(e) => err_row(ctx, &metric, &e),
        }
    }

    // Row 6, S3 snapshot only, then snapshot + WAL (file and S3).
    let port = harness::free_port();
    let _ = fs::remove_dir_all(harness::meta_dir(&db));
    let mut reps = vec![
        harness::file_replica("file-gzip", &dir.join("wal-gzip"), None, None),
        harness::file_replica("file-lz4", &dir.join("wal-lz4"), None, Some("lz4")),
    ];
    let mut roots = vec![dir.join("wal-gzip"), dir.join("wal-lz4")];
    if let Some(s3) = &ctx.s3 {
        reps.push(s3.replica_yaml("s3-gzip", "restore-gzip", None, None));
        reps.push(s3.replica_yaml("s3-lz4", "restore-lz4", None, Some("lz4")));
        roots.push(s3.prefix_dir("restore-gzip"));
        roots.push(s3.prefix_dir("restore-lz4"));
    }
    let cfg = dir.join("wal.yml");
    harness::write_config(
        &cfg,
        Some(port),
        &[DbCfg {
            path: db.clone(),
            monitor_interval: None,
            extra: String::new(),
            replicas: reps,
        }],
    );
    let ready = |d: &Daemon| -> Result<(), String> {
        let ok = harness::wait_for(Duration::from_secs(900), Duration::from_millis(100), || {
            roots
                .iter()
                .all(|r| harness::all_generations_snapshotted(r))
                .then_some(())
        })
        .is_some()
            && harness::wait_caught_up(port, Duration::from_secs(600));
        if ok {
            Ok(())
        } else {
            Err(format!("replicas not ready: {}", d.log_tail()))
        }
    };
    let d = Daemon::start(&cfg, &dir.join("wal-1.log"));
    if let Err(e) = ready(&d) {
        err_row(ctx, "restore, snapshot + WAL", &e);
        return;
    }
    d.stop();
    if ctx.s3.is_some() {
        for c in ["gzip", "lz4"] {
            let s3 = ctx.s3.as_ref().unwrap();
            let server_cpu = || s3.cpu_seconds();
            let r = restore(
                &dir,
                &s3.direct_url(&format!("restore-{c}")),
                &s3.env(),
                &format!("s3-snap-{c}"),
                Some(&server_cpu),
            );
            let file = file_snap_secs
                .iter()
                .find(|(fc, _)| *fc == c)
                .and_then(|x| x.1);
            let curl = s3
                .curl_download_secs(&format!("restore-{c}"), "/snapshots/")
                .map(|t| (t, "the snapshot object alone"));
            s3_restore_row(
                ctx,
                &format!("restore from local S3, snapshot only ({c})"),
                r,
                file,
                curl,
                "as the file row, from `s3://bkt/…?endpoint=http://127.0.0.1:PORT` straight to s3s-fs (not through the proxy), a replica the daemon uploaded, median of 3 runs; compared with the file replica's snapshot-only restore; floor = `curl --aws-sigv4 … -o /dev/null` of the snapshot object from the same server right after".to_string(),
            );
        }
    }

    // Add the WAL: one 10 MiB transaction per index; the daemon's PASSIVE checkpoint (at 1000
    // pages) after each lets the next transaction restart the WAL, i.e. start a new index.
    let d = Daemon::start(&cfg, &dir.join("wal-2.log"));
    if let Err(e) = ready(&d) {
        err_row(ctx, "restore, snapshot + WAL", &e);
        return;
    }
    let m0 = Metrics::scrape(port).unwrap_or(Metrics(Default::default()));
    let mut g = Gen::new(99);
    let mut id = 0i64;
    for _ in 0..n_idx {
        // Wait, after each transaction, for the daemon to have moved to the next index (its
        // PASSIVE checkpoint at 1000 pages, then its own write restarting the WAL): an
        // application commit landing between the daemon's last copy and its checkpoint makes
        // the restart lose frames, and the daemon then starts a new generation.
        let idx0 = Metrics::scrape(port)
            .map(|m| m.sum("litestream_shadow_wal_index"))
            .unwrap_or(0.0);
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("UPDATE t SET v = ?1 WHERE id = ?2")
                .unwrap();
            for _ in 0..per_idx_rows {
                id = id % rows + 1;
                st.execute(params![g.row(id as u64 + 1, ROW), id]).unwrap();
            }
        }
        tx.commit().unwrap();
        let ok = harness::wait_for(Duration::from_secs(120), Duration::from_millis(20), || {
            Metrics::scrape(port)
                .filter(|m| m.sum("litestream_shadow_wal_index") > idx0)
                .map(|_| ())
        });
        if ok.is_none() {
            err_row(
                ctx,
                "restore, snapshot + WAL",
                &format!("no new index: {}", d.log_tail()),
            );
            return;
        }
    }
    if !harness::wait_caught_up(port, Duration::from_secs(900)) {
        err_row(
            ctx,
            "restore, snapshot + WAL",
            &format!("replicas behind: {}", d.log_tail()),
        );
        return;
    }
    let m1 = Metrics::scrape(port).unwrap_or(Metrics(Default::default()));
    d.stop();
    let wal_mib =
        (m1.sum("litestream_total_wal_bytes") - m0.sum("litestream_total_wal_bytes")) / MIB;
    let gens = harness::generations(&roots[0]);
    let indexes: std::collections::BTreeSet<u32> = gens
        .iter()
        .flat_map(|g| harness::wal_segments(g))
        .filter_map(|p| harness::segment_index(&p))
        .collect();
    let shape = format!(
        "snapshot + {wal_mib:.0} MiB of WAL over {} indexes (one 10 MiB transaction of 160 rewritten 64 KiB rows per index; {} generation(s))",
        indexes.len(),
        gens.len()
    );
    let mut file_wal_secs = Vec::new();
    for c in ["gzip", "lz4"] {
        let r = restore(
            &dir,
            &format!("file://{}", dir.join(format!("wal-{c}")).display()),
            &[],
            &format!("wal-{c}"),
            None,
        );
        let secs = restore_row(
            ctx,
            &format!("restore, snapshot + WAL, file replica ({c})"),
            r,
            format!("`litestream restore -o OUT file://…`: {shape}; default -parallelism 8, integrity_check included; median of 3 back-to-back runs, all three listed; MiB/s of the restored db; peak RSS = VmHWM of the restore process polled every 2 ms"),
        );
        file_wal_secs.push((c, secs));
    }
    if ctx.s3.is_some() {
        for c in ["gzip", "lz4"] {
            let s3 = ctx.s3.as_ref().unwrap();
            let server_cpu = || s3.cpu_seconds();
            let r = restore(
                &dir,
                &s3.direct_url(&format!("restore-{c}")),
                &s3.env(),
                &format!("s3-wal-{c}"),
                Some(&server_cpu),
            );
            let file = file_wal_secs
                .iter()
                .find(|(fc, _)| *fc == c)
                .and_then(|x| x.1);
            s3_restore_row(
                ctx,
                &format!("restore from local S3, snapshot + WAL ({c})"),
                r,
                file,
                s3.curl_download_secs(&format!("restore-{c}"), "/")
                    .map(|t| (t, "every object (8 at a time)")),
                format!("as the file row ({shape}), straight from the local s3s-fs, median of 3 runs; compared with the file replica's restore of the same data; floor = `curl --aws-sigv4 … -o /dev/null` of every object under the replica's prefix, up to 8 at once (`-Z`), right after"),
            );
        }
    }
}

pub fn static_binary(ctx: &mut Ctx) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/litestream-static");
    match fs::metadata(&p) {
        Ok(m) => {
            let mb = m.len() as f64 / 1e6;
            let age = m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|e| format!("built {:.1} h before this run", e.as_secs_f64() / 3600.0))
                .unwrap_or_default();
            ctx.push(Row::new(
                "static binary",
                format!("{mb:.2} MB ({:.2} MiB)", m.len() as f64 / MIB),
                "≤ 6 MB",
                "26.2 MB",
                Row::met_if(mb <= 6.0),
                format!("size of target/litestream-static from `make static` ({age}; rerun it to refresh)"),
            ));
        }
        Err(_) => ctx.push(Row::new(
            "static binary",
            "run make static".into(),
            "≤ 6 MB",
            "26.2 MB",
            Met::Na,
            "target/litestream-static not found".into(),
        )),
    }
}
