//! Restore's and the listing commands' refusals (#21 messages): each names the thing, the
//! place and the fix, on one line, exit 1, nothing written.

mod common;

use std::fs;

use common::*;

#[test]
fn restore_refusals_name_the_thing_and_the_fix() {
    let env = Env::new("restore-messages");
    make_replica(&env);
    let url = env.replica_url();
    let gen = generations(&env.replica)[0].clone();

    // Progress goes to stderr, as the daemon's logs; stdout stays empty.
    let out = env.fresh("progress");
    let o = env.run(&["restore", "-o", out.to_str().unwrap(), &url]);
    o.assert_ok("restore");
    assert!(o.stdout.is_empty(), "stdout: {}", o.stdout);
    assert!(
        o.stderr.contains("restore complete"),
        "stderr: {}",
        o.stderr
    );

    // -o "" is not "output path already exists: …/".
    let o = env.run(&["restore", "-o", "", &url]);
    o.assert_fails("restore -o ''");
    let line = one_line(&o, "-o ''");
    assert!(line.contains("-o needs a path"), "{line}");

    // A db path that is no replica and no config names.
    let o = env.run(&["restore", "-o", "/tmp/never-x.db", "/nonexistent/db"]);
    o.assert_fails("restore /nonexistent/db");
    let line = one_line(&o, "/nonexistent/db");
    assert!(
        line.contains("/nonexistent/db")
            && line.contains("not a replica URL")
            && line.contains("-config"),
        "{line}"
    );

    // An absent generation says so.
    let out = env.fresh("absent");
    let o = env.run(&[
        "restore",
        "-o",
        out.to_str().unwrap(),
        "-generation",
        "0123456789abcdef",
        &url,
    ]);
    o.assert_fails("restore -generation absent");
    let line = one_line(&o, "absent generation");
    assert!(line.contains("no generation 0123456789abcdef"), "{line}");
    assert!(line.contains("litestream generations"), "{line}");

    // `wal -generation zzz` is an error, not an empty table; so is an absent generation.
    let o = env.run(&["wal", "-generation", "zzz", &url]);
    o.assert_fails("wal -generation zzz");
    assert!(
        one_line(&o, "wal zzz").contains("not a generation id"),
        "{}",
        o.stderr
    );
    let o = env.run(&["wal", "-generation", "0123456789abcdef", &url]);
    o.assert_fails("wal -generation absent");
    assert!(
        one_line(&o, "wal absent").contains("no generation 0123456789abcdef"),
        "{}",
        o.stderr
    );
    let o = env.run(&["wal", "-generation", &gen, &url]);
    o.assert_ok("wal -generation <real>");

    // A corrupt snapshot: the error names generation, index and replica.
    let snaps = env.replica.join("generations").join(&gen).join("snapshots");
    let snap = fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let good = fs::read(&snap).unwrap();
    fs::write(&snap, vec![0x1fu8; good.len()]).unwrap();
    let (o, out) = env.try_restore_url(&[]);
    o.assert_fails("restore of a corrupt snapshot");
    let line = o.stderr.lines().last().unwrap_or("").to_string();
    assert!(
        line.contains(&format!("generation {gen} up to index")),
        "{line}"
    );
    assert!(!out.exists());

    // WAL without a snapshot.
    fs::remove_file(&snap).unwrap();
    let (o, out) = env.try_restore_url(&[]);
    o.assert_fails("restore of WAL without a snapshot");
    let line = one_line(&o, "no snapshot");
    assert!(
        line.contains("no snapshot in generation") && line.contains(&gen),
        "{line}"
    );
    assert!(!out.exists());
}
