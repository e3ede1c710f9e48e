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
mod output;
mod release;
mod resources;
mod watch;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use error::{CliError, Result, exit};
use output::Out;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let json = cli.json || config::env("SCALEBOX_JSON").is_some_and(|v| v == "true" || v == "1");
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
        Command::Status => deploy::status(&ctx, out),
        Command::Why => deploy::why(&ctx, out),
        Command::Stop => deploy::run_state(&ctx, true, out),
        Command::Start => deploy::run_state(&ctx, false, out),
        Command::Deployments => deploy::deployments(&ctx, out),
        Command::Hosts(a) => resources::hosts(&ctx, a, out),
        Command::Logs(a) => exec::logs(&ctx, a, out),
        Command::Exec(a) => exec::exec(&ctx, a, out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man(&dir),
    }
}

/// Writes man pages for `sb` and every subcommand into `dir`.
fn man(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
    fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.to_owned()))
            .render(&mut buf)
            .map_err(|e| CliError::failure(e.to_string()))?;
        std::fs::write(&path, buf)
            .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
    cmd.build();
    write(&cmd, "sb", dir)?;
    println!("man pages written to {}", dir.display());
    Ok(())
}
