//! The Debian package (`make deb`) and the release archive (`make dist`): the package's files,
//! modes and control fields (`dpkg-deb -c`/`-f`/`-I`); an install into a scratch root with
//! the real dpkg (`dpkg --root=DIR --force-script-chrootless`: the maintainer scripts run on
//! the host with DPKG_ROOT=DIR and act on DIR only; as a non-root user under fakeroot), the
//! installed unit checked by `systemd-analyze verify` and `security --offline` in that root,
//! the installed binary run once, an upgrade that keeps the administrator's config, removal
//! and purge. The archive: its listing and `sha256sum -c`. Skipped (with the reason) only
//! where dpkg-deb is absent.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{find_tool, require_tool};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `make -s TARGET` under the same `flock` as `common::static_binary()`: both rebuild and
/// copy target/litestream-static, which must not happen while another reads it.
fn make(target: &str) -> String {
    use std::os::fd::AsRawFd;
    let lock = fs::File::create(repo().join("target/static-bin.lock")).expect("lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let out = Command::new("make")
        .args(["-s", target])
        .current_dir(repo())
        .output()
        .expect("make");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have_dpkg_deb() -> bool {
    let found = find_tool("dpkg-deb").is_some();
    if !found {
        eprintln!("SKIP: dpkg-deb not found (Debian: package dpkg); the package is not built");
    }
    found
}

/// `make deb`, once per test binary.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let printed = make("deb");
        let deb = repo().join(format!(
            "target/litestream_{}_amd64.deb",
            VERSION.replace('-', "~")
        ));
        assert!(deb.ends_with(printed.trim()), "make deb printed {printed}");
        deb
    })
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deb_has_the_files_modes_and_control_fields() {
    if !have_dpkg_deb() {
        return;
    }
    let deb = deb();
    let fields = ok(Command::new("dpkg-deb").arg("-f").arg(deb));
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    assert_eq!(field("Package").as_deref(), Some("litestream"));
    assert_eq!(field("Version"), Some(VERSION.replace('-', "~")));
    assert_eq!(field("Architecture").as_deref(), Some("amd64"));
    assert!(
        field("Maintainer").is_some_and(|m| m.contains('@')),
        "{fields}"
    );
    assert!(
        field("Installed-Size").is_some_and(|s| s.parse::<u64>().unwrap() > 1000),
        "{fields}"
    );
    assert_eq!(
        field("Description").as_deref(),
        Some("streaming replication for SQLite")
    );
    for none in ["Depends", "Pre-Depends", "Recommends"] {
        assert!(
            field(none).is_none(),
            "a static binary depends on nothing: {fields}"
        );
    }

    // Every entry: mode, owner, path.
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    let mut files = Vec::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], "root/root", "owner: {line}");
        if cols[0].starts_with('d') {
            assert_eq!(cols[0], "drwxr-xr-x", "{line}");
        } else {
            files.push((cols[5].to_string(), cols[0].to_string()));
        }
    }
    files.sort();
    let expect = |p: &str, m: &str| (p.to_string(), m.to_string());
    assert_eq!(
        files,
        vec![
            expect("./etc/litestream.yml", "-rw-r--r--"),
            expect("./lib/systemd/system/litestream.service", "-rw-r--r--"),
            expect("./usr/bin/litestream", "-rwxr-xr-x"),
            expect("./usr/share/doc/litestream/README.md.gz", "-rw-r--r--"),
            expect("./usr/share/doc/litestream/copyright", "-rw-r--r--"),
            expect(
                "./usr/share/doc/litestream/litestream.yml.example",
                "-rw-r--r--"
            ),
            expect("./usr/share/man/man1/litestream.1.gz", "-rw-r--r--"),
        ],
        "{listing}"
    );
    let conffiles = ok(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"));
    assert_eq!(conffiles, "/etc/litestream.yml\n");
    // No maintainer script starts or enables the service.
    for script in ["postinst", "prerm", "postrm"] {
        let text = ok(Command::new("dpkg-deb").arg("-I").arg(deb).arg(script));
        for line in text
            .lines()
            .filter(|l| l.contains("systemctl") && !l.trim_start().starts_with('#'))
        {
            assert!(
                [" start", " enable", " restart", " reenable", " --now"]
                    .iter()
                    .all(|verb| !line.contains(verb)),
                "{script}: {line}"
            );
        }
    }
}

/// dpkg acting on a scratch root. As root it runs directly; otherwise under fakeroot, whose
/// saved state keeps the ownership it pretended to set (read back with [`Root::owner`]).
struct Root {
    dir: PathBuf,
    fakeroot: Option<PathBuf>,
}

impl Root {
    fn new(dir: PathBuf) -> Root {
        for d in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "etc",
            "lib/systemd/system",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        // A minimal system's account files, and the targets the unit names (what
        // systemd-analyze needs to load it in this root).
        fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(dir.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        fs::write(dir.join("etc/gshadow"), "root:*::\n").unwrap();
        for t in [
            "sysinit",
            "basic",
            "multi-user",
            "network-online",
            "shutdown",
        ] {
            fs::write(
                dir.join(format!("lib/systemd/system/{t}.target")),
                format!("[Unit]\nDescription={t}\n"),
            )
            .unwrap();
        }
        let fakeroot = if unsafe { libc::geteuid() } == 0 {
            None
        } else {
            let state = dir.with_extension("fakeroot");
            fs::write(&state, "").unwrap();
            Some(state)
        };
        Root { dir, fakeroot }
    }

    fn command(&self, program: &str) -> Command {
        match &self.fakeroot {
            None => Command::new(program),
            Some(state) => {
                let mut c = Command::new("fakeroot");
                c.arg("-i")
                    .arg(state)
                    .arg("-s")
                    .arg(state)
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    fn dpkg(&self, args: &[&str]) -> Output {
        let mut c = self.command("dpkg");
        c.arg(format!("--root={}", self.dir.display())).args([
            "--force-script-chrootless",
            "--force-unsafe-io",
            "--log=/dev/null",
        ]);
        if self.fakeroot.is_some() {
            c.arg("--force-not-root");
        }
        c.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn dpkg")
    }

    fn dpkg_ok(&self, args: &[&str]) {
        let out = self.dpkg(args);
        assert!(
            out.status.success(),
            "dpkg {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// (uid, gid, permission bits) as dpkg and the maintainer scripts left them.
    fn owner(&self, rel: &str) -> (u32, u32, u32) {
        if self.fakeroot.is_none() {
            let m = fs::metadata(self.path(rel)).unwrap();
            return (m.uid(), m.gid(), m.mode() & 0o7777);
        }
        let out = ok(self
            .command("stat")
            .args(["-c", "%u %g %a"])
            .arg(self.path(rel)));
        let v: Vec<&str> = out.split_whitespace().collect();
        (
            v[0].parse().unwrap(),
            v[1].parse().unwrap(),
            u32::from_str_radix(v[2], 8).unwrap(),
        )
    }

    /// `name`'s line in the root's passwd or group file, split on ':'.
    fn account(&self, file: &str, name: &str) -> Option<Vec<String>> {
        fs::read_to_string(self.path(file))
            .unwrap()
            .lines()
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f[0] == name)
    }
}

#[test]
fn deb_installs_into_a_scratch_root_upgrades_keeping_the_config_and_removes() {
    if !have_dpkg_deb() {
        return;
    }
    let deb = deb();
    let tmp = tempfile::Builder::new()
        .prefix("litestream-it-deb-")
        .tempdir()
        .unwrap();
    let root = Root::new(tmp.path().join("root"));
    let host_passwd = fs::read_to_string("/etc/passwd").unwrap();
    root.dpkg_ok(&["-i", deb.to_str().unwrap()]);

    // The installed binary runs.
    let out = ok(Command::new(root.path("usr/bin/litestream")).arg("version"));
    assert!(out.starts_with(&format!("v{VERSION} (commit ")), "{out}");

    // postinst: a system user and group, no login, home = the state directory.
    let user = root
        .account("etc/passwd", "litestream")
        .expect("user litestream");
    let group = root
        .account("etc/group", "litestream")
        .expect("group litestream");
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), group[2].parse().unwrap());
    assert!(uid > 0 && uid < 1000, "a system uid: {user:?}");
    assert_eq!(user[3], group[2]);
    assert_eq!(user[5], "/var/lib/litestream");
    assert_eq!(user[6], "/usr/sbin/nologin");
    // ... in that root only: the host's accounts are as they were.
    assert_eq!(fs::read_to_string("/etc/passwd").unwrap(), host_passwd);
    // The config is root:litestream 0640 (it may come to hold secrets), the state dir the
    // daemon's own.
    assert_eq!(root.owner("etc/litestream.yml"), (0, gid, 0o640));
    assert_eq!(root.owner("var/lib/litestream"), (uid, gid, 0o750));
    // Never enabled (nor started: nothing here runs systemctl start).
    assert!(!root
        .path("etc/systemd/system/multi-user.target.wants")
        .exists());

    // The unit: ExecStart on the packaged binary, User= an account of this root, and clean
    // for systemd-analyze (it exits 0 on mere warnings, so stderr must be empty too).
    let unit = fs::read_to_string(root.path("lib/systemd/system/litestream.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/litestream replicate -config /etc/litestream.yml\n")
    );
    assert!(unit.contains("\nUser=litestream\n") && unit.contains("\nGroup=litestream\n"));
    if let Some(analyze) = require_tool("systemd-analyze") {
        let rootarg = format!("--root={}", root.dir.display());
        let out = Command::new(&analyze)
            .args(["verify", "--man=no", &rootarg, "litestream.service"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "verify: {err}"
        );
        // The sandbox: an exposure of at most 2.0 (of 10; it is 1.6 now).
        let out = Command::new(&analyze)
            .args([
                "security",
                "--offline=true",
                "--threshold=20",
                &rootarg,
                "litestream.service",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "security: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let man = common::gunzip(&root.path("usr/share/man/man1/litestream.1.gz"));
    assert!(man.starts_with(b".TH LITESTREAM 1"));
    assert!(
        fs::read_to_string(root.path("usr/share/doc/litestream/copyright"))
            .unwrap()
            .contains("License: Apache-2.0")
    );

    // Upgrade to a version whose packaged config changed, after the administrator edited
    // it: dpkg asks (no answer on stdin: it fails, the file untouched), and with
    // --force-confold keeps the administrator's file and its mode (new one: .dpkg-dist).
    let conf = root.path("etc/litestream.yml");
    let mut admin = fs::read_to_string(&conf).unwrap();
    admin.push_str("# the administrator's edit\n");
    fs::write(&conf, &admin).unwrap();
    let raw = tmp.path().join("v2");
    ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&raw));
    let control = fs::read_to_string(raw.join("DEBIAN/control")).unwrap();
    let v2 = format!("{}+test2", VERSION.replace('-', "~"));
    fs::write(
        raw.join("DEBIAN/control"),
        control.replace(
            &format!("Version: {}\n", VERSION.replace('-', "~")),
            &format!("Version: {v2}\n"),
        ),
    )
    .unwrap();
    let mut packaged = fs::read_to_string(raw.join("etc/litestream.yml")).unwrap();
    packaged.push_str("# a packaged change\n");
    fs::write(raw.join("etc/litestream.yml"), &packaged).unwrap();
    let deb2 = tmp.path().join("v2.deb");
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&raw)
        .arg(&deb2));
    let asked = root.dpkg(&["-i", deb2.to_str().unwrap()]);
    assert!(!asked.status.success());
    assert!(String::from_utf8_lossy(&asked.stderr).contains("conffile prompt"));
    assert_eq!(fs::read_to_string(&conf).unwrap(), admin);
    root.dpkg_ok(&["--force-confold", "--configure", "litestream"]);
    assert_eq!(fs::read_to_string(&conf).unwrap(), admin);
    assert_eq!(root.owner("etc/litestream.yml"), (0, gid, 0o640));
    assert_eq!(
        fs::read_to_string(root.path("etc/litestream.yml.dpkg-dist")).unwrap(),
        packaged
    );
    let status = ok(root
        .command("dpkg-query")
        .arg(format!("--root={}", root.dir.display()))
        .args(["-W", "-f=${Version} ${Status}", "litestream"]));
    assert_eq!(status, format!("{v2} install ok installed"));

    // Removal keeps the config, the user and the state directory; with systemctl on the
    // host, prerm also disables an enabled unit. Purge removes the config only.
    let wants = root.path("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/lib/systemd/system/litestream.service",
        wants.join("litestream.service"),
    )
    .unwrap();
    root.dpkg_ok(&["-r", "litestream"]);
    assert!(!root.path("usr/bin/litestream").exists());
    assert!(!root.path("lib/systemd/system/litestream.service").exists());
    assert_eq!(fs::read_to_string(&conf).unwrap(), admin);
    if find_tool("systemctl").is_some() {
        assert!(
            fs::symlink_metadata(wants.join("litestream.service")).is_err(),
            "still enabled"
        );
    }
    root.dpkg_ok(&["-P", "litestream"]);
    assert!(!conf.exists() && !root.path("etc/litestream.yml.dpkg-dist").exists());
    assert!(root.account("etc/passwd", "litestream").is_some());
    assert!(root.path("var/lib/litestream").is_dir());
}

#[test]
fn dist_archive_lists_its_files_and_sha256sums_checks() {
    let printed = make("dist");
    let dist = repo().join("target/dist");
    let name = format!("litestream-{VERSION}-linux-amd64");
    let tarball = dist.join(format!("{name}.tar.gz"));
    let printed: Vec<&str> = printed.lines().collect();
    assert_eq!(printed.len(), 2, "{printed:?}");
    assert!(tarball.ends_with(printed[0]) && dist.join("SHA256SUMS").ends_with(printed[1]));
    let listing = ok(Command::new("tar").arg("-tvzf").arg(&tarball));
    let mut entries: Vec<(String, String)> = listing
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols[1], "0/0", "owner: {l}");
            (cols[5].to_string(), cols[0].to_string())
        })
        .collect();
    entries.sort();
    let e = |p: &str, m: &str| (format!("{name}/{p}"), m.to_string());
    assert_eq!(
        entries,
        vec![
            e("", "drwxr-xr-x"),
            e("LICENSE", "-rw-r--r--"),
            e("README.md", "-rw-r--r--"),
            e("litestream", "-rwxr-xr-x"),
            e("litestream.1", "-rw-r--r--"),
            e("litestream.service", "-rw-r--r--"),
            e("litestream.yml.example", "-rw-r--r--"),
        ],
        "{listing}"
    );
    let sums = ok(Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&dist));
    assert_eq!(sums, format!("{name}.tar.gz: OK\n"));

    // The archived binary runs.
    let tmp = tempfile::Builder::new()
        .prefix("litestream-it-dist-")
        .tempdir()
        .unwrap();
    ok(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path()));
    let bin = tmp.path().join(&name).join("litestream");
    assert_ne!(fs::metadata(&bin).unwrap().permissions().mode() & 0o111, 0);
    let out = ok(Command::new(&bin).arg("version"));
    assert!(out.starts_with(&format!("v{VERSION} (commit ")), "{out}");
}
