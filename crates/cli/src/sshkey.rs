//! SSH keys for VMs: the managed key pair `$SCALEBOX_CONFIG_DIR/id_ed25519` (+ `.pub`), generated
//! with `ssh-keygen` on first need, and `-k KEY` / `-k @FILE` public keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{CliError, Result};

/// Key types OpenSSH puts first on a public key line.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// `$SCALEBOX_CONFIG_DIR/id_ed25519`, the private half of the managed key.
pub fn managed_key_path() -> PathBuf {
    crate::config::dir().join("id_ed25519")
}

/// `path` + `.pub`.
pub fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The managed key's private path, generating the pair first when it does not exist yet
/// (a note goes to stderr), and restoring a lost `.pub` from the private key.
pub fn ensure_managed_key() -> Result<PathBuf> {
    let key = managed_key_path();
    let public = pub_path(&key);
    if !key.exists() {
        let dir = crate::config::dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
        // A stale .pub without its private key would make ssh-keygen ask before overwriting.
        let _ = std::fs::remove_file(&public);
        let status = Command::new("ssh-keygen")
            .args(["-t", "ed25519", "-N", "", "-q", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| ssh_keygen_missing(&e))?;
        if !status.success() || !key.exists() {
            return Err(CliError::failure(format!(
                "ssh-keygen could not create the managed key {} ({status})",
                key.display()
            )));
        }
        eprintln!("Generated SSH key {}", key.display());
    } else if !public.exists() {
        let o = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ssh_keygen_missing(&e))?;
        if !o.status.success() {
            return Err(CliError::failure(format!(
                "cannot derive {} from {}: {}",
                public.display(),
                key.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        crate::config::write_private(&public, &o.stdout)?;
    }
    Ok(key)
}

fn ssh_keygen_missing(e: &std::io::Error) -> CliError {
    CliError::failure(format!(
        "cannot run ssh-keygen to create the managed SSH key ({e}); install OpenSSH (e.g. `apt install openssh-client`) or pass -k KEY / -k @FILE"
    ))
}

/// The managed public key (generating the pair on first need).
pub fn managed_public_key() -> Result<String> {
    let key = ensure_managed_key()?;
    let public = pub_path(&key);
    let text = std::fs::read_to_string(&public)
        .map_err(|e| CliError::failure(format!("cannot read {}: {e}", public.display())))?;
    parse_public_key(&text).map_err(|m| CliError::failure(format!("{}: {m}", public.display())))
}

/// The public key of `-k`: `@FILE` (a `.pub` file) or the key itself; `None`: the managed key.
pub fn public_key(spec: Option<&str>) -> Result<String> {
    match spec {
        None => managed_public_key(),
        Some(s) => load_key_spec(s),
    }
}

/// `-k KEY` or `-k @FILE`: a validated one-line OpenSSH public key.
pub fn load_key_spec(spec: &str) -> Result<String> {
    if let Some(file) = spec.strip_prefix('@') {
        if file.is_empty() {
            return Err(CliError::usage(
                "-k @FILE needs a file name, e.g. -k @~/.ssh/id_ed25519.pub",
            ));
        }
        let path = expand_home(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            CliError::usage(format!("cannot read the key file {}: {e}", path.display()))
        })?;
        return parse_public_key(&text)
            .map_err(|m| CliError::usage(format!("{}: {m}", path.display())));
    }
    parse_public_key(spec).map_err(|m| {
        let hint = if Path::new(&expand_home(spec)).is_file() {
            format!("; to read the key from that file write -k @{spec}")
        } else {
            String::new()
        };
        CliError::usage(format!("-k: {m}{hint}"))
    })
}

/// Checks an OpenSSH public key line (`TYPE BASE64 [comment]`) and returns it trimmed.
pub fn parse_public_key(text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return Err("this is a private key; give the public key (the .pub file)".into());
    }
    let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        return Err(format!(
            "expected one OpenSSH public key line (ssh-ed25519 AAAA… comment), got {} lines",
            lines.len()
        ));
    }
    let line = lines[0].trim();
    let mut parts = line.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "not an OpenSSH public key (expected it to start with ssh-ed25519, ssh-rsa or ecdsa-sha2-…, got {:?})",
            kind.chars().take(30).collect::<String>()
        ));
    }
    let b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    if body.len() < 16 || !body.chars().all(b64) {
        return Err(format!(
            "the {kind} key's base64 part is missing or malformed"
        ));
    }
    Ok(line.to_owned())
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// The private key matching `-k @FILE.pub`, when it sits next to it.
pub fn identity_for_key_spec(spec: &str) -> Option<PathBuf> {
    let file = spec.strip_prefix('@')?;
    let private = expand_home(file.strip_suffix(".pub")?);
    private.is_file().then_some(private)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKZ0JQ2v7lCV6T5lXIm7jdPf8S8d0rfsPTVNe2hQuRtN me@box";

    #[test]
    fn literal_keys_are_checked() {
        assert_eq!(load_key_spec(KEY).unwrap(), KEY);
        assert_eq!(load_key_spec(&format!("  {KEY}\n")).unwrap(), KEY);
        let e = load_key_spec("hello").unwrap_err();
        assert_eq!(e.exit, crate::error::exit::USAGE);
        assert!(e.message.contains("not an OpenSSH public key"), "{e}");
        assert!(load_key_spec("ssh-ed25519").is_err());
        assert!(load_key_spec("ssh-ed25519 not*base64!!!!!!!!!!!").is_err());
    }

    #[test]
    fn key_files_are_read_with_at() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("k.pub");
        std::fs::write(&good, format!("{KEY}\n")).unwrap();
        let spec = format!("@{}", good.display());
        assert_eq!(load_key_spec(&spec).unwrap(), KEY);

        // A path without @ is refused, with a hint.
        let e = load_key_spec(&good.display().to_string()).unwrap_err();
        assert!(e.message.contains("write -k @"), "{e}");

        let missing = load_key_spec(&format!("@{}/nope.pub", d.path().display())).unwrap_err();
        assert_eq!(missing.exit, crate::error::exit::USAGE);
        assert!(
            missing.message.contains("cannot read the key file"),
            "{missing}"
        );

        let private = d.path().join("k");
        std::fs::write(
            &private,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_key_spec(&format!("@{}", private.display())).unwrap_err();
        assert!(e.message.contains("private key"), "{e}");
        // ...but it is the identity matching @k.pub.
        assert_eq!(identity_for_key_spec(&spec), Some(private));

        let two = d.path().join("two.pub");
        std::fs::write(&two, format!("{KEY}\n{KEY}\n")).unwrap();
        assert!(
            load_key_spec(&format!("@{}", two.display()))
                .unwrap_err()
                .message
                .contains("2 lines")
        );
        assert!(load_key_spec("@").is_err());
    }

    #[test]
    fn pub_path_appends() {
        assert_eq!(
            pub_path(Path::new("/c/id_ed25519")),
            PathBuf::from("/c/id_ed25519.pub")
        );
    }
}
