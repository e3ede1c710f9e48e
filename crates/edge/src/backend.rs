//! Backend choice: round robin over a route's backends, skipping ones recently marked down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Backends that refused or timed out, and until when they are skipped. Keyed by address so the
/// state survives table swaps.
#[derive(Default)]
pub struct DownList {
    until: Mutex<HashMap<SocketAddr, Instant>>,
}

impl DownList {
    pub fn mark_down(&self, b: SocketAddr, for_: Duration) {
        let mut m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        m.retain(|_, t| *t > now);
        m.insert(b, now + for_);
    }

    pub fn mark_up(&self, b: SocketAddr) {
        let mut m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&b);
    }

    pub fn is_down(&self, b: SocketAddr) -> bool {
        let m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&b).is_some_and(|t| *t > Instant::now())
    }

    /// The order in which to try `backends` for one connection: round robin from `start` over
    /// the backends that are up, then (as a last resort) the ones marked down.
    pub fn order(&self, backends: &[SocketAddr], start: usize) -> Vec<SocketAddr> {
        order(backends, start, |b| self.is_down(b))
    }
}

/// Pure ordering logic behind [`DownList::order`].
pub fn order(
    backends: &[SocketAddr],
    start: usize,
    is_down: impl Fn(SocketAddr) -> bool,
) -> Vec<SocketAddr> {
    let n = backends.len();
    let rotated = (0..n).map(|i| backends[(start + i) % n]);
    let (mut up, down): (Vec<_>, Vec<_>) = rotated.partition(|b| !is_down(*b));
    up.extend(down);
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        ["[::1]:1", "[::1]:2", "[::1]:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    #[test]
    fn round_robin_skips_down() {
        let a = addrs();
        assert_eq!(order(&a, 1, |_| false), vec![a[1], a[2], a[0]]);
        assert_eq!(order(&a, 0, |b| b == a[0]), vec![a[1], a[2], a[0]]);
        assert!(order(&[], 5, |_| false).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn down_expires() {
        let d = DownList::default();
        let a = addrs();
        d.mark_down(a[0], Duration::from_secs(10));
        assert!(d.is_down(a[0]));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!d.is_down(a[0]));
    }
}
