//! The page around the timeline: the header (platform first, then versions,
//! images, vsock), the outcome, the evaluation verdict with its reasons,
//! each invariant's verdict with its offending request ids, the service
//! gaps, failovers, steps, boots and faults as tables, and every event.

use super::escape::{attr, text};
use super::model::{MarkKind, Timeline};
use super::read::Input;
use super::svg::{self, file_name, secs};
use crate::events::{render, Event, Seen};
use crate::platform::{Accel, Platform, Vsock};
use crate::procedure::End;

/// The stylesheet, inlined into every page.
pub(super) const CSS: &str = include_str!("report.css");

/// Platform badge: its class, its big word and the line under it.
fn platform_badge(p: Platform) -> (&'static str, &'static str, &'static str) {
    match p {
        Platform::Qemu { accel: Accel::Kvm, .. } => ("platform-kvm", "QEMU · KVM", "hardware virtualization"),
        Platform::Qemu { accel: Accel::Tcg, .. } => ("platform-tcg", "QEMU · TCG", "emulated: no KVM"),
        Platform::Simulated => ("platform-simulated", "SIMULATED", "in-process agents, no VMs"),
    }
}

fn vsock_mode(p: Platform) -> &'static str {
    match p {
        Platform::Qemu { vsock: Vsock::Kernel, .. } => "kernel vhost-vsock",
        Platform::Qemu { vsock: Vsock::User, .. } => "userspace vhost-device-vsock",
        Platform::Simulated => "none (loopback TCP to in-process agents)",
    }
}

fn end_class(end: Option<End>) -> &'static str {
    match end {
        Some(End::Completed) => "end-completed",
        Some(End::RolledBack) => "end-rolled-back",
        Some(End::Failed) => "end-failed",
        None => "end-none",
    }
}

/// The whole page.
pub(super) fn page(input: &Input, t: &Timeline) -> String {
    let h = &input.header;
    let outcome = input.events.iter().rev().find_map(|e| match &e.event {
        Event::Outcome { end, message } => Some((*end, message.clone())),
        _ => None,
    });
    let end_word = outcome.as_ref().map_or("no outcome recorded".to_string(), |(e, _)| e.to_string());
    let mut o = String::new();
    o.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>hitless {} → {}: {}</title><style>{CSS}</style></head><body>\n",
        text(&h.from),
        text(&h.to),
        text(&end_word)
    ));
    o.push_str(&header(input, outcome.as_ref()));
    o.push_str("<section id=\"timeline\"><h2>Timeline</h2><div class=\"panel\">");
    o.push_str(&svg::timeline(t, h));
    o.push_str(&legend(input, t));
    o.push_str("</div></section>\n");
    o.push_str("<section id=\"verdicts\" class=\"cols\">");
    o.push_str(&evaluation(input));
    o.push_str(&invariants(input));
    o.push_str("</section>\n");
    o.push_str(&service(input, t));
    o.push_str(&steps(input));
    o.push_str(&boots(t));
    o.push_str(&faults(t));
    o.push_str(&events(input));
    o.push_str("</body></html>\n");
    o
}

fn header(input: &Input, outcome: Option<&(End, String)>) -> String {
    let h = &input.header;
    let (class, word, sub) = platform_badge(h.platform);
    let (end_class, end_text) = match outcome {
        Some((end, message)) => (end_class(Some(*end)), format!("{end}: {message}")),
        None => (end_class(None), "no outcome recorded: the run was cut short before it ended".to_string()),
    };
    let images: Vec<String> = h
        .images
        .iter()
        .map(|(v, img)| {
            format!("<code>{}</code>: <code title=\"{}\">{}</code>", text(v), attr(img), text(file_name(img)))
        })
        .collect();
    let facts = [
        ("platform", format!("{} — {}", text(&h.platform.to_string()), text(&h.platform_reason))),
        ("vsock", text(vsock_mode(h.platform))),
        ("upgrade", format!("<code>{}</code> → <code>{}</code>", text(&h.from), text(&h.to))),
        (
            "processors",
            format!(
                "{} active first (upgraded second), {} upgraded and evaluated first",
                text(&h.first),
                text(&h.second)
            ),
        ),
        ("images", images.join("<br>")),
        ("evaluation window", format!("{} ms", h.evaluation_ms)),
        ("config", format!("<code>{}</code>", text(&h.config))),
    ];
    let mut o = format!(
        "<header class=\"top\"><div class=\"platform {class}\" id=\"platform\">{word}<small>{sub}</small></div><h1>Upgrade {} → {}</h1><div class=\"outcome {end_class}\" id=\"outcome\">{}</div></header>\n<dl class=\"facts\">",
        text(&h.from),
        text(&h.to),
        text(&end_text)
    );
    for (k, v) in facts {
        o.push_str(&format!("<dt>{k}</dt><dd>{v}</dd>"));
    }
    o.push_str("</dl>\n");
    o
}

fn legend(input: &Input, t: &Timeline) -> String {
    let h = &input.header;
    let sw = |class: &str, label: &str| format!("<span><span class=\"sw {class}\"></span>{}</span>", text(label));
    let mut items = vec![
        sw("s-active", "active"),
        sw("s-standby", "standby"),
        sw("s-oos", "out of service (or booting)"),
        sw("s-unreachable", "lost / unreachable"),
        sw("s-down", "down"),
        sw("v-from", &format!("stripe: {}", h.from)),
        sw("v-to", &format!("stripe: {}", h.to)),
    ];
    if t.lanes.iter().flat_map(|l| &l.spans).any(|s| s.version != h.from && s.version != h.to) {
        items.push(sw("v-other", "stripe: another version"));
    }
    items.extend([
        "<span>▸ boot/reload (image)</span>".to_string(),
        "<span class=\"bad\">F<i>n</i> fault · ✕ lost · ↓ failover</span>".to_string(),
        "<span>◆ evaluation</span>".to_string(),
        "<span style=\"color:#bf360c\">▮ service gap</span>".to_string(),
        "<span style=\"color:#6a1b9a\">┆ longest ack silence</span>".to_string(),
        format!(
            "<span>bands: steps of Fig. 6; time in seconds from the run's first event, {} ms end to end</span>",
            t.end_ms
        ),
    ]);
    format!("<div class=\"legend\">{}</div>", items.join(""))
}

fn evaluation(input: &Input) -> String {
    let mut o = String::from("<div id=\"evaluation\"><h2>Evaluation (step 204)</h2>");
    let evals: Vec<_> = input
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Evaluation { processor, acceptable, reasons } => Some((e.at_ms, processor, *acceptable, reasons)),
            _ => None,
        })
        .collect();
    if evals.is_empty() {
        o.push_str("<p class=\"note\">No evaluation in this run (it did not reach the end of step 204's window).</p>");
    }
    for (at, p, ok, reasons) in evals {
        let (class, verdict) = if ok { ("ok", "acceptable") } else { ("bad", "NOT acceptable") };
        o.push_str(&format!(
            "<p class=\"verdict\"><span class=\"{class}\">{verdict}</span>: {} on {} at {}</p><ul class=\"reasons\">",
            text(p),
            text(&version_at(input, p, at)),
            secs(at, 1)
        ));
        for r in reasons {
            o.push_str(&format!("<li>{}</li>", text(r)));
        }
        o.push_str("</ul>");
    }
    o.push_str("</div>");
    o
}

/// The version `p` ran at `at`, as last seen.
fn version_at(input: &Input, p: &str, at: u64) -> String {
    let mut v = String::from("?");
    for e in input.events.iter().take_while(|e| e.at_ms <= at) {
        match &e.event {
            Event::ProcessorStarted { processor, version, .. } | Event::AgentReady { processor, version, .. }
                if processor == p =>
            {
                v.clone_from(version)
            }
            Event::StepDone { pair, .. } => {
                if let Some(x) = pair.iter().find(|x| x.processor == p) {
                    v.clone_from(&x.version);
                }
            }
            _ => {}
        }
    }
    v
}

fn invariants(input: &Input) -> String {
    let mut o = String::from("<div id=\"invariants\"><h2>Invariants</h2>");
    let rows: Vec<String> = input
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Invariant { name, ok, detail, offenders } => {
                let (class, word) = if *ok { ("ok", "held") } else { ("bad", "VIOLATED") };
                let off = if offenders.is_empty() {
                    String::new()
                } else {
                    format!(
                        "<div class=\"offenders\">offending request ids ({}): {}</div>",
                        offenders.len(),
                        text(&offenders.join(", "))
                    )
                };
                Some(format!(
                    "<tr data-invariant=\"{}\"><td><code>{}</code></td><td class=\"{class}\">{word}</td><td>{}{off}</td></tr>",
                    attr(name),
                    text(name),
                    text(detail)
                ))
            }
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        o.push_str("<p class=\"note\">No invariant was checked (the run was cut short).</p>");
    } else {
        o.push_str("<table><tr><th>invariant</th><th>verdict</th><th>evidence</th></tr>");
        o.push_str(&rows.concat());
        o.push_str("</table>");
    }
    o.push_str("</div>");
    o
}

fn service(input: &Input, t: &Timeline) -> String {
    let w = &t.workload;
    let mut o = String::from(
        "<section id=\"service\"><h2>Service</h2><table><tr><th>what</th><th class=\"num\">ms</th><th>where</th></tr>",
    );
    for g in &w.gaps {
        let at =
            g.at.map_or("not found in the history".to_string(), |s| format!("{}–{}", secs(s.from, 1), secs(s.to, 1)));
        o.push_str(&format!(
            "<tr class=\"gap-row\"><td>service gap at step {}</td><td class=\"num\">{}</td><td>{at}</td></tr>",
            g.step, g.gap_ms
        ));
    }
    if let Some(s) = w.longest {
        o.push_str(&format!(
            "<tr><td>longest time without an ack</td><td class=\"num\">{}</td><td>{}–{}</td></tr>",
            s.len(),
            secs(s.from, 1),
            secs(s.to, 1)
        ));
    }
    for e in &input.events {
        if let Event::Failover { from, to, took_ms } = &e.event {
            o.push_str(&format!(
                "<tr><td>failover {} → {}: loss confirmed to new active</td><td class=\"num\">{took_ms}</td><td>{}</td></tr>",
                text(from),
                text(to),
                secs(e.at_ms, 1)
            ));
        }
    }
    o.push_str("</table>");
    let rejected = if w.rejected.is_empty() {
        "0 rejected".to_string()
    } else {
        format!(
            "<span class=\"bad\">{} rejected</span>: <span class=\"offenders\">{}</span>",
            w.rejected.len(),
            text(&w.rejected.join(", "))
        )
    };
    o.push_str(&format!(
        "<p class=\"note\">Workload: {} acks in {} run(s) ({}); acks counted per {} ms on the chart.</p>",
        w.acks,
        input.runs.len(),
        rejected,
        w.bucket_ms
    ));
    for u in &w.unplaced {
        o.push_str(&format!("<p class=\"note bad\">Not on the chart: {}</p>", text(u)));
    }
    o.push_str("</section>\n");
    o
}

fn steps(input: &Input) -> String {
    let mut o = String::from(
        "<section id=\"steps\"><h2>Steps</h2><table><tr><th>step</th><th>what</th><th class=\"num\">began</th><th class=\"num\">took ms</th><th>after it</th></tr>",
    );
    let mut begun: Vec<(String, u64, String)> = Vec::new();
    for e in &input.events {
        match &e.event {
            Event::StepBegin { step, name } => begun.push((step.to_string(), e.at_ms, name.clone())),
            Event::StepDone { step, pair, took_ms } => {
                let (at, name) = begun_of(&mut begun, &step.to_string());
                let after: Vec<String> = pair
                    .iter()
                    .map(|v| {
                        let class = if v.role == Seen::Unreachable || v.role == Seen::Down { "bad" } else { "" };
                        format!("<span class=\"{class}\">{} {} {}</span>", text(&v.processor), v.role, text(&v.version))
                    })
                    .collect();
                o.push_str(&format!(
                    "<tr><td><b>{step}</b></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{took_ms}</td><td>{}</td></tr>",
                    text(&name),
                    at.map_or("-".into(), |a| secs(a, 1)),
                    after.join(", ")
                ));
            }
            Event::StepFailed { step, why } => {
                let (at, name) = begun_of(&mut begun, &step.to_string());
                let took = at.map_or("-".into(), |a| (e.at_ms.saturating_sub(a)).to_string());
                o.push_str(&format!(
                    "<tr><td><b class=\"bad\">{step}</b></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{took}</td><td class=\"bad\">failed: {}</td></tr>",
                    text(&name),
                    at.map_or("-".into(), |a| secs(a, 1)),
                    text(why)
                ));
            }
            _ => {}
        }
    }
    for (step, at, name) in begun {
        o.push_str(&format!(
            "<tr><td><b class=\"bad\">{}</b></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">-</td><td class=\"bad\">never finished</td></tr>",
            text(&step),
            text(&name),
            secs(at, 1)
        ));
    }
    o.push_str("</table></section>\n");
    o
}

/// The begin time and name of the latest begun `step`, taken off the list.
fn begun_of(begun: &mut Vec<(String, u64, String)>, step: &str) -> (Option<u64>, String) {
    match begun.iter().rposition(|(s, _, _)| s == step) {
        Some(i) => {
            let (_, at, name) = begun.remove(i);
            (Some(at), name)
        }
        None => (None, String::new()),
    }
}

fn boots(t: &Timeline) -> String {
    let mut o = String::from(
        "<section id=\"boots\"><h2>Boots and reloads</h2><table><tr><th class=\"num\">at</th><th>processor</th><th>what</th><th>version</th><th>image booted</th><th>app disk (as the machine shows it)</th></tr>",
    );
    for m in &t.marks {
        if let MarkKind::Boot { processor, version, image, reload, disk } = &m.kind {
            let disk = disk.as_ref().map_or("-".to_string(), |d| {
                format!("over <code>{}</code> (was over <code>{}</code>)", text(&d.backing), text(&d.was))
            });
            o.push_str(&format!(
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{disk}</td></tr>",
                secs(m.at, 1),
                text(processor),
                if *reload { "reload" } else { "boot" },
                text(version),
                text(image)
            ));
        }
    }
    o.push_str("</table></section>\n");
    o
}

fn faults(t: &Timeline) -> String {
    let rows: Vec<String> = t
        .marks
        .iter()
        .filter_map(|m| match &m.kind {
            MarkKind::Fault { n, fault } => Some(format!(
                "<tr><td class=\"bad\">F{n}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                secs(m.at, 1),
                text(fault)
            )),
            MarkKind::Lost { processor, how } => Some(format!(
                "<tr><td class=\"bad\">✕ lost</td><td class=\"num\">{}</td><td>{}: {}</td></tr>",
                secs(m.at, 1),
                text(processor),
                text(how)
            )),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return "<section id=\"faults\"><h2>Faults</h2><p class=\"note\">No fault was injected and no processor was lost.</p></section>\n".into();
    }
    format!(
        "<section id=\"faults\"><h2>Faults and losses</h2><table><tr><th></th><th class=\"num\">at</th><th>what</th></tr>{}</table></section>\n",
        rows.concat()
    )
}

fn events(input: &Input) -> String {
    let lines: Vec<String> = input.events.iter().map(|e| text(&render(e))).collect();
    format!(
        "<section id=\"events\"><details><summary>All {} events</summary><pre>{}</pre></details></section>\n",
        lines.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Entry;
    use crate::report::model::tests::{at, input};

    #[test]
    fn the_page_names_the_platform_first_and_shows_each_verdict_with_its_offenders() {
        let mut i = input();
        i.events.push(at(
            151,
            Event::Evaluation {
                processor: "p122".into(),
                acceptable: false,
                reasons: vec!["self-test <failed>".into()],
            },
        ));
        i.events.push(at(
            152,
            Event::Invariant {
                name: "no-acked-work-lost-or-applied-twice".into(),
                ok: false,
                detail: "1 lost".into(),
                offenders: vec!["r1-w3".into()],
            },
        ));
        i.events
            .push(Entry { at_ms: 153, event: Event::Outcome { end: End::Failed, message: "step 204: <lost>".into() } });
        let html = crate::report::render(&i);
        let platform = html.find("QEMU · TCG").unwrap_or(usize::MAX);
        assert!(platform < html.find("<svg").unwrap_or(0), "the platform comes before the timeline");
        for want in [
            "userspace vhost-device-vsock",
            "class=\"outcome end-failed\"",
            "failed: step 204: &lt;lost&gt;",
            "<span class=\"bad\">NOT acceptable</span>: p122 on 2.0.0",
            "self-test &lt;failed&gt;",
            "offending request ids (1): r1-w3",
            "service gap at step 204</td><td class=\"num\">9",
            "F1</td>",
            "over <code>/c/app-2.0.0.qcow2</code>",
            "failed: it &lt;broke&gt; &amp; stopped",
        ] {
            assert!(html.contains(want), "{want} missing");
        }
        // Self-contained: nothing is fetched, nothing runs.
        for never in ["<script", "<link", "<img", "src=", "@import", "url(http"] {
            assert!(!html.contains(never), "{never} in the page");
        }
    }

    #[test]
    fn each_platform_has_its_own_badge() {
        assert_eq!(platform_badge(Platform::Simulated).1, "SIMULATED");
        assert_eq!(platform_badge(Platform::Qemu { accel: Accel::Kvm, vsock: Vsock::Kernel }).1, "QEMU · KVM");
        assert_eq!(vsock_mode(Platform::Qemu { accel: Accel::Kvm, vsock: Vsock::Kernel }), "kernel vhost-vsock");
    }
}
