//! One orchestrator per pair. Every command that changes a pair holds an
//! exclusive `flock` on its run directory's lock file for its whole life; a
//! killed holder's lock goes with its process. The holder writes who it is
//! into the file, so a refused command can say who holds the pair and since
//! when (and the journal says at which step). Read-only commands never lock.

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Who holds a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The command, e.g. `hitless upgrade`.
    pub command: String,
    /// Its process.
    pub pid: u32,
    /// Since when (seconds since the Unix epoch).
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.since % 86_400;
        write!(f, "`{}` (pid {}) since {:02}:{:02}:{:02} UTC", self.command, self.pid, s / 3600, s / 60 % 60, s % 60)
    }
}

/// Why a lock could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another command holds it.
    #[error("held by {0}")]
    Busy(Holder),
    /// The lock file could not be used.
    #[error("{}", path.display())]
    File {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A held lock: released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

/// Take the lock at `path` for `command`, at once or not at all.
pub fn acquire(path: &Path, command: &str) -> Result<Lock, LockError> {
    let file_err = |source| LockError::File { path: path.to_path_buf(), source };
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(file_err)?;
    let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok());
            let unknown = Holder { command: "another hitless command".into(), pid: 0, since: 0 };
            return Err(LockError::Busy(holder.unwrap_or(unknown)));
        }
        Err((_, e)) => return Err(file_err(std::io::Error::from(e))),
    };
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let me = Holder { command: command.into(), pid: std::process::id(), since };
    let text = serde_json::to_string(&me).map_err(|e| file_err(std::io::Error::other(e)))?;
    flock.set_len(0).map_err(file_err)?;
    (&*flock).write_all(text.as_bytes()).map_err(file_err)?;
    Ok(Lock { _flock: flock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_with_the_holder_and_gets_it_once_released() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = d.path().join("lock");
        let held = acquire(&path, "hitless upgrade").unwrap_or_else(|e| panic!("{e}"));
        match acquire(&path, "hitless rollback") {
            Err(LockError::Busy(h)) => {
                assert_eq!((h.command.as_str(), h.pid), ("hitless upgrade", std::process::id()));
                assert!(h.to_string().starts_with("`hitless upgrade` (pid "), "{h}");
            }
            other => panic!("a second command got the lock: {other:?}"),
        }
        drop(held);
        assert!(acquire(&path, "hitless rollback").is_ok(), "the lock outlived its holder");
    }
}
