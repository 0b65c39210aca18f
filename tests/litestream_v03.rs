//! Drop-in for Litestream v0.3: restore and list a replica written by Litestream v0.3.13
//! (`testdata/litestream-v0.3.13`, LZ4 objects), write LZ4 replicas the `lz4` tool reads, switch
//! compression mid-generation, and resume from what a previous process left.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use sha2::{Digest as _, Sha256};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/litestream-v0.3.13/replica")
}

/// (rows, sum(length(b)), max(id), content sha256) as the fixture's README defines them.
fn fixture_summary(db: &Path) -> (i64, i64, i64, String) {
    let c = open_existing(db);
    let (rows, sum, max): (i64, i64, i64) = c
        .query_row("SELECT count(*), sum(length(b)), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let mut h = Sha256::new();
    let mut st = c.prepare("SELECT id, v, b FROM t ORDER BY id").unwrap();
    let mut q = st.query([]).unwrap();
    while let Some(r) = q.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let v: Option<String> = r.get(1).unwrap();
        let b: Option<Vec<u8>> = r.get(2).unwrap();
        let hex: String = b
            .unwrap_or_default()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        h.update(format!("{id}|{}|{hex}\n", v.unwrap_or_default()).as_bytes());
    }
    let digest: String = h.finalize().iter().map(|x| format!("{x:02x}")).collect();
    (rows, sum, max, digest)
}

#[test]
fn restores_a_litestream_v0313_replica_exactly() {
    let env = Env::new("v03-restore");
    let url = format!("file://{}", fixture().display());
    type Expected = (i64, i64, i64, &'static str);
    let cases: [(&[&str], Expected); 3] = [
        (
            &["-generation", "a305c87e3c0c1778"],
            (
                481,
                1476280,
                597,
                "23a7fad043964b84b9d7228dbb5592cbcd26cb76f6b2cb2b416cd3954f921731",
            ),
        ),
        (
            &["-generation", "874e8681734bd395", "-index", "2"],
            (
                205,
                644700,
                235,
                "d6478c94e75d2f6a75cdf0d8dd9994bf705e89612f7f462612d56cf51b15208b",
            ),
        ),
        (
            &["-generation", "874e8681734bd395"],
            (
                253,
                768740,
                300,
                "6ba2bb02de1df6aca900ed72a0ad339704fc759e508453e20528f53601335698",
            ),
        ),
    ];
    for (flags, (rows, sum, max, sha)) in cases {
        let out = env.fresh("v03");
        let mut args = vec!["restore", "-o", out.to_str().unwrap()];
        args.extend_from_slice(flags);
        args.push(&url);
        env.run(&args).assert_ok(&format!("restore {flags:?}"));
        assert_integrity_ok(&out);
        let got = fixture_summary(&out);
        println!("restore {flags:?}: {got:?}");
        assert_eq!(got, (rows, sum, max, sha.to_string()), "restore {flags:?}");
    }
}

/// Issue 27: an age-encrypted replica written by v0.3.13 itself (`testdata/litestream-v0.3.13-age`,
/// with its test-only identity) restores exactly with the identity in the config, in every run
/// (the live interop tests need the v0.3.13 binary and SKIP without it); without the identity
/// the restore is refused, saying the replica is encrypted, and nothing is written.
#[test]
fn restores_a_litestream_v0313_encrypted_replica_exactly() {
    let env = Env::new("v03-age-restore");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/litestream-v0.3.13-age");
    let identity = std::fs::read_to_string(dir.join("test-identity.txt")).unwrap();
    let config = |age: &str| {
        let path = env.root.join("litestream.yml");
        std::fs::write(
            &path,
            format!(
                "dbs:\n  - path: \"{}\"\n    replicas:\n      - type: file\n        path: \"{}\"\n{age}",
                env.db.display(),
                dir.join("replica").display()
            ),
        )
        .unwrap();
        path
    };
    let restore = |cfg: &Path| {
        let out = env.fresh("v03-age");
        let o = env.run(&[
            "restore",
            "-config",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            env.db.to_str().unwrap(),
        ]);
        (o, out)
    };

    let cfg = config(&format!(
        "        age:\n          identities:\n            - \"{}\"\n",
        identity.trim()
    ));
    let (o, out) = restore(&cfg);
    o.assert_ok("restore of the encrypted v0.3.13 replica");
    assert_integrity_ok(&out);
    assert_eq!(
        fixture_summary(&out),
        (
            300,
            32624,
            300,
            "73cb79e0a9564a58991266a0c38ef0d2bf0eb809763d3c68cc797554981373fb".to_string()
        )
    );
    assert!(!o.stderr.contains(identity.trim()), "{}", o.stderr);

    let cfg = config("");
    let (o, out) = restore(&cfg);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("encrypted with age"), "{}", o.stderr);
    assert!(!out.exists(), "a refused restore wrote {}", out.display());
}

#[test]
fn lists_a_litestream_v0313_replica() {
    let env = Env::new("v03-list");
    let url = format!("file://{}", fixture().display());
    let o = env.run(&["generations", &url]);
    o.assert_ok("generations");
    let gens: Vec<&str> = o
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    let mut sorted = gens.clone();
    sorted.sort();
    assert_eq!(sorted, ["874e8681734bd395", "a305c87e3c0c1778"]);

    let o = env.run(&["snapshots", &url]);
    o.assert_ok("snapshots");
    let snaps: Vec<Vec<&str>> = o
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(snaps.len(), 2, "{}", o.stdout);
    for s in &snaps {
        let p = fixture()
            .join("generations")
            .join(s[1])
            .join("snapshots")
            .join(format!("{:08x}.snapshot.lz4", s[2].parse::<u32>().unwrap()));
        assert_eq!(
            s[3].parse::<u64>().unwrap(),
            fs::metadata(&p).unwrap().len()
        );
    }

    let o = env.run(&["wal", &url]);
    o.assert_ok("wal");
    let segs: Vec<Vec<&str>> = o
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Every WAL object of the fixture (14 files: 7 per generation; the issue text says 15,
    // but the fixture as shipped holds 14).
    let on_disk = list_tree(&fixture())
        .keys()
        .filter(|k| k.ends_with(".wal.lz4"))
        .count();
    assert_eq!(on_disk, 14);
    assert_eq!(segs.len(), on_disk, "{}", o.stdout);
    for s in &segs {
        let p = fixture()
            .join("generations")
            .join(s[1])
            .join("wal")
            .join(format!(
                "{:08x}_{:08x}.wal.lz4",
                s[2].parse::<u32>().unwrap(),
                s[3].parse::<u64>().unwrap()
            ));
        assert_eq!(
            s[4].parse::<u64>().unwrap(),
            fs::metadata(&p).unwrap().len(),
            "compressed size of {}",
            p.display()
        );
    }
}

fn write_cfg(env: &Env, compression: &str) {
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 50\n    replicas:\n      - type: file\n        path: \"{}\"\n        sync-interval: 100ms\n        compression: {compression}\n",
        env.db.display(),
        env.replica.display()
    );
    fs::write(&env.config, y).unwrap();
}

fn lz4_available() -> bool {
    let ok = Command::new("lz4").arg("-V").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "lz4 CLI missing under CI; run scripts/install-test-prereqs.sh"
        );
        eprintln!("SKIP: lz4 CLI not installed");
    }
    ok
}

#[test]
fn lz4_round_trip_readable_by_the_lz4_tool() {
    let env = Env::new("lz4-round-trip");
    write_cfg(&env, "lz4");
    drop(create_app_db(&env.db, 4096));
    let writer = Writer::start(&env.db, 1, Duration::from_millis(5));
    let mut d = env.start("daemon");
    std::thread::sleep(Duration::from_secs(3));
    d.assert_alive();
    let n = writer.finish() as i64;
    d.stop_ok();

    let mut tree = list_tree(&env.replica);
    // The generation's marker (`generations/<gen>/db-id`) is not compressed.
    tree.retain(|k, _| !k.ends_with("/db-id"));
    assert!(!tree.is_empty());
    assert!(
        tree.keys().all(|k| k.ends_with(".lz4")),
        "non-lz4 objects: {tree:?}"
    );
    let out = env.restore_url(&[]);
    assert_integrity_ok(&out);
    assert_eq!(id_summary(&out), (n, 1, n));
    assert_eq!(table_digest(&out, "t"), table_digest(&env.db, "t"));

    if !lz4_available() {
        return;
    }
    // Every object decompresses with the reference tool to raw WAL or db bytes.
    for rel in tree.keys() {
        let p = env.replica.join(rel);
        let o = Command::new("lz4")
            .args(["-d", "-c"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "lz4 -d {rel}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if rel.contains("/snapshots/") {
            assert_eq!(&o.stdout[..16], b"SQLite format 3\0", "{rel}");
        } else if rel.contains("_00000000.wal.") {
            assert_eq!(
                &o.stdout[..4],
                &[0x37, 0x7f, 0x06, 0x82],
                "{rel}: WAL magic"
            );
        } else {
            assert_eq!(o.stdout.len() % (24 + 4096), 0, "{rel}: whole frames");
        }
    }
}

#[test]
fn gzip_to_lz4_switch_mid_generation_then_take_over() {
    let env = Env::new("gz-to-lz4");
    write_cfg(&env, "gzip");
    let app = create_app_db(&env.db, 4096);
    let d = env.start("daemon-gz");
    let insert = |from: i64, to: i64| {
        tx(&app, |c| {
            for id in from..=to {
                insert_row(c, id, 3000);
            }
        })
    };
    insert(1, 20);
    env.wait_restore(DEADLINE, "20 rows (gzip)", |p| id_summary(p).0 == 20);
    d.stop_ok();

    // Same generation, now LZ4.
    write_cfg(&env, "lz4");
    let d = env.start("daemon-lz4");
    insert(21, 40);
    env.wait_restore(DEADLINE, "40 rows (gzip + lz4)", |p| id_summary(p).0 == 40);
    let log = d.log_text();
    assert!(
        !log.contains("new generation"),
        "switching compression started a generation:\n{log}"
    );
    d.stop_ok();
    let tree = list_tree(&env.replica);
    assert!(tree.keys().any(|k| k.ends_with(".gz")) && tree.keys().any(|k| k.ends_with(".lz4")));
    assert_eq!(generations(&env.replica).len(), 1);

    // Take-over: a fresh process on what the last one left resumes without a new generation
    // or snapshot (listings before and after compare equal, apart from new WAL segments).
    let before = env.run(&[
        "snapshots",
        "-config",
        env.config.to_str().unwrap(),
        env.db.to_str().unwrap(),
    ]);
    let gens_before = env.run(&[
        "generations",
        "-config",
        env.config.to_str().unwrap(),
        env.db.to_str().unwrap(),
    ]);
    let d = env.start("daemon-take-over");
    insert(41, 60);
    env.wait_restore(DEADLINE, "60 rows after the take-over", |p| {
        id_summary(p).0 == 60
    });
    d.stop_ok();
    let after = env.run(&[
        "snapshots",
        "-config",
        env.config.to_str().unwrap(),
        env.db.to_str().unwrap(),
    ]);
    assert_eq!(
        before.stdout, after.stdout,
        "the take-over took a new snapshot"
    );
    let gens_after = env.run(&[
        "generations",
        "-config",
        env.config.to_str().unwrap(),
        env.db.to_str().unwrap(),
    ]);
    let ids = |s: &str| -> Vec<String> {
        s.lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&gens_before.stdout), ids(&gens_after.stdout));

    let out = env.restore_url(&[]);
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), digest_conn(&app, "t"));
    assert_eq!(id_summary(&out), (60, 1, 60));
}
