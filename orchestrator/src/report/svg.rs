//! The timeline drawn as one inline SVG: step bands behind everything, one
//! lane per processor (role as colour, version as a stripe and a label),
//! markers for faults, losses, failovers, boots and the evaluation, and the
//! workload's acks per interval underneath with each service gap marked.
//! Colours come from the page's stylesheet (classes `s-*`, `v-*`); every
//! shape has a `<title>` with the whole story, and `data-*` attributes say
//! what each group is (the browser test reads them).

use super::escape::{attr, text};
use super::model::{nice_interval, Band, MarkKind, Silence, Timeline};
use crate::events::Seen;
use crate::transcript::Header;

/// Width of the drawing.
const W: f64 = 1320.0;
/// Left margin: lane names.
const LEFT: f64 = 92.0;
/// Right margin.
const RIGHT: f64 = 14.0;
/// Baselines of the rows of step labels.
const STEP_ROWS: [f64; 3] = [13.0, 26.0, 39.0];
/// Baseline of the fault labels.
const FAULT_ROW: f64 = 56.0;
/// Top of the first lane.
const LANE_TOP: f64 = 80.0;
/// A lane's height (the version stripe included).
const LANE_H: f64 = 34.0;
/// From one lane's top to the next's; the space above a lane holds its annotations.
const LANE_PITCH: f64 = 58.0;
/// The version stripe at the bottom of a lane.
const STRIPE: f64 = 6.0;
/// Rows of gap labels above the workload chart.
const GAP_ROWS: usize = 2;
/// Height of the acks chart.
const CHART_H: f64 = 100.0;
/// Depth of the rejected-requests strip under it.
const REJECT_H: f64 = 22.0;
/// Average width of a character of the 11 px font.
const CHAR_W: f64 = 6.2;

/// Vertical layout for `lanes` lanes.
struct Layout {
    lanes: usize,
    /// Baselines of the gap label rows.
    gap_rows: [f64; GAP_ROWS],
    /// Top of the bars.
    chart_top: f64,
    /// The bars' baseline.
    base: f64,
    /// Bottom of the rejected strip.
    reject_bottom: f64,
    /// Total height.
    height: f64,
}

impl Layout {
    fn new(lanes: usize) -> Layout {
        let last_bottom = LANE_TOP + (lanes.max(1) - 1) as f64 * LANE_PITCH + LANE_H;
        let gap_rows = [last_bottom + 26.0, last_bottom + 39.0];
        let chart_top = last_bottom + 46.0;
        let base = chart_top + CHART_H;
        let reject_bottom = base + REJECT_H;
        Layout { lanes, gap_rows, chart_top, base, reject_bottom, height: reject_bottom + 24.0 }
    }

    fn lane_top(&self, i: usize) -> f64 {
        LANE_TOP + i as f64 * LANE_PITCH
    }
}

/// Labels placed in rows without overlapping: the spans each row has taken.
struct Rows(Vec<Vec<(f64, f64)>>);

/// How a label hangs from its point.
#[derive(Clone, Copy)]
enum Anchor {
    /// Centred on it.
    Middle,
    /// Starting at it.
    Start,
    /// Ending at it.
    End,
}

impl Anchor {
    /// The left edge of a label of `width` at `x`, kept inside the plot.
    fn left(self, x: f64, width: f64) -> f64 {
        let left = match self {
            Anchor::Middle => x - width / 2.0,
            Anchor::Start => x,
            Anchor::End => x - width,
        };
        left.clamp(LEFT, (W - RIGHT - width).max(LEFT))
    }
}

/// A label to try: its text, its point and how it hangs.
struct Try<'a>(&'a str, f64, Anchor);

impl Rows {
    fn new(n: usize) -> Rows {
        Rows(vec![Vec::new(); n])
    }

    /// The first of `tries` that fits in a row (rows in order for each):
    /// claims the space; returns the row, which try, and the label's left edge.
    fn place(&mut self, tries: &[Try<'_>]) -> Option<(usize, usize, f64)> {
        for (i, Try(s, x, anchor)) in tries.iter().enumerate() {
            let width = label_width(s);
            let left = anchor.left(*x, width);
            let free =
                |taken: &Vec<(f64, f64)>| taken.iter().all(|(a, b)| left + width + 3.0 <= *a || left >= *b + 3.0);
            if let Some(row) = self.0.iter().position(free) {
                self.0[row].push((left, left + width));
                return Some((row, i, left));
            }
        }
        None
    }

    /// [`Rows::place`], and the text drawn at the row's baseline (`baselines[row]`).
    fn put(&mut self, o: &mut String, baselines: &[f64], tries: &[Try<'_>]) -> bool {
        match self.place(tries) {
            Some((row, i, left)) => {
                o.push_str(&format!(r#"<text x="{left:.1}" y="{:.1}">{}</text>"#, baselines[row], text(tries[i].0)));
                true
            }
            None => false,
        }
    }
}

fn label_width(s: &str) -> f64 {
    s.chars().count() as f64 * CHAR_W
}

/// The last path component of an image path (simulated images are not paths, and stay whole).
pub(super) fn file_name(p: &str) -> &str {
    if p.starts_with('(') {
        return p;
    }
    p.rsplit('/').next().unwrap_or(p)
}

/// Seconds for a time in ms, with as many decimals as the axis interval needs.
pub(super) fn secs(ms: u64, interval: u64) -> String {
    match interval {
        0..=9 => format!("{:.3} s", ms as f64 / 1000.0),
        10..=99 => format!("{:.2} s", ms as f64 / 1000.0),
        100..=999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} s", ms / 1000),
    }
}

/// The CSS class of a role.
pub(super) fn state_class(s: Seen) -> &'static str {
    match s {
        Seen::Active => "s-active",
        Seen::Standby => "s-standby",
        Seen::OutOfService => "s-oos",
        Seen::Unreachable => "s-unreachable",
        Seen::Down => "s-down",
    }
}

/// The CSS class of a version: the old one, the new one, or another (a fallback's, say).
pub(super) fn version_class(h: &Header, v: &str) -> &'static str {
    if v == h.from {
        "v-from"
    } else if v == h.to {
        "v-to"
    } else {
        "v-other"
    }
}

/// The timeline of a run as an SVG element.
pub fn timeline(t: &Timeline, header: &Header) -> String {
    let l = Layout::new(t.lanes.len());
    let scale = (W - LEFT - RIGHT) / t.end_ms as f64;
    let x = |ms: u64| LEFT + ms as f64 * scale;
    let mut o = format!(
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h:.0}" width="100%" role="img" aria-label="timeline of the run">"#,
        h = l.height
    );
    o.push_str(
        r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>"#,
    );
    bands(&mut o, &t.bands, &l, &x);
    lanes(&mut o, t, header, &l, &x);
    markers(&mut o, t, &l, &x);
    workload(&mut o, t, &l, &x, scale);
    axis(&mut o, t.end_ms, &l, &x);
    o.push_str("</svg>");
    o
}

fn bands(o: &mut String, bands: &[Band], l: &Layout, x: &impl Fn(u64) -> f64) {
    let span = |b: &Band| (x(b.from), x(b.to).max(x(b.from) + 1.0));
    for (i, b) in bands.iter().enumerate() {
        let (x0, x1) = span(b);
        let kind = match (b.failed.is_some(), b.step) {
            (true, _) => "band-failed",
            (false, crate::procedure::Step::Fallback) => "band-fallback",
            (false, _) if i % 2 == 0 => "band-even",
            (false, _) => "band-odd",
        };
        let mut title = format!("step {}: {} ms", b.step, b.to - b.from);
        if let Some(why) = &b.failed {
            title.push_str(&format!("; failed: {why}"));
        }
        o.push_str(&format!(
            r#"<g class="band {kind}" data-step="{step}"><title>{title}</title><rect x="{x0:.1}" y="0" width="{w:.1}" height="{h:.1}"/></g>"#,
            step = b.step,
            title = text(&title),
            w = x1 - x0,
            h = l.reject_bottom
        ));
    }
    // Labels over every band, so that no band covers its neighbour's.
    let mut rows = Rows::new(STEP_ROWS.len());
    o.push_str(r#"<g class="band-labels">"#);
    for b in bands {
        let (x0, x1) = span(b);
        let label = b.step.to_string();
        let class = if b.failed.is_some() { "band-label failed" } else { "band-label" };
        if let Some((row, _, left)) = rows.place(&[Try(&label, (x0 + x1) / 2.0, Anchor::Middle)]) {
            o.push_str(&format!(
                r#"<text class="{class}" x="{left:.1}" y="{y}">{}</text>"#,
                text(&label),
                y = STEP_ROWS[row]
            ));
        }
    }
    o.push_str("</g>");
}

fn lanes(o: &mut String, t: &Timeline, header: &Header, l: &Layout, x: &impl Fn(u64) -> f64) {
    for (i, lane) in t.lanes.iter().enumerate() {
        let top = l.lane_top(i);
        o.push_str(&format!(
            r#"<g class="lane" data-lane="{p}"><text class="lane-name" x="8" y="{y:.1}">{name}</text>"#,
            p = attr(&lane.processor),
            name = text(&lane.processor),
            y = top + LANE_H / 2.0 + 4.0
        ));
        for s in &lane.spans {
            let (x0, w) = (x(s.from), (x(s.to) - x(s.from)).max(0.5));
            let title =
                format!("{}: {} on {}, {}–{}", lane.processor, s.state, s.version, secs(s.from, 1), secs(s.to, 1));
            o.push_str(&format!(
                r#"<g class="span" data-state="{state}" data-version="{v}"><title>{title}</title><rect class="{sc}" x="{x0:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}"/><rect class="{vc}" x="{x0:.1}" y="{sy:.1}" width="{w:.1}" height="{STRIPE}"/>"#,
                state = s.state,
                v = attr(&s.version),
                title = text(&title),
                sc = state_class(s.state),
                vc = version_class(header, &s.version),
                h = LANE_H - STRIPE,
                sy = top + LANE_H - STRIPE
            ));
            let long = format!("{} · {}", s.state, s.version);
            let short = s.state.to_string();
            let fits = [long, short].into_iter().find(|s| label_width(s) + 8.0 <= w);
            if let Some(label) = fits {
                o.push_str(&format!(
                    r#"<text class="span-label {sc}-text" x="{tx:.1}" y="{y:.1}">{}</text>"#,
                    text(&label),
                    sc = state_class(s.state),
                    tx = x0 + 4.0,
                    y = top + (LANE_H - STRIPE) / 2.0 + 4.0
                ));
            }
            o.push_str("</g>");
        }
        o.push_str("</g>");
    }
}

/// Faults, losses and failovers claim label space before boots and evaluations.
fn priority(k: &MarkKind) -> u8 {
    match k {
        MarkKind::Fault { .. } | MarkKind::Lost { .. } | MarkKind::Failover { .. } => 0,
        MarkKind::Evaluation { .. } => 1,
        MarkKind::Boot { .. } => 2,
    }
}

fn markers(o: &mut String, t: &Timeline, l: &Layout, x: &impl Fn(u64) -> f64) {
    let lane_of = |p: &str| t.lanes.iter().position(|lane| lane.processor == p);
    // One row of annotations above each lane (its baseline), and the row of fault labels.
    let mut notes: Vec<Rows> = (0..l.lanes).map(|_| Rows::new(1)).collect();
    let note_y = |i: usize| [l.lane_top(i) - 7.0];
    let mut top = Rows::new(1);
    let mut marks: Vec<&super::model::Mark> = t.marks.iter().collect();
    marks.sort_by_key(|m| priority(&m.kind));
    for m in marks {
        let mx = x(m.at);
        match &m.kind {
            MarkKind::Fault { n, fault } => {
                let (short, long) = (format!("F{n}"), format!("F{n}: {fault}"));
                let title = text(&format!("F{n} at {}: {fault}", secs(m.at, 1)));
                o.push_str(&format!(
                    r#"<g class="fault" data-fault="{n}"><title>{title}</title><line x1="{mx:.1}" y1="{y0:.1}" x2="{mx:.1}" y2="{y1:.1}"/>"#,
                    y0 = FAULT_ROW + 3.0,
                    y1 = l.base
                ));
                let tries = [
                    Try(&long, mx + 3.0, Anchor::Start),
                    Try(&long, mx - 3.0, Anchor::End),
                    Try(&short, mx, Anchor::Middle),
                ];
                top.put(o, &[FAULT_ROW], &tries);
                o.push_str("</g>");
            }
            MarkKind::Lost { processor, how } => {
                let Some(i) = lane_of(processor) else { continue };
                let (cy, r) = (l.lane_top(i) + (LANE_H - STRIPE) / 2.0, 8.0);
                let title = text(&format!("{processor} lost at {}: {how}", secs(m.at, 1)));
                o.push_str(&format!(
                    r#"<g class="lost" data-lane="{p}"><title>{title}</title><path d="M{a:.1},{b:.1} L{c:.1},{d:.1} M{a:.1},{d:.1} L{c:.1},{b:.1}"/></g>"#,
                    p = attr(processor),
                    a = mx - r,
                    b = cy - r,
                    c = mx + r,
                    d = cy + r
                ));
            }
            MarkKind::Failover { from, to, took_ms } => {
                let (Some(f), Some(t2)) = (lane_of(from), lane_of(to)) else { continue };
                let mid = |i: usize| l.lane_top(i) + (LANE_H - STRIPE) / 2.0;
                let label = format!("failover {from} → {to}: {took_ms} ms");
                let title = text(&format!("{label}, at {}", secs(m.at, 1)));
                o.push_str(&format!(
                    r#"<g class="failover" data-from="{fa}" data-to="{ta}"><title>{title}</title><line x1="{mx:.1}" y1="{y0:.1}" x2="{mx:.1}" y2="{y1:.1}" marker-end="url(#arrow)"/>"#,
                    fa = attr(from),
                    ta = attr(to),
                    y0 = mid(f),
                    y1 = mid(t2)
                ));
                let row = f.max(t2);
                let tries = [Try(&label, mx + 6.0, Anchor::Start), Try(&label, mx - 6.0, Anchor::End)];
                if !notes[row].put(o, &note_y(row), &tries) {
                    top.put(o, &[FAULT_ROW], &tries);
                }
                o.push_str("</g>");
            }
            MarkKind::Boot { processor, version, image, reload, disk } => {
                let Some(i) = lane_of(processor) else { continue };
                let lt = l.lane_top(i);
                let what = if *reload { "reload" } else { "boot" };
                let (long, short) = (format!("{what} {version} · {}", file_name(image)), format!("{what} {version}"));
                let mut title = format!("{processor} {what}s {version} at {} from {image}", secs(m.at, 1));
                if let Some(d) = disk {
                    title.push_str(&format!("; its app disk is over {} (was over {})", d.backing, d.was));
                }
                o.push_str(&format!(
                    r#"<g class="boot" data-lane="{p}" data-version="{v}"><title>{title}</title><path d="M{mx:.1},{lt:.1} l7,0 l-7,9 z"/>"#,
                    p = attr(processor),
                    v = attr(version),
                    title = text(&title),
                ));
                let tries = [
                    Try(&long, mx, Anchor::Start),
                    Try(&long, mx, Anchor::End),
                    Try(&short, mx, Anchor::Start),
                    Try(&short, mx, Anchor::End),
                ];
                notes[i].put(o, &note_y(i), &tries);
                o.push_str("</g>");
            }
            MarkKind::Evaluation { processor, acceptable } => {
                let Some(i) = lane_of(processor) else { continue };
                let lt = l.lane_top(i);
                let (class, label) = if *acceptable {
                    ("evaluation ok", format!("✓ {processor} acceptable"))
                } else {
                    ("evaluation bad", format!("✗ {processor} NOT acceptable"))
                };
                o.push_str(&format!(
                    r#"<g class="{class}" data-lane="{p}"><title>evaluation at {t}: {title}</title><path d="M{mx:.1},{a:.1} l5,5 l-5,5 l-5,-5 z"/>"#,
                    p = attr(processor),
                    t = secs(m.at, 1),
                    title = text(&label),
                    a = lt - 5.0
                ));
                // Ends at the marker: the verdict closes the window behind it.
                let tries = [Try(&label, mx - 7.0, Anchor::End), Try(&label, mx + 7.0, Anchor::Start)];
                notes[i].put(o, &note_y(i), &tries);
                o.push_str("</g>");
            }
        }
    }
}

fn workload(o: &mut String, t: &Timeline, l: &Layout, x: &impl Fn(u64) -> f64, scale: f64) {
    let w = &t.workload;
    let label_y = l.chart_top + 12.0;
    o.push_str(&format!(
        r#"<g class="workload"><line class="baseline" x1="{LEFT}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}"/><text class="lane-name" x="8" y="{y:.1}">acks</text><text class="axis-note" x="8" y="{y2:.1}">per {} ms</text><text class="axis-note reject-note" x="8" y="{y3:.1}">rejected</text>"#,
        w.bucket_ms,
        b = l.base,
        r = W - RIGHT,
        y = l.chart_top + CHART_H / 2.0,
        y2 = l.chart_top + CHART_H / 2.0 + 13.0,
        y3 = l.base + 15.0
    ));
    let max_acks = w.buckets.iter().map(|b| b.acks).max().unwrap_or(0);
    let max_rej = w.buckets.iter().map(|b| b.rejected).max().unwrap_or(0);
    let bw = (w.bucket_ms as f64 * scale).max(1.0);
    if max_acks == 0 {
        let why =
            if w.unplaced.is_empty() { "no workload acks in this run" } else { "no history placed on the time axis" };
        o.push_str(&format!(
            r#"<text class="axis-note" x="{cx:.1}" y="{label_y:.1}">{why}</text>"#,
            cx = LEFT + 8.0,
            label_y = l.chart_top + CHART_H / 2.0
        ));
    } else {
        o.push_str(&format!(
            r#"<text class="axis-note" x="{lx:.1}" y="{label_y:.1}" text-anchor="end">{max_acks}</text>"#,
            lx = LEFT - 4.0
        ));
    }
    for (i, b) in w.buckets.iter().enumerate() {
        let bx = x(i as u64 * w.bucket_ms);
        if b.acks > 0 {
            let h = f64::from(b.acks) / f64::from(max_acks.max(1)) * CHART_H;
            o.push_str(&format!(
                r#"<rect class="ack-bar" x="{bx:.1}" y="{y:.1}" width="{bw:.1}" height="{h:.1}"><title>{b0}–{b1}: {n} acks</title></rect>"#,
                y = l.base - h,
                b0 = secs(i as u64 * w.bucket_ms, w.bucket_ms),
                b1 = secs((i as u64 + 1) * w.bucket_ms, w.bucket_ms),
                n = b.acks
            ));
        }
        if b.rejected > 0 {
            let h = (f64::from(b.rejected) / f64::from(max_rej.max(1)) * REJECT_H).max(3.0);
            o.push_str(&format!(
                r#"<rect class="reject-bar" x="{bx:.1}" y="{y:.1}" width="{bw:.1}" height="{h:.1}"><title>{b0}: {n} rejected</title></rect>"#,
                y = l.base,
                b0 = secs(i as u64 * w.bucket_ms, w.bucket_ms),
                n = b.rejected
            ));
        }
    }
    let mut rows = Rows::new(GAP_ROWS);
    let mut mark = |o: &mut String, class: &str, data: String, s: Silence, label: String, title: String| {
        let (x0, x1) = (x(s.from), x(s.to).max(x(s.from) + 2.0));
        o.push_str(&format!(
            r#"<g class="{class}" {data}><title>{title}</title><rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}"/>"#,
            title = text(&title),
            y = l.chart_top,
            w = x1 - x0,
            h = CHART_H
        ));
        if let Some((row, _, left)) = rows.place(&[Try(&label, (x0 + x1) / 2.0, Anchor::Middle)]) {
            let ly = l.gap_rows[row];
            o.push_str(&format!(
                r#"<line class="leader" x1="{cx:.1}" y1="{y0:.1}" x2="{cx:.1}" y2="{y1:.1}"/><text x="{left:.1}" y="{ly:.1}">{}</text>"#,
                text(&label),
                cx = (x0 + x1) / 2.0,
                y0 = ly + 2.0,
                y1 = l.chart_top
            ));
        }
        o.push_str("</g>");
    };
    for g in &w.gaps {
        let Some(s) = g.at else { continue };
        let title = format!(
            "service gap at step {}: {} ms without an ack ({}–{})",
            g.step,
            g.gap_ms,
            secs(s.from, 1),
            secs(s.to, 1)
        );
        mark(
            o,
            "gap",
            format!(r#"data-step="{}" data-gap-ms="{}""#, g.step, g.gap_ms),
            s,
            format!("gap {} ms ({})", g.gap_ms, g.step),
            title,
        );
    }
    if let Some(s) = w.longest {
        let title = format!("the longest time without an ack: {} ms ({}–{})", s.len(), secs(s.from, 1), secs(s.to, 1));
        mark(o, "silence", format!(r#"data-ms="{}""#, s.len()), s, format!("longest silence {} ms", s.len()), title);
    }
    o.push_str("</g>");
}

fn axis(o: &mut String, end_ms: u64, l: &Layout, x: &impl Fn(u64) -> f64) {
    let step = nice_interval(end_ms, 12);
    let y = l.reject_bottom;
    o.push_str(&format!(r#"<g class="axis"><line x1="{LEFT}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}"/>"#, r = W - RIGHT));
    let mut t = 0;
    while t <= end_ms {
        let tx = x(t);
        o.push_str(&format!(
            r#"<line x1="{tx:.1}" y1="{y:.1}" x2="{tx:.1}" y2="{y2:.1}"/><text x="{tx:.1}" y="{y3:.1}" text-anchor="middle">{}</text>"#,
            secs(t, step),
            y2 = y + 4.0,
            y3 = y + 16.0
        ));
        t += step;
    }
    o.push_str("</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_take_the_first_free_place_and_stay_inside() {
        let mut rows = Rows::new(2);
        let at = |x| [Try("abc", x, Anchor::Middle)];
        assert_eq!(rows.place(&at(200.0)).map(|r| r.0), Some(0));
        assert_eq!(rows.place(&at(205.0)).map(|r| r.0), Some(1));
        assert_eq!(rows.place(&at(210.0)), None);
        assert_eq!(rows.place(&at(300.0)).map(|r| r.0), Some(0));
        // Left of a taken place is free too.
        assert_eq!(rows.place(&at(150.0)).map(|r| r.0), Some(0));
        // The second try when the first does not fit.
        let tries = [Try("abcdefghij", 200.0, Anchor::Start), Try("abcdefghij", 180.0, Anchor::End)];
        assert_eq!(rows.place(&tries).map(|r| (r.0, r.1)), Some((1, 1)));
        // A label at the right edge is moved in, not cut.
        assert_eq!(Anchor::Start.left(W - 20.0, 100.0), W - RIGHT - 100.0);
        assert_eq!(Anchor::Middle.left(LEFT, 100.0), LEFT);
    }

    #[test]
    fn times_read_in_seconds_at_the_axis_precision() {
        assert_eq!(secs(1500, 500), "1.5 s");
        assert_eq!(secs(12_000, 2000), "12 s");
        assert_eq!(secs(1836, 1), "1.836 s");
        assert_eq!(file_name("/c/images/app-2.0.0.qcow2"), "app-2.0.0.qcow2");
        assert_eq!(file_name("(simulated: hitless-agent 2.0.0)"), "(simulated: hitless-agent 2.0.0)");
    }

    #[test]
    fn the_drawing_has_a_lane_per_processor_a_band_per_step_and_every_marker() {
        let input = super::super::model::tests::input();
        let t = super::super::model::timeline(&input);
        let svg = timeline(&t, &input.header);
        for want in [
            r#"data-lane="p121""#,
            r#"data-lane="p122""#,
            r#"data-step="202""#,
            r#"class="band band-failed""#,
            r#"class="fault" data-fault="1""#,
            r#"class="lost""#,
            r#"class="failover""#,
            r#"reload 2.0.0 · app-2.0.0.qcow2"#,
            r#"class="gap" data-step="204" data-gap-ms="9""#,
            r#"class="silence" data-ms="49""#,
            r#"class="reject-bar""#,
            "it &lt;broke&gt; &amp; stopped",
        ] {
            assert!(svg.contains(want), "{want} missing from {svg}");
        }
        assert!(!svg.contains("<broke>"));
    }
}
