//! The workload: a client that submits work units to whichever processor is
//! active for the whole upgrade, follows the active across switchovers
//! (retrying unacknowledged requests with the same id), and records every
//! request and answer — the [`History`] that [`crate::invariants`] checks.

use crate::channel::Channel;
use crate::history::{History, Kind, Record, Recorder};
use hitless_protocol::{frame_into, from_frame, Frames, Operation, WorkReply, WorkRequest, PREAMBLE, WORK_PORT};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Requests in flight at once on the connection.
const WINDOW: usize = 8;
/// How long a stopping workload waits for the answers to its requests in flight.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// Pause between requests; keeps the load steady rather than maximal during an upgrade.
const PACE: Duration = Duration::from_millis(2);

/// The n-th operation of run `run`'s workload: units are opened, updated twice, closed.
fn op(run: &str, n: u64) -> WorkRequest {
    let unit = format!("{run}-u{}", n / 4);
    let op = match n % 4 {
        0 => Operation::Open { unit, fields: [("caller".to_string(), format!("c{}", n / 4))].into() },
        1 => Operation::Update { unit, fields: [("state".to_string(), "ringing".to_string())].into() },
        2 => Operation::Update { unit, fields: [("state".to_string(), "connected".to_string())].into() },
        _ => Operation::Close { unit },
    };
    WorkRequest { id: format!("{run}-w{n}"), op }
}

/// A running workload; stop it to get its history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicUsize>,
    /// `None` once stopped.
    task: Option<tokio::task::JoinHandle<Recorder>>,
    start: Instant,
}

impl Drop for Workload {
    /// A workload dropped unstopped (its upgrade was cut short) stops submitting at once.
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Workload {
    /// Start submitting to the pair `(name, channel)`, beginning with `first`,
    /// with request ids of run `run_id`, appending the history to `log` if given.
    pub fn start(targets: Vec<(String, Channel)>, first: String, run_id: &str, log: Option<&Path>) -> Workload {
        Workload::start_gated(targets, first, run_id, log, Arc::new(|_| true))
    }

    /// [`Workload::start`], dialling target `i` only while `may_dial(i)`: a
    /// connection opened to a paused guest wedges vhost-device-vsock.
    pub fn start_gated(
        targets: Vec<(String, Channel)>,
        first: String,
        run_id: &str,
        log: Option<&Path>,
        may_dial: MayDial,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let rejected = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let rec = Recorder::new(log);
        let task =
            tokio::spawn(run(targets, may_dial, first, run_id.to_string(), rec, stop.clone(), rejected.clone(), start));
        Workload { stop, rejected, task: Some(task), start }
    }

    /// Requests rejected so far (workload errors), readable while it runs.
    pub fn rejected(&self) -> usize {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Milliseconds since the workload started (to line up events with the history).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Stop after the requests in flight are answered (bounded) and return the history.
    pub async fn stop(self) -> History {
        self.stop_and_report().await.0
    }

    /// [`Workload::stop`], and the first error writing the history file if there was one.
    pub async fn stop_and_report(mut self) -> (History, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take() {
            Some(t) => t.await.map(Recorder::finish).unwrap_or_default(),
            None => (History::default(), None),
        }
    }
}

/// Whether the workload may dial target `i` now.
pub type MayDial = Arc<dyn Fn(usize) -> bool + Send + Sync>;

#[allow(clippy::too_many_arguments)]
async fn run(
    targets: Vec<(String, Channel)>,
    may_dial: MayDial,
    first: String,
    run_id: String,
    mut h: Recorder,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicUsize>,
    start: Instant,
) -> Recorder {
    let t = |start: Instant| start.elapsed().as_millis() as u64;
    let mut target = targets.iter().position(|(n, _)| *n == first).unwrap_or(0);
    let mut next_op: u64 = 0;
    // Sent but not yet acked, in order; resent on the next connection.
    let mut inflight: VecDeque<WorkRequest> = VecDeque::new();
    let mut stopping_since: Option<Instant> = None;
    // "Not active" answers since the last ack: from the second on, the pair is
    // mid-switchover with neither side active yet, and the client pauses.
    let mut refused = 0;
    'outer: loop {
        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if inflight.is_empty() || since.elapsed() > STOP_WAIT {
                break;
            }
        }
        let (name, ch) = &targets[target];
        if !may_dial(target) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            target = (target + 1) % targets.len();
            continue;
        }
        let Ok(stream) = ch.connect(WORK_PORT).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            target = (target + 1) % targets.len();
            continue;
        };
        let (mut r, mut w) = tokio::io::split(stream);
        let mut frames = Frames::new();
        let mut out = PREAMBLE.to_vec();
        for req in &inflight {
            h.push(Record::new(t(start), Kind::Retry, &req.id, name));
            frame_into(req, &mut out);
        }
        // When the next request may go: one per PACE at most, while replies
        // are read at once (a demoted active's close is seen then).
        let mut next_fill = Instant::now();
        loop {
            // One more in flight when due, up to the window, unless stopping: a steady load, not a maximal one.
            if Instant::now() >= next_fill && inflight.len() < WINDOW && !stop.load(Ordering::Relaxed) {
                let req = op(&run_id, next_op);
                next_op += 1;
                h.push(Record::new(t(start), Kind::Send, &req.id, name));
                frame_into(&req, &mut out);
                inflight.push_back(req);
                next_fill = Instant::now() + PACE;
            }
            if !out.is_empty() {
                if w.write_all(&out).await.is_err() {
                    // It closed the connection (a demoted active does): the other is likelier active.
                    target = (target + 1) % targets.len();
                    continue 'outer;
                }
                out.clear();
            }
            if inflight.is_empty() {
                if stop.load(Ordering::Relaxed) {
                    break 'outer;
                }
                tokio::time::sleep_until(next_fill.into()).await;
                continue;
            }
            let reply = if inflight.len() < WINDOW && !stop.load(Ordering::Relaxed) {
                // Read until the next top-up is due (reading is cancel-safe: nothing is lost).
                match tokio::time::timeout_at(next_fill.into(), next_reply(&mut r, &mut frames)).await {
                    Ok(reply) => reply,
                    Err(_) => continue,
                }
            } else {
                next_reply(&mut r, &mut frames).await
            };
            let Some(reply) = reply else {
                // Timeout, EOF or error: the processor went away; try the other.
                target = (target + 1) % targets.len();
                continue 'outer;
            };
            let Some(reply) = reply else { continue };
            let pos = inflight.iter().position(|r| r.id == reply.id());
            match (reply, pos) {
                // Refused, or told that the active stepped down (a notice answers no
                // request): everything in flight goes to the other processor.
                (WorkReply::NotActive { id, active, .. }, pos) if pos.is_some() || id.is_empty() => {
                    if pos.is_some() {
                        h.push(Record { detail: active.clone(), ..Record::new(t(start), Kind::NotActive, id, name) });
                    }
                    target = active
                        .and_then(|a| targets.iter().position(|(n, _)| *n == a))
                        .unwrap_or((target + 1) % targets.len());
                    refused += 1;
                    if refused > 1 {
                        // Mid-switchover neither may be active yet: do not spin between them.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    continue 'outer;
                }
                (WorkReply::Ack { id, seq, registered, duplicate }, Some(pos)) => {
                    inflight.remove(pos);
                    refused = 0;
                    h.push(Record {
                        seq: Some(seq),
                        registered: Some(registered),
                        duplicate: Some(duplicate),
                        ..Record::new(t(start), Kind::Ack, id, name)
                    });
                }
                (WorkReply::Rejected { id, reason }, Some(pos)) => {
                    inflight.remove(pos);
                    rejected.fetch_add(1, Ordering::Relaxed);
                    h.push(Record { detail: Some(reason), ..Record::new(t(start), Kind::Rejected, id, name) });
                }
                // An answer to nothing in flight (answered before).
                _ => {}
            }
        }
    }
    h
}

/// The next reply on a work connection (`Some(None)`: one that does not
/// decode), or `None` when the connection timed out, closed or broke.
async fn next_reply(r: &mut (impl AsyncRead + Unpin), frames: &mut Frames) -> Option<Option<WorkReply>> {
    loop {
        match frames.next_frame() {
            Ok(Some(frame)) => return Some(from_frame(frame).ok()),
            Ok(None) => {}
            Err(_) => return None,
        }
        match tokio::time::timeout(Duration::from_secs(3), r.read_buf(frames.spare())).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hitless_protocol::Role;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A processor on loopback TCP: its listener and the channel to it.
    async fn processor() -> (TcpListener, Channel) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let work = l.local_addr().unwrap();
        (l, Channel::Tcp { control: work, work })
    }

    /// Read a work connection's requests, handing each to `answer`.
    async fn serve(mut s: TcpStream, mut answer: impl FnMut(WorkRequest, &mut Vec<u8>)) {
        let mut preamble = [0u8; 4];
        if s.read_exact(&mut preamble).await.is_err() {
            return;
        }
        let mut frames = Frames::new();
        while matches!(s.read_buf(frames.spare()).await, Ok(n) if n > 0) {
            let mut out = Vec::new();
            while let Ok(Some(frame)) = frames.next_frame() {
                answer(from_frame(frame).unwrap(), &mut out);
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    fn ack(req: &WorkRequest, seq: u64, out: &mut Vec<u8>) {
        frame_into(&WorkReply::Ack { id: req.id.clone(), seq, registered: true, duplicate: false }, out);
    }

    #[tokio::test]
    async fn a_step_down_notice_sends_the_client_to_the_other_processor_at_once() {
        let ((a, a_ch), (b, b_ch)) = (processor().await, processor().await);
        // p121 acks the first request, then says it stepped down and answers nothing more.
        tokio::spawn(async move {
            let (s, _) = a.accept().await.unwrap();
            let mut told = false;
            serve(s, |req, out| {
                if !told {
                    ack(&req, 1, out);
                    frame_into(&WorkReply::NotActive { id: String::new(), role: Role::Standby, active: None }, out);
                    told = true;
                }
            })
            .await;
        });
        // p122 acks everything, and says which requests reached it.
        let (got_tx, mut got) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (s, _) = b.accept().await.unwrap();
            let mut seq = 1;
            serve(s, |req, out| {
                seq += 1;
                ack(&req, seq, out);
                let _ = got_tx.send(req.id);
            })
            .await;
        });
        let w = Workload::start(vec![("p121".into(), a_ch), ("p122".into(), b_ch)], "p121".into(), "t1", None);
        // Told, the client goes at once; not told, it would wait out its 3-s read timeout.
        let first = tokio::time::timeout(Duration::from_secs(2), got.recv()).await;
        let h = w.stop().await;
        assert!(matches!(first, Ok(Some(_))), "no request reached p122 after p121 stepped down: {h:?}");
        assert!(h.records.iter().any(|r| r.kind == Kind::Ack && r.processor == "p122"), "{h:?}");
        // Nothing was refused: the notice alone moved it.
        assert!(h.records.iter().all(|r| r.kind != Kind::NotActive), "{h:?}");
    }

    #[tokio::test]
    async fn with_neither_processor_active_the_client_pauses_instead_of_spinning() {
        let ((a, a_ch), (b, b_ch)) = (processor().await, processor().await);
        // Both refuse everything, as mid-switchover before either is active.
        let dials = Arc::new(AtomicUsize::new(0));
        for l in [a, b] {
            let dials = dials.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    dials.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve(s, |req, out| {
                        frame_into(&WorkReply::NotActive { id: req.id, role: Role::Standby, active: None }, out)
                    }));
                }
            });
        }
        let started = Instant::now();
        let w = Workload::start(vec![("p121".into(), a_ch), ("p122".into(), b_ch)], "p121".into(), "t2", None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (n, ms) = (dials.load(Ordering::Relaxed), started.elapsed().as_millis() as usize);
        let h = w.stop().await;
        // From the second refusal in a row on, at least 1 ms passes before the
        // next dial: at most one dial per ms after the first two (without the
        // pause, thousands in 300 ms).
        assert!(n >= 2 && n <= ms + 2, "{n} dials in {ms} ms: {h:?}");
        assert!(h.records.iter().any(|r| r.kind == Kind::NotActive && r.processor == "p122"), "tried both");
        assert!(h.records.iter().all(|r| r.kind != Kind::Ack));
    }

    #[test]
    fn operations_cycle_open_update_update_close() {
        assert!(matches!(op("r1", 4).op, Operation::Open { ref unit, .. } if unit == "r1-u1"));
        assert!(matches!(op("r1", 7).op, Operation::Close { ref unit } if unit == "r1-u1"));
        assert_eq!(op("r1", 7).id, "r1-w7");
    }
}
