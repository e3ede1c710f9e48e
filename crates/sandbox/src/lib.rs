//! VM sandboxes (the `/vms` and `/templates` surface of `../shared/reference/scalebox-vm-api.md`):
//! templates (ext4 root filesystems), VMs cloned from them copy-on-write and booted with the
//! template's own init, SSH through a host TCP port and mosh through nftables UDP DNAT, snapshots
//! back into templates, the HTTPS gateway (Caddy) and recovery after a daemon restart.

pub mod config;
pub mod db;
pub mod disk;
pub mod error;
pub mod gateway;
pub mod lifecycle;
pub mod model;
pub mod names;
pub mod net;
pub mod proxy;
mod recover;
pub mod service;
mod snapshot;
pub mod template_build;

pub use config::SandboxConfig;
pub use error::{Kind, SandboxError};
pub use service::Sandbox;
