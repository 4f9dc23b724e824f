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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

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
    let mut draining: Option<Draining> = None;
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
            // Read until the next top-up is due, if one is (reading is cancel-safe: nothing is lost).
            let due = (inflight.len() < WINDOW && !stop.load(Ordering::Relaxed)).then_some(next_fill);
            let reply = match next_event(&mut r, &mut frames, &mut draining, due).await {
                Got::Reply(reply) => reply,
                Got::Due => continue,
                // The connection left: its acks and rejections settle what they answer
                // (its refusals need nothing: all was re-sent here). An answer
                // "duplicate" is left to the new active: a first send answered so would
                // be the reused-id defect that `invariants::no_lost_or_double` reports,
                // and the re-send recorded here would hide it.
                Got::Drained(Some((at, reply))) => {
                    if !matches!(reply, WorkReply::Ack { duplicate: true, .. }) {
                        if let Some(d) = &draining {
                            settle(reply, at, &d.from, &mut inflight, &mut h, &rejected);
                        }
                    }
                    continue;
                }
                Got::Drained(None) => {
                    draining = None;
                    continue;
                }
            };
            let Some(reply) = reply else {
                // Timeout, EOF or error: the processor went away; try the other.
                target = (target + 1) % targets.len();
                continue 'outer;
            };
            let Some(reply) = reply else { continue };
            if matches!(reply, WorkReply::Ack { .. } | WorkReply::Rejected { .. }) {
                // Answered here now (even for a request the drain took): what the one left
                // behind still sends would interleave its acks with these (the split-brain sign).
                draining = None;
            }
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
                    // Its acks of what it accepted before stepping down still come as
                    // its standby registers them: read on for them (`Draining`).
                    // The first one left is drained: a refusal by the other, mid-switchover,
                    // must not drop the old active's last acks (the one refusing accepted nothing).
                    if draining.is_none() {
                        draining = Some(Draining::start(name.clone(), r, w, frames, start));
                    }
                    if refused > 1 {
                        // Mid-switchover neither may be active yet: do not spin between them.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    continue 'outer;
                }
                (reply, _) => {
                    let ack = matches!(reply, WorkReply::Ack { .. });
                    if settle(reply, t(start), name, &mut inflight, &mut h, &rejected) && ack {
                        refused = 0;
                    }
                }
            }
        }
    }
    h
}

/// Record `reply`, from `from` at `at`, if it settles a request in flight
/// (an ack or a rejection; an answer to nothing in flight was answered
/// before); returns whether it did.
fn settle(
    reply: WorkReply,
    at: u64,
    from: &str,
    inflight: &mut VecDeque<WorkRequest>,
    h: &mut Recorder,
    rejected: &AtomicUsize,
) -> bool {
    let Some(pos) = inflight.iter().position(|r| r.id == reply.id()) else { return false };
    let record = match reply {
        WorkReply::Ack { id, seq, registered, duplicate } => Record {
            seq: Some(seq),
            registered: Some(registered),
            duplicate: Some(duplicate),
            ..Record::new(at, Kind::Ack, id, from)
        },
        WorkReply::Rejected { id, reason } => {
            rejected.fetch_add(1, Ordering::Relaxed);
            Record { detail: Some(reason), ..Record::new(at, Kind::Rejected, id, from) }
        }
        _ => return false,
    };
    inflight.remove(pos);
    h.push(record);
    true
}

/// How long a connection left on a "not active" is read on for acks.
const DRAIN: Duration = Duration::from_millis(500);

/// A connection the client left for the other processor on a "not active",
/// still read for the acks of what that processor accepted before it stepped
/// down: it sends them as its standby registers its last updates. Taking them
/// there, rather than only from the new active after re-sending (answered
/// from its de-duplication index), is what a client of a real pair would do.
/// Ended by the first answer from where the client went, after [`DRAIN`], or
/// when the connection closes.
struct Draining {
    /// The processor it was connected to.
    from: String,
    /// Each reply with when it came (ms since the workload's start).
    acks: tokio::sync::mpsc::UnboundedReceiver<(u64, WorkReply)>,
    task: tokio::task::JoinHandle<()>,
}

impl Draining {
    fn start<S: AsyncRead + AsyncWrite + Send + 'static>(
        from: String,
        mut r: ReadHalf<S>,
        w: WriteHalf<S>,
        mut frames: Frames,
        start: Instant,
    ) -> Draining {
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Nothing more is written; kept so that the connection stays open.
            let _w = w;
            let until = tokio::time::Instant::now() + DRAIN;
            while let Ok(Some(reply)) = tokio::time::timeout_at(until, next_reply(&mut r, &mut frames)).await {
                if let Some(reply) = reply {
                    if tx.send((start.elapsed().as_millis() as u64, reply)).is_err() {
                        return;
                    }
                }
            }
        });
        Draining { from, acks, task }
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What reading a work connection gave.
enum Got {
    /// A reply on the current connection ([`next_reply`]).
    Reply(Option<Option<WorkReply>>),
    /// A reply on the connection being drained and when it came (`None`: the drain is over).
    Drained(Option<(u64, WorkReply)>),
    /// The next request is due.
    Due,
}

/// The next reply on the current connection or the drained one, or `Due` at `due`.
async fn next_event(
    r: &mut (impl AsyncRead + Unpin),
    frames: &mut Frames,
    draining: &mut Option<Draining>,
    due: Option<Instant>,
) -> Got {
    let drained = async {
        match draining {
            Some(d) => d.acks.recv().await,
            None => std::future::pending().await,
        }
    };
    let due = async {
        match due {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        reply = next_reply(r, frames) => Got::Reply(reply),
        reply = drained => Got::Drained(reply),
        () = due => Got::Due,
    }
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
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A processor on loopback TCP: its listener and the channel to it.
    async fn processor() -> (TcpListener, Channel) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let work = l.local_addr().unwrap();
        (l, Channel::Tcp { control: work, work })
    }

    #[tokio::test]
    async fn a_step_down_notice_sends_the_client_to_the_other_processor_at_once() {
        let ((a, a_ch), (b, b_ch)) = (processor().await, processor().await);
        // p121 acks the first request, then says it stepped down and answers nothing more.
        scripted(a, |req| match req.id.as_str() {
            "t1-w0" => vec![(0, acked(req, 1)), (0, notice())],
            _ => vec![],
        });
        // p122 acks everything, and says which requests reached it.
        let (got_tx, mut got) = mpsc::unbounded_channel();
        let seq = AtomicUsize::new(2);
        scripted(b, move |req| {
            let _ = got_tx.send(req.id.clone());
            vec![(0, acked(req, seq.fetch_add(1, Ordering::Relaxed) as u64))]
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

    /// A processor answering each request, on any connection, with
    /// `script(request)`: replies, each after its delay (ms) from the
    /// request's arrival. Returns how many connections it has accepted.
    fn scripted(
        l: TcpListener,
        script: impl FnMut(&WorkRequest) -> Vec<(u64, WorkReply)> + Send + 'static,
    ) -> Arc<AtomicUsize> {
        let script = Arc::new(std::sync::Mutex::new(script));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let script = script.clone();
                tokio::spawn(async move {
                    let (mut r, w) = s.into_split();
                    let w = Arc::new(tokio::sync::Mutex::new(w));
                    let mut preamble = [0u8; 4];
                    if r.read_exact(&mut preamble).await.is_err() {
                        return;
                    }
                    let mut frames = Frames::new();
                    // Until the client closes it, like an agent.
                    while matches!(r.read_buf(frames.spare()).await, Ok(n) if n > 0) {
                        while let Ok(Some(frame)) = frames.next_frame() {
                            let replies = (script.lock().unwrap())(&from_frame(frame).unwrap());
                            for (ms, reply) in replies {
                                let w = w.clone();
                                tokio::spawn(async move {
                                    // Not even a zero sleep: the timer's 1-ms tick would pace the client.
                                    if ms > 0 {
                                        tokio::time::sleep(Duration::from_millis(ms)).await;
                                    }
                                    let mut out = Vec::new();
                                    frame_into(&reply, &mut out);
                                    let _ = w.lock().await.write_all(&out).await;
                                });
                            }
                        }
                    }
                });
            }
        });
        accepted
    }

    fn acked(req: &WorkRequest, seq: u64) -> WorkReply {
        WorkReply::Ack { id: req.id.clone(), seq, registered: true, duplicate: false }
    }

    fn notice() -> WorkReply {
        WorkReply::NotActive { id: String::new(), role: Role::Standby, active: None }
    }

    /// p121 acks w0, then on w1 steps down: the notice at once, w1's ack
    /// `late` ms after (its standby registering it); p122 answers w1
    /// `p122_w1` ms after it arrives, the rest `p122_rest` ms after. The
    /// client's history once w1 is acked.
    async fn step_down_with_an_ack_still_due(late: u64, p122_w1: u64, p122_rest: u64) -> History {
        step_down_with(late, false, p122_w1, p122_rest).await
    }

    /// [`step_down_with_an_ack_still_due`], p121's late ack of w1 saying "duplicate" if `dup`.
    async fn step_down_with(late: u64, dup: bool, p122_w1: u64, p122_rest: u64) -> History {
        let ((a, a_ch), (b, b_ch)) = (processor().await, processor().await);
        scripted(a, move |req| match req.id.as_str() {
            "t3-w0" => vec![(0, acked(req, 1))],
            "t3-w1" => {
                let ack = WorkReply::Ack { id: req.id.clone(), seq: 2, registered: true, duplicate: dup };
                vec![(0, notice()), (late, ack)]
            }
            _ => vec![],
        });
        let seq = Arc::new(AtomicUsize::new(10));
        scripted(b, move |req| {
            let after = if req.id == "t3-w1" { p122_w1 } else { p122_rest };
            vec![(after, acked(req, seq.fetch_add(1, Ordering::Relaxed) as u64))]
        });
        let w = Workload::start(vec![("p121".into(), a_ch), ("p122".into(), b_ch)], "p121".into(), "t3", None);
        // Past both processors' answers to w1 (at most 350 ms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.stop().await
    }

    fn acker(h: &History, id: &str) -> Option<String> {
        h.records.iter().find(|r| r.kind == Kind::Ack && r.id == id).map(|r| r.processor.clone())
    }

    #[tokio::test]
    async fn a_stepped_down_actives_last_acks_are_taken_from_it() {
        // w1's ack from p121 comes 30 ms after its notice; p122 answers from 150 ms on.
        let h = step_down_with_an_ack_still_due(30, 150, 150).await;
        assert_eq!(acker(&h, "t3-w1").as_deref(), Some("p121"), "{h:?}");
        assert!(h.records.iter().any(|r| r.kind == Kind::Retry && r.id == "t3-w1" && r.processor == "p122"));
        assert!(h.records.iter().any(|r| r.kind == Kind::Ack && r.processor == "p122"), "{h:?}");
        assert_eq!(crate::invariants::ack_handovers(&h), 1, "{h:?}");
    }

    #[tokio::test]
    async fn a_duplicate_answer_from_the_old_active_is_left_to_the_new_one() {
        // Taken, it would hide a first send answered "duplicate" behind the re-send.
        let h = step_down_with(30, true, 150, 150).await;
        assert_eq!(acker(&h, "t3-w1").as_deref(), Some("p122"), "{h:?}");
    }

    #[tokio::test]
    async fn once_the_new_active_acks_the_old_ones_acks_are_not_taken() {
        // p122 acks at once, but the re-sent w1 only at 350 ms: p121's ack of it
        // at 300 ms, taken, would make acks change hands three times.
        let h = step_down_with_an_ack_still_due(300, 350, 0).await;
        assert_eq!(acker(&h, "t3-w1").as_deref(), Some("p122"), "{h:?}");
        assert!(h.records.iter().all(|r| r.kind != Kind::Ack || r.processor == "p122" || r.id == "t3-w0"), "{h:?}");
        assert_eq!(crate::invariants::ack_handovers(&h), 1, "{h:?}");
    }

    #[tokio::test]
    async fn with_neither_processor_active_the_client_pauses_instead_of_spinning() {
        let ((a, a_ch), (b, b_ch)) = (processor().await, processor().await);
        // Both refuse everything, as mid-switchover before either is active.
        let refuse = |req: &WorkRequest| {
            vec![(0, WorkReply::NotActive { id: req.id.clone(), role: Role::Standby, active: None })]
        };
        let (dials_a, dials_b) = (scripted(a, refuse), scripted(b, refuse));
        let started = Instant::now();
        let w = Workload::start(vec![("p121".into(), a_ch), ("p122".into(), b_ch)], "p121".into(), "t2", None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = dials_a.load(Ordering::Relaxed) + dials_b.load(Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as usize;
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
