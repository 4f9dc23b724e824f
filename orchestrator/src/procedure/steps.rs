//! What each step of Fig. 6 does to the pair: isolating a processor,
//! reloading it, making it standby, the switchover with its evaluation, the
//! fallback, and enabling the new features. [`super::table`] says which step
//! comes next; this module only carries them out.

use super::run::Run;
use super::table::{Outcome, Step};
use crate::error::{chain, Error, ProcessorError};
use crate::events::Event;
use crate::machine::Machines;
use crate::pair::ProcId;
use crate::testbed::Testbed;
use hitless_protocol::{FeatureSet, Role};

/// Enable `features` on both processors, the active first: step 207's action,
/// and `hitless enable`. Each answer is an event; a refusal (a processor whose
/// version lacks a feature, or whose peer's does) stops there, with the agent's reason.
pub async fn enable_features(tb: &Testbed, features: &[String]) -> Result<(), Error> {
    let first = tb.active().await.unwrap_or(ProcId::FIRST);
    for f in features {
        for p in [first, first.other()] {
            let result = tb.agents().enable(p, f).await;
            let said = match &result {
                Ok(()) => "enabled".to_string(),
                Err(ProcessorError::Agent { message, .. }) => format!("refused: {message}"),
                Err(e) => format!("failed: {}", chain(e)),
            };
            tb.events().emit(Event::Feature { processor: tb.name(p).into(), feature: f.clone(), result: said });
            result?;
        }
    }
    Ok(())
}

impl Run<'_> {
    fn refused(&self, p: ProcId, message: String) -> Error {
        ProcessorError::Agent { processor: self.tb.name(p).into(), message }.into()
    }

    pub(super) async fn execute(&mut self, step: Step) -> Result<Outcome, Error> {
        let (first, second) = (self.first, self.second);
        let (from, to) = (self.plan.from.clone(), self.plan.to.clone());
        match step {
            Step::Initial => {
                let problems = crate::health::assess(&self.tb.status().await);
                if !problems.is_empty() {
                    let list = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    let why = format!("the pair is not healthy: {list}; run `hitless repair` first");
                    return Err(self.refused(first, why));
                }
                let a = self.tb.agents().status(first).await?;
                let s = self.tb.agents().status(second).await?;
                if a.hello.role != Role::Active || s.hello.role != Role::Standby {
                    let (n1, n2) = (self.tb.name(first), self.tb.name(second));
                    let found = format!("found {} and {}", a.hello.role, s.hello.role);
                    return Err(self.refused(first, format!("expected {n1} active and {n2} standby, {found}")));
                }
                if self.tb.version_of(first) != self.tb.version_of(second) {
                    let why = "the processors run different versions; finish or roll back first";
                    return Err(self.refused(first, why.into()));
                }
                if from == to {
                    return Err(self.refused(first, format!("both processors already run {to}")));
                }
                Ok(Outcome::Done)
            }
            Step::IsolateStandby => {
                self.take_out_of_service(second).await?;
                Ok(Outcome::Done)
            }
            Step::ReloadStandby => {
                self.tb.reload(second, &to).await?;
                self.expect_no_features(second).await?;
                Ok(Outcome::Done)
            }
            Step::StandbyOnNew => {
                self.tb.make_standby(second).await?;
                Ok(Outcome::Done)
            }
            Step::SwitchOverAndEvaluate => {
                self.switch_over(first, second, step).await?;
                Ok(self.evaluate(second, first).await)
            }
            Step::Fallback => self.fallback(&from).await.map(|_| Outcome::Done),
            Step::ReloadOther => {
                self.take_out_of_service(first).await?;
                self.tb.reload(first, &to).await?;
                self.expect_no_features(first).await?;
                Ok(Outcome::Done)
            }
            Step::OtherStandby => {
                self.tb.make_standby(first).await?;
                Ok(Outcome::Done)
            }
            Step::EnableFeatures => {
                let new = self.new_features();
                enable_features(self.tb, &new).await?;
                if new.is_empty() {
                    self.tb.events().progress(format!("{to} brings no new features to enable"));
                }
                Ok(Outcome::Done)
            }
            Step::Completed | Step::RolledBack | Step::Failed => Ok(Outcome::Done),
        }
    }

    /// Take `p` out of service, once its partner (the active) sees it current.
    /// One that is not running already is: a step cut short mid-reload is
    /// redone on `--resume` with the processor down.
    async fn take_out_of_service(&mut self, p: ProcId) -> Result<(), Error> {
        if !self.tb.alive(p) {
            self.tb.events().progress(format!("{} is not running: already out of service", self.tb.name(p)));
            return Ok(());
        }
        // Redone on `--resume` after it was isolated: nothing to check or change.
        if self.tb.agents().status(p).await?.hello.role == Role::OutOfService {
            self.tb.events().progress(format!("{} is already out of service", self.tb.name(p)));
            return Ok(());
        }
        self.tb.wait_seen_current(p.other()).await?;
        self.tb.set_role(p, Role::OutOfService).await?;
        Ok(())
    }

    /// Features the new version supports that the old one does not.
    fn new_features(&self) -> Vec<String> {
        let feats = |v: &str| -> FeatureSet { self.tb.software(v).map(|s| s.features).unwrap_or_default() };
        feats(&self.plan.to).difference(&feats(&self.plan.from)).cloned().collect()
    }

    async fn expect_no_features(&self, p: ProcId) -> Result<(), Error> {
        let s = self.tb.agents().status(p).await?;
        if s.hello.enabled.is_empty() {
            Ok(())
        } else {
            Err(self.refused(p, format!("new features enabled after reload: {:?}", s.hello.enabled)))
        }
    }

    /// Make `new` active in place of `old` (old becomes standby), recording the switchover window.
    /// While `old` runs, `new` is promoted only once `old` sees it current: if
    /// `old` acked work alone (simplex), promoting `new` would lose it.
    async fn switch_over(&mut self, old: ProcId, new: ProcId, step: Step) -> Result<(), Error> {
        if self.tb.alive(old) && self.tb.agents().poll_status(old).await.is_ok_and(|s| s.hello.role == Role::Active) {
            self.tb.wait_seen_current(old).await?;
        }
        let t0 = self.now();
        // Counted before any promotion is sent: a cancel may abandon this step while
        // the new active already serves, and its acks must not look like a second active.
        self.switches.push((step, t0, t0, self.tb.name(new).to_string()));
        // The demoted active's last update, which `new` must hold to be promoted (none once `old` is fenced).
        let mut holding = None;
        let mut taken_over = false;
        if !self.tb.alive(old) {
            // It died on its own: fenced (the watch stands down: this switchover is the failover).
            self.tb.events().progress(format!(
                "{}'s machine exited; fencing it before {} is promoted",
                self.tb.name(old),
                self.tb.name(new)
            ));
            self.tb.fence(old).await;
        } else if let Some(line) = self.tb.machines().agent_gone(old) {
            // Its agent crashed while its machine runs: fence the machine before anything else becomes active.
            self.tb
                .events()
                .progress(format!("{}'s agent exited ({line}); fencing it by stopping its machine", self.tb.name(old)));
            self.tb.stop(old).await;
        } else {
            let switched = self.tb.switch_roles(old, new).await?;
            match switched.demoted {
                Ok(seq) => holding = Some(self.said_last_update(old, seq)?),
                // It does not obey (its agent died while its machine is still going down, or it
                // refused): fence it — stop its machine — before anything else becomes active.
                Err(e) => {
                    let why = chain(&e);
                    self.tb.events().progress(format!(
                        "{} did not step down ({why}); fencing it by stopping its machine",
                        self.tb.name(old)
                    ));
                    self.tb.stop(old).await;
                }
            }
            // Not taken over (the link was down, it lacks updates `old` applied, an agent
            // from before take-overs): promoted by command below, which says why if it cannot be.
            taken_over = switched.took_over.is_ok();
            if let Err(e) = &switched.took_over {
                self.tb.events().progress(format!(
                    "{} did not take over ({}); promoting it by command",
                    self.tb.name(new),
                    chain(e)
                ));
            }
        }
        if !taken_over {
            match holding {
                Some(holding) => self.promote_holding(old, new, holding).await?,
                None => {
                    self.tb.set_role(new, Role::Active).await?;
                }
            }
        }
        let t1 = self.now();
        if let Some(s) = self.switches.last_mut() {
            s.2 = t1;
        }
        if self.tb.alive(old) {
            // First look one poll later: asked at once, both guests would be answering
            // status while the new active serves its first acks (median gap 30 -> 26 ms
            // over 16 interleaved pairs on 2026-12-03's host).
            tokio::time::sleep(crate::wait::STATUS_POLL).await;
            self.tb.wait_standby_current(old).await?;
        }
        Ok(())
    }

    /// Promote `new` holding `holding`, the demoted `old`'s last update: its
    /// agent refuses if it lacks that update — `old` ran alone when the
    /// currency check above was skipped or since (paused as the switchover
    /// began, say, it resumed past the link's timeout and acked work simplex
    /// that `new` never got; promoted, `new` would step `old` up with its own
    /// state, and that work would be lost). The answer comes with the
    /// promotion, so this costs the service gap nothing when all is well. On a
    /// refusal `old` is made active again until it sees `new` current, and
    /// demoted again; twice at most, after which `old` is left active and the step fails.
    async fn promote_holding(&mut self, old: ProcId, new: ProcId, mut holding: u64) -> Result<(), Error> {
        let mut handed_back = 0;
        loop {
            let seq = match self.tb.promote_holding(new, holding).await {
                Err(Error::Processor(ProcessorError::Lacking { seq, .. })) => seq,
                other => return other,
            };
            let (old_name, new_name) = (self.tb.name(old).to_string(), self.tb.name(new).to_string());
            let lacks = format!("{new_name} lacks updates {} to {holding} that {old_name} applied", seq + 1);
            if handed_back < 2 {
                self.tb
                    .events()
                    .progress(format!("{lacks}: {old_name} is made active again until {new_name} holds them"));
            }
            self.tb.set_role(old, Role::Active).await?;
            if handed_back == 2 {
                return Err(self.refused(new, format!("{lacks}, after two hand-backs: not promoted")));
            }
            handed_back += 1;
            self.tb.wait_seen_current(old).await?;
            let seq = self.tb.set_role(old, Role::Standby).await?;
            holding = self.said_last_update(old, seq)?;
        }
    }

    /// A demotion's answer names the last update applied (every agent of this
    /// tree says it): without it nothing could be promoted holding it.
    fn said_last_update(&self, old: ProcId, seq: Option<u64>) -> Result<u64, Error> {
        seq.ok_or_else(|| self.refused(old, "its demotion did not say which update it applied last".into()))
    }

    /// Step 204's verdict: the agent's evaluation plus the orchestrator's own checks.
    async fn evaluate(&mut self, new: ProcId, old: ProcId) -> Outcome {
        let window = self.plan.evaluation_ms;
        let rejected_before = self.workload.as_ref().map_or(0, crate::workload::Workload::rejected);
        let mut reasons = Vec::new();
        let mut failed = Vec::new();
        match self.tb.agents().evaluate(new, window).await {
            Ok(e) => {
                reasons.extend(e.reasons);
                failed.extend(e.failed);
            }
            Err(e) => failed.push(format!("evaluation request failed: {}", chain(&e))),
        }
        if !self.tb.alive(new) {
            failed.push(format!("{}'s machine is no longer running (crashed)", self.tb.name(new)));
        }
        if let Some(w) = &self.workload {
            let rejected = w.rejected() - rejected_before;
            let r = format!("workload: {rejected} rejected requests during the window");
            if rejected > 0 {
                failed.push(r);
            } else {
                reasons.push(r);
            }
        }
        // The standby as the new active sees it, not by its own `synced` flag (which outlives a cut link).
        let (n_new, n_old) = (self.tb.name(new).to_string(), self.tb.name(old).to_string());
        match self.tb.agents().status(new).await.map(|s| s.replication.standby_current()) {
            Ok(Ok(())) => reasons.push(format!("standby {n_old} current as {n_new} sees it at the end of the window")),
            Ok(Err(why)) => failed.push(format!("standby {n_old} is not current as {n_new} sees it: {why}")),
            Err(e) => failed.push(format!("{n_new}'s view of its standby: {}", chain(&e))),
        }
        for f in &failed {
            if !reasons.contains(f) {
                reasons.push(f.clone());
            }
        }
        let acceptable = failed.is_empty();
        self.tb.events().emit(Event::Evaluation { processor: self.tb.name(new).into(), acceptable, reasons });
        if acceptable {
            Outcome::Done
        } else {
            self.why = Some(failed.join("; "));
            Outcome::NotAcceptable
        }
    }

    /// Back to `from` on both, the old-version processor active: 204's fallback, and `hitless rollback`.
    async fn fallback(&mut self, from: &str) -> Result<(), Error> {
        for _ in 0..3 {
            let active = self.in_role(Role::Active).await;
            // A running processor on the old version, the active one preferred: no switchover needed then.
            let mut on_from = None;
            for p in ProcId::BOTH {
                if !self.tb.alive(p) || self.tb.version_of(p) != from {
                    continue;
                }
                let Ok(st) = self.tb.agents().status(p).await else { continue };
                if on_from.is_none() || st.hello.role == Role::Active {
                    on_from = Some((p, st));
                }
            }
            let Some((o, ost)) = on_from else {
                // Nobody runs the old version: reload the one that is not active, make it standby, go round again.
                let x = active.map_or(ProcId::FIRST, ProcId::other);
                self.tb.set_role(x, Role::OutOfService).await.ok();
                self.tb.reload(x, from).await?;
                self.tb.make_standby(x).await?;
                continue;
            };
            let other = o.other();
            if active != Some(o) {
                if ost.hello.role != Role::Standby {
                    self.tb.make_standby(o).await?;
                }
                self.switch_over(other, o, Step::Fallback).await?;
            }
            if self.tb.version_of(other) != from || !self.tb.alive(other) {
                self.tb.set_role(other, Role::OutOfService).await.ok();
                self.tb.reload(other, from).await?;
            }
            let s = self.tb.agents().status(other).await?;
            if s.hello.role != Role::Standby || !s.replication.synced {
                self.tb.set_role(other, Role::Standby).await?;
            }
            self.tb.wait_standby_current(other).await?;
            return Ok(());
        }
        Err(self.refused(self.first, format!("could not bring both processors back to {from}")))
    }
}

#[cfg(test)]
mod tests;
