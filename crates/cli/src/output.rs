//! Output: human tables (bold headers only on a TTY) or stable JSON; errors to stderr.

use std::io::IsTerminal;

use serde_json::Value;

use crate::error::CliError;

#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints a JSON value (with `--json`) or a table of `cols` over `rows`.
    pub fn list(&self, value: &Value, rows: &[Value], cols: &[(&str, &str)]) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("json"));
            return;
        }
        if rows.is_empty() {
            println!("(none)");
            return;
        }
        table(rows, cols);
    }

    /// Prints one object as `key: value` lines, or JSON.
    pub fn object(&self, value: &Value, fields: &[(&str, &str)]) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("json"));
            return;
        }
        let w = fields.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
        for (h, k) in fields {
            println!("{h:<w$}  {}", cell(value, k));
        }
    }

    /// A success message for humans; `value` for JSON.
    pub fn done(&self, message: &str, value: &Value) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("json"));
        } else {
            println!("{message}");
        }
    }

    /// Prints an error to stderr: `{"error", "status", "code"}` with `--json`.
    pub fn error(&self, e: &CliError) {
        if self.json {
            eprintln!("{}", error_json(e));
        } else {
            eprintln!("error: {}", e.message);
        }
    }
}

/// `{"error": "...", "status": <http status, 0 when none>}` (+ `"code"` when the API gave one).
pub fn error_json(e: &CliError) -> Value {
    let mut v = serde_json::json!({"error": e.message, "status": e.status});
    if let Some(c) = &e.code {
        v["code"] = Value::String(c.clone());
    }
    v
}

/// Prints `value` as pretty JSON on stdout.
pub fn json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("json"));
}

/// A field of `v` by dotted key, rendered for a table cell.
pub fn cell(v: &Value, key: &str) -> String {
    let mut cur = v;
    for part in key.split('.') {
        cur = match cur.get(part) {
            Some(x) => x,
            None => return "-".into(),
        };
    }
    match cur {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Prints `rows` as a table of `cols` (header, then one line per row).
pub fn table(rows: &[Value], cols: &[(&str, &str)]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(_, k)| cell(r, k)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let bold = std::io::stdout().is_terminal();
    let header: Vec<String> = cols
        .iter()
        .zip(&widths)
        .map(|((h, _), w)| format!("{h:<w$}"))
        .collect();
    let header = header.join("  ");
    if bold {
        println!("\x1b[1m{}\x1b[0m", header.trim_end());
    } else {
        println!("{}", header.trim_end());
    }
    for r in cells {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
