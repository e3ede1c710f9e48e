//! The agent's top-level error type (start-up and serving failures).

use std::path::PathBuf;

/// Why the agent could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("overlay: {0}")]
    Overlay(String),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: {source} (set `listen` in the agent config to a free address)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("backend setup: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("serving the API: {0}")]
    Serve(std::io::Error),
}
