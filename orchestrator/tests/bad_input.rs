//! Bad input through the real binary: each is a clear error naming the file
//! or thing at fault, a non-zero exit, and nothing started or left behind.
#![allow(clippy::unwrap_used)]
mod common;

use std::process::Command;

fn hitless(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hitless")).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("pair.yaml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn good_yaml() -> String {
    std::fs::read_to_string(common::repo().join("vm-configs/pair.yaml")).unwrap().replace(
        "versions:",
        &format!("paths:\n  kernel_dir: {0}/.tools/kernel\n  cache_dir: {0}/.cache/images\n  vhost_device_vsock: {0}/.tools/bin/vhost-device-vsock\n  workspace: {0}\nversions:", common::repo().canonicalize().unwrap().display()),
    )
}

fn assert_nothing_started(run: &std::path::Path) {
    assert!(!run.join("state.json").exists(), "state written");
    assert!(!run.join("p121/qemu.pid").exists(), "QEMU started");
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(t.path(), "name: pair\nprocessors: [\n");
    let run = t.path().join("run");
    let (code, err) = hitless(&["up", "--config", &cfg, "--run-dir", run.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pair.yaml") && err.contains("line"), "{err}");
    assert_nothing_started(&run);
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &good_yaml().replace("    vcpus: 1\n  - name: p122", "    vcpus: 1\n    cpus: 2\n  - name: p122"),
    );
    let (code, err) = hitless(&["up", "--config", &cfg, "--run-dir", t.path().join("run").to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cpus") && err.contains("line 11"), "{err}");
}

#[test]
fn missing_version_image_is_an_error_naming_the_binary() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &good_yaml().replace("  2.0.0:\n    cargo_features: [v2]", "  2.0.0:\n    agent: builds/hitless-agent-2.0.0"),
    );
    let (code, err) = hitless(&["up", "--config", &cfg, "--run-dir", t.path().join("run").to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("builds/hitless-agent-2.0.0") && err.contains("does not exist"), "{err}");
    assert_nothing_started(&t.path().join("run"));
}

#[test]
fn qemu_missing_is_an_environment_error() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(t.path(), &good_yaml());
    let run = t.path().join("run");
    let (code, err) = hitless(
        &["up", "--config", &cfg, "--run-dir", run.to_str().unwrap()],
        &[("HITLESS_QEMU", "/nonexistent/qemu-system-x86_64")],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("QEMU not found") && err.contains("/nonexistent/qemu-system-x86_64"), "{err}");
    assert_nothing_started(&run);
}

#[test]
fn status_without_a_testbed_says_so() {
    let t = tempfile::tempdir().unwrap();
    let (code, err) = hitless(&["status", "--run-dir", t.path().join("none").to_str().unwrap()], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no testbed is up"), "{err}");
}
