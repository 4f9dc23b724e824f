//! Scenario files (`vm-configs/scenarios/*.yaml`): a pair config, the target
//! version, the workload, the faults with their triggers, and the expected
//! result — the end (`upgraded`, `rolled-back`, `stopped-at-step N`) and the
//! invariants expected to fail (so a known weakness, like the simplex window,
//! is documented and regression-tested). Unknown keys and bad values are
//! errors with file and line, before any VM starts. [`runner`] runs them,
//! [`chaos`] draws them from a seed, [`junit`] writes their results as JUnit
//! XML. The format is documented in `docs/scenarios.md`.

pub mod chaos;
pub mod junit;
pub mod runner;

use crate::config::Config;
use crate::faults::{Fault, Planned};
use crate::procedure::Step;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};

/// The invariants a scenario may name.
pub const INVARIANTS: [&str; 4] =
    ["no-acked-work-lost-or-applied-twice", "never-two-actives", "consistent-final-state", "workload-served"];

/// How a scenario is expected to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Completed: both processors on the target version.
    Upgraded,
    /// Back on the old version, in service.
    RolledBack,
    /// Stopped; the first step that failed (or lost its active) is this one.
    StoppedAt(Step),
    /// Any end (chaos: only the invariants are judged).
    Any,
}

impl std::str::FromStr for Expected {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "upgraded" => Ok(Expected::Upgraded),
            "rolled-back" => Ok(Expected::RolledBack),
            "any" => Ok(Expected::Any),
            _ => s
                .strip_prefix("stopped-at-step ")
                .and_then(Step::from_number)
                .filter(|st| !st.is_end())
                .map(Expected::StoppedAt)
                .ok_or_else(|| {
                    format!(
                        "{s:?}: expected `upgraded`, `rolled-back`, `stopped-at-step N` (N a step, e.g. 203) or `any`"
                    )
                }),
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Upgraded => f.write_str("upgraded"),
            Expected::RolledBack => f.write_str("rolled-back"),
            Expected::StoppedAt(s) => write!(f, "stopped-at-step {s}"),
            Expected::Any => f.write_str("any"),
        }
    }
}

impl Serialize for Expected {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Expected {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a scenario expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The end.
    pub end: Expected,
    /// Invariants expected to fail; every other must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violated: Vec<String>,
}

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: String,
    #[serde(default)]
    config: Option<Spanned<PathBuf>>,
    to: Spanned<String>,
    #[serde(default = "yes")]
    workload: bool,
    #[serde(default)]
    evaluation_ms: Option<Spanned<u64>>,
    #[serde(default)]
    faults: Vec<Spanned<Planned>>,
    expect: Spanned<Expect>,
}

fn yes() -> bool {
    true
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Its name: the file name without `.yaml` (or the chaos draw's name).
    pub name: String,
    /// Where it came from (chaos: `chaos seed S #N`).
    pub file: String,
    /// What it shows.
    pub description: String,
    /// The pair's config file.
    pub config: PathBuf,
    /// Target version.
    pub to: String,
    /// Run the built-in workload.
    pub workload: bool,
    /// Override of the evaluation window.
    pub evaluation_ms: Option<u64>,
    /// The faults.
    pub faults: Vec<Planned>,
    /// The expected result.
    pub expect: Expect,
}

/// A scenario that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Does not parse: unknown keys, wrong types.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Parses but makes no sense.
    #[error("{}: invalid scenario:\n{}", path.display(), problems.join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, `line N: ...`.
        problems: Vec<String>,
    },
    /// Its pair config is invalid.
    #[error("{}: its pair config", path.display())]
    Config {
        /// The scenario file.
        path: PathBuf,
        /// The config's error.
        #[source]
        source: crate::config::ConfigError,
    },
}

impl Scenario {
    /// Read and validate `path`; its pair config defaults to `pair.yaml` beside its directory.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        Scenario::load_with_pair(path, None)
    }

    /// [`Scenario::load`], with `pair` as the pair config when the file names none
    /// (`hitless run --config`).
    pub fn load_with_pair(path: &Path, pair: Option<&Path>) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: path.into(), source })?;
        Scenario::parse_with_pair(path, &text, pair)
    }

    /// Parse and validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse_with_pair(path, text, None)
    }

    fn parse_with_pair(path: &Path, text: &str, pair: Option<&Path>) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = serde_saphyr::from_str(text)
            .map_err(|e| ScenarioError::Parse { path: path.into(), message: e.to_string() })?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let config = match &raw.config {
            Some(c) if c.value.is_absolute() => c.value.clone(),
            Some(c) => dir.join(&c.value),
            None => pair.map_or_else(|| dir.join("../pair.yaml"), Path::to_path_buf),
        };
        let cfg = Config::load(&config).map_err(|source| ScenarioError::Config { path: path.into(), source })?;
        let name = path.file_stem().map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
        let faults: Vec<(u64, Planned)> = raw.faults.iter().map(|f| (f.referenced.line(), f.value.clone())).collect();
        let scenario = Scenario {
            name,
            file: path.display().to_string(),
            description: raw.description.clone(),
            config,
            to: raw.to.value.clone(),
            workload: raw.workload,
            evaluation_ms: raw.evaluation_ms.as_ref().map(|e| e.value),
            faults: faults.iter().map(|(_, f)| f.clone()).collect(),
            expect: raw.expect.value.clone(),
        };
        let mut problems = Vec::new();
        if let Err(e) = cfg.version(&scenario.to) {
            problems.push(format!("  line {}: to: {e}", raw.to.referenced.line()));
        }
        if let Some(e) = &raw.evaluation_ms {
            if !(100..=600_000).contains(&e.value) {
                problems.push(format!(
                    "  line {}: evaluation_ms {} is out of range 100..600000",
                    e.referenced.line(),
                    e.value
                ));
            }
        }
        for (line, f) in &faults {
            problems.extend(problems_of(&cfg, f).into_iter().map(|p| format!("  line {line}: {p}")));
        }
        for v in &scenario.expect.violated {
            if !INVARIANTS.contains(&v.as_str()) {
                let known = INVARIANTS.join(", ");
                problems.push(format!(
                    "  line {}: expect.violated: unknown invariant {v:?} (known: {known})",
                    raw.expect.referenced.line()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(ScenarioError::Invalid { path: path.into(), problems });
        }
        Ok(scenario)
    }
}

/// What is wrong with fault `f` for a pair of `cfg`.
fn problems_of(cfg: &Config, f: &Planned) -> Vec<String> {
    let mut out: Vec<String> = f.at.problem().into_iter().collect();
    if let Some(who) = f.fault.target() {
        if who != "active" && who != "standby" && cfg.proc_id(who).is_err() {
            let known: Vec<&str> = cfg.processors.values().map(|p| p.name.as_str()).collect();
            out.push(format!("{}: no processor {who:?} (use active, standby, {})", f.fault, known.join(", ")));
        }
    }
    match &f.fault {
        Fault::CorruptImage(v) => {
            if cfg.version(v).is_err() {
                out.push(format!("corrupt-image: version {v:?} is not in {}", cfg.file.display()));
            }
            if !f.at.before {
                out.push("corrupt-image happens before the run: write `at: { before: true }`".into());
            }
        }
        Fault::KillOrchestrator | Fault::Cancel if f.at.step.is_none() => {
            out.push(format!("{}: give the step it happens at (`at: {{ step: N }}`)", f.fault));
        }
        f2 if f.at.before && !matches!(f2, Fault::FillDisk) => {
            out.push(format!("{f2}: only corrupt-image and fill-disk can happen before the run"));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests;
