//! Instance lifecycle states, the allowed transitions, the per-instance record that is persisted
//! and reported, and the idempotent-ensure decision. Pure logic, no I/O.

use serde::{Deserialize, Serialize};

use crate::backend::{ExitStatus, VmHandle};
use crate::spec::InstanceSpec;

/// Lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Pending,
    Preparing,
    Booting,
    Running,
    Ready,
    Stopping,
    Exited,
    Failed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 8] = [
        Self::Pending,
        Self::Preparing,
        Self::Booting,
        Self::Running,
        Self::Ready,
        Self::Stopping,
        Self::Exited,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Preparing => "preparing",
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
            Self::Failed => "failed",
        }
    }

    /// Exited or failed: nothing runs any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Exited | Self::Failed)
    }

    /// Whether `self -> to` is a legal transition.
    pub fn can_go_to(self, to: InstanceState) -> bool {
        use InstanceState::*;
        if self.is_terminal() {
            return false;
        }
        match (self, to) {
            // Any live state may fail or begin stopping.
            (_, Failed) | (_, Stopping) => self != Stopping || to == Failed,
            (Pending, Preparing) => true,
            (Preparing, Booting) => true,
            (Booting, Running) => true,
            (Running, Ready) | (Ready, Running) => true,
            // A workload may exit on its own once it was started.
            (Booting | Running | Ready | Stopping, Exited) => true,
            _ => false,
        }
    }
}

/// One state change, kept in the record's bounded history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: InstanceState,
    pub at: String,
    pub reason: String,
}

/// Last health-check result, for "why is it not ready".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    pub passing: bool,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub last_error: Option<String>,
    pub last_check_at: Option<String>,
}

/// Everything the agent knows about one instance; persisted and returned by the API (secrets
/// are removed by [`InstanceRecord::public`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub spec: InstanceSpec,
    pub state: InstanceState,
    pub reason: String,
    pub since: String,
    pub history: Vec<Transition>,
    pub vm: Option<VmHandle>,
    pub tap: Option<String>,
    /// Address the host reaches the instance on (from the network attachment).
    #[serde(default)]
    pub guest_addr: Option<std::net::IpAddr>,
    pub rootfs: Option<String>,
    pub exit: Option<ExitStatus>,
    pub health: Option<HealthStatus>,
    /// Set once a stop was requested, so a restart keeps stopping rather than serving.
    #[serde(default)]
    pub stop_requested: bool,
}

const HISTORY_MAX: usize = 32;

/// An illegal transition was attempted (a bug or a race; logged, not fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from:?} -> {to:?}")]
pub struct IllegalTransition {
    pub from: InstanceState,
    pub to: InstanceState,
}

impl InstanceRecord {
    pub fn new(id: String, spec: InstanceSpec, now: String) -> Self {
        InstanceRecord {
            id,
            spec,
            state: InstanceState::Pending,
            reason: "accepted".into(),
            since: now.clone(),
            history: vec![Transition {
                state: InstanceState::Pending,
                at: now,
                reason: "accepted".into(),
            }],
            vm: None,
            tap: None,
            guest_addr: None,
            rootfs: None,
            exit: None,
            health: None,
            stop_requested: false,
        }
    }

    /// Applies a transition if it is legal.
    pub fn transition(
        &mut self,
        to: InstanceState,
        reason: impl Into<String>,
        now: String,
    ) -> Result<(), IllegalTransition> {
        if !self.state.can_go_to(to) {
            return Err(IllegalTransition {
                from: self.state,
                to,
            });
        }
        let reason = reason.into();
        self.state = to;
        self.reason = reason.clone();
        self.since = now.clone();
        self.history.push(Transition {
            state: to,
            at: now,
            reason,
        });
        if self.history.len() > HISTORY_MAX {
            let drop = self.history.len() - HISTORY_MAX;
            self.history.drain(..drop);
        }
        Ok(())
    }

    /// A copy safe to return over the API: secret values replaced.
    pub fn public(&self) -> InstanceRecord {
        let mut r = self.clone();
        for v in r.spec.secrets.0.values_mut() {
            *v = "<redacted>".into();
        }
        r
    }
}

/// What `ensure` should do given the current generation (if any) and the requested one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureDecision {
    /// Nothing known under this id: create.
    Create,
    /// Same id and generation: nothing to do.
    Unchanged,
    /// Newer generation: stop the old one and start the new spec.
    Replace,
    /// Older generation: refused (409).
    Stale { current: u64 },
}

/// Decides what an ensure request means. A terminal instance with the same generation stays
/// as it is (no-op): re-running it needs a newer generation.
pub fn decide_ensure(current: Option<u64>, requested: u64) -> EnsureDecision {
    match current {
        None => EnsureDecision::Create,
        Some(c) if c == requested => EnsureDecision::Unchanged,
        Some(c) if requested > c => EnsureDecision::Replace,
        Some(c) => EnsureDecision::Stale { current: c },
    }
}

/// The current time in RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::InstanceState::*;
    use super::*;

    fn rec() -> InstanceRecord {
        let spec: InstanceSpec =
            serde_json::from_str(r#"{"generation":1,"image":{"kind":"archive","path":"/a"}}"#)
                .unwrap();
        InstanceRecord::new("i".into(), spec, "t0".into())
    }

    #[test]
    fn happy_path_transitions() {
        let mut r = rec();
        for s in [Preparing, Booting, Running, Ready, Stopping, Exited] {
            r.transition(s, format!("to {s:?}"), "t".into()).unwrap();
        }
        assert_eq!(r.state, Exited);
        assert_eq!(r.history.len(), 7);
        assert!(r.transition(Running, "x", "t".into()).is_err());
    }

    #[test]
    fn illegal_transitions_refused() {
        let mut r = rec();
        assert_eq!(
            r.transition(Ready, "skip", "t".into()),
            Err(IllegalTransition {
                from: Pending,
                to: Ready
            })
        );
        assert!(!Pending.can_go_to(Exited));
        assert!(!Stopping.can_go_to(Stopping));
        assert!(Stopping.can_go_to(Failed));
        assert!(Ready.can_go_to(Running));
        assert!(Preparing.can_go_to(Failed));
        for t in [Exited, Failed] {
            for s in InstanceState::ALL {
                assert!(!t.can_go_to(s));
            }
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut r = rec();
        r.transition(Preparing, "", "t".into()).unwrap();
        r.transition(Booting, "", "t".into()).unwrap();
        r.transition(Running, "", "t".into()).unwrap();
        for _ in 0..100 {
            r.transition(Ready, "", "t".into()).unwrap();
            r.transition(Running, "", "t".into()).unwrap();
        }
        assert_eq!(r.history.len(), HISTORY_MAX);
    }

    #[test]
    fn ensure_semantics() {
        assert_eq!(decide_ensure(None, 3), EnsureDecision::Create);
        assert_eq!(decide_ensure(Some(3), 3), EnsureDecision::Unchanged);
        assert_eq!(decide_ensure(Some(3), 4), EnsureDecision::Replace);
        assert_eq!(
            decide_ensure(Some(3), 2),
            EnsureDecision::Stale { current: 3 }
        );
    }

    #[test]
    fn public_redacts_secrets() {
        let mut r = rec();
        r.spec.secrets.0.insert("K".into(), "v4lue".into());
        let s = serde_json::to_string(&r.public()).unwrap();
        assert!(!s.contains("v4lue") && s.contains("<redacted>"));
    }
}
