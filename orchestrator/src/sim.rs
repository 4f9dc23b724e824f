//! The simulated pair: each processor is a real agent (this workspace's
//! `hitless-agent`, with the build its version's Cargo features name) running
//! in this process on its own thread and Tokio runtime, reached over
//! loopback TCP. Stopping a processor shuts its runtime down, so every socket
//! it held closes as when a VM goes down; starting it again gives a fresh
//! agent with empty state, as a reload does. The procedure runs on it in
//! about a second, which is what lets its tests cover every transition; the
//! VM tests check the same behaviour through QEMU, vsock and the virtio link.

use crate::channel::Channel;
use hitless_agent::build::Build;
use hitless_agent::transport::Endpoint;
use hitless_agent::Settings;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Where one simulated processor listens; kept across restarts (its identity).
#[derive(Debug, Clone, Copy)]
struct Addrs {
    control: SocketAddr,
    work: SocketAddr,
    link: SocketAddr,
}

/// A running simulated processor.
struct Running {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The two in-process processors.
pub struct SimPair {
    names: Vec<String>,
    addrs: BTreeMap<String, Addrs>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Processors whose next start fails (an injected fault).
    fail_next: Mutex<std::collections::BTreeSet<String>>,
    /// Why each processor's agent last stopped on its own, for error messages.
    exits: std::sync::Arc<Mutex<BTreeMap<String, String>>>,
}

/// A free loopback port below the ephemeral range (32768 and up on Linux):
/// a port the kernel handed out could be taken by some outgoing connection
/// before a restarted processor binds it again.
fn free_port() -> std::io::Result<SocketAddr> {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..200 {
        let mut h = seed.build_hasher();
        h.write_u32(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr();
        }
    }
    Err(std::io::Error::other("no free loopback port in 20000-31999"))
}

impl SimPair {
    /// Reserve loopback addresses for `names` (nothing runs yet).
    pub fn new(names: &[String]) -> std::io::Result<SimPair> {
        let mut addrs = BTreeMap::new();
        for n in names {
            addrs.insert(n.clone(), Addrs { control: free_port()?, work: free_port()?, link: free_port()? });
        }
        Ok(SimPair {
            names: names.to_vec(),
            addrs,
            running: Mutex::new(BTreeMap::new()),
            fail_next: Default::default(),
            exits: Default::default(),
        })
    }

    fn addrs(&self, name: &str) -> std::io::Result<Addrs> {
        self.addrs.get(name).copied().ok_or_else(|| std::io::Error::other(format!("unknown processor {name}")))
    }

    /// How the host reaches `name`'s agent.
    pub fn channel(&self, name: &str) -> Channel {
        let a = self.addrs.get(name).copied();
        let unreachable = SocketAddr::from(([127, 0, 0, 1], 0));
        Channel::Tcp { control: a.map_or(unreachable, |a| a.control), work: a.map_or(unreachable, |a| a.work) }
    }

    /// Start `name` running `build` (stopping it first if it runs).
    pub fn start(&self, name: &str, build: Build) -> std::io::Result<()> {
        self.stop(name);
        if self.fail_next.lock().unwrap_or_else(|e| e.into_inner()).remove(name) {
            return Err(std::io::Error::other("injected fault: this start fails"));
        }
        self.exits.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let me = self.addrs(name)?;
        // As in the guests, every processor but the first dials the first.
        let dial = match self.names.first() {
            Some(first) if first != name => Some(self.addrs(first)?.link),
            _ => None,
        };
        let settings = Settings {
            name: name.into(),
            control: Endpoint::Tcp(me.control),
            work: Endpoint::Tcp(me.work),
            link_listen: me.link,
            dial,
            build,
        };
        let (stop, stopped) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (exits, me_name) = (self.exits.clone(), name.to_string());
        let thread = std::thread::Builder::new().name(format!("sim-{name}")).spawn(move || {
            rt.block_on(async {
                let why = tokio::select! {
                    r = hitless_agent::run(settings) => match r {
                        Ok(exit) => format!("agent exited: {exit:?}"),
                        Err(e) => format!("agent failed: {e}"),
                    },
                    _ = stopped => return,
                };
                exits.lock().unwrap_or_else(|e| e.into_inner()).insert(me_name, why);
            });
            // Drops every task, and with them every socket, before the thread ends.
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
        self.lock().insert(name.into(), Running { stop, thread });
        Ok(())
    }

    /// Stop `name` (idempotent); returns once its sockets are closed.
    pub fn stop(&self, name: &str) {
        let r = self.lock().remove(name);
        if let Some(r) = r {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }

    /// Fault injection: the next start of `name` fails, as a boot that never comes up.
    pub fn fail_next_start(&self, name: &str) {
        self.fail_next.lock().unwrap_or_else(|e| e.into_inner()).insert(name.into());
    }

    /// Why `name`'s agent last stopped on its own (failed to bind, crashed), if it did.
    pub fn exit_reason(&self, name: &str) -> Option<String> {
        self.exits.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Whether `name`'s agent is running (a crashing build ends on its own).
    pub fn alive(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|r| !r.thread.is_finished())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SimPair {
    fn drop(&mut self) {
        for n in self.names.clone() {
            self.stop(&n);
        }
    }
}
