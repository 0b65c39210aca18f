//! An HTTP/1.1 proxy for restore tests in front of the S3 server: it parses each request
//! and response, so it can cut an object's body part-way (`Mode::Cut`) or hold object GETs
//! (`Mode::Stall`) or only WAL segment GETs (`Mode::StallWal`) unanswered while everything
//! else passes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::LoopbackServer;

/// What the proxy does to snapshot and WAL segment GETs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Cut the first `CUTS_PER_OBJECT` GETs of each object after `CUT_AFTER` body bytes.
    Cut,
    /// Never answer them (until the proxy is dropped).
    Stall,
    /// Never answer WAL segment GETs; snapshots pass.
    StallWal,
}

/// Body bytes a cut GET delivers before its connection is closed.
pub const CUT_AFTER: u64 = 300;
/// GETs of each object that are cut.
pub const CUTS_PER_OBJECT: u32 = 2;

/// What the cutting proxy saw.
#[derive(Default)]
pub struct Seen {
    /// GETs per object path.
    pub gets: HashMap<String, u32>,
    /// Requests that cut.
    pub cut: u32,
    /// GETs that carried a Range header.
    pub ranged: u32,
}

/// An HTTP/1.1 proxy to `upstream` that cuts the first `CUTS_PER_OBJECT` GETs of each
/// snapshot or WAL segment whose body is longer than `CUT_AFTER`, after that many bytes.
pub struct CutProxy {
    pub seen: Arc<Mutex<Seen>>,
    server: LoopbackServer,
}

impl CutProxy {
    pub fn start(upstream: u16, mode: Mode) -> CutProxy {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let server = LoopbackServer::start(move |client, closed| {
            let _ = serve(client, upstream, &s, mode, closed);
        });
        CutProxy { seen, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }
}

/// Reads one HTTP head (lines up to the blank one).
fn read_head(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            return Some(lines);
        }
        lines.push(line.trim_end().to_string());
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn write_head(w: &mut impl Write, head: &[String]) -> std::io::Result<()> {
    for l in head {
        w.write_all(l.as_bytes())?;
        w.write_all(b"\r\n")?;
    }
    w.write_all(b"\r\n")
}

/// One client connection, request by request, over one upstream connection.
fn serve(
    client: TcpStream,
    upstream: u16,
    seen: &Mutex<Seen>,
    mode: Mode,
    closed: &AtomicBool,
) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut to_client = client.try_clone()?;
    let mut to_server = server.try_clone()?;
    let mut from_client = BufReader::new(client);
    let mut from_server = BufReader::new(server);
    loop {
        let Some(req) = read_head(&mut from_client) else {
            return Ok(());
        };
        let mut parts = req[0].split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let len: u64 = header(&req, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let object = method == "GET"
            && !target.contains("list-type")
            && (target.contains("/snapshots/") || target.contains("/wal/"));
        let stalled = match mode {
            Mode::Stall => true,
            Mode::StallWal => target.contains("/wal/"),
            Mode::Cut => false,
        };
        if object && stalled {
            while !closed.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        write_head(&mut to_server, &req)?;
        std::io::copy(&mut (&mut from_client).take(len), &mut to_server)?;

        let Some(resp) = read_head(&mut from_server) else {
            return Ok(());
        };
        let status: u16 = resp[0]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body_len: Option<u64> = header(&resp, "content-length").and_then(|v| v.parse().ok());
        let chunked =
            header(&resp, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let path = target.split('?').next().unwrap_or("").to_string();
        let object = method == "GET"
            && !target.contains("list-type")
            && (path.contains("/snapshots/") || path.contains("/wal/"));
        let cut = {
            let mut s = seen.lock().unwrap();
            if object && header(&req, "range").is_some() {
                s.ranged += 1;
            }
            let n = if object {
                let n = s.gets.entry(path.clone()).or_default();
                *n += 1;
                *n
            } else {
                0
            };
            let cut = object
                && (200..300).contains(&status)
                && body_len.is_some_and(|l| l > CUT_AFTER)
                && n <= CUTS_PER_OBJECT;
            if cut {
                s.cut += 1;
            }
            cut
        };
        write_head(&mut to_client, &resp)?;
        if cut {
            std::io::copy(&mut (&mut from_server).take(CUT_AFTER), &mut to_client)?;
            to_client.flush()?;
            let _ = to_client.shutdown(Shutdown::Both);
            let _ = to_server.shutdown(Shutdown::Both);
            return Ok(());
        }
        if method == "HEAD" || status == 204 || status == 304 {
            continue;
        }
        if let Some(l) = body_len {
            std::io::copy(&mut (&mut from_server).take(l), &mut to_client)?;
        } else if chunked {
            loop {
                let mut line = String::new();
                from_server.read_line(&mut line)?;
                to_client.write_all(line.as_bytes())?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        let mut t = String::new();
                        from_server.read_line(&mut t)?;
                        to_client.write_all(t.as_bytes())?;
                        if t == "\r\n" || t.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                std::io::copy(
                    &mut (&mut from_server).take(size as u64 + 2),
                    &mut to_client,
                )?;
            }
        } else {
            std::io::copy(&mut from_server, &mut to_client)?;
            return Ok(());
        }
    }
}
