//! The `sse-*` keys of an s3 replica (S3 server-side encryption, as Litestream v0.5 spells
//! them): from the raw strings to an [`Sse`], and the SSE-C key's one accepted form, the
//! base64 text of 32 bytes (v0.5's: `openssl rand -base64 32`).
//!
//! Pure: the key file named by `sse-customer-key-path` is read by `client::s3` when the
//! replica opens, which then decodes it with [`decode_customer_key`]. No message here ever
//! holds any part of a key.

use std::net::IpAddr;

use super::schema::{Sse, SseCustomerKey};

/// The only SSE-C algorithm S3 has.
pub(crate) const SSE_CUSTOMER_ALGORITHM: &str = "AES256";

/// The replica's `sse-*` values, empty strings already taken as absent; the key path
/// already resolved.
pub(super) struct RawSse {
    pub(super) kms_key_id: Option<String>,
    pub(super) algorithm: Option<String>,
    pub(super) key: Option<String>,
    pub(super) key_path: Option<std::path::PathBuf>,
}

/// The encryption asked for, or the problems as (key, message) pairs. `endpoint` is the
/// replica's, for the rule that SSE-C goes over HTTPS (plain HTTP only to a loopback or
/// private address, as v0.5 allows; AWS itself refuses SSE-C over HTTP).
pub(super) fn sse_of(
    raw: RawSse,
    endpoint: Option<&str>,
) -> Result<Option<Sse>, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    let customer = raw.key.is_some() || raw.key_path.is_some();
    if raw.kms_key_id.is_some() && customer {
        problems.push((
            "sse-kms-key-id",
            "cannot be used with sse-customer-key or sse-customer-key-path (SSE-KMS and SSE-C are exclusive; keep one)".to_string(),
        ));
    }
    if raw.key.is_some() && raw.key_path.is_some() {
        problems.push((
            "sse-customer-key",
            "give sse-customer-key or sse-customer-key-path, not both".to_string(),
        ));
    }
    match raw.algorithm.as_deref() {
        Some(a) if a != SSE_CUSTOMER_ALGORITHM => problems.push((
            "sse-customer-algorithm",
            format!("must be {SSE_CUSTOMER_ALGORITHM}, got {a:?}"),
        )),
        Some(_) if !customer => problems.push((
            "sse-customer-algorithm",
            "needs sse-customer-key or sse-customer-key-path (the SSE-C key)".to_string(),
        )),
        _ => {}
    }
    if let Some(k) = &raw.key {
        if let Err(msg) = decode_customer_key(k) {
            problems.push(("sse-customer-key", msg));
        }
    }
    if customer {
        if let Some(e) = endpoint.filter(|e| !plain_http_is_local(e)) {
            problems.push((
                "sse-customer-key",
                format!(
                    "needs an https endpoint, not {:?}: the key travels in every request (plain http is allowed only to a loopback or private address)",
                    super::url::redact_url(e)
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(match (raw.kms_key_id, raw.key, raw.key_path) {
        (Some(key_id), _, _) => Some(Sse::Kms { key_id }),
        (None, Some(k), _) => Some(Sse::Customer(SseCustomerKey::Inline(k.trim().to_string()))),
        (None, None, Some(p)) => Some(Sse::Customer(SseCustomerKey::File(p))),
        (None, None, None) => None,
    })
}

/// An SSE-C key from its text: standard base64 of exactly 32 bytes, surrounding white space
/// ignored (a key file usually ends in a newline). The message never quotes the text.
pub(crate) fn decode_customer_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let hint = "(make one with `openssl rand -base64 32`)";
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("is not valid base64 {hint}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "must be the base64 of 32 bytes (a 256-bit AES key), got {} bytes {hint}",
            bytes.len()
        )
    })
}

/// True unless `endpoint` is plain `http://` to a host that is not loopback, private or
/// `localhost`.
fn plain_http_is_local(endpoint: &str) -> bool {
    let Some(rest) = endpoint
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &endpoint[7..])
    else {
        return true;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

    fn raw(kms: Option<&str>, alg: Option<&str>, key: Option<&str>, path: Option<&str>) -> RawSse {
        RawSse {
            kms_key_id: kms.map(Into::into),
            algorithm: alg.map(Into::into),
            key: key.map(Into::into),
            key_path: path.map(Into::into),
        }
    }

    #[test]
    fn customer_keys_are_the_base64_of_32_bytes_and_never_quoted() {
        assert_eq!(
            decode_customer_key(KEY).unwrap(),
            *b"0123456789abcdef0123456789abcdef"
        );
        assert!(decode_customer_key(&format!("{KEY}\n")).is_ok());
        let short = "c2VjcmV0LXRvby1zaG9ydA==";
        let e = decode_customer_key(short).unwrap_err();
        assert!(e.contains("got 16 bytes"), "{e}");
        assert!(!e.contains(short), "{e}");
        let e = decode_customer_key("not base64 at all!").unwrap_err();
        assert!(
            e.contains("not valid base64") && !e.contains("at all"),
            "{e}"
        );
        // 32 raw bytes, not base64: refused (v0.5 takes base64 only).
        assert!(decode_customer_key("0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn one_kind_of_encryption_with_its_rules() {
        assert_eq!(sse_of(raw(None, None, None, None), None).unwrap(), None);
        assert_eq!(
            sse_of(raw(Some("alias/x"), None, None, None), None).unwrap(),
            Some(Sse::Kms {
                key_id: "alias/x".into()
            })
        );
        assert_eq!(
            sse_of(
                raw(None, Some("AES256"), Some(KEY), None),
                Some("http://127.0.0.1:9")
            )
            .unwrap(),
            Some(Sse::Customer(SseCustomerKey::Inline(KEY.into())))
        );
        assert_eq!(
            sse_of(
                raw(None, None, None, Some("/k")),
                Some("https://s3.example.com")
            )
            .unwrap(),
            Some(Sse::Customer(SseCustomerKey::File("/k".into())))
        );
        let keys = |r| -> Vec<&'static str> {
            sse_of(r, None)
                .unwrap_err()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            keys(raw(Some("k"), None, Some(KEY), None)),
            ["sse-kms-key-id"]
        );
        assert_eq!(
            keys(raw(None, None, Some(KEY), Some("/k"))),
            ["sse-customer-key"]
        );
        assert_eq!(
            keys(raw(None, Some("aes256"), Some(KEY), None)),
            ["sse-customer-algorithm"]
        );
        assert_eq!(
            keys(raw(None, Some("AES256"), None, None)),
            ["sse-customer-algorithm"]
        );
        assert_eq!(
            keys(raw(None, None, Some("c2hvcnQ="), None)),
            ["sse-customer-key"]
        );
    }

    #[test]
    fn sse_c_needs_https_unless_the_store_is_local() {
        for local in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/",
            "http://10.1.2.3",
            "http://192.168.0.9:80",
            "http://[::1]:9000",
            "https://s3.example.com",
        ] {
            assert!(plain_http_is_local(local), "{local}");
        }
        for remote in [
            "http://s3.example.com",
            "http://8.8.8.8:9000",
            "HTTP://[2001:db8::1]/",
        ] {
            assert!(!plain_http_is_local(remote), "{remote}");
        }
        let e = sse_of(
            raw(None, None, Some(KEY), None),
            Some("http://s3.example.com"),
        )
        .unwrap_err();
        assert!(e[0].1.contains("https"), "{e:?}");
        assert!(!e[0].1.contains(KEY));
    }
}
