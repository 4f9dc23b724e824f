//! The switchover against an active that acked work alone after the
//! currency check, on the simulated pair (real agents in-process).
#![allow(clippy::unwrap_used)]

use super::super::journal::plan;
use super::super::run::Run;
use super::super::table::Step;
use super::super::test_pair::{ack_alone, simulated};
use crate::events::Events;
use crate::machine::LinkDir;
use crate::pair::ProcId;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_that_acked_work_alone_after_the_currency_check_hands_it_over_before_the_promotion() {
    let (_tmp, events, mut tb) = pair().await;
    let (old, new) = (ProcId::FIRST, ProcId::SECOND);
    let pair = tb.simulated_pair().unwrap();
    // The link is cut: past its timeout the active runs alone and acks work its standby never gets.
    let acked = ack_alone(&tb, old).await;

    // Paused as the switchover begins, it cannot be asked whether its standby is
    // current; it is demoted once resumed, the link still cut, with nothing in flight.
    pair.hold(old, true);
    let undo = pair.clone();
    let faults = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        undo.hold(old, false);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        undo.link_dir(old, LinkDir::Both, true);
    });
    switch_over(&mut tb, old, new).await;
    faults.await.unwrap();

    // The old active was made active again to hand its work over ...
    assert!(progress_says(&events, "is made active again"), "the switchover did not hand the work back");
    // The new one could not take over by itself (the link was cut): promoted by command, and said so.
    assert!(progress_says(&events, "did not take over"), "no word of the take-over's failure");
    // ... and, promoted, the new active holds everything the old one acked.
    let s = tb.agents().status(new).await.unwrap();
    assert_eq!(s.hello.role, hitless_protocol::Role::Active);
    assert!(s.replication.seq >= acked, "the new active holds updates up to {}, {acked} were acked", s.replication.seq);
}

/// A simulated pair up on 1.0.0, its events, and the directory it lives in.
async fn pair() -> (tempfile::TempDir, Events, crate::testbed::Testbed) {
    let tmp = tempfile::tempdir().unwrap();
    let events = Events::new();
    let tb = simulated(&tmp, events.clone()).await;
    (tmp, events, tb)
}

/// Step 204's switchover from `old` to `new`, in an upgrade to 2.0.0.
async fn switch_over(tb: &mut crate::testbed::Testbed, old: ProcId, new: ProcId) {
    let plan = plan(tb, "2.0.0").await.unwrap();
    let mut run = Run::start(tb, plan, false, None, None, Vec::new()).unwrap();
    run.switch_over(old, new, Step::SwitchOverAndEvaluate).await.unwrap();
}

fn progress_says(events: &Events, text: &str) -> bool {
    events
        .entries()
        .into_iter()
        .any(|e| matches!(e.event, crate::events::Event::Progress { ref message } if message.contains(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_standby_takes_over_as_the_active_steps_down() {
    let (_tmp, events, mut tb) = pair().await;
    let (old, new) = (ProcId::FIRST, ProcId::SECOND);
    switch_over(&mut tb, old, new).await;
    // No promotion by command: the new active took over as it heard the old one step down.
    assert!(!progress_says(&events, "did not take over"), "{:#?}", events.entries());
    let roles: Vec<_> = events
        .entries()
        .into_iter()
        .filter_map(|e| match e.event {
            crate::events::Event::Role { processor, role, epoch } => Some((processor, role, epoch)),
            _ => None,
        })
        .collect();
    let last_two = &roles[roles.len() - 2..];
    assert_eq!(last_two[0].0, tb.name(old));
    assert_eq!(last_two[0].1, hitless_protocol::Role::Standby);
    assert_eq!((last_two[1].0.as_str(), last_two[1].1), (tb.name(new), hitless_protocol::Role::Active));
    assert_eq!(last_two[1].2, last_two[0].2 + 1, "the take-over's epoch follows the demotion's");
    let s = tb.agents().status(new).await.unwrap();
    assert_eq!(s.hello.role, hitless_protocol::Role::Active);
    tb.wait_standby_current(old).await.unwrap();
}
