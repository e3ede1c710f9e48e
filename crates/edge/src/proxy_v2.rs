//! PROXY protocol version 2 header encoder (pure logic).
//!
//! Encodes the binary header of the HAProxy PROXY protocol v2 for a proxied TCP connection:
//! `TCP4` when both ends are IPv4 (including IPv4-mapped IPv6), otherwise `TCP6` (mapping an
//! IPv4 end into `::ffff:a.b.c.d`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12-byte protocol signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Encodes a `PROXY` command header for a TCP stream from `src` (the client) to `dst` (the
/// address the client connected to).
pub fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = (unmap(src.ip()), unmap(dst.ip()));
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (s, d) {
        (IpAddr::V4(s4), IpAddr::V4(d4)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s4.octets());
            out.extend_from_slice(&d4.octets());
        }
        _ => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&as_v6(s).octets());
            out.extend_from_slice(&as_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_layout() {
        let h = encode(
            "192.0.2.1:5555".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..24], &[192, 0, 2, 1, 198, 51, 100, 2]);
        assert_eq!(&h[24..], &[0x15, 0xb3, 0x01, 0xbb]);
    }

    #[test]
    fn ipv6_and_mapped() {
        let h = encode(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        let m = encode(
            "[::ffff:10.0.0.1]:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
        );
        assert_eq!(m[13], 0x11);
        let mixed = encode(
            "10.0.0.1:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        assert_eq!(mixed[13], 0x21);
        assert_eq!(
            &mixed[16..32],
            &"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }
}
