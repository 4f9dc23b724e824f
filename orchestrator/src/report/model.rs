//! What the timeline shows, computed from a transcript and its histories —
//! no drawing here. Times are on the event clock (ms since the stream
//! started); a history's `t_ms` is moved onto it by its run's
//! `workload-started` event.

use super::read::Input;
use crate::events::{Event, Seen};
use crate::procedure::Step;

/// One processor's lane: what it was, from when to when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// Processor name.
    pub processor: String,
    /// Consecutive spans, each a role (or down) and a version.
    pub spans: Vec<Span>,
}

/// A stretch of a lane with one state and one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Start, ms.
    pub from: u64,
    /// End, ms.
    pub to: u64,
    /// Its role, or down/unreachable.
    pub state: Seen,
    /// The version it ran (booted last).
    pub version: String,
}

/// A step of Fig. 6 from its beginning to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    /// The step.
    pub step: Step,
    /// Begin, ms.
    pub from: u64,
    /// Done, failed, or the next step's beginning.
    pub to: u64,
    /// Why it failed, if it did.
    pub failed: Option<String>,
}

/// Something that happened at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// When, ms.
    pub at: u64,
    /// What.
    pub kind: MarkKind,
}

/// The kinds of marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkKind {
    /// A fault injected: its number (F1, F2, …) and what was done.
    Fault { n: usize, fault: String },
    /// The active found lost.
    Lost { processor: String, how: String },
    /// A failover: the lost active's standby promoted.
    Failover { from: String, to: String, took_ms: u64 },
    /// A processor's machine started booting a version (a reload when it ran before).
    Boot { processor: String, version: String, image: String, reload: bool, disk: Option<Disk> },
    /// The new version's evaluation.
    Evaluation { processor: String, acceptable: bool },
}

/// What a reloaded machine shows it booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The version image under its overlay.
    pub backing: String,
    /// The image it ran before.
    pub was: String,
}

/// Acks and rejections of one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Acks.
    pub acks: u32,
    /// Rejected requests.
    pub rejected: u32,
}

/// A time with no ack, between two acks of one workload run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// The ack before, ms.
    pub from: u64,
    /// The ack after, ms.
    pub to: u64,
}

impl Silence {
    /// Its length, ms.
    pub fn len(self) -> u64 {
        self.to - self.from
    }
}

/// A service gap the procedure measured at a switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The switchover's step.
    pub step: Step,
    /// Its length as measured, ms.
    pub gap_ms: u64,
    /// The silence in the history it is, if found.
    pub at: Option<Silence>,
}

/// The workload on the event clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Interval of each bucket, ms.
    pub bucket_ms: u64,
    /// Acks and rejections per interval, from 0.
    pub buckets: Vec<Bucket>,
    /// Acks in all placed histories.
    pub acks: usize,
    /// Rejected requests in all placed histories, with their ids.
    pub rejected: Vec<String>,
    /// Service gaps measured at switchovers.
    pub gaps: Vec<Gap>,
    /// The longest silence between two acks of one run.
    pub longest: Option<Silence>,
    /// Workload runs whose history is not on the chart, and why.
    pub unplaced: Vec<String>,
}

/// The whole timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// The end of the time axis, ms (at least 1).
    pub end_ms: u64,
    /// One lane per processor: the header's first, second, then any other seen.
    pub lanes: Vec<Lane>,
    /// The steps, in order (a step redone on resume appears twice).
    pub bands: Vec<Band>,
    /// Faults, losses, failovers, boots, evaluations, in order.
    pub marks: Vec<Mark>,
    /// The workload.
    pub workload: Workload,
}

/// The nice interval (1, 2 or 5 × 10^k ms) that cuts `span` into at most `n` pieces.
pub fn nice_interval(span: u64, n: u64) -> u64 {
    let want = span.div_ceil(n.max(1)).max(1);
    let mut unit = 1;
    loop {
        for m in [1, 2, 5] {
            if unit * m >= want {
                return unit * m;
            }
        }
        unit *= 10;
    }
}

/// Lanes: every processor's state and version, span by span.
fn lanes(input: &Input, end_ms: u64) -> Vec<Lane> {
    let mut names: Vec<String> = vec![input.header.first.clone(), input.header.second.clone()];
    // (processor, since, state, version) as last seen.
    let mut now: Vec<Option<(u64, Seen, String)>> = vec![None, None];
    let mut lanes: Vec<Lane> = names.iter().map(|p| Lane { processor: p.clone(), spans: Vec::new() }).collect();
    let mut set =
        |names: &mut Vec<String>, lanes: &mut Vec<Lane>, at: u64, p: &str, state: Option<Seen>, v: Option<&str>| {
            let i = match names.iter().position(|n| n == p) {
                Some(i) => i,
                None => {
                    names.push(p.to_string());
                    lanes.push(Lane { processor: p.to_string(), spans: Vec::new() });
                    now.push(None);
                    names.len() - 1
                }
            };
            let (state, version) = match &now[i] {
                Some((_, s, ver)) => (state.unwrap_or(*s), v.unwrap_or(ver).to_string()),
                None => (state.unwrap_or(Seen::OutOfService), v.unwrap_or(&input.header.from).to_string()),
            };
            if let Some((since, s, ver)) = &now[i] {
                if *s == state && *ver == version {
                    return;
                }
                if at > *since {
                    lanes[i].spans.push(Span { from: *since, to: at, state: *s, version: ver.clone() });
                }
            }
            now[i] = Some((at, state, version));
        };
    for e in &input.events {
        let at = e.at_ms;
        match &e.event {
            Event::ProcessorStarted { processor, version, .. } => {
                set(&mut names, &mut lanes, at, processor, Some(Seen::OutOfService), Some(version))
            }
            Event::AgentReady { processor, version, .. } => {
                set(&mut names, &mut lanes, at, processor, None, Some(version))
            }
            Event::Role { processor, role, .. } => {
                set(&mut names, &mut lanes, at, processor, Some((*role).into()), None)
            }
            Event::ProcessorStopped { processor, .. } => {
                set(&mut names, &mut lanes, at, processor, Some(Seen::Down), None)
            }
            Event::ProcessorLost { processor, .. } => {
                set(&mut names, &mut lanes, at, processor, Some(Seen::Unreachable), None)
            }
            Event::StepDone { pair, .. } => {
                for v in pair {
                    set(&mut names, &mut lanes, at, &v.processor, Some(v.role), Some(&v.version));
                }
            }
            Event::Progress { .. }
            | Event::Platform { .. }
            | Event::AppDisk { .. }
            | Event::Failover { .. }
            | Event::WorkloadStarted { .. }
            | Event::Fault { .. }
            | Event::StepBegin { .. }
            | Event::StepFailed { .. }
            | Event::Feature { .. }
            | Event::Evaluation { .. }
            | Event::ServiceGap { .. }
            | Event::Invariant { .. }
            | Event::Outcome { .. } => {}
        }
    }
    for (lane, last) in lanes.iter_mut().zip(&now) {
        if let Some((since, s, v)) = last {
            if end_ms > *since {
                lane.spans.push(Span { from: *since, to: end_ms, state: *s, version: v.clone() });
            }
        }
    }
    lanes
}

/// Steps as bands: from a step's beginning to its end, its failure, or the next step.
fn bands(input: &Input, end_ms: u64) -> Vec<Band> {
    let mut out: Vec<Band> = Vec::new();
    let mut open: Option<Band> = None;
    for e in &input.events {
        match &e.event {
            Event::StepBegin { step, .. } => {
                if let Some(b) = open.take() {
                    out.push(Band { to: e.at_ms, ..b });
                }
                open = Some(Band { step: *step, from: e.at_ms, to: e.at_ms, failed: None });
            }
            Event::StepDone { step, .. } | Event::StepFailed { step, .. } => {
                if let Some(b) = open.take_if(|b| b.step == *step) {
                    let failed = match &e.event {
                        Event::StepFailed { why, .. } => Some(why.clone()),
                        _ => None,
                    };
                    out.push(Band { to: e.at_ms, failed, ..b });
                }
            }
            _ => {}
        }
    }
    if let Some(b) = open {
        out.push(Band { to: end_ms, ..b });
    }
    out
}

/// Markers, in order; a reload's app disk is attached to its boot.
fn marks(input: &Input) -> Vec<Mark> {
    let mut out: Vec<Mark> = Vec::new();
    let mut booted: Vec<&str> = Vec::new();
    let mut faults = 0;
    for e in &input.events {
        let kind = match &e.event {
            Event::Fault { fault } => {
                faults += 1;
                MarkKind::Fault { n: faults, fault: fault.clone() }
            }
            Event::ProcessorLost { processor, how } => {
                MarkKind::Lost { processor: processor.clone(), how: how.clone() }
            }
            Event::Failover { from, to, took_ms } => {
                MarkKind::Failover { from: from.clone(), to: to.clone(), took_ms: *took_ms }
            }
            Event::ProcessorStarted { processor, version, image, .. } => {
                let reload = booted.contains(&processor.as_str());
                booted.push(processor);
                let (processor, version, image) = (processor.clone(), version.clone(), image.clone());
                MarkKind::Boot { processor, version, image, reload, disk: None }
            }
            Event::ProcessorStopped { processor, .. } => {
                booted.push(processor);
                continue;
            }
            Event::AppDisk { processor, backing, was, .. } => {
                let boot = out.iter_mut().rev().find_map(|m| match &mut m.kind {
                    MarkKind::Boot { processor: p, disk, .. } if p == processor => Some(disk),
                    _ => None,
                });
                if let Some(disk) = boot {
                    *disk = Some(Disk { backing: backing.clone(), was: was.clone() });
                }
                continue;
            }
            Event::Evaluation { processor, acceptable, .. } => {
                MarkKind::Evaluation { processor: processor.clone(), acceptable: *acceptable }
            }
            _ => continue,
        };
        out.push(Mark { at: e.at_ms, kind });
    }
    out
}

/// The workload's acks, silences and gaps on the event clock.
fn workload(input: &Input, end_ms: u64, bands: &[Band]) -> Workload {
    use crate::history::Kind;
    let bucket_ms = nice_interval(end_ms, 200);
    let mut buckets = vec![Bucket::default(); (end_ms / bucket_ms + 1) as usize];
    let (mut acks, mut rejected, mut unplaced) = (0, Vec::new(), Vec::new());
    // Silences between acks, within each run.
    let mut silences: Vec<Silence> = Vec::new();
    for run in &input.runs {
        let (start, h) = match (run.started_ms, &run.history) {
            (Some(s), Ok(h)) => (s, h),
            (None, _) => {
                unplaced.push(format!("{}: no workload-started event places it on the time axis", run.id));
                continue;
            }
            (_, Err(e)) => {
                unplaced.push(format!("{}: history not read: {e}", run.id));
                continue;
            }
        };
        let mut ack_times: Vec<u64> = Vec::new();
        for r in &h.records {
            let t = start + r.t_ms;
            let last = buckets.len() - 1;
            let b = &mut buckets[((t / bucket_ms) as usize).min(last)];
            match r.kind {
                Kind::Ack => {
                    b.acks += 1;
                    acks += 1;
                    ack_times.push(t);
                }
                Kind::Rejected => {
                    b.rejected += 1;
                    rejected.push(r.id.clone());
                }
                Kind::Send | Kind::Retry | Kind::NotActive => {}
            }
        }
        ack_times.sort_unstable();
        silences.extend(ack_times.windows(2).map(|w| Silence { from: w[0], to: w[1] }).filter(|s| s.len() > 0));
    }
    let longest = silences.iter().copied().max_by_key(|s| (s.len(), std::cmp::Reverse(s.from)));
    let gaps = input
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::ServiceGap { step, gap_ms } => {
                Some(Gap { step, gap_ms, at: locate(step, gap_ms, bands, &silences) })
            }
            _ => None,
        })
        .collect();
    Workload { bucket_ms, buckets, acks, rejected, gaps, longest, unplaced }
}

/// The silence that a gap measured at `step` is: of those touching one of
/// the step's bands, the one closest in length (the procedure measured it on
/// the switchover's part of the step, which the transcript does not carry).
fn locate(step: Step, gap_ms: u64, bands: &[Band], silences: &[Silence]) -> Option<Silence> {
    silences
        .iter()
        .filter(|s| bands.iter().any(|b| b.step == step && s.to >= b.from && s.from <= b.to))
        .min_by_key(|s| (s.len().abs_diff(gap_ms), s.from))
        .copied()
}

/// What the timeline of `input` shows.
pub fn timeline(input: &Input) -> Timeline {
    let last_event = input.events.last().map_or(0, |e| e.at_ms);
    let last_record = input
        .runs
        .iter()
        .filter_map(|r| Some(r.started_ms? + r.history.as_ref().ok()?.records.iter().map(|x| x.t_ms).max()?))
        .max()
        .unwrap_or(0);
    let end_ms = last_event.max(last_record).max(1);
    let bands = bands(input, end_ms);
    Timeline {
        end_ms,
        lanes: lanes(input, end_ms),
        marks: marks(input),
        workload: workload(input, end_ms, &bands),
        bands,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::{Entry, ProcView};
    use crate::history::{History, Kind, Record};
    use crate::report::read::WorkloadRun;
    use hitless_protocol::Role;

    pub(crate) fn at(at_ms: u64, event: Event) -> Entry {
        Entry { at_ms, event }
    }
    fn started(p: &str, v: &str) -> Event {
        Event::ProcessorStarted {
            processor: p.into(),
            version: v.into(),
            image: format!("/c/app-{v}.qcow2"),
            overlay: None,
            pid: None,
        }
    }
    fn role(p: &str, role: Role, epoch: u64) -> Event {
        Event::Role { processor: p.into(), role, epoch }
    }
    /// A step done with both processors on 1.0.0 in roles `a` and `b`.
    fn done(step: Step, a: Seen, b: Seen) -> Event {
        let view = |p: &str, role| ProcView { processor: p.into(), role, version: "1.0.0".into() };
        Event::StepDone { step, pair: vec![view("p121", a), view("p122", b)], took_ms: 10 }
    }

    /// A short upgrade: boot, 200, 201 (isolate), 202 (reload p122 on 2.0.0), 204 with a fault and a failover.
    pub(crate) fn input() -> Input {
        use Seen::{Active, OutOfService, Standby};
        let events = vec![
            at(0, started("p121", "1.0.0")),
            at(0, started("p122", "1.0.0")),
            at(10, role("p121", Role::Active, 1)),
            at(10, role("p122", Role::Standby, 2)),
            at(20, Event::WorkloadStarted { run: "r1".into() }),
            at(20, Event::StepBegin { step: Step::Initial, name: "initial".into() }),
            at(30, done(Step::Initial, Active, Standby)),
            at(30, Event::StepBegin { step: Step::IsolateStandby, name: "isolate".into() }),
            at(40, role("p122", Role::OutOfService, 3)),
            at(40, done(Step::IsolateStandby, Active, OutOfService)),
            at(40, Event::StepBegin { step: Step::ReloadStandby, name: "reload".into() }),
            at(50, Event::ProcessorStopped { processor: "p122".into(), how: "quit".into() }),
            at(60, started("p122", "2.0.0")),
            at(
                61,
                Event::AppDisk {
                    processor: "p122".into(),
                    overlay: "/r/ov".into(),
                    backing: "/c/app-2.0.0.qcow2".into(),
                    was: "/c/app-1.0.0.qcow2".into(),
                },
            ),
            at(70, Event::StepFailed { step: Step::ReloadStandby, why: "it <broke> & stopped".into() }),
            at(80, Event::StepBegin { step: Step::SwitchOverAndEvaluate, name: "switch".into() }),
            at(85, Event::Fault { fault: "killed p121's machine".into() }),
            at(86, Event::ProcessorLost { processor: "p121".into(), how: "machine gone".into() }),
            at(87, Event::ProcessorStopped { processor: "p121".into(), how: "killed".into() }),
            at(90, Event::Failover { from: "p121".into(), to: "p122".into(), took_ms: 4 }),
            at(90, role("p122", Role::Active, 4)),
            at(150, Event::ServiceGap { step: Step::SwitchOverAndEvaluate, gap_ms: 9 }),
        ];
        let ack = |t, id: &str| Record::new(t, Kind::Ack, id, "p121");
        let history = History {
            records: vec![
                ack(0, "r1-w0"),
                ack(1, "r1-w1"), // 21 to 70: 49 ms, the longest silence
                ack(50, "r1-w2"),
                ack(64, "r1-w3"), // 20+64 = 84
                ack(73, "r1-w4"), // 93: the 9 ms gap at 204
                ack(74, "r1-w5"),
                Record::new(75, Kind::Rejected, "r1-w6", "p122"),
                ack(120, "r1-w7"), // 140
            ],
        };
        Input {
            header: crate::report::read::tests::header(),
            events,
            runs: vec![WorkloadRun { id: "r1".into(), started_ms: Some(20), history: Ok(history) }],
        }
    }

    #[test]
    fn intervals_are_nice_and_cover_the_span() {
        assert_eq!(nice_interval(1900, 200), 10);
        assert_eq!(nice_interval(60_000, 200), 500);
        assert_eq!(nice_interval(0, 200), 1);
        assert_eq!(nice_interval(3, 200), 1);
        assert_eq!(nice_interval(45_000, 10), 5000);
    }

    #[test]
    fn lanes_follow_roles_boots_and_losses_with_versions() {
        let t = timeline(&input());
        assert_eq!(t.end_ms, 150);
        let spans = |i: usize| -> Vec<(u64, u64, Seen, &str)> {
            t.lanes[i].spans.iter().map(|s| (s.from, s.to, s.state, s.version.as_str())).collect()
        };
        assert_eq!(t.lanes[0].processor, "p121");
        assert_eq!(
            spans(0),
            [
                (0, 10, Seen::OutOfService, "1.0.0"),
                (10, 86, Seen::Active, "1.0.0"),
                (86, 87, Seen::Unreachable, "1.0.0"),
                (87, 150, Seen::Down, "1.0.0")
            ]
        );
        assert_eq!(
            spans(1),
            [
                (0, 10, Seen::OutOfService, "1.0.0"),
                (10, 40, Seen::Standby, "1.0.0"),
                (40, 50, Seen::OutOfService, "1.0.0"),
                (50, 60, Seen::Down, "1.0.0"),
                (60, 90, Seen::OutOfService, "2.0.0"),
                (90, 150, Seen::Active, "2.0.0"),
            ]
        );
    }

    #[test]
    fn steps_become_bands_and_a_failed_step_says_why() {
        let t = timeline(&input());
        let b: Vec<(&str, u64, u64, bool)> =
            t.bands.iter().map(|b| (b.step.number(), b.from, b.to, b.failed.is_some())).collect();
        assert_eq!(b, [("200", 20, 30, false), ("201", 30, 40, false), ("202", 40, 70, true), ("204", 80, 150, false)]);
    }

    #[test]
    fn markers_number_faults_and_tie_a_reload_to_its_app_disk() {
        let t = timeline(&input());
        let reloads: Vec<&MarkKind> =
            t.marks.iter().map(|m| &m.kind).filter(|k| matches!(k, MarkKind::Boot { reload: true, .. })).collect();
        assert_eq!(reloads.len(), 1);
        assert!(matches!(reloads[0], MarkKind::Boot { processor, version, disk: Some(d), .. }
            if processor == "p122" && version == "2.0.0" && d.was.ends_with("1.0.0.qcow2")));
        assert!(t.marks.iter().any(|m| m.at == 85 && matches!(&m.kind, MarkKind::Fault { n: 1, .. })));
        assert!(t.marks.iter().any(|m| matches!(&m.kind, MarkKind::Failover { took_ms: 4, .. })));
    }

    #[test]
    fn the_workload_is_placed_by_its_start_and_each_gap_found_in_it() {
        let w = timeline(&input()).workload;
        assert_eq!((w.bucket_ms, w.acks, w.rejected.as_slice()), (1, 7, &["r1-w6".to_string()][..]));
        assert_eq!(w.buckets[20].acks, 1);
        assert_eq!(w.buckets[95].rejected, 1);
        assert_eq!(w.gaps.len(), 1);
        assert_eq!(w.gaps[0].at, Some(Silence { from: 84, to: 93 }));
        assert_eq!(w.longest, Some(Silence { from: 21, to: 70 }));
        assert!(w.unplaced.is_empty());
    }

    #[test]
    fn a_history_no_event_places_is_left_off_the_chart_and_said_so() {
        let mut i = input();
        i.runs[0].started_ms = None;
        let w = timeline(&i).workload;
        assert_eq!(w.acks, 0);
        assert!(w.unplaced[0].contains("no workload-started event"), "{:?}", w.unplaced);
    }
}
