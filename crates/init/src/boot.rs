//! Sandbox boot: instead of running a workload, prepare the root filesystem (hostname, network,
//! SSH keys for a user), start the channel helper and exec the root filesystem's own init, so the
//! VM behaves like a normal machine. The helper (this binary again, `--sandbox-helper`, with the
//! channel on stdin: the serial port, or the vsock listener whose connections it then accepts)
//! keeps answering `attach` (state `booted`) and `sync` (flush before a snapshot) for as long as
//! the guest runs.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use scalebox_init::proto::{self, AuthorizedKeys, BootConfig, GuestMsg, HostMsg};

use crate::sys::{self, Res};
use crate::{channel, net, workload};

/// Prepares the root and replaces this process (PID 1) with the root's init. Returns only on
/// error.
pub fn boot(cfg: &BootConfig, channel: &File) -> Res<()> {
    sys::switch_root(cfg.root_device.as_deref().unwrap_or("/dev/vda"))?;
    set_identity(&cfg.hostname)?;
    net::configure(&cfg.net)?;
    if let Some(k) = &cfg.authorized_keys {
        install_keys(k)?;
    }
    let init = cfg.init.clone().unwrap_or_else(|| "/sbin/init".into());
    if !Path::new(&init).exists() {
        return Err(format!(
            "{init} does not exist in the root filesystem (a VM template needs its own init, e.g. systemd-sysv)"
        ));
    }
    spawn_helper(channel)?;
    let prog = CString::new(init.clone()).map_err(|_| "init path contains NUL".to_string())?;
    let argv = [prog.as_ptr(), std::ptr::null()];
    let envp = [
        c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".as_ptr(),
        c"TERM=linux".as_ptr(),
        std::ptr::null(),
    ];
    // SAFETY: NUL-terminated arrays of valid C strings. Every descriptor we opened is CLOEXEC.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("exec {init}: {}", std::io::Error::last_os_error()))
}

/// Hostname now and in the root's /etc/hostname and /etc/hosts (the booted init reads them).
fn set_identity(name: &str) -> Res<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("hostname {name:?} is not a valid host name"));
    }
    sys::set_hostname(name)?;
    std::fs::write("/etc/hostname", format!("{name}\n"))
        .map_err(|e| format!("write /etc/hostname: {e}"))?;
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    std::fs::write("/etc/hosts", hosts_with(&hosts, name))
        .map_err(|e| format!("write /etc/hosts: {e}"))
}

/// `/etc/hosts` with exactly one `127.0.1.1 <name>` line.
fn hosts_with(text: &str, name: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !out.contains("localhost") {
        out.insert_str(0, "127.0.0.1\tlocalhost\n");
    }
    out.push_str(&format!("127.0.1.1\t{name}\n"));
    out
}

/// Writes `~user/.ssh/authorized_keys` (replacing it), owned by the user, 0600 in a 0700 dir.
fn install_keys(k: &AuthorizedKeys) -> Res<()> {
    if k.keys.iter().any(|l| l.contains('\n')) {
        return Err("an authorized key contains a newline".into());
    }
    let (ids, home) = workload::resolve_user(Some(&k.user))?;
    let dir = Path::new(&home).join(".ssh");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    std::os::unix::fs::chown(&dir, Some(ids.uid), Some(ids.gid))
        .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    let file = dir.join("authorized_keys");
    let tmp = dir.join(".authorized_keys.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let text: String = k.keys.iter().map(|l| format!("{}\n", l.trim())).collect();
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::os::unix::fs::chown(&tmp, Some(ids.uid), Some(ids.gid))
        .map_err(|e| format!("chown {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &file).map_err(|e| format!("install {}: {e}", file.display()))
}

/// Starts `/proc/self/exe --sandbox-helper` with the channel as its stdin.
fn spawn_helper(channel: &File) -> Res<()> {
    let fd = channel
        .try_clone()
        .map_err(|e| format!("dup channel: {e}"))?;
    std::process::Command::new("/proc/self/exe")
        .arg("--sandbox-helper")
        .stdin(std::process::Stdio::from(fd))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("start the channel helper: {e}"))
}

/// The helper's main loop: the channel is fd 0 (the non-blocking serial port, or the vsock
/// listener). Never returns.
pub fn helper_main() -> ! {
    // SAFETY: fd 0 is the channel we were given; File takes ownership of it.
    let port = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(0) };
    if !channel::is_listening_socket(0) {
        serve(port, false);
        std::process::exit(1);
    }
    loop {
        match channel::accept(&port) {
            Ok(conn) => {
                std::thread::spawn(move || serve(conn, true));
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Answers `attach` and `sync` on one channel; a vsock connection (`hangup_ends`) until the host
/// hangs up, the serial port forever.
fn serve(mut port: File, hangup_ends: bool) {
    let mut out = match port.try_clone() {
        Ok(f) => f,
        Err(_) => return,
    };
    if !hangup_ends {
        send(&mut out, &hello());
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        match port.read(&mut chunk) {
            Ok(0) if hangup_ends => return,
            Ok(0) => std::thread::sleep(Duration::from_millis(100)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) if hangup_ends => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            match proto::decode::<HostMsg>(line.trim_ascii_end()) {
                Ok(Some(HostMsg::Attach)) => send(&mut out, &hello()),
                Ok(Some(HostMsg::Sync)) => {
                    // SAFETY: plain syscall.
                    unsafe { libc::sync() };
                    send(&mut out, &GuestMsg::Synced);
                }
                _ => {}
            }
        }
        if buf.len() > proto::MAX_LINE {
            buf.clear();
        }
    }
}

fn hello() -> GuestMsg {
    GuestMsg::Hello {
        version: proto::VERSION,
        state: "booted".into(),
        pid: None,
        exit: None,
    }
}

/// Writes one message, retrying for up to ~10 s while nobody reads the port.
fn send(out: &mut File, m: &GuestMsg) {
    let data = proto::encode(m);
    let mut off = 0;
    let mut tries = 0;
    while off < data.len() {
        match out.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 500 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_gets_one_line_for_the_name() {
        let t = hosts_with(
            "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 localhost\n",
            "new-vm",
        );
        assert_eq!(
            t,
            "127.0.0.1\tlocalhost\n::1 localhost\n127.0.1.1\tnew-vm\n"
        );
        assert_eq!(hosts_with("", "a"), "127.0.0.1\tlocalhost\n127.0.1.1\ta\n");
    }
}
