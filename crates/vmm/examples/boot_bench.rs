//! Boot benchmark driver (run by `bench/boot/run`, not a test): time from "create" to "workload
//! started" (the guest's `started` message) through our QEMU driver, against a bare
//! `qemu-system-x86_64` run of the same kernel, initramfs and root filesystem timed to the same
//! milestone with a minimal client, alternating, N rounds each.
//!
//! Usage: boot_bench <data-dir> <init-binary> <rootfs.ext4> [rounds]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scalebox_init::proto::{GuestMsg, HostMsg, RunConfig, decode, encode};
use scalebox_vmm::channel::Channel;
use scalebox_vmm::qemu::{self, VmSpec};
use scalebox_vmm::{initramfs, kernel};

fn run_cfg() -> RunConfig {
    RunConfig {
        argv: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()],
        ..RunConfig::default()
    }
}

async fn ours(spec: &VmSpec) -> Duration {
    let t = Instant::now();
    let vm = qemu::start(spec).await.expect("start");
    let mut c = Channel::connect(&vm.control_socket(), Duration::from_secs(10))
        .await
        .expect("connect");
    c.wait_hello(Duration::from_secs(120)).await.expect("hello");
    c.run(run_cfg()).await.expect("run");
    loop {
        match c.next().await.expect("read") {
            Some(GuestMsg::Started { .. }) => break,
            Some(_) => continue,
            None => panic!("guest closed before starting the workload"),
        }
    }
    let d = t.elapsed();
    vm.wait_exit(Duration::from_secs(30)).await;
    d
}

fn bare(spec: &VmSpec, dir: &Path) -> Duration {
    let sock = dir.join("bare.sock");
    let _ = std::fs::remove_file(&sock);
    let t = Instant::now();
    let mut child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-M",
            &format!(
                "microvm,accel={},acpi=on",
                if spec.accel == qemu::Accel::Kvm {
                    "kvm"
                } else {
                    "tcg"
                }
            ),
        ])
        .args([
            "-cpu",
            if spec.accel == qemu::Accel::Kvm {
                "host"
            } else {
                "max"
            },
            "-m",
            "128M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initramfs)
        .args([
            "-append",
            &qemu::kernel_cmdline(spec.accel, qemu::host_tsc_khz()),
        ])
        .args([
            "-serial",
            "null",
            "-drive",
            &format!(
                "id=root,file={},format=raw,if=none,cache=unsafe",
                spec.rootfs.display()
            ),
        ])
        .args([
            "-device",
            "virtio-blk-device,drive=root",
            "-device",
            "virtio-serial-device",
        ])
        .args([
            "-chardev",
            &format!("socket,id=ctl,path={},server=on,wait=off", sock.display()),
        ])
        .args(["-device", "virtserialport,chardev=ctl,name=scalebox.0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let s = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut w = s.try_clone().unwrap();
    w.write_all(&encode(&HostMsg::Attach)).unwrap();
    let mut r = BufReader::new(s);
    let mut sent = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        assert!(r.read_until(b'\n', &mut line).unwrap() > 0, "guest closed");
        match decode::<GuestMsg>(line.trim_ascii_end()) {
            Ok(Some(GuestMsg::Hello { .. })) if !sent => {
                w.write_all(&encode(&HostMsg::Run {
                    config: Box::new(run_cfg()),
                }))
                .unwrap();
                sent = true;
            }
            Ok(Some(GuestMsg::Started { .. })) => break,
            _ => {}
        }
    }
    let d = t.elapsed();
    let _ = child.wait();
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: boot_bench <data-dir> <init-binary> <rootfs.ext4> [rounds]");
        std::process::exit(2);
    }
    let data = PathBuf::from(&a[1]);
    let rounds: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    let k = kernel::ensure_kernel(&data).expect("kernel");
    let initrd =
        initramfs::build(&k, Path::new(&a[2]), &data.join("initramfs")).expect("initramfs");
    let accel = qemu::detect_accel(&k.vmlinuz, &data.join("accel.json")).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = VmSpec {
        id: "bench".into(),
        dir: dir.path().join("vm"),
        kernel: k.vmlinuz.clone(),
        initramfs: initrd,
        rootfs: PathBuf::from(&a[3]),
        disks: vec![],
        vcpus: 1,
        memory_mib: 128,
        tap: None,
        netns: None,
        accel,
    };
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        o.push(ours(&spec).await.as_secs_f64() * 1000.0);
        b.push(bare(&spec, dir.path()).as_secs_f64() * 1000.0);
    }
    let (mo, mb) = (median(o.clone()), median(b.clone()));
    println!("accel {accel:?} rounds {rounds}");
    println!(
        "scalebox create->started median {mo:.0} ms (min {:.0}, max {:.0})",
        o.iter().cloned().fold(f64::MAX, f64::min),
        o.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "bare qemu boot->started   median {mb:.0} ms (min {:.0}, max {:.0})",
        b.iter().cloned().fold(f64::MAX, f64::min),
        b.iter().cloned().fold(0.0, f64::max)
    );
    println!("ratio {:.3} (target <= 1.1)", mo / mb);
}
