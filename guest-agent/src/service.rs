//! The agent's two vsock services: the control port (host commands, one reply
//! per request, in order) and the work port (pipelined work-unit requests,
//! replies keyed by request id, possibly out of order).

use crate::agent::{Agent, Served};
use crate::roles::RoleError;
use crate::transport::{Listener, Stream};
use hitless_protocol::{
    check_preamble, frame_into, from_frame, from_line, to_line, ControlReply, ControlRequest, Frames, Role, WorkReply,
    WorkRequest, MAX_LINE, TAKE_OVER_WAIT_MS,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// How long a standby command waits for the peer's hello.
const PEER_WAIT: Duration = Duration::from_secs(5);

/// Accept connections on `listener` forever, serving each with `serve`.
pub async fn serve_forever<F, Fut>(listener: Listener, agent: Arc<Agent>, serve: F)
where
    F: Fn(Arc<Agent>, Box<dyn Stream>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok(s) => {
                tokio::spawn(serve(agent.clone(), s));
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serve one control connection; `exec`: whether commands may be run here (a guest's own agent).
pub async fn control(agent: Arc<Agent>, stream: Box<dyn Stream>, exec: bool) {
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => return,
            Ok(_) => {}
        }
        let reply = match from_line::<ControlRequest>(&line) {
            // A command answers with many lines, then the connection serves requests again.
            Ok(ControlRequest::Exec { argv, timeout_ms }) if exec => {
                let timeout = Duration::from_millis(timeout_ms.min(24 * 3600 * 1000));
                if crate::exec::run(argv, timeout, &mut reader, &mut w).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(ControlRequest::Exec { .. }) => ControlReply::Error {
                message:
                    "this agent runs in-process on the host (a simulated pair): there is no guest to run a command in"
                        .into(),
            },
            Ok(req) => handle(&agent, req).await,
            Err(e) => ControlReply::Error { message: format!("bad request: {e}") },
        };
        let Ok(out) = to_line(&reply) else { return };
        if w.write_all(&out).await.is_err() {
            return;
        }
        agent.answered();
    }
}

async fn handle(agent: &Agent, req: ControlRequest) -> ControlReply {
    let done = |agent: &Agent| {
        let h = agent.hello();
        ControlReply::Done { role: h.role, epoch: h.epoch, enabled: h.enabled, seq: h.seq }
    };
    match req {
        ControlRequest::Hello => ControlReply::Hello(agent.hello()),
        ControlRequest::Status => ControlReply::Status(Box::new(agent.status())),
        ControlRequest::SetRole { role, epoch, holding } => {
            let was_active = agent.hello().role == Role::Active;
            if role == Role::Standby && !was_active {
                // Whether this processor may pair depends on the peer's hello (versions,
                // enabled features): after a reload it may still be on its way. A demoted
                // active already knows its peer, or has none (it died): no waiting then.
                agent.wait_peer(PEER_WAIT).await;
            }
            match agent.set_role_holding(role, epoch, holding) {
                Err(RoleError::Lacking { seq, holding }) => ControlReply::Lacking { seq, holding },
                Err(e) => ControlReply::Error { message: e.to_string() },
                Ok(_) if was_active && role != Role::Active => match agent.flush().await {
                    Ok(()) => done(agent),
                    Err(e) => ControlReply::Error { message: format!("role changed to {role}, but {e}") },
                },
                Ok(_) if role == Role::Active && !was_active => {
                    // The link first: the step-up and the work held for this promotion
                    // go out before this reply (clients wait on them, the host only on this).
                    tokio::task::yield_now().await;
                    done(agent)
                }
                Ok(_) => done(agent),
            }
        }
        ControlRequest::TakeOver { epoch, peer_epoch } => {
            if let Err(e) = agent.arm_take_over(epoch, peer_epoch) {
                return ControlReply::Error { message: format!("not taken over: {e}") };
            }
            match agent.await_take_over(epoch, Duration::from_millis(TAKE_OVER_WAIT_MS)).await {
                Ok(()) => {
                    // As after a promotion: the step-up and held work go out before this reply.
                    tokio::task::yield_now().await;
                    done(agent)
                }
                Err(RoleError::Lacking { seq, holding }) => ControlReply::Lacking { seq, holding },
                Err(e) => ControlReply::Error { message: e.to_string() },
            }
        }
        ControlRequest::EnableFeature { feature } => match agent.enable_feature(&feature) {
            Ok(()) => done(agent),
            Err(message) => ControlReply::Error { message },
        },
        ControlRequest::DisableFeature { feature } => match agent.disable_feature(&feature) {
            Ok(()) => done(agent),
            Err(message) => ControlReply::Error { message },
        },
        ControlRequest::Evaluate { window_ms } => {
            ControlReply::Evaluation(agent.evaluate(Duration::from_millis(window_ms.min(600_000))).await)
        }
        ControlRequest::Dump => agent.dump(),
        ControlRequest::Exec { .. } => ControlReply::Error { message: "exec is served by the connection".into() },
        ControlRequest::Crash => {
            tracing::warn!("crashing on request (fault injection)");
            agent.crash_after(Duration::from_millis(20));
            done(agent)
        }
    }
}

/// Serve one work connection: requests are pipelined, replies come as they are ready.
pub async fn work(agent: Arc<Agent>, stream: Box<dyn Stream>) {
    let (mut r, mut w) = tokio::io::split(stream);
    let mut preamble = [0u8; 4];
    if r.read_exact(&mut preamble).await.is_err() {
        return;
    }
    if let Err(e) = check_preamble(&preamble) {
        // Nothing can be answered in a form the client would read.
        tracing::warn!("work connection refused: {e}");
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<WorkReply>();
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(reply) = next {
                frame_into(&reply, &mut buf);
                next = if buf.len() < 1 << 20 { rx.try_recv().ok() } else { None };
            }
            if w.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    });
    agent.add_client(&tx);
    let mut frames = Frames::new();
    'read: loop {
        match r.read_buf(frames.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let req = match frames.next_frame() {
                Ok(Some(frame)) => from_frame::<WorkRequest>(frame),
                Ok(None) => break,
                // Oversized: the stream cannot be followed any further.
                Err(_) => break 'read,
            };
            match req {
                Ok(req) => {
                    let served = match agent.work_or_hold(req, &tx) {
                        Served::Hold(req) => {
                            agent.await_switchover(agent.switchover_hold()).await;
                            agent.work(req, &tx)
                        }
                        served => matches!(served, Served::Yes),
                    };
                    if !served {
                        // Not active: read nothing more here; the client resends elsewhere, in order.
                        break 'read;
                    }
                }
                Err(e) => {
                    let _ = tx.send(WorkReply::Rejected { id: String::new(), reason: format!("bad request: {e}") });
                }
            }
        }
    }
    drop(tx);
    // Let the pending replies drain; the agent holds clones of tx until they are acked.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}
