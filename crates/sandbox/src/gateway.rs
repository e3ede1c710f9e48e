//! HTTPS gateway (Caddy driven through its admin API).
//!
//! `https://{vm-name}.{vm_domain}` is reverse-proxied to the VM's port 8080 and, when an API
//! domain is configured, `https://{api_domain}` to the API's listen address. Certificates for VM
//! names are issued **on demand** during the TLS handshake; Caddy first asks the API's
//! `GET /caddy/check?domain=D` (200 for a live VM's `{name}.{vm_domain}`, 404 otherwise), so a name
//! the API refuses fails the handshake. The API domain's certificate is managed up front.
//!
//! Two layers:
//! - [`caddy_config`] is a **pure** function: [`GatewayConfig`] + [`GatewaySite`] + the VM routes →
//!   Caddy's JSON config (admin listener, storage, one HTTPS server with a route per VM host, an
//!   optional HTTP server that redirects to HTTPS and answers ACME HTTP-01 challenges, and the TLS
//!   app: an on-demand policy with `ask`, a managed policy for the API domain, the issuer).
//! - [`Gateway`] owns one `caddy run --config <data_dir>/caddy.json` process: [`Gateway::start`]
//!   writes the config atomically, spawns Caddy (own process group, output appended to
//!   `<data_dir>/caddy.log`, `XDG_DATA_HOME`/`XDG_CONFIG_HOME` under `data_dir`), records its pid in
//!   `<data_dir>/caddy.pid` and waits (bounded, 30 s) until Caddy's `--pingback` confirms the initial
//!   config is running (listeners bound) and the admin API serves it. A Caddy left
//!   running by a previous daemon (pidfile, same binary and config path, admin API answering with our
//!   server) is adopted instead of started twice; one that does not answer is replaced.
//!   [`Gateway::apply`] POSTs the full config to the admin API's `/load` (Caddy swaps atomically and
//!   keeps the old config if the new one fails), skipping when nothing changed, then rewrites the
//!   config file so a restarted Caddy comes back with the same routes. [`Gateway::stop`] (also on
//!   drop) sends SIGTERM, then SIGKILL after a grace period, and removes the pidfile.
//!
//! The API is blocking (ureq, `std::process`): call it from `spawn_blocking` in async code.
//! Tests never touch the internet: the `internal` issuer uses Caddy's own CA, whose root is
//! `<data_dir>/caddy/pki/authorities/local/root.crt` ([`Gateway::internal_root_ca`]); it is never
//! installed into the host's trust stores (`install_trust: false`).
//! See `docs/gateway.md`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The HTTPS server's name inside Caddy's config (also how we recognise our own Caddy).
pub const HTTPS_SERVER: &str = "scalebox_gateway";
/// The HTTP (redirect / ACME HTTP-01) server's name inside Caddy's config.
pub const HTTP_SERVER: &str = "scalebox_gateway_http";

/// How long [`Gateway::start`] waits for the admin API.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Gateway::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Timeout of one admin API request (`/load` waits for Caddy to start the new config).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// `[gateway]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Run the gateway at all (default false).
    pub enabled: bool,
    /// HTTPS listener (default `":443"`).
    pub https_listen: String,
    /// HTTP listener for redirects to HTTPS and ACME HTTP-01 challenges (default `":80"`); the
    /// empty string disables it (and the HTTP-01 challenge with it).
    pub http_listen: String,
    /// Caddy's admin API listener, `host:port` (default `"127.0.0.1:2019"`). Keep it on loopback.
    pub admin: String,
    /// Caddy's storage (certificates, keys, its CA), config file, pidfile and log.
    pub data_dir: PathBuf,
    /// Who issues certificates.
    pub issuer: Issuer,
    /// The Caddy binary, a path or a name looked up in `PATH` (default `"caddy"`).
    pub caddy_binary: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            enabled: false,
            https_listen: ":443".into(),
            http_listen: ":80".into(),
            admin: "127.0.0.1:2019".into(),
            data_dir: PathBuf::from("/var/lib/scalebox/gateway"),
            issuer: Issuer::Internal,
            caddy_binary: PathBuf::from("caddy"),
        }
    }
}

impl GatewayConfig {
    /// The HTTP listener, `None` when disabled.
    pub fn http_listen(&self) -> Option<&str> {
        Some(self.http_listen.trim()).filter(|s| !s.is_empty())
    }
}

/// Certificate issuer: `issuer = "internal"` or `[gateway.issuer.acme] ca_url = "…"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Issuer {
    /// Caddy's internal CA (`tls internal`): self-signed root under `data_dir`; for tests and
    /// private deployments whose clients trust that root.
    Internal,
    /// An ACME CA (Let's Encrypt, or a local one such as pebble).
    Acme {
        /// The ACME directory URL.
        ca_url: String,
        /// Account email.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        /// PEM file with the root(s) to trust when talking to the CA (a private CA).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_root_pem_file: Option<PathBuf>,
    },
}

/// The fixed inputs of the gateway's config (everything but the VM routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySite {
    /// Serve the API on `https://{api_domain}`.
    pub api_domain: Option<String>,
    /// The API's listen address (upstream of the API domain).
    pub api_upstream: SocketAddr,
    /// Caddy's on-demand `ask` URL, e.g. `http://127.0.0.1:7443/caddy/check`.
    pub ask_url: String,
    /// VMs are served on `{name}.{vm_domain}`; `None` serves no VM.
    pub vm_domain: Option<String>,
}

/// One VM route: its name (the host's first label) and upstream (its port 8080).
pub type VmRoute = (String, SocketAddr);

/// Gateway failures.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "caddy binary `{0}` not found (install Debian package caddy, or set gateway.caddy_binary)"
    )]
    CaddyMissing(String),
    #[error("invalid gateway config: {0}")]
    Config(String),
    #[error("gateway I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "caddy admin address {0} already answers, but not for a caddy this gateway started; stop that process or pick another gateway.admin"
    )]
    AdminInUse(String),
    #[error("caddy failed to start: {reason}; last lines of {log}:\n{tail}")]
    StartFailed {
        reason: String,
        log: String,
        tail: String,
    },
    #[error("caddy (pid {pid}) is not running; last lines of {log}:\n{tail}")]
    NotRunning { pid: u32, log: String, tail: String },
    #[error("caddy admin API {url}: {message}")]
    Admin { url: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GatewayError + '_ {
    move |source| GatewayError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The port of a listen address (`":443"`, `"0.0.0.0:443"`, `"[::]:443"`).
fn listen_port(addr: &str) -> Result<u16, GatewayError> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| GatewayError::Config(format!("listen address `{addr}` has no port")))
}

/// A valid DNS label for a VM name (lower-cased), or `None`.
fn vm_label(name: &str) -> Option<String> {
    let n = name.to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !n.starts_with('-')
        && !n.ends_with('-');
    ok.then_some(n)
}

fn issuer_json(cfg: &GatewayConfig, https_port: u16, http_port: Option<u16>) -> Value {
    match &cfg.issuer {
        Issuer::Internal => json!({ "module": "internal" }),
        Issuer::Acme {
            ca_url,
            email,
            ca_root_pem_file,
        } => {
            let mut v = json!({
                "module": "acme",
                "ca": ca_url,
                "challenges": {
                    "http": match http_port {
                        Some(p) => json!({ "alternate_port": p }),
                        None => json!({ "disabled": true }),
                    },
                    "tls-alpn": { "alternate_port": https_port },
                },
            });
            if let Some(e) = email {
                v["email"] = json!(e);
            }
            if let Some(f) = ca_root_pem_file {
                v["trusted_roots_pem_files"] = json!([f.display().to_string()]);
            }
            v
        }
    }
}

fn proxy_route(hosts: &[String], upstream: SocketAddr) -> Value {
    json!({
        "match": [{ "host": hosts }],
        "handle": [{
            "handler": "reverse_proxy",
            "upstreams": [{ "dial": upstream.to_string() }],
        }],
        "terminal": true,
    })
}

/// Caddy's JSON config for `cfg`, `site` and the VM `routes` (pure; deterministic for the same
/// set of routes in any order; a repeated name keeps its last upstream; names that are not DNS
/// labels are left out).
pub fn caddy_config(
    cfg: &GatewayConfig,
    site: &GatewaySite,
    routes: &[VmRoute],
) -> Result<Value, GatewayError> {
    let https_port = listen_port(&cfg.https_listen)?;
    let http = cfg.http_listen();
    let http_port = http.map(listen_port).transpose()?;
    if cfg.admin.trim().is_empty() {
        return Err(GatewayError::Config("gateway.admin is empty".into()));
    }
    let issuer = issuer_json(cfg, https_port, http_port);

    let mut server_routes = Vec::new();
    let api_domain = site
        .api_domain
        .as_deref()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    if let Some(api) = &api_domain {
        server_routes.push(proxy_route(std::slice::from_ref(api), site.api_upstream));
    }
    let vm_domain = site
        .vm_domain
        .as_deref()
        .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    if let Some(vd) = &vm_domain {
        let mut by_name = BTreeMap::new();
        for (name, upstream) in routes {
            match vm_label(name) {
                Some(l) => {
                    by_name.insert(l, *upstream);
                }
                None => tracing::warn!(name, "gateway: VM name is not a DNS label; not routed"),
            }
        }
        for (label, upstream) in by_name {
            server_routes.push(proxy_route(&[format!("{label}.{vd}")], upstream));
        }
    }
    // Anything else (a host without a route) gets a plain 404 rather than Caddy's empty 200.
    server_routes.push(json!({
        "handle": [{ "handler": "static_response", "status_code": 404, "body": "no such host\n" }],
    }));

    let mut servers = serde_json::Map::new();
    servers.insert(
        HTTPS_SERVER.into(),
        json!({
            "listen": [cfg.https_listen],
            "routes": server_routes,
            "tls_connection_policies": [{}],
            "automatic_https": { "disable_redirects": true },
        }),
    );
    if let Some(h) = http {
        let port_suffix = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        servers.insert(
            HTTP_SERVER.into(),
            json!({
                "listen": [h],
                "routes": [{
                    "handle": [{
                        "handler": "static_response",
                        "status_code": 308,
                        "headers": {
                            "Location": [format!("https://{{http.request.host}}{port_suffix}{{http.request.uri}}")],
                        },
                    }],
                }],
            }),
        );
    }
    let mut http_app = json!({ "https_port": https_port, "servers": servers });
    if let Some(p) = http_port {
        http_app["http_port"] = json!(p);
    }

    let mut policies = Vec::new();
    if let Some(api) = &api_domain {
        policies.push(json!({ "subjects": [api], "issuers": [issuer.clone()] }));
    }
    policies.push(json!({ "issuers": [issuer], "on_demand": true }));

    Ok(json!({
        "admin": { "listen": cfg.admin, "config": { "persist": false } },
        "storage": { "module": "file_system", "root": storage_dir(cfg).display().to_string() },
        "apps": {
            "http": http_app,
            // Never install the internal CA's root into the host's trust stores (Caddy does
            // by default when it can, e.g. as root).
            "pki": {
                "certificate_authorities": { "local": { "install_trust": false } },
            },
            "tls": {
                "automation": {
                    "policies": policies,
                    "on_demand": { "ask": site.ask_url },
                },
            },
        },
    }))
}

/// Caddy's storage directory (what `XDG_DATA_HOME=<data_dir>` makes its default, too).
fn storage_dir(cfg: &GatewayConfig) -> PathBuf {
    cfg.data_dir.join("caddy")
}

/// Resolves the Caddy binary: a path must exist; a bare name is looked up in `PATH`.
pub fn find_caddy(binary: &Path) -> Result<PathBuf, GatewayError> {
    let missing = || GatewayError::CaddyMissing(binary.display().to_string());
    if binary.as_os_str().is_empty() {
        return Err(missing());
    }
    if binary.components().count() > 1 || binary.is_absolute() {
        return if binary.is_file() {
            Ok(binary.to_path_buf())
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .ok_or_else(missing)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GatewayError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The last `max` bytes of a file, as text (for error messages).
fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if text.trim().is_empty() {
        "(empty log)".into()
    } else {
        text
    }
}

/// True when `pid` exists and is not a zombie (reaping it if it is our zombie child).
fn pid_alive(pid: u32) -> bool {
    let p = pid as libc::pid_t;
    // Reap it if it is our (adopted-after-forget) child that already exited; ECHILD otherwise.
    unsafe {
        let mut status = 0;
        libc::waitpid(p, &mut status, libc::WNOHANG);
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

fn proc_cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

enum Proc {
    /// Spawned by this gateway.
    Child(Child),
    /// Adopted from a previous run through the pidfile.
    Adopted(u32),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted(p) => *p,
        }
    }

    fn alive(&mut self) -> bool {
        match self {
            Proc::Child(c) => matches!(c.try_wait(), Ok(None)),
            Proc::Adopted(p) => pid_alive(*p),
        }
    }
}

struct State {
    proc: Option<Proc>,
    /// The config Caddy runs (serialized), for "unchanged" detection.
    applied: String,
}

/// A running Caddy serving the gateway.
pub struct Gateway {
    config: GatewayConfig,
    site: GatewaySite,
    agent: ureq::Agent,
    adopted: bool,
    state: Mutex<State>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("admin", &self.config.admin)
            .field("https_listen", &self.config.https_listen)
            .field("pid", &self.pid())
            .field("adopted", &self.adopted)
            .finish()
    }
}

fn admin_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(ADMIN_TIMEOUT))
        .build()
        .into()
}

/// GET `/config/` on the admin API: `Some(config)` when something answers 200.
fn admin_config(agent: &ureq::Agent, admin: &str) -> Option<Value> {
    let url = format!("http://{admin}/config/");
    let mut resp = agent
        .get(&url)
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .ok()?;
    if resp.status().as_u16() != 200 {
        return None;
    }
    let text = resp.body_mut().read_to_string().ok()?;
    Some(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Whether Caddy's `--pingback` connection arrived with `token`.
fn pingback_received(listener: &std::net::TcpListener, token: &str) -> bool {
    let Ok((conn, _)) = listener.accept() else {
        return false;
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut got = Vec::new();
    let _ = conn.take(1024).read_to_end(&mut got);
    got == token.as_bytes()
}

fn is_ours(config: &Value) -> bool {
    config["apps"]["http"]["servers"][HTTPS_SERVER].is_object()
}

impl Gateway {
    /// `<data_dir>/caddy.json`: the config Caddy is started with (kept equal to the applied one).
    pub fn config_path(config: &GatewayConfig) -> PathBuf {
        config.data_dir.join("caddy.json")
    }

    /// `<data_dir>/caddy.pid`.
    pub fn pidfile_path(config: &GatewayConfig) -> PathBuf {
        config.data_dir.join("caddy.pid")
    }

    /// `<data_dir>/caddy.log`: Caddy's stdout and stderr (appended).
    pub fn log_path(config: &GatewayConfig) -> PathBuf {
        config.data_dir.join("caddy.log")
    }

    /// The root certificate of Caddy's internal CA (exists once Caddy has started with the
    /// internal issuer).
    pub fn internal_root_ca(&self) -> PathBuf {
        storage_dir(&self.config).join("pki/authorities/local/root.crt")
    }

    /// Starts Caddy with `routes` (or adopts the one a previous run left, see the module doc) and
    /// waits until its admin API serves our config. Blocking; bounded by 30 s.
    pub fn start(
        config: GatewayConfig,
        site: GatewaySite,
        routes: &[VmRoute],
    ) -> Result<Gateway, GatewayError> {
        let binary = find_caddy(&config.caddy_binary)?;
        let desired = caddy_config(&config, &site, routes)?;
        let text = serde_json::to_string_pretty(&desired).expect("json values serialize");
        let dir = &config.data_dir;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let xdg_config = dir.join("config");
        fs::create_dir_all(&xdg_config).map_err(io_err(&xdg_config))?;
        let cfg_path = Self::config_path(&config);
        let pidfile = Self::pidfile_path(&config);
        let log = Self::log_path(&config);
        let agent = admin_agent();

        // A Caddy a previous run started: adopt it when it answers with our server, else replace it.
        if let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            let cmd = proc_cmdline(pid);
            let cfg_arg = cfg_path.display().to_string();
            let ours =
                pid_alive(pid) && cmd.iter().any(|a| a.contains("caddy")) && cmd.contains(&cfg_arg);
            if ours {
                if admin_config(&agent, &config.admin).is_some_and(|c| is_ours(&c)) {
                    tracing::info!(pid, "gateway: adopting the running caddy");
                    let gw = Gateway {
                        config,
                        site,
                        agent,
                        adopted: true,
                        state: Mutex::new(State {
                            proc: Some(Proc::Adopted(pid)),
                            applied: String::new(),
                        }),
                    };
                    gw.load(&desired)?;
                    return Ok(gw);
                }
                tracing::warn!(pid, "gateway: previous caddy does not answer; replacing it");
                terminate(&mut Proc::Adopted(pid));
            }
            let _ = fs::remove_file(&pidfile);
        }
        if admin_config(&agent, &config.admin).is_some() {
            return Err(GatewayError::AdminInUse(config.admin.clone()));
        }

        write_atomic(&cfg_path, text.as_bytes())?;
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(&log))?;
        let log_err = log_file.try_clone().map_err(io_err(&log))?;
        // `--pingback`: Caddy echoes its stdin to this address once the initial config is running
        // (its admin API answers earlier, before the listeners are bound).
        let pingback = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err(dir))?;
        pingback.set_nonblocking(true).map_err(io_err(dir))?;
        let pingback_addr = pingback.local_addr().map_err(io_err(dir))?;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| GatewayError::Io {
            path: "getrandom".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let token = hex::encode(token);
        let mut cmd = Command::new(&binary);
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--pingback")
            .arg(pingback_addr.to_string())
            .env("XDG_DATA_HOME", dir)
            .env("XDG_CONFIG_HOME", &xdg_config)
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            // Own process group: a terminal's Ctrl-C reaches the daemon, which stops Caddy itself.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                GatewayError::CaddyMissing(binary.display().to_string())
            } else {
                GatewayError::StartFailed {
                    reason: format!("cannot run {}: {e}", binary.display()),
                    log: log.display().to_string(),
                    tail: String::new(),
                }
            }
        })?;
        let pid = child.id();
        if let Some(mut stdin) = child.stdin.take() {
            // Caddy reads stdin to its end after loading; a failed write shows up as no pingback.
            let _ = stdin.write_all(token.as_bytes());
        }
        let mut proc = Proc::Child(child);
        if let Err(e) = write_atomic(&pidfile, format!("{pid}\n").as_bytes()) {
            terminate(&mut proc);
            return Err(e);
        }
        tracing::info!(pid, admin = %config.admin, "gateway: caddy started");

        let deadline = Instant::now() + START_TIMEOUT;
        let mut confirmed = false;
        loop {
            if !proc.alive() {
                let _ = fs::remove_file(&pidfile);
                return Err(GatewayError::StartFailed {
                    reason: "caddy exited".into(),
                    log: log.display().to_string(),
                    tail: log_tail(&log, 4000),
                });
            }
            if !confirmed {
                confirmed = pingback_received(&pingback, &token);
            }
            if confirmed && admin_config(&agent, &config.admin).is_some_and(|c| is_ours(&c)) {
                break;
            }
            if Instant::now() > deadline {
                terminate(&mut proc);
                let _ = fs::remove_file(&pidfile);
                return Err(GatewayError::StartFailed {
                    reason: format!(
                        "caddy did not confirm its config (pingback: {confirmed}) and admin API at {} within {}s",
                        config.admin,
                        START_TIMEOUT.as_secs()
                    ),
                    log: log.display().to_string(),
                    tail: log_tail(&log, 4000),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Gateway {
            config,
            site,
            agent,
            adopted: false,
            state: Mutex::new(State {
                proc: Some(proc),
                applied: text,
            }),
        })
    }

    /// The Caddy process id (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .proc
            .as_ref()
            .map(Proc::pid)
    }

    /// Whether [`Gateway::start`] adopted a Caddy left by a previous run.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The settings this gateway runs with.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Replaces the VM routes: POSTs the full config to `/load` unless it is unchanged. Returns
    /// whether Caddy was reloaded. On error Caddy keeps its previous config.
    pub fn apply(&self, routes: &[VmRoute]) -> Result<bool, GatewayError> {
        let desired = caddy_config(&self.config, &self.site, routes)?;
        self.load(&desired)
    }

    fn load(&self, desired: &Value) -> Result<bool, GatewayError> {
        let text = serde_json::to_string_pretty(desired).expect("json values serialize");
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let log = Self::log_path(&self.config);
        if !st.proc.as_mut().is_some_and(|p| p.alive()) {
            return Err(GatewayError::NotRunning {
                pid: st.proc.as_ref().map(Proc::pid).unwrap_or(0),
                log: log.display().to_string(),
                tail: log_tail(&log, 4000),
            });
        }
        if st.applied == text {
            return Ok(false);
        }
        let url = format!("http://{}/load", self.config.admin);
        let admin_err = |message: String| GatewayError::Admin {
            url: url.clone(),
            message,
        };
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(text.as_bytes())
            .map_err(|e| admin_err(e.to_string()))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(admin_err(format!("{status}: {}", body.trim())));
        }
        write_atomic(&Self::config_path(&self.config), text.as_bytes())?;
        st.applied = text;
        tracing::info!("gateway: caddy config loaded");
        Ok(true)
    }

    /// Stops Caddy (SIGTERM, SIGKILL after 10 s) and removes the pidfile. Idempotent.
    pub fn stop(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut p) = st.proc.take() {
            tracing::info!(pid = p.pid(), "gateway: stopping caddy");
            terminate(&mut p);
            let _ = fs::remove_file(Self::pidfile_path(&self.config));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, wait up to [`STOP_GRACE`], SIGKILL, wait (reaping our child).
fn terminate(p: &mut Proc) {
    let pid = p.pid() as libc::pid_t;
    if !p.alive() {
        return;
    }
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if !p.alive() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    match p {
        Proc::Child(c) => {
            let _ = c.wait();
        }
        Proc::Adopted(_) => {
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> GatewaySite {
        GatewaySite {
            api_domain: Some("api.example.com".into()),
            api_upstream: "127.0.0.1:7443".parse().unwrap(),
            ask_url: "http://127.0.0.1:7443/caddy/check".into(),
            vm_domain: Some("vms.example.com".into()),
        }
    }

    fn routes() -> Vec<VmRoute> {
        vec![
            ("web".into(), "10.0.0.3:8080".parse().unwrap()),
            ("Alpha".into(), "10.0.0.2:8080".parse().unwrap()),
            ("bad.name".into(), "10.0.0.9:8080".parse().unwrap()),
        ]
    }

    fn server(c: &Value) -> &Value {
        &c["apps"]["http"]["servers"][HTTPS_SERVER]
    }

    #[test]
    fn defaults_and_parsing() {
        let d = GatewayConfig::default();
        assert!(!d.enabled);
        assert_eq!(d.https_listen, ":443");
        assert_eq!(d.http_listen(), Some(":80"));
        assert_eq!(d.admin, "127.0.0.1:2019");
        assert_eq!(d.issuer, Issuer::Internal);
        assert_eq!(d.caddy_binary, PathBuf::from("caddy"));

        let c: GatewayConfig = serde_json::from_value(json!({
            "enabled": true, "http_listen": "", "issuer": "internal"
        }))
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.http_listen(), None);

        let c: GatewayConfig = serde_json::from_value(json!({
            "issuer": { "acme": { "ca_url": "https://ca/dir", "email": "a@b.c" } }
        }))
        .unwrap();
        assert_eq!(
            c.issuer,
            Issuer::Acme {
                ca_url: "https://ca/dir".into(),
                email: Some("a@b.c".into()),
                ca_root_pem_file: None
            }
        );
        assert!(serde_json::from_value::<GatewayConfig>(json!({ "nope": 1 })).is_err());
        assert!(
            serde_json::from_value::<GatewayConfig>(
                json!({ "issuer": { "acme": { "ca_url": "x", "nope": 1 } } })
            )
            .is_err()
        );
        assert!(serde_json::from_value::<GatewayConfig>(json!({ "issuer": "zerossl" })).is_err());
    }

    #[test]
    fn config_routes_hosts_upstreams_and_ask() {
        let cfg = GatewayConfig {
            data_dir: "/data/gw".into(),
            ..Default::default()
        };
        let c = caddy_config(&cfg, &site(), &routes()).unwrap();
        assert_eq!(c["admin"]["listen"], "127.0.0.1:2019");
        assert_eq!(c["admin"]["config"]["persist"], false);
        assert_eq!(c["storage"]["root"], "/data/gw/caddy");
        let s = server(&c);
        assert_eq!(s["listen"], json!([":443"]));
        let r = s["routes"].as_array().unwrap();
        // api, alpha, web (sorted, lower-cased; `bad.name` left out), fallback 404
        assert_eq!(r.len(), 4);
        assert_eq!(r[0]["match"][0]["host"], json!(["api.example.com"]));
        assert_eq!(r[0]["handle"][0]["upstreams"][0]["dial"], "127.0.0.1:7443");
        assert_eq!(r[1]["match"][0]["host"], json!(["alpha.vms.example.com"]));
        assert_eq!(r[1]["handle"][0]["handler"], "reverse_proxy");
        assert_eq!(r[1]["handle"][0]["upstreams"][0]["dial"], "10.0.0.2:8080");
        assert_eq!(r[2]["match"][0]["host"], json!(["web.vms.example.com"]));
        assert_eq!(r[2]["handle"][0]["upstreams"][0]["dial"], "10.0.0.3:8080");
        assert_eq!(r[3]["handle"][0]["status_code"], 404);
        assert!(r[3].get("match").is_none());

        assert_eq!(
            c["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"],
            false
        );
        let tls = &c["apps"]["tls"]["automation"];
        assert_eq!(tls["on_demand"]["ask"], "http://127.0.0.1:7443/caddy/check");
        let p = tls["policies"].as_array().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["subjects"], json!(["api.example.com"]));
        assert!(p[0].get("on_demand").is_none());
        assert_eq!(p[1]["on_demand"], true);
        assert!(p[1].get("subjects").is_none());
        assert_eq!(p[1]["issuers"], json!([{ "module": "internal" }]));

        // the HTTP server redirects to HTTPS
        assert_eq!(c["apps"]["http"]["http_port"], 80);
        assert_eq!(c["apps"]["http"]["https_port"], 443);
        let h = &c["apps"]["http"]["servers"][HTTP_SERVER];
        assert_eq!(h["listen"], json!([":80"]));
        assert_eq!(
            h["routes"][0]["handle"][0]["headers"]["Location"][0],
            "https://{http.request.host}{http.request.uri}"
        );

        // order-independent
        let mut rev = routes();
        rev.reverse();
        assert_eq!(caddy_config(&cfg, &site(), &rev).unwrap(), c);
    }

    #[test]
    fn config_without_domains_or_http() {
        let cfg = GatewayConfig {
            https_listen: "127.0.0.1:8443".into(),
            http_listen: String::new(),
            ..Default::default()
        };
        let s = GatewaySite {
            api_domain: None,
            vm_domain: None,
            ..site()
        };
        let c = caddy_config(&cfg, &s, &routes()).unwrap();
        let r = server(&c)["routes"].as_array().unwrap();
        assert_eq!(r.len(), 1, "only the fallback: {r:?}");
        assert!(c["apps"]["http"]["servers"].get(HTTP_SERVER).is_none());
        assert!(c["apps"]["http"].get("http_port").is_none());
        assert_eq!(c["apps"]["http"]["https_port"], 8443);
        let p = c["apps"]["tls"]["automation"]["policies"]
            .as_array()
            .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["on_demand"], true);

        let bad = GatewayConfig {
            https_listen: "localhost".into(),
            ..Default::default()
        };
        assert!(matches!(
            caddy_config(&bad, &s, &[]),
            Err(GatewayError::Config(_))
        ));
    }

    #[test]
    fn acme_issuer() {
        let mut cfg = GatewayConfig {
            https_listen: ":8443".into(),
            http_listen: ":8080".into(),
            issuer: Issuer::Acme {
                ca_url: "https://127.0.0.1:14000/dir".into(),
                email: Some("ops@example.com".into()),
                ca_root_pem_file: Some("/etc/pebble/root.pem".into()),
            },
            ..Default::default()
        };
        let c = caddy_config(&cfg, &site(), &[]).unwrap();
        let p = &c["apps"]["tls"]["automation"]["policies"];
        let want = json!({
            "module": "acme",
            "ca": "https://127.0.0.1:14000/dir",
            "email": "ops@example.com",
            "trusted_roots_pem_files": ["/etc/pebble/root.pem"],
            "challenges": {
                "http": { "alternate_port": 8080 },
                "tls-alpn": { "alternate_port": 8443 },
            },
        });
        assert_eq!(p[0]["issuers"], json!([want.clone()]));
        assert_eq!(p[1]["issuers"], json!([want]));
        assert_eq!(
            c["apps"]["http"]["servers"][HTTP_SERVER]["routes"][0]["handle"][0]["headers"]["Location"]
                [0],
            "https://{http.request.host}:8443{http.request.uri}"
        );

        cfg.http_listen = String::new();
        let c = caddy_config(&cfg, &site(), &[]).unwrap();
        let iss = &c["apps"]["tls"]["automation"]["policies"][1]["issuers"][0];
        assert_eq!(iss["challenges"]["http"], json!({ "disabled": true }));
        assert!(iss.get("email").is_some());
    }

    #[test]
    fn missing_caddy_is_clear() {
        let e = find_caddy(Path::new("/nonexistent/caddy")).unwrap_err();
        assert!(
            e.to_string().contains("install Debian package caddy"),
            "{e}"
        );
        let e = find_caddy(Path::new("no-such-caddy-binary-xyz")).unwrap_err();
        assert!(
            e.to_string().contains("install Debian package caddy"),
            "{e}"
        );
    }
}
