//! Guest networking without an `ip` binary: loopback up, `eth0` addresses (IPv6 and IPv4) and
//! default routes through the classic ioctls, `/etc/resolv.conf`.

use std::net::{Ipv4Addr, Ipv6Addr};

use scalebox_init::proto::Net;

use crate::sys::Res;

fn parse_cidr<T: std::str::FromStr>(s: &str) -> Res<(T, u8)> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("address {s:?} needs a prefix length (addr/len)"))?;
    let addr = a.parse::<T>().map_err(|_| format!("bad address {a:?}"))?;
    let len = p
        .parse::<u8>()
        .map_err(|_| format!("bad prefix length {p:?}"))?;
    Ok((addr, len))
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        r.ifr_name[i] = b as libc::c_char;
    }
    r
}

fn sock(family: libc::c_int) -> Res<libc::c_int> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        Err(format!("socket: {}", std::io::Error::last_os_error()))
    } else {
        Ok(fd)
    }
}

fn ioctl<T>(fd: libc::c_int, req: libc::c_ulong, arg: &mut T, what: &str) -> Res<()> {
    // SAFETY: `arg` is a valid, properly sized struct for `req`.
    if unsafe { libc::ioctl(fd, req as _, arg as *mut T) } != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn up(fd: libc::c_int, name: &str) -> Res<()> {
    let mut r = ifreq(name);
    ioctl(
        fd,
        libc::SIOCGIFFLAGS,
        &mut r,
        &format!("get flags of {name}"),
    )?;
    // SAFETY: reading the flags member we just filled in.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(fd, libc::SIOCSIFFLAGS, &mut r, &format!("bring {name} up"))
}

fn sin(a: Ipv4Addr) -> libc::sockaddr {
    let s = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the ioctls take them.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(s) }
}

#[repr(C)]
struct In6Ifreq {
    addr: libc::in6_addr,
    prefixlen: u32,
    ifindex: libc::c_int,
}

#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    rtype: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn ifindex(name: &str) -> Res<libc::c_int> {
    let c = std::ffi::CString::new(name).map_err(|_| "bad interface name".to_string())?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(format!(
            "no interface {name} (is the virtio-net module loaded?)"
        ))
    } else {
        Ok(i as libc::c_int)
    }
}

/// `net.ipv4.tcp_fastopen` in every guest: client (0x1), server (0x2), and server on every
/// listener without the per-socket option (0x400). The edge then sends a connection's first
/// bytes (PROXY v2 header, ClientHello) in its SYN to any listener of the workload: one packet
/// and one round trip less per connection, with no change to the application.
pub const TCP_FASTOPEN: &str = "1027";

/// Applies `net` to `eth0` (and brings `lo` up and turns TCP Fast Open on in any case).
pub fn configure(net: &Net) -> Res<()> {
    let fd4 = sock(libc::AF_INET)?;
    up(fd4, "lo")?;
    // Best effort: a kernel without Fast Open still serves plain connections.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", TCP_FASTOPEN) {
        eprintln!("scalebox-init: TCP Fast Open stays off (net.ipv4.tcp_fastopen: {e})");
    }
    let wants = net.ipv4.is_some() || net.ipv6.is_some();
    if !wants {
        return Ok(());
    }
    for _ in 0..100 {
        if ifindex("eth0").is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let idx = ifindex("eth0")?;
    up(fd4, "eth0")?;
    if let Some(v4) = &net.ipv4 {
        let (addr, len) = parse_cidr::<Ipv4Addr>(v4)?;
        let mut r = ifreq("eth0");
        r.ifr_ifru.ifru_addr = sin(addr);
        ioctl(fd4, libc::SIOCSIFADDR, &mut r, "set IPv4 address")?;
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        };
        r.ifr_ifru.ifru_addr = sin(Ipv4Addr::from(mask));
        ioctl(fd4, libc::SIOCSIFNETMASK, &mut r, "set IPv4 netmask")?;
        if let Some(gw) = &net.ipv4_gateway {
            let gw: Ipv4Addr = gw.parse().map_err(|_| format!("bad IPv4 gateway {gw:?}"))?;
            // SAFETY: rtentry is plain old data.
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sin(Ipv4Addr::UNSPECIFIED);
            rt.rt_genmask = sin(Ipv4Addr::UNSPECIFIED);
            rt.rt_gateway = sin(gw);
            rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
            ioctl(fd4, libc::SIOCADDRT, &mut rt, "add IPv4 default route")?;
        }
    }
    if let Some(v6) = &net.ipv6 {
        let fd6 = sock(libc::AF_INET6)?;
        let (addr, len) = parse_cidr::<Ipv6Addr>(v6)?;
        let mut r = In6Ifreq {
            addr: libc::in6_addr {
                s6_addr: addr.octets(),
            },
            prefixlen: len as u32,
            ifindex: idx,
        };
        ioctl(fd6, libc::SIOCSIFADDR, &mut r, "set IPv6 address")?;
        if let Some(gw) = &net.ipv6_gateway {
            let gw: Ipv6Addr = gw.parse().map_err(|_| format!("bad IPv6 gateway {gw:?}"))?;
            let zero = libc::in6_addr { s6_addr: [0; 16] };
            let mut rt = In6Rtmsg {
                dst: zero,
                src: zero,
                gateway: libc::in6_addr {
                    s6_addr: gw.octets(),
                },
                rtype: 0,
                dst_len: 0,
                src_len: 0,
                metric: 1,
                info: 0,
                flags: (libc::RTF_UP | libc::RTF_GATEWAY) as u32,
                ifindex: idx,
            };
            ioctl(fd6, libc::SIOCADDRT, &mut rt, "add IPv6 default route")?;
        }
    }
    if !net.nameservers.is_empty() {
        let text: String = net
            .nameservers
            .iter()
            .map(|n| format!("nameserver {n}\n"))
            .collect();
        let _ = std::fs::create_dir_all("/etc");
        std::fs::write("/etc/resolv.conf", text)
            .map_err(|e| format!("write /etc/resolv.conf: {e}"))?;
    }
    Ok(())
}
