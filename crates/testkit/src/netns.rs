//! A network namespace private to the calling thread, for tests that change per-namespace
//! network settings (`/proc/sys/net/...`, loopback MTU) without touching the host's.

use std::process::Command;

/// Moves the calling thread into a fresh network namespace with loopback up. The namespace
/// goes away with the thread; threads and processes the thread starts afterwards (a tokio
/// runtime, openssl, curl) share it, and `/proc/sys/net` opened from it is the namespace's.
/// Needs root; the error says what failed.
pub fn enter_private() -> Result<(), String> {
    // SAFETY: unshare(2) moves only the calling thread into a new network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "needs root for a private network namespace: unshare: {}",
            std::io::Error::last_os_error()
        ));
    }
    ip(&["link", "set", "lo", "up"])
}

/// Runs `ip ARGS` (iproute2) in the calling thread's namespace.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| format!("ip (apt-get install -y iproute2): {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("ip {} failed: {st}", args.join(" ")))
    }
}
