//! `scaleboxd agent` with the microVM backend, driven through its API: an instance of an OCI
//! archive (built by the test) boots as a real guest (QEMU; TCG here), its output reaches the log endpoint, the agent survives `kill -9`
//! and re-adopts the running VM without booting a duplicate, and a stop delivers SIGTERM through
//! init and reports the workload's exit code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scalebox_testkit::http::{Response, request};
use serde_json::{Value, json};

const TOKEN: &str = "agent-test-token-0123456789";

/// An OCI archive (built without Docker) of a busybox image.
fn image(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian package busybox-static)");
    for a in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let cfg = scalebox_image::ImageConfig {
        cmd: vec!["/bin/sh".into()],
        ..Default::default()
    };
    scalebox_image::build::write_oci_layout(&dir.join("layout"), &[layer], &cfg, "latest").unwrap();
    let archive = dir.join("image.tar");
    scalebox_image::build::write_oci_archive(&dir.join("layout"), &archive).unwrap();
    archive
}

struct Agent {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Agent {
    /// Starts the agent; without `netns` it runs with `--no-network` (tests never touch the
    /// host's own network namespace), with one it runs inside that namespace with networking.
    fn start(cfg: &Path, init: &Path, addr: std::net::SocketAddr, netns: Option<&str>) -> Agent {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_scaleboxd")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_scaleboxd")),
        };
        cmd.args(["agent", "--config"]).arg(cfg);
        if netns.is_none() {
            cmd.arg("--no-network");
        }
        let child = cmd
            .env("SCALEBOX_INIT_BIN", init)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent { child, addr }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let auth = format!("Bearer {TOKEN}");
        let b = body.map(|b| serde_json::to_vec(&b).unwrap());
        let mut h = vec![("Authorization", auth.as_str())];
        if b.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        request(self.addr, method, path, &h, b.as_deref())
            .await
            .unwrap()
    }

    /// Runs `argv` in instance `id` through the agent; the result JSON.
    async fn exec(&self, id: &str, argv: &[&str]) -> Value {
        let body = json!({ "argv": argv, "timeout_s": 60 });
        let r = self
            .call("POST", &format!("/v1/instances/{id}/exec"), Some(body))
            .await;
        assert_eq!(r.status, 200, "exec {argv:?}: {}", r.text());
        r.json()
    }

    async fn wait_up(&self) {
        for _ in 0..1200 {
            if let Ok(r) = request(
                self.addr,
                "GET",
                "/v1/instances",
                &[("Authorization", &format!("Bearer {TOKEN}"))],
                None,
            )
            .await
                && r.status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("agent API did not come up");
    }

    async fn wait_state(&self, id: &str, want: &[&str]) -> Value {
        let mut last = Value::Null;
        for _ in 0..1200 {
            let r = self.call("GET", &format!("/v1/instances/{id}"), None).await;
            last = r.json();
            let state = last["state"].as_str().unwrap_or_default();
            if want.contains(&state) {
                return last;
            }
            if want.iter().all(|w| *w != "failed") && state == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("instance {id} never reached {want:?}: {last}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_pids(key_part: &str) -> Vec<i32> {
    scalebox_vmm::qemu::list_running()
        .into_iter()
        .filter(|(k, _)| k.contains(key_part))
        .map(|(_, p)| p)
        .collect()
}

/// The static init, the test image, a free API address and an agent config (data in
/// `<dir>/data`, `extra` appended) for one test.
async fn setup(dir: &Path, extra: &str) -> (PathBuf, PathBuf, std::net::SocketAddr, PathBuf) {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = tokio::task::spawn_blocking(move || scalebox_vmm::initramfs::build_static_init(&ws))
        .await
        .unwrap()
        .unwrap();
    let img = image(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\ntoken = \"{TOKEN}\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    (init, img, addr, cfg)
}

#[tokio::test]
async fn instance_boots_survives_agent_kill9_and_stops_with_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (init, img, addr, cfg) = setup(dir.path(), "").await;

    let mut agent = Agent::start(&cfg, &init, addr, None);
    agent.wait_up().await;
    let spec = json!({
        "generation": 1,
        "image": {"kind": "archive", "path": img.display().to_string()},
        "command": "echo hello-from-vm; trap 'echo stopping; exit 7' TERM; while true; do sleep 1; done",
        "resources": {"cpu": 1, "memory_mb": 128},
        "stop_grace_s": 20
    });
    let r = agent.call("PUT", "/v1/instances/web-1", Some(spec)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rec = agent.wait_state("web-1", &["running", "ready"]).await;
    let pid = rec["vm"]["pid"]
        .as_i64()
        .or_else(|| rec["handle"]["pid"].as_i64())
        .unwrap_or_else(|| panic!("no VM pid in {rec}"));
    for _ in 0..600 {
        if agent
            .call("GET", "/v1/instances/web-1/logs", None)
            .await
            .text()
            .contains("hello-from-vm")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent
            .call("GET", "/v1/instances/web-1/logs", None)
            .await
            .text()
            .contains("hello-from-vm")
    );
    assert_eq!(qemu_pids("web-1"), vec![pid as i32]);

    // kill -9 the agent: the VM keeps running; the restarted agent re-adopts it.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert_eq!(
        qemu_pids("web-1"),
        vec![pid as i32],
        "the VM outlives its agent"
    );
    drop(agent);
    let agent = Agent::start(&cfg, &init, addr, None);
    agent.wait_up().await;
    let rec = agent.wait_state("web-1", &["running", "ready"]).await;
    let again = rec["vm"]["pid"]
        .as_i64()
        .or_else(|| rec["handle"]["pid"].as_i64())
        .unwrap();
    assert_eq!(again, pid, "re-adopted, not rebooted");
    assert_eq!(qemu_pids("web-1"), vec![pid as i32], "no duplicate VM");

    // Stop: SIGTERM through init, the trap exits 7.
    let r = agent.call("POST", "/v1/instances/web-1/stop", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let done = agent.wait_state("web-1", &["exited", "failed"]).await;
    assert_eq!(done["exit"]["code"], 7, "{done}");
    assert!(qemu_pids("web-1").is_empty(), "VM gone after stop");
}

/// A network namespace owned by the test (removed with everything in it on drop), plus the VMs
/// of one agent data dir (killed on drop, should the test fail half-way).
struct Netns {
    name: String,
    vms: PathBuf,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, pid) in scalebox_vmm::qemu::list_running_in(&self.vms) {
            // SAFETY: killing a QEMU process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Removes the "outside" namespace of the egress check.
struct OutNs(String);

impl Drop for OutNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An image whose workload is busybox httpd serving `/srv/index.html` on port 8080.
fn web_image(dir: &Path) -> PathBuf {
    let root = dir.join("webroot");
    for d in ["bin", "etc", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "httpd", "wget", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("srv/index.html"), "served from a microVM\n").unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let cfg = scalebox_image::ImageConfig {
        entrypoint: vec![
            "/bin/httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/srv".into(),
        ],
        ..Default::default()
    };
    scalebox_image::build::write_oci_layout(&dir.join("weblayout"), &[layer], &cfg, "latest")
        .unwrap();
    dir.join("weblayout")
}

#[test]
fn networked_instance_becomes_ready_when_its_health_check_passes_over_the_tap() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = scalebox_vmm::initramfs::build_static_init(&ws).unwrap();
    let layout = web_image(dir.path());
    // The namespace has no route out: fetch the guest kernel into the agent's data dir first.
    scalebox_vmm::kernel::ensure_kernel(&dir.path().join("data")).expect("guest kernel");
    let ns = Netns {
        name: format!("sbt-agent-{}", std::process::id()),
        vms: dir.path().join("data/vms"),
    };
    let _ = Command::new("ip")
        .args(["netns", "del", &ns.name])
        .stderr(Stdio::null())
        .status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.name])
            .status()
            .unwrap()
            .success(),
        "ip netns add (root, iproute2)"
    );
    assert!(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let cfg = dir.path().join("agent.toml");
    let addr: std::net::SocketAddr = "127.0.0.1:7071".parse().unwrap();
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\ntoken = \"{TOKEN}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let name = ns.name.clone();
    let dir_data = dir.path().join("data");
    // Everything below talks to addresses inside the namespace: run it on a thread that entered it.
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on a valid namespace fd, for this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let agent = Agent::start(&cfg, &init, addr, Some(&name));
            agent.wait_up().await;
            let spec = json!({
                "generation": 1,
                "image": {"kind": "oci_layout", "path": layout.display().to_string(), "tag": "latest"},
                "resources": {"cpu": 1, "memory_mb": 128},
                "ports": [{"port": 8080, "protocol": "tcp"}],
                "health": {"kind": "http", "port": 8080, "path": "/", "interval_s": 1, "timeout_s": 1, "grace_s": 0,
                           "healthy_threshold": 1, "unhealthy_threshold": 3},
                "stop_grace_s": 5
            });
            let r = agent.call("PUT", "/v1/instances/web", Some(spec)).await;
            assert_eq!(r.status, 201, "{}", r.text());
            let rec = agent.wait_state("web", &["ready"]).await;
            assert_eq!(rec["health"]["passing"], true, "{rec}");
            let guest = rec["guest_addr"].as_str().unwrap_or_else(|| panic!("no guest address: {rec}")).to_owned();
            let tap = rec["tap"].as_str().unwrap().to_owned();
            let body = Command::new("ip")
                .args(["netns", "exec", &name, "curl", "-sg", "--max-time", "5", &format!("http://[{guest}]:8080/")])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&body.stdout), "served from a microVM\n");

            // Port forwarding hook: host port 18080 → the instance's IPv4 port 8080, reached at
            // the bridge gateway's address (a local address of the namespace).
            let alloc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir_data.join("ipv4.json")).unwrap()).unwrap();
            let guest4: std::net::Ipv4Addr = alloc[&tap].as_str().unwrap().parse().unwrap();
            let in_ns = |cmd: &str| Command::new("ip").args(["netns", "exec", &name, "sh", "-c", cmd]).output().unwrap();
            // (This thread is inside the namespace, so the `nft` commands the hook runs are too.)
            use scalebox_agent::tap_network::forward;
            forward::add(forward::Proto::Tcp, 18080, guest4, 8080, "web-http").unwrap();
            forward::add(forward::Proto::Tcp, 18080, guest4, 8080, "web-http").unwrap();
            assert_eq!(forward::list().unwrap(), ["web-http"], "re-adding replaces");
            let via = in_ns("curl -s --max-time 5 http://10.88.0.1:18080/");
            assert_eq!(String::from_utf8_lossy(&via.stdout), "served from a microVM\n", "through the forward");
            assert!(String::from_utf8_lossy(&in_ns("nft list table inet scalebox_fwd").stdout).contains("sb:web-http"));
            forward::remove("web-http").unwrap();
            assert!(forward::list().unwrap().is_empty());
            assert!(forward::add(forward::Proto::Udp, 1, guest4, 1, "bad tag!").is_err());
            assert!(!String::from_utf8_lossy(&in_ns("nft list table inet scalebox_fwd").stdout).contains("sb:web-http"));
            assert!(!in_ns("curl -s --max-time 2 http://10.88.0.1:18080/").status.success(), "forward removed");
            let r = agent.call("POST", "/v1/instances/web/stop", None).await;
            assert_eq!(r.status, 202);
            let done = agent.wait_state("web", &["exited", "failed"]).await;
            assert_eq!(done["exit"]["signal"], libc::SIGTERM, "{done}");
            let gone = Command::new("ip").args(["netns", "exec", &name, "ip", "link", "show", &tap]).stderr(Stdio::null()).status().unwrap();
            assert!(!gone.success(), "TAP {tap} removed after stop");

            // IPv4 egress: the guest reaches a server in a second namespace ("outside", joined by
            // a veth pair) and is seen with the host's address (masqueraded).
            let sh = |cmd: &str| {
                let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
                assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
            };
            let out_ns = format!("{name}-out");
            sh(&format!("ip netns add {out_ns}"));
            let _out = OutNs(out_ns.clone());
            sh(&format!("ip netns exec {name} ip link add sbvo0 type veth peer name sbvo1 netns {out_ns}"));
            sh(&format!("ip netns exec {name} ip addr add 10.99.0.1/24 dev sbvo0 && ip netns exec {name} ip link set sbvo0 up"));
            sh(&format!("ip netns exec {out_ns} ip addr add 10.99.0.2/24 dev sbvo1 && ip netns exec {out_ns} ip link set sbvo1 up && ip netns exec {out_ns} ip link set lo up"));
            let server = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('10.99.0.2', 8000)); s.listen()\nfor _ in range(20):\n    c, a = s.accept(); c.recv(4096); c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\npeer=' + a[0].encode() + b'\\n'); c.close()\n";
            let mut srv = Command::new("ip").args(["netns", "exec", &out_ns, "python3", "-c", server]).spawn().unwrap();
            let spec = json!({
                "generation": 1,
                "image": {"kind": "oci_layout", "path": layout.display().to_string(), "tag": "latest"},
                "command": "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O- http://10.99.0.2:8000/ && break; sleep 1; done; sleep 1000",
                "resources": {"cpu": 1, "memory_mb": 128},
                "stop_grace_s": 2
            });
            let r = agent.call("PUT", "/v1/instances/egress", Some(spec)).await;
            assert_eq!(r.status, 201, "{}", r.text());
            let mut logs = String::new();
            for _ in 0..600 {
                logs = agent.call("GET", "/v1/instances/egress/logs", None).await.text();
                if logs.contains("peer=") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = srv.kill();
            let _ = srv.wait();
            assert!(logs.contains("peer=10.99.0.1"), "egress masqueraded to the host's address: {logs}");
            agent.call("POST", "/v1/instances/egress/stop", None).await;
            agent.wait_state("egress", &["exited", "failed"]).await;
        });
    })
    .join()
    .unwrap();
}

/// A volume through a real guest: data a workload writes survives a restart of its instance; a
/// snapshot taken right after a write holds it (the guest is synced and paused for the copy, then
/// keeps running); a backup of the snapshot restores byte-exact; a corrupted chunk is refused.
#[tokio::test]
async fn volume_data_survives_restart_and_snapshots_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let (init, img, addr, cfg) = setup(
        dir.path(),
        &format!(
            "[backup]\ntarget = {{ type = \"local\", dir = \"{}\" }}\n",
            backups.display()
        ),
    )
    .await;
    let agent = Agent::start(&cfg, &init, addr, None);
    agent.wait_up().await;
    let spec = |generation: u64| {
        json!({
            "generation": generation,
            "image": {"kind": "archive", "path": img.display().to_string()},
            "command": "while true; do sleep 1; done",
            "resources": {"cpu": 1, "memory_mb": 128},
            "volumes": [{"name": "vol1", "mount_path": "/data", "size_gb": 1}],
            "stop_grace_s": 2
        })
    };
    let r = agent.call("PUT", "/v1/instances/db-1", Some(spec(1))).await;
    assert_eq!(r.status, 201, "{}", r.text());
    agent.wait_state("db-1", &["running", "ready"]).await;
    // Written, not synced by the workload: only the snapshot's quiesce flushes it.
    let r = agent
        .exec(
            "db-1",
            &["/bin/sh", "-c", "echo persisted-42 > /data/f.txt"],
        )
        .await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let r = agent
        .call(
            "POST",
            "/v1/volumes/vol1/snapshots",
            Some(json!({"id": "s1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let snap = data.join("volume-snapshots/vol1/s1.ext4");
    let check = dir.path().join("check.ext4");
    std::fs::copy(&snap, &check).unwrap();
    // The copy is crash-consistent at worst: replay its journal, then read the file.
    let _ = Command::new("e2fsck")
        .args(["-fy"])
        .arg(&check)
        .output()
        .unwrap();
    let o = Command::new("debugfs")
        .args(["-R", "cat /f.txt"])
        .arg(&check)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "persisted-42");
    // The guest was resumed.
    let r = agent
        .exec("db-1", &["/bin/busybox", "cat", "/data/f.txt"])
        .await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "persisted-42", "{r}");

    // Restart (a new generation of the instance, as a redeploy makes): the data is still there.
    let r = agent.call("POST", "/v1/instances/db-1/stop", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    agent
        .wait_state("db-1", &["exited", "failed", "stopped"])
        .await;
    let r = agent.call("PUT", "/v1/instances/db-1", Some(spec(2))).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    agent.wait_state("db-1", &["running", "ready"]).await;
    let r = agent
        .exec("db-1", &["/bin/busybox", "cat", "/data/f.txt"])
        .await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "persisted-42", "{r}");

    // Backup of the snapshot, then restore into a new volume: byte-exact.
    let wait_job = |id: &'static str| {
        let agent = &agent;
        async move {
            for _ in 0..600 {
                let j = agent
                    .call("GET", &format!("/v1/volume-jobs/{id}"), None)
                    .await
                    .json();
                if j["state"] != "running" {
                    return j;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("job {id} did not finish");
        }
    };
    let r = agent
        .call(
            "POST",
            "/v1/volumes/vol1/snapshots/s1/backup",
            Some(json!({"backup_id": "b1", "job_id": "b1"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(wait_job("b1").await["state"], "succeeded");
    let r = agent
        .call(
            "POST",
            "/v1/volumes/vol2/restore",
            Some(json!({"backup_id": "b1", "job_id": "r1"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(wait_job("r1").await["state"], "succeeded");
    assert!(
        std::fs::read(data.join("volumes/vol2.ext4")).unwrap() == std::fs::read(&snap).unwrap(),
        "restored byte-exact"
    );
    // A corrupted chunk in the target is detected; nothing is left behind.
    let chunk = std::fs::read_dir(backups.join("chunks"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut b = std::fs::read(&chunk).unwrap();
    b[0] ^= 0xff;
    std::fs::write(&chunk, b).unwrap();
    let r = agent
        .call(
            "POST",
            "/v1/volumes/vol3/restore",
            Some(json!({"backup_id": "b1", "job_id": "r2"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let j = wait_job("r2").await;
    assert_eq!(j["state"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("chunk"), "{j}");
    assert!(!data.join("volumes/vol3.ext4").exists());
    let r = agent.call("POST", "/v1/instances/db-1/stop", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    agent
        .wait_state("db-1", &["exited", "failed", "stopped"])
        .await;
}
