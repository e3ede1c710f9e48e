//! Where `sb` keeps its state: `$SCALEBOX_CONFIG_DIR` (default `~/.config/scalebox`) holds
//! `config` (`SCALEBOX_URL=`/`SCALEBOX_TOKEN=` lines, mode 0600) and `contexts.json` (the
//! org/app/env selection, globally and per directory). Environment variables override the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SCALEBOX_CONFIG_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/scalebox")
}

/// Writes `data` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let err =
        |e: std::io::Error| CliError::failure(format!("cannot write {}: {e}", path.display()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The `config` file's settings.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub url: Option<String>,
    pub token: Option<String>,
}

impl Settings {
    /// File values overridden by `SCALEBOX_URL` / `SCALEBOX_HOST` / `SCALEBOX_TOKEN`.
    pub fn load() -> Result<Settings> {
        let mut s = Self::load_file()?;
        if let Some(u) = env("SCALEBOX_URL").or_else(|| env("SCALEBOX_HOST")) {
            s.url = Some(u);
        }
        if let Some(t) = env("SCALEBOX_TOKEN") {
            s.token = Some(t);
        }
        Ok(s)
    }

    pub fn load_file() -> Result<Settings> {
        let path = dir().join("config");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(e) => {
                return Err(CliError::failure(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let mut s = Settings::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                CliError::failure(format!(
                    "{}:{}: expected KEY=value; fix or delete the file",
                    path.display(),
                    i + 1
                ))
            })?;
            match k.trim() {
                "SCALEBOX_URL" | "SCALEBOX_HOST" => s.url = Some(v.trim().to_owned()),
                "SCALEBOX_TOKEN" => s.token = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        Ok(s)
    }

    pub fn save(&self) -> Result<()> {
        let mut text = String::from("# Written by `sb login`.\n");
        if let Some(u) = &self.url {
            text.push_str(&format!("SCALEBOX_URL={u}\n"));
        }
        if let Some(t) = &self.token {
            text.push_str(&format!("SCALEBOX_TOKEN={t}\n"));
        }
        write_private(&dir().join("config"), text.as_bytes())
    }
}

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An org/app/env selection.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl Context {
    /// Fields of `self`, falling back to `other`'s.
    pub fn or(self, other: &Context) -> Context {
        Context {
            org: self.org.or_else(|| other.org.clone()),
            app: self.app.or_else(|| other.app.clone()),
            env: self.env.or_else(|| other.env.clone()),
        }
    }
}

/// Saved contexts: one global, and one per directory (applies to its subdirectories too).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Contexts {
    #[serde(default)]
    pub global: Context,
    #[serde(default)]
    pub dirs: BTreeMap<String, Context>,
}

impl Contexts {
    fn path() -> PathBuf {
        dir().join("contexts.json")
    }

    pub fn load() -> Result<Contexts> {
        match std::fs::read(Self::path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                CliError::failure(format!(
                    "{} is corrupt ({e}); delete it or run `sb context clear`",
                    Self::path().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(CliError::failure(format!(
                "cannot read {}: {e}",
                Self::path().display()
            ))),
        }
    }

    pub fn save(&self) -> Result<()> {
        write_private(
            &Self::path(),
            &serde_json::to_vec_pretty(self).expect("contexts serialize"),
        )
    }

    /// The context for `cwd`: the closest saved directory, then the global one.
    pub fn for_dir(&self, cwd: &Path) -> Context {
        let local = cwd
            .ancestors()
            .find_map(|a| self.dirs.get(&a.display().to_string()))
            .cloned()
            .unwrap_or_default();
        local.or(&self.global)
    }
}
