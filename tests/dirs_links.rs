//! Planted directory links and directories we did not create (issue #22): when the daemon
//! runs as root for a db another user owns, that user owns the meta dir and could swap any
//! directory in it for a link to /etc, or point the meta dir itself somewhere else.
//! `O_NOFOLLOW` on the last component does not stop that; walking every directory from a
//! descriptor does. Each attack is carried out by `nobody` (uid 65534) in a child process,
//! as the db's owner would; the daemon runs as root. Also: directories anyone may write are
//! refused, and everything in the meta dir belongs to the meta dir's owner.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const NOBODY: u32 = 65534;

/// Runs `script` with `sh -c` as nobody; panics unless it succeeds.
fn as_nobody(cwd: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run sh as nobody");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

/// A root-owned directory nobody may not write, holding one file: where the attacker aims.
fn victim_dir(env: &Env) -> PathBuf {
    let dir = env.root.join("victim-dir");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("old.tmp"), b"root's\n").unwrap();
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The db (and its WAL and shm) owned by nobody, in a root dir nobody may enter.
fn db_owned_by_nobody(env: &Env) -> rusqlite::Connection {
    fs::set_permissions(&env.root, fs::Permissions::from_mode(0o755)).unwrap();
    let app = create_app_db(&env.db, 4096);
    for p in [
        env.db.clone(),
        env.root.join("app.db-wal"),
        env.root.join("app.db-shm"),
    ] {
        if p.exists() {
            chown(&p, NOBODY);
        }
    }
    app
}

#[test]
fn a_shadow_wal_dir_swapped_for_a_link_by_the_db_owner_gets_nothing_written_through() {
    let env = Env::new("dirlink-shadow");
    let victim = victim_dir(&env);
    env.write_config(&Cfg {
        min_checkpoint_page_count: 20,
        extra_db: "    max-checkpoint-page-count: 40\n".into(),
        ..Cfg::default()
    });
    let app = db_owned_by_nobody(&env);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    let generation = local_generation(&env.db).expect("a generation");
    let gen_dir = meta_dir(&env.db).join("generations").join(&generation);
    // The db's owner owns the meta dir: they may rename `wal` and put a link in its place,
    // and put it back, over and over, so that some checkpoint's new shadow index is created
    // while the link is there (today the daemon follows it and creates a file of root's in
    // the victim dir).
    let script = format!(
        "i=0; while [ $i -lt 400 ]; do mv wal wal.real && ln -s {} wal && sleep 0.01; rm -f wal; mv wal.real wal; sleep 0.005; i=$((i+1)); done",
        victim.display()
    );
    let mut planter = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&gen_dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .expect("run the planter as nobody");
    let mut id = 0;
    while planter.try_wait().unwrap().is_none() && names(&victim).len() == 1 {
        d.assert_alive();
        tx(&app, |c| {
            for _ in 0..20 {
                id += 1;
                insert_row(c, id, 3000);
            }
        });
    }
    let _ = planter.kill();
    let _ = planter.wait();
    assert_eq!(
        names(&victim),
        ["old.tmp"],
        "the daemon wrote into {} through the planted link",
        victim.display()
    );
    // And the replica still restores to the db's rows.
    let digest = table_digest(&env.db, "t");
    env.wait_restore(DEADLINE, "the db's rows", |p| {
        table_digest(p, "t") == digest
    });
    d.stop_ok();
}

#[test]
fn a_meta_dir_planted_as_a_link_by_the_db_dirs_owner_is_refused() {
    let env = Env::new("dirlink-meta");
    let victim = victim_dir(&env);
    fs::set_permissions(&env.root, fs::Permissions::from_mode(0o755)).unwrap();
    let app_dir = env.root.join("app");
    fs::create_dir(&app_dir).unwrap();
    chown(&app_dir, NOBODY);
    let db = app_dir.join("app.db");
    drop(create_app_db(&db, 4096));
    chown(&db, NOBODY);
    // Before the daemon's first start, the db directory's owner points the meta dir at a
    // directory of root's.
    as_nobody(
        &app_dir,
        &format!("ln -s {} .app.db-litestream", victim.display()),
    );
    let args: Vec<OsString> = vec!["replicate".into(), db.into(), env.replica_url().into()];
    let mut d = env.spawn_daemon("daemon", args);
    let log = d.wait_log("is a symbolic link in", DEADLINE);
    let line = log
        .lines()
        .find(|l| l.contains("is a symbolic link in"))
        .unwrap();
    assert!(line.contains(".app.db-litestream"), "{line}");
    // Nothing created in, and nothing removed from, root's directory.
    assert_eq!(names(&victim), ["old.tmp"]);
    d.assert_alive();
}

#[test]
fn a_replica_dir_anyone_may_write_is_refused_with_the_fix() {
    let env = Env::new("dir-world-writable");
    fs::create_dir(&env.replica).unwrap();
    fs::set_permissions(&env.replica, fs::Permissions::from_mode(0o777)).unwrap();
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    tx(&app, |c| insert_row(c, 1, 100));
    let mut d = env.start("daemon");
    let log = d.wait_log("without the sticky bit", DEADLINE);
    let line = log
        .lines()
        .find(|l| l.contains("without the sticky bit"))
        .unwrap();
    assert!(
        line.contains(&env.replica.display().to_string()) && line.contains("chmod o-w"),
        "{line}"
    );
    assert!(names(&env.replica).is_empty(), "{:?}", names(&env.replica));
    d.assert_alive();
}

#[test]
fn a_meta_dir_owned_by_a_stranger_is_refused_with_the_fix() {
    let env = Env::new("dir-stranger");
    let meta = meta_dir(&env.db);
    fs::create_dir(&meta).unwrap();
    chown(&meta, 12345);
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    tx(&app, |c| insert_row(c, 1, 100));
    let mut d = env.start("daemon");
    let log = d.wait_log("belongs to uid 12345", DEADLINE);
    let line = log
        .lines()
        .find(|l| l.contains("belongs to uid 12345"))
        .unwrap();
    assert!(
        line.contains(&meta.display().to_string()) && line.contains("chown"),
        "{line}"
    );
    assert!(names(&meta).is_empty(), "{:?}", names(&meta));
    d.assert_alive();
}

#[test]
fn everything_in_the_meta_dir_belongs_to_the_db_owner_when_run_as_root() {
    let env = Env::new("meta-owner");
    env.write_config(&Cfg {
        min_checkpoint_page_count: 20,
        ..Cfg::default()
    });
    let app = db_owned_by_nobody(&env);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    tx(&app, |c| {
        for id in 1..=40 {
            insert_row(c, id, 3000);
        }
    });
    env.wait_restore(DEADLINE, "40 rows", |p| id_summary(p) == (40, 1, 40));
    d.stop_ok();
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u32, u32)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let md = fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), md.uid(), md.gid()));
            if md.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let meta = meta_dir(&env.db);
    let mut all = Vec::new();
    walk(&meta, &mut all);
    assert!(all.len() >= 4, "{all:?}");
    let wrong: Vec<_> = all
        .iter()
        .filter(|(_, uid, gid)| (*uid, *gid) != (NOBODY, NOBODY))
        .collect();
    assert!(
        wrong.is_empty(),
        "not owned by the db's owner (as the meta dir is): {wrong:?}"
    );
    // So the db's owner can open the lock and the shadow files in a later run of their own.
    as_nobody(
        &meta,
        "cat lock generation >/dev/null && for f in generations/*/wal/*.wal; do cat \"$f\" >/dev/null || exit 1; done",
    );
}

#[test]
fn a_replica_dir_owned_by_a_stranger_is_refused_with_the_fix() {
    // The replica dir exists and belongs to another local user (nobody: neither root, nor
    // the daemon's user, nor the db's owner), who could swap what the daemon writes there.
    let env = Env::new("replica-stranger");
    fs::create_dir(&env.replica).unwrap();
    fs::set_permissions(&env.replica, fs::Permissions::from_mode(0o755)).unwrap();
    chown(&env.replica, NOBODY);
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    tx(&app, |c| insert_row(c, 1, 100));
    let mut d = env.start("daemon");
    let log = d.wait_log("belongs to uid 65534", DEADLINE);
    let line = log
        .lines()
        .find(|l| l.contains("belongs to uid 65534"))
        .unwrap();
    assert!(
        line.contains(&env.replica.display().to_string()) && line.contains("chown"),
        "{line}"
    );
    assert!(names(&env.replica).is_empty(), "{:?}", names(&env.replica));
    d.assert_alive();
}

#[test]
fn a_replica_dir_owned_by_the_db_owner_is_written_by_a_root_daemon() {
    // The db's owner may rewrite the database itself, so their owning its backups gives them
    // nothing: a root daemon replicates there.
    let env = Env::new("replica-db-owner");
    env.write_config(&Cfg::default());
    let app = db_owned_by_nobody(&env);
    fs::create_dir(&env.replica).unwrap();
    fs::set_permissions(&env.replica, fs::Permissions::from_mode(0o755)).unwrap();
    chown(&env.replica, NOBODY);
    tx(&app, |c| insert_row(c, 1, 100));
    let d = env.start("daemon");
    env.wait_restore(DEADLINE, "1 row", |p| id_summary(p) == (1, 1, 1));
    d.stop_ok();
}
