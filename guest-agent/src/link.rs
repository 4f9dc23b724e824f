//! The connection to the peer processor over the inter-VM link: one TCP
//! connection at a time, dialled by one side and accepted by the other,
//! re-established whenever it drops (e.g. while the peer reloads).

use crate::agent::{Agent, LinkAction};
use hitless_protocol::{decode_link, encode_link, LinkMsg, HEARTBEAT_MS, LINK_TIMEOUT_MS, MAX_LINE};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How often a dialling agent retries while the peer is down: the link comes
/// up about a second after a reloaded guest's NIC probes, and every step that
/// waits for it waits for the next attempt too.
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
    let (r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<LinkMsg>();
    let conn = agent.link_up(tx.clone());
    let writer_agent = agent.clone();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            let first = match tokio::time::timeout(Duration::from_millis(HEARTBEAT_MS), rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => LinkMsg::Heartbeat,
            };
            // Batch whatever is queued into one write: many updates per syscall.
            let negotiated = writer_agent.negotiated();
            let mut next = Some(first);
            while let Some(msg) = next {
                match encode_link(&msg, &negotiated) {
                    Ok(line) => buf.extend_from_slice(&line),
                    Err(e) => {
                        tracing::error!("not sent to peer: {e}");
                        writer_agent.error();
                    }
                }
                next = if buf.len() < 1 << 20 { rx.try_recv().ok() } else { None };
            }
            if w.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut reader = BufReader::with_capacity(1 << 16, r);
    let mut line = Vec::new();
    let mut to_ack: Option<(u64, u64)> = None;
    let why = loop {
        line.clear();
        let read = tokio::time::timeout(Duration::from_millis(LINK_TIMEOUT_MS), reader.read_until(b'\n', &mut line));
        match read.await {
            Err(_) => break format!("peer silent for {LINK_TIMEOUT_MS} ms"),
            Ok(Ok(0)) => break "peer closed the connection".to_string(),
            Ok(Err(e)) => break format!("read: {e}"),
            Ok(Ok(_)) if line.len() > MAX_LINE => break "oversized message".to_string(),
            Ok(Ok(_)) => {}
        }
        match decode_link(&line, agent.supported()) {
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
        // Registered acks are batched: send one when no more input is buffered.
        if reader.buffer().is_empty() {
            if let Some((generation, seq)) = to_ack.take() {
                let _ = tx.send(LinkMsg::Registered { generation, seq });
            }
        }
    };
    agent.link_down(conn, &why);
    writer.abort();
}
