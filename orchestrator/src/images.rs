//! Guest images. One **boot image** for all versions (Debian's cloud kernel,
//! unpacked, and an initramfs with busybox, the kernel modules the devices
//! need — resolved from `modules.dep` — and a tiny init), plus one **app
//! disk** per software version (ext4 holding that version's agent binary and
//! manifest). Everything is cached by the content of its inputs, so a second
//! build does nothing.

use crate::config::{Config, Version};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel modules for the devices the guest uses; their dependencies come from `modules.dep`.
pub const ROOT_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport"];

/// The init the initramfs runs: load modules, mount the app disk read-only,
/// bring up the link (IPv6 link-local only, no DAD wait), run the agent.
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read m; do insmod /lib/modules/$m || echo "init: insmod $m failed"; done < /modules.list
for f in /proc/sys/net/ipv6/conf/default/accept_dad /proc/sys/net/ipv6/conf/all/accept_dad; do echo 0 > $f; done
n=0; while [ ! -b /dev/vda ] || [ ! -e /sys/class/net/eth0 ]; do n=$((n+1)); [ $n -gt 500 ] && break; usleep 10000; done
mkdir -p /app && mount -t ext4 -o ro /dev/vda /app || echo "init: cannot mount the app disk"
ip link set lo up
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip link set eth0 up
exec /app/hitless-agent --from-cmdline
"#;

/// Busybox applets the init uses.
const APPLETS: &[&str] = &["sh", "mount", "insmod", "mkdir", "ip", "usleep", "cat", "echo", "poweroff"];

/// What went wrong building images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or tool is missing.
    #[error("{what} not found at {path} (run `make setup`)")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A build tool failed.
    #[error("`{cmd}` failed: {detail}")]
    Tool {
        /// The command.
        cmd: String,
        /// Its stderr tail or the spawn error.
        detail: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The version is not in the configuration.
    #[error("unknown version {0}")]
    UnknownVersion(String),
    /// The agent's manifest could not be read.
    #[error("agent {path} did not print a valid manifest: {detail}")]
    Manifest {
        /// The binary.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let name = format!("{:?}", cmd).replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::Tool { cmd: name.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Tool { cmd: name, detail: format!("{}\n{}", out.status, tail.join("\n")) });
    }
    Ok(out.stdout)
}

/// The boot image: kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootImage {
    /// Kernel: an ELF booted by PVH where the kernel allows, else the bzImage.
    pub kernel: PathBuf,
    /// Initramfs (uncompressed newc cpio: nothing to decompress under TCG).
    pub initrd: PathBuf,
}

/// One version's app disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppImage {
    /// Version name (config key).
    pub version: String,
    /// Read-only ext4 image; processors boot copy-on-write overlays over it.
    pub path: PathBuf,
    /// The agent's manifest (version, features, flaw).
    pub manifest: serde_json::Value,
}

fn hash_files(h: &mut Sha256, files: &[PathBuf]) -> Result<(), ImageError> {
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(f).map_err(io(f))?);
    }
    Ok(())
}

fn short(h: Sha256) -> String {
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Kernel release directory under `kernel_dir/lib/modules`.
fn kernel_release(kernel_dir: &Path) -> Result<(String, PathBuf), ImageError> {
    let mods = kernel_dir.join("lib/modules");
    let rel = std::fs::read_dir(&mods)
        .map_err(|_| ImageError::Missing { what: "unpacked kernel package", path: mods.clone() })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .ok_or(ImageError::Missing { what: "kernel modules", path: mods.clone() })?;
    let vmlinuz = kernel_dir.join(format!("boot/vmlinuz-{rel}"));
    if !vmlinuz.is_file() {
        return Err(ImageError::Missing { what: "kernel image", path: vmlinuz });
    }
    Ok((rel, vmlinuz))
}

/// Modules to load, in load order: `roots` and their dependencies from `modules.dep` text.
pub fn resolve_modules(modules_dep: &str, roots: &[&str]) -> Result<Vec<String>, String> {
    let deps: std::collections::HashMap<&str, Vec<&str>> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    let by_name = |name: &str| {
        deps.keys()
            .find(|k| {
                let base = k.rsplit('/').next().unwrap_or(k);
                let base = base.split(".ko").next().unwrap_or(base);
                base.replace('-', "_") == name.replace('-', "_")
            })
            .copied()
    };
    fn visit<'a>(
        m: &'a str,
        deps: &std::collections::HashMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m) {
            return;
        }
        // modules.dep lists a module's dependencies so that the last must load first.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in roots {
        let m = by_name(r).ok_or_else(|| format!("module {r} is not in modules.dep"))?;
        visit(m, &deps, &mut seen, &mut out);
    }
    Ok(out)
}

/// Build (or find in the cache) the boot image.
pub fn boot_image(cfg: &Config) -> Result<BootImage, ImageError> {
    let (rel, vmlinuz) = kernel_release(&cfg.kernel_dir)?;
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        return Err(ImageError::Missing { what: "busybox (busybox-static)", path: busybox });
    }
    let moddir = cfg.kernel_dir.join("lib/modules").join(&rel);
    let dep = moddir.join("modules.dep");
    if !dep.is_file() {
        run(Command::new("depmod").arg("-b").arg(&cfg.kernel_dir).arg(&rel))?;
    }
    let dep_text = std::fs::read_to_string(&dep).map_err(io(&dep))?;
    let modules = resolve_modules(&dep_text, ROOT_MODULES)
        .map_err(|detail| ImageError::Tool { cmd: "resolve modules".into(), detail })?;
    let mod_files: Vec<PathBuf> = modules.iter().map(|m| moddir.join(m)).collect();
    let mut h = Sha256::new();
    h.update(INIT);
    h.update(APPLETS.join(",").as_bytes());
    // How the kernel is laid out (a PVH ELF when the config allows) is part of the image.
    h.update(b"kernel: pvh elf if CONFIG_PVH=y");
    h.update(kernel_config(&cfg.kernel_dir, &rel).unwrap_or_default());
    hash_files(&mut h, &[vmlinuz.clone(), busybox.clone()])?;
    hash_files(&mut h, &mod_files)?;
    let dir = cfg.cache_dir.join(format!("boot-{}", short(h)));
    let img = BootImage { kernel: dir.join("kernel"), initrd: dir.join("initramfs.cpio") };
    if img.initrd.is_file() && img.kernel.is_file() {
        return Ok(img);
    }
    tracing::info!("building boot image {}", dir.display());
    let tmp = scratch(&cfg.cache_dir)?;
    let root = tmp.path().join("root");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    for d in ["bin", "proc", "sys", "dev", "app", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).map_err(io(&root))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).map_err(io(&busybox))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).map_err(io(&root))?;
    }
    let mut list = String::new();
    for (m, f) in modules.iter().zip(&mod_files) {
        let name = m.rsplit('/').next().unwrap_or(m);
        std::fs::copy(f, root.join("lib/modules").join(name)).map_err(io(f))?;
        list.push_str(name);
        list.push('\n');
    }
    write(&root.join("modules.list"), list.as_bytes())?;
    write(&root.join("init"), INIT.as_bytes())?;
    set_mode(&root.join("init"), 0o755)?;
    let cpio = out_dir.join("initramfs.cpio");
    let out = std::fs::File::create(&cpio).map_err(io(&cpio))?;
    let find = run(Command::new("find").arg(".").current_dir(&root))?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(out)
        .spawn()
        .map_err(|e| ImageError::Tool { cmd: "cpio".into(), detail: e.to_string() })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(&find).map_err(io(&cpio))?;
    }
    let st = child.wait().map_err(io(&cpio))?;
    if !st.success() {
        return Err(ImageError::Tool { cmd: "cpio".into(), detail: st.to_string() });
    }
    let bz = std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?;
    let pvh = kernel_config(&cfg.kernel_dir, &rel).is_some_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"));
    match pvh.then(|| pvh_kernel(&bz)).flatten() {
        // QEMU boots an ELF kernel with a PVH note directly: no real-mode setup and no
        // decompression under TCG (about 0.75 s of every boot here).
        Some(elf) => write(&out_dir.join("kernel"), &elf)?,
        None => {
            tracing::info!("no PVH-bootable vmlinux in {}; booting the bzImage", vmlinuz.display());
            write(&out_dir.join("kernel"), &bz)?;
        }
    }
    publish(&out_dir, &dir)?;
    Ok(img)
}

fn kernel_config(kernel_dir: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(kernel_dir.join("boot").join(format!("config-{rel}"))).ok()
}

/// The uncompressed ELF kernel inside an LZ4-compressed bzImage (the kernel
/// uses LZ4's legacy frame: a magic, then blocks of up to 8 MiB, each after
/// its little-endian length); `None` if there is none or it is not whole.
pub fn pvh_kernel(bz: &[u8]) -> Option<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
    const BLOCK: usize = 8 << 20;
    let start = bz.windows(4).position(|w| w == MAGIC)? + 4;
    let mut at = start;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    // The stream ends where what follows is no longer a block (the kernel appends its size).
    while let Some(len) = bz.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) {
        let Some(block) = bz.get(at + 4..at + 4 + len) else { break };
        let Ok(n) = lz4_flex::block::decompress_into(block, &mut buf) else { break };
        out.extend_from_slice(&buf[..n]);
        at += 4 + len;
    }
    whole_elf64(&out).then_some(out)
}

/// An x86-64 ELF whose section headers (the last thing in the file) are all there.
fn whole_elf64(b: &[u8]) -> bool {
    let u = |at: usize, n: usize| b.get(at..at + n).map(|s| s.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)));
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u(0x28, 8), u(0x3a, 2), u(0x3c, 2)) else { return false };
    b.starts_with(b"\x7fELF\x02\x01") && u(0x12, 2) == Some(0x3e) && shoff + shentsize * shnum <= b.len() as u64
}

/// Build (or find in the cache) the app disk of `version`.
pub fn app_image(cfg: &Config, version: &str) -> Result<AppImage, ImageError> {
    let v = cfg.versions.get(version).ok_or_else(|| ImageError::UnknownVersion(version.to_string()))?;
    let agent = match v {
        Version::Build { features, .. } => build_agent(cfg, features)?,
        Version::Prebuilt { agent, .. } => agent.clone(),
    };
    let bytes = std::fs::read(&agent).map_err(io(&agent))?;
    let manifest_out = run(Command::new(&agent).arg("--manifest"))
        .map_err(|e| ImageError::Manifest { path: agent.clone(), detail: e.to_string() })?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_out)
        .map_err(|e| ImageError::Manifest { path: agent.clone(), detail: e.to_string() })?;
    let mut h = Sha256::new();
    h.update(&bytes);
    h.update(&manifest_out);
    let path = cfg.cache_dir.join(format!("app-{version}-{}.ext4", short(h)));
    let img = AppImage { version: version.to_string(), path: path.clone(), manifest };
    if path.is_file() {
        return Ok(img);
    }
    tracing::info!("building app disk {}", path.display());
    let tmp = scratch(&cfg.cache_dir)?;
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    write(&root.join("hitless-agent"), &bytes)?;
    set_mode(&root.join("hitless-agent"), 0o755)?;
    write(&root.join("manifest.json"), &manifest_out)?;
    let size_mib = bytes.len() / (1 << 20) + 8;
    let file = tmp.path().join("app.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0", "-L", "hitless-app", "-d"])
        .arg(&root)
        .arg(&file)
        .arg(format!("{size_mib}M")))?;
    publish(&file, &path)?;
    Ok(img)
}

/// Build the bundled agent statically for the guest with `features`; returns the binary.
fn build_agent(cfg: &Config, features: &[String]) -> Result<PathBuf, ImageError> {
    let target_dir = cfg.workspace.join("target/guest");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&cfg.workspace)
        .args(["build", "--quiet", "--release", "-p", "hitless-agent", "--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        // Static so it runs from the app disk with no libc in the guest; --target keeps build scripts dynamic.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    run(&mut cmd)?;
    let built = target_dir.join("x86_64-unknown-linux-gnu/release/hitless-agent");
    // Copy out at once: the next feature set's build overwrites the same path.
    let label = if features.is_empty() { "default".to_string() } else { features.join("+") };
    let out = target_dir.join(format!("hitless-agent-{label}"));
    std::fs::copy(&built, &out).map_err(io(&built))?;
    Ok(out)
}

/// Build everything the configuration names: the boot image and every version's app disk.
pub fn build_all(cfg: &Config) -> Result<(BootImage, Vec<AppImage>), ImageError> {
    let boot = boot_image(cfg)?;
    let apps = cfg.versions.keys().map(|v| app_image(cfg, v)).collect::<Result<Vec<_>, _>>()?;
    Ok((boot, apps))
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A fake x86-64 ELF of `len` bytes whose section headers end the file.
    fn elf(len: usize) -> Vec<u8> {
        let mut e: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes());
        e[0x28..0x30].copy_from_slice(&((len - 64 * 4) as u64).to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        e
    }

    fn bzimage(elf: &[u8], blocks: usize) -> Vec<u8> {
        let mut bz = b"setup code and decompressor".to_vec();
        bz.extend([0x02, 0x21, 0x4c, 0x18]);
        for chunk in elf.chunks(8 << 20).take(blocks) {
            let c = lz4_flex::block::compress(chunk);
            bz.extend((c.len() as u32).to_le_bytes());
            bz.extend(c);
        }
        bz.extend((elf.len() as u32).to_le_bytes());
        bz.extend(b"trailer");
        bz
    }

    #[test]
    fn the_elf_kernel_comes_out_of_an_lz4_bzimage_whole_or_not_at_all() {
        let e = elf((8 << 20) + 12345);
        assert_eq!(pvh_kernel(&bzimage(&e, 2)).as_deref(), Some(&e[..]));
        // Its last block missing: not whole, so the bzImage is booted instead.
        assert_eq!(pvh_kernel(&bzimage(&e, 1)), None);
        assert_eq!(pvh_kernel(b"no lz4 payload here"), None);
    }

    #[test]
    fn modules_come_in_dependency_order() {
        let dep = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
                   kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
                   kernel/net/core/failover.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let order = resolve_modules(dep, &["virtio_pci", "virtio_net"]).unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
        assert!(resolve_modules(dep, &["nope"]).unwrap_err().contains("nope"));
    }
}
