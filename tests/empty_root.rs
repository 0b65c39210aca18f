//! The static binary (`make static-bin`, [`common::static_binary`]) in an empty root: a
//! directory holding the binary and only the files each scenario needs (a config, the db,
//! `/tmp`, `/etc/hosts`, `/etc/resolv.conf`), with no libc, no loader, no
//! `/etc/nsswitch.conf`, no `/dev` (so no `/dev/urandom`: generation ids come from the
//! `getrandom` system call) and an empty environment. Each run enters it with `chroot(2)`.
//!
//! Scenarios: `version`; one daemon replicating to the local S3 server (s3s-fs) through two
//! replicas whose endpoints are host names, one found in the root's `/etc/hosts`, the other
//! only through DNS (a small server this test runs on 127.0.0.1:53 UDP); then a restore from
//! each inside the root, its rows and `PRAGMA integrity_check` checked outside. The db is
//! written from outside the root by a separate connection. Needs root (chroot) and s3s-fs;
//! skips with a message otherwise, fails under CI.

mod common;
mod s3_server;

use std::ffi::CString;
use std::fs;
use std::net::UdpSocket;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use s3_server::*;

/// A name only the root's `/etc/hosts` knows.
const HOSTS_NAME: &str = "s3-hosts.litestream.test";
/// A name only the test's DNS server knows.
const DNS_NAME: &str = "s3-dns.litestream.test";

/// False (with a SKIP line) when not running as root: `chroot(2)` needs CAP_SYS_CHROOT.
fn can_chroot() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the empty-root tests need root (chroot) under CI"
    );
    eprintln!("SKIP: the empty-root tests need root (chroot)");
    false
}

/// Makes `env.root/root` holding `/bin/litestream` (the static binary) and `extra` files
/// (path inside the root, contents). Returns the root's path.
fn make_root(env: &Env, extra: &[(&str, String)]) -> PathBuf {
    let bin = static_binary();
    let root = env.root.join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    // A hard link where target/ and the temp dir share a file system, else a copy.
    if fs::hard_link(&bin, root.join("bin/litestream")).is_err() {
        fs::copy(&bin, root.join("bin/litestream")).unwrap();
    }
    for (path, text) in extra {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    for dir in ["tmp", "data"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert_root_is_empty_of_system_files(&root);
    root
}

/// Nothing a dynamic binary or libc's resolver would lean on is in the root.
fn assert_root_is_empty_of_system_files(root: &Path) {
    for p in [
        "dev",
        "lib",
        "lib64",
        "usr",
        "proc",
        "etc/nsswitch.conf",
        "etc/passwd",
    ] {
        assert!(
            !root.join(p).exists(),
            "the empty root has /{p}: {}",
            root.display()
        );
    }
}

/// `/bin/litestream ARGS` inside `root` with an empty environment, output to files.
fn command_in_root(root: &Path, args: &[&str], out: &Path, err: &Path) -> Command {
    let root_c = CString::new(root.as_os_str().as_bytes()).unwrap();
    let mut cmd = Command::new("/bin/litestream");
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).unwrap())
        .stderr(fs::File::create(err).unwrap());
    // SAFETY: chroot and chdir are async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn spawn_in_root(env: &Env, root: &Path, label: &str, args: &[&str]) -> (Child, PathBuf, PathBuf) {
    let (out, err) = (
        env.root.join(format!("{label}.out")),
        env.root.join(format!("{label}.err")),
    );
    let child = command_in_root(root, args, &out, &err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start /bin/litestream inside {} ({e}): is the binary static?",
                root.display()
            )
        });
    (child, out, err)
}

/// Exit code, stdout and stderr of a one-shot command in the root (killed after 60 s).
fn run_in_root(
    env: &Env,
    root: &Path,
    label: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let (mut child, out, err) = spawn_in_root(env, root, label, args);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "litestream {args:?} in the root did not finish within 60 s; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    (status.code(), read(&out), read(&err))
}

/// A `replicate` daemon in the root; SIGKILLed on drop.
struct RootDaemon {
    child: Option<Child>,
    /// Its stdout and stderr.
    logs: [PathBuf; 2],
}

impl RootDaemon {
    fn log(&self) -> String {
        self.logs
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Panics (with the log) if the daemon exited, logged an error, or failed to resolve a
    /// name (first seen as a warning: the clean-up of stale uploads is its first request).
    fn assert_healthy(&mut self) {
        let log = self.log();
        // std's getaddrinfo error reaches us as "failed to lookup address information: …".
        if ["lookup address", "cannot resolve"]
            .iter()
            .any(|m| log.contains(m))
        {
            panic!(
                "the daemon in the empty root cannot resolve an endpoint's host name; log:\n{log}"
            );
        }
        if log.contains("level=ERROR") {
            panic!("the daemon in the empty root logged an error; log:\n{log}");
        }
        if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the daemon in the empty root exited ({st}); log:\n{log}");
        }
    }

    /// SIGTERM; asserts exit 0 (every change replicated) within 30 s. Returns the log.
    fn stop_ok(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not exit within 30 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let log = self.log();
        assert_eq!(
            status.code(),
            Some(0),
            "daemon did not exit 0 after SIGTERM; log:\n{log}"
        );
        log
    }
}

impl Drop for RootDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Holds an exclusive lock on 127.0.0.1:53 among test processes on this machine (several
/// worktrees may run this test at once): while held, no other run's DNS server is up.
struct Port53Lock(#[allow(dead_code)] fs::File);

fn lock_port_53() -> Port53Lock {
    use std::os::fd::AsRawFd;
    let f = fs::File::create("/tmp/litestream-tests-port53.lock").unwrap();
    // SAFETY: flock on a descriptor we own; released when the file closes.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    Port53Lock(f)
}

/// A DNS server on 127.0.0.1:53 UDP that answers A queries for one name with 127.0.0.1, other
/// types of that name with no records, and any other name with NXDOMAIN. Records each
/// question (name, type). Stopped on drop.
struct DnsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    questions: Arc<Mutex<Vec<(String, u16)>>>,
}

impl DnsServer {
    fn start(name: &'static str) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:53")
            .unwrap_or_else(|e| panic!("cannot bind the test DNS server to 127.0.0.1:53/udp: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let questions = Arc::new(Mutex::new(Vec::new()));
        let (stop2, questions2) = (stop.clone(), questions.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((reply, question)) = dns_reply(&buf[..n], name) {
                    questions2.lock().unwrap().push(question);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        DnsServer {
            stop,
            thread: Some(thread),
            questions,
        }
    }

    fn questions(&self) -> Vec<(String, u16)> {
        self.questions.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one DNS query (RFC 1035 §4.1), and its question; `None` for anything that is
/// not a well-formed single-question query.
fn dns_reply(q: &[u8], name: &str) -> Option<(Vec<u8>, (String, u16))> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers never appear in a query's question
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).into_owned());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    let end = i + 4;
    let qname = labels.join(".");
    let known = qname.eq_ignore_ascii_case(name);
    let answer = known && qtype == 1 && qclass == 1;
    let mut r = Vec::with_capacity(end + 16);
    r.extend_from_slice(&q[0..2]); // id
    r.push(0x80 | (q[2] & 0x79) | 0x04); // QR, the query's opcode and RD, AA
    r.push(0x80 | if known { 0 } else { 3 }); // RA, NOERROR or NXDOMAIN
    r.extend_from_slice(&[0, 1, 0, answer as u8, 0, 0, 0, 0]);
    r.extend_from_slice(&q[12..end]);
    if answer {
        // Name: pointer to the question's; A, IN, TTL 60, 4 bytes: 127.0.0.1.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((r, (qname, qtype)))
}

/// The two replicas: (name, host name of the endpoint). The `hosts` one is named only in the
/// root's `/etc/hosts`, the `dns` one only by the test's DNS server.
const REPLICAS: [(&str, &str); 2] = [("hosts", HOSTS_NAME), ("dns", DNS_NAME)];

/// `/etc/litestream.yml` in the root: `/data/app.db` to the S3 server at `http://HOST:PORT`,
/// once per entry of [`REPLICAS`], each under its own prefix `backups/NAME`.
fn config(s3: &S3Server) -> String {
    let mut y =
        String::from("dbs:\n  - path: /data/app.db\n    monitor-interval: 100ms\n    replicas:\n");
    for (name, host) in REPLICAS {
        y.push_str(&format!(
            "      - type: s3\n        name: {name}\n        bucket: {BUCKET}\n        path: backups/{name}\n        endpoint: http://{host}:{port}\n        access-key-id: {ACCESS_KEY}\n        secret-access-key: {SECRET_KEY}\n        sync-interval: 100ms\n",
            port = s3.proxy.port
        ));
    }
    y
}

#[test]
fn version_runs_in_an_empty_root() {
    if !can_chroot() {
        return;
    }
    let env = Env::new("empty-root-version");
    let root = make_root(&env, &[]);
    let (code, out, err) = run_in_root(&env, &root, "version", &["version"]);
    assert_eq!(
        code,
        Some(0),
        "version in the empty root\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "version printed {out:?}, expected {}",
        env!("CARGO_PKG_VERSION")
    );
}

/// One daemon in the root replicates a db written from outside it to S3 through both
/// replicas (endpoint found in `/etc/hosts`, endpoint found through DNS); then a restore
/// inside the root from each replica, checked outside.
#[test]
fn replicates_to_s3_named_in_etc_hosts_and_through_dns_and_restores_in_an_empty_root() {
    if !can_chroot() || !s3s_fs_available() {
        return;
    }
    let _port53 = lock_port_53();
    let dns = DnsServer::start(DNS_NAME);
    let env = Env::new("empty-root-s3");
    let s3 = S3Server::start(&env.root.join("s3"));
    let root = make_root(
        &env,
        &[
            (
                "etc/hosts",
                format!("127.0.0.1 localhost\n127.0.0.1 {HOSTS_NAME}\n"),
            ),
            ("etc/resolv.conf", "nameserver 127.0.0.1\n".to_string()),
            ("etc/litestream.yml", config(&s3)),
        ],
    );
    let replica_dir = |name: &str| s3.dir.join(BUCKET).join("backups").join(name);

    let db = root.join("data/app.db");
    let app = create_app_db(&db, 4096);
    for id in 1..=50 {
        insert_row(&app, id, 700);
    }
    let (child, out, err) = spawn_in_root(
        &env,
        &root,
        "daemon",
        &["replicate", "-config", "/etc/litestream.yml"],
    );
    let mut d = RootDaemon {
        child: Some(child),
        logs: [out, err],
    };
    for (name, host) in REPLICAS {
        let snapshot = wait_until(DEADLINE, || {
            d.assert_healthy();
            generations(&replica_dir(name))
                .iter()
                .any(|g| !snapshot_indexes(&replica_dir(name), g).is_empty())
        });
        assert!(
            snapshot,
            "no snapshot from replica {name} (endpoint host {host}) within {DEADLINE:?}; log:\n{}",
            d.log()
        );
    }

    // Changes after the snapshot travel as WAL segments.
    tx(&app, |c| {
        for id in 51..=120 {
            insert_row(c, id, 700);
        }
    });
    app.execute("DELETE FROM t WHERE id % 7 = 0", []).unwrap();
    let src = digest_conn(&app, "t");
    let log = d.stop_ok();

    for (name, host) in REPLICAS {
        // The generation id is drawn with getrandom(2): the root has no /dev/urandom.
        let gens = generations(&replica_dir(name));
        assert_eq!(
            gens.len(),
            1,
            "replica {name}: generations {gens:?}; log:\n{log}"
        );
        assert!(is_hex(&gens[0], 16), "generation id {:?}", gens[0]);
        assert!(
            !wal_segments(&replica_dir(name), &gens[0]).is_empty(),
            "replica {name}: no WAL segment in the bucket; log:\n{log}"
        );

        let restored = format!("/data/restored-{name}.db");
        let (code, out, err) = run_in_root(
            &env,
            &root,
            &format!("restore-{name}"),
            &[
                "restore",
                "-config",
                "/etc/litestream.yml",
                "-replica",
                name,
                "-o",
                &restored,
                "/data/app.db",
            ],
        );
        assert_eq!(
            code,
            Some(0),
            "restore from replica {name} (endpoint host {host}) inside the root failed\nstdout:\n{out}\nstderr:\n{err}"
        );
        let restored = root.join(restored.trim_start_matches('/'));
        assert_integrity_ok(&restored);
        assert_eq!(
            table_digest(&restored, "t"),
            src,
            "rows restored from replica {name} differ"
        );
    }
    assert_root_is_empty_of_system_files(&root);

    // The hosts name came from /etc/hosts (DNS was never asked for it), the other from DNS.
    let asked = dns.questions();
    assert!(
        !asked.iter().any(|(n, _)| n == HOSTS_NAME),
        "{HOSTS_NAME} was looked up through DNS, not in /etc/hosts: {asked:?}"
    );
    assert!(
        asked.iter().any(|(n, t)| n == DNS_NAME && *t == 1),
        "the DNS server was never asked for {DNS_NAME} A; it was asked {asked:?}"
    );
}
