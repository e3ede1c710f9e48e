//! Types shared by every Scalebox component: names, the API error body.

pub mod api;
pub mod error;
pub mod exec_frames;
pub mod name;
pub mod secrets_file;
