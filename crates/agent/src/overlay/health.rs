//! Peer reachability from device counters, kept free of I/O and clocks (callers pass `now`).
//!
//! Every peer sends a keepalive at least every `keepalive` seconds, so traffic received from a
//! peer (its `rx_bytes` growing) proves the path works. A peer is reachable while something
//! arrived from it within `timeout`; a newly configured peer gets `timeout` of grace before it
//! counts as unreachable, so an agent restart does not flap every peer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use scalebox_overlay::PublicKey;

use super::uapi::PeerStats;

#[derive(Debug, Clone)]
struct Seen {
    rx: u64,
    last_rx: Instant,
}

/// What one peer looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub public_key: PublicKey,
    pub reachable: bool,
    pub handshake_age: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Tracks when traffic last arrived from each peer.
#[derive(Debug)]
pub struct Tracker {
    timeout: Duration,
    seen: HashMap<PublicKey, Seen>,
}

impl Tracker {
    pub fn new(timeout: Duration) -> Tracker {
        Tracker {
            timeout,
            seen: HashMap::new(),
        }
    }

    /// Folds in one reading of the device's counters; peers no longer configured are forgotten.
    pub fn observe(&mut self, stats: &[PeerStats], now: Instant) -> Vec<PeerHealth> {
        self.seen
            .retain(|k, _| stats.iter().any(|s| &s.public_key == k));
        stats
            .iter()
            .map(|s| {
                let e = self.seen.entry(s.public_key).or_insert(Seen {
                    rx: s.rx_bytes,
                    last_rx: now,
                });
                // A counter that went down means the device was recreated: count it as traffic.
                if s.rx_bytes != e.rx {
                    e.rx = s.rx_bytes;
                    e.last_rx = now;
                }
                PeerHealth {
                    public_key: s.public_key,
                    reachable: now.duration_since(e.last_rx) <= self.timeout,
                    handshake_age: s.handshake_age,
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(k: PublicKey, rx: u64) -> PeerStats {
        PeerStats {
            public_key: k,
            rx_bytes: rx,
            tx_bytes: 0,
            handshake_age: None,
        }
    }

    #[test]
    fn reachable_while_traffic_arrives_then_not_then_again() {
        let k = scalebox_overlay::keys::generate([1; 32]).1;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Tracker::new(s(15));
        // Grace at first sight, even with no traffic.
        assert!(t.observe(&[stats(k, 0)], t0)[0].reachable);
        assert!(t.observe(&[stats(k, 0)], t0 + s(15))[0].reachable);
        assert!(!t.observe(&[stats(k, 0)], t0 + s(16))[0].reachable);
        assert!(t.observe(&[stats(k, 32)], t0 + s(17))[0].reachable);
        assert!(t.observe(&[stats(k, 64)], t0 + s(30))[0].reachable);
        assert!(!t.observe(&[stats(k, 64)], t0 + s(46))[0].reachable);
        // A peer that disappears and returns starts with grace again.
        assert!(t.observe(&[], t0 + s(47)).is_empty());
        assert!(t.observe(&[stats(k, 64)], t0 + s(48))[0].reachable);
    }
}
