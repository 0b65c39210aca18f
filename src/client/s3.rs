//! The S3 replica client (SPEC §5.6): the replica tree as keys under a prefix of a bucket on
//! AWS S3 or an S3-compatible store.
//!
//! rust-s3 only signs: it builds each request (URL, SigV4 headers, XML body) without sending
//! it, and ureq, our one blocking HTTP transport, carries every request over a pooled
//! connection. No async runtime is involved. Uploads buffer at most one part (`part_size`)
//! in memory: small objects go in one PUT, larger ones as a multipart upload. Downloads
//! stream. Transient failures (connection errors, timeouts, 5xx, 429) are retried with capped
//! exponential backoff and jitter; everything else surfaces at once as one line naming the
//! replica, the operation, the key and the HTTP status. Secrets and signatures never appear
//! in an error: only the store's own error code and message do.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use s3::command::{Command, Multipart};
use s3::creds::Credentials;
use s3::request::blocking::AttoRequest;
use s3::request::Request as _;
use s3::serde_types::{
    CompleteMultipartUploadData, DeleteObjectsRequest, InitiateMultipartUploadResponse,
    ListBucketResult, ObjectIdentifier, Part,
};
use s3::{Bucket, Region};

use super::{Listing, NotFound, ReplicaClient, Result, SnapshotInfo, WalSegmentInfo};
use crate::backoff::{Backoff, Growth};
use crate::codec::{read_full, Compression};
use crate::config::S3Config;
use crate::layout;
use crate::position::is_generation;

/// Objects up to this size go in one PUT; larger ones in parts of this size.
pub(crate) const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Attempts of one request before a transient failure is reported.
const ATTEMPTS: u32 = 5;
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// Largest error body we read to find the store's error code.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// A multipart upload of one of our keys started longer ago than this is taken for an
/// abandoned one (a daemon killed mid-upload) and aborted at start. A live upload is never
/// that old unless a single snapshot takes an hour to upload; aborting it costs one retried
/// snapshot (an object only appears when its upload completes), never data.
pub(crate) const STALE_UPLOAD_AGE: Duration = Duration::from_secs(3600);

/// A replica in an S3-compatible bucket (an `s3` replica): the replica tree under a key prefix.
pub struct S3Client {
    bucket: Box<Bucket>,
    /// Key prefix without leading or trailing slash; empty for the bucket root.
    prefix: String,
    /// The keys that sign each request, refreshed before they expire.
    creds: crate::aws::Provider,
    agent: ureq::Agent,
    part_size: usize,
    /// `host:port` of the store, for transport errors (never credentials).
    endpoint: String,
    /// When set (at shutdown), no request runs past it: each gets the time left as its
    /// whole timeout, and none starts or retries after it.
    deadline: Mutex<Option<Instant>>,
    /// Multipart uploads in progress, (key, upload id): aborted when the daemon exits before
    /// they complete, so no parts are left in the bucket.
    uploads: Mutex<Vec<(String, String)>>,
}

/// Which credentials signed a request: the answer's extension, so that an expired-token
/// answer refreshes those keys and no newer ones.
#[derive(Clone, Copy)]
struct SignedWith(u64);

/// Error codes by which a store says that temporary keys have expired or been replaced: one
/// refresh of the credentials and one retry, not an error.
fn is_expired_credentials(status: u16, code: Option<&str>) -> bool {
    matches!(status, 400 | 403)
        && matches!(
            code,
            Some(
                "ExpiredToken"
                    | "ExpiredTokenException"
                    | "TokenRefreshRequired"
                    | "InvalidToken"
                    | "InvalidAccessKeyId"
            )
        )
}

impl S3Client {
    /// The client for replica `name` as configured; fails when no credentials are found or
    /// the bucket or region is unusable. Its only request is the lookup of the bucket's
    /// region, when the config names neither a region nor an endpoint.
    pub fn new(name: &str, cfg: &S3Config) -> Result<S3Client> {
        // Messages here name no replica: `client::open` adds "replica NAME" once.
        let _ = name;
        let creds = crate::aws::Provider::for_s3(cfg)?;
        let agent = agent(cfg.skip_verify);
        let first = creds.get()?.0.to_s3()?;
        let region = match (&cfg.region, &cfg.endpoint) {
            (region, Some(endpoint)) => Region::Custom {
                region: region.clone().unwrap_or_else(|| "us-east-1".into()),
                endpoint: endpoint.trim_end_matches('/').to_string(),
            },
            (Some(region), None) => region
                .parse()
                .map_err(|_| anyhow!("unknown S3 region {region:?}"))?,
            // The bucket's own region, as Litestream v0.3 looks it up; when the store will not
            // say, AWS_REGION, AWS_DEFAULT_REGION, the profile's region, the instance's.
            (None, None) => match lookup_region(&agent, &cfg.bucket, &first) {
                Ok(r) => r,
                Err(e) => match crate::aws::region_from_environment()
                    .or_else(crate::aws::region_from_instance_metadata)
                    .and_then(|r| r.parse().ok())
                {
                    Some(r) => r,
                    None => {
                        return Err(
                            e.context(format!("cannot find the region of bucket {}", cfg.bucket))
                        )
                    }
                },
            },
        };
        let mut bucket = Bucket::new(&cfg.bucket, region, first)
            .map_err(|e| anyhow!("bucket {}: {e}", cfg.bucket))?;
        if cfg.force_path_style {
            bucket = bucket.with_path_style();
        }
        let endpoint = endpoint_of(&bucket);
        Ok(S3Client {
            bucket,
            prefix: cfg.path.trim_matches('/').to_string(),
            creds,
            agent,
            part_size: DEFAULT_PART_SIZE,
            endpoint,
            deadline: Mutex::new(None),
            uploads: Mutex::new(Vec::new()),
        })
    }

    /// The bucket with `keys` to sign with (a copy: the bucket holds its keys behind a lock
    /// of its own that only `&mut` can replace).
    fn signing_bucket(&self, keys: &crate::aws::AwsCredentials) -> Result<Bucket> {
        let mut b = (*self.bucket).clone();
        b.set_credentials(keys.to_s3()?);
        Ok(b)
    }

    /// The shutdown deadline, if one is set.
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Aborts multipart uploads of our keys under the prefix that are older than `min_age`;
    /// returns how many. Keys of other shapes (another tool's uploads beside ours) are left.
    pub fn abort_stale_uploads(&self, min_age: Duration) -> Result<usize> {
        let prefix = self.key(&format!("{}/", layout::GENERATIONS_DIR));
        let mut aborted = 0;
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let make = || Command::ListMultipartUploads {
                prefix: Some(&prefix),
                delimiter: None,
                key_marker: key_marker.clone(),
                upload_id_marker: id_marker.clone(),
                max_uploads: Some(1000),
            };
            let resp = self.call("LIST (multipart uploads)", "", &prefix, &make, None)?;
            let body = read_body(resp, 16 * 1024 * 1024)?;
            let page: MultipartUploads = quick_xml::de::from_str(&body).map_err(|e| {
                anyhow!(
                    "LIST (multipart uploads) {}: unreadable reply: {e}",
                    self.describe_key(&prefix)
                )
            })?;
            let now = SystemTime::now();
            for u in &page.uploads {
                let Some(rel) = self.relative(&u.key) else {
                    continue;
                };
                if !is_our_object_key(rel) || !is_older_than(&u.initiated, now, min_age) {
                    continue;
                }
                self.abort_multipart(&u.key, &u.id)?;
                aborted += 1;
            }
            match (page.is_truncated, page.next_key_marker) {
                (true, Some(k)) => {
                    key_marker = Some(k);
                    id_marker = page.next_upload_id_marker;
                }
                _ => break,
            }
        }
        Ok(aborted)
    }

    /// `key` relative to our prefix; `None` outside it.
    fn relative<'k>(&self, key: &'k str) -> Option<&'k str> {
        if self.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(&self.prefix)?.strip_prefix('/')
        }
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let make = || Command::AbortMultipartUpload { upload_id };
        let result = self.call("DELETE (abort multipart)", key, key, &make, None);
        match result {
            Err(e) if super::is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn describe_key(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name)
    }

    /// Sends one signed request, retrying transient failures; returns the response whatever
    /// its status once retries are exhausted or the status is final.
    fn send<'c>(
        &self,
        op: &str,
        url_key: &str,
        key: &str,
        make: &dyn Fn() -> Command<'c>,
        body: Option<&[u8]>,
    ) -> Result<http::Response<ureq::Body>> {
        let path = format!("/{url_key}");
        let mut attempt = 1;
        let mut backoff = request_backoff();
        let deadline = self.deadline();
        loop {
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => bail!(
                        "{op} {}: not sent, the shutdown deadline has passed",
                        self.describe_key(key)
                    ),
                },
                None => None,
            };
            let outcome =
                (|| -> Result<std::result::Result<http::Response<ureq::Body>, ureq::Error>> {
                    let (keys, generation) = self.creds.get()?;
                    let bucket = self.signing_bucket(&keys)?;
                    let req = AttoRequest::new(&bucket, &path, make())
                        .map_err(|e| anyhow!("cannot sign request: {e}"))?;
                    let url = req.url().map_err(|e| anyhow!("cannot build URL: {e}"))?;
                    let headers = req
                        .headers()
                        .map_err(|e| anyhow!("cannot sign request: {e}"))?;
                    let method = match req.command().http_verb() {
                        s3::command::HttpMethod::Get => http::Method::GET,
                        s3::command::HttpMethod::Put => http::Method::PUT,
                        s3::command::HttpMethod::Post => http::Method::POST,
                        s3::command::HttpMethod::Delete => http::Method::DELETE,
                        s3::command::HttpMethod::Head => http::Method::HEAD,
                    };
                    let mut builder = http::Request::builder().method(method).uri(url.as_str());
                    for (k, v) in headers.iter() {
                        builder = builder.header(k.as_str(), v.as_bytes());
                    }
                    let owned;
                    let payload: &[u8] = match body {
                        Some(b) => b,
                        None => {
                            owned = req
                                .request_body()
                                .map_err(|e| anyhow!("cannot build request body: {e}"))?;
                            &owned
                        }
                    };
                    let mut request = builder
                        .body(payload)
                        .map_err(|e| anyhow!("cannot build request: {e}"))?;
                    if left.is_some() {
                        // The whole exchange, body included, ends by the deadline.
                        request = self
                            .agent
                            .configure_request(request)
                            .timeout_global(left)
                            .build();
                    }
                    Ok(self.agent.run(request).map(|mut resp| {
                        resp.extensions_mut().insert(SignedWith(generation));
                        resp
                    }))
                })()
                .map_err(|e| anyhow!("{op} {}: {e}", self.describe_key(key)))?;

            let retryable = match &outcome {
                Ok(resp) => is_retryable_status(resp.status().as_u16()),
                Err(e) => is_transient(e),
            };
            let wait = backoff.next_wait();
            let past_deadline = deadline.is_some_and(|d| Instant::now() + wait >= d);
            if !retryable || attempt >= ATTEMPTS || past_deadline {
                return match outcome {
                    Ok(resp) => Ok(resp),
                    Err(e) => Err(anyhow!(
                        "{op} {}: {} {}",
                        self.describe_key(key),
                        transport_message(&e),
                        self.endpoint
                    )),
                };
            }
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    /// `send`, then turns any status but 2xx into an error (404 into [`NotFound`]).
    fn call<'c>(
        &self,
        op: &str,
        url_key: &str,
        key: &str,
        make: &dyn Fn() -> Command<'c>,
        body: Option<&[u8]>,
    ) -> Result<http::Response<ureq::Body>> {
        let mut resp = self.send(op, url_key, key, make, body)?;
        let mut refreshed = false;
        let (status, code, message) = loop {
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(resp);
            }
            let signed_with = resp.extensions().get::<SignedWith>().copied();
            let (code, message) = error_details(resp);
            // Temporary keys that expired early or were replaced: refresh once, ask again.
            if !refreshed
                && is_expired_credentials(status, code.as_deref())
                && signed_with.is_some_and(|SignedWith(g)| self.creds.expired(g))
            {
                refreshed = true;
                crate::logging::info(
                    "the store refused the S3 credentials as expired; refreshing them",
                    &[
                        ("source", &self.creds.describe()),
                        ("code", &code.as_deref().unwrap_or_default()),
                    ],
                );
                resp = self.send(op, url_key, key, make, body)?;
                continue;
            }
            break (status, code, message);
        };
        let what = format!("{op} {}", self.describe_key(key));
        if status == 404 && code.as_deref() != Some("NoSuchBucket") {
            return Err(anyhow::Error::new(NotFound(self.describe_key(key))).context(what));
        }
        let detail = match (code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            (None, Some(m)) => m,
            (None, None) => String::new(),
        };
        let hint = match status {
            403 => format!(
                " (check the S3 credentials, from {})",
                self.creds.describe()
            ),
            _ => String::new(),
        };
        bail!("{what}: HTTP {status} {detail}{hint}")
    }

    /// Every object under `rel_prefix` (relative to our prefix), across continuation pages.
    /// With `delimiter`, the common prefixes (one level of "directories") and the objects
    /// directly under `rel_prefix`.
    fn list(&self, rel_prefix: &str, delimiter: bool) -> Result<Vec<ListedObject>> {
        let prefix = self.key(rel_prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let make = || Command::ListObjectsV2 {
                prefix: prefix.clone(),
                delimiter: delimiter.then(|| "/".to_string()),
                continuation_token: token.clone(),
                start_after: None,
                max_keys: Some(1000),
            };
            let resp = self.call("LIST", "", &prefix, &make, None)?;
            let body = read_body(resp, 64 * 1024 * 1024)
                .with_context(|| format!("LIST {}", self.describe_key(&prefix)))?;
            let page: ListBucketResult = quick_xml::de::from_str(&body).map_err(|e| {
                anyhow!("LIST {}: unreadable reply: {e}", self.describe_key(&prefix))
            })?;
            for p in page.common_prefixes.unwrap_or_default() {
                out.push(ListedObject {
                    key: p.prefix,
                    size: 0,
                    created: UNIX_EPOCH,
                    is_prefix: true,
                });
            }
            for o in page.contents {
                let created = humantime::parse_rfc3339_weak(o.last_modified.trim_end_matches('Z'))
                    .or_else(|_| humantime::parse_rfc3339(&o.last_modified))
                    .unwrap_or(UNIX_EPOCH);
                out.push(ListedObject {
                    key: o.key,
                    size: o.size,
                    created,
                    is_prefix: false,
                });
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Lists `dir` (relative, ending in `/`) and splits it into what `parse` recognises (by
    /// the name after `dir`) and foreign keys (relative to the replica prefix).
    fn listing<T>(
        &self,
        dir: &str,
        delimiter: bool,
        parse: impl Fn(&str, &ListedObject) -> Option<T>,
    ) -> Result<Listing<T>> {
        let base = self.key(dir);
        let mut items = Vec::new();
        let mut foreign = Vec::new();
        for o in self.list(dir, delimiter)? {
            let Some(name) = o.key.strip_prefix(&base) else {
                // The store answered with a key outside the prefix asked for.
                foreign.push(o.key.clone());
                continue;
            };
            match parse(name, &o) {
                Some(item) => items.push(item),
                None if layout::is_junk_name(name) => {}
                None => foreign.push(format!("{dir}{name}")),
            }
        }
        foreign.sort();
        Ok(Listing { items, foreign })
    }

    /// Stores `data` at `key`: one PUT up to `part_size`, else a multipart upload.
    fn put(&self, key: &str, data: &mut dyn Read) -> Result<(u64, SystemTime)> {
        let mut buf = vec![0u8; self.part_size];
        let n = read_full(data, &mut buf)
            .with_context(|| format!("cannot read the data for {}", self.describe_key(key)))?;
        if n < buf.len() {
            let content = &buf[..n];
            let make = || Command::PutObject {
                content,
                content_type: "application/octet-stream",
                custom_headers: None,
                multipart: None,
            };
            self.call("PUT", key, key, &make, Some(content))?;
            return Ok((n as u64, SystemTime::now()));
        }

        let upload_id = self.initiate_multipart(key)?;
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key.to_string(), upload_id.clone()));
        let result = (|| -> Result<u64> {
            let mut parts = Vec::new();
            let mut total = 0u64;
            let mut len = n;
            while len > 0 {
                let number = parts.len() as u32 + 1;
                parts.push(self.put_part(key, &upload_id, number, &buf[..len])?);
                total += len as u64;
                len = read_full(data, &mut buf).with_context(|| {
                    format!("cannot read the data for {}", self.describe_key(key))
                })?;
            }
            self.complete_multipart(key, &upload_id, parts)?;
            Ok(total)
        })();
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, id)| *id != upload_id);
        match result {
            Ok(total) => Ok((total, SystemTime::now())),
            Err(e) => {
                let _ = self.abort_multipart(key, &upload_id);
                Err(e)
            }
        }
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    fn initiate_multipart(&self, key: &str) -> Result<String> {
        let make = || Command::InitiateMultipartUpload {
            content_type: "application/octet-stream",
        };
        let resp = self.call("PUT (initiate multipart)", key, key, &make, None)?;
        let body = read_body(resp, MAX_ERROR_BODY)?;
        let init: InitiateMultipartUploadResponse =
            quick_xml::de::from_str(&body).map_err(|e| {
                anyhow!(
                    "PUT {}: unreadable multipart reply: {e}",
                    self.describe_key(key)
                )
            })?;
        Ok(init.upload_id)
    }

    /// Uploads part `number` of a multipart upload; returns it with its ETag.
    fn put_part(&self, key: &str, upload_id: &str, number: u32, content: &[u8]) -> Result<Part> {
        let make = || Command::PutObject {
            content,
            content_type: "application/octet-stream",
            custom_headers: None,
            multipart: Some(Multipart::new(number, upload_id)),
        };
        let resp = self.call(
            &format!("PUT (part {number})"),
            key,
            key,
            &make,
            Some(content),
        )?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                anyhow!(
                    "PUT {} part {number}: no ETag in reply",
                    self.describe_key(key)
                )
            })?
            .to_string();
        Ok(Part {
            part_number: number,
            etag,
        })
    }

    /// Completes a multipart upload from its parts.
    fn complete_multipart(&self, key: &str, upload_id: &str, parts: Vec<Part>) -> Result<()> {
        let make = || Command::CompleteMultipartUpload {
            upload_id,
            data: CompleteMultipartUploadData {
                parts: parts.clone(),
            },
        };
        let resp = self.call("PUT (complete multipart)", key, key, &make, None)?;
        // S3 can report a failed completion inside a 200 reply.
        let body = read_body(resp, MAX_ERROR_BODY)?;
        if body.contains("<Error>") {
            let (code, message) = error_fields(&body);
            bail!(
                "PUT {}: multipart completion failed: {} {}",
                self.describe_key(key),
                code.unwrap_or_default(),
                message.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The object from byte `offset` on: a ranged GET past 0, so a download the network cut
    /// short resumes where it stopped. A store that ignores the range (200, not 206) sends
    /// the whole object, and its first `offset` bytes are dropped here.
    fn get(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>> {
        if offset == 0 {
            let resp = self.call("GET", key, key, &|| Command::GetObject, None)?;
            return Ok(Box::new(resp.into_body().into_reader()));
        }
        let make = || Command::GetObjectRange {
            start: offset,
            end: None,
        };
        let resp = self.call("GET", key, key, &make, None)?;
        let partial = resp.status().as_u16() == 206;
        let body: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
        if partial {
            Ok(body)
        } else {
            crate::client::skip_to(body, offset)
        }
    }

    /// Deletes keys in batches of at most 1000, checking each key's result.
    fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(1000) {
            let make = || Command::DeleteObjects {
                data: DeleteObjectsRequest {
                    objects: batch.iter().map(ObjectIdentifier::new).collect(),
                    quiet: true,
                },
            };
            let key = self.key("");
            let resp = self.call("DELETE", "", &key, &make, None)?;
            let body = read_body(resp, 16 * 1024 * 1024)?;
            if body.contains("<Error>") {
                let (code, message) = error_fields(&body);
                let failed_key = between(&body, "<Key>", "</Key>").unwrap_or_default();
                bail!(
                    "DELETE {}: {} {}",
                    self.describe_key(&failed_key),
                    code.unwrap_or_default(),
                    message.unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

struct ListedObject {
    key: String,
    size: u64,
    created: SystemTime,
    /// A common prefix of a delimited listing (a "directory"), not an object.
    is_prefix: bool,
}

fn agent(skip_verify: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(skip_verify)
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_send_request(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .timeout_per_write(Some(Duration::from_secs(60)))
        .max_redirects(0)
        // Restore downloads up to -parallelism WAL segments at once (8 by default); pooling
        // that many connections saves a TCP (and TLS) handshake per segment.
        .max_idle_connections(16)
        .max_idle_connections_per_host(16)
        .tls_config(tls)
        .build();
    ureq::Agent::new_with_config(config)
}

/// Region of a bucket on AWS: GetBucketLocation, else the `x-amz-bucket-region` header.
fn lookup_region(agent: &ureq::Agent, bucket: &str, creds: &Credentials) -> Result<Region> {
    let b = Bucket::new(bucket, Region::UsEast1, creds.clone()).map_err(|e| anyhow!("{e}"))?;
    let req = AttoRequest::new(&b, "/", Command::GetBucketLocation).map_err(|e| anyhow!("{e}"))?;
    let url = req.url().map_err(|e| anyhow!("{e}"))?;
    let headers = req.headers().map_err(|e| anyhow!("{e}"))?;
    let mut builder = http::Request::builder()
        .method(http::Method::GET)
        .uri(url.as_str());
    for (k, v) in headers.iter() {
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    let request = builder.body(()).map_err(|e| anyhow!("{e}"))?;
    let resp = agent
        .run(request)
        .map_err(|e| anyhow!("{} {}", transport_message(&e), endpoint_of(&b)))?;
    if let Some(r) = resp
        .headers()
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
    {
        return r.parse().map_err(|_| anyhow!("unknown region {r:?}"));
    }
    let status = resp.status().as_u16();
    let body = read_body(resp, MAX_ERROR_BODY)?;
    if status != 200 {
        let (code, message) = error_fields(&body);
        bail!(
            "HTTP {status} {} {}",
            code.unwrap_or_default(),
            message.unwrap_or_default()
        );
    }
    let name = between(&body, ">", "</LocationConstraint>").unwrap_or_default();
    let name = if name.is_empty() || name.contains('<') {
        "us-east-1".to_string()
    } else {
        name
    };
    name.parse().map_err(|_| anyhow!("unknown region {name:?}"))
}

/// A status worth asking again: a server error or throttling, but not 501 Not Implemented
/// (an S3-compatible store without the operation answers it every time; retrying it held
/// every start against such a store for ~6 s).
fn is_retryable_status(s: u16) -> bool {
    (s >= 500 && s != 501) || s == 429
}

fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
    )
}

/// What went wrong on the way to the store; the caller appends `host:port`, which a message
/// below ends with "to", "of" or "with".
fn transport_message(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t}) talking to"),
        ureq::Error::ConnectionFailed => "cannot connect to".into(),
        ureq::Error::HostNotFound => "cannot resolve the host name of".into(),
        // std's resolver (through ureq's default one) reports a name that does not resolve
        // as an I/O error, not as HostNotFound.
        ureq::Error::Io(io) if io.to_string().contains("failed to lookup address") => {
            format!("cannot resolve the host name ({io}) of")
        }
        ureq::Error::Io(io) => format!("connection error ({io}) with"),
        other => format!("{other}; store"),
    }
}

/// `host:port` the requests go to (the port is the scheme's default when none is given).
/// Only the endpoint's host part: a URL's user info or query never reaches a message.
fn endpoint_of(bucket: &Bucket) -> String {
    crate::config::host_port(&bucket.url()).unwrap_or_else(|| "the S3 endpoint".into())
}

/// A ListMultipartUploads reply: only the fields we use, each optional where stores differ.
#[derive(serde::Deserialize)]
struct MultipartUploads {
    #[serde(rename = "Upload", default)]
    uploads: Vec<MultipartUpload>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: bool,
    #[serde(rename = "NextKeyMarker", default)]
    next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker", default)]
    next_upload_id_marker: Option<String>,
}

#[derive(serde::Deserialize)]
struct MultipartUpload {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "UploadId")]
    id: String,
    #[serde(rename = "Initiated", default)]
    initiated: String,
}

/// True for the keys we upload (relative to the prefix): snapshots and WAL segments.
fn is_our_object_key(rel: &str) -> bool {
    let Some(rest) = rel
        .strip_prefix(layout::GENERATIONS_DIR)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    let mut parts = rest.split('/');
    let (Some(gen), Some(dir), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    is_generation(gen)
        && match dir {
            "snapshots" => layout::parse_snapshot_name(name).is_some(),
            "wal" => layout::parse_wal_segment_name(name).is_some(),
            _ => false,
        }
}

/// Whether an S3 `Initiated` time (RFC 3339) is more than `age` before `now`; an unreadable
/// time is not (an upload we cannot date is left alone).
fn is_older_than(initiated: &str, now: SystemTime, age: Duration) -> bool {
    let t = humantime::parse_rfc3339_weak(initiated.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(initiated));
    match t {
        Ok(t) => now.duration_since(t).is_ok_and(|d| d > age),
        Err(_) => false,
    }
}

/// Retries of one request: 400 ms, 800 ms, 1.6 s, 3.2 s (at most `MAX_RETRY_WAIT`), ±25 % so
/// replicas do not retry in step. Within `ATTEMPTS` these ride out a store's restart or a
/// throttling burst; a longer outage is the replica loop's to wait out, with its own backoff.
fn request_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(400), MAX_RETRY_WAIT, Growth::Doubling).with_jitter()
}

fn read_body(resp: http::Response<ureq::Body>, limit: u64) -> Result<String> {
    let mut s = String::new();
    resp.into_body()
        .into_reader()
        .take(limit)
        .read_to_string(&mut s)
        .map_err(|e| anyhow!("cannot read reply: {e}"))?;
    Ok(s)
}

/// The store's `<Code>` and `<Message>`, read from a bounded error body.
fn error_details(resp: http::Response<ureq::Body>) -> (Option<String>, Option<String>) {
    match read_body(resp, MAX_ERROR_BODY) {
        Ok(body) => error_fields(&body),
        Err(_) => (None, None),
    }
}

fn error_fields(body: &str) -> (Option<String>, Option<String>) {
    (
        between(body, "<Code>", "</Code>"),
        between(body, "<Message>", "</Message>"),
    )
}

fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(s[start..end].to_string())
}

impl ReplicaClient for S3Client {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }

    fn abort_uploads(&self) {
        let uploads = std::mem::take(&mut *self.uploads.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, id) in uploads {
            match self.abort_multipart(&key, &id) {
                Ok(()) => crate::logging::info(
                    "multipart upload aborted",
                    &[("key", &self.describe_key(&key))],
                ),
                Err(err) => crate::logging::warn(
                    "cannot abort a multipart upload; its parts stay in the bucket until a lifecycle rule (AbortIncompleteMultipartUpload) or the next start removes them",
                    &[("key", &self.describe_key(&key)), ("error", &format!("{err:#}"))],
                ),
            }
        }
    }

    fn clean_up_stale_uploads(&self) -> Result<usize> {
        self.abort_stale_uploads(STALE_UPLOAD_AGE)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket.name)
        } else {
            format!("s3://{}/{}", self.bucket.name, self.prefix)
        }
    }

    fn list_generations(&self) -> Result<Listing<String>> {
        let dir = format!("{}/", layout::GENERATIONS_DIR);
        let mut l = self.listing(&dir, true, |name, o| {
            let g = name.strip_suffix('/')?;
            (o.is_prefix && is_generation(g)).then(|| g.to_string())
        })?;
        l.items.sort();
        l.items.dedup();
        Ok(l)
    }

    fn list_snapshots(&self, generation: &str) -> Result<Listing<SnapshotInfo>> {
        let dir = format!("{}/", layout::snapshots_dir(generation));
        let mut l = self.listing(&dir, false, |name, o| {
            SnapshotInfo::from_name(generation, name, o.size, o.created)
        })?;
        l.items.sort_by_key(|s| s.index);
        Ok(l)
    }

    fn list_wal_segments(&self, generation: &str) -> Result<Listing<WalSegmentInfo>> {
        let dir = format!("{}/", layout::wal_dir(generation));
        let mut l = self.listing(&dir, false, |name, o| {
            WalSegmentInfo::from_name(generation, name, o.size, o.created)
        })?;
        l.items.sort_by_key(|s| (s.index, s.offset));
        Ok(l)
    }

    fn write_snapshot(
        &self,
        generation: &str,
        index: u32,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<SnapshotInfo> {
        let key = self.key(&layout::snapshot_key(generation, index, compression));
        let (size, created) = self.put(&key, data)?;
        Ok(SnapshotInfo {
            generation: generation.to_string(),
            index,
            size,
            created,
            compression,
        })
    }

    fn write_wal_segment(
        &self,
        generation: &str,
        index: u32,
        offset: u64,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<WalSegmentInfo> {
        let key = self.key(&layout::wal_segment_key(
            generation,
            index,
            offset,
            compression,
        ));
        let (size, created) = self.put(&key, data)?;
        Ok(WalSegmentInfo {
            generation: generation.to_string(),
            index,
            offset,
            size,
            created,
            compression,
        })
    }

    fn open_snapshot(&self, info: &SnapshotInfo) -> Result<Box<dyn Read + Send>> {
        self.open_snapshot_at(info, 0)
    }

    fn open_wal_segment(&self, info: &WalSegmentInfo) -> Result<Box<dyn Read + Send>> {
        self.open_wal_segment_at(info, 0)
    }

    fn open_snapshot_at(&self, info: &SnapshotInfo, offset: u64) -> Result<Box<dyn Read + Send>> {
        let rel = layout::snapshot_key(&info.generation, info.index, info.compression);
        self.get(&self.key(&rel), offset)
    }

    fn open_wal_segment_at(
        &self,
        info: &WalSegmentInfo,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>> {
        let rel =
            layout::wal_segment_key(&info.generation, info.index, info.offset, info.compression);
        self.get(&self.key(&rel), offset)
    }

    fn write_db_id(&self, generation: &str, id: &str) -> Result<()> {
        let data = format!("{id}\n");
        self.put(
            &self.key(&layout::db_id_key(generation)),
            &mut data.as_bytes(),
        )?;
        Ok(())
    }

    fn read_db_id(&self, generation: &str) -> Result<Option<String>> {
        super::read_id(self.get(&self.key(&layout::db_id_key(generation)), 0))
    }

    fn delete_generation(&self, generation: &str) -> Result<()> {
        if !is_generation(generation) {
            bail!("refusing to delete {generation:?}: not a generation id");
        }
        let keys = self
            .list(&format!("{}/", layout::generation_dir(generation)), false)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        self.delete_keys(keys)
    }

    fn delete_snapshots(&self, snapshots: &[SnapshotInfo]) -> Result<()> {
        self.delete_keys(
            snapshots
                .iter()
                .map(|s| self.key(&layout::snapshot_key(&s.generation, s.index, s.compression)))
                .collect(),
        )
    }

    fn delete_wal_segments(&self, segments: &[WalSegmentInfo]) -> Result<()> {
        self.delete_keys(
            segments
                .iter()
                .map(|s| {
                    self.key(&layout::wal_segment_key(
                        &s.generation,
                        s.index,
                        s.offset,
                        s.compression,
                    ))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_implemented_is_final_other_server_errors_and_throttling_are_retried() {
        assert!(!is_retryable_status(501));
        for s in [500, 502, 503, 504, 429] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 403, 404] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn a_name_that_does_not_resolve_is_said_so() {
        let e = ureq::Error::Io(std::io::Error::other(
            "failed to lookup address information: Name does not resolve",
        ));
        assert!(transport_message(&e).starts_with("cannot resolve the host name"));
    }

    #[test]
    fn error_fields_and_retry_waits() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>";
        let (c, m) = error_fields(body);
        assert_eq!(c.as_deref(), Some("SignatureDoesNotMatch"));
        assert!(m.unwrap().contains("does not match"));
        assert_eq!(error_fields("<x/>"), (None, None));
        let mut backoff = request_backoff();
        for _ in 1..20 {
            let w = backoff.next_wait();
            assert!(
                w <= MAX_RETRY_WAIT.mul_f64(1.25) && w >= Duration::from_millis(150),
                "{w:?}"
            );
        }
    }

    #[test]
    fn keys_under_prefix() {
        let cfg = S3Config {
            bucket: "bkt".into(),
            path: "/a/b/".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            force_path_style: true,
            access_key_id: Some("AK".into()),
            secret_access_key: Some("SK".into()),
            ..Default::default()
        };
        let c = S3Client::new("s3", &cfg).unwrap();
        assert_eq!(c.key("generations/x"), "a/b/generations/x");
        assert_eq!(c.describe(), "s3://bkt/a/b");
        let root = S3Client::new(
            "s3",
            &S3Config {
                path: String::new(),
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(root.key("generations/x"), "generations/x");
        assert_eq!(root.describe(), "s3://bkt");
    }

    #[test]
    fn stale_uploads_are_only_ours_and_old() {
        let g = "0123456789abcdef";
        assert!(is_our_object_key(&format!(
            "generations/{g}/snapshots/00000001.snapshot.lz4"
        )));
        assert!(is_our_object_key(&format!(
            "generations/{g}/wal/00000001_00000000.wal.lz4"
        )));
        assert!(!is_our_object_key(&format!("generations/{g}/other/x")));
        assert!(!is_our_object_key(
            "generations/zz/snapshots/00000001.snapshot.lz4"
        ));
        assert!(!is_our_object_key("elsewhere/big.bin"));
        let now = humantime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap();
        assert!(is_older_than(
            "2026-01-01T10:00:00.000Z",
            now,
            STALE_UPLOAD_AGE
        ));
        assert!(!is_older_than(
            "2026-01-01T11:30:00.000Z",
            now,
            STALE_UPLOAD_AGE
        ));
        assert!(!is_older_than("garbage", now, STALE_UPLOAD_AGE));
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated><Upload><Key>p/k</Key><UploadId>u1</UploadId><Initiated>2026-01-01T10:00:00.000Z</Initiated></Upload></ListMultipartUploadsResult>";
        let page: MultipartUploads = quick_xml::de::from_str(xml).unwrap();
        assert_eq!((page.uploads.len(), page.is_truncated), (1, false));
        assert_eq!(
            (page.uploads[0].key.as_str(), page.uploads[0].id.as_str()),
            ("p/k", "u1")
        );
    }

    #[test]
    fn an_unreachable_store_is_named_and_no_request_runs_past_the_deadline() {
        let cfg = S3Config {
            bucket: "bkt".into(),
            path: "p".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            force_path_style: true,
            access_key_id: Some("AK".into()),
            secret_access_key: Some("SECRETSK".into()),
            ..Default::default()
        };
        let c = S3Client::new("s3", &cfg).unwrap();
        c.set_deadline(Some(Instant::now() + Duration::from_millis(300)));
        let err = format!("{:#}", c.list_generations().unwrap_err());
        assert!(err.contains("127.0.0.1:1"), "{err}");
        assert!(!err.contains("SECRETSK"), "{err}");
        std::thread::sleep(Duration::from_millis(350));
        let err = format!("{:#}", c.list_generations().unwrap_err());
        assert!(err.contains("shutdown deadline"), "{err}");
    }
}
