//! The `agent` subcommand: the host agent with the microVM backend (`qemu`, default) or the
//! dev/test `process` backend.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use scalebox_agent::config::AgentConfig;
use scalebox_agent::control_link::{Credential, HostFacts, join};
use scalebox_agent::image_rootfs::ImageRootfs;
use scalebox_agent::qemu_backend::QemuBackend;
use scalebox_agent::tap_network::TapNetwork;
use scalebox_agent::{Components, process_components, run_with};

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
    /// Join the cluster whose control plane API is at this URL (first start only; the host
    /// credential is then saved to `<data_dir>/control.json` and used from then on).
    #[arg(long, value_name = "URL", requires = "join_token")]
    pub join: Option<String>,
    /// The join token (`sb tokens create --role join` in the operator org).
    #[arg(long, env = "SCALEBOX_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// This host's name when joining (default: /etc/hostname).
    #[arg(long)]
    pub host_name: Option<String>,
    /// Address the edge and other hosts reach this host on, reported when joining.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
}

pub fn load(a: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut cfg = match &a.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    let cred = cfg.data_dir.join("control.json");
    if cfg.control_credential.is_none() && (cred.exists() || a.join.is_some()) {
        cfg.control_credential = Some(cred);
    }
    Ok(cfg)
}

/// Joins the cluster if asked to and not joined yet; returns the saved credential's path.
pub async fn join_if_needed(a: &AgentArgs, cfg: &AgentConfig) -> anyhow::Result<()> {
    let (Some(url), Some(path)) = (&a.join, &cfg.control_credential) else {
        return Ok(());
    };
    if let Some(c) = Credential::load(path).map_err(anyhow::Error::msg)? {
        tracing::info!(host = %c.host, url = %c.url, "already joined; ignoring --join");
        return Ok(());
    }
    let token = a.join_token.clone().unwrap_or_default();
    let mut facts = HostFacts::detect(&a.address);
    if let Some(n) = &a.host_name {
        facts.name = n.clone();
    }
    let url = url.clone();
    let cred = tokio::task::spawn_blocking(move || join(&url, &token, &facts))
        .await?
        .map_err(|e| anyhow::anyhow!("joining the cluster failed: {e}"))?;
    std::fs::create_dir_all(&cfg.data_dir)?;
    cred.save(path).map_err(anyhow::Error::msg)?;
    println!(
        "Joined the cluster at {} as host {:?}.",
        cred.url, cred.host
    );
    Ok(())
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
                overlay: None,
            }))
        }
    }
}

pub async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    let mut cfg = load(&a)?;
    join_if_needed(&a, &cfg).await?;
    // The overlay comes first: it decides this host's /64, which the instance network uses.
    let instance_network = matches!(a.backend, Backend::Qemu) && !a.no_network;
    let overlay = scalebox_agent::overlay::start(&mut cfg, instance_network).await?;
    let mut c = match components(&cfg, a.backend, a.force_tcg, !a.no_network).await? {
        Some(c) => c,
        None => process_components(&cfg)?,
    };
    c.overlay = overlay;
    run_with(cfg, c, crate::shutdown_signal()).await?;
    Ok(())
}
