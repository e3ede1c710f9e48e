//! Helpers of `bench/vm/run` (not part of the product):
//!   vm_bench bare <runtime_dir> <template.ext4> <work_dir> <rounds>
//!     boots the template directly with the VMM driver (same kernel, initramfs, init and boot
//!     handshake as a sandbox VM, no control plane, no API, no proxy) on a bridge it creates in
//!     the current network namespace, and prints the time to an SSH banner on the guest's port 22.
//!   vm_bench clone <src> <dst>
//!     times one copy-on-write clone (reflink or sparse copy) and prints "<ms> <kind>".

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scalebox_init::proto::{BootConfig, Net};
use scalebox_sandbox::{SandboxConfig, net};
use scalebox_vmm::qemu::{self, VmSpec};

fn ssh_banner(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = [0u8; 4];
    s.read_exact(&mut b).is_ok() && &b == b"SSH-"
}

async fn bare(runtime: &Path, template: &Path, work: &Path, rounds: u32) {
    let cfg = SandboxConfig {
        bridge: "sbbench0".into(),
        bridge_address: Ipv4Addr::new(172, 31, 0, 1),
        bridge_prefix: 24,
        ..SandboxConfig::default()
    };
    net::ensure_bridge(&cfg).expect("bridge");
    let tap = "sbvbench000000";
    net::create_tap(&cfg, tap).expect("tap");
    let k = scalebox_vmm::kernel::ensure_kernel(runtime).expect("kernel");
    let init = scalebox_vmm::initramfs::find_init().expect("init");
    let initrd =
        scalebox_vmm::initramfs::build(&k, &init, &runtime.join("initramfs")).expect("initramfs");
    let accel = qemu::detect_accel(&k.vmlinuz, &runtime.join("accel.json")).await;
    let mut times = vec![];
    for i in 0..rounds {
        let disk = work.join(format!("bare-{i}.ext4"));
        scalebox_image::clone_file(template, &disk).expect("clone");
        let spec = VmSpec {
            id: format!("bench-bare-{i}"),
            dir: work.join(format!("bare-{i}")),
            kernel: k.vmlinuz.clone(),
            initramfs: initrd.clone(),
            rootfs: disk.clone(),
            disks: vec![],
            vcpus: 1,
            memory_mib: 1024,
            tap: Some((tap.into(), "AA:FC:00:00:00:01".into())),
            netns: None,
            accel,
        };
        let t0 = Instant::now();
        let h = qemu::start(&spec).await.expect("qemu");
        let config = BootConfig {
            hostname: "bare".into(),
            net: Net {
                ipv4: Some("172.31.0.2/24".into()),
                ipv4_gateway: Some("172.31.0.1".into()),
                ..Net::default()
            },
            ..BootConfig::default()
        };
        scalebox_sandbox::lifecycle::handshake(&spec, config)
            .await
            .expect("boot");
        let addr: SocketAddr = "172.31.0.2:22".parse().unwrap();
        while !ssh_banner(addr) {
            assert!(t0.elapsed() < Duration::from_secs(300), "no sshd");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ms = t0.elapsed().as_millis();
        times.push(ms);
        h.kill();
        h.wait_exit(Duration::from_secs(10)).await;
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_dir_all(&spec.dir);
    }
    let _ = net::delete_tap(tap);
    times.sort();
    println!(
        "bare boot to sshd ({accel:?}): {:?} ms, median {} ms",
        times,
        times[times.len() / 2]
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("bare") if a.len() == 6 => {
            bare(
                Path::new(&a[2]),
                Path::new(&a[3]),
                &PathBuf::from(&a[4]),
                a[5].parse().expect("rounds"),
            )
            .await
        }
        Some("clone") if a.len() == 4 => {
            let t = Instant::now();
            let kind =
                scalebox_image::clone_file(Path::new(&a[2]), Path::new(&a[3])).expect("clone");
            println!("{:.1} {kind:?}", t.elapsed().as_secs_f64() * 1000.0);
        }
        _ => {
            eprintln!(
                "usage: vm_bench bare <runtime_dir> <template> <work_dir> <rounds> | clone <src> <dst>"
            );
            std::process::exit(2);
        }
    }
}
