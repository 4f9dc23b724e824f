//! The guest kernel built from Debian's kernel source package
//! (`linux-source-6.1`): `make tinyconfig`, the options of
//! `images/kernel/config.fragment` and the patches beside it, built by
//! `images/kernel/build.sh` into an ELF `vmlinux` that QEMU boots by PVH. It
//! boots to the agent in under half a second under TCG (Debian's cloud kernel:
//! about 1.8 s). Built once, in a few minutes, and cached by the content of
//! its inputs: the fragment, the patches, the script and the source tarball.
//!
//! The tarball is 138 MB; hashing it on every command would cost a third of a
//! second, so its digest is remembered beside the cache with the file's size
//! and modification time, and computed again only when either changes.

use super::{cached, io, publish, recipe, record_checksum, short, write, ImageError, Progress};
use crate::config::Config;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// About how many lines `make vmlinux` writes for this config (one per build step): the progress denominator.
const BUILD_STEPS: usize = 1360;
/// How often a running build reports how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(20);
/// The remembered digest of the kernel source tarball, in the image cache.
const SOURCE_ID: &str = "kernel-source.id";
/// Prefix of a kernel build's scratch directory in the image cache.
const SCRATCH: &str = ".build-kernel-";

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltKernel {
    /// The ELF kernel (PVH entry), with its checksum recorded beside it.
    pub vmlinux: PathBuf,
    /// Its cache key (hex): what it was built from.
    pub key: String,
}

/// The cache key of the kernel `cfg` builds: recipe files and the source tarball's content.
fn key(cfg: &Config, progress: Progress) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    h.update(b"hitless kernel: build.sh OUT, then OUT/vmlinux\n");
    h.update(recipe::KERNEL_FRAGMENT);
    h.update(recipe::KERNEL_BUILD);
    for (name, text) in recipe::KERNEL_PATCHES {
        h.update(name);
        h.update(text);
    }
    h.update(source_digest(&cfg.kernel_source, &cfg.cache_dir, progress)?);
    Ok(short(h))
}

/// The SHA-256 of the source tarball, remembered in the cache by its size and modification time.
fn source_digest(tarball: &Path, cache_dir: &Path, progress: Progress) -> Result<String, ImageError> {
    let meta = std::fs::metadata(tarball).map_err(|_| ImageError::Missing {
        what: "Debian's kernel source (apt-get install linux-source-6.1)",
        path: tarball.to_path_buf(),
    })?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    let stamp = format!("{} {} {}", tarball.display(), meta.len(), mtime.as_nanos());
    let memo = cache_dir.join(SOURCE_ID);
    if let Some(sum) = std::fs::read_to_string(&memo).ok().and_then(|t| remembered(&t, &stamp)) {
        return Ok(sum);
    }
    progress(&format!("kernel: hashing {} ({} MB; once)", tarball.display(), meta.len() >> 20));
    let sum = super::sha256_of(tarball)?;
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    crate::rundir::write_atomic(&memo, format!("{sum} {stamp}\n").as_bytes()).map_err(io(&memo))?;
    Ok(sum)
}

/// The digest in a memo line `<sha256> <stamp>`, if it was taken of the file as `stamp` describes it now.
fn remembered(memo: &str, stamp: &str) -> Option<String> {
    let (sum, rest) = memo.trim_end().split_once(' ')?;
    (rest == stamp && sum.len() == 64).then(|| sum.to_string())
}

/// Build (or find in the cache) the kernel of the recipe in `images/kernel/`.
pub fn built_kernel(cfg: &Config, progress: Progress) -> Result<BuiltKernel, ImageError> {
    let key = key(cfg, progress)?;
    let dir = cfg.cache_dir.join(format!("kernel-{key}"));
    let kernel = BuiltKernel { vmlinux: dir.join("vmlinux"), key };
    if cached(&kernel.vmlinux) {
        return Ok(kernel);
    }
    // One build at a time: a second command waits for the first, then finds its result.
    std::fs::create_dir_all(&cfg.cache_dir).map_err(io(&cfg.cache_dir))?;
    let lock_path = cfg.cache_dir.join("kernel.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    let _lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((file, _)) => {
            progress("kernel: another command is building it; waiting");
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| ImageError::Io { path: lock_path.clone(), source: e.into() })?
        }
    };
    if cached(&kernel.vmlinux) {
        return Ok(kernel);
    }
    progress(&format!("kernel: building {} from {} (once; a few minutes)", dir.display(), cfg.kernel_source.display()));
    // A build killed before it could clean up left its tree (1.6 GB) in a scratch directory of
    // its own kind; no other can be running now (we hold the lock).
    for e in std::fs::read_dir(&cfg.cache_dir).map_err(io(&cfg.cache_dir))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(SCRATCH) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let tmp = tempfile::Builder::new().prefix(SCRATCH).tempdir_in(&cfg.cache_dir).map_err(io(&cfg.cache_dir))?;
    let recipe_dir = tmp.path().join("recipe");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&recipe_dir).map_err(io(&recipe_dir))?;
    write(&recipe_dir.join("config.fragment"), recipe::KERNEL_FRAGMENT.as_bytes())?;
    write(&recipe_dir.join("build.sh"), recipe::KERNEL_BUILD.as_bytes())?;
    for (name, text) in recipe::KERNEL_PATCHES {
        write(&recipe_dir.join(name), text.as_bytes())?;
    }
    run_build(&recipe_dir.join("build.sh"), &out, &cfg.kernel_source, tmp.path(), progress)?;
    record_checksum(&out.join("vmlinux"))?;
    if dir.exists() {
        // A build from before checksums were recorded: replaced whole.
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    publish(&out, &dir)?;
    Ok(kernel)
}

/// Run `build.sh OUT`, passing its `==` lines on and counting `make`'s steps while it compiles.
fn run_build(script: &Path, out: &Path, tarball: &Path, tmp: &Path, progress: Progress) -> Result<(), ImageError> {
    let cmd = format!("bash {} {}", script.display(), out.display());
    let stderr_path = tmp.join("build.stderr");
    let stderr = std::fs::File::create(&stderr_path).map_err(io(&stderr_path))?;
    let mut child = Command::new("bash")
        .arg(script)
        .arg(out)
        .env("TARBALL", tarball)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| ImageError::Tool { cmd: cmd.clone(), detail: e.to_string() })?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let (started, mut reported) = (Instant::now(), Instant::now());
    let log = out.join("build.log");
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => progress(&format!("kernel: {}", line.trim_start_matches("== "))),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // The script closed its output: it has finished.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            if let Ok(text) = std::fs::read_to_string(&log) {
                let steps = text.lines().count();
                progress(&format!(
                    "kernel: make vmlinux: {steps} of about {BUILD_STEPS} steps after {} s",
                    started.elapsed().as_secs()
                ));
            }
        }
    }
    let status = child.wait().map_err(|e| ImageError::Tool { cmd: cmd.clone(), detail: e.to_string() })?;
    if !status.success() {
        let tail = crate::process::tail(&stderr_path, 30);
        return Err(ImageError::Tool { cmd, detail: format!("{status}\n{tail}") });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_patch_in_the_recipe_directory_is_compiled_in_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/kernel");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".patch"))
            .collect();
        on_disk.sort();
        let compiled: Vec<&str> = recipe::KERNEL_PATCHES.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, compiled);
        assert!(recipe::KERNEL_BUILD.starts_with("#!/bin/bash"));
        assert!(recipe::KERNEL_FRAGMENT.lines().any(|l| l == "CONFIG_PVH=y"));
        assert!(recipe::KERNEL_FRAGMENT.lines().any(|l| l == "CONFIG_KVM_GUEST=y"), "KVM runners need kvmclock");
    }

    #[test]
    fn the_source_digest_is_remembered_only_for_the_same_file() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("linux-source.tar.xz");
        std::fs::write(&src, b"source one").unwrap();
        let seen = std::cell::Cell::new(0);
        let progress = |_: &str| seen.set(seen.get() + 1);
        let one = source_digest(&src, d.path(), &progress).unwrap();
        assert_eq!(source_digest(&src, d.path(), &progress).unwrap(), one);
        assert_eq!(seen.get(), 1, "hashed once");
        // A new package: another size, so hashed again.
        std::fs::write(&src, b"source number two").unwrap();
        assert_ne!(source_digest(&src, d.path(), &progress).unwrap(), one);
        assert_eq!(seen.get(), 2);
        assert_eq!(remembered("abc /x 1 2", "/x 1 2"), None, "not a digest");
        let e = source_digest(&d.path().join("none"), d.path(), &progress).unwrap_err().to_string();
        assert!(e.contains("linux-source-6.1"), "{e}");
    }
}
