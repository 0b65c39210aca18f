//! Replicate a db written by a separate connection, stop with SIGTERM, restore, compare data.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::*;
use rusqlite::{params, Connection};

/// `n` transactions mixing inserts of 10–20 KB blobs (multi-page at 4 KiB pages), updates of
/// counters and blobs, and deletes. Ids are never reused.
fn mixed_workload(
    c: &Connection,
    n: usize,
    seed: u64,
    next_id: &mut i64,
    live: &mut BTreeSet<i64>,
) {
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let kind = rng.range(0, 100);
        tx(c, |c| {
            if kind < 55 || live.len() < 5 {
                for _ in 0..rng.range(1, 3) {
                    let id = *next_id;
                    *next_id += 1;
                    insert_row(c, id, rng.range(10_000, 20_001) as usize);
                    live.insert(id);
                }
            } else if kind < 85 {
                let id = *live
                    .iter()
                    .nth(rng.range(0, live.len() as u64) as usize)
                    .unwrap();
                if kind < 70 {
                    c.execute("UPDATE t SET n = n + 1 WHERE id = ?1", params![id])
                        .unwrap();
                } else {
                    let b = Rng::new(rng.next_u64()).bytes(rng.range(10_000, 20_001) as usize);
                    let h = hash_bytes(&b) as i64;
                    c.execute(
                        "UPDATE t SET b = ?2, h = ?3, n = n + 1 WHERE id = ?1",
                        params![id, b, h],
                    )
                    .unwrap();
                }
            } else {
                let id = *live
                    .iter()
                    .nth(rng.range(0, live.len() as u64) as usize)
                    .unwrap();
                c.execute("DELETE FROM t WHERE id = ?1", params![id])
                    .unwrap();
                live.remove(&id);
            }
        });
        // Let some ticks and syncs happen between bursts so the replica gets several segments.
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

#[test]
fn replicate_with_config_then_restore_by_config_and_by_url() {
    let env = Env::new("replicate-restore");
    env.write_config(&Cfg {
        min_checkpoint_page_count: 500,
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);

    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);

    let (mut next_id, mut live) = (1i64, BTreeSet::new());
    mixed_workload(&app, 320, 7, &mut next_id, &mut live);
    d.assert_alive();
    let src = digest_conn(&app, "t");
    let src_rows: Vec<(i64, i64, i64, i64)> = {
        let mut st = app
            .prepare("SELECT id, n, coalesce(length(b), -1), h FROM t ORDER BY id")
            .unwrap();
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap();
        v.map(|r| r.unwrap()).collect()
    };
    assert_eq!(src.rows as usize, live.len());
    assert!(src.rows > 50, "workload left too few rows: {}", src.rows);

    let stopped = d.stop_ok();
    assert!(
        stopped.log.contains("new generation"),
        "the first generation is not logged; log:\n{}",
        stopped.log
    );

    // Replica tree: layout, snapshot, contiguous segments, nothing else.
    assert_replica_tree_valid(&env.replica);
    let gens = generations(&env.replica);
    assert_eq!(
        gens.len(),
        1,
        "a fresh db with one uninterrupted run must have one generation: {gens:?}"
    );
    let gen = &gens[0];
    assert!(
        !wal_segments(&env.replica, gen).is_empty(),
        "no WAL segments in {gen}"
    );

    // Local metadata next to the db.
    let meta = meta_dir(&env.db);
    assert!(meta.is_dir(), "metadata dir {} missing", meta.display());
    let local = fs::read_to_string(meta.join("generation")).expect("read generation file");
    assert!(
        local.ends_with('\n'),
        "generation file should end with a newline: {local:?}"
    );
    assert_eq!(
        local.trim(),
        gen,
        "local generation differs from the replica's"
    );
    let shadow: Vec<String> = fs::read_dir(meta.join("generations").join(gen).join("wal"))
        .expect("shadow wal dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!shadow.is_empty(), "no shadow WAL files");
    for f in &shadow {
        let stem = f
            .strip_suffix(".wal")
            .unwrap_or_else(|| panic!("unexpected shadow file {f}"));
        assert!(is_hex(stem, 8), "shadow file name is not %08x.wal: {f}");
    }

    // Restore by config + db path.
    let out = env.restore_config();
    assert_integrity_ok(&out);
    assert_eq!(row_summary(&out), src_rows, "restore -config: rows differ");
    assert_eq!(
        table_digest(&out, "t"),
        src,
        "restore -config: table digest differs"
    );
    assert_blobs_match_hash(&out);

    // Restore by URL.
    let out2 = env.restore_url(&[]);
    assert_integrity_ok(&out2);
    assert_eq!(
        table_digest(&out2, "t"),
        src,
        "restore URL: table digest differs"
    );

    // Explicit generation and parallelism flags give the same result.
    let out3 = env.restore_url(&["-generation", gen, "-parallelism", "1"]);
    assert_eq!(
        table_digest(&out3, "t"),
        src,
        "restore -generation -parallelism 1: digest differs"
    );

    // Restore leaves no temp files next to its output.
    for (name, _) in list_tree(&env.root) {
        if name.starts_with("restored") {
            assert!(
                !name.contains(".tmp"),
                "restore left a temp file behind: {name}"
            );
        }
    }
    drop(app);
}

#[test]
fn replicate_adhoc_form_with_file_url() {
    let env = Env::new("adhoc");
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start_adhoc("daemon-adhoc");
    wait_for_a_snapshot(&env, &mut d);

    let (mut next_id, mut live) = (1i64, BTreeSet::new());
    mixed_workload(&app, 60, 11, &mut next_id, &mut live);
    let src = digest_conn(&app, "t");

    // Replicated while the daemon still runs (no reliance on the final sync).
    let out = env.wait_restore(
        DEADLINE,
        "restore equals the source while the daemon runs",
        |p| table_digest(p, "t") == src,
    );
    assert_integrity_ok(&out);
    d.assert_alive();

    d.stop_ok();
    assert_replica_tree_valid(&env.replica);
    let out2 = env.restore_url(&[]);
    assert_integrity_ok(&out2);
    assert_eq!(table_digest(&out2, "t"), src);
    assert_blobs_match_hash(&out2);
}

/// The application is another process: the `sqlite3` CLI, several invocations of 50
/// transactions each (inserts of 10–20 KB random blobs, updates, deletes).
#[test]
fn writer_in_a_separate_sqlite3_process() {
    if std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_err()
    {
        // CI installs it first (scripts/install-test-prereqs.sh): never skip silently there.
        assert!(
            std::env::var_os("CI").is_none(),
            "sqlite3 CLI missing under CI; run scripts/install-test-prereqs.sh"
        );
        eprintln!("SKIP: sqlite3 CLI not installed (scripts/install-test-prereqs.sh installs it)");
        return;
    }
    let env = Env::new("sqlite3-cli");
    env.write_config(&Cfg::default());
    drop(create_app_db(&env.db, 4096));
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);

    let mut rng = Rng::new(99);
    let mut next_id = 1i64;
    for round in 0..6 {
        let mut sql = String::from(".timeout 5000\nPRAGMA journal_mode=WAL;\n");
        for _ in 0..50 {
            let k = rng.range(0, 100);
            if k < 60 || next_id < 10 {
                sql.push_str(&format!(
                    "BEGIN IMMEDIATE; INSERT INTO t (id, n, h, b) VALUES ({next_id}, 0, 0, randomblob({})); COMMIT;\n",
                    rng.range(10_000, 20_001)
                ));
                next_id += 1;
            } else if k < 85 {
                let id = rng.range(1, next_id as u64);
                sql.push_str(&format!(
                    "BEGIN IMMEDIATE; UPDATE t SET n = n + 1, b = randomblob({}) WHERE id = {id}; COMMIT;\n",
                    rng.range(10_000, 20_001)
                ));
            } else {
                let id = rng.range(1, next_id as u64);
                sql.push_str(&format!("DELETE FROM t WHERE id = {id};\n"));
            }
        }
        let mut child = std::process::Command::new("sqlite3")
            .arg(&env.db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sqlite3");
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(sql.as_bytes())
                .unwrap();
        }
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "sqlite3 round {round} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.assert_alive();
    let stopped = d.stop_ok();
    let src = table_digest(&env.db, "t");
    assert!(src.rows > 50, "too few rows: {src:?}");
    assert_replica_tree_valid(&env.replica);
    let out = env.restore_url(&[]);
    assert_integrity_ok(&out);
    assert_eq!(
        table_digest(&out, "t"),
        src,
        "restore differs from what the sqlite3 process wrote; daemon log:\n{}",
        stopped.log
    );
}

/// A backlog far larger than the copy buffer, found in one tick: the daemon is stopped
/// (SIGSTOP) while the application writes ~12 MiB of WAL in many small commits, then resumes.
/// The scan of that backlog once looped forever in release builds (its read size grew by ×8
/// per buffer-full and wrapped to zero after 21 of them; debug builds panicked).
#[test]
fn a_large_backlog_is_copied_in_one_tick() {
    let env = Env::new("backlog");
    let app = create_app_db(&env.db, 4096);
    env.write_config(&Cfg::default());
    let mut d = env.start("daemon-backlog");
    wait_for_a_snapshot(&env, &mut d);

    d.signal(libc::SIGSTOP);
    let mut rng = Rng::new(77);
    for id in 1..=3000i64 {
        // ~4 KiB each: a frame or two per commit, no transaction near the buffer's size.
        insert_row(&app, id, rng.range(3_000, 4_001) as usize);
    }
    let wal_len = fs::metadata(env.db.with_extension("db-wal")).unwrap().len();
    assert!(wal_len > 10 << 20, "the backlog is only {wal_len} bytes");
    d.signal(libc::SIGCONT);

    let src = digest_conn(&app, "t");
    let out = env.wait_restore(DEADLINE, "restore holds the whole backlog", |p| {
        table_digest(p, "t") == src
    });
    assert_integrity_ok(&out);
    assert_blobs_match_hash(&out);
    d.assert_alive();
    d.stop_ok();
}

/// Transactions too big for the application's page cache spill uncommitted frames into the
/// WAL, which the daemon copies ahead of their commit. Rolled back, those frames are
/// overwritten by the next transactions: the replica must hold only committed data, and
/// closed indexes (the app checkpoints with TRUNCATE meanwhile) must end at a commit.
#[test]
fn spilled_and_rolled_back_transactions_never_reach_a_restore() {
    let env = Env::new("spill");
    let app = create_app_db(&env.db, 4096);
    app.execute_batch("PRAGMA cache_size = 50;").unwrap();
    env.write_config(&Cfg::default());
    let mut d = env.start("daemon-spill");
    wait_for_a_snapshot(&env, &mut d);

    let mut rng = Rng::new(91);
    let mut next_id = 1i64;
    for round in 0..6 {
        // A large transaction left open across several ticks, then rolled back or committed.
        app.execute_batch("BEGIN").unwrap();
        for _ in 0..300 {
            insert_row(&app, next_id, rng.range(8_000, 12_001) as usize);
            next_id += 1;
        }
        std::thread::sleep(Duration::from_millis(350));
        if round == 0 {
            // The open transaction really spilled frames into the WAL.
            let wal = fs::metadata(env.db.with_extension("db-wal")).unwrap().len();
            assert!(wal > 2 << 20, "no spill: the WAL is {wal} bytes");
        }
        for _ in 0..100 {
            insert_row(&app, next_id, rng.range(8_000, 12_001) as usize);
            next_id += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
        if round % 2 == 0 {
            app.execute_batch("ROLLBACK").unwrap();
        } else {
            app.execute_batch("COMMIT").unwrap();
        }
        // Small commits that overwrite the rolled-back frames.
        for _ in 0..5 {
            insert_row(&app, next_id, rng.range(500, 2_001) as usize);
            next_id += 1;
        }
        if round == 2 {
            app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let src = digest_conn(&app, "t");
    let out = env.wait_restore(DEADLINE, "restore equals the committed state", |p| {
        table_digest(p, "t") == src
    });
    assert_integrity_ok(&out);
    assert_blobs_match_hash(&out);
    d.stop_ok();
    assert_replica_tree_valid(&env.replica);
    let out2 = env.restore_url(&[]);
    assert_integrity_ok(&out2);
    assert_eq!(table_digest(&out2, "t"), src);
}

/// RESTART checkpoints while a writer commits steadily: each restarts the WAL (a new index)
/// without losing a frame to the replica, which would force a new generation and a full
/// snapshot, and the replica restores to exactly what was committed.
#[test]
fn restart_checkpoints_under_a_steady_writer_stay_in_one_generation() {
    let env = Env::new("restart-under-load");
    let app = create_app_db(&env.db, 4096);
    env.write_config(&Cfg {
        min_checkpoint_page_count: 50,
        extra_db: "    max-checkpoint-page-count: 200\n    truncate-page-count: 1000\n".into(),
        ..Cfg::default()
    });
    let mut d = env.start("daemon-restart-under-load");
    wait_for_a_snapshot(&env, &mut d);
    let gen = generations(&env.replica).pop().unwrap();

    // A short pause between commits: back to back, the writer would keep the write lock
    // nearly all the time and a RESTART (which needs it) would give way on every try.
    let w = Writer::start(&env.db, 1, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(5));
    let last = w.finish();
    let src = digest_conn(&app, "t");
    let out = env.wait_restore(DEADLINE, "restore equals the committed state", |p| {
        table_digest(p, "t") == src
    });
    assert_integrity_ok(&out);
    assert_blobs_match_hash(&out);
    let log = d.log_text();
    d.stop_ok();
    let indexes: BTreeSet<u32> = wal_segments(&env.replica, &gen)
        .into_iter()
        .map(|(index, _, _)| index)
        .collect();
    assert!(
        indexes.len() >= 3,
        "the WAL restarted {} times under {last} commits:\n{log}",
        indexes.len().saturating_sub(1)
    );
    assert_eq!(
        log.matches("msg=\"new generation\"").count(),
        1,
        "a checkpoint under load started a new generation:\n{log}"
    );
    assert_eq!(generations(&env.replica), vec![gen]);
    assert_replica_tree_valid(&env.replica);
}
