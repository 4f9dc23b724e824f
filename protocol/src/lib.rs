//! The hitless wire protocol, shared by the host orchestrator and the guest agent.
//!
//! # Channels
//! | channel | transport | who speaks | messages | encoding |
//! |---|---|---|---|---|
//! | control | vsock port [`CONTROL_PORT`] | host → agent, one reply per request, in order | [`ControlRequest`] / [`ControlReply`] | JSON lines |
//! | work | vsock port [`WORK_PORT`] | client → active agent, pipelined, replies keyed by request id | [`WorkRequest`] / [`WorkReply`] | binary frames |
//! | link | TCP on IPv6 link-local, port [`LINK_PORT`] | agent ↔ agent over the inter-VM virtio link | [`LinkMsg`] | binary frames |
//!
//! # Framing
//! **Control** (rare, read by people): newline-delimited JSON, one message per
//! line, UTF-8, `\n`-terminated, at most [`MAX_LINE`] bytes; messages are
//! internally tagged enums (`{"type": "...", ...}`); unknown fields are ignored.
//!
//! **Work and link** (the hot path, since protocol 2): a connection starts
//! with the 4-byte [`PREAMBLE`] `HLP` + protocol version — sent by both sides
//! of a link connection, by the client on the work port — then carries
//! frames: a `u32` little-endian body length (at most [`MAX_FRAME`]) and the
//! body. A body is a kind byte, then the fields in the order below: integers
//! as LEB128 varints (`u64`), `chain` as 8 bytes little-endian, strings as a
//! varint byte length and UTF-8, maps and sets as a varint count and their
//! entries in key order, options as a `0`/`1` byte and the value, a role as a
//! byte (`0` out-of-service, `1` standby, `2` active).
//!
//! | message | kind | fields |
//! |---|---|---|
//! | [`WorkRequest`] | 1 | id, op |
//! | [`Operation`] (in a request) | 1 open, 2 update, 3 close, 4 set-priority | unit, then fields (open, update) or the priority byte (set-priority) |
//! | [`WorkReply::Ack`] | 1 | id, seq, flags byte (`1` registered, `2` duplicate) |
//! | [`WorkReply::NotActive`] | 2 | id (empty: a step-down notice, no request answered), role, option of active |
//! | [`WorkReply::Rejected`] | 3 | id, reason |
//! | [`LinkMsg::Hello`] | 1 | proto, name, version, supported, enabled, role, epoch, option of seq |
//! | [`LinkMsg::StepUp`] | 2 | generation, seq, chain, count, then each [`WorkUnit`] with a varint length before it: id, state byte (`0` open, `1` closed), fields, option of priority byte, ops |
//! | [`LinkMsg::Continue`] | 3 | generation, seq, chain |
//! | [`LinkMsg::Update`] | 4 | generation, seq, then a request's id and op |
//! | [`LinkMsg::Registered`] | 5 | generation, seq |
//! | [`LinkMsg::Heartbeat`] | 6 | — |
//! | [`LinkMsg::Resync`] | 7 | reason |
//!
//! Protocol 1 sent JSON lines on all three channels; its profile showed the
//! JSON encoding (internally tagged enums are buffered before they are
//! decoded) taking about half of each agent's instructions per acknowledged
//! work unit.
//!
//! # Versioning
//! [`PROTOCOL_VERSION`] changes only with the framing; the [`PREAMBLE`] tells
//! a peer or client of another protocol (protocol 1 is recognised by its
//! opening `{`) before any message is read, and each [`Hello`] carries it too.
//! Within a protocol, a decoder ignores bytes after the fields it knows, at
//! the end of a body and of each step-up unit, so a field may be added at the
//! end; an unknown kind byte is an error. Kinds are never renumbered or reused.
//! Each side announces its software version, the features it *supports* and
//! those *enabled* ([`Hello`]). What changes the replicated state is gated by a
//! named feature: a message that uses a feature is only encoded when the
//! feature is enabled locally *and* supported by the peer ([`encode_link`]),
//! and a decoder rejects what it does not support ([`decode_link`]) instead of
//! silently dropping it. So 2.0.0 with its new features disabled speaks
//! exactly what 1.0.0 understands, in both directions.
//!
//! # Replication
//! When a processor becomes standby the active sends a [`LinkMsg::StepUp`]
//! (all work units, the sequence number they reflect), then a gap-free stream
//! of [`LinkMsg::Update`]s (database activities, numbered `seq + 1, + 2, ...`).
//! The standby answers [`LinkMsg::Registered`] up to the last update it has
//! applied whenever it has read all that arrived (one registration for a
//! batch); on a gap it sends [`LinkMsg::Resync`] and the active starts a fresh
//! step-up with a new `generation`. Each side chains a hash over the updates it
//! applied; after a switchover the demoted active already holds the new
//! active's state, and a [`LinkMsg::Continue`] confirms it by that chain
//! instead of sending every unit again, which shortens the service gap.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

mod wire;
pub use wire::{check_preamble, frame_into, from_frame, to_frame, Frames, Reader, Wire, PREAMBLE};

/// Version of this wire protocol; bumped only for incompatible framing changes
/// (2: binary frames on the work port and the link).
pub const PROTOCOL_VERSION: u32 = 2;
/// vsock port of the agent's control service (host → agent).
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of the active agent's work-unit service.
pub const WORK_PORT: u32 = 1025;
/// TCP port the agents use to talk to each other over the inter-VM link.
pub const LINK_PORT: u16 = 7100;
/// Interval of [`LinkMsg::Heartbeat`] on an idle link.
pub const HEARTBEAT_MS: u64 = 100;
/// How long an armed [`ControlRequest::TakeOver`] waits for the peer to step
/// down: its hello comes over the link in milliseconds when all is well; a
/// peer that has not stepped down by then is the host's to deal with.
pub const TAKE_OVER_WAIT_MS: u64 = 1000;
/// A link silent for this long is considered down: ten missed heartbeats, so a
/// stalled TCG vCPU is tolerated, yet shorter than a reload (~3 s), so the
/// survivor is already redialling when the reloaded peer starts listening.
pub const LINK_TIMEOUT_MS: u64 = 1000;
/// Updates a standby may have in flight and still count as current (synchronous replication under load).
pub const CURRENT_LAG: u64 = 128;
/// Longest an update may wait for the standby to register it, and longest the
/// standby may stay silent, for the active to call its standby current: past
/// it, the standby is not registering (a cut link shows here within half a
/// second, long before the link times out).
pub const REGISTRATION_BOUND_MS: u64 = 500;
/// Longest accepted control line, so a corrupt peer cannot exhaust memory.
pub const MAX_LINE: usize = 64 * 1024 * 1024;
/// Longest accepted frame body on the work port and the link (a step-up of every unit is one frame).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The new feature of 2.0.0: a priority on each work unit, with its own update kind.
pub const FEATURE_PRIORITY: &str = "work-unit-priority";

/// A set of feature names.
pub type FeatureSet = BTreeSet<String>;

/// Errors from encoding or decoding a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line or frame is not a valid encoding of the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The other side speaks another protocol (its preamble says which).
    #[error("the other side speaks {0}, this side protocol {PROTOCOL_VERSION}")]
    Version(String),
    /// The message uses a feature the receiving version does not support.
    #[error("message uses feature `{0}`, which this version does not support")]
    Unsupported(String),
    /// The message would use a feature that is not enabled on both sides.
    #[error("message needs feature `{0}`, which is not enabled on this link")]
    NotNegotiated(String),
    /// The line exceeds [`MAX_LINE`], or the frame [`MAX_FRAME`].
    #[error("message of {0} bytes exceeds the limit")]
    TooLong(usize),
}

/// The role of a processor in the active/standby pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Not part of the pair: receives no updates, serves nothing.
    OutOfService,
    /// Receives run-state updates from the active and registers work units.
    Standby,
    /// Serves work units and sends run-state updates to the standby.
    Active,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::OutOfService => "out-of-service",
            Role::Standby => "standby",
            Role::Active => "active",
        })
    }
}

/// Whether a work unit is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitState {
    /// Opened and not yet closed.
    Open,
    /// Closed; kept so that the history can be checked.
    Closed,
}

/// A unit of application work (a call, a session) and its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUnit {
    /// Client-chosen unit id.
    pub id: String,
    /// Open or closed.
    pub state: UnitState,
    /// Application fields.
    pub fields: BTreeMap<String, String>,
    /// Priority; only present with [`FEATURE_PRIORITY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Request ids applied to this unit, in order (lets a checker see a double apply).
    pub ops: Vec<String>,
}

/// A database activity: one change to the work-unit database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Operation {
    /// Create a work unit with initial fields.
    Open {
        /// Unit id.
        unit: String,
        /// Initial fields.
        #[serde(default)]
        fields: BTreeMap<String, String>,
    },
    /// Merge fields into an open work unit.
    Update {
        /// Unit id.
        unit: String,
        /// Fields to set.
        fields: BTreeMap<String, String>,
    },
    /// Close a work unit.
    Close {
        /// Unit id.
        unit: String,
    },
    /// Set a unit's priority; needs [`FEATURE_PRIORITY`].
    SetPriority {
        /// Unit id.
        unit: String,
        /// New priority.
        priority: u8,
    },
}

impl Operation {
    /// The unit this operation changes.
    pub fn unit(&self) -> &str {
        match self {
            Operation::Open { unit, .. }
            | Operation::Update { unit, .. }
            | Operation::Close { unit }
            | Operation::SetPriority { unit, .. } => unit,
        }
    }

    /// The feature this operation needs, if any.
    pub fn feature(&self) -> Option<&'static str> {
        match self {
            Operation::SetPriority { .. } => Some(FEATURE_PRIORITY),
            Operation::Open { .. } | Operation::Update { .. } | Operation::Close { .. } => None,
        }
    }
}

/// A client request on the work port: apply `op`, identified by a unique `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkRequest {
    /// Unique request id; a retry with the same id is applied at most once.
    pub id: String,
    /// The database activity.
    pub op: Operation,
}

/// The active's answer to a [`WorkRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum WorkReply {
    /// Applied (now or earlier, see `duplicate`) and, if `registered`, held by the standby.
    Ack {
        /// Request id.
        id: String,
        /// Sequence number of the update that carried it.
        seq: u64,
        /// True when a standby registered it before this ack; false when simplex.
        registered: bool,
        /// True when the id had been applied before (a retry).
        #[serde(default)]
        duplicate: bool,
    },
    /// This processor does not serve work units; try `active`. With an
    /// empty `id` it answers no request: an active that steps down tells every
    /// open work connection so at once, and its clients go to the other
    /// processor without waiting for a request of theirs to be refused.
    NotActive {
        /// Request id (empty: the step-down notice).
        id: String,
        /// This processor's role.
        role: Role,
        /// Name of the active processor, if known.
        active: Option<String>,
    },
    /// The request is invalid (unknown unit, feature not enabled, ...).
    Rejected {
        /// Request id.
        id: String,
        /// Why, in words a client can log.
        reason: String,
    },
}

impl WorkReply {
    /// The request id this reply answers.
    pub fn id(&self) -> &str {
        match self {
            WorkReply::Ack { id, .. } | WorkReply::NotActive { id, .. } | WorkReply::Rejected { id, .. } => id,
        }
    }
}

/// What a processor announces to its peer and to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub proto: u32,
    /// Processor name (e.g. `p121`).
    pub name: String,
    /// Software version (e.g. `2.0.0`).
    pub version: String,
    /// Features this build supports.
    pub supported: FeatureSet,
    /// Features enabled now.
    pub enabled: FeatureSet,
    /// Current role.
    pub role: Role,
    /// Epoch of the last role command applied.
    pub epoch: u64,
    /// Last run-state update applied; `None` from an agent that cannot take a [`LinkMsg::Continue`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Messages between the two agents over the inter-VM link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LinkMsg {
    /// First message on a connection, and again whenever role or features change.
    Hello(Hello),
    /// Bulk sync of all work units, reflecting updates up to `seq`.
    StepUp {
        /// Step-up generation; updates of older generations are ignored.
        generation: u64,
        /// Sequence number the snapshot reflects.
        seq: u64,
        /// Every work unit.
        units: Vec<WorkUnit>,
        /// The active's history [`chain`] at `seq`, which the standby continues.
        #[serde(default)]
        chain: u64,
    },
    /// Step-up of a standby that already holds the active's state (the demoted
    /// active after a switchover): no units, only the history [`chain`] to
    /// confirm it. A standby whose history differs answers [`LinkMsg::Resync`].
    Continue {
        /// Step-up generation; updates of older generations are ignored.
        generation: u64,
        /// Sequence number the standby's state must reflect.
        seq: u64,
        /// The active's history [`chain`] at `seq`.
        chain: u64,
    },
    /// One run-state update: a database activity.
    Update {
        /// Step-up generation it belongs to.
        generation: u64,
        /// Sequence number, gap-free within a generation.
        seq: u64,
        /// The applied request.
        request: WorkRequest,
    },
    /// The standby registered everything up to `seq`.
    Registered {
        /// Generation acknowledged.
        generation: u64,
        /// Highest sequence number registered.
        seq: u64,
    },
    /// Sent when the link is otherwise idle, so that a vanished peer (its VM
    /// was stopped, no FIN ever comes) is noticed within [`LINK_TIMEOUT_MS`].
    Heartbeat,
    /// The standby saw a gap or restarted; it asks for a fresh step-up.
    Resync {
        /// What happened.
        reason: String,
    },
}

/// A request from the host to an agent on the control port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Who are you.
    Hello,
    /// Full status.
    Status,
    /// Change role; rejected when `epoch` is older than the agent's.
    SetRole {
        /// Target role.
        role: Role,
        /// Orchestrator epoch, increased on every role change.
        epoch: u64,
        /// A promotion only: the last update the demoted active applied. A
        /// standby that has not applied it is refused ([`ControlReply::Lacking`]):
        /// promoted, it would step the old active up with a state lacking acked work.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holding: Option<u64>,
    },
    /// Become active at `epoch` as soon as the peer has stepped down to
    /// standby at `peer_epoch` (its hello over the link says so), holding every
    /// update the peer applied (the hello's `seq`): a switchover's promotion
    /// without a round trip through the host between the demotion and it.
    /// Answered once promoted ([`ControlReply::Done`]), refused if the update
    /// is missing here ([`ControlReply::Lacking`]), or an error if the peer has
    /// not stepped down within [`TAKE_OVER_WAIT_MS`] or a newer role command
    /// came first; then nothing changed. Agents before it answer an error
    /// (an unknown request), and the host promotes by [`ControlRequest::SetRole`].
    TakeOver {
        /// The epoch to become active at.
        epoch: u64,
        /// The epoch the peer's demotion carries.
        peer_epoch: u64,
    },
    /// Enable a new feature.
    EnableFeature {
        /// Feature name.
        feature: String,
    },
    /// Disable a feature (refused once enabled: the point of no return).
    DisableFeature {
        /// Feature name.
        feature: String,
    },
    /// Is this version acceptable, judged over the last `window_ms`?
    Evaluate {
        /// Evaluation window in milliseconds.
        window_ms: u64,
    },
    /// Every work unit, for the history check.
    Dump,
    /// Fault injection: the agent exits at once (its machine stays up), as an
    /// application that crashed would. Answered before it exits.
    Crash,
    /// Run a command in the guest (`hitless exec`), stopped after `timeout_ms`.
    /// Answered by any number of [`ControlReply::Output`], then one
    /// [`ControlReply::Exited`] (or an error). Only a guest's own agent runs
    /// it: an in-process agent refuses (the command would run on the host).
    Exec {
        /// The program and its arguments.
        argv: Vec<String>,
        /// How long the command may run before it is killed.
        timeout_ms: u64,
    },
}

/// Which of a command's outputs a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Replication state as seen by one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// Last sequence number applied locally.
    pub seq: u64,
    /// As active: highest seq the standby registered (None without a standby).
    pub registered: Option<u64>,
    /// As active: `seq - registered`; as standby: 0 when current.
    pub lag: u64,
    /// Current step-up generation.
    pub generation: u64,
    /// Step-ups done (sent as active, received as standby).
    pub stepups: u64,
    /// True when this active has no standby and acks at once.
    pub simplex: bool,
    /// As standby: a step-up completed and no gap since.
    #[serde(default)]
    pub synced: bool,
    /// As active: how long the oldest update not yet registered by the standby has waited (ms; 0 when none).
    #[serde(default)]
    pub unregistered_ms: u64,
    /// How long since anything came from the peer over the link (ms); `None` without a link.
    #[serde(default)]
    pub peer_silent_ms: Option<u64>,
}

impl Replication {
    /// As active: whether the standby is current as the active sees it — attached,
    /// registering (nothing waiting longer than [`REGISTRATION_BOUND_MS`]) and
    /// heard from within that bound. The standby's own `synced` flag cannot say
    /// this: it stays true after its link is gone.
    pub fn standby_current(&self) -> Result<(), String> {
        if self.simplex {
            return Err("no standby is attached (simplex)".into());
        }
        if self.registered.is_none() {
            return Err("the standby has not confirmed its step-up yet".into());
        }
        if self.unregistered_ms > REGISTRATION_BOUND_MS {
            return Err(format!("an update has waited {} ms for the standby to register it", self.unregistered_ms));
        }
        match self.peer_silent_ms {
            Some(ms) if ms <= REGISTRATION_BOUND_MS => {}
            Some(ms) => return Err(format!("the standby has been silent for {ms} ms")),
            None => return Err("the link to the standby is down".into()),
        }
        if self.lag > CURRENT_LAG {
            return Err(format!("the standby lags by {} updates", self.lag));
        }
        Ok(())
    }
}

/// The peer as an agent sees it over the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's last hello.
    pub hello: Hello,
    /// Whether the link connection is up now.
    pub connected: bool,
    /// Why pairing was refused, if it was.
    pub refused: Option<String>,
}

/// Full agent status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This agent's hello (name, version, features, role, epoch).
    pub hello: Hello,
    /// The peer, once it has said hello.
    pub peer: Option<PeerStatus>,
    /// Replication state.
    pub replication: Replication,
    /// Number of work units in the database.
    pub units: usize,
    /// Work requests acked since boot.
    pub served: u64,
    /// Internal errors since boot.
    pub errors: u64,
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// How long the agent's warm-up of both roles' work paths took, once it
    /// has run and replicated every unit it tried (none when not armed — only
    /// guests warm up — or not finished; older agents never say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmed_up_ms: Option<u64>,
    /// Request ids applied (the de-duplication index), and the most the
    /// database takes before it refuses new work (absent: no bound; older
    /// agents never say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ids: Option<RequestIds>,
}

/// How full an agent's database is ([`Status::request_ids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestIds {
    /// Request ids applied.
    pub applied: u64,
    /// The most it applies; beyond, new work is rejected "the database is full".
    pub capacity: u64,
}

/// The verdict of an evaluation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// True when the version is acceptable.
    pub acceptable: bool,
    /// What was checked, passed or not.
    pub reasons: Vec<String>,
    /// The checks that failed (empty when acceptable).
    #[serde(default)]
    pub failed: Vec<String>,
}

/// The agent's answer on the control port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ControlReply {
    /// Answer to [`ControlRequest::Hello`].
    Hello(Hello),
    /// Answer to [`ControlRequest::Status`].
    Status(Box<Status>),
    /// A command succeeded; the agent's role and epoch after it.
    Done {
        /// Role now.
        role: Role,
        /// Epoch now.
        epoch: u64,
        /// Features enabled now.
        enabled: FeatureSet,
        /// Last run-state update applied (after a demotion: once in-flight work
        /// is flushed), so a switchover can promote holding it without asking again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A promotion refused: this standby has applied updates only up to `seq`,
    /// short of the `holding` the command asked for. Nothing changed.
    Lacking {
        /// Last update this processor applied.
        seq: u64,
        /// The update the command required.
        holding: u64,
    },
    /// Answer to [`ControlRequest::Evaluate`].
    Evaluation(Evaluation),
    /// Answer to [`ControlRequest::Dump`].
    Dump {
        /// Last applied sequence number.
        seq: u64,
        /// Every work unit.
        units: Vec<WorkUnit>,
    },
    /// A chunk of a running command's output (see [`ControlRequest::Exec`]).
    Output {
        /// Standard output or error.
        stream: OutputStream,
        /// The bytes, as the command wrote them.
        data: Vec<u8>,
    },
    /// The command of a [`ControlRequest::Exec`] ended.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that ended it, when one did.
        signal: Option<i32>,
        /// It ran out of time and was killed.
        timed_out: bool,
    },
    /// The command was refused or failed.
    Error {
        /// Why, in words a user can act on.
        message: String,
    },
}

impl From<serde_json::Error> for ProtocolError {
    fn from(e: serde_json::Error) -> Self {
        ProtocolError::Malformed(e.to_string())
    }
}

/// Serialize a control message as one `\n`-terminated JSON line.
pub fn to_line<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut v = serde_json::to_vec(msg)?;
    v.push(b'\n');
    Ok(v)
}

/// Parse one control line (with or without its `\n`).
pub fn from_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong(line.len()));
    }
    Ok(serde_json::from_slice(line)?)
}

/// The first feature a link message uses, if any.
pub fn link_feature(msg: &LinkMsg) -> Option<&'static str> {
    match msg {
        LinkMsg::StepUp { units, .. } => units.iter().find(|u| u.priority.is_some()).map(|_| FEATURE_PRIORITY),
        LinkMsg::Update { request, .. } => request.op.feature(),
        LinkMsg::Hello(_)
        | LinkMsg::Heartbeat
        | LinkMsg::Registered { .. }
        | LinkMsg::Resync { .. }
        | LinkMsg::Continue { .. } => None,
    }
}

/// The history chain after applying request `id` at `seq` to a state whose
/// chain was `prev`: two processors with equal sequence numbers and equal
/// chains applied the same updates, so they hold the same state. Each step
/// mixes eight bytes at a time with a folded 128-bit multiply (the mixer of
/// foldhash and rustc-hash); the byte-at-a-time FNV-1a it replaced took ~140
/// instructions per work unit in each agent (callgrind), about 4% of the
/// active's. Both ends of a link must use the same function: a chain that
/// differs only costs a full step-up instead of a confirmation.
pub fn chain(prev: u64, seq: u64, id: &str) -> u64 {
    fn mix(h: u64, w: u64) -> u64 {
        let m = u128::from(h ^ w) * u128::from(0x9e37_79b9_7f4a_7c15u64);
        (m as u64) ^ ((m >> 64) as u64)
    }
    let bytes = id.as_bytes();
    // The length goes in first, so ids that differ only by trailing zero bytes differ.
    let mut h = mix(mix(prev ^ 0xcbf2_9ce4_8422_2325, seq), bytes.len() as u64);
    let mut words = bytes.chunks_exact(8);
    let mut word = [0u8; 8];
    for w in &mut words {
        word.copy_from_slice(w);
        h = mix(h, u64::from_le_bytes(word));
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(h, u64::from_le_bytes(tail))
}

/// Encode a link message as one frame, refusing any feature not in
/// `negotiated` (enabled here and supported by the peer).
pub fn encode_link(msg: &LinkMsg, negotiated: &FeatureSet) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    encode_link_into(msg, negotiated, &mut out)?;
    Ok(out)
}

/// [`encode_link`], appending the frame to `out` (nothing is appended on error).
pub fn encode_link_into(msg: &LinkMsg, negotiated: &FeatureSet, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    if let Some(f) = link_feature(msg) {
        if !negotiated.contains(f) {
            return Err(ProtocolError::NotNegotiated(f.to_string()));
        }
    }
    frame_into(msg, out);
    Ok(())
}

/// Decode one link frame (length prefix included), rejecting any feature not in `supported`.
pub fn decode_link(frame: &[u8], supported: &FeatureSet) -> Result<LinkMsg, ProtocolError> {
    let msg: LinkMsg = from_frame(frame)?;
    if let Some(f) = link_feature(&msg) {
        if !supported.contains(f) {
            return Err(ProtocolError::Unsupported(f.to_string()));
        }
    }
    Ok(msg)
}

/// Features that may shape what goes over the link: enabled here and supported by the peer.
pub fn negotiated(local_enabled: &FeatureSet, peer_supported: &FeatureSet) -> FeatureSet {
    local_enabled.intersection(peer_supported).cloned().collect()
}

#[cfg(test)]
mod tests;
