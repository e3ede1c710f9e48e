//! The VMM memory cap on this host's real cgroup hierarchy (v2, or v1 as on the development
//! machines): a process put in a VM's cgroup is charged there, is killed by the kernel's OOM
//! killer when it goes past the hard limit, and the cgroup is removed afterwards.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use scalebox_agent::cgroup::{self, Layout};

const ROOT: &str = "/sys/fs/cgroup";

/// A process that, once sent a line, touches `mb` MiB in 8 MiB steps, says so, then waits.
fn hog(mb: u64) -> std::process::Child {
    Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sys, time\nsys.stdin.readline()\nchunks = []\nfor _ in range({}):\n    chunks.append(b'x' * (8 << 20))\nprint('filled', flush=True)\ntime.sleep(30)",
                mb / 8
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn go(c: &mut std::process::Child) {
    use std::io::Write;
    c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
}

#[test]
fn a_process_over_its_vm_memory_cap_is_oom_killed() {
    let root = Path::new(ROOT);
    assert_ne!(
        cgroup::detect(root),
        Layout::None,
        "this host mounts a cgroup memory controller"
    );
    let key = format!("captest-{}", std::process::id());
    // Each process waits for a line on stdin, so it is in the cgroup before it allocates.
    let mut child = hog(256);
    let limit = 96u64 << 20;
    assert!(cgroup::apply(root, &key, child.id(), limit, 2).unwrap());
    assert_eq!(cgroup::memory_limit(root, &key), Some(limit));
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(
        membership.contains(&format!("/scalebox/{key}")),
        "the process is in the VM's cgroup: {membership}"
    );
    // 256 MiB against a 96 MiB cap: the kernel kills it.
    go(&mut child);
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the process was not killed at its memory cap")
    });
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

    // Under the cap the same kind of process lives, and its memory is charged to the cgroup.
    let key2 = format!("{key}-ok");
    let mut ok = hog(48);
    assert!(cgroup::apply(root, &key2, ok.id(), limit, 1).unwrap());
    go(&mut ok);
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(ok.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "filled");
    let charged = cgroup::memory_current(root, &key2).unwrap();
    assert!(
        charged > 40 << 20 && charged <= limit,
        "charged {charged} bytes"
    );
    let _ = ok.kill();
    let _ = ok.wait();
    for k in [&key, &key2] {
        // The cgroup empties once its process is reaped; removal may need a moment.
        for _ in 0..50 {
            cgroup::remove(root, k);
            if cgroup::memory_limit(root, k).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(cgroup::memory_limit(root, k), None, "cgroup {k} removed");
    }
}
