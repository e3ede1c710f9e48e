//! The `agent` subcommand: the host agent with a microVM backend (`auto`, the default:
//! Firecracker when its binary is found and KVM can boot guests, else QEMU; or forced with
//! `--backend firecracker|qemu`) or the dev/test `process` backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use scalebox_agent::config::AgentConfig;
use scalebox_agent::control_link::{Credential, HostFacts, join};
use scalebox_agent::firecracker_backend::FirecrackerBackend;
use scalebox_agent::image_rootfs::ImageRootfs;
use scalebox_agent::qemu_backend::QemuBackend;
use scalebox_agent::tap_network::TapNetwork;
use scalebox_agent::{Components, process_components, run_with};
use scalebox_vmm::firecracker::jail::Jailer;
use scalebox_vmm::firecracker::launch::{self, Launcher};
use scalebox_vmm::qemu::Accel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// MicroVMs under Firecracker when its binary is found and KVM can boot guests, else QEMU.
    Auto,
    /// MicroVMs under QEMU (KVM when it can boot guests, else TCG).
    Qemu,
    /// MicroVMs under Firecracker (needs KVM and the `firecracker` binary).
    Firecracker,
    /// Dev/test only: instances are local processes, no isolation.
    Process,
}

impl Backend {
    /// Whether instances are microVMs (any backend but `process`).
    pub fn is_microvm(self) -> bool {
        self != Backend::Process
    }
}

/// Where Firecracker (and the jailer) are, for the `auto` and `firecracker` backends.
#[derive(Args, Clone, Default)]
pub struct FirecrackerArgs {
    /// The firecracker binary (default: `firecracker` on PATH).
    #[arg(long, env = "SCALEBOX_FIRECRACKER", value_name = "PATH")]
    pub firecracker_bin: Option<PathBuf>,
    /// Run Firecracker through the jailer as this uid (needs --jailer-gid; the jailer binary is
    /// --jailer-bin or `jailer` on PATH).
    #[arg(long, requires = "jailer_gid")]
    pub jailer_uid: Option<u32>,
    #[arg(long, requires = "jailer_uid")]
    pub jailer_gid: Option<u32>,
    /// The jailer binary (default: `jailer` on PATH).
    #[arg(long, value_name = "PATH")]
    pub jailer_bin: Option<PathBuf>,
    /// Where the jailer builds its chroots.
    #[arg(long, default_value = "/srv/jailer", value_name = "DIR")]
    pub jailer_chroot_base: PathBuf,
}

impl FirecrackerArgs {
    /// The launcher, if the firecracker binary exists; an error when the jailer is asked for but
    /// missing.
    pub fn launcher(&self) -> anyhow::Result<Option<Launcher>> {
        let Some(firecracker) = self
            .firecracker_bin
            .clone()
            .or_else(|| launch::find_on_path("firecracker"))
            .filter(|p| p.is_file())
        else {
            return Ok(None);
        };
        let jailer = match (self.jailer_uid, self.jailer_gid) {
            (Some(uid), Some(gid)) => {
                let binary = self
                    .jailer_bin
                    .clone()
                    .or_else(|| launch::find_on_path("jailer"))
                    .filter(|p| p.is_file())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--jailer-uid is set but no jailer binary was found (install `jailer` on PATH or pass --jailer-bin)"
                        )
                    })?;
                Some(Jailer {
                    binary,
                    uid,
                    gid,
                    chroot_base: self.jailer_chroot_base.clone(),
                })
            }
            _ => None,
        };
        Ok(Some(Launcher {
            firecracker,
            jailer,
        }))
    }
}

/// Which VMM runs guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vmm {
    Firecracker,
    Qemu(Accel),
}

/// Picks the VMM for `requested` (a microVM backend) from whether a firecracker binary was found
/// and what the KVM probe said; with the reason, for the log. Forcing Firecracker where it
/// cannot run is an error.
pub fn choose_vmm(
    requested: Backend,
    firecracker: Option<&Path>,
    accel: Accel,
) -> Result<(Vmm, String), String> {
    let kvm = accel == Accel::Kvm;
    match (requested, firecracker) {
        (Backend::Firecracker, None) => Err(
            "--backend firecracker: no firecracker binary (install it on PATH or pass --firecracker-bin)"
                .into(),
        ),
        (Backend::Firecracker, Some(_)) if !kvm => Err(
            "--backend firecracker: Firecracker needs KVM, and KVM cannot boot guests on this host (see the accelerator probe above)"
                .into(),
        ),
        (Backend::Firecracker, Some(p)) => Ok((
            Vmm::Firecracker,
            format!("forced with --backend firecracker ({})", p.display()),
        )),
        (Backend::Auto, Some(p)) if kvm => Ok((
            Vmm::Firecracker,
            format!("found {} and KVM boots guests", p.display()),
        )),
        (Backend::Auto, Some(p)) => Ok((
            Vmm::Qemu(accel),
            format!(
                "found {} but KVM cannot boot guests here, so QEMU with TCG",
                p.display()
            ),
        )),
        (Backend::Auto, None) => Ok((
            Vmm::Qemu(accel),
            "no firecracker binary on PATH (or --firecracker-bin)".into(),
        )),
        (_, _) => Ok((Vmm::Qemu(accel), "forced with --backend qemu".into())),
    }
}

#[derive(Args)]
pub struct AgentArgs {
    /// Config file (TOML, see docs/agent.md). Without it, defaults apply.
    #[arg(long, short, env = "SCALEBOX_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the config's data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "SCALEBOX_AGENT_BACKEND"
    )]
    pub backend: Backend,
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,
    /// Force QEMU with TCG even where KVM works (debugging).
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
    fc: &FirecrackerArgs,
    force_tcg: bool,
    network: bool,
) -> anyhow::Result<Option<Components>> {
    if !backend.is_microvm() {
        return Ok(None);
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("create {}", cfg.data_dir.display()))?;
    // The KVM probe boots the guest kernel once (cached in accel.json).
    let dd = cfg.data_dir.clone();
    let k = tokio::task::spawn_blocking(move || scalebox_vmm::kernel::ensure_kernel(&dd))
        .await?
        .context("fetching the guest kernel")?;
    let accel = if force_tcg {
        Accel::Tcg
    } else {
        scalebox_vmm::qemu::detect_accel(&k.vmlinuz, &cfg.data_dir.join("accel.json")).await
    };
    let requested = if force_tcg { Backend::Qemu } else { backend };
    let launcher = fc.launcher()?;
    let (vmm, why) = choose_vmm(
        requested,
        launcher.as_ref().map(|l| l.firecracker.as_path()),
        accel,
    )
    .map_err(anyhow::Error::msg)?;
    let backend: Arc<dyn scalebox_agent::backend::VmBackend> = match (vmm, launcher) {
        (Vmm::Firecracker, Some(l)) => {
            let jailed = l.jailer.as_ref().map(|j| j.binary.display().to_string());
            let b = FirecrackerBackend::new(&cfg.data_dir, None, l)
                .await
                .context("preparing the Firecracker backend (kernel, initramfs)")?;
            tracing::info!(
                vmm = "firecracker",
                jailer = jailed.as_deref().unwrap_or("none"),
                reason = %why,
                "microVM backend ready: guests run under Firecracker"
            );
            Arc::new(b)
        }
        (vmm, _) => {
            let accel = match vmm {
                Vmm::Qemu(a) => a,
                Vmm::Firecracker => accel,
            };
            let b = QemuBackend::new(&cfg.data_dir, None, Some(accel))
                .await
                .context("preparing the microVM backend (kernel, initramfs, accelerator)")?;
            tracing::info!(
                vmm = "qemu",
                accel = ?b.accel(),
                reason = %why,
                "microVM backend ready: guests run under QEMU"
            );
            Arc::new(b)
        }
    };
    Ok(Some(Components {
        backend,
        rootfs: Arc::new(ImageRootfs::new(&cfg.data_dir)?),
        network: network
            .then(|| Arc::new(TapNetwork::new(cfg)) as Arc<dyn scalebox_agent::backend::Network>),
        overlay: None,
    }))
}

pub async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    let mut cfg = load(&a)?;
    join_if_needed(&a, &cfg).await?;
    // The overlay comes first: it decides this host's /64, which the instance network uses.
    let instance_network = a.backend.is_microvm() && !a.no_network;
    let overlay = scalebox_agent::overlay::start(&mut cfg, instance_network).await?;
    let mut c =
        match components(&cfg, a.backend, &a.firecracker, a.force_tcg, !a.no_network).await? {
            Some(c) => c,
            None => process_components(&cfg)?,
        };
    c.overlay = overlay;
    run_with(cfg, c, crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_only_where_it_can_run() {
        let fc = Some(Path::new("/usr/bin/firecracker"));
        let pick = |b, f, a| choose_vmm(b, f, a).map(|(v, _)| v);
        assert_eq!(pick(Backend::Auto, fc, Accel::Kvm), Ok(Vmm::Firecracker));
        assert_eq!(
            pick(Backend::Auto, fc, Accel::Tcg),
            Ok(Vmm::Qemu(Accel::Tcg))
        );
        assert_eq!(
            pick(Backend::Auto, None, Accel::Kvm),
            Ok(Vmm::Qemu(Accel::Kvm))
        );
        assert_eq!(
            pick(Backend::Qemu, fc, Accel::Kvm),
            Ok(Vmm::Qemu(Accel::Kvm))
        );
        assert_eq!(
            pick(Backend::Firecracker, fc, Accel::Kvm),
            Ok(Vmm::Firecracker)
        );
        let e = pick(Backend::Firecracker, fc, Accel::Tcg).unwrap_err();
        assert!(e.contains("needs KVM"), "{e}");
        let e = pick(Backend::Firecracker, None, Accel::Kvm).unwrap_err();
        assert!(e.contains("no firecracker binary"), "{e}");
        let (_, why) = choose_vmm(Backend::Auto, fc, Accel::Tcg).unwrap();
        assert!(
            why.contains("/usr/bin/firecracker") && why.contains("TCG"),
            "{why}"
        );
    }

    #[test]
    fn launcher_from_flags() {
        let d = tempfile::tempdir().unwrap();
        let fc = d.path().join("firecracker");
        std::fs::write(&fc, "").unwrap();
        let mut a = FirecrackerArgs {
            firecracker_bin: Some(fc.clone()),
            jailer_chroot_base: "/srv/jailer".into(),
            ..Default::default()
        };
        let l = a.launcher().unwrap().unwrap();
        assert_eq!((l.firecracker, l.jailer), (fc.clone(), None));
        a.jailer_uid = Some(900);
        a.jailer_gid = Some(900);
        a.jailer_bin = Some(d.path().join("missing-jailer"));
        let e = a.launcher().unwrap_err().to_string();
        assert!(e.contains("no jailer binary"), "{e}");
        let jb = d.path().join("jailer");
        std::fs::write(&jb, "").unwrap();
        a.jailer_bin = Some(jb.clone());
        let j = a.launcher().unwrap().unwrap().jailer.unwrap();
        assert_eq!((j.binary, j.uid, j.gid), (jb, 900, 900));
        a.firecracker_bin = Some(d.path().join("nope"));
        assert!(a.launcher().unwrap().is_none());
    }
}
