//! The workload: a client that submits work units to whichever processor is
//! active for the whole upgrade, follows the active across switchovers
//! (retrying unacknowledged requests with the same id), and records every
//! request and answer — the [`History`] that [`crate::invariants`] checks.

use crate::channel::Channel;
use crate::history::{History, Kind, Record};
use hitless_protocol::{from_line, to_line, Operation, WorkReply, WorkRequest, WORK_PORT};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Requests in flight at once on the connection.
const WINDOW: usize = 8;
/// Pause between requests; keeps the load steady rather than maximal during an upgrade.
const PACE: Duration = Duration::from_millis(2);

/// The n-th operation of the workload: units are opened, updated twice, closed.
fn op(n: u64) -> WorkRequest {
    let unit = format!("u{}", n / 4);
    let op = match n % 4 {
        0 => Operation::Open { unit, fields: [("caller".to_string(), format!("c{}", n / 4))].into() },
        1 => Operation::Update { unit, fields: [("state".to_string(), "ringing".to_string())].into() },
        2 => Operation::Update { unit, fields: [("state".to_string(), "connected".to_string())].into() },
        _ => Operation::Close { unit },
    };
    WorkRequest { id: format!("w{n}"), op }
}

/// A running workload; stop it to get its history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicUsize>,
    /// `None` once stopped.
    task: Option<tokio::task::JoinHandle<History>>,
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
    /// Start submitting to the pair `(name, channel)`, beginning with `first`.
    pub fn start(targets: Vec<(String, Channel)>, first: String) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let rejected = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let task = tokio::spawn(run(targets, first, stop.clone(), rejected.clone(), start));
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
    pub async fn stop(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => History::default(),
        }
    }
}

async fn run(
    targets: Vec<(String, Channel)>,
    first: String,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicUsize>,
    start: Instant,
) -> History {
    let mut h = History::default();
    let t = |start: Instant| start.elapsed().as_millis() as u64;
    let mut target = targets.iter().position(|(n, _)| *n == first).unwrap_or(0);
    let mut next_op: u64 = 0;
    // Sent but not yet acked, in order; resent on the next connection.
    let mut inflight: VecDeque<WorkRequest> = VecDeque::new();
    let mut stopping_since: Option<Instant> = None;
    'outer: loop {
        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if inflight.is_empty() || since.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let (name, ch) = &targets[target];
        let Ok(stream) = ch.connect(WORK_PORT).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            target = (target + 1) % targets.len();
            continue;
        };
        let (r, mut w) = tokio::io::split(stream);
        let mut reader = BufReader::new(r);
        for req in &inflight {
            h.records.push(Record::new(t(start), Kind::Retry, &req.id, name));
            let Ok(line) = to_line(req) else { continue };
            if w.write_all(&line).await.is_err() {
                continue 'outer;
            }
        }
        let mut line = Vec::new();
        loop {
            // Keep the window full unless stopping.
            while inflight.len() < WINDOW && !stop.load(Ordering::Relaxed) {
                let req = op(next_op);
                next_op += 1;
                h.records.push(Record::new(t(start), Kind::Send, &req.id, name));
                let Ok(l) = to_line(&req) else { continue };
                inflight.push_back(req);
                if w.write_all(&l).await.is_err() {
                    continue 'outer;
                }
            }
            if inflight.is_empty() {
                break 'outer;
            }
            line.clear();
            let read = tokio::time::timeout(Duration::from_secs(3), reader.read_until(b'\n', &mut line)).await;
            let reply = match read {
                Ok(Ok(n)) if n > 0 => from_line::<WorkReply>(&line).ok(),
                // Timeout, EOF or error: the processor went away; try the other.
                _ => {
                    target = (target + 1) % targets.len();
                    continue 'outer;
                }
            };
            let Some(reply) = reply else { continue };
            let Some(pos) = inflight.iter().position(|r| r.id == reply.id()) else { continue };
            match reply {
                WorkReply::Ack { id, seq, registered, .. } => {
                    inflight.remove(pos);
                    h.records.push(Record {
                        seq: Some(seq),
                        registered: Some(registered),
                        ..Record::new(t(start), Kind::Ack, id, name)
                    });
                }
                WorkReply::Rejected { id, reason } => {
                    inflight.remove(pos);
                    rejected.fetch_add(1, Ordering::Relaxed);
                    h.records.push(Record { detail: Some(reason), ..Record::new(t(start), Kind::Rejected, id, name) });
                }
                WorkReply::NotActive { id, active, .. } => {
                    h.records
                        .push(Record { detail: active.clone(), ..Record::new(t(start), Kind::NotActive, id, name) });
                    target = active
                        .and_then(|a| targets.iter().position(|(n, _)| *n == a))
                        .unwrap_or((target + 1) % targets.len());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue 'outer;
                }
            }
            tokio::time::sleep(PACE).await;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_cycle_open_update_update_close() {
        assert!(matches!(op(4).op, Operation::Open { ref unit, .. } if unit == "u1"));
        assert!(matches!(op(7).op, Operation::Close { ref unit } if unit == "u1"));
        assert_eq!(op(7).id, "w7");
    }
}
