//! The real `sb` binary against a real control plane (real Postgres): human and JSON output,
//! exit codes per error class, contexts, manifest errors with line/column, bad flags, an env's
//! dedicated IPv4.

mod common;

use common::{fails, json, ok};

use std::process::{Command, Output};

use scalebox_control::{Control, ControlConfig, bootstrap, router};
use serde_json::Value;

struct Env {
    url: String,
    token: String,
    cfg: tempfile::TempDir,
    work: tempfile::TempDir,
    _data: tempfile::TempDir,
}

async fn start() -> Env {
    start_with(|_| {}).await
}

async fn start_with(f: impl FnOnce(&mut ControlConfig)) -> Env {
    let tdb = scalebox_testkit::test_db().await;
    let data = tempfile::tempdir().unwrap();
    let mut cfg = ControlConfig {
        data_dir: data.path().to_path_buf(),
        ..ControlConfig::default()
    };
    f(&mut cfg);
    let ctl = Control::open(cfg, &tdb.url).await.unwrap();
    let token = bootstrap(&ctl).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(ctl)).await.unwrap() });
    Env {
        url,
        token,
        cfg: tempfile::tempdir().unwrap(),
        work: tempfile::tempdir().unwrap(),
        _data: data,
    }
}

impl Env {
    fn sb_with(&self, args: &[&str], auth: bool) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.args(args)
            .current_dir(self.work.path())
            .env("SCALEBOX_CONFIG_DIR", self.cfg.path());
        for v in [
            "SCALEBOX_URL",
            "SCALEBOX_TOKEN",
            "SCALEBOX_JSON",
            "SCALEBOX_ORG",
            "SCALEBOX_APP",
            "SCALEBOX_ENV",
        ] {
            c.env_remove(v);
        }
        if auth {
            c.env("SCALEBOX_URL", &self.url)
                .env("SCALEBOX_TOKEN", &self.token);
        }
        c.output().unwrap()
    }

    async fn run(&self, args: &[&str]) -> Output {
        let (args, me): (Vec<String>, _) = (
            args.iter().map(|s| s.to_string()).collect(),
            self.clone_handle(),
        );
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            me.sb(&a)
        })
        .await
        .unwrap()
    }

    fn clone_handle(&self) -> Handle {
        Handle {
            url: self.url.clone(),
            token: self.token.clone(),
            cfg: self.cfg.path().into(),
            work: self.work.path().into(),
        }
    }
}

struct Handle {
    url: String,
    token: String,
    cfg: std::path::PathBuf,
    work: std::path::PathBuf,
}

impl Handle {
    fn sb(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.args(args)
            .current_dir(&self.work)
            .env("SCALEBOX_CONFIG_DIR", &self.cfg);
        for v in [
            "SCALEBOX_JSON",
            "SCALEBOX_ORG",
            "SCALEBOX_APP",
            "SCALEBOX_ENV",
        ] {
            c.env_remove(v);
        }
        c.env("SCALEBOX_URL", &self.url)
            .env("SCALEBOX_TOKEN", &self.token);
        c.output().unwrap()
    }
}

const MANIFEST: &str =
    "schema_version = 1\n\n[processes.web]\ncommand = [\"/srv\"]\nports = [8080]\n";

#[tokio::test(flavor = "multi_thread")]
async fn everyday_commands_human_and_json() {
    let e = start().await;
    let w = e.clone_handle();
    let out = tokio::task::spawn_blocking(move || {
        let who = ok(&w.sb(&["whoami"]));
        assert!(who.contains("default") && who.contains("admin"), "{who}");
        ok(&w.sb(&["apps", "create", "api", "--description", "the API"]));
        let list = ok(&w.sb(&["apps", "list"]));
        assert!(list.starts_with("NAME") && list.contains("api"), "{list}");
        // --json before or after the verb.
        let a = serde_json::from_str::<Value>(&ok(&w.sb(&["--json", "apps", "list"]))).unwrap();
        let b = serde_json::from_str::<Value>(&ok(&w.sb(&["apps", "list", "--json"]))).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["items"][0]["name"], "api");
        // Context per directory.
        ok(&w.sb(&["--app", "api", "--env", "prod", "context", "set"]));
        let ctx = ok(&w.sb(&["context", "show"]));
        assert!(ctx.contains("api") && ctx.contains("prod"), "{ctx}");
        ok(&w.sb(&["envs", "create", "prod"]));
        let created = ok(&w.sb(&["secrets", "set", "DB_URL=postgres://x", "TOKEN=a=b c"]));
        assert!(
            created.contains("version 1") && !created.contains("postgres://x"),
            "{created}"
        );
        let names = ok(&w.sb(&["secrets", "list"]));
        assert!(
            names.contains("DB_URL") && names.contains("TOKEN") && !names.contains("postgres"),
            "{names}"
        );
        let rendered = ok(&w.sb(&["secrets", "render", "B=line1\nline2", "A=x\\y"]));
        assert_eq!(rendered, "A=x\\\\y\nB=line1\\nline2\n");
        std::fs::write(w.work.join("scalebox.toml"), MANIFEST).unwrap();
        let digest = format!("sha256:{}", "e".repeat(64));
        ok(&w.sb(&[
            "releases",
            "create",
            "--image",
            "reg/api:1",
            "--digest",
            &digest,
        ]));
        std::fs::write(
            w.work.join("scalebox.toml"),
            MANIFEST.replace("8080", "9090"),
        )
        .unwrap();
        let digest2 = format!("sha256:{}", "f".repeat(64));
        ok(&w.sb(&[
            "releases",
            "create",
            "--image",
            "reg/api:2",
            "--digest",
            &digest2,
        ]));
        let diff =
            serde_json::from_str::<Value>(&ok(&w.sb(&["--json", "releases", "diff", "1", "2"])))
                .unwrap();
        let fields: Vec<&str> = diff["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&"image_digest") && fields.iter().any(|f| f.contains("ports")),
            "{fields:?}"
        );
        let route = ok(&w.sb(&[
            "routes",
            "create",
            "--hostname",
            "api.example.com",
            "--process",
            "web",
            "--port",
            "8080",
            "--proxy-protocol",
            "v2",
        ]));
        assert!(route.contains("api.example.com:443"), "{route}");
        let ev = ok(&w.sb(&["events", "--type", "RouteCreated"]));
        assert!(
            ev.contains("RouteCreated") && ev.contains("token:admin"),
            "{ev}"
        );
        ok(&w.sb(&["releases"]))
    })
    .await
    .unwrap();
    assert!(out.contains("reg/api:2"));
    let v = json(&e.run(&["--json", "secrets", "versions"]).await);
    assert_eq!(v["items"][0]["version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn envs_ipv4_enable_and_disable() {
    let pool = ControlConfig::parse(r#"ipv4_pool = ["192.0.2.10"]"#).unwrap();
    let e = start_with(|c| c.ipv4_pool = pool.ipv4_pool).await;
    let w = e.clone_handle();
    tokio::task::spawn_blocking(move || {
        ok(&w.sb(&["apps", "create", "web"]));
        ok(&w.sb(&["--app", "web", "--env", "prod", "context", "set"]));
        ok(&w.sb(&["envs", "create", "prod"]));
        ok(&w.sb(&["envs", "create", "staging"]));
        let done = ok(&w.sb(&["envs", "ipv4", "enable"]));
        assert!(
            done.contains("prod") && done.contains("192.0.2.10"),
            "{done}"
        );
        // Idempotent; --json prints the API's object.
        let v = json(&w.sb(&["--json", "envs", "ipv4", "enable"]));
        assert_eq!(v, serde_json::json!({"address": "192.0.2.10"}));
        let list = ok(&w.sb(&["envs", "list"]));
        assert!(
            list.contains("IPV4") && list.contains("192.0.2.10"),
            "{list}"
        );
        let got = ok(&w.sb(&["envs", "get", "prod"]));
        assert!(got.contains("ipv4") && got.contains("192.0.2.10"), "{got}");
        // The pool of one is used up: a conflict (exit 4) that says what to do.
        let err = fails(&w.sb(&["--env", "staging", "envs", "ipv4", "enable"]), 4);
        assert!(err.contains("add addresses to the pool"), "{err}");
        let done = ok(&w.sb(&["envs", "ipv4", "disable"]));
        assert!(done.contains("no dedicated IPv4"), "{done}");
        let v = json(&w.sb(&["--json", "envs", "get", "prod"]));
        assert_eq!(v["ipv4"], Value::Null);
        let v = json(&w.sb(&["--json", "--env", "staging", "envs", "ipv4", "enable"]));
        assert_eq!(v["address"], "192.0.2.10");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_per_error_class() {
    let e = start().await;
    let w = e.clone_handle();
    tokio::task::spawn_blocking(move || {
        // not found → 3, with JSON error on stderr
        let o = w.sb(&["--json", "apps", "get", "nope"]);
        let err: Value = serde_json::from_str(fails(&o, 3).trim()).unwrap();
        assert_eq!(
            (err["status"].as_i64(), err["code"].as_str()),
            (Some(404), Some("not_found"))
        );
        // conflict → 4
        ok(&w.sb(&["apps", "create", "dup"]));
        assert!(fails(&w.sb(&["apps", "create", "dup"]), 4).contains("already exists"));
        // invalid → 1
        assert!(fails(&w.sb(&["apps", "create", "Bad_Name"]), 1).contains("a-z"));
        // usage → 2 with a helpful message
        assert!(fails(&w.sb(&["apps", "frobnicate"]), 2).contains("unrecognized subcommand"));
        assert!(fails(&w.sb(&["envs", "list"]), 2).contains("--app"));
        assert!(fails(&w.sb(&["secrets", "set", "nope"]), 2).contains("NAME=value"));
    })
    .await
    .unwrap();
    // auth → 5
    let o = e.sb_with(&["apps", "list"], false);
    assert!(fails(&o, 5).contains("sb login"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
    let o = c
        .args(["--json", "apps", "list"])
        .env("SCALEBOX_CONFIG_DIR", e.cfg.path())
        .env("SCALEBOX_URL", &e.url)
        .env("SCALEBOX_TOKEN", "sbx_wrong")
        .output()
        .unwrap();
    let err: Value = serde_json::from_str(fails(&o, 5).trim()).unwrap();
    assert_eq!(err["status"], 401);
    // server unreachable → 6, status 0
    let o = Command::new(env!("CARGO_BIN_EXE_sb"))
        .args(["--json", "apps", "list"])
        .env("SCALEBOX_CONFIG_DIR", e.cfg.path())
        .env("SCALEBOX_URL", "http://127.0.0.1:1")
        .env("SCALEBOX_TOKEN", "x")
        .output()
        .unwrap();
    let err: Value = serde_json::from_str(fails(&o, 6).trim()).unwrap();
    assert_eq!(err["status"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_logout_and_manifest_validation() {
    let e = start().await;
    let (url, token, cfg, work) = (
        e.url.clone(),
        e.token.clone(),
        e.cfg.path().to_path_buf(),
        e.work.path().to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        let sb = |args: &[&str], stdin: Option<&str>| {
            use std::io::Write;
            let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
            c.args(args)
                .current_dir(&work)
                .env("SCALEBOX_CONFIG_DIR", &cfg)
                .env_remove("SCALEBOX_URL")
                .env_remove("SCALEBOX_TOKEN");
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = c.spawn().unwrap();
            if let Some(s) = stdin {
                child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            }
            drop(child.stdin.take());
            child.wait_with_output().unwrap()
        };
        // A wrong token is refused and nothing is saved.
        fails(
            &sb(
                &["login", "--host", &url, "--token-stdin"],
                Some("sbx_bad\n"),
            ),
            5,
        );
        assert!(!cfg.join("config").exists());
        let o = sb(
            &["login", "--host", &url, "--token-stdin"],
            Some(&format!("{token}\n")),
        );
        assert!(ok(&o).contains("Logged in"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cfg.join("config")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(ok(&sb(&["whoami"], None)).contains("admin"));
        let shown = ok(&sb(&["config", "show"], None));
        assert!(
            shown.contains(&url) && !shown.contains(&token),
            "token is not printed whole: {shown}"
        );
        ok(&sb(&["logout"], None));
        fails(&sb(&["whoami"], None), 5);

        std::fs::write(work.join("scalebox.toml"), MANIFEST).unwrap();
        assert!(ok(&sb(&["manifest", "validate"], None)).contains("valid"));
        std::fs::write(
            work.join("bad.toml"),
            "schema_version = 1\n\n[processes.web]\nprots = [1]\n",
        )
        .unwrap();
        let err = fails(&sb(&["manifest", "validate", "bad.toml"], None), 1);
        assert!(
            err.contains("bad.toml:4:1") && err.contains("prots"),
            "{err}"
        );
        let o = sb(&["--json", "manifest", "validate", "bad.toml"], None);
        fails(&o, 1);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (v["valid"].as_bool(), v["errors"][0]["line"].as_i64()),
            (Some(false), Some(4))
        );
        // Completions and man pages come from the same definitions.
        assert!(ok(&sb(&["completions", "bash"], None)).contains("sb"));
        let man = work.join("man");
        ok(&sb(&["man", "--dir", man.to_str().unwrap()], None));
        assert!(man.join("sb.1").exists() && man.join("sb-apps.1").exists());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_commands_tokens_routes_and_a_weak_role() {
    let e = start().await;
    let w = e.clone_handle();
    let url = e.url.clone();
    let cfg = e.cfg.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let as_token = |token: &str, args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_sb"))
                .args(args)
                .env("SCALEBOX_CONFIG_DIR", &cfg)
                .env("SCALEBOX_URL", &url)
                .env("SCALEBOX_TOKEN", token)
                .env_remove("SCALEBOX_JSON")
                .env_remove("SCALEBOX_ORG")
                .output()
                .unwrap()
        };
        // orgs: create (its admin token is shown once), then, as that org: list (human + JSON),
        // get, delete. Another org sees neither it nor its name; the operator org cannot go.
        let created = json(&w.sb(&["--json", "orgs", "create", "acme"]));
        let acme = created["admin_token"].as_str().unwrap().to_owned();
        assert!(ok(&as_token(&acme, &["orgs", "list"])).contains("acme"));
        let orgs = json(&as_token(&acme, &["--json", "orgs", "list"]));
        assert_eq!(orgs["items"][0]["name"], "acme", "{orgs}");
        assert_eq!(
            json(&as_token(&acme, &["--json", "orgs", "get", "acme"]))["name"],
            "acme"
        );
        fails(&w.sb(&["orgs", "get", "acme"]), 3);
        fails(&w.sb(&["orgs", "delete", "default"]), 5);
        ok(&as_token(&acme, &["orgs", "delete", "acme"]));
        fails(&as_token(&acme, &["orgs", "list"]), 5);
        // projects and apps: create, list, get, delete.
        ok(&w.sb(&["projects", "create", "shop"]));
        assert!(ok(&w.sb(&["projects", "list"])).contains("shop"));
        assert_eq!(
            json(&w.sb(&["--json", "projects", "get", "shop"]))["name"],
            "shop"
        );
        ok(&w.sb(&["apps", "create", "web", "--project", "shop"]));
        ok(&w.sb(&["--app", "web", "envs", "create", "staging"]));
        assert!(ok(&w.sb(&["--app", "web", "envs", "list"])).contains("staging"));
        // routes: create, list (human + JSON), delete.
        ok(&w.sb(&[
            "--app",
            "web",
            "--env",
            "staging",
            "routes",
            "create",
            "--hostname",
            "web.example.com",
            "--process",
            "web",
            "--port",
            "8080",
        ]));
        assert!(ok(&w.sb(&["routes", "list"])).contains("web.example.com"));
        let routes = json(&w.sb(&["--json", "routes", "list"]));
        let id = routes["items"][0]["id"].as_str().unwrap().to_owned();
        ok(&w.sb(&["routes", "delete", &id]));
        assert!(!ok(&w.sb(&["routes", "list"])).contains("web.example.com"));
        fails(&w.sb(&["routes", "delete", &id]), 3);
        // secrets: set then unset; the list no longer has it.
        ok(&w.sb(&[
            "--app", "web", "--env", "staging", "secrets", "set", "A=1", "B=2",
        ]));
        ok(&w.sb(&["--app", "web", "--env", "staging", "secrets", "unset", "A"]));
        let list = ok(&w.sb(&["--app", "web", "--env", "staging", "secrets", "list"]));
        assert!(
            list.contains('B')
                && !list
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some("A")),
            "{list}"
        );
        // deleting an env and an app; then they are not found.
        ok(&w.sb(&["--app", "web", "envs", "delete", "staging"]));
        fails(&w.sb(&["--app", "web", "envs", "get", "staging"]), 3);
        ok(&w.sb(&["apps", "delete", "web"]));
        fails(&w.sb(&["apps", "get", "web"]), 3);
        ok(&w.sb(&["projects", "delete", "shop"]));
        // context: set, show, clear.
        ok(&w.sb(&["--app", "web", "--env", "prod", "context", "set"]));
        assert!(ok(&w.sb(&["context", "show"])).contains("web"));
        ok(&w.sb(&["context", "clear"]));
        assert!(!ok(&w.sb(&["context", "show"])).contains("web"));
        // tokens: a reader token, listed, too weak to create an app (exit 5), then revoked (5).
        let t = json(&w.sb(&[
            "--json",
            "tokens",
            "create",
            "ci-reader",
            "--role",
            "reader",
        ]));
        let (tid, secret) = (
            t["id"].as_str().unwrap().to_owned(),
            t["token"].as_str().unwrap().to_owned(),
        );
        assert!(ok(&w.sb(&["tokens", "list"])).contains("ci-reader"));
        let as_reader = |args: &[&str]| as_token(&secret, args);
        ok(&as_reader(&["apps", "list"]));
        let err: Value =
            serde_json::from_str(fails(&as_reader(&["--json", "apps", "create", "x"]), 5).trim())
                .unwrap();
        assert_eq!(err["status"], 403, "{err}");
        ok(&w.sb(&["tokens", "revoke", &tid]));
        fails(&as_reader(&["apps", "list"]), 5);
    })
    .await
    .unwrap();
}
