//! The `agent` subcommand: the host agent with the microVM backend (`qemu`, default) or the
//! dev/test `process` backend.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use scalebox_agent::config::AgentConfig;
use scalebox_agent::image_rootfs::ImageRootfs;
use scalebox_agent::qemu_backend::QemuBackend;
use scalebox_agent::tap_network::TapNetwork;
use scalebox_agent::{Components, run, run_with};

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    /// MicroVMs under QEMU (KVM when it can boot guests, else TCG).
    Qemu,
    /// Dev/test only: instances are local processes, no isolation.
    Process,
}

#[derive(Args)]
pub struct AgentArgs {
    /// Config file (TOML, see docs/agent.md). Without it, defaults apply.
    #[arg(long, short, env = "SCALEBOX_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the config's data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "qemu")]
    pub backend: Backend,
    /// Force TCG even where KVM works (debugging).
    #[arg(long)]
    pub force_tcg: bool,
    /// Give instances no network (no bridge, TAP or nftables changes on this host).
    #[arg(long)]
    pub no_network: bool,
}

pub fn load(a: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut cfg = match &a.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

/// Builds the components for `backend`.
pub async fn components(
    cfg: &AgentConfig,
    backend: Backend,
    force_tcg: bool,
    network: bool,
) -> anyhow::Result<Option<Components>> {
    match backend {
        Backend::Process => Ok(None),
        Backend::Qemu => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("create {}", cfg.data_dir.display()))?;
            let force = force_tcg.then_some(scalebox_vmm::qemu::Accel::Tcg);
            let b = QemuBackend::new(&cfg.data_dir, None, force)
                .await
                .context("preparing the microVM backend (kernel, initramfs, accelerator)")?;
            tracing::info!(accel = ?b.accel(), "microVM backend ready");
            Ok(Some(Components {
                backend: Arc::new(b),
                rootfs: Arc::new(ImageRootfs::new(&cfg.data_dir)?),
                network: network.then(|| {
                    Arc::new(TapNetwork::new(cfg)) as Arc<dyn scalebox_agent::backend::Network>
                }),
            }))
        }
    }
}

pub async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    let cfg = load(&a)?;
    match components(&cfg, a.backend, a.force_tcg, !a.no_network).await? {
        Some(c) => run_with(cfg, c, crate::shutdown_signal()).await?,
        None => run(cfg, crate::shutdown_signal()).await?,
    }
    Ok(())
}
