//! `hitless`: the command line. Parses arguments, wires the event stream to
//! the terminal, runs a library command and maps its outcome to an exit code
//! (the codes live in [`hitless::error::exit`]).

use anyhow::Context;
use clap::{Parser, Subcommand};
use hitless::config::Config;
use hitless::error::{exit, Error, InputError};
use hitless::events::Event;
use hitless::events::{render, Events};
use hitless::pair::ProcId;
use hitless::procedure::{self, End, Options, Report};
use hitless::rundir::RunDir;
use hitless::scenario::runner::{self, Where};
use hitless::scenario::{chaos, Scenario};
use hitless::testbed::{self, Access, Testbed};
use hitless_protocol::Role;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hitless",
    version,
    about = "Rehearse rolling (hitless) software upgrades of an active/standby pair of QEMU processors",
    long_about = "Two QEMU guests play the two processors of an active/standby pair. `hitless up` boots them \
(first active, second standby), `hitless upgrade --to V` upgrades them by the rolling procedure of \
US 7,178,056 Fig. 6 under a live workload and checks the invariants, `hitless status` shows roles, \
versions, images and replication, `hitless down` stops everything. The run directory (sockets, pids, \
logs, state, journal, transcript) lets later commands re-attach.",
    after_help = "Exit codes: 0 done; 1 a step or the input failed; 2 not acceptable, rolled back; \
3 environment (QEMU missing, testbed not up / already up, the pair busy, upgrade interrupted); \
4 an invariant was violated; 5 `status`: the pair is not healthy; 130 interrupted.\n\nExamples:\n  hitless up\n  hitless upgrade --to 2.0.0\n  hitless status\n  hitless down"
)]
struct Cli {
    /// Testbed configuration.
    #[arg(long, global = true, default_value = "vm-configs/pair.yaml")]
    config: PathBuf,
    /// Run directory (default: $XDG_RUNTIME_DIR/hitless/<name> or /tmp/hitless-<uid>/<name>).
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,
    /// More output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the boot image and every configured version's app disk (cached by content).
    Images,
    /// Boot the pair and leave it running in the initial state (step 200).
    Up,
    /// Show each processor (machine state, attached image, agent role, version,
    /// replication) and whether the pair is healthy.
    ///
    /// Exit 0: healthy (one active, one standby it sees current, both running,
    /// the link up); 5: not healthy, with what is wrong (`hitless repair` fixes it).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Upgrade the running pair to another version by the rolling procedure (steps 200-207).
    ///
    /// A workload submits work units during the whole upgrade; at the end the
    /// invariants are checked. Exit 0: completed; 2: not acceptable, rolled back;
    /// 4: an invariant was violated; 1: a step or the input failed; 3: environment.
    Upgrade {
        /// Target version (a key of `versions:` in the config).
        #[arg(long, required_unless_present = "resume")]
        to: Option<String>,
        /// Print the plan (steps, processors, images) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Continue an interrupted upgrade from the run directory's journal.
        #[arg(long, conflicts_with_all = ["dry_run", "to"])]
        resume: bool,
        /// Do not run the built-in workload.
        #[arg(long)]
        no_workload: bool,
    },
    /// Roll an unfinished upgrade back to the old version (refused after step 207).
    Rollback,
    /// Bring the pair back to one active and one current standby after a processor died.
    ///
    /// Resumes a paused machine, fences one whose agent does not answer,
    /// promotes the surviving processor that holds the run-state (with a new
    /// epoch) if nothing is active, reloads the other with the version its
    /// partner runs and makes it standby. Says so when nothing holds the
    /// run-state (both down) and changes nothing then.
    Repair,
    /// Enable new features on both processors, as step 207 does (the point of no return).
    ///
    /// Refused, with each agent's reason, unless both processors run a version
    /// that supports the feature: e.g. while the pair is mixed mid-upgrade.
    Enable {
        /// Features to enable (default: every feature the active processor's version supports).
        features: Vec<String>,
    },
    /// Rehearse the rolling upgrade on the simulated pair: the same procedure,
    /// journal, workload, invariants and transcript, with the processors as
    /// real agents in this process instead of VMs (a second or two, no QEMU).
    ///
    /// Versions come from the config like for `upgrade`; the run directory
    /// (default: the testbed's, suffixed `-simulated`) keeps the transcript.
    Simulate {
        /// Target version (a key of `versions:` in the config).
        #[arg(long)]
        to: String,
    },
    /// Run scenario files, each on a fresh pair, and print a results table.
    ///
    /// A scenario (vm-configs/scenarios/*.yaml, format in docs/scenarios.md)
    /// names the target version, the faults and when they strike, and the
    /// expected end and invariants. Exit 0 only if every scenario ended as
    /// expected; 1 otherwise. With --chaos, scenarios are drawn at random from
    /// the fault catalogue: the plan is printed first, and a seed replays exactly.
    Run {
        /// Scenario files (none with --chaos).
        files: Vec<PathBuf>,
        /// On the simulated pair (in-process agents) instead of QEMU guests.
        #[arg(long)]
        simulated: bool,
        /// Where each scenario's transcript and histories go (default: .cache/runs/<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Draw scenarios at random from the fault catalogue.
        #[arg(long, requires = "seed", conflicts_with = "files")]
        chaos: bool,
        /// The chaos seed: the same seed draws the same scenarios.
        #[arg(long)]
        seed: Option<u64>,
        /// How many chaos scenarios to draw.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Run only chaos draw N of the seed (to reproduce one).
        #[arg(long, requires = "chaos")]
        only: Option<u32>,
        /// The version chaos scenarios upgrade to.
        #[arg(long, default_value = "2.0.0")]
        to: String,
    },
    /// Stop everything the testbed runs and remove its run directory. Idempotent.
    Down,
}

/// `--run-dir`, or the default for the config's testbed name (loading the config only then).
fn run_dir(cli: &Cli, suffix: &str) -> Result<RunDir, Error> {
    if let Some(d) = &cli.run_dir {
        return Ok(RunDir::new(d));
    }
    Ok(RunDir::default_for(&format!("{}{suffix}", Config::load(&cli.config)?.name)))
}

/// A run that ended without an error but not as hoped: its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct RunEnd {
    message: String,
    code: u8,
}

/// Print a report's summary; its end decides the exit code.
fn finish(tb: &Testbed, r: &Report) -> anyhow::Result<()> {
    println!("\nsummary ({}):", r.end);
    for (step, gap) in &r.gaps {
        println!("  service gap at step {step}: {gap} ms");
    }
    for v in &r.invariants {
        println!("  {} {}: {}", if v.ok { "ok  " } else { "FAIL" }, v.name, v.detail);
    }
    println!("  transcript: {}", tb.run().transcript().display());
    let code = match r.end {
        _ if !r.invariants_ok() && r.end != End::Failed => exit::INVARIANT,
        End::Completed => return Ok(()),
        End::RolledBack => exit::ROLLED_BACK,
        End::Failed => exit::FAILED,
    };
    Err(RunEnd { message: r.message.clone(), code }.into())
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(r) = e.downcast_ref::<RunEnd>() {
        return r.code;
    }
    e.chain().find_map(|c| c.downcast_ref::<Error>()).map_or(exit::FAILED, Error::exit_code)
}

async fn up(cli: &Cli, events: Events) -> anyhow::Result<()> {
    let cfg = Config::load(&cli.config).map_err(Error::from)?;
    let run = match &cli.run_dir {
        Some(d) => RunDir::new(d),
        None => RunDir::default_for(&cfg.name),
    };
    let (run2, ev2) = (run.clone(), events.clone());
    let tb = tokio::select! {
        r = Testbed::up(cfg, run, events) => r?,
        _ = tokio::signal::ctrl_c() => {
            // The future is dropped mid-way; its processes are in the pid files.
            let _ = testbed::down(&run2, &ev2);
            return Err(Error::Interrupted.into());
        }
    };
    print_status(&tb, false).await;
    eprintln!("pair is up; run directory {}", tb.run().root.display());
    Ok(())
}

/// Print the status table (or JSON) and the pair's health; returns the problems.
async fn print_status(tb: &Testbed, json: bool) -> Vec<hitless::health::Problem> {
    let st = tb.status().await;
    let problems = hitless::health::assess(&st);
    if json {
        let health: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let out = serde_json::json!({ "processors": st, "healthy": problems.is_empty(), "problems": health });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return problems;
    }
    println!(
        "{:<6} {:<8} {:<15} {:<8} {:<7} {:<18} {:<34} {:>5} {:>5} {:<28} REPLICATION",
        "PROC", "MACHINE", "ROLE", "VERSION", "EPOCH", "FEATURES", "IMAGE", "SEQ", "LAG", "PEER (over link)"
    );
    for p in st.values() {
        let img = p.app_disk.as_ref().map_or("-", |d| d.backing.rsplit('/').next().unwrap_or("-"));
        let machine = p.run_state.as_deref().unwrap_or("down");
        match &p.agent {
            Ok(a) => {
                let feats = if a.hello.enabled.is_empty() {
                    "-".to_string()
                } else {
                    a.hello.enabled.iter().cloned().collect::<Vec<_>>().join(",")
                };
                let peer = match &a.peer {
                    Some(pp) if pp.connected => format!("{} {} {}", pp.hello.name, pp.hello.version, pp.hello.role),
                    Some(pp) => format!("{} (link down)", pp.hello.name),
                    None => "not seen".into(),
                };
                let r = &a.replication;
                let repl = match a.hello.role {
                    Role::Active if r.simplex => "simplex".to_string(),
                    Role::Active => {
                        format!("sending, registered {}", r.registered.map_or("-".into(), |s| s.to_string()))
                    }
                    Role::Standby if r.synced => format!("registered (step-ups {})", r.stepups),
                    Role::Standby => "awaiting step-up".into(),
                    Role::OutOfService => "-".into(),
                };
                println!(
                    "{:<6} {:<8} {:<15} {:<8} {:<7} {:<18} {:<34} {:>5} {:>5} {:<28} {}",
                    p.name,
                    machine,
                    a.hello.role.to_string(),
                    a.hello.version,
                    a.hello.epoch,
                    feats,
                    img,
                    r.seq,
                    r.lag,
                    peer,
                    repl
                );
            }
            Err(e) => {
                println!("{:<6} {:<8} {:<15} {:<8} agent unreachable: {e}", p.name, machine, "?", p.booted_version)
            }
        }
    }
    if problems.is_empty() {
        println!("health: ok");
    } else {
        println!("health: NOT healthy");
        for p in &problems {
            println!("  - {p}");
        }
        println!("  (`hitless repair` restores one active and one current standby)");
    }
    problems
}

async fn run(cli: Cli, events: Events) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Images => {
            let cfg = Config::load(&cli.config).map_err(Error::from)?;
            let t = std::time::Instant::now();
            let progress = |m: &str| eprintln!("[{:7.1}s] {m}", t.elapsed().as_secs_f64());
            let (boot, apps) =
                hitless::images::build_all(&cfg, &progress).map_err(Error::from).context("make images")?;
            println!("boot   {} + {} (kernel: {})", boot.kernel.display(), boot.initrd.display(), cfg.kernel);
            for a in apps {
                println!("{:<16} {}", a.version, a.path.display());
            }
            eprintln!("images ready in {:.2} s", t.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Up => up(&cli, events).await,
        Cmd::Status { json } => {
            let tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Observe)?;
            let problems = print_status(&tb, *json).await;
            if problems.is_empty() {
                return Ok(());
            }
            Err(RunEnd {
                message: format!("the pair is not healthy: {} problem(s)", problems.len()),
                code: exit::UNHEALTHY,
            }
            .into())
        }
        Cmd::Upgrade { to, dry_run, resume, no_workload } => {
            let access = if *dry_run { Access::Observe } else { Access::Change("hitless upgrade") };
            let mut tb = Testbed::attach(run_dir(&cli, "")?, events, access)?;
            if *dry_run {
                let p = procedure::plan(&tb, to.as_deref().unwrap_or_default()).await?;
                println!(
                    "plan: upgrade {} -> {} ({} active first, {} upgraded first); nothing will change",
                    p.from, p.to, p.first, p.second
                );
                for line in procedure::describe_plan(&tb, &p) {
                    println!("  {line}");
                }
                println!("preflight:");
                for check in procedure::preflight(&tb, &p).await? {
                    println!("  ok  {check}");
                }
                return Ok(());
            }
            let opts = Options { resume: *resume, workload: !no_workload };
            let to = to.as_deref().unwrap_or_default();
            let report = with_signals(|cancel| procedure::upgrade_with(&mut tb, to, opts, cancel)).await;
            report_or_cancelled(&tb, report?)
        }
        Cmd::Rollback => {
            let mut tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Change("hitless rollback"))?;
            let report = procedure::rollback(&mut tb).await?;
            finish(&tb, &report)
        }
        Cmd::Repair => {
            let mut tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Change("hitless repair"))?;
            let done = procedure::repair(&mut tb).await?;
            for a in &done.actions {
                println!("{a}");
            }
            if let Some(j) = procedure::read_journal(tb.run()).filter(|j| !j.step.is_end()) {
                println!("an upgrade to {} was interrupted at step {}: continue with `hitless upgrade --resume` or `hitless rollback`", j.plan.to, j.step);
            }
            print_status(&tb, false).await;
            Ok(())
        }
        Cmd::Enable { features } => {
            let tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Change("hitless enable"))?;
            let mut features = features.clone();
            if features.is_empty() {
                let active = tb.active().await.unwrap_or(ProcId::FIRST);
                features = tb.agents().status(active).await.map_err(Error::from)?.hello.supported.into_iter().collect();
            }
            if features.is_empty() {
                eprintln!("the running version has no features to enable");
                return Ok(());
            }
            procedure::enable_features(&tb, &features).await.context("enabling features")?;
            Ok(())
        }
        Cmd::Simulate { to } => {
            let cfg = Config::load(&cli.config).map_err(Error::from)?;
            let run = match &cli.run_dir {
                Some(d) => RunDir::new(d),
                None => RunDir::default_for(&format!("{}-simulated", cfg.name)),
            };
            // Unknown versions are bad input, before anything is made.
            cfg.version(to).map_err(|e: InputError| Error::from(e))?;
            let mut tb = Testbed::simulated(cfg, run, events).await?;
            let opts = Options { resume: false, workload: true };
            let report = with_signals(|cancel| procedure::upgrade_with(&mut tb, to, opts, cancel)).await;
            report_or_cancelled(&tb, report?)
        }
        Cmd::Run { files, simulated, out, chaos, seed, count, only, to } => {
            let place = if *simulated { Where::Simulated } else { Where::Qemu };
            let scenarios: Vec<Scenario> = if *chaos {
                let seed = seed.unwrap_or_default();
                let draws: Vec<u32> = match only {
                    Some(n) => vec![*n],
                    None => (0..*count).collect(),
                };
                cli.config.canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
                let s: Vec<Scenario> = draws.iter().map(|n| chaos::draw(seed, *n, &cli.config, to)).collect();
                println!("chaos plan (seed {seed}):");
                for d in &s {
                    println!("{}", chaos::as_yaml(d));
                }
                s
            } else {
                if files.is_empty() {
                    anyhow::bail!("give scenario files (e.g. vm-configs/scenarios/*.yaml), or --chaos --seed S");
                }
                // Every file is checked before any pair starts.
                files.iter().map(|f| Scenario::load(f)).collect::<Result<_, _>>()?
            };
            let out = out.clone().unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                PathBuf::from(format!(".cache/runs/{t}"))
            });
            let mut results = Vec::new();
            for (i, s) in scenarios.iter().enumerate() {
                eprintln!("\n=== [{}/{}] {}: {}", i + 1, scenarios.len(), s.name, s.description);
                let name = s.name.clone();
                let o = runner::run(s, place, &out, move |e| {
                    if matches!(
                        e.event,
                        Event::StepBegin { .. }
                            | Event::Fault { .. }
                            | Event::Failover { .. }
                            | Event::ProcessorLost { .. }
                            | Event::Evaluation { .. }
                            | Event::Outcome { .. }
                            | Event::Invariant { ok: false, .. }
                    ) {
                        eprintln!("{name}: {}", render(e));
                    }
                })
                .await;
                let verdict = if o.skipped {
                    "skipped"
                } else if o.passed {
                    "as expected"
                } else {
                    "NOT as expected"
                };
                eprintln!(
                    "{}: {} ({verdict}){}",
                    o.scenario,
                    o.end,
                    o.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
                );
                if !o.passed && *chaos {
                    let _ = std::fs::write(o.dir.join("scenario.yaml"), chaos::as_yaml(s));
                    let n = s.name.rsplit('-').next().unwrap_or("0");
                    let sim = if *simulated { " --simulated" } else { "" };
                    eprintln!("reproduce: hitless run --chaos --seed {} --only {n}{sim}", seed.unwrap_or_default());
                }
                results.push(o);
            }
            println!("\n{}", runner::table(&results));
            let _ =
                std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&results).unwrap_or_default());
            println!("transcripts and histories in {}", out.display());
            let failed = results.iter().filter(|r| !r.passed).count();
            if failed > 0 {
                return Err(RunEnd {
                    message: format!("{failed} of {} scenarios did not end as expected", results.len()),
                    code: exit::FAILED,
                }
                .into());
            }
            Ok(())
        }
        Cmd::Down => {
            let run = run_dir(&cli, "")?;
            let n = testbed::down(&run, &events)?;
            eprintln!("down: stopped {n} processes, removed {}", run.root.display());
            Ok(())
        }
    }
}

/// Run an upgrade that Ctrl-C or SIGTERM cancels cleanly (the pair falls back
/// before 207, 207 is finished); a second signal stops at once.
async fn with_signals<F, Fut>(start: F) -> Result<Report, Error>
where
    F: FnOnce(Option<procedure::Cancel>) -> Fut,
    Fut: std::future::Future<Output = Result<Report, Error>>,
{
    let (canceller, cancel) = procedure::Cancel::new();
    let signals = tokio::spawn(async move {
        if wait_signal().await.is_ok() {
            eprintln!("hitless: cancelling: the step in progress is abandoned and the pair falls back (again to stop at once)");
            canceller.cancel();
        }
        if wait_signal().await.is_ok() {
            eprintln!(
                "hitless: stopped at once; `hitless upgrade --resume` or `hitless rollback` finish from the journal"
            );
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
    });
    let report = start(Some(cancel)).await;
    signals.abort();
    report
}

/// A report's exit: a cancelled run exits 130 (its pair left stable), else by its end.
fn report_or_cancelled(tb: &Testbed, report: Report) -> anyhow::Result<()> {
    if report.cancelled_at.is_some() {
        let _ = finish(tb, &report);
        return Err(RunEnd { message: report.message.clone(), code: exit::INTERRUPTED }.into());
    }
    finish(tb, &report)
}

/// The next Ctrl-C or SIGTERM.
async fn wait_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// Die quietly when the reader of our output goes away (`hitless run ... | head`), as
/// Unix tools do, instead of panicking on the next `println!`.
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HITLESS_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let events = Events::new();
    events.subscribe(|e| eprintln!("{}", render(e)));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hitless: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ENVIRONMENT);
        }
    };
    match rt.block_on(run(cli, events)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hitless: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
