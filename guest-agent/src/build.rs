//! What a build of the agent is: its software version, the features it
//! supports and, for test images, its deliberate flaw. In a guest the version
//! and features are fixed at compile time by Cargo features, so each version
//! is a different binary ([`Build::compiled`]); a flaw is a start argument
//! (`--flaw`) that a test version's app disk carries (`agent_args` in the
//! config), so that the broken versions of 2.0.0 cost no build of their own.
//! The orchestrator's simulated pair runs agents in-process and names the
//! build per processor instead ([`Build::from_cargo_features`] and
//! [`Build::with_args`], the same mapping).

use hitless_protocol::{FeatureSet, FEATURE_PRIORITY};
use serde::Serialize;

/// A deliberate defect of a test image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Flaw {
    /// Evaluation always reports "not acceptable".
    BadEval,
    /// The agent exits shortly after becoming active.
    Crash,
}

/// The start arguments that shape a build (the binary flattens them into its
/// own; [`Build::with_args`] parses them alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BuildArgs {
    /// Deliberate flaw, for test images: bad-eval (evaluation says "not
    /// acceptable") or crash (exits soon after becoming active).
    #[arg(long, value_enum)]
    pub flaw: Option<Flaw>,
}

/// [`BuildArgs`] as a command line of its own, for [`Build::with_args`].
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct OnlyBuildArgs {
    #[command(flatten)]
    build: BuildArgs,
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
    /// This binary's build, started with `args`.
    pub fn compiled(args: &BuildArgs) -> Build {
        let features: &[&str] = if cfg!(feature = "v2") { &["v2"] } else { &[] };
        Build { flaw: args.flaw, ..Build::from_cargo_features(features) }
    }

    /// The build these Cargo features of this crate make (`v2` or none).
    pub fn from_cargo_features<S: AsRef<str>>(features: &[S]) -> Build {
        let v2 = features.iter().any(|x| x.as_ref() == "v2");
        let mut supported = FeatureSet::new();
        if v2 {
            supported.insert(FEATURE_PRIORITY.to_string());
        }
        let version = if v2 { "2.0.0" } else { "1.0.0" }.into();
        Build { version, features: supported, flaw: None, proto: hitless_protocol::PROTOCOL_VERSION }
    }

    /// This build started with `args` (an app disk's `agent_args`): parsed as
    /// the binary parses them; any argument but `--flaw` is an error here.
    pub fn with_args<S: AsRef<str>>(self, args: &[S]) -> Result<Build, String> {
        use clap::Parser;
        let a = OnlyBuildArgs::try_parse_from(args.iter().map(|a| a.as_ref())).map_err(|e| {
            // clap's first line says what is wrong; its usage lines name the whole binary's.
            let said = e.render().to_string();
            let first = said.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            format!("{first} (the bundled agent takes only --flaw bad-eval|crash here)")
        })?;
        Ok(Build { flaw: a.build.flaw, ..self })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_features_and_flaws_from_arguments() {
        let b = Build::from_cargo_features(&["v2"]).with_args(&["--flaw", "crash"]).unwrap();
        assert_eq!((b.version.as_str(), b.flaw), ("2.0.0", Some(Flaw::Crash)));
        assert!(b.features.contains(FEATURE_PRIORITY));
        let b = Build::from_cargo_features(&["v2"]).with_args(&["--flaw=bad-eval"]).unwrap();
        assert_eq!(b.flaw, Some(Flaw::BadEval));
        let none: [&str; 0] = [];
        let b = Build::from_cargo_features(&none).with_args(&none).unwrap();
        assert_eq!((b.version.as_str(), b.features.len(), b.flaw), ("1.0.0", 0, None));
        assert_eq!(Build::compiled(&BuildArgs::default()).version, VERSION);
        assert_eq!(Build::compiled(&BuildArgs { flaw: Some(Flaw::Crash) }).flaw, Some(Flaw::Crash));
    }

    #[test]
    fn arguments_that_are_not_a_flaw_are_refused() {
        let b = Build::from_cargo_features(&["v2"]);
        let e = b.clone().with_args(&["--flaw", "slow"]).unwrap_err();
        assert!(e.contains("slow") && e.contains("--flaw bad-eval|crash") && !e.contains("Usage"), "{e}");
        let e = b.with_args(&["--name", "p121"]).unwrap_err();
        assert!(e.contains("--name"), "{e}");
    }
}
