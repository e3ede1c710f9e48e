//! A cluster of real processes for multi-host tests: `scaleboxd control` against a test
//! database plus `scaleboxd agent --join` processes (process backend), each in its own data
//! directory under one temporary directory (killed with everything they started when dropped).

use std::process::{Command, Stdio};
use std::time::Duration;

use scalebox_testkit::http::request;
use serde_json::{Value, json};

use super::Proc;
use super::sb::Sb;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sha256 of a file, with the real `sha256sum`.
pub fn sha256_file(p: &std::path::Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub api: std::net::SocketAddr,
    pub token: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Instances of the process backend are processes whose command names this directory.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path())
            .status();
    }
}

impl Cluster {
    /// Starts `scaleboxd control` (config: listen + data_dir + `extra_config`) and waits for it.
    pub async fn start(db_url: &str, extra_config: &str) -> (Cluster, Proc) {
        Cluster::start_on(db_url, extra_config, "127.0.0.1").await
    }

    /// [`Cluster::start`] with the API on `ip` (in the calling thread's network namespace).
    pub async fn start_on(db_url: &str, extra_config: &str, ip: &str) -> (Cluster, Proc) {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("control.toml"),
            format!(
                "listen = \"{ip}:{port}\"\ndata_dir = \"{}/control\"\n{extra_config}",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            api: format!("{ip}:{port}").parse().unwrap(),
            token: String::new(),
        };
        let control = c.spawn_control(db_url);
        c.token = c.wait_up().await;
        (c, control)
    }

    /// Starts `scaleboxd control` again with the same configuration (same port, same data
    /// directory) after the previous process was stopped, and waits for it.
    pub async fn restart(&self, db_url: &str) -> Proc {
        let control = self.spawn_control(db_url);
        assert_eq!(
            self.wait_up().await,
            self.token,
            "same admin token after a restart"
        );
        control
    }

    fn spawn_control(&self, db_url: &str) -> Proc {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_scaleboxd"))
                .args(["control", "--config"])
                .arg(self.dir.path().join("control.toml"))
                .env("DATABASE_URL", db_url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Waits until the API answers `/v1/health`; the admin token.
    async fn wait_up(&self) -> String {
        for _ in 0..300 {
            if let Ok(t) = std::fs::read_to_string(self.dir.path().join("control/admin-token"))
                && let Ok(r) = request(self.api, "GET", "/v1/health", &[], None).await
                && r.status == 200
            {
                return t.trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("control plane at {} not up within 30 s", self.api);
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.token);
        let b = body.map(|b| b.to_string());
        let mut h = vec![("Authorization", auth.as_str())];
        if b.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        let r = request(self.api, method, path, &h, b.as_deref().map(str::as_bytes))
            .await
            .unwrap();
        (r.status, r.json())
    }

    /// The status of env `prod` of app `shop` (the environment these tests deploy).
    pub async fn status(&self) -> Value {
        self.ok(
            "GET",
            "/v1/orgs/default/apps/shop/envs/prod/status",
            None,
            200,
        )
        .await
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    /// Starts an agent joining the cluster as host `name` (process backend); `extra_config`
    /// is appended to its config file.
    pub fn agent(&self, name: &str, join_token: &str, extra_config: &str) -> Proc {
        self.agent_in(name, join_token, extra_config, None, "127.0.0.1")
    }

    /// [`Cluster::agent`] run inside network namespace `netns` (`ip netns exec`), joining with
    /// underlay `address`.
    pub fn agent_in(
        &self,
        name: &str,
        join_token: &str,
        extra_config: &str,
        netns: Option<&str>,
        address: &str,
    ) -> Proc {
        self.agent_with(
            name,
            join_token,
            extra_config,
            netns,
            address,
            "process",
            &[],
        )
    }

    /// [`Cluster::agent_in`] with `backend` (`process` or `qemu`) and extra environment.
    #[allow(clippy::too_many_arguments)]
    pub fn agent_with(
        &self,
        name: &str,
        join_token: &str,
        extra_config: &str,
        netns: Option<&str>,
        address: &str,
        backend: &str,
        envs: &[(&str, &std::path::Path)],
    ) -> Proc {
        let d = self.dir.path();
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}/{name}\"\n{extra_config}",
                free_port(),
                d.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(format!("{name}.log")))
            .unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_scaleboxd")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_scaleboxd")),
        };
        Proc(
            cmd.args(["agent", "--backend", backend, "--config"])
                .arg(&cfg)
                .envs(envs.iter().copied())
                .args([
                    "--join",
                    &format!("http://{}", self.api),
                    "--host-name",
                    name,
                    "--address",
                    address,
                ])
                .env("SCALEBOX_JOIN_TOKEN", join_token)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// A join token of the operator org.
    pub async fn join_token(&self) -> String {
        self.ok(
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "join", "role": "join"})),
            201,
        )
        .await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `sb` (the binary `bin`) against this control plane as its operator, with its config
    /// directory `sb/` in the cluster's directory.
    pub fn sb(&self, bin: std::path::PathBuf) -> Sb {
        let cfg = self.dir.path().join("sb");
        std::fs::create_dir_all(&cfg).unwrap();
        Sb {
            bin,
            url: format!("http://{}", self.api),
            token: self.token.clone(),
            cfg,
        }
    }

    /// App `shop` with environment `prod` in the operator org.
    pub async fn create_shop_env(&self) {
        self.ok(
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": "shop"})),
            201,
        )
        .await;
        self.ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs",
            Some(json!({"name": "prod"})),
            201,
        )
        .await;
    }

    /// A release of app `shop` with `manifest` and an opaque image file (the process backend
    /// runs the manifest's commands on the host); its JSON.
    pub async fn release(&self, manifest: &str) -> Value {
        let img = self.dir.path().join("image.bin");
        std::fs::write(&img, b"opaque").unwrap();
        let digest = format!("sha256:{}", sha256_file(&img));
        self.ok(
            "POST",
            "/v1/orgs/default/apps/shop/releases",
            Some(json!({"image_ref": format!("archive:{}", img.display()),
                                    "image_digest": digest, "manifest": manifest})),
            201,
        )
        .await
    }

    /// Waits until `n` hosts joined.
    pub async fn wait_hosts(&self, n: usize) {
        for _ in 0..100 {
            let h = self.ok("GET", "/v1/hosts", None, 200).await;
            if h["items"].as_array().unwrap().len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{n} hosts did not join");
    }
}
