//! Postgres storage for the control plane: the private cluster it can manage, embedded schema
//! migrations, the append-only event log, projections into views, and view rebuilds.

pub mod error;
pub mod events;
pub mod log;
pub mod migrate;
pub mod pgcluster;
pub mod pool;
pub mod projection;
pub mod rebuild;

pub use error::StoreError;
pub use events::{Event, EventEnvelope};
pub use pool::Db;
