//! A second SIGTERM during a multipart S3 snapshot (issue #21): the daemon exits at once and
//! aborts the upload on its way out, so no incomplete multipart upload (parts nobody will
//! complete, billed forever) stays in the bucket. s3s-fs cannot list multipart uploads, so
//! the proof is at the proxy in front of it: the upload that was created and never
//! completed is the one an AbortMultipartUpload names.

mod common;
mod s3_server;

use std::fs;
use std::time::Duration;

use common::*;
use rusqlite::params;
use s3_server::*;

/// The `uploadId` query parameter of a request target.
fn upload_id(target: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix("uploadId="))
        .map(str::to_string)
}

#[test]
fn a_second_sigterm_during_a_multipart_snapshot_aborts_the_upload() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("multipart-abort");
    let s3 = S3Server::start(&env.root.join("s3"));
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    replicas:\n{}",
        env.db.display(),
        s3.replica_yaml(SECRET_KEY, "100ms")
    );
    fs::write(&env.config, y).unwrap();
    // ~80 MB of incompressible rows: a snapshot of ten 8 MiB parts.
    let app = create_app_db(&env.db, 4096);
    app.execute_batch("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB);")
        .unwrap();
    tx(&app, |c| {
        for id in 1..=80i64 {
            let b = Rng::new(id as u64).bytes(1024 * 1024);
            c.execute("INSERT INTO big (id, b) VALUES (?1, ?2)", params![id, b])
                .unwrap();
        }
    });
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();

    let mut d = env.start("daemon");
    // The first part on its way: from now on nothing is answered, so the upload stays
    // incomplete while the daemon is told to stop.
    let mut id = None;
    let seen = wait_until(DEADLINE, || {
        id = s3
            .proxy
            .requests()
            .iter()
            .find(|r| r.method == "PUT" && r.target.contains("partNumber="))
            .and_then(|r| upload_id(&r.target));
        id.is_some()
    });
    s3.proxy.set_fault(Fault::Stall);
    assert!(seen, "no multipart upload started; log:\n{}", d.log_text());
    let id = id.unwrap();
    d.assert_alive();
    d.signal(libc::SIGTERM);
    d.wait_log("signal received", DEADLINE);
    d.signal(libc::SIGTERM);
    let stopped = d.wait_exit(Duration::from_secs(20));
    s3.proxy.set_fault(Fault::None);
    assert_eq!(stopped.code, Some(1), "{}", stopped.log);
    let reqs = s3.proxy.requests();
    let completed = reqs
        .iter()
        .any(|r| r.method == "POST" && upload_id(&r.target).as_deref() == Some(id.as_str()));
    assert!(!completed, "the upload was completed: nothing to abort");
    let aborted = reqs
        .iter()
        .any(|r| r.method == "DELETE" && upload_id(&r.target).as_deref() == Some(id.as_str()));
    assert!(
        aborted,
        "no AbortMultipartUpload for upload {id}; requests: {:?}; log:\n{}",
        reqs.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>(),
        stopped.log
    );
}
