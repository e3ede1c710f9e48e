//! `sb`: the Scalebox command line. Human output by default, `--json` (anywhere on the line, or
//! `SCALEBOX_JSON=true`) for scripts; errors on stderr; documented exit codes (`docs/cli.md`).

mod account;
mod args;
mod client;
mod config;
mod deploy;
mod error;
mod exec;
mod image_ref;
mod interrupt;
mod layout_archive;
mod output;
mod registry;
mod release;
mod resources;
mod sshkey;
mod upload;
mod vm;
mod volume_data;
mod watch;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use error::{CliError, Result, exit};
use output::Out;

fn main() {
    let env_json = config::env("SCALEBOX_JSON").is_some_and(|v| v == "true" || v == "1");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                std::process::exit(exit::OK);
            }
            let args: Vec<String> = std::env::args().skip(1).collect();
            if env_json || wants_json(&args) {
                Out { json: true }.error(&CliError::usage(usage_message(&e)));
            } else {
                let _ = e.print();
            }
            std::process::exit(exit::USAGE);
        }
    };
    let json = cli.json || env_json;
    let out = Out { json };
    let code = match run(cli, out) {
        Ok(()) => exit::OK,
        Err(e) => {
            out.error(&e);
            e.exit
        }
    };
    std::process::exit(code);
}

/// `--json` among the options (not after `--`).
fn wants_json(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// clap's error without its `error: ` prefix and trailing help hints.
fn usage_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(cli: Cli, out: Out) -> Result<()> {
    let ctx = account::Ctx::new(&cli.scope)?;
    match cli.command {
        Command::Login(a) => account::login(a, out),
        Command::Logout => account::logout(out),
        Command::Whoami => account::whoami(&ctx, out),
        Command::Config(a) => account::config(a, out),
        Command::Context(a) => account::context(&ctx, a, out),
        Command::Orgs(a) => resources::orgs(&ctx, a, out),
        Command::Projects(a) => resources::projects(&ctx, a, out),
        Command::Apps(a) => resources::apps(&ctx, a, out),
        Command::Envs(a) => resources::envs(&ctx, a, out),
        Command::Tokens(a) => resources::tokens(&ctx, a, out),
        Command::Routes(a) => resources::routes(&ctx, a, out),
        Command::Volumes(a) => resources::volumes(&ctx, a, out),
        Command::Events(a) => resources::events(&ctx, a, out),
        Command::Manifest(a) => release::manifest(a, out),
        Command::Releases(a) => release::releases(&ctx, a, out),
        Command::Secrets(a) => release::secrets(&ctx, a, out),
        Command::Deploy(a) => deploy::deploy(&ctx, a, out),
        Command::Rollback(a) => deploy::rollback(&ctx, a, out),
        Command::Scale { pairs } => deploy::scale(&ctx, &pairs, out),
        Command::Status => vm::status(&ctx, out),
        Command::Ps => deploy::status(&ctx, out),
        Command::Why => deploy::why(&ctx, out),
        Command::Stop => deploy::run_state(&ctx, true, out),
        Command::Start => deploy::run_state(&ctx, false, out),
        Command::Deployments => deploy::deployments(&ctx, out),
        Command::Hosts(a) => resources::hosts(&ctx, a, out),
        Command::Logs(a) => exec::logs(&ctx, a, out),
        Command::Exec(a) => exec::exec(&ctx, a, out),
        Command::Vm(a) => vm::vm(&ctx, a, out),
        Command::Template(a) => vm::template(&ctx, a, out),
        Command::Connect(a) => vm::connect(&ctx, a),
        Command::Run(a) => vm::run(&ctx, a, out),
        Command::Go => vm::go(&ctx, out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man(&dir, out),
    }
}

/// Writes man pages for `sb` and every subcommand into `dir` (`--json`: `{"dir", "pages"}`).
fn man(dir: &std::path::Path, out: Out) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
    fn write(
        cmd: &clap::Command,
        name: &str,
        dir: &std::path::Path,
        pages: &mut Vec<String>,
    ) -> Result<()> {
        let page = format!("{name}.1");
        let path = dir.join(&page);
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.to_owned()))
            .render(&mut buf)
            .map_err(|e| CliError::failure(e.to_string()))?;
        std::fs::write(&path, buf)
            .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))?;
        pages.push(page);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, &format!("{name}-{}", sub.get_name()), dir, pages)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = Vec::new();
    write(&cmd, "sb", dir, &mut pages)?;
    out.done(
        &format!("{} man pages written to {}", pages.len(), dir.display()),
        &serde_json::json!({"dir": dir.display().to_string(), "pages": pages}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{TemplateCommand, VmCommand};

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sb").chain(args.iter().copied()))
    }

    #[test]
    fn vm_create_flags() {
        let cli = parse(&[
            "--json",
            "vm",
            "create",
            "-t",
            "debian-base",
            "-k",
            "@k.pub",
            "-m",
            "2048",
            "-d",
            "20",
            "--name",
            "box",
            "--vcpus",
            "4",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Vm(a) = cli.command else {
            panic!("not vm")
        };
        let VmCommand::Create(c) = a.command else {
            panic!("not create")
        };
        assert_eq!(c.template, "debian-base");
        assert_eq!(c.spec.key.as_deref(), Some("@k.pub"));
        assert_eq!(
            (c.spec.mem_mib, c.spec.disk_gib, c.spec.vcpus),
            (Some(2048), Some(20), Some(4))
        );
        assert_eq!(c.spec.name.as_deref(), Some("box"));
        // -t is required for `vm create`.
        assert!(parse(&["vm", "create"]).is_err());
    }

    #[test]
    fn vm_verbs() {
        let Command::Vm(a) = parse(&["vm", "snapshot", "box", "-n", "tpl"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(
            matches!(a.command, VmCommand::Snapshot { ref vm, ref name } if vm == "box" && name == "tpl")
        );
        let e = parse(&["vm", "snapshot", "box"]).err().unwrap();
        assert!(e.to_string().contains("--name"), "{e}");
        let Command::Vm(a) = parse(&["vm", "wait", "box", "--ssh", "--timeout", "5"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(matches!(
            a.command,
            VmCommand::Wait {
                ssh: true,
                timeout: 5,
                ..
            }
        ));
        assert!(parse(&["vm", "frobnicate"]).is_err());
        let Command::Template(t) = parse(&["template", "delete", "x"]).unwrap().command else {
            panic!()
        };
        assert!(matches!(t.command, TemplateCommand::Delete { ref name } if name == "x"));
        assert!(matches!(
            parse(&["status"]).unwrap().command,
            Command::Status
        ));
        assert!(matches!(parse(&["ps"]).unwrap().command, Command::Ps));
        assert!(matches!(parse(&["go"]).unwrap().command, Command::Go));
    }

    #[test]
    fn volume_data_verbs() {
        use crate::args::VolumesCommand as V;
        let vol = |args: &[&str]| {
            let mut a = vec!["volumes"];
            a.extend_from_slice(args);
            match parse(&a).map(|c| c.command) {
                Ok(Command::Volumes(v)) => Ok(v.command),
                Ok(_) => panic!("not volumes"),
                Err(e) => Err(e),
            }
        };
        assert!(
            matches!(vol(&["snapshot", "data"]).unwrap(), V::Snapshot { ref volume } if volume == "data")
        );
        assert!(
            matches!(vol(&["snapshots", "data"]).unwrap(), V::Snapshots { ref volume } if volume == "data")
        );
        assert!(matches!(
            vol(&["snapshot-delete", "data", "s1"]).unwrap(),
            V::SnapshotDelete { ref volume, ref id } if volume == "data" && id == "s1"
        ));
        assert!(vol(&["snapshot-delete", "data"]).is_err());
        assert!(
            matches!(vol(&["backups", "data"]).unwrap(), V::Backups { ref volume } if volume == "data")
        );

        let V::Backup(b) = vol(&["backup", "data"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (b.volume.as_str(), b.snapshot.as_deref(), b.wait, b.timeout),
            ("data", None, false, 3600)
        );
        let V::Backup(b) = vol(&[
            "backup",
            "data",
            "--snapshot",
            "s1",
            "--wait",
            "--timeout",
            "5",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (b.snapshot.as_deref(), b.wait, b.timeout),
            (Some("s1"), true, 5)
        );
        // --timeout only bounds --wait.
        let e = vol(&["backup", "data", "--timeout", "5"]).err().unwrap();
        assert!(e.to_string().contains("--wait"), "{e}");
        assert!(vol(&["backup"]).is_err());

        assert!(matches!(
            vol(&["restore", "data"]).unwrap(),
            V::Restore { ref volume, ref backup, host: None, .. } if volume == "data" && backup == "latest"
        ));
        assert!(matches!(
            vol(&["restore", "data", "--backup", "b1", "--host", "h2"]).unwrap(),
            V::Restore { ref backup, host: Some(ref h), .. } if backup == "b1" && h == "h2"
        ));
    }

    #[test]
    fn connect_and_run_flags() {
        let Command::Connect(c) = parse(&[
            "connect", "box", "--ssh", "-l", "root", "-i", "/k", "-o", "A=1", "-o", "B=2", "--",
            "ls", "-la",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(c.vm, "box");
        assert!(c.session.ssh);
        assert_eq!(c.session.user, "root");
        assert_eq!(
            c.session.identity.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        assert_eq!(c.session.options, ["A=1", "B=2"]);
        assert_eq!(c.session.args, ["ls", "-la"]);
        let Command::Connect(c) = parse(&["connect", "box"]).unwrap().command else {
            panic!()
        };
        assert_eq!((c.session.user.as_str(), c.session.ssh), ("user", false));

        let Command::Run(r) = parse(&[
            "run",
            "-m",
            "1024",
            "--ssh",
            "-o",
            "X=y",
            "--timeout",
            "30",
            "--",
            "htop",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(r.template, "debian-base");
        assert_eq!(r.spec.mem_mib, Some(1024));
        assert_eq!(r.timeout, 30);
        assert!(r.session.ssh);
        assert_eq!(r.session.args, ["htop"]);
    }

    #[test]
    fn json_flag_detection() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wants_json(&v(&["--json", "vm", "nope"])));
        assert!(!wants_json(&v(&["connect", "x", "--", "--json"])));
    }

    #[test]
    fn json_error_shape() {
        let e = CliError::http(404, "VM not found".into(), None);
        let v = crate::output::error_json(&e);
        assert_eq!(
            v,
            serde_json::json!({"error": "VM not found", "status": 404})
        );
        assert_eq!(e.exit, exit::NOT_FOUND);
        let e = CliError::new(exit::SERVER, "cannot reach");
        assert_eq!(crate::output::error_json(&e)["status"], 0);
        let e = parse(&["vm", "snapshot", "box"]).err().unwrap();
        let m = usage_message(&e);
        assert!(m.contains("--name") && !m.starts_with("error:"), "{m}");
    }
}
