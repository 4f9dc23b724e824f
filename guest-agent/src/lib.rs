//! `hitless-agent`: the software on each processor of the active/standby
//! pair. It serves work units when active, replicates run-state to its
//! standby over the inter-VM link (step-up, then a gap-free stream of
//! updates), obeys role and feature commands from the host over vsock, and
//! judges whether its own version is acceptable. Each software version is a
//! separate build of this crate (see [`build`]).
#![warn(missing_docs)]

pub mod agent;
pub mod build;
pub mod db;
pub mod guest;
pub mod link;
pub mod roles;
pub mod service;
pub mod transport;

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
}

/// Run the agent until the process is stopped.
pub async fn run(s: Settings) -> std::io::Result<()> {
    let agent = Arc::new(agent::Agent::new(s.name.clone()));
    let control = Listener::bind(&s.control).await?;
    let work = Listener::bind(&s.work).await?;
    let link = tokio::net::TcpListener::bind(s.link_listen).await?;
    tokio::spawn(link::accept(agent.clone(), link));
    if let Some(peer) = s.dial {
        tokio::spawn(link::dial(agent.clone(), peer));
    }
    tokio::spawn(service::serve_forever(work, agent.clone(), service::work));
    // The host waits for this line on the serial console when debugging boots.
    println!("hitless-agent {} ({}) listening", build::VERSION, s.name);
    service::serve_forever(control, agent, service::control).await;
    Ok(())
}
