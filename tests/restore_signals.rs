//! Restore's temp files (#21): uniquely named and created new, so a user's own files named
//! `<out>.tmp`, `<out>.tmp-wal`, `<out>.tmp-shm` are never touched; and SIGINT/SIGTERM during
//! a restore removes what it created and exits at once.

mod common;
mod restore_proxy;
mod s3_server;

use std::fs;
use std::process::{Command, Stdio};

use common::*;
use restore_proxy::*;
use s3_server::*;

#[test]
fn restore_never_touches_files_it_did_not_create() {
    let env = Env::new("restore-own-files");
    let src = make_replica(&env);
    let dir = env.root.join("out");
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("x.db");
    for (name, body) in [
        ("x.db.tmp", "mine"),
        ("x.db.tmp-wal", "mine too"),
        ("x.db.tmp-shm", "and this"),
    ] {
        fs::write(dir.join(name), body).unwrap();
    }
    restore_from(&env, &env.replica, &out, &[]).assert_ok("restore beside the user's .tmp files");
    assert_eq!(table_digest(&out, "t"), src);
    assert_integrity_ok(&out);
    assert_eq!(fs::read_to_string(dir.join("x.db.tmp")).unwrap(), "mine");
    assert_eq!(
        fs::read_to_string(dir.join("x.db.tmp-wal")).unwrap(),
        "mine too"
    );
    assert_eq!(
        fs::read_to_string(dir.join("x.db.tmp-shm")).unwrap(),
        "and this"
    );
    let mut names = leftovers(&dir, "x.db");
    names.sort();
    assert_eq!(
        names,
        vec!["x.db", "x.db.tmp", "x.db.tmp-shm", "x.db.tmp-wal"]
    );
}

/// A restore held on a download the store never answers, then signalled: it exits at once
/// with 128 + the signal and leaves only what was there before. The stalled download is a
/// WAL segment's: the snapshot's starts before the restore creates anything (an encrypted
/// replica without its key must fail first), so a stall there would leave nothing to clean.
#[test]
fn a_signal_during_restore_removes_its_temp_files() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("restore-signal");
    make_replica(&env);
    let s3 = S3Server::start(&env.root.join("s3"));
    copy_tree(&env.replica, &s3.replica_dir());
    let upstream: u16 = s3.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = CutProxy::start(upstream, Mode::StallWal);
    let url = format!(
        "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}",
        proxy.port()
    );
    for (sig, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let dir = env.root.join(format!("out-{name}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("x.db.tmp"), "mine").unwrap();
        let mut child = Command::new(BIN)
            .args(["restore", "-o"])
            .arg(dir.join("x.db"))
            .arg(&url)
            .env("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY)
            .env("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The temp file exists once the restore waits on its first download.
        let started = wait_until(DEADLINE, || leftovers(&dir, "x.db.tmp-").len() == 1);
        assert!(
            started,
            "no temp file appeared: {:?}",
            leftovers(&dir, "x.db")
        );
        unsafe { libc::kill(child.id() as i32, sig) };
        let exited = wait_until(DEADLINE, || child.try_wait().unwrap().is_some());
        if !exited {
            let _ = child.kill();
        }
        assert!(exited, "restore did not stop on signal {sig}");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "{status:?} (signal {:?})",
            status.signal()
        );
        assert_eq!(leftovers(&dir, "x.db"), vec!["x.db.tmp".to_string()]);
        assert_eq!(fs::read_to_string(dir.join("x.db.tmp")).unwrap(), "mine");
    }
    drop(proxy);
}
