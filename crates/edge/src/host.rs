//! Host kernel settings the edge's backend connections depend on, checked once at start. They
//! are reported (a warning in the log), never changed: they belong to whoever runs the host.
//!
//! The edge closes its side of a backend connection first (it forwards the client's end of
//! stream), so the TIME_WAIT state lands on the edge's ephemeral port. Unless the kernel may
//! reuse such ports for new outgoing connections (`net.ipv4.tcp_tw_reuse = 1`; the default `2`
//! allows it on loopback only), one backend address takes at most (ports in
//! `ip_local_port_range`) / 60 s new connections per second before `connect` fails.
//!
//! TCP Fast Open to backends (`backend_fast_open`) needs the client bit (0x1) of
//! `net.ipv4.tcp_fastopen`, on by default; without it every connection is a plain connect.

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

/// The warning for `net.ipv4.tcp_fastopen` = `value` when the edge wants Fast Open to its
/// backends and the host's client bit is off.
pub fn fast_open_warning(value: &str) -> Option<String> {
    let v: u32 = value.trim().parse().ok()?;
    (v & 1 == 0).then(|| {
        format!(
            "net.ipv4.tcp_fastopen is {v} (client bit 0x1 off): backend connections cannot \
             carry the PROXY v2 header and ClientHello in the SYN, so backend_fast_open has no \
             effect; set net.ipv4.tcp_fastopen to {} on edge hosts, or backend_fast_open = false \
             to silence this",
            v | 1
        )
    })
}

/// Logs [`port_reuse_warning`] and, when `fast_open` is wanted, [`fast_open_warning`] for this
/// host's settings (nothing when they cannot be read).
pub fn check(fast_open: bool) {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    if let (Some(reuse), Some(range)) = (read("tcp_tw_reuse"), read("ip_local_port_range"))
        && let Some(w) = port_reuse_warning(&reuse, &range)
    {
        tracing::warn!("{w}");
    }
    if fast_open && let Some(w) = read("tcp_fastopen").as_deref().and_then(fast_open_warning) {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::{fast_open_warning, port_reuse_warning};

    #[test]
    fn warns_when_fast_open_cannot_be_sent() {
        assert_eq!(fast_open_warning("1\n"), None);
        assert_eq!(fast_open_warning("1027"), None);
        let w = fast_open_warning("2\n").unwrap();
        assert!(w.contains("tcp_fastopen is 2 (client bit 0x1 off)"), "{w}");
        assert!(w.contains("set net.ipv4.tcp_fastopen to 3"), "{w}");
        assert!(
            fast_open_warning("0")
                .unwrap()
                .contains("to 1 on edge hosts")
        );
        assert_eq!(fast_open_warning("garbage"), None);
    }

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
