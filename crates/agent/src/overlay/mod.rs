//! The host's end of the cluster's WireGuard full mesh (docs/overlay.md, "Agent").
//!
//! At start ([`start`]): the host's key pair (`<data_dir>/overlay.key`, made once, mode 0600),
//! what the control plane says the overlay looks like for this host (`GET /v1/agent/overlay`,
//! cached in `<data_dir>/overlay.json` so a restart works while the control plane is down), the
//! WireGuard device with the host's overlay address `<host /64>::1`, and the host's /64 handed to
//! the instance network. Then ([`Overlay::run`]) every second the peers' counters become
//! reachability (see [`health`]) for the report and the metrics, and every few seconds the peer
//! list is re-read and only what differs is changed on the device (`scalebox_overlay::mesh`).

pub mod device;
pub mod health;
pub mod isolation;
pub mod uapi;

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scalebox_overlay::{Change, Ipv6Net, Peer, PrivateKey, PublicKey, mesh};
use scalebox_types::api::{AgentOverlay, OverlayPeerHealth, OverlayReport};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::control_link::{ControlClient, Credential};
use crate::error::AgentError;
use crate::persist::write_atomic;
pub use device::{Device, Mode};
use health::{PeerHealth, Tracker};

/// `[overlay]` of the agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Join the cluster's WireGuard mesh (needs the control plane link).
    pub enabled: bool,
    /// The WireGuard interface.
    pub interface: String,
    /// UDP port WireGuard listens on.
    pub listen_port: u16,
    /// Where other hosts send this host's tunnel traffic (default: the address the host joined
    /// with, and `listen_port`).
    pub endpoint: Option<SocketAddr>,
    pub mode: Mode,
    /// Persistent keepalive: how often each peer is sent something when idle.
    pub keepalive_secs: u16,
    /// A peer from which nothing arrived for this long is unreachable.
    pub peer_timeout_secs: u64,
    /// How often the peer list is read from the control plane.
    pub sync_secs: u64,
    pub mtu: u32,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            enabled: false,
            interface: "sbwg0".into(),
            listen_port: 51820,
            endpoint: None,
            mode: Mode::Auto,
            keepalive_secs: 5,
            peer_timeout_secs: 15,
            sync_secs: 3,
            mtu: 1420,
        }
    }
}

impl OverlayConfig {
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.interface;
        if n.is_empty()
            || n.len() > 15
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "overlay.interface {n:?} must be 1-15 letters, digits, '-' or '_'"
            ));
        }
        if self.keepalive_secs == 0 || u64::from(self.keepalive_secs) >= self.peer_timeout_secs {
            return Err(
                "overlay.keepalive_secs must be at least 1 and below overlay.peer_timeout_secs"
                    .into(),
            );
        }
        if !(1280..=9000).contains(&self.mtu) {
            return Err("overlay.mtu must be 1280-9000 (IPv6 needs 1280)".into());
        }
        if self.listen_port == 0 {
            return Err(
                "overlay.listen_port must be a fixed port (peers are told where to send)".into(),
            );
        }
        if let Some(e) = self.endpoint
            && (e.port() == 0 || e.ip().is_unspecified())
        {
            return Err(format!(
                "overlay.endpoint {e} must be the address and port other hosts reach this one on"
            ));
        }
        if self.sync_secs == 0 {
            return Err("overlay.sync_secs must be at least 1".into());
        }
        Ok(())
    }
}

struct State {
    peers: Vec<Peer>,
    /// The isolation ruleset last applied.
    rules: Option<String>,
    names: BTreeMap<String, String>,
    tracker: Tracker,
    health: Vec<(String, PeerHealth)>,
}

/// The running overlay of this host.
pub struct Overlay {
    cfg: OverlayConfig,
    public_key: PublicKey,
    endpoint: SocketAddr,
    address: Ipv6Addr,
    prefix: Ipv6Net,
    device: Device,
    cache: PathBuf,
    /// Bound once to the host's overlay address; `None` if that failed (logged), and then no
    /// probes are sent (peers are still reachable while other traffic arrives).
    probe_socket: Option<std::net::UdpSocket>,
    state: Mutex<State>,
}

/// Loads the host's private key, making it on first use (32 random bytes, clamped, mode 0600).
pub fn load_or_create_key(path: &Path) -> Result<PrivateKey, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|e| {
            format!(
                "{} is not a WireGuard private key ({e}); remove it to make a new one (peers learn the new key)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut r = [0u8; 32];
            getrandom::fill(&mut r).map_err(|e| format!("no randomness: {e}"))?;
            let (k, _) = scalebox_overlay::keys::generate(r);
            write_atomic(path, format!("{}\n", k.to_base64()).as_bytes(), 0o600)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(k)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Turns the control plane's peer list into mesh peers; entries that do not parse are skipped
/// with a warning (one bad host must not cut this one off from the others).
pub fn desired_peers(d: &AgentOverlay) -> (Vec<Peer>, BTreeMap<String, String>) {
    let mut peers = Vec::new();
    let mut names = BTreeMap::new();
    for p in &d.peers {
        let parsed = (|| {
            Some(Peer {
                host: p.host.clone(),
                public_key: p.public_key.parse().ok()?,
                endpoint: p.endpoint.parse().ok()?,
                allowed: p
                    .allowed_ips
                    .iter()
                    .map(|a| a.parse().ok())
                    .collect::<Option<Vec<Ipv6Net>>>()?,
            })
        })();
        match parsed {
            Some(peer) => {
                names.insert(p.host.clone(), p.name.clone());
                peers.push(peer);
            }
            None => {
                warn!(peer = %p.name, "[overlay] skipping a peer whose key, endpoint or networks do not parse")
            }
        }
    }
    (peers, names)
}

fn fetch(client: &ControlClient) -> Result<AgentOverlay, String> {
    let v = client.get("/v1/agent/overlay").map_err(|e| e.to_string())?;
    serde_json::from_value(v).map_err(|e| format!("unreadable overlay answer: {e}"))
}

/// Turns IPv6 forwarding on in this network namespace, first moving interfaces that accept
/// router advertisements to `accept_ra=2` so the host keeps its SLAAC addresses and routes.
fn enable_forwarding() -> Result<(), String> {
    if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["all", "default", "lo"].contains(&name.as_str()) {
                continue;
            }
            let ra = e.path().join("accept_ra");
            if std::fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1") {
                let _ = std::fs::write(&ra, "2");
            }
        }
    }
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        .map_err(|e| format!("enable IPv6 forwarding: {e}"))
}

/// Brings the overlay up when `[overlay] enabled`: the device, its peers and the host's /64 in
/// `cfg` (`instance_ipv6_prefix`; and `health_host` when instances have no network of their own,
/// so they are reached on the host's overlay address). Waits for the control plane on a first
/// start (nothing is cached yet).
pub async fn start(
    cfg: &mut AgentConfig,
    instances_have_network: bool,
) -> Result<Option<Arc<Overlay>>, AgentError> {
    if !cfg.overlay.enabled {
        return Ok(None);
    }
    let bad = AgentError::InvalidConfig;
    let cred_path = cfg.control_credential.clone().ok_or_else(|| {
        bad("overlay.enabled needs the control plane link: join the cluster first (`scaleboxd agent --join URL`)".into())
    })?;
    let cred = Credential::load(&cred_path).map_err(bad)?.ok_or_else(|| {
        bad(format!(
            "{} does not exist; join first",
            cred_path.display()
        ))
    })?;
    let oc = cfg.overlay.clone();
    let endpoint = match (oc.endpoint, &cred.address) {
        (Some(e), _) => e,
        (None, Some(a)) => SocketAddr::new(
            a.parse().map_err(|_| {
                bad(format!(
                    "the joined address {a:?} is not an IP address; set overlay.endpoint"
                ))
            })?,
            oc.listen_port,
        ),
        (None, None) => {
            return Err(bad(
                "overlay.endpoint is not set and the host credential has no address (joined before the overlay existed); set overlay.endpoint = \"ADDRESS:PORT\"".into(),
            ));
        }
    };
    let key = load_or_create_key(&cfg.data_dir.join("overlay.key")).map_err(bad)?;
    let public_key = key.public_key();
    let cache = cfg.data_dir.join("overlay.json");
    let client = ControlClient::new(&cred.url, &cred.token);
    let desired = first_desired(&client, &cache).await;
    let prefix: Ipv6Net = desired.prefix.parse().map_err(|_| {
        bad(format!(
            "the control plane gave an invalid /64 {:?}",
            desired.prefix
        ))
    })?;
    let cluster: Ipv6Net = desired.cluster_prefix.parse().map_err(|_| {
        bad(format!(
            "the control plane gave an invalid cluster prefix {:?}",
            desired.cluster_prefix
        ))
    })?;
    let address = prefix.nth(1).ok_or_else(|| bad("empty /64".into()))?;
    let key_file = cfg.data_dir.join("overlay.key");
    let dev_cfg = oc.clone();
    let device = tokio::task::spawn_blocking(move || -> Result<Device, String> {
        enable_forwarding()?;
        let d = Device::create(
            &dev_cfg.interface,
            dev_cfg.mode,
            &key,
            &key_file,
            dev_cfg.listen_port,
            dev_cfg.keepalive_secs,
        )?;
        d.configure_ip(address, cluster, dev_cfg.mtu)?;
        Ok(d)
    })
    .await
    .map_err(|e| AgentError::Overlay(e.to_string()))?
    .map_err(AgentError::Overlay)?;
    info!(
        interface = %oc.interface,
        kind = device.kind(),
        %address,
        %endpoint,
        "[overlay] WireGuard device up"
    );
    let o = Arc::new(Overlay {
        public_key,
        endpoint,
        address,
        prefix,
        device,
        cache,
        probe_socket: std::net::UdpSocket::bind(SocketAddr::new(address.into(), 0))
            .inspect_err(|e| warn!(error = %e, "[overlay] no probe socket; peer health relies on other traffic"))
            .ok(),
        state: Mutex::new(State {
            peers: Vec::new(),
            rules: None,
            names: BTreeMap::new(),
            tracker: Tracker::new(Duration::from_secs(oc.peer_timeout_secs)),
            health: Vec::new(),
        }),
        cfg: oc,
    });
    let o2 = o.clone();
    tokio::task::spawn_blocking(move || o2.reconcile(&desired))
        .await
        .map_err(|e| AgentError::Overlay(e.to_string()))?
        .map_err(AgentError::Overlay)?;
    cfg.instance_ipv6_prefix = prefix.addr();
    if !instances_have_network {
        cfg.health_host = std::net::IpAddr::V6(address);
    }
    Ok(Some(o))
}

async fn first_desired(client: &ControlClient, cache: &Path) -> AgentOverlay {
    let mut warned = false;
    loop {
        let c = client.clone();
        let got = tokio::task::spawn_blocking(move || fetch(&c))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match got {
            Ok(d) => return d,
            Err(e) => {
                if let Ok(b) = std::fs::read(cache)
                    && let Ok(d) = serde_json::from_slice::<AgentOverlay>(&b)
                {
                    warn!(error = %e, "[overlay] control plane unreachable; starting from the cached peer list");
                    return d;
                }
                if !warned {
                    warn!(error = %e, url = %client.base(), "[overlay] waiting for the control plane to learn this host's /64 and peers");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

impl Overlay {
    /// The host's own overlay address (`<host /64>::1`).
    pub fn address(&self) -> Ipv6Addr {
        self.address
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Makes the device's peers match `desired`, changing only what differs; caches `desired`.
    /// Returns the number of peer changes.
    pub fn reconcile(&self, desired: &AgentOverlay) -> Result<usize, String> {
        let (want, names) = desired_peers(desired);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.names = names;
        let changes = mesh::plan(&st.peers, &want).map_err(|e| e.to_string())?;
        if !changes.is_empty() {
            if let Err(e) = self.device.apply(&st.peers, &changes) {
                // The device may hold part of the change: start again from no peers.
                let _ = self.device.apply(
                    &st.peers,
                    &st.peers
                        .iter()
                        .map(|p| Change::Remove(p.host.clone()))
                        .collect::<Vec<_>>(),
                );
                st.peers.clear();
                return Err(format!("applying peer changes: {e}"));
            }
            for c in &changes {
                let (what, host) = match c {
                    Change::Add(p) => ("added", &p.host),
                    Change::Remove(h) => ("removed", h),
                    Change::Update { host, .. } => ("updated", host),
                };
                let name = st.names.get(host).cloned().unwrap_or_else(|| host.clone());
                info!(peer = %name, host = %host, "[overlay] peer {what}");
            }
            st.peers = mesh::apply(&st.peers, &changes);
        }
        let rules = isolation::ruleset(&self.policy(&st.peers, desired));
        if st.rules.as_deref() != Some(rules.as_str()) {
            crate::tap_network::nft_apply(&rules)
                .map_err(|e| format!("applying the org isolation rules: {e}"))?;
            info!(
                orgs = desired.isolation.len(),
                "[overlay] org isolation rules applied"
            );
            st.rules = Some(rules);
        }
        drop(st);
        if let Ok(b) = serde_json::to_vec(desired) {
            let _ = write_atomic(&self.cache, &b, 0o600);
        }
        Ok(changes.len())
    }

    /// Sends one small UDP datagram through the tunnel to every peer's overlay address. A
    /// userspace device does not count keepalives in its counters, so these probes are what
    /// makes a live peer's `rx_bytes` grow on the other side (the port is discard, 9; nothing
    /// needs to listen).
    fn probe(&self) {
        let peers: Vec<Ipv6Addr> = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.peers
                .iter()
                .filter_map(|p| p.allowed.first().and_then(|n| n.nth(1)))
                .collect()
        };
        let Some(sock) = &self.probe_socket else {
            return;
        };
        for a in peers {
            let _ = sock.send_to(b"scalebox-overlay-probe", SocketAddr::new(a.into(), 9));
        }
    }

    /// The isolation policy: this host's /64, every host's overlay address, and the orgs with
    /// instances here (addresses that do not parse are left out).
    fn policy(&self, peers: &[Peer], desired: &AgentOverlay) -> isolation::Policy {
        let mut hosts: std::collections::BTreeSet<Ipv6Addr> = peers
            .iter()
            .filter_map(|p| p.allowed.first().and_then(|n| n.nth(1)))
            .collect();
        hosts.insert(self.address);
        isolation::Policy {
            prefix: self.prefix,
            hosts,
            orgs: desired
                .isolation
                .iter()
                .map(|o| isolation::OrgAddresses {
                    org: o.org.clone(),
                    addresses: o.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                })
                .collect(),
        }
    }

    /// Reads the device's counters into the peers' health.
    pub fn observe(&self) -> Result<(), String> {
        self.probe();
        let stats = self.device.stats()?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let health = st.tracker.observe(&stats, Instant::now());
        let by_key: BTreeMap<PublicKey, String> = st
            .peers
            .iter()
            .map(|p| (p.public_key, p.host.clone()))
            .collect();
        st.health = health
            .into_iter()
            .filter_map(|h| by_key.get(&h.public_key).map(|host| (host.clone(), h)))
            .collect();
        Ok(())
    }

    /// The host ids of the configured peers.
    pub fn peer_hosts(&self) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.peers.iter().map(|p| p.host.clone()).collect()
    }

    /// What goes into the agent's report.
    pub fn report(&self) -> OverlayReport {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        OverlayReport {
            public_key: self.public_key.to_base64(),
            endpoint: self.endpoint.to_string(),
            peers: st
                .health
                .iter()
                .map(|(host, h)| OverlayPeerHealth {
                    host: host.clone(),
                    reachable: h.reachable,
                    last_handshake_secs: h.handshake_age.map(|d| d.as_secs()),
                    rx_bytes: h.rx_bytes,
                    tx_bytes: h.tx_bytes,
                })
                .collect(),
        }
    }

    /// Prometheus text for the overlay: per peer reachability, handshake age and bytes.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let rows: Vec<(String, &PeerHealth)> = st
            .health
            .iter()
            .map(|(host, h)| {
                (
                    st.names.get(host).cloned().unwrap_or_else(|| host.clone()),
                    h,
                )
            })
            .collect();
        let family = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      v: &dyn Fn(&PeerHealth) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (peer, h) in &rows {
                if let Some(x) = v(h) {
                    let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {x}");
                }
            }
        };
        family(
            &mut out,
            "scalebox_overlay_peer_reachable",
            "gauge",
            "1 when traffic arrived from the peer within the peer timeout",
            &|h| Some(if h.reachable { 1.0 } else { 0.0 }),
        );
        family(
            &mut out,
            "scalebox_overlay_peer_handshake_age_seconds",
            "gauge",
            "Seconds since the last WireGuard handshake with the peer",
            &|h| h.handshake_age.map(|d| d.as_secs_f64()),
        );
        family(
            &mut out,
            "scalebox_overlay_peer_rx_bytes",
            "counter",
            "Bytes received from the peer",
            &|h| Some(h.rx_bytes as f64),
        );
        family(
            &mut out,
            "scalebox_overlay_peer_tx_bytes",
            "counter",
            "Bytes sent to the peer",
            &|h| Some(h.tx_bytes as f64),
        );
        out
    }

    /// Keeps the peers in step with the control plane and their health fresh until `shutdown`.
    pub async fn run(self: Arc<Self>, client: ControlClient, mut shutdown: watch::Receiver<bool>) {
        let mut failing = false;
        let mut last_sync = Instant::now();
        loop {
            let o = self.clone();
            let sync = last_sync.elapsed() >= Duration::from_secs(self.cfg.sync_secs);
            let c = client.clone();
            let r = tokio::task::spawn_blocking(move || -> Result<(), String> {
                if sync {
                    let d = fetch(&c)?;
                    o.reconcile(&d)?;
                }
                o.observe()
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if sync {
                last_sync = Instant::now();
            }
            match r {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "[overlay] cannot sync the overlay; keeping the current peers; retrying");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        assert!(OverlayConfig::default().validate().is_ok());
        let bad = |f: fn(&mut OverlayConfig)| {
            let mut c = OverlayConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.interface = "much-too-long-name".into()).contains("overlay.interface"));
        assert!(bad(|c| c.interface = "wg 0".into()).contains("overlay.interface"));
        assert!(bad(|c| c.keepalive_secs = 15).contains("keepalive_secs"));
        assert!(bad(|c| c.mtu = 1000).contains("mtu"));
        assert!(bad(|c| c.listen_port = 0).contains("listen_port"));
        assert!(bad(|c| c.endpoint = Some("0.0.0.0:51820".parse().unwrap())).contains("endpoint"));
        assert!(bad(|c| c.endpoint = Some("10.0.0.1:0".parse().unwrap())).contains("endpoint"));
        let text = "[overlay]\nenabled = true\nlisten_port = 51000\nmode = \"userspace\"\n";
        let c = AgentConfig::from_toml(Path::new("a.toml"), text).unwrap();
        assert!(c.overlay.enabled && c.overlay.mode == Mode::Userspace);
        assert!(AgentConfig::from_toml(Path::new("a.toml"), "[overlay]\nbogus = 1\n").is_err());
    }

    #[test]
    fn key_is_made_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("overlay.key");
        let k1 = load_or_create_key(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_key(&p).unwrap(), k1);
        std::fs::write(&p, "not a key").unwrap();
        assert!(load_or_create_key(&p).unwrap_err().contains("remove it"));
    }

    #[test]
    fn bad_peers_from_the_control_plane_are_skipped() {
        let pk = scalebox_overlay::keys::generate([3; 32]).1.to_base64();
        let peer = |host: &str, key: &str, ep: &str| scalebox_types::api::AgentOverlayPeer {
            host: host.into(),
            name: host.into(),
            public_key: key.into(),
            endpoint: ep.into(),
            allowed_ips: vec!["fd00:0:0:2::/64".into()],
        };
        let d = AgentOverlay {
            host: "a".into(),
            cluster_prefix: "fd00::/48".into(),
            prefix: "fd00:0:0:1::/64".into(),
            peers: vec![
                peer("b", &pk, "10.0.0.2:51820"),
                peer("c", "nope", "10.0.0.3:51820"),
                peer("d", &pk, "not an endpoint"),
            ],
            isolation: vec![],
        };
        let (peers, names) = desired_peers(&d);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].host, "b");
        assert_eq!(names.len(), 1);
    }
}
