//! Warm-up: under TCG a guest's code runs only once QEMU has translated it,
//! the first time each path is taken. A processor that has only been standby
//! has never run the active's side of replication (serving work, sending
//! updates, releasing acks), and an active never the standby's, so the first
//! work units after a switchover paid for that translation: the first ack came
//! 15-30 ms after the promotion, 2-3 ms once warm. Once the host has had its
//! first answer (its boot timing ends there), the agent runs both roles'
//! paths once in a private pair of agents joined by an in-memory link, every
//! message through the wire encoding; nothing of it is visible outside (no
//! sockets, no logs, no state shared with the real agent).

use crate::agent::joined::Joined;
use crate::agent::{Agent, LinkAction};
use crate::build::Build;
use hitless_protocol::{
    decode_link, encode_link_into, frame_into, from_frame, to_line, ControlReply, Frames, LinkMsg, Operation, Role,
    WorkReply, WorkRequest,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Work units per role: enough to take every branch of the update stream
/// (open, two updates, close) and of batched registration.
const UNITS: u64 = 24;

/// A warm-up to start once, on its own thread (the agent's runtime goes on
/// answering meanwhile), and what it took once done.
#[derive(Debug, Default)]
pub struct Armed {
    armed: AtomicBool,
    took_ms: Arc<OnceLock<u64>>,
}

impl Armed {
    /// Let [`Armed::start`] start it.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Start it if armed and not started yet.
    pub fn start(&self, build: &Build) {
        if !self.armed.swap(false, Ordering::Relaxed) {
            return;
        }
        let (build, took_ms) = (build.clone(), self.took_ms.clone());
        let spawned = std::thread::Builder::new().name("warm-up".into()).spawn(move || match warm_up(&build) {
            Ok(took) => {
                let _ = took_ms.set(took.as_millis() as u64);
                tracing::info!("warmed up both roles' work paths in {} ms", took.as_millis());
            }
            Err(e) => tracing::warn!("warm-up incomplete: {e}"),
        });
        if let Err(e) = spawned {
            tracing::warn!("no warm-up: {e}");
        }
    }

    /// How long the warm-up took, once it has run and replicated every unit.
    pub fn took_ms(&self) -> Option<u64> {
        self.took_ms.get().copied()
    }
}

/// Run both roles' work paths once; returns how long it took, or what it
/// missed (every unit must be acked after registration in both roles).
pub fn warm_up(build: &Build) -> Result<Duration, String> {
    let start = Instant::now();
    // Nothing here may print, nor crash (a crashing test build's flaw).
    let acked = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        let build = Build { flaw: None, ..build.clone() };
        let mut pair = Pair::new(build);
        let first = pair.serve(0);
        pair.switch_over();
        [first, pair.serve(UNITS)]
    });
    complete(acked).map(|()| start.elapsed())
}

/// The warm-up's verdict on its acks in each role: every unit and the retry
/// of the first, acked after registration.
fn complete(acked: [u64; 2]) -> Result<(), String> {
    match acked {
        [a, b] if a == UNITS + 1 && b == UNITS + 1 => Ok(()),
        [a, b] => Err(format!("{a} and {b} of {} units acked after registration", UNITS + 1)),
    }
}

/// Two agents, `a` active first, joined both ways.
struct Pair {
    j: Joined,
    active_is_a: bool,
}

impl Pair {
    fn new(build: Build) -> Pair {
        let j = Joined::new(Agent::new("warm-a".into(), build.clone()), Agent::new("warm-b".into(), build));
        let mut p = Pair { j, active_is_a: true };
        p.pump();
        let _ = p.j.a.set_role(Role::Active, 1);
        let _ = p.j.b.set_role(Role::Standby, 2);
        p.pump();
        p
    }

    /// Deliver link messages both ways, encoded and decoded, until quiet; the
    /// standby's registrations go back as the link reader sends them.
    fn pump(&mut self) {
        let mut buf = Vec::new();
        loop {
            let mut moved = false;
            for to_b in [true, false] {
                let j = &mut self.j;
                let (rx, from, to) = if to_b { (&mut j.to_b, &j.a, &j.b) } else { (&mut j.to_a, &j.b, &j.a) };
                while let Ok(msg) = rx.try_recv() {
                    moved = true;
                    buf.clear();
                    if encode_link_into(&msg, &from.negotiated(), &mut buf).is_err() {
                        continue;
                    }
                    let mut frames = Frames::new();
                    frames.spare().extend_from_slice(&buf);
                    while let Ok(Some(frame)) = frames.next_frame() {
                        let Ok(msg) = decode_link(frame, to.supported()) else { continue };
                        if let LinkAction::Registered(generation, seq) = to.on_link(msg) {
                            from.on_link(LinkMsg::Registered { generation, seq });
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The active now.
    fn active(&self) -> &Agent {
        if self.active_is_a {
            &self.j.a
        } else {
            &self.j.b
        }
    }

    /// Serve `UNITS` work units on the active (ids from `first`) and a retry of
    /// the first, each request and reply through the wire encoding as on a
    /// work connection; returns the acks that came after registration.
    fn serve(&mut self, first: u64) -> u64 {
        let mut frames = Frames::new();
        for n in first..first + UNITS {
            let unit = format!("warm-u{}", n / 4);
            let op = match n % 4 {
                0 => Operation::Open { unit, fields: [("caller".to_string(), "warm".to_string())].into() },
                1 | 2 => Operation::Update { unit, fields: [("state".to_string(), format!("s{n}"))].into() },
                _ => Operation::Close { unit },
            };
            frame_into(&WorkRequest { id: format!("warm-w{n}"), op }, frames.spare());
        }
        // A retry of an applied request: the de-duplication path.
        let retry = WorkRequest { id: format!("warm-w{first}"), op: Operation::Close { unit: "warm-u0".into() } };
        frame_into(&retry, frames.spare());
        while let Ok(Some(frame)) = frames.next_frame() {
            if let Ok(req) = from_frame::<WorkRequest>(frame) {
                self.active().work(req, &self.j.reply_tx);
            }
        }
        self.pump();
        // The replies are encoded as a work connection would send them (the
        // bytes go nowhere: it is the encoding's code that gets translated).
        let (mut out, mut registered) = (Vec::new(), 0);
        while let Ok(reply) = self.j.replies.try_recv() {
            registered += u64::from(matches!(reply, WorkReply::Ack { registered: true, .. }));
            frame_into(&reply, &mut out);
        }
        // What the host polls around a switchover.
        let _ = to_line(&ControlReply::Status(Box::new(self.active().status())));
        registered
    }

    /// The active steps down, the standby becomes active and steps the old one up.
    fn switch_over(&mut self) {
        let (old, new) = if self.active_is_a { (&self.j.a, &self.j.b) } else { (&self.j.b, &self.j.a) };
        let _ = old.set_role(Role::Standby, 3);
        let _ = new.set_role(Role::Active, 4);
        self.active_is_a = !self.active_is_a;
        self.pump();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_runs_both_roles_and_replicates_every_unit() {
        let none: [&str; 0] = [];
        let mut pair = Pair::new(Build::from_cargo_features(&none));
        assert_eq!(pair.serve(0), UNITS + 1, "every unit and the retry acked after registration");
        pair.switch_over();
        assert_eq!(pair.serve(UNITS), UNITS + 1);
        // Both took each role, and the last standby holds all the work, registered.
        let (a, b) = (pair.j.a.status(), pair.j.b.status());
        assert_eq!((a.hello.role, b.hello.role), (Role::Standby, Role::Active));
        assert_eq!(b.served, UNITS + 1, "served as active after the switchover (one a retry)");
        assert_eq!(b.replication.registered, Some(2 * UNITS));
        assert_eq!(pair.j.a.dump(), pair.j.b.dump());
    }

    #[test]
    fn a_warm_up_short_of_an_ack_in_either_role_is_incomplete() {
        assert!(complete([UNITS + 1, UNITS + 1]).is_ok());
        assert!(complete([UNITS, UNITS + 1]).is_err());
        assert!(complete([UNITS + 1, 0]).is_err());
    }

    #[test]
    fn a_crashing_build_does_not_crash_in_its_warm_up() {
        // The crash flaw starts a timer when made active; outside a runtime that would panic.
        let build = Build::from_cargo_features(&["v2"]).with_args(&["--flaw", "crash"]).unwrap();
        assert!(warm_up(&build).is_ok());
    }
}
