//! Real guests under QEMU (TCG here; KVM where it works): the platform kernel from Debian, our
//! initramfs and `scalebox-init`, a busybox root filesystem built by the test with mkfs.ext4.

mod common;

use common::{Guest, guest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scalebox_init::proto::{ExitStatus, GuestMsg, Net, RunConfig};
use scalebox_vmm::channel::Channel;
use scalebox_vmm::qemu::{self, VmHandle, VmSpec};

/// A busybox root filesystem: `/bin/*` applets, a user `app` (1000), `/srv`.
fn rootfs(dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("root");
    for d in [
        "bin", "etc", "tmp", "srv/www", "home/app", "proc", "sys", "dev", "run",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: install the Debian package busybox-static"
    );
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "id", "pwd", "env", "sleep", "stat", "head", "tr", "httpd", "ls",
        "hostname", "dd", "mkdir", "awk",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    std::os::unix::fs::chown(root.join("home/app"), Some(1000), Some(1000)).unwrap();
    for (path, content) in extra {
        std::fs::write(root.join(path), content).unwrap();
    }
    let img = dir.join("rootfs.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("64M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Kills the VM when the test ends, even when it fails.
struct Kill(VmHandle);

impl Drop for Kill {
    fn drop(&mut self) {
        self.0.kill();
    }
}

impl std::ops::Deref for Kill {
    type Target = VmHandle;
    fn deref(&self) -> &VmHandle {
        &self.0
    }
}

struct Booted {
    vm: Kill,
    chan: Channel,
    logs: String,
}

async fn boot(
    g: &Guest,
    dir: &Path,
    id: &str,
    memory_mib: u32,
    tap: Option<(String, String)>,
    netns: Option<String>,
    cfg: RunConfig,
) -> Booted {
    boot_with_disks(g, dir, id, memory_mib, tap, netns, vec![], cfg).await
}

#[allow(clippy::too_many_arguments)]
async fn boot_with_disks(
    g: &Guest,
    dir: &Path,
    id: &str,
    memory_mib: u32,
    tap: Option<(String, String)>,
    netns: Option<String>,
    disks: Vec<PathBuf>,
    cfg: RunConfig,
) -> Booted {
    let spec = VmSpec {
        id: id.into(),
        dir: dir.join("vm"),
        kernel: g.kernel.clone(),
        initramfs: g.initramfs.clone(),
        rootfs: dir.join("rootfs.ext4"),
        disks,
        vcpus: 1,
        memory_mib,
        tap,
        netns,
        accel: g.accel,
    };
    let vm = Kill(qemu::start(&spec).await.expect("start qemu"));
    let mut chan = Channel::connect(&vm.control_socket(), Duration::from_secs(10))
        .await
        .expect("connect");
    let deadline = Duration::from_secs(120);
    match chan.wait_hello(deadline).await {
        Ok(GuestMsg::Hello { state, .. }) => assert_eq!(state, "waiting"),
        other => panic!(
            "expected hello, got {other:?}; console:\n{}",
            console(&spec.dir)
        ),
    }
    chan.run(cfg).await.unwrap();
    Booted {
        vm,
        chan,
        logs: String::new(),
    }
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
}

impl Booted {
    /// Reads messages until `pred` holds on the collected logs or the VM exits.
    async fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Option<ExitStatus> {
        let fut = async {
            loop {
                match self.chan.next().await.expect("channel") {
                    Some(GuestMsg::Log { data, .. }) => {
                        self.logs.push_str(&data);
                        if pred(&self.logs) {
                            return None;
                        }
                    }
                    Some(GuestMsg::Exit { status }) => return Some(status),
                    Some(GuestMsg::Error { message }) => {
                        panic!("guest error: {message}; logs: {}", self.logs)
                    }
                    Some(_) => {}
                    None => panic!(
                        "channel closed while waiting for {what}; logs: {}",
                        self.logs
                    ),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; logs: {}", self.logs))
    }
}

#[tokio::test]
async fn runs_workload_with_config_secrets_and_forwards_sigterm() {
    let g = guest().await;
    let dir = tempfile::tempdir().unwrap();
    let script = "echo uid=$(id -u) gid=$(id -g) pwd=$(pwd) greeting=$GREETING host=$(hostname) from_env=$API_KEY\n\
                  stat -c 'mode=%a owner=%u' /run/secrets/scalebox.env\n\
                  cat /run/secrets/scalebox.env\n\
                  echo to-stderr >&2\n\
                  trap 'echo got-term; exit 42' TERM\n\
                  echo ready\n\
                  while true; do sleep 1; done\n";
    rootfs(dir.path(), &[("srv/run.sh", script)]);
    let cfg = RunConfig {
        argv: vec!["sh".into(), "/srv/run.sh".into()],
        env: vec!["GREETING=hello world".into()],
        user: Some("app".into()),
        workdir: Some("/srv".into()),
        hostname: Some("web-1".into()),
        secrets: BTreeMap::from([
            ("API_KEY".into(), "k1".into()),
            ("MULTI".into(), "a\nb".into()),
        ]),
        secrets_as_env: true,
        ..RunConfig::default()
    };
    let mut b = boot(&g, dir.path(), "cfg-test", 128, None, None, cfg).await;
    assert!(b.until("ready", |l| l.contains("ready\n")).await.is_none());
    assert!(
        b.logs
            .contains("uid=1000 gid=1000 pwd=/srv greeting=hello world host=web-1 from_env=k1"),
        "{}",
        b.logs
    );
    assert!(b.logs.contains("mode=400 owner=1000"), "{}", b.logs);
    let expected = scalebox_types::secrets_file::render(&BTreeMap::from([
        ("API_KEY".into(), "k1".into()),
        ("MULTI".into(), "a\nb".into()),
    ]));
    assert!(
        b.logs.contains(&expected),
        "secrets file content: {}",
        b.logs
    );
    assert!(b.logs.contains("to-stderr"));
    b.chan.signal(libc::SIGTERM).await.unwrap();
    let st = b.until("exit", |_| false).await.expect("exit status");
    assert_eq!(
        st,
        ExitStatus {
            code: Some(42),
            signal: None,
            oom: false
        },
        "{}",
        b.logs
    );
    assert!(b.logs.contains("got-term"));
    assert!(
        b.vm.wait_exit(Duration::from_secs(30)).await,
        "VM powers off after the workload exits"
    );
}

#[tokio::test]
async fn oom_inside_the_guest_is_reported() {
    let g = guest().await;
    let dir = tempfile::tempdir().unwrap();
    rootfs(dir.path(), &[]);
    let cfg = RunConfig {
        argv: vec![
            "awk".into(),
            "BEGIN { s = \"x\"; while (1) s = s s; print \"survived\" }".into(),
        ],
        ..RunConfig::default()
    };
    let mut b = boot(&g, dir.path(), "oom-test", 96, None, None, cfg).await;
    let st = b.until("exit", |_| false).await.expect("exit status");
    assert!(st.oom, "OOM reported: {st:?}; logs: {}", b.logs);
    assert_eq!(st.signal, Some(libc::SIGKILL), "{st:?}");
    assert!(!b.logs.contains("survived"));
}

/// A network namespace owned by the test, removed on drop (with everything in it).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("sbt-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success(),
            "ip netns add (iproute2, root)"
        );
        Netns(name)
    }
    fn sh(&self, cmd: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", cmd])
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn http_server_in_the_guest_answers_through_the_tap() {
    let g = guest().await;
    let dir = tempfile::tempdir().unwrap();
    rootfs(
        dir.path(),
        &[("srv/www/index.html", "hello from the guest\n")],
    );
    let ns = Netns::new();
    let setup = ns.sh(
        "ip link set lo up && ip tuntap add dev sbtap0 mode tap && ip addr add 10.213.0.1/24 dev sbtap0 && \
         ip -6 addr add fd00:5ca1:e::1/64 dev sbtap0 nodad && ip link set sbtap0 up",
    );
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let cfg = RunConfig {
        argv: vec![
            "httpd".into(),
            "-f".into(),
            "-v".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/srv/www".into(),
        ],
        net: Net {
            ipv4: Some("10.213.0.2/24".into()),
            ipv4_gateway: Some("10.213.0.1".into()),
            ipv6: Some("fd00:5ca1:e::2/64".into()),
            ipv6_gateway: Some("fd00:5ca1:e::1".into()),
            nameservers: vec![],
        },
        ..RunConfig::default()
    };
    let tap = Some(("sbtap0".to_string(), "02:5c:a1:00:00:02".to_string()));
    let mut b = boot(
        &g,
        dir.path(),
        "net-test",
        128,
        tap,
        Some(ns.0.clone()),
        cfg,
    )
    .await;
    let mut answered = (String::new(), String::new());
    for _ in 0..200 {
        let v4 = ns.sh("curl -s --max-time 2 http://10.213.0.2:8080/");
        let v6 = ns.sh("curl -s --max-time 2 'http://[fd00:5ca1:e::2]:8080/'");
        answered = (
            String::from_utf8_lossy(&v4.stdout).into_owned(),
            String::from_utf8_lossy(&v6.stdout).into_owned(),
        );
        if answered.0.contains("hello") && answered.1.contains("hello") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answered.0, "hello from the guest\n", "IPv4 through the TAP");
    assert_eq!(answered.1, "hello from the guest\n", "IPv6 through the TAP");
    b.chan.signal(libc::SIGTERM).await.unwrap();
    let st = b.until("exit", |_| false).await.expect("exit status");
    assert_eq!(
        st,
        ExitStatus {
            code: None,
            signal: Some(libc::SIGTERM),
            oom: false
        },
        "{}",
        b.logs
    );
    assert!(b.vm.wait_exit(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn volumes_are_mounted_and_writes_persist() {
    let g = guest().await;
    let dir = tempfile::tempdir().unwrap();
    rootfs(dir.path(), &[]);
    let vol_src = dir.path().join("volsrc");
    std::fs::create_dir_all(&vol_src).unwrap();
    std::fs::write(vol_src.join("hello"), "from the volume\n").unwrap();
    let vol = dir.path().join("vol.ext4");
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&vol_src)
        .arg(&vol)
        .arg("16M")
        .output()
        .unwrap();
    assert!(o.status.success());
    let cfg = RunConfig {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /data/hello && echo written-in-guest > /data/out".into(),
        ],
        mounts: vec![scalebox_init::proto::Mount {
            device: "/dev/vdb".into(),
            path: "/data".into(),
            read_only: false,
        }],
        ..RunConfig::default()
    };
    let mut b = boot_with_disks(
        &g,
        dir.path(),
        "vol-test",
        128,
        None,
        None,
        vec![vol.clone()],
        cfg,
    )
    .await;
    let st = b.until("exit", |_| false).await.expect("exit status");
    assert_eq!(st.code, Some(0), "{}", b.logs);
    assert!(b.logs.contains("from the volume"), "{}", b.logs);
    assert!(b.vm.wait_exit(Duration::from_secs(30)).await);
    let out = Command::new("debugfs")
        .args(["-R", "cat /out"])
        .arg(&vol)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written-in-guest\n",
        "the write survived the VM"
    );
}
