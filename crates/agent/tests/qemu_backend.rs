//! The microVM backend on real guests (QEMU; TCG here): a workload's output and start arrive as
//! events, SIGTERM reaches it through init, its exit code is reported; and a VM started by one
//! "agent" (a tokio runtime that is then torn down, closing every socket, as a killed process
//! would) is re-adopted by the next one without booting a duplicate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scalebox_agent::backend::*;
use scalebox_agent::qemu_backend::QemuBackend;
use scalebox_agent::spec::{Resources, Secrets};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data_dir() -> PathBuf {
    // Shared across tests so the kernel is fetched once per checkout.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agent-qemu")
}

async fn backend(data: &Path) -> QemuBackend {
    let ws = workspace();
    let init = tokio::task::spawn_blocking(move || scalebox_vmm::initramfs::build_static_init(&ws))
        .await
        .unwrap()
        .unwrap();
    QemuBackend::new(data, Some(init), None)
        .await
        .expect("qemu backend")
}

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
        .unwrap();
    assert!(o.status.success());
    img
}

fn spec(key: &str, rootfs: PathBuf, command: &str) -> VmSpec {
    VmSpec {
        key: key.into(),
        instance_id: key.into(),
        generation: 1,
        rootfs,
        image_config: OciRunConfig::default(),
        command: Some(command.into()),
        env: BTreeMap::from([("WHO".into(), "scalebox".into())]),
        resources: Resources {
            cpu: 1,
            memory_mb: 128,
        },
        net: None,
        secrets: Secrets(BTreeMap::from([("TOKEN".into(), "t0k".into())])),
        secrets_path: None,
        volumes: vec![],
    }
}

async fn collect_until(run: &mut VmRun, needle: &str) -> String {
    let mut out = String::new();
    let fut = async {
        while let Some(ev) = run.events.recv().await {
            if let VmEvent::Log { bytes, .. } = ev {
                out.push_str(&String::from_utf8_lossy(&bytes));
                if out.contains(needle) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in {out:?}"));
    out
}

async fn exit_of(run: &mut VmRun) -> ExitStatus {
    let fut = async {
        while let Some(ev) = run.events.recv().await {
            if let VmEvent::Exited(s) = ev {
                return s;
            }
        }
        panic!("event stream ended without Exited")
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("exit in time")
}

#[tokio::test]
async fn workload_events_signal_and_exit_code() {
    let data = data_dir();
    let b = backend(&data).await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = "trap 'echo bye; exit 42' TERM; echo hi $WHO $(cat /run/secrets/scalebox.env); while true; do sleep 1; done";
    let mut run = b
        .start(spec("agent-events", rootfs(dir.path()), cmd))
        .await
        .expect("start");
    let out = collect_until(&mut run, "hi").await;
    assert!(out.contains("hi scalebox TOKEN=t0k"), "{out}");
    assert!(b.usage(&run.handle).is_some_and(|u| u.memory_bytes > 0));
    b.signal(&run.handle, libc::SIGTERM).await.unwrap();
    let st = exit_of(&mut run).await;
    assert_eq!((st.code, st.oom), (Some(42), false));
    assert!(
        b.list_live()
            .await
            .unwrap()
            .iter()
            .all(|v| v.key != "agent-events"),
        "VM gone after exit"
    );
}

#[test]
fn a_restarted_agent_readopts_the_running_vm() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let img = rootfs(dir.path());
    // First "agent": starts the VM, then dies (runtime dropped: tasks and sockets gone).
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let handle = rt1.block_on(async {
        let b = backend(&data).await;
        let mut run = b
            .start(spec(
                "agent-adopt",
                img,
                "echo up; while true; do sleep 1; done",
            ))
            .await
            .expect("start");
        collect_until(&mut run, "up").await;
        run.handle
    });
    drop(rt1);
    // Second "agent": adopts it; exactly one VMM process for the key exists.
    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        let b = backend(&data).await;
        let live: Vec<LiveVm> = b
            .list_live()
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.key == "agent-adopt")
            .collect();
        assert_eq!(live.len(), 1, "the VM survived the agent");
        assert_eq!(live[0].pid, handle.pid);
        let Adopted::Running(mut run) = b.adopt(handle.clone()).await.expect("adopt") else {
            panic!("expected the VM to be running")
        };
        assert_eq!(run.handle.pid, handle.pid, "same VMM, no duplicate boot");
        b.signal(&run.handle, libc::SIGKILL).await.unwrap();
        let st = exit_of(&mut run).await;
        assert_eq!(st.signal, Some(libc::SIGKILL));
        // An untracked VMM under our data dir is an orphan that list_live reports and kill_orphan removes.
        assert!(
            b.list_live()
                .await
                .unwrap()
                .iter()
                .all(|v| v.key != "agent-adopt")
        );
    });
}
