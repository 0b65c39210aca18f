//! AWS credentials and regions for S3 replicas: the AWS SDKs' default chain, after the keys
//! the config names, and one cache per source that every replica of the process shares.
//!
//! The chain, first match wins: the replica's `access-key-id`/`secret-access-key`;
//! `LITESTREAM_ACCESS_KEY_ID`/`_SECRET_ACCESS_KEY`; `AWS_ACCESS_KEY_ID`/`_SECRET_ACCESS_KEY`
//! (+ `AWS_SESSION_TOKEN`); web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`,
//! EKS's IRSA) through STS `AssumeRoleWithWebIdentity`; the profile (`AWS_PROFILE` or
//! `default`) of the shared config and credentials files, with static keys, `role_arn` (+
//! `source_profile`, `credential_source` or `web_identity_token_file`) through STS
//! `AssumeRole`, or `credential_process`; ECS container credentials; the EC2 instance
//! metadata service with IMDSv2 session tokens. Choosing a source reads only the environment
//! and the two files; fetching goes through ureq (`sources.rs`), never rust-s3's transport.
//!
//! Temporary credentials are fetched again before they expire (5 minutes early, or halfway
//! through a shorter life) by the thread that needs them; the others wait on the cache's lock
//! and take the result. A failed fetch backs off (1 s doubling to 1 min) and the keys still
//! valid go on being used. Secrets never reach a log or an error: sources are described by
//! kind, profile, role ARN, file path and host.

mod ini;
pub(crate) mod sigv4;
mod sources;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};

use crate::backoff::{Backoff, Growth};
use crate::config::S3Config;

/// At most this long before expiry, temporary credentials are fetched again.
const REFRESH_EARLY: Duration = Duration::from_secs(300);
/// How deep `source_profile` may chain roles before we call it a loop.
const MAX_PROFILE_DEPTH: usize = 8;

/// Keys that sign requests; `Debug` shows only the access key id.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// `AKIA…` or `ASIA…`.
    pub access_key_id: String,
    /// Never logged.
    pub secret_access_key: String,
    /// The session token of temporary credentials; never logged.
    pub session_token: Option<String>,
    /// When temporary credentials stop working; `None` for long-term keys.
    pub expiration: Option<SystemTime>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl AwsCredentials {
    /// rust-s3's type, which carries keys to its signing; no expiry is given to it, so it
    /// never tries to refresh them itself (through its own transport).
    pub fn to_s3(&self) -> Result<s3::creds::Credentials> {
        s3::creds::Credentials::new(
            Some(&self.access_key_id),
            Some(&self.secret_access_key),
            self.session_token.as_deref(),
            None,
            None,
        )
        .map_err(|_| anyhow!("cannot use the S3 credentials"))
    }
}

/// Where a chain's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Long-term (or caller-managed temporary) keys: the config, the environment, a profile.
    Static {
        keys: AwsCredentials,
        origin: String,
    },
    /// STS `AssumeRoleWithWebIdentity` with the token read from `token_file` at each fetch.
    WebIdentity {
        role_arn: String,
        session_name: String,
        token_file: PathBuf,
        sts: Sts,
    },
    /// STS `AssumeRole`, signed with the `base` source's keys.
    AssumeRole {
        role_arn: String,
        session_name: String,
        external_id: Option<String>,
        duration_seconds: Option<u32>,
        base: Box<Source>,
        sts: Sts,
        profile: String,
    },
    /// A profile's `credential_process`, run with `sh -c`.
    Process { command: String, profile: String },
    /// The ECS (or EKS Pod Identity) container credentials endpoint.
    Ecs {
        url: String,
        token: Option<EcsToken>,
    },
    /// The EC2 instance metadata service (IMDSv2).
    Imds { endpoint: String },
}

/// Where STS is and the region its requests are signed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sts {
    pub endpoint: String,
    pub region: String,
}

/// The ECS authorization token: given, or read from a file at each fetch (EKS rotates it).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum EcsToken {
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for EcsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EcsToken::Value(_) => f.write_str("Value(***)"),
            EcsToken::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

impl Source {
    /// For the log and errors: kind, profile, role, file and host, never a secret.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Static { origin, .. } => origin.clone(),
            Source::WebIdentity {
                role_arn,
                token_file,
                ..
            } => format!(
                "web identity (role {role_arn}, token file {})",
                token_file.display()
            ),
            Source::AssumeRole {
                role_arn,
                base,
                profile,
                ..
            } => format!(
                "profile {profile} (role {role_arn} assumed with {})",
                base.describe()
            ),
            Source::Process { profile, .. } => format!("profile {profile} (credential_process)"),
            Source::Ecs { url, .. } => format!(
                "ECS container credentials ({})",
                crate::config::host_port(url).unwrap_or_else(|| "endpoint".into())
            ),
            Source::Imds { endpoint } => format!(
                "EC2 instance metadata (IMDSv2, {})",
                crate::config::host_port(endpoint).unwrap_or_else(|| "endpoint".into())
            ),
        }
    }
}

/// What the chain reads: the environment and files, passed in so that the choice is
/// testable without touching the process's.
pub(crate) struct Inputs<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub read: &'a dyn Fn(&Path) -> std::io::Result<String>,
}

impl Inputs<'_> {
    fn var(&self, k: &str) -> Option<String> {
        (self.env)(k).filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    /// The shared config and credentials files, parsed; a missing file is empty.
    fn files(&self) -> Result<Files> {
        let config = self
            .var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| self.home().map(|h| h.join(".aws/config")));
        let credentials = self
            .var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| self.home().map(|h| h.join(".aws/credentials")));
        let load = |p: &Option<PathBuf>| -> Result<Vec<(String, ini::Profile)>> {
            let Some(p) = p else { return Ok(Vec::new()) };
            match (self.read)(p) {
                Ok(text) => ini::parse(&text).map_err(|e| anyhow!("{}: {e}", p.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(anyhow!("cannot read {}: {e}", p.display())),
            }
        };
        Ok(Files {
            config: load(&config)?,
            credentials: load(&credentials)?,
            names: [config, credentials]
                .into_iter()
                .flatten()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
        })
    }

    fn profile_name(&self) -> (String, bool) {
        match self.var("AWS_PROFILE") {
            Some(p) => (p, true),
            None => ("default".to_string(), false),
        }
    }
}

struct Files {
    config: Vec<(String, ini::Profile)>,
    credentials: Vec<(String, ini::Profile)>,
    names: String,
}

impl Files {
    fn profile(&self, name: &str) -> Option<ini::Profile> {
        ini::profile(&self.config, &self.credentials, name)
    }
}

/// The first source of the chain that is configured; `None` when only the instance metadata
/// service is left and it is disabled.
pub(crate) fn choose_source(cfg: &S3Config, inputs: &Inputs<'_>) -> Result<Option<Source>> {
    if let (Some(a), Some(s)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        return Ok(Some(static_keys(a, s, None, "the replica's access-key-id")));
    }
    if let (Some(a), Some(s)) = (
        inputs.var("LITESTREAM_ACCESS_KEY_ID"),
        (inputs.env)("LITESTREAM_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Some(static_keys(&a, &s, None, "LITESTREAM_ACCESS_KEY_ID")));
    }
    if let (Some(a), Some(s)) = (
        inputs.var("AWS_ACCESS_KEY_ID"),
        inputs.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        let token = inputs.var("AWS_SESSION_TOKEN");
        return Ok(Some(static_keys(&a, &s, token, "AWS_ACCESS_KEY_ID")));
    }
    let files = inputs.files()?;
    let (profile_name, explicit) = inputs.profile_name();
    let profile = files.profile(&profile_name);
    let region = region_from(inputs, profile.as_ref());
    if let (Some(file), Some(role_arn)) = (
        inputs.var("AWS_WEB_IDENTITY_TOKEN_FILE"),
        inputs.var("AWS_ROLE_ARN"),
    ) {
        return Ok(Some(Source::WebIdentity {
            role_arn,
            session_name: inputs
                .var("AWS_ROLE_SESSION_NAME")
                .unwrap_or_else(session_name),
            token_file: PathBuf::from(file),
            sts: sts(inputs, profile.as_ref(), region.as_deref()),
        }));
    }
    match profile {
        Some(_) => {
            if let Some(s) = profile_source(inputs, &files, &profile_name, region.as_deref(), 0)? {
                return Ok(Some(s));
            }
            if explicit {
                bail!(
                    "AWS profile {profile_name:?} (AWS_PROFILE) in {} has no credentials: give it aws_access_key_id and aws_secret_access_key, role_arn with source_profile, or credential_process",
                    files.names
                );
            }
        }
        None if explicit => bail!(
            "AWS profile {profile_name:?} (AWS_PROFILE) is not in {}",
            if files.names.is_empty() {
                "the AWS config files (HOME is not set)"
            } else {
                &files.names
            }
        ),
        None => {}
    }
    if let Some(s) = ecs_source(inputs)? {
        return Ok(Some(s));
    }
    Ok(imds_source(inputs))
}

fn static_keys(a: &str, s: &str, token: Option<String>, origin: &str) -> Source {
    Source::Static {
        keys: AwsCredentials {
            access_key_id: a.to_string(),
            secret_access_key: s.to_string(),
            session_token: token,
            expiration: None,
        },
        origin: origin.to_string(),
    }
}

fn session_name() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("litestream-{secs}")
}

/// `AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's `region`.
fn region_from(inputs: &Inputs<'_>, profile: Option<&ini::Profile>) -> Option<String> {
    inputs
        .var("AWS_REGION")
        .or_else(|| inputs.var("AWS_DEFAULT_REGION"))
        .or_else(|| profile.and_then(|p| p.get("region").cloned()))
        .filter(|r| !r.is_empty())
}

/// STS: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, else the
/// regional endpoint (the global one without a region).
fn sts(inputs: &Inputs<'_>, profile: Option<&ini::Profile>, region: Option<&str>) -> Sts {
    let region = region.unwrap_or("us-east-1").to_string();
    let endpoint = inputs
        .var("AWS_ENDPOINT_URL_STS")
        .or_else(|| inputs.var("AWS_ENDPOINT_URL"))
        .or_else(|| profile.and_then(|p| p.get("endpoint_url").cloned()))
        .unwrap_or_else(|| {
            if inputs.var("AWS_REGION").is_some()
                || inputs.var("AWS_DEFAULT_REGION").is_some()
                || profile.is_some_and(|p| p.contains_key("region"))
            {
                format!("https://sts.{region}.amazonaws.com")
            } else {
                "https://sts.amazonaws.com".to_string()
            }
        });
    Sts {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        region,
    }
}

/// The source profile `name` gives: a role to assume, a process, or static keys.
fn profile_source(
    inputs: &Inputs<'_>,
    files: &Files,
    name: &str,
    region: Option<&str>,
    depth: usize,
) -> Result<Option<Source>> {
    if depth > MAX_PROFILE_DEPTH {
        bail!(
            "AWS profile {name:?}: source_profile chains more than {MAX_PROFILE_DEPTH} roles (a loop?)"
        );
    }
    let Some(p) = files.profile(name) else {
        bail!(
            "AWS profile {name:?} (a source_profile) is not in {}",
            files.names
        );
    };
    let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(role_arn) = get("role_arn") {
        if get("mfa_serial").is_some() {
            bail!("AWS profile {name:?} needs an MFA code (mfa_serial), which a daemon cannot enter: use a profile without it");
        }
        let sts = sts(inputs, Some(&p), region);
        let session_name = get("role_session_name").unwrap_or_else(session_name);
        if let Some(file) = get("web_identity_token_file") {
            return Ok(Some(Source::WebIdentity {
                role_arn,
                session_name,
                token_file: PathBuf::from(file),
                sts,
            }));
        }
        let base = match (get("source_profile"), get("credential_source")) {
            (Some(src), None) if src == name && depth > 0 => {
                bail!("AWS profile {name:?}: source_profile names itself")
            }
            // A profile that is its own source_profile uses its own static keys.
            (Some(src), None) if src == name => static_profile_keys(&p, name)
                .ok_or_else(|| anyhow!("AWS profile {name:?}: source_profile names itself, and it has no aws_access_key_id"))?,
            (Some(src), None) => profile_source(inputs, files, &src, region, depth + 1)?
                .ok_or_else(|| anyhow!("AWS profile {src:?} (source_profile of {name:?}) has no credentials"))?,
            (None, Some(cs)) => match cs.as_str() {
                "Environment" => match (inputs.var("AWS_ACCESS_KEY_ID"), inputs.var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(a), Some(s)) => static_keys(&a, &s, inputs.var("AWS_SESSION_TOKEN"), "AWS_ACCESS_KEY_ID"),
                    _ => bail!("AWS profile {name:?}: credential_source = Environment, but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"),
                },
                "Ec2InstanceMetadata" => imds_source(inputs).ok_or_else(|| anyhow!("AWS profile {name:?}: credential_source = Ec2InstanceMetadata, but AWS_EC2_METADATA_DISABLED is set"))?,
                "EcsContainer" => ecs_source(inputs)?.ok_or_else(|| anyhow!("AWS profile {name:?}: credential_source = EcsContainer, but AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/_FULL_URI is not set"))?,
                other => bail!("AWS profile {name:?}: unknown credential_source {other:?} (Environment, Ec2InstanceMetadata or EcsContainer)"),
            },
            (Some(_), Some(_)) => bail!("AWS profile {name:?} sets both source_profile and credential_source: keep one"),
            (None, None) => bail!("AWS profile {name:?} has role_arn but neither source_profile nor credential_source"),
        };
        return Ok(Some(Source::AssumeRole {
            role_arn,
            session_name,
            external_id: get("external_id"),
            duration_seconds: get("duration_seconds").and_then(|d| d.parse().ok()),
            base: Box::new(base),
            sts,
            profile: name.to_string(),
        }));
    }
    if let Some(command) = get("credential_process") {
        return Ok(Some(Source::Process {
            command,
            profile: name.to_string(),
        }));
    }
    Ok(static_profile_keys(&p, name))
}

fn static_profile_keys(p: &ini::Profile, name: &str) -> Option<Source> {
    let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(a), Some(s)) => Some(static_keys(
            &a,
            &s,
            get("aws_session_token"),
            &format!("profile {name}"),
        )),
        _ => None,
    }
}

/// ECS: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (on 169.254.170.2), else `_FULL_URI`, which
/// must be HTTPS or a loopback or the ECS/EKS link-local address, since the authorization
/// token goes with it.
fn ecs_source(inputs: &Inputs<'_>) -> Result<Option<Source>> {
    let url = if let Some(rel) = inputs.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        format!("http://169.254.170.2{rel}")
    } else if let Some(full) = inputs.var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        if !sources::allowed_container_url(&full) {
            bail!("AWS_CONTAINER_CREDENTIALS_FULL_URI must be https://, or http:// to a loopback address, 169.254.170.2 or 169.254.170.23 (the authorization token goes with it)");
        }
        full
    } else {
        return Ok(None);
    };
    let token = match (
        inputs.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        inputs.var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    ) {
        (Some(f), _) => Some(EcsToken::File(PathBuf::from(f))),
        (None, Some(t)) => Some(EcsToken::Value(t)),
        (None, None) => None,
    };
    Ok(Some(Source::Ecs { url, token }))
}

/// IMDS unless `AWS_EC2_METADATA_DISABLED=true`; the endpoint from
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT` or `_ENDPOINT_MODE` (IPv4 or IPv6).
fn imds_source(inputs: &Inputs<'_>) -> Option<Source> {
    if inputs
        .var("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    Some(Source::Imds {
        endpoint: imds_endpoint(inputs),
    })
}

fn imds_endpoint(inputs: &Inputs<'_>) -> String {
    inputs
        .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|| {
            match inputs.var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
                Some(m) if m.eq_ignore_ascii_case("ipv6") => "http://[fd00:ec2::254]",
                _ => "http://169.254.169.254",
            }
            .to_string()
        })
        .trim_end_matches('/')
        .to_string()
}

/// The region of an AWS bucket when the config names none: `AWS_REGION`,
/// `AWS_DEFAULT_REGION`, the profile's `region`.
pub fn region_from_environment() -> Option<String> {
    let env = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read_to_string(p);
    let inputs = Inputs {
        env: &env,
        read: &read,
    };
    let files = inputs.files().ok();
    let profile = files.and_then(|f| f.profile(&inputs.profile_name().0));
    region_from(&inputs, profile.as_ref())
}

/// The instance's region from IMDS, when IMDS is enabled and answers (fast off EC2).
pub fn region_from_instance_metadata() -> Option<String> {
    let env = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read_to_string(p);
    let inputs = Inputs {
        env: &env,
        read: &read,
    };
    match imds_source(&inputs)? {
        Source::Imds { endpoint } => sources::imds_region(&endpoint).ok(),
        _ => None,
    }
}

/// Something that fetches credentials (a [`Source`]; a fake one in tests).
pub(crate) trait Fetch: Send + Sync {
    fn fetch(&self) -> Result<AwsCredentials>;
    fn describe(&self) -> String;
}

impl Fetch for Source {
    fn fetch(&self) -> Result<AwsCredentials> {
        sources::fetch(self)
    }
    fn describe(&self) -> String {
        Source::describe(self)
    }
}

/// Credentials of one source with their refresh: shared by every replica of the process
/// that uses the same source.
pub(crate) struct Cache {
    fetcher: Box<dyn Fetch>,
    state: Mutex<State>,
}

struct State {
    current: Option<Current>,
    /// Bumped at every fetch, so an expired-token answer invalidates only the keys it saw.
    generation: u64,
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

struct Current {
    keys: AwsCredentials,
    refresh_at: Option<SystemTime>,
}

impl Cache {
    pub(crate) fn new(fetcher: Box<dyn Fetch>) -> Cache {
        Cache {
            fetcher,
            state: Mutex::new(State {
                current: None,
                generation: 0,
                // 1 s doubling to 1 min: a metadata service that is restarting is asked again
                // soon, one that is gone is not hammered by every request of every replica.
                backoff: Backoff::new(
                    Duration::from_secs(1),
                    Duration::from_secs(60),
                    Growth::Doubling,
                ),
                retry_at: None,
                last_error: None,
            }),
        }
    }

    /// Usable keys and their generation, fetched first when there are none or they are due
    /// for refresh (and the backoff allows).
    pub(crate) fn get(&self) -> Result<(AwsCredentials, u64)> {
        self.get_at(SystemTime::now(), Instant::now())
    }

    fn get_at(&self, now: SystemTime, mono: Instant) -> Result<(AwsCredentials, u64)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let usable = st
            .current
            .as_ref()
            .filter(|c| c.keys.expiration.is_none_or(|e| now < e))
            .map(|c| c.keys.clone());
        let due = match &st.current {
            None => true,
            Some(c) => c.refresh_at.is_some_and(|r| now >= r),
        };
        if !due {
            // Not yet due: used even when they look expired by our clock (refresh_time's
            // floor); the store is the judge, and its expired-token answer invalidates them.
            if let Some(c) = &st.current {
                return Ok((c.keys.clone(), st.generation));
            }
        }
        if st.retry_at.is_some_and(|r| mono < r) {
            return match usable {
                Some(k) => Ok((k, st.generation)),
                None => Err(anyhow!(
                    "no usable S3 credentials from {}: {}",
                    self.fetcher.describe(),
                    st.last_error.as_deref().unwrap_or("not fetched yet")
                )),
            };
        }
        match self.fetcher.fetch() {
            Ok(keys) => {
                st.backoff.reset();
                st.retry_at = None;
                st.last_error = None;
                st.generation += 1;
                let refresh_at = keys.expiration.map(|e| refresh_time(now, e));
                st.current = Some(Current {
                    keys: keys.clone(),
                    refresh_at,
                });
                announce(&self.fetcher.describe(), st.generation > 1);
                Ok((keys, st.generation))
            }
            Err(e) => {
                let wait = st.backoff.next_wait();
                st.retry_at = Some(mono + wait);
                let msg = format!("{e:#}");
                st.last_error = Some(msg.clone());
                match usable {
                    Some(k) => {
                        crate::logging::warn(
                            "cannot refresh the S3 credentials; the current ones stay in use until they expire",
                            &[
                                ("source", &self.fetcher.describe()),
                                ("retry_in", &format!("{}s", wait.as_secs())),
                                ("error", &msg),
                            ],
                        );
                        Ok((k, st.generation))
                    }
                    None => Err(anyhow!(
                        "cannot get S3 credentials from {}: {msg}",
                        self.fetcher.describe()
                    )),
                }
            }
        }
    }

    /// The store refused keys of `generation` as expired: they are not used again, and the
    /// next `get` fetches at once (past any backoff). False when newer keys are already in.
    pub(crate) fn invalidate(&self, generation: u64) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.generation != generation {
            return true;
        }
        st.current = None;
        st.retry_at = None;
        true
    }

    pub(crate) fn describe(&self) -> String {
        self.fetcher.describe()
    }
}

/// When keys fetched at `now` that expire at `expires` are fetched again: 5 minutes early,
/// or halfway through a shorter remaining life, and never sooner than 1 s after `now` (a
/// source whose clock is behind ours hands out keys that look expired: it is not asked again
/// for every request).
fn refresh_time(now: SystemTime, expires: SystemTime) -> SystemTime {
    let left = expires.duration_since(now).unwrap_or(Duration::ZERO);
    (expires - REFRESH_EARLY.min(left / 2)).max(now + Duration::from_secs(1))
}

/// Logs once per process and source where the S3 credentials come from; a refresh is logged
/// at debug level.
fn announce(source: &str, refresh: bool) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    let first = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(source.to_string());
    if first {
        crate::logging::info("S3 credentials", &[("source", &source)]);
    } else if refresh {
        crate::logging::debug("S3 credentials refreshed", &[("source", &source)]);
    }
}

/// How a replica gets its keys: fixed ones, or a shared cache of a source that refreshes.
#[derive(Clone)]
pub enum Provider {
    /// Keys that do not change (config, environment, a profile's keys), and where from.
    Fixed(AwsCredentials, String),
    /// A refreshing source.
    Cached(Arc<CacheHandle>),
}

/// A shared [`Cache`] (opaque outside this module).
pub struct CacheHandle(Cache);

impl Provider {
    /// The provider of an S3 replica: the chain over this process's environment and the AWS
    /// files; fetches once, so that a source that does not work is an error at start.
    pub fn for_s3(cfg: &S3Config) -> Result<Provider> {
        let env = |k: &str| std::env::var(k).ok();
        let read = |p: &Path| std::fs::read_to_string(p);
        let inputs = Inputs {
            env: &env,
            read: &read,
        };
        let source = choose_source(cfg, &inputs)?.ok_or_else(no_credentials)?;
        let is_imds = matches!(source, Source::Imds { .. });
        let provider = match source {
            Source::Static { keys, origin } => {
                announce(&origin, false);
                Provider::Fixed(keys, origin)
            }
            other => Provider::Cached(shared_cache(other)),
        };
        if let Provider::Cached(c) = &provider {
            if let Err(e) = c.0.get() {
                if is_imds {
                    return Err(no_credentials().context(format!("{e:#}")));
                }
                return Err(e);
            }
        }
        Ok(provider)
    }

    /// Keys to sign the next request with, and their generation (for [`Provider::expired`]).
    pub fn get(&self) -> Result<(AwsCredentials, u64)> {
        match self {
            Provider::Fixed(k, _) => Ok((k.clone(), 0)),
            Provider::Cached(c) => c.0.get(),
        }
    }

    /// The store answered that keys of `generation` have expired: true when fetching again
    /// may help (the caller then retries once).
    pub fn expired(&self, generation: u64) -> bool {
        match self {
            Provider::Fixed(..) => false,
            Provider::Cached(c) => c.0.invalidate(generation),
        }
    }

    /// Where the keys come from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Provider::Fixed(_, origin) => origin.clone(),
            Provider::Cached(c) => c.0.describe(),
        }
    }
}

fn no_credentials() -> anyhow::Error {
    anyhow!("no S3 credentials found: set access-key-id and secret-access-key in the config, or LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or an AWS profile, or run where ECS or EC2 instance metadata provides them")
}

/// The one cache of `source` in this process.
fn shared_cache(source: Source) -> Arc<CacheHandle> {
    static CACHES: OnceLock<Mutex<HashMap<String, Arc<CacheHandle>>>> = OnceLock::new();
    let key = format!("{source:?}");
    let mut caches = CACHES
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    caches
        .entry(key)
        .or_insert_with(|| Arc::new(CacheHandle(Cache::new(Box::new(source)))))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn choose(
        cfg: &S3Config,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Result<Option<Source>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        let e = |k: &str| env.get(k).cloned();
        let r = |p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        choose_source(cfg, &Inputs { env: &e, read: &r })
    }

    fn bucket() -> S3Config {
        S3Config {
            bucket: "b".into(),
            ..Default::default()
        }
    }

    fn origin(s: Option<Source>) -> String {
        s.map(|s| s.describe()).unwrap_or_else(|| "none".into())
    }

    #[test]
    fn config_then_litestream_then_aws_environment() {
        let mut cfg = bucket();
        let env = [
            ("LITESTREAM_ACCESS_KEY_ID", "LAK"),
            ("LITESTREAM_SECRET_ACCESS_KEY", "LSK"),
            ("AWS_ACCESS_KEY_ID", "AAK"),
            ("AWS_SECRET_ACCESS_KEY", "ASK"),
            ("AWS_SESSION_TOKEN", "TOK"),
        ];
        assert_eq!(
            origin(choose(&cfg, &env, &[]).unwrap()),
            "LITESTREAM_ACCESS_KEY_ID"
        );
        match choose(&cfg, &env[2..], &[]).unwrap() {
            Some(Source::Static { keys, .. }) => {
                assert_eq!(keys.session_token.as_deref(), Some("TOK"));
                assert!(!format!("{keys:?}").contains("TOK"));
                assert!(!format!("{keys:?}").contains("ASK"));
            }
            other => panic!("{other:?}"),
        }
        cfg.access_key_id = Some("CAK".into());
        cfg.secret_access_key = Some("CSK".into());
        assert_eq!(
            origin(choose(&cfg, &env, &[]).unwrap()),
            "the replica's access-key-id"
        );
    }

    #[test]
    fn web_identity_before_profiles_and_its_sts_endpoint() {
        let env = [
            ("HOME", "/h"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_REGION", "eu-west-1"),
        ];
        let files = [(
            "/h/.aws/credentials",
            "[default]\naws_access_key_id=A\naws_secret_access_key=S\n",
        )];
        match choose(&bucket(), &env, &files).unwrap() {
            Some(Source::WebIdentity {
                sts, session_name, ..
            }) => {
                assert_eq!(sts.endpoint, "https://sts.eu-west-1.amazonaws.com");
                assert!(session_name.starts_with("litestream-"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            origin(choose(&bucket(), &env[..1], &files).unwrap()),
            "profile default"
        );
    }

    #[test]
    fn profiles_role_arn_credential_process_and_their_errors() {
        let config = "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = base\nexternal_id = x\nregion = ap-south-1\n[profile base]\nrole_arn = arn:aws:iam::1:role/base\nsource_profile = keys\n[profile proc]\ncredential_process = /bin/creds --x\n[profile loop]\nrole_arn = R\nsource_profile = loop2\n[profile loop2]\nrole_arn = R\nsource_profile = loop\n[profile mfa]\nrole_arn = R\nsource_profile = keys\nmfa_serial = arn:mfa\n";
        let creds = "[keys]\naws_access_key_id = AK\naws_secret_access_key = SK\n";
        let files = [("/h/.aws/config", config), ("/h/.aws/credentials", creds)];
        let with = |p: &str| choose(&bucket(), &[("HOME", "/h"), ("AWS_PROFILE", p)], &files);
        match with("app").unwrap() {
            Some(Source::AssumeRole {
                base,
                sts,
                external_id,
                ..
            }) => {
                assert_eq!(sts.endpoint, "https://sts.ap-south-1.amazonaws.com");
                assert_eq!(external_id.as_deref(), Some("x"));
                match *base {
                    Source::AssumeRole {
                        ref role_arn,
                        ref base,
                        ..
                    } => {
                        assert_eq!(role_arn, "arn:aws:iam::1:role/base");
                        assert_eq!(base.describe(), "profile keys");
                    }
                    ref other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            origin(with("proc").unwrap()),
            "profile proc (credential_process)"
        );
        assert!(format!("{:#}", with("loop").unwrap_err()).contains("loop"));
        assert!(format!("{:#}", with("mfa").unwrap_err()).contains("MFA"));
        let e = format!("{:#}", with("missing").unwrap_err());
        assert!(
            e.contains("\"missing\"") && e.contains("/h/.aws/config"),
            "{e}"
        );
        let bad = choose(
            &bucket(),
            &[("HOME", "/h")],
            &[("/h/.aws/config", "[default]\nnonsense\n")],
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("/h/.aws/config: line 2"));
    }

    #[test]
    fn ecs_then_imds_and_their_settings() {
        let env = [(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/abc",
        )];
        match choose(&bucket(), &env, &[]).unwrap() {
            Some(Source::Ecs { url, token: None }) => {
                assert_eq!(url, "http://169.254.170.2/v2/credentials/abc")
            }
            other => panic!("{other:?}"),
        }
        let env = [
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "SECRET-TOKEN"),
        ];
        let s = choose(&bucket(), &env, &[]).unwrap().unwrap();
        assert!(!format!("{s:?}").contains("SECRET-TOKEN"));
        assert_eq!(s.describe(), "ECS container credentials (127.0.0.1:9)");
        let env = [(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://example.com/creds",
        )];
        assert!(choose(&bucket(), &env, &[]).is_err());
        assert_eq!(
            origin(choose(&bucket(), &[], &[]).unwrap()),
            "EC2 instance metadata (IMDSv2, 169.254.169.254:80)"
        );
        let env = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:7/")];
        match choose(&bucket(), &env, &[]).unwrap() {
            Some(Source::Imds { endpoint }) => assert_eq!(endpoint, "http://127.0.0.1:7"),
            other => panic!("{other:?}"),
        }
        let env = [("AWS_EC2_METADATA_DISABLED", "true")];
        assert!(choose(&bucket(), &env, &[]).unwrap().is_none());
    }

    struct Fake {
        calls: AtomicU64,
        fail: Mutex<bool>,
        life: Duration,
        base: SystemTime,
    }

    impl Fetch for Fake {
        fn fetch(&self) -> Result<AwsCredentials> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if *self.fail.lock().unwrap() {
                bail!("metadata service down");
            }
            Ok(AwsCredentials {
                access_key_id: format!("AK{n}"),
                secret_access_key: "S".into(),
                session_token: Some("T".into()),
                expiration: Some(self.base + self.life * n as u32),
            })
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    #[test]
    fn refresh_early_backoff_and_keys_kept_while_valid() {
        let base = SystemTime::now();
        let fake = Arc::new(Fake {
            calls: AtomicU64::new(0),
            fail: Mutex::new(false),
            life: Duration::from_secs(3600),
            base,
        });
        struct Shared(Arc<Fake>);
        impl Fetch for Shared {
            fn fetch(&self) -> Result<AwsCredentials> {
                self.0.fetch()
            }
            fn describe(&self) -> String {
                "fake".into()
            }
        }
        let cache = Cache::new(Box::new(Shared(fake.clone())));
        let t0 = Instant::now();
        let at = |secs: u64| base + Duration::from_secs(secs);
        let (k, g) = cache.get_at(at(0), t0).unwrap();
        assert_eq!((k.access_key_id.as_str(), g), ("AK1", 1));
        // Valid and not yet within 5 minutes of expiry: no fetch.
        cache.get_at(at(3000), t0).unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        // Within 5 minutes: fetched again; the source fails, the old keys still serve.
        *fake.fail.lock().unwrap() = true;
        let (k, _) = cache.get_at(at(3400), t0).unwrap();
        assert_eq!(k.access_key_id, "AK1");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        // Backing off: no fetch within the wait.
        cache
            .get_at(at(3401), t0 + Duration::from_millis(500))
            .unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        // Expired and the source still down: an error naming the source, no secret.
        let e = cache
            .get_at(at(3700), t0 + Duration::from_millis(600))
            .unwrap_err();
        assert!(format!("{e:#}").contains("fake"), "{e:#}");
        // Back up: new keys after the backoff.
        *fake.fail.lock().unwrap() = false;
        let (k, g) = cache.get_at(at(3700), t0 + Duration::from_secs(3)).unwrap();
        assert_eq!((k.access_key_id.as_str(), g), ("AK3", 2));
        // The store says they expired: the next get fetches at once, and an older
        // generation's answer does not throw away newer keys.
        assert!(cache.invalidate(2));
        let (k, g) = cache.get_at(at(3701), t0 + Duration::from_secs(3)).unwrap();
        assert_eq!((k.access_key_id.as_str(), g), ("AK4", 3));
        cache.invalidate(2);
        assert_eq!(
            cache
                .get_at(at(3702), t0 + Duration::from_secs(3))
                .unwrap()
                .1,
            3
        );
    }

    #[test]
    fn short_lived_keys_are_refreshed_halfway() {
        let now = SystemTime::now();
        assert_eq!(
            refresh_time(now, now + Duration::from_secs(3600)),
            now + Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_time(now, now + Duration::from_secs(120)),
            now + Duration::from_secs(60)
        );
        assert_eq!(
            refresh_time(now, now - Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
