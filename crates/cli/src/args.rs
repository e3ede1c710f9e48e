//! The command-line grammar (clap derive). Completions and man pages are generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sb",
    version,
    about = "Scalebox: deploy OCI images as microVMs",
    propagate_version = true
)]
pub struct Cli {
    /// Print machine-readable JSON (also SCALEBOX_JSON=true).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub scope: Scope,
    #[command(subcommand)]
    pub command: Command,
}

/// Which org/app/env a command applies to (flags override the saved context).
#[derive(Args, Clone, Default)]
pub struct Scope {
    /// Org (default: the saved context, else the token's org).
    #[arg(long, global = true)]
    pub org: Option<String>,
    /// App (default: the saved context).
    #[arg(long, global = true)]
    pub app: Option<String>,
    /// Environment (default: the saved context).
    #[arg(long, global = true)]
    pub env: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Store the server URL and token (checked against the server).
    Login(LoginArgs),
    /// Forget the stored token.
    Logout,
    /// Show who the token is.
    Whoami,
    /// Show the configuration in effect.
    Config(ConfigArgs),
    /// Save or show the org/app/env selection, for this directory or globally.
    Context(ContextArgs),
    /// Orgs (tenants).
    Orgs(OrgsArgs),
    /// Projects (optional grouping of apps).
    Projects(NamedArgs),
    /// Apps.
    Apps(AppsArgs),
    /// Environments of an app, and their dedicated IPv4 (`sb envs ipv4 enable`).
    Envs(EnvsArgs),
    /// API tokens of the org.
    Tokens(TokensArgs),
    /// Routes: hostname or TCP port → env, process type, backend port.
    Routes(RoutesArgs),
    /// Volumes.
    Volumes(VolumesArgs),
    /// The audit log: who did what, when.
    Events(EventsArgs),
    /// Check a manifest (scalebox.toml).
    Manifest(ManifestArgs),
    /// Releases of an app.
    Releases(ReleasesArgs),
    /// Secrets of an environment.
    Secrets(SecretsArgs),
    /// Deploy the app's newest release (or --release N) to the environment; waits for the outcome.
    Deploy(DeployArgs),
    /// Deploy an earlier release again: N, or the newest that served before the current one.
    Rollback(RollbackArgs),
    /// Set instance counts of process types: sb scale web=3 worker=1.
    Scale {
        /// PROCESS=COUNT pairs; process types not named keep their count.
        #[arg(required = true, value_name = "PROCESS=COUNT")]
        pairs: Vec<String>,
    },
    /// Server summary (`GET /info`): addresses, VM and template counts, storage, memory, CPU.
    Status,
    /// What the environment runs: releases, deployment, process types, instances.
    Ps,
    /// Why the environment is not converged (what it waits for, what failed).
    Why,
    /// Stop every instance of the environment (`sb start` brings them back).
    Stop,
    /// Start a stopped environment again.
    Start,
    /// Deployments of the environment, newest first.
    Deployments,
    /// Hosts of the cluster (operator admins).
    Hosts(HostsArgs),
    /// Output of the environment's instances (all, one process type, or one instance).
    Logs(LogsArgs),
    /// Run a command inside an instance: sb exec web -- ls /.
    Exec(ExecArgs),
    /// VM sandboxes: list, get, create, delete, snapshot, wait.
    Vm(VmArgs),
    /// VM templates (root filesystems VMs are created from).
    Template(TemplateArgs),
    /// Log in to a VM with mosh (or SSH with --ssh) using the managed key.
    Connect(ConnectArgs),
    /// Create a VM, wait for SSH, connect: sb run -t debian-base -- htop.
    Run(RunArgs),
    /// Create a debian-base VM with the managed key and connect to it.
    Go,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages.
    Man {
        #[arg(long, default_value = "man")]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct LoginArgs {
    /// Server URL, e.g. https://scalebox.example.com or http://127.0.0.1:7443.
    #[arg(long)]
    pub host: String,
    /// Read the token from standard input (without it or --token: SCALEBOX_TOKEN, else a prompt).
    #[arg(long, conflicts_with = "token")]
    pub token_stdin: bool,
    /// The token (prefer --token-stdin: arguments are visible to other users).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the URL, token prefix and context in effect, and where each comes from.
    Show,
}

#[derive(Args)]
pub struct ContextArgs {
    #[command(subcommand)]
    pub command: ContextCommand,
}

#[derive(Subcommand)]
pub enum ContextCommand {
    /// Save --org/--app/--env for this directory (or --global).
    Set {
        #[arg(long)]
        global: bool,
    },
    /// Show the context in effect here.
    Show,
    /// Forget the context of this directory (or --global).
    Clear {
        #[arg(long)]
        global: bool,
    },
}

#[derive(Args)]
pub struct OrgsArgs {
    #[command(subcommand)]
    pub command: OrgsCommand,
}

#[derive(Subcommand)]
pub enum OrgsCommand {
    List,
    /// Create an org; prints its first admin token (once).
    Create {
        name: String,
    },
    Get {
        name: Option<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Args)]
pub struct NamedArgs {
    #[command(subcommand)]
    pub command: NamedCommand,
}

#[derive(Subcommand)]
pub enum NamedCommand {
    List,
    Create { name: String },
    Get { name: String },
    Delete { name: String },
}

#[derive(Args)]
pub struct EnvsArgs {
    #[command(subcommand)]
    pub command: EnvsCommand,
}

#[derive(Subcommand)]
pub enum EnvsCommand {
    List,
    Create {
        name: String,
    },
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
    /// The environment's dedicated public IPv4 (--env): the edge serves its --ipv4 routes on it.
    Ipv4(Ipv4Args),
}

#[derive(Args)]
pub struct Ipv4Args {
    #[command(subcommand)]
    pub command: Ipv4Command,
}

#[derive(Subcommand)]
pub enum Ipv4Command {
    /// Give the environment an address from the operator's pool (or show the one it holds).
    Enable,
    /// Give the environment's address back to the pool.
    Disable,
}

#[derive(Args)]
pub struct AppsArgs {
    #[command(subcommand)]
    pub command: AppsCommand,
}

#[derive(Subcommand)]
pub enum AppsCommand {
    List,
    Create {
        name: String,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    Get {
        name: Option<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: TokensCommand,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    List,
    /// Create a token; prints it once.
    Create {
        name: String,
        /// admin, deployer, reader, or join (joins hosts; operator org only).
        #[arg(long, default_value = "deployer", value_parser = ["admin", "deployer", "reader", "join"])]
        role: String,
    },
    Revoke {
        id: String,
    },
}

#[derive(Args)]
pub struct RoutesArgs {
    #[command(subcommand)]
    pub command: RoutesCommand,
}

#[derive(Subcommand)]
pub enum RoutesCommand {
    List,
    /// Create a route for --app/--env.
    Create {
        /// TLS passthrough by SNI for this hostname.
        #[arg(long, conflicts_with = "tcp")]
        hostname: Option<String>,
        /// Raw TCP on an allocated (or --listen) port.
        #[arg(long)]
        tcp: bool,
        /// Process type receiving the traffic.
        #[arg(long)]
        process: String,
        /// Port inside the instance.
        #[arg(long)]
        port: i32,
        /// Listener port (tls: 443; tcp: allocated).
        #[arg(long)]
        listen: Option<i32>,
        /// Prepend a PROXY protocol header (only `v2`).
        #[arg(long, value_parser = ["v2"])]
        proxy_protocol: Option<String>,
        /// Also reachable over IPv4: on the env's dedicated IPv4 (`sb envs ipv4 enable`), else on
        /// the edge's shared IPv4 address.
        #[arg(long)]
        ipv4: bool,
    },
    Delete {
        id: String,
    },
}

#[derive(Args)]
pub struct VolumesArgs {
    #[command(subcommand)]
    pub command: VolumesCommand,
}

#[derive(Subcommand)]
pub enum VolumesCommand {
    List,
    /// Create a volume (attached to --app/--env when given).
    Create {
        name: String,
        #[arg(long)]
        size_gb: i32,
    },
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Take a snapshot of a volume on its host (the guest using it is synced and paused for the copy).
    Snapshot {
        /// Volume name.
        volume: String,
    },
    /// List a volume's snapshots.
    Snapshots {
        /// Volume name.
        volume: String,
    },
    /// Delete a snapshot of a volume.
    SnapshotDelete {
        /// Volume name.
        volume: String,
        /// Snapshot id (from `sb volumes snapshots VOL`).
        id: String,
    },
    /// Back up a volume off-host: a snapshot (--snapshot ID, else a new one) copied to the backup target.
    Backup(VolumeBackupArgs),
    /// List a volume's backups, with their progress.
    Backups {
        /// Volume name.
        volume: String,
    },
    /// Make a volume's disk anew on another host from a backup, after its host was lost.
    Restore {
        /// Volume name.
        volume: String,
        /// Backup id, or `latest` (the newest succeeded backup).
        #[arg(
            long,
            value_name = "ID|latest",
            default_value = "latest",
            conflicts_with = "snapshot"
        )]
        backup: String,
        /// Restore this snapshot instead (only with --into; the copy is made on its host).
        #[arg(long, value_name = "ID", requires = "into")]
        snapshot: Option<String>,
        /// Restore into this new volume instead of re-making the volume's own disk.
        #[arg(long, value_name = "NEW_VOLUME")]
        into: Option<String>,
        /// Host to restore onto (default: a live host; for the volume itself, not its own).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
    },
}

/// `sb volumes backup`.
#[derive(Args, Debug)]
pub struct VolumeBackupArgs {
    /// Volume name.
    pub volume: String,
    /// Back up this snapshot (default: take a new one now).
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Follow the backup until it finishes (progress on stderr); exit 7 when it fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: seconds to wait before giving up (exit 7; the backup goes on server-side).
    #[arg(long, value_name = "S", default_value_t = 3600, requires = "wait")]
    pub timeout: u64,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Only events after this sequence number.
    #[arg(long)]
    pub after: Option<i64>,
    /// Page size (1-500).
    #[arg(long, default_value_t = EventsArgs::DEFAULT_LIMIT)]
    pub limit: i64,
    /// Only this event type (e.g. AppCreated).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only this stream (e.g. app:<id>).
    #[arg(long)]
    pub stream: Option<String>,
}

impl EventsArgs {
    pub const DEFAULT_LIMIT: i64 = 50;
}

#[derive(Args)]
pub struct ManifestArgs {
    #[command(subcommand)]
    pub command: ManifestCommand,
}

#[derive(Subcommand)]
pub enum ManifestCommand {
    /// Validate a manifest; errors show file:line:column.
    Validate {
        #[arg(default_value = "scalebox.toml")]
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    pub command: Option<ReleasesCommand>,
}

#[derive(Subcommand)]
pub enum ReleasesCommand {
    List,
    Get {
        release: String,
    },
    /// Create a release of --app from an image digest and a manifest.
    Create {
        /// Image reference as you know it (e.g. registry.example.com/api:1.4; a tag is resolved
        /// to its digest by asking the registry, and the release names it pinned). A local
        /// image (`oci-archive:PATH`, `archive:PATH`, or an `oci:DIR[:TAG]` layout, packed into
        /// an archive on the fly) is uploaded to the control plane first (unless the org has it
        /// already).
        #[arg(long)]
        image: String,
        /// The image's content digest (sha256:...), instead of working it out: local images
        /// (`oci-archive:PATH`, `oci:DIR[:TAG]`) are read, registry tags are resolved, and
        /// `name@sha256:…` references carry it (a different --digest is refused).
        #[arg(long)]
        digest: Option<String>,
        #[arg(long, default_value = "scalebox.toml")]
        manifest: PathBuf,
    },
    /// What differs between two releases: image, manifest.
    Diff {
        a: String,
        b: String,
    },
}

#[derive(Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Names and version of the current secrets (values are never shown).
    List,
    /// Set secrets: NAME=value ... (or --from-file in the secrets file format); makes a new version.
    Set {
        pairs: Vec<String>,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Remove secrets by name; makes a new version.
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Versions of the secrets bundle.
    Versions,
    /// Print NAME=value pairs in the exact file format instances see.
    Render {
        pairs: Vec<String>,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct DeployArgs {
    /// Release number to deploy (default: the app's newest release).
    #[arg(long, value_name = "N", value_parser = release_number, conflicts_with = "image")]
    pub release: Option<i64>,
    /// Create a release of this image first, then deploy it (`oci-archive:PATH`, `oci:DIR[:TAG]`,
    /// or a registry reference; a registry tag is resolved to its digest here and the release
    /// names it pinned). Local images (`oci-archive:PATH`, `archive:PATH`, `oci:DIR[:TAG]`) are
    /// uploaded to the control plane, with progress on stderr; registry references are not.
    #[arg(long)]
    pub image: Option<String>,
    /// The image's digest, instead of working it out (skips asking the registry for a tag).
    #[arg(long, requires = "image")]
    pub digest: Option<String>,
    /// The manifest of the new release (with --image).
    #[arg(long, default_value = "scalebox.toml")]
    pub manifest: PathBuf,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args)]
pub struct RollbackArgs {
    /// Release number to deploy (default: the newest release that served before the current one).
    #[arg(value_name = "N", value_parser = release_number)]
    pub release: Option<i64>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// How `sb deploy` and `sb rollback` follow the deployment they start.
#[derive(Args)]
pub struct WaitArgs {
    /// Return once the deployment is accepted; follow it with `sb ps`.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the outcome, by default a minute past the server's 600 s rollout
    /// deadline; the deployment itself goes on server-side.
    #[arg(long, value_name = "SECS", default_value_t = 660)]
    pub timeout: u64,
    /// Extra instances a process type may run during the rollout (server default 1).
    #[arg(long, value_name = "N")]
    pub max_surge: Option<u32>,
    /// Ready instances a process type may lose during the rollout (default 0).
    #[arg(long)]
    pub max_unavailable: Option<u32>,
}

/// A release number: `4` or `v4`.
fn release_number(s: &str) -> std::result::Result<i64, String> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("expected a release number like 4 (or v4), got {s:?}"))
}

#[derive(Args)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub command: HostsCommand,
}

#[derive(Subcommand)]
pub enum HostsCommand {
    List,
    /// Move a host's instances to other hosts and place no new ones on it.
    Drain {
        name: String,
    },
    /// Let a drained host take instances again.
    Undrain {
        name: String,
    },
}

#[derive(Args)]
pub struct LogsArgs {
    /// Only this process type (e.g. web; `release` for release command runs).
    pub process: Option<String>,
    /// Only this instance (id from `sb ps`).
    #[arg(long)]
    pub instance: Option<String>,
    /// Keep printing new output.
    #[arg(long, short)]
    pub follow: bool,
    /// Recent output to start with, in KiB per instance.
    #[arg(long, default_value_t = 16)]
    pub tail_kib: u64,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Process type whose (first ready) instance runs the command.
    #[arg(default_value = "web")]
    pub process: String,
    /// Run it in this instance instead (id from `sb ps`).
    #[arg(long)]
    pub instance: Option<String>,
    /// Seconds to wait for the command (non-interactive).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Interactive: run it on a terminal (stdin, resizes, colours), e.g. `sb exec -t web -- sh`.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// The command and its arguments, after `--` (no shell: use `sh -c '...'` for one).
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

#[derive(Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// List VMs.
    List,
    /// Show a VM (by id or name).
    Get {
        /// VM id (vm-…) or name.
        vm: String,
    },
    /// Create a VM from a template; its `user` accepts the given key (default: the managed key).
    Create(VmCreateArgs),
    /// Delete a VM (by id or name).
    Delete {
        /// VM id (vm-…) or name.
        vm: String,
    },
    /// Copy a VM's root filesystem into a new template (authorized keys cleared).
    Snapshot {
        /// VM id (vm-…) or name.
        vm: String,
        /// Name of the new template ([A-Za-z0-9_-]+).
        #[arg(short = 'n', long = "name", value_name = "NAME")]
        name: String,
    },
    /// Wait until the VM is running, and with --ssh until SSH answers on its port.
    Wait {
        /// VM id (vm-…) or name.
        vm: String,
        /// Wait until a connection to the VM's SSH port answers with an SSH banner.
        #[arg(long)]
        ssh: bool,
        /// Seconds to wait before giving up (exit 7).
        #[arg(long, value_name = "S", default_value_t = 120)]
        timeout: u64,
    },
}

/// The VM a `create` asks for.
#[derive(Args, Clone, Debug, Default)]
pub struct VmCreateArgs {
    /// Template to copy the root filesystem from.
    #[arg(short = 't', long, value_name = "TEMPLATE")]
    pub template: String,
    #[command(flatten)]
    pub spec: VmSpecArgs,
}

/// `create` flags other than the template (shared with `sb run`).
#[derive(Args, Clone, Debug, Default)]
pub struct VmSpecArgs {
    /// SSH public key for `user`: the key itself or @FILE (default: the managed key).
    #[arg(short = 'k', long = "key", value_name = "KEY|@FILE")]
    pub key: Option<String>,
    /// Memory in MiB (server default when omitted).
    #[arg(short = 'm', long = "mem", alias = "memory", value_name = "MIB")]
    pub mem_mib: Option<u32>,
    /// Root disk size in GiB (server default when omitted).
    #[arg(short = 'd', long = "disk", value_name = "GIB")]
    pub disk_gib: Option<u32>,
    /// VM name (default: a generated adverb-adjective-noun name).
    #[arg(long)]
    pub name: Option<String>,
    /// Virtual CPUs (server default when omitted).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
}

#[derive(Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    pub command: TemplateCommand,
}

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// List templates.
    List,
    /// Delete a template (protected templates such as debian-base cannot be deleted).
    Delete {
        /// Template name ([A-Za-z0-9_-]+).
        name: String,
    },
}

/// How `sb connect` / `sb run` log in.
#[derive(Args, Clone, Debug, Default)]
pub struct SessionArgs {
    /// Plain SSH instead of mosh.
    #[arg(long)]
    pub ssh: bool,
    /// User to log in as.
    #[arg(
        short = 'l',
        long = "user",
        value_name = "USER",
        default_value = "user"
    )]
    pub user: String,
    /// Private key file (default: the managed key, $SCALEBOX_CONFIG_DIR/id_ed25519).
    #[arg(short = 'i', long = "identity", value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// Extra ssh option, e.g. -o StrictHostKeyChecking=accept-new (repeatable).
    #[arg(short = 'o', value_name = "OPT")]
    pub options: Vec<String>,
    /// Command to run in the VM instead of a login shell (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[derive(Args)]
pub struct ConnectArgs {
    /// VM id (vm-…) or name.
    pub vm: String,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Args)]
pub struct RunArgs {
    /// Template to copy the root filesystem from.
    #[arg(
        short = 't',
        long,
        value_name = "TEMPLATE",
        default_value = "debian-base"
    )]
    pub template: String,
    #[command(flatten)]
    pub spec: VmSpecArgs,
    /// Seconds to wait for SSH before giving up (exit 7; the VM is kept).
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub session: SessionArgs,
}
