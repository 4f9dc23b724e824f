//! Scenario tests on real VMs: the rolling upgrade and its fallbacks under a
//! live workload. Each snapshots a condensed transcript (steps, roles,
//! verdicts, invariants — no times, pids or paths) so that any behavioural
//! change shows up as a reviewed snapshot diff; details that depend on timing
//! are asserted, not snapshotted.
#![allow(clippy::unwrap_used)]

use hitless::pair::ProcId;
use hitless::procedure::{self, End, Options, Report};
use hitless::testbed::{Access, Testbed};
use hitless_protocol::{ControlRequest, Role, FEATURE_PRIORITY};
use hitless_tests::{assert_invariants, condensed, hitless, repo, up, RunGuard};

const P121: ProcId = ProcId::FIRST;
const P122: ProcId = ProcId::SECOND;

async fn run(tb: &mut Testbed, to: &str) -> (Report, String) {
    let skip = tb.events().entries().len();
    let report = procedure::upgrade(tb, to, Options { resume: false, workload: true }).await.unwrap();
    let entries = tb.events().entries();
    (report, condensed(&entries[skip..]))
}

fn redact_paths(s: &str) -> String {
    // Image file names carry a content hash; the repository path varies.
    let mut out = s.replace(&repo().display().to_string(), "[repo]");
    while let Some(i) = out.find(".ext4") {
        let start = out[..i].rfind('-').unwrap();
        out = format!("{}-[hash].EXT4{}", &out[..start], &out[i + 5..]);
    }
    out.replace(".EXT4", ".ext4")
}

#[tokio::test]
async fn happy_path_1_to_2() {
    let guard = RunGuard::new();
    let mut tb = up(&guard).await;

    let plan = procedure::plan(&tb, "2.0.0").await.unwrap();
    let lines = redact_paths(&procedure::describe_plan(&tb, &plan).join("\n"));
    insta::assert_snapshot!("dry_run_plan", lines);

    let (report, transcript) = run(&mut tb, "2.0.0").await;
    insta::assert_snapshot!("happy_path", transcript);
    assert_eq!(report.end, End::Completed, "{}", report.message);
    // The switchover's promotion was a take-over over the link, not a host command after it.
    assert!(!transcript.contains("did not take over"), "{transcript}");
    assert_invariants(&report);
    assert_eq!(report.gaps.len(), 1);
    assert!(report.acked > 100, "the workload ran during the upgrade: {}", report.acked);

    // The transcript file: header plus the same events.
    let t = std::fs::read_to_string(tb.run().transcript()).unwrap();
    assert!(t.contains("from: \"1.0.0\"") && t.contains("to: \"2.0.0\""), "{t}");
    assert!(t.contains("accel: tcg") || t.contains("accel: kvm"), "{t}");
    assert!(t.contains("event: step-begin"));

    for p in ProcId::BOTH {
        let s = tb.agents().status(p).await.unwrap();
        assert!(s.hello.enabled.contains(FEATURE_PRIORITY), "{p:?}: {:?}", s.hello.enabled);
        assert_eq!(s.hello.version, "2.0.0");
    }
    // After 207 there is no way back.
    let err = procedure::rollback(&mut tb).await.err().unwrap().to_string();
    assert!(err.contains("point of no return"), "{err}");

    // And a 1.0.0 processor can no longer join as standby.
    let mut standby = P121;
    for p in ProcId::BOTH {
        if tb.agents().status(p).await.unwrap().hello.role == Role::Standby {
            standby = p;
        }
    }
    tb.set_role(standby, Role::OutOfService).await.unwrap();
    tb.reload(standby, "1.0.0").await.unwrap();
    let err = tb.set_role(standby, Role::Standby).await.err().unwrap().to_string();
    assert!(err.contains("cannot become standby") && err.contains(FEATURE_PRIORITY), "{err}");
}

#[tokio::test]
async fn fallback_when_not_acceptable() {
    let guard = RunGuard::new();
    let mut tb = up(&guard).await;
    let (report, transcript) = run(&mut tb, "2.0.0-bad-eval").await;
    insta::assert_snapshot!("fallback_bad_eval", transcript);
    assert_eq!(report.end, End::RolledBack);
    assert!(report.message.starts_with("upgrade rolled back at step 204: "), "{}", report.message);
    assert!(report.message.contains("self-test failed"), "{}", report.message);
    assert_invariants(&report);
    for p in ProcId::BOTH {
        assert_eq!(tb.agents().status(p).await.unwrap().hello.version, "1.0.0");
    }
}

#[tokio::test]
async fn fallback_when_the_new_version_crashes() {
    let guard = RunGuard::new();
    let mut tb = up(&guard).await;
    let (report, transcript) = run(&mut tb, "2.0.0-crash").await;
    assert_eq!(report.end, End::RolledBack, "{}", report.message);
    assert_invariants(&report);
    // The crash is seen by the watch over the active (its agent exited: a failover), or as a failed evaluation.
    let m = &report.message;
    assert!(m.contains("was lost") || m.contains("evaluation request failed") || m.contains("crashed"), "{m}");
    assert!(transcript.contains("step 204-fallback"));
    assert!(transcript.contains("p121 -> active"));
    assert_eq!(tb.agents().status(P121).await.unwrap().hello.role, Role::Active);
}

#[tokio::test]
async fn mixed_pair_replicates_both_ways_and_refuses_the_feature() {
    let guard = RunGuard::new();
    let mut tb = up(&guard).await;
    let skip = tb.events().entries().len();
    // By hand: p122 to 2.0.0 as standby of the 1.0.0 active (steps 201-203).
    tb.set_role(P122, Role::OutOfService).await.unwrap();
    tb.reload(P122, "2.0.0").await.unwrap();
    tb.make_standby(P122).await.unwrap();
    // Enabling while mixed is refused (`hitless enable`, or step 207 run too early), on either side.
    let err = procedure::enable_features(&tb, &[FEATURE_PRIORITY.into()]).await.err().unwrap().to_string();
    assert!(err.contains("runs 1.0.0, which does not support"), "{err}");
    insta::assert_snapshot!("enabling_refused_while_mixed", condensed(&tb.events().entries()[skip..]));
    let req = ControlRequest::EnableFeature { feature: FEATURE_PRIORITY.into() };
    let err = tb.agents().control(P122, req).await.err().unwrap().to_string();
    assert!(err.contains("peer p121 runs 1.0.0"), "{err}");
    for p in ProcId::BOTH {
        assert!(tb.agents().status(p).await.unwrap().hello.enabled.is_empty(), "{p:?}");
    }

    let w = hitless::workload::Workload::start(tb.agents().targets(), "p121".into(), "mixed", None);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // 1.0.0 -> 2.0.0, then switch: 2.0.0 -> 1.0.0.
    tb.set_role(P121, Role::Standby).await.unwrap();
    tb.set_role(P122, Role::Active).await.unwrap();
    tb.agents().wait_standby_current(P121).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let h = w.stop().await;
    assert_eq!(h.rejected(), 0);
    // Replication is synchronous: once the workload is quiet, both hold the same state.
    let (sa, ua) = tb.agents().dump(P122).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (sb, ub) = tb.agents().dump(P121).await.unwrap();
    assert_eq!(sa, sb);
    assert_eq!(ua, ub, "1.0.0 standby holds what the 2.0.0 active has");
    assert!(hitless::invariants::no_lost_or_double(&h, &ua).ok);
    assert!(h.acked().len() > 50);
}

#[tokio::test]
async fn a_killed_upgrade_resumes_from_its_journal() {
    let guard = RunGuard::new();
    // `up` as its own command would: this process holds the pair no longer.
    drop(up(&guard).await);
    let cmd = |args: &[&str]| {
        let mut c = hitless(args);
        c.arg("--run-dir").arg(&guard.run.root);
        c
    };
    // Bad input first: an unknown version is refused, naming the known ones, and changes nothing.
    let out = cmd(&["upgrade", "--to", "9.9.9"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("version 9.9.9 is not in") && err.contains("known: 1.0.0, 2.0.0"), "{err}");
    assert!(procedure::read_journal(&guard.run).is_none(), "an unknown version began an upgrade");

    // The orchestrator is killed (SIGKILL: no clean-up of its own) once step 203 has begun.
    let quiet = || std::process::Stdio::null();
    let mut child = cmd(&["upgrade", "--to", "2.0.0"]).stdout(quiet()).stderr(quiet()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if procedure::read_journal(&guard.run).is_some_and(|j| j.step == procedure::Step::StandbyOnNew) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the upgrade ended before step 203");
        assert!(std::time::Instant::now() < deadline, "step 203 never began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A plain upgrade is refused; --resume carries on from the journal.
    let out = cmd(&["upgrade", "--to", "2.0.0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted at step 203"));
    let out = cmd(&["upgrade", "--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming from the journal: step 203 begun, continuing at 203"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("summary (completed)") && !stdout.contains("FAIL"), "{stdout}");
    let tb = Testbed::attach(guard.run.clone(), hitless::events::Events::new(), Access::Observe).unwrap();
    for p in ProcId::BOTH {
        let s = tb.agents().status(p).await.unwrap();
        assert_eq!(s.hello.version, "2.0.0", "{p:?}");
        assert!(s.hello.enabled.contains(FEATURE_PRIORITY), "{p:?}");
    }
}
