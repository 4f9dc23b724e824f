//! The plan of an upgrade and its journal: written before and after each
//! step, so that an upgrade cut short (the orchestrator killed, the machine
//! rebooted) can be resumed or rolled back — and [`resume_step`], the pure
//! decision of where to go on from what the journal says.

use super::table::{next, Outcome, Step};
use crate::error::{EnvironmentError, Error, ProcedureError};
use crate::pair::ProcId;
use crate::rundir::{write_atomic, RunDir};
use crate::testbed::Testbed;
use serde::{Deserialize, Serialize};

/// Who plays which part: `first` is active at step 200 (the patent's P121).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The version both run at step 200.
    pub from: String,
    /// The version to upgrade to.
    pub to: String,
    /// Active at step 200, upgraded second.
    pub first: String,
    /// Standby at step 200, upgraded and evaluated first.
    pub second: String,
    /// How long step 204 evaluates the new version (ms).
    pub evaluation_ms: u64,
}

/// Where an upgrade is: written before (outcome `None`) and after each step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The plan being carried out.
    pub plan: Plan,
    /// The step begun or done.
    pub step: Step,
    /// How the step ended; `None` while it runs.
    pub outcome: Option<Outcome>,
    /// The step whose failure or verdict led to the fallback, if one is under way.
    #[serde(default)]
    pub fallback_from: Option<Step>,
    /// The id of every run (of `hitless upgrade`, `--resume`, `rollback`) that
    /// worked on this upgrade, oldest first: their histories are checked together.
    #[serde(default)]
    pub runs: Vec<String>,
}

/// Where to continue an upgrade whose journal says `j`.
pub fn resume_step(j: &Journal) -> Result<Step, ProcedureError> {
    match (j.step, j.outcome) {
        (s, _) if s.is_end() => Err(ProcedureError::Ended(s)),
        // The step was cut short by a lost active (the pair repaired since, or not): redo it.
        (s, Some(Outcome::FailedOver | Outcome::Lost)) if next(s, Outcome::FailedOver) == Ok(Step::Failed) => Ok(s),
        // The step finished: go where its outcome leads.
        (s, Some(o)) => Ok(next(s, o).unwrap_or(Step::Failed)),
        // An evaluation cut short cannot be trusted: fall back.
        (Step::SwitchOverAndEvaluate, None) => Ok(Step::Fallback),
        // Every other step is safe to run again from its start.
        (s, None) => Ok(s),
    }
}

/// The journal in `run`, if an upgrade ran there.
pub fn read_journal(run: &RunDir) -> Option<Journal> {
    serde_json::from_slice(&std::fs::read(run.journal()).ok()?).ok()
}

/// Write the journal atomically.
pub fn write_journal(run: &RunDir, j: &Journal) -> Result<(), Error> {
    let data = serde_json::to_vec_pretty(j).map_err(std::io::Error::other);
    data.and_then(|d| write_atomic(&run.journal(), &d))
        .map_err(|source| EnvironmentError::File { path: run.journal(), source }.into())
}

/// The plan for upgrading the running pair to `to`, checked against the config.
pub async fn plan(tb: &Testbed, to: &str) -> Result<Plan, Error> {
    tb.config().version(to)?;
    // Step 200 checks the roles; here the active simply plays P121.
    let first = tb.active().await.unwrap_or(ProcId::FIRST);
    Ok(Plan {
        from: tb.version_of(first).to_string(),
        to: to.to_string(),
        first: tb.name(first).into(),
        second: tb.name(first.other()).into(),
        evaluation_ms: tb.config().evaluation_ms,
    })
}

/// The steps the happy path takes, as lines for `--dry-run`.
pub fn describe_plan(tb: &Testbed, p: &Plan) -> Vec<String> {
    let img = |v: &str| {
        tb.software(v).map(|s| s.image).unwrap_or_else(|e| format!("(cannot build: {})", crate::error::chain(&e)))
    };
    vec![
        format!("200 check: {} active and {} standby on {}, replication current", p.first, p.second, p.from),
        format!("201 take {} out of service ({} runs simplex)", p.second, p.first),
        format!("202 reload {} with {} from {} (a fresh machine on a new overlay)", p.second, p.to, img(&p.to)),
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

#[cfg(test)]
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
        Journal { plan, step, outcome, fallback_from: None, runs: vec!["r1".into()] }
    }

    #[test]
    fn resume_follows_the_journalled_outcome() {
        // 204 ended "not acceptable": the fallback comes next, not step 205.
        let r = |s, o| resume_step(&journal(s, o)).ok();
        assert_eq!(r(Step::SwitchOverAndEvaluate, Some(Outcome::NotAcceptable)), Some(Step::Fallback));
        assert_eq!(r(Step::SwitchOverAndEvaluate, Some(Outcome::Done)), Some(Step::ReloadOther));
        assert_eq!(r(Step::ReloadStandby, Some(Outcome::Error)), Some(Step::Fallback));
    }

    #[test]
    fn resume_redoes_an_interrupted_step_except_the_evaluation() {
        for s in super::super::table::ALL_STEPS.into_iter().filter(|s| !s.is_end()) {
            let want = if s == Step::SwitchOverAndEvaluate { Step::Fallback } else { s };
            assert_eq!(resume_step(&journal(s, None)).ok(), Some(want), "{s:?}");
        }
        let ended = resume_step(&journal(Step::Completed, Some(Outcome::Done)));
        assert!(matches!(ended, Err(ProcedureError::Ended(Step::Completed))));
    }

    #[test]
    fn the_journal_names_steps_by_number() {
        let j = journal(Step::StandbyOnNew, None);
        let text = serde_json::to_string(&j).unwrap_or_default();
        assert!(text.contains(r#""step":"203""#), "{text}");
        assert_eq!(serde_json::from_str::<Journal>(&text).ok(), Some(j));
    }
}
