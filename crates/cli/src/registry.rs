//! Resolving a registry tag to its manifest digest on this machine, as `crane digest` and
//! `docker buildx imagetools inspect` do, through the registry HTTP API v2:
//! `HEAD /v2/<name>/manifests/<tag>` (then `GET` when HEAD gives no digest) with the image index
//! and manifest media types in `Accept`; the digest is the `Docker-Content-Digest` header, else
//! the sha256 of the manifest body. A 401 is answered with the challenge it carries: a bearer
//! token from the realm (anonymous, or with the Basic credentials of `SCALEBOX_REGISTRY_USER` /
//! `SCALEBOX_REGISTRY_PASSWORD`), or those credentials directly for a Basic challenge.
//! HTTPS, except for loopback registries or with `SCALEBOX_INSECURE_REGISTRY=1`.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use ureq::Agent;

use crate::error::{CliError, Result, exit};
use crate::image_ref::valid_digest;

/// Where one-component and `docker.io/…` names live.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.docker.distribution.manifest.v2+json";

/// Manifests are small; anything larger is not one.
const MAX_MANIFEST: u64 = 4 << 20;

/// A parsed `[host[:port]/]path[:tag][@sha256:…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` (`registry-1.docker.io` by default).
    pub host: String,
    /// The repository (`library/nginx`, `team/app`).
    pub path: String,
    /// `latest` when none is given.
    pub tag: String,
    /// The digest the reference is pinned to, if any.
    pub digest: Option<String>,
}

impl Reference {
    /// `host/path:tag`, as resolved.
    pub fn full_name(&self) -> String {
        format!("{}/{}:{}", self.host, self.path, self.tag)
    }

    /// The host name without the port (and without IPv6 brackets).
    fn hostname(&self) -> &str {
        if let Some(rest) = self.host.strip_prefix('[') {
            return rest.split(']').next().unwrap_or_default();
        }
        self.host.split(':').next().unwrap_or_default()
    }

    /// Whether the registry is on this machine (127.0.0.0/8, localhost, [::1]).
    pub fn is_loopback(&self) -> bool {
        let h = self.hostname();
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Parses a registry reference; a malformed one is a usage error.
pub fn parse(r: &str) -> Result<Reference> {
    let bad = |why: &str| {
        CliError::usage(format!(
            "image reference {r:?}: {why} (expected [HOST[:PORT]/]NAME[:TAG], e.g. \
             registry.example.com/app:1.2, or a local image: oci-archive:PATH, oci:DIR)"
        ))
    };
    let (rest, digest) = match r.split_once('@') {
        Some((n, d)) if valid_digest(d) => (n, Some(d.to_owned())),
        Some(_) => return Err(bad("the part after @ must be sha256: and 64 hex digits")),
        None => (r, None),
    };
    let (host, remainder) = match rest.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, p),
        _ => (DOCKER_HUB, rest),
    };
    let host = match host {
        "docker.io" | "index.docker.io" => DOCKER_HUB,
        h => h,
    };
    if !valid_host(host) {
        return Err(bad(&format!("{host:?} is not a registry host[:port]")));
    }
    let (path, tag) = match remainder.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, t),
        _ => (remainder, "latest"),
    };
    if !valid_tag(tag) {
        return Err(bad(&format!(
            "invalid tag {tag:?} (letters, digits, '_', '.', '-'; at most 128)"
        )));
    }
    if !valid_path(path) {
        return Err(bad(&format!(
            "invalid repository name {path:?} (lowercase letters, digits, '.', '_', '-', \
             components separated by '/')"
        )));
    }
    let path = if host == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    Ok(Reference {
        host: host.to_owned(),
        path,
        tag: tag.to_owned(),
        digest,
    })
}

fn valid_host(h: &str) -> bool {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => ("x", p.strip_prefix(':').unwrap_or("bad")),
        }
    } else {
        match h.split_once(':') {
            Some((n, p)) => (n, p),
            None => (h, "0"),
        }
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        })
}

/// One `WWW-Authenticate` challenge: its scheme (`Bearer`, `Basic`) and parameters (keys
/// lowercased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Scheme key="value", key2=token, …` (quoted values may hold commas and `\"`).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, mut rest) = match h.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (h, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let value;
        if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &q[end?..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_owned();
            rest = &after[end..];
        }
        if key.is_empty() || key.contains(char::is_whitespace) {
            return None;
        }
        params.insert(key, value);
    }
    Some(Challenge {
        scheme: scheme.to_owned(),
        params,
    })
}

/// Registry credentials (never printed: no `Debug`).
pub struct Creds {
    user: String,
    password: String,
}

impl Creds {
    #[cfg(test)]
    pub fn new(user: &str, password: &str) -> Creds {
        Creds {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// `SCALEBOX_REGISTRY_USER` / `SCALEBOX_REGISTRY_PASSWORD`, when the user is set.
    pub fn from_env() -> Option<Creds> {
        let user = crate::config::env("SCALEBOX_REGISTRY_USER")?;
        let password = std::env::var("SCALEBOX_REGISTRY_PASSWORD").unwrap_or_default();
        Some(Creds { user, password })
    }

    fn basic(&self) -> String {
        format!(
            "Basic {}",
            base64(format!("{}:{}", self.user, self.password).as_bytes())
        )
    }
}

/// Whether to speak plain HTTP to the registry of `r`.
pub fn use_http(r: &Reference) -> bool {
    r.is_loopback()
        || crate::config::env("SCALEBOX_INSECURE_REGISTRY").is_some_and(|v| v == "1" || v == "true")
}

/// What a registry answered.
struct Answer {
    status: u16,
    digest: Option<String>,
    challenges: Vec<String>,
    body: Vec<u8>,
}

struct Session<'a> {
    agent: Agent,
    r: &'a Reference,
    base: String,
    creds: Option<&'a Creds>,
    auth: Option<String>,
}

impl Session<'_> {
    fn unreachable(&self, url: &str, e: ureq::Error) -> CliError {
        CliError::new(
            exit::SERVER,
            format!("cannot reach the registry {} ({url}): {e}", self.r.host),
        )
    }

    fn manifest(&self, head: bool) -> Result<Answer> {
        let url = format!("{}/v2/{}/manifests/{}", self.base, self.r.path, self.r.tag);
        let resp = if head {
            let mut q = self.agent.head(&url).header("Accept", ACCEPT);
            if let Some(a) = &self.auth {
                q = q.header("Authorization", a);
            }
            q.call()
        } else {
            let mut q = self.agent.get(&url).header("Accept", ACCEPT);
            if let Some(a) = &self.auth {
                q = q.header("Authorization", a);
            }
            q.call()
        };
        let mut resp = resp.map_err(|e| self.unreachable(&url, e))?;
        let headers = resp.headers();
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_owned());
        let challenges = headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        if !head {
            resp.body_mut()
                .with_config()
                .limit(MAX_MANIFEST)
                .reader()
                .read_to_end(&mut body)
                .map_err(|e| {
                    CliError::new(
                        exit::SERVER,
                        format!("reading the manifest from {url}: {e}"),
                    )
                })?;
        }
        Ok(Answer {
            status,
            digest,
            challenges,
            body,
        })
    }

    /// The `Authorization` value answering `challenges` (from a 401).
    fn authenticate(&self, challenges: &[String]) -> Result<String> {
        let parsed: Vec<Challenge> = challenges
            .iter()
            .filter_map(|h| parse_challenge(h))
            .collect();
        let auth_err = |m: String| CliError::new(exit::AUTH, m);
        if let Some(c) = parsed
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        {
            let realm = c.params.get("realm").ok_or_else(|| {
                auth_err(format!(
                    "the registry {} asks for a bearer token but names no token service",
                    self.r.host
                ))
            })?;
            let mut q = self.agent.get(realm);
            if let Some(s) = c.params.get("service") {
                q = q.query("service", s);
            }
            let scope = c
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.r.path));
            q = q.query("scope", &scope);
            if let Some(cr) = self.creds {
                q = q.header("Authorization", &cr.basic());
            }
            let mut resp = q.call().map_err(|e| {
                CliError::new(
                    exit::SERVER,
                    format!(
                        "cannot reach the token service of the registry {} ({realm}): {e}",
                        self.r.host
                    ),
                )
            })?;
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_string()
                .unwrap_or_default();
            match status {
                200..=299 => {}
                401 | 403 => {
                    return Err(auth_err(format!(
                        "the token service of the registry {} refused {} (HTTP {status})",
                        self.r.host,
                        if self.creds.is_some() {
                            "the credentials in SCALEBOX_REGISTRY_USER/SCALEBOX_REGISTRY_PASSWORD"
                        } else {
                            "an anonymous token; set SCALEBOX_REGISTRY_USER and \
                             SCALEBOX_REGISTRY_PASSWORD for a private image"
                        }
                    )));
                }
                s => {
                    return Err(CliError::new(
                        if s >= 500 { exit::SERVER } else { exit::AUTH },
                        format!(
                            "the token service of the registry {} answered HTTP {s}",
                            self.r.host
                        ),
                    ));
                }
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let token = v["token"]
                .as_str()
                .or(v["access_token"].as_str())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    auth_err(format!(
                        "the token service of the registry {} returned no token",
                        self.r.host
                    ))
                })?;
            return Ok(format!("Bearer {token}"));
        }
        if parsed
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        {
            return match self.creds {
                Some(cr) => Ok(cr.basic()),
                None => Err(auth_err(format!(
                    "the registry {} needs a user name and password: set SCALEBOX_REGISTRY_USER \
                     and SCALEBOX_REGISTRY_PASSWORD",
                    self.r.host
                ))),
            };
        }
        Err(auth_err(format!(
            "the registry {} refused access (HTTP 401) without a usable challenge ({:?})",
            self.r.host,
            challenges.join(" ")
        )))
    }

    /// The error for a manifest request answered `a` (not 200).
    fn refused(&self, a: &Answer) -> CliError {
        let name = self.r.full_name();
        let code = serde_json::from_slice::<serde_json::Value>(&a.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match a.status {
            404 if code == "NAME_UNKNOWN" => CliError::http(
                404,
                format!(
                    "{name}: repository {} not found in the registry {}",
                    self.r.path, self.r.host
                ),
                None,
            ),
            404 => CliError::http(
                404,
                format!(
                    "{name}: tag {:?} not found in {}/{} (no such tag or repository)",
                    self.r.tag, self.r.host, self.r.path
                ),
                None,
            ),
            s @ (401 | 403) => CliError::http(
                s,
                format!(
                    "the registry {} refused access to {} (HTTP {s}){}",
                    self.r.host,
                    self.r.path,
                    if self.creds.is_some() {
                        ": check SCALEBOX_REGISTRY_USER/SCALEBOX_REGISTRY_PASSWORD"
                    } else {
                        "; for a private image set SCALEBOX_REGISTRY_USER and \
                         SCALEBOX_REGISTRY_PASSWORD (some registries, Docker Hub among them, \
                         also answer so for a repository that does not exist)"
                    }
                ),
                None,
            ),
            s => CliError::http(
                s,
                format!("the registry {} answered HTTP {s} for {name}", self.r.host),
                None,
            ),
        }
    }
}

/// The manifest digest the tag of `r` names now (over HTTPS unless `http`).
pub fn resolve(r: &Reference, http: bool, creds: Option<&Creds>) -> Result<String> {
    let agent: Agent = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let scheme = if http { "http" } else { "https" };
    let mut s = Session {
        agent,
        r,
        base: format!("{scheme}://{}", r.host),
        creds,
        auth: None,
    };
    let mut a = s.manifest(true)?;
    if a.status == 401 {
        s.auth = Some(s.authenticate(&a.challenges)?);
        a = s.manifest(true)?;
    }
    if a.status == 200
        && let Some(d) = a.digest.take()
    {
        return checked(r, d);
    }
    // No digest from HEAD (or HEAD refused): GET the manifest.
    let mut a = s.manifest(false)?;
    if a.status == 401 && s.auth.is_none() {
        s.auth = Some(s.authenticate(&a.challenges)?);
        a = s.manifest(false)?;
    }
    if a.status != 200 {
        return Err(s.refused(&a));
    }
    match a.digest.take() {
        Some(d) => checked(r, d),
        None => Ok(format!("sha256:{}", hex::encode(sha256(&a.body)))),
    }
}

fn checked(r: &Reference, d: String) -> Result<String> {
    if valid_digest(&d) {
        Ok(d)
    } else {
        Err(CliError::failure(format!(
            "the registry {} gave {} the digest {d:?}, not a sha256 digest; give --digest",
            r.host,
            r.full_name()
        )))
    }
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// SHA-256, for manifests served without a `Docker-Content-Digest` header.
fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn r(host: &str, path: &str, tag: &str) -> Reference {
        Reference {
            host: host.into(),
            path: path.into(),
            tag: tag.into(),
            digest: None,
        }
    }

    #[test]
    fn references() {
        let hub = DOCKER_HUB;
        for (input, want) in [
            ("nginx", r(hub, "library/nginx", "latest")),
            ("nginx:1.27", r(hub, "library/nginx", "1.27")),
            ("bitnami/redis:7", r(hub, "bitnami/redis", "7")),
            ("docker.io/nginx", r(hub, "library/nginx", "latest")),
            ("index.docker.io/team/x:v1", r(hub, "team/x", "v1")),
            (
                "registry.example.com/app:1.2",
                r("registry.example.com", "app", "1.2"),
            ),
            (
                "registry.example.com/team/sub/app",
                r("registry.example.com", "team/sub/app", "latest"),
            ),
            ("localhost/app:dev", r("localhost", "app", "dev")),
            ("localhost:5000/app", r("localhost:5000", "app", "latest")),
            (
                "127.0.0.1:5000/a/b:v_1.0-x",
                r("127.0.0.1:5000", "a/b", "v_1.0-x"),
            ),
            ("[::1]:5000/app:v1", r("[::1]:5000", "app", "v1")),
            ("ghcr.io/o/app:sha-abc", r("ghcr.io", "o/app", "sha-abc")),
        ] {
            assert_eq!(parse(input).unwrap(), want, "{input}");
        }
        let p = parse(&format!("reg.example/app:1@{D}")).unwrap();
        assert_eq!((p.tag.as_str(), p.digest.as_deref()), ("1", Some(D)));
        let p = parse(&format!("reg.example/app@{D}")).unwrap();
        assert_eq!((p.tag.as_str(), p.digest.as_deref()), ("latest", Some(D)));
        // A first component without '.', ':' and not localhost is part of the name.
        assert_eq!(parse("team/app").unwrap().host, hub);
        for bad in [
            "",
            "App",
            "reg.example/App:1",
            "reg.example/app:",
            "reg.example/app:-x",
            "reg.example//app",
            "reg.example/app/",
            "reg.example/app@sha256:12",
            "docker-archive:/tmp/x.tar",
            "reg.example:port/app",
            "[zz]:5000/app",
            "reg.example/app:a b",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit, exit::USAGE, "{bad}");
            assert!(e.message.contains("expected"), "{bad}: {}", e.message);
        }
        assert!(parse("127.0.0.1:5000/a").unwrap().is_loopback());
        assert!(parse("127.8.9.10/a").unwrap().is_loopback());
        assert!(parse("localhost:1/a").unwrap().is_loopback());
        assert!(parse("[::1]:5000/a").unwrap().is_loopback());
        assert!(!parse("128.0.0.1:5000/a").unwrap().is_loopback());
        assert!(!parse("localhost.example.com/a").unwrap().is_loopback());
        assert!(!parse("nginx").unwrap().is_loopback());
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/nginx:pull,push");
        let c =
            parse_challenge(r#"bearer  Realm = "a\"b" , error=insufficient_scope,x="""#).unwrap();
        assert_eq!(c.params["realm"], "a\"b");
        assert_eq!(c.params["error"], "insufficient_scope");
        assert_eq!(c.params["x"], "");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        assert_eq!(parse_challenge("Basic").unwrap().params.len(), 0);
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("Bearer realm").is_none());
    }

    #[test]
    fn hashes_and_base64() {
        let hex = |d: &[u8]| hex::encode(sha256(d));
        assert_eq!(
            hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(&[b'a'; 1000]),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:p@ss w0rd"), "dXNlcjpwQHNzIHcwcmQ=");
    }

    /// A request the stand-in registry saw: method, path with query, Authorization header.
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);

    /// A tiny HTTP/1.1 server on loopback answering each request with `handler` (one request per
    /// connection).
    fn stand_in(handler: impl Fn(&str, &str, &str, u16) -> Reply + Send + 'static) -> (u16, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut rd = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if rd.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, target) = (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                );
                let mut auth = String::new();
                loop {
                    let mut h = String::new();
                    if rd.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        auth = v.trim().to_owned();
                    }
                }
                s.lock()
                    .unwrap()
                    .push((method.clone(), target.clone(), auth.clone()));
                let (status, headers, body) = handler(&method, &target, &auth, port);
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                let mut bytes = resp.into_bytes();
                if method != "HEAD" {
                    bytes.extend_from_slice(&body);
                }
                let _ = conn.write_all(&bytes);
            }
        });
        (port, seen)
    }

    const MANIFEST: &[u8] =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

    #[test]
    fn anonymous_bearer_token_flow() {
        let (port, seen) = stand_in(|method, target, auth, port| {
            if target.starts_with("/token?") {
                return (200, vec![], br#"{"token":"T0k"}"#.to_vec());
            }
            assert!(target == "/v2/team/app/manifests/v1", "{method} {target}");
            if auth != "Bearer T0k" {
                let c = format!(
                    r#"Bearer realm="http://127.0.0.1:{port}/token",service="reg.test",scope="repository:team/app:pull""#
                );
                return (401, vec![("WWW-Authenticate", c)], vec![]);
            }
            // No Docker-Content-Digest: HEAD gives nothing, the digest is that of the body.
            (200, vec![], MANIFEST.to_vec())
        });
        let d = resolve(
            &r(&format!("127.0.0.1:{port}"), "team/app", "v1"),
            true,
            None,
        )
        .unwrap();
        assert_eq!(d, format!("sha256:{}", hex::encode(sha256(MANIFEST))));
        let seen = seen.lock().unwrap().clone();
        let summary: Vec<(&str, &str, &str)> = seen
            .iter()
            .map(|(m, t, a)| (m.as_str(), t.as_str(), a.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("HEAD", "/v2/team/app/manifests/v1", ""),
                (
                    "GET",
                    "/token?service=reg.test&scope=repository%3Ateam%2Fapp%3Apull",
                    ""
                ),
                ("HEAD", "/v2/team/app/manifests/v1", "Bearer T0k"),
                ("GET", "/v2/team/app/manifests/v1", "Bearer T0k"),
            ]
        );
    }

    #[test]
    fn credentials_header_digests_and_failures() {
        // Bearer with credentials: the token request carries them; the header digest wins.
        let (port, seen) = stand_in(|_, target, auth, port| {
            if target.starts_with("/token") {
                return if auth == "Basic dTpw" {
                    (200, vec![], br#"{"access_token":"A"}"#.to_vec())
                } else {
                    (401, vec![], vec![])
                };
            }
            if auth == "Bearer A" {
                return (200, vec![("Docker-Content-Digest", D.to_owned())], vec![]);
            }
            let c = format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#);
            (401, vec![("WWW-Authenticate", c)], vec![])
        });
        let reg = r(&format!("127.0.0.1:{port}"), "app", "1");
        let creds = Creds::new("u", "p");
        assert_eq!(resolve(&reg, true, Some(&creds)).unwrap(), D);
        assert_eq!(seen.lock().unwrap().len(), 3, "HEAD, token, HEAD");
        assert!(
            seen.lock().unwrap()[1]
                .1
                .contains("scope=repository%3Aapp%3Apull")
        );
        let e = resolve(&reg, true, None).unwrap_err();
        assert_eq!(e.exit, exit::AUTH);
        assert!(
            e.message.contains("SCALEBOX_REGISTRY_USER"),
            "{}",
            e.message
        );
        let e = resolve(&reg, true, Some(&Creds::new("u", "wrong"))).unwrap_err();
        assert_eq!(e.exit, exit::AUTH);
        assert!(!e.message.contains("wrong"), "{}", e.message);

        // Basic challenge: credentials sent directly; without them, an auth error.
        let (port, _) = stand_in(|_, _, auth, _| {
            if auth == "Basic dTpw" {
                (200, vec![("Docker-Content-Digest", D.to_owned())], vec![])
            } else {
                (
                    401,
                    vec![("WWW-Authenticate", r#"Basic realm="r""#.to_owned())],
                    vec![],
                )
            }
        });
        let reg = r(&format!("127.0.0.1:{port}"), "app", "1");
        assert_eq!(resolve(&reg, true, Some(&creds)).unwrap(), D);
        let e = resolve(&reg, true, None).unwrap_err();
        assert_eq!(e.exit, exit::AUTH);
        assert!(e.message.contains("needs a user name"), "{}", e.message);

        // A token that is still refused.
        let (port, _) = stand_in(|_, target, _, port| {
            if target.starts_with("/token") {
                return (200, vec![], br#"{"token":"T"}"#.to_vec());
            }
            let c = format!(r#"Bearer realm="http://127.0.0.1:{port}/token""#);
            (401, vec![("WWW-Authenticate", c)], vec![])
        });
        let e = resolve(&r(&format!("127.0.0.1:{port}"), "app", "1"), true, None).unwrap_err();
        assert_eq!((e.exit, e.status), (exit::AUTH, 401));
        assert!(e.message.contains("refused access to app"), "{}", e.message);

        // 404, 5xx, and a bad digest header.
        let (port, _) = stand_in(|_, target, _, _| match target {
            "/v2/gone/manifests/1" => (
                404,
                vec![],
                br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#.to_vec(),
            ),
            "/v2/app/manifests/1" => (
                404,
                vec![],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
            ),
            "/v2/app/manifests/2" => (503, vec![], vec![]),
            _ => (
                200,
                vec![("Docker-Content-Digest", "sha512:ab".to_owned())],
                vec![],
            ),
        });
        let h = format!("127.0.0.1:{port}");
        let e = resolve(&r(&h, "app", "1"), true, None).unwrap_err();
        assert_eq!(e.exit, exit::NOT_FOUND);
        assert!(e.message.contains(r#"tag "1" not found"#), "{}", e.message);
        let e = resolve(&r(&h, "gone", "1"), true, None).unwrap_err();
        assert_eq!(e.exit, exit::NOT_FOUND);
        assert!(
            e.message.contains("repository gone not found"),
            "{}",
            e.message
        );
        assert_eq!(
            resolve(&r(&h, "app", "2"), true, None).unwrap_err().exit,
            exit::SERVER
        );
        let e = resolve(&r(&h, "app", "3"), true, None).unwrap_err();
        assert!(e.message.contains("not a sha256 digest"), "{}", e.message);
    }

    #[test]
    fn unreachable_registry() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = resolve(&r(&format!("127.0.0.1:{port}"), "app", "1"), true, None).unwrap_err();
        assert_eq!(e.exit, exit::SERVER);
        assert!(
            e.message.contains("cannot reach the registry"),
            "{}",
            e.message
        );
    }
}
