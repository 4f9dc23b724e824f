//! The run directory of one testbed: every socket, pid file, log, overlay,
//! the state file that lets later commands re-attach, the journal, the
//! transcript and the workload history. Names are fixed here and nowhere else.

use crate::pair::Pair;
use crate::platform::Platform;
use std::path::{Path, PathBuf};

/// Layout of a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    /// Its root.
    pub root: PathBuf,
}

/// What `hitless up` leaves for later commands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Config file the testbed was started from.
    pub config: PathBuf,
    /// Where the processors run.
    pub platform: Platform,
    /// Why that platform (the accelerator's reasoning).
    pub platform_reason: String,
    /// Last role-command epoch issued; only ever increases.
    pub epoch: u64,
    /// Per processor, in config order.
    pub processors: Pair<ProcState>,
}

/// One processor's recorded state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcState {
    /// Its name when the testbed came up (a later config must agree).
    pub name: String,
    /// Version it was last booted with.
    pub version: String,
    /// Boots so far (each reload is one more); names the overlay.
    pub boots: u32,
}

impl RunDir {
    /// The run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// Default location for testbed `name`: `$XDG_RUNTIME_DIR/hitless/<name>` or `/tmp/hitless-<uid>/<name>`.
    pub fn default_for(name: &str) -> Self {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("hitless"))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/hitless-{}", nix::unistd::getuid())));
        RunDir::new(base.join(name))
    }

    /// A processor's subdirectory.
    pub fn proc_dir(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
    fn f(&self, p: &str, name: &str) -> PathBuf {
        self.proc_dir(p).join(name)
    }
    /// QMP socket.
    pub fn qmp(&self, p: &str) -> PathBuf {
        self.f(p, "qmp.sock")
    }
    /// vhost-user socket between QEMU and the vsock daemon.
    pub fn vhost_user(&self, p: &str) -> PathBuf {
        self.f(p, "vhost-vsock.sock")
    }
    /// Host-side unix socket of the vsock daemon (`CONNECT <port>`).
    pub fn vsock_uds(&self, p: &str) -> PathBuf {
        self.f(p, "vsock.sock")
    }
    /// This processor's end of the link.
    pub fn link(&self, p: &str) -> PathBuf {
        self.f(p, "link.sock")
    }
    /// Serial console log (all boots).
    pub fn serial(&self, p: &str) -> PathBuf {
        self.f(p, "serial.log")
    }
    /// Present while a processor's machine is paused (no hitless process dials it then).
    pub fn paused(&self, p: &str) -> PathBuf {
        self.f(p, "paused")
    }
    /// QEMU stdout/stderr.
    pub fn qemu_log(&self, p: &str) -> PathBuf {
        self.f(p, "qemu.log")
    }
    /// QEMU pid file.
    pub fn qemu_pid(&self, p: &str) -> PathBuf {
        self.f(p, "qemu.pid")
    }
    /// vsock daemon log.
    pub fn vsock_log(&self, p: &str) -> PathBuf {
        self.f(p, "vhost-device-vsock.log")
    }
    /// vsock daemon pid file.
    pub fn vsock_pid(&self, p: &str) -> PathBuf {
        self.f(p, "vhost-device-vsock.pid")
    }
    /// The copy-on-write overlay of boot number `boot`.
    pub fn overlay(&self, p: &str, boot: u32, version: &str) -> PathBuf {
        self.f(p, &format!("app-{boot}-{version}.qcow2"))
    }
    /// The link's frames during one boot of a processor, as pcap (`HITLESS_LINK_PCAP=1`).
    pub fn link_capture(&self, p: &str, boot: u32) -> PathBuf {
        self.f(p, &format!("link-{boot}.pcap"))
    }
    /// State file.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// Upgrade journal.
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal.json")
    }
    /// Transcript of the last command that ran the procedure.
    pub fn transcript(&self) -> PathBuf {
        self.root.join("transcript.yaml")
    }
    /// The workload history of run `run_id` (JSON lines, appended as it happens).
    pub fn history(&self, run_id: &str) -> PathBuf {
        self.root.join("history").join(format!("{run_id}.jsonl"))
    }
    /// The lock file: held by the one command that may change the pair.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// Every helper process this run directory started (JSON lines), for `down`.
    pub fn processes(&self) -> PathBuf {
        self.root.join("processes.jsonl")
    }

    /// Every pid file in the run directory, daemons after QEMUs.
    pub fn pid_files(&self) -> Vec<PathBuf> {
        let mut qemu = Vec::new();
        let mut other = Vec::new();
        for e in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            if !e.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|x| x == "pid") {
                    if p.file_name().is_some_and(|n| n == "qemu.pid") {
                        qemu.push(p);
                    } else {
                        other.push(p);
                    }
                }
            }
        }
        qemu.sort();
        other.sort();
        qemu.extend(other);
        qemu
    }

    /// Read the state file.
    pub fn load_state(&self) -> std::io::Result<State> {
        let text = std::fs::read_to_string(self.state_file())?;
        serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Write the state file atomically.
    pub fn save_state(&self, s: &State) -> std::io::Result<()> {
        write_atomic(&self.state_file(), &serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?)
    }
}

/// Write via a temp file and rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
