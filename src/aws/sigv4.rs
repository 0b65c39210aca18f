//! AWS Signature Version 4 for any service, for the one request rust-s3 cannot sign: STS
//! `AssumeRole` (rust-s3's `signing` fixes the service to `s3` in the credential scope).
//! Pure: the caller gives the time, the request's parts and the keys, and gets the
//! `Authorization` header value. Tested against AWS's published examples.

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What is signed of one request. `headers` are (lower-case name, value) and must include
/// `host` and `x-amz-date` (and `x-amz-security-token` with temporary keys).
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// The URI path, already percent-encoded as it is sent (`/` for STS).
    pub path: &'a str,
    /// Query parameters, not encoded.
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// The `Authorization` header of `req` signed at `amz_date` (`YYYYMMDDTHHMMSSZ`) for `region`
/// and `service` with these keys.
pub(crate) fn authorization(
    req: &Request<'_>,
    amz_date: &str,
    region: &str,
    service: &str,
    access_key_id: &str,
    secret_access_key: &str,
) -> String {
    let date = &amz_date[..8.min(amz_date.len())];
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), collapse_spaces(v)))
        .collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        query.join("&"),
        hex(&Sha256::digest(req.payload))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret_access_key, date, region, service);
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // new_from_slice takes a key of any length for HMAC.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Trims a header value and collapses runs of spaces, as SigV4's canonical form asks.
fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SigV4's percent-encoding (RFC 3986 unreserved characters stay), also right for
/// `application/x-www-form-urlencoded` bodies that AWS's query APIs read.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `t` as SigV4's `x-amz-date`: `YYYYMMDDTHHMMSSZ` in UTC.
pub(crate) fn amz_date(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replace(['-', ':'], "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const AK: &str = "AKIDEXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// AWS's SigV4 test suite, `get-vanilla`.
    #[test]
    fn get_vanilla() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            payload: b"",
        };
        let auth = authorization(&req, "20150830T123600Z", "us-east-1", "service", AK, SK);
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The IAM `ListUsers` example of AWS's "Signature Version 4 signing process" guide,
    /// its derived key and its signature.
    #[test]
    fn iam_list_users_example() {
        assert_eq!(
            hex(&signing_key(SK, "20150830", "us-east-1", "iam")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("host", "iam.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
            payload: b"",
        };
        let auth = authorization(&req, "20150830T123600Z", "us-east-1", "iam", AK, SK);
        assert!(
            auth.ends_with(
                "SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
            ),
            "{auth}"
        );
    }

    #[test]
    fn encoding_and_dates() {
        assert_eq!(
            encode("arn:aws:iam::1:role/a b"),
            "arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b"
        );
        assert_eq!(encode("a-b_c.d~"), "a-b_c.d~");
        let t = humantime::parse_rfc3339("2015-08-30T12:36:00Z").unwrap();
        assert_eq!(amz_date(t), "20150830T123600Z");
    }
}
