//! Credentials and selection: login/logout/whoami, `config show`, contexts, and the resolved
//! org/app/env every other command uses.

use std::cell::OnceCell;
use std::io::Read;

use serde_json::{Value, json};

use crate::args::{ConfigArgs, ConfigCommand, ContextArgs, ContextCommand, LoginArgs, Scope};
use crate::client::{Client, segment};
use crate::config::{Context, Contexts, Settings, env};
use crate::error::{CliError, Result};
use crate::output::Out;

/// What a command runs with: settings, the effective context, a lazily built client.
pub struct Ctx {
    pub settings: Settings,
    pub context: Context,
    client: OnceCell<Client>,
    whoami: OnceCell<Value>,
}

impl Ctx {
    pub fn new(scope: &Scope) -> Result<Ctx> {
        let settings = Settings::load()?;
        let cwd = std::env::current_dir().unwrap_or_default();
        let flags = Context {
            org: scope.org.clone(),
            app: scope.app.clone(),
            env: scope.env.clone(),
        };
        let envs = Context {
            org: env("SCALEBOX_ORG"),
            app: env("SCALEBOX_APP"),
            env: env("SCALEBOX_ENV"),
        };
        let saved = Contexts::load()?.for_dir(&cwd);
        Ok(Ctx {
            settings,
            context: flags.or(&envs).or(&saved),
            client: OnceCell::new(),
            whoami: OnceCell::new(),
        })
    }

    pub fn client(&self) -> Result<&Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let url = self.settings.url.as_deref().ok_or_else(|| {
            CliError::new(crate::error::exit::AUTH, "not logged in: run `sb login --host URL --token-stdin` or set SCALEBOX_URL and SCALEBOX_TOKEN")
        })?;
        let c = Client::new(url, self.settings.token.clone())?;
        Ok(self.client.get_or_init(|| c))
    }

    fn whoami(&self) -> Result<&Value> {
        if let Some(w) = self.whoami.get() {
            return Ok(w);
        }
        let w = self.client()?.get("/v1/whoami")?;
        Ok(self.whoami.get_or_init(|| w))
    }

    /// The org: flag, SCALEBOX_ORG, saved context, else the token's own org.
    pub fn org(&self) -> Result<String> {
        if let Some(o) = &self.context.org {
            return Ok(o.clone());
        }
        Ok(self.whoami()?["org"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub fn app(&self) -> Result<String> {
        self.context.app.clone().ok_or_else(|| {
            CliError::usage("no app selected: pass --app NAME, set SCALEBOX_APP, or save one with `sb context set --app NAME`")
        })
    }

    pub fn env(&self) -> Result<String> {
        self.context.env.clone().ok_or_else(|| {
            CliError::usage("no environment selected: pass --env NAME, set SCALEBOX_ENV, or save one with `sb context set --env NAME`")
        })
    }

    /// `/v1/orgs/{org}`.
    pub fn org_path(&self) -> Result<String> {
        Ok(format!("/v1/orgs/{}", segment("org name", &self.org()?)?))
    }

    /// `/v1/orgs/{org}/apps/{app}`.
    pub fn app_path(&self) -> Result<String> {
        Ok(format!(
            "{}/apps/{}",
            self.org_path()?,
            segment("app name", &self.app()?)?
        ))
    }

    /// `/v1/orgs/{org}/apps/{app}/envs/{env}`.
    pub fn env_path(&self) -> Result<String> {
        Ok(format!(
            "{}/envs/{}",
            self.app_path()?,
            segment("environment name", &self.env()?)?
        ))
    }
}

pub fn login(a: LoginArgs, out: Out) -> Result<()> {
    let token = if a.token_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::failure(format!("cannot read the token from stdin: {e}")))?;
        s.trim().to_owned()
    } else if let Some(t) = a.token {
        t
    } else if let Some(t) = env("SCALEBOX_TOKEN") {
        t
    } else {
        prompt_token()?
    };
    if token.is_empty() {
        return Err(CliError::usage("the token is empty"));
    }
    let client = Client::new(&a.host, Some(token.clone()))?;
    // The control plane's /v1 API says who the token is; a server with only the VM API
    // (no /v1) is checked with an authenticated VM API call instead.
    let who = match client.get("/v1/whoami") {
        Ok(w) => Some(w),
        Err(e) if e.status == 404 => {
            client.get("/templates")?;
            None
        }
        Err(e) => return Err(e),
    };
    Settings {
        url: Some(a.host.trim_end_matches('/').to_owned()),
        token: Some(token),
    }
    .save()?;
    let message = match &who {
        Some(who) => format!(
            "Logged in to {} as {} (org {}, role {}).",
            a.host,
            who["actor"].as_str().unwrap_or("?"),
            who["org"].as_str().unwrap_or("?"),
            who["role"].as_str().unwrap_or("?")
        ),
        None => format!("Logged in to {}.", a.host),
    };
    out.done(
        &message,
        &json!({"status": 200, "host": a.host, "whoami": who}),
    );
    Ok(())
}

/// Asks for the token on the terminal (not echoed); reads stdin when it is not one.
fn prompt_token() -> Result<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut s = String::new();
        let _ = stdin.lock().read_to_string(&mut s);
        if s.trim().is_empty() {
            return Err(CliError::usage(
                "no token: pipe it in with --token-stdin (recommended), or set SCALEBOX_TOKEN",
            ));
        }
        return Ok(s.trim().to_owned());
    }
    eprint!("Token: ");
    // SAFETY: termios calls on fd 0 with a zeroed, then filled-in struct.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(0, &mut t) == 0).then(|| {
            let mut quiet = t;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &quiet);
            t
        })
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
    eprintln!();
    read.map_err(|e| CliError::failure(format!("cannot read the token: {e}")))?;
    Ok(line.trim().to_owned())
}

pub fn logout(out: Out) -> Result<()> {
    let mut s = Settings::load_file()?;
    let had = s.token.take().is_some();
    s.save()?;
    out.done(
        if had {
            "Logged out (token removed)."
        } else {
            "Not logged in; nothing to do."
        },
        &json!({"logged_out": had}),
    );
    Ok(())
}

pub fn whoami(ctx: &Ctx, out: Out) -> Result<()> {
    let w = ctx.whoami()?.clone();
    out.object(
        &w,
        &[
            ("org", "org"),
            ("role", "role"),
            ("actor", "actor"),
            ("operator", "operator"),
        ],
    );
    Ok(())
}

pub fn config(a: ConfigArgs, out: Out) -> Result<()> {
    match a.command {
        ConfigCommand::Show => {
            let s = Settings::load()?;
            let file = Settings::load_file()?;
            let source = |vars: &[&str], in_file: bool| {
                vars.iter()
                    .find(|v| env(v).is_some())
                    .map(|v| v.to_string())
                    .or_else(|| in_file.then(|| "config file".to_owned()))
            };
            let key = crate::sshkey::managed_key_path();
            let v = json!({
                "config_dir": crate::config::dir().display().to_string(),
                "url": s.url,
                "url_from": source(&["SCALEBOX_URL", "SCALEBOX_HOST"], file.url.is_some()),
                "token": s.token.as_ref().map(|t| format!("{}…", t.chars().take(12).collect::<String>())),
                "token_from": source(&["SCALEBOX_TOKEN"], file.token.is_some()),
                "insecure": env("SCALEBOX_INSECURE").is_some_and(|v| v == "1" || v == "true"),
                "ssh_key": key.display().to_string(),
                "ssh_key_exists": key.exists(),
            });
            out.object(
                &v,
                &[
                    ("config dir", "config_dir"),
                    ("url", "url"),
                    ("url from", "url_from"),
                    ("token", "token"),
                    ("token from", "token_from"),
                    ("insecure tls", "insecure"),
                    ("ssh key", "ssh_key"),
                    ("ssh key exists", "ssh_key_exists"),
                ],
            );
            Ok(())
        }
    }
}

pub fn context(ctx: &Ctx, a: ContextArgs, out: Out) -> Result<()> {
    let cwd = std::env::current_dir()
        .unwrap_or_default()
        .display()
        .to_string();
    let mut all = Contexts::load()?;
    match a.command {
        ContextCommand::Show => {
            let v = serde_json::to_value(&ctx.context).expect("json");
            out.object(&v, &[("org", "org"), ("app", "app"), ("env", "env")]);
        }
        ContextCommand::Set { global } => {
            let target = if global {
                &mut all.global
            } else {
                all.dirs.entry(cwd.clone()).or_default()
            };
            *target = ctx.context.clone().or(target);
            let v = serde_json::to_value(&*target).expect("json");
            all.save()?;
            out.done(
                &format!(
                    "Context saved for {}: {v}",
                    if global { "all directories" } else { &cwd }
                ),
                &v,
            );
        }
        ContextCommand::Clear { global } => {
            let cleared = if global {
                std::mem::take(&mut all.global) != Context::default()
            } else {
                all.dirs.remove(&cwd).is_some()
            };
            all.save()?;
            let scope = if global {
                "the global context".to_owned()
            } else {
                format!("the context of {cwd}")
            };
            let text = if cleared {
                format!("Cleared {scope}.")
            } else {
                format!("Nothing to clear: {scope} was not set.")
            };
            out.done(&text, &json!({"cleared": cleared}));
        }
    }
    Ok(())
}
