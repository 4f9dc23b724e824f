//! Verdicts on real VMs: one orchestrator per pair (two `hitless upgrade`
//! processes on one pair), a corrupt image caught before anything leaves
//! service (and a boot that fails told by its first meaningful line), and a
//! dead active brought back by `hitless repair`.
#![allow(clippy::unwrap_used)]

use hitless::config::Config;
use hitless::events::Events;
use hitless::machine::Machines;
use hitless::pair::ProcId;
use hitless::process;
use hitless::testbed::{Access, Testbed};
use hitless_protocol::Role;
use hitless_tests::{config_text, hitless, hitless_bin, up, RunGuard};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test]
async fn two_upgrades_on_one_pair_one_runs_the_other_is_refused_at_once() {
    let guard = RunGuard::new();
    // `up` as its own command would: this process holds the pair no longer.
    drop(up(&guard).await);
    let cmd = |args: &[&str]| {
        let mut c = hitless(args);
        c.arg("--run-dir").arg(&guard.run.root);
        c
    };
    let first = cmd(&["upgrade", "--to", "2.0.0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let second = cmd(&["upgrade", "--to", "2.0.0"]).output().unwrap();
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
    assert!(t.elapsed() < Duration::from_secs(5), "the second command waited for the first");
    let said = text(&second);
    assert!(said.contains("the pair is busy: `hitless upgrade` (pid ") && said.contains(" since "), "{said}");
    // Looking never blocks, whatever the other does.
    let t = Instant::now();
    let status = cmd(&["status"]).output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "status blocked for {:?}", t.elapsed());
    assert!(text(&status).contains("PROC"), "{}", text(&status));
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("summary (completed)"));
    let tb = Testbed::attach(guard.run.clone(), Events::new(), Access::Observe).unwrap();
    for p in ProcId::BOTH {
        let s = tb.agents().status(p).await.unwrap();
        assert_eq!(s.hello.version, "2.0.0");
    }
    // Everything the run directory started is found by down, whatever its pid files say.
    let records: Vec<u32> = process::recorded_alive(&guard.run.processes()).iter().map(|r| r.pid).collect();
    assert_eq!(records.len(), 4, "two QEMUs and two vsock daemons: {records:?}");
    std::fs::remove_file(guard.run.qemu_pid("p122")).unwrap();
    drop(tb);
    let down = cmd(&["down"]).output().unwrap();
    assert!(down.status.success(), "{}", text(&down));
    assert!(records.iter().all(|p| !process::alive(*p)), "down left a process whose pid file was gone");
}

#[tokio::test]
async fn a_corrupt_image_is_refused_before_anything_leaves_service() {
    let guard = RunGuard::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("images");
    let cfg_path = tmp.path().join("pair.yaml");
    std::fs::write(&cfg_path, config_text(&cache)).unwrap();
    let tb = Testbed::up(Config::load(&cfg_path).unwrap(), guard.run.clone(), Events::new()).await.unwrap();
    // The target's image, truncated after it was built (a full disk, an interrupted copy).
    let image = std::path::PathBuf::from(tb.software("2.0.0").unwrap().image);
    drop(tb);
    let len = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(len / 2).unwrap();

    let cmd = |args: &[&str]| {
        let mut c = Command::new(hitless_bin());
        c.args(args).arg("--config").arg(&cfg_path).arg("--run-dir").arg(&guard.run.root);
        c
    };
    for args in [&["upgrade", "--to", "2.0.0", "--dry-run"][..], &["upgrade", "--to", "2.0.0"][..]] {
        let out = cmd(args).output().unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(
            said.contains("preflight: image of 2.0.0")
                && said.contains(&image.display().to_string())
                && said.contains("is corrupt"),
            "{said}"
        );
    }
    // Nothing left service: both still on 1.0.0, active and current standby.
    let status = cmd(&["status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    assert!(procedure_journal_absent(&guard), "a refused upgrade began");

    // Were it booted anyway, the processor would be reported by its first meaningful line, once.
    let mut tb = Testbed::attach(guard.run.clone(), Events::new(), Access::Change("a test")).unwrap();
    tb.set_role(ProcId::SECOND, Role::OutOfService).await.unwrap();
    let e = tb.reload(ProcId::SECOND, "2.0.0").await.err().unwrap().to_string();
    // Debian's initramfs says it; the built kernel, which mounts the app disk as its root, panics and is explained.
    assert!(e.contains("did not come up") && e.contains("cannot mount the app disk"), "{e}");
    assert!(e.contains("is the image corrupt?"), "{e}");
    assert_eq!(e.matches("cannot mount").count(), 1, "{e}");
    assert!(!e.contains("Call Trace"), "{e}");
}

fn procedure_journal_absent(guard: &RunGuard) -> bool {
    hitless::procedure::read_journal(&guard.run).is_none()
}

#[tokio::test]
async fn a_killed_active_is_reported_and_repaired() {
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    let cmd = |args: &[&str]| {
        let mut c = hitless(args);
        c.arg("--run-dir").arg(&guard.run.root);
        c
    };
    tb.machines().kill(ProcId::FIRST).await;
    drop(tb);
    let status = cmd(&["status"]).output().unwrap();
    let said = text(&status);
    assert_eq!(status.status.code(), Some(5), "{said}");
    assert!(
        said.contains("p121 is down") && said.contains("no processor is active") && said.contains("hitless repair"),
        "{said}"
    );
    // An upgrade names what it found, not a socket error.
    let out = cmd(&["upgrade", "--to", "2.0.0"]).output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("p121 is down") && said.contains("hitless repair") && !said.contains("Broken pipe"),
        "{said}"
    );

    let repair = cmd(&["repair"]).output().unwrap();
    let said = text(&repair);
    assert!(repair.status.success(), "{said}");
    assert!(
        said.contains("promoted p122") && said.contains("reloaded p121 with 1.0.0") && said.contains("health: ok"),
        "{said}"
    );
    let status = cmd(&["status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
}
