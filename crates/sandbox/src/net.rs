//! Host networking of VM sandboxes: the VM bridge with its gateway address and egress NAT
//! (nftables table `ip scalebox_vm`), one TAP per VM (`sbv` + 12 hex of the VM id, so orphans are
//! recognisable), MACs derived from the VM id (`AA:FC:…`), and address/port allocation (pure).
//! mosh's UDP forwarding uses the agent's tagged DNAT rules (`tap_network::forward`, tag = VM id).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use scalebox_agent::backend::BackendError;
use scalebox_agent::tap_network::{self, forward, run};

use crate::config::SandboxConfig;

pub const TAP_PREFIX: &str = "sbv";

/// The TAP device of a VM.
pub fn tap_name(vm_id: &str) -> String {
    format!("{TAP_PREFIX}{}", vm_id.trim_start_matches("vm-"))
}

/// `AA:FC:` followed by the first four bytes of the VM id's hex.
pub fn mac_for(vm_id: &str) -> String {
    let h = vm_id.trim_start_matches("vm-");
    let b: Vec<&str> = (0..4)
        .map(|i| h.get(i * 2..i * 2 + 2).unwrap_or("00"))
        .collect();
    format!("AA:FC:{}", b.join(":")).to_uppercase()
}

/// The lowest free address of the bridge's subnet (after the gateway), or `None` when full.
pub fn allocate_ip(cfg: &SandboxConfig, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gw = u32::from(cfg.bridge_address);
    let mask = u32::MAX << (32 - cfg.bridge_prefix);
    let net = gw & mask;
    let broadcast = net | !mask;
    (net + 1..broadcast)
        .map(Ipv4Addr::from)
        .find(|a| u32::from(*a) != gw && !taken.contains(a))
}

/// Free ports of the range in order (the caller tries to bind them).
pub fn free_ports(range: (u16, u16), taken: &HashSet<u16>) -> impl Iterator<Item = u16> + '_ {
    (range.0..=range.1).filter(move |p| !taken.contains(p))
}

fn exists(dev: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(dev).exists()
}

fn err(e: BackendError) -> String {
    e.message
}

/// The nftables ruleset of the VM network (replaced as a whole, idempotent).
pub fn ruleset(cfg: &SandboxConfig) -> String {
    let mask = u32::MAX << (32 - cfg.bridge_prefix);
    let net = Ipv4Addr::from(u32::from(cfg.bridge_address) & mask);
    format!(
        "table ip scalebox_vm {{}}\nflush table ip scalebox_vm\ntable ip scalebox_vm {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    oifname != \"{br}\" ip saddr {net}/{len} masquerade\n  }}\n}}\n",
        br = cfg.bridge,
        len = cfg.bridge_prefix,
    )
}

/// Creates the bridge, its gateway address, IPv4 forwarding and the NAT table (idempotent).
pub fn ensure_bridge(cfg: &SandboxConfig) -> Result<(), String> {
    if !exists(&cfg.bridge) {
        run(&["ip", "link", "add", "name", &cfg.bridge, "type", "bridge"]).map_err(err)?;
    }
    run(&[
        "ip",
        "addr",
        "replace",
        &format!("{}/{}", cfg.bridge_address, cfg.bridge_prefix),
        "dev",
        &cfg.bridge,
    ])
    .map_err(err)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| format!("enable IPv4 forwarding: {e}"))?;
    run(&["ip", "link", "set", &cfg.bridge, "up"]).map_err(err)?;
    tap_network::nft_apply(&ruleset(cfg)).map_err(err)
}

/// Creates the VM's TAP on the bridge (idempotent).
pub fn create_tap(cfg: &SandboxConfig, tap: &str) -> Result<(), String> {
    if !exists(tap) {
        run(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]).map_err(err)?;
    }
    run(&["ip", "link", "set", tap, "master", &cfg.bridge]).map_err(err)?;
    run(&["ip", "link", "set", tap, "up"]).map_err(err)?;
    Ok(())
}

/// Deletes a TAP (absent is fine).
pub fn delete_tap(tap: &str) -> Result<(), String> {
    if exists(tap) {
        run(&["ip", "link", "del", tap]).map_err(err)?;
    }
    Ok(())
}

/// TAPs that look like ours.
pub fn list_taps() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(TAP_PREFIX) && n.len() == TAP_PREFIX.len() + 12)
        .collect()
}

/// UDP `port` on the host → the VM's same port (mosh).
pub fn forward_udp(vm_id: &str, port: u16, ip: Ipv4Addr) -> Result<(), String> {
    forward::add(forward::Proto::Udp, port, ip, port, vm_id).map_err(err)
}

pub fn unforward(vm_id: &str) -> Result<(), String> {
    forward::remove(vm_id).map_err(err)
}

/// VM ids that have forwarding rules.
pub fn forwarded_vms() -> Vec<String> {
    forward::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| crate::names::is_id(t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_macs_and_allocation() {
        assert_eq!(tap_name("vm-0123456789ab"), "sbv0123456789ab");
        assert_eq!(tap_name("vm-0123456789ab").len(), 15);
        assert_eq!(mac_for("vm-0123456789ab"), "AA:FC:01:23:45:67");
        let cfg = SandboxConfig::default();
        let mut taken = HashSet::new();
        let a = allocate_ip(&cfg, &taken).unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 16, 0, 2));
        taken.insert(a);
        assert_eq!(
            allocate_ip(&cfg, &taken).unwrap(),
            Ipv4Addr::new(172, 16, 0, 3)
        );
        let small = SandboxConfig {
            bridge_address: Ipv4Addr::new(10, 9, 0, 1),
            bridge_prefix: 30,
            ..SandboxConfig::default()
        };
        let mut t = HashSet::new();
        assert_eq!(allocate_ip(&small, &t), Some(Ipv4Addr::new(10, 9, 0, 2)));
        t.insert(Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(allocate_ip(&small, &t), None, "a /30 holds one VM");
        let ports: Vec<u16> = free_ports((22001, 22004), &[22002].into()).collect();
        assert_eq!(ports, [22001, 22003, 22004]);
        assert!(ruleset(&cfg).contains("ip saddr 172.16.0.0/16 masquerade"));
    }
}
