//! The fault catalogue: what a run can do to a pair, on QEMU and on the
//! simulated pair alike (each is an operation of the machine backend or of
//! the agent), and when ([`Trigger`]): as a step begins, at a named event
//! inside it, after a delay, at a time offset from the start, or before the
//! run. [`arm`] watches the run's event stream and injects each fault when
//! its trigger fires; every injection is an event ([`Event::Fault`]) so
//! transcripts and reports show it.
//!
//! Two faults act on the orchestrator, not the pair: killing it mid-step and
//! cancelling it (Ctrl-C). [`arm`] reports those to the caller, which runs the
//! orchestrator.

use crate::agents::Agents;
use crate::events::{Event, Events};
use crate::machine::{Backend, LinkDir, Machines};
use crate::pair::{Pair, ProcId};
use crate::procedure::Step;
use hitless_protocol::ControlRequest;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A duration written with its unit: `300ms`, `2s`, `1.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        let bad = || format!("{s:?}: a duration like 300ms, 2s or 1.5s");
        let (num, scale) = match (s.strip_suffix("ms"), s.strip_suffix('s')) {
            (Some(n), _) => (n, 1.0),
            (None, Some(n)) => (n, 1000.0),
            (None, None) => return Err(bad()),
        };
        let v: f64 = num.trim().parse().map_err(|_| bad())?;
        if !(0.0..=3_600_000.0).contains(&(v * scale)) {
            return Err(bad());
        }
        Ok(Dur(Duration::from_millis((v * scale).round() as u64)))
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A named event inside a step, at which a fault can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Moment {
    /// A processor was made active.
    Promoted,
    /// A processor was made standby.
    MadeStandby,
    /// A processor was taken out of service.
    TakenOutOfService,
    /// A (re)loaded processor's agent answered.
    Booted,
    /// The evaluation at 204 gave its verdict.
    Evaluated,
}

impl Moment {
    fn matches(self, e: &Event) -> bool {
        use hitless_protocol::Role;
        match (self, e) {
            (Moment::Promoted, Event::Role { role: Role::Active, .. })
            | (Moment::MadeStandby, Event::Role { role: Role::Standby, .. })
            | (Moment::TakenOutOfService, Event::Role { role: Role::OutOfService, .. })
            | (Moment::Booted, Event::AgentReady { .. })
            | (Moment::Evaluated, Event::Evaluation { .. }) => true,
            (
                Moment::Promoted | Moment::MadeStandby | Moment::TakenOutOfService | Moment::Booted | Moment::Evaluated,
                _,
            ) => false,
        }
    }
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// As this step begins (or, with `event`, at that event inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// The named event inside `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Moment>,
    /// This long after the step began (or the event happened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Dur>,
    /// Instead of a step: this long after the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Dur>,
    /// Instead of a step: before the run starts (corrupt images, a full disk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub before: bool,
}

impl Trigger {
    /// What is wrong with this trigger's shape, if anything.
    pub fn problem(&self) -> Option<String> {
        match (self.step, self.time, self.before) {
            (Some(_), None, false) | (None, Some(_), false) | (None, None, true) => {}
            _ => return Some("`at` needs exactly one of `step`, `time` or `before: true`".into()),
        }
        if let Some(end) = self.step.filter(|s| s.is_end()) {
            return Some(format!(
                "`step: {end}` is where a run ends, not a step a fault can strike in (200-207 or 204-fallback)"
            ));
        }
        if self.event.is_some() && self.step.is_none() {
            return Some("`event` names an event inside a `step`".into());
        }
        if self.after.is_some() && self.step.is_none() {
            return Some("`after` counts from a `step` (use `time` for an offset from the start)".into());
        }
        None
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.step, self.time) {
            _ if self.before => f.write_str("before the run"),
            (Some(s), _) => {
                match self.event {
                    Some(m) => {
                        write!(f, "at {} in step {s}", serde_json::to_string(&m).unwrap_or_default().trim_matches('"'))?
                    }
                    None => write!(f, "as step {s} begins")?,
                }
                match self.after {
                    Some(d) => write!(f, " +{d}"),
                    None => Ok(()),
                }
            }
            (None, Some(t)) => write!(f, "at {t}"),
            (None, None) => f.write_str("never"),
        }
    }
}

/// What to do. Processors are named (`p121`) or designated by role when the
/// fault fires (`active`, `standby`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Kill the processor's machine (SIGKILL of its QEMU; the simulated processor stops).
    Kill(String),
    /// Freeze its machine for a while (QMP `stop`, then `cont`).
    Pause {
        /// Who.
        processor: String,
        /// How long.
        #[serde(rename = "for")]
        length: Dur,
    },
    /// Cut its end of the link for a while (QMP `set_link`, or one way).
    CutLink {
        /// Who.
        processor: String,
        /// How long.
        #[serde(rename = "for")]
        length: Dur,
        /// Both ways (default), or only what it sends (`out`) or receives (`in`).
        #[serde(default = "both")]
        direction: LinkDir,
    },
    /// Crash the agent inside the processor; its machine stays up.
    CrashAgent(String),
    /// Truncate a version's app image (before the run).
    CorruptImage(String),
    /// Fill the run directory's filesystem (needs the run directory on its own small filesystem).
    FillDisk,
    /// Kill the orchestrator mid-step; the scenario then resumes the upgrade.
    KillOrchestrator,
    /// Cancel the upgrade, as Ctrl-C or SIGTERM would.
    Cancel,
}

fn both() -> LinkDir {
    LinkDir::Both
}

impl Fault {
    /// The processor designation the fault is about, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Fault::Kill(p) | Fault::CrashAgent(p) => Some(p),
            Fault::Pause { processor, .. } | Fault::CutLink { processor, .. } => Some(processor),
            Fault::CorruptImage(_) | Fault::FillDisk | Fault::KillOrchestrator | Fault::Cancel => None,
        }
    }

    /// Whether it is done before the run starts.
    pub fn before_run(&self) -> bool {
        matches!(self, Fault::CorruptImage(_))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(p) => write!(f, "kill {p}"),
            Fault::Pause { processor, length } => write!(f, "pause {processor} for {length}"),
            Fault::CutLink { processor, length, direction: LinkDir::Both } => {
                write!(f, "cut {processor}'s link for {length}")
            }
            Fault::CutLink { processor, length, direction } => {
                let way = if *direction == LinkDir::Out { "outgoing" } else { "incoming" };
                write!(f, "cut {processor}'s {way} link for {length}")
            }
            Fault::CrashAgent(p) => write!(f, "crash {p}'s agent"),
            Fault::CorruptImage(v) => write!(f, "corrupt the image of {v}"),
            Fault::FillDisk => f.write_str("fill the run directory's disk"),
            Fault::KillOrchestrator => f.write_str("kill the orchestrator"),
            Fault::Cancel => f.write_str("cancel the upgrade"),
        }
    }
}

/// One fault of a plan, with its trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Planned {
    /// When.
    pub at: Trigger,
    /// What.
    pub fault: Fault,
}

/// What a fault acts through.
#[derive(Clone)]
pub struct Handles {
    /// The machines.
    pub machines: Arc<Backend>,
    /// The agents.
    pub agents: Agents,
    /// Where faults are reported.
    pub events: Events,
    /// The processors' names.
    pub names: Pair<String>,
    /// The run directory (for a full disk).
    pub run_root: std::path::PathBuf,
}

impl Handles {
    /// The processor `who` designates now: a name, `active` or `standby`.
    async fn resolve(&self, who: &str) -> Option<ProcId> {
        match who {
            "active" | "standby" => {
                let active = self.agents.active().await?;
                Some(if who == "active" { active } else { active.other() })
            }
            name => self.names.find(|n| n == name),
        }
    }

    /// Do `fault` now; for a timed fault (pause, cut link), what undoes it and when.
    pub async fn apply(&self, fault: &Fault) -> Option<(Duration, Undo)> {
        let say = |what: String| self.events.emit(Event::Fault { fault: what });
        let target = match fault.target() {
            Some(who) => match self.resolve(who).await {
                Some(p) => Some(p),
                None => {
                    say(format!("{fault}: nobody is {who} now; nothing done"));
                    return None;
                }
            },
            None => None,
        };
        let name = |p: ProcId| self.names[p].clone();
        let failed = |e: &dyn std::fmt::Display| format!("{fault}: failed: {e}");
        match (fault, target) {
            (Fault::Kill(_), Some(p)) => {
                self.machines.kill(p).await;
                say(format!("killed {}'s machine", name(p)));
            }
            (Fault::Pause { length, .. }, Some(p)) => match self.machines.pause(p).await {
                Ok(()) => {
                    say(format!("paused {} for {length}", name(p)));
                    return Some((length.0, Undo::Resume(p)));
                }
                Err(e) => say(failed(&e)),
            },
            (Fault::CutLink { length, direction, .. }, Some(p)) => {
                match self.machines.set_link(p, *direction, false).await {
                    Ok(()) => {
                        say(format!("cut {}'s link ({direction:?}) for {length}", name(p)));
                        return Some((length.0, Undo::Relink(p, *direction)));
                    }
                    Err(e) => say(failed(&e)),
                }
            }
            (Fault::CrashAgent(_), Some(p)) => {
                match self.agents.request(p, &ControlRequest::Crash, Duration::from_secs(5)).await {
                    Ok(_) => {
                        // Done when it is done: the agent answers first, then exits.
                        let deadline = std::time::Instant::now() + Duration::from_secs(5);
                        while self.machines.agent_gone(p).is_none() && std::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        say(format!("crashed {}'s agent", name(p)));
                    }
                    Err(e) => say(failed(&crate::error::chain(&e))),
                }
            }
            (Fault::FillDisk, _) => match fill(&self.run_root).await {
                Ok(bytes) => say(format!("filled the run directory's disk ({} KiB written)", bytes >> 10)),
                Err(e) => say(failed(&e)),
            },
            (Fault::KillOrchestrator | Fault::Cancel | Fault::CorruptImage(_), _) => say(format!("{fault}")),
            (Fault::Kill(_) | Fault::Pause { .. } | Fault::CutLink { .. } | Fault::CrashAgent(_), None) => {}
        }
        None
    }

    /// Undo a timed fault.
    pub async fn undo(&self, u: Undo) {
        let say = |what: String| self.events.emit(Event::Fault { fault: what });
        let (p, done) = match u {
            Undo::Resume(p) => (p, self.machines.resume(p).await.map(|()| "resumed")),
            Undo::Relink(p, dir) => (p, self.machines.set_link(p, dir, true).await.map(|()| "restored the link of")),
        };
        match done {
            Ok(what) => say(format!("{what} {}", self.names[p])),
            Err(e) => say(format!("undoing a fault on {}: {e}", self.names[p])),
        }
    }

    /// Do `fault` now, and undo it after its length if it is timed.
    pub async fn inject(&self, fault: &Fault) {
        if let Some((after, undo)) = self.apply(fault).await {
            tokio::time::sleep(after).await;
            self.undo(undo).await;
        }
    }
}

/// What undoes a timed fault.
#[derive(Debug, Clone, Copy)]
pub enum Undo {
    /// Resume a paused machine.
    Resume(ProcId),
    /// Restore a cut link.
    Relink(ProcId, LinkDir),
}

/// Write zeros into `dir/filler` until the filesystem is full; bytes written.
async fn fill(dir: &std::path::Path) -> std::io::Result<u64> {
    let path = dir.join("filler");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let chunk = vec![0u8; 64 << 10];
        let mut n = 0u64;
        // Bounded: at most 64 GiB, far more than any run directory's own filesystem should hold.
        for _ in 0..(1u64 << 20) {
            match f.write_all(&chunk) {
                Ok(()) => n += chunk.len() as u64,
                Err(e) if e.raw_os_error() == Some(28) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What the caller must do itself when a trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToCaller {
    /// Kill the orchestrator (drop the run) now.
    KillOrchestrator,
    /// Cancel the upgrade now.
    Cancel,
}

/// Watch `events` and inject each of `plan`'s faults when its trigger fires
/// (on `rt`). A fault at a moment (no delay) is applied before the run goes
/// on: the event's sink waits for it, so "as step 203 begins" is exactly that
/// and not a few milliseconds into the step. Faults the caller must do itself
/// are sent on the returned channel.
pub fn arm(
    plan: &[Planned],
    handles: Handles,
    rt: tokio::runtime::Handle,
) -> tokio::sync::mpsc::UnboundedReceiver<ToCaller> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let fire = {
        let (handles, rt, tx) = (handles.clone(), rt.clone(), tx.clone());
        move |p: &Planned, delay: Duration| {
            let (handles, tx, fault) = (handles.clone(), tx.clone(), p.fault.clone());
            let to_caller = match fault {
                Fault::KillOrchestrator => Some(ToCaller::KillOrchestrator),
                Fault::Cancel => Some(ToCaller::Cancel),
                _ => None,
            };
            if delay.is_zero() {
                // Now, on a thread of its own (the sink runs inside the orchestrator's task),
                // on connections of its own (the orchestrator's runtime is waiting for this).
                let mut h = handles.clone();
                h.agents = h.agents.with_own_connections();
                let undo = std::thread::scope(|scope| {
                    scope
                        .spawn(move || {
                            let fault_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                            fault_rt.block_on(h.apply(&fault))
                        })
                        .join()
                        .ok()
                        .flatten()
                });
                if let Some(c) = to_caller {
                    let _ = tx.send(c);
                }
                if let Some((after, u)) = undo {
                    rt.spawn(async move {
                        tokio::time::sleep(after).await;
                        handles.undo(u).await;
                    });
                }
                return;
            }
            rt.spawn(async move {
                tokio::time::sleep(delay).await;
                handles.inject(&fault).await;
                if let Some(c) = to_caller {
                    let _ = tx.send(c);
                }
            });
        }
    };
    let mut on_events = Vec::new();
    for p in plan {
        match (p.at.step, p.at.time) {
            (_, Some(t)) if !p.at.before => fire(p, t.0),
            (Some(_), _) => on_events.push((p.clone(), false)),
            _ => {}
        }
    }
    if on_events.is_empty() {
        return rx;
    }
    // Which step runs now, and which planned faults have fired.
    let state = Mutex::new((None::<Step>, on_events));
    handles.events.clone().subscribe(move |e| {
        let due: Vec<Planned> = {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Event::StepBegin { step, .. } = &e.event {
                st.0 = Some(*step);
            }
            let current = st.0;
            let mut due = Vec::new();
            for (p, fired) in st.1.iter_mut() {
                if *fired || p.at.step != current {
                    continue;
                }
                let now = match p.at.event {
                    None => matches!(e.event, Event::StepBegin { .. }),
                    Some(m) => m.matches(&e.event),
                };
                if now {
                    *fired = true;
                    due.push(p.clone());
                }
            }
            due
        };
        // Outside the lock: applying a fault emits events, which come back here.
        for p in due {
            fire(&p, p.at.after.map_or(Duration::ZERO, |d| d.0));
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_their_unit() {
        assert_eq!("300ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(300))));
        assert_eq!("1.5s".parse::<Dur>(), Ok(Dur(Duration::from_millis(1500))));
        assert_eq!(Dur(Duration::from_secs(2)).to_string(), "2s");
        assert!("300".parse::<Dur>().is_err());
        assert!("-1s".parse::<Dur>().is_err());
    }

    #[test]
    fn a_trigger_is_a_step_a_time_or_before() {
        let t = |step: Option<u16>, time: bool, before: bool| Trigger {
            step: step.and_then(|s| Step::from_number(&s.to_string())),
            event: None,
            after: None,
            time: time.then_some(Dur(Duration::from_secs(1))),
            before,
        };
        assert_eq!(t(Some(203), false, false).problem(), None);
        assert_eq!(t(None, true, false).problem(), None);
        assert_eq!(t(None, false, true).problem(), None);
        assert!(t(Some(203), true, false).problem().is_some());
        assert!(t(None, false, false).problem().is_some());
        let mut e = t(None, true, false);
        e.event = Some(Moment::Promoted);
        assert!(e.problem().unwrap_or_default().contains("inside a `step`"));
    }
}
