//! Scalebox overlay: the pure logic of multi-host networking. No I/O: callers persist state and
//! apply changes; everything here is data in, data out.
//!
//! - [`ula`]: the cluster's RFC 4193 IPv6 /48, generated once from caller-supplied random bytes.
//! - [`ipam`]: a /64 per host, an address per instance, a dedicated IPv4 per environment, as
//!   replayable [`Allocation`] events with a no-quick-reuse policy and clear exhaustion errors.
//! - [`mesh`]: the WireGuard full mesh: the minimal [`Change`]s that take a host's peers from what
//!   it has to what the host list says, and the overlay routes.
//! - [`keys`]: X25519 key pairs and the base64 key form `wg` uses.
//! - [`net`]: small `Ipv6Net` / `Ipv4Net` types.
//!
//! See docs/overlay.md for the addressing plan and what is not built yet.

pub mod ipam;
pub mod keys;
pub mod mesh;
pub mod net;
mod pool;
pub mod ula;

#[cfg(test)]
mod tests_ipam;
#[cfg(test)]
mod tests_mesh;

pub use ipam::{Allocation, Ipam, IpamConfig, IpamError, Ipv4Pool, Outcome};
pub use keys::{KeyError, PrivateKey, PublicKey};
pub use mesh::{Change, MeshError, Peer, PeerUpdate};
pub use net::{Ipv4Net, Ipv6Net, NetError};
