//! Scalebox scheduler: pure placement of instances onto hosts. A [`Snapshot`] (hosts with capacity,
//! labels, volumes and state; desired scale and resources per (env, process type); existing
//! placements) goes in, a deterministic [`Plan`] (new placements, removals, what could not be
//! placed and why) comes out. No I/O.
//!
//! Rules: memory is a hard cap, never oversubscribed; CPU is oversubscribed up to
//! [`Config::cpu_oversubscription`]; an instance needing a local volume runs on that volume's host
//! or stays unplaced with a reason; replicas of a group spread across hosts (fewest replicas of the
//! group first, then most free memory); an unchanged, converged snapshot moves nothing; scaling
//! down removes from the most crowded host, newest first; instances on draining hosts move.

mod model;
mod place;
mod plan;
mod reason;
mod state;

pub use model::*;
pub use plan::{plan, plan_reference};

#[cfg(test)]
mod tests;
