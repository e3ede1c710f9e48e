//! The real `sb` binary against a real control plane (`scaleboxd control` on real Postgres) for
//! the error classes earlier tests checked only against stand-ins, each as human `error: …` on
//! stderr and as the `--json` error object `{"error", "status", "code"}`:
//!
//! - The VM surface (`[vms] enabled`, no guest is booted; the control plane runs in a network
//!   namespace of its own, since opening the VM surface removes TAPs and forwarding rules it
//!   does not know): a VM, template or snapshot source that does not exist (3), bad flags (2,
//!   before any request), input the server refuses (1), a conflict (4: a template name taken, a
//!   VM that is not running), a bad token or a protected template (5), a VM runtime that is not
//!   ready (6), and `sb vm wait --timeout 1` on a VM that never runs (7; the VM is kept); and
//!   the output of `sb vm list`, `get` and `delete` (human and `--json`) for VMs recorded as
//!   the VM API records them.
//! - Server errors (6): the control plane's database dropped under it (the message says nothing
//!   of the database or its password, nor the token), and a URL nothing listens on.
//! - Deployments (7): a `--timeout` that passes (human and `--json`), a deployment superseded by
//!   a newer one while `sb deploy` follows it, and `sb rollback N` to a release whose release
//!   command fails (the reason is printed); `sb rollback` with nothing older that served (4).
//! - The API going away while `sb deploy` follows: back within the grace, sb says so and carries
//!   on; gone for good, sb exits 6 when its `--timeout` passes. Ctrl-C while following exits 130
//!   saying how to follow the deployment, which goes on.
//! - `sb volumes get` and `delete` (human, `--json`, not found).
//! - A registry tag resolved by `sb` (Debian's `docker-registry` on loopback): the release the
//!   real server stores pins the digest, and a missing tag exits 3 with no release created.
//!
//! Not here: `sb run --timeout` giving up (7) needs a VM that booted but never answers SSH, so a
//! booted guest (crates/cli/tests/vm.rs covers it against a stand-in).
//!
//! `sb` belongs to another package, so cargo does not build it for this test: it is looked up
//! next to `scaleboxd` in the target directory. `cargo test --workspace` builds both; with
//! `cargo test -p scaleboxd`, build it first (`cargo build -p scalebox-cli`).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::Netns;
use common::cluster::{Cluster, free_port};
use common::sb::{Sb, fails, fails_json, ok, sb_binary, text};
use serde_json::{Value, json};

/// A password in the control plane's database URL (the test cluster trusts local connections,
/// so it is not needed): no error `sb` prints may contain it.
const DB_PASSWORD: &str = "db-secret-5e1f0c";

/// A guest kernel that looks installed (so the VM runtime never fetches one) but has none of
/// the modules the initramfs needs: preparing the VM runtime fails, without booting anything.
fn fake_kernel(runtime: &Path) {
    let k = runtime.join("kernel");
    let v = "0.0-fake";
    std::fs::create_dir_all(k.join(v).join("boot")).unwrap();
    std::fs::create_dir_all(k.join(v).join(format!("lib/modules/{v}"))).unwrap();
    std::fs::write(k.join(v).join(format!("boot/vmlinuz-{v}")), b"").unwrap();
    std::fs::write(k.join(v).join("vmlinux"), b"").unwrap();
    std::fs::write(k.join("version"), v).unwrap();
}

/// Asserts a `--json` error object: its `status` and `code`, and that `error` says `says`.
fn error_object(e: &Value, status: u16, code: Option<&str>, says: &str) {
    assert_eq!(e["status"], status, "{e}");
    assert_eq!(e["code"].as_str(), code, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|m| m.contains(says)),
        "{says:?} in {e}"
    );
}

#[test]
fn vm_surface_and_server_errors_on_a_real_control_plane() {
    let bin = sb_binary();
    let ns = Netns::create(format!("sberr{}", std::process::id()), vec![]);
    ns.run_inside(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(vm_surface_and_server_errors(bin));
    });
}

async fn vm_surface_and_server_errors(bin: std::path::PathBuf) {
    let tdb = scalebox_testkit::test_db().await;
    let runtime = tempfile::tempdir().unwrap();
    fake_kernel(runtime.path());
    let vms = format!(
        "[vms]\nenabled = true\nruntime_dir = \"{}\"\nhost_ip = \"127.0.0.1\"\nproxy_listen = \"127.0.0.1\"\naccel = \"tcg\"\nbuild_base_template = false\n",
        runtime.path().display()
    );
    let db_url = format!("{} password={DB_PASSWORD}", tdb.url);
    let (c, control) = Cluster::start(&db_url, &vms).await;
    let sb = c.sb(bin);
    // A template (only its file matters until a VM is made from it).
    let templates = c.dir.path().join("control/sandbox/templates");
    std::fs::File::create(templates.join("tiny.ext4"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // Two VMs whose VMM is not running (as after a crash of their host), recorded as the VM API
    // records one: creating a VM through the API would boot a guest.
    let org = c.ok("GET", "/v1/orgs/default", None, 200).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tdb.db
        .client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "INSERT INTO sandbox_vms (id, org_id, name, template, ip, ssh_port, tap, vcpu_count, mem_size_mib, disk_size_gib, state, created_at)
             VALUES ('vm-0e0e0e0e0e0e', '{org}', 'ghost', 'tiny', '172.16.0.250', {}, 'sbt0e0e0e0e0e0e', 1, 256, 1, 'running', now()),
                    ('vm-0f0f0f0f0f0f', '{org}', 'ghost2', 'tiny', '172.16.0.251', {}, 'sbt0f0f0f0f0f0f', 1, 256, 1, 'running', now())",
            free_port(),
            free_port()
        ))
        .await
        .unwrap();
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || vm_commands(&sb2))
        .await
        .unwrap();

    // Server errors (6). The database goes away under the running control plane.
    let pg = tokio::task::spawn_blocking(scalebox_testkit::cluster)
        .await
        .unwrap();
    let admin = scalebox_store::Db::connect(&pg.url("postgres"), 1)
        .await
        .unwrap();
    admin
        .client()
        .await
        .unwrap()
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", tdb.name))
        .await
        .unwrap();
    let (sb2, token) = (sb.clone(), c.token.clone());
    tokio::task::spawn_blocking(move || {
        for args in [
            &["apps", "list"][..],
            &["apps", "create", "web"],
            &["vm", "list"],
            &["deploy", "--no-wait"],
        ] {
            let err = fails(&sb2.run(args), 6);
            assert_eq!(
                err.trim(),
                "error: internal error; the server log has details",
                "{args:?}"
            );
            let e = fails_json(&sb2.run(&[&["--json"][..], args].concat()), 6);
            error_object(&e, 500, Some("internal"), "internal error");
            for out in [err, e.to_string()] {
                for secret in [DB_PASSWORD, token.as_str(), "dbname", "postgres"] {
                    assert!(!out.contains(secret), "{secret:?} in {out}");
                }
            }
        }
    })
    .await
    .unwrap();
    // The control plane stops: its URL no longer answers (connection refused, after retries).
    control.term();
    let dead = sb.clone();
    let free = sb.to(&format!("http://127.0.0.1:{}", free_port()), &c.token);
    tokio::task::spawn_blocking(move || {
        for s in [dead, free] {
            let err = fails(&s.run(&["whoami"]), 6);
            assert!(
                err.starts_with(&format!(
                    "error: cannot reach the Scalebox API at {}",
                    s.url
                )),
                "{err}"
            );
            assert!(!err.contains(&s.token), "{err}");
            let e = fails_json(&s.run(&["--json", "vm", "get", "ghost"]), 6);
            error_object(&e, 0, None, "cannot reach the Scalebox API");
        }
    })
    .await
    .unwrap();
}

/// The VM commands' exit codes, on the server set up by [`vm_surface_and_server_errors`]
/// (template `tiny`, VMs `ghost` and `ghost2` not running, a VM runtime that cannot be
/// prepared).
fn vm_commands(sb: &Sb) {
    assert!(ok(&sb.run(&["template", "list"])).contains("tiny"));
    let vms = sb.json(&["vm", "list"]);
    assert_eq!(vms["vms"].as_array().map(Vec::len), Some(2), "{vms}");
    let table = ok(&sb.run(&["vm", "list"]));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "NAME", "TEMPLATE", "STATUS", "SSH", "URL", "CREATED"],
        "{table}"
    );
    for (id, name) in [("vm-0e0e0e0e0e0e", "ghost"), ("vm-0f0f0f0f0f0f", "ghost2")] {
        assert!(
            rows[1..].iter().any(|r| r[..3] == [id, name, "tiny"]),
            "{id} {name} in:\n{table}"
        );
    }

    // Not found (3): a VM by every command that names one.
    for args in [
        &["vm", "get", "nosuch"][..],
        &["vm", "delete", "nosuch"],
        &["vm", "wait", "nosuch", "--timeout", "30"],
        &["vm", "wait", "vm-0123456789ab", "--ssh"],
        &["vm", "snapshot", "nosuch", "-n", "copy"],
        &["connect", "nosuch"],
        &["connect", "nosuch", "--ssh"],
    ] {
        let err = fails(&sb.run(args), 3);
        assert_eq!(err.lines().last(), Some("error: VM not found"), "{args:?}");
        error_object(
            &fails_json(&sb.run(&[&["--json"][..], args].concat()), 3),
            404,
            Some("not_found"),
            "VM not found",
        );
    }
    // ...and a template: to create from (also by `sb run`), or to delete.
    let err = fails(&sb.run(&["vm", "create", "-t", "nosuch"]), 3);
    assert!(
        err.contains("Creating a VM from template nosuch")
            && err.contains(r#"error: template "nosuch" not found"#),
        "{err}"
    );
    let e = fails_json(
        &sb.run(&["--json", "run", "-t", "nosuch", "--timeout", "1"]),
        3,
    );
    error_object(&e, 404, Some("not_found"), r#"template "nosuch" not found"#);
    let err = fails(&sb.run(&["template", "delete", "nosuch"]), 3);
    assert!(err.contains(r#"template "nosuch" not found"#), "{err}");

    // Usage (2), before any request: with what is wrong and what is expected.
    let key_file = sb.cfg.join("mine.pub");
    std::fs::write(
        &key_file,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2zXq0dGyH7rlRtTmzNqYpDn3xYhBNQyA2PzNvyrXvC me\n",
    )
    .unwrap();
    for (args, says) in [
        (
            &["vm", "frobnicate"][..],
            "unrecognized subcommand 'frobnicate'",
        ),
        (&["vm", "get"], "required arguments were not provided"),
        (&["vm", "create"], "--template <TEMPLATE>"),
        (
            &["vm", "wait", "ghost", "--timeout", "soon"],
            "invalid value 'soon'",
        ),
        (&["vm", "snapshot", "ghost"], "--name <NAME>"),
        (
            &["vm", "snapshot", "ghost", "-n", "my tools"],
            "invalid template name \"my tools\"",
        ),
        (
            &["template", "delete", "../x"],
            "invalid template name \"../x\"",
        ),
        (
            &["vm", "create", "-t", "tiny", "-k", "not a key"],
            "not an OpenSSH public key",
        ),
        (
            &[
                "vm",
                "create",
                "-t",
                "tiny",
                "-k",
                key_file.to_str().unwrap(),
            ],
            "to read the key from that file write -k @",
        ),
        (
            &["vm", "create", "-t", "tiny", "-k", "@/nonexistent/key.pub"],
            "cannot read the key file /nonexistent/key.pub",
        ),
        (
            &[
                "run",
                "-t",
                "tiny",
                "-k",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2z",
            ],
            "also pass -i PRIVATE_KEY",
        ),
    ] {
        let err = fails(&sb.run(args), 2);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(says), "{says:?} for {args:?} in {err}");
        let e = fails_json(&sb.run(&[&["--json"][..], args].concat()), 2);
        error_object(&e, 0, None, says);
    }

    // Refused as invalid (1): values the server checks.
    let err = fails(&sb.run(&["vm", "create", "-t", "tiny", "-m", "64"]), 1);
    assert!(err.contains("mem_size_mib must be between 128"), "{err}");
    let e = fails_json(
        &sb.run(&["--json", "vm", "create", "-t", "tiny", "--name", "Bad Name"]),
        1,
    );
    assert_eq!(
        (e["status"].clone(), e["code"].clone()),
        (json!(400), json!("invalid_request"))
    );

    // Conflict (4): the new template's name is taken; the VM is not running.
    let err = fails(&sb.run(&["vm", "snapshot", "ghost", "-n", "tiny"]), 4);
    assert!(
        err.contains(r#"error: template "tiny" already exists; choose another name"#),
        "{err}"
    );
    let e = fails_json(
        &sb.run(&["--json", "vm", "snapshot", "ghost", "-n", "fresh"]),
        4,
    );
    error_object(&e, 409, Some("conflict"), "VM ghost is not running");

    // Authentication or permission (5): a bad token; a protected template.
    let bad = sb.to(&sb.url, "sbx_not_a_real_token");
    for args in [
        &["vm", "list"][..],
        &["vm", "get", "ghost"],
        &["template", "list"],
    ] {
        let err = fails(&bad.run(args), 5);
        assert!(
            err.contains("invalid or revoked token") && err.contains("sb login"),
            "{err}"
        );
        error_object(
            &fails_json(&bad.run(&[&["--json"][..], args].concat()), 5),
            401,
            Some("unauthorized"),
            "invalid or revoked token",
        );
    }
    let e = fails_json(&sb.run(&["--json", "template", "delete", "debian-base"]), 5);
    error_object(
        &e,
        403,
        Some("forbidden"),
        "protected and cannot be deleted",
    );

    // Server error (6): the VM runtime cannot be prepared (no guest kernel modules); nothing is
    // left behind.
    let err = fails(&sb.run(&["vm", "create", "-t", "tiny", "--name", "new"]), 6);
    assert!(err.contains("error: the VM runtime is not ready"), "{err}");
    let e = fails_json(
        &sb.run(&["--json", "run", "-t", "tiny", "--timeout", "1"]),
        6,
    );
    error_object(&e, 503, Some("unavailable"), "the VM runtime is not ready");
    let vms = sb.json(&["vm", "list"]);
    assert_eq!(vms["vms"].as_array().map(Vec::len), Some(2), "{vms}");

    // Waiting for a VM that never runs gives up (7); the VM is kept.
    let started = Instant::now();
    let err = fails(&sb.run(&["vm", "wait", "ghost", "--timeout", "1"]), 7);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        err.trim(),
        "error: timed out after 1s waiting for it to run on VM ghost (last: status stopped); the VM is kept: `sb vm wait ghost --timeout S` to wait longer, `sb vm delete ghost` to drop it"
    );
    let e = fails_json(
        &sb.run(&["--json", "vm", "wait", "ghost", "--ssh", "--timeout", "1"]),
        7,
    );
    error_object(&e, 0, None, "waiting for SSH to answer on VM ghost");
    let v = sb.json(&["vm", "get", "ghost"]);
    assert_eq!(
        (v["name"].as_str(), v["status"].as_str()),
        (Some("ghost"), Some("stopped"))
    );
    let shown = ok(&sb.run(&["vm", "get", "vm-0e0e0e0e0e0e"]));
    assert!(
        shown.contains("ghost") && shown.contains("stopped"),
        "{shown}"
    );

    // Deleting it works once; then it is not found.
    assert_eq!(
        ok(&sb.run(&["vm", "delete", "ghost"])).trim(),
        "Deleted VM ghost."
    );
    fails(&sb.run(&["vm", "delete", "ghost"]), 3);
    fails(&sb.run(&["vm", "get", "vm-0e0e0e0e0e0e"]), 3);
    assert_eq!(
        sb.json(&["vm", "delete", "vm-0f0f0f0f0f0f"]),
        json!({"deleted": "vm-0f0f0f0f0f0f", "status": 204})
    );
    fails(&sb.run(&["vm", "get", "ghost2"]), 3);
    assert_eq!(sb.json(&["vm", "list"])["vms"], json!([]));
    assert_eq!(
        sb.json(&["template", "delete", "tiny"]),
        json!({"deleted": "tiny", "status": 204})
    );
    fails(&sb.run(&["template", "delete", "tiny"]), 3);
}

const GOOD: &str = "schema_version = 1\n[processes.web]\ncommand = [\"sh\", \"-c\", \"sleep 3600\"]\nstop_grace_s = 1\n";

/// A release whose release command fails.
const BAD: &str = "schema_version = 1\n[release]\ncommand = [\"sh\", \"-c\", \"echo boom >&2; exit 3\"]\ntimeout_s = 60\n[processes.web]\ncommand = [\"sh\", \"-c\", \"sleep 3600\"]\nstop_grace_s = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_volume_and_registry_errors_on_a_real_control_plane() {
    let bin = sb_binary();
    let tdb = scalebox_testkit::test_db().await;
    let (c, mut control) = Cluster::start(&tdb.url, "").await;
    let sb = c.sb(bin);
    let run = |f: fn(&Sb)| {
        let sb = sb.clone();
        tokio::task::spawn_blocking(move || f(&sb))
    };

    // The VM surface is off on `scaleboxd control` by default, and says so.
    run(|sb| {
        let err = fails(&sb.run(&["vm", "list"]), 3);
        assert!(
            err.contains("VM sandboxes are not enabled on this server"),
            "{err}"
        );
        ok(&sb.run(&["apps", "create", "shop"]));
        ok(&sb.run(&["envs", "create", "prod"]));
    })
    .await
    .unwrap();
    run(volumes).await.unwrap();

    // Release 1's release command fails; release 2 runs a process. No host has joined yet.
    assert_eq!(c.release(BAD).await["number"], 1);
    assert_eq!(c.release(GOOD).await["number"], 2);
    run(deploys_without_hosts).await.unwrap();

    // The API goes away while `sb deploy` follows a deployment. Back within the grace: sb carries
    // on (and gives up at its --timeout, 7). Gone for good: sb gives up with the server error (6)
    // when its --timeout passes, saying the deployment goes on server-side.
    let follower = |timeout: &str| {
        common::Proc(
            sb.command(&["deploy", "--release", "2", "--timeout", timeout])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let child = follower("8");
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(control);
    tokio::time::sleep(Duration::from_secs(2)).await;
    control = c.restart(&tdb.url).await;
    let o = tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap();
    let err = fails(&o, 7);
    assert!(
        err.contains("lost contact with the API (cannot reach the Scalebox API")
            && err.contains("contact with the API restored")
            && err.contains("error: gave up waiting after 8s"),
        "{err}"
    );
    let child = follower("5");
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(control);
    let o = tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap();
    let err = fails(&o, 6);
    assert!(
        err.contains("lost contact with the API")
            && !err.contains("restored")
            && err.trim_end().ends_with(
                "the deployment goes on server-side: follow it with `sb ps` when the API is back"
            ),
        "{err}"
    );
    let _control = c.restart(&tdb.url).await;

    // Ctrl-C while following: sb exits 130 at once saying the deployment goes on; it does.
    let child = follower("60");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) }, 0);
    let o = tokio::task::spawn_blocking(move || finish(child))
        .await
        .unwrap();
    let err = fails(&o, 130);
    let s = c.status().await;
    let dep = s["deployment"]["id"].as_str().unwrap();
    assert!(
        ["pending", "rolling"].contains(&s["deployment"]["state"].as_str().unwrap_or_default()),
        "{s}"
    );
    assert!(
        err.trim_end().ends_with(&format!(
            "interrupted: deployment {dep} of release 2 goes on server-side; follow it with `sb ps` and `sb why`"
        )),
        "{err}"
    );

    // A host joins: release 2, deployed last, serves.
    let join = c.join_token().await;
    let _agent = c.agent("host-a", &join, "");
    c.wait_hosts(1).await;
    run(rollbacks).await.unwrap();

    run(registry_tags).await.unwrap();
}

/// Waits for a spawned `sb` and collects its output.
fn finish(mut child: common::Proc) -> Output {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status: child.0.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// `sb volumes get` and `delete`: human, `--json`, not found (3).
fn volumes(sb: &Sb) {
    ok(&sb.run(&["volumes", "create", "data", "--size-gb", "2"]));
    let shown = ok(&sb.run(&["volumes", "get", "data"]));
    let lines: Vec<Vec<&str>> = shown
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for want in [
        &["name", "data"][..],
        &["size", "(GB)", "2"],
        &["app", "shop"],
        &["env", "prod"],
        &["host", "-"],
    ] {
        assert!(lines.iter().any(|l| l == want), "{want:?} in:\n{shown}");
    }
    let v = sb.json(&["volumes", "get", "data"]);
    assert_eq!(
        (v["name"].as_str(), v["size_gb"].as_i64(), v["app"].as_str()),
        (Some("data"), Some(2), Some("shop")),
        "{v}"
    );
    for args in [
        &["volumes", "get", "nosuch"][..],
        &["volumes", "delete", "nosuch"],
    ] {
        let err = fails(&sb.run(args), 3);
        assert_eq!(
            err.trim(),
            r#"error: volume "nosuch" not found"#,
            "{args:?}"
        );
        error_object(
            &fails_json(&sb.run(&[&["--json"][..], args].concat()), 3),
            404,
            Some("not_found"),
            r#"volume "nosuch" not found"#,
        );
    }
    assert_eq!(
        ok(&sb.run(&["volumes", "delete", "data"])).trim(),
        "Deleted volume data."
    );
    fails(&sb.run(&["volumes", "get", "data"]), 3);
    fails(&sb.run(&["volumes", "delete", "data"]), 3);
    ok(&sb.run(&["volumes", "create", "logs", "--size-gb", "1"]));
    assert_eq!(
        sb.json(&["volumes", "delete", "logs"]),
        json!({"deleted": "logs"})
    );
    assert_eq!(sb.json(&["volumes", "list"])["items"], json!([]));

    // A name is one path segment: `shop/envs/prod` is an app of that name (there is none), not
    // the environment prod of app shop; `data/snapshots` is a volume, not the snapshots of one;
    // `--app shop/envs` too.
    let err = fails(&sb.run(&["apps", "delete", "shop/envs/prod"]), 3);
    assert_eq!(err.trim(), r#"error: app "shop/envs/prod" not found"#);
    assert_eq!(sb.json(&["envs", "get", "prod"])["name"], "prod");
    let err = fails(&sb.run(&["volumes", "get", "data/snapshots"]), 3);
    assert_eq!(err.trim(), r#"error: volume "data/snapshots" not found"#);
    let err = fails(&sb.run(&["--app", "shop/envs", "envs", "list"]), 3);
    assert_eq!(err.trim(), r#"error: app "shop/envs" not found"#);
}

/// The deployment states of shop/prod, newest first.
fn states(sb: &Sb) -> Vec<(i64, String)> {
    sb.json(&["deployments"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["release"].as_i64().unwrap(),
                d["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Polls `sb --json ps` until `pred` holds.
fn wait_status(sb: &Sb, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = sb.json(&["ps"]);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With no host nothing can run: waits give up (7) and newer deployments supersede older ones
/// (7 for the `sb deploy` following the older one).
fn deploys_without_hosts(sb: &Sb) {
    let o = sb.run(&["deploy", "--release", "2", "--timeout", "1"]);
    let err = fails(&o, 7);
    assert!(
        err.starts_with("Deploying release 2 to shop/prod (deployment "),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: gave up waiting after 1s (last seen: ")
            && last
                .contains("of release 2 goes on server-side: follow it with `sb ps` and `sb why`"),
        "{err}"
    );
    assert_eq!(text(&o.stdout), "", "no outcome line");
    // --json: the last status on stdout, the error object on stderr.
    let o = sb.run(&["--json", "deploy", "--release", "2", "--timeout", "1"]);
    let e = fails_json(&o, 7);
    error_object(&e, 0, None, "gave up waiting after 1s");
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["deployment"]["release"], 2, "{s}");
    assert!(
        ["pending", "rolling"].contains(&s["deployment"]["state"].as_str().unwrap_or_default()),
        "{s}"
    );

    // `sb deploy` follows release 1's deployment (its release command has no host to run on);
    // release 2 is deployed meanwhile: the first one is superseded.
    let child = common::Proc(
        sb.command(&["deploy", "--release", "1", "--timeout", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let s = wait_status(sb, "release 1's deployment", |s| {
        s["deployment"]["release"] == 1 && s["deployment"]["state"] == "release_command"
    });
    let first = s["deployment"]["id"].as_str().unwrap().to_owned();
    // (`sb deploy` polls every second: let it see its deployment at least once.)
    std::thread::sleep(Duration::from_millis(1500));
    let newer = sb.json(&["deploy", "--release", "2", "--no-wait"]);
    let newer = newer["deployment"].as_str().unwrap().to_owned();
    let o = finish(child);
    let err = fails(&o, 7);
    assert!(err.contains(&format!("(deployment {first})")), "{err}");
    assert!(
        err.trim_end().ends_with(&format!(
            "error: deployment of release 1 was superseded by deployment {newer} (release 2) before it finished; follow the newer one with `sb ps`"
        )),
        "{err}"
    );
    let deps = sb.json(&["deployments"]);
    let by_id = |id: &str| {
        deps["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id(&first)["state"], "superseded", "{deps}");
    assert_eq!(by_id(&first)["reason"], "a newer deployment started");
    assert_eq!(
        states(sb),
        [
            (2, "rolling".to_owned()),
            (1, "superseded".to_owned()),
            (2, "superseded".to_owned()),
            (2, "superseded".to_owned()),
        ]
    );
}

/// With a host: release 2 serves; rolling back to release 1, whose release command fails, exits
/// 7 with the reason, and release 2 keeps serving.
fn rollbacks(sb: &Sb) {
    wait_status(sb, "release 2 serving", |s| {
        s["serving_release"] == 2 && s["deployment"]["state"] == "succeeded"
    });
    let err = fails(&sb.run(&["rollback"]), 4);
    assert!(
        err.contains("no release older than the serving release 2 has served in shop/prod"),
        "{err}"
    );
    let err = fails(&sb.run(&["rollback", "9"]), 3);
    assert!(err.contains(r#"release 9 of app "shop""#), "{err}");

    let o = sb.run(&["rollback", "1"]);
    let err = fails(&o, 7);
    assert!(
        err.starts_with("Rolling back shop/prod from release 2 to release 1 (deployment "),
        "{err}"
    );
    let last = err
        .lines()
        .position(|l| l.starts_with("error: "))
        .map(|i| err.lines().skip(i).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    assert!(
        last.starts_with(
            "error: deployment of release 1 failed: release command failed; the previous release keeps serving: instance release-"
        ) && last.contains("exit code 3")
            && last.contains("boom"),
        "{err}"
    );
    assert_eq!(text(&o.stdout), "");
    let st = ok(&sb.run(&["ps"]));
    assert!(st.contains("1 promoted, 2 serving"), "{st}");
    // --json: the final status on stdout (the failed deployment), the error object on stderr.
    let o = sb.run(&["--json", "rollback", "1"]);
    let e = fails_json(&o, 7);
    error_object(
        &e,
        0,
        None,
        "deployment of release 1 failed: release command failed",
    );
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            s["deployment"]["release"].as_i64(),
            s["deployment"]["state"].as_str(),
            s["serving_release"].as_i64()
        ),
        (Some(1), Some("failed"), Some(2)),
        "{s}"
    );
    ok(&sb.run(&["stop"]));
}

/// A tag resolved against a real registry makes a release on the real server pinned to its
/// digest; a missing tag is not found (3) and creates nothing.
fn registry_tags(sb: &Sb) {
    let dir = sb.cfg.join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let reg = scalebox_testkit::registry::start_registry(&dir);
    let digest = reg.push_small_image("team/app", "v1");
    std::fs::write(sb.cfg.join("scalebox.toml"), GOOD).unwrap();
    let before = sb.json(&["releases", "list"])["items"]
        .as_array()
        .unwrap()
        .len();
    let image = format!("127.0.0.1:{}/team/app:v1", reg.port);
    let o = sb.run(&["releases", "create", "--image", &image]);
    let out = ok(&o);
    assert!(
        text(&o.stderr).contains(&format!("Resolved {image} → {digest}")),
        "{}",
        text(&o.stderr)
    );
    let n = before as i64 + 1;
    assert!(
        out.contains(&format!("Created release v{n} of shop")),
        "{out}"
    );
    let r = sb.json(&["releases", "get", &n.to_string()]);
    assert_eq!(
        (r["image_ref"].as_str(), r["image_digest"].as_str()),
        (
            Some(format!("{image}@{digest}").as_str()),
            Some(digest.as_str())
        ),
        "{r}"
    );

    let deps = sb.json(&["deployments"])["items"].as_array().unwrap().len();
    let missing = format!("127.0.0.1:{}/team/app:v9", reg.port);
    let err = fails(&sb.run(&["deploy", "--image", &missing, "--no-wait"]), 3);
    assert!(
        err.contains(&format!(
            r#"tag "v9" not found in 127.0.0.1:{}/team/app"#,
            reg.port
        )),
        "{err}"
    );
    let e = fails_json(
        &sb.run(&["--json", "releases", "create", "--image", &missing]),
        3,
    );
    // (`status` is the registry's answer.)
    error_object(&e, 404, None, r#"tag "v9" not found"#);
    let releases = sb.json(&["releases", "list"]);
    assert_eq!(
        releases["items"].as_array().unwrap().len(),
        before + 1,
        "no release for the missing tag: {releases}"
    );
    assert_eq!(
        sb.json(&["deployments"])["items"].as_array().unwrap().len(),
        deps,
        "no deployment either"
    );
}
