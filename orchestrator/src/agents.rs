//! Calls to the agents over their control channels: hello, status, role
//! commands with an epoch, feature toggles, evaluation, dumps — and the
//! waits that are defined by what the agents report (a standby current, the
//! peers seeing each other). Every call names the processor in its error.

use crate::channel::{AgentClient, Channel};
use crate::error::ProcessorError;
use crate::pair::{Pair, ProcId};
use crate::wait::{wait_until, Timeouts, STATUS_POLL};
use hitless_protocol::{ControlReply, ControlRequest, Evaluation, Hello, Role, Status, WorkUnit};
use std::time::Duration;

/// The two agents as the host reaches them.
#[derive(Debug, Clone)]
pub struct Agents {
    names: Pair<String>,
    channels: Pair<Channel>,
    timeouts: Timeouts,
}

impl Agents {
    /// The agents called `names`, reached through `channels`.
    pub fn new(names: Pair<String>, channels: Pair<Channel>, timeouts: Timeouts) -> Self {
        Agents { names, channels, timeouts }
    }

    /// How the host reaches `p`'s agent.
    pub fn channel(&self, p: ProcId) -> &Channel {
        &self.channels[p]
    }

    /// Both channels, with the processors' names (what a workload needs).
    pub fn targets(&self) -> Vec<(String, Channel)> {
        ProcId::BOTH.iter().map(|p| (self.names[*p].clone(), self.channels[*p].clone())).collect()
    }

    fn refused(&self, p: ProcId, message: String) -> ProcessorError {
        ProcessorError::Agent { processor: self.names[p].clone(), message }
    }

    /// One request, answered within `timeout`.
    pub async fn request(
        &self,
        p: ProcId,
        req: ControlRequest,
        timeout: Duration,
    ) -> Result<ControlReply, ProcessorError> {
        let unreachable = |source| ProcessorError::Unreachable { processor: self.names[p].clone(), source };
        let mut c = AgentClient::connect(&self.channels[p]).await.map_err(unreachable)?;
        match c.request(&req, timeout).await.map_err(unreachable)? {
            ControlReply::Error { message } => Err(self.refused(p, message)),
            r => Ok(r),
        }
    }

    /// One request with the usual timeout.
    pub async fn control(&self, p: ProcId, req: ControlRequest) -> Result<ControlReply, ProcessorError> {
        self.request(p, req, self.timeouts.request).await
    }

    /// The agent's hello (who it is, what it runs, its role).
    pub async fn hello(&self, p: ProcId, timeout: Duration) -> Result<Hello, ProcessorError> {
        match self.request(p, ControlRequest::Hello, timeout).await? {
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

    /// Command `p` into `role` at `epoch`.
    pub async fn set_role(&self, p: ProcId, role: Role, epoch: u64) -> Result<(), ProcessorError> {
        self.control(p, ControlRequest::SetRole { role, epoch }).await.map(|_| ())
    }

    /// Enable `feature` on `p`.
    pub async fn enable(&self, p: ProcId, feature: &str) -> Result<(), ProcessorError> {
        self.control(p, ControlRequest::EnableFeature { feature: feature.into() }).await.map(|_| ())
    }

    /// `p`'s own verdict on its version over the next `window_ms`.
    pub async fn evaluate(&self, p: ProcId, window_ms: u64) -> Result<Evaluation, ProcessorError> {
        let timeout = self.timeouts.request + Duration::from_millis(window_ms);
        match self.request(p, ControlRequest::Evaluate { window_ms }, timeout).await? {
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
            if self.status(p).await.is_ok_and(|s| s.hello.role == Role::Active) {
                return Some(p);
            }
        }
        None
    }

    /// Wait until `standby` completed its step-up and its active sees it registered.
    pub async fn wait_standby_current(&self, standby: ProcId) -> Result<(), ProcessorError> {
        let active = standby.other();
        let probe = async || {
            let s = self.status(standby).await?;
            let a = self.status(active).await?;
            if let Some(why) = s.peer.as_ref().and_then(|p| p.refused.clone()) {
                return Err(self.refused(standby, format!("cannot become standby: {why}")));
            }
            Ok((s.replication.synced && a.replication.registered.is_some() && !a.replication.simplex).then_some(()))
        };
        let expired = || ProcessorError::Timeout {
            processor: self.names[standby].clone(),
            what: format!("step-up from {}", self.names[active]),
            after: self.timeouts.stepup,
        };
        wait_until(self.timeouts.stepup, STATUS_POLL, probe, expired).await
    }

    /// Wait until each agent sees its peer over the link.
    pub async fn wait_peers_seen(&self) -> Result<(), ProcessorError> {
        for p in ProcId::BOTH {
            let probe = async || Ok(self.status(p).await?.peer.is_some_and(|peer| peer.connected).then_some(()));
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
