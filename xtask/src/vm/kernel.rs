//! The guest kernel: a Debian kernel package fetched with apt, or a pinned
//! kernel of another distribution (Ubuntu's), cached as just its vmlinuz and
//! the few modules the initramfs loads.

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

/// A kernel from outside Debian's archive, named by an alias: its packages'
/// addresses and SHA-256 sums, pinned as the test bed pins PyPI. Each comes
/// from a distribution's release pocket, which never changes.
struct Pinned {
    alias: &'static str,
    release: &'static str,
    /// (address, SHA-256) of each package: the image and its modules.
    debs: &'static [(&'static str, &'static str)],
}

const UBUNTU: &str = "http://archive.ubuntu.com/ubuntu/pool/main/l";

/// The first kernel of each Ubuntu LTS an OpenStack host runs: 22.04's
/// (5.15) is the oldest the probes are tested on; 24.04's (6.8) ships its
/// modules zstd-compressed.
const PINNED: &[Pinned] = &[
    Pinned {
        alias: "ubuntu-22.04",
        release: "5.15.0-25-generic",
        debs: &[
            (
                "linux-signed/linux-image-5.15.0-25-generic_5.15.0-25.25_amd64.deb",
                "ad56f8c442a54d4f5ff2dff010d00321d53e32b543f3a92f3ba4e042d20a71da",
            ),
            (
                "linux/linux-modules-5.15.0-25-generic_5.15.0-25.25_amd64.deb",
                "d0ba4087d9e1d497925b3481d3531fba6c2a852855f8019d73b0b1385aa4da1f",
            ),
        ],
    },
    Pinned {
        alias: "ubuntu-24.04",
        release: "6.8.0-31-generic",
        debs: &[
            (
                "linux-signed/linux-image-6.8.0-31-generic_6.8.0-31.31_amd64.deb",
                "fd2ed023c84163e62c73d3b7b613a9b004bd31e335641c23d42bd249e489fbe6",
            ),
            (
                "linux/linux-modules-6.8.0-31-generic_6.8.0-31.31_amd64.deb",
                "3f17f2c279257eb50e40da44390bdf8272c440ca078831c348773d1314b5c2fe",
            ),
        ],
    },
];

/// `package` is a Debian package or an alias of [`PINNED`]. A metapackage
/// (`linux-image-amd64`) is resolved to the versioned image it depends on,
/// which is what gets cached.
pub fn fetch(package: &str) -> anyhow::Result<Kernel> {
    step(&format!("guest kernel: {package}"));
    let pinned = PINNED.iter().find(|p| p.alias == package);
    let (image, release) = match pinned {
        Some(pinned) => (package.to_string(), pinned.release.to_string()),
        None => {
            let image = resolve(package)?;
            let release = image
                .strip_prefix("linux-image-")
                .with_context(|| format!("{image} is not a linux-image-* package"))?
                .to_string();
            (image, release)
        }
    };
    let dir = root_dir().join(".cache/vm").join(&release);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() && cached_for_these_modules(&dir) {
        println!("    {image} already cached in {}", dir.display());
    } else {
        let scratch = dir.with_file_name(format!("{release}.download"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        match pinned {
            Some(pinned) => download_pinned(pinned, &scratch)?,
            None => download(&image, &scratch)?,
        }
        keep_boot_files(&scratch, &release, &dir)?;
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

/// Downloads the Debian package into `scratch` with apt.
fn download(image: &str, scratch: &Path) -> anyhow::Result<()> {
    println!("    downloading {image} (about 70 MB)");
    // Into the scratch directory (`exec` would run it in the workspace root).
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", image])
            .current_dir(scratch)
            .status()
    };
    if !download()?.success() {
        // A stale package list: refresh it once.
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        anyhow::ensure!(download()?.success(), "apt-get download {image} failed");
    }
    Ok(())
}

/// Downloads a pinned kernel's packages into `scratch` and checks each
/// against its SHA-256 sum.
fn download_pinned(pinned: &Pinned, scratch: &Path) -> anyhow::Result<()> {
    for (path, sha256) in pinned.debs {
        let url = format!("{UBUNTU}/{path}");
        let name = path.rsplit('/').next().unwrap_or(path);
        let file = scratch.join(name);
        println!("    downloading {url}");
        exec(
            Command::new("curl")
                .args(["-fsSL", "--retry", "3", "-o"])
                .arg(&file)
                .arg(&url),
        )?;
        let sum = output("sha256sum", &[file.to_str().context("UTF-8 download path")?]);
        let sum = sum.as_deref().and_then(|out| out.split_whitespace().next());
        anyhow::ensure!(
            sum == Some(*sha256),
            "{name} does not have the pinned SHA-256 {sha256} (sha256sum: {})",
            sum.unwrap_or("failed")
        );
    }
    Ok(())
}

/// Unpacks the packages in `scratch`, keeps vmlinuz and the initramfs
/// modules in `dir`, and drops the rest (unpacked, a kernel is ~400 MB).
fn keep_boot_files(scratch: &Path, release: &str, dir: &Path) -> anyhow::Result<()> {
    let unpacked = scratch.join("root");
    let debs: Vec<PathBuf> = std::fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    anyhow::ensure!(!debs.is_empty(), "the download left no .deb");
    for deb in &debs {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))?;
    }
    std::fs::create_dir_all(dir)?;
    let modules_root = unpacked.join("lib/modules").join(release);
    for module in MODULES {
        if let Some(found) = find_module(&modules_root, module)? {
            keep_module(&found, &dir.join(format!("{module}.ko")))?;
        }
    }
    std::fs::write(dir.join(MODULES_LIST), MODULES.join("\n"))?;
    let boot = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if !boot.exists() {
        bail!("the packages have no /boot/vmlinuz-{release}");
    }
    // Last: its presence marks a complete cache.
    std::fs::copy(&boot, dir.join("vmlinuz"))?;
    std::fs::remove_dir_all(scratch)?;
    Ok(())
}

/// Which modules a cache was unpacked for: one made for a shorter list is
/// unpacked again (the packages are downloaded again too).
const MODULES_LIST: &str = "modules.list";

fn cached_for_these_modules(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(MODULES_LIST)).is_ok_and(|list| list == MODULES.join("\n"))
}

/// `name.ko` anywhere under `root`, or its compressed form (`.ko.zst`,
/// `.ko.xz`).
fn find_module(root: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let wanted = [
        format!("{name}.ko"),
        format!("{name}.ko.zst"),
        format!("{name}.ko.xz"),
    ];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if wanted.iter().any(|w| entry.file_name() == w.as_str()) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// Copies a module to `to`, decompressed: busybox insmod hands the bytes to
/// init_module as they are, and the kernel takes only an ELF there.
fn keep_module(found: &Path, to: &Path) -> anyhow::Result<()> {
    let decompressor = match found.extension().and_then(|e| e.to_str()) {
        Some("zst") => "zstd",
        Some("xz") => "xz",
        _ => {
            std::fs::copy(found, to)?;
            return Ok(());
        }
    };
    let status = Command::new(decompressor)
        .args(["-d", "-q", "-c"])
        .arg(found)
        .stdout(std::fs::File::create(to)?)
        .status()
        .with_context(|| format!("starting {decompressor}"))?;
    anyhow::ensure!(
        status.success(),
        "{decompressor} -d {} failed ({status})",
        found.display()
    );
    Ok(())
}
