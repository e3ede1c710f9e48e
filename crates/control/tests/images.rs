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

/// `PUT` of `body` with extra headers (e.g. `Content-Range`); (status, Upload-Offset, body).
async fn put_h(
    api: &Api,
    digest: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Option<u64>, String) {
    let auth = format!("Bearer {}", api.admin);
    let mut h = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-tar"),
    ];
    h.extend_from_slice(headers);
    let r = request(
        api.addr,
        "PUT",
        &format!("/v1/orgs/default/images/{digest}"),
        &h,
        Some(body),
    )
    .await
    .unwrap();
    (r.status, offset_of(&r), r.text())
}

fn offset_of(r: &scalebox_testkit::http::Response) -> Option<u64> {
    header(r, "upload-offset").map(|v| v.parse().unwrap())
}

fn header<'a>(r: &'a scalebox_testkit::http::Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn head_r(api: &Api, digest: &str) -> scalebox_testkit::http::Response {
    let auth = format!("Bearer {}", api.admin);
    request(
        api.addr,
        "HEAD",
        &format!("/v1/orgs/default/images/{digest}"),
        &[("Authorization", &auth)],
        None,
    )
    .await
    .unwrap()
}

/// Files of partial uploads on the server.
fn partials(api: &Api) -> Vec<std::path::PathBuf> {
    let root = api.ctl.config.data_dir.join("images/.partial");
    let mut out = Vec::new();
    for org in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(org.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

#[tokio::test]
async fn uploads_resume_from_the_servers_offset_and_are_verified_whole() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;

    let api = Api::start_with(|c| c.image_upload_limit = 1 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, digest) = archive(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let total = bytes.len() as u64;
    let h = bytes.len() / 3;
    let range = |a: usize, b: usize, t: u64| format!("bytes {a}-{}/{t}", b - 1);

    // A plain PUT cut off after `h` bytes (the client went away): what arrived is kept.
    let mut s = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "PUT /v1/orgs/default/images/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {total}\r\n\r\n",
        api.admin
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&bytes[..h]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(s);
    let mut r = head_r(&api, &digest).await;
    for _ in 0..50 {
        if offset_of(&r) == Some(h as u64) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        r = head_r(&api, &digest).await;
    }
    assert_eq!(r.status, 404);
    assert_eq!(offset_of(&r), Some(h as u64), "{:?}", r.headers);
    assert_eq!(
        header(&r, "upload-length"),
        Some(total.to_string().as_str())
    );
    assert_eq!(header(&r, "upload-limit"), Some("1048576"));
    let files = partials(&api);
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "partial uploads are private");

    // A piece that does not start at the server's offset: 409 with the offset; nothing written.
    let (s, off, t) = put_h(
        &api,
        &digest,
        &[("Content-Range", &range(h + 10, bytes.len(), total))],
        &bytes[h + 10..],
    )
    .await;
    assert_eq!((s, off), (409, Some(h as u64)), "{t}");
    assert!(t.contains(&format!("at byte {h}")), "{t}");
    // The same offset for an archive of another size: start over (offset 0).
    let (s, off, _) = put_h(
        &api,
        &digest,
        &[("Content-Range", &range(h, bytes.len(), total + 1))],
        &bytes[h..],
    )
    .await;
    assert_eq!((s, off), (409, Some(0)));
    assert_eq!(offset_of(&head_r(&api, &digest).await), Some(h as u64));
    // A bad Content-Range: 400.
    let (s, _, _) = put_h(&api, &digest, &[("Content-Range", "bytes 5-1/9")], b"x").await;
    assert_eq!(s, 400);

    // The next piece (202, not complete), then the rest: verified, stored, partial gone.
    let m = 2 * h;
    let (s, off, t) = put_h(
        &api,
        &digest,
        &[("Content-Range", &range(h, m, total))],
        &bytes[h..m],
    )
    .await;
    assert_eq!((s, off), (202, Some(m as u64)), "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["offset"], m as u64);
    assert_eq!(v["size_bytes"], total);
    let (s, _, t) = put_h(
        &api,
        &digest,
        &[("Content-Range", &range(m, bytes.len(), total))],
        &bytes[m..],
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["size_bytes"], total);
    assert_eq!(v["image_ref"], format!("upload:{digest}"));
    let r = head_r(&api, &digest).await;
    assert_eq!((r.status, offset_of(&r)), (200, None));
    assert!(partials(&api).is_empty(), "{:?}", partials(&api));
    let org = api
        .ok(&api.admin, "GET", "/v1/orgs/default", None, 200)
        .await["id"]
        .as_str()
        .unwrap()
        .replace('-', "");
    let stored = api.ctl.config.data_dir.join(format!(
        "images/{org}/{}.tar",
        digest.trim_start_matches("sha256:")
    ));
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
    // Any piece of a stored image: 200, nothing written.
    let (s, _, _) = put_h(
        &api,
        &digest,
        &[("Content-Range", &range(h, bytes.len(), total))],
        &bytes[h..],
    )
    .await;
    assert_eq!(s, 200);

    // Another image whose last piece is corrupt: 400 once complete, nothing kept.
    let dir2 = tempfile::tempdir().unwrap();
    let (path2, digest2) = {
        let root = dir2.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("other"), vec![9u8; 5000]).unwrap();
        let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
        let d = scalebox_image::build::write_oci_layout(
            &dir2.path().join("layout"),
            &[layer],
            &Default::default(),
            "latest",
        )
        .unwrap();
        let p = dir2.path().join("img.tar");
        scalebox_image::build::write_oci_archive(&dir2.path().join("layout"), &p).unwrap();
        (p, d)
    };
    let mut b2 = std::fs::read(&path2).unwrap();
    let t2 = b2.len() as u64;
    let half = b2.len() / 2;
    let (s, off, _) = put_h(
        &api,
        &digest2,
        &[("Content-Range", &range(0, half, t2))],
        &b2[..half],
    )
    .await;
    assert_eq!((s, off), (202, Some(half as u64)));
    // Flip a byte in every blob-sized stretch of the rest: some blob no longer matches.
    for i in (half..b2.len()).step_by(200) {
        b2[i] ^= 0x5a;
    }
    let (s, _, t) = put_h(
        &api,
        &digest2,
        &[("Content-Range", &range(half, b2.len(), t2))],
        &b2[half..],
    )
    .await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("nothing was kept"), "{t}");
    let r = head_r(&api, &digest2).await;
    assert_eq!((r.status, offset_of(&r)), (404, None));
    assert!(partials(&api).is_empty(), "{:?}", partials(&api));

    // Over the server's limit: 413 before a byte is written.
    let (s, _, t) = put_h(
        &api,
        &digest2,
        &[("Content-Range", &range(0, 4, 2 << 20))],
        b"abcd",
    )
    .await;
    assert_eq!(s, 413, "{t}");
    assert!(partials(&api).is_empty());

    // A partial untouched for more than a day is forgotten, and removed by the next upload.
    let (s, _, _) = put_h(
        &api,
        &digest2,
        &[("Content-Range", &range(0, half, t2))],
        &b2[..half],
    )
    .await;
    assert_eq!(s, 202);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(25 * 3600);
    let f = partials(&api).pop().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(offset_of(&head_r(&api, &digest2).await), None);
    let zero = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        put(&api, &api.admin, "default", &zero, b"not a tar")
            .await
            .0,
        400
    );
    assert!(!f.exists(), "swept");
}

/// A multi-platform image (index.json naming an image index of linux/amd64 and linux/arm64, as
/// buildx and `docker save` write it) is known by the digest index.json names, as `sb`
/// computes it: the upload is accepted under it, and the archive's linux/amd64 image is used.
#[tokio::test]
async fn a_multi_platform_archive_is_accepted_under_its_index_digest() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, amd64) = archive(dir.path());
    let layout = dir.path().join("layout");
    let manifest_size = std::fs::metadata(layout.join("blobs/sha256").join(&amd64[7..]))
        .unwrap()
        .len();
    let desc = |arch: &str, variant: Option<&str>| {
        let mut d = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": amd64, "size": manifest_size,
                           "platform": {"os": "linux", "architecture": arch}});
        if let Some(v) = variant {
            d["platform"]["variant"] = json!(v);
        }
        d
    };
    // index.json naming an index of `platforms`: (archive bytes, the index's digest).
    let multi = |platforms: Vec<serde_json::Value>| {
        let nested = serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": platforms}))
        .unwrap();
        let index_digest = scalebox_image::oci::sha256(&nested);
        std::fs::write(
            layout.join("blobs/sha256").join(&index_digest[7..]),
            &nested,
        )
        .unwrap();
        std::fs::write(
            layout.join("index.json"),
            json!({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest,
                "size": nested.len(),
                "annotations": {"org.opencontainers.image.ref.name": "latest"}}]})
            .to_string(),
        )
        .unwrap();
        let path = dir.path().join("multi.tar");
        scalebox_image::build::write_oci_archive(&layout, &path).unwrap();
        (std::fs::read(&path).unwrap(), index_digest)
    };
    let (bytes, index_digest) = multi(vec![desc("arm64", Some("v8")), desc("amd64", None)]);
    // Under the platform manifest's digest: not what the archive names.
    let (s, t) = put(&api, &api.admin, "default", &amd64, &bytes).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains(&index_digest), "names the archive's digest: {t}");
    let (s, t) = put(&api, &api.admin, "default", &index_digest, &bytes).await;
    assert_eq!(s, 201, "{t}");
    // No linux/amd64 image: refused, saying which platforms it has.
    let (bytes, arm_digest) = multi(vec![desc("arm64", Some("v8")), desc("s390x", None)]);
    let (s, t) = put(&api, &api.admin, "default", &arm_digest, &bytes).await;
    assert_eq!(s, 400, "{t}");
    assert!(
        t.contains("has no linux/amd64 image")
            && t.contains("(it has linux/arm64/v8, linux/s390x)"),
        "{t}"
    );
}
