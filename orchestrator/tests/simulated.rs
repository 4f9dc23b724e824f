//! The procedure against the simulated pair (real agents in this process,
//! no VMs): every transition of the table, taken for real. Each step is made
//! to fail by a fault injected when it begins; each step is cut short (as if
//! the orchestrator were killed) and the upgrade resumed from the journal.
//! About a second per upgrade, so every path is covered on every change.
#![allow(clippy::unwrap_used)]
mod common;

use hitless::events::{Event, Events};
use hitless::procedure::{next, Outcome, Step};
use hitless::testbed::Testbed;
use hitless::upgrade::{self, Options, Report};
use hitless_protocol::{ControlRequest, Role, FEATURE_PRIORITY};
use std::sync::Mutex;

struct Sim {
    tb: Testbed,
    _guard: tempfile::TempDir,
}

async fn sim() -> Sim {
    let tmp = tempfile::Builder::new().prefix("hitless-sim-").tempdir().unwrap();
    let mut cfg = common::config();
    // The agents run at host speed; a short window still evaluates for real.
    cfg.evaluation_ms = 300;
    let events = Events::new();
    if std::env::var_os("HITLESS_TEST_VERBOSE").is_some() {
        events.subscribe(|e| eprintln!("{}", hitless::events::render(e)));
    }
    let tb = Testbed::simulated(cfg, hitless::rundir::RunDir::new(tmp.path().join("run")), events).await.unwrap();
    Sim { tb, _guard: tmp }
}

fn opts(resume: bool) -> Options {
    Options { resume, workload: true }
}

fn assert_invariants(r: &Report) {
    for v in &r.invariants {
        assert!(v.ok, "invariant {} violated: {}", v.name, v.detail);
    }
}

async fn versions_and_roles(tb: &Testbed) -> Vec<(String, Role, String)> {
    let mut out = Vec::new();
    for n in tb.names() {
        let s = tb.agent_status(&n).await.unwrap();
        out.push((n, s.hello.role, s.hello.version));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_walks_200_to_207() {
    let mut s = sim().await;
    let r = upgrade::upgrade(&mut s.tb, "2.0.0", opts(false)).await.unwrap();
    insta::assert_snapshot!("simulated_happy_path", common::condensed(&s.tb.events.entries()));
    assert_eq!(r.end, "completed", "{}", r.message);
    assert_invariants(&r);
    assert!(r.acked > 20, "{}", r.acked);
    for n in s.tb.names() {
        assert!(s.tb.agent_status(&n).await.unwrap().hello.enabled.contains(FEATURE_PRIORITY));
    }
    let err = upgrade::rollback(&mut s.tb).await.err().unwrap().to_string();
    assert!(err.contains("point of no return"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_acceptable_falls_back_and_so_does_a_crash() {
    let crashed: &[&str] = &["evaluation request failed", "crashed"];
    for (to, why) in [("2.0.0-bad-eval", &["self-test failed"][..]), ("2.0.0-crash", crashed)] {
        let mut s = sim().await;
        // The crashing build exits 800 ms after becoming active: evaluate past that.
        s.tb.cfg.evaluation_ms = 1200;
        let r = upgrade::upgrade(&mut s.tb, to, opts(false)).await.unwrap();
        assert_eq!(r.end, "rolled-back", "{to}: {}", r.message);
        assert!(r.message.starts_with("upgrade rolled back at step 204: "), "{}", r.message);
        assert!(why.iter().any(|w| r.message.contains(w)), "{to}: {}", r.message);
        assert_invariants(&r);
        let mut want = vec![
            ("p121".to_string(), Role::Active, "1.0.0".to_string()),
            ("p122".into(), Role::Standby, "1.0.0".into()),
        ];
        want.sort();
        assert_eq!(versions_and_roles(&s.tb).await, want, "{to}");
    }
}

/// What each step's fault is: a processor stopped, a boot that fails, or a
/// role command from someone else at a newer epoch (which ours then loses to).
#[derive(Debug, Clone, Copy)]
enum Fault {
    Stop(&'static str),
    FailStart(&'static str),
    RogueStandby(&'static str),
}

fn inject(tb: &Testbed, step: Step, fault: Fault) {
    let sim = tb.simulated_pair().unwrap();
    let rogue = match fault {
        Fault::RogueStandby(n) => Some(tb.channel(n)),
        _ => None,
    };
    let done = Mutex::new(false);
    tb.events.subscribe(move |e| {
        let Event::StepBegin { step: s, .. } = &e.event else { return };
        if s != step.number() || std::mem::replace(&mut *done.lock().unwrap(), true) {
            return;
        }
        match fault {
            Fault::Stop(n) => sim.stop(n),
            Fault::FailStart(n) => sim.fail_next_start(n),
            Fault::RogueStandby(_) => {
                let ch = rogue.clone().unwrap();
                // From a plain thread: this sink runs inside the orchestrator's runtime.
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let mut c = hitless::channel::AgentClient::connect(&ch).await.unwrap();
                        let req = ControlRequest::SetRole { role: Role::Standby, epoch: 1000 };
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
    let cases = [
        (Step::Initial, Stop("p122")),
        (Step::IsolateStandby, RogueStandby("p122")),
        (Step::ReloadStandby, FailStart("p122")),
        (Step::StandbyOnNew, Stop("p122")),
        (Step::SwitchOverAndEvaluate, Stop("p122")),
        (Step::ReloadOther, FailStart("p121")),
        (Step::OtherStandby, Stop("p121")),
        (Step::EnableFeatures, Stop("p121")),
    ];
    for (step, fault) in cases {
        let mut s = sim().await;
        inject(&s.tb, step, fault);
        let r = upgrade::upgrade(&mut s.tb, "2.0.0", opts(false)).await.unwrap();
        let want = match next(step, Outcome::Error).unwrap() {
            Step::Fallback => "rolled-back",
            Step::Failed => "failed",
            other => panic!("{other:?}"),
        };
        let ctx = format!("{fault:?} at {}: {}", step.number(), r.message);
        assert_eq!(r.end, want, "{ctx}");
        assert!(r.message.contains(&format!("step {}", step.number())), "{ctx}");
        if want == "rolled-back" {
            // Back at step 200 on the old version, nothing lost.
            assert_invariants(&r);
            let roles: Vec<Role> = versions_and_roles(&s.tb).await.iter().map(|v| v.1).collect();
            assert!(roles.contains(&Role::Active) && roles.contains(&Role::Standby), "{ctx}: {roles:?}");
            for (n, _, v) in versions_and_roles(&s.tb).await {
                assert_eq!(v, "1.0.0", "{ctx}: {n}");
            }
        } else {
            let failed = r.invariants.iter().find(|v| v.name == "consistent-final-state").unwrap();
            assert!(!failed.ok, "{ctx}: a failed run is never reported consistent");
        }
    }
}

/// Run an upgrade to `to` and drop it the moment `step` begins, as a killed
/// orchestrator would stop; the journal then says the step began.
async fn cut_at(tb: &mut Testbed, to: &str, step: Step) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    tb.events.subscribe(move |e| {
        if matches!(&e.event, Event::StepBegin { step: s, .. } if s == step.number()) {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    tokio::select! {
        r = upgrade::upgrade(tb, to, opts(false)) => panic!("step {} never began: {:?}", step.number(), r.map(|r| r.message)),
        _ = rx => {}
    }
    let j = upgrade::read_journal(tb).unwrap();
    assert_eq!((j.step.as_str(), j.outcome), (step.number(), None));
    // Without --resume, a new upgrade is refused while one is interrupted.
    let err = upgrade::upgrade(tb, to, opts(false)).await.err().unwrap().to_string();
    assert!(err.contains(&format!("interrupted at step {}", step.number())), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_each_step_finishes_the_upgrade_or_falls_back() {
    let cases = [
        (Step::Initial, "2.0.0", "completed"),
        (Step::IsolateStandby, "2.0.0", "completed"),
        (Step::ReloadStandby, "2.0.0", "completed"),
        (Step::StandbyOnNew, "2.0.0", "completed"),
        // An evaluation cut short cannot be trusted.
        (Step::SwitchOverAndEvaluate, "2.0.0", "rolled-back"),
        (Step::Fallback, "2.0.0-bad-eval", "rolled-back"),
        (Step::ReloadOther, "2.0.0", "completed"),
        (Step::OtherStandby, "2.0.0", "completed"),
        (Step::EnableFeatures, "2.0.0", "completed"),
    ];
    for (step, to, want) in cases {
        let mut s = sim().await;
        cut_at(&mut s.tb, to, step).await;
        let r = upgrade::upgrade(&mut s.tb, to, opts(true)).await.unwrap();
        assert_eq!(r.end, want, "resumed at {}: {}", step.number(), r.message);
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
        let r = upgrade::rollback(&mut s.tb).await.unwrap();
        assert_eq!(r.end, "rolled-back", "rollback from {}: {}", step.number(), r.message);
        assert!(r.message.contains(&format!("at step {}: rollback requested", step.number())), "{}", r.message);
        assert_invariants(&r);
        for (n, _, v) in versions_and_roles(&s.tb).await {
            assert_eq!(v, "1.0.0", "{n} after rollback from {}", step.number());
        }
    }
    let mut s = sim().await;
    cut_at(&mut s.tb, "2.0.0", Step::EnableFeatures).await;
    let err = upgrade::rollback(&mut s.tb).await.err().unwrap().to_string();
    assert!(err.contains("point of no return"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_is_refused_while_the_pair_is_mixed() {
    let mut s = sim().await;
    let tb = &mut s.tb;
    tb.set_role("p122", Role::OutOfService).await.unwrap();
    tb.reload("p122", "2.0.0").await.unwrap();
    tb.set_role("p122", Role::Standby).await.unwrap();
    tb.wait_standby_current("p122").await.unwrap();
    let skip = tb.events.entries().len();
    let err = upgrade::enable_features(tb, &[FEATURE_PRIORITY.into()]).await.err().unwrap().to_string();
    assert!(err.contains("p121") && err.contains("runs 1.0.0, which does not support"), "{err}");
    let said = common::condensed(&tb.events.entries()[skip..]);
    assert_eq!(said.lines().count(), 1, "the active refuses, nothing else is tried: {said}");
    assert!(said.contains("p121 work-unit-priority refused: "), "{said}");
    // A 2.0.0 pair may enable it; then a 1.0.0 processor cannot join as standby.
    tb.set_role("p121", Role::Standby).await.unwrap();
    tb.set_role("p122", Role::Active).await.unwrap();
    tb.wait_standby_current("p121").await.unwrap();
    tb.set_role("p121", Role::OutOfService).await.unwrap();
    tb.reload("p121", "2.0.0").await.unwrap();
    tb.set_role("p121", Role::Standby).await.unwrap();
    tb.wait_standby_current("p121").await.unwrap();
    upgrade::enable_features(tb, &[FEATURE_PRIORITY.into()]).await.unwrap();
    tb.set_role("p121", Role::OutOfService).await.unwrap();
    tb.reload("p121", "1.0.0").await.unwrap();
    let err = tb.set_role("p121", Role::Standby).await.err().unwrap().to_string();
    assert!(err.contains("cannot become standby") && err.contains(FEATURE_PRIORITY), "{err}");
}

#[test]
fn hitless_simulate_rehearses_the_upgrade_and_exits_by_its_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hitless"))
            .args(["simulate", "--to", to, "--run-dir"])
            .arg(tmp.path().join("run"))
            .arg("--config")
            .arg(common::repo().join("vm-configs/pair.yaml"))
            .output()
            .unwrap()
    };
    let out = run("2.0.0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("summary (completed)") && !stdout.contains("FAIL"), "{stdout}");
    assert!(tmp.path().join("run/transcript.yaml").is_file());
    // Not acceptable: rolled back, exit code 2; an unknown version: environment, 3.
    let out = run("2.0.0-bad-eval");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{said}");
    // The run directory of a VM testbed (live pid files) is never cleared for a rehearsal.
    let state = tmp.path().join("run/state.json");
    let vm_state = std::fs::read_to_string(&state).unwrap().replace("\"simulated\"", "\"tcg\"");
    std::fs::write(&state, vm_state).unwrap();
    let out = run("2.0.0");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already up"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(state.is_file(), "the VM testbed's state was removed");
    std::fs::remove_dir_all(tmp.path().join("run")).unwrap();
    let out = run("9.9");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 9.9 is not in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
