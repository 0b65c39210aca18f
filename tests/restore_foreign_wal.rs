//! A WAL index from another database planted in a generation (#21): each index's frames
//! check on their own, so only the header's step from the previous index (checkpoint
//! sequence and salt-1, each one more after a SQLite restart) shows it does not belong.
//! Restore must refuse, naming the generation and the index.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

/// A replica of `env.db` with at least 3 WAL indexes in one generation; returns it.
fn replica_with_indexes(env: &Env, seed: i64) -> String {
    env.write_config(&Cfg {
        min_checkpoint_page_count: 10,
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(env, &mut d);
    let gen = generations(&env.replica)[0].clone();
    let indexes = || {
        let mut v: Vec<u32> = wal_segments(&env.replica, &gen)
            .iter()
            .map(|s| s.0)
            .collect();
        v.dedup();
        v
    };
    let mut next = 1i64;
    for batch in 0..15 {
        for id in next..next + 20 {
            insert_row(&app, id * seed, 5000);
        }
        next += 20;
        let n = next - 1;
        env.wait_restore(DEADLINE, &format!("batch {batch} replicated"), |p| {
            id_summary(p).0 == n
        });
        if indexes().len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    d.stop_ok();
    assert!(indexes().len() >= 3, "{:?}", indexes());
    gen
}

#[test]
fn restore_refuses_a_wal_index_from_another_database() {
    let a = Env::new("foreign-wal-a");
    let b = Env::new("foreign-wal-b");
    let gen_a = replica_with_indexes(&a, 1);
    let gen_b = replica_with_indexes(&b, 7);
    // A good restore first: the generation as written restores.
    let out = a.restore_url(&[]);
    assert_integrity_ok(&out);

    // Index 1 of A replaced by index 1 of B, under A's names.
    let victim = 1u32;
    for (i, _, p) in wal_segments(&a.replica, &gen_a) {
        if i == victim {
            fs::remove_file(p).unwrap();
        }
    }
    let wal_a = a.replica.join("generations").join(&gen_a).join("wal");
    for (i, _, p) in wal_segments(&b.replica, &gen_b) {
        if i == victim {
            fs::copy(&p, wal_a.join(p.file_name().unwrap())).unwrap();
        }
    }
    let (o, out) = a.try_restore_url(&["-generation", &gen_a]);
    o.assert_fails("restore with a foreign WAL index");
    let line = one_line(&o, "foreign WAL index");
    assert!(line.contains(&gen_a), "{line}");
    assert!(line.contains("00000001"), "{line}");
    assert!(line.contains("does not follow"), "{line}");
    assert!(!out.exists());
}
