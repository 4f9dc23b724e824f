//! Helper processes (QEMU, vhost-device-vsock): each runs in its own process
//! group, its output goes to a log file in the run directory, its pid is
//! written to a pid file at once (atomically, never over a live one), and it
//! is appended to the run directory's record of every process it started —
//! so `hitless down` can stop it by group id even after the orchestrator that
//! started it died, whatever happened to a pid file. Nothing is ever stopped
//! by name, and a recorded pid is only signalled while it is still the same
//! process (its start time matches).

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What went wrong with a helper process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The binary could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The pid file names a process that still runs: starting another would orphan it.
    #[error("{} names pid {pid}, which still runs; stop it first (hitless down)", pid_file.display())]
    StillRunning {
        /// The pid file.
        pid_file: PathBuf,
        /// The live process.
        pid: u32,
    },
    /// A run-directory file could not be written or read.
    #[error("{path}")]
    File {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A started helper: its pid (= process group id) and where its pid file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    /// Process id and process group id.
    pub pid: u32,
    /// Its pid file.
    pub pid_file: PathBuf,
}

/// One started process, as the run directory records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Process id (and process group id).
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat`): tells it from a later process with its pid.
    pub start: u64,
    /// The program.
    pub program: String,
}

/// When `pid` started, in clock ticks since boot, if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces); starttime is field 22, the 20th after ")".
    stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()
}

/// Start `program args` in a new process group, output appended to `log`, pid
/// written to `pid_file` and appended to the `registry` of the run directory.
pub fn spawn(
    program: &Path,
    args: &[String],
    log: &Path,
    pid_file: &Path,
    registry: &Path,
) -> Result<Helper, ProcessError> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProcessError::File { path, source }
    };
    if let Some(pid) = read_pid(pid_file).filter(|p| alive(*p)) {
        return Err(ProcessError::StillRunning { pid_file: pid_file.to_path_buf(), pid });
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(file_err(log))?;
    let err = out.try_clone().map_err(file_err(log))?;
    tracing::debug!("exec {} {}", program.display(), args.join(" "));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Own group: a Ctrl-C at the terminal does not reach it; we stop it ourselves, by group.
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn { program: program.display().to_string(), source })?;
    // Dropping the handle neither kills nor waits: the helper outlives this command,
    // and `alive()` reaps it once it exits.
    let pid = child.id();
    let record = Record { pid, start: start_time(pid).unwrap_or(0), program: program.display().to_string() };
    let mut line = serde_json::to_vec(&record).map_err(|e| file_err(registry)(std::io::Error::other(e)))?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(registry)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &line))
        .map_err(file_err(registry))?;
    crate::rundir::write_atomic(pid_file, format!("{pid}\n").as_bytes()).map_err(file_err(pid_file))?;
    Ok(Helper { pid, pid_file: pid_file.to_path_buf() })
}

/// Every process in `registry` that still runs as the process recorded (same start time).
pub fn recorded_alive(registry: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(registry).unwrap_or_default();
    let mut out: Vec<Record> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .filter(|r| alive(r.pid) && start_time(r.pid) == Some(r.start))
        .collect();
    out.dedup_by_key(|r| r.pid);
    out
}

/// Read a pid file.
pub fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `pid` is still running; reaps it if it is our child and has exited.
pub fn alive(pid: u32) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        // Our child: waitpid is the authority. (/proc shows a multi-threaded
        // process as a zombie as soon as its main thread exits, while other
        // threads still run; trusting that left QEMUs unreaped.)
        Ok(WaitStatus::StillAlive) => true,
        Ok(_) => false,
        // Not our child (started by an earlier `hitless` command): ask /proc;
        // its zombie is reaped by init, so a zombie counts as gone.
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        },
    }
}

/// Our children that exited but were not reaped (should always be empty).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            out.extend(e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Wait up to `timeout` for `pid` to exit.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Stop the process group led by `pid`: SIGTERM, wait up to `grace`, then SIGKILL. Idempotent.
pub fn stop_group(pid: u32, grace: Duration) {
    if pid <= 1 || !alive(pid) {
        return;
    }
    let pg = Pid::from_raw(pid as i32);
    let _ = killpg(pg, Signal::SIGTERM).or_else(|_| kill(pg, Signal::SIGTERM));
    if !wait_exit(pid, grace) {
        let _ = killpg(pg, Signal::SIGKILL).or_else(|_| kill(pg, Signal::SIGKILL));
        wait_exit(pid, Duration::from_secs(2));
    }
}

/// Kill the process group led by `pid` at once (SIGKILL), as a power failure would; reaped if ours.
pub fn kill_group(pid: u32) {
    if pid <= 1 || !alive(pid) {
        return;
    }
    let pg = Pid::from_raw(pid as i32);
    let _ = killpg(pg, Signal::SIGKILL).or_else(|_| kill(pg, Signal::SIGKILL));
    wait_exit(pid, Duration::from_secs(2));
}

/// Stop the helper whose pid is in `pid_file` (if any), then remove the file.
pub fn stop_pid_file(pid_file: &Path, grace: Duration) {
    if let Some(pid) = read_pid(pid_file) {
        stop_group(pid, grace);
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_helper_is_gone_and_reaped() {
        let d = tempfile::tempdir().unwrap();
        let (pid_file, registry) = (d.path().join("pid"), d.path().join("processes.jsonl"));
        let h = spawn(Path::new("/bin/sleep"), &["30".into()], &d.path().join("log"), &pid_file, &registry).unwrap();
        assert!(alive(h.pid));
        assert_eq!(recorded_alive(&registry).iter().map(|r| r.pid).collect::<Vec<_>>(), [h.pid]);
        // A live pid file is never overwritten: that would orphan its process.
        let again = spawn(Path::new("/bin/sleep"), &["30".into()], &d.path().join("log"), &pid_file, &registry);
        assert!(matches!(again, Err(ProcessError::StillRunning { pid, .. }) if pid == h.pid), "{again:?}");
        stop_pid_file(&h.pid_file, Duration::from_secs(2));
        assert!(!alive(h.pid));
        assert!(!zombie_children().contains(&h.pid));
        assert!(!h.pid_file.exists());
        assert!(recorded_alive(&registry).is_empty());
    }

    #[test]
    fn a_record_whose_pid_was_reused_is_not_alive() {
        let d = tempfile::tempdir().unwrap();
        let registry = d.path().join("processes.jsonl");
        let me = std::process::id();
        let stale = Record { pid: me, start: start_time(me).unwrap() + 1, program: "qemu".into() };
        std::fs::write(&registry, format!("{}\n", serde_json::to_string(&stale).unwrap())).unwrap();
        assert!(recorded_alive(&registry).is_empty(), "a different process with a recorded pid would be killed");
    }
}
