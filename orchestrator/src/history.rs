//! The history of a workload: every request it sent and every answer it
//! got, with the processor and the time — what the invariants are checked
//! against, Jepsen-style. Written as JSON lines in the run directory.

use serde::Serialize;
use std::collections::BTreeMap;

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
}
