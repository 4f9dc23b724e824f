//! The machine backend: where processors run and how they are started,
//! stopped, broken and observed. Two backends offer the same operations —
//! QEMU guests ([`qemu`]) and the simulated pair of in-process agents
//! ([`sim`]) — so the testbed, the procedure and every fault are written once
//! and run on both.
//!
//! The contract is the [`Machines`] trait; [`Backend`] is the closed set of
//! the two and dispatches to them. An enum rather than `dyn Machines`: there
//! are exactly two backends, the operations are `async`, and static dispatch
//! keeps them free of boxing while the trait still makes the compiler check
//! that both backends offer every operation.

pub mod qemu;
pub mod sim;

use crate::channel::Channel;
use crate::images::ImageError;
use crate::pair::ProcId;
use hitless_protocol::FeatureSet;
use std::time::Instant;

/// A software version as a backend runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Software {
    /// The version the agent reports (its manifest's).
    pub version: String,
    /// Features it supports (its new ones are disabled until step 207).
    pub features: FeatureSet,
    /// Wire protocol version it speaks.
    pub proto: u32,
    /// What a processor of this version boots, as the machine shows it: the
    /// app image's path for QEMU, the in-process build for the simulated pair.
    pub image: String,
    /// What the backend starts.
    pub artifact: Artifact,
}

/// What a backend starts for a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// An app disk to boot a guest from.
    Disk(crate::images::AppImage),
    /// An agent build to run in-process.
    InProcess(hitless_agent::build::Build),
}

/// A processor's app disk as its machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppDisk {
    /// The copy-on-write overlay the machine has open ("-" in-process).
    pub overlay: String,
    /// The version image under it: compare with [`Software::image`].
    pub backing: String,
}

/// A start in progress.
#[derive(Debug)]
pub struct Boot {
    /// When the machine was started.
    pub started: Instant,
    /// The machine's process id, if it has its own process.
    pub pid: Option<u32>,
    /// The overlay it boots, if any.
    pub overlay: Option<String>,
    /// For guests whose vsock daemon must not be dialled too early: the console to watch.
    pub console: Option<qemu::console::ConsoleWatch>,
}

impl Boot {
    /// Whether the agent may be dialled now. Connecting to vhost-device-vsock
    /// 0.3.0 before the guest's vsock driver is up can wedge the daemon for
    /// good, so a guest behind it is dialled only after the agent printed its
    /// "listening" line.
    pub fn may_connect(&mut self) -> bool {
        self.console.as_mut().is_none_or(|c| c.saw(qemu::console::LISTENING_MARK))
    }
}

/// What a machine left to explain a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// The first line that says what went wrong (an `init:` message, a panic), once.
    pub cause: Option<String>,
    /// The output to read, labelled (console tail, QEMU log tail, exit reason).
    pub detail: String,
    /// The console log, if the machine has one.
    pub console: Option<std::path::PathBuf>,
}

/// What went wrong with a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A helper process (QEMU, the vsock daemon) could not be started.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    /// A QMP command failed.
    #[error(transparent)]
    Qmp(#[from] qemu::qmp::QmpError),
    /// An image could not be built or found.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A host tool (qemu-img) failed.
    #[error("`{tool}` failed: {detail}")]
    Tool {
        /// The tool and its arguments.
        tool: String,
        /// Its stderr, or why it did not start.
        detail: String,
    },
    /// An in-process processor could not be started.
    #[error("simulated processor: {0}")]
    Simulated(String),
    /// The operation needs a running machine.
    #[error("the machine is not running")]
    NotRunning,
}

/// Whether a processor's agent may be dialled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Its machine does not run: nothing to dial, nothing to retry.
    Down,
    /// Its machine runs but its agent exited (crashed): nothing to dial either.
    AgentGone,
    /// Its machine is paused: never dial it then — a vsock connection opened
    /// to a paused guest wedges vhost-device-vsock for that guest for 40 s and more.
    Paused,
    /// Its machine runs.
    Up,
}

/// Which way a link cut goes, from the processor's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkDir {
    /// Nothing passes either way.
    Both,
    /// The processor's frames do not reach its peer.
    Out,
    /// Its peer's frames do not reach it.
    In,
}

/// The operations every backend offers.
// `async fn` in a public trait: only ever used with static dispatch (through `Backend`).
#[allow(async_fn_in_trait)]
pub trait Machines {
    /// Resolve a configured version to what this backend runs (built once and cached).
    fn software(&self, version: &str) -> Result<Software, crate::error::Error>;
    /// Before anything leaves service: check that the host can run `versions`
    /// and that every image they boot is there and intact. Returns what was checked.
    fn preflight(&self, versions: &[&str]) -> Result<Vec<String>, crate::error::Error>;
    /// Start the helpers the pair needs for its whole life (vsock daemons), before any processor.
    async fn provision(&self) -> Result<(), MachineError>;
    /// Start processor `p` running `sw`; `boot` counts its starts (it names the overlay).
    async fn start(&self, p: ProcId, sw: &Software, boot: u32) -> Result<Boot, MachineError>;
    /// Stop `p` gracefully (QMP `quit`), bounded; returns how it went.
    async fn stop(&self, p: ProcId) -> &'static str;
    /// Stop `p` at once, as a power failure would (SIGKILL).
    async fn kill(&self, p: ProcId);
    /// Freeze `p` (QMP `stop`): it neither runs nor answers until resumed.
    async fn pause(&self, p: ProcId) -> Result<(), MachineError>;
    /// Resume a paused `p` (QMP `cont`).
    async fn resume(&self, p: ProcId) -> Result<(), MachineError>;
    /// Take `p`'s end of the inter-processor link down or up, both ways (QMP
    /// `set_link`) or one way only.
    async fn set_link(&self, p: ProcId, dir: LinkDir, up: bool) -> Result<(), MachineError>;
    /// Whether `p`'s machine runs (a paused one does).
    fn alive(&self, p: ProcId) -> bool;
    /// Whether `p`'s agent may be dialled now (cheap: no round trip to the machine).
    fn reach(&self, p: ProcId) -> Reach;
    /// If `p`'s agent exited while its machine runs (a crash), what it left to say so.
    fn agent_gone(&self, p: ProcId) -> Option<String>;
    /// How the host reaches `p`'s agent.
    fn channel(&self, p: ProcId) -> Channel;
    /// What `p` left to explain a failure (since `boot` if given).
    fn diagnostics(&self, p: ProcId, boot: Option<&Boot>) -> Diagnostics;
    /// `p`'s app disk as its machine sees it.
    async fn app_disk(&self, p: ProcId) -> Result<AppDisk, MachineError>;
    /// `p`'s run state as the machine reports it ("running", "paused"), if it runs.
    async fn run_state(&self, p: ProcId) -> Option<String>;
}

/// The two backends.
pub enum Backend {
    /// QEMU guests.
    Qemu(Box<qemu::QemuPair>),
    /// In-process agents (shared: tests inject faults from other threads).
    Simulated(std::sync::Arc<sim::SimPair>),
}

/// Forward a call to whichever backend this is.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backend::Qemu($b) => $call,
            Backend::Simulated($b) => $call,
        }
    };
}

impl Machines for Backend {
    fn software(&self, version: &str) -> Result<Software, crate::error::Error> {
        dispatch!(self, b => b.software(version))
    }
    fn preflight(&self, versions: &[&str]) -> Result<Vec<String>, crate::error::Error> {
        dispatch!(self, b => b.preflight(versions))
    }
    async fn provision(&self) -> Result<(), MachineError> {
        dispatch!(self, b => b.provision().await)
    }
    async fn start(&self, p: ProcId, sw: &Software, boot: u32) -> Result<Boot, MachineError> {
        dispatch!(self, b => b.start(p, sw, boot).await)
    }
    async fn stop(&self, p: ProcId) -> &'static str {
        dispatch!(self, b => b.stop(p).await)
    }
    async fn kill(&self, p: ProcId) {
        dispatch!(self, b => b.kill(p).await)
    }
    async fn pause(&self, p: ProcId) -> Result<(), MachineError> {
        dispatch!(self, b => b.pause(p).await)
    }
    async fn resume(&self, p: ProcId) -> Result<(), MachineError> {
        dispatch!(self, b => b.resume(p).await)
    }
    async fn set_link(&self, p: ProcId, dir: LinkDir, up: bool) -> Result<(), MachineError> {
        dispatch!(self, b => b.set_link(p, dir, up).await)
    }
    fn alive(&self, p: ProcId) -> bool {
        dispatch!(self, b => b.alive(p))
    }
    fn reach(&self, p: ProcId) -> Reach {
        dispatch!(self, b => b.reach(p))
    }
    fn agent_gone(&self, p: ProcId) -> Option<String> {
        dispatch!(self, b => b.agent_gone(p))
    }
    fn channel(&self, p: ProcId) -> Channel {
        dispatch!(self, b => b.channel(p))
    }
    fn diagnostics(&self, p: ProcId, boot: Option<&Boot>) -> Diagnostics {
        dispatch!(self, b => b.diagnostics(p, boot))
    }
    async fn app_disk(&self, p: ProcId) -> Result<AppDisk, MachineError> {
        dispatch!(self, b => b.app_disk(p).await)
    }
    async fn run_state(&self, p: ProcId) -> Option<String> {
        dispatch!(self, b => b.run_state(p).await)
    }
}
