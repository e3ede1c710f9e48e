//! The initramfs every guest boots: `/init` = `scalebox-init`, the kernel modules it needs (with
//! their dependencies, in load order, listed in `/modules.order`), and empty mount points.
//! Cached by content: the same init binary and kernel give the same file.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cpio::Newc;
use crate::kernel::Kernel;
use crate::{VmmError, modinfo};

/// Modules the guest needs (everything else it uses is built in): virtio transports, disks,
/// network, the control channel (virtio-serial) and vsock.
pub const MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vmw_vsock_virtio_transport",
];

/// Builds (or finds in `cache_dir`) the initramfs for `kernel` with `init` as `/init`.
pub fn build(kernel: &Kernel, init: &Path, cache_dir: &Path) -> Result<PathBuf, VmmError> {
    let init_bytes = std::fs::read(init)
        .map_err(VmmError::io(format!("read init binary {}", init.display())))?;
    let index = modinfo::index(&kernel.modules);
    let mods = modinfo::closure(&index, MODULES).map_err(VmmError::Initramfs)?;
    let mut h = Sha256::new();
    h.update(&init_bytes);
    h.update(kernel.version.as_bytes());
    for (n, _) in &mods {
        h.update(n.as_bytes());
    }
    let out = cache_dir.join(format!(
        "initramfs-{}.cpio.gz",
        &hex::encode(h.finalize())[..16]
    ));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(VmmError::io(format!("create {}", cache_dir.display())))?;
    let tmp = out.with_extension(format!("tmp{}", crate::error::unique_suffix()));
    let file =
        std::fs::File::create(&tmp).map_err(VmmError::io(format!("create {}", tmp.display())))?;
    let gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    let mut w = Newc::new(gz);
    let io = |e: std::io::Error| VmmError::Initramfs(format!("write initramfs: {e}"));
    for d in ["dev", "proc", "sys", "run", "newroot", "modules", "etc"] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.file("init", 0o755, &init_bytes).map_err(io)?;
    let mut order = String::new();
    for (name, path) in &mods {
        let data = std::fs::read(path).map_err(VmmError::io(format!("read {}", path.display())))?;
        w.file(&format!("modules/{name}.ko"), 0o644, &data)
            .map_err(io)?;
        order.push_str(&format!("{name}.ko\n"));
    }
    w.file("modules.order", 0o644, order.as_bytes())
        .map_err(io)?;
    let gz = w.finish().map_err(io)?;
    let mut buf = gz.finish().map_err(io)?;
    buf.flush().map_err(io)?;
    buf.get_ref().sync_all().map_err(io)?;
    drop(buf);
    std::fs::rename(&tmp, &out).map_err(VmmError::io(format!("install {}", out.display())))?;
    Ok(out)
}

/// Where the `scalebox-init` binary is: `$SCALEBOX_INIT_BIN`, else next to the running
/// executable.
pub fn find_init() -> Result<PathBuf, VmmError> {
    if let Some(p) = std::env::var_os("SCALEBOX_INIT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(VmmError::io("locate the running executable"))?;
    let p = exe.with_file_name("scalebox-init");
    if p.is_file() {
        return Ok(p);
    }
    Err(VmmError::Initramfs(format!(
        "scalebox-init not found next to {} (build it with scripts/build-init, or set SCALEBOX_INIT_BIN)",
        exe.display()
    )))
}

/// Builds `scalebox-init` as a static binary from the workspace at `workspace` (for tests and
/// development); returns its path.
pub fn build_static_init(workspace: &Path) -> Result<PathBuf, VmmError> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace)
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "scalebox-init",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                "target/init",
            ])
            .args([
                "--config",
                "target.x86_64-unknown-linux-gnu.rustflags=[\"-C\",\"target-feature=+crt-static\"]",
            ])
            .args([
                "--config",
                "profile.release.strip=true",
                "--config",
                "profile.release.debug=false",
            ])
            .status()
            .map_err(VmmError::io("run cargo to build scalebox-init"))?;
    if !status.success() {
        return Err(VmmError::Initramfs(format!(
            "building scalebox-init failed ({status})"
        )));
    }
    Ok(workspace.join("target/init/x86_64-unknown-linux-gnu/release/scalebox-init"))
}
