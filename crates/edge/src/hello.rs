//! TLS ClientHello parsing for SNI routing: pure logic, no I/O.
//!
//! [`parse_client_hello`] is fed the bytes received so far on a connection. It reassembles the
//! handshake message across TLS records (and, because the caller feeds it again after every read,
//! across TCP segments), enforces a size cap, and extracts the `server_name` extension. It never
//! panics on any input.

use thiserror::Error;

/// TLS record content type for handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension type of `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Largest TLSPlaintext fragment allowed by RFC 8446 (2^14).
const MAX_RECORD: usize = 16384;

/// Result of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The ClientHello is not complete yet: read more bytes and call again.
    NeedMore,
    /// The ClientHello is complete.
    Complete {
        /// Lower-cased host name from the `server_name` extension, without a trailing dot.
        sni: Option<String>,
    },
}

/// Why a ClientHello was rejected. `kind()` gives the metric label.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HelloError {
    #[error("not a TLS handshake record (first byte {0:#04x}, expected 0x16)")]
    NotTls(u8),
    #[error("TLS record: {0}")]
    BadRecord(&'static str),
    #[error("first handshake message is type {0}, expected ClientHello (1)")]
    NotClientHello(u8),
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello exceeds the {cap}-byte limit")]
    Oversized { cap: usize },
}

impl HelloError {
    /// Short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            HelloError::Oversized { .. } => "hello_oversized",
            _ => "hello_malformed",
        }
    }
}

/// Parses the start of a connection as a TLS ClientHello. `cap` bounds the total bytes
/// (record headers included) the caller is willing to buffer.
pub fn parse_client_hello(buf: &[u8], cap: usize) -> Result<Parsed, HelloError> {
    let mut msg: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut need: Option<usize> = None; // total handshake message length once known
    loop {
        if let Some(n) = need
            && msg.len() >= n
        {
            return parse_body(&msg[4..n]).map(|sni| Parsed::Complete { sni });
        }
        let Some(hdr) = buf.get(pos..pos + 5) else {
            return need_more(buf, cap);
        };
        if hdr[0] != CONTENT_HANDSHAKE {
            return Err(if pos == 0 {
                HelloError::NotTls(hdr[0])
            } else {
                HelloError::BadRecord("non-handshake record interleaved with the ClientHello")
            });
        }
        if hdr[1] != 3 {
            return Err(HelloError::BadRecord("unsupported record version"));
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 {
            return Err(HelloError::BadRecord("empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::BadRecord("record longer than 2^14 bytes"));
        }
        let start = pos + 5;
        let avail = buf.len().saturating_sub(start).min(len);
        msg.extend_from_slice(&buf[start..start + avail]);
        if need.is_none() && msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloError::NotClientHello(msg[0]));
            }
            let body = usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
            let total = body + 4;
            // Each record adds a 5-byte header: the smallest possible wire size of this message.
            let min_wire = total + 5 * total.div_ceil(MAX_RECORD);
            if min_wire > cap {
                return Err(HelloError::Oversized { cap });
            }
            need = Some(total);
        }
        if avail < len {
            if let Some(n) = need
                && msg.len() >= n
            {
                continue; // message complete inside a partially received record
            }
            return need_more(buf, cap);
        }
        pos = start + len;
    }
}

fn need_more(buf: &[u8], cap: usize) -> Result<Parsed, HelloError> {
    if buf.len() >= cap {
        Err(HelloError::Oversized { cap })
    } else {
        Ok(Parsed::NeedMore)
    }
}

/// A bounds-checked big-endian reader.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.b.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

fn parse_body(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { b: body };
    let major = r.u8("legacy_version truncated")?;
    r.u8("legacy_version truncated")?;
    if major != 3 {
        return Err(HelloError::Malformed("legacy_version is not 3.x"));
    }
    r.take(32, "random truncated")?;
    if r.vec8("session_id truncated")?.len() > 32 {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites truncated")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites length is zero or odd"));
    }
    if r.vec8("compression_methods truncated")?.is_empty() {
        return Err(HelloError::Malformed("no compression methods"));
    }
    if r.b.is_empty() {
        return Ok(None); // no extensions at all (pre-TLS 1.2 style hello)
    }
    let exts = r.vec16("extensions truncated")?;
    if !r.b.is_empty() {
        return Err(HelloError::Malformed("trailing bytes after extensions"));
    }
    let mut er = Reader { b: exts };
    let mut seen: Vec<u16> = Vec::new();
    let mut sni = None;
    while !er.b.is_empty() {
        let ty = er.u16("extension header truncated")?;
        let data = er.vec16("extension data truncated")?;
        if seen.contains(&ty) {
            return Err(HelloError::Malformed("duplicate extension"));
        }
        seen.push(ty);
        if ty == EXT_SERVER_NAME {
            sni = parse_server_name(data)?;
        }
    }
    Ok(sni)
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { b: data };
    let list = r.vec16("server_name list truncated")?;
    if !r.b.is_empty() {
        return Err(HelloError::Malformed(
            "trailing bytes in server_name extension",
        ));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("empty server_name list"));
    }
    let mut lr = Reader { b: list };
    let mut host = None;
    while !lr.b.is_empty() {
        let ty = lr.u8("server_name entry truncated")?;
        let name = lr.vec16("server_name entry truncated")?;
        if ty == 0 {
            if host.is_some() {
                return Err(HelloError::Malformed("more than one host_name"));
            }
            host = Some(normalize_host(name)?);
        }
    }
    Ok(host)
}

/// Validates a DNS host name from SNI and returns it lower-cased without a trailing dot.
fn normalize_host(name: &[u8]) -> Result<String, HelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(HelloError::Malformed(
            "host_name empty or longer than 253 bytes",
        ));
    }
    for label in name.split(|&c| c == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HelloError::Malformed(
                "host_name has an empty or too long label",
            ));
        }
        if !label
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return Err(HelloError::Malformed(
                "host_name has a character outside [A-Za-z0-9._-]",
            ));
        }
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// Builds a syntactically valid ClientHello (records of at most `record_size` bytes) for tests,
/// benchmarks and the fuzz harness. `pad` adds an extension of that many bytes to simulate large
/// (post-quantum) key shares.
pub fn build_client_hello(sni: Option<&str>, pad: usize, record_size: usize) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[1, 0]);
    let mut exts = Vec::new();
    if let Some(h) = sni {
        let h = h.as_bytes();
        let entry_len = h.len() + 3;
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(entry_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(h.len() as u16).to_be_bytes());
        exts.extend_from_slice(h);
    }
    if pad > 0 {
        exts.extend_from_slice(&[0, 21]);
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.resize(exts.len() + pad, 0);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in msg.chunks(record_size.clamp(1, MAX_RECORD)) {
        out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Checks the parser's invariants on arbitrary input; panics when one is violated. Used by the
/// cargo-fuzz target and by the libFuzzer-free harness test.
pub fn check_invariants(data: &[u8]) {
    let cap = 16384;
    match parse_client_hello(data, cap) {
        Ok(Parsed::Complete { sni }) => {
            if let Some(h) = &sni {
                assert!(!h.is_empty() && h.len() <= 253, "bad host length");
                assert!(
                    h.bytes().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || b"-._".contains(&c)),
                    "host not normalised"
                );
            }
            // Bytes after a complete hello never change the outcome.
            let mut more = data.to_vec();
            more.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
            assert_eq!(parse_client_hello(&more, cap), Ok(Parsed::Complete { sni }));
        }
        Ok(Parsed::NeedMore) => assert!(data.len() < cap, "NeedMore past the cap"),
        Err(HelloError::Oversized { .. }) => {}
        Err(e) => {
            // A rejected prefix stays rejected whatever follows.
            let mut more = data.to_vec();
            more.extend_from_slice(&[0u8; 64]);
            assert!(
                parse_client_hello(&more, cap).is_err(),
                "error {e} became acceptable"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 16384;

    #[test]
    fn extracts_sni_single_record() {
        let h = build_client_hello(Some("App.Example.COM."), 0, MAX_RECORD);
        assert_eq!(
            parse_client_hello(&h, CAP),
            Ok(Parsed::Complete {
                sni: Some("app.example.com".into())
            })
        );
    }

    #[test]
    fn reassembles_across_records_and_segments() {
        let h = build_client_hello(Some("pq.example"), 3000, 700);
        for cut in 0..h.len() {
            assert_eq!(
                parse_client_hello(&h[..cut], CAP),
                Ok(Parsed::NeedMore),
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_client_hello(&h, CAP),
            Ok(Parsed::Complete {
                sni: Some("pq.example".into())
            })
        );
    }

    #[test]
    fn no_sni_is_complete_without_name() {
        let h = build_client_hello(None, 10, MAX_RECORD);
        assert_eq!(
            parse_client_hello(&h, CAP),
            Ok(Parsed::Complete { sni: None })
        );
    }

    #[test]
    fn rejects_non_tls_and_wrong_types() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n", CAP),
            Err(HelloError::NotTls(b'G'))
        );
        let mut h = build_client_hello(Some("a.b"), 0, MAX_RECORD);
        h[5] = 2;
        assert_eq!(
            parse_client_hello(&h, CAP),
            Err(HelloError::NotClientHello(2))
        );
    }

    #[test]
    fn oversized_declared_or_received() {
        let h = build_client_hello(Some("big.example"), 20000, MAX_RECORD);
        assert!(matches!(
            parse_client_hello(&h, CAP),
            Err(HelloError::Oversized { .. })
        ));
        let h = build_client_hello(Some("x.example"), 2000, 100);
        assert!(matches!(
            parse_client_hello(&h, 1000),
            Err(HelloError::Oversized { .. })
        ));
    }

    #[test]
    fn rejects_bad_hostnames_and_lengths() {
        let h = build_client_hello(Some("bad host"), 0, MAX_RECORD);
        assert!(matches!(
            parse_client_hello(&h, CAP),
            Err(HelloError::Malformed(_))
        ));
        let mut h = build_client_hello(Some("ok.example"), 0, MAX_RECORD);
        let n = h.len();
        h[n - 12] = 0xff; // corrupt the name length inside the extension
        assert!(parse_client_hello(&h, CAP).is_err());
    }
}
