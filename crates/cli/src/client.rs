//! HTTP client for the control plane API: bearer auth, JSON in and out, idempotency keys on
//! mutations, retries of transient failures with the same key, and API errors mapped to
//! [`CliError`]s with the right exit code.

use std::time::Duration;

use serde_json::Value;
use ureq::Agent;
use ureq::tls::TlsConfig;

use crate::error::{CliError, Result, exit};

pub struct Client {
    base: String,
    token: Option<String>,
    agent: Agent,
    /// For slow, non-retried calls (creating a VM, snapshotting one).
    slow: Agent,
    /// Accept any TLS certificate (`SCALEBOX_INSECURE`).
    insecure: bool,
}

/// An agent that answers HTTP errors as responses, with a `global` request timeout in seconds.
fn agent_with(insecure: bool, global: u64) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(global)))
        .tls_config(TlsConfig::builder().disable_verification(insecure).build())
        .build()
        .into()
}

/// A fresh random idempotency key.
pub fn idempotency_key() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    format!("sb-{}", hex::encode(b))
}

/// `x`, a name or id the user gave, as one URL path segment (percent-encoded), so that `a/b`
/// names a resource `a/b` and never a path below `a`; empty is a usage error saying that a
/// `what` was expected.
pub fn segment(what: &str, x: &str) -> Result<String> {
    if x.is_empty() {
        return Err(CliError::usage(format!("expected a {what}")));
    }
    // URL parsers (and reverse proxies) resolve `.` and `..` segments, even percent-encoded:
    // `apps delete ..` must never become a request for the path above.
    if x == "." || x == ".." {
        return Err(CliError::usage(format!("{x:?} is not a valid {what}")));
    }
    Ok(x.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect())
}

/// `{base}/{x}` with `x` as one path segment (see [`segment`]).
pub fn at(base: &str, what: &str, x: &str) -> Result<String> {
    Ok(format!("{base}/{}", segment(what, x)?))
}

/// The error an API answer with `status` (4xx, 5xx) and JSON `body` stands for.
pub fn api_error(status: u16, body: &Value) -> CliError {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let code = body.get("code").and_then(Value::as_str).map(str::to_owned);
    let hint = match status {
        401 => " (log in again with `sb login`, or check SCALEBOX_TOKEN)",
        _ => "",
    };
    CliError::http(status, format!("{message}{hint}"), code)
}

/// What became of a [`Client::put_once`].
#[derive(Debug)]
pub enum PutOutcome {
    /// The server answered (any status); `upload_offset` is its `Upload-Offset` header.
    Answer {
        status: u16,
        upload_offset: Option<u64>,
        body: Value,
    },
    /// No answer: the connection failed or broke, or `timeout` passed.
    Failed { timeout: bool, message: String },
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "server URL {base:?} must start with http:// or https:// (set it with `sb login --host URL` or SCALEBOX_URL)"
            )));
        }
        let insecure =
            crate::config::env("SCALEBOX_INSECURE").is_some_and(|v| v == "1" || v == "true");
        Ok(Client {
            base,
            token,
            agent: agent_with(insecure, 120),
            slow: agent_with(insecure, 900),
            insecure,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.send("GET", path, None)
    }

    /// A mutation: sent with an idempotency key, retried on transient failures.
    pub fn mutate(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send(method, path, body)
    }

    /// A mutation the server may not deduplicate (the VM API): sent once, never retried, with
    /// a long timeout (copying a root filesystem takes a while).
    pub fn mutate_once(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.once(&self.slow, method, &url, body, Some(&idempotency_key()))
    }

    /// [`Client::mutate_once`] with its own request timeout, for calls that can take longer than
    /// the slow agent's 15 minutes (restoring a volume from a backup).
    pub fn mutate_once_within(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let agent = agent_with(self.insecure, timeout.as_secs().max(1));
        self.once(&agent, method, &url, body, Some(&idempotency_key()))
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let key = (method != "GET").then(idempotency_key);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.once(&self.agent, method, &url, body, key.as_deref()) {
                Err(e)
                    if e.exit == exit::SERVER
                        && matches!(e.status, 0 | 502 | 503 | 504)
                        && attempt < 3 =>
                {
                    std::thread::sleep(Duration::from_millis(300 * attempt));
                }
                other => return other,
            }
        }
    }

    fn once(
        &self,
        agent: &Agent,
        method: &str,
        url: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<Value> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    agent.get(url)
                } else {
                    agent.delete(url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                if let Some(k) = key {
                    r = r.header("Idempotency-Key", k);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "POST" => agent.post(url),
                    "PATCH" => agent.patch(url),
                    _ => agent.put(url),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                if let Some(k) = key {
                    r = r.header("Idempotency-Key", k);
                }
                let bytes = serde_json::to_vec(body.unwrap_or(&Value::Object(Default::default())))
                    .expect("json");
                r.header("Content-Type", "application/json")
                    .send(&bytes[..])
            }
        };
        let mut resp = result.map_err(|e| {
            CliError::new(
                exit::SERVER,
                format!("cannot reach the Scalebox API at {}: {e}", self.base),
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            return Err(api_error(status, &json));
        }
        Ok(json)
    }

    /// `HEAD path`: the status and the values of the response headers `names` (lowercase),
    /// retried like [`Client::get`] when the server cannot be reached or answers 502/503/504.
    /// Other statuses are returned, not turned into errors.
    pub fn head(&self, path: &str, names: &[&str]) -> Result<(u16, Vec<Option<String>>)> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut r = self.agent.head(&url);
            if let Some(t) = &self.token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            match r.call() {
                Ok(resp) if matches!(resp.status().as_u16(), 502..=504) && attempt < 3 => {}
                Ok(resp) => {
                    let values = names
                        .iter()
                        .map(|n| {
                            resp.headers()
                                .get(*n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        })
                        .collect();
                    return Ok((resp.status().as_u16(), values));
                }
                Err(_) if attempt < 3 => {}
                Err(e) => {
                    return Err(CliError::new(
                        exit::SERVER,
                        format!("cannot reach the Scalebox API at {}: {e}", self.base),
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(300 * attempt));
        }
    }

    /// `PUT path` with `len` bytes of `content_type` read from `body` (never held in memory) and
    /// `headers`, within `timeout`; sent once. The server's answer whatever its status, or why
    /// there was none.
    pub fn put_once(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        len: u64,
        timeout: Duration,
        mut body: Box<dyn std::io::Read>,
    ) -> PutOutcome {
        let url = format!("{}{path}", self.base);
        let agent = agent_with(self.insecure, timeout.as_secs().max(1));
        let mut r = agent
            .put(&url)
            .header("Content-Type", content_type)
            .header("Content-Length", &len.to_string());
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        if let Some(t) = &self.token {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        match r.send(ureq::SendBody::from_reader(&mut body)) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let upload_offset = resp
                    .headers()
                    .get("upload-offset")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                let body = if text.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                };
                PutOutcome::Answer {
                    status,
                    upload_offset,
                    body,
                }
            }
            Err(e) => PutOutcome::Failed {
                timeout: matches!(e, ureq::Error::Timeout(_)),
                message: format!("{e}"),
            },
        }
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `GET path` answering NDJSON: calls `line` for each line as it arrives (for `follow`
    /// streams, until the server ends the response).
    pub fn stream_lines(&self, path: &str, mut line: impl FnMut(&str)) -> Result<()> {
        use std::io::BufRead;
        let url = format!("{}{path}", self.base);
        let mut r = self.agent.get(&url);
        if let Some(t) = &self.token {
            r = r.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = r.call().map_err(|e| {
            CliError::new(
                exit::SERVER,
                format!("cannot reach the Scalebox API at {}: {e}", self.base),
            )
        })?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = json["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}"));
            let code = json["code"].as_str().map(str::to_owned);
            return Err(CliError::http(status, message, code));
        }
        let reader = std::io::BufReader::new(resp.body_mut().as_reader());
        for l in reader.lines() {
            match l {
                Ok(l) => line(&l),
                Err(e) => {
                    return Err(CliError::new(
                        exit::SERVER,
                        format!("the log stream broke off: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn segments_are_one_path_segment_and_never_dot_segments() {
        assert_eq!(segment("app", "shop").unwrap(), "shop");
        assert_eq!(
            segment("app", "shop/envs/prod").unwrap(),
            "shop%2Fenvs%2Fprod"
        );
        assert_eq!(segment("app", "a b?#%").unwrap(), "a%20b%3F%23%25");
        assert_eq!(segment("app", "...").unwrap(), "...");
        for bad in ["", ".", ".."] {
            let e = segment("app", bad).unwrap_err();
            assert_eq!(e.exit, 2, "{bad:?}");
        }
    }
}
