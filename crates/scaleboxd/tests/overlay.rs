//! Three simulated hosts joined by a WireGuard overlay (issue "multi-host"): network namespaces
//! `a`, `b`, `c` on a private underlay (veths on a bridge in a fourth namespace), a real control
//! plane and Postgres, `scaleboxd agent --join` in each (dev/test process backend, overlay on:
//! userspace WireGuard here) and `scaleboxd edge` on host a. Shows that:
//!
//! - IPAM gives each host its own /64 of one cluster /48, and every host peers with the others;
//! - web instances on hosts b and c serve traffic entering the edge on host a, over the overlay;
//! - cutting host c's underlay link takes its backend out of the edge's routing within a bounded
//!   time, and restoring the link brings it back;
//! - a host removed from the cluster is removed from every other host's WireGuard peers;
//! - (second test) a real microVM (QEMU) on host b, addressed in b's /64, serves traffic entering
//!   the edge on host a over the overlay, with the org isolation rules in place.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, free_port};
use common::{Netns, Proc};
use scalebox_testkit::http::request;
use serde_json::{Value, json};

const SERVER: &str = r#"
import os, socket, sys, http.server, socketserver
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("instance=%s\n" % os.environ.get("SCALEBOX_INSTANCE_ID")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
S(("::", port), H).serve_forever()
"#;

const OVERLAY: &str =
    "[overlay]\nenabled = true\nkeepalive_secs = 1\npeer_timeout_secs = 4\nsync_secs = 1\n";

/// The underlay: a bridge in its own namespace and one veth per host (`u0` inside the host).
struct Underlay {
    hosts: Vec<Netns>,
    _bridge: Netns,
}

fn underlay(tag: &str, names: &[&str]) -> Underlay {
    let bridge = Netns::create(format!("sbo-{tag}-ul"), vec![]);
    bridge.ip(&["ip", "link", "add", "ubr0", "type", "bridge"]);
    bridge.ip(&["ip", "link", "set", "ubr0", "up"]);
    let mut hosts = Vec::new();
    for (i, h) in names.iter().enumerate() {
        let ns = Netns::create(format!("sbo-{tag}-{h}"), vec![]);
        let port = format!("u{h}");
        bridge.ip(&[
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "u0", "netns", &ns.name,
        ]);
        bridge.ip(&["ip", "link", "set", &port, "master", "ubr0", "up"]);
        ns.ip(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.0.{}/24", i + 1),
            "dev",
            "u0",
        ]);
        ns.ip(&["ip", "link", "set", "u0", "up"]);
        hosts.push(ns);
    }
    Underlay {
        hosts,
        _bridge: bridge,
    }
}

fn host_named<'a>(hosts: &'a Value, name: &str) -> &'a Value {
    hosts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name}: {hosts}"))
}

/// GET / through the edge's TCP route; the answering instance's id.
async fn via_edge(port: u16) -> Option<String> {
    let addr = format!("[::1]:{port}").parse().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), request(addr, "GET", "/", &[], None))
        .await
        .ok()?
        .ok()?;
    (r.status == 200).then(|| r.text().trim().trim_start_matches("instance=").to_owned())
}

/// Waits until `pred` holds for the instances the edge on host a reaches in `n` requests.
async fn wait_served(
    port: u16,
    what: &str,
    limit: Duration,
    pred: impl Fn(&BTreeSet<String>, usize) -> bool,
) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let mut seen = BTreeSet::new();
        let mut failed = 0;
        for _ in 0..6 {
            match via_edge(port).await {
                Some(i) => {
                    seen.insert(i);
                }
                None => failed += 1,
            }
        }
        if pred(&seen, failed) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// A TCP route `edge_port` → the web instances' `backend_port`, a deploy of the latest release,
/// and `scaleboxd edge` on host a following the control plane's table with host a's credential.
async fn route_deploy_and_edge(c: &Cluster, edge_port: u16, backend_port: u16) -> Proc {
    c.ok(
        "POST",
        "/v1/orgs/default/routes",
        Some(
            json!({"app": "shop", "env": "prod", "kind": "tcp", "listener_port": edge_port,
                    "process_type": "web", "backend_port": backend_port}),
        ),
        201,
    )
    .await;
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({})),
        202,
    )
    .await;
    let edge_cfg = c.dir.path().join("edge.toml");
    std::fs::write(
        &edge_cfg,
        format!(
            "admin_addr = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\ndefault_ipv6_addr = \"::1\"\nconnect_timeout_ms = 1000\n",
            free_port(),
            c.dir.path().join("edge").display()
        ),
    )
    .unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_scaleboxd"))
            .args(["edge", "--config"])
            .arg(&edge_cfg)
            .arg("--control-credential")
            .arg(c.dir.path().join("host-a/control.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn three_hosts_route_over_the_overlay_and_survive_a_partition() {
    let tag = format!("{}", std::process::id() % 100_000);
    let net = underlay(&tag, &["a", "b", "c"]);
    let names: Vec<String> = net.hosts.iter().map(|h| h.name.clone()).collect();
    // The scenario talks to the control plane and the edge on host a: run it inside a.
    net.hosts[0].run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(names));
    });
    drop(net);
}

async fn scenario(ns: Vec<String>) {
    let tdb = scalebox_testkit::test_db().await;
    // Hosts are never declared lost here: routing reacts to the overlay alone.
    let (c, _control) =
        Cluster::start_on(&tdb.url, "host_lost_after_s = 600\n", "10.213.0.1").await;
    let join = c.join_token().await;
    let _a = c.agent_in("host-a", &join, OVERLAY, None, "10.213.0.1");
    let _b = c.agent_in("host-b", &join, OVERLAY, Some(&ns[1]), "10.213.0.2");
    let _cc = c.agent_in("host-c", &join, OVERLAY, Some(&ns[2]), "10.213.0.3");
    c.wait_hosts(3).await;

    // IPAM: three distinct, non-overlapping /64s of one /48.
    let hosts = c.ok("GET", "/v1/hosts", None, 200).await;
    let prefixes: BTreeSet<String> = hosts["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["ipv6_prefix"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(prefixes.len(), 3, "{hosts}");
    let p48: BTreeSet<String> = prefixes
        .iter()
        .map(|p| p.split(':').take(3).collect::<Vec<_>>().join(":"))
        .collect();
    assert_eq!(p48.len(), 1, "one cluster /48: {prefixes:?}");

    // Every host reports its key and reaches both others.
    let t0 = Instant::now();
    loop {
        let h = c.ok("GET", "/v1/hosts", None, 200).await;
        let meshed = h["items"].as_array().unwrap().iter().all(|x| {
            x["overlay"]["peers"].as_array().is_some_and(|p| {
                p.len() == 2
                    && p.iter()
                        .all(|p| p["reachable"] == true && p["rx_bytes"].as_u64() > Some(0))
            })
        });
        if meshed {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "full mesh not up: {h:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let keys: BTreeSet<String> = c.ok("GET", "/v1/hosts", None, 200).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["overlay"]["public_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 3, "one key per host");

    // Web instances on b and c only (a is drained); the edge on a routes to them.
    c.ok("POST", "/v1/hosts/host-a/drain", None, 200).await;
    c.create_shop_env().await;
    let server = c.dir.path().join("server.py");
    std::fs::write(&server, SERVER).unwrap();
    let web_port = free_port();
    let edge_port = free_port();
    let manifest = format!(
        "schema_version = 1\n[processes.web]\ncommand = [\"python3\", \"{}\", \"{web_port}\"]\nports = [{web_port}]\nscale = 2\nstop_grace_s = 1\n[processes.web.health]\nkind = \"http\"\npath = \"/\"\ninterval_s = 1\ntimeout_s = 1\ngrace_s = 0\n",
        server.display()
    );
    c.release(&manifest).await;
    let _edge = route_deploy_and_edge(&c, edge_port, web_port).await;

    // Both instances ready, one on b and one on c, at addresses of their hosts' /64s.
    let mut by_host = std::collections::BTreeMap::new();
    let t0 = Instant::now();
    while by_host.len() < 2 {
        let s = c.status().await;
        by_host.clear();
        for i in s["instances"].as_array().unwrap() {
            if i["desired"] == "run" && i["ready"] == true {
                by_host.insert(
                    i["host"].as_str().unwrap().to_owned(),
                    (
                        i["id"].as_str().unwrap().to_owned(),
                        i["address"].as_str().unwrap_or_default().to_owned(),
                    ),
                );
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "2 ready instances on b and c: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let hosts = c.ok("GET", "/v1/hosts", None, 200).await;
    assert!(
        !by_host.contains_key("host-a"),
        "host-a is drained: {by_host:?}"
    );
    for (h, (_, addr)) in &by_host {
        let prefix = host_named(&hosts, h)["ipv6_prefix"].as_str().unwrap();
        let net = prefix.trim_end_matches("::/64");
        assert!(
            addr.starts_with(net),
            "{h}'s instance address {addr} is in its /64 {prefix}"
        );
    }
    let on_b = by_host["host-b"].0.clone();
    let on_c = by_host["host-c"].0.clone();

    // Traffic entering the edge on a reaches both b and c over the overlay.
    let both =
        |s: &BTreeSet<String>, failed: usize| failed == 0 && s.contains(&on_b) && s.contains(&on_c);
    wait_served(
        edge_port,
        "the edge to reach b and c",
        Duration::from_secs(60),
        both,
    )
    .await;

    // Cut c's underlay link: a sees c unreachable and the edge's applied routing table (the
    // one it persists) loses c's backend. (The edge would also skip a backend that does not
    // answer, so the table is what shows the overlay's effect.)
    let c_addr = by_host["host-c"].1.clone();
    let table = c.dir.path().join("edge/table.json");
    let routes_to_c = |want: bool| {
        let t: Value = serde_json::from_slice(&std::fs::read(&table).unwrap_or_default())
            .unwrap_or(Value::Null);
        let has = t["routes"].as_array().is_some_and(|r| {
            r.iter().any(|r| {
                r["backends"].as_array().is_some_and(|b| {
                    b.iter()
                        .any(|b| b.as_str().is_some_and(|b| b.contains(&c_addr)))
                })
            })
        });
        has == want
    };
    assert!(routes_to_c(true), "the edge routes to c before the cut");
    // Sets c's underlay link up or down and waits (at most 30 s) until the edge's table routes
    // to c exactly when the link is up; how long that took.
    let set_link = async |state: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns[2], "ip", "link", "set", "u0", state])
            .status()
            .unwrap();
        let t0 = Instant::now();
        while !routes_to_c(state == "up") {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the edge's table does not follow c's link ({state}) after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        t0.elapsed()
    };
    let took = set_link("down").await;
    eprintln!("c's backend left the edge's table {took:?} after the link was cut");
    let h = c.ok("GET", "/v1/hosts", None, 200).await;
    let unreachable = &host_named(&h, "host-a")["overlay"]["unreachable"];
    assert_eq!(unreachable, &json!(["host-c"]), "{h:#}");
    // The operator sees the degraded state with the real `sb`.
    let out = Command::new(common::sb::sb_binary())
        .args(["hosts", "list"])
        .env("SCALEBOX_CONFIG_DIR", c.dir.path())
        .env("SCALEBOX_URL", format!("http://{}", c.api))
        .env("SCALEBOX_TOKEN", &c.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("host-a"))
        .unwrap_or_default();
    assert!(
        out.status.success() && row.contains("degraded: cannot reach host-c"),
        "sb hosts list:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let only_b =
        |s: &BTreeSet<String>, failed: usize| failed == 0 && s.len() == 1 && s.contains(&on_b);
    wait_served(
        edge_port,
        "only b to serve",
        Duration::from_secs(10),
        only_b,
    )
    .await;

    // Restore it: c is routed and serves again.
    let took = set_link("up").await;
    eprintln!("c's backend was back in the edge's table {took:?} after the link was restored");
    wait_served(
        edge_port,
        "b and c to serve again",
        Duration::from_secs(30),
        both,
    )
    .await;

    // Remove host c from the cluster: a and b drop it from their WireGuard peers.
    let c_id = host_named(&h, "host-c")["id"].as_str().unwrap().to_owned();
    c.ok("DELETE", "/v1/hosts/host-c", None, 204).await;
    let t0 = Instant::now();
    loop {
        let h = c.ok("GET", "/v1/hosts", None, 200).await;
        let gone = ["host-a", "host-b"].iter().all(|n| {
            let peers = host_named(&h, n)["overlay"]["peers"]
                .as_array()
                .unwrap()
                .clone();
            peers.len() == 1 && peers.iter().all(|p| p["host"] != c_id.as_str())
        });
        if gone {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "host-c still a peer: {h:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A busybox httpd image (OCI layout) serving a fixed page on 8080; its path and manifest digest.
fn web_layout(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let root = dir.join("webroot");
    for d in ["bin", "etc", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "httpd"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(
        root.join("srv/index.html"),
        "served from a microVM on host b\n",
    )
    .unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let cfg = scalebox_image::ImageConfig {
        entrypoint: ["/bin/httpd", "-f", "-p", "8080", "-h", "/srv"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let out = dir.join("weblayout");
    let digest = scalebox_image::build::write_oci_layout(&out, &[layer], &cfg, "latest").unwrap();
    (out, digest)
}

#[test]
fn a_microvm_on_host_b_serves_the_edge_on_host_a_over_the_overlay() {
    let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = scalebox_vmm::initramfs::build_static_init(&ws).unwrap();
    // The namespaces have no way out: fetch the guest kernel here first.
    let kernel = tempfile::tempdir().unwrap();
    scalebox_vmm::kernel::ensure_kernel(kernel.path()).expect("guest kernel");
    let layout = web_layout(kernel.path());
    let tag = format!("v{}", std::process::id() % 100_000);
    let net = underlay(&tag, &["a", "b"]);
    let names: Vec<String> = net.hosts.iter().map(|h| h.name.clone()).collect();
    let kdir = kernel.path().join("kernel");
    net.hosts[0].run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(vm_scenario(names, init, kdir, layout));
    });
    // The namespace teardown kills every process left in them, QEMU included.
    drop(net);
}

async fn vm_scenario(
    ns: Vec<String>,
    init: std::path::PathBuf,
    kernel: std::path::PathBuf,
    (layout, digest): (std::path::PathBuf, String),
) {
    let tdb = scalebox_testkit::test_db().await;
    let (c, _control) =
        Cluster::start_on(&tdb.url, "host_lost_after_s = 600\n", "10.213.0.1").await;
    let join = c.join_token().await;
    let _a = c.agent_in("host-a", &join, OVERLAY, None, "10.213.0.1");
    let b_data = c.dir.path().join("host-b");
    std::fs::create_dir_all(&b_data).unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&kernel)
        .arg(b_data.join("kernel"))
        .status()
        .unwrap();
    assert!(cp.success());
    let _b = c.agent_with(
        "host-b",
        &join,
        OVERLAY,
        Some(&ns[1]),
        "10.213.0.2",
        "qemu",
        &[("SCALEBOX_INIT_BIN", init.as_path())],
    );
    c.wait_hosts(2).await;
    c.ok("POST", "/v1/hosts/host-a/drain", None, 200).await;
    c.create_shop_env().await;
    let edge_port = free_port();
    let manifest = "schema_version = 1\n[processes.web]\nports = [8080]\nstop_grace_s = 1\n[processes.web.resources]\nmemory_mb = 128\n[processes.web.health]\nkind = \"http\"\npath = \"/\"\ninterval_s = 2\ntimeout_s = 2\ngrace_s = 0\n";
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/releases",
        Some(
            json!({"image_ref": format!("oci:{}:latest", layout.display()),
                    "image_digest": digest, "manifest": manifest}),
        ),
        201,
    )
    .await;
    let _edge = route_deploy_and_edge(&c, edge_port, 8080).await;
    // The VM boots on b (TCG here), gets an address in b's /64 and turns ready.
    let t0 = Instant::now();
    let addr = loop {
        let s = c.status().await;
        let ready = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["desired"] == "run" && i["ready"] == true && i["host"] == "host-b");
        if let Some(i) = ready {
            // The VM uses the address the control plane's IPAM allocated for it.
            assert_eq!(i["address"], i["ipv6_address"], "{i}");
            break i["address"].as_str().unwrap().to_owned();
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let log = std::fs::read_to_string(c.dir.path().join("host-b.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "no ready VM on host-b: {s:#}\nhost-b log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let hosts = c.ok("GET", "/v1/hosts", None, 200).await;
    let prefix = host_named(&hosts, "host-b")["ipv6_prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    let net: std::net::Ipv6Addr = prefix.trim_end_matches("/64").parse().unwrap();
    let ip: std::net::Ipv6Addr = addr.parse().unwrap();
    assert_eq!(
        ip.segments()[..4],
        net.segments()[..4],
        "the VM's address {ip} is in host-b's /64 {prefix}"
    );
    assert_ne!(
        ip.segments()[4..],
        [0, 0, 0, 1],
        "the VM has its own address, not the host's"
    );
    // A client on host a, through the edge on a, over WireGuard to the VM on b.
    let addr_edge = format!("[::1]:{edge_port}").parse().unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(5),
            request(addr_edge, "GET", "/index.html", &[], None),
        )
        .await
            && r.status == 200
        {
            assert_eq!(r.text(), "served from a microVM on host b\n");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the edge on a never reached the VM on b"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
