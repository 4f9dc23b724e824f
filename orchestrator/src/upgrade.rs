//! Runs the procedure of [`crate::procedure`] on a live [`Testbed`] while a
//! workload runs: each step is executed here, journalled before and after,
//! and reported on the event stream; at the end the invariants are checked
//! and the transcript is written.

use crate::events::Event;
use crate::history;

use crate::procedure::{next, Outcome, Step};
use crate::rundir::write_atomic;
use crate::testbed::{Testbed, TestbedError};
use crate::workload::{History, Workload};
use hitless_protocol::{ControlReply, ControlRequest, FeatureSet, Role};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Who plays which part: `first` is active at step 200 (the patent's P121).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Old version.
    pub from: String,
    /// New version.
    pub to: String,
    /// Active at step 200, upgraded second.
    pub first: String,
    /// Standby at step 200, upgraded and evaluated first.
    pub second: String,
    /// Evaluation window (ms).
    pub evaluation_ms: u64,
}

/// The journal: where the upgrade is, written before and after each step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The plan.
    pub plan: Plan,
    /// Step number.
    pub step: String,
    /// How the step ended; `None` while it runs (the journal says "begin").
    pub outcome: Option<Outcome>,
    /// The step whose failure or verdict led to the fallback, if one is under way.
    #[serde(default)]
    pub fallback_from: Option<String>,
}

/// Where to continue an upgrade whose journal says `j`.
pub fn resume_step(j: &Journal) -> Result<Step, String> {
    let at = Step::from_number(&j.step).ok_or_else(|| format!("journal names unknown step {}", j.step))?;
    match (at, j.outcome) {
        (s, _) if s.is_end() => Err(format!("the journalled upgrade already ended ({})", j.step)),
        // The step finished: go where its outcome leads.
        (s, Some(o)) => next(s, o).map_err(|e| e.to_string()),
        // An evaluation cut short cannot be trusted: fall back.
        (Step::SwitchOverAndEvaluate, None) => Ok(Step::Fallback),
        // Every other step is safe to run again from its start.
        (s, None) => Ok(s),
    }
}

/// How the run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The end state.
    pub end: String,
    /// One-line summary.
    pub message: String,
    /// Invariant verdicts.
    pub invariants: Vec<history::Verdict>,
    /// Service gap per switchover (step, ms).
    pub gaps: Vec<(String, u64)>,
    /// Work requests the workload got acknowledged.
    pub acked: usize,
}

impl Report {
    /// True when every invariant held.
    pub fn invariants_ok(&self) -> bool {
        self.invariants.iter().all(|v| v.ok)
    }
}

/// What an upgrade run may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Continue from the journal.
    pub resume: bool,
    /// Run the built-in workload during the upgrade.
    pub workload: bool,
}

struct Run<'a> {
    tb: &'a mut Testbed,
    plan: Plan,
    workload: Option<Workload>,
    /// Switchover windows (step, from ms, to ms) on the workload's clock.
    switches: Vec<(String, u64, u64)>,
    /// Why the last step failed or was not acceptable.
    why: Option<String>,
    /// The step that led to the fallback (for the outcome message).
    fallback_from: Option<String>,
}

/// Read the journal of the testbed, if an upgrade ran.
pub fn read_journal(tb: &Testbed) -> Option<Journal> {
    serde_json::from_slice(&std::fs::read(tb.run.journal()).ok()?).ok()
}

/// The plan for upgrading the running pair to `to`, checked against the config.
pub async fn plan(tb: &Testbed, to: &str) -> Result<Plan, TestbedError> {
    if !tb.cfg.versions.contains_key(to) {
        return Err(TestbedError::Environment(format!(
            "version {to} is not in {} (known: {})",
            tb.cfg.file.display(),
            tb.cfg.versions.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    // Step 200 checks the roles; here the active simply plays P121.
    let first = tb.active().await.unwrap_or_else(|| tb.names()[0].clone());
    let second = tb.peer_of(&first);
    Ok(Plan { from: tb.version_of(&first), to: to.to_string(), second, first, evaluation_ms: tb.cfg.evaluation_ms })
}

/// The steps the happy path takes, as lines for `--dry-run`.
pub fn describe_plan(tb: &Testbed, p: &Plan) -> Vec<String> {
    let img = |v: &str| tb.version_info(v).map(|i| i.image).unwrap_or_else(|e| format!("(cannot build: {e})"));
    vec![
        format!("200 check: {} active and {} standby on {}, replication current", p.first, p.second, p.from),
        format!("201 take {} out of service ({} runs simplex)", p.second, p.first),
        format!("202 reload {} with {} from {} (QMP quit, fresh QEMU on a new overlay)", p.second, p.to, img(&p.to)),
        format!("203 make {} standby for {} (step-up, then updates)", p.second, p.first),
        format!(
            "204 switch over: {} active on {}, {} standby; evaluate for {} ms",
            p.second, p.to, p.first, p.evaluation_ms
        ),
        format!(
            "    if not acceptable: {} active again, {} reloaded with {} from {}",
            p.first,
            p.second,
            p.from,
            img(&p.from)
        ),
        format!("205 take {} out of service and reload it with {}", p.first, p.to),
        format!("206 make {} standby for {}", p.first, p.second),
        format!("207 enable the new features of {} on both (point of no return)", p.to),
    ]
}

/// Run the upgrade (or resume it from the journal). Ends in a report whatever the outcome;
/// an `Err` means the run could not even start.
pub async fn upgrade(tb: &mut Testbed, to: &str, opts: Options) -> Result<Report, TestbedError> {
    let (plan, mut step, fallback_from) = if opts.resume {
        let j = read_journal(tb)
            .ok_or_else(|| TestbedError::Environment(format!("no upgrade journal in {}", tb.run.root.display())))?;
        let resume_at = resume_step(&j).map_err(TestbedError::Environment)?;
        let phase = if j.outcome.is_some() { "done" } else { "begun" };
        tb.events.progress(format!(
            "resuming from the journal: step {} {phase}, continuing at {}",
            j.step,
            resume_at.number()
        ));
        (j.plan, resume_at, j.fallback_from)
    } else {
        if let Some(j) = read_journal(tb) {
            if !Step::from_number(&j.step).is_some_and(Step::is_end) {
                return Err(TestbedError::Environment(format!(
                    "an upgrade was interrupted at step {}; use `hitless upgrade --resume` or `hitless rollback`",
                    j.step
                )));
            }
        }
        (plan(tb, to).await?, Step::Initial, None)
    };
    // Both images first: a missing or broken image must fail before anything changes.
    tb.version_info(&plan.to)?;
    tb.version_info(&plan.from)?;
    let targets = tb.names().into_iter().map(|n| (n.clone(), tb.channel(&n))).collect();
    let workload = if opts.workload { Some(Workload::start(targets, plan.first.clone())) } else { None };
    let mut run = Run { tb, plan, workload, switches: Vec::new(), why: None, fallback_from };
    while !step.is_end() {
        step = run.step(step).await;
    }
    Ok(run.finish(step).await)
}

/// Roll back to the old version from any step before 207.
pub async fn rollback(tb: &mut Testbed) -> Result<Report, TestbedError> {
    let j = read_journal(tb).ok_or_else(|| TestbedError::Environment("no upgrade to roll back (no journal)".into()))?;
    let at = Step::from_number(&j.step).unwrap_or(Step::Failed);
    let enabled = enabled_features(tb).await;
    if !enabled.is_empty() || !at.rollback_allowed() {
        let what = if enabled.is_empty() {
            format!("the upgrade to {} passed step 207", j.plan.to)
        } else {
            format!(
                "the new features of {} ({}) are enabled",
                j.plan.to,
                enabled.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(TestbedError::Environment(format!(
            "rollback refused: {what}; step 207 is the point of no return, the pair stays on {}",
            j.plan.to
        )));
    }
    let targets = tb.names().into_iter().map(|n| (n.clone(), tb.channel(&n))).collect();
    let workload = Some(Workload::start(targets, j.plan.first.clone()));
    let from = j.step.clone();
    let mut run = Run {
        tb,
        plan: j.plan,
        workload,
        switches: Vec::new(),
        why: Some("rollback requested".into()),
        fallback_from: Some(from),
    };
    let mut step = Step::Fallback;
    while !step.is_end() {
        step = run.step(step).await;
    }
    Ok(run.finish(step).await)
}

/// Enable `features` on both processors, the active first: step 207's action,
/// and `hitless enable`. Each answer is an event; a refusal (a processor whose
/// version lacks a feature, or whose peer's does) stops there, with the agent's reason.
pub async fn enable_features(tb: &Testbed, features: &[String]) -> Result<(), TestbedError> {
    let active = tb.active().await;
    let mut order = tb.names();
    order.sort_by_key(|n| Some(n) != active.as_ref());
    for f in features {
        for n in &order {
            let result = tb.control(n, ControlRequest::EnableFeature { feature: f.clone() }).await;
            let said = match &result {
                Ok(_) => "enabled".to_string(),
                Err(TestbedError::Agent { message, .. }) => format!("refused: {message}"),
                Err(e) => format!("failed: {e}"),
            };
            tb.events.emit(Event::Feature { processor: n.clone(), feature: f.clone(), result: said });
            result?;
        }
    }
    Ok(())
}

async fn enabled_features(tb: &Testbed) -> FeatureSet {
    let mut f = FeatureSet::new();
    for n in tb.names() {
        if let Ok(s) = tb.agent_status(&n).await {
            f.extend(s.hello.enabled);
        }
    }
    f
}

impl Run<'_> {
    fn journal(&self, step: Step, outcome: Option<Outcome>) {
        let j = Journal {
            plan: self.plan.clone(),
            step: step.number().into(),
            outcome,
            fallback_from: self.fallback_from.clone(),
        };
        if let Ok(data) = serde_json::to_vec_pretty(&j) {
            // A journal that cannot be written only weakens --resume; the run goes on.
            let _ = write_atomic(&self.tb.run.journal(), &data);
        }
    }

    fn now(&self) -> u64 {
        self.workload.as_ref().map_or(0, Workload::now_ms)
    }

    /// Execute one step and return the next.
    async fn step(&mut self, step: Step) -> Step {
        self.journal(step, None);
        self.tb.events.emit(Event::StepBegin { step: step.number().into(), name: step.describe().into() });
        let t = Instant::now();
        let outcome = match self.execute(step).await {
            Ok(o) => o,
            Err(e) => {
                let msg = format!("step {} failed: {e:#}", step.number());
                self.tb.events.progress(msg.clone());
                self.why = Some(msg);
                Outcome::Error
            }
        };
        let pair = self.tb.pair_view().await;
        self.tb.events.emit(Event::StepDone {
            step: step.number().into(),
            pair,
            took_ms: t.elapsed().as_millis() as u64,
        });
        let to = next(step, outcome).unwrap_or(Step::Failed);
        if to == Step::Fallback {
            self.fallback_from = Some(step.number().into());
        }
        self.journal(step, Some(outcome));
        if to.is_end() {
            self.journal(to, Some(Outcome::Done));
        }
        to
    }

    async fn execute(&mut self, step: Step) -> Result<Outcome, TestbedError> {
        let (first, second) = (self.plan.first.clone(), self.plan.second.clone());
        let (from, to) = (self.plan.from.clone(), self.plan.to.clone());
        match step {
            Step::Initial => {
                let a = self.tb.agent_status(&first).await?;
                let s = self.tb.agent_status(&second).await?;
                let fail = |m: String| Err(TestbedError::Agent { processor: first.clone(), message: m });
                if a.hello.role != Role::Active || s.hello.role != Role::Standby {
                    return fail(format!(
                        "expected {first} active and {second} standby, found {} and {}",
                        a.hello.role, s.hello.role
                    ));
                }
                if self.tb.version_of(&first) != self.tb.version_of(&second) {
                    return fail("the processors run different versions; finish or roll back first".into());
                }
                if from == to {
                    return fail(format!("both processors already run {to}"));
                }
                if !s.replication.synced || a.replication.simplex {
                    return fail(format!("replication from {first} to {second} is not current"));
                }
                Ok(Outcome::Done)
            }
            Step::IsolateStandby => {
                self.take_out_of_service(&second).await?;
                Ok(Outcome::Done)
            }
            Step::ReloadStandby => {
                self.tb.reload(&second, &to).await?;
                self.expect_no_features(&second).await?;
                Ok(Outcome::Done)
            }
            Step::StandbyOnNew => {
                self.tb.make_standby(&second).await?;
                Ok(Outcome::Done)
            }
            Step::SwitchOverAndEvaluate => {
                self.switch_over(&first, &second, "204").await?;
                Ok(self.evaluate(&second, &first).await)
            }
            Step::Fallback => self.fallback(&from).await.map(|_| Outcome::Done),
            Step::ReloadOther => {
                self.take_out_of_service(&first).await?;
                self.tb.reload(&first, &to).await?;
                self.expect_no_features(&first).await?;
                Ok(Outcome::Done)
            }
            Step::OtherStandby => {
                self.tb.make_standby(&first).await?;
                Ok(Outcome::Done)
            }
            Step::EnableFeatures => {
                let new = self.new_features();
                enable_features(self.tb, &new).await?;
                if new.is_empty() {
                    self.tb.events.progress(format!("{to} brings no new features to enable"));
                }
                Ok(Outcome::Done)
            }
            Step::Completed | Step::RolledBack | Step::Failed => Ok(Outcome::Done),
        }
    }

    /// Take `name` out of service. One that is not running already is: a step
    /// cut short mid-reload is redone on `--resume` with the processor down.
    async fn take_out_of_service(&mut self, name: &str) -> Result<(), TestbedError> {
        if self.tb.alive(name) {
            self.tb.set_role(name, Role::OutOfService).await?;
        } else {
            self.tb.events.progress(format!("{name} is not running: already out of service"));
        }
        Ok(())
    }

    /// Features `to` supports that `from` does not.
    fn new_features(&self) -> Vec<String> {
        let feats = |v: &str| -> FeatureSet { self.tb.version_info(v).map(|i| i.features).unwrap_or_default() };
        feats(&self.plan.to).difference(&feats(&self.plan.from)).cloned().collect()
    }

    async fn expect_no_features(&self, name: &str) -> Result<(), TestbedError> {
        let s = self.tb.agent_status(name).await?;
        if s.hello.enabled.is_empty() {
            Ok(())
        } else {
            Err(TestbedError::Agent {
                processor: name.into(),
                message: format!("new features enabled after reload: {:?}", s.hello.enabled),
            })
        }
    }

    /// Make `new` active in place of `old` (old becomes standby), recording the switchover window.
    async fn switch_over(&mut self, old: &str, new: &str, label: &str) -> Result<(), TestbedError> {
        let t0 = self.now();
        if !self.tb.alive(old) {
            // It died on its own (e.g. the new version crashed): that ends its role.
            self.tb.events.emit(Event::ProcessorStopped { processor: old.into(), how: "crashed (VM exited)".into() });
        } else if let Err(e) = self.tb.set_role(old, Role::Standby).await {
            // It does not obey (its agent died while its VM is still going down, or it
            // refused): fence it — stop its VM — before anything else becomes active.
            self.tb.events.progress(format!("{old} did not step down ({e}); fencing it by stopping its VM"));
            self.tb.stop_processor(old).await;
        }
        self.tb.set_role(new, Role::Active).await?;
        let t1 = self.now();
        self.switches.push((label.to_string(), t0, t1));
        if self.tb.alive(old) {
            self.tb.wait_standby_current(old).await?;
        }
        Ok(())
    }

    /// Step 204's verdict: the agent's evaluation plus the orchestrator's own checks.
    async fn evaluate(&mut self, new: &str, old: &str) -> Outcome {
        let window = self.plan.evaluation_ms;
        let rejected_before = self.workload.as_ref().map_or(0, Workload::rejected);
        let agent = self.tb.control(new, ControlRequest::Evaluate { window_ms: window }).await;
        let mut reasons = Vec::new();
        let mut failed = Vec::new();
        match agent {
            Ok(ControlReply::Evaluation(e)) => {
                reasons.extend(e.reasons);
                failed.extend(e.failed);
            }
            Ok(other) => failed.push(format!("unexpected answer {other:?}")),
            Err(e) => failed.push(format!("evaluation request failed: {e}")),
        }
        if !self.tb.alive(new) {
            failed.push(format!("{new}'s VM is no longer running (crashed)"));
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
        match self.tb.agent_status(old).await {
            Ok(s) if s.replication.synced => reasons.push(format!("standby {old} registered and current")),
            Ok(_) | Err(_) => failed.push(format!("standby {old} is not current")),
        }
        for f in &failed {
            if !reasons.contains(f) {
                reasons.push(f.clone());
            }
        }
        let acceptable = failed.is_empty();
        self.tb.events.emit(Event::Evaluation { processor: new.into(), acceptable, reasons });
        if acceptable {
            Outcome::Done
        } else {
            self.why = Some(failed.join("; "));
            Outcome::NotAcceptable
        }
    }

    /// Back to `from` on both, the old-version processor active: 204's fallback, and `hitless rollback`.
    async fn fallback(&mut self, from: &str) -> Result<(), TestbedError> {
        for _ in 0..3 {
            let names = self.tb.names();
            let mut active = None;
            let mut on_from = None;
            for n in &names {
                let alive = self.tb.alive(n);
                let st = if alive { self.tb.agent_status(n).await.ok() } else { None };
                if st.as_ref().is_some_and(|s| s.hello.role == Role::Active) {
                    active = Some(n.clone());
                }
                // Prefer the active, if it runs the old version: no switchover needed then.
                let is_active = st.as_ref().is_some_and(|s| s.hello.role == Role::Active);
                if alive && self.tb.version_of(n) == from && st.is_some() && (on_from.is_none() || is_active) {
                    on_from = Some((n.clone(), st));
                }
            }
            let Some((o, ost)) = on_from else {
                // Nobody runs the old version: reload the one that is not active, make it standby, go round again.
                let x = names.iter().find(|n| Some(*n) != active.as_ref()).cloned().unwrap_or_default();
                self.tb.set_role(&x, Role::OutOfService).await.ok();
                self.tb.reload(&x, from).await?;
                self.tb.make_standby(&x).await?;
                continue;
            };
            let other = self.tb.peer_of(&o);
            if active.as_deref() != Some(o.as_str()) {
                if ost.is_some_and(|s| s.hello.role != Role::Standby) {
                    self.tb.make_standby(&o).await?;
                }
                self.switch_over(&other, &o, "204-fallback").await?;
            }
            if self.tb.version_of(&other) != from || !self.tb.alive(&other) {
                self.tb.set_role(&other, Role::OutOfService).await.ok();
                self.tb.reload(&other, from).await?;
            }
            let s = self.tb.agent_status(&other).await?;
            if s.hello.role != Role::Standby || !s.replication.synced {
                self.tb.set_role(&other, Role::Standby).await?;
            }
            self.tb.wait_standby_current(&other).await?;
            return Ok(());
        }
        Err(TestbedError::Environment(format!("could not bring both processors back to {from}")))
    }

    async fn finish(mut self, end: Step) -> Report {
        let history = match self.workload.take() {
            Some(w) => w.stop().await,
            None => History::default(),
        };
        let _ = history.write(&self.tb.run.history());
        let mut invariants = Vec::new();
        let mut gaps = Vec::new();
        if !history.records.is_empty() {
            for (label, from, to) in &self.switches {
                let gap = history.gap_around(*from, *to);
                self.tb.events.emit(Event::ServiceGap { step: label.clone(), gap_ms: gap });
                gaps.push((label.clone(), gap));
            }
            let active = self.tb.active().await;
            let units = match &active {
                Some(a) => match self.tb.control(a, ControlRequest::Dump).await {
                    Ok(ControlReply::Dump { units, .. }) => units,
                    _ => Vec::new(),
                },
                None => Vec::new(),
            };
            invariants.push(history::no_lost_or_double(&history, &units));
            let rejected = history.rejected();
            invariants.push(history::Verdict {
                name: "workload-served",
                ok: rejected == 0 && !history.acked().is_empty(),
                detail: format!("{} acked, {rejected} rejected", history.acked().len()),
            });
        }
        invariants.push(history::never_two_actives(&self.tb.events.entries(), &history, self.switches.len()));
        invariants.push(self.final_state(end).await);
        for v in &invariants {
            self.tb.events.emit(Event::Invariant { name: v.name.into(), ok: v.ok, detail: v.detail.clone() });
        }
        let (result, message) = match end {
            Step::Completed => {
                ("completed", format!("upgraded to {} on both processors; new features enabled", self.plan.to))
            }
            Step::RolledBack => (
                "rolled-back",
                format!(
                    "upgrade rolled back at step {}: {}",
                    self.fallback_from.as_deref().unwrap_or("204"),
                    self.why.clone().unwrap_or_else(|| "not acceptable".into())
                ),
            ),
            _ => ("failed", self.why.clone().unwrap_or_else(|| "the procedure stopped".into())),
        };
        self.tb.events.emit(Event::Outcome { result: result.into(), message: message.clone() });
        crate::transcript::write(self.tb, &self.plan);
        Report { end: result.into(), message, invariants, gaps, acked: history.acked().len() }
    }

    /// Invariant 3: both in service, one active and one current standby, one version matching the outcome.
    async fn final_state(&self, end: Step) -> history::Verdict {
        let want = match end {
            Step::Completed => Some(self.plan.to.clone()),
            Step::RolledBack => Some(self.plan.from.clone()),
            _ => None,
        };
        let mut roles = Vec::new();
        let mut versions = Vec::new();
        let mut synced = true;
        for n in self.tb.names() {
            match self.tb.agent_status(&n).await {
                Ok(s) => {
                    if s.hello.role == Role::Standby {
                        synced &= s.replication.synced;
                    }
                    roles.push(s.hello.role);
                    versions.push(self.tb.version_of(&n));
                }
                Err(_) => roles.push(Role::OutOfService),
            }
        }
        roles.sort();
        let in_service = roles == [Role::Standby, Role::Active] && synced;
        let one_version = versions.len() == 2 && versions[0] == versions[1];
        let ok = match &want {
            Some(v) => in_service && one_version && versions[0] == *v,
            // A failed run must stop with a clear error; the state is reported, not judged.
            None => false,
        };
        let detail = format!(
            "roles {:?}, versions {:?}{}",
            roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            versions,
            want.map(|v| format!(", expected both on {v}")).unwrap_or_else(|| ", run failed".into())
        );
        history::Verdict { name: "consistent-final-state", ok, detail }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn journal(step: Step, outcome: Option<Outcome>) -> Journal {
        let plan = Plan {
            from: "1.0.0".into(),
            to: "2.0.0".into(),
            first: "p121".into(),
            second: "p122".into(),
            evaluation_ms: 1,
        };
        Journal { plan, step: step.number().into(), outcome, fallback_from: None }
    }

    #[test]
    fn resume_follows_the_journalled_outcome() {
        // 204 ended "not acceptable": the fallback comes next, not step 205.
        assert_eq!(
            resume_step(&journal(Step::SwitchOverAndEvaluate, Some(Outcome::NotAcceptable))),
            Ok(Step::Fallback)
        );
        assert_eq!(resume_step(&journal(Step::SwitchOverAndEvaluate, Some(Outcome::Done))), Ok(Step::ReloadOther));
        assert_eq!(resume_step(&journal(Step::ReloadStandby, Some(Outcome::Error))), Ok(Step::Fallback));
    }

    #[test]
    fn resume_redoes_an_interrupted_step_except_the_evaluation() {
        for s in crate::procedure::ALL_STEPS.into_iter().filter(|s| !s.is_end()) {
            let want = if s == Step::SwitchOverAndEvaluate { Step::Fallback } else { s };
            assert_eq!(resume_step(&journal(s, None)), Ok(want), "{s:?}");
        }
        assert!(resume_step(&journal(Step::Completed, Some(Outcome::Done))).unwrap_err().contains("already ended"));
    }
}
