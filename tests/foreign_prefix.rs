//! Two databases pointed at one replica path (issue #21): the second daemon used to delete
//! the first's generation in its retention without a word. Each generation now carries a
//! marker naming the db that wrote it (`generations/<gen>/db-id`); a daemon that finds
//! another db's generations warns once, naming both ids and the fix, and its retention keeps
//! them. A db restored from the replica inherits the id, so replicating it back there (the
//! normal recovery) is quiet and prunes the old generations as before. File and S3 replicas.

mod common;
mod s3_server;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use s3_server::*;

const WARNING: &str = "written by another database";
const RETENTION: &str = "        retention: 1s\n        retention-check-interval: 1s\n";

/// A config for `db` with the replica block `replica` (and quick retention), at `path`.
fn write_config(path: &Path, db: &Path, replica: &str) {
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 200\n    replicas:\n{replica}{RETENTION}",
        db.display()
    );
    fs::write(path, y).unwrap();
}

fn replicate(env: &Env, label: &str, config: &Path) -> Daemon {
    let args: Vec<OsString> = vec!["replicate".into(), "-config".into(), config.into()];
    env.spawn_daemon(label, args)
}

/// Generations in the replica's tree `view` that hold a snapshot.
fn with_snapshot(view: &Path) -> Vec<String> {
    generations(view)
        .into_iter()
        .filter(|g| !snapshot_indexes(view, g).is_empty())
        .collect()
}

/// Replicates db A (`env.db`) until it has a generation, stops; returns the generation and
/// A's config.
fn first_db(env: &Env, replica: &str, view: &Path) -> (String, PathBuf) {
    let config = env.root.join("a.yml");
    write_config(&config, &env.db, replica);
    let app = create_app_db(&env.db, 4096);
    tx(&app, |c| {
        for id in 1..=10 {
            insert_row(c, id, 100)
        }
    });
    let d = replicate(env, "daemon-a", &config);
    assert!(
        wait_until(DEADLINE, || !with_snapshot(view).is_empty()),
        "db A wrote no snapshot"
    );
    d.stop_ok();
    let gens = with_snapshot(view);
    assert_eq!(gens.len(), 1, "{gens:?}");
    (gens[0].clone(), config)
}

/// Points a second db B at the same replica: it warns (naming A's generation and the fix),
/// and A's generation survives several of B's retention checks.
fn second_db_warns_and_keeps_the_first_generation(env: &Env, replica: &str, view: &Path) {
    let (gen_a, _) = first_db(env, replica, view);
    let db_b = env.root.join("other.db");
    let config = env.root.join("b.yml");
    write_config(&config, &db_b, replica);
    let app = create_app_db(&db_b, 4096);
    tx(&app, |c| insert_row(c, 1, 100));
    let mut d = replicate(env, "daemon-b", &config);
    let log = d.wait_log(WARNING, DEADLINE);
    let line = log.lines().find(|l| l.contains(WARNING)).unwrap();
    assert!(
        line.contains(&gen_a) && line.contains("own path") && line.contains("db_id"),
        "{line}"
    );
    // B's own generation is up and several retention checks (every 1 s, retention 1 s) pass.
    assert!(wait_until(DEADLINE, || with_snapshot(view).len() == 2));
    std::thread::sleep(Duration::from_secs(4));
    d.assert_alive();
    let stopped = d.stop_ok();
    assert!(
        with_snapshot(view).contains(&gen_a),
        "db A's generation {gen_a} was deleted; log:\n{}",
        stopped.log
    );
    assert_eq!(stopped.log.matches(WARNING).count(), 1, "{}", stopped.log);
}

/// A restored db replicated back to the same replica is the same db: no warning, and
/// retention prunes the old generation as it always did.
fn restored_db_is_the_same_db(env: &Env, replica: &str, view: &Path) {
    let (gen_a, config_a) = first_db(env, replica, view);
    let restored = env.root.join("restored.db");
    env.run(&[
        "restore",
        "-config",
        config_a.to_str().unwrap(),
        "-o",
        restored.to_str().unwrap(),
        env.db.to_str().unwrap(),
    ])
    .assert_ok("restore");
    let config = env.root.join("restored.yml");
    write_config(&config, &restored, replica);
    let d = replicate(env, "daemon-restored", &config);
    assert!(
        wait_until(DEADLINE, || !with_snapshot(view).contains(&gen_a)),
        "retention kept the restored db's own old generation {gen_a}"
    );
    let stopped = d.stop_ok();
    assert!(!stopped.log.contains(WARNING), "{}", stopped.log);
}

fn file_replica(env: &Env) -> String {
    format!(
        "      - type: file\n        path: \"{}\"\n        sync-interval: 100ms\n",
        env.replica.display()
    )
}

#[test]
fn file_a_second_db_on_the_same_path_warns_and_keeps_the_first_generation() {
    let env = Env::new("foreign-file");
    second_db_warns_and_keeps_the_first_generation(&env, &file_replica(&env), &env.replica);
}

#[test]
fn file_a_restored_db_replicating_back_is_quiet() {
    let env = Env::new("foreign-file-restored");
    restored_db_is_the_same_db(&env, &file_replica(&env), &env.replica);
}

#[test]
fn s3_a_second_db_on_the_same_prefix_warns_and_keeps_the_first_generation() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("foreign-s3");
    let s3 = S3Server::start(&env.root.join("s3"));
    let replica = s3.replica_yaml(SECRET_KEY, "100ms");
    second_db_warns_and_keeps_the_first_generation(&env, &replica, &s3.replica_dir());
}

#[test]
fn s3_a_restored_db_replicating_back_is_quiet() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("foreign-s3-restored");
    let s3 = S3Server::start(&env.root.join("s3"));
    let replica = s3.replica_yaml(SECRET_KEY, "100ms");
    restored_db_is_the_same_db(&env, &replica, &s3.replica_dir());
}
