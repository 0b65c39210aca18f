//! `replicate -exec CMD` / `exec:`: the child starts after the dbs are initialised, the daemon
//! exits with the child's exit code after a final sync, SIGTERM reaches the child, a signal
//! death maps to 128 + signal.

mod common;

use std::ffi::OsString;
use std::fs;
use std::time::Duration;

use common::*;

fn exec_args(env: &Env, cmd: &str) -> Vec<OsString> {
    vec![
        "replicate".into(),
        "-config".into(),
        env.config.clone().into(),
        "-exec".into(),
        cmd.into(),
    ]
}

/// Line index of the first log line containing `needle`.
fn line_of(log: &str, needle: &str) -> usize {
    log.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("log lacks {needle:?}:\n{log}"))
}

#[test]
fn exit_code_of_the_child_after_a_final_sync() {
    let env = Env::new("exec-exit");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    for id in 1..=25 {
        insert_row(&app, id, 1000);
    }
    let d = env.spawn_daemon("daemon", exec_args(&env, "sh -c 'sleep 1; exit 7'"));
    let stopped = d.wait_exit(Duration::from_secs(60));
    assert_eq!(stopped.code, Some(7), "log:\n{}", stopped.log);
    let log = &stopped.log;
    assert!(
        line_of(log, "initialized db") < line_of(log, "subprocess started"),
        "the child started before the db was initialised:\n{log}"
    );
    assert!(log.contains("exit_code=7"), "{log}");
    assert!(
        line_of(log, "subprocess exited") < line_of(log, "litestream shut down"),
        "{log}"
    );
    let restored = env.restore_url(&[]);
    assert_eq!(id_summary(&restored), (25, 1, 25));
}

#[test]
fn rows_written_while_the_child_runs_reach_the_replica_through_the_final_sync() {
    let env = Env::new("exec-final-sync");
    // One upload per hour at most: after the first snapshot, only the final sync at shutdown
    // can carry new rows to the replica.
    env.write_config(&Cfg {
        sync_interval: "1h",
        exec: Some(format!(
            "sh -c 'while [ ! -e {go} ]; do sleep 0.05; done; exit 3'",
            go = env.root.join("go").display()
        )),
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    insert_row(&app, 1, 1000);
    // The `exec:` key of the config (no -exec flag).
    let mut d = env.start("daemon");
    d.wait_log("subprocess started", DEADLINE);
    env.wait_restore(DEADLINE, "first row replicated", |p| {
        id_summary(p) == (1, 1, 1)
    });
    for id in 2..=40 {
        insert_row(&app, id, 1000);
    }
    // The daemon has copied them to its shadow WAL (that is what it uploads at the end).
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        let shadow = meta_dir(&env.db).join("generations");
        total_size(&shadow, ".wal") > 40 * 1000
    });
    assert!(ok, "rows never reached the shadow wal");
    let (o, early) = env.try_restore_url(&[]);
    o.assert_ok("restore before the child exits");
    assert_eq!(
        id_summary(&early),
        (1, 1, 1),
        "rows reached the replica before the final sync (sync-interval 1h)"
    );

    fs::write(env.root.join("go"), b"").unwrap();
    let stopped = d.wait_exit(Duration::from_secs(60));
    assert_eq!(stopped.code, Some(3), "log:\n{}", stopped.log);
    let restored = env.restore_url(&[]);
    assert_eq!(id_summary(&restored), (40, 1, 40));
    assert_blobs_match_hash(&restored);
}

#[test]
fn sigterm_is_forwarded_to_the_child() {
    let env = Env::new("exec-sigterm");
    env.write_config(&Cfg::default());
    let app = create_app_db(&env.db, 4096);
    insert_row(&app, 1, 100);
    let marker = env.root.join("marker");
    let ready = env.root.join("ready");
    // The child says when its trap is in place: a SIGTERM forwarded before that would kill
    // the shell by default action (exit 143), which is how this test once failed.
    let cmd = format!(
        "sh -c 'trap \"echo got-term > {m}; exit 5\" TERM; : > {r}; while true; do sleep 0.05; done'",
        m = marker.display(),
        r = ready.display()
    );
    let mut d = env.spawn_daemon("daemon", exec_args(&env, &cmd));
    d.wait_log("subprocess started", DEADLINE);
    assert!(
        wait_until(DEADLINE, || ready.exists()),
        "the child never installed its trap"
    );
    d.signal(libc::SIGTERM);
    let stopped = d.wait_exit(Duration::from_secs(60));
    assert_eq!(
        fs::read_to_string(&marker).ok().as_deref(),
        Some("got-term\n"),
        "the child did not get SIGTERM; log:\n{}",
        stopped.log
    );
    assert_eq!(stopped.code, Some(5), "log:\n{}", stopped.log);
    assert!(stopped.log.contains("forwarding to the subprocess"));
    let restored = env.restore_url(&[]);
    assert_eq!(id_summary(&restored), (1, 1, 1));
}

#[test]
fn a_signal_death_exits_128_plus_the_signal() {
    let env = Env::new("exec-killed");
    env.write_config(&Cfg::default());
    create_app_db(&env.db, 4096);
    let d = env.spawn_daemon("daemon", exec_args(&env, "sh -c 'kill -KILL $$'"));
    let stopped = d.wait_exit(Duration::from_secs(60));
    assert_eq!(stopped.code, Some(128 + 9), "log:\n{}", stopped.log);
}

#[test]
fn bad_exec_commands_are_one_line_errors() {
    let env = Env::new("exec-bad");
    env.write_config(&Cfg::default());
    create_app_db(&env.db, 4096);
    let cfg = env.config.to_str().unwrap();
    let o = env.run(&["replicate", "-config", cfg, "-exec", "sh -c 'oops"]);
    o.assert_fails("unterminated quote");
    assert!(
        o.stderr.contains("-exec") && o.stderr.contains("unterminated single quote"),
        "{}",
        o.stderr
    );
    let o = env.run(&[
        "replicate",
        "-config",
        cfg,
        "-exec",
        "/nonexistent/litestream-test-prog",
    ]);
    o.assert_fails("missing program");
    let last = o.stderr.trim_end().lines().last().unwrap_or("");
    assert!(
        last.contains("cannot start") && last.contains("/nonexistent/litestream-test-prog"),
        "{}",
        o.stderr
    );
}
