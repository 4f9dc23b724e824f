//! The history of a workload: every request it sent and every answer it
//! got, with the processor and the time — what the invariants are checked
//! against, Jepsen-style. Each run has its own id, which prefixes every
//! request id (so no run's work can be answered from another run's), and its
//! own history file in the run directory, appended record by record as it
//! happens: a run killed mid-way still leaves what it did to be checked.

use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

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
    /// The processor answered it from its de-duplication index: applied before (acks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Rejection reason, or the active named by a not-active answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// A record with no ack fields and no detail.
    pub fn new(t_ms: u64, kind: Kind, id: impl Into<String>, processor: impl Into<String>) -> Self {
        let (id, processor) = (id.into(), processor.into());
        Record { t_ms, kind, id, processor, seq: None, registered: None, duplicate: None, detail: None }
    }
}

/// What the workload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

    /// Longest time without any ack that overlaps the switchover [from, to]
    /// (ms), the window running on until `new` (the new active) first acks:
    /// the old active's last acks may reach the client after `to`.
    pub fn gap_around(&self, from: u64, to: u64, new: &str) -> u64 {
        let acks: Vec<&Record> = self.records.iter().filter(|r| r.kind == Kind::Ack).collect();
        let first_new = acks.iter().find(|r| r.t_ms >= from && r.processor == new).map_or(to, |r| r.t_ms);
        let to = to.max(first_new);
        acks.windows(2)
            .filter(|w| w[1].t_ms >= from && w[0].t_ms < to)
            .map(|w| w[1].t_ms - w[0].t_ms)
            .max()
            .unwrap_or(0)
    }

    /// Read a history file; a last line torn by a kill is skipped.
    pub fn read(path: &Path) -> std::io::Result<History> {
        let text = std::fs::read_to_string(path)?;
        Ok(History { records: text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect() })
    }

    /// Several runs' histories as one (their request ids never collide).
    pub fn merged(all: impl IntoIterator<Item = History>) -> History {
        History { records: all.into_iter().flat_map(|h| h.records).collect() }
    }
}

/// A history being recorded: every record is kept and, when there is a file,
/// appended to it at once.
#[derive(Debug, Default)]
pub struct Recorder {
    history: History,
    file: Option<std::fs::File>,
    /// The first error writing the file, if any (the run goes on; the report says so).
    failed: Option<String>,
}

impl Recorder {
    /// A recorder appending to `path` (created), or keeping records in memory only.
    pub fn new(path: Option<&Path>) -> Recorder {
        let opened = path.map(|p| {
            let parent = p.parent().map(std::fs::create_dir_all).transpose();
            parent.and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(p))
        });
        match opened {
            Some(Ok(f)) => Recorder { file: Some(f), ..Recorder::default() },
            Some(Err(e)) => Recorder { failed: Some(e.to_string()), ..Recorder::default() },
            None => Recorder::default(),
        }
    }

    /// Keep `r`, and append it to the file.
    pub fn push(&mut self, r: Record) {
        if let Some(f) = self.file.as_mut() {
            let line = serde_json::to_vec(&r).map(|mut l| {
                l.push(b'\n');
                l
            });
            if let Err(e) = line.map_err(std::io::Error::other).and_then(|l| f.write_all(&l)) {
                self.failed.get_or_insert(e.to_string());
                self.file = None;
            }
        }
        self.history.records.push(r);
    }

    /// The history, and the first error writing its file if there was one.
    pub fn finish(self) -> (History, Option<String>) {
        (self.history, self.failed)
    }
}

/// A new run id: unique per run (milliseconds since the epoch and the process), short enough to prefix ids.
pub fn new_run_id() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("r{ms:x}-{:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(t: u64, id: &str) -> Record {
        Record::new(t, Kind::Ack, id, "p")
    }

    #[test]
    fn a_history_is_on_disk_record_by_record_and_reads_back() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = d.path().join("history/r1.jsonl");
        let mut rec = Recorder::new(Some(&path));
        rec.push(Record::new(1, Kind::Send, "r1-w0", "p121"));
        // Before the run ends (it may be killed here), the record is in the file.
        assert_eq!(History::read(&path).unwrap_or_default().records.len(), 1);
        rec.push(ack(2, "r1-w0"));
        let (h, failed) = rec.finish();
        assert_eq!((h.records.len(), failed), (2, None));
        // A line torn by a kill is skipped, not an error.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"t_ms\":3,"))
            .unwrap_or_default();
        assert_eq!(History::read(&path).unwrap_or_default(), h);
        assert_ne!(new_run_id(), "");
    }

    #[test]
    fn gap_is_the_longest_ack_silence_touching_the_window() {
        let h = History { records: vec![ack(0, "a"), ack(10, "b"), ack(90, "c"), ack(95, "d"), ack(300, "e")] };
        assert_eq!(h.gap_around(20, 50, "p"), 80);
        assert_eq!(h.gap_around(96, 99, "p"), 205);
        assert_eq!(h.acked().len(), 5);
    }

    /// The old active's last ack reaches the client just after the promotion
    /// (it was in transit), the new active's first 12 ms later: a gap of 12 ms.
    #[test]
    fn gap_runs_until_the_new_active_acks() {
        let at = |t: u64, id: &str, p: &str| Record::new(t, Kind::Ack, id, p);
        let h = History {
            records: vec![at(590, "a", "p121"), at(601, "b", "p121"), at(613, "c", "p122"), at(616, "d", "p122")],
        };
        assert_eq!(h.gap_around(597, 600, "p122"), 12);
    }
}
