//! `cargo xtask install`: the release binary, the systemd unit, the README,
//! docs and Prometheus rules, and a default config (kept if one exists)
//! under a root directory (`/` by default).

use std::path::Path;

use anyhow::Context as _;

use crate::util::{cargo, exec, root_dir, step};

/// Where the README and the docs it links go; the unit's `Documentation=`
/// names the README there.
const DOC_DIR: &str = "usr/local/share/doc/leakmon";

/// Installs `binary`, or a release build made now.
pub fn run(root: &Path, binary: Option<&Path>) -> anyhow::Result<()> {
    let repo = root_dir();
    let built = repo.join("target/release/leakmon");
    let binary = match binary {
        Some(binary) => binary,
        None => {
            crate::setup::rust_build_tools()?;
            step("release build");
            exec(cargo().args(["build", "--release", "--bin", "leakmon"]))?;
            &built
        }
    };
    place(&repo, binary, root)?;
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        exec(std::process::Command::new("systemctl").arg("daemon-reload"))?;
        println!("    start it with: systemctl enable --now leakmon");
    } else {
        println!("    (no systemd running here: start it with `leakmon run` or enable the unit on the host)");
    }
    Ok(())
}

/// Copies `binary`, the unit, the docs and (unless one is there) the
/// default config from `repo` to their places under `root`.
fn place(repo: &Path, binary: &Path, root: &Path) -> anyhow::Result<()> {
    let doc = |name: &str| (repo.join(name), format!("{DOC_DIR}/{name}"), 0o644, true);
    let mut files = vec![
        (
            binary.to_path_buf(),
            "usr/local/bin/leakmon".to_string(),
            0o755,
            true,
        ),
        (
            repo.join("packaging/leakmon.service"),
            "etc/systemd/system/leakmon.service".to_string(),
            0o644,
            true,
        ),
        (
            repo.join("packaging/leakmon.toml"),
            "etc/leakmon/leakmon.toml".to_string(),
            0o600,
            false,
        ),
        doc("README.md"),
        // For the Prometheus that scrapes this host (usually elsewhere): copied, not loaded.
        (
            repo.join("packaging/leakmon-rules.yml"),
            format!("{DOC_DIR}/leakmon-rules.yml"),
            0o644,
            true,
        ),
    ];
    for entry in std::fs::read_dir(repo.join("docs"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            files.push(doc(&format!("docs/{name}")));
        }
    }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn places_every_file_keeps_a_config_and_the_unit_names_its_docs() {
        let scratch = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let root = scratch.join("root");
        std::fs::create_dir_all(&scratch).unwrap();
        let binary = scratch.join("leakmon");
        std::fs::write(&binary, "a binary").unwrap();
        let repo = root_dir();
        place(&repo, &binary, &root).unwrap();

        assert_eq!(mode(&root.join("usr/local/bin/leakmon")), 0o755);
        assert_eq!(mode(&root.join("etc/leakmon/leakmon.toml")), 0o600);
        let unit = root.join("etc/systemd/system/leakmon.service");
        assert_eq!(mode(&unit), 0o644);
        // The README's links to docs/ resolve beside it.
        let docs = root.join(DOC_DIR);
        assert!(docs.join("docs/benchmarks.md").is_file());
        assert!(docs.join("docs/kernels.md").is_file());
        assert!(docs.join("leakmon-rules.yml").is_file());
        let unit_text = std::fs::read_to_string(&unit).unwrap();
        let named = unit_text
            .lines()
            .find_map(|line| line.strip_prefix("Documentation=file:///"))
            .expect("the unit names its README with a file:// URL");
        assert_eq!(
            std::fs::read(root.join(named)).unwrap(),
            std::fs::read(repo.join("README.md")).unwrap()
        );

        // An operator's config survives a reinstall; everything else is replaced.
        let config = root.join("etc/leakmon/leakmon.toml");
        std::fs::write(&config, "# edited").unwrap();
        std::fs::write(&binary, "a newer binary").unwrap();
        place(&repo, &binary, &root).unwrap();
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited");
        assert_eq!(
            std::fs::read_to_string(root.join("usr/local/bin/leakmon")).unwrap(),
            "a newer binary"
        );
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
