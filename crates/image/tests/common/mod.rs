//! What the image tests share: a layer of `BIG` incompressible bytes written as a stream, and
//! the growth of this process's peak resident set (`VmHWM`, reset through
//! `/proc/self/clear_refs`) while something runs; a regular file's tar header; what debugfs
//! says of a file in an ext4 image.

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

pub const BIG: u64 = 64 << 20;

/// Pseudo-random (incompressible) bytes, made as they are read.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A regular file's header: mode 0644, owner 0:0, mtime 0.
pub fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Writes a plain-tar layer holding `big.bin` (`BIG` bytes of noise) and `etc/hello` to
/// `path`, streaming; returns its digest.
pub fn big_layer(path: &Path) -> String {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(Hashing {
        inner: std::io::BufWriter::new(f),
        hash: Sha256::new(),
    });
    let mut h = header(BIG);
    b.append_data(
        &mut h,
        "big.bin",
        Noise {
            state: 0x9e37_79b9_7f4a_7c15,
            left: BIG,
        },
    )
    .unwrap();
    let mut h = header(2);
    b.append_data(&mut h, "etc/hello", &b"hi"[..]).unwrap();
    let mut w = b.into_inner().unwrap();
    w.flush().unwrap();
    format!("sha256:{}", hex::encode(w.hash.finalize()))
}

/// kB of `key` in /proc/self/status.
pub fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
}

/// How much the peak resident set grows (MiB) while `f` runs.
pub fn peak_growth_mib<T>(f: impl FnOnce() -> T) -> (T, f64) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS (Linux >= 4.0)");
    let before = status_kb("VmRSS");
    let out = f();
    let peak = status_kb("VmHWM");
    (out, peak.saturating_sub(before) as f64 / 1024.0)
}

/// `debugfs -R "stat <file>"` of the ext4 image `ext4`.
pub fn debugfs_stat(ext4: &Path, file: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {file}")])
        .arg(ext4)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
