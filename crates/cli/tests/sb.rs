//! The real `sb` binary against a real control plane (real Postgres), no hosts or guests: the
//! human and the `--json` output of the everyday commands (whoami, config show, login/logout,
//! contexts, orgs, projects, apps, envs, tokens, routes, volumes create/list, secrets, releases,
//! events, scale/stop/start of an env with no host, man), exit codes per error class, manifest
//! errors with line/column, bad flags, an env's dedicated IPv4. tests/coverage.rs checks that
//! every leaf command runs in both forms here or in another real-server test.

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

/// The token a human `create` printed on a line of its own.
fn shown_token(created: &str) -> String {
    created
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sbx_"))
        .unwrap_or_else(|| panic!("no token in {created}"))
        .to_owned()
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
        let who = json(&w.sb(&["--json", "whoami"]));
        assert_eq!(
            (
                who["org"].as_str(),
                who["role"].as_str(),
                who["operator"].as_bool()
            ),
            (Some("default"), Some("admin"), Some(true)),
            "{who}"
        );
        assert!(
            who["actor"].as_str().is_some_and(|a| !a.is_empty()),
            "{who}"
        );
        let created = ok(&w.sb(&["apps", "create", "api", "--description", "the API"]));
        assert_eq!(created.trim(), "Created app api.");
        let jobs = json(&w.sb(&["--json", "apps", "create", "jobs", "--description", "batch"]));
        assert_eq!(
            (
                jobs["name"].as_str(),
                jobs["description"].as_str(),
                jobs["release_count"].as_i64(),
                jobs["project"].is_null()
            ),
            (Some("jobs"), Some("batch"), Some(0), true),
            "{jobs}"
        );
        let list = ok(&w.sb(&["apps", "list"]));
        assert!(list.starts_with("NAME") && list.contains("api"), "{list}");
        // --json before or after the verb.
        let a = serde_json::from_str::<Value>(&ok(&w.sb(&["--json", "apps", "list"]))).unwrap();
        let b = serde_json::from_str::<Value>(&ok(&w.sb(&["apps", "list", "--json"]))).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["items"][0]["name"], "api");
        // Context per directory.
        let saved = ok(&w.sb(&["--app", "api", "--env", "prod", "context", "set"]));
        assert!(
            saved.starts_with(&format!("Context saved for {}", w.work.display()))
                && saved.contains("api")
                && saved.contains("prod"),
            "{saved}"
        );
        let ctx = ok(&w.sb(&["context", "show"]));
        assert!(ctx.contains("api") && ctx.contains("prod"), "{ctx}");
        assert_eq!(
            json(&w.sb(&["--json", "context", "show"])),
            serde_json::json!({"app": "api", "env": "prod"})
        );
        // `apps get` without a name: the app of the context.
        let shown = ok(&w.sb(&["apps", "get"]));
        for want in [
            &["name", "api"][..],
            &["description", "the", "API"],
            &["releases", "0"],
        ] {
            assert!(
                shown
                    .lines()
                    .any(|l| l.split_whitespace().eq(want.iter().copied())),
                "{want:?} in:\n{shown}"
            );
        }
        let got = json(&w.sb(&["--json", "apps", "get", "jobs"]));
        assert_eq!(got, jobs, "the same object as created");
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
        let v = json(&w.sb(&["--json", "secrets", "render", "B=line1\nline2", "A=x\\y"]));
        assert_eq!(v, serde_json::json!({"content": rendered}));
        // --json: the API's secrets object (names and version, never values).
        let v = json(&w.sb(&["--json", "secrets", "set", "EXTRA=hush"]));
        assert_eq!(
            (v["app"].as_str(), v["env"].as_str(), v["version"].as_i64()),
            (Some("api"), Some("prod"), Some(2)),
            "{v}"
        );
        assert_eq!(v["names"], serde_json::json!(["DB_URL", "EXTRA", "TOKEN"]));
        assert!(!v.to_string().contains("hush"), "{v}");
        let v = json(&w.sb(&["--json", "secrets", "unset", "EXTRA"]));
        assert_eq!(
            (v["version"].as_i64(), &v["names"]),
            (Some(3), &serde_json::json!(["DB_URL", "TOKEN"])),
            "{v}"
        );
        let v = json(&w.sb(&["--json", "secrets", "list"]));
        assert_eq!(
            (v["version"].as_i64(), &v["names"]),
            (Some(3), &serde_json::json!(["DB_URL", "TOKEN"])),
            "{v}"
        );
        let done = ok(&w.sb(&["secrets", "unset", "TOKEN"]));
        assert_eq!(done.trim(), "Secrets version 4: removed TOKEN.");
        let versions = ok(&w.sb(&["secrets", "versions"]));
        let rows: Vec<Vec<&str>> = versions
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["VERSION", "NAMES", "ACTOR", "CREATED"],
            "{versions}"
        );
        assert_eq!(
            rows[1..].iter().map(|r| (r[0], r[1])).collect::<Vec<_>>(),
            [
                ("4", "DB_URL"),
                ("3", "DB_URL,TOKEN"),
                ("2", "DB_URL,EXTRA,TOKEN"),
                ("1", "DB_URL,TOKEN")
            ],
            "{versions}"
        );
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
        let diff = ok(&w.sb(&["releases", "diff", "1", "v2"]));
        assert!(
            diff.contains(&format!("image_digest: \"{digest}\" → \"{digest2}\""))
                && diff.contains("manifest.processes.web.ports: [8080] → [9090]"),
            "{diff}"
        );
        assert_eq!(
            ok(&w.sb(&["releases", "diff", "2", "2"])).trim(),
            "v2 and v2 are identical (image and manifest)."
        );
        let list = ok(&w.sb(&["releases", "list"]));
        let rows: Vec<Vec<&str>> = list
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["NUMBER", "IMAGE", "DIGEST", "MANIFEST", "CREATED"],
            "{list}"
        );
        let (image1, image2) = (
            format!("reg/api:1@{digest}"),
            format!("reg/api:2@{digest2}"),
        );
        assert_eq!(
            rows[1..].iter().map(|r| &r[..3]).collect::<Vec<_>>(),
            [
                ["2", image2.as_str(), digest2.as_str()],
                ["1", image1.as_str(), digest.as_str()]
            ],
            "{list}"
        );
        let got = ok(&w.sb(&["releases", "get", "2"]));
        for want in [["number", "2"], ["image", &image2], ["digest", &digest2]] {
            assert!(
                got.lines().any(|l| l.split_whitespace().eq(want)),
                "{want:?} in:\n{got}"
            );
        }
        // Scale, stop and start an env whose deployment has no host to run on: each is
        // accepted at once and says so.
        ok(&w.sb(&["deploy", "--no-wait"]));
        let scaled = ok(&w.sb(&["scale", "web=2"]));
        assert_eq!(
            scaled.trim(),
            "Scaling api/prod: web=2; follow it with `sb ps`."
        );
        assert_eq!(
            json(&w.sb(&["--json", "stop"])),
            serde_json::json!({"stopped": true})
        );
        let started = ok(&w.sb(&["start"]));
        assert_eq!(started.trim(), "Starting api/prod; follow it with `sb ps`.");
        // Volumes: --json is the API's object; the table has it.
        let vol = json(&w.sb(&["--json", "volumes", "create", "data", "--size-gb", "2"]));
        assert_eq!(
            (
                vol["name"].as_str(),
                vol["size_gb"].as_i64(),
                vol["app"].as_str(),
                vol["env"].as_str(),
                vol["host"].is_null()
            ),
            (Some("data"), Some(2), Some("api"), Some("prod"), true),
            "{vol}"
        );
        let vols = ok(&w.sb(&["volumes", "list"]));
        let rows: Vec<Vec<&str>> = vols
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["NAME", "SIZE-GB", "APP", "ENV", "HOST"],
                vec!["data", "2", "api", "prod", "-"]
            ],
            "{vols}"
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
        assert!(
            route.starts_with("Created route ")
                && !route.contains(" : ")
                && route
                    .trim_end()
                    .ends_with(": api.example.com:443 → prod/web port 8080."),
            "{route}"
        );
        let tcp = json(&w.sb(&[
            "--json",
            "routes",
            "create",
            "--tcp",
            "--process",
            "web",
            "--port",
            "5432",
        ]));
        assert_eq!(
            (
                tcp["kind"].as_str(),
                tcp["app"].as_str(),
                tcp["env"].as_str(),
                tcp["process_type"].as_str(),
                tcp["backend_port"].as_i64(),
                tcp["hostname"].is_null(),
                tcp["proxy_protocol_v2"].as_bool()
            ),
            (
                Some("tcp"),
                Some("api"),
                Some("prod"),
                Some("web"),
                Some(5432),
                true,
                Some(false)
            ),
            "{tcp}"
        );
        assert!(
            tcp["listener_port"].as_i64().is_some_and(|p| p > 0),
            "{tcp}"
        );
        let ev = ok(&w.sb(&["events", "--type", "RouteCreated"]));
        assert!(
            ev.starts_with("SEQ") && ev.contains("RouteCreated") && ev.contains("token:admin"),
            "{ev}"
        );
        assert!(!ev.contains("(more:"), "one page: {ev}");
        let page = json(&w.sb(&["--json", "events", "--type", "RouteCreated"]));
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{page}");
        assert!(page["next_after"].is_null(), "{page}");
        for e in events {
            assert_eq!(e["type"], "RouteCreated", "{e}");
            assert!(
                e["actor"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("token:admin")),
                "{e}"
            );
            assert!(
                e["seq"].as_i64().is_some() && e["occurred_at"].is_string(),
                "{e}"
            );
        }
        assert_eq!(
            events[0]["payload"]["hostname"], "api.example.com",
            "{page}"
        );
        assert_eq!(events[1]["payload"]["kind"], "tcp", "{page}");
        // A page that is full says how to get the next one, with the same filters.
        let first = events[0]["seq"].as_i64().unwrap();
        let ev = ok(&w.sb(&["events", "--type", "RouteCreated", "--limit", "1"]));
        assert!(
            ev.trim_end().ends_with(&format!(
                "(more: sb events --type RouteCreated --limit 1 --after {first})"
            )),
            "{ev}"
        );
        ok(&w.sb(&["releases"]))
    })
    .await
    .unwrap();
    assert!(out.contains("reg/api:2"));
    let v = json(&e.run(&["--json", "secrets", "versions"]).await);
    assert_eq!(v["items"][0]["version"], 4);
    assert_eq!(
        v["items"][3]["names"],
        serde_json::json!(["DB_URL", "TOKEN"])
    );
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
        let v = json(&w.sb(&["--json", "--env", "staging", "envs", "ipv4", "disable"]));
        assert_eq!(v, serde_json::json!({"env": "staging", "address": null}));
        assert_eq!(
            json(&w.sb(&["--json", "envs", "get", "staging"]))["ipv4"],
            Value::Null
        );
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
        let v = json(&sb(&["--json", "config", "show"], None));
        assert_eq!(
            (
                v["url"].as_str(),
                v["url_from"].as_str(),
                v["token_from"].as_str(),
                v["config_dir"].as_str()
            ),
            (
                Some(url.as_str()),
                Some("config file"),
                Some("config file"),
                cfg.to_str()
            ),
            "{v}"
        );
        let shown_token = v["token"].as_str().unwrap();
        assert!(
            shown_token.ends_with('…') && token.starts_with(shown_token.trim_end_matches('…')),
            "only the token's start: {v}"
        );
        assert!(!v.to_string().contains(&token), "{v}");
        assert_eq!(
            ok(&sb(&["logout"], None)).trim(),
            "Logged out (token removed)."
        );
        fails(&sb(&["whoami"], None), 5);
        // --json: login says who the token is; logout whether there was one.
        let v = json(&sb(
            &["--json", "login", "--host", &url, "--token-stdin"],
            Some(&format!("{token}\n")),
        ));
        assert_eq!(
            (
                v["status"].as_i64(),
                v["host"].as_str(),
                v["whoami"]["org"].as_str(),
                v["whoami"]["role"].as_str()
            ),
            (
                Some(200),
                Some(url.as_str()),
                Some("default"),
                Some("admin")
            ),
            "{v}"
        );
        assert!(!v.to_string().contains(&token), "{v}");
        assert_eq!(
            json(&sb(&["--json", "logout"], None)),
            serde_json::json!({"logged_out": true})
        );
        assert_eq!(
            json(&sb(&["--json", "logout"], None)),
            serde_json::json!({"logged_out": false})
        );
        assert_eq!(
            ok(&sb(&["logout"], None)).trim(),
            "Not logged in; nothing to do."
        );
        fails(&sb(&["whoami"], None), 5);

        std::fs::write(work.join("scalebox.toml"), MANIFEST).unwrap();
        let valid = ok(&sb(&["manifest", "validate"], None));
        assert!(
            valid.starts_with("scalebox.toml: valid (process types: web; hash sha256:"),
            "{valid}"
        );
        let v = json(&sb(&["--json", "manifest", "validate"], None));
        assert_eq!(
            (
                v["valid"].as_bool(),
                v["file"].as_str(),
                &v["process_types"]
            ),
            (
                Some(true),
                Some("scalebox.toml"),
                &serde_json::json!(["web"])
            ),
            "{v}"
        );
        assert!(
            v["content_hash"]
                .as_str()
                .is_some_and(|h| valid.contains(h) && h.starts_with("sha256:")),
            "{v}"
        );
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
        let written = ok(&sb(&["man", "--dir", man.to_str().unwrap()], None));
        assert!(man.join("sb.1").exists() && man.join("sb-apps.1").exists());
        assert!(
            written
                .trim_end()
                .ends_with(&format!("man pages written to {}", man.display())),
            "{written}"
        );
        let man2 = work.join("man2");
        let v = json(&sb(
            &["--json", "man", "--dir", man2.to_str().unwrap()],
            None,
        ));
        assert_eq!(v["dir"], man2.to_str().unwrap(), "{v}");
        let pages: Vec<&str> = v["pages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            pages.contains(&"sb.1") && pages.contains(&"sb-secrets-render.1"),
            "{pages:?}"
        );
        for p in &pages {
            assert!(man2.join(p).is_file(), "{p}");
        }
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
        assert_eq!(
            ok(&as_token(&acme, &["orgs", "delete", "acme"])).trim(),
            "Deleted org acme."
        );
        fails(&as_token(&acme, &["orgs", "list"]), 5);
        // The human form: the token on a line of its own; `orgs get` without a name is the
        // token's org; --json delete says which.
        let created = ok(&w.sb(&["orgs", "create", "beta"]));
        assert!(
            created.starts_with("Created org beta. Its admin token (shown once, store it now):"),
            "{created}"
        );
        let beta = shown_token(&created);
        let shown = ok(&as_token(&beta, &["orgs", "get"]));
        for want in [["name", "beta"], ["operator", "false"]] {
            assert!(
                shown.lines().any(|l| l.split_whitespace().eq(want)),
                "{want:?} in:\n{shown}"
            );
        }
        assert_eq!(
            json(&as_token(&beta, &["--json", "orgs", "delete", "beta"])),
            serde_json::json!({"deleted": "beta"})
        );
        fails(&as_token(&beta, &["orgs", "get"]), 5);
        // projects and apps: create, list, get, delete.
        assert_eq!(
            ok(&w.sb(&["projects", "create", "shop"])).trim(),
            "Created project shop."
        );
        assert!(ok(&w.sb(&["projects", "list"])).contains("shop"));
        assert_eq!(
            json(&w.sb(&["--json", "projects", "get", "shop"]))["name"],
            "shop"
        );
        let p = json(&w.sb(&["--json", "projects", "create", "tools"]));
        assert_eq!(p["name"], "tools", "{p}");
        let shown = ok(&w.sb(&["projects", "get", "tools"]));
        assert!(
            shown
                .lines()
                .any(|l| l.split_whitespace().eq(["name", "tools"]))
                && shown.contains(p["id"].as_str().unwrap()),
            "{shown}"
        );
        let names = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let list = json(&w.sb(&["--json", "projects", "list"]));
        assert_eq!(names(&list), ["shop", "tools"], "{list}");
        assert_eq!(
            json(&w.sb(&["--json", "projects", "delete", "tools"])),
            serde_json::json!({"deleted": "tools"})
        );
        assert_eq!(
            names(&json(&w.sb(&["--json", "projects", "list"]))),
            ["shop"]
        );
        ok(&w.sb(&["apps", "create", "web", "--project", "shop"]));
        assert_eq!(
            ok(&w.sb(&["--app", "web", "envs", "create", "staging"])).trim(),
            "Created environment staging of app web."
        );
        assert!(ok(&w.sb(&["--app", "web", "envs", "list"])).contains("staging"));
        let qa = json(&w.sb(&["--json", "--app", "web", "envs", "create", "qa"]));
        assert_eq!(
            (
                qa["name"].as_str(),
                qa["app"].as_str(),
                qa["secrets_version"].as_i64()
            ),
            (Some("qa"), Some("web"), Some(0)),
            "{qa}"
        );
        let list = json(&w.sb(&["--json", "--app", "web", "envs", "list"]));
        assert_eq!(names(&list), ["qa", "staging"], "{list}");
        assert_eq!(
            json(&w.sb(&["--json", "--app", "web", "envs", "delete", "qa"])),
            serde_json::json!({"deleted": "qa"})
        );
        fails(&w.sb(&["--app", "web", "envs", "get", "qa"]), 3);
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
        assert_eq!(
            ok(&w.sb(&["routes", "delete", &id])).trim(),
            format!("Deleted route {id}.")
        );
        assert!(!ok(&w.sb(&["routes", "list"])).contains("web.example.com"));
        fails(&w.sb(&["routes", "delete", &id]), 3);
        let r = json(&w.sb(&[
            "--json",
            "--app",
            "web",
            "--env",
            "staging",
            "routes",
            "create",
            "--hostname",
            "b.example.com",
            "--process",
            "web",
            "--port",
            "8080",
        ]));
        let id = r["id"].as_str().unwrap().to_owned();
        assert_eq!(
            json(&w.sb(&["--json", "routes", "delete", &id])),
            serde_json::json!({"deleted": id})
        );
        assert_eq!(
            json(&w.sb(&["--json", "routes", "list"]))["items"],
            serde_json::json!([])
        );
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
        assert_eq!(
            ok(&w.sb(&["apps", "delete", "web"])).trim(),
            "Deleted app web."
        );
        fails(&w.sb(&["apps", "get", "web"]), 3);
        ok(&w.sb(&["apps", "create", "tmp"]));
        assert_eq!(
            json(&w.sb(&["--json", "apps", "delete", "tmp"])),
            serde_json::json!({"deleted": "tmp"})
        );
        fails(&w.sb(&["apps", "get", "tmp"]), 3);
        assert_eq!(
            ok(&w.sb(&["projects", "delete", "shop"])).trim(),
            "Deleted project shop."
        );
        // context: set, show, clear (human and --json).
        ok(&w.sb(&["--app", "web", "--env", "prod", "context", "set"]));
        assert!(ok(&w.sb(&["context", "show"])).contains("web"));
        let cleared = ok(&w.sb(&["context", "clear"]));
        assert!(
            cleared.starts_with("Cleared the context of /") && cleared.trim_end().ends_with('.'),
            "{cleared}"
        );
        assert!(!ok(&w.sb(&["context", "show"])).contains("web"));
        // Clearing again says there was nothing, and --json says so too.
        let again = ok(&w.sb(&["context", "clear"]));
        assert!(
            again.starts_with("Nothing to clear: the context of /"),
            "{again}"
        );
        assert_eq!(
            json(&w.sb(&["--json", "context", "clear"])),
            serde_json::json!({"cleared": false})
        );
        let v = json(&w.sb(&["--json", "--app", "api", "context", "set", "--global"]));
        assert_eq!(v, serde_json::json!({"app": "api"}));
        assert_eq!(
            json(&w.sb(&["--json", "context", "show"])),
            serde_json::json!({"app": "api"})
        );
        assert_eq!(
            json(&w.sb(&["--json", "context", "clear", "--global"])),
            serde_json::json!({"cleared": true})
        );
        assert_eq!(
            json(&w.sb(&["--json", "context", "show"])),
            serde_json::json!({})
        );
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
        assert_eq!(
            ok(&w.sb(&["tokens", "revoke", &tid])).trim(),
            format!("Revoked token {tid}.")
        );
        fails(&as_reader(&["apps", "list"]), 5);
        // Human create: the token on a line of its own, once; --json list: never the secret.
        let created = ok(&w.sb(&["tokens", "create", "ci-deploy", "--role", "deployer"]));
        assert!(
            created.starts_with("Created deployer token ci-deploy (shown once, store it now):"),
            "{created}"
        );
        let deployer = shown_token(&created);
        assert!(ok(&as_token(&deployer, &["whoami"])).contains("deployer"));
        let list = json(&w.sb(&["--json", "tokens", "list"]));
        let listed = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "ci-deploy")
            .unwrap_or_else(|| panic!("ci-deploy in {list}"))
            .clone();
        assert_eq!(listed["role"], "deployer", "{listed}");
        assert!(
            deployer.starts_with(listed["prefix"].as_str().unwrap()),
            "{listed}"
        );
        assert!(
            !list.to_string().contains(&deployer) && !list.to_string().contains(&secret),
            "{list}"
        );
        assert!(
            !list["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["id"] == tid.as_str()),
            "a revoked token is not listed: {list}"
        );
        let did = listed["id"].as_str().unwrap().to_owned();
        assert_eq!(
            json(&w.sb(&["--json", "tokens", "revoke", &did])),
            serde_json::json!({"revoked": did})
        );
        fails(&as_token(&deployer, &["whoami"]), 5);
    })
    .await
    .unwrap();
}
