//! The transcript: a YAML file in the run directory with a header (versions,
//! images, accelerator, vsock mode, config) and every event of the run. It is
//! the event stream written down, not a second log; fields that vary run to
//! run (`at_ms`, `*_ms`, `pid`, paths) are kept apart for snapshot redaction.

use crate::events::Entry;
use crate::testbed::Testbed;
use crate::upgrade::Plan;
use serde::Serialize;

/// The transcript's header.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// Config file.
    pub config: String,
    /// Old and new version.
    pub from: String,
    /// New version.
    pub to: String,
    /// Processor active at step 200.
    pub first: String,
    /// Processor upgraded first.
    pub second: String,
    /// Accelerator and why.
    pub accelerator: String,
    /// Why that accelerator.
    pub accelerator_reason: String,
    /// vsock transport.
    pub vsock: String,
    /// Version images.
    pub images: Vec<(String, String)>,
    /// Evaluation window.
    pub evaluation_ms: u64,
}

/// The whole transcript.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    /// Header.
    pub header: Header,
    /// Events, in order.
    pub events: Vec<Entry>,
}

/// Build the transcript of the testbed's event stream so far.
pub fn build(tb: &Testbed, plan: &Plan) -> Transcript {
    let img = |v: &str| tb.version_info(v).map(|i| i.image).unwrap_or_default();
    Transcript {
        header: Header {
            config: tb.cfg.file.display().to_string(),
            from: plan.from.clone(),
            to: plan.to.clone(),
            first: plan.first.clone(),
            second: plan.second.clone(),
            accelerator: tb.state.accel.to_string(),
            accelerator_reason: tb.state.accel_reason.clone(),
            vsock: format!("{:?}", tb.state.vsock).to_lowercase(),
            images: vec![(plan.from.clone(), img(&plan.from)), (plan.to.clone(), img(&plan.to))],
            evaluation_ms: plan.evaluation_ms,
        },
        events: tb.events.entries(),
    }
}

/// Write `transcript.yaml` into the run directory (best effort: the run's outcome stands regardless).
pub fn write(tb: &Testbed, plan: &Plan) {
    match serde_saphyr::to_string(&build(tb, plan)) {
        Ok(y) => {
            if let Err(e) = crate::rundir::write_atomic(&tb.run.transcript(), y.as_bytes()) {
                tracing::warn!("transcript not written: {e}");
            }
        }
        Err(e) => tracing::warn!("transcript not serialized: {e}"),
    }
}
