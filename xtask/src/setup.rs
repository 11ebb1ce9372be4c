//! `cargo xtask setup`: everything a fresh machine lacks, installed once.
//! Each step checks before it acts, so running it again costs seconds.

use std::process::Command;

use anyhow::Context as _;

use crate::util::{exec, is_root, output, step};

/// bpf-linker 0.10.4 loads nightly's own libLLVM (platform.md): newer ones want a system LLVM.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the tests and benchmarks use (openssl and python3-venv
/// for the test bed; rsyslog for the log stream test, which starts its own
/// rsyslogd on a socket of its own).
pub const PACKAGES: &[&str] = &[
    "lsof",
    "iproute2",
    "bpftool",
    "procps",
    "openssl",
    "python3-venv",
    "prometheus",
    "prometheus-alertmanager",
    "rsyslog",
];

pub fn run_all() -> anyhow::Result<()> {
    rust_build_tools()?;
    packages(PACKAGES)?;
    testbed();
    Ok(())
}

/// What building the eBPF crate needs: nightly rust-src and bpf-linker.
pub fn rust_build_tools() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()
}

/// Real Ironic and nova from PyPI in cached venvs, a CA, schemas
/// (tests/testbed/install.sh): the HTTP/HTTPS call tests need them.
fn testbed() {
    step("test bed: Ironic 39 and nova 34 venvs, TLS material, database schemas");
    let started = std::time::Instant::now();
    tests::testbed::Testbed::install();
    println!("    ({:.1}s)", started.elapsed().as_secs_f64());
}

pub fn run() -> anyhow::Result<()> {
    run_all()?;
    println!("\nsetup complete");
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    step("nightly rust-src (the eBPF crate builds core from source)");
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("    already installed");
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"));
    let version = output("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        println!("    already installed ({})", version.trim());
        return Ok(());
    }
    println!("    installing with cargo (about a minute on 2 cores)...");
    exec(Command::new("cargo").args([
        "+nightly",
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]))
    .context("installing bpf-linker")
}

/// cargo-fuzz, for `cargo xtask fuzz` only: the suite replays the kept corpus as a unit test.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn cargo_fuzz() -> anyhow::Result<()> {
    step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    let version = output("cargo", &["fuzz", "--version"]).unwrap_or_default();
    if version.contains(CARGO_FUZZ_VERSION) {
        println!("    already installed ({})", version.trim());
        return Ok(());
    }
    println!("    installing with cargo (about half a minute on 2 cores)...");
    exec(Command::new("cargo").args(["install", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"), "--locked"]))
        .context("installing cargo-fuzz")
}

/// Installs the missing ones among `wanted` with apt-get (root only).
pub fn packages(wanted: &[&str]) -> anyhow::Result<()> {
    step(&format!("Debian packages: {}", wanted.join(" ")));
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("    already installed");
        return Ok(());
    }
    if !is_root() {
        println!(
            "    not root: cannot install {}; tests that need them will say so",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("    installing {}", missing.join(" "));
    exec(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
