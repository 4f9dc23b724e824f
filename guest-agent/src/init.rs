//! The agent as the guest's init. The built kernel mounts the app disk as its
//! root and runs `/hitless-agent` as PID 1 (Debian's kernel gets there through
//! its initramfs, which loads modules and switches root to the app disk): no
//! shell, no busybox command per step. Under TCG each of those was a fork and
//! an exec of a 2-MB binary, 6-25 ms apiece; the whole init script took
//! ~150 ms of a ~0.7-s boot.
//!
//! PID 1 prepares the guest (mounts, sysctls, the link NIC up), then forks:
//! the child goes on as the agent, the parent stays init — it reaps orphans
//! and, when the agent dies, says so on the console and keeps the machine up,
//! as an OS whose application died would (the host fences it).
#![allow(unsafe_code)] // mount(2), fork(2) and waitpid(2): std has none of them.

use std::ffi::CString;
use std::time::Duration;

/// What init prints when the agent has exited (the host watches the console for it).
pub const AGENT_EXITED: &str = "init: the agent exited";
/// The version's start arguments on the app disk, one per line (a test image's flaw).
pub const ARGS_FILE: &str = "/agent.args";
/// The inter-VM link's NIC.
pub const LINK_NIC: &str = "eth0";
/// The link NIC's MTU: the largest virtio-net takes and whose frames fit
/// QEMU's datagram backend (64 KiB). A batch of updates (tens of units, a
/// few KB to tens of KB) then crosses the link as one TCP segment instead of
/// one per 1,448 bytes, and the receiver acknowledges one segment: under TCG
/// every packet costs both guests an interrupt and a trip through their
/// network stacks, emulated. Measured: +20% replicated acks/s, p99 -0.7 ms.
pub const LINK_MTU: u32 = 65520;

/// Prepare the guest and fork; returns in the child (the agent) with the
/// version's start arguments. The parent never returns. Every failure says
/// `init: ...` on the console: the host reports the first such line when a
/// processor does not come up.
pub fn boot() -> Vec<String> {
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        if let Err(e) = mount(fstype, target) {
            println!("init: cannot mount {target} ({e})");
        }
    }
    // Transparent huge pages: the kernel turns them off below 512 MiB of RAM,
    // but the database's tables (sized up front) fault in 2 MiB at a time with them.
    let _ = std::fs::write("/sys/kernel/mm/transparent_hugepage/enabled", "always");
    // A point-to-point link: no duplicate-address detection, so the link-local
    // address is usable as the NIC comes up (set before it does).
    for conf in ["default", "all"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0");
    }
    if !wait_for(&format!("/sys/class/net/{LINK_NIC}"), Duration::from_secs(5)) {
        println!("init: no link NIC ({LINK_NIC})");
    }
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{LINK_NIC}/accept_dad"), "0");
    // Before it is up (sysfs's `mtu` applies it as `ip link set mtu` does).
    if let Err(e) = std::fs::write(format!("/sys/class/net/{LINK_NIC}/mtu"), LINK_MTU.to_string()) {
        // Not "init: ": the host reports the first such line as why a boot failed.
        println!("init (going on): cannot set {LINK_NIC}'s MTU to {LINK_MTU} ({e}); the link keeps its default");
    }
    for nic in ["lo", LINK_NIC] {
        if let Err(e) = link_up(nic) {
            println!("init: cannot bring {nic} up ({e})");
        }
    }
    let args = match std::fs::read_to_string(ARGS_FILE) {
        Ok(text) => start_args(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            println!("init: cannot read {ARGS_FILE} ({e})");
            Vec::new()
        }
    };
    // SAFETY: called first thing in main, before any thread exists: the child
    // is a copy of a single-threaded process and may go on as it likes.
    match unsafe { libc::fork() } {
        0 => args,
        -1 => {
            // Without a separate init the agent still runs; only its death would go unreported.
            println!("init: fork failed ({}); the agent runs as PID 1", std::io::Error::last_os_error());
            args
        }
        agent => supervise(agent),
    }
}

/// PID 1 from here on: reap every child, report the agent's end, never exit
/// (PID 1 exiting panics the kernel).
fn supervise(agent: libc::pid_t) -> ! {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only the status integer it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == agent {
            println!("{AGENT_EXITED} (status {})", exit_status(status));
        } else if pid == -1 {
            // No children left (ECHILD), or interrupted: nothing to reap for now.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The status as a shell reports it: the exit code, or 128 + the signal.
fn exit_status(status: libc::c_int) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let s = std::process::ExitStatus::from_raw(status);
    s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(-1)
}

/// One argument per line; blank lines are not arguments.
pub fn start_args(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let (source, target_c, fstype_c) = (c(fstype)?, c(target)?, c(fstype)?);
    // SAFETY: three NUL-terminated strings that outlive the call, no flags, no data.
    let rc = unsafe { libc::mount(source.as_ptr(), target_c.as_ptr(), fstype_c.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Already there (Debian's initramfs, or the kernel's own devtmpfs mount): fine.
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(e)
}

/// Set IFF_UP through sysfs (`flags` is writable, and the kernel applies it
/// as `ip link set up` does): no netlink or ioctl code.
fn link_up(nic: &str) -> std::io::Result<()> {
    let path = format!("/sys/class/net/{nic}/flags");
    let flags = std::fs::read_to_string(&path)?;
    let up = flags_with_up(&flags).ok_or_else(|| std::io::Error::other(format!("{path}: {flags:?}")))?;
    std::fs::write(&path, up)
}

/// `0x1002` -> `0x1003`: the flags as sysfs shows them, with IFF_UP set.
pub fn flags_with_up(flags: &str) -> Option<String> {
    let v = u32::from_str_radix(flags.trim().strip_prefix("0x")?, 16).ok()?;
    Some(format!("{:#x}", v | libc::IFF_UP as u32))
}

fn wait_for(path: &str, bound: Duration) -> bool {
    let start = std::time::Instant::now();
    while !std::path::Path::new(path).exists() {
        if start.elapsed() > bound {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bringing_a_nic_up_sets_only_iff_up() {
        assert_eq!(flags_with_up("0x1002\n").as_deref(), Some("0x1003"));
        assert_eq!(flags_with_up("0x9").as_deref(), Some("0x9"));
        assert_eq!(flags_with_up("1002"), None, "sysfs writes hex with 0x");
        assert_eq!(flags_with_up("0xzz"), None);
    }

    #[test]
    fn start_args_are_one_per_line() {
        assert_eq!(start_args("--flaw\nbad-eval\n"), vec!["--flaw", "bad-eval"]);
        assert_eq!(start_args("--flaw\r\ncrash\n\n"), vec!["--flaw", "crash"]);
        assert!(start_args("").is_empty());
    }

    #[test]
    fn the_agent_s_end_reads_as_a_shell_would_say_it() {
        // Exit code 70 (a crash flaw), and SIGABRT (a panic: the agent aborts).
        assert_eq!(exit_status(70 << 8), 70);
        assert_eq!(exit_status(libc::SIGABRT), 128 + libc::SIGABRT);
    }
}
