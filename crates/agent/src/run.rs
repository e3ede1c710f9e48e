//! `run`: the `scaleboxd agent` entry point. Prepares the data dir, resolves the API token,
//! loads state, reconciles with the host, serves the API until `shutdown` resolves, then
//! detaches from the VMs (they keep running; the next start re-adopts them).

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::actor::Deps;
use crate::api::{ApiState, router};
use crate::backend::{Network, RootfsProvider, VmBackend};
use crate::config::{AgentConfig, BackendKind};
use crate::control_link::{ControlClient, Credential};
use crate::dev::FileRootfs;
use crate::error::AgentError;
use crate::manager::{LogLimits, Manager};
use crate::metrics::Metrics;
use crate::persist::{Store, write_atomic};
use crate::process_backend::ProcessBackend;

/// The implementations the agent drives.
pub struct Components {
    pub backend: Arc<dyn VmBackend>,
    pub rootfs: Arc<dyn RootfsProvider>,
    pub network: Option<Arc<dyn Network>>,
    /// The host's WireGuard overlay, when enabled (`crate::overlay::start`).
    pub overlay: Option<Arc<crate::overlay::Overlay>>,
}

/// Runs the agent with the backend named in the config.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let c = process_components(&config)?;
    run_with(config, c, shutdown).await
}

/// The components of the dev/test process backend (no isolation, no instance network).
pub fn process_components(config: &AgentConfig) -> Result<Components, AgentError> {
    create_data_dir(&config.data_dir)?;
    match config.backend {
        BackendKind::Process => {
            warn!(
                "using the dev/test process backend: instances are local processes with no isolation"
            );
            Ok(Components {
                backend: Arc::new(ProcessBackend::new(&config.data_dir)?),
                rootfs: Arc::new(FileRootfs::new(&config.data_dir)?),
                network: None,
                overlay: None,
            })
        }
    }
}

fn create_data_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AgentError::DataDir {
            path: dir.to_owned(),
            source,
        })
}

fn resolve_token(config: &AgentConfig) -> Result<String, AgentError> {
    if let Some(t) = &config.token {
        return Ok(t.clone());
    }
    let dd = |source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    if let Some(p) = &config.token_file {
        let t = std::fs::read_to_string(p)
            .map_err(|e| AgentError::InvalidConfig(format!("token_file {}: {e}", p.display())))?;
        let t = t.trim().to_string();
        if t.len() < 16 {
            return Err(AgentError::InvalidConfig(format!(
                "token_file {} holds fewer than 16 characters",
                p.display()
            )));
        }
        return Ok(t);
    }
    let path = config.data_dir.join("api-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && t.trim().len() >= 16
    {
        return Ok(t.trim().to_string());
    }
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| dd(std::io::Error::other(e.to_string())))?;
    let t = hex::encode(b);
    write_atomic(&path, t.as_bytes(), 0o600).map_err(dd)?;
    info!(path = %path.display(), "generated API token");
    Ok(t)
}

/// Runs the agent with explicit components (how `scaleboxd` wires the real VMM, image and
/// network crates). Writes the bound address to `<data_dir>/api-addr`.
pub async fn run_with(
    config: AgentConfig,
    c: Components,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    config.validate().map_err(AgentError::InvalidConfig)?;
    create_data_dir(&config.data_dir)?;
    let token = resolve_token(&config)?;
    let dd = |source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    let (store, loaded) = Store::load(&config.data_dir.join("state.json")).map_err(dd)?;
    if let Some((aside, why)) = &loaded.moved_aside {
        error!(
            moved_to = %aside.display(),
            "[reconcile] state file was corrupt ({why}); moved it aside and starting with no instances; orphan cleanup removes what still runs"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let health_host: IpAddr = config.health_host;
    let overlay = c.overlay.clone();
    let deps = Arc::new(Deps {
        backend: c.backend,
        rootfs: c.rootfs,
        network: c.network,
        store: Arc::new(store),
        metrics: metrics.clone(),
        health_host,
    });
    let limits = LogLimits {
        segment_bytes: config.log_segment_bytes,
        max_bytes: config.log_max_bytes,
    };
    let manager =
        Arc::new(Manager::start(deps, &config.data_dir.join("logs"), limits, loaded.records).await);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(AgentError::Serve)?;
    write_atomic(
        &config.data_dir.join("api-addr"),
        addr.to_string().as_bytes(),
        0o644,
    )
    .map_err(dd)?;
    info!(%addr, "agent API listening");
    let volumes = crate::volumes::VolumeStore::new(&config.data_dir);
    let jobs =
        crate::volume_jobs::Jobs::open(&config.data_dir, volumes.clone(), config.backup.clone());
    jobs.resume();
    let app = router(
        Arc::new(ApiState {
            manager: manager.clone(),
            metrics,
            token: token.clone(),
            volumes,
            jobs,
            overlay: overlay.clone(),
        }),
        config.max_body_bytes,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let link = match &config.control_credential {
        Some(path) => {
            let cred = Credential::load(path)
                .map_err(AgentError::InvalidConfig)?
                .ok_or_else(|| {
                    AgentError::InvalidConfig(format!(
                        "control_credential {} does not exist; join first (`scaleboxd agent --join URL --join-token TOKEN`)",
                        path.display()
                    ))
                })?;
            info!(url = %cred.url, host = %cred.host, "converging on the control plane's desired state");
            let client = ControlClient::new(&cred.url, &cred.token);
            let api = scalebox_types::api::AgentApi {
                url: format!("http://{addr}"),
                token: token.clone(),
            };
            if let Some(o) = &overlay {
                tokio::spawn(o.clone().run(client.clone(), stop_rx.clone()));
            }
            Some(tokio::spawn(crate::sync::run(
                manager.clone(),
                client,
                health_host,
                api,
                config.data_dir.join("uploads"),
                overlay.clone(),
                stop_rx,
            )))
        }
        None => None,
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    if let Some(l) = link {
        let _ = l.await;
    }
    manager.detach_all().await;
    info!("agent stopped; VMs left running for the next start to re-adopt");
    served.map_err(AgentError::Serve)
}
