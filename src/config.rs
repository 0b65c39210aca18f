//! Configuration: the YAML schema of SPEC §8, its defaults, `$VAR` expansion, Go-style
//! durations, replica URLs, and validation that names every problem's place.
//!
//! Pure: parsing takes text and an environment lookup and returns a [`Config`] or errors; the
//! only I/O is [`Config::load`], which reads the file. Nothing here opens a database or a store.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::codec::Compression;

/// The whole configuration file, validated and with defaults applied.
///
/// `Debug` is written by hand so that secret keys never reach a log.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Metrics listen address (`:9090`); `None` when empty or absent (metrics off).
    pub addr: Option<String>,
    /// Child command line to supervise (`exec:`), overridden by `-exec`.
    pub exec: Option<String>,
    /// Default S3 credentials for every replica.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub logging: LoggingConfig,
    /// At most this many snapshots at once in the process (default 1).
    pub snapshot_concurrency: usize,
    /// `health-max-lag`: a replica further behind than this is unhealthy (default 60s).
    pub health_max_lag: Duration,
    pub dbs: Vec<DbConfig>,
    /// Where this configuration came from (the file name given to [`Config::parse`]), for
    /// messages; empty when built in code ([`Config::with_dbs`]).
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoggingConfig {
    pub level: LogLevel,
    /// `type: json` (true) or `type: text` (false, default).
    pub json: bool,
    /// `stderr: false` (default) logs to stdout, as Litestream does.
    pub stderr: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DbConfig {
    /// Absolute path (`~` expanded, relative paths resolved against the working directory).
    pub path: PathBuf,
    /// `meta-path`; `None` means `<dir>/.<file>-litestream`.
    pub meta_path: Option<PathBuf>,
    pub monitor_interval: Duration,
    pub checkpoint_interval: Duration,
    pub busy_timeout: Duration,
    pub min_checkpoint_page_count: u32,
    /// 0 = never RESTART.
    pub max_checkpoint_page_count: u32,
    pub truncate_page_count: u32,
    pub replicas: Vec<ReplicaConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaConfig {
    /// Unique per db; defaults to the type (`file`, `s3`).
    pub name: String,
    pub target: ReplicaTarget,
    pub retention: Duration,
    /// Zero = retention enforcement off.
    pub retention_check_interval: Duration,
    /// Zero = no scheduled snapshots.
    pub snapshot_interval: Duration,
    /// Zero = validation off.
    pub validation_interval: Duration,
    pub sync_interval: Duration,
    pub compression: Compression,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaTarget {
    /// A directory holding the replica tree.
    File {
        path: PathBuf,
    },
    S3(S3Config),
}

/// `Debug` is written by hand: the secret key prints as `***`.
#[derive(Clone, PartialEq, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix, no leading or trailing slash; empty means keys start at `generations/`.
    pub path: String,
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub skip_verify: bool,
    /// Replica keys, else the global keys (already merged in by the parser).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

pub mod defaults {
    use std::time::Duration;
    pub const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
    pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
    pub const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
    pub const MIN_CHECKPOINT_PAGE_COUNT: u32 = 1000;
    pub const MAX_CHECKPOINT_PAGE_COUNT: u32 = 10000;
    pub const TRUNCATE_PAGE_COUNT: u32 = 121359;
    pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
    pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
    pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
    pub const SNAPSHOT_CONCURRENCY: usize = 1;
    pub const HEALTH_MAX_LAG: Duration = Duration::from_secs(60);
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// `$LITESTREAM_CONFIG` when set and not empty, else `/etc/litestream.yml`.
pub fn default_config_path() -> PathBuf {
    match std::env::var_os("LITESTREAM_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/etc/litestream.yml"),
    }
}

/// One or more configuration problems, each a self-contained line naming its place
/// (`litestream.yml: dbs[0].replicas[1].bucket: required for an s3 replica`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: LogLevel::Info,
            json: false,
            stderr: false,
        }
    }
}

impl LogLevel {
    /// The name used in configuration (`debug`, `info`, `warn`/`warning`, `error`; any case).
    pub fn from_config(name: &str) -> Option<LogLevel> {
        match name.to_ascii_lowercase().as_str() {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::with_dbs(Vec::new())
    }
}

impl Config {
    /// A configuration holding these dbs and defaults for everything else (ad-hoc
    /// `replicate DB_PATH URL...`).
    pub fn with_dbs(dbs: Vec<DbConfig>) -> Config {
        Config {
            addr: None,
            exec: None,
            access_key_id: None,
            secret_access_key: None,
            logging: LoggingConfig::default(),
            snapshot_concurrency: defaults::SNAPSHOT_CONCURRENCY,
            health_max_lag: defaults::HEALTH_MAX_LAG,
            dbs,
            source: String::new(),
        }
    }

    /// Reads the file at `path` and parses it with the real environment, working directory
    /// and home directory.
    pub fn load(path: &Path, expand_env: bool) -> anyhow::Result<Config> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!("config file not found: {}", path.display())
            }
            Err(e) => anyhow::bail!("cannot read config {}: {}", path.display(), e),
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "cannot read config {}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        let cwd = std::env::current_dir()
            .map_err(|e| anyhow::anyhow!("cannot read the working directory: {e}"))?;
        let home = home_dir();
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let config = Config::parse(
            &text,
            &path.display().to_string(),
            expand_env,
            &env,
            &cwd,
            home.as_deref(),
        )?;
        Ok(config)
    }

    /// Parses and validates configuration text. Pure: `env` answers `$VAR` lookups (only when
    /// `expand_env`; an unset variable expands to nothing), `cwd` and `home` resolve relative
    /// and `~` paths, `source` names the file in messages.
    pub fn parse(
        text: &str,
        source: &str,
        expand_env: bool,
        env: &dyn Fn(&str) -> Option<String>,
        cwd: &Path,
        home: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let expanded;
        let text = if expand_env {
            expanded = expand_env_vars(text, env);
            expanded.as_str()
        } else {
            text
        };
        let raw: RawConfig = match serde_norway::from_str::<Option<RawConfig>>(text) {
            Ok(raw) => raw.unwrap_or_default(),
            Err(err) => {
                return Err(ConfigError {
                    problems: vec![yaml_problem(source, &err)],
                })
            }
        };
        let mut b = Builder {
            source,
            cwd,
            home,
            problems: Vec::new(),
            destinations: Vec::new(),
        };
        let config = b.config(raw);
        if b.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: b.problems,
            })
        }
    }

    /// The daemon needs at least one db; `restore` from a URL does not, so this check is
    /// separate from [`Config::parse`].
    pub fn require_dbs(&self) -> Result<(), ConfigError> {
        if !self.dbs.is_empty() {
            return Ok(());
        }
        let msg = "no databases configured (add a `dbs:` list)";
        Err(ConfigError {
            problems: vec![format!("{}{msg}", lead(&self.source))],
        })
    }
}

impl DbConfig {
    /// A db with default settings and no replicas (ad-hoc `replicate DB_PATH URL...`). The
    /// caller makes `path` absolute.
    pub fn with_defaults(path: PathBuf) -> DbConfig {
        DbConfig {
            path,
            meta_path: None,
            monitor_interval: defaults::MONITOR_INTERVAL,
            checkpoint_interval: defaults::CHECKPOINT_INTERVAL,
            busy_timeout: defaults::BUSY_TIMEOUT,
            min_checkpoint_page_count: defaults::MIN_CHECKPOINT_PAGE_COUNT,
            max_checkpoint_page_count: defaults::MAX_CHECKPOINT_PAGE_COUNT,
            truncate_page_count: defaults::TRUNCATE_PAGE_COUNT,
            replicas: Vec::new(),
        }
    }
}

impl ReplicaTarget {
    /// `file` or `s3`: the replica type name, also the default replica name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ReplicaTarget::File { .. } => "file",
            ReplicaTarget::S3(_) => "s3",
        }
    }
}

impl ReplicaConfig {
    /// A replica of this target with default settings, named after its type.
    pub fn with_defaults(target: ReplicaTarget) -> ReplicaConfig {
        ReplicaConfig {
            name: target.type_name().to_string(),
            target,
            retention: defaults::RETENTION,
            retention_check_interval: defaults::RETENTION_CHECK_INTERVAL,
            snapshot_interval: Duration::ZERO,
            validation_interval: Duration::ZERO,
            sync_interval: defaults::SYNC_INTERVAL,
            compression: Compression::default(),
        }
    }

    /// A replica from a URL given on the command line (see [`parse_replica_url`] for the
    /// forms); defaults for everything else.
    pub fn from_url(url: &str, cwd: &Path) -> Result<ReplicaConfig, String> {
        parse_replica_url(url, cwd, None).map(ReplicaConfig::with_defaults)
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("path", &self.path)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("skip_verify", &self.skip_verify)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &Redacted(&self.secret_access_key))
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("exec", &self.exec)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &Redacted(&self.secret_access_key))
            .field("logging", &self.logging)
            .field("snapshot_concurrency", &self.snapshot_concurrency)
            .field("health_max_lag", &self.health_max_lag)
            .field("dbs", &self.dbs)
            .field("source", &self.source)
            .finish()
    }
}

/// Prints `Some("***")` for a present secret, `None` otherwise.
struct Redacted<'a>(&'a Option<String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(\"***\")"),
            None => f.write_str("None"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// Go's `time.ParseDuration`, without negative values: a sequence of decimal numbers, each with
/// an optional fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `500ms`,
/// `1h30m`, `1.5h`; `0` alone needs no unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why}");
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad("empty (use e.g. 500ms, 1s, 10m, 1h30m)"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad("expected a number (use e.g. 500ms, 1s, 10m, 1h30m)"));
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(bad(&format!(
                    "missing unit after {}{} (e.g. \"{}{}s\")",
                    int_digits,
                    if frac_digits.is_empty() {
                        String::new()
                    } else {
                        format!(".{frac_digits}")
                    },
                    int_digits,
                    if frac_digits.is_empty() {
                        String::new()
                    } else {
                        format!(".{frac_digits}")
                    },
                )))
            }
            other => {
                return Err(bad(&format!(
                    "unknown unit {other:?} (valid units: ns, us, ms, s, m, h)"
                )))
            }
        };
        let too_large = || bad("too large");
        let mut value: u128 = 0;
        for d in int_digits.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d - b'0')))
                .filter(|v| *v <= u128::from(u64::MAX))
                .ok_or_else(too_large)?;
        }
        let mut nanos = value.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
        // The fraction, truncated to whole nanoseconds (digits past the 20th cannot matter).
        let frac: &str = &frac_digits[..frac_digits.len().min(20)];
        if !frac.is_empty() {
            let numerator: u128 = frac.parse().map_err(|_| too_large())?;
            nanos += numerator * nanos_per_unit / 10u128.pow(frac.len() as u32);
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        if total > i64::MAX as u128 {
            return Err(too_large());
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(bad("must not be negative"));
    }
    Ok(Duration::from_nanos(total as u64))
}

// ---------------------------------------------------------------------------------------------
// Environment expansion (Go's os.ExpandEnv)
// ---------------------------------------------------------------------------------------------

/// `$VAR` and `${VAR}` replaced by `env(VAR)` (unset → empty), exactly as Go's `os.Expand`:
/// `$` followed by neither a name nor a brace stays as is; `${}` and an unclosed `${` are
/// dropped; a shell special character after `$` (`$1`, `$$`, `$@` …) is looked up as a name.
pub fn expand_env_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    fn is_special(c: u8) -> bool {
        matches!(
            c,
            b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
        )
    }
    fn is_alnum(c: u8) -> bool {
        c == b'_' || c.is_ascii_alphanumeric()
    }
    // (name, bytes consumed after the `$`)
    fn shell_name(s: &[u8]) -> (&[u8], usize) {
        if s[0] == b'{' {
            if s.len() > 2 && is_special(s[1]) && s[2] == b'}' {
                return (&s[1..2], 3);
            }
            for i in 1..s.len() {
                if s[i] == b'}' {
                    if i == 1 {
                        return (&[], 2);
                    }
                    return (&s[1..i], i + 1);
                }
            }
            return (&[], 1);
        }
        if is_special(s[0]) {
            return (&s[0..1], 1);
        }
        let n = s.iter().take_while(|c| is_alnum(**c)).count();
        (&s[..n], n)
    }

    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut j = 0;
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            out.extend_from_slice(&b[i..j]);
            let (name, w) = shell_name(&b[j + 1..]);
            if name.is_empty() && w > 0 {
                // Bad syntax (`${}` or an unclosed `${`): eaten.
            } else if name.is_empty() {
                out.push(b'$');
            } else {
                let name = String::from_utf8_lossy(name);
                out.extend_from_slice(env(&name).unwrap_or_default().as_bytes());
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    out.extend_from_slice(&b[i.min(b.len())..]);
    // Only ASCII bytes were used as cut points, so the result is valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// `~` and `~/…` from `home`; a relative path against `cwd`; then cleaned lexically (`.` and
/// `..` removed, as Go's `filepath.Abs` does).
fn resolve_path(raw: &str, cwd: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("must not be empty".to_string());
    }
    let joined = if raw == "~" || raw.starts_with("~/") {
        let home = home.ok_or_else(|| {
            format!(
                "cannot expand `~` in {raw:?}: no home directory is known (use an absolute path)"
            )
        })?;
        home.join(raw[1..].trim_start_matches('/'))
    } else {
        cwd.join(raw)
    };
    Ok(clean_path(&joined))
}

fn clean_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    let mut normals = 0usize;
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if normals > 0 {
                    out.pop();
                    normals -= 1;
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Component::Normal(n) => {
                out.push(n);
                normals += 1;
            }
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// `$HOME`, else the home directory of the effective user in `/etc/passwd` (read directly, as
/// Go's pure `os/user` does, so static binaries need no NSS).
fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() }.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2] == uid && !fields[5].is_empty())
            .then(|| PathBuf::from(fields[5]))
    })
}

// ---------------------------------------------------------------------------------------------
// Replica URLs
// ---------------------------------------------------------------------------------------------

/// Parses a replica URL:
/// - `file:///abs/path` (also `file://localhost/abs/path`), or a plain path (relative to
///   `cwd`; `~` from `home`, an error without one);
/// - `s3://BUCKET/PATH`, with Litestream v0.3's provider hosts (`BUCKET.localhost:9000`,
///   Backblaze B2, DigitalOcean, Linode, Scaleway, Filebase) and the query parameters
///   `endpoint`, `region`, `force-path-style`, `skip-verify`.
pub fn parse_replica_url(
    url: &str,
    cwd: &Path,
    home: Option<&Path>,
) -> Result<ReplicaTarget, String> {
    if url.is_empty() {
        return Err("empty replica URL".to_string());
    }
    let scheme = url.find("://").map(|i| &url[..i]).filter(|s| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let Some(scheme) = scheme else {
        let path = resolve_path(url, cwd, home)?;
        return Ok(ReplicaTarget::File { path });
    };
    let rest = &url[scheme.len() + 3..];
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            if !rest.starts_with('/') {
                return Err(format!(
                    "file URL {url:?} must hold an absolute path (file:///path/to/dir)"
                ));
            }
            let path = percent_decode(rest).ok_or_else(|| format!("bad %-escape in {url:?}"))?;
            Ok(ReplicaTarget::File {
                path: clean_path(Path::new(&path)),
            })
        }
        "s3" => parse_s3_url(url, rest).map(ReplicaTarget::S3),
        other => Err(format!(
            "unsupported replica URL scheme `{other}` in {url:?} (supported: file, s3, or a plain path)"
        )),
    }
}

fn parse_s3_url(url: &str, rest: &str) -> Result<S3Config, String> {
    let rest = rest.split('#').next().unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "credentials in replica URLs are not supported: {url:?} (use access-key-id/secret-access-key in the config, or LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY)"
        ));
    }
    let mut s3 = parse_s3_host(authority);
    let path = percent_decode(path).ok_or_else(|| format!("bad %-escape in {url:?}"))?;
    s3.path = clean_key_prefix(&path);
    let mut explicit_fps = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " "))
            .ok_or_else(|| format!("bad %-escape in {url:?}"))?;
        let v = percent_decode(&v.replace('+', " "))
            .ok_or_else(|| format!("bad %-escape in {url:?}"))?;
        match k.as_str() {
            "endpoint" => s3.endpoint = Some(check_endpoint(&v)?),
            "region" => s3.region = Some(v).filter(|v| !v.is_empty()),
            "force-path-style" | "forcePathStyle" => {
                explicit_fps = Some(parse_bool(&v).ok_or_else(|| {
                    format!("force-path-style in {url:?} must be true or false, not {v:?}")
                })?)
            }
            "skip-verify" | "skipVerify" => {
                s3.skip_verify = parse_bool(&v).ok_or_else(|| {
                    format!("skip-verify in {url:?} must be true or false, not {v:?}")
                })?
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}` in {url:?} (known: endpoint, region, force-path-style, skip-verify)"
                ))
            }
        }
    }
    s3.force_path_style = explicit_fps.unwrap_or(s3.force_path_style || s3.endpoint.is_some());
    if s3.bucket.is_empty() {
        return Err(format!("s3 URL {url:?} names no bucket (s3://BUCKET/PATH)"));
    }
    Ok(s3)
}

/// Litestream v0.3's `s3.ParseHost`: bucket, region, endpoint and path style from the host.
fn parse_s3_host(authority: &str) -> S3Config {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (authority, ""),
    };
    // "BUCKET.s3.REGION" (or "s3.REGION") → (bucket, region).
    fn bucket_s3_region(rest: &str) -> Option<(&str, &str)> {
        let (pre, region) = rest.rsplit_once('.')?;
        if region.is_empty() {
            return None;
        }
        if pre == "s3" {
            return Some(("", region));
        }
        Some((pre.strip_suffix(".s3")?, region))
    }
    // "BUCKET.REGION" (or "REGION") → (bucket, region).
    fn bucket_region(rest: &str) -> Option<(&str, &str)> {
        match rest.rsplit_once('.') {
            Some((b, r)) if !r.is_empty() => Some((b, r)),
            Some(_) => None,
            None if !rest.is_empty() => Some(("", rest)),
            None => None,
        }
    }
    let mut scheme = "https";
    let found: Option<(&str, Option<&str>, String)> = if host == "localhost" {
        scheme = "http";
        Some(("", Some("us-east-1"), "localhost".to_string()))
    } else if let Some(bucket) = host.strip_suffix(".localhost") {
        scheme = "http";
        Some((bucket, Some("us-east-1"), "localhost".to_string()))
    } else if let Some((b, r)) = host
        .strip_suffix(".backblazeb2.com")
        .and_then(bucket_s3_region)
    {
        Some((b, Some(r), format!("s3.{r}.backblazeb2.com")))
    } else if host == "s3.filebase.com" {
        Some(("", None, "s3.filebase.com".to_string()))
    } else if let Some(bucket) = host.strip_suffix(".s3.filebase.com") {
        Some((bucket, None, "s3.filebase.com".to_string()))
    } else if let Some((b, r)) = host
        .strip_suffix(".digitaloceanspaces.com")
        .and_then(bucket_region)
    {
        Some((b, Some(r), format!("{r}.digitaloceanspaces.com")))
    } else if let Some((b, r)) = host.strip_suffix(".scw.cloud").and_then(bucket_s3_region) {
        Some((b, Some(r), format!("s3.{r}.scw.cloud")))
    } else if let Some((b, r)) = host
        .strip_suffix(".linodeobjects.com")
        .and_then(bucket_region)
    {
        Some((b, Some(r), format!("{r}.linodeobjects.com")))
    } else {
        None
    };
    match found {
        Some((bucket, region, endpoint)) => {
            let endpoint = if port.is_empty() {
                format!("{scheme}://{endpoint}")
            } else {
                format!("{scheme}://{endpoint}:{port}")
            };
            S3Config {
                bucket: bucket.to_string(),
                region: region.map(str::to_string),
                endpoint: Some(endpoint),
                force_path_style: true,
                ..S3Config::default()
            }
        }
        // Plain AWS S3: the host is the bucket (a port, if any, is dropped as Litestream does).
        None => S3Config {
            bucket: host.to_string(),
            ..S3Config::default()
        },
    }
}

/// An S3 key prefix: no leading or trailing `/`, no empty or `.` segments, `..` resolved.
fn clean_key_prefix(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

/// An endpoint must be an `http://` or `https://` URL; a trailing `/` is dropped.
fn check_endpoint(v: &str) -> Result<String, String> {
    let lower = v.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(host) if !host.trim_end_matches('/').is_empty() => {
            Ok(v.trim_end_matches('/').to_string())
        }
        Some(_) => Err(format!("endpoint {v:?} names no host")),
        None => Err(format!(
            "endpoint {v:?} needs a scheme, e.g. \"http://{}\" or \"https://{}\"",
            v.split("://").last().unwrap_or(v),
            v.split("://").last().unwrap_or(v)
        )),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Some(true),
        "false" | "0" | "f" | "no" => Some(false),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// The YAML schema as written (every field optional; defaults and checks come later)
// ---------------------------------------------------------------------------------------------

/// Keys of each level, for "did you mean" and "belongs elsewhere" hints. A unit test checks
/// them against the raw structs.
const TOP_KEYS: &[&str] = &[
    "addr",
    "exec",
    "access-key-id",
    "secret-access-key",
    "logging",
    "snapshot-concurrency",
    "health-max-lag",
    "dbs",
];
const LOGGING_KEYS: &[&str] = &["level", "type", "stderr"];
const DB_KEYS: &[&str] = &[
    "path",
    "meta-path",
    "monitor-interval",
    "checkpoint-interval",
    "busy-timeout",
    "min-checkpoint-page-count",
    "max-checkpoint-page-count",
    "truncate-page-count",
    "replicas",
];
const REPLICA_KEYS: &[&str] = &[
    "type",
    "name",
    "url",
    "path",
    "retention",
    "retention-check-interval",
    "snapshot-interval",
    "validation-interval",
    "sync-interval",
    "compression",
    "bucket",
    "region",
    "endpoint",
    "force-path-style",
    "skip-verify",
    "access-key-id",
    "secret-access-key",
];

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of settings (dbs, logging, addr, ...)"
)]
struct RawConfig {
    addr: Option<String>,
    exec: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    logging: Option<RawLogging>,
    snapshot_concurrency: Option<Count>,
    health_max_lag: Option<Dur>,
    dbs: Option<Vec<RawDb>>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of logging settings (level, type, stderr)"
)]
struct RawLogging {
    level: Option<Level>,
    r#type: Option<LogFormat>,
    stderr: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of db settings (path, replicas, ...)"
)]
struct RawDb {
    path: Option<String>,
    meta_path: Option<String>,
    monitor_interval: Option<Dur>,
    checkpoint_interval: Option<Dur>,
    busy_timeout: Option<Dur>,
    min_checkpoint_page_count: Option<Count>,
    max_checkpoint_page_count: Option<Count>,
    truncate_page_count: Option<Count>,
    replicas: Option<Vec<RawReplica>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of replica settings (url or type/path, ...)"
)]
struct RawReplica {
    r#type: Option<Kind>,
    name: Option<String>,
    url: Option<String>,
    path: Option<String>,
    retention: Option<Dur>,
    retention_check_interval: Option<Dur>,
    snapshot_interval: Option<Dur>,
    validation_interval: Option<Dur>,
    sync_interval: Option<Dur>,
    compression: Option<Comp>,
    bucket: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    skip_verify: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

/// A Go-style duration string; a bare `0` is accepted too.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 1s, 10m, 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: missing unit (e.g. \"{v}s\" or \"{v}ms\")"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    Err(E::custom(format!(
                        "invalid duration {v}: must not be negative"
                    )))
                } else {
                    self.visit_u64(v as u64)
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: missing unit (e.g. \"{v}s\")"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole number in 0..=u32::MAX (page counts, concurrency).
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                u32::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom(format!("{v} is too large (at most {})", u32::MAX)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                if v < 0 {
                    Err(E::custom(format!("must not be negative, got {v}")))
                } else {
                    self.visit_u64(v as u64)
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                Err(E::custom(format!("must be a whole number, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                match v.trim().parse::<i64>() {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => Err(E::custom(format!("must be a whole number, got {v:?}"))),
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Count, E> {
                Err(E::custom(format!("must be a whole number, got {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a string through `parse`, whose error names the accepted values. The error is
/// raised inside the visitor so that it carries the value's own place and line.
fn de_named<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(parse))
}

struct Level(LogLevel);

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| {
            LogLevel::from_config(s).map(Level).ok_or_else(|| {
                format!("unknown log level {s:?} (expected debug, info, warn or error)")
            })
        })
    }
}

/// `type: text` (false) or `type: json` (true).
struct LogFormat(bool);

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat(false)),
            "json" => Ok(LogFormat(true)),
            _ => Err(format!("unknown log type {s:?} (expected text or json)")),
        })
    }
}

struct Comp(Compression);

impl<'de> Deserialize<'de> for Comp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| {
            Compression::from_config(s)
                .map(Comp)
                .ok_or_else(|| format!("unknown compression {s:?} (expected gzip or lz4)"))
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    S3,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::S3 => "s3",
        }
    }
    fn of(target: &ReplicaTarget) -> Kind {
        match target {
            ReplicaTarget::File { .. } => Kind::File,
            ReplicaTarget::S3(_) => Kind::S3,
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| match s.to_ascii_lowercase().as_str() {
            "file" => Ok(Kind::File),
            "s3" => Ok(Kind::S3),
            _ => Err(format!("unknown replica type {s:?} (supported: file, s3)")),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// From raw to validated, collecting every problem with its place
// ---------------------------------------------------------------------------------------------

struct Builder<'a> {
    source: &'a str,
    cwd: &'a Path,
    home: Option<&'a Path>,
    problems: Vec<String>,
    /// Every replica built so far: its place and where it writes, to catch two replicas (of
    /// one db or of two) sharing a destination, which would mix their generations.
    destinations: Vec<(String, String)>,
}

/// An optional string that counts as absent when empty (`$UNSET` expands to nothing).
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl Builder<'_> {
    fn problem(&mut self, place: &str, msg: impl fmt::Display) {
        self.problems
            .push(format!("{}{place}: {msg}", lead(self.source)));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let addr = non_empty(raw.addr);
        if let Some(addr) = &addr {
            if let Err(e) = check_addr(addr) {
                self.problem("addr", e);
            }
        }
        let snapshot_concurrency = raw
            .snapshot_concurrency
            .map_or(defaults::SNAPSHOT_CONCURRENCY, |c| c.0 as usize);
        if snapshot_concurrency < 1 {
            self.problem("snapshot-concurrency", "must be at least 1");
        }
        let health_max_lag = raw.health_max_lag.map_or(defaults::HEALTH_MAX_LAG, |d| d.0);
        if health_max_lag.is_zero() {
            self.problem("health-max-lag", "must be greater than 0");
        }
        let logging = raw.logging.unwrap_or_default();
        let access_key_id = non_empty(raw.access_key_id);
        let secret_access_key = non_empty(raw.secret_access_key);
        let keys = (access_key_id.clone(), secret_access_key.clone());

        let mut dbs: Vec<DbConfig> = Vec::new();
        for (i, raw_db) in raw.dbs.unwrap_or_default().into_iter().enumerate() {
            let place = format!("dbs[{i}]");
            if let Some(db) = self.db(&place, raw_db, &keys) {
                if let Some(j) = dbs.iter().position(|d| d.path == db.path) {
                    self.problem(
                        &format!("{place}.path"),
                        format!("{} is already configured as dbs[{j}]", db.path.display()),
                    );
                }
                dbs.push(db);
            } else {
                // Keep indexes aligned for the duplicate check's messages.
                dbs.push(DbConfig::with_defaults(PathBuf::new()));
            }
        }
        dbs.retain(|d| !d.path.as_os_str().is_empty());
        for (i, db) in dbs.iter().enumerate() {
            let Some(meta) = &db.meta_path else { continue };
            if let Some(j) = dbs[..i]
                .iter()
                .position(|o| o.meta_path.as_ref() == Some(meta))
            {
                self.problem(
                    &format!("dbs[{i}].meta-path"),
                    format!("{} is already the meta-path of dbs[{j}]", meta.display()),
                );
            }
        }

        Config {
            addr,
            exec: non_empty(raw.exec),
            access_key_id,
            secret_access_key,
            logging: LoggingConfig {
                level: logging.level.map_or(LogLevel::Info, |l| l.0),
                json: logging.r#type.is_some_and(|t| t.0),
                stderr: logging.stderr.unwrap_or(false),
            },
            snapshot_concurrency,
            health_max_lag,
            dbs,
            source: self.source.to_string(),
        }
    }

    /// `None` when the db has no usable path (already reported).
    fn db(
        &mut self,
        place: &str,
        raw: RawDb,
        keys: &(Option<String>, Option<String>),
    ) -> Option<DbConfig> {
        let path = match non_empty(raw.path) {
            None => {
                self.problem(
                    &format!("{place}.path"),
                    "required (the database file to replicate)",
                );
                None
            }
            Some(p) => match resolve_path(&p, self.cwd, self.home) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problem(&format!("{place}.path"), e);
                    None
                }
            },
        };
        let meta_path = match non_empty(raw.meta_path) {
            None => None,
            Some(p) => match resolve_path(&p, self.cwd, self.home) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problem(&format!("{place}.meta-path"), e);
                    None
                }
            },
        };
        let mut db = DbConfig::with_defaults(path.clone().unwrap_or_default());
        db.meta_path = meta_path;
        if let Some(d) = raw.monitor_interval {
            db.monitor_interval = d.0;
        }
        if let Some(d) = raw.checkpoint_interval {
            db.checkpoint_interval = d.0;
        }
        if let Some(d) = raw.busy_timeout {
            db.busy_timeout = d.0;
        }
        if let Some(c) = raw.min_checkpoint_page_count {
            db.min_checkpoint_page_count = c.0;
        }
        if let Some(c) = raw.max_checkpoint_page_count {
            db.max_checkpoint_page_count = c.0;
        }
        if let Some(c) = raw.truncate_page_count {
            db.truncate_page_count = c.0;
        }
        if db.monitor_interval.is_zero() {
            self.problem(
                &format!("{place}.monitor-interval"),
                "must be greater than 0",
            );
        }
        if db.min_checkpoint_page_count < 1 {
            self.problem(
                &format!("{place}.min-checkpoint-page-count"),
                "must be at least 1",
            );
        }
        if db.max_checkpoint_page_count != 0
            && db.max_checkpoint_page_count < db.min_checkpoint_page_count
        {
            self.problem(
                &format!("{place}.max-checkpoint-page-count"),
                format!(
                    "must be 0 (never) or at least min-checkpoint-page-count ({}), got {}",
                    db.min_checkpoint_page_count, db.max_checkpoint_page_count
                ),
            );
        }
        let floor = db
            .max_checkpoint_page_count
            .max(db.min_checkpoint_page_count);
        if db.truncate_page_count < floor {
            let which = if db.max_checkpoint_page_count >= db.min_checkpoint_page_count {
                "max-checkpoint-page-count"
            } else {
                "min-checkpoint-page-count"
            };
            self.problem(
                &format!("{place}.truncate-page-count"),
                format!(
                    "must be at least {which} ({floor}), got {}",
                    db.truncate_page_count
                ),
            );
        }

        let mut names: Vec<(usize, String)> = Vec::new();
        for (i, raw_r) in raw.replicas.unwrap_or_default().into_iter().enumerate() {
            let rplace = format!("{place}.replicas[{i}]");
            if let Some(r) = self.replica(&rplace, raw_r, keys) {
                if let Some((j, _)) = names.iter().find(|(_, n)| *n == r.name) {
                    self.problem(
                        &format!("{rplace}.name"),
                        format!(
                            "`{}` is already the name of {place}.replicas[{j}] (give each replica of a db a unique `name`)",
                            r.name
                        ),
                    );
                }
                names.push((i, r.name.clone()));
                let complete = match &r.target {
                    ReplicaTarget::File { path } => !path.as_os_str().is_empty(),
                    ReplicaTarget::S3(s3) => !s3.bucket.is_empty(),
                };
                let dest = destination(&r.target);
                let clash = self
                    .destinations
                    .iter()
                    .find(|(_, d)| complete && *d == dest);
                if let Some((other, _)) = clash {
                    let msg = format!(
                        "writes to the same place as {other} ({dest}); give each replica its own destination"
                    );
                    self.problem(&rplace, msg);
                }
                self.destinations.push((rplace, dest));
                db.replicas.push(r);
            }
        }
        path.map(|_| db)
    }

    fn replica(
        &mut self,
        place: &str,
        raw: RawReplica,
        keys: &(Option<String>, Option<String>),
    ) -> Option<ReplicaConfig> {
        let at = |key: &str| format!("{place}.{key}");
        let url = non_empty(raw.url);
        let bucket = non_empty(raw.bucket);
        let region = non_empty(raw.region);
        let endpoint = non_empty(raw.endpoint);
        let access_key_id = non_empty(raw.access_key_id);
        let secret_access_key = non_empty(raw.secret_access_key);
        let raw_path = non_empty(raw.path);

        let from_url = match &url {
            None => None,
            Some(u) => match parse_replica_url(u, self.cwd, self.home) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.problem(&at("url"), e);
                    return None;
                }
            },
        };
        let kind = match (raw.r#type, &from_url) {
            (Some(k), Some(t)) if k != Kind::of(t) => {
                self.problem(
                    &at("type"),
                    format!(
                        "`{}` does not match the url {:?}, which is a {} replica",
                        k.name(),
                        url.as_deref().unwrap_or_default(),
                        Kind::of(t).name()
                    ),
                );
                return None;
            }
            (Some(k), _) => k,
            (None, Some(t)) => Kind::of(t),
            (None, None) if bucket.is_some() => Kind::S3,
            (None, None) if raw_path.is_some() => Kind::File,
            (None, None) => {
                self.problem(
                    place,
                    "needs a `url`, or a `type` with its `path` (file) or `bucket` (s3)",
                );
                return None;
            }
        };

        let target = match kind {
            Kind::File => {
                let s3_only: [(&str, bool); 7] = [
                    ("bucket", bucket.is_some()),
                    ("region", region.is_some()),
                    ("endpoint", endpoint.is_some()),
                    ("force-path-style", raw.force_path_style.is_some()),
                    ("skip-verify", raw.skip_verify.is_some()),
                    ("access-key-id", access_key_id.is_some()),
                    ("secret-access-key", secret_access_key.is_some()),
                ];
                for (key, present) in s3_only {
                    if present {
                        self.problem(
                            &at(key),
                            "only valid for an s3 replica (this one is type file)",
                        );
                    }
                }
                let path = match (raw_path, from_url) {
                    (Some(p), _) => match resolve_path(&p, self.cwd, self.home) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.problem(&at("path"), e);
                            None
                        }
                    },
                    (None, Some(ReplicaTarget::File { path })) => Some(path),
                    (None, _) => {
                        self.problem(&at("path"), "required for a file replica (the directory to replicate into; or give a `url`)");
                        None
                    }
                };
                ReplicaTarget::File {
                    path: path.unwrap_or_default(),
                }
            }
            Kind::S3 => {
                let mut s3 = match from_url {
                    Some(ReplicaTarget::S3(s3)) => s3,
                    _ => S3Config::default(),
                };
                let url_path_style = s3.force_path_style;
                if let Some(b) = bucket {
                    s3.bucket = b;
                }
                if let Some(p) = raw_path {
                    s3.path = clean_key_prefix(&p);
                }
                if region.is_some() {
                    s3.region = region;
                }
                if let Some(e) = endpoint {
                    match check_endpoint(&e) {
                        Ok(e) => s3.endpoint = Some(e),
                        Err(msg) => self.problem(&at("endpoint"), msg),
                    }
                }
                s3.force_path_style = raw
                    .force_path_style
                    .unwrap_or(url_path_style || s3.endpoint.is_some());
                if let Some(v) = raw.skip_verify {
                    s3.skip_verify = v;
                }
                s3.access_key_id = access_key_id.or_else(|| keys.0.clone());
                s3.secret_access_key = secret_access_key.or_else(|| keys.1.clone());
                if s3.bucket.is_empty() {
                    self.problem(&at("bucket"), "required for an s3 replica");
                }
                ReplicaTarget::S3(s3)
            }
        };

        let mut r = ReplicaConfig::with_defaults(target);
        if let Some(n) = non_empty(raw.name) {
            r.name = n;
        }
        if let Some(d) = raw.retention {
            r.retention = d.0;
        }
        if let Some(d) = raw.retention_check_interval {
            r.retention_check_interval = d.0;
        }
        if let Some(d) = raw.snapshot_interval {
            r.snapshot_interval = d.0;
        }
        if let Some(d) = raw.validation_interval {
            r.validation_interval = d.0;
        }
        if let Some(d) = raw.sync_interval {
            r.sync_interval = d.0;
        }
        if let Some(c) = raw.compression {
            r.compression = c.0;
        }
        if r.sync_interval.is_zero() {
            self.problem(&at("sync-interval"), "must be greater than 0");
        }
        Some(r)
    }
}

/// Where a replica writes, as text: `/dir`, or `s3://bucket/prefix` (with its endpoint).
fn destination(target: &ReplicaTarget) -> String {
    match target {
        ReplicaTarget::File { path } => path.display().to_string(),
        ReplicaTarget::S3(s3) => {
            let mut d = format!("s3://{}/{}", s3.bucket, s3.path);
            if let Some(e) = &s3.endpoint {
                d.push_str(&format!(" at {e}"));
            }
            d
        }
    }
}

/// `addr` must carry a port: `:9090`, `127.0.0.1:9090`, `[::1]:9090`, `host:9090`.
fn check_addr(addr: &str) -> Result<(), String> {
    let hint = "use e.g. \":9090\" (all interfaces) or \"127.0.0.1:9090\"";
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} has no port; {hint}"));
    };
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{addr:?}: an IPv6 host must be in brackets, e.g. \"[::1]:9090\""
        ));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return Err(format!("{addr:?} has no valid port (0-65535); {hint}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// YAML errors as one clean line
// ---------------------------------------------------------------------------------------------

/// `SOURCE: `, or nothing when the text has no name.
fn lead(source: &str) -> String {
    if source.is_empty() {
        String::new()
    } else {
        format!("{source}: ")
    }
}

/// Turns a serde_norway error (`dbs[0].replicas[0]: unknown field `x`, expected one of … at
/// line 5 column 9`) into `SOURCE: line 5 column 9: unknown key `x` in dbs[0].replicas[0]
/// (did you mean `y`?)`.
fn yaml_problem(source: &str, err: &serde_norway::Error) -> String {
    let mut msg = err.to_string();
    let mut at = String::new();
    if let Some(loc) = err.location() {
        let mark = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = msg.find(&mark) {
            msg.replace_range(i..i + mark.len(), "");
        }
        at = format!("line {} column {}: ", loc.line(), loc.column());
    }
    let (place, rest) = split_place(&msg);
    if let Some((key, expected)) = parse_unknown_field(rest) {
        let where_ = match place {
            Some(p) => format!("in {p}"),
            None => "in the top level".to_string(),
        };
        let hint = key_hint(&key, &expected);
        return format!("{}{at}unknown key `{key}` {where_}{hint}", lead(source));
    }
    let rest = rest.replace("unit value", "empty value");
    match place {
        Some(p) => format!("{}{at}{p}: {rest}", lead(source)),
        None => format!("{}{at}{rest}", lead(source)),
    }
}

/// Splits serde_norway's `path: message` (the path has no spaces); `None` at the top level.
fn split_place(msg: &str) -> (Option<&str>, &str) {
    if let Some(i) = msg.find(": ") {
        let p = &msg[..i];
        if !p.is_empty()
            && p.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '[' | ']' | '?')
            })
        {
            return (Some(p), &msg[i + 2..]);
        }
    }
    (None, msg)
}

/// `unknown field `k`, expected one of `a`, `b`` → (`k`, [a, b]).
fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest.find("`, ").or_else(|| rest.rfind('`'))?;
    let key = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key, expected))
}

/// ` (did you mean `dbs`?)`, or a hint that the key belongs at another level, or nothing.
fn key_hint(key: &str, expected: &[String]) -> String {
    let here: Vec<&str> = expected.iter().map(String::as_str).collect();
    if let Some(s) = suggest(key, &here) {
        return format!(" (did you mean `{s}`?)");
    }
    let norm = normalize_key(key);
    let levels: [(&[&str], &str); 4] = [
        (DB_KEYS, "is a db key: put it under an entry of `dbs:`"),
        (
            REPLICA_KEYS,
            "is a replica key: put it under an entry of a db's `replicas:`",
        ),
        (TOP_KEYS, "is a top-level key"),
        (LOGGING_KEYS, "belongs under `logging:`"),
    ];
    for (keys, what) in levels {
        if keys.contains(&norm.as_str()) && !here.contains(&norm.as_str()) {
            return format!(" (`{norm}` {what})");
        }
    }
    if here.is_empty() {
        String::new()
    } else {
        format!(" (valid keys here: {})", here.join(", "))
    }
}

/// `snake_case`, `camelCase` and any case → `kebab-case`.
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c == '_' || c == ' ' {
            out.push('-');
            prev_lower = false;
        } else if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// The nearest candidate by edit distance (with transpositions), when reasonably close.
fn suggest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = normalize_key(key);
    let limit = match norm.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (edit_distance(&norm, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "litestream.yml";

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env_of(vars);
        Config::parse(
            text,
            SRC,
            true,
            &env,
            Path::new("/work/dir"),
            Some(Path::new("/home/user")),
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, &[])
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error:\n{e}"),
        }
    }

    /// The problems of an invalid config.
    fn errs(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.problems,
        }
    }

    fn one_err(text: &str) -> String {
        let p = errs(text);
        assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
        p.into_iter().next().unwrap()
    }

    fn s3(r: &ReplicaConfig) -> &S3Config {
        match &r.target {
            ReplicaTarget::S3(s3) => s3,
            other => panic!("not s3: {other:?}"),
        }
    }

    fn file_path(r: &ReplicaConfig) -> &Path {
        match &r.target {
            ReplicaTarget::File { path } => path,
            other => panic!("not file: {other:?}"),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    // --- whole files ---------------------------------------------------------------------

    #[test]
    fn full_example_with_every_key() {
        let text = include_str!("../testdata/config/full.yml");
        let c = parse_with(
            text,
            &[("GLOBAL_SECRET", "gsecret"), ("REPLICA_SECRET", "rsecret")],
        )
        .unwrap();
        assert_eq!(c.addr.as_deref(), Some("127.0.0.1:9091"));
        assert_eq!(c.exec.as_deref(), Some("myapp serve --port 8080"));
        assert_eq!(c.access_key_id.as_deref(), Some("GLOBALKEY"));
        assert_eq!(c.secret_access_key.as_deref(), Some("gsecret"));
        assert_eq!(
            c.logging,
            LoggingConfig {
                level: LogLevel::Debug,
                json: true,
                stderr: true
            }
        );
        assert_eq!(c.snapshot_concurrency, 3);
        assert_eq!(c.health_max_lag, secs(120));
        assert_eq!(c.source, SRC);
        assert_eq!(c.dbs.len(), 2);

        let db = &c.dbs[0];
        assert_eq!(db.path, PathBuf::from("/home/user/data/app.db"));
        assert_eq!(db.meta_path, Some(PathBuf::from("/work/dir/meta/app")));
        assert_eq!(db.monitor_interval, Duration::from_millis(500));
        assert_eq!(db.checkpoint_interval, secs(300));
        assert_eq!(db.busy_timeout, secs(2));
        assert_eq!(db.min_checkpoint_page_count, 500);
        assert_eq!(db.max_checkpoint_page_count, 5000);
        assert_eq!(db.truncate_page_count, 60000);
        assert_eq!(db.replicas.len(), 3);

        let r = &db.replicas[0];
        assert_eq!(
            *r,
            ReplicaConfig {
                name: "local".into(),
                target: ReplicaTarget::File {
                    path: PathBuf::from("/work/backup/app")
                },
                retention: secs(48 * 3600),
                retention_check_interval: secs(1800),
                snapshot_interval: secs(6 * 3600),
                validation_interval: secs(12 * 3600),
                sync_interval: Duration::from_millis(250),
                compression: Compression::Lz4,
            }
        );

        let r = &db.replicas[1];
        assert_eq!(r.name, "minio");
        assert_eq!(
            *s3(r),
            S3Config {
                bucket: "my-bucket".into(),
                path: "prod/app".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:9000".into()),
                force_path_style: false,
                skip_verify: true,
                access_key_id: Some("REPLICAKEY".into()),
                secret_access_key: Some("rsecret".into()),
            }
        );
        assert_eq!(r.retention, defaults::RETENTION);
        assert_eq!(r.compression, Compression::Gzip);

        // URL replica: global credentials merged in, defaults elsewhere.
        let r = &db.replicas[2];
        assert_eq!(r.name, "s3");
        assert_eq!(r.retention, secs(5400));
        assert_eq!(
            *s3(r),
            S3Config {
                bucket: "other-bucket".into(),
                path: "db".into(),
                access_key_id: Some("GLOBALKEY".into()),
                secret_access_key: Some("gsecret".into()),
                ..S3Config::default()
            }
        );

        let db = &c.dbs[1];
        assert_eq!(db.path, PathBuf::from("/var/lib/other.db"));
        assert_eq!(db.replicas[0].name, "file");
        assert_eq!(file_path(&db.replicas[0]), Path::new("/srv/backup/other"));
    }

    #[test]
    fn shipped_example_config_parses() {
        let c = ok(include_str!("../litestream.yml.example"));
        assert!(!c.dbs.is_empty());
        c.require_dbs().unwrap();
    }

    #[test]
    fn defaults_apply() {
        let c = ok("dbs:\n  - path: /data/app.db\n    replicas:\n      - path: /backup\n");
        let mut db = DbConfig::with_defaults(PathBuf::from("/data/app.db"));
        db.replicas
            .push(ReplicaConfig::with_defaults(ReplicaTarget::File {
                path: PathBuf::from("/backup"),
            }));
        let mut want = Config::with_dbs(vec![db]);
        want.source = SRC.into();
        assert_eq!(c, want);

        assert_eq!(c.addr, None);
        assert_eq!(c.exec, None);
        assert_eq!(c.logging.level, LogLevel::Info);
        assert!(!c.logging.json && !c.logging.stderr);
        assert_eq!(c.snapshot_concurrency, 1);
        assert_eq!(c.health_max_lag, secs(60));
        let db = &c.dbs[0];
        assert_eq!(db.meta_path, None);
        assert_eq!(db.monitor_interval, secs(1));
        assert_eq!(db.checkpoint_interval, secs(60));
        assert_eq!(db.busy_timeout, secs(1));
        assert_eq!(db.min_checkpoint_page_count, 1000);
        assert_eq!(db.max_checkpoint_page_count, 10000);
        assert_eq!(db.truncate_page_count, 121359);
        let r = &db.replicas[0];
        assert_eq!(r.name, "file");
        assert_eq!(r.retention, secs(24 * 3600));
        assert_eq!(r.retention_check_interval, secs(3600));
        assert_eq!(r.snapshot_interval, Duration::ZERO);
        assert_eq!(r.validation_interval, Duration::ZERO);
        assert_eq!(r.sync_interval, secs(1));
        assert_eq!(r.compression, Compression::Gzip);
    }

    #[test]
    fn empty_file_parses_but_has_no_dbs() {
        for text in [
            "",
            "\n",
            "# just a comment\n",
            "dbs:\n",
            "dbs: []\n",
            "---\n",
        ] {
            let c = ok(text);
            assert!(c.dbs.is_empty());
            let e = c.require_dbs().unwrap_err();
            assert_eq!(
                e.to_string(),
                "litestream.yml: no databases configured (add a `dbs:` list)"
            );
        }
        let e = Config::with_dbs(vec![]).require_dbs().unwrap_err();
        assert_eq!(e.to_string(), "no databases configured (add a `dbs:` list)");
    }

    #[test]
    fn unnamed_source_has_no_prefix() {
        let env = env_of(&[]);
        let parse = |t: &str| Config::parse(t, "", true, &env, Path::new("/"), None);
        assert_eq!(
            parse("db: []\n").unwrap_err().to_string(),
            "line 1 column 1: unknown key `db` in the top level (did you mean `dbs`?)"
        );
        assert_eq!(
            parse("addr: x\n").unwrap_err().to_string(),
            "addr: \"x\" has no port; use e.g. \":9090\" (all interfaces) or \"127.0.0.1:9090\""
        );
    }

    #[test]
    fn zero_replicas_allowed() {
        let c = ok("dbs:\n  - path: /a.db\n");
        assert!(c.dbs[0].replicas.is_empty());
        let c = ok("dbs:\n  - path: /a.db\n    replicas: []\n");
        assert!(c.dbs[0].replicas.is_empty());
    }

    #[test]
    fn global_settings() {
        let c = ok("addr: \":9090\"\nlogging:\n  level: WARN\n  type: text\n");
        assert_eq!(c.addr.as_deref(), Some(":9090"));
        assert_eq!(c.logging.level, LogLevel::Warn);
        assert!(!c.logging.json);
        for (v, want) in [
            ("debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("warning", LogLevel::Warn),
            ("error", LogLevel::Error),
        ] {
            assert_eq!(ok(&format!("logging:\n  level: {v}\n")).logging.level, want);
        }
        // Unquoted `:9090` is a YAML string too; an empty addr is "off".
        assert_eq!(ok("addr: :9090\n").addr.as_deref(), Some(":9090"));
        assert_eq!(ok("addr: \"\"\n").addr, None);
        assert_eq!(ok("addr:\n").addr, None);
        for good in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "0.0.0.0:0",
        ] {
            assert_eq!(
                ok(&format!("addr: \"{good}\"\n")).addr.as_deref(),
                Some(good)
            );
        }
        assert_eq!(ok("exec: \"\"\n").exec, None);
        assert_eq!(ok("health-max-lag: 5m\n").health_max_lag, secs(300));
    }

    // --- validation ----------------------------------------------------------------------

    #[test]
    fn addr_needs_a_port() {
        assert_eq!(
            one_err("addr: 9090\n"),
            "litestream.yml: addr: \"9090\" has no port; use e.g. \":9090\" (all interfaces) or \"127.0.0.1:9090\""
        );
        for bad in ["localhost", "127.0.0.1:", ":http", ":99999", "::1:9090"] {
            let e = one_err(&format!("addr: \"{bad}\"\n"));
            assert!(e.starts_with("litestream.yml: addr: "), "{e}");
        }
    }

    #[test]
    fn global_validation() {
        assert_eq!(
            one_err("snapshot-concurrency: 0\n"),
            "litestream.yml: snapshot-concurrency: must be at least 1"
        );
        assert_eq!(
            one_err("health-max-lag: 0s\n"),
            "litestream.yml: health-max-lag: must be greater than 0"
        );
    }

    #[test]
    fn db_validation_names_each_place() {
        let p = errs(
            "dbs:\n  - path: /a.db\n    monitor-interval: 0\n    min-checkpoint-page-count: 0\n    max-checkpoint-page-count: 0\n    truncate-page-count: 0\n  - meta-path: /m\n",
        );
        assert_eq!(
            p,
            vec![
                "litestream.yml: dbs[0].monitor-interval: must be greater than 0",
                "litestream.yml: dbs[0].min-checkpoint-page-count: must be at least 1",
                "litestream.yml: dbs[1].path: required (the database file to replicate)",
            ]
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    min-checkpoint-page-count: 10\n    max-checkpoint-page-count: 5\n    truncate-page-count: 100\n"),
            "litestream.yml: dbs[0].max-checkpoint-page-count: must be 0 (never) or at least min-checkpoint-page-count (10), got 5"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    truncate-page-count: 9999\n"),
            "litestream.yml: dbs[0].truncate-page-count: must be at least max-checkpoint-page-count (10000), got 9999"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    max-checkpoint-page-count: 0\n    truncate-page-count: 999\n"),
            "litestream.yml: dbs[0].truncate-page-count: must be at least min-checkpoint-page-count (1000), got 999"
        );
        // max 0 = never RESTART is fine; equal counts are fine.
        let c = ok("dbs:\n  - path: /a.db\n    max-checkpoint-page-count: 0\n");
        assert_eq!(c.dbs[0].max_checkpoint_page_count, 0);
        ok("dbs:\n  - path: /a.db\n    min-checkpoint-page-count: 5\n    max-checkpoint-page-count: 5\n    truncate-page-count: 5\n");
        // Zero checkpoint interval and busy timeout are allowed (off / no waiting).
        ok("dbs:\n  - path: /a.db\n    checkpoint-interval: 0\n    busy-timeout: 0\n");
    }

    #[test]
    fn duplicate_db_paths() {
        // Same file spelled differently: relative vs absolute, with `./` and `..`.
        assert_eq!(
            one_err("dbs:\n  - path: app.db\n  - path: /work/dir/./x/../app.db\n"),
            "litestream.yml: dbs[1].path: /work/dir/app.db is already configured as dbs[0]"
        );
    }

    #[test]
    fn replica_validation_names_each_place() {
        let p = errs(
            "dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n      - type: s3\n        path: prefix\n      - type: file\n        bucket: b\n        skip-verify: true\n      - retention: 1h\n      - path: /c\n        sync-interval: 0s\n      - type: s3\n        name: s3b\n",
        );
        assert_eq!(
            p,
            vec![
                "litestream.yml: dbs[0].replicas[1].bucket: required for an s3 replica",
                "litestream.yml: dbs[0].replicas[2].bucket: only valid for an s3 replica (this one is type file)",
                "litestream.yml: dbs[0].replicas[2].skip-verify: only valid for an s3 replica (this one is type file)",
                "litestream.yml: dbs[0].replicas[2].path: required for a file replica (the directory to replicate into; or give a `url`)",
                "litestream.yml: dbs[0].replicas[2].name: `file` is already the name of dbs[0].replicas[0] (give each replica of a db a unique `name`)",
                "litestream.yml: dbs[0].replicas[3]: needs a `url`, or a `type` with its `path` (file) or `bucket` (s3)",
                "litestream.yml: dbs[0].replicas[4].sync-interval: must be greater than 0",
                "litestream.yml: dbs[0].replicas[4].name: `file` is already the name of dbs[0].replicas[0] (give each replica of a db a unique `name`)",
                "litestream.yml: dbs[0].replicas[5].bucket: required for an s3 replica",
            ]
        );
    }

    #[test]
    fn s3_keys_on_a_file_replica() {
        for key in [
            "bucket: b",
            "region: r",
            "endpoint: http://x",
            "force-path-style: true",
            "skip-verify: false",
            "access-key-id: k",
            "secret-access-key: s",
        ] {
            let name = key.split(':').next().unwrap();
            assert_eq!(
                one_err(&format!(
                    "dbs:\n  - path: /a.db\n    replicas:\n      - type: file\n        path: /b\n        {key}\n"
                )),
                format!("litestream.yml: dbs[0].replicas[0].{name}: only valid for an s3 replica (this one is type file)")
            );
        }
    }

    #[test]
    fn replicas_may_not_share_a_destination() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - path: /bk\n  - path: /b.db\n    replicas:\n      - url: file:///bk/\n"),
            "litestream.yml: dbs[1].replicas[0]: writes to the same place as dbs[0].replicas[0] (/bk); give each replica its own destination"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n      - name: two\n        type: s3\n        bucket: b\n        path: /p/\n"),
            "litestream.yml: dbs[0].replicas[1]: writes to the same place as dbs[0].replicas[0] (s3://b/p); give each replica its own destination"
        );
        // Same bucket and prefix on different endpoints, or different prefixes: fine.
        ok("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n      - url: s3://b.localhost:9000/p\n        name: local\n      - url: s3://b/p/2\n        name: three\n");
        assert_eq!(
            one_err(
                "dbs:\n  - path: /a.db\n    meta-path: /m\n  - path: /b.db\n    meta-path: /m/\n"
            ),
            "litestream.yml: dbs[1].meta-path: /m is already the meta-path of dbs[0]"
        );
    }

    #[test]
    fn replica_names_unique_per_db_only() {
        let c = ok("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n      - name: second\n        path: /c\n  - path: /b.db\n    replicas:\n      - path: /d\n");
        assert_eq!(c.dbs[0].replicas[0].name, "file");
        assert_eq!(c.dbs[0].replicas[1].name, "second");
        assert_eq!(c.dbs[1].replicas[0].name, "file");
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://a/b\n      - url: s3://c/d\n"),
            "litestream.yml: dbs[0].replicas[1].name: `s3` is already the name of dbs[0].replicas[0] (give each replica of a db a unique `name`)"
        );
    }

    #[test]
    fn replica_type_inference_and_mismatch() {
        let c = ok("dbs:\n  - path: /a.db\n    replicas:\n      - path: rel\n      - bucket: bkt\n        name: x\n      - url: s3://b/p\n        name: y\n      - url: /abs\n        name: z\n");
        let rs = &c.dbs[0].replicas;
        assert_eq!(file_path(&rs[0]), Path::new("/work/dir/rel"));
        assert_eq!(s3(&rs[1]).bucket, "bkt");
        assert_eq!(s3(&rs[2]).bucket, "b");
        assert_eq!(file_path(&rs[3]), Path::new("/abs"));
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - type: file\n        url: s3://b/p\n"),
            "litestream.yml: dbs[0].replicas[0].type: `file` does not match the url \"s3://b/p\", which is a s3 replica"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - url: gcs://b/p\n"),
            "litestream.yml: dbs[0].replicas[0].url: unsupported replica URL scheme `gcs` in \"gcs://b/p\" (supported: file, s3, or a plain path)"
        );
    }

    #[test]
    fn explicit_keys_override_the_url() {
        let c = ok("access-key-id: G\nsecret-access-key: GS\ndbs:\n  - path: /a.db\n    replicas:\n      - url: s3://bkt.localhost:9000/from/url\n        bucket: other\n        path: /override/\n        region: eu-central-1\n        force-path-style: false\n        access-key-id: R\n");
        assert_eq!(
            *s3(&c.dbs[0].replicas[0]),
            S3Config {
                bucket: "other".into(),
                path: "override".into(),
                region: Some("eu-central-1".into()),
                endpoint: Some("http://localhost:9000".into()),
                force_path_style: false,
                skip_verify: false,
                access_key_id: Some("R".into()),
                secret_access_key: Some("GS".into()),
            }
        );
        // A file url's path is replaced by an explicit path.
        let c =
            ok("dbs:\n  - path: /a.db\n    replicas:\n      - url: file:///x\n        path: y\n");
        assert_eq!(file_path(&c.dbs[0].replicas[0]), Path::new("/work/dir/y"));
    }

    #[test]
    fn force_path_style_defaults() {
        let get = |extra: &str| {
            let c = ok(&format!(
                "dbs:\n  - path: /a.db\n    replicas:\n      - type: s3\n        bucket: b\n{extra}"
            ));
            s3(&c.dbs[0].replicas[0]).clone()
        };
        assert!(!get("").force_path_style);
        assert!(get("        endpoint: http://127.0.0.1:9000\n").force_path_style);
        assert!(
            !get("        endpoint: http://127.0.0.1:9000\n        force-path-style: false\n")
                .force_path_style
        );
        assert!(get("        force-path-style: true\n").force_path_style);
        assert_eq!(
            get("        endpoint: https://s3.example.com/\n")
                .endpoint
                .as_deref(),
            Some("https://s3.example.com")
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - type: s3\n        bucket: b\n        endpoint: 127.0.0.1:9000\n"),
            "litestream.yml: dbs[0].replicas[0].endpoint: endpoint \"127.0.0.1:9000\" needs a scheme, e.g. \"http://127.0.0.1:9000\" or \"https://127.0.0.1:9000\""
        );
    }

    #[test]
    fn empty_strings_count_as_absent() {
        // `$UNSET` expands to nothing: credentials fall back to the global ones, then to none.
        let c = parse_with(
            "access-key-id: $AK\ndbs:\n  - path: /a.db\n    replicas:\n      - type: s3\n        bucket: b\n        region: \"${REGION}\"\n        access-key-id: \"$UNSET\"\n        secret-access-key: \"\"\n",
            &[("AK", "global")],
        )
        .unwrap();
        let s = s3(&c.dbs[0].replicas[0]);
        assert_eq!(s.access_key_id.as_deref(), Some("global"));
        assert_eq!(s.secret_access_key, None);
        assert_eq!(s.region, None);
    }

    #[test]
    fn all_problems_reported_together() {
        let p = errs("addr: nope\nsnapshot-concurrency: 0\ndbs:\n  - path: /a.db\n    monitor-interval: 0\n    replicas:\n      - type: s3\n");
        assert_eq!(p.len(), 4, "{p:#?}");
        let e = ConfigError {
            problems: p.clone(),
        };
        assert_eq!(e.to_string(), p.join("\n"));
        for line in &p {
            assert!(line.starts_with("litestream.yml: "), "{line}");
            assert!(!line.contains('\n'));
        }
    }

    // --- unknown keys and type errors ----------------------------------------------------

    #[test]
    fn unknown_top_level_key_suggests_dbs() {
        // The seed README's own typo.
        let e = one_err("db:\n  - path: /var/lib/db\n    replicas:\n      - url: s3://bucket/db\n");
        assert_eq!(
            e,
            "litestream.yml: line 1 column 1: unknown key `db` in the top level (did you mean `dbs`?)"
        );
        let e = one_err("logging:\n  level: info\ndb:\n  - path: /x\n");
        assert!(e.contains("line 3 column 1"), "{e}");
        assert!(e.contains("did you mean `dbs`?"), "{e}");
    }

    #[test]
    fn unknown_nested_keys() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n        retension: 72h\n"),
            "litestream.yml: line 5 column 9: unknown key `retension` in dbs[0].replicas[0] (did you mean `retention`?)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    monitor_interval: 1s\n"),
            "litestream.yml: line 3 column 5: unknown key `monitor_interval` in dbs[0] (did you mean `monitor-interval`?)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    checkpointInterval: 1s\n"),
            "litestream.yml: line 3 column 5: unknown key `checkpointInterval` in dbs[0] (did you mean `checkpoint-interval`?)"
        );
        assert_eq!(
            one_err("logging:\n  levle: debug\n"),
            "litestream.yml: line 2 column 3: unknown key `levle` in logging (did you mean `level`?)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replica:\n      - path: /b\n"),
            "litestream.yml: line 3 column 5: unknown key `replica` in dbs[0] (did you mean `replicas`?)"
        );
    }

    #[test]
    fn unknown_key_at_the_wrong_level() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    bucket: b\n"),
            "litestream.yml: line 3 column 5: unknown key `bucket` in dbs[0] (`bucket` is a replica key: put it under an entry of a db's `replicas:`)"
        );
        assert_eq!(
            one_err("level: debug\n"),
            "litestream.yml: line 1 column 1: unknown key `level` in the top level (`level` belongs under `logging:`)"
        );
        assert_eq!(
            one_err("path: /a.db\n"),
            "litestream.yml: line 1 column 1: unknown key `path` in the top level (`path` is a db key: put it under an entry of `dbs:`)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    addr: \":9090\"\n"),
            "litestream.yml: line 3 column 5: unknown key `addr` in dbs[0] (`addr` is a top-level key)"
        );
    }

    #[test]
    fn unknown_key_far_from_any_lists_the_valid_ones() {
        assert_eq!(
            one_err("logging:\n  colour: true\n"),
            "litestream.yml: line 2 column 3: unknown key `colour` in logging (valid keys here: level, type, stderr)"
        );
    }

    #[test]
    fn key_lists_match_the_schema() {
        // The hint tables must list exactly what serde accepts at each level.
        let expected = |text: &str| -> Vec<String> {
            let err = serde_norway::from_str::<RawConfig>(text).err().unwrap();
            let msg = err.to_string();
            let (_, rest) = split_place(&msg);
            parse_unknown_field(rest).unwrap().1
        };
        assert_eq!(expected("zz: 1\n"), TOP_KEYS);
        assert_eq!(expected("logging:\n  zz: 1\n"), LOGGING_KEYS);
        assert_eq!(expected("dbs:\n  - zz: 1\n"), DB_KEYS);
        assert_eq!(expected("dbs:\n  - replicas:\n    - zz: 1\n"), REPLICA_KEYS);
    }

    #[test]
    fn type_errors_name_key_place_and_line() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    monitor-interval: abc\n"),
            "litestream.yml: line 3 column 23: dbs[0].monitor-interval: invalid duration \"abc\": expected a number (use e.g. 500ms, 1s, 10m, 1h30m)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    min-checkpoint-page-count: -1\n"),
            "litestream.yml: line 3 column 32: dbs[0].min-checkpoint-page-count: must not be negative, got -1"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    truncate-page-count: 1.5\n"),
            "litestream.yml: line 3 column 26: dbs[0].truncate-page-count: must be a whole number, got 1.5"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    busy-timeout: 5\n"),
            "litestream.yml: line 3 column 19: dbs[0].busy-timeout: invalid duration 5: missing unit (e.g. \"5s\" or \"5ms\")"
        );
        assert_eq!(
            one_err("dbs:\n  - [1, 2]\n"),
            "litestream.yml: line 2 column 5: dbs[0]: invalid type: sequence, expected a map of db settings (path, replicas, ...)"
        );
        assert_eq!(
            one_err("dbs:\n  path: /a.db\n"),
            "litestream.yml: line 2 column 3: dbs: invalid type: map, expected a sequence"
        );
        assert_eq!(
            one_err("logging: [debug]\n"),
            "litestream.yml: line 1 column 10: logging: invalid type: sequence, expected a map of logging settings (level, type, stderr)"
        );
        assert_eq!(
            one_err("logging:\n  level: verbose\n"),
            "litestream.yml: line 2 column 10: logging.level: unknown log level \"verbose\" (expected debug, info, warn or error)"
        );
        assert_eq!(
            one_err("logging:\n  type: xml\n"),
            "litestream.yml: line 2 column 9: logging.type: unknown log type \"xml\" (expected text or json)"
        );
        assert_eq!(
            one_err("logging:\n  stderr: maybe\n"),
            "litestream.yml: line 2 column 11: logging.stderr: invalid type: string \"maybe\", expected a boolean"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - type: gcs\n"),
            "litestream.yml: line 4 column 15: dbs[0].replicas[0].type: unknown replica type \"gcs\" (supported: file, s3)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        compression: zstd\n"),
            "litestream.yml: line 5 column 22: dbs[0].replicas[0].compression: unknown compression \"zstd\" (expected gzip or lz4)"
        );
        assert_eq!(
            one_err("snapshot-concurrency: many\n"),
            "litestream.yml: line 1 column 23: snapshot-concurrency: must be a whole number, got \"many\""
        );
        assert_eq!(
            one_err("just a string\n"),
            "litestream.yml: line 1 column 1: invalid type: string \"just a string\", expected a map of settings (dbs, logging, addr, ...)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    path: /b.db\n"),
            "litestream.yml: line 2 column 5: dbs[0]: duplicate field `path`"
        );
    }

    #[test]
    fn yaml_syntax_errors_are_one_line_with_position() {
        let e = one_err("dbs:\n  - path: x\n   bad: : y\n");
        assert!(e.starts_with("litestream.yml: line 3 column 4: "), "{e}");
        assert!(!e.contains('\n'));
        let e = one_err("dbs: [\n");
        assert!(e.starts_with("litestream.yml: line 2 column 1: "), "{e}");
    }

    #[test]
    fn durations_accept_bare_zero_and_strings() {
        let c = ok("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        snapshot-interval: 0\n        validation-interval: \"0s\"\n        retention-check-interval: 0\n        retention: 1.5h\n        sync-interval: 100us\n");
        let r = &c.dbs[0].replicas[0];
        assert_eq!(r.snapshot_interval, Duration::ZERO);
        assert_eq!(r.validation_interval, Duration::ZERO);
        assert_eq!(r.retention_check_interval, Duration::ZERO);
        assert_eq!(r.retention, secs(5400));
        assert_eq!(r.sync_interval, Duration::from_micros(100));
    }

    #[test]
    fn counts_accept_quoted_numbers() {
        let c = ok("snapshot-concurrency: \"4\"\ndbs:\n  - path: /a.db\n    min-checkpoint-page-count: \"10\"\n");
        assert_eq!(c.snapshot_concurrency, 4);
        assert_eq!(c.dbs[0].min_checkpoint_page_count, 10);
        let e = one_err("dbs:\n  - path: /a.db\n    truncate-page-count: 99999999999\n");
        assert!(
            e.contains("dbs[0].truncate-page-count: 99999999999 is too large"),
            "{e}"
        );
    }

    // --- environment expansion -----------------------------------------------------------

    #[test]
    fn env_expansion_both_forms() {
        let text = "dbs:\n  - path: $DIR/app.db\n    replicas:\n      - url: s3://${BUCKET}/db\n        secret-access-key: ${NOPE}x\n";
        let c = parse_with(text, &[("DIR", "/data"), ("BUCKET", "bkt")]).unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/data/app.db"));
        let s = s3(&c.dbs[0].replicas[0]);
        assert_eq!(s.bucket, "bkt");
        assert_eq!(s.secret_access_key.as_deref(), Some("x"));
    }

    #[test]
    fn no_env_expansion_when_disabled() {
        let env = env_of(&[("DIR", "/data")]);
        let c = Config::parse(
            "dbs:\n  - path: /x/$DIR/app.db\n",
            SRC,
            false,
            &env,
            Path::new("/"),
            None,
        )
        .unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/x/$DIR/app.db"));
    }

    #[test]
    fn expand_env_follows_go() {
        let env = env_of(&[
            ("A", "a"),
            ("AB", "ab"),
            ("1", "one"),
            ("$", "pid"),
            ("A_1", "u"),
        ]);
        let cases = [
            ("plain", "plain"),
            ("$A", "a"),
            ("$AB", "ab"),
            ("${A}B", "aB"),
            ("$A_1", "u"),
            ("x$A.y", "xa.y"),
            ("$UNSET-", "-"),
            ("${UNSET}", ""),
            ("cost: 5$", "cost: 5$"),
            ("$ x", "$ x"),
            ("$$", "pid"),
            ("$1", "one"),
            ("${1}", "one"),
            ("${}", ""),
            ("a${b", "ab"),
            ("é$A→", "éa→"),
            ("$-", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand_env_vars(input, &env), want, "input {input:?}");
        }
    }

    // --- durations -----------------------------------------------------------------------

    #[test]
    fn durations_table() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("1s", secs(1)),
            ("+1s", secs(1)),
            ("10m", secs(600)),
            ("1h30m", secs(5400)),
            ("24h", secs(86400)),
            ("1.5h", secs(5400)),
            (".5s", ms(500)),
            ("1.s", secs(1)),
            ("1m30.5s", ms(90_500)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("100μs", Duration::from_micros(100)),
            ("15ns", Duration::from_nanos(15)),
            ("1h1m1s1ms1us1ns", Duration::from_nanos(3_661_001_001_001)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("0.0000000019s", Duration::from_nanos(1)),
            ("2562047h", secs(2_562_047 * 3600)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s), Ok(*want), "{s:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "invalid duration \"\": empty"),
            (
                "5",
                "invalid duration \"5\": missing unit after 5 (e.g. \"5s\")",
            ),
            ("1.5", "invalid duration \"1.5\": missing unit after 1.5"),
            ("-1s", "invalid duration \"-1s\": must not be negative"),
            ("1x", "invalid duration \"1x\": unknown unit \"x\""),
            ("1sec", "invalid duration \"1sec\": unknown unit \"sec\""),
            ("s", "invalid duration \"s\": expected a number"),
            (".s", "invalid duration \".s\": expected a number"),
            ("1s ", "invalid duration \"1s \": unknown unit \"s \""),
            (" 1s", "invalid duration \" 1s\": expected a number"),
            ("1h-1m", "invalid duration \"1h-1m\": unknown unit \"h-\""),
            ("-", "invalid duration \"-\": empty"),
            (
                "9999999999999999999h",
                "invalid duration \"9999999999999999999h\": too large",
            ),
            ("2562048h", "invalid duration \"2562048h\": too large"),
        ];
        for (s, want) in bad {
            let e = parse_duration(s).unwrap_err();
            assert!(e.starts_with(want), "{s:?}: {e}");
        }
    }

    // --- paths ---------------------------------------------------------------------------

    #[test]
    fn db_and_replica_paths_resolve() {
        let c = ok("dbs:\n  - path: ~/app.db\n    meta-path: \"~\"\n    replicas:\n      - path: ../up\n      - path: ~/bk\n        name: home\n  - path: ./sub/../rel.db\n    meta-path: /abs/./meta/\n  - path: /abs/app.db\n");
        assert_eq!(c.dbs[0].path, PathBuf::from("/home/user/app.db"));
        assert_eq!(c.dbs[0].meta_path, Some(PathBuf::from("/home/user")));
        assert_eq!(file_path(&c.dbs[0].replicas[0]), Path::new("/work/up"));
        assert_eq!(file_path(&c.dbs[0].replicas[1]), Path::new("/home/user/bk"));
        assert_eq!(c.dbs[1].path, PathBuf::from("/work/dir/rel.db"));
        assert_eq!(c.dbs[1].meta_path, Some(PathBuf::from("/abs/meta")));
        assert_eq!(c.dbs[2].path, PathBuf::from("/abs/app.db"));
        for db in &c.dbs {
            assert!(db.path.is_absolute());
        }
        // `~user` is not expanded (as in Litestream): it is a relative name.
        let c = ok("dbs:\n  - path: ~bob/app.db\n");
        assert_eq!(c.dbs[0].path, PathBuf::from("/work/dir/~bob/app.db"));
        // `..` above the root stays at the root.
        let c = ok("dbs:\n  - path: /../../a.db\n");
        assert_eq!(c.dbs[0].path, PathBuf::from("/a.db"));
    }

    #[test]
    fn tilde_without_a_home_is_an_error() {
        let env = env_of(&[]);
        let e = Config::parse(
            "dbs:\n  - path: ~/app.db\n",
            SRC,
            true,
            &env,
            Path::new("/w"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.problems,
            vec!["litestream.yml: dbs[0].path: cannot expand `~` in \"~/app.db\": no home directory is known (use an absolute path)"]
        );
    }

    // --- replica URLs --------------------------------------------------------------------

    fn url_s3(url: &str) -> S3Config {
        match ReplicaConfig::from_url(url, Path::new("/cwd")) {
            Ok(r) => {
                assert_eq!(r.name, "s3");
                s3(&r).clone()
            }
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn url_file(url: &str) -> PathBuf {
        let r = ReplicaConfig::from_url(url, Path::new("/cwd")).unwrap();
        assert_eq!(r.name, "file");
        file_path(&r).to_path_buf()
    }

    fn s3cfg(
        bucket: &str,
        path: &str,
        region: Option<&str>,
        endpoint: Option<&str>,
        fps: bool,
    ) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            path: path.into(),
            region: region.map(Into::into),
            endpoint: endpoint.map(Into::into),
            force_path_style: fps,
            ..S3Config::default()
        }
    }

    #[test]
    fn url_file_forms() {
        assert_eq!(
            url_file("file:///var/backups/db"),
            PathBuf::from("/var/backups/db")
        );
        assert_eq!(url_file("file://localhost/var/b"), PathBuf::from("/var/b"));
        assert_eq!(url_file("file:///a/./b/../c/"), PathBuf::from("/a/c"));
        assert_eq!(url_file("file:///my%20dir"), PathBuf::from("/my dir"));
        assert_eq!(url_file("/abs/path"), PathBuf::from("/abs/path"));
        assert_eq!(url_file("rel/path"), PathBuf::from("/cwd/rel/path"));
        assert_eq!(url_file("../up"), PathBuf::from("/up"));
        assert_eq!(url_file("with:colon"), PathBuf::from("/cwd/with:colon"));
        let e = ReplicaConfig::from_url("file://host/x", Path::new("/cwd")).unwrap_err();
        assert!(e.contains("must hold an absolute path"), "{e}");
        let e = ReplicaConfig::from_url("~/x", Path::new("/cwd")).unwrap_err();
        assert!(e.contains("cannot expand `~`"), "{e}");
        let r = ReplicaConfig::from_url("/b", Path::new("/")).unwrap();
        assert_eq!(
            r,
            ReplicaConfig::with_defaults(ReplicaTarget::File { path: "/b".into() })
        );
    }

    #[test]
    fn url_s3_aws() {
        assert_eq!(
            url_s3("s3://mybucket/path/to/db"),
            s3cfg("mybucket", "path/to/db", None, None, false)
        );
        assert_eq!(
            url_s3("s3://mybucket"),
            s3cfg("mybucket", "", None, None, false)
        );
        assert_eq!(
            url_s3("s3://mybucket/"),
            s3cfg("mybucket", "", None, None, false)
        );
        assert_eq!(
            url_s3("s3://mybucket//a//b/"),
            s3cfg("mybucket", "a/b", None, None, false)
        );
        assert_eq!(
            url_s3("s3://my.dotted.bucket/p"),
            s3cfg("my.dotted.bucket", "p", None, None, false)
        );
        assert_eq!(url_s3("S3://b/p%20q"), s3cfg("b", "p q", None, None, false));
        // A port on a plain AWS host is dropped, as Litestream does.
        assert_eq!(
            url_s3("s3://mybucket:443/p"),
            s3cfg("mybucket", "p", None, None, false)
        );
        let r = ReplicaConfig::from_url("s3://b/p", Path::new("/")).unwrap();
        assert_eq!(r.retention, defaults::RETENTION);
        assert_eq!(r.sync_interval, defaults::SYNC_INTERVAL);
    }

    #[test]
    fn url_s3_localhost() {
        assert_eq!(
            url_s3("s3://mybkt.localhost:9000/db"),
            s3cfg(
                "mybkt",
                "db",
                Some("us-east-1"),
                Some("http://localhost:9000"),
                true
            )
        );
        assert_eq!(
            url_s3("s3://mybkt.localhost/db"),
            s3cfg(
                "mybkt",
                "db",
                Some("us-east-1"),
                Some("http://localhost"),
                true
            )
        );
    }

    #[test]
    fn url_s3_providers() {
        assert_eq!(
            url_s3("s3://mybkt.s3.us-west-000.backblazeb2.com/db"),
            s3cfg(
                "mybkt",
                "db",
                Some("us-west-000"),
                Some("https://s3.us-west-000.backblazeb2.com"),
                true
            )
        );
        assert_eq!(
            url_s3("s3://mybkt.nyc3.digitaloceanspaces.com/db"),
            s3cfg(
                "mybkt",
                "db",
                Some("nyc3"),
                Some("https://nyc3.digitaloceanspaces.com"),
                true
            )
        );
        assert_eq!(
            url_s3("s3://mybkt.us-east-1.linodeobjects.com/db"),
            s3cfg(
                "mybkt",
                "db",
                Some("us-east-1"),
                Some("https://us-east-1.linodeobjects.com"),
                true
            )
        );
        assert_eq!(
            url_s3("s3://mybkt.s3.fr-par.scw.cloud/db"),
            s3cfg(
                "mybkt",
                "db",
                Some("fr-par"),
                Some("https://s3.fr-par.scw.cloud"),
                true
            )
        );
        assert_eq!(
            url_s3("s3://mybkt.s3.filebase.com/db"),
            s3cfg("mybkt", "db", None, Some("https://s3.filebase.com"), true)
        );
        // Dotted bucket names and ports carry through.
        assert_eq!(
            url_s3("s3://a.b.nyc3.digitaloceanspaces.com:8443/db"),
            s3cfg(
                "a.b",
                "db",
                Some("nyc3"),
                Some("https://nyc3.digitaloceanspaces.com:8443"),
                true
            )
        );
    }

    #[test]
    fn url_s3_query_parameters() {
        assert_eq!(
            url_s3("s3://bkt/db?endpoint=http://127.0.0.1:9000&region=auto"),
            s3cfg(
                "bkt",
                "db",
                Some("auto"),
                Some("http://127.0.0.1:9000"),
                true
            )
        );
        assert_eq!(
            url_s3(
                "s3://bkt/db?endpoint=https%3A%2F%2Fminio.example.com%2F&force-path-style=false"
            ),
            s3cfg("bkt", "db", None, Some("https://minio.example.com"), false)
        );
        assert_eq!(
            url_s3("s3://bkt/db?force-path-style=true"),
            s3cfg("bkt", "db", None, None, true)
        );
        let mut want = s3cfg("bkt", "db", None, None, false);
        want.skip_verify = true;
        assert_eq!(url_s3("s3://bkt/db?skip-verify=true"), want);
        assert_eq!(
            url_s3("s3://bkt.localhost:9000/db?region=eu-west-1"),
            s3cfg(
                "bkt",
                "db",
                Some("eu-west-1"),
                Some("http://localhost:9000"),
                true
            )
        );
    }

    #[test]
    fn url_errors() {
        let err = |u: &str| ReplicaConfig::from_url(u, Path::new("/cwd")).unwrap_err();
        assert_eq!(err(""), "empty replica URL");
        assert_eq!(
            err("gcs://bucket/db"),
            "unsupported replica URL scheme `gcs` in \"gcs://bucket/db\" (supported: file, s3, or a plain path)"
        );
        assert!(err("abs://acct@container/db").contains("unsupported replica URL scheme `abs`"));
        assert!(err("sftp://host/db").contains("unsupported replica URL scheme `sftp`"));
        assert_eq!(
            err("s3:///db"),
            "s3 URL \"s3:///db\" names no bucket (s3://BUCKET/PATH)"
        );
        assert!(err("s3://localhost:9000/db").contains("names no bucket"));
        assert!(err("s3://b/db?foo=1").contains("unknown parameter `foo`"));
        assert!(err("s3://b/db?force-path-style=maybe").contains("must be true or false"));
        assert!(err("s3://b/db?endpoint=localhost:9000").contains("needs a scheme"));
        assert!(
            err("s3://key:secret@b/db").contains("credentials in replica URLs are not supported")
        );
        assert!(err("s3://b/%zz").contains("bad %-escape"));
    }

    // --- secrets -------------------------------------------------------------------------

    #[test]
    fn debug_never_prints_secrets() {
        let c = parse_with(
            "secret-access-key: TOPSECRET1\naccess-key-id: AKID\ndbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n      - url: s3://c/p\n        name: two\n        secret-access-key: TOPSECRET2\n",
            &[],
        )
        .unwrap();
        let dbg = format!("{c:?}");
        let pretty = format!("{c:#?}");
        for out in [&dbg, &pretty] {
            assert!(!out.contains("TOPSECRET"), "{out}");
            assert!(out.contains("***"));
            assert!(out.contains("AKID"));
        }
        let s3dbg = format!("{:?}", s3(&c.dbs[0].replicas[1]));
        assert!(!s3dbg.contains("TOPSECRET2") && s3dbg.contains("Some(\"***\")"));
        assert!(format!("{:?}", S3Config::default()).contains("secret_access_key: None"));
        // Secrets are still there for whoever needs them.
        assert_eq!(
            s3(&c.dbs[0].replicas[1]).secret_access_key.as_deref(),
            Some("TOPSECRET2")
        );
        assert_eq!(
            s3(&c.dbs[0].replicas[0]).secret_access_key.as_deref(),
            Some("TOPSECRET1")
        );
    }

    // --- misc ----------------------------------------------------------------------------

    #[test]
    fn suggestions_only_when_close() {
        assert_eq!(suggest("db", TOP_KEYS), Some("dbs"));
        assert_eq!(suggest("retnetion", REPLICA_KEYS), Some("retention"));
        assert_eq!(suggest("buckt", REPLICA_KEYS), Some("bucket"));
        assert_eq!(suggest("x", TOP_KEYS), None);
        assert_eq!(suggest("frobnicate", DB_KEYS), None);
        assert_eq!(
            suggest("Sync_Interval", REPLICA_KEYS),
            Some("sync-interval")
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn with_defaults_constructors() {
        let db = DbConfig::with_defaults(PathBuf::from("/x.db"));
        assert_eq!(db.path, PathBuf::from("/x.db"));
        assert_eq!(db.meta_path, None);
        assert_eq!(db.monitor_interval, defaults::MONITOR_INTERVAL);
        assert_eq!(db.truncate_page_count, defaults::TRUNCATE_PAGE_COUNT);
        assert!(db.replicas.is_empty());
        let c = Config::with_dbs(vec![db.clone()]);
        assert_eq!(c.dbs, vec![db]);
        assert_eq!(c.snapshot_concurrency, 1);
        assert_eq!(c.health_max_lag, defaults::HEALTH_MAX_LAG);
        assert_eq!(c, Config::with_dbs(c.dbs.clone()));
        assert_eq!(Config::default().dbs.len(), 0);
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yml");
        let e = Config::load(&missing, true).unwrap_err().to_string();
        assert_eq!(e, format!("config file not found: {}", missing.display()));

        let e = Config::load(dir.path(), true).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config {}: ", dir.path().display())),
            "{e}"
        );

        let path = dir.path().join("litestream.yml");
        std::fs::write(
            &path,
            "dbs:\n  - path: /data/app.db\n    replicas:\n      - url: s3://b/p\n",
        )
        .unwrap();
        let c = Config::load(&path, true).unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/data/app.db"));
        assert_eq!(c.source, path.display().to_string());

        std::fs::write(&path, "db:\n  - path: /data/app.db\n").unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 1 column 1: unknown key `db` in the top level (did you mean `dbs`?)",
                path.display()
            )
        );

        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn default_config_path_is_etc_or_env() {
        // Only checks the fallback shape: the variable may be set in the test environment.
        let p = default_config_path();
        match std::env::var_os("LITESTREAM_CONFIG") {
            Some(v) if !v.is_empty() => assert_eq!(p, PathBuf::from(v)),
            _ => assert_eq!(p, PathBuf::from("/etc/litestream.yml")),
        }
    }
}
