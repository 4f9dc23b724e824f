//! Calls to the agents over their control channels: hello, status, role
//! commands with an epoch, feature toggles, evaluation, dumps — and the
//! waits that are defined by what the agents report (a standby current, the
//! peers seeing each other). Every call names the processor in its error.

use crate::channel::{AgentClient, Channel, ChannelError};
use crate::error::ProcessorError;
use crate::machine::Reach;
use crate::pair::{Pair, ProcId};
use crate::wait::{wait_until, Timeouts, STATUS_POLL};
use hitless_protocol::{
    ControlReply, ControlRequest, Evaluation, Hello, OutputStream, Role, Status, WorkUnit, CONTROL_PORT,
    TAKE_OVER_WAIT_MS,
};
use std::time::{Duration, Instant};

/// How long an agent may take over a role command before answering: it may
/// wait for its peer's hello (5 s) or flush its in-flight updates (5 s).
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(11);
/// Idle control connections kept per processor (the watch, the procedure and a wait may ask at once).
const IDLE_PER_PROCESSOR: usize = 4;
/// Between attempts at an unanswered request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Whether a processor's agent may be dialled now (from the machine backend).
pub type Reachability = std::sync::Arc<dyn Fn(ProcId) -> Reach + Send + Sync>;

/// How a command run by [`Agents::exec`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandEnd {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// It ran out of time and was killed.
    pub timed_out: bool,
}

impl CommandEnd {
    /// The exit code a shell would give: the command's own, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

/// The two agents as the host reaches them.
#[derive(Clone)]
pub struct Agents {
    names: Pair<String>,
    channels: Pair<Channel>,
    timeouts: Timeouts,
    reach: Reachability,
    /// Idle control connections, kept for the next request: every new one is a
    /// `CONNECT` through the vsock device, and vhost-device-vsock 0.3.0 has been
    /// seen to lose a guest's connections under a steady churn of them.
    idle: std::sync::Arc<Pair<std::sync::Mutex<Vec<AgentClient>>>>,
}

impl Agents {
    /// The agents called `names`, reached through `channels`; `reach` says whom to dial.
    pub fn new(names: Pair<String>, channels: Pair<Channel>, timeouts: Timeouts, reach: Reachability) -> Self {
        let idle = std::sync::Arc::new(Pair::from_fn(|_| std::sync::Mutex::new(Vec::new())));
        Agents { names, channels, timeouts, reach, idle }
    }

    /// How the host reaches `p`'s agent.
    pub fn channel(&self, p: ProcId) -> &Channel {
        &self.channels[p]
    }

    /// Whether the workload may dial target `i` (in config order) now: only a running machine.
    pub fn may_dial(&self) -> crate::workload::MayDial {
        let reach = self.reach.clone();
        std::sync::Arc::new(move |i| {
            let p = if i == 0 { ProcId::FIRST } else { ProcId::SECOND };
            matches!(reach(p), Reach::Up)
        })
    }

    /// Both channels, with the processors' names (what a workload needs).
    pub fn targets(&self) -> Vec<(String, Channel)> {
        ProcId::BOTH.iter().map(|p| (self.names[*p].clone(), self.channels[*p].clone())).collect()
    }

    fn refused(&self, p: ProcId, message: String) -> ProcessorError {
        ProcessorError::Agent { processor: self.names[p].clone(), message }
    }

    /// One attempt at one request, answered within `timeout`.
    pub async fn request(
        &self,
        p: ProcId,
        req: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlReply, ProcessorError> {
        let unreachable = |source| ProcessorError::Unreachable { processor: self.names[p].clone(), source };
        self.dialable(p)?;
        let kept = self.idle[p].lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut c = match kept {
            Some(c) => c,
            None => AgentClient::connect(&self.channels[p]).await.map_err(unreachable)?,
        };
        // A connection that failed or timed out is dropped (its reply could still arrive); a good one is kept.
        let reply = c.request(req, timeout).await.map_err(unreachable)?;
        let mut idle = self.idle[p].lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_PER_PROCESSOR && !matches!(req, ControlRequest::Crash) {
            idle.push(c);
        }
        drop(idle);
        match reply {
            ControlReply::Error { message } => Err(self.refused(p, message)),
            ControlReply::Lacking { seq, holding } => {
                Err(ProcessorError::Lacking { processor: self.names[p].clone(), seq, holding })
            }
            r => Ok(r),
        }
    }

    /// Whether `p`'s agent may be dialled now; if not, why.
    fn dialable(&self, p: ProcId) -> Result<(), ProcessorError> {
        let not_dialled = |detail: &str| ProcessorError::Unreachable {
            processor: self.names[p].clone(),
            source: ChannelError::Connect { port: CONTROL_PORT, detail: detail.into() },
        };
        match (self.reach)(p) {
            Reach::Down => Err(not_dialled("its machine is not running")),
            Reach::AgentGone => Err(not_dialled("its agent exited (its machine still runs)")),
            Reach::Paused => Err(not_dialled("its machine is paused (not dialled until it runs)")),
            Reach::Up => Ok(()),
        }
    }

    /// Run `argv` in `p`'s guest, killed after `timeout`; each chunk of its
    /// output goes to `out` as it comes. On its own connection: the command
    /// answers with many lines.
    pub async fn exec(
        &self,
        p: ProcId,
        argv: Vec<String>,
        timeout: Duration,
        mut out: impl FnMut(OutputStream, &[u8]),
    ) -> Result<CommandEnd, ProcessorError> {
        let unreachable = |source| ProcessorError::Unreachable { processor: self.names[p].clone(), source };
        self.dialable(p)?;
        let mut c = AgentClient::connect(&self.channels[p]).await.map_err(unreachable)?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        c.send(&ControlRequest::Exec { argv, timeout_ms }).await.map_err(unreachable)?;
        // The agent kills the command at `timeout` and says so; this bound is for an agent that went silent.
        let deadline = Instant::now() + timeout + self.timeouts.request;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.reply(left).await.map_err(unreachable)? {
                ControlReply::Output { stream, data } => out(stream, &data),
                ControlReply::Exited { code, signal, timed_out } => return Ok(CommandEnd { code, signal, timed_out }),
                ControlReply::Error { message } => return Err(self.refused(p, message)),
                other => return Err(self.refused(p, format!("unexpected reply to exec: {other:?}"))),
            }
        }
    }

    /// The same agents with a pool of their own, for calls made on another
    /// runtime: a kept connection belongs to the runtime that opened it, and is
    /// only served while that runtime runs (a fault applied on its own thread
    /// while the orchestrator's current-thread runtime waits for it would wait
    /// on a connection nobody reads).
    pub fn with_own_connections(&self) -> Self {
        let idle = std::sync::Arc::new(Pair::from_fn(|_| std::sync::Mutex::new(Vec::new())));
        Agents { idle, ..self.clone() }
    }

    /// Forget `p`'s kept connections (it was restarted: they lead to the old machine).
    pub fn forget(&self, p: ProcId) {
        self.idle[p].lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How long one attempt at `req` may take, and whether it may be retried.
    /// A quick question gets a short attempt: a guest that was paused, or a
    /// request the vsock daemon lost, costs seconds, not the whole budget.
    /// Role commands may be retried because they carry an epoch (the agent
    /// answers the same command again idempotently); an evaluation may not (it
    /// would start a new window).
    fn attempt(&self, req: &ControlRequest) -> (Duration, bool) {
        let quick = Duration::from_secs(1) * self.timeouts.slowdown;
        match req {
            ControlRequest::Hello
            | ControlRequest::Status
            | ControlRequest::Dump
            | ControlRequest::EnableFeature { .. }
            | ControlRequest::DisableFeature { .. } => (quick, true),
            // A crash is answered before the agent exits; asked again, there is nobody left to answer.
            ControlRequest::Crash => (quick, false),
            // The agent may wait for its peer's hello, or flush its in-flight updates, first.
            ControlRequest::SetRole { .. } => (ROLE_CHANGE_WAIT + quick, true),
            // Answered once the peer has stepped down (or the agent stopped waiting for it).
            ControlRequest::TakeOver { .. } => (Duration::from_millis(TAKE_OVER_WAIT_MS) + quick, true),
            // Not through `control`: see `exec`.
            ControlRequest::Exec { timeout_ms, .. } => (Duration::from_millis(*timeout_ms) + quick, false),
            ControlRequest::Evaluate { window_ms } => {
                (Duration::from_millis(*window_ms) + self.timeouts.request, false)
            }
        }
    }

    /// A request, retried within the request budget while the agent is unreachable
    /// or silent; a refusal is an answer and ends it at once.
    pub async fn control(&self, p: ProcId, req: ControlRequest) -> Result<ControlReply, ProcessorError> {
        let (attempt, retry) = self.attempt(&req);
        let deadline = Instant::now() + self.timeouts.request.max(attempt);
        loop {
            match self.request(p, &req, attempt).await {
                Err(e @ ProcessorError::Unreachable { .. })
                    if retry
                        && matches!((self.reach)(p), Reach::Up | Reach::Paused)
                        && Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tracing::debug!("{}: retrying {req:?}: {e}", self.names[p]);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// `p`'s status in one quick attempt: for waits that poll anyway.
    pub async fn poll_status(&self, p: ProcId) -> Result<Status, ProcessorError> {
        let (attempt, _) = self.attempt(&ControlRequest::Status);
        match self.request(p, &ControlRequest::Status, attempt).await? {
            ControlReply::Status(s) => Ok(*s),
            other => Err(self.refused(p, format!("unexpected reply to status: {other:?}"))),
        }
    }

    /// The agent's hello (who it is, what it runs, its role), in one attempt of at most `timeout`.
    pub async fn hello(&self, p: ProcId, timeout: Duration) -> Result<Hello, ProcessorError> {
        match self.request(p, &ControlRequest::Hello, timeout).await? {
            ControlReply::Hello(h) => Ok(h),
            other => Err(self.refused(p, format!("unexpected reply to hello: {other:?}"))),
        }
    }

    /// The agent's full status.
    pub async fn status(&self, p: ProcId) -> Result<Status, ProcessorError> {
        match self.control(p, ControlRequest::Status).await? {
            ControlReply::Status(s) => Ok(*s),
            other => Err(self.refused(p, format!("unexpected reply to status: {other:?}"))),
        }
    }

    /// Command `p` into `role` at `epoch` (a promotion `holding` the demoted
    /// active's last update: see [`ProcessorError::Lacking`]). Returns the last
    /// update `p` applied, when its agent says (after a demotion: once flushed).
    pub async fn set_role(
        &self,
        p: ProcId,
        role: Role,
        epoch: u64,
        holding: Option<u64>,
    ) -> Result<Option<u64>, ProcessorError> {
        match self.control(p, ControlRequest::SetRole { role, epoch, holding }).await? {
            ControlReply::Done { seq, .. } => Ok(seq),
            other => Err(self.refused(p, format!("unexpected reply to a role command: {other:?}"))),
        }
    }

    /// Arm `p` to become active at `epoch` once its peer steps down at
    /// `peer_epoch` (see [`ControlRequest::TakeOver`]); answered once it has.
    pub async fn take_over(&self, p: ProcId, epoch: u64, peer_epoch: u64) -> Result<(), ProcessorError> {
        match self.control(p, ControlRequest::TakeOver { epoch, peer_epoch }).await? {
            ControlReply::Done { .. } => Ok(()),
            other => Err(self.refused(p, format!("unexpected reply to a take-over: {other:?}"))),
        }
    }

    /// Enable `feature` on `p`.
    pub async fn enable(&self, p: ProcId, feature: &str) -> Result<(), ProcessorError> {
        self.control(p, ControlRequest::EnableFeature { feature: feature.into() }).await.map(|_| ())
    }

    /// `p`'s own verdict on its version over the next `window_ms`.
    pub async fn evaluate(&self, p: ProcId, window_ms: u64) -> Result<Evaluation, ProcessorError> {
        match self.control(p, ControlRequest::Evaluate { window_ms }).await? {
            ControlReply::Evaluation(e) => Ok(e),
            other => Err(self.refused(p, format!("unexpected reply to evaluate: {other:?}"))),
        }
    }

    /// Every work unit `p` holds, and the sequence number they reflect.
    pub async fn dump(&self, p: ProcId) -> Result<(u64, Vec<WorkUnit>), ProcessorError> {
        match self.control(p, ControlRequest::Dump).await? {
            ControlReply::Dump { seq, units } => Ok((seq, units)),
            other => Err(self.refused(p, format!("unexpected reply to dump: {other:?}"))),
        }
    }

    /// The processor whose agent reports itself active, if any.
    pub async fn active(&self) -> Option<ProcId> {
        for p in ProcId::BOTH {
            if self.poll_status(p).await.is_ok_and(|s| s.hello.role == Role::Active) {
                return Some(p);
            }
        }
        None
    }

    /// Wait until `standby` completed its step-up and its active sees it
    /// current. An agent that does not answer for a moment (a paused guest)
    /// only delays this; a refusal to pair ends it.
    pub async fn wait_standby_current(&self, standby: ProcId) -> Result<(), ProcessorError> {
        let active = standby.other();
        let probe = async || {
            for p in [standby, active] {
                if matches!((self.reach)(p), Reach::Down | Reach::AgentGone) {
                    return Err(self.refused(p, "its machine or its agent is not running".into()));
                }
            }
            let (Ok(s), Ok(a)) = (self.poll_status(standby).await, self.poll_status(active).await) else {
                return Ok(None);
            };
            if let Some(why) = s.peer.as_ref().and_then(|p| p.refused.clone()) {
                return Err(self.refused(standby, format!("cannot become standby: {why}")));
            }
            let seen_from_active = a.hello.role == Role::Active && a.replication.standby_current().is_ok();
            Ok((s.replication.synced && seen_from_active && answered(&s, &a)).then_some(()))
        };
        let expired = || ProcessorError::Timeout {
            processor: self.names[standby].clone(),
            what: format!("step-up from {}", self.names[active]),
            after: self.timeouts.stepup,
        };
        wait_until(self.timeouts.stepup, STATUS_POLL, probe, expired).await
    }

    /// Wait until the active `active` sees its standby current (attached,
    /// registering, heard from). Nothing may leave service, and no standby may
    /// be promoted, before that: the active may have acked work alone.
    pub async fn wait_seen_current(&self, active: ProcId) -> Result<(), ProcessorError> {
        let mut why = String::from("no answer");
        let probe = async || match self.poll_status(active).await {
            Ok(a) if a.hello.role != Role::Active => {
                Err(self.refused(active, format!("expected it active, it is {}", a.hello.role)))
            }
            Ok(a) => match a.replication.standby_current() {
                Ok(()) => Ok(Some(())),
                Err(w) => {
                    why = w;
                    Ok(None)
                }
            },
            Err(_) if matches!((self.reach)(active), Reach::Down | Reach::AgentGone) => {
                Err(self.refused(active, "its machine or its agent is not running".into()))
            }
            Err(_) => Ok(None),
        };
        let expired = || ProcessorError::Timeout {
            processor: self.names[active].clone(),
            what: format!("seeing standby {} current", self.names[active.other()]),
            after: self.timeouts.stepup,
        };
        let r = wait_until(self.timeouts.stepup, STATUS_POLL, probe, expired).await;
        r.map_err(|e| match e {
            ProcessorError::Timeout { .. } => self.refused(
                active,
                format!(
                    "standby {} is not current as {} sees it: {why}",
                    self.names[active.other()],
                    self.names[active]
                ),
            ),
            e => e,
        })
    }

    /// Wait until each agent sees its peer over the link.
    pub async fn wait_peers_seen(&self) -> Result<(), ProcessorError> {
        for p in ProcId::BOTH {
            let probe = async || {
                let seen = self.poll_status(p).await.is_ok_and(|s| s.peer.is_some_and(|peer| peer.connected));
                Ok(seen.then_some(()))
            };
            let expired = || ProcessorError::Timeout {
                processor: self.names[p].clone(),
                what: "seeing its peer over the link".into(),
                after: self.timeouts.stepup,
            };
            wait_until(self.timeouts.stepup, STATUS_POLL, probe, expired).await?;
        }
        Ok(())
    }
}

/// Whether the active `a` has answered the standby `s` as it is now: it has
/// heard the standby's latest hello (a role command, even one that changes no
/// role, or a feature enabled makes the standby announce itself again, and the
/// active steps it up anew on each), and the standby holds that step-up's
/// generation. Without this a wait could end on the previous step-up's
/// registration while the next one is still on its way.
fn answered(s: &Status, a: &Status) -> bool {
    let heard = a.peer.as_ref().is_some_and(|p| {
        p.connected
            && p.hello.role == Role::Standby
            && p.hello.epoch == s.hello.epoch
            && p.hello.enabled == s.hello.enabled
    });
    heard && s.replication.generation == a.replication.generation
}

#[cfg(test)]
mod tests;
