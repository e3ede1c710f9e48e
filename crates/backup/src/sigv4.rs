//! AWS Signature Version 4 (header-based), implemented by hand on `sha2`: HMAC-SHA256, the
//! canonical request, the string to sign, the derived signing key and the `Authorization`
//! header. The payload is always hashed and signed (never `UNSIGNED-PAYLOAD`).
//!
//! Callers pass already-encoded paths and canonical query strings ([`uri_encode`] builds both),
//! and send exactly the headers they signed (including `host`).

use sha2::{Digest, Sha256};

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Lower-case hex SHA-256 of `data` (the `x-amz-content-sha256` value of a body).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// URI-encodes `s` the way SigV4 wants: everything but `A-Z a-z 0-9 - _ . ~` becomes `%XX`
/// (upper-case hex); `/` is kept when `keep_slash` (paths) and encoded otherwise (query values).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Builds a canonical query string from unencoded pairs: each name and value URI-encoded,
/// sorted by name (then value), joined with `&`. The same string is used in the request URL.
pub fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// One request to sign.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The encoded absolute path, e.g. `/bucket/chunks/ab12`.
    pub canonical_uri: &'a str,
    /// The canonical query string (see [`canonical_query`]); empty for none.
    pub canonical_query: &'a str,
    /// Headers to sign and send, any case; must include `host`, `x-amz-date` and
    /// `x-amz-content-sha256`.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, the same as the `x-amz-date` header.
    pub amz_date: &'a str,
    pub region: &'a str,
    /// `s3`, `iam`, …
    pub service: &'a str,
}

fn sorted_headers(req: &Request<'_>) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| {
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (k.to_ascii_lowercase(), v)
        })
        .collect();
    h.sort();
    h
}

fn signed_headers(h: &[(String, String)]) -> String {
    h.iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";")
}

/// The canonical request (task 1 of SigV4).
pub fn canonical_request(req: &Request<'_>) -> String {
    let h = sorted_headers(req);
    let mut s = format!(
        "{}\n{}\n{}\n",
        req.method, req.canonical_uri, req.canonical_query
    );
    for (k, v) in &h {
        s.push_str(k);
        s.push(':');
        s.push_str(v);
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&signed_headers(&h));
    s.push('\n');
    s.push_str(req.payload_sha256);
    s
}

fn scope(req: &Request<'_>) -> String {
    let date = req.amz_date.get(..8).unwrap_or(req.amz_date);
    format!("{date}/{}/{}/aws4_request", req.region, req.service)
}

/// The string to sign (task 2).
pub fn string_to_sign(req: &Request<'_>) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        req.amz_date,
        scope(req),
        sha256_hex(canonical_request(req).as_bytes())
    )
}

/// The derived signing key (task 3).
pub fn signing_key(secret_access_key: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac_sha256(
        format!("AWS4{secret_access_key}").as_bytes(),
        date.as_bytes(),
    );
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// The hex signature (task 4).
pub fn signature(secret_access_key: &str, req: &Request<'_>) -> String {
    let date = req.amz_date.get(..8).unwrap_or(req.amz_date);
    let key = signing_key(secret_access_key, date, req.region, req.service);
    hex::encode(hmac_sha256(&key, string_to_sign(req).as_bytes()))
}

/// The `Authorization` header value.
pub fn authorization(access_key_id: &str, secret_access_key: &str, req: &Request<'_>) -> String {
    let h = sorted_headers(req);
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{},SignedHeaders={},Signature={}",
        scope(req),
        signed_headers(&h),
        signature(secret_access_key, req)
    )
}

/// `YYYYMMDDTHHMMSSZ` for now (UTC).
pub fn amz_date_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    now.format(&fmt)
        .unwrap_or_else(|_| "19700101T000000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_long_key_is_hashed_first() {
        // RFC 4231 test case 6: a 131-byte key of 0xaa.
        let key = [0xaau8; 131];
        assert_eq!(
            hex::encode(hmac_sha256(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// The "GET Object" example of the S3 SigV4 header-based authentication docs.
    #[test]
    fn aws_documented_get_object_example() {
        let empty = sha256_hex(b"");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", empty.as_str()),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let req = Request {
            method: "GET",
            canonical_uri: "/test.txt",
            canonical_query: "",
            headers: &headers,
            payload_sha256: &empty,
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            service: "s3",
        };
        assert_eq!(
            sha256_hex(canonical_request(&req).as_bytes()),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            hex::encode(signing_key(secret, "20130524", "us-east-1", "s3")),
            "dbb893acc010964918f1fd433add87c70e8b0db6be30c1fbeafefa5ec6ba8378"
        );
        assert_eq!(
            authorization("AKIAIOSFODNN7EXAMPLE", secret, &req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn query_is_encoded_and_sorted() {
        assert_eq!(
            canonical_query(&[("prefix", "a b/c"), ("list-type", "2")]),
            "list-type=2&prefix=a%20b%2Fc"
        );
        assert_eq!(uri_encode("/x/y z~", true), "/x/y%20z~");
        assert_eq!(amz_date_now().len(), 16);
    }
}
