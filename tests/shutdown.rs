//! Shutdown: SIGHUP stops the daemon as SIGTERM does (final sync, shutdown log, exit 0).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sighup_runs_the_final_sync_and_exits_cleanly() {
    let env = Env::new("shutdown-sighup");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    for id in 1..=20 {
        insert_row(&app, id, 1000);
    }
    let mut d = env.start("daemon");
    wait_for_a_snapshot(&env, &mut d);
    for id in 21..=40 {
        insert_row(&app, id, 1000);
    }
    d.signal(libc::SIGHUP);
    let stopped = d.wait_exit(Duration::from_secs(60));
    assert_eq!(stopped.code, Some(0), "log:\n{}", stopped.log);
    assert!(
        stopped
            .log
            .contains("signal received, litestream shutting down"),
        "{}",
        stopped.log
    );
    assert!(
        stopped.log.contains("litestream shut down"),
        "{}",
        stopped.log
    );
    let restored = env.restore_url(&[]);
    assert_eq!(id_summary(&restored), (40, 1, 40));
}
