//! The command line's bad-input and environment paths, through the real
//! binary: each is a clear error naming the file or thing at fault, the exit
//! code the README documents, and nothing started or left behind. And
//! `hitless simulate`, the rehearsal on the simulated pair, with its exit codes.
#![allow(clippy::unwrap_used)]

use hitless_tests::{hitless, hitless_bin, repo};
use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(hitless_bin()).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("pair.yaml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The shipped config, with its paths made absolute (it is written elsewhere).
fn good_yaml() -> String {
    hitless_tests::config_text(&repo().join(".cache/images"))
}

fn assert_nothing_started(run: &std::path::Path) {
    assert!(!run.join("state.json").exists(), "state written");
    assert!(!run.join("p121/qemu.pid").exists(), "QEMU started");
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(t.path(), "name: pair\nprocessors: [\n");
    let run_dir = t.path().join("run");
    let (code, err) = run(&["up", "--config", &cfg, "--run-dir", run_dir.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pair.yaml") && err.contains("line"), "{err}");
    assert_nothing_started(&run_dir);
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &good_yaml().replace("    vcpus: 1\n  - name: p122", "    vcpus: 1\n    cpus: 2\n  - name: p122"),
    );
    let (code, err) = run(&["up", "--config", &cfg, "--run-dir", t.path().join("run").to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cpus") && err.contains("line 12"), "{err}");
}

#[test]
fn missing_version_image_is_an_error_naming_the_binary() {
    let t = tempfile::tempdir().unwrap();
    let yaml =
        good_yaml().replace("  2.0.0:\n    cargo_features: [v2]", "  2.0.0:\n    agent: builds/hitless-agent-2.0.0");
    let cfg = write_config(t.path(), &yaml);
    let (code, err) = run(&["up", "--config", &cfg, "--run-dir", t.path().join("run").to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("builds/hitless-agent-2.0.0") && err.contains("does not exist"), "{err}");
    assert_nothing_started(&t.path().join("run"));
}

#[test]
fn qemu_missing_is_an_environment_error() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(t.path(), &good_yaml());
    let run_dir = t.path().join("run");
    let env = [("HITLESS_QEMU", "/nonexistent/qemu-system-x86_64")];
    let (code, err) = run(&["up", "--config", &cfg, "--run-dir", run_dir.to_str().unwrap()], &env);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("QEMU not found") && err.contains("/nonexistent/qemu-system-x86_64"), "{err}");
    assert_nothing_started(&run_dir);
}

#[test]
fn status_without_a_testbed_says_so() {
    let t = tempfile::tempdir().unwrap();
    let (code, err) = run(&["status", "--run-dir", t.path().join("none").to_str().unwrap()], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no testbed is up"), "{err}");
}

#[test]
fn help_explains_the_commands_and_the_exit_codes() {
    let out = Command::new(hitless_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["up", "upgrade", "rollback", "simulate", "status", "down", "Exit codes", "130"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn hitless_simulate_rehearses_the_upgrade_and_exits_by_its_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let simulate =
        |to: &str| hitless(&["simulate", "--to", to, "--run-dir", run_dir.to_str().unwrap()]).output().unwrap();
    let out = simulate("2.0.0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("summary (completed)") && !stdout.contains("FAIL"), "{stdout}");
    assert!(run_dir.join("transcript.yaml").is_file());
    // Not acceptable: rolled back, exit code 2.
    let out = simulate("2.0.0-bad-eval");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{said}");
    // The run directory of a VM testbed (live pid files) is never cleared for a rehearsal.
    let state = run_dir.join("state.json");
    let vm_state = std::fs::read_to_string(&state)
        .unwrap()
        .replace("\"simulated\"", r#"{"qemu": {"accel": "tcg", "vsock": "user"}}"#);
    std::fs::write(&state, vm_state).unwrap();
    let out = simulate("2.0.0");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already up"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(state.is_file(), "the VM testbed's state was removed");
    std::fs::remove_dir_all(&run_dir).unwrap();
    // An unknown version is bad input: exit 1, naming the known ones.
    let out = simulate("9.9.9");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("version 9.9.9 is not in") && err.contains("known: 1.0.0, 2.0.0"), "{err}");
    assert!(!run_dir.exists(), "an unknown version started something");
}

#[test]
fn agent_args_the_agent_does_not_take_are_bad_input_naming_the_version() {
    let t = tempfile::tempdir().unwrap();
    let yaml = good_yaml().replace("agent_args: [--flaw, bad-eval]", "agent_args: [--flaw, slow]");
    assert!(yaml.contains("[--flaw, slow]"), "the shipped config changed: {yaml}");
    let cfg = write_config(t.path(), &yaml);
    let run_dir = t.path().join("run");
    let args = ["simulate", "--to", "2.0.0-bad-eval", "--config", &cfg, "--run-dir", run_dir.to_str().unwrap()];
    let (code, err) = run(&args, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("version 2.0.0-bad-eval: agent_args") && err.contains("slow"), "{err}");
    assert!(!run_dir.join("transcript.yaml").exists(), "a run started");
}

#[test]
fn a_timeout_stops_cleanly_names_the_step_and_exits_124() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let out = hitless(&["simulate", "--to", "2.0.0", "--timeout", "200ms", "--run-dir", run_dir.to_str().unwrap()])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(124), "{said}");
    assert!(
        said.contains("timed out after 200ms at step 20") && said.contains("one active and one current standby"),
        "{said}"
    );
}

#[test]
fn json_is_the_last_thing_on_stdout_and_quiet_keeps_only_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let scenario = repo().join("vm-configs/scenarios/kill-active-at-207.yaml");
    let out = hitless(&[
        "run",
        "--simulated",
        "--json",
        "--quiet",
        "--out",
        out_dir.to_str().unwrap(),
        scenario.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results[0]["scenario"], "kill-active-at-207");
    assert_eq!(results[0]["end"], "stopped-at-step 207");
    assert_eq!(results[0]["passed"], true);
    assert!(results[0]["failover_ms"][0].as_u64().is_some(), "{results}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("step 203"), "--quiet printed progress: {stderr}");
}

#[test]
fn shards_split_the_scenarios_so_that_every_one_runs_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<String> = ["happy-path", "bad-eval", "kill-standby-at-201", "cancel-at-207", "corrupt-target-image"]
        .iter()
        .map(|n| repo().join(format!("vm-configs/scenarios/{n}.yaml")).display().to_string())
        .collect();
    let mut seen = Vec::new();
    for k in 1..=2 {
        let out_dir = tmp.path().join(format!("out{k}"));
        let mut args = vec!["run", "--simulated", "--json", "--quiet", "--out", out_dir.to_str().unwrap()];
        let shard = format!("{k}/2");
        args.extend(["--shard", &shard]);
        args.extend(files.iter().map(String::as_str));
        let out = hitless(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        seen.extend(results.iter().map(|r| r["scenario"].as_str().unwrap_or_default().to_string()));
    }
    seen.sort();
    let mut want = vec!["bad-eval", "cancel-at-207", "corrupt-target-image", "happy-path", "kill-standby-at-201"];
    want.sort();
    assert_eq!(seen, want, "each scenario exactly once across the shards");
    let bad = hitless(&["run", "--simulated", "--shard", "3/2", files[0].as_str()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap rejects a bad shard");
}

/// `run --config` is the pair of every scenario that names none (it was
/// silently ignored: a scenario ran on the shipped pair, not the one asked for).
#[test]
fn run_uses_the_pair_config_given_on_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    // A pair whose versions lack the scenario's target: refused before any pair starts.
    let cfg = write_config(t.path(), &good_yaml().replace("2.0.0:", "3.0.0:"));
    let scenario = repo().join("vm-configs/scenarios/happy-path.yaml");
    let out = t.path().join("out");
    let (code, err) =
        run(&["run", "--simulated", "--config", &cfg, "--out", out.to_str().unwrap(), scenario.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2.0.0") && err.contains(&cfg), "{err}");
}

/// Given explicitly, even the default config is the pair of a scenario kept
/// elsewhere (there is no pair.yaml beside it).
#[test]
fn run_uses_an_explicit_default_config_for_a_scenario_kept_elsewhere() {
    let t = tempfile::tempdir().unwrap();
    let scenario = t.path().join("mine.yaml");
    std::fs::copy(repo().join("vm-configs/scenarios/happy-path.yaml"), &scenario).unwrap();
    let out = t.path().join("out");
    let (code, err) = Command::new(hitless_bin())
        .current_dir(repo())
        .args(["run", "--simulated", "--config", "vm-configs/pair.yaml", "--out", out.to_str().unwrap()])
        .arg(&scenario)
        .output()
        .map(|o| (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned()))
        .unwrap();
    assert_eq!(code, 0, "{err}");
}
