//! Org isolation rules (`overlay::isolation`) applied with the real `nft` to a host namespace
//! this test builds: an instance bridge with three "instances" (network namespaces on veths, as
//! TAPs would be) of orgs X, Y, X, and a routed link standing in for the WireGuard device behind
//! which sit another host's address and an instance of org Y. Real `curl` clients and Python
//! servers show who can reach whom.

use std::net::Ipv6Addr;
use std::process::{Command, Stdio};

use scalebox_agent::overlay::isolation::{OrgAddresses, Policy, ruleset};

struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&format!(
            "ip netns add {name} && ip netns exec {name} ip link set lo up"
        ));
        Ns(name)
    }

    fn sh(&self, cmd: &str) {
        sh(&format!("ip netns exec {} sh -c '{cmd}'", self.0));
    }

    /// curl from this namespace (optionally from `src`); true when the server answered.
    fn reaches(&self, dst: &str, src: Option<&str>) -> bool {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.0,
            "curl",
            "-sg",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
        ]);
        if let Some(s) = src {
            c.args(["--interface", s]);
        }
        c.arg(format!("http://[{dst}]:8080/"));
        c.status().unwrap().success()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: a process inside the namespace this test created.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SERVE: &str = "python3 -c \"import http.server as h, socket\nclass S(h.HTTPServer): address_family = socket.AF_INET6\nS((\\\"::\\\", 8080), h.SimpleHTTPRequestHandler).serve_forever()\" >/dev/null 2>&1 &";

fn addr(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn only_same_org_instances_and_hosts_reach_an_instance() {
    let tag = std::process::id() % 100_000;
    let host = Ns::new(format!("sbiso-{tag}-h"));
    host.sh("ip link add sbbr0 type bridge && ip -6 addr add fd00:0:0:1::1/64 dev sbbr0 nodad && ip link set sbbr0 up");
    let mut inst = Vec::new();
    for (i, last) in ["a", "b", "c"].iter().enumerate() {
        let ns = Ns::new(format!("sbiso-{tag}-{last}"));
        sh(&format!(
            "ip netns exec {h} ip link add t{i} type veth peer name eth0 netns {n} && ip netns exec {h} ip link set t{i} master sbbr0 up",
            h = host.0,
            n = ns.0
        ));
        ns.sh(&format!("ip -6 addr add fd00:0:0:1::{last}/64 dev eth0 nodad && ip link set eth0 up && ip -6 route add default via fd00:0:0:1::1"));
        ns.sh(SERVE);
        inst.push(ns);
    }
    // The "WireGuard device": a routed link to another host's /64.
    let remote = Ns::new(format!("sbiso-{tag}-r"));
    sh(&format!(
        "ip netns exec {h} ip link add wgsim type veth peer name wgsim netns {r}",
        h = host.0,
        r = remote.0
    ));
    host.sh("ip -6 addr add fd00:0:0:ffff::1/64 dev wgsim nodad && ip link set wgsim up && ip -6 route add fd00:0:0:2::/64 via fd00:0:0:ffff::2");
    remote.sh("ip -6 addr add fd00:0:0:ffff::2/64 dev wgsim nodad && ip link set wgsim up && ip -6 addr add fd00:0:0:2::1/128 dev lo && ip -6 addr add fd00:0:0:2::5/128 dev lo && ip -6 route add default via fd00:0:0:ffff::1");
    host.sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
    for ns in &inst {
        // Wait for each server.
        let mut up = false;
        for _ in 0..50 {
            if host.reaches(&format!("fd00:0:0:1::{}", &ns.0[ns.0.len() - 1..]), None) {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(up, "server in {} answers", ns.0);
    }
    let (a, b, c) = ("fd00:0:0:1::a", "fd00:0:0:1::b", "fd00:0:0:1::c");
    // Without rules everything reaches everything (the routed link may need a moment for
    // neighbour discovery).
    assert!(inst[1].reaches(a, None));
    assert!(
        (0..10).any(|_| remote.reaches(a, Some("fd00:0:0:2::5"))),
        "the remote side reaches a before any rule"
    );

    let policy = Policy {
        prefix: "fd00:0:0:1::/64".parse().unwrap(),
        hosts: [addr("fd00:0:0:1::1"), addr("fd00:0:0:2::1")].into(),
        orgs: vec![
            OrgAddresses {
                org: "x".into(),
                addresses: [addr(a), addr(c)].into(),
            },
            OrgAddresses {
                org: "y".into(),
                addresses: [addr(b), addr("fd00:0:0:2::5")].into(),
            },
        ],
    };
    let rules = ruleset(&policy);
    for _ in 0..2 {
        // Applying twice works (the tables are replaced as a whole).
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &host.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft accepts:\n{rules}");
    }

    // Same org on the same bridge: yes, both ways. Other org: no, both ways.
    assert!(inst[0].reaches(c, None), "x -> x");
    assert!(inst[2].reaches(a, None), "x -> x");
    assert!(!inst[1].reaches(a, None), "y -> x is blocked");
    assert!(!inst[0].reaches(b, None), "x -> y is blocked");
    // Across the overlay: the org's remote instance yes, another org's no, hosts yes.
    assert!(remote.reaches(b, Some("fd00:0:0:2::5")), "remote y -> y");
    assert!(
        !remote.reaches(a, Some("fd00:0:0:2::5")),
        "remote y -> x is blocked"
    );
    assert!(
        remote.reaches(a, Some("fd00:0:0:2::1")),
        "another host (edge) -> x"
    );
    // The host itself (health checks) reaches every instance.
    assert!(host.reaches(b, None));
}
