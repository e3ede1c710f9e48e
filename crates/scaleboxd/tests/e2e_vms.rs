//! VM sandboxes on `scaleboxd up` with real guests (QEMU; TCG here) booted from the real
//! `debian-base` template (built by `scaleboxd rebuild-template` with debootstrap, cached across
//! runs under the target directory), inside a network namespace this test creates. With the real
//! `sb` CLI and the real `ssh` and `mosh` clients: login, status (JSON and human), templates
//! (403/404/400), `sb go` (create from debian-base with the managed key, contract fields of the
//! answer, wait for SSH, a mosh session on a terminal), get/list by id and name, wait --ssh
//! (human and `--json`), `sb vm create` (human and `--json`) and delete (human and `--json`), ssh
//! in with the managed key, `sb connect` (ssh and mosh), snapshot (human and `--json`) →
//! template → `sb run` from it
//! with another key (`-k @FILE.pub`, wait, ssh running a command: its output and exit code)
//! keeps the files but not the old key, `/caddy/check`, auth failures (401), bad input (400), a
//! daemon `kill -9` and restart that re-adopts a running VM, boots again one whose VMM died, and
//! removes orphan VMMs, TAPs, files and forwarding rules; then delete.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Netns, Proc};
use serde_json::{Value, json};

const API: &str = "127.0.0.1:17543";
const HOST_IP: &str = "10.77.0.1";
const VM_DOMAIN: &str = "vms.test";
const GW_PORT: u16 = 18543;
const SSH_OPTS: [&str; 8] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=20",
];

struct World {
    ns: String,
    dir: PathBuf,
    init: PathBuf,
    db_url: String,
    token: String,
    sb: PathBuf,
}

impl World {
    fn up(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("up.log"))
            .unwrap();
        let d = self.dir.display();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_scaleboxd")])
            .args(["up", "--config", &format!("{d}/control.toml")])
            .args(["--agent-config", &format!("{d}/agent.toml")])
            .args(["--edge-config", &format!("{d}/edge.toml")])
            .env("DATABASE_URL", &self.db_url)
            .env("SCALEBOX_INIT_BIN", &self.init)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let t = self.log();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `sb` (inside the namespace: this thread entered it).
    fn sb(&self, args: &[&str]) -> Output {
        Command::new(&self.sb)
            .args(args)
            .env("SCALEBOX_CONFIG_DIR", self.dir.join("sbconfig"))
            .env_remove("SCALEBOX_URL")
            .env_remove("SCALEBOX_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sb_ok(&self, args: &[&str]) -> String {
        let o = self.sb(args);
        assert!(
            o.status.success(),
            "sb {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn sb_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.sb_ok(&a)).unwrap()
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let o = c.arg(format!("http://{API}{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// Runs `sb args` on a terminal (`script`, 24×80) and plays `steps`: once what it printed
    /// since the previous step shows `wait_for`, types `keys`. Returns how it exited and all it
    /// printed (CR LF line ends), or panics when it is still running after 300 s.
    fn sb_on_terminal(&self, args: &[&str], steps: &[(&str, &str)]) -> (ExitStatus, String) {
        use std::io::{Read, Write};
        let cmd = format!(
            "stty rows 24 cols 80; {} {}",
            self.sb.display(),
            args.join(" ")
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("SCALEBOX_CONFIG_DIR", self.dir.join("sbconfig"))
            .env_remove("SCALEBOX_URL")
            .env_remove("SCALEBOX_TOKEN")
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (screen, mut out) = (screen.clone(), child.stdout.take().unwrap());
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n @ 1..) = out.read(&mut b) {
                    screen.lock().unwrap().extend_from_slice(&b[..n]);
                }
            })
        };
        let text =
            |from: usize| String::from_utf8_lossy(&screen.lock().unwrap()[from..]).into_owned();
        let mut stdin = child.stdin.take().unwrap();
        let (mut steps, mut from) = (steps.iter(), 0);
        let mut step = steps.next();
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if let Some((wait_for, keys)) = step
                && text(from).contains(wait_for)
            {
                from = screen.lock().unwrap().len();
                stdin.write_all(keys.as_bytes()).unwrap();
                step = steps.next();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sb {args:?} on a terminal still runs after 300 s; it printed:\n{}\n{}",
                    text(0),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        drop(stdin);
        reader.join().unwrap();
        (status, text(0))
    }

    fn ssh(&self, key: &Path, port: u16, cmd: &str) -> Output {
        Command::new("ssh")
            .args(SSH_OPTS)
            .args(["-i", &key.display().to_string(), "-p", &port.to_string()])
            .arg(format!("user@{HOST_IP}"))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn wait_api(&self) {
        let t = Instant::now();
        while self.call("GET", "/health", None, None).0 != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "API not up:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The debian-base template, built once per target directory (outside the namespace: it
/// downloads from the Debian mirror).
fn cached_template() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-templates");
    let out = Command::new(env!("CARGO_BIN_EXE_scaleboxd"))
        .args(["rebuild-template", "--if-outdated", "--templates-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building debian-base: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    cache
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn vm_sandboxes_on_scaleboxd_up() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = scalebox_vmm::initramfs::build_static_init(&ws).unwrap();
    let sb = Path::new(env!("CARGO_BIN_EXE_scaleboxd")).with_file_name("sb");
    assert!(sb.exists(), "build sb first (cargo build -p scalebox-cli)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tdb = rt.block_on(scalebox_testkit::test_db());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();

    let cache = cached_template();
    let templates = d.join("data/sandbox/templates");
    std::fs::create_dir_all(&templates).unwrap();
    for f in ["debian-base.ext4", "debian-base.version"] {
        scalebox_image::clone_file(&cache.join(f), &templates.join(f)).unwrap();
    }
    std::fs::write(
        d.join("control.toml"),
        format!(
            "listen = \"{API}\"\ndata_dir = \"{dd}/data\"\n[vms]\nhost_ip = \"{HOST_IP}\"\nvm_domain = \"{VM_DOMAIN}\"\nbuild_base_template = false\nboot_timeout_s = 300\napi_domain = \"api.test\"\n[vms.gateway]\nenabled = true\nhttps_listen = \"127.0.0.1:{GW_PORT}\"\nhttp_listen = \"\"\nadmin = \"127.0.0.1:2119\"\n",
            dd = d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "listen = \"127.0.0.1:17570\"\ndata_dir = \"{}/agent\"\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("edge.toml"),
        format!(
            "admin_addr = \"127.0.0.1:17590\"\nstate_dir = \"{}/edge\"\ndefault_ipv6_addr = \"::1\"\ndefault_ipv4_addr = \"127.0.0.1\"\n",
            d.display()
        ),
    )
    .unwrap();
    // The guest kernel comes from Debian's archive: fetch it here, outside the namespace.
    scalebox_vmm::kernel::ensure_kernel(&d.join("agent")).expect("fetch the guest kernel");

    let ns = Netns::create(
        format!("sbvms{}", std::process::id()),
        vec![d.join("agent/vms"), d.join("data/sandbox/vms")],
    );
    // The host's "external" address (no dummy interfaces here: on the namespace's loopback).
    ns.ip(&["ip", "addr", "add", &format!("{HOST_IP}/32"), "dev", "lo"]);
    let mut w = World {
        ns: ns.name.clone(),
        dir: d.clone(),
        init,
        db_url: tdb.url.clone(),
        token: String::new(),
        sb,
    };
    ns.run_inside(move || scenario(&mut w));
    drop(ns);
    drop(tdb);
}

fn scenario(w: &mut World) {
    let up = w.up();
    w.wait_api();
    w.token = std::fs::read_to_string(w.dir.join("data/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let tok = w.token.clone();

    // Login checks the token against the server; status is /info.
    let mut login = Command::new(&w.sb)
        .args(["login", "--host", &format!("http://{API}"), "--token-stdin"])
        .env("SCALEBOX_CONFIG_DIR", w.dir.join("sbconfig"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    login
        .stdin
        .take()
        .unwrap()
        .write_all(tok.as_bytes())
        .unwrap();
    let o = login.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "login: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let info = w.sb_json(&["status"]);
    assert_eq!(info["status"], 200, "{info}");
    assert_eq!(info["host_ip"], HOST_IP, "{info}");
    assert_eq!(info["vm_domain"], VM_DOMAIN);
    assert!(
        info["storage"]["total_gb"].as_f64().unwrap() > 0.0,
        "{info}"
    );
    // The same summary for people: `key  value` lines.
    let human = w.sb_ok(&["status"]);
    let field = |k: &str| {
        human
            .lines()
            .filter_map(|l| l.split_once("  "))
            .find(|(key, _)| key.trim() == k)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {k:?} in `sb status`:\n{human}"))
    };
    assert_eq!(field("server"), format!("http://{API}"));
    assert_eq!(field("host ip"), HOST_IP);
    assert_eq!(field("api domain"), "api.test");
    assert_eq!(field("vm domain"), VM_DOMAIN);
    assert_eq!(field("templates"), info["templates_count"].to_string());
    assert_eq!(field("vms"), "0");
    let numbers = |v: String| -> Vec<f64> {
        v.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let storage = field("storage");
    let st = numbers(storage.clone());
    assert!(
        storage.ends_with(" GB free)") && st.len() == 3 && st[1] > 0.0 && st[0] <= st[1],
        "storage: {storage}"
    );
    let memory = field("memory");
    let mem = numbers(memory.clone());
    assert!(
        memory.contains(" GB free of ") && mem.len() == 2 && mem[0] <= mem[1] && mem[1] > 0.0,
        "memory: {memory}"
    );
    let cpu = field("cpu");
    assert!(
        cpu.strip_suffix('%')
            .and_then(|p| p.parse::<f64>().ok())
            .is_some_and(|p| (0.0..=100.0).contains(&p)),
        "cpu: {cpu}"
    );

    // Templates.
    let t = w.sb_json(&["template", "list"]);
    assert!(t.to_string().contains("debian-base"), "{t}");
    assert_eq!(
        w.call("DELETE", "/templates/debian-base", Some(&tok), None)
            .0,
        403
    );
    assert_eq!(w.call("DELETE", "/templates/nope", Some(&tok), None).0, 404);
    assert_eq!(
        w.call("DELETE", "/templates/bad.name", Some(&tok), None).0,
        400
    );

    // Auth failures and bad input.
    assert_eq!(w.call("GET", "/vms", None, None).0, 401);
    assert_eq!(w.call("GET", "/vms", Some("sbx_wrong"), None).0, 401);
    assert_eq!(w.call("GET", "/health", None, None).1["status"], "ok");
    let pubkey = {
        w.sb_ok(&["config", "show"]);
        keygen(&w.dir.join("key2"));
        std::fs::read_to_string(w.dir.join("key2.pub")).unwrap()
    };
    for (body, code, needle) in [
        (
            json!({"template": "debian-base", "ssh_public_key": "garbage"}),
            400,
            "ssh_public_key",
        ),
        (
            json!({"template": "debian-base", "ssh_public_key": pubkey, "disk_size_gib": 9999}),
            400,
            "disk_size_gib",
        ),
        (
            json!({"template": "nope", "ssh_public_key": pubkey}),
            404,
            "not found",
        ),
        (
            json!({"template": "../x", "ssh_public_key": pubkey}),
            400,
            "template name",
        ),
        (
            json!({"template": "debian-base", "ssh_public_key": pubkey, "cpus": 2}),
            400,
            "cpus",
        ),
    ] {
        let (c, b) = w.call("POST", "/vms", Some(&tok), Some(&body.to_string()));
        assert_eq!(c, code, "{body} → {b}");
        assert!(
            b["error"].as_str().unwrap_or_default().contains(needle),
            "{body} → {b}"
        );
    }
    let (c, b) = w.call("POST", "/vms", Some(&tok), Some("{not json"));
    assert_eq!(c, 400, "{b}");

    // `sb go`: create a VM from debian-base with the CLI's managed key (generated now), wait for
    // SSH and log in with mosh (on a terminal). With --json it first prints the server's answer
    // to the create. Typed in as a person would: yes to ssh's question about the new VM's host
    // key, a command once the VM's shell prompt shows, then `exit` once it printed.
    let t0 = Instant::now();
    let (status, screen) = w.sb_on_terminal(
        &["--json", "go"],
        &[
            ("(yes/no", "yes\r"),
            (":~$", "echo go-$((6*7))-$(hostname)\r"),
            ("go-42-", "exit\r"),
        ],
    );
    eprintln!(
        "sb go: created, SSH up and logged in with mosh after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "sb go ({status}):\n{screen}\n{}",
        w.log_tail()
    );
    let vm: Value = screen
        .find('{')
        .and_then(|at| {
            serde_json::Deserializer::from_str(&screen[at..])
                .into_iter()
                .next()
        })
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("sb --json go printed no VM:\n{screen}"));
    let id = vm["id"].as_str().unwrap().to_owned();
    let name = vm["name"].as_str().unwrap().to_owned();
    assert!(id.starts_with("vm-") && id.len() == 15, "{vm}");
    assert_eq!(name.split('-').count(), 3, "{vm}");
    assert_eq!(vm["ip"], HOST_IP);
    let port = vm["ssh_port"].as_u64().unwrap() as u16;
    assert!(port > 22000, "{vm}");
    assert_eq!(vm["ssh"], format!("ssh -p {port} user@{HOST_IP}"));
    assert_eq!(vm["url"], format!("https://{name}.{VM_DOMAIN}"));
    assert_eq!(vm["status"], "running");
    assert_eq!(vm["template"], "debian-base");
    assert!(
        screen.contains(&format!("go-42-{name}")),
        "the mosh session of sb go ran the command in the VM:\n{screen}"
    );
    // The host key accepted went to sb's own known_hosts, under the VM's id (not the caller's
    // ~/.ssh/known_hosts under an address and port a later VM may get).
    let o = Command::new("ssh-keygen")
        .args(["-F", &id, "-f"])
        .arg(w.dir.join("sbconfig/known_hosts"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{id} in sb's known_hosts: {o:?}");
    for x in [&id, &name] {
        assert_eq!(w.sb_json(&["vm", "get", x])["id"], id.as_str());
    }
    assert!(w.sb_json(&["vm", "list"]).to_string().contains(&id));
    let (c, b) = w.call("GET", "/vms/vm-000000000000", Some(&tok), None);
    assert_eq!((c, b["error"].as_str()), (404, Some("VM not found")));

    let waited = w.sb_ok(&["vm", "wait", &id, "--ssh"]);
    assert!(waited.contains("answers SSH"), "{waited}");
    let v = w.sb_json(&["vm", "wait", &name, "--ssh"]);
    assert_eq!(
        (
            v["id"].as_str(),
            v["status"].as_str(),
            v["ssh_port"].as_u64()
        ),
        (Some(id.as_str()), Some("running"), Some(port as u64)),
        "{v}"
    );

    // `sb vm create`: human (the VM's fields, how to connect) and --json (the server's answer);
    // each VM is deleted at once (human, and --json `{"deleted", "status"}`).
    let made = w.sb_ok(&[
        "vm",
        "create",
        "-t",
        "debian-base",
        "--name",
        "made-human",
        "-m",
        "256",
    ]);
    for want in [
        &["name", "made-human"][..],
        &["template", "debian-base"],
        &["status", "running"],
        &["ip", HOST_IP],
    ] {
        assert!(
            made.lines()
                .any(|l| l.split_whitespace().eq(want.iter().copied())),
            "{want:?} in:\n{made}"
        );
    }
    assert!(
        made.trim_end()
            .ends_with("Connect with: sb connect made-human"),
        "{made}"
    );
    let made = w.sb_json(&[
        "vm",
        "create",
        "-t",
        "debian-base",
        "--name",
        "made-json",
        "-m",
        "256",
    ]);
    assert_eq!(
        (
            made["name"].as_str(),
            made["template"].as_str(),
            made["status"].as_str(),
            made["mem_size_mib"].as_u64(),
            made["ip"].as_str()
        ),
        (
            Some("made-json"),
            Some("debian-base"),
            Some("running"),
            Some(256),
            Some(HOST_IP)
        ),
        "{made}"
    );
    assert!(
        made["id"].as_str().is_some_and(|i| i.starts_with("vm-")),
        "{made}"
    );
    assert_eq!(
        w.sb_json(&["vm", "delete", "made-json"]),
        json!({"deleted": "made-json", "status": 204})
    );
    assert_eq!(
        w.sb_ok(&["vm", "delete", "made-human"]).trim(),
        "Deleted VM made-human."
    );
    let left = w.sb_json(&["vm", "list"]);
    assert_eq!(left["vms"].as_array().map(Vec::len), Some(1), "{left}");
    let managed = w.dir.join("sbconfig/id_ed25519");
    let o = w.ssh(
        &managed,
        port,
        "echo kept > ~/file.txt && sudo -n true && hostname && command -v mosh-server",
    );
    assert!(
        o.status.success(),
        "ssh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    assert!(out.contains(&name) && out.contains("mosh-server"), "{out}");
    // `sb connect --ssh` with extra options and a remote command.
    let o = w.sb(&[
        "connect",
        &name,
        "--ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "--",
        "cat",
        "file.txt",
    ]);
    assert_eq!(
        stdout(&o).trim(),
        "kept",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // `sb connect` (mosh by default): SSH bootstraps mosh-server, then the session runs over
    // UDP through the host's DNAT of the same port number. mosh needs a terminal: `script`.
    let sbcmd = format!(
        "stty rows 24 cols 80; {} connect {name} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -- sh -c 'echo mosh-ok-$((6*7)); sleep 1'",
        w.sb.display()
    );
    let o = Command::new("script")
        .args(["-qec", &sbcmd, "/dev/null"])
        .env("SCALEBOX_CONFIG_DIR", w.dir.join("sbconfig"))
        .env("LANG", "C.UTF-8")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("mosh-ok-42"),
        "mosh session: {}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );

    // The HTTPS gateway: https://{name}.{vm_domain} reaches the VM's port 8080 with a
    // certificate issued on demand (Caddy's internal CA here); unknown names get no certificate;
    // the API is served on its domain.
    let o = w.ssh(
        &managed,
        port,
        "nohup perl -MIO::Socket::INET -e '$s=IO::Socket::INET->new(LocalPort=>8080,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){<$c>; print $c \"HTTP/1.0 200 OK\\r\\n\\r\\nhello from the vm\\n\"; close $c}' >/dev/null 2>&1 &",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let curl = |host: &str, path: &str, ca: Option<&Path>| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "30", "--resolve"])
            .arg(format!("{host}:{GW_PORT}:127.0.0.1"));
        match ca {
            Some(ca) => c.arg("--cacert").arg(ca),
            None => c.arg("-k"),
        };
        c.arg(format!("https://{host}:{GW_PORT}{path}"))
            .output()
            .unwrap()
    };
    let vm_host = format!("{name}.{VM_DOMAIN}");
    let t = Instant::now();
    loop {
        let o = curl(&vm_host, "/", None);
        if stdout(&o).contains("hello from the vm") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "gateway: {}{}\n{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr),
            w.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ca = w
        .dir
        .join("data/sandbox/gateway/caddy/pki/authorities/local/root.crt");
    let o = curl(&vm_host, "/", Some(&ca));
    assert!(
        stdout(&o).contains("hello from the vm"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !curl(&format!("nope.{VM_DOMAIN}"), "/", None)
            .status
            .success()
    );
    let o = curl("api.test", "/health", Some(&ca));
    assert!(
        stdout(&o).contains("\"ok\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The on-demand TLS check itself.
    assert_eq!(
        w.call(
            "GET",
            &format!("/caddy/check?domain={name}.{VM_DOMAIN}"),
            None,
            None
        )
        .0,
        200
    );
    assert_eq!(
        w.call(
            "GET",
            &format!("/caddy/check?domain=nope.{VM_DOMAIN}"),
            None,
            None
        )
        .0,
        404
    );

    // Snapshot → template → a VM from it has the file but not the old key.
    let (c, b) = w.call(
        "POST",
        &format!("/vms/{id}/snapshot"),
        Some(&tok),
        Some("{}"),
    );
    assert_eq!(
        (c, b["error"].as_str()),
        (400, Some("template_name is required"))
    );
    let snap = w.sb_json(&["vm", "snapshot", &name, "-n", "snap1"]);
    assert_eq!(snap["template"], "snap1", "{snap}");
    assert_eq!(snap["source_vm"], id.as_str());
    // The human form says what it made, from which VM.
    let made = w.sb_ok(&["vm", "snapshot", &name, "-n", "snap-human"]);
    assert!(
        made.starts_with(&format!("Template snap-human created from {id} ("))
            && made.trim_end().ends_with("GiB)."),
        "{made}"
    );
    w.sb_ok(&["template", "delete", "snap-human"]);
    let img = w.dir.join("data/sandbox/templates/snap1.ext4");
    let o = Command::new("debugfs")
        .args(["-R", "stat /home/user/.ssh/authorized_keys"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        !stdout(&o).contains("Inode:"),
        "the snapshot keeps no authorized key"
    );
    // The source VM keeps running after the pause.
    assert!(w.ssh(&managed, port, "true").status.success());
    // `sb run`: create from it with key2 (`-k @FILE.pub`: sb logs in with the private key next
    // to it), wait for SSH, then become `ssh` running a command: its output, its exit code.
    let name2 = "from-snap1".to_owned();
    let o = w.sb(&[
        "run",
        "-t",
        "snap1",
        "-k",
        &format!("@{}", w.dir.join("key2.pub").display()),
        "--name",
        &name2,
        "--timeout",
        "300",
        "--ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "--",
        "cat ~/file.txt; wc -l < ~/.ssh/authorized_keys; exit 4",
    ]);
    let progress = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        (
            o.status.code(),
            stdout(&o).split_whitespace().collect::<Vec<_>>()
        ),
        (Some(4), vec!["kept", "1"]),
        "{progress}\n{}",
        w.log_tail()
    );
    assert!(
        progress.contains("Creating a VM from template snap1")
            && progress.contains(&format!("({name2}) from snap1"))
            && progress.contains("SSH is up after"),
        "{progress}"
    );
    let vm2 = w.sb_json(&["vm", "get", &name2]);
    let id2 = vm2["id"].as_str().unwrap().to_owned();
    let port2 = vm2["ssh_port"].as_u64().unwrap() as u16;
    assert_eq!(
        (vm2["template"].as_str(), vm2["status"].as_str()),
        (Some("snap1"), Some("running"))
    );
    assert_ne!(port2, port);
    assert!(
        !w.ssh(&managed, port2, "true").status.success(),
        "the old key must not log in"
    );

    // kill -9 the daemon; while it is down, VM 2's VMM dies and orphans appear.
    up.kill9();
    let vms_root = w.dir.join("data/sandbox/vms");
    for (vid, pid) in scalebox_vmm::qemu::list_running_in(&vms_root) {
        if vid == id2 {
            // SAFETY: killing a QEMU process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let orphan = "vm-0000000000aa";
    let run = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "ip",
        "tuntap",
        "add",
        "dev",
        "sbv0000000000aa",
        "mode",
        "tap",
    ]);
    std::fs::create_dir_all(vms_root.join(orphan)).unwrap();
    run(&["nft", "add table inet scalebox_fwd"]);
    run(&[
        "nft",
        "add chain inet scalebox_fwd prerouting { type nat hook prerouting priority -100 ; }",
    ]);
    run(&[
        "nft",
        &format!(
            "add rule inet scalebox_fwd prerouting udp dport 31999 dnat ip to 172.16.9.9:31999 comment \"sb:{orphan}\""
        ),
    ]);
    let orphan_qemu = Command::new("qemu-system-x86_64")
        .args([
            "-name",
            &format!("scalebox-{orphan}"),
            "-M",
            "none",
            "-display",
            "none",
            "-daemonize",
            "-pidfile",
        ])
        .arg(vms_root.join(orphan).join("qemu.pid"))
        .status()
        .unwrap();
    assert!(orphan_qemu.success());
    assert_eq!(scalebox_vmm::qemu::list_running_in(&vms_root).len(), 2);

    let up2 = w.up();
    w.wait_api();
    let log = w.log();
    for needle in [
        format!("[reconcile] killing orphan VMM {orphan}"),
        "[reconcile] deleting orphan TAP sbv0000000000aa".to_string(),
        format!("[reconcile] removing orphan forwarding rules of {orphan}"),
        format!("[reconcile] re-adopting running VM {id}"),
        format!("[reconcile] booting VM {id2}"),
    ] {
        assert!(
            log.contains(&needle),
            "missing {needle:?} in:\n{}",
            w.log_tail()
        );
    }
    assert!(!Path::new("/sys/class/net/sbv0000000000aa").exists());
    assert!(!vms_root.join(orphan).exists());
    // The re-adopted VM answers at once through the new proxy; the rebooted one after its boot.
    let o = w.ssh(&managed, port, "cat file.txt");
    assert_eq!(
        stdout(&o).trim(),
        "kept",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    w.sb_ok(&["vm", "wait", &name2, "--ssh", "--timeout", "300"]);
    assert!(
        w.ssh(&w.dir.join("key2"), port2, "test -f file.txt")
            .status
            .success()
    );

    // Delete: 204, then 404; everything of the VM is gone.
    w.sb_ok(&["vm", "delete", &name]);
    assert_eq!(
        w.call("GET", &format!("/vms/{id}"), Some(&tok), None).0,
        404
    );
    assert_eq!(
        w.call("DELETE", &format!("/vms/{id}"), Some(&tok), None).0,
        404
    );
    assert!(!vms_root.join(&id).exists());
    assert!(!Path::new(&format!("/sys/class/net/sbv{}", &id[3..])).exists());
    w.sb_ok(&["vm", "delete", &id2]);
    assert!(scalebox_vmm::qemu::list_running_in(&vms_root).is_empty());
    w.sb_ok(&["template", "delete", "snap1"]);
    assert!(!img.exists());
    up2.term();
}
