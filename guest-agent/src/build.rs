//! What a build of the agent is: its software version, the features it
//! supports and, for test images, its deliberate flaw. In a guest this is
//! fixed at compile time by Cargo features, so each version is a different
//! binary ([`Build::compiled`]); the orchestrator's simulated pair runs
//! agents in-process and names the build per processor instead
//! ([`Build::from_cargo_features`], the same mapping the features make).

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

/// The software version of this binary.
pub const VERSION: &str = if cfg!(feature = "v2") { "2.0.0" } else { "1.0.0" };

/// Version, features and flaw of an agent; serialized, it is the manifest
/// written next to the binary on the app disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// Software version.
    pub version: String,
    /// New features this version brings (disabled until enabled).
    pub features: FeatureSet,
    /// Deliberate flaw (test images only).
    pub flaw: Option<Flaw>,
    /// The wire protocol it speaks: the orchestrator checks before an upgrade that the new version can talk to the old.
    pub proto: u32,
}

impl Build {
    /// This binary's build.
    pub fn compiled() -> Build {
        let mut names = Vec::new();
        for (on, name) in
            [(cfg!(feature = "v2"), "v2"), (cfg!(feature = "bad-eval"), "bad-eval"), (cfg!(feature = "crash"), "crash")]
        {
            if on {
                names.push(name);
            }
        }
        Build::from_cargo_features(&names)
    }

    /// The build these Cargo features of this crate make (`bad-eval` and `crash` imply `v2`).
    pub fn from_cargo_features<S: AsRef<str>>(features: &[S]) -> Build {
        let has = |f: &str| features.iter().any(|x| x.as_ref() == f);
        let flaw = if has("bad-eval") {
            Some(Flaw::BadEval)
        } else if has("crash") {
            Some(Flaw::Crash)
        } else {
            None
        };
        let v2 = has("v2") || flaw.is_some();
        let mut supported = FeatureSet::new();
        if v2 {
            supported.insert(FEATURE_PRIORITY.to_string());
        }
        let version = if v2 { "2.0.0" } else { "1.0.0" }.into();
        Build { version, features: supported, flaw, proto: hitless_protocol::PROTOCOL_VERSION }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flawed_builds_are_2_0_0_and_1_0_0_has_no_features() {
        let b = Build::from_cargo_features(&["crash"]);
        assert_eq!((b.version.as_str(), b.flaw), ("2.0.0", Some(Flaw::Crash)));
        assert!(b.features.contains(FEATURE_PRIORITY));
        let none: [&str; 0] = [];
        assert_eq!(Build::from_cargo_features(&none).features.len(), 0);
        assert_eq!(Build::compiled().version, VERSION);
    }
}
