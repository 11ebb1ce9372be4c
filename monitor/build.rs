//! Builds the kernel probes (monitor-ebpf) with nightly through aya-build.
//!
//! `AYA_BUILD_SKIP=1` (used by `cargo clippy` in CI and by anyone without
//! nightly/bpf-linker) writes an empty object instead; the daemon then refuses
//! to start with a clear message, while the CLI snapshot still works.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const PROBES_BIN: &str = "leakmon-probes";
const FDITER_BIN: &str = "leakmon-fditer";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        for bin in [PROBES_BIN, FDITER_BIN] {
            let stub = out_dir.join(bin);
            fs::write(&stub, b"").with_context(|| format!("writing {}", stub.display()))?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("..").join("monitor-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../monitor-common/src").display()
    );
    aya_build::build_ebpf(
        [Package {
            name: "monitor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
