//! Resource names (orgs, projects, apps, environments, process types): DNS-label-like slugs that
//! appear in URLs and CLI arguments.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name {name:?}: {reason} (names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit)"
)]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// Checks that `s` is a valid resource name.
pub fn validate(s: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            name: s.chars().take(80).collect(),
            reason,
        })
    };
    if s.is_empty() {
        return err("it is empty");
    }
    if s.len() > 63 {
        return err("it is longer than 63 characters");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return err("it starts or ends with '-'");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("it contains a character other than a-z, 0-9 or '-'");
    }
    Ok(())
}

/// A validated resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        validate(s).map(|()| Name(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slugs() {
        for ok in ["a", "web", "my-app-2", "0x"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_names_with_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("-a", "starts or ends"),
            ("A", "character"),
            ("a_b", "character"),
            (&"x".repeat(64), "longer"),
        ] {
            let e = validate(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}
