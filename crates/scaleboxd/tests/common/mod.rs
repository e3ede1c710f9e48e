//! Shared by the guest-booting end-to-end tests: a network namespace that takes every VM and
//! process left in it along when dropped, and a child process stopped on drop.

#![allow(dead_code)]

pub mod cluster;
pub mod sb;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

/// A network namespace this test created (with `lo` up); dropping it kills the QEMU processes
/// under `vms` and every process in the namespace, then deletes it.
pub struct Netns {
    pub name: String,
    pub vms: Vec<PathBuf>,
}

impl Netns {
    pub fn create(name: String, vms: Vec<PathBuf>) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ns = Netns { name, vms };
        for args in [
            vec!["netns", "add", &ns.name],
            vec!["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
        ] {
            assert!(
                Command::new("ip").args(&args).status().unwrap().success(),
                "ip {args:?}"
            );
        }
        ns
    }

    /// Runs `ip netns exec <ns> args...` and asserts success.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread that entered the namespace (its sockets live there).
    pub fn run_inside<F: FnOnce() + Send + 'static>(&self, f: F) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
            // SAFETY: setns on a valid namespace fd, for this thread only.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f();
        })
        .join()
        .map_err(|_| "the scenario failed (see the panic above)")
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for root in &self.vms {
            for (_, pid) in scalebox_vmm::qemu::list_running_in(root) {
                // SAFETY: killing a QEMU process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: processes inside the namespace this test created.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGTERM, then waits up to 30 s.
    pub fn term(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("scaleboxd did not stop within 30 s of SIGTERM");
    }

    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
