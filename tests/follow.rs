//! `restore -f` (issue #25): a real primary daemon, a real follower process, and readers of
//! the follower's database checking that they only ever see committed prefixes.

mod common;
mod s3_server;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use rusqlite::{Connection, OpenFlags};

/// Starts `restore -f -follow-interval 100ms -o out URL`.
fn follower(env: &Env, out: &Path, label: &str) -> Daemon {
    verify_hashes();
    let args: Vec<OsString> = vec![
        "restore".into(),
        "-f".into(),
        "-follow-interval".into(),
        "100ms".into(),
        "-o".into(),
        out.into(),
        env.replica_url().into(),
    ];
    env.spawn_daemon(label, args)
}

/// Followers check their incremental content hash against a full one after every commit
/// (debug builds: `LITESTREAM_FOLLOW_VERIFY`).
fn verify_hashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("LITESTREAM_FOLLOW_VERIFY", "1"));
}

/// `(count, min, max)` of `t` in the follower's db, read as a plain reader; `None` while the
/// file is not there yet.
fn summary(out: &Path) -> Option<(i64, i64, i64)> {
    if !out.exists() {
        return None;
    }
    let c = Connection::open_with_flags(out, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.busy_timeout(Duration::from_secs(5)).ok()?;
    c.query_row(
        "SELECT count(*), coalesce(min(id),0), coalesce(max(id),0) FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .ok()
}

fn wait_follower_rows(d: &mut Daemon, out: &Path, n: i64) {
    let ok = wait_until(Duration::from_secs(60), || {
        d.assert_alive();
        summary(out) == Some((n, 1, n))
    });
    assert!(
        ok,
        "follower did not reach ids 1..={n}: {:?}\n{}",
        summary(out),
        d.log_text()
    );
}

/// The follower equals the primary: same rows, same blobs, and a sound file.
fn assert_same(primary: &Path, out: &Path) {
    assert_eq!(table_digest(primary, "t"), table_digest(out, "t"));
    assert_integrity_ok(out);
    assert_blobs_match_hash(out);
}

/// Readers of OUT, each transaction checked: ids are exactly 1..=count (a committed prefix of
/// the writer's one-row transactions), blobs match their hashes, and a snapshot held across
/// a pause does not move.
struct Readers {
    stop: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Readers {
    fn start(out: &Path, n: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|k| {
                let (out, stop, checks) = (out.to_path_buf(), stop.clone(), checks.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    let c = Connection::open_with_flags(&out, OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .map_err(|e| e.to_string())?;
                    c.busy_timeout(Duration::from_secs(5))
                        .map_err(|e| e.to_string())?;
                    while !stop.load(Ordering::SeqCst) {
                        c.execute_batch("BEGIN").map_err(|e| e.to_string())?;
                        let read = |c: &Connection| -> Result<(i64, i64, i64, i64), String> {
                            c.query_row(
                                "SELECT count(*), coalesce(min(id),0), coalesce(max(id),0), coalesce(sum(length(b)),0) FROM t",
                                [],
                                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                            )
                            .map_err(|e| format!("reader {k}: {e}"))
                        };
                        let first = read(&c)?;
                        let (count, min, max, _) = first;
                        if count > 0 && (min, max) != (1, count) {
                            return Err(format!(
                                "reader {k}: ids are not a prefix: count {count} min {min} max {max}"
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(7 * (k as u64 + 1)));
                        let again = read(&c)?;
                        if again != first {
                            return Err(format!(
                                "reader {k}: snapshot moved inside a read transaction: {first:?} then {again:?}"
                            ));
                        }
                        c.execute_batch("COMMIT").map_err(|e| e.to_string())?;
                        checks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Readers {
            stop,
            checks,
            threads,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("reader panicked").expect("reader check");
        }
        self.checks.load(Ordering::Relaxed)
    }
}

fn small_checkpoints() -> Cfg {
    Cfg {
        // Small WAL lives: the follower crosses many indexes.
        min_checkpoint_page_count: 40,
        ..Cfg::default()
    }
}

#[test]
fn follower_equals_primary_while_readers_read() {
    let env = Env::new("follow");
    env.write_config(&small_checkpoints());
    let app = create_app_db(&env.db, 4096);
    let d = replicating(&env, &app, 20);
    let out = env.root.join("follower.db");
    let mut f = follower(&env, &out, "follower");
    wait_follower_rows(&mut f, &out, 20);
    assert_same(&env.db, &out);

    let readers = Readers::start(&out, 3);
    let writer = Writer::start(&env.db, 21, Duration::from_millis(3));
    for step in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        let (count, min, max) = summary(&out).expect("follower db");
        assert!(
            count <= writer.committed() as i64,
            "step {step}: follower has more rows than the primary committed"
        );
        assert_eq!((min, max), (1, count), "step {step}");
    }
    let n = writer.finish() as i64;
    wait_follower_rows(&mut f, &out, n);
    let checks = readers.finish();
    eprintln!("{n} rows followed, {checks} reader transactions checked");
    assert!(checks > 0);
    assert_same(&env.db, &out);
    let log = f.log_text();
    assert!(log.contains("caught up"), "{log}");
    let stopped = f.stop();
    assert_eq!(stopped.code, Some(0), "{}", stopped.log);
    drop(d);
}

#[test]
fn kill_9_mid_apply_resumes_without_reapplying_or_skipping() {
    let env = Env::new("follow-kill");
    env.write_config(&small_checkpoints());
    let app = create_app_db(&env.db, 4096);
    let _d = replicating(&env, &app, 10);
    let out = env.root.join("follower.db");
    let writer = Writer::start(&env.db, 11, Duration::from_millis(2));
    let mut rng = Rng::new(25);
    for round in 0..5 {
        let mut f = follower(&env, &out, &format!("follower-{round}"));
        if round > 0 {
            f.wait_log("resuming", DEADLINE);
        }
        std::thread::sleep(Duration::from_millis(rng.range(200, 900)));
        f.kill();
        if let Some((count, min, max)) = summary(&out) {
            assert_eq!((min.min(1), max), (min.min(1), count), "round {round}");
            assert_integrity_ok(&out);
        }
    }
    let n = writer.finish() as i64;
    let mut f = follower(&env, &out, "follower-last");
    wait_follower_rows(&mut f, &out, n);
    assert_same(&env.db, &out);
    f.stop_ok();
}

#[test]
fn a_new_generation_on_the_primary_rebuilds_the_follower() {
    let env = Env::new("follow-gen");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let d = replicating(&env, &app, 10);
    let out = env.root.join("follower.db");
    let mut f = follower(&env, &out, "follower");
    wait_follower_rows(&mut f, &out, 10);
    // A reader holding the old file across the swap.
    let old_reader = Connection::open_with_flags(&out, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let before: i64 = old_reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();

    // Kill the primary daemon and drop its meta dir: its next start is a new generation.
    d.kill();
    fs::remove_dir_all(env.root.join(".app.db-litestream")).unwrap();
    insert_ids(&app, 11, 30);
    let _d2 = env.start("daemon-2");
    f.wait_log("rebuilding the followed database", Duration::from_secs(60));
    wait_follower_rows(&mut f, &out, 30);
    assert_same(&env.db, &out);
    // The old reader still reads a consistent (old) database.
    let after: i64 = old_reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(after >= before);
    let log = f.log_text();
    assert!(log.contains("moved on to generation"), "{log}");
    f.stop_ok();
}

/// The segment file of the replica that holds (index, offset).
fn segment_file(replica: &Path, gen: &str, index: u32, offset: u64) -> PathBuf {
    replica
        .join("generations")
        .join(gen)
        .join("wal")
        .join(format!("{index:08x}_{offset:08x}.wal.gz"))
}

fn position(out: &Path) -> (String, u32, u64) {
    let text = fs::read_to_string(format!("{}-follow", out.display())).unwrap();
    let cur = text.lines().nth(1).unwrap();
    let f: Vec<&str> = cur.split(' ').collect();
    (
        f[1].to_string(),
        u32::from_str_radix(f[2], 16).unwrap(),
        f[3].parse().unwrap(),
    )
}

#[test]
fn a_corrupt_segment_stops_the_follower_at_its_last_good_transaction() {
    let env = Env::new("follow-corrupt");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let d = replicating(&env, &app, 10);
    let out = env.root.join("follower.db");
    let mut f = follower(&env, &out, "follower");
    wait_follower_rows(&mut f, &out, 10);
    f.stop_ok();
    // More rows replicate while the follower is stopped.
    insert_ids(&app, 11, 20);
    wait_rows(&env, 20);
    d.stop_ok();
    let (gen, index, offset) = position(&out);
    let (seg, offset) = {
        let p = segment_file(&env.replica, &gen, index, offset);
        if p.exists() {
            (p, offset)
        } else {
            (segment_file(&env.replica, &gen, index + 1, 0), 0)
        }
    };
    assert!(seg.exists(), "{} missing", seg.display());
    // Flip one byte in the page data of the segment's last frame: its checksum fails.
    let mut raw = gunzip(&seg);
    let at = raw.len() - 100;
    raw[at] ^= 0xff;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    fs::write(&seg, enc.finish().unwrap()).unwrap();
    let _ = offset;

    let before = table_digest(&out, "t");
    let f = follower(&env, &out, "follower-2");
    let stopped = f.wait_exit(Duration::from_secs(60));
    assert_ne!(stopped.code, Some(0), "{}", stopped.log);
    assert!(
        stopped.log.contains("the replica is corrupt") && stopped.log.contains("checksum"),
        "{}",
        stopped.log
    );
    // OUT holds whole transactions only: the ones before the bad frame's transaction.
    let (count, min, max) = summary(&out).unwrap();
    assert_eq!((min, max), (1, count));
    assert!((10..20).contains(&count), "count {count}");
    assert_integrity_ok(&out);
    let _ = before;
}

#[test]
fn retention_removing_segments_under_a_stopped_follower_rebuilds_it() {
    let env = Env::new("follow-retention");
    env.write_config(&Cfg {
        min_checkpoint_page_count: 20,
        extra_global: String::new(),
        ..Cfg::default()
    });
    // Retention settings go under the replica: rewrite the config with them.
    let y = fs::read_to_string(&env.config).unwrap()
        + "        retention: 1s\n        retention-check-interval: 1s\n        snapshot-interval: 1s\n";
    fs::write(&env.config, y).unwrap();
    let app = create_app_db(&env.db, 4096);
    let d = replicating(&env, &app, 10);
    let out = env.root.join("follower.db");
    let mut f = follower(&env, &out, "follower");
    wait_follower_rows(&mut f, &out, 10);
    f.stop_ok();
    let (gen, index, offset) = position(&out);
    // Write until retention has removed what the follower needs next.
    let mut next = 11;
    let gone = wait_until(Duration::from_secs(60), || {
        insert_ids(&app, next, next + 9);
        next += 10;
        std::thread::sleep(Duration::from_millis(300));
        !segment_file(&env.replica, &gen, index, offset).exists()
            && !segment_file(&env.replica, &gen, index + 1, 0).exists()
            && !wal_segments(&env.replica, &gen).is_empty()
    });
    assert!(gone, "retention never removed the follower's next segment");
    let n = next - 1;
    wait_rows(&env, n);
    let mut f = follower(&env, &out, "follower-2");
    f.wait_log("retention removed", Duration::from_secs(60));
    wait_follower_rows(&mut f, &out, n);
    assert_same(&env.db, &out);
    f.stop_ok();
    drop(d);
}

#[test]
fn follow_refuses_index_and_timestamp_and_foreign_outputs() {
    let env = Env::new("follow-flags");
    let url = env.replica_url();
    let o = env.run(&[
        "restore",
        "-f",
        "-timestamp",
        "2020-01-01T00:00:00Z",
        "-o",
        "x.db",
        &url,
    ]);
    o.assert_fails("-f -timestamp");
    assert!(
        o.stderr.contains("-f") && o.stderr.contains("-timestamp"),
        "{}",
        o.stderr
    );
    let o = env.run(&[
        "restore",
        "-f",
        "-generation",
        "0123456789abcdef",
        "-index",
        "1",
        "-o",
        "x.db",
        &url,
    ]);
    o.assert_fails("-f -index");
    assert!(o.stderr.contains("-index"), "{}", o.stderr);

    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let _d = replicating(&env, &app, 3);
    // An existing database the follower did not make is never taken over.
    let out = env.root.join("mine.db");
    fs::write(&out, b"precious").unwrap();
    let o = env.run(&["restore", "-f", "-o", out.to_str().unwrap(), &url]);
    o.assert_fails("-f over a foreign file");
    assert!(
        o.stderr.contains("not made by `restore -f`"),
        "{}",
        o.stderr
    );
    let mut kept = Vec::new();
    fs::File::open(&out)
        .unwrap()
        .read_to_end(&mut kept)
        .unwrap();
    assert_eq!(kept, b"precious");
}

#[test]
fn an_application_writing_to_the_follower_stops_it() {
    let env = Env::new("follow-write");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let _d = replicating(&env, &app, 5);
    let out = env.root.join("follower.db");
    let mut f = follower(&env, &out, "follower");
    wait_follower_rows(&mut f, &out, 5);
    {
        let w = open_app(&out);
        w.execute("DELETE FROM t WHERE id = 1", []).unwrap();
    }
    insert_ids(&app, 6, 8);
    let stopped = f.wait_exit(Duration::from_secs(60));
    assert_ne!(stopped.code, Some(0), "{}", stopped.log);
    assert!(
        stopped.log.contains("another connection wrote"),
        "{}",
        stopped.log
    );
    // And a restart notices it from OUT's contents.
    let f = follower(&env, &out, "follower-2");
    let stopped = f.wait_exit(Duration::from_secs(60));
    assert_ne!(stopped.code, Some(0), "{}", stopped.log);
    assert!(
        stopped.log.contains("someone else wrote"),
        "{}",
        stopped.log
    );
}

#[test]
fn follows_an_s3_replica_with_one_get_per_idle_poll_and_no_list() {
    if !s3_server::s3s_fs_available() {
        eprintln!("s3s-fs not installed; skipped");
        return;
    }
    let env = Env::new("follow-s3");
    let s3 = s3_server::S3Server::start(&env.root.join("s3"));
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 40\n    replicas:\n{}",
        env.db.display(),
        s3.replica_yaml(s3_server::SECRET_KEY, "100ms")
    );
    fs::write(&env.config, y).unwrap();
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    let snap = wait_until(DEADLINE, || {
        d.assert_alive();
        generations(&s3.replica_dir())
            .iter()
            .any(|g| !snapshot_indexes(&s3.replica_dir(), g).is_empty())
    });
    assert!(snap, "no snapshot in the bucket");
    insert_ids(&app, 1, 10);
    let out = env.root.join("follower.db");
    let args: Vec<OsString> = vec![
        "restore".into(),
        "-f".into(),
        "-follow-interval".into(),
        "100ms".into(),
        "-config".into(),
        env.config.clone().into(),
        "-o".into(),
        out.clone().into(),
        env.db.clone().into(),
    ];
    let mut f = env.spawn_daemon("follower", args);
    wait_follower_rows(&mut f, &out, 10);
    let readers = Readers::start(&out, 2);
    insert_ids(&app, 11, 60);
    wait_follower_rows(&mut f, &out, 60);
    assert!(readers.finish() > 0);
    assert_same(&env.db, &out);

    // Idle: the primary makes no requests; the follower one GET per poll and no LIST.
    std::thread::sleep(Duration::from_millis(500));
    s3.proxy.clear();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let reqs = s3.proxy.requests();
    let elapsed = started.elapsed();
    let polls = (elapsed.as_millis() / 100) as usize + 1;
    let lists = reqs
        .iter()
        .filter(|r| r.target.contains("list-type"))
        .count();
    let gets = reqs
        .iter()
        .filter(|r| r.method == "GET" || r.method == "HEAD")
        .count();
    eprintln!(
        "idle {elapsed:?}: {} requests ({gets} GET/HEAD, {lists} LIST), at most {polls} polls",
        reqs.len()
    );
    assert_eq!(lists, 0, "{reqs:?}");
    assert!(
        gets <= polls,
        "{gets} GETs for at most {polls} polls: {reqs:?}"
    );
    assert_eq!(gets, reqs.len(), "{reqs:?}");
    f.stop_ok();
}
