//! Backups against a real S3-compatible server: moto in server mode on 127.0.0.1 (installed into
//! a venv under `target/` when `moto_server` is not on PATH), with IAM authentication switched
//! on so every S3 request's SigV4 signature is checked. Also the same round trip on a local
//! directory target.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use scalebox_backup::{
    BackupError, BackupOptions, EncryptionKey, LocalDir, Repository, S3, S3Settings, Secret,
    Target, sigv4,
};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const CS: u64 = 4 * MIB;
const SIZE: u64 = 64 * MIB;

// ---------- moto ----------

static INSTALL: Mutex<Option<PathBuf>> = Mutex::new(None);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `moto_server` from PATH, or from a venv under target/ (created and filled with
/// `pip install 'moto[server]'` on first use).
fn moto_server() -> PathBuf {
    let mut g = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = g.as_ref() {
        return p.clone();
    }
    let found = on_path("moto_server").filter(|p| {
        Command::new(p)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let path = match found {
        Some(p) => p,
        None => {
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moto-venv");
            let bin = venv.join("bin/moto_server");
            if !bin.is_file() {
                eprintln!(
                    "moto_server not found; installing moto[server] into {}",
                    venv.display()
                );
                let st = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("running python3 -m venv (is python3 installed?)");
                assert!(st.success(), "python3 -m venv {} failed", venv.display());
                let out = Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "moto[server]"])
                    .output()
                    .expect("running pip");
                assert!(
                    out.status.success(),
                    "pip install 'moto[server]' into {} failed (is PyPI reachable?):\n{}{}",
                    venv.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            bin
        }
    };
    *g = Some(path.clone());
    path
}

/// A running moto server with an IAM user allowed `s3:*`; killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
    _log: tempfile::NamedTempFile,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A signed IAM query-API call (the first three calls are let through unauthenticated).
fn iam(endpoint: &str, params: &[(&str, &str)]) -> String {
    let body = sigv4::canonical_query(params);
    let host = endpoint.trim_start_matches("http://");
    let payload = sigv4::sha256_hex(body.as_bytes());
    let date = sigv4::amz_date_now();
    let headers = [
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        ("host", host),
        ("x-amz-content-sha256", payload.as_str()),
        ("x-amz-date", date.as_str()),
    ];
    let req = sigv4::Request {
        method: "POST",
        canonical_uri: "/",
        canonical_query: "",
        headers: &headers,
        payload_sha256: &payload,
        amz_date: &date,
        region: "us-east-1",
        service: "iam",
    };
    let auth = sigv4::authorization("bootstrap", "bootstrap-secret", &req);
    let mut r = agent()
        .post(format!("{endpoint}/"))
        .header("content-type", headers[0].1)
        .header("x-amz-content-sha256", &payload)
        .header("x-amz-date", &date)
        .header("authorization", &auth)
        .send(body.as_bytes())
        .expect("IAM request to moto");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    assert!(status == 200, "IAM {params:?} → {status}: {text}");
    text
}

fn tag(xml: &str, t: &str) -> String {
    let open = format!("<{t}>");
    let i = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{t}> in {xml}"))
        + open.len();
    let j = xml[i..].find(&format!("</{t}>")).unwrap();
    xml[i..i + j].to_owned()
}

impl Moto {
    fn start() -> Moto {
        let bin = moto_server();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // IAM authentication: after 3 free calls (user, policy, key) every request is
            // checked, signature included.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut m = Moto {
            child,
            endpoint,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            _log: log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = m.child.try_wait() {
                let mut s = String::new();
                let _ = File::open(m._log.path()).and_then(|mut f| f.read_to_string(&mut s));
                panic!("moto_server exited ({st}):\n{s}");
            }
            if agent()
                .get(format!("{}/moto-api/", m.endpoint))
                .call()
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        iam(
            &m.endpoint,
            &[
                ("Action", "CreateUser"),
                ("UserName", "backup"),
                ("Version", "2010-05-08"),
            ],
        );
        iam(
            &m.endpoint,
            &[
                ("Action", "PutUserPolicy"),
                ("UserName", "backup"),
                ("PolicyName", "s3-all"),
                (
                    "PolicyDocument",
                    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
                ),
                ("Version", "2010-05-08"),
            ],
        );
        let xml = iam(
            &m.endpoint,
            &[
                ("Action", "CreateAccessKey"),
                ("UserName", "backup"),
                ("Version", "2010-05-08"),
            ],
        );
        m.access_key_id = tag(&xml, "AccessKeyId");
        m.secret_access_key = tag(&xml, "SecretAccessKey");
        m.s3("").ensure_bucket().expect("create the bucket");
        m
    }

    fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint.clone(),
            region: "us-east-1".to_owned(),
            bucket: "scalebox-backups".to_owned(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: Secret::new(self.secret_access_key.clone()),
            prefix: prefix.to_owned(),
        }
    }

    fn s3(&self, prefix: &str) -> S3 {
        S3::new(self.settings(prefix)).unwrap()
    }

    fn repo(&self, prefix: &str, key: Option<EncryptionKey>) -> Repository {
        Repository::new(Box::new(self.s3(prefix)), key)
    }
}

// ---------- images ----------

struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
}

/// A 64 MiB sparse file: random data in chunks 0, 1 (partly), 5-7, 10 (partly), 12 (a copy of
/// 5) and the last 100 bytes; holes elsewhere. 8 data chunks, 7 distinct.
fn make_image(path: &Path, seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut rng = Rng(seed | 1);
    let mut w = |off: u64, len: u64| -> Vec<u8> {
        let mut b = vec![0u8; len as usize];
        rng.fill(&mut b);
        f.write_all_at(&b, off).unwrap();
        b
    };
    w(0, CS);
    w(CS + MIB + 12345, MIB);
    let five = w(5 * CS, CS);
    w(6 * CS, 2 * CS);
    w(10 * CS + 3, 777);
    f.write_all_at(&five, 12 * CS).unwrap();
    w(SIZE - 100, 100);
}

const DISTINCT: usize = 7;

fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn rate(bytes: u64, d: Duration) -> String {
    format!("{:.0} MiB/s", bytes as f64 / MIB as f64 / d.as_secs_f64())
}

/// Backup → restore → byte-exact; a changed chunk → incremental backup; delete + gc; a corrupt
/// chunk is refused. Works on any repository (S3 or local).
fn round_trip(repo: &Repository, work: &Path, label: &str) {
    let src = work.join("vol.img");
    make_image(&src, 0x5eed);
    let mut last = None;
    let t = Instant::now();
    let rep = repo
        .backup(
            &src,
            &BackupOptions::new("b1", "vol-1", "snap-1"),
            &mut |p| last = Some(p),
        )
        .unwrap();
    let tb = t.elapsed();
    assert_eq!(last.unwrap().bytes_done, SIZE);
    assert_eq!(rep.data_chunks, 8);
    assert_eq!(rep.hole_chunks, 8);
    assert_eq!(rep.uploaded_chunks, DISTINCT);
    assert_eq!(repo.target().list("chunks/").unwrap().len(), DISTINCT);

    let dst = work.join("restored.img");
    let t = Instant::now();
    let rr = repo.restore("b1", &dst, &mut |_| {}).unwrap();
    let tr = t.elapsed();
    assert_eq!(sha256_file(&dst), sha256_file(&src));
    assert_eq!(sha256_file(&dst), rr.manifest.image_sha256);
    eprintln!(
        "{label}: backup 64 MiB image ({} MiB data uploaded) in {tb:.2?} = {} logical, {} uploaded; \
         restore in {tr:.2?} = {} logical, {} fetched",
        rep.uploaded_bytes / MIB,
        rate(SIZE, tb),
        rate(rep.uploaded_bytes, tb),
        rate(SIZE, tr),
        rate(rr.fetched_bytes, tr),
    );

    // Change one byte in chunk 6: the second backup uploads only that chunk.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(b"\xff", 6 * CS + 4242).unwrap();
    drop(f);
    let rep2 = repo
        .backup(
            &src,
            &BackupOptions::new("b2", "vol-1", "snap-2"),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(rep2.uploaded_chunks, 1);
    assert_eq!(rep2.skipped_chunks, 7);
    let dst2 = work.join("restored2.img");
    repo.restore("b2", &dst2, &mut |_| {}).unwrap();
    assert_eq!(sha256_file(&dst2), sha256_file(&src));

    let ids: Vec<String> = repo.list().unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec!["b1", "b2"]);

    // Deleting b1 leaves its old chunk 6 unreferenced; gc removes just that one.
    repo.delete("b1").unwrap();
    let gc = repo.gc().unwrap();
    assert_eq!(
        (gc.manifests, gc.chunks_deleted, gc.chunks_kept),
        (1, 1, DISTINCT)
    );
    std::fs::remove_file(&dst2).unwrap();
    repo.restore("b2", &dst2, &mut |_| {}).unwrap();
    assert_eq!(sha256_file(&dst2), sha256_file(&src));

    // Corrupt chunk 7's object (overwrite it with the same length, one byte flipped).
    let m = repo.manifest("b2").unwrap();
    let h = hex::decode(m.chunks[7].as_ref().unwrap()).unwrap();
    let key = repo.chunk_key(&h.try_into().unwrap());
    let mut obj = repo.target().get(&key).unwrap().unwrap();
    obj[1000] ^= 1;
    repo.target().put(&key, &obj).unwrap();
    let dst3 = work.join("restored3.img");
    let e = repo.restore("b2", &dst3, &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, BackupError::ChunkCorrupt { index: 7, key: k, .. } if *k == key),
        "{msg}"
    );
    assert!(msg.contains("chunk 7") && msg.contains(&key), "{msg}");
    assert!(!dst3.exists());
    assert!(!work.join("restored3.img.tmp").exists());
}

// ---------- tests ----------

#[test]
fn s3_round_trip_incremental_gc_and_corruption() {
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    round_trip(&moto.repo("plain/", None), work.path(), "s3 (moto)");
}

#[test]
fn local_dir_round_trip_incremental_gc_and_corruption() {
    let work = tempfile::tempdir().unwrap();
    let target = LocalDir::open(&work.path().join("store")).unwrap();
    round_trip(
        &Repository::new(Box::new(target), None),
        work.path(),
        "local dir",
    );
}

#[test]
fn s3_interrupted_backup_resumes_and_signatures_are_checked() {
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    let repo = moto.repo("resume/", None);
    let src = work.path().join("vol.img");
    make_image(&src, 42);

    let opts = BackupOptions {
        max_chunks: Some(3),
        ..BackupOptions::new("r1", "vol-1", "snap-1")
    };
    let e = repo.backup(&src, &opts, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, BackupError::Interrupted { uploaded: 3, .. }),
        "{e}"
    );
    assert_eq!(repo.target().list("chunks/").unwrap().len(), 3);
    assert!(
        repo.list_ids().unwrap().is_empty(),
        "no manifest: the backup does not exist"
    );
    assert!(matches!(
        repo.restore("r1", &work.path().join("x"), &mut |_| {}),
        Err(BackupError::NotFound(_))
    ));

    let rep = repo
        .backup(
            &src,
            &BackupOptions::new("r1", "vol-1", "snap-1"),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(rep.uploaded_chunks, DISTINCT - 3, "only the missing chunks");
    assert_eq!(repo.target().list("chunks/").unwrap().len(), DISTINCT);
    let dst = work.path().join("restored.img");
    repo.restore("r1", &dst, &mut |_| {}).unwrap();
    assert_eq!(sha256_file(&dst), sha256_file(&src));

    // The server checks signatures: a wrong secret is refused, and the error hides secrets.
    let mut bad = moto.settings("resume/");
    bad.secret_access_key = Secret::new("not-the-secret-XYZ".to_owned());
    let e = S3::new(bad).unwrap().put("chunks/x", b"x").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("403") && msg.contains("SignatureDoesNotMatch"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret-XYZ") && !msg.contains(&moto.secret_access_key));
}

#[test]
fn s3_encrypted_round_trip() {
    let moto = Moto::start();
    let work = tempfile::tempdir().unwrap();
    let key_file = work.path().join("backup.key");
    std::fs::write(&key_file, EncryptionKey::generate_hex().unwrap()).unwrap();
    let repo = moto.repo("enc/", Some(EncryptionKey::load(&key_file).unwrap()));
    let src = work.path().join("vol.img");
    make_image(&src, 7);
    let rep = repo
        .backup(
            &src,
            &BackupOptions::new("e1", "vol-1", "snap-1"),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(rep.uploaded_chunks, DISTINCT);
    let keys = repo.target().list("chunks/").unwrap();
    assert_eq!(keys.len(), DISTINCT);
    for h in rep.manifest.chunks.iter().flatten() {
        assert!(
            !keys.iter().any(|k| k.ends_with(h.as_str())),
            "plaintext hash {h} in store"
        );
    }
    // Neither chunks nor the manifest hold plaintext.
    let raw = repo.target().get("backups/e1.json").unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("vol-1"));
    let chunk0 = std::fs::read(&src).unwrap()[..64].to_vec();
    for k in &keys {
        let obj = repo.target().get(k).unwrap().unwrap();
        assert!(!obj.windows(64).any(|w| w == chunk0.as_slice()));
    }
    let dst = work.path().join("restored.img");
    repo.restore("e1", &dst, &mut |_| {}).unwrap();
    assert_eq!(sha256_file(&dst), sha256_file(&src));

    // Without the key: a clear refusal.
    let e = moto
        .repo("enc/", None)
        .restore("e1", &work.path().join("x"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, BackupError::EncryptedNoKey { .. }), "{e}");
    // A tampered encrypted chunk fails its tag.
    let mut obj = repo.target().get(&keys[0]).unwrap().unwrap();
    let n = obj.len() - 1;
    obj[n] ^= 1;
    repo.target().put(&keys[0], &obj).unwrap();
    let e = repo
        .restore("e1", &work.path().join("y"), &mut |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("authentication tag"), "{e}");
    assert!(!work.path().join("y").exists());
}
