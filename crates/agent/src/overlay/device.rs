//! The host's WireGuard device: kernel WireGuard (`ip link add … type wireguard`, configured with
//! `wg`, which speaks netlink) when the module loads, else userspace boringtun on a TUN device
//! inside the agent, configured through its userspace API over a private socket pair (so no
//! `/var/run/wireguard` socket is shared between agents). Also the interface's address, MTU and
//! the cluster route.

use std::io::{Read, Write};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use scalebox_overlay::{Change, Ipv6Net, Peer, PrivateKey};
use serde::{Deserialize, Serialize};

use super::uapi::{self, PeerStats};
use crate::tap_network::run;

/// Which WireGuard implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Kernel WireGuard when the module is available, else userspace.
    Auto,
    Kernel,
    Userspace,
}

enum Kind {
    Kernel,
    Userspace {
        api: Mutex<UnixStream>,
        _handle: Box<boringtun::device::DeviceHandle>,
    },
}

/// A configured WireGuard interface.
pub struct Device {
    name: String,
    kind: Kind,
    keepalive: u16,
}

fn err(m: impl Into<String>) -> String {
    m.into()
}

impl Device {
    /// Creates (or, for the kernel, re-uses) interface `name` with `key` listening on
    /// `listen_port`. Peers are added by [`Device::apply`].
    pub fn create(
        name: &str,
        mode: Mode,
        key: &PrivateKey,
        key_file: &std::path::Path,
        listen_port: u16,
        keepalive: u16,
    ) -> Result<Device, String> {
        let kernel = match mode {
            Mode::Userspace => false,
            Mode::Kernel => true,
            Mode::Auto => {
                exists(name) && is_kernel_wireguard(name)
                    || run(&["ip", "link", "add", name, "type", "wireguard"]).is_ok()
            }
        };
        let dev = if kernel {
            if !exists(name) {
                run(&["ip", "link", "add", name, "type", "wireguard"]).map_err(|e| {
                    err(format!(
                        "kernel WireGuard is not available ({e}); use overlay.mode = \"userspace\""
                    ))
                })?;
            }
            // The key file holds the base64 form `wg` reads.
            let path = key_file.to_string_lossy().into_owned();
            wg(&[
                "set",
                name,
                "private-key",
                &path,
                "listen-port",
                &listen_port.to_string(),
            ])?;
            Device {
                name: name.into(),
                kind: Kind::Kernel,
                keepalive,
            }
        } else {
            if exists(name) {
                // A TUN left by a previous agent process would make the new one fail.
                let _ = run(&["ip", "link", "del", name]);
            }
            let (ours, theirs) =
                UnixStream::pair().map_err(|e| err(format!("socket pair: {e}")))?;
            ours.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| err(e.to_string()))?;
            let cfg = boringtun::device::DeviceConfig {
                n_threads: 2,
                use_connected_socket: true,
                use_multi_queue: false,
                uapi_fd: theirs.into_raw_fd(),
            };
            let handle = boringtun::device::DeviceHandle::new(name, cfg).map_err(|e| {
                err(format!(
                    "cannot create the userspace WireGuard device {name} ({e:?}); it needs root and /dev/net/tun"
                ))
            })?;
            let d = Device {
                name: name.into(),
                kind: Kind::Userspace {
                    api: Mutex::new(ours),
                    _handle: Box::new(handle),
                },
                keepalive,
            };
            d.uapi(&uapi::set_interface(key, listen_port))
                .and_then(|a| uapi::parse_set(&a).map_err(|e| e.to_string()))
                .map_err(|e| err(format!("configuring {name}: {e}")))?;
            d
        };
        Ok(dev)
    }

    /// `kernel` or `userspace`.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Kernel => "kernel",
            Kind::Userspace { .. } => "userspace",
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn uapi(&self, cmd: &str) -> Result<String, String> {
        let Kind::Userspace { api, .. } = &self.kind else {
            return Err("not a userspace device".into());
        };
        let mut s = api.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(cmd.as_bytes())
            .map_err(|e| format!("WireGuard device API: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // The answer ends with "errno=N\n\n".
        loop {
            let n = s
                .read(&mut chunk)
                .map_err(|e| format!("WireGuard device API: {e}"))?;
            if n == 0 {
                return Err("the WireGuard device stopped".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 24 {
                return Err("WireGuard device answer too long".into());
            }
            let text = String::from_utf8_lossy(&buf);
            if let Some(i) = text.rfind("errno=")
                && text[i..].contains("\n\n")
            {
                return Ok(text.into_owned());
            }
        }
    }

    /// Applies `changes` to a device whose peers are `current`.
    pub fn apply(&self, current: &[Peer], changes: &[Change]) -> Result<(), String> {
        match &self.kind {
            Kind::Userspace { .. } => {
                let Some(cmd) = uapi::set_peers(current, changes, self.keepalive) else {
                    return Ok(());
                };
                let a = self.uapi(&cmd)?;
                uapi::parse_set(&a).map_err(|e| e.to_string())
            }
            Kind::Kernel => {
                for args in uapi::wg_set_args(current, changes, self.keepalive) {
                    let mut a = vec!["set", self.name.as_str()];
                    a.extend(args.iter().map(String::as_str));
                    wg(&a)?;
                }
                Ok(())
            }
        }
    }

    /// Every configured peer's counters.
    pub fn stats(&self) -> Result<Vec<PeerStats>, String> {
        match &self.kind {
            Kind::Userspace { .. } => {
                uapi::parse_get(&self.uapi("get=1\n")?).map_err(|e| e.to_string())
            }
            Kind::Kernel => {
                let out = wg(&["show", &self.name, "dump"])?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                uapi::parse_dump(&out, now).map_err(|e| e.to_string())
            }
        }
    }

    /// The host's overlay address (`address/128`), MTU, link up, and one route for the whole
    /// cluster /48 through the device with `address` as source (WireGuard then picks the peer by
    /// its allowed IPs). Idempotent.
    pub fn configure_ip(
        &self,
        address: std::net::Ipv6Addr,
        cluster: Ipv6Net,
        mtu: u32,
    ) -> Result<(), String> {
        let n = self.name.as_str();
        let e = |x: crate::backend::BackendError| x.to_string();
        run(&["ip", "link", "set", n, "mtu", &mtu.to_string(), "up"]).map_err(e)?;
        run(&[
            "ip",
            "-6",
            "addr",
            "replace",
            &format!("{address}/128"),
            "dev",
            n,
            "nodad",
        ])
        .map_err(e)?;
        run(&[
            "ip",
            "-6",
            "route",
            "replace",
            &cluster.to_string(),
            "dev",
            n,
            "src",
            &address.to_string(),
        ])
        .map_err(e)?;
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // The userspace TUN goes with the process; a kernel device stays for the next start
        // (tunnels keep working while the agent restarts).
        if let Kind::Userspace { .. } = self.kind {
            let _ = run(&["ip", "link", "del", &self.name]);
        }
    }
}

fn exists(dev: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(dev).exists()
}

fn is_kernel_wireguard(dev: &str) -> bool {
    run(&["ip", "-d", "link", "show", dev]).is_ok_and(|o| o.contains("wireguard"))
}

fn wg(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("wg")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run wg (Debian package wireguard-tools): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "wg {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
