//! Image uploads: an org uploads an OCI archive by digest (checked against its content), uses it
//! in a release as `upload:<digest>`; another org cannot see or use it; tenants cannot point
//! releases at paths on the hosts; a wrong digest or a non-image is refused and nothing is kept.

mod common;

use common::{Api, MANIFEST};
use scalebox_testkit::http::request;
use serde_json::json;

fn archive(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hello"), b"hi").unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let cfg = scalebox_image::ImageConfig {
        cmd: vec!["/bin/sh".into()],
        ..Default::default()
    };
    let digest =
        scalebox_image::build::write_oci_layout(&dir.join("layout"), &[layer], &cfg, "latest")
            .unwrap();
    let path = dir.join("img.tar");
    scalebox_image::build::write_oci_archive(&dir.join("layout"), &path).unwrap();
    (path, digest)
}

async fn put(api: &Api, token: &str, org: &str, digest: &str, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = request(
        api.addr,
        "PUT",
        &format!("/v1/orgs/{org}/images/{digest}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-tar"),
        ],
        Some(body),
    )
    .await
    .unwrap();
    (r.status, r.text())
}

#[tokio::test]
async fn uploads_are_verified_org_scoped_and_usable_in_releases() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, digest) = archive(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let a = api.admin.clone();
    let b = api.new_org("bravo").await;
    let head = |t: String, org: &'static str| {
        let (addr, d) = (api.addr, digest.clone());
        async move {
            let auth = format!("Bearer {t}");
            request(
                addr,
                "HEAD",
                &format!("/v1/orgs/{org}/images/{d}"),
                &[("Authorization", &auth)],
                None,
            )
            .await
            .unwrap()
            .status
        }
    };
    assert_eq!(head(a.clone(), "default").await, 404);
    // A wrong digest, or bytes that are no image: 400, nothing kept.
    let other = format!("sha256:{}", "0".repeat(64));
    let (s, t) = put(&api, &a, "default", &other, &bytes).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains(&digest), "names the archive's real digest: {t}");
    let (s, t) = put(&api, &a, "default", &digest, b"not a tar").await;
    assert_eq!(s, 400, "{t}");
    let (s, _) = put(&api, &a, "default", "sha256:xyz", &bytes).await;
    assert_eq!(s, 400);
    assert_eq!(head(a.clone(), "default").await, 404);
    // The real upload: 201, then idempotent 200.
    let (s, t) = put(&api, &a, "default", &digest, &bytes).await;
    assert_eq!(s, 201, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["image_ref"], format!("upload:{digest}"));
    assert_eq!(v["size_bytes"], bytes.len() as u64);
    assert_eq!(put(&api, &a, "default", &digest, &bytes).await.0, 200);
    assert_eq!(head(a.clone(), "default").await, 200);
    // Org B sees nothing of it and cannot name it in a release.
    assert_eq!(head(b.clone(), "bravo").await, 404);
    assert_eq!(
        head(b.clone(), "default").await,
        404,
        "another org's path is 404"
    );
    for (t, org) in [(&a, "default"), (&b, "bravo")] {
        api.ok(
            t,
            "POST",
            &format!("/v1/orgs/{org}/apps"),
            Some(json!({"name": "web"})),
            201,
        )
        .await;
    }
    let release =
        |r: &str, d: &str| json!({"image_ref": r, "image_digest": d, "manifest": MANIFEST});
    let upload_ref = format!("upload:{digest}");
    let r = api
        .call(
            &b,
            "POST",
            "/v1/orgs/bravo/apps/web/releases",
            Some(release(&upload_ref, &digest)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not uploaded"), "{}", r.text());
    // Tenants cannot point at host paths; the operator org can.
    let r = api
        .call(
            &b,
            "POST",
            "/v1/orgs/bravo/apps/web/releases",
            Some(release("oci-archive:/etc/shadow", &digest)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("operator org"), "{}", r.text());
    // A: the upload works in a release, but only under its own digest.
    api.ok(
        &a,
        "POST",
        "/v1/orgs/default/apps/web/releases",
        Some(release(&upload_ref, &digest)),
        201,
    )
    .await;
    let r = api
        .call(
            &a,
            "POST",
            "/v1/orgs/default/apps/web/releases",
            Some(release(&upload_ref, &other)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Agents fetch only images their instances use: a user token is refused.
    let auth = format!("Bearer {a}");
    let r = request(
        api.addr,
        "GET",
        &format!("/v1/agent/images/{digest}"),
        &[("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
}
