//! Coverage guard for the real-server `sb` tests: every leaf command of the real `sb` binary
//! (its clap tree, walked through `sb [PATH] --help`) must be run, expecting success, in human
//! form and in `--json` form by one of the files in [`REAL_SERVER_TESTS`] (the real `sb` against
//! a real control plane on real Postgres; the stand-in servers of vm.rs, volumes.rs, upload.rs
//! and registry.rs do not count). What cannot be, and why, is in [`EXEMPT`].
//!
//! The test files are read, not run: a run of `sb` is an array literal of string literals
//! (`&["secrets", "list"]`, `.args(["login", …])`) whose first words after global flags
//! (`--json`, `--app X`, `--env X`, `--org X`) are a leaf command's path. It is in `--json`
//! form when the array holds `"--json"`, is passed to a helper whose name ends in `json`
//! (`sb.json(&[…])`, `w.sb_json(&[…])`: they prepend it), or is one of the cases of a
//! `for … in [ … ] { … }` loop whose body adds `"--json"`; in human form otherwise. A run
//! inside a call to `fails…(…)`, kept in a `let o = …;` whose next use is inside one, or a
//! case of a loop whose body only checks failures expects an error and does not count: the
//! point is the command's output. (Reading source, the guard cannot tell a test that never
//! runs, e.g. `#[ignore]`d: keep the real-server tests running in CI.)
//!
//! The guard fails listing each missing (command, form) with where to add it, each exemption
//! that is no longer needed, and each exemption naming no command.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The tests that run the real `sb` against a real control plane (paths from the workspace
/// root). e2e_vms.rs and e2e_qemu.rs boot guests; the others do not.
const REAL_SERVER_TESTS: &[&str] = &[
    "crates/cli/tests/sb.rs",
    "crates/cli/tests/upload_real.rs",
    "crates/scaleboxd/tests/sb_errors.rs",
    "crates/scaleboxd/tests/sb_deploy.rs",
    "crates/scaleboxd/tests/sb_volumes.rs",
    "crates/scaleboxd/tests/e2e_vms.rs",
    "crates/scaleboxd/tests/e2e_qemu.rs",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Form {
    Human,
    Json,
}

use Form::{Human, Json};

/// (command path, form, why it is not run in that form against a real server). Each entry is
/// checked: one that names no leaf command, or a form that is now run, fails the guard.
const EXEMPT: &[(&str, Form, &str)] = &[
    // No JSON form. `sb completions` prints a shell script (from the clap definitions, no
    // server; the human form is checked in sb.rs), whatever `--json` says.
    (
        "completions",
        Json,
        "prints a shell script: there is nothing to put in JSON",
    ),
    // `sb connect` replaces itself with mosh or ssh (exec): nothing of sb's own is printed
    // that JSON could hold. Its human form runs in e2e_vms.rs (ssh and mosh), its `--json`
    // errors in sb_errors.rs.
    (
        "connect",
        Json,
        "replaces itself with mosh/ssh: no output of its own to print as JSON",
    ),
    // Covered through an equivalent command, to boot no more guests: `sb run` and `sb go`
    // share their code (create, wait for SSH, replace themselves with mosh/ssh; `go` is `run`
    // with every default). e2e_vms.rs runs `sb run` off a terminal (human) and `sb --json go`
    // on one (the create's JSON, then mosh); their errors, both forms, are in sb_errors.rs.
    (
        "run",
        Json,
        "same path as `sb --json go` (e2e_vms.rs); another run would boot another guest",
    ),
    (
        "go",
        Human,
        "`sb run` with every default: `sb run` runs in human form in e2e_vms.rs, and a plain \
         `sb go` needs a terminal for mosh",
    ),
];

/// Where a run of `sb` was found.
#[derive(Clone, Debug)]
struct Site {
    file: &'static str,
    line: usize,
}

#[test]
fn every_leaf_command_runs_against_a_real_server_in_human_and_json_form() {
    let leaves = leaf_commands();
    assert!(
        leaves.len() > 50 && leaves.iter().any(|l| l == "secrets list"),
        "the command tree read from `sb --help` looks wrong: {leaves:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut found: BTreeMap<(String, Form), Vec<Site>> = BTreeMap::new();
    let mut only_failing: BTreeMap<(String, Form), Vec<Site>> = BTreeMap::new();
    for file in REAL_SERVER_TESTS {
        let path = root.join(file);
        let src = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}): update REAL_SERVER_TESTS in {}",
                path.display(),
                file!()
            )
        });
        for run in runs(&src) {
            let Some(leaf) = leaf_of(&run.words, &leaves) else {
                continue;
            };
            let site = Site {
                file,
                line: run.line,
            };
            for form in run.forms() {
                let map = if run.expects_failure {
                    &mut only_failing
                } else {
                    &mut found
                };
                map.entry((leaf.clone(), form))
                    .or_default()
                    .push(site.clone());
            }
        }
    }

    let exempt = |leaf: &str, form: Form| {
        EXEMPT
            .iter()
            .find(|(l, f, _)| *l == leaf && *f == form)
            .map(|(_, _, why)| *why)
    };
    let mut problems = Vec::new();
    for leaf in &leaves {
        for form in [Human, Json] {
            let covered = found.get(&(leaf.clone(), form));
            match (covered, exempt(leaf, form)) {
                (None, None) => {
                    let failing = only_failing
                        .get(&(leaf.clone(), form))
                        .map(|s| {
                            format!(
                                " (only expecting an error: {})",
                                s.iter()
                                    .map(|s| format!("{}:{}", s.file, s.line))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                        .unwrap_or_default();
                    problems.push(format!(
                        "`sb {}{leaf}` is never run successfully against a real server{failing}",
                        if form == Json { "--json " } else { "" },
                    ));
                }
                (Some(sites), Some(_)) => problems.push(format!(
                    "`sb {leaf}` ({form:?}) is exempted but now run at {}:{}: drop its EXEMPT entry",
                    sites[0].file, sites[0].line
                )),
                _ => {}
            }
        }
    }
    for (leaf, form, _) in EXEMPT {
        if !leaves.iter().any(|l| l == leaf) {
            problems.push(format!(
                "EXEMPT names `sb {leaf}` ({form:?}), which is not a leaf command of sb: drop or fix it"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} gap(s) in the real-server sb tests:\n  - {}\n\nRun the command (expecting success) in \
         its human form and with --json, asserting what it prints, in crates/cli/tests/sb.rs \
         (no guests; extend an existing test rather than starting another control plane), or \
         in another of REAL_SERVER_TESTS; or, when a form makes no sense, add it to EXEMPT in \
         {} saying why.",
        problems.len(),
        problems.join("\n  - "),
        file!()
    );
}

/// Every leaf command of the real `sb` binary, as its words joined by spaces (`secrets list`).
fn leaf_commands() -> Vec<String> {
    fn walk(path: &mut Vec<String>, out: &mut Vec<String>) {
        let o = Command::new(env!("CARGO_BIN_EXE_sb"))
            .args(path.iter())
            .arg("--help")
            .env_remove("SCALEBOX_JSON")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "sb {path:?} --help failed: {help}");
        let subs: Vec<String> = help
            .lines()
            .skip_while(|l| l.trim() != "Commands:")
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_owned)
            .collect();
        if subs.is_empty() {
            out.push(path.join(" "));
        }
        for s in subs {
            path.push(s);
            walk(path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(&mut Vec::new(), &mut out);
    out.retain(|l| !l.is_empty());
    out
}

/// The leaf command an array of arguments runs: its first words after global flags.
fn leaf_of(words: &[Option<String>], leaves: &[String]) -> Option<String> {
    let mut i = 0;
    loop {
        match words.get(i).and_then(|w| w.as_deref()) {
            Some("--json") => i += 1,
            Some("--app" | "--env" | "--org") => i += 2,
            _ => break,
        }
    }
    let rest = words.get(i..)?;
    leaves
        .iter()
        .filter(|leaf| {
            let path: Vec<&str> = leaf.split(' ').collect();
            path.len() <= rest.len() && path.iter().zip(rest).all(|(p, w)| w.as_deref() == Some(*p))
        })
        .max_by_key(|leaf| leaf.len())
        .cloned()
}

/// An array literal of arguments in a test file.
struct Run {
    line: usize,
    /// Its elements: the string literals, `None` for anything else (`&id`, `&format!(…)`).
    words: Vec<Option<String>>,
    /// Passed to a helper that adds `--json` (`….json(&[…])`, `sb_json(&[…])`).
    json_helper: bool,
    /// A case of a `for` loop whose body runs it with `--json` too.
    loop_json: bool,
    /// Inside `fails…(…)`, or a case of a loop whose body only checks failures.
    expects_failure: bool,
}

impl Run {
    fn forms(&self) -> Vec<Form> {
        let has_json = self.words.iter().any(|w| w.as_deref() == Some("--json"));
        let mut forms = Vec::new();
        if !has_json && !self.json_helper {
            forms.push(Human);
        }
        if has_json || self.json_helper || self.loop_json {
            forms.push(Json);
        }
        forms
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Str(String),
    Ident(String),
    Punct(char),
}

/// Rust source as string literals, identifiers and punctuation (comments, numbers, char
/// literals and lifetimes dropped), each with its line.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let count_lines = |s: &[char]| s.iter().filter(|&&ch| ch == '\n').count();
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            loop {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            let start = line;
            let (s, end) = quoted(&c, i + 1);
            line += count_lines(&c[i..end]);
            out.push((Tok::Str(s), start));
            i = end;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            let raw = matches!(word.as_str(), "r" | "br") && c.get(i + hashes) == Some(&'"');
            if raw {
                // r"…", r#"…"# (not a raw identifier like r#type).
                let body = i + hashes + 1;
                let mut j = body;
                while !(c[j] == '"'
                    && c[j + 1..].iter().take_while(|&&h| h == '#').count() >= hashes)
                {
                    j += 1;
                }
                out.push((Tok::Str(c[body..j].iter().collect()), line));
                line += count_lines(&c[body..j]);
                i = j + 1 + hashes;
            } else if word == "b" && c.get(i) == Some(&'"') {
                let (s, end) = quoted(&c, i + 1);
                out.push((Tok::Str(s), line));
                line += count_lines(&c[i..end]);
                i = end;
            } else if word == "b" && c.get(i) == Some(&'\'') {
                // A byte literal: the char-literal branch above skips it.
            } else {
                out.push((Tok::Ident(word), line));
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// A string literal's value from after its opening quote; and the index after its closing one.
fn quoted(c: &[char], mut i: usize) -> (String, usize) {
    let mut s = String::new();
    while c[i] != '"' {
        if c[i] == '\\' {
            i += 1;
            match c[i] {
                'n' => s.push('\n'),
                't' => s.push('\t'),
                '\n' => {
                    // A line continuation: the next line's leading whitespace goes too.
                    while c[i + 1].is_whitespace() {
                        i += 1;
                    }
                }
                other => s.push(other),
            }
        } else {
            s.push(c[i]);
        }
        i += 1;
    }
    (s, i + 1)
}

/// The array literals of string arguments in `src`.
fn runs(src: &str) -> Vec<Run> {
    let toks = tokenize(src);
    let t: Vec<&Tok> = toks.iter().map(|(t, _)| t).collect();
    // Matching brackets, and the innermost bracket each token is in.
    let mut close = vec![usize::MAX; t.len()];
    let mut parent = vec![usize::MAX; t.len()];
    let mut stack: Vec<usize> = Vec::new();
    for (i, tok) in t.iter().enumerate() {
        parent[i] = stack.last().copied().unwrap_or(usize::MAX);
        match tok {
            Tok::Punct('(' | '[' | '{') => stack.push(i),
            Tok::Punct(')' | ']' | '}') => {
                if let Some(open) = stack.pop() {
                    close[open] = i;
                    parent[i] = stack.last().copied().unwrap_or(usize::MAX);
                }
            }
            _ => {}
        }
    }
    let ident = |i: usize| match t.get(i) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    // The name of the call an open paren belongs to (`name(` or `name::<T>(`).
    let callee = |open: usize| (open > 0).then(|| ident(open - 1)).flatten();
    let enclosing_calls = |mut i: usize| {
        let mut names = Vec::new();
        while parent[i] != usize::MAX {
            i = parent[i];
            if t[i] == &Tok::Punct('{') {
                break;
            }
            if let Some(n) = callee(i) {
                names.push(n);
            }
        }
        names
    };
    // `let o = sb.run(&[…]); … fails(&o, 3)`: the run whose output goes to `o` is checked by
    // the first use of `o` after the statement.
    let checked_later_by_fails = |i: usize| {
        let mut top = i;
        while parent[top] != usize::MAX && t[parent[top]] != &Tok::Punct('{') {
            top = parent[top];
        }
        let level = parent[top];
        let mut start = top;
        while start > 0
            && !(parent[start - 1] == level && matches!(t[start - 1], Tok::Punct(';' | '}')))
            && start - 1 != level
        {
            start -= 1;
        }
        if ident(start) != Some("let") {
            return false;
        }
        let name = match ident(start + 1) {
            Some("mut") => ident(start + 2),
            n => n,
        };
        let Some(name) = name else {
            return false;
        };
        let Some(end) = (top..t.len()).find(|&j| parent[j] == level && t[j] == &Tok::Punct(';'))
        else {
            return false;
        };
        (end..t.len())
            .find(|&j| ident(j) == Some(name))
            .is_some_and(|j| enclosing_calls(j).iter().any(|c| c.starts_with("fails")))
    };

    // `for … in [cases] { body }`: the cases' arrays, and what the body does with them.
    let mut loop_of = vec![None; t.len()];
    for (k, tok) in t.iter().enumerate() {
        if tok != &&Tok::Ident("for".into()) {
            continue;
        }
        let Some(inn) = (k..t.len().min(k + 40)).find(|&j| ident(j) == Some("in")) else {
            continue;
        };
        let open = inn + 1;
        if t.get(open) != Some(&&Tok::Punct('[')) || close[open] == usize::MAX {
            continue;
        }
        let body = close[open] + 1;
        if t.get(body) != Some(&&Tok::Punct('{')) {
            continue;
        }
        let body = &t[body..=close[body]];
        let json = body.contains(&&Tok::Str("--json".into()));
        let checks_success = body.iter().any(
            |b| matches!(b, Tok::Ident(n) if n == "ok" || n.ends_with("json") && n != "fails_json"),
        );
        let checks_failure = body
            .iter()
            .any(|b| matches!(b, Tok::Ident(n) if n.starts_with("fails")));
        for slot in loop_of.iter_mut().take(close[open]).skip(open + 1) {
            *slot = Some((json, checks_failure && !checks_success));
        }
    }

    let mut out = Vec::new();
    for (i, tok) in t.iter().enumerate() {
        if tok != &&Tok::Punct('[') || close[i] == usize::MAX {
            continue;
        }
        // `x[…]`, `f()[…]`, `a[0][…]` index; `in […]`, `&[…]`, `([…]`, `vec![…]` are arrays.
        let indexing = i > 0
            && match t[i - 1] {
                Tok::Ident(w) => !matches!(w.as_str(), "in" | "return" | "break" | "match"),
                Tok::Punct(p) => matches!(p, ')' | ']' | '?' | '}'),
                Tok::Str(_) => true,
            };
        if indexing {
            continue;
        }
        // Its elements, split at its own commas.
        let mut words = Vec::new();
        let mut elem: Vec<&Tok> = Vec::new();
        let mut j = i + 1;
        while j < close[i] {
            match t[j] {
                Tok::Punct(',') => {
                    words.push(word(&elem));
                    elem.clear();
                    j += 1;
                }
                Tok::Punct('(' | '[' | '{') => {
                    elem.push(t[j]);
                    j = close[j] + 1;
                }
                other => {
                    elem.push(other);
                    j += 1;
                }
            }
        }
        if !elem.is_empty() {
            words.push(word(&elem));
        }
        if words.iter().all(Option::is_none) {
            continue;
        }
        // The helper the array is passed to: `name(&[…])` or `name([…])`.
        let open = if i >= 2 && t[i - 1] == &Tok::Punct('&') {
            i - 2
        } else {
            i.wrapping_sub(1)
        };
        let helper = (open < t.len() && t[open] == &Tok::Punct('('))
            .then(|| callee(open))
            .flatten();
        let calls = enclosing_calls(i);
        let (loop_json, loop_fails) = loop_of[i].unwrap_or((false, false));
        out.push(Run {
            line: toks[i].1,
            words,
            json_helper: helper.is_some_and(|h| h.ends_with("json") && !h.starts_with("fails")),
            loop_json,
            expects_failure: loop_fails
                || calls.iter().any(|c| c.starts_with("fails"))
                || checked_later_by_fails(i),
        });
    }
    out
}

/// An element that is one string literal (or a reference to one).
fn word(elem: &[&Tok]) -> Option<String> {
    match elem {
        [Tok::Str(s)] | [Tok::Punct('&'), Tok::Str(s)] => Some(s.clone()),
        _ => None,
    }
}

/// The scanner on a sample of the patterns the real-server tests use.
#[test]
fn the_scanner_reads_runs_of_sb() {
    let src = r##"
        // ok(&w.sb(&["apps", "list"])) in a comment does not count
        let who = ok(&w.sb(&["whoami"]));
        let v = json(&w.sb(&["--json", "--app", "web", "secrets", "list"]));
        let e = fails(&w.sb(&["apps", "get", &name]), 3);
        let o = w.sb(&["--json", "apps", "list"]);
        let e = fails_json(&o, 5);
        let mut o = w.sb(&["apps", "list"]);
        assert!(ok(&o).contains("api"));
        let t = sb.json(&["tokens", "list"]);
        let s = x["status"];
        let r = r#"["ps"]"#;
        for args in [&["vm", "get", "nosuch"][..], &["vm", "delete", "x"]] {
            fails(&sb.run(args), 3);
            fails_json(&sb.run(&[&["--json"][..], args].concat()), 3);
        }
        for args in [&["events"][..]] {
            ok(&sb.run(args));
            let mut j = vec!["--json"];
            j.extend_from_slice(args);
            json(&sb.run(&j));
        }
    "##;
    let leaves: Vec<String> = [
        "apps list",
        "apps get",
        "whoami",
        "secrets list",
        "tokens list",
        "status",
        "ps",
        "vm get",
        "vm delete",
        "events",
    ]
    .map(String::from)
    .to_vec();
    let got: Vec<(String, Vec<Form>, bool)> = runs(src)
        .iter()
        .filter_map(|r| Some((leaf_of(&r.words, &leaves)?, r.forms(), r.expects_failure)))
        .collect();
    let want: Vec<(String, Vec<Form>, bool)> = vec![
        ("whoami".into(), vec![Human], false),
        ("secrets list".into(), vec![Json], false),
        ("apps get".into(), vec![Human], true),
        ("apps list".into(), vec![Json], true),
        ("apps list".into(), vec![Human], false),
        ("tokens list".into(), vec![Json], false),
        ("vm get".into(), vec![Human, Json], true),
        ("vm delete".into(), vec![Human, Json], true),
        ("events".into(), vec![Human, Json], false),
    ];
    assert_eq!(got, want);
}
