//! Harness for API tests: a control plane on a fresh database of the run's real Postgres
//! cluster, serving on a loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;

use scalebox_control::{Control, ControlConfig, bootstrap, router};
use scalebox_testkit::http::{Response, request};
use scalebox_testkit::{TestDb, test_db};
use serde_json::Value;

pub const MANIFEST: &str = r#"schema_version = 1

[processes.web]
command = ["/bin/server"]
ports = [8080]

[processes.worker]
command = ["/bin/worker"]
"#;

pub struct Api {
    pub addr: SocketAddr,
    pub admin: String,
    pub ctl: Control,
    pub tdb: TestDb,
    _dir: tempfile::TempDir,
}

impl Api {
    pub async fn start() -> Api {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut ControlConfig)) -> Api {
        let tdb = test_db().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ControlConfig {
            data_dir: dir.path().to_path_buf(),
            ..ControlConfig::default()
        };
        f(&mut cfg);
        let mut ctl = Control::open(cfg, &tdb.url).await.unwrap();
        if ctl.config.vms.enabled == Some(true) {
            let sb = scalebox_sandbox::Sandbox::open(
                ctl.config.vms.clone(),
                &dir.path().join("sandbox"),
                ctl.db.clone(),
            )
            .await
            .unwrap();
            ctl.sandbox = Some(sb);
        }
        let admin = bootstrap(&ctl)
            .await
            .unwrap()
            .expect("first bootstrap returns a token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(ctl.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Api {
            addr,
            admin,
            ctl,
            tdb,
            _dir: dir,
        }
    }

    /// Sends a request with `token` and an optional JSON body.
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        self.call_h(token, method, path, &[], body).await
    }

    pub async fn call_h(
        &self,
        token: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Response {
        let auth = format!("Bearer {token}");
        let mut h: Vec<(&str, &str)> = vec![("Authorization", &auth)];
        h.extend_from_slice(headers);
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        if bytes.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        request(self.addr, method, path, &h, bytes.as_deref())
            .await
            .unwrap()
    }

    /// Like `call` but asserts the status and returns the JSON body.
    pub async fn ok(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let r = self.call(token, method, path, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        r.json()
    }

    /// Creates a new org via the API; returns its admin token.
    pub async fn new_org(&self, name: &str) -> String {
        let v = self
            .ok(
                &self.admin,
                "POST",
                "/v1/orgs",
                Some(serde_json::json!({"name": name})),
                201,
            )
            .await;
        v["admin_token"].as_str().unwrap().to_owned()
    }

    /// Number of rows in the event log.
    pub async fn event_count(&self) -> i64 {
        self.tdb
            .db
            .client()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0)
    }
}
