//! `restore -f` (follow mode) with a real primary daemon and a real follower process: the
//! follower equals the primary at each checked step, a concurrent reader only ever sees whole
//! transactions, kill -9 and restart resume, a new generation is rebuilt in, a corrupt
//! segment stops the follower with the output at its last whole transaction, and an
//! application writing to the output is refused.

mod common;
mod s3_server;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rusqlite::{Connection, OpenFlags};

/// Rows per transaction of `insert_ids`: a committed prefix holds a multiple of this (or all).
const TX_ROWS: i64 = 5;

fn start_follower(env: &Env, out: &Path, label: &str) -> Daemon {
    start_follower_with(env, out, label, &[])
}

fn start_follower_with(env: &Env, out: &Path, label: &str, extra: &[&str]) -> Daemon {
    let mut args: Vec<std::ffi::OsString> = vec![
        "restore".into(),
        "-f".into(),
        "-follow-interval".into(),
        "100ms".into(),
    ];
    args.extend(extra.iter().map(|a| a.into()));
    args.extend(["-o".into(), out.into(), env.replica_url().into()]);
    env.spawn_daemon(label, args)
}

fn open_reader(path: &Path) -> Connection {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open reader");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// (count, min, max) of `t` through `c`.
fn ids(c: &Connection) -> (i64, i64, i64) {
    c.query_row(
        "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM t",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .expect("query follower")
}

/// Waits until the follower's output holds exactly ids 1..=n and the primary's rows.
fn wait_follower(follower: &mut Daemon, out: &Path, app: &Connection, n: i64) {
    let ok = wait_until(DEADLINE, || {
        follower.assert_alive();
        out.exists() && {
            let r = open_reader(out);
            ids(&r) == (n, 1, n)
        }
    });
    assert!(
        ok,
        "follower did not reach ids 1..={n}; log:\n{}",
        follower.log_text()
    );
    assert_eq!(
        table_digest(out, "t"),
        digest_conn(app, "t"),
        "follower's rows differ from the primary's at {n} rows"
    );
}

/// A primary replicating ids 1..=`rows` of a fresh app db and a follower (`label`) of its
/// replica caught up with them: (app, primary, output, follower).
fn primary_and_follower(
    env: &Env,
    rows: i64,
    label: &str,
) -> (Connection, Daemon, PathBuf, Daemon) {
    let app = create_app_db(&env.db, 4096);
    let primary = replicating(env, &app, rows);
    let out = env.root.join("follower.db");
    let mut follower = start_follower(env, &out, label);
    wait_follower(&mut follower, &out, &app, rows);
    (app, primary, out, follower)
}

/// A reader thread holding read transactions on `out`: each sees ids 1..=n with n a whole
/// number of transactions, and the same answer twice within one transaction.
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Reader {
    fn start(out: PathBuf, last: i64) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), reads.clone());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let c = open_reader(&out);
            while !s.load(Ordering::SeqCst) {
                c.execute_batch("BEGIN").map_err(|e| e.to_string())?;
                let first = ids(&c);
                std::thread::sleep(Duration::from_millis(3));
                let second = ids(&c);
                c.execute_batch("COMMIT").map_err(|e| e.to_string())?;
                if first != second {
                    return Err(format!(
                        "one read transaction saw {first:?} then {second:?}"
                    ));
                }
                let (count, min, max) = first;
                let whole = count == max && (count == 0 || min == 1);
                let prefix = count % TX_ROWS == 0 || count == last;
                if !whole || !prefix {
                    return Err(format!("saw a partial transaction: {first:?}"));
                }
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        Reader {
            stop,
            reads,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let r = self.thread.take().unwrap().join().expect("reader panicked");
        if let Err(e) = r {
            panic!("reader of the follower: {e}");
        }
        self.reads.load(Ordering::Relaxed)
    }
}

#[test]
fn follower_equals_primary_and_readers_see_whole_transactions() {
    let env = Env::new("follow-basic");
    env.write_config(&Cfg::default());
    let (app, primary, out, mut follower) = primary_and_follower(&env, 20, "follower");

    let reader = Reader::start(out.clone(), 400);
    for step in 1..=4 {
        let n = 20 + step * 95;
        insert_ids(&app, n - 94, n);
        wait_follower(&mut follower, &out, &app, n);
    }
    let reads = reader.finish();
    assert!(reads > 0, "the reader never read");

    let stopped = follower.stop();
    assert_eq!(
        stopped.code,
        Some(0),
        "SIGTERM: follower exit\n{}",
        stopped.log
    );
    assert!(stopped.log.contains("caught up"), "{}", stopped.log);
    assert!(stopped.log.contains("follow stopped"), "{}", stopped.log);
    assert_integrity_ok(&out);
    primary.stop_ok();
}

#[test]
fn kill_9_mid_apply_then_resume_neither_repeats_nor_skips() {
    let env = Env::new("follow-kill");
    env.write_config(&Cfg::default());
    let (app, primary, out, mut follower) = primary_and_follower(&env, 10, "follower-0");

    let mut n = 10;
    let mut rng = Rng::new(7);
    for round in 1..=5 {
        // Kill while the follower works through a burst of transactions.
        let to = n + 200;
        insert_ids(&app, n + 1, to);
        n = to;
        std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
        follower.kill();
        let r = open_reader(&out);
        let (count, _, max) = ids(&r);
        assert!(
            count == max && (count % TX_ROWS == 0 || count == n),
            "after kill -9 the output holds {count} rows up to {max}"
        );
        drop(r);
        follower = start_follower(&env, &out, &format!("follower-{round}"));
        wait_follower(&mut follower, &out, &app, n);
        assert!(
            follower.log_text().contains("resuming follow"),
            "{}",
            follower.log_text()
        );
    }
    assert_integrity_ok(&out);
    follower.stop_ok();
    primary.stop_ok();
}

#[test]
fn sigterm_mid_burst_finishes_the_transaction_and_exits_0() {
    let env = Env::new("follow-sigterm");
    env.write_config(&Cfg::default());
    let (app, primary, out, follower) = primary_and_follower(&env, 10, "follower-1");
    insert_ids(&app, 11, 600);
    // Stop it as soon as it is applying the burst.
    let busy = wait_until(DEADLINE, || {
        let (count, _, _) = ids(&open_reader(&out));
        count > 10
    });
    assert!(busy, "the follower never started on the burst");
    let stopped = follower.stop();
    assert_eq!(stopped.code, Some(0), "{}", stopped.log);
    assert!(stopped.log.contains("follow stopped"), "{}", stopped.log);
    let (count, _, max) = ids(&open_reader(&out));
    assert!(
        count == max && count % TX_ROWS == 0,
        "after SIGTERM the output holds {count} rows up to {max}"
    );
    assert_integrity_ok(&out);
    let mut follower = start_follower(&env, &out, "follower-2");
    wait_follower(&mut follower, &out, &app, 600);
    follower.stop_ok();
    primary.stop_ok();
}

#[test]
fn sigterm_during_the_initial_restore_still_leaves_a_resumable_follower() {
    let env = Env::new("follow-sigterm-early");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let primary = replicating(&env, &app, 200);
    let out = env.root.join("follower.db");
    let mut follower = start_follower(&env, &out, "follower-1");
    follower.wait_log("restoring", DEADLINE);
    let stopped = follower.stop();
    assert_eq!(stopped.code, Some(0), "{}", stopped.log);
    assert!(
        env.root.join("follower.db-litestream-follow").exists(),
        "no position file beside the restored output: {}",
        stopped.log
    );
    let mut follower = start_follower(&env, &out, "follower-2");
    insert_ids(&app, 201, 220);
    wait_follower(&mut follower, &out, &app, 220);
    follower.stop_ok();
    primary.stop_ok();
}

#[test]
fn an_index_whose_rest_is_uploaded_with_the_next_one_is_not_cut_short() {
    // Uploads every second in bursts across frequent WAL restarts: a burst that lands
    // between the follower's poll of an index's next segment and its poll of the next index
    // brings both at once (seen as a follower that jumped to the next index and stopped on
    // the page count of its first commit).
    let env = Env::new("follow-index-tail");
    env.write_config(&Cfg {
        min_checkpoint_page_count: 200,
        sync_interval: "1s",
        ..Cfg::default()
    });
    let (app, primary, out, mut follower) = primary_and_follower(&env, 20, "follower");
    let gen = generations(&env.replica).pop().unwrap();
    let mut n = 20;
    for _ in 0..8 {
        insert_ids(&app, n + 1, n + 60);
        n += 60;
        wait_follower(&mut follower, &out, &app, n);
    }
    let indexes = wal_segments(&env.replica, &gen).last().unwrap().0;
    assert!(indexes >= 4, "only {indexes} WAL restarts");
    assert_integrity_ok(&out);
    follower.stop_ok();
    primary.stop_ok();
}

#[test]
fn a_new_generation_on_the_primary_is_rebuilt_into_the_output() {
    let env = Env::new("follow-generation");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let primary = replicating(&env, &app, 30);
    let out = env.root.join("follower.db");
    // Only a listing finds a new generation's name: idle for 1 s, the follower lists.
    let mut follower =
        start_follower_with(&env, &out, "follower", &["-follow-list-interval", "1s"]);
    wait_follower(&mut follower, &out, &app, 30);
    let first = generations(&env.replica);

    // The primary loses its meta dir: its next start is a new generation.
    primary.stop_ok();
    std::fs::remove_dir_all(meta_dir(&env.db)).unwrap();
    let reader = Reader::start(out.clone(), 80);
    let mut primary = env.start("daemon-2");
    insert_ids(&app, 31, 80);
    let ok = wait_until(DEADLINE, || {
        primary.assert_alive();
        generations(&env.replica).len() > first.len()
    });
    assert!(ok, "no new generation: {:?}", list_tree(&env.replica));
    // The follower notices at its next idle listing (1 s).
    wait_follower(&mut follower, &out, &app, 80);
    reader.finish();
    let log = follower.log_text();
    assert!(log.contains("rebuilding the followed database"), "{log}");
    assert!(log.contains("the replica moved to generation"), "{log}");
    assert_integrity_ok(&out);

    // It goes on following the new generation.
    insert_ids(&app, 81, 120);
    wait_follower(&mut follower, &out, &app, 120);
    follower.stop_ok();
    primary.stop_ok();
}

#[test]
fn retention_removing_what_a_stopped_follower_needs_rebuilds_it() {
    let env = Env::new("follow-retention");
    // Replica keys ride after sync-interval, the last line of the replica block.
    env.write_config(&Cfg {
        min_checkpoint_page_count: 200,
        sync_interval: "100ms\n        snapshot-interval: 1s\n        retention: 1s\n        retention-check-interval: 1s",
        ..Cfg::default()
    });
    let (app, primary, out, follower) = primary_and_follower(&env, 20, "follower-1");
    follower.stop_ok();
    let pos = std::fs::read_to_string(env.root.join("follower.db-litestream-follow")).unwrap();
    let next: Vec<&str> = pos
        .lines()
        .find_map(|l| l.strip_prefix("next "))
        .unwrap()
        .split(' ')
        .collect();
    let (gen, index) = (
        next[0].to_string(),
        u32::from_str_radix(next[1], 16).unwrap(),
    );

    // The primary moves on; retention drops the follower's index.
    let mut n = 20;
    let gone = wait_until(Duration::from_secs(60), || {
        insert_ids(&app, n + 1, n + 100);
        n += 100;
        std::thread::sleep(Duration::from_millis(300));
        !wal_segments(&env.replica, &gen)
            .iter()
            .any(|(i, _, _)| *i == index)
    });
    assert!(
        gone,
        "retention kept index {index:08x}: {:?}",
        list_tree(&env.replica)
    );

    let mut follower = start_follower(&env, &out, "follower-2");
    wait_follower(&mut follower, &out, &app, n);
    let log = follower.log_text();
    assert!(log.contains("no longer holds WAL segment"), "{log}");
    assert_integrity_ok(&out);
    follower.stop_ok();
    primary.stop_ok();
}

#[test]
fn a_follower_with_addr_serves_its_position_lag_and_requests() {
    let env = Env::new("follow-metrics");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let primary = replicating(&env, &app, 20);
    // The follower's config (the primary read its own, without addr, at start).
    let addr = format!("127.0.0.1:{}", free_port());
    env.write_config(&Cfg {
        addr: Some(addr.clone()),
        ..Cfg::default()
    });
    let out = env.root.join("follower.db");
    let mut follower = env.spawn_daemon(
        "follower",
        vec![
            "restore".into(),
            "-f".into(),
            "-follow-interval".into(),
            "100ms".into(),
            "-config".into(),
            env.config.clone().into(),
            "-o".into(),
            out.clone().into(),
            env.db.clone().into(),
        ],
    );
    wait_follower(&mut follower, &out, &app, 20);
    insert_ids(&app, 21, 60);
    wait_follower(&mut follower, &out, &app, 60);
    let mut body = String::new();
    let ok = wait_until(DEADLINE, || {
        body = http_get(&addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        body.contains("litestream_follow_transactions_total")
    });
    assert!(ok, "no follow metrics on {addr}: {body}");
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
    };
    let labels = format!("{{output=\"{}\",generation=\"", out.display());
    assert!(value(&format!("litestream_follow_transactions_total{labels}")) >= 8.0);
    assert!(value(&format!("litestream_follow_wal_offset{labels}")) > 0.0);
    assert!(value(&format!("litestream_follow_lag_seconds{labels}")) < 5.0);
    assert!(
        value("litestream_replica_operation_total{replica_type=\"file\",operation=\"GET\"}") > 0.0
    );
    follower.stop_ok();
    primary.stop_ok();
}

/// gzip of `data` (one member), as our segments are stored.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip_all(path: &Path) -> Vec<u8> {
    let mut d = flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap());
    let mut v = Vec::new();
    d.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_corrupt_segment_stops_the_follower_at_its_last_whole_transaction() {
    let env = Env::new("follow-corrupt");
    env.write_config(&Cfg::default());
    let (app, primary, out, follower) = primary_and_follower(&env, 20, "follower-1");
    follower.stop_ok();
    let gen = generations(&env.replica).pop().unwrap();
    let before: Vec<(u32, u64)> = wal_segments(&env.replica, &gen)
        .into_iter()
        .map(|(i, o, _)| (i, o))
        .collect();

    insert_ids(&app, 21, 40);
    wait_rows(&env, 40);
    primary.stop_ok();
    let (index, offset, path) = wal_segments(&env.replica, &gen)
        .into_iter()
        .find(|(i, o, _)| !before.contains(&(*i, *o)))
        .expect("a new segment");
    // Damage the first frame's page: its checksum no longer holds.
    let mut raw = gunzip_all(&path);
    let first_page = if offset == 0 { 32 + 24 } else { 24 };
    raw[first_page + 200] ^= 0xff;
    std::fs::write(&path, gzip(&raw)).unwrap();

    let follower = start_follower(&env, &out, "follower-2");
    let stopped = follower.wait_exit(DEADLINE);
    assert_eq!(stopped.code, Some(1), "{}", stopped.log);
    assert!(
        stopped.log.contains("fails its salt or checksum check")
            && stopped.log.contains("stays at its last whole transaction"),
        "index {index:08x} offset {offset}: {}",
        stopped.log
    );
    assert_eq!(id_summary(&out), (20, 1, 20));
    assert_integrity_ok(&out);
}

#[test]
fn a_segment_damaged_in_its_last_transaction_applies_every_whole_one_before_it() {
    // The follower applies a segment's transactions as one SQLite transaction; a batch that
    // cannot end whole must not take the whole transactions before the damage down with it.
    let env = Env::new("follow-corrupt-tail");
    env.write_config(&Cfg::default());
    let (app, primary, out, follower) = primary_and_follower(&env, 20, "follower-1");
    follower.stop_ok();
    let gen = generations(&env.replica).pop().unwrap();
    let before: Vec<(u32, u64)> = wal_segments(&env.replica, &gen)
        .into_iter()
        .map(|(i, o, _)| (i, o))
        .collect();

    // Written while the primary is down: its next start uploads them in one segment.
    primary.stop_ok();
    insert_ids(&app, 21, 40);
    let primary = env.start("daemon-2");
    wait_rows(&env, 40);
    primary.stop_ok();
    let new: Vec<(u32, u64, PathBuf)> = wal_segments(&env.replica, &gen)
        .into_iter()
        .filter(|(i, o, _)| !before.contains(&(*i, *o)))
        .collect();
    let Some((_, offset, path)) = new.last() else {
        panic!("no new segment");
    };
    let mut raw = gunzip_all(path);
    let frame = 24 + 4096;
    let frames = &raw[if *offset == 0 { 32 } else { 0 }..];
    assert_eq!(frames.len() % frame, 0);
    let commits = frames
        .chunks(frame)
        .filter(|f| f[4..8] != [0, 0, 0, 0])
        .count() as i64;
    assert!(commits >= 2, "{commits} transaction(s) in the segment");
    // Damage the last frame's page (of the last transaction): its checksum no longer holds.
    let at = raw.len() - frame + 24 + 200;
    raw[at] ^= 0xff;
    std::fs::write(path, gzip(&raw)).unwrap();

    let follower = start_follower(&env, &out, "follower-2");
    let stopped = follower.wait_exit(DEADLINE);
    assert_eq!(stopped.code, Some(1), "{}", stopped.log);
    assert!(
        stopped.log.contains("fails its salt or checksum check"),
        "{}",
        stopped.log
    );
    let last = 40 - TX_ROWS;
    assert_eq!(id_summary(&out), (last, 1, last), "{}", stopped.log);
    assert_integrity_ok(&out);
}

#[test]
fn an_empty_segment_at_the_next_name_stops_the_follower_instead_of_spinning() {
    let env = Env::new("follow-empty-segment");
    env.write_config(&Cfg::default());
    let (_app, primary, out, follower) = primary_and_follower(&env, 20, "follower-1");
    follower.stop_ok();
    primary.stop_ok();
    let pos = std::fs::read_to_string(env.root.join("follower.db-litestream-follow")).unwrap();
    let next: Vec<&str> = pos
        .lines()
        .find_map(|l| l.strip_prefix("next "))
        .unwrap()
        .split(' ')
        .collect();
    let (gen, index, segment) = (next[0], next[1], next[2].parse::<u64>().unwrap());
    let name = env.replica.join(format!(
        "generations/{gen}/wal/{index}_{segment:08x}.wal.gz"
    ));
    assert!(!name.exists(), "{} is already there", name.display());
    std::fs::write(&name, gzip(&[])).unwrap();

    let follower = start_follower(&env, &out, "follower-2");
    let stopped = follower.wait_exit(DEADLINE);
    assert_eq!(stopped.code, Some(1), "{}", stopped.log);
    assert!(stopped.log.contains("it holds no frame"), "{}", stopped.log);
    assert_eq!(id_summary(&out), (20, 1, 20));
}

#[test]
fn an_application_writing_to_the_output_stops_the_follower() {
    let env = Env::new("follow-foreign-write");
    env.write_config(&Cfg::default());
    let (app, primary, out, follower) = primary_and_follower(&env, 10, "follower");

    let other = open_existing(&out);
    other
        .execute("INSERT INTO t (id, n, h, b) VALUES (1000, 0, 0, NULL)", [])
        .unwrap();
    drop(other);
    insert_ids(&app, 11, 20);
    let stopped = follower.wait_exit(DEADLINE);
    assert_eq!(stopped.code, Some(1), "{}", stopped.log);
    assert!(
        stopped
            .log
            .contains("another process wrote to the followed database"),
        "{}",
        stopped.log
    );
    primary.stop_ok();
}

#[test]
fn a_write_to_the_output_while_the_follower_was_stopped_is_refused_at_resume() {
    let env = Env::new("follow-write-while-down");
    env.write_config(&Cfg::default());
    let (_app, primary, out, follower) = primary_and_follower(&env, 300, "follower-1");
    follower.stop_ok();
    // A change far from the last replicated transaction's pages: the first row's blob.
    let other = open_existing(&out);
    other
        .execute("UPDATE t SET n = 7 WHERE id = 1", [])
        .unwrap();
    drop(other);
    let follower = start_follower(&env, &out, "follower-2");
    let stopped = follower.wait_exit(DEADLINE);
    assert_eq!(stopped.code, Some(1), "{}", stopped.log);
    assert!(
        stopped.log.contains("holds neither state"),
        "{}",
        stopped.log
    );
    primary.stop_ok();
}

#[test]
fn follow_refuses_index_and_timestamp() {
    let env = Env::new("follow-flags");
    let url = env.replica_url();
    for (extra, want) in [
        (
            vec!["-timestamp", "2020-01-01T00:00:00Z"],
            "cannot be used with -timestamp",
        ),
        (
            vec!["-generation", "0123456789abcdef", "-index", "1"],
            "cannot be used with -index",
        ),
    ] {
        let mut args = vec!["restore", "-f", "-o", "x.db"];
        args.extend(extra);
        args.push(&url);
        let o = env.run(&args);
        o.assert_fails("restore -f with a point in time");
        let line = one_line(&o, "restore -f");
        assert!(line.contains(want), "{line}");
    }
    let o = env.run(&["restore", "-follow-interval", "1s", "-o", "x.db", &url]);
    o.assert_fails("-follow-interval without -f");
    assert!(one_line(&o, "-follow-interval").contains("needs -f"));
}

#[test]
fn s3_follower_idles_at_one_get_per_poll_without_listing() {
    if !s3_server::s3s_fs_available() {
        return;
    }
    let env = Env::new("follow-s3");
    let s3 = s3_server::S3Server::start(&env.root.join("s3"));
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 200\n    replicas:\n{}",
        env.db.display(),
        s3.replica_yaml(s3_server::SECRET_KEY, "100ms")
    );
    std::fs::write(&env.config, y).unwrap();
    let app = create_app_db(&env.db, 4096);
    let mut primary = env.start("daemon");
    let view = s3.replica_dir();
    let ok = wait_until(DEADLINE, || {
        primary.assert_alive();
        generations(&view)
            .iter()
            .any(|g| !snapshot_indexes(&view, g).is_empty())
    });
    assert!(ok, "no snapshot in the bucket");
    insert_ids(&app, 1, 50);
    let out = env.root.join("follower.db");
    let mut follower = env.spawn_daemon(
        "follower",
        vec![
            "restore".into(),
            "-f".into(),
            "-follow-interval".into(),
            "100ms".into(),
            "-config".into(),
            env.config.clone().into(),
            "-o".into(),
            out.clone().into(),
            env.db.clone().into(),
        ],
    );
    wait_follower(&mut follower, &out, &app, 50);
    // Across several of the primary's WAL indexes (its restart at 100 frames).
    insert_ids(&app, 51, 300);
    wait_follower(&mut follower, &out, &app, 300);
    primary.stop_ok();
    std::thread::sleep(Duration::from_millis(1500));

    s3.proxy.clear();
    // 8 s: past 60 idle polls of 100 ms, where the first slice listed (#25 point 4 allows
    // no LIST while idle; the default -follow-list-interval is 10 minutes).
    std::thread::sleep(Duration::from_secs(8));
    let reqs = s3.proxy.requests();
    let lists = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("list-type=2"))
        .count();
    let gets: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "GET" && !r.target.contains("list-type=2"))
        .collect();
    assert!(
        reqs.iter().all(|r| r.method == "GET"),
        "an idle follower sent {reqs:?}"
    );
    assert!(
        gets.iter().all(|r| r.target.contains("/wal/")),
        "an idle follower GETs only WAL segment names: {gets:?}"
    );
    eprintln!("idle 8 s: {} GETs, {lists} listings", gets.len());
    // 8 s of 100 ms polls: one GET each, no listing.
    assert_eq!(lists, 0, "an idle follower listed the replica: {reqs:?}");
    assert!(
        (30..=88).contains(&gets.len()),
        "{} GETs in 8 s of 100 ms polls: {reqs:?}",
        gets.len()
    );
    follower.stop_ok();
    assert_eq!(table_digest(&out, "t"), digest_conn(&app, "t"));
}

/// An age-encrypted replica (#27) is followed as a plain one is: the follower decrypts each
/// segment with the config's identity, its output equals the primary at each step, and the
/// store holds only ciphertext.
#[test]
// X25519, the only kind Litestream v0.3.13 reads, is deprecated in age 0.13.
#[allow(deprecated)]
fn an_encrypted_replica_is_followed_with_its_identity() {
    use age::secrecy::ExposeSecret;
    let env = Env::new("follow-age");
    let cfg = env.write_config(&Cfg::default());
    let id = age::x25519::Identity::generate();
    let (identity, recipient) = (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&cfg).unwrap();
    write!(
        f,
        "        age:\n          recipients:\n            - {recipient}\n          identities:\n            - \"{identity}\"\n"
    )
    .unwrap();
    drop(f);
    let app = create_app_db(&env.db, 4096);
    // (Not `replicating`: it checks by restoring the replica's URL, which has no identity.)
    let mut primary = env.start("daemon-1");
    wait_for_a_snapshot(&env, &mut primary);
    insert_ids(&app, 1, 20);
    let out = env.root.join("follower.db");
    let mut follower = env.spawn_daemon(
        "follower",
        vec![
            "restore".into(),
            "-f".into(),
            "-follow-interval".into(),
            "100ms".into(),
            "-config".into(),
            cfg.clone().into(),
            "-o".into(),
            out.clone().into(),
            env.db.clone().into(),
        ],
    );
    wait_follower(&mut follower, &out, &app, 20);
    insert_ids(&app, 21, 60);
    wait_follower(&mut follower, &out, &app, 60);
    assert_integrity_ok(&out);

    let mut objects = 0;
    for name in list_tree(&env.replica).into_keys() {
        if name.ends_with(".gz") || name.ends_with(".lz4") {
            let mut head = [0u8; 21];
            std::fs::File::open(env.replica.join(&name))
                .unwrap()
                .read_exact(&mut head)
                .unwrap();
            assert_eq!(
                &head, b"age-encryption.org/v1",
                "{name} is not age ciphertext"
            );
            objects += 1;
        }
    }
    assert!(objects >= 2, "{objects} objects in the replica");
    let log = follower.stop_ok().log;
    assert!(!log.contains(&identity), "the follower logged its identity");
    primary.stop_ok();
}
