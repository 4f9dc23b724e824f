//! Watching the active while a command runs the pair. Agents never promote
//! themselves (a pair has no quorum to decide with): the running orchestrator
//! notices that the active is lost, confirms it, fences it, and only then
//! promotes the standby with a new epoch — if the active saw that standby
//! current just before it was lost. [`Watch`] is the noticing and confirming;
//! the run does the fencing and the promotion ([`super::run`]).
//!
//! A machine that is gone, or whose agent exited, is lost at once. An agent
//! that only stops answering (a hung or paused guest) is lost after
//! [`UNANSWERED`] (times the platform's slowdown) — and only when a current
//! standby could take over: fencing a hung active that alone holds the
//! run-state would destroy the only copy, so then the watch waits for it.
//!
//! What the watch last saw is kept across steps: a step that fails because
//! its active just died asks [`Watch::lost_now`] before calling it an error.

use crate::agents::Agents;
use crate::machine::{Backend, Machines, Reach};
use crate::pair::ProcId;
use hitless_protocol::{ControlReply, ControlRequest, Role, REGISTRATION_BOUND_MS};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the active is looked at.
const POLL: Duration = Duration::from_millis(50);
/// One look at the active's status.
const LOOK: Duration = Duration::from_millis(300);
/// How long an active whose machine runs may leave its agent unanswered before it counts as lost.
pub const UNANSWERED: Duration = Duration::from_secs(1);

/// Which processor the procedure has made active, if one is (none while it switches over).
#[derive(Debug, Clone, Default)]
pub struct Designated(Arc<Mutex<Option<ProcId>>>);

impl Designated {
    /// Now `p` is the active (or none).
    pub fn set(&self, p: Option<ProcId>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// The active, if one is designated.
    pub fn get(&self) -> Option<ProcId> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An active found lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// Which processor.
    pub processor: ProcId,
    /// How it was found lost.
    pub how: String,
    /// Whether it saw its standby current just before: only then may the standby take over.
    pub standby_current: bool,
}

/// What the watch saw of the active, kept across steps (shared with the
/// testbed, which forgets it whenever it changes a role).
#[derive(Debug, Default)]
pub struct Observed {
    /// The active it was about.
    active: Option<ProcId>,
    /// When that active last showed its standby current.
    current_at: Option<Instant>,
    /// Since when it has not answered.
    unanswered_since: Option<Instant>,
}

impl Observed {
    /// A role changed: whatever was seen current may not be any more.
    pub fn forget(&mut self) {
        self.current_at = None;
    }

    /// The procedure itself just saw the active see its standby current.
    pub fn current_now(&mut self) {
        self.current_at = Some(Instant::now());
    }
}

/// The watch over one pair.
#[derive(Clone)]
pub struct Watch {
    agents: Agents,
    machines: Arc<Backend>,
    designated: Designated,
    slowdown: u32,
    seen: Arc<Mutex<Observed>>,
}

impl Watch {
    /// Watch the processor `designated` names, through `agents` and `machines`,
    /// keeping what it sees in `seen`.
    pub fn new(
        agents: Agents,
        machines: Arc<Backend>,
        designated: Designated,
        seen: Arc<Mutex<Observed>>,
        slowdown: u32,
    ) -> Watch {
        Watch { agents, machines, designated, slowdown, seen }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the standby was seen current just before `failing_since`: the
    /// active cannot have acked anything alone before its standby had been
    /// silent for the registration bound.
    fn was_current(&self, failing_since: Instant) -> bool {
        let bound = Duration::from_millis(REGISTRATION_BOUND_MS);
        self.seen().current_at.is_some_and(|t| t + bound >= failing_since)
    }

    /// One look: the loss, if the designated active is lost now. `confirm`
    /// allows counting an unanswered agent as lost once it has been so long enough.
    async fn look(&self, confirm: bool) -> Option<Loss> {
        let a = self.designated.get()?;
        {
            let mut s = self.seen();
            if s.active != Some(a) {
                *s = Observed { active: Some(a), ..Observed::default() };
            }
        }
        let lost =
            |how: String, since: Instant| Some(Loss { processor: a, how, standby_current: self.was_current(since) });
        match self.machines.reach(a) {
            Reach::Down => return lost("its machine is not running".into(), Instant::now()),
            Reach::AgentGone => {
                let line = self.machines.agent_gone(a).unwrap_or_default();
                return lost(format!("its agent exited ({line})"), Instant::now());
            }
            Reach::Paused => {}
            Reach::Up => {
                if let Ok(ControlReply::Status(st)) =
                    self.agents.request(a, &ControlRequest::Status, LOOK * self.slowdown).await
                {
                    let mut s = self.seen();
                    s.unanswered_since = None;
                    let current = st.hello.role == Role::Active && st.replication.standby_current().is_ok();
                    s.current_at = current.then(Instant::now);
                    return None;
                }
            }
        }
        let since = *self.seen().unanswered_since.get_or_insert_with(Instant::now);
        let limit = UNANSWERED * self.slowdown;
        if confirm && since.elapsed() >= limit && self.was_current(since) {
            return lost(format!("its agent has not answered for {} ms", since.elapsed().as_millis()), since);
        }
        None
    }

    /// Resolves when the designated active is lost; never otherwise.
    pub async fn loss(&self) -> Loss {
        loop {
            if let Some(l) = self.look(true).await {
                return l;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Look once now, so that what the watch knows is fresh (before a step begins).
    pub async fn refresh(&self) {
        let _ = self.look(false).await;
    }

    /// Whether the designated active is lost right now (its machine or its agent gone).
    pub async fn lost_now(&self) -> Option<Loss> {
        let a = self.designated.get()?;
        matches!(self.machines.reach(a), Reach::Down | Reach::AgentGone).then_some(())?;
        self.look(false).await
    }
}
