//! Reading a run back: the transcript (the YAML [`crate::transcript`]
//! writes, read into the same types) and each workload run's history from
//! `history/<run-id>.jsonl` beside it, with where that history's clock starts
//! on the event clock (its `workload-started` event).

use super::{ReportError, TRANSCRIPT_FILE};
use crate::events::{Entry, Event};
use crate::history::History;
use crate::transcript::Header;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A transcript and the histories of the workload runs it names.
#[derive(Debug, Clone)]
pub struct Input {
    /// What the run was.
    pub header: Header,
    /// Every event, in order.
    pub events: Vec<Entry>,
    /// Each workload run, in the order they started.
    pub runs: Vec<WorkloadRun>,
}

/// One workload run's history and where it sits on the event clock.
#[derive(Debug, Clone)]
pub struct WorkloadRun {
    /// The run id (its history file's name, its request ids' prefix).
    pub id: String,
    /// When it started on the event clock: its history's `t_ms` counts from here.
    /// `None` for a history file beside the transcript that no event names.
    pub started_ms: Option<u64>,
    /// Its history, or why it could not be read.
    pub history: Result<History, String>,
}

/// The transcript as written: a header and the events.
#[derive(Debug, Deserialize)]
struct Written {
    header: Header,
    events: Vec<Entry>,
}

/// `path` itself, or `path/transcript.yaml` when `path` is a directory.
pub(super) fn transcript_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(TRANSCRIPT_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Parse a transcript's text (read from `path`).
pub(super) fn parse(path: &Path, yaml: &str) -> Result<(Header, Vec<Entry>), ReportError> {
    let w: Written = serde_saphyr::from_str(yaml)
        .map_err(|source| ReportError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
    Ok((w.header, w.events))
}

/// A run id that names a file in `history/` and nothing else.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Read the transcript at `path` (a file, or a directory holding
/// `transcript.yaml`) and the histories in `history/` beside it. A history
/// that is missing or unreadable does not stop the report: it says so.
pub fn load(path: &Path) -> Result<Input, ReportError> {
    let file = transcript_file(path);
    let yaml = std::fs::read_to_string(&file).map_err(|source| ReportError::Read { path: file.clone(), source })?;
    let (header, events) = parse(&file, &yaml)?;
    let dir = file.parent().unwrap_or(Path::new(".")).join("history");
    let read = |id: &str| -> Result<History, String> {
        if !plain_id(id) {
            return Err(format!("run id {id:?} does not name a history file"));
        }
        let p = dir.join(format!("{id}.jsonl"));
        History::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut runs: Vec<WorkloadRun> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::WorkloadStarted { run } => {
                Some(WorkloadRun { id: run.clone(), started_ms: Some(e.at_ms), history: read(run) })
            }
            _ => None,
        })
        .collect();
    // Histories no event places (a transcript written before runs were marked).
    let mut others: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|f| f.file_name().to_str()?.strip_suffix(".jsonl").map(str::to_string))
                .filter(|id| !runs.iter().any(|r| r.id == *id))
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    runs.extend(others.into_iter().map(|id| WorkloadRun { history: read(&id), id, started_ms: None }));
    Ok(Input { header, events, runs })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::platform::{Accel, Platform, Vsock};
    use crate::procedure::Step;

    pub(crate) fn header() -> Header {
        Header {
            config: "vm-configs/pair.yaml".into(),
            from: "1.0.0".into(),
            to: "2.0.0".into(),
            first: "p121".into(),
            second: "p122".into(),
            platform: Platform::Qemu { accel: Accel::Tcg, vsock: Vsock::User },
            platform_reason: "auto: no vmx".into(),
            images: vec![("1.0.0".into(), "/c/app-1.0.0.qcow2".into()), ("2.0.0".into(), "/c/app-2.0.0.qcow2".into())],
            evaluation_ms: 1500,
        }
    }

    #[test]
    fn what_the_transcript_writer_writes_reads_back_as_the_same_events() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let events = vec![
            Entry { at_ms: 3, event: Event::WorkloadStarted { run: "r1".into() } },
            Entry { at_ms: 5, event: Event::StepBegin { step: Step::Initial, name: "initial".into() } },
            Entry {
                at_ms: 9,
                event: Event::Invariant {
                    name: "workload-served".into(),
                    ok: false,
                    detail: "1 acked, 1 rejected".into(),
                    offenders: vec!["r1-w1".into()],
                },
            },
            Entry { at_ms: 9, event: Event::Fault { fault: "cut \"the\" link: 'both' <ways> & more".into() } },
        ];
        let path = d.path().join(TRANSCRIPT_FILE);
        crate::transcript::write(&path, &header(), &events);
        std::fs::create_dir_all(d.path().join("history")).unwrap_or_default();
        std::fs::write(
            d.path().join("history/r1.jsonl"),
            "{\"t_ms\":1,\"kind\":\"ack\",\"id\":\"r1-w0\",\"processor\":\"p121\"}\n",
        )
        .unwrap_or_default();
        std::fs::write(d.path().join("history/r0.jsonl"), "").unwrap_or_default();
        let input = load(d.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(input.events, events);
        assert_eq!(input.header.platform, header().platform);
        let runs: Vec<(&str, Option<u64>, usize)> = input
            .runs
            .iter()
            .map(|r| (r.id.as_str(), r.started_ms, r.history.as_ref().map_or(99, |h| h.records.len())))
            .collect();
        assert_eq!(runs, [("r1", Some(3), 1), ("r0", None, 0)]);
    }

    #[test]
    fn a_missing_or_foreign_transcript_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let e = load(&d.path().join("nope.yaml")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("nope.yaml"), "{e}");
        std::fs::write(d.path().join(TRANSCRIPT_FILE), "name: pair\nprocessors: []\n").unwrap_or_default();
        let e = load(d.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("is not a hitless transcript"), "{e}");
    }

    #[test]
    fn a_run_id_never_reaches_outside_the_history_directory() {
        assert!(plain_id("r1a2130a7007-7d4f"));
        assert!(!plain_id("../../etc/passwd") && !plain_id(""));
    }
}
