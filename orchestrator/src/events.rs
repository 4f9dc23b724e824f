//! One typed event stream. Everything the orchestrator does is an [`Event`];
//! the terminal progress log, the YAML transcript and the tests all consume
//! the same stream. Times, pids and paths live in fields named `*_ms`, `pid`
//! or `path`/`image`/`overlay`, so that a snapshot can redact them.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A line of progress with no structure.
    Progress {
        /// What.
        message: String,
    },
    /// The accelerator was chosen.
    Accelerator {
        /// Which.
        accel: String,
        /// Why.
        reason: String,
    },
    /// A QEMU process started booting a processor.
    ProcessorStarted {
        /// Processor.
        processor: String,
        /// Version it boots.
        version: String,
        /// The read-only version image.
        image: String,
        /// Its fresh overlay.
        overlay: String,
        /// QEMU pid.
        pid: u32,
    },
    /// A processor's agent answered.
    AgentReady {
        /// Processor.
        processor: String,
        /// Version the agent reports.
        version: String,
        /// From QEMU start to agent answering.
        boot_ms: u64,
    },
    /// A QMP action or query and what it showed.
    Qmp {
        /// Processor.
        processor: String,
        /// QMP command(s).
        action: String,
        /// Result.
        detail: String,
    },
    /// A role command applied.
    Role {
        /// Processor.
        processor: String,
        /// New role.
        role: String,
        /// Epoch.
        epoch: u64,
    },
    /// A processor stopped.
    ProcessorStopped {
        /// Processor.
        processor: String,
        /// How (quit, killed, crashed).
        how: String,
    },
    /// A procedure step begins.
    StepBegin {
        /// Step number of Fig. 6 (e.g. "202", "204-fallback").
        step: String,
        /// What it does.
        name: String,
    },
    /// A procedure step ended; the pair after it.
    StepDone {
        /// Step number.
        step: String,
        /// Each processor: name, role, version.
        pair: Vec<ProcView>,
        /// Step duration.
        took_ms: u64,
    },
    /// A feature toggle.
    Feature {
        /// Processor.
        processor: String,
        /// Feature.
        feature: String,
        /// Outcome.
        result: String,
    },
    /// The new version's evaluation.
    Evaluation {
        /// Processor evaluated.
        processor: String,
        /// Verdict.
        acceptable: bool,
        /// Reasons.
        reasons: Vec<String>,
    },
    /// A service gap measured during a switchover.
    ServiceGap {
        /// Which switchover (step).
        step: String,
        /// Longest time no work unit was acked.
        gap_ms: u64,
    },
    /// An invariant check.
    Invariant {
        /// Which.
        name: String,
        /// Held or not.
        ok: bool,
        /// Evidence.
        detail: String,
    },
    /// The run's outcome.
    Outcome {
        /// completed | rolled-back | failed | planned
        result: String,
        /// Summary.
        message: String,
    },
}

/// A processor's role and version, as in the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProcView {
    /// Name.
    pub processor: String,
    /// Role.
    pub role: String,
    /// Version.
    pub version: String,
}

/// An event and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Milliseconds since the stream started.
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

type Sink = Box<dyn Fn(&Entry) + Send + Sync>;

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
        Events {
            inner: Arc::new(Inner {
                start: Instant::now(),
                entries: Mutex::new(Vec::new()),
                sinks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Add a sink.
    pub fn subscribe(&self, f: impl Fn(&Entry) + Send + Sync + 'static) {
        self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
    }

    /// Emit an event.
    pub fn emit(&self, event: Event) {
        let entry = Entry { at_ms: self.inner.start.elapsed().as_millis() as u64, event };
        for s in self.inner.sinks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s(&entry);
        }
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
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

/// One readable line for the terminal.
pub fn render(e: &Entry) -> String {
    let t = format!("[{:>7.3}s]", e.at_ms as f64 / 1000.0);
    let body = match &e.event {
        Event::Progress { message } => message.clone(),
        Event::Accelerator { accel, reason } => format!("accelerator: {accel} ({reason})"),
        Event::ProcessorStarted { processor, version, image, .. } => {
            format!("{processor}: booting {version} from {image}")
        }
        Event::AgentReady { processor, version, boot_ms } => {
            format!("{processor}: agent {version} ready after {boot_ms} ms")
        }
        Event::Qmp { processor, action, detail } => format!("{processor}: QMP {action}: {detail}"),
        Event::Role { processor, role, epoch } => format!("{processor}: now {role} (epoch {epoch})"),
        Event::ProcessorStopped { processor, how } => format!("{processor}: stopped ({how})"),
        Event::StepBegin { step, name } => format!("step {step}: {name}"),
        Event::StepDone { step, pair, took_ms } => {
            let p: Vec<String> = pair.iter().map(|v| format!("{} {} {}", v.processor, v.role, v.version)).collect();
            format!("step {step} done in {took_ms} ms: {}", p.join(", "))
        }
        Event::Feature { processor, feature, result } => format!("{processor}: feature {feature}: {result}"),
        Event::Evaluation { processor, acceptable, reasons } => {
            format!(
                "{processor}: evaluation: {} ({})",
                if *acceptable { "acceptable" } else { "NOT acceptable" },
                reasons.join("; ")
            )
        }
        Event::ServiceGap { step, gap_ms } => format!("service gap at step {step}: {gap_ms} ms"),
        Event::Invariant { name, ok, detail } => {
            format!("invariant {name}: {} ({detail})", if *ok { "ok" } else { "VIOLATED" })
        }
        Event::Outcome { result, message } => format!("outcome: {result}: {message}"),
    };
    format!("{t} {body}")
}
