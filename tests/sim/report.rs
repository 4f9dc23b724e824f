//! Reports as a person and a CI system see them: a simulated upgrade's
//! `report.html` loaded by headless Chromium (what the browser built from it:
//! lanes, step bands, gap markers; and not one console error), `hitless
//! report` on a scenario with a fault and a failover, and the JUnit XML of
//! scenario outcomes read by a real JUnit parser (Python's `junitparser`).
//!
//! Chromium and `python3-junitparser` come from Debian's packages through
//! `scripts/setup.sh`. Missing Chromium or junitparser fails these tests
//! (with what to install); only a machine without python3 skips the JUnit one.
#![allow(clippy::unwrap_used)]

use hitless::procedure::{self, End, Options};
use hitless::scenario::junit::junit;
use hitless::scenario::runner::{Outcome, Where};
use hitless_tests::{assert_invariants, hitless_bin, repo, sim};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How long one Chromium run may take (it takes 2–5 s here).
const CHROMIUM_TIMEOUT_S: &str = "90";

/// Chromium on PATH, or why not.
fn chromium() -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("chromium is not installed: run scripts/setup.sh (Debian package `chromium`)"))
}

/// Headless Chromium on `page` with `args`, bounded by `timeout` (which
/// stops Chromium's whole process group when it runs over).
fn chromium_run(page: &Path, args: &[&str]) -> Output {
    let profile = tempfile::Builder::new().prefix("hitless-chromium-").tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["-k", "5", CHROMIUM_TIMEOUT_S])
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// The page's console messages (there is no script: any message is the browser complaining about the markup).
fn console(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_upgrade_report_shows_lanes_bands_and_gaps_in_chromium() {
    let mut s = sim().await;
    let r = procedure::upgrade(&mut s.tb, "2.0.0", Options { resume: false, workload: true }).await.unwrap();
    assert_eq!(r.end, End::Completed, "{}", r.message);
    assert_invariants(&r);
    let page = hitless::report::write_beside(&s.tb.run().transcript()).unwrap();
    assert_eq!(page, s.tb.run().root.join("report.html"));

    let out = chromium_run(&page, &["--dump-dom"]);
    assert_eq!(console(&out), Vec::<String>::new(), "console messages");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("</svg>") && dom.contains("</html>"), "no page: {dom}");
    let count = |s: &str| dom.matches(s).count();
    // One lane per processor, with spans of each role the upgrade passes through.
    for p in ["p121", "p122"] {
        assert_eq!(count(&format!("class=\"lane\" data-lane=\"{p}\"")), 1, "lane {p}");
    }
    for state in ["active", "standby", "out-of-service"] {
        assert!(count(&format!("data-state=\"{state}\"")) > 0, "no {state} span");
    }
    assert!(count("data-version=\"2.0.0\"") > 0 && count("data-version=\"1.0.0\"") > 0, "versions");
    // A band for each step, 200 to 207.
    for step in 200..=207 {
        assert_eq!(count(&format!("data-step=\"{step}\"><title>")), 1, "band {step}");
    }
    // The switchover's service gap, marked on the workload chart with its length.
    let gap = r.gaps.iter().find(|g| g.0.number() == "204").map(|g| g.1).unwrap();
    assert!(dom.contains(&format!("class=\"gap\" data-step=\"204\" data-gap-ms=\"{gap}\"")), "gap marker");
    assert!(dom.contains(&format!("gap {gap} ms (204)")), "gap label");
    assert!(count("class=\"silence\"") == 1, "longest silence");
    assert!(count("class=\"ack-bar\"") > 10, "acks");
    // Reloads with their image, the evaluation, the verdicts, the platform.
    assert_eq!(count("class=\"boot\""), 4, "two boots and two reloads");
    assert!(dom.contains("reload 2.0.0"), "reload label");
    assert!(dom.contains("class=\"evaluation ok\""), "evaluation marker");
    assert_eq!(count("<td class=\"ok\">held</td>"), r.invariants.len(), "invariants");
    assert!(dom.contains(">SIMULATED<"), "platform badge");
}

#[test]
fn hitless_report_draws_faults_losses_and_failovers_of_a_scenario() {
    let out = tempfile::tempdir().unwrap();
    let scenario = repo().join("vm-configs/scenarios/kill-active-at-207.yaml");
    let run = Command::new(hitless_bin())
        .current_dir(repo())
        .args(["run", "--simulated", "--out"])
        .arg(out.path())
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let dir = out.path().join("kill-active-at-207");

    // Beside the transcript by default, or where -o says; the path is printed.
    let report = Command::new(hitless_bin()).arg("report").arg(&dir).output().unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    assert_eq!(String::from_utf8_lossy(&report.stdout).trim(), dir.join("report.html").display().to_string());
    let elsewhere = out.path().join("k.html");
    let report = Command::new(hitless_bin())
        .arg("report")
        .arg(dir.join("transcript.yaml"))
        .arg("-o")
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let html = std::fs::read_to_string(&elsewhere).unwrap();
    assert_eq!(html, std::fs::read_to_string(dir.join("report.html")).unwrap());
    for want in [
        "class=\"fault\" data-fault=\"1\"",
        "F1: killed p122",
        "class=\"lost\" data-lane=\"p122\"",
        "class=\"failover\" data-from=\"p122\" data-to=\"p121\"",
        "data-step=\"207\"",
        "class=\"outcome end-failed\"",
        "<td class=\"bad\">VIOLATED</td>",
    ] {
        assert!(html.contains(want), "{want} missing");
    }
    let out = chromium_run(&elsewhere, &["--dump-dom"]);
    assert_eq!(console(&out), Vec::<String>::new(), "console messages");

    // Not a transcript: exit 1, the file named.
    let bad = Command::new(hitless_bin()).arg("report").arg(repo().join("vm-configs/pair.yaml")).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("pair.yaml is not a hitless transcript"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_runs_index_links_each_report_with_its_result() {
    let out = tempfile::tempdir().unwrap();
    let file = repo().join("vm-configs/scenarios/cut-link-during-evaluation.yaml");
    let scenario = hitless::scenario::Scenario::load(&file).unwrap();
    let o = hitless::scenario::runner::run(&scenario, Where::Simulated, out.path(), None, |_| {}).await;
    assert!(o.passed, "{:?}", o.why);
    let never_ran = Outcome { dir: out.path().join("never-ran"), ..outcome("never-ran") };
    let index = hitless::report::index(&[o, never_ran], out.path()).unwrap();
    assert_eq!(index, out.path().join("index.html"));
    let report = out.path().join("cut-link-during-evaluation/report.html");
    assert!(report.is_file(), "the scenario's report was written");
    let out = chromium_run(&index, &["--dump-dom"]);
    assert_eq!(console(&out), Vec::<String>::new(), "console messages");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<a href=\"cut-link-during-evaluation/report.html\">cut-link-during-evaluation</a>"), "{dom}");
    assert!(dom.contains("<td class=\"ok\">as expected</td><td>rolled-back</td>"), "{dom}");
    assert!(dom.contains("no report: no transcript in"), "{dom}");
}

/// A python3 that imports junitparser; `None` when there is no python3 at all.
fn python_with_junitparser() -> Option<PathBuf> {
    let candidates = [PathBuf::from("python3"), PathBuf::from("/usr/bin/python3")];
    let mut any = false;
    for py in candidates {
        match Command::new(&py).args(["-c", "import junitparser"]).output() {
            Ok(o) if o.status.success() => return Some(py),
            Ok(_) => any = true,
            Err(_) => {}
        }
    }
    assert!(!any, "python3 has no junitparser: run scripts/setup.sh (Debian package python3-junitparser)");
    None
}

/// Reads a JUnit file with junitparser and prints what it understood, one line per fact.
const READ_JUNIT: &str = r#"
import sys
from junitparser import JUnitXml, Properties
xml = JUnitXml.fromfile(sys.argv[1])
for suite in xml:
    print("suite", suite.name, suite.tests, suite.failures, suite.errors, suite.skipped)
    for case in suite:
        print("case", case.name, case.classname, case.time)
        props = case.child(Properties)
        for p in (props if props is not None else []):
            print("  property", p.name, "=", p.value)
        results = case.result if isinstance(case.result, list) else [case.result]
        for r in results:
            if r is not None:
                print("  result", type(r).__name__, repr(r.message), repr(r.text))
"#;

fn outcome(name: &str) -> Outcome {
    Outcome {
        scenario: name.into(),
        description: "a <tricky> \"description\" & more".into(),
        end: "upgraded".into(),
        expected: "upgraded".into(),
        violated: vec![],
        expected_violated: vec![],
        gaps_ms: vec![6, 4],
        failover_ms: vec![],
        acking_again_ms: None,
        duration_ms: 1500,
        passed: true,
        why: None,
        skipped: false,
        dir: PathBuf::from("/runs/1").join(name),
    }
}

#[test]
fn junit_xml_is_read_by_junitparser() {
    let Some(python) = python_with_junitparser() else {
        eprintln!("skipped: no python3 on this machine to run junitparser");
        return;
    };
    let outcomes = vec![
        Outcome { failover_ms: vec![3], ..outcome("kill-active-at-207") },
        Outcome {
            end: "rolled-back".into(),
            passed: false,
            violated: vec!["no-acked-work-lost-or-applied-twice".into()],
            why: Some("ended rolled-back, expected upgraded <&> 'x'\u{7}".into()),
            ..outcome("cut-<link>")
        },
        Outcome { end: "skipped".into(), skipped: true, why: Some("needs root".into()), ..outcome("fill-disk") },
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junit.xml");
    std::fs::write(&file, junit(&outcomes)).unwrap();
    let out = Command::new(python).arg("-c").arg(READ_JUNIT).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "junitparser could not read it: {}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "suite hitless-scenarios 3 1 0 1",
        "case kill-active-at-207 hitless-scenarios 1.5",
        "  property failover-1-ms = 3",
        "  property service-gap-2-ms = 4",
        "case cut-<link> hitless-scenarios 1.5",
        // (Python's repr: double quotes around a text with a single quote.)
        "  result Failure \"ended rolled-back, expected upgraded <&> 'x'\"",
        "case fill-disk hitless-scenarios 1.5",
        "  result Skipped 'needs root'",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(want)), "{want:?} not in:\n{stdout}");
    }
    assert!(stdout.contains("expected end: upgraded\\nactual end:   rolled-back"), "{stdout}");
}
