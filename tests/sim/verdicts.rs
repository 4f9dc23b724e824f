//! Verdicts that can fail, on the simulated pair: one orchestrator per pair,
//! fresh work in every run, an evaluation that sees its standby, the checks
//! before anything leaves service, a way back from a dead processor, and a
//! short pause that does not cost the upgrade. Each test feeds the broken
//! case the defect came from and sees the verdict fail, or the tool refuse.
#![allow(clippy::unwrap_used)]

use hitless::error::{EnvironmentError, Error};
use hitless::events::{Event, Events};
use hitless::health::{self, Problem};
use hitless::history::{History, Kind, Record};
use hitless::invariants;
use hitless::pair::ProcId;
use hitless::procedure::{self, End, Options, Step};
use hitless::testbed::{self, Access, Testbed};
use hitless::workload::Workload;
use hitless_protocol::{Role, FEATURE_PRIORITY};
use hitless_tests::{assert_invariants, roles_and_versions, sim, sim_with};
use std::sync::Mutex;
use std::time::Duration;

const P121: ProcId = ProcId::FIRST;
const P122: ProcId = ProcId::SECOND;

fn opts() -> Options {
    Options { resume: false, workload: true }
}

/// Run `f` (once) on a plain thread when the first event matching `when` is emitted.
fn on_event(tb: &Testbed, when: impl Fn(&Event) -> bool + Send + Sync + 'static, f: impl FnOnce() + Send + 'static) {
    let f = Mutex::new(Some(f));
    tb.events().subscribe(move |e| {
        if when(&e.event) {
            if let Some(f) = f.lock().unwrap().take() {
                std::thread::spawn(f);
            }
        }
    });
}

// 1. One orchestrator per pair.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_command_on_a_held_pair_is_refused_at_once_and_looking_never_blocks() {
    let s = sim().await;
    let run = s.tb.run().clone();
    for refused in [
        testbed::down(&run, &Events::new()).err(),
        Testbed::attach(run.clone(), Events::new(), Access::Change("hitless upgrade")).err(),
    ] {
        let e = refused.expect("a second command got the pair");
        assert!(matches!(e, Error::Environment(EnvironmentError::Busy { .. })), "{e}");
        assert_eq!(e.exit_code(), 3);
        let text = e.to_string();
        assert!(text.starts_with("the pair is busy: `hitless simulate` (pid "), "{text}");
    }
    assert!(run.state_file().exists(), "a refused down removed the run directory");
    // Looking does not take the lock (this pair lives in-process, so it says that instead of blocking).
    let looked = Testbed::attach(run, Events::new(), Access::Observe).err().unwrap();
    assert!(matches!(looked, Error::Environment(EnvironmentError::SimulatedElsewhere(_))), "{looked}");
    // And an agent obeys only a newer epoch: a stale orchestrator's command is refused.
    let stale = s.tb.agents().set_role(P122, Role::Active, s.tb.epoch(), None).await.err().unwrap().to_string();
    assert!(stale.contains("stale command"), "{stale}");
}

// 2. Fresh work in every run.

async fn workload_for(tb: &Testbed, run_id: &str) -> History {
    let w = Workload::start(tb.agents().targets(), "p121".into(), run_id, None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    w.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_workload_reusing_request_ids_is_caught_and_fresh_ids_pass() {
    let s = sim().await;
    let first = workload_for(&s.tb, "r1").await;
    // The defect: every run's ids started at w0, and the active answered them from
    // its de-duplication index without applying anything.
    let reused = workload_for(&s.tb, "r1").await;
    let fresh = workload_for(&s.tb, "r2").await;
    let (_, units) = s.tb.agents().dump(P121).await.unwrap();
    assert!(invariants::no_lost_or_double(&first, &units).ok);
    let v = invariants::no_lost_or_double(&reused, &units);
    assert!(!v.ok, "a run whose acks all came from another run's work passed: {}", v.detail);
    assert!(v.detail.contains("sent only once") && v.detail.contains("r1-w0"), "{}", v.detail);
    let v = invariants::no_lost_or_double(&fresh, &units);
    assert!(v.ok && fresh.acked().len() > 20, "{}", v.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runs_history_is_checked_with_its_resume() {
    let mut s = sim().await;
    let tb = &mut s.tb;
    // The first run is cut short as step 205 begins (a killed orchestrator).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    tb.events().subscribe(move |e| {
        if matches!(e.event, Event::StepBegin { step: Step::ReloadOther, .. }) {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    tokio::select! {
        _ = procedure::upgrade(tb, "2.0.0", opts()) => panic!("the upgrade ended before 205"),
        _ = rx => {}
    }
    let j = procedure::read_journal(tb.run()).unwrap();
    let killed = History::read(&tb.run().history(&j.runs[0])).unwrap();
    assert!(killed.acked().len() > 10, "the killed run's history was not written as it went");

    // Its acks are checked by the resumed run: one it claims that the pair never applied fails the verdict.
    let mut forged = killed.clone();
    let lost = Record {
        seq: Some(1),
        registered: Some(true),
        ..Record::new(1, Kind::Ack, format!("{}-w999999", j.runs[0]), "p121")
    };
    forged.records.push(lost);
    let text: String = forged.records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(tb.run().history(&j.runs[0]), text).unwrap();
    let r = procedure::upgrade(tb, "2.0.0", Options { resume: true, workload: true }).await.unwrap();
    assert_eq!(r.end, End::Completed, "{}", r.message);
    let v = r.invariants.iter().find(|v| v.name == "no-acked-work-lost-or-applied-twice").unwrap();
    assert!(!v.ok && v.detail.contains("w999999"), "the killed run's history was not checked: {}", v.detail);
    let j = procedure::read_journal(tb.run()).unwrap();
    assert_eq!(j.runs.len(), 2, "{:?}", j.runs);
}

// 3. An evaluation that sees its standby.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_with_the_link_cut_is_not_acceptable() {
    let mut s = sim_with(|c| c.evaluation_ms = 1500).await;
    let pair = s.tb.simulated_pair().unwrap();
    // The link is cut 0.3 s after p122 is promoted at 204, for 2 s.
    on_event(
        &s.tb,
        |e| matches!(e, Event::Role { processor, role: Role::Active, .. } if processor == "p122"),
        move || {
            std::thread::sleep(Duration::from_millis(300));
            pair.link(P122, false);
            std::thread::sleep(Duration::from_secs(2));
            pair.link(P122, true);
        },
    );
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts()).await.unwrap();
    assert_eq!(r.end, End::RolledBack, "a window without a registering standby was acceptable: {}", r.message);
    let m = &r.message;
    assert!(
        m.contains("rolled back at step 204")
            && (m.contains("simplex") || m.contains("register") || m.contains("silent")),
        "{m}"
    );
    assert_invariants(&r);
    let mut want =
        vec![("p121".to_string(), Role::Active, "1.0.0".to_string()), ("p122".into(), Role::Standby, "1.0.0".into())];
    want.sort();
    assert_eq!(roles_and_versions(&s.tb).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_processor_leaves_service_while_the_active_does_not_see_its_standby() {
    let mut s = sim().await;
    let pair = s.tb.simulated_pair().unwrap();
    let fired = Mutex::new(false);
    // The link has been down 0.7 s when step 205 begins (the sink runs inside the
    // orchestrator, so it waits), and stays down 2 s in all.
    s.tb.events().subscribe(move |e| {
        if matches!(e.event, Event::StepBegin { step: Step::ReloadOther, .. })
            && !std::mem::replace(&mut *fired.lock().unwrap(), true)
        {
            pair.link(P122, false);
            std::thread::sleep(Duration::from_millis(700));
            let pair = pair.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1300));
                pair.link(P122, true);
            });
        }
    });
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts()).await.unwrap();
    assert_eq!(r.end, End::Completed, "{}", r.message);
    assert_invariants(&r);
    // p121 left service only after the link was back and p122 saw it current again.
    let entries = s.tb.events().entries();
    let at = |f: &dyn Fn(&Event) -> bool| entries.iter().find(|e| f(&e.event)).map(|e| e.at_ms).unwrap();
    let begun = at(&|e| matches!(e, Event::StepBegin { step: Step::ReloadOther, .. }));
    let isolated = at(&|e| matches!(e, Event::Role { processor, role: Role::OutOfService, .. } if processor == "p121"));
    assert!(
        isolated >= begun + 1300,
        "p121 was taken out of service {} ms into 205, with the link still cut",
        isolated - begun
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluation_cut_short_is_no_verdict() {
    let mut s = sim().await;
    let tb = &mut s.tb;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    tb.events().subscribe(move |e| {
        if matches!(e.event, Event::StepBegin { step: Step::SwitchOverAndEvaluate, .. }) {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    tokio::select! {
        _ = procedure::upgrade(tb, "2.0.0", opts()) => panic!("the upgrade ended before 204"),
        _ = rx => {}
    }
    let r = procedure::upgrade(tb, "2.0.0", Options { resume: true, workload: true }).await.unwrap();
    assert_eq!(r.end, End::RolledBack);
    assert!(r.message.contains("evaluation at step 204 was cut short"), "{}", r.message);
    assert!(!r.message.contains("not acceptable"), "{}", r.message);
}

// 5. A dead processor and a way back.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_active_is_named_and_repair_brings_the_pair_back() {
    let mut s = sim().await;
    s.tb.simulated_pair().unwrap().crash(P121);
    let problems = health::assess(&s.tb.status().await);
    assert_eq!(problems, vec![Problem::Down("p121".into()), Problem::LinkDown("p122".into()), Problem::NoActive]);
    // An upgrade on it stops at 200, naming what is wrong and what to do.
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts()).await.unwrap();
    assert_eq!(r.end, End::Failed);
    assert!(r.message.contains("p121 is down") && r.message.contains("hitless repair"), "{}", r.message);

    let done = procedure::repair(&mut s.tb).await.unwrap();
    assert!(done.actions.iter().any(|a| a.starts_with("promoted p122")), "{:?}", done.actions);
    assert!(done.actions.iter().any(|a| a.starts_with("reloaded p121 with 1.0.0")), "{:?}", done.actions);
    assert_eq!(health::assess(&s.tb.status().await), vec![]);
    let roles: Vec<Role> = roles_and_versions(&s.tb).await.iter().map(|v| v.1).collect();
    assert_eq!(roles, [Role::Standby, Role::Active]);
    // And the repaired pair upgrades.
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts()).await.unwrap();
    assert_eq!(r.end, End::Completed, "{}", r.message);
    assert_invariants(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_standby_after_an_upgrade_is_reloaded_with_the_new_version_and_its_features() {
    let mut s = sim().await;
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts()).await.unwrap();
    assert_eq!(r.end, End::Completed);
    let standby = s.tb.active().await.unwrap().other();
    s.tb.simulated_pair().unwrap().crash(standby);
    // Rollback is refused (207 passed): repair is the way back.
    assert!(procedure::rollback(&mut s.tb).await.is_err());
    procedure::repair(&mut s.tb).await.unwrap();
    assert_eq!(health::assess(&s.tb.status().await), vec![]);
    let st = s.tb.agents().status(standby).await.unwrap();
    assert_eq!((st.hello.role, st.hello.version.as_str()), (Role::Standby, "2.0.0"));
    assert!(st.hello.enabled.contains(FEATURE_PRIORITY), "{:?}", st.hello.enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_down_repair_says_nothing_holds_the_run_state() {
    let mut s = sim().await;
    let pair = s.tb.simulated_pair().unwrap();
    pair.crash(P121);
    pair.crash(P122);
    let e = procedure::repair(&mut s.tb).await.err().unwrap().to_string();
    assert!(e.contains("nothing holds the run-state") && e.contains("p121 is down, p122 is down"), "{e}");
    assert!(e.contains("hitless down") && e.contains("hitless up"), "{e}");
}

// 6. A short pause does not cost the upgrade.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_pause_of_the_standby_during_its_step_up_does_not_fail_the_step() {
    let mut s = sim().await;
    let pair = s.tb.simulated_pair().unwrap();
    on_event(
        &s.tb,
        |e| matches!(e, Event::Role { processor, role: Role::Standby, .. } if processor == "p122"),
        move || {
            pair.hold(P122, true);
            std::thread::sleep(Duration::from_secs(3));
            pair.hold(P122, false);
        },
    );
    let t = std::time::Instant::now();
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts()).await.unwrap();
    if r.end != End::Completed {
        let j = procedure::read_journal(s.tb.run()).unwrap();
        let h = History::read(&s.tb.run().history(&j.runs[0])).unwrap();
        for rec in h.records.iter().filter(|r| r.kind == Kind::Rejected) {
            eprintln!("REJECTED {rec:?}");
            for other in h.records.iter().filter(|o| o.id == rec.id) {
                eprintln!("   {other:?}");
            }
        }
        for e in s.tb.events().entries() {
            eprintln!("{}", hitless::events::render(&e));
        }
    }
    assert_eq!(r.end, End::Completed, "{}", r.message);
    assert_invariants(&r);
    assert!(t.elapsed() < Duration::from_secs(25), "a 3 s pause cost {:?}", t.elapsed());
    // While it was paused, the step said "unreachable", never "down": its machine ran.
    let said_down = s.tb.events().entries().iter().any(|e| {
        matches!(&e.event, Event::StepDone { pair, .. } if pair.iter().any(|v| v.processor == "p122" && v.role == hitless::events::Seen::Down))
    });
    assert!(!said_down, "a paused processor was called down");
}
