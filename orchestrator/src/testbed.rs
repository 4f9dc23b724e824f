//! The twin-processor testbed, written once over the machine backend:
//! bringing the pair up to step 200, re-attaching to it from a later
//! command, reloading one processor with another version, observing both,
//! tearing it down. Role commands allocate their epoch here, from the state
//! the run directory keeps.

use crate::agents::Agents;
use crate::config::Config;
use crate::error::{chain, EnvironmentError, Error, ProcessorError};
use crate::events::{Event, Events, ProcView, Seen};
use crate::lock::{Lock, LockError};
use crate::machine::qemu::QemuPair;
use crate::machine::sim::SimPair;
use crate::machine::{AppDisk, Backend, Boot, Machines, Software};
use crate::pair::{Pair, ProcId};
use crate::platform::{self, HostKvm, Platform};
use crate::procedure::watch::{Designated, Observed, Watch};
use crate::process;
use crate::rundir::{ProcState, RunDir, State};
use crate::wait::{wait_until, Timeouts, BOOT_POLL};
use hitless_protocol::{Hello, Role, Status};
use std::path::Path;
use std::time::Duration;

/// A processor's full status: its machine's view and its agent's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessorStatus {
    /// Processor name.
    pub name: String,
    /// The version the orchestrator booted it with.
    pub booted_version: String,
    /// Its machine's run state ("running", "paused"), if it runs.
    pub run_state: Option<String>,
    /// Which app image its machine has attached.
    pub app_disk: Option<AppDisk>,
    /// The agent's status, or why it could not be had.
    pub agent: Result<Status, String>,
}

/// How a command uses the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// It changes the pair: it holds the run directory's lock for its whole life (named for the refusal message).
    Change(&'static str),
    /// It only looks (`status`, `--dry-run`): never blocks, never changes anything.
    Observe,
}

/// What became of a switchover's two role changes ([`Testbed::switch_roles`]).
#[derive(Debug)]
pub struct Switched {
    /// The old active's demotion: the last update it applied, when it says.
    pub demoted: Result<Option<u64>, Error>,
    /// The new one's take-over.
    pub took_over: Result<(), Error>,
}

/// The running pair.
pub struct Testbed {
    cfg: Config,
    run: RunDir,
    state: State,
    machines: std::sync::Arc<Backend>,
    agents: Agents,
    events: Events,
    timeouts: Timeouts,
    /// Held while this testbed may change the pair; `None` for a read-only view.
    lock: Option<Lock>,
    /// The processor this testbed made active (the watch follows it).
    designated: Designated,
    /// What the watch saw of it.
    seen: std::sync::Arc<std::sync::Mutex<Observed>>,
}

/// Take the run directory's lock for `command`, or say who holds it and where its upgrade is.
fn lock(run: &RunDir, command: &str) -> Result<Lock, Error> {
    match crate::lock::acquire(&run.lock_file(), command) {
        Ok(l) => Ok(l),
        Err(LockError::Busy(holder)) => {
            let step = crate::procedure::read_journal(run).map(|j| j.step).filter(|s| !s.is_end());
            Err(EnvironmentError::Busy { holder, step }.into())
        }
        Err(e) => Err(EnvironmentError::Lock(e).into()),
    }
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| EnvironmentError::File { path: path.to_path_buf(), source }.into()
}

impl State {
    /// A new testbed's state: every processor on the initial version, epoch 0.
    fn initial(cfg: &Config, platform: Platform, platform_reason: String) -> State {
        State {
            config: cfg.file.canonicalize().unwrap_or_else(|_| cfg.file.clone()),
            platform,
            platform_reason,
            epoch: 0,
            processors: cfg.processors.map(|_, p| ProcState {
                name: p.name.clone(),
                version: cfg.initial_version.clone(),
                boots: 0,
            }),
        }
    }
}

impl Testbed {
    fn assemble(
        cfg: Config,
        run: RunDir,
        state: State,
        machines: Backend,
        events: Events,
        lock: Option<Lock>,
    ) -> Testbed {
        let timeouts = Timeouts::for_platform(state.platform);
        let names = cfg.processors.map(|_, p| p.name.clone());
        let machines = std::sync::Arc::new(machines);
        let probe = machines.clone();
        let reach: crate::agents::Reachability = std::sync::Arc::new(move |p| probe.reach(p));
        let agents = Agents::new(names, Pair::from_fn(|p| machines.channel(p)), timeouts, reach);
        let (designated, seen) = (Designated::default(), Default::default());
        Testbed { cfg, run, state, machines, agents, events, timeouts, lock, designated, seen }
    }

    /// Changing the pair needs the lock; a read-only view refuses.
    fn writable(&self) -> Result<(), Error> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(EnvironmentError::ReadOnly.into()),
        }
    }

    /// Boot the pair as QEMU guests to the initial state (step 200): the first
    /// processor active, the second standby after its step-up. Nothing
    /// half-started survives a failure.
    pub async fn up(cfg: Config, run: RunDir, events: Events) -> Result<Testbed, Error> {
        // Everything the host must offer is checked before anything is created.
        let (accel, reason) =
            platform::choose_accel(cfg.accelerator, HostKvm::probe()).map_err(EnvironmentError::Platform)?;
        let vsock =
            platform::choose_vsock(cfg.vsock, platform::kernel_vsock_usable()).map_err(EnvironmentError::Platform)?;
        let qemu = QemuPair::new(cfg.clone(), run.clone(), accel, vsock);
        qemu.check_host()?;
        events.progress("building images (cached by content)");
        qemu.boot_image_with(&|m| events.progress(m))?;
        let machines = Backend::Qemu(Box::new(qemu));
        machines.software(&cfg.initial_version)?;
        std::fs::create_dir_all(&run.root).map_err(file_err(&run.root))?;
        let lock = lock(&run, "hitless up")?;
        if run.state_file().exists() {
            let alive = !process::recorded_alive(&run.processes()).is_empty()
                || run.pid_files().iter().filter_map(|p| process::read_pid(p)).any(process::alive);
            if alive {
                return Err(EnvironmentError::AlreadyUp(run.root.clone()).into());
            }
            // A dead testbed's leftovers (e.g. the machine rebooted): clear them, keeping our lock.
            stop_everything(&run, &events);
        }
        let state = State::initial(&cfg, Platform::Qemu { accel, vsock }, reason);
        let mut tb = Testbed::assemble(cfg, run, state, machines, events, Some(lock));
        if let Err(e) = tb.bring_up().await {
            stop_everything(&tb.run, &tb.events);
            return Err(e);
        }
        Ok(tb)
    }

    /// The simulated pair ([`crate::machine::sim`]) brought to step 200 like
    /// [`Testbed::up`]: the same orchestration, journal and transcript, with
    /// in-process agents for VMs. It lives as long as this value.
    pub async fn simulated(cfg: Config, run: RunDir, events: Events) -> Result<Testbed, Error> {
        let sim = SimPair::new(&cfg).map_err(|source| EnvironmentError::File { path: "(loopback)".into(), source })?;
        let reason = "agents in this process, over loopback TCP".to_string();
        let state = State::initial(&cfg, Platform::Simulated, reason);
        std::fs::create_dir_all(&run.root).map_err(file_err(&run.root))?;
        let lock = lock(&run, "hitless simulate")?;
        // A VM testbed's run directory holds pid files of live processes: never clear that.
        if run.load_state().is_ok_and(|st| st.platform != Platform::Simulated) {
            return Err(EnvironmentError::AlreadyUp(run.root.clone()).into());
        }
        // The simulated pair lives in this process: whatever a previous rehearsal left is only files.
        for entry in std::fs::read_dir(&run.root).map_err(file_err(&run.root))?.flatten() {
            if entry.file_name() != "lock" {
                let p = entry.path();
                let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                removed.map_err(file_err(&p))?;
            }
        }
        let machines = Backend::Simulated(std::sync::Arc::new(sim));
        let mut tb = Testbed::assemble(cfg, run, state, machines, events, Some(lock));
        tb.software(&tb.cfg.initial_version.clone())?;
        tb.bring_up().await?;
        Ok(tb)
    }

    async fn bring_up(&mut self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.run.root).map_err(file_err(&self.run.root))?;
        self.save()?;
        let reason = self.state.platform_reason.clone();
        self.events.emit(Event::Platform { platform: self.state.platform, reason });
        self.machines.provision().await.map_err(EnvironmentError::Machine)?;
        // Both boot in parallel: start both processors, then wait for both agents.
        let version = self.cfg.initial_version.clone();
        let mut boots = Vec::new();
        for p in ProcId::BOTH {
            boots.push((p, self.start(p, &version).await?));
        }
        for (p, mut boot) in boots {
            self.wait_agent(p, &mut boot).await?;
        }
        self.set_role(ProcId::FIRST, Role::Active).await?;
        self.make_standby(ProcId::SECOND).await?;
        self.agents.wait_peers_seen().await?;
        Ok(())
    }

    /// Re-attach to a testbed that `hitless up` left running: to change it
    /// (holding its lock, taken before its state is read) or only to look.
    pub fn attach(run: RunDir, events: Events, access: Access) -> Result<Testbed, Error> {
        if !run.state_file().exists() {
            return Err(EnvironmentError::NotUp(run.root.clone()).into());
        }
        let lock = match access {
            Access::Change(command) => Some(lock(&run, command)?),
            Access::Observe => None,
        };
        let state = run.load_state().map_err(|_| EnvironmentError::NotUp(run.root.clone()))?;
        let cfg = Config::load(&state.config)?;
        for (p, recorded) in state.processors.iter() {
            cfg.proc_id(&recorded.name)?;
            if cfg.processors[p].name != recorded.name {
                return Err(EnvironmentError::Platform(format!(
                    "{} names the processors differently than when the testbed came up in {}; run `hitless down` first",
                    cfg.file.display(),
                    run.root.display()
                ))
                .into());
            }
        }
        let machines = match state.platform {
            Platform::Qemu { accel, vsock } => {
                Backend::Qemu(Box::new(QemuPair::new(cfg.clone(), run.clone(), accel, vsock)))
            }
            Platform::Simulated => return Err(EnvironmentError::SimulatedElsewhere(run.root.clone()).into()),
        };
        Ok(Testbed::assemble(cfg, run, state, machines, events, lock))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The run directory.
    pub fn run(&self) -> &RunDir {
        &self.run
    }
    /// The event stream.
    pub fn events(&self) -> &Events {
        &self.events
    }
    /// Where the processors run.
    pub fn platform(&self) -> Platform {
        self.state.platform
    }
    /// Why there.
    pub fn platform_reason(&self) -> &str {
        &self.state.platform_reason
    }
    /// The last epoch issued.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }
    /// The agents' control channels.
    pub fn agents(&self) -> &Agents {
        &self.agents
    }
    /// The machine backend: faults and observations of the processors' machines.
    pub fn machines(&self) -> &Backend {
        &self.machines
    }
    /// The simulated pair behind this testbed, if it is one (tests inject faults through it).
    pub fn simulated_pair(&self) -> Option<std::sync::Arc<SimPair>> {
        match self.machines.as_ref() {
            Backend::Simulated(s) => Some(s.clone()),
            Backend::Qemu(_) => None,
        }
    }
    /// The timeouts in use.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Processor `p`'s name.
    pub fn name(&self, p: ProcId) -> &str {
        &self.cfg.processors[p].name
    }

    /// The version `p` was last booted with.
    pub fn version_of(&self, p: ProcId) -> &str {
        &self.state.processors[p].version
    }

    /// What `version` is on this backend (resolved, and built, once).
    pub fn software(&self, version: &str) -> Result<Software, Error> {
        self.machines.software(version)
    }

    /// Whether `p`'s machine runs.
    pub fn alive(&self, p: ProcId) -> bool {
        self.machines.alive(p)
    }

    fn save(&self) -> Result<(), Error> {
        self.run.save_state(&self.state).map_err(file_err(&self.run.state_file()))
    }

    /// Start `p`'s machine running `version`; count the boot, remember the version, say so.
    async fn start(&mut self, p: ProcId, version: &str) -> Result<Boot, Error> {
        let sw = self.software(version)?;
        self.agents.forget(p);
        let boot_no = self.state.processors[p].boots + 1;
        let boot = self.machines.start(p, &sw, boot_no).await.map_err(|source| self.machine_err(p, source))?;
        let st = &mut self.state.processors[p];
        st.boots = boot_no;
        st.version = version.to_string();
        self.save()?;
        self.events.emit(Event::ProcessorStarted {
            processor: self.name(p).into(),
            version: version.into(),
            image: sw.image,
            overlay: boot.overlay.clone(),
            pid: boot.pid,
        });
        Ok(boot)
    }

    fn machine_err(&self, p: ProcId, source: crate::machine::MachineError) -> Error {
        ProcessorError::Machine { processor: self.name(p).into(), source }.into()
    }

    /// A boot that failed: said once, by the first line that explains it; the
    /// console and QEMU output to read go to the event stream, not into the message.
    fn boot_error(&self, p: ProcId, boot: &Boot, why: String) -> Error {
        let d = self.machines.diagnostics(p, Some(boot));
        if !d.detail.is_empty() {
            self.events.progress(format!("{} did not come up; what it printed:\n{}", self.name(p), d.detail));
        }
        let why = match d.cause {
            Some(cause) => format!("{why}; it said: {cause}"),
            None => why,
        };
        ProcessorError::Boot { processor: self.name(p).into(), why, console: d.console }.into()
    }

    /// Wait (bounded, stopping early if the machine dies) until the agent answers hello.
    async fn wait_agent(&self, p: ProcId, boot: &mut Boot) -> Result<Hello, Error> {
        /// Why a boot wait ended without an answer.
        enum NoAnswer {
            Died,
            AgentExited(String),
            Expired,
        }
        let budget = self.timeouts.boot.saturating_sub(boot.started.elapsed());
        let probe = async || {
            if !self.alive(p) {
                return Err(NoAnswer::Died);
            }
            if let Some(line) = self.machines.agent_gone(p) {
                return Err(NoAnswer::AgentExited(line));
            }
            if !boot.may_connect() {
                return Ok(None);
            }
            Ok(self.agents.hello(p, Duration::from_secs(2)).await.ok())
        };
        let h = match wait_until(budget, BOOT_POLL, probe, || NoAnswer::Expired).await {
            Ok(h) => h,
            Err(NoAnswer::Died) => return Err(self.boot_error(p, boot, "its machine exited during boot".into())),
            Err(NoAnswer::AgentExited(line)) => {
                return Err(self.boot_error(p, boot, format!("its agent exited during boot ({line})")))
            }
            Err(NoAnswer::Expired) => {
                let why = format!("its agent did not answer within {:?}", self.timeouts.boot);
                return Err(self.boot_error(p, boot, why));
            }
        };
        let boot_ms = boot.started.elapsed().as_millis() as u64;
        self.events.emit(Event::AgentReady { processor: self.name(p).into(), version: h.version.clone(), boot_ms });
        Ok(h)
    }

    /// Stop `p`'s machine gracefully (bounded), and say so.
    pub async fn stop(&mut self, p: ProcId) {
        self.undesignate(p);
        let how = self.machines.stop(p).await;
        self.events.emit(Event::ProcessorStopped { processor: self.name(p).into(), how: how.into() });
    }

    /// Fence `p`: stop its machine at once, so that it can never serve again
    /// (before anything else is promoted in its place), and say so.
    pub async fn fence(&mut self, p: ProcId) {
        self.undesignate(p);
        self.machines.kill(p).await;
        self.events.emit(Event::ProcessorStopped { processor: self.name(p).into(), how: "fenced".into() });
    }

    fn undesignate(&self, p: ProcId) {
        if self.designated.get() == Some(p) {
            self.designated.set(None);
        }
    }

    /// Tell the watch which processor is active now (when the run starts on a pair it did not make).
    pub fn designate(&self, p: Option<ProcId>) {
        self.designated.set(p);
    }

    /// What faults act through ([`crate::faults`]).
    pub fn fault_handles(&self) -> crate::faults::Handles {
        crate::faults::Handles {
            machines: self.machines.clone(),
            agents: self.agents.clone(),
            events: self.events.clone(),
            names: self.cfg.processors.map(|_, p| p.name.clone()),
            run_root: self.run.root.clone(),
        }
    }

    /// A watch over the active this testbed designated ([`crate::procedure::watch`]).
    pub fn watch(&self) -> Watch {
        let (agents, machines) = (self.agents.clone(), self.machines.clone());
        Watch::new(agents, machines, self.designated.clone(), self.seen.clone(), self.timeouts.slowdown)
    }

    /// Reload `p` with `version`: it goes down and comes back as a fresh
    /// machine booting that version, same identity; its machine must then show
    /// the version's image. Returns what it shows.
    pub async fn reload(&mut self, p: ProcId, version: &str) -> Result<AppDisk, Error> {
        self.writable()?;
        // Resolve first: a missing image must fail before the processor goes down.
        let sw = self.software(version)?;
        let was = self.software(self.version_of(p)).map(|s| s.image).unwrap_or_else(|_| "-".into());
        self.stop(p).await;
        let mut boot = self.start(p, version).await?;
        let hello = self.wait_agent(p, &mut boot).await?;
        let refused = |message: String| ProcessorError::Agent { processor: self.name(p).into(), message };
        if hello.version != sw.version {
            return Err(refused(format!("agent reports {}, expected {}", hello.version, sw.version)).into());
        }
        let disk = self.machines.app_disk(p).await.map_err(|source| self.machine_err(p, source))?;
        self.events.emit(Event::AppDisk {
            processor: self.name(p).into(),
            overlay: disk.overlay.clone(),
            backing: disk.backing.clone(),
            was,
        });
        if disk.backing != sw.image {
            return Err(refused(format!("its machine shows image {}, expected {}", disk.backing, sw.image)).into());
        }
        Ok(disk)
    }

    /// Give `p` a role at the next epoch (allocated and saved before it is
    /// sent). Returns the last update `p` applied, when its agent says (after a
    /// demotion: once its in-flight work is flushed).
    pub async fn set_role(&mut self, p: ProcId, role: Role) -> Result<Option<u64>, Error> {
        self.command_role(p, role, None).await
    }

    /// Promote `p` only if it has applied `holding`, the demoted active's last
    /// update; otherwise [`ProcessorError::Lacking`], and `p` stays standby.
    pub async fn promote_holding(&mut self, p: ProcId, holding: u64) -> Result<(), Error> {
        self.command_role(p, Role::Active, Some(holding)).await.map(|_| ())
    }

    /// Take `n` new epochs (recorded before any command carries them) and
    /// return the last; `leaving` is the processor whose active role ends with
    /// the command, so the watch does not take its demotion for a loss.
    fn next_epochs(&mut self, n: u64, leaving: Option<ProcId>) -> Result<u64, Error> {
        self.writable()?;
        self.state.epoch += n;
        self.save()?;
        // Whatever the watch saw current may not be any more.
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).forget();
        if let Some(p) = leaving {
            self.undesignate(p);
        }
        Ok(self.state.epoch)
    }

    async fn command_role(&mut self, p: ProcId, role: Role, holding: Option<u64>) -> Result<Option<u64>, Error> {
        let epoch = self.next_epochs(1, (role != Role::Active).then_some(p))?;
        let seq = self.agents.set_role(p, role, epoch, holding).await?;
        if role == Role::Active {
            self.designated.set(Some(p));
        }
        self.events.emit(Event::Role { processor: self.name(p).into(), role, epoch });
        Ok(seq)
    }

    /// A switchover's two role changes at once: `old` is demoted to standby
    /// while `new` is armed to take over as soon as it hears so over the link,
    /// holding everything `old` applied ([`crate::agents::Agents::take_over`]),
    /// so no round trip through the host sits between the demotion and the
    /// promotion. Each outcome is the caller's to act on: a failed demotion
    /// (fence `old`), a take-over that did not happen (promote `new` by
    /// command; an agent that lacks `old`'s updates refuses that too). Errs
    /// only when the run directory cannot record the epochs.
    pub async fn switch_roles(&mut self, old: ProcId, new: ProcId) -> Result<Switched, Error> {
        let up = self.next_epochs(2, Some(old))?;
        let down = up - 1;
        // The take-over is asked first: armed before `old`'s hello arrives, or it
        // finds that hello already there.
        let (took_over, demoted) =
            tokio::join!(self.agents.take_over(new, up, down), self.agents.set_role(old, Role::Standby, down, None));
        // Events in one order whatever order the answers came in (transcripts are compared).
        if demoted.is_ok() {
            self.events.emit(Event::Role { processor: self.name(old).into(), role: Role::Standby, epoch: down });
        }
        if took_over.is_ok() {
            self.designated.set(Some(new));
            self.events.emit(Event::Role { processor: self.name(new).into(), role: Role::Active, epoch: up });
        }
        Ok(Switched { demoted: demoted.map_err(Error::from), took_over: took_over.map_err(Error::from) })
    }

    /// Make `p` standby and wait until its step-up from the other is complete.
    pub async fn make_standby(&mut self, p: ProcId) -> Result<(), Error> {
        self.set_role(p, Role::Standby).await?;
        self.wait_standby_current(p).await
    }

    /// Wait until `standby`'s active sees it current (and tell the watch it did).
    pub async fn wait_standby_current(&self, standby: ProcId) -> Result<(), Error> {
        self.agents.wait_standby_current(standby).await?;
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).current_now();
        Ok(())
    }

    /// Wait until the active `active` sees its standby current (and tell the watch it did).
    pub async fn wait_seen_current(&self, active: ProcId) -> Result<(), Error> {
        self.agents.wait_seen_current(active).await?;
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).current_now();
        Ok(())
    }

    /// The processor whose agent reports itself active, if any.
    pub async fn active(&self) -> Option<ProcId> {
        self.agents.active().await
    }

    /// Full status of both processors.
    pub async fn status(&self) -> Pair<ProcessorStatus> {
        Pair::new(self.processor_status(ProcId::FIRST).await, self.processor_status(ProcId::SECOND).await)
    }

    async fn processor_status(&self, p: ProcId) -> ProcessorStatus {
        let alive = self.alive(p);
        let run_state = self.machines.run_state(p).await;
        let app_disk = if alive { self.machines.app_disk(p).await.ok() } else { None };
        // Two quick attempts, not the request budget (30 s under TCG): an
        // unreachable agent is what `status` must report, promptly.
        let agent = if alive {
            match self.agents.poll_status(p).await {
                Err(crate::error::ProcessorError::Unreachable { .. }) => self.agents.poll_status(p).await,
                other => other,
            }
            .map_err(|e| chain(&e))
        } else {
            Err("its machine is not running".into())
        };
        let booted_version = self.version_of(p).to_string();
        ProcessorStatus { name: self.name(p).into(), booted_version, run_state, app_disk, agent }
    }

    /// Roles and versions as the agents report them (for the transcript):
    /// "down" only when the machine does not run.
    pub async fn pair_view(&self) -> Vec<ProcView> {
        let mut v = Vec::new();
        for p in ProcId::BOTH {
            let (role, version) = match self.agents.poll_status(p).await {
                Ok(s) => (Seen::from(s.hello.role), s.hello.version),
                Err(_) if self.alive(p) => (Seen::Unreachable, self.version_of(p).to_string()),
                Err(_) => (Seen::Down, self.version_of(p).to_string()),
            };
            v.push(ProcView { processor: self.name(p).into(), role, version });
        }
        v
    }
}

/// Tear down whatever runs from `run` and remove the run directory, holding
/// its lock (refused while another command holds the pair). Idempotent, and
/// works after the orchestrator or a VM died. Returns how many processes it stopped.
pub fn down(run: &RunDir, events: &Events) -> Result<usize, Error> {
    if !run.root.exists() {
        return Ok(0);
    }
    let _lock = lock(run, "hitless down")?;
    Ok(stop_everything(run, events))
}

/// Stop every process the run directory started — each by its process group
/// (SIGTERM, which QEMU and the vsock daemon both handle by exiting cleanly,
/// then SIGKILL after a grace period), found in its record of processes and
/// in its pid files — then remove the directory. The caller holds the lock.
fn stop_everything(run: &RunDir, events: &Events) -> usize {
    let mut pids: Vec<u32> = process::recorded_alive(&run.processes()).into_iter().map(|r| r.pid).collect();
    for pf in run.pid_files() {
        pids.extend(process::read_pid(&pf).filter(|p| process::alive(*p)));
    }
    pids.sort_unstable();
    pids.dedup();
    for pid in &pids {
        process::stop_group(*pid, Duration::from_secs(2));
        events.progress(format!("stopped pid {pid}"));
    }
    if run.root.exists() {
        let _ = std::fs::remove_dir_all(&run.root);
    }
    pids.len()
}
