//! One ~200 MB transaction is replicated and restored in bounded memory: the daemon's and the
//! restore's peak RSS (VmHWM) both stay under 32 MiB, in the clear and with age encryption
//! (which streams too: one 64 KiB chunk per object in flight).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::params;

const ROWS: i64 = 50;
const BLOB: usize = 4 * 1024 * 1024;
const LIMIT_KB: u64 = 32 * 1024;

#[test]
fn huge_transaction_replicates_and_restores_in_bounded_memory() {
    huge_transaction(false);
}

#[test]
fn huge_encrypted_transaction_replicates_and_restores_in_bounded_memory() {
    huge_transaction(true);
}

/// The test's config; with `age`, the replica encrypts to a fresh key pair and the restore
/// (through the same config) decrypts with it.
fn write_config(env: &Env, age: bool) {
    env.write_config(&Cfg::default());
    if age {
        #[allow(deprecated)] // X25519, the key type Litestream v0.3.13 uses
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let mut text = fs::read_to_string(&env.config).unwrap();
        text.push_str(&format!(
            "        age:\n          recipients: [{}]\n          identities: [\"{}\"]\n",
            id.to_public(),
            id.to_string().expose_secret()
        ));
        fs::write(&env.config, text).unwrap();
    }
}

fn huge_transaction(age: bool) {
    let t0 = Instant::now();
    let env = Env::new(if age { "memory-age" } else { "memory" });
    write_config(&env, age);
    let app = create_app_db(&env.db, 4096);
    app.execute_batch("CREATE TABLE big (id INTEGER PRIMARY KEY, len INTEGER NOT NULL, h INTEGER NOT NULL, b BLOB NOT NULL);")
        .unwrap();

    let mut d = env.start("daemon");
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        generations(&env.replica)
            .iter()
            .any(|g| !snapshot_indexes(&env.replica, g).is_empty())
    });
    assert!(ok, "no snapshot within {DEADLINE:?}");
    d.sample_hwm();
    let idle_kb = d.peak_kb();

    // One transaction, 50 × 4 MiB of incompressible bytes.
    let mut expected = Vec::new();
    tx(&app, |c| {
        for id in 1..=ROWS {
            let b = Rng::new(1000 + id as u64).bytes(BLOB);
            let h = hash_bytes(&b) as i64;
            c.execute(
                "INSERT INTO big (id, len, h, b) VALUES (?1, ?2, ?3, ?4)",
                params![id, BLOB as i64, h, b],
            )
            .unwrap();
            expected.push((id, BLOB as i64, h));
        }
    });
    eprintln!(
        "[{:>5.1}s] committed {} MiB in one transaction",
        t0.elapsed().as_secs_f64(),
        (ROWS as usize * BLOB) >> 20
    );

    // Wait until the replica holds at least the data's size in WAL segments (random data does
    // not compress), sampling the daemon's peak meanwhile.
    let want = ROWS as u64 * BLOB as u64;
    let ok = wait_until(Duration::from_secs(90), || {
        d.assert_alive();
        d.sample_hwm();
        total_size(&env.replica, ".wal.gz") >= want
    });
    assert!(
        ok,
        "the replica did not receive {want} bytes of WAL within 90 s (has {})",
        total_size(&env.replica, ".wal.gz")
    );
    eprintln!("[{:>5.1}s] replicated", t0.elapsed().as_secs_f64());
    // A few more ticks: checkpoint after the big transaction.
    for _ in 0..20 {
        d.sample_hwm();
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = d.stop_ok();
    let daemon_kb = stopped.peak_kb;

    // Free the disk before restoring (we keep the expected rows in memory).
    drop(app);
    remove_db_files(&env.db);
    let _ = fs::remove_dir_all(meta_dir(&env.db));

    let out = env.root.join("restored-big.db");
    let t1 = Instant::now();
    let url = env.replica_url();
    let args: Vec<&str> = if age {
        let cfg = env.config.to_str().unwrap();
        let db = env.db.to_str().unwrap();
        vec!["restore", "-config", cfg, "-o", out.to_str().unwrap(), db]
    } else {
        vec!["restore", "-o", out.to_str().unwrap(), &url]
    };
    let o = run(&env.root, &args, Duration::from_secs(180));
    o.assert_ok("restore of the 200 MB transaction");
    let restore_kb = o.peak_kb;
    eprintln!(
        "[{:>5.1}s] restored in {:.1}s",
        t0.elapsed().as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );

    println!(
        "peak RSS (VmHWM): daemon {} KiB ({:.1} MiB; {} KiB when idle), restore {} KiB ({:.1} MiB); limit {} KiB",
        daemon_kb,
        daemon_kb as f64 / 1024.0,
        idle_kb,
        restore_kb,
        restore_kb as f64 / 1024.0,
        LIMIT_KB
    );
    eprintln!("daemon peak {daemon_kb} KiB, restore peak {restore_kb} KiB");

    // Data first: the restore equals the source.
    assert_integrity_ok(&out);
    let c = open_existing(&out);
    let mut st = c
        .prepare("SELECT id, length(b), h, b FROM big ORDER BY id")
        .unwrap();
    let mut rows = st.query([]).unwrap();
    let mut got = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let len: i64 = r.get(1).unwrap();
        let h: i64 = r.get(2).unwrap();
        let b = r.get_ref(3).unwrap().as_blob().unwrap();
        assert_eq!(
            hash_bytes(b) as i64,
            h,
            "row {id}: restored blob differs from the source"
        );
        got.push((id, len, h));
    }
    assert_eq!(got, expected, "restored rows differ from the source");
    eprintln!("[{:>5.1}s] verified", t0.elapsed().as_secs_f64());

    assert!(daemon_kb > 0 && restore_kb > 0, "could not read VmHWM");
    assert!(
        daemon_kb < LIMIT_KB,
        "daemon peak RSS {daemon_kb} KiB exceeds {LIMIT_KB} KiB"
    );
    assert!(
        restore_kb < LIMIT_KB,
        "restore peak RSS {restore_kb} KiB exceeds {LIMIT_KB} KiB"
    );
}
