//! Kernel module metadata: the `.modinfo` section of a `.ko` (ELF64), and the dependency
//! closure of a set of modules in load order — what `modules.dep` would say, without depmod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn u16le(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32le(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64le(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// `key=value` pairs of the `.modinfo` section of an ELF64 little-endian object.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, String> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let bad = || "truncated or malformed ELF section table".to_string();
    let shoff = u64le(elf, 0x28).ok_or_else(bad)? as usize;
    let shentsize = u16le(elf, 0x3a).ok_or_else(bad)? as usize;
    let shnum = u16le(elf, 0x3c).ok_or_else(bad)? as usize;
    let shstrndx = u16le(elf, 0x3e).ok_or_else(bad)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32le(elf, h)?,
            u64le(elf, h + 0x18)? as usize,
            u64le(elf, h + 0x20)? as usize,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(bad)?;
    let names = elf
        .get(stroff..stroff.checked_add(strsize).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i).ok_or_else(bad)?;
        let name = names
            .get(name_off as usize..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let data = elf
                .get(off..off.checked_add(size).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            return Ok(data
                .split(|&b| b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect());
        }
    }
    Err("no .modinfo section (not a kernel module?)".into())
}

/// Index of the modules under a `lib/modules/<version>` tree: name → path (names use `_`).
pub fn index(modules_root: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(d: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(n) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(n.replace('-', "_"), p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(modules_root, &mut out);
    out
}

/// The modules `wanted` and everything they depend on, dependencies first.
pub fn closure(
    index: &BTreeMap<String, PathBuf>,
    wanted: &[&str],
) -> Result<Vec<(String, PathBuf)>, String> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<(String, PathBuf)>,
        depth: usize,
    ) -> Result<(), String> {
        let name = name.replace('-', "_");
        if seen.contains(&name) {
            return Ok(());
        }
        if depth > 64 {
            return Err(format!("module dependency chain too deep at {name}"));
        }
        let path = index
            .get(&name)
            .ok_or_else(|| format!("kernel module {name} not found in the kernel package"))?;
        let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let info = modinfo(&data).map_err(|e| format!("{}: {e}", path.display()))?;
        seen.insert(name.clone());
        for (k, v) in &info {
            if k == "depends" {
                for d in v.split(',').filter(|d| !d.is_empty()) {
                    visit(d, index, seen, out, depth + 1)?;
                }
            }
        }
        out.push((name, path.clone()));
        Ok(())
    }
    let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
    for w in wanted {
        visit(w, index, &mut seen, &mut out, 0)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_and_truncated_input() {
        assert!(modinfo(b"hello").is_err());
        let mut fake = b"\x7fELF\x02\x01".to_vec();
        fake.resize(0x40, 0);
        fake[0x28] = 0xff; // section table beyond the end
        fake[0x3c] = 1;
        assert!(modinfo(&fake).is_err());
    }
}
