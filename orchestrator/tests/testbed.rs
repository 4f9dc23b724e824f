//! VM tests of the testbed foundation: the pair boots on real QEMU guests,
//! the agents answer over vsock and see each other over the link, QMP shows
//! the expected images, and `down` leaves nothing behind.
#![allow(clippy::unwrap_used)]
mod common;

use hitless::events::Events;
use hitless::process;
use hitless::testbed::{self, Testbed, TestbedError};
use hitless_protocol::Role;

#[tokio::test]
async fn pair_boots_sees_itself_and_goes_down_clean() {
    let guard = common::RunGuard::new();
    let tb = common::up(&guard).await;
    let st = tb.status().await;
    assert_eq!(st.len(), 2);
    let image = hitless::images::app_image(&tb.cfg, "1.0.0").unwrap().path.display().to_string();
    for (p, role) in st.iter().zip([Role::Active, Role::Standby]) {
        let a = p.agent.as_ref().unwrap();
        assert_eq!(a.hello.version, "1.0.0", "{}", p.name);
        assert_eq!(a.hello.role, role, "{}", p.name);
        assert_eq!(p.run_state.as_deref(), Some("running"));
        let peer = a.peer.as_ref().expect("peer seen over the link");
        assert!(peer.connected);
        assert_eq!(peer.hello.name, tb.peer_of(&p.name));
        assert_eq!(peer.hello.version, "1.0.0");
        let disk = p.app_disk.as_ref().unwrap();
        assert_eq!(disk.backing, image, "{} boots an overlay of the 1.0.0 image", p.name);
        assert!(disk.overlay.starts_with(&guard.run.proc_dir(&p.name).display().to_string()), "{}", disk.overlay);
        // query-block (device view) agrees with query-named-block-nodes.
        let q = hitless::qmp::Qmp::connect(&guard.run.qmp(&p.name)).await.unwrap();
        assert!(q.block_device_file().await.unwrap().contains(&disk.overlay));
    }
    // Standby is current: it completed its step-up.
    let standby = st[1].agent.as_ref().unwrap();
    assert!(standby.replication.synced);
    assert_eq!(standby.replication.stepups, 1);

    // Re-attach as a later command would.
    let again = Testbed::attach(guard.run.clone(), Events::new()).unwrap();
    assert_eq!(again.state.epoch, 2);

    let pids: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    assert_eq!(pids.len(), 4, "two QEMUs and two vsock daemons");
    assert!(pids.iter().all(|p| process::alive(*p)));
    let stopped = testbed::down(&guard.run, &Events::new());
    assert_eq!(stopped, 4);
    // Before anything here calls alive() (which reaps): down itself must have reaped.
    assert_eq!(process::zombie_children(), Vec::<u32>::new(), "down left unreaped children");
    assert!(pids.iter().all(|p| !process::alive(*p)), "a process outlived down");
    assert!(!guard.run.root.exists(), "run directory left behind");
    assert_eq!(testbed::down(&guard.run, &Events::new()), 0, "down is idempotent");
}

#[tokio::test]
async fn down_cleans_up_after_a_dead_orchestrator_and_a_dead_vm() {
    let guard = common::RunGuard::new();
    let tb = common::up(&guard).await;
    // One VM dies on its own; the orchestrator "dies" (we just drop it).
    let p = tb.qemu_alive("p122").unwrap();
    process::stop_group(p, std::time::Duration::from_secs(1));
    drop(tb);
    let pids: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    testbed::down(&guard.run, &Events::new());
    assert!(pids.iter().all(|p| !process::alive(*p)));
    assert!(!guard.run.root.exists());
}

#[tokio::test]
async fn second_up_in_the_same_run_dir_is_refused_and_changes_nothing() {
    let guard = common::RunGuard::new();
    let _tb = common::up(&guard).await;
    let before: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    let err = Testbed::up(common::config(), guard.run.clone(), Events::new()).await.err().unwrap();
    assert!(matches!(err, TestbedError::AlreadyUp(_)), "{err}");
    let after: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    assert_eq!(before, after);
    assert!(after.iter().all(|p| process::alive(*p)));
}
