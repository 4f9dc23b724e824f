//! The connection to the peer processor over the inter-VM link: one TCP
//! connection at a time, dialled by one side and accepted by the other,
//! re-established whenever it drops (e.g. while the peer reloads).

use crate::agent::{Agent, LinkAction};
use hitless_protocol::{
    check_preamble, decode_link, encode_link_into, Frames, LinkMsg, HEARTBEAT_MS, LINK_TIMEOUT_MS, PREAMBLE,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How often a dialling agent retries while the peer is down (rebooting):
/// every step that waits for the link waits for the next attempt too. With
/// the built kernel the link is usable as the agent starts; with Debian's
/// about a second later (linkwatch's rate limit).
const REDIAL: Duration = Duration::from_millis(25);
/// One connection attempt. A peer that is down (rebooting) does not answer at
/// all, and an unbounded connect would sit in the kernel's SYN back-off (1 s,
/// 3 s, 7 s...) long after the peer is back; on the link a live peer answers
/// in milliseconds (tens under TCG load).
const DIAL_TIMEOUT: Duration = Duration::from_millis(150);

/// Dial the peer forever, one connection at a time.
pub async fn dial(agent: Arc<Agent>, peer: SocketAddr) {
    loop {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => run(agent.clone(), s).await,
            Ok(Err(e)) => tracing::debug!("dial {peer}: {e}"),
            Err(_) => tracing::debug!("dial {peer}: no answer within {DIAL_TIMEOUT:?}"),
        }
        tokio::time::sleep(REDIAL).await;
    }
}

/// Accept peer connections forever; a new one replaces the old.
pub async fn accept(agent: Arc<Agent>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, from)) => {
                tracing::info!("peer connected from {from}");
                tokio::spawn(run(agent.clone(), s));
            }
            Err(e) => {
                tracing::warn!("link accept: {e}");
                tokio::time::sleep(REDIAL).await;
            }
        }
    }
}

async fn run(agent: Arc<Agent>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<LinkMsg>();
    let conn = agent.link_up(tx.clone());
    let writer_agent = agent.clone();
    let writer = tokio::spawn(async move {
        // The preamble goes out with the first message (the hello link_up queued).
        let mut buf = PREAMBLE.to_vec();
        loop {
            let first = match tokio::time::timeout(Duration::from_millis(HEARTBEAT_MS), rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => LinkMsg::Heartbeat,
            };
            // Batch whatever is queued into one write: many updates per syscall.
            // No yield first: it would wait for the runtime's next I/O poll and
            // every task that wakes (each client's write a syscall under TCG),
            // holding a stepping-down active's hello and a new active's first
            // updates 1-5 ms at a switchover. A promotion's held work still goes
            // with its step-up: the held requests wake before it is queued.
            let negotiated = writer_agent.negotiated();
            let mut next = Some(first);
            while let Some(msg) = next {
                if let Err(e) = encode_link_into(&msg, &negotiated, &mut buf) {
                    tracing::error!("not sent to peer: {e}");
                    writer_agent.error();
                }
                next = if buf.len() < 1 << 20 { rx.try_recv().ok() } else { None };
            }
            if w.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
        }
    });
    let why = read_peer(&agent, &mut r, &tx).await;
    agent.link_down(conn, &why);
    writer.abort();
}

/// Read the peer's messages until the connection fails; returns why it did.
async fn read_peer(agent: &Agent, r: &mut (impl AsyncReadExt + Unpin), tx: &mpsc::UnboundedSender<LinkMsg>) -> String {
    let timeout = Duration::from_millis(LINK_TIMEOUT_MS);
    let silent = || format!("peer silent for {LINK_TIMEOUT_MS} ms");
    let mut preamble = [0u8; 4];
    match tokio::time::timeout(timeout, r.read_exact(&mut preamble)).await {
        Err(_) => return silent(),
        Ok(Err(e)) => return format!("read: {e}"),
        Ok(Ok(_)) => {}
    }
    if let Err(e) = check_preamble(&preamble) {
        tracing::warn!("link refused: {e}");
        return e.to_string();
    }
    let mut frames = Frames::new();
    loop {
        match tokio::time::timeout(timeout, r.read_buf(frames.spare())).await {
            Err(_) => return silent(),
            Ok(Ok(0)) => return "peer closed the connection".to_string(),
            Ok(Err(e)) => return format!("read: {e}"),
            Ok(Ok(_)) => {}
        }
        let mut to_ack = None;
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("bad frame from peer: {e}"),
            };
            match decode_link(frame, agent.supported()) {
                Ok(msg) => {
                    if let LinkAction::Registered(g, s) = agent.on_link(msg) {
                        to_ack = Some((g, s));
                    }
                }
                Err(e) => {
                    tracing::error!("bad message from peer: {e}");
                    agent.error();
                }
            }
        }
        // Registrations are batched: one for everything that arrived in this read.
        if let Some((generation, seq)) = to_ack {
            let _ = tx.send(LinkMsg::Registered { generation, seq });
        }
    }
}
