//! Running the real `sb` in these tests: where it is, running it against one control plane,
//! and checking its outcome.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// `sb` from the same target directory as `scaleboxd` (the workspace's tests build it); missing
/// is a failure, never a reason to skip.
pub fn sb_binary() -> PathBuf {
    let sb = Path::new(env!("CARGO_BIN_EXE_scaleboxd")).with_file_name("sb");
    assert!(
        sb.exists(),
        "{} does not exist: build it first (`cargo build -p scalebox-cli`), or run `cargo test --workspace`",
        sb.display()
    );
    sb
}

/// `sb` against the control plane at `url` as `token`, for app shop and env prod, with its own
/// config directory `cfg` (also the working directory); nothing from the caller's environment
/// chooses anything else.
#[derive(Clone)]
pub struct Sb {
    pub bin: PathBuf,
    pub url: String,
    pub token: String,
    pub cfg: PathBuf,
}

impl Sb {
    /// The command, ready to run or spawn (stdin is not a terminal, nor are stdout and stderr
    /// once captured).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(&self.cfg)
            .env("SCALEBOX_CONFIG_DIR", &self.cfg)
            .env("SCALEBOX_URL", &self.url)
            .env("SCALEBOX_TOKEN", &self.token)
            .env("SCALEBOX_APP", "shop")
            .env("SCALEBOX_ENV", "prod")
            .stdin(Stdio::null());
        for v in [
            "SCALEBOX_JSON",
            "SCALEBOX_HOST",
            "SCALEBOX_ORG",
            "SCALEBOX_INSECURE",
            "SCALEBOX_REGISTRY_USER",
            "SCALEBOX_REGISTRY_PASSWORD",
            "SCALEBOX_INSECURE_REGISTRY",
        ] {
            c.env_remove(v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs with `--json` first; asserts success and returns stdout parsed as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        json(&self.run(&a))
    }

    /// The same `sb` as `token` against `url`.
    pub fn to(&self, url: &str, token: &str) -> Sb {
        Sb {
            bin: self.bin.clone(),
            url: url.to_owned(),
            token: token.to_owned(),
            cfg: self.cfg.clone(),
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success; returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Asserts success; returns stdout parsed as JSON.
pub fn json(o: &Output) -> Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Asserts the exit code; returns stderr.
pub fn fails(o: &Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

/// Asserts the exit code of a `--json` run; returns its error object from stderr
/// (`{"error", "status"[, "code"]}`).
pub fn fails_json(o: &Output, code: i32) -> Value {
    let err = fails(o, code);
    serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("not a JSON error ({e}): {err}"))
}
