//! Chaos mode: scenarios drawn at random from the fault catalogue — kill,
//! pause, cut the link (both ways or one), crash the agent — on the active
//! or the standby, at random steps and delays, one or two faults each. Draw
//! `n` of seed `s` depends only on (`s`, `n`), so it replays exactly and can
//! be run alone (`--only N`). The plan is printed before anything runs.
//!
//! Safety rules: at most one destructive fault (kill, crash) per draw, and
//! never on the active while its standby is not current (steps 202, 203,
//! 205, 206: the simplex window) — that would leave no processor holding the
//! run-state, a loss the shipped scenarios document and expect explicitly.
//! So every draw expects all invariants to hold, whatever its end.

use super::{Expect, Expected, Scenario};
use crate::faults::{Dur, Fault, Planned, Trigger};
use crate::machine::LinkDir;
use crate::procedure::Step;
use std::path::Path;
use std::time::Duration;

/// SplitMix64: a tiny, well-known generator whose sequence is fixed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

const STEPS: [Step; 8] = [
    Step::Initial,
    Step::IsolateStandby,
    Step::ReloadStandby,
    Step::StandbyOnNew,
    Step::SwitchOverAndEvaluate,
    Step::ReloadOther,
    Step::OtherStandby,
    Step::EnableFeatures,
];

/// Steps in which the active runs without a current standby.
fn simplex(step: Step) -> bool {
    matches!(step, Step::ReloadStandby | Step::StandbyOnNew | Step::ReloadOther | Step::OtherStandby)
}

fn secs(rng: &mut Rng, from_ms: u64, to_ms: u64) -> Dur {
    Dur(Duration::from_millis(from_ms + rng.below((to_ms - from_ms) / 100 + 1) * 100))
}

/// Draw number `n` of seed `seed`, for the pair of `config`, upgrading to `to`.
pub fn draw(seed: u64, n: u32, config: &Path, to: &str) -> Scenario {
    let mut rng = Rng(seed ^ (u64::from(n) << 32) ^ 0x6869_746c_6573_7321);
    let count = 1 + rng.below(2) as usize;
    let mut faults = Vec::new();
    let mut destructive = false;
    while faults.len() < count {
        let step = rng.pick(&STEPS);
        let who = rng.pick(&["active", "standby"]);
        let kind = rng.below(5);
        let is_destructive = kind >= 3;
        if is_destructive && (destructive || (who == "active" && simplex(step))) {
            continue;
        }
        destructive |= is_destructive;
        let processor = who.to_string();
        let fault = match kind {
            0 => Fault::Pause { processor, length: secs(&mut rng, 300, 2500) },
            1 => Fault::CutLink { processor, length: secs(&mut rng, 300, 2500), direction: LinkDir::Both },
            2 => Fault::CutLink {
                processor,
                length: secs(&mut rng, 300, 2000),
                direction: rng.pick(&[LinkDir::Out, LinkDir::In]),
            },
            3 => Fault::Kill(processor),
            _ => Fault::CrashAgent(processor),
        };
        let after = (rng.below(2) == 1).then(|| secs(&mut rng, 0, 800));
        faults.push(Planned { at: Trigger { step: Some(step), event: None, after, time: None, before: false }, fault });
    }
    let description = faults.iter().map(|f| format!("{} {}", f.fault, f.at)).collect::<Vec<_>>().join("; ");
    Scenario {
        name: format!("chaos-{seed}-{n}"),
        file: format!("chaos seed {seed} draw {n}"),
        description,
        config: config.to_path_buf(),
        to: to.to_string(),
        workload: true,
        evaluation_ms: None,
        faults,
        expect: Expect { end: Expected::Any, violated: Vec::new() },
    }
}

/// A draw as a scenario file (what `--chaos` prints before it runs, and what a failing draw leaves).
pub fn as_yaml(s: &Scenario) -> String {
    #[derive(serde::Serialize)]
    struct File<'a> {
        description: &'a str,
        to: &'a str,
        faults: &'a [Planned],
        expect: &'a Expect,
    }
    let body =
        serde_saphyr::to_string(&File { description: &s.description, to: &s.to, faults: &s.faults, expect: &s.expect })
            .unwrap_or_default();
    format!("# {} ({})\n{body}", s.name, s.file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-configs/pair.yaml")
    }

    #[test]
    fn a_seed_replays_exactly_and_seeds_differ() {
        let plan = |seed| (0..8).map(|n| as_yaml(&draw(seed, n, &cfg(), "2.0.0"))).collect::<Vec<_>>();
        assert_eq!(plan(42), plan(42), "a seed must replay the same plan");
        assert_ne!(plan(42), plan(43));
        // A draw does not depend on the ones before it: `--only N` reproduces it alone.
        assert_eq!(as_yaml(&draw(42, 5, &cfg(), "2.0.0")), plan(42)[5]);
    }

    #[test]
    fn no_draw_leaves_nobody_holding_the_run_state() {
        for seed in 0..200 {
            for n in 0..4 {
                let s = draw(seed, n, &cfg(), "2.0.0");
                let destructive: Vec<&Planned> =
                    s.faults.iter().filter(|f| matches!(f.fault, Fault::Kill(_) | Fault::CrashAgent(_))).collect();
                assert!(destructive.len() <= 1, "{}", as_yaml(&s));
                for f in destructive {
                    let step = f.at.step.unwrap_or(Step::Initial);
                    assert!(!(f.fault.target() == Some("active") && simplex(step)), "{}", as_yaml(&s));
                }
                // And what is printed parses back as a valid scenario.
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-configs/scenarios/chaos.yaml");
                let back = Scenario::parse(&path, &as_yaml(&s))
                    .unwrap_or_else(|e| panic!("{}\n{}", crate::error::chain(&e), as_yaml(&s)));
                assert_eq!(back.faults, s.faults);
            }
        }
    }
}
