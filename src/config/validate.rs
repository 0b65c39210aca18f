//! From raw to validated: [`Config::parse`] expands `$VAR`s, reads the YAML, and the
//! `Builder` applies defaults and checks every value and every cross-field rule, collecting
//! all problems, each with its place (`dbs[0].replicas[1].bucket`).
//!
//! Pure: text, an environment lookup and the working and home directories in; a [`Config`]
//! or a [`ConfigError`] out. It reads no file and no environment itself (that is `load`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::age::{holds_key_text, identity_entry, IdentityEntry, KEY_TEXT_HIDDEN};
use super::duration::go_duration;
use super::env::expand_config_text;
use super::hints::{lead, yaml_problem};
use super::overlap::overlaps;
use super::paths::resolve_path;
use super::raw::{Kind, RawAge, RawConfig, RawDb, RawReplica};
use super::schema::{
    defaults, AgeConfig, AgeIdentity, Config, ConfigError, DbConfig, LogLevel, LoggingConfig,
    ReplicaConfig, ReplicaTarget, S3Config, Sse,
};
use super::sse::{sse_of, RawSse};
use super::url::{check_endpoint, clean_key_prefix, parse_replica_url, redact_url};

/// The longest `busy-timeout`: SQLite takes it in milliseconds as a C int (about 596h), and a
/// db thread that waits a day for a lock has long stopped replicating anyway.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Config {
    /// Parses and validates configuration text. Pure: `env` answers `$VAR` lookups (only when
    /// `expand_env`; a variable that is not set is an error naming it and its line), `cwd` and `home` resolve relative
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
            expanded = expand_config_text(text, env).map_err(|unset| ConfigError {
                problems: unset
                    .iter()
                    .map(|u| format!("{}{u}", lead(source)))
                    .collect(),
            })?;
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

    /// What the daemon needs beyond a valid file: at least one db, each with a replica (a db
    /// with none would be watched and checkpointed for nothing), and no nested places (for a
    /// config built from the command line; [`Config::parse`] checks its own). `restore` and
    /// the listing commands need none of this, so it is separate from [`Config::parse`].
    pub(crate) fn check_for_daemon(&self) -> Result<(), ConfigError> {
        let lead = lead(&self.source);
        if self.dbs.is_empty() {
            let msg = "no databases configured (add a `dbs:` list)";
            return Err(ConfigError {
                problems: vec![format!("{lead}{msg}")],
            });
        }
        let mut problems = Vec::new();
        for (i, db) in self.dbs.iter().enumerate() {
            for (j, r) in db.replicas.iter().enumerate() {
                let Some(age) = &r.age else { continue };
                if age.recipients.is_empty() {
                    problems.push(format!(
                        "{lead}dbs[{i}].replicas[{j}].age: has identities but no recipients, so the daemon would write this replica in the clear; add age.recipients (the identities' public keys, `age-keygen -y`)"
                    ));
                }
                // Daemon only: restore and the listings read such a config as it is.
                if !r.validation_interval.is_zero() && age.identities.is_empty() {
                    problems.push(format!(
                        "{lead}dbs[{i}].replicas[{j}].validation-interval: validating an encrypted replica restores it, which needs its key: add age.identities, or turn validation off (0)"
                    ));
                }
            }
            if db.replicas.is_empty() {
                problems.push(format!(
                    "{lead}dbs[{i}]: {} has no replicas; add a `replicas:` list with at least one `url:` (e.g. `- url: file:///backups/app`)",
                    db.path.display()
                ));
            }
        }
        for (place, msg) in overlaps(&self.dbs) {
            problems.push(format!("{lead}{place}: {msg}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The global credentials (access key id, secret access key): every s3 replica's fallback.
type Keys = (Option<String>, Option<String>);

/// One pass from raw to validated: it keeps going after a problem, so that one run reports
/// every problem in the file, each with its place.
struct Builder<'a> {
    source: &'a str,
    cwd: &'a Path,
    home: Option<&'a Path>,
    problems: Vec<String>,
    /// Every replica built so far: its place and where it writes, to catch two replicas (of
    /// one db or of two) sharing a destination, which would mix their generations.
    destinations: Vec<(String, String)>,
}

/// An optional string that counts as absent when empty (`$VAR` set to an empty value).
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl Builder<'_> {
    fn problem(&mut self, place: &str, msg: impl fmt::Display) {
        let mut msg = msg.to_string();
        if holds_key_text(&msg) {
            // A check that quotes its value (a path, an address) was given a key.
            msg = KEY_TEXT_HIDDEN.to_string();
        }
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

        for (place, msg) in overlaps(&dbs) {
            self.problem(&place, msg);
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
    fn db(&mut self, place: &str, raw: RawDb, keys: &Keys) -> Option<DbConfig> {
        let path = match non_empty(raw.path) {
            None => {
                self.problem(
                    &format!("{place}.path"),
                    "required (the database file to replicate)",
                );
                None
            }
            Some(p) => self.path(&format!("{place}.path"), &p),
        };
        let meta_path = match non_empty(raw.meta_path) {
            None => None,
            Some(p) => self.path(&format!("{place}.meta-path"), &p),
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
        self.check_db(place, &db);
        db.replicas = self.replicas(place, raw.replicas.unwrap_or_default(), keys);
        path.map(|_| db)
    }

    /// `raw` resolved against the working and home directories; `None` once reported at
    /// `place`.
    fn path(&mut self, place: &str, raw: &str) -> Option<PathBuf> {
        match resolve_path(raw, self.cwd, self.home) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(place, e);
                None
            }
        }
    }

    /// The db's interval, its busy timeout and its three page counts, which must be in order.
    fn check_db(&mut self, place: &str, db: &DbConfig) {
        if db.busy_timeout > MAX_BUSY_TIMEOUT {
            self.problem(
                &format!("{place}.busy-timeout"),
                format!(
                    "{} is longer than SQLite can wait; use at most 24h",
                    go_duration(db.busy_timeout)
                ),
            );
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
    }

    /// The replicas of the db at `place`: each one built, then checked for a name unique in
    /// its db and a destination unique in the whole file.
    fn replicas(&mut self, place: &str, raws: Vec<RawReplica>, keys: &Keys) -> Vec<ReplicaConfig> {
        let mut replicas = Vec::new();
        let mut names: Vec<(usize, String)> = Vec::new();
        for (i, raw_r) in raws.into_iter().enumerate() {
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
                replicas.push(r);
            }
        }
        replicas
    }

    /// `None` when the replica has no usable type or url (already reported).
    fn replica(&mut self, place: &str, raw: RawReplica, keys: &Keys) -> Option<ReplicaConfig> {
        // A `$VAR` set to an empty value: an empty string is an absent key.
        let mut raw = RawReplica {
            name: non_empty(raw.name),
            url: non_empty(raw.url),
            path: non_empty(raw.path),
            bucket: non_empty(raw.bucket),
            region: non_empty(raw.region),
            endpoint: non_empty(raw.endpoint),
            access_key_id: non_empty(raw.access_key_id),
            secret_access_key: non_empty(raw.secret_access_key),
            sse_kms_key_id: non_empty(raw.sse_kms_key_id),
            sse_customer_algorithm: non_empty(raw.sse_customer_algorithm),
            sse_customer_key: non_empty(raw.sse_customer_key),
            sse_customer_key_path: non_empty(raw.sse_customer_key_path),
            ..raw
        };
        let from_url = match &raw.url {
            None => None,
            Some(u) => match parse_replica_url(u, self.cwd, self.home) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.problem(&format!("{place}.url"), e);
                    return None;
                }
            },
        };
        let target = match self.replica_kind(place, &raw, from_url.as_ref())? {
            Kind::File => ReplicaTarget::File {
                path: self.file_path(place, &raw, from_url),
            },
            Kind::S3 => ReplicaTarget::S3(self.s3(place, &mut raw, from_url, keys)),
        };
        Some(self.replica_settings(place, raw, target))
    }

    /// The type given, else the url's, else guessed from `bucket` or `path`; `None` once a
    /// mismatch or a replica with none of them is reported.
    fn replica_kind(
        &mut self,
        place: &str,
        raw: &RawReplica,
        from_url: Option<&ReplicaTarget>,
    ) -> Option<Kind> {
        match (raw.r#type, from_url) {
            (Some(k), Some(t)) if k != Kind::of(t) => {
                self.problem(
                    &format!("{place}.type"),
                    format!(
                        "`{}` does not match the url {:?}, which is a {} replica",
                        k.name(),
                        redact_url(raw.url.as_deref().unwrap_or_default()),
                        Kind::of(t).name()
                    ),
                );
                None
            }
            (Some(k), _) => Some(k),
            (None, Some(t)) => Some(Kind::of(t)),
            (None, None) if raw.bucket.is_some() => Some(Kind::S3),
            (None, None) if raw.path.is_some() => Some(Kind::File),
            (None, None) => {
                self.problem(
                    place,
                    "needs a `url`, or a `type` with its `path` (file) or `bucket` (s3)",
                );
                None
            }
        }
    }

    /// A file replica's directory: `path`, else the url's. S3 keys on it are reported, as
    /// they would be ignored.
    fn file_path(
        &mut self,
        place: &str,
        raw: &RawReplica,
        from_url: Option<ReplicaTarget>,
    ) -> PathBuf {
        let s3_only: [(&str, bool); 11] = [
            ("bucket", raw.bucket.is_some()),
            ("region", raw.region.is_some()),
            ("endpoint", raw.endpoint.is_some()),
            ("force-path-style", raw.force_path_style.is_some()),
            ("skip-verify", raw.skip_verify.is_some()),
            ("access-key-id", raw.access_key_id.is_some()),
            ("secret-access-key", raw.secret_access_key.is_some()),
            ("sse-kms-key-id", raw.sse_kms_key_id.is_some()),
            (
                "sse-customer-algorithm",
                raw.sse_customer_algorithm.is_some(),
            ),
            ("sse-customer-key", raw.sse_customer_key.is_some()),
            ("sse-customer-key-path", raw.sse_customer_key_path.is_some()),
        ];
        for (key, present) in s3_only {
            if present {
                self.problem(
                    &format!("{place}.{key}"),
                    "only valid for an s3 replica (this one is type file)",
                );
            }
        }
        let path = match (&raw.path, from_url) {
            (Some(p), _) => self.path(&format!("{place}.path"), p),
            (None, Some(ReplicaTarget::File { path })) => Some(path),
            (None, _) => {
                self.problem(&format!("{place}.path"), "required for a file replica (the directory to replicate into; or give a `url`)");
                None
            }
        };
        path.unwrap_or_default()
    }

    /// An s3 replica's settings: the url's, overridden by explicit keys, with the global
    /// credentials as the fallback. Takes the s3 keys out of `raw`.
    fn s3(
        &mut self,
        place: &str,
        raw: &mut RawReplica,
        from_url: Option<ReplicaTarget>,
        keys: &Keys,
    ) -> S3Config {
        let mut s3 = match from_url {
            Some(ReplicaTarget::S3(s3)) => s3,
            _ => S3Config::default(),
        };
        let url_path_style = s3.force_path_style;
        if let Some(b) = raw.bucket.take() {
            s3.bucket = b;
        }
        if let Some(p) = &raw.path {
            s3.path = clean_key_prefix(p);
        }
        if raw.region.is_some() {
            s3.region = raw.region.take();
        }
        if let Some(e) = raw.endpoint.take() {
            match check_endpoint(&e) {
                Ok(e) => s3.endpoint = Some(e),
                Err(msg) => self.problem(&format!("{place}.endpoint"), msg),
            }
        }
        // As in Litestream: only AWS itself wants virtual-host style and AWS needs no
        // endpoint, so an endpoint implies path style unless the file says otherwise.
        s3.force_path_style = raw
            .force_path_style
            .unwrap_or(url_path_style || s3.endpoint.is_some());
        if let Some(v) = raw.skip_verify {
            s3.skip_verify = v;
        }
        s3.access_key_id = raw.access_key_id.take().or_else(|| keys.0.clone());
        s3.secret_access_key = raw.secret_access_key.take().or_else(|| keys.1.clone());
        s3.sse = self.sse(place, raw, s3.endpoint.as_deref());
        if s3.bucket.is_empty() {
            self.problem(&format!("{place}.bucket"), "required for an s3 replica");
        }
        s3
    }

    /// An s3 replica's `sse-*` keys (taken out of `raw`); `None` on a problem (reported).
    fn sse(&mut self, place: &str, raw: &mut RawReplica, endpoint: Option<&str>) -> Option<Sse> {
        let key_path = match raw.sse_customer_key_path.take() {
            Some(p) => Some(self.path(&format!("{place}.sse-customer-key-path"), &p)?),
            None => None,
        };
        let algorithm = raw.sse_customer_algorithm.take();
        // `sse_of` quotes a wrong algorithm; a value that is no algorithm name (the key put
        // in the wrong field, say) is reported here without it.
        if algorithm.as_deref().is_some_and(|a| !algorithm_like(a)) {
            self.problem(
                &format!("{place}.sse-customer-algorithm"),
                "must be AES256 (the value given is not shown: it does not look like an algorithm name, and may be a key; is the key in the wrong field?)",
            );
            return None;
        }
        let sse = RawSse {
            kms_key_id: raw.sse_kms_key_id.take(),
            algorithm,
            key: raw.sse_customer_key.take(),
            key_path,
        };
        match sse_of(sse, endpoint) {
            Ok(sse) => sse,
            Err(problems) => {
                for (key, msg) in problems {
                    self.problem(&format!("{place}.{key}"), msg);
                }
                None
            }
        }
    }

    /// The settings every replica has, over the defaults.
    fn replica_settings(
        &mut self,
        place: &str,
        raw: RawReplica,
        target: ReplicaTarget,
    ) -> ReplicaConfig {
        let mut r = ReplicaConfig::with_defaults(target);
        if let Some(n) = raw.name {
            r.name = n;
        }
        if let Some(d) = raw.retention {
            r.retention = d.0;
        }
        if let Some(d) = raw.retention_check_interval {
            r.retention_check_interval = d.0;
        }
        if r.retention.is_zero() {
            // Litestream v0.3 disables enforcement at a zero retention; kept literally it
            // would keep no snapshot and so take a new one at every check.
            r.retention_check_interval = Duration::ZERO;
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
            self.problem(&format!("{place}.sync-interval"), "must be greater than 0");
        }
        r.age = raw.age.and_then(|a| self.age(place, a));
        r
    }

    /// `age:`: recipients and inline identities were checked as they were read (`raw`);
    /// identity paths are resolved here and read by `load`. `None` on a problem (reported).
    fn age(&mut self, place: &str, raw: RawAge) -> Option<AgeConfig> {
        let recipients: Vec<String> = raw.recipients.map(|r| r.0).unwrap_or_default();
        let mut identities = Vec::new();
        let mut ok = true;
        for (i, s) in raw
            .identities
            .map(|s| s.0)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let entry = identity_entry(&s);
            if entry == IdentityEntry::Inline {
                identities.push(AgeIdentity::Inline(s));
            } else if let IdentityEntry::NotAPath(why) = entry {
                // Refused by `raw` already; kept so that no such entry is ever a path.
                self.problem(&format!("{place}.age.identities[{i}]"), why);
                ok = false;
            } else if let Some(path) = self.path(&format!("{place}.age.identities[{i}]"), s.trim())
            {
                identities.push(AgeIdentity::File { path, text: None });
            } else {
                ok = false;
            }
        }
        if recipients.is_empty() && identities.is_empty() && ok {
            self.problem(
                &format!("{place}.age"),
                "needs `recipients` (to encrypt what is written) and/or `identities` (to decrypt what is read)",
            );
            return None;
        }
        ok.then_some(AgeConfig {
            recipients,
            identities,
        })
    }
}

/// A short name of letters, digits and dashes (`AES256`, `aws:kms`), which may be quoted.
fn algorithm_like(a: &str) -> bool {
    a.len() <= 16
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::codec::Compression;
    use crate::config::testing::*;
    use crate::config::{Sse, SseCustomerKey};

    // Over 80 lines on purpose: one file that sets every key, each checked where it lands.
    #[test]
    fn full_example_with_every_key() {
        let text = include_str!("../../testdata/config/full.yml");
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
                age: None,
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
                sse: None,
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
        let c = ok(include_str!("../../litestream.yml.example"));
        assert!(!c.dbs.is_empty());
        c.check_for_daemon().unwrap();
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
            let e = c.check_for_daemon().unwrap_err();
            assert_eq!(
                e.to_string(),
                "litestream.yml: no databases configured (add a `dbs:` list)"
            );
        }
        let e = Config::with_dbs(vec![]).check_for_daemon().unwrap_err();
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
    fn a_zero_retention_turns_enforcement_off() {
        // It used to keep no snapshot, so every check took a new one.
        let c = ok("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        retention: 0s\n        retention-check-interval: 1m\n");
        let r = &c.dbs[0].replicas[0];
        assert_eq!(r.retention, Duration::ZERO);
        assert_eq!(r.retention_check_interval, Duration::ZERO);
        let c =
            ok("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        retention: 1m\n");
        assert_eq!(c.dbs[0].replicas[0].retention_check_interval, secs(3600));
    }

    #[test]
    fn zero_replicas_parse_but_the_daemon_refuses_them() {
        // `restore` and the listing commands read such a file; the daemon used to watch and
        // checkpoint the db for nothing, without a word.
        let c = ok("dbs:\n  - path: /a.db\n");
        assert!(c.dbs[0].replicas.is_empty());
        let c = ok("dbs:\n  - path: /a.db\n    replicas: []\n  - path: /b.db\n    replicas:\n      - path: /bk\n");
        assert!(c.dbs[0].replicas.is_empty());
        assert_eq!(
            c.check_for_daemon().unwrap_err().problems,
            ["litestream.yml: dbs[0]: /a.db has no replicas; add a `replicas:` list with at least one `url:` (e.g. `- url: file:///backups/app`)"]
        );
    }

    #[test]
    fn the_daemon_checks_nesting_in_a_config_from_the_command_line() {
        let mut db = DbConfig::with_defaults(PathBuf::from("/d/app.db"));
        db.replicas
            .push(ReplicaConfig::with_defaults(ReplicaTarget::File {
                path: PathBuf::from("/d/.app.db-litestream/r"),
            }));
        let e = Config::with_dbs(vec![db]).check_for_daemon().unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].starts_with("dbs[0].replicas[0]: the replica"),
            "{e}"
        );
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
    fn a_busy_timeout_sqlite_cannot_take_is_refused_at_load() {
        // SQLite takes its busy timeout in milliseconds as a C int: 600h made rusqlite panic
        // ("too big") when the daemon opened the db, after validation had passed.
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    busy-timeout: 600h\n"),
            "litestream.yml: dbs[0].busy-timeout: 600h0m0s is longer than SQLite can wait; use at most 24h"
        );
        let c = ok("dbs:\n  - path: /a.db\n    busy-timeout: 24h\n");
        assert_eq!(c.dbs[0].busy_timeout, secs(24 * 3600));
    }

    #[test]
    fn sse_keys_as_litestream_v05_reads_them() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let c = parse_with(
            "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/kms\n        name: kms\n        sse-kms-key-id: alias/backups\n      - url: s3://b/c\n        name: c\n        sse-customer-algorithm: AES256\n        sse-customer-key: $SSE_KEY\n      - url: s3://b/f\n        name: f\n        sse-customer-key-path: ~/sse.key\n      - url: s3://b/none\n        name: none\n",
            &[("SSE_KEY", key)],
        )
        .unwrap();
        let r = &c.dbs[0].replicas;
        assert_eq!(
            s3(&r[0]).sse,
            Some(Sse::Kms {
                key_id: "alias/backups".into()
            })
        );
        assert_eq!(
            s3(&r[1]).sse,
            Some(Sse::Customer(SseCustomerKey::Inline(key.into())))
        );
        assert_eq!(
            s3(&r[2]).sse,
            Some(Sse::Customer(SseCustomerKey::File(
                "/home/user/sse.key".into()
            )))
        );
        assert_eq!(s3(&r[3]).sse, None);
        // The inline key never shows in Debug.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(key) && dbg.contains("alias/backups"), "{dbg}");

        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        sse-customer-key-path: /k\n"),
            "litestream.yml: dbs[0].replicas[0].sse-customer-key-path: only valid for an s3 replica (this one is type file)"
        );
        assert_eq!(
            one_err(&format!("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n        sse-kms-key-id: k\n        sse-customer-key: {key}\n")),
            "litestream.yml: dbs[0].replicas[0].sse-kms-key-id: cannot be used with sse-customer-key or sse-customer-key-path (SSE-KMS and SSE-C are exclusive; keep one)"
        );
        let e = one_err("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n        sse-customer-key: c2hvcnQta2V5\n");
        assert!(e.starts_with("litestream.yml: dbs[0].replicas[0].sse-customer-key: must be the base64 of 32 bytes"), "{e}");
        assert!(!e.contains("c2hvcnQta2V5"), "{e}");
    }

    #[test]
    #[allow(deprecated)] // X25519, the only key type Litestream v0.3.13 uses
    fn age_keys_as_litestream_v0313_reads_them() {
        use crate::config::{AgeConfig, AgeIdentity};
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let secret = id.to_string().expose_secret().to_string();
        let rcpt = id.to_public().to_string();
        let c = parse_with(
            &format!("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        age:\n          recipients:\n            - {rcpt}\n          identities:\n            - $AGE_ID\n            - ~/keys/age.txt\n            - |\n              # created: 2024\n              {secret}\n"),
            &[("AGE_ID", &secret)],
        )
        .unwrap();
        let age = c.dbs[0].replicas[0].age.as_ref().unwrap();
        assert_eq!(
            *age,
            AgeConfig {
                recipients: vec![rcpt.clone()],
                identities: vec![
                    AgeIdentity::Inline(secret.clone()),
                    AgeIdentity::File {
                        path: "/home/user/keys/age.txt".into(),
                        text: None
                    },
                    AgeIdentity::Inline(format!("# created: 2024\n{secret}\n")),
                ],
            }
        );
        let dbg = format!("{c:?}{c:#?}");
        assert!(!dbg.contains(&secret[16..]) && dbg.contains(&rcpt), "{dbg}");
        // Recipients alone replicate; identities alone would write in the clear.
        let only = |k: &str, v: &str| {
            parse(&format!("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        age:\n          {k}:\n            - \"{v}\"\n"))
        };
        only("recipients", &rcpt)
            .unwrap()
            .check_for_daemon()
            .unwrap();
        let e = parse(&format!("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        validation-interval: 1m\n        age:\n          recipients: [{rcpt}]\n"))
            .unwrap()
            .check_for_daemon()
            .unwrap_err();
        assert!(
            e.to_string().contains(
                "dbs[0].replicas[0].validation-interval: validating an encrypted replica"
            ),
            "{e}"
        );
        let e = only("identities", &secret)
            .unwrap()
            .check_for_daemon()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("dbs[0].replicas[0].age: has identities but no recipients"),
            "{e}"
        );
        // Value errors carry place and line and never quote an identity.
        let last = if secret.ends_with('Q') { 'P' } else { 'Q' };
        let broken = format!("{}{last}", &secret[..secret.len() - 1]);
        for (text, want) in [
            (format!("age:\n          identities:\n            - {broken}\n"), "line 7 column 15: dbs[0].replicas[0].age.identities[0]: line 1 is not an age identity"),
            (format!("age:\n          identities: {secret}\n"), "line 6 column 23: dbs[0].replicas[0].age.identities: must be a list of identities"),
            ("age:\n          recipients:\n            - age1x\n".to_string(), "line 7 column 15: dbs[0].replicas[0].age.recipients[0]: \"age1x\" is not an age recipient"),
            ("age:\n          recipients:\n            - \"\"\n".to_string(), "dbs[0].replicas[0].age.recipients[0]: is empty"),
            ("age: {}\n".to_string(), "dbs[0].replicas[0].age: needs `recipients`"),
            ("age:\n          recipient: []\n".to_string(), "unknown key `recipient` in dbs[0].replicas[0].age (did you mean `recipients`?)"),
        ] {
            let e = one_err(&format!("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        {text}"));
            assert!(e.contains(want), "{e}\nwant: {want}");
            assert!(!e.contains(&secret[16..]) && !e.contains(&broken[16..]), "{e}");
        }
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
                sse: None,
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
        // A `$VAR` set to nothing: credentials fall back to the global ones, then to none.
        let c = parse_with(
            "access-key-id: $AK\ndbs:\n  - path: /a.db\n    replicas:\n      - type: s3\n        bucket: b\n        region: \"${REGION}\"\n        access-key-id: \"$EMPTY\"\n        secret-access-key: \"\"\n",
            &[("AK", "global"), ("REGION", ""), ("EMPTY", "")],
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
}
