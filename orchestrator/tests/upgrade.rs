//! Scenario tests on real VMs: the rolling upgrade and its fallbacks under a
//! live workload. Each snapshots a condensed transcript (steps, roles,
//! verdicts, invariants — no times, pids or paths) so that any behavioural
//! change shows up as a reviewed snapshot diff; details that depend on timing
//! are asserted, not snapshotted.
#![allow(clippy::unwrap_used)]
mod common;

use hitless::testbed::Testbed;
use hitless::upgrade::{self, Options, Report};
use hitless_protocol::{ControlReply, ControlRequest, Role, FEATURE_PRIORITY};

async fn run(tb: &mut Testbed, to: &str) -> (Report, String) {
    let skip = tb.events.entries().len();
    let report = upgrade::upgrade(tb, to, Options { resume: false, workload: true }).await.unwrap();
    let entries = tb.events.entries();
    (report, common::condensed(&entries[skip..]))
}

fn assert_invariants(r: &Report) {
    for v in &r.invariants {
        assert!(v.ok, "invariant {} violated: {}", v.name, v.detail);
    }
}

#[tokio::test]
async fn happy_path_1_to_2() {
    let guard = common::RunGuard::new();
    let mut tb = common::up(&guard).await;

    let plan = upgrade::plan(&tb, "2.0.0").await.unwrap();
    let lines = upgrade::describe_plan(&tb, &plan).join("\n");
    let lines = redact_paths(&lines);
    insta::assert_snapshot!("dry_run_plan", lines);

    let (report, transcript) = run(&mut tb, "2.0.0").await;
    insta::assert_snapshot!("happy_path", transcript);
    assert_eq!(report.end, "completed", "{}", report.message);
    assert_invariants(&report);
    assert_eq!(report.gaps.len(), 1);
    assert!(report.acked > 100, "the workload ran during the upgrade: {}", report.acked);

    // The transcript file: header plus the same events.
    let t = std::fs::read_to_string(tb.run.transcript()).unwrap();
    assert!(t.contains("from: \"1.0.0\"") && t.contains("to: \"2.0.0\""), "{t}");
    assert!(t.contains("accelerator: tcg") || t.contains("accelerator: kvm"), "{t}");
    assert!(t.contains("event: step-begin"));

    for n in tb.names() {
        let s = tb.agent_status(&n).await.unwrap();
        assert!(s.hello.enabled.contains(FEATURE_PRIORITY), "{n}: {:?}", s.hello.enabled);
        assert_eq!(s.hello.version, "2.0.0");
    }
    // After 207 there is no way back.
    let err = upgrade::rollback(&mut tb).await.err().unwrap().to_string();
    assert!(err.contains("point of no return"), "{err}");

    // And a 1.0.0 processor can no longer join as standby.
    let mut standby = String::new();
    for n in tb.names() {
        if tb.agent_status(&n).await.unwrap().hello.role == Role::Standby {
            standby = n;
        }
    }
    tb.set_role(&standby, Role::OutOfService).await.unwrap();
    tb.reload(&standby, "1.0.0").await.unwrap();
    let err = tb.set_role(&standby, Role::Standby).await.err().unwrap().to_string();
    assert!(err.contains("cannot become standby") && err.contains(FEATURE_PRIORITY), "{err}");
}

fn redact_paths(s: &str) -> String {
    // Image file names carry a content hash; the repository path varies.
    let repo = common::repo().canonicalize().unwrap().display().to_string();
    let mut out = s.replace(&repo, "[repo]");
    while let Some(i) = out.find(".ext4") {
        let start = out[..i].rfind('-').unwrap();
        out = format!("{}-[hash].EXT4{}", &out[..start], &out[i + 5..]);
    }
    out.replace(".EXT4", ".ext4")
}

#[tokio::test]
async fn fallback_when_not_acceptable() {
    let guard = common::RunGuard::new();
    let mut tb = common::up(&guard).await;
    let (report, transcript) = run(&mut tb, "2.0.0-bad-eval").await;
    insta::assert_snapshot!("fallback_bad_eval", transcript);
    assert_eq!(report.end, "rolled-back");
    assert!(report.message.starts_with("upgrade rolled back at step 204: "), "{}", report.message);
    assert!(report.message.contains("self-test failed"), "{}", report.message);
    assert_invariants(&report);
    for n in tb.names() {
        assert_eq!(tb.agent_status(&n).await.unwrap().hello.version, "1.0.0");
    }
}

#[tokio::test]
async fn fallback_when_the_new_version_crashes() {
    let guard = common::RunGuard::new();
    let mut tb = common::up(&guard).await;
    let (report, transcript) = run(&mut tb, "2.0.0-crash").await;
    assert_eq!(report.end, "rolled-back", "{}", report.message);
    assert_invariants(&report);
    // The crash is seen either as a failed evaluation request or as a dead VM.
    assert!(
        report.message.contains("evaluation request failed") || report.message.contains("crashed"),
        "{}",
        report.message
    );
    assert!(transcript.contains("step 204-fallback"));
    assert!(transcript.contains("p121 -> active"));
    let s = tb.agent_status("p121").await.unwrap();
    assert_eq!(s.hello.role, Role::Active);
}

#[tokio::test]
async fn mixed_pair_replicates_both_ways_and_refuses_the_feature() {
    let guard = common::RunGuard::new();
    let mut tb = common::up(&guard).await;
    let skip = tb.events.entries().len();
    // By hand: p122 to 2.0.0 as standby of the 1.0.0 active (steps 201-203).
    tb.set_role("p122", Role::OutOfService).await.unwrap();
    tb.reload("p122", "2.0.0").await.unwrap();
    tb.set_role("p122", Role::Standby).await.unwrap();
    tb.wait_standby_current("p122").await.unwrap();
    // Enabling while mixed is refused (`hitless enable`, or step 207 run too early), on either side.
    let err = upgrade::enable_features(&tb, &[FEATURE_PRIORITY.into()]).await.err().unwrap().to_string();
    assert!(err.contains("runs 1.0.0, which does not support"), "{err}");
    insta::assert_snapshot!("enabling_refused_while_mixed", common::condensed(&tb.events.entries()[skip..]));
    let err = tb
        .control("p122", ControlRequest::EnableFeature { feature: FEATURE_PRIORITY.into() })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("peer p121 runs 1.0.0"), "{err}");
    for n in tb.names() {
        assert!(tb.agent_status(&n).await.unwrap().hello.enabled.is_empty(), "{n}");
    }

    let targets = tb.names().into_iter().map(|n| (n.clone(), tb.channel(&n))).collect();
    let w = hitless::workload::Workload::start(targets, "p121".into());
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // 1.0.0 -> 2.0.0, then switch: 2.0.0 -> 1.0.0.
    tb.set_role("p121", Role::Standby).await.unwrap();
    tb.set_role("p122", Role::Active).await.unwrap();
    tb.wait_standby_current("p121").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let h = w.stop().await;
    assert_eq!(h.rejected(), 0);
    let dump = |n: &'static str| {
        let tb = &tb;
        async move {
            match tb.control(n, ControlRequest::Dump).await.unwrap() {
                ControlReply::Dump { units, seq } => (seq, units),
                other => panic!("{other:?}"),
            }
        }
    };
    // Replication is synchronous: once the workload is quiet, both hold the same state.
    let (sa, ua) = dump("p122").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (sb, ub) = dump("p121").await;
    assert_eq!(sa, sb);
    assert_eq!(ua, ub, "1.0.0 standby holds what the 2.0.0 active has");
    assert!(hitless::history::no_lost_or_double(&h, &ua).ok);
    assert!(h.acked().len() > 50);
}

#[tokio::test]
async fn a_killed_upgrade_resumes_from_its_journal() {
    let guard = common::RunGuard::new();
    let tb = common::up(&guard).await;
    let hitless = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hitless"));
        c.args(args)
            .arg("--config")
            .arg(common::repo().join("vm-configs/pair.yaml"))
            .arg("--run-dir")
            .arg(&guard.run.root);
        c
    };
    // The orchestrator is killed (SIGKILL: no clean-up of its own) once step 203 has begun.
    let mut child = hitless(&["upgrade", "--to", "2.0.0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let j: Option<upgrade::Journal> =
            std::fs::read(guard.run.journal()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if j.is_some_and(|j| j.step == "203") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the upgrade ended before step 203");
        assert!(std::time::Instant::now() < deadline, "step 203 never began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A plain upgrade is refused; --resume carries on from the journal.
    let out = hitless(&["upgrade", "--to", "2.0.0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted at step 203"));
    let out = hitless(&["upgrade", "--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming from the journal: step 203 begun, continuing at 203"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("summary (completed)") && !stdout.contains("FAIL"), "{stdout}");
    for n in tb.names() {
        let s = tb.agent_status(&n).await.unwrap();
        assert_eq!(s.hello.version, "2.0.0", "{n}");
        assert!(s.hello.enabled.contains(FEATURE_PRIORITY), "{n}");
    }
}
