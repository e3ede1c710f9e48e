//! Errors of the VM surface: a kind that maps to an HTTP status and a message for the user.
//! Internal details (command output, paths) go to the log, not to the caller.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    NotFound,
    Forbidden,
    Conflict,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SandboxError {
    pub kind: Kind,
    pub message: String,
}

impl SandboxError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        SandboxError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    /// Logs `detail` and returns a generic internal error naming `what` failed.
    pub fn internal(what: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "{what}");
        Self::new(
            Kind::Internal,
            format!("{what} failed; the server log has details"),
        )
    }
}

impl From<scalebox_store::StoreError> for SandboxError {
    fn from(e: scalebox_store::StoreError) -> Self {
        match e {
            scalebox_store::StoreError::Conflict(m) => Self::new(Kind::Conflict, m),
            other => Self::internal("database access", other),
        }
    }
}

pub type Result<T> = std::result::Result<T, SandboxError>;
