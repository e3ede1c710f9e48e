//! Building the `debian-base` template with debootstrap.
//!
//! [`rebuild`] runs `debootstrap --variant=minbase` into a work tree under the templates
//! directory, configures the tree for a VM booted by `scalebox-init` (which mounts the clone as
//! root, sets the hostname, configures eth0 and writes `~user/.ssh/authorized_keys` before it
//! execs the template's own systemd), packs it with `mkfs.ext4 -d` and installs
//! `<templates_dir>/<name>.ext4` and `<name>.version` atomically. The work tree is removed on
//! success, on failure and when a crashed run left one behind.
//!
//! What the tree gets: user `user` (uid 1000, `/bin/bash`, passwordless sudo), locale
//! en_US.UTF-8 as `LANG` (mosh needs a UTF-8 locale), no SSH host keys (a oneshot unit creates
//! ed25519 and ECDSA keys before `ssh.service` on first boot; no RSA key, whose generation took
//! ~9 s of a 16 s boot under TCG), sshd without passwords or root logins,
//! an empty `/etc/machine-id`, an fstab with the root only, no network configuration (the init
//! did it) and units masked that only slow a VM boot (TCG makes every unit cost).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Version of the `debian-base` recipe. Bump it whenever the package set or the configuration
/// below changes: the updater rebuilds templates whose `.version` file holds another number.
pub const DEBIAN_BASE_VERSION: u32 = 1;

/// Name of the template this module builds by default.
pub const DEBIAN_BASE: &str = "debian-base";

/// Debian suite the template is built from.
pub const SUITE: &str = "bookworm";

/// Mirror used when the host's apt sources name none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Packages installed on top of `minbase`. No `dbus` on purpose: `systemd-logind` is skipped
/// without it (nothing here needs sessions) and the boot is shorter. No `udev` either: nothing
/// needs hotplug and the serial getty is unbound from its device unit instead.
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "openssh-server",
    "sudo",
    "mosh",
    "locales",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "libnss-myhostname",
    "less",
    "curl",
];

/// Units masked in the template: periodic maintenance that competes with the user's work,
/// consoles a microvm does not have, network configuration (the init did it) and first-boot
/// prompts.
pub const MASKED_UNITS: &[&str] = &[
    "apt-daily.service",
    "apt-daily.timer",
    "apt-daily-upgrade.service",
    "apt-daily-upgrade.timer",
    "e2scrub_all.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "man-db.service",
    "man-db.timer",
    "getty@tty1.service",
    "getty-static.service",
    "systemd-firstboot.service",
    "systemd-pstore.service",
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-network-generator.service",
    "networking.service",
    "NetworkManager-wait-online.service",
];

/// Smallest image, and the free space every image gets on top of its content.
pub const MIN_HEADROOM: u64 = 1 << 30;

/// Unit that creates missing SSH host keys before sshd starts.
pub const HOSTKEYS_UNIT: &str = "scalebox-ssh-hostkeys.service";

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory holding `<name>.ext4` and `<name>.version` (created if missing).
    pub templates_dir: PathBuf,
    /// Template name: file names and the ext4 label (`debian-base`).
    pub name: String,
    /// Debian mirror; `None` takes the host's (see [`host_mirror`]).
    pub mirror: Option<String>,
    /// Packages added to [`PACKAGES`].
    pub extra_packages: Vec<String>,
}

impl BuildOptions {
    /// `debian-base` into `templates_dir`, with the host's mirror.
    pub fn new(templates_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            templates_dir: templates_dir.into(),
            name: DEBIAN_BASE.to_owned(),
            mirror: None,
            extra_packages: Vec::new(),
        }
    }
}

/// An installed template.
#[derive(Debug, Clone)]
pub struct BuiltTemplate {
    pub name: String,
    /// `<templates_dir>/<name>.ext4`.
    pub image: PathBuf,
    pub version: u32,
    /// Apparent size of the image (the file is sparse).
    pub size_bytes: u64,
    /// Bytes the tree occupied before packing.
    pub content_bytes: u64,
    pub mirror: String,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{tool} is not installed; install the Debian package `{package}` (apt-get install {package})"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "building a template needs root (debootstrap, chroot and file ownership); run the build as root"
    )]
    NotRoot,
    #[error(
        "invalid template name {0:?}: use 1-63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("another build of template {name} is running (it holds {lock}); wait for it to finish")]
    Busy { name: String, lock: PathBuf },
    #[error("`{command}` failed ({status}); {hint}\n--- last output ---\n{tail}")]
    Command {
        command: String,
        status: String,
        hint: &'static str,
        tail: String,
    },
    #[error(
        "{path} is still mounted inside the build tree; unmount it (umount -l {path}) and retry"
    )]
    StillMounted { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// `<templates_dir>/<name>.ext4`.
pub fn image_path(templates_dir: &Path, name: &str) -> PathBuf {
    templates_dir.join(format!("{name}.ext4"))
}

/// `<templates_dir>/<name>.version`.
pub fn version_path(templates_dir: &Path, name: &str) -> PathBuf {
    templates_dir.join(format!("{name}.version"))
}

/// Recipe version of the installed template, if its image and version file are both there.
pub fn installed_version(templates_dir: &Path, name: &str) -> Option<u32> {
    if !image_path(templates_dir, name).is_file() {
        return None;
    }
    fs::read_to_string(version_path(templates_dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `debian-base` in `templates_dir` is missing or built by another recipe version.
pub fn needs_rebuild(templates_dir: &Path, name: &str) -> bool {
    installed_version(templates_dir, name) != Some(DEBIAN_BASE_VERSION)
}

/// The mirror apt uses on this host: the first `URIs:` of `debian.sources` (deb822), else the
/// first `deb` line of `sources.list`, else [`DEFAULT_MIRROR`].
pub fn host_mirror() -> String {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    mirror_from_sources(&deb822, &list).unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// Pure part of [`host_mirror`].
pub fn mirror_from_sources(deb822: &str, sources_list: &str) -> Option<String> {
    let from_deb822 = deb822.lines().find_map(|l| {
        let l = l.trim();
        let (key, value) = l.split_once(':')?;
        if key.trim().eq_ignore_ascii_case("URIs") {
            value.split_whitespace().next().map(str::to_owned)
        } else {
            None
        }
    });
    from_deb822
        .or_else(|| {
            sources_list.lines().find_map(|l| {
                let mut words = l.split_whitespace();
                if words.next()? != "deb" {
                    return None;
                }
                // `deb [arch=amd64 signed-by=...] URI suite ...`: skip the options.
                let mut w = words.next()?;
                if w.starts_with('[') {
                    while !w.ends_with(']') {
                        w = words.next()?;
                    }
                    w = words.next()?;
                }
                Some(w.to_owned())
            })
        })
        .filter(|m| m.contains("://"))
        .map(|m| m.trim_end_matches('/').to_owned())
}

/// Image size for a tree occupying `used` bytes: content plus 10% (ext4 metadata) plus
/// [`MIN_HEADROOM`], rounded up to 256 MiB.
pub fn image_size(used: u64) -> u64 {
    const STEP: u64 = 256 << 20;
    let want = used + used / 10 + MIN_HEADROOM;
    want.div_ceil(STEP) * STEP
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The `debootstrap` arguments (after the program name).
pub fn debootstrap_args(packages: &[String], tree: &Path, mirror: &str) -> Vec<String> {
    vec![
        "--variant=minbase".into(),
        format!("--include={}", packages.join(",")),
        SUITE.into(),
        tree.display().to_string(),
        mirror.into(),
    ]
}

/// A file the configuration step writes into the tree: path relative to the root, mode, content.
pub struct TreeFile {
    pub path: &'static str,
    pub mode: u32,
    pub content: String,
}

/// Files written into the tree verbatim (pure: unit-tested).
pub fn config_files(name: &str, mirror: &str) -> Vec<TreeFile> {
    let f = |path, mode, content: String| TreeFile {
        path,
        mode,
        content,
    };
    let security = if mirror.contains("deb.debian.org") {
        mirror.replace("/debian", "/debian-security")
    } else {
        "http://deb.debian.org/debian-security".to_owned()
    };
    vec![
        f(
            "etc/sudoers.d/90-scalebox-user",
            0o440,
            "# Managed by Scalebox: the sandbox user may run anything without a password.\n\
             user ALL=(ALL:ALL) NOPASSWD: ALL\n"
                .into(),
        ),
        f("etc/locale.gen", 0o644, "en_US.UTF-8 UTF-8\n".into()),
        f("etc/default/locale", 0o644, "LANG=en_US.UTF-8\n".into()),
        f(
            "etc/ssh/sshd_config.d/50-scalebox.conf",
            0o644,
            "# Managed by Scalebox: keys only, no root logins.\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin no\n\
             UseDNS no\n\
             HostKey /etc/ssh/ssh_host_ed25519_key\n\
             HostKey /etc/ssh/ssh_host_ecdsa_key\n"
                .into(),
        ),
        f(
            "etc/systemd/system/scalebox-ssh-hostkeys.service",
            0o644,
            "[Unit]\n\
             Description=Generate missing SSH host keys\n\
             DefaultDependencies=no\n\
             After=local-fs.target\n\
             Before=ssh.service sshd.service\n\
             ConditionPathExists=/usr/bin/ssh-keygen\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             ExecStart=/bin/sh -c 'for t in ed25519 ecdsa; do k=/etc/ssh/ssh_host_$${t}_key; \
             [ -e \"$$k\" ] || ssh-keygen -q -t \"$$t\" -N \"\" -f \"$$k\" || exit 1; done'\n\
             RemainAfterExit=yes\n\
             \n\
             [Install]\n\
             WantedBy=ssh.service\n"
                .into(),
        ),
        // The stock unit binds to dev-ttyS0.device, which never appears without udev.
        f(
            "etc/systemd/system/serial-getty@ttyS0.service",
            0o644,
            "[Unit]\n\
             Description=Serial Getty on %I\n\
             Documentation=man:agetty(8)\n\
             After=systemd-user-sessions.service getty-pre.target\n\
             Before=getty.target\n\
             IgnoreOnIsolate=yes\n\
             Conflicts=rescue.service\n\
             Before=rescue.service\n\
             \n\
             [Service]\n\
             ExecStart=-/sbin/agetty -o '-p -- \\\\u' --keep-baud 115200,57600,38400,9600 - $TERM\n\
             Type=idle\n\
             Restart=always\n\
             UtmpIdentifier=%I\n\
             StandardInput=tty\n\
             StandardOutput=tty\n\
             TTYPath=/dev/%I\n\
             TTYReset=yes\n\
             TTYVHangup=yes\n\
             IgnoreSIGPIPE=no\n\
             SendSIGHUP=yes\n\
             \n\
             [Install]\n\
             WantedBy=getty.target\n"
                .into(),
        ),
        f(
            "etc/systemd/system.conf.d/50-scalebox.conf",
            0o644,
            "# Managed by Scalebox: a sandbox stops quickly.\n\
             [Manager]\n\
             DefaultTimeoutStopSec=15s\n"
                .into(),
        ),
        f(
            "etc/systemd/journald.conf.d/50-scalebox.conf",
            0o644,
            "[Journal]\nSystemMaxUse=64M\n".into(),
        ),
        f(
            "etc/fstab",
            0o644,
            "# <device> <mount point> <type> <options> <dump> <pass>\n\
             /dev/vda / ext4 defaults,noatime 0 0\n"
                .into(),
        ),
        f("etc/hostname", 0o644, format!("{name}\n")),
        f(
            "etc/hosts",
            0o644,
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
            ),
        ),
        f("etc/machine-id", 0o444, String::new()),
        f("etc/apt/sources.list", 0o644, String::new()),
        f(
            "etc/apt/sources.list.d/debian.sources",
            0o644,
            format!(
                "Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                 Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        ),
    ]
}

/// Symlinks created in the tree: (link relative to the root, target).
pub fn config_links() -> Vec<(String, String)> {
    let mut links: Vec<(String, String)> = MASKED_UNITS
        .iter()
        .map(|u| (format!("etc/systemd/system/{u}"), "/dev/null".to_owned()))
        .collect();
    links.push((
        format!("etc/systemd/system/ssh.service.wants/{HOSTKEYS_UNIT}"),
        format!("/etc/systemd/system/{HOSTKEYS_UNIT}"),
    ));
    links.push((
        "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service".into(),
        "/etc/systemd/system/serial-getty@ttyS0.service".into(),
    ));
    links
}

/// Paths (relative to the root) removed after configuration: host keys, caches, logs of the
/// build, host files debootstrap copied in, the enablement of units masked above.
const REMOVE: &[&str] = &[
    "etc/resolv.conf",
    "etc/systemd/system/getty.target.wants/getty@tty1.service",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/log/bootstrap.log",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
];

/// Directories whose contents (not the directories) are removed.
const EMPTY: &[&str] = &[
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "tmp",
    "var/tmp",
];

/// Rebuilds the template: debootstrap, configure, pack, install. `progress` gets one line per
/// step (and a summary of debootstrap's phases).
pub fn rebuild(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltTemplate, BuildError> {
    let started = Instant::now();
    if !valid_name(&opts.name) {
        return Err(BuildError::InvalidName(opts.name.clone()));
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::NotRoot);
    }
    let debootstrap = find_tool("debootstrap").ok_or(BuildError::MissingTool {
        tool: "debootstrap",
        package: "debootstrap",
    })?;
    let mkfs = find_tool("mkfs.ext4").ok_or(BuildError::MissingTool {
        tool: "mkfs.ext4",
        package: "e2fsprogs",
    })?;
    let chroot = find_tool("chroot").ok_or(BuildError::MissingTool {
        tool: "chroot",
        package: "coreutils",
    })?;
    let dir = &opts.templates_dir;
    fs::create_dir_all(dir).map_err(io("create the templates directory", dir))?;
    let lock_path = dir.join(format!(".{}.lock", opts.name));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open the build lock", &lock_path))?;
    // SAFETY: flock on a valid fd; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(BuildError::Busy {
            name: opts.name.clone(),
            lock: lock_path,
        });
    }
    let work = dir.join(format!(".build-{}", opts.name));
    if work.exists() {
        progress(&format!(
            "removing {} left by an earlier build",
            work.display()
        ));
    }
    remove_work(&work)?;
    let result = build_in(opts, &work, &debootstrap, &mkfs, &chroot, progress);
    let cleaned = remove_work(&work);
    drop(lock);
    let (mirror, content_bytes) = result?;
    cleaned?;
    let image = image_path(dir, &opts.name);
    let size_bytes = fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    let built = BuiltTemplate {
        name: opts.name.clone(),
        image,
        version: DEBIAN_BASE_VERSION,
        size_bytes,
        content_bytes,
        mirror,
        duration: started.elapsed(),
    };
    progress(&format!(
        "template {} v{} ready: {} ({} MiB, {} MiB used) in {:.0?}",
        built.name,
        built.version,
        built.image.display(),
        built.size_bytes >> 20,
        built.content_bytes >> 20,
        built.duration
    ));
    Ok(built)
}

/// Everything between cleaning the work directory and removing it again. Returns the mirror and
/// the content size.
fn build_in(
    opts: &BuildOptions,
    work: &Path,
    debootstrap: &Path,
    mkfs: &Path,
    chroot: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(String, u64), BuildError> {
    let tree = work.join("root");
    fs::create_dir_all(&tree).map_err(io("create the build tree", &tree))?;
    let mirror = opts.mirror.clone().unwrap_or_else(host_mirror);
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| (*p).to_owned()).collect();
    packages.extend(opts.extra_packages.iter().cloned());

    progress(&format!(
        "debootstrap {SUITE} (minbase + {}) from {mirror}",
        packages.join(" ")
    ));
    let t = Instant::now();
    let args = debootstrap_args(&packages, &tree, &mirror);
    let mut cmd = Command::new(debootstrap);
    cmd.args(&args).env("LC_ALL", "C").env("LANG", "C");
    let shown = format!("debootstrap {}", args.join(" "));
    run_streaming(
        cmd,
        &shown,
        &tree,
        "check that the mirror is reachable and the disk has space (see the output below)",
        progress,
    )?;
    progress(&format!("debootstrap done in {:.0?}", t.elapsed()));

    progress("configuring the tree");
    configure(&tree, &opts.name, &mirror, chroot)?;

    let used = tree_usage(&tree);
    let size = image_size(used);
    progress(&format!(
        "packing {} MiB into a {} MiB ext4 image",
        used >> 20,
        size >> 20
    ));
    let tmp = opts.templates_dir.join(format!("{}.ext4.tmp", opts.name));
    let _ = fs::remove_file(&tmp);
    let label: String = opts.name.chars().take(16).collect();
    let mut cmd = Command::new(mkfs);
    cmd.args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .args(["-L", &label])
        .arg(&tmp)
        .arg(format!("{}M", size >> 20));
    if let Err(e) = run_quiet(&mut cmd, "check free space in the templates directory") {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let installed = (|| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &tmp))?;
        let image = image_path(&opts.templates_dir, &opts.name);
        fs::rename(&tmp, &image).map_err(io("install the image as", &image))?;
        write_atomically(
            &version_path(&opts.templates_dir, &opts.name),
            format!("{DEBIAN_BASE_VERSION}\n").as_bytes(),
        )?;
        sync_dir(&opts.templates_dir)
    })();
    if installed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    installed?;
    Ok((mirror, used))
}

/// Writes the configuration into a bootstrapped tree.
fn configure(tree: &Path, name: &str, mirror: &str, chroot: &Path) -> Result<(), BuildError> {
    for file in config_files(name, mirror) {
        let path = tree.join(file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let _ = fs::remove_file(&path);
        fs::write(&path, file.content.as_bytes()).map_err(io("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
            .map_err(io("chmod", &path))?;
    }
    for (link, target) in config_links() {
        let path = tree.join(&link);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(&target, &path).map_err(io("create the symlink", &path))?;
    }
    let in_chroot = |args: &[&str], hint: &'static str| {
        let mut cmd = Command::new(chroot);
        cmd.arg(tree)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_quiet(&mut cmd, hint)
    };
    // `*`: no password, but not a locked account (which sshd would refuse without PAM).
    in_chroot(
        &[
            "useradd",
            "-m",
            "-u",
            "1000",
            "-U",
            "-s",
            "/bin/bash",
            "-p",
            "*",
            "-c",
            "Sandbox user",
            "user",
        ],
        "the tree's passwd files may be damaged; rebuild from scratch",
    )?;
    in_chroot(
        &["locale-gen"],
        "the locales package may be missing from the tree",
    )?;
    for rel in REMOVE {
        let _ = fs::remove_file(tree.join(rel));
    }
    let ssh = tree.join("etc/ssh");
    for entry in fs::read_dir(&ssh).map_err(io("list", &ssh))? {
        let entry = entry.map_err(io("list", &ssh))?;
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            let p = entry.path();
            fs::remove_file(&p).map_err(io("remove the host key", &p))?;
        }
    }
    for rel in EMPTY {
        let d = tree.join(rel);
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let ft = entry.file_type().map_err(io("stat", &p))?;
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n == "partial") {
                    continue;
                }
                fs::remove_dir_all(&p).map_err(io("remove", &p))?;
            } else if p.file_name().is_some_and(|n| n != "lock") {
                fs::remove_file(&p).map_err(io("remove", &p))?;
            }
        }
    }
    // Logs of the build are not the VM's: keep the files (some packages expect them), empty.
    let log = tree.join("var/log");
    if let Ok(entries) = fs::read_dir(&log) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(entry.path());
            }
        }
    }
    Ok(())
}

/// Runs `cmd` with stdout and stderr merged, summarising its lines through `progress`; on failure
/// the error carries the last lines (and debootstrap's own log when it left one in `tree`).
fn run_streaming(
    mut cmd: Command,
    shown: &str,
    tree: &Path,
    hint: &'static str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let (reader, writer) = std::io::pipe().map_err(io("create a pipe for", Path::new(&program)))?;
    let writer2 = writer
        .try_clone()
        .map_err(io("create a pipe for", Path::new(&program)))?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = cmd.spawn().map_err(io("start", Path::new(&program)))?;
    // The Command holds the write ends: drop it so the read loop ends when the child exits.
    drop(cmd);
    let mut tail = Tail::new(25);
    let mut phase = Phase::default();
    for line in BufReader::new(reader).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        if let Some(summary) = phase.summarise(&line) {
            progress(&summary);
        }
        tail.push(line);
    }
    let status = child.wait().map_err(io("wait for", Path::new(&program)))?;
    if status.success() {
        return Ok(());
    }
    let log = tree.join("debootstrap/debootstrap.log");
    if let Ok(text) = fs::read_to_string(&log) {
        tail.push("--- debootstrap.log ---".into());
        for l in text
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            tail.push(l.to_owned());
        }
    }
    Err(BuildError::Command {
        command: shown.to_owned(),
        status: status.to_string(),
        hint,
        tail: tail.text(),
    })
}

/// Runs `cmd` to completion, capturing its output for the error.
fn run_quiet(cmd: &mut Command, hint: &'static str) -> Result<(), BuildError> {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io("start", Path::new(&command)))?;
    if out.status.success() {
        return Ok(());
    }
    let mut tail = Tail::new(20);
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        tail.push(l.to_owned());
    }
    Err(BuildError::Command {
        command,
        status: out.status.to_string(),
        hint,
        tail: tail.text(),
    })
}

/// The last `n` lines of some output.
struct Tail {
    n: usize,
    lines: std::collections::VecDeque<String>,
}

impl Tail {
    fn new(n: usize) -> Self {
        Tail {
            n,
            lines: Default::default(),
        }
    }
    fn push(&mut self, line: String) {
        if self.lines.len() == self.n {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
    fn text(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Summary of debootstrap's output: one line per phase instead of one per package, warnings and
/// errors verbatim.
#[derive(Default)]
pub struct Phase {
    current: Option<&'static str>,
}

impl Phase {
    pub fn summarise(&mut self, line: &str) -> Option<String> {
        let line = line.trim_end();
        if line.starts_with("W: ") || line.starts_with("E: ") {
            return Some(format!("debootstrap: {line}"));
        }
        let rest = line.strip_prefix("I: ")?;
        let verb = rest.split_whitespace().next().unwrap_or("");
        let per_package = match verb {
            "Retrieving" | "Validating" if rest.split_whitespace().count() == 3 => {
                Some("downloading packages")
            }
            "Extracting" if rest.split_whitespace().count() == 2 => Some("extracting packages"),
            "Unpacking" if rest.split_whitespace().count() == 2 => Some("unpacking packages"),
            "Configuring" if rest.split_whitespace().count() == 2 => Some("configuring packages"),
            _ => None,
        };
        match per_package {
            Some(p) if self.current == Some(p) => None,
            Some(p) => {
                self.current = Some(p);
                Some(format!("debootstrap: {p}"))
            }
            None => {
                self.current = None;
                Some(format!("debootstrap: {rest}"))
            }
        }
    }
}

/// Bytes the tree occupies on disk (allocated blocks; hard links counted once).
fn tree_usage(root: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.path().symlink_metadata() else {
                continue;
            };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            // At least one block per inode: ext4 stores small files and symlinks in blocks too.
            total += (m.blocks() * 512).max(4096);
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// Looks a tool up in PATH and the sbin directories (root's PATH does not always have them).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the work directory, first unmounting anything a crashed debootstrap left mounted
/// inside it (proc, sys, a bind-mounted /dev): deleting through a mount would delete the host's
/// files.
fn remove_work(work: &Path) -> Result<(), BuildError> {
    if !work.exists() {
        return Ok(());
    }
    let work = fs::canonicalize(work).map_err(io("resolve", work))?;
    for m in mounts_under(&work) {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string; a lazy unmount of a mount point inside our work tree.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Some(path) = mounts_under(&work).into_iter().next() {
        return Err(BuildError::StillMounted { path });
    }
    fs::remove_dir_all(&work).map_err(io("remove the build tree", &work))
}

/// Writes `path` via a synced temporary file and a rename.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension("version.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("install", path))
}

fn sync_dir(dir: &Path) -> Result<(), BuildError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_comes_from_deb822_first() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://mirror.example/debian/ http://other/\nSuites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        let list = "deb http://list.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources(deb822, list).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn mirror_falls_back_to_sources_list() {
        let list = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n\
                    deb http://second.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_sources("", list).as_deref(),
            Some("http://list.example/debian")
        );
        assert_eq!(
            mirror_from_sources("", "deb http://plain/debian bookworm main").as_deref(),
            Some("http://plain/debian")
        );
    }

    #[test]
    fn no_mirror_without_sources() {
        assert_eq!(mirror_from_sources("", ""), None);
        assert_eq!(mirror_from_sources("# URIs: nothing\n", "# deb x\n"), None);
        assert_eq!(mirror_from_sources("URIs: cdrom-ish\n", ""), None);
    }

    #[test]
    fn image_size_has_headroom_and_is_rounded() {
        assert_eq!(image_size(0), 1 << 30);
        let used = 300 << 20;
        let s = image_size(used);
        assert!(s >= used + MIN_HEADROOM);
        assert_eq!(s % (256 << 20), 0);
        assert_eq!(s, 1536 << 20);
    }

    #[test]
    fn version_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(installed_version(dir.path(), "debian-base"), None);
        assert!(needs_rebuild(dir.path(), "debian-base"));
        fs::write(version_path(dir.path(), "debian-base"), "1\n").unwrap();
        // Not installed without the image.
        assert_eq!(installed_version(dir.path(), "debian-base"), None);
        fs::write(image_path(dir.path(), "debian-base"), b"").unwrap();
        assert_eq!(installed_version(dir.path(), "debian-base"), Some(1));
        assert_eq!(
            needs_rebuild(dir.path(), "debian-base"),
            DEBIAN_BASE_VERSION != 1
        );
        fs::write(version_path(dir.path(), "debian-base"), "0\n").unwrap();
        assert!(needs_rebuild(dir.path(), "debian-base"));
        fs::write(version_path(dir.path(), "debian-base"), "junk").unwrap();
        assert_eq!(installed_version(dir.path(), "debian-base"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("debian-base"));
        assert!(valid_name("b2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("Debian"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn debootstrap_command_line() {
        let args = debootstrap_args(
            &["a".into(), "b".into()],
            Path::new("/t/root"),
            "http://m/debian",
        );
        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--include=a,b",
                "bookworm",
                "/t/root",
                "http://m/debian"
            ]
        );
        for p in ["systemd-sysv", "openssh-server", "sudo", "mosh", "locales"] {
            assert!(PACKAGES.contains(&p));
        }
    }

    fn file<'a>(files: &'a [TreeFile], path: &str) -> &'a TreeFile {
        files.iter().find(|f| f.path == path).unwrap()
    }

    #[test]
    fn configuration_files() {
        let files = config_files("debian-base", "http://deb.debian.org/debian");
        let sudo = file(&files, "etc/sudoers.d/90-scalebox-user");
        assert_eq!(sudo.mode, 0o440);
        assert!(sudo.content.contains("user ALL=(ALL:ALL) NOPASSWD: ALL\n"));
        // sudoers.d ignores names with dots or ending in '~'.
        assert!(!sudo.path.rsplit('/').next().unwrap().contains('.'));
        let sshd = &file(&files, "etc/ssh/sshd_config.d/50-scalebox.conf").content;
        assert!(sshd.contains("PasswordAuthentication no\n"));
        assert!(sshd.contains("PermitRootLogin no\n"));
        assert_eq!(file(&files, "etc/machine-id").content, "");
        let fstab = &file(&files, "etc/fstab").content;
        let entries: Vec<&str> = fstab.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(entries, ["/dev/vda / ext4 defaults,noatime 0 0"]);
        assert_eq!(
            file(&files, "etc/default/locale").content,
            "LANG=en_US.UTF-8\n"
        );
        assert!(
            file(&files, "etc/locale.gen")
                .content
                .contains("en_US.UTF-8 UTF-8")
        );
        let unit = &file(&files, "etc/systemd/system/scalebox-ssh-hostkeys.service").content;
        assert!(unit.contains("Before=ssh.service"));
        assert!(unit.contains("for t in ed25519 ecdsa; do k=/etc/ssh/ssh_host_$${t}_key;"));
        assert!(sshd.contains("HostKey /etc/ssh/ssh_host_ed25519_key\n"));
        let getty = &file(&files, "etc/systemd/system/serial-getty@ttyS0.service").content;
        assert!(!getty.contains("dev-%i.device"));
        assert!(getty.contains(r"-o '-p -- \\u'"));
        let sources = &file(&files, "etc/apt/sources.list.d/debian.sources").content;
        assert!(sources.contains("URIs: http://deb.debian.org/debian\n"));
        assert!(sources.contains("URIs: http://deb.debian.org/debian-security\n"));
        assert!(
            file(&files, "etc/hosts")
                .content
                .contains("127.0.1.1\tdebian-base\n")
        );
    }

    #[test]
    fn masked_units_keep_ssh_and_the_serial_console() {
        let links = config_links();
        for (link, target) in &links {
            if target == "/dev/null" {
                assert!(!link.contains("ssh"));
                assert!(!link.contains("serial-getty"));
            }
        }
        for u in [
            "apt-daily.timer",
            "e2scrub_all.timer",
            "getty@tty1.service",
            "systemd-networkd-wait-online.service",
            "systemd-firstboot.service",
        ] {
            assert!(
                links
                    .iter()
                    .any(|(l, t)| l.ends_with(u) && t == "/dev/null")
            );
        }
        assert!(links.iter().any(
            |(l, _)| l == "etc/systemd/system/ssh.service.wants/scalebox-ssh-hostkeys.service"
        ));
    }

    #[test]
    fn debootstrap_output_is_summarised() {
        let mut p = Phase::default();
        let lines = [
            "I: Retrieving InRelease ",
            "I: Retrieving adduser 3.134",
            "I: Validating adduser 3.134",
            "I: Retrieving apt 2.6.1",
            "I: Extracting adduser...",
            "I: Extracting apt...",
            "W: something odd",
            "I: Base system installed successfully.",
            "random noise",
        ];
        let out: Vec<String> = lines.iter().filter_map(|l| p.summarise(l)).collect();
        assert_eq!(
            out,
            [
                "debootstrap: Retrieving InRelease",
                "debootstrap: downloading packages",
                "debootstrap: extracting packages",
                "debootstrap: W: something odd",
                "debootstrap: Base system installed successfully.",
            ]
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }

    #[test]
    fn usage_counts_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("d/b")).unwrap();
        let u = tree_usage(dir.path());
        assert!(u >= 10_000 + 4096, "{u}");
        assert!(u < 2 * 10_000 + 3 * 4096, "{u}");
    }
}
