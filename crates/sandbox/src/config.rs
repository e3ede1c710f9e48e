//! Settings of the VM surface (`[vms]` in the control plane's TOML file): every one defaulted for
//! a single machine; unknown keys rejected.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Serve `/vms` and `/templates` (and run VMs on this host). Default: on under
    /// `scaleboxd up` with microVMs, off for `scaleboxd control`.
    pub enabled: Option<bool>,
    /// Templates (`templates/`) and VM disks (`vms/`). Default: `<control data_dir>/sandbox`.
    pub data_dir: Option<PathBuf>,
    /// Where the guest kernel, initramfs and accelerator probe live (shared with the host agent
    /// in `scaleboxd up`). Default: `data_dir`.
    pub runtime_dir: Option<PathBuf>,
    /// The host's external address, shown as a VM's `ip` and in its `ssh` command. Default: the
    /// source address of the host's default route, else 127.0.0.1.
    pub host_ip: Option<IpAddr>,
    /// Where the API is served with TLS (optional).
    pub api_domain: Option<String>,
    /// VMs are reachable at `https://{name}.{vm_domain}` (optional; needs wildcard DNS).
    pub vm_domain: Option<String>,
    /// SSH (TCP) and mosh (UDP) host ports are allocated from this inclusive range.
    pub port_range: (u16, u16),
    /// Address the SSH proxies listen on.
    pub proxy_listen: IpAddr,
    /// The VM bridge and its gateway address / prefix length (VMs get the following addresses).
    pub bridge: String,
    pub bridge_address: Ipv4Addr,
    pub bridge_prefix: u8,
    /// DNS servers written to a VM's /etc/resolv.conf.
    pub nameservers: Vec<String>,
    /// Templates that cannot be deleted.
    pub protected_templates: Vec<String>,
    pub default_vcpus: u32,
    pub default_mem_mib: u32,
    pub max_vcpus: u32,
    pub max_mem_mib: u32,
    pub max_disk_gib: u32,
    /// Memory kept free for the host: a VM is refused when the VMs' memory would exceed
    /// (host memory − this).
    pub reserved_mem_mib: u32,
    /// Force the accelerator (`kvm` or `tcg`); default: detected.
    pub accel: Option<String>,
    /// Seconds a VM has to reach its own init after the VMM starts.
    pub boot_timeout_s: u64,
    /// Build `debian-base` with debootstrap when it is missing or older than this build's
    /// version (needs the Debian mirror).
    pub build_base_template: bool,
    /// The HTTPS gateway (`[vms.gateway]`, docs/gateway.md).
    pub gateway: crate::gateway::GatewayConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enabled: None,
            data_dir: None,
            runtime_dir: None,
            host_ip: None,
            api_domain: None,
            vm_domain: None,
            port_range: (22001, 32000),
            proxy_listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            bridge: "sbvm0".into(),
            bridge_address: Ipv4Addr::new(172, 16, 0, 1),
            bridge_prefix: 16,
            nameservers: vec!["1.1.1.1".into(), "8.8.8.8".into()],
            protected_templates: vec!["debian-base".into()],
            default_vcpus: 1,
            default_mem_mib: 1024,
            max_vcpus: 8,
            max_mem_mib: 16384,
            max_disk_gib: 100,
            reserved_mem_mib: 1024,
            accel: None,
            boot_timeout_s: 120,
            build_base_template: true,
            gateway: crate::gateway::GatewayConfig::default(),
        }
    }
}

impl SandboxConfig {
    /// Checks the settings that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi) = self.port_range;
        if lo == 0 || lo > hi {
            return Err(format!(
                "vms.port_range = [{lo}, {hi}]: expected [low, high] with 1 <= low <= high <= 65535"
            ));
        }
        if !(8..=30).contains(&self.bridge_prefix) {
            return Err(format!(
                "vms.bridge_prefix = {}: expected 8..=30",
                self.bridge_prefix
            ));
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return Err(format!(
                "vms.bridge = {:?}: an interface name of 1-15 characters",
                self.bridge
            ));
        }
        if let Some(a) = &self.accel
            && a != "kvm"
            && a != "tcg"
        {
            return Err(format!("vms.accel = {a:?}: expected \"kvm\" or \"tcg\""));
        }
        if self.default_vcpus == 0 || self.default_vcpus > self.max_vcpus {
            return Err("vms.default_vcpus must be between 1 and vms.max_vcpus".into());
        }
        if self.default_mem_mib < 128 || self.default_mem_mib > self.max_mem_mib {
            return Err("vms.default_mem_mib must be between 128 and vms.max_mem_mib".into());
        }
        for d in [&self.vm_domain, &self.api_domain].into_iter().flatten() {
            if d.is_empty() || d.starts_with('.') || d.contains('/') || d.contains(' ') {
                return Err(format!("domain {d:?} is not a valid DNS name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        SandboxConfig::default().validate().unwrap();
        let c = SandboxConfig {
            port_range: (30000, 22000),
            ..SandboxConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("port_range"));
        let c = SandboxConfig {
            accel: Some("hvf".into()),
            ..SandboxConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("accel"));
    }
}
