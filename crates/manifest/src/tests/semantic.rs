//! Semantic errors: ranges, references, paths, names, each with the position of the offending key.

use super::*;

#[test]
fn schema_version_missing_or_wrong() {
    one_err(
        "[processes.web]\n",
        1,
        1,
        &["missing `schema_version`", "schema_version = 1"],
    );
    one_err(
        "schema_version = 2\n[processes.web]\n",
        1,
        18,
        &[
            "unsupported `schema_version` = 2",
            "schema_version = 1 only",
        ],
    );
}

#[test]
fn needs_a_process_type() {
    one_err(HEAD, 1, 1, &["no process types", "[processes.<name>]"]);
    one_err(&format!("{HEAD}[processes]\n"), 2, 1, &["no process types"]);
}

#[test]
fn process_type_names_are_validated() {
    one_err(
        &format!("{HEAD}[processes.Web_1]\n"),
        2,
        12,
        &["process type invalid name \"Web_1\"", "a-z, 0-9"],
    );
}

#[test]
fn resource_ranges() {
    one_err(
        &format!("{HEAD}[resources]\nmemory_mb = 32\n[processes.w]\n"),
        3,
        13,
        &["`memory_mb` = 32", "64..=65536"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\nresources = {{ memory_mb = 70000 }}\n"),
        3,
        27,
        &["64..=65536"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\nresources = {{ cpu = 0 }}\n"),
        3,
        21,
        &["`cpu` = 0", "greater than 0 and at most 64"],
    );
    one_err(
        &format!("{HEAD}[resources]\ncpu = 65\n[processes.w]\n"),
        3,
        7,
        &["at most 64"],
    );
    one_err(
        &format!("{HEAD}[resources]\ncpu = nan\n[processes.w]\n"),
        3,
        7,
        &["at most 64"],
    );
    one_err(
        &format!("{HEAD}[resources]\ncpu = -1.5\n[processes.w]\n"),
        3,
        7,
        &["`cpu` = -1.5"],
    );
}

#[test]
fn port_ranges_and_duplicates() {
    one_err(
        &format!("{HEAD}[processes.w]\nports = [0]\n"),
        3,
        10,
        &["`ports` = 0", "1..=65535"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\nports = [80, 65536]\n"),
        3,
        14,
        &["`ports` = 65536", "1..=65535"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\nports = [80, 80]\n"),
        3,
        14,
        &["port 80 is listed twice"],
    );
}

#[test]
fn scale_and_grace_ranges() {
    one_err(
        &format!("{HEAD}[processes.w]\nscale = -1\n"),
        3,
        9,
        &["`scale` = -1", "0..=1000"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\nstop_grace_s = 99999\n"),
        3,
        16,
        &["0..=3600 seconds"],
    );
    assert_eq!(
        parse(&format!("{HEAD}[processes.w]\nscale = 0\n"))
            .unwrap()
            .process("w")
            .unwrap()
            .scale,
        0
    );
}

#[test]
fn command_must_not_be_empty() {
    one_err(
        &format!("{HEAD}[processes.w]\ncommand = []\n"),
        3,
        11,
        &["non-empty list", "omit `command`"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\n[release]\ncommand = [\"\"]\n"),
        4,
        11,
        &["release `command`"],
    );
}

#[test]
fn health_port_must_be_a_process_port() {
    one_err(
        &format!(
            "{HEAD}[processes.web]\nports = [8080]\n[processes.web.health]\nkind = \"http\"\nport = 9090\n"
        ),
        6,
        8,
        &[
            "health port 9090 is not a port of process type `web`",
            "its ports are 8080",
        ],
    );
    one_err(
        &format!("{HEAD}[processes.web]\nports = [1, 2]\n[processes.web.health]\nkind = \"tcp\"\n"),
        4,
        1,
        &["needs a `port`", "its ports are 1, 2"],
    );
    one_err(
        &format!("{HEAD}[processes.web]\n[processes.web.health]\nkind = \"tcp\"\n"),
        3,
        1,
        &["needs a `port`", "it has no `ports`"],
    );
}

#[test]
fn health_fields_are_checked() {
    let base = format!("{HEAD}[processes.web]\nports = [80]\n[processes.web.health]\n");
    one_err(
        &format!("{base}kind = \"tcp\"\npath = \"/x\"\n"),
        6,
        8,
        &["only allowed with kind = \"http\""],
    );
    one_err(
        &format!("{base}kind = \"http\"\npath = \"healthz\"\n"),
        6,
        8,
        &["must start with '/'"],
    );
    one_err(
        &format!("{base}kind = \"http\"\ninterval_s = 2\ntimeout_s = 3\n"),
        7,
        13,
        &["`timeout_s` (3) must not exceed `interval_s` (2)"],
    );
    one_err(
        &format!("{base}kind = \"http\"\nunhealthy_threshold = 0\n"),
        6,
        23,
        &["1..=100"],
    );
    one_err(
        &format!("{base}kind = \"http\"\ninterval_s = 0\n"),
        6,
        14,
        &["1..=3600"],
    );
    let m = parse(&format!("{base}kind = \"http\"\n")).unwrap();
    assert_eq!(
        m.process("web")
            .unwrap()
            .health
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/")
    );
}

#[test]
fn volume_checks() {
    let base = format!("{HEAD}[processes.r]\n[[processes.r.volumes]]\n");
    one_err(
        &format!("{base}name = \"data\"\npath = \"data\"\n"),
        5,
        8,
        &["volume mount path \"data\" must be an absolute path"],
    );
    one_err(
        &format!("{base}name = \"data\"\npath = \"/a/../b\"\n"),
        5,
        8,
        &["'..'"],
    );
    one_err(
        &format!("{base}name = \"Data\"\npath = \"/d\"\n"),
        4,
        8,
        &["volume invalid name"],
    );
    one_err(
        &format!("{base}name = \"d\"\npath = \"/run\"\n"),
        5,
        8,
        &["would hide the secrets file"],
    );
    one_err(
        &format!(
            "{base}name = \"d\"\npath = \"/d\"\n[[processes.r.volumes]]\nname = \"d\"\npath = \"/e\"\n"
        ),
        7,
        8,
        &["volume `d` is mounted twice"],
    );
    one_err(
        &format!(
            "{base}name = \"d\"\npath = \"/d\"\n[[processes.r.volumes]]\nname = \"e\"\npath = \"/d\"\n"
        ),
        8,
        8,
        &["two volumes are mounted at \"/d\""],
    );
    one_err(
        &format!(
            "{HEAD}[processes.a]\nscale = 2\n[[processes.a.volumes]]\nname = \"d\"\npath = \"/d\"\n"
        ),
        3,
        9,
        &["scale` must be 0 or 1", "got 2"],
    );
    one_err(
        &format!(
            "{HEAD}[processes.a]\n[[processes.a.volumes]]\nname = \"d\"\npath = \"/d\"\n\
             [processes.b]\n[[processes.b.volumes]]\nname = \"d\"\npath = \"/d\"\n"
        ),
        8,
        8,
        &["already mounted by process type `a`"],
    );
}

#[test]
fn secrets_path_must_be_absolute() {
    one_err(
        &format!("{HEAD}[secrets]\npath = \"run/s.env\"\n[processes.w]\n"),
        3,
        8,
        &["`secrets.path`", "absolute"],
    );
}

#[test]
fn env_names_are_checked() {
    one_err(
        &format!("{HEAD}[env]\n\"1X\" = \"a\"\n[processes.w]\n"),
        3,
        1,
        &["\"1X\" is invalid"],
    );
    one_err(
        &format!("{HEAD}[env]\nSCALEBOX_X = \"a\"\n[processes.w]\n"),
        3,
        1,
        &["reserved prefix"],
    );
}

#[test]
fn route_checks() {
    let base = format!("{HEAD}[processes.web]\nports = [8080]\n[[routes]]\n");
    one_err(
        &format!("{base}process = \"api\"\nkind = \"tcp\"\nbackend_port = 8080\n"),
        5,
        11,
        &["route targets process type `api`, which is not defined (defined: web)"],
    );
    one_err(
        &format!("{base}process = \"web\"\nkind = \"tls\"\nbackend_port = 8080\n"),
        4,
        1,
        &["needs a `hostname`"],
    );
    one_err(
        &format!(
            "{base}process = \"web\"\nkind = \"tls\"\nhostname = \"API.x\"\nbackend_port = 8080\n"
        ),
        7,
        12,
        &["route hostname \"API.x\" is invalid"],
    );
    one_err(
        &format!("{base}process = \"web\"\nkind = \"tcp\"\nbackend_port = 9000\n"),
        7,
        16,
        &["backend_port 9000 is not a port of process type `web`"],
    );
    one_err(
        &format!("{base}process = \"web\"\nkind = \"tcp\"\nport = 70000\nbackend_port = 8080\n"),
        7,
        8,
        &["1..=65535"],
    );
    let two = |a: &str, b: &str| {
        format!(
            "{HEAD}[processes.web]\nports = [8080]\n[[routes]]\nprocess = \"web\"\nbackend_port = 8080\n{a}\n\
             [[routes]]\nprocess = \"web\"\nbackend_port = 8080\n{b}\n"
        )
    };
    one_err(
        &two(
            "kind = \"tls\"\nhostname = \"a.b\"",
            "kind = \"tls\"\nhostname = \"a.b\"",
        ),
        13,
        12,
        &["two tls routes for hostname \"a.b\" on port 443"],
    );
    one_err(
        &two("kind = \"tcp\"\nport = 5000", "kind = \"tcp\"\nport = 5000"),
        13,
        8,
        &["two tcp routes listen on port 5000"],
    );
    one_err(
        &two(
            "kind = \"tls\"\nhostname = \"a.b\"",
            "kind = \"tcp\"\nport = 443",
        ),
        13,
        8,
        &["tcp route port 443 is also used by a tls route"],
    );
    // different hostnames on one port, and tcp routes with allocated ports, are fine
    parse(&two(
        "kind = \"tls\"\nhostname = \"a.b\"",
        "kind = \"tls\"\nhostname = \"c.d\"",
    ))
    .unwrap();
    parse(&two("kind = \"tcp\"", "kind = \"tcp\"")).unwrap();
}

#[test]
fn semantic_errors_are_all_reported_in_order() {
    let e = err("schema_version = 3\n[resources]\nmemory_mb = 1\n[processes.Bad]\nports = [0]\n");
    let pos: Vec<(usize, usize)> = e.errors().iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(pos, [(1, 18), (3, 13), (4, 12), (5, 10)], "{e}");
    let shown = e.with_file("x/scalebox.toml").to_string();
    assert_eq!(shown.lines().count(), 4);
    assert!(
        shown.starts_with("x/scalebox.toml:1:18: unsupported"),
        "{shown}"
    );
}
