//! The HTTP edge of `addr`: a GET-only HTTP/1.1 server that no client can turn against the
//! daemon.
//!
//! One accept thread and a fixed pool of `WORKERS` threads, started once; nothing is spawned
//! per connection. At most `max_connections()` accepted connections exist at a time (a small
//! share of RLIMIT_NOFILE): beyond that the accept thread stops accepting and further clients
//! wait in the kernel's queue, so a flood can never take the file descriptors replication needs.
//! Each connection must deliver its request head within `HEAD_TIMEOUT` of being accepted
//! (slowloris) and take its answer within `WRITE_TIMEOUT`; then it is closed (no keep-alive).
//! Accept errors (EMFILE, ENFILE, ECONNABORTED, …) are logged at most once per
//! `ERROR_LOG_EVERY` and survived after a short back-off. The answer is rendered from a
//! snapshot of the registry's atomics before a byte is written: no lock shared with the
//! replication threads is held while a socket is written.
//!
//! tiny_http 0.12 (the design card's choice) is not used here because it cannot be made safe:
//! its pool spawns a thread for every connection without bound (util/task_pool.rs), its accept
//! thread ends for good on the first accept error (lib.rs, `break` after pushing the error),
//! `try_clone().unwrap()` on each connection (util/refined_tcp_stream.rs) panics on EMFILE
//! (an abort in our release build), it has no read timeout, and its connection parser is
//! private, so it cannot be fed connections from an accept loop of our own.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{health, render, Registry};
use crate::logging;

/// Threads answering requests; a scrape is milliseconds of work.
const WORKERS: usize = 4;
/// Time from accept to the end of the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to write the whole answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head read; a GET for our two paths needs a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How often the accept thread looks at the stop flag.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Back-off after a failed accept (the pending connection stays queued, so retrying at once
/// would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per kind of trouble per this period.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The metrics server: its accept thread and workers.
pub(crate) struct Server {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// `:9090` means every interface, as in Litestream (and Go's `net.Listen`); any other form is
/// bound exactly as written.
pub(crate) fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    }
}

/// The most connections ever open at once.
const MAX_CONNECTIONS_CEILING: usize = 64;

/// Connections open at once: an eighth of the current RLIMIT_NOFILE, between 8 and 64. Read
/// on every accept, so a limit lowered at run time (`prlimit`) is honoured.
fn max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft / 8).clamp(8, MAX_CONNECTIONS_CEILING as u64) as usize
}

/// Logs one kind of trouble at most once per `ERROR_LOG_EVERY`, with how many were not logged.
struct RateLimitedLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(what: &'static str) -> Self {
        RateLimitedLog {
            what,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        logging::warn(
            self.what,
            &[
                ("reason", error),
                ("suppressed_since_last", &self.suppressed),
            ],
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Waits until `fd` is readable or `timeout` passes.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int);
    }
}

impl Server {
    /// Binds `addr` now (so a taken port stops start-up) and serves on new threads.
    pub(crate) fn start(addr: &str, registry: Arc<Registry>, max_lag: Duration) -> Result<Server> {
        let listen = listen_addr(addr);
        let listener = TcpListener::bind(&listen).with_context(|| {
            format!("cannot listen on addr {addr:?} for metrics (free the port or change `addr` in the config)")
        })?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("cannot serve metrics on {addr:?}"))?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(listen);
        let (tx, rx) = crossbeam_channel::bounded::<Conn>(MAX_CONNECTIONS_CEILING);
        for i in 0..WORKERS {
            let rx: Receiver<Conn> = rx.clone();
            let registry = registry.clone();
            std::thread::Builder::new()
                .name(format!("metrics-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    for conn in rx {
                        serve(conn, &registry, max_lag);
                    }
                })
                .context("cannot start the metrics threads")?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("metrics-accept".into())
            .stack_size(128 * 1024)
            .spawn(move || accept_loop(listener, tx, &stop2))
            .context("cannot start the metrics thread")?;
        logging::info("serving metrics", &[("addr", &bound)]);
        Ok(Server {
            stop,
            accept: Some(accept),
        })
    }

    /// Stops accepting and joins the accept thread. Workers end by themselves once their
    /// current connection is done (bounded by the timeouts); they are not waited for, so a
    /// stuck client cannot delay the shutdown.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One accepted connection; counted in `open` until dropped.
struct Conn {
    stream: TcpStream,
    accepted: Instant,
    open: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts while fewer than `max_connections()` connections are open, and hands each to the
/// workers' queue (it never fills: the queue holds at most the open connections).
fn accept_loop(listener: TcpListener, tx: Sender<Conn>, stop: &AtomicBool) {
    let fd = listener.as_raw_fd();
    let open = Arc::new(AtomicUsize::new(0));
    let mut accept_errors = RateLimitedLog::new("metrics: cannot accept a connection");
    let mut at_cap = RateLimitedLog::new("metrics: connection limit reached, not accepting");
    let mut was_at_cap = false;
    while !stop.load(Ordering::SeqCst) {
        let max = max_connections();
        if open.load(Ordering::SeqCst) >= max {
            if !was_at_cap {
                at_cap.warn(&format_args!("{max} connections open"));
                was_at_cap = true;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        was_at_cap = false;
        wait_readable(fd, POLL_EVERY);
        match listener.accept() {
            Ok((stream, _peer)) => {
                open.fetch_add(1, Ordering::SeqCst);
                let conn = Conn {
                    stream,
                    accepted: Instant::now(),
                    open: open.clone(),
                };
                // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure.
                if conn.stream.set_nonblocking(false).is_err() {
                    continue;
                }
                if let Err(TrySendError::Disconnected(_)) = tx.try_send(conn) {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS/ENOMEM, ECONNABORTED, EPROTO …: none ends the server.
                accept_errors.warn(&e);
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Reads one request head, answers it and closes the connection.
fn serve(mut conn: Conn, registry: &Registry, max_lag: Duration) {
    let stream = &mut conn.stream;
    let head = match read_head(stream, conn.accepted + HEAD_TIMEOUT) {
        Ok(h) => h,
        Err(HeadError::TooLarge) => {
            let _ = write_response(stream, 431, TEXT, "request header fields too large\n", true);
            return;
        }
        // Timed out, closed early, or unreadable: hang up without a word.
        Err(HeadError::Gone) => return,
    };
    let (code, ctype, body, with_body) = match parse_request_line(&head) {
        Some((method, target)) => {
            let (code, ctype, body) = route(method, target, registry, max_lag);
            (code, ctype, body, method != "HEAD")
        }
        None => (400, TEXT, "bad request\n".to_string(), true),
    };
    let _ = write_response(stream, code, ctype, &body, with_body);
}

enum HeadError {
    TooLarge,
    Gone,
}

/// The bytes up to the blank line ending the head, read before `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Gone);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Gone),
        };
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from lenient clients). Pure.
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Method and target of an HTTP/1.x request line. Pure.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&c| c == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|c| c.is_ascii_uppercase())
        || !target.starts_with('/')
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    Some((method, target))
}

const TEXT: &str = "text/plain; charset=utf-8";

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes status line, headers and (unless HEAD) the body, all before `WRITE_TIMEOUT`.
fn write_response(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    // Chunks, so a client reading a byte at a time cannot stretch the write past the deadline.
    for chunk in out.chunks(16 * 1024) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        stream.write_all(chunk)?;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// What a request gets: status, content type, body. Pure apart from taking the snapshot.
pub(crate) fn route(
    method: &str,
    url: &str,
    registry: &Registry,
    max_lag: Duration,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return (404, TEXT, "404 page not found\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "method not allowed\n".into());
    }
    let snap = registry.snapshot(SystemTime::now());
    if path == "/metrics" {
        return (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&snap),
        );
    }
    match health(&snap, max_lag) {
        Ok(()) => (200, TEXT, "ok\n".into()),
        Err(lines) => (503, TEXT, lines),
    }
}

#[cfg(test)]
mod tests {
    use super::super::DbMetrics;
    use super::*;

    #[test]
    fn routes() {
        let reg = Registry::new(
            vec![Arc::new(DbMetrics::new("/a.db".into(), &["file".into()]))],
            &["file"],
        );
        let max = Duration::from_secs(60);
        assert_eq!(route("GET", "/nope", &reg, max).0, 404);
        assert_eq!(route("GET", "/debug/pprof/", &reg, max).0, 404);
        assert_eq!(route("POST", "/metrics", &reg, max).0, 405);
        let (code, ctype, body) = route("GET", "/metrics?x=1", &reg, max);
        assert_eq!(
            (code, ctype),
            (200, "text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(body.contains("litestream_db_size{db=\"/a.db\"} 0"));
        assert_eq!(
            route("GET", "/healthz", &reg, max),
            (200, "text/plain; charset=utf-8", "ok\n".into())
        );
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(listen_addr(":9090"), "0.0.0.0:9090");
        assert_eq!(listen_addr("127.0.0.1:9090"), "127.0.0.1:9090");
        assert_eq!(listen_addr("[::1]:9090"), "[::1]:9090");
    }

    #[test]
    fn request_heads() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"HEAD /healthz HTTP/1.0"),
            Some(("HEAD", "/healthz"))
        );
        for bad in [
            &b"GET /metrics"[..],
            b"GET /metrics HTTP/2",
            b"get /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET /a b HTTP/1.1",
            b"\xff / HTTP/1.1",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connection_cap_follows_the_fd_limit() {
        let n = max_connections();
        assert!((8..=64).contains(&n), "{n}");
    }
}
