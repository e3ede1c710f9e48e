//! Scalebox host agent core: the per-instance actors that turn a desired instance spec into a
//! running workload, built on three small traits ([`backend::VmBackend`],
//! [`backend::RootfsProvider`], [`backend::Network`]) that the real VMM, image and host-network
//! crates implement. Owns instance state, persistence, restart reconciliation, the on-disk log
//! ring, health checks, metrics and the local agent HTTP API.

pub mod actor;
pub mod api;
mod api_volumes;
pub mod backend;
pub mod cgroup;
pub mod config;
pub mod control_link;
pub mod dev;
pub mod error;
pub mod firecracker_backend;
pub mod guest_link;
pub mod health;
pub mod image_rootfs;
pub mod logring;
pub mod manager;
pub mod metrics;
pub mod overlay;
pub mod persist;
pub mod process_backend;
pub mod qemu_backend;
pub mod spec;
pub mod state;
pub mod sync;
pub mod tap_network;
pub mod volume_jobs;
pub mod volumes;

mod run;

pub use config::AgentConfig;
pub use error::AgentError;
pub use run::{Components, process_components, run, run_with};
