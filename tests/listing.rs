//! The listing commands (`databases`, `generations`, `snapshots`, `wal`) on a replica with two
//! generations, in config mode and URL mode, with their filters.

mod common;

use std::time::Duration;

use common::*;

fn insert(app: &rusqlite::Connection, from: i64, to: i64) {
    tx(app, |c| {
        for id in from..=to {
            insert_row(c, id, 5000);
        }
    });
}

/// Lines of a table after its header, split on runs of spaces.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn listing_commands_on_two_generations() {
    let env = Env::new("listing");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);

    let mut d = env.start("daemon-1");
    assert!(wait_until(DEADLINE, || {
        d.assert_alive();
        !generations(&env.replica).is_empty()
    }));
    insert(&app, 1, 10);
    env.wait_restore(DEADLINE, "10 rows", |p| id_summary(p).0 == 10);
    d.stop_ok();
    // A new generation: the app truncates the WAL while the daemon is down.
    insert(&app, 11, 20);
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    insert(&app, 21, 30);
    std::thread::sleep(Duration::from_millis(1100));
    let mut d = env.start("daemon-2");
    d.wait_log("new generation", DEADLINE);
    env.wait_restore(DEADLINE, "30 rows", |p| id_summary(p).0 == 30);
    d.stop_ok();
    let gens = generations(&env.replica);
    assert_eq!(gens.len(), 2, "{gens:?}");
    let new_gen = local_generation(&env.db).unwrap();
    let old_gen = gens.iter().find(|g| **g != new_gen).unwrap().clone();
    let cfg = env.config.to_str().unwrap();
    let db = env.db.to_str().unwrap();
    let url = env.replica_url();

    let o = env.run(&["databases", "-config", cfg]);
    o.assert_ok("databases");
    let header: Vec<&str> = o
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["path", "replicas"]);
    assert_eq!(
        rows(&o.stdout),
        vec![vec![db.to_string(), "file".to_string()]]
    );

    for target in [vec!["-config", cfg, db], vec![url.as_str()]] {
        let mut args = vec!["generations"];
        args.extend(&target);
        let o = env.run(&args);
        o.assert_ok("generations");
        let header: Vec<&str> = o
            .stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(header, ["name", "generation", "lag", "start", "end"]);
        let r = rows(&o.stdout);
        assert_eq!(r.len(), 2, "{}", o.stdout);
        // Chronological: the old generation first.
        assert_eq!(
            (r[0][1].as_str(), r[1][1].as_str()),
            (old_gen.as_str(), new_gen.as_str())
        );
        for row in &r {
            assert_eq!(row[0], "file");
            assert!(row[2].ends_with('s'), "lag is a duration: {row:?}");
            assert!(
                row[3].ends_with('Z') && row[4].ends_with('Z') && row[3] <= row[4],
                "{row:?}"
            );
        }

        let mut args = vec!["snapshots"];
        args.extend(&target);
        let o = env.run(&args);
        o.assert_ok("snapshots");
        let header: Vec<&str> = o
            .stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["replica", "generation", "index", "size", "created"]
        );
        let r = rows(&o.stdout);
        assert_eq!(r.len(), 2, "one snapshot per generation: {}", o.stdout);
        assert_eq!(r[0][1], old_gen);
        assert!(r.iter().all(|row| row[3].parse::<u64>().unwrap() > 0));

        let mut args = vec!["wal", "-generation", &new_gen];
        args.extend(&target);
        let o = env.run(&args);
        o.assert_ok("wal -generation");
        let header: Vec<&str> = o
            .stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "replica",
                "generation",
                "index",
                "offset",
                "size",
                "created"
            ]
        );
        let r = rows(&o.stdout);
        assert!(!r.is_empty());
        assert!(r.iter().all(|row| row[1] == new_gen), "{}", o.stdout);
        assert_eq!(r.len(), wal_segments(&env.replica, &new_gen).len());
    }

    // All WAL segments without the filter; -replica filters.
    let o = env.run(&["wal", "-config", cfg, db]);
    let total: usize = gens
        .iter()
        .map(|g| wal_segments(&env.replica, g).len())
        .sum();
    assert_eq!(rows(&o.stdout).len(), total);
    let o = env.run(&["snapshots", "-replica", "file", "-config", cfg, db]);
    o.assert_ok("snapshots -replica file");
    assert_eq!(rows(&o.stdout).len(), 2);
    let o = env.run(&["snapshots", "-replica", "nope", "-config", cfg, db]);
    o.assert_fails("snapshots -replica nope");
    assert!(o.stderr.contains("replica not found: nope"), "{}", o.stderr);

    // A db that is not in the config.
    let missing = env.root.join("missing.db");
    for cmd in ["generations", "snapshots", "wal"] {
        let o = env.run(&[cmd, "-config", cfg, missing.to_str().unwrap()]);
        o.assert_fails(cmd);
        assert_eq!(
            o.stderr.trim(),
            format!("database not found in config: {}", missing.display())
        );
    }
}
