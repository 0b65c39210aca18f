//! Fetching credentials from each kind of [`Source`]: STS (`AssumeRole`, signed with our
//! SigV4; `AssumeRoleWithWebIdentity`, unsigned), `credential_process`, the ECS endpoint and
//! IMDSv2. Every request goes through ureq with timeouts of its own (the instance metadata
//! service is asked with a 1 s connect timeout, so that off EC2 the chain fails fast), and no
//! error carries a secret: replies are reduced to their status and, for STS, AWS's error code
//! and message.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use super::{sigv4, AwsCredentials, EcsToken, Source, Sts};
use crate::config::host_port;

/// Largest reply or token file we read.
const MAX_REPLY: u64 = 64 * 1024;
/// IMDSv2 session tokens are asked for with this life (the maximum, 6 h).
const IMDS_TOKEN_TTL: u64 = 21600;
/// How long a `credential_process` may run (the AWS SDKs' default).
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn fetch(source: &Source) -> Result<AwsCredentials> {
    match source {
        Source::Static { keys, .. } => Ok(keys.clone()),
        Source::WebIdentity {
            role_arn,
            session_name,
            token_file,
            sts,
        } => {
            let token = read_small(token_file)
                .with_context(|| format!("web identity token file {}", token_file.display()))?;
            let token = token.trim();
            let form = [
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", role_arn.as_str()),
                ("RoleSessionName", session_name.as_str()),
                ("WebIdentityToken", token),
            ];
            sts_call(sts, &form, None)
                .with_context(|| format!("STS AssumeRoleWithWebIdentity for {role_arn}"))
        }
        Source::AssumeRole {
            role_arn,
            session_name,
            external_id,
            duration_seconds,
            base,
            sts,
            ..
        } => {
            let keys = fetch(base)?;
            let duration = duration_seconds.map(|d| d.to_string());
            let mut form = vec![
                ("Action", "AssumeRole"),
                ("Version", "2011-06-15"),
                ("RoleArn", role_arn.as_str()),
                ("RoleSessionName", session_name.as_str()),
            ];
            if let Some(x) = external_id {
                form.push(("ExternalId", x));
            }
            if let Some(d) = &duration {
                form.push(("DurationSeconds", d));
            }
            sts_call(sts, &form, Some(&keys)).with_context(|| format!("STS AssumeRole {role_arn}"))
        }
        Source::Process { command, profile } => run_process(command)
            .with_context(|| format!("credential_process of AWS profile {profile:?}")),
        Source::Ecs { url, token } => {
            ecs(url, token.as_ref()).context("the ECS container credentials endpoint")
        }
        Source::Imds { endpoint } => imds_credentials(endpoint).with_context(|| {
            format!(
                "the EC2 instance metadata service ({})",
                host_port(endpoint).unwrap_or_default()
            )
        }),
    }
}

/// The agent of metadata requests: link-local services answer at once or not at all.
fn metadata_agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| agent(Duration::from_secs(1), Duration::from_secs(5)))
}

/// The agent of STS requests: a service across the internet.
fn sts_agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| agent(Duration::from_secs(5), Duration::from_secs(30)))
}

fn agent(connect: Duration, whole: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .timeout_global(Some(whole))
        .max_redirects(0)
        // Metadata services sit on link-local addresses: no proxy from the environment.
        .proxy(None)
        .build();
    ureq::Agent::new_with_config(config)
}

/// What went wrong on the way, without the URL (which may name a credential path).
fn transport(e: &ureq::Error, what: &str) -> anyhow::Error {
    match e {
        ureq::Error::Timeout(t) => anyhow!("timed out ({t}) talking to {what}"),
        ureq::Error::ConnectionFailed => anyhow!("cannot connect to {what}"),
        ureq::Error::HostNotFound => anyhow!("cannot resolve the host name of {what}"),
        ureq::Error::Io(io) => anyhow!("connection error ({io}) with {what}"),
        other => anyhow!("{other} ({what})"),
    }
}

fn body_text(resp: http::Response<ureq::Body>) -> Result<String> {
    let mut s = String::new();
    resp.into_body()
        .into_reader()
        .take(MAX_REPLY)
        .read_to_string(&mut s)
        .map_err(|e| anyhow!("cannot read the reply: {e}"))?;
    Ok(s)
}

fn read_small(path: &Path) -> Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_REPLY).read_to_string(&mut s))
        .map_err(|e| anyhow!("cannot read it: {e}"))?;
    Ok(s)
}

/// One STS query-API call: the form POSTed to the endpoint, signed with `keys` when given.
fn sts_call(
    sts: &Sts,
    form: &[(&str, &str)],
    keys: Option<&AwsCredentials>,
) -> Result<AwsCredentials> {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::encode(k), sigv4::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let host = host_header(&sts.endpoint)
        .ok_or_else(|| anyhow!("the STS endpoint {:?} is not an http(s) URL", sts.endpoint))?;
    let date = sigv4::amz_date(SystemTime::now());
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{}/", sts.endpoint))
        .header("host", &host)
        .header("content-type", content_type)
        .header("x-amz-date", &date);
    if let Some(k) = keys {
        let mut headers = vec![
            ("content-type", content_type),
            ("host", host.as_str()),
            ("x-amz-date", date.as_str()),
        ];
        if let Some(t) = &k.session_token {
            headers.push(("x-amz-security-token", t));
            builder = builder.header("x-amz-security-token", t);
        }
        let req = sigv4::Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            payload: body.as_bytes(),
        };
        let auth = sigv4::authorization(
            &req,
            &date,
            &sts.region,
            "sts",
            &k.access_key_id,
            &k.secret_access_key,
        );
        builder = builder.header("authorization", auth);
    }
    let request = builder
        .body(body.into_bytes())
        .map_err(|e| anyhow!("cannot build the request: {e}"))?;
    let what = format!("STS at {}", host_port(&sts.endpoint).unwrap_or_default());
    let resp = sts_agent().run(request).map_err(|e| transport(&e, &what))?;
    let status = resp.status().as_u16();
    let text = body_text(resp)?;
    if status != 200 {
        let code = between(&text, "<Code>", "</Code>").unwrap_or_default();
        let message = between(&text, "<Message>", "</Message>").unwrap_or_default();
        bail!("{what}: HTTP {status} {code}: {message}");
    }
    parse_sts(&text).map_err(|e| anyhow!("{what}: unreadable reply: {e}"))
}

#[derive(serde::Deserialize)]
struct StsResponse {
    #[serde(rename = "AssumeRoleResult", alias = "AssumeRoleWithWebIdentityResult")]
    result: StsResult,
}

#[derive(serde::Deserialize)]
struct StsResult {
    #[serde(rename = "Credentials")]
    credentials: StsCredentials,
}

#[derive(serde::Deserialize)]
struct StsCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(rename = "SessionToken")]
    session_token: String,
    #[serde(rename = "Expiration")]
    expiration: String,
}

/// An `AssumeRole[WithWebIdentity]Response`'s credentials.
pub(super) fn parse_sts(xml: &str) -> Result<AwsCredentials> {
    let r: StsResponse = quick_xml::de::from_str(xml).map_err(|e| anyhow!("{e}"))?;
    let c = r.result.credentials;
    Ok(AwsCredentials {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        session_token: Some(c.session_token),
        expiration: Some(
            parse_time(&c.expiration)
                .ok_or_else(|| anyhow!("unreadable Expiration {:?}", c.expiration))?,
        ),
    })
}

/// The JSON that ECS, IMDS and `credential_process` answer (each names the token its way).
#[derive(serde::Deserialize)]
struct JsonCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: Option<String>,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: Option<String>,
    #[serde(rename = "Token", alias = "SessionToken")]
    token: Option<String>,
    #[serde(rename = "Expiration")]
    expiration: Option<String>,
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Version")]
    version: Option<u32>,
}

/// Credentials from such JSON; `need_expiry` for the metadata services, whose keys always
/// expire.
pub(super) fn parse_json(text: &str, need_expiry: bool) -> Result<AwsCredentials> {
    let j: JsonCredentials =
        serde_json::from_str(text).map_err(|e| anyhow!("unreadable JSON reply ({e})"))?;
    if let Some(code) = j.code.filter(|c| c != "Success") {
        bail!("the reply's Code is {code:?}, not \"Success\"");
    }
    if let Some(v) = j.version.filter(|v| *v != 1) {
        bail!("unsupported Version {v} (1 is)");
    }
    let (Some(a), Some(s)) = (j.access_key_id, j.secret_access_key) else {
        bail!("the reply lacks AccessKeyId or SecretAccessKey");
    };
    let expiration = match j.expiration {
        Some(e) => Some(parse_time(&e).ok_or_else(|| anyhow!("unreadable Expiration {e:?}"))?),
        None if need_expiry => bail!("the reply lacks Expiration"),
        None => None,
    };
    Ok(AwsCredentials {
        access_key_id: a,
        secret_access_key: s,
        session_token: j.token.filter(|t| !t.is_empty()),
        expiration,
    })
}

/// Runs a `credential_process` (`sh -c`, as the Go SDK does on Unix) with a time limit; its
/// stderr goes to ours, its stdout (at most 64 KiB) is the JSON.
fn run_process(command: &str) -> Result<AwsCredentials> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow!("cannot start sh: {e}"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = (&mut stdout).take(MAX_REPLY).read_to_end(&mut out);
        // Drain the rest so a chatty process is not blocked on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        r.map(|_| out)
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > PROCESS_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "did not finish within {}s; killed",
                    PROCESS_TIMEOUT.as_secs()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => bail!("cannot wait for it: {e}"),
        }
    };
    let out = reader
        .join()
        .map_err(|_| anyhow!("its output reader failed"))?
        .map_err(|e| anyhow!("cannot read its output: {e}"))?;
    if !status.success() {
        bail!("it exited with {status}");
    }
    let text = String::from_utf8(out).map_err(|_| anyhow!("its output is not UTF-8"))?;
    parse_json(&text, false)
}

fn ecs(url: &str, token: Option<&EcsToken>) -> Result<AwsCredentials> {
    let mut req = metadata_agent().get(url);
    match token {
        Some(EcsToken::Value(t)) => req = req.header("Authorization", t.as_str()),
        Some(EcsToken::File(p)) => {
            let t = read_small(p)
                .with_context(|| format!("authorization token file {}", p.display()))?;
            req = req.header("Authorization", t.trim());
        }
        None => {}
    }
    let what = host_port(url).unwrap_or_default();
    let resp = req.call().map_err(|e| transport(&e, &what))?;
    let status = resp.status().as_u16();
    if status != 200 {
        bail!("HTTP {status} from {what}");
    }
    parse_json(&body_text(resp)?, true)
}

/// IMDSv2 session tokens by endpoint, with when they stop being used.
fn imds_tokens() -> &'static Mutex<HashMap<String, (String, Instant)>> {
    static TOKENS: OnceLock<Mutex<HashMap<String, (String, Instant)>>> = OnceLock::new();
    TOKENS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn imds_token(endpoint: &str) -> Result<String> {
    if let Some((t, until)) = imds_tokens()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(endpoint)
    {
        if Instant::now() < *until {
            return Ok(t.clone());
        }
    }
    let what = host_port(endpoint).unwrap_or_default();
    let resp = metadata_agent()
        .put(format!("{endpoint}/latest/api/token"))
        .header(
            "X-aws-ec2-metadata-token-ttl-seconds",
            IMDS_TOKEN_TTL.to_string(),
        )
        .send_empty()
        .map_err(|e| transport(&e, &what))?;
    let status = resp.status().as_u16();
    if status != 200 {
        bail!("HTTP {status} to the IMDSv2 session token request");
    }
    let token = body_text(resp)?.trim().to_string();
    // Used until a minute before the life we asked for ends.
    let until = Instant::now() + Duration::from_secs(IMDS_TOKEN_TTL - 60);
    imds_tokens()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(endpoint.to_string(), (token.clone(), until));
    Ok(token)
}

/// GET of an IMDS path with a session token; a token the service no longer takes (401) is
/// replaced once.
fn imds_get(endpoint: &str, path: &str) -> Result<String> {
    let what = host_port(endpoint).unwrap_or_default();
    for attempt in 0..2 {
        let token = imds_token(endpoint)?;
        let resp = metadata_agent()
            .get(format!("{endpoint}{path}"))
            .header("X-aws-ec2-metadata-token", token.as_str())
            .call()
            .map_err(|e| transport(&e, &what))?;
        let status = resp.status().as_u16();
        if status == 401 && attempt == 0 {
            imds_tokens()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(endpoint);
            continue;
        }
        if status == 404 && path.ends_with("security-credentials/") {
            bail!("no IAM role is attached to this instance (HTTP 404)");
        }
        if status != 200 {
            bail!("HTTP {status} for {path}");
        }
        return body_text(resp);
    }
    bail!("the session token was refused twice")
}

fn imds_credentials(endpoint: &str) -> Result<AwsCredentials> {
    let base = "/latest/meta-data/iam/security-credentials/";
    let roles = imds_get(endpoint, base)?;
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
        bail!("no IAM role is attached to this instance");
    };
    if role.contains(['/', '?', '#']) || role.contains("..") {
        bail!("the role name it gave is not a name");
    }
    parse_json(&imds_get(endpoint, &format!("{base}{role}"))?, true)
        .with_context(|| format!("role {role}"))
}

/// The instance's region (`placement/region`).
pub(super) fn imds_region(endpoint: &str) -> Result<String> {
    let r = imds_get(endpoint, "/latest/meta-data/placement/region")?;
    let r = r.trim();
    if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("unreadable region");
    }
    Ok(r.to_string())
}

/// Whether a full container credentials URI may carry the authorization token: HTTPS, or
/// plain HTTP to a loopback address or to ECS's and EKS Pod Identity's link-local addresses.
pub(super) fn allowed_container_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if scheme.eq_ignore_ascii_case("https") {
        return true;
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        Ok(ip) => ["169.254.170.2", "169.254.170.23", "fd00:ec2::23"]
            .iter()
            .any(|a| a.parse::<std::net::IpAddr>().ok() == Some(ip)),
        Err(_) => false,
    }
}

/// The `Host` header ureq sends for `url` (the port only when it is not the scheme's).
fn host_header(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let hp = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    let hp = hp.strip_suffix(default).unwrap_or(hp);
    (!hp.is_empty()).then(|| hp.to_string())
}

fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(s[start..end].to_string())
}

/// An RFC 3339 time as AWS writes them: `Z` or an offset, with or without fractions.
pub(super) fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return humantime::parse_rfc3339_weak(base).ok();
    }
    // ±HH:MM at the end.
    if s.len() > 6 {
        let (base, off) = s.split_at(s.len() - 6);
        let sign = match off.as_bytes()[0] {
            b'+' => 1i64,
            b'-' => -1,
            _ => return None,
        };
        let (h, m) = off[1..].split_once(':')?;
        let secs = (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60) * sign;
        let local = humantime::parse_rfc3339_weak(base).ok()?;
        let d = Duration::from_secs(secs.unsigned_abs());
        return if secs >= 0 {
            local.checked_sub(d)
        } else {
            local.checked_add(d)
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_replies() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><SubjectFromWebIdentityToken>s</SubjectFromWebIdentityToken><Credentials><SessionToken>TOKEN</SessionToken><SecretAccessKey>SECRET</SecretAccessKey><Expiration>2026-01-01T12:00:00Z</Expiration><AccessKeyId>ASIA1</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let c = parse_sts(xml).unwrap();
        assert_eq!(c.access_key_id, "ASIA1");
        assert_eq!(c.session_token.as_deref(), Some("TOKEN"));
        assert_eq!(
            c.expiration,
            humantime::parse_rfc3339("2026-01-01T12:00:00Z").ok()
        );
        let xml = "<AssumeRoleResponse><AssumeRoleResult><AssumedRoleUser><Arn>a</Arn></AssumedRoleUser><Credentials><AccessKeyId>ASIA2</AccessKeyId><SecretAccessKey>S</SecretAccessKey><SessionToken>T</SessionToken><Expiration>2026-01-01T12:00:00.123Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(parse_sts(xml).unwrap().access_key_id, "ASIA2");
        assert!(parse_sts("<ErrorResponse/>").is_err());
    }

    #[test]
    fn json_replies() {
        let imds = r#"{"Code":"Success","LastUpdated":"2026-01-01T11:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIA3","SecretAccessKey":"S","Token":"T","Expiration":"2026-01-01T17:00:00Z"}"#;
        let c = parse_json(imds, true).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("ASIA3", Some("T"))
        );
        let process = r#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"S","SessionToken":"T2","Expiration":"2026-01-01T12:00:00+01:00"}"#;
        let c = parse_json(process, false).unwrap();
        assert_eq!(c.session_token.as_deref(), Some("T2"));
        assert_eq!(
            c.expiration,
            humantime::parse_rfc3339("2026-01-01T11:00:00Z").ok()
        );
        let long_term = r#"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"S"}"#;
        assert_eq!(parse_json(long_term, false).unwrap().expiration, None);
        assert!(parse_json(long_term, true).is_err());
        let e = parse_json(r#"{"Code":"Failed","SecretAccessKey":"LEAK"}"#, true).unwrap_err();
        assert!(!format!("{e:#}").contains("LEAK"));
        let e = parse_json(r#"{"AccessKeyId":"AK","SecretAccessKey":"LEAK" "#, false).unwrap_err();
        assert!(!format!("{e:#}").contains("LEAK"), "{e:#}");
    }

    #[test]
    fn container_urls_and_hosts() {
        assert!(allowed_container_url("https://example.com/x"));
        assert!(allowed_container_url("http://127.0.0.1:9/x"));
        assert!(allowed_container_url("http://[::1]:9/x"));
        assert!(allowed_container_url(
            "http://169.254.170.23/v1/credentials"
        ));
        assert!(allowed_container_url(
            "http://[fd00:ec2::23]/v1/credentials"
        ));
        assert!(!allowed_container_url("http://10.0.0.1/x"));
        assert!(!allowed_container_url("file:///etc/passwd"));
        assert_eq!(
            host_header("https://sts.amazonaws.com").as_deref(),
            Some("sts.amazonaws.com")
        );
        assert_eq!(
            host_header("http://127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(
            host_port("http://169.254.169.254").as_deref(),
            Some("169.254.169.254:80")
        );
    }

    #[test]
    fn credential_process_runs_and_fails_clearly() {
        let c = run_process(r#"echo '{"Version":1,"AccessKeyId":"AKP","SecretAccessKey":"SKP"}'"#)
            .unwrap();
        assert_eq!(c.access_key_id, "AKP");
        let e = run_process("echo SECRET-OUT; exit 3").unwrap_err();
        assert!(format!("{e:#}").contains("exit status: 3"), "{e:#}");
        let e = run_process("echo not-json-SECRET").unwrap_err();
        assert!(!format!("{e:#}").contains("SECRET"), "{e:#}");
    }
}
