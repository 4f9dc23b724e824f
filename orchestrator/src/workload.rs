//! The workload: a client that submits work units to whichever processor is
//! active for the whole upgrade, follows the active across switchovers
//! (retrying unacknowledged requests with the same id), and records every
//! request and answer — the history that [`crate::history`] checks.

use crate::channel::Channel;
use hitless_protocol::{from_line, to_line, Operation, WorkReply, WorkRequest, WORK_PORT};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Requests in flight at once on the connection.
const WINDOW: usize = 8;
/// Pause between requests; keeps the load steady rather than maximal during an upgrade.
const PACE: Duration = Duration::from_millis(2);

/// What a history record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A request was sent for the first time.
    Send,
    /// An unacknowledged request was sent again on a new connection.
    Retry,
    /// The processor acknowledged the request.
    Ack,
    /// The processor refused it as invalid (a workload error).
    Rejected,
    /// The processor is not active; the workload follows the hint.
    NotActive,
}

/// One line of the history.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the workload started.
    pub t_ms: u64,
    /// What happened.
    pub kind: Kind,
    /// Request id.
    pub id: String,
    /// Processor the request went to / answered.
    pub processor: String,
    /// Sequence number (acks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Registered by a standby before the ack (acks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    /// Rejection reason, or the active named by a not-active answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// A record with no ack fields and no detail.
    pub fn new(t_ms: u64, kind: Kind, id: impl Into<String>, processor: impl Into<String>) -> Self {
        Record { t_ms, kind, id: id.into(), processor: processor.into(), seq: None, registered: None, detail: None }
    }
}

/// What the workload did.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every record, in order.
    pub records: Vec<Record>,
}

impl History {
    /// Ids acknowledged, with the time of their first ack.
    pub fn acked(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in self.records.iter().filter(|r| r.kind == Kind::Ack) {
            m.entry(r.id.clone()).or_insert(r.t_ms);
        }
        m
    }

    /// Rejected requests (workload errors).
    pub fn rejected(&self) -> usize {
        self.records.iter().filter(|r| r.kind == Kind::Rejected).count()
    }

    /// Longest time without any ack that overlaps the window [from, to] (ms).
    pub fn gap_around(&self, from: u64, to: u64) -> u64 {
        let acks: Vec<u64> = self.records.iter().filter(|r| r.kind == Kind::Ack).map(|r| r.t_ms).collect();
        acks.windows(2).filter(|w| w[1] >= from && w[0] <= to).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }

    /// Write as JSON lines.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut out = Vec::new();
        for r in &self.records {
            out.extend(serde_json::to_vec(r).map_err(std::io::Error::other)?);
            out.push(b'\n');
        }
        std::fs::write(path, out)
    }
}

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

    fn ack(t: u64, id: &str) -> Record {
        Record::new(t, Kind::Ack, id, "p")
    }

    #[test]
    fn gap_is_the_longest_ack_silence_touching_the_window() {
        let h = History { records: vec![ack(0, "a"), ack(10, "b"), ack(90, "c"), ack(95, "d"), ack(300, "e")] };
        assert_eq!(h.gap_around(20, 50), 80);
        assert_eq!(h.gap_around(96, 99), 205);
        assert_eq!(h.acked().len(), 5);
    }

    #[test]
    fn operations_cycle_open_update_update_close() {
        assert!(matches!(op(4).op, Operation::Open { ref unit, .. } if unit == "u1"));
        assert!(matches!(op(7).op, Operation::Close { ref unit } if unit == "u1"));
        assert_eq!(op(7).id, "w7");
    }
}
