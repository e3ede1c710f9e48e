//! Per-VM cgroups for VMM processes: a hard memory cap and a CPU weight (CPU is soft, memory is
//! hard). cgroup v2 (`/sys/fs/cgroup/scalebox/<key>`: `memory.max`, `cpu.weight`) when the
//! unified hierarchy is mounted; else the v1 `memory` and `cpu` controllers
//! (`/sys/fs/cgroup/memory/scalebox/<key>`: `memory.limit_in_bytes`, with swap capped too when the
//! kernel accounts it; `/sys/fs/cgroup/cpu/scalebox/<key>`: `cpu.shares`). The layout is detected
//! per call from the mounts under `root` (tests pass their own).

use std::path::{Path, PathBuf};

/// Which hierarchy a host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2(PathBuf),
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
    },
    None,
}

/// The hierarchy under `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> Layout {
    if root.join("cgroup.controllers").exists() {
        return Layout::V2(root.to_owned());
    }
    let memory = root.join("memory");
    if memory.join("memory.limit_in_bytes").exists() {
        let cpu = root.join("cpu");
        return Layout::V1 {
            memory,
            cpu: cpu.join("cpu.shares").exists().then_some(cpu),
        };
    }
    Layout::None
}

/// `cpu.weight` (v2, 1-10000, default 100) for `cpus` vCPUs: 100 per vCPU.
pub fn weight_v2(cpus: u32) -> u64 {
    u64::from(cpus.clamp(1, 100)) * 100
}

/// `cpu.shares` (v1, default 1024) for `cpus` vCPUs: 1024 per vCPU.
pub fn shares_v1(cpus: u32) -> u64 {
    u64::from(cpus.clamp(1, 100)) * 1024
}

fn write(p: &Path, v: impl ToString) -> Result<(), String> {
    std::fs::write(p, v.to_string()).map_err(|e| format!("{}: {e}", p.display()))
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Puts `pid` into the cgroup of VM `key` with a hard memory limit of `limit_bytes` and the CPU
/// weight of `cpus` vCPUs. Where the cgroup is the layout's; `Ok(false)` when the host has no
/// memory controller at all.
pub fn apply(
    root: &Path,
    key: &str,
    pid: u32,
    limit_bytes: u64,
    cpus: u32,
) -> Result<bool, String> {
    match detect(root) {
        Layout::V2(r) => {
            let parent = r.join("scalebox");
            mkdir(&parent)?;
            // Enabling controllers for the children may already be done (or refused when the
            // root has processes of its own); the limit write below is what must work.
            let _ = write(&r.join("cgroup.subtree_control"), "+memory +cpu");
            let _ = write(&parent.join("cgroup.subtree_control"), "+memory +cpu");
            let dir = parent.join(key);
            mkdir(&dir)?;
            write(&dir.join("memory.max"), limit_bytes)?;
            let _ = write(&dir.join("memory.swap.max"), 0);
            let _ = write(&dir.join("cpu.weight"), weight_v2(cpus));
            write(&dir.join("cgroup.procs"), pid)?;
            Ok(true)
        }
        Layout::V1 { memory, cpu } => {
            let dir = memory.join("scalebox").join(key);
            mkdir(&dir)?;
            write(&dir.join("memory.limit_in_bytes"), limit_bytes)?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, limit_bytes)?;
            }
            write(&dir.join("cgroup.procs"), pid)?;
            if let Some(cpu) = cpu {
                let c = cpu.join("scalebox").join(key);
                mkdir(&c)?;
                write(&c.join("cpu.shares"), shares_v1(cpus))?;
                write(&c.join("cgroup.procs"), pid)?;
            }
            Ok(true)
        }
        Layout::None => Ok(false),
    }
}

/// The cgroup directories of VM `key` (memory first).
fn dirs(root: &Path, key: &str) -> Vec<PathBuf> {
    match detect(root) {
        Layout::V2(r) => vec![r.join("scalebox").join(key)],
        Layout::V1 { memory, cpu } => {
            let mut v = vec![memory.join("scalebox").join(key)];
            v.extend(cpu.map(|c| c.join("scalebox").join(key)));
            v
        }
        Layout::None => vec![],
    }
}

/// Removes VM `key`'s cgroups (they must be empty: call after the VMM exited).
pub fn remove(root: &Path, key: &str) {
    for d in dirs(root, key) {
        let _ = std::fs::remove_dir(d);
    }
}

/// A number from VM `key`'s memory cgroup: the v2 or the v1 file, whichever the host has.
fn memory_value(root: &Path, key: &str, v2: &str, v1: &str) -> Option<u64> {
    let file = match detect(root) {
        Layout::V2(_) => v2,
        Layout::V1 { .. } => v1,
        Layout::None => return None,
    };
    let d = dirs(root, key).into_iter().next()?;
    std::fs::read_to_string(d.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The memory VM `key`'s cgroup charges now.
pub fn memory_current(root: &Path, key: &str) -> Option<u64> {
    memory_value(root, key, "memory.current", "memory.usage_in_bytes")
}

/// The hard memory limit of VM `key`'s cgroup.
pub fn memory_limit(root: &Path, key: &str) -> Option<u64> {
    memory_value(root, key, "memory.max", "memory.limit_in_bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_layouts_and_computes_weights() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(detect(d.path()), Layout::None);
        std::fs::create_dir_all(d.path().join("memory")).unwrap();
        std::fs::write(d.path().join("memory/memory.limit_in_bytes"), "0").unwrap();
        assert_eq!(
            detect(d.path()),
            Layout::V1 {
                memory: d.path().join("memory"),
                cpu: None
            }
        );
        std::fs::write(d.path().join("cgroup.controllers"), "memory cpu").unwrap();
        assert_eq!(detect(d.path()), Layout::V2(d.path().to_owned()));
        assert_eq!(weight_v2(0), 100);
        assert_eq!(weight_v2(4), 400);
        assert_eq!(shares_v1(2), 2048);
    }
}
