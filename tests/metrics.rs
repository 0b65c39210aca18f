//! `/metrics` and `/healthz` on the configured `addr`: every SPEC §9 metric while the app
//! writes, labels, counters typed `counter` as Litestream types them, counters that move,
//! `promtool check metrics` finding only the lints of Litestream's fixed names; health going 503 while the
//! replica cannot be written and back to 200 once it has caught up.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::*;

/// Every metric name of SPEC §9.
const SPEC_METRICS: &[&str] = &[
    "litestream_db_size",
    "litestream_wal_size",
    "litestream_shadow_wal_index",
    "litestream_shadow_wal_size",
    "litestream_replica_wal_index",
    "litestream_replica_wal_offset",
    "litestream_replica_lag_seconds",
    "litestream_total_wal_bytes",
    "litestream_sync_count",
    "litestream_sync_error_count",
    "litestream_sync_seconds",
    "litestream_checkpoint_count",
    "litestream_checkpoint_error_count",
    "litestream_checkpoint_seconds",
    "litestream_replica_wal_bytes",
    "litestream_replica_validation_total",
    "litestream_replica_operation_total",
    "litestream_replica_operation_bytes",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
];

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of a text-format scrape (our label values hold no `,` or `"`).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("labels end with }");
                let labels = inner
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label k=v");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample of `name` whose labels include `with`.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one sample of {name} with {with:?}, found {hits:?}"
    );
    hits[0].value
}

fn scrape(addr: &str) -> String {
    match http_get(addr, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics on {addr}: {other:?}"),
    }
}

/// The counters whose names Litestream v0.3 fixed without a `_total` suffix: typed `counter`
/// as Litestream types them (SPEC §9), so promtool's lint names each of them.
const FIXED_COUNTERS: &[&str] = &[
    "litestream_total_wal_bytes",
    "litestream_sync_count",
    "litestream_sync_error_count",
    "litestream_sync_seconds",
    "litestream_checkpoint_count",
    "litestream_checkpoint_error_count",
    "litestream_checkpoint_seconds",
    "litestream_replica_wal_bytes",
    "litestream_replica_operation_bytes",
];

/// `promtool check metrics` on `text`: its findings must be exactly the suffix lints that
/// Litestream's fixed counter names cause — `should have "_total" suffix` for each of
/// `FIXED_COUNTERS`, and for those ending in `_count` the `should not have "_count" suffix`
/// that promtool reports with it — and nothing else. Skipped (with a note) only when promtool
/// is missing outside CI.
fn promtool_check(text: &str) {
    let Some(out) = pipe_through_tool("promtool", &["check", "metrics"], text.as_bytes()) else {
        return;
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found: Vec<String> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    found.sort();
    let mut expected: Vec<String> = Vec::new();
    for name in FIXED_COUNTERS {
        expected.push(format!(
            "{name} counter metrics should have \"_total\" suffix"
        ));
        if name.ends_with("_count") {
            expected.push(format!(
                "{name} non-histogram and non-summary metrics should not have \"_count\" suffix"
            ));
        }
    }
    expected.sort();
    assert_eq!(
        found, expected,
        "promtool check metrics ({:?}) found other problems than the fixed names' suffix lints\n---- scrape ----\n{text}",
        out.status
    );
    // Lint findings only (exit 3), never a parse error (exit 1).
    assert_eq!(out.status.code(), Some(3), "promtool: {report}");
}

#[test]
fn metrics_during_writes_cover_the_spec_and_pass_promtool() {
    let env = Env::new("metrics");
    let addr = format!("127.0.0.1:{}", free_port());
    env.write_config(&Cfg {
        addr: Some(addr.clone()),
        // Small enough that the writes below trigger checkpoints.
        min_checkpoint_page_count: 50,
        ..Cfg::default()
    });
    let _app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    let db = env.db.to_str().unwrap().to_string();
    assert!(env.db.is_absolute());

    let writer = Writer::start(&env.db, 1, Duration::from_millis(5));
    // First scrape once something reached the replica.
    let mut first = Vec::new();
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        let Some((200, body)) = http_get(&addr, "/metrics") else {
            return false;
        };
        first = parse(&body);
        first
            .iter()
            .any(|s| s.name == "litestream_replica_wal_bytes" && s.value > 0.0)
    });
    assert!(ok, "no replica bytes in /metrics within {DEADLINE:?}");

    // Every SPEC name is there; every `db` label is the absolute db path.
    let text = scrape(&addr);
    let samples = parse(&text);
    for name in SPEC_METRICS {
        assert!(
            samples.iter().any(|s| s.name == *name),
            "metric {name} missing from /metrics:\n{text}"
        );
    }
    for s in &samples {
        if let Some(v) = s.labels.get("db") {
            assert_eq!(v, &db, "db label of {s:?}");
        }
        if let Some(v) = s.labels.get("name") {
            assert_eq!(v, "file", "replica name label of {s:?}");
        }
    }
    for mode in ["PASSIVE", "RESTART", "TRUNCATE"] {
        value(
            &samples,
            "litestream_checkpoint_count",
            &[("db", &db), ("mode", mode)],
        );
    }
    for op in ["GET", "PUT", "LIST", "DELETE"] {
        value(
            &samples,
            "litestream_replica_operation_total",
            &[("replica_type", "file"), ("operation", op)],
        );
    }
    assert!(value(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&samples, "process_start_time_seconds", &[]) > 1.5e9);
    promtool_check(&text);
    // Typed as Litestream v0.3 types them (its own /metrics declares these `counter`).
    for name in FIXED_COUNTERS.iter().chain(&[
        "litestream_replica_validation_total",
        "litestream_replica_operation_total",
    ]) {
        let line = format!("# TYPE {name} counter");
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(!text.contains(" untyped"), "an untyped family:\n{text}");

    // Counters move between two scrapes while the app writes.
    let counters: &[(&str, Vec<(&str, &str)>)] = &[
        ("litestream_total_wal_bytes", vec![("db", &db)]),
        ("litestream_sync_count", vec![("db", &db)]),
        (
            "litestream_replica_wal_bytes",
            vec![("db", &db), ("name", "file")],
        ),
        (
            "litestream_replica_operation_total",
            vec![("replica_type", "file"), ("operation", "PUT")],
        ),
        (
            "litestream_replica_operation_bytes",
            vec![("replica_type", "file"), ("operation", "PUT")],
        ),
    ];
    let mut second = Vec::new();
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        second = parse(&scrape(&addr));
        counters
            .iter()
            .all(|(n, l)| value(&second, n, l) > value(&first, n, l))
    });
    let report: Vec<String> = counters
        .iter()
        .map(|(n, l)| format!("{n}: {} -> {}", value(&first, n, l), value(&second, n, l)))
        .collect();
    assert!(ok, "counters did not all increase: {report:#?}");
    eprintln!("counters between two scrapes: {report:#?}");
    // Checkpoints ran (50-page threshold) and show up with their mode.
    let ok = wait_until(DEADLINE, || {
        value(
            &parse(&scrape(&addr)),
            "litestream_checkpoint_count",
            &[("db", &db), ("mode", "PASSIVE")],
        ) > 0.0
    });
    assert!(ok, "no PASSIVE checkpoint counted");

    // Once the writer stops, the replica catches up: lag 0, position = shadow position.
    let last = writer.finish();
    let ok = wait_until(DEADLINE, || {
        let s = parse(&scrape(&addr));
        value(
            &s,
            "litestream_replica_lag_seconds",
            &[("db", &db), ("name", "file")],
        ) == 0.0
            && value(
                &s,
                "litestream_replica_wal_offset",
                &[("db", &db), ("name", "file")],
            ) == value(&s, "litestream_shadow_wal_size", &[("db", &db)])
            && value(
                &s,
                "litestream_replica_wal_index",
                &[("db", &db), ("name", "file")],
            ) == value(&s, "litestream_shadow_wal_index", &[("db", &db)])
    });
    assert!(ok, "replica never caught up:\n{}", scrape(&addr));
    assert_eq!(http_get(&addr, "/healthz"), Some((200, "ok\n".into())));
    assert_eq!(http_get(&addr, "/debug/pprof/").map(|r| r.0), Some(404));
    assert_eq!(http_get(&addr, "/").map(|r| r.0), Some(404));

    d.stop_ok();
    let restored = env.restore_url(&[]);
    assert_eq!(id_summary(&restored), (last as i64, 1, last as i64));
}

#[test]
fn healthz_is_503_while_the_replica_is_unwritable_and_200_once_caught_up() {
    let env = Env::new("healthz");
    let addr = format!("127.0.0.1:{}", free_port());
    env.write_config(&Cfg {
        addr: Some(addr.clone()),
        extra_global: "health-max-lag: 1s\n".into(),
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    for id in 1..=10 {
        insert_row(&app, id, 500);
    }
    let mut d = env.start("daemon");
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        http_get(&addr, "/healthz") == Some((200, "ok\n".into()))
            && !generations(&env.replica).is_empty()
    });
    assert!(ok, "never healthy at start");
    env.wait_restore(DEADLINE, "10 rows replicated", |p| {
        id_summary(p) == (10, 1, 10)
    });

    // A regular file where the replica directory was: every write fails (even as root).
    let moved = env.root.join("replica.moved");
    fs::rename(&env.replica, &moved).unwrap();
    fs::write(&env.replica, b"in the way").unwrap();
    for id in 11..=20 {
        insert_row(&app, id, 500);
    }
    let mut body = String::new();
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        match http_get(&addr, "/healthz") {
            Some((503, b)) => {
                body = b;
                true
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "/healthz never went 503 while the replica was unwritable"
    );
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 1, "one line per unhealthy replica: {body:?}");
    assert!(
        lines[0].contains(env.db.to_str().unwrap())
            && lines[0].contains("replica file")
            && lines[0].contains("behind")
            && lines[0].contains("last error"),
        "reason line: {body:?}"
    );
    let lag = value(
        &parse(&scrape(&addr)),
        "litestream_replica_lag_seconds",
        &[("db", env.db.to_str().unwrap()), ("name", "file")],
    );
    assert!(lag >= 1.0, "lag {lag} while unhealthy");

    // Fixed: the replica catches up and health comes back.
    fs::remove_file(&env.replica).unwrap();
    fs::rename(&moved, &env.replica).unwrap();
    let ok = wait_until(Duration::from_secs(60), || {
        d.assert_alive();
        http_get(&addr, "/healthz") == Some((200, "ok\n".into()))
    });
    assert!(
        ok,
        "/healthz never came back to 200 after the replica was fixed"
    );
    let restored = env.wait_restore(DEADLINE, "20 rows replicated", |p| {
        id_summary(p) == (20, 1, 20)
    });
    assert_integrity_ok(&restored);
    let stopped = d.stop_ok();
    assert!(
        stopped.log.contains("replica sync error"),
        "the failure is not logged:\n{}",
        stopped.log
    );
}
