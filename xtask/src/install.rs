//! `cargo xtask install`: the release binary, the systemd unit and a default
//! config (kept if one exists) under a root directory (`/` by default).

use std::path::Path;

use anyhow::Context as _;

use crate::util::{cargo, exec, root_dir, step};

pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::setup::rust_build_tools()?;
    step("release build");
    exec(cargo().args(["build", "--release", "--bin", "leakmon"]))?;
    let repo = root_dir();
    let files = [
        (
            repo.join("target/release/leakmon"),
            "usr/local/bin/leakmon",
            0o755,
            true,
        ),
        (
            repo.join("packaging/leakmon.service"),
            "etc/systemd/system/leakmon.service",
            0o644,
            true,
        ),
        (
            repo.join("packaging/leakmon.toml"),
            "etc/leakmon/leakmon.toml",
            0o600,
            false,
        ),
    ];
    for (source, target, mode, replace) in files {
        let target = root.join(target);
        if !replace && target.exists() {
            println!("    kept {} (already there)", target.display());
            continue;
        }
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::copy(&source, &target).with_context(|| format!("installing {}", target.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
        println!("    installed {}", target.display());
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        exec(std::process::Command::new("systemctl").arg("daemon-reload"))?;
        println!("    start it with: systemctl enable --now leakmon");
    } else {
        println!("    (no systemd running here: start it with `leakmon run` or enable the unit on the host)");
    }
    Ok(())
}
