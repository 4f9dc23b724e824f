//! The testbed foundation on real QEMU guests: the pair boots, the agents
//! answer over vsock and see each other over the link, QMP shows the expected
//! images, the machine faults (pause, link cut) act as they should, and
//! `down` leaves nothing behind.
#![allow(clippy::unwrap_used)]

use hitless::error::{EnvironmentError, Error};
use hitless::events::Events;
use hitless::machine::{LinkDir, Machines};
use hitless::pair::ProcId;
use hitless::process;
use hitless::testbed::{self, Access, Testbed};
use hitless_protocol::Role;
use hitless_tests::{config, up, RunGuard};
use std::time::{Duration, Instant};

#[tokio::test]
async fn pair_boots_sees_itself_and_goes_down_clean() {
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    let st = tb.status().await;
    let image = tb.software("1.0.0").unwrap().image;
    for ((p, s), role) in st.iter().zip([Role::Active, Role::Standby]) {
        let a = s.agent.as_ref().unwrap();
        assert_eq!(a.hello.version, "1.0.0", "{}", s.name);
        assert_eq!(a.hello.role, role, "{}", s.name);
        assert_eq!(s.run_state.as_deref(), Some("running"));
        let peer = a.peer.as_ref().expect("peer seen over the link");
        assert!(peer.connected);
        assert_eq!(peer.hello.name, tb.name(p.other()));
        assert_eq!(peer.hello.version, "1.0.0");
        let disk = s.app_disk.as_ref().unwrap();
        assert_eq!(disk.backing, image, "{} boots an overlay of the 1.0.0 image", s.name);
        assert!(disk.overlay.ends_with("app-1-1.0.0.qcow2"), "{}", disk.overlay);
        // query-block agrees with query-named-block-nodes.
        let q = hitless::machine::qemu::qmp::Qmp::connect(&guard.run.qmp(&s.name)).await.unwrap();
        assert!(q.block_device_file().await.unwrap().contains(&disk.overlay));
    }
    // Standby is current: it completed its step-up.
    let standby = st[ProcId::SECOND].agent.as_ref().unwrap();
    assert!(standby.replication.synced);
    assert_eq!(standby.replication.stepups, 1);
    // Each guest's agent warms both roles' work paths up after its first answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in ProcId::BOTH {
        while tb.agents().status(p).await.unwrap().warmed_up_ms.is_none() {
            assert!(Instant::now() < deadline, "{} never said it warmed up", tb.name(p));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Re-attach as a later command would.
    let again = Testbed::attach(guard.run.clone(), Events::new(), Access::Observe).unwrap();
    assert_eq!(again.epoch(), 2);

    let pids: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    assert_eq!(pids.len(), 4, "two QEMUs and two vsock daemons");
    assert!(pids.iter().all(|p| process::alive(*p)));
    drop(tb);
    let stopped = testbed::down(&guard.run, &Events::new()).unwrap();
    assert_eq!(stopped, 4);
    // Before anything here calls alive() (which reaps): down itself must have reaped.
    assert_eq!(process::zombie_children(), Vec::<u32>::new(), "down left unreaped children");
    assert!(pids.iter().all(|p| !process::alive(*p)), "a process outlived down");
    assert!(!guard.run.root.exists(), "run directory left behind");
    assert_eq!(testbed::down(&guard.run, &Events::new()).unwrap(), 0, "down is idempotent");
}

/// Wait up to 10 s for the active's replication to satisfy `cond`.
async fn until_active(tb: &Testbed, what: &str, cond: impl Fn(&hitless_protocol::Replication) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tb.agents().status(ProcId::FIRST).await.is_ok_and(|s| cond(&s.replication)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for the active to be {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_paused_guest_and_a_cut_link_act_as_faults_should() {
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    let (m, standby) = (tb.machines(), ProcId::SECOND);

    m.pause(standby).await.unwrap();
    assert_eq!(m.run_state(standby).await.as_deref(), Some("paused"));
    assert!(tb.agents().hello(standby, Duration::from_millis(500)).await.is_err(), "a paused guest answered");
    // A client that does not know (the workload) connects while it is stopped.
    let uds = guard.run.vsock_uds(tb.name(standby));
    let _waiting = uds.exists().then(|| {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&uds).unwrap();
        s.write_all(format!("CONNECT {}\n", hitless_protocol::CONTROL_PORT).as_bytes()).unwrap();
        s
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    until_active(&tb, "simplex", |r| r.simplex).await;
    m.resume(standby).await.unwrap();
    // That connect must not have cut it off for good (vhost-device-vsock
    // 0.3.0's vring worker thread ended on it; setup.sh patches it).
    let hello = tb.agents().hello(standby, Duration::from_secs(5)).await;
    assert!(
        hello.is_ok(),
        "the standby is unreachable after it resumed: {hello:?}; vsock daemon: {}",
        process::tail(&guard.run.vsock_log(tb.name(standby)), 20)
    );
    until_active(&tb, "registering again", |r| !r.simplex && r.registered.is_some()).await;

    m.set_link(ProcId::FIRST, LinkDir::Both, false).await.unwrap();
    until_active(&tb, "simplex", |r| r.simplex).await;
    m.set_link(ProcId::FIRST, LinkDir::Both, true).await.unwrap();
    until_active(&tb, "registering again", |r| !r.simplex && r.registered.is_some()).await;

    m.kill(standby).await;
    assert!(!m.alive(standby));
    assert_eq!(m.run_state(standby).await, None);
}

#[tokio::test]
async fn down_cleans_up_after_a_dead_orchestrator_and_a_dead_vm() {
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    // One VM dies on its own; the orchestrator "dies" (we just drop it).
    tb.machines().kill(ProcId::SECOND).await;
    drop(tb);
    let pids: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    testbed::down(&guard.run, &Events::new()).unwrap();
    assert!(pids.iter().all(|p| !process::alive(*p)));
    assert!(!guard.run.root.exists());
}

#[tokio::test]
async fn second_up_in_the_same_run_dir_is_refused_and_changes_nothing() {
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    let before: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    // While the first command holds the pair: busy.
    let err = Testbed::up(config(), guard.run.clone(), Events::new()).await.err().unwrap();
    assert!(matches!(err, Error::Environment(EnvironmentError::Busy { .. })), "{err}");
    // Once it is done: already up.
    drop(tb);
    let err = Testbed::up(config(), guard.run.clone(), Events::new()).await.err().unwrap();
    assert!(matches!(err, Error::Environment(EnvironmentError::AlreadyUp(_))), "{err}");
    let after: Vec<u32> = guard.run.pid_files().iter().filter_map(|p| process::read_pid(p)).collect();
    assert_eq!(before, after);
    assert!(after.iter().all(|p| process::alive(*p)));
}

#[tokio::test]
async fn exec_runs_a_command_in_the_guest_and_exits_with_its_code() {
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    drop(tb);
    let exec = |args: &[&str]| {
        let mut c = std::process::Command::new(hitless_tests::hitless_bin());
        c.arg("--config").arg(hitless_tests::repo().join("vm-configs/pair.yaml"));
        c.arg("--run-dir").arg(&guard.run.root).arg("exec").args(args);
        c.output().unwrap()
    };
    let said = |o: &std::process::Output| {
        format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    // The command ran in p121's guest, not on the host: its kernel command line names it.
    let out = exec(&["p121", "--", "cat", "/proc/cmdline"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hitless.name=p121"), "{}", said(&out));
    let out = exec(&["p122", "--", "uname", "-r"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let release = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!release.is_empty() && !release.contains(' '), "{}", said(&out));
    // The init turned transparent huge pages on (Linux leaves them off in a guest this small).
    let out = exec(&["p122", "--", "cat", "/sys/kernel/mm/transparent_hugepage/enabled"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[always]"), "{}", said(&out));
    // And gave the link NIC its large MTU on both sides (a batch of updates in one segment).
    for p in ["p121", "p122"] {
        let out = exec(&[p, "--", "cat", &format!("/sys/class/net/{}/mtu", hitless_agent::init::LINK_NIC)]);
        let mtu = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(mtu, hitless_agent::init::LINK_MTU.to_string(), "{p}: {}", said(&out));
    }
    // Both outputs, and the command's own exit code.
    let out = exec(&["p121", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", said(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n", "hitless added nothing of its own");
    // Out of time: killed, and said so.
    let out = exec(&["--timeout", "1s", "p121", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "{}", said(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ran out of time"), "{}", said(&out));
    // A program the guest does not have: named, and hitless's exit code for a failure.
    let out = exec(&["p121", "--", "no-such-program"]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-program"), "{}", said(&out));
    // The agent still serves after all that.
    let out = exec(&["p121", "--", "echo", "still here"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n", "{}", said(&out));
}

/// vhost-device-vsock 0.3.0 panicked when the host closed a connection before
/// the guest answered its CONNECT, and the guest was unreachable from then on
/// (setup.sh builds it patched; unpatched, this test fails): a client that
/// gives up at once must leave the daemon, and the guest, reachable.
#[tokio::test]
async fn an_abandoned_vsock_connect_leaves_the_guest_reachable() {
    use std::io::Write;
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    let name = tb.name(ProcId::FIRST).to_string();
    let uds = guard.run.vsock_uds(&name);
    if !uds.exists() {
        eprintln!("kernel vsock in use: there is no vsock daemon to test");
        return;
    }
    let daemon = process::read_pid(&guard.run.vsock_pid(&name)).unwrap();
    // The daemon must have read the CONNECT (a close seen with it is ignored) and
    // the guest not answered yet when the host closes: closes spread over 0-4 ms.
    for i in 0..40 {
        let mut s = std::os::unix::net::UnixStream::connect(&uds).unwrap();
        s.write_all(format!("CONNECT {}\n", hitless_protocol::CONTROL_PORT).as_bytes()).unwrap();
        std::thread::sleep(Duration::from_micros(100 * i));
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(process::alive(daemon), "the vsock daemon died: {}", process::tail(&guard.run.vsock_log(&name), 20));
    let hello = tb.agents().hello(ProcId::FIRST, Duration::from_secs(5)).await;
    assert!(hello.is_ok(), "{name} unreachable after abandoned connects: {hello:?}");
}

/// How full `p`'s database is.
async fn ids(tb: &Testbed, p: ProcId) -> hitless_protocol::RequestIds {
    tb.agents().status(p).await.unwrap().request_ids.expect("a guest's database is bounded")
}

/// Send one work request to `p` and return its answer.
async fn one_request(tb: &Testbed, p: ProcId, req: &hitless_protocol::WorkRequest) -> hitless_protocol::WorkReply {
    use hitless_protocol::{frame_into, from_frame, Frames, PREAMBLE, WORK_PORT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tb.agents().channel(p).connect(WORK_PORT).await.unwrap();
    let mut out = PREAMBLE.to_vec();
    frame_into(req, &mut out);
    s.write_all(&out).await.unwrap();
    let mut frames = Frames::new();
    loop {
        if let Some(frame) = frames.next_frame().unwrap() {
            return from_frame(frame).unwrap();
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(frames.spare())).await.unwrap().unwrap();
        assert!(n > 0, "{} closed the work connection", tb.name(p));
    }
}

#[tokio::test]
async fn a_full_database_refuses_new_work_and_the_guests_live_on() {
    use hitless_protocol::{Operation, WorkReply, WorkRequest};
    // Unbounded, a guest under a sustained load ran out of memory and its
    // agent died (~420,000 requests in 256 MiB): the smallest guests fill fastest.
    let guard = RunGuard::new();
    let mut cfg = config();
    for p in ProcId::BOTH {
        cfg.processors[p].memory_mib = 128;
    }
    let mut tb = Testbed::up(cfg, guard.run.clone(), hitless_tests::events()).await.unwrap();
    let (active, standby) = (ProcId::FIRST, ProcId::SECOND);
    let capacity = ids(&tb, active).await.capacity;
    assert!((20_000..200_000).contains(&capacity), "capacity {capacity} for a 128 MiB guest");
    fill(&tb, active).await;
    assert_eq!(ids(&tb, active).await.applied, capacity);
    assert_eq!(ids(&tb, standby).await.applied, capacity, "the standby holds what the active applied");
    let open =
        |id: &str| WorkRequest { id: id.into(), op: Operation::Open { unit: id.into(), fields: Default::default() } };
    match one_request(&tb, active, &open("after-full")).await {
        WorkReply::Rejected { reason, .. } => assert!(reason.contains("database is full"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Not healthy: `hitless status` exits 5 and an upgrade refuses to start on it.
    let problems = hitless::health::assess(&tb.status().await);
    assert!(
        problems.contains(&hitless::health::Problem::DatabaseFull { active: tb.name(active).into(), capacity }),
        "{problems:?}"
    );
    let why = hitless::procedure::repair(&mut tb).await.map(|_| ()).unwrap_err().to_string();
    assert!(why.contains("cannot repair") && why.contains("database is full"), "{why}");
    // A full database steps a standby up again, and its new active refuses
    // once its own bound (from its own memory: maybe a little more) is reached.
    tb.set_role(standby, Role::OutOfService).await.unwrap();
    tb.make_standby(standby).await.unwrap();
    tb.set_role(active, Role::Standby).await.unwrap();
    tb.set_role(standby, Role::Active).await.unwrap();
    tb.wait_standby_current(active).await.unwrap();
    fill(&tb, standby).await;
    assert!(matches!(one_request(&tb, standby, &open("after-switchover")).await, WorkReply::Rejected { .. }));
    let applied = capacity.max(ids(&tb, standby).await.capacity);
    for p in ProcId::BOTH {
        let s = tb.agents().status(p).await.unwrap();
        assert_eq!((s.errors, s.request_ids.map(|r| r.applied)), (0, Some(applied)), "{}", tb.name(p));
        assert!(s.uptime_ms > 5_000, "{} restarted", tb.name(p));
    }
}

/// Load `p` until it refuses work: bounded by time, not by the capacity's size.
async fn fill(tb: &Testbed, p: ProcId) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = hitless::load::measure(tb.agents().channel(p), 4, 32, Duration::from_secs(2)).await.unwrap();
        if f.refused > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never full: {:?}", ids(tb, p).await);
    }
}

/// The Ethernet frames of a pcap file (its 24-byte header checked).
fn pcap_frames(bytes: &[u8]) -> Vec<&[u8]> {
    assert_eq!(bytes.get(..4), Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]), "not a little-endian pcap file");
    assert_eq!(bytes[20..24], 1u32.to_le_bytes(), "link type is not Ethernet");
    let (mut frames, mut at) = (Vec::new(), 24);
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(&bytes[at + 16..(at + 16 + len).min(bytes.len())]);
        at += 16 + len;
    }
    frames
}

#[tokio::test]
async fn hitless_link_pcap_records_each_processors_link_frames() {
    let guard = RunGuard::new();
    let up = hitless_tests::hitless(&["up", "-q"])
        .arg("--run-dir")
        .arg(&guard.run.root)
        .env("HITLESS_LINK_PCAP", "1")
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    for p in ["p121", "p122"] {
        let file = guard.run.link_capture(p, 1);
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let frames = pcap_frames(&bytes);
        // The agents' link is TCP over IPv6: ethertype 0x86dd, next header 6.
        let tcp = frames.iter().filter(|f| f.len() > 20 && f[12..14] == [0x86, 0xdd] && f[20] == 6).count();
        assert!(tcp >= 3, "{}: {} frames, {tcp} of them TCP over IPv6", file.display(), frames.len());
    }
}

// Not in `make test`: with the patched daemon a probe connection still
// stalls past 5 s in some runs (1 of 2 fresh-clone CI runs; the guest answers
// new connections at once after), cause not found. Run it with
// `cargo test -p hitless-tests --test vm -- --ignored stopped_and_continued`.
#[tokio::test]
#[ignore = "a residual stall after fast stop/cont cycles, not yet understood (see the comment)"]
async fn a_guest_stopped_and_continued_hundreds_of_times_under_load_stays_reachable() {
    // Each QMP stop takes the vsock rings back from the vhost-user daemon and
    // each cont returns them. Under load, vhost-device-vsock 0.3.0 lost its
    // vring worker thread to a ring stopped mid-work, or lost an interrupt
    // signalled while the VM was stopped, within a few hundred cycles: the
    // guest was unreachable from then on (setup.sh patches both).
    let guard = RunGuard::new();
    let tb = up(&guard).await;
    let (m, active) = (tb.machines(), ProcId::FIRST);
    let cycles = async {
        for _ in 0..400 {
            m.pause(active).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            m.resume(active).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let load = hitless::load::measure(tb.agents().channel(active), 4, 32, Duration::from_secs(10));
    let (under, ()) = tokio::join!(load, cycles);
    let vsock_log = || process::tail(&guard.run.vsock_log(tb.name(active)), 20);
    let under = under.unwrap_or_else(|e| panic!("the load stalled: {e}; vsock daemon: {}", vsock_log()));
    assert!(under.registered > 0 && under.refused == 0, "{under:?}");
    let after = hitless::load::measure(tb.agents().channel(active), 1, 8, Duration::from_millis(500)).await;
    assert!(after.is_ok_and(|f| f.registered > 0), "unreachable after the cycles; vsock daemon: {}", vsock_log());
}
