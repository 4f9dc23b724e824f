//! The boot image: one kernel (and, for Debian's packaged kernel, an
//! initramfs) for every processor and version. The kernel built from source
//! has every driver built in: it mounts the app disk as its root and runs the
//! agent as init, with no initramfs. Debian's kernel needs modules for the
//! devices (resolved from `modules.dep`) before it can reach the app disk: its
//! initramfs holds them, busybox and the init of `images/init.sh`, which
//! switches root to the app disk and the agent.

use super::{
    cached, hash_files, io, publish, recipe, record_checksum, run, scratch, set_mode, short, write, ImageError,
    Progress,
};
use crate::config::{Config, KernelChoice};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The boot image: kernel, and initramfs where the kernel needs one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootImage {
    /// Kernel: an ELF booted by PVH where the kernel allows, else the bzImage.
    pub kernel: PathBuf,
    /// Initramfs (uncompressed newc cpio: nothing to decompress under TCG);
    /// none for the built kernel, which boots the app disk as its root.
    pub initrd: Option<PathBuf>,
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

/// Build (or find in the cache) the boot image of the kernel `cfg` chooses.
pub fn boot_image(cfg: &Config, progress: Progress) -> Result<BootImage, ImageError> {
    match cfg.kernel {
        KernelChoice::Built => built_boot_image(cfg, progress),
        KernelChoice::Debian => debian_boot_image(cfg),
    }
}

/// The kernel built from the recipe in `images/kernel/` (everything built in,
/// so no modules and no initramfs: it boots the app disk as its root).
fn built_boot_image(cfg: &Config, progress: Progress) -> Result<BootImage, ImageError> {
    let kernel = super::kernel::built_kernel(cfg, progress)?;
    Ok(BootImage { kernel: kernel.vmlinux, initrd: None })
}

/// Debian's packaged cloud kernel, unpacked in `paths.kernel_dir`, with the modules the devices need.
fn debian_boot_image(cfg: &Config) -> Result<BootImage, ImageError> {
    let (rel, vmlinuz) = kernel_release(&cfg.kernel_dir)?;
    let busybox = busybox()?;
    let moddir = cfg.kernel_dir.join("lib/modules").join(&rel);
    let dep = moddir.join("modules.dep");
    if !dep.is_file() {
        run(Command::new("depmod").arg("-b").arg(&cfg.kernel_dir).arg(&rel))?;
    }
    let dep_text = std::fs::read_to_string(&dep).map_err(io(&dep))?;
    let modules = resolve_modules(&dep_text, &recipe::entries(recipe::MODULES))
        .map_err(|detail| ImageError::Tool { cmd: "resolve modules".into(), detail })?;
    let mod_files: Vec<PathBuf> = modules.iter().map(|m| moddir.join(m)).collect();
    let mut h = Sha256::new();
    h.update(recipe::INIT);
    h.update(recipe::APPLETS);
    h.update(recipe::MODULES);
    // How the kernel is laid out (a PVH ELF when the config allows) is part of the image.
    h.update(b"kernel: pvh elf if CONFIG_PVH=y");
    h.update(kernel_config(&cfg.kernel_dir, &rel).unwrap_or_default());
    hash_files(&mut h, &[vmlinuz.clone(), busybox.clone()])?;
    hash_files(&mut h, &mod_files)?;
    let dir = cfg.cache_dir.join(format!("boot-{}", short(h)));
    let initrd = dir.join("initramfs.cpio");
    let img = BootImage { kernel: dir.join("kernel"), initrd: Some(initrd.clone()) };
    if cached(&initrd) && cached(&img.kernel) {
        return Ok(img);
    }
    tracing::info!("building boot image {}", dir.display());
    let tmp = scratch(&cfg.cache_dir)?;
    let out_dir = tmp.path().join("out");
    let named: Vec<(&str, &Path)> =
        modules.iter().zip(&mod_files).map(|(m, f)| (m.rsplit('/').next().unwrap_or(m), f.as_path())).collect();
    initramfs(tmp.path(), &busybox, &named, &out_dir)?;
    let bz = std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?;
    let pvh = kernel_config(&cfg.kernel_dir, &rel).is_some_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"));
    match pvh.then(|| super::pvh::elf_from_bzimage(&bz)).flatten() {
        // QEMU boots an ELF kernel with a PVH note directly: no real-mode setup and no
        // decompression under TCG (about 0.75 s of every boot here).
        Some(elf) => write(&out_dir.join("kernel"), &elf)?,
        None => {
            tracing::info!("no PVH-bootable vmlinux in {}; booting the bzImage", vmlinuz.display());
            write(&out_dir.join("kernel"), &bz)?;
        }
    }
    record_checksum(&out_dir.join("kernel"))?;
    replace(&dir)?;
    publish(&out_dir, &dir)?;
    Ok(img)
}

/// The guest's busybox: the static build of Debian's `busybox-static`.
pub(super) fn busybox() -> Result<PathBuf, ImageError> {
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        return Err(ImageError::Missing { what: "busybox (busybox-static)", path: busybox });
    }
    Ok(busybox)
}

/// A build from before checksums were recorded is replaced whole.
fn replace(dir: &Path) -> Result<(), ImageError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Write `out_dir/initramfs.cpio` (with its checksum): busybox and its applets, the
/// init, and `modules` (file name, path) listed in load order in `/modules.list`.
fn initramfs(tmp: &Path, busybox: &Path, modules: &[(&str, &Path)], out_dir: &Path) -> Result<(), ImageError> {
    let root = tmp.join("root");
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    for d in ["dev", "app", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).map_err(io(&root))?;
    }
    install_busybox(busybox, &root)?;
    let mut list = String::new();
    for (name, f) in modules {
        std::fs::copy(f, root.join("lib/modules").join(name)).map_err(io(f))?;
        list.push_str(name);
        list.push('\n');
    }
    write(&root.join("modules.list"), list.as_bytes())?;
    write(&root.join("init"), recipe::INIT.as_bytes())?;
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
    record_checksum(&cpio)
}

/// `root/bin/busybox` and a link to it for every applet of `applets.txt`.
pub(super) fn install_busybox(busybox: &Path, root: &Path) -> Result<(), ImageError> {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    std::fs::copy(busybox, bin.join("busybox")).map_err(io(busybox))?;
    for a in recipe::entries(recipe::APPLETS) {
        std::os::unix::fs::symlink("busybox", bin.join(a)).map_err(io(&bin))?;
    }
    Ok(())
}

fn kernel_config(kernel_dir: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(kernel_dir.join("boot").join(format!("config-{rel}"))).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
