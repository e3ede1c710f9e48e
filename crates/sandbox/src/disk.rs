//! Disk and host facts: template files, copy-on-write clones grown to a size, clearing SSH keys
//! in a snapshot copy (offline, with e2fsprogs: no mount), free space, memory and CPU load.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A template file on disk.
#[derive(Debug, Clone)]
pub struct TemplateFile {
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub modified: time::OffsetDateTime,
}

/// `<dir>/<name>.ext4` files (dot files are work in progress and skipped).
pub fn list_templates(dir: &Path) -> Vec<TemplateFile> {
    let mut out: Vec<TemplateFile> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".ext4")?;
            if stem.starts_with('.') || crate::model::validate_template_name(stem).is_err() {
                return None;
            }
            let md = e.metadata().ok()?;
            Some(TemplateFile {
                name: stem.to_owned(),
                path: e.path(),
                size_bytes: md.len(),
                modified: md
                    .modified()
                    .ok()
                    .map(time::OffsetDateTime::from)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn tool(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {} (Debian package e2fsprogs): {e}", args[0]))?;
    if !out.status.success() {
        // e2fsck: 1 = errors corrected, which is fine for us.
        if !(args[0] == "e2fsck" && out.status.code() == Some(1)) {
            return Err(format!(
                "`{}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Clones `template` to `dst` (reflink where supported, else a sparse copy) and grows the
/// filesystem to `size_gib` when that is larger than the template. Returns how it cloned.
pub fn clone_rootfs(template: &Path, dst: &Path, size_gib: u32) -> Result<&'static str, String> {
    let kind = scalebox_image::cache::clone_file(template, dst)
        .map_err(|e| format!("clone {}: {e}", template.display()))?;
    let want = u64::from(size_gib) << 30;
    let len = std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0);
    if want > len {
        std::fs::OpenOptions::new()
            .write(true)
            .open(dst)
            .and_then(|f| f.set_len(want))
            .map_err(|e| format!("grow {}: {e}", dst.display()))?;
        let d = dst.display().to_string();
        tool(&["e2fsck", "-f", "-p", &d])?;
        tool(&["resize2fs", "-f", &d])?;
    }
    Ok(match kind {
        scalebox_image::cache::CloneKind::Reflink => "reflink",
        scalebox_image::cache::CloneKind::SparseCopy => "copy",
    })
}

/// Size in GiB of a disk image, rounded up.
pub fn size_gib(path: &Path) -> u32 {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    len.div_ceil(1 << 30) as u32
}

/// Makes a snapshot copy a clean template: replays the journal (the VM was running) and removes
/// `user`'s authorized keys.
pub fn scrub_snapshot(image: &Path, home: &str) -> Result<(), String> {
    let d = image.display().to_string();
    tool(&["e2fsck", "-f", "-y", &d])?;
    let file = format!("{home}/.ssh/authorized_keys");
    // `rm` of a missing file is reported on stderr but exits 0; check it is gone afterwards.
    tool(&["debugfs", "-w", "-R", &format!("rm {file}"), &d])?;
    let left = tool(&["debugfs", "-R", &format!("stat {file}"), &d]).unwrap_or_default();
    if left.contains("Inode:") {
        return Err(format!("could not remove {file} from the snapshot"));
    }
    Ok(())
}

/// (total, free) bytes of the filesystem holding `path`.
pub fn fs_space(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return (0, 0);
        }
        let b = s.f_frsize;
        (s.f_blocks * b, s.f_bavail * b)
    }
}

/// (MemTotal, MemAvailable) in bytes.
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
pub fn cpu_times() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let nums: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = nums.iter().sum();
    let idle = nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU use in percent between two `cpu_times` samples.
pub fn cpu_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total <= 0.0 {
        return 0.0;
    }
    (busy / total * 1000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_from_samples() {
        assert_eq!(cpu_percent((10, 100), (60, 200)), 50.0);
        assert_eq!(cpu_percent((10, 100), (10, 100)), 0.0);
        let (busy, total) = cpu_times();
        assert!(total >= busy);
        let (t, a) = memory();
        assert!(t > 0 && a <= t);
    }

    #[test]
    fn templates_listing_skips_work_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.ext4"), b"x").unwrap();
        std::fs::write(d.path().join(".tmp-snap.ext4"), b"x").unwrap();
        std::fs::write(d.path().join("base.version"), b"1").unwrap();
        let t = list_templates(d.path());
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "base");
        assert_eq!(t[0].size_bytes, 1);
    }
}
