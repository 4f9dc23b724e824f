//! `hitless-agent`: the software on each processor of the active/standby
//! pair. It serves work units when active, replicates run-state to its
//! standby over the inter-VM link (step-up, then a gap-free stream of
//! updates), obeys role and feature commands from the host over vsock, and
//! judges whether its own version is acceptable. Each software version is a
//! separate build of this crate (see [`build`]).

pub mod agent;
pub mod alloc;
pub mod build;
pub mod db;
pub mod exec;
pub mod guest;
pub mod init;
pub mod link;
pub mod roles;
pub mod service;
pub mod transport;
pub mod warm;

use std::net::SocketAddr;
use std::sync::Arc;
use transport::{Endpoint, Listener};

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Processor name.
    pub name: String,
    /// Control service endpoint.
    pub control: Endpoint,
    /// Work-unit service endpoint.
    pub work: Endpoint,
    /// Where to accept the peer's link connection.
    pub link_listen: SocketAddr,
    /// The peer's link address, when this side dials.
    pub dial: Option<SocketAddr>,
    /// Version, features and flaw ([`build::Build::compiled`] in a guest).
    pub build: build::Build,
    /// Say "listening" on stdout (the guest's console, which the host watches); off in-process.
    pub announce: bool,
    /// Run commands for `hitless exec`: only a guest's own agent (in-process, they would run on the host).
    pub exec: bool,
    /// Run both roles' work paths once the host has had a first answer ([`warm::warm_up`]): in a
    /// guest under TCG, where the first run of a path costs its translation.
    pub warm_up: bool,
    /// How long a work request waits mid-switchover at the processor about to
    /// be promoted ([`agent::SWITCHOVER_HOLD`] in a guest).
    pub switchover_hold: std::time::Duration,
    /// Request ids the database is sized for up front and applies at most
    /// ([`guest::db_capacity`] in a guest; 0 in-process: no bound, nothing sized).
    pub db_capacity: usize,
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A deliberately crashing test build exited (the guest binary exits with code 70).
    Crashed,
}

/// Run the agent until the process is stopped, or until a crashing test
/// build crashes. Its tasks live on the caller's runtime: dropping that
/// runtime is what stops them (the simulated pair runs each agent on its own).
pub async fn run(s: Settings) -> std::io::Result<Exit> {
    let version = s.build.version.clone();
    let exec = s.exec;
    let agent = Arc::new(
        agent::Agent::new(s.name.clone(), s.build)
            .with_switchover_hold(s.switchover_hold)
            .with_db_capacity(s.db_capacity),
    );
    let control = Listener::bind(&s.control).await?;
    let work = Listener::bind(&s.work).await?;
    let link = tokio::net::TcpListener::bind(s.link_listen).await?;
    tokio::spawn(link::accept(agent.clone(), link));
    if let Some(peer) = s.dial {
        tokio::spawn(link::dial(agent.clone(), peer));
    }
    tokio::spawn(service::serve_forever(work, agent.clone(), service::work));
    // The host waits for this line on the serial console before it dials.
    if s.announce {
        println!("hitless-agent {version} ({}) listening", s.name);
    }
    if s.warm_up {
        agent.arm_warm_up();
    }
    tokio::select! {
        () = service::serve_forever(control, agent.clone(), move |a, st| service::control(a, st, exec)) => unreachable_serve(),
        () = agent.crashed() => Ok(Exit::Crashed),
    }
}

/// `serve_forever` only returns if its accept loop cannot go on.
fn unreachable_serve() -> std::io::Result<Exit> {
    Err(std::io::Error::other("control service stopped accepting connections"))
}
