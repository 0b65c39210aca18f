//! Replica URLs: what counts as a URL on the command line ([`is_url`]), `file://` and plain
//! paths, `s3://` URLs with Litestream v0.3's provider hosts and query parameters, endpoint
//! checks and `%`-decoding.
//!
//! Pure: text in, a [`ReplicaTarget`] or a message out. It never resolves a host, opens a
//! connection or looks at the file system.

use std::path::Path;

use super::paths::{clean_path, resolve_path};
use super::schema::{ReplicaConfig, ReplicaTarget, S3Config};

/// Litestream's rule for a command's `DB_PATH | REPLICA_URL` argument (Go's `^\w+://`):
/// `scheme://…` is a replica URL, anything else a db path.
pub(crate) fn is_url(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}

impl ReplicaConfig {
    /// A replica from a URL given on the command line (see [`parse_replica_url`] for the
    /// forms); defaults for everything else.
    pub fn from_url(url: &str, cwd: &Path) -> Result<ReplicaConfig, String> {
        parse_replica_url(url, cwd, None).map(ReplicaConfig::with_defaults)
    }
}

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
    let shown = redact_url(url);
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
                    "file URL {shown:?} must hold an absolute path (file:///path/to/dir)"
                ));
            }
            let path = percent_decode(rest).ok_or_else(|| format!("bad %-escape in {shown:?}"))?;
            Ok(ReplicaTarget::File {
                path: clean_path(Path::new(&path)),
            })
        }
        "s3" => parse_s3_url(url, rest).map(ReplicaTarget::S3),
        other => Err(format!(
            "unsupported replica URL scheme `{other}` in {shown:?} (supported: file, s3, or a plain path)"
        )),
    }
}

fn parse_s3_url(url: &str, rest: &str) -> Result<S3Config, String> {
    let shown = redact_url(url);
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
            "credentials in replica URLs are not supported: {shown:?} (use access-key-id/secret-access-key in the config, or LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY)"
        ));
    }
    let mut s3 = parse_s3_host(authority);
    let path = percent_decode(path).ok_or_else(|| format!("bad %-escape in {shown:?}"))?;
    s3.path = clean_key_prefix(&path);
    let mut explicit_fps = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " "))
            .ok_or_else(|| format!("bad %-escape in {shown:?}"))?;
        let v = percent_decode(&v.replace('+', " "))
            .ok_or_else(|| format!("bad %-escape in {shown:?}"))?;
        match k.as_str() {
            "endpoint" => s3.endpoint = Some(check_endpoint(&v)?),
            "region" => s3.region = Some(v).filter(|v| !v.is_empty()),
            "force-path-style" | "forcePathStyle" => {
                explicit_fps = Some(parse_bool(&v).ok_or_else(|| {
                    format!("force-path-style in {shown:?} must be true or false, not {v:?}")
                })?)
            }
            "skip-verify" | "skipVerify" => {
                s3.skip_verify = parse_bool(&v).ok_or_else(|| {
                    format!("skip-verify in {shown:?} must be true or false, not {v:?}")
                })?
            }
            other => {
                return Err(format!(
                    "unknown parameter {} in {shown:?} (known: endpoint, region, force-path-style, skip-verify)",
                    parameter_name(other)
                ))
            }
        }
    }
    s3.force_path_style = explicit_fps.unwrap_or(s3.force_path_style || s3.endpoint.is_some());
    if s3.bucket.is_empty() {
        return Err(format!(
            "s3 URL {shown:?} names no bucket (s3://BUCKET/PATH)"
        ));
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
pub(super) fn clean_key_prefix(p: &str) -> String {
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
pub(super) fn check_endpoint(v: &str) -> Result<String, String> {
    let lower = v.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    let shown = redact_url(v);
    match rest {
        // It would be shown in every error about the store, and sent where no key belongs.
        Some(host) if host.split('/').next().is_some_and(|a| a.contains('@')) => Err(format!(
            "endpoint {shown:?} must not hold credentials (use access-key-id/secret-access-key in the config, or LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY)"
        )),
        Some(host) if !host.trim_end_matches('/').is_empty() => {
            // As written (ASCII lowercasing keeps every byte offset).
            let authority = v[v.len() - host.len()..].split('/').next().unwrap_or_default();
            check_authority(authority).map_err(|why| format!("endpoint {shown:?}: {why}"))?;
            Ok(v.trim_end_matches('/').to_string())
        }
        Some(_) => Err(format!("endpoint {shown:?} names no host")),
        None => Err(format!(
            "endpoint {v:?} needs a scheme, e.g. \"http://{}\" or \"https://{}\"",
            v.split("://").last().unwrap_or(v),
            v.split("://").last().unwrap_or(v)
        )),
    }
}

/// `host[:port]` of an endpoint: a DNS name, an IPv4 address or a bracketed IPv6 address, and
/// a port that fits; caught here rather than as "invalid international domain name" at the
/// first request.
fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("[{v6}] is not an IPv6 address"));
                }
                (None, after.strip_prefix(':'))
            }
            None => return Err("an IPv6 address needs its closing `]`".to_string()),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        },
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(format!("port {p:?} is not a number from 1 to 65535"));
        }
    }
    let Some(host) = host else { return Ok(()) };
    if host.contains(['<', '>', '{', '}']) || host.contains("...") {
        return Err(format!(
            "{host:?} looks like a placeholder left from an example; put the real host name there"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.is_empty() || host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not a host name (letters, digits, `-` and `.` only) or an IP address"
        ));
    }
    Ok(())
}

/// The query parameters whose values are no secret, so messages may show them.
const PLAIN_PARAMETERS: &[&str] = &[
    "endpoint",
    "region",
    "force-path-style",
    "forcePathStyle",
    "skip-verify",
    "skipVerify",
];

/// `host:port` of an `http(s)://[user@]host[:port]/…` URL.
pub(crate) fn host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    if host_port.is_empty() {
        return None;
    }
    let has_port = match host_port.rfind(':') {
        // An IPv6 literal ([::1]) has colons of its own; a port follows its `]`.
        Some(i) => !host_port[i..].contains(']'),
        None => false,
    };
    if has_port {
        return Some(host_port.to_string());
    }
    let port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    Some(format!("{host_port}:{port}"))
}

/// `url` as messages may show it: user info (`KEY:SECRET@`) and the value of every query
/// parameter but `PLAIN_PARAMETERS` become `***`, and a parameter name that does not look
/// like one (it may be a pasted secret) too. A URL is only ever shown through this.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                // The endpoint is a URL of its own, with user info of its own perhaps.
                Some(("endpoint", v)) => format!("endpoint={}", redact_url(v)),
                Some((k, v)) if PLAIN_PARAMETERS.contains(&k) => format!("{k}={v}"),
                Some((k, _)) => format!("{}=***", shown_name(k)),
                None => shown_name(pair).to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

/// A query parameter's name as messages show it: itself when it looks like a parameter name
/// (lowercase words joined by `-` or `_`, as ours are), else `***`: someone may have pasted a
/// key where a name belongs.
fn shown_name(name: &str) -> &str {
    let plain = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_');
    if plain || PLAIN_PARAMETERS.contains(&name) {
        name
    } else {
        "***"
    }
}

/// `shown_name` quoted for a message.
fn parameter_name(name: &str) -> String {
    match shown_name(name) {
        "***" => "***".to_string(),
        plain => format!("`{plain}`"),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "yes" => Some(true),
        "false" | "0" | "f" | "no" => Some(false),
        _ => None,
    }
}

/// `%XX` escapes decoded; `None` when a `%` is not followed by two hex digits or the bytes are
/// not UTF-8. The crate passes a malformed escape through as text, and a URL with one is more
/// likely mistyped than meant, hence the check first.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| {
            b.get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn endpoint_host_port_for_messages() {
        assert_eq!(
            host_port("http://127.0.0.1:9/bkt").as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(
            host_port("https://bkt.s3.amazonaws.com").as_deref(),
            Some("bkt.s3.amazonaws.com:443")
        );
        assert_eq!(
            host_port("http://ak:secret@h/x?X-Amz-Signature=s").as_deref(),
            Some("h:80")
        );
        assert_eq!(host_port("http://[::1]/b").as_deref(), Some("[::1]:80"));
        assert_eq!(host_port("nonsense"), None);
    }

    #[test]
    fn urls_in_messages_hide_user_info_and_parameter_values() {
        assert_eq!(
            redact_url(
                "s3://AKIA:S3CR3T@bkt/p?endpoint=http://h:1&secret-access-key=S3CR3T&region=x"
            ),
            "s3://***@bkt/p?endpoint=http://h:1&secret-access-key=***&region=x"
        );
        assert_eq!(redact_url("s3://bkt/p?S3CR3TKEY"), "s3://bkt/p?***");
        assert_eq!(
            redact_url("s3://bkt/p?token=abc#frag"),
            "s3://bkt/p?token=***#***"
        );
        assert_eq!(redact_url("/plain/path"), "/plain/path");
        for url in [
            "s3://AKIAX:S3CR3T@bkt/p",
            "s3://bkt/p?secret-access-key=S3CR3T",
            "s3://bkt/p?S3CR3T",
            "s3://bkt/%zz?S3CR3T=1",
            "s3://?S3CR3T=1",
            "ftp://u:S3CR3T@h/p",
            "s3://bkt/p?endpoint=http://AKIAX:S3CR3T@127.0.0.1:9000",
            "s3://bkt/p?x=1&endpoint=http://AKIAX:S3CR3T@127.0.0.1:9000",
        ] {
            let err = parse_replica_url(url, Path::new("/"), None).unwrap_err();
            assert!(
                !err.contains("S3CR3T") && !err.contains("AKIAX"),
                "{url}: {err}"
            );
        }
    }
    use crate::config::defaults;
    use crate::config::testing::*;

    #[test]
    fn urls() {
        assert!(is_url("file:///tmp/x"));
        assert!(is_url("s3://bucket/db"));
        assert!(!is_url("/tmp/x.db"));
        assert!(!is_url("data/x.db"));
        assert!(!is_url("://x"));
    }

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
        for bad in [
            "s3://b/%",
            "s3://b/%4",
            "s3://b/%+1",
            "s3://b/%ff",
            "file:///%e9",
        ] {
            assert!(err(bad).contains("bad %-escape"), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_checked_at_load() {
        // The probe's placeholder failed only at run time, as "invalid international domain name".
        let e = check_endpoint("https://<ACCOUNT_ID>.r2.cloudflarestorage.com").unwrap_err();
        assert_eq!(
            e,
            "endpoint \"https://<ACCOUNT_ID>.r2.cloudflarestorage.com\": \"<ACCOUNT_ID>.r2.cloudflarestorage.com\" looks like a placeholder left from an example; put the real host name there"
        );
        for (bad, why) in [
            ("http://127.0.0.1:99999", "port \"99999\" is not a number"),
            ("http://host:", "port \"\" is not a number"),
            ("http://ho st:9000", "is not a host name"),
            ("http://-x.example", "is not a host name"),
            ("http://a..b", "is not a host name"),
            ("http://[::1", "closing `]`"),
            ("http://[zz]:9000", "[zz] is not an IPv6 address"),
        ] {
            let e = check_endpoint(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        for good in [
            "http://127.0.0.1:9000",
            "https://abc123.r2.cloudflarestorage.com",
            "http://[::1]:9000/",
            "http://[::1]",
            "https://s3.us-west-002.backblazeb2.com",
            "http://minio_1:9000",
            "http://localhost.",
        ] {
            assert!(check_endpoint(good).is_ok(), "{good}");
        }
    }
}
