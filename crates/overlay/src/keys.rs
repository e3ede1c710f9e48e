//! WireGuard key material: X25519 key pairs, base64-encoded as `wg` writes them.
//!
//! [`generate`] takes 32 random bytes from the caller (the agent reads the OS random source), clamps
//! them as `wg genkey` does and derives the public key with `x25519-dalek`. [`PublicKey`] parses and
//! validates the standard base64 form (44 characters, 32 bytes); [`PrivateKey`] never appears in
//! `Debug` output and is not serialisable by accident: encode it explicitly with
//! [`PrivateKey::to_base64`].

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a key could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a WireGuard key is 32 bytes in standard base64 (44 characters ending in `=`), got {0}"
    )]
    Format(String),
}

fn decode(s: &str) -> Result<[u8; 32], KeyError> {
    let describe = || {
        if s.len() == 44 {
            "44 characters that are not valid base64".to_string()
        } else {
            format!("{} characters", s.len())
        }
    };
    if s.len() != 44 {
        return Err(KeyError::Format(describe()));
    }
    let bytes = STANDARD
        .decode(s)
        .map_err(|_| KeyError::Format(describe()))?;
    // 44 base64 characters decode to at most 33 bytes; a canonical 32-byte key ends in one `=`.
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Format(describe()))
}

/// A WireGuard (X25519) public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The standard base64 form, as `wg` prints and accepts it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(Self)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard (X25519) private key, clamped. `Debug` prints no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// The standard base64 form (what `wg genkey` prints); handle with care.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw bytes; handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key (what `wg pubkey` prints).
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    /// Parses a base64 private key and clamps it (X25519 clamps on use anyway, so the public key is
    /// the same; the stored form then equals what `wg genkey` would have written).
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode(s).map(|b| Self(clamp(b)))
    }
}

fn clamp(mut b: [u8; 32]) -> [u8; 32] {
    b[0] &= 248;
    b[31] &= 127;
    b[31] |= 64;
    b
}

/// A key pair from 32 random bytes: the clamped private key and its public key.
pub fn generate(random: [u8; 32]) -> (PrivateKey, PublicKey) {
    let private = PrivateKey(clamp(random));
    let public = private.public_key();
    (private, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 §6.1, Alice.
        let private = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let (sk, pk) = generate(private);
        assert_eq!(pk.as_bytes(), &public);
        assert_eq!(sk.public_key(), pk);
        let b = sk.as_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
    }

    #[test]
    fn base64_roundtrip_and_validation() {
        let (sk, pk) = generate([7; 32]);
        let s = pk.to_base64();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(sk.to_base64().parse::<PrivateKey>().unwrap(), sk);
        assert_eq!(format!("{sk:?}"), "PrivateKey(<redacted>)");
        for bad in [
            "",
            "abc",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 43
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 45
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!", // bad char
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 33 bytes
        ] {
            let e = bad.parse::<PublicKey>().unwrap_err();
            assert!(e.to_string().contains("32 bytes"), "{e}");
        }
        let j = serde_json::to_string(&pk).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&j).unwrap(), pk);
        assert!(serde_json::from_str::<PublicKey>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn public_keys_roundtrip(bytes: [u8; 32]) {
            let pk = PublicKey::from_bytes(bytes);
            prop_assert_eq!(pk.to_base64().parse::<PublicKey>().unwrap(), pk);
        }

        #[test]
        fn decoding_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<PublicKey>();
            let _ = s.parse::<PrivateKey>();
        }
    }
}
