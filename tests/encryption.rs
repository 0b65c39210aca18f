//! Client-side age encryption (`age:` per replica, as Litestream v0.3.13 reads it): real
//! databases written by another connection, replicated by the real binary to a file replica
//! and to a real local S3 server, then restored and checked row by row with
//! `integrity_check`. The store must hold only age ciphertext; restore without the identity,
//! with a wrong one, or from a replica mixing plain and encrypted objects fails before it
//! writes anything, naming what is missing; listings and validation work; no identity
//! reaches a log, an error or a command line.

// X25519 (deprecated in age 0.13, not post-quantum) is the only key type v0.3.13 uses.
#![allow(deprecated)]

mod common;
mod s3_server;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use age::secrecy::ExposeSecret;
use common::*;
use s3_server::*;

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// A fresh X25519 key pair: (identity text, recipient).
fn keypair() -> (String, String) {
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

/// The `age:` block of a replica (indented for a replica entry).
fn age_yaml(recipients: &[&str], identities: &[&str]) -> String {
    let mut y = String::from("        age:\n");
    if !recipients.is_empty() {
        y.push_str("          recipients:\n");
        for r in recipients {
            y.push_str(&format!("            - {r}\n"));
        }
    }
    if !identities.is_empty() {
        y.push_str("          identities:\n");
        for i in identities {
            y.push_str(&format!("            - \"{i}\"\n"));
        }
    }
    y
}

/// A config for `env.db` with one replica block (already indented).
fn config(env: &Env, name: &str, replica: &str) -> PathBuf {
    let path = env.root.join(name);
    let text = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    replicas:\n{replica}",
        env.db.display()
    );
    fs::write(&path, text).unwrap();
    path
}

fn file_replica(env: &Env, extra: &str) -> String {
    format!(
        "      - type: file\n        path: \"{}\"\n        sync-interval: 100ms\n{extra}",
        env.replica.display()
    )
}

/// The two configs of a keyless primary: `primary.yml` with the recipient alone (what the
/// daemon runs with) and `full.yml` with the identity too (what restores).
fn keyless_and_full(env: &Env, rcpt: &str, id: &str) -> (PathBuf, PathBuf) {
    let primary = config(
        env,
        "primary.yml",
        &file_replica(env, &age_yaml(&[rcpt], &[])),
    );
    let full = config(
        env,
        "full.yml",
        &file_replica(env, &age_yaml(&[rcpt], &[id])),
    );
    (primary, full)
}

fn start(env: &Env, cfg: &Path, label: &str) -> Daemon {
    env.spawn_daemon(
        label,
        vec![
            "replicate".into(),
            "-config".into(),
            cfg.as_os_str().to_owned(),
        ],
    )
}

fn restore_with(env: &Env, cfg: &Path, vars: &[(&str, &str)]) -> (Out, PathBuf) {
    let out = env.fresh("restored");
    let o = run_env(
        &env.root,
        &[
            "restore",
            "-config",
            cfg.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            env.db.to_str().unwrap(),
        ],
        vars,
        Duration::from_secs(120),
    );
    (o, out)
}

/// Restores with `cfg` until the copy holds `rows` rows; checks integrity and the data.
fn wait_rows(env: &Env, cfg: &Path, vars: &[(&str, &str)], want: &Digest) -> PathBuf {
    let mut last = String::new();
    let ok = wait_until(DEADLINE, || {
        let (o, out) = restore_with(env, cfg, vars);
        if o.code != Some(0) {
            last = o.stderr;
            return false;
        }
        let got = table_digest(&out, "t");
        if &got == want {
            true
        } else {
            last = format!("restored {got:?}, want {want:?}");
            remove_db_files(&out);
            false
        }
    });
    assert!(ok, "restore never reached the db's rows; last: {last}");
    let (o, out) = restore_with(env, cfg, vars);
    o.assert_ok("restore");
    assert_integrity_ok(&out);
    assert_eq!(&table_digest(&out, "t"), want);
    out
}

fn write_rows(db: &Path, from: i64, n: i64) -> Digest {
    let c = create_app_db(db, 4096);
    tx(&c, |c| {
        for id in from..from + n {
            insert_row(c, id, 300 + (id as usize * 37) % 2000);
        }
    });
    table_digest(db, "t")
}

/// Every snapshot and WAL segment under `root`: (relative name, first bytes).
fn objects(root: &Path) -> Vec<(String, Vec<u8>)> {
    list_tree(root)
        .into_keys()
        .filter(|k| k.contains("/snapshots/") || k.contains("/wal/"))
        .map(|k| {
            let mut head = vec![0u8; AGE_MAGIC.len()];
            let mut f = fs::File::open(root.join(&k)).unwrap();
            let n = f.read(&mut head).unwrap();
            head.truncate(n);
            (k, head)
        })
        .collect()
}

fn assert_all_encrypted(root: &Path) -> usize {
    let objs = objects(root);
    assert!(
        objs.iter().any(|(k, _)| k.contains("/snapshots/")),
        "no snapshot in {objs:?}"
    );
    assert!(
        objs.iter().any(|(k, _)| k.contains("/wal/")),
        "no wal segment"
    );
    for (k, head) in &objs {
        assert_eq!(head, AGE_MAGIC, "{k} is not age ciphertext");
    }
    objs.len()
}

fn no_secret(text: &str, secret: &str, what: &str) {
    assert!(!text.contains(secret), "{what} holds the identity:\n{text}");
    assert!(
        !text.to_lowercase().contains(&secret.to_lowercase()[16..]),
        "{what} holds the identity (lower case):\n{text}"
    );
}

#[test]
fn file_replica_round_trip_gzip_and_lz4() {
    for compression in ["gzip", "lz4"] {
        let env = Env::new(&format!("age-file-{compression}"));
        let (id, rcpt) = keypair();
        let extra = format!(
            "        compression: {compression}\n{}",
            age_yaml(&[&rcpt], &[&id])
        );
        let cfg = config(&env, "litestream.yml", &file_replica(&env, &extra));
        let want = write_rows(&env.db, 1, 200);
        let mut d = start(&env, &cfg, "replicate");
        wait_rows(&env, &cfg, &[], &want);
        let want = write_rows(&env.db, 201, 300);
        let restored = wait_rows(&env, &cfg, &[], &want);
        d.assert_alive();
        let stopped = d.stop_ok();
        let n = assert_all_encrypted(&env.replica);
        assert!(n >= 2);
        // The suffix stays what the compression says, exactly as v0.3.13 names them.
        let suffix = if compression == "lz4" { ".lz4" } else { ".gz" };
        for (k, _) in objects(&env.replica) {
            assert!(k.ends_with(suffix), "{k}");
        }
        no_secret(&stopped.log, &id, "daemon log");
        remove_db_files(&restored);
    }
}

#[test]
fn s3_replica_round_trip() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("age-s3");
    let server = S3Server::start(&env.root.join("s3"));
    let (id, rcpt) = keypair();
    let replica = format!(
        "{}{}",
        server.replica_yaml(SECRET_KEY, "100ms"),
        age_yaml(&[&rcpt], &[&id])
    );
    let cfg = config(&env, "litestream.yml", &replica);
    let want = write_rows(&env.db, 1, 300);
    let d = start(&env, &cfg, "replicate-s3");
    wait_rows(&env, &cfg, &[], &want);
    let want = write_rows(&env.db, 301, 100);
    wait_rows(&env, &cfg, &[], &want);
    let stopped = d.stop_ok();
    assert_all_encrypted(&server.replica_dir());
    no_secret(&stopped.log, &id, "daemon log");
}

#[test]
fn restore_without_or_with_a_wrong_identity_fails_before_writing() {
    let env = Env::new("age-missing");
    let (id, rcpt) = keypair();
    let (wrong_id, wrong_rcpt) = keypair();
    // The primary replicates with the recipient alone: it holds no secret.
    let (primary, full) = keyless_and_full(&env, &rcpt, &id);
    let want = write_rows(&env.db, 1, 100);
    let d = start(&env, &primary, "primary");
    wait_rows(&env, &full, &[], &want);
    let stopped = d.stop_ok();
    no_secret(&stopped.log, &id, "daemon log");

    let before = list_tree(&env.root);
    let cases: [(&str, String, &[&str]); 3] = [
        // Recipients only: names the recipient whose identity is missing.
        (
            "recipients only",
            age_yaml(&[&rcpt], &[]),
            &["is encrypted with age", &rcpt, "age.identities"],
        ),
        // No `age:` at all.
        (
            "no age",
            String::new(),
            &["is encrypted with age", "identities", "-config"],
        ),
        // The wrong identity: names its public key.
        (
            "wrong identity",
            age_yaml(&[], &[&wrong_id]),
            &["none of its identities", &wrong_rcpt],
        ),
    ];
    for (what, age, needles) in cases {
        let cfg = config(&env, "restore.yml", &file_replica(&env, &age));
        let (o, out) = restore_with(&env, &cfg, &[]);
        o.assert_fails(what);
        // One line says it all: what is encrypted, which object, which key is missing.
        let line = o
            .stderr
            .lines()
            .find(|l| l.contains(needles[0]))
            .unwrap_or_else(|| panic!("{what}: {:?} missing in:\n{}", needles[0], o.stderr));
        for n in needles {
            assert!(line.contains(n), "{what}: {n:?} missing in:\n{line}");
        }
        assert!(
            line.contains("snapshots/"),
            "{what}: names the object: {line}"
        );
        no_secret(&o.stderr, &id, what);
        no_secret(&o.stderr, &wrong_id, what);
        assert!(!out.exists(), "{what}: output written");
        // Nothing created beside it either (no temp file, no spool, no meta dir).
        let mut after = list_tree(&env.root);
        after.remove("restore.yml");
        let mut before = before.clone();
        before.remove("restore.yml");
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{what}: files appeared"
        );
    }
}

/// Decrypts one stored object in place into its plain (compressed) bytes.
fn decrypt_in_place(path: &Path, identity: &str) {
    let id: age::x25519::Identity = identity.parse().unwrap();
    let ct = fs::read(path).unwrap();
    let d = age::Decryptor::new(&ct[..]).unwrap();
    let mut plain = Vec::new();
    d.decrypt(std::iter::once(&id as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    fs::write(path, plain).unwrap();
}

#[test]
fn a_replica_mixing_plain_and_encrypted_objects_is_refused_naming_them() {
    let env = Env::new("age-mixed");
    let (id, rcpt) = keypair();
    let cfg = config(
        &env,
        "litestream.yml",
        &file_replica(&env, &age_yaml(&[&rcpt], &[&id])),
    );
    write_rows(&env.db, 1, 50);
    let d = start(&env, &cfg, "replicate");
    let want = write_rows(&env.db, 51, 50);
    wait_rows(&env, &cfg, &[], &want);
    d.stop_ok();
    let wal: Vec<String> = objects(&env.replica)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/wal/"))
        .collect();
    let victim = wal.last().unwrap().clone();
    decrypt_in_place(&env.replica.join(&victim), &id);
    let (o, out) = restore_with(&env, &cfg, &[]);
    o.assert_fails("mixed restore");
    assert!(
        o.stderr.contains("mixes encrypted and plain objects"),
        "{}",
        o.stderr
    );
    let name = victim.rsplit('/').next().unwrap();
    assert!(
        o.stderr.contains(name),
        "names the plain object {name}: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains(".snapshot."),
        "names an encrypted one: {}",
        o.stderr
    );
    assert!(!out.exists());
    // Nothing of this restore is left: no temp file, spool, `-wal` or meta dir beside it.
    let stem = out.file_name().unwrap().to_str().unwrap().to_string();
    let leftovers: Vec<String> = list_tree(&env.root)
        .into_keys()
        .filter(|k| k.contains(&stem))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn listings_and_validation_work_on_an_encrypted_replica() {
    let env = Env::new("age-list");
    let (id, rcpt) = keypair();
    let extra = format!(
        "        validation-interval: 300ms\n{}",
        age_yaml(&[&rcpt], &[&id])
    );
    let cfg = config(&env, "litestream.yml", &file_replica(&env, &extra));
    write_rows(&env.db, 1, 100);
    let mut d = start(&env, &cfg, "replicate");
    let want = write_rows(&env.db, 101, 100);
    wait_rows(&env, &cfg, &[], &want);
    d.wait_log("validation ok", DEADLINE);
    let stopped = d.stop_ok();
    assert!(
        !stopped.log.contains("validation failed"),
        "{}",
        stopped.log
    );
    let gen = generations(&env.replica).pop().unwrap();
    for cmd in ["generations", "snapshots", "wal"] {
        let o = env.run(&[
            cmd,
            "-config",
            cfg.to_str().unwrap(),
            env.db.to_str().unwrap(),
        ]);
        o.assert_ok(cmd);
        assert!(o.stdout.contains(&gen), "{cmd}: {}", o.stdout);
        no_secret(&o.stdout, &id, cmd);
        no_secret(&o.stderr, &id, cmd);
    }
}

#[test]
fn identity_files_are_read_warned_about_and_never_quoted() {
    let env = Env::new("age-idfile");
    let (id, rcpt) = keypair();
    let key = env.root.join("key.txt");
    fs::write(
        &key,
        format!("# created by a test\n# public key: {rcpt}\n{id}\n"),
    )
    .unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let key_s = key.to_str().unwrap().to_string();
    let cfg = config(
        &env,
        "litestream.yml",
        &file_replica(&env, &age_yaml(&[&rcpt], &[&key_s])),
    );
    // The restore names the file through a $VAR, as any other value may be.
    let restore_cfg = config(
        &env,
        "restore.yml",
        &file_replica(&env, &age_yaml(&[], &["$AGE_KEY_FILE"])),
    );
    let want = write_rows(&env.db, 1, 80);
    let d = start(&env, &cfg, "replicate");
    let vars = [("AGE_KEY_FILE", key_s.as_str())];
    let restored = wait_rows(&env, &restore_cfg, &vars, &want);
    assert_integrity_ok(&restored);
    let cmdline = fs::read(format!("/proc/{}/cmdline", d.pid)).unwrap();
    no_secret(&String::from_utf8_lossy(&cmdline), &id, "argv");
    let stopped = d.stop_ok();
    assert!(
        stopped.log.contains("readable by other users") && stopped.log.contains(&key_s),
        "{}",
        stopped.log
    );
    no_secret(&stopped.log, &id, "daemon log");

    // A link is never followed; a file without a key is an error naming the place, not the text.
    let link = env.root.join("link.txt");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let junk = env.root.join("junk.txt");
    fs::write(&junk, format!("{}x\n", &id[..id.len() - 1])).unwrap();
    for (path, needle) in [
        (&link, "cannot open"),
        (&junk, "line 1 is not an age identity"),
    ] {
        let cfg = config(
            &env,
            "bad.yml",
            &file_replica(&env, &age_yaml(&[&rcpt], &[path.to_str().unwrap()])),
        );
        let (o, out) = restore_with(&env, &cfg, &[]);
        o.assert_fails("bad identity file");
        assert!(
            o.stderr.contains("age.identities[0]") && o.stderr.contains(needle),
            "{}",
            o.stderr
        );
        no_secret(&o.stderr, &id, "error");
        assert!(!out.exists());
    }
}

#[test]
fn config_errors_name_the_key_and_line_and_never_the_identity() {
    let env = Env::new("age-config");
    let (id, rcpt) = keypair();
    // Another last character: the same one would be no change (1 key in 32 ends in Q).
    let last = if id.ends_with('Q') { 'P' } else { 'Q' };
    let broken = format!("{}{last}", &id[..id.len() - 1]);
    let cases: [(String, &str); 4] = [
        (age_yaml(&["age1nope"], &[]), "age.recipients[0]"),
        (age_yaml(&[&rcpt], &[&broken]), "age.identities[0]"),
        // A secret key where a recipient belongs.
        (age_yaml(&[&id], &[]), "not a recipient"),
        // One string where the list belongs: never quoted back.
        (
            format!("        age:\n          identities: \"{id}\"\n"),
            "not a single string",
        ),
    ];
    for (age, needle) in cases {
        let cfg = config(&env, "bad.yml", &file_replica(&env, &age));
        let o = env.run(&["replicate", "-config", cfg.to_str().unwrap()]);
        o.assert_fails(needle);
        assert!(o.stderr.contains(needle), "{needle}: {}", o.stderr);
        assert!(o.stderr.contains("line "), "names the line: {}", o.stderr);
        no_secret(&o.stderr, &id, needle);
        no_secret(&o.stderr, &broken, needle);
    }
}

#[test]
fn a_primary_with_recipients_only_keeps_replicating_across_restarts() {
    let env = Env::new("age-restart");
    let (id, rcpt) = keypair();
    let (primary, full) = keyless_and_full(&env, &rcpt, &id);
    let want = write_rows(&env.db, 1, 60);
    let d = start(&env, &primary, "first");
    wait_rows(&env, &full, &[], &want);
    d.stop_ok();
    let want = write_rows(&env.db, 61, 60);
    // It cannot read its own last segment back without the identity: it starts a new
    // generation rather than guess, and the replica stays whole.
    let d = start(&env, &primary, "second");
    wait_rows(&env, &full, &[], &want);
    let want = write_rows(&env.db, 121, 60);
    wait_rows(&env, &full, &[], &want);
    d.stop_ok();
    assert_all_encrypted(&env.replica);
}

#[test]
fn a_primary_whose_key_was_rotated_starts_a_new_generation() {
    let env = Env::new("age-rotate");
    let (id_a, rcpt_a) = keypair();
    let (id_b, rcpt_b) = keypair();
    let cfg_a = config(
        &env,
        "a.yml",
        &file_replica(&env, &age_yaml(&[&rcpt_a], &[&id_a])),
    );
    let cfg_b = config(
        &env,
        "b.yml",
        &file_replica(&env, &age_yaml(&[&rcpt_b], &[&id_b])),
    );
    let want = write_rows(&env.db, 1, 60);
    let d = start(&env, &cfg_a, "key-a");
    wait_rows(&env, &cfg_a, &[], &want);
    d.stop_ok();
    let generations = |root: &Path| -> usize {
        fs::read_dir(root.join("generations"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(generations(&env.replica), 1);
    // Nothing changes while it is stopped (that alone would start a new generation): key B
    // cannot read key A's last segment, and the daemon must not stall on it but start a new
    // generation, which key B restores whole.
    let d = start(&env, &cfg_b, "key-b");
    let want = write_rows(&env.db, 61, 60);
    wait_rows(&env, &cfg_b, &[], &want);
    let want = write_rows(&env.db, 121, 60);
    wait_rows(&env, &cfg_b, &[], &want);
    let log = d.stop_ok();
    no_secret(&log.log, &id_a, "rotated key A");
    no_secret(&log.log, &id_b, "rotated key B");
    assert_eq!(generations(&env.replica), 2);
    assert_all_encrypted(&env.replica);
}

// ---------------------------------------------------------------------------------------------
// Interoperability with Litestream v0.3.13 itself
// ---------------------------------------------------------------------------------------------

/// Litestream v0.3.13 (`$LITESTREAM_V0313`, else `target/litestream-v0.3.13`, unpacked by
/// `../shared/anchors/get-litestream-v0.3.13.sh target/litestream-v0.3.13`). It is a
/// measuring instrument, never a dependency of the tests: without it these tests SKIP.
fn v0313() -> Option<PathBuf> {
    let p = std::env::var_os("LITESTREAM_V0313")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/litestream-v0.3.13"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: Litestream v0.3.13 not at {} (../shared/anchors/get-litestream-v0.3.13.sh target/litestream-v0.3.13 unpacks it)",
            p.display()
        );
        None
    }
}

/// A v0.3.13 `replicate` child, SIGTERMed (and reaped) on `stop` or drop.
struct GoDaemon {
    child: std::process::Child,
    log: PathBuf,
}

impl GoDaemon {
    fn start(bin: &Path, env: &Env, cfg: &Path, label: &str) -> GoDaemon {
        let log = env.root.join(format!("{label}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = std::process::Command::new(bin)
            .args(["replicate", "-config", cfg.to_str().unwrap()])
            .current_dir(&env.root)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        GoDaemon { child, log }
    }

    fn stop(mut self) -> String {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let ok = wait_until(Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        assert!(ok, "v0.3.13 did not stop");
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GoDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// v0.3.13's `restore -config CFG -o OUT DB`.
fn go_restore(bin: &Path, env: &Env, cfg: &Path) -> (std::process::Output, PathBuf) {
    let out = env.fresh("go-restored");
    let o = std::process::Command::new(bin)
        .args(["restore", "-config", cfg.to_str().unwrap(), "-o"])
        .arg(&out)
        .arg(&env.db)
        .current_dir(&env.root)
        .output()
        .unwrap();
    (o, out)
}

/// Restores with v0.3.13 until the copy has the db's rows; checks it.
fn go_wait_rows(bin: &Path, env: &Env, cfg: &Path, want: &Digest) {
    let mut last = String::new();
    let ok = wait_until(DEADLINE, || {
        let (o, out) = go_restore(bin, env, cfg);
        if !o.status.success() || !out.exists() {
            last = String::from_utf8_lossy(&o.stderr).into_owned()
                + &String::from_utf8_lossy(&o.stdout);
            return false;
        }
        let got = table_digest(&out, "t");
        let same = &got == want && integrity_check(&out) == "ok";
        if !same {
            last = format!("v0.3.13 restored {got:?}, want {want:?}");
        }
        remove_db_files(&out);
        same
    });
    assert!(ok, "v0.3.13 never restored the db's rows; last: {last}");
}

/// One config both read: v0.3.13 ignores `compression` (it always writes LZ4), which keeps
/// us writing LZ4 too, so each can read and continue what the other wrote.
fn shared_config(env: &Env, id: &str, rcpt: &str) -> PathBuf {
    config(
        env,
        "litestream.yml",
        &format!(
            "      - type: file\n        path: \"{}\"\n        sync-interval: 100ms\n        compression: lz4\n{}",
            env.replica.display(),
            age_yaml(&[rcpt], &[id])
        ),
    )
}

#[test]
fn litestream_v0313_restores_our_encrypted_lz4_replica() {
    let Some(go) = v0313() else { return };
    let env = Env::new("age-v03-ours");
    let (id, rcpt) = keypair();
    let cfg = shared_config(&env, &id, &rcpt);
    write_rows(&env.db, 1, 150);
    let d = start(&env, &cfg, "ours");
    let want = write_rows(&env.db, 151, 150);
    wait_rows(&env, &cfg, &[], &want);
    d.stop_ok();
    assert_all_encrypted(&env.replica);
    go_wait_rows(&go, &env, &cfg, &want);
}

#[test]
fn we_restore_a_litestream_v0313_encrypted_replica() {
    let Some(go) = v0313() else { return };
    let env = Env::new("age-v03-theirs");
    let (id, rcpt) = keypair();
    let cfg = shared_config(&env, &id, &rcpt);
    write_rows(&env.db, 1, 150);
    let d = GoDaemon::start(&go, &env, &cfg, "theirs");
    let want = write_rows(&env.db, 151, 150);
    go_wait_rows(&go, &env, &cfg, &want);
    let log = d.stop();
    no_secret(&log, &id, "v0.3.13 log");
    assert_all_encrypted(&env.replica);
    for (k, _) in objects(&env.replica) {
        assert!(k.ends_with(".lz4"), "{k}");
    }
    let restored = wait_rows(&env, &cfg, &[], &want);
    assert_integrity_ok(&restored);
}

#[test]
fn each_takes_over_the_others_encrypted_replica() {
    let Some(go) = v0313() else { return };
    let env = Env::new("age-v03-takeover");
    let (id, rcpt) = keypair();
    let cfg = shared_config(&env, &id, &rcpt);
    write_rows(&env.db, 1, 100);
    // v0.3.13 first, then us on its replica and meta dir, then v0.3.13 again on ours.
    let d = GoDaemon::start(&go, &env, &cfg, "go-1");
    let want = write_rows(&env.db, 101, 100);
    go_wait_rows(&go, &env, &cfg, &want);
    d.stop();
    let d = start(&env, &cfg, "ours");
    let want = write_rows(&env.db, 201, 100);
    wait_rows(&env, &cfg, &[], &want);
    go_wait_rows(&go, &env, &cfg, &want);
    d.stop_ok();
    let d = GoDaemon::start(&go, &env, &cfg, "go-2");
    let want = write_rows(&env.db, 301, 100);
    go_wait_rows(&go, &env, &cfg, &want);
    d.stop();
    wait_rows(&env, &cfg, &[], &want);
    assert_all_encrypted(&env.replica);
}
