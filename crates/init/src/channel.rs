//! The guest's end of the control channel. Two transports carry the same protocol:
//!
//! - the virtio-serial port `scalebox.0` (QEMU): one file for the VM's lifetime; reads return
//!   nothing while no host is connected;
//! - a vsock listener on port [`VSOCK_PORT`] (Firecracker, whose hybrid vsock socket the agent
//!   connects through): every host connection is a new stream, the newest one gets the guest's
//!   messages.
//!
//! `scalebox.channel=vsock` (or `=serial`) on the kernel command line picks one; without it the
//! serial port is used when the VM has a virtio console device, vsock when it has only a vsock
//! device. Every descriptor is close-on-exec and non-blocking (see `Chan::send` in main.rs).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::{self, Res};

/// Name of the virtio-serial port.
pub const PORT_NAME: &str = "scalebox.0";
/// The vsock port init listens on.
pub const VSOCK_PORT: u32 = 1024;

/// virtio device ids (`/sys/bus/virtio/devices/*/device`).
const VIRTIO_CONSOLE: u32 = 3;
const VIRTIO_VSOCK: u32 = 19;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Serial,
    Vsock,
}

/// The transport the kernel command line asks for (`scalebox.channel=vsock|serial`).
pub fn requested(cmdline: &str) -> Option<Kind> {
    cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("scalebox.channel="))
        .next_back()
        .and_then(|v| match v {
            "vsock" => Some(Kind::Vsock),
            "serial" | "virtio-serial" => Some(Kind::Serial),
            _ => None,
        })
}

/// Without a request: the serial port once it shows up; vsock when the VM has a vsock device
/// and no console device (whose port would show up a little later); else keep waiting.
pub fn auto(serial_port: bool, console_device: bool, vsock_device: bool) -> Option<Kind> {
    if serial_port {
        Some(Kind::Serial)
    } else if vsock_device && !console_device {
        Some(Kind::Vsock)
    } else {
        None
    }
}

/// An open transport.
pub enum Link {
    /// The virtio-serial port (read and write).
    Port(File),
    /// The listening vsock socket.
    Vsock(File),
}

/// Finds the transport (waiting up to 10 s for devices to show up) and opens it.
pub fn open() -> Res<Link> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let want = requested(&cmdline);
    for _ in 0..200 {
        let port = find_port();
        let kind = match want {
            Some(Kind::Serial) => port.is_some().then_some(Kind::Serial),
            Some(Kind::Vsock) => Some(Kind::Vsock),
            None => {
                let ids = virtio_device_ids();
                auto(
                    port.is_some(),
                    ids.contains(&VIRTIO_CONSOLE),
                    ids.contains(&VIRTIO_VSOCK),
                )
            }
        };
        match (kind, port) {
            (Some(Kind::Serial), Some(dev)) => return open_port(&dev).map(Link::Port),
            (Some(Kind::Vsock), _) => return vsock_listen(VSOCK_PORT).map(Link::Vsock),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Err(match want {
        Some(Kind::Serial) => format!(
            "control channel {PORT_NAME} not found (virtio_console module and the virtserialport device are required)"
        ),
        _ => format!(
            "no control channel: neither the virtio-serial port {PORT_NAME} nor a virtio vsock device appeared"
        ),
    })
}

/// `/dev/vportNpM` of the port named [`PORT_NAME`].
fn find_port() -> Option<PathBuf> {
    std::fs::read_dir("/sys/class/virtio-ports")
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == PORT_NAME)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
}

fn virtio_device_ids() -> Vec<u32> {
    std::fs::read_dir("/sys/bus/virtio/devices")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let t = std::fs::read_to_string(e.path().join("device")).ok()?;
            u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

fn open_port(dev: &Path) -> Res<File> {
    sys::wait_for_path(dev, 100);
    use std::os::unix::fs::OpenOptionsExt;
    // One open file (ports allow a single opener), non-blocking: see `send`/`reader`.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dev)
        .map_err(|e| format!("open {}: {e}", dev.display()))
}

fn last(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A vsock socket listening on `port` of any local CID. Binding is retried for a while: the
/// transport driver may still be probing its device.
pub fn vsock_listen(port: u32) -> Res<File> {
    // SAFETY: plain socket(2); the fd is owned by the File below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last(
            "vsock socket (are the vsock and vmw_vsock_virtio_transport modules loaded?)",
        ));
    }
    // SAFETY: fd is a new descriptor we own.
    let sock = unsafe { File::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let mut tries = 0;
    loop {
        // SAFETY: a valid sockaddr_vm and its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        tries += 1;
        if tries > 100 {
            return Err(last(&format!("bind vsock port {port}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 4) } != 0 {
        return Err(last(&format!("listen on vsock port {port}")));
    }
    Ok(sock)
}

/// Waits for the next connection on `listener`; the stream is close-on-exec and non-blocking.
pub fn accept(listener: &File) -> Res<File> {
    loop {
        // SAFETY: accept4 on our listening socket without an address buffer.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("accept on the control channel: {e}"));
        }
    }
}

/// Whether `fd` is a listening socket (the sandbox helper gets either the serial port or the
/// vsock listener as its stdin).
pub fn is_listening_socket(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    rc == 0 && v != 0
}

/// Whether two descriptors refer to the same open object (e.g. dups of one connection).
pub fn same_object(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_picks_the_transport() {
        assert_eq!(
            requested("console=ttyS0 quiet scalebox.channel=vsock"),
            Some(Kind::Vsock)
        );
        assert_eq!(requested("scalebox.channel=serial"), Some(Kind::Serial));
        assert_eq!(requested("console=ttyS0 panic=-1"), None);
        assert_eq!(requested("scalebox.channel=carrier-pigeon"), None);
        assert_eq!(
            requested("scalebox.channel=serial scalebox.channel=vsock"),
            Some(Kind::Vsock),
            "the last one wins, as for kernel parameters"
        );
    }

    #[test]
    fn automatic_choice_waits_for_the_port_of_a_console_device() {
        assert_eq!(auto(true, true, true), Some(Kind::Serial));
        assert_eq!(auto(false, false, true), Some(Kind::Vsock));
        assert_eq!(auto(false, true, true), None, "port not announced yet");
        assert_eq!(auto(false, false, false), None);
    }

    #[test]
    fn connections_are_told_apart() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (
            File::from(std::os::fd::OwnedFd::from(a)),
            File::from(std::os::fd::OwnedFd::from(b)),
        );
        let a2 = a.try_clone().unwrap();
        assert!(same_object(&a, &a2));
        assert!(!same_object(&a, &b));
        assert!(!is_listening_socket(a.as_raw_fd()));
        let d = std::env::temp_dir().join(format!("sbinit-l-{}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        let l = std::os::unix::net::UnixListener::bind(&d).unwrap();
        assert!(is_listening_socket(l.as_raw_fd()));
        let _ = std::fs::remove_file(&d);
    }
}
