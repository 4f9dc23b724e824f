//! Running the procedure on a live [`Testbed`] while a workload runs: one
//! loop ([`Run::drive`]) takes steps from a starting point to an end, for an
//! upgrade, a resumed upgrade and a rollback alike. Each step is journalled
//! before and after and reported on the event stream; at the end the
//! invariants are checked and the transcript is written.

use super::journal::{plan, read_journal, resume_step, write_journal, Journal, Plan};
use super::table::{next, End, Outcome, Step};
use super::watch::Loss;
use crate::error::{chain, Error, ProcedureError};
use crate::events::Event;
use crate::history::History;
use crate::invariants::{self, Final, Verdict};
use crate::pair::ProcId;
use crate::testbed::Testbed;
use crate::transcript;
use crate::workload::Workload;
use hitless_protocol::{FeatureSet, Role};
use serde::Serialize;
use std::time::Instant;

/// How a run ended, with the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The end reached.
    pub end: End,
    /// One-line summary.
    pub message: String,
    /// Every invariant's verdict.
    pub invariants: Vec<Verdict>,
    /// Service gap per switchover (step, ms).
    pub gaps: Vec<(Step, u64)>,
    /// Work requests the workload got acknowledged.
    pub acked: usize,
    /// For a stopped run: the first step that failed (or lost its active).
    pub stopped_at: Option<Step>,
    /// Where the run was cancelled, if it was.
    pub cancelled_at: Option<Step>,
    /// Unplanned failovers: (lost, took over, ms from confirming the loss to the promotion).
    pub failovers: Vec<(String, String, u64)>,
    /// Each step taken, with how long it took (ms) and how it ended.
    pub steps: Vec<(Step, u64, Outcome)>,
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
    /// Continue from the journal instead of starting.
    pub resume: bool,
    /// Run the built-in workload during the upgrade.
    pub workload: bool,
}

/// A way to cancel a running upgrade (Ctrl-C, SIGTERM, a scenario's fault).
/// A cancelled upgrade leaves the pair stable: before step 207 the step in
/// progress is abandoned and the pair falls back to the old version; step 207
/// (the point of no return) is finished first.
#[derive(Clone, Debug)]
pub struct Cancel(tokio::sync::watch::Receiver<Option<String>>);

/// The other end of a [`Cancel`].
#[derive(Debug, Clone)]
pub struct Canceller(tokio::sync::watch::Sender<Option<String>>);

impl Cancel {
    /// A cancel and the handle that triggers it.
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (Canceller(tx), Cancel(rx))
    }

    /// Why it was cancelled, if it was.
    fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    async fn cancelled(&self) {
        let mut rx = self.0.clone();
        // An error means the canceller is gone: then nobody can cancel, wait forever.
        if rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Canceller {
    /// Cancel the upgrade (as Ctrl-C does).
    pub fn cancel(&self) {
        self.cancel_because("cancelled");
    }

    /// Cancel it, saying why ("timed out after 2m").
    pub fn cancel_because(&self, why: &str) {
        self.0.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(why.to_string());
            }
            first
        });
    }
}

/// One run of the procedure on a testbed.
pub(super) struct Run<'a> {
    pub(super) tb: &'a mut Testbed,
    pub(super) plan: Plan,
    /// Active at step 200, upgraded second.
    pub(super) first: ProcId,
    /// Upgraded and evaluated first.
    pub(super) second: ProcId,
    pub(super) workload: Option<Workload>,
    /// Switchover windows (step, from ms, to ms) on the workload's clock.
    /// Switchovers: step, workload time before and after, the new active.
    pub(super) switches: Vec<(Step, u64, u64, String)>,
    /// Why the last step failed or was not acceptable.
    pub(super) why: Option<String>,
    /// The step that led to the fallback (for the outcome message).
    pub(super) fallback_from: Option<Step>,
    /// Every run on this upgrade, this one last (their histories are checked together).
    pub(super) runs: Vec<String>,
    /// When each step began, on the workload's clock (to name where lost work was acked).
    pub(super) marks: Vec<(Step, u64)>,
    /// The watch over the active, kept for the whole run.
    pub(super) watch: super::watch::Watch,
    /// Set when the upgrade may be cancelled.
    pub(super) cancel: Option<Cancel>,
    /// Where the run was cancelled, if it was.
    pub(super) cancelled_at: Option<Step>,
    /// The first step that failed or lost its active in this run.
    pub(super) first_failure: Option<Step>,
    /// Each step taken: how long, and how it ended.
    pub(super) taken: Vec<(Step, u64, Outcome)>,
}

/// Run the upgrade to `to` (or resume it from the journal). Ends in a report
/// whatever the outcome; an `Err` means the run could not even start.
pub async fn upgrade(tb: &mut Testbed, to: &str, opts: Options) -> Result<Report, Error> {
    upgrade_with(tb, to, opts, None).await
}

/// [`upgrade`], which `cancel` can cancel.
pub async fn upgrade_with(tb: &mut Testbed, to: &str, opts: Options, cancel: Option<Cancel>) -> Result<Report, Error> {
    if opts.resume {
        let j = read_journal(tb.run()).ok_or_else(|| ProcedureError::NoJournal(tb.run().root.clone()))?;
        let at = resume_step(&j)?;
        let phase = if j.outcome.is_some() { "done" } else { "begun" };
        tb.events().progress(format!("resuming from the journal: step {} {phase}, continuing at {at}", j.step));
        // An evaluation cut short is no verdict: say so, rather than "not acceptable".
        let why = (j.step == Step::SwitchOverAndEvaluate && j.outcome.is_none())
            .then(|| "evaluation at step 204 was cut short".to_string());
        let fallback_from = if why.is_some() { Some(j.step) } else { j.fallback_from };
        super::preflight(tb, &j.plan).await?;
        let mut run = Run::start(tb, j.plan, opts.workload, why, fallback_from, j.runs)?;
        run.cancel = cancel;
        return Ok(run.drive(at).await);
    }
    if let Some(j) = read_journal(tb.run()).filter(|j| !j.step.is_end()) {
        return Err(ProcedureError::Interrupted { step: j.step }.into());
    }
    let plan = plan(tb, to).await?;
    super::preflight(tb, &plan).await?;
    let mut run = Run::start(tb, plan, opts.workload, None, None, Vec::new())?;
    run.cancel = cancel;
    Ok(run.drive(Step::Initial).await)
}

/// Roll back to the old version from any step before 207.
pub async fn rollback(tb: &mut Testbed) -> Result<Report, Error> {
    let j = read_journal(tb.run()).ok_or_else(|| ProcedureError::NoJournal(tb.run().root.clone()))?;
    let enabled = enabled_features(tb).await;
    if !enabled.is_empty() || !j.step.rollback_allowed() {
        let what = if enabled.is_empty() {
            format!("the upgrade to {} passed step 207", j.plan.to)
        } else {
            let list = enabled.iter().cloned().collect::<Vec<_>>().join(", ");
            format!("the new features of {} ({list}) are enabled", j.plan.to)
        };
        return Err(ProcedureError::RollbackRefused { to: j.plan.to, what }.into());
    }
    super::preflight(tb, &j.plan).await?;
    let run = Run::start(tb, j.plan, true, Some("rollback requested".into()), Some(j.step), j.runs)?;
    Ok(run.drive(Step::Fallback).await)
}

async fn enabled_features(tb: &Testbed) -> FeatureSet {
    let mut f = FeatureSet::new();
    for p in ProcId::BOTH {
        if let Ok(s) = tb.agents().status(p).await {
            f.extend(s.hello.enabled);
        }
    }
    f
}

impl<'a> Run<'a> {
    /// Check the plan against the testbed and start the workload: a missing or
    /// broken image must fail here, before anything changes.
    pub(super) fn start(
        tb: &'a mut Testbed,
        plan: Plan,
        workload: bool,
        why: Option<String>,
        fallback_from: Option<Step>,
        mut runs: Vec<String>,
    ) -> Result<Run<'a>, Error> {
        let first = tb.config().proc_id(&plan.first)?;
        let second = first.other();
        tb.software(&plan.to)?;
        tb.software(&plan.from)?;
        let run_id = crate::history::new_run_id();
        let log = tb.run().history(&run_id);
        let workload = workload.then(|| {
            // Its history's clock starts here, on the event clock.
            tb.events().emit(Event::WorkloadStarted { run: run_id.clone() });
            let (targets, gate) = (tb.agents().targets(), tb.agents().may_dial());
            Workload::start_gated(targets, plan.first.clone(), &run_id, Some(&log), gate)
        });
        runs.push(run_id);
        tb.designate(None);
        let (marks, watch) = (Vec::new(), tb.watch());
        Ok(Run {
            tb,
            plan,
            first,
            second,
            workload,
            switches: Vec::new(),
            why,
            fallback_from,
            runs,
            marks,
            watch,
            cancel: None,
            cancelled_at: None,
            first_failure: None,
            taken: Vec::new(),
        })
    }

    /// Take steps from `step` until an end; report it.
    async fn drive(mut self, mut step: Step) -> Report {
        // The watch follows the active the run finds, and then the ones it makes.
        let active = self.tb.active().await;
        self.tb.designate(active);
        while !step.is_end() {
            if self.cancelled_at.is_none()
                && self.cancel.as_ref().and_then(Cancel::reason).is_some()
                && step.rollback_allowed()
                && step != Step::Fallback
            {
                step = self.cancelled(step);
                continue;
            }
            step = self.step(step).await;
        }
        self.finish(step.end().unwrap_or(End::Failed)).await
    }

    /// The upgrade was cancelled as `step` was next (or running): fall back.
    fn cancelled(&mut self, step: Step) -> Step {
        let reason = self.cancel.as_ref().and_then(Cancel::reason).unwrap_or_else(|| "cancelled".into());
        self.tb.events().progress(format!("{reason} at step {step}: falling back to {}", self.plan.from));
        self.cancelled_at = Some(step);
        self.why = Some(format!("{reason} at step {step}"));
        self.fallback_from = Some(step);
        Step::Fallback
    }

    fn try_journal(&self, step: Step, outcome: Option<Outcome>) -> Result<(), Error> {
        let (plan, runs) = (self.plan.clone(), self.runs.clone());
        let j = Journal { plan, step, outcome, fallback_from: self.fallback_from, runs };
        write_journal(self.tb.run(), &j)
    }

    /// Journal a step's end; a failure only weakens `--resume` (said, not fatal).
    fn journal(&self, step: Step, outcome: Option<Outcome>) {
        if let Err(e) = self.try_journal(step, outcome) {
            self.tb.events().progress(format!("journal not written: {}", chain(&e)));
        }
    }

    /// The workload's clock, to line up switchovers with the history.
    pub(super) fn now(&self) -> u64 {
        self.workload.as_ref().map_or(0, Workload::now_ms)
    }

    /// Execute one step and return the next.
    async fn step(&mut self, step: Step) -> Step {
        if let Err(e) = self.try_journal(step, None) {
            // Nothing new starts without a journal to resume it from; restoring service (the fallback) goes on regardless.
            if step != Step::Fallback {
                let why = format!("the journal cannot be written, so step {step} was not begun: {}", chain(&e));
                self.tb.events().emit(Event::StepFailed { step, why: why.clone() });
                self.why = Some(why);
                self.first_failure.get_or_insert(step);
                return next(step, Outcome::Error).unwrap_or(Step::Failed);
            }
        }
        // What the watch knows is fresh as the step begins (a fault may strike right then).
        self.watch.refresh().await;
        self.tb.events().emit(Event::StepBegin { step, name: step.describe().into() });
        let t = Instant::now();
        self.marks.push((step, self.now()));
        // The step races the watch over the active: a loss cancels the step.
        let watch = self.watch.clone();
        // Before the point of no return a cancel abandons the step; the fallback and 207 are finished.
        let cancel = self
            .cancel
            .clone()
            .filter(|_| step.rollback_allowed() && step != Step::Fallback && self.cancelled_at.is_none());
        let cancelled = async {
            match &cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        // An active lost as the step began (a fault at that moment): the step does not start.
        let finished = match watch.lost_now().await {
            Some(loss) => Err(loss),
            None => tokio::select! {
                r = self.execute(step) => Ok(r),
                loss = watch.loss() => Err(loss),
                () = cancelled => {
                    let pair = self.tb.pair_view().await;
                    self.tb.events().emit(Event::StepDone { step, pair, took_ms: t.elapsed().as_millis() as u64 });
                    self.try_journal(step, Some(Outcome::Error)).ok();
                    return self.cancelled(step);
                }
            },
        };
        // A step that ended because its active just died is a loss, not its own failure.
        let finished = match finished {
            Ok(r) => match watch.lost_now().await {
                Some(loss) => Err((loss, r.err())),
                None => Ok(r),
            },
            Err(loss) => Err((loss, None)),
        };
        let outcome = match finished {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                let why = chain(&e);
                self.tb.events().emit(Event::StepFailed { step, why: why.clone() });
                self.why = Some(format!("step {step} failed: {why}"));
                Outcome::Error
            }
            Err((loss, error)) => {
                if let Some(e) = error {
                    self.tb.events().emit(Event::StepFailed { step, why: chain(&e) });
                }
                self.failover(step, loss).await
            }
        };
        let pair = self.tb.pair_view().await;
        self.tb.events().emit(Event::StepDone { step, pair, took_ms: t.elapsed().as_millis() as u64 });
        self.taken.push((step, t.elapsed().as_millis() as u64, outcome));
        let to = next(step, outcome).unwrap_or(Step::Failed);
        if matches!(outcome, Outcome::Error | Outcome::Lost | Outcome::FailedOver) {
            self.first_failure.get_or_insert(step);
        }
        if to == Step::Fallback && self.cancelled_at.is_none() {
            self.fallback_from = Some(step);
        }
        self.journal(step, Some(outcome));
        // A run stopped by a lost active stays resumable: `repair`, then `--resume` redoes the step.
        if to.is_end() && !matches!(outcome, Outcome::FailedOver | Outcome::Lost) {
            self.journal(to, Some(Outcome::Done));
        }
        to
    }

    async fn finish(mut self, end: End) -> Report {
        let (history, unwritten) = match self.workload.take() {
            Some(w) => w.stop_and_report().await,
            None => (History::default(), None),
        };
        if let Some(e) = unwritten {
            self.tb.events().progress(format!("history not written to the run directory: {e}"));
        }
        // Earlier runs on this upgrade (killed, or cut short) are checked with this one.
        let (earlier, this) = self.runs.split_at(self.runs.len().saturating_sub(1));
        let earlier: Vec<History> =
            earlier.iter().filter_map(|r| History::read(&self.tb.run().history(r)).ok()).collect();
        if !earlier.is_empty() {
            let n: usize = earlier.iter().map(|h| h.acked().len()).sum();
            self.tb.events().progress(format!(
                "checking {n} acks of {} earlier run(s) with run {}",
                earlier.len(),
                this.join("")
            ));
        }
        let all = History::merged(earlier.into_iter().chain([history.clone()]));
        let mut verdicts = Vec::new();
        let mut gaps = Vec::new();
        if !history.records.is_empty() {
            for (step, from, to, new) in &self.switches {
                let gap_ms = history.gap_around(*from, *to, new);
                self.tb.events().emit(Event::ServiceGap { step: *step, gap_ms });
                gaps.push((*step, gap_ms));
            }
        }
        if !all.records.is_empty() {
            // What survives: the active's state, or with no active, a synced standby's (it would take over).
            let mut holder = self.tb.active().await;
            if holder.is_none() {
                for p in ProcId::BOTH {
                    if self
                        .tb
                        .agents()
                        .poll_status(p)
                        .await
                        .is_ok_and(|s| s.hello.role == Role::Standby && s.replication.synced)
                    {
                        holder = Some(p);
                    }
                }
            }
            let units = match holder {
                Some(a) => self.tb.agents().dump(a).await.map(|d| d.1).unwrap_or_default(),
                None => Vec::new(),
            };
            let mut v = invariants::no_lost_or_double(&all, &units);
            if let Some(window) = invariants::simplex_window(&history, &v.offenders, &self.marks) {
                v.detail = format!("{} — {window}", v.detail);
            }
            verdicts.push(v);
        }
        if !history.records.is_empty() {
            verdicts.push(invariants::workload_served(&history));
        }
        verdicts.push(invariants::never_two_actives(&self.tb.events().entries(), &history, self.switches.len()));
        let mut pair = Vec::new();
        for p in ProcId::BOTH {
            let s = self.tb.agents().status(p).await.ok();
            let role = s.as_ref().map(|s| s.hello.role);
            let synced = s.is_some_and(|s| s.replication.synced);
            pair.push(Final { role, synced, version: self.tb.version_of(p).to_string() });
        }
        verdicts.push(invariants::consistent_final_state(end, &self.plan.from, &self.plan.to, &pair));
        for v in &verdicts {
            self.tb.events().emit(Event::Invariant {
                name: v.name.into(),
                ok: v.ok,
                detail: v.detail.clone(),
                offenders: v.offenders.clone(),
            });
        }
        let message = match end {
            End::Completed => format!("upgraded to {} on both processors; new features enabled", self.plan.to),
            End::RolledBack if self.cancelled_at.is_some() => format!(
                "{}; rolled back to {}: one active and one current standby",
                self.why.clone().unwrap_or_default(),
                self.plan.from
            ),
            End::RolledBack => format!(
                "upgrade rolled back at step {}: {}",
                self.fallback_from.unwrap_or(Step::SwitchOverAndEvaluate),
                self.why.clone().unwrap_or_else(|| "not acceptable".into())
            ),
            End::Failed => self.why.clone().unwrap_or_else(|| "the procedure stopped".into()),
        };
        self.tb.events().emit(Event::Outcome { end, message: message.clone() });
        transcript::write(&self.tb.run().transcript(), &self.header(), &self.tb.events().entries());
        // The picture of the run, beside its transcript.
        if let Err(e) = crate::report::write_beside(&self.tb.run().transcript()) {
            self.tb.events().progress(format!("report not written: {}", chain(&e)));
        }
        let failovers = self
            .tb
            .events()
            .entries()
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Failover { from, to, took_ms } => Some((from, to, took_ms)),
                _ => None,
            })
            .collect();
        let stopped_at = (end == End::Failed).then_some(self.first_failure).flatten();
        Report {
            end,
            message,
            invariants: verdicts,
            gaps,
            acked: history.acked().len(),
            stopped_at,
            cancelled_at: self.cancelled_at,
            failovers,
            steps: self.taken.clone(),
        }
    }

    fn header(&self) -> transcript::Header {
        let img = |v: &str| self.tb.software(v).map(|s| s.image).unwrap_or_default();
        transcript::Header {
            config: self.tb.config().file.display().to_string(),
            from: self.plan.from.clone(),
            to: self.plan.to.clone(),
            first: self.plan.first.clone(),
            second: self.plan.second.clone(),
            platform: self.tb.platform(),
            platform_reason: self.tb.platform_reason().to_string(),
            images: vec![(self.plan.from.clone(), img(&self.plan.from)), (self.plan.to.clone(), img(&self.plan.to))],
            evaluation_ms: self.plan.evaluation_ms,
        }
    }

    /// The active was lost during `step`: fence it, then promote its standby
    /// with a new epoch — only if the active last saw that standby current.
    async fn failover(&mut self, step: Step, loss: Loss) -> Outcome {
        let (lost, other) = (loss.processor, loss.processor.other());
        let (n_lost, n_other) = (self.tb.name(lost).to_string(), self.tb.name(other).to_string());
        let t0 = (Instant::now(), self.now());
        self.tb.events().emit(Event::ProcessorLost { processor: n_lost.clone(), how: loss.how.clone() });
        self.tb.fence(lost).await;
        // Only a standby that completed its step-up holds the run-state (and the active must have seen it current).
        let synced = self
            .tb
            .agents()
            .poll_status(other)
            .await
            .is_ok_and(|s| s.hello.role == Role::Standby && s.replication.synced);
        if !loss.standby_current || !synced {
            self.why = Some(format!(
                "step {step}: active {n_lost} was lost ({}) while {n_other} was not a current standby: \
                 the work {n_lost} acked alone is gone",
                loss.how
            ));
            return Outcome::Lost;
        }
        match self.tb.set_role(other, Role::Active).await {
            Ok(_) => {
                let took_ms = t0.0.elapsed().as_millis() as u64;
                self.tb.events().emit(Event::Failover { from: n_lost.clone(), to: n_other.clone(), took_ms });
                self.switches.push((step, t0.1, self.now(), n_other.clone()));
                self.why = Some(format!("step {step}: active {n_lost} was lost ({}); {n_other} took over", loss.how));
                Outcome::FailedOver
            }
            Err(e) => {
                self.why = Some(format!(
                    "step {step}: active {n_lost} was lost ({}); promoting {n_other} failed: {}",
                    loss.how,
                    chain(&e)
                ));
                Outcome::Lost
            }
        }
    }

    /// The processor running `role` as its agent reports, if one does.
    pub(super) async fn in_role(&self, role: Role) -> Option<ProcId> {
        for p in ProcId::BOTH {
            if self.tb.agents().status(p).await.is_ok_and(|s| s.hello.role == role) {
                return Some(p);
            }
        }
        None
    }
}
