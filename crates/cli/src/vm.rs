//! VM sandboxes (the root-level VM API: `/info`, `/templates`, `/vms`): `sb status`, `sb vm …`,
//! `sb template …`, and logging in with `sb connect` / `sb run` / `sb go` (mosh or SSH, exec'd).

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::account::Ctx;
use crate::args::{
    ConnectArgs, RunArgs, SessionArgs, TemplateArgs, TemplateCommand, VmArgs, VmCommand, VmSpecArgs,
};
use crate::error::{CliError, Result, exit};
use crate::output::{self, Out};
use crate::sshkey;

/// The template `sb go` (and `sb run` without -t) starts from.
pub const DEFAULT_TEMPLATE: &str = "debian-base";

/// `sb status`: the server summary from `GET /info`.
pub fn status(ctx: &Ctx, out: Out) -> Result<()> {
    let client = ctx.client()?;
    let mut info = client.get("/info")?;
    if out.json {
        if let Some(o) = info.as_object_mut() {
            o.insert("status".into(), json!(200));
        }
        output::json(&info);
        return Ok(());
    }
    let gb = |v: &Value| v.as_f64().map_or("?".to_owned(), |x| format!("{x:.1} GB"));
    let lines = [
        ("server", client.base().to_owned()),
        ("host ip", output::cell(&info, "host_ip")),
        ("api domain", output::cell(&info, "api_domain")),
        ("vm domain", output::cell(&info, "vm_domain")),
        ("templates", output::cell(&info, "templates_count")),
        ("vms", output::cell(&info, "vms_count")),
        (
            "storage",
            format!(
                "{} used of {} ({} free)",
                gb(&info["storage"]["used_gb"]),
                gb(&info["storage"]["total_gb"]),
                gb(&info["storage"]["free_gb"])
            ),
        ),
        (
            "memory",
            format!(
                "{} free of {}",
                gb(&info["memory"]["free_gb"]),
                gb(&info["memory"]["total_gb"])
            ),
        ),
        (
            "cpu",
            info["cpu_percent"]
                .as_f64()
                .map_or("?".to_owned(), |p| format!("{p:.1}%")),
        ),
    ];
    for (k, v) in lines {
        println!("{k:<10}  {v}");
    }
    Ok(())
}

pub fn vm(ctx: &Ctx, a: VmArgs, out: Out) -> Result<()> {
    let client = ctx.client()?;
    match a.command {
        VmCommand::List => {
            let v = client.get("/vms")?;
            let rows: Vec<Value> = v["vms"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(with_addr)
                .collect();
            out.list(
                &v,
                &rows,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("TEMPLATE", "template"),
                    ("STATUS", "status"),
                    ("SSH", "addr"),
                    ("URL", "url"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        VmCommand::Get { vm } => {
            let v = get_vm(ctx, &vm)?;
            show_vm(&v, out);
        }
        VmCommand::Create(c) => {
            let v = create(ctx, &c.template, &c.spec, out)?;
            show_vm(&v, out);
            if !out.json {
                println!(
                    "\nConnect with: sb connect {}",
                    v["name"].as_str().or(v["id"].as_str()).unwrap_or("?")
                );
            }
        }
        VmCommand::Delete { vm } => {
            client.mutate("DELETE", &format!("/vms/{}", segment(&vm)?), None)?;
            out.done(
                &format!("Deleted VM {vm}."),
                &json!({"deleted": vm, "status": 204}),
            );
        }
        VmCommand::Snapshot { vm, name } => {
            check_template_name(&name)?;
            if !out.json {
                eprintln!("Snapshotting {vm} into template {name}…");
            }
            let v = client.mutate_once(
                "POST",
                &format!("/vms/{}/snapshot", segment(&vm)?),
                Some(&json!({ "template_name": name })),
            )?;
            out.done(
                &format!(
                    "Template {} created from {} ({}).",
                    v["template"].as_str().unwrap_or(&name),
                    v["source_vm"].as_str().unwrap_or(&vm),
                    size(&v["size_bytes"])
                ),
                &v,
            );
        }
        VmCommand::Wait { vm, ssh, timeout } => {
            let v = wait(ctx, &vm, ssh, Duration::from_secs(timeout), !out.json)?;
            let what = if ssh { "answers SSH" } else { "is running" };
            out.done(
                &format!(
                    "VM {} {what} ({}:{}).",
                    v["name"].as_str().unwrap_or(&vm),
                    output::cell(&v, "ip"),
                    output::cell(&v, "ssh_port")
                ),
                &v,
            );
        }
    }
    Ok(())
}

pub fn template(ctx: &Ctx, a: TemplateArgs, out: Out) -> Result<()> {
    let client = ctx.client()?;
    match a.command {
        TemplateCommand::List => {
            let v = client.get("/templates")?;
            let rows: Vec<Value> = v["templates"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut t| {
                    t["size"] = json!(size(&t["size_bytes"]));
                    t
                })
                .collect();
            out.list(
                &v,
                &rows,
                &[
                    ("NAME", "name"),
                    ("SIZE", "size"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        TemplateCommand::Delete { name } => {
            check_template_name(&name)?;
            client.mutate("DELETE", &format!("/templates/{name}"), None)?;
            out.done(
                &format!("Deleted template {name}."),
                &json!({"deleted": name, "status": 204}),
            );
        }
    }
    Ok(())
}

pub fn connect(ctx: &Ctx, a: ConnectArgs) -> Result<()> {
    let v = get_vm(ctx, &a.vm)?;
    let identity = match &a.session.identity {
        Some(i) => i.clone(),
        None => sshkey::ensure_managed_key()?,
    };
    exec_session(&v, &a.session, &identity)
}

pub fn run(ctx: &Ctx, a: RunArgs, out: Out) -> Result<()> {
    // Work out how to log in before creating anything.
    let identity = match (&a.session.identity, a.spec.key.as_deref()) {
        (Some(i), _) => i.clone(),
        (None, None) => sshkey::ensure_managed_key()?,
        (None, Some(spec)) => sshkey::identity_for_key_spec(spec).ok_or_else(|| {
            CliError::usage(
                "with -k, also pass -i PRIVATE_KEY so sb can log in (or use -k @FILE.pub with the private key next to it)",
            )
        })?,
    };
    check_identity(&identity)?;
    let v = create(ctx, &a.template, &a.spec, out)?;
    let name = v["name"].as_str().or(v["id"].as_str()).unwrap_or("?");
    if out.json {
        output::json(&v);
    } else {
        eprintln!(
            "Created VM {} ({name}) from {}; ssh port {}.",
            output::cell(&v, "id"),
            output::cell(&v, "template"),
            output::cell(&v, "ssh_port")
        );
    }
    let v = wait(ctx, name, true, Duration::from_secs(a.timeout), !out.json)?;
    exec_session(&v, &a.session, &identity)
}

/// `sb go`: `sb run` with every default.
pub fn go(ctx: &Ctx, out: Out) -> Result<()> {
    run(
        ctx,
        RunArgs {
            template: DEFAULT_TEMPLATE.into(),
            spec: VmSpecArgs::default(),
            timeout: 120,
            session: SessionArgs {
                user: "user".into(),
                ..SessionArgs::default()
            },
        },
        out,
    )
}

/// `POST /vms`, with progress on stderr.
fn create(ctx: &Ctx, template: &str, spec: &VmSpecArgs, out: Out) -> Result<Value> {
    let body = create_body(template, spec, sshkey::public_key(spec.key.as_deref())?);
    let client = ctx.client()?;
    if !out.json {
        eprintln!("Creating a VM from template {template}…");
    }
    client.mutate_once("POST", "/vms", Some(&body))
}

/// The `POST /vms` body.
pub fn create_body(template: &str, spec: &VmSpecArgs, key: String) -> Value {
    let mut body = json!({ "template": template, "ssh_public_key": key });
    if let Some(n) = &spec.name {
        body["name"] = json!(n);
    }
    if let Some(n) = spec.vcpus {
        body["vcpu_count"] = json!(n);
    }
    if let Some(n) = spec.mem_mib {
        body["mem_size_mib"] = json!(n);
    }
    if let Some(n) = spec.disk_gib {
        body["disk_size_gib"] = json!(n);
    }
    body
}

fn get_vm(ctx: &Ctx, vm: &str) -> Result<Value> {
    ctx.client()?.get(&format!("/vms/{}", segment(vm)?))
}

/// Polls the VM until it is running and, with `ssh`, its SSH port answers with a banner.
fn wait(ctx: &Ctx, vm: &str, ssh: bool, timeout: Duration, progress: bool) -> Result<Value> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut announced = false;
    loop {
        let v = get_vm(ctx, vm)?;
        let last = if v["status"] == "running" {
            if !ssh {
                return Ok(v);
            }
            let (ip, port) = address(&v)?;
            if progress && !announced {
                eprintln!("Waiting for SSH on {ip}:{port}…");
                announced = true;
            }
            match probe_ssh(&ip, port, Duration::from_secs(3)) {
                Ok(()) => {
                    if progress {
                        eprintln!("SSH is up after {}s.", start.elapsed().as_secs());
                    }
                    return Ok(v);
                }
                Err(e) => e,
            }
        } else {
            format!("status {}", output::cell(&v, "status"))
        };
        if Instant::now() >= deadline {
            let what = if ssh { "SSH to answer" } else { "it to run" };
            return Err(CliError::new(
                exit::DEPLOY,
                format!(
                    "timed out after {}s waiting for {what} on VM {vm} (last: {last}); the VM is kept: `sb vm wait {vm}{} --timeout S` to wait longer, `sb vm delete {vm}` to drop it",
                    timeout.as_secs(),
                    if ssh { " --ssh" } else { "" }
                ),
            ));
        }
        std::thread::sleep(Duration::from_secs(1).min(deadline - Instant::now()));
    }
}

/// Connects to `ip:port` and reads until a line starting with `SSH-` (the server's version
/// banner); the error says what happened instead.
pub fn probe_ssh(ip: &str, port: u16, timeout: Duration) -> std::result::Result<(), String> {
    let addrs: Vec<_> = (ip, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {ip}: {e}"))?
        .collect();
    let mut last = format!("no address for {ip}");
    for addr in addrs {
        let mut s = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) => {
                last = format!("connect {addr}: {e}");
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => {
                    last = format!("{addr} closed the connection without an SSH banner");
                    break;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.split(|b| *b == b'\n').any(|l| l.starts_with(b"SSH-")) {
                        return Ok(());
                    }
                    if buf.len() > 8192 {
                        last = format!("{addr} does not answer like an SSH server");
                        break;
                    }
                }
                Err(e) => {
                    last = format!("no SSH banner from {addr}: {e}");
                    break;
                }
            }
        }
    }
    Err(last)
}

/// The VM's `ip` and `ssh_port`.
fn address(v: &Value) -> Result<(String, u16)> {
    let ip = v["ip"].as_str().filter(|s| !s.is_empty());
    let port = v["ssh_port"].as_u64().and_then(|p| u16::try_from(p).ok());
    match (ip, port) {
        (Some(ip), Some(port)) => Ok((ip.to_owned(), port)),
        _ => Err(CliError::failure(format!(
            "the server did not say where VM {} listens (ip {}, ssh_port {})",
            output::cell(v, "name"),
            output::cell(v, "ip"),
            output::cell(v, "ssh_port")
        ))),
    }
}

fn check_identity(identity: &Path) -> Result<()> {
    if identity.is_file() {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "-i {}: no such key file",
            identity.display()
        )))
    }
}

/// Replaces this process with mosh (or ssh) logged in to the VM.
fn exec_session(v: &Value, s: &SessionArgs, identity: &Path) -> Result<()> {
    check_identity(identity)?;
    let (ip, port) = address(v)?;
    let options = session_options(
        &s.options,
        v["id"].as_str(),
        &crate::config::dir().join("known_hosts"),
    );
    let argv = if s.ssh {
        ssh_argv(port, identity, &s.user, &ip, &options, &s.args)
    } else {
        mosh_argv(port, identity, &s.user, &ip, &options, &s.args)
    };
    if find_in_path(&argv[0]).is_none() {
        return Err(if s.ssh {
            CliError::failure(
                "ssh is not installed here; install OpenSSH (e.g. `apt install openssh-client`)",
            )
        } else {
            CliError::failure(
                "mosh is not installed here; install it (e.g. `apt install mosh`), or log in with plain SSH: add --ssh",
            )
        });
    }
    let e = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(CliError::failure(format!("cannot run {}: {e}", argv[0])))
}

/// The ssh options of a session: the user's, then sb's own, which ssh takes only where the user
/// gave none (it keeps the first value of an option). sb's: the VM's host key is kept in
/// `known_hosts` (sb's own file) under the VM's id, so a new VM that got an old one's address
/// and port is a new host to ssh, not one whose host key changed.
pub fn session_options(user: &[String], vm_id: Option<&str>, known_hosts: &Path) -> Vec<String> {
    let mut o = user.to_vec();
    if let Some(id) = vm_id.filter(|id| !id.is_empty()) {
        o.push(format!("HostKeyAlias={id}"));
    }
    // ssh expands %-tokens in the file name and splits it at spaces unless quoted.
    let file = known_hosts.display().to_string().replace('%', "%%");
    o.push(if file.contains(char::is_whitespace) {
        format!("UserKnownHostsFile=\"{file}\"")
    } else {
        format!("UserKnownHostsFile={file}")
    });
    o
}

/// `ssh -p PORT -i KEY -o IdentitiesOnly=yes [-o OPT...] USER@IP [ARGS]`
pub fn ssh_argv(
    port: u16,
    identity: &Path,
    user: &str,
    ip: &str,
    options: &[String],
    args: &[String],
) -> Vec<String> {
    let mut v = ssh_base(port, identity, options);
    v.push(format!("{user}@{ip}"));
    v.extend(args.iter().cloned());
    v
}

/// `mosh --ssh="ssh -p PORT -i KEY -o IdentitiesOnly=yes [-o OPT...]" -p PORT USER@IP [-- ARGS]`:
/// mosh's UDP port is the same number as the SSH port.
pub fn mosh_argv(
    port: u16,
    identity: &Path,
    user: &str,
    ip: &str,
    options: &[String],
    args: &[String],
) -> Vec<String> {
    let ssh: Vec<String> = ssh_base(port, identity, options)
        .iter()
        .map(|w| shell_quote(w))
        .collect();
    let mut v = vec![
        "mosh".to_owned(),
        format!("--ssh={}", ssh.join(" ")),
        "-p".to_owned(),
        port.to_string(),
        format!("{user}@{ip}"),
    ];
    if !args.is_empty() {
        v.push("--".to_owned());
        v.extend(args.iter().cloned());
    }
    v
}

fn ssh_base(port: u16, identity: &Path, options: &[String]) -> Vec<String> {
    let mut v = vec![
        "ssh".to_owned(),
        "-p".to_owned(),
        port.to_string(),
        "-i".to_owned(),
        identity.display().to_string(),
        "-o".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
    ];
    for o in options {
        v.push("-o".to_owned());
        v.push(o.clone());
    }
    v
}

/// Quotes a word for a POSIX shell (mosh splits `--ssh` like one).
pub fn shell_quote(w: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c);
    if !w.is_empty() && w.chars().all(safe) {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A VM id or name as one URL path segment (percent-encoded).
pub fn segment(x: &str) -> Result<String> {
    crate::client::segment("VM id (vm-…) or name", x)
}

/// Template names are `[A-Za-z0-9_-]+`.
pub fn check_template_name(name: &str) -> Result<()> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "invalid template name {name:?}: use letters, digits, _ and - only"
        )))
    }
}

/// A VM with `addr` (`ip:port`) for tables.
fn with_addr(mut v: Value) -> Value {
    v["addr"] = json!(format!(
        "{}:{}",
        output::cell(&v, "ip"),
        output::cell(&v, "ssh_port")
    ));
    v
}

fn show_vm(v: &Value, out: Out) {
    out.object(
        v,
        &[
            ("id", "id"),
            ("name", "name"),
            ("template", "template"),
            ("status", "status"),
            ("ip", "ip"),
            ("ssh port", "ssh_port"),
            ("ssh", "ssh"),
            ("url", "url"),
            ("created", "created_at"),
        ],
    );
}

/// `1.5 GiB` from a byte count.
pub fn size(v: &Value) -> String {
    let Some(b) = v.as_f64() else {
        return "-".into();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < units.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ssh_argv_shape() {
        let a = ssh_argv(
            22001,
            Path::new("/c/id_ed25519"),
            "user",
            "203.0.113.7",
            &s(&["StrictHostKeyChecking=no"]),
            &s(&["ls", "-la"]),
        );
        assert_eq!(
            a,
            s(&[
                "ssh",
                "-p",
                "22001",
                "-i",
                "/c/id_ed25519",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "user@203.0.113.7",
                "ls",
                "-la"
            ])
        );
        let bare = ssh_argv(22, Path::new("/k"), "root", "h", &[], &[]);
        assert_eq!(
            bare,
            s(&[
                "ssh",
                "-p",
                "22",
                "-i",
                "/k",
                "-o",
                "IdentitiesOnly=yes",
                "root@h"
            ])
        );
    }

    #[test]
    fn mosh_argv_shape() {
        let a = mosh_argv(
            22001,
            Path::new("/home/me/my keys/id"),
            "user",
            "203.0.113.7",
            &s(&["ConnectTimeout=5"]),
            &s(&["htop"]),
        );
        assert_eq!(
            a,
            s(&[
                "mosh",
                "--ssh=ssh -p 22001 -i '/home/me/my keys/id' -o IdentitiesOnly=yes -o ConnectTimeout=5",
                "-p",
                "22001",
                "user@203.0.113.7",
                "--",
                "htop"
            ])
        );
        let bare = mosh_argv(22002, Path::new("/k"), "user", "h", &[], &[]);
        assert_eq!(
            bare,
            s(&[
                "mosh",
                "--ssh=ssh -p 22002 -i /k -o IdentitiesOnly=yes",
                "-p",
                "22002",
                "user@h"
            ])
        );
    }

    #[test]
    fn session_options_keep_host_keys_by_vm_id_after_the_users() {
        assert_eq!(
            session_options(
                &s(&["UserKnownHostsFile=/dev/null"]),
                Some("vm-0123456789ab"),
                Path::new("/c/known_hosts")
            ),
            s(&[
                "UserKnownHostsFile=/dev/null",
                "HostKeyAlias=vm-0123456789ab",
                "UserKnownHostsFile=/c/known_hosts"
            ])
        );
        assert_eq!(
            session_options(&[], None, Path::new("/my dir/100%/known_hosts")),
            s(&["UserKnownHostsFile=\"/my dir/100%%/known_hosts\""])
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc-1.2/x=y"), "abc-1.2/x=y");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn create_body_has_only_given_fields() {
        let spec = VmSpecArgs {
            mem_mib: Some(2048),
            disk_gib: Some(10),
            ..Default::default()
        };
        assert_eq!(
            create_body("debian-base", &spec, "ssh-ed25519 AAAA".into()),
            json!({"template": "debian-base", "ssh_public_key": "ssh-ed25519 AAAA",
                   "mem_size_mib": 2048, "disk_size_gib": 10})
        );
        let spec = VmSpecArgs {
            name: Some("box".into()),
            vcpus: Some(2),
            ..Default::default()
        };
        let b = create_body("t", &spec, "k".into());
        assert_eq!(
            (b["name"].as_str(), b["vcpu_count"].as_u64()),
            (Some("box"), Some(2))
        );
        assert!(b.get("mem_size_mib").is_none());
    }

    #[test]
    fn names_and_sizes() {
        assert_eq!(segment("vm-0123456789ab").unwrap(), "vm-0123456789ab");
        assert_eq!(segment("a/b c").unwrap(), "a%2Fb%20c");
        assert!(segment("").is_err());
        assert!(check_template_name("my_tpl-2").is_ok());
        let e = check_template_name("../x").unwrap_err();
        assert_eq!(e.exit, exit::USAGE);
        assert_eq!(size(&json!(512)), "512 B");
        assert_eq!(size(&json!(1610612736u64)), "1.5 GiB");
        assert_eq!(size(&Value::Null), "-");
    }

    #[test]
    fn ssh_probe_wants_a_banner() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
            let (mut c, _) = l.accept().unwrap();
            c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        assert_eq!(probe_ssh("127.0.0.1", port, Duration::from_secs(2)), Ok(()));
        let e = probe_ssh("127.0.0.1", port, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("without an SSH banner"), "{e}");
        t.join().unwrap();
    }
}
