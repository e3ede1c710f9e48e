//! End-to-end tests of the agent through its HTTP API with the dev process backend: a real
//! agent subprocess, real child processes, real signals, a real HTTP server for health checks.

mod common;

use common::*;

#[test]
fn lifecycle_http_health_logs_follow_and_stop() {
    require("curl", "curl");
    require("python3", "python3");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path());
    let a = &agent.addr;
    let port = free_port();
    let cmd = format!(
        "echo hello from $SCALEBOX_INSTANCE_ID; echo to-stderr >&2; echo GREETING=$GREETING; exec python3 -m http.server {port} --bind 127.0.0.1"
    );
    let extra = format!(
        r#","env":{{"GREETING":"hi there"}},"secrets":{{"API_KEY":"s3cr3t-value"}},"stop_grace_s":5,
           "health":{{"kind":"http","port":{port},"path":"/","interval_s":1,"timeout_s":1}}"#
    );
    let (s, v) = api(
        a,
        "PUT",
        "/v1/instances/web-1",
        Some(&spec(1, &image_file(d.path()), &cmd, &extra)),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["outcome"], "created");
    let rec = wait_state(a, "web-1", "ready", 60);
    assert_eq!(rec["health"]["passing"], true, "{rec}");
    let states: Vec<&str> = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["pending", "preparing", "booting", "running", "ready"]
    );
    assert!(
        !rec.to_string().contains("s3cr3t-value"),
        "secret leaked in status: {rec}"
    );
    // Secrets file: JSON, mode 0400.
    let sf = d.path().join("vms/web-1-g1/secrets.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sf).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o400);
    assert!(
        std::fs::read_to_string(&sf)
            .unwrap()
            .contains("s3cr3t-value")
    );

    // Logs: stdout and stderr lines with timestamps, env applied, health requests logged by python.
    let (s, body) = curl(a, "GET", "/v1/instances/web-1/logs", None, Some(TOKEN));
    assert_eq!(s, 200);
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = |st: &str| {
        lines
            .iter()
            .filter(|l| l["stream"] == st)
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        text("stdout").contains(&"hello from web-1".to_string()),
        "{body}"
    );
    assert!(
        text("stdout").contains(&"GREETING=hi there".to_string()),
        "{body}"
    );
    assert!(text("stderr").iter().any(|l| l == "to-stderr"), "{body}");
    assert!(lines[0]["ts"].as_str().unwrap().starts_with("20"), "{body}");
    // Resume from an offset.
    let off = lines[1]["offset"].as_u64().unwrap();
    let (_, body2) = curl(
        a,
        "GET",
        &format!("/v1/instances/web-1/logs?since={off}"),
        None,
        Some(TOKEN),
    );
    assert_eq!(body2.lines().next().unwrap(), body.lines().nth(1).unwrap());

    // Follow: a streaming reader sees new lines and ends when the instance exits.
    let follower = std::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-m",
            "60",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ])
        .arg(format!(
            "http://{a}/v1/instances/web-1/logs?follow=true&since={}",
            lines.last().unwrap()["offset"]
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let (s, m) = curl(a, "GET", "/metrics", None, Some(TOKEN));
    assert_eq!(s, 200);
    assert!(
        m.contains("scalebox_agent_instances{state=\"ready\"} 1"),
        "{m}"
    );
    assert!(m.contains("scalebox_agent_boot_seconds_count 1"), "{m}");
    assert!(
        m.contains("scalebox_agent_image_cache_total{result=\"miss\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("scalebox_agent_instance_memory_bytes{instance=\"web-1\"}"),
        "{m}"
    );

    // Stop: SIGTERM reaches python, which dies of it.
    let (s, v) = api(a, "POST", "/v1/instances/web-1/stop", None);
    assert_eq!(s, 202, "{v}");
    let rec = wait_state(a, "web-1", "exited", 30);
    assert_eq!(rec["exit"]["signal"], 15, "{rec}");
    assert!(
        rec["reason"].as_str().unwrap().starts_with("stopped"),
        "{rec}"
    );
    assert!(rec["rootfs"].is_null(), "rootfs clone not cleaned: {rec}");
    assert!(!sf.exists(), "secrets file left behind after exit");
    assert!(!d.path().join("rootfs/web-1-g1.img").exists());
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "follow stream did not end cleanly");
    let followed = String::from_utf8_lossy(&out.stdout);
    assert!(
        followed.contains("GET / HTTP/1.1"),
        "follow saw no new health-check lines: {followed}"
    );
    assert!(
        agent.log_text().contains("transition"),
        "no transition logs"
    );
}

#[test]
fn stop_grace_then_kill_and_exit_codes() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path());
    let a = &agent.addr;
    let img = image_file(d.path());
    let stubborn = "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done";
    assert_eq!(
        api(
            a,
            "PUT",
            "/v1/instances/stubborn",
            Some(&spec(1, &img, stubborn, r#","stop_grace_s":1"#))
        )
        .0,
        201
    );
    assert_eq!(
        api(
            a,
            "PUT",
            "/v1/instances/three",
            Some(&spec(1, &img, "echo bye; exit 3", ""))
        )
        .0,
        201
    );
    assert_eq!(
        api(
            a,
            "PUT",
            "/v1/instances/zero",
            Some(&spec(1, &img, "exit 0", ""))
        )
        .0,
        201
    );
    wait_state(a, "stubborn", "ready", 30);
    let three = wait_state(a, "three", "failed", 30);
    assert_eq!(three["exit"]["code"], 3, "{three}");
    assert!(
        three["reason"].as_str().unwrap().contains("exit code 3"),
        "{three}"
    );
    let zero = wait_state(a, "zero", "exited", 30);
    assert_eq!(zero["exit"]["code"], 0);
    // Image cache: one miss, then hits.
    let (_, m) = curl(a, "GET", "/metrics", None, Some(TOKEN));
    assert!(
        m.contains("scalebox_agent_image_cache_total{result=\"hit\"} 2"),
        "{m}"
    );

    let t0 = std::time::Instant::now();
    api(a, "POST", "/v1/instances/stubborn/stop", None);
    let rec = wait_state(a, "stubborn", "exited", 30);
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(900),
        "killed before the grace period"
    );
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("killed after grace period"),
        "{rec}"
    );
    assert_eq!(rec["exit"]["signal"], 9, "{rec}");
    let (_, logs) = curl(a, "GET", "/v1/instances/stubborn/logs", None, Some(TOKEN));
    assert!(
        logs.contains("got TERM"),
        "SIGTERM did not reach the workload: {logs}"
    );
    assert!(vm_pids(d.path(), "stubborn-g1").is_empty());
}

#[test]
fn ensure_is_idempotent_by_generation() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path());
    let a = &agent.addr;
    let img = image_file(d.path());
    let cmd = "while :; do sleep 0.2; done";
    let g = |n| spec(n, &img, cmd, r#","stop_grace_s":2"#);
    assert_eq!(api(a, "PUT", "/v1/instances/app", Some(&g(2))).0, 201);
    let r1 = wait_state(a, "app", "ready", 30);
    let pid1 = r1["vm"]["pid"].as_u64().unwrap() as u32;
    let (s, v) = api(a, "PUT", "/v1/instances/app", Some(&g(2)));
    assert_eq!((s, v["outcome"].as_str()), (200, Some("unchanged")), "{v}");
    assert_eq!(
        vm_pids(d.path(), "app-g2"),
        [pid1],
        "same generation must not boot again"
    );
    let (s, v) = api(a, "PUT", "/v1/instances/app", Some(&g(1)));
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "conflict");
    assert!(v["error"].as_str().unwrap().contains("older"), "{v}");
    let (s, v) = api(a, "PUT", "/v1/instances/app", Some(&g(3)));
    assert_eq!((s, v["outcome"].as_str()), (201, Some("replaced")), "{v}");
    let r3 = wait_for(30, "generation 3 ready", || {
        let (_, v) = api(a, "GET", "/v1/instances/app", None);
        (v["spec"]["generation"] == 3 && v["state"] == "ready").then_some(v)
    });
    let pid3 = r3["vm"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid1, pid3);
    assert!(!pid_alive(pid1), "old generation still running");
    assert_eq!(vm_pids(d.path(), "app-g3"), [pid3]);
    let (s, v) = api(a, "GET", "/v1/instances", None);
    assert_eq!(s, 200);
    assert_eq!(v["instances"].as_array().unwrap().len(), 1);
    // Delete stops and forgets.
    assert_eq!(api(a, "DELETE", "/v1/instances/app", None).0, 204);
    assert!(!pid_alive(pid3));
    assert_eq!(api(a, "GET", "/v1/instances/app", None).0, 404);
}

#[test]
fn failing_health_check_keeps_instance_not_ready_with_reason() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path());
    let a = &agent.addr;
    let port = free_port();
    let extra = format!(r#","health":{{"kind":"tcp","port":{port},"interval_s":1,"timeout_s":1}}"#);
    api(
        a,
        "PUT",
        "/v1/instances/sick",
        Some(&spec(
            1,
            &image_file(d.path()),
            "while :; do sleep 0.2; done",
            &extra,
        )),
    );
    let rec = wait_for(30, "a recorded health failure", || {
        let (_, v) = api(a, "GET", "/v1/instances/sick", None);
        (v["health"]["consecutive_fail"].as_u64().unwrap_or(0) >= 2).then_some(v)
    });
    assert_eq!(rec["state"], "running", "{rec}");
    assert!(
        rec["health"]["last_error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{rec}"
    );
    let (_, m) = curl(a, "GET", "/metrics", None, Some(TOKEN));
    assert!(
        !m.contains("scalebox_agent_health_check_failures_total 0\n"),
        "{m}"
    );
}

#[test]
fn api_rejects_bad_requests_with_error_body() {
    require("curl", "curl");
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::start(d.path());
    let a = &agent.addr;
    let img = image_file(d.path());
    let check = |(s, b): (u16, String), want: u16, code: &str, says: &str| {
        assert_eq!(s, want, "{b}");
        let e: scalebox_types::error::ErrorBody =
            serde_json::from_str(&b).unwrap_or_else(|_| panic!("not an ErrorBody: {b}"));
        assert_eq!(e.code, code, "{b}");
        assert!(e.error.contains(says), "{b}");
    };
    check(
        curl(a, "GET", "/v1/instances", None, None),
        401,
        "unauthorized",
        "bearer",
    );
    check(
        curl(
            a,
            "GET",
            "/v1/instances",
            None,
            Some("wrong-token-wrong-token"),
        ),
        401,
        "unauthorized",
        "bearer",
    );
    let body = spec(1, &img, "true", r#","colour":"blue""#);
    check(
        curl(a, "PUT", "/v1/instances/x", Some(&body), Some(TOKEN)),
        400,
        "invalid_body",
        "colour",
    );
    let body = spec(1, &img, "true", r#","resources":{"cpu":0}"#);
    check(
        curl(a, "PUT", "/v1/instances/x", Some(&body), Some(TOKEN)),
        422,
        "invalid_spec",
        "resources.cpu",
    );
    check(
        curl(a, "PUT", "/v1/instances/x", Some("{not json"), Some(TOKEN)),
        400,
        "invalid_body",
        "invalid instance spec",
    );
    check(
        curl(
            a,
            "PUT",
            "/v1/instances/Bad..Id",
            Some(&spec(1, &img, "true", "")),
            Some(TOKEN),
        ),
        422,
        "invalid_spec",
        "instance id",
    );
    check(
        curl(a, "GET", "/v1/instances/nope", None, Some(TOKEN)),
        404,
        "not_found",
        "nope",
    );
    check(
        curl(a, "GET", "/v1/instances/nope/logs", None, Some(TOKEN)),
        404,
        "not_found",
        "nope",
    );
    check(
        curl(a, "GET", "/v1/nowhere", None, Some(TOKEN)),
        404,
        "not_found",
        "no such route",
    );
    check(
        curl(a, "PATCH", "/v1/instances/x", None, Some(TOKEN)),
        405,
        "method_not_allowed",
        "method",
    );
    let huge = spec(1, &img, &"x".repeat(2 << 20), "");
    let f = d.path().join("huge.json");
    std::fs::write(&f, huge).unwrap();
    check(
        curl(
            a,
            "PUT",
            "/v1/instances/x",
            Some(&format!("@{}", f.display())),
            Some(TOKEN),
        ),
        413,
        "body_too_large",
        "max_body_bytes",
    );
    assert_eq!(
        api(
            a,
            "PUT",
            "/v1/instances/ok",
            Some(&spec(1, &img, "true", ""))
        )
        .0,
        201
    );
    check(
        curl(a, "GET", "/v1/instances/ok/logs?sinse=3", None, Some(TOKEN)),
        400,
        "invalid_query",
        "since",
    );
    // An image source the dev provider cannot use fails the instance with a reason.
    let body =
        r#"{"generation":1,"image":{"kind":"registry","reference":"r/x:1"},"command":"true"}"#;
    assert_eq!(api(a, "PUT", "/v1/instances/reg", Some(body)).0, 201);
    let rec = wait_state(a, "reg", "failed", 30);
    assert!(rec["reason"].as_str().unwrap().contains("archive"), "{rec}");
    let (_, m) = curl(a, "GET", "/metrics", None, Some(TOKEN));
    assert!(
        m.contains("scalebox_agent_vmm_failures_total{kind=\"rootfs\"} 1"),
        "{m}"
    );
}
