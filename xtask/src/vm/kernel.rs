//! The guest kernel: a Debian kernel package, fetched with apt and cached as
//! just its vmlinuz and the few modules the initramfs loads.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::MODULES;
use crate::util::{exec, output, root_dir, step};

pub struct Kernel {
    /// `uname -r` of the package, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The cache directory (also where the initramfs is written).
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// Module name -> cached `.ko`.
    pub modules: HashMap<String, PathBuf>,
}

/// `package` may be a metapackage (`linux-image-amd64`): it is resolved to
/// the versioned image it depends on, which is what gets cached.
pub fn fetch(package: &str) -> anyhow::Result<Kernel> {
    step(&format!("guest kernel: {package}"));
    let image = resolve(package)?;
    let release = image
        .strip_prefix("linux-image-")
        .with_context(|| format!("{image} is not a linux-image-* package"))?
        .to_string();
    let dir = root_dir().join(".cache/vm").join(&release);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        println!("    {image} already cached in {}", dir.display());
    } else {
        download(&image, &release, &dir)?;
    }
    let modules = MODULES
        .iter()
        .map(|m| (m.to_string(), dir.join(format!("{m}.ko"))))
        .filter(|(_, path)| path.exists())
        .collect();
    Ok(Kernel {
        release,
        dir,
        vmlinuz,
        modules,
    })
}

fn resolve(package: &str) -> anyhow::Result<String> {
    // Versioned images start with the version: linux-image-6.1.0-56-amd64.
    if package
        .strip_prefix("linux-image-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Ok(package.to_string());
    }
    let depends = output("apt-cache", &["depends", package])
        .with_context(|| format!("apt-cache knows no package {package}"))?;
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("{package} depends on no linux-image-* package"))
}

/// Downloads the package, keeps vmlinuz and the initramfs modules, and
/// drops the rest (the unpacked package is ~400 MB).
fn download(image: &str, release: &str, dir: &Path) -> anyhow::Result<()> {
    let scratch = dir.with_file_name(format!("{release}.download"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    println!("    downloading {image} (about 70 MB)");
    // Into the scratch directory (`exec` would run it in the workspace root).
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", image])
            .current_dir(&scratch)
            .status()
    };
    if !download()?.success() {
        // A stale package list: refresh it once.
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        anyhow::ensure!(download()?.success(), "apt-get download {image} failed");
    }
    let deb = std::fs::read_dir(&scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = scratch.join("root");
    exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::create_dir_all(dir)?;
    let modules_root = unpacked.join("lib/modules").join(release);
    for module in MODULES {
        if let Some(found) = find_module(&modules_root, module)? {
            std::fs::copy(&found, dir.join(format!("{module}.ko")))?;
        }
    }
    let boot = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if !boot.exists() {
        bail!("{image} has no /boot/vmlinuz-{release}");
    }
    // Last: its presence marks a complete cache.
    std::fs::copy(&boot, dir.join("vmlinuz"))?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// `name.ko` anywhere under `root` (compressed modules are not handled:
/// busybox insmod passes the bytes to init_module as they are).
fn find_module(root: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let wanted = format!("{name}.ko");
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if entry.file_name() == wanted.as_str() {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}
