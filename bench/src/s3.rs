//! A local S3 server for the S3 rows: s3s-fs (SigV4-checking, objects as plain files under
//! `<dir>/<bucket>/<key>`) on 127.0.0.1, started like tests/s3_server/mod.rs does, behind a TCP
//! proxy that records every request with the time it arrived and the time its response head
//! came back (so "the PUT was answered" is observable). Stopped on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::free_port;

pub const ACCESS_KEY: &str = "BENCHAK";
pub const SECRET_KEY: &str = "bench-secret-3b9c";
pub const BUCKET: &str = "bkt";

pub fn available() -> bool {
    succeeds_quietly(Command::new("s3s-fs").arg("--version"))
}

/// Runs `cmd` with no input and its output discarded: true if it ran and exited 0.
fn succeeds_quietly(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One request seen by the proxy.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub sent: Instant,
    /// When the response's status line and headers had all arrived.
    pub answered: Option<Instant>,
    pub status: u16,
}

impl Req {
    /// The object key path (`bkt/prefix/...`), without query.
    pub fn path(&self) -> &str {
        self.target
            .split('?')
            .next()
            .unwrap_or("")
            .trim_start_matches('/')
    }

    /// ListObjects (V1 or V2): a GET on the bucket itself.
    pub fn is_list(&self) -> bool {
        self.method == "GET" && (self.target.contains("list-type=") || !self.path().contains('/'))
    }
}

pub struct S3Server {
    child: Child,
    port: u16,
    pub dir: PathBuf,
    pub proxy: Proxy,
}

impl S3Server {
    pub fn start(dir: &Path) -> S3Server {
        std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        let up = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "s3s-fs did not start on port {port}");
        S3Server {
            child,
            port,
            dir: dir.to_path_buf(),
            proxy: Proxy::start(port),
        }
    }

    /// CPU seconds s3s-fs has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::harness::proc_cpu_seconds(self.child.id() as i32)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port)
    }

    /// Where objects under `prefix` land on disk.
    pub fn prefix_dir(&self, prefix: &str) -> PathBuf {
        self.dir.join(BUCKET).join(prefix)
    }

    /// The file s3s-fs stores for a request's key.
    pub fn object_file(&self, req: &Req) -> PathBuf {
        self.dir.join(req.path())
    }

    /// A replica URL straight to s3s-fs, bypassing the proxy (for restores: the proxy's
    /// extra copy through this process would be counted against our client).
    pub fn direct_url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{}",
            self.port
        )
    }

    /// Seconds curl takes to GET into /dev/null every object under `prefix` whose key holds
    /// `part`, up to 8 at once: what s3s-fs alone needs to serve them, the floor of any
    /// client's restore from it on this machine. None if curl is missing or a GET failed.
    pub fn curl_download_secs(&self, prefix: &str, part: &str) -> Option<f64> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let bucket = self.dir.join(BUCKET);
        let mut files = Vec::new();
        walk(&self.prefix_dir(prefix), &mut files);
        let keys: Vec<String> = files
            .iter()
            .filter_map(|f| f.strip_prefix(&bucket).ok())
            .map(|k| k.to_string_lossy().into_owned())
            .filter(|k| k.contains(part) && (k.ends_with(".gz") || k.ends_with(".lz4")))
            .collect();
        if keys.is_empty() {
            return None;
        }
        // One curl process for all of them, up to 8 at once (as restore's -parallelism 8):
        // per-process start-up would otherwise be counted once per object.
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--no-progress-meter",
            "--fail",
            "-Z",
            "--parallel-max",
            "8",
        ])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
        .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        for k in &keys {
            cmd.arg(format!("http://127.0.0.1:{}/{BUCKET}/{k}", self.port))
                .args(["-o", "/dev/null"]);
        }
        let t = Instant::now();
        succeeds_quietly(&mut cmd).then(|| t.elapsed().as_secs_f64())
    }

    /// Environment with the credentials, for `litestream restore URL`.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY),
            ("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
    }

    pub fn replica_yaml(
        &self,
        name: &str,
        prefix: &str,
        sync: Option<&str>,
        compression: Option<&str>,
    ) -> String {
        let mut y = format!(
            "      - type: s3\n        name: {name}\n        bucket: {BUCKET}\n        path: {prefix}\n        endpoint: {}\n        access-key-id: {ACCESS_KEY}\n        secret-access-key: {SECRET_KEY}\n",
            self.endpoint()
        );
        if let Some(s) = sync {
            y.push_str(&format!("        sync-interval: {s}\n"));
        }
        if let Some(c) = compression {
            y.push_str(&format!("        compression: {c}\n"));
        }
        y
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.proxy.close();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Proxy {
    pub port: u16,
    closed: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Req>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            closed: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (closed, requests, conns) = (p.closed.clone(), p.requests.clone(), p.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                let pending = Arc::new(Mutex::new(VecDeque::new()));
                let (c2, s2, p2, r2) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    pending.clone(),
                    requests.clone(),
                );
                let requests = requests.clone();
                std::thread::spawn(move || forward_requests(client, server, requests, pending));
                std::thread::spawn(move || forward_responses(s2, c2, r2, p2));
            }
        });
        p
    }

    /// A mark: requests after it are returned by [`Proxy::since`].
    pub fn mark(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn since(&self, mark: usize) -> Vec<Req> {
        self.requests.lock().unwrap()[mark..].to_vec()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one HTTP head (request or response) into `head`; None at EOF.
fn read_head(r: &mut impl BufRead, head: &mut Vec<u8>) -> Option<Vec<String>> {
    head.clear();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Some(lines);
        }
        lines.push(String::from_utf8_lossy(&line).trim().to_string());
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Our client never sends chunked request bodies: Content-Length frames them.
fn forward_requests(
    client: TcpStream,
    mut server: TcpStream,
    requests: Arc<Mutex<Vec<Req>>>,
    pending: Arc<Mutex<VecDeque<usize>>>,
) {
    let mut r = BufReader::new(client);
    let mut head = Vec::new();
    loop {
        let Some(lines) = read_head(&mut r, &mut head) else {
            let _ = server.shutdown(Shutdown::Both);
            return;
        };
        let len: u64 = header(&lines, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut parts = lines
            .first()
            .map(|l| l.split_whitespace())
            .into_iter()
            .flatten();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        {
            let mut reqs = requests.lock().unwrap();
            pending.lock().unwrap().push_back(reqs.len());
            reqs.push(Req {
                method,
                target,
                sent: Instant::now(),
                answered: None,
                status: 0,
            });
        }
        if server.write_all(&head).is_err() {
            return;
        }
        if std::io::copy(&mut (&mut r).take(len), &mut server).is_err() {
            return;
        }
    }
}

/// Copies responses back, stamping each request with the time its response head arrived.
fn forward_responses(
    server: TcpStream,
    mut client: TcpStream,
    requests: Arc<Mutex<Vec<Req>>>,
    pending: Arc<Mutex<VecDeque<usize>>>,
) {
    let mut r = BufReader::new(server);
    let mut head = Vec::new();
    loop {
        let Some(lines) = read_head(&mut r, &mut head) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let now = Instant::now();
        let status: u16 = lines
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if client.write_all(&head).is_err() {
            return;
        }
        if (100..200).contains(&status) {
            continue;
        }
        let idx = pending.lock().unwrap().pop_front();
        let mut is_head = false;
        if let Some(i) = idx {
            let mut reqs = requests.lock().unwrap();
            reqs[i].answered = Some(now);
            reqs[i].status = status;
            is_head = reqs[i].method == "HEAD";
        }
        if is_head || status == 204 || status == 304 {
            continue;
        }
        let chunked = header(&lines, "transfer-encoding")
            .map(|v| v.eq_ignore_ascii_case("chunked"))
            .unwrap_or(false);
        let ok = if chunked {
            copy_chunked(&mut r, &mut client)
        } else if let Some(len) = header(&lines, "content-length").and_then(|v| v.parse().ok()) {
            std::io::copy(&mut (&mut r).take(len), &mut client).is_ok()
        } else {
            let _ = std::io::copy(&mut r, &mut client);
            false
        };
        if !ok {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn copy_chunked(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> bool {
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 || w.write_all(&line).is_err() {
            return false;
        }
        let size_text = String::from_utf8_lossy(&line);
        let size_hex = size_text.trim().split(';').next().unwrap_or("");
        let Ok(size) = u64::from_str_radix(size_hex, 16) else {
            return false;
        };
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t).unwrap_or(0) == 0 || w.write_all(&t).is_err() {
                    return false;
                }
                if t == b"\r\n" || t == b"\n" {
                    return true;
                }
            }
        }
        // The chunk and its CRLF.
        if std::io::copy(&mut (&mut *r).take(size + 2), w).is_err() {
            return false;
        }
    }
}
