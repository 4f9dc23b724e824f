//! The QEMU backend: each processor is a QEMU guest booting the shared boot
//! image and a fresh copy-on-write overlay of its version's app disk, on the
//! machine type its kernel boots fastest on ([`argv::MachineType`]). Every
//! helper process is started through [`crate::process`] so that `down` can
//! always stop it from the run directory; QMP drives the faults (`stop`/`cont`,
//! `set_link`) and proves which image a guest booted.

pub mod argv;
pub mod console;
pub mod qmp;

use super::{AppDisk, Artifact, Boot, Diagnostics, LinkDir, MachineError, Machines, Reach, Software};
use crate::channel::Channel;
use crate::config::Config;
use crate::error::{EnvironmentError, Error};
use crate::images::{self, BootImage};
use crate::pair::ProcId;
use crate::platform::{Accel, Vsock};
use crate::process;
use crate::rundir::RunDir;
use argv::{MachineSpec, MachineType, VsockDevice};
use console::ConsoleWatch;
use qmp::Qmp;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a guest gets to exit after QMP `quit` before its group is killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// How long the vsock daemon gets to create its socket.
const DAEMON_START: Duration = Duration::from_secs(5);

/// The pair as QEMU guests.
pub struct QemuPair {
    cfg: Config,
    run: RunDir,
    accel: Accel,
    vsock: Vsock,
    /// Built on first use: `status` and `down` never need it.
    boot: OnceLock<BootImage>,
    /// Versions resolved so far: resolving builds images and runs the agent for its manifest.
    software: Mutex<BTreeMap<String, Software>>,
    /// Each guest's console since its last start (or since this command attached): says when its agent exited.
    consoles: Mutex<[Option<ConsoleWatch>; 2]>,
}

/// Is a usable QEMU there?
pub fn check_qemu(qemu: &Path) -> Result<(), EnvironmentError> {
    match std::process::Command::new(qemu).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(EnvironmentError::QemuMissing {
            qemu: qemu.to_path_buf(),
            detail: format!("--version failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        }),
        Err(e) => Err(EnvironmentError::QemuMissing { qemu: qemu.to_path_buf(), detail: e.to_string() }),
    }
}

impl QemuPair {
    /// The pair of `cfg` in `run`, on `accel` and `vsock` (nothing is started).
    pub fn new(cfg: Config, run: RunDir, accel: Accel, vsock: Vsock) -> Self {
        let consoles = Mutex::new([None, None]);
        QemuPair { cfg, run, accel, vsock, boot: OnceLock::new(), software: Mutex::new(BTreeMap::new()), consoles }
    }

    /// Check that the host can run this pair: QEMU, and the vsock daemon when it is needed.
    pub fn check_host(&self) -> Result<(), EnvironmentError> {
        check_qemu(&self.cfg.qemu)?;
        if self.vsock == Vsock::User && !self.cfg.vhost_device_vsock.is_file() {
            return Err(EnvironmentError::VsockDaemonMissing(self.cfg.vhost_device_vsock.clone()));
        }
        Ok(())
    }

    /// The boot image, built (or found in the cache) once; a kernel build's progress is logged.
    pub fn boot_image(&self) -> Result<BootImage, images::ImageError> {
        self.boot_image_with(&|m| tracing::info!("{m}"))
    }

    /// [`Self::boot_image`], reporting a kernel build's progress (it takes minutes) to `progress`.
    pub fn boot_image_with(&self, progress: images::Progress) -> Result<BootImage, images::ImageError> {
        if let Some(b) = self.boot.get() {
            return Ok(b.clone());
        }
        let b = images::boot_image(&self.cfg, progress)?;
        Ok(self.boot.get_or_init(|| b).clone())
    }

    fn name(&self, p: ProcId) -> &str {
        &self.cfg.processors[p].name
    }

    async fn qmp(&self, p: ProcId) -> Result<Qmp, MachineError> {
        if !self.alive(p) {
            return Err(MachineError::NotRunning);
        }
        Ok(Qmp::connect(&self.run.qmp(self.name(p))).await?)
    }

    async fn start_vsock_daemon(&self, p: ProcId) -> Result<(), MachineError> {
        let name = self.name(p);
        let (uds, sock) = (self.run.vsock_uds(name), self.run.vhost_user(name));
        for f in [&uds, &sock] {
            let _ = std::fs::remove_file(f);
        }
        let cid = self.cfg.processors[p].cid;
        let arg = format!("guest-cid={cid},socket={},uds-path={}", sock.display(), uds.display());
        let log = self.run.vsock_log(name);
        let pid_file = self.run.vsock_pid(name);
        process::spawn(&self.cfg.vhost_device_vsock, &["--vm".into(), arg], &log, &pid_file, &self.run.processes())?;
        // QEMU connects to the daemon's socket as it starts: wait for the socket.
        let deadline = Instant::now() + DAEMON_START;
        while !sock.exists() {
            if Instant::now() >= deadline {
                return Err(MachineError::Tool {
                    tool: "vhost-device-vsock".into(),
                    detail: format!(
                        "did not create {} within {DAEMON_START:?}: {}",
                        sock.display(),
                        process::tail(&log, 20)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// A fresh copy-on-write overlay of `image` for a boot.
    fn overlay(&self, image: &Path, overlay: &Path) -> Result<(), MachineError> {
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image)
            .arg(overlay)
            .output()
            .map_err(|e| MachineError::Tool { tool: "qemu-img".into(), detail: format!("{e} (run `make setup`)") })?;
        if !out.status.success() {
            return Err(MachineError::Tool {
                tool: format!("qemu-img create {}", overlay.display()),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

impl Machines for QemuPair {
    fn software(&self, version: &str) -> Result<Software, Error> {
        let mut cache = self.software.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(version) {
            return Ok(s.clone());
        }
        self.cfg.version(version)?;
        let app = images::app_image(&self.cfg, version)?;
        let field = |k: &str| app.manifest.get(k).cloned().unwrap_or_default();
        let sw = Software {
            version: field("version").as_str().unwrap_or_default().to_string(),
            features: serde_json::from_value(field("features")).unwrap_or_default(),
            proto: field("proto").as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(1),
            image: app.path.display().to_string(),
            artifact: Artifact::Disk(app),
        };
        cache.insert(version.to_string(), sw.clone());
        Ok(sw)
    }

    fn preflight(&self, versions: &[&str]) -> Result<Vec<String>, Error> {
        let failed = |check: &str, e: &(dyn std::error::Error + 'static)| Error::Preflight {
            check: check.to_string(),
            detail: crate::error::chain(e),
        };
        let mut done = Vec::new();
        self.check_host().map_err(|e| failed("host", &e))?;
        done.push(format!("QEMU runs ({})", self.cfg.qemu.display()));
        if self.vsock == Vsock::User {
            done.push(format!("vsock daemon present ({})", self.cfg.vhost_device_vsock.display()));
        }
        let boot = self.boot_image().map_err(|e| failed("boot image", &e))?;
        for f in std::iter::once(&boot.kernel).chain(&boot.initrd) {
            images::verify(f).map_err(|e| failed("boot image", &e))?;
        }
        done.push(format!("boot image intact ({})", boot.kernel.parent().unwrap_or(&boot.kernel).display()));
        for v in versions {
            let sw = self.software(v)?;
            images::verify(Path::new(&sw.image)).map_err(|e| failed(&format!("image of {v}"), &e))?;
            done.push(format!("image of {v} intact ({})", sw.image));
        }
        Ok(done)
    }

    async fn provision(&self) -> Result<(), MachineError> {
        for p in ProcId::BOTH {
            let dir = self.run.proc_dir(self.name(p));
            std::fs::create_dir_all(&dir).map_err(|source| process::ProcessError::File { path: dir, source })?;
            if self.vsock == Vsock::User {
                self.start_vsock_daemon(p).await?;
            }
        }
        Ok(())
    }

    async fn start(&self, p: ProcId, sw: &Software, boot: u32) -> Result<Boot, MachineError> {
        let Artifact::Disk(app) = &sw.artifact else {
            return Err(MachineError::Simulated(format!("{} is not an app disk", sw.image)));
        };
        let image = self.boot_image()?;
        let (name, peer) = (self.name(p), self.name(p.other()));
        let overlay = self.run.overlay(name, boot, &app.version);
        self.overlay(&app.path, &overlay)?;
        let vsock = match self.vsock {
            Vsock::Kernel => VsockDevice::Kernel(self.cfg.processors[p].cid),
            Vsock::User => VsockDevice::User(self.run.vhost_user(name)),
        };
        let (qmp, serial, link) = (self.run.qmp(name), self.run.serial(name), self.run.link(name));
        // A restarted QEMU binds its sockets again; the dead one's files would block it.
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&qmp);
        let agent_log = std::env::var("HITLESS_AGENT_LOG").ok();
        // One capture file per boot: QEMU truncates the file it dumps to.
        let capture =
            (std::env::var("HITLESS_LINK_PCAP").as_deref() == Ok("1")).then(|| self.run.link_capture(name, boot));
        let peer_addr = self.cfg.processors[p.other()].link_local();
        let spec = MachineSpec {
            processor: &self.cfg.processors[p],
            accel: self.accel,
            machine: MachineType::for_kernel(self.cfg.kernel),
            // Only TCG guests are told (under KVM, kvmclock and the TSC-deadline timer do better).
            tsc_khz: if self.accel == Accel::Tcg { crate::platform::host_tsc_khz() } else { None },
            kernel: &image.kernel,
            initrd: image.initrd.as_deref(),
            app_overlay: &overlay,
            qmp: &qmp,
            serial: &serial,
            link_local: &link,
            link_remote: &self.run.link(peer),
            peer_addr: &peer_addr,
            // As in the patent's figure, the second processor dials the first.
            dial: p == ProcId::SECOND,
            agent_log: agent_log.as_deref(),
            link_capture: capture.as_deref(),
            vsock: &vsock,
        };
        let _ = std::fs::remove_file(self.run.paused(name));
        let console = ConsoleWatch::from_end(&serial);
        self.consoles.lock().unwrap_or_else(|e| e.into_inner())[p.index()] = Some(ConsoleWatch::from_end(&serial));
        let started = Instant::now();
        let (log, pid_file) = (self.run.qemu_log(name), self.run.qemu_pid(name));
        let helper = process::spawn(&self.cfg.qemu, &argv::argv(&spec), &log, &pid_file, &self.run.processes())?;
        Ok(Boot {
            started,
            pid: Some(helper.pid),
            overlay: Some(overlay.display().to_string()),
            console: (self.vsock == Vsock::User).then_some(console),
        })
    }

    async fn stop(&self, p: ProcId) -> &'static str {
        let how = match self.qmp(p).await {
            Ok(q) => {
                q.quit().await;
                "QMP quit"
            }
            Err(_) => "QMP unreachable; killed",
        };
        process::stop_pid_file(&self.run.qemu_pid(self.name(p)), QUIT_GRACE);
        how
    }

    async fn kill(&self, p: ProcId) {
        let pid_file = self.run.qemu_pid(self.name(p));
        if let Some(pid) = process::read_pid(&pid_file) {
            process::kill_group(pid);
        }
        let _ = std::fs::remove_file(pid_file);
    }

    async fn pause(&self, p: ProcId) -> Result<(), MachineError> {
        // Marked first, so that no hitless process dials it from the moment it stops.
        let marker = self.run.paused(self.name(p));
        std::fs::write(&marker, b"").map_err(|source| process::ProcessError::File { path: marker, source })?;
        Ok(self.qmp(p).await?.pause().await?)
    }

    async fn resume(&self, p: ProcId) -> Result<(), MachineError> {
        self.qmp(p).await?.resume().await?;
        let _ = std::fs::remove_file(self.run.paused(self.name(p)));
        Ok(())
    }

    async fn set_link(&self, p: ProcId, dir: LinkDir, up: bool) -> Result<(), MachineError> {
        // One way: each QEMU sends to its peer's socket *path*, so moving a path
        // away drops what is sent to it (and moving it back heals that way).
        let moved = match dir {
            LinkDir::Both => return Ok(self.qmp(p).await?.set_link(argv::LINK_NIC, up).await?),
            LinkDir::Out => self.run.link(self.name(p.other())),
            LinkDir::In => self.run.link(self.name(p)),
        };
        let aside = moved.with_extension("sock.cut");
        let (from, to) = if up { (&aside, &moved) } else { (&moved, &aside) };
        // A machine restarted meanwhile bound its socket anew: nothing to put back then.
        if up && moved.exists() {
            let _ = std::fs::remove_file(&aside);
            return Ok(());
        }
        std::fs::rename(from, to).map_err(|source| process::ProcessError::File { path: from.clone(), source }.into())
    }

    fn alive(&self, p: ProcId) -> bool {
        process::read_pid(&self.run.qemu_pid(self.name(p))).is_some_and(process::alive)
    }

    fn reach(&self, p: ProcId) -> Reach {
        match (self.alive(p), self.run.paused(self.name(p)).exists()) {
            (false, _) => Reach::Down,
            (true, _) if self.agent_gone(p).is_some() => Reach::AgentGone,
            (true, true) => Reach::Paused,
            (true, false) => Reach::Up,
        }
    }

    fn agent_gone(&self, p: ProcId) -> Option<String> {
        let mut consoles = self.consoles.lock().unwrap_or_else(|e| e.into_inner());
        let watch = consoles[p.index()].get_or_insert_with(|| ConsoleWatch::from_end(&self.run.serial(self.name(p))));
        watch.line_with(console::AGENT_EXITED_MARK)
    }

    fn channel(&self, p: ProcId) -> Channel {
        match self.vsock {
            Vsock::User => Channel::User(self.run.vsock_uds(self.name(p))),
            Vsock::Kernel => Channel::Kernel(self.cfg.processors[p].cid),
        }
    }

    fn diagnostics(&self, p: ProcId, boot: Option<&Boot>) -> Diagnostics {
        let name = self.name(p);
        let serial = self.run.serial(name);
        let start = boot.and_then(|b| b.console.as_ref()).map_or(0, ConsoleWatch::start);
        let text = console::since(&serial, start);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        Diagnostics {
            console: Some(serial.clone()),
            cause: console::first_cause(&text),
            detail: format!(
                "--- last lines of {} ---\n{tail}\n--- {} ---\n{}",
                serial.display(),
                self.run.qemu_log(name).display(),
                process::tail(&self.run.qemu_log(name), 10)
            ),
        }
    }

    async fn app_disk(&self, p: ProcId) -> Result<AppDisk, MachineError> {
        Ok(self.qmp(p).await?.app_disk().await?)
    }

    async fn run_state(&self, p: ProcId) -> Option<String> {
        self.qmp(p).await.ok()?.status().await.ok()
    }
}
