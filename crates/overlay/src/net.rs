//! Tiny IP network types: [`Ipv6Net`] and [`Ipv4Net`], written `addr/len`.
//!
//! A network is always in canonical form: the bits after the prefix length are zero
//! (`fd00::1/48` is refused, not silently truncated, so a typo never names a different network).
//! Both serialise as their `addr/len` string. Only `std` is used.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a network could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("`{0}` is not a network: expected `address/prefix-length`, e.g. `fd12:3456:789a::/48`")]
    Syntax(String),
    #[error("`{0}` is not a valid IP address")]
    Address(String),
    #[error("prefix length {len} is out of range (at most {max})")]
    Length { len: String, max: u8 },
    #[error(
        "`{net}` has bits set after the prefix length; the network is `{canonical}` (write that, or a longer prefix)"
    )]
    HostBits { net: String, canonical: String },
}

fn split(s: &str) -> Result<(&str, &str), NetError> {
    s.split_once('/')
        .filter(|(a, l)| !a.is_empty() && !l.is_empty())
        .ok_or_else(|| NetError::Syntax(s.to_string()))
}

fn parse_len(l: &str, max: u8) -> Result<u8, NetError> {
    let too_long = || NetError::Length {
        len: l.to_string(),
        max,
    };
    if !l.bytes().all(|b| b.is_ascii_digit()) {
        return Err(too_long());
    }
    match l.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(too_long()),
    }
}

/// Mask with the top `len` bits of a 128-bit value set.
fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// An IPv6 network `addr/len` in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    len: u8,
}

impl Ipv6Net {
    /// The network `addr/len`; refuses `len > 128` and addresses with bits set after `len`.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, NetError> {
        if len > 128 {
            return Err(NetError::Length {
                len: len.to_string(),
                max: 128,
            });
        }
        let bits = u128::from(addr);
        let masked = bits & mask128(len);
        if masked != bits {
            return Err(NetError::HostBits {
                net: format!("{addr}/{len}"),
                canonical: format!("{}/{len}", Ipv6Addr::from(masked)),
            });
        }
        Ok(Self { addr, len })
    }

    /// The network of length `len` (at most 128) containing `addr`: bits after `len` are cleared.
    pub fn trunc(addr: Ipv6Addr, len: u8) -> Self {
        let len = len.min(128);
        Self {
            addr: Ipv6Addr::from(u128::from(addr) & mask128(len)),
            len,
        }
    }

    /// A single address as a `/128`.
    pub fn host(addr: Ipv6Addr) -> Self {
        Self { addr, len: 128 }
    }

    /// The network address (all bits after the prefix are zero).
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        u128::from(*addr) & mask128(self.len) == u128::from(self.addr)
    }

    /// Whether `other` is this network or a subnet of it.
    pub fn contains_net(&self, other: &Ipv6Net) -> bool {
        other.len >= self.len && self.contains(&other.addr)
    }

    /// Whether the two networks share any address (one contains the other).
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    /// The `n`th address of the network (`nth(0)` is the network address); `None` past the end.
    pub fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.len);
        if host_bits < 128 && n >> host_bits != 0 {
            return None;
        }
        Some(Ipv6Addr::from(u128::from(self.addr) | n))
    }

    /// The `index`th subnet of length `len` inside this network; `None` if `len` is shorter than
    /// this network's or `index` does not fit in the bits between the two lengths.
    pub fn subnet(&self, len: u8, index: u128) -> Option<Ipv6Net> {
        if len < self.len || len > 128 {
            return None;
        }
        let width = u32::from(len - self.len);
        if width < 128 && index >> width != 0 {
            return None;
        }
        let shifted = index.checked_shl(128 - u32::from(len)).unwrap_or(0);
        Some(Ipv6Net {
            addr: Ipv6Addr::from(u128::from(self.addr) | shifted),
            len,
        })
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv6Net {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let (a, l) = split(s)?;
        let addr: Ipv6Addr = a.parse().map_err(|_| NetError::Address(a.to_string()))?;
        let len = parse_len(l, 128)?;
        Self::new(addr, len)
    }
}

/// An IPv4 network `addr/len` in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// The network `addr/len`; refuses `len > 32` and addresses with bits set after `len`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, NetError> {
        if len > 32 {
            return Err(NetError::Length {
                len: len.to_string(),
                max: 32,
            });
        }
        let bits = u32::from(addr);
        let masked = bits & mask32(len);
        if masked != bits {
            return Err(NetError::HostBits {
                net: format!("{addr}/{len}"),
                canonical: format!("{}/{len}", Ipv4Addr::from(masked)),
            });
        }
        Ok(Self { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: &Ipv4Addr) -> bool {
        u32::from(*addr) & mask32(self.len) == u32::from(self.addr)
    }

    /// The `n`th address of the network (`nth(0)` is the network address); `None` past the end.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let host_bits = 32 - u32::from(self.len);
        if host_bits < 32 && n >> host_bits != 0 {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) | n))
    }

    /// The first and last address of the network.
    pub fn bounds(&self) -> (Ipv4Addr, Ipv4Addr) {
        let lo = u32::from(self.addr);
        (self.addr, Ipv4Addr::from(lo | !mask32(self.len)))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let (a, l) = split(s)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| NetError::Address(a.to_string()))?;
        let len = parse_len(l, 32)?;
        Self::new(addr, len)
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(Ipv6Net);
serde_as_string!(Ipv4Net);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_display() {
        let n: Ipv6Net = "fd12:3456:789a::/48".parse().unwrap();
        assert_eq!(n.to_string(), "fd12:3456:789a::/48");
        assert_eq!(n.prefix_len(), 48);
        let n: Ipv4Net = "203.0.113.16/28".parse().unwrap();
        assert_eq!(n.to_string(), "203.0.113.16/28");
        assert_eq!(
            n.bounds(),
            (
                "203.0.113.16".parse().unwrap(),
                "203.0.113.31".parse().unwrap()
            )
        );
    }

    #[test]
    fn parse_errors_are_clear() {
        for bad in [
            "",
            "/",
            "fd00::",
            "fd00::/",
            "/48",
            "zz::/48",
            "fd00::/129",
            "fd00::/+4",
        ] {
            assert!(bad.parse::<Ipv6Net>().is_err(), "{bad}");
        }
        let e = "fd00::1/48".parse::<Ipv6Net>().unwrap_err();
        assert!(e.to_string().contains("fd00::/48"), "{e}");
        assert!("10.0.0.1/24".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("fd00::/48".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/8".parse::<Ipv6Net>().is_err());
    }

    #[test]
    fn contains_nth_subnet() {
        let n: Ipv6Net = "fd00:1:2::/48".parse().unwrap();
        assert!(n.contains(&"fd00:1:2:ffff::1".parse().unwrap()));
        assert!(!n.contains(&"fd00:1:3::1".parse().unwrap()));
        assert_eq!(n.nth(1), Some("fd00:1:2::1".parse().unwrap()));
        assert_eq!(n.nth(1 << 80), None);
        assert_eq!(Ipv6Net::trunc("fd00:1:2:3::9".parse().unwrap(), 48), n);
        assert_eq!(Ipv6Net::trunc(Ipv6Addr::LOCALHOST, 200).prefix_len(), 128);
        let s = n.subnet(64, 7).unwrap();
        assert_eq!(s.to_string(), "fd00:1:2:7::/64");
        assert!(n.contains_net(&s) && !s.contains_net(&n) && s.overlaps(&n));
        assert_eq!(n.subnet(64, 1 << 16), None);
        assert_eq!(n.subnet(40, 0), None);
        assert_eq!(n.subnet(48, 0), Some(n));
        assert_eq!(s.subnet(128, 5).unwrap().to_string(), "fd00:1:2:7::5/128");
        let all: Ipv6Net = "::/0".parse().unwrap();
        assert!(all.contains(&"2001:db8::1".parse().unwrap()));
        assert_eq!(all.nth(u128::MAX), Some(Ipv6Addr::from(u128::MAX)));
        let v4: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        assert_eq!(v4.nth(3), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(v4.nth(4), None);
        assert!(v4.contains(&"10.0.0.2".parse().unwrap()));
        let v4all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(v4all.nth(u32::MAX), Some(Ipv4Addr::BROADCAST));
    }

    #[test]
    fn serde_as_strings() {
        let n: Ipv6Net = "fd00::/8".parse().unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"fd00::/8\"");
        assert_eq!(serde_json::from_str::<Ipv6Net>(&j).unwrap(), n);
        assert!(serde_json::from_str::<Ipv6Net>("\"fd00::1/8\"").is_err());
    }

    proptest! {
        #[test]
        fn roundtrip_v6(bits: u128, len in 0u8..=128) {
            let masked = bits & mask128(len);
            let n = Ipv6Net::new(Ipv6Addr::from(masked), len).unwrap();
            prop_assert_eq!(n.to_string().parse::<Ipv6Net>().unwrap(), n);
            prop_assert!(n.contains(&n.addr()));
        }

        #[test]
        fn roundtrip_v4(bits: u32, len in 0u8..=32) {
            let masked = bits & mask32(len);
            let n = Ipv4Net::new(Ipv4Addr::from(masked), len).unwrap();
            prop_assert_eq!(n.to_string().parse::<Ipv4Net>().unwrap(), n);
            let (lo, hi) = n.bounds();
            prop_assert!(n.contains(&lo) && n.contains(&hi));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Ipv6Net>();
            let _ = s.parse::<Ipv4Net>();
        }
    }
}
