//! `scaleboxd`: one binary, one role per subcommand.

mod agent;
mod control;
mod edge;
mod update;
mod vms;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scaleboxd",
    version,
    about = "Scalebox daemon: control plane, host agent, edge"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Run the control plane (API, event log, views), or one of its admin commands.
    Control(control::ControlArgs),
    /// Run the host agent (microVMs for instances).
    Agent(agent::AgentArgs),
    /// Run the L4 edge proxy (SNI passthrough, raw TCP, PROXY v2).
    Edge(edge::EdgeArgs),
    /// Run everything this single machine needs: private Postgres, control plane, agent, edge.
    Up(control::UpArgs),
    /// Build (or rebuild) a VM template with debootstrap (also `scalebox-rebuild-template`).
    RebuildTemplate(vms::RebuildArgs),
    /// Replace this binary from a release artifact, restart the running daemon in place,
    /// health-check it and roll back when that fails (also `scalebox-update`).
    Update(update::UpdateArgs),
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Installed under another name (symlink), the binary is that command.
    let argv0 = std::env::args().next().unwrap_or_default();
    let as_command = [
        ("scalebox-rebuild-template", "rebuild-template"),
        ("scalebox-update", "update"),
    ]
    .into_iter()
    .find(|(name, _)| argv0.ends_with(name));
    let cli = if let Some((_, command)) = as_command {
        let mut args: Vec<String> = std::env::args().collect();
        args[0] = "scaleboxd".into();
        args.insert(1, command.into());
        Cli::parse_from(args)
    } else {
        Cli::parse()
    };
    let result = match cli.role {
        Role::Control(a) => control::run(a).await,
        Role::Agent(a) => agent::run_agent(a).await,
        Role::Edge(a) => edge::run(a).await,
        Role::Up(a) => control::up(a).await,
        Role::RebuildTemplate(a) => vms::rebuild(a).await,
        Role::Update(a) => update::run(a).await,
    };
    if let Err(e) = result {
        eprintln!("scaleboxd: error: {e:#}");
        std::process::exit(1);
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
