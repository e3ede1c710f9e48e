//! Syntax checks for guest paths and DNS hostnames.

/// Checks an absolute guest path: starts with '/', is not '/', has no empty, '.' or '..'
/// components and no NUL. The error completes a sentence starting with the field's name.
pub(crate) fn check_absolute_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must be an absolute path (start with '/')"));
    }
    if p == "/" {
        return Err("must not be '/' itself".to_owned());
    }
    if p.contains('\0') {
        return Err(format!("{p:?} contains a NUL byte"));
    }
    for c in p[1..].split('/') {
        match c {
            "" => {
                return Err(format!(
                    "{p:?} has an empty component ('//' or a trailing '/')"
                ));
            }
            "." | ".." => return Err(format!("{p:?} must not contain '.' or '..' components")),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` equals `dir` or lies below it (both checked absolute paths).
pub(crate) fn is_under(path: &str, dir: &str) -> bool {
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Checks a lowercase DNS hostname (no wildcard, no trailing dot).
pub(crate) fn check_hostname(h: &str) -> Result<(), String> {
    const HINT: &str = "use a lowercase DNS name like api.example.com";
    if h.is_empty() || h.len() > 253 {
        return Err(format!("it must be 1-253 characters; {HINT}"));
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "each dot-separated label must be 1-63 characters; {HINT}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("a label starts or ends with '-'; {HINT}"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("only a-z, 0-9, '-' and '.' are allowed; {HINT}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths() {
        for ok in ["/data", "/var/lib/redis", "/a.b/c..d"] {
            assert!(check_absolute_path(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("data", "absolute"),
            ("/", "'/'"),
            ("/a/../b", ".."),
            ("/a/./b", "'.'"),
            ("/a//b", "empty"),
            ("/a/", "trailing"),
            ("/a\0", "NUL"),
        ] {
            let e = check_absolute_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn under() {
        assert!(is_under("/run/secrets/x", "/run"));
        assert!(is_under("/run", "/run"));
        assert!(!is_under("/running/x", "/run"));
    }

    #[test]
    fn hostnames() {
        for ok in ["api.example.com", "localhost", "a-1.b2.io"] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "API.example.com",
            "*.example.com",
            "a..b",
            "a.",
            "-a.b",
            &"x".repeat(64),
        ] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }
}
