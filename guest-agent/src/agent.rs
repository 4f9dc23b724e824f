//! The agent's state and every decision it makes: role changes, serving work
//! units, run-state replication as active (step-up, updates, waiting for the
//! standby to register) and as standby (applying, gap detection). Network
//! tasks call into [`Agent`]; it never blocks on I/O while holding its lock.

use crate::build::{Build, Flaw};
use crate::db::Database;
use crate::roles::{self, Facts, RoleError};
use hitless_protocol::{
    ControlReply, Evaluation, FeatureSet, Hello, LinkMsg, PeerStatus, Replication, RequestIds, Role, Status, WorkReply,
    WorkRequest, PROTOCOL_VERSION, REGISTRATION_BOUND_MS,
};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Where replies to a work connection go.
pub type ReplyTx = mpsc::UnboundedSender<WorkReply>;
/// Where messages to the peer go (the link writer encodes them).
pub type LinkTx = mpsc::UnboundedSender<LinkMsg>;

/// How long a demoted active waits for its standby to register in-flight updates.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a work request waits for a switchover in progress to end, by
/// default ([`Agent::await_switchover`]): the orchestrator promotes the new
/// active a few milliseconds after the old one stepped down (tens under TCG
/// load); a switchover that never completes (the orchestrator died between
/// the two commands) costs each connection this much before "not active".
pub const SWITCHOVER_HOLD: Duration = Duration::from_millis(100);

/// A work unit applied but not yet acknowledged: waits for the standby.
struct Pending {
    tx: ReplyTx,
    id: String,
    duplicate: bool,
}

/// The work units waiting for the standby to register one update: the one
/// that applied it, and retries of it (rare: kept apart so that the common
/// case allocates nothing).
struct Unregistered {
    seq: u64,
    /// When the update was applied and sent: how long the standby is taking.
    since: Instant,
    first: Pending,
    retries: Vec<Pending>,
}

impl Unregistered {
    fn waiting(self) -> impl Iterator<Item = Pending> {
        std::iter::once(self.first).chain(self.retries)
    }
}

/// The peer connection as the agent sees it.
struct Peer {
    conn: u64,
    tx: LinkTx,
    hello: Option<Hello>,
    /// When anything (a heartbeat at least) last came from the peer.
    heard: Instant,
}

struct Core {
    role: Role,
    epoch: u64,
    enabled: FeatureSet,
    db: Database,
    seq: u64,
    peer: Option<Peer>,
    last_peer: Option<Hello>,
    // As active.
    generation: u64,
    standby_attached: bool,
    registered: Option<u64>,
    /// In seq order (a queue, not an ordered map: no tree node per unit on
    /// the work path). Updates are numbered as they are applied, so a new one
    /// goes at the back; only a retry, of an update still waiting or (after a
    /// resync, before the new step-up is registered) of an older one, goes
    /// elsewhere: to its own seq's place.
    pending: VecDeque<Unregistered>,
    // As standby.
    synced: bool,
    standby_generation: u64,
    stepups: u64,
    served: u64,
    errors: u64,
    /// An armed take-over: become active at `.0` once the peer is standby at `.1`.
    take_over: Option<(u64, u64)>,
    /// Why the last armed take-over (at that epoch) did not promote, if it did not.
    take_over_refused: Option<(u64, RoleError)>,
    /// The work connections' reply channels (weak: a closed connection's
    /// writer must still end), told at once when this active steps down.
    clients: Vec<mpsc::WeakUnboundedSender<WorkReply>>,
}

/// One processor's agent.
pub struct Agent {
    name: String,
    build: Build,
    supported: FeatureSet,
    started: Instant,
    core: Mutex<Core>,
    changed: Notify,
    /// Fires when a deliberately crashing build decides to exit.
    crashed: std::sync::Arc<Notify>,
    /// The warm-up, if armed, starts once the host has had its first answer.
    warm_up: crate::warm::Armed,
    /// How long a work request waits mid-switchover ([`Served::Hold`]).
    switchover_hold: Duration,
}

/// What became of a work request ([`Agent::work_or_hold`]).
#[derive(Debug)]
pub enum Served {
    /// Served as the active (answered, or to be once registered).
    Yes,
    /// Answered "not active": read nothing more on that connection.
    NotActive,
    /// Not answered: this processor is about to be promoted ([`Agent::await_switchover`]).
    Hold(WorkRequest),
}

/// What the link reader should do after a message.
pub enum LinkAction {
    /// Nothing to send.
    None,
    /// Registered up to (generation, seq) — the reader batches these.
    Registered(u64, u64),
}

impl Agent {
    /// A new agent of `build`, out of service, with an empty database.
    pub fn new(name: String, build: Build) -> Self {
        Agent {
            name,
            supported: build.features.clone(),
            build,
            started: Instant::now(),
            core: Mutex::new(Core {
                role: Role::OutOfService,
                epoch: 0,
                enabled: FeatureSet::new(),
                db: Database::default(),
                seq: 0,
                peer: None,
                last_peer: None,
                generation: 0,
                standby_attached: false,
                registered: None,
                pending: VecDeque::new(),
                synced: false,
                standby_generation: 0,
                stepups: 0,
                served: 0,
                errors: 0,
                take_over: None,
                take_over_refused: None,
                clients: Vec::new(),
            }),
            changed: Notify::new(),
            crashed: Default::default(),
            warm_up: Default::default(),
            switchover_hold: SWITCHOVER_HOLD,
        }
    }

    /// Run [`crate::warm::warm_up`] once the host has had its first answer
    /// (not before: the host times a boot until then).
    pub fn arm_warm_up(&self) {
        self.warm_up.arm();
    }

    /// The host got an answer on the control port.
    pub fn answered(&self) {
        self.warm_up.start(&self.build);
    }

    /// The build this agent runs.
    pub fn build(&self) -> &Build {
        &self.build
    }

    /// Resolves when a deliberately crashing build (test image) exits; never otherwise.
    pub async fn crashed(&self) {
        self.crashed.notified().await
    }

    /// Features this build supports.
    pub fn supported(&self) -> &FeatureSet {
        &self.supported
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock aborts the process (panic = abort), so poisoning cannot be observed.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hello_of(&self, c: &Core) -> Hello {
        Hello {
            proto: PROTOCOL_VERSION,
            name: self.name.clone(),
            version: self.build.version.clone(),
            supported: self.supported.clone(),
            enabled: c.enabled.clone(),
            role: c.role,
            epoch: c.epoch,
            seq: Some(c.seq),
        }
    }

    /// This agent's hello.
    pub fn hello(&self) -> Hello {
        let c = self.lock();
        self.hello_of(&c)
    }

    /// Why this processor and the peer cannot pair, if they cannot.
    fn pairing_problem(&self, c: &Core, peer: &Hello) -> Option<String> {
        if peer.proto != PROTOCOL_VERSION {
            return Some(format!(
                "peer {} speaks protocol {}, this processor {}",
                peer.name, peer.proto, PROTOCOL_VERSION
            ));
        }
        if let Some(f) = peer.enabled.iter().find(|f| !self.supported.contains(*f)) {
            return Some(format!(
                "feature `{f}` is enabled on peer {} ({}), but this processor runs {}, which does not support it",
                peer.name, peer.version, self.build.version
            ));
        }
        if let Some(f) = c.enabled.iter().find(|f| !peer.supported.contains(*f)) {
            return Some(format!(
                "feature `{f}` is enabled on this processor ({}), but peer {} runs {}, which does not support it",
                self.build.version, peer.name, peer.version
            ));
        }
        None
    }

    fn send_peer(c: &mut Core, msg: LinkMsg) {
        if let Some(p) = &c.peer {
            // A closed channel means the link just dropped; the disconnect handler cleans up.
            let _ = p.tx.send(msg);
        }
    }

    fn announce(&self, c: &mut Core) {
        let h = self.hello_of(c);
        Self::send_peer(c, LinkMsg::Hello(h));
    }

    /// Acknowledge every pending work unit up to `upto` (all when None: the standby went away).
    fn release(c: &mut Core, upto: Option<u64>, registered: bool) {
        let n = match upto {
            Some(s) => c.pending.partition_point(|u| u.seq <= s),
            None => c.pending.len(),
        };
        for slot in c.pending.drain(..n) {
            let seq = slot.seq;
            for p in slot.waiting() {
                let _ = p.tx.send(WorkReply::Ack { id: p.id, seq, registered, duplicate: p.duplicate });
            }
        }
    }

    /// Answer every unregistered (so never acked) work unit "not active", so
    /// clients retry elsewhere; returns how many there were.
    fn refuse_pending(c: &mut Core) -> usize {
        let mut n = 0;
        for slot in std::mem::take(&mut c.pending) {
            for p in slot.waiting() {
                n += 1;
                let _ = p.tx.send(WorkReply::NotActive { id: p.id, role: c.role, active: None });
            }
        }
        n
    }

    fn detach_standby(c: &mut Core) {
        // A demoted active keeps its standby until the new active steps it up
        // (its flush needs the registrations): no "simplex" to report then.
        if c.standby_attached && c.role == Role::Active {
            tracing::info!("standby detached; running simplex");
        }
        c.standby_attached = false;
        c.registered = None;
        if c.role == Role::Active {
            // Simplex: this processor holds the state and goes on alone.
            Self::release(c, None, false);
        } else {
            // A demoted (or stepped-down) active: whoever is active next may
            // lack what its standby never registered. Acked, that would be
            // reported done and lost; refused, its clients retry there.
            Self::refuse_pending(c);
        }
    }

    /// Step up the peer if this processor is active and the peer is a standby we
    /// can pair with: confirm its state by the history chain when it says it is
    /// at our sequence number and `confirm` allows (not after a Resync), else send it all.
    fn step_up(&self, c: &mut Core, confirm: bool) {
        let peer_hello = c.peer.as_ref().and_then(|p| p.hello.clone());
        let Some(h) = peer_hello else { return };
        if c.role != Role::Active || h.role != Role::Standby || self.pairing_problem(c, &h).is_some() {
            return;
        }
        c.generation += 1;
        c.standby_attached = true;
        c.registered = None;
        c.stepups += 1;
        let (generation, seq, chain) = (c.generation, c.seq, c.db.chain());
        let msg = if confirm && seq > 0 && h.seq == Some(seq) {
            tracing::info!(generation, seq, "step-up of standby {} by history chain (it holds our state)", h.name);
            LinkMsg::Continue { generation, seq, chain }
        } else {
            tracing::info!(generation, seq, units = c.db.len(), "step-up of standby {}", h.name);
            LinkMsg::StepUp { generation, seq, units: c.db.units(), chain }
        };
        Self::send_peer(c, msg);
    }

    /// Exit after `delay` (a crash): the deliberate flaw of the `crash` test
    /// image, and the fault a control request injects.
    pub fn crash_after(&self, delay: Duration) {
        let crashed = self.crashed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            eprintln!("hitless-agent: crashing now");
            // A permit is stored if nobody waits yet, so the crash is never missed.
            crashed.notify_one();
        });
    }

    /// Apply a host role command.
    pub fn set_role(&self, to: Role, epoch: u64) -> Result<(Role, u64), RoleError> {
        self.set_role_holding(to, epoch, None)
    }

    /// Apply a host role command; a promotion `holding` the demoted active's
    /// last update is refused, changing nothing, unless that update is applied here.
    pub fn set_role_holding(&self, to: Role, epoch: u64, holding: Option<u64>) -> Result<(Role, u64), RoleError> {
        let mut c = self.lock();
        let r = self.change_role(&mut c, to, epoch, holding);
        if r.is_ok() && c.take_over.is_some_and(|(e, _)| e <= epoch) {
            // A newer command supersedes an armed take-over.
            c.take_over = None;
        }
        self.changed.notify_waiters();
        r
    }

    fn change_role(&self, c: &mut Core, to: Role, epoch: u64, holding: Option<u64>) -> Result<(Role, u64), RoleError> {
        let peer = c.peer.as_ref().and_then(|p| p.hello.clone()).or_else(|| c.last_peer.clone());
        let refused = c.peer.as_ref().and_then(|p| p.hello.as_ref()).and_then(|h| self.pairing_problem(c, h));
        let peer = peer.map(|h| (h.name, h.role, h.epoch));
        let facts = Facts { peer, synced: c.synced, refused, seq: c.seq, holding };
        roles::check(c.role, to, epoch, c.epoch, &facts)?;
        let from = c.role;
        c.epoch = epoch;
        if from != to {
            tracing::info!(epoch, "role {from} -> {to}");
            c.role = to;
            match to {
                Role::Active => {
                    c.standby_attached = false;
                    c.registered = None;
                    if self.build.flaw == Some(Flaw::Crash) {
                        eprintln!("hitless-agent: deliberate crash soon (started with --flaw crash)");
                        self.crash_after(Duration::from_millis(800));
                    }
                }
                Role::Standby | Role::OutOfService => {
                    // A demoted active holds the authoritative state: it stays current
                    // (so a fallback can make it active again) until a new active steps it up.
                    c.synced = from == Role::Active && to == Role::Standby;
                    c.standby_generation = 0;
                }
            }
        }
        self.announce(c);
        if to == Role::Active && from != Role::Active {
            self.step_up(c, true);
        }
        if from == Role::Active && to != Role::Active {
            // After the hello: the peer hears of it before the clients come.
            Self::tell_clients(c, to);
        }
        Ok((c.role, c.epoch))
    }

    /// A work connection's replies go to `tx`: told at once, should this
    /// active step down, not at the client's next request.
    pub fn add_client(&self, tx: &ReplyTx) {
        let mut c = self.lock();
        c.clients.retain(|w| w.strong_count() > 0);
        c.clients.push(tx.downgrade());
    }

    /// Tell every client of this demoted active that it is not active (a
    /// "not active" with no request id): they go to the new active now,
    /// where waiting for their next request would cost the service gap up to
    /// a pace and a round trip.
    fn tell_clients(c: &mut Core, role: Role) {
        for tx in c.clients.drain(..).filter_map(|w| w.upgrade()) {
            let _ = tx.send(WorkReply::NotActive { id: String::new(), role, active: None });
        }
    }

    /// Arm a take-over ([`hitless_protocol::ControlRequest::TakeOver`]): this
    /// standby becomes active at `epoch` once the peer says it is standby at
    /// `peer_epoch`, if it holds every update the peer applied. Refused at
    /// once if it could not be promoted now anyway (a stale epoch, not current).
    pub fn arm_take_over(&self, epoch: u64, peer_epoch: u64) -> Result<(), RoleError> {
        let mut c = self.lock();
        if c.role == Role::Active && c.epoch == epoch {
            // Taken over already: this is a retry after a lost answer.
            return Ok(());
        }
        if epoch <= c.epoch {
            return Err(RoleError::StaleEpoch { got: epoch, current: c.epoch });
        }
        if c.role != Role::Standby || !c.synced {
            return Err(RoleError::NotCurrent);
        }
        c.take_over = Some((epoch, peer_epoch));
        c.take_over_refused = None;
        tracing::info!(epoch, peer_epoch, "armed to take over once the peer steps down");
        // The peer may have stepped down already (its hello came before this command).
        self.try_take_over(&mut c);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Promote, if a take-over is armed and the peer has stepped down as it expects.
    fn try_take_over(&self, c: &mut Core) {
        let Some((epoch, peer_epoch)) = c.take_over else { return };
        let Some(h) = c.peer.as_ref().and_then(|p| p.hello.as_ref()) else { return };
        let Some(holding) = h.seq else { return };
        if h.role != Role::Standby || h.epoch != peer_epoch {
            return;
        }
        c.take_over = None;
        match self.change_role(c, Role::Active, epoch, Some(holding)) {
            Ok(_) => tracing::info!(epoch, peer_epoch, "took over from the peer, which stepped down"),
            Err(e) => {
                tracing::warn!(epoch, "take-over refused: {e}");
                c.take_over_refused = Some((epoch, e));
            }
        }
    }

    /// Wait (up to `bound`) for the take-over armed at `epoch`: Ok once
    /// promoted by it; else why not, and it is disarmed.
    pub async fn await_take_over(&self, epoch: u64, bound: Duration) -> Result<(), RoleError> {
        let armed = |c: &Core| c.take_over.is_some_and(|(e, _)| e == epoch);
        self.wait_for(bound, |c| !armed(c)).await;
        let mut c = self.lock();
        if c.role == Role::Active && c.epoch == epoch {
            return Ok(());
        }
        if armed(&c) {
            c.take_over = None;
            return Err(RoleError::NotTakenOver(format!(
                "the peer did not step down at the expected epoch within {bound:?}"
            )));
        }
        match &c.take_over_refused {
            Some((e, why)) if *e == epoch => Err(why.clone()),
            _ => Err(RoleError::NotTakenOver(format!("a newer role command came first (epoch {} here)", c.epoch))),
        }
    }

    /// Wait until `cond` holds, re-checked on every state change; false after `timeout`.
    async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Core) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Register before checking, so a change between check and wait is not missed.
            let notified = self.changed.notified();
            if cond(&self.lock()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Wait (bounded) until the peer has said hello on a live link; false on timeout.
    pub async fn wait_peer(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |c| c.peer.as_ref().is_some_and(|p| p.hello.is_some())).await
    }

    /// Mid-switchover, is this the processor about to be promoted? It is a
    /// current standby, and either armed to take over or its peer on the link
    /// a standby too at a newer epoch: the active has just stepped down (the
    /// last standby command went to the peer), and only a current standby may
    /// be promoted. The second rule needs no state of its own and holds in a
    /// fallback too, where the one left behind gets a newer standby command.
    fn about_to_be_promoted(c: &Core) -> bool {
        let peer_stepped_down = c
            .peer
            .as_ref()
            .and_then(|p| p.hello.as_ref())
            .is_some_and(|h| h.role == Role::Standby && h.epoch > c.epoch);
        // Armed to take over: a client told by the old active may come before its hello.
        c.role == Role::Standby && c.synced && (peer_stepped_down || c.take_over.is_some())
    }

    /// Wait (up to `bound`) until this processor is no longer about to be
    /// promoted: promoted, or told otherwise.
    pub async fn await_switchover(&self, bound: Duration) {
        self.wait_for(bound, |c| !Self::about_to_be_promoted(c)).await;
    }

    /// How long a work request held mid-switchover waits ([`Served::Hold`]).
    pub fn switchover_hold(&self) -> Duration {
        self.switchover_hold
    }

    /// This agent, its database sized for `ids` request ids up front and
    /// applying no more (a step-up refills the same tables; 0: no bound):
    /// see [`Database::with_capacity`].
    pub fn with_db_capacity(self, ids: usize) -> Self {
        self.lock().db = Database::with_capacity(ids);
        self
    }

    /// This agent, holding work requests mid-switchover up to `hold`.
    pub fn with_switchover_hold(mut self, hold: Duration) -> Self {
        self.switchover_hold = hold;
        self
    }

    /// After a demotion from active: wait (bounded) until the standby registered everything in flight.
    pub async fn flush(&self) -> Result<(), String> {
        // Made active again meanwhile (the orchestrator handing work back): the
        // pending work is an active's again, to register and ack.
        if self.wait_for(FLUSH_TIMEOUT, |c| c.pending.is_empty() || c.role == Role::Active).await {
            return Ok(());
        }
        let mut c = self.lock();
        if c.role == Role::Active {
            return Ok(());
        }
        let n = Self::refuse_pending(&mut c);
        if n == 0 {
            return Ok(());
        }
        Err(format!("{n} updates were not registered by the standby within {FLUSH_TIMEOUT:?}"))
    }

    /// Enable a new feature; both processors must run a version that supports it.
    pub fn enable_feature(&self, feature: &str) -> Result<(), String> {
        let mut c = self.lock();
        if c.enabled.contains(feature) {
            return Ok(());
        }
        if !self.supported.contains(feature) {
            return Err(format!(
                "this processor runs {}, which does not support feature `{feature}`",
                self.build.version
            ));
        }
        let peer = c.peer.as_ref().and_then(|p| p.hello.clone());
        match peer {
            None => {
                return Err(format!("cannot enable `{feature}`: the peer is not connected, so its version is unknown"))
            }
            Some(h) if !h.supported.contains(feature) => {
                return Err(format!(
                    "cannot enable `{feature}`: peer {} runs {}, which does not support it (all processors must run a version with the feature)",
                    h.name, h.version
                ))
            }
            Some(_) => {}
        }
        c.enabled.insert(feature.to_string());
        tracing::info!("feature {feature} enabled");
        self.announce(&mut c);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Disabling an enabled feature is refused: enabling is the point of no return.
    pub fn disable_feature(&self, feature: &str) -> Result<(), String> {
        let c = self.lock();
        if c.enabled.contains(feature) {
            Err(format!("feature `{feature}` is enabled; disabling it is refused (enabling new features is the point of no return)"))
        } else {
            Ok(())
        }
    }

    /// Serve one work request (the reply goes to `tx`, maybe later). False
    /// when refused because this processor is not active: the caller then
    /// stops reading that connection, so that no later request on it (say the
    /// update of a unit whose open was just refused) is applied should this
    /// processor become active again.
    pub fn work(&self, req: WorkRequest, tx: &ReplyTx) -> bool {
        matches!(self.serve(req, tx, false), Served::Yes)
    }

    /// [`Agent::work`], except at the processor about to be promoted
    /// mid-switchover: there the request comes back unanswered
    /// ([`Served::Hold`]), to be given to `work` after
    /// [`Agent::await_switchover`]. Answered "not active" at once, its client
    /// would go to the processor that just stepped down, and come back, each
    /// time on a new connection.
    pub fn work_or_hold(&self, req: WorkRequest, tx: &ReplyTx) -> Served {
        self.serve(req, tx, true)
    }

    fn serve(&self, req: WorkRequest, tx: &ReplyTx, may_hold: bool) -> Served {
        let mut c = self.lock();
        if c.role != Role::Active {
            if may_hold && Self::about_to_be_promoted(&c) {
                return Served::Hold(req);
            }
            let active = c
                .peer
                .as_ref()
                .and_then(|p| p.hello.as_ref())
                .filter(|h| h.role == Role::Active)
                .map(|h| h.name.clone());
            let _ = tx.send(WorkReply::NotActive { id: req.id, role: c.role, active });
            return Served::NotActive;
        }
        let (seq, duplicate) = match c.db.applied(&req.id) {
            Some(seq) => (seq, true),
            None => {
                if let Some(f) = req.op.feature() {
                    if !c.enabled.contains(f) {
                        let _ = tx
                            .send(WorkReply::Rejected { id: req.id, reason: format!("feature `{f}` is not enabled") });
                        return Served::Yes;
                    }
                }
                let seq = c.seq + 1;
                if let Err(e) = c.db.apply(&req, seq) {
                    let _ = tx.send(WorkReply::Rejected { id: req.id, reason: e.to_string() });
                    return Served::Yes;
                }
                c.seq = seq;
                (seq, false)
            }
        };
        let id = if c.standby_attached && !duplicate {
            // The update takes the request; the ack needs only its id.
            let (generation, id) = (c.generation, req.id.clone());
            Self::send_peer(&mut c, LinkMsg::Update { generation, seq, request: req });
            id
        } else {
            req.id
        };
        c.served += 1;
        let registered_now = c.registered.is_some_and(|r| r >= seq);
        if c.standby_attached && !registered_now {
            let p = Pending { tx: tx.clone(), id, duplicate };
            let at = c.pending.partition_point(|u| u.seq < seq);
            match c.pending.get_mut(at) {
                Some(u) if u.seq == seq => u.retries.push(p),
                _ => c.pending.insert(at, Unregistered { seq, since: Instant::now(), first: p, retries: Vec::new() }),
            }
        } else {
            let _ = tx.send(WorkReply::Ack { id, seq, registered: c.standby_attached, duplicate });
        }
        Served::Yes
    }

    /// A link connection came up; `tx` reaches the peer. Returns the connection id.
    pub fn link_up(&self, tx: LinkTx) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let conn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut c = self.lock();
        if c.peer.is_some() {
            tracing::warn!("replacing an existing link connection");
            Self::detach_standby(&mut c);
        }
        c.peer = Some(Peer { conn, tx, hello: None, heard: Instant::now() });
        self.announce(&mut c);
        self.changed.notify_waiters();
        conn
    }

    /// The link connection `conn` went down.
    pub fn link_down(&self, conn: u64, why: &str) {
        let mut c = self.lock();
        if c.peer.as_ref().is_some_and(|p| p.conn == conn) {
            tracing::info!("link to peer down: {why}");
            c.peer = None;
            if c.role == Role::Active {
                Self::detach_standby(&mut c);
            } else {
                // A demoted active still flushing: nothing in flight can be registered
                // now, and none of it was acked; clients retry at the new active.
                Self::refuse_pending(&mut c);
            }
            self.changed.notify_waiters();
        }
    }

    /// Features that may shape what goes to the peer now.
    pub fn negotiated(&self) -> FeatureSet {
        let c = self.lock();
        let peer_supported =
            c.peer.as_ref().and_then(|p| p.hello.as_ref()).map(|h| h.supported.clone()).unwrap_or_default();
        hitless_protocol::negotiated(&c.enabled, &peer_supported)
    }

    /// Handle one message from the peer.
    pub fn on_link(&self, msg: LinkMsg) -> LinkAction {
        let mut c = self.lock();
        if let Some(p) = c.peer.as_mut() {
            p.heard = Instant::now();
        }
        if msg != LinkMsg::Heartbeat {
            // Waiters wake, then take the lock after this handler: they see its final state.
            self.changed.notify_waiters();
        }
        match msg {
            LinkMsg::Hello(h) => {
                if let Some(why) = self.pairing_problem(&c, &h) {
                    tracing::warn!("pairing refused: {why}");
                }
                // A newer active peer fences a stale active: never two actives.
                if c.role == Role::Active && h.role == Role::Active && h.epoch > c.epoch {
                    tracing::warn!(
                        peer_epoch = h.epoch,
                        epoch = c.epoch,
                        "peer is active at a newer epoch; stepping down"
                    );
                    c.role = Role::Standby;
                    c.synced = false;
                    c.standby_generation = 0;
                    // Detached as a standby: what was never registered is refused.
                    Self::detach_standby(&mut c);
                    self.announce(&mut c);
                }
                let peer_role = h.role;
                c.last_peer = Some(h.clone());
                if let Some(p) = c.peer.as_mut() {
                    p.hello = Some(h);
                }
                let role_before = c.role;
                self.try_take_over(&mut c);
                if c.role != role_before {
                    // Taken over: the promotion stepped the peer up already.
                    return LinkAction::None;
                }
                if c.role == Role::Active {
                    if peer_role == Role::Standby {
                        self.step_up(&mut c, true);
                    } else {
                        Self::detach_standby(&mut c);
                    }
                }
                LinkAction::None
            }
            LinkMsg::StepUp { generation, seq, units, chain } => {
                if c.role != Role::Standby {
                    return LinkAction::None;
                }
                Self::detach_standby(&mut c);
                c.db.refill(units, seq, chain);
                c.seq = seq;
                c.standby_generation = generation;
                c.synced = true;
                c.stepups += 1;
                tracing::info!(generation, seq, units = c.db.len(), "step-up received");
                LinkAction::Registered(generation, seq)
            }
            LinkMsg::Update { generation, seq, request } => {
                if c.role != Role::Standby || generation != c.standby_generation || !c.synced {
                    return LinkAction::None;
                }
                if seq <= c.seq {
                    return LinkAction::None;
                }
                if seq != c.seq + 1 {
                    let reason = format!("gap: expected update {}, got {seq}", c.seq + 1);
                    tracing::warn!("{reason}; asking for a fresh step-up");
                    c.synced = false;
                    Self::send_peer(&mut c, LinkMsg::Resync { reason });
                    return LinkAction::None;
                }
                if let Err(e) = c.db.apply_owned(request, seq) {
                    c.errors += 1;
                    let reason = format!("update {seq} does not apply: {e}");
                    tracing::error!("{reason}; asking for a fresh step-up");
                    c.synced = false;
                    Self::send_peer(&mut c, LinkMsg::Resync { reason });
                    return LinkAction::None;
                }
                c.seq = seq;
                LinkAction::Registered(generation, seq)
            }
            LinkMsg::Registered { generation, seq } => {
                // Also after a demotion: the old active is still flushing its last updates.
                if c.standby_attached && generation == c.generation {
                    c.registered = Some(c.registered.map_or(seq, |r| r.max(seq)));
                    Self::release(&mut c, Some(seq), true);
                }
                LinkAction::None
            }
            LinkMsg::Heartbeat => LinkAction::None,
            LinkMsg::Resync { reason } => {
                tracing::warn!("standby asks for a fresh step-up: {reason}");
                self.step_up(&mut c, false);
                LinkAction::None
            }
            LinkMsg::Continue { generation, seq, chain } => {
                if c.role != Role::Standby {
                    return LinkAction::None;
                }
                if c.seq != seq || c.db.chain() != chain {
                    let reason = format!("state differs from the active's (update {} here, {seq} there)", c.seq);
                    tracing::warn!("{reason}; asking for a full step-up");
                    c.synced = false;
                    Self::send_peer(&mut c, LinkMsg::Resync { reason });
                    return LinkAction::None;
                }
                // The new active continues this history to `seq`: everything a demoted
                // active still waited on is in its state, as good as registered.
                Self::release(&mut c, Some(seq), true);
                Self::detach_standby(&mut c);
                c.standby_generation = generation;
                c.synced = true;
                c.stepups += 1;
                tracing::info!(generation, seq, "step-up confirmed by history chain");
                LinkAction::Registered(generation, seq)
            }
        }
    }

    /// Count an internal error (e.g. a message that failed to encode or decode).
    pub fn error(&self) {
        self.lock().errors += 1;
    }

    /// Full status for the host.
    pub fn status(&self) -> Status {
        let c = self.lock();
        let (registered, lag) = match c.role {
            Role::Active if c.standby_attached => (c.registered, c.seq - c.registered.unwrap_or(0).min(c.seq)),
            _ => (None, 0),
        };
        let peer = c.peer.as_ref().and_then(|p| p.hello.clone()).map(|h| PeerStatus {
            refused: self.pairing_problem(&c, &h),
            hello: h,
            connected: true,
        });
        let peer =
            peer.or_else(|| c.last_peer.clone().map(|h| PeerStatus { hello: h, connected: false, refused: None }));
        Status {
            hello: self.hello_of(&c),
            peer,
            replication: Replication {
                seq: c.seq,
                registered,
                lag,
                generation: if c.role == Role::Standby { c.standby_generation } else { c.generation },
                stepups: c.stepups,
                simplex: c.role == Role::Active && !c.standby_attached,
                synced: c.role == Role::Standby && c.synced,
                unregistered_ms: Self::oldest_unregistered(&c).as_millis() as u64,
                peer_silent_ms: c.peer.as_ref().map(|p| p.heard.elapsed().as_millis() as u64),
            },
            units: c.db.len(),
            served: c.served,
            errors: c.errors,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            warmed_up_ms: self.warm_up.took_ms(),
            request_ids: match c.db.request_ids() {
                (_, 0) => None,
                (applied, capacity) => Some(RequestIds { applied: applied as u64, capacity: capacity as u64 }),
            },
        }
    }

    /// Every work unit and the last applied sequence number.
    pub fn dump(&self) -> ControlReply {
        let c = self.lock();
        ControlReply::Dump { seq: c.seq, units: c.db.units() }
    }

    /// How long the oldest update not yet registered has waited (zero when none).
    fn oldest_unregistered(c: &Core) -> Duration {
        c.pending.front().map_or(Duration::ZERO, |u| u.since.elapsed())
    }

    /// Judge this version over `window`, as the active: it must stay active
    /// with no internal errors, and its standby must be attached and
    /// registering for the whole window — any simplex time, any update left
    /// unregistered or any silence past [`REGISTRATION_BOUND_MS`] makes it not
    /// acceptable. The window is not extended to wait for a better one.
    pub async fn evaluate(&self, window: Duration) -> Evaluation {
        let bound = Duration::from_millis(REGISTRATION_BOUND_MS);
        let before = self.status();
        let start = Instant::now();
        let mut last = start;
        let (mut not_active, mut simplex) = (Duration::ZERO, Duration::ZERO);
        let (mut slowest, mut silence) = (Duration::ZERO, Duration::ZERO);
        let mut standby = None;
        loop {
            let left = window.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(EVALUATION_SAMPLE.min(left)).await;
            let now = Instant::now();
            let dt = now - last;
            last = now;
            let c = self.lock();
            let peer = c.peer.as_ref().filter(|p| p.hello.as_ref().is_some_and(|h| h.role == Role::Standby));
            if c.role != Role::Active {
                not_active += dt;
            } else if !c.standby_attached || peer.is_none() {
                simplex += dt;
            }
            if let Some(p) = peer {
                standby = p.hello.as_ref().map(|h| h.name.clone());
                silence = silence.max(p.heard.elapsed());
            }
            slowest = slowest.max(Self::oldest_unregistered(&c));
        }
        let after = self.status();
        let ms = |d: Duration| d.as_millis();
        let standby = standby.unwrap_or_else(|| "-".into());
        // (passed, reason) per check; informational lines always pass.
        let mut checks: Vec<(bool, String)> = Vec::new();
        let mut check = |good: bool, yes: String, no: String| checks.push((good, if good { yes } else { no }));
        check(
            not_active.is_zero(),
            format!("active for the whole window ({} ms)", ms(window)),
            format!("not active for {} ms of the {} ms window", ms(not_active), ms(window)),
        );
        let errs = after.errors - before.errors;
        check(errs == 0, "no internal errors".into(), format!("{errs} internal errors during the window"));
        let served = after.served - before.served;
        check(true, format!("served {served} work requests during the window"), String::new());
        check(
            simplex.is_zero(),
            format!("standby {standby} attached for the whole window"),
            format!("no standby registering for {} ms of the window (simplex)", ms(simplex)),
        );
        check(
            slowest <= bound,
            format!("every update registered by the standby within {} ms (slowest {} ms)", ms(bound), ms(slowest)),
            format!("an update waited {} ms for the standby to register it (bound {} ms)", ms(slowest), ms(bound)),
        );
        check(
            silence <= bound,
            format!("standby heard from at least every {} ms", ms(bound)),
            format!("the standby was silent for {} ms (bound {} ms)", ms(silence), ms(bound)),
        );
        if self.build.flaw == Some(Flaw::BadEval) {
            let why = "self-test failed: this agent was started with --flaw bad-eval (a test image)";
            check(false, String::new(), why.into());
        }
        let ok = checks.iter().all(|(g, _)| *g);
        let failed = checks.iter().filter(|(g, _)| !g).map(|(_, r)| r.clone()).collect();
        let reasons = checks.into_iter().map(|(_, r)| r).collect();
        Evaluation { acceptable: ok, reasons, failed }
    }
}

/// How often an evaluation looks at the standby.
const EVALUATION_SAMPLE: Duration = Duration::from_millis(20);

pub(crate) mod joined;
#[cfg(test)]
mod tests;
