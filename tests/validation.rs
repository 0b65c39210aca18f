//! Validation (SPEC §5.5): only `ok` under continuous writes and checkpoints; a corrupted
//! replica is reported while the daemon keeps replicating.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn validation_is_ok_under_load_and_catches_a_corrupt_segment() {
    let env = Env::new("validation");
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 20\n    replicas:\n      - type: file\n        path: \"{}\"\n        sync-interval: 100ms\n        validation-interval: 1s\n",
        env.db.display(),
        env.replica.display()
    );
    fs::write(&env.config, y).unwrap();
    drop(create_app_db(&env.db, 4096));
    let writer = Writer::start(&env.db, 1, Duration::from_millis(5));
    let mut d = env.start("daemon");

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        d.assert_alive();
    }
    let log = d.log_text();
    let ok = log.matches("msg=\"validation ok\"").count();
    let failed = log.matches("msg=\"validation failed\"").count();
    println!("10 s of writes and checkpoints: {ok} validations ok, {failed} failed");
    assert!(ok >= 4, "too few validations ran: {ok}\n{log}");
    assert_eq!(failed, 0, "false alarm under load:\n{log}");

    // Corrupt the first segment of the generation: every restore replays it.
    let gen = generations(&env.replica)[0].clone();
    let (_, _, first) = wal_segments(&env.replica, &gen)[0].clone();
    fs::write(&first, b"not gzip: corrupted by the test").unwrap();
    let segments_before = wal_segments(&env.replica, &gen).len();
    let line = d.wait_log("msg=\"validation failed\"", Duration::from_secs(20));
    let line = line
        .lines()
        .find(|l| l.contains("msg=\"validation failed\""))
        .unwrap()
        .to_string();
    println!("after corruption: {line}");
    assert!(line.contains("failed_total=1"), "{line}");
    // The daemon keeps replicating.
    let ok = wait_until(Duration::from_secs(10), || {
        d.assert_alive();
        wal_segments(&env.replica, &gen).len() > segments_before + 3
    });
    assert!(ok, "replication stopped after the failed validation");
    writer.finish();
    d.stop_ok();
    assert!(
        !fs::read_dir(meta_dir(&env.db))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("validation")),
        "validation scratch files left behind"
    );
}
