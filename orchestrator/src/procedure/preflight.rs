//! Checks before anything leaves service: every image the plan will boot
//! (target and fallback) and the boot image are there and intact, QEMU and
//! the vsock daemon are present (the backend's part), the run directory has
//! room for what an upgrade writes, and the target speaks the protocol of the
//! version it must pair with. A failure stops the command before step 201,
//! naming the file or check; `--dry-run` runs the same checks.

use super::journal::Plan;
use crate::error::Error;
use crate::machine::Machines;
use crate::pair::ProcId;
use crate::testbed::Testbed;
use std::path::Path;

/// What an upgrade writes into the run directory at most: two copy-on-write
/// overlays (a few hundred KiB each; the app disk is mounted read-only), the
/// consoles, the journal, the transcript and the histories (about 150 bytes
/// per work request, some hundreds of requests per second).
pub const NEEDED_FREE_BYTES: u64 = 64 << 20;

/// Whether `free` bytes leave room for an upgrade; what was found either way.
pub fn room(free: u64) -> Result<String, String> {
    let mib = |b: u64| b >> 20;
    if free >= NEEDED_FREE_BYTES {
        Ok(format!("{} MiB free in the run directory (an upgrade needs {} MiB)", mib(free), mib(NEEDED_FREE_BYTES)))
    } else {
        Err(format!(
            "only {} KiB free in the run directory, an upgrade needs {} MiB (overlays, journal, histories); free some space first",
            free >> 10,
            mib(NEEDED_FREE_BYTES)
        ))
    }
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() * st.fragment_size())
}

/// Run every check for `plan` on `tb`; what passed, or the first that failed.
pub async fn preflight(tb: &Testbed, plan: &Plan) -> Result<Vec<String>, Error> {
    let failed = |check: &str, detail: String| Error::Preflight { check: check.into(), detail };
    let mut done = tb.machines().preflight(&[plan.to.as_str(), plan.from.as_str()])?;
    let free = free_bytes(&tb.run().root).map_err(|e| failed("space", format!("{}: {e}", tb.run().root.display())))?;
    done.push(room(free).map_err(|d| failed("space", d))?);
    let target = tb.software(&plan.to)?;
    for p in ProcId::BOTH {
        let Ok(s) = tb.agents().poll_status(p).await else { continue };
        if s.hello.proto != target.proto {
            let detail = format!(
                "{} speaks protocol {} ({}), but {} speaks {}: they could not pair",
                plan.to,
                target.proto,
                target.image,
                tb.name(p),
                s.hello.proto
            );
            return Err(failed("protocol", detail));
        }
    }
    done.push(format!("{} speaks protocol {}, as the running processors do", plan.to, target.proto));
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_room_is_refused_with_what_is_needed() {
        let e = room(100 << 10).err().unwrap_or_default();
        assert!(e.contains("only 100 KiB free") && e.contains("needs 64 MiB"), "{e}");
        assert!(room(NEEDED_FREE_BYTES).is_ok());
    }
}
