//! The db file replaced (`mv new.db app.db`) or deleted and created again while the daemon
//! runs: the replica must follow the file now at the path, from a snapshot of that file,
//! and `/healthz` must not say ok while the replicas hold only the old file's data.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A separate db at `path` with rows `from..=to` (WAL mode, closed cleanly: no `-wal` left).
fn make_other_db(path: &Path, from: i64, to: i64) {
    let c = create_app_db(path, 4096);
    tx(&c, |c| {
        for id in from..=to {
            insert_row(c, id, 700);
        }
    });
    drop(c);
    assert!(!files_of(path)[1], "the other db kept its -wal");
}

/// Whether `db`, `db-wal`, `db-shm` exist.
fn files_of(db: &Path) -> [bool; 3] {
    ["", "-wal", "-shm"].map(|s| Path::new(&format!("{}{s}", db.display())).exists())
}

fn remove_db_and_siblings(db: &Path) {
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", db.display()));
    }
}

fn start(env: &Env, addr: &str) -> Daemon {
    env.write_config(&Cfg {
        addr: Some(addr.to_string()),
        ..Cfg::default()
    });
    env.start("daemon")
}

/// The old file: ids 1..=60, replicated.
fn old_file_replicated(env: &Env, d: &mut Daemon) {
    let app = create_app_db(&env.db, 4096);
    wait_for_a_snapshot(env, d);
    tx(&app, |c| {
        for id in 1..=60 {
            insert_row(c, id, 700);
        }
    });
    env.wait_restore(DEADLINE, "the old file's 60 rows", |p| {
        id_summary(p) == (60, 1, 60)
    });
    drop(app);
}

/// Writes ids `from..=to` to the file now at the path and waits until a restore of the
/// replica equals it (its rows, and a sound integrity check).
fn write_new_file_and_check(env: &Env, from: i64, to: i64, already: (i64, i64, i64)) {
    let app = open_app(&env.db);
    assert_eq!(id_summary(&env.db), already);
    for id in from..=to {
        tx(&app, |c| insert_row(c, id, 700));
    }
    let want = digest_conn(&app, "t");
    let out = env.wait_restore(DEADLINE, "restore equals the new file", |p| {
        table_digest(p, "t") == want
    });
    assert_integrity_ok(&out);
}

#[test]
fn db_file_replaced_under_the_daemon_replicates_the_new_file() {
    let env = Env::new("db-replaced");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = start(&env, &addr);
    old_file_replicated(&env, &mut d);

    // A different db with its own rows, moved over the live one (its stale -wal and -shm
    // removed, as SQLite requires for a file swap).
    let other = env.root.join("new.db");
    make_other_db(&other, 1001, 1050);
    std::fs::rename(&other, &env.db).unwrap();
    let _ = std::fs::remove_file(format!("{}-wal", env.db.display()));
    let _ = std::fs::remove_file(format!("{}-shm", env.db.display()));

    write_new_file_and_check(&env, 1051, 1520, (50, 1001, 1050));
    let log = d.wait_log("database file was replaced", DEADLINE);
    assert!(
        log.lines()
            .any(|l| l.contains("new generation") && l.contains("replaced by another file")),
        "no new generation with the replacement as its reason:\n{log}"
    );
    assert!(wait_until(DEADLINE, || http_get(&addr, "/healthz")
        == Some((200, "ok\n".into()))));
    d.stop_ok();
}

#[test]
fn db_file_deleted_and_recreated_under_the_daemon_replicates_the_new_file() {
    let env = Env::new("db-recreated");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = start(&env, &addr);
    old_file_replicated(&env, &mut d);

    remove_db_and_siblings(&env.db);
    d.wait_log("database file deleted", DEADLINE);
    // While the path is empty, health says why, and no db is created there.
    let (code, body) = http_get(&addr, "/healthz").expect("healthz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("deleted"), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        files_of(&env.db),
        [false, false, false],
        "something created the db"
    );

    let tmp = env.root.join("recreated.db");
    make_other_db(&tmp, 2001, 2040);
    std::fs::rename(&tmp, &env.db).unwrap();

    write_new_file_and_check(&env, 2041, 2100, (40, 2001, 2040));
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("new generation") && l.contains("deleted and created again")),
        "no new generation with the deletion as its reason:\n{log}"
    );
    assert!(wait_until(DEADLINE, || http_get(&addr, "/healthz")
        == Some((200, "ok\n".into()))));
    d.stop_ok();
}
