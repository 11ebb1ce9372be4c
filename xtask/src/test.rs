//! `cargo xtask test`: the whole suite, as CI runs it.

use std::{collections::BTreeSet, process::Command};

use crate::util::{cargo, exec, is_root, step};

pub fn run_suite(filter: Option<&str>) -> anyhow::Result<()> {
    step("format");
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("clippy (user-space crates)");
    exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("clippy (eBPF crate, nightly, bpfel-unknown-none)");
    exec(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "-p",
        "monitor-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("build (daemon, CLI, workloads)");
    exec(cargo().args(["build", "--bins"]))?;
    step(if is_root() {
        "tests: unit and root integration (LEAKMON_REQUIRE_ROOT=1: no root test may skip)"
    } else {
        "tests: unit; root integration tests will print why they skip (not root)"
    });
    let mut test = cargo();
    test.args(["test"]);
    if let Some(filter) = filter {
        test.arg(filter);
    }
    if is_root() {
        test.env("LEAKMON_REQUIRE_ROOT", "1");
    }
    // One test more than CPUs: the root tests mostly wait (on nova's loops,
    // Ironic, alert windows), and on a 2-core machine three at a time took
    // the root suite from 582 to 401 s with no test slower for it.
    if std::env::var_os("RUST_TEST_THREADS").is_none() {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        test.env("RUST_TEST_THREADS", (cpus + 1).to_string());
    }
    let before = scratch_entries();
    exec(&mut test)?;
    let left: Vec<String> = scratch_entries().difference(&before).cloned().collect();
    anyhow::ensure!(
        left.is_empty(),
        "the tests passed but left {} behind in {}: {} (a passing test removes its scratch directory)",
        left.len(),
        std::env::temp_dir().display(),
        left.join(" ")
    );
    if is_root() && filter.is_none() {
        for smoke in crate::vm::Options::smokes() {
            step(&format!(
                "other kernels: `{}` in a VM on {}{} (`cargo xtask vm` runs every test)",
                smoke.filter.unwrap_or_default(),
                smoke.kernel_package,
                smoke.append.map(|a| format!(" with {a}")).unwrap_or_default(),
            ));
            crate::vm::run(&smoke)?;
        }
    }
    Ok(())
}

/// The temp dir's `leakmon-*` entries: each test's scratch directory, which
/// it removes unless it fails (then it is the diagnosis).
fn scratch_entries() -> BTreeSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("leakmon-"))
        .collect()
}

pub fn run(filter: Option<&str>) -> anyhow::Result<()> {
    crate::setup::run_all()?;
    run_suite(filter)?;
    println!("\nall tests passed");
    Ok(())
}
