//! The validated configuration as the rest of the program sees it: [`Config`] and its parts,
//! the defaults of SPEC §8, [`ConfigError`], and `Debug` output that never shows a secret.
//!
//! Types and their constructors only: this file parses nothing (that is `raw`, `url`,
//! `duration` and `validate`) and reads nothing (that is `load`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Default S3 secret for every replica (`Debug` prints it as `***`).
    pub secret_access_key: Option<String>,
    /// `logging:`: level, format and stream.
    pub logging: LoggingConfig,
    /// At most this many snapshots at once in the process (default 1).
    pub snapshot_concurrency: usize,
    /// `health-max-lag`: a replica further behind than this is unhealthy (default 60s).
    pub health_max_lag: Duration,
    /// `dbs:`, in file order.
    pub dbs: Vec<DbConfig>,
    /// Where this configuration came from (the file name given to [`Config::parse`]), for
    /// messages; empty when built in code ([`Config::with_dbs`]).
    pub source: String,
}

/// How much to log, least severe first (so `level >= LogLevel::Warn` reads as expected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Every step, for chasing a problem.
    Debug,
    /// What happened (the default).
    Info,
    /// Something went wrong and will be retried.
    Warn,
    /// Something failed.
    Error,
}

/// The `logging:` section.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggingConfig {
    /// The least severe level printed (default `info`).
    pub level: LogLevel,
    /// `type: json` (true) or `type: text` (false, default).
    pub json: bool,
    /// `stderr: false` (default) logs to stdout, as Litestream does.
    pub stderr: bool,
}

/// One entry of `dbs:`: a database file and where it is replicated.
#[derive(Clone, Debug, PartialEq)]
pub struct DbConfig {
    /// Absolute path (`~` expanded, relative paths resolved against the working directory).
    pub path: PathBuf,
    /// `meta-path`; `None` means `<dir>/.<file>-litestream`.
    pub meta_path: Option<PathBuf>,
    /// How often the WAL is checked for new frames (never zero).
    pub monitor_interval: Duration,
    /// A PASSIVE checkpoint at least this often while there are new frames; zero = off.
    pub checkpoint_interval: Duration,
    /// How long our SQLite connections wait for a lock.
    pub busy_timeout: Duration,
    /// WAL frames that trigger a PASSIVE checkpoint (at least 1).
    pub min_checkpoint_page_count: u32,
    /// WAL frames that trigger a RESTART checkpoint; 0 = never RESTART.
    pub max_checkpoint_page_count: u32,
    /// WAL frames that trigger a TRUNCATE checkpoint, shrinking the WAL file.
    pub truncate_page_count: u32,
    /// `replicas:`, in file order (possibly none).
    pub replicas: Vec<ReplicaConfig>,
}

/// One replica of a db: where it writes and on what schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaConfig {
    /// Unique per db; defaults to the type (`file`, `s3`).
    pub name: String,
    /// Where the replica tree is kept.
    pub target: ReplicaTarget,
    /// How long snapshots (and the WAL they need) are kept. Zero turns enforcement off (and
    /// `retention_check_interval` is then zero too), as Litestream v0.3 does.
    pub retention: Duration,
    /// Zero = retention enforcement off.
    pub retention_check_interval: Duration,
    /// Zero = no scheduled snapshots.
    pub snapshot_interval: Duration,
    /// Zero = validation off.
    pub validation_interval: Duration,
    /// How often new WAL frames are uploaded (never zero).
    pub sync_interval: Duration,
    /// How snapshots and WAL segments are compressed (default gzip).
    pub compression: Compression,
    /// Client-side encryption (`age:`); `None`: objects are written in the clear.
    pub age: Option<AgeConfig>,
}

/// A replica's `age:` keys, as Litestream v0.3.13 reads them. Objects are written encrypted
/// to every recipient when there is one; identities decrypt (restore, validation, resuming
/// a replica). `Debug` never prints an identity.
#[derive(Clone, PartialEq, Default)]
pub struct AgeConfig {
    /// Recipients text, one entry per `recipients` item (each may hold several lines), as
    /// written; already checked. Public keys, not secrets.
    pub recipients: Vec<String>,
    /// One per `identities` item.
    pub identities: Vec<AgeIdentity>,
}

/// Where the identities of one `identities` entry come from.
#[derive(Clone, PartialEq)]
pub enum AgeIdentity {
    /// Identity text in the file itself (v0.3.13's form), already checked.
    Inline(String),
    /// An identity file (absolute, `~` expanded): `text` is its content once `Config::load`
    /// has read and checked it, `None` before.
    File {
        /// The file.
        path: PathBuf,
        /// Its identity text.
        text: Option<String>,
    },
}

impl AgeIdentity {
    /// The identity text; `None` for a file not read yet.
    pub fn text(&self) -> Option<&str> {
        match self {
            AgeIdentity::Inline(t) => Some(t),
            AgeIdentity::File { text, .. } => text.as_deref(),
        }
    }
}

impl fmt::Debug for AgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgeConfig")
            .field("recipients", &self.recipients)
            .field("identities", &self.identities)
            .finish()
    }
}

impl fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgeIdentity::Inline(_) => f.write_str("Inline(\"***\")"),
            AgeIdentity::File { path, text } => f
                .debug_struct("File")
                .field("path", &super::load::shown_path(path))
                .field("read", &text.is_some())
                .finish(),
        }
    }
}

/// Where a replica writes.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaTarget {
    /// A directory holding the replica tree.
    File {
        /// Absolute and lexically clean.
        path: PathBuf,
    },
    /// An S3 bucket (AWS or a compatible store).
    S3(S3Config),
}

/// An S3 replica's bucket, prefix, endpoint and credentials.
///
/// `Debug` is written by hand: the secret key prints as `***`.
#[derive(Clone, PartialEq, Default)]
pub struct S3Config {
    /// Never empty once validated.
    pub bucket: String,
    /// Key prefix, no leading or trailing slash; empty means keys start at `generations/`.
    pub path: String,
    /// `None`: looked up from the bucket, or `us-east-1` with a custom endpoint.
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:9000`; `None` means AWS.
    pub endpoint: Option<String>,
    /// Bucket in the path (`endpoint/bucket/key`) rather than in the host name.
    pub force_path_style: bool,
    /// Accept any TLS certificate (a self-signed test server).
    pub skip_verify: bool,
    /// Replica keys, else the global keys (already merged in by the parser).
    pub access_key_id: Option<String>,
    /// As `access_key_id`; `Debug` prints it as `***`.
    pub secret_access_key: Option<String>,
    /// Server-side encryption asked of the store (`sse-*` keys); `None`: the bucket's
    /// default.
    pub sse: Option<Sse>,
}

/// S3 server-side encryption, with Litestream v0.5's keys. The store encrypts at rest; it
/// still sees the data (client-side `age` is for a store that must not).
#[derive(Clone, PartialEq)]
pub enum Sse {
    /// SSE-KMS (`sse-kms-key-id`): objects written with this KMS key; reads need nothing.
    Kms {
        /// Key id, ARN or alias; no secret.
        key_id: String,
    },
    /// SSE-C (`sse-customer-key` or `sse-customer-key-path`, algorithm AES256): every
    /// write, part and read carries the key.
    Customer(SseCustomerKey),
}

/// Where an SSE-C key comes from: the base64 text of 32 bytes, inline or in a file (read
/// when the client opens, by `client::s3`). `Debug` never prints an inline key.
#[derive(Clone, PartialEq)]
pub enum SseCustomerKey {
    /// `sse-customer-key`, already checked to be the base64 of 32 bytes.
    Inline(String),
    /// `sse-customer-key-path`: absolute, `~` expanded.
    File(PathBuf),
}

/// The defaults of SPEC §8, for every setting a file may leave out.
pub mod defaults {
    use std::time::Duration;
    /// `monitor-interval`.
    pub const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
    /// `checkpoint-interval`.
    pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
    /// `busy-timeout`.
    pub const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
    /// `min-checkpoint-page-count`.
    pub const MIN_CHECKPOINT_PAGE_COUNT: u32 = 1000;
    /// `max-checkpoint-page-count`.
    pub const MAX_CHECKPOINT_PAGE_COUNT: u32 = 10000;
    /// `truncate-page-count`.
    pub const TRUNCATE_PAGE_COUNT: u32 = 121359;
    /// `retention`.
    pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
    /// `retention-check-interval`.
    pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
    /// `sync-interval`.
    pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
    /// `snapshot-concurrency`.
    pub const SNAPSHOT_CONCURRENCY: usize = 1;
    /// `health-max-lag`.
    pub const HEALTH_MAX_LAG: Duration = Duration::from_secs(60);
}

/// One or more configuration problems, each a self-contained line naming its place
/// (`litestream.yml: dbs[0].replicas[1].bucket: required for an s3 replica`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// At least one, in file order, each a single line.
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
    pub(crate) fn with_dbs(dbs: Vec<DbConfig>) -> Config {
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
}

impl DbConfig {
    /// The metadata directory: `meta-path`, else `<dir>/.<file>-litestream`.
    pub fn meta_dir(&self) -> PathBuf {
        self.meta_path
            .clone()
            .unwrap_or_else(|| super::paths::default_meta_dir(&self.path))
    }

    /// A db with default settings and no replicas (ad-hoc `replicate DB_PATH URL...`). The
    /// caller makes `path` absolute.
    pub(crate) fn with_defaults(path: PathBuf) -> DbConfig {
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
    pub(crate) fn with_defaults(target: ReplicaTarget) -> ReplicaConfig {
        ReplicaConfig {
            name: target.type_name().to_string(),
            target,
            retention: defaults::RETENTION,
            retention_check_interval: defaults::RETENTION_CHECK_INTERVAL,
            snapshot_interval: Duration::ZERO,
            validation_interval: Duration::ZERO,
            sync_interval: defaults::SYNC_INTERVAL,
            compression: Compression::default(),
            age: None,
        }
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
            .field("sse", &self.sse)
            .finish()
    }
}

impl fmt::Debug for Sse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sse::Kms { key_id } => f.debug_struct("Kms").field("key_id", key_id).finish(),
            Sse::Customer(k) => f.debug_tuple("Customer").field(k).finish(),
        }
    }
}

impl fmt::Debug for SseCustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseCustomerKey::Inline(_) => f.write_str("Inline(\"***\")"),
            SseCustomerKey::File(p) => f.debug_tuple("File").field(p).finish(),
        }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::testing::*;

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
}
