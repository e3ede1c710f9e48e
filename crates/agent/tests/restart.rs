//! Restart safety with a real agent subprocess: `kill -9` the agent, start it again, and check
//! it re-adopted the running workload (same pid, no duplicate), kept its logs, and removed the
//! orphans it does not track (a VMM process, a rootfs clone). Also: a corrupt state file.

mod common;

use std::process::Command;

use common::*;

/// Starts a process that looks like one of the agent's VMs but that no instance tracks.
fn plant_orphan_process(data_dir: &std::path::Path, key: &str) -> u32 {
    let marker = std::fs::canonicalize(data_dir).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("sleep 600")
        .arg("scalebox-procvm")
        .arg(&marker)
        .arg(key)
        .arg("/nonexistent/status")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    // Reap it in the background once killed so it does not linger as a zombie.
    std::thread::spawn(move || {
        let mut c = child;
        let _ = c.wait();
    });
    pid
}

use std::os::unix::process::CommandExt;

#[test]
fn kill_9_restart_readopts_without_duplicates_and_removes_orphans() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(d.path());
    let img = image_file(d.path());
    let cmd = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    let (s, v) = api(
        &agent.addr,
        "PUT",
        "/v1/instances/svc",
        Some(&spec(1, &img, cmd, "")),
    );
    assert_eq!(s, 201, "{v}");
    let rec = wait_state(&agent.addr, "svc", "ready", 30);
    let pid = rec["vm"]["pid"].as_u64().unwrap() as u32;
    wait_for(30, "some log lines", || {
        let (_, b) = curl(
            &agent.addr,
            "GET",
            "/v1/instances/svc/logs",
            None,
            Some(TOKEN),
        );
        b.contains("tick 3").then_some(())
    });

    agent.kill9();
    // While the agent is down: plant orphans.
    let orphan_pid = plant_orphan_process(d.path(), "ghost-g7");
    let orphan_file = d.path().join("rootfs/ghost-g7.img");
    std::fs::write(&orphan_file, b"untracked").unwrap();
    assert!(pid_alive(pid), "workload died with the agent");

    let agent2 = Agent::start(d.path());
    let a = &agent2.addr;
    let rec = wait_state(a, "svc", "ready", 30);
    assert_eq!(
        rec["vm"]["pid"].as_u64().unwrap() as u32,
        pid,
        "not re-adopted: {rec}"
    );
    assert_eq!(vm_pids(d.path(), "svc-g1"), [pid], "duplicate VM booted");
    wait_for(10, "orphan process killed", || {
        (!pid_alive(orphan_pid)).then_some(())
    });
    assert!(!orphan_file.exists(), "orphan rootfs not removed");
    assert!(
        d.path().join("rootfs/svc-g1.img").exists(),
        "tracked rootfs removed"
    );
    let log = agent2.log_text();
    assert!(log.contains("[reconcile] re-adopted running VM"), "{log}");
    assert!(
        log.contains(&format!(
            "[reconcile] killed orphan VMM process pid {orphan_pid}"
        )),
        "{log}"
    );
    assert!(log.contains("[reconcile] removed orphan rootfs"), "{log}");

    // Logs from before the crash are still there and new ones keep coming.
    let (_, b) = curl(a, "GET", "/v1/instances/svc/logs", None, Some(TOKEN));
    assert!(b.contains("\"tick 1\""), "{b}");
    let n_before = b.lines().count();
    wait_for(30, "new log lines after re-adoption", || {
        let (_, b) = curl(a, "GET", "/v1/instances/svc/logs", None, Some(TOKEN));
        (b.lines().count() > n_before + 3).then_some(())
    });
    // No line is lost or doubled across the restart.
    let (_, b) = curl(a, "GET", "/v1/instances/svc/logs", None, Some(TOKEN));
    let ticks: Vec<u64> = b
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["line"].as_str()?.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or duplicate in {ticks:?}"
    );

    // The re-adopted instance can still be stopped with SIGTERM.
    api(a, "POST", "/v1/instances/svc/stop", None);
    let rec = wait_state(a, "svc", "exited", 30);
    assert_eq!(rec["exit"]["signal"], 15, "{rec}");
    assert!(!pid_alive(pid));
}

#[test]
fn workload_that_exits_while_agent_is_down_is_marked() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(d.path());
    let img = image_file(d.path());
    let ready_file = d.path().join("go");
    let cmd = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; exit 4",
        ready_file.display()
    );
    api(
        &agent.addr,
        "PUT",
        "/v1/instances/short",
        Some(&spec(1, &img, &cmd, "")),
    );
    let rec = wait_state(&agent.addr, "short", "ready", 30);
    let pid = rec["vm"]["pid"].as_u64().unwrap() as u32;
    agent.kill9();
    std::fs::write(&ready_file, b"").unwrap();
    wait_for(10, "workload exit", || (!pid_alive(pid)).then_some(()));
    let agent2 = Agent::start(d.path());
    let rec = wait_state(&agent2.addr, "short", "failed", 30);
    assert_eq!(rec["exit"]["code"], 4, "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("while the agent was down"),
        "{rec}"
    );
    assert!(vm_pids(d.path(), "short-g1").is_empty());
}

#[test]
fn corrupt_state_is_moved_aside_and_untracked_vms_are_cleaned() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(d.path());
    let img = image_file(d.path());
    api(
        &agent.addr,
        "PUT",
        "/v1/instances/lost",
        Some(&spec(1, &img, "while :; do sleep 0.2; done", "")),
    );
    let rec = wait_state(&agent.addr, "lost", "ready", 30);
    let pid = rec["vm"]["pid"].as_u64().unwrap() as u32;
    agent.terminate();
    assert!(
        pid_alive(pid),
        "a graceful agent stop must leave workloads running"
    );
    std::fs::write(
        d.path().join("state.json"),
        b"{\"version\":1,\"instances\":[{\"id\":",
    )
    .unwrap();

    let agent2 = Agent::start(d.path());
    let (s, v) = api(&agent2.addr, "GET", "/v1/instances", None);
    assert_eq!(s, 200);
    assert_eq!(v["instances"].as_array().unwrap().len(), 0, "{v}");
    let aside: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "corrupt state not moved aside");
    wait_for(10, "untracked workload killed", || {
        (!pid_alive(pid)).then_some(())
    });
    let log = agent2.log_text();
    assert!(log.contains("[reconcile] state file was corrupt"), "{log}");
    assert!(
        log.contains("[reconcile] killed orphan VMM process"),
        "{log}"
    );
    assert!(!d.path().join("rootfs/lost-g1.img").exists());
}
