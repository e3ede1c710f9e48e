//! The Scalebox control plane: the only writer of desired state. HTTP handlers (`api`) parse
//! requests and call per-resource operations (`ops`), which validate, append events and update
//! views in one transaction through `command`.

pub mod api;
pub use api::router;
pub mod auth;
pub mod command;
pub mod config;
pub mod crypto;
pub mod error;
pub mod ops;
pub mod orchestrate;
pub mod server;

pub use config::ControlConfig;
pub use error::ApiError;
pub use server::{Control, bootstrap};
