//! The testbed configuration (`vm-configs/pair.yaml`): the two processors,
//! the software versions and where their images come from, accelerator,
//! vsock and kernel choices. Parsing rejects unknown keys; [`Config::load`] then
//! validates the meaning and reports every problem at once, each with file,
//! line and a hint. Relative paths resolve against the config file.

use crate::error::InputError;
use crate::pair::{Pair, ProcId};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A configuration error: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or has unknown keys / wrong types.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The YAML parses but makes no sense.
    #[error("{path}: invalid configuration:\n{}", .problems.join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, `line N: ...`.
        problems: Vec<String>,
    },
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where it really works, else TCG.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// How the host reaches the guests' vsock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VsockMode {
    /// Kernel vhost-vsock when `/dev/vhost-vsock` is usable, else the userspace daemon.
    #[default]
    Auto,
    /// Kernel `vhost-vsock-pci`.
    Kernel,
    /// Userspace `vhost-device-vsock` daemon per processor.
    User,
}

/// Which guest kernel the processors boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Built from Debian's kernel source package with the recipe in `images/kernel/`
    /// (built once, cached); boots on a microvm machine in under half a second under TCG.
    #[default]
    Built,
    /// Debian's packaged cloud kernel (`paths.kernel_dir`), on a q35 machine: the baseline.
    Debian,
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelChoice::Built => "built",
            KernelChoice::Debian => "debian",
        })
    }
}

fn default_memory() -> u32 {
    256
}
fn default_vcpus() -> u32 {
    1
}
fn default_eval_ms() -> u64 {
    1500
}

/// One processor of the pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Name, e.g. `p121`; used in the run directory and the transcript.
    pub name: Spanned<String>,
    /// MAC of its link NIC; its IPv6 link-local address derives from it.
    pub mac: Spanned<String>,
    /// Guest memory in MiB (default 256).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs (default 1).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// vsock guest CID (default: 3 + index).
    #[serde(default)]
    pub cid: Option<u32>,
}

/// Where a software version's agent comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// Build the bundled agent with these Cargo features.
    #[serde(default)]
    pub cargo_features: Option<Vec<String>>,
    /// Or: a prebuilt static agent binary (relative to the config file).
    #[serde(default)]
    pub agent: Option<Spanned<PathBuf>>,
    /// Arguments the app disk starts the agent with (after `--from-cmdline`).
    #[serde(default)]
    pub agent_args: Option<Spanned<Vec<String>>>,
    /// Deliberately broken build, for tests only.
    #[serde(default)]
    pub test_only: bool,
}

/// Paths to tools and caches; all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// QEMU binary (default `qemu-system-x86_64` on PATH; env `HITLESS_QEMU` overrides).
    pub qemu: Option<PathBuf>,
    /// Unpacked Debian kernel package, for `kernel: debian` (default `../.tools/kernel`).
    pub kernel_dir: Option<PathBuf>,
    /// Debian's kernel source tarball, for `kernel: built` (default `/usr/src/linux-source-6.1.tar.xz`).
    pub kernel_source: Option<PathBuf>,
    /// Image cache (default `../.cache/images`).
    pub cache_dir: Option<PathBuf>,
    /// vhost-device-vsock binary (default `../.tools/bin/vhost-device-vsock`).
    pub vhost_device_vsock: Option<PathBuf>,
    /// The Cargo workspace that builds the bundled agent (default `..`).
    pub workspace: Option<PathBuf>,
}

/// The raw file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Spanned<String>,
    #[serde(default)]
    accelerator: AccelChoice,
    #[serde(default)]
    vsock: VsockMode,
    #[serde(default)]
    kernel: KernelChoice,
    processors: Spanned<Vec<ProcessorConfig>>,
    initial_version: Spanned<String>,
    versions: BTreeMap<String, VersionConfig>,
    #[serde(default = "default_eval_ms")]
    evaluation_ms: u64,
    #[serde(default)]
    paths: PathsConfig,
}

/// A validated configuration with resolved paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// Testbed name (run directory, sockets).
    pub name: String,
    /// Accelerator choice.
    pub accelerator: AccelChoice,
    /// vsock mode.
    pub vsock: VsockMode,
    /// The guest kernel (and with it the machine type).
    pub kernel: KernelChoice,
    /// The two processors; the first starts active.
    pub processors: Pair<Processor>,
    /// Version the pair boots with.
    pub initial_version: String,
    /// Known versions.
    pub versions: BTreeMap<String, Version>,
    /// Evaluation window at step 204.
    pub evaluation_ms: u64,
    /// QEMU binary.
    pub qemu: PathBuf,
    /// Unpacked kernel package (`kernel: debian`).
    pub kernel_dir: PathBuf,
    /// Kernel source tarball (`kernel: built`).
    pub kernel_source: PathBuf,
    /// Image cache.
    pub cache_dir: PathBuf,
    /// vhost-device-vsock binary.
    pub vhost_device_vsock: PathBuf,
    /// Cargo workspace of the bundled agent.
    pub workspace: PathBuf,
}

/// A validated processor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Processor {
    pub name: String,
    /// Link MAC.
    pub mac: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    pub vcpus: u32,
    /// vsock CID.
    pub cid: u32,
}

impl Processor {
    /// IPv6 link-local address derived from the MAC (EUI-64).
    pub fn link_local(&self) -> String {
        let b: Vec<u8> = self.mac.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
        if b.len() != 6 {
            return String::new();
        }
        format!(
            "fe80::{:x}:{:x}:{:x}:{:x}",
            u16::from_be_bytes([b[0] ^ 0x02, b[1]]),
            u16::from_be_bytes([b[2], 0xff]),
            u16::from_be_bytes([0xfe, b[3]]),
            u16::from_be_bytes([b[4], b[5]])
        )
    }
}

/// A validated version source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Version {
    /// Build the bundled agent with Cargo features.
    Build {
        features: Vec<String>,
        /// Start arguments on the app disk.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// Test image.
        test_only: bool,
    },
    /// A prebuilt agent binary.
    Prebuilt {
        agent: PathBuf,
        /// Start arguments on the app disk.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// Test image.
        test_only: bool,
    },
}

impl Version {
    /// The arguments the app disk starts the agent with.
    pub fn args(&self) -> &[String] {
        match self {
            Version::Build { args, .. } | Version::Prebuilt { args, .. } => args,
        }
    }
}

/// Fold `..` and `.` lexically, so that paths in logs and transcripts read well.
fn normalize(p: PathBuf) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        // Unicast: the least significant bit of the first octet is 0.
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Parse and validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        // Absolute, so that paths stay valid whatever the working directory of a helper.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf());
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let mut problems = Vec::new();
        let mut bad = |line: u64, msg: String| problems.push(format!("  line {line}: {msg}"));

        if !valid_name(&raw.name.value) {
            bad(raw.name.referenced.line(), format!("name {:?}: use 1-16 of a-z, 0-9, -", raw.name.value));
        }
        let procs = &raw.processors.value;
        if procs.len() != 2 {
            bad(
                raw.processors.referenced.line(),
                format!("processors: an active/standby pair needs exactly 2, found {}", procs.len()),
            );
        }
        let mut processors = Vec::new();
        for (i, p) in procs.iter().enumerate() {
            if !valid_name(&p.name.value) {
                bad(p.name.referenced.line(), format!("processor name {:?}: use 1-16 of a-z, 0-9, -", p.name.value));
            }
            if procs[..i].iter().any(|q| q.name.value == p.name.value) {
                bad(p.name.referenced.line(), format!("processor name {:?} is used twice", p.name.value));
            }
            if !valid_mac(&p.mac.value) {
                bad(
                    p.mac.referenced.line(),
                    format!("mac {:?}: expected a unicast MAC like 52:54:00:00:01:21", p.mac.value),
                );
            }
            if procs[..i].iter().any(|q| q.mac.value.eq_ignore_ascii_case(&p.mac.value)) {
                bad(p.mac.referenced.line(), format!("mac {:?} is used twice", p.mac.value));
            }
            if !(128..=16384).contains(&p.memory_mib) {
                bad(
                    p.name.referenced.line(),
                    format!("processor {}: memory_mib {} is out of range 128..16384", p.name.value, p.memory_mib),
                );
            }
            if !(1..=16).contains(&p.vcpus) {
                bad(
                    p.name.referenced.line(),
                    format!("processor {}: vcpus {} is out of range 1..16", p.name.value, p.vcpus),
                );
            }
            let cid = p.cid.unwrap_or(3 + i as u32);
            if cid < 3 {
                bad(
                    p.name.referenced.line(),
                    format!("processor {}: cid {cid} is reserved (use 3 or more)", p.name.value),
                );
            }
            processors.push(Processor {
                name: p.name.value.clone(),
                mac: p.mac.value.to_ascii_lowercase(),
                memory_mib: p.memory_mib,
                vcpus: p.vcpus,
                cid,
            });
        }
        if processors.len() == 2 && processors[0].cid == processors[1].cid {
            bad(raw.processors.referenced.line(), format!("both processors have vsock cid {}", processors[0].cid));
        }
        let mut versions = BTreeMap::new();
        // Problems with no line to point at.
        let mut unplaced = Vec::new();
        for (name, v) in &raw.versions {
            let args = v.agent_args.as_ref().map(|a| a.value.clone()).unwrap_or_default();
            if let Some(a) = &v.agent_args {
                // The app disk keeps them one per line; init reads them back so.
                if let Some(arg) = a.value.iter().find(|x| x.is_empty() || x.contains(['\n', '\0'])) {
                    bad(
                        a.referenced.line(),
                        format!(
                            "version {name}: agent_args: {arg:?} is empty, spans lines or holds a NUL (one argument each)"
                        ),
                    );
                } else if let (Some(f), None) = (&v.cargo_features, &v.agent) {
                    // The bundled agent's arguments are known here: a typo is bad input now, not a
                    // failed --manifest after a build.
                    if let Err(e) = hitless_agent::build::Build::from_cargo_features(f).with_args(&a.value) {
                        bad(a.referenced.line(), format!("version {name}: agent_args: {e}"));
                    }
                }
            }
            let version = match (&v.cargo_features, &v.agent) {
                (Some(f), None) => Version::Build { features: f.clone(), args, test_only: v.test_only },
                (None, Some(a)) => {
                    let agent = resolve(&a.value);
                    if !agent.is_file() {
                        bad(
                            a.referenced.line(),
                            format!("version {name}: agent binary {} does not exist", agent.display()),
                        );
                    }
                    Version::Prebuilt { agent, args, test_only: v.test_only }
                }
                (Some(_), Some(a)) => {
                    bad(a.referenced.line(), format!("version {name}: give either cargo_features or agent, not both"));
                    continue;
                }
                (None, None) => {
                    // Map keys carry no position; the message names the entry instead.
                    unplaced.push(format!(
                        "  versions.{name}: needs cargo_features (build the bundled agent) or agent (a binary)"
                    ));
                    continue;
                }
            };
            versions.insert(name.clone(), version);
        }
        if !raw.versions.contains_key(&raw.initial_version.value) {
            bad(
                raw.initial_version.referenced.line(),
                format!(
                    "initial_version {:?} is not among versions ({})",
                    raw.initial_version.value,
                    raw.versions.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        problems.extend(unplaced);
        if !(100..=600_000).contains(&raw.evaluation_ms) {
            problems.push(format!("  evaluation_ms {} is out of range 100..600000", raw.evaluation_ms));
        }
        let processors = match <[Processor; 2]>::try_from(processors) {
            Ok([a, b]) if problems.is_empty() => Pair::new(a, b),
            _ => return Err(ConfigError::Invalid { path: path.to_path_buf(), problems }),
        };
        let p = &raw.paths;
        let qemu = std::env::var_os("HITLESS_QEMU")
            .map(PathBuf::from)
            .or_else(|| p.qemu.as_ref().map(|q| if q.components().count() > 1 { resolve(q) } else { q.clone() }))
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        Ok(Config {
            file: path.to_path_buf(),
            name: raw.name.value,
            accelerator: raw.accelerator,
            vsock: raw.vsock,
            kernel: raw.kernel,
            processors,
            initial_version: raw.initial_version.value,
            versions,
            evaluation_ms: raw.evaluation_ms,
            qemu,
            kernel_dir: normalize(resolve(p.kernel_dir.as_deref().unwrap_or(Path::new("../.tools/kernel")))),
            kernel_source: normalize(resolve(
                p.kernel_source.as_deref().unwrap_or(Path::new("/usr/src/linux-source-6.1.tar.xz")),
            )),
            cache_dir: normalize(resolve(p.cache_dir.as_deref().unwrap_or(Path::new("../.cache/images")))),
            vhost_device_vsock: normalize(resolve(
                p.vhost_device_vsock.as_deref().unwrap_or(Path::new("../.tools/bin/vhost-device-vsock")),
            )),
            workspace: normalize(resolve(p.workspace.as_deref().unwrap_or(Path::new("..")))),
        })
    }

    /// The processor called `name`: resolved here, once, so that nothing inside
    /// works with a name that the config does not define.
    pub fn proc_id(&self, name: &str) -> Result<ProcId, InputError> {
        self.processors.find(|p| p.name == name).ok_or_else(|| InputError::UnknownProcessor {
            name: name.to_string(),
            file: self.file.clone(),
            known: self.processors.values().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The version called `name`, or an error listing the known ones.
    pub fn version(&self, name: &str) -> Result<&Version, InputError> {
        self.versions.get(name).ok_or_else(|| InputError::UnknownVersion {
            version: name.to_string(),
            file: self.file.clone(),
            known: self.versions.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests;
