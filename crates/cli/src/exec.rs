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
    let body = json!({
        "process": a.process,
        "instance": a.instance,
        "argv": a.argv,
        "timeout_s": a.timeout,
    });
    let r = ctx
        .client()?
        .mutate("POST", &format!("{}/exec", ctx.env_path()?), Some(&body))?;
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
