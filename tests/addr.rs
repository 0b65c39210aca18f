//! The metrics address under attack (#22 item 4): a flood of idle TCP connections far beyond
//! the daemon's file-descriptor limit, plus half-sent requests (slowloris), must neither kill
//! the daemon nor stop replication, and `/metrics` answers again once the clients go.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// RLIMIT_NOFILE given to the daemon: small, so the flood below is many times larger.
const FD_LIMIT: u64 = 128;
/// Idle connections attempted (the ones the kernel refuses once every queue is full fail).
const FLOOD: usize = 400;
/// Connections that send half a request and then wait.
const SLOWLORIS: usize = 40;

/// Sets the daemon's soft and hard RLIMIT_NOFILE.
fn limit_fds(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit only reads `lim`; the old-limit pointer may be null.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Opens up to `n` connections from 8 threads (each connect gives up after 300 ms: once the
/// daemon's accept queue is full the kernel drops further handshakes).
fn flood(addr: SocketAddr, n: usize, half_request: bool) -> Vec<TcpStream> {
    let per = n.div_ceil(8);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for _ in 0..per {
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                    else {
                        continue;
                    };
                    if half_request {
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: sl");
                    }
                    out.push(s);
                }
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Whether the server closed `s` (EOF or reset) while we trickle one header byte every
/// 200 ms; gives up after `limit`.
fn server_hangs_up(mut s: TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => return true, // an answer (e.g. 408/400) before the hang-up counts too
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
        if s.write_all(b"X").is_err() {
            return true;
        }
    }
    false
}

#[test]
fn a_connection_flood_on_addr_neither_kills_the_daemon_nor_stops_replication() {
    let env = Env::new("addr-flood");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sock: SocketAddr = addr.parse().unwrap();
    env.write_config(&Cfg {
        addr: Some(addr.clone()),
        ..Cfg::default()
    });
    let app = create_app_db(&env.db, 4096);
    for id in 1..=10 {
        insert_row(&app, id, 300);
    }
    let mut d = env.start("daemon");
    limit_fds(d.pid, FD_LIMIT);
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        http_get(&addr, "/healthz") == Some((200, "ok\n".into()))
            && !generations(&env.replica).is_empty()
    });
    assert!(ok, "never healthy at start");
    env.wait_restore(DEADLINE, "10 rows replicated", |p| {
        id_summary(p) == (10, 1, 10)
    });

    // The flood: half requests, then idle connections, all held open.
    let mut held = flood(sock, SLOWLORIS, true);
    let half = held.len();
    held.extend(flood(sock, FLOOD, false));
    eprintln!(
        "holding {half} half-request and {} idle connections; daemon has {} fds open (limit {FD_LIMIT})",
        held.len() - half,
        open_fds(d.pid)
    );
    assert!(
        held.len() as u64 > FD_LIMIT,
        "the flood should exceed the daemon's fd limit: only {} connections",
        held.len()
    );
    d.assert_alive();

    // Rows committed during the flood reach the replica while it lasts.
    for id in 11..=60 {
        insert_row(&app, id, 300);
    }
    let restored = env.wait_restore(Duration::from_secs(60), "60 rows during the flood", |p| {
        id_summary(p) == (60, 1, 60)
    });
    assert_integrity_ok(&restored);
    d.assert_alive();

    // The clients go; the metrics answer again.
    drop(held);
    let ok = wait_until(Duration::from_secs(60), || {
        d.assert_alive();
        matches!(http_get(&addr, "/metrics"), Some((200, body)) if body.contains("litestream_db_size"))
    });
    assert!(ok, "/metrics never answered again after the flood");
    assert_eq!(http_get(&addr, "/healthz"), Some((200, "ok\n".into())));

    // A client that sends half a request and then one byte at a time is hung up on.
    let s = TcpStream::connect(sock).unwrap();
    assert!(
        server_hangs_up(s, Duration::from_secs(60)),
        "the server held a trickled half request for 60 s"
    );
    d.assert_alive();

    for id in 61..=70 {
        insert_row(&app, id, 300);
    }
    drop(app);
    let stopped = d.stop_ok();
    eprintln!(
        "log lines about addr: {:?}",
        stopped
            .log
            .lines()
            .filter(|l| l.contains("metrics"))
            .collect::<Vec<_>>()
    );
    let restored = env.restore_url(&[]);
    assert_eq!(id_summary(&restored), (70, 1, 70));
    assert_integrity_ok(&restored);
}
