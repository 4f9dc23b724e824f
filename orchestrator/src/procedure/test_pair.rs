//! For the procedure's unit tests: a simulated pair (real agents in-process)
//! and an active that acks work alone.
#![allow(clippy::unwrap_used)]

use crate::config::Config;
use crate::events::Events;
use crate::machine::{LinkDir, Machines};
use crate::pair::ProcId;
use crate::rundir::RunDir;
use crate::testbed::Testbed;
use std::time::{Duration, Instant};

/// A simulated pair of the shipped config (first active, second standby), its
/// run directory in `tmp`, its events in `events`.
pub async fn simulated(tmp: &tempfile::TempDir, events: Events) -> Testbed {
    let cfg = Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-configs/pair.yaml")).unwrap();
    Testbed::simulated(cfg, RunDir::new(tmp.path().join("run")), events).await.unwrap()
}

/// The last update `p` applied.
pub async fn seq(tb: &Testbed, p: ProcId) -> u64 {
    tb.agents().status(p).await.unwrap().replication.seq
}

/// Cut the active `p`'s link and, once it runs alone past the link's
/// timeout, have it ack work its standby never gets. Returns its last update.
pub async fn ack_alone(tb: &Testbed, p: ProcId) -> u64 {
    tb.machines().set_link(p, LinkDir::Both, false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tb.agents().status(p).await.unwrap().replication.simplex {
        assert!(Instant::now() < deadline, "the active never went simplex");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let f = crate::load::measure(tb.agents().channel(p), 1, 1, Duration::from_millis(300)).await.unwrap();
    assert!(f.simplex > 0, "no work acked alone");
    let acked = seq(tb, p).await;
    assert!(seq(tb, p.other()).await < acked);
    acked
}
