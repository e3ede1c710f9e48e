//! Dev/test binary: runs the agent with the process backend (no microVMs, no isolation).
//! Usage: `scalebox-agent-dev [CONFIG.toml]`. Stops on SIGTERM/SIGINT, leaving instances running.

use std::path::PathBuf;

use scalebox_agent::AgentConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match std::env::args_os().nth(1) {
        Some(p) => AgentConfig::load(&PathBuf::from(p))?,
        None => AgentConfig::default(),
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    scalebox_agent::run(config, shutdown).await?;
    Ok(())
}
