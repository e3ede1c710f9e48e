//! Builds the real `debian-base` template (debootstrap against the host's mirror, ~1 minute) into
//! a temporary directory and inspects the image with debugfs. Needs root, debootstrap and network
//! access; skips (with a message) when it is not root or debootstrap is missing. Set
//! `SCALEBOX_KEEP_TEMPLATE=<path>` to keep a copy of the image (e.g. to boot it by hand).

use std::path::Path;
use std::process::Command;

use scalebox_sandbox::template_build::{
    self, BuildOptions, DEBIAN_BASE, DEBIAN_BASE_VERSION, installed_version, needs_rebuild,
};

fn debugfs(image: &Path, request: &str) -> (bool, String) {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("run debugfs (Debian package e2fsprogs)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // debugfs exits 0 even when the request fails; failures are reported in its output.
    let ok = out.status.success() && !text.contains("File not found");
    (ok, text)
}

#[test]
fn builds_debian_base() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: building a template needs root");
        return;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        eprintln!("skipped: debootstrap is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A crashed earlier run's leftovers are cleaned up.
    std::fs::create_dir_all(dir.path().join(".build-debian-base/root/junk")).unwrap();
    assert!(needs_rebuild(dir.path(), DEBIAN_BASE));

    let mut lines = Vec::new();
    let built = template_build::rebuild(&BuildOptions::new(dir.path()), &mut |l| {
        eprintln!("progress: {l}");
        lines.push(l.to_owned());
    })
    .unwrap_or_else(|e| panic!("build failed: {e}"));
    eprintln!(
        "built {} in {:?}: {} MiB image, {} MiB content",
        built.image.display(),
        built.duration,
        built.size_bytes >> 20,
        built.content_bytes >> 20
    );
    assert!(lines.iter().any(|l| l.contains("debootstrap: downloading")));
    assert_eq!(built.image, dir.path().join("debian-base.ext4"));
    assert_eq!(built.version, DEBIAN_BASE_VERSION);
    assert!(built.size_bytes >= 1 << 30);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("debian-base.version"))
            .unwrap()
            .trim(),
        DEBIAN_BASE_VERSION.to_string()
    );
    assert_eq!(
        installed_version(dir.path(), DEBIAN_BASE),
        Some(DEBIAN_BASE_VERSION)
    );
    assert!(!needs_rebuild(dir.path(), DEBIAN_BASE));
    // Only the image, its version and the lock are left.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ".debian-base.lock",
            "debian-base.ext4",
            "debian-base.version"
        ]
    );

    let img = &built.image;
    let (ok, out) = debugfs(img, "stat /usr/sbin/sshd");
    assert!(ok, "{out}");
    let (ok, out) = debugfs(img, "stat /usr/bin/mosh-server");
    assert!(ok, "{out}");
    let (ok, out) = debugfs(img, "stat /etc/sudoers.d/90-scalebox-user");
    assert!(ok && out.contains("Mode:  0440"), "{out}");
    let (_, out) = debugfs(img, "cat /etc/sudoers.d/90-scalebox-user");
    assert!(out.contains("user ALL=(ALL:ALL) NOPASSWD: ALL"), "{out}");
    let (_, out) = debugfs(img, "ls -l /etc/ssh");
    assert!(out.contains("sshd_config"), "{out}");
    assert!(
        !out.contains("ssh_host_"),
        "host keys left in the image:\n{out}"
    );
    let (_, out) = debugfs(img, "cat /etc/passwd");
    assert!(
        out.lines()
            .any(|l| l == "user:x:1000:1000:Sandbox user:/home/user:/bin/bash"),
        "{out}"
    );
    let (ok, out) = debugfs(img, "stat /home/user");
    assert!(ok && out.contains("User:  1000"), "{out}");
    let (ok, out) = debugfs(img, "stat /usr/lib/locale/locale-archive");
    assert!(ok, "no compiled locales: {out}");
    let (_, out) = debugfs(img, "cat /etc/default/locale");
    assert!(out.contains("LANG=en_US.UTF-8"), "{out}");
    let (ok, out) = debugfs(img, "stat /etc/machine-id");
    assert!(ok && out.contains("Size: 0"), "{out}");
    let (_, out) = debugfs(img, "cat /etc/ssh/sshd_config.d/50-scalebox.conf");
    assert!(out.contains("PasswordAuthentication no"), "{out}");
    let (_, out) = debugfs(img, "stat /etc/systemd/system/apt-daily.timer");
    assert!(out.contains("Fast link dest: \"/dev/null\""), "{out}");
    let (ok, out) = debugfs(
        img,
        "stat /etc/systemd/system/ssh.service.wants/scalebox-ssh-hostkeys.service",
    );
    assert!(ok, "{out}");
    let (ok, out) = debugfs(
        img,
        "stat /etc/systemd/system/multi-user.target.wants/ssh.service",
    );
    assert!(ok, "{out}");
    let (_, out) = debugfs(img, "ls /var/cache/apt/archives");
    assert!(!out.contains(".deb"), "{out}");
    let (_, out) = debugfs(img, "ls /etc");
    assert!(!out.contains("resolv.conf"), "{out}");
    if let Some(keep) = std::env::var_os("SCALEBOX_KEEP_TEMPLATE") {
        std::fs::copy(img, &keep).unwrap();
    }
    // Later guest-booting tests (scaleboxd's e2e_vms) reuse this build instead of making another.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-templates");
    std::fs::create_dir_all(&cache).unwrap();
    let version = template_build::version_path(dir.path(), DEBIAN_BASE);
    scalebox_image::clone_file(img, &cache.join("debian-base.ext4")).unwrap();
    std::fs::copy(&version, cache.join("debian-base.version")).unwrap();
}
