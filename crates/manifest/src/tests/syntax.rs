//! TOML syntax, unknown-field, enum and type errors: each with its position.

use super::*;

#[test]
fn toml_syntax_error_has_position() {
    one_err(
        &format!("{HEAD}[processes.web\n"),
        2,
        15,
        &["unclosed table"],
    );
    one_err(
        &format!("{HEAD}[processes.web]\nports = [80,\n"),
        3,
        13,
        &["unclosed array"],
    );
}

#[test]
fn unknown_top_level_field_lists_allowed() {
    one_err(
        &format!("{HEAD}[processes.web]\n[rsources]\ncpu = 1\n"),
        3,
        2,
        &[
            "unknown field `rsources`",
            "`resources`",
            "`processes`",
            "`routes`",
        ],
    );
}

#[test]
fn unknown_field_in_process_lists_allowed() {
    one_err(
        &format!("{HEAD}[processes.web]\ncommand = [\"x\"]\nprots = [8080]\n"),
        4,
        1,
        &[
            "unknown field `prots`",
            "expected one of `command`, `ports`",
            "`health`",
        ],
    );
}

#[test]
fn unknown_field_in_nested_tables() {
    one_err(
        &format!(
            "{HEAD}[processes.web]\nports = [1]\n[processes.web.health]\nkind = \"tcp\"\n  intervall_s = 3\n"
        ),
        6,
        3,
        &[
            "unknown field `intervall_s`",
            "`interval_s`",
            "`unhealthy_threshold`",
        ],
    );
    one_err(
        &format!("{HEAD}[processes.web]\nresources = {{ cpu = 2, mem = 512 }}\n"),
        3,
        24,
        &["unknown field `mem`", "expected `cpu` or `memory_mb`"],
    );
    one_err(
        &format!(
            "{HEAD}[processes.r]\n[[processes.r.volumes]]\nname = \"v\"\npath = \"/d\"\nsize = 1\n"
        ),
        6,
        1,
        &["unknown field `size`", "`name` or `path`"],
    );
    one_err(
        &format!(
            "{HEAD}[processes.w]\n[[routes]]\nprocess = \"w\"\nkind = \"tcp\"\nbackend_port = 1\nproxy = \"v2\"\n"
        ),
        7,
        1,
        &["unknown field `proxy`", "`proxy_protocol`"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\n[secrets]\nfile = \"/x\"\n"),
        4,
        1,
        &["unknown field `file`", "`path` or `as_env`"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\n[release]\ncommand = [\"m\"]\ntimeout = 3\n"),
        5,
        1,
        &["unknown field `timeout`", "`timeout_s`"],
    );
}

#[test]
fn bad_enum_values_list_allowed_values() {
    one_err(
        &format!("{HEAD}[processes.web]\nports = [1]\n[processes.web.health]\nkind = \"htp\"\n"),
        5,
        8,
        &["unknown variant `htp`", "`tcp` or `http`"],
    );
    one_err(
        &format!(
            "{HEAD}[processes.w]\n[[routes]]\nprocess = \"w\"\nkind = \"udp\"\nbackend_port = 1\n"
        ),
        5,
        8,
        &["unknown variant `udp`", "`tls` or `tcp`"],
    );
    one_err(
        &format!(
            "{HEAD}[processes.w]\nports=[1]\n[[routes]]\nprocess = \"w\"\nkind = \"tcp\"\nbackend_port = 1\nproxy_protocol = \"v1\"\n"
        ),
        8,
        18,
        &["unknown variant `v1`", "`off` or `v2`"],
    );
}

#[test]
fn wrong_types_have_position() {
    one_err(
        &format!("{HEAD}[processes.web]\nports = \"8080\"\n"),
        3,
        9,
        &["invalid type", "expected a sequence"],
    );
    one_err(
        &format!("{HEAD}[processes.web]\nscale = \"2\"\n"),
        3,
        9,
        &["invalid type"],
    );
    one_err(
        &format!("{HEAD}[env]\nPORT = 8080\n[processes.web]\n"),
        3,
        8,
        &["invalid type", "string"],
    );
    one_err(
        &format!("{HEAD}[secrets]\nas_env = \"yes\"\n[processes.web]\n"),
        3,
        10,
        &["invalid type", "boolean"],
    );
    one_err(&format!("{HEAD}processes = 3\n"), 2, 13, &["invalid type"]);
}

#[test]
fn missing_required_fields() {
    one_err(
        &format!("{HEAD}[processes.web]\nports = [1]\n[processes.web.health]\nport = 1\n"),
        4,
        1,
        &["missing field `kind`"],
    );
    one_err(
        &format!("{HEAD}[processes.w]\n[[routes]]\nprocess = \"w\"\nkind = \"tcp\"\n"),
        3,
        1,
        &["missing field `backend_port`"],
    );
}

#[test]
fn hostile_input_gives_errors_not_panics() {
    let deep = format!(
        "{HEAD}x = {}1{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse(&deep).is_err());
    let deep_inline = format!("{HEAD}x = {}\n", "{a=".repeat(50_000));
    assert!(parse(&deep_inline).is_err());
    for junk in [
        "\0",
        "\u{feff}",
        "[",
        "=",
        "\"",
        "a.b.c.d = 1\n[a]\n",
        "[processes.web]\n[processes.web]\n",
    ] {
        assert!(parse(junk).is_err(), "{junk:?}");
    }
    one_err(
        &format!("{HEAD}[processes.web]\n[processes.web]\n"),
        3,
        12,
        &["duplicate key"],
    );
}
