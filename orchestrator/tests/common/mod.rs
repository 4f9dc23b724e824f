//! Shared helpers of the VM tests: the repository's pair config, a testbed
//! in a temporary run directory, and a guard that tears it down even when the
//! test panics (and dumps the serial consoles so a failure can be read).
#![allow(dead_code, clippy::unwrap_used)]

use hitless::config::Config;
use hitless::events::{Entry, Event, Events};
use hitless::rundir::RunDir;
use hitless::testbed::{self, Testbed};
use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn config() -> Config {
    Config::load(&repo().join("vm-configs/pair.yaml")).unwrap()
}

/// A temporary run directory that is torn down on drop, pass or fail.
pub struct RunGuard {
    pub run: RunDir,
    _tmp: tempfile::TempDir,
}

impl RunGuard {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("hitless-test-").tempdir().unwrap();
        RunGuard { run: RunDir::new(tmp.path().join("run")), _tmp: tmp }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in ["p121", "p122"] {
                let serial = self.run.serial(p);
                eprintln!("--- {} ---\n{}", serial.display(), hitless::process::tail(&serial, 40));
                eprintln!("--- qemu log ---\n{}", hitless::process::tail(&self.run.qemu_log(p), 10));
            }
        }
        testbed::down(&self.run, &Events::new());
    }
}

pub async fn up(guard: &RunGuard) -> Testbed {
    let events = Events::new();
    events.subscribe(|e| eprintln!("{}", hitless::events::render(e)));
    Testbed::up(config(), guard.run.clone(), events).await.unwrap()
}

/// The transcript's events as one line each: steps, roles, verdicts,
/// invariants — no times, pids or paths, so it can be snapshotted.
pub fn condensed(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let line = match &e.event {
            Event::StepBegin { step, .. } => format!("step {step}"),
            Event::StepDone { step, pair, .. } => {
                let p: Vec<String> = pair.iter().map(|v| format!("{} {} {}", v.processor, v.role, v.version)).collect();
                format!("  done {step}: {}", p.join(", "))
            }
            Event::Role { processor, role, epoch } => format!("  {processor} -> {role} (epoch {epoch})"),
            Event::ProcessorStarted { processor, version, .. } => format!("  {processor} boots {version}"),
            Event::ProcessorStopped { processor, .. } => format!("  {processor} stopped"),
            Event::Evaluation { processor, acceptable, .. } => {
                format!("  {processor} evaluation acceptable={acceptable}")
            }
            Event::Feature { processor, feature, result } => format!("  {processor} {feature} {result}"),
            Event::ServiceGap { step, .. } => format!("service gap measured at {step}"),
            Event::Invariant { name, ok, .. } => format!("invariant {name}: {}", if *ok { "ok" } else { "VIOLATED" }),
            Event::Outcome { result, .. } => format!("outcome {result}"),
            Event::Progress { .. } | Event::Accelerator { .. } | Event::AgentReady { .. } | Event::Qmp { .. } => {
                continue
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
