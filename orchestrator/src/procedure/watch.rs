//! Watching the active while a command runs the pair. Agents never promote
//! themselves (a pair has no quorum to decide with): the running orchestrator
//! notices that the active is lost, confirms it, fences it, and only then
//! promotes the standby with a new epoch — if the active last saw that
//! standby current. [`Watch::loss`] is the noticing and confirming; the run
//! does the fencing and the promotion ([`super::run`]).
//!
//! A machine that is gone, or whose agent exited, is lost at once. An agent
//! that only stops answering (a hung or paused guest) is lost after
//! [`UNANSWERED`] (times the platform's slowdown) — and only when a current
//! standby could take over: fencing a hung active that alone holds the
//! run-state would destroy the only copy, so then the watch waits for it.

use crate::agents::Agents;
use crate::machine::{Backend, Machines, Reach};
use crate::pair::ProcId;
use hitless_protocol::{ControlReply, ControlRequest, Role};
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
    /// Whether it last saw its standby current: only then may the standby take over.
    pub standby_current: bool,
}

/// The watch over one pair.
#[derive(Clone)]
pub struct Watch {
    agents: Agents,
    machines: Arc<Backend>,
    designated: Designated,
    slowdown: u32,
}

impl Watch {
    /// Watch the processor `designated` names, through `agents` and `machines`.
    pub fn new(agents: Agents, machines: Arc<Backend>, designated: Designated, slowdown: u32) -> Watch {
        Watch { agents, machines, designated, slowdown }
    }

    /// Resolves when the designated active is lost; never otherwise.
    pub async fn loss(&self) -> Loss {
        let mut last_current: Option<(ProcId, bool)> = None;
        let mut unanswered: Option<(ProcId, Instant)> = None;
        loop {
            tokio::time::sleep(POLL).await;
            let Some(a) = self.designated.get() else {
                (last_current, unanswered) = (None, None);
                continue;
            };
            let current = last_current.filter(|(p, _)| *p == a).is_some_and(|(_, c)| c);
            let lost = |how: String| Loss { processor: a, how, standby_current: current };
            match self.machines.reach(a) {
                Reach::Down => return lost("its machine is not running".into()),
                Reach::AgentGone => {
                    let line = self.machines.agent_gone(a).unwrap_or_default();
                    return lost(format!("its agent exited ({line})"));
                }
                Reach::Paused => {}
                Reach::Up => {
                    let look = self.agents.request(a, &ControlRequest::Status, LOOK * self.slowdown).await;
                    if let Ok(ControlReply::Status(s)) = look {
                        unanswered = None;
                        if s.hello.role == Role::Active {
                            last_current = Some((a, s.replication.standby_current().is_ok()));
                        }
                        continue;
                    }
                }
            }
            let since = unanswered.filter(|(p, _)| *p == a).map_or_else(Instant::now, |(_, t)| t);
            unanswered = Some((a, since));
            let limit = UNANSWERED * self.slowdown;
            if since.elapsed() >= limit && current {
                return lost(format!("its agent has not answered for {} ms", since.elapsed().as_millis()));
            }
        }
    }
}
