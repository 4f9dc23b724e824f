//! The pair without VMs: two real agents (this build, 1.0.0) in this process,
//! over loopback TCP, driven through the orchestrator's own channel, workload
//! and history checks. Fast enough to run on every change; the VM tests check
//! the same behaviour through vsock and the virtio link.
#![allow(clippy::unwrap_used)]

use hitless::channel::{AgentClient, Channel};
use hitless::invariants;
use hitless::workload::Workload;
use hitless_agent::{transport::Endpoint, Settings};
use hitless_protocol::{
    frame_into, from_frame, ControlReply, ControlRequest, Frames, Operation, Role, Status, WorkReply, WorkRequest,
    PREAMBLE, WORK_PORT,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `n` distinct free ports on `ip`. Each pair has a loopback address of its
/// own, so that a port another test takes between this probe and the agent's
/// bind cannot be one of the pair's; the probes are held until all are
/// chosen, so that no two of the pair's are the same.
fn free_addrs<const N: usize>(ip: std::net::Ipv4Addr) -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> = (0..N).map(|_| std::net::TcpListener::bind((ip, 0)).unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// How long a test waits for what should take milliseconds: a bound for a
/// hang, not a timing (the suite runs its tests in parallel on two cores).
const PATIENCE: Duration = Duration::from_secs(20);

/// How long the host pairs' agents hold a work request mid-switchover: long
/// enough that a test can tell a held request from an answered one without
/// racing the clock (guests hold 100 ms).
const HOLD: Duration = Duration::from_secs(2);

struct HostAgent {
    name: String,
    channel: Channel,
    /// Why the agent stopped, if it did (it never should: a bind that failed, say).
    stopped: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

fn spawn_pair() -> [HostAgent; 2] {
    spawn_pair_warm(false)
}

/// The pair, p121 active (epoch 1) and p122 its standby (epoch 2), stepped up.
async fn spawn_paired() -> [HostAgent; 2] {
    let [a, b] = spawn_pair();
    until("the link", async || status(&b).await.peer.is_some_and(|p| p.connected)).await;
    set_role(&a, Role::Active, 1).await;
    set_role(&b, Role::Standby, 2).await;
    until("the step-up", async || status(&b).await.replication.synced).await;
    [a, b]
}

/// The pair, its agents warming up after their first answer (as in a guest) with `warm_up`.
fn spawn_pair_warm(warm_up: bool) -> [HostAgent; 2] {
    static PAIRS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    let ip = std::net::Ipv4Addr::new(127, 0, 77, PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let [link0, link1, control0, work0, control1, work1] = free_addrs(ip);
    let link = [link0, link1];
    let mut out = Vec::new();
    for (i, name) in ["p121", "p122"].into_iter().enumerate() {
        let (control, work) = [(control0, work0), (control1, work1)][i];
        let settings = Settings {
            name: name.into(),
            control: Endpoint::Tcp(control),
            work: Endpoint::Tcp(work),
            link_listen: link[i],
            // As in the guests, the second processor dials the first.
            dial: (i == 1).then_some(link[0]),
            build: hitless_agent::build::Build::compiled(&Default::default()),
            announce: false,
            warm_up,
            exec: false,
            switchover_hold: HOLD,
            db_capacity: 0,
        };
        let stopped = std::sync::Arc::new(std::sync::Mutex::new(None));
        let why = stopped.clone();
        tokio::spawn(async move {
            let end = hitless_agent::run(settings).await;
            *why.lock().unwrap() = Some(format!("{end:?}"));
        });
        out.push(HostAgent { name: name.into(), channel: Channel::Tcp { control, work }, stopped });
    }
    out.try_into().ok().unwrap()
}

async fn request(a: &HostAgent, req: ControlRequest) -> ControlReply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let e = match AgentClient::connect(&a.channel).await {
            Ok(mut c) => return c.request(&req, PATIENCE).await.unwrap(),
            Err(e) => e,
        };
        let stopped = a.stopped.lock().unwrap().clone();
        assert!(Instant::now() < deadline, "{} never listened: {e}; the agent stopped: {stopped:?}", a.name);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status(a: &HostAgent) -> Status {
    match request(a, ControlRequest::Status).await {
        ControlReply::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

async fn set_role(a: &HostAgent, role: Role, epoch: u64) -> ControlReply {
    request(a, ControlRequest::SetRole { role, epoch, holding: None }).await
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn dump(a: &HostAgent) -> (u64, Vec<hitless_protocol::WorkUnit>) {
    match request(a, ControlRequest::Dump).await {
        ControlReply::Dump { seq, units } => (seq, units),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_loses_nothing_and_stale_epochs_are_refused() {
    let [a, b] = spawn_pair();
    until("the link", async || status(&b).await.peer.is_some_and(|p| p.connected)).await;
    assert!(matches!(set_role(&a, Role::Active, 1).await, ControlReply::Done { role: Role::Active, .. }));
    assert!(matches!(set_role(&b, Role::Standby, 2).await, ControlReply::Done { role: Role::Standby, .. }));
    until("the step-up", async || status(&b).await.replication.synced).await;

    // No split brain: the standby cannot become active while the active is at a newer epoch.
    let refused = set_role(&b, Role::Active, 1).await;
    assert!(matches!(&refused, ControlReply::Error { message } if message.contains("stale")), "{refused:?}");

    let targets = vec![(a.name.clone(), a.channel.clone()), (b.name.clone(), b.channel.clone())];
    let w = Workload::start(targets, a.name.clone(), "r1", None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Switch over while work units flow: old active demotes (flushing), new active steps it up.
    assert!(matches!(set_role(&a, Role::Standby, 3).await, ControlReply::Done { .. }));
    assert!(matches!(set_role(&b, Role::Active, 4).await, ControlReply::Done { .. }));
    until("the old active's step-up", async || status(&a).await.replication.synced).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let h = w.stop().await;

    assert_eq!(h.rejected(), 0);
    assert!(h.acked().len() > 20, "{} acked", h.acked().len());
    assert_eq!(invariants::ack_handovers(&h), 1, "acks moved from p121 to p122 exactly once");
    let (seq_b, units_b) = dump(&b).await;
    let verdict = invariants::no_lost_or_double(&h, &units_b);
    assert!(verdict.ok, "{}", verdict.detail);
    // Synchronous replication: the standby holds exactly what the active has.
    until("the standby to register the last update", async || dump(&a).await.0 == seq_b).await;
    assert_eq!(dump(&a).await.1, units_b);
    // Agents not armed to warm up (only guests are) never say they did: what
    // the warm-up test waits for is the warm-up's own report.
    assert_eq!((status(&a).await.warmed_up_ms, status(&b).await.warmed_up_ms), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_probe_counts_only_acks_the_standby_registered() {
    let [a, b] = spawn_paired().await;

    let f = hitless::load::measure(&a.channel, 2, 8, Duration::from_millis(400)).await.unwrap();
    assert!(f.registered > 50, "{f:?}");
    assert_eq!((f.simplex, f.refused), (0, 0));
    assert_eq!(f.latencies_us.len() as u64, f.registered);
    // Every ack took a round trip through both agents.
    assert!(f.latency_ms(0.0) > 0.0, "a zero latency was recorded");
    // Every ack was registered first, so the standby holds all of it.
    let (seq, units) = dump(&a).await;
    assert_eq!(seq, f.registered);
    assert_eq!(dump(&b).await, (seq, units));

    // A second probe on the same pair is new work, not answered from the
    // de-duplication index (its acks would then count without any replication).
    let again = hitless::load::measure(&a.channel, 2, 8, Duration::from_millis(400)).await.unwrap();
    assert!(again.registered > 50, "{again:?}");
    assert_eq!(again.duplicate, 0, "the second probe re-sent the first one's request ids");
    assert_eq!(dump(&a).await.0, seq + again.registered, "every ack counted is an update the pair applied");

    // The standby is not the active: the probe sees refusals, not acks.
    let f = hitless::load::measure(&b.channel, 1, 4, Duration::from_millis(50)).await.unwrap();
    assert_eq!(f.registered + f.simplex, 0);
    assert!(f.refused > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_shows_nothing_of_its_warm_up_and_serves_as_before() {
    let [a, b] = spawn_pair_warm(true);
    // The first answer starts each warm-up (a private pair on its own thread);
    // each agent says when it has run, and replicated every unit it tried.
    until("the link", async || status(&b).await.peer.is_some_and(|p| p.connected)).await;
    until("both warm-ups", async || status(&a).await.warmed_up_ms.is_some() && status(&b).await.warmed_up_ms.is_some())
        .await;
    for s in [status(&a).await, status(&b).await] {
        assert_eq!((s.served, s.units, s.replication.seq, s.errors), (0, 0, 0, 0), "{s:?}");
        assert_eq!(s.hello.role, Role::OutOfService);
    }
    set_role(&a, Role::Active, 1).await;
    set_role(&b, Role::Standby, 2).await;
    until("the step-up", async || status(&b).await.replication.synced).await;
    let f = hitless::load::measure(&a.channel, 2, 8, Duration::from_millis(300)).await.unwrap();
    assert!(f.registered > 50, "{f:?}");
    assert_eq!((f.simplex, f.refused, f.duplicate), (0, 0, 0));
    let (seq, units) = dump(&a).await;
    assert_eq!(seq, f.registered, "only the probe's work in the database");
    until("the standby to register the last update", async || dump(&b).await.0 == seq).await;
    assert_eq!(dump(&b).await, (seq, units));
}

/// Send one work request on a new work connection; its reply and how long it took.
async fn work_once(a: &HostAgent, id: &str) -> (WorkReply, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = a.channel.connect(WORK_PORT).await.unwrap();
    let mut out = PREAMBLE.to_vec();
    let req =
        WorkRequest { id: id.into(), op: Operation::Open { unit: format!("{id}-u"), fields: Default::default() } };
    frame_into(&req, &mut out);
    let sent = Instant::now();
    s.write_all(&out).await.unwrap();
    let mut frames = Frames::new();
    loop {
        if let Some(frame) = frames.next_frame().unwrap() {
            return (from_frame(frame).unwrap(), sent.elapsed());
        }
        let n = tokio::time::timeout(PATIENCE, s.read_buf(frames.spare())).await.unwrap().unwrap();
        assert!(n > 0, "{} closed the work connection without an answer", a.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_mid_switchover_waits_for_the_promotion_and_only_so_long() {
    let [a, b] = spawn_paired().await;
    // The active steps down; before the other is promoted, a client comes to each.
    set_role(&a, Role::Standby, 3).await;
    until("b to see a step down", async || status(&b).await.peer.is_some_and(|p| p.hello.role == Role::Standby)).await;
    // The one that stepped down sends the client away at once (well within the hold)...
    let (reply, took) = work_once(&a, "at-the-old-active").await;
    assert!(matches!(&reply, WorkReply::NotActive { active: None, .. }), "{reply:?}");
    assert!(took < HOLD / 2, "the processor that stepped down held the request {took:?}");
    // ...the other, about to be promoted, holds it until its promotion...
    let held = tokio::spawn({
        let b = HostAgent { name: b.name.clone(), channel: b.channel.clone(), stopped: b.stopped.clone() };
        async move { work_once(&b, "mid-switchover").await }
    });
    tokio::time::sleep(HOLD / 4).await;
    assert!(!held.is_finished(), "answered before its promotion: {:?}", held.await.unwrap());
    set_role(&b, Role::Active, 4).await;
    // ...and serves it then: not sent away to the one that stepped down.
    let (reply, took) = held.await.unwrap();
    assert!(matches!(&reply, WorkReply::Ack { duplicate: false, .. }), "{reply:?}");
    assert!(took < HOLD, "held past the promotion: {took:?}");

    // A switchover that never completes (both standby): "not active" after the hold.
    set_role(&b, Role::Standby, 5).await;
    until("a to see b step down", async || status(&a).await.peer.is_some_and(|p| p.hello.role == Role::Standby)).await;
    let (reply, took) = work_once(&a, "no-active").await;
    assert!(matches!(&reply, WorkReply::NotActive { active: None, .. }), "{reply:?}");
    assert!(took >= HOLD, "answered after {took:?}: it did not wait for the switchover");

    // Outside a switchover a standby answers at once, naming the active.
    set_role(&a, Role::Active, 6).await;
    until("b to see a active", async || status(&b).await.peer.is_some_and(|p| p.hello.role == Role::Active)).await;
    let (reply, took) = work_once(&b, "to-the-active").await;
    assert!(matches!(&reply, WorkReply::NotActive { active: Some(n), .. } if *n == a.name), "{reply:?}");
    assert!(took < HOLD / 2, "{took:?}");
}
