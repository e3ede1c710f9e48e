//! Helper of `bench/overlay/run` (not part of the product):
//!   overlay_node <mode> <iface> <seed> <listen_port> <address> <cluster/48> <peer_seed> <peer_endpoint> <peer_net>
//! creates the host's overlay device in the current network namespace exactly as the agent does
//! (`Device::create` with `mode` = `userspace` (boringtun in this process), `kernel` or `auto`;
//! `configure_ip` with MTU 1420; one peer applied through `mesh::plan`), prints `ready` and the
//! device kind, and runs until killed (a userspace TUN device goes with the process, a kernel one
//! with the namespace). Keys are derived from the seeds (sha256): bench keys only.

use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;

use scalebox_agent::overlay::{Device, Mode};
use scalebox_overlay::{Ipv6Net, Peer, PrivateKey, PublicKey, keys, mesh};
use sha2::{Digest, Sha256};

fn key(seed: &str) -> (PrivateKey, PublicKey) {
    keys::generate(Sha256::digest(format!("scalebox-bench-overlay:{seed}")).into())
}

fn die<T>(e: String) -> T {
    eprintln!("overlay_node: {e}");
    std::process::exit(1)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 10 {
        eprintln!(
            "usage: overlay_node <mode> <iface> <seed> <listen_port> <address> <cluster/48> <peer_seed> <peer_endpoint> <peer_net>"
        );
        std::process::exit(2);
    }
    let mode = match a[1].as_str() {
        "userspace" => Mode::Userspace,
        "kernel" => Mode::Kernel,
        "auto" => Mode::Auto,
        m => panic!("mode {m}: userspace, kernel or auto"),
    };
    let iface = &a[2];
    let (private, _) = key(&a[3]);
    let port: u16 = a[4].parse().expect("listen port");
    let address: Ipv6Addr = a[5].parse().expect("overlay address");
    let cluster: Ipv6Net = a[6].parse().expect("cluster network");
    let peer = Peer {
        host: a[7].clone(),
        public_key: key(&a[7]).1,
        endpoint: a[8].parse::<SocketAddr>().expect("peer endpoint"),
        allowed: vec![a[9].parse().expect("peer network")],
    };
    // The kernel device reads its key from a file (`wg set … private-key FILE`).
    let key_file = std::env::temp_dir().join(format!("overlay_node-{}.key", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_file)
        .and_then(|mut f| f.write_all(private.to_base64().as_bytes()))
        .expect("key file");
    let dev = Device::create(iface, mode, &private, &key_file, port, 5);
    let _ = std::fs::remove_file(&key_file);
    let dev = dev.unwrap_or_else(die);
    dev.configure_ip(address, cluster, 1420).unwrap_or_else(die);
    let changes = mesh::plan(&[], &[peer]).expect("peer plan");
    dev.apply(&[], &changes).unwrap_or_else(die);
    println!("ready {} {}", dev.name(), dev.kind());
    loop {
        std::thread::park();
    }
}
