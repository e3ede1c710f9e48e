//! Thin safe wrappers over the system calls PID 1 needs: mounts, module loading, switching root,
//! power-off. Errors carry the operation and path.

use std::ffi::CString;
use std::io;
use std::path::Path;

pub type Res<T> = Result<T, String>;

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new("?").expect("static"))
}

fn last(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// `mount(2)`; `data` as the filesystem options.
pub fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Res<()> {
    let _ = std::fs::create_dir_all(target);
    let (s, t) = (cstr(src), cstr(target));
    let f = fstype.map(cstr);
    let d = data.map(cstr);
    // SAFETY: all pointers are valid NUL-terminated strings or null for the duration of the call.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |x| x.as_ptr()),
            flags,
            d.as_ref().map_or(std::ptr::null(), |x| x.as_ptr().cast()),
        )
    };
    if rc != 0 {
        Err(last(&format!("mount {src} on {target}")))
    } else {
        Ok(())
    }
}

/// The pseudo filesystems every guest needs.
pub fn mount_pseudo() -> Res<()> {
    mount(
        "proc",
        "/proc",
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    mount(
        "sysfs",
        "/sys",
        Some("sysfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    mount(
        "devtmpfs",
        "/dev",
        Some("devtmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount(
        "tmpfs",
        "/run",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = mount(
        "devpts",
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=666"),
    );
    let _ = std::fs::create_dir_all("/dev/shm");
    let _ = mount(
        "tmpfs",
        "/dev/shm",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    );
    Ok(())
}

/// The parameters for `module` on the kernel command line (`<module>.<param>=<value>`, with `-`
/// and `_` alike in the module name), as `finit_module` takes them. The kernel applies these
/// only to built-in code; for a loadable module `modprobe` passes them, and we load modules
/// ourselves. Firecracker describes its virtio-mmio devices this way
/// (`virtio_mmio.device=4K@0xd0000000:5`), which `virtio_mmio` needs when it is a module.
pub fn module_params(cmdline: &str, module: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let module = norm(module);
    cmdline
        .split_whitespace()
        .filter_map(|t| {
            let (m, rest) = t.split_once('.')?;
            (norm(m) == module && !rest.is_empty() && !rest.starts_with('=')).then_some(rest)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads every module listed in `/modules.order` (dependency order), skipping ones already
/// present, with its parameters from the kernel command line.
pub fn load_modules() -> Res<()> {
    let Ok(order) = std::fs::read_to_string("/modules.order") else {
        return Ok(());
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/modules/{name}");
        let f = std::fs::File::open(&path).map_err(|e| format!("open module {path}: {e}"))?;
        let params = cstr(&module_params(&cmdline, name.trim_end_matches(".ko")));
        // SAFETY: valid fd and NUL-terminated params.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                params.as_ptr(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("load module {name}: {e}"));
            }
        }
    }
    Ok(())
}

/// Waits up to `tries` × 50 ms for `path` to exist.
pub fn wait_for_path(path: &Path, tries: u32) -> bool {
    for _ in 0..tries {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    path.exists()
}

/// Mounts `device` (ext4) at /newroot, moves the pseudo filesystems into it and makes it `/`,
/// staying PID 1 (what `switch_root` does).
pub fn switch_root(device: &str) -> Res<()> {
    if !wait_for_path(Path::new(device), 200) {
        return Err(format!(
            "root device {device} did not appear (is the virtio-blk module loaded?)"
        ));
    }
    mount(device, "/newroot", Some("ext4"), 0, None)?;
    for m in ["/dev", "/proc", "/sys", "/run"] {
        mount(m, &format!("/newroot{m}"), None, libc::MS_MOVE, None)?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    mount(".", "/", None, libc::MS_MOVE, None)?;
    let dot = cstr(".");
    // SAFETY: valid path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(last("chroot"));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Sets the hostname.
pub fn set_hostname(name: &str) -> Res<()> {
    // SAFETY: pointer and length describe a valid buffer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(last("sethostname"));
    }
    Ok(())
}

/// Syncs and powers the VM off. Never returns.
pub fn power_off() -> ! {
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// `oom_kill` counter of /proc/vmstat.
pub fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_parameters_come_from_the_command_line() {
        let c = "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 \
                 virtio-mmio.device=4K@0xd0001000:6 virtio_blk.x=1 scalebox.channel=vsock";
        assert_eq!(
            module_params(c, "virtio_mmio"),
            "device=4K@0xd0000000:5 device=4K@0xd0001000:6"
        );
        assert_eq!(module_params(c, "virtio_blk"), "x=1");
        assert_eq!(module_params(c, "virtio_net"), "");
        assert_eq!(
            module_params("virtio_mmio.=x virtio_mmio", "virtio_mmio"),
            ""
        );
    }
}
