//! The Firecracker jailer: its command line, the chroot it builds
//! (`<chroot base>/<exec file name>/<id>/root`), how Firecracker sees the VM's files inside it
//! (every path in the API requests is relative to that root), and staging those files: the
//! jailer copies only the `firecracker` binary in, the rest must be hard-linked (or copied) by
//! us, and the writable disks owned by the uid/gid Firecracker runs as.

use std::path::{Path, PathBuf};

use crate::VmmError;
use crate::qemu::VmSpec;

/// How to run the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    pub binary: PathBuf,
    /// Who Firecracker runs as after the jailer drops privileges.
    pub uid: u32,
    pub gid: u32,
    /// `--chroot-base-dir` (the jailer's default is `/srv/jailer`).
    pub chroot_base: PathBuf,
}

/// The API socket, as Firecracker sees it inside the jail.
pub const API_SOCK_IN_JAIL: &str = "/firecracker.sock";

/// The jail's root: `<chroot base>/<file name of the firecracker binary>/<id>/root`.
pub fn chroot_dir(base: &Path, firecracker: &Path, id: &str) -> PathBuf {
    let exec_name = firecracker
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "firecracker".into());
    base.join(exec_name).join(id).join("root")
}

/// The jailer's arguments (without the binary). Firecracker gets `--id` from the jailer; what
/// follows `--` is passed to it.
pub fn jailer_args(j: &Jailer, firecracker: &Path, id: &str, netns: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "--id".to_string(),
        id.to_string(),
        "--exec-file".into(),
        firecracker.display().to_string(),
        "--uid".into(),
        j.uid.to_string(),
        "--gid".into(),
        j.gid.to_string(),
        "--chroot-base-dir".into(),
        j.chroot_base.display().to_string(),
    ];
    if let Some(ns) = netns {
        a.push("--netns".into());
        a.push(format!("/var/run/netns/{ns}"));
    }
    a.extend(["--".into(), "--api-sock".into(), API_SOCK_IN_JAIL.into()]);
    a
}

/// Names of the VM's files inside the jail root: (host path, name in the jail, writable).
pub fn staged_files(spec: &VmSpec) -> Vec<(PathBuf, String, bool)> {
    let mut v = vec![
        (spec.kernel.clone(), "vmlinux".to_string(), false),
        (spec.initramfs.clone(), "initrd".to_string(), false),
        (spec.rootfs.clone(), "rootfs.ext4".to_string(), true),
    ];
    for (i, d) in spec.disks.iter().enumerate() {
        v.push((d.clone(), format!("disk{i}.ext4"), true));
    }
    v
}

/// `spec` as Firecracker sees it inside the jail: every file at the jail's root, the run
/// directory (vsock socket) at `/`.
pub fn jailed_spec(spec: &VmSpec) -> VmSpec {
    let files = staged_files(spec);
    let at = |i: usize| PathBuf::from("/").join(&files[i].1);
    VmSpec {
        dir: PathBuf::from("/"),
        kernel: at(0),
        initramfs: at(1),
        rootfs: at(2),
        disks: (0..spec.disks.len()).map(|i| at(3 + i)).collect(),
        ..spec.clone()
    }
}

/// Hard-links (copies across filesystems) the VM's files into `root`, the writable ones owned
/// by `uid:gid` (read-write disks must be writable by the jailed Firecracker). A hard link
/// shares its inode, so this changes the owner of the instance's own disk files too, which only
/// this VM uses.
pub fn stage(spec: &VmSpec, root: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    std::fs::create_dir_all(root).map_err(VmmError::io(format!("create {}", root.display())))?;
    for (src, name, writable) in staged_files(spec) {
        let dst = root.join(&name);
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(VmmError::io(format!(
                "put {} into the jail as {}",
                src.display(),
                dst.display()
            )))?;
        }
        if writable {
            std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
                .map_err(VmmError::io(format!("chown {}", dst.display())))?;
        }
    }
    Ok(())
}

/// Makes the persistent TAP `tap` usable by `uid:gid` (the jailed Firecracker has no
/// CAP_NET_ADMIN, and the kernel lets only a TAP's owner or group attach to it): attach as root,
/// set owner and group, detach (the TAP persists). In the caller's network namespace.
pub fn set_tap_owner(tap: &str, uid: u32, gid: u32) -> Result<(), VmmError> {
    use std::os::fd::AsRawFd;
    let what = |op: &str| format!("{op} on TAP {tap}");
    if tap.is_empty() || tap.len() >= libc::IFNAMSIZ {
        return Err(VmmError::Vmm(format!("bad TAP name {tap:?}")));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(VmmError::io("open /dev/net/tun"))?;
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(tap.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF with a valid ifreq; TUNSETOWNER/TUNSETGROUP take the id as the argument.
    unsafe {
        if libc::ioctl(fd, libc::TUNSETIFF, &ifr) != 0 {
            return Err(VmmError::io(what("TUNSETIFF"))(
                std::io::Error::last_os_error(),
            ));
        }
        if libc::ioctl(fd, libc::TUNSETOWNER, uid as libc::c_ulong) != 0 {
            return Err(VmmError::io(what("TUNSETOWNER"))(
                std::io::Error::last_os_error(),
            ));
        }
        if libc::ioctl(fd, libc::TUNSETGROUP, gid as libc::c_ulong) != 0 {
            return Err(VmmError::io(what("TUNSETGROUP"))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Accel;

    fn spec() -> VmSpec {
        VmSpec {
            id: "web-1-g1".into(),
            dir: "/var/lib/sb/vms/web-1-g1".into(),
            kernel: "/var/lib/sb/kernel/6.1/vmlinux".into(),
            initramfs: "/var/lib/sb/initramfs/i.cpio.gz".into(),
            rootfs: "/var/lib/sb/rootfs/web-1-g1.ext4".into(),
            disks: vec!["/var/lib/sb/volumes/data.ext4".into()],
            vcpus: 1,
            memory_mib: 128,
            tap: None,
            netns: None,
            accel: Accel::Kvm,
        }
    }

    #[test]
    fn jailer_command_line_and_chroot() {
        let j = Jailer {
            binary: "/usr/bin/jailer".into(),
            uid: 900,
            gid: 901,
            chroot_base: "/srv/jailer".into(),
        };
        let fc = Path::new("/usr/local/bin/firecracker");
        assert_eq!(
            jailer_args(&j, fc, "web-1-g1", Some("ns1")).join(" "),
            "--id web-1-g1 --exec-file /usr/local/bin/firecracker --uid 900 --gid 901 \
             --chroot-base-dir /srv/jailer --netns /var/run/netns/ns1 -- --api-sock /firecracker.sock"
        );
        assert!(!jailer_args(&j, fc, "x", None).contains(&"--netns".to_string()));
        assert_eq!(
            chroot_dir(&j.chroot_base, fc, "web-1-g1"),
            Path::new("/srv/jailer/firecracker/web-1-g1/root")
        );
    }

    #[test]
    fn files_are_seen_at_the_jail_root() {
        let j = jailed_spec(&spec());
        assert_eq!(j.kernel, Path::new("/vmlinux"));
        assert_eq!(j.initramfs, Path::new("/initrd"));
        assert_eq!(j.rootfs, Path::new("/rootfs.ext4"));
        assert_eq!(j.disks, vec![PathBuf::from("/disk0.ext4")]);
        let reqs = crate::firecracker::boot_requests(&j);
        let vsock = reqs.iter().find(|r| r.path == "/vsock").unwrap();
        assert_eq!(vsock.body["uds_path"], "/vsock.sock");
        let boot = reqs.iter().find(|r| r.path == "/boot-source").unwrap();
        assert_eq!(boot.body["kernel_image_path"], "/vmlinux");
    }

    /// On a real TAP (needs root and /dev/net/tun, as the agent does).
    #[test]
    fn tap_owner_is_set_for_the_jailed_uid() {
        let tap = format!("sbfct{}", std::process::id() % 100_000);
        let ip = |a: &[&str]| std::process::Command::new("ip").args(a).status().unwrap();
        assert!(ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).success());
        struct Del(String);
        impl Drop for Del {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", &self.0])
                    .status();
            }
        }
        let _del = Del(tap.clone());
        set_tap_owner(&tap, 4242, 4343).unwrap();
        let sys = |f: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{tap}/{f}"))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!((sys("owner"), sys("group")), ("4242".into(), "4343".into()));
        let e = set_tap_owner("", 1, 1).unwrap_err().to_string();
        assert!(e.contains("bad TAP name"), "{e}");
    }

    #[test]
    fn staging_links_files_and_owns_the_writable_ones() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec();
        for (i, f) in ["k", "i", "r", "v"].iter().enumerate() {
            let p = d.path().join(f);
            std::fs::write(&p, format!("file {i}")).unwrap();
            match i {
                0 => s.kernel = p,
                1 => s.initramfs = p,
                2 => s.rootfs = p,
                _ => s.disks = vec![p],
            }
        }
        let root = d.path().join("jail/firecracker/x/root");
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        stage(&s, &root, uid, gid).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("disk0.ext4")).unwrap(),
            "file 3"
        );
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(root.join("rootfs.ext4")).unwrap();
        let b = std::fs::metadata(d.path().join("r")).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "hard link");
        // Staging again (a restarted start) replaces the links.
        stage(&s, &root, uid, gid).unwrap();
        assert!(root.join("vmlinux").is_file() && root.join("initrd").is_file());
    }
}
