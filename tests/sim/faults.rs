//! The simulated backend's fault operations, which the procedure's fault
//! tests and scenarios build on: a paused processor answers nothing until
//! resumed, a cut link leaves the active simplex until it heals, a killed
//! processor is gone. Each is observed through the agents, as on QEMU.
#![allow(clippy::unwrap_used)]

use hitless::machine::{LinkDir, Machines};
use hitless::pair::ProcId;
use hitless::testbed::Testbed;
use hitless_tests::sim;
use std::time::{Duration, Instant};

const ACTIVE: ProcId = ProcId::FIRST;
const STANDBY: ProcId = ProcId::SECOND;

/// Wait up to 5 s for `cond` on the active's replication state.
async fn until_active(tb: &Testbed, what: &str, cond: impl Fn(&hitless_protocol::Replication) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tb.agents().status(ACTIVE).await.is_ok_and(|s| cond(&s.replication)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for the active to be {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_processor_answers_nothing_until_resumed() {
    let s = sim().await;
    let m = s.tb.machines();
    m.pause(STANDBY).await.unwrap();
    assert!(m.alive(STANDBY), "a paused machine still exists");
    assert_eq!(m.run_state(STANDBY).await.as_deref(), Some("paused"));
    let asked = s.tb.agents().hello(STANDBY, Duration::from_millis(300)).await;
    assert!(asked.is_err(), "a paused processor answered: {asked:?}");
    // Its active stops hearing it over the link and runs simplex.
    until_active(&s.tb, "simplex", |r| r.simplex).await;
    m.resume(STANDBY).await.unwrap();
    assert!(s.tb.agents().hello(STANDBY, Duration::from_secs(2)).await.is_ok());
    until_active(&s.tb, "registering again", |r| !r.simplex && r.registered.is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_leaves_the_active_simplex_until_it_heals() {
    let s = sim().await;
    let m = s.tb.machines();
    m.set_link(ACTIVE, LinkDir::Both, false).await.unwrap();
    until_active(&s.tb, "simplex", |r| r.simplex).await;
    // The host still reaches both: only the link between them is cut.
    assert!(s.tb.agents().status(STANDBY).await.is_ok());
    m.set_link(ACTIVE, LinkDir::Both, true).await.unwrap();
    until_active(&s.tb, "registering again", |r| !r.simplex && r.registered.is_some()).await;
    s.tb.agents().wait_standby_current(STANDBY).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_processor_is_gone() {
    let s = sim().await;
    let m = s.tb.machines();
    m.kill(STANDBY).await;
    assert!(!m.alive(STANDBY));
    assert_eq!(m.run_state(STANDBY).await, None);
    assert!(s.tb.agents().status(STANDBY).await.is_err());
    until_active(&s.tb, "simplex", |r| r.simplex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_leaves_its_machine_up_and_is_not_dialled_again() {
    use hitless::machine::Reach;
    use hitless_protocol::ControlRequest;
    let s = sim().await;
    s.tb.agents().request(STANDBY, &ControlRequest::Crash, Duration::from_secs(2)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.tb.machines().reach(STANDBY) != Reach::AgentGone {
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.tb.machines().alive(STANDBY), "the machine went down with its application");
    assert!(s.tb.machines().agent_gone(STANDBY).is_some_and(|why| why.contains("Crashed")));
    // Nothing to dial and nothing to retry: the refusal is immediate.
    let t = Instant::now();
    let e = s.tb.agents().status(STANDBY).await.err().unwrap().to_string();
    assert!(t.elapsed() < Duration::from_millis(200) && e.contains("agent unreachable"), "{e} after {:?}", t.elapsed());
    until_active(&s.tb, "simplex", |r| r.simplex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_agent_refuses_to_exec_and_still_serves() {
    let s = sim().await;
    let argv = vec!["touch".to_string(), "/tmp/hitless-exec-must-not-run".to_string()];
    let e = s.tb.agents().exec(ACTIVE, argv, Duration::from_secs(5), |_, _| {}).await.err().unwrap().to_string();
    assert!(e.contains("simulated pair") && e.contains("no guest"), "{e}");
    assert!(!std::path::Path::new("/tmp/hitless-exec-must-not-run").exists(), "ran on the host");
    assert!(s.tb.agents().status(ACTIVE).await.is_ok());
}
