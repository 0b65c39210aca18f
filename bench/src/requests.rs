//! Row 7: requests to the local S3 server, counted at the proxy: an idle minute (must be 0;
//! it starts after the one-off checkpoint a minute after the last write),
//! then a minute of steady writes at sync-interval 1s.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::harness::{self, Daemon, DbCfg};
use crate::lag::err_row;
use crate::s3::Req;
use crate::{Ctx, Row};

struct Counts {
    put_wal: usize,
    put_snapshot: usize,
    put_other: usize,
    list: usize,
    get: usize,
    other: usize,
    wal_indexes: usize,
}

fn count(reqs: &[Req]) -> Counts {
    let mut c = Counts {
        put_wal: 0,
        put_snapshot: 0,
        put_other: 0,
        list: 0,
        get: 0,
        other: 0,
        wal_indexes: 0,
    };
    let mut idx = BTreeSet::new();
    for r in reqs {
        if r.method == "PUT" && r.path().contains("/wal/") {
            c.put_wal += 1;
            if let Some(i) = harness::segment_index(std::path::Path::new(r.path())) {
                idx.insert(i);
            }
        } else if r.method == "PUT" && r.path().contains("/snapshots/") {
            c.put_snapshot += 1;
        } else if r.method == "PUT" {
            c.put_other += 1;
        } else if r.is_list() {
            c.list += 1;
        } else if r.method == "GET" {
            c.get += 1;
        } else {
            c.other += 1;
        }
    }
    c.wal_indexes = idx.len();
    c
}

impl Counts {
    fn total(&self) -> usize {
        self.put_wal + self.put_snapshot + self.put_other + self.list + self.get + self.other
    }

    fn describe(&self) -> String {
        format!(
            "{} PUT ({} WAL over {} index(es), {} snapshot, {} other), {} LIST, {} GET, {} other",
            self.put_wal + self.put_snapshot + self.put_other,
            self.put_wal,
            self.wal_indexes,
            self.put_snapshot,
            self.put_other,
            self.list,
            self.get,
            self.other
        )
    }
}

pub fn run(ctx: &mut Ctx) {
    let Some(s3) = ctx.s3.as_ref() else {
        err_row(ctx, "requests against local S3", "s3s-fs not installed");
        return;
    };
    let (idle, writes) = if ctx.quick {
        (10.0, 10.0)
    } else {
        (60.0, 60.0)
    };
    let dir = ctx.dir("requests");
    let db = dir.join("app.db");
    let conn = harness::open_app(&db);
    conn.execute("INSERT INTO t (v) VALUES (x'00')", [])
        .unwrap();
    let cfg = dir.join("litestream.yml");
    harness::write_config(
        &cfg,
        None,
        &[DbCfg {
            path: db.clone(),
            monitor_interval: None,
            extra: String::new(),
            replicas: vec![s3.replica_yaml("s3", "requests", Some("1s"), None)],
        }],
    );
    let m0 = s3.proxy.mark();
    let d = Daemon::start(&cfg, &dir.join("daemon.log"));
    // Started: the snapshot is up and nothing has been sent for 3 s.
    let mut last = (0usize, Instant::now());
    let ready = harness::wait_for(Duration::from_secs(120), Duration::from_millis(100), || {
        let reqs = s3.proxy.since(m0);
        if reqs.len() != last.0 {
            last = (reqs.len(), Instant::now());
        }
        let snap = reqs
            .iter()
            .any(|r| r.method == "PUT" && r.path().contains("/snapshots/") && r.status == 200);
        (snap && last.1.elapsed() >= Duration::from_secs(3)).then_some(())
    });
    if ready.is_none() {
        let e = format!("daemon not settled: {}", d.log_tail());
        drop(d);
        err_row(ctx, "requests against local S3", &e);
        return;
    }

    // The first minute after the db's last write ends with the checkpoint-interval (1m)
    // checkpoint, which restarts the WAL and uploads the new index's first segment: a one-off
    // tail of the writes, counted apart. The idle window starts once it is done.
    let mut tail = 0;
    if !ctx.quick {
        let m = s3.proxy.mark();
        let put = harness::wait_for(Duration::from_secs(100), Duration::from_millis(100), || {
            s3.proxy
                .since(m)
                .iter()
                .any(|r| r.method == "PUT")
                .then_some(())
        });
        if put.is_some() {
            std::thread::sleep(Duration::from_secs(3));
        }
        tail = s3.proxy.since(m).len();
    }
    let m1 = s3.proxy.mark();
    std::thread::sleep(Duration::from_secs_f64(idle));
    let idle_c = count(&s3.proxy.since(m1));

    let m2 = s3.proxy.mark();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed().as_secs_f64() < writes {
        let due = start + Duration::from_millis(100 * i);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        conn.execute(
            "INSERT INTO t (v) VALUES (?1)",
            params![
                format!("steady write {i}, a small row of about a hundred bytes of text ....")
                    .into_bytes()
            ],
        )
        .unwrap();
        i += 1;
    }
    std::thread::sleep(Duration::from_millis(2500));
    let window = start.elapsed().as_secs_f64();
    let busy = count(&s3.proxy.since(m2));
    d.stop();

    ctx.push(Row::new(
        "requests to S3, idle",
        format!("{} ({})", idle_c.total(), idle_c.describe()),
        "0",
        "0",
        Row::met_if(idle_c.total() == 0),
        format!(
            "one db, S3 replica (local s3s-fs), sync-interval 1s, default monitor-interval; {idle:.0} s without writes, starting once the snapshot is up, 3 s passed without a request{}; every request counted at the proxy",
            if ctx.quick {
                String::new()
            } else {
                format!(" and the one-off checkpoint-interval (1m) checkpoint after the last write has uploaded its segment ({tail} request(s), not counted)")
            }
        ),
    ));
    let puts = busy.put_wal + busy.put_snapshot + busy.put_other;
    let allowed = window.ceil() as usize + busy.wal_indexes;
    let per_s = busy.put_wal as f64 / window;
    ctx.push(Row::new(
        "requests to S3, steady writes at sync-interval 1s",
        format!("{per_s:.2} WAL PUT/s: {}", busy.describe()),
        "≤ 1 PUT per second per index, no LIST",
        "–",
        Row::met_if(busy.list == 0 && puts <= allowed),
        format!("the same daemon right after: {i} single-row commits, one every 100 ms for {writes:.0} s, counted over {window:.1} s (2.5 s after the last commit); met when LIST = 0 and PUTs ≤ seconds + indexes written ({allowed})"),
    ));
}
