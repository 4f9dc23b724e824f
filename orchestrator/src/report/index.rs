//! The index page of a scenario run (`hitless run`): one row per scenario
//! with its result, end, expectation, invariants, gaps and failovers, linking
//! to the scenario's own report.

use super::escape::{attr, text};
use super::{page::CSS, write_beside, ReportError, INDEX_FILE, TRANSCRIPT_FILE};
use crate::scenario::runner::Outcome;
use std::path::{Path, PathBuf};

/// A scenario's result word and its class.
fn result(o: &Outcome) -> (&'static str, &'static str) {
    if o.skipped {
        ("skipped", "skip")
    } else if o.passed {
        ("as expected", "ok")
    } else {
        ("NOT as expected", "bad")
    }
}

/// Where a scenario's report is, as a link from `out_dir`: relative when it lies under it.
fn link(report: &Path, out_dir: &Path) -> String {
    match report.strip_prefix(out_dir) {
        Ok(rel) => rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/"),
        Err(_) => format!("file://{}", report.display()),
    }
}

fn list(v: &[impl ToString], unit: &str) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(|x| format!("{}{unit}", x.to_string())).collect::<Vec<_>>().join(", ")
    }
}

/// The index page: `reports[i]` is scenario `i`'s report (or why there is none).
pub fn render_index(outcomes: &[Outcome], reports: &[Result<PathBuf, String>], out_dir: &Path) -> String {
    let passed = outcomes.iter().filter(|o| o.passed && !o.skipped).count();
    let skipped = outcomes.iter().filter(|o| o.skipped).count();
    let failed = outcomes.len() - passed - skipped;
    let summary_class = if failed == 0 { "end-completed" } else { "end-failed" };
    let mut o = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hitless run: {failed} not as expected of {}</title><style>{CSS}</style></head><body>\n<h1>Scenario run</h1><p class=\"outcome {summary_class}\" id=\"summary\">{passed} as expected, {failed} not as expected, {skipped} skipped — {}</p>\n<table><tr><th>scenario</th><th>result</th><th>end</th><th>expected</th><th>invariants violated</th><th class=\"num\">service gaps</th><th class=\"num\">failovers</th><th class=\"num\">time s</th><th>why</th></tr>",
        outcomes.len(),
        text(&out_dir.display().to_string())
    );
    for (i, s) in outcomes.iter().enumerate() {
        let (word, class) = result(s);
        let name = match reports.get(i) {
            Some(Ok(p)) => format!("<a href=\"{}\">{}</a>", attr(&link(p, out_dir)), text(&s.scenario)),
            Some(Err(why)) => format!("{}<div class=\"note\">no report: {}</div>", text(&s.scenario), text(why)),
            None => text(&s.scenario),
        };
        let violated = if s.violated.is_empty() && s.expected_violated.is_empty() {
            "none".to_string()
        } else {
            format!("{} (expected: {})", text(&list(&s.violated, "")), text(&list(&s.expected_violated, "")))
        };
        o.push_str(&format!(
            "<tr data-scenario=\"{}\"><td>{name}<div class=\"note\">{}</div></td><td class=\"{class}\">{word}</td><td>{}</td><td>{}</td><td>{violated}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td>{}</td></tr>",
            attr(&s.scenario),
            text(&s.description),
            text(&s.end),
            text(&s.expected),
            list(&s.gaps_ms, " ms"),
            list(&s.failover_ms, " ms"),
            s.duration_ms as f64 / 1000.0,
            text(s.why.as_deref().unwrap_or(""))
        ));
    }
    o.push_str("</table></body></html>\n");
    o
}

/// Write every scenario's `report.html` beside its transcript, then
/// `index.html` in `out_dir` linking them with their results; returns the
/// index's path. A scenario without a transcript (it never ran, or failed
/// before its upgrade) is listed with why it has no report.
pub fn index(outcomes: &[Outcome], out_dir: &Path) -> Result<PathBuf, ReportError> {
    let reports: Vec<Result<PathBuf, String>> = outcomes
        .iter()
        .map(|o| {
            let transcript = o.dir.join(TRANSCRIPT_FILE);
            if !transcript.exists() {
                return Err(format!("no transcript in {}", o.dir.display()));
            }
            write_beside(&transcript).map_err(|e| crate::error::chain(&e))
        })
        .collect();
    let path = out_dir.join(INDEX_FILE);
    let html = render_index(outcomes, &reports, out_dir);
    crate::rundir::write_atomic(&path, html.as_bytes())
        .map_err(|source| ReportError::Write { path: path.clone(), source })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, passed: bool, skipped: bool) -> Outcome {
        Outcome {
            scenario: name.into(),
            description: "cut <the> link".into(),
            end: "rolled-back".into(),
            expected: "upgraded".into(),
            violated: vec![],
            expected_violated: vec![],
            gaps_ms: vec![5, 3],
            failover_ms: vec![4],
            acking_again_ms: None,
            duration_ms: 1762,
            passed,
            why: (!passed).then(|| "ended rolled-back, expected upgraded".into()),
            skipped,
            dir: PathBuf::from("/out").join(name),
        }
    }

    #[test]
    fn the_index_links_each_report_with_its_result() {
        let outcomes = [outcome("a", true, false), outcome("b", false, false), outcome("c", true, true)];
        let reports = [
            Ok(PathBuf::from("/out/a/report.html")),
            Ok(PathBuf::from("/elsewhere/b.html")),
            Err("no transcript in /out/c".into()),
        ];
        let html = render_index(&outcomes, &reports, Path::new("/out"));
        for want in [
            "1 as expected, 1 not as expected, 1 skipped",
            "<a href=\"a/report.html\">a</a>",
            "<a href=\"file:///elsewhere/b.html\">b</a>",
            "no report: no transcript in /out/c",
            "<td class=\"bad\">NOT as expected</td>",
            "<td class=\"skip\">skipped</td>",
            "5 ms, 3 ms",
            "cut &lt;the&gt; link",
        ] {
            assert!(html.contains(want), "{want} missing from {html}");
        }
    }

    #[test]
    fn index_writes_the_page_and_says_which_scenarios_have_no_report() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut o = outcome("x", true, false);
        o.dir = d.path().join("x");
        let path = index(&[o], d.path()).unwrap_or_else(|e| panic!("{e}"));
        let html = std::fs::read_to_string(path).unwrap_or_default();
        assert!(html.contains("no report: no transcript in"), "{html}");
    }
}
