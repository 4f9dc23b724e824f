//! Unplanned failover on the simulated pair: the active is lost during a
//! step, the running orchestrator confirms it, fences it, and promotes the
//! standby with a new epoch only if that standby was current. Before 207
//! the pair is rebuilt on the old version; at 207 the run stops and `repair`
//! then `--resume` finish; in the simplex window the loss is reported, naming it.
#![allow(clippy::unwrap_used)]

use hitless::events::Event;
use hitless::machine::Machines;
use hitless::pair::ProcId;
use hitless::procedure::{self, End, Options, Step};
use hitless::testbed::Testbed;
use hitless_protocol::{ControlRequest, Role};
use hitless_tests::{assert_invariants, roles_and_versions, sim};
use std::sync::Mutex;
use std::time::Duration;

/// Run an upgrade; as `step` begins, kill the active's machine (or crash its agent).
async fn upgrade_with(tb: &mut Testbed, step: Step, kill_active: bool) -> procedure::Report {
    let sim = tb.simulated_pair().unwrap();
    let agents = tb.agents().clone();
    let fired = Mutex::new(false);
    tb.events().subscribe(move |e| {
        if !matches!(e.event, Event::StepBegin { step: s, .. } if s == step)
            || std::mem::replace(&mut *fired.lock().unwrap(), true)
        {
            return;
        }
        let (sim, agents) = (sim.clone(), agents.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let active = rt.block_on(agents.active()).unwrap();
            if kill_active {
                sim.crash(active);
            } else {
                rt.block_on(agents.request(active, &ControlRequest::Crash, Duration::from_secs(2))).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while sim.agent_gone(active).is_none() {
                    assert!(std::time::Instant::now() < deadline, "the agent did not crash");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .join()
        .unwrap();
    });
    procedure::upgrade(tb, "2.0.0", Options { resume: false, workload: true }).await.unwrap()
}

fn failover_of(tb: &Testbed) -> Option<(String, String, u64)> {
    tb.events().entries().into_iter().find_map(|e| match e.event {
        Event::Failover { from, to, took_ms } => Some((from, to, took_ms)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_active_killed_during_the_evaluation_is_replaced_and_the_pair_rolled_back() {
    // Killed 150 ms after p122 is promoted at 204: p121, its current standby, takes over.
    let mut s = sim().await;
    let sim_pair = s.tb.simulated_pair().unwrap();
    let fired = Mutex::new(false);
    s.tb.events().subscribe(move |e| {
        if matches!(&e.event, Event::Role { processor, role: Role::Active, .. } if processor == "p122")
            && !std::mem::replace(&mut *fired.lock().unwrap(), true)
        {
            let sim_pair = sim_pair.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                sim_pair.crash(ProcId::SECOND);
            });
        }
    });
    let r = procedure::upgrade(&mut s.tb, "2.0.0", Options { resume: false, workload: true }).await.unwrap();
    assert_eq!(r.end, End::RolledBack, "{}", r.message);
    assert_invariants(&r);
    let (from, to, took_ms) = failover_of(&s.tb).expect("no failover");
    assert_eq!((from.as_str(), to.as_str()), ("p122", "p121"));
    assert!(took_ms < 1000, "failover took {took_ms} ms");
    assert!(r.message.contains("p122 was lost") && r.message.contains("p121 took over"), "{}", r.message);
    let mut want =
        vec![("p121".to_string(), Role::Active, "1.0.0".to_string()), ("p122".into(), Role::Standby, "1.0.0".into())];
    want.sort();
    assert_eq!(roles_and_versions(&s.tb).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_lost_at_207_is_replaced_by_its_current_standby_and_repair_then_resume_finish() {
    let mut s = sim().await;
    let r = upgrade_with(&mut s.tb, Step::EnableFeatures, true).await;
    assert_eq!(r.end, End::Failed, "{}", r.message);
    assert!(r.message.contains("step 207") && r.message.contains("took over"), "{}", r.message);
    // Its synced standby held everything: nothing acked was lost, nobody was active twice.
    for name in ["no-acked-work-lost-or-applied-twice", "never-two-actives"] {
        let v = r.invariants.iter().find(|v| v.name == name).unwrap();
        assert!(v.ok, "{name}: {}", v.detail);
    }
    assert!(failover_of(&s.tb).is_some());
    procedure::repair(&mut s.tb).await.unwrap();
    let r = procedure::upgrade(&mut s.tb, "2.0.0", Options { resume: true, workload: true }).await.unwrap();
    assert_eq!(r.end, End::Completed, "{}", r.message);
    assert_invariants(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_crash_in_the_active_is_a_loss_too() {
    let mut s = sim().await;
    let r = upgrade_with(&mut s.tb, Step::EnableFeatures, false).await;
    assert_eq!(r.end, End::Failed, "{}", r.message);
    assert!(r.message.contains("agent exited"), "{}", r.message);
    let v = r.invariants.iter().find(|v| v.name == "no-acked-work-lost-or-applied-twice").unwrap();
    assert!(v.ok, "{}", v.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_lost_in_the_simplex_window_loses_work_and_the_verdict_says_where() {
    let mut s = sim().await;
    let r = upgrade_with(&mut s.tb, Step::StandbyOnNew, true).await;
    assert_eq!(r.end, End::Failed, "{}", r.message);
    assert!(
        r.message.contains("was not a current standby") && r.message.contains("acked alone is gone"),
        "{}",
        r.message
    );
    assert!(failover_of(&s.tb).is_none(), "a standby that was not current was promoted");
    let v = r.invariants.iter().find(|v| v.name == "no-acked-work-lost-or-applied-twice").unwrap();
    assert!(!v.ok, "work acked by the active alone survived its loss? {}", v.detail);
    assert!(v.detail.contains("while the active ran simplex") && v.detail.contains("at step 20"), "{}", v.detail);
    assert!(!v.offenders.is_empty());
}
