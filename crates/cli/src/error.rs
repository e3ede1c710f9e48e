//! CLI errors and the documented exit codes.

use std::fmt;

/// Exit codes (documented in `docs/cli.md`; stable for scripts).
pub mod exit {
    pub const OK: i32 = 0;
    /// The request was refused as invalid (bad input, bad manifest).
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    /// Already exists, stale version, hostname taken...
    pub const CONFLICT: i32 = 4;
    /// Missing, invalid or insufficient credentials (401/403).
    pub const AUTH: i32 = 5;
    /// The server failed (5xx) or could not be reached.
    pub const SERVER: i32 = 6;
    /// A deployment failed, was superseded, or did not finish before `--timeout`.
    pub const DEPLOY: i32 = 7;
}

/// A failed command: a message for humans, the HTTP status when there was one, the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    /// HTTP status, 0 when the server could not be reached or no request was made.
    pub status: u16,
    pub code: Option<String>,
    pub exit: i32,
}

impl CliError {
    pub fn new(exit: i32, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            status: 0,
            code: None,
            exit,
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(exit::FAILURE, message)
    }
    /// From an API error response.
    pub fn http(status: u16, message: String, code: Option<String>) -> Self {
        let exit = match status {
            401 | 403 => exit::AUTH,
            404 => exit::NOT_FOUND,
            409 | 422 => exit::CONFLICT,
            500.. => exit::SERVER,
            _ => exit::FAILURE,
        };
        CliError {
            message,
            status,
            code,
            exit,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, CliError>;
