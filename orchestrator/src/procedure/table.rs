//! The rolling-upgrade procedure of Fig. 6 (steps 200–207 and the fallback)
//! as an explicit state machine. [`next`] is the whole transition table: one
//! exhaustive match, no catch-all, an error for a pair that cannot happen.
//! Executing a step is [`super::steps`]'s business; this module only says
//! which step follows which outcome.

use serde::{Deserialize, Serialize};

/// A state of the procedure: a step of Fig. 6, or an end. Written as its
/// number ("203", "204-fallback") in events, the journal and the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// 200: check the initial state: one active, one standby, same version, replication current.
    Initial,
    /// 201: take the standby out of service; the active runs simplex.
    IsolateStandby,
    /// 202: reload the isolated processor with the new version, new features disabled.
    ReloadStandby,
    /// 203: make it standby; the active steps it up, then sends updates.
    StandbyOnNew,
    /// 204: switch over and evaluate the new version.
    SwitchOverAndEvaluate,
    /// 204 not acceptable: old-version processor active again, the other falls back to the old version.
    Fallback,
    /// 205: take the old-version processor out of service and reload it with the new version.
    ReloadOther,
    /// 206: make it standby for the new active.
    OtherStandby,
    /// 207: all processors on the new version: enable its new features (point of no return).
    EnableFeatures,
    /// End: upgrade complete.
    Completed,
    /// End: back at step 200 on the old version.
    RolledBack,
    /// End: stopped with an error.
    Failed,
}

/// How a run of the procedure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum End {
    /// Both processors on the new version, its features enabled.
    Completed,
    /// Both processors back on the old version, in service.
    RolledBack,
    /// Stopped with an error; the journal and transcript say where.
    Failed,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Completed => "completed",
            End::RolledBack => "rolled-back",
            End::Failed => "failed",
        })
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The step did what it should.
    Done,
    /// The evaluation found the new version not acceptable (step 204 only).
    NotAcceptable,
    /// The step failed.
    Error,
    /// The active was lost during the step; it was fenced and its current standby took over.
    FailedOver,
    /// The active was lost during the step with no current standby to take over: the run-state it held alone is gone.
    Lost,
}

/// A (step, outcome) pair that the procedure does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: step {} cannot end {outcome:?}", step.number())]
pub struct InvalidTransition {
    /// The step.
    pub step: Step,
    /// The outcome.
    pub outcome: Outcome,
}

/// Every state, in procedure order.
pub const ALL_STEPS: [Step; 12] = [
    Step::Initial,
    Step::IsolateStandby,
    Step::ReloadStandby,
    Step::StandbyOnNew,
    Step::SwitchOverAndEvaluate,
    Step::Fallback,
    Step::ReloadOther,
    Step::OtherStandby,
    Step::EnableFeatures,
    Step::Completed,
    Step::RolledBack,
    Step::Failed,
];

/// Every outcome.
pub const ALL_OUTCOMES: [Outcome; 5] =
    [Outcome::Done, Outcome::NotAcceptable, Outcome::Error, Outcome::FailedOver, Outcome::Lost];

impl Step {
    /// The step's number in Fig. 6 (ends have names instead).
    pub fn number(self) -> &'static str {
        match self {
            Step::Initial => "200",
            Step::IsolateStandby => "201",
            Step::ReloadStandby => "202",
            Step::StandbyOnNew => "203",
            Step::SwitchOverAndEvaluate => "204",
            Step::Fallback => "204-fallback",
            Step::ReloadOther => "205",
            Step::OtherStandby => "206",
            Step::EnableFeatures => "207",
            Step::Completed => "completed",
            Step::RolledBack => "rolled-back",
            Step::Failed => "failed",
        }
    }

    /// What the step does, in the patent's words.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Initial => "initial state: one active, one standby, same version, replication current",
            Step::IsolateStandby => "isolate the standby: take it out of service (the active runs simplex)",
            Step::ReloadStandby => "reload the isolated processor with the new version, new features disabled",
            Step::StandbyOnNew => "make it standby: step-up from the active, then run-state updates",
            Step::SwitchOverAndEvaluate => "switch over: new version active, old version standby; evaluate",
            Step::Fallback => "not acceptable: old version active again, the other falls back to the old version",
            Step::ReloadOther => "isolate the old-version processor and reload it with the new version",
            Step::OtherStandby => "make it standby for the new active (step-up, then updates)",
            Step::EnableFeatures => "all processors upgraded: enable the new features (point of no return)",
            Step::Completed => "rolling upgrade completed",
            Step::RolledBack => "rolled back: old version on both, back at step 200",
            Step::Failed => "stopped with an error",
        }
    }

    /// True for the three ends.
    pub fn is_end(self) -> bool {
        self.end().is_some()
    }

    /// The end this state is, if it is one.
    pub fn end(self) -> Option<End> {
        match self {
            Step::Completed => Some(End::Completed),
            Step::RolledBack => Some(End::RolledBack),
            Step::Failed => Some(End::Failed),
            Step::Initial
            | Step::IsolateStandby
            | Step::ReloadStandby
            | Step::StandbyOnNew
            | Step::SwitchOverAndEvaluate
            | Step::Fallback
            | Step::ReloadOther
            | Step::OtherStandby
            | Step::EnableFeatures => None,
        }
    }

    /// Steps before the point of no return, from which a rollback is allowed.
    pub fn rollback_allowed(self) -> bool {
        !matches!(self, Step::EnableFeatures | Step::Completed)
    }

    /// Parse a step number (as written in the journal).
    pub fn from_number(s: &str) -> Option<Step> {
        ALL_STEPS.into_iter().find(|st| st.number() == s)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.number())
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.number())
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A step as written: "203" in JSON, 203 in YAML.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        let s = match Written::deserialize(d)? {
            Written::Number(n) => n.to_string(),
            Written::Text(t) => t,
        };
        Step::from_number(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown step {s:?} (200-207, 204-fallback, completed, rolled-back, failed)"
            ))
        })
    }
}

/// The step that follows `step` ending with `outcome`.
pub fn next(step: Step, outcome: Outcome) -> Result<Step, InvalidTransition> {
    use Outcome::*;
    use Step::*;
    let invalid = Err(InvalidTransition { step, outcome });
    match (step, outcome) {
        (Initial, Done) => Ok(IsolateStandby),
        // Nothing was changed yet: stop and say why.
        (Initial, Error) => Ok(Failed),
        (IsolateStandby, Done) => Ok(ReloadStandby),
        (ReloadStandby, Done) => Ok(StandbyOnNew),
        (StandbyOnNew, Done) => Ok(SwitchOverAndEvaluate),
        (SwitchOverAndEvaluate, Done) => Ok(ReloadOther),
        (SwitchOverAndEvaluate, NotAcceptable) => Ok(Fallback),
        // Any failure before the point of no return falls back to the old version.
        (IsolateStandby | ReloadStandby | StandbyOnNew | SwitchOverAndEvaluate | ReloadOther | OtherStandby, Error) => {
            Ok(Fallback)
        }
        (ReloadOther, Done) => Ok(OtherStandby),
        (OtherStandby, Done) => Ok(EnableFeatures),
        (EnableFeatures, Done) => Ok(Completed),
        // Past the point of no return there is no way back: stop with the error.
        (EnableFeatures, Error) => Ok(Failed),
        (Fallback, Done) => Ok(RolledBack),
        (Fallback, Error) => Ok(Failed),
        // The active was lost and its standby took over: before the point of no
        // return, rebuild the pair on the old version (the fallback reloads the
        // lost processor); at 207, stop — `repair` reloads it, `--resume` finishes.
        (Initial | IsolateStandby | ReloadStandby | StandbyOnNew | SwitchOverAndEvaluate | Fallback, FailedOver)
        | (ReloadOther | OtherStandby, FailedOver) => Ok(Fallback),
        (EnableFeatures, FailedOver) => Ok(Failed),
        // No current standby took over: nothing can go on; the journal says where.
        (
            Initial
            | IsolateStandby
            | ReloadStandby
            | StandbyOnNew
            | SwitchOverAndEvaluate
            | Fallback
            | ReloadOther
            | OtherStandby
            | EnableFeatures,
            Lost,
        ) => Ok(Failed),
        (
            Initial | IsolateStandby | ReloadStandby | StandbyOnNew | Fallback | ReloadOther | OtherStandby
            | EnableFeatures,
            NotAcceptable,
        ) => invalid,
        (Completed | RolledBack | Failed, Done | NotAcceptable | Error | FailedOver | Lost) => invalid,
    }
}

/// The transition table as text, one line per (step, outcome), for review.
pub fn table() -> String {
    let mut out = String::new();
    for s in ALL_STEPS {
        for o in ALL_OUTCOMES {
            let to = match next(s, o) {
                Ok(t) => t.number().to_string(),
                Err(_) => "-".to_string(),
            };
            out.push_str(&format!("{:<13} {:<14} -> {}\n", s.number(), format!("{o:?}"), to));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transition_table() {
        insta::assert_snapshot!(table());
    }

    #[test]
    fn happy_path_walks_fig_6_in_order() {
        let mut s = Step::Initial;
        let mut seen = vec![s.number()];
        while !s.is_end() {
            s = next(s, Outcome::Done).unwrap();
            seen.push(s.number());
        }
        assert_eq!(seen, ["200", "201", "202", "203", "204", "205", "206", "207", "completed"]);
    }

    #[test]
    fn every_path_ends_and_only_204_judges_acceptability() {
        for s in ALL_STEPS {
            for o in ALL_OUTCOMES {
                match next(s, o) {
                    Ok(t) => {
                        assert!(!s.is_end(), "{s:?} is an end");
                        if o == Outcome::NotAcceptable {
                            assert_eq!(s, Step::SwitchOverAndEvaluate);
                        }
                        // From any state, repeated errors reach an end within three steps.
                        let mut x = t;
                        for _ in 0..3 {
                            if x.is_end() {
                                break;
                            }
                            x = next(x, Outcome::Error).unwrap();
                        }
                        assert!(x.is_end(), "{s:?}/{o:?}");
                    }
                    Err(e) => assert!(s.is_end() || o == Outcome::NotAcceptable, "{e}"),
                }
            }
        }
    }

    #[test]
    fn no_way_back_after_207() {
        assert_eq!(next(Step::EnableFeatures, Outcome::Error), Ok(Step::Failed));
        assert!(!Step::EnableFeatures.rollback_allowed());
        assert!(Step::OtherStandby.rollback_allowed());
        assert_eq!(Step::from_number("204-fallback"), Some(Step::Fallback));
    }

    #[test]
    fn steps_are_written_as_their_numbers() {
        for s in ALL_STEPS {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.number()));
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), s);
        }
        assert!(serde_json::from_str::<Step>("\"299\"").is_err());
        assert_eq!(Step::Failed.end(), Some(End::Failed));
        assert_eq!(Step::ReloadOther.end(), None);
    }
}
