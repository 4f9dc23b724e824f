//! What this build of the agent is: its software version, the features it
//! supports and, for test images, its deliberate flaw. Fixed at compile time
//! by Cargo features, so each version is a different binary.

use hitless_protocol::{FeatureSet, FEATURE_PRIORITY};
use serde::Serialize;

/// A deliberate defect compiled into a test image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flaw {
    /// Evaluation always reports "not acceptable".
    BadEval,
    /// The agent exits shortly after becoming active.
    Crash,
}

/// The software version of this build.
pub const VERSION: &str = if cfg!(feature = "v2") { "2.0.0" } else { "1.0.0" };

/// The deliberate flaw of this build, if it is a test image.
pub const FLAW: Option<Flaw> = if cfg!(feature = "bad-eval") {
    Some(Flaw::BadEval)
} else if cfg!(feature = "crash") {
    Some(Flaw::Crash)
} else {
    None
};

/// Features this build supports.
pub fn supported() -> FeatureSet {
    let mut f = FeatureSet::new();
    if cfg!(feature = "v2") {
        f.insert(FEATURE_PRIORITY.to_string());
    }
    f
}

/// The manifest written next to the binary on the app disk.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// Software version.
    pub version: &'static str,
    /// New features this version brings (disabled until enabled).
    pub features: FeatureSet,
    /// Deliberate flaw (test images only).
    pub flaw: Option<Flaw>,
}

/// This build's manifest.
pub fn manifest() -> Manifest {
    Manifest { version: VERSION, features: supported(), flaw: FLAW }
}
