//! S3 replicas against a real S3 server (s3s-fs on 127.0.0.1, which checks SigV4), through a
//! proxy that counts requests and can cut the network.

mod common;
mod s3_server;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rusqlite::{params, Connection};
use s3_server::*;

/// Writes `env.config`: one db replicated to the S3 server.
fn write_s3_config(env: &Env, s3: &S3Server, secret: &str, sync: &str, min_pages: u32) {
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: {min_pages}\n    replicas:\n{}",
        env.db.display(),
        s3.replica_yaml(secret, sync)
    );
    fs::write(&env.config, y).unwrap();
}

fn setup(name: &str) -> Option<(Env, S3Server)> {
    if !s3s_fs_available() {
        return None;
    }
    let env = Env::new(name);
    let s3 = S3Server::start(&env.root.join("s3"));
    Some((env, s3))
}

/// The common start: a store, the config at sync-interval 100ms, an app db, a daemon that has
/// written its first snapshot. `None` when s3s-fs is not installed.
fn start_replicating(name: &str) -> Option<(Env, S3Server, Connection, Daemon)> {
    let (env, s3) = setup(name)?;
    write_s3_config(&env, &s3, SECRET_KEY, "100ms", 200);
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_first_snapshot(&s3, &mut d);
    Some((env, s3, app, d))
}

/// Restores from the `s3://` URL with credentials from the environment.
fn restore_url(env: &Env, s3: &S3Server, secret: &str) -> (std::process::Output, PathBuf) {
    let out = env.fresh("restored-s3-url");
    let o = Command::new(BIN)
        .args(["restore", "-o", out.to_str().unwrap(), &s3.url()])
        .env("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY)
        .env("LITESTREAM_SECRET_ACCESS_KEY", secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (o, out)
}

fn wait_restore(env: &Env, what: &str, pred: impl Fn(&Path) -> bool) -> PathBuf {
    let start = Instant::now();
    loop {
        let (o, out) = env.try_restore_config();
        if o.code == Some(0) && pred(&out) {
            return out;
        }
        remove_db_files(&out);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for: {what}; last restore: code={:?} stderr={}",
            o.code,
            o.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_first_snapshot(s3: &S3Server, d: &mut Daemon) {
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        generations(&s3.replica_dir())
            .iter()
            .any(|g| !snapshot_indexes(&s3.replica_dir(), g).is_empty())
    });
    assert!(ok, "no snapshot in the bucket within {DEADLINE:?}");
}

/// `n` transactions: inserts of 10–20 KB blobs, counter and blob updates, deletes.
fn mixed(c: &Connection, n: usize, seed: u64, next_id: &mut i64, live: &mut Vec<i64>) {
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let k = rng.range(0, 100);
        tx(c, |c| {
            if k < 55 || live.len() < 5 {
                let id = *next_id;
                *next_id += 1;
                insert_row(c, id, rng.range(10_000, 20_001) as usize);
                live.push(id);
            } else if k < 85 {
                let id = live[rng.range(0, live.len() as u64) as usize];
                let b = Rng::new(rng.next_u64()).bytes(rng.range(10_000, 20_001) as usize);
                let h = hash_bytes(&b) as i64;
                c.execute(
                    "UPDATE t SET b = ?2, h = ?3, n = n + 1 WHERE id = ?1",
                    params![id, b, h],
                )
                .unwrap();
            } else {
                let at = rng.range(0, live.len() as u64) as usize;
                let id = live.swap_remove(at);
                c.execute("DELETE FROM t WHERE id = ?1", params![id])
                    .unwrap();
            }
        });
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

fn puts(reqs: &[Req]) -> usize {
    reqs.iter().filter(|r| r.method == "PUT").count()
}

fn lists(reqs: &[Req]) -> usize {
    reqs.iter()
        .filter(|r| r.method == "GET" && r.target.contains("list-type=2"))
        .count()
}

#[test]
fn s3_replicate_and_restore_by_config_and_url() {
    let Some((env, s3, app, d)) = start_replicating("s3-basic") else {
        return;
    };

    let (mut next_id, mut live) = (1i64, Vec::new());
    mixed(&app, 320, 5, &mut next_id, &mut live);
    let src = digest_conn(&app, "t");
    assert_eq!(src.rows as usize, live.len());
    let stopped = d.stop_ok();
    assert!(
        !stopped.log.contains(SECRET_KEY),
        "the secret key appears in the daemon log"
    );

    // Keys: backups/app/generations/<16 hex>/snapshots/<8 hex>.snapshot.gz and …/wal/….
    assert_replica_tree_valid(&s3.replica_dir());
    let gens = generations(&s3.replica_dir());
    assert_eq!(gens.len(), 1, "{gens:?}");
    assert!(!wal_segments(&s3.replica_dir(), &gens[0]).is_empty());

    let (o, out) = env.try_restore_config();
    o.assert_ok("restore -config from S3");
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), src, "restore -config differs");
    assert_blobs_match_hash(&out);

    let (o, out) = restore_url(&env, &s3, SECRET_KEY);
    assert!(
        o.status.success(),
        "restore from s3:// URL failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), src, "restore from URL differs");
    assert!(
        s3.proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.target.contains(".wal.gz")),
        "restores did not read WAL segments through the S3 API"
    );
}

#[test]
fn s3_sigkill_under_load_restores_consistent_prefixes() {
    let Some((env, s3)) = setup("s3-crash") else {
        return;
    };
    write_s3_config(&env, &s3, SECRET_KEY, "100ms", 200);
    drop(create_app_db(&env.db, 4096));
    let writer = Writer::start(&env.db, 1, Duration::from_millis(3));
    let mut d = env.start("daemon-0");
    let mut prev = 0i64;
    for round in 0..5 {
        let out = wait_restore(&env, &format!("round {round}: progress"), |p| {
            id_summary(p).0 > prev
        });
        remove_db_files(&out);
        std::thread::sleep(Duration::from_millis(150 + 170 * round as u64));
        d.kill();
        let (o, out) = env.try_restore_config();
        o.assert_ok("restore after SIGKILL");
        let committed = writer.committed() as i64;
        assert_integrity_ok(&out);
        let (count, min, max) = id_summary(&out);
        eprintln!("round {round}: restored {count} rows (writer had committed {committed})");
        assert_eq!(
            (min, max),
            (1, count),
            "round {round}: not a contiguous prefix"
        );
        assert!(
            count <= committed && count >= prev,
            "round {round}: {count} rows"
        );
        assert_blobs_match_hash(&out);
        remove_db_files(&out);
        prev = count;
        d = env.start(&format!("daemon-{}", round + 1));
    }
    let n = writer.finish() as i64;
    // A SIGTERM before the daemon installed its handlers would kill it by default action.
    d.wait_log("initialized db", DEADLINE);
    d.stop_ok();
    let (o, out) = env.try_restore_config();
    o.assert_ok("final restore");
    assert_integrity_ok(&out);
    assert_eq!(id_summary(&out), (n, 1, n), "final restore misses rows");
    assert_eq!(table_digest(&out, "t"), table_digest(&env.db, "t"));
}

#[test]
fn s3_outage_then_catch_up_without_restart() {
    let Some((env, s3, app, mut d)) = start_replicating("s3-outage") else {
        return;
    };

    let (mut next_id, mut live) = (1i64, Vec::new());
    mixed(&app, 40, 21, &mut next_id, &mut live);
    s3.proxy.set_down();
    let down_at = Instant::now();
    let ids_before = next_id;
    // A PUT whose body passed the proxy just before it went down may still land in the
    // store (its reply is what the proxy drops): take the tree once it has settled.
    let mut tree_before = list_tree(&s3.replica_dir());
    let settled = wait_until(DEADLINE, || {
        std::thread::sleep(Duration::from_millis(300));
        let now = list_tree(&s3.replica_dir());
        std::mem::replace(&mut tree_before, now) == tree_before
    });
    assert!(settled, "the store kept changing after the proxy went down");
    // Keep writing through the outage: the app never waits for the replica.
    while down_at.elapsed() < Duration::from_secs(9) {
        mixed(&app, 20, next_id as u64, &mut next_id, &mut live);
        d.sample_hwm();
    }
    d.assert_alive();
    let peak_outage = d.peak_kb();
    // The outage was real: nothing reached the bucket while the app kept committing.
    assert_eq!(
        list_tree(&s3.replica_dir()),
        tree_before,
        "uploads got through the outage"
    );
    assert!(
        next_id > ids_before + 10,
        "the app stalled during the outage"
    );
    s3.proxy.set_up();
    let src = digest_conn(&app, "t");
    let out = wait_restore(&env, "the replica catches up after the outage", |p| {
        table_digest(p, "t") == src
    });
    assert_integrity_ok(&out);
    let stopped = d.stop_ok();
    println!(
        "daemon peak RSS during the outage: {peak_outage} KiB ({:.1} MiB); whole run {} KiB",
        peak_outage as f64 / 1024.0,
        stopped.peak_kb
    );
    // Short outages are absorbed by the client's own retries; longer ones are logged as sync
    // errors and retried by the replica thread. Either way nothing is lost (checked below).
    eprintln!(
        "sync errors logged during the outage: {}",
        stopped.log.matches("replica sync error").count()
    );
    assert!(peak_outage < 64 * 1024, "peak RSS {peak_outage} KiB");
    let (o, out) = env.try_restore_config();
    o.assert_ok("final restore");
    assert_eq!(table_digest(&out, "t"), src);
}

#[test]
fn s3_request_counts_idle_and_busy() {
    let Some((env, s3, app, d)) = start_replicating("s3-requests") else {
        return;
    };
    tx(&app, |c| insert_row(c, 1, 100));
    let out = wait_restore(&env, "first row", |p| id_summary(p).0 == 1);
    remove_db_files(&out);
    std::thread::sleep(Duration::from_millis(500));

    // Idle: nothing at all for 10 s, at sync-interval 100ms.
    s3.proxy.clear();
    std::thread::sleep(Duration::from_secs(10));
    let idle = s3.proxy.requests();
    println!("idle 10 s at sync-interval 100ms: {} requests", idle.len());
    assert!(idle.is_empty(), "idle daemon made requests: {idle:?}");
    d.stop_ok();

    // Busy: continuous writes for 10 s at sync-interval 1s: at most ~one PUT a second.
    write_s3_config(&env, &s3, SECRET_KEY, "1s", 1000);
    let d = env.start("daemon-busy");
    // The start's own LISTs (stale multipart uploads, then the generation, its snapshots and
    // its WAL) are not steady-state traffic: wait until the last of them has gone out.
    let started = wait_until(DEADLINE, || {
        s3.proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.target.contains("%2Fwal%2F&list-type=2"))
    });
    assert!(started, "the busy daemon never listed its WAL segments");
    std::thread::sleep(Duration::from_millis(500));
    s3.proxy.clear();
    let start = Instant::now();
    let mut id = 2;
    while start.elapsed() < Duration::from_secs(10) {
        tx(&app, |c| insert_row(c, id, 2000));
        id += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = s3.proxy.requests();
    println!(
        "10 s of writes ({} transactions) at sync-interval 1s: {} PUTs, {} LISTs, {} requests",
        id - 2,
        puts(&busy),
        lists(&busy),
        busy.len()
    );
    assert!(puts(&busy) <= 12, "too many PUTs: {busy:?}");
    assert_eq!(lists(&busy), 0, "LIST during steady writes: {busy:?}");
    d.stop_ok();
    let (o, out) = env.try_restore_config();
    o.assert_ok("restore");
    assert_eq!(id_summary(&out), (id - 1, 1, id - 1));
}

#[test]
fn s3_wrong_secret_is_a_clear_error_and_never_printed() {
    let Some((env, s3)) = setup("s3-auth") else {
        return;
    };
    let wrong = "wrong-secret-must-not-appear-91c2";
    write_s3_config(&env, &s3, wrong, "100ms", 200);
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    tx(&app, |c| insert_row(c, 1, 100));
    let log = d.wait_log("SignatureDoesNotMatch", DEADLINE);
    d.assert_alive();
    let line = log
        .lines()
        .find(|l| l.contains("SignatureDoesNotMatch"))
        .unwrap()
        .to_string();
    eprintln!("auth error line: {line}");
    assert!(
        line.contains("replica=s3"),
        "the error does not name the replica: {line}"
    );
    assert!(line.contains("403"), "no HTTP status: {line}");
    let stopped = d.stop();
    // Nothing could be replicated: the shutdown says so with EX_TEMPFAIL, not 0.
    assert_eq!(stopped.code, Some(75), "log:\n{}", stopped.log);
    assert!(!stopped.log.contains(wrong), "the secret is in the log");
    assert!(
        !stopped.log.contains("Signature="),
        "a signature is in the log"
    );

    let (o, out) = env.try_restore_config();
    o.assert_fails("restore with a wrong secret");
    assert!(
        o.stderr.contains("SignatureDoesNotMatch"),
        "stderr: {}",
        o.stderr
    );
    assert!(!o.stderr.contains(wrong) && !o.stdout.contains(wrong));
    assert!(!out.exists());
    let (o, out) = restore_url(&env, &s3, wrong);
    assert_eq!(o.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&o.stderr).contains(wrong));
    assert!(!out.exists());
}

#[test]
fn s3_large_snapshot_goes_multipart_in_bounded_memory() {
    let Some((env, s3)) = setup("s3-multipart") else {
        return;
    };
    write_s3_config(&env, &s3, SECRET_KEY, "100ms", 200);
    // ~300 MB of incompressible rows, written before the daemon starts: its first snapshot
    // streams the whole file.
    let app = create_app_db(&env.db, 4096);
    app.execute_batch("CREATE TABLE big (id INTEGER PRIMARY KEY, h INTEGER, b BLOB);")
        .unwrap();
    for chunk in 0..30 {
        tx(&app, |c| {
            for i in 0..10 {
                let id = chunk * 10 + i + 1;
                let b = Rng::new(id as u64).bytes(1024 * 1024);
                c.execute(
                    "INSERT INTO big (id, h, b) VALUES (?1, ?2, ?3)",
                    params![id, hash_bytes(&b) as i64, b],
                )
                .unwrap();
            }
        });
    }
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let size = fs::metadata(&env.db).unwrap().len();
    assert!(size > 300_000_000, "db is only {size} bytes");

    let mut d = env.start("daemon");
    let ok = wait_until(Duration::from_secs(240), || {
        d.assert_alive();
        d.sample_hwm();
        generations(&s3.replica_dir())
            .iter()
            .any(|g| !snapshot_indexes(&s3.replica_dir(), g).is_empty())
    });
    assert!(ok, "no snapshot of the 300 MB db");
    let stopped = d.stop_ok();
    let reqs = s3.proxy.requests();
    let parts = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .count();
    println!(
        "db {size} bytes: snapshot uploaded in {parts} parts; daemon peak RSS {} KiB ({:.1} MiB)",
        stopped.peak_kb,
        stopped.peak_kb as f64 / 1024.0
    );
    assert!(
        parts >= 30,
        "expected a multipart upload, saw {parts} parts"
    );
    assert!(
        stopped.peak_kb < 64 * 1024,
        "daemon peak RSS {} KiB",
        stopped.peak_kb
    );

    let src_rows: i64 = app
        .query_row("SELECT count(*) FROM big", [], |r| r.get(0))
        .unwrap();
    let src_sum: i64 = app
        .query_row("SELECT sum(h & 65535) FROM big", [], |r| r.get(0))
        .unwrap();
    drop(app);
    let (o, out) = env.try_restore_config();
    o.assert_ok("restore of the 300 MB db");
    println!("restore peak RSS {} KiB", o.peak_kb);
    assert_integrity_ok(&out);
    let c = open_existing(&out);
    let rows: i64 = c
        .query_row("SELECT count(*) FROM big", [], |r| r.get(0))
        .unwrap();
    let sum: i64 = c
        .query_row("SELECT sum(h & 65535) FROM big", [], |r| r.get(0))
        .unwrap();
    assert_eq!((rows, sum), (src_rows, src_sum));
    let mut st = c.prepare("SELECT h, b FROM big").unwrap();
    let mut q = st.query([]).unwrap();
    while let Some(r) = q.next().unwrap() {
        let h: i64 = r.get(0).unwrap();
        assert_eq!(
            hash_bytes(r.get_ref(1).unwrap().as_blob().unwrap()) as i64,
            h
        );
    }
}

/// The client API directly: paged listings (>1000 keys), open, batched deletes, NotFound.
#[test]
fn s3_client_lists_pages_and_deletes_in_batches() {
    use litestream::client::{is_not_found, ReplicaClient};
    use litestream::codec::Compression;
    use litestream::config::S3Config;

    let Some((_env, s3)) = setup("s3-client") else {
        return;
    };
    let cfg = S3Config {
        bucket: BUCKET.into(),
        path: PREFIX.into(),
        endpoint: Some(s3.endpoint()),
        force_path_style: true,
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        ..Default::default()
    };
    let c = litestream::client::s3::S3Client::new("s3", &cfg).unwrap();
    let (g1, g2) = ("00000000000000a1", "00000000000000b2");
    let n = 1100u64;
    for off in 0..n {
        c.write_wal_segment(g1, 0, off * 8, Compression::Gzip, &mut &b"x"[..])
            .unwrap();
    }
    let snap = c
        .write_snapshot(g2, 3, Compression::Gzip, &mut &b"snapshot bytes"[..])
        .unwrap();
    // A foreign object is ignored, never an error.
    std::fs::write(
        s3.replica_dir().join("generations").join(g2).join("README"),
        b"hi",
    )
    .unwrap();

    assert_eq!(
        c.generations().unwrap(),
        vec![g1.to_string(), g2.to_string()]
    );
    let segs = c.wal_segments(g1).unwrap();
    assert_eq!(segs.len() as u64, n, "paged listing lost keys");
    assert!(segs.windows(2).all(|w| w[0].offset < w[1].offset));
    let snaps = c.snapshots(g2).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].index, 3);
    assert_eq!(snaps[0].size, snap.size);
    let mut back = Vec::new();
    c.open_snapshot(&snaps[0])
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, b"snapshot bytes");

    c.delete_wal_segments(&segs[..5]).unwrap();
    assert_eq!(c.wal_segments(g1).unwrap().len() as u64, n - 5);
    let err = c.open_wal_segment(&segs[0]).map(|_| ()).unwrap_err();
    assert!(is_not_found(&err), "{err:#}");
    c.delete_generation(g1).unwrap();
    assert!(c.wal_segments(g1).unwrap().is_empty());
    c.delete_snapshots(&snaps).unwrap();
    assert!(c.snapshots(g2).unwrap().is_empty());
    let deletes = s3
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.target.contains("delete"))
        .count();
    assert!(
        deletes >= 3,
        "expected batched DeleteObjects requests, saw {deletes}"
    );
}

/// Retention and scheduled snapshots against S3: the bucket stays bounded, deletions go
/// through DeleteObjects, and the replica still restores.
#[test]
fn s3_retention_keeps_the_bucket_bounded() {
    let Some((env, s3)) = setup("s3-retention") else {
        return;
    };
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 20\n    replicas:\n{}        retention: 2s\n        retention-check-interval: 1s\n        snapshot-interval: 1s\n",
        env.db.display(),
        s3.replica_yaml(SECRET_KEY, "100ms")
    );
    fs::write(&env.config, y).unwrap();
    drop(create_app_db(&env.db, 4096));
    let writer = Writer::start(&env.db, 1, Duration::from_millis(5));
    let mut d = env.start("daemon");
    let start = Instant::now();
    let mut max_snapshots = 0;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        d.assert_alive();
        let dir = s3.replica_dir();
        let gens = generations(&dir);
        let snaps: usize = gens.iter().map(|g| snapshot_indexes(&dir, g).len()).sum();
        let segs: usize = gens.iter().map(|g| wal_segments(&dir, g).len()).sum();
        println!(
            "t={:>4.1}s snapshots={snaps} generations={} wal segments={segs}",
            start.elapsed().as_secs_f64(),
            gens.len()
        );
        max_snapshots = max_snapshots.max(snaps);
        assert!(gens.len() <= 1, "generations grew: {gens:?}");
    }
    let n = writer.finish() as i64;
    let stopped = d.stop_ok();
    assert!(
        stopped.log.contains("wal segments deleted"),
        "nothing deleted"
    );
    assert!(max_snapshots <= 6, "snapshots grew to {max_snapshots}");
    let dir = s3.replica_dir();
    for g in generations(&dir) {
        let lowest = *snapshot_indexes(&dir, &g).iter().min().unwrap();
        assert!(wal_segments(&dir, &g).iter().all(|s| s.0 >= lowest));
    }
    assert!(
        s3.proxy
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.target.contains("delete")),
        "no DeleteObjects request"
    );
    let (o, out) = env.try_restore_config();
    o.assert_ok("restore after retention");
    assert_integrity_ok(&out);
    assert_eq!(id_summary(&out), (n, 1, n));
}

/// Names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Copies the tree at `from` into `to` (objects s3s-fs then serves).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Restore from S3 downloads each WAL index into a spool file beside the output before
/// decoding it. A restore of several indexes equals the source; neither it nor a restore that
/// fails on a corrupt segment leaves anything in the output directory or the temp dir.
#[test]
fn s3_restore_of_several_indexes_leaves_no_spool_file() {
    let Some((env, s3)) = setup("s3-spool") else {
        return;
    };
    // A file replica with several indexes (a small min-checkpoint-page-count makes the daemon
    // checkpoint after each batch), then served as is by the S3 server.
    env.write_config(&Cfg {
        min_checkpoint_page_count: 10,
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon-spool");
    wait_for_a_snapshot(&env, &mut d);
    let gen = generations(&env.replica)[0].clone();
    let indexes = |env: &Env| {
        let mut v: Vec<u32> = wal_segments(&env.replica, &gen)
            .iter()
            .map(|s| s.0)
            .collect();
        v.dedup();
        v
    };
    let mut next = 1i64;
    for batch in 0..15 {
        for id in next..next + 20 {
            insert_row(&app, id, 5000);
        }
        next += 20;
        let n = next - 1;
        env.wait_restore(DEADLINE, &format!("batch {batch} replicated"), |p| {
            id_summary(p) == (n, 1, n)
        });
        if indexes(&env).len() >= 5 {
            break;
        }
        // A tick for the daemon to checkpoint before the next batch restarts the WAL.
        std::thread::sleep(Duration::from_millis(300));
    }
    let src = digest_conn(&app, "t");
    d.stop_ok();
    let idx = indexes(&env);
    assert!(idx.len() >= 4, "expected several WAL indexes, got {idx:?}");
    copy_tree(&env.replica, &s3.replica_dir());

    let out_dir = env.root.join("out");
    let tmp_dir = env.root.join("tmp");
    fs::create_dir_all(&out_dir).unwrap();
    fs::create_dir_all(&tmp_dir).unwrap();
    let restore = |name: &str| {
        let out = out_dir.join(name);
        let o = Command::new(BIN)
            .args(["restore", "-parallelism", "3", "-o"])
            .arg(&out)
            .arg(s3.url())
            .env("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY)
            .env("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("TMPDIR", &tmp_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (o, out)
    };

    let (o, out) = restore("restored.db");
    assert!(
        o.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(table_digest(&out, "t"), src);
    assert_integrity_ok(&out);
    // Beside the db only its meta dir, holding the identity it inherits (`db-id`).
    assert_eq!(
        names_in(&out_dir),
        vec![
            ".restored.db-litestream".to_string(),
            "restored.db".to_string()
        ]
    );
    assert_eq!(
        names_in(&out_dir.join(".restored.db-litestream")),
        vec!["db-id"]
    );
    assert!(names_in(&tmp_dir).is_empty(), "{:?}", names_in(&tmp_dir));

    // A corrupt segment of a middle index: the restore fails and leaves nothing behind.
    let segs = wal_segments(&s3.replica_dir(), &gen);
    let mid = idx[idx.len() / 2];
    let (_, _, path) = segs.iter().find(|s| s.0 == mid).unwrap();
    let len = fs::metadata(path).unwrap().len() as usize;
    fs::write(path, vec![0x5au8; len.max(64)]).unwrap();
    let (o, out) = restore("second.db");
    assert_eq!(
        o.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(!out.exists());
    assert_eq!(
        names_in(&out_dir),
        vec![
            ".restored.db-litestream".to_string(),
            "restored.db".to_string()
        ]
    );
    assert!(names_in(&tmp_dir).is_empty(), "{:?}", names_in(&tmp_dir));
}

/// #21: a shutdown with the store unreachable used to exit 0 ("replica not fully synced at
/// shutdown"), so a supervisor saw a clean stop while changes sat only in the shadow WAL. It
/// now exits 75 (EX_TEMPFAIL), and the next start uploads what was left: nothing is lost.
#[test]
fn a_shutdown_that_leaves_changes_unreplicated_exits_75_and_the_next_start_uploads_them() {
    let Some((env, s3, app, d)) = start_replicating("s3-shutdown-unreplicated") else {
        return;
    };
    let (mut next_id, mut live) = (1i64, Vec::new());
    mixed(&app, 20, 7, &mut next_id, &mut live);
    s3.proxy.set_down();
    mixed(&app, 20, 8, &mut next_id, &mut live);
    // Let the db thread copy the commits into the shadow WAL (its final sync would anyway).
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let stopped = d.stop();
    eprintln!("shutdown with the store down took {:?}", started.elapsed());
    assert_eq!(
        stopped.code,
        Some(75),
        "a shutdown that left changes unreplicated must exit 75; log:\n{}",
        stopped.log
    );

    s3.proxy.set_up();
    let src = digest_conn(&app, "t");
    let d = env.start("daemon-again");
    let out = wait_restore(&env, "the next start uploads what was left", |p| {
        table_digest(p, "t") == src
    });
    assert_integrity_ok(&out);
    let stopped = d.stop_ok();
    assert!(!stopped.log.contains("panicked"), "{}", stopped.log);
}
