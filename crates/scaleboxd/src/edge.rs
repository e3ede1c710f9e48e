//! The `edge` subcommand: the L4 ingress proxy (`scalebox_edge`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use scalebox_agent::control_link::{ControlClient, Credential};
use scalebox_edge::table::Table;
use scalebox_edge::{EdgeConfig, EdgeHandle};

#[derive(Args)]
pub struct EdgeArgs {
    /// Config file (TOML, see docs/edge.md). Without it, defaults apply.
    #[arg(long, short, env = "SCALEBOX_EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the persisted routing table (overrides the config's state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Pull the routing table from the control plane with this host credential
    /// (`control.json` written when the host joined, see `scaleboxd agent --join`).
    #[arg(long)]
    control_credential: Option<PathBuf>,
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
    let link = match &a.control_credential {
        Some(p) => Some(
            Credential::load(p)
                .map_err(anyhow::Error::msg)?
                .with_context(|| format!("{} does not exist; join the host first", p.display()))?,
        ),
        None => None,
    };
    let edge = scalebox_edge::Edge::start(cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let feed = link.map(|c| {
        tokio::spawn(feed(
            edge.handle(),
            ControlClient::new(&c.url, &c.token),
            stop_rx,
        ))
    });
    edge.run(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await?;
    if let Some(f) = feed {
        let _ = f.await;
    }
    Ok(())
}

/// Keeps the edge's routing table equal to the control plane's (long-polled by generation).
/// While the control plane is unreachable the edge keeps serving its last table.
pub async fn feed(
    edge: EdgeHandle,
    client: ControlClient,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut generation = edge.table().generation as i64;
    let mut failing = false;
    loop {
        let c = client.clone();
        let path = format!("/v1/edge/table?after={generation}&wait=25");
        let got = tokio::select! {
            r = tokio::task::spawn_blocking(move || c.get(&path)) => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        let table = match got {
            Ok(Ok(v)) => serde_json::from_value::<Table>(v).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match table {
            Ok(t) => {
                failing = false;
                if t.generation as i64 > generation || generation == 0 {
                    let g = t.generation;
                    let routes = t.routes.len();
                    match edge.apply(t).await {
                        Ok(()) => tracing::info!(generation = g, routes, "routing table applied"),
                        Err(e) => {
                            tracing::warn!(error = %e, "routing table from the control plane refused")
                        }
                    }
                    generation = g as i64;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot get the routing table; serving the last one; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
            }
        }
    }
}
