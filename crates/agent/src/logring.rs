//! Bounded per-instance log ring on disk: workload output lines with timestamps, stored in
//! segment files named by their first byte offset (`00000000000000000000.log`). When the total
//! exceeds the cap the oldest segment is deleted. Offsets are global and only grow, so a reader
//! can resume from an offset (and learns when older lines were dropped). Survives restarts:
//! opening a directory resumes after the last complete line.
//!
//! Record format, one per line: `<RFC 3339 time> <o|e> <text>\n`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::LogStream;

/// Longest line kept; longer output is split.
pub const MAX_LINE: usize = 16 * 1024;

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub offset: u64,
    pub ts: String,
    pub stream: LogStream,
    pub line: String,
}

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub entries: Vec<LogEntry>,
    /// Offset to pass to continue reading.
    pub next: u64,
    /// Bytes the reader missed because they were dropped from the ring.
    pub dropped: u64,
}

/// The on-disk ring of one instance.
pub struct LogRing {
    dir: PathBuf,
    segment_bytes: u64,
    max_segments: usize,
    /// (start offset, length) of each segment, oldest first.
    segments: VecDeque<(u64, u64)>,
    current: Option<File>,
    end_tx: watch::Sender<u64>,
}

fn seg_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.log"))
}

impl LogRing {
    /// Opens (or creates) the ring in `dir`. `max_bytes` is the total cap (at least two
    /// segments are kept).
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> io::Result<LogRing> {
        fs::create_dir_all(dir)?;
        let mut starts = Vec::new();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(num) = name.strip_suffix(".log")
                && let Ok(n) = num.parse::<u64>()
            {
                starts.push(n);
            }
        }
        starts.sort_unstable();
        let mut segments = VecDeque::new();
        for (i, &s) in starts.iter().enumerate() {
            let path = seg_path(dir, s);
            let mut len = fs::metadata(&path)?.len();
            if i + 1 == starts.len() {
                len = trim_partial_line(&path, len)?;
            }
            segments.push_back((s, len));
        }
        let segment_bytes = segment_bytes.max(256);
        let max_segments = ((max_bytes / segment_bytes) as usize).max(2);
        let end = segments.back().map(|(s, l)| s + l).unwrap_or(0);
        let (end_tx, _) = watch::channel(end);
        Ok(LogRing {
            dir: dir.to_owned(),
            segment_bytes,
            max_segments,
            segments,
            current: None,
            end_tx,
        })
    }

    /// Offset after the last stored line.
    pub fn end(&self) -> u64 {
        *self.end_tx.borrow()
    }

    /// Offset of the oldest stored line.
    pub fn start(&self) -> u64 {
        self.segments
            .front()
            .map(|s| s.0)
            .unwrap_or_else(|| self.end())
    }

    /// Notified with the new end offset after each append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_tx.subscribe()
    }

    /// Appends one line (without its newline; longer than [`MAX_LINE`] is cut).
    pub fn append(&mut self, stream: LogStream, ts: &str, line: &str) -> io::Result<()> {
        let mut cut = line.len().min(MAX_LINE);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let text: String = line[..cut]
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        let s = match stream {
            LogStream::Stdout => 'o',
            LogStream::Stderr => 'e',
        };
        let rec = format!("{ts} {s} {text}\n");
        let len = rec.len() as u64;
        let end = self.end();
        let need_new = match self.segments.back() {
            None => true,
            Some(&(_, l)) => l > 0 && l + len > self.segment_bytes,
        };
        if need_new {
            self.current = None;
            self.segments.push_back((end, 0));
            while self.segments.len() > self.max_segments {
                if let Some((old, _)) = self.segments.pop_front() {
                    match fs::remove_file(seg_path(&self.dir, old)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let (start, seg_len) = *self.segments.back().expect("segment exists");
        if self.current.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(seg_path(&self.dir, start))?;
            self.current = Some(f);
        }
        self.current
            .as_mut()
            .expect("opened above")
            .write_all(rec.as_bytes())?;
        if let Some(b) = self.segments.back_mut() {
            b.1 = seg_len + len;
        }
        self.end_tx.send_replace(end + len);
        Ok(())
    }

    /// Reads complete lines from `from`, up to about `max_bytes`. An offset older than the ring
    /// starts at the oldest line (and reports `dropped`); an offset inside a line skips to the
    /// next line.
    pub fn read(&self, from: u64, max_bytes: usize) -> io::Result<ReadResult> {
        let mut pos = from.min(self.end());
        let mut dropped = 0;
        if pos < self.start() {
            dropped = self.start() - pos;
            pos = self.start();
        }
        let mut entries = Vec::new();
        let mut used = 0usize;
        for &(start, len) in &self.segments {
            if start + len <= pos || used >= max_bytes {
                continue;
            }
            let mut f = match File::open(seg_path(&self.dir, start)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let skip = pos.saturating_sub(start);
            f.seek(SeekFrom::Start(skip))?;
            let want = (len - skip).min((max_bytes - used + MAX_LINE + 64) as u64);
            let mut buf = Vec::with_capacity(want as usize);
            f.take(want).read_to_end(&mut buf)?;
            let mut at = 0usize;
            // Mid-line offset: align to the next record.
            if skip > 0 && !preceded_by_newline(&self.dir, start, skip)? {
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => at = i + 1,
                    None => {
                        pos = start + skip + buf.len() as u64;
                        if pos < start + len {
                            break;
                        }
                        continue;
                    }
                }
            }
            while at < buf.len() && used < max_bytes {
                let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                let raw = &buf[at..at + nl];
                if let Some(e) = parse_record(raw, start + skip + at as u64) {
                    entries.push(e);
                }
                at += nl + 1;
                used += nl + 1;
            }
            pos = start + skip + at as u64;
            if pos < start + len {
                break;
            }
        }
        Ok(ReadResult {
            entries,
            next: pos,
            dropped,
        })
    }
}

fn preceded_by_newline(dir: &Path, start: u64, skip: u64) -> io::Result<bool> {
    let mut f = File::open(seg_path(dir, start))?;
    f.seek(SeekFrom::Start(skip - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

fn parse_record(raw: &[u8], offset: u64) -> Option<LogEntry> {
    let s = String::from_utf8_lossy(raw);
    let mut it = s.splitn(3, ' ');
    let ts = it.next()?.to_string();
    let stream = match it.next()? {
        "o" => LogStream::Stdout,
        "e" => LogStream::Stderr,
        _ => return None,
    };
    let line = it.next().unwrap_or("").to_string();
    Some(LogEntry {
        offset,
        ts,
        stream,
        line,
    })
}

/// Cuts a torn last record (crash mid-write) so the file ends on a newline.
fn trim_partial_line(path: &Path, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let back = len.min(MAX_LINE as u64 + 128);
    f.seek(SeekFrom::Start(len - back))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let keep = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - back + i as u64 + 1,
        None => len - back,
    };
    if keep != len {
        f.set_len(keep)?;
    }
    Ok(keep)
}

/// Splits a byte stream into lines, keeping a bounded partial line between chunks.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns the complete lines (lossy UTF-8, `\r\n` trimmed).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    out.push(self.take());
                }
            }
        }
        out
    }

    /// Returns the unterminated rest, if any (at exit).
    pub fn flush(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut v = std::mem::take(&mut self.partial);
        if v.last() == Some(&b'\r') {
            v.pop();
        }
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &ReadResult) -> Vec<String> {
        r.entries.iter().map(|e| e.line.clone()).collect()
    }

    #[test]
    fn append_and_read_from_offsets() {
        let d = tempfile::tempdir().unwrap();
        let mut r = LogRing::open(d.path(), 4096, 1 << 20).unwrap();
        r.append(LogStream::Stdout, "2026-01-01T00:00:00Z", "hello")
            .unwrap();
        r.append(LogStream::Stderr, "2026-01-01T00:00:01Z", "oops world")
            .unwrap();
        let all = r.read(0, 1 << 20).unwrap();
        assert_eq!(lines(&all), ["hello", "oops world"]);
        assert_eq!(all.entries[1].stream, LogStream::Stderr);
        assert_eq!(all.next, r.end());
        let second = r.read(all.entries[1].offset, 1 << 20).unwrap();
        assert_eq!(lines(&second), ["oops world"]);
        // A mid-line offset skips to the next full line.
        let mid = r.read(3, 1 << 20).unwrap();
        assert_eq!(lines(&mid), ["oops world"]);
        assert!(r.read(r.end(), 100).unwrap().entries.is_empty());
    }

    #[test]
    fn wraps_around_dropping_oldest_segments() {
        let d = tempfile::tempdir().unwrap();
        let mut r = LogRing::open(d.path(), 256, 1024).unwrap();
        for i in 0..200 {
            r.append(LogStream::Stdout, "t", &format!("line {i:04}"))
                .unwrap();
        }
        let files = fs::read_dir(d.path()).unwrap().count();
        assert!(files <= 4, "{files} segments kept");
        let got = r.read(0, 1 << 20).unwrap();
        assert!(got.dropped > 0);
        let l = lines(&got);
        assert_eq!(l.last().unwrap(), "line 0199");
        assert!(!l.contains(&"line 0000".to_string()));
        // Contiguous, in order.
        let nums: Vec<u32> = l.iter().map(|s| s[5..].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        let total: u64 = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 1024 + 256, "{total} bytes on disk");
    }

    #[test]
    fn survives_reopen_and_trims_torn_record() {
        let d = tempfile::tempdir().unwrap();
        let end = {
            let mut r = LogRing::open(d.path(), 256, 1024).unwrap();
            for i in 0..50 {
                r.append(LogStream::Stdout, "t", &format!("n{i}")).unwrap();
            }
            r.end()
        };
        // Simulate a crash mid-write of the next record.
        let last = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(b"t o torn")
            .unwrap();
        let mut r = LogRing::open(d.path(), 256, 1024).unwrap();
        assert_eq!(r.end(), end);
        r.append(LogStream::Stdout, "t", "after restart").unwrap();
        let l = lines(&r.read(0, 1 << 20).unwrap());
        assert_eq!(l.last().unwrap(), "after restart");
        assert_eq!(l[l.len() - 2], "n49");
        assert!(!l.iter().any(|s| s.contains("torn")));
    }

    #[test]
    fn read_respects_max_bytes_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        let mut r = LogRing::open(d.path(), 300, 1 << 20).unwrap();
        for i in 0..100 {
            r.append(LogStream::Stdout, "t", &format!("x{i}")).unwrap();
        }
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let got = r.read(from, 100).unwrap();
            if got.entries.is_empty() {
                break;
            }
            seen.extend(lines(&got));
            from = got.next;
        }
        assert_eq!(seen.len(), 100);
        assert_eq!(seen[99], "x99");
    }

    #[test]
    fn splitter_handles_partial_and_long_lines() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"ab").is_empty());
        assert_eq!(s.push(b"c\r\nd\n"), ["abc", "d"]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.flush().as_deref(), Some("tail"));
        let long = vec![b'x'; MAX_LINE + 10];
        let out = s.push(&long);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE);
    }
}
