//! Running scenarios: each on a fresh pair (QEMU, or the simulated pair),
//! its faults armed on the run's event stream, the orchestrator "killed"
//! (the run dropped mid-step, then resumed from the journal) or cancelled
//! when a fault says so; then the end and the invariants are judged against
//! the scenario's expectation. Each scenario's transcript and histories are
//! kept in its own directory.

use super::{Expected, Scenario};
use crate::config::Config;
use crate::error::{chain, Error};
use crate::events::{Entry, Event, Events};
use crate::faults::{self, Fault, ToCaller};
use crate::health;
use crate::procedure::{self, Cancel, End, Options, Report, Step};
use crate::rundir::RunDir;
use crate::testbed::{self, Testbed};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where scenarios run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// QEMU guests, per the pair config.
    Qemu,
    /// The simulated pair.
    Simulated,
}

/// How one scenario went.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The scenario.
    pub scenario: String,
    /// What it shows.
    pub description: String,
    /// The end reached: `upgraded`, `rolled-back`, `stopped-at-step N`, or `error: ...`.
    pub end: String,
    /// The end expected.
    pub expected: String,
    /// Invariants that failed.
    pub violated: Vec<String>,
    /// Invariants expected to fail.
    pub expected_violated: Vec<String>,
    /// Service gap per switchover, ms.
    pub gaps_ms: Vec<u64>,
    /// Unplanned failovers: from confirming the loss to the new active's promotion, ms.
    pub failover_ms: Vec<u64>,
    /// From the first fault to the first work unit acked by the other processor, ms (the service's view of a failover).
    pub acking_again_ms: Option<u64>,
    /// How long it took.
    pub duration_ms: u64,
    /// Whether it ended as expected.
    pub passed: bool,
    /// Why not, or why it was skipped.
    pub why: Option<String>,
    /// Skipped (what it needs is missing here), not failed.
    pub skipped: bool,
    /// Where its transcript and histories are.
    pub dir: PathBuf,
}

/// Run `s` on a fresh pair on `place`, keeping what it left in `out/<name>/`;
/// `echo` sees every event (live progress).
pub async fn run(
    s: &Scenario,
    place: Where,
    out: &Path,
    timeout: Option<Duration>,
    echo: impl Fn(&Entry) + Send + Sync + 'static,
) -> Outcome {
    // Absolute: image paths under it are handed to QEMU, which resolves relative ones elsewhere.
    let dir = std::path::absolute(out.join(&s.name)).unwrap_or_else(|_| out.join(&s.name));
    let t = Instant::now();
    let mut o = Outcome {
        scenario: s.name.clone(),
        description: s.description.clone(),
        end: String::new(),
        expected: s.expect.end.to_string(),
        violated: Vec::new(),
        expected_violated: s.expect.violated.clone(),
        gaps_ms: Vec::new(),
        failover_ms: Vec::new(),
        acking_again_ms: None,
        duration_ms: 0,
        passed: false,
        why: None,
        skipped: false,
        dir: dir.clone(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        o.end = format!("error: {}: {e}", dir.display());
        return o;
    }
    let events = Events::new();
    events.subscribe(echo);
    let result = attempt(s, place, &dir, &events, timeout).await;
    // Whatever happened, its record is kept.
    let entries = events.entries();
    if let Ok(y) = serde_saphyr::to_string(&entries) {
        let _ = std::fs::write(dir.join("events.yaml"), y);
    }
    o.duration_ms = t.elapsed().as_millis() as u64;
    o.acking_again_ms = acking_again(&entries, &dir);
    match result {
        Ok(Attempt::Skipped(why)) => {
            o.end = "skipped".into();
            o.skipped = true;
            o.passed = true;
            o.why = Some(why);
        }
        Ok(Attempt::Refused(e)) => {
            o.end = format!("stopped-at-step {}", Step::Initial);
            judge(&mut o, s, Some(Step::Initial), &[], Some(e));
        }
        Ok(Attempt::Ran { report, healthy }) => {
            o.end = match report.end {
                End::Completed => "upgraded".into(),
                End::RolledBack => "rolled-back".into(),
                End::Failed => format!("stopped-at-step {}", report.stopped_at.unwrap_or(Step::Initial)),
            };
            o.gaps_ms = report.gaps.iter().map(|g| g.1).collect();
            o.failover_ms = report.failovers.iter().map(|f| f.2).collect();
            o.violated = report.invariants.iter().filter(|v| !v.ok).map(|v| v.name.to_string()).collect();
            let stopped = (report.end == End::Failed).then(|| report.stopped_at.unwrap_or(Step::Initial));
            judge(&mut o, s, stopped, &report.invariants, None);
            if s.faults.iter().any(|f| f.fault == Fault::Cancel) && !healthy {
                o.passed = false;
                o.why = Some("cancelled, but the pair was not left with one active and one current standby".into());
            }
        }
        Err(e) => {
            o.end = format!("error: {}", chain(&e));
            o.why = Some(o.end.clone());
        }
    }
    o
}

/// From the first fault to the first ack served by a processor other than the
/// one that served just before it: the pause a client saw (histories in `dir`).
fn acking_again(entries: &[Entry], dir: &Path) -> Option<u64> {
    let fault_at = entries.iter().find(|e| matches!(e.event, Event::Fault { .. }))?.at_ms;
    let (run, started) = entries.iter().find_map(|e| match &e.event {
        Event::WorkloadStarted { run } => Some((run.clone(), e.at_ms)),
        _ => None,
    })?;
    let history = crate::history::History::read(&dir.join("history").join(format!("{run}.jsonl"))).ok()?;
    let acks: Vec<_> = history.records.iter().filter(|r| r.kind == crate::history::Kind::Ack).collect();
    let before = acks.iter().rev().find(|r| started + r.t_ms <= fault_at)?.processor.clone();
    let after = acks.iter().find(|r| started + r.t_ms > fault_at && r.processor != before)?;
    Some(started + after.t_ms - fault_at)
}

/// Compare what happened with what `s` expects.
fn judge(
    o: &mut Outcome,
    s: &Scenario,
    stopped: Option<Step>,
    verdicts: &[crate::invariants::Verdict],
    refused: Option<String>,
) {
    let end_ok = match s.expect.end {
        Expected::Any => true,
        Expected::Upgraded => o.end == "upgraded",
        Expected::RolledBack => o.end == "rolled-back",
        Expected::StoppedAt(step) => stopped == Some(step),
    };
    let mut violated = o.violated.clone();
    // Chaos judges only the invariants: a stopped run is never called consistent, by design.
    if s.expect.end == Expected::Any && stopped.is_some() {
        violated.retain(|v| v != "consistent-final-state");
    }
    let (mut want, mut got) = (s.expect.violated.clone(), violated);
    want.sort();
    got.sort();
    let mut why = Vec::new();
    if !end_ok {
        why.push(format!("ended {}, expected {}", o.end, s.expect.end));
    }
    if want != got {
        let detail: Vec<String> =
            verdicts.iter().filter(|v| !v.ok).map(|v| format!("{}: {}", v.name, v.detail)).collect();
        why.push(format!(
            "invariants violated {got:?}, expected {want:?}{}",
            if detail.is_empty() { String::new() } else { format!(" ({})", detail.join("; ")) }
        ));
    }
    if let Some(r) = refused {
        why.push(format!("refused: {r}"));
    }
    o.passed = end_ok && want == got;
    o.why = (!why.is_empty()).then(|| why.join("; "));
}

enum Attempt {
    Skipped(String),
    /// Refused before anything left service (preflight).
    Refused(String),
    Ran {
        report: Box<Report>,
        /// One active and one current standby afterwards.
        healthy: bool,
    },
}

/// Mounts a small tmpfs for the run directory while it lives (a full disk must be a real one).
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn small_disk(run: &Path) -> Result<SmallDisk, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root, to mount a small tmpfs for the run directory (a disk that can really fill)".into());
    }
    std::fs::create_dir_all(run).map_err(|e| format!("{}: {e}", run.display()))?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs"])
        .arg(run)
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    if !ok.success() {
        return Err(format!("mount -t tmpfs on {} failed", run.display()));
    }
    Ok(SmallDisk(run.to_path_buf()))
}

/// Where `version`'s image is in a private image cache of links to the shared
/// one (made once per scenario), so that [`spoil`] can replace it there
/// without touching the shared cache; the pair boots from the links meanwhile.
fn private_image(cfg: &mut Config, version: &str, dir: &Path) -> Result<PathBuf, Error> {
    // Built first if need be, in whichever cache `cfg` names now.
    let image = crate::images::app_image(cfg, version)?;
    let private = dir.join("images");
    if cfg.cache_dir != private {
        let io = |e: std::io::Error| Error::from(crate::images::ImageError::Io { path: private.clone(), source: e });
        std::fs::create_dir_all(&private).map_err(io)?;
        for entry in std::fs::read_dir(&cfg.cache_dir).map_err(io)?.flatten() {
            std::os::unix::fs::symlink(entry.path(), private.join(entry.file_name())).map_err(io)?;
        }
        cfg.cache_dir = private.clone();
    }
    Ok(private.join(image.path.file_name().unwrap_or_default()))
}

/// Replace `image` (a link) by a truncated copy under the same name: the
/// running machines keep the intact file they opened, the next reader gets
/// the corrupt one.
fn spoil(image: &Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::from(crate::images::ImageError::Io { path: image.to_path_buf(), source: e });
    let spoilt = image.with_extension("corrupt");
    std::fs::copy(image, &spoilt).map_err(io)?;
    let len = std::fs::metadata(&spoilt).map_err(io)?.len();
    std::fs::OpenOptions::new().write(true).open(&spoilt).and_then(|f| f.set_len(len / 2)).map_err(io)?;
    std::fs::rename(&spoilt, image).map_err(io)
}

async fn attempt(
    s: &Scenario,
    place: Where,
    dir: &Path,
    events: &Events,
    timeout: Option<Duration>,
) -> Result<Attempt, Error> {
    let mut cfg = Config::load(&s.config)?;
    if let Some(e) = s.evaluation_ms {
        cfg.evaluation_ms = e;
    }
    let run = RunDir::new(dir.join("run"));
    let _disk = match s.faults.iter().any(|f| f.fault == Fault::FillDisk) {
        true => match small_disk(&run.root) {
            Ok(d) => Some(d),
            Err(why) => return Ok(Attempt::Skipped(why)),
        },
        false => None,
    };
    let corrupt: Vec<&str> = s
        .faults
        .iter()
        .filter_map(|f| match &f.fault {
            Fault::CorruptImage(v) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let mut copies = Vec::new();
    if place == Where::Qemu {
        for v in &corrupt {
            copies.push(private_image(&mut cfg, v, dir)?);
        }
    }
    let mut tb = match place {
        Where::Qemu => Testbed::up(cfg, run.clone(), events.clone()).await?,
        Where::Simulated => Testbed::simulated(cfg, run.clone(), events.clone()).await?,
    };
    // Spoilt once the pair is up: a corrupt fallback image must not stop the bring-up.
    for image in &copies {
        spoil(image)?;
    }
    let result = drive(s, &mut tb, &corrupt, timeout).await;
    // Keep the record, then take the pair down.
    for f in ["transcript.yaml", "journal.json"] {
        let _ = std::fs::copy(run.root.join(f), dir.join(f));
    }
    let _ = copy_dir(&run.root.join("history"), &dir.join("history"));
    // The consoles and helper logs: what a failure on QEMU is read from.
    for p in tb.config().processors.values() {
        let to = dir.join(&p.name);
        if std::fs::create_dir_all(&to).is_ok() {
            for f in [run.serial(&p.name), run.qemu_log(&p.name), run.vsock_log(&p.name)] {
                if let Some(name) = f.file_name() {
                    let _ = std::fs::copy(&f, to.join(name));
                }
            }
        }
    }
    let healthy = health::assess(&tb.status().await).is_empty();
    drop(tb);
    if place == Where::Qemu {
        testbed::down(&run, &Events::new())?;
    }
    match result {
        Ok(report) => Ok(Attempt::Ran { report: Box::new(report), healthy }),
        Err(e @ Error::Preflight { .. }) => Ok(Attempt::Refused(chain(&e))),
        Err(e) => Err(e),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)?.flatten() {
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// The upgrade with the scenario's faults.
async fn drive(s: &Scenario, tb: &mut Testbed, corrupt: &[&str], timeout: Option<Duration>) -> Result<Report, Error> {
    if let Some(sim) = tb.simulated_pair() {
        for v in corrupt {
            sim.corrupt(v);
        }
    }
    let handles = tb.fault_handles();
    for f in s.faults.iter().filter(|f| f.at.before && f.fault == Fault::FillDisk) {
        handles.inject(&f.fault).await;
    }
    let live: Vec<_> = s.faults.iter().filter(|f| !f.at.before).cloned().collect();
    let mut asks = faults::arm(&live, handles, tokio::runtime::Handle::current());
    let opts = Options { resume: false, workload: s.workload };
    let (canceller, cancel) = Cancel::new();
    // Stopped cleanly, as Ctrl-C would, when the scenario takes too long; aborted when it is over.
    let _timer = AbortOnDrop(timeout.map(|t| {
        let canceller = canceller.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            canceller.cancel_because(&format!("timed out after {}", crate::faults::Dur(t)));
        })
    }));
    let first = {
        let fut = procedure::upgrade_with(tb, &s.to, opts, Some(cancel));
        tokio::pin!(fut);
        let mut asking = true;
        loop {
            tokio::select! {
                r = &mut fut => break Some(r),
                ask = asks.recv(), if asking => match ask {
                    Some(ToCaller::Cancel) => canceller.cancel(),
                    Some(ToCaller::KillOrchestrator) => break None,
                    None => asking = false,
                },
            }
        }
    };
    match first {
        Some(r) => r,
        None => {
            // The orchestrator was killed mid-step (its run dropped): a new one resumes from the journal.
            tb.events()
                .emit(Event::Progress { message: "the orchestrator was killed; resuming from the journal".into() });
            tokio::time::sleep(Duration::from_millis(100)).await;
            procedure::upgrade(tb, &s.to, Options { resume: true, workload: s.workload }).await
        }
    }
}

/// Aborts a timer task when the scenario is over.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Scenario names, ends and figures as a table.
pub fn table(results: &[Outcome]) -> String {
    let mut out = format!(
        "{:<34} {:<22} {:<22} {:<6} {:<40} {:>12} {:>10} {:>8}\n",
        "SCENARIO", "END", "EXPECTED", "RESULT", "INVARIANTS", "GAPS ms", "FAILOVER", "TIME s"
    );
    for r in results {
        let inv =
            if r.violated.is_empty() { "all held".to_string() } else { format!("violated: {}", r.violated.join(", ")) };
        let gaps = r.gaps_ms.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let fo = r.failover_ms.iter().map(|m| format!("{m}ms")).collect::<Vec<_>>().join(",");
        let result = if r.skipped {
            "skip"
        } else if r.passed {
            "ok"
        } else {
            "FAIL"
        };
        out.push_str(&format!(
            "{:<34} {:<22} {:<22} {:<6} {:<40} {:>12} {:>10} {:>8.1}\n",
            r.scenario,
            r.end.chars().take(22).collect::<String>(),
            r.expected,
            result,
            inv.chars().take(40).collect::<String>(),
            if gaps.is_empty() { "-".into() } else { gaps },
            if fo.is_empty() { "-".into() } else { fo },
            r.duration_ms as f64 / 1000.0
        ));
    }
    out
}
