#![allow(clippy::unwrap_used)]
use super::*;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-configs/scenarios/test.yaml");
    Scenario::parse(&path, text)
}

const GOOD: &str = r#"
description: kill the active as 207 begins
to: 2.0.0
faults:
  - at: { step: 207 }
    fault: { kill: active }
  - at: { step: 204, event: promoted, after: 300ms }
    fault: { cut-link: { processor: p122, for: 2s, direction: out } }
  - at: { before: true }
    fault: { corrupt-image: 2.0.0-crash }
expect:
  end: stopped-at-step 207
"#;

#[test]
fn a_scenario_names_its_faults_triggers_and_expectation() {
    let s = parse(GOOD).unwrap();
    assert_eq!(s.name, "test");
    assert_eq!(s.faults.len(), 3);
    assert_eq!(s.faults[0].at.step, Some(Step::EnableFeatures));
    assert_eq!(s.faults[1].fault.to_string(), "cut p122's outgoing link for 2s");
    assert_eq!(s.faults[1].at.to_string(), "at promoted in step 204 +300ms");
    assert_eq!(s.expect.end, Expected::StoppedAt(Step::EnableFeatures));
    assert!(s.workload);
}

#[test]
fn unknown_keys_and_bad_values_name_their_line() {
    let e = parse(&GOOD.replace("    fault: { kill: active }", "    fault: { kil: active }")).unwrap_err().to_string();
    assert!(e.contains("test.yaml") && e.contains("kil") && e.contains("line 6"), "{e}");
    let e = parse(
        &GOOD
            .replace("to: 2.0.0", "to: 9.9.9")
            .replace("kill: active", "kill: p999")
            .replace("end: stopped-at-step 207", "end: stopped-at-step 207\n  violated: [nothing-lost]"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 3: to: version 9.9.9 is not in"), "{e}");
    assert!(e.contains("no processor \"p999\""), "{e}");
    assert!(e.contains("unknown invariant \"nothing-lost\""), "{e}");
    let e = parse(&GOOD.replace("end: stopped-at-step 207", "end: finished")).unwrap_err().to_string();
    assert!(e.contains("finished") && e.contains("stopped-at-step N"), "{e}");
    let e = parse(&GOOD.replace("at: { step: 207 }", "at: { step: 207, time: 2s }")).unwrap_err().to_string();
    assert!(e.contains("line 5") && e.contains("exactly one of"), "{e}");
    let e = parse(&GOOD.replace("at: { step: 207 }", "at: { step: 299 }")).unwrap_err().to_string();
    assert!(e.contains("unknown step"), "{e}");
    // An end state is no step to strike in: such a fault would never happen, and the scenario pass unchecked.
    let e = parse(&GOOD.replace("at: { step: 207 }", "at: { step: completed }")).unwrap_err().to_string();
    assert!(e.contains("line 5") && e.contains("where a run ends"), "{e}");
}

#[test]
fn every_shipped_scenario_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-configs/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            Scenario::load(&p).unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)));
            n += 1;
        }
    }
    assert!(n >= 30, "only {n} scenarios shipped");
}
