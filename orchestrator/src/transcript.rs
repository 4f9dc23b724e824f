//! The transcript: a YAML file in the run directory with a header (versions,
//! images, platform, config) and every event of the run. It is the event
//! stream written down, not a second log; fields that vary run to run
//! (`at_ms`, `*_ms`, `pid`, paths) are kept apart for snapshot redaction.

use crate::events::Entry;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the run was: written above its events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Config file.
    pub config: String,
    /// The version the pair ran before.
    pub from: String,
    /// The version it is upgraded to.
    pub to: String,
    /// Processor active at step 200 (upgraded second).
    pub first: String,
    /// Processor upgraded and evaluated first.
    pub second: String,
    /// Where the processors ran: QEMU (accelerator, vsock) or the simulated pair.
    pub platform: Platform,
    /// Why that platform.
    pub platform_reason: String,
    /// Each version's image.
    pub images: Vec<(String, String)>,
    /// Evaluation window at step 204.
    pub evaluation_ms: u64,
}

/// The whole transcript.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript<'a> {
    /// What the run was.
    pub header: &'a Header,
    /// Events, in order.
    pub events: &'a [Entry],
}

/// Write the transcript to `path` atomically (best effort: the run's outcome
/// stands regardless, and a failure to write it is logged).
pub fn write(path: &Path, header: &Header, events: &[Entry]) {
    match serde_saphyr::to_string(&Transcript { header, events }) {
        Ok(y) => {
            if let Err(e) = crate::rundir::write_atomic(path, y.as_bytes()) {
                tracing::warn!("transcript not written to {}: {e}", path.display());
            }
        }
        Err(e) => tracing::warn!("transcript not serialized: {e}"),
    }
}
