//! Step-up and gap handling between two agents joined by an in-memory link
//! that can lose messages: what the link tasks do, minus the sockets.
#![allow(clippy::unwrap_used)]

use super::*;
use hitless_protocol::{Operation, WorkReply, WorkRequest};
use tokio::sync::mpsc::unbounded_channel;

fn v1() -> Build {
    let none: [&str; 0] = [];
    Build::from_cargo_features(&none)
}

/// p121 (will be active) and p122 (will be standby), linked both ways.
struct Wire {
    j: joined::Joined,
    /// Everything delivered to p121.
    to_a_log: Vec<LinkMsg>,
}

impl std::ops::Deref for Wire {
    type Target = joined::Joined;
    fn deref(&self) -> &joined::Joined {
        &self.j
    }
}

impl std::ops::DerefMut for Wire {
    fn deref_mut(&mut self) -> &mut joined::Joined {
        &mut self.j
    }
}

impl Wire {
    fn new() -> Wire {
        Wire::with_db_capacity(0)
    }

    /// Both agents' databases bounded at `ids` request ids (0: no bound).
    fn with_db_capacity(ids: usize) -> Wire {
        let agent = |name: &str| Agent::new(name.into(), v1()).with_db_capacity(ids);
        let j = joined::Joined::new(agent("p121"), agent("p122"));
        let mut w = Wire { j, to_a_log: Vec::new() };
        w.pump(|_| false);
        w
    }

    /// Deliver queued messages both ways until the link is quiet; messages
    /// from the active for which `lose` says true never arrive. Returns what
    /// reached the standby.
    fn pump(&mut self, mut lose: impl FnMut(&LinkMsg) -> bool) -> Vec<LinkMsg> {
        let mut delivered = Vec::new();
        loop {
            let mut moved = false;
            while let Ok(m) = self.to_b.try_recv() {
                moved = true;
                if lose(&m) {
                    continue;
                }
                delivered.push(m.clone());
                // The link reader answers registrations for the standby.
                if let LinkAction::Registered(generation, seq) = self.b.on_link(m) {
                    self.a.on_link(LinkMsg::Registered { generation, seq });
                }
            }
            while let Ok(m) = self.to_a.try_recv() {
                moved = true;
                self.to_a_log.push(m.clone());
                // After a switchover p121 is the standby: its registrations go back.
                if let LinkAction::Registered(generation, seq) = self.a.on_link(m) {
                    self.b.on_link(LinkMsg::Registered { generation, seq });
                }
            }
            if !moved {
                return delivered;
            }
        }
    }

    /// p121 active, p122 standby after its step-up.
    fn paired() -> Wire {
        Wire::paired_with(Wire::new())
    }

    fn paired_with(mut w: Wire) -> Wire {
        w.a.set_role(Role::Active, 1).unwrap();
        w.b.set_role(Role::Standby, 2).unwrap();
        w.pump(|_| false);
        assert!(w.b.status().replication.synced);
        w
    }

    fn open(&self, n: u32) {
        let req = WorkRequest {
            id: format!("w{n}"),
            op: Operation::Open { unit: format!("u{n}"), fields: Default::default() },
        };
        assert!(self.a.work(req, &self.reply_tx), "p121 is not active");
    }

    fn acks(&mut self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        while let Ok(r) = self.replies.try_recv() {
            match r {
                WorkReply::Ack { id, registered, .. } => out.push((id, registered)),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    /// The acks so far as (id, seq after `seq0`, duplicate); any other reply fails the test.
    fn acks_since(&mut self, seq0: u64) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        while let Ok(r) = self.replies.try_recv() {
            match r {
                WorkReply::Ack { id, seq, duplicate, .. } => out.push((id, seq - seq0, duplicate)),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    /// Paired; w1 applied by p121, its update lost, and p121 demoted while it waits for w1's registration.
    fn demoted_with_w1_in_flight() -> Wire {
        let mut w = Wire::paired();
        w.open(1);
        w.lose_to_b();
        w.a.set_role(Role::Standby, 3).unwrap();
        w
    }

    /// Lose what is queued for p122 (updates in flight).
    fn lose_to_b(&mut self) {
        while self.to_b.try_recv().is_ok() {}
    }

    /// The one reply left is "not active" for `id`: its client retries elsewhere.
    fn refused_only(&mut self, id: &str) {
        let r = self.replies.try_recv().unwrap();
        assert!(matches!(r, WorkReply::NotActive { id: ref got, .. } if got == id), "{r:?}");
        assert!(self.replies.try_recv().is_err());
    }

    fn same_state(&self) -> bool {
        self.a.dump() == self.b.dump()
    }
}

#[test]
fn step_up_carries_all_state_then_each_ack_waits_for_registration() {
    let mut w = Wire::new();
    w.a.set_role(Role::Active, 1).unwrap();
    // Simplex: acked at once, not registered.
    w.open(1);
    w.open(2);
    assert_eq!(w.acks(), [("w1".into(), false), ("w2".into(), false)]);

    w.b.set_role(Role::Standby, 2).unwrap();
    let got = w.pump(|_| false);
    assert!(
        matches!(&got[..], [.., LinkMsg::StepUp { generation: 1, seq: 2, units, .. }] if units.len() == 2),
        "{got:?}"
    );
    assert!(w.b.status().replication.synced && w.same_state());

    // Synchronous: no ack until the standby registered the update.
    w.open(3);
    assert!(w.acks().is_empty());
    assert_eq!(w.a.status().replication.lag, 1);
    let got = w.pump(|_| false);
    assert!(matches!(&got[..], [LinkMsg::Update { generation: 1, seq: 3, .. }]), "{got:?}");
    assert_eq!(w.acks(), [("w3".into(), true)]);
    assert_eq!(w.a.status().replication.lag, 0);
    assert!(w.same_state());
}

#[test]
fn a_registration_acks_in_order_up_to_its_seq_and_a_waiting_retry_with_its_first() {
    let mut w = Wire::paired();
    let generation = w.a.status().replication.generation;
    let seq0 = w.a.status().replication.seq;
    w.open(1);
    w.open(2);
    w.open(3);
    // A retry of w2 while w2 still waits: a duplicate, answered with w2.
    w.open(2);
    assert!(w.acks().is_empty());
    w.a.on_link(LinkMsg::Registered { generation, seq: seq0 + 2 });
    assert_eq!(w.acks_since(seq0), [("w1".into(), 1, false), ("w2".into(), 2, false), ("w2".into(), 2, true)]);
    // The rest once the standby registers it.
    w.pump(|_| false);
    assert_eq!(w.acks(), [("w3".into(), true)]);
}

#[test]
fn a_retry_of_a_registered_unit_after_a_resync_waits_in_seq_order() {
    let mut w = Wire::paired();
    let seq0 = w.a.status().replication.seq;
    w.open(1);
    w.pump(|_| false);
    assert_eq!(w.acks(), [("w1".into(), true)]);
    w.open(2);
    w.open(3);
    // The standby asks for a fresh step-up: nothing counts as registered until
    // it has that, so a retry of w1 (applied at the lowest seq) waits too, at
    // the front of the queue, not behind w2 and w3.
    w.a.on_link(LinkMsg::Resync { reason: "test".into() });
    w.open(1);
    assert!(w.acks().is_empty());
    w.pump(|_| false);
    assert_eq!(w.acks_since(seq0), [("w1".into(), 1, true), ("w2".into(), 2, false), ("w3".into(), 3, false)]);
}

#[test]
fn a_lost_update_is_a_gap_and_the_standby_gets_a_fresh_step_up() {
    let mut w = Wire::paired();
    for n in 1..=3 {
        w.open(n);
    }
    let mut first = true;
    let got = w.pump(|m| matches!(m, LinkMsg::Update { .. }) && std::mem::take(&mut first));
    // Update 2 arrives without 1: the standby asks for a resync and the active
    // sends a new generation's step-up instead of the standby diverging.
    assert!(got.iter().any(|m| matches!(m, LinkMsg::StepUp { generation: 2, seq: 3, .. })), "{got:?}");
    let s = w.b.status();
    assert!(s.replication.synced && s.replication.generation == 2, "{s:?}");
    assert_eq!(s.replication.stepups, 2);
    assert!(w.same_state());
    // Everything was registered by the second step-up, so every ack says so.
    assert_eq!(w.acks().iter().filter(|(_, registered)| *registered).count(), 3);
}

#[test]
fn a_standby_that_cannot_apply_an_update_asks_for_a_resync_too() {
    let mut w = Wire::paired();
    // An update the standby cannot apply (closing a unit it never saw).
    let generation = w.b.status().replication.generation;
    let bad = WorkRequest { id: "x".into(), op: Operation::Close { unit: "nope".into() } };
    w.b.on_link(LinkMsg::Update { generation, seq: 1, request: bad });
    assert!(!w.b.status().replication.synced);
    let got = w.pump(|_| false);
    assert!(got.iter().any(|m| matches!(m, LinkMsg::StepUp { generation: 2, .. })), "{got:?}");
    assert!(w.b.status().replication.synced && w.same_state());
    assert_eq!(w.b.status().errors, 1);
}

#[test]
fn updates_and_registrations_of_an_old_generation_are_ignored() {
    let mut w = Wire::paired();
    w.a.on_link(LinkMsg::Resync { reason: "test".into() });
    w.pump(|_| false);
    assert_eq!(w.b.status().replication.generation, 2);
    // A late update of generation 1 is not applied...
    let old =
        WorkRequest { id: "late".into(), op: Operation::Open { unit: "late".into(), fields: Default::default() } };
    assert!(matches!(w.b.on_link(LinkMsg::Update { generation: 1, seq: 1, request: old }), LinkAction::None));
    assert!(w.same_state());
    // ...and a registration of generation 1 does not release a generation-2 ack.
    w.open(1);
    w.a.on_link(LinkMsg::Registered { generation: 1, seq: 1 });
    assert!(w.acks().is_empty());
    w.pump(|_| false);
    assert_eq!(w.acks(), [("w1".into(), true)]);
}

#[test]
fn a_restarted_standby_is_stepped_up_again_and_pending_work_goes_simplex() {
    let mut w = Wire::paired();
    w.open(1);
    w.pump(|_| false);
    // The standby's link drops with an update in flight: the active releases it unregistered.
    w.open(2);
    w.a.link_down(1_000_000, "not this connection");
    assert!(w.acks().iter().all(|(id, _)| id == "w1"));
    let conn = w.a.link_up(unbounded_channel().0);
    w.a.link_down(conn, "standby restarted");
    assert_eq!(w.acks(), [("w2".into(), false)]);
    assert!(w.a.status().replication.simplex);

    // It comes back empty (a reload): a full step-up brings it all.
    let b = Agent::new("p122".into(), v1());
    let (tb, to_a) = unbounded_channel();
    let (ta, to_b) = unbounded_channel();
    w.a.link_up(ta);
    b.link_up(tb);
    w.b = b;
    w.to_a = to_a;
    w.to_b = to_b;
    w.pump(|_| false);
    w.b.set_role(Role::Standby, 3).unwrap();
    let got = w.pump(|_| false);
    assert!(got.iter().any(|m| matches!(m, LinkMsg::StepUp { seq: 2, units, .. } if units.len() == 2)), "{got:?}");
    assert!(w.same_state());
    assert!(!w.a.status().replication.simplex);
}

#[test]
fn a_demoted_active_whose_standby_dies_refuses_what_was_in_flight() {
    let mut w = Wire::paired();
    w.open(1);
    w.a.set_role(Role::Standby, 3).unwrap();
    // The standby dies before registering w1: it was never acked, so the client is told to go elsewhere.
    w.a.link_down(w.a_conn, "peer gone");
    w.refused_only("w1");
}

/// Switch roles: p121 demoted (it keeps its state), p122 promoted.
fn switch_over(w: &mut Wire) -> Vec<LinkMsg> {
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    w.b.set_role(Role::Active, 4).unwrap();
    w.to_a_log.clear();
    w.pump(|_| false);
    std::mem::take(&mut w.to_a_log)
}

#[test]
fn after_a_switchover_the_demoted_active_is_stepped_up_by_its_history_chain_alone() {
    let mut w = Wire::paired();
    for n in 1..=3 {
        w.open(n);
    }
    w.pump(|_| false);
    let got = switch_over(&mut w);
    assert!(matches!(&got[..], [.., LinkMsg::Continue { generation: 1, seq: 3, .. }]), "{got:?}");
    assert!(!got.iter().any(|m| matches!(m, LinkMsg::StepUp { .. })), "{got:?}");
    let s = w.a.status();
    assert!(s.replication.synced && s.replication.generation == 1, "{s:?}");
    // Work at the new active is acked once p121 registered it.
    let req = WorkRequest { id: "w9".into(), op: Operation::Open { unit: "u9".into(), fields: Default::default() } };
    assert!(w.b.work(req, &w.reply_tx));
    w.pump(|_| false);
    assert!(w.acks().iter().any(|(id, registered)| id == "w9" && *registered));
    // The demoted p121 refuses work, and says so to its caller (which stops reading).
    let req = WorkRequest { id: "w10".into(), op: Operation::Open { unit: "u10".into(), fields: Default::default() } };
    assert!(!w.a.work(req, &w.reply_tx));
    assert!(w.same_state());
}

#[test]
fn a_standby_whose_state_differs_at_the_same_seq_gets_everything() {
    let mut w = Wire::paired();
    // p122 registers a different update 1 than the one p121 applied: same seq, other state.
    w.open(1);
    let generation = w.b.status().replication.generation;
    let other =
        WorkRequest { id: "x".into(), op: Operation::Open { unit: "other".into(), fields: Default::default() } };
    w.pump(|m| matches!(m, LinkMsg::Update { .. }));
    let LinkAction::Registered(g, s) = w.b.on_link(LinkMsg::Update { generation, seq: 1, request: other }) else {
        panic!()
    };
    w.a.on_link(LinkMsg::Registered { generation: g, seq: s });
    assert!(!w.same_state());

    let got = switch_over(&mut w);
    // The chains differ: p121 asks for a resync and gets a full step-up of p122's state.
    assert!(got.iter().any(|m| matches!(m, LinkMsg::Continue { .. })), "{got:?}");
    assert!(got.iter().any(|m| matches!(m, LinkMsg::StepUp { generation: 2, .. })), "{got:?}");
    assert!(w.a.status().replication.synced);
    assert!(w.same_state());
}

/// Whether `agent` holds a new work request (it is about to be promoted).
fn holds(agent: &Agent, tx: &ReplyTx, id: &str) -> bool {
    let req = WorkRequest { id: id.into(), op: Operation::Open { unit: id.into(), fields: Default::default() } };
    matches!(agent.work_or_hold(req, tx), Served::Hold(_))
}

#[test]
fn mid_switchover_only_the_current_standby_about_to_be_promoted_holds_work() {
    let mut w = Wire::paired();
    // Steady pair: the standby sends clients to the active at once.
    assert!(!holds(&w.b, &w.reply_tx, "w1"));
    // p121 steps down (epoch 3): p122 (epoch 2, current) is next; p121 is the one to leave.
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    assert!(holds(&w.b, &w.reply_tx, "w2"));
    assert!(!holds(&w.a, &w.reply_tx, "w3"));
    // Fallback before any promotion: p122 is told standby again (epoch 4), p121 is next.
    w.b.set_role(Role::Standby, 4).unwrap();
    w.pump(|_| false);
    assert!(holds(&w.a, &w.reply_tx, "w4"));
    assert!(!holds(&w.b, &w.reply_tx, "w5"));
    // Promoted: served, not held.
    w.a.set_role(Role::Active, 5).unwrap();
    w.pump(|_| false);
    assert!(matches!(
        w.a.work_or_hold(WorkRequest { id: "w6".into(), op: Operation::Close { unit: "w6".into() } }, &w.reply_tx),
        Served::Yes
    ));
}

#[test]
fn a_standby_that_cannot_be_promoted_does_not_hold_work() {
    // Both standby, never stepped up by an active: neither is current, so neither may be promoted.
    let mut w = Wire::new();
    w.a.set_role(Role::Standby, 1).unwrap();
    w.b.set_role(Role::Standby, 2).unwrap();
    w.pump(|_| false);
    assert!(!holds(&w.a, &w.reply_tx, "w1"));
    assert!(!holds(&w.b, &w.reply_tx, "w2"));
}

#[test]
fn a_full_database_rejects_new_work_and_the_pair_goes_on() {
    let mut w = Wire::paired_with(Wire::with_db_capacity(3));
    for n in 1..=3 {
        w.open(n);
    }
    w.pump(|_| false);
    assert_eq!(w.acks().len(), 3);
    w.open(4);
    match w.replies.try_recv() {
        Ok(WorkReply::Rejected { id, reason }) => {
            assert!(id == "w4" && reason.contains("database is full"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(w.pump(|_| false).is_empty(), "nothing was replicated for it");
    // A retry is still answered from the de-duplication index.
    w.open(2);
    assert!(matches!(w.replies.try_recv(), Ok(WorkReply::Ack { duplicate: true, seq: 2, .. })));
    let ids = w.a.status().request_ids;
    assert_eq!(ids, Some(RequestIds { applied: 3, capacity: 3 }));
    assert!(w.same_state());
    // The standby, stepped up with the full database, is bounded too once active.
    switch_over(&mut w);
    let req = WorkRequest { id: "w5".into(), op: Operation::Open { unit: "u5".into(), fields: Default::default() } };
    assert!(w.b.work(req, &w.reply_tx));
    assert!(matches!(w.replies.try_recv(), Ok(WorkReply::Rejected { .. })));
    // Without a bound nothing says so.
    assert_eq!(Wire::paired().a.status().request_ids, None);
}

#[test]
fn an_active_that_meets_a_newer_active_refuses_what_the_new_one_lacks() {
    let mut w = Wire::paired();
    w.open(1);
    w.pump(|_| false);
    assert_eq!(w.acks(), [("w1".into(), true)]);
    // w2's update never reaches p122, which is then made active at a newer
    // epoch (by an orchestrator that took p121 for dead, say): p122 lacks w2.
    w.open(2);
    w.lose_to_b();
    w.b.set_role(Role::Active, 5).unwrap();
    // p122's hello reaches p121, which steps down and is stepped up by p122.
    w.pump(|_| false);
    assert_eq!(w.a.hello().role, Role::Standby);
    assert!(w.same_state());
    // Acked, w2 would be reported done while the active lacks it: it is
    // refused instead, and its client retries at p122.
    w.refused_only("w2");
}

#[test]
fn a_demoted_active_stepped_up_mid_flush_refuses_what_the_new_active_lacks() {
    let mut w = Wire::demoted_with_w1_in_flight();
    w.pump(|_| false);
    // p122, promoted without w1, steps p121 up with its own state (a second
    // orchestrator, or a demotion sent again while the first still flushes).
    w.b.set_role(Role::Active, 4).unwrap();
    w.pump(|_| false);
    assert!(w.same_state());
    w.refused_only("w1");
}

#[test]
fn a_demoted_active_whose_link_is_replaced_refuses_what_was_in_flight() {
    let mut w = Wire::demoted_with_w1_in_flight();
    // The peer redials (its reader timed out on a stalled p121) before the old connection's end is seen.
    w.a.link_up(unbounded_channel().0);
    w.refused_only("w1");
}

#[test]
fn a_demoted_active_confirmed_by_history_chain_acks_what_the_new_active_holds_as_registered() {
    let mut w = Wire::paired();
    w.open(1);
    // w1 reaches p122, its registration does not reach p121.
    while let Ok(m) = w.to_b.try_recv() {
        let _ = w.b.on_link(m);
    }
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    // p122 holds w1 at the same seq and chain: it continues p121's history.
    let to_a = switch_over_promoting_b(&mut w);
    assert!(to_a.iter().any(|m| matches!(m, LinkMsg::Continue { .. })), "{to_a:?}");
    assert_eq!(w.acks(), [("w1".into(), true)]);
}

/// Promote p122 (p121 already demoted) and deliver; what reached p121.
fn switch_over_promoting_b(w: &mut Wire) -> Vec<LinkMsg> {
    w.b.set_role(Role::Active, 4).unwrap();
    w.to_a_log.clear();
    w.pump(|_| false);
    std::mem::take(&mut w.to_a_log)
}

#[tokio::test]
async fn a_flush_ends_when_its_demoted_active_is_made_active_again_and_refuses_nothing() {
    let mut w = Wire::demoted_with_w1_in_flight();
    // The orchestrator makes it active again (a hand-back) while its flush still waits for w1.
    let promote = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.a.set_role(Role::Active, 5).unwrap();
    };
    let (flushed, ()) = tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(w.a.flush(), promote) })
        .await
        .expect("the flush went on waiting on an active processor");
    assert_eq!(flushed, Ok(()));
    // w1 is still the active's to register and ack: nobody was told "not active".
    assert!(w.replies.try_recv().is_err());
}

#[test]
fn a_promotion_holding_an_update_the_standby_lacks_is_refused_and_changes_nothing() {
    let mut w = Wire::paired();
    // p121 applies w1 but p122 never gets it: p122 is still synced (no gap seen), at seq 0.
    w.open(1);
    w.pump(|m| matches!(m, LinkMsg::Update { .. }));
    let (held, before) = (w.a.status().replication.seq, w.b.hello());
    assert_eq!(before.seq, Some(held - 1));
    assert_eq!(
        w.b.set_role_holding(Role::Active, 3, Some(held)),
        Err(RoleError::Lacking { seq: held - 1, holding: held })
    );
    assert_eq!(w.b.hello(), before, "a refused promotion changed the standby");
    // Holding no more than it applied, it is promoted.
    assert_eq!(w.b.set_role_holding(Role::Active, 4, Some(held - 1)), Ok((Role::Active, 4)));
}

/// p121 active with `n` units registered by p122, then p122 armed to take
/// over at epoch 4 once p121 is standby at epoch 3.
fn armed(n: u32) -> Wire {
    let mut w = Wire::paired();
    for i in 1..=n {
        w.open(i);
    }
    w.pump(|_| false);
    w.acks();
    w.b.arm_take_over(4, 3).unwrap();
    w
}

#[tokio::test]
async fn an_armed_standby_takes_over_as_its_peer_steps_down_with_no_host_command() {
    let mut w = armed(3);
    assert_eq!(w.b.hello().role, Role::Standby, "promoted before the peer stepped down");
    // A demotion at another epoch is not the one it was armed for.
    w.a.set_role(Role::Standby, 2).unwrap();
    w.pump(|_| false);
    assert_eq!(w.b.hello().role, Role::Standby, "promoted by a demotion it was not armed for");
    w.a.set_role(Role::Standby, 3).unwrap();
    w.to_a_log.clear();
    w.pump(|_| false);
    assert_eq!((w.b.hello().role, w.b.hello().epoch), (Role::Active, 4));
    assert_eq!(w.b.await_take_over(4, Duration::from_millis(10)).await, Ok(()));
    // It stepped its old active up by the history chain, once: no full step-up.
    let steps: Vec<_> =
        w.to_a_log.iter().filter(|m| matches!(m, LinkMsg::Continue { .. } | LinkMsg::StepUp { .. })).collect();
    assert!(matches!(&steps[..], [LinkMsg::Continue { seq: 3, .. }]), "{steps:?}");
    // And serves: work is acked once p121 registered it.
    let req = WorkRequest { id: "w9".into(), op: Operation::Open { unit: "u9".into(), fields: Default::default() } };
    assert!(w.b.work(req, &w.reply_tx));
    w.pump(|_| false);
    assert!(w.acks().iter().any(|(id, registered)| id == "w9" && *registered));
    assert!(w.same_state());
    // Asked again (a reply lost on the way): the same answer, nothing changes.
    assert_eq!(w.b.arm_take_over(4, 3), Ok(()));
    assert_eq!(w.b.await_take_over(4, Duration::from_millis(10)).await, Ok(()));
}

#[tokio::test]
async fn an_armed_standby_that_lacks_what_its_peer_applied_is_not_promoted() {
    let mut w = armed(1);
    // p121 applies w2, whose update never reaches p122 (which sees no gap: it is still synced).
    w.open(2);
    w.lose_to_b();
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    assert_eq!(w.b.hello().role, Role::Standby, "promoted without w2: it would step p121 up without it");
    let held = w.a.status().replication.seq;
    assert_eq!(
        w.b.await_take_over(4, Duration::from_millis(10)).await,
        Err(RoleError::Lacking { seq: held - 1, holding: held })
    );
}

#[tokio::test]
async fn a_take_over_whose_peer_never_steps_down_ends_disarmed_and_changes_nothing() {
    let mut w = armed(1);
    let before = w.b.hello();
    let r = w.b.await_take_over(4, Duration::from_millis(20)).await;
    assert!(matches!(r, Err(RoleError::NotTakenOver(ref why)) if why.contains("did not step down")), "{r:?}");
    // Disarmed: the peer stepping down later promotes nobody.
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    assert_eq!((w.b.hello().role, w.b.hello().epoch), (Role::Standby, before.epoch));
}

#[tokio::test]
async fn a_newer_role_command_supersedes_an_armed_take_over() {
    let mut w = armed(1);
    w.b.set_role(Role::OutOfService, 5).unwrap();
    let r = w.b.await_take_over(4, Duration::from_millis(10)).await;
    assert!(matches!(r, Err(RoleError::NotTakenOver(ref why)) if why.contains("newer role command")), "{r:?}");
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    assert_eq!(w.b.hello().role, Role::OutOfService);
}

#[tokio::test]
async fn a_take_over_armed_after_the_peer_stepped_down_happens_at_once() {
    let mut w = Wire::paired();
    w.open(1);
    w.pump(|_| false);
    w.a.set_role(Role::Standby, 3).unwrap();
    w.pump(|_| false);
    // Its hello came before the host's command: the arming itself promotes.
    assert_eq!(w.b.arm_take_over(4, 3), Ok(()));
    assert_eq!((w.b.hello().role, w.b.hello().epoch), (Role::Active, 4));
    assert_eq!(w.b.await_take_over(4, Duration::from_millis(10)).await, Ok(()));
    // Neither a stale epoch nor a processor that is not a current standby can be armed.
    assert!(matches!(w.a.arm_take_over(3, 4), Err(RoleError::StaleEpoch { .. })));
    assert_eq!(w.b.arm_take_over(6, 5), Err(RoleError::NotCurrent), "an active armed");
}

#[tokio::test]
async fn a_demoted_active_tells_its_clients_at_once_and_keeps_no_closed_connection() {
    let mut w = Wire::paired();
    let (tx, mut rx) = unbounded_channel();
    w.a.add_client(&tx);
    w.open(1);
    w.pump(|_| false);
    assert!(rx.try_recv().is_err(), "told something while active");
    w.a.set_role(Role::Standby, 3).unwrap();
    // Before any request of its is refused: a "not active" with no request id.
    match rx.try_recv() {
        Ok(WorkReply::NotActive { id, role: Role::Standby, active: None }) => assert!(id.is_empty(), "{id}"),
        other => panic!("{other:?}"),
    }
    assert!(rx.try_recv().is_err(), "told twice");
    // A standby told to stay standby (or go out of service) has no news for anyone.
    let (tx2, mut rx2) = unbounded_channel();
    w.a.add_client(&tx2);
    w.a.set_role(Role::OutOfService, 4).unwrap();
    assert!(rx2.try_recv().is_err());
    // The agent holds no connection open: its writer ends with the client's reader.
    drop((tx, tx2));
    let ended = async { rx.recv().await.is_none() && rx2.recv().await.is_none() };
    assert!(tokio::time::timeout(Duration::from_secs(1), ended).await.unwrap_or(false), "a connection kept open");
}

#[test]
fn an_armed_standby_holds_work_before_its_peer_steps_down() {
    let w = armed(1);
    // A client told by the stepping-down active may come before its hello does.
    assert!(holds(&w.b, &w.reply_tx, "w9"));
    assert!(!holds(&w.a, &w.reply_tx, "w10"), "the active held work");
}
