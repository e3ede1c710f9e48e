//! VM sandbox administration: `rebuild-template` (also installed as
//! `scalebox-rebuild-template`) and the base template build on first start of `up`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use scalebox_sandbox::template_build::{self, BuildOptions, DEBIAN_BASE};

#[derive(Args)]
pub struct RebuildArgs {
    /// Template name.
    #[arg(default_value = DEBIAN_BASE)]
    name: String,
    /// Templates directory (default `<data_dir>/sandbox/templates`).
    #[arg(long)]
    templates_dir: Option<PathBuf>,
    /// Data directory of the control plane.
    #[arg(long, env = "SCALEBOX_DATA_DIR", default_value = "/var/lib/scalebox")]
    data_dir: PathBuf,
    /// Debian mirror (default: the host's APT source).
    #[arg(long)]
    mirror: Option<String>,
    /// Only rebuild when the installed version is older than this build's.
    #[arg(long)]
    if_outdated: bool,
}

pub async fn rebuild(a: RebuildArgs) -> anyhow::Result<()> {
    let dir = a
        .templates_dir
        .unwrap_or_else(|| a.data_dir.join("sandbox/templates"));
    if a.if_outdated && !template_build::needs_rebuild(&dir, &a.name) {
        println!(
            "template {} is current (version {})",
            a.name,
            template_build::DEBIAN_BASE_VERSION
        );
        return Ok(());
    }
    let opts = BuildOptions {
        name: a.name.clone(),
        mirror: a.mirror,
        ..BuildOptions::new(&dir)
    };
    let built = tokio::task::spawn_blocking(move || {
        template_build::rebuild(&opts, &mut |line| eprintln!("  {line}"))
    })
    .await?
    .with_context(|| format!("building template {}", a.name))?;
    println!(
        "template {} version {} built in {:.0} s: {} ({} MiB)",
        built.name,
        built.version,
        built.duration.as_secs_f64(),
        built.image.display(),
        built.size_bytes >> 20
    );
    Ok(())
}

/// Builds `debian-base` in the background when it is missing or outdated (and allowed).
pub fn ensure_base_template(sb: scalebox_sandbox::Sandbox) {
    let dir = sb.templates_dir();
    if !sb.config().build_base_template || !template_build::needs_rebuild(&dir, DEBIAN_BASE) {
        return;
    }
    tracing::info!(
        "building the {DEBIAN_BASE} VM template in the background (debootstrap, about a minute)"
    );
    sb.set_building(DEBIAN_BASE, true);
    tokio::task::spawn_blocking(move || {
        let mut last = std::time::Instant::now();
        let r = template_build::rebuild(&BuildOptions::new(&dir), &mut |line| {
            if last.elapsed().as_secs() >= 5 {
                tracing::info!("{DEBIAN_BASE}: {line}");
                last = std::time::Instant::now();
            }
        });
        match r {
            Ok(b) => tracing::info!(
                "template {DEBIAN_BASE} version {} is ready ({} MiB, {:.0} s)",
                b.version,
                b.size_bytes >> 20,
                b.duration.as_secs_f64()
            ),
            Err(e) => tracing::error!(
                "building template {DEBIAN_BASE} failed: {e}; retry with `scaleboxd rebuild-template`"
            ),
        }
        sb.set_building(DEBIAN_BASE, false);
    });
}
