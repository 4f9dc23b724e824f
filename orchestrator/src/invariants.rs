//! The design's invariants, each a pure function over what happened: the
//! workload's [`History`] against the final database (no acknowledged work
//! unit lost or applied twice), the role events and the acks (never two
//! actives), what the agents report at the end (a consistent final state).
//! Each has unit tests that feed it a broken history and see it fail.

use crate::events::{Entry, Event};
use crate::history::{History, Kind};
use crate::procedure::End;
use hitless_protocol::{Role, WorkUnit};
use std::collections::{BTreeMap, HashMap};

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Invariant name.
    pub name: &'static str,
    /// Whether it held.
    pub ok: bool,
    /// The evidence, either way.
    pub detail: String,
    /// The request ids that violate it (empty when it held, or when it is not about requests).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offenders: Vec<String>,
}

/// Invariant 2: every acked request applied exactly once in the final
/// database — and applied by the run that sent it: an ack the processor
/// answered from its de-duplication index (`duplicate`) is only genuine for a
/// request the run had sent before (a retry after a switchover); for a first
/// send it means the id was applied by someone else (ids reused across runs),
/// so nothing of this run was applied and nothing was checked.
pub fn no_lost_or_double(history: &History, units: &[WorkUnit]) -> Verdict {
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for u in units {
        for op in &u.ops {
            *applied.entry(op.as_str()).or_default() += 1;
        }
    }
    let acked = history.acked();
    let lost: Vec<&str> = acked.keys().map(String::as_str).filter(|id| !applied.contains_key(id)).collect();
    let twice: Vec<&str> = applied.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    let mut sends: HashMap<&str, usize> = HashMap::new();
    let mut not_ours = Vec::new();
    for r in &history.records {
        match r.kind {
            Kind::Send | Kind::Retry => *sends.entry(r.id.as_str()).or_default() += 1,
            Kind::Ack if r.duplicate == Some(true) && sends.get(r.id.as_str()).copied().unwrap_or(0) < 2 => {
                not_ours.push(r.id.as_str());
            }
            Kind::Ack | Kind::Rejected | Kind::NotActive => {}
        }
    }
    let ok = lost.is_empty() && twice.is_empty() && not_ours.is_empty();
    let detail = if ok {
        format!("{} acked work requests, all applied exactly once", acked.len())
    } else {
        let first = |v: &[&str]| v.iter().take(10).map(|s| s.to_string()).collect::<Vec<_>>();
        format!(
            "{} acked; lost: {:?}; applied twice: {:?}; acked as duplicates of requests this run sent only once \
             (applied by someone else: request ids reused?): {} {:?}",
            acked.len(),
            first(&lost),
            first(&twice),
            not_ours.len(),
            first(&not_ours)
        )
    };
    let offenders =
        lost.iter().copied().chain(twice.iter().copied()).chain(not_ours.iter().copied()).map(str::to_string).collect();
    Verdict { name: "no-acked-work-lost-or-applied-twice", ok, detail, offenders }
}

/// Where lost work was acked: of the `lost` request ids, those this run
/// acked while its active ran simplex (no standby registered them), with the
/// steps they were acked in (`marks`: when each step began, on the history's
/// clock). `None` when none of them was.
pub fn simplex_window(history: &History, lost: &[String], marks: &[(crate::procedure::Step, u64)]) -> Option<String> {
    let mut steps: Vec<String> = Vec::new();
    let mut n = 0;
    for r in history.records.iter().filter(|r| r.kind == Kind::Ack && r.registered == Some(false)) {
        if !lost.contains(&r.id) {
            continue;
        }
        n += 1;
        if let Some((step, _)) = marks.iter().rev().find(|(_, t)| *t <= r.t_ms) {
            let s = step.to_string();
            if !steps.contains(&s) {
                steps.push(s);
            }
        }
    }
    (n > 0).then(|| {
        format!(
            "{n} of them acked while the active ran simplex (no standby registered them), at step {}",
            steps.join(", ")
        )
    })
}

/// How often the processor that acks changes along the history. The workload
/// talks to one processor at a time, so this can only change at a switchover;
/// two processors serving at once would show up as extra changes.
pub fn ack_handovers(history: &History) -> usize {
    let acks: Vec<&str> =
        history.records.iter().filter(|r| r.kind == Kind::Ack).map(|r| r.processor.as_str()).collect();
    acks.windows(2).filter(|w| w[0] != w[1]).count()
}

/// Invariant 1: never more than one active — from the role events (what the
/// agents confirmed) and from the acks (who actually served), given the
/// number of switchovers the procedure made.
pub fn never_two_actives(entries: &[Entry], history: &History, switchovers: usize) -> Verdict {
    let mut roles: BTreeMap<String, Option<Role>> = BTreeMap::new();
    let mut last_epoch = 0;
    let mut violations = Vec::new();
    for e in entries {
        match &e.event {
            Event::Role { processor, role, epoch } => {
                if *epoch <= last_epoch {
                    violations.push(format!("epoch {epoch} not above {last_epoch}"));
                }
                last_epoch = *epoch;
                roles.insert(processor.clone(), Some(*role));
            }
            Event::ProcessorStopped { processor, .. } | Event::ProcessorLost { processor, .. } => {
                roles.insert(processor.clone(), None);
            }
            _ => continue,
        }
        let actives: Vec<&String> = roles.iter().filter(|(_, r)| **r == Some(Role::Active)).map(|(p, _)| p).collect();
        if actives.len() > 1 {
            violations.push(format!("two actives at {} ms: {actives:?}", e.at_ms));
        }
    }
    let handovers = ack_handovers(history);
    if handovers > switchovers {
        violations.push(format!("acks moved between processors {handovers} times in {switchovers} switchovers"));
    }
    let ok = violations.is_empty();
    let detail = if ok {
        format!("at most one active throughout; epochs increase (last {last_epoch}); acks changed hands {handovers} times in {switchovers} switchovers")
    } else {
        violations.join("; ")
    };
    Verdict { name: "never-two-actives", ok, detail, offenders: Vec::new() }
}

/// The workload got work done and none of it was refused as invalid.
pub fn workload_served(history: &History) -> Verdict {
    let (acked, rejected) = (history.acked().len(), history.rejected());
    let offenders = history.records.iter().filter(|r| r.kind == Kind::Rejected).map(|r| r.id.clone()).collect();
    let detail = format!("{acked} acked, {rejected} rejected");
    Verdict { name: "workload-served", ok: rejected == 0 && acked > 0, detail, offenders }
}

/// A processor as the agents report it at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    /// Its role, or `None` if its agent did not answer.
    pub role: Option<Role>,
    /// As standby: whether it completed its step-up.
    pub synced: bool,
    /// The version it was last booted with.
    pub version: String,
}

/// Invariant 3: a completed run ends with both processors on `to`, a
/// rolled-back one on `from` — one active and one current standby either way.
/// A failed run must stop with a clear error: its state is reported, never
/// called consistent.
pub fn consistent_final_state(end: End, from: &str, to: &str, pair: &[Final]) -> Verdict {
    let want = match end {
        End::Completed => Some(to),
        End::RolledBack => Some(from),
        End::Failed => None,
    };
    let mut roles: Vec<Option<Role>> = pair.iter().map(|f| f.role).collect();
    roles.sort();
    let in_service = roles == [Some(Role::Standby), Some(Role::Active)]
        && pair.iter().all(|f| f.role != Some(Role::Standby) || f.synced);
    let ok = want.is_some_and(|v| in_service && pair.iter().all(|f| f.version == v));
    let detail = format!(
        "roles {:?}, versions {:?}{}",
        pair.iter().map(|f| f.role.map_or("unreachable".to_string(), |r| r.to_string())).collect::<Vec<_>>(),
        pair.iter().map(|f| f.version.as_str()).collect::<Vec<_>>(),
        want.map_or_else(|| ", run failed".to_string(), |v| format!(", expected both on {v}"))
    );
    Verdict { name: "consistent-final-state", ok, detail, offenders: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Record;
    use hitless_protocol::UnitState;

    fn unit(id: &str, ops: &[&str]) -> WorkUnit {
        WorkUnit {
            id: id.into(),
            state: UnitState::Open,
            fields: Default::default(),
            priority: None,
            ops: ops.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn ack(id: &str) -> Record {
        Record { seq: Some(1), registered: Some(true), ..Record::new(0, Kind::Ack, id, "p") }
    }

    #[test]
    fn lost_and_double_applies_are_caught() {
        let h = History { records: vec![ack("w0"), ack("w1"), ack("w2")] };
        assert!(no_lost_or_double(&h, &[unit("u0", &["w0", "w1", "w2"])]).ok);
        let v = no_lost_or_double(&h, &[unit("u0", &["w0", "w1"])]);
        assert!(!v.ok && v.detail.contains("w2"), "{}", v.detail);
        let v = no_lost_or_double(&h, &[unit("u0", &["w0", "w1", "w2", "w1"])]);
        assert!(!v.ok && v.detail.contains("twice"), "{}", v.detail);
        // Applied but never acked (the client gave up) is allowed.
        assert!(no_lost_or_double(&h, &[unit("u0", &["w0", "w1", "w2", "w3"])]).ok);
    }

    #[test]
    fn acks_answered_from_another_runs_work_are_caught() {
        let send = |id: &str| Record::new(0, Kind::Send, id, "p");
        let retry = |id: &str| Record::new(0, Kind::Retry, id, "p");
        let dup = |id: &str| Record { duplicate: Some(true), ..ack(id) };
        let db = [unit("u0", &["w0", "w1"])];
        // A retry after a switchover, answered from the index: genuine.
        let retried = History { records: vec![send("w0"), send("w1"), ack("w1"), retry("w0"), dup("w0")] };
        assert!(no_lost_or_double(&retried, &db).ok);
        // The defect this catches: a second workload reusing ids w0, w1 gets every
        // ack from the index at its first send; the database "has" them all.
        let reused = History { records: vec![send("w0"), dup("w0"), send("w1"), dup("w1")] };
        let v = no_lost_or_double(&reused, &db);
        assert!(!v.ok && v.detail.contains("sent only once") && v.detail.contains("w1"), "{}", v.detail);
    }

    #[test]
    fn two_actives_are_caught() {
        let role =
            |t, p: &str, role: Role, epoch| Entry { at_ms: t, event: Event::Role { processor: p.into(), role, epoch } };
        let none = History::default();
        let good = [
            role(0, "a", Role::Active, 1),
            role(1, "b", Role::Standby, 2),
            role(2, "a", Role::Standby, 3),
            role(3, "b", Role::Active, 4),
        ];
        assert!(never_two_actives(&good, &none, 1).ok);
        let bad = [role(0, "a", Role::Active, 1), role(1, "b", Role::Active, 2)];
        assert!(!never_two_actives(&bad, &none, 1).ok);
        let stale = [role(0, "a", Role::Active, 2), role(1, "b", Role::Standby, 1)];
        assert!(!never_two_actives(&stale, &none, 1).ok);
    }

    #[test]
    fn acks_from_both_sides_between_switchovers_are_a_split_brain() {
        let by = |p: &str, id: &str| Record::new(0, Kind::Ack, id, p);
        let one_switch = History { records: vec![by("a", "w0"), by("a", "w1"), by("b", "w2"), by("b", "w3")] };
        assert_eq!(ack_handovers(&one_switch), 1);
        assert!(never_two_actives(&[], &one_switch, 1).ok);
        let both_serving = History { records: vec![by("a", "w0"), by("b", "w1"), by("a", "w2"), by("b", "w3")] };
        let v = never_two_actives(&[], &both_serving, 1);
        assert!(!v.ok && v.detail.contains("3 times"), "{}", v.detail);
    }

    #[test]
    fn a_final_state_is_consistent_only_in_service_and_on_the_expected_version() {
        let f = |role, synced, v: &str| Final { role, synced, version: v.into() };
        let done = [f(Some(Role::Active), false, "2"), f(Some(Role::Standby), true, "2")];
        assert!(consistent_final_state(End::Completed, "1", "2", &done).ok);
        let v = consistent_final_state(End::RolledBack, "1", "2", &done);
        assert!(!v.ok && v.detail.contains("expected both on 1"), "{}", v.detail);
        let unsynced = [f(Some(Role::Active), false, "2"), f(Some(Role::Standby), false, "2")];
        assert!(!consistent_final_state(End::Completed, "1", "2", &unsynced).ok);
        let mixed = [f(Some(Role::Active), false, "2"), f(Some(Role::Standby), true, "1")];
        assert!(!consistent_final_state(End::Completed, "1", "2", &mixed).ok);
        let one_down = [f(Some(Role::Active), false, "2"), f(None, false, "2")];
        assert!(!consistent_final_state(End::Completed, "1", "2", &one_down).ok);
        let failed = consistent_final_state(End::Failed, "1", "2", &done);
        assert!(!failed.ok && failed.detail.contains("run failed"));
    }

    #[test]
    fn a_workload_that_did_nothing_or_was_refused_did_not_serve() {
        let by = |k, id: &str| Record::new(0, k, id, "p");
        assert!(workload_served(&History { records: vec![by(Kind::Ack, "w0")] }).ok);
        assert!(!workload_served(&History::default()).ok);
        assert!(!workload_served(&History { records: vec![by(Kind::Ack, "w0"), by(Kind::Rejected, "w1")] }).ok);
    }
}
