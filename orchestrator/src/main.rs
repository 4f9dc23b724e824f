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
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The pair config when `--config` is not given.
const DEFAULT_CONFIG: &str = "vm-configs/pair.yaml";

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
4 an invariant was violated; 5 `status`: the pair is not healthy; 124 `--timeout` expired (stopped cleanly); \
130 interrupted.\n\nExamples:\n  hitless up\n  hitless upgrade --to 2.0.0\n  hitless status\n  hitless down"
)]
struct Cli {
    /// Testbed configuration [default: vm-configs/pair.yaml].
    ///
    /// For `run`: when given, the pair of every scenario file that names none
    /// of its own (otherwise pair.yaml beside the scenarios' directory).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run directory (default: $XDG_RUNTIME_DIR/hitless/<name> or /tmp/hitless-<uid>/<name>).
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,
    /// More output (-v the orchestrator's debug log, -vv everything's trace log).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only the summary: no progress lines.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

impl Cli {
    /// The testbed configuration file (`--config`, or the default).
    fn config(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))
    }
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
        /// Stop cleanly (as Ctrl-C does) if the upgrade is not done after this long (e.g. 90s, 5m); exit 124.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Print a JSON summary (end, steps with durations, gaps, invariants) as the last thing on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Roll an unfinished upgrade back to the old version (refused after step 207).
    Rollback {
        /// Print a JSON summary as the last thing on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Bring the pair back to one active and one current standby after a processor died.
    ///
    /// Resumes a paused machine, fences one whose agent does not answer,
    /// promotes the surviving processor that holds the run-state (with a new
    /// epoch) if nothing is active, reloads the other with the version its
    /// partner runs and makes it standby. Says so when nothing holds the
    /// run-state (both down) and changes nothing then.
    Repair {
        /// Print a JSON summary (actions, health) as the last thing on stdout.
        #[arg(long)]
        json: bool,
    },
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
        /// Stop cleanly (as Ctrl-C does) if the rehearsal is not done after this long; exit 124.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
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
        /// Run only shard K of N (e.g. 2/4): the scenarios split deterministically, so N runners run each once.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<(usize, usize)>,
        /// Stop a scenario cleanly (as Ctrl-C does) if it is not done after this long; it then fails, saying where.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Print the results as JSON as the last thing on stdout.
        #[arg(long)]
        json: bool,
        /// Also write the results as JUnit XML to this file (one testcase per scenario).
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Follow a processor's serial console as it is written (Ctrl-C to stop).
    Console {
        /// The processor (e.g. p121).
        processor: String,
        /// Lines of what is already there to show first.
        #[arg(long, default_value_t = 20)]
        lines: usize,
    },
    /// Run a command inside a processor's guest (busybox is there) through its
    /// agent's control channel: its output streams here, and hitless exits
    /// with its exit code (128 + N when signal N ended it, 124 when it ran out
    /// of time). When the command cannot be run, the error says why and the
    /// exit code is hitless's own (see the README).
    ///
    /// Example: hitless exec p121 -- uname -r
    Exec {
        /// The processor (e.g. p121).
        processor: String,
        /// Kill the command after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: std::time::Duration,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stop everything the testbed runs and remove its run directory. Idempotent.
    Down,
    /// Render a run's transcript as one self-contained HTML page (timeline of
    /// roles, versions, steps, faults and the workload; verdicts; header).
    ///
    /// The workload histories are read from `history/` beside the transcript.
    /// Writes `report.html` beside the transcript unless `-o` names a file.
    Report {
        /// The transcript: `transcript.yaml` of a run directory or a scenario's directory (or that directory).
        transcript: PathBuf,
        /// Where to write the page (default: `report.html` beside the transcript).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// `90s`, `5m`, `1.5s`, `300ms`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match s.strip_suffix('m').filter(|n| !n.ends_with('m')) {
        Some(mins) => {
            mins.parse::<u64>().map(|m| std::time::Duration::from_secs(m * 60)).map_err(|e| format!("{s:?}: {e}"))
        }
        None => s.parse::<hitless::faults::Dur>().map(|d| d.0),
    }
}

/// `K/N` with 1 <= K <= N.
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?}: expected K/N with 1 <= K <= N, e.g. 2/4");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// A report as JSON: what CI reads.
fn summary(tb: &Testbed, r: &Report) -> serde_json::Value {
    let report_html = tb.run().transcript().with_file_name("report.html");
    serde_json::json!({
        "end": r.end,
        "message": r.message,
        "stopped_at": r.stopped_at,
        "cancelled_at": r.cancelled_at,
        "steps": r.steps.iter().map(|(s, ms, o)| serde_json::json!({"step": s, "took_ms": ms, "outcome": format!("{o:?}")})).collect::<Vec<_>>(),
        "gaps": r.gaps.iter().map(|(s, ms)| serde_json::json!({"step": s, "gap_ms": ms})).collect::<Vec<_>>(),
        "failovers": r.failovers.iter().map(|(f, t, ms)| serde_json::json!({"from": f, "to": t, "took_ms": ms})).collect::<Vec<_>>(),
        "invariants": r.invariants,
        "acked": r.acked,
        "transcript": tb.run().transcript(),
        "report": report_html.exists().then_some(report_html),
    })
}

/// `--run-dir`, or the default for the config's testbed name (loading the config only then).
fn run_dir(cli: &Cli, suffix: &str) -> Result<RunDir, Error> {
    if let Some(d) = &cli.run_dir {
        return Ok(RunDir::new(d));
    }
    Ok(RunDir::default_for(&format!("{}{suffix}", Config::load(cli.config())?.name)))
}

/// A run that ended without an error but not as hoped: its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct RunEnd {
    message: String,
    code: u8,
}

/// Print a report's summary (unless `silent`: `--json` prints its own); its end decides the exit code.
fn finish(tb: &Testbed, r: &Report, silent: bool) -> anyhow::Result<()> {
    if !silent {
        println!("\nsummary ({}):", r.end);
        for (step, gap) in &r.gaps {
            println!("  service gap at step {step}: {gap} ms");
        }
        for v in &r.invariants {
            println!("  {} {}: {}", if v.ok { "ok  " } else { "FAIL" }, v.name, v.detail);
        }
        println!("  transcript: {}", tb.run().transcript().display());
        let report = tb.run().transcript().with_file_name("report.html");
        if report.exists() {
            println!("  report:     {}", report.display());
        }
    }
    let code = match r.end {
        _ if !r.invariants_ok() && r.end != End::Failed => exit::INVARIANT,
        End::Completed => return Ok(()),
        End::RolledBack => exit::ROLLED_BACK,
        End::Failed => exit::FAILED,
    };
    Err(RunEnd { message: r.message.clone(), code }.into())
}

/// `hitless exec`: stream the command's output here; its exit code becomes ours.
async fn exec(tb: &Testbed, p: ProcId, argv: Vec<String>, timeout: std::time::Duration) -> anyhow::Result<()> {
    use hitless_protocol::OutputStream;
    use std::io::Write;
    let name = tb.config().processors[p].name.clone();
    let run = tb.agents().exec(p, argv, timeout, |stream, data| {
        // A closed stdout (a pipe into `head`) ends the command as SIGPIPE would.
        let _ = match stream {
            OutputStream::Stdout => std::io::stdout().write_all(data).and_then(|()| std::io::stdout().flush()),
            OutputStream::Stderr => std::io::stderr().write_all(data),
        };
    });
    let end = tokio::select! {
        end = run => end.map_err(Error::from).with_context(|| format!("exec on {name}"))?,
        // Dropping the connection makes the agent kill the command.
        _ = tokio::signal::ctrl_c() => return Err(Error::Interrupted.into()),
    };
    if end.timed_out {
        return Err(RunEnd {
            message: format!("the command on {name} ran out of time after {timeout:?} and was killed"),
            code: exit::TIMED_OUT,
        }
        .into());
    }
    match u8::try_from(end.shell_code()) {
        Ok(0) => Ok(()),
        // The command's own failure: its output said what it had to say.
        Ok(code) => Err(RunEnd { message: String::new(), code }.into()),
        Err(_) => {
            Err(RunEnd { message: format!("the command on {name} ended with {end:?}"), code: exit::FAILED }.into())
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(r) = e.downcast_ref::<RunEnd>() {
        return r.code;
    }
    e.chain().find_map(|c| c.downcast_ref::<Error>()).map_or(exit::FAILED, Error::exit_code)
}

async fn up(cli: &Cli, events: Events) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config()).map_err(Error::from)?;
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
    // Guests bound their database by their memory; a full one refuses new work.
    let databases: Vec<String> = st
        .values()
        .filter_map(|p| Some((p, p.agent.as_ref().ok()?.request_ids?)))
        .map(|(p, r)| {
            let full = if r.applied >= r.capacity { " FULL: new work is refused" } else { "" };
            format!("{} {} of {}{full}", p.name, r.applied, r.capacity)
        })
        .collect();
    if !databases.is_empty() {
        println!("database (request ids applied, of its capacity): {}", databases.join("; "));
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
            let cfg = Config::load(cli.config()).map_err(Error::from)?;
            let t = std::time::Instant::now();
            let progress = |m: &str| eprintln!("[{:7.1}s] {m}", t.elapsed().as_secs_f64());
            let (boot, apps) =
                hitless::images::build_all(&cfg, &progress).map_err(Error::from).context("make images")?;
            match &boot.initrd {
                Some(initrd) => {
                    println!("boot   {} + {} (kernel: {})", boot.kernel.display(), initrd.display(), cfg.kernel)
                }
                None => println!("boot   {} (kernel: {}; the app disk is the root)", boot.kernel.display(), cfg.kernel),
            }
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
        Cmd::Upgrade { to, dry_run, resume, no_workload, timeout, json } => {
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
            let (report, timed_out) =
                with_signals(*timeout, |cancel| procedure::upgrade_with(&mut tb, to, opts, cancel)).await;
            let report = report?;
            if *json {
                let _ = finish(&tb, &report, true);
                println!("{}", serde_json::to_string_pretty(&summary(&tb, &report)).unwrap_or_default());
            }
            report_or_cancelled(&tb, report, timed_out, *json)
        }
        Cmd::Rollback { json } => {
            let mut tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Change("hitless rollback"))?;
            let report = procedure::rollback(&mut tb).await?;
            let ended = finish(&tb, &report, *json);
            if *json {
                println!("{}", serde_json::to_string_pretty(&summary(&tb, &report)).unwrap_or_default());
            }
            ended
        }
        Cmd::Repair { json } => {
            let mut tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Change("hitless repair"))?;
            let done = procedure::repair(&mut tb).await?;
            if !json {
                for a in &done.actions {
                    println!("{a}");
                }
            }
            let interrupted = procedure::read_journal(tb.run()).filter(|j| !j.step.is_end());
            if let Some(j) = interrupted.as_ref().filter(|_| !json) {
                println!("an upgrade to {} was interrupted at step {}: continue with `hitless upgrade --resume` or `hitless rollback`", j.plan.to, j.step);
            }
            if *json {
                let problems: Vec<String> =
                    hitless::health::assess(&tb.status().await).iter().map(ToString::to_string).collect();
                let out = serde_json::json!({
                    "actions": done.actions,
                    "healthy": problems.is_empty(),
                    "problems": problems,
                    "interrupted_at": interrupted.map(|j| j.step),
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                print_status(&tb, false).await;
            }
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
        Cmd::Simulate { to, timeout } => {
            let cfg = Config::load(cli.config()).map_err(Error::from)?;
            let run = match &cli.run_dir {
                Some(d) => RunDir::new(d),
                None => RunDir::default_for(&format!("{}-simulated", cfg.name)),
            };
            // Unknown versions are bad input, before anything is made.
            cfg.version(to).map_err(|e: InputError| Error::from(e))?;
            let mut tb = Testbed::simulated(cfg, run, events).await?;
            let opts = Options { resume: false, workload: true };
            let (report, timed_out) =
                with_signals(*timeout, |cancel| procedure::upgrade_with(&mut tb, to, opts, cancel)).await;
            report_or_cancelled(&tb, report?, timed_out, false)
        }
        Cmd::Exec { processor, timeout, command } => {
            let tb = Testbed::attach(run_dir(&cli, "")?, events, Access::Observe)?;
            let p = tb.config().proc_id(processor).map_err(Error::from)?;
            exec(&tb, p, command.clone(), *timeout).await
        }
        Cmd::Console { processor, lines } => {
            let run = run_dir(&cli, "")?;
            let state = run.load_state().map_err(|_| hitless::error::EnvironmentError::NotUp(run.root.clone()))?;
            let cfg = Config::load(&state.config).map_err(Error::from)?;
            let p = cfg.proc_id(processor).map_err(Error::from)?;
            follow(&run.serial(&cfg.processors[p].name), *lines, &run).await
        }
        Cmd::Run { files, simulated, out, chaos, seed, count, only, to, shard, timeout, json, junit } => {
            let place = if *simulated { Where::Simulated } else { Where::Qemu };
            let scenarios: Vec<Scenario> = if *chaos {
                let seed = seed.unwrap_or_default();
                let draws: Vec<u32> = match only {
                    Some(n) => vec![*n],
                    None => (0..*count).collect(),
                };
                // Absolute: a failing draw's file and command must work from anywhere.
                let pair =
                    cli.config().canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", cli.config().display()))?;
                let s: Vec<Scenario> = draws.iter().map(|n| chaos::draw(seed, *n, &pair, to)).collect();
                println!("chaos plan (seed {seed}):");
                for d in &s {
                    println!("{}", chaos::as_yaml(d));
                }
                s
            } else {
                if files.is_empty() {
                    anyhow::bail!("give scenario files (e.g. vm-configs/scenarios/*.yaml), or --chaos --seed S");
                }
                // Every file is checked before any pair starts; --config, when given,
                // is the pair of every scenario that names none.
                let pair = cli.config.as_deref();
                files.iter().map(|f| Scenario::load_with_pair(f, pair)).collect::<Result<_, _>>()?
            };
            // A shard: every N-th scenario in a fixed order, so N runners together run each once.
            let scenarios: Vec<Scenario> = match shard {
                Some((k, n)) => {
                    let mut all = scenarios;
                    all.sort_by(|a, b| a.name.cmp(&b.name));
                    all.into_iter().enumerate().filter(|(i, _)| i % n == k - 1).map(|(_, s)| s).collect()
                }
                None => scenarios,
            };
            let out = out.clone().unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                PathBuf::from(format!(".cache/runs/{t}"))
            });
            let mut results = Vec::new();
            for (i, s) in scenarios.iter().enumerate() {
                if !cli.quiet {
                    eprintln!("\n=== [{}/{}] {}: {}", i + 1, scenarios.len(), s.name, s.description);
                }
                let (name, quiet) = (s.name.clone(), cli.quiet);
                let o = runner::run(s, place, &out, *timeout, move |e| {
                    if quiet {
                        return;
                    }
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
                    // The draw as a file of its own: it names its pair, so it runs from anywhere.
                    let file = format!("config: {}\n{}", s.config.display(), chaos::as_yaml(s));
                    let _ = std::fs::write(o.dir.join("scenario.yaml"), file);
                    let n = s.name.rsplit('-').next().unwrap_or("0");
                    let sim = if *simulated { " --simulated" } else { "" };
                    eprintln!(
                        "reproduce: hitless run --chaos --seed {} --only {n} --to {to} --config {}{sim}",
                        seed.unwrap_or_default(),
                        s.config.display()
                    );
                }
                results.push(o);
            }
            let results_json = serde_json::to_string_pretty(&results).unwrap_or_default();
            let _ = std::fs::write(out.join("results.json"), &results_json);
            // Each scenario's report, and the index that links them.
            match hitless::report::index(&results, &out) {
                Ok(index) => eprintln!("reports: {}", index.display()),
                Err(e) => eprintln!("hitless: reports not written: {}", hitless::error::chain(&e)),
            }
            if let Some(file) = junit {
                std::fs::write(file, hitless::scenario::junit::junit(&results))
                    .with_context(|| format!("writing JUnit results to {}", file.display()))?;
            }
            if *json {
                println!("{results_json}");
            } else {
                println!("\n{}", runner::table(&results));
                println!("transcripts and histories in {}", out.display());
            }
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
        Cmd::Report { transcript, output } => {
            let page = match output {
                Some(out) => hitless::report::write(transcript, out)?,
                None => hitless::report::write_beside(transcript)?,
            };
            println!("{}", page.display());
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

/// Run an upgrade that Ctrl-C or SIGTERM — or `timeout` — cancels cleanly (the
/// pair falls back before 207, 207 is finished); a second signal stops at once.
/// Also says whether the timeout fired.
async fn with_signals<F, Fut>(timeout: Option<std::time::Duration>, start: F) -> (Result<Report, Error>, bool)
where
    F: FnOnce(Option<procedure::Cancel>) -> Fut,
    Fut: std::future::Future<Output = Result<Report, Error>>,
{
    let (canceller, cancel) = procedure::Cancel::new();
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = timeout.map(|t| {
        let (canceller, timed_out) = (canceller.clone(), timed_out.clone());
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!("hitless: --timeout {} expired: stopping cleanly", hitless::faults::Dur(t));
            canceller.cancel_because(&format!("timed out after {}", hitless::faults::Dur(t)));
        })
    });
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
    if let Some(t) = timer {
        t.abort();
    }
    (report, timed_out.load(std::sync::atomic::Ordering::Relaxed))
}

/// A report's exit: a timed-out run exits 124, a cancelled one 130 (its pair left stable), else by its end.
fn report_or_cancelled(tb: &Testbed, report: Report, timed_out: bool, silent: bool) -> anyhow::Result<()> {
    if report.cancelled_at.is_some() {
        let _ = finish(tb, &report, silent);
        let code = if timed_out { exit::TIMED_OUT } else { exit::INTERRUPTED };
        return Err(RunEnd { message: report.message.clone(), code }.into());
    }
    finish(tb, &report, silent)
}

/// Print the last `lines` of `log`, then what is appended to it, until Ctrl-C or the testbed goes down.
async fn follow(log: &std::path::Path, lines: usize, run: &RunDir) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::File::open(log).with_context(|| format!("{} (is the processor up?)", log.display()))?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        println!("{l}");
    }
    let mut at = f.seek(SeekFrom::End(0))?;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        if !run.state_file().exists() {
            eprintln!("the testbed went down");
            return Ok(());
        }
        buf.clear();
        f.seek(SeekFrom::Start(at))?;
        f.read_to_end(&mut buf)?;
        at += buf.len() as u64;
        std::io::stdout().write_all(&buf)?;
        std::io::stdout().flush()?;
    }
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
    // Only hitless speaks on the terminal: libraries' logs (qapi's on every QMP `quit`) only with -vv.
    let level = match cli.verbose {
        0 => "off,hitless=warn",
        1 => "off,hitless=debug",
        _ => "trace",
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HITLESS_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let events = Events::new();
    if !cli.quiet {
        events.subscribe(|e| eprintln!("{}", render(e)));
    }
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
            // A command run by `hitless exec` that failed has said so itself.
            if !e.downcast_ref::<RunEnd>().is_some_and(|r| r.message.is_empty()) {
                eprintln!("hitless: error: {e:#}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}
