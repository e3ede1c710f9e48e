//! The `edge` subcommand: the L4 ingress proxy (`scalebox_edge`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use scalebox_edge::EdgeConfig;

#[derive(Args)]
pub struct EdgeArgs {
    /// Config file (TOML, see docs/edge.md). Without it, defaults apply.
    #[arg(long, short, env = "SCALEBOX_EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the persisted routing table (overrides the config's state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub async fn run(a: EdgeArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => EdgeConfig::load(p)?,
        None => EdgeConfig::default(),
    };
    if let Some(d) = a.state_dir {
        cfg.state_dir = d;
    }
    cfg.validate()
        .map_err(anyhow::Error::msg)
        .context("invalid edge configuration")?;
    scalebox_edge::run(cfg, crate::shutdown_signal()).await?;
    Ok(())
}
