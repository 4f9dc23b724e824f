//! `hitless-agent` binary: in a guest it reads its identity from the kernel
//! command line and listens on vsock; on a host (tests) everything is given
//! as flags and it listens on TCP.

use clap::Parser;
use hitless_agent::{
    build::{self, Build, BuildArgs},
    guest, init, Exit, Settings,
};
use hitless_protocol::{CONTROL_PORT, LINK_PORT, WORK_PORT};
use std::net::{Ipv6Addr, SocketAddr};
use tracing_subscriber::{filter::Targets, prelude::*};

/// Every work unit allocates a few strings and frees them once replicated, in
/// batches: glibc's malloc took a third of the active's instructions per unit
/// (its small per-size caches run out at a batch), and every guest
/// instruction is emulated under TCG. So: mimalloc, entered as `alloc` says.
#[global_allocator]
static ALLOC: hitless_agent::alloc::Alloc = hitless_agent::alloc::Alloc;

#[derive(Debug, PartialEq, Eq, Parser)]
#[command(version = build::VERSION, about = "The software on each processor of a hitless active/standby pair")]
struct Args {
    /// Print this build's manifest (version, features, flaw) as JSON and exit.
    #[arg(long)]
    manifest: bool,
    /// Read name and peer from /proc/cmdline (hitless.name=, hitless.peer=, hitless.dial=).
    #[arg(long)]
    from_cmdline: bool,
    /// Processor name (host mode).
    #[arg(long)]
    name: Option<String>,
    /// Control endpoint: vsock:PORT or tcp:ADDR.
    #[arg(long, default_value_t = format!("vsock:{CONTROL_PORT}"))]
    control: String,
    /// Work-unit endpoint: vsock:PORT or tcp:ADDR.
    #[arg(long, default_value_t = format!("vsock:{WORK_PORT}"))]
    work: String,
    /// Address to accept the peer's link connection on.
    #[arg(long, default_value_t = SocketAddr::from((Ipv6Addr::UNSPECIFIED, LINK_PORT)))]
    link_listen: SocketAddr,
    /// Dial the peer at this address (the other side only accepts).
    #[arg(long)]
    dial: Option<SocketAddr>,
    #[command(flatten)]
    build: BuildArgs,
}

impl Args {
    /// What `--from-cmdline` alone parses to: how a guest's init starts the
    /// agent of every image but the flawed test ones. That one command line
    /// skips clap's parser, whose first (and only) run cost ~40 ms of each
    /// boot under TCG, where every instruction run for the first time is
    /// translated first. A unit test holds it equal to clap's result.
    fn from_cmdline_alone() -> Args {
        Args {
            manifest: false,
            from_cmdline: true,
            name: None,
            control: format!("vsock:{CONTROL_PORT}"),
            work: format!("vsock:{WORK_PORT}"),
            link_listen: SocketAddr::from((Ipv6Addr::UNSPECIFIED, LINK_PORT)),
            dial: None,
            build: BuildArgs::default(),
        }
    }
}

/// The settings, and the log filter the kernel command line asks for.
fn settings(a: &Args) -> Result<(Settings, Option<String>), String> {
    let (name, dial, log, db_capacity) = if a.from_cmdline {
        let line = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
        let c = guest::parse_cmdline(&line)?;
        let dial = if c.dial { Some(guest::peer_addr(c.peer, init::LINK_NIC, LINK_PORT)?) } else { None };
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
        (c.name, dial, c.log, guest::db_capacity(&meminfo)?)
    } else {
        // On a host, memory is not the guest's to run out of: no bound.
        (a.name.clone().ok_or("--name or --from-cmdline is required")?, a.dial, None, 0)
    };
    let s = Settings {
        name,
        control: a.control.parse()?,
        work: a.work.parse()?,
        link_listen: a.link_listen,
        dial,
        build: Build::compiled(&a.build),
        announce: true,
        // Only in a guest: a host-mode agent would run the commands on the host.
        exec: a.from_cmdline,
        warm_up: a.from_cmdline,
        switchover_hold: hitless_agent::agent::SWITCHOVER_HOLD,
        db_capacity,
    };
    Ok((s, log))
}

/// The log filter `hitless.log=` or `HITLESS_AGENT_LOG` asks for; info when
/// it does not parse. `Targets` (level, or target=level, comma-separated)
/// rather than `EnvFilter`: the same syntax for what hosts pass, and less code
/// run once at boot, where every new instruction costs its translation (TCG).
fn log_filter(filter: &str) -> Targets {
    filter.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}

fn main() -> std::process::ExitCode {
    let a = if std::process::id() == 1 {
        // The guest's init (the app disk is the root): prepare the guest, fork, go on as the agent.
        let extra = init::boot();
        if extra.is_empty() {
            Args::from_cmdline_alone()
        } else {
            Args::parse_from(["hitless-agent".to_string(), "--from-cmdline".to_string()].into_iter().chain(extra))
        }
    } else if std::env::args_os().skip(1).eq(["--from-cmdline"]) {
        Args::from_cmdline_alone()
    } else {
        Args::parse()
    };
    if a.manifest {
        match serde_json::to_string(&Build::compiled(&a.build)) {
            Ok(m) => println!("{m}"),
            Err(e) => {
                eprintln!("hitless-agent: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        return std::process::ExitCode::SUCCESS;
    }
    let (s, log) = match settings(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hitless-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = log.or_else(|| std::env::var("HITLESS_AGENT_LOG").ok()).unwrap_or_else(|| "info".into());
    let targets = log_filter(&filter);
    let log = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false)
        // Seconds since the agent started: the guest has no synchronized clock.
        .with_timer(tracing_subscriber::fmt::time::uptime());
    tracing_subscriber::registry().with(log).with(targets).init();
    // One thread: a guest has one vCPU, and under TCG every cross-thread wake-up is costly.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hitless-agent: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(hitless_agent::run(s)) {
        Ok(Exit::Crashed) => std::process::ExitCode::from(70),
        Err(e) => {
            eprintln!("hitless-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_log_filters_hosts_pass_parse_and_anything_else_means_info() {
        use tracing::Level;
        let agent = "hitless_agent";
        assert!(log_filter("debug").would_enable(agent, &Level::DEBUG));
        assert!(!log_filter("info").would_enable(agent, &Level::DEBUG));
        let only_agent = log_filter("hitless_agent=trace,warn");
        assert!(only_agent.would_enable(agent, &Level::TRACE));
        assert!(!only_agent.would_enable("tokio", &Level::INFO));
        let bad = log_filter("debug=[{");
        assert!(bad.would_enable(agent, &Level::INFO) && !bad.would_enable(agent, &Level::DEBUG));
    }

    #[test]
    fn from_cmdline_alone_is_what_clap_parses_from_it() {
        let parsed = Args::try_parse_from(["hitless-agent", "--from-cmdline"]).unwrap();
        assert_eq!(Args::from_cmdline_alone(), parsed);
    }

    #[test]
    fn the_command_line_takes_a_flaw_after_from_cmdline_as_the_init_passes_it() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["hitless-agent", "--from-cmdline", "--flaw", "bad-eval"]).unwrap();
        assert!(a.from_cmdline);
        assert_eq!(Build::compiled(&a.build).flaw, Some(build::Flaw::BadEval));
        let a = Args::try_parse_from(["hitless-agent", "--manifest", "--flaw", "crash"]).unwrap();
        let manifest = serde_json::to_string(&Build::compiled(&a.build)).unwrap();
        assert!(manifest.contains(r#""flaw":"crash""#), "{manifest}");
        assert!(Args::try_parse_from(["hitless-agent", "--flaw", "slow"]).is_err());
    }
}
