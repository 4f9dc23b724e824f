//! The simulated pair: each processor is a real agent (this workspace's
//! `hitless-agent`, with the build its version's Cargo features and
//! `agent_args` name) running
//! in this process on its own thread and Tokio runtime, reached over loopback
//! TCP through [`net`]'s gated proxies. Stopping a processor shuts its
//! runtime down, so every socket it held closes as when a VM goes down;
//! starting it again gives a fresh agent with empty state, as a reload does.
//! Pausing it holds all its traffic (control, work, link) and cutting its
//! link holds the link's: the same faults QMP `stop` and `set_link` make on
//! QEMU. One difference remains: a paused agent's own clock runs on, so it
//! notices a silent peer while "paused", which a frozen guest does only on
//! resume.

pub mod net;

use super::{AppDisk, Artifact, Boot, Diagnostics, LinkDir, MachineError, Machines, Reach, Software};
use crate::channel::Channel;
use crate::config::{Config, Version};
use crate::error::{Error, InputError};
use crate::pair::{Pair, ProcId};
use hitless_agent::build::Build;
use hitless_agent::transport::Endpoint;
use hitless_agent::Settings;
use net::{Gate, Net, Route};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The sockets one processor listens on, and the proxies' public ones in front.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    control: SocketAddr,
    work: SocketAddr,
    link: SocketAddr,
}

/// The gates of one processor.
#[derive(Debug)]
struct Gates {
    /// Closed while paused: holds all its traffic.
    running: Gate,
    /// Closed while its link is cut: what it sends on the link.
    link_out: Gate,
    /// Closed while its link is cut: what it receives on the link.
    link_in: Gate,
}

/// A running simulated processor.
struct Running {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
    image: String,
}

/// The two in-process processors.
pub struct SimPair {
    names: Pair<String>,
    cfg: Config,
    /// Where each agent listens (kept across restarts: its identity).
    private: Pair<Addrs>,
    /// Where the host and the peer reach it.
    public: Pair<Addrs>,
    gates: Pair<Gates>,
    running: Mutex<[Option<Running>; 2]>,
    /// Processors whose next start fails (an injected fault).
    fail_next: Mutex<BTreeSet<ProcId>>,
    /// Versions whose "image" is corrupt (an injected fault): preflight refuses them.
    corrupt: Mutex<BTreeSet<String>>,
    /// Why each processor's agent last stopped on its own, for error messages.
    exits: std::sync::Arc<Mutex<[Option<String>; 2]>>,
    /// Last: dropped after the processors, so their sockets close first.
    _net: Net,
}

/// A random number from the standard library's per-process random keys.
fn random(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish()
}

/// A loopback address of this pair's own (127.x.y.z; Linux routes all of
/// 127/8 to `lo`): an agent's port, released while it restarts, cannot be
/// taken by another simulated pair in this process meanwhile.
fn own_loopback() -> std::net::Ipv4Addr {
    let r = random(0);
    std::net::Ipv4Addr::new(127, 1 + (r % 254) as u8, (r >> 8) as u8, 1 + ((r >> 16) % 254) as u8)
}

/// A free port on `ip` below the ephemeral range (32768 and up on Linux): a
/// port the kernel handed out could be taken by some outgoing connection
/// before a restarted processor binds it again.
fn free_port(ip: std::net::Ipv4Addr) -> std::io::Result<TcpListener> {
    for attempt in 0u64..200 {
        let port = 20_000 + (random(attempt + 1) % 12_000) as u16;
        if let Ok(l) = TcpListener::bind((ip, port)) {
            return Ok(l);
        }
    }
    Err(std::io::Error::other(format!("no free port in 20000-31999 on {ip}")))
}

impl SimPair {
    /// Reserve loopback addresses and start the proxies for `cfg`'s processors (no agent runs yet).
    pub fn new(cfg: &Config) -> std::io::Result<SimPair> {
        let net = Net::start()?;
        let gates = Pair::from_fn(|_| Gates { running: Gate::open(), link_out: Gate::open(), link_in: Gate::open() });
        let mut private = Vec::new();
        let mut public = Vec::new();
        // Held until every port is chosen, so that no two are the same; the agents bind them when they start.
        let mut held = Vec::new();
        let ip = own_loopback();
        let mut reserve = || -> std::io::Result<SocketAddr> {
            let l = free_port(ip)?;
            let a = l.local_addr()?;
            held.push(l);
            Ok(a)
        };
        for p in ProcId::BOTH {
            let me = Addrs { control: reserve()?, work: reserve()?, link: reserve()? };
            let (control, work, link) = (free_port(ip)?, free_port(ip)?, free_port(ip)?);
            let public_addrs =
                Addrs { control: control.local_addr()?, work: work.local_addr()?, link: link.local_addr()? };
            let g = &gates[p];
            net.proxy(control, me.control, Route { inbound: vec![&g.running], outbound: vec![&g.running] })?;
            net.proxy(work, me.work, Route { inbound: vec![&g.running], outbound: vec![&g.running] })?;
            // Only the first processor's link listener is dialled (by the second).
            let (q, h) = (&gates[p.other()], g);
            let route = Route {
                inbound: vec![&q.running, &h.running, &q.link_out, &h.link_in],
                outbound: vec![&q.running, &h.running, &h.link_out, &q.link_in],
            };
            net.proxy(link, me.link, route)?;
            private.push(me);
            public.push(public_addrs);
        }
        drop(held);
        let pair = |v: Vec<Addrs>| Pair::new(v[0], v[1]);
        Ok(SimPair {
            names: cfg.processors.map(|_, p| p.name.clone()),
            cfg: cfg.clone(),
            private: pair(private),
            public: pair(public),
            gates,
            running: Mutex::new([None, None]),
            fail_next: Mutex::default(),
            corrupt: Mutex::default(),
            exits: Default::default(),
            _net: net,
        })
    }

    /// Fault injection for tests: the next start of `p` fails, as a boot that never comes up.
    pub fn fail_next_start(&self, p: ProcId) {
        self.fail_next.lock().unwrap_or_else(|e| e.into_inner()).insert(p);
    }

    /// Fault injection: `version` counts as a corrupt image from now on.
    pub fn corrupt(&self, version: &str) {
        self.corrupt.lock().unwrap_or_else(|e| e.into_inner()).insert(version.into());
    }

    /// Pause (`true`) or resume `p` from any thread: all its traffic is held, or released.
    pub fn hold(&self, p: ProcId, paused: bool) {
        self.gates[p].running.set(!paused);
    }

    /// Cut (`false`) or restore `p`'s end of the link, from any thread.
    pub fn link(&self, p: ProcId, up: bool) {
        self.link_dir(p, LinkDir::Both, up);
    }

    /// Cut or restore one or both ways of `p`'s end of the link, from any thread.
    pub fn link_dir(&self, p: ProcId, dir: LinkDir, up: bool) {
        if dir != LinkDir::In {
            self.gates[p].link_out.set(up);
        }
        if dir != LinkDir::Out {
            self.gates[p].link_in.set(up);
        }
    }

    /// Stop `p` at once, from any thread (tests inject faults from event sinks, which cannot await).
    pub fn crash(&self, p: ProcId) {
        self.shut(p);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Running>; 2]> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop `p` (idempotent); returns once its sockets are closed.
    fn shut(&self, p: ProcId) {
        let r = self.lock()[p.index()].take();
        if let Some(r) = r {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }
}

impl Machines for SimPair {
    fn software(&self, version: &str) -> Result<Software, Error> {
        let build = match self.cfg.version(version)? {
            // Config::parse already refused arguments this parse refuses (the same call): a guard only.
            Version::Build { features, args, .. } => Build::from_cargo_features(features)
                .with_args(args)
                .map_err(|detail| InputError::AgentArgs { version: version.into(), detail })?,
            Version::Prebuilt { agent, .. } => {
                return Err(InputError::NotSimulable { version: version.into(), agent: agent.clone() }.into())
            }
        };
        let flaw = build.flaw.map(|f| format!(", flaw {f:?}")).unwrap_or_default();
        Ok(Software {
            version: build.version.clone(),
            features: build.features.clone(),
            proto: hitless_protocol::PROTOCOL_VERSION,
            image: format!("(simulated: hitless-agent {}{flaw})", build.version),
            artifact: Artifact::InProcess(build),
        })
    }

    fn preflight(&self, versions: &[&str]) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        for v in versions {
            if self.corrupt.lock().unwrap_or_else(|e| e.into_inner()).contains(*v) {
                let detail = format!("the image of {v} is corrupt (a simulated fault)");
                return Err(Error::Preflight { check: format!("image of {v}"), detail });
            }
            done.push(format!("{v} runs in-process as {}", self.software(v)?.image));
        }
        Ok(done)
    }

    async fn provision(&self) -> Result<(), MachineError> {
        Ok(())
    }

    async fn start(&self, p: ProcId, sw: &Software, _boot: u32) -> Result<Boot, MachineError> {
        let Artifact::InProcess(build) = &sw.artifact else {
            return Err(MachineError::Simulated(format!("{} is not an in-process build", sw.image)));
        };
        self.shut(p);
        if self.fail_next.lock().unwrap_or_else(|e| e.into_inner()).remove(&p) {
            return Err(MachineError::Simulated("injected fault: this start fails".into()));
        }
        self.exits.lock().unwrap_or_else(|e| e.into_inner())[p.index()] = None;
        let me = self.private[p];
        let settings = Settings {
            name: self.names[p].clone(),
            control: Endpoint::Tcp(me.control),
            work: Endpoint::Tcp(me.work),
            link_listen: me.link,
            // As in the guests, the second processor dials the first (through its link proxy).
            dial: (p == ProcId::SECOND).then(|| self.public[ProcId::FIRST].link),
            build: build.clone(),
            announce: false,
            warm_up: false,
            switchover_hold: hitless_agent::agent::SWITCHOVER_HOLD,
            db_capacity: 0,
            exec: false,
        };
        let (stop, stopped) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MachineError::Simulated(e.to_string()))?;
        let exits = self.exits.clone();
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name(format!("sim-{}", self.names[p]))
            .spawn(move || {
                rt.block_on(async {
                    let why = tokio::select! {
                        r = hitless_agent::run(settings) => match r {
                            Ok(exit) => format!("agent exited: {exit:?}"),
                            Err(e) => format!("agent failed: {e}"),
                        },
                        _ = stopped => return,
                    };
                    exits.lock().unwrap_or_else(|e| e.into_inner())[p.index()] = Some(why);
                });
                // Drops every task, and with them every socket, before the thread ends.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| MachineError::Simulated(e.to_string()))?;
        self.lock()[p.index()] = Some(Running { stop, thread, image: sw.image.clone() });
        Ok(Boot { started, pid: None, overlay: None, console: None })
    }

    async fn stop(&self, p: ProcId) -> &'static str {
        self.shut(p);
        "stopped (simulated)"
    }

    async fn kill(&self, p: ProcId) {
        self.shut(p);
    }

    async fn pause(&self, p: ProcId) -> Result<(), MachineError> {
        if !self.alive(p) {
            return Err(MachineError::NotRunning);
        }
        self.hold(p, true);
        Ok(())
    }

    async fn resume(&self, p: ProcId) -> Result<(), MachineError> {
        self.hold(p, false);
        Ok(())
    }

    async fn set_link(&self, p: ProcId, dir: LinkDir, up: bool) -> Result<(), MachineError> {
        self.link_dir(p, dir, up);
        Ok(())
    }

    /// The "machine" runs from its start until it is stopped or killed — also
    /// after its agent exited on its own, as a guest stays up when its
    /// application crashes.
    fn alive(&self, p: ProcId) -> bool {
        self.lock()[p.index()].is_some()
    }

    fn reach(&self, p: ProcId) -> Reach {
        match (self.alive(p), self.gates[p].running.is_open()) {
            (false, _) => Reach::Down,
            (true, _) if self.agent_gone(p).is_some() => Reach::AgentGone,
            (true, false) => Reach::Paused,
            (true, true) => Reach::Up,
        }
    }

    fn agent_gone(&self, p: ProcId) -> Option<String> {
        let finished = self.lock()[p.index()].as_ref().is_some_and(|r| r.thread.is_finished());
        finished.then(|| self.exits.lock().unwrap_or_else(|e| e.into_inner())[p.index()].clone().unwrap_or_default())
    }

    fn channel(&self, p: ProcId) -> Channel {
        Channel::Tcp { control: self.public[p].control, work: self.public[p].work }
    }

    fn diagnostics(&self, p: ProcId, _boot: Option<&Boot>) -> Diagnostics {
        let why = self.exits.lock().unwrap_or_else(|e| e.into_inner())[p.index()].clone();
        Diagnostics { cause: why.clone(), detail: String::new(), console: None }
    }

    async fn app_disk(&self, p: ProcId) -> Result<AppDisk, MachineError> {
        let image = self.lock()[p.index()].as_ref().map(|r| r.image.clone()).ok_or(MachineError::NotRunning)?;
        Ok(AppDisk { overlay: "-".into(), backing: image })
    }

    async fn run_state(&self, p: ProcId) -> Option<String> {
        let state = if self.gates[p].running.is_open() { "running" } else { "paused" };
        self.alive(p).then(|| state.to_string())
    }
}

impl Drop for SimPair {
    fn drop(&mut self) {
        for p in ProcId::BOTH {
            self.shut(p);
        }
    }
}
