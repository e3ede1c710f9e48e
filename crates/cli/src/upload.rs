//! Uploading a local image to the control plane, so a release of `oci-archive:PATH` or
//! `oci:DIR` works wherever the CLI runs: `HEAD /v1/orgs/{org}/images/{digest}` says whether the
//! org already has it; if not, `PUT` streams it (never whole in memory) with progress on stderr:
//! an archive file as it is, a layout directory packed into an OCI archive on the fly
//! ([`crate::layout_archive`]). The release then names the uploaded image (`upload:sha256:…`).
//! Registry references are passed through unchanged.
//!
//! Uploads resume: `HEAD` also tells how much of an earlier, broken-off upload the server kept
//! (`Upload-Offset`), and each attempt sends `Content-Range: bytes OFFSET-END/TOTAL` from there
//! (docs/control-plane.md, "Uploading an image"). Within a run a broken connection or a
//! 502/503/504 asks where the server got to and goes on ([`next`] decides, free of I/O); when
//! it gives up, or on Ctrl-C, sb says that running the same command again resumes.

use std::cell::RefCell;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::account::Ctx;
use serde_json::Value;

use crate::client::{PutOutcome, api_error};
use crate::error::{CliError, Result, exit};
use crate::output::Out;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A local image that is uploaded.
#[derive(Debug, PartialEq)]
pub enum Local<'a> {
    /// `oci-archive:PATH`, `archive:PATH`: sent as it is.
    Archive(&'a str),
    /// `oci:DIR[:TAG]`: packed into an OCI archive.
    Layout { dir: &'a str, tag: Option<&'a str> },
}

/// The local image an image reference names when it is uploaded; `None` for everything sent
/// as-is (registry references, `upload:…`, `docker-archive:`).
pub fn local(image: &str) -> Option<Local<'_>> {
    if let Some(rest) = image.strip_prefix("oci:") {
        let (dir, tag) = crate::layout_archive::split(rest);
        return Some(Local::Layout { dir, tag });
    }
    image
        .strip_prefix("oci-archive:")
        .or_else(|| image.strip_prefix("archive:"))
        .map(Local::Archive)
}

/// What is sent: a file, or a layout packed as an archive.
enum Source {
    File { path: std::path::PathBuf, len: u64 },
    Layout(crate::layout_archive::Packed),
}

impl Source {
    fn open(local: &Local, digest: &str) -> Result<Source> {
        match local {
            Local::Archive(p) => {
                let path = Path::new(p).to_path_buf();
                let len = std::fs::metadata(&path)
                    .map_err(|e| CliError::failure(format!("cannot read {p}: {e}")))?
                    .len();
                Ok(Source::File { path, len })
            }
            Local::Layout { dir, tag } => {
                let packed = crate::layout_archive::pack(Path::new(dir), *tag, Some(digest))?;
                debug_assert_eq!(packed.digest, digest, "pack chooses the manifest by digest");
                Ok(Source::Layout(packed))
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            Source::File { len, .. } => *len,
            Source::Layout(p) => p.len(),
        }
    }

    /// `app.tar (287 MiB` / `layout/ (OCI layout, 12 blobs, 287 MiB as an archive`.
    fn describe(&self, local: &Local) -> String {
        match (self, local) {
            (Source::Layout(p), Local::Layout { dir, .. }) => format!(
                "{dir} (OCI layout, {} blobs, {} as an archive",
                p.blobs,
                size(p.len())
            ),
            _ => match self {
                Source::File { path, len } => format!("{} ({}", path.display(), size(*len)),
                Source::Layout(p) => format!("layout ({}", size(p.len())),
            },
        }
    }

    /// The bytes to send, from `offset` on.
    fn reader_at(&self, offset: u64) -> Result<Box<dyn Read>> {
        match self {
            Source::File { path, len } => {
                let cannot = |e: std::io::Error| {
                    CliError::failure(format!("cannot read {}: {e}", path.display()))
                };
                let mut f = std::fs::File::open(path).map_err(cannot)?;
                let now = f.metadata().map_err(cannot)?.len();
                if now != *len {
                    return Err(CliError::failure(format!(
                        "{} changed size while uploading ({len} → {now} bytes); run the command again",
                        path.display()
                    )));
                }
                f.seek(SeekFrom::Start(offset)).map_err(cannot)?;
                Ok(Box::new(f))
            }
            Source::Layout(p) => Ok(Box::new(p.reader_at(offset))),
        }
    }
}

/// Whether to upload, from the answer to `HEAD …/images/{digest}`.
fn needs_upload(status: u16) -> Result<bool> {
    match status {
        200..=299 => Ok(false),
        404 => Ok(true),
        401 => Err(CliError::http(
            401,
            "the server refused the token (log in again with `sb login`, or check SCALEBOX_TOKEN)"
                .into(),
            None,
        )),
        403 => Err(CliError::http(
            403,
            "this token may not upload images (a deployer or admin token can)".into(),
            None,
        )),
        s => Err(CliError::http(
            s,
            format!("asking whether the image is already uploaded: HTTP {s}"),
            None,
        )),
    }
}

/// What `HEAD …/images/{digest}` told of an image the server does not have: the offset and
/// length of a partial upload it keeps, and the largest archive it takes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Server {
    offset: Option<u64>,
    length: Option<u64>,
    limit: Option<u64>,
}

/// The `HEAD` headers this reads.
const HEAD_HEADERS: &[&str] = &["upload-offset", "upload-length", "upload-limit"];

impl Server {
    /// From the values of [`HEAD_HEADERS`].
    fn from_headers(values: &[Option<String>]) -> Server {
        let n = |i: usize| values.get(i)?.as_deref()?.trim().parse().ok();
        Server {
            offset: n(0),
            length: n(1),
            limit: n(2),
        }
    }

    /// Where to send an archive of `len` bytes from: the server's offset when it holds part of
    /// an archive of that length, else the start.
    fn resume_from(&self, len: u64) -> u64 {
        match (self.offset, self.length) {
            (Some(o), Some(l)) if l == len && o < len => o,
            _ => 0,
        }
    }
}

/// `Content-Range` for sending an archive of `len` bytes from `offset` to the end.
fn content_range(offset: u64, len: u64) -> String {
    format!("bytes {offset}-{}/{len}", len.saturating_sub(1))
}

/// Attempts per run (the first, and retries after a broken connection or a 502/503/504).
const ATTEMPTS: u32 = 3;

/// What to do after an attempt.
#[derive(Debug)]
enum Next {
    Done(Value),
    /// Send again from this offset (why).
    From(u64, String),
    /// Ask the server where it is (`HEAD`) and send from there (why).
    Ask(String),
    Fail(CliError),
}

/// The step after attempt number `attempt`, which sent from `sent_from` of `len` bytes;
/// `restarted`: a resumed upload was already sent again from the start once.
fn next(outcome: PutOutcome, attempt: u32, sent_from: u64, len: u64, restarted: bool) -> Next {
    let more = attempt < ATTEMPTS;
    match outcome {
        PutOutcome::Answer {
            status: 202,
            upload_offset: Some(o),
            ..
        } if more && o < len => Next::From(o, format!("the server has {} so far", size(o))),
        PutOutcome::Answer {
            status: 200..=299,
            body,
            ..
        } => Next::Done(body),
        PutOutcome::Answer {
            status: 409,
            upload_offset: Some(o),
            ..
        } if more => Next::From(
            if o < len { o } else { 0 },
            format!("the server holds {} of it", size(o)),
        ),
        PutOutcome::Answer {
            status: 400, body, ..
        } if sent_from > 0 && !restarted => Next::From(
            0,
            format!(
                "the server refused the resumed upload: {}",
                api_error(400, &body).message
            ),
        ),
        PutOutcome::Answer {
            status: status @ 502..=504,
            body,
            ..
        } if more => Next::Ask(format!(
            "the server answered {status} ({})",
            api_error(status, &body).message
        )),
        PutOutcome::Answer { status, body, .. } => Next::Fail(api_error(status, &body)),
        PutOutcome::Failed {
            timeout: false,
            message,
        } if more => Next::Ask(message),
        PutOutcome::Failed { message, .. } => Next::Fail(CliError::new(
            exit::SERVER,
            format!("the connection to the Scalebox API failed: {message}"),
        )),
    }
}

/// What to run again after an upload stopped part-way.
const RESUME_HINT: &str = "the server keeps what it received for a day: run the same command \
                           again to resume from there";

/// How long an upload of `len` bytes may take: a minute plus a second per MiB.
fn timeout_for(len: u64) -> Duration {
    Duration::from_secs(60 + len.div_ceil(MIB))
}

/// `done/total UNIT`, the unit picked by the total.
fn sizes(done: u64, total: u64) -> String {
    if total >= GIB {
        format!(
            "{:.1}/{:.1} GiB",
            done as f64 / GIB as f64,
            total as f64 / GIB as f64
        )
    } else if total >= MIB {
        format!("{}/{} MiB", done / MIB, total / MIB)
    } else {
        format!("{}/{} KiB", done / 1024, total.div_ceil(1024))
    }
}

/// A size for humans (`287 MiB`).
fn size(n: u64) -> String {
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n.div_ceil(1024))
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (done.min(total) as u128 * 100 / total as u128) as u64
    }
}

/// `42% 120/287 MiB 35 MiB/s`: `done` of `total`, the rate of the `sent` bytes this attempt
/// sent in `elapsed` (none before any time has passed).
fn stats(done: u64, total: u64, sent: u64, elapsed: Duration) -> String {
    let mut s = format!("{}% {}", percent(done, total), sizes(done, total));
    let secs = elapsed.as_secs_f64();
    if secs >= 0.05 {
        let rate = sent as f64 / secs;
        if rate >= MIB as f64 {
            s.push_str(&format!(" {} MiB/s", (rate / MIB as f64).round() as u64));
        } else {
            s.push_str(&format!(" {} KiB/s", (rate / 1024.0).round() as u64));
        }
    }
    s
}

const BAR: usize = 20;

/// `[#####     ] 42% 120/287 MiB 35 MiB/s`.
fn bar(done: u64, total: u64, sent: u64, elapsed: Duration) -> String {
    let filled = (percent(done, total) as usize * BAR) / 100;
    format!(
        "[{}{}] {}",
        "#".repeat(filled),
        " ".repeat(BAR - filled),
        stats(done, total, sent, elapsed)
    )
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// A bar redrawn in place (stderr is a terminal).
    Bar,
    /// A line every 10%.
    Lines,
    /// Nothing (`--json`).
    Off,
}

struct Progress {
    mode: Mode,
    total: u64,
    done: u64,
    /// Where this attempt started (what the server had).
    base: u64,
    start: Instant,
    /// The next multiple of 10% to print a line at (`Lines`).
    next_step: u64,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(mode: Mode, total: u64) -> Progress {
        Progress {
            mode,
            total,
            done: 0,
            base: 0,
            start: Instant::now(),
            next_step: 10,
            last_draw: None,
        }
    }

    /// For an attempt sending from `offset` on (0: from the start).
    fn restart_at(&mut self, offset: u64) {
        *self = Progress::new(self.mode, self.total);
        self.done = offset;
        self.base = offset;
        self.next_step = (percent(offset, self.total) / 10 + 1) * 10;
    }

    /// The line to print after `n` more bytes went out, if one is due.
    fn advance(&mut self, n: u64, now: Instant) -> Option<String> {
        self.done += n;
        let elapsed = now.saturating_duration_since(self.start);
        let sent = self.done - self.base;
        match self.mode {
            Mode::Off => None,
            Mode::Bar => {
                let due = self
                    .last_draw
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(100));
                if due || self.done >= self.total {
                    self.last_draw = Some(now);
                    Some(bar(self.done, self.total, sent, elapsed))
                } else {
                    None
                }
            }
            Mode::Lines => {
                let p = percent(self.done, self.total);
                if p >= self.next_step {
                    self.next_step = (p / 10 + 1) * 10;
                    Some(format!(
                        "uploaded {}",
                        stats(self.done, self.total, sent, elapsed)
                    ))
                } else {
                    None
                }
            }
        }
    }

    fn draw(&self, line: &str) {
        let mut e = std::io::stderr().lock();
        let _ = match self.mode {
            Mode::Bar => write!(e, "\r{line}\x1b[K"),
            _ => writeln!(e, "{line}"),
        };
        let _ = e.flush();
    }

    /// Ends the bar's line (before anything else is printed).
    fn finish_line(&self) {
        if self.mode == Mode::Bar && self.last_draw.is_some() {
            eprintln!();
        }
    }
}

/// The bytes sent, read through [`Progress`].
struct Counting {
    inner: Box<dyn Read>,
    progress: Rc<RefCell<Progress>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut p = self.progress.borrow_mut();
        if let Some(line) = p.advance(n as u64, Instant::now()) {
            p.draw(&line);
        }
        Ok(n)
    }
}

/// The image reference a release of `image` (with manifest digest `digest`) should name: for a
/// local archive, the uploaded copy (`upload:sha256:…`), uploading it first unless the org has
/// it already; anything else unchanged.
pub fn release_image_ref(ctx: &Ctx, image: &str, digest: &str, out: Out) -> Result<String> {
    let Some(local) = local(image) else {
        return Ok(image.to_owned());
    };
    if !crate::image_ref::valid_digest(digest) {
        return Err(CliError::usage(format!(
            "{digest:?} is not an image digest (sha256: and 64 hex digits)"
        )));
    }
    let source = Source::open(&local, digest)?;
    let len = source.len();
    let c = ctx.client()?;
    let org = ctx.org()?;
    let path = format!("{}/images/{digest}", ctx.org_path()?);
    let fallback = format!("upload:{digest}");
    let (status, values) = c.head(&path, HEAD_HEADERS)?;
    if !needs_upload(status)? {
        if !out.json {
            eprintln!("Image {digest} is already uploaded to {org}; not sending it again.");
        }
        return Ok(fallback);
    }
    let server = Server::from_headers(&values);
    let what = source.describe(&local);
    if let Some(limit) = server.limit
        && len > limit
    {
        return Err(CliError::failure(format!(
            "{what}) is larger than the server accepts ({}, its image_upload_limit); make the \
             image smaller, or push it to a registry and deploy that reference",
            size(limit)
        )));
    }
    let mode = if out.json {
        Mode::Off
    } else if std::io::stderr().is_terminal() {
        Mode::Bar
    } else {
        Mode::Lines
    };
    let mut offset = server.resume_from(len);
    if !out.json {
        if offset > 0 {
            eprintln!(
                "Resuming the upload of {what}, {digest}) to {org}: the server has {} of it",
                size(offset)
            );
        } else {
            eprintln!("Uploading {what}, {digest}) to {org}");
        }
    }
    let _interrupt = crate::interrupt::OnInterrupt::install(if out.json {
        format!(
            "{}\n",
            serde_json::json!({"error": format!("upload interrupted; {RESUME_HINT}"), "status": 0})
        )
    } else {
        format!(
            "{}upload interrupted: {RESUME_HINT}\n",
            if mode == Mode::Bar { "\n" } else { "" }
        )
    });
    let progress = Rc::new(RefCell::new(Progress::new(mode, len)));
    let started = Instant::now();
    let (mut attempt, mut restarted) = (0, false);
    let result = loop {
        attempt += 1;
        progress.borrow_mut().restart_at(offset);
        let body = Box::new(Counting {
            inner: source.reader_at(offset)?,
            progress: progress.clone(),
        });
        let outcome = c.put_once(
            &path,
            "application/x-tar",
            &[("Content-Range", content_range(offset, len))],
            len - offset,
            timeout_for(len - offset),
            body,
        );
        progress.borrow().finish_line();
        let (from, why) = match next(outcome, attempt, offset, len, restarted) {
            Next::Done(v) => break Ok(v),
            Next::Fail(e) => break Err(e),
            Next::From(o, why) => {
                restarted |= o == 0 && offset > 0;
                (o, why)
            }
            Next::Ask(why) => {
                std::thread::sleep(Duration::from_millis(500 * attempt as u64));
                match c.head(&path, HEAD_HEADERS) {
                    Ok((s, _)) if (200..300).contains(&s) => {
                        break Ok(Value::Null);
                    }
                    Ok((_, values)) => (Server::from_headers(&values).resume_from(len), why),
                    Err(e) => break Err(e),
                }
            }
        };
        if !out.json {
            if from > 0 {
                eprintln!(
                    "upload interrupted ({why}); resuming at {} of {}",
                    size(from),
                    size(len)
                );
            } else {
                eprintln!("upload interrupted ({why}); sending it again from the start");
            }
        }
        offset = from;
    };
    let v = result.map_err(|mut e| {
        e.message = match e.status {
            413 => format!("{what}) is larger than the server accepts: {}", e.message),
            404 | 405 => format!(
                "uploading the image failed: {} (does this control plane accept image uploads? \
                 otherwise push the image to a registry and deploy that reference)",
                e.message
            ),
            _ if e.exit == exit::SERVER => {
                format!("uploading the image failed: {}; {RESUME_HINT}", e.message)
            }
            _ => format!("uploading the image failed: {}", e.message),
        };
        e
    })?;
    if !out.json {
        eprintln!(
            "Uploaded {digest} ({}) in {} s.",
            size(len),
            started.elapsed().as_secs()
        );
    }
    Ok(v["image_ref"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .unwrap_or(fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_and_layouts_are_uploaded() {
        assert_eq!(
            local("oci-archive:/tmp/a.tar"),
            Some(Local::Archive("/tmp/a.tar"))
        );
        assert_eq!(local("archive:a.tar"), Some(Local::Archive("a.tar")));
        assert_eq!(
            local("oci:/tmp/layout:v1"),
            Some(Local::Layout {
                dir: "/tmp/layout",
                tag: Some("v1")
            })
        );
        assert_eq!(
            local("oci:layout"),
            Some(Local::Layout {
                dir: "layout",
                tag: None
            })
        );
        assert_eq!(local("reg.example/app:1"), None);
        assert_eq!(local("upload:sha256:00"), None);
        assert_eq!(local("docker-archive:/x.tar"), None);
    }

    #[test]
    fn upload_decision_from_head() {
        assert!(!needs_upload(200).unwrap());
        assert!(!needs_upload(204).unwrap());
        assert!(needs_upload(404).unwrap());
        assert_eq!(
            needs_upload(401).unwrap_err().exit,
            crate::error::exit::AUTH
        );
        let e = needs_upload(403).unwrap_err();
        assert!(e.message.contains("deployer"), "{}", e.message);
        assert_eq!(
            needs_upload(500).unwrap_err().exit,
            crate::error::exit::SERVER
        );
    }

    #[test]
    fn timeouts_grow_with_size() {
        assert_eq!(timeout_for(0), Duration::from_secs(60));
        assert_eq!(timeout_for(1), Duration::from_secs(61));
        assert_eq!(timeout_for(287 * MIB), Duration::from_secs(347));
    }

    #[test]
    fn progress_formatting() {
        let s = Duration::from_secs(1);
        assert_eq!(
            bar(120 * MIB, 287 * MIB, 120 * MIB, s * 4),
            "[########            ] 41% 120/287 MiB 30 MiB/s"
        );
        assert_eq!(
            bar(0, 287 * MIB, 0, Duration::ZERO),
            format!("[{}] 0% 0/287 MiB", " ".repeat(20))
        );
        assert_eq!(
            bar(287 * MIB, 287 * MIB, 287 * MIB, s * 8),
            format!("[{}] 100% 287/287 MiB 36 MiB/s", "#".repeat(20))
        );
        assert_eq!(
            stats(3 * GIB / 2, 3 * GIB, 3 * GIB / 2, s * 10),
            "50% 1.5/3.0 GiB 154 MiB/s"
        );
        assert_eq!(
            stats(512 * 1024, 700 * 1024, 512 * 1024, s),
            "73% 512/700 KiB 512 KiB/s"
        );
        assert_eq!(stats(0, 0, 0, Duration::ZERO), "100% 0/0 KiB");
        // Resumed at 100 MiB: the rate is of what this attempt sent.
        assert_eq!(
            stats(150 * MIB, 200 * MIB, 50 * MIB, s * 5),
            "75% 150/200 MiB 10 MiB/s"
        );
        assert_eq!(size(287 * MIB + 5), "287 MiB");
        assert_eq!(size(5 * GIB / 2), "2.5 GiB");
        assert_eq!(size(1000), "1 KiB");
    }

    #[test]
    fn plain_lines_every_ten_percent() {
        let t0 = Instant::now();
        let mut p = Progress::new(Mode::Lines, 1000);
        p.start = t0;
        let mut lines = Vec::new();
        for i in 1..=40 {
            if let Some(l) = p.advance(25, t0 + Duration::from_secs(i)) {
                lines.push(l);
            }
        }
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert_eq!(lines[0], "uploaded 10% 0/1 KiB 0 KiB/s");
        assert!(lines[9].starts_with("uploaded 100% "), "{lines:?}");
        // A big jump prints one line, not one per step passed.
        let mut p = Progress::new(Mode::Lines, 100);
        assert!(p.advance(55, t0).is_some());
        assert!(p.advance(4, t0).is_none());
        assert!(p.advance(1, t0).is_some());
        // Off prints nothing; the bar is rate-limited but always drawn at the end.
        let mut p = Progress::new(Mode::Off, 10);
        assert!(p.advance(10, t0).is_none());
        let mut p = Progress::new(Mode::Bar, 100);
        assert!(p.advance(1, t0).is_some());
        assert!(p.advance(1, t0 + Duration::from_millis(10)).is_none());
        assert!(p.advance(1, t0 + Duration::from_millis(200)).is_some());
        assert!(p.advance(97, t0 + Duration::from_millis(210)).is_some());
        p.restart_at(0);
        assert_eq!(p.done, 0);
        // Resumed at 42%: progress starts there, the next line at 50%.
        let mut p = Progress::new(Mode::Lines, 100);
        p.restart_at(42);
        assert!(p.advance(7, t0).is_none());
        assert_eq!(p.advance(1, t0).unwrap(), "uploaded 50% 0/1 KiB");
    }

    #[test]
    fn where_to_resume() {
        let v = |o: &str, l: &str| vec![Some(o.to_owned()), Some(l.to_owned()), None];
        let s = Server::from_headers(&v("300", "1000"));
        assert_eq!(
            s,
            Server {
                offset: Some(300),
                length: Some(1000),
                limit: None
            }
        );
        assert_eq!(s.resume_from(1000), 300);
        assert_eq!(s.resume_from(999), 0, "another archive: from the start");
        assert_eq!(
            Server::from_headers(&v("1000", "1000")).resume_from(1000),
            0
        );
        assert_eq!(Server::from_headers(&[None, None, None]).resume_from(10), 0);
        assert_eq!(Server::from_headers(&v("x", "1000")).resume_from(1000), 0);
        assert_eq!(
            Server::from_headers(&[None, None, Some("1048576".into())]).limit,
            Some(1 << 20)
        );
        assert_eq!(content_range(0, 10), "bytes 0-9/10");
        assert_eq!(content_range(4, 10), "bytes 4-9/10");
    }

    #[test]
    fn steps_after_an_attempt() {
        let answer = |status: u16, o: Option<u64>| PutOutcome::Answer {
            status,
            upload_offset: o,
            body: serde_json::json!({"error": "why", "code": "x"}),
        };
        let failed = |timeout| PutOutcome::Failed {
            timeout,
            message: "connection reset".into(),
        };
        assert!(matches!(
            next(answer(201, None), 1, 0, 10, false),
            Next::Done(_)
        ));
        assert!(matches!(
            next(answer(200, None), 3, 5, 10, false),
            Next::Done(_)
        ));
        assert!(matches!(
            next(answer(202, Some(6)), 1, 0, 10, false),
            Next::From(6, _)
        ));
        assert!(matches!(
            next(answer(409, Some(6)), 1, 3, 10, false),
            Next::From(6, _)
        ));
        assert!(matches!(
            next(answer(409, Some(10)), 1, 3, 10, false),
            Next::From(0, _)
        ));
        assert!(matches!(
            next(answer(409, Some(6)), 3, 3, 10, false),
            Next::Fail(_)
        ));
        // A resumed upload refused once complete: once more from the start, then give up.
        assert!(matches!(
            next(answer(400, None), 1, 4, 10, false),
            Next::From(0, _)
        ));
        let Next::Fail(e) = next(answer(400, None), 2, 4, 10, true) else {
            panic!()
        };
        assert_eq!((e.exit, e.message.as_str()), (exit::FAILURE, "why"));
        assert!(matches!(
            next(answer(400, None), 1, 0, 10, false),
            Next::Fail(_)
        ));
        // Broken connections and gateways: ask the server where it is, up to three attempts.
        assert!(matches!(next(failed(false), 1, 0, 10, false), Next::Ask(_)));
        assert!(matches!(
            next(answer(503, None), 2, 0, 10, false),
            Next::Ask(_)
        ));
        let Next::Fail(e) = next(failed(false), 3, 0, 10, false) else {
            panic!()
        };
        assert_eq!(e.exit, exit::SERVER);
        assert!(matches!(next(failed(true), 1, 0, 10, false), Next::Fail(_)));
        let Next::Fail(e) = next(answer(413, None), 1, 0, 10, false) else {
            panic!()
        };
        assert_eq!(e.status, 413);
    }
}
