//! Junk that desktops and NFS servers drop into directories (`.DS_Store`, `.nfs*`, `._*`)
//! does not make restore refuse a replica (#21): it is skipped, while a name we never write
//! still makes restore refuse.

mod common;

use std::fs;

use common::*;

#[test]
fn restore_ignores_desktop_and_nfs_junk_in_the_replica() {
    let env = Env::new("restore-junk");
    let src = make_replica(&env);
    let gens = env.replica.join("generations");
    let gen = generations(&env.replica)[0].clone();
    fs::write(gens.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    fs::write(
        gens.join(&gen).join("wal/.nfs000000000012345600000001"),
        b"x",
    )
    .unwrap();
    fs::write(
        gens.join(&gen).join("snapshots/._00000000.snapshot.gz"),
        b"x",
    )
    .unwrap();
    fs::write(gens.join(&gen).join("Thumbs.db"), b"x").unwrap();
    let out = env.restore_url(&[]);
    assert_eq!(table_digest(&out, "t"), src);
    assert_integrity_ok(&out);

    // A name of unknown origin is still refused.
    fs::write(gens.join(&gen).join("wal/notes.txt"), b"x").unwrap();
    let (o, out) = env.try_restore_url(&[]);
    o.assert_fails("restore with a foreign name");
    assert!(o.stderr.contains("notes.txt"), "{}", o.stderr);
    assert!(!out.exists());
}

/// The daemon keeps replicating into a replica that holds a name restore refuses, and says
/// so in its log, once per name.
#[test]
fn daemon_warns_of_names_restore_would_refuse() {
    let env = Env::new("restore-junk-warn");
    make_replica(&env);
    let gens = env.replica.join("generations");
    fs::write(gens.join("notes.txt"), b"x").unwrap();
    fs::write(gens.join(".DS_Store"), b"x").unwrap();
    let mut d = env.start("daemon-warn");
    let text = d.wait_log("never writes", DEADLINE);
    assert!(text.contains("notes.txt"), "{text}");
    let log = d.stop_ok().log;
    assert_eq!(log.matches("never writes").count(), 1, "{log}");
    assert!(!log.contains("DS_Store"), "{log}");
}
