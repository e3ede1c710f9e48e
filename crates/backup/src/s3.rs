//! The S3-compatible target: path-style requests (`<endpoint>/<bucket>/<prefix><key>`) signed
//! with AWS Signature V4 ([`crate::sigv4`]) over a blocking `ureq` agent. Listing uses
//! ListObjectsV2 with continuation tokens. Transient failures (connection errors, 5xx, 429) are
//! retried a few times with backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Secret;
use crate::error::TargetError;
use crate::sigv4;
use crate::target::{Target, validate_key};

/// The largest object body read back (a manifest of a multi-TiB image stays far below this).
const MAX_BODY: u64 = 1 << 30;
const ATTEMPTS: u32 = 4;

/// Connection settings for an S3-compatible store.
#[derive(Clone)]
pub struct S3Settings {
    /// `http://host:port` or `https://host[:port][/path]`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Prepended to every key (e.g. `scalebox/`); empty for none.
    pub prefix: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// An S3 bucket (or a prefix of one) as a [`Target`].
pub struct S3 {
    scheme: String,
    host: String,
    base_path: String,
    region: String,
    bucket: String,
    prefix: String,
    access_key_id: String,
    secret: Secret,
    agent: ureq::Agent,
    /// Sign query strings with `/` left unencoded (see [`S3::list`]); learned on first use.
    query_slash_compat: AtomicBool,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl S3 {
    /// Validates the settings and builds the client (no request is made).
    pub fn new(s: S3Settings) -> Result<S3, String> {
        let (scheme, rest) = if let Some(r) = s.endpoint.strip_prefix("http://") {
            ("http", r)
        } else if let Some(r) = s.endpoint.strip_prefix("https://") {
            ("https", r)
        } else {
            return Err(format!(
                "s3 endpoint {:?} must start with http:// or https://",
                s.endpoint
            ));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty()
            || host.contains('@')
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(format!("s3 endpoint {:?} has an invalid host", s.endpoint));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!(
                "s3 endpoint {:?} must not have a query or fragment",
                s.endpoint
            ));
        }
        // The Host header ureq would send: the port only when it is not the scheme's default.
        let host = match (scheme, host.rsplit_once(':')) {
            ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_owned(),
            _ => host.to_owned(),
        };
        let b = &s.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return Err(format!(
                "s3 bucket {b:?} is not a valid bucket name (3-63 of a-z 0-9 . -)"
            ));
        }
        if s.region.is_empty()
            || !s
                .region
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(format!("s3 region {:?} is invalid", s.region));
        }
        if s.access_key_id.is_empty() || !s.access_key_id.bytes().all(|c| c.is_ascii_graphic()) {
            return Err("s3 access_key_id is empty or has invalid characters".to_owned());
        }
        if s.secret_access_key.expose().is_empty() {
            return Err("s3 secret access key is empty".to_owned());
        }
        if !s.prefix.is_empty() {
            if !s.prefix.ends_with('/') {
                return Err(format!("s3 prefix {:?} must end with '/'", s.prefix));
            }
            validate_key(s.prefix.trim_end_matches('/')).map_err(|e| format!("s3 prefix: {e}"))?;
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Ok(S3 {
            scheme: scheme.to_owned(),
            host,
            base_path: path.trim_end_matches('/').to_owned(),
            region: s.region,
            bucket: s.bucket,
            prefix: s.prefix,
            access_key_id: s.access_key_id,
            secret: s.secret_access_key,
            agent,
            query_slash_compat: AtomicBool::new(false),
        })
    }

    /// Creates the bucket if it does not exist (HEAD, then PUT).
    pub fn ensure_bucket(&self) -> Result<(), TargetError> {
        let path = self.bucket_path();
        let r = self.send("head bucket", "", "HEAD", &path, "", "", &[])?;
        if r.status == 200 {
            return Ok(());
        }
        let body = if self.region == "us-east-1" {
            Vec::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
            .into_bytes()
        };
        let r = self.send("create bucket", "", "PUT", &path, "", "", &body)?;
        match r.status {
            200..=299 => Ok(()),
            _ => Err(self.http_error("create bucket", "", &r)),
        }
    }

    fn object_path(&self, key: &str) -> String {
        format!(
            "{}/{}/{}",
            self.base_path,
            self.bucket,
            sigv4::uri_encode(&format!("{}{key}", self.prefix), true)
        )
    }

    fn bucket_path(&self) -> String {
        format!("{}/{}", self.base_path, self.bucket)
    }

    fn http_error(&self, op: &'static str, key: &str, r: &Reply) -> TargetError {
        let text = String::from_utf8_lossy(&r.body);
        TargetError::Http {
            op,
            key: key.to_owned(),
            target: self.describe(),
            status: r.status,
            code: xml_tag(&text, "Code").unwrap_or_default(),
            message: xml_tag(&text, "Message").unwrap_or_default(),
        }
    }

    /// One signed request with retries. `op` and `key` are only for messages; `path` is the
    /// encoded absolute path, `query` the URL's query and `signed_query` its canonical form.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        op: &'static str,
        key: &str,
        method: &str,
        path: &str,
        query: &str,
        signed_query: &str,
        body: &[u8],
    ) -> Result<Reply, TargetError> {
        let url = if query.is_empty() {
            format!("{}://{}{path}", self.scheme, self.host)
        } else {
            format!("{}://{}{path}?{query}", self.scheme, self.host)
        };
        let payload = sigv4::sha256_hex(body);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            let date = sigv4::amz_date_now();
            let headers = [
                ("host", self.host.as_str()),
                ("x-amz-content-sha256", payload.as_str()),
                ("x-amz-date", date.as_str()),
            ];
            let req = sigv4::Request {
                method,
                canonical_uri: path,
                canonical_query: signed_query,
                headers: &headers,
                payload_sha256: &payload,
                amz_date: &date,
                region: &self.region,
                service: "s3",
            };
            let auth = sigv4::authorization(&self.access_key_id, self.secret.expose(), &req);
            let builder = ureq::http::Request::builder()
                .method(method)
                .uri(&url)
                .header("host", &self.host)
                .header("x-amz-content-sha256", &payload)
                .header("x-amz-date", &date)
                .header("authorization", auth);
            let result = if method == "PUT" {
                builder
                    .body(body.to_vec())
                    .map_err(|e| e.to_string())
                    .and_then(|r| self.agent.run(r).map_err(|e| e.to_string()))
            } else {
                builder
                    .body(())
                    .map_err(|e| e.to_string())
                    .and_then(|r| self.agent.run(r).map_err(|e| e.to_string()))
            };
            match result {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let body = if method == "HEAD" {
                        Vec::new()
                    } else {
                        match resp.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
                            Ok(b) => b,
                            Err(e) => {
                                last = format!("reading the response: {e}");
                                continue;
                            }
                        }
                    };
                    if status >= 500 || status == 429 {
                        last = format!("HTTP {status}");
                        tracing::debug!(op, key, status, attempt, "s3 request failed, retrying");
                        if attempt + 1 == ATTEMPTS {
                            return Ok(Reply { status, body });
                        }
                        continue;
                    }
                    return Ok(Reply { status, body });
                }
                Err(e) => {
                    tracing::debug!(op, key, error = %e, attempt, "s3 request failed, retrying");
                    last = e;
                }
            }
        }
        Err(TargetError::Transport {
            op,
            key: key.to_owned(),
            target: self.describe(),
            message: format!("after {ATTEMPTS} attempts: {last}"),
        })
    }
}

impl S3 {
    fn is_signature_mismatch(&self, r: &Reply) -> bool {
        xml_tag(&String::from_utf8_lossy(&r.body), "Code").as_deref()
            == Some("SignatureDoesNotMatch")
    }
}

/// The unescaped text of the first `<tag>…</tag>` in `xml`.
fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    xml_tags(xml, tag).into_iter().next()
}

/// The unescaped texts of every `<tag>…</tag>` in `xml`.
fn xml_tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(xml_unescape(&after[..j]));
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

impl Target for S3 {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TargetError> {
        validate_key(key)?;
        let r = self.send("put", key, "PUT", &self.object_path(key), "", "", data)?;
        match r.status {
            200..=299 => Ok(()),
            _ => Err(self.http_error("put", key, &r)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TargetError> {
        validate_key(key)?;
        let r = self.send("get", key, "GET", &self.object_path(key), "", "", &[])?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            _ => Err(self.http_error("get", key, &r)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, TargetError> {
        validate_key(key)?;
        let r = self.send("head", key, "HEAD", &self.object_path(key), "", "", &[])?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.http_error("head", key, &r)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        if !prefix.is_empty() {
            validate_key(prefix.trim_end_matches('/'))?;
        }
        let full = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut pairs = vec![("list-type", "2"), ("prefix", full.as_str())];
            if let Some(t) = &token {
                pairs.push(("continuation-token", t.as_str()));
            }
            let query = sigv4::canonical_query(&pairs);
            let path = self.bucket_path();
            let r = if self.query_slash_compat.load(Ordering::Relaxed) {
                let signed = query.replace("%2F", "/");
                self.send("list", prefix, "GET", &path, &query, &signed, &[])?
            } else {
                let r = self.send("list", prefix, "GET", &path, &query, &query, &[])?;
                if r.status == 403 && query.contains("%2F") && self.is_signature_mismatch(&r) {
                    // Some S3 emulators (moto) verify the signature against the decoded query,
                    // `/` unencoded, where SigV4 (and AWS) encode it as %2F. The request is the
                    // same; only the signature differs. Retry that way and remember it.
                    let signed = query.replace("%2F", "/");
                    let r2 = self.send("list", prefix, "GET", &path, &query, &signed, &[])?;
                    if r2.status == 200 {
                        tracing::debug!(target = %self.describe(), "s3 server signs queries with '/' unencoded");
                        self.query_slash_compat.store(true, Ordering::Relaxed);
                    }
                    r2
                } else {
                    r
                }
            };
            if r.status != 200 {
                return Err(self.http_error("list", prefix, &r));
            }
            let text = String::from_utf8_lossy(&r.body);
            for k in xml_tags(&text, "Key") {
                if let Some(k) = k.strip_prefix(&self.prefix)
                    && k.starts_with(prefix)
                {
                    out.push(k.to_owned());
                }
            }
            let truncated = xml_tag(&text, "IsTruncated").as_deref() == Some("true");
            match xml_tag(&text, "NextContinuationToken") {
                Some(t) if truncated && !t.is_empty() => token = Some(t),
                _ if truncated => {
                    return Err(TargetError::Transport {
                        op: "list",
                        key: prefix.to_owned(),
                        target: self.describe(),
                        message: "truncated listing without a continuation token".to_owned(),
                    });
                }
                _ => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), TargetError> {
        validate_key(key)?;
        let r = self.send("delete", key, "DELETE", &self.object_path(key), "", "", &[])?;
        match r.status {
            200..=299 | 404 => Ok(()),
            _ => Err(self.http_error("delete", key, &r)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "s3 {}://{}{}/{}/{}",
            self.scheme, self.host, self.base_path, self.bucket, self.prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: &str) -> S3Settings {
        S3Settings {
            endpoint: endpoint.to_owned(),
            region: "us-east-1".to_owned(),
            bucket: "backups".to_owned(),
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Secret::new("very-secret-value".to_owned()),
            prefix: "scalebox/".to_owned(),
        }
    }

    #[test]
    fn endpoints_are_parsed() {
        let s = S3::new(settings("http://127.0.0.1:9000")).unwrap();
        assert_eq!(s.host, "127.0.0.1:9000");
        assert_eq!(s.object_path("chunks/ab"), "/backups/scalebox/chunks/ab");
        let s = S3::new(settings("https://s3.example.com:443/base/")).unwrap();
        assert_eq!(s.host, "s3.example.com");
        assert_eq!(s.bucket_path(), "/base/backups");
        assert!(S3::new(settings("ftp://x")).is_err());
        assert!(S3::new(settings("http://user:pw@x")).is_err());
        let mut bad = settings("http://x");
        bad.bucket = "Bad_Bucket".to_owned();
        assert!(S3::new(bad).is_err());
        let mut bad = settings("http://x");
        bad.prefix = "noslash".to_owned();
        assert!(S3::new(bad).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_describe() {
        let st = settings("http://127.0.0.1:9000");
        assert!(!format!("{st:?}").contains("very-secret-value"));
        let s = S3::new(st).unwrap();
        assert!(!format!("{s:?}").contains("very-secret-value"));
        assert!(!s.describe().contains("very-secret-value"));
    }

    #[test]
    fn list_xml_is_parsed() {
        let x = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>a&amp;b</Key></Contents>\
                 <Contents><Key>c</Key></Contents><NextContinuationToken>t1</NextContinuationToken></ListBucketResult>";
        assert_eq!(xml_tags(x, "Key"), vec!["a&b", "c"]);
        assert_eq!(xml_tag(x, "NextContinuationToken").as_deref(), Some("t1"));
        assert_eq!(xml_tag(x, "Missing"), None);
    }
}
