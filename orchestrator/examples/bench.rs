//! `make bench`: boot, upgrade and failover figures of the testbed on this machine.
//! Over RUNS runs, side by side in one run (interleaved, one pair at a time):
//! the kernel built from source (`kernel: built`, microvm) and Debian's cloud
//! kernel (`kernel: debian`, q35) — both read from the same pair.yaml, the
//! kernel key set here. For each: time from `up` to both agents ready,
//! per-guest boot-to-agent (the reloads, one machine booting while the other
//! serves, as the target is defined; and `up`'s two booting at once), the full
//! happy-path upgrade wall time and the service gap per switchover. Then, on
//! the built kernel's upgraded pair, ack latency one request at a time,
//! replicated work-unit throughput and ack latency at that load (4 connections
//! x 32 in flight, then 1 x 64), the same on the active alone (its standby out
//! of service: what replication over the link costs), and unplanned failover
//! (the active killed). Every figure is
//! printed with its target and its ratio to it. Last, what this machine
//! lends every figure: how long two threads take to wake each other after both
//! slept (each hop of the work path at light load wakes at least one thread),
//! one thread's plain work before and after the runs ([`cpu_speed`]), and how
//! much of its CPU time its own hypervisor stole meanwhile.

use hitless::config::{Config, KernelChoice};
use hitless::events::{Event, Events};
use hitless::procedure::{self as upgrade, Options};
use hitless::rundir::RunDir;
use hitless::testbed::{self, Testbed};
use std::time::Instant;

/// Runs to take figures over (`BENCH_RUNS` overrides, e.g. 1 for a quick look).
const RUNS: usize = 5;
/// The load probe: connections, requests in flight on each, duration.
const LOAD: (usize, usize, std::time::Duration) = (4, 32, std::time::Duration::from_secs(2));
/// The probe with one request in flight, before it: this long.
const SINGLE: std::time::Duration = std::time::Duration::from_secs(1);
/// The same number of requests in flight or fewer on one connection, after
/// it: the client's requests then reach the active in fewer, larger reads,
/// and its acks leave in fewer writes. Short: the pair's database holds
/// ~216,000 request ids (in 256 MiB), and the four probes of a run must fit.
const ONE_CONNECTION: (usize, usize, std::time::Duration) = (1, 64, std::time::Duration::from_secs(1));
/// The probe on the active alone (at the first probe's depth): this many
/// units per connection, timed. A probe for a time instead filled the
/// database there, and its rate was the ids left over divided by its duration.
const ALONE_UNITS: u64 = 10_000;

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Wake-up latency between two threads of this host: one byte there and
/// back over a socket pair, `rounds` times, 2 ms apart (so both sleep in
/// between, as the work path's processes do at light load). Round trips in µs.
fn wake_ups(rounds: usize) -> std::io::Result<Vec<f64>> {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while matches!(b.read(&mut byte), Ok(1)) {
            if b.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut rtts = Vec::with_capacity(rounds);
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let t = Instant::now();
        a.write_all(&byte)?;
        a.read_exact(&mut byte)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(a);
    let _ = echo.join();
    Ok(rtts)
}

/// The `q` quantile of `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

/// `value`'s ratio to `target`, and whether it meets it (at most the target, or at least with `at_least`).
fn vs(value: f64, target: f64, at_least: bool) -> String {
    let ratio = value / target;
    let met = if at_least { ratio >= 1.0 } else { ratio <= 1.0 };
    let sign = if at_least { ">=" } else { "<=" };
    format!("target {sign} {target}   ratio {ratio:.2}x   {}", if met { "met" } else { "MISSED" })
}

/// What one kernel's runs measured.
#[derive(Default)]
struct Side {
    up: Vec<f64>,
    /// Boots of `up`: both machines at once.
    boot_both: Vec<f64>,
    /// Boots of the reloads: one machine booting (while the other serves).
    boot: Vec<f64>,
    upgrade: Vec<f64>,
    gaps: Vec<f64>,
    /// Runs whose upgrade violated an invariant.
    violated: usize,
}

/// The load probe's figures over the runs.
#[derive(Default)]
struct Load {
    rate: Vec<f64>,
    latency: hitless::load::Figures,
    simplex: u64,
    /// The same probe on the active alone (its standby out of service): what
    /// the link and the standby cost, the explanation of the figures above.
    alone_rate: Vec<f64>,
    alone_latency: hitless::load::Figures,
    /// Answers other than an ack in that probe (a full database says so).
    alone_refused: u64,
    /// One request in flight at a time: the work path's own latency, no queueing.
    single: hitless::load::Figures,
    /// [`ONE_CONNECTION`]'s probe.
    one_rate: Vec<f64>,
    one_latency: hitless::load::Figures,
}

/// One run: `up`, the upgrade to 2.0.0 under the workload, and (with `load`) the probe on the upgraded pair.
async fn one_run(cfg: Config, side: &mut Side, load: Option<&mut Load>, accel: &mut String) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = RunDir::new(tmp.path().join("run"));
    let events = Events::new();
    let t = Instant::now();
    // Events up to here are `up`'s; its boots are both machines' at once.
    let mut up_events = usize::MAX;
    let result = async {
        let mut tb = Testbed::up(cfg, run.clone(), events.clone()).await?;
        side.up.push(t.elapsed().as_secs_f64());
        up_events = events.entries().len();
        let t = Instant::now();
        let r = upgrade::upgrade(&mut tb, "2.0.0", Options { resume: false, workload: true }).await?;
        side.upgrade.push(t.elapsed().as_secs_f64());
        side.gaps.extend(r.gaps.iter().map(|g| g.1 as f64));
        if !r.invariants_ok() {
            side.violated += 1;
        }
        *accel = tb.platform().accel().map_or("none".into(), |a| a.to_string());
        if let Some(load) = load {
            let active = tb.active().await.ok_or_else(|| anyhow::anyhow!("no active processor after the upgrade"))?;
            let f = hitless::load::measure(tb.agents().channel(active), 1, 1, SINGLE).await?;
            load.simplex += f.simplex + f.refused + f.duplicate;
            load.single.latencies_us.extend(f.latencies_us);
            let f = hitless::load::measure(tb.agents().channel(active), LOAD.0, LOAD.1, LOAD.2).await?;
            load.rate.push(f.per_second());
            load.simplex += f.simplex + f.refused + f.duplicate;
            load.latency.latencies_us.extend(f.latencies_us);
            let (c, w, d) = ONE_CONNECTION;
            let f = hitless::load::measure(tb.agents().channel(active), c, w, d).await?;
            load.one_rate.push(f.per_second());
            load.simplex += f.simplex + f.refused + f.duplicate;
            load.one_latency.latencies_us.extend(f.latencies_us);
            tb.set_role(active.other(), hitless_protocol::Role::OutOfService).await?;
            let f = hitless::load::measure_units(tb.agents().channel(active), LOAD.0, LOAD.1, ALONE_UNITS).await?;
            load.alone_refused += f.refused + f.duplicate;
            load.alone_rate.push(f.simplex as f64 / f.elapsed.as_secs_f64().max(1e-9));
            load.alone_latency.latencies_us.extend(f.latencies_us);
        }
        anyhow::Ok(())
    }
    .await;
    for (i, e) in events.entries().into_iter().enumerate() {
        if let Event::AgentReady { boot_ms, .. } = e.event {
            let during_up = i < up_events;
            (if during_up { &mut side.boot_both } else { &mut side.boot }).push(boot_ms as f64 / 1000.0);
        }
    }
    if let Err(e) = testbed::down(&run, &Events::new()) {
        eprintln!("tearing down {}: {e}", run.root.display());
    }
    result
}

/// This host's speed at plain work, single-threaded, best of three: SHA-256
/// over 64 MiB (MB/s: arithmetic) and a dependent random walk over 64 MiB
/// (ns per read: caches and memory, which TCG's translated code and soft TLB
/// lean on). Neither steal nor wake-ups show a host that is merely slower.
fn cpu_speed() -> (f64, f64) {
    use sha2::Digest;
    const LEN: usize = 64 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i * 131 % 251) as u8).collect();
    let best = |f: &mut dyn FnMut() -> f64| (0..3).map(|_| f()).fold(f64::INFINITY, f64::min);
    let sha = best(&mut || {
        let t = Instant::now();
        std::hint::black_box(sha2::Sha256::digest(&data));
        t.elapsed().as_secs_f64()
    });
    // A single cycle through every slot (Sattolo's shuffle), so each read depends on the last.
    let n = LEN / 8;
    let mut next: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    const READS: usize = 2_000_000;
    let walk = best(&mut || {
        let (t, mut at) = (Instant::now(), 0);
        for _ in 0..READS {
            at = next[at];
        }
        std::hint::black_box(at);
        t.elapsed().as_secs_f64()
    });
    (LEN as f64 / sha / 1e6, walk * 1e9 / READS as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg_path =
        std::env::args().skip_while(|a| a != "--config").nth(1).unwrap_or_else(|| "vm-configs/pair.yaml".into());
    let cfg = Config::load(std::path::Path::new(&cfg_path))?;
    let with_kernel = |kernel| Config { kernel, ..cfg.clone() };
    let runs = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(RUNS);
    let speed_before = cpu_speed();
    let cpu_before = hitless::platform::CpuTimes::now();
    let (mut built, mut debian, mut load) = (Side::default(), Side::default(), Load::default());
    let mut accel = String::new();
    // Interleaved, so that both kernels see the same machine over time.
    for i in 0..runs {
        one_run(with_kernel(KernelChoice::Built), &mut built, Some(&mut load), &mut accel).await?;
        eprintln!("run {}/{runs}: built kernel done", i + 1);
        one_run(with_kernel(KernelChoice::Debian), &mut debian, None, &mut accel).await?;
        eprintln!("run {}/{runs}: debian kernel done", i + 1);
    }
    // Unplanned failover: the shipped scenario that kills the active as 205 begins
    // (the config's kernel): the workload has acked for seconds, so the time until
    // the standby acks again is measured from a live service (at 200 there was often no ack yet).
    let (mut acking_again, mut promoted, mut fo_failed) = (vec![], vec![], 0);
    let scenario =
        hitless::scenario::Scenario::load(std::path::Path::new("vm-configs/scenarios/kill-active-at-205.yaml"))?;
    for i in 0..runs {
        let out = tempfile::tempdir()?;
        let o =
            hitless::scenario::runner::run(&scenario, hitless::scenario::runner::Where::Qemu, out.path(), None, |_| {})
                .await;
        if !o.passed {
            fo_failed += 1;
            eprintln!("failover run {}: not as expected: {}", i + 1, o.why.unwrap_or_default());
        }
        acking_again.extend(o.acking_again_ms.map(|m| m as f64));
        promoted.extend(o.failover_ms.iter().map(|m| *m as f64));
        eprintln!("failover run {}/{runs} done", i + 1);
    }

    let kvm = accel == "kvm";
    let target_boot = if kvm { 0.3 } else { 0.5 };
    let tsc =
        hitless::platform::host_tsc_khz().filter(|_| !kvm).map_or(String::new(), |k| format!(", host TSC {k} kHz"));
    println!("accelerator {accel}{tsc}; {runs} runs; medians unless said (n = samples)");
    println!("                                 built kernel (microvm)   Debian cloud kernel (q35)");
    let (bb, bd) = (median(&built.boot), median(&debian.boot));
    println!(
        "boot -> agent ready (one booting) {bb:.2} s (n={:<3})          {bd:.2} s (n={})",
        built.boot.len(),
        debian.boot.len()
    );
    println!(
        "  two booting at once (up)       {:.2} s (n={:<3})           {:.2} s (n={})",
        median(&built.boot_both),
        built.boot_both.len(),
        median(&debian.boot_both),
        debian.boot_both.len()
    );
    let (ub, ud) = (median(&built.up), median(&debian.up));
    println!("hitless up (boot, roles, step-up) {ub:.2} s                  {ud:.2} s");
    let (gb, gd) = (median(&built.upgrade), median(&debian.upgrade));
    println!("full upgrade 1.0.0 -> 2.0.0      {gb:.2} s                  {gd:.2} s");
    let (sb, sd) = (median(&built.gaps), median(&debian.gaps));
    println!(
        "service gap per switchover       {sb:.0} ms (max {:.0})          {sd:.0} ms (max {:.0})",
        max(&built.gaps),
        max(&debian.gaps)
    );
    println!();
    println!("against the targets (built kernel):");
    println!("  boot -> agent ready (one)      {bb:.2} s    {}", vs(bb, target_boot, false));
    println!("  Debian's boot / built boot     {:.1}x      {}", bd / bb, vs(bd / bb, 3.0, true));
    println!("  hitless up                     {ub:.2} s    {}", vs(ub, 1.5, false));
    println!("  full upgrade                   {gb:.2} s    {}", vs(gb, 5.0, false));
    println!("  service gap per switchover     {sb:.0} ms    {}", vs(sb, 10.0, false));
    load.latency.latencies_us.sort_unstable();
    let (p50, p99) = (load.latency.latency_ms(0.5), load.latency.latency_ms(0.99));
    let mr = median(&load.rate);
    println!(
        "  replicated throughput ({} conns x {} in flight) {mr:.0} acked/s   {}",
        LOAD.0,
        LOAD.1,
        vs(mr, 30000.0, true)
    );
    println!("  ack latency at that load       median {p50:.2} ms  p99 {p99:.2} ms   {}", vs(p99, 5.0, false));
    load.one_latency.latencies_us.sort_unstable();
    let (o50, o99, or) = (load.one_latency.latency_ms(0.5), load.one_latency.latency_ms(0.99), median(&load.one_rate));
    let (c, w, _) = ONE_CONNECTION;
    println!("  replicated throughput ({c} conn x {w} in flight)  {or:.0} acked/s   {}", vs(or, 30000.0, true));
    println!("  ack latency at that load       median {o50:.2} ms  p99 {o99:.2} ms   {}", vs(o99, 5.0, false));
    let both = |rate: f64, p99: f64| rate >= 30000.0 && p99 <= 5.0;
    println!(
        "  >= 30,000 acked/s with p99 <= 5 ms at one load: {} at {} x {}, {} at {c} x {w}",
        if both(mr, p99) { "met" } else { "MISSED" },
        LOAD.0,
        LOAD.1,
        if both(or, o99) { "met" } else { "MISSED" },
    );
    load.single.latencies_us.sort_unstable();
    println!(
        "    one request in flight at a time: median {:.2} ms  p99 {:.2} ms (n={})",
        load.single.latency_ms(0.5),
        load.single.latency_ms(0.99),
        load.single.latencies_us.len()
    );
    println!("  acks not registered by the standby during the probe: {}", load.simplex);
    load.alone_latency.latencies_us.sort_unstable();
    println!(
        "    the same probe on the active alone (standby out of service): {:.0} acked/s  p99 {:.2} ms ({} units a run, {} not acked)",
        median(&load.alone_rate),
        load.alone_latency.latency_ms(0.99),
        ALONE_UNITS * LOAD.0 as u64,
        load.alone_refused
    );
    println!(
        "  runs with an invariant violated: {} of {runs} (built), {} of {runs} (debian)",
        built.violated, debian.violated
    );
    let (mfo, maxfo) = (median(&acking_again), max(&acking_again));
    if acking_again.is_empty() {
        // The runner measures it from the last ack before the kill; none came before it in any run.
        println!("  unplanned failover (active killed -> standby acking again): no sample (no ack before the kill)");
    } else {
        println!(
            "  unplanned failover (active killed -> standby acking again) median {mfo:.0} ms  max {maxfo:.0} ms (n={})   {}",
            acking_again.len(),
            vs(maxfo, 1000.0, false)
        );
    }
    println!("    of which loss confirmed -> standby promoted: median {:.0} ms", median(&promoted));
    println!("  failover runs not as expected (lost work, or not rolled back): {fo_failed} of {runs}");

    println!();
    println!("this machine (measured after the figures above):");
    let rtts = wake_ups(500)?;
    println!(
        "  two threads waking each other (a byte there and back, 2 ms apart): median {:.0} µs  p99 {:.0} µs  max {:.0} µs",
        quantile(&rtts, 0.5),
        quantile(&rtts, 0.99),
        max(&rtts)
    );
    let speed_after = cpu_speed();
    println!(
        "  one thread's plain work, before / after: SHA-256 {:.0} / {:.0} MB/s, a random read of 64 MiB {:.0} / {:.0} ns",
        speed_before.0, speed_after.0, speed_before.1, speed_after.1
    );
    match (cpu_before, hitless::platform::CpuTimes::now()) {
        (Some(a), Some(b)) => {
            let stolen = b.stolen_since(&a) * 100.0;
            let note = if stolen >= 5.0 {
                ": this machine shares its CPUs, and its neighbours slowed these figures; compare runs only with like steal"
            } else {
                ""
            };
            println!("  CPU time its hypervisor stole during the bench: {stolen:.1}%{note}");
        }
        _ => println!("  CPU time stolen by a hypervisor: unknown (no /proc/stat)"),
    }
    Ok(())
}
