//! Health flipping (ready → running when a real HTTP server goes away) and the log ring's size
//! cap seen through the API, with the dev process backend.

mod common;

use common::*;

#[test]
fn ready_instance_goes_back_to_running_when_health_fails() {
    require("curl", "curl");
    require("python3", "python3");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path());
    let a = &agent.addr;
    let port = free_port();
    let flag = d.path().join("break-it");
    let cmd = format!(
        "python3 -m http.server {port} --bind 127.0.0.1 & s=$!; while [ ! -e {f} ]; do sleep 0.1; done; kill $s; echo server gone; while :; do sleep 0.2; done",
        f = flag.display()
    );
    let extra = format!(
        r#","health":{{"kind":"http","port":{port},"path":"/","interval_s":1,"timeout_s":1,"unhealthy_threshold":2}}"#
    );
    let (s, v) = api(
        a,
        "PUT",
        "/v1/instances/flip",
        Some(&spec(1, &image_file(d.path()), &cmd, &extra)),
    );
    assert_eq!(s, 201, "{v}");
    wait_state(a, "flip", "ready", 60);
    std::fs::write(&flag, b"").unwrap();
    let rec = wait_state(a, "flip", "running", 60);
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .starts_with("health check failing: connect"),
        "{rec}"
    );
    assert_eq!(rec["health"]["passing"], false, "{rec}");
    let states: Vec<&str> = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states[states.len() - 2..], ["ready", "running"]);
}

#[test]
fn log_ring_is_capped_and_reports_dropped_lines() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path()); // log_max_bytes = 65536, log_segment_bytes = 4096
    let a = &agent.addr;
    let cmd = "i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding-padding-padding; i=$((i+1)); done; echo last-line; exec sleep 600";
    api(
        a,
        "PUT",
        "/v1/instances/chatty",
        Some(&spec(1, &image_file(d.path()), cmd, "")),
    );
    wait_for(60, "the last line", || {
        let (_, b) = curl(a, "GET", "/v1/instances/chatty/logs", None, Some(TOKEN));
        b.contains("\"last-line\"").then_some(())
    });
    let (_, b) = curl(a, "GET", "/v1/instances/chatty/logs", None, Some(TOKEN));
    let first: serde_json::Value = serde_json::from_str(b.lines().next().unwrap()).unwrap();
    assert!(first["dropped_bytes"].as_u64().unwrap() > 0, "{first}");
    assert!(!b.contains("\"line-0-padding"), "oldest line not dropped");
    let on_disk: u64 = std::fs::read_dir(d.path().join("logs/chatty"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 65536 + 4096, "{on_disk} bytes on disk");
}
