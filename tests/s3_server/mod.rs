//! A real S3 server for integration tests: s3s-fs (verifies SigV4 signatures) on 127.0.0.1,
//! behind a small TCP proxy that counts requests and can cut the connection to simulate an
//! outage. Objects land as plain files under `<dir>/<bucket>/<key>`, so the file-tree helpers
//! of `common` can inspect what the bucket holds. Everything is stopped on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ACCESS_KEY: &str = "TESTAK";
pub const SECRET_KEY: &str = "test-secret-do-not-log-7f3a";
pub const BUCKET: &str = "bkt";
pub const PREFIX: &str = "backups/app";

/// `None` (with a message) when s3s-fs is not installed and we are not under CI.
pub fn s3s_fs_available() -> bool {
    let ok = Command::new("s3s-fs")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "s3s-fs missing under CI; run scripts/install-test-prereqs.sh"
        );
        eprintln!("SKIP: s3s-fs not installed (scripts/install-test-prereqs.sh installs it)");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One recorded request: method and path (with query).
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
}

pub struct S3Server {
    child: Child,
    pub dir: PathBuf,
    server_port: u16,
    pub proxy: Proxy,
}

impl S3Server {
    /// Starts s3s-fs on a free loopback port with `dir` as its store, and the proxy.
    pub fn start(dir: &Path) -> S3Server {
        std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
        let server_port = free_port();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &server_port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start s3s-fs");
        let up = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            TcpStream::connect(("127.0.0.1", server_port)).is_ok()
        });
        assert!(up, "s3s-fs did not start on port {server_port}");
        let proxy = Proxy::start(server_port);
        S3Server {
            child,
            dir: dir.to_path_buf(),
            server_port,
            proxy,
        }
    }

    /// The endpoint clients use (through the proxy).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port)
    }

    /// Where the replica's objects appear on disk.
    pub fn replica_dir(&self) -> PathBuf {
        self.dir.join(BUCKET).join(PREFIX)
    }

    /// `s3://bkt/backups/app?endpoint=…` (credentials come from the environment).
    pub fn url(&self) -> String {
        format!("s3://{BUCKET}/{PREFIX}?endpoint={}", self.endpoint())
    }

    /// The replica block of a config (indented for `replicas:` under a db).
    pub fn replica_yaml(&self, secret: &str, sync_interval: &str) -> String {
        format!(
            "      - type: s3\n        name: s3\n        bucket: {BUCKET}\n        path: {PREFIX}\n        endpoint: {}\n        access-key-id: {ACCESS_KEY}\n        secret-access-key: {secret}\n        sync-interval: {sync_interval}\n",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.proxy.close();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the proxy treats requests, besides going down (`Proxy::set_down`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Read each request, never answer it until the fault ends, then drop the connection.
    Stall,
    /// Answer every request with this HTTP status (500, 503 …) without forwarding it.
    Status(u16),
}

/// A TCP proxy that records each HTTP request passing through and can go down (refusing new
/// connections and cutting open ones) and come back, stall, answer errors, or add keys of its
/// own to listings (a hostile store).
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Req>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    shared: Arc<Shared>,
}

/// Settings the forwarding threads read per request.
#[derive(Default)]
struct Shared {
    fault: Mutex<Option<Fault>>,
    /// Keys added to every ListObjectsV2 reply without a delimiter whose prefix they match.
    injected_keys: Mutex<Vec<String>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Proxy {
            port,
            up: Arc::new(AtomicBool::new(true)),
            closed: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(Mutex::new(Vec::new())),
            conns: Arc::new(Mutex::new(Vec::new())),
            shared: Arc::new(Shared::default()),
        };
        let (up, closed, requests, conns, shared) = (
            p.up.clone(),
            p.closed.clone(),
            p.requests.clone(),
            p.conns.clone(),
            p.shared.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                // Small request pieces must not wait for delayed ACKs (Nagle).
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let requests = requests.clone();
                let shared = shared.clone();
                std::thread::spawn(move || {
                    forward_requests(client, server, upstream, requests, shared)
                });
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        p
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }

    /// Refuses new connections and cuts every open one.
    pub fn set_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn set_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Sets how requests are treated from now on (`Fault::None` to heal).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = Some(fault);
    }

    /// Keys (full, with the replica prefix) that LIST replies will also name from now on.
    pub fn inject_list_keys(&self, keys: Vec<String>) {
        *self.shared.injected_keys.lock().unwrap() = keys;
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.set_down();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies HTTP/1.1 requests from `client` to `server`, recording each one. Requests carry a
/// Content-Length (our client never sends chunked bodies), which frames them. Under a fault,
/// or for a LIST that gets injected keys, the proxy answers itself.
fn forward_requests(
    client: TcpStream,
    mut server: TcpStream,
    upstream: u16,
    requests: Arc<Mutex<Vec<Req>>>,
    shared: Arc<Shared>,
) {
    let Ok(mut reply) = client.try_clone() else {
        return;
    };
    let mut r = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        let mut first = String::new();
        let mut len = 0u64;
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).to_string();
            if first.is_empty() {
                first = text.trim().to_string();
            } else if let Some((k, v)) = text.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        requests.lock().unwrap().push(Req {
            method: method.clone(),
            target: target.clone(),
        });
        let fault = shared.fault.lock().unwrap().clone().unwrap_or(Fault::None);
        match fault {
            Fault::None => {}
            Fault::Status(code) => {
                if std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).is_err() {
                    return;
                }
                let s3_code = if code == 503 {
                    "SlowDown"
                } else {
                    "InternalError"
                };
                let resp = s3_error_response(
                    &format!("{code} Injected"),
                    s3_code,
                    "injected by the test proxy",
                );
                if reply.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            Fault::Stall => {
                let _ = std::io::copy(&mut (&mut r).take(len), &mut std::io::sink());
                while *shared.fault.lock().unwrap() == Some(Fault::Stall) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = reply.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
        }
        let injected = shared.injected_keys.lock().unwrap().clone();
        if method == "GET"
            && target.contains("list-type=2")
            && !target.contains("delimiter")
            && !injected.is_empty()
        {
            let mut body = Vec::new();
            if (&mut r).take(len).read_to_end(&mut body).is_err() {
                return;
            }
            match list_with_injected_keys(upstream, &head, &body, &target, &injected) {
                Some(resp) if reply.write_all(&resp).is_ok() => continue,
                _ => {
                    let _ = reply.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        if server.write_all(&head).is_err() {
            return;
        }
        let mut body = (&mut r).take(len);
        if std::io::copy(&mut body, &mut server).is_err() {
            return;
        }
    }
}

/// Sends a LIST on a connection of its own (the signed request unchanged but for
/// `Connection: close`), and returns the reply with `keys` added where the requested prefix
/// covers them.
fn list_with_injected_keys(
    upstream: u16,
    head: &[u8],
    body: &[u8],
    target: &str,
    keys: &[String],
) -> Option<Vec<u8>> {
    let mut conn = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    let head = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let head = format!("{}\r\n\r\n", lines.join("\r\n"));
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(body).ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (resp_head, rest) = (
        String::from_utf8_lossy(&raw[..split]).to_string(),
        &raw[split + 4..],
    );
    let chunked = resp_head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let mut xml = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    let prefix = query_param(target, "prefix").unwrap_or_default();
    let extra: String = keys
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .map(|k| {
            format!(
                "<Contents><Key>{}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"0\"</ETag><Size>100</Size><StorageClass>STANDARD</StorageClass></Contents>",
                xml_escape(k)
            )
        })
        .collect();
    let text = String::from_utf8_lossy(&xml).to_string();
    if let Some(at) = text.rfind("</ListBucketResult>") {
        xml = format!("{}{extra}{}", &text[..at], &text[at..]).into_bytes();
    }
    let status = resp_head.lines().next()?.to_string();
    let mut out = format!(
        "{status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
        xml.len()
    )
    .into_bytes();
    out.extend_from_slice(&xml);
    Some(out)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&b[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    let value = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))?;
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An S3 error reply as a store sends it: `status` is the status line's code and reason
/// ("503 Slow Down"), `code` and `message` the XML error's.
pub fn s3_error_response(status: &str, code: &str, message: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}
