//! `sb logs` (instance output streamed through the control plane) and `sb exec` (a command run
//! inside an instance; sb exits with the command's exit code).

use serde_json::{Value, json};

use crate::account::Ctx;
use crate::args::{ExecArgs, LogsArgs};
use crate::error::{CliError, Result};
use crate::output::{self, Out};

/// One log record as a human line: `<instance> <stream> <text>`.
pub fn format_line(v: &Value) -> Option<String> {
    if let Some(e) = v["error"].as_str() {
        return Some(format!(
            "[{}] cannot read logs: {e}",
            v["instance"].as_str().unwrap_or("?")
        ));
    }
    if let Some(n) = v["dropped_bytes"].as_u64() {
        return Some(format!(
            "[{}] ... {n} bytes of older output were dropped",
            v["instance"].as_str().unwrap_or("?")
        ));
    }
    let line = v["line"].as_str()?;
    let mark = if v["stream"] == "stderr" { "!" } else { " " };
    Some(format!(
        "{} {}{mark} {line}",
        v["ts"].as_str().unwrap_or(""),
        v["instance"].as_str().unwrap_or("?")
    ))
}

pub fn logs(ctx: &Ctx, a: LogsArgs, out: Out) -> Result<()> {
    let mut q = vec![
        format!("follow={}", a.follow),
        format!("tail_bytes={}", a.tail_kib.saturating_mul(1024)),
    ];
    if let Some(p) = &a.process {
        q.push(format!("process={p}"));
    }
    if let Some(i) = &a.instance {
        q.push(format!("instance={i}"));
    }
    let path = format!("{}/logs?{}", ctx.env_path()?, q.join("&"));
    ctx.client()?.stream_lines(&path, |l| {
        if out.json {
            println!("{l}");
        } else if let Ok(v) = serde_json::from_str::<Value>(l)
            && let Some(s) = format_line(&v)
        {
            println!("{s}");
        }
    })
}

/// The exit code sb uses for a command's outcome (shell conventions: 128+N for signal N,
/// 124 for a timeout).
pub fn exit_code_of(r: &Value) -> i32 {
    if r["timed_out"] == true {
        return 124;
    }
    if let Some(c) = r["exit_code"].as_i64() {
        return c as i32;
    }
    if let Some(s) = r["signal"].as_i64() {
        return 128 + s as i32;
    }
    1
}

pub fn exec(ctx: &Ctx, a: ExecArgs, out: Out) -> Result<()> {
    if a.tty {
        return exec_tty(ctx, a);
    }
    let body = json!({
        "process": a.process,
        "instance": a.instance,
        "argv": a.argv,
        "timeout_s": a.timeout,
    });
    // Sent once: the server does not deduplicate exec, so a retry would run the command again.
    // The request may take as long as the command may run, plus a margin.
    let r = ctx.client()?.mutate_once_within(
        "POST",
        &format!("{}/exec", ctx.env_path()?),
        Some(&body),
        std::time::Duration::from_secs(a.timeout.saturating_add(60)),
    )?;
    if out.json {
        output::json(&r);
    } else {
        use std::io::Write;
        let _ = std::io::stdout().write_all(r["stdout"].as_str().unwrap_or("").as_bytes());
        let _ = std::io::stderr().write_all(r["stderr"].as_str().unwrap_or("").as_bytes());
        if r["truncated"] == true {
            eprintln!("sb: output beyond 1 MiB per stream was dropped");
        }
    }
    if let Some(e) = r["error"].as_str() {
        return Err(CliError::failure(format!(
            "the command did not run in {}: {e}",
            r["instance"].as_str().unwrap_or("the instance")
        )));
    }
    if r["timed_out"] == true {
        return Err(CliError::new(
            124,
            format!(
                "the command did not finish within {} s (it may still be running in {})",
                a.timeout,
                r["instance"].as_str().unwrap_or("the instance")
            ),
        ));
    }
    match exit_code_of(&r) {
        0 => Ok(()),
        code => {
            // The command's own exit code, without an extra message.
            std::process::exit(code)
        }
    }
}

/// Restores the terminal's settings when dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring the settings read at entry.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// The terminal's size (rows, cols), 24×80 when stdout is not a terminal.
fn window_size() -> (u16, u16) {
    // SAFETY: TIOCGWINSZ into a winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            (ws.ws_row, ws.ws_col)
        } else {
            (24, 80)
        }
    }
}

/// `sb exec -t`: an interactive session over the control plane's upgrade endpoint.
pub fn exec_tty(ctx: &Ctx, a: ExecArgs) -> Result<()> {
    use scalebox_types::exec_frames::{Decoder, Frame, PROTOCOL, Start, encode};
    use std::io::{Read, Write};
    let c = ctx.client()?;
    let hostport = c
        .base()
        .strip_prefix("http://")
        .map(|h| h.trim_end_matches('/').to_owned())
        .ok_or_else(|| {
            CliError::usage(
                "sb exec -t talks plain http to the API for now; use an http:// URL or run without -t",
            )
        })?;
    let mut q = vec![format!("process={}", a.process)];
    if let Some(i) = &a.instance {
        q.push(format!("instance={i}"));
    }
    let path = format!("{}/attach?{}", ctx.env_path()?, q.join("&"));
    let unreachable = |e: std::io::Error| {
        CliError::new(
            crate::error::exit::SERVER,
            format!("cannot reach the Scalebox API at {hostport}: {e}"),
        )
    };
    let mut s = std::net::TcpStream::connect(&hostport).map_err(unreachable)?;
    let auth = c
        .token()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Connection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).map_err(unreachable)? == 0 || head.len() > 64 * 1024 {
            return Err(CliError::new(
                crate::error::exit::SERVER,
                "the API closed the connection during the exec upgrade",
            ));
        }
        head.push(b[0]);
    }
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        // An error answer: its JSON body says why.
        let mut body = Vec::new();
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = s.read_to_end(&mut body);
        let text = String::from_utf8_lossy(&body);
        let json = text
            .find('{')
            .and_then(|i| {
                serde_json::from_str::<Value>(text[i..].trim_end_matches(|c: char| c != '}')).ok()
            })
            .unwrap_or(Value::Null);
        let msg = json["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(CliError::http(
            status,
            msg,
            json["code"].as_str().map(str::to_owned),
        ));
    }
    let (rows, cols) = window_size();
    let writer = std::sync::Arc::new(std::sync::Mutex::new(s.try_clone().map_err(unreachable)?));
    let send = {
        let w = writer.clone();
        move |f: Frame| -> bool {
            w.lock()
                .map(|mut w| w.write_all(&encode(&f)).is_ok())
                .unwrap_or(false)
        }
    };
    send(Frame::Start(Start {
        argv: a.argv.clone(),
        rows,
        cols,
    }));
    let raw = RawMode::enter();
    {
        let send = send.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || !send(Frame::Stdin(buf[..n].to_vec())) {
                    return;
                }
            }
        });
    }
    {
        let send = send.clone();
        std::thread::spawn(move || {
            let mut last = (rows, cols);
            loop {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let now = window_size();
                if now != last {
                    last = now;
                    if !send(Frame::Resize {
                        rows: now.0,
                        cols: now.1,
                    }) {
                        return;
                    }
                }
            }
        });
    }
    let mut dec = Decoder::default();
    let mut buf = [0u8; 16 * 1024];
    let mut out = std::io::stdout();
    let exit = loop {
        match dec.next_frame() {
            Ok(Some(Frame::Output(d))) => {
                let _ = out.write_all(&d);
                let _ = out.flush();
                continue;
            }
            Ok(Some(Frame::Exit(e))) => break Ok(e),
            Ok(Some(_)) => continue,
            Err(e) => break Err(e),
            Ok(None) => {}
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break Err("the session ended without an exit status".into()),
            Ok(n) => dec.push(&buf[..n]),
        }
    };
    drop(raw);
    let e = exit.map_err(|m| CliError::new(crate::error::exit::SERVER, m))?;
    if let Some(err) = e.error {
        return Err(CliError::failure(format!("the command did not run: {err}")));
    }
    let code = exit_code_of(&json!({"exit_code": e.code, "signal": e.signal}));
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(exit_code_of(&json!({"exit_code": 3})), 3);
        assert_eq!(exit_code_of(&json!({"signal": 9})), 137);
        assert_eq!(exit_code_of(&json!({"timed_out": true})), 124);
        assert_eq!(exit_code_of(&json!({})), 1);
    }

    #[test]
    fn log_lines_are_readable() {
        let v = json!({"instance": "web-1", "stream": "stderr", "line": "boom", "ts": "T"});
        assert_eq!(format_line(&v).unwrap(), "T web-1! boom");
        let v = json!({"instance": "web-1", "error": "unreachable"});
        assert!(format_line(&v).unwrap().contains("cannot read logs"));
        assert!(format_line(&json!({"other": 1})).is_none());
    }
}
