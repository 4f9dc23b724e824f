//! The procedure against the simulated pair (real agents in this process,
//! no VMs): every transition of the table, taken for real. Each step is made
//! to fail by a fault injected when it begins; each step is cut short (as if
//! the orchestrator were killed) and the upgrade resumed from the journal.
//! About a second per upgrade, so every path is covered on every change.
#![allow(clippy::unwrap_used)]

use hitless::events::Event;
use hitless::pair::ProcId;
use hitless::procedure::{self, next, End, Options, Outcome, Step};
use hitless::testbed::Testbed;
use hitless_protocol::{ControlRequest, Role, FEATURE_PRIORITY};
use hitless_tests::{assert_invariants, condensed, roles_and_versions, sim, sim_with};
use std::sync::Mutex;

fn opts(resume: bool) -> Options {
    Options { resume, workload: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_walks_200_to_207() {
    let mut s = sim().await;
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts(false)).await.unwrap();
    insta::assert_snapshot!("simulated_happy_path", condensed(&s.tb.events().entries()));
    assert_eq!(r.end, End::Completed, "{}", r.message);
    assert_invariants(&r);
    assert!(r.acked > 20, "{}", r.acked);
    for p in ProcId::BOTH {
        assert!(s.tb.agents().status(p).await.unwrap().hello.enabled.contains(FEATURE_PRIORITY));
    }
    let err = procedure::rollback(&mut s.tb).await.err().unwrap().to_string();
    assert!(err.contains("point of no return"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_acceptable_falls_back_and_so_does_a_crash() {
    // The crash is seen by the watch over the active (a loss, and a failover), or as a failed evaluation.
    let crashed: &[&str] = &["was lost", "evaluation request failed", "crashed"];
    for (to, why) in [("2.0.0-bad-eval", &["self-test failed"][..]), ("2.0.0-crash", crashed)] {
        // The crashing build exits 800 ms after becoming active: evaluate past that.
        let mut s = sim_with(|c| c.evaluation_ms = 1200).await;
        let r = procedure::upgrade(&mut s.tb, to, opts(false)).await.unwrap();
        assert_eq!(r.end, End::RolledBack, "{to}: {}", r.message);
        assert!(r.message.starts_with("upgrade rolled back at step 204: "), "{}", r.message);
        assert!(why.iter().any(|w| r.message.contains(w)), "{to}: {}", r.message);
        assert_invariants(&r);
        let want = vec![
            ("p121".to_string(), Role::Active, "1.0.0".to_string()),
            ("p122".into(), Role::Standby, "1.0.0".into()),
        ];
        assert_eq!(roles_and_versions(&s.tb).await, want, "{to}");
    }
}

/// What each step's fault is: a processor stopped, a boot that fails, or a
/// role command from someone else at a newer epoch (which ours then loses to).
#[derive(Debug, Clone, Copy)]
enum Fault {
    Stop(ProcId),
    FailStart(ProcId),
    RogueStandby(ProcId),
}

fn inject(tb: &Testbed, step: Step, fault: Fault) {
    let sim = tb.simulated_pair().unwrap();
    let rogue = match fault {
        Fault::RogueStandby(p) => Some(tb.agents().channel(p).clone()),
        _ => None,
    };
    let done = Mutex::new(false);
    tb.events().subscribe(move |e| {
        let Event::StepBegin { step: s, .. } = &e.event else { return };
        if *s != step || std::mem::replace(&mut *done.lock().unwrap(), true) {
            return;
        }
        match fault {
            Fault::Stop(p) => sim.crash(p),
            Fault::FailStart(p) => sim.fail_next_start(p),
            Fault::RogueStandby(_) => {
                let ch = rogue.clone().unwrap();
                // From a plain thread: this sink runs inside the orchestrator's runtime.
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let mut c = hitless::channel::AgentClient::connect(&ch).await.unwrap();
                        let req = ControlRequest::SetRole { role: Role::Standby, epoch: 1000, holding: None };
                        c.request(&req, std::time::Duration::from_secs(2)).await.unwrap();
                    });
                })
                .join()
                .unwrap();
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_each_step_ends_where_the_table_says() {
    use Fault::*;
    let (first, second) = (ProcId::FIRST, ProcId::SECOND);
    let cases = [
        (Step::Initial, Stop(second)),
        (Step::IsolateStandby, RogueStandby(second)),
        (Step::ReloadStandby, FailStart(second)),
        (Step::StandbyOnNew, Stop(second)),
        (Step::SwitchOverAndEvaluate, Stop(second)),
        (Step::ReloadOther, FailStart(first)),
        (Step::OtherStandby, Stop(first)),
        (Step::EnableFeatures, Stop(first)),
    ];
    for (step, fault) in cases {
        let mut s = sim().await;
        inject(&s.tb, step, fault);
        let r = procedure::upgrade(&mut s.tb, "2.0.0", opts(false)).await.unwrap();
        let want = match next(step, Outcome::Error).unwrap() {
            Step::Fallback => End::RolledBack,
            Step::Failed => End::Failed,
            other => panic!("{other:?}"),
        };
        let ctx = format!("{fault:?} at {step}: {}", r.message);
        assert_eq!(r.end, want, "{ctx}");
        assert!(r.message.contains(&format!("step {step}")), "{ctx}");
        if want == End::RolledBack {
            // Back at step 200 on the old version, nothing lost.
            assert_invariants(&r);
            let roles: Vec<Role> = roles_and_versions(&s.tb).await.iter().map(|v| v.1).collect();
            assert!(roles.contains(&Role::Active) && roles.contains(&Role::Standby), "{ctx}: {roles:?}");
            for (n, _, v) in roles_and_versions(&s.tb).await {
                assert_eq!(v, "1.0.0", "{ctx}: {n}");
            }
        } else {
            let failed = r.invariants.iter().find(|v| v.name == "consistent-final-state").unwrap();
            assert!(!failed.ok, "{ctx}: a failed run is never reported consistent");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_keeps_its_whole_cause_in_the_event_and_the_message() {
    let mut s = sim().await;
    inject(&s.tb, Step::ReloadStandby, Fault::FailStart(ProcId::SECOND));
    let r = procedure::upgrade(&mut s.tb, "2.0.0", opts(false)).await.unwrap();
    let why =
        s.tb.events()
            .entries()
            .into_iter()
            .find_map(|e| match e.event {
                Event::StepFailed { step: Step::ReloadStandby, why } => Some(why),
                _ => None,
            })
            .unwrap();
    // Not just "processor p122": the backend's own words too.
    assert!(why.contains("processor p122") && why.contains("injected fault: this start fails"), "{why}");
    assert!(r.message.contains("injected fault: this start fails"), "{}", r.message);
    let transcript = std::fs::read_to_string(s.tb.run().transcript()).unwrap();
    assert!(transcript.contains("injected fault: this start fails"), "{transcript}");
}

/// Run an upgrade to `to` and drop it the moment `step` begins, as a killed
/// orchestrator would stop; the journal then says the step began.
async fn cut_at(tb: &mut Testbed, to: &str, step: Step) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    tb.events().subscribe(move |e| {
        if matches!(&e.event, Event::StepBegin { step: s, .. } if *s == step) {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    tokio::select! {
        r = procedure::upgrade(tb, to, opts(false)) => panic!("step {step} never began: {:?}", r.map(|r| r.message)),
        _ = rx => {}
    }
    let j = procedure::read_journal(tb.run()).unwrap();
    assert_eq!((j.step, j.outcome), (step, None));
    // Without --resume, a new upgrade is refused while one is interrupted.
    let err = procedure::upgrade(tb, to, opts(false)).await.err().unwrap().to_string();
    assert!(err.contains(&format!("interrupted at step {step}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_each_step_finishes_the_upgrade_or_falls_back() {
    let cases = [
        (Step::Initial, "2.0.0", End::Completed),
        (Step::IsolateStandby, "2.0.0", End::Completed),
        (Step::ReloadStandby, "2.0.0", End::Completed),
        (Step::StandbyOnNew, "2.0.0", End::Completed),
        // An evaluation cut short cannot be trusted.
        (Step::SwitchOverAndEvaluate, "2.0.0", End::RolledBack),
        (Step::Fallback, "2.0.0-bad-eval", End::RolledBack),
        (Step::ReloadOther, "2.0.0", End::Completed),
        (Step::OtherStandby, "2.0.0", End::Completed),
        (Step::EnableFeatures, "2.0.0", End::Completed),
    ];
    for (step, to, want) in cases {
        let mut s = sim().await;
        cut_at(&mut s.tb, to, step).await;
        let r = procedure::upgrade(&mut s.tb, to, opts(true)).await.unwrap();
        assert_eq!(r.end, want, "resumed at {step}: {}", r.message);
        assert_invariants(&r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_works_from_each_step_before_207_and_is_refused_after() {
    for step in [
        Step::IsolateStandby,
        Step::ReloadStandby,
        Step::StandbyOnNew,
        Step::SwitchOverAndEvaluate,
        Step::ReloadOther,
        Step::OtherStandby,
    ] {
        let mut s = sim().await;
        cut_at(&mut s.tb, "2.0.0", step).await;
        let r = procedure::rollback(&mut s.tb).await.unwrap();
        assert_eq!(r.end, End::RolledBack, "rollback from {step}: {}", r.message);
        assert!(r.message.contains(&format!("at step {step}: rollback requested")), "{}", r.message);
        assert_invariants(&r);
        for (n, _, v) in roles_and_versions(&s.tb).await {
            assert_eq!(v, "1.0.0", "{n} after rollback from {step}");
        }
    }
    let mut s = sim().await;
    cut_at(&mut s.tb, "2.0.0", Step::EnableFeatures).await;
    let err = procedure::rollback(&mut s.tb).await.err().unwrap().to_string();
    assert!(err.contains("point of no return"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_is_refused_while_the_pair_is_mixed() {
    let (p121, p122) = (ProcId::FIRST, ProcId::SECOND);
    let mut s = sim().await;
    let tb = &mut s.tb;
    tb.set_role(p122, Role::OutOfService).await.unwrap();
    tb.reload(p122, "2.0.0").await.unwrap();
    tb.make_standby(p122).await.unwrap();
    let skip = tb.events().entries().len();
    let err = procedure::enable_features(tb, &[FEATURE_PRIORITY.into()]).await.err().unwrap().to_string();
    assert!(err.contains("p121") && err.contains("runs 1.0.0, which does not support"), "{err}");
    let said = condensed(&tb.events().entries()[skip..]);
    assert_eq!(said.lines().count(), 1, "the active refuses, nothing else is tried: {said}");
    assert!(said.contains("p121 work-unit-priority refused: "), "{said}");
    // A 2.0.0 pair may enable it; then a 1.0.0 processor cannot join as standby.
    tb.set_role(p121, Role::Standby).await.unwrap();
    tb.set_role(p122, Role::Active).await.unwrap();
    tb.agents().wait_standby_current(p121).await.unwrap();
    tb.set_role(p121, Role::OutOfService).await.unwrap();
    tb.reload(p121, "2.0.0").await.unwrap();
    tb.make_standby(p121).await.unwrap();
    procedure::enable_features(tb, &[FEATURE_PRIORITY.into()]).await.unwrap();
    tb.set_role(p121, Role::OutOfService).await.unwrap();
    tb.reload(p121, "1.0.0").await.unwrap();
    let err = tb.set_role(p121, Role::Standby).await.err().unwrap().to_string();
    assert!(err.contains("cannot become standby") && err.contains(FEATURE_PRIORITY), "{err}");
}
