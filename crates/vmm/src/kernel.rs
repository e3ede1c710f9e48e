//! The platform kernel: Debian's `linux-image-cloud-amd64`, fetched with `apt-get download`,
//! unpacked with `dpkg-deb -x` into `<data_dir>/kernel/<version>/` (never installed into the
//! host's /boot), plus an uncompressed ELF `vmlinux` for Firecracker extracted from the bzImage
//! by [`extract_vmlinux`]. Idempotent and atomic: a half-done fetch never becomes `current`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::VmmError;

/// Meta package that always depends on the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// An unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    /// Compressed bzImage, for QEMU.
    pub vmlinuz: PathBuf,
    /// Uncompressed ELF, for Firecracker.
    pub vmlinux: PathBuf,
    /// `lib/modules/<version>`.
    pub modules: PathBuf,
}

impl Kernel {
    fn at(dir: &Path, version: &str) -> Kernel {
        Kernel {
            version: version.to_owned(),
            vmlinuz: dir.join(format!("boot/vmlinuz-{version}")),
            vmlinux: dir.join("vmlinux"),
            modules: dir.join(format!("lib/modules/{version}")),
        }
    }

    fn complete(&self) -> bool {
        self.vmlinuz.is_file() && self.vmlinux.is_file() && self.modules.is_dir()
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, VmmError> {
    let out = cmd.output().map_err(VmmError::io(format!("run {what}")))?;
    if !out.status.success() {
        return Err(VmmError::Kernel(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel recorded in `<data_dir>/kernel/version`, if complete.
pub fn installed(data_dir: &Path) -> Option<Kernel> {
    let root = data_dir.join("kernel");
    let version = std::fs::read_to_string(root.join("version")).ok()?;
    let version = version.trim();
    let k = Kernel::at(&root.join(version), version);
    k.complete().then_some(k)
}

/// Returns the installed kernel, fetching and unpacking it first if needed.
pub fn ensure_kernel(data_dir: &Path) -> Result<Kernel, VmmError> {
    if let Some(k) = installed(data_dir) {
        return Ok(k);
    }
    let root = data_dir.join("kernel");
    std::fs::create_dir_all(&root).map_err(VmmError::io(format!("create {}", root.display())))?;
    // One fetch at a time on this host; whoever waited finds it installed.
    let _lock = crate::error::FileLock::acquire(&root.join(".lock"))?;
    if let Some(k) = installed(data_dir) {
        return Ok(k);
    }
    let tmp = root.join(format!(".fetch-{}", crate::error::unique_suffix()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(VmmError::io("create a temporary directory"))?;
    let result = fetch_into(&tmp, &root);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn fetch_into(tmp: &Path, root: &Path) -> Result<Kernel, VmmError> {
    tracing::info!(
        package = META_PACKAGE,
        "fetching the guest kernel with apt-get download"
    );
    let apt = |pkg: &str| {
        let download = || {
            run(
                Command::new("apt-get")
                    .args(["download", "-q", pkg])
                    .current_dir(tmp),
                &format!("apt-get download {pkg}"),
            )
        };
        download()
            .or_else(|_| {
                // A fresh host may have no package lists yet: refresh them once and retry.
                tracing::info!("refreshing the package lists (apt-get update) to find {pkg}");
                run(Command::new("apt-get").args(["update", "-q"]), "apt-get update")?;
                download()
            })
            .map_err(|e| VmmError::Kernel(format!("{e}\nhint: the kernel comes from Debian's package archive; check `apt-get download {pkg}` works")))
    };
    apt(META_PACKAGE)?;
    let meta = find_deb(tmp, META_PACKAGE)?;
    let depends = run(
        Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"),
        "dpkg-deb -f",
    )?;
    let real = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-") && d != &META_PACKAGE)
        .ok_or_else(|| {
            VmmError::Kernel(format!(
                "{META_PACKAGE} does not depend on a linux-image package: {depends:?}"
            ))
        })?
        .to_owned();
    apt(&real)?;
    let deb = find_deb(tmp, &real)?;
    let x = tmp.join("x");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        "dpkg-deb -x",
    )?;
    let version = real.trim_start_matches("linux-image-").to_owned();
    let k = Kernel::at(&x, &version);
    if !k.vmlinuz.is_file() || !k.modules.is_dir() {
        return Err(VmmError::Kernel(format!(
            "{real} has no boot/vmlinuz-{version} or lib/modules/{version}"
        )));
    }
    let bz = std::fs::read(&k.vmlinuz).map_err(VmmError::io("read vmlinuz"))?;
    let elf = extract_vmlinux(&bz)?;
    std::fs::write(&k.vmlinux, elf).map_err(VmmError::io("write vmlinux"))?;
    let dest = root.join(&version);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&x, &dest).map_err(VmmError::io(format!("install {}", dest.display())))?;
    let vtmp = root.join("version.tmp");
    std::fs::write(&vtmp, format!("{version}\n")).map_err(VmmError::io("write version"))?;
    std::fs::rename(&vtmp, root.join("version")).map_err(VmmError::io("install version"))?;
    tracing::info!(%version, dir = %dest.display(), "guest kernel ready");
    Ok(Kernel::at(&dest, &version))
}

fn find_deb(dir: &Path, pkg: &str) -> Result<PathBuf, VmmError> {
    std::fs::read_dir(dir)
        .map_err(VmmError::io("list downloads"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| VmmError::Kernel(format!("apt-get download {pkg} produced no .deb")))
}

/// Finds the compressed kernel inside a bzImage and decompresses it to the ELF `vmlinux`.
/// Supports LZ4 (legacy frame, Debian's choice) and gzip payloads.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, VmmError> {
    const LZ4_LEGACY: &[u8] = &[0x02, 0x21, 0x4c, 0x18];
    const GZIP: &[u8] = &[0x1f, 0x8b, 0x08];
    let find = |magic: &[u8]| {
        bz.windows(magic.len())
            .enumerate()
            .filter(|(_, w)| *w == magic)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    for at in find(LZ4_LEGACY) {
        if let Some(elf) = lz4_legacy(&bz[at + 4..]).filter(|e| e.starts_with(b"\x7fELF")) {
            return Ok(elf);
        }
    }
    for at in find(GZIP) {
        let mut d = flate2::read::GzDecoder::new(&bz[at..]);
        let mut out = Vec::new();
        if std::io::Read::read_to_end(&mut d, &mut out).is_ok() && out.starts_with(b"\x7fELF") {
            return Ok(out);
        }
    }
    Err(VmmError::Kernel(
        "no LZ4 or gzip compressed ELF kernel found in the bzImage".into(),
    ))
}

/// Decodes LZ4 legacy frames (`[u32 le compressed size][block]...`, 8 MiB blocks) until the
/// data stops looking like a frame (the bzImage has trailing bytes).
fn lz4_legacy(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_le_bytes(b[..4].try_into().ok()?) as usize;
        if n == 0 || n > (8 << 20) + (8 << 20) / 255 + 16 || b.len() < 4 + n {
            break;
        }
        let block = lz4_flex::block::decompress(&b[4..4 + n], 8 << 20).ok()?;
        out.extend_from_slice(&block);
        b = &b[4 + n..];
        if block.len() < 8 << 20 {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}
