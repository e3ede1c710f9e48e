//! The text forms a WireGuard device is configured and read through, kept free of I/O:
//!
//! - the cross-platform userspace API (`set=1` / `get=1`, hex keys, one `key=value` per line,
//!   a blank line ends a command), spoken to the userspace (boringtun) device;
//! - the arguments of `wg set` and the output of `wg show IFACE dump`, for the kernel device.
//!
//! Both devices identify a peer by its public key. Userspace boringtun cannot modify a peer in
//! place, so every update is rendered as "remove the peer, add it again" in one command.

use std::time::Duration;

use scalebox_overlay::{Change, Peer, PeerUpdate, PrivateKey, PublicKey};

/// Counters of one peer as the device reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: PublicKey,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Time since the last completed handshake; none before the first one.
    pub handshake_age: Option<Duration>,
}

/// Why a device's answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UapiError {
    #[error("the WireGuard device answered errno={0}")]
    Errno(i32),
    #[error("unreadable WireGuard device answer: {0}")]
    Malformed(String),
}

/// `set=1` with the device's key and UDP port.
pub fn set_interface(key: &PrivateKey, listen_port: u16) -> String {
    format!(
        "set=1\nprivate_key={}\nlisten_port={listen_port}\n\n",
        hex::encode(key.as_bytes())
    )
}

fn peer_section(out: &mut String, p: &Peer, keepalive: u16) {
    out.push_str(&format!(
        "public_key={}\nendpoint={}\npersistent_keepalive_interval={keepalive}\nreplace_allowed_ips=true\n",
        hex::encode(p.public_key.as_bytes()),
        p.endpoint
    ));
    for a in &p.allowed {
        out.push_str(&format!("allowed_ip={a}\n"));
    }
}

fn remove_section(out: &mut String, key: &PublicKey) {
    out.push_str(&format!(
        "public_key={}\nremove=true\n",
        hex::encode(key.as_bytes())
    ));
}

/// One `set=1` command applying `changes` to a device whose peers are `current` (needed to know
/// the key of a removed or updated peer, and the full new state of an updated one). `None` when
/// there is nothing to do.
pub fn set_peers(current: &[Peer], changes: &[Change], keepalive: u16) -> Option<String> {
    let find = |host: &str| current.iter().find(|p| p.host == host);
    let mut out = String::new();
    for c in changes {
        match c {
            Change::Remove(host) => {
                if let Some(p) = find(host) {
                    remove_section(&mut out, &p.public_key);
                }
            }
            Change::Add(p) => peer_section(&mut out, p, keepalive),
            Change::Update { host, what } => {
                let Some(old) = find(host) else { continue };
                let new = updated(old, what);
                remove_section(&mut out, &old.public_key);
                peer_section(&mut out, &new, keepalive);
            }
        }
    }
    (!out.is_empty()).then(|| format!("set=1\n{out}\n"))
}

/// `old` with `what` applied.
pub fn updated(old: &Peer, what: &[PeerUpdate]) -> Peer {
    let mut p = old.clone();
    for u in what {
        match u {
            PeerUpdate::Endpoint { to, .. } => p.endpoint = *to,
            PeerUpdate::KeyRotated { new, .. } => p.public_key = *new,
            PeerUpdate::AllowedIps { to, .. } => p.allowed = to.clone(),
        }
    }
    p
}

/// Reads the answer to `get=1` (boringtun reports the handshake time as the time *since* the
/// handshake, not as a Unix time as the kernel does).
pub fn parse_get(answer: &str) -> Result<Vec<PeerStats>, UapiError> {
    let mut peers: Vec<PeerStats> = Vec::new();
    let mut errno = None;
    let mut secs: Option<u64> = None;
    for line in answer.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| UapiError::Malformed(format!("line {line:?} has no '='")))?;
        let num = || {
            v.parse::<u64>()
                .map_err(|_| UapiError::Malformed(format!("{k}={v} is not a number")))
        };
        match k {
            "public_key" => {
                let b: [u8; 32] = hex::decode(v)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| UapiError::Malformed(format!("bad public key {v:?}")))?;
                peers.push(PeerStats {
                    public_key: PublicKey::from_bytes(b),
                    rx_bytes: 0,
                    tx_bytes: 0,
                    handshake_age: None,
                });
                secs = None;
            }
            "rx_bytes" | "tx_bytes" | "last_handshake_time_sec" | "last_handshake_time_nsec" => {
                let n = num()?;
                let p = peers
                    .last_mut()
                    .ok_or_else(|| UapiError::Malformed(format!("{k} before any public_key")))?;
                match k {
                    "rx_bytes" => p.rx_bytes = n,
                    "tx_bytes" => p.tx_bytes = n,
                    "last_handshake_time_sec" => {
                        secs = Some(n);
                        p.handshake_age = Some(Duration::from_secs(n));
                    }
                    _ => {
                        if let Some(s) = secs {
                            p.handshake_age = Some(Duration::new(s, n.min(999_999_999) as u32));
                        }
                    }
                }
            }
            "errno" => {
                errno = Some(
                    v.parse::<i32>()
                        .map_err(|_| UapiError::Malformed(format!("errno={v}")))?,
                )
            }
            _ => {}
        }
    }
    match errno {
        Some(0) => Ok(peers),
        Some(e) => Err(UapiError::Errno(e)),
        None => Err(UapiError::Malformed("no errno line".into())),
    }
}

/// The errno of a `set=1` answer.
pub fn parse_set(answer: &str) -> Result<(), UapiError> {
    parse_get(answer).map(|_| ())
}

/// `wg set IFACE …` argument lists applying `changes` (kernel device); one list per peer
/// operation, removals first as in `changes`.
pub fn wg_set_args(current: &[Peer], changes: &[Change], keepalive: u16) -> Vec<Vec<String>> {
    let find = |host: &str| current.iter().find(|p| p.host == host);
    let peer_args = |p: &Peer| {
        let allowed: Vec<String> = p.allowed.iter().map(ToString::to_string).collect();
        vec![
            "peer".to_owned(),
            p.public_key.to_base64(),
            "endpoint".to_owned(),
            p.endpoint.to_string(),
            "persistent-keepalive".to_owned(),
            keepalive.to_string(),
            "allowed-ips".to_owned(),
            allowed.join(","),
        ]
    };
    let remove = |k: &PublicKey| vec!["peer".to_owned(), k.to_base64(), "remove".to_owned()];
    let mut out = Vec::new();
    for c in changes {
        match c {
            Change::Remove(host) => {
                if let Some(p) = find(host) {
                    out.push(remove(&p.public_key));
                }
            }
            Change::Add(p) => out.push(peer_args(p)),
            Change::Update { host, what } => {
                let Some(old) = find(host) else { continue };
                let new = updated(old, what);
                if old.public_key != new.public_key {
                    out.push(remove(&old.public_key));
                }
                out.push(peer_args(&new));
            }
        }
    }
    out
}

/// Reads `wg show IFACE dump`: the first line is the interface, then one tab-separated line per
/// peer: key, preshared key, endpoint, allowed ips, latest handshake (Unix seconds, 0 = never),
/// rx, tx, keepalive. `now` is the current Unix time in seconds.
pub fn parse_dump(text: &str, now: u64) -> Result<Vec<PeerStats>, UapiError> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            return Err(UapiError::Malformed(format!(
                "wg dump line has {} fields, want 8",
                f.len()
            )));
        }
        let n = |i: usize| {
            f[i].parse::<u64>()
                .map_err(|_| UapiError::Malformed(format!("wg dump field {:?}", f[i])))
        };
        let public_key: PublicKey = f[0]
            .parse()
            .map_err(|_| UapiError::Malformed(format!("bad public key {:?}", f[0])))?;
        let hs = n(4)?;
        out.push(PeerStats {
            public_key,
            rx_bytes: n(5)?,
            tx_bytes: n(6)?,
            handshake_age: (hs > 0).then(|| Duration::from_secs(now.saturating_sub(hs))),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalebox_overlay::mesh;

    fn key(n: u8) -> PublicKey {
        scalebox_overlay::keys::generate([n; 32]).1
    }

    fn peer(host: &str, n: u8, port: u16, net: &str) -> Peer {
        Peer {
            host: host.into(),
            public_key: key(n),
            endpoint: format!("10.0.0.{n}:{port}").parse().unwrap(),
            allowed: vec![net.parse().unwrap()],
        }
    }

    #[test]
    fn interface_command_carries_hex_key_and_port() {
        let (k, _) = scalebox_overlay::keys::generate([7; 32]);
        let s = set_interface(&k, 51820);
        assert!(s.starts_with("set=1\nprivate_key="));
        assert!(s.contains(&format!("private_key={}\n", hex::encode(k.as_bytes()))));
        assert!(s.ends_with("listen_port=51820\n\n"));
    }

    #[test]
    fn adds_removes_and_replaces_updated_peers() {
        let b = peer("b", 2, 51820, "fd00:0:0:2::/64");
        let c = peer("c", 3, 51820, "fd00:0:0:3::/64");
        let current = vec![b.clone(), c.clone()];
        let mut b2 = b.clone();
        b2.endpoint = "10.0.0.9:51820".parse().unwrap();
        let d = peer("d", 4, 51821, "fd00:0:0:4::/64");
        let desired = vec![b2.clone(), d.clone()];
        let changes = mesh::plan(&current, &desired).unwrap();
        let s = set_peers(&current, &changes, 5).unwrap();
        let hexk = |p: &Peer| hex::encode(p.public_key.as_bytes());
        // c removed; b removed and added again with the new endpoint; d added.
        assert!(s.starts_with("set=1\n"));
        assert!(s.ends_with("\n\n"));
        assert!(s.contains(&format!("public_key={}\nremove=true\n", hexk(&c))));
        assert!(s.contains(&format!(
            "public_key={}\nremove=true\npublic_key={}\nendpoint=10.0.0.9:51820\n",
            hexk(&b),
            hexk(&b)
        )));
        assert!(s.contains(&format!(
            "public_key={}\nendpoint=10.0.0.4:51821\npersistent_keepalive_interval=5\nreplace_allowed_ips=true\nallowed_ip=fd00:0:0:4::/64\n",
            hexk(&d)
        )));
        assert_eq!(
            set_peers(&desired, &mesh::plan(&desired, &desired).unwrap(), 5),
            None
        );
    }

    #[test]
    fn key_rotation_removes_the_old_key() {
        let b = peer("b", 2, 51820, "fd00:0:0:2::/64");
        let mut b2 = b.clone();
        b2.public_key = key(9);
        let changes = mesh::plan(std::slice::from_ref(&b), std::slice::from_ref(&b2)).unwrap();
        let s = set_peers(std::slice::from_ref(&b), &changes, 5).unwrap();
        let old = s.find(&hex::encode(b.public_key.as_bytes())).unwrap();
        let new = s.find(&hex::encode(b2.public_key.as_bytes())).unwrap();
        assert!(old < new);
        let args = wg_set_args(std::slice::from_ref(&b), &changes, 5);
        assert_eq!(args[0], ["peer", &b.public_key.to_base64(), "remove"]);
        assert_eq!(args[1][1], b2.public_key.to_base64());
    }

    #[test]
    fn parses_get_answers() {
        let k = key(2);
        let a = format!(
            "own_public_key=00\nlisten_port=51820\npublic_key={}\nendpoint=10.0.0.2:51820\nallowed_ip=fd00:0:0:2::/64\nlast_handshake_time_sec=3\nlast_handshake_time_nsec=500\nrx_bytes=92\ntx_bytes=148\npublic_key={}\nrx_bytes=0\ntx_bytes=0\nerrno=0\n\n",
            hex::encode(k.as_bytes()),
            hex::encode(key(3).as_bytes())
        );
        let p = parse_get(&a).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].public_key, k);
        assert_eq!(p[0].rx_bytes, 92);
        assert_eq!(p[0].tx_bytes, 148);
        assert_eq!(p[0].handshake_age, Some(Duration::new(3, 500)));
        assert_eq!(p[1].handshake_age, None);
        assert_eq!(parse_get("errno=22\n\n"), Err(UapiError::Errno(22)));
        assert!(parse_get("rx_bytes=1\nerrno=0\n").is_err());
        assert!(parse_get("public_key=zz\nerrno=0\n").is_err());
        assert!(parse_get("listen_port=1\n").is_err());
        assert!(parse_set("errno=0\n\n").is_ok());
    }

    #[test]
    fn parses_wg_dump() {
        let k = key(2);
        let text = format!(
            "PRIV\tPUB\t51820\toff\n{}\t(none)\t10.0.0.2:51820\tfd00:0:0:2::/64\t1000\t92\t148\t5\n{}\t(none)\t(none)\tfd00:0:0:3::/64\t0\t0\t0\t5\n",
            k.to_base64(),
            key(3).to_base64()
        );
        let p = parse_dump(&text, 1010).unwrap();
        assert_eq!(p[0].handshake_age, Some(Duration::from_secs(10)));
        assert_eq!((p[0].rx_bytes, p[0].tx_bytes), (92, 148));
        assert_eq!(p[1].handshake_age, None);
        assert!(parse_dump("if\nshort\tline\n", 0).is_err());
    }
}
