//! The control channel over vsock on a real guest, the way Firecracker carries it: QEMU (TCG
//! here) gives the guest a vhost-user vsock device served by rust-vmm's `vhost-device-vsock`,
//! which exposes the guest's ports through a hybrid vsock Unix socket with Firecracker's
//! `CONNECT <port>` / `OK <n>` handshake. The VM has no virtio-serial port, so `scalebox-init`
//! listens on vsock port 1024; the host side is `Channel::connect_vsock`, the same code the
//! Firecracker backend uses. One boot: run a workload, read its output, hang up and reconnect
//! (as a restarted agent does), signal it, get its exit status.
//!
//! Needs `vhost-device-vsock` on PATH (or `VHOST_DEVICE_VSOCK`); `scripts/deps` installs it
//! with `cargo install`. Without it the test says so and passes without booting.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scalebox_init::proto::{ExitStatus, GuestMsg, RunConfig};
use scalebox_vmm::channel::Channel;
use scalebox_vmm::firecracker::launch::find_on_path;
use scalebox_vmm::qemu::{self, VmSpec};

fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian package busybox-static)");
    for a in ["sh", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let img = dir.join("rootfs.ext4");
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("32M")
        .output()
        .expect("mkfs.ext4");
    assert!(o.status.success());
    img
}

/// Kills the (daemonised) VM when the test ends, even when it fails.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill of a process this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Kills and reaps the vsock backend when the test ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads guest messages until `pred` holds on the collected output or the workload exits.
async fn until(
    chan: &mut Channel,
    logs: &mut String,
    pred: impl Fn(&str) -> bool,
) -> Option<ExitStatus> {
    let fut = async {
        loop {
            match chan.next().await.expect("channel") {
                Some(GuestMsg::Log { data, .. }) => {
                    logs.push_str(&data);
                    if pred(logs) {
                        return None;
                    }
                }
                Some(GuestMsg::Exit { status }) => return Some(status),
                Some(GuestMsg::Error { message }) => panic!("guest error: {message}"),
                Some(_) => {}
                None => panic!("channel closed; output so far: {logs}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn control_channel_over_hybrid_vsock() {
    let backend = std::env::var_os("VHOST_DEVICE_VSOCK")
        .map(PathBuf::from)
        .or_else(|| find_on_path("vhost-device-vsock"));
    // A missing tool fails the test rather than skipping it: a skip would pass without
    // showing anything.
    let backend = backend.expect(
        "vhost-device-vsock not found: run scripts/deps (it runs `cargo install vhost-device-vsock`)",
    );
    let g = common::guest().await;

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("vm");
    std::fs::create_dir_all(&run).unwrap();
    let (vhost, uds) = (run.join("vhost.sock"), run.join("vsock.sock"));
    let _dev = ChildGuard(
        Command::new(&backend)
            .arg("--vm")
            .arg(format!(
                "guest-cid=3,socket={},uds-path={}",
                vhost.display(),
                uds.display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(run.join("vhost-device.log")).unwrap())
            .spawn()
            .expect("start vhost-device-vsock"),
    );
    for _ in 0..100 {
        if vhost.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        vhost.exists(),
        "vhost-device-vsock did not create its socket"
    );

    let spec = VmSpec {
        id: "vsock-test".into(),
        dir: run.clone(),
        kernel: g.kernel.clone(),
        initramfs: g.initramfs.clone(),
        rootfs: rootfs(dir.path()),
        disks: vec![],
        vcpus: 1,
        memory_mib: 128,
        tap: None,
        netns: None,
        accel: g.accel,
    };
    let args = qemu::with_vhost_user_vsock(&qemu::command_line(&spec), &vhost, spec.memory_mib);
    let vm = qemu::start_with_args(&spec, args)
        .await
        .expect("start qemu");
    let _vm = KillOnDrop(vm.pid);
    let console = || std::fs::read_to_string(run.join("console.log")).unwrap_or_default();

    let mut chan = match Channel::connect_vsock(&uds, Duration::from_secs(120)).await {
        Ok(c) => c,
        Err(e) => panic!("{e}; console:\n{}", console()),
    };
    match chan.wait_hello(Duration::from_secs(30)).await {
        Ok(GuestMsg::Hello { state, .. }) => assert_eq!(state, "waiting"),
        other => panic!("expected hello, got {other:?}; console:\n{}", console()),
    }
    chan.run(RunConfig {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "trap 'echo got-term; exit 7' TERM; echo ready over vsock; while true; do sleep 1; done"
                .into(),
        ],
        ..RunConfig::default()
    })
    .await
    .unwrap();
    let mut logs = String::new();
    assert!(
        until(&mut chan, &mut logs, |l| l.contains("ready over vsock\n"))
            .await
            .is_none()
    );

    // Hang up and come back, as a restarted agent does: a new connection, `hello` says running.
    drop(chan);
    let mut chan = Channel::connect_vsock(&uds, Duration::from_secs(30))
        .await
        .expect("reconnect");
    match chan.wait_hello(Duration::from_secs(30)).await {
        Ok(GuestMsg::Hello { state, pid, .. }) => {
            assert_eq!(state, "running");
            assert!(pid.is_some());
        }
        other => panic!("expected hello, got {other:?}"),
    }
    chan.signal(libc::SIGTERM).await.unwrap();
    let st = until(&mut chan, &mut logs, |_| false)
        .await
        .expect("exit status");
    assert_eq!(
        st,
        ExitStatus {
            code: Some(7),
            signal: None,
            oom: false
        },
        "{logs}"
    );
    assert!(logs.contains("got-term"), "{logs}");
    assert!(
        vm.wait_exit(Duration::from_secs(30)).await,
        "the VM powers off after the workload exits"
    );
}
