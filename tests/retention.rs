//! Scheduled snapshots and retention (SPEC §5.3, §5.4) on a file replica.

mod common;

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use common::*;

fn write_cfg(env: &Env, replica_extra: &str) {
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 20\n    replicas:\n      - type: file\n        path: \"{}\"\n        sync-interval: 100ms\n{replica_extra}",
        env.db.display(),
        env.replica.display()
    );
    fs::write(&env.config, y).unwrap();
}

/// (index, mtime) of every snapshot in every generation.
fn snapshots(env: &Env) -> Vec<(String, u32, SystemTime)> {
    let mut out = Vec::new();
    for g in generations(&env.replica) {
        for i in snapshot_indexes(&env.replica, &g) {
            let p = env
                .replica
                .join("generations")
                .join(&g)
                .join("snapshots")
                .join(format!("{i:08x}.snapshot.gz"));
            if let Ok(m) = fs::metadata(&p) {
                out.push((g.clone(), i, m.modified().unwrap()));
            }
        }
    }
    out
}

#[test]
fn retention_keeps_the_replica_bounded() {
    let env = Env::new("retention");
    write_cfg(
        &env,
        "        retention: 2s\n        retention-check-interval: 1s\n        snapshot-interval: 1s\n",
    );
    drop(create_app_db(&env.db, 4096));
    let writer = Writer::start(&env.db, 1, Duration::from_millis(5));
    let mut d = env.start("daemon");
    let start = Instant::now();
    let mut max_snapshots = 0;
    let mut max_generations = 0;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        d.assert_alive();
        let snaps = snapshots(&env).len();
        let gens = generations(&env.replica).len();
        let segs: usize = generations(&env.replica)
            .iter()
            .map(|g| wal_segments(&env.replica, g).len())
            .sum();
        println!(
            "t={:>4.1}s snapshots={snaps} generations={gens} wal segments={segs}",
            start.elapsed().as_secs_f64()
        );
        max_snapshots = max_snapshots.max(snaps);
        max_generations = max_generations.max(gens);
    }
    let n = writer.finish() as i64;
    let stopped = d.stop_ok();
    assert!(
        stopped.log.contains("snapshots deleted") && stopped.log.contains("wal segments deleted"),
        "retention deleted nothing; log:\n{}",
        stopped.log
    );
    assert!(max_generations <= 1, "generations grew: {max_generations}");
    // 1 snapshot a second kept for 2 s, checked every second: a handful at most, never the
    // 10+ that 10 s of scheduled snapshots would leave without retention.
    assert!(max_snapshots <= 6, "snapshots grew to {max_snapshots}");
    assert!(
        stopped.log.matches("snapshot written").count() >= 5,
        "scheduled snapshots were not taken"
    );

    // Nothing below the oldest kept snapshot remains.
    for g in generations(&env.replica) {
        let lowest = *snapshot_indexes(&env.replica, &g).iter().min().unwrap();
        for (idx, off, _) in wal_segments(&env.replica, &g) {
            assert!(
                idx >= lowest,
                "segment {idx:08x}_{off:08x} is below snapshot {lowest:08x}"
            );
        }
    }
    assert_replica_tree_valid_from_snapshot(&env);
    let out = env.restore_url(&[]);
    assert_integrity_ok(&out);
    assert_eq!(id_summary(&out), (n, 1, n));
    assert_eq!(table_digest(&out, "t"), table_digest(&env.db, "t"));
}

/// After retention the tree starts at a snapshot, not at index 0; the restore above proves it
/// is usable, this checks each generation's indexes are contiguous from its oldest snapshot.
fn assert_replica_tree_valid_from_snapshot(env: &Env) {
    for g in generations(&env.replica) {
        let lowest = *snapshot_indexes(&env.replica, &g).iter().min().unwrap();
        let mut idx: Vec<u32> = wal_segments(&env.replica, &g).iter().map(|s| s.0).collect();
        idx.dedup();
        for (k, i) in idx.iter().enumerate() {
            assert_eq!(*i, lowest + k as u32, "index gap in {g}: {idx:?}");
        }
    }
}

#[test]
fn snapshot_schedule_survives_a_restart() {
    let env = Env::new("snapshot-schedule");
    write_cfg(&env, "        snapshot-interval: 5s\n");
    drop(create_app_db(&env.db, 4096));
    let writer = Writer::start(&env.db, 1, Duration::from_millis(5));
    let mut d = env.start("daemon-1");

    // Wait for a scheduled snapshot (the second one), then stop 3 s after it.
    let ok = wait_until(Duration::from_secs(30), || {
        d.assert_alive();
        snapshots(&env).len() >= 2
    });
    assert!(ok, "no scheduled snapshot within 30 s");
    let (_, _, last) = snapshots(&env).into_iter().max_by_key(|s| s.2).unwrap();
    let since = SystemTime::now().duration_since(last).unwrap_or_default();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(since));
    d.stop_ok();
    let restarted = SystemTime::now();
    let mut d = env.start("daemon-2");
    let before = snapshots(&env).len();
    let ok = wait_until(Duration::from_secs(20), || {
        d.assert_alive();
        snapshots(&env).len() > before
    });
    assert!(ok, "no snapshot after the restart");
    let (_, _, next) = snapshots(&env).into_iter().max_by_key(|s| s.2).unwrap();
    let after_restart = next.duration_since(restarted).unwrap_or_default();
    let after_last = next.duration_since(last).unwrap_or_default();
    println!(
        "last snapshot, restart {:.1}s later, next snapshot {:.1}s after the restart ({:.1}s after the last)",
        restarted.duration_since(last).unwrap_or_default().as_secs_f64(),
        after_restart.as_secs_f64(),
        after_last.as_secs_f64()
    );
    // Aligned to the last snapshot's age: about 2 s after the restart, not 5 s.
    assert!(
        after_restart < Duration::from_millis(4000),
        "the schedule restarted from zero: next snapshot {after_restart:?} after the restart"
    );
    assert!(
        after_last >= Duration::from_millis(4500),
        "snapshot taken too early: {after_last:?} after the previous one"
    );
    let n = writer.finish() as i64;
    d.stop_ok();
    let out = env.restore_url(&[]);
    assert_eq!(id_summary(&out), (n, 1, n));
}
