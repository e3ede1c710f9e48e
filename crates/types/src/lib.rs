//! Types shared by every Scalebox component: names, the API error body.

pub mod api;
pub mod error;
pub mod name;
pub mod secrets_file;
