//! The twin-processor testbed: bringing the pair up, re-attaching to it,
//! reloading one processor with another version, querying it, tearing it
//! down. Every helper process is started through [`crate::process`] so that
//! `down` can always stop it from the run directory's pid files.

use crate::accel::{self, Accel, HostKvm};
use crate::channel::{AgentClient, Channel, ChannelError};
use crate::config::{Config, VsockMode};
use crate::events::{Event, Events, ProcView};
use crate::images::{self, AppImage, BootImage};
use crate::process;
use crate::qemu::{self, MachineSpec, VsockDevice};
use crate::qmp::{AppDisk, Qmp};
use crate::rundir::{ProcState, RunDir, State, VsockKind};
use crate::sim::SimPair;
use hitless_agent::build::Build;
use hitless_protocol::{ControlReply, ControlRequest, FeatureSet, Hello, Role, Status};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What went wrong with the testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An image could not be built.
    #[error("building images")]
    Image(#[from] images::ImageError),
    /// Something the host must provide is missing.
    #[error("environment: {0}")]
    Environment(String),
    /// The run directory is in use.
    #[error("testbed already up in {0} (run `hitless down` first, or pick another --run-dir)")]
    AlreadyUp(PathBuf),
    /// No testbed in the run directory.
    #[error("no testbed is up in {0} (run `hitless up` first)")]
    NotUp(PathBuf),
    /// A helper process failed.
    #[error("processor {processor}")]
    Process {
        /// Processor.
        processor: String,
        /// Why.
        #[source]
        source: process::ProcessError,
    },
    /// A processor did not come up.
    #[error("processor {processor} did not come up: {why}\n--- last serial console lines ---\n{serial}\n--- QEMU output ---\n{qemu}")]
    Boot {
        /// Processor.
        processor: String,
        /// What was waited for.
        why: String,
        /// Serial tail.
        serial: String,
        /// QEMU log tail.
        qemu: String,
    },
    /// A QMP call failed.
    #[error("processor {processor}")]
    Qmp {
        /// Processor.
        processor: String,
        /// Why.
        #[source]
        source: crate::qmp::QmpError,
    },
    /// The agent failed or refused.
    #[error("processor {processor}: {message}")]
    Agent {
        /// Processor.
        processor: String,
        /// What the agent said.
        message: String,
    },
    /// A run-directory file could not be used.
    #[error("{path}")]
    File {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
    move |source| TestbedError::File { path: path.to_path_buf(), source }
}

/// Named timeouts; TCG is slower than KVM, so they scale with the accelerator.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From QEMU start to the agent answering.
    pub boot: Duration,
    /// One control request.
    pub request: Duration,
    /// A standby's step-up.
    pub stepup: Duration,
}

impl Timeouts {
    /// Timeouts for `accel`.
    pub fn for_accel(accel: Accel) -> Self {
        let k = if accel == Accel::Tcg { 3 } else { 1 };
        Timeouts {
            boot: Duration::from_secs(20 * k),
            request: Duration::from_secs(10 * k),
            stepup: Duration::from_secs(10 * k),
        }
    }
}

/// A processor's full status: QEMU's view and the agent's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessorStatus {
    /// Name.
    pub name: String,
    /// Version the orchestrator booted.
    pub booted_version: String,
    /// QEMU pid, if alive.
    pub pid: Option<u32>,
    /// QMP `query-status`.
    pub run_state: Option<String>,
    /// QMP: which app image is attached.
    pub app_disk: Option<AppDisk>,
    /// The agent's status, or why it could not be had.
    pub agent: Result<Status, String>,
}

/// A boot in progress: when QEMU started and where its console output begins.
#[derive(Debug, Clone, Copy)]
struct Boot {
    t0: Instant,
    serial_offset: u64,
}

/// Where the processors run.
enum Machines {
    /// QEMU guests booting this image.
    Qemu(BootImage),
    /// Agents in this process ([`crate::sim`]).
    Sim(std::sync::Arc<SimPair>),
}

/// What a version of the config is, as far as the procedure cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version the agent reports.
    pub version: String,
    /// Its app image (for the simulated pair: what runs instead).
    pub image: String,
    /// Features it supports (new ones are disabled until step 207).
    pub features: FeatureSet,
}

/// The running pair.
pub struct Testbed {
    /// Configuration.
    pub cfg: Config,
    /// Run directory.
    pub run: RunDir,
    /// Recorded state.
    pub state: State,
    /// QEMU guests or the simulated pair.
    machines: Machines,
    /// Event stream.
    pub events: Events,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// App images resolved so far: resolving runs cargo and the agent, so do it once per version.
    apps: std::sync::Mutex<BTreeMap<String, AppImage>>,
}

impl State {
    /// A new testbed's state: every processor on the initial version, epoch 0.
    fn initial(cfg: &Config, accel: Accel, accel_reason: String, vsock: VsockKind) -> State {
        State {
            config: cfg.file.canonicalize().unwrap_or_else(|_| cfg.file.clone()),
            accel,
            accel_reason,
            vsock,
            epoch: 0,
            processors: cfg
                .processors
                .iter()
                .map(|p| ProcState { name: p.name.clone(), version: cfg.initial_version.clone(), boots: 0 })
                .collect(),
        }
    }
}

/// Is a usable QEMU there?
pub fn check_qemu(qemu: &Path) -> Result<(), TestbedError> {
    match std::process::Command::new(qemu).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(TestbedError::Environment(format!(
            "{} --version failed: {}",
            qemu.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(TestbedError::Environment(format!(
            "QEMU not found: cannot run {} ({e}); install qemu-system-x86 (make setup) or set HITLESS_QEMU",
            qemu.display()
        ))),
    }
}

fn vsock_kind(mode: VsockMode) -> Result<VsockKind, TestbedError> {
    let kernel_ok = std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-vsock").is_ok();
    match mode {
        VsockMode::Kernel if kernel_ok => Ok(VsockKind::Kernel),
        VsockMode::Kernel => Err(TestbedError::Environment(
            "vsock: kernel requested but /dev/vhost-vsock is not usable; use vsock: auto or user".into(),
        )),
        VsockMode::User => Ok(VsockKind::User),
        VsockMode::Auto if kernel_ok => Ok(VsockKind::Kernel),
        VsockMode::Auto => Ok(VsockKind::User),
    }
}

impl Testbed {
    /// Bring the pair up to the initial state (step 200): first processor active, second standby after its step-up.
    pub async fn up(cfg: Config, run: RunDir, events: Events) -> Result<Testbed, TestbedError> {
        check_qemu(&cfg.qemu)?;
        if run.state_file().exists() {
            let alive = run.pid_files().iter().filter_map(|p| process::read_pid(p)).any(process::alive);
            if alive {
                return Err(TestbedError::AlreadyUp(run.root.clone()));
            }
            // A dead testbed's leftovers (e.g. the machine rebooted): clear them.
            down(&run, &events);
        }
        let (accel, reason) = accel::choose(cfg.accelerator, HostKvm::probe()).map_err(TestbedError::Environment)?;
        let vsock = vsock_kind(cfg.vsock)?;
        if vsock == VsockKind::User && !cfg.vhost_device_vsock.is_file() {
            return Err(TestbedError::Environment(format!(
                "vhost-device-vsock not found at {} (run `make setup`)",
                cfg.vhost_device_vsock.display()
            )));
        }
        events.progress("building images (cached by content)");
        let boot = images::boot_image(&cfg)?;
        let state = State::initial(&cfg, accel, reason.clone(), vsock);
        let mut tb = Testbed {
            timeouts: Timeouts::for_accel(accel),
            cfg,
            run,
            state,
            machines: Machines::Qemu(boot),
            events,
            apps: Default::default(),
        };
        // The initial version's image, before anything is created or started.
        let initial = tb.cfg.initial_version.clone();
        tb.app(&initial)?;
        std::fs::create_dir_all(&tb.run.root).map_err(file_err(&tb.run.root))?;
        tb.save()?;
        tb.events.emit(Event::Accelerator { accel: accel.to_string(), reason });
        let result = tb.bring_up().await;
        if let Err(e) = result {
            // Nothing half-started may survive a failed `up`.
            down(&tb.run, &tb.events);
            return Err(e);
        }
        Ok(tb)
    }

    /// The simulated pair ([`crate::sim`]) brought to step 200 like [`Testbed::up`]:
    /// the same orchestration, journal and transcript, with in-process agents for VMs.
    pub async fn simulated(cfg: Config, run: RunDir, events: Events) -> Result<Testbed, TestbedError> {
        let sim = SimPair::new(&cfg.processors.iter().map(|p| p.name.clone()).collect::<Vec<_>>())
            .map_err(|e| TestbedError::Environment(format!("simulated pair: {e}")))?;
        let reason = "simulated pair: agents in this process over loopback TCP".to_string();
        let state = State::initial(&cfg, Accel::Simulated, reason.clone(), VsockKind::Tcp);
        let mut tb = Testbed {
            timeouts: Timeouts::for_accel(Accel::Simulated),
            cfg,
            run,
            state,
            machines: Machines::Sim(std::sync::Arc::new(sim)),
            events,
            apps: Default::default(),
        };
        tb.sim_build(&tb.cfg.initial_version.clone())?;
        std::fs::create_dir_all(&tb.run.root).map_err(file_err(&tb.run.root))?;
        tb.save()?;
        tb.events.emit(Event::Accelerator { accel: Accel::Simulated.to_string(), reason });
        tb.bring_up().await?;
        Ok(tb)
    }

    /// The simulated pair behind this testbed, if it is one (tests inject faults through it).
    pub fn simulated_pair(&self) -> Option<std::sync::Arc<SimPair>> {
        match &self.machines {
            Machines::Sim(s) => Some(s.clone()),
            Machines::Qemu(_) => None,
        }
    }

    /// The agent build a version of the config stands for, when it runs in-process.
    fn sim_build(&self, version: &str) -> Result<Build, TestbedError> {
        match self.cfg.versions.get(version) {
            Some(crate::config::Version::Build { features, .. }) => Ok(Build::from_cargo_features(features)),
            Some(crate::config::Version::Prebuilt { agent, .. }) => Err(TestbedError::Environment(format!(
                "version {version} is a prebuilt agent ({}); the simulated pair runs only versions built from this workspace",
                agent.display()
            ))),
            None => Err(TestbedError::Environment(format!("version {version} is not in {}", self.cfg.file.display()))),
        }
    }

    /// What `version` is: built (or looked up) once per testbed.
    pub fn version_info(&self, version: &str) -> Result<VersionInfo, TestbedError> {
        match &self.machines {
            Machines::Qemu(_) => {
                let a = self.app(version)?;
                let field = |k: &str| a.manifest.get(k).cloned().unwrap_or_default();
                Ok(VersionInfo {
                    version: field("version").as_str().unwrap_or_default().to_string(),
                    image: a.path.display().to_string(),
                    features: serde_json::from_value(field("features")).unwrap_or_default(),
                })
            }
            Machines::Sim(_) => {
                let b = self.sim_build(version)?;
                let image = format!(
                    "(simulated: hitless-agent {}{})",
                    b.version,
                    b.flaw.map(|f| format!(", flaw {f:?}")).unwrap_or_default()
                );
                Ok(VersionInfo { version: b.version, image, features: b.features })
            }
        }
    }

    async fn bring_up(&mut self) -> Result<(), TestbedError> {
        let names: Vec<String> = self.cfg.processors.iter().map(|p| p.name.clone()).collect();
        let version = self.cfg.initial_version.clone();
        for n in &names {
            std::fs::create_dir_all(self.run.proc_dir(n)).map_err(file_err(&self.run.proc_dir(n)))?;
            if self.state.vsock == VsockKind::User {
                self.start_vsock_daemon(n).await?;
            }
        }
        // Both boot in parallel: start both processors, then wait for both agents.
        let mut started = Vec::new();
        for n in &names {
            started.push((n.clone(), self.start_processor(n, &version).await?));
        }
        for (n, boot) in &started {
            self.wait_agent(n, *boot).await?;
        }
        self.set_role(&names[0], Role::Active).await?;
        self.make_standby(&names[1]).await?;
        self.wait_peers_seen().await
    }

    /// Re-attach to a testbed that `hitless up` left running.
    pub fn attach(run: RunDir, events: Events) -> Result<Testbed, TestbedError> {
        let state = run.load_state().map_err(|_| TestbedError::NotUp(run.root.clone()))?;
        let cfg = Config::load(&state.config)?;
        if state.accel == Accel::Simulated {
            return Err(TestbedError::Environment(format!(
                "{} holds a simulated pair; it lives only in the process that started it",
                run.root.display()
            )));
        }
        let boot = images::boot_image(&cfg)?;
        Ok(Testbed {
            timeouts: Timeouts::for_accel(state.accel),
            cfg,
            run,
            state,
            machines: Machines::Qemu(boot),
            events,
            apps: Default::default(),
        })
    }

    /// The app image of `version`, built if needed (once per testbed).
    pub fn app(&self, version: &str) -> Result<AppImage, images::ImageError> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = apps.get(version) {
            return Ok(a.clone());
        }
        let a = images::app_image(&self.cfg, version)?;
        apps.insert(version.to_string(), a.clone());
        Ok(a)
    }

    fn save(&self) -> Result<(), TestbedError> {
        self.run.save_state(&self.state).map_err(file_err(&self.run.state_file()))
    }

    fn proc_state(&mut self, name: &str) -> &mut ProcState {
        let i = self.state.processors.iter().position(|p| p.name == name).unwrap_or(0);
        &mut self.state.processors[i]
    }

    /// The version a processor was last booted with.
    pub fn version_of(&self, name: &str) -> String {
        self.state.processors.iter().find(|p| p.name == name).map(|p| p.version.clone()).unwrap_or_default()
    }

    /// Processor names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.cfg.processors.iter().map(|p| p.name.clone()).collect()
    }

    /// The other processor.
    pub fn peer_of(&self, name: &str) -> String {
        self.names().into_iter().find(|n| n != name).unwrap_or_default()
    }

    async fn start_vsock_daemon(&self, name: &str) -> Result<(), TestbedError> {
        let p =
            self.cfg.processor(name).ok_or_else(|| TestbedError::Environment(format!("unknown processor {name}")))?;
        let uds = self.run.vsock_uds(name);
        let sock = self.run.vhost_user(name);
        for f in [&uds, &sock] {
            let _ = std::fs::remove_file(f);
        }
        let arg = format!("guest-cid={},socket={},uds-path={}", p.cid, sock.display(), uds.display());
        process::spawn(
            &self.cfg.vhost_device_vsock,
            &["--vm".into(), arg],
            &self.run.vsock_log(name),
            &self.run.vsock_pid(name),
        )
        .map_err(|source| TestbedError::Process { processor: name.into(), source })?;
        // QEMU connects to the daemon's socket at start: wait for it to exist.
        let expired = || TestbedError::Boot {
            processor: name.into(),
            why: format!("vhost-device-vsock did not create {}", sock.display()),
            serial: String::new(),
            qemu: process::tail(&self.run.vsock_log(name), 20),
        };
        wait_until(Duration::from_secs(5), BOOT_POLL, async || Ok(sock.exists().then_some(())), expired).await
    }

    /// Start a processor running `version`; returns its start time.
    async fn start_processor(&mut self, name: &str, version: &str) -> Result<Boot, TestbedError> {
        let Machines::Sim(sim) = &self.machines else { return self.start_qemu(name, version).await };
        let build = self.sim_build(version)?;
        let t0 = Instant::now();
        sim.start(name, build).map_err(|e| TestbedError::Environment(format!("simulated processor {name}: {e}")))?;
        let image = self.version_info(version)?.image;
        self.record_start(name, version, image, "-".into(), 0)?;
        Ok(Boot { t0, serial_offset: 0 })
    }

    /// A processor started booting `version`: count the boot, remember the version, say so.
    fn record_start(
        &mut self,
        name: &str,
        version: &str,
        image: String,
        overlay: String,
        pid: u32,
    ) -> Result<(), TestbedError> {
        let st = self.proc_state(name);
        st.boots += 1;
        st.version = version.to_string();
        self.save()?;
        self.events.emit(Event::ProcessorStarted {
            processor: name.into(),
            version: version.into(),
            image,
            overlay,
            pid,
        });
        Ok(())
    }

    /// Start a processor's QEMU booting `version` from a fresh overlay; returns its start time.
    async fn start_qemu(&mut self, name: &str, version: &str) -> Result<Boot, TestbedError> {
        let Machines::Qemu(boot) = &self.machines else {
            return Err(TestbedError::Environment("a simulated pair starts no QEMU".into()));
        };
        let (kernel, initrd) = (boot.kernel.clone(), boot.initrd.clone());
        let app = self.app(version)?;
        let boots = self.proc_state(name).boots + 1;
        let overlay = self.run.overlay(name, boots, version);
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&app.path)
            .arg(&overlay)
            .output()
            .map_err(|e| TestbedError::Environment(format!("qemu-img not runnable: {e} (run `make setup`)")))?;
        if !out.status.success() {
            return Err(TestbedError::Environment(format!(
                "qemu-img create {}: {}",
                overlay.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let peer = self.peer_of(name);
        let me = self
            .cfg
            .processor(name)
            .cloned()
            .ok_or_else(|| TestbedError::Environment(format!("unknown processor {name}")))?;
        let peer_addr = self.cfg.processor(&peer).map(|p| p.link_local()).unwrap_or_default();
        let vsock = match self.state.vsock {
            VsockKind::Kernel => VsockDevice::Kernel(me.cid),
            VsockKind::User => VsockDevice::User(self.run.vhost_user(name)),
            VsockKind::Tcp => {
                return Err(TestbedError::Environment(
                    "loopback TCP is the simulated pair's channel, not a guest's".into(),
                ))
            }
        };
        let (qmp, serial, link, link_peer) =
            (self.run.qmp(name), self.run.serial(name), self.run.link(name), self.run.link(&peer));
        // A restarted QEMU binds its link socket again; the dead one's file would block it.
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&qmp);
        let agent_log = std::env::var("HITLESS_AGENT_LOG").ok();
        let spec = MachineSpec {
            processor: &me,
            accel: self.state.accel,
            kernel: &kernel,
            initrd: &initrd,
            app_overlay: &overlay,
            qmp: &qmp,
            serial: &serial,
            link_local: &link,
            link_remote: &link_peer,
            peer_addr: &peer_addr,
            dial: self.names().first().map(String::as_str) != Some(name),
            agent_log: agent_log.as_deref(),
            vsock: &vsock,
        };
        let argv = qemu::argv(&spec);
        let serial_offset = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let helper = process::spawn(&self.cfg.qemu, &argv, &self.run.qemu_log(name), &self.run.qemu_pid(name))
            .map_err(|source| TestbedError::Process { processor: name.into(), source })?;
        self.record_start(name, version, app.path.display().to_string(), overlay.display().to_string(), helper.pid)?;
        Ok(Boot { t0, serial_offset })
    }

    fn boot_error(&self, name: &str, why: String) -> TestbedError {
        if let Machines::Sim(sim) = &self.machines {
            let serial = sim.exit_reason(name).unwrap_or_default();
            return TestbedError::Boot { processor: name.into(), why, serial, qemu: String::new() };
        }
        TestbedError::Boot {
            processor: name.into(),
            why,
            serial: process::tail(&self.run.serial(name), 25),
            qemu: process::tail(&self.run.qemu_log(name), 10),
        }
    }

    /// The pid of a processor's QEMU, if it runs.
    pub fn qemu_alive(&self, name: &str) -> Option<u32> {
        process::read_pid(&self.run.qemu_pid(name)).filter(|p| process::alive(*p))
    }

    /// Whether a processor runs (its QEMU, or its simulated agent).
    pub fn alive(&self, name: &str) -> bool {
        match &self.machines {
            Machines::Qemu(_) => self.qemu_alive(name).is_some(),
            Machines::Sim(sim) => sim.alive(name),
        }
    }

    /// Wait (bounded, stopping early if QEMU dies) until the agent answers hello.
    async fn wait_agent(&self, name: &str, boot: Boot) -> Result<Hello, TestbedError> {
        let ch = self.channel(name);
        let mut console = ConsoleWatch { path: self.run.serial(name), offset: boot.serial_offset, text: String::new() };
        let budget = self.timeouts.boot.saturating_sub(boot.t0.elapsed());
        let probe = async || {
            if !self.alive(name) {
                return Err(self.boot_error(name, "the processor exited during boot".into()));
            }
            // Connecting before the guest's vsock driver is up can wedge the userspace
            // daemon for good; the agent's "listening" line on the console says it is up.
            if self.state.vsock == VsockKind::User && !console.saw(LISTENING_MARK) {
                return Ok(None);
            }
            let Ok(mut c) = AgentClient::connect(&ch).await else { return Ok(None) };
            match c.request(&ControlRequest::Hello, Duration::from_secs(2)).await {
                Ok(ControlReply::Hello(h)) => Ok(Some(h)),
                _ => Ok(None),
            }
        };
        let expired = || self.boot_error(name, format!("agent did not answer within {:?}", self.timeouts.boot));
        let h = wait_until(budget, BOOT_POLL, probe, expired).await?;
        self.events.emit(Event::AgentReady {
            processor: name.into(),
            version: h.version.clone(),
            boot_ms: boot.t0.elapsed().as_millis() as u64,
        });
        Ok(h)
    }

    /// How the host reaches a processor's agent.
    pub fn channel(&self, name: &str) -> Channel {
        if let Machines::Sim(sim) = &self.machines {
            return sim.channel(name);
        }
        match self.state.vsock {
            VsockKind::Tcp => Channel::Tcp { control: ([127, 0, 0, 1], 0).into(), work: ([127, 0, 0, 1], 0).into() },
            VsockKind::User => Channel::User(self.run.vsock_uds(name)),
            VsockKind::Kernel => Channel::Kernel(self.cfg.processor(name).map(|p| p.cid).unwrap_or(3)),
        }
    }

    /// One control request to a processor's agent.
    pub async fn control(&self, name: &str, req: ControlRequest) -> Result<ControlReply, TestbedError> {
        let agent_err = |e: ChannelError| TestbedError::Agent { processor: name.into(), message: e.to_string() };
        let mut c = AgentClient::connect(&self.channel(name)).await.map_err(agent_err)?;
        let timeout = match req {
            ControlRequest::Evaluate { window_ms } => self.timeouts.request + Duration::from_millis(window_ms),
            _ => self.timeouts.request,
        };
        let reply = c.request(&req, timeout).await.map_err(agent_err)?;
        match reply {
            ControlReply::Error { message } => Err(TestbedError::Agent { processor: name.into(), message }),
            r => Ok(r),
        }
    }

    /// The agent's status.
    pub async fn agent_status(&self, name: &str) -> Result<Status, TestbedError> {
        match self.control(name, ControlRequest::Status).await? {
            ControlReply::Status(s) => Ok(*s),
            other => {
                Err(TestbedError::Agent { processor: name.into(), message: format!("unexpected reply {other:?}") })
            }
        }
    }

    /// Give a processor a role at the next epoch.
    pub async fn set_role(&mut self, name: &str, role: Role) -> Result<u64, TestbedError> {
        self.state.epoch += 1;
        let epoch = self.state.epoch;
        self.save()?;
        self.control(name, ControlRequest::SetRole { role, epoch }).await?;
        self.events.emit(Event::Role { processor: name.into(), role: role.to_string(), epoch });
        Ok(epoch)
    }

    /// Wait until `name` is a standby that completed its step-up and the active sees it registered.
    pub async fn wait_standby_current(&self, name: &str) -> Result<(), TestbedError> {
        let active = self.peer_of(name);
        let probe = async || {
            let s = self.agent_status(name).await?;
            let a = self.agent_status(&active).await?;
            if let Some(why) = s.peer.as_ref().and_then(|p| p.refused.clone()) {
                return Err(TestbedError::Agent {
                    processor: name.into(),
                    message: format!("cannot become standby: {why}"),
                });
            }
            Ok((s.replication.synced && a.replication.registered.is_some() && !a.replication.simplex).then_some(()))
        };
        let expired = || TestbedError::Agent {
            processor: name.into(),
            message: format!("step-up from {active} not complete within {:?}", self.timeouts.stepup),
        };
        wait_until(self.timeouts.stepup, STATUS_POLL, probe, expired).await
    }

    async fn wait_peers_seen(&self) -> Result<(), TestbedError> {
        for n in self.names() {
            let probe = async || Ok(self.agent_status(&n).await?.peer.is_some_and(|p| p.connected).then_some(()));
            let expired =
                || TestbedError::Agent { processor: n.clone(), message: "does not see its peer over the link".into() };
            wait_until(self.timeouts.stepup, STATUS_POLL, probe, expired).await?;
        }
        Ok(())
    }

    /// Stop a processor: QMP `quit`, bounded wait, then SIGKILL of its process group.
    pub async fn stop_processor(&mut self, name: &str) {
        if let Machines::Sim(sim) = &self.machines {
            sim.stop(name);
            self.events.emit(Event::ProcessorStopped { processor: name.into(), how: "stopped (simulated)".into() });
            return;
        }
        let how = match Qmp::connect(&self.run.qmp(name)).await {
            Ok(q) => {
                q.quit().await;
                "QMP quit"
            }
            Err(_) => "QMP unreachable; killed",
        };
        process::stop_pid_file(&self.run.qemu_pid(name), Duration::from_secs(3));
        self.events.emit(Event::ProcessorStopped { processor: name.into(), how: how.into() });
    }

    /// Reload a processor with `version`: it goes down and comes back as a
    /// fresh QEMU on a new overlay of that version's image, same identity.
    /// Returns what QMP shows it booted.
    pub async fn reload(&mut self, name: &str, version: &str) -> Result<AppDisk, TestbedError> {
        // Resolve first: a missing image must fail before the processor goes down.
        let info = self.version_info(version)?;
        let was = self.version_info(&self.version_of(name)).map(|i| i.image).unwrap_or_else(|_| "-".into());
        self.stop_processor(name).await;
        let boot = self.start_processor(name, version).await?;
        let hello = self.wait_agent(name, boot).await?;
        let fail = |message: String| Err(TestbedError::Agent { processor: name.into(), message });
        if hello.version != info.version {
            return fail(format!("agent reports {}, expected {}", hello.version, info.version));
        }
        if let Machines::Sim(_) = &self.machines {
            return Ok(AppDisk { overlay: "-".into(), backing: info.image });
        }
        let after = self.qmp_app_disk(name).await?;
        self.events.emit(Event::Qmp {
            processor: name.into(),
            action: "query-named-block-nodes".into(),
            detail: format!(
                "app disk now {} over {} (was over {})",
                file_name(&after.overlay),
                file_name(&after.backing),
                file_name(&was)
            ),
        });
        if after.backing != info.image {
            return fail(format!("QMP shows backing image {}, expected {}", after.backing, info.image));
        }
        Ok(after)
    }

    /// Make `name` standby and wait until its step-up from the other is complete.
    pub async fn make_standby(&mut self, name: &str) -> Result<(), TestbedError> {
        self.set_role(name, Role::Standby).await?;
        self.wait_standby_current(name).await
    }

    /// QMP's view of the app disk.
    pub async fn qmp_app_disk(&self, name: &str) -> Result<AppDisk, TestbedError> {
        let q = Qmp::connect(&self.run.qmp(name))
            .await
            .map_err(|source| TestbedError::Qmp { processor: name.into(), source })?;
        q.app_disk().await.map_err(|source| TestbedError::Qmp { processor: name.into(), source })
    }

    /// Full status of both processors.
    pub async fn status(&self) -> Vec<ProcessorStatus> {
        let mut out = Vec::new();
        for n in self.names() {
            let pid = self.qemu_alive(&n);
            let alive = self.alive(&n);
            let qmp = match pid {
                Some(_) => Qmp::connect(&self.run.qmp(&n)).await.ok(),
                None => None,
            };
            let (run_state, app_disk) = match qmp {
                Some(q) => (q.status().await.ok(), q.app_disk().await.ok()),
                None => (None, None),
            };
            let agent = if alive {
                self.agent_status(&n).await.map_err(|e| e.to_string())
            } else {
                Err("the processor is not running".into())
            };
            out.push(ProcessorStatus { booted_version: self.version_of(&n), name: n, pid, run_state, app_disk, agent });
        }
        out
    }

    /// The processor whose agent reports itself active, if any.
    pub async fn active(&self) -> Option<String> {
        for n in self.names() {
            if self.agent_status(&n).await.is_ok_and(|s| s.hello.role == Role::Active) {
                return Some(n);
            }
        }
        None
    }

    /// Roles and versions as the agents report them (for the transcript).
    pub async fn pair_view(&self) -> Vec<ProcView> {
        let mut v = Vec::new();
        for n in self.names() {
            let (role, version) = match self.agent_status(&n).await {
                Ok(s) => (s.hello.role.to_string(), s.hello.version),
                Err(_) => ("down".to_string(), self.version_of(&n)),
            };
            v.push(ProcView { processor: n, role, version });
        }
        v
    }
}

/// How often boot waits look (console, sockets).
const BOOT_POLL: Duration = Duration::from_millis(10);
/// How often replication waits ask the agents.
const STATUS_POLL: Duration = Duration::from_millis(20);

/// The one way to wait: poll `probe` every `every` until it yields `Some`, or
/// fails (e.g. the process waited for died), or `timeout` passes (`expired()`).
async fn wait_until<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<Option<T>, TestbedError>,
    expired: impl FnOnce() -> TestbedError,
) -> Result<T, TestbedError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(expired());
        }
        tokio::time::sleep(every).await;
    }
}

/// Follows a serial log from an offset, reading only what was appended since the last look.
struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    text: String,
}

impl ConsoleWatch {
    fn saw(&mut self, mark: &str) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        if !self.text.contains(mark) {
            let mut new = Vec::new();
            if let Ok(mut f) = std::fs::File::open(&self.path) {
                if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut new).is_ok() {
                    self.offset += new.len() as u64;
                    self.text.push_str(&String::from_utf8_lossy(&new));
                }
            }
        }
        self.text.contains(mark)
    }
}

/// What the agent prints on the console once its vsock services listen.
pub const LISTENING_MARK: &str = ") listening";

fn file_name(p: &str) -> String {
    Path::new(p).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
}

/// Tear down whatever runs from `run`: every helper by its process group
/// (SIGTERM, which QEMU and the vsock daemon both handle by exiting cleanly,
/// then SIGKILL after a grace period); then remove the run directory.
/// Idempotent, and works after the orchestrator or a VM died.
pub fn down(run: &RunDir, events: &Events) -> usize {
    let mut stopped = 0;
    for pf in run.pid_files() {
        if let Some(pid) = process::read_pid(&pf).filter(|p| process::alive(*p)) {
            stopped += 1;
            process::stop_group(pid, Duration::from_secs(2));
            events.progress(format!("stopped {} (pid {pid})", pf.display()));
        }
        let _ = std::fs::remove_file(&pf);
    }
    if run.root.exists() {
        let _ = std::fs::remove_dir_all(&run.root);
    }
    stopped
}
