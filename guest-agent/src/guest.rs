//! Guest-side settings: the orchestrator passes the processor's identity on
//! the kernel command line (`hitless.name=`, `hitless.peer=`, `hitless.dial=`,
//! and `hitless.log=` when the host's `HITLESS_AGENT_LOG` asks for more logging),
//! so one boot image serves every processor and version.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

/// Settings read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// Processor name.
    pub name: String,
    /// The peer's IPv6 link-local address.
    pub peer: Ipv6Addr,
    /// Whether this side dials the link (the other side accepts).
    pub dial: bool,
    /// Log filter (`hitless.log=debug`), if the host asked for one.
    pub log: Option<String>,
}

/// Parse `hitless.*` parameters out of a kernel command line.
pub fn parse_cmdline(line: &str) -> Result<Cmdline, String> {
    let get = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let name = get("hitless.name").ok_or("kernel command line lacks hitless.name=")?.to_string();
    let peer = get("hitless.peer").ok_or("kernel command line lacks hitless.peer=")?;
    let peer = peer.parse().map_err(|e| format!("hitless.peer={peer}: {e}"))?;
    let dial = get("hitless.dial") == Some("1");
    Ok(Cmdline { name, peer, dial, log: get("hitless.log").map(str::to_string) })
}

/// The peer's link address, scoped to the link interface.
pub fn peer_addr(peer: Ipv6Addr, iface: &str, port: u16) -> Result<SocketAddr, String> {
    let path = format!("/sys/class/net/{iface}/ifindex");
    let idx = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let idx: u32 = idx.trim().parse().map_err(|e| format!("{path}: {e}"))?;
    Ok(SocketAddr::V6(SocketAddrV6::new(peer, port, 0, idx)))
}

/// Request ids the database holds in a guest with `meminfo` (`/proc/meminfo`
/// as the agent starts): one per KiB available. Measured on the probe's
/// workload (a unit opened, updated and closed by three requests), the
/// database grows by ~350 bytes per request id, its tables sized up front add
/// ~150, and a step-up copies the units again: a KiB leaves the guest room.
pub fn db_capacity(meminfo: &str) -> Result<usize, String> {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or("/proc/meminfo has no MemAvailable line in kB")?;
    Ok(kib)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_identity() {
        let c = parse_cmdline("console=ttyS0 quiet hitless.name=p122 hitless.peer=fe80::5054:ff:fe00:1 hitless.dial=1")
            .unwrap();
        assert_eq!(c.name, "p122");
        assert_eq!(c.peer, "fe80::5054:ff:fe00:1".parse::<Ipv6Addr>().unwrap());
        assert!(c.dial);
        let c = parse_cmdline("hitless.name=p121 hitless.peer=fe80::2").unwrap();
        assert!(!c.dial);
        assert!(parse_cmdline("hitless.name=p121").unwrap_err().contains("hitless.peer"));
        assert!(parse_cmdline("hitless.name=a hitless.peer=nope").is_err());
    }

    #[test]
    fn database_capacity_follows_the_memory_available() {
        let meminfo = "MemTotal:         246204 kB\nMemFree:          230000 kB\nMemAvailable:     227928 kB\n";
        assert_eq!(db_capacity(meminfo), Ok(227_928));
        assert!(db_capacity("MemTotal: 1 kB\n").is_err());
    }
}
