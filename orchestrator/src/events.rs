//! One typed event stream. Everything the orchestrator does is an [`Event`];
//! the terminal progress log, the YAML transcript and the tests all consume
//! the same stream. Times, pids and paths live in fields named `*_ms`, `pid`
//! or `image`/`overlay`/`backing`, so that a snapshot can redact them.

use crate::platform::Platform;
use crate::procedure::{End, Step};
use hitless_protocol::Role;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A line of progress with no structure.
    Progress {
        /// What happened.
        message: String,
    },
    /// Where the processors run, and why there.
    Platform {
        /// QEMU (with accelerator and vsock) or the simulated pair.
        platform: Platform,
        /// Why (e.g. why not KVM).
        reason: String,
    },
    /// A processor's machine started booting a version.
    ProcessorStarted {
        processor: String,
        /// Version it boots.
        version: String,
        /// What it boots (the version image).
        image: String,
        /// Its fresh copy-on-write overlay, for QEMU.
        overlay: Option<String>,
        /// Its process, for QEMU.
        pid: Option<u32>,
    },
    /// A processor's agent answered after a start.
    AgentReady {
        processor: String,
        /// Version the agent reports.
        version: String,
        /// From the machine's start to the agent answering.
        boot_ms: u64,
    },
    /// What a reloaded processor's machine shows it booted (QMP for QEMU).
    AppDisk {
        processor: String,
        /// The overlay it has open.
        overlay: String,
        /// The version image under it.
        backing: String,
        /// The image it ran before the reload.
        was: String,
    },
    /// A role command the agent applied.
    Role {
        processor: String,
        /// Its new role.
        role: Role,
        /// The command's epoch.
        epoch: u64,
    },
    /// A processor's machine stopped.
    ProcessorStopped {
        processor: String,
        /// How: QMP quit, killed, crashed.
        how: String,
    },
    /// The watch found the active lost (confirmed, before it was fenced).
    ProcessorLost {
        /// Processor.
        processor: String,
        /// How it was found lost.
        how: String,
    },
    /// An unplanned failover: the lost active's standby was promoted.
    Failover {
        /// The processor lost.
        from: String,
        /// The processor that took over.
        to: String,
        /// From confirming the loss to the new active's promotion.
        took_ms: u64,
    },
    /// A workload started: its history (`history/<run>.jsonl` beside the
    /// transcript) counts time from this event.
    WorkloadStarted {
        /// The run id, which prefixes its request ids and names its history file.
        run: String,
    },
    /// A fault was injected (or could not be).
    Fault {
        /// What was done.
        fault: String,
    },
    /// A procedure step begins.
    StepBegin {
        /// The step of Fig. 6.
        step: Step,
        /// What it does.
        name: String,
    },
    /// A step failed; the whole cause chain.
    StepFailed {
        /// The step.
        step: Step,
        /// Why, every cause joined by ": ".
        why: String,
    },
    /// A procedure step ended; the pair after it.
    StepDone {
        /// The step.
        step: Step,
        /// Each processor: name, role, version.
        pair: Vec<ProcView>,
        /// How long the step took.
        took_ms: u64,
    },
    /// A feature toggle and its answer.
    Feature {
        processor: String,
        /// Feature name.
        feature: String,
        /// "enabled", or "refused: <the agent's reason>".
        result: String,
    },
    /// The new version's evaluation at step 204.
    Evaluation {
        /// Processor evaluated.
        processor: String,
        /// The verdict.
        acceptable: bool,
        /// Every check, passed or not.
        reasons: Vec<String>,
    },
    /// A service gap measured during a switchover.
    ServiceGap {
        /// The switchover's step.
        step: Step,
        /// Longest time no work unit was acked.
        gap_ms: u64,
    },
    /// An invariant check.
    Invariant {
        /// Which invariant.
        name: String,
        /// Whether it held.
        ok: bool,
        /// The evidence.
        detail: String,
        /// The request ids that violate it (left out of the transcript when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offenders: Vec<String>,
    },
    /// How the run ended.
    Outcome {
        /// Completed, rolled back or failed.
        end: End,
        /// One-line summary.
        message: String,
    },
}

/// A processor as seen at the end of a step: its role, or why it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seen {
    /// Serving work units.
    Active,
    /// Receiving run-state updates.
    Standby,
    /// Running, in no role.
    OutOfService,
    /// Its machine runs but its agent does not answer.
    Unreachable,
    /// Its machine does not run.
    Down,
}

impl From<Role> for Seen {
    fn from(r: Role) -> Self {
        match r {
            Role::Active => Seen::Active,
            Role::Standby => Seen::Standby,
            Role::OutOfService => Seen::OutOfService,
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Seen::Active => "active",
            Seen::Standby => "standby",
            Seen::OutOfService => "out-of-service",
            Seen::Unreachable => "unreachable",
            Seen::Down => "down",
        })
    }
}

/// A processor's role and version, as in the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcView {
    /// Processor name.
    pub processor: String,
    /// Its role, or why none.
    pub role: Seen,
    /// The version it runs (booted last, if it does not answer).
    pub version: String,
}

/// An event and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the stream started.
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

type Sink = Arc<dyn Fn(&Entry) + Send + Sync>;

/// The stream: every event is recorded and handed to each sink.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    start: Instant,
    entries: Mutex<Vec<Entry>>,
    sinks: Mutex<Vec<Sink>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A stream with no sinks (it still records).
    pub fn new() -> Self {
        let inner = Inner { start: Instant::now(), entries: Mutex::new(Vec::new()), sinks: Mutex::new(Vec::new()) };
        Events { inner: Arc::new(inner) }
    }

    /// Add a sink; it sees every event from now on.
    pub fn subscribe(&self, f: impl Fn(&Entry) + Send + Sync + 'static) {
        self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(f));
    }

    /// Emit an event: recorded, then handed to each sink. No lock is held
    /// while a sink runs, so a sink may emit too (a fault it injects does).
    pub fn emit(&self, event: Event) {
        let entry = Entry { at_ms: self.inner.start.elapsed().as_millis() as u64, event };
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner()).push(entry.clone());
        let sinks: Vec<Sink> = self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for s in sinks {
            s(&entry);
        }
    }

    /// Shorthand for a progress line.
    pub fn progress(&self, message: impl Into<String>) {
        self.emit(Event::Progress { message: message.into() });
    }

    /// Everything emitted so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// One readable line for the terminal.
pub fn render(e: &Entry) -> String {
    let t = format!("[{:>7.3}s]", e.at_ms as f64 / 1000.0);
    let body = match &e.event {
        Event::Progress { message } => message.clone(),
        Event::Platform { platform, reason } => format!("platform: {platform} ({reason})"),
        Event::ProcessorStarted { processor, version, image, .. } => {
            format!("{processor}: booting {version} from {image}")
        }
        Event::AgentReady { processor, version, boot_ms } => {
            format!("{processor}: agent {version} ready after {boot_ms} ms")
        }
        Event::AppDisk { processor, overlay, backing, was } => format!(
            "{processor}: app disk now {} over {} (was over {})",
            file_name(overlay),
            file_name(backing),
            file_name(was)
        ),
        Event::Role { processor, role, epoch } => format!("{processor}: now {role} (epoch {epoch})"),
        Event::ProcessorStopped { processor, how } => format!("{processor}: stopped ({how})"),
        Event::ProcessorLost { processor, how } => format!("{processor}: LOST ({how})"),
        Event::Failover { from, to, took_ms } => format!("failover: {to} took over from {from} in {took_ms} ms"),
        Event::Fault { fault } => format!("FAULT: {fault}"),
        Event::WorkloadStarted { run } => format!("workload {run} started"),
        Event::StepBegin { step, name } => format!("step {step}: {name}"),
        Event::StepFailed { step, why } => format!("step {step} failed: {why}"),
        Event::StepDone { step, pair, took_ms } => {
            let p: Vec<String> = pair.iter().map(|v| format!("{} {} {}", v.processor, v.role, v.version)).collect();
            format!("step {step} done in {took_ms} ms: {}", p.join(", "))
        }
        Event::Feature { processor, feature, result } => format!("{processor}: feature {feature}: {result}"),
        Event::Evaluation { processor, acceptable, reasons } => {
            let verdict = if *acceptable { "acceptable" } else { "NOT acceptable" };
            format!("{processor}: evaluation: {verdict} ({})", reasons.join("; "))
        }
        Event::ServiceGap { step, gap_ms } => format!("service gap at step {step}: {gap_ms} ms"),
        Event::Invariant { name, ok, detail, .. } => {
            format!("invariant {name}: {} ({detail})", if *ok { "ok" } else { "VIOLATED" })
        }
        Event::Outcome { end, message } => format!("outcome: {end}: {message}"),
    };
    format!("{t} {body}")
}
