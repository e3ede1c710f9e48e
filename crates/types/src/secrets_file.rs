//! The secrets file format instances see (stable, documented in `docs/secrets-file.md`):
//!
//! - UTF-8 text, one `NAME=value` line per secret, sorted by name, each line ending in `\n`;
//! - names are environment-variable names (`[A-Za-z_][A-Za-z0-9_]*`);
//! - in values, `\` is written `\\`, a newline `\n`, a carriage return `\r`; nothing else is
//!   escaped (no quotes: `=` and spaces are literal), so a reader splits at the first `=` and
//!   undoes those three escapes.

use std::collections::BTreeMap;

/// Renders `values` in the secrets file format.
pub fn render(values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in values {
        out.push_str(k);
        out.push('=');
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// Why a secrets file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secrets file line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses the secrets file format (the inverse of [`render`]).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: &str| ParseError {
            line: i + 1,
            message: message.to_owned(),
        };
        if line.is_empty() {
            continue;
        }
        let (k, raw) = line
            .split_once('=')
            .ok_or_else(|| err("expected NAME=value"))?;
        if !valid_name(k) {
            return Err(err(
                "invalid name (use letters, digits and '_', not starting with a digit)",
            ));
        }
        let mut v = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                v.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => v.push('\\'),
                Some('n') => v.push('\n'),
                Some('r') => v.push('\r'),
                _ => return Err(err("invalid escape: only \\\\, \\n and \\r are allowed")),
            }
        }
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

/// Whether `n` is a valid secret (environment variable) name.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_values() {
        let m = BTreeMap::from([
            ("B".to_string(), "line1\nline2\r\\end = x".to_string()),
            ("A".to_string(), String::new()),
            ("C".to_string(), "ünï=code \"q\"".to_string()),
        ]);
        let text = render(&m);
        assert_eq!(
            text,
            "A=\nB=line1\\nline2\\r\\\\end = x\nC=ünï=code \"q\"\n"
        );
        assert_eq!(parse(&text).unwrap(), m);
    }

    #[test]
    fn rejects_garbage_with_line_numbers() {
        assert_eq!(parse("A=1\nnope\n").unwrap_err().line, 2);
        assert!(parse("1A=x\n").is_err());
        assert!(parse("A=\\t\n").unwrap_err().message.contains("escape"));
    }
}
