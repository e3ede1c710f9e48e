//! The agent's (and edge's) link to the control plane: a small blocking JSON client (run it on
//! a blocking thread), the saved host credential (`<data_dir>/control.json`, mode 0600), and
//! joining with a join token.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ureq::Agent;

use crate::persist::write_atomic;

/// A failed call: HTTP status (0 when the control plane was unreachable) and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LinkError {
    pub status: u16,
    pub message: String,
}

/// A blocking client for the control plane API.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    token: String,
    agent: Agent,
}

impl ControlClient {
    pub fn new(base: &str, token: &str) -> ControlClient {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // Long polls wait up to 60 s server-side.
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .into();
        ControlClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            agent,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` → JSON.
    pub fn get(&self, path: &str) -> Result<Value, LinkError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.finish(r)
    }

    /// `POST path` with a JSON body → JSON (null for 204).
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, LinkError> {
        let url = format!("{}{path}", self.base);
        let bytes = serde_json::to_vec(body).expect("json values serialize");
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .send(&bytes[..]);
        self.finish(r)
    }

    /// `GET path` streamed into `dst` (written aside, then renamed: never half a file).
    pub fn download(&self, path: &str, dst: &Path) -> Result<u64, LinkError> {
        let url = format!("{}{path}", self.base);
        let fail = |message: String| LinkError { status: 0, message };
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(3600)))
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| {
                fail(format!(
                    "cannot reach the control plane at {}: {e}",
                    self.base
                ))
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(LinkError {
                status,
                message: format!("control plane answered {status}: {text}"),
            });
        }
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("create {}: {e}", d.display())))?;
        }
        let tmp = dst.with_extension(format!("part{}", std::process::id()));
        let copied = (|| -> std::io::Result<u64> {
            let mut f = std::fs::File::create(&tmp)?;
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            let n = std::io::copy(&mut body, &mut f)?;
            f.sync_all()?;
            Ok(n)
        })();
        match copied.and_then(|n| std::fs::rename(&tmp, dst).map(|()| n)) {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(fail(format!("download {url} to {}: {e}", dst.display())))
            }
        }
    }

    fn finish(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, LinkError> {
        let mut resp = r.map_err(|e| LinkError {
            status: 0,
            message: format!("cannot reach the control plane at {}: {e}", self.base),
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let msg = json["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| json.to_string());
            return Err(LinkError {
                status,
                message: format!("control plane answered {status}: {msg}"),
            });
        }
        Ok(json)
    }
}

/// This host's control plane credential, saved after joining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub url: String,
    pub token: String,
    pub host: String,
    /// The underlay address the host joined with (the overlay endpoint's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Credential {
    /// Reads a saved credential; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<Credential>, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                format!(
                    "{} is not a valid control plane credential ({e}); remove it and join again",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Saves it (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let b = serde_json::to_vec_pretty(self).expect("serializes");
        write_atomic(path, &b, 0o600).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Facts a joining host reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub name: String,
    pub address: String,
    pub cpus: i32,
    pub memory_mb: i64,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl HostFacts {
    /// This machine: hostname, CPU count, and 90% of its memory less 512 MiB for the host.
    pub fn detect(address: &str) -> HostFacts {
        let name = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "host".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
        let total_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<i64>().ok())
            })
            .unwrap_or(1 << 20);
        HostFacts {
            name,
            address: address.to_owned(),
            cpus,
            memory_mb: ((total_kb / 1024) * 9 / 10 - 512).max(256),
            labels: Default::default(),
        }
    }
}

/// Joins the cluster at `url` with `join_token`; returns the host credential to save.
pub fn join(url: &str, join_token: &str, facts: &HostFacts) -> Result<Credential, LinkError> {
    let c = ControlClient::new(url, join_token);
    let body = serde_json::to_value(facts).expect("serializes");
    let v = c.post("/v1/agent/join", &body)?;
    let token = v["agent_token"].as_str().ok_or_else(|| LinkError {
        status: 0,
        message: "the control plane's join answer has no agent_token".into(),
    })?;
    Ok(Credential {
        url: c.base().to_owned(),
        token: token.to_owned(),
        host: v["host"]["name"].as_str().unwrap_or(&facts.name).to_owned(),
        address: Some(facts.address.clone()),
    })
}
