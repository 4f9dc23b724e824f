//! Whether a pair is healthy — one active, one standby that the active sees
//! current, both machines running, the link up, room in the active's
//! database for new work — as a pure function of what
//! `status` observed. `hitless status` exits non-zero with these problems,
//! the procedure refuses to start on them, and `hitless repair` fixes them
//! (all but a full database, which needs the pair restarted).

use crate::testbed::ProcessorStatus;
use hitless_protocol::Role;

/// Something wrong with the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A processor's machine does not run.
    Down(String),
    /// A processor's machine is paused.
    Paused(String),
    /// A processor's machine runs but its agent does not answer.
    Unreachable {
        /// The processor.
        processor: String,
        /// What the channel said.
        why: String,
    },
    /// Nobody serves work units.
    NoActive,
    /// Both claim to be active: split brain.
    TwoActives,
    /// The active has no standby (the other is out of service or has no role).
    NoStandby {
        /// The active.
        active: String,
        /// What the other is.
        other: String,
    },
    /// The active does not see its standby current.
    StandbyNotCurrent {
        /// The standby.
        standby: String,
        /// What the active sees.
        why: String,
    },
    /// An agent does not see its peer over the link.
    LinkDown(String),
    /// The active's database holds as many request ids as it may: it refuses
    /// every new work unit, so the pair serves nothing new.
    DatabaseFull {
        /// The active.
        active: String,
        /// The request ids it holds, its bound.
        capacity: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Down(p) => write!(f, "{p} is down (its machine is not running)"),
            Problem::Paused(p) => write!(f, "{p} is paused (its machine is stopped; `hitless repair` resumes it)"),
            Problem::Unreachable { processor, why } => {
                write!(f, "{processor}'s machine runs but its agent does not answer ({why})")
            }
            Problem::NoActive => f.write_str("no processor is active: nothing serves work units"),
            Problem::TwoActives => f.write_str("both processors are active (split brain)"),
            Problem::NoStandby { active, other } => write!(f, "{active} is active with no standby ({other})"),
            Problem::StandbyNotCurrent { standby, why } => write!(f, "standby {standby} is not current: {why}"),
            Problem::LinkDown(p) => write!(f, "{p} does not see its peer over the link"),
            Problem::DatabaseFull { active, capacity } => write!(
                f,
                "{active}'s database is full ({capacity} request ids): it refuses all new work; restart the pair \
                 (`hitless down`, `hitless up`) or give the processors more memory (`memory_mib`)"
            ),
        }
    }
}

/// Everything wrong with the pair `st` shows; empty when it is healthy.
pub fn assess(st: &crate::pair::Pair<ProcessorStatus>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut roles = Vec::new();
    for s in st.values() {
        match (&s.run_state, &s.agent) {
            (None, _) => problems.push(Problem::Down(s.name.clone())),
            (Some(state), _) if state == "paused" => problems.push(Problem::Paused(s.name.clone())),
            (Some(_), Err(why)) => problems.push(Problem::Unreachable { processor: s.name.clone(), why: why.clone() }),
            (Some(_), Ok(a)) => {
                roles.push((s, a));
                if !a.peer.as_ref().is_some_and(|p| p.connected) {
                    problems.push(Problem::LinkDown(s.name.clone()));
                }
            }
        }
    }
    let actives: Vec<_> = roles.iter().filter(|(_, a)| a.hello.role == Role::Active).collect();
    match actives.as_slice() {
        [] => problems.push(Problem::NoActive),
        [(s, a)] => {
            if let Some(ids) = a.request_ids.filter(|r| r.capacity > 0 && r.applied >= r.capacity) {
                problems.push(Problem::DatabaseFull { active: s.name.clone(), capacity: ids.capacity });
            }
            let other = st.values().find(|o| o.name != s.name);
            let standby = roles.iter().find(|(o, b)| o.name != s.name && b.hello.role == Role::Standby);
            match (standby, other) {
                (Some((o, _)), _) => {
                    if let Err(why) = a.replication.standby_current() {
                        problems.push(Problem::StandbyNotCurrent {
                            standby: o.name.clone(),
                            why: format!("{} sees: {why}", s.name),
                        });
                    }
                }
                (None, Some(o)) => {
                    let what = match &o.agent {
                        Ok(b) => format!("{} is {}", o.name, b.hello.role),
                        Err(_) => format!("{} has no role", o.name),
                    };
                    problems.push(Problem::NoStandby { active: s.name.clone(), other: what });
                }
                (None, None) => {}
            }
        }
        _ => problems.push(Problem::TwoActives),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pair::Pair;
    use hitless_protocol::{Hello, PeerStatus, Replication, RequestIds, Status, PROTOCOL_VERSION};

    fn agent(name: &str, role: Role, repl: Replication, peer_connected: bool) -> Status {
        let hello = |n: &str, r| Hello {
            proto: PROTOCOL_VERSION,
            name: n.into(),
            version: "1.0.0".into(),
            supported: Default::default(),
            enabled: Default::default(),
            role: r,
            epoch: 1,
            seq: Some(0),
        };
        let peer = PeerStatus { hello: hello("peer", Role::Standby), connected: peer_connected, refused: None };
        Status {
            hello: hello(name, role),
            peer: Some(peer),
            replication: repl,
            units: 0,
            served: 0,
            errors: 0,
            uptime_ms: 0,
            warmed_up_ms: None,
            request_ids: None,
        }
    }

    fn proc(name: &str, state: Option<&str>, agent: Result<Status, String>) -> ProcessorStatus {
        ProcessorStatus {
            name: name.into(),
            booted_version: "1.0.0".into(),
            run_state: state.map(str::to_string),
            app_disk: None,
            agent,
        }
    }

    fn current() -> Replication {
        Replication { registered: Some(5), seq: 5, peer_silent_ms: Some(50), ..Replication::default() }
    }

    #[test]
    fn a_healthy_pair_has_no_problems_and_each_fault_is_named() {
        let active = |r: Replication| proc("p121", Some("running"), Ok(agent("p121", Role::Active, r, true)));
        let standby = || proc("p122", Some("running"), Ok(agent("p122", Role::Standby, Replication::default(), true)));
        assert_eq!(assess(&Pair::new(active(current()), standby())), vec![]);

        let dead_active = Pair::new(proc("p121", None, Err("not running".into())), standby());
        assert_eq!(assess(&dead_active), vec![Problem::Down("p121".into()), Problem::NoActive]);

        let silent = Replication { peer_silent_ms: Some(900), ..current() };
        let p = assess(&Pair::new(active(silent), standby()));
        assert!(
            matches!(&p[..], [Problem::StandbyNotCurrent { why, .. }] if why.contains("silent for 900 ms")),
            "{p:?}"
        );

        let simplex = Replication { simplex: true, registered: None, ..current() };
        assert!(matches!(&assess(&Pair::new(active(simplex), standby()))[..], [Problem::StandbyNotCurrent { .. }]));
        // Attached, its step-up sent, not yet registered: not current either, and not called simplex.
        let stepping_up = Replication { registered: None, ..current() };
        let p = assess(&Pair::new(active(stepping_up), standby()));
        assert!(
            matches!(&p[..], [Problem::StandbyNotCurrent { why, .. }] if why.contains("not confirmed its step-up")),
            "{p:?}"
        );

        let paused = Pair::new(active(current()), proc("p122", Some("paused"), Err("timeout".into())));
        assert_eq!(
            assess(&paused),
            vec![
                Problem::Paused("p122".into()),
                Problem::NoStandby { active: "p121".into(), other: "p122 has no role".into() }
            ]
        );

        let two = Pair::new(
            active(current()),
            proc("p122", Some("running"), Ok(agent("p122", Role::Active, current(), true))),
        );
        assert_eq!(assess(&two), vec![Problem::TwoActives]);

        let cut = Pair::new(
            active(current()),
            proc("p122", Some("running"), Ok(agent("p122", Role::Standby, Replication::default(), false))),
        );
        assert_eq!(assess(&cut), vec![Problem::LinkDown("p122".into())]);

        // A database with room is healthy; a full one refuses all new work.
        let ids = |applied| Some(RequestIds { applied, capacity: 1000 });
        let with_ids = |applied| {
            let mut a = agent("p121", Role::Active, current(), true);
            a.request_ids = ids(applied);
            Pair::new(proc("p121", Some("running"), Ok(a)), standby())
        };
        assert_eq!(assess(&with_ids(999)), vec![]);
        let full = assess(&with_ids(1000));
        assert_eq!(full, vec![Problem::DatabaseFull { active: "p121".into(), capacity: 1000 }]);
        assert!(full[0].to_string().contains("hitless down"), "says what to do: {}", full[0]);
    }
}
