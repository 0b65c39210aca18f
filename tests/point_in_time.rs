//! Point-in-time restores: `-timestamp T` and `-generation G -index I`.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use rusqlite::Connection;

fn insert_ids(app: &Connection, from: i64, to: i64, len: usize) {
    let mut id = from;
    while id <= to {
        let end = (id + 4).min(to);
        tx(app, |c| {
            for i in id..=end {
                insert_row(c, i, len);
            }
        });
        id = end + 1;
    }
}

#[test]
fn restore_to_timestamp_between_two_batches() {
    let env = Env::new("pitr-ts");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);

    // Batch A, fully replicated.
    insert_ids(&app, 1, 40, 5000);
    env.wait_restore(DEADLINE, "batch A replicated", |p| {
        id_summary(p) == (40, 1, 40)
    });
    std::thread::sleep(Duration::from_millis(1100));
    let t = rfc3339_micros(SystemTime::now());
    std::thread::sleep(Duration::from_millis(1100));

    // Batch B after T.
    insert_ids(&app, 41, 80, 5000);
    app.execute("UPDATE t SET n = 1 WHERE id <= 10", [])
        .unwrap();
    env.wait_restore(DEADLINE, "batch B replicated", |p| {
        id_summary(p) == (80, 1, 80)
    });
    let src = digest_conn(&app, "t");
    d.stop_ok();

    eprintln!("restoring to T = {t}");
    let at_t = env.restore_url(&["-timestamp", &t]);
    assert_integrity_ok(&at_t);
    assert_eq!(
        id_summary(&at_t),
        (40, 1, 40),
        "restore at T must hold batch A and not batch B"
    );
    let updated: i64 = open_existing(&at_t)
        .query_row("SELECT count(*) FROM t WHERE n <> 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(updated, 0, "restore at T holds the update made after T");
    assert_blobs_match_hash(&at_t);

    let latest = env.restore_url(&[]);
    assert_integrity_ok(&latest);
    assert_eq!(id_summary(&latest), (80, 1, 80));
    assert_eq!(table_digest(&latest, "t"), src);

    // A timestamp before any backup existed matches nothing.
    let (o, out) = env.try_restore_url(&["-timestamp", "2001-01-01T00:00:00Z"]);
    o.assert_fails("restore -timestamp before the first backup");
    assert!(
        o.stderr.contains("no matching backups found"),
        "stderr: {}",
        o.stderr
    );
    assert!(!out.exists());
}

#[test]
fn restore_to_intermediate_index() {
    let env = Env::new("pitr-index");
    // A small min-checkpoint-page-count makes the daemon checkpoint after each batch, so the
    // next write restarts the WAL and starts a new index.
    env.write_config(&Cfg {
        min_checkpoint_page_count: 10,
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    let gen = generations(&env.replica)[0].clone();

    let max_index = |env: &Env| {
        wal_segments(&env.replica, &gen)
            .iter()
            .map(|s| s.0)
            .max()
            .unwrap_or(0)
    };
    let mut next = 1i64;
    for batch in 0..12 {
        // ~20 rows of 5 KB: well over 10 pages per batch.
        insert_ids(&app, next, next + 19, 5000);
        next += 20;
        let n = next - 1;
        env.wait_restore(DEADLINE, &format!("batch {batch} replicated"), |p| {
            id_summary(p) == (n, 1, n)
        });
        if max_index(&env) >= 4 {
            break;
        }
        // Give the daemon a tick to checkpoint before the next batch restarts the WAL.
        std::thread::sleep(Duration::from_millis(300));
    }
    let total = next - 1;
    let src = digest_conn(&app, "t");
    d.stop_ok();
    assert_eq!(generations(&env.replica), vec![gen.clone()]);

    let mut indexes: Vec<u32> = wal_segments(&env.replica, &gen)
        .iter()
        .map(|s| s.0)
        .collect();
    indexes.dedup();
    eprintln!("generation {gen}: WAL indexes {indexes:?}");
    assert!(
        indexes.len() >= 3,
        "expected the daemon's checkpoints to create several indexes, got {indexes:?}"
    );

    let full = env.restore_url(&[]);
    assert_eq!(id_summary(&full), (total, 1, total));
    assert_eq!(table_digest(&full, "t"), src);

    let mut prev = 0i64;
    let mut fewer = false;
    for &i in &indexes {
        let idx = format!("{i:08x}");
        let out = env.restore_url(&["-generation", &gen, "-index", &idx]);
        assert_integrity_ok(&out);
        let (count, min, max) = id_summary(&out);
        eprintln!("index {idx}: {count} rows");
        if count > 0 {
            assert_eq!(
                (min, max),
                (1, count),
                "index {idx}: not a contiguous prefix"
            );
        }
        assert!(
            count >= prev,
            "index {idx}: {count} rows, fewer than at a lower index ({prev})"
        );
        assert!(count <= total);
        fewer |= count < total;
        prev = count;
    }
    assert_eq!(
        prev, total,
        "restore at the last index must equal the full restore"
    );
    assert!(
        fewer,
        "no intermediate index restored fewer rows than the full restore"
    );

    // -index needs -generation; -index and -timestamp are exclusive.
    let (o, out) = env.try_restore_url(&["-index", "00000001"]);
    o.assert_fails("restore -index without -generation");
    assert!(!out.exists());
    let (o, out) = env.try_restore_url(&[
        "-generation",
        &gen,
        "-index",
        "00000001",
        "-timestamp",
        "2030-01-01T00:00:00Z",
    ]);
    o.assert_fails("restore -index with -timestamp");
    assert!(!out.exists());
}
