//! A representative subset of the scenario matrix on real QEMU guests (the
//! whole matrix is `make soak`): an unplanned failover, a loss in the simplex
//! window, a link cut during the evaluation, an agent crash in the active, a
//! cancelled upgrade, a killed orchestrator resumed, a corrupt fallback image
//! and a paused active. The runner judges each end and its invariants (from
//! the workload's histories) against its file.
#![allow(clippy::unwrap_used)]

use hitless::scenario::runner::{self, Where};
use hitless::scenario::Scenario;
use hitless_tests::{config_path, repo};

async fn run(name: &str) {
    let mut s = Scenario::load(&repo().join(format!("vm-configs/scenarios/{name}.yaml"))).unwrap();
    // The pair the tests were asked to run (HITLESS_TEST_KERNEL).
    s.config = config_path();
    let out = tempfile::tempdir().unwrap();
    let o = runner::run(&s, Where::Qemu, out.path(), None, |e| eprintln!("{}", hitless::events::render(e))).await;
    assert!(o.passed && !o.skipped, "{name}: {o:#?}");
}

#[tokio::test]
async fn kill_active_at_207() {
    run("kill-active-at-207").await;
}

#[tokio::test]
async fn kill_active_at_202() {
    run("kill-active-at-202").await;
}

#[tokio::test]
async fn cut_link_during_evaluation() {
    run("cut-link-during-evaluation").await;
}

#[tokio::test]
async fn crash_agent_active_at_204() {
    run("crash-agent-active-at-204").await;
}

#[tokio::test]
async fn cancel_at_203() {
    run("cancel-at-203").await;
}

#[tokio::test]
async fn orchestrator_killed_at_203() {
    run("orchestrator-killed-at-203").await;
}

/// The pair boots from the fallback image intact; spoilt once it is up, the
/// upgrade must refuse before anything leaves service.
#[tokio::test]
async fn corrupt_fallback_image() {
    run("corrupt-fallback-image").await;
}

/// The active stopped while the host talks to it (the workload): it must
/// answer again once it resumes, and the upgrade go on.
#[tokio::test]
async fn pause_active_in_simplex() {
    run("pause-active-in-simplex").await;
}
