//! Restore from S3 through a store whose connections end mid-object (#21 data-loss item 3):
//! a cut download is a transient failure, resumed with a ranged GET from the byte reached,
//! never a corrupt replica. The store is a real S3 server (s3s-fs on 127.0.0.1) behind a
//! small HTTP-aware proxy that cuts the first GETs of every object after a few hundred bytes
//! of its body.

mod common;
mod restore_proxy;
mod s3_server;

use std::time::Duration;

use common::*;
use restore_proxy::*;
use s3_server::*;

/// A replica whose snapshot and WAL segments are each larger than `CUT_AFTER`, served from
/// S3 through the cutting proxy: the restore succeeds, equals the source and is sound, and
/// it resumed the cut downloads with ranged GETs. Before the fix the first cut failed the
/// restore as a corrupt object.
#[test]
fn restore_resumes_downloads_the_store_cut_short() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("restore-cut");
    env.write_config(&Cfg {
        min_checkpoint_page_count: 10,
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    // Rows before the first snapshot, so the snapshot is large too.
    tx(&app, |c| {
        for id in 1..=10 {
            insert_row(c, id, 3000);
        }
    });
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    let mut next = 11i64;
    for batch in 0..4 {
        tx(&app, |c| {
            for id in next..next + 10 {
                insert_row(c, id, 3000);
            }
        });
        next += 10;
        let n = next - 1;
        env.wait_restore(DEADLINE, &format!("batch {batch} replicated"), |p| {
            id_summary(p) == (n, 1, n)
        });
        std::thread::sleep(Duration::from_millis(300));
    }
    let src = digest_conn(&app, "t");
    d.stop_ok();

    let s3 = S3Server::start(&env.root.join("s3"));
    copy_tree(&env.replica, &s3.replica_dir());
    let upstream: u16 = s3.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = CutProxy::start(upstream, Mode::Cut);
    let url = format!(
        "s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{}",
        proxy.port()
    );

    for parallelism in ["1", "4"] {
        let out = env.fresh("restored");
        let o = run_env(
            &env.root,
            &[
                "restore",
                "-parallelism",
                parallelism,
                "-o",
                out.to_str().unwrap(),
                &url,
            ],
            &[
                ("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY),
                ("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY),
            ],
            Duration::from_secs(120),
        );
        o.assert_ok("restore through a store that cuts downloads");
        assert_eq!(table_digest(&out, "t"), src);
        assert_eq!(id_summary(&out), (next - 1, 1, next - 1));
        assert_integrity_ok(&out);
        assert_blobs_match_hash(&out);
        // Each proxy run starts counting afresh.
        let mut s = proxy.seen.lock().unwrap();
        assert!(
            s.cut >= 2,
            "the proxy cut {} downloads; the test did not exercise anything",
            s.cut
        );
        assert!(
            s.ranged >= s.cut,
            "{} cut, {} resumed with a range",
            s.cut,
            s.ranged
        );
        *s = Seen::default();
    }
}
