//! S3 server-side encryption (`sse-kms-key-id`, `sse-customer-key`/`-key-path`) against a
//! real S3 server (s3s-fs on 127.0.0.1, which checks SigV4, so the SSE headers are shown to
//! be signed), behind a proxy that records every request's headers and enforces SSE-C as
//! AWS does: an object written with a customer key is only read (GET, HEAD) with that key;
//! without one the store answers 400, with a wrong one 403.

mod common;
mod s3_server;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use s3_server::*;

const SSE_C_KEY: &str = "x-amz-server-side-encryption-customer-key";
const SSE_C_ALG: &str = "x-amz-server-side-encryption-customer-algorithm";
const SSE_C_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";
const SSE: &str = "x-amz-server-side-encryption";
const SSE_KMS_ID: &str = "x-amz-server-side-encryption-aws-kms-key-id";
const KMS_KEY: &str = "alias/litestream-test";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The base64 MD5 S3 expects beside a base64 key.
fn key_md5(key_b64: &str) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .unwrap();
    b64(&md5::compute(raw).0)
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
}

impl Seen {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
    fn query(&self) -> &str {
        self.target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
    }
    fn has_query(&self, name: &str) -> bool {
        self.query()
            .split('&')
            .any(|kv| kv == name || kv.starts_with(&format!("{name}=")))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// A request on one object (not the bucket: LIST, batch DELETE).
    fn is_object(&self) -> bool {
        self.path()
            .strip_prefix(&format!("/{BUCKET}/"))
            .is_some_and(|k| !k.is_empty())
    }
    fn kind(&self) -> &'static str {
        match (self.method.as_str(), self.is_object()) {
            ("PUT", true) if self.has_query("partNumber") => "part",
            ("PUT", true) => "put",
            ("POST", true) if self.has_query("uploads") => "create-multipart",
            ("POST", true) if self.has_query("uploadId") => "complete-multipart",
            ("DELETE", true) => "abort-multipart",
            ("GET", true) => "get",
            ("HEAD", true) => "head",
            ("GET", false) => "list",
            ("POST", false) if self.has_query("delete") => "delete",
            _ => "other",
        }
    }
}

/// An HTTP/1.1 proxy in front of the S3 server: one request per connection (answers carry
/// `Connection: close`), every request recorded, SSE-C enforced on reads.
struct SseProxy {
    seen: Arc<Mutex<Vec<Seen>>>,
    server: LoopbackServer,
}

/// Object path → MD5 of the SSE-C key it was written with.
type Written = Arc<Mutex<HashMap<String, String>>>;

impl SseProxy {
    fn start(upstream: u16) -> SseProxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let written: Written = Arc::default();
        let s = seen.clone();
        let server = LoopbackServer::start(move |client, _| {
            let _ = serve(client, upstream, &s, &written);
        });
        SseProxy { seen, server }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    seen: &Mutex<Vec<Seen>>,
    written: &Written,
) -> Option<()> {
    let mut reply = client.try_clone().ok()?;
    let mut r = BufReader::new(client);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut first = lines[0].split_whitespace();
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: HashMap<String, String> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: u64 = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    (&mut r).take(len).read_to_end(&mut body).ok()?;
    let req = Seen {
        method,
        target,
        headers,
    };
    seen.lock().unwrap().push(req.clone());

    let sent_md5 = req.header(SSE_C_KEY).map(key_md5);
    let path = req.path().to_string();
    match req.kind() {
        "put" | "create-multipart" => {
            let mut w = written.lock().unwrap();
            match sent_md5 {
                Some(m) => w.insert(path, m),
                None => w.remove(&path),
            };
        }
        "get" | "head" => {
            let stored = written.lock().unwrap().get(&path).cloned();
            if let Some(stored) = stored {
                let refusal = match sent_md5 {
                    None => Some((400, "InvalidRequest", "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.")),
                    Some(m) if m != stored => Some((403, "AccessDenied", "Access Denied")),
                    Some(_) => None,
                };
                if let Some((status, code, message)) = refusal {
                    let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>");
                    let body = if req.method == "HEAD" { "" } else { &xml };
                    let resp = format!(
                        "HTTP/1.1 {status} Refused\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        if req.method == "HEAD" { 0 } else { xml.len() }
                    );
                    reply.write_all(resp.as_bytes()).ok()?;
                    let _ = reply.shutdown(Shutdown::Both);
                    return Some(());
                }
            }
        }
        _ => {}
    }

    let mut server = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    let mut head = String::new();
    head.push_str(&lines[0]);
    head.push_str("\r\n");
    for l in &lines[1..] {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            head.push_str(l);
            head.push_str("\r\n");
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    server.write_all(head.as_bytes()).ok()?;
    server.write_all(&body).ok()?;
    // The answer's head with its Connection header replaced, then the rest as it comes.
    let mut sr = BufReader::new(server);
    let mut out = String::new();
    loop {
        let mut line = String::new();
        if sr.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.trim_end().is_empty() {
            break;
        }
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(&line);
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    reply.write_all(out.as_bytes()).ok()?;
    std::io::copy(&mut sr, &mut reply).ok()?;
    let _ = reply.shutdown(Shutdown::Both);
    Some(())
}

struct Setup {
    env: Env,
    _s3: S3Server,
    proxy: SseProxy,
}

fn setup(name: &str) -> Option<Setup> {
    if !s3s_fs_available() {
        return None;
    }
    let env = Env::new(name);
    let s3 = S3Server::start(&env.root.join("s3"));
    let proxy = SseProxy::start(s3.proxy.port);
    Some(Setup {
        env,
        _s3: s3,
        proxy,
    })
}

/// The config: debug logging, one db, one s3 replica (through the SSE proxy) with `sse`
/// (indented replica keys).
fn write_config(s: &Setup, sse: &str) {
    let y = format!(
        "logging:\n  level: debug\ndbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    min-checkpoint-page-count: 200\n    replicas:\n      - type: s3\n        name: vault\n        bucket: {BUCKET}\n        path: {PREFIX}\n        endpoint: {}\n        access-key-id: {ACCESS_KEY}\n        secret-access-key: {SECRET_KEY}\n        sync-interval: 100ms\n{sse}",
        s.env.db.display(),
        s.proxy.endpoint()
    );
    fs::write(&s.env.config, y).unwrap();
}

fn replica_dir(s: &Setup) -> std::path::PathBuf {
    s.env.root.join("s3").join(BUCKET).join(PREFIX)
}

/// An app db of ~10 MB of incompressible rows (so the first snapshot is a multipart upload
/// of two parts), replicated by a daemon that is then given more rows (WAL segments) and
/// stopped. Returns the digest of the data and the daemon's log.
fn replicate(s: &Setup) -> (Digest, String) {
    let app = create_app_db(&s.env.db, 4096);
    tx(&app, |c| {
        for id in 1001..=1010 {
            insert_row(c, id, 1024 * 1024);
        }
    });
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let mut d = s.env.start("daemon");
    let dir = replica_dir(s);
    let ok = wait_until(Duration::from_secs(120), || {
        d.assert_alive();
        generations(&dir)
            .iter()
            .any(|g| !snapshot_indexes(&dir, g).is_empty())
    });
    assert!(ok, "no snapshot in the bucket\n{}", d.log_text());
    for id in 1..=20 {
        insert_row(&app, id, 2000);
    }
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        generations(&dir)
            .iter()
            .any(|g| wal_segments(&dir, g).len() >= 2)
    });
    assert!(ok, "no WAL segments in the bucket\n{}", d.log_text());
    // Let the last rows reach the bucket before the stop.
    std::thread::sleep(Duration::from_millis(500));
    let stopped = d.stop_ok();
    drop(app);
    (table_digest(&s.env.db, "t"), stopped.log)
}

/// `restore` through the proxy with `args` before the output path; the output path.
fn restore(s: &Setup, args: &[&str], vars: &[(&str, &str)]) -> (Out, std::path::PathBuf) {
    let out = s.env.fresh("restored");
    let mut all = vec!["restore", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = run_env(&s.env.root, &all, vars, Duration::from_secs(120));
    (o, out)
}

fn url(s: &Setup) -> String {
    format!("s3://{BUCKET}/{PREFIX}?endpoint={}", s.proxy.endpoint())
}

const CREDS: [(&str, &str); 2] = [
    ("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY),
    ("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY),
];

/// Asserts each recorded request carries the SSE-C headers (with `key` and its MD5) exactly
/// when its kind needs them, and never an SSE-KMS header.
fn assert_sse_c_headers(seen: &[Seen], key: &str) {
    let md5 = key_md5(key);
    for r in seen {
        let needs = matches!(
            r.kind(),
            "put" | "part" | "create-multipart" | "complete-multipart" | "get" | "head"
        );
        if needs {
            assert_eq!(r.header(SSE_C_ALG), Some("AES256"), "{r:?}");
            assert_eq!(r.header(SSE_C_KEY), Some(key), "{} {}", r.method, r.target);
            assert_eq!(
                r.header(SSE_C_MD5),
                Some(md5.as_str()),
                "{} {}",
                r.method,
                r.target
            );
            // Signed, not merely sent (s3s-fs checked the signature too).
            let auth = r.header("authorization").unwrap_or_default();
            assert!(
                auth.contains(SSE_C_KEY) && auth.contains(SSE_C_MD5),
                "{auth}"
            );
        } else {
            for h in [SSE_C_ALG, SSE_C_KEY, SSE_C_MD5] {
                assert_eq!(r.header(h), None, "{h} on {} {}", r.method, r.target);
            }
        }
        assert_eq!(r.header(SSE), None, "{} {}", r.method, r.target);
    }
}

fn count(seen: &[Seen], kind: &str) -> usize {
    seen.iter().filter(|r| r.kind() == kind).count()
}

#[test]
fn sse_c_replicates_and_restores_with_the_key_on_every_object_request() {
    let Some(s) = setup("sse-c") else { return };
    let key = b64(&Rng::new(77).bytes(32));
    let key_file = s.env.root.join("sse.key");
    fs::write(&key_file, format!("{key}\n")).unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    write_config(
        &s,
        &format!(
            "        sse-customer-algorithm: AES256\n        sse-customer-key-path: {}\n",
            key_file.display()
        ),
    );
    let (digest, log) = replicate(&s);
    let seen = s.proxy.seen();
    assert_sse_c_headers(&seen, &key);
    assert!(count(&seen, "part") >= 2, "no multipart upload: {seen:#?}");
    assert_eq!(
        count(&seen, "create-multipart"),
        count(&seen, "complete-multipart")
    );
    assert!(count(&seen, "put") > 2 && count(&seen, "list") > 0);
    assert!(!log.contains(&key), "the key is in the daemon's log");
    assert!(
        log.contains("level=DEBUG") || log.contains("\"level\":\"DEBUG\""),
        "not at debug level:\n{log}"
    );
    assert!(!log.contains("can be read by other users"), "{log}");

    // Restore with the config: the key goes on every GET.
    s.proxy.clear();
    let (o, out) = restore(
        &s,
        &[
            "-config",
            s.env.config.to_str().unwrap(),
            s.env.db.to_str().unwrap(),
        ],
        &[],
    );
    o.assert_ok("restore -config with the SSE-C key");
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), digest);
    assert_blobs_match_hash(&out);
    let seen = s.proxy.seen();
    assert!(count(&seen, "get") >= 3, "{seen:#?}");
    assert_sse_c_headers(&seen, &key);
    assert!(!o.stdout.contains(&key) && !o.stderr.contains(&key));

    // From the URL, without a config: no key, a clear error and nothing written.
    let (o, out) = restore(&s, &[&url(&s)], &CREDS);
    o.assert_fails("restore without the SSE-C key");
    let line = one_line(&o, "restore without the SSE-C key");
    eprintln!("without the key: {line}");
    assert!(
        line.contains("SSE-C") && line.contains("need their key") && line.contains(PREFIX),
        "{line}"
    );
    assert!(!out.exists(), "{} written", out.display());
    let stem = out.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(leftovers(&s.env.root, &stem), Vec::<String>::new());

    // A wrong key: refused too, the key named as a suspect, neither key shown.
    let wrong = b64(&Rng::new(78).bytes(32));
    let vars = [
        CREDS[0],
        CREDS[1],
        ("LITESTREAM_SSE_CUSTOMER_KEY", wrong.as_str()),
    ];
    let (o, out) = restore(&s, &[&url(&s)], &vars);
    o.assert_fails("restore with a wrong SSE-C key");
    let line = one_line(&o, "restore with a wrong SSE-C key");
    eprintln!("with a wrong key: {line}");
    assert!(line.contains("SSE-C key") && line.contains("403"), "{line}");
    assert!(!line.contains(&wrong) && !line.contains(&key), "{line}");
    assert!(!out.exists());

    // The key from the environment: LITESTREAM_SSE_CUSTOMER_KEY, or _PATH (a key file others
    // can read gets a warning).
    let vars = [
        CREDS[0],
        CREDS[1],
        ("LITESTREAM_SSE_CUSTOMER_KEY", key.as_str()),
    ];
    let (o, out) = restore(&s, &[&url(&s)], &vars);
    o.assert_ok("restore from the URL with LITESTREAM_SSE_CUSTOMER_KEY");
    assert_eq!(table_digest(&out, "t"), digest);
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
    let path = key_file.to_str().unwrap();
    let vars = [
        CREDS[0],
        CREDS[1],
        ("LITESTREAM_SSE_CUSTOMER_KEY_PATH", path),
    ];
    let (o, out) = restore(&s, &[&url(&s)], &vars);
    o.assert_ok("restore from the URL with LITESTREAM_SSE_CUSTOMER_KEY_PATH");
    assert_eq!(table_digest(&out, "t"), digest);
    let text = format!("{}{}", o.stdout, o.stderr);
    assert!(text.contains("can be read by other users"), "{text}");
    assert!(!text.contains(&key));
}

#[test]
fn sse_kms_asks_for_the_kms_key_when_objects_are_created_only() {
    let Some(s) = setup("sse-kms") else { return };
    write_config(&s, &format!("        sse-kms-key-id: {KMS_KEY}\n"));
    let (digest, _) = replicate(&s);
    let seen = s.proxy.seen();
    assert!(
        count(&seen, "part") >= 2 && count(&seen, "put") > 2,
        "{seen:#?}"
    );
    for r in &seen {
        let creates = matches!(r.kind(), "put" | "create-multipart");
        let (sse, id) = (r.header(SSE), r.header(SSE_KMS_ID));
        if creates {
            assert_eq!(
                (sse, id),
                (Some("aws:kms"), Some(KMS_KEY)),
                "{} {}",
                r.method,
                r.target
            );
            let auth = r.header("authorization").unwrap_or_default();
            assert!(auth.contains(SSE_KMS_ID), "{auth}");
        } else {
            // S3 refuses these headers on parts, reads, listings and deletes.
            assert_eq!((sse, id), (None, None), "{} {}", r.method, r.target);
        }
        assert_eq!(r.header(SSE_C_KEY), None);
    }
    // Reading SSE-KMS objects needs nothing: a plain URL restore.
    s.proxy.clear();
    let (o, out) = restore(&s, &[&url(&s)], &CREDS);
    o.assert_ok("restore of an SSE-KMS replica");
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), digest);
    assert!(s.proxy.seen().iter().all(|r| r.header(SSE).is_none()));
}

#[test]
fn sse_config_mistakes_are_one_line_each() {
    let env = Env::new("sse-config");
    let key_file = env.root.join("missing.key");
    let cases: Vec<(String, &str)> = vec![
        (
            "        sse-kms-key-id: k\n        sse-customer-key: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n".into(),
            "exclusive",
        ),
        ("        sse-customer-key: c2hvcnQ=\n".into(), "32 bytes"),
        (
            format!("        sse-customer-key-path: {}\n", key_file.display()),
            "cannot read the SSE-C key file",
        ),
    ];
    for (sse, want) in cases {
        let y = format!(
            "dbs:\n  - path: \"{}\"\n    replicas:\n      - type: s3\n        name: vault\n        bucket: b\n        endpoint: http://127.0.0.1:9\n        access-key-id: A\n        secret-access-key: S\n{sse}",
            env.db.display()
        );
        fs::write(&env.config, y).unwrap();
        let (o, out) = env.try_restore_config();
        assert_ne!(o.code, Some(0), "{sse}");
        let line = one_line(&o, &sse);
        assert!(line.contains(want), "{line}");
        assert!(
            !line.contains("MDEyMzQ1") && !line.contains("c2hvcnQ="),
            "{line}"
        );
        assert!(!out.exists());
    }
    // SSE on a file replica is a mistake, not ignored.
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    replicas:\n      - path: {}\n        sse-kms-key-id: k\n",
        env.db.display(),
        env.replica.display()
    );
    fs::write(&env.config, y).unwrap();
    let o = env.run(&["replicate", "-config", env.config.to_str().unwrap()]);
    assert_ne!(o.code, Some(0));
    let text = format!("{}{}", o.stdout, o.stderr);
    assert!(
        text.contains("sse-kms-key-id: only valid for an s3 replica"),
        "{text}"
    );
}
