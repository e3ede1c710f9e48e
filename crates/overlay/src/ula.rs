//! RFC 4193 unique local addresses: the cluster's IPv6 /48.
//!
//! A ULA prefix is `fd00::/8` followed by a 40-bit pseudo-random global id, giving a /48. The
//! caller supplies the 5 random bytes (from the OS random source) and persists the result: the
//! prefix is generated once per cluster and never changes.

use std::net::Ipv6Addr;

use crate::net::Ipv6Net;

/// `fc00::/7`: the whole unique local range (`fd00::/8` is the locally assigned half).
pub fn ula_range() -> Ipv6Net {
    Ipv6Net::trunc(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7)
}

/// The cluster's /48: `fd` followed by the 40-bit global id `random`.
pub fn generate(random: [u8; 5]) -> Ipv6Net {
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&random);
    Ipv6Net::trunc(Ipv6Addr::from(octets), 48)
}

/// Whether `net` is a locally assigned ULA /48 as [`generate`] makes them.
pub fn is_cluster_prefix(net: &Ipv6Net) -> bool {
    net.prefix_len() == 48 && net.addr().octets()[0] == 0xfd
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_value() {
        let n = generate([0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!(n.to_string(), "fd12:3456:789a::/48");
        assert!(is_cluster_prefix(&n));
        assert!(ula_range().contains_net(&n));
        assert!(!is_cluster_prefix(&"2001:db8::/48".parse().unwrap()));
        assert!(!is_cluster_prefix(&"fd12::/64".parse().unwrap()));
    }

    proptest! {
        #[test]
        fn always_a_locally_assigned_48(random: [u8; 5]) {
            let n = generate(random);
            prop_assert!(is_cluster_prefix(&n));
            prop_assert_eq!(&n.addr().octets()[1..6], &random[..]);
            prop_assert_eq!(n.to_string().parse::<Ipv6Net>().unwrap(), n);
        }
    }
}
