//! What can go wrong, split by who has to act, and the exit code of each —
//! in one place, so that CI can tell bad input (1) from a broken runner (3).
//! Modules keep their own error types ([`crate::config::ConfigError`],
//! [`crate::images::ImageError`], [`crate::machine::MachineError`], ...);
//! they reach the user wrapped in one of these, with their whole cause chain.

use crate::config::ConfigError;
use crate::images::ImageError;
use crate::machine::MachineError;
use crate::procedure::Step;
use std::path::PathBuf;

/// The exit codes of `hitless`, as the README documents them.
pub mod exit {
    /// A step or the input failed.
    pub const FAILED: u8 = 1;
    /// The upgrade was not acceptable and was rolled back: the pair is consistent, on the old version.
    pub const ROLLED_BACK: u8 = 2;
    /// The environment is broken or the pair cannot take the command now: QEMU
    /// missing, no testbed up, one already up, the pair busy, an upgrade interrupted.
    pub const ENVIRONMENT: u8 = 3;
    /// An invariant was violated (lost work, two actives, inconsistent end): a real regression.
    pub const INVARIANT: u8 = 4;
    /// `status`: the pair is not healthy (no active, a processor down, a standby not current).
    pub const UNHEALTHY: u8 = 5;
    /// `--timeout` expired: the run was stopped cleanly, as Ctrl-C would, and says where.
    pub const TIMED_OUT: u8 = 124;
    /// Interrupted by Ctrl-C or SIGTERM; everything started was stopped.
    pub const INTERRUPTED: u8 = 130;
}

/// Any failure of a `hitless` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that cannot be: fix the input.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The host or the run directory is not fit for the command.
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    /// The procedure's state forbids the command.
    #[error(transparent)]
    Procedure(#[from] ProcedureError),
    /// A processor failed to do what it was told.
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// A check before anything leaves service failed: nothing was changed.
    #[error("preflight: {check}: {detail}")]
    Preflight {
        /// Which check (an image, the host, space, the protocol).
        check: String,
        /// What it found.
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) | Error::Processor(_) | Error::Preflight { .. } => exit::FAILED,
            Error::Environment(_) => exit::ENVIRONMENT,
            Error::Procedure(p) => match p {
                ProcedureError::Interrupted { .. } => exit::ENVIRONMENT,
                ProcedureError::NoJournal(_) | ProcedureError::Ended(_) | ProcedureError::RollbackRefused { .. } => {
                    exit::FAILED
                }
            },
            Error::Interrupted => exit::INTERRUPTED,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Input(InputError::Config(e))
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::UnknownVersion { .. } => Error::Input(InputError::Image(e)),
            e => Error::Environment(EnvironmentError::Image(e)),
        }
    }
}

/// Bad input: the command line or the config asks for something that does not exist.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A version that the config does not define.
    #[error("version {version} is not in {file} (known: {known})")]
    UnknownVersion {
        /// The version asked for.
        version: String,
        /// The config file.
        file: PathBuf,
        /// The versions it defines, comma-separated.
        known: String,
    },
    /// A processor name that the config does not define.
    #[error("processor {name} is not in {file} (known: {known})")]
    UnknownProcessor {
        /// The name asked for.
        name: String,
        /// The config file.
        file: PathBuf,
        /// The processors it defines.
        known: String,
    },
    /// A version that only exists as a prebuilt binary, asked of the simulated pair.
    #[error("version {version} is a prebuilt agent ({}); the simulated pair runs only versions built from this workspace", agent.display())]
    NotSimulable {
        /// The version.
        version: String,
        /// Its binary.
        agent: PathBuf,
    },
    /// A version's `agent_args` that the simulated pair's in-process agent does not take.
    #[error("version {version}: agent_args: {detail}")]
    AgentArgs {
        /// The version.
        version: String,
        /// What the agent's argument parser said.
        detail: String,
    },
    /// An image of a version that cannot be built as asked.
    #[error("image")]
    Image(#[source] ImageError),
}

/// The host or the run directory cannot serve the command.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    /// QEMU cannot be run.
    #[error("QEMU not found: cannot run {} ({detail}); install qemu-system-x86 (make setup) or set HITLESS_QEMU", qemu.display())]
    QemuMissing {
        /// The binary tried.
        qemu: PathBuf,
        /// Why it did not run.
        detail: String,
    },
    /// The userspace vsock daemon is not where the config says.
    #[error("vhost-device-vsock not found at {} (run `make setup`)", .0.display())]
    VsockDaemonMissing(PathBuf),
    /// No accelerator or vsock transport as configured.
    #[error("{0}")]
    Platform(String),
    /// Images cannot be built or found.
    #[error("images")]
    Image(#[source] ImageError),
    /// `hitless up` has not run in this run directory.
    #[error("no testbed is up in {} (run `hitless up` first)", .0.display())]
    NotUp(PathBuf),
    /// A testbed already runs here.
    #[error("testbed already up in {} (run `hitless down` first, or pick another --run-dir)", .0.display())]
    AlreadyUp(PathBuf),
    /// Another command holds the pair.
    #[error("the pair is busy: {holder}{}; wait for it, or stop it (Ctrl-C) and run `hitless upgrade --resume` or `hitless rollback`", step.map(|s| format!(", at step {s}")).unwrap_or_default())]
    Busy {
        /// Who holds the lock.
        holder: crate::lock::Holder,
        /// Where its upgrade is, if one runs.
        step: Option<Step>,
    },
    /// The run directory's lock file could not be used.
    #[error("locking the run directory")]
    Lock(#[source] crate::lock::LockError),
    /// A command that changes the pair was attempted on a read-only view of it.
    #[error("this view of the pair is read-only; changing it needs the run directory's lock")]
    ReadOnly,
    /// The run directory holds a simulated pair, which lives only in the process that made it.
    #[error("{} holds a simulated pair; it lives only in the process that started it", .0.display())]
    SimulatedElsewhere(PathBuf),
    /// A run-directory file could not be used.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The machine backend could not start its per-pair helpers.
    #[error("machines")]
    Machine(#[source] MachineError),
}

/// The state of the procedure (its journal) forbids the command.
#[derive(Debug, thiserror::Error)]
pub enum ProcedureError {
    /// An upgrade was cut short and must be resumed or rolled back first.
    #[error("an upgrade was interrupted at step {step}; use `hitless upgrade --resume` or `hitless rollback`")]
    Interrupted {
        /// Where it stopped.
        step: Step,
    },
    /// `--resume` or `rollback` with nothing to resume or roll back.
    #[error("no upgrade journal in {} (nothing to resume or roll back)", .0.display())]
    NoJournal(PathBuf),
    /// The journalled upgrade already reached an end.
    #[error("the journalled upgrade already ended ({0})")]
    Ended(Step),
    /// Rollback after the point of no return.
    #[error("rollback refused: {what}; step 207 is the point of no return, the pair stays on {to}")]
    RollbackRefused {
        /// The version the pair stays on.
        to: String,
        /// What makes it final.
        what: String,
    },
}

/// A processor failed: it did not boot, its agent refused or did not answer,
/// its machine could not be controlled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// It did not come up.
    #[error("processor {processor} did not come up: {why}{}", console.as_ref().map(|c| format!(" (console: {})", c.display())).unwrap_or_default())]
    Boot {
        /// The processor.
        processor: String,
        /// What was waited for, and the first line it printed that explains the failure.
        why: String,
        /// Where its console output is, if it has one.
        console: Option<PathBuf>,
    },
    /// Its agent refused a command or answered something unexpected.
    #[error("processor {processor}: {message}")]
    Agent {
        /// The processor.
        processor: String,
        /// What the agent said, or what was wrong with the answer.
        message: String,
    },
    /// A promotion refused by its agent: it has not applied every update the
    /// demoted active did (that one acked work alone), so it is still standby.
    #[error("processor {processor} lacks updates {} to {holding} that the demoted active applied: not promoted", seq + 1)]
    Lacking {
        /// The processor.
        processor: String,
        /// The last update it applied.
        seq: u64,
        /// The demoted active's last update.
        holding: u64,
    },
    /// Its agent could not be reached.
    #[error("processor {processor}: agent unreachable")]
    Unreachable {
        /// The processor.
        processor: String,
        /// The channel's error.
        #[source]
        source: crate::channel::ChannelError,
    },
    /// Its machine could not be started, stopped or queried.
    #[error("processor {processor}")]
    Machine {
        /// The processor.
        processor: String,
        /// The backend's error.
        #[source]
        source: MachineError,
    },
    /// A wait on it ran out.
    #[error("processor {processor}: {what} not done within {after:?}")]
    Timeout {
        /// The processor.
        processor: String,
        /// What was waited for.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
}

/// `e` and every error below it, joined by ": " — what a user must see.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // A transparent wrapper repeats its source's message; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_keeps_every_cause() {
        let e = Error::Processor(ProcessorError::Machine {
            processor: "p122".into(),
            source: MachineError::Image(ImageError::Missing { what: "kernel image", path: "/k".into() }),
        });
        let text = chain(&e);
        assert!(text.starts_with("processor p122: "), "{text}");
        assert!(text.contains("kernel image not found at /k"), "{text}");
    }

    #[test]
    fn exit_codes_match_the_readme() {
        let unknown =
            Error::Input(InputError::UnknownVersion { version: "9".into(), file: "f".into(), known: "1".into() });
        assert_eq!(unknown.exit_code(), exit::FAILED);
        assert_eq!(Error::Environment(EnvironmentError::NotUp("r".into())).exit_code(), exit::ENVIRONMENT);
        assert_eq!(Error::Procedure(ProcedureError::Interrupted { step: Step::StandbyOnNew }).exit_code(), 3);
        let refused = ProcedureError::RollbackRefused { to: "2".into(), what: "x".into() };
        assert_eq!(Error::Procedure(refused).exit_code(), exit::FAILED);
        assert_eq!(Error::Interrupted.exit_code(), exit::INTERRUPTED);
    }
}
