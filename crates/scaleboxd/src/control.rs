//! The `control` and `up` subcommands.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use scalebox_agent::control_link::{ControlClient, Credential, HostFacts};
use scalebox_control::ControlConfig;
use scalebox_control::server::{self, Started};
use scalebox_store::rebuild;

#[derive(Args)]
pub struct ControlArgs {
    /// Config file (TOML). Without it, defaults apply; DATABASE_URL overrides database_url.
    #[arg(long, short, global = true, env = "SCALEBOX_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the config file's data_dir).
    #[arg(long, global = true, env = "SCALEBOX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<ControlCommand>,
}

#[derive(Subcommand)]
enum ControlCommand {
    /// Drop every view and replay the event log into them.
    RebuildViews,
    /// Manage API tokens directly in the database.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for an org and print it (once).
    Create {
        /// Org name.
        #[arg(long)]
        org: String,
        /// admin, deployer or reader.
        #[arg(long, default_value = "admin")]
        role: String,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Instance backend: microVMs (`auto`: Firecracker where it can run, else QEMU; or forced
    /// `qemu`/`firecracker`), or local processes (dev/test only, no isolation).
    #[arg(long, value_enum, default_value = "auto")]
    backend: crate::agent::Backend,
    /// Agent config file (TOML, docs/agent.md); its data_dir defaults to `<data_dir>/agent`.
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// Edge config file (TOML, docs/edge.md); its state_dir defaults to `<data_dir>/edge`.
    #[arg(long)]
    edge_config: Option<PathBuf>,
    /// Do not serve VM sandboxes (`/vms`, `/templates`); they are on by default with microVMs.
    #[arg(long)]
    no_vms: bool,
}

fn load(args: &ControlArgs) -> anyhow::Result<ControlConfig> {
    let mut cfg = ControlConfig::load(args.config.as_deref())?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let cfg = load(&args)?;
    match args.command {
        None => serve(cfg).await,
        Some(ControlCommand::RebuildViews) => {
            with_control(cfg, |s| async move {
                let n = rebuild::rebuild_views(&s.control.db).await?;
                println!("rebuilt views from {n} events");
                Ok(())
            })
            .await
        }
        Some(ControlCommand::Token {
            command: TokenCommand::Create { org, role, name },
        }) => {
            with_control(cfg, |s| async move {
                let token =
                    scalebox_control::ops::tokens::create_direct(&s.control, &org, &role, &name)
                        .await?;
                println!("{token}");
                Ok(())
            })
            .await
        }
    }
}

/// Starts the database side only, runs `f`, stops a private cluster again.
async fn with_control<F, Fut>(cfg: ControlConfig, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Started) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = server::start(cfg)
        .await
        .context("starting the control plane database")?;
    let cluster = started.cluster.clone();
    print_bootstrap(&started);
    let result = f(started).await;
    if let Some(c) = cluster {
        tokio::task::spawn_blocking(move || c.stop()).await??;
    }
    result
}

fn print_bootstrap(s: &Started) {
    if let Some(t) = &s.bootstrap_token {
        println!(
            "First start: created org {:?} and its admin token (shown once, also saved to {}):\n\n    {t}\n",
            s.control.config.operator_org,
            s.control.config.data_dir.join("admin-token").display()
        );
    }
}

async fn serve(cfg: ControlConfig) -> anyhow::Result<()> {
    let started = server::start(cfg)
        .await
        .context("starting the control plane")?;
    print_bootstrap(&started);
    server::serve(started, crate::shutdown_signal()).await?;
    Ok(())
}

/// `scaleboxd up`: everything a single machine needs, supervised together: the private
/// Postgres and control plane, the host agent (microVMs; the guest kernel is fetched on first
/// run) and the edge. Ctrl-C stops all of them (instances and VMs keep running); the next `up`
/// re-adopts them with state intact.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = load(&args.control)?;
    if args.control.command.is_some() {
        bail!("`scaleboxd up` takes no control subcommand");
    }
    let url = format!("http://{}", cfg.listen);
    let data_dir = cfg.data_dir.clone();
    // Pidfile and command line for `scaleboxd update`, which restarts us with SIGUSR2.
    let mut running = crate::update::Running::start(&data_dir)?;
    let agent_data = match &args.agent_config {
        Some(p) => scalebox_agent::config::AgentConfig::load(p)?.data_dir,
        None => data_dir.join("agent"),
    };
    // VM sandboxes run on this machine too, sharing the agent's guest kernel and initramfs.
    if args.no_vms {
        cfg.vms.enabled = Some(false);
    }
    if cfg.vms.enabled.is_none() && args.backend.is_microvm() {
        cfg.vms.enabled = Some(true);
        if cfg.vms.runtime_dir.is_none() {
            cfg.vms.runtime_dir = Some(agent_data.clone());
        }
    }
    let started = server::start(cfg)
        .await
        .context("starting the control plane")?;
    print_bootstrap(&started);
    if let Some(sb) = &started.control.sandbox {
        crate::vms::ensure_base_template(sb.clone());
    }

    let agent_args = crate::agent::AgentArgs {
        config: args.agent_config.clone(),
        data_dir: Some(agent_data),
        backend: args.backend,
        firecracker: Default::default(),
        force_tcg: false,
        no_network: false,
        join: None,
        join_token: None,
        host_name: None,
        address: "127.0.0.1".into(),
    };
    let mut agent_cfg = crate::agent::load(&agent_args)?;
    // This machine is the cluster's one host: register it on first start.
    let cred_path = agent_cfg.data_dir.join("control.json");
    let credential = match Credential::load(&cred_path).map_err(anyhow::Error::msg)? {
        Some(c) => c,
        None => {
            let facts = HostFacts::detect("127.0.0.1");
            let token = scalebox_control::ops::hosts::register_direct(
                &started.control,
                scalebox_types::api::CreateHost {
                    name: facts.name.clone(),
                    address: facts.address.clone(),
                    cpus: facts.cpus,
                    memory_mb: facts.memory_mb,
                    labels: Default::default(),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("registering this host: {}", e.message))?;
            let c = Credential {
                url: url.clone(),
                token,
                host: facts.name,
                address: Some(facts.address.clone()),
            };
            std::fs::create_dir_all(&agent_cfg.data_dir)?;
            c.save(&cred_path).map_err(anyhow::Error::msg)?;
            println!("Registered this machine as host {:?}.", c.host);
            c
        }
    };
    agent_cfg.control_credential = Some(cred_path);
    // Instances get the addresses the control plane's IPAM allocates in this host's /64.
    if let Ok(client) = started.control.db.client().await
        && let Ok(Some(row)) = client
            .query_opt(
                "SELECT ipv6_prefix FROM v_hosts WHERE name = $1",
                &[&credential.host],
            )
            .await
        && let Some(prefix) = row.get::<_, Option<String>>(0)
        && let Some(Ok(addr)) = prefix.split('/').next().map(str::parse)
    {
        agent_cfg.instance_ipv6_prefix = addr;
    }
    let agent_listen = agent_cfg.listen;
    println!("Preparing the microVM backend (the first run downloads the guest kernel)...");
    let components = match crate::agent::components(
        &agent_cfg,
        agent_args.backend,
        &agent_args.firecracker,
        false,
        true,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = started.cluster.clone() {
                let _ = tokio::task::spawn_blocking(move || c.stop()).await;
            }
            return Err(e);
        }
    };
    let edge_cfg = match &args.edge_config {
        Some(p) => scalebox_edge::EdgeConfig::load(p)?,
        None => scalebox_edge::EdgeConfig {
            state_dir: data_dir.join("edge"),
            ..Default::default()
        },
    };
    let edge_admin = edge_cfg.admin_addr;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut control = tokio::spawn(server::serve(started, stopped(stop_rx.clone())));
    let mut agent = tokio::spawn(async move {
        match components {
            Some(c) => scalebox_agent::run_with(agent_cfg, c, stopped(stop_rx.clone())).await,
            None => scalebox_agent::run(agent_cfg, stopped(stop_rx.clone())).await,
        }
    });
    let edge_rx = stop_tx.subscribe();
    let edge_srv = scalebox_edge::Edge::start(edge_cfg).await?;
    let feed = tokio::spawn(crate::edge::feed(
        edge_srv.handle(),
        ControlClient::new(&credential.url, &credential.token),
        stop_tx.subscribe(),
    ));
    let mut edge = tokio::spawn(edge_srv.run(stopped(edge_rx)));
    println!(
        "Scalebox is up.\n  API:          {url}\n  admin token:  {tok}\n  agent API:    http://{agent_listen} (token in {agent_tok})\n  edge metrics: http://{edge_admin}/metrics\n\nNext (sb is target/release/sb):\n  export SCALEBOX_URL={url}\n  export SCALEBOX_TOKEN=$(cat {tok})\n  sb whoami\n  examples/shop/build.sh /tmp/shop.tar && sb apps create shop && sb --app shop envs create prod\n  sb --app shop --env prod routes create --tcp --process web --port 8080 --listen 18080\n  sb --app shop --env prod deploy --image oci-archive:/tmp/shop.tar --manifest examples/shop/scalebox.toml\n  curl http://[::1]:18080/cgi-bin/info\n\nVM sandboxes (the debian-base template is built on first start):\n  sb template list && sb go\n\nCtrl-C stops the daemons; instances and VMs keep running and the next `scaleboxd up` re-adopts them with state intact.",
        tok = data_dir.join("admin-token").display(),
        agent_tok = data_dir.join("agent/api-token").display(),
    );
    // Run until Ctrl-C, or until one component stops on its own (then stop the others).
    let mut restart = false;
    let failed: Option<String> = tokio::select! {
        _ = crate::shutdown_signal() => None,
        _ = running.restart_requested() => { restart = true; None }
        r = &mut control => Some(format!("the control plane stopped: {r:?}")),
        r = &mut agent => Some(format!("the agent stopped: {r:?}")),
        r = &mut edge => Some(format!("the edge stopped: {r:?}")),
    };
    let _ = stop_tx.send(true);
    // (A handle that already finished in the select above must not be polled again.)
    if !edge.is_finished() {
        let _ = edge.await;
    }
    if !agent.is_finished() {
        let _ = agent.await;
    }
    let _ = feed.await;
    if !control.is_finished() {
        let _ = control.await;
    }
    match failed {
        Some(why) => bail!("{why}; everything else was stopped"),
        // SIGUSR2: the same pid runs the binary now at our path (`scaleboxd update`).
        None if restart => Err(running.reexec()),
        None => {
            println!("Scalebox stopped.");
            Ok(())
        }
    }
}
