//! Attacks on the clean-stop seal (`src/db/seal.rs`): whatever the application, the operator
//! or the scheduler does around a sealed stop, the replica must restore to exactly the app's
//! data, and must stay restorable. Each test ends with a restore compared with the app's db.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rusqlite::Connection;

/// The app's data as SQLite shows it now (a fresh connection reads db + WAL).
fn app_digest(db: &Path) -> Digest {
    table_digest(db, "t")
}

/// Restores by config and checks it against the app's data.
fn assert_restore_equals_app(env: &Env, want: Digest) {
    let (o, out) = env.try_restore_url(&[]);
    o.assert_ok("restore of the replica after the attack");
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), want, "restored rows differ");
}

fn record_field(env: &Env, key: &str) -> String {
    let text = std::fs::read_to_string(meta_dir(&env.db).join("clean-stop")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

/// The app runs `PRAGMA wal_checkpoint(TRUNCATE)` twice while the daemon is stopped (a
/// periodic maintenance job on an idle app). The WAL is already wholly checkpointed by the
/// seal, so the db file is not written, but each TRUNCATE restarts the WAL header (SQLite's
/// walRestartHdr: checkpoint sequence + 1, salt-1 + 1): the next life's salt-1 is two ahead.
/// The db file is unchanged, so continuing is sound data-wise, but restore refuses an index
/// whose salt-1 is neither one ahead nor from a fresh WAL: the daemon must not continue
/// across a header that restore will refuse.
#[test]
fn two_truncate_checkpoints_while_stopped_leave_the_replica_restorable() {
    let env = Env::new("seal-two-truncates");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 20);
    for _ in 0..2 {
        let (busy, _, _): (i64, i64, i64) = app
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
    }
    insert_ids(&app, 21, 40);

    let mut d2 = env.start("daemon-2");
    d2.wait_log("generation", DEADLINE);
    insert_ids(&app, 41, 60);
    wait_until(DEADLINE, || {
        let (o, p) = env.try_restore_url(&[]);
        o.code != Some(0) || id_summary(&p) == (60, 1, 60)
    });
    let want = digest_conn(&app, "t");
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// A busy writer across three sealed restarts: commits race the final tick, the write lock,
/// the granule sleep, the ROLLBACK and our close. Every committed row must be restored.
#[test]
fn a_busy_writer_across_sealed_restarts_loses_nothing() {
    let env = Env::new("seal-busy-writer");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    drop(app);
    let w = Writer::start(&env.db, 1, Duration::from_millis(1));
    let mut d = env.start("daemon-0");
    wait_for_a_snapshot(&env, &mut d);
    for round in 1..=3 {
        wait_until(DEADLINE, || w.committed() >= 200 * round);
        let s = d.stop_ok();
        // Sealed or not (the writer may hold the lock), the data must be whole.
        let _ = s.log.contains("clean stop recorded");
        std::thread::sleep(Duration::from_millis(50));
        d = env.start(&format!("daemon-{round}"));
        d.wait_log("generation", DEADLINE);
    }
    let last = w.finish() as i64;
    let out = env.wait_restore(DEADLINE, "restore holds every committed row", |p| {
        id_summary(p).2 >= last
    });
    assert_integrity_ok(&out);
    let want = app_digest(&env.db);
    d.stop_ok();
    assert_restore_equals_app(&env, want);
    assert_eq!(want.rows as i64, last);
}

/// The app closes before the daemon stops: the daemon's connections are the last ones open
/// during and after the seal. The next start resumes the same generation; the data is whole.
#[test]
fn the_daemon_closing_last_then_continuing_loses_nothing() {
    let env = Env::new("seal-daemon-last");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let d1 = replicating(&env, &app, 30);
    drop(app);
    let s = d1.stop_ok();
    assert!(s.log.contains("clean stop recorded"), "{}", s.log);
    let mut d2 = env.start("daemon-2");
    // Our close may leave the WAL (then the shadow's life resumes as before) or delete it
    // (then the seal continues): either way the same generation.
    d2.wait_log("resuming generation", DEADLINE);
    let app = open_existing(&env.db);
    insert_ids(&app, 31, 50);
    wait_rows(&env, 50);
    let want = digest_conn(&app, "t");
    let s2 = d2.stop_ok();
    assert!(!s2.log.contains("new generation"), "{}", s2.log);
    assert_restore_equals_app(&env, want);
}

/// An app reader holds a snapshot older than the WAL's end during the stop: the WAL cannot
/// be checkpointed whole, so no seal; then the app writes and closes. New generation, whole data.
#[test]
fn an_app_reader_during_the_stop_refuses_the_seal() {
    let env = Env::new("seal-reader");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let mut d1 = env.start("daemon-1");
    wait_for_a_snapshot(&env, &mut d1);
    insert_ids(&app, 1, 10);
    let reader = open_existing(&env.db);
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    insert_ids(&app, 11, 20);
    wait_rows(&env, 20);
    let s = d1.stop_ok();
    assert!(s.log.contains("clean stop not recorded"), "{}", s.log);
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    insert_ids(&app, 21, 30);
    drop(app);
    let mut d2 = env.start("daemon-2");
    d2.wait_log("new generation", DEADLINE);
    wait_rows(&env, 30);
    let want = app_digest(&env.db);
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// The app holds the write lock through the stop: the seal gives up after ~100 ms (never
/// blocks the shutdown), says why, and the data stays whole.
#[test]
fn the_app_holding_the_write_lock_through_the_stop_is_not_waited_for() {
    let env = Env::new("seal-write-lock");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let d1 = replicating(&env, &app, 10);
    app.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert_row(&app, 11, 100);
    let s = d1.stop_ok();
    assert!(
        s.log.contains("the application holds the write lock"),
        "{}",
        s.log
    );
    app.execute_batch("COMMIT").unwrap();
    drop(app);
    let mut d2 = env.start("daemon-2");
    d2.wait_log("generation", DEADLINE);
    wait_rows(&env, 11);
    let want = app_digest(&env.db);
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// While stopped, the operator restores an older copy with `cp -p` (mtime kept): ctime and
/// (here) size betray it. A new generation, restoring the old copy's rows.
#[test]
fn an_older_copy_restored_with_cp_p_while_stopped_is_noticed() {
    let env = Env::new("seal-cp-p");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    insert_ids(&app, 1, 5);
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let old = env.db.with_file_name("old.db");
    assert!(Command::new("cp")
        .args(["-p"])
        .arg(&env.db)
        .arg(&old)
        .status()
        .unwrap()
        .success());
    let mut d1 = env.start("daemon-1");
    wait_for_a_snapshot(&env, &mut d1);
    insert_ids(&app, 6, 30);
    wait_rows(&env, 30);
    let s = d1.stop_ok();
    assert!(s.log.contains("clean stop recorded"), "{}", s.log);
    drop(app);
    assert!(Command::new("cp")
        .args(["-p"])
        .arg(&old)
        .arg(&env.db)
        .status()
        .unwrap()
        .success());
    let mut d2 = env.start("daemon-2");
    let log = d2.wait_log("new generation", DEADLINE);
    assert!(
        log.contains("changed while the daemon was stopped"),
        "{log}"
    );
    wait_rows(&env, 5);
    let want = app_digest(&env.db);
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// While stopped, the app updates rows in place (same db size) and closes (its checkpoint
/// writes the db file); then someone sets the mtime back to the recorded one (`touch -d`).
/// Only ctime tells: a new generation, and the restore has the updated rows.
#[test]
fn an_in_place_change_with_the_mtime_set_back_is_noticed() {
    let env = Env::new("seal-touch");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 30);
    let size = std::fs::metadata(&env.db).unwrap().len();
    let mtime = record_field(&env, "db-mtime");
    app.execute_batch("UPDATE t SET n = n + 1 WHERE id % 3 = 0")
        .unwrap();
    drop(app);
    assert_eq!(std::fs::metadata(&env.db).unwrap().len(), size);
    assert!(Command::new("touch")
        .args(["-m", "-d", &format!("@{mtime}")])
        .arg(&env.db)
        .status()
        .unwrap()
        .success());
    let mut d2 = env.start("daemon-2");
    let log = d2.wait_log("new generation", DEADLINE);
    assert!(
        log.contains("changed while the daemon was stopped"),
        "{log}"
    );
    let want = app_digest(&env.db);
    env.wait_restore(DEADLINE, "restore has the updated rows", |p| {
        table_digest(p, "t") == want
    });
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// While stopped, a second app switches to `journal_mode=DELETE`, writes and VACUUMs with
/// another page size, then switches back to WAL. The db file was rewritten: new generation.
#[test]
fn a_journal_mode_switch_and_vacuum_while_stopped_is_noticed() {
    let env = Env::new("seal-journal-mode");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 20);
    drop(app);
    let other = Connection::open(&env.db).unwrap();
    let m: String = other
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .unwrap();
    assert_eq!(m, "delete");
    insert_ids(&other, 21, 25);
    other
        .execute_batch("PRAGMA page_size=8192; VACUUM;")
        .unwrap();
    let m: String = other
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(m, "wal");
    insert_ids(&other, 26, 30);
    let mut d2 = env.start("daemon-2");
    d2.wait_log("new generation", DEADLINE);
    wait_rows(&env, 30);
    let want = digest_conn(&other, "t");
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// While stopped, the app writes (restarting the WAL after the seal), is killed before any
/// checkpoint (its WAL stays, the db file is unchanged), and its `-shm` is deleted. The next
/// start continues with that WAL life as the next index: every row restored.
#[test]
fn app_frames_after_the_seal_with_the_shm_removed_continue() {
    let env = Env::new("seal-shm-gone");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 20);
    insert_ids(&app, 21, 40);
    // "Killed": copy the WAL aside before the close checkpoints it, close, put it back
    // without its -shm (SQLite recovers the index from the WAL file alone).
    let wal = env.db.with_file_name("app.db-wal");
    let saved = std::fs::read(&wal).unwrap();
    let db_before = std::fs::read(&env.db).unwrap();
    let want = digest_conn(&app, "t");
    // Close without checkpointing: the db file stays the sealed state.
    app.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    unsafe {
        // SQLITE_FCNTL_PERSIST_WAL keeps the WAL; no checkpoint-on-close with no_ckpt_on_close.
        let db = app.handle();
        rusqlite::ffi::sqlite3_db_config(
            db,
            rusqlite::ffi::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            1,
            std::ptr::null_mut::<i32>(),
        );
    }
    drop(app);
    assert_eq!(std::fs::read(&env.db).unwrap(), db_before);
    std::fs::write(&wal, &saved).unwrap();
    let _ = std::fs::remove_file(env.db.with_file_name("app.db-shm"));
    let mut d2 = env.start("daemon-2");
    d2.wait_log("resuming generation after a clean stop", DEADLINE);
    wait_rows(&env, 40);
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}

/// A reboot while stopped (simulated: the record's boot id is another boot's). After a crash
/// the disk can hold a checkpoint's data without its mtime/ctime (fdatasync does not flush
/// them, and `lazytime` holds them for hours), so the stamp proves nothing across a boot: a
/// new generation, and the data is whole.
#[test]
fn a_seal_from_another_boot_is_not_trusted() {
    let env = Env::new("seal-reboot");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    sealed_after(&env, &app, 20);
    drop(app);
    let rec = meta_dir(&env.db).join("clean-stop");
    let text = std::fs::read_to_string(&rec).unwrap();
    let boot = record_field(&env, "boot-id");
    std::fs::write(
        &rec,
        text.replace(&boot, "00000000-0000-4000-8000-000000000000"),
    )
    .unwrap();
    let mut d2 = env.start("daemon-2");
    let log = d2.wait_log("new generation", DEADLINE);
    assert!(log.contains("the machine restarted"), "{log}");
    wait_rows(&env, 20);
    let want = app_digest(&env.db);
    d2.stop_ok();
    assert_restore_equals_app(&env, want);
}
