//! App disks: one ext4 image per software version, holding that version's
//! agent binary, its start arguments (`agent.args`, one per line: the agent
//! reads them as it starts as the guest's init) and its manifest — a build of
//! the bundled agent with the version's Cargo features, or a prebuilt binary
//! the config names. Versions that differ only in arguments share one build.
//! The disk is the guest's root file system: it also holds the mount points
//! the agent's init mounts and busybox, for what `hitless exec` runs.

use super::{
    cached, hash_files, io, publish, recipe, record_checksum, run, scratch, set_mode, short, write, ImageError,
};
use crate::config::{Config, Version};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;

/// One version's app disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppImage {
    /// Version name (config key).
    pub version: String,
    /// Read-only ext4 image; processors boot copy-on-write overlays over it.
    pub path: PathBuf,
    /// The agent's manifest (version, features, flaw), as it printed it.
    pub manifest: serde_json::Value,
}

/// Build (or find in the cache) the app disk of `version`.
pub fn app_image(cfg: &Config, version: &str) -> Result<AppImage, ImageError> {
    let v = cfg.versions.get(version).ok_or_else(|| ImageError::UnknownVersion {
        version: version.to_string(),
        file: cfg.file.clone(),
        known: cfg.versions.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let agent = match v {
        Version::Build { features, .. } => build_agent(cfg, features)?,
        Version::Prebuilt { agent, .. } => agent.clone(),
    };
    let bytes = std::fs::read(&agent).map_err(io(&agent))?;
    let args: String = v.args().iter().map(|a| format!("{a}\n")).collect();
    // Asked with the start arguments: they may change what the agent is (a flaw).
    let manifest_out = run(Command::new(&agent).arg("--manifest").args(v.args()))
        .map_err(|e| ImageError::Manifest { path: agent.clone(), detail: e.to_string() })?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_out)
        .map_err(|e| ImageError::Manifest { path: agent.clone(), detail: e.to_string() })?;
    let busybox = super::boot::busybox()?;
    let mut h = Sha256::new();
    h.update(&bytes);
    h.update(&manifest_out);
    h.update(b"root file system: proc sys dev, busybox with ");
    h.update(recipe::APPLETS);
    hash_files(&mut h, std::slice::from_ref(&busybox))?;
    if !args.is_empty() {
        // Only when there are any: the disks of versions without keep their names.
        h.update(args.as_bytes());
    }
    let path = cfg.cache_dir.join(format!("app-{version}-{}.ext4", short(h)));
    let img = AppImage { version: version.to_string(), path: path.clone(), manifest };
    if cached(&path) {
        return Ok(img);
    }
    tracing::info!("building app disk {}", path.display());
    let tmp = scratch(&cfg.cache_dir)?;
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).map_err(io(&root))?;
    }
    super::boot::install_busybox(&busybox, &root)?;
    write(&root.join("hitless-agent"), &bytes)?;
    set_mode(&root.join("hitless-agent"), 0o755)?;
    write(&root.join("manifest.json"), &manifest_out)?;
    if !args.is_empty() {
        write(&root.join("agent.args"), args.as_bytes())?;
    }
    let busybox_len = std::fs::metadata(&busybox).map_err(io(&busybox))?.len() as usize;
    let size_mib = (bytes.len() + busybox_len) / (1 << 20) + 8;
    let file = tmp.path().join("app.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0", "-L", "hitless-app", "-d"])
        .arg(&root)
        .arg(&file)
        .arg(format!("{size_mib}M")))?;
    record_checksum(&file)?;
    // The checksum first: an image in place without one is rebuilt, never trusted.
    std::fs::rename(super::checksum_file(&file), super::checksum_file(&path)).map_err(io(&path))?;
    publish(&file, &path)?;
    Ok(img)
}

/// Build the bundled agent statically for the guest with `features`; returns the binary.
fn build_agent(cfg: &Config, features: &[String]) -> Result<PathBuf, ImageError> {
    let target_dir = cfg.workspace.join("target/guest");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&cfg.workspace)
        .args(["build", "--quiet", "--profile", "app", "-p", "hitless-agent", "--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        // Static so it runs from the app disk with no libc in the guest; --target keeps build scripts dynamic.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    run(&mut cmd)?;
    let built = target_dir.join("x86_64-unknown-linux-gnu/app/hitless-agent");
    // Copy out at once: the next feature set's build overwrites the same path.
    let label = if features.is_empty() { "default".to_string() } else { features.join("+") };
    let out = target_dir.join(format!("hitless-agent-{label}"));
    // Whole or not at all: versions that share a build copy it out again, and
    // another hitless may be reading the last copy.
    let part = target_dir.join(format!(".hitless-agent-{label}.{}", std::process::id()));
    std::fs::copy(&built, &part).map_err(io(&part))?;
    std::fs::rename(&part, &out).map_err(io(&out))?;
    Ok(out)
}
