//! Host kernel settings the edge's backend connections depend on, checked once at start. They
//! are reported (a warning in the log), never changed: they belong to whoever runs the host.
//!
//! The edge closes its side of a backend connection first (it forwards the client's end of
//! stream), so the TIME_WAIT state lands on the edge's ephemeral port. Unless the kernel may
//! reuse such ports for new outgoing connections (`net.ipv4.tcp_tw_reuse = 1`; the default `2`
//! allows it on loopback only), one backend address takes at most (ports in
//! `ip_local_port_range`) / 60 s new connections per second before `connect` fails.

/// Seconds a closed connection's port stays in TIME_WAIT on Linux.
const TIME_WAIT_S: u64 = 60;

/// The warning for these `/proc/sys/net/ipv4` values, if any: `tw_reuse` is `tcp_tw_reuse`,
/// `port_range` is `ip_local_port_range` ("LOW HIGH").
pub fn port_reuse_warning(tw_reuse: &str, port_range: &str) -> Option<String> {
    if tw_reuse.trim() == "1" {
        return None;
    }
    let mut r = port_range.split_whitespace().map(str::parse::<u64>);
    let ports = match (r.next(), r.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if hi >= lo => hi - lo + 1,
        _ => return None,
    };
    Some(format!(
        "net.ipv4.tcp_tw_reuse is {} (not 1): ports of closed backend connections stay in \
         TIME_WAIT for {TIME_WAIT_S} s, so each backend address takes at most about {} new \
         connections per second ({ports} ephemeral ports) before connects fail; set \
         net.ipv4.tcp_tw_reuse=1 (and widen net.ipv4.ip_local_port_range) on edge hosts",
        tw_reuse.trim(),
        ports / TIME_WAIT_S
    ))
}

/// Logs [`port_reuse_warning`] for this host's settings (nothing when they cannot be read).
pub fn check() {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    if let (Some(reuse), Some(range)) = (read("tcp_tw_reuse"), read("ip_local_port_range"))
        && let Some(w) = port_reuse_warning(&reuse, &range)
    {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::port_reuse_warning;

    #[test]
    fn warns_unless_tw_reuse_is_on() {
        assert_eq!(port_reuse_warning("1\n", "32768\t60999\n"), None);
        let w = port_reuse_warning("2\n", "32768\t60999\n").unwrap();
        assert!(w.contains("tcp_tw_reuse is 2"), "{w}");
        assert!(
            w.contains("about 470 new connections per second (28232 ephemeral ports)"),
            "{w}"
        );
        assert!(
            port_reuse_warning("0", "1024 65535")
                .unwrap()
                .contains("about 1075 new")
        );
        // Unreadable ranges say nothing rather than something wrong.
        assert_eq!(port_reuse_warning("2", "garbage"), None);
        assert_eq!(port_reuse_warning("2", "60999 32768"), None);
    }
}
