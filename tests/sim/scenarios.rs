//! The shipped scenario matrix on the simulated pair (every fault exists
//! there), two transcripts snapshotted, chaos replay from a seed, and a real
//! Ctrl-C through the command line. The runner judges each scenario's end and
//! its invariants (computed from the workload's histories) against its file.
#![allow(clippy::unwrap_used)]

use hitless::events::Entry;
use hitless::scenario::runner::{self, Outcome, Where};
use hitless::scenario::Scenario;
use hitless_tests::{condensed, hitless, repo};
use std::sync::{Arc, Mutex};

fn shipped() -> Vec<Scenario> {
    let dir = repo().join("vm-configs/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|f| Scenario::load(f).unwrap()).collect()
}

#[test]
fn every_shipped_scenario_ends_as_expected_on_the_simulated_pair() {
    let out = tempfile::tempdir().unwrap();
    let scenarios = shipped();
    assert!(scenarios.len() >= 30, "{} scenarios", scenarios.len());
    // A few at a time, each on a runtime of its own: most of a scenario is waiting (evaluation windows, pauses).
    let mut results: Vec<Outcome> = Vec::new();
    for batch in scenarios.chunks(4) {
        let threads: Vec<_> = batch
            .iter()
            .map(|s| {
                let (s, out) = (s.clone(), out.path().to_path_buf());
                std::thread::spawn(move || {
                    let rt =
                        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                    rt.block_on(runner::run(&s, Where::Simulated, &out, None, |_| {}))
                })
            })
            .collect();
        results.extend(threads.into_iter().map(|t| t.join().unwrap()));
    }
    results.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    let failed: Vec<&Outcome> = results.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "not as expected:\n{}\n{failed:#?}", runner::table(&results));
}

/// Run one shipped scenario on the simulated pair; its events as a condensed transcript.
async fn transcript_of(name: &str) -> (Outcome, String) {
    let s = Scenario::load(&repo().join(format!("vm-configs/scenarios/{name}.yaml"))).unwrap();
    let out = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let sink = seen.clone();
    let o = runner::run(&s, Where::Simulated, out.path(), None, move |e| sink.lock().unwrap().push(e.clone())).await;
    let entries = seen.lock().unwrap().clone();
    (o, condensed(&entries))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_lost_at_207_fails_over_and_stops() {
    let (o, t) = transcript_of("kill-active-at-207").await;
    assert!(o.passed, "{o:#?}");
    insta::assert_snapshot!("kill_active_at_207", t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_lost_in_the_simplex_window_is_a_reported_loss() {
    let (o, t) = transcript_of("kill-active-at-202").await;
    assert!(o.passed, "{o:#?}");
    insta::assert_snapshot!("kill_active_at_202", t);
}

/// On a current-thread runtime (what `#[tokio::test]` gives, and any caller
/// may use), a fault at a step's beginning is applied while the
/// orchestrator's runtime waits for it: it must not depend on that runtime
/// (it once reused its kept agent connections, and found nobody active).
#[tokio::test(flavor = "current_thread")]
async fn a_fault_at_a_step_works_on_a_current_thread_runtime() {
    let (o, t) = transcript_of("kill-active-at-207").await;
    assert!(o.passed, "{o:#?}");
    assert!(t.contains("killed p122's machine"), "{t}");
}

/// Whether `hitless run --chaos` passed, the plan it prints (everything
/// before the results), and all it printed.
fn chaos_plan(seed: &str) -> (bool, String, String) {
    let out = tempfile::tempdir().unwrap();
    let out = out.path().display().to_string();
    let r =
        hitless(&["run", "--chaos", "--seed", seed, "--count", "3", "--simulated", "--out", &out]).output().unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(stdout.contains("chaos plan"), "{stdout}{}", String::from_utf8_lossy(&r.stderr));
    let plan = stdout.split("\nSCENARIO").next().unwrap_or_default().to_string();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&r.stderr));
    (r.status.success(), plan, all)
}

#[test]
fn a_chaos_seed_replays_the_same_plan() {
    let (ok1, a, all1) = chaos_plan("7");
    let (ok2, b, all2) = chaos_plan("7");
    assert!(a.contains("chaos plan (seed 7)") && a.contains("faults:"), "{a}");
    assert_eq!(a, b, "one seed, two plans");
    assert!(ok1, "a chaos draw did not hold its invariants:\n{all1}");
    assert!(ok2, "a chaos draw did not hold its invariants:\n{all2}");
    let (_, c, _) = chaos_plan("8");
    assert_ne!(a.replace("seed 7", "seed 8").replace("chaos-7-", "chaos-8-").replace("seed 7 draw", "seed 8 draw"), c);
}

#[test]
fn ctrl_c_cancels_a_rehearsal_and_leaves_one_active_and_one_current_standby() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let child = hitless(&["simulate", "--to", "2.0.0", "--run-dir", run_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !hitless::procedure::read_journal(&hitless::rundir::RunDir::new(&run_dir))
        .is_some_and(|j| j.step == hitless::procedure::Step::SwitchOverAndEvaluate)
    {
        assert!(std::time::Instant::now() < deadline, "step 204 never began");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{said}");
    assert!(
        said.contains("cancelled at step 204")
            && said.contains("rolled back to 1.0.0: one active and one current standby"),
        "{said}"
    );
    assert!(said.contains("summary (rolled-back)") && !said.contains("FAIL"), "{said}");
}
