//! A guest's serial console, read as it grows: whether the agent is listening
//! yet, and — when a guest does not come up — the first line that says why.

use std::path::{Path, PathBuf};

/// What the agent prints on the console once its vsock services listen.
pub const LISTENING_MARK: &str = ") listening";
/// What the guest's init prints when the agent has exited (the machine stays up).
pub const AGENT_EXITED_MARK: &str = hitless_agent::init::AGENT_EXITED;

/// Follows a serial log from an offset, reading only what was appended since the last look.
#[derive(Debug)]
pub struct ConsoleWatch {
    path: PathBuf,
    start: u64,
    offset: u64,
    text: String,
}

impl ConsoleWatch {
    /// Watch `path` from its current end (what a new boot appends).
    pub fn from_end(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        ConsoleWatch { path: path.to_path_buf(), start: offset, offset, text: String::new() }
    }

    /// Where this boot's output starts in the file.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Whether the console has shown `mark` since the watch began.
    pub fn saw(&mut self, mark: &str) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        if !self.text.contains(mark) {
            let mut new = Vec::new();
            if let Ok(mut f) = std::fs::File::open(&self.path) {
                if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut new).is_ok() {
                    self.offset += new.len() as u64;
                    self.text.push_str(&String::from_utf8_lossy(&new));
                }
            }
        }
        self.text.contains(mark)
    }

    /// The line holding `mark`, once the console has shown it.
    pub fn line_with(&mut self, mark: &str) -> Option<String> {
        if !self.saw(mark) {
            return None;
        }
        self.text.lines().find(|l| l.contains(mark)).map(|l| l.trim().to_string())
    }
}

/// The console output of one boot: the file from byte `start` on.
pub fn since(path: &Path, start: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(start).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// The first line of `console` that says why a boot failed: the init's own
/// message first (it names the cause), else the kernel's panic line, with
/// what it means where the kernel's words are about the app disk; once,
/// without the backtrace around it.
pub fn first_cause(console: &str) -> Option<String> {
    let lines = || console.lines().map(|l| strip_stamp(l.trim()));
    lines()
        .find(|l| l.starts_with("init: "))
        .map(str::to_string)
        .or_else(|| lines().find(|l| l.starts_with("Kernel panic")).map(explain_panic))
        .or_else(|| lines().find(|l| l.starts_with("hitless-agent: ")).map(str::to_string))
}

/// The built kernel mounts the app disk as its root and runs the agent from
/// it: its panics there are about the image.
fn explain_panic(line: &str) -> String {
    let meaning = if line.contains("Unable to mount root fs") {
        "the kernel cannot mount the app disk (/dev/vda) as its root: is the image corrupt?"
    } else if line.contains("Requested init") {
        "no agent on the app disk (/hitless-agent), or it does not run"
    } else {
        return line.to_string();
    };
    format!("{meaning} ({line})")
}

/// A kernel line without its `[    1.234567] ` timestamp.
fn strip_stamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_message_beats_the_panic_it_causes() {
        let console = "[    0.512] virtio_blk virtio1: [vda] 16384 512-byte logical blocks\n\
            [    0.600] EXT4-fs (vda): bad geometry: block count exceeds size of device\n\
            init: cannot mount the app disk (/dev/vda): is the image corrupt?\n\
            init: no agent on the app disk (/app/hitless-agent)\n\
            [    0.700] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n\
            [    0.701] CPU: 0 PID: 1 Comm: init\n";
        assert_eq!(
            first_cause(console).as_deref(),
            Some("init: cannot mount the app disk (/dev/vda): is the image corrupt?")
        );
        let panic_only = "[    0.7] Kernel panic - not syncing: Out of memory\n[    0.7] Call Trace:\n";
        assert_eq!(first_cause(panic_only).as_deref(), Some("Kernel panic - not syncing: Out of memory"));
        assert_eq!(first_cause("all quiet\n"), None);
        // The built kernel mounts the app disk itself: its panics about it say what they mean.
        let corrupt = "[    0.43] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(254,0)\n";
        let said = first_cause(corrupt).unwrap_or_default();
        assert!(
            said.starts_with("the kernel cannot mount the app disk") && said.contains("is the image corrupt?"),
            "{said}"
        );
        let no_agent = "Kernel panic - not syncing: Requested init /hitless-agent failed (error -2).\n";
        let said = first_cause(no_agent).unwrap_or_default();
        assert!(said.starts_with("no agent on the app disk (/hitless-agent)") && said.contains("error -2"), "{said}");
    }

    #[test]
    fn a_watch_sees_only_what_its_boot_printed() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = d.path().join("serial.log");
        std::fs::write(&log, "hitless-agent 1.0.0 (p121) listening\n").unwrap_or_default();
        let mut w = ConsoleWatch::from_end(&log);
        assert!(!w.saw(LISTENING_MARK), "the previous boot's line counts");
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, b"init: x\nhitless-agent 2.0.0 (p121) listening\n").unwrap_or_default();
        assert!(w.saw(LISTENING_MARK));
        assert_eq!(since(&log, w.start()), "init: x\nhitless-agent 2.0.0 (p121) listening\n");
    }
}
