//! Control-channel protocol, version 1 (documented in `docs/guest.md`).
//!
//! Transport: a byte stream (virtio-serial port `scalebox.0` on QEMU, vsock port 1024 on
//! Firecracker). Framing: one JSON object per line (`\n`-terminated, at most 1 MiB). Every
//! message has a `"type"`. Unknown types are ignored by both sides (forward compatibility).
//!
//! Flow: the host connects and sends `attach`; the guest answers `hello` with its state (it also
//! sends `hello` unprompted once it is up). In state `waiting` the host sends `run` (once); the
//! guest sends `started`, any number of `log`, then `exit` exactly once, and powers off. The host
//! may send `signal` at any time after `started`, and `exec` (a command run next to the
//! workload, answered by `exec_output` lines and one `exec_exit`) while it runs. A host that reconnects (agent restarted) sends
//! `attach` again and learns from `hello` whether the workload is `running` (with its pid) or
//! already `exited` (with its status); it never sends `run` twice.
//!
//! VM sandboxes send `boot` instead of `run`: the guest mounts the root filesystem, sets the
//! hostname, network and SSH keys, starts a helper on the channel and execs the root's own init.
//! The helper answers `attach` with `hello` in state `booted` and `sync` with `synced`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;

/// Longest accepted line.
pub const MAX_LINE: usize = 1 << 20;

/// Network configuration for `eth0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Net {
    /// IPv6 address with prefix length, e.g. `fd00:5ca1:e::2/64`.
    #[serde(default)]
    pub ipv6: Option<String>,
    #[serde(default)]
    pub ipv6_gateway: Option<String>,
    /// IPv4 address with prefix length, e.g. `10.200.0.2/24` (egress NAT).
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv4_gateway: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
}

/// A block device to mount (volumes), by virtio-blk order (`/dev/vdb`, `/dev/vdc`...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub device: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Everything the guest needs to run the workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// argv of the workload (entrypoint + cmd, or the process type's command).
    pub argv: Vec<String>,
    /// `KEY=value` environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// `uid[:gid]` or `name[:group]` resolved against the image's /etc/passwd and /etc/group.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Root filesystem device (default `/dev/vda`).
    #[serde(default)]
    pub root_device: Option<String>,
    #[serde(default)]
    pub net: Net,
    /// Secret values; written in the secrets file format (`docs/secrets-file.md`).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Where the secrets file is mounted (default `/run/secrets/scalebox.env`).
    #[serde(default)]
    pub secrets_path: Option<String>,
    /// Also export secrets as environment variables.
    #[serde(default)]
    pub secrets_as_env: bool,
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

impl std::fmt::Display for RunConfig {
    /// Never prints secret values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "argv={:?} user={:?} workdir={:?} secrets={:?}",
            self.argv,
            self.user,
            self.workdir,
            self.secrets.keys().collect::<Vec<_>>()
        )
    }
}

/// SSH public keys to install for a user of the booted system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthorizedKeys {
    /// A user of the root filesystem's /etc/passwd.
    pub user: String,
    /// `authorized_keys` lines (replace the file's content).
    pub keys: Vec<String>,
}

/// Boot the root filesystem's own init instead of running a workload (VM sandboxes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootConfig {
    /// Hostname, also written to the root filesystem's /etc/hostname and /etc/hosts.
    pub hostname: String,
    /// Root filesystem device (default `/dev/vda`).
    #[serde(default)]
    pub root_device: Option<String>,
    #[serde(default)]
    pub net: Net,
    #[serde(default)]
    pub authorized_keys: Option<AuthorizedKeys>,
    /// The init to exec as PID 1 (default `/sbin/init`).
    #[serde(default)]
    pub init: Option<String>,
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMsg {
    /// Ask for a `hello` (sent on every connect).
    Attach,
    Run {
        config: Box<RunConfig>,
    },
    /// In state `waiting`: prepare the root filesystem and exec its own init (`hello` then says
    /// `booted`, answered by a helper process that keeps serving `attach` and `sync`).
    Boot {
        config: Box<BootConfig>,
    },
    /// Flush every filesystem to its disk (before a snapshot); answered by `synced`.
    Sync,
    /// Deliver a signal (by number) to the workload.
    Signal {
        signal: i32,
    },
    /// Run a command next to the workload (same root, user, environment and working directory;
    /// stdin is empty). Answered by `exec_output`* then exactly one `exec_exit` with the same id.
    Exec {
        id: String,
        argv: Vec<String>,
        /// Run it on a pseudo-terminal (interactive): stdin comes from `exec_input`, output
        /// arrives as `data_hex`, and the window size is `rows`×`cols` (`exec_resize` changes it).
        #[serde(default)]
        tty: bool,
        #[serde(default)]
        rows: u16,
        #[serde(default)]
        cols: u16,
    },
    /// Input for a tty `exec` (hex-encoded bytes).
    ExecInput {
        id: String,
        data_hex: String,
    },
    /// New window size of a tty `exec`.
    ExecResize {
        id: String,
        rows: u16,
        cols: u16,
    },
}

/// How the workload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// Signal number when it was killed by one.
    pub signal: Option<i32>,
    /// Whether the guest kernel's OOM killer fired while it ran.
    pub oom: bool,
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMsg {
    /// `state`: `waiting` (send `run`), `running`, or `exited`.
    Hello {
        version: u32,
        state: String,
        #[serde(default)]
        pid: Option<i32>,
        #[serde(default)]
        exit: Option<ExitStatus>,
    },
    Started {
        pid: i32,
    },
    /// A line (or chunk) of workload output; `stream` is `stdout` or `stderr`.
    Log {
        stream: String,
        data: String,
    },
    Exit {
        status: ExitStatus,
    },
    /// A fatal error before the workload could run (bad config, missing binary, mount failure).
    Error {
        message: String,
    },
    /// Output of an `exec`; `stream` is `stdout` or `stderr`.
    ExecOutput {
        id: String,
        stream: String,
        /// Text output (non-tty exec).
        #[serde(default)]
        data: String,
        /// Raw terminal output, hex-encoded (tty exec).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_hex: Option<String>,
    },
    /// Answer to `sync`: every filesystem was flushed.
    Synced,
    /// How an `exec` ended; `error` when it could not start (`code`/`signal` then absent).
    ExecExit {
        id: String,
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
        #[serde(default)]
        error: Option<String>,
    },
}

/// Encodes a message as one line.
pub fn encode<T: Serialize>(m: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(m).expect("protocol messages serialize");
    v.push(b'\n');
    v
}

/// Decodes one line; `None` for unknown message types (ignored by design).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<Option<T>, String> {
    match serde_json::from_slice::<T>(line) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            let v: serde_json::Value =
                serde_json::from_slice(line).map_err(|_| format!("malformed message: {e}"))?;
            if v.get("type").and_then(|t| t.as_str()).is_some()
                && e.to_string().contains("unknown variant")
            {
                Ok(None)
            } else {
                Err(format!("malformed message: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_types() {
        let m = HostMsg::Signal { signal: 15 };
        let line = encode(&m);
        assert_eq!(line, b"{\"type\":\"signal\",\"signal\":15}\n");
        assert_eq!(decode::<HostMsg>(&line[..line.len() - 1]).unwrap(), Some(m));
        assert_eq!(
            decode::<HostMsg>(br#"{"type":"exec_v9","x":1}"#).unwrap(),
            None
        );
        assert!(decode::<HostMsg>(b"garbage").is_err());
        let e = GuestMsg::Exit {
            status: ExitStatus {
                code: None,
                signal: Some(9),
                oom: true,
            },
        };
        let l = encode(&e);
        assert_eq!(decode::<GuestMsg>(&l[..l.len() - 1]).unwrap(), Some(e));
    }

    #[test]
    fn display_hides_secret_values() {
        let mut c = RunConfig::default();
        c.secrets.insert("K".into(), "hunter2".into());
        assert!(!c.to_string().contains("hunter2"));
    }
}
