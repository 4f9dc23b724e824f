//! The QEMU command line, as pure functions that each return their slice of
//! argv, so that the whole line is unit- and snapshot-tested. Every fixed
//! choice (machine, firmware, devices) is a named constant here.

use crate::config::Processor;
use crate::platform::Accel;
use std::path::{Path, PathBuf};

/// Minimal firmware: boots the kernel directly, far faster than SeaBIOS.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Kernel command line shared by every processor; the identity is appended.
pub const KERNEL_CMDLINE: &str = concat!(
    "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t pci=lastbus=0 ",
    "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd ",
    "tsc=reliable no_timer_check noreplace-smp rcupdate.rcu_expedited=1 cryptomgr.notests"
);

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
    /// Kernel image.
    pub kernel: &'a Path,
    pub initrd: &'a Path,
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
        Accel::Tcg => ("tcg", "max"),
    };
    let mut machine = format!("q35,accel={accel},smbus=off,sata=off,usb=off,vmport=off");
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
    v
}

/// Firmware, kernel, initramfs and the command line carrying the processor's identity.
pub fn boot_args(m: &MachineSpec) -> Vec<String> {
    let mut append = format!("{KERNEL_CMDLINE} hitless.name={} hitless.peer={}", m.processor.name, m.peer_addr);
    if m.dial {
        append.push_str(" hitless.dial=1");
    }
    if let Some(log) = m.agent_log.filter(|l| !l.is_empty() && !l.contains(char::is_whitespace)) {
        append.push_str(&format!(" hitless.log={log}"));
    }
    let mut v = Vec::new();
    if Path::new(QBOOT).is_file() {
        v.extend(["-bios".into(), QBOOT.into()]);
    }
    v.extend(["-kernel".into(), s(m.kernel), "-initrd".into(), s(m.initrd), "-append".into(), append]);
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
        format!("virtio-blk-pci,drive={APP_NODE},id=app-disk"),
    ]
}

/// Id of the link's netdev.
pub const LINK_NETDEV: &str = "link";
/// Device id of the link NIC: QMP `set_link` takes it.
pub const LINK_NIC: &str = "link-nic";

/// The inter-VM link: a dgram netdev between two unix datagram sockets (survives either QEMU restarting).
pub fn link_args(m: &MachineSpec) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!(
            "dgram,id={LINK_NETDEV},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            s(m.link_local),
            s(m.link_remote)
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev={LINK_NETDEV},id={LINK_NIC},mac={},romfile=", m.processor.mac),
    ]
}

/// The vsock device.
pub fn vsock_args(m: &MachineSpec) -> Vec<String> {
    match m.vsock {
        VsockDevice::Kernel(cid) => vec!["-device".into(), format!("vhost-vsock-pci,guest-cid={cid}")],
        VsockDevice::User(sock) => vec![
            "-chardev".into(),
            format!("socket,id=vsock,path={}", s(sock)),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock".into(),
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

    #[test]
    fn argv_user_vsock_tcg() {
        let p = proc();
        let vs = VsockDevice::User("/run/p122/vhost-vsock.sock".into());
        let m = MachineSpec {
            processor: &p,
            accel: Accel::Tcg,
            kernel: Path::new("/cache/boot/vmlinuz"),
            initrd: Path::new("/cache/boot/initramfs.cpio"),
            app_overlay: Path::new("/run/p122/app-1-1.0.0.qcow2"),
            qmp: Path::new("/run/p122/qmp.sock"),
            serial: Path::new("/run/p122/serial.log"),
            link_local: Path::new("/run/p122/link.sock"),
            link_remote: Path::new("/run/p121/link.sock"),
            peer_addr: "fe80::5054:ff:fe00:121",
            dial: true,
            agent_log: None,
            vsock: &vs,
        };
        let argv = argv(&m).join("\n").replace(&format!("-bios\n{QBOOT}\n"), "");
        insta::assert_snapshot!(argv);
    }

    #[test]
    fn kernel_vsock_and_kvm() {
        let p = proc();
        let vs = VsockDevice::Kernel(4);
        let m = MachineSpec {
            processor: &p,
            accel: Accel::Kvm,
            kernel: Path::new("k"),
            initrd: Path::new("i"),
            app_overlay: Path::new("o"),
            qmp: Path::new("q"),
            serial: Path::new("s"),
            link_local: Path::new("a"),
            link_remote: Path::new("b"),
            peer_addr: "fe80::1",
            dial: false,
            agent_log: None,
            vsock: &vs,
        };
        let a = argv(&m);
        assert!(a.contains(&"vhost-vsock-pci,guest-cid=4".to_string()));
        assert!(a.iter().any(|x| x.starts_with("q35,accel=kvm") && !x.contains("memory-backend")));
        assert!(a.contains(&"host".to_string()));
        assert!(!a.iter().any(|x| x.contains("memfd")));
        assert!(!a.iter().any(|x| x.contains("hitless.dial")));
    }
}
