//! `make bench`: boot, upgrade and failover figures of the testbed on this machine.
//! Prints, over RUNS runs: time from `up` to both agents ready, per-guest
//! boot-to-agent, the full happy-path upgrade wall time and the service gap
//! per switchover (median and max), and — after each upgrade, on the
//! upgraded pair — replicated work-unit throughput and ack latency, with the
//! accelerator and target ratios.

use hitless::config::Config;
use hitless::events::{Event, Events};
use hitless::procedure::{self as upgrade, Options};
use hitless::rundir::RunDir;
use hitless::testbed::{self, Testbed};
use std::time::Instant;

/// Runs to take figures over (`BENCH_RUNS` overrides, e.g. 1 for a quick look).
const RUNS: usize = 5;
/// The load probe: connections, requests in flight on each, duration.
const LOAD: (usize, usize, std::time::Duration) = (4, 32, std::time::Duration::from_secs(2));

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg_path =
        std::env::args().skip_while(|a| a != "--config").nth(1).unwrap_or_else(|| "vm-configs/pair.yaml".into());
    let (mut up, mut boot, mut upg, mut gaps) = (vec![], vec![], vec![], vec![]);
    let mut accel = String::new();
    let runs = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(RUNS);
    let mut lost = 0;
    let (mut rate, mut latency, mut simplex) = (vec![], hitless::load::Figures::default(), 0);
    for i in 0..runs {
        let tmp = tempfile::tempdir()?;
        let run = RunDir::new(tmp.path().join("run"));
        let events = Events::new();
        let t = Instant::now();
        let result = async {
            let mut tb =
                Testbed::up(Config::load(std::path::Path::new(&cfg_path))?, run.clone(), events.clone()).await?;
            up.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let r = upgrade::upgrade(&mut tb, "2.0.0", Options { resume: false, workload: true }).await?;
            upg.push(t.elapsed().as_secs_f64());
            gaps.extend(r.gaps.iter().map(|g| g.1 as f64));
            if !r.invariants_ok() {
                lost += 1;
            }
            accel = tb.platform().accel().map_or("none".into(), |a| a.to_string());
            let active = tb.active().await.ok_or_else(|| anyhow::anyhow!("no active processor after the upgrade"))?;
            let f = hitless::load::measure(tb.agents().channel(active), LOAD.0, LOAD.1, LOAD.2).await?;
            rate.push(f.per_second());
            simplex += f.simplex + f.refused;
            latency.latencies_us.extend(f.latencies_us);
            anyhow::Ok(())
        }
        .await;
        for e in events.entries() {
            if let Event::AgentReady { boot_ms, .. } = e.event {
                boot.push(boot_ms as f64 / 1000.0);
            }
        }
        if let Err(e) = testbed::down(&run, &Events::new()) {
            eprintln!("tearing down {}: {e}", run.root.display());
        }
        result?;
        eprintln!("run {}/{runs} done", i + 1);
    }
    // Unplanned failover: the shipped scenario that kills the active as 200 begins.
    let (mut acking_again, mut promoted, mut fo_failed) = (vec![], vec![], 0);
    let scenario =
        hitless::scenario::Scenario::load(std::path::Path::new("vm-configs/scenarios/kill-active-at-200.yaml"))?;
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
    let target_boot = if accel == "kvm" { 0.3 } else { 0.5 };
    let mb = median(&mut boot);
    let mu = median(&mut upg);
    let mg = median(&mut gaps);
    let maxg = gaps.iter().cloned().fold(0.0, f64::max);
    println!("accelerator                 {accel}");
    let mup = median(&mut up);
    println!("hitless up (boot, roles, step-up) median {mup:.2} s   target 1.5 s   ratio {:.1}x", mup / 1.5);
    println!(
        "boot -> agent ready (guest) median {mb:.2} s   target {target_boot:.1} s   ratio {:.1}x",
        mb / target_boot
    );
    println!("full upgrade 1.0.0 -> 2.0.0 median {mu:.2} s   target 5 s    ratio {:.2}x", mu / 5.0);
    println!("service gap per switchover  median {mg:.0} ms  max {maxg:.0} ms  target 10 ms  ratio {:.1}x", mg / 10.0);
    latency.latencies_us.sort_unstable();
    let (p50, p99) = (latency.latency_ms(0.5), latency.latency_ms(0.99));
    let mr = median(&mut rate);
    println!(
        "replicated throughput ({} conns x {} in flight) median {mr:.0} acked/s   target 30000   ratio {:.2}x",
        LOAD.0,
        LOAD.1,
        mr / 30000.0
    );
    println!(
        "ack latency (synchronous)   median {p50:.2} ms  p99 {p99:.2} ms   target p99 5 ms   ratio {:.1}x",
        p99 / 5.0
    );
    println!("acks not registered by the standby during the probe: {simplex}");
    println!("runs with an invariant violated: {lost} of {runs}");
    let (mfo, maxfo) = (median(&mut acking_again), acking_again.iter().cloned().fold(0.0, f64::max));
    println!(
        "unplanned failover (active killed -> standby acking again) median {mfo:.0} ms  max {maxfo:.0} ms  target 1000 ms  ratio {:.2}x",
        maxfo / 1000.0
    );
    println!("  of which loss confirmed -> standby promoted: median {:.0} ms", median(&mut promoted));
    println!("failover runs not as expected (lost work, or not rolled back): {fo_failed} of {runs}");
    Ok(())
}
