//! Errors of the VMM layer.

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Kernel(String),
    #[error("{0}")]
    Initramfs(String),
    #[error("{0}")]
    Vmm(String),
    #[error("control channel: {0}")]
    Channel(String),
}

impl VmmError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
        let what = what.into();
        move |source| VmmError::Io { what, source }
    }
}

/// A name suffix unique within this host at this moment (pid + per-process counter), for
/// temporary files that are renamed into place.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An exclusive advisory lock on `path` (created if needed), released on drop.
pub struct FileLock(std::fs::File);

impl FileLock {
    /// The locked file.
    pub fn file(&self) -> &std::fs::File {
        &self.0
    }
}

impl FileLock {
    pub fn acquire(path: &std::path::Path) -> Result<FileLock, VmmError> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(VmmError::io(format!("open lock {}", path.display())))?;
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(VmmError::io(format!("lock {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FileLock(f))
    }
}
