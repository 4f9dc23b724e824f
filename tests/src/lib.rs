//! Shared helpers of both test tiers: the repository's pair config, a
//! testbed in a temporary run directory that is torn down even when a test
//! panics (dumping the consoles so the failure can be read), the simulated
//! pair, the `hitless` binary, a condensed transcript for snapshots, and one
//! `assert_invariants`.
//!
//! `HITLESS_TEST_KERNEL=built|debian` runs the tests on that guest kernel
//! instead of the shipped config's (`make test-vm HITLESS_TEST_KERNEL=debian`):
//! [`config_path`] is then a copy of the shipped config with that `kernel:`.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use hitless::config::Config;
use hitless::events::{Entry, Event, Events};
use hitless::pair::ProcId;
use hitless::procedure::Report;
use hitless::rundir::RunDir;
use hitless::testbed::{self, Testbed};
use hitless_protocol::Role;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The kernel the tests were asked to boot (`HITLESS_TEST_KERNEL`), if any.
pub fn test_kernel() -> Option<String> {
    std::env::var("HITLESS_TEST_KERNEL").ok().filter(|k| !k.is_empty())
}

/// The pair config the tests use: the shipped `vm-configs/pair.yaml`, or with
/// `HITLESS_TEST_KERNEL` set, a copy of it with that kernel, written once under
/// `target/` so that whatever reads the file again (attach, the CLI, scenarios) sees the same.
pub fn config_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let Some(kernel) = test_kernel() else { return repo().join("vm-configs/pair.yaml") };
        let dir = repo().join("target/test-configs");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("pair-{kernel}.yaml"));
        // Written whole or not at all: test binaries run side by side.
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).unwrap();
        std::io::Write::write_all(&mut tmp, config_text(&repo().join(".cache/images")).as_bytes()).unwrap();
        tmp.persist(&path).unwrap();
        path
    })
    .clone()
}

/// The pair config the tests use ([`config_path`]).
pub fn config() -> Config {
    Config::load(&config_path()).unwrap()
}

/// The `hitless` binary of this workspace, built once per test binary (with its profile).
pub fn hitless_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(repo()).args(["build", "--quiet", "-p", "hitless", "--bin", "hitless"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "building hitless: {}", String::from_utf8_lossy(&out.stderr));
        profile_dir.join("hitless")
    })
    .clone()
}

/// The shipped config's text with every path absolute (so it can be written
/// elsewhere), images cached in `cache_dir` and the kernel `HITLESS_TEST_KERNEL`
/// asks for. A new `cache_dir` gets the built kernels of the repository's cache
/// (they are keyed by content, and building one takes minutes).
pub fn config_text(cache_dir: &std::path::Path) -> String {
    let r = repo().display().to_string();
    let paths = format!(
        "paths:\n  kernel_dir: {r}/.tools/kernel\n  cache_dir: {}\n  \
         vhost_device_vsock: {r}/.tools/bin/vhost-device-vsock\n  workspace: {r}\nversions:",
        cache_dir.display()
    );
    seed_kernels(cache_dir);
    let text = std::fs::read_to_string(repo().join("vm-configs/pair.yaml")).unwrap().replace("versions:", &paths);
    match test_kernel() {
        Some(k) => text
            .lines()
            .map(|l| if l.starts_with("kernel:") { format!("kernel: {k}") } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n"),
        None => text,
    }
}

/// Link (or copy) the repository cache's built kernels into `cache_dir`.
fn seed_kernels(cache_dir: &std::path::Path) {
    let shared = repo().join(".cache/images");
    if cache_dir.canonicalize().ok() == shared.canonicalize().ok() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&shared) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let to = cache_dir.join(&name);
        if name.starts_with("kernel-") && e.path().is_dir() && !to.exists() {
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                let dest = to.join(f.file_name());
                if std::fs::hard_link(f.path(), &dest).is_err() {
                    std::fs::copy(f.path(), &dest).unwrap();
                }
            }
        } else if name == "kernel-source.id" && !to.exists() {
            std::fs::create_dir_all(cache_dir).unwrap();
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// `hitless ARGS` with the tests' config ([`config_path`]).
pub fn hitless(args: &[&str]) -> Command {
    let mut c = Command::new(hitless_bin());
    c.args(args).arg("--config").arg(config_path());
    c
}

/// A temporary run directory that is torn down on drop, pass or fail.
pub struct RunGuard {
    /// The run directory.
    pub run: RunDir,
    _tmp: tempfile::TempDir,
}

impl Default for RunGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl RunGuard {
    /// A fresh, empty run directory.
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
        if let Err(e) = testbed::down(&self.run, &Events::new()) {
            eprintln!("tearing down {}: {e}", self.run.root.display());
        }
    }
}

/// Events that echo to stderr (shown when a test fails).
pub fn events() -> Events {
    let events = Events::new();
    if std::env::var_os("HITLESS_TEST_QUIET").is_none() {
        events.subscribe(|e| eprintln!("{}", hitless::events::render(e)));
    }
    events
}

/// The pair on QEMU, up in `guard`'s run directory.
pub async fn up(guard: &RunGuard) -> Testbed {
    Testbed::up(config(), guard.run.clone(), events()).await.unwrap()
}

/// A simulated pair (real agents in this process) in a temporary run directory.
pub struct Sim {
    /// The testbed.
    pub tb: Testbed,
    _tmp: tempfile::TempDir,
}

/// The simulated pair at step 200, with a short evaluation window (the agents run at host speed).
pub async fn sim() -> Sim {
    sim_with(|_| {}).await
}

/// [`sim`] with the config changed by `change` first.
pub async fn sim_with(change: impl FnOnce(&mut Config)) -> Sim {
    let tmp = tempfile::Builder::new().prefix("hitless-sim-").tempdir().unwrap();
    let mut cfg = config();
    cfg.evaluation_ms = 300;
    change(&mut cfg);
    let events = Events::new();
    if std::env::var_os("HITLESS_TEST_VERBOSE").is_some() {
        events.subscribe(|e| eprintln!("{}", hitless::events::render(e)));
    }
    let tb = Testbed::simulated(cfg, RunDir::new(tmp.path().join("run")), events).await.unwrap();
    Sim { tb, _tmp: tmp }
}

/// Every invariant of the report held.
pub fn assert_invariants(r: &Report) {
    for v in &r.invariants {
        assert!(v.ok, "invariant {} violated: {}", v.name, v.detail);
    }
    assert!(!r.invariants.is_empty(), "no invariant was checked");
}

/// Each processor's name, role and version as its agent reports them, in config order.
pub async fn roles_and_versions(tb: &Testbed) -> Vec<(String, Role, String)> {
    let mut out = Vec::new();
    for p in ProcId::BOTH {
        let s = tb.agents().status(p).await.unwrap();
        out.push((tb.name(p).to_string(), s.hello.role, s.hello.version));
    }
    out
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
            Event::ProcessorLost { processor, .. } => format!("  {processor} LOST"),
            Event::Failover { from, to, .. } => format!("  failover {from} -> {to}"),
            Event::Fault { fault } => format!("  FAULT {fault}"),
            Event::Evaluation { processor, acceptable, .. } => {
                format!("  {processor} evaluation acceptable={acceptable}")
            }
            Event::Feature { processor, feature, result } => format!("  {processor} {feature} {result}"),
            Event::ServiceGap { step, .. } => format!("service gap measured at {step}"),
            Event::Invariant { name, ok, .. } => format!("invariant {name}: {}", if *ok { "ok" } else { "VIOLATED" }),
            Event::Outcome { end, .. } => format!("outcome {end}"),
            Event::Progress { .. }
            | Event::Platform { .. }
            | Event::AgentReady { .. }
            | Event::AppDisk { .. }
            | Event::StepFailed { .. }
            | Event::WorkloadStarted { .. } => continue,
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
