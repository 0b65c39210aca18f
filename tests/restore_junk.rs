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
    fs::write(gens.join(&gen).join("wal/.nfs000000000012345600000001"), b"x").unwrap();
    fs::write(gens.join(&gen).join("snapshots/._00000000.snapshot.gz"), b"x").unwrap();
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
