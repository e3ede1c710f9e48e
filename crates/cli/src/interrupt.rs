//! Ctrl-C during a long operation: while an [`OnInterrupt`] guard lives, SIGINT prints the
//! guard's message (what happened to the operation, how to resume or follow it) and exits 130
//! at once. Used by image uploads and by the commands that follow a deployment.

use std::sync::atomic::{AtomicPtr, Ordering};

/// The message of the innermost live guard (a leaked, never freed buffer), or null.
static MESSAGE: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn interrupted(_: libc::c_int) {
    let m = MESSAGE.load(Ordering::SeqCst);
    if !m.is_null() {
        // SAFETY: `m` points to a leaked Vec that is never freed or mutated; write(2) is
        // async-signal-safe.
        let m = unsafe { &*m };
        unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
    }
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(130) };
}

/// Restores the previous SIGINT disposition and message when dropped.
pub struct OnInterrupt {
    previous: libc::sighandler_t,
    previous_message: *mut Vec<u8>,
}

impl OnInterrupt {
    /// Until the guard drops, Ctrl-C prints `message` on stderr and exits 130.
    pub fn install(message: String) -> OnInterrupt {
        // Leaked on purpose: the handler may read it at any time, even after the guard is gone.
        let m = Box::into_raw(Box::new(message.into_bytes()));
        let previous_message = MESSAGE.swap(m, Ordering::SeqCst);
        let handler = interrupted as extern "C" fn(libc::c_int);
        // SAFETY: installing a handler that only calls async-signal-safe functions.
        let previous = unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
        OnInterrupt {
            previous,
            previous_message,
        }
    }
}

impl Drop for OnInterrupt {
    fn drop(&mut self) {
        // SAFETY: restoring the handler that was there before.
        unsafe { libc::signal(libc::SIGINT, self.previous) };
        MESSAGE.store(self.previous_message, Ordering::SeqCst);
    }
}
