//! The VM surface's tenancy, authorization and input checks, without booting guests: VM and
//! template rows of org A are invisible to org B (404, never data), shared templates can only be
//! deleted by operators, protected ones by nobody, readers cannot mutate, no token is 401, and bad
//! bodies are 400s. Runs inside a network namespace it creates (the VM runtime's recovery lists
//! and removes TAPs and forwarding rules).

mod common;

use std::os::fd::AsRawFd;
use std::process::Command;

use common::Api;
use scalebox_sandbox::db::{self, VmRow};
use serde_json::json;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn vm_surface_tenancy_and_input() {
    let ns = Ns(format!("sbvmt{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let name = ns.0.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on a valid namespace fd, for this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario());
    })
    .join()
    .map_err(|_| "the scenario failed (see the panic above)")
    .unwrap();
}

async fn scenario() {
    let api = Api::start_with(|c| {
        c.vms.enabled = Some(true);
        c.vms.build_base_template = false;
    })
    .await;
    let a = api.admin.clone();
    let b = api.new_org("bravo").await;
    let reader = api
        .ok(
            &a,
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "r", "role": "reader"})),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let org_a: uuid::Uuid = api
        .tdb
        .db
        .client()
        .await
        .unwrap()
        .query_one("SELECT id FROM v_orgs WHERE name = 'default'", &[])
        .await
        .unwrap()
        .get(0);
    let sb = api.ctl.sandbox.clone().expect("sandbox enabled");
    let templates = sb.templates_dir();
    for t in ["debian-base", "shared", "snapa"] {
        std::fs::write(templates.join(format!("{t}.ext4")), b"not really ext4").unwrap();
    }
    db::insert_template(&api.tdb.db, "snapa", org_a, "vm-0123456789ab")
        .await
        .unwrap();
    db::insert_vm(
        &api.tdb.db,
        &VmRow {
            id: "vm-0123456789ab".into(),
            org_id: org_a,
            name: "very-silly-penguin".into(),
            template: "debian-base".into(),
            ip: "172.16.0.2".into(),
            ssh_port: 22001,
            tap: "sbv0123456789ab".into(),
            vcpu_count: 1,
            mem_size_mib: 512,
            disk_size_gib: 2,
            state: "running".into(),
            created_at: time::OffsetDateTime::now_utc(),
        },
    )
    .await
    .unwrap();

    // Org A sees its VM (stopped: no VMM runs it), by id and by name.
    let l = api.ok(&a, "GET", "/vms", None, 200).await;
    assert_eq!(l["vms"][0]["name"], "very-silly-penguin", "{l}");
    assert_eq!(l["vms"][0]["status"], "stopped");
    for x in ["vm-0123456789ab", "very-silly-penguin"] {
        api.ok(&a, "GET", &format!("/vms/{x}"), None, 200).await;
        api.ok(&reader, "GET", &format!("/vms/{x}"), None, 200)
            .await;
    }
    // Org B: nothing, and 404 on every path naming A's VM.
    assert_eq!(api.ok(&b, "GET", "/vms", None, 200).await["vms"], json!([]));
    for (m, p, body) in [
        ("GET", "/vms/vm-0123456789ab", None),
        ("GET", "/vms/very-silly-penguin", None),
        ("DELETE", "/vms/very-silly-penguin", None),
        (
            "POST",
            "/vms/vm-0123456789ab/snapshot",
            Some(json!({"template_name": "stolen"})),
        ),
    ] {
        let r = api.call(&b, m, p, body).await;
        assert_eq!(r.status, 404, "{m} {p}: {}", r.text());
        assert_eq!(r.json()["error"], "VM not found");
    }
    // Templates: B sees the shared ones, not A's snapshot.
    let tb = api.ok(&b, "GET", "/templates", None, 200).await.to_string();
    assert!(
        tb.contains("shared") && tb.contains("debian-base") && !tb.contains("snapa"),
        "{tb}"
    );
    let ta = api.ok(&a, "GET", "/templates", None, 200).await.to_string();
    assert!(ta.contains("snapa"), "{ta}");
    assert_eq!(
        api.call(&b, "DELETE", "/templates/snapa", None)
            .await
            .status,
        404
    );
    assert_eq!(
        api.call(&b, "DELETE", "/templates/shared", None)
            .await
            .status,
        403
    );
    assert_eq!(
        api.call(&a, "DELETE", "/templates/debian-base", None)
            .await
            .status,
        403
    );
    assert_eq!(
        api.call(&a, "DELETE", "/templates/a.b", None).await.status,
        400
    );
    assert_eq!(
        api.call(&reader, "DELETE", "/templates/snapa", None)
            .await
            .status,
        403
    );
    assert_eq!(
        api.call(&a, "DELETE", "/templates/snapa", None)
            .await
            .status,
        204
    );
    assert!(!templates.join("snapa.ext4").exists());
    // The operator org's admin may delete a shared template.
    assert_eq!(
        api.call(&a, "DELETE", "/templates/shared", None)
            .await
            .status,
        204
    );

    // Readers cannot mutate; bad bodies are 400 before anything is allocated.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJd6jv1hV9PHHYSxkkLcRgTIL9GpXBrKRoU6yfnuaLuL";
    let ok_body = json!({"template": "debian-base", "ssh_public_key": key});
    assert_eq!(
        api.call(&reader, "POST", "/vms", Some(ok_body))
            .await
            .status,
        403
    );
    assert_eq!(
        api.call(&reader, "DELETE", "/vms/very-silly-penguin", None)
            .await
            .status,
        403
    );
    for (body, needle) in [
        (json!({"template": "debian-base"}), "ssh_public_key"),
        (
            json!({"template": "debian-base", "ssh_public_key": key, "vcpu_count": 0}),
            "vcpu_count",
        ),
        (
            json!({"template": "debian-base", "ssh_public_key": key, "mem_size_mib": 1}),
            "mem_size_mib",
        ),
        (
            json!({"template": "debian-base", "ssh_public_key": key, "name": "Bad_Name"}),
            "name",
        ),
        (
            json!({"template": "debian-base", "ssh_public_key": key, "disk_size_gib": 100000}),
            "disk_size_gib",
        ),
    ] {
        let r = api.call(&a, "POST", "/vms", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: {}", r.text());
    }
    // A template still being built (debian-base on first start) is "wait", not "not found".
    sb.set_building("fresh", true);
    let fresh = json!({"template": "fresh", "ssh_public_key": key});
    let r = api.call(&a, "POST", "/vms", Some(fresh.clone())).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("being built"), "{}", r.text());
    sb.set_building("fresh", false);
    assert_eq!(api.call(&a, "POST", "/vms", Some(fresh)).await.status, 404);
    let r = api
        .call(
            &a,
            "POST",
            "/vms/very-silly-penguin/snapshot",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("template_name is required"))
    );

    // No token: 401 on the authenticated paths; health, info and the TLS check are open.
    for (m, p) in [
        ("GET", "/vms"),
        ("POST", "/vms"),
        ("GET", "/templates"),
        ("DELETE", "/vms/x"),
    ] {
        let r = scalebox_testkit::http::request(api.addr, m, p, &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{m} {p}");
    }
    for p in ["/health", "/info"] {
        let r = scalebox_testkit::http::request(api.addr, "GET", p, &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{p}: {}", r.text());
    }
    let r = scalebox_testkit::http::request(
        api.addr,
        "GET",
        "/caddy/check?domain=very-silly-penguin.x",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "no vm_domain configured");

    // A deleted VM row is gone for A too (delete is idempotent on what is already gone).
    assert_eq!(
        api.call(&a, "DELETE", "/vms/very-silly-penguin", None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call(&a, "DELETE", "/vms/very-silly-penguin", None)
            .await
            .status,
        404
    );
    let _ = db::all_vms(&api.tdb.db)
        .await
        .map(|v| assert!(v.is_empty()));
}
