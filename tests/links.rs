//! Planted links never redirect a write (issue #22, items 1–3): every file the daemon or a
//! restore creates is created only if new and never through a symlink, so someone who can
//! write into the meta dir, a file replica or the output directory cannot make us overwrite
//! (or chmod) a file they could not write themselves. Each test plants links at the names we
//! are about to create, points them at a "victim" file, and checks the victim is untouched
//! while the replica still restores to the committed rows.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const VICTIM: &[u8] = b"root-only secrets\n";

/// A file that must never change: its content and mode are checked at the end.
fn victim(env: &Env) -> PathBuf {
    let p = env.root.join("victim");
    fs::write(&p, VICTIM).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn assert_untouched(victim: &Path) {
    assert_eq!(
        fs::read(victim).unwrap(),
        VICTIM,
        "{} was written through a planted link",
        victim.display()
    );
    let mode = fs::metadata(victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o600,
        "{} was chmod'ed through a planted link",
        victim.display()
    );
}

/// Stops the daemon; the replica restores to the db's rows, and passes the integrity check.
fn stop_and_restore_the_same_rows(env: &Env, d: Daemon) {
    let digest = table_digest(&env.db, "t");
    d.stop_ok();
    let out = env.restore_url(&[]);
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), digest);
}

/// The current shadow index of the db (highest `<index>.wal` in its generation).
fn shadow_index(db: &Path) -> Option<(String, u32)> {
    let generation = local_generation(db)?;
    let dir = meta_dir(db)
        .join("generations")
        .join(&generation)
        .join("wal");
    let max = fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            u32::from_str_radix(n.strip_suffix(".wal")?, 16).ok()
        })
        .max()?;
    Some((generation, max))
}

#[test]
fn links_planted_at_the_next_shadow_indexes_are_never_written_through() {
    let env = Env::new("link-shadow");
    let victim = victim(&env);
    env.write_config(&Cfg {
        min_checkpoint_page_count: 20,
        extra_db: "    max-checkpoint-page-count: 40\n".into(),
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    let (generation, index) = shadow_index(&env.db).expect("a shadow index");
    let wal_dir = meta_dir(&env.db)
        .join("generations")
        .join(&generation)
        .join("wal");
    // What the db's owner (who owns the meta dir) could plant: the next few indexes.
    for next in index + 1..index + 4 {
        symlink(&victim, wal_dir.join(format!("{next:08x}.wal"))).unwrap();
    }
    // Enough frames for a RESTART checkpoint, and so a new shadow index, several times over.
    let mut id = 0;
    let moved_on = wait_until(DEADLINE, || {
        d.assert_alive();
        tx(&app, |c| {
            for _ in 0..20 {
                id += 1;
                insert_row(c, id, 3000);
            }
        });
        shadow_index(&env.db).is_some_and(|(g, i)| g != generation || i >= index + 2)
    });
    assert!(moved_on, "the shadow never moved past index {index:08x}");
    assert_untouched(&victim);
    stop_and_restore_the_same_rows(&env, d);
}

#[test]
fn a_link_planted_at_a_file_replicas_temp_name_is_never_written_through() {
    let env = Env::new("link-replica-tmp");
    let victim = victim(&env);
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    tx(&app, |c| insert_row(c, 1, 100));
    // Once the replica has caught up, its next segment starts where the shadow ends.
    let (generation, index) = shadow_index(&env.db).expect("a shadow index");
    let shadow = meta_dir(&env.db)
        .join("generations")
        .join(&generation)
        .join("wal")
        .join(format!("{index:08x}.wal"));
    let wal_dir = env
        .replica
        .join("generations")
        .join(&generation)
        .join("wal");
    let caught_up = wait_until(DEADLINE, || {
        let end = fs::metadata(&shadow).map_or(0, |m| m.len());
        fs::read_dir(&wal_dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&format!("{index:08x}_")) && n.ends_with(".wal.gz") && {
                    let off = &n[9..17];
                    u64::from_str_radix(off, 16).is_ok_and(|o| o < end)
                }
            })
        }) && fs::metadata(&shadow).map_or(0, |m| m.len()) == end
    });
    assert!(caught_up, "the replica never held a segment of {index:08x}");
    std::thread::sleep(Duration::from_millis(500));
    let end = fs::metadata(&shadow).unwrap().len();
    let tmp = wal_dir.join(format!("{index:08x}_{end:08x}.wal.gz.tmp"));
    symlink(&victim, &tmp).unwrap();
    tx(&app, |c| insert_row(c, 2, 100));
    let uploaded = wait_until(DEADLINE, || {
        d.assert_alive();
        wal_dir
            .join(format!("{index:08x}_{end:08x}.wal.gz"))
            .exists()
    });
    assert!(
        uploaded,
        "segment {index:08x}_{end:08x} never appeared; tree: {:?}",
        list_tree(&env.replica)
    );
    assert_untouched(&victim);
    stop_and_restore_the_same_rows(&env, d);
}

#[test]
fn a_link_raced_in_at_restores_temp_name_is_never_written_through() {
    let env = Env::new("link-restore-tmp");
    let digest = make_replica(&env);
    let victim = victim(&env);
    // A planter that keeps a link at every temp name a restore to `out` could use, as fast as
    // it can: before the fix it won the race between restore's remove and its open.
    for round in 0..6 {
        let out = env.root.join(format!("restored-{round}.db"));
        let stop = Arc::new(AtomicBool::new(false));
        let planter = {
            let (stop, victim, dir) = (stop.clone(), victim.clone(), env.root.clone());
            let name = format!("restored-{round}.db");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = symlink(&victim, dir.join(format!("{name}.tmp")));
                    std::thread::yield_now();
                }
            })
        };
        let o = env.run(&["restore", "-o", out.to_str().unwrap(), &env.replica_url()]);
        stop.store(true, Ordering::Relaxed);
        planter.join().unwrap();
        assert_untouched(&victim);
        if o.code == Some(0) {
            let md = fs::symlink_metadata(&out).unwrap();
            assert!(
                md.is_file(),
                "round {round}: {} is not a regular file",
                out.display()
            );
            assert_integrity_ok(&out);
            assert_eq!(table_digest(&out, "t"), digest);
        }
    }
}
