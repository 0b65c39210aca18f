//! S3 credentials from the AWS chain (issue #26), each source against a stand-in on
//! 127.0.0.1: IMDSv2 and the ECS endpoint as small HTTP servers here (the token dance and
//! expiry as AWS documents them), a `credential_process` script, and moto's STS for
//! `AssumeRoleWithWebIdentity` and a profile's `role_arn`. The store is s3s-fs (which checks
//! SigV4 with the keys the stand-ins hand out), or moto's S3 for the STS tests (moto's STS
//! issues keys of its own). Every daemon and restore gets a clean environment: no AWS or
//! LITESTREAM variable of the machine's, HOME in the test's directory.

mod common;
mod s3_server;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use s3_server::*;

/// One request a stand-in received.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
}

type Handler = dyn Fn(&Req) -> (u16, String) + Send + Sync;

/// A one-request-per-connection HTTP server on 127.0.0.1 answering with `handler`; records
/// every request; stopped on drop.
struct Stand {
    requests: Arc<Mutex<Vec<Req>>>,
    server: LoopbackServer,
}

impl Stand {
    fn start(handler: Box<Handler>) -> Stand {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let server = LoopbackServer::start(move |conn, _| {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let Some((req, _body)) = read_request(&mut r) else {
                return;
            };
            reqs.lock().unwrap().push(req.clone());
            let (status, body) = handler(&req);
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut w = conn;
            let _ = w.write_all(resp.as_bytes());
            let _ = w.shutdown(Shutdown::Both);
        });
        Stand { requests, server }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request (head and Content-Length body).
fn read_request(r: &mut impl BufRead) -> Option<(Req, Vec<u8>)> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: u64 = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body).ok()?;
    let mut parts = first.split_whitespace();
    let req = Req {
        method: parts.next()?.to_string(),
        path: parts.next()?.to_string(),
        headers,
    };
    Some((req, body))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The credentials JSON of ECS and IMDS: s3s-fs's keys with a session token.
fn creds_json(token: &str, expires: SystemTime) -> String {
    format!(
        r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{ACCESS_KEY}","SecretAccessKey":"{SECRET_KEY}","Token":"{token}","Expiration":"{}"}}"#,
        rfc3339(expires)
    )
}

/// Variables a test may set; every other AWS_* or LITESTREAM_* of the machine's is removed.
fn command(env: &Env, vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if k.starts_with("AWS_") || k.starts_with("LITESTREAM_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", &env.root)
        .envs(vars.iter().copied())
        .current_dir(&env.root)
        .stdin(Stdio::null());
    c
}

/// A `replicate -config` daemon with these variables; SIGKILLed on drop if still running.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(env: &Env, vars: &[(&str, &str)], label: &str) -> Proc {
        let log = env.root.join(format!("{label}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = command(env, vars)
            .args([
                OsString::from("replicate"),
                "-config".into(),
                env.config.clone().into(),
            ])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait, and the log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
        self.log()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The config: the app db replicated to `bucket`/`path` at `endpoint`, no keys in it.
fn write_config(env: &Env, endpoint: &str, bucket: &str) {
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    replicas:\n      - type: s3\n        name: s3\n        bucket: {bucket}\n        path: {PREFIX}\n        endpoint: {endpoint}\n        sync-interval: 100ms\n",
        env.db.display()
    );
    fs::write(&env.config, y).unwrap();
}

/// Restores (with these variables) until the copy holds ids 1..=n; panics with the last
/// failure after 60 s.
fn wait_restored(env: &Env, vars: &[(&str, &str)], n: i64) -> PathBuf {
    let start = Instant::now();
    loop {
        let out = env.fresh("restored");
        let o = command(env, vars)
            .args(["restore", "-config", env.config.to_str().unwrap(), "-o"])
            .arg(&out)
            .arg(&env.db)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_no_secret(&err);
        if o.status.success() && out.exists() && id_summary(&out) == (n, 1, n) {
            assert_integrity_ok(&out);
            assert_blobs_match_hash(&out);
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no restore with ids 1..={n} within 60 s; last: {:?} {err}",
            o.status
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Replicates ids 1..=n with the daemon under `vars`, restores them under `vars`, and
/// returns the daemon's log.
fn replicate_and_restore(env: &Env, vars: &[(&str, &str)], n: i64) -> String {
    let app = create_app_db(&env.db, 4096);
    let d = Proc::start(env, vars, "daemon");
    insert_ids(&app, 1, n);
    wait_restored(env, vars, n);
    let log = d.stop();
    assert_no_secret(&log);
    log
}

/// Neither s3s-fs's secret key nor a session token the stand-ins issue (`…-tok`,
/// `imds-session-…`) is in `text`.
fn assert_no_secret(text: &str) {
    for s in [SECRET_KEY, "-tok", "imds-session"] {
        assert!(!text.contains(s), "{s:?} in:\n{text}");
    }
}

#[test]
fn imds_v2_session_token_role_and_credentials() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("creds-imds");
    let s3 = S3Server::start(&env.root.join("s3"));
    // IMDSv2: a PUT with a TTL gives a session token; every GET must carry it.
    let tokens: Arc<Mutex<HashSet<String>>> = Arc::default();
    let n = Arc::new(AtomicU64::new(0));
    let t = tokens.clone();
    let imds = Stand::start(Box::new(move |r: &Req| {
        let base = "/latest/meta-data/iam/security-credentials/";
        if r.method == "PUT" && r.path == "/latest/api/token" {
            let ttl: u64 = match r.headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(v) => v.parse().unwrap_or(0),
                None => return (400, String::new()),
            };
            if !(1..=21600).contains(&ttl) {
                return (400, String::new());
            }
            let tok = format!("imds-session-{}", n.fetch_add(1, Ordering::SeqCst));
            t.lock().unwrap().insert(tok.clone());
            return (200, tok);
        }
        let ok = r
            .headers
            .get("x-aws-ec2-metadata-token")
            .is_some_and(|v| t.lock().unwrap().contains(v));
        if !ok {
            return (401, String::new());
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", p) if p == base => (200, "litestream-role".into()),
            ("GET", p) if p == format!("{base}litestream-role") => (
                200,
                creds_json(
                    "imds-tok",
                    SystemTime::now() + Duration::from_secs(6 * 3600),
                ),
            ),
            _ => (404, String::new()),
        }
    }));
    write_config(&env, &s3.endpoint(), BUCKET);
    let endpoint = imds.url();
    let vars = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str())];
    let log = replicate_and_restore(&env, &vars, 60);
    assert!(
        log.contains(&format!(
            "source=\"EC2 instance metadata (IMDSv2, 127.0.0.1:{})\"",
            imds.server.port
        )),
        "{log}"
    );
    let reqs = imds.requests();
    assert_eq!(reqs[0].method, "PUT", "{reqs:?}");
    assert!(
        reqs.iter()
            .all(|r| r.method == "PUT" || r.headers.contains_key("x-aws-ec2-metadata-token")),
        "{reqs:?}"
    );
    // The daemon fetched once (the keys last 6 h), not per request.
    let fetches = reqs
        .iter()
        .filter(|r| r.path.ends_with("/litestream-role"))
        .count();
    assert!(fetches <= 3, "{fetches} credential fetches: {reqs:?}");
}

#[test]
fn imds_off_ec2_and_disabled_are_clear_errors() {
    let env = Env::new("creds-none");
    write_config(&env, "http://127.0.0.1:9", BUCKET);
    // Nothing listens there: the chain ends at IMDS, which fails fast and is named.
    let closed = format!("http://127.0.0.1:{}", free_port());
    for vars in [
        vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed.as_str())],
        vec![("AWS_EC2_METADATA_DISABLED", "true")],
    ] {
        let start = Instant::now();
        let o = command(&env, &vars)
            .args(["generations", "-config", env.config.to_str().unwrap()])
            .arg(&env.db)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("no S3 credentials found"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }
}

#[test]
fn ecs_credentials_with_an_authorization_token_file() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("creds-ecs");
    let s3 = S3Server::start(&env.root.join("s3"));
    let token_file = env.root.join("ecs-token");
    fs::write(&token_file, "ecs-auth-SECRET-1\n").unwrap();
    let ecs = Stand::start(Box::new(|r: &Req| {
        if r.path != "/v1/credentials" {
            return (404, String::new());
        }
        match r.headers.get("authorization").map(String::as_str) {
            Some("ecs-auth-SECRET-1") => (
                200,
                creds_json("ecs-tok", SystemTime::now() + Duration::from_secs(3600)),
            ),
            _ => (401, String::new()),
        }
    }));
    write_config(&env, &s3.endpoint(), BUCKET);
    let full = format!("{}/v1/credentials", ecs.url());
    let tf = token_file.to_str().unwrap();
    let vars = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tf),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let log = replicate_and_restore(&env, &vars, 40);
    assert!(
        log.contains("ECS container credentials (127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("ecs-auth-SECRET"), "{log}");
    // A wrong token is refused by the endpoint: the error names the endpoint, not the token.
    fs::write(&token_file, "wrong-SECRET-2").unwrap();
    let o = command(&env, &vars)
        .args(["generations", "-config", env.config.to_str().unwrap()])
        .arg(&env.db)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("HTTP 401") && err.contains("ECS"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
}

#[test]
fn credential_process_of_a_profile() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("creds-process");
    let s3 = S3Server::start(&env.root.join("s3"));
    let script = env.root.join("creds.sh");
    let count = env.root.join("runs");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{}'\nprintf '{{\"Version\": 1, \"AccessKeyId\": \"{ACCESS_KEY}\", \"SecretAccessKey\": \"{SECRET_KEY}\", \"SessionToken\": \"proc-tok\", \"Expiration\": \"%s\"}}\\n' \"$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)\"\n",
            count.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let aws_config = env.root.join("aws-config");
    fs::write(
        &aws_config,
        format!(
            "[default]\nregion = eu-west-1\n\n[profile backup]\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();
    write_config(&env, &s3.endpoint(), BUCKET);
    let cf = aws_config.to_str().unwrap();
    let vars = [
        ("AWS_CONFIG_FILE", cf),
        ("AWS_PROFILE", "backup"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let log = replicate_and_restore(&env, &vars, 40);
    assert!(log.contains("profile backup (credential_process)"), "{log}");
    assert!(fs::read_to_string(&count).unwrap().lines().count() >= 2);
    // A profile that is not there is named, with the files looked in.
    let o = command(&env, &[("AWS_CONFIG_FILE", cf), ("AWS_PROFILE", "nope")])
        .args(["generations", "-config", env.config.to_str().unwrap()])
        .arg(&env.db)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("\"nope\"") && err.contains(cf), "{err}");
}

/// A TCP proxy in front of the store that answers `400 ExpiredToken` (as S3 does) to every
/// request signed with a session token that has expired or that the test revoked.
struct TokenGate {
    /// Token → when it expires.
    issued: Arc<Mutex<HashMap<String, SystemTime>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
    refused: Arc<AtomicU64>,
    server: LoopbackServer,
}

impl TokenGate {
    fn start(upstream: u16) -> TokenGate {
        let issued: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
        let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
        let refused: Arc<AtomicU64> = Arc::default();
        let (i, v, n) = (issued.clone(), revoked.clone(), refused.clone());
        let server = LoopbackServer::start(move |client, _| {
            let (issued, revoked, refused) = (&i, &v, &n);
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (mut back_from, mut back_to) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(Shutdown::Both);
            });
            let mut reply = client.try_clone().unwrap();
            let mut server = server;
            let mut r = BufReader::new(client);
            loop {
                let Some((head, body, token)) = read_raw(&mut r) else {
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                };
                let expired = token.as_ref().is_some_and(|t| {
                    revoked.lock().unwrap().contains(t)
                        || issued
                            .lock()
                            .unwrap()
                            .get(t)
                            .is_some_and(|e| SystemTime::now() >= *e)
                });
                if expired {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let resp = s3_server::s3_error_response(
                        "400 Bad Request",
                        "ExpiredToken",
                        "The provided token has expired.",
                    );
                    if reply.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    continue;
                }
                if server.write_all(&head).is_err() || server.write_all(&body).is_err() {
                    return;
                }
            }
        });
        TokenGate {
            issued,
            revoked,
            refused,
            server,
        }
    }
}

/// One request as raw bytes (head, body) and its `x-amz-security-token`.
fn read_raw(r: &mut impl BufRead) -> Option<(Vec<u8>, Vec<u8>, Option<String>)> {
    let mut head = Vec::new();
    let mut len = 0u64;
    let mut token = None;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line).to_string();
        if let Some((k, v)) = text.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                len = v.trim().parse().unwrap_or(0);
            } else if k == "x-amz-security-token" {
                token = Some(v.trim().to_string());
            }
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body).ok()?;
    Some((head, body, token))
}

/// Credentials that last 6 s, refreshed by the daemon before they expire, one of them
/// revoked early (the store answers ExpiredToken) while rows keep coming: the daemon
/// refreshes and retries instead of failing a sync, and the replica restores every row.
///
/// The revoked keys are the first issued after round 20, refused from their first use: the
/// daemon fetches keys to sign a request, so it is certain to present them. (Revoking the
/// newest keys already out raced the daemon's own refresh, 3 s into their 6 s life: when it
/// came before the next request the store never saw them again and refused nothing.)
#[test]
fn credentials_expire_during_a_long_replication_and_nothing_is_lost() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("creds-expiry");
    let s3 = S3Server::start(&env.root.join("s3"));
    let gate = TokenGate::start(s3.proxy.port);
    let (issued, revoked) = (gate.issued.clone(), gate.revoked.clone());
    let serial = Arc::new(AtomicU64::new(0));
    let revoke_next = Arc::new(AtomicBool::new(false));
    let revoke = revoke_next.clone();
    let ecs = Stand::start(Box::new(move |_r: &Req| {
        let tok = format!("tok-{}", serial.fetch_add(1, Ordering::SeqCst));
        let expires = SystemTime::now() + Duration::from_secs(6);
        issued.lock().unwrap().insert(tok.clone(), expires);
        if revoke.swap(false, Ordering::SeqCst) {
            revoked.lock().unwrap().insert(tok.clone());
        }
        (200, creds_json(&tok, expires))
    }));
    write_config(
        &env,
        &format!("http://127.0.0.1:{}", gate.server.port),
        BUCKET,
    );
    let full = format!("{}/creds", ecs.url());
    let vars = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let app = create_app_db(&env.db, 4096);
    let d = Proc::start(&env, &vars, "daemon");
    let mut next = 1;
    for round in 0..40 {
        insert_ids(&app, next, next + 9);
        next += 10;
        if round == 20 {
            // The store will refuse the next keys long before their expiry.
            revoke_next.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let n = next - 1;
    wait_restored(&env, &vars, n);
    let log = d.stop();
    let fetches = ecs.requests().len();
    assert!(fetches >= 4, "{fetches} fetches; log:\n{log}");
    assert!(
        !revoke_next.load(Ordering::SeqCst),
        "no keys were fetched after round 20; log:\n{log}"
    );
    assert!(gate.refused.load(Ordering::SeqCst) >= 1, "{log}");
    assert!(
        log.contains("the store refused the S3 credentials as expired; refreshing them"),
        "{log}"
    );
    // No sync failed for it: the refresh and retry happened inside the request.
    assert!(!log.contains("level=ERROR"), "{log}");
    assert!(!log.contains("tok-"), "{log}");
    assert_no_secret(&log);
}

/// moto's server on a free port, or `None` (SKIP) when it is not installed outside CI.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(env: &Env) -> Option<Moto> {
        let bin = require_tool("moto_server")?;
        let port = free_port();
        let log = fs::File::create(env.root.join("moto.log")).unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let m = Moto { child, port };
        let up = wait_until(Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "moto_server did not start on port {port}");
        Some(m)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket in moto's S3 (moto checks no signature by default).
    fn create_bucket(&self, name: &str) {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            c,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn web_identity_through_sts() {
    let env = Env::new("creds-web-identity");
    let Some(moto) = Moto::start(&env) else {
        return;
    };
    moto.create_bucket("wi-bucket");
    let token = env.root.join("token");
    fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.SECRET-SIG\n",
    )
    .unwrap();
    write_config(&env, &moto.url(), "wi-bucket");
    let (url, tf) = (moto.url(), token.to_str().unwrap().to_string());
    let vars = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", tf.as_str()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/litestream"),
        ("AWS_ROLE_SESSION_NAME", "it-session"),
        ("AWS_ENDPOINT_URL_STS", url.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let log = replicate_and_restore(&env, &vars, 30);
    assert!(
        log.contains("web identity (role arn:aws:iam::123456789012:role/litestream, token file"),
        "{log}"
    );
    assert!(!log.contains("SECRET-SIG"), "{log}");
}

#[test]
fn profile_role_arn_assumed_through_sts_with_source_profile_keys() {
    let env = Env::new("creds-assume-role");
    let Some(moto) = Moto::start(&env) else {
        return;
    };
    moto.create_bucket("ar-bucket");
    let config = env.root.join("aws-config");
    let credentials = env.root.join("aws-credentials");
    fs::write(
        &config,
        format!(
            "[profile app]\nrole_arn = arn:aws:iam::123456789012:role/app\nsource_profile = base\nrole_session_name = it\nexternal_id = ext-1\nregion = us-east-1\nendpoint_url = {}\n",
            moto.url()
        ),
    )
    .unwrap();
    fs::write(
        &credentials,
        "[base]\naws_access_key_id = AKIDBASE\naws_secret_access_key = base-SECRET-key\n",
    )
    .unwrap();
    write_config(&env, &moto.url(), "ar-bucket");
    let (cf, crf) = (
        config.to_str().unwrap().to_string(),
        credentials.to_str().unwrap().to_string(),
    );
    let vars = [
        ("AWS_CONFIG_FILE", cf.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", crf.as_str()),
        ("AWS_PROFILE", "app"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let log = replicate_and_restore(&env, &vars, 30);
    assert!(
        log.contains(
            "profile app (role arn:aws:iam::123456789012:role/app assumed with profile base)"
        ),
        "{log}"
    );
    assert!(!log.contains("base-SECRET-key"), "{log}");
}
