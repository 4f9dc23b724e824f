//! Repair choosing whom to promote, on the simulated pair (real agents in-process).
#![allow(clippy::unwrap_used)]

use super::repair;
use crate::events::Events;
use crate::machine::{LinkDir, Machines};
use crate::pair::ProcId;
use crate::procedure::test_pair::{ack_alone, seq, simulated};
use hitless_protocol::Role;

/// Both processors standby, both holding a state: the one that applied more
/// is promoted, whatever the config's order. Here the second one ran alone,
/// acked work the first never got, and was demoted (a switchover cut short
/// between its two commands); promoting the first would step the second up
/// with a state lacking that work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_current_standbys_the_one_holding_more_updates_is_promoted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tb = simulated(&tmp, Events::new()).await;
    let (first, second) = (ProcId::FIRST, ProcId::SECOND);
    tb.set_role(first, Role::Standby).await.unwrap();
    tb.set_role(second, Role::Active).await.unwrap();
    tb.wait_standby_current(first).await.unwrap();
    let acked = ack_alone(&tb, second).await;
    tb.set_role(second, Role::Standby).await.unwrap();
    tb.machines().set_link(second, LinkDir::Both, true).await.unwrap();
    assert!(seq(&tb, first).await < acked);
    assert!(tb.agents().status(first).await.unwrap().replication.synced, "the first is no longer a current standby");

    repair(&mut tb).await.unwrap();
    let s = tb.agents().status(second).await.unwrap();
    assert_eq!(s.hello.role, Role::Active, "the processor holding more updates was not promoted");
    assert!(s.replication.seq >= acked, "the active holds updates up to {}, {acked} were acked", s.replication.seq);
}
