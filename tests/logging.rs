//! Logging (SPEC §10): `logging.type: json` gives one JSON object per line with the listed
//! events, and secrets from the config never show up in the logs or on `/metrics`.

mod common;

use std::net::TcpListener;

use common::*;

const SECRET: &str = "SEKRET-do-not-log-123";

/// Parses every line with python3's `json.loads`; each must be an object with string `time`,
/// `level` and `msg`. Returns the `msg` of each line. `None` when python3 is missing outside
/// CI (the caller then skips the JSON part only).
fn json_messages(log: &str) -> Option<Vec<String>> {
    const CHECK: &str = r#"
import json, sys
for n, line in enumerate(sys.stdin.read().split("\n"), 1):
    if line == "":
        continue
    try:
        o = json.loads(line)
    except ValueError as e:
        sys.exit("line %d is not JSON (%s): %r" % (n, e, line))
    if not isinstance(o, dict):
        sys.exit("line %d is not an object: %r" % (n, line))
    for k in ("time", "level", "msg"):
        if not isinstance(o.get(k), str):
            sys.exit("line %d lacks string %s: %r" % (n, k, line))
    print(o["msg"])
"#;
    let out = pipe_through_tool("python3", &["-c", CHECK], log.as_bytes())?;
    assert!(
        out.status.success(),
        "log is not one JSON object per line: {}\n---- log ----\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "{what} contains the secret key:\n{text}"
    );
}

#[test]
fn json_logs_hold_one_object_per_line_and_no_secret() {
    let env = Env::new("logging-json");
    let addr = format!("127.0.0.1:{}", free_port());
    env.write_config(&Cfg {
        addr: Some(addr.clone()),
        min_checkpoint_page_count: 20,
        extra_global: format!(
            "logging:\n  type: json\n  level: debug\naccess-key-id: AKIDLOGTEST\nsecret-access-key: {SECRET}\n"
        ),
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    d.wait_log("snapshot written", DEADLINE);
    for id in 1..=60 {
        insert_row(&app, id, 3000);
    }
    env.wait_restore(DEADLINE, "60 rows replicated", |p| {
        id_summary(p) == (60, 1, 60)
    });
    let (code, metrics) = http_get(&addr, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    assert_no_secret("/metrics", &metrics);
    let stopped = d.stop_ok();
    assert_no_secret("the log", &stopped.log);
    // The daemon's stdout and stderr both go to this file: every line of either is JSON.
    if let Some(msgs) = json_messages(&stopped.log) {
        for event in [
            "litestream",
            "serving metrics",
            "replicating to",
            "new generation",
            "initialized db",
            "snapshot written",
            "wal segment written",
            "checkpoint",
            "signal received, litestream shutting down",
            "litestream shut down",
        ] {
            assert!(
                msgs.iter().any(|m| m == event),
                "no {event:?} event in the JSON log; messages: {msgs:?}"
            );
        }
    }
    let v = stopped
        .log
        .lines()
        .find(|l| l.contains("\"msg\":\"litestream\""))
        .unwrap();
    assert!(v.contains(&format!("\"version\":\"v{}\"", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn an_s3_replica_that_fails_never_logs_its_secret() {
    let env = Env::new("logging-s3-secret");
    // A port nothing listens on: every S3 request fails with a connection error.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        "addr: \"{addr}\"
logging:
  type: json
  level: debug
access-key-id: AKIDLOGTEST
secret-access-key: {SECRET}
dbs:
  - path: \"{db}\"
    monitor-interval: 100ms
    replicas:
      - type: file
        path: \"{rep}\"
        sync-interval: 100ms
      - type: s3
        name: s3dead
        bucket: test-bucket
        path: app
        endpoint: http://127.0.0.1:{dead}
        sync-interval: 100ms
",
        db = env.db.display(),
        rep = env.replica.display(),
    );
    std::fs::write(&env.config, yaml).unwrap();
    let app = create_app_db(&env.db, 4096);
    insert_row(&app, 1, 100);
    let mut d = env.start("daemon");
    let log = d.wait_log("replica sync error", std::time::Duration::from_secs(90));
    assert!(log.contains("s3dead"), "{log}");
    let (_, metrics) = http_get(&addr, "/metrics").expect("scrape");
    let (_, health) = http_get(&addr, "/healthz").expect("healthz");
    assert_no_secret("/metrics", &metrics);
    assert_no_secret("/healthz", &health);
    // Killed, not stopped: the dead replica would spend the whole shutdown timeout retrying.
    let log = d.log_text();
    d.kill();
    assert_no_secret("the log", &log);
    json_messages(&log);
}
