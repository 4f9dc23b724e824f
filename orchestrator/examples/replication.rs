//! Host figures of the replication hot path (host → active agent → link →
//! standby → back), without VMs, for work on its cost (issue #12).
//!
//! Default mode: two real agents in this process, each on its own thread and
//! single-threaded runtime (as in a one-vCPU guest), over loopback TCP, driven
//! by [`hitless::load`] as `make bench` drives the guests. Per run it prints
//! acked/s, p50/p99 ack latency, and per acked unit each agent's CPU time and
//! wake-ups (context switches of its thread: under TCG every one is costly).
//!
//! `--callgrind`: the agents run as separate `hitless-agent` processes under
//! `valgrind --tool=callgrind`, each connection sends a fixed number of work
//! units, and it prints the instructions each agent executed per acked unit —
//! the figure that predicts TCG speed, where every guest instruction is run in
//! software. It runs twice (a tenth of `--units`, then `--units`) and takes the
//! difference, so start-up, pairing and step-up do not count. `--syscalls`
//! does the same under `strace -f -c`: system calls per acked unit, and of
//! them `epoll_wait`s (wake-ups); under TCG each costs thousands of emulated
//! guest-kernel instructions that callgrind does not see.
//!
//! ```text
//! cargo build --release -p hitless-agent -p hitless --example replication
//! target/release/examples/replication                # acked/s, p50/p99, CPU and wake-ups per ack
//! target/release/examples/replication --callgrind    # instructions per acked unit
//! target/release/examples/replication --syscalls     # system calls and wake-ups per acked unit
//! ```
//!
//! The agent that ships in the app disks is built with the `app` profile
//! (thin LTO): measure that one with `cargo build --profile app -p
//! hitless-agent` and `--agent target/app/hitless-agent`. For a profile
//! with symbols, build it with debug info and no stripping, e.g.
//! `CARGO_PROFILE_APP_STRIP=false CARGO_PROFILE_APP_DEBUG=1 cargo build
//! --profile app -p hitless-agent --target-dir target/prof`, then
//! `--callgrind --agent target/prof/app/hitless-agent --keep DIR` and
//! `callgrind_annotate DIR/callgrind.p121.5000.out`.

use anyhow::{bail, Context};
use clap::Parser;
use hitless::channel::{AgentClient, Channel};
use hitless::load::Figures;
use hitless_agent::{transport::Endpoint, Settings};
use hitless_protocol::{ControlReply, ControlRequest, Role, Status};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Replication throughput, latency and cost per acked work unit on the host (no VMs)")]
struct Args {
    /// Connections of the load probe.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Requests in flight on each connection.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Seconds of load per run (in-process mode).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs, each on a fresh pair (in-process mode).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Run the agents as processes under callgrind and print instructions per acked unit.
    #[arg(long)]
    callgrind: bool,
    /// Run the agents as processes under `strace -c` and print system calls and wake-ups per acked unit.
    #[arg(long, conflicts_with = "callgrind")]
    syscalls: bool,
    /// Work units per connection in the long run of --callgrind and --syscalls.
    #[arg(long, default_value_t = 5000)]
    units: u64,
    /// The `hitless-agent` binary for --callgrind and --syscalls (default: target/release/hitless-agent).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Keep the profiles and agent logs of --callgrind/--syscalls here (for `callgrind_annotate`).
    #[arg(long)]
    keep: Option<PathBuf>,
}

const NAMES: [&str; 2] = ["p121", "p122"];

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The addresses of one processor.
struct Addrs {
    control: SocketAddr,
    work: SocketAddr,
    link: SocketAddr,
}

impl Addrs {
    fn new() -> anyhow::Result<Addrs> {
        Ok(Addrs { control: free_addr()?, work: free_addr()?, link: free_addr()? })
    }
    fn channel(&self) -> Channel {
        Channel::Tcp { control: self.control, work: self.work }
    }
}

/// One control request, retried until the agent listens (bounded by `patience`).
async fn control(ch: &Channel, req: ControlRequest, patience: Duration) -> anyhow::Result<ControlReply> {
    let deadline = Instant::now() + patience;
    loop {
        match AgentClient::connect(ch).await {
            Ok(mut c) => return Ok(c.request(&req, patience).await?),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn status(ch: &Channel, patience: Duration) -> anyhow::Result<Status> {
    match control(ch, ControlRequest::Status, patience).await? {
        ControlReply::Status(s) => Ok(*s),
        other => bail!("status: {other:?}"),
    }
}

async fn until(
    what: &str,
    patience: Duration,
    mut cond: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while !cond().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// p121 active, p122 its synced standby.
async fn pair_up(a: &Channel, b: &Channel, patience: Duration) -> anyhow::Result<()> {
    until("the link", patience, async || Ok(status(b, patience).await?.peer.is_some_and(|p| p.connected))).await?;
    for (ch, role, epoch) in [(a, Role::Active, 1), (b, Role::Standby, 2)] {
        let r = control(ch, ControlRequest::SetRole { role, epoch, holding: None }, patience).await?;
        if !matches!(r, ControlReply::Done { .. }) {
            bail!("set-role {role}: {r:?}");
        }
    }
    until("the step-up", patience, async || Ok(status(b, patience).await?.replication.synced)).await
}

/// Stop both agents (a crash request: the agent exits at once, its runtime or process ends cleanly).
async fn stop(chs: [&Channel; 2], patience: Duration) -> anyhow::Result<()> {
    for ch in chs {
        control(ch, ControlRequest::Crash, patience).await?;
    }
    Ok(())
}

fn print_figures(label: &str, f: &Figures) {
    println!(
        "{label}: {:>8.0} acked/s  p50 {:6.2} ms  p99 {:6.2} ms  ({} acked, {} simplex, {} refused)",
        f.per_second(),
        f.latency_ms(0.5),
        f.latency_ms(0.99),
        f.registered,
        f.simplex,
        f.refused
    );
}

/// CPU time and context switches of one thread of this process, by name.
#[derive(Debug, Clone, Copy, Default)]
struct ThreadCost {
    cpu_ns: u64,
    user_ticks: u64,
    sys_ticks: u64,
    switches: u64,
}

impl ThreadCost {
    fn of(name: &str) -> anyhow::Result<ThreadCost> {
        for task in std::fs::read_dir("/proc/self/task")? {
            let dir = task?.path();
            if std::fs::read_to_string(dir.join("comm"))?.trim() != name {
                continue;
            }
            let sched = std::fs::read_to_string(dir.join("schedstat"))?;
            let stat = std::fs::read_to_string(dir.join("stat"))?;
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or_default();
            let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            let status = std::fs::read_to_string(dir.join("status"))?;
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            return Ok(ThreadCost {
                cpu_ns: sched.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0),
                user_ticks: f.get(11).copied().unwrap_or(0),
                sys_ticks: f.get(12).copied().unwrap_or(0),
                switches,
            });
        }
        bail!("no thread named {name}")
    }

    fn since(self, before: ThreadCost) -> ThreadCost {
        ThreadCost {
            cpu_ns: self.cpu_ns - before.cpu_ns,
            user_ticks: self.user_ticks - before.user_ticks,
            sys_ticks: self.sys_ticks - before.sys_ticks,
            switches: self.switches - before.switches,
        }
    }
}

/// Two agents in this process, each on its own thread and single-threaded runtime.
async fn in_process(args: &Args) -> anyhow::Result<()> {
    let patience = Duration::from_secs(10);
    let mut rates = Vec::new();
    let mut all = Figures::default();
    for run in 1..=args.runs {
        let addrs = [Addrs::new()?, Addrs::new()?];
        let mut threads = Vec::new();
        for (i, name) in NAMES.into_iter().enumerate() {
            let settings = Settings {
                name: name.into(),
                control: Endpoint::Tcp(addrs[i].control),
                work: Endpoint::Tcp(addrs[i].work),
                link_listen: addrs[i].link,
                dial: (i == 1).then_some(addrs[0].link),
                build: hitless_agent::build::Build::compiled(&Default::default()),
                announce: false,
                warm_up: false,
                switchover_hold: hitless_agent::agent::SWITCHOVER_HOLD,
                db_capacity: 0,
                exec: false,
            };
            threads.push(std::thread::Builder::new().name(format!("agent-{name}")).spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(hitless_agent::run(settings))
            })?);
        }
        let (a, b) = (addrs[0].channel(), addrs[1].channel());
        pair_up(&a, &b, patience).await?;
        let before = NAMES.map(|n| ThreadCost::of(&format!("agent-{n}")));
        let f = hitless::load::measure(&a, args.conns, args.window, Duration::from_secs_f64(args.seconds)).await?;
        let after = NAMES.map(|n| ThreadCost::of(&format!("agent-{n}")));
        print_figures(&format!("run {run}"), &f);
        let acked = f.registered.max(1) as f64;
        for (i, name) in NAMES.into_iter().enumerate() {
            let (Ok(b), Ok(a)) = (&before[i], &after[i]) else { continue };
            let d = a.since(*b);
            let ticks = (d.user_ticks + d.sys_ticks).max(1) as f64;
            println!(
                "       {name} ({}): {:5.2} us CPU per ack ({:.0}% in the kernel), {:.3} wake-ups per ack",
                if i == 0 { "active" } else { "standby" },
                d.cpu_ns as f64 / 1000.0 / acked,
                100.0 * d.sys_ticks as f64 / ticks,
                d.switches as f64 / acked
            );
        }
        rates.push(f.per_second());
        all.latencies_us.extend(f.latencies_us);
        stop([&a, &b], patience).await?;
        for t in threads {
            let _ = t.join();
        }
    }
    rates.sort_by(|x, y| x.total_cmp(y));
    all.latencies_us.sort_unstable();
    println!(
        "median of {} runs: {:.0} acked/s; all runs: p50 {:.2} ms, p99 {:.2} ms ({} conns x {} in flight, {} s)",
        args.runs,
        rates[rates.len() / 2],
        all.latency_ms(0.5),
        all.latency_ms(0.99),
        args.conns,
        args.window,
        args.seconds
    );
    Ok(())
}

/// What the agent processes run under, and what is read from its output afterwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// Instructions executed (callgrind's `summary:` line).
    Callgrind,
    /// System calls made (`strace -c`'s `total` line), and of them `epoll_wait`s: wake-ups.
    Strace,
}

impl Tool {
    fn wrapper(self, out: &Path) -> std::process::Command {
        match self {
            Tool::Callgrind => {
                let mut c = std::process::Command::new("valgrind");
                c.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}", out.display()));
                c
            }
            Tool::Strace => {
                let mut c = std::process::Command::new("strace");
                c.args(["-f", "-c", "-o"]).arg(out);
                c
            }
        }
    }

    /// The counts this tool gives for one process: instructions, or system calls and wake-ups.
    fn counts(self, file: &Path) -> anyhow::Result<[u64; 2]> {
        let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
        let found = match self {
            Tool::Callgrind => text
                .lines()
                .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .map(|ir| [ir, 0]),
            Tool::Strace => {
                // Columns: % time, seconds, usecs/call, calls, [errors,] syscall.
                let calls = |name: &str| {
                    text.lines()
                        .filter(|l| l.split_whitespace().last() == Some(name))
                        .find_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
                };
                calls("total").map(|t| [t, calls("epoll_wait").unwrap_or(0)])
            }
        };
        found.with_context(|| format!("{}: no totals", file.display()))
    }
}

/// One pair of agent processes under `tool`, `units` work units per connection.
/// Returns the acked units and each agent's counts.
async fn process_run(
    args: &Args,
    tool: Tool,
    agent: &Path,
    dir: &Path,
    units: u64,
) -> anyhow::Result<(u64, [[u64; 2]; 2])> {
    // Everything is ~50x slower under valgrind.
    let patience = Duration::from_secs(60);
    let addrs = [Addrs::new()?, Addrs::new()?];
    let mut children = Vec::new();
    let ext = if tool == Tool::Callgrind { "callgrind" } else { "strace" };
    let outs = NAMES.map(|n| dir.join(format!("{ext}.{n}.{units}.out")));
    for (i, name) in NAMES.into_iter().enumerate() {
        let mut cmd = tool.wrapper(&outs[i]);
        cmd.arg(agent)
            .args(["--name", name])
            .arg(format!("--control=tcp:{}", addrs[i].control))
            .arg(format!("--work=tcp:{}", addrs[i].work))
            .arg(format!("--link-listen={}", addrs[i].link));
        if i == 1 {
            cmd.arg(format!("--dial={}", addrs[0].link));
        }
        cmd.env("HITLESS_AGENT_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.{units}.log")))?);
        children.push(cmd.spawn().context("valgrind or strace (apt-get install valgrind strace)")?);
    }
    let (a, b) = (addrs[0].channel(), addrs[1].channel());
    let result = async {
        pair_up(&a, &b, patience).await?;
        let f = hitless::load::measure_units(&a, args.conns, args.window, units).await?;
        print_figures(&format!("{units} per connection under {ext}"), &f);
        match tool {
            // SIGTERM: valgrind writes the profile of a process ended by a signal, and the
            // agent's teardown (dropping every unit, which grows with the run) does not count.
            Tool::Callgrind => {
                for c in &children {
                    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
                }
            }
            // strace would detach on a signal and leave the agent running: ask the agent to exit.
            Tool::Strace => stop([&a, &b], patience).await?,
        }
        anyhow::Ok(f.registered)
    }
    .await;
    for c in &mut children {
        if result.is_err() {
            let _ = c.kill();
        }
        c.wait()?;
    }
    let acked = result?;
    Ok((acked, [tool.counts(&outs[0])?, tool.counts(&outs[1])?]))
}

/// Counts per acked unit of each agent process, taken between a short and a long run.
async fn processes(args: &Args, tool: Tool) -> anyhow::Result<()> {
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("hitless-agent"))
            .context("where is hitless-agent?")?,
    };
    if !agent.exists() {
        bail!("{} not found: cargo build --release -p hitless-agent", agent.display());
    }
    let tmp = tempfile::tempdir()?;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.as_path()
        }
        None => tmp.path(),
    };
    let (n0, c0) = process_run(args, tool, &agent, dir, (args.units / 10).max(1)).await?;
    let (n1, c1) = process_run(args, tool, &agent, dir, args.units).await?;
    let acked = n1.saturating_sub(n0).max(1) as f64;
    let per = |i: usize, k: usize| c1[i][k].saturating_sub(c0[i][k]) as f64 / acked;
    match tool {
        Tool::Callgrind => println!(
            "instructions per acked unit: active {:.0}, standby {:.0}, both {:.0} (marginal over {} units)",
            per(0, 0),
            per(1, 0),
            per(0, 0) + per(1, 0),
            n1 - n0
        ),
        Tool::Strace => println!(
            "system calls per acked unit: active {:.3}, standby {:.3}; of them epoll_wait (wake-ups): {:.3}, {:.3} \
             (marginal over {} units)",
            per(0, 0),
            per(1, 0),
            per(0, 1),
            per(1, 1),
            n1 - n0
        ),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The probe on one thread: the two agents and the client share a 2-core machine.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        if args.callgrind {
            processes(&args, Tool::Callgrind).await
        } else if args.syscalls {
            processes(&args, Tool::Strace).await
        } else {
            in_process(&args).await
        }
    })
}
