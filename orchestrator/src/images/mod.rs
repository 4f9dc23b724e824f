//! Guest images, built from the recipe in the repository's `images/`
//! directory. One **boot image** for all versions ([`boot`]: a kernel and an
//! initramfs with busybox, the modules the devices need and the init), plus
//! one **app disk** per software version ([`app`]: ext4 holding that
//! version's agent binary, manifest and start arguments). The kernel is either built from
//! Debian's kernel source package ([`kernel`], the default) or Debian's
//! packaged cloud kernel. Everything is cached by the content of its inputs,
//! so a second build does nothing.

pub mod app;
pub mod boot;
pub mod kernel;
pub mod pvh;

pub use app::{app_image, AppImage};
pub use boot::{boot_image, BootImage};

/// Where a long build reports what it is doing (the kernel takes minutes).
pub type Progress<'a> = &'a dyn Fn(&str);

use crate::config::Config;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The recipe files, compiled in (and hashed into the boot image's cache key).
pub mod recipe {
    /// The initramfs's `/init`.
    pub const INIT: &str = include_str!("../../../images/init.sh");
    /// Busybox applets to link, one per line (`#` comments).
    pub const APPLETS: &str = include_str!("../../../images/applets.txt");
    /// Kernel modules the devices need, one per line (`#` comments).
    pub const MODULES: &str = include_str!("../../../images/modules.txt");
    /// The built kernel's options on top of `tinyconfig`.
    pub const KERNEL_FRAGMENT: &str = include_str!("../../../images/kernel/config.fragment");
    /// The script that builds the kernel from Debian's source package.
    pub const KERNEL_BUILD: &str = include_str!("../../../images/kernel/build.sh");
    /// A kernel patch of `images/kernel/` by file name: (file name, text).
    macro_rules! patch {
        ($name:literal) => {
            ($name, include_str!(concat!("../../../images/kernel/", $name)))
        };
    }
    /// The patches applied to the kernel source, in order: (file name, text).
    pub const KERNEL_PATCHES: &[(&str, &str)] = &[
        patch!("0001-x86-mm-skip-init-memory-poisoning.patch"),
        patch!("0002-net-linkwatch-carrier-up-is-urgent.patch"),
        patch!("0003-x86-entry-one-kernel-stack-segment.patch"),
        patch!("0004-x86-head-fxsr-sse-at-first-cr4-write.patch"),
    ];

    /// The entries of a recipe list: non-empty lines without comments.
    pub fn entries(list: &str) -> Vec<&str> {
        list.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect()
    }
}

/// What went wrong building or finding images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or tool is missing.
    #[error("{what} not found at {} (run `make setup`)", path.display())]
    Missing {
        /// What was looked for.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A build tool failed.
    #[error("`{cmd}` failed: {detail}")]
    Tool {
        /// The command line.
        cmd: String,
        /// Its exit status and stderr tail, or why it did not start.
        detail: String,
    },
    /// A file operation failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The version is not in the configuration.
    #[error("version {version} is not in {} (known: {known})", file.display())]
    UnknownVersion {
        /// The version asked for.
        version: String,
        /// The config file.
        file: PathBuf,
        /// The versions it defines.
        known: String,
    },
    /// An image no longer matches the checksum recorded when it was built.
    #[error("{} is corrupt: {detail} (rebuild it: delete it and run `make images`)", path.display())]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// The agent's manifest could not be read.
    #[error("agent {} did not print a valid manifest: {detail}", path.display())]
    Manifest {
        /// The binary.
        path: PathBuf,
        detail: String,
    },
}

/// Build everything the configuration names: the boot image and every version's app disk.
pub fn build_all(cfg: &Config, progress: Progress) -> Result<(BootImage, Vec<AppImage>), ImageError> {
    let boot = boot_image(cfg, progress)?;
    let apps = cfg.versions.keys().map(|v| app_image(cfg, v)).collect::<Result<Vec<_>, _>>()?;
    Ok((boot, apps))
}

/// Where the checksum recorded when `image` was built is kept.
pub fn checksum_file(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    image.with_file_name(name)
}

fn sha256_of(path: &Path) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Record `image`'s checksum beside it (at build time, before it is published).
fn record_checksum(image: &Path) -> Result<(), ImageError> {
    let sum = sha256_of(image)?;
    crate::rundir::write_atomic(&checksum_file(image), format!("{sum}\n").as_bytes()).map_err(io(image))
}

/// Check that `image` exists and still matches the checksum recorded when it was built.
pub fn verify(image: &Path) -> Result<(), ImageError> {
    if !image.is_file() {
        return Err(ImageError::Missing { what: "image", path: image.to_path_buf() });
    }
    let sums = checksum_file(image);
    let want = std::fs::read_to_string(&sums).map_err(|_| ImageError::Corrupt {
        path: image.to_path_buf(),
        detail: format!("no checksum at {}", sums.display()),
    })?;
    let got = sha256_of(image)?;
    if want.trim() != got {
        let detail = format!("sha256 {got}, recorded at build {}", want.trim());
        return Err(ImageError::Corrupt { path: image.to_path_buf(), detail });
    }
    Ok(())
}

/// Whether a cached image is complete: there, with its checksum (older caches have none: rebuilt).
fn cached(image: &Path) -> bool {
    image.is_file() && checksum_file(image).is_file()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

/// Run a build tool; its stdout, or its stderr tail in the error.
fn run(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let name = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::Tool { cmd: name.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n");
        return Err(ImageError::Tool { cmd: name, detail: format!("{}\n{tail}", out.status) });
    }
    Ok(out.stdout)
}

fn hash_files(h: &mut Sha256, files: &[PathBuf]) -> Result<(), ImageError> {
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(f).map_err(io(f))?);
    }
    Ok(())
}

/// The first 8 bytes of a digest, in hex: enough to key the cache.
fn short(h: Sha256) -> String {
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, data).map_err(io(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// A scratch directory inside the cache (same filesystem, so results move in by rename);
/// removed on drop, so a failed or interrupted build leaves nothing behind.
fn scratch(cache: &Path) -> Result<tempfile::TempDir, ImageError> {
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    tempfile::Builder::new().prefix(".build-").tempdir_in(cache).map_err(io(cache))
}

/// Move a finished build into place atomically, so a reader never sees half an image.
fn publish(from: &Path, to: &Path) -> Result<(), ImageError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        // Someone else published it first: theirs is as good as ours.
        Err(_) if to.exists() => Ok(()),
        Err(e) => Err(ImageError::Io { path: to.to_path_buf(), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_image_fails_its_checksum() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let img = d.path().join("app-2.0.0-abc.ext4");
        std::fs::write(&img, vec![7u8; 4096]).unwrap_or_default();
        assert!(matches!(verify(&img), Err(ImageError::Corrupt { .. })), "no checksum recorded yet");
        record_checksum(&img).unwrap_or_else(|e| panic!("{e}"));
        assert!(verify(&img).is_ok());
        // Truncated, as a full disk or an interrupted copy leaves it.
        std::fs::write(&img, vec![7u8; 1024]).unwrap_or_default();
        let e = verify(&img).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("app-2.0.0-abc.ext4 is corrupt: sha256"), "{e}");
        std::fs::remove_file(&img).unwrap_or_default();
        assert!(matches!(verify(&img), Err(ImageError::Missing { .. })));
    }

    #[test]
    fn recipe_lists_skip_comments_and_blank_lines() {
        assert_eq!(recipe::entries("# c\nsh\n\n mount # why\n"), ["sh", "mount"]);
        assert!(recipe::entries(recipe::APPLETS).contains(&"sh"));
        assert!(recipe::entries(recipe::MODULES).contains(&"virtio_net"));
        assert!(recipe::INIT.starts_with("#!/bin/sh"));
    }
}
