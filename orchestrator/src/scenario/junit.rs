//! Scenario results as JUnit XML, for CI systems that show test reports:
//! one `<testsuite>` (in a `<testsuites>` root), one `<testcase>` per
//! scenario named by its scenario file (without `.yaml`). A scenario that did
//! not end as expected is a `<failure>` whose text says the expected and the
//! actual end and the invariants violated against those expected; one that
//! could not run at all is an `<error>`; one skipped here is `<skipped/>`.
//! Service gaps and failover times are `<properties>` of each testcase. All
//! text is escaped, and characters XML cannot carry are dropped.

use super::runner::Outcome;
use crate::report::{attr, text};

/// The suite's name.
const SUITE: &str = "hitless-scenarios";

/// Seconds, as JUnit's `time` attributes want them.
fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// What became of a scenario, as JUnit says it.
enum Verdict {
    Passed,
    Failed,
    /// The runner could not run it (`error: ...` as its end).
    Error,
    Skipped,
}

fn verdict(o: &Outcome) -> Verdict {
    if o.skipped {
        Verdict::Skipped
    } else if o.passed {
        Verdict::Passed
    } else if o.end.starts_with("error:") {
        Verdict::Error
    } else {
        Verdict::Failed
    }
}

/// The names and values of a testcase's properties.
fn properties(o: &Outcome) -> Vec<(String, String)> {
    let mut p = vec![("end".to_string(), o.end.clone()), ("expected-end".to_string(), o.expected.clone())];
    for (i, g) in o.gaps_ms.iter().enumerate() {
        p.push((format!("service-gap-{}-ms", i + 1), g.to_string()));
    }
    if let Some(max) = o.gaps_ms.iter().max() {
        p.push(("max-service-gap-ms".into(), max.to_string()));
    }
    for (i, f) in o.failover_ms.iter().enumerate() {
        p.push((format!("failover-{}-ms", i + 1), f.to_string()));
    }
    if !o.violated.is_empty() {
        p.push(("invariants-violated".into(), o.violated.join(",")));
    }
    p.push(("dir".into(), o.dir.display().to_string()));
    p
}

/// Why a scenario did not end as expected: the expected and actual end, the
/// invariants violated against those expected, and the runner's reason.
fn failure_text(o: &Outcome) -> String {
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    let mut t = format!(
        "expected end: {}\nactual end:   {}\ninvariants violated: {}\nexpected violated:   {}",
        o.expected,
        o.end,
        list(&o.violated),
        list(&o.expected_violated)
    );
    if let Some(why) = &o.why {
        t.push_str(&format!("\nwhy: {why}"));
    }
    t.push_str(&format!("\ntranscript and histories: {}", o.dir.display()));
    t
}

/// One-line summary of a failure, for the `message` attribute.
fn failure_message(o: &Outcome) -> String {
    match &o.why {
        Some(why) => why.clone(),
        None => format!("ended {}, expected {}", o.end, o.expected),
    }
}

/// The outcomes of a scenario run as a JUnit XML document.
pub fn junit(outcomes: &[Outcome]) -> String {
    let count = |f: fn(&Verdict) -> bool| outcomes.iter().filter(|o| f(&verdict(o))).count();
    let failures = count(|v| matches!(v, Verdict::Failed));
    let errors = count(|v| matches!(v, Verdict::Error));
    let skipped = count(|v| matches!(v, Verdict::Skipped));
    let time = seconds(outcomes.iter().map(|o| o.duration_ms).sum());
    let totals = format!(
        r#"tests="{}" failures="{failures}" errors="{errors}" skipped="{skipped}" time="{time}""#,
        outcomes.len()
    );
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!("<testsuites name=\"hitless\" {totals}>\n"));
    x.push_str(&format!("  <testsuite name=\"{SUITE}\" {totals}>\n"));
    for o in outcomes {
        x.push_str(&format!(
            "    <testcase name=\"{}\" classname=\"{SUITE}\" time=\"{}\">\n",
            attr(&o.scenario),
            seconds(o.duration_ms)
        ));
        x.push_str("      <properties>\n");
        for (name, value) in properties(o) {
            x.push_str(&format!("        <property name=\"{}\" value=\"{}\"/>\n", attr(&name), attr(&value)));
        }
        x.push_str("      </properties>\n");
        match verdict(o) {
            Verdict::Passed => {}
            Verdict::Skipped => x.push_str(&format!(
                "      <skipped message=\"{}\"/>\n",
                attr(o.why.as_deref().unwrap_or("not run here"))
            )),
            Verdict::Failed => x.push_str(&format!(
                "      <failure message=\"{}\" type=\"not-as-expected\">{}</failure>\n",
                attr(&failure_message(o)),
                text(&failure_text(o))
            )),
            Verdict::Error => x.push_str(&format!(
                "      <error message=\"{}\" type=\"could-not-run\">{}</error>\n",
                attr(&o.end),
                text(&failure_text(o))
            )),
        }
        x.push_str(&format!("      <system-out>{}</system-out>\n", text(&o.description)));
        x.push_str("    </testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn outcome(name: &str) -> Outcome {
        Outcome {
            scenario: name.into(),
            description: "kill the active as 207 begins".into(),
            end: "stopped-at-step 207".into(),
            expected: "stopped-at-step 207".into(),
            violated: vec!["consistent-final-state".into()],
            expected_violated: vec!["consistent-final-state".into()],
            gaps_ms: vec![5, 3],
            failover_ms: vec![4],
            acking_again_ms: None,
            duration_ms: 1762,
            passed: true,
            why: None,
            skipped: false,
            dir: PathBuf::from("/out").join(name),
        }
    }

    pub(crate) fn outcomes() -> Vec<Outcome> {
        let passed = outcome("kill-active-at-207");
        let failed = Outcome {
            end: "rolled-back".into(),
            expected: "upgraded".into(),
            passed: false,
            why: Some("ended rolled-back, expected upgraded; invariants violated [\"x\"] <&> 'q'\u{1b}[0m".into()),
            description: "a \"quoted\" <description> & more\nsecond line".into(),
            ..outcome("cut-link-<&>")
        };
        let error = Outcome {
            end: "error: no such image".into(),
            passed: false,
            why: Some("error: no such image".into()),
            ..outcome("broken")
        };
        let skipped =
            Outcome { end: "skipped".into(), skipped: true, why: Some("needs root".into()), ..outcome("fill-disk") };
        vec![passed, failed, error, skipped]
    }

    #[test]
    fn one_suite_one_case_per_scenario_with_totals() {
        let x = junit(&outcomes());
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"hitless\" tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\" time=\"7.048\">"), "{x}");
        assert_eq!(x.matches("<testsuite ").count(), 1);
        assert_eq!(x.matches("<testcase ").count(), 4);
        assert!(x.contains("<testcase name=\"kill-active-at-207\" classname=\"hitless-scenarios\" time=\"1.762\">"));
        assert!(x.contains("<property name=\"service-gap-2-ms\" value=\"3\"/>"));
        assert!(x.contains("<property name=\"max-service-gap-ms\" value=\"5\"/>"));
        assert!(x.contains("<property name=\"failover-1-ms\" value=\"4\"/>"));
        assert!(x.contains("<skipped message=\"needs root\"/>"));
        assert!(x.contains("<error message=\"error: no such image\" type=\"could-not-run\">"));
    }

    #[test]
    fn a_failure_says_expected_and_actual_end_and_everything_is_escaped() {
        let x = junit(&outcomes());
        assert!(x.contains("<testcase name=\"cut-link-&lt;&amp;&gt;\""), "{x}");
        assert!(x.contains(
            "expected end: upgraded\nactual end:   rolled-back\ninvariants violated: consistent-final-state"
        ));
        assert!(x.contains("message=\"ended rolled-back, expected upgraded; invariants violated [&quot;x&quot;] &lt;&amp;&gt; &#39;q&#39;[0m\""));
        assert!(x.contains("a &quot;quoted&quot; &lt;description&gt; &amp; more\nsecond line"));
        assert!(!x.contains('\u{1b}'), "control characters XML cannot carry are dropped");
    }
}
