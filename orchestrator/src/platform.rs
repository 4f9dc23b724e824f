//! Where the processors run: the [`Platform`] of a testbed, chosen once at
//! `hitless up` and recorded in its state. QEMU guests need an accelerator
//! and a vsock transport; the simulated pair needs neither, so those choices
//! exist only inside [`Platform::Qemu`].
//!
//! A `/dev/kvm` that exists is not enough for KVM: in a nested sandbox without
//! VMX/SVM, KVM starts and then hangs the guest. So `auto` needs the device to
//! open *and* the CPU to advertise hardware virtualization; otherwise TCG.
//!
//! Under TCG a guest reads the host's TSC, so the host's TSC frequency
//! ([`host_tsc_khz`], found once) is the guest's too: told on the kernel
//! command line, it spares the guest a calibration (and keeps microvm from
//! hanging at "Marking TSC unstable").

use crate::config::{AccelChoice, VsockMode};
use serde::{Deserialize, Serialize};

/// Where a testbed's processors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// QEMU guests.
    Qemu {
        /// Hardware virtualization or emulation.
        accel: Accel,
        /// How the host reaches each guest's vsock.
        vsock: Vsock,
    },
    /// Real agents in the orchestrator's process ([`crate::machine::sim`]).
    Simulated,
}

/// The accelerator of a QEMU guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (several times slower; timeouts scale with it).
    Tcg,
}

/// The host side of a guest's vsock device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vsock {
    /// Kernel vhost-vsock (`/dev/vhost-vsock`), reached by CID.
    Kernel,
    /// The userspace vhost-device-vsock daemon, one per processor, reached through its unix socket.
    User,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl std::fmt::Display for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vsock::Kernel => "kernel",
            Vsock::User => "user",
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Platform::Qemu { accel, vsock } => write!(f, "qemu ({accel}, vsock {vsock})"),
            Platform::Simulated => f.write_str("simulated pair (in-process agents)"),
        }
    }
}

impl Platform {
    /// The accelerator, for QEMU guests.
    pub fn accel(self) -> Option<Accel> {
        match self {
            Platform::Qemu { accel, .. } => Some(accel),
            Platform::Simulated => None,
        }
    }

    /// How much slower than native the processors run: waits scale with it.
    pub fn slowdown(self) -> u32 {
        match self {
            Platform::Qemu { accel: Accel::Tcg, .. } => 3,
            Platform::Qemu { accel: Accel::Kvm, .. } | Platform::Simulated => 1,
        }
    }
}

/// What the host offers for KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostKvm {
    /// `/dev/kvm` opens read-write.
    pub device_usable: bool,
    /// The CPU flags include `vmx` or `svm`.
    pub cpu_virt: bool,
}

impl HostKvm {
    /// Probe this host.
    pub fn probe() -> Self {
        let device_usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        let cpu_virt = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| {
                s.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(false);
        HostKvm { device_usable, cpu_virt }
    }
}

/// Pick the accelerator for `choice` on a host offering `host`; the string says why.
pub fn choose_accel(choice: AccelChoice, host: HostKvm) -> Result<(Accel, String), String> {
    let works = host.device_usable && host.cpu_virt;
    let why_not = if !host.device_usable {
        "/dev/kvm is missing or not accessible"
    } else {
        "/dev/kvm exists but the CPU has no vmx/svm flag (nested sandbox: KVM would hang)"
    };
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, "tcg requested".into())),
        AccelChoice::Kvm if works => Ok((Accel::Kvm, "kvm requested and usable".into())),
        AccelChoice::Kvm => Err(format!("accelerator kvm requested, but {why_not}; use accelerator: auto or tcg")),
        AccelChoice::Auto if works => Ok((Accel::Kvm, "auto: /dev/kvm usable and the CPU has vmx/svm".into())),
        AccelChoice::Auto => Ok((Accel::Tcg, format!("auto: {why_not}"))),
    }
}

/// Pick the vsock transport for `mode`, given whether `/dev/vhost-vsock` is usable.
pub fn choose_vsock(mode: VsockMode, kernel_usable: bool) -> Result<Vsock, String> {
    match mode {
        VsockMode::Kernel if kernel_usable => Ok(Vsock::Kernel),
        VsockMode::Kernel => {
            Err("vsock: kernel requested but /dev/vhost-vsock is not usable; use vsock: auto or user".into())
        }
        VsockMode::User => Ok(Vsock::User),
        VsockMode::Auto if kernel_usable => Ok(Vsock::Kernel),
        VsockMode::Auto => Ok(Vsock::User),
    }
}

/// Whether this host's `/dev/vhost-vsock` opens.
pub fn kernel_vsock_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-vsock").is_ok()
}

/// The host's TSC frequency in kHz, found once per process: the host kernel's refined
/// calibration, else its detected frequency (both from `dmesg`), else `/proc/cpuinfo`'s
/// "cpu MHz"; `None` if none of them says.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        let dmesg = std::process::Command::new("dmesg")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let khz = tsc_khz_from(&dmesg, &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
        if khz.is_none() {
            tracing::warn!("host TSC frequency unknown (no dmesg line, no cpu MHz): guests calibrate it themselves");
        }
        khz
    })
}

/// The TSC frequency in kHz that the host kernel's log or cpuinfo states (see [`host_tsc_khz`]).
pub fn tsc_khz_from(dmesg: &str, cpuinfo: &str) -> Option<u64> {
    // "1234.567" MHz -> 1234567 kHz, without floating point.
    let khz = |mhz: &str| {
        let (int, frac) = mhz.trim().split_once('.').unwrap_or((mhz.trim(), ""));
        let frac: String = frac.chars().chain("000".chars()).take(3).collect();
        let v = int.parse::<u64>().ok()? * 1000 + frac.parse::<u64>().ok()?;
        (v > 0).then_some(v)
    };
    let after = |line: &str, marker: &str| {
        let rest = &line[line.find(marker)? + marker.len()..];
        khz(rest.split_whitespace().next()?)
    };
    let last = |marker: &str| dmesg.lines().rev().find_map(|l| after(l, marker));
    last("Refined TSC clocksource calibration: ")
        .or_else(|| last("tsc: Detected "))
        .or_else(|| cpuinfo.lines().filter(|l| l.starts_with("cpu MHz")).find_map(|l| khz(l.split(':').nth(1)?)))
}

/// The host's CPU time so far, all CPUs together, in clock ticks (`/proc/stat`'s
/// first line). On a virtual machine sharing its CPUs, "steal" is the time its
/// hypervisor ran something else while this machine wanted to run: timings
/// taken while it grows measure the neighbours too (`make bench` says how much).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
    /// Stolen by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    /// Now, or `None` where there is no `/proc/stat`.
    pub fn now() -> Option<CpuTimes> {
        CpuTimes::from_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the text of `/proc/stat` (guest time is already counted in user time).
    pub fn from_proc_stat(text: &str) -> Option<CpuTimes> {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        // Kernels before 2.6.11 have no steal column: none stolen.
        Some(CpuTimes { total: v.iter().sum(), steal: v.get(7).copied().unwrap_or(0) })
    }

    /// The share of the CPU time since `earlier` that was stolen (0 when none passed).
    pub fn stolen_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stolen_cpu_time_is_read_from_proc_stat() {
        let at = |user: u64, idle: u64, steal: u64| {
            format!("cpu  {user} 0 100 {idle} 5 0 3 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 99\n")
        };
        let a = CpuTimes::from_proc_stat(&at(1000, 5000, 50)).unwrap_or_default();
        assert_eq!(a, CpuTimes { total: 1000 + 100 + 5000 + 5 + 3 + 50, steal: 50 });
        let b = CpuTimes::from_proc_stat(&at(1300, 5500, 250)).unwrap_or_default();
        // 1000 ticks passed, 200 of them stolen.
        assert!((b.stolen_since(&a) - 0.2).abs() < 1e-9, "{}", b.stolen_since(&a));
        assert_eq!(a.stolen_since(&a), 0.0);
        assert_eq!(CpuTimes::from_proc_stat("cpu0 1 2 3\n"), None);
        assert_eq!(CpuTimes::from_proc_stat("cpu  1 2 x 4\n"), None);
        // An old kernel without the steal column.
        assert_eq!(CpuTimes::from_proc_stat("cpu  1 2 3 4\n"), Some(CpuTimes { total: 10, steal: 0 }));
    }

    #[test]
    fn the_tsc_frequency_comes_from_the_best_source_there_is() {
        let dmesg = "[    0.000064] tsc: Detected 2596.138 MHz processor\n\
                     [    1.2] clocksource: tsc-early: mask: 0xffffffffffffffff\n\
                     [    2.0] tsc: Refined TSC clocksource calibration: 2596.0995 MHz\n";
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2400.5\nflags\t: fpu\n";
        assert_eq!(tsc_khz_from(dmesg, cpuinfo), Some(2_596_099));
        assert_eq!(tsc_khz_from(dmesg.lines().next().unwrap_or_default(), cpuinfo), Some(2_596_138));
        assert_eq!(tsc_khz_from("", cpuinfo), Some(2_400_500));
        assert_eq!(tsc_khz_from("tsc: Detected junk MHz", "cpu MHz : 0"), None);
    }

    #[test]
    fn auto_needs_device_and_cpu_flag() {
        let h = |d, c| HostKvm { device_usable: d, cpu_virt: c };
        assert_eq!(choose_accel(AccelChoice::Auto, h(true, true)).map(|x| x.0), Ok(Accel::Kvm));
        // The trap of these machines: the device exists, the CPU cannot.
        let (a, why) = choose_accel(AccelChoice::Auto, h(true, false)).unwrap_or((Accel::Kvm, String::new()));
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("vmx/svm"), "{why}");
        assert_eq!(choose_accel(AccelChoice::Auto, h(false, true)).map(|x| x.0), Ok(Accel::Tcg));
        assert!(choose_accel(AccelChoice::Kvm, h(true, false)).is_err());
        assert_eq!(choose_accel(AccelChoice::Tcg, h(true, true)).map(|x| x.0), Ok(Accel::Tcg));
    }

    #[test]
    fn vsock_auto_prefers_the_kernel_and_kernel_mode_requires_it() {
        assert_eq!(choose_vsock(VsockMode::Auto, true), Ok(Vsock::Kernel));
        assert_eq!(choose_vsock(VsockMode::Auto, false), Ok(Vsock::User));
        assert!(choose_vsock(VsockMode::Kernel, false).is_err());
        assert_eq!(choose_vsock(VsockMode::User, true), Ok(Vsock::User));
    }

    #[test]
    fn the_platform_is_recorded_as_one_value() {
        let q = Platform::Qemu { accel: Accel::Tcg, vsock: Vsock::User };
        let json = serde_json::to_string(&q).unwrap_or_default();
        assert_eq!(json, r#"{"qemu":{"accel":"tcg","vsock":"user"}}"#);
        assert_eq!(serde_json::to_string(&Platform::Simulated).unwrap_or_default(), r#""simulated""#);
    }
}
