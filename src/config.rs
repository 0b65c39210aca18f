//! Configuration: the YAML schema of SPEC §8, its defaults, `$VAR` expansion, Go-style
//! durations, replica URLs, and validation that names every problem's place.
//!
//! Pure: parsing takes text and an environment lookup and returns a [`Config`] or errors; the
//! only I/O is [`Config::load`], which reads the file. Nothing here opens a database or a store.

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::Compression;

/// The whole configuration file, validated and with defaults applied.
#[derive(Clone, Debug, PartialEq)]
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
    pub dbs: Vec<DbConfig>,
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
    File { path: PathBuf },
    S3(S3Config),
}

#[derive(Clone, Debug, PartialEq, Default)]
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
}
