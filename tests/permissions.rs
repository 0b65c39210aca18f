//! File modes and a full disk. The shadow directory, its files and a file replica's files
//! get the db file's mode (a 0600 db never yields a world-readable copy). When the shadow's
//! file system fills up, the daemon logs a clear error, the application keeps committing,
//! nothing is corrupted, and replication resumes once there is room again.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `(relative path, mode & 0o777, is_dir)` of everything under `root`.
fn modes(root: &Path) -> Vec<(String, u32, bool)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u32, bool)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.push((rel, md.permissions().mode() & 0o777, md.is_dir()));
            if md.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = vec![(
        ".".to_string(),
        fs::metadata(root).unwrap().permissions().mode() & 0o777,
        true,
    )];
    walk(root, root, &mut out);
    out
}

fn assert_modes(root: &Path, file_mode: u32, dir_mode: u32, what: &str) {
    let all = modes(root);
    assert!(
        all.len() > 3,
        "{what}: {} holds too little: {all:?}",
        root.display()
    );
    for (rel, mode, is_dir) in &all {
        let want = if *is_dir { dir_mode } else { file_mode };
        assert_eq!(
            *mode, want,
            "{what}: {rel} has mode {mode:o}, want {want:o}"
        );
    }
    println!(
        "{what}: {} entries, files {file_mode:o}, dirs {dir_mode:o}",
        all.len()
    );
}

#[test]
fn shadow_and_file_replica_take_the_db_file_mode() {
    for (db_mode, dir_mode) in [(0o600, 0o700), (0o640, 0o750)] {
        let env = Env::new("modes");
        // A permissive umask must not widen anything either.
        let app = create_app_db(&env.db, 4096);
        fs::set_permissions(&env.db, fs::Permissions::from_mode(db_mode)).unwrap();
        fs::set_permissions(&env.root, fs::Permissions::from_mode(0o755)).unwrap();
        env.write_config(&Cfg::default());
        let mut d = env.start("daemon");
        tx(&app, |c| {
            for id in 1..=50 {
                insert_row(c, id, 2000);
            }
        });
        env.wait_restore(DEADLINE, "50 rows", |p| id_summary(p) == (50, 1, 50));
        d.assert_alive();
        d.stop_ok();
        assert_modes(&meta_dir(&env.db), db_mode, dir_mode, "shadow");
        assert_modes(&env.replica, db_mode, dir_mode, "file replica");
    }
}

/// Runs `cmd`; true when it exits 0.
fn sh(cmd: &mut Command) -> bool {
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

/// Unmounts on drop, whatever the test did.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_shadow_file_system_stalls_replication_not_the_app() {
    let env = Env::new("disk-full");
    let meta = env.root.join("meta");
    fs::create_dir_all(&meta).unwrap();
    let mounted = sh(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&meta));
    if !mounted {
        let reason = "cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)";
        assert!(
            std::env::var_os("LITESTREAM_REQUIRE_DISK_FULL_TEST").is_none(),
            "{reason}"
        );
        println!("SKIP a_full_shadow_file_system_stalls_replication_not_the_app: {reason}");
        eprintln!("SKIP a_full_shadow_file_system_stalls_replication_not_the_app: {reason}");
        return;
    }
    let _mount = Mount(meta.clone());
    env.write_config(&Cfg {
        extra_db: format!("    meta-path: \"{}\"\n", meta.display()),
        min_checkpoint_page_count: 200,
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    let mut next = 1i64;
    let mut write = |n: i64| {
        tx(&app, |c| {
            for _ in 0..n {
                insert_row(c, next, 3000);
                next += 1;
            }
        });
        next - 1
    };
    let last = write(20);
    env.wait_restore(DEADLINE, "first rows", |p| id_summary(p).0 == last);

    // Fill the shadow's file system, then keep the app writing well past what would fit.
    let filler = meta.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=64k", "status=none"])
        .status();
    let mut committed = last;
    for _ in 0..30 {
        committed = write(20);
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.wait_log("No space left on device", DEADLINE);
    let line = log
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap_or_default()
        .to_string();
    println!("while full: {line}");
    assert!(
        line.contains("level=ERROR") || line.contains("level=WARN"),
        "{line}"
    );
    d.assert_alive();
    // The app kept working: all its commits are there and the db is sound.
    {
        let c = open_existing(&env.db);
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, committed, "the application lost commits");
    }
    assert_integrity_ok(&env.db);

    // Room again: replication resumes without a restart and reaches the final state.
    fs::remove_file(&filler).unwrap();
    let last = write(20);
    let restored = env.wait_restore(Duration::from_secs(60), "catch-up after disk full", |p| {
        id_summary(p) == (last, 1, last)
    });
    assert_integrity_ok(&restored);
    assert_eq!(table_digest(&restored, "t"), digest_conn(&app, "t"));
    d.assert_alive();
    d.stop_ok();
    println!("after space returned: restored {last} rows, equal to the app's");
}
