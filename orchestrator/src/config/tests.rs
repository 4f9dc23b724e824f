#![allow(clippy::unwrap_used)]
use super::*;

const GOOD: &str = r#"
name: pair
processors:
  - name: p121
    mac: "52:54:00:00:01:21"
  - name: p122
    mac: "52:54:00:00:01:22"
    memory_mib: 512
initial_version: 1.0.0
versions:
  1.0.0: { cargo_features: [] }
  2.0.0: { cargo_features: [v2] }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/hitless/pair.yaml"), text)
}

#[test]
fn defaults_and_derived_values() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.accelerator, AccelChoice::Auto);
    assert_eq!(c.vsock, VsockMode::Auto);
    assert_eq!(c.kernel, KernelChoice::Built);
    assert_eq!(c.kernel_source, PathBuf::from("/usr/src/linux-source-6.1.tar.xz"));
    assert_eq!(c.processors[ProcId::FIRST].memory_mib, 256);
    assert_eq!(c.processors[ProcId::SECOND].memory_mib, 512);
    assert_eq!((c.processors[ProcId::FIRST].cid, c.processors[ProcId::SECOND].cid), (3, 4));
    assert_eq!(c.processors[ProcId::FIRST].link_local(), "fe80::5054:ff:fe00:121");
    assert_eq!(c.evaluation_ms, 1500);
    assert_eq!(c.versions["2.0.0"], Version::Build { features: vec!["v2".into()], args: vec![], test_only: false });
    // Relative paths resolve against the config file.
    assert_eq!(c.cache_dir, PathBuf::from("/etc/.cache/images"));
}

#[test]
fn the_shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vm-configs/pair.yaml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.proc_id("p122").unwrap(), ProcId::SECOND);
    // The broken versions are 2.0.0's build started with a flaw: no build of their own.
    assert_eq!(
        c.versions["2.0.0-bad-eval"],
        Version::Build { features: vec!["v2".into()], args: vec!["--flaw".into(), "bad-eval".into()], test_only: true }
    );
    assert_eq!(c.versions["2.0.0-crash"].args(), ["--flaw", "crash"]);
    let e = c.version("9.9.9").unwrap_err().to_string();
    assert!(e.contains("version 9.9.9 is not in") && e.contains("known: 1.0.0, 2.0.0"), "{e}");
    let e = c.proc_id("p999").unwrap_err().to_string();
    assert!(e.contains("processor p999 is not in") && e.contains("known: p121, p122"), "{e}");
}

#[test]
fn every_semantic_problem_is_reported_at_once_with_its_line() {
    let bad = r#"
name: Pair!
processors:
  - name: p121
    mac: "52:54:00:00:01:21"
    vcpus: 0
  - name: p121
    mac: "53:54:00:00:01:21"
initial_version: 3.0.0
versions:
  1.0.0: { cargo_features: [] }
  2.0.0: { agent: /nonexistent/agent }
"#;
    let e = parse(bad).unwrap_err().to_string();
    insta::assert_snapshot!(e);
}

#[test]
fn parse_errors_name_line_and_column() {
    insta::assert_snapshot!(
        "unknown_key",
        parse(&GOOD.replace("    memory_mib: 512", "    memory: 512")).unwrap_err().to_string()
    );
    insta::assert_snapshot!(
        "bad_enum",
        parse(&GOOD.replace("name: pair", "name: pair\naccelerator: hvf")).unwrap_err().to_string()
    );
    insta::assert_snapshot!(
        "bad_kernel",
        parse(&GOOD.replace("name: pair", "name: pair\nkernel: vmlinuz")).unwrap_err().to_string()
    );
    assert_eq!(parse(&GOOD.replace("name: pair", "name: pair\nkernel: debian")).unwrap().kernel, KernelChoice::Debian);
    insta::assert_snapshot!(
        "one_processor",
        parse(&GOOD.replace("  - name: p122\n    mac: \"52:54:00:00:01:22\"\n    memory_mib: 512\n", ""))
            .unwrap_err()
            .to_string()
    );
}

#[test]
fn agent_args_are_one_line_each_and_the_bundled_agent_must_take_them() {
    let with = |version: &str| GOOD.replace("2.0.0: { cargo_features: [v2] }", &format!("2.0.0: {{ {version} }}"));
    let c = parse(&with("cargo_features: [v2], agent_args: [--flaw, crash]")).unwrap();
    assert_eq!(c.versions["2.0.0"].args(), ["--flaw", "crash"]);
    // A binary of one's own takes what it takes; an argument may hold spaces.
    let c = parse(&with(r#"agent: /bin/sh, agent_args: [--delay, "a b"]"#)).unwrap();
    assert_eq!(c.versions["2.0.0"].args(), ["--delay", "a b"]);
    for (args, says) in [
        (r#"[--flaw, "bad\neval"]"#, "spans lines"),
        (r#"["", x]"#, "is empty"),
        (r#"[--flaw, "a\0"]"#, "NUL"),
        ("[--flaw, slow]", "--flaw bad-eval|crash"),
        ("[--dial, x]", "--dial"),
    ] {
        let e = parse(&with(&format!("cargo_features: [v2], agent_args: {args}"))).unwrap_err().to_string();
        assert!(e.contains("line 12: version 2.0.0: agent_args") && e.contains(says), "{args}: {e}");
    }
}
