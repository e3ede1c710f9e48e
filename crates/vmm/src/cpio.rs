//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.

use std::io::{self, Write};

/// Writes newc entries; call [`finish`](Self::finish) to write the trailer.
pub struct Newc<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Newc<W> {
    pub fn new(out: W) -> Self {
        Newc {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u32) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        let h = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0
        );
        self.ino += 1;
        self.write_raw(h.as_bytes())?;
        self.write_raw(name.as_bytes())?;
        self.write_raw(&[0])?;
        self.pad()
    }

    fn write_raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.write_raw(&[0u8; 3][..n])
    }

    /// A directory (`mode` without the type bits).
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.header(name, 0o040000 | mode, 0)
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is too large for cpio")))?;
        self.header(name, 0o100000 | mode, size)?;
        self.write_raw(data)?;
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn newc_layout_is_aligned_and_parsable() {
        let mut w = Newc::new(Vec::new());
        w.dir("modules", 0o755).unwrap();
        w.file("init", 0o755, b"hello").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // Second header starts 4-aligned after the first name.
        let second = out.windows(6).skip(1).position(|w| w == b"070701").unwrap() + 1;
        assert_eq!(second % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init") && text.contains("hello") && text.contains("TRAILER!!!"));
        // GNU cpio (Debian package `cpio`) lists what we wrote.
        let mut c = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the `cpio` tool (Debian package cpio) is needed for this test");
        c.stdin.take().unwrap().write_all(&out).unwrap();
        let listed = String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ["modules", "init"]);
    }
}
