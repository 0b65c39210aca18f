//! Refusals and error paths: restore never clobbers or half-writes, bad configs fail fast
//! with one clear line.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;

#[test]
fn restore_refuses_existing_output_and_honours_if_db_not_exists() {
    let env = Env::new("refuse-exists");
    let src = make_replica(&env);

    let out = env.root.join("existing.db");
    let original = b"precious bytes that are not a database\n".to_vec();
    fs::write(&out, &original).unwrap();

    let o = restore_from(&env, &env.replica, &out, &[]);
    o.assert_fails("restore onto an existing file");
    assert!(o.stderr.contains("already exists"), "stderr: {}", o.stderr);
    one_line(&o, "restore onto an existing file");
    assert_eq!(
        fs::read(&out).unwrap(),
        original,
        "the existing output was modified"
    );

    let o = restore_from(&env, &env.replica, &out, &["-if-db-not-exists"]);
    o.assert_ok("restore -if-db-not-exists onto an existing file");
    assert_eq!(
        fs::read(&out).unwrap(),
        original,
        "-if-db-not-exists modified the existing output"
    );

    // Config form: the output defaults to the db path itself, which exists.
    let before = fs::read(&env.db).unwrap();
    let o = env.run(&[
        "restore",
        "-config",
        env.config.to_str().unwrap(),
        env.db.to_str().unwrap(),
    ]);
    o.assert_fails("restore over the live db path");
    assert!(o.stderr.contains("already exists"), "stderr: {}", o.stderr);
    assert_eq!(
        fs::read(&env.db).unwrap(),
        before,
        "restore touched the existing db"
    );

    // And a restore to a new path still works from the same replica.
    let ok = env.restore_url(&[]);
    assert_eq!(table_digest(&ok, "t"), src);
}

#[test]
fn restore_from_empty_replica() {
    let env = Env::new("refuse-empty");
    let empty = env.root.join("empty-replica");
    fs::create_dir_all(&empty).unwrap();
    let out = env.root.join("out.db");

    let o = restore_from(&env, &empty, &out, &["-if-replica-exists"]);
    o.assert_ok("restore -if-replica-exists from an empty replica");
    assert!(
        leftovers(&env.root, "out.db").is_empty(),
        "an output was created: {:?}",
        leftovers(&env.root, "out.db")
    );

    let o = restore_from(&env, &empty, &out, &[]);
    o.assert_fails("restore from an empty replica");
    assert!(
        o.stderr.contains("no matching backups found"),
        "stderr: {}",
        o.stderr
    );
    one_line(&o, "restore from an empty replica");
    assert!(leftovers(&env.root, "out.db").is_empty());

    // A replica dir that does not exist at all is the same "nothing there" case.
    let o = restore_from(&env, &env.root.join("no-such-replica"), &out, &[]);
    o.assert_fails("restore from a missing replica dir");
    assert!(leftovers(&env.root, "out.db").is_empty());
}

#[test]
fn restore_fails_cleanly_on_corrupt_or_missing_segments() {
    let env = Env::new("refuse-corrupt");
    let src = make_replica(&env);
    let gen = generations(&env.replica)[0].clone();
    let segs = wal_segments(&env.replica, &gen);
    assert!(!segs.is_empty());
    // The biggest segment surely holds frames.
    let (_, _, bp) = segs
        .iter()
        .max_by_key(|s| fs::metadata(&s.2).unwrap().len())
        .unwrap()
        .clone();
    let rel = bp.strip_prefix(&env.replica).unwrap().to_path_buf();
    eprintln!(
        "corrupting {} ({} bytes)",
        rel.display(),
        fs::metadata(&bp).unwrap().len()
    );

    // 1. Garbage instead of gzip.
    let garbage = env.root.join("replica-garbage");
    copy_tree(&env.replica, &garbage);
    fs::write(
        garbage.join(&rel),
        b"this is not gzip at all, just garbage bytes",
    )
    .unwrap();
    let out = env.root.join("garbage-out.db");
    let o = restore_from(&env, &garbage, &out, &[]);
    o.assert_fails("restore with a garbage segment");
    one_line(&o, "restore with a garbage segment");
    assert!(
        leftovers(&env.root, "garbage-out").is_empty(),
        "left behind: {:?}",
        leftovers(&env.root, "garbage-out")
    );

    // 2. Valid gzip header, bytes flipped inside the compressed data.
    let flipped = env.root.join("replica-flipped");
    copy_tree(&env.replica, &flipped);
    let p = flipped.join(&rel);
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    let end = (mid + 16).min(bytes.len() - 8);
    for b in &mut bytes[mid..end] {
        *b ^= 0x5a;
    }
    fs::write(&p, &bytes).unwrap();
    let out = env.root.join("flipped-out.db");
    let o = restore_from(&env, &flipped, &out, &[]);
    if o.code == Some(0) {
        // Tolerated only if the result is still a sound database.
        assert_integrity_ok(&out);
        eprintln!("NOTE: restore accepted a segment with flipped bytes (integrity ok)");
    } else {
        o.assert_fails("restore with a flipped-bytes segment");
        one_line(&o, "restore with a flipped-bytes segment");
        assert!(
            leftovers(&env.root, "flipped-out").is_empty(),
            "left behind: {:?}",
            leftovers(&env.root, "flipped-out")
        );
    }

    // 3. A missing segment followed by another one of the same index, or a missing index
    //    followed by a later one: a gap is an error, never a silently shorter restore.
    let gap = env.root.join("replica-gap");
    copy_tree(&env.replica, &gap);
    let victim = segs
        .windows(2)
        .find(|w| w[0].0 == w[1].0)
        .or_else(|| segs.windows(2).find(|w| w[0].0 < w[1].0))
        .map(|w| w[0].2.clone())
        .unwrap_or_else(|| panic!("setup: no segment is followed by another one: {segs:?}"));
    let vrel = victim.strip_prefix(&env.replica).unwrap();
    eprintln!("removing {}", vrel.display());
    fs::remove_file(gap.join(vrel)).unwrap();
    let out = env.root.join("gap-out.db");
    let o = restore_from(&env, &gap, &out, &[]);
    o.assert_fails("restore with a missing segment");
    one_line(&o, "restore with a missing segment");
    assert!(
        leftovers(&env.root, "gap-out").is_empty(),
        "left behind: {:?}",
        leftovers(&env.root, "gap-out")
    );

    // The untouched replica still restores.
    let ok = env.restore_url(&[]);
    assert_eq!(table_digest(&ok, "t"), src);
}

fn write_cfg(env: &Env, name: &str, text: &str) -> PathBuf {
    let p = env.root.join(name);
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_configs_fail_fast_with_one_line() {
    let env = Env::new("refuse-config");

    // Malformed YAML.
    let bad = write_cfg(
        &env,
        "bad.yml",
        "dbs:\n  - path: \"/tmp/x.db\n    replicas: [\n",
    );
    let o = env.run(&["replicate", "-config", bad.to_str().unwrap()]);
    o.assert_fails("replicate with malformed YAML");
    let line = one_line(&o, "replicate with malformed YAML");
    eprintln!("malformed YAML: {line}");
    let o = env.run(&[
        "restore",
        "-config",
        bad.to_str().unwrap(),
        "-o",
        "/tmp/never.db",
        "/tmp/x.db",
    ]);
    o.assert_fails("restore with malformed YAML");
    one_line(&o, "restore with malformed YAML");

    // `db:` instead of `dbs:` (the seed README's typo).
    let typo = write_cfg(
        &env,
        "typo.yml",
        &format!(
            "db:\n  - path: {}\n    replicas:\n      - path: {}\n",
            env.db.display(),
            env.replica.display()
        ),
    );
    let o = env.run(&["replicate", "-config", typo.to_str().unwrap()]);
    o.assert_fails("replicate with `db:`");
    let line = one_line(&o, "replicate with `db:`");
    assert!(line.contains("did you mean `dbs`?"), "stderr: {line}");

    // A db whose directory does not exist.
    let nodir = write_cfg(
        &env,
        "nodir.yml",
        &format!(
            "dbs:\n  - path: {}/no/such/dir/app.db\n    replicas:\n      - path: {}\n",
            env.root.display(),
            env.replica.display()
        ),
    );
    let o = env.run(&["replicate", "-config", nodir.to_str().unwrap()]);
    o.assert_fails("replicate with a db in a missing directory");
    let line = one_line(&o, "replicate with a db in a missing directory");
    assert!(
        line.contains("does not exist") && line.contains("no/such/dir"),
        "stderr: {line}"
    );
    assert!(
        !env.replica.exists(),
        "a replica was created for an invalid config"
    );

    // Unknown key is named.
    let unk = write_cfg(
        &env,
        "unknown.yml",
        &format!(
            "dbs:\n  - path: {}\n    monitor-intervall: 1s\n    replicas:\n      - path: {}\n",
            env.db.display(),
            env.replica.display()
        ),
    );
    let o = env.run(&["replicate", "-config", unk.to_str().unwrap()]);
    o.assert_fails("replicate with an unknown key");
    let line = one_line(&o, "replicate with an unknown key");
    assert!(
        line.contains("monitor-intervall"),
        "the unknown key is not named: {line}"
    );

    // Missing config file.
    let o = env.run(&[
        "replicate",
        "-config",
        env.root.join("absent.yml").to_str().unwrap(),
    ]);
    o.assert_fails("replicate with a missing config file");
    one_line(&o, "replicate with a missing config file");
}

/// The daemon's own refusals of a file that parses: each used to start, and then either loop
/// on an error every second, write where nobody meant, or run for nothing.
#[test]
fn the_daemon_refuses_what_it_cannot_replicate_with_one_line() {
    let env = Env::new("refuse-daemon");
    let run = |name: &str, text: &str| {
        let cfg = write_cfg(&env, name, text);
        let o = env.run(&["replicate", "-config", cfg.to_str().unwrap()]);
        o.assert_fails(name);
        one_line(&o, name)
    };

    // A db path that is a directory: SQLite said only "unable to open database file".
    let dir = env.root.join("dbdir");
    fs::create_dir_all(&dir).unwrap();
    let line = run(
        "dir.yml",
        &format!(
            "dbs:\n  - path: {}\n    replicas:\n      - path: {}\n",
            dir.display(),
            env.replica.display()
        ),
    );
    assert!(
        line.contains("dbs[0].path") && line.contains("is a directory"),
        "stderr: {line}"
    );

    // An unset variable: `${NOPE}/rep` used to become `/rep`, at the root.
    let line = run(
        "unset.yml",
        &format!(
            "dbs:\n  - path: {}\n    replicas:\n      - path: ${{LITESTREAM_TEST_NOPE}}/rep\n",
            env.db.display()
        ),
    );
    assert!(
        line.contains("line 4") && line.contains("${LITESTREAM_TEST_NOPE} is not set"),
        "stderr: {line}"
    );

    // A replica inside the db's own meta dir, whose clean-up deleted its generations.
    let meta = env.root.join(format!(
        ".{}-litestream",
        env.db.file_name().unwrap().to_str().unwrap()
    ));
    let line = run(
        "nested.yml",
        &format!(
            "dbs:\n  - path: {}\n    replicas:\n      - path: {}/rep\n",
            env.db.display(),
            meta.display()
        ),
    );
    assert!(
        line.contains("is inside the meta dir of dbs[0]"),
        "stderr: {line}"
    );

    // A db with no replicas.
    let line = run(
        "none.yml",
        &format!("dbs:\n  - path: {}\n", env.db.display()),
    );
    assert!(line.contains("has no replicas"), "stderr: {line}");

    assert!(!env.replica.exists(), "a replica was created");
    assert!(!meta.exists(), "a meta dir was created");
    assert!(!PathBuf::from("/rep").exists(), "/rep was created");
}

#[test]
fn command_line_refusals() {
    let env = Env::new("refuse-cli");
    let o = env.run(&[]);
    o.assert_fails("litestream with no command");
    assert!(
        o.stderr.contains("Usage") || o.stdout.contains("Usage"),
        "no usage printed"
    );

    let o = env.run(&["frobnicate"]);
    o.assert_fails("unknown command");
    assert!(o.stderr.contains("unknown command"), "stderr: {}", o.stderr);
    one_line(&o, "unknown command");

    let o = env.run(&[
        "restore",
        "-o",
        env.root.join("x.db").to_str().unwrap(),
        "-bogus-flag",
        "file:///nowhere",
    ]);
    o.assert_fails("restore with an unknown flag");

    // A URL restore needs -o.
    let o = env.run(&["restore", &env.replica_url()]);
    o.assert_fails("restore URL without -o");

    let o = env.run(&["version"]);
    o.assert_ok("version");
    assert!(
        o.stdout.trim().starts_with('v') && o.stdout.contains(" (commit "),
        "version output: {}",
        o.stdout
    );
}

#[test]
fn restore_output_mode_and_symlinked_output() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("refuse-mode");
    make_replica(&env);
    // From a URL (original unknown): owner-only.
    let out = env.root.join("url-out.db");
    restore_from(&env, &env.replica, &out, &[]).assert_ok("restore from URL");
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // From the config: the original db's mode.
    fs::set_permissions(&env.db, fs::Permissions::from_mode(0o640)).unwrap();
    let out = env.restore_config();
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // -o through a symlink to an existing file is an existing output: refused, untouched.
    let target = env.root.join("precious.db");
    fs::write(&target, b"precious").unwrap();
    let link = env.root.join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = restore_from(&env, &env.replica, &link, &[]);
    o.assert_fails("restore onto a symlink");
    assert!(o.stderr.contains("already exists"), "{}", o.stderr);
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    // A dangling symlink is refused too (it would write wherever it points).
    let dangling = env.root.join("dangling.db");
    std::os::unix::fs::symlink(env.root.join("nowhere.db"), &dangling).unwrap();
    restore_from(&env, &env.replica, &dangling, &[])
        .assert_fails("restore onto a dangling symlink");
    assert!(!env.root.join("nowhere.db").exists());
}

/// #22 item 5: a secret in a replica URL (user info, or a query parameter) never comes back
/// in an error, whether the URL is an argument or a config file's `url:`.
#[test]
fn secrets_in_replica_urls_are_never_echoed() {
    let env = Env::new("refuse-url-secrets");
    let out = env.root.join("x.db");
    let out = out.to_str().unwrap();
    for url in [
        "s3://AKIAEXAMPLEKEYID:S3CR3TEXAMPLEKEY@bkt/u1?endpoint=http://127.0.0.1:1",
        "s3://bkt/u1?endpoint=http://127.0.0.1:1&secret-access-key=S3CR3TEXAMPLEKEY",
        "s3://bkt/u1?S3CR3TEXAMPLEKEY",
    ] {
        let o = env.run(&["restore", "-o", out, url]);
        o.assert_fails(url);
        for secret in ["S3CR3TEXAMPLEKEY", "AKIAEXAMPLEKEYID"] {
            assert!(
                !o.stderr.contains(secret) && !o.stdout.contains(secret),
                "{secret} echoed for {url}: {}{}",
                o.stdout,
                o.stderr
            );
        }
        let cfg = write_cfg(
            &env,
            "secret-url.yml",
            &format!(
                "dbs:\n  - path: {}\n    replicas:\n      - url: \"{url}\"\n",
                env.db.display()
            ),
        );
        let o = env.run(&["replicate", "-config", cfg.to_str().unwrap()]);
        o.assert_fails(url);
        assert!(
            !o.stderr.contains("S3CR3TEXAMPLEKEY") && !o.stderr.contains("AKIAEXAMPLEKEYID"),
            "secret echoed for the config's url {url}: {}",
            o.stderr
        );
    }
}
