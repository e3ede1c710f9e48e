//! Control plane start-up: database (external or private cluster), migrations, first-start
//! bootstrap of the operator org and its admin token, and the HTTP server.

use std::path::Path;
use std::sync::Arc;

use scalebox_store::pgcluster::PgCluster;
use scalebox_store::{Db, migrate};

use crate::config::ControlConfig;
use crate::crypto::SecretsKey;
use crate::ops::orgs;

/// Shared state of the control plane.
#[derive(Clone)]
pub struct Control {
    pub db: Db,
    pub config: Arc<ControlConfig>,
    pub secrets_key: SecretsKey,
    /// Bumped whenever desired or actual state changes: wakes the reconcilers and the
    /// long-polling agent and edge feeds.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// The VM sandbox surface, when enabled (`[vms] enabled = true`).
    pub sandbox: Option<scalebox_sandbox::Sandbox>,
    /// Set when the server shuts down: long polls answer at once instead of holding the
    /// graceful shutdown for up to their full wait.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Errors that stop the control plane from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] scalebox_store::StoreError),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("{0}")]
    Other(String),
}

impl Control {
    /// Connects to the database, applies migrations and loads the secrets key.
    pub async fn open(config: ControlConfig, database_url: &str) -> Result<Control, StartError> {
        let db = Db::connect(database_url, config.pool_size).await?;
        migrate::migrate(&db).await?;
        let secrets_key = SecretsKey::load_or_create(&config.secrets_key_path())?;
        Ok(Control {
            db,
            config: Arc::new(config),
            secrets_key,
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            sandbox: None,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }
}

impl Control {
    /// Signals that desired or actual state changed.
    pub fn poke(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

const BOOTSTRAP_LOCK: i64 = 0x5ca1_eb0c_0003;

/// On a database with no org yet, creates the operator org and its admin token and returns the
/// token (once: later calls return `None`).
pub async fn bootstrap(ctl: &Control) -> Result<Option<String>, StartError> {
    let mut client = ctl.db.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(scalebox_store::StoreError::from)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK])
        .await
        .map_err(scalebox_store::StoreError::from)?;
    let n: i64 = tx
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .map_err(scalebox_store::StoreError::from)?
        .get(0);
    if n > 0 {
        return Ok(None);
    }
    let (_, token) = orgs::create_with_admin(&tx, "system", &ctl.config.operator_org, true)
        .await
        .map_err(|e| StartError::Other(format!("bootstrap failed: {}", e.message)))?;
    tx.commit()
        .await
        .map_err(scalebox_store::StoreError::from)?;
    Ok(Some(token))
}

/// The private cluster used when no `database_url` is configured.
pub fn private_cluster(data_dir: &Path) -> PgCluster {
    PgCluster::new(data_dir.join("pg/data"), data_dir.join("pg/run"))
}

/// Creates database `name` on the cluster if it does not exist.
pub async fn ensure_database(cluster: &PgCluster, name: &str) -> Result<(), StartError> {
    let admin = Db::connect(&cluster.url("postgres"), 1).await?;
    let c = admin.client().await?;
    let exists = c
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(scalebox_store::StoreError::from)?
        .is_some();
    if !exists {
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(scalebox_store::StoreError::from)?;
    }
    Ok(())
}

/// A started control plane and, when it manages one, its private Postgres cluster.
pub struct Started {
    pub control: Control,
    pub cluster: Option<PgCluster>,
    /// Set on the very first start: the bootstrap admin token (also written to
    /// `data_dir/admin-token`, mode 0600).
    pub bootstrap_token: Option<String>,
}

/// Brings up the database (private cluster if no URL is configured), migrates, bootstraps.
pub async fn start(config: ControlConfig) -> Result<Started, StartError> {
    let (url, cluster) = match &config.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let cluster = private_cluster(&config.data_dir);
            let c2 = cluster.clone();
            tokio::task::spawn_blocking(move || c2.start())
                .await
                .map_err(|e| StartError::Other(e.to_string()))??;
            ensure_database(&cluster, "scalebox").await?;
            (cluster.url("scalebox"), Some(cluster))
        }
    };
    let opened = async {
        let mut control = Control::open(config, &url).await?;
        if control.config.vms.enabled == Some(true) {
            let dir = control.config.data_dir.join("sandbox");
            let sb = scalebox_sandbox::Sandbox::open(
                control.config.vms.clone(),
                &dir,
                control.db.clone(),
            )
            .await
            .map_err(|e| StartError::Other(format!("VM sandboxes: {e}")))?;
            sb.warm_up();
            sb.start_gateway(control.config.listen)
                .await
                .map_err(|e| StartError::Other(format!("VM sandboxes: {e}")))?;
            control.sandbox = Some(sb);
        }
        let bootstrap_token = bootstrap(&control).await?;
        if let Some(t) = &bootstrap_token {
            write_token_file(&control.config.data_dir.join("admin-token"), t)?;
        }
        Ok::<_, StartError>((control, bootstrap_token))
    }
    .await;
    match opened {
        Ok((control, bootstrap_token)) => Ok(Started {
            control,
            cluster,
            bootstrap_token,
        }),
        Err(e) => {
            // Do not leave a private cluster running behind a failed start.
            if let Some(c) = cluster {
                let _ = tokio::task::spawn_blocking(move || c.stop()).await;
            }
            Err(e)
        }
    }
}

fn write_token_file(path: &Path, token: &str) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err =
        |e: std::io::Error| StartError::Other(format!("cannot write {}: {e}", path.display()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Serves the API until `shutdown` resolves, then stops the private cluster if there is one.
pub async fn serve(
    started: Started,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = started.control.config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {addr}: {e}")))?;
    tracing::info!(%addr, "control plane API listening");
    let app = crate::api::router(started.control.clone());
    let stopping = started.control.stopping.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reconciler = started.control.config.reconcile.then(|| {
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::orchestrate::run(
            started.control.clone(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        ))
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.send_replace(true);
            let _ = stop_tx.send(true);
        })
        .await;
    if let Some(r) = reconciler {
        let _ = r.await;
    }
    if let Some(c) = started.cluster {
        tracing::info!("stopping private postgres cluster");
        tokio::task::spawn_blocking(move || c.stop())
            .await
            .map_err(|e| StartError::Other(e.to_string()))??;
    }
    served.map_err(|e| StartError::Other(format!("server error: {e}")))
}
