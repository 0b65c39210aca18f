//! Restarting the daemon: resume without re-upload, or a new generation when the WAL was
//! changed behind its back.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

fn snapshots_of(tree: &BTreeMap<String, u64>) -> Vec<String> {
    tree.keys()
        .filter(|k| k.ends_with(".snapshot.gz"))
        .cloned()
        .collect()
}

#[test]
fn restart_without_writes_uploads_nothing_then_resumes_in_same_generation() {
    let env = Env::new("restart-resume");
    env.write_config(&Cfg::default());
    // The app keeps its connection open for the whole test, as a real app would: closing the
    // last connection while the daemon is down would checkpoint and delete the WAL.
    let app = create_app_db(&env.db, 4096);

    let d1 = replicating(&env, &app, 30);
    d1.stop_ok();

    let before = list_tree(&env.replica);
    let gens = generations(&env.replica);
    assert_eq!(gens.len(), 1, "{gens:?}");
    let gen = gens[0].clone();

    // Restart with no writes in between: nothing is uploaded.
    let mut d2 = env.start("daemon-2");
    // Give it many monitor and sync intervals (100 ms each) to do anything it would do.
    std::thread::sleep(Duration::from_secs(3));
    d2.assert_alive();
    let idle = list_tree(&env.replica);
    assert_eq!(
        idle, before,
        "an idle restart changed the replica (re-upload or new files)"
    );
    let log2 = d2.log_text();
    assert!(
        !log2.contains("new generation"),
        "restart without changes started a new generation:\n{log2}"
    );
    assert_eq!(local_generation(&env.db).as_deref(), Some(gen.as_str()));

    // Writes after the restart land in the same generation, as new WAL segments.
    insert_ids(&app, 31, 55);
    wait_rows(&env, 55);
    let after = list_tree(&env.replica);
    assert_eq!(
        generations(&env.replica),
        vec![gen.clone()],
        "writes after a restart started a new generation"
    );
    assert_eq!(
        snapshots_of(&after),
        snapshots_of(&before),
        "a restart took a new snapshot"
    );
    let new_wal: Vec<&String> = after
        .keys()
        .filter(|k| !before.contains_key(*k) && k.starts_with(&format!("generations/{gen}/wal/")))
        .collect();
    assert!(
        !new_wal.is_empty(),
        "no new WAL segment in generation {gen}"
    );
    for (k, size) in &before {
        assert_eq!(
            after.get(k),
            Some(size),
            "an existing replica object changed or vanished: {k}"
        );
    }

    let src = digest_conn(&app, "t");
    let s2 = d2.stop_ok();
    assert!(
        !s2.log.contains("new generation"),
        "new generation during the second run:\n{}",
        s2.log
    );
    assert_replica_tree_valid(&env.replica);
    let out = env.restore_config();
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), src);
    assert_eq!(id_summary(&out), (55, 1, 55));
}

#[test]
fn restart_after_sigkill_without_writes_keeps_generation() {
    let env = Env::new("restart-kill");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);

    let d1 = replicating(&env, &app, 20);
    let gen = generations(&env.replica)[0].clone();
    d1.kill();

    let mut d2 = env.start("daemon-2");
    std::thread::sleep(Duration::from_secs(2));
    d2.assert_alive();
    insert_ids(&app, 21, 40);
    wait_rows(&env, 40);
    let s = d2.stop_ok();
    assert!(
        !s.log.contains("new generation"),
        "restart after SIGKILL with an intact WAL started a new generation:\n{}",
        s.log
    );
    assert_eq!(generations(&env.replica), vec![gen]);
    let out = env.restore_url(&[]);
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), digest_conn(&app, "t"));
}

#[test]
fn external_truncate_checkpoint_while_stopped_starts_new_generation() {
    let env = Env::new("restart-newgen");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);

    let d1 = replicating(&env, &app, 20);
    d1.stop_ok();
    let gens1 = generations(&env.replica);
    assert_eq!(gens1.len(), 1);

    // With the daemon down, the app writes, truncates the WAL, and writes again.
    insert_ids(&app, 21, 30);
    let (busy, _log, _ckpt): (i64, i64, i64) = app
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "the app's TRUNCATE checkpoint was blocked");
    insert_ids(&app, 31, 40);
    app.execute("UPDATE t SET n = n + 100 WHERE id % 3 = 0", [])
        .unwrap();
    app.execute("DELETE FROM t WHERE id = 7", []).unwrap();
    let src = digest_conn(&app, "t");

    let mut d2 = env.start("daemon-2");
    let log = d2.wait_log("new generation", DEADLINE);
    let line = log
        .lines()
        .find(|l| l.contains("new generation"))
        .unwrap()
        .to_string();
    eprintln!("new generation log line: {line}");
    assert!(
        line.contains("reason="),
        "the new-generation line gives no reason: {line}"
    );

    env.wait_restore(DEADLINE, "restore equals the app's latest state", |p| {
        table_digest(p, "t") == src
    });
    d2.stop_ok();

    let gens2 = generations(&env.replica);
    assert_eq!(
        gens2.len(),
        2,
        "expected the old and the new generation: {gens2:?}"
    );
    let new_gen = local_generation(&env.db).expect("generation file");
    assert!(
        gens2.contains(&new_gen) && !gens1.contains(&new_gen),
        "local generation {new_gen} is not the new one"
    );
    assert_replica_tree_valid(&env.replica);

    let out = env.restore_config();
    assert_integrity_ok(&out);
    assert_eq!(
        table_digest(&out, "t"),
        src,
        "restore does not give the app's latest state"
    );
    assert_eq!(id_summary(&out), (39, 1, 40));
}

/// A second daemon on the same db must not fight the first (each would take the other's WAL
/// restarts for lost frames and remove its generations): it waits on the metadata dir's lock,
/// says why, and takes over in the same generation once the first one exits.
#[test]
fn a_second_daemon_on_the_same_db_waits_then_takes_over() {
    let env = Env::new("second-daemon");
    let app = create_app_db(&env.db, 4096);
    insert_ids(&app, 1, 20);
    env.write_config(&Cfg::default());
    let first = env.start("daemon-first");
    wait_rows(&env, 20);
    let gens = generations(&env.replica);
    assert_eq!(gens.len(), 1);

    let mut second = env.start("daemon-second");
    second.wait_log(
        "another litestream process is already replicating this database",
        DEADLINE,
    );
    insert_ids(&app, 21, 60);
    wait_rows(&env, 60);
    first.stop_ok();

    second.wait_log("resuming generation", DEADLINE);
    insert_ids(&app, 61, 100);
    let out = wait_rows(&env, 100);
    assert_integrity_ok(&out);
    let log = second.log_text();
    second.stop_ok();
    assert_eq!(
        generations(&env.replica),
        gens,
        "second daemon's log:\n{log}"
    );
    assert!(!log.contains("new generation"), "{log}");
}

/// Issue #21 (needless new generations): the app closes the db while the daemon is stopped
/// (SQLite's last close checkpoints and deletes the WAL), as on every `make run` restart. The
/// clean stop's record proves the db file unchanged since, so the next start continues the
/// generation: no second snapshot, one generation, every row restored.
#[test]
fn a_clean_stop_then_the_app_closing_the_db_continues_the_generation() {
    let env = Env::new("restart-sealed-close");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 30);
    drop(app);
    assert!(
        !env.db.with_file_name("app.db-wal").exists() || wal_len(&env) == 0,
        "the app's last close left its WAL"
    );
    let before = list_tree(&env.replica);

    let mut d2 = env.start("daemon-2");
    d2.wait_log("resuming generation after a clean stop", DEADLINE);
    let app = open_existing(&env.db);
    insert_ids(&app, 31, 60);
    wait_rows(&env, 60);
    let src = digest_conn(&app, "t");
    let s2 = d2.stop_ok();
    assert!(!s2.log.contains("new generation"), "{}", s2.log);
    let after = list_tree(&env.replica);
    assert_eq!(generations(&env.replica).len(), 1, "{after:?}");
    assert_eq!(
        snapshots_of(&after),
        snapshots_of(&before),
        "a second snapshot"
    );
    assert_replica_tree_valid(&env.replica);
    let out = env.restore_config();
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), src);
    assert_eq!(id_summary(&out), (60, 1, 60));
}

/// The app keeps writing after a clean stop: its next commit restarts the WAL (the seal left
/// it fully checkpointed), and the start after continues the generation with that life.
#[test]
fn a_clean_stop_then_app_writes_continue_the_generation() {
    let env = Env::new("restart-sealed-writes");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 30);
    insert_ids(&app, 31, 50);

    let mut d2 = env.start("daemon-2");
    d2.wait_log("resuming generation after a clean stop", DEADLINE);
    insert_ids(&app, 51, 70);
    wait_rows(&env, 70);
    let src = digest_conn(&app, "t");
    let s2 = d2.stop_ok();
    assert!(!s2.log.contains("new generation"), "{}", s2.log);
    assert_eq!(generations(&env.replica).len(), 1);
    let out = env.restore_config();
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), src);
    assert_eq!(id_summary(&out), (70, 1, 70));
}

/// After a clean stop the app writes and closes: its close checkpoints frames the daemon never
/// saw into the db file. That cannot be replayed: a new generation, with a reason that says so.
#[test]
fn a_db_changed_while_stopped_starts_a_new_generation_that_says_why() {
    let env = Env::new("restart-sealed-changed");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 20);
    insert_ids(&app, 21, 40);
    drop(app);

    let mut d2 = env.start("daemon-2");
    let log = d2.wait_log("new generation", DEADLINE);
    assert!(
        log.contains("the database changed while the daemon was stopped"),
        "{log}"
    );
    let out = wait_rows(&env, 40);
    assert_integrity_ok(&out);
    d2.stop_ok();
    assert_eq!(generations(&env.replica).len(), 2);
}

fn wal_len(env: &Env) -> u64 {
    std::fs::metadata(env.db.with_file_name("app.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0)
}
