//! Running commands with visible progress.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

pub fn root_dir() -> PathBuf {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().expect("the workspace holds xtask").to_path_buf()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Prints a step header; long steps print their own output under it.
pub fn step(name: &str) {
    println!("\n==> {name}");
}

/// Runs a command in the workspace root, streaming its output; fails on a non-zero exit.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root_dir());
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    println!("    ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs a command and returns its stdout, or None if it cannot run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo test` of the root integration suite (tests/root), more arguments to follow.
pub fn cargo_test_root() -> Command {
    let mut command = cargo();
    command.args(["test", "-p", "tests", "--test", "root"]);
    command
}
