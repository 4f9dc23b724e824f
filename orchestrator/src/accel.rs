//! Choosing the accelerator. A `/dev/kvm` that exists is not enough: in a
//! nested sandbox without VMX/SVM, KVM starts and then hangs the guest. So
//! `auto` needs the device to open *and* the CPU to advertise hardware
//! virtualization; otherwise TCG. The choice and its reason go into the
//! transcript.

use crate::config::AccelChoice;

/// The accelerator a processor runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
    /// No VM: the simulated pair's processors run in-process ([`crate::sim`]).
    Simulated,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Simulated => "none (simulated pair)",
        })
    }
}

/// What the host offers.
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
pub fn choose(choice: AccelChoice, host: HostKvm) -> Result<(Accel, String), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_needs_device_and_cpu_flag() {
        let h = |d, c| HostKvm { device_usable: d, cpu_virt: c };
        assert_eq!(choose(AccelChoice::Auto, h(true, true)).map(|x| x.0), Ok(Accel::Kvm));
        // The trap of these machines: the device exists, the CPU cannot.
        let (a, why) = choose(AccelChoice::Auto, h(true, false)).unwrap_or((Accel::Kvm, String::new()));
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("vmx/svm"), "{why}");
        assert_eq!(choose(AccelChoice::Auto, h(false, true)).map(|x| x.0), Ok(Accel::Tcg));
        assert!(choose(AccelChoice::Kvm, h(true, false)).is_err());
        assert_eq!(choose(AccelChoice::Tcg, h(true, true)).map(|x| x.0), Ok(Accel::Tcg));
    }
}
