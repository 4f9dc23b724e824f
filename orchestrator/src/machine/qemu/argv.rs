//! The QEMU command line, as pure functions that each return their slice of
//! argv, so that the whole line is unit- and snapshot-tested. Every fixed
//! choice (machine, firmware, devices) is a named constant here.
//!
//! The machine type follows the kernel ([`MachineType::for_kernel`]): the
//! kernel built from source boots on `microvm` (no ACPI, no PCI: virtio-mmio
//! devices that QEMU announces on the kernel command line), Debian's kernel
//! on `q35` (it hangs with ACPI off, and its `virtio_mmio` module ignores
//! command-line devices). The CPU model follows the accelerator: `host` under
//! KVM; `qemu64` under TCG, whose lack of ERMS keeps `rep movsb/stosb` from
//! running byte by byte, with the host's TSC frequency and no local APIC
//! timer on the kernel command line (no calibration under emulation).

use crate::config::{KernelChoice, Processor};
use crate::platform::Accel;
use std::path::{Path, PathBuf};

/// Minimal firmware for q35: boots the kernel directly, far faster than SeaBIOS
/// (microvm's own default firmware is qboot already).
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Kernel command line shared by every processor; the identity is appended.
pub const KERNEL_CMDLINE: &str = concat!(
    "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t ",
    "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 cryptomgr.notests"
);
/// What q35 adds for Debian's kernel: one PCI bus to scan, no PS/2 controller probing, no SMP patching.
pub const Q35_CMDLINE: &str = "pci=lastbus=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd noreplace-smp";
/// Without an initramfs (the built kernel, every driver built in): the kernel
/// mounts the app disk as its root and runs the agent as init, which prepares
/// the guest itself (guest-agent/src/init.rs). No shell, no busybox command per
/// step: ~100 ms of a boot under TCG.
pub const APP_ROOT_CMDLINE: &str = "root=/dev/vda rootfstype=ext4 ro init=/hitless-agent";
/// What TCG adds (with `tsc_early_khz=<host TSC kHz>`): no local APIC timer to calibrate
/// against the PIT (TCG has no TSC-deadline timer; ~0.2 s of boot).
pub const TCG_CMDLINE: &str = "noapictimer";
/// The CPU model under TCG: no ERMS (with it, `rep movsb/stosb` runs one byte per loop under TCG).
pub const TCG_CPU: &str = "qemu64";

/// The QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineType {
    /// `microvm`, ACPI off, PIT and PIC on (without them it hangs under TCG), virtio-mmio devices.
    Microvm,
    /// `q35` with qboot and virtio-pci devices.
    Q35,
}

impl MachineType {
    /// The machine that boots `kernel` fastest.
    pub fn for_kernel(kernel: KernelChoice) -> Self {
        match kernel {
            KernelChoice::Built => MachineType::Microvm,
            KernelChoice::Debian => MachineType::Q35,
        }
    }

    /// The device model of virtio `kind` (e.g. `virtio-blk`) on this machine's transport.
    fn virtio(self, kind: &str) -> String {
        match self {
            MachineType::Microvm => format!("{kind}-device"),
            MachineType::Q35 => format!("{kind}-pci"),
        }
    }
}

/// How the guest's vsock device is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// Kernel vhost-vsock with this CID.
    Kernel(u32),
    /// vhost-user socket of a vhost-device-vsock daemon.
    User(PathBuf),
}

/// Everything one QEMU invocation needs.
#[derive(Debug, Clone)]
pub struct MachineSpec<'a> {
    /// The processor.
    pub processor: &'a Processor,
    pub accel: Accel,
    /// Machine type (from the kernel).
    pub machine: MachineType,
    /// The host's TSC frequency in kHz, told to the guest under TCG.
    pub tsc_khz: Option<u64>,
    /// Kernel image.
    pub kernel: &'a Path,
    /// Initramfs, for a kernel that needs one (Debian's: modules); without one
    /// the kernel boots the app disk as its root.
    pub initrd: Option<&'a Path>,
    /// The app disk overlay to boot.
    pub app_overlay: &'a Path,
    /// QMP socket.
    pub qmp: &'a Path,
    /// Serial console log (appended across reloads).
    pub serial: &'a Path,
    /// Our end of the link (datagram socket we bind).
    pub link_local: &'a Path,
    /// The peer's end of the link.
    pub link_remote: &'a Path,
    /// The peer's IPv6 link-local address.
    pub peer_addr: &'a str,
    /// Whether this processor dials the link.
    pub dial: bool,
    /// The agent's log filter (`HITLESS_AGENT_LOG` on the host), if any.
    pub agent_log: Option<&'a str>,
    /// Where QEMU writes every frame on the link as pcap (`HITLESS_LINK_PCAP=1`), if anywhere.
    pub link_capture: Option<&'a Path>,
    /// vsock device.
    pub vsock: &'a VsockDevice,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Machine, accelerator, CPU, memory.
pub fn machine_args(m: &MachineSpec) -> Vec<String> {
    let (accel, cpu) = match m.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", TCG_CPU),
    };
    let mut machine = match m.machine {
        MachineType::Microvm => format!("microvm,accel={accel},acpi=off,pit=on,pic=on"),
        MachineType::Q35 => format!("q35,accel={accel},smbus=off,sata=off,usb=off,vmport=off"),
    };
    if matches!(m.vsock, VsockDevice::User(_)) {
        // vhost-user needs guest memory the daemon can map.
        machine.push_str(",memory-backend=mem");
    }
    let mut v: Vec<String> = vec![
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-machine".into(),
        machine,
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        m.processor.vcpus.to_string(),
        "-m".into(),
        format!("{}M", m.processor.memory_mib),
    ];
    if matches!(m.vsock, VsockDevice::User(_)) {
        v.push("-object".into());
        v.push(format!("memory-backend-memfd,id=mem,size={}M,share=on", m.processor.memory_mib));
    }
    if m.machine == MachineType::Microvm {
        // Virtio 1.0 over MMIO (QEMU 7.2 defaults to the legacy interface there).
        v.extend(["-global".into(), "virtio-mmio.force-legacy=false".into()]);
    }
    v
}

/// Firmware, kernel, initramfs (if any) and the command line carrying the processor's identity.
pub fn boot_args(m: &MachineSpec) -> Vec<String> {
    let mut append = KERNEL_CMDLINE.to_string();
    if m.machine == MachineType::Q35 {
        append.push_str(&format!(" {Q35_CMDLINE}"));
    }
    if m.initrd.is_none() {
        append.push_str(&format!(" {APP_ROOT_CMDLINE}"));
    }
    if m.accel == Accel::Tcg {
        append.push_str(&format!(" {TCG_CMDLINE}"));
        if let Some(khz) = m.tsc_khz {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    append.push_str(&format!(" hitless.name={} hitless.peer={}", m.processor.name, m.peer_addr));
    if m.dial {
        append.push_str(" hitless.dial=1");
    }
    if let Some(log) = m.agent_log.filter(|l| !l.is_empty() && !l.contains(char::is_whitespace)) {
        append.push_str(&format!(" hitless.log={log}"));
    }
    let mut v = Vec::new();
    if m.machine == MachineType::Q35 && Path::new(QBOOT).is_file() {
        v.extend(["-bios".into(), QBOOT.into()]);
    }
    v.extend(["-kernel".into(), s(m.kernel)]);
    if let Some(initrd) = m.initrd {
        v.extend(["-initrd".into(), s(initrd)]);
    }
    v.extend(["-append".into(), append]);
    v
}

/// Serial console to a file and QMP on a unix socket.
pub fn control_args(m: &MachineSpec) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("file,id=serial,path={},append=on", s(m.serial)),
        "-serial".into(),
        "chardev:serial".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", s(m.qmp)),
    ]
}

/// Node name of the app disk's qcow2 overlay; QMP queries look for it.
pub const APP_NODE: &str = "app";

/// The app disk: a qcow2 overlay over the version's read-only image.
pub fn disk_args(m: &MachineSpec) -> Vec<String> {
    vec![
        "-blockdev".into(),
        format!("driver=file,filename={},node-name={APP_NODE}-file", s(m.app_overlay)),
        "-blockdev".into(),
        format!("driver=qcow2,file={APP_NODE}-file,node-name={APP_NODE}"),
        "-device".into(),
        format!("{},drive={APP_NODE},id=app-disk", m.machine.virtio("virtio-blk")),
    ]
}

/// Id of the link's netdev.
pub const LINK_NETDEV: &str = "link";
/// Device id of the link NIC: QMP `set_link` takes it.
pub const LINK_NIC: &str = "link-nic";

/// The inter-VM link: a dgram netdev between two unix datagram sockets (survives either QEMU restarting).
pub fn link_args(m: &MachineSpec) -> Vec<String> {
    // A PCI NIC would load an option ROM nobody needs.
    let romfile = if m.machine == MachineType::Q35 { ",romfile=" } else { "" };
    let capture = m.link_capture.map(|f| {
        // Both directions as QEMU's network layer sees them (frames up to 64 KiB).
        ["-object".to_string(), format!("filter-dump,id=link-dump,netdev={LINK_NETDEV},file={}", s(f))]
    });
    let mut v = vec![
        "-netdev".into(),
        format!(
            "dgram,id={LINK_NETDEV},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            s(m.link_local),
            s(m.link_remote)
        ),
        "-device".into(),
        format!(
            "{},netdev={LINK_NETDEV},id={LINK_NIC},mac={}{romfile}",
            m.machine.virtio("virtio-net"),
            m.processor.mac
        ),
    ];
    v.extend(capture.into_iter().flatten());
    v
}

/// The vsock device.
pub fn vsock_args(m: &MachineSpec) -> Vec<String> {
    match m.vsock {
        VsockDevice::Kernel(cid) => {
            vec!["-device".into(), format!("{},guest-cid={cid}", m.machine.virtio("vhost-vsock"))]
        }
        VsockDevice::User(sock) => vec![
            "-chardev".into(),
            format!("socket,id=vsock,path={}", s(sock)),
            "-device".into(),
            format!("{},chardev=vsock", m.machine.virtio("vhost-user-vsock")),
        ],
    }
}

/// The whole argv after the binary.
pub fn argv(m: &MachineSpec) -> Vec<String> {
    [machine_args(m), boot_args(m), control_args(m), disk_args(m), link_args(m), vsock_args(m)].concat()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn proc() -> Processor {
        Processor { name: "p122".into(), mac: "52:54:00:00:01:22".into(), memory_mib: 256, vcpus: 1, cid: 4 }
    }

    /// The argv of p122 on `machine` under TCG with the userspace vsock daemon, one argument a line.
    fn user_vsock_tcg(machine: MachineType) -> String {
        // As the machine's boot image has it: only Debian's kernel needs an initramfs.
        let initrd = (machine == MachineType::Q35).then_some(Path::new("/cache/boot/initramfs.cpio"));
        let p = proc();
        let vs = VsockDevice::User("/run/p122/vhost-vsock.sock".into());
        let m = MachineSpec {
            processor: &p,
            accel: Accel::Tcg,
            machine,
            tsc_khz: Some(2_596_138),
            kernel: Path::new("/cache/boot/vmlinuz"),
            initrd,
            app_overlay: Path::new("/run/p122/app-1-1.0.0.qcow2"),
            qmp: Path::new("/run/p122/qmp.sock"),
            serial: Path::new("/run/p122/serial.log"),
            link_local: Path::new("/run/p122/link.sock"),
            link_remote: Path::new("/run/p121/link.sock"),
            peer_addr: "fe80::5054:ff:fe00:121",
            dial: true,
            agent_log: None,
            link_capture: None,
            vsock: &vs,
        };
        argv(&m).join("\n").replace(&format!("-bios\n{QBOOT}\n"), "")
    }

    /// Debian's kernel: q35, PCI devices.
    #[test]
    fn argv_user_vsock_tcg() {
        let argv = user_vsock_tcg(MachineType::for_kernel(KernelChoice::Debian));
        assert!(argv.contains("-initrd") && !argv.contains("init=/hitless-agent"), "{argv}");
        insta::assert_snapshot!(argv);
    }

    /// The built kernel: microvm, virtio-mmio devices.
    #[test]
    fn argv_microvm_user_vsock_tcg() {
        let argv = user_vsock_tcg(MachineType::for_kernel(KernelChoice::Built));
        assert!(!argv.contains("-pci") && !argv.contains("-bios") && !argv.contains("pci=lastbus"), "{argv}");
        assert!(!argv.contains("-initrd") && argv.contains(APP_ROOT_CMDLINE), "{argv}");
        insta::assert_snapshot!(argv);
    }

    #[test]
    fn kernel_vsock_and_kvm() {
        let p = proc();
        let vs = VsockDevice::Kernel(4);
        for machine in [MachineType::Q35, MachineType::Microvm] {
            let m = MachineSpec {
                processor: &p,
                accel: Accel::Kvm,
                machine,
                tsc_khz: Some(2_596_138),
                kernel: Path::new("k"),
                initrd: Some(Path::new("i")),
                app_overlay: Path::new("o"),
                qmp: Path::new("q"),
                serial: Path::new("s"),
                link_local: Path::new("a"),
                link_remote: Path::new("b"),
                peer_addr: "fe80::1",
                dial: false,
                agent_log: None,
                link_capture: (machine == MachineType::Microvm).then_some(Path::new("/run/p122/link-1.pcap")),
                vsock: &vs,
            };
            let a = argv(&m);
            // The link capture is there when asked for, and only then.
            let dump = "filter-dump,id=link-dump,netdev=link,file=/run/p122/link-1.pcap".to_string();
            assert_eq!(a.contains(&dump), machine == MachineType::Microvm, "{a:?}");
            let (name, vsock) = match machine {
                MachineType::Q35 => ("q35", "vhost-vsock-pci,guest-cid=4"),
                MachineType::Microvm => ("microvm", "vhost-vsock-device,guest-cid=4"),
            };
            assert!(a.contains(&vsock.to_string()), "{a:?}");
            assert!(a.iter().any(|x| x.starts_with(&format!("{name},accel=kvm")) && !x.contains("memory-backend")));
            assert!(a.contains(&"host".to_string()));
            assert!(!a.iter().any(|x| x.contains("memfd")));
            assert!(!a.iter().any(|x| x.contains("hitless.dial")));
            // KVM guests keep their APIC timer and calibrate (or use kvmclock).
            assert!(!a.iter().any(|x| x.contains("noapictimer") || x.contains("tsc_early_khz")), "{a:?}");
        }
    }
}
