//! Waits on the agents' state, on the simulated pair (real agents in-process).
#![allow(clippy::unwrap_used)]

use crate::events::Events;
use crate::machine::{LinkDir, Machines};
use crate::pair::ProcId;
use crate::procedure::test_pair::simulated;
use hitless_protocol::Role;
use std::time::Duration;

/// A role command that changes no role still makes the standby announce
/// itself, and its active steps it up anew: the wait for a current standby
/// must wait for that step-up, not end on the previous one's registration
/// (repair's closing health check once found the second step-up in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_current_standby_waits_for_the_step_up_its_last_hello_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tb = simulated(&tmp, Events::new()).await;
    let (active, standby) = (ProcId::FIRST, ProcId::SECOND);
    tb.set_role(active, Role::Active).await.unwrap();
    tb.make_standby(standby).await.unwrap();
    let before = tb.agents().status(active).await.unwrap().replication.generation;

    // Hold what reaches the active (for less than the registration bound, so
    // the standby still counts as heard from), then re-send the standby's role.
    tb.machines().set_link(active, LinkDir::In, false).await.unwrap();
    tb.set_role(standby, Role::Standby).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(250), tb.agents().wait_standby_current(standby)).await;
    tb.machines().set_link(active, LinkDir::In, true).await.unwrap();
    assert!(early.is_err(), "the wait ended before the active heard the standby's new hello: {early:?}");

    tb.agents().wait_standby_current(standby).await.unwrap();
    let (s, a) = (tb.agents().status(standby).await.unwrap(), tb.agents().status(active).await.unwrap());
    assert!(a.replication.generation > before, "the active did not step the standby up again");
    assert_eq!(s.replication.generation, a.replication.generation, "the standby holds an older step-up");
    assert_eq!(a.replication.standby_current(), Ok(()));
}
