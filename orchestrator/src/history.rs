//! Checking the design's invariants against what happened: the workload's
//! history against the final database (no acknowledged work unit lost or
//! applied twice), the role events (never two actives), and the final state
//! (both in service, one version).

use crate::events::{Entry, Event};
use crate::workload::{History, Kind};
use hitless_protocol::WorkUnit;
use std::collections::{BTreeMap, HashMap};

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Invariant name.
    pub name: &'static str,
    /// Held?
    pub ok: bool,
    /// Evidence.
    pub detail: String,
}

/// Invariant 2: every acked request applied exactly once in the final database.
pub fn no_lost_or_double(history: &History, units: &[WorkUnit]) -> Verdict {
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for u in units {
        for op in &u.ops {
            *applied.entry(op.as_str()).or_default() += 1;
        }
    }
    let acked = history.acked();
    let lost: Vec<&String> = acked.keys().filter(|id| !applied.contains_key(id.as_str())).collect();
    let twice: Vec<&str> = applied.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
    let ok = lost.is_empty() && twice.is_empty();
    let detail = if ok {
        format!("{} acked work requests, all applied exactly once", acked.len())
    } else {
        format!(
            "{} acked; lost: {:?}; applied twice: {:?}",
            acked.len(),
            lost.iter().take(10).collect::<Vec<_>>(),
            twice.iter().take(10).collect::<Vec<_>>()
        )
    };
    Verdict { name: "no-acked-work-lost-or-applied-twice", ok, detail }
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
    let mut roles: BTreeMap<String, String> = BTreeMap::new();
    let mut last_epoch = 0;
    let mut violations = Vec::new();
    for e in entries {
        match &e.event {
            Event::Role { processor, role, epoch } => {
                if *epoch <= last_epoch {
                    violations.push(format!("epoch {epoch} not above {last_epoch}"));
                }
                last_epoch = *epoch;
                roles.insert(processor.clone(), role.clone());
            }
            Event::ProcessorStopped { processor, .. } => {
                roles.insert(processor.clone(), "down".into());
            }
            _ => continue,
        }
        let actives: Vec<&String> = roles.iter().filter(|(_, r)| *r == "active").map(|(p, _)| p).collect();
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
    Verdict { name: "never-two-actives", ok, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Record;
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
    fn two_actives_are_caught() {
        let role = |t, p: &str, r: &str, e| Entry {
            at_ms: t,
            event: Event::Role { processor: p.into(), role: r.into(), epoch: e },
        };
        let none = History::default();
        let good = [
            role(0, "a", "active", 1),
            role(1, "b", "standby", 2),
            role(2, "a", "standby", 3),
            role(3, "b", "active", 4),
        ];
        assert!(never_two_actives(&good, &none, 1).ok);
        let bad = [role(0, "a", "active", 1), role(1, "b", "active", 2)];
        assert!(!never_two_actives(&bad, &none, 1).ok);
        let stale = [role(0, "a", "active", 2), role(1, "b", "standby", 1)];
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
}
