//! Host networking for microVMs (the real [`Network`]): one bridge per host carrying the
//! instances' IPv6 /64 (gateway `::1` on the bridge), one TAP per instance enslaved to it, and
//! an nftables table `inet scalebox` that forwards instance traffic and (for the IPv4 egress
//! subnet) masquerades it. Everything is created idempotently with `ip` and `nft`; TAPs are
//! named `sbt<8 hex>` from the instance key so orphans are recognisable. Guest addresses are
//! derived from the key (hash into the /64), so a restarted agent gets the same ones. Each
//! instance also gets an IPv4 address from a private /16 (allocated, persisted, never shared while
//! held) used only for egress, masqueraded to the host's address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::backend::*;

/// Network settings of one host.
#[derive(Debug)]
pub struct TapNetwork {
    pub bridge: String,
    /// The instances' /64 (only the first 64 bits are used).
    pub prefix: Ipv6Addr,
    /// The instances' IPv4 egress /16 (gateway `.0.1` on the bridge).
    pub ipv4_net: Ipv4Addr,
    /// TAP → IPv4 allocations, persisted here when set.
    alloc_file: Option<PathBuf>,
    alloc: Mutex<BTreeMap<String, Ipv4Addr>>,
}

impl Default for TapNetwork {
    fn default() -> Self {
        TapNetwork {
            bridge: "sbbr0".into(),
            prefix: "fd5c:a1e0:0:1::".parse().expect("valid"),
            ipv4_net: Ipv4Addr::new(10, 88, 0, 0),
            alloc_file: None,
            alloc: Mutex::default(),
        }
    }
}

/// Runs a networking command (`ip`, `nft`), mapping failures to a clear [`BackendError`].
pub fn run(args: &[&str]) -> Result<String, BackendError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| {
            BackendError::new(
                "network",
                format!(
                    "cannot run {} (Debian packages iproute2, nftables): {e}",
                    args[0]
                ),
            )
        })?;
    if !out.status.success() {
        return Err(BackendError::new(
            "network",
            format!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exists(dev: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(dev).exists()
}

impl TapNetwork {
    /// The agent's networks (`instance_ipv6_prefix`, `instance_ipv4_net` of its config), with
    /// IPv4 allocations persisted in `<data_dir>/ipv4.json`.
    pub fn new(cfg: &crate::config::AgentConfig) -> TapNetwork {
        let file = cfg.data_dir.join("ipv4.json");
        let alloc = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        TapNetwork {
            prefix: cfg.instance_ipv6_prefix,
            ipv4_net: cfg.instance_ipv4_net,
            alloc_file: Some(file),
            alloc: Mutex::new(alloc),
            ..TapNetwork::default()
        }
    }

    fn ipv4_gateway(&self) -> Ipv4Addr {
        let o = self.ipv4_net.octets();
        Ipv4Addr::new(o[0], o[1], 0, 1)
    }

    /// The IPv4 address held by `tap`, allocating the lowest free one.
    fn ipv4_for(&self, tap: &str) -> Result<Ipv4Addr, BackendError> {
        let mut a = self.alloc.lock().expect("alloc lock");
        if let Some(ip) = a.get(tap) {
            return Ok(*ip);
        }
        let o = self.ipv4_net.octets();
        let used: std::collections::BTreeSet<Ipv4Addr> = a.values().copied().collect();
        let ip = (2u32..65534)
            .map(|i| Ipv4Addr::new(o[0], o[1], (i >> 8) as u8, i as u8))
            .find(|ip| !used.contains(ip) && ip.octets()[3] != 0 && ip.octets()[3] != 255)
            .ok_or_else(|| BackendError::new("network", "the instance IPv4 range is exhausted"))?;
        a.insert(tap.to_owned(), ip);
        self.save(&a)?;
        Ok(ip)
    }

    fn release_ipv4(&self, tap: &str) -> Result<(), BackendError> {
        let mut a = self.alloc.lock().expect("alloc lock");
        if a.remove(tap).is_some() {
            self.save(&a)?;
        }
        Ok(())
    }

    fn save(&self, a: &BTreeMap<String, Ipv4Addr>) -> Result<(), BackendError> {
        let Some(f) = &self.alloc_file else {
            return Ok(());
        };
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(a).expect("json"))
            .and_then(|()| std::fs::rename(&tmp, f))
            .map_err(|e| BackendError::new("network", format!("persist IPv4 allocations: {e}")))
    }

    fn gateway(&self) -> Ipv6Addr {
        let mut s = self.prefix.segments();
        s[4..].copy_from_slice(&[0, 0, 0, 1]);
        Ipv6Addr::from(s)
    }

    /// The guest address of `key`: its hash in the low 64 bits (never ::1, the gateway).
    pub fn guest_addr(&self, key: &str) -> Ipv6Addr {
        let h = Sha256::digest(key.as_bytes());
        let mut s = self.prefix.segments();
        for i in 0..4 {
            s[4 + i] = u16::from_be_bytes([h[2 * i], h[2 * i + 1]]);
        }
        s[4] |= 0x0200; // keep clear of ::1 and other low host ids
        Ipv6Addr::from(s)
    }

    /// The instance's address: the allocated one when it is in this host's /64 (and not the
    /// bridge's `::1`), else the one derived from `key` (logged: the host's prefix and the
    /// control plane's disagree, e.g. an agent without the overlay).
    pub fn address_for(&self, key: &str, allocated: Option<Ipv6Addr>) -> Ipv6Addr {
        match allocated {
            Some(a) if a.segments()[..4] == self.prefix.segments()[..4] && a != self.gateway() => a,
            Some(a) => {
                tracing::warn!(allocated = %a, prefix = %self.prefix, key, "the allocated address is not in this host's /64; using one derived from the instance key");
                self.guest_addr(key)
            }
            None => self.guest_addr(key),
        }
    }

    pub fn tap_name(key: &str) -> String {
        format!("sbt{}", &hex::encode(Sha256::digest(key.as_bytes()))[..8])
    }

    /// The nftables ruleset this module owns (applied atomically with `nft -f`).
    pub fn ruleset(&self) -> String {
        format!(
            "table inet scalebox {{}}\nflush table inet scalebox\ntable inet scalebox {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{br}\" oifname \"{br}\" accept\n    ct state established,related accept\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    oifname != \"{br}\" ip saddr {net}/16 masquerade\n  }}\n}}\n",
            br = self.bridge,
            net = self.ipv4_net
        )
    }

    /// Creates the bridge, its gateway address and the nftables table (idempotent).
    pub fn ensure_bridge(&self) -> Result<(), BackendError> {
        if !exists(&self.bridge) {
            run(&["ip", "link", "add", "name", &self.bridge, "type", "bridge"])?;
        }
        run(&[
            "ip",
            "-6",
            "addr",
            "replace",
            &format!("{}/64", self.gateway()),
            "dev",
            &self.bridge,
            "nodad",
        ])?;
        run(&[
            "ip",
            "addr",
            "replace",
            &format!("{}/16", self.ipv4_gateway()),
            "dev",
            &self.bridge,
        ])?;
        // Routing between the bridge and the uplink (per network namespace).
        for knob in [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            std::fs::write(knob, "1").map_err(|e| {
                BackendError::new("network", format!("enable forwarding ({knob}): {e}"))
            })?;
        }
        run(&["ip", "link", "set", &self.bridge, "up"])?;
        nft_apply(&self.ruleset())
    }
}

/// Applies an nftables ruleset (`nft -f -`) as one transaction.
pub fn nft_apply(ruleset: &str) -> Result<(), BackendError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            BackendError::new(
                "network",
                format!("cannot run nft (Debian package nftables): {e}"),
            )
        })?;
    use std::io::Write;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(ruleset.as_bytes()),
        None => Err(std::io::Error::other("nft has no stdin")),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| BackendError::new("network", e.to_string()))?;
    written.map_err(|e| BackendError::new("network", format!("nft: {e}")))?;
    if !out.status.success() {
        return Err(BackendError::new(
            "network",
            format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(())
}

impl Network for TapNetwork {
    fn ensure(
        &self,
        key: &str,
        ipv6: Option<Ipv6Addr>,
    ) -> BoxFut<'_, Result<NetAttachment, BackendError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let addr = self.address_for(&key, ipv6);
            self.ensure_bridge()?;
            let tap = Self::tap_name(&key);
            if !exists(&tap) {
                run(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            }
            run(&["ip", "link", "set", &tap, "master", &self.bridge])?;
            run(&["ip", "link", "set", &tap, "up"])?;
            let ipv4 = Some((self.ipv4_for(&tap)?, 16));
            Ok(NetAttachment {
                tap,
                guest_addr: IpAddr::V6(addr),
                mac: None,
                ipv4,
            })
        })
    }

    fn remove(&self, tap: &str) -> BoxFut<'_, Result<(), BackendError>> {
        let tap = tap.to_owned();
        Box::pin(async move {
            if exists(&tap) {
                run(&["ip", "link", "del", &tap])?;
            }
            self.release_ipv4(&tap)
        })
    }

    fn list_taps(&self) -> BoxFut<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            Ok(std::fs::read_dir("/sys/class/net")
                .map_err(|e| BackendError::new("network", e.to_string()))?
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with("sbt") && n.len() == 11)
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_stable_and_in_the_prefix() {
        let n = TapNetwork::default();
        let a = n.guest_addr("web-1-g1");
        assert_eq!(a, n.guest_addr("web-1-g1"));
        assert_ne!(a, n.guest_addr("web-2-g1"));
        assert_eq!(a.segments()[..4], n.prefix.segments()[..4]);
        assert_ne!(a, n.gateway());
        assert_eq!(TapNetwork::tap_name("web-1-g1").len(), 11);
        assert!(n.ruleset().contains("table inet scalebox"));
        assert!(n.ruleset().contains("ip saddr 10.88.0.0/16 masquerade"));
    }

    #[test]
    fn allocated_addresses_are_used_only_inside_the_hosts_prefix() {
        let n = TapNetwork::default();
        let mut s = n.prefix.segments();
        s[7] = 7;
        let inside = Ipv6Addr::from(s);
        assert_eq!(n.address_for("web-1-g1", Some(inside)), inside);
        let outside: Ipv6Addr = "fd99::7".parse().unwrap();
        assert_eq!(
            n.address_for("web-1-g1", Some(outside)),
            n.guest_addr("web-1-g1")
        );
        assert_eq!(
            n.address_for("web-1-g1", Some(n.gateway())),
            n.guest_addr("web-1-g1")
        );
        assert_eq!(n.address_for("web-1-g1", None), n.guest_addr("web-1-g1"));
    }

    #[test]
    fn ipv4_allocations_are_unique_persisted_and_released() {
        let d = tempfile::tempdir().unwrap();
        let cfg = crate::config::AgentConfig {
            data_dir: d.path().to_owned(),
            ..Default::default()
        };
        let n = TapNetwork::new(&cfg);
        let a = n.ipv4_for("sbt00000001").unwrap();
        let b = n.ipv4_for("sbt00000002").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(n.ipv4_for("sbt00000001").unwrap(), a, "stable while held");
        let again = TapNetwork::new(&cfg);
        assert_eq!(again.ipv4_for("sbt00000002").unwrap(), b, "persisted");
        again.release_ipv4("sbt00000001").unwrap();
        assert_eq!(
            again.ipv4_for("sbt00000003").unwrap(),
            a,
            "reused only after release"
        );
    }
}

/// Port forwarding hooks (for SSH/mosh access to VMs and raw ports): DNAT from a host port to an
/// instance, in the nftables table `inet scalebox_fwd`, one tagged rule per forward in both
/// `prerouting` (traffic arriving from outside) and `output` (connections made on the host
/// itself). Adding the same tag twice replaces the earlier rules.
pub mod forward {
    use std::net::Ipv4Addr;

    use super::run;
    use crate::backend::BackendError;

    /// Transport protocol of a forward.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Proto {
        Tcp,
        Udp,
    }

    impl Proto {
        fn as_str(self) -> &'static str {
            match self {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            }
        }
    }

    fn check_tag(tag: &str) -> Result<(), BackendError> {
        if tag.is_empty()
            || tag.len() > 64
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BackendError::new(
                "network",
                format!("invalid forward tag {tag:?}: use 1-64 letters, digits, '-' or '_'"),
            ));
        }
        Ok(())
    }

    fn ensure_table() -> Result<(), BackendError> {
        // `add` is idempotent for tables and chains that already exist.
        run(&["nft", "add table inet scalebox_fwd"])?;
        for chain in ["prerouting", "output"] {
            run(&[
                "nft",
                &format!(
                    "add chain inet scalebox_fwd {chain} {{ type nat hook {chain} priority -100 ; }}"
                ),
            ])?;
        }
        Ok(())
    }

    /// Forwards `proto` `host_port` to `guest:guest_port`, tagged `tag`.
    pub fn add(
        proto: Proto,
        host_port: u16,
        guest: Ipv4Addr,
        guest_port: u16,
        tag: &str,
    ) -> Result<(), BackendError> {
        check_tag(tag)?;
        ensure_table()?;
        remove(tag)?;
        for chain in ["prerouting", "output"] {
            let rule = format!(
                "add rule inet scalebox_fwd {chain} {p} dport {host_port} dnat ip to {guest}:{guest_port} comment \"sb:{tag}\"",
                p = proto.as_str()
            );
            run(&["nft", &rule])?;
        }
        Ok(())
    }

    /// Removes the rules tagged `tag` (none is fine).
    pub fn remove(tag: &str) -> Result<(), BackendError> {
        check_tag(tag)?;
        for (chain, handle, t) in list_rules()? {
            if t == tag {
                run(&[
                    "nft",
                    "delete",
                    "rule",
                    "inet",
                    "scalebox_fwd",
                    &chain,
                    "handle",
                    &handle,
                ])?;
            }
        }
        Ok(())
    }

    /// Tags of the forwards in place.
    pub fn list() -> Result<Vec<String>, BackendError> {
        let mut tags: Vec<String> = list_rules()?.into_iter().map(|(_, _, t)| t).collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// (chain, handle, tag) of every tagged rule.
    fn list_rules() -> Result<Vec<(String, String, String)>, BackendError> {
        let Ok(text) = run(&["nft", "-a", "list", "table", "inet", "scalebox_fwd"]) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        let mut chain = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(c) = line.strip_prefix("chain ") {
                // `chain prerouting { # handle 1`
                chain = c.split_whitespace().next().unwrap_or_default().to_owned();
            }
            if let (Some(i), Some(h)) = (line.find("comment \"sb:"), line.rfind("# handle ")) {
                let tag = line[i + 12..]
                    .split('"')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                out.push((chain.clone(), line[h + 9..].trim().to_owned(), tag));
            }
        }
        Ok(out)
    }
}
