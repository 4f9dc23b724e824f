//! Reports: one self-contained HTML page per run (`report.html`), rendered
//! from its transcript and the workload histories beside it, and an index
//! page for a scenario run linking every scenario's report with its result.
//!
//! The page has no script, no external stylesheet, font or image: inline CSS
//! and SVG only, so it opens in any browser from a CI artifact or a mail. It
//! shows the run at a glance — one lane per processor with its role and
//! version over time, the steps of Fig. 6 as bands across the lanes, faults,
//! losses, failovers and reloads as markers, the workload's acks per interval
//! on the same time axis with every service gap marked — and then the
//! header (platform first), the evaluation verdict with its reasons, each
//! invariant's verdict with its offending request ids, and every event.
//!
//! | file | what |
//! |---|---|
//! | `read` | the transcript and its histories, read back ([`Input`]) |
//! | `model` | what the timeline shows, computed from an [`Input`] (pure) |
//! | `svg` | the timeline drawn |
//! | `page` | the page around it: header, verdicts, tables |
//! | `index` | the index page of a scenario run |
//! | `escape` | escaping text for HTML and XML (also used by the JUnit writer) |
//!
//! Rendering is a pure function ([`render`]); reading and writing files are
//! apart ([`load`], [`write`], [`write_beside`], [`index()`]).

mod escape;
mod index;
mod model;
mod page;
mod read;
mod svg;

pub(crate) use escape::{attr, text};
pub use index::{index, render_index};
pub use read::{load, Input, WorkloadRun};

use std::path::{Path, PathBuf};

/// The report's file name, beside the transcript.
pub const REPORT_FILE: &str = "report.html";
/// The index page's file name, in a scenario run's output directory.
pub const INDEX_FILE: &str = "index.html";
/// The transcript's file name (in a run directory and in a scenario's directory).
pub const TRANSCRIPT_FILE: &str = "transcript.yaml";

/// What went wrong making a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The transcript could not be read.
    #[error("cannot read the transcript {path}")]
    Read {
        /// The transcript.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The transcript is not one `hitless` writes.
    #[error("{path} is not a hitless transcript")]
    Parse {
        /// The transcript.
        path: PathBuf,
        /// Where and why parsing stopped.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// The page could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The page.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The report of `input` as one HTML page.
pub fn render(input: &Input) -> String {
    page::page(input, &model::timeline(input))
}

/// Render the transcript at `transcript` (a file, or a directory holding
/// `transcript.yaml`) with its histories into `out`; returns `out`.
pub fn write(transcript: &Path, out: &Path) -> Result<PathBuf, ReportError> {
    let html = render(&load(transcript)?);
    crate::rundir::write_atomic(out, html.as_bytes())
        .map_err(|source| ReportError::Write { path: out.to_path_buf(), source })?;
    Ok(out.to_path_buf())
}

/// Write `report.html` next to the transcript at `transcript` (a file, or a
/// directory holding `transcript.yaml`); returns the page's path.
pub fn write_beside(transcript: &Path) -> Result<PathBuf, ReportError> {
    let file = read::transcript_file(transcript);
    let out = file.parent().unwrap_or(Path::new(".")).join(REPORT_FILE);
    write(&file, &out)
}
