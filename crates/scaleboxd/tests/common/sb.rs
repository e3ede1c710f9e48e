//! Running the real `sb` in these tests: where it is, and checking its outcome.

use std::path::{Path, PathBuf};
use std::process::Output;

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
