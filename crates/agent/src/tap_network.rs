//! Host networking for microVMs (the real [`Network`]): one bridge per host carrying the
//! instances' IPv6 /64 (gateway `::1` on the bridge), one TAP per instance enslaved to it, and
//! an nftables table `inet scalebox` that forwards instance traffic and (for the IPv4 egress
//! subnet) masquerades it. Everything is created idempotently with `ip` and `nft`; TAPs are
//! named `sbt<8 hex>` from the instance key so orphans are recognisable. Guest addresses are
//! derived from the key (hash into the /64), so a restarted agent gets the same ones.

use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::backend::*;

/// Network settings of one host.
#[derive(Debug, Clone)]
pub struct TapNetwork {
    pub bridge: String,
    /// The instances' /64 (only the first 64 bits are used).
    pub prefix: Ipv6Addr,
}

impl Default for TapNetwork {
    fn default() -> Self {
        TapNetwork {
            bridge: "sbbr0".into(),
            prefix: "fd5c:a1e0:0:1::".parse().expect("valid"),
        }
    }
}

fn run(args: &[&str]) -> Result<String, BackendError> {
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

    pub fn tap_name(key: &str) -> String {
        format!("sbt{}", &hex::encode(Sha256::digest(key.as_bytes()))[..8])
    }

    /// The nftables ruleset this module owns (applied atomically with `nft -f`).
    pub fn ruleset(&self) -> String {
        format!(
            "table inet scalebox {{}}\nflush table inet scalebox\ntable inet scalebox {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{br}\" oifname \"{br}\" accept\n    ct state established,related accept\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    iifname \"{br}\" oifname != \"{br}\" ip saddr 10.0.0.0/8 masquerade\n  }}\n}}\n",
            br = self.bridge
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
        run(&["ip", "link", "set", &self.bridge, "up"])?;
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
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.ruleset().as_bytes())
            .map_err(|e| BackendError::new("network", e.to_string()))?;
        let out = child
            .wait_with_output()
            .map_err(|e| BackendError::new("network", e.to_string()))?;
        if !out.status.success() {
            return Err(BackendError::new(
                "network",
                format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()),
            ));
        }
        Ok(())
    }
}

impl Network for TapNetwork {
    fn ensure(&self, key: &str) -> BoxFut<'_, Result<NetAttachment, BackendError>> {
        let key = key.to_owned();
        Box::pin(async move {
            self.ensure_bridge()?;
            let tap = Self::tap_name(&key);
            if !exists(&tap) {
                run(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            }
            run(&["ip", "link", "set", &tap, "master", &self.bridge])?;
            run(&["ip", "link", "set", &tap, "up"])?;
            Ok(NetAttachment {
                tap,
                guest_addr: IpAddr::V6(self.guest_addr(&key)),
                mac: None,
            })
        })
    }

    fn remove(&self, tap: &str) -> BoxFut<'_, Result<(), BackendError>> {
        let tap = tap.to_owned();
        Box::pin(async move {
            if exists(&tap) {
                run(&["ip", "link", "del", &tap])?;
            }
            Ok(())
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
    }
}
